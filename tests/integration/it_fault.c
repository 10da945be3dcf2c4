/* Faults with real processes (the job of model.h, pmx_test_worker --resync):
 *  - the server is SIGKILLed 2 or 3 times at random moments of a 4-worker run with
 *    --checkpoint-dir and --checkpoint-every 2, and restarted each time on the same port
 *    and directory: it restores the newest checkpoint, the workers resynchronise (once per
 *    kill each) and finish, and their parameters equal, bit for bit, the reference of an
 *    uninterrupted run of the same number of steps;
 *  - a worker is SIGKILLed at a random step and started again with the same rank: it
 *    joins again, continues from the server's version, and the job ends with the
 *    reference bits;
 *  - a soak of 3,000 small steps (2 workers, tiny tensors, periodic checkpoints): the
 *    server's VmRSS at the end exceeds the one at step 500 by less than 8 MiB.
 * The moments come from a seeded generator: the seed is printed and PMX_IT_SEED=N repeats
 * a run. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "rpc/rpc_base.h"
#include "rpc/rpc_client.h"
#include "harness.h"
#include "model.h"
#include "train.h"

#define SERVER_START_MS 10000
#define SERVER_STOP_MS 20000
#define JOB_MS 120000
#define PROGRESS_MS 40000

#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

static const it_sgd g_sgd = {"0.05", "0.9", "0.01"};
static char g_dir[512];
static uint64_t g_rng;

static uint64_t rnd_between(uint64_t lo, uint64_t hi) { return it_rnd_between(&g_rng, lo, hi); }

/* ---- helpers ----------------------------------------------------------------------------- */

/* Starts the server (listen NULL: an ephemeral port) with its stderr appended to log. */
static void start_server(px_h_server* srv, const char* listen, const char* const* args, const char* log) {
  char path[700], err[512];
  snprintf(path, sizeof path, "%s/%s", g_dir, log);
  int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  CHECK(fd >= 0, "cannot open %s", path);
  int rc = px_h_server_start_ex(srv, listen, args, NULL, fd, SERVER_START_MS, err, sizeof err);
  close(fd);
  CHECK(rc == 0, "server start%s%s: %s (its log: %s)", listen ? " on " : "", listen ? listen : "", err, path);
}

/* The same with extra environment (ephemeral port). */
static void start_server_env(px_h_server* srv, const char* const* args, const char* const* env, const char* log) {
  char path[700], err[512];
  snprintf(path, sizeof path, "%s/%s", g_dir, log);
  int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  CHECK(fd >= 0, "cannot open %s", path);
  int rc = px_h_server_start_ex(srv, NULL, args, env, fd, SERVER_START_MS, err, sizeof err);
  close(fd);
  CHECK(rc == 0, "server start: %s (its log: %s)", err, path);
}

static void stop_server_ok(px_h_server* srv) {
  int ws = 0;
  size_t extra = 0;
  CHECK(px_h_server_stop(srv, SERVER_STOP_MS, &ws, &extra) == 0, "server did not exit within %d ms of SIGTERM",
        SERVER_STOP_MS);
  char d[96];
  CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "server %s after SIGTERM", px_h_describe_wstatus(ws, d, sizeof d));
}

static px_rpc_channel* channel(const px_h_server* srv) {
  char err[512];
  px_rpc_channel* ch = px_rpc_channel_create(srv->addr, err, sizeof err);
  CHECK(ch, "channel: %s", err);
  return ch;
}

/* The rest of a worker's stdout after it exited: what acc still holds plus the pipe. */
static char* drain(int fd, const char* acc) {
  size_t cap = 1 << 20, n = strlen(acc);
  char* out = malloc(cap);
  CHECK(out, "out of memory");
  memcpy(out, acc, n + 1);
  px_h_read_all(fd, out + n, cap - n, 5000);
  return out;
}

/* The server's final state: every tensor at `steps` with the reference checksum. */
static void check_server_final(const px_h_server* srv, const it_train* j) {
  px_rpc_channel* ch = channel(srv);
  char err[512];
  Paramex__V1__StatsResponse* st = px_h_stats(ch, err, sizeof err);
  CHECK(st, "%s", err);
  for (int t = 0; t < PX_IT_NTENSORS; t++) {
    const Paramex__V1__TensorStats* ts = px_h_stats_tensor(st, px_it_tensor_name(t));
    CHECK(ts, "Stats has no tensor %s", px_it_tensor_name(t));
    CHECK(ts->version_min == j->steps && ts->version_max == j->steps, "%s at versions %" PRIu64 "..%" PRIu64,
          px_it_tensor_name(t), ts->version_min, ts->version_max);
    float* ref = it_reference(j, &g_sgd, t, j->steps, NULL);
    uint64_t want = it_stats_checksum(ref, it_numel(j, t) * sizeof(float));
    free(ref);
    CHECK(ts->checksum == want, "%s: Stats checksum %016" PRIx64 ", reference %016" PRIx64, px_it_tensor_name(t),
          ts->checksum, want);
  }
  protobuf_c_message_free_unpacked(&st->base, NULL);
  px_rpc_channel_destroy(ch);
}

