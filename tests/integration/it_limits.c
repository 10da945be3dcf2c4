/* Server limits, each hit over real gRPC: --memory-limit and --max-tensor-bytes refuse a
 * declaration with RESOURCE_EXHAUSTED naming the limit and change nothing; --max-calls
 * refuses the call past the limit (health still answers); --call-timeout ends a pull
 * parked too long with DEADLINE_EXCEEDED. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
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
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  px_rpc_shutdown();
  return rc;
}
