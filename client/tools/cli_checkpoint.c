/* paramex checkpoint and paramex export (cli_checkpoint.h). */
#include "cli_checkpoint.h"

#include <errno.h>
#include <pthread.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec/dtype.h"
#include "codec/payload.h"
#include "format/safetensors_read.h"
#include "format/safetensors_write.h"
#include "rpc/rpc_base.h"
#include "rpc/rpc_client.h"
#include "util/clock.h"
#include "util/file.h"
#include "util/flags.h"
#include "util/iov.h"
#include "util/str.h"
#include "wire/chunk_msg.h"
#include "health.pb-c.h"
#include "paramex.pb-c.h"

#include "cli_common.h"
#include "cli_model.h"

/* ---- checkpoint ------------------------------------------------------------------------ */

int cmd_checkpoint(int argc, char** argv) {
  double timeout_s = 600;
  const px_flag flags[] = {
      {"timeout", PX_FLAG_F64, &timeout_s, 1, 86400, "SECONDS",
       "wait this long for every chunk to reach the version and the file to be written"},
      CONN_FLAGS,
  };
  const char* addr = NULL;
  int rc = parse_cmd("checkpoint", flags, sizeof flags / sizeof flags[0], argc, argv, &addr);
  if (rc >= 0) return rc;
  size_t resp_len = 0;
  uint8_t* resp = call_empty("checkpoint", addr, CHECKPOINT_PATH, (int64_t)(timeout_s * 1000.0),
                             &resp_len);
  if (!resp) return 1;
  char line[512];
  Paramex__V1__CheckpointResponse* r = paramex__v1__checkpoint_response__unpack(NULL, resp_len, resp);
  free(resp);
  if (!r) {
    fprintf(stderr, "paramex: checkpoint %s: malformed CheckpointResponse\n", addr);
    return 1;
  }
  printf("checkpoint at version %" PRIu64 ": %s (%" PRIu64 " bytes)\n", r->version,
         one_line(r->path ? r->path : "", line, sizeof line, '?'), r->bytes);
  paramex__v1__checkpoint_response__free_unpacked(r, NULL);
  return fflush(stdout) == 0 ? 0 : 1;
}

/* ---- export ------------------------------------------------------------------------------ */

typedef struct export_src {
  size_t n;
  px_st_entry* e;
  const void** data; /* one buffer per entry */
} export_src;

static int export_write(void* ctx, size_t index, px_st_sink* sink) {
  export_src* x = ctx;
  return px_st_sink_write(sink, x->data[index], x->e[index].nbytes);
}

/* Splits "dir/name" for px_st_write; out must be absolute or relative. */
static int write_safetensors(const char* out, export_src* x, const char* version, char* err,
                             size_t errlen) {
  char dir[4096];
  const char* slash = strrchr(out, '/');
  const char* name = slash ? slash + 1 : out;
  if (!*name) {
    snprintf(err, errlen, "--out %s: not a file name", out);
    return -1;
  }
  snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - out) : 1, slash ? out : ".");
  if (slash == out) snprintf(dir, sizeof dir, "/");
  const char* meta[] = {"pmx.version", version};
  return px_st_write(dir, name, x->e, x->n, export_write, x, meta, version ? 1 : 0, err, errlen);
}

static int export_checkpoint(const char* path, const char* out) {
  char err[512], line[512];
  px_st_file* f = px_st_open(path, err, sizeof err);
  if (!f) {
    fprintf(stderr, "paramex: export: %s\n", one_line(err, line, sizeof line, ' '));
    return 1;
  }
  size_t n = px_st_count(f), k = 0;
  export_src x = {0, calloc(n ? n : 1, sizeof *x.e), calloc(n ? n : 1, sizeof *x.data)};
  for (size_t i = 0; x.e && x.data && i < n; i++) {
    px_st_tensor t;
    px_st_entry_at(f, i, &t);
    size_t nl = strlen(t.name);
    if (nl > 9 && strcmp(t.name + nl - 9, "@momentum") == 0) continue; /* optimizer state */
    x.e[k] = (px_st_entry){t.name, t.dtype, t.ndim, t.shape, t.nbytes};
    x.data[k++] = t.data;
  }
  x.n = k;
  int rc = x.e && x.data ? write_safetensors(out, &x, px_st_meta(f, "pmx.version"), err, sizeof err)
                         : -1;
  if (rc != 0) fprintf(stderr, "paramex: export: %s\n", one_line(err, line, sizeof line, ' '));
  else printf("exported %zu tensors from %s to %s\n", k, path, out);
  free(x.e);
  free(x.data);
  px_st_close(f);
  return rc == 0 ? 0 : 1;
}

/* From a live server, or the shards of a list: every tensor pulled (cli_model.h). */
static int export_server(const char* list, const char* out) {
  char err[768], line[768];
  cli_model m;
  px_rpc_init();
  int rc = cli_model_pull(list, &m, err, sizeof err);
  px_rpc_shutdown();
  if (rc == 0) {
    export_src src = {m.n, calloc(m.n, sizeof *src.e), calloc(m.n, sizeof *src.data)};
    for (size_t i = 0; src.e && src.data && i < m.n; i++) {
      const cli_tensor* t = &m.t[i];
      src.e[i] = (px_st_entry){t->name, t->dtype, t->ndim, t->shape, t->bytes};
      src.data[i] = t->data;
    }
    char version[32];
    snprintf(version, sizeof version, "%" PRIu64, m.vmin);
    rc = src.e && src.data ? write_safetensors(out, &src, version, err, sizeof err) : -1;
    if (!src.e || !src.data) snprintf(err, sizeof err, "out of memory");
    if (rc == 0)
      printf("exported %zu tensors at version %" PRIu64 "%s from %s to %s\n", m.n, m.vmin,
             m.vmin == m.vmax ? "" : " (some chunks newer: training was running)", list, out);
    free(src.e);
    free(src.data);
  }
  if (rc != 0) fprintf(stderr, "paramex: export %s: %s\n", list, one_line(err, line, sizeof line, ' '));
  cli_model_free(&m);
  return rc == 0 ? 0 : 1;
}

int cmd_export(int argc, char** argv) {
  const char* out = NULL;
  const px_flag flags[] = {
      {"out", PX_FLAG_STR, &out, 0, 0, "FILE", "safetensors file to write (required)"},
      CONN_FLAGS,
  };
  const char* src = NULL;
  int rc = parse_cmd("export", flags, sizeof flags / sizeof flags[0], argc, argv, &src);
  if (rc >= 0) return rc;
  if (!out) {
    fprintf(stderr, "paramex export: --out FILE is required\n");
    return 2;
  }
  FILE* f = fopen(src, "rb");
  if (f) {
    fclose(f);
    return export_checkpoint(src, out);
  }
  return export_server(src, out);
}