/* ---- server kills --------------------------------------------------------------------------- */

#define KILL_WORLD 4
#define KILL_STEPS 240

static void test_server_sigkill_restart(void** state) {
  (void)state;
  char ckdir[600], out[600], listen[64];
  snprintf(ckdir, sizeof ckdir, "%s/ckpt-kill", g_dir);
  snprintf(out, sizeof out, "%s/kill-out", g_dir);
  mkdir(out, 0755);
  const char* args[] = {"--workers", "4", "--lr", g_sgd.lr, "--momentum", g_sgd.momentum,
                        "--weight-decay", g_sgd.weight_decay, "--chunk-bytes", "4K", "--threads", "2",
                        "--checkpoint-dir", ckdir, "--checkpoint-every", "2", "--keep", "3", NULL};
  px_h_server srv;
  start_server(&srv, NULL, args, "kill-server.log");
  snprintf(listen, sizeof listen, "127.0.0.1:%d", srv.port);

  /* "a" of 5,000 floats is 5 chunks: a kill can fall between the chunks of a step. */
  it_train j = {.addr = srv.addr, .world = KILL_WORLD, .steps = KILL_STEPS, .a_numel = 5000, .dir = out,
                .resync = true, .timeout_ms = 15000};
  int pfd[2];
  CHECK(pipe2(pfd, O_CLOEXEC) == 0, "pipe");
  pid_t pids[KILL_WORLD];
  int outfd[KILL_WORLD];
  const char* progress[] = {"--progress-every", "1", NULL};
  for (uint32_t r = 0; r < KILL_WORLD; r++) {
    char name[32];
    snprintf(name, sizeof name, "kill-worker-%" PRIu32 ".out", r);
    outfd[r] = r == 0 ? pfd[1] : it_open_out(g_dir, name);
    pids[r] = it_worker_start(&j, r, outfd[r], -1, r == 0 ? progress : NULL);
    close(outfd[r]);
  }
  char acc[4096] = "";

  int nkills = (int)rnd_between(2, 3);
  uint64_t lo = 10, span = (KILL_STEPS - 40 - lo) / (uint64_t)nkills;
  int64_t t0 = px_h_now_ms();
  for (int k = 0; k < nkills; k++) {
    uint64_t target = rnd_between(lo + (uint64_t)k * span, lo + (uint64_t)(k + 1) * span - 1);
    uint64_t at = it_wait_step(pfd[0], acc, sizeof acc, target, "rank 0", PROGRESS_MS);
    /* The restart needs a checkpoint to resume from (the first one is at version 2). */
    uint64_t vs[16];
    int64_t until = px_h_now_ms() + 10000;
    while (it_ckpt_versions(ckdir, vs, 16) < 1) {
      CHECK(px_h_now_ms() < until, "no checkpoint in %s 10 s after version %" PRIu64, ckdir, at);
      poll(NULL, 0, 5);
    }
    px_h_kill(srv.pid);
    close(srv.out_fd);
    int n = it_ckpt_versions(ckdir, vs, 16); /* the server is gone: this is final */
    CHECK(n >= 1, "no checkpoint left in %s", ckdir);
    uint64_t newest = vs[n - 1];
    int64_t tk = px_h_now_ms();
    start_server(&srv, listen, args, "kill-server.log");
    CHECK(srv.port == atoi(strrchr(listen, ':') + 1), "restarted on port %d, want %s", srv.port, listen);
    px_rpc_channel* ch = channel(&srv);
    char err[512];
    Paramex__V1__StatsResponse* st = px_h_stats(ch, err, sizeof err);
    CHECK(st, "%s", err);
    CHECK(st->restored_version == newest, "kill %d: restored version %" PRIu64 ", the newest checkpoint is %" PRIu64,
          k + 1, st->restored_version, newest);
    protobuf_c_message_free_unpacked(&st->base, NULL);
    px_rpc_channel_destroy(ch);
    fprintf(stderr, "# kill %d of %d: SIGKILL when rank 0 had step %" PRIu64 " (target %" PRIu64
                    "); restarted in %" PRId64 " ms from version %" PRIu64 "\n",
            k + 1, nkills, at, target, px_h_now_ms() - tk, newest);
  }

  int64_t deadline = px_h_now_ms() + JOB_MS;
  for (uint32_t r = 0; r < KILL_WORLD; r++) {
    int64_t left = deadline - px_h_now_ms();
    it_worker_expect_ok(pids[r], r, left > 0 ? (int)left : 0);
  }
  int64_t t_job = px_h_now_ms() - t0;
  for (uint32_t r = 0; r < KILL_WORLD; r++) {
    char name[32];
    snprintf(name, sizeof name, "kill-worker-%" PRIu32 ".out", r);
    char* o = r == 0 ? drain(pfd[0], acc) : it_slurp(g_dir, name);
    long n = it_resyncs_of(o);
    CHECK(n == nkills, "worker %" PRIu32 " resynchronised %ld times for %d server restarts (stdout tail: %s)", r, n,
          nkills, strlen(o) > 300 ? o + strlen(o) - 300 : o);
    free(o);
  }
  close(pfd[0]);
  it_train_check(&j, &g_sgd);
  check_server_final(&srv, &j);
  stop_server_ok(&srv);
  fprintf(stderr, "# %d server kills: %" PRIu32 " workers x %d steps done in %" PRId64
                  " ms, parameters bit-identical to the uninterrupted reference\n",
          nkills, (uint32_t)KILL_WORLD, KILL_STEPS, t_job);
}

