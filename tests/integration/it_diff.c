/* Versioned diff sync end to end (issue 3): a real paramex-server and real pmx_diff_worker
 * processes (worker_diff.c) train the job of diff_model.h; every buffer any worker pulls,
 * at every step, must equal bit for bit what the reference computed here says the server
 * holds at that version (rank-order sum, mean, weight decay, momentum, SGD in f32, RNE
 * rounding back for bf16 / f16 tensors, RNE bf16 views), whatever base the worker held.
 *
 * Workers follow per-rank plans (diff_model.h) drawn from a seeded RNG: some pull every
 * step, some only every k-th version (gaps beyond --history included, so they get full
 * snapshots), some into fresh buffers (no base), some pull twice (unchanged chunks).
 * Since every pull names the version of its base, the test knows which answer every chunk
 * must get and checks the server's pull_unchanged / pull_delta / pull_snapshot counters
 * exactly, and the wire bytes against the targets of the issue.
 *
 * The last test speaks to a server through the raw rpc layer with hostile Pull and Push
 * requests (views, accept lists, encodings, zstd frames, checksums, dtypes). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "check.h"
#include "codec/checksum.h"
#include "codec/dtype.h"
#include "codec/initializer.h"
#include "codec/payload.h"
#include "codec/zstdframe.h"
#include "rpc/rpc_base.h"
#include "rpc/rpc_client.h"
#include "util/iov.h"
#include "wire/chunk_msg.h"
#include "diff_model.h"
#include "corrupt_proxy.h"
#include "harness.h"

#define SERVER_START_MS 10000
#define JOB_DEADLINE_MS 60000
#define SERVER_STOP_MS 15000
#define CALL_MS 10000

#define MAXW 4
#define MAXT PX_DM_MAX_TENSORS
#define MAXS 40
#define NONE UINT64_MAX

static const char* diff_worker_bin(void) {
  const char* v = getenv("PMX_DIFF_WORKER_BIN");
  if (!v || !*v) {
    fprintf(stderr, "test_diff: PMX_DIFF_WORKER_BIN is not set (run through meson test)\n");
    abort();
  }
  return v;
}

/* ---- jobs -------------------------------------------------------------------------------- */

typedef struct dtensor {
  const char* name;
  int dtype; /* PMX_DT_* */
  size_t numel;
} dtensor;

typedef struct djob {
  uint32_t world;
  uint64_t steps;
  size_t ndata;                /* data tensors; the sync tensor (f32) has index ndata */
  dtensor data[MAXT - 1];
  size_t sync_numel;
  const char* lr;              /* flag strings; the reference converts them like the server */
  const char* momentum;
  const char* weight_decay;
  uint32_t chunk_elems;        /* --chunk-bytes is 4 * chunk_elems */
  uint32_t history;            /* --history */
  bool server_no_compression;  /* --no-compression */
  const char* fault_corrupt;   /* N: a proxy corrupts every Nth pulled chunk; NULL for none */
  const char* push_mode;       /* NULL = raw, "zstd", "bf16", "bf16zstd" */
  size_t push_min_bytes;
  bool view_bf16[MAXW];        /* per rank: pull the bf16 view of f32 data tensors */
  bool client_no_compression[MAXW];
  char plan[MAXW][MAXS + 2];   /* per rank, steps + 1 characters */
} djob;

static uint32_t nchunks(const djob* j, size_t numel) {
  return (uint32_t)((numel + j->chunk_elems - 1) / j->chunk_elems);
}

static size_t tensor_numel(const djob* j, size_t t) {
  return t == j->ndata ? j->sync_numel : j->data[t].numel;
}

static int tensor_dtype(const djob* j, size_t t) {
  return t == j->ndata ? PX_DT_F32 : j->data[t].dtype;
}

/* The version rank r's data buffers hold when it computes step s (its last pull <= s). */
static uint64_t held_version(const djob* j, uint32_t r, uint64_t s) {
  for (uint64_t k = s + 1; k-- > 0;)
    if (j->plan[r][k] != PX_DM_SKIP) return k;
  return NONE;
}

/* ---- seeded plans -------------------------------------------------------------------------- */

