/* Unit tests of server/calls.c (calls.h): px_reply finishes a call OK with the packed
 * message (decoded on the client side, small and large), px_reject counts rejected_calls
 * and the client sees its exact status and message, px_refuse_stale_server lets calls
 * without the pmx-server-id header or with this server's id through and refuses another
 * id ABORTED naming both ids and the version. First on a tiny px_rpc_server of the test's
 * own whose methods call these functions, then on the Push and Pull calls of a started
 * in-process paramex-server (server_fixture.h). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "calls.h"
#include "codec/dtype.h"
#include "paramex.pb-c.h"
#include "rpc/rpc_base.h"
#include "rpc/rpc_client.h"
#include "rpc/rpc_server.h"
#include "server_fixture.h"
#include "wire/chunk_msg.h"

#define T_REPLY "/test.Calls/Reply"
#define T_REPLY_BIG "/test.Calls/ReplyBig"
#define T_REPLY_EMPTY "/test.Calls/ReplyEmpty"
#define T_REJECT "/test.Calls/Reject"
#define T_STALE "/test.Calls/Stale"
#define TIMEOUT_MS 20000
#define CHUNK_G 1024

/* ---- the test's server -------------------------------------------------------------------- */

typedef struct tsvc {
  px_counters ctr;
  px_store* store;
  const char* server_id;
  _Atomic int stale_result; /* what px_refuse_stale_server returned: 0 false, 1 true, -1 none */
  char big[2001];
} tsvc;

static void on_reply(void* s, px_srv_call* call, px_msg* req) {
  (void)s;
  px_msg_free(req);
  Paramex__V1__JoinResponse r = PARAMEX__V1__JOIN_RESPONSE__INIT;
  r.worker_id = 3;
  r.incarnation = UINT64_C(0x123456789abcdef0);
  r.world_size = 7;
  r.server_id = "reply-id";
  r.lease_ms = 2500;
  px_reply(call, &r.base);
}

static void on_reply_big(void* s, px_srv_call* call, px_msg* req) {
  tsvc* t = s;
  px_msg_free(req);
  Paramex__V1__JoinResponse r = PARAMEX__V1__JOIN_RESPONSE__INIT;
  r.worker_id = 1;
  r.server_id = t->big; /* past the 512-byte stack buffer */
  px_reply(call, &r.base);
}

static void on_reply_empty(void* s, px_srv_call* call, px_msg* req) {
  (void)s;
  px_msg_free(req);
  Paramex__V1__HeartbeatResponse r = PARAMEX__V1__HEARTBEAT_RESPONSE__INIT;
  px_reply(call, &r.base);
}

static void on_reject(void* s, px_srv_call* call, px_msg* req) {
  tsvc* t = s;
  px_msg_free(req);
  px_reject(&t->ctr, call, PX_ST_FAILED_PRECONDITION, "tensor 'x' is not ready: come back later");
}

static void on_stale(void* s, px_srv_call* call, px_msg* req) {
  tsvc* t = s;
  px_msg_free(req);
  bool refused = px_refuse_stale_server(&t->ctr, t->store, t->server_id, call);
  atomic_store(&t->stale_result, refused ? 1 : 0);
  if (!refused) {
    Paramex__V1__HeartbeatResponse r = PARAMEX__V1__HEARTBEAT_RESPONSE__INIT;
    px_reply(call, &r.base);
  }
}

static const px_rpc_method g_methods[] = {
    {T_REPLY, PX_RPC_UNARY, on_reply},
    {T_REPLY_BIG, PX_RPC_UNARY, on_reply_big},
    {T_REPLY_EMPTY, PX_RPC_UNARY, on_reply_empty},
    {T_REJECT, PX_RPC_UNARY, on_reject},
    {T_STALE, PX_RPC_UNARY, on_stale},
};

static px_sf g_f;    /* the store (not started), or the started paramex-server */
static tsvc g_t;

/* What on_stale's px_refuse_stale_server returned. A refusal answers the call inside
 * px_refuse_stale_server, so the client can see it before on_stale stores the result:
 * wait for the store (bounded). */
static int stale_result(void) {
  for (int i = 0; i < TIMEOUT_MS; i++) {
    int v = atomic_load(&g_t.stale_result);
    if (v != -1) return v;
    nanosleep(&(struct timespec){0, 1000000}, NULL);
  }
  return -1;
}
static px_rpc_server* g_rpc;
static px_rpc_channel* g_ch;  /* to g_rpc, or a second channel to the fixture */
static char g_addr[64];

