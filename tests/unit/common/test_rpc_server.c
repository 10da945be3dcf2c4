/* Unit tests of common/rpc/rpc_server.c with a real client channel on loopback (tests/helpers/rpc_fixture.h): unknown methods, oversize messages, server streaming, error statuses, shutdown with a parked call and when idle, a port that cannot be bound. */
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

static void test_unary_error_status_and_details(void** state) {
  (void)state;
  uint8_t* resp = NULL;
  size_t resp_len = 12345;
  char details[128] = "";
  int st = px_rpc_unary(g_ch, M_FAIL, "x", 1, 10000, true, &resp, &resp_len, details,
                         sizeof details);
  assert_int_equal(st, PX_ST_INVALID_ARGUMENT);
  assert_string_equal(details, "bad thing");
  assert_null(resp);
  assert_int_equal(resp_len, 12345);
  /* details is truncated to its capacity, always terminated */
  char small[4] = "zzz";
  st = px_rpc_unary(g_ch, M_FAIL, "x", 1, 10000, true, NULL, NULL, small, sizeof small);
  assert_int_equal(st, PX_ST_INVALID_ARGUMENT);
  assert_string_equal(small, "bad");
}

static void test_unknown_method_unimplemented(void** state) {
  (void)state;
  uint8_t* resp = NULL;
  size_t resp_len = 0;
  char details[128] = "";
  int st = px_rpc_unary(g_ch, "/pmxtest.T/NoSuchMethod", "abc", 3, 10000, true, &resp,
                         &resp_len, details, sizeof details);
  assert_int_equal(st, PX_ST_UNIMPLEMENTED);
  assert_null(resp);
  /* Many more: the generic request slot is re-armed each time, and a status that comes
   * back before the request is even sent (the server answers the headers) is handled. */
  int wrong = 0;
  for (int i = 0; i < 1000; i++) {
    st = px_rpc_unary(g_ch, (i & 1) ? "/other.Service/X" : "/pmxtest.T/NoSuchMethod", "abc", 3, 10000,
                       true, &resp, &resp_len, details, sizeof details);
    if (st != PX_ST_UNIMPLEMENTED) wrong++;
  }
  assert_int_equal(wrong, 0);
  assert_null(resp);
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

/* A message over the 4 MiB receive limit fails the call with RESOURCE_EXHAUSTED. */
static void test_oversized_message_resource_exhausted(void** state) {
  (void)state;
  size_t n = PX_RPC_MAX_MESSAGE + 1;
  uint8_t* req = calloc(1, n);
  assert_non_null(req);
  uint8_t* resp = NULL;
  size_t resp_len = 0;
  char details[128] = "";
  int st = px_rpc_unary(g_ch, M_ECHO, req, n, 10000, true, &resp, &resp_len, details,
                         sizeof details);
  free(req);
  assert_int_equal(st, PX_ST_RESOURCE_EXHAUSTED);
  assert_null(resp);

  /* The same on a client stream. */
  rel_reset();
  cli_rec r;
  memset(&r, 0, sizeof r);
  px_cli_call* c = px_cli_call_start(g_ch, M_COUNT, 10000, true, &cs_cbs, &r);
  assert_non_null(c);
  px_cli_call_read(c);
  const size_t big = (5u << 20) + 1;
  g_rel[0].buf = calloc(1, big);
  assert_non_null(g_rel[0].buf);
  atomic_fetch_add(&g_bodies_sent, 1);
  px_out o = {NULL, 0, g_rel[0].buf, big, rel_free, &g_rel[0]};
  px_cli_call_send(c, &o, true);
  px_cli_call_unref(c);
  cli_wait_done(&r);
  assert_int_equal(r.status, PX_ST_RESOURCE_EXHAUSTED);
  assert_null(r.reply);
  WAIT_FOR(rel_all_ran(1));
  assert_int_equal(rel_runs(0), 1);
}

/* ---- tests: server streaming ------------------------------------------------------------------ */

static void ss_on_message(px_cli_call* call, void* ctx, px_msg* msg) {
  cli_rec* r = ctx;
  if (!msg) {
    LOCKED(r->ended = true);
    return;
  }
  if (r->keep) {
    pthread_mutex_lock(&g_mu);
    if (r->nkept < 8) r->kept[r->nkept++] = msg;
    else px_msg_free(msg);
    pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mu);
    px_cli_call_read(call);
    return;
  }
  /* Reassemble from the segments and compare with what the server generated. */
  size_t nseg = 0;
  const px_iov* seg = px_msg_segments(msg, &nseg);
  size_t total = 0;
  bool bad = seg == NULL || px_msg_len(msg) != r->size;
  for (size_t i = 0; !bad && i < nseg; i++) {
    if (total + seg[i].n > r->size) {
      bad = true;
      break;
    }
    memcpy(r->scratch + total, seg[i].p, seg[i].n);
    total += seg[i].n;
  }
  if (!bad && total != r->size) bad = true;
  uint32_t idx;
  pthread_mutex_lock(&g_mu);
  idx = r->got;
  pthread_mutex_unlock(&g_mu);
  for (size_t j = 0; !bad && j < total; j++)
    if (r->scratch[j] != pat(r->seed, idx, j)) bad = true;
  px_msg_free(msg);
  LOCKED(r->got++; if (bad) r->bad++; if (nseg > r->max_nseg) r->max_nseg = (uint32_t)nseg);
  px_cli_call_read(call);
}