static uint64_t rng_next(uint64_t* s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* Pulls every step; a pull is repeated (second answer unchanged) with chance repeat_pct. */
static void plan_every(char* plan, uint64_t steps, uint64_t* rng, unsigned repeat_pct) {
  for (uint64_t s = 0; s <= steps; s++)
    plan[s] = s < steps && rng_next(rng) % 100 < repeat_pct ? PX_DM_REPEAT : PX_DM_PULL;
  plan[steps + 1] = 0;
}

/* Pulls at random gaps of 1..kmax versions, into fresh buffers with chance fresh_pct; the
 * final version is always pulled. */
static void plan_gaps(char* plan, uint64_t steps, uint64_t* rng, unsigned kmax, unsigned fresh_pct) {
  memset(plan, PX_DM_SKIP, steps + 1);
  plan[steps + 1] = 0;
  for (uint64_t s = 0; s <= steps; s += 1 + rng_next(rng) % kmax)
    plan[s] = s > 0 && rng_next(rng) % 100 < fresh_pct ? PX_DM_FRESH : PX_DM_PULL;
  if (plan[steps] == PX_DM_SKIP) plan[steps] = PX_DM_PULL;
}

/* ---- the reference ------------------------------------------------------------------------- */

typedef struct ref {
  size_t nt;
  size_t numel[MAXT];
  size_t width[MAXT]; /* storage bytes per element: 4 (f32) or 2 */
  uint8_t* v[MAXT];   /* versions 0..steps, one after the other */
  uint8_t* scratch;   /* a bf16 view */
} ref;

static void ref_free(ref* R) {
  for (size_t t = 0; t < R->nt; t++) free(R->v[t]);
  free(R->scratch);
  memset(R, 0, sizeof *R);
}

static const void* ref_at(const ref* R, size_t t, uint64_t v) {
  return R->v[t] + (size_t)v * R->numel[t] * R->width[t];
}

/* f32 values of storage words (exact widening). */
static void widen(int dtype, const void* src, float* dst, size_t n) {
  if (dtype == PX_DT_F32) memcpy(dst, src, n * sizeof(float));
  else if (dtype == PX_DT_BF16) px_bf16_to_f32_n(src, dst, n);
  else px_f16_to_f32_n(src, dst, n);
}

/* Storage words of f32 values (RNE for the 16-bit dtypes). */
static void narrow(int dtype, const float* src, void* dst, size_t n) {
  if (dtype == PX_DT_F32) memcpy(dst, src, n * sizeof(float));
  else if (dtype == PX_DT_BF16) px_f32_to_bf16_n(src, dst, n);
  else px_f32_to_f16_n(src, dst, n);
}

/* x := x rounded to dtype and widened back (what the server sees of a 16-bit push). */
static void round_trip(int dtype, float* x, uint16_t* tmp, size_t n) {
  narrow(dtype, x, tmp, n);
  widen(dtype, tmp, x, n);
}

static bool pulls_view(const djob* j, uint32_t r, size_t t) {
  return t < j->ndata && j->view_bf16[r] && j->data[t].dtype == PX_DT_F32;
}

/* What rank r's buffer of tensor t holds after pulling version v: *bytes bytes. */
static const void* ref_pulled(const djob* j, ref* R, uint32_t r, size_t t, uint64_t v, size_t* bytes) {
  const void* p = ref_at(R, t, v);
  if (!pulls_view(j, r, t)) {
    *bytes = R->numel[t] * R->width[t];
    return p;
  }
  px_f32_to_bf16_n(p, (uint16_t*)R->scratch, R->numel[t]);
  *bytes = R->numel[t] * 2;
  return R->scratch;
}

/* Every version of every tensor, as the server must compute them. */
static void ref_compute(const djob* j, ref* R) {
  const float lr = (float)strtod(j->lr, NULL);
  const float mu = (float)strtod(j->momentum, NULL);
  const float wd = (float)strtod(j->weight_decay, NULL);
  const float nw = (float)j->world;
  const bool push_bf16 = j->push_mode && strstr(j->push_mode, "bf16") != NULL;
  memset(R, 0, sizeof *R);
  R->nt = j->ndata + 1;
  size_t maxn = 0;
  for (size_t t = 0; t < R->nt; t++) {
    R->numel[t] = tensor_numel(j, t);
    R->width[t] = tensor_dtype(j, t) == PX_DT_F32 ? 4 : 2;
    R->v[t] = malloc((size_t)(j->steps + 1) * R->numel[t] * R->width[t]);
    CHECK(R->v[t], "out of memory");
    if (R->numel[t] > maxn) maxn = R->numel[t];
  }
  R->scratch = malloc(maxn * 2);
  float* p = malloc(maxn * sizeof *p);
  float* x = malloc(maxn * sizeof *x);
  float* g = malloc(maxn * sizeof *g);
  float* sum = malloc(maxn * sizeof *sum);
  float* mom = malloc(maxn * sizeof *mom);
  uint16_t* tmp = malloc(maxn * sizeof *tmp);
  CHECK(R->scratch && p && x && g && sum && mom && tmp, "out of memory");

  for (size_t t = 0; t < R->nt; t++) {
    const int dt = tensor_dtype(j, t);
    const size_t n = R->numel[t];
    CHECK(px_dm_init((uint32_t)t, p, n) == 0, "initializer");
    narrow(dt, p, R->v[t], n);
    for (uint64_t s = 0; s < j->steps; s++) {
      for (uint32_t r = 0; r < j->world; r++) {
        uint64_t h = t == j->ndata ? s : held_version(j, r, s);
        CHECK(h != NONE, "rank %" PRIu32 " holds nothing at step %" PRIu64, r, s);
        widen(dt, ref_at(R, t, h), x, n);
        if (pulls_view(j, r, t)) round_trip(PX_DT_BF16, x, tmp, n);
        CHECK(px_dm_grad((uint32_t)t, r, s, x, g, n) == 0, "gradient");
        /* what the server receives: the tensor's dtype, or the lossy bf16 push cast */
        if (dt != PX_DT_F32) round_trip(dt, g, tmp, n);
        else if (push_bf16 && t < j->ndata && n * 4 >= j->push_min_bytes)
          round_trip(PX_DT_BF16, g, tmp, n);
        if (r == 0) memcpy(sum, g, n * sizeof *g);
        else
          for (size_t i = 0; i < n; i++) sum[i] += g[i];
      }
      /* server/optimizer.c px_sgd_apply on the f32 master (the widened 16-bit words) */
      widen(dt, ref_at(R, t, s), p, n);
      for (size_t i = 0; i < n; i++) {
        float d = sum[i] / nw;
        if (wd != 0.0f) d = d + wd * p[i];
        if (mu != 0.0f) {
          float m = s == 0 ? d : mu * mom[i] + d;
          mom[i] = m;
          d = m;
        }
        p[i] = p[i] - lr * d;
      }
      narrow(dt, p, (uint8_t*)ref_at(R, t, s + 1), n);
    }
  }
  free(p);
  free(x);
  free(g);
  free(sum);
  free(mom);
  free(tmp);
}

/* ---- checks ------------------------------------------------------------------------------- */

/* Fails with the first differing element when got and want differ in any bit. */
static void check_same_bits(const char* what, const void* got, const void* want, size_t bytes,
                            size_t width) {
  if (memcmp(got, want, bytes) == 0) return;
  const uint8_t* a = got;
  const uint8_t* b = want;
  for (size_t i = 0; i < bytes / width; i++) {
    uint32_t x = 0, y = 0;
    memcpy(&x, a + i * width, width);
    memcpy(&y, b + i * width, width);
    CHECK(x == y, "%s: element %zu of %zu is 0x%0*" PRIx32 ", want 0x%0*" PRIx32, what, i, bytes / width,
          (int)width * 2, x, (int)width * 2, y);
  }
}

/* ---- running a job ------------------------------------------------------------------------ */

/* One pull a worker reported. */
typedef struct prec {
  uint32_t rank;
  uint64_t step;
  char kind;           /* 'S' sync, 'p' / 'f' / 'r' data tensors */
  uint64_t have;       /* the version its buffers held before (NONE: none) */
  uint64_t wire;       /* pull wire bytes (client count, heal pulls included) */
  uint64_t raw32;      /* the f32 bytes of the tensors pulled (whatever the view) */
  uint64_t checksum_failures;
} prec;

typedef struct jres {
  size_t nrec;
  prec rec[MAXW * (2 * (MAXS + 1) + 8)];
  px_dm_rec end[MAXW];
  uint64_t exp_unchanged, exp_delta, exp_snapshot; /* pulled chunks the server must count */
  Paramex__V1__StatsResponse* st;                  /* Stats after the job (free it) */
  uint8_t* final[MAXT];                            /* rank 0's final pull of each data tensor */
  size_t final_bytes[MAXT];
  int64_t ms;
} jres;

static void jres_free(jres* o) {
  if (o->st) protobuf_c_message_free_unpacked(&o->st->base, NULL);
  for (size_t t = 0; t < MAXT; t++) free(o->final[t]);
  memset(o, 0, sizeof *o);
}

static const char* dtype_flag(int dt) {
  return dt == PX_DT_F32 ? "f32" : dt == PX_DT_BF16 ? "bf16" : "f16";
}

/* How the server must answer one chunk pulled from base `have` at version v. */
static void count_expected(const djob* j, uint32_t r, uint64_t have, uint64_t v, uint64_t chunks,
                           jres* o) {
  bool compress = !j->server_no_compression && !j->client_no_compression[r];
  if (have == v) o->exp_unchanged += chunks;
  else if (compress && have != NONE && have < v && v - have <= j->history) o->exp_delta += chunks;
  else o->exp_snapshot += chunks;
}

static const uint8_t* take(const uint8_t** cur, const uint8_t* end, size_t n, const char* what) {
  CHECK((size_t)(end - *cur) >= n, "%s: the worker's output ends early", what);
  const uint8_t* p = *cur;
  *cur += n;
  return p;
}

/* Reads rank r's output and checks every record against the plan and the reference. */
static void check_worker_output(const djob* j, ref* R, uint32_t r, const uint8_t* buf, size_t len,
                                jres* o) {
  const uint8_t* cur = buf;
  const uint8_t* end = buf + len;
  uint64_t have = NONE, sync_have = NONE;
  char what[160];
  for (uint64_t s = 0; s <= j->steps; s++) {
    const char act = j->plan[r][s];
    char kinds[3] = {'S', 0, 0};
    if (act == PX_DM_PULL || act == PX_DM_FRESH) kinds[1] = act;
    if (act == PX_DM_REPEAT) {
      kinds[1] = PX_DM_PULL;
      kinds[2] = PX_DM_REPEAT;
    }
    for (int k = 0; k < 3 && kinds[k]; k++) {
      const char kind = kinds[k];
      snprintf(what, sizeof what, "rank %" PRIu32 " step %" PRIu64 " pull '%c'", r, s, kind);
      px_dm_rec h;
      memcpy(&h, take(&cur, end, sizeof h, what), sizeof h);
      CHECK(h.magic == PX_DM_REC_MAGIC && h.step == s && h.kind == (uint32_t)kind,
            "%s: the worker wrote a record of step %" PRIu32 " kind '%c'", what, h.step, (char)h.kind);
      const bool sync = kind == 'S';
      const size_t nt = sync ? 1 : j->ndata;
      CHECK(h.ntensors == nt, "%s: %" PRIu32 " tensors", what, h.ntensors);
      uint64_t vers[MAXT];
      memcpy(vers, take(&cur, end, nt * sizeof *vers, what), nt * sizeof *vers);
      prec* pr = &o->rec[o->nrec++];
      memset(pr, 0, sizeof *pr);
      pr->rank = r;
      pr->step = s;
      pr->kind = kind;
      pr->have = sync ? sync_have : kind == PX_DM_FRESH ? NONE : have;
      pr->wire = h.pull_wire;
      pr->checksum_failures = h.checksum_failures;
      uint64_t chunks = 0;
      for (size_t i = 0; i < nt; i++) {
        size_t t = sync ? j->ndata : i;
        CHECK(vers[i] == s, "%s: tensor %zu at version %" PRIu64, what, t, vers[i]);
        size_t bytes;
        const void* want = ref_pulled(j, R, r, t, s, &bytes);
        const uint8_t* got = take(&cur, end, bytes, what);
        char w2[400];
        snprintf(w2, sizeof w2, "%s: tensor %zu (%s%s) vs reference version %" PRIu64, what, t,
                 sync ? "sync" : j->data[t].name, pulls_view(j, r, t) ? ", bf16 view" : "", s);
        check_same_bits(w2, got, want, bytes, bytes / R->numel[t]);
        if (r == 0 && !sync && s == j->steps) {
          free(o->final[t]);
          o->final[t] = malloc(bytes);
          CHECK(o->final[t], "out of memory");
          memcpy(o->final[t], got, bytes);
          o->final_bytes[t] = bytes;
        }
        pr->raw32 += R->numel[t] * 4;
        chunks += nchunks(j, R->numel[t]);
      }
      count_expected(j, r, pr->have, s, chunks, o);
      uint64_t want_unchanged = pr->have == s ? chunks : 0;
      CHECK(h.pull_unchanged == want_unchanged, "%s: the client counted %" PRIu64 " unchanged chunks, want %" PRIu64,
            what, h.pull_unchanged, want_unchanged);
      if (!j->fault_corrupt)
        CHECK(h.checksum_failures == 0, "%s: %" PRIu64 " checksum failures without corruption", what,
              h.checksum_failures);
      if (sync) sync_have = s;
      else have = s;
    }
  }
  snprintf(what, sizeof what, "rank %" PRIu32 " end record", r);
  memcpy(&o->end[r], take(&cur, end, sizeof o->end[r], what), sizeof o->end[r]);
  CHECK(o->end[r].magic == PX_DM_REC_MAGIC && o->end[r].kind == 'E', "%s missing", what);
  CHECK(cur == end, "rank %" PRIu32 ": %zu bytes after the end record", r, (size_t)(end - cur));
}

/* Runs the job: server, workers, every pulled buffer against the reference, Stats; the
 * server is stopped (SIGTERM, exit 0) before it returns. */
static void run_job(const char* name, const djob* j, ref* R, jres* o) {
  memset(o, 0, sizeof *o);
  CHECK(j->world <= MAXW && j->steps <= MAXS && j->ndata < MAXT, "job too large for this test");
  for (uint32_t r = 0; r < j->world; r++)
    CHECK(strlen(j->plan[r]) == j->steps + 1, "%s: plan of rank %" PRIu32 " has %zu characters", name, r,
          strlen(j->plan[r]));
  char dir[512], err[512];
  CHECK(px_h_mkdtemp(dir, sizeof dir) == 0, "mkdtemp");
  int64_t t0 = px_h_now_ms();

  char world_s[16], chunk_s[24], hist_s[16], steps_s[24], sync_s[24], min_s[24];
  snprintf(world_s, sizeof world_s, "%" PRIu32, j->world);
  snprintf(chunk_s, sizeof chunk_s, "%" PRIu32, j->chunk_elems * 4);
  snprintf(hist_s, sizeof hist_s, "%" PRIu32, j->history);
  snprintf(steps_s, sizeof steps_s, "%" PRIu64, j->steps);
  snprintf(sync_s, sizeof sync_s, "%zu", j->sync_numel);
  snprintf(min_s, sizeof min_s, "%zu", j->push_min_bytes);
  const char* args[24] = {"--workers", world_s, "--lr", j->lr, "--momentum", j->momentum,
                          "--weight-decay", j->weight_decay, "--chunk-bytes", chunk_s,
                          "--history", hist_s, "--threads", "2", "--log-level", "warn"};
  size_t na = 16;
  if (j->server_no_compression) args[na++] = "--no-compression";
  args[na] = NULL;
  px_h_server srv;
  CHECK(px_h_server_start(&srv, args, NULL, SERVER_START_MS, err, sizeof err) == 0, "%s: server start: %s",
        name, err);
  /* corrupted frames: the workers reach the server through a proxy that flips a byte of
   * every Nth pulled chunk (a faulty link; the server is not involved) */
  px_h_proxy* proxy = NULL;
  char worker_addr[64];
  snprintf(worker_addr, sizeof worker_addr, "%s", srv.addr);
  if (j->fault_corrupt) {
    int pport = 0;
    proxy = px_h_proxy_start(srv.port, (unsigned)atoi(j->fault_corrupt), 100, &pport);
    CHECK(proxy, "%s: cannot start the corrupting proxy", name);
    snprintf(worker_addr, sizeof worker_addr, "127.0.0.1:%d", pport);
  }

  char tensor_s[MAXT][96];
  for (size_t t = 0; t < j->ndata; t++)
    snprintf(tensor_s[t], sizeof tensor_s[t], "%s:%s:%zu", j->data[t].name, dtype_flag(j->data[t].dtype),
             j->data[t].numel);
  pid_t pids[MAXW];
  for (uint32_t r = 0; r < j->world; r++) {
    char rank_s[16], out_path[600];
    snprintf(rank_s, sizeof rank_s, "%" PRIu32, r);
    snprintf(out_path, sizeof out_path, "%s/pulls.%" PRIu32, dir, r);
    const char* argv[48] = {diff_worker_bin(), "--server", worker_addr, "--rank", rank_s, "--world", world_s,
                            "--steps", steps_s, "--out", out_path, "--plan", j->plan[r],
                            "--sync-numel", sync_s, "--timeout-ms", "30000"};
    size_t n = 17;
    for (size_t t = 0; t < j->ndata; t++) {
      argv[n++] = "--tensor";
      argv[n++] = tensor_s[t];
    }
    if (j->view_bf16[r]) {
      argv[n++] = "--view";
      argv[n++] = "bf16";
    }
    if (j->push_mode) {
      argv[n++] = "--push-mode";
      argv[n++] = j->push_mode;
      argv[n++] = "--push-min-bytes";
      argv[n++] = min_s;
    }
    if (j->client_no_compression[r]) argv[n++] = "--no-compression";
    argv[n] = NULL;
    pids[r] = px_h_spawn(argv, NULL, -1, -1);
    CHECK(pids[r] > 0, "%s: cannot start worker %" PRIu32, name, r);
  }
  int64_t deadline = px_h_now_ms() + JOB_DEADLINE_MS;
  for (uint32_t r = 0; r < j->world; r++) {
    int ws = 0;
    int64_t left = deadline - px_h_now_ms();
    CHECK(px_h_wait(pids[r], left > 0 ? (int)left : 0, &ws) == 0,
          "%s: worker %" PRIu32 " did not finish within %d ms", name, r, JOB_DEADLINE_MS);
    char d[96];
    CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "%s: worker %" PRIu32 " %s (its stderr is above)", name, r,
          px_h_describe_wstatus(ws, d, sizeof d));
  }
  o->ms = px_h_now_ms() - t0;

  for (uint32_t r = 0; r < j->world; r++) {
    char path[600];
    snprintf(path, sizeof path, "%s/pulls.%" PRIu32, dir, r);
    size_t len = 0;
    uint8_t* buf = px_h_read_file(path, &len);
    CHECK(buf, "%s: cannot read %s", name, path);
    check_worker_output(j, R, r, buf, len, o);
    free(buf);
  }

  /* Stats: every chunk at the last version with the reference's checksum; counters. */
  px_rpc_channel* ch = px_rpc_channel_create(srv.addr, err, sizeof err);
  CHECK(ch, "channel: %s", err);
  Paramex__V1__StatsResponse* st = px_h_stats(ch, err, sizeof err);
  CHECK(st, "%s: %s", name, err);
  o->st = st;
  px_rpc_channel_destroy(ch);
  uint64_t chunks_total = 0;
  for (size_t t = 0; t < R->nt; t++) {
    const char* tn = t == j->ndata ? "sync" : j->data[t].name;
    const Paramex__V1__TensorStats* ts = px_h_stats_tensor(st, tn);
    CHECK(ts, "%s: Stats has no tensor %s", name, tn);
    CHECK((int)ts->dtype == tensor_dtype(j, t), "%s: %s dtype %d", name, tn, (int)ts->dtype);
    CHECK(ts->num_chunks == nchunks(j, R->numel[t]), "%s: %s has %" PRIu32 " chunks", name, tn, ts->num_chunks);
    chunks_total += ts->num_chunks;
    CHECK(ts->version_min == j->steps && ts->version_max == j->steps, "%s: %s versions %" PRIu64 "..%" PRIu64,
          name, tn, ts->version_min, ts->version_max);
    uint64_t want = it_stats_checksum(ref_at(R, t, j->steps), R->numel[t] * R->width[t]);
    CHECK(ts->checksum == want, "%s: %s: Stats checksum %016" PRIx64 ", the reference hashes to %016" PRIx64,
          name, tn, ts->checksum, want);
  }
  CHECK(st->steps_completed == j->steps * chunks_total, "%s: steps_completed %" PRIu64, name,
        st->steps_completed);
  CHECK(st->push_chunks == j->world * j->steps * chunks_total, "%s: push_chunks %" PRIu64, name,
        st->push_chunks);
  CHECK(st->rejected_calls == 0, "%s: rejected_calls %" PRIu64, name, st->rejected_calls);
  CHECK(st->pull_unchanged == o->exp_unchanged, "%s: Stats pull_unchanged %" PRIu64 ", want %" PRIu64, name,
        st->pull_unchanged, o->exp_unchanged);
  if (st->pull_delta != o->exp_delta) {
    /* Which pulls were answered in full instead? (their wire bytes give them away) */
    for (size_t i = 0; i < o->nrec; i++) {
      const prec* p = &o->rec[i];
      bool want_delta = !j->server_no_compression && !j->client_no_compression[p->rank] && p->have != NONE &&
                        p->have < p->step && p->step - p->have <= j->history;
      if (want_delta && p->wire * 10 > p->raw32 * 8)
        fprintf(stderr, "# %s: rank %" PRIu32 " pull '%c' at step %" PRIu64 " from version %" PRIu64
                        ": %" PRIu64 " wire bytes for %" PRIu64 " raw f32 bytes: not a diff\n",
                name, p->rank, p->kind, p->step, p->have, p->wire, p->raw32);
    }
  }
  CHECK(st->pull_delta == o->exp_delta, "%s: Stats pull_delta %" PRIu64 ", want %" PRIu64
        " (a pull from a base within --history answered in full?)", name, st->pull_delta, o->exp_delta);
  if (!j->fault_corrupt) {
    CHECK(st->pull_snapshot == o->exp_snapshot, "%s: Stats pull_snapshot %" PRIu64 ", want %" PRIu64, name,
          st->pull_snapshot, o->exp_snapshot);
    CHECK(st->pull_chunks == o->exp_unchanged + o->exp_delta + o->exp_snapshot, "%s: Stats pull_chunks %" PRIu64,
          name, st->pull_chunks);
  }

  if (proxy) {
    CHECK(px_h_proxy_corrupted(proxy) > 0, "%s: the proxy corrupted nothing", name);
    px_h_proxy_stop(proxy);
  }
  int ws = 0;
  size_t extra = 0;
  CHECK(px_h_server_stop(&srv, SERVER_STOP_MS, &ws, &extra) == 0, "%s: server did not exit within %d ms of SIGTERM",
        name, SERVER_STOP_MS);
  char d[96];
  CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "%s: server %s after SIGTERM", name,
        px_h_describe_wstatus(ws, d, sizeof d));
  px_h_rmtree(dir);
  fprintf(stderr, "# %s: %" PRIu32 " workers, %" PRIu64 " steps: %" PRId64 " ms; pulled chunks: %" PRIu64
                  " unchanged, %" PRIu64 " delta, %" PRIu64 " snapshot; %" PRIu64 " encodes, %" PRIu64
                  " cache hits, history %" PRIu64 " B\n",
          name, j->world, j->steps, o->ms, st->pull_unchanged, st->pull_delta, st->pull_snapshot, st->encodes,
          st->frame_cache_hits, st->history_bytes);
}

