/* Unit tests of common/rpc/rpc_client.c against a real server on loopback (tests/helpers/rpc_fixture.h): unary calls, channels sharing a completion-queue thread, client streaming with back-pressure, one send at a time, cancel, deadlines. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec/checksum.h"
#include "rpc/rpc_base.h"
#include "rpc/rpc_client.h"
#include "rpc/rpc_server.h"
#include "util/iov.h"

#include "rpc_fixture.h"

/* ---- tests: unary ------------------------------------------------------------------------- */

static void echo_round_trip(size_t n) {
  uint8_t* req = pat_buf(7, (uint32_t)n, n);
  assert_non_null(req);
  uint8_t* resp = NULL;
  size_t resp_len = 0;
  char details[128] = "x";
  int st = px_rpc_unary(g_ch, M_ECHO, req, n, 10000, true, &resp, &resp_len, details,
                         sizeof details);
  assert_int_equal(st, PX_ST_OK);
  assert_non_null(resp);
  assert_int_equal(resp_len, n + 5);
  assert_memory_equal(resp, "echo:", 5);
  if (n) assert_memory_equal(resp + 5, req, n);
  free(resp);
  free(req);
}

static void test_unary_round_trip(void** state) {
  (void)state;
  long bodies0 = atomic_load(&g_msg_bodies);
  echo_round_trip(0);
  echo_round_trip(1);
  echo_round_trip(1000);
  echo_round_trip((1u << 20) + 17); /* several segments on both sides */
  echo_round_trip(PX_RPC_MAX_MESSAGE - 5); /* the reply is exactly the limit */
  pthread_mutex_lock(&g_mu);
  int calls = S.echo_calls;
  char peer[128];
  snprintf(peer, sizeof peer, "%s", S.echo_peer);
  pthread_mutex_unlock(&g_mu);
  assert_true(calls >= 5);
  assert_true(strncmp(peer, "ipv4:127.0.0.1:", 15) == 0);
  /* Each request went back as a zero-copy body freed by its release, exactly once. */
  assert_int_equal(atomic_load(&g_msg_bodies) - bodies0, 5);
  WAIT_FOR(atomic_load(&g_msg_releases) == atomic_load(&g_msg_bodies));
}

/* ---- tests: client streaming ----------------------------------------------------------------- */

static void cs_send_next(px_cli_call* call, cli_rec* r) {
  uint32_t i = r->next++;
  uint8_t* b = pat_buf(r->seed, i, r->size);
  g_rel[i].buf = b;
  atomic_fetch_add(&g_bodies_sent, 1);
  px_out out = {NULL, 0, b, r->size, rel_free, &g_rel[i]};
  LOCKED(r->inflight++; if (r->inflight > r->max_inflight) r->max_inflight = r->inflight);
  if (!px_cli_call_send(call, &out, i + 1 == r->nmsgs)) LOCKED(r->send_refused++; r->inflight--);
}

static void cs_on_sent(px_cli_call* call, void* ctx, bool ok) {
  cli_rec* r = ctx;
  bool more;
  pthread_mutex_lock(&g_mu);
  r->inflight--;
  if (ok) r->sent_ok++;
  else r->sent_fail++;
  more = ok && r->next < r->nmsgs;
  pthread_cond_broadcast(&g_cv);
  pthread_mutex_unlock(&g_mu);
  if (more) cs_send_next(call, r); /* back-pressure: the next send only after this one */
}

static void cs_on_message(px_cli_call* call, void* ctx, px_msg* msg) {
  (void)call;
  cli_rec* r = ctx;
  LOCKED(if (msg) { px_msg_free(r->reply); r->reply = msg; } else r->ended = true);
}

static const px_cli_call_cbs cs_cbs = {cs_on_message, cs_on_sent, rec_on_done};