static const px_cli_call_cbs ss_cbs = {ss_on_message, NULL, rec_on_done};

static void start_stream(cli_rec* r, uint32_t k, uint32_t size, uint32_t seed) {
  uint8_t req[12];
  put_u32(req, k);
  put_u32(req + 4, size);
  put_u32(req + 8, seed);
  r->size = size;
  r->seed = seed;
  px_cli_call* c = px_cli_call_start(g_ch, M_STREAM, 20000, true, &ss_cbs, r);
  assert_non_null(c);
  px_out o = {req, sizeof req, NULL, 0, NULL, NULL};
  assert_true(px_cli_call_send(c, &o, true));
  assert_true(px_cli_call_read(c));
  px_cli_call_unref(c);
}

static void test_server_streaming_segments(void** state) {
  (void)state;
  enum { K = 32, SIZE = 1 << 20 };
  rel_reset();
  pthread_mutex_lock(&g_mu);
  int done0 = S.stream_done, fail0 = S.stream_send_fail;
  pthread_mutex_unlock(&g_mu);
  cli_rec r;
  memset(&r, 0, sizeof r);
  r.scratch = malloc(SIZE);
  assert_non_null(r.scratch);
  start_stream(&r, K, SIZE, 99);
  cli_wait_done(&r);
  assert_int_equal(r.status, PX_ST_OK);
  assert_true(r.ended);
  assert_int_equal(r.got, K);
  assert_int_equal(r.bad, 0);
  assert_true(r.max_nseg > 1); /* 1 MiB arrives as several slices */
  free(r.scratch);
  WAIT_FOR(S.stream_done == done0 + 1);
  assert_int_equal(S.stream_send_fail, fail0);
  WAIT_FOR(rel_all_ran(K));
  for (int i = 0; i < K; i++) assert_int_equal(rel_runs(i), 1);
  for (int i = K; i < MAX_REL; i++) assert_int_equal(rel_runs(i), 0);
}

/* ---- tests: deadline and shutdown ------------------------------------------------------------- */

static const px_cli_call_cbs unary_rec_cbs = {NULL, NULL, rec_on_done};