static int teardown(void** state) {
  (void)state;
  px_rpc_channel_destroy(g_ch);
  g_ch = NULL;
  if (g_rpc) {
    px_rpc_server_shutdown(g_rpc, 1000);
    px_rpc_server_destroy(g_rpc);
  }
  g_rpc = NULL;
  px_sf_stop(&g_f);
  return 0;
}

/* A store (of a service without its gRPC server) behind the test's own server, and a
 * channel to it. */
static void start_own(const char* server_id) {
  static const char* const args[] = {"--workers", "2", "--chunk-bytes", "4K", NULL};
  px_sf_init(&g_f, args);
  memset(&g_t, 0, sizeof g_t);
  g_t.store = &g_f.srv->store;
  g_t.server_id = server_id;
  atomic_store(&g_t.stale_result, -1);
  memset(g_t.big, 'b', sizeof g_t.big - 1);
  px_rpc_server_opts o;
  memset(&o, 0, sizeof o);
  o.listen = "127.0.0.1:0";
  o.cq_threads = 1;
  int port = 0;
  char err[512] = "";
  g_rpc = px_rpc_server_start(&o, g_methods, sizeof g_methods / sizeof g_methods[0], &g_t, &port,
                              err, sizeof err);
  if (!g_rpc) fail_msg("rpc server: %s", err);
  snprintf(g_addr, sizeof g_addr, "127.0.0.1:%d", port);
  g_ch = px_rpc_channel_create(g_addr, err, sizeof err);
  if (!g_ch) fail_msg("channel: %s", err);
}

typedef struct unary_res {
  int status;
  char details[512];
  uint8_t* resp;
  size_t len;
} unary_res;

static unary_res call(px_rpc_channel* ch, const char* path) {
  unary_res r;
  memset(&r, 0, sizeof r);
  r.status = px_rpc_unary(ch, path, "", 0, TIMEOUT_MS, true, &r.resp, &r.len, r.details,
                          sizeof r.details);
  return r;
}

static uint64_t rejected(void) { return atomic_load(&g_t.ctr.rejected_calls); }

/* ---- px_reply / px_reject --------------------------------------------------------------- */

static void test_reply(void** state) {
  (void)state;
  start_own("id");
  unary_res r = call(g_ch, T_REPLY);
  assert_int_equal(r.status, PX_ST_OK);
  assert_string_equal(r.details, "");
  Paramex__V1__JoinResponse* m = paramex__v1__join_response__unpack(NULL, r.len, r.resp);
  assert_non_null(m);
  assert_int_equal(m->worker_id, 3);
  assert_true(m->incarnation == UINT64_C(0x123456789abcdef0));
  assert_int_equal(m->world_size, 7);
  assert_string_equal(m->server_id, "reply-id");
  assert_int_equal(m->lease_ms, 2500);
  /* exactly the packed message */
  Paramex__V1__JoinResponse want = PARAMEX__V1__JOIN_RESPONSE__INIT;
  want.worker_id = 3;
  want.incarnation = UINT64_C(0x123456789abcdef0);
  want.world_size = 7;
  want.server_id = "reply-id";
  want.lease_ms = 2500;
  uint8_t buf[128];
  size_t n = paramex__v1__join_response__pack(&want, buf);
  assert_int_equal(r.len, n);
  assert_memory_equal(r.resp, buf, n);
  paramex__v1__join_response__free_unpacked(m, NULL);
  free(r.resp);

  /* a message larger than the stack buffer */
  r = call(g_ch, T_REPLY_BIG);
  assert_int_equal(r.status, PX_ST_OK);
  m = paramex__v1__join_response__unpack(NULL, r.len, r.resp);
  assert_non_null(m);
  assert_int_equal(m->worker_id, 1);
  assert_int_equal(strlen(m->server_id), 2000);
  assert_string_equal(m->server_id, g_t.big);
  paramex__v1__join_response__free_unpacked(m, NULL);
  free(r.resp);

  /* an empty message */
  r = call(g_ch, T_REPLY_EMPTY);
  assert_int_equal(r.status, PX_ST_OK);
  assert_int_equal(r.len, 0);
  free(r.resp);
  assert_int_equal(rejected(), 0);
}

static void test_reject(void** state) {
  (void)state;
  start_own("id");
  for (uint64_t i = 1; i <= 3; i++) {
    unary_res r = call(g_ch, T_REJECT);
    assert_int_equal(r.status, PX_ST_FAILED_PRECONDITION);
    assert_string_equal(r.details, "tensor 'x' is not ready: come back later");
    assert_null(r.resp);
    assert_int_equal(rejected(), i);
  }
}

/* ---- px_refuse_stale_server --------------------------------------------------------------- */

