/* libparamex in the test process against a real paramex-server: pmx_push_pull, the
 * pipelined step (pull of step+1 started first, then the push). Its values must equal a
 * push followed by a pull, and a push that fails must stop the parked pull at once and
 * report the push's error. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "harness.h"
#include "paramex/paramex.h"

#define N 1000

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void expect(const char* what, pmx_status st, pmx_status want) {
  if (st != want)
    fail_msg("%s: %s (%s), want %s", what, pmx_strerror(st), pmx_last_error(), pmx_strerror(want));
}

static void test_push_pull(void** state) {
  (void)state;
  px_h_server s;
  char err[512];
  const char* args[] = {"--workers", "1", "--lr", "0.5", NULL};
  if (px_h_server_start(&s, args, NULL, 30000, err, sizeof err) != 0) fail_msg("server: %s", err);
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", s.port);
  /* a 20 s deadline: a pull left parked by a failed push would show as a 20 s wait */
  pmx_options o = {.timeout_ms = 20000, .connect_timeout_ms = 20000};
  pmx_client* c = NULL;
  expect("connect", pmx_connect(addr, &o, &c), PMX_OK);
  expect("join", pmx_join(c, 0, 1, NULL), PMX_OK);
  const uint64_t shape[1] = {N};
  const pmx_init init = {PMX_INIT_CONSTANT, 1.0f, 0.0f, 0};
  pmx_tensor* t = NULL;
  expect("declare", pmx_declare(c, "x", PMX_F32, shape, 1, NULL, &init, &t), PMX_OK);
  static float p[N], g[N], want[N];
  void* dst = p;
  uint64_t v = 99;
  expect("initial pull", pmx_pull(c, 1, &t, &dst, 0, &v), PMX_OK);
  assert_int_equal(v, 0);

  /* a push the server refuses (a step ahead of the tensor's version): its error, at once */
  for (int i = 0; i < N; i++) g[i] = 0.25f * (float)(i % 17);
  const void* gp = g;
  double t0 = now_s();
  pmx_status st = pmx_push_pull(c, 7, 1, &t, &gp, &dst, &v);
  double dt = now_s() - t0;
  expect("push_pull of step 7 at version 0", st, PMX_ERR_OUT_OF_RANGE);
  if (!strstr(pmx_last_error(), "Push")) fail_msg("last error '%s' is not the push's", pmx_last_error());
  if (dt > 5.0) fail_msg("the failed push_pull took %.1f s: the pull was left parked", dt);
  for (int i = 0; i < N; i++)
    if (p[i] != 1.0f) fail_msg("dst[%d] = %g changed by a failed push_pull", i, (double)p[i]);

  /* two good steps: the server's SGD (p - lr * g / 1, in f32) */
  for (int step = 0; step < 2; step++) {
    for (int i = 0; i < N; i++) want[i] = p[i] - 0.5f * (g[i] / 1.0f);
    expect("push_pull", pmx_push_pull(c, (uint64_t)step, 1, &t, &gp, &dst, &v), PMX_OK);
    assert_int_equal(v, (uint64_t)step + 1);
    if (memcmp(p, want, sizeof p) != 0) fail_msg("step %d: parameters differ from p - lr*g", step);
  }
  pmx_client_stats cs;
  pmx_client_get_stats(c, &cs);
  assert_int_equal(cs.checksum_failures, 0);
  pmx_client_destroy(c);
  int ws = 0;
  size_t extra = 0;
  assert_int_equal(px_h_server_stop(&s, 30000, &ws, &extra), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_push_pull)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
