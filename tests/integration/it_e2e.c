/* End to end: a real paramex-server and real pmx_test_worker processes train the job of
 * model.h over gRPC; every worker's final parameters must equal, bit for bit, the BSP
 * reference computed here (rank-order sum, mean, weight decay, momentum, SGD in float),
 * and the server's Stats checksum of each tensor must be the checksum of that reference.
 * The 4-worker job runs twice (other compute thread count, workers started in the other
 * order) and must give the same bits. */
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
#include "rpc/rpc_base.h"
#include "rpc/rpc_client.h"
#include "harness.h"
#include "model.h"

#define SERVER_START_MS 10000
#define JOB_DEADLINE_MS 80000
#define SERVER_STOP_MS 15000

typedef struct job {
  uint32_t world;
  uint64_t steps;
  uint64_t a_numel;
  const char* lr;         /* the flag strings; the reference converts them like the server */
  const char* momentum;
  const char* weight_decay;
  const char* chunk_bytes; /* e.g. "256K" */
  uint32_t chunk_elems;    /* chunk_bytes / 4 */
  const char* threads;     /* --threads */
  bool reverse_start;      /* spawn the workers in the order N-1 .. 0 */
  int dup_rank;            /* -1: none; else this rank retries its push of dup_step */
  uint64_t dup_step;
} job;

typedef struct job_out {
  float* params[PX_IT_NTENSORS]; /* rank 0's final parameters (all ranks checked equal) */
  size_t numel[PX_IT_NTENSORS];
} job_out;

static void job_out_free(job_out* o) {
  for (int t = 0; t < PX_IT_NTENSORS; t++) {
    free(o->params[t]);
    o->params[t] = NULL;
  }
}

static size_t job_numel(const job* j, int t) {
  return t == 0 ? (size_t)j->a_numel : (size_t)PX_IT_B_ROWS * PX_IT_B_COLS;
}

static uint32_t num_chunks(size_t numel, uint32_t chunk_elems) {
  return (uint32_t)((numel + chunk_elems - 1) / chunk_elems);
}

/* The BSP reference: what the server must compute, with the same float operations. */
static void reference(const job* j, float* out[PX_IT_NTENSORS]) {
  const float lr = (float)strtod(j->lr, NULL);
  const float mom = (float)strtod(j->momentum, NULL);
  const float wd = (float)strtod(j->weight_decay, NULL);
  const float n_workers = (float)j->world;
  for (int t = 0; t < PX_IT_NTENSORS; t++) {
    size_t n = job_numel(j, t);
    float* p = malloc(n * sizeof *p);
    float* g = malloc(n * sizeof *g);
    float* sum = malloc(n * sizeof *sum);
    float* buf = calloc(n, sizeof *buf);
    CHECK(p && g && sum && buf, "out of memory");
    CHECK(px_it_init(t, p, n) == 0, "initializer");
    for (uint64_t s = 0; s < j->steps; s++) {
      for (uint32_t r = 0; r < j->world; r++) {
        CHECK(px_it_grad(t, r, s, p, g, n) == 0, "gradient");
        if (r == 0) memcpy(sum, g, n * sizeof *g);
        else
          for (size_t i = 0; i < n; i++) sum[i] += g[i];
      }
      for (size_t i = 0; i < n; i++) {
        float mean = sum[i] / n_workers;
        float d = mean;
        if (wd != 0) d = d + wd * p[i];
        if (mom != 0) {
          buf[i] = s == 0 ? d : mom * buf[i] + d;
          d = buf[i];
        }
        p[i] = p[i] - lr * d;
      }
    }
    out[t] = p;
    free(g);
    free(sum);
    free(buf);
  }
}

