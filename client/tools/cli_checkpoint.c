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

/* From a live server: Stats for the tensors, one Pull (RAW chunks) for their bytes. */
typedef struct export_pull {
  Paramex__V1__StatsResponse* stats;
  uint8_t** bufs;
  uint32_t ti, ci, chunk_elems0;
  uint64_t vmin, vmax;
  bool bad;
  char err[256];
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool done;
  int status;
  char details[256];
} export_pull;

static void xp_message(px_cli_call* call, void* ctx, px_msg* m) {
  export_pull* x = ctx;
  if (!m) return;
  size_t nseg;
  const px_iov* seg = px_msg_segments(m, &nseg);
  px_chunk h;
  if (x->bad || px_chunk_parse(PX_CHUNK_PULL, seg, nseg, &h, x->err, sizeof x->err) != 0 ||
      x->ti >= x->stats->n_tensors) {
    if (!x->bad && x->ti >= x->stats->n_tensors) snprintf(x->err, sizeof x->err, "too many chunks");
    x->bad = true;
    px_msg_free(m);
    px_cli_call_cancel(call);
    return;
  }
  Paramex__V1__TensorStats* t = x->stats->tensors[x->ti];
  size_t es = px_dtype_size(t->dtype);
  if (h.chunk == 0) x->chunk_elems0 = es ? h.raw_len / (uint32_t)es : 0;
  uint64_t off = (uint64_t)h.chunk * x->chunk_elems0 * es;
  if (h.tensor_id != t->id || h.chunk != x->ci || es == 0 || off + h.raw_len > t->bytes ||
      px_chunk_decode(&h, seg, nseg, x->bufs[x->ti] + off, h.raw_len / es, (int)es, x->err,
                       sizeof x->err) != PX_DECODE_OK) {
    if (h.tensor_id != t->id || h.chunk != x->ci) snprintf(x->err, sizeof x->err, "chunks out of order");
    x->bad = true;
    px_msg_free(m);
    px_cli_call_cancel(call);
    return;
  }
  if (h.version < x->vmin) x->vmin = h.version;
  if (h.version > x->vmax) x->vmax = h.version;
  if (++x->ci == t->num_chunks) {
    x->ci = 0;
    x->ti++;
  }
  px_msg_free(m);
  px_cli_call_read(call);
}

static void xp_done(px_cli_call* call, void* ctx, int status, const char* details) {
  (void)call;
  export_pull* x = ctx;
  pthread_mutex_lock(&x->mu);
  x->status = status;
  snprintf(x->details, sizeof x->details, "%s", details);
  x->done = true;
  pthread_cond_signal(&x->cv);
  pthread_mutex_unlock(&x->mu);
}

static const px_cli_call_cbs xp_cbs = {xp_message, NULL, xp_done};

static int export_server(const char* addr, const char* out) {
  char err[512], details[512], line[512];
  px_rpc_init();
  px_rpc_channel* ch = open_channel(addr, err, sizeof err);
  if (!ch) {
    px_rpc_shutdown();
    fprintf(stderr, "paramex: export %s: %s\n", addr, one_line(err, line, sizeof line, ' '));
    return 1;
  }
  uint8_t* resp = NULL;
  size_t resp_len = 0;
  int st = px_rpc_unary(ch, STATS_PATH, "", 0, STATS_TIMEOUT_MS, false, &resp, &resp_len,
                         details, sizeof details);
  Paramex__V1__StatsResponse* s = st == PX_ST_OK ? paramex__v1__stats_response__unpack(NULL, resp_len, resp) : NULL;
  free(resp);
  int rc = 1;
  export_pull x = {0};
  pthread_mutex_init(&x.mu, NULL);
  pthread_cond_init(&x.cv, NULL);
  x.vmin = UINT64_MAX;
  if (!s) {
    fprintf(stderr, "paramex: export %s: Stats: %s: %s\n", addr, px_status_name(st),
            one_line(details, line, sizeof line, ' '));
    goto out;
  }
  x.stats = s;
  x.bufs = calloc(s->n_tensors ? s->n_tensors : 1, sizeof *x.bufs);
  uint32_t* ids = calloc(s->n_tensors ? s->n_tensors : 1, sizeof *ids);
  for (size_t i = 0; x.bufs && ids && i < s->n_tensors; i++) {
    x.bufs[i] = malloc(s->tensors[i]->bytes ? s->tensors[i]->bytes : 1);
    ids[i] = s->tensors[i]->id;
    if (!x.bufs[i]) break;
  }
  Paramex__V1__PullRequest pr = PARAMEX__V1__PULL_REQUEST__INIT;
  pr.n_tensor_ids = s->n_tensors;
  pr.tensor_ids = ids;
  pr.min_version = s->version_max; /* every chunk at least at the newest version seen */
  size_t plen = paramex__v1__pull_request__get_packed_size(&pr);
  uint8_t* pbuf = malloc(plen ? plen : 1);
  if (s->n_tensors == 0) {
    fprintf(stderr, "paramex: export %s: the server has no tensor\n", addr);
  } else if (pbuf && ids && x.bufs) {
    paramex__v1__pull_request__pack(&pr, pbuf);
    px_cli_call* call = px_cli_call_start(ch, PULL_PATH, 600000, false, &xp_cbs, &x);
    px_out o = {pbuf, plen, NULL, 0, NULL, NULL};
    px_cli_call_send(call, &o, true);
    px_cli_call_read(call);
    px_cli_call_unref(call);
    pthread_mutex_lock(&x.mu);
    while (!x.done) pthread_cond_wait(&x.cv, &x.mu);
    pthread_mutex_unlock(&x.mu);
    if (x.bad || x.status != PX_ST_OK || x.ti != s->n_tensors) {
      fprintf(stderr, "paramex: export %s: Pull: %s\n", addr,
              x.bad ? x.err : x.status != PX_ST_OK ? one_line(x.details, line, sizeof line, ' ')
                                                     : "the stream ended early");
    } else {
      export_src src = {s->n_tensors, calloc(s->n_tensors, sizeof *src.e),
                        calloc(s->n_tensors, sizeof *src.data)};
      for (size_t i = 0; src.e && src.data && i < s->n_tensors; i++) {
        src.e[i] = (px_st_entry){s->tensors[i]->name, s->tensors[i]->dtype,
                                  (uint32_t)s->tensors[i]->n_shape, s->tensors[i]->shape,
                                  s->tensors[i]->bytes};
        src.data[i] = x.bufs[i];
      }
      char version[32];
      snprintf(version, sizeof version, "%" PRIu64, x.vmin);
      if (src.e && src.data && write_safetensors(out, &src, version, err, sizeof err) == 0) {
        printf("exported %zu tensors at version %" PRIu64 "%s from %s to %s\n", s->n_tensors,
               x.vmin, x.vmin == x.vmax ? "" : " (some chunks newer: training was running)",
               addr, out);
        rc = 0;
      } else {
        fprintf(stderr, "paramex: export: %s\n", one_line(err, line, sizeof line, ' '));
      }
      free(src.e);
      free(src.data);
    }
  }
  for (size_t i = 0; x.bufs && i < s->n_tensors; i++) free(x.bufs[i]);
  free(x.bufs);
  free(ids);
  free(pbuf);
out:
  if (s) paramex__v1__stats_response__free_unpacked(s, NULL);
  px_rpc_channel_destroy(ch);
  px_rpc_shutdown();
  pthread_mutex_destroy(&x.mu);
  pthread_cond_destroy(&x.cv);
  return rc;
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

