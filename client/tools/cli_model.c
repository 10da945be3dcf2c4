/* A running model's parameters, from one server or its shards (cli_model.h). */
#include "cli_model.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "cli_common.h"
#include "codec/dtype.h"
#include "codec/payload.h"
#include "rpc/rpc_base.h"
#include "rpc/rpc_client.h"
#include "shard/shardmap.h"
#include "util/flags.h"
#include "util/iov.h"
#include "wire/chunk_msg.h"

void cli_model_free(cli_model* m) {
  for (size_t i = 0; m->t && i < m->n; i++) {
    free(m->t[i].ids);
    free(m->t[i].held);
    free(m->t[i].data);
    free(m->t[i].have);
  }
  free(m->t);
  for (uint32_t s = 0; s < m->nshards; s++) {
    if (m->stats && m->stats[s]) paramex__v1__stats_response__free_unpacked(m->stats[s], NULL);
    if (m->addr) free(m->addr[s]);
  }
  free(m->stats);
  free(m->addr);
  memset(m, 0, sizeof *m);
}

int cli_shard_stats(const char* addr, int64_t timeout_ms, Paramex__V1__StatsResponse** out,
                    char* err, size_t errlen) {
  char details[512], line[512];
  px_rpc_channel* ch = open_channel(addr, err, errlen);
  if (!ch) return -1;
  uint8_t* resp = NULL;
  size_t len = 0;
  int st = px_rpc_unary(ch, STATS_PATH, "", 0, timeout_ms, false, &resp, &len, details,
                        sizeof details);
  px_rpc_channel_destroy(ch);
  *out = st == PX_ST_OK ? paramex__v1__stats_response__unpack(NULL, len, resp) : NULL;
  free(resp);
  if (st != PX_ST_OK)
    snprintf(err, errlen, "%s: Stats: %s: %s", addr, px_status_name(st),
             one_line(details, line, sizeof line, ' '));
  else if (!*out)
    snprintf(err, errlen, "%s: malformed StatsResponse", addr);
  return *out ? 0 : -1;
}

static const Paramex__V1__TensorStats* find(const Paramex__V1__StatsResponse* s, const char* name) {
  for (size_t i = 0; i < s->n_tensors; i++)
    if (s->tensors[i]->name && strcmp(s->tensors[i]->name, name) == 0) return s->tensors[i];
  return NULL;
}

/* The tensors of shard 0, each found on every shard with the same facts. */
static int model_tensors(cli_model* m, char* err, size_t errlen) {
  const Paramex__V1__StatsResponse* s0 = m->stats[0];
  m->n = s0->n_tensors;
  m->t = calloc(m->n ? m->n : 1, sizeof *m->t);
  if (!m->t) goto oom;
  for (size_t i = 0; i < m->n; i++) {
    const Paramex__V1__TensorStats* ts = s0->tensors[i];
    cli_tensor* t = &m->t[i];
    t->name = ts->name ? ts->name : "";
    t->dtype = ts->dtype;
    t->ndim = (uint32_t)ts->n_shape;
    t->shape = ts->shape;
    t->bytes = ts->bytes;
    t->nchunks = ts->num_chunks;
    t->chunk_elems = ts->chunk_elems;
    t->vmin = UINT64_MAX;
    const size_t es = px_dtype_size(t->dtype);
    if (es == 0 || t->bytes % es || t->nchunks == 0 || t->chunk_elems == 0 ||
        (t->bytes / es + t->chunk_elems - 1) / t->chunk_elems != t->nchunks) {
      snprintf(err, errlen, "%s: tensor '%.200s': inconsistent dtype, size or chunking in Stats",
               m->addr[0], t->name);
      return -1;
    }
    t->ids = calloc(m->nshards, sizeof *t->ids);
    t->held = calloc(m->nshards, sizeof *t->held);
    t->data = malloc(t->bytes ? t->bytes : 1);
    t->have = calloc(t->nchunks, 1);
    if (!t->ids || !t->held || !t->data || !t->have) goto oom;
    for (uint32_t s = 0; s < m->nshards; s++) {
      const Paramex__V1__TensorStats* o = find(m->stats[s], t->name);
      if (!o || o->dtype != ts->dtype || o->bytes != ts->bytes || o->num_chunks != ts->num_chunks ||
          o->chunk_elems != ts->chunk_elems) {
        snprintf(err, errlen, "shard %u (%s) %s tensor '%.200s' as shard 0 has it", s, m->addr[s],
                 o ? "does not hold" : "has no", t->name);
        return -1;
      }
      t->ids[s] = o->id;
      /* Stats of a server from before shards has no own_chunks: it holds them all */
      t->held[s] = m->nshards == 1 && o->own_chunks == 0 ? o->num_chunks : o->own_chunks;
    }
  }
  return 0;
oom:
  snprintf(err, errlen, "out of memory");
  return -1;
}

