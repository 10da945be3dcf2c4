/* Shutdown and start-up failures of paramex-server:
 *  - SIGTERM while 4 workers are training: the server drains and exits 0 within a bound;
 *    every worker ends with a clean error (exit 1 through a paramex status), no signal;
 *  - SIGTERM while a pull is parked: the server exits 0 promptly, the pull ends
 *    UNAVAILABLE or CANCELLED (not at its own deadline);
 *  - bad flags and bad PMX_* variables: exit 2 with one stderr line naming the flag. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "harness.h"

#define NWORKERS 4
#define SERVER_EXIT_MS 15000   /* drain timeout (2 s) plus a generous margin */
#define WORKERS_EXIT_MS 30000  /* the workers' call timeout (15 s) plus a margin */

static void test_sigterm_under_load(void** state) {
  (void)state;
  char err[512], dir[512];
  const char* args[] = {"--workers", "4", "--lr", "0.01", "--momentum", "0.9", "--chunk-bytes", "64K",
                        "--threads", "2", "--drain-timeout", "2", NULL};
  px_h_server srv;
  CHECK(px_h_server_start(&srv, args, NULL, 10000, err, sizeof err) == 0, "server start: %s", err);
  CHECK(px_h_mkdtemp(dir, sizeof dir) == 0, "mkdtemp");

  pid_t pids[NWORKERS];
  int errfd[NWORKERS];
  int progress_fd = -1;
  for (int r = 0; r < NWORKERS; r++) {
    char rank_s[8], out_path[600];
    snprintf(rank_s, sizeof rank_s, "%d", r);
    snprintf(out_path, sizeof out_path, "%s/params.%d", dir, r);
    int ep[2], op[2] = {-1, -1};
    CHECK(pipe2(ep, O_CLOEXEC) == 0, "pipe");
    if (r == 0) CHECK(pipe2(op, O_CLOEXEC) == 0, "pipe");
    const char* argv[] = {px_h_worker_bin(), "--server", srv.addr, "--rank", rank_s, "--world", "4",
                          "--steps", "1000000", "--a-numel", "100000", "--timeout-ms", "15000",
                          "--out", out_path, r == 0 ? "--progress" : NULL, NULL};
    pids[r] = px_h_spawn(argv, NULL, op[1], ep[1]);
    close(ep[1]);
    if (op[1] >= 0) close(op[1]);
    CHECK(pids[r] > 0, "cannot start worker %d", r);
    errfd[r] = ep[0];
    if (r == 0) progress_fd = op[0];
  }

  /* Training is under way once rank 0 has pulled the result of step 5. */
  char acc[256] = "", line[64];
  CHECK(px_h_read_line_prefix(progress_fd, "step 5", acc, sizeof acc, line, sizeof line, 60000) == 0,
        "rank 0 did not report step 5 within 60 s (its stdout ended or timed out)");

  int64_t t0 = px_h_now_ms();
  int ws = 0;
  size_t extra = 0;
  CHECK(px_h_server_stop(&srv, SERVER_EXIT_MS, &ws, &extra) == 0,
        "the server did not exit within %d ms of SIGTERM under load", SERVER_EXIT_MS);
  int64_t t_server = px_h_now_ms() - t0;
  char d[96];
  CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "server %s after SIGTERM under load",
        px_h_describe_wstatus(ws, d, sizeof d));
  CHECK(extra == 0, "the server wrote %zu more bytes on stdout", extra);

  int64_t deadline = px_h_now_ms() + WORKERS_EXIT_MS;
  for (int r = 0; r < NWORKERS; r++) {
    int64_t left = deadline - px_h_now_ms();
    CHECK(px_h_wait(pids[r], left > 0 ? (int)left : 0, &ws) == 0,
          "worker %d still runs %d ms after the server exited", r, WORKERS_EXIT_MS);
    char out[4096];
    ssize_t n = px_h_read_all(errfd[r], out, sizeof out, 5000);
    close(errfd[r]);
    CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 1, "worker %d %s, want exit 1 with a paramex error (stderr: %s)",
          r, px_h_describe_wstatus(ws, d, sizeof d), n > 0 ? out : "");
    CHECK(n > 0 && strstr(out, "pmx_test_worker[rank "), "worker %d: no error line on stderr (got: %s)", r,
          n > 0 ? out : "");
    fprintf(stderr, "# worker %d: %s", r, out);
  }
  close(progress_fd);
  px_h_rmtree(dir);
  fprintf(stderr, "# server exited %" PRId64 " ms after SIGTERM\n", t_server);
}