/* Fails with the first differing element when a and b differ in any bit. */
static void check_same_bits(const char* what, const float* got, const float* want, size_t n) {
  if (memcmp(got, want, n * sizeof(float)) == 0) return;
  for (size_t i = 0; i < n; i++) {
    uint32_t x, y;
    memcpy(&x, &got[i], 4);
    memcpy(&y, &want[i], 4);
    CHECK(x == y, "%s: element %zu of %zu is %.9g (0x%08x), want %.9g (0x%08x)", what, i, n,
          (double)got[i], x, (double)want[i], y);
  }
}

/* Runs the job: server, workers, checks of every output and of Stats; the server is
 * stopped (SIGTERM, exit 0) before it returns. */
static void run_job(const job* j, job_out* out) {
  char dir[512], err[512];
  CHECK(px_h_mkdtemp(dir, sizeof dir) == 0, "mkdtemp");
  int64_t t0 = px_h_now_ms();

  char world_s[16];
  snprintf(world_s, sizeof world_s, "%" PRIu32, j->world);
  const char* args[] = {"--workers", world_s, "--lr", j->lr, "--momentum", j->momentum,
                        "--weight-decay", j->weight_decay, "--chunk-bytes", j->chunk_bytes,
                        "--threads", j->threads, NULL};
  px_h_server srv;
  CHECK(px_h_server_start(&srv, args, NULL, SERVER_START_MS, err, sizeof err) == 0,
        "server start: %s", err);

  pid_t pids[16];
  CHECK(j->world <= 16, "world too large for this test");
  char steps_s[24], numel_s[24], dup_s[24];
  snprintf(steps_s, sizeof steps_s, "%" PRIu64, j->steps);
  snprintf(numel_s, sizeof numel_s, "%" PRIu64, j->a_numel);
  snprintf(dup_s, sizeof dup_s, "%" PRIu64, j->dup_step);
  for (uint32_t k = 0; k < j->world; k++) {
    uint32_t r = j->reverse_start ? j->world - 1 - k : k;
    char rank_s[16], out_path[600];
    snprintf(rank_s, sizeof rank_s, "%" PRIu32, r);
    snprintf(out_path, sizeof out_path, "%s/params.%" PRIu32, dir, r);
    const char* argv[24] = {px_h_worker_bin(), "--server", srv.addr, "--rank", rank_s,
                            "--world", world_s, "--steps", steps_s, "--out", out_path,
                            "--a-numel", numel_s, "--timeout-ms", "30000"};
    size_t n = 15;
    if ((int)r == j->dup_rank) {
      argv[n++] = "--dup-step";
      argv[n++] = dup_s;
    }
    argv[n] = NULL;
    pids[r] = px_h_spawn(argv, NULL, -1, -1);
    CHECK(pids[r] > 0, "cannot start worker %" PRIu32, r);
  }

  int64_t deadline = px_h_now_ms() + JOB_DEADLINE_MS;
  for (uint32_t r = 0; r < j->world; r++) {
    int ws = 0;
    int64_t left = deadline - px_h_now_ms();
    CHECK(px_h_wait(pids[r], left > 0 ? (int)left : 0, &ws) == 0,
          "worker %" PRIu32 " did not finish within %d ms", r, JOB_DEADLINE_MS);
    char d[96];
    CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "worker %" PRIu32 " %s (its stderr is above)", r,
          px_h_describe_wstatus(ws, d, sizeof d));
  }
  int64_t t_workers = px_h_now_ms() - t0;

  /* Every worker holds the same bits. */
  size_t total = 0;
  for (int t = 0; t < PX_IT_NTENSORS; t++) {
    out->numel[t] = job_numel(j, t);
    total += out->numel[t];
  }
  float* first = NULL;
  for (uint32_t r = 0; r < j->world; r++) {
    char path[600], what[64];
    snprintf(path, sizeof path, "%s/params.%" PRIu32, dir, r);
    size_t len = 0;
    float* got = px_h_read_file(path, &len);
    CHECK(got != NULL, "cannot read %s", path);
    CHECK(len == total * sizeof(float), "%s has %zu bytes, want %zu", path, len,
          total * sizeof(float));
    if (!first) {
      first = got;
      continue;
    }
    snprintf(what, sizeof what, "worker %" PRIu32 " vs worker 0", r);
    check_same_bits(what, got, first, total);
    free(got);
  }
  for (int t = 0, off = 0; t < PX_IT_NTENSORS; off += (int)out->numel[t], t++) {
    out->params[t] = malloc(out->numel[t] * sizeof(float));
    CHECK(out->params[t], "out of memory");
    memcpy(out->params[t], first + off, out->numel[t] * sizeof(float));
  }
  free(first);

  /* Stats: every chunk at version `steps`, checksums of what the workers hold, counters. */
  px_rpc_channel* ch = px_rpc_channel_create(srv.addr, err, sizeof err);
  CHECK(ch, "channel: %s", err);
  Paramex__V1__StatsResponse* st = px_h_stats(ch, err, sizeof err);
  CHECK(st, "%s", err);
  CHECK(st->workers_expected == j->world, "workers_expected %" PRIu32, st->workers_expected);
  CHECK(st->workers_joined == j->world, "workers_joined %" PRIu32, st->workers_joined);
  CHECK(st->version_min == j->steps && st->version_max == j->steps,
        "versions %" PRIu64 "..%" PRIu64 ", want %" PRIu64, st->version_min, st->version_max, j->steps);
  uint64_t chunks_total = 0;
  for (int t = 0; t < PX_IT_NTENSORS; t++) {
    const char* name = px_it_tensor_name(t);
    const Paramex__V1__TensorStats* ts = px_h_stats_tensor(st, name);
    CHECK(ts, "Stats has no tensor %s", name);
    uint32_t nc = num_chunks(out->numel[t], j->chunk_elems);
    chunks_total += nc;
    CHECK(ts->dtype == PARAMEX__V1__DTYPE__DTYPE_F32, "%s dtype %d", name, (int)ts->dtype);
    CHECK(ts->num_chunks == nc, "%s has %" PRIu32 " chunks, want %" PRIu32, name, ts->num_chunks, nc);
    CHECK(ts->bytes == out->numel[t] * sizeof(float), "%s bytes %" PRIu64, name, ts->bytes);
    CHECK(ts->n_shape == (t == 0 ? 1u : 2u), "%s ndim %zu", name, ts->n_shape);
    CHECK(ts->version_min == j->steps && ts->version_max == j->steps,
          "%s versions %" PRIu64 "..%" PRIu64, name, ts->version_min, ts->version_max);
    uint64_t want = it_stats_checksum(out->params[t], out->numel[t] * sizeof(float));
    CHECK(ts->checksum == want, "%s: Stats checksum %016" PRIx64 ", the workers' parameters hash to %016" PRIx64,
          name, ts->checksum, want);
  }
  uint64_t dups = j->dup_rank >= 0 && j->dup_step < j->steps ? 2 * chunks_total : 0;
  uint64_t pushes = (uint64_t)j->world * j->steps * chunks_total;
  CHECK(st->push_duplicates == dups, "push_duplicates %" PRIu64 ", want %" PRIu64,
        st->push_duplicates, dups);
  /* push_chunks counts the chunks that were counted (PushResponse.accepted), not retries. */
  CHECK(st->push_chunks == pushes, "push_chunks %" PRIu64 ", want %" PRIu64 " (duplicates: %" PRIu64 ")",
        st->push_chunks, pushes, st->push_duplicates);
  CHECK(st->steps_completed == j->steps * chunks_total, "steps_completed %" PRIu64 ", want %" PRIu64,
        st->steps_completed, j->steps * chunks_total);
  CHECK(st->rejected_calls == 0, "rejected_calls %" PRIu64, st->rejected_calls);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  px_rpc_channel_destroy(ch);

  int ws = 0;
  size_t extra = 0;
  CHECK(px_h_server_stop(&srv, SERVER_STOP_MS, &ws, &extra) == 0, "server did not exit within %d ms of SIGTERM",
        SERVER_STOP_MS);
  char d[96];
  CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "server %s after SIGTERM", px_h_describe_wstatus(ws, d, sizeof d));
  CHECK(extra == 0, "the server wrote %zu more bytes on stdout after its listening line", extra);
  px_h_rmtree(dir);
  fprintf(stderr, "# job: %" PRIu32 " workers, %" PRIu64 " steps, a=%" PRIu64
                  " floats: workers done in %" PRId64 " ms\n",
          j->world, j->steps, j->a_numel, t_workers);
}