static void test_client_streaming_backpressure(void** state) {
  (void)state;
  enum { N = 64, SIZE = 64 << 10 };
  rel_reset();
  cli_rec r;
  memset(&r, 0, sizeof r);
  r.nmsgs = N;
  r.size = SIZE;
  r.seed = 11;
  uint64_t want_hash = 0;
  for (uint32_t i = 0; i < N; i++) {
    uint8_t* b = pat_buf(r.seed, i, SIZE);
    want_hash = want_hash * 31 + px_checksum(b, SIZE);
    free(b);
  }
  pthread_mutex_lock(&g_mu);
  int done0 = S.count_done;
  pthread_mutex_unlock(&g_mu);

  px_cli_call* c = px_cli_call_start(g_ch, M_COUNT, 20000, true, &cs_cbs, &r);
  assert_non_null(c);
  assert_true(px_cli_call_read(c));
  cs_send_next(c, &r);
  px_cli_call_unref(c);
  cli_wait_done(&r);

  assert_int_equal(r.status, PX_ST_OK);
  assert_int_equal(r.send_refused, 0);
  assert_int_equal(r.sent_ok, N);
  assert_int_equal(r.sent_fail, 0);
  assert_int_equal(r.max_inflight, 1);
  assert_non_null(r.reply);
  size_t n;
  const uint8_t* p = px_msg_flat(r.reply, &n);
  assert_non_null(p);
  assert_int_equal(n, 24);
  assert_int_equal(get_u64(p), N);
  assert_int_equal(get_u64(p + 8), (uint64_t)N * SIZE);
  assert_true(get_u64(p + 16) == want_hash);
  px_msg_free(r.reply);
  WAIT_FOR(S.count_done == done0 + 1);
  WAIT_FOR(rel_all_ran(N));
  for (int i = 0; i < N; i++) assert_int_equal(rel_runs(i), 1);
}

/* A second send while one is pending is refused at once and its body released at once;
 * the pending send ends with on_sent(false) when the call is cancelled. The send is kept
 * pending deterministically: the channel points at a port nobody listens on (one a
 * server just gave back) and the call waits for the server to be ready. */
/* Channels sharing one completion-queue thread: calls on each complete, and the thread
 * lives until the last of them goes, whichever is destroyed first. */
static void shared_echo(px_rpc_channel* ch, uint32_t seed) {
  uint8_t* req = pat_buf(seed, 0, 4096);
  assert_non_null(req);
  uint8_t* resp = NULL;
  size_t len = 0;
  char details[128];
  assert_int_equal(px_rpc_unary(ch, M_ECHO, req, 4096, 10000, true, &resp, &len, details,
                                sizeof details), PX_ST_OK);
  assert_int_equal(len, 4096 + 5);
  assert_memory_equal(resp + 5, req, 4096);
  free(resp);
  free(req);
}

static void test_shared_thread(void** state) {
  (void)state;
  char err[256] = "";
  for (int order = 0; order < 2; order++) {
    px_rpc_channel* a = px_rpc_channel_create(g_target, err, sizeof err);
    assert_non_null(a);
    px_rpc_channel_opts o = {.share_thread_of = a};
    px_rpc_channel* b = px_rpc_channel_create_ex(g_target, &o, err, sizeof err);
    px_rpc_channel* c = px_rpc_channel_create_ex(g_target, &o, err, sizeof err);
    assert_true(b && c);
    shared_echo(a, 1);
    shared_echo(b, 2);
    shared_echo(c, 3);
    if (order == 0) { /* the owner first: the others' calls still complete */
      px_rpc_channel_destroy(a);
      shared_echo(b, 4);
      px_rpc_channel_destroy(b);
      shared_echo(c, 5);
      px_rpc_channel_destroy(c);
    } else {
      px_rpc_channel_destroy(c);
      px_rpc_channel_destroy(b);
      shared_echo(a, 6);
      px_rpc_channel_destroy(a);
    }
  }
}

static void test_client_send_one_outstanding(void** state) {
  (void)state;
  char err[256] = "";
  int port = 0;
  px_rpc_server_opts so = {.listen = "127.0.0.1:0", .cq_threads = 1};
  px_rpc_server* tmp = px_rpc_server_start(&so, g_methods, NMETHODS, NULL, &port, err, sizeof err);
  assert_non_null(tmp);
  px_rpc_server_shutdown(tmp, 0);
  px_rpc_server_destroy(tmp);
  char target[64];
  snprintf(target, sizeof target, "127.0.0.1:%d", port);
  px_rpc_channel* ch = px_rpc_channel_create(target, err, sizeof err);
  assert_non_null(ch);

  rel_reset();
  cli_rec r;
  memset(&r, 0, sizeof r);
  px_cli_call* c = px_cli_call_start(ch, M_COUNT, 20000, true, &cs_cbs, &r);
  assert_non_null(c);
  g_rel[0].buf = pat_buf(1, 0, 1000);
  atomic_fetch_add(&g_bodies_sent, 1);
  px_out o1 = {"h", 1, g_rel[0].buf, 1000, rel_free, &g_rel[0]};
  assert_true(px_cli_call_send(c, &o1, false));
  g_rel[1].buf = pat_buf(1, 1, 64);
  atomic_fetch_add(&g_bodies_sent, 1);
  px_out o2 = {NULL, 0, g_rel[1].buf, 64, rel_free, &g_rel[1]};
  assert_false(px_cli_call_send(c, &o2, true));
  assert_int_equal(rel_runs(1), 1); /* released before the refusal returned */
  assert_int_equal(rel_runs(0), 0); /* the pending one is still referenced */
  assert_false(px_cli_call_close_send(c));
  pthread_mutex_lock(&g_mu);
  int sent = r.sent_ok + r.sent_fail;
  bool done = r.done;
  pthread_mutex_unlock(&g_mu);
  assert_int_equal(sent, 0);
  assert_false(done);
  px_cli_call_cancel(c);
  px_cli_call_unref(c);
  cli_wait_done(&r);
  assert_int_equal(r.status, PX_ST_CANCELLED);
  assert_int_equal(r.sent_ok, 0);
  assert_int_equal(r.sent_fail, 1);
  WAIT_FOR(rel_all_ran(2));
  assert_int_equal(rel_runs(0), 1);
  assert_int_equal(rel_runs(1), 1);
  px_rpc_channel_destroy(ch);
}