/* ---- a worker killed and restarted -------------------------------------------------------------- */

#define WK_STEPS 150

static void test_worker_sigkill_rejoin(void** state) {
  (void)state;
  char out[600];
  snprintf(out, sizeof out, "%s/worker-kill-out", g_dir);
  mkdir(out, 0755);
  const char* args[] = {"--workers", "4", "--lr", g_sgd.lr, "--momentum", g_sgd.momentum,
                        "--weight-decay", g_sgd.weight_decay, "--chunk-bytes", "4K", "--threads", "2", NULL};
  px_h_server srv;
  start_server(&srv, NULL, args, "worker-kill-server.log");
  it_train j = {.addr = srv.addr, .world = 4, .steps = WK_STEPS, .a_numel = 5000, .dir = out, .resync = true,
                .timeout_ms = 15000};
  const uint32_t victim = (uint32_t)rnd_between(0, 3);
  int pfd[2];
  CHECK(pipe2(pfd, O_CLOEXEC) == 0, "pipe");
  const char* progress[] = {"--progress-every", "1", NULL};
  pid_t pids[4];
  for (uint32_t r = 0; r < 4; r++) {
    pids[r] = it_worker_start(&j, r, r == victim ? pfd[1] : -1, -1, r == victim ? progress : NULL);
    if (r == victim) close(pfd[1]);
  }
  char acc[4096] = "";
  uint64_t target = rnd_between(10, WK_STEPS - 50);
  uint64_t at = it_wait_step(pfd[0], acc, sizeof acc, target, "the victim", PROGRESS_MS);
  px_h_kill(pids[victim]);
  close(pfd[0]);

  /* The same rank again: it joins, declares, pulls the current version and goes on. */
  int ofd = it_open_out(g_dir, "worker-again.out");
  pids[victim] = it_worker_start(&j, victim, ofd, -1, NULL);
  close(ofd);
  int64_t deadline = px_h_now_ms() + JOB_MS;
  for (uint32_t r = 0; r < 4; r++) {
    int64_t left = deadline - px_h_now_ms();
    it_worker_expect_ok(pids[r], r, left > 0 ? (int)left : 0);
  }
  char* o = it_slurp(g_dir, "worker-again.out");
  const char* s = strstr(o, "start step ");
  uint64_t start = s ? strtoull(s + 11, NULL, 10) : 0;
  CHECK(start > at, "the restarted worker %" PRIu32 " started at step %" PRIu64 ", but the job had passed step %" PRIu64
        " (its stdout: %s)", victim, start, at, o);
  CHECK(it_resyncs_of(o) == 0, "the restarted worker resynchronised: %s", o);
  free(o);
  it_train_check(&j, &g_sgd);
  check_server_final(&srv, &j);
  stop_server_ok(&srv);
  fprintf(stderr, "# worker %" PRIu32 " SIGKILLed after step %" PRIu64 " (target %" PRIu64
                  "), restarted at step %" PRIu64 "; result bit-identical to the reference\n",
          victim, at, target, start);
}