int cli_model_stats(const char* list, cli_model* m, char* err, size_t errlen) {
  memset(m, 0, sizeof *m);
  uint32_t n = px_shard_list_count(list, PX_MAX_SHARDS, err, errlen);
  if (n == 0) return -1;
  m->addr = calloc(n, sizeof *m->addr);
  m->stats = calloc(n, sizeof *m->stats);
  if (!m->addr || !m->stats) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  m->nshards = n;
  for (uint32_t s = 0; s < n; s++) {
    char a[256];
    px_shard_list_get(list, s, a, sizeof a);
    if (!(m->addr[s] = strdup(a)) || cli_shard_stats(a, STATS_TIMEOUT_MS, &m->stats[s], err, errlen) != 0) return -1;
    const Paramex__V1__StatsResponse* r = m->stats[s];
    const uint32_t shards = r->shards ? r->shards : 1;
    if (shards != n || r->shard != s) {
      snprintf(err, errlen, "%s is shard %u of %u (--shard/--shards), but the list gives it as "
               "shard %u of %u: list every shard, in shard order", a, r->shard, shards, s, n);
      return -1;
    }
  }
  return model_tensors(m, err, errlen);
}

/* ---- pulling ------------------------------------------------------------------------------ */

typedef struct shard_pull {
  cli_model* m;
  uint32_t shard;
  size_t ti;           /* the tensor whose chunks come now */
  uint32_t got;        /* of them */
  bool bad;
  char err[256];
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool done;
  int status;
  char details[256];
} shard_pull;

/* Moves p past the tensors whose chunks of this shard all came. */
static void skip_full(shard_pull* p) {
  while (p->ti < p->m->n && p->got == p->m->t[p->ti].held[p->shard]) {
    p->ti++;
    p->got = 0;
  }
}

/* Decodes one chunk into its tensor; false with p->err when it is not one we expect. */
static bool take(shard_pull* p, const px_iov* seg, size_t nseg) {
  px_chunk h;
  if (px_chunk_parse(PX_CHUNK_PULL, seg, nseg, &h, p->err, sizeof p->err) != 0) return false;
  if (p->ti >= p->m->n) {
    snprintf(p->err, sizeof p->err, "more chunks than the shard holds");
    return false;
  }
  cli_tensor* t = &p->m->t[p->ti];
  const size_t es = px_dtype_size(t->dtype);
  const uint64_t numel = t->bytes / es, first = (uint64_t)h.chunk * t->chunk_elems;
  if (h.tensor_id != t->ids[p->shard] || h.chunk >= t->nchunks || t->have[h.chunk] ||
      px_shard_of(t->name, strlen(t->name), h.chunk, p->m->nshards) != p->shard) {
    snprintf(p->err, sizeof p->err, "unexpected chunk %u of tensor id %u (wanted '%.100s')",
             h.chunk, h.tensor_id, t->name);
    return false;
  }
  const uint64_t elems = numel - first < t->chunk_elems ? numel - first : t->chunk_elems;
  if (px_chunk_decode(&h, seg, nseg, t->data + first * es, (size_t)elems, (int)es, p->err,
                      sizeof p->err) != PX_DECODE_OK)
    return false;
  t->have[h.chunk] = 1;
  if (h.version < t->vmin) t->vmin = h.version;
  if (h.version > t->vmax) t->vmax = h.version;
  p->got++;
  skip_full(p);
  return true;
}

static void sp_message(px_cli_call* call, void* ctx, px_msg* m) {
  shard_pull* p = ctx;
  if (!m) return;
  size_t nseg;
  const px_iov* seg = px_msg_segments(m, &nseg);
  bool ok = !p->bad && take(p, seg, nseg);
  px_msg_free(m);
  if (ok) {
    px_cli_call_read(call);
  } else {
    p->bad = true;
    px_cli_call_cancel(call);
  }
}

static void sp_done(px_cli_call* call, void* ctx, int status, const char* details) {
  (void)call;
  shard_pull* p = ctx;
  pthread_mutex_lock(&p->mu);
  p->status = status;
  snprintf(p->details, sizeof p->details, "%s", details);
  p->done = true;
  pthread_cond_signal(&p->cv);
  pthread_mutex_unlock(&p->mu);
}

static const px_cli_call_cbs sp_cbs = {sp_message, NULL, sp_done};