/* Sums of the wire and f32 raw bytes of the pulls that match. */
typedef struct wsum {
  uint64_t n, wire, raw32;
} wsum;

static bool rec_delta1(const prec* p) { return p->have != NONE && p->have + 1 == p->step; }

static wsum sum_recs(const jres* o, int rank, char kind, bool (*pred)(const prec*)) {
  wsum w = {0, 0, 0};
  for (size_t i = 0; i < o->nrec; i++) {
    const prec* p = &o->rec[i];
    if ((rank >= 0 && p->rank != (uint32_t)rank) || (kind && p->kind != kind) || (pred && !pred(p))) continue;
    w.n++;
    w.wire += p->wire;
    w.raw32 += p->raw32;
  }
  return w;
}

static const Paramex__V1__TensorStats* tstat(const jres* o, const char* name) {
  const Paramex__V1__TensorStats* ts = px_h_stats_tensor(o->st, name);
  CHECK(ts, "Stats has no tensor %s", name);
  return ts;
}

/* ---- 1. random bases ------------------------------------------------------------------------ */

/* The job of tests 1 and 6: three workers, 30 steps, --history 3; "w" spans 4 chunks (the
 * last one short), "v" is one short chunk. Rank 0 pulls every step (and repeats some
 * pulls), ranks 1 and 2 pull at random gaps of 1..6 versions, rank 2 often into fresh
 * buffers. */
static void random_bases_job(djob* j) {
  memset(j, 0, sizeof *j);
  j->world = 3;
  j->steps = 30;
  j->ndata = 2;
  j->data[0] = (dtensor){"w", PX_DT_F32, 30000};
  j->data[1] = (dtensor){"v", PX_DT_F32, 700};
  j->sync_numel = 2000;
  j->lr = "0.001";
  j->momentum = "0";
  j->weight_decay = "0";
  j->chunk_elems = 8192;
  j->history = 3;
  uint64_t rng = 20240603;
  plan_every(j->plan[0], j->steps, &rng, 15);
  plan_gaps(j->plan[1], j->steps, &rng, 6, 0);
  plan_gaps(j->plan[2], j->steps, &rng, 5, 40);
}