/* A client cancel reaches the server: on_closed(cancelled) then on_done. */
static void test_client_cancel_reaches_server(void** state) {
  (void)state;
  rel_reset();
  cli_rec r;
  memset(&r, 0, sizeof r);
  pthread_mutex_lock(&g_mu);
  int sink0 = S.sink_calls, sdone0 = S.sink_done, scanc0 = S.sink_closed_cancelled;
  pthread_mutex_unlock(&g_mu);
  px_cli_call* c = px_cli_call_start(g_ch, M_SINK, 20000, true, &cs_cbs, &r);
  assert_non_null(c);
  g_rel[0].buf = pat_buf(2, 0, 4096);
  atomic_fetch_add(&g_bodies_sent, 1);
  px_out o = {NULL, 0, g_rel[0].buf, 4096, rel_free, &g_rel[0]};
  assert_true(px_cli_call_send(c, &o, false));
  WAIT_FOR(S.sink_calls == sink0 + 1);
  px_cli_call_cancel(c);
  WAIT_FOR(S.sink_done == sdone0 + 1);
  assert_int_equal(S.sink_closed_cancelled, scanc0 + 1);
  /* Our reference keeps the client call: on_done waits for the last one. */
  WAIT_FOR(r.sent_ok + r.sent_fail == 1);
  pthread_mutex_lock(&g_mu);
  bool early = r.done;
  pthread_mutex_unlock(&g_mu);
  assert_false(early);
  px_cli_call_unref(c);
  cli_wait_done(&r);
  assert_int_equal(r.status, PX_ST_CANCELLED);
  assert_int_equal(r.sent_ok + r.sent_fail, 1);
  WAIT_FOR(rel_all_ran(1));
  assert_int_equal(rel_runs(0), 1);
}

/* ---- tests: deadline and shutdown ------------------------------------------------------------- */

static const px_cli_call_cbs unary_rec_cbs = {NULL, NULL, rec_on_done};

static void test_deadline_exceeded(void** state) {
  (void)state;
  LOCKED(S.park_nev = 0; memset(S.park_events, 0, sizeof S.park_events);
         S.park_cancelled = false);
  cli_rec r;
  memset(&r, 0, sizeof r);
  int64_t t0 = now_ms();
  px_cli_call* c = px_cli_call_start(g_ch, M_PARK, 200, true, &unary_rec_cbs, &r);
  assert_non_null(c);
  px_out o = {"req", 3, NULL, 0, NULL, NULL};
  px_cli_call_send(c, &o, true);
  px_cli_call_read(c);
  px_cli_call_unref(c);
  cli_wait_done(&r);
  int64_t elapsed = now_ms() - t0;
  assert_int_equal(r.status, PX_ST_DEADLINE_EXCEEDED);
  assert_true(elapsed >= 190);
  assert_true(elapsed < 10000);
  /* The server saw the call end cancelled, then done. */
  WAIT_FOR(S.park_nev == 2);
  assert_string_equal(S.park_events, "CD");
  assert_true(S.park_cancelled);
  assert_int_equal(S.park_calls, 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_unary_round_trip),
      cmocka_unit_test(test_client_streaming_backpressure),
      cmocka_unit_test(test_shared_thread),
      cmocka_unit_test(test_client_send_one_outstanding),
      cmocka_unit_test(test_client_cancel_reaches_server),
      cmocka_unit_test(test_deadline_exceeded),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
