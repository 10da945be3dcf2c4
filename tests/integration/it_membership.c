/* Worker leases, with real server and worker processes:
 *  - --elastic: a worker killed mid-run is declared dead after --worker-timeout and the
 *    others finish every step without it, ending with identical parameters;
 *  - BSP (no --elastic): when the dead worker stays away past --rejoin-wait, the other
 *    workers' pulls fail with FAILED_PRECONDITION naming the reason (no hang);
 *  - a worker that computes longer than the lease is kept alive by heartbeats;
 *  - workers that finished leave: reported finished, never dead; in BSP a worker that left
 *    early stops the others' next step after --rejoin-wait, naming it; with --elastic the
 *    others go on without it. */
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "check.h"
#include "harness.h"

#define NW 3

typedef struct job {
  px_h_server srv;
  char dir[512];
  pid_t pids[NW];
  int errfd[NW];
  int progress_fd;
} job;

/* Starts the NW workers, rank r running steps[r] steps. */
static void start_workers_each(job* j, const char* const* steps) {
  for (int r = 0; r < NW; r++) {
    char rank_s[8], out_path[600];
    snprintf(rank_s, sizeof rank_s, "%d", r);
    snprintf(out_path, sizeof out_path, "%s/params.%d", j->dir, r);
    int ep[2], op[2] = {-1, -1};
    CHECK(pipe2(ep, O_CLOEXEC) == 0, "pipe");
    if (r == 0) CHECK(pipe2(op, O_CLOEXEC) == 0, "pipe");
    const char* argv[] = {px_h_worker_bin(), "--server", j->srv.addr, "--rank", rank_s, "--world",
                          "3", "--steps", steps[r], "--a-numel", "20000", "--timeout-ms", "30000",
                          "--out", out_path, r == 0 ? "--progress" : NULL, NULL};
    j->pids[r] = px_h_spawn(argv, NULL, op[1], ep[1]);
    close(ep[1]);
    if (op[1] >= 0) close(op[1]);
    CHECK(j->pids[r] > 0, "cannot start worker %d", r);
    j->errfd[r] = ep[0];
    if (r == 0) j->progress_fd = op[0];
  }
}

static void start_workers(job* j, const char* steps) {
  const char* each[NW] = {steps, steps, steps};
  start_workers_each(j, each);
}

/* Waits for worker r to exit; returns its status and (buf, cap) its stderr. */
static int worker_end(job* j, int r, int ms, char* buf, size_t cap) {
  int ws = 0;
  CHECK(px_h_wait(j->pids[r], ms, &ws) == 0, "rank %d did not end within %d ms", r, ms);
  ssize_t n = px_h_read_all(j->errfd[r], buf, cap - 1, 1000);
  buf[n > 0 ? n : 0] = 0;
  j->pids[r] = 0;
  return ws;
}

/* Ranks 0 and 1 wrote the same parameters. */
static void expect_ranks01_alike(const job* j) {
  char p0[600], p1[600];
  snprintf(p0, sizeof p0, "%s/params.0", j->dir);
  snprintf(p1, sizeof p1, "%s/params.1", j->dir);
  size_t l0 = 0, l1 = 0;
  void* b0 = px_h_read_file(p0, &l0);
  void* b1 = px_h_read_file(p1, &l1);
  CHECK(b0 && b1 && l0 == l1 && l0 > 0, "outputs missing");
  CHECK(memcmp(b0, b1, l0) == 0, "ranks 0 and 1 ended with different parameters");
  free(b0);
  free(b1);
}

static void server_stop_ok(job* j) {
  int ws = 0;
  CHECK(px_h_server_stop(&j->srv, 15000, &ws, NULL) == 0, "server did not stop");
  CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "server exit");
  px_h_rmtree(j->dir);
}

/* Waits until rank 0 reported `step`, then SIGKILLs rank 2. */
static void kill_rank2_after(job* j, const char* step) {
  char acc[256] = "", line[64];
  CHECK(px_h_read_line_prefix(j->progress_fd, step, acc, sizeof acc, line, sizeof line, 60000) == 0,
        "rank 0 did not report '%s' within 60 s", step);
  kill(j->pids[2], SIGKILL);
  int ws = 0;
  CHECK(px_h_wait(j->pids[2], 10000, &ws) == 0, "rank 2 did not die");
  CHECK(WIFSIGNALED(ws) && WTERMSIG(ws) == SIGKILL, "rank 2 ended otherwise");
  j->pids[2] = 0;
}