static void test_server_shutdown_with_parked_call(void** state) {
  (void)state;
  char err[256] = "";
  int port = 0;
  px_rpc_server_opts so = {.listen = "127.0.0.1:0", .cq_threads = 1};
  px_rpc_server* srv = px_rpc_server_start(&so, g_methods, NMETHODS, NULL, &port, err, sizeof err);
  assert_non_null(srv);
  assert_true(port > 0);
  char target[64];
  snprintf(target, sizeof target, "127.0.0.1:%d", port);
  px_rpc_channel* ch = px_rpc_channel_create(target, err, sizeof err);
  assert_non_null(ch);
  LOCKED(S.hold_nev = 0; memset(S.hold_events, 0, sizeof S.hold_events);
         S.hold_cancelled = false; S.hold_calls = 0);

  cli_rec r;
  memset(&r, 0, sizeof r);
  px_cli_call* c = px_cli_call_start(ch, M_HOLD, 20000, true, &unary_rec_cbs, &r);
  assert_non_null(c);
  px_out o = {"req", 3, NULL, 0, NULL, NULL};
  px_cli_call_send(c, &o, true);
  px_cli_call_read(c);
  px_cli_call_unref(c);
  WAIT_FOR(S.hold_calls == 1 && S.hold_parked != NULL);
  assert_int_equal(px_rpc_server_live_calls(srv), 1);

  const int64_t drain = 300;
  int64_t t0 = now_ms();
  px_rpc_server_shutdown(srv, drain);
  int64_t elapsed = now_ms() - t0;
  assert_true(elapsed >= drain - 10); /* the live call got the drain time */
  assert_true(elapsed < drain + 5000); /* then it was cancelled */
  assert_int_equal(px_rpc_server_live_calls(srv), 0);
  pthread_mutex_lock(&g_mu);
  bool events_ok = strcmp(S.hold_events, "CD") == 0 && S.hold_cancelled && !S.hold_parked;
  pthread_mutex_unlock(&g_mu);
  assert_true(events_ok);

  cli_wait_done(&r);
  assert_int_not_equal(r.status, PX_ST_OK);
  px_rpc_channel_destroy(ch);
  px_rpc_server_destroy(srv);
}

static void test_server_shutdown_idle_is_prompt(void** state) {
  (void)state;
  char err[256] = "";
  int port = 0;
  px_rpc_server_opts so = {.listen = "127.0.0.1:0", .cq_threads = 2};
  px_rpc_server* srv = px_rpc_server_start(&so, g_methods, NMETHODS, NULL, &port, err, sizeof err);
  assert_non_null(srv);
  char target[64];
  snprintf(target, sizeof target, "127.0.0.1:%d", port);
  px_rpc_channel* ch = px_rpc_channel_create(target, err, sizeof err);
  assert_non_null(ch);
  uint8_t* resp = NULL;
  size_t len = 0;
  assert_int_equal(px_rpc_unary(ch, M_ECHO, "hi", 2, 10000, true, &resp, &len, NULL, 0),
                   PX_ST_OK);
  assert_int_equal(len, 7);
  assert_memory_equal(resp, "echo:hi", 7);
  free(resp);
  int64_t t0 = now_ms();
  px_rpc_server_shutdown(srv, 20000);
  assert_true(now_ms() - t0 < 10000); /* no live call: does not wait the drain time */
  assert_int_equal(px_rpc_server_live_calls(srv), 0);
  px_rpc_channel_destroy(ch);
  px_rpc_server_destroy(srv);
  px_rpc_server_destroy(NULL);
  px_rpc_channel_destroy(NULL);
}

static void test_listen_failure(void** state) {
  (void)state;
  char err[256] = "";
  int port = -7;
  px_rpc_server_opts so = {.listen = "256.1.2.3:bad", .cq_threads = 1};
  px_rpc_server* srv = px_rpc_server_start(&so, g_methods, NMETHODS, NULL, &port, err, sizeof err);
  assert_null(srv);
  assert_int_equal(port, -7);
  assert_non_null(strstr(err, "256.1.2.3:bad"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_unknown_method_unimplemented),
      cmocka_unit_test(test_oversized_message_resource_exhausted),
      cmocka_unit_test(test_server_streaming_segments),
      cmocka_unit_test(test_server_shutdown_with_parked_call),
      cmocka_unit_test(test_server_shutdown_idle_is_prompt),
      cmocka_unit_test(test_listen_failure),
      cmocka_unit_test(test_unary_error_status_and_details),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