/* The plans cover what the test claims: deltas from the previous version and from older
 * ones within the history, bases older than the history, fresh buffers after a pull, and
 * repeated pulls. */
static void check_plan_coverage(const djob* j) {
  unsigned d1 = 0, dk = 0, old = 0, fresh = 0, rep = 0;
  for (uint32_t r = 0; r < j->world; r++) {
    uint64_t have = NONE;
    for (uint64_t s = 0; s <= j->steps; s++) {
      char a = j->plan[r][s];
      if (a == PX_DM_SKIP) continue;
      if (a == PX_DM_FRESH && have != NONE) fresh++;
      else if (have != NONE && s - have == 1) d1++;
      else if (have != NONE && s - have <= j->history) dk++;
      else if (have != NONE) old++;
      if (a == PX_DM_REPEAT) rep++;
      have = s;
    }
  }
  fprintf(stderr, "# plans: %s | %s | %s: %u pulls from the previous version, %u from 2..%" PRIu32
                  " back, %u from further back, %u fresh, %u repeated\n",
          j->plan[0], j->plan[1], j->plan[2], d1, dk, j->history, old, fresh, rep);
  CHECK(d1 > 0 && dk > 0 && old > 0 && fresh > 0 && rep > 0, "the seeded plans do not cover every case");
}

static void test_random_bases_bit_exact(void** state) {
  (void)state;
  djob j;
  random_bases_job(&j);
  check_plan_coverage(&j);
  ref R;
  ref_compute(&j, &R);
  jres o;
  run_job("random bases", &j, &R, &o);
  CHECK(o.exp_delta > 0 && o.exp_snapshot > 0 && o.exp_unchanged > 0, "expected counts %" PRIu64 "/%" PRIu64
        "/%" PRIu64, o.exp_unchanged, o.exp_delta, o.exp_snapshot);
  CHECK(o.st->encodes > 0 && o.st->frame_cache_hits > 0 && o.st->history_bytes > 0,
        "encodes %" PRIu64 " cache hits %" PRIu64 " history_bytes %" PRIu64, o.st->encodes,
        o.st->frame_cache_hits, o.st->history_bytes);

  /* Wire bytes: less than raw in all, and the steady state (a diff from the previous
   * version) within the 0.6x of the raw f32 bytes. */
  for (int t = 0; t < 3; t++) {
    const char* tn = t == 0 ? "w" : t == 1 ? "v" : "sync";
    const Paramex__V1__TensorStats* ts = tstat(&o, tn);
    fprintf(stderr, "# random bases: %s pulled %" PRIu64 " raw bytes as %" PRIu64 " on the wire (%.3f)\n", tn,
            ts->pull_raw_bytes, ts->pull_wire_bytes, (double)ts->pull_wire_bytes / (double)ts->pull_raw_bytes);
    CHECK(ts->pull_wire_bytes < ts->pull_raw_bytes, "%s: pull wire %" PRIu64 " >= raw %" PRIu64, tn,
          ts->pull_wire_bytes, ts->pull_raw_bytes);
  }
  wsum d1 = sum_recs(&o, -1, PX_DM_PULL, rec_delta1);
  wsum s1 = sum_recs(&o, -1, 'S', rec_delta1);
  fprintf(stderr, "# random bases: %" PRIu64 " data pulls from the previous version: wire/raw %.3f; sync: %.3f\n",
          d1.n, (double)d1.wire / (double)d1.raw32, (double)s1.wire / (double)s1.raw32);
  CHECK(d1.n > 0 && d1.wire * 10 <= d1.raw32 * 6, "data pulls from the previous version: wire %" PRIu64
        " > 0.6 x raw %" PRIu64, d1.wire, d1.raw32);
  CHECK(s1.n > 0 && s1.wire * 10 <= s1.raw32 * 6, "sync pulls: wire %" PRIu64 " > 0.6 x raw %" PRIu64, s1.wire,
        s1.raw32);
  jres_free(&o);
  ref_free(&R);
}

/* ---- 2. the bf16 view ------------------------------------------------------------------------ */

/* Rank 0 pulls the bf16 view of "w" every step (one pull repeated), rank 1 the f32 tensor:
 * both views of the same master are served side by side. */
static void test_bf16_view(void** state) {
  (void)state;
  djob j;
  memset(&j, 0, sizeof j);
  j.world = 2;
  j.steps = 12;
  j.ndata = 1;
  j.data[0] = (dtensor){"w", PX_DT_F32, 30000};
  j.sync_numel = 2000;
  j.lr = "0.001";
  j.momentum = "0";
  j.weight_decay = "0";
  j.chunk_elems = 8192;
  j.history = 2;
  j.view_bf16[0] = true;
  snprintf(j.plan[0], sizeof j.plan[0], "ppppprpppppp" "p");
  snprintf(j.plan[1], sizeof j.plan[1], "pp.pppp..ppp" "p");
  ref R;
  ref_compute(&j, &R);
  jres o;
  run_job("bf16 view", &j, &R, &o);
  /* After the first pull every bf16-view pull is a diff against the view the buffer holds
   * (or unchanged): at most 0.2x the raw f32 bytes, pull by pull. */
  uint64_t wire = 0, raw = 0;
  for (size_t i = 0; i < o.nrec; i++) {
    const prec* p = &o.rec[i];
    if (p->rank != 0 || p->kind == 'S' || p->step == 0) continue;
    CHECK(p->wire * 10 <= p->raw32 * 2, "bf16 view pull at step %" PRIu64 " ('%c'): %" PRIu64
          " wire bytes for %" PRIu64 " raw f32 bytes (> 0.2x)", p->step, p->kind, p->wire, p->raw32);
    wire += p->wire;
    raw += p->raw32;
  }
  wsum f = sum_recs(&o, 1, PX_DM_PULL, rec_delta1);
  fprintf(stderr, "# bf16 view: wire / raw f32 bytes %.4f after the first pull; the f32 pulls of rank 1: %.3f\n",
          (double)wire / (double)raw, (double)f.wire / (double)f.raw32);
  CHECK(raw > 0, "no bf16 view pulls after the first");
  jres_free(&o);
  ref_free(&R);
}

/* ---- 3. corrupted frames ------------------------------------------------------------------ */

/* Every 5th chunk the workers pull reaches them with one flipped byte (a proxy between them
 * and the server: tests/helpers/corrupt_proxy.h). The client must catch each by its
 * checksum, leave the buffer as it was and pull the tensor again in full: every pulled
 * buffer is still bit-exact. Tensors are small (one or two chunks) because a heal pull of a
 * tensor with 5 or more chunks would always meet another corrupted frame. */
static void test_corrupted_pulls_heal(void** state) {
  (void)state;
  djob j;
  memset(&j, 0, sizeof j);
  j.world = 2;
  j.steps = 12;
  j.ndata = 2;
  j.data[0] = (dtensor){"w", PX_DT_F32, 12000};
  j.data[1] = (dtensor){"v", PX_DT_F32, 700};
  j.sync_numel = 2000;
  j.lr = "0.001";
  j.momentum = "0";
  j.weight_decay = "0";
  j.chunk_elems = 8192;
  j.history = 2;
  j.fault_corrupt = "5";
  snprintf(j.plan[0], sizeof j.plan[0], "pppppppppppp" "p");
  snprintf(j.plan[1], sizeof j.plan[1], "pp.pp...pppp" "p");
  ref R;
  ref_compute(&j, &R);
  jres o;
  run_job("corrupted pulls", &j, &R, &o);
  for (uint32_t r = 0; r < j.world; r++) {
    uint64_t sum = 0;
    for (size_t i = 0; i < o.nrec; i++)
      if (o.rec[i].rank == r) sum += o.rec[i].checksum_failures;
    fprintf(stderr, "# corrupted pulls: rank %" PRIu32 " saw %" PRIu64 " checksum failures\n", r,
            o.end[r].checksum_failures);
    CHECK(o.end[r].checksum_failures > 0, "rank %" PRIu32 " saw no checksum failure", r);
    CHECK(sum == o.end[r].checksum_failures, "rank %" PRIu32 ": per-pull failures %" PRIu64 ", total %" PRIu64, r,
          sum, o.end[r].checksum_failures);
  }
  CHECK(o.st->pull_snapshot > o.exp_snapshot, "no heal pulls counted: pull_snapshot %" PRIu64 ", planned %" PRIu64,
        o.st->pull_snapshot, o.exp_snapshot);
  jres_free(&o);
  ref_free(&R);
}

/* ---- 4. bf16 and f16 tensors ---------------------------------------------------------------- */

/* bf16 and f16 tensors end to end: pushes in the tensor's dtype, aggregation, weight decay,
 * momentum (f32 buffer) and SGD in f32, RNE rounding back after each step; diffs of u16
 * words from random bases. */
static void test_bf16_f16_tensors(void** state) {
  (void)state;
  djob j;
  memset(&j, 0, sizeof j);
  j.world = 2;
  j.steps = 14;
  j.ndata = 3;
  j.data[0] = (dtensor){"hb", PX_DT_BF16, 20000};
  j.data[1] = (dtensor){"hf", PX_DT_F16, 20000};
  j.data[2] = (dtensor){"w", PX_DT_F32, 3000};
  j.sync_numel = 1000;
  j.lr = "0.05";
  j.momentum = "0.9";
  j.weight_decay = "0.01";
  j.chunk_elems = 8192;
  j.history = 2;
  uint64_t rng = 77;
  plan_every(j.plan[0], j.steps, &rng, 10);
  plan_gaps(j.plan[1], j.steps, &rng, 4, 30);
  ref R;
  ref_compute(&j, &R);
  /* the job must move the 16-bit words (an lr too small would leave them all unchanged) */
  for (size_t t = 0; t < 2; t++) {
    size_t moved = 0;
    const uint16_t* a = ref_at(&R, t, 0);
    const uint16_t* b = ref_at(&R, t, j.steps);
    for (size_t i = 0; i < R.numel[t]; i++) moved += a[i] != b[i];
    CHECK(moved > R.numel[t] / 2, "%s: only %zu of %zu words changed", j.data[t].name, moved, R.numel[t]);
  }
  jres o;
  run_job("bf16/f16 tensors", &j, &R, &o);
  CHECK(o.st->pull_delta > 0, "no diffs of 16-bit tensors");
  jres_free(&o);
  ref_free(&R);
}

