/* Server limits, each hit over real gRPC: --memory-limit and --max-tensor-bytes refuse a
 * declaration with RESOURCE_EXHAUSTED naming the limit and change nothing; --max-calls
 * refuses the call past the limit (health still answers); --call-timeout ends a pull
 * parked too long with DEADLINE_EXCEEDED. And the open-file limit: with the server's
 * descriptors used up by idle connections, a new client's connection is closed at once
 * (UNAVAILABLE, not a hang), counted in refused_connections and logged, the connected
 * client goes on working, and once the idle connections are gone new clients are served
 * again (gRPC's listener used to stop accepting for good after one EMFILE). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "check.h"
#include "harness.h"
#include "health.pb-c.h"

static uint64_t g_inc; /* of the last join: declarations carry it */

static px_rpc_channel* join_and_channel(px_h_server* srv) {
  char err[512];
  px_rpc_channel* ch = px_rpc_channel_create(srv->addr, err, sizeof err);
  CHECK(ch, "channel: %s", err);
  Paramex__V1__JoinRequest jr = PARAMEX__V1__JOIN_REQUEST__INIT;
  jr.world_size = 1;
  ProtobufCMessage* resp = NULL;
  int st = px_h_unary_pb(ch, PX_H_PATH_JOIN, &jr.base, &paramex__v1__join_response__descriptor,
                          &resp, 10000, err, sizeof err);
  CHECK(st == PX_ST_OK, "join: %s %s", px_status_name(st), err);
  g_inc = ((Paramex__V1__JoinResponse*)resp)->incarnation;
  protobuf_c_message_free_unpacked(resp, NULL);
  return ch;
}

static int declare(px_rpc_channel* ch, const char* name, uint64_t numel, uint32_t* id, char* err,
                   size_t cap) {
  Paramex__V1__DeclareRequest dr = PARAMEX__V1__DECLARE_REQUEST__INIT;
  uint64_t shape[1] = {numel};
  dr.name = (char*)name;
  dr.dtype = PARAMEX__V1__DTYPE__DTYPE_F32;
  dr.n_shape = 1;
  dr.shape = shape;
  dr.incarnation = g_inc;
  ProtobufCMessage* resp = NULL;
  int st = px_h_unary_pb(ch, PX_H_PATH_DECLARE, &dr.base, &paramex__v1__declare_response__descriptor,
                          &resp, 10000, err, cap);
  if (st == PX_ST_OK && id) *id = ((Paramex__V1__DeclareResponse*)resp)->tensor_id;
  if (resp) protobuf_c_message_free_unpacked(resp, NULL);
  return st;
}

static void stop(px_h_server* srv, px_rpc_channel* ch) {
  px_rpc_channel_destroy(ch);
  int ws = 0;
  CHECK(px_h_server_stop(srv, 15000, &ws, NULL) == 0, "server did not stop");
  CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "server exit status");
}

static void test_memory_and_tensor_limits(void** state) {
  (void)state;
  char err[512];
  const char* args[] = {"--workers", "1", "--memory-limit", "1M", "--max-tensor-bytes", "512K", NULL};
  px_h_server srv;
  CHECK(px_h_server_start(&srv, args, NULL, 10000, err, sizeof err) == 0, "server: %s", err);
  px_rpc_channel* ch = join_and_channel(&srv);
  CHECK(declare(ch, "a", 100000, NULL, err, sizeof err) == PX_ST_OK, "a: %s", err); /* 400 KB */
  int st = declare(ch, "big", 200000, NULL, err, sizeof err); /* 800 KB > 512K */
  CHECK(st == PX_ST_RESOURCE_EXHAUSTED && strstr(err, "--max-tensor-bytes"),
        "big: %s '%s'", px_status_name(st), err);
  CHECK(declare(ch, "b", 100000, NULL, err, sizeof err) == PX_ST_OK, "b: %s", err); /* 800 KB */
  st = declare(ch, "c", 100000, NULL, err, sizeof err); /* 1.2 MB > 1M */
  CHECK(st == PX_ST_RESOURCE_EXHAUSTED && strstr(err, "--memory-limit"), "c: %s '%s'",
        px_status_name(st), err);
  Paramex__V1__StatsResponse* s = px_h_stats(ch, err, sizeof err);
  CHECK(s && s->n_tensors == 2, "the refused declarations changed the store");
  protobuf_c_message_free_unpacked(&s->base, NULL);
  stop(&srv, ch);
}