static void test_sigterm_with_parked_pull(void** state) {
  (void)state;
  char err[512];
  const char* args[] = {"--workers", "1", "--drain-timeout", "2", NULL};
  px_h_server srv;
  CHECK(px_h_server_start(&srv, args, NULL, 10000, err, sizeof err) == 0, "server start: %s", err);
  px_rpc_channel* ch = px_rpc_channel_create(srv.addr, err, sizeof err);
  CHECK(ch, "channel: %s", err);

  Paramex__V1__JoinRequest jr = PARAMEX__V1__JOIN_REQUEST__INIT;
  jr.world_size = 1;
  ProtobufCMessage* jresp = NULL;
  int st = px_h_unary_pb(ch, PX_H_PATH_JOIN, &jr.base, &paramex__v1__join_response__descriptor, &jresp,
                          10000, err, sizeof err);
  CHECK(st == PX_ST_OK, "join: %s '%s'", px_status_name(st), err);
  Paramex__V1__DeclareRequest dr = PARAMEX__V1__DECLARE_REQUEST__INIT;
  dr.incarnation = ((Paramex__V1__JoinResponse*)jresp)->incarnation;
  protobuf_c_message_free_unpacked(jresp, NULL);
  uint64_t shape[1] = {10};
  dr.name = (char*)"p";
  dr.dtype = PARAMEX__V1__DTYPE__DTYPE_F32;
  dr.n_shape = 1;
  dr.shape = shape;
  ProtobufCMessage* resp = NULL;
  st = px_h_unary_pb(ch, PX_H_PATH_DECLARE, &dr.base, &paramex__v1__declare_response__descriptor, &resp,
                      10000, err, sizeof err);
  CHECK(st == PX_ST_OK, "declare: %s '%s'", px_status_name(st), err);
  uint32_t ids[1] = {((Paramex__V1__DeclareResponse*)resp)->tensor_id};
  protobuf_c_message_free_unpacked(resp, NULL);

  Paramex__V1__PullRequest pr = PARAMEX__V1__PULL_REQUEST__INIT;
  pr.n_tensor_ids = 1;
  pr.tensor_ids = ids;
  pr.min_version = 5; /* never produced: nobody pushes */
  static uint8_t buf[64];
  size_t len = paramex__v1__pull_request__pack(&pr, buf);
  static px_h_msg m;
  m = (px_h_msg){buf, len, NULL, 0};
  /* Not wait-for-ready: a pull that gRPC retries transparently after the server went
   * away (one that never reached the handler) must end UNAVAILABLE, not wait for a
   * connection until its deadline (it once ended DEADLINE_EXCEEDED after 30 s). */
  px_h_async* a = px_h_async_start_ex(ch, PX_H_PATH_PULL, &m, 1, 30000, false);
  CHECK(a, "cannot start the pull");
  /* Until the server counts the pull (a call sent later can be served first): bounded. */
  for (int64_t until = px_h_now_ms() + 20000;;) {
    Paramex__V1__StatsResponse* s = px_h_stats(ch, err, sizeof err);
    CHECK(s, "%s", err);
    uint64_t active = s->active_calls;
    protobuf_c_message_free_unpacked(&s->base, NULL);
    if (active == 1) break;
    CHECK(px_h_now_ms() < until, "the server did not count the pull within 20 s (%" PRIu64 " active)",
          active);
  }

  int64_t t0 = px_h_now_ms();
  int ws = 0;
  size_t extra = 0;
  CHECK(px_h_server_stop(&srv, 10000, &ws, &extra) == 0,
        "the server did not exit within 10 s of SIGTERM with a parked pull");
  int64_t t_server = px_h_now_ms() - t0;
  char d[96];
  CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "server %s after SIGTERM with a parked pull",
        px_h_describe_wstatus(ws, d, sizeof d));
  px_h_result r;
  px_h_async_join(a, &r);
  int64_t t_pull = px_h_now_ms() - t0;
  CHECK(r.status == PX_ST_UNAVAILABLE || r.status == PX_ST_CANCELLED,
        "the parked pull ended %s '%s', want UNAVAILABLE or CANCELLED",
        r.status >= 0 ? px_status_name(r.status) : "harness error", r.details);
  CHECK(t_pull < 12000, "the parked pull ended %" PRId64 " ms after SIGTERM", t_pull);
  px_h_result_free(&r);
  px_rpc_channel_destroy(ch);
  fprintf(stderr, "# server exited %" PRId64 " ms after SIGTERM; the pull ended after %" PRId64 " ms\n",
          t_server, t_pull);
}

typedef struct bad_flag {
  const char* args[4]; /* after --listen 127.0.0.1:0 */
  const char* env;     /* "PMX_X=value" or NULL */
  const char* name;    /* must appear in the stderr line */
} bad_flag;

