/* Unit tests of common/rpc/rpc_call.c, the call core under both sides, through a client
 * call against a real server on loopback (tests/helpers/rpc_fixture.h): the initial
 * metadata rides with the first batch (a read before any send sends it too), one read and
 * one send at a time, no send after the half-close, and on_done exactly once, last. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <string.h>

#include "rpc/rpc_base.h"
#include "rpc/rpc_client.h"
#include "rpc_fixture.h"

typedef struct done_rec {
  int done_calls; /* on_done runs (must end at exactly 1) */
  int status;
  int messages;   /* on_message runs */
  bool ended;     /* on_message(NULL) */
} done_rec;

static void d_on_message(px_cli_call* call, void* ctx, px_msg* m) {
  done_rec* r = ctx;
  LOCKED(r->messages++; if (!m) r->ended = true);
  if (m) px_cli_call_read(call); /* until the end of the stream */
  px_msg_free(m);
}

static void d_on_done(px_cli_call* call, void* ctx, int status, const char* details) {
  (void)call;
  (void)details;
  done_rec* r = ctx;
  LOCKED(r->done_calls++; r->status = status);
}

static const px_cli_call_cbs d_cbs = {d_on_message, NULL, d_on_done};

/* A call that only reads: the headers must go out with the read, or the server never
 * sees the call (it is created when they arrive). */
static void test_read_first_sends_headers(void** state) {
  (void)state;
  int before;
  pthread_mutex_lock(&g_mu);
  before = S.sink_calls;
  pthread_mutex_unlock(&g_mu);
  done_rec r = {0};
  px_cli_call* c = px_cli_call_start(g_ch, M_SINK, 20000, true, &d_cbs, &r);
  assert_non_null(c);
  assert_true(px_cli_call_read(c));
  assert_false(px_cli_call_read(c)); /* one read at a time */
  WAIT_FOR(S.sink_calls == before + 1);
  px_cli_call_cancel(c);
  px_cli_call_unref(c);
  WAIT_FOR(r.done_calls == 1);
  assert_int_equal(r.status, PX_ST_CANCELLED);
  assert_int_equal(r.messages, 1); /* the pending read ended (NULL), once */
  assert_true(r.ended);
}

static atomic_int g_released;
static void count_release(void* p) {
  (void)p;
  atomic_fetch_add(&g_released, 1);
}

/* After the half-close nothing more may be sent: the refused body is released at once. */
static void test_no_send_after_half_close(void** state) {
  (void)state;
  atomic_store(&g_released, 0);
  done_rec r = {0};
  px_cli_call* c = px_cli_call_start(g_ch, M_COUNT, 20000, true, &d_cbs, &r);
  assert_non_null(c);
  assert_true(px_cli_call_read(c));
  static const uint8_t body[16] = {1, 2, 3};
  px_out last = {NULL, 0, body, sizeof body, count_release, NULL};
  assert_true(px_cli_call_send(c, &last, true));
  px_out more = {NULL, 0, body, sizeof body, count_release, NULL};
  assert_false(px_cli_call_send(c, &more, false)); /* pending send, and half-closed */
  assert_false(px_cli_call_close_send(c));
  WAIT_FOR(r.ended); /* the server answered once the stream was closed */
  px_cli_call_unref(c);
  WAIT_FOR(r.done_calls == 1);
  assert_int_equal(r.status, PX_ST_OK);
  assert_int_equal(atomic_load(&g_released), 2); /* the sent body and the refused one */
}

/* on_done runs once, after the caller dropped its reference, however the call ends. */
static void test_done_once_and_last(void** state) {
  (void)state;
  for (int round = 0; round < 20; round++) {
    done_rec r = {0};
    px_cli_call* c = px_cli_call_start(g_ch, round % 2 ? M_PARK : M_SINK, 20000, true, &d_cbs, &r);
    assert_non_null(c);
    px_out out = {"x", 1, NULL, 0, NULL, NULL};
    px_cli_call_send(c, &out, round % 2 == 1);
    px_cli_call_read(c);
    px_cli_call_cancel(c);
    /* the status may be in, but on_done waits for the caller's reference */
    pthread_mutex_lock(&g_mu);
    int early = r.done_calls;
    pthread_mutex_unlock(&g_mu);
    assert_int_equal(early, 0);
    assert_true(px_cli_call_try_ref(c));
    px_cli_call_unref(c);
    px_cli_call_unref(c); /* the caller's */
    WAIT_FOR(r.done_calls == 1);
    assert_int_equal(r.status, PX_ST_CANCELLED);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_read_first_sends_headers),
      cmocka_unit_test(test_no_send_after_half_close),
      cmocka_unit_test(test_done_once_and_last),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