static void test_max_calls_and_call_timeout(void** state) {
  (void)state;
  char err[512];
  const char* args[] = {"--workers", "1", "--max-calls", "2", "--call-timeout", "1", NULL};
  px_h_server srv;
  CHECK(px_h_server_start(&srv, args, NULL, 10000, err, sizeof err) == 0, "server: %s", err);
  px_rpc_channel* ch = join_and_channel(&srv);
  uint32_t id = 0;
  CHECK(declare(ch, "p", 10, &id, err, sizeof err) == PX_ST_OK, "declare: %s", err);

  /* two pulls for a version nobody produces: parked, they hold both call slots */
  Paramex__V1__PullRequest pr = PARAMEX__V1__PULL_REQUEST__INIT;
  uint32_t ids[1] = {id};
  pr.n_tensor_ids = 1;
  pr.tensor_ids = ids;
  pr.min_version = 7;
  static uint8_t buf[64];
  size_t len = paramex__v1__pull_request__pack(&pr, buf);
  static px_h_msg m;
  m = (px_h_msg){buf, len, NULL, 0};
  /* three pulls for a version nobody produces: two park and hold both call slots, the
   * one that arrives third is refused at once; the parked ones end at --call-timeout */
  int64_t t0 = px_h_now_ms();
  px_h_async* a[3];
  for (int i = 0; i < 3; i++) {
    a[i] = px_h_async_start(ch, PX_H_PATH_PULL, &m, 1, 20000);
    CHECK(a[i], "cannot start pull %d", i);
  }
  int refused = 0, expired = 0;
  for (int i = 0; i < 3; i++) {
    px_h_result r;
    px_h_async_join(a[i], &r);
    if (r.status == PX_ST_RESOURCE_EXHAUSTED && strstr(r.details, "--max-calls")) refused++;
    else if (r.status == PX_ST_DEADLINE_EXCEEDED && strstr(r.details, "--call-timeout")) expired++;
    else CHECK(0, "pull %d ended %s '%s'", i, px_status_name(r.status), r.details);
    px_h_result_free(&r);
  }
  int64_t took = px_h_now_ms() - t0;
  CHECK(refused == 1 && expired == 2, "%d refused, %d expired", refused, expired);
  CHECK(took < 10000, "the parked pulls ended after %lld ms", (long long)took);
  /* health is exempt from --max-calls */
  Grpc__Health__V1__HealthCheckRequest hr = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  ProtobufCMessage* hresp = NULL;
  int st = px_h_unary_pb(ch, PX_H_PATH_HEALTH, &hr.base,
                          &grpc__health__v1__health_check_response__descriptor, &hresp, 5000, err,
                          sizeof err);
  CHECK(st == PX_ST_OK, "health: %s %s", px_status_name(st), err);
  if (hresp) protobuf_c_message_free_unpacked(hresp, NULL);
  /* the slots are free again */
  Paramex__V1__StatsResponse* s = px_h_stats(ch, err, sizeof err);
  CHECK(s, "stats after the pulls: %s", err);
  protobuf_c_message_free_unpacked(&s->base, NULL);
  stop(&srv, ch);
}

/* Stats on a channel of its own (a new connection), not waiting for a connection: its
 * status, *refused its count. */
static int stats_new_channel(const char* addr, uint64_t* refused, char* err, size_t cap) {
  px_rpc_channel* ch = px_rpc_channel_create(addr, err, cap);
  CHECK(ch, "channel: %s", err);
  static const px_h_msg empty = {"", 0, NULL, 0}; /* an empty StatsRequest */
  px_h_result r;
  int st = px_h_call_ex(ch, PX_H_PATH_STATS, &empty, 1, 20000, false, &r);
  snprintf(err, cap, "%s", r.details);
  if (st == PX_ST_OK && refused) {
    CHECK(r.nresp == 1, "%zu Stats responses", r.nresp);
    Paramex__V1__StatsResponse* s =
        paramex__v1__stats_response__unpack(NULL, r.resp_len[0], r.resp[0]);
    CHECK(s, "StatsResponse does not unpack");
    *refused = s->refused_connections;
    protobuf_c_message_free_unpacked(&s->base, NULL);
  }
  px_h_result_free(&r);
  px_rpc_channel_destroy(ch);
  return st;
}