static void check_against_reference(const job* j, const job_out* o) {
  float* ref[PX_IT_NTENSORS];
  reference(j, ref);
  for (int t = 0; t < PX_IT_NTENSORS; t++) {
    char what[64];
    snprintf(what, sizeof what, "tensor %s vs reference", px_it_tensor_name(t));
    check_same_bits(what, o->params[t], ref[t], o->numel[t]);
    free(ref[t]);
  }
}

/* 4 workers, SGD with momentum and weight decay, 256 KiB chunks: "a" has 46 chunks, the
 * last one short. Even steps use the blocking calls, odd steps the asynchronous ones. */
static void test_four_workers_bit_exact_and_reproducible(void** state) {
  (void)state;
  job j = {.world = 4, .steps = 4, .a_numel = PX_IT_DEFAULT_A_NUMEL, .lr = "0.1",
           .momentum = "0.9", .weight_decay = "0.01", .chunk_bytes = "256K",
           .chunk_elems = 65536, .threads = "2", .dup_rank = -1};
  job_out first = {0}, second = {0};
  run_job(&j, &first);
  check_against_reference(&j, &first);

  /* Same inputs again; arrival order and compute threads differ, the bits must not. */
  j.reverse_start = true;
  j.threads = "4";
  run_job(&j, &second);
  for (int t = 0; t < PX_IT_NTENSORS; t++) {
    char what[64];
    snprintf(what, sizeof what, "tensor %s, second run vs first", px_it_tensor_name(t));
    check_same_bits(what, second.params[t], first.params[t], first.numel[t]);
  }
  job_out_free(&first);
  job_out_free(&second);
}

