/* Unit tests of common/rpc/rpc_base.c: status names, and received messages (segments, the flat copy) from a real server on loopback (tests/helpers/rpc_fixture.h). */
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

/* ---- tests: status names ----------------------------------------------------------------- */

static void test_status_name(void** state) {
  (void)state;
  assert_string_equal(px_status_name(PX_ST_OK), "OK");
  assert_string_equal(px_status_name(PX_ST_CANCELLED), "CANCELLED");
  assert_string_equal(px_status_name(PX_ST_INVALID_ARGUMENT), "INVALID_ARGUMENT");
  assert_string_equal(px_status_name(PX_ST_DEADLINE_EXCEEDED), "DEADLINE_EXCEEDED");
  assert_string_equal(px_status_name(PX_ST_RESOURCE_EXHAUSTED), "RESOURCE_EXHAUSTED");
  assert_string_equal(px_status_name(PX_ST_FAILED_PRECONDITION), "FAILED_PRECONDITION");
  assert_string_equal(px_status_name(PX_ST_UNIMPLEMENTED), "UNIMPLEMENTED");
  assert_string_equal(px_status_name(PX_ST_UNAVAILABLE), "UNAVAILABLE");
  assert_string_equal(px_status_name(PX_ST_UNAUTHENTICATED), "UNAUTHENTICATED");
  assert_string_equal(px_status_name(17), "UNKNOWN_STATUS");
  assert_string_equal(px_status_name(-1), "UNKNOWN_STATUS");
  /* Every code has its own name. */
  for (int i = 0; i <= PX_ST_UNAUTHENTICATED; i++) {
    assert_non_null(px_status_name(i));
    assert_string_not_equal(px_status_name(i), "UNKNOWN_STATUS");
    for (int j = 0; j < i; j++) assert_string_not_equal(px_status_name(i), px_status_name(j));
  }
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

/* px_msg_flat: one copy for a multi-segment message (cached), none for one segment. */
static void test_msg_flat(void** state) {
  (void)state;
  enum { K = 3 };
  const uint32_t size = (1u << 20) + 3;
  rel_reset();
  cli_rec r;
  memset(&r, 0, sizeof r);
  r.keep = true;
  start_stream(&r, K, size, 5);
  cli_wait_done(&r);
  assert_int_equal(r.status, PX_ST_OK);
  assert_int_equal(r.nkept, K);
  bool multi = false;
  for (uint32_t m = 0; m < K; m++) {
    px_msg* msg = r.kept[m];
    assert_int_equal(px_msg_len(msg), size);
    size_t nseg = 0;
    const px_iov* seg = px_msg_segments(msg, &nseg);
    assert_non_null(seg);
    assert_true(nseg >= 1);
    size_t sum = 0;
    for (size_t i = 0; i < nseg; i++) sum += seg[i].n;
    assert_int_equal(sum, size);
    size_t len = 0;
    const uint8_t* flat = px_msg_flat(msg, &len);
    assert_non_null(flat);
    assert_int_equal(len, size);
    size_t off = 0;
    for (size_t i = 0; i < nseg; i++) {
      assert_memory_equal(flat + off, seg[i].p, seg[i].n);
      off += seg[i].n;
    }
    for (size_t j = 0; j < len; j++)
      if (flat[j] != pat(5, m, j)) fail_msg("message %u byte %zu differs", m, j);
    size_t len2 = 0;
    assert_ptr_equal(px_msg_flat(msg, &len2), flat); /* copied once */
    assert_int_equal(len2, size);
    if (nseg > 1) {
      multi = true;
      assert_ptr_not_equal(flat, seg[0].p);
    }
    /* segments again after flat: unchanged */
    size_t nseg2 = 0;
    assert_ptr_equal(px_msg_segments(msg, &nseg2), seg);
    assert_int_equal(nseg2, nseg);
    px_msg_free(msg);
  }
  assert_true(multi);
  WAIT_FOR(rel_all_ran(K));

  /* A small message: flat points into it when it arrived as one segment. */
  rel_reset();
  memset(&r, 0, sizeof r);
  r.keep = true;
  start_stream(&r, 1, 100, 6);
  cli_wait_done(&r);
  assert_int_equal(r.status, PX_ST_OK);
  assert_int_equal(r.nkept, 1);
  size_t nseg = 0, len = 0;
  const px_iov* seg = px_msg_segments(r.kept[0], &nseg);
  assert_true(nseg >= 1);
  const uint8_t* flat = px_msg_flat(r.kept[0], &len);
  if (nseg == 1) assert_ptr_equal(flat, seg[0].p); /* one segment: no copy */
  else assert_ptr_not_equal(flat, seg[0].p);
  assert_int_equal(len, 100);
  for (size_t j = 0; j < len; j++) assert_int_equal(flat[j], pat(6, 0, j));
  px_msg_free(r.kept[0]);
  px_msg_free(NULL); /* accepted */
  WAIT_FOR(rel_all_ran(1));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_status_name),
      cmocka_unit_test(test_msg_flat),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