/* ---- 5. push compression ------------------------------------------------------------------- */

static void push_job(djob* j, const char* mode) {
  memset(j, 0, sizeof *j);
  j->world = 2;
  j->steps = 8;
  j->ndata = 2;
  j->data[0] = (dtensor){"w", PX_DT_F32, 30000};
  j->data[1] = (dtensor){"v", PX_DT_F32, 300}; /* below --push-min-bytes: sent raw */
  j->sync_numel = 1000;
  j->lr = "0.001";
  j->momentum = "0.5";
  j->weight_decay = "0";
  j->chunk_elems = 8192;
  j->history = 2;
  j->push_mode = mode;
  j->push_min_bytes = 4096;
  for (uint32_t r = 0; r < 2; r++) snprintf(j->plan[r], sizeof j->plan[r], "ppppppppp");
}

static void test_push_compression(void** state) {
  (void)state;
  djob jr, jz, jb;
  push_job(&jr, NULL);
  push_job(&jz, "zstd");
  push_job(&jb, "bf16");
  ref Rr, Rb;
  ref_compute(&jr, &Rr);
  ref_compute(&jb, &Rb);
  jres orr, oz, ob;
  run_job("push raw", &jr, &Rr, &orr);
  run_job("push zstd", &jz, &Rr, &oz); /* lossless: the reference of raw pushes */
  run_job("push bf16", &jb, &Rb, &ob); /* lossy: the reference of bf16-rounded gradients */
  for (size_t t = 0; t < 2; t++) {
    char what[64];
    snprintf(what, sizeof what, "%s: final params, zstd pushes vs raw pushes", jr.data[t].name);
    CHECK(oz.final[t] && orr.final[t], "no final pulls");
    check_same_bits(what, oz.final[t], orr.final[t], orr.final_bytes[t], 4);
  }
  CHECK(memcmp(ob.final[0], orr.final[0], orr.final_bytes[0]) != 0,
        "bf16 pushes gave the same bits as raw pushes: the cast did nothing");
  /* v is below --push-min-bytes, so its gradients travel raw in every mode */
  check_same_bits("v: final params, bf16 pushes (v below the minimum size) vs raw pushes", ob.final[1],
                  orr.final[1], orr.final_bytes[1], 4);

  /* Encode once: both workers pull every version from the same base, so each chunk's
   * version is encoded once (the full chunk at version 0, then the delta of each step)
   * and every pulled chunk is served from the encoded frame. */
  const uint64_t chunks = nchunks(&jr, 30000) + nchunks(&jr, 300) + nchunks(&jr, jr.sync_numel);
  CHECK(orr.st->encodes == (jr.steps + 1) * chunks, "encodes %" PRIu64 ", want %" PRIu64
        " (one per chunk and version for %" PRIu32 " workers)", orr.st->encodes, (jr.steps + 1) * chunks, jr.world);
  CHECK(orr.st->frame_cache_hits == orr.st->pull_chunks, "frame_cache_hits %" PRIu64 " of %" PRIu64
        " pulled chunks", orr.st->frame_cache_hits, orr.st->pull_chunks);

  const Paramex__V1__TensorStats* wr = tstat(&orr, "w");
  const Paramex__V1__TensorStats* wz = tstat(&oz, "w");
  const Paramex__V1__TensorStats* wb = tstat(&ob, "w");
  const Paramex__V1__TensorStats* vz = tstat(&oz, "v");
  const Paramex__V1__TensorStats* vb = tstat(&ob, "v");
  fprintf(stderr, "# push w: raw %" PRIu64 " -> wire %" PRIu64 " (raw pushes), %" PRIu64 " (zstd, %.3f), %" PRIu64
                  " (bf16, %.3f)\n",
          wr->push_raw_bytes, wr->push_wire_bytes, wz->push_wire_bytes,
          (double)wz->push_wire_bytes / (double)wz->push_raw_bytes, wb->push_wire_bytes,
          (double)wb->push_wire_bytes / (double)wb->push_raw_bytes);
  CHECK(wr->push_wire_bytes >= wr->push_raw_bytes, "raw pushes: wire %" PRIu64 " < raw %" PRIu64,
        wr->push_wire_bytes, wr->push_raw_bytes);
  CHECK(wz->push_wire_bytes < wz->push_raw_bytes, "zstd pushes of w: wire %" PRIu64 " >= raw %" PRIu64,
        wz->push_wire_bytes, wz->push_raw_bytes);
  CHECK(wb->push_wire_bytes * 100 <= wb->push_raw_bytes * 51, "bf16 pushes of w: wire %" PRIu64
        " > 0.51 x raw %" PRIu64, wb->push_wire_bytes, wb->push_raw_bytes);
  /* v is below --push-min-bytes: raw in every mode */
  CHECK(vz->push_wire_bytes >= vz->push_raw_bytes && vb->push_wire_bytes >= vb->push_raw_bytes,
        "v (below the minimum size) was compressed: zstd %" PRIu64 "/%" PRIu64 ", bf16 %" PRIu64 "/%" PRIu64,
        vz->push_wire_bytes, vz->push_raw_bytes, vb->push_wire_bytes, vb->push_raw_bytes);
  jres_free(&orr);
  jres_free(&oz);
  jres_free(&ob);
  ref_free(&Rr);
  ref_free(&Rb);
}

/* ---- 6. no compression ---------------------------------------------------------------------- */

/* Every pull of `rank` (-1: all) that was not a repeat came raw: at least its raw bytes on
 * the wire (the unchanged markers of repeated pulls cost only headers). */
static void expect_raw_pulls(const char* what, const jres* o, int rank) {
  for (size_t i = 0; i < o->nrec; i++) {
    const prec* p = &o->rec[i];
    if ((rank >= 0 && p->rank != (uint32_t)rank) || p->kind == PX_DM_REPEAT) continue;
    CHECK(p->wire > p->raw32, "%s: rank %" PRIu32 " pull '%c' at step %" PRIu64 ": %" PRIu64
          " wire bytes for %" PRIu64 " raw bytes", what, p->rank, p->kind, p->step, p->wire, p->raw32);
  }
}

/* The random-bases job against a server with --no-compression, then with compression on
 * but one client that asks for raw chunks: the same bits, no diffs for those pulls. */
static void test_no_compression(void** state) {
  (void)state;
  djob j;
  random_bases_job(&j);
  ref R;
  ref_compute(&j, &R);
  j.server_no_compression = true;
  jres o;
  run_job("server --no-compression", &j, &R, &o);
  CHECK(o.st->pull_delta == 0, "pull_delta %" PRIu64, o.st->pull_delta);
  CHECK(o.st->pull_unchanged > 0, "no unchanged chunks");
  expect_raw_pulls("server --no-compression", &o, -1);
  jres_free(&o);

  j.server_no_compression = false;
  for (uint32_t r = 0; r < j.world; r++) j.client_no_compression[r] = true;
  run_job("client no_compression", &j, &R, &o);
  CHECK(o.st->pull_delta == 0, "pull_delta %" PRIu64 " with clients that accept no diffs", o.st->pull_delta);
  expect_raw_pulls("client no_compression", &o, -1);
  /* Nobody wants diffs: steps stop encoding them once the demand window (history + 1
   * versions from the start) has passed and publish only their RAW frame: one frame per
   * chunk and version, plus at most history + 1 deltas per chunk (encoding every step's
   * delta as well would make it about twice that), and no history is kept. */
  const uint64_t chunks = nchunks(&j, 30000) + nchunks(&j, 700) + nchunks(&j, j.sync_numel);
  const uint64_t most = (j.steps + 1 + j.history + 1) * chunks;
  CHECK(o.st->encodes <= most && o.st->history_bytes == 0,
        "encodes %" PRIu64 " (at most %" PRIu64 "), history_bytes %" PRIu64
        " with clients that accept no diffs", o.st->encodes, most, o.st->history_bytes);
  jres_free(&o);

  /* mixed: only rank 1 refuses compression; the others still get diffs */
  j.client_no_compression[0] = j.client_no_compression[2] = false;
  run_job("rank 1 no_compression", &j, &R, &o);
  CHECK(o.st->pull_delta > 0, "no diffs for the ranks that accept them");
  expect_raw_pulls("rank 1 no_compression", &o, 1);
  jres_free(&o);
  ref_free(&R);
}

/* ---- 7. hostile requests at the wire level --------------------------------------------------- */

#define H_NUMEL 2500u
#define H_CHUNK 1024u
#define H_CHUNKS 3u
#define H_LR 0.5f

static px_h_server g_srv;
static px_rpc_channel* g_ch;
static uint64_t g_inc;
static uint32_t g_tid_t, g_tid_h;
static float g_t[3][H_NUMEL];      /* "t" (f32) at versions 0, 1, 2 */
static uint16_t g_h[3][H_NUMEL];   /* "h" (bf16) at versions 0, 1, 2 */
static float g_gt[2][H_NUMEL];     /* gradients of steps 0, 1 */
static uint16_t g_gt16[H_NUMEL];   /* step 1's gradient of t, cast to bf16 (pushed that way) */
static uint16_t g_gh[2][H_NUMEL];  /* bf16 gradients of h */

typedef struct hsnap {
  uint64_t push_chunks, push_duplicates, push_raw, push_wire, steps_completed, rejected;
  uint64_t pull_chunks, pull_unchanged, pull_delta, pull_snapshot;
  uint64_t vmin[2], vmax[2], sum[2];
} hsnap;

static hsnap g_base;

static void take_hsnap(hsnap* s) {
  char err[512];
  Paramex__V1__StatsResponse* st = px_h_stats(g_ch, err, sizeof err);
  CHECK(st, "%s", err);
  memset(s, 0, sizeof *s);
  s->push_chunks = st->push_chunks;
  s->push_duplicates = st->push_duplicates;
  s->push_raw = st->push_raw_bytes;
  s->push_wire = st->push_wire_bytes;
  s->steps_completed = st->steps_completed;
  s->rejected = st->rejected_calls;
  s->pull_chunks = st->pull_chunks;
  s->pull_unchanged = st->pull_unchanged;
  s->pull_delta = st->pull_delta;
  s->pull_snapshot = st->pull_snapshot;
  for (int i = 0; i < 2; i++) {
    const Paramex__V1__TensorStats* ts = px_h_stats_tensor(st, i ? "h" : "t");
    CHECK(ts, "Stats has no tensor %s", i ? "h" : "t");
    s->vmin[i] = ts->version_min;
    s->vmax[i] = ts->version_max;
    s->sum[i] = ts->checksum;
  }
  protobuf_c_message_free_unpacked(&st->base, NULL);
}