/* Runs the server with args/env; returns its wait status with stdout/stderr captured. */
static void run_server_capture(const char* const* args, const char* env, int* ws, char* out, size_t outcap,
                               char* errb, size_t errcap) {
  const char* argv[16];
  size_t n = 0;
  argv[n++] = px_h_server_bin();
  argv[n++] = "--listen";
  argv[n++] = "127.0.0.1:0";
  for (size_t i = 0; args[i] && n < 15; i++) argv[n++] = args[i];
  argv[n] = NULL;
  const char* envv[2] = {env, NULL};
  int op[2], ep[2];
  CHECK(pipe2(op, O_CLOEXEC) == 0 && pipe2(ep, O_CLOEXEC) == 0, "pipe");
  pid_t pid = px_h_spawn(argv, env ? envv : NULL, op[1], ep[1]);
  close(op[1]);
  close(ep[1]);
  CHECK(pid > 0, "spawn");
  CHECK(px_h_wait(pid, 10000, ws) == 0, "the server with %s %s did not exit within 10 s", args[0],
        env ? env : "");
  CHECK(px_h_read_all(ep[0], errb, errcap, 5000) >= 0, "stderr not closed");
  CHECK(px_h_read_all(op[0], out, outcap, 5000) >= 0, "stdout not closed");
  close(op[0]);
  close(ep[0]);
}

static void test_bad_flags_exit_2(void** state) {
  (void)state;
  static const bad_flag cases[] = {
      {{"--workers", "abc"}, NULL, "--workers"},
      {{"--workers", "0"}, NULL, "--workers"},
      {{"--workers", "-3"}, NULL, "--workers"},
      {{"--lr", "x"}, NULL, "--lr"},
      {{"--momentum", "nan"}, NULL, "--momentum"},
      {{"--weight-decay", ""}, NULL, "--weight-decay"},
      {{"--chunk-bytes", "512"}, NULL, "--chunk-bytes"},
      {{"--chunk-bytes", "4M"}, NULL, "--chunk-bytes"},
      {{"--chunk-bytes", "12Q"}, NULL, "--chunk-bytes"},
      {{"--threads", "-1"}, NULL, "--threads"},
      {{"--cq-threads", "many"}, NULL, "--cq-threads"},
      {{"--drain-timeout", "soon"}, NULL, "--drain-timeout"},
      {{"--log-level", "loud"}, NULL, "--log-level"},
      {{"--bogus"}, NULL, "--bogus"},
      {{"--workers"}, NULL, "--workers"}, /* missing value */
      {{NULL}, "PMX_WORKERS=abc", "PMX_WORKERS"},
      {{NULL}, "PMX_CHUNK_BYTES=9M", "PMX_CHUNK_BYTES"},
      {{NULL}, "PMX_LR=fast", "PMX_LR"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const bad_flag* c = &cases[i];
    int ws = 0;
    char out[4096], errb[4096];
    run_server_capture(c->args, c->env, &ws, out, sizeof out, errb, sizeof errb);
    char d[96];
    const char* what = c->args[0] ? c->args[0] : c->env;
    CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 2, "%s %s: server %s, want exit 2 (stderr: %s)", what,
          c->args[1] ? c->args[1] : "", px_h_describe_wstatus(ws, d, sizeof d), errb);
    size_t len = strlen(errb);
    CHECK(len > 1 && errb[len - 1] == '\n' && strchr(errb, '\n') == errb + len - 1,
          "%s %s: want exactly one stderr line, got '%s'", what, c->args[1] ? c->args[1] : "", errb);
    CHECK(strstr(errb, c->name) != NULL, "%s %s: the stderr line does not name %s: '%s'", what,
          c->args[1] ? c->args[1] : "", c->name, errb);
    CHECK(out[0] == 0, "%s: the server printed on stdout: '%s'", what, out);
  }

  /* --help is not an error. */
  static const char* help[] = {"--help", NULL};
  int ws = 0;
  char out[8192], errb[4096];
  run_server_capture(help, NULL, &ws, out, sizeof out, errb, sizeof errb);
  char d[96];
  CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "--help: server %s", px_h_describe_wstatus(ws, d, sizeof d));
  CHECK(strstr(out, "--workers") && strstr(out, "--chunk-bytes") && strstr(out, "PMX_WORKERS"),
        "--help does not list the flags and their variables: '%s'", out);
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
      cmocka_unit_test_teardown(test_bad_flags_exit_2, teardown),
      cmocka_unit_test_teardown(test_sigterm_with_parked_pull, teardown),
      cmocka_unit_test_teardown(test_sigterm_under_load, teardown),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
