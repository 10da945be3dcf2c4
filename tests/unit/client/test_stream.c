/* Unit tests of client/stream.c (the Exchange stream) against a real paramex-server
 * process (one worker, plain SGD, lr 0.5, chunks of 1024 f32), read through the server's
 * Stats (exchange_steps): blocking pushes, pulls and pmx_push_pull of a small tensor each
 * take one StepRequest and give the parameters bit for bit; a step over 1 MiB takes the
 * Push and Pull calls instead; a step the server refuses returns exactly the error the
 * Push call gives; a pull with no answer within the client's timeout ends
 * DEADLINE_EXCEEDED and the client goes on. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "paramex.pb-c.h"
#include "paramex/paramex.h"
#include "rpc/rpc_client.h"

#define SRV_START_MS 30000
#define LR 0.5f
#define N_SMALL 2500u   /* 3 chunks */
#define N_LARGE 300000u /* 1.2 MB: over the stream's 1 MiB */

static px_h_server g_srv;
static px_rpc_channel* g_ch; /* for Stats */

static void expect_st(const char* what, pmx_status st, pmx_status want) {
  if (st != want)
    fail_msg("%s: %s (%d; '%s'), want %s (%d)", what, pmx_strerror(st), (int)st, pmx_last_error(),
             pmx_strerror(want), (int)want);
}

static int setup(void** state) {
  (void)state;
  char err[512];
  const char* args[] = {"--workers", "1", "--lr", "0.5", "--chunk-bytes", "4K", "--log-level", "warn", NULL};
  if (px_h_server_start(&g_srv, args, NULL, SRV_START_MS, err, sizeof err) != 0) {
    fprintf(stderr, "server: %s\n", err);
    return -1;
  }
  px_rpc_init();
  g_ch = px_rpc_channel_create(g_srv.addr, err, sizeof err);
  return g_ch ? 0 : -1;
}

static int teardown(void** state) {
  (void)state;
  px_rpc_channel_destroy(g_ch);
  px_rpc_shutdown();
  px_h_kill_all();
  return 0;
}

static uint64_t exchange_steps(void) {
  char d[256];
  Paramex__V1__StatsResponse* st = px_h_stats(g_ch, d, sizeof d);
  if (!st) fail_msg("Stats: %s", d);
  uint64_t n = st->exchange_steps;
  paramex__v1__stats_response__free_unpacked(st, NULL);
  return n;
}

static pmx_client* joined(int64_t timeout_ms) {
  pmx_options o = {.timeout_ms = timeout_ms, .connect_timeout_ms = 20000};
  pmx_client* c = NULL;
  expect_st("connect", pmx_connect(g_srv.addr, &o, &c), PMX_OK);
  expect_st("join", pmx_join(c, 0, 1, NULL), PMX_OK);
  return c;
}

/* A tensor of n floats (initial value i / 1024) and its first pull into dst. */
static pmx_tensor* declared(pmx_client* c, const char* name, size_t n, float* ref, float* dst) {
  for (size_t i = 0; i < n; i++) ref[i] = (float)i / 1024.0f;
  uint64_t shape[1] = {n};
  pmx_tensor* t = NULL;
  expect_st("declare", pmx_declare(c, name, PMX_F32, shape, 1, ref, NULL, &t), PMX_OK);
  void* d = dst;
  expect_st("first pull", pmx_pull(c, 1, &t, &d, 0, NULL), PMX_OK);
  assert_memory_equal(dst, ref, n * sizeof *dst);
  return t;
}

static void grads(float* g, size_t n, uint64_t step) {
  for (size_t i = 0; i < n; i++) g[i] = (float)((int)((i * 31 + step * 7) % 61) - 30) / 32.0f;
}

static void test_small_operations_take_the_stream(void** state) {
  (void)state;
  pmx_client* c = joined(20000);
  static float ref[N_SMALL], dst[N_SMALL], g[N_SMALL];
  pmx_tensor* t = declared(c, "small", N_SMALL, ref, dst);
  const uint64_t before = exchange_steps(); /* the first pull went over the stream too */
  assert_true(before >= 1);
  void* d = dst;
  const void* gp = g;
  for (uint64_t s = 0; s < 3; s++) {
    grads(g, N_SMALL, s);
    uint64_t v = 0;
    expect_st("push_pull", pmx_push_pull(c, s, 1, &t, &gp, &d, &v), PMX_OK);
    assert_int_equal(v, s + 1);
    for (size_t i = 0; i < N_SMALL; i++) ref[i] = ref[i] - LR * g[i];
    assert_memory_equal(dst, ref, sizeof dst);
  }
  assert_int_equal(exchange_steps(), before + 3);
  /* a blocking push, then a blocking pull: one StepRequest each */
  grads(g, N_SMALL, 3);
  expect_st("push", pmx_push(c, 3, 1, &t, &gp), PMX_OK);
  uint64_t v = 0;
  expect_st("pull", pmx_pull(c, 1, &t, &d, 4, &v), PMX_OK);
  assert_int_equal(v, 4);
  for (size_t i = 0; i < N_SMALL; i++) ref[i] = ref[i] - LR * g[i];
  assert_memory_equal(dst, ref, sizeof dst);
  assert_int_equal(exchange_steps(), before + 5);
  /* a pull at the version held: the chunks come UNCHANGED, dst stays right */
  pmx_client_stats cs0, cs1;
  pmx_client_get_stats(c, &cs0);
  expect_st("pull again", pmx_pull(c, 1, &t, &d, 4, &v), PMX_OK);
  pmx_client_get_stats(c, &cs1);
  assert_int_equal(cs1.pull_unchanged_chunks - cs0.pull_unchanged_chunks, 3);
  assert_memory_equal(dst, ref, sizeof dst);
  pmx_client_destroy(c);
}