/* After a refused request: no counter of accepted chunks and no tensor changed, and the
 * refusal was counted. */
static void expect_nothing_changed(const char* what) {
  hsnap now;
  take_hsnap(&now);
  CHECK(now.push_chunks == g_base.push_chunks && now.push_duplicates == g_base.push_duplicates &&
            now.push_raw == g_base.push_raw && now.push_wire == g_base.push_wire &&
            now.steps_completed == g_base.steps_completed,
        "%s: push counters changed: chunks %" PRIu64 " -> %" PRIu64 ", duplicates %" PRIu64 " -> %" PRIu64
        ", raw %" PRIu64 " -> %" PRIu64 ", wire %" PRIu64 " -> %" PRIu64 ", steps %" PRIu64 " -> %" PRIu64,
        what, g_base.push_chunks, now.push_chunks, g_base.push_duplicates, now.push_duplicates, g_base.push_raw,
        now.push_raw, g_base.push_wire, now.push_wire, g_base.steps_completed, now.steps_completed);
  CHECK(now.pull_chunks == g_base.pull_chunks && now.pull_unchanged == g_base.pull_unchanged &&
            now.pull_delta == g_base.pull_delta && now.pull_snapshot == g_base.pull_snapshot,
        "%s: pull counters changed: chunks %" PRIu64 " -> %" PRIu64 ", unchanged %" PRIu64 " -> %" PRIu64
        ", delta %" PRIu64 " -> %" PRIu64 ", snapshot %" PRIu64 " -> %" PRIu64,
        what, g_base.pull_chunks, now.pull_chunks, g_base.pull_unchanged, now.pull_unchanged, g_base.pull_delta,
        now.pull_delta, g_base.pull_snapshot, now.pull_snapshot);
  for (int i = 0; i < 2; i++)
    CHECK(now.vmin[i] == g_base.vmin[i] && now.vmax[i] == g_base.vmax[i] && now.sum[i] == g_base.sum[i],
          "%s: tensor %s changed: versions %" PRIu64 "..%" PRIu64 " checksum %016" PRIx64 " -> %" PRIu64 "..%" PRIu64
          " %016" PRIx64, what, i ? "h" : "t", g_base.vmin[i], g_base.vmax[i], g_base.sum[i], now.vmin[i],
          now.vmax[i], now.sum[i]);
  CHECK(now.rejected > g_base.rejected, "%s: rejected_calls did not count the call", what);
  g_base = now;
}

static void expect_status(const char* what, int got, int want, const char* details) {
  CHECK(got == want, "%s: got %s (%d) '%s', want %s", what, got >= 0 ? px_status_name(got) : "harness error", got,
        details, px_status_name(want));
  if (want != PX_ST_OK) CHECK(details && details[0], "%s: %s without a message", what, px_status_name(want));
}

static size_t h_elems(uint32_t k) { return k + 1 < H_CHUNKS ? H_CHUNK : H_NUMEL - (H_CHUNKS - 1) * H_CHUNK; }

typedef struct cmsg {
  uint8_t hdr[PX_CHUNK_HDR_MAX];
  px_h_msg m;
} cmsg;

static void cmsg_build(cmsg* cm, const px_chunk* c, const void* payload, size_t plen) {
  size_t h = px_chunk_encode_header(PX_CHUNK_PUSH, c, plen, cm->hdr, sizeof cm->hdr);
  CHECK(h > 0, "pmx_chunk_encode_header failed");
  cm->m = (px_h_msg){cm->hdr, h, payload, plen};
}

/* A push header of worker 0 for step s, chunk k of tensor tid (the rest set by the caller). */
static px_chunk push_hdr(uint32_t tid, uint64_t s, uint32_t k, uint32_t enc, uint32_t dtype, size_t raw_len,
                          const void* decoded) {
  px_chunk c;
  memset(&c, 0, sizeof c);
  c.worker_id = 0;
  c.incarnation = g_inc;
  c.step = s;
  c.tensor_id = tid;
  c.chunk = k;
  c.encoding = enc;
  c.dtype = dtype;
  c.raw_len = (uint32_t)raw_len;
  c.checksum = decoded ? px_checksum(decoded, raw_len) : 0;
  return c;
}

static int push_msgs(const px_h_msg* msgs, size_t n, uint32_t* accepted, char* det, size_t cap) {
  px_h_result r;
  int st = px_h_call(g_ch, PX_H_PATH_PUSH, msgs, n, CALL_MS, &r);
  snprintf(det, cap, "%s", r.details);
  if (st == PX_ST_OK && accepted) {
    CHECK(r.nresp == 1, "Push returned %zu messages", r.nresp);
    Paramex__V1__PushResponse* pr = paramex__v1__push_response__unpack(NULL, r.resp_len[0], r.resp[0]);
    CHECK(pr, "PushResponse does not unpack");
    *accepted = pr->accepted;
    paramex__v1__push_response__free_unpacked(pr, NULL);
  }
  px_h_result_free(&r);
  return st;
}

/* One chunk message that must be refused with `want` and change nothing. */
static void push_refused(const char* what, const px_chunk* c, const void* payload, size_t plen, int want) {
  cmsg cm;
  cmsg_build(&cm, c, payload, plen);
  char det[512];
  int st = push_msgs(&cm.m, 1, NULL, det, sizeof det);
  expect_status(what, st, want, det);
  expect_nothing_changed(what);
}

static int pull_call(uint32_t tid, const uint64_t* have, uint32_t view, const uint32_t* accept, size_t naccept,
                     px_h_result* res) {
  Paramex__V1__PullRequest req = PARAMEX__V1__PULL_REQUEST__INIT;
  uint32_t ids[1] = {tid};
  uint64_t hv[1] = {have ? *have : 0};
  Paramex__V1__Encoding acc[8];
  for (size_t i = 0; i < naccept; i++) acc[i] = (Paramex__V1__Encoding)accept[i];
  req.worker_id = 0;
  req.n_tensor_ids = 1;
  req.tensor_ids = ids;
  req.n_have_versions = have ? 1 : 0;
  req.have_versions = hv;
  req.view = (Paramex__V1__DType)view;
  req.n_accept = naccept;
  req.accept = acc;
  size_t len = paramex__v1__pull_request__get_packed_size(&req);
  uint8_t* buf = malloc(len ? len : 1);
  CHECK(buf, "out of memory");
  paramex__v1__pull_request__pack(&req, buf);
  px_h_msg m = {buf, len, NULL, 0};
  int st = px_h_call(g_ch, PX_H_PATH_PULL, &m, 1, CALL_MS, res);
  free(buf);
  return st;
}

/* A Pull of tensor t / h that must succeed: every chunk decodes (onto `base`, the words the
 * client claims to hold, when given) to `want` at version `version`; each chunk's encoding
 * must be one of `encs` (a string of encoding digits). */
static void pull_expect(const char* what, bool is_h, const uint64_t* have, const void* base, const uint32_t* accept,
                        size_t naccept, const void* want, uint64_t version, const char* encs) {
  const size_t w = is_h ? 2 : 4;
  px_h_result r;
  int st = pull_call(is_h ? g_tid_h : g_tid_t, have, 0, accept, naccept, &r);
  expect_status(what, st, PX_ST_OK, r.details);
  CHECK(r.nresp == H_CHUNKS, "%s: %zu messages", what, r.nresp);
  uint8_t buf[H_NUMEL * 4];
  memset(buf, 0xa5, sizeof buf);
  if (base) memcpy(buf, base, H_NUMEL * w);
  for (uint32_t k = 0; k < H_CHUNKS; k++) {
    px_chunk c;
    char err[256];
    px_iov seg = {r.resp[k], r.resp_len[k]};
    CHECK(px_chunk_parse(PX_CHUNK_PULL, &seg, 1, &c, err, sizeof err) == 0, "%s: %s", what, err);
    CHECK(c.chunk == k && c.version == version, "%s: message %" PRIu32 " is chunk %" PRIu32 " version %" PRIu64, what,
          k, c.chunk, c.version);
    CHECK(c.encoding < 10 && strchr(encs, (char)('0' + c.encoding)),
          "%s: chunk %" PRIu32 " came as %s (%" PRIu32 "), want one of encodings %s", what, k,
          px_encoding_name(c.encoding), c.encoding, encs);
    if (c.encoding == PX_ENC_DELTA_ZSTD || c.encoding == PX_ENC_UNCHANGED)
      CHECK(have && c.base_version == *have, "%s: chunk %" PRIu32 " is relative to version %" PRIu64, what, k,
            c.base_version);
    px_decode_result d = px_chunk_decode(&c, &seg, 1, buf + (size_t)k * H_CHUNK * w, h_elems(k), (int)w, err,
                                           sizeof err);
    CHECK(d == PX_DECODE_OK, "%s: chunk %" PRIu32 " (%s) does not decode: %s", what, k,
          px_encoding_name(c.encoding), err);
  }
  px_h_result_free(&r);
  check_same_bits(what, buf, want, H_NUMEL * w, w);
  take_hsnap(&g_base);
}

static void pull_refused(const char* what, uint32_t view) {
  px_h_result r;
  uint64_t have = 1;
  static const uint32_t acc[2] = {PX_ENC_DELTA_ZSTD, PX_ENC_SHUFFLE_ZSTD};
  int st = pull_call(g_tid_t, &have, view, acc, 2, &r);
  expect_status(what, st, PX_ST_INVALID_ARGUMENT, r.details);
  CHECK(r.nresp == 0, "%s: %zu chunks sent", what, r.nresp);
  px_h_result_free(&r);
  expect_nothing_changed(what);
}

