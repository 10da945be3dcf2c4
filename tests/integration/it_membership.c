/* Worker leases, with real server and worker processes:
 *  - --elastic: a worker killed mid-run is declared dead after --worker-timeout and the
 *    others finish every step without it, ending with identical parameters;
 *  - BSP (no --elastic): when the dead worker stays away past --rejoin-wait, the other
 *    workers' pulls fail with FAILED_PRECONDITION naming the reason (no hang);
 *  - a worker that computes longer than the lease is kept alive by heartbeats. */
#include <fcntl.h>
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

static void start_workers(job* j, const char* steps) {
  for (int r = 0; r < NW; r++) {
    char rank_s[8], out_path[600];
    snprintf(rank_s, sizeof rank_s, "%d", r);
    snprintf(out_path, sizeof out_path, "%s/params.%d", j->dir, r);
    int ep[2], op[2] = {-1, -1};
    CHECK(pipe2(ep, O_CLOEXEC) == 0, "pipe");
    if (r == 0) CHECK(pipe2(op, O_CLOEXEC) == 0, "pipe");
    const char* argv[] = {px_h_worker_bin(), "--server", j->srv.addr, "--rank", rank_s, "--world",
                          "3", "--steps", steps, "--a-numel", "20000", "--timeout-ms", "30000",
                          "--out", out_path, r == 0 ? "--progress" : NULL, NULL};
    j->pids[r] = px_h_spawn(argv, NULL, op[1], ep[1]);
    close(ep[1]);
    if (op[1] >= 0) close(op[1]);
    CHECK(j->pids[r] > 0, "cannot start worker %d", r);
    j->errfd[r] = ep[0];
    if (r == 0) j->progress_fd = op[0];
  }
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
  char p0[600], p1[600];
  snprintf(p0, sizeof p0, "%s/params.0", j.dir);
  snprintf(p1, sizeof p1, "%s/params.1", j.dir);
  size_t l0 = 0, l1 = 0;
  void* b0 = px_h_read_file(p0, &l0);
  void* b1 = px_h_read_file(p1, &l1);
  CHECK(b0 && b1 && l0 == l1 && l0 > 0, "outputs missing");
  CHECK(memcmp(b0, b1, l0) == 0, "ranks 0 and 1 ended with different parameters");
  free(b0);
  free(b1);

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
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  px_rpc_shutdown();
  return rc;
}