static void test_large_step_takes_the_calls(void** state) {
  (void)state;
  pmx_client* c = joined(20000);
  float* ref = malloc(N_LARGE * sizeof *ref);
  float* dst = malloc(N_LARGE * sizeof *dst);
  float* g = malloc(N_LARGE * sizeof *g);
  assert_true(ref && dst && g);
  const uint64_t before = exchange_steps();
  pmx_tensor* t = declared(c, "large", N_LARGE, ref, dst);
  void* d = dst;
  const void* gp = g;
  grads(g, N_LARGE, 0);
  uint64_t v = 0;
  expect_st("push_pull", pmx_push_pull(c, 0, 1, &t, &gp, &d, &v), PMX_OK);
  assert_int_equal(v, 1);
  for (size_t i = 0; i < N_LARGE; i++) ref[i] = ref[i] - LR * g[i];
  assert_memory_equal(dst, ref, N_LARGE * sizeof *dst);
  assert_int_equal(exchange_steps(), before);
  pmx_client_destroy(c);
  free(ref);
  free(dst);
  free(g);
}

static void test_refused_step_gives_the_push_error(void** state) {
  (void)state;
  pmx_client* c = joined(20000);
  static float ref[N_SMALL], dst[N_SMALL], g[N_SMALL];
  pmx_tensor* t = declared(c, "refused", N_SMALL, ref, dst);
  void* d = dst;
  const void* gp = g;
  grads(g, N_SMALL, 0);
  /* what the Push call says of step 7 at version 0 */
  pmx_op* op = NULL;
  expect_st("push_async", pmx_push_async(c, 7, 1, &t, &gp, &op), PMX_OK);
  pmx_status want = pmx_op_wait(op);
  assert_int_not_equal(want, PMX_OK);
  char want_msg[512];
  snprintf(want_msg, sizeof want_msg, "%s", pmx_last_error());
  const uint64_t before = exchange_steps();
  expect_st("push over the stream", pmx_push(c, 7, 1, &t, &gp), want);
  assert_string_equal(pmx_last_error(), want_msg);
  expect_st("push_pull over the stream", pmx_push_pull(c, 7, 1, &t, &gp, &d, NULL), want);
  assert_string_equal(pmx_last_error(), want_msg);
  /* each was tried on the stream once, then refused by the Push call */
  assert_int_equal(exchange_steps(), before + 2);
  assert_memory_equal(dst, ref, sizeof dst);
  pmx_client_destroy(c);
}

static void test_no_answer_in_time(void** state) {
  (void)state;
  pmx_client* c = joined(500);
  static float ref[N_SMALL], dst[N_SMALL], g[N_SMALL];
  pmx_tensor* t = declared(c, "late", N_SMALL, ref, dst);
  void* d = dst;
  uint64_t v = 77;
  expect_st("pull of a version that never comes", pmx_pull(c, 1, &t, &d, 100, &v),
            PMX_ERR_DEADLINE_EXCEEDED);
  if (!strstr(pmx_last_error(), "no answer within 500 ms"))
    fail_msg("last error '%s'", pmx_last_error());
  assert_int_equal(v, 77);
  /* the client goes on: the next step is exchanged and right */
  const void* gp = g;
  grads(g, N_SMALL, 0);
  expect_st("push_pull", pmx_push_pull(c, 0, 1, &t, &gp, &d, &v), PMX_OK);
  assert_int_equal(v, 1);
  for (size_t i = 0; i < N_SMALL; i++) ref[i] = ref[i] - LR * g[i];
  assert_memory_equal(dst, ref, sizeof dst);
  pmx_client_destroy(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_small_operations_take_the_stream),
      cmocka_unit_test(test_large_step_takes_the_calls),
      cmocka_unit_test(test_refused_step_gives_the_push_error),
      cmocka_unit_test(test_no_answer_in_time),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