/* t := t - lr * g (one worker: mean = sum / 1), for "t" and for "h" through f32. */
static void ref_step_t(const float* p, const float* g, float* out) {
  for (size_t i = 0; i < H_NUMEL; i++) out[i] = p[i] - H_LR * (g[i] / 1.0f);
}
static void ref_step_h(const uint16_t* p, const uint16_t* g, uint16_t* out) {
  float a[H_NUMEL], b[H_NUMEL];
  px_bf16_to_f32_n(p, a, H_NUMEL);
  px_bf16_to_f32_n(g, b, H_NUMEL);
  for (size_t i = 0; i < H_NUMEL; i++) a[i] = a[i] - H_LR * (b[i] / 1.0f);
  px_f32_to_bf16_n(a, out, H_NUMEL);
}

static int hostile_setup(void** state) {
  (void)state;
  char err[512];
  const char* args[] = {"--workers", "1", "--lr", "0.5", "--momentum", "0", "--weight-decay", "0",
                        "--chunk-bytes", "4K", "--history", "2", "--threads", "2", "--log-level", "error", NULL};
  if (px_h_server_start(&g_srv, args, NULL, SERVER_START_MS, err, sizeof err) != 0) {
    fprintf(stderr, "server start: %s\n", err);
    return -1;
  }
  g_ch = px_rpc_channel_create(g_srv.addr, err, sizeof err);
  if (!g_ch) {
    fprintf(stderr, "channel: %s\n", err);
    return -1;
  }
  float tmp[H_NUMEL];
  px_init_fill_f32(g_t[0], 0, H_NUMEL, PX_FILL_NORMAL, 0.0f, 0.02f, 11);
  px_init_fill_f32(tmp, 0, H_NUMEL, PX_FILL_NORMAL, 0.0f, 0.02f, 12);
  px_f32_to_bf16_n(tmp, g_h[0], H_NUMEL);
  for (int s = 0; s < 2; s++) {
    px_init_fill_f32(g_gt[s], 0, H_NUMEL, PX_FILL_NORMAL, 0.0f, 0.01f, 20u + (unsigned)s);
    px_init_fill_f32(tmp, 0, H_NUMEL, PX_FILL_NORMAL, 0.0f, 0.01f, 30u + (unsigned)s);
    px_f32_to_bf16_n(tmp, g_gh[s], H_NUMEL);
  }
  px_f32_to_bf16_n(g_gt[1], g_gt16, H_NUMEL);
  ref_step_t(g_t[0], g_gt[0], g_t[1]);
  ref_step_h(g_h[0], g_gh[0], g_h[1]);
  float g1[H_NUMEL];
  px_bf16_to_f32_n(g_gt16, g1, H_NUMEL); /* step 1 of t is pushed as bf16 */
  ref_step_t(g_t[1], g1, g_t[2]);
  ref_step_h(g_h[1], g_gh[1], g_h[2]);
  return 0;
}

static int hostile_teardown(void** state) {
  (void)state;
  int rc = 0;
  px_rpc_channel_destroy(g_ch);
  g_ch = NULL;
  if (g_srv.pid > 0) {
    int ws = 0;
    size_t extra = 0;
    if (px_h_server_stop(&g_srv, SERVER_STOP_MS, &ws, &extra) != 0 || !WIFEXITED(ws) || WEXITSTATUS(ws) != 0) {
      char d[96];
      fprintf(stderr, "server %s after SIGTERM\n", px_h_describe_wstatus(ws, d, sizeof d));
      rc = -1;
    }
  }
  px_h_kill_all();
  return rc;
}

static uint32_t declare_raw(const char* name, int dtype, const void* values, size_t bytes) {
  Paramex__V1__DeclareRequest req = PARAMEX__V1__DECLARE_REQUEST__INIT;
  uint64_t shape[1] = {H_NUMEL};
  req.name = (char*)name;
  req.dtype = (Paramex__V1__DType)dtype;
  req.n_shape = 1;
  req.shape = shape;
  req.values.data = (uint8_t*)values;
  req.values.len = bytes;
  req.worker_id = 0;
  req.incarnation = g_inc;
  ProtobufCMessage* resp = NULL;
  char det[512];
  int st = px_h_unary_pb(g_ch, PX_H_PATH_DECLARE, &req.base, &paramex__v1__declare_response__descriptor, &resp,
                          CALL_MS, det, sizeof det);
  expect_status("declare", st, PX_ST_OK, det);
  Paramex__V1__DeclareResponse* dr = (Paramex__V1__DeclareResponse*)resp;
  CHECK(dr->created && dr->chunk_elems == H_CHUNK && dr->num_chunks == H_CHUNKS, "declare %s: %" PRIu32 " x %" PRIu32,
        name, dr->num_chunks, dr->chunk_elems);
  uint32_t id = dr->tensor_id;
  protobuf_c_message_free_unpacked(resp, NULL);
  return id;
}

/* Join, declare t (f32) and h (bf16), push step 0 (t raw f32, h raw bf16: OK). */
static void test_hostile_setup(void** state) {
  (void)state;
  Paramex__V1__JoinRequest jq = PARAMEX__V1__JOIN_REQUEST__INIT;
  jq.rank = 0;
  jq.world_size = 1;
  jq.name = (char*)"test_diff";
  ProtobufCMessage* resp = NULL;
  char det[512];
  int st = px_h_unary_pb(g_ch, PX_H_PATH_JOIN, &jq.base, &paramex__v1__join_response__descriptor, &resp,
                          CALL_MS, det, sizeof det);
  expect_status("join", st, PX_ST_OK, det);
  g_inc = ((Paramex__V1__JoinResponse*)resp)->incarnation;
  protobuf_c_message_free_unpacked(resp, NULL);
  g_tid_t = declare_raw("t", PX_DT_F32, g_t[0], sizeof g_t[0]);
  g_tid_h = declare_raw("h", PX_DT_BF16, g_h[0], sizeof g_h[0]);
  /* The initial values, pulled the way workers do before their first step: by a client
   * that accepts diffs, so that the server encodes the steps' deltas from now on. */
  static const uint32_t comp[2] = {PX_ENC_DELTA_ZSTD, PX_ENC_SHUFFLE_ZSTD};
  pull_expect("initial pull of t", false, NULL, NULL, comp, 2, g_t[0], 0, "03");
  pull_expect("initial pull of h", true, NULL, NULL, comp, 2, g_h[0], 0, "03");

  cmsg cm[2 * H_CHUNKS];
  px_h_msg msgs[2 * H_CHUNKS];
  for (uint32_t k = 0; k < H_CHUNKS; k++) {
    const float* gt = &g_gt[0][k * H_CHUNK];
    const uint16_t* gh = &g_gh[0][k * H_CHUNK];
    px_chunk c = push_hdr(g_tid_t, 0, k, PX_ENC_RAW, PX_DT_F32, h_elems(k) * 4, gt);
    cmsg_build(&cm[k], &c, gt, h_elems(k) * 4);
    c = push_hdr(g_tid_h, 0, k, PX_ENC_RAW, PX_DT_BF16, h_elems(k) * 2, gh); /* bf16 to bf16: OK */
    cmsg_build(&cm[H_CHUNKS + k], &c, gh, h_elems(k) * 2);
  }
  for (size_t i = 0; i < 2 * H_CHUNKS; i++) msgs[i] = cm[i].m;
  uint32_t acc = 0;
  st = push_msgs(msgs, 2 * H_CHUNKS, &acc, det, sizeof det);
  expect_status("push of step 0", st, PX_ST_OK, det);
  CHECK(acc == 2 * H_CHUNKS, "push of step 0: accepted %" PRIu32, acc);
  take_hsnap(&g_base);
  CHECK(g_base.vmin[0] == 1 && g_base.vmax[0] == 1 && g_base.vmin[1] == 1 && g_base.vmax[1] == 1,
        "not at version 1 after step 0");
  CHECK(g_base.sum[0] == it_stats_checksum(g_t[1], sizeof g_t[1]), "t after step 0 differs from the reference");
  CHECK(g_base.sum[1] == it_stats_checksum(g_h[1], sizeof g_h[1]), "h after step 0 differs from the reference");
}

static void test_hostile_pulls(void** state) {
  (void)state;
  pull_refused("pull with view DTYPE_F16", PX_DT_F16);
  pull_refused("pull with view 42 (no such dtype)", 42);

  uint64_t have0 = 0, future = 1000, none_v = NONE;
  /* unknown accept values are ignored: without DELTA / SHUFFLE the answer is RAW */
  static const uint32_t junk[4] = {77, PX_ENC_RAW, PX_ENC_UNCHANGED, 100000};
  pull_expect("pull accepting {77, RAW, UNCHANGED, 100000} from version 0", false, &have0, g_t[0], junk, 4, g_t[1], 1,
              "0");
  static const uint32_t delta_junk[3] = {77, PX_ENC_DELTA_ZSTD, 99};
  pull_expect("pull accepting {77, DELTA_ZSTD, 99} from version 0", false, &have0, g_t[0], delta_junk, 3, g_t[1], 1,
              "2");
  static const uint32_t both[3] = {PX_ENC_SHUFFLE_ZSTD, 12345, PX_ENC_DELTA_ZSTD};
  pull_expect("pull without a base", false, NULL, NULL, both, 3, g_t[1], 1, "03");
  /* a base the server never had: a full chunk, never a diff or an unchanged marker */
  pull_expect("pull from version 1000 (the future)", false, &future, g_t[0], both, 3, g_t[1], 1, "03");
  pull_expect("pull from version UINT64_MAX", false, &none_v, g_t[0], both, 3, g_t[1], 1, "03");
  pull_expect("pull of h from version 0", true, &have0, g_h[0], both, 3, g_h[1], 1, "02");
}