static void test_elastic_continues_without_dead_worker(void** state) {
  (void)state;
  job j;
  memset(&j, 0, sizeof j);
  char err[512];
  const char* args[] = {"--workers", "3", "--lr", "0.05", "--momentum", "0.9", "--chunk-bytes", "16K",
                        "--elastic", "--worker-timeout", "1", NULL};
  CHECK(px_h_server_start(&j.srv, args, NULL, 10000, err, sizeof err) == 0, "server: %s", err);
  CHECK(px_h_mkdtemp(j.dir, sizeof j.dir) == 0, "mkdtemp");
  start_workers(&j, "40");
  kill_rank2_after(&j, "step 5");

  int64_t t0 = px_h_now_ms();
  for (int r = 0; r < 2; r++) {
    int ws = 0;
    char d[96], buf[2048];
    CHECK(px_h_wait(j.pids[r], 60000, &ws) == 0, "rank %d did not finish within 60 s", r);
    if (!(WIFEXITED(ws) && WEXITSTATUS(ws) == 0)) {
      ssize_t n = px_h_read_all(j.errfd[r], buf, sizeof buf - 1, 1000);
      buf[n > 0 ? n : 0] = 0;
      CHECK(0, "rank %d %s: %s", r, px_h_describe_wstatus(ws, d, sizeof d), buf);
    }
  }
  print_message("# elastic: ranks 0 and 1 finished 40 steps %lld ms after rank 2 was killed\n",
                (long long)(px_h_now_ms() - t0));

  /* both survivors hold the same parameters, which are the server's */
  expect_ranks01_alike(&j);

  px_rpc_channel* ch = px_rpc_channel_create(j.srv.addr, err, sizeof err);
  CHECK(ch, "channel: %s", err);
  Paramex__V1__StatsResponse* st = px_h_stats(ch, err, sizeof err);
  CHECK(st, "stats: %s", err);
  CHECK(st->elastic, "stats does not say elastic");
  bool seen_dead = false;
  for (size_t i = 0; i < st->n_workers; i++)
    if (st->workers[i]->rank == 2) seen_dead = !st->workers[i]->alive;
  CHECK(seen_dead, "worker 2 is not reported dead");
  CHECK(st->workers_alive <= 2, "workers_alive %u", st->workers_alive);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  px_rpc_channel_destroy(ch);

  int ws = 0;
  CHECK(px_h_server_stop(&j.srv, 15000, &ws, NULL) == 0, "server did not stop");
  CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "server exit");
  px_h_rmtree(j.dir);
}

static void test_bsp_fails_after_rejoin_wait(void** state) {
  (void)state;
  job j;
  memset(&j, 0, sizeof j);
  char err[512];
  const char* args[] = {"--workers", "3", "--lr", "0.05", "--chunk-bytes", "16K",
                        "--worker-timeout", "1", "--rejoin-wait", "1", NULL};
  CHECK(px_h_server_start(&j.srv, args, NULL, 10000, err, sizeof err) == 0, "server: %s", err);
  CHECK(px_h_mkdtemp(j.dir, sizeof j.dir) == 0, "mkdtemp");
  start_workers(&j, "1000000");
  kill_rank2_after(&j, "step 5");

  int64_t t0 = px_h_now_ms();
  for (int r = 0; r < 2; r++) {
    int ws = 0;
    char buf[4096];
    CHECK(px_h_wait(j.pids[r], 20000, &ws) == 0,
          "rank %d still runs 20 s after its peer died (a hang instead of an error)", r);
    CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) != 0, "rank %d should have failed", r);
    ssize_t n = px_h_read_all(j.errfd[r], buf, sizeof buf - 1, 1000);
    buf[n > 0 ? n : 0] = 0;
    CHECK(strstr(buf, "failed precondition") && strstr(buf, "gone"),
          "rank %d did not report the dead worker: %s", r, buf);
  }
  print_message("# bsp: the surviving ranks failed %lld ms after rank 2 was killed\n",
                (long long)(px_h_now_ms() - t0));
  int ws = 0;
  CHECK(px_h_server_stop(&j.srv, 15000, &ws, NULL) == 0, "server did not stop");
  CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "server exit");
  px_h_rmtree(j.dir);
}

/* ---- Leave ----------------------------------------------------------------------------- */

/* Workers that finished leave (pmx_client_destroy): well past --worker-timeout they are
 * reported finished, never dead (they once were, and operators could not tell a finished
 * job from a crashed one). */