/* One Pull of every tensor from shard s (its own chunks, RAW, at least min_version). */
static int pull_shard(cli_model* m, uint32_t s, uint64_t min_version, char* err, size_t errlen) {
  char line[512];
  px_rpc_channel* ch = open_channel(m->addr[s], err, errlen);
  if (!ch) return -1;
  uint32_t* ids = malloc(m->n * sizeof *ids);
  Paramex__V1__PullRequest pr = PARAMEX__V1__PULL_REQUEST__INIT;
  for (size_t i = 0; ids && i < m->n; i++) ids[i] = m->t[i].ids[s];
  pr.n_tensor_ids = m->n;
  pr.tensor_ids = ids;
  pr.min_version = min_version;
  size_t plen = paramex__v1__pull_request__get_packed_size(&pr);
  uint8_t* pbuf = ids ? malloc(plen ? plen : 1) : NULL;
  shard_pull p = {.m = m, .shard = s};
  pthread_mutex_init(&p.mu, NULL);
  pthread_cond_init(&p.cv, NULL);
  int rc = -1;
  if (!pbuf) {
    snprintf(err, errlen, "out of memory");
  } else {
    skip_full(&p);
    paramex__v1__pull_request__pack(&pr, pbuf);
    px_cli_call* call = px_cli_call_start(ch, PULL_PATH, 600000, false, &sp_cbs, &p);
    px_out o = {pbuf, plen, NULL, 0, NULL, NULL};
    px_cli_call_send(call, &o, true);
    px_cli_call_read(call);
    px_cli_call_unref(call);
    pthread_mutex_lock(&p.mu);
    while (!p.done) pthread_cond_wait(&p.cv, &p.mu);
    pthread_mutex_unlock(&p.mu);
    if (p.bad)
      snprintf(err, errlen, "%s: Pull: %s", m->addr[s], p.err);
    else if (p.status != PX_ST_OK)
      snprintf(err, errlen, "%s: Pull: %s: %s", m->addr[s], px_status_name(p.status),
               one_line(p.details, line, sizeof line, ' '));
    else if (p.ti != m->n)
      snprintf(err, errlen, "%s: Pull: the stream ended early", m->addr[s]);
    else
      rc = 0;
  }
  free(ids);
  free(pbuf);
  px_rpc_channel_destroy(ch);
  pthread_mutex_destroy(&p.mu);
  pthread_cond_destroy(&p.cv);
  return rc;
}

int cli_model_pull(const char* list, cli_model* m, char* err, size_t errlen) {
  if (cli_model_stats(list, m, err, errlen) != 0) return -1;
  if (m->n == 0) {
    snprintf(err, errlen, "%s: no tensor declared", list);
    return -1;
  }
  uint64_t newest = 0; /* every chunk at least at the newest version any shard has */
  for (uint32_t s = 0; s < m->nshards; s++)
    if (m->stats[s]->version_max > newest) newest = m->stats[s]->version_max;
  for (uint32_t s = 0; s < m->nshards; s++)
    if (pull_shard(m, s, newest, err, errlen) != 0) return -1;
  m->vmin = UINT64_MAX;
  m->vmax = 0;
  for (size_t i = 0; i < m->n; i++) {
    const cli_tensor* t = &m->t[i];
    for (uint32_t k = 0; k < t->nchunks; k++)
      if (!t->have[k]) {
        snprintf(err, errlen, "tensor '%.200s' chunk %u came from no shard", t->name, k);
        return -1;
      }
    if (t->vmin < m->vmin) m->vmin = t->vmin;
    if (t->vmax > m->vmax) m->vmax = t->vmax;
  }
  return 0;
}

/* ---- paramex checksum ---------------------------------------------------------------------- */

int cmd_checksum(int argc, char** argv) {
  bool json = false;
  const px_flag flags[] = {
      {"json", PX_FLAG_BOOL, &json, 0, 0, NULL, "print one JSON object"},
      CONN_FLAGS,
  };
  const char* list = NULL;
  int rc = parse_cmd("checksum", flags, sizeof flags / sizeof flags[0], argc, argv, &list);
  if (rc >= 0) return rc;
  char err[768], line[768];
  cli_model m;
  px_rpc_init();
  rc = cli_model_pull(list, &m, err, sizeof err);
  px_rpc_shutdown();
  if (rc != 0) {
    fprintf(stderr, "paramex: checksum: %s\n", one_line(err, line, sizeof line, ' '));
    cli_model_free(&m);
    return 1;
  }
  if (json) printf("{\"shards\":%u,\"version\":%" PRIu64 ",\"tensors\":[", m.nshards, m.vmin);
  else printf("%-32s  %8s  %s\n", "TENSOR", "VERSION", "CHECKSUM");
  for (size_t i = 0; i < m.n; i++) {
    const cli_tensor* t = &m.t[i];
    const uint64_t x = XXH64(t->data, t->bytes, 0);
    if (json) {
      fputs(i ? ",{\"name\":" : "{\"name\":", stdout);
      json_str(stdout, t->name);
      printf(",\"version\":%" PRIu64 ",\"checksum\":\"0x%016" PRIx64 "\"}", t->vmin, x);
    } else {
      printf("%-32s  %8" PRIu64 "  0x%016" PRIx64 "%s\n", one_line(t->name, line, sizeof line, '?'),
             t->vmin, x, t->vmin == t->vmax ? "" : " (chunks at several versions)");
    }
  }
  if (json) printf("]}\n");
  else printf("%zu tensors at version %" PRIu64 " from %u shard%s\n", m.n, m.vmin, m.nshards,
              m.nshards == 1 ? "" : "s");
  const bool mixed = m.vmin != m.vmax;
  if (mixed)
    fprintf(stderr, "paramex: checksum: chunks at versions %" PRIu64 "..%" PRIu64
            " (training is running): the checksums are of no single version\n", m.vmin, m.vmax);
  cli_model_free(&m);
  if (fflush(stdout) != 0 || ferror(stdout)) return 1;
  return mixed ? 1 : 0;
}