static void test_hostile_pushes(void** state) {
  (void)state;
  const uint32_t k = 0;
  const size_t n = h_elems(k), bytes = n * 4;
  const float* g = g_gt[1];
  const size_t cap = px_zstd_bound(2 * bytes);
  uint8_t* z = malloc(cap);
  uint8_t* z2 = malloc(cap);
  CHECK(z && z2, "out of memory");
  size_t zl = px_encode_shuffle(g, n, 4, 1, z, cap);
  CHECK(zl > 16, "cannot encode a shuffle frame");
  px_chunk c;

  /* encodings a push may not use */
  size_t dl = px_encode_delta(g, g_t[1], n, 4, 1, z2, cap);
  CHECK(dl > 0, "cannot encode a delta frame");
  c = push_hdr(g_tid_t, 1, k, PX_ENC_DELTA_ZSTD, PX_DT_F32, bytes, g);
  push_refused("push with encoding DELTA_ZSTD", &c, z2, dl, PX_ST_INVALID_ARGUMENT);
  c = push_hdr(g_tid_t, 1, k, PX_ENC_UNCHANGED, PX_DT_F32, bytes, g);
  push_refused("push with encoding UNCHANGED", &c, NULL, 0, PX_ST_INVALID_ARGUMENT);
  c = push_hdr(g_tid_t, 1, k, 9, PX_DT_F32, bytes, g);
  push_refused("push with encoding 9", &c, g, bytes, PX_ST_INVALID_ARGUMENT);

  /* broken zstd frames */
  c = push_hdr(g_tid_t, 1, k, PX_ENC_SHUFFLE_ZSTD, PX_DT_F32, bytes, g);
  push_refused("push of a truncated zstd frame", &c, z, zl - 7, PX_ST_INVALID_ARGUMENT);
  push_refused("push of a zstd frame cut after its header", &c, z, 6, PX_ST_INVALID_ARGUMENT);
  memcpy(z2, z, zl);
  memcpy(z2 + zl, "\x01\x02\x03\x04", 4);
  push_refused("push of a zstd frame with trailing bytes", &c, z2, zl + 4, PX_ST_INVALID_ARGUMENT);
  memset(z2, 0x5a, zl);
  push_refused("push of garbage as a zstd frame", &c, z2, zl, PX_ST_INVALID_ARGUMENT);
  {
    float twice[2 * H_CHUNK];
    memcpy(twice, g, bytes);
    memcpy(twice + n, g, bytes);
    size_t l2 = px_encode_shuffle(twice, 2 * n, 4, 1, z2, cap);
    CHECK(l2 > 0, "encode");
    push_refused("push of a zstd frame of twice the chunk", &c, z2, l2, PX_ST_INVALID_ARGUMENT);
  }
  {
    /* a small frame that claims 64 MiB of content */
    const size_t huge = 64u << 20;
    uint8_t* zeros = calloc(1, huge);
    size_t hcap = px_zstd_bound(huge);
    uint8_t* hz = malloc(hcap);
    CHECK(zeros && hz, "out of memory");
    size_t hl = px_zstd_compress(zeros, huge, hz, hcap, 1);
    free(zeros);
    CHECK(hl > 0 && hl < 64 * 1024, "cannot build the 64 MiB frame (%zu bytes)", hl);
    push_refused("push of a zstd frame that claims 64 MiB", &c, hz, hl, PX_ST_INVALID_ARGUMENT);
    free(hz);
  }
  c.raw_len = (uint32_t)bytes - 4;
  push_refused("push of a zstd frame with a raw_len 4 bytes short", &c, z, zl, PX_ST_INVALID_ARGUMENT);
  c = push_hdr(g_tid_t, 1, k, PX_ENC_SHUFFLE_ZSTD, PX_DT_F32, bytes, g);
  c.checksum ^= 1;
  push_refused("push of a good zstd frame with a wrong checksum", &c, z, zl, PX_ST_DATA_LOSS);

  /* payload dtypes */
  uint16_t g16[H_CHUNK];
  px_f32_to_f16_n(g, g16, n);
  c = push_hdr(g_tid_t, 1, k, PX_ENC_RAW, PX_DT_F16, n * 2, g16);
  push_refused("push of an f16 payload to an f32 tensor", &c, g16, n * 2, PX_ST_INVALID_ARGUMENT);
  c = push_hdr(g_tid_t, 1, k, PX_ENC_RAW, 0, bytes, g);
  push_refused("push with dtype UNSPECIFIED", &c, g, bytes, PX_ST_INVALID_ARGUMENT);
  c = push_hdr(g_tid_t, 1, k, PX_ENC_RAW, 9, bytes, g);
  push_refused("push with dtype 9", &c, g, bytes, PX_ST_INVALID_ARGUMENT);
  c = push_hdr(g_tid_h, 1, k, PX_ENC_RAW, PX_DT_F32, bytes, g);
  push_refused("push of an f32 payload to a bf16 tensor", &c, g, bytes, PX_ST_INVALID_ARGUMENT);
  c = push_hdr(g_tid_h, 1, k, PX_ENC_RAW, PX_DT_F16, n * 2, g16);
  push_refused("push of an f16 payload to a bf16 tensor", &c, g16, n * 2, PX_ST_INVALID_ARGUMENT);
  c = push_hdr(g_tid_t, 1, k, PX_ENC_RAW, PX_DT_BF16, bytes, g);
  push_refused("push of a bf16 payload to an f32 tensor with the f32 length", &c, g, bytes, PX_ST_INVALID_ARGUMENT);
  c = push_hdr(g_tid_h, 1, k, PX_ENC_SHUFFLE_ZSTD, PX_DT_BF16, n * 2, g_gh[1]);
  push_refused("push of a zstd frame of f32 words as a bf16 chunk", &c, z, zl, PX_ST_INVALID_ARGUMENT);
  free(z);
  free(z2);
}

/* Step 1: t as bf16 payloads (the lossy push cast; chunk 0 shuffle+zstd, the others raw),
 * h as bf16 (chunk 1 shuffle+zstd). Accepted, and the results are the reference's. */
static void test_hostile_then_valid_step(void** state) {
  (void)state;
  cmsg cm[2 * H_CHUNKS];
  px_h_msg msgs[2 * H_CHUNKS];
  uint8_t* frames[2 * H_CHUNKS] = {NULL};
  for (uint32_t k = 0; k < H_CHUNKS; k++) {
    for (int i = 0; i < 2; i++) {
      const uint16_t* src = i ? &g_gh[1][k * H_CHUNK] : &g_gt16[k * H_CHUNK];
      const size_t n = h_elems(k);
      px_chunk c = push_hdr(i ? g_tid_h : g_tid_t, 1, k, PX_ENC_RAW, PX_DT_BF16, n * 2, src);
      const void* body = src;
      size_t blen = n * 2;
      if ((i == 0 && k == 0) || (i == 1 && k == 1)) {
        size_t cap = px_zstd_bound(n * 2);
        uint8_t* zf = malloc(cap);
        CHECK(zf, "out of memory");
        frames[i * H_CHUNKS + k] = zf;
        blen = px_encode_shuffle(src, n, 2, 1, zf, cap);
        CHECK(blen > 0, "encode");
        body = zf;
        c.encoding = PX_ENC_SHUFFLE_ZSTD;
      }
      cmsg_build(&cm[i * H_CHUNKS + k], &c, body, blen);
    }
  }
  for (size_t i = 0; i < 2 * H_CHUNKS; i++) msgs[i] = cm[i].m;
  char det[512];
  uint32_t acc = 0;
  int st = push_msgs(msgs, 2 * H_CHUNKS, &acc, det, sizeof det);
  for (size_t i = 0; i < 2 * H_CHUNKS; i++) free(frames[i]);
  expect_status("push of step 1 as bf16", st, PX_ST_OK, det);
  CHECK(acc == 2 * H_CHUNKS, "push of step 1: accepted %" PRIu32, acc);
  hsnap now;
  take_hsnap(&now);
  CHECK(now.push_chunks == g_base.push_chunks + 2 * H_CHUNKS && now.steps_completed == g_base.steps_completed + 2 * H_CHUNKS,
        "step 1: push_chunks %" PRIu64 " -> %" PRIu64 ", steps %" PRIu64 " -> %" PRIu64, g_base.push_chunks,
        now.push_chunks, g_base.steps_completed, now.steps_completed);
  CHECK(now.vmin[0] == 2 && now.vmax[0] == 2 && now.vmin[1] == 2 && now.vmax[1] == 2, "not at version 2");
  CHECK(now.sum[0] == it_stats_checksum(g_t[2], sizeof g_t[2]), "t after the bf16 push differs from the reference");
  CHECK(now.sum[1] == it_stats_checksum(g_h[2], sizeof g_h[2]), "h after step 1 differs from the reference");
  g_base = now;
  uint64_t have1 = 1, have0 = 0;
  static const uint32_t both[2] = {PX_ENC_DELTA_ZSTD, PX_ENC_SHUFFLE_ZSTD};
  pull_expect("pull of t from version 1 after step 1", false, &have1, g_t[1], both, 2, g_t[2], 2, "2");
  pull_expect("pull of t from version 0 after step 1", false, &have0, g_t[0], both, 2, g_t[2], 2, "2");
  pull_expect("pull of h from version 1 after step 1", true, &have1, g_h[1], both, 2, g_h[2], 2, "2");
}

/* ---- main ------------------------------------------------------------------------------------- */

static int teardown(void** state) {
  (void)state;
  px_h_kill_all();
  return 0;
}

int main(void) {
  px_rpc_init();
  const struct CMUnitTest jobs[] = {
      cmocka_unit_test_teardown(test_random_bases_bit_exact, teardown),
      cmocka_unit_test_teardown(test_bf16_view, teardown),
      cmocka_unit_test_teardown(test_corrupted_pulls_heal, teardown),
      cmocka_unit_test_teardown(test_bf16_f16_tensors, teardown),
      cmocka_unit_test_teardown(test_push_compression, teardown),
      cmocka_unit_test_teardown(test_no_compression, teardown),
  };
  const struct CMUnitTest hostile[] = {
      cmocka_unit_test(test_hostile_setup),
      cmocka_unit_test(test_hostile_pulls),
      cmocka_unit_test(test_hostile_pushes),
      cmocka_unit_test(test_hostile_then_valid_step),
  };
  int rc = cmocka_run_group_tests_name("diff sync jobs", jobs, NULL, NULL);
  rc += cmocka_run_group_tests_name("hostile requests", hostile, hostile_setup, hostile_teardown);
  px_rpc_shutdown();
  return rc;
}