/* One worker, plain SGD (no momentum, no weight decay), 1 KiB chunks (many small chunks). */
static void test_single_worker(void** state) {
  (void)state;
  job j = {.world = 1, .steps = 4, .a_numel = 10007, .lr = "0.05", .momentum = "0",
           .weight_decay = "0", .chunk_bytes = "1K", .chunk_elems = 256, .threads = "2",
           .dup_rank = -1};
  job_out o = {0};
  run_job(&j, &o);
  check_against_reference(&j, &o);
  job_out_free(&o);
}

/* Rank 1 pushes step 1 three times (before and after the pull of version 2): the retries
 * are acknowledged as duplicates and the result is that of a run without them. */
static void test_duplicate_push_counts_once(void** state) {
  (void)state;
  job j = {.world = 2, .steps = 3, .a_numel = 100000, .lr = "0.1", .momentum = "0.5",
           .weight_decay = "0", .chunk_bytes = "64K", .chunk_elems = 16384, .threads = "2",
           .dup_rank = 1, .dup_step = 1};
  job_out o = {0};
  run_job(&j, &o);
  check_against_reference(&j, &o);
  job_out_free(&o);
}

static int teardown(void** state) {
  (void)state;
  px_h_kill_all();
  return 0;
}

static int group_setup(void** state) {
  (void)state;
  px_rpc_init();
  return 0;
}

static int group_teardown(void** state) {
  (void)state;
  px_h_kill_all();
  px_rpc_shutdown();
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_four_workers_bit_exact_and_reproducible, teardown),
      cmocka_unit_test_teardown(test_single_worker, teardown),
      cmocka_unit_test_teardown(test_duplicate_push_counts_once, teardown),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