static void test_stale_server(void** state) {
  (void)state;
  start_own("5f3e2a1b0c-4242");
  /* tensors restored at version 7 */
  const uint64_t shape[1] = {1500};
  float* vals = calloc(1500, sizeof *vals);
  assert_non_null(vals);
  char err[256] = "";
  assert_int_equal(px_store_restore(g_t.store, "r", PX_DT_F32, shape, 1, vals, 1500 * 4, NULL, 7,
                                    err, sizeof err), 0);
  free(vals);

  /* no header: let through */
  unary_res r = call(g_ch, T_STALE);
  assert_int_equal(r.status, PX_ST_OK);
  assert_int_equal(stale_result(), 0);
  assert_int_equal(rejected(), 0);
  free(r.resp);

  /* this server's id: let through */
  px_rpc_channel_set_header(g_ch, "pmx-server-id", "5f3e2a1b0c-4242");
  atomic_store(&g_t.stale_result, -1);
  r = call(g_ch, T_STALE);
  assert_int_equal(r.status, PX_ST_OK);
  assert_int_equal(stale_result(), 0);
  assert_int_equal(rejected(), 0);
  free(r.resp);

  /* another id: ABORTED, naming both and the version */
  px_rpc_channel_set_header(g_ch, "pmx-server-id", "4e00aa-17");
  atomic_store(&g_t.stale_result, -1);
  r = call(g_ch, T_STALE);
  assert_int_equal(r.status, PX_ST_ABORTED);
  assert_string_equal(r.details, "server restarted (was 4e00aa-17, now 5f3e2a1b0c-4242) with its "
                                 "tensors at version 7: join again and resume from there");
  assert_int_equal(stale_result(), 1);
  assert_int_equal(rejected(), 1);
  free(r.resp);

  /* a prefix of the id is another id */
  px_rpc_channel_set_header(g_ch, "pmx-server-id", "5f3e2a1b0c-424");
  r = call(g_ch, T_STALE);
  assert_int_equal(r.status, PX_ST_ABORTED);
  assert_int_equal(rejected(), 2);
  free(r.resp);

  /* a long old id is cut at 40 characters in the message */
  const char* longid = "0123456789abcdef0123456789abcdef0123456789abcdef-99";
  px_rpc_channel_set_header(g_ch, "pmx-server-id", longid);
  r = call(g_ch, T_STALE);
  assert_int_equal(r.status, PX_ST_ABORTED);
  assert_string_equal(r.details, "server restarted (was 0123456789abcdef0123456789abcdef01234567, "
                                 "now 5f3e2a1b0c-4242) with its tensors at version 7: join again "
                                 "and resume from there");
  free(r.resp);

  /* the header cleared: let through again */
  px_rpc_channel_set_header(g_ch, "pmx-server-id", NULL);
  r = call(g_ch, T_STALE);
  assert_int_equal(r.status, PX_ST_OK);
  assert_int_equal(stale_result(), 0);
  assert_int_equal(rejected(), 3);
  free(r.resp);
}

/* The version named is the lowest of every chunk's. */
static void test_stale_server_lowest_version(void** state) {
  (void)state;
  start_own("now-1");
  const uint64_t shape[1] = {10};
  float vals[10] = {0};
  char err[256] = "";
  assert_int_equal(px_store_restore(g_t.store, "a", PX_DT_F32, shape, 1, vals, 40, NULL, 12, err,
                                    sizeof err), 0);
  assert_int_equal(px_store_restore(g_t.store, "b", PX_DT_F32, shape, 1, vals, 40, NULL, 9, err,
                                    sizeof err), 0);
  px_rpc_channel_set_header(g_ch, "pmx-server-id", "then-1");
  unary_res r = call(g_ch, T_STALE);
  assert_int_equal(r.status, PX_ST_ABORTED);
  assert_string_equal(r.details, "server restarted (was then-1, now now-1) with its tensors at "
                                 "version 9: join again and resume from there");
  free(r.resp);
}

/* ---- on a paramex-server's Push and Pull ---------------------------------------------------- */

static void stale_msg(char* out, size_t cap, const char* old, uint64_t version) {
  snprintf(out, cap, "server restarted (was %s, now %s) with its tensors at version %" PRIu64
           ": join again and resume from there", old, g_f.srv->server_id, version);
}

