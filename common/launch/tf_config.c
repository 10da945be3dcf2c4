/* TF_CONFIG, parsed with jansson (tf_config.h). */
#include "launch/tf_config.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/str.h"

static int fail(char* err, size_t errlen, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
  px_str_oneline(err); /* jansson and the values quote the input */
  return -1;
}

/* Entries of cluster[job] into *n (0 when absent); -1 unless a list of "host:port"
 * strings. */
static int job_size(json_t* cluster, const char* job, uint32_t* n, char* err, size_t errlen) {
  json_t* list = json_object_get(cluster, job);
  *n = 0;
  if (!list) return 0;
  if (json_is_object(list))
    return fail(err, errlen, "TF_CONFIG: cluster.%s is a dict of task indices, which paramex "
                "does not read: list every %s task's address", job, job);
  if (!json_is_array(list))
    return fail(err, errlen, "TF_CONFIG: cluster.%s is not a list of addresses", job);
  size_t i;
  json_t* v;
  json_array_foreach(list, i, v) {
    const char* s = json_string_value(v);
    const char* colon = s ? strrchr(s, ':') : NULL;
    if (!s || !colon || colon == s || !colon[1] || strchr(s, ',') ||
        strspn(colon + 1, "0123456789") != strlen(colon + 1) || atol(colon + 1) < 1 ||
        atol(colon + 1) > 65535)
      return fail(err, errlen, "TF_CONFIG: cluster.%s[%zu] is not a \"host:port\" string "
                  "(port 1..65535)", job, i);
  }
  if (json_array_size(list) > UINT32_MAX / 2)
    return fail(err, errlen, "TF_CONFIG: cluster.%s is too long", job);
  *n = (uint32_t)json_array_size(list);
  return 0;
}

static char* join(json_t* list) {
  size_t len = 1, i;
  json_t* v;
  json_array_foreach(list, i, v) len += strlen(json_string_value(v)) + 1;
  char* s = malloc(len);
  if (!s) return NULL;
  s[0] = 0;
  json_array_foreach(list, i, v) {
    if (i) strcat(s, ",");
    strcat(s, json_string_value(v));
  }
  return s;
}

/* The task: type and index; -1 when malformed. */
static int read_task(json_t* task, px_tf_config* out, char* err, size_t errlen) {
  if (!json_is_object(task)) return fail(err, errlen, "TF_CONFIG: task is not an object");
  json_t* type = json_object_get(task, "type");
  json_t* index = json_object_get(task, "index");
  if (!json_is_string(type) || !json_string_value(type)[0] ||
      strlen(json_string_value(type)) >= sizeof out->type)
    return fail(err, errlen, "TF_CONFIG: task.type is not a job name (such as \"worker\")");
  px_strlcpy(out->type, json_string_value(type), sizeof out->type);
  if (index && (!json_is_integer(index) || json_integer_value(index) < 0 ||
                json_integer_value(index) >= UINT32_MAX / 2))
    return fail(err, errlen, "TF_CONFIG: task.index is not a task number");
  out->index = index ? (uint32_t)json_integer_value(index) : 0;
  return 0;
}

int px_tf_config_parse(const char* json, px_tf_config* out, char* err, size_t errlen) {
  memset(out, 0, sizeof *out);
  json_error_t je;
  json_t* root = json_loads(json, JSON_REJECT_DUPLICATES, &je);
  if (!root)
    return fail(err, errlen, "TF_CONFIG is not valid JSON (line %d: %s)", je.line, je.text);
  int rc = -1;
  json_t* cluster = json_object_get(root, "cluster");
  json_t* task = json_object_get(root, "task");
  uint32_t chief = 0, master = 0;
  if (!json_is_object(root) || !json_is_object(cluster)) {
    fail(err, errlen, "TF_CONFIG has no \"cluster\" object");
    goto out;
  }
  if (job_size(cluster, "chief", &chief, err, errlen) != 0 ||
      job_size(cluster, "master", &master, err, errlen) != 0 ||
      job_size(cluster, "worker", &out->workers, err, errlen) != 0 ||
      job_size(cluster, "ps", &out->ps, err, errlen) != 0)
    goto out;
  out->chiefs = chief + master;
  if (task && read_task(task, out, err, errlen) != 0) goto out;
  const bool is_chief = strcmp(out->type, "chief") == 0 || strcmp(out->type, "master") == 0;
  const bool is_worker = strcmp(out->type, "worker") == 0, is_ps = strcmp(out->type, "ps") == 0;
  if (is_chief || is_worker || is_ps) {
    const uint32_t n = is_ps ? out->ps : is_worker ? out->workers : out->type[0] == 'c' ? chief
                                                                                          : master;
    if (out->index >= n) {
      fail(err, errlen, "TF_CONFIG: the task is %s %u, but cluster.%s lists %u", out->type,
           out->index, out->type, n);
      goto out;
    }
    out->role = is_ps ? PX_TF_PS : PX_TF_WORKER;
    /* chief before master: a cluster has one of them */
    out->rank = is_worker ? out->chiefs + out->index : out->type[0] == 'c' ? out->index
                                                                           : chief + out->index;
  }
  json_t* ps = json_object_get(cluster, "ps");
  if (out->ps) {
    out->ps_list = join(ps);
    if (!out->ps_list) {
      fail(err, errlen, "TF_CONFIG: out of memory");
      goto out;
    }
  }
  if (out->role == PX_TF_PS)
    out->ps_port = (uint16_t)atol(strrchr(json_string_value(json_array_get(ps, out->index)),
                                          ':') + 1);
  rc = 0;
out:
  json_decref(root);
  if (rc != 0) px_tf_config_free(out);
  return rc;
}

void px_tf_config_free(px_tf_config* c) {
  free(c->ps_list);
  c->ps_list = NULL;
}
