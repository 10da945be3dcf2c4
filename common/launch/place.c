/* A worker's rank and world size from its launcher's variables (place.h). */
#include "launch/place.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "launch/tf_config.h"

/* What TF_CONFIG's entry of a table reads (tf_config.h): a chief or worker task's rank
 * and the count of chiefs and workers; a ps task's index and the count of ps; the count
 * of chiefs and workers, for a ps task. */
typedef enum tf_field { TF_NO = 0, TF_WORKER, TF_PS, TF_PS_WORKERS } tf_field;

/* One convention: where the index and the count are (NULL: it has none); role: a
 * variable that must say role_value (ps-lite's DMLC_ROLE), or only be set (role_value
 * NULL: Kubernetes' KUBERNETES_SERVICE_HOST); ordinal: the index is the number after the
 * last '-' of the value (a StatefulSet pod's HOSTNAME, "paramex-3"); tf: the values are
 * TF_CONFIG's, not the variable's. The first entry of a table is paramex's own. */
typedef struct convention {
  const char *rank, *size, *role, *role_value;
  bool framework, ordinal;
  tf_field tf;
} convention;

static const convention k_workers[] = {
    {"PMX_RANK", "PMX_WORLD_SIZE", NULL, NULL, true, false, TF_NO},
    {"DMLC_WORKER_ID", "DMLC_NUM_WORKER", "DMLC_ROLE", "worker", true, false, TF_NO},
    {"TF_CONFIG", "TF_CONFIG", NULL, NULL, true, false, TF_WORKER},
    {"RANK", "WORLD_SIZE", NULL, NULL, true, false, TF_NO},
    {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", NULL, NULL, false, false, TF_NO},
    {"PMIX_RANK", NULL, NULL, NULL, false, false, TF_NO},
    {"PMI_RANK", "PMI_SIZE", NULL, NULL, false, false, TF_NO},
    {"SLURM_PROCID", "SLURM_NTASKS", NULL, NULL, false, false, TF_NO},
    {"JOB_COMPLETION_INDEX", NULL, NULL, NULL, false, false, TF_NO},
};

/* Servers: ps-lite names only their count; under mpirun MPMD (servers first) the world
 * rank is the shard, not the world size; a StatefulSet pod's ordinal is its shard. */
static const convention k_servers[] = {
    {"PMX_SHARD", "PMX_SHARDS", NULL, NULL, true, false, TF_NO},
    {NULL, "DMLC_NUM_SERVER", "DMLC_ROLE", "server", true, false, TF_NO},
    {"TF_CONFIG", "TF_CONFIG", NULL, NULL, true, false, TF_PS},
    {"OMPI_COMM_WORLD_RANK", NULL, NULL, NULL, false, false, TF_NO},
    {"PMIX_RANK", NULL, NULL, NULL, false, false, TF_NO},
    {"PMI_RANK", NULL, NULL, NULL, false, false, TF_NO},
    /* not SLURM_NTASKS, which counts a batch script's tasks too */
    {"SLURM_PROCID", NULL, NULL, NULL, false, false, TF_NO},
    {"HOSTNAME", NULL, "KUBERNETES_SERVICE_HOST", NULL, false, true, TF_NO},
};

/* The workers a server waits for (sizes only): ps-lite's and TF_CONFIG's worker count. */
static const convention k_server_workers[] = {
    {NULL, "PMX_WORKERS", NULL, NULL, true, false, TF_NO},
    {NULL, "DMLC_NUM_WORKER", "DMLC_ROLE", "server", true, false, TF_NO},
    {NULL, "TF_CONFIG", NULL, NULL, true, false, TF_PS_WORKERS},
};

/* The environment, and TF_CONFIG parsed the first time a table reaches it. */
typedef struct env {
  px_getenv_fn get;
  void* ctx;
  int tf_state; /* 0: not parsed yet, 1: parsed, -1: unset */
  px_tf_config tf;
} env;

/* TF_CONFIG, parsed once: 1, 0 when unset, -1 with err. */
static int tf_config(env* e, char* err, size_t errlen) {
  if (e->tf_state == 0) {
    const char* s = e->get("TF_CONFIG", e->ctx);
    if (!s || !*s) e->tf_state = -1;
    else if (px_tf_config_parse(s, &e->tf, err, errlen) != 0) return -1;
    else e->tf_state = 1;
  }
  return e->tf_state == 1;
}

/* What field of TF_CONFIG says (-1: nothing); -1 with err when TF_CONFIG is malformed. */
static int tf_number(env* e, tf_field field, bool want_size, int64_t* v, char* err,
                     size_t errlen) {
  *v = -1;
  int has = tf_config(e, err, errlen);
  if (has <= 0) return has;
  const px_tf_config* t = &e->tf;
  if (field == TF_WORKER && t->role == PX_TF_WORKER)
    *v = want_size ? (int64_t)t->chiefs + t->workers : t->rank;
  else if (field == TF_PS && t->role == PX_TF_PS)
    *v = want_size ? t->ps : t->index;
  else if (field == TF_PS_WORKERS && t->role == PX_TF_PS && t->chiefs + t->workers > 0)
    *v = (int64_t)t->chiefs + t->workers;
  return 0;
}

/* *v from variable name (-1 when unset; ordinal: from its last '-'); -1 with err when it
 * is not a number. */
static int number(px_getenv_fn get, void* ctx, const char* name, bool ordinal, int64_t* v,
                  char* err, size_t errlen) {
  *v = -1;
  const char* s = name ? get(name, ctx) : NULL;
  if (s && ordinal) {
    const char* dash = strrchr(s, '-');
    if (!dash || !dash[1] || strspn(dash + 1, "0123456789") != strlen(dash + 1))
      return 0; /* not a StatefulSet pod's name (a Deployment's ends in letters) */
    s = dash + 1;
  }
  if (!s || !*s) return 0;
  char* end = NULL;
  errno = 0;
  unsigned long long x = s[0] >= '0' && s[0] <= '9' ? strtoull(s, &end, 10) : ~0ull;
  if (x >= UINT32_MAX || errno != 0 || !end || *end) {
    snprintf(err, errlen, "%s=%.40s is not a number below %u", name, s, UINT32_MAX);
    return -1;
  }
  *v = (int64_t)x;
  return 0;
}

/* One field (rank: want_size false; world size: true): PMX_* as it is; else the frameworks'
 * value (two that disagree: an error); else the first scheduler's in the table's order. */
static int pick(const convention* table, size_t n, const char* what, env* e, bool want_size,
                int64_t* v, char* from, size_t fromcap, char* err, size_t errlen) {
  const char* sched_from = NULL;
  int64_t sched = -1;
  *v = -1;
  for (size_t i = 0; i < n; i++) {
    const convention* k = &table[i];
    const char* name = want_size ? k->size : k->rank;
    if (!name) continue;
    if (k->role) {
      const char* r = e->get(k->role, e->ctx);
      if (!r || (k->role_value && strcmp(r, k->role_value) != 0)) continue; /* another role */
    }
    int64_t x;
    if (k->tf ? tf_number(e, k->tf, want_size, &x, err, errlen) != 0
              : number(e->get, e->ctx, name, k->ordinal && !want_size, &x, err, errlen) != 0)
      return -1;
    if (x < 0) continue;
    if (i == 0) { /* the launcher's own: wins */
      *v = x;
      snprintf(from, fromcap, "%s", name);
      return 0;
    }
    if (!k->framework) {
      if (sched < 0) {
        sched = x;
        sched_from = name;
      }
      continue;
    }
    if (*v >= 0 && *v != x) {
      snprintf(err, errlen, "the %s is %lld by %s but %lld by %s: unset one of them (or set "
               "%s, which wins)", what, (long long)*v, from, (long long)x, name,
               want_size ? table[0].size : table[0].rank);
      return -1;
    }
    if (*v < 0) {
      *v = x;
      snprintf(from, fromcap, "%s", name);
    }
  }
  if (*v < 0 && sched >= 0) {
    *v = sched;
    snprintf(from, fromcap, "%s", sched_from);
  }
  return 0;
}

const char* px_place_getenv(const char* name, void* ctx) {
  (void)ctx;
  return getenv(name);
}

void px_place_sources(bool server, bool size, char* buf, size_t cap) {
  const convention* table = server ? k_servers : k_workers;
  const size_t n = server ? sizeof k_servers / sizeof k_servers[0]
                          : sizeof k_workers / sizeof k_workers[0];
  size_t len = 0;
  buf[0] = 0;
  for (size_t i = 0; i < n && len < cap; i++) {
    const convention* k = &table[i];
    const char* name = size ? k->size : k->rank;
    if (!name) continue;
    const char* sep = len ? ", " : "";
    int w = k->tf ? snprintf(buf + len, cap - len, "%s%s of a %s task", sep, name,
                             k->tf == TF_WORKER ? "chief or worker" : "ps")
            : k->role && k->role_value
                ? snprintf(buf + len, cap - len, "%s%s with %s=%s", sep, name, k->role,
                           k->role_value)
            : k->role ? snprintf(buf + len, cap - len, "%s%s with %s set", sep, name, k->role)
                      : snprintf(buf + len, cap - len, "%s%s", sep, name);
    if (w < 0) break;
    len += (size_t)w;
  }
}

int px_place_worker(px_getenv_fn get, void* ctx, px_place* out, char* err, size_t errlen) {
  const size_t n = sizeof k_workers / sizeof k_workers[0];
  env e = {.get = get, .ctx = ctx};
  *out = (px_place){.rank = -1, .world = -1, .workers = -1};
  int rc = pick(k_workers, n, "rank", &e, false, &out->rank, out->rank_from,
                sizeof out->rank_from, err, errlen) != 0 ||
                   pick(k_workers, n, "world size", &e, true, &out->world, out->world_from,
                        sizeof out->world_from, err, errlen) != 0
               ? -1
               : 0;
  px_tf_config_free(&e.tf);
  return rc;
}

int px_place_server(px_getenv_fn get, void* ctx, px_place* out, char* err, size_t errlen) {
  const size_t n = sizeof k_servers / sizeof k_servers[0];
  env e = {.get = get, .ctx = ctx};
  *out = (px_place){.rank = -1, .world = -1, .workers = -1};
  int rc = -1;
  if (pick(k_servers, n, "shard", &e, false, &out->rank, out->rank_from, sizeof out->rank_from,
           err, errlen) != 0 ||
      pick(k_servers, n, "shard count", &e, true, &out->world, out->world_from,
           sizeof out->world_from, err, errlen) != 0 ||
      pick(k_server_workers, sizeof k_server_workers / sizeof k_server_workers[0],
           "worker count", &e, true, &out->workers, out->workers_from,
           sizeof out->workers_from, err, errlen) != 0)
    goto out;
  if (out->rank >= 0 && out->world >= 0 && out->rank >= out->world) {
    snprintf(err, errlen, "the shard is %lld by %s, not below the shard count %lld by %s",
             (long long)out->rank, out->rank_from, (long long)out->world, out->world_from);
    goto out;
  }
  rc = 0;
out:
  px_tf_config_free(&e.tf);
  return rc;
}

int px_place_servers(px_getenv_fn get, void* ctx, char** list, const char** from, char* err,
                     size_t errlen) {
  *list = NULL;
  *from = NULL;
  const char* s = get("PMX_SERVERS", ctx);
  if (s && *s) {
    *from = "PMX_SERVERS";
    return (*list = strdup(s)) ? 0 : (snprintf(err, errlen, "out of memory"), -1);
  }
  env e = {.get = get, .ctx = ctx};
  int has = tf_config(&e, err, errlen);
  if (has < 0) return -1;
  if (has && e.tf.ps_list) {
    *list = e.tf.ps_list; /* handed over */
    e.tf.ps_list = NULL;
    *from = "TF_CONFIG";
  }
  px_tf_config_free(&e.tf);
  return 0;
}

int px_place_listen(px_getenv_fn get, void* ctx, char* buf, size_t cap, char* err,
                    size_t errlen) {
  buf[0] = 0;
  env e = {.get = get, .ctx = ctx};
  int has = tf_config(&e, err, errlen);
  if (has < 0) return -1;
  if (has && e.tf.role == PX_TF_PS) snprintf(buf, cap, "0.0.0.0:%u", (unsigned)e.tf.ps_port);
  px_tf_config_free(&e.tf);
  return 0;
}