static uint64_t refused_now(px_rpc_channel* ch) {
  char err[256];
  Paramex__V1__StatsResponse* s = px_h_stats(ch, err, sizeof err);
  CHECK(s, "stats on the connected channel: %s", err);
  uint64_t n = s->refused_connections;
  protobuf_c_message_free_unpacked(&s->base, NULL);
  return n;
}

#define IDLE 120 /* idle connections: more than the server's 64 descriptors */

static void test_open_file_limit(void** state) {
  (void)state;
  char err[512], dir[256], logpath[300];
  CHECK(px_h_mkdtemp(dir, sizeof dir) == 0, "mkdtemp");
  snprintf(logpath, sizeof logpath, "%s/server.log", dir);
  int logfd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  CHECK(logfd >= 0, "open %s", logpath);
  const char* args[] = {"--workers", "1", NULL};
  px_h_server srv;
  CHECK(px_h_server_start_ex(&srv, NULL, args, NULL, logfd, 20000, err, sizeof err) == 0,
        "server: %s", err);
  close(logfd);
  px_rpc_channel* ch = join_and_channel(&srv); /* connected before the limit */
  /* 64 descriptors in all for the running server (it set its own limit at start, so the
   * accept path meets EMFILE itself, the case that killed gRPC's listener) */
  struct rlimit lim = {64, 64};
  CHECK(prlimit(srv.pid, RLIMIT_NOFILE, &lim, NULL) == 0, "prlimit: %s", strerror(errno));

  int idle[IDLE];
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)srv.port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  for (int i = 0; i < IDLE; i++) {
    idle[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(idle[i] >= 0 && connect(idle[i], (struct sockaddr*)&a, sizeof a) == 0,
          "idle connection %d: %s", i, strerror(errno));
  }
  /* the server takes what fits and closes the rest: wait until it has refused some */
  for (int64_t until = px_h_now_ms() + 30000; refused_now(ch) == 0;) {
    CHECK(px_h_now_ms() < until, "no connection refused within 30 s");
    poll(NULL, 0, 20);
  }
  /* a new client now: its connection is closed, an error at once rather than a hang */
  uint64_t before = refused_now(ch);
  int64_t t0 = px_h_now_ms();
  int st = stats_new_channel(srv.addr, NULL, err, sizeof err);
  CHECK(st == PX_ST_UNAVAILABLE, "a new client at the limit got %s '%s'", px_status_name(st),
        err);
  CHECK(px_h_now_ms() - t0 < 15000, "the refusal took %lld ms", (long long)(px_h_now_ms() - t0));
  CHECK(refused_now(ch) > before, "the new client's connection was not counted");
  CHECK(refused_now(ch) > 0, "the connected client stopped working");

  for (int i = 0; i < IDLE; i++) close(idle[i]);
  /* the server closes its idle ends as it reads their EOF; new clients are served again */
  uint64_t refused = 0;
  for (int64_t until = px_h_now_ms() + 30000;;) {
    st = stats_new_channel(srv.addr, &refused, err, sizeof err);
    if (st == PX_ST_OK) break;
    CHECK(st == PX_ST_UNAVAILABLE && px_h_now_ms() < until,
          "no new client served within 30 s of closing the idle connections: %s '%s'",
          px_status_name(st), err);
    poll(NULL, 0, 50);
  }
  CHECK(refused > before, "refused_connections %llu", (unsigned long long)refused);
  stop(&srv, ch);
  size_t n = 0;
  char* log = px_h_read_file(logpath, &n);
  CHECK(log && strstr(log, "refused ") && strstr(log, "raise it with ulimit -n") &&
            !strstr(log, "Failed accept4"),
        "server log: %s", log ? log : "(none)");
  free(log);
  px_h_rmtree(dir);
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
      cmocka_unit_test_teardown(test_memory_and_tensor_limits, teardown),
      cmocka_unit_test_teardown(test_max_calls_and_call_timeout, teardown),
      cmocka_unit_test_teardown(test_open_file_limit, teardown),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  px_rpc_shutdown();
  return rc;
}