/* ---- soak --------------------------------------------------------------------------------------- */

#define SOAK_STEPS 3000
#define SOAK_SAMPLE_STEP 500
#define SOAK_MAX_GROWTH_KIB (8 * 1024)

static void test_soak_rss(void** state) {
  (void)state;
  char out[600], ckdir[600];
  snprintf(out, sizeof out, "%s/soak-out", g_dir);
  snprintf(ckdir, sizeof ckdir, "%s/ckpt-soak", g_dir);
  mkdir(out, 0755);
  const char* args[] = {"--workers", "2", "--lr", g_sgd.lr, "--momentum", g_sgd.momentum,
                        "--weight-decay", g_sgd.weight_decay, "--chunk-bytes", "1K", "--threads", "2",
                        "--checkpoint-dir", ckdir, "--checkpoint-every", "250", "--keep", "2", NULL};
  /* Under AddressSanitizer freed memory sits in a quarantine (256 MiB by default) that
   * would read as growth: the server then runs without one. */
  char asan[1024];
  const char* prev = getenv("ASAN_OPTIONS");
  snprintf(asan, sizeof asan, "ASAN_OPTIONS=%s%squarantine_size_mb=0:thread_local_quarantine_size_kb=0",
           prev ? prev : "", prev && *prev ? ":" : "");
  const char* env[] = {asan, NULL};
  px_h_server srv;
  start_server_env(&srv, args, SANITIZED ? env : NULL, "soak-server.log");
  it_train j = {.addr = srv.addr, .world = 2, .steps = SOAK_STEPS, .a_numel = 256, .dir = out, .timeout_ms = 15000};
  int pfd[2];
  CHECK(pipe2(pfd, O_CLOEXEC) == 0, "pipe");
  char every[16];
  snprintf(every, sizeof every, "%d", SOAK_SAMPLE_STEP);
  const char* progress[] = {"--progress-every", every, NULL};
  pid_t pids[2];
  int64_t t0 = px_h_now_ms();
  pids[0] = it_worker_start(&j, 0, pfd[1], -1, progress);
  close(pfd[1]);
  pids[1] = it_worker_start(&j, 1, -1, -1, NULL);
  char acc[4096] = "";
  it_wait_step(pfd[0], acc, sizeof acc, SOAK_SAMPLE_STEP, "rank 0", PROGRESS_MS);
  long rss_early = px_h_rss_kib(srv.pid);
  CHECK(rss_early > 0, "cannot read the server's VmRSS");
  int64_t deadline = px_h_now_ms() + JOB_MS;
  for (uint32_t r = 0; r < 2; r++) {
    int64_t left = deadline - px_h_now_ms();
    it_worker_expect_ok(pids[r], r, left > 0 ? (int)left : 0);
  }
  int64_t ms = px_h_now_ms() - t0;
  long rss_end = px_h_rss_kib(srv.pid);
  close(pfd[0]);
  fprintf(stderr, "# soak: %d steps of 2 workers in %" PRId64 " ms; server VmRSS %ld KiB at step %d, %ld KiB at the"
                  " end (%+ld KiB)\n", SOAK_STEPS, ms, rss_early, SOAK_SAMPLE_STEP, rss_end, rss_end - rss_early);
  CHECK(rss_end > 0, "cannot read the server's VmRSS");
  CHECK(rss_end - rss_early < SOAK_MAX_GROWTH_KIB, "the server's VmRSS grew by %ld KiB between step %d and step %d"
        " (limit %d KiB)", rss_end - rss_early, SOAK_SAMPLE_STEP, SOAK_STEPS, SOAK_MAX_GROWTH_KIB);
  it_train_check(&j, &g_sgd);
  check_server_final(&srv, &j);
  stop_server_ok(&srv);
}

/* ---- setup --------------------------------------------------------------------------------------- */

static int teardown(void** state) {
  (void)state;
  px_h_kill_all();
  return 0;
}

static int group_setup(void** state) {
  (void)state;
  px_rpc_init();
  it_seed_rng(&g_rng);
  return px_h_mkdtemp(g_dir, sizeof g_dir);
}

static int group_teardown(void** state) {
  (void)state;
  px_h_kill_all();
  px_h_rmtree(g_dir);
  px_rpc_shutdown();
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_server_sigkill_restart, teardown),
      cmocka_unit_test_teardown(test_worker_sigkill_rejoin, teardown),
      cmocka_unit_test_teardown(test_soak_rss, teardown),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