static void test_stale_push_and_pull(void** state) {
  (void)state;
  static const char* const args[] = {"--workers", "1", "--chunk-bytes", "4K", NULL};
  px_sf_start(&g_f, args);
  const uint64_t inc = px_sf_join(&g_f, 0, 1);
  const uint32_t id = px_sf_declare_f32(&g_f, "w", 1500, 3);
  char err[512] = "";
  g_ch = px_rpc_channel_create(g_f.addr, err, sizeof err);
  assert_non_null(g_ch);
  px_counters* ctr = &g_f.srv->ctr;

  float g[CHUNK_G];
  for (size_t i = 0; i < CHUNK_G; i++) g[i] = (float)i * 1e-3f;
  uint8_t head[PX_CHUNK_HDR_MAX];
  px_h_msg push = px_sf_push_chunk(head, 0, inc, 0, id, 1, g, 1500 - 1024);
  size_t plen = 0;
  uint8_t* pull = px_sf_pull_request(0, &id, 1, 0, &plen);
  px_h_msg pullm = {pull, plen, NULL, 0};

  /* another server's id: both refused before anything is read */
  px_rpc_channel_set_header(g_ch, "pmx-server-id", "1234abcd-1");
  char want[512];
  stale_msg(want, sizeof want, "1234abcd-1", 0);
  const uint64_t rej0 = atomic_load(&ctr->rejected_calls);
  px_h_result res;
  px_h_call(g_ch, PX_H_PATH_PUSH, &push, 1, TIMEOUT_MS, &res);
  assert_int_equal(res.status, PX_ST_ABORTED);
  assert_string_equal(res.details, want);
  px_h_result_free(&res);
  assert_int_equal(atomic_load(&ctr->rejected_calls), rej0 + 1);
  assert_int_equal(atomic_load(&ctr->push_chunks), 0);
  assert_int_equal(g_f.srv->store.tensors[0]->chunks[1].ncontrib, 0);
  px_h_call(g_ch, PX_H_PATH_PULL, &pullm, 1, TIMEOUT_MS, &res);
  assert_int_equal(res.status, PX_ST_ABORTED);
  assert_string_equal(res.details, want);
  assert_int_equal(res.nresp, 0);
  px_h_result_free(&res);
  assert_int_equal(atomic_load(&ctr->rejected_calls), rej0 + 2);
  assert_int_equal(atomic_load(&ctr->pull_chunks), 0);

  /* this server's id: served */
  px_rpc_channel_set_header(g_ch, "pmx-server-id", g_f.srv->server_id);
  px_h_call(g_ch, PX_H_PATH_PUSH, &push, 1, TIMEOUT_MS, &res);
  assert_int_equal(res.status, PX_ST_OK);
  assert_int_equal(res.nresp, 1);
  Paramex__V1__PushResponse* pr = paramex__v1__push_response__unpack(NULL, res.resp_len[0], res.resp[0]);
  assert_non_null(pr);
  assert_int_equal(pr->accepted, 1);
  paramex__v1__push_response__free_unpacked(pr, NULL);
  px_h_result_free(&res);
  assert_int_equal(g_f.srv->store.tensors[0]->chunks[1].version, 1); /* one worker: a step */
  px_h_call(g_ch, PX_H_PATH_PULL, &pullm, 1, TIMEOUT_MS, &res);
  assert_int_equal(res.status, PX_ST_OK);
  assert_int_equal(res.nresp, 2);
  px_h_result_free(&res);
  assert_int_equal(atomic_load(&ctr->rejected_calls), rej0 + 2);

  /* the message names the version the server is at now (the lowest chunk's: 0) */
  px_rpc_channel_set_header(g_ch, "pmx-server-id", "old-2");
  px_h_call(g_ch, PX_H_PATH_PULL, &pullm, 1, TIMEOUT_MS, &res);
  assert_int_equal(res.status, PX_ST_ABORTED);
  stale_msg(want, sizeof want, "old-2", 0);
  assert_string_equal(res.details, want);
  px_h_result_free(&res);
  push = px_sf_push_chunk(head, 0, inc, 0, id, 0, g, 1024);
  px_rpc_channel_set_header(g_ch, "pmx-server-id", NULL); /* no header: served */
  px_h_call(g_ch, PX_H_PATH_PUSH, &push, 1, TIMEOUT_MS, &res);
  assert_int_equal(res.status, PX_ST_OK);
  px_h_result_free(&res);
  px_rpc_channel_set_header(g_ch, "pmx-server-id", "old-3");
  px_h_call(g_ch, PX_H_PATH_PUSH, &push, 1, TIMEOUT_MS, &res);
  assert_int_equal(res.status, PX_ST_ABORTED);
  stale_msg(want, sizeof want, "old-3", 1);
  assert_string_equal(res.details, want);
  px_h_result_free(&res);
  free(pull);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_reply, teardown),
      cmocka_unit_test_teardown(test_reject, teardown),
      cmocka_unit_test_teardown(test_stale_server, teardown),
      cmocka_unit_test_teardown(test_stale_server_lowest_version, teardown),
      cmocka_unit_test_teardown(test_stale_push_and_pull, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