static void test_finished_workers_are_not_dead(void** state) {
  (void)state;
  job j;
  memset(&j, 0, sizeof j);
  char err[512], buf[4096];
  const char* args[] = {"--workers", "3", "--chunk-bytes", "16K", "--worker-timeout", "0.3", NULL};
  CHECK(px_h_server_start(&j.srv, args, NULL, 10000, err, sizeof err) == 0, "server: %s", err);
  CHECK(px_h_mkdtemp(j.dir, sizeof j.dir) == 0, "mkdtemp");
  start_workers(&j, "6");
  for (int r = 0; r < NW; r++) {
    int ws = worker_end(&j, r, 60000, buf, sizeof buf);
    CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "rank %d failed: %s", r, buf);
  }
  px_rpc_channel* ch = px_rpc_channel_create(j.srv.addr, err, sizeof err);
  CHECK(ch, "channel: %s", err);
  /* until every worker's last call is 5 leases old (bounded), then each must be finished */
  for (int64_t until = px_h_now_ms() + 30000;;) {
    Paramex__V1__StatsResponse* st = px_h_stats(ch, err, sizeof err);
    CHECK(st && st->n_workers == NW, "stats: %s", err);
    bool old = true;
    for (size_t i = 0; i < st->n_workers; i++) old = old && st->workers[i]->last_seen_ms > 1500;
    if (old) {
      for (size_t i = 0; i < st->n_workers; i++)
        CHECK(st->workers[i]->finished && !st->workers[i]->alive,
              "worker %u: finished %d alive %d, %" PRIu64 " ms after its last call", st->workers[i]->rank,
              st->workers[i]->finished, st->workers[i]->alive, st->workers[i]->last_seen_ms);
      CHECK(st->workers_alive == 0, "workers_alive %u", st->workers_alive);
      protobuf_c_message_free_unpacked(&st->base, NULL);
      break;
    }
    protobuf_c_message_free_unpacked(&st->base, NULL);
    CHECK(px_h_now_ms() < until, "the workers' last calls never became 1.5 s old");
    poll(NULL, 0, 50);
  }
  px_rpc_channel_destroy(ch);
  server_stop_ok(&j);
}

/* BSP: a worker that leaves before the others' last step is waited for --rejoin-wait (it
 * may join again, as in a job of several phases), then their pulls fail naming it. */
static void test_bsp_worker_left_early(void** state) {
  (void)state;
  job j;
  memset(&j, 0, sizeof j);
  char err[512], buf[4096];
  const char* args[] = {"--workers", "3", "--chunk-bytes", "16K", "--rejoin-wait", "1", NULL};
  CHECK(px_h_server_start(&j.srv, args, NULL, 10000, err, sizeof err) == 0, "server: %s", err);
  CHECK(px_h_mkdtemp(j.dir, sizeof j.dir) == 0, "mkdtemp");
  const char* steps[NW] = {"8", "8", "3"};
  start_workers_each(&j, steps);
  int ws = worker_end(&j, 2, 60000, buf, sizeof buf);
  CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "rank 2 failed: %s", buf);
  for (int r = 0; r < 2; r++) {
    ws = worker_end(&j, r, 30000, buf, sizeof buf);
    CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 1, "rank %d should have failed: %s", r, buf);
    CHECK(strstr(buf, "failed precondition") &&
              strstr(buf, "worker 2 left (finished) without its contribution to step 3"),
          "rank %d did not name the worker that left: %s", r, buf);
  }
  server_stop_ok(&j);
}

/* --elastic: the others go on without a worker that left, and end alike. */
static void test_elastic_worker_left_early(void** state) {
  (void)state;
  job j;
  memset(&j, 0, sizeof j);
  char err[512], buf[4096];
  const char* args[] = {"--workers", "3", "--chunk-bytes", "16K", "--elastic", NULL};
  CHECK(px_h_server_start(&j.srv, args, NULL, 10000, err, sizeof err) == 0, "server: %s", err);
  CHECK(px_h_mkdtemp(j.dir, sizeof j.dir) == 0, "mkdtemp");
  const char* steps[NW] = {"12", "12", "3"};
  start_workers_each(&j, steps);
  for (int r = 0; r < NW; r++) {
    int ws = worker_end(&j, r, 60000, buf, sizeof buf);
    CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "rank %d failed: %s", r, buf);
  }
  expect_ranks01_alike(&j);
  server_stop_ok(&j);
}

static int teardown(void** state) {
  (void)state;
  px_h_kill_all();
  return 0;
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  px_rpc_init();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_elastic_continues_without_dead_worker, teardown),
      cmocka_unit_test_teardown(test_bsp_fails_after_rejoin_wait, teardown),
      cmocka_unit_test_teardown(test_finished_workers_are_not_dead, teardown),
      cmocka_unit_test_teardown(test_bsp_worker_left_early, teardown),
      cmocka_unit_test_teardown(test_elastic_worker_left_early, teardown),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  px_rpc_shutdown();
  return rc;
}
