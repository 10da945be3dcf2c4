/* Unit tests of common/metrics/hist.c: inclusive bucket bounds, exponential bounds, and
 * exact counts under concurrent observers. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdint.h>

#include "metrics/hist.h"

static void test_buckets(void** state) {
  (void)state;
  px_hist h;
  px_hist_init_exp(&h, 0.001, 10, 3); /* 1 ms, 10 ms, 100 ms */
  assert_int_equal(h.n, 3);
  assert_int_equal(h.le_ns[2], 100000000);
  px_hist_observe_ns(&h, 0);
  px_hist_observe_ns(&h, 500000);     /* 0.5 ms */
  px_hist_observe_ns(&h, 1000000);    /* 1 ms: le is inclusive */
  px_hist_observe_ns(&h, 1000001);
  px_hist_observe_ns(&h, 50000000);   /* 50 ms */
  px_hist_observe_ns(&h, 2000000000); /* 2 s: +Inf only */
  px_hist_snap s;
  px_hist_snapshot(&h, &s);
  assert_int_equal(s.n, 3);
  assert_int_equal(s.cum[0], 3);
  assert_int_equal(s.cum[1], 4);
  assert_int_equal(s.cum[2], 5);
  assert_int_equal(s.cum[3], 6);
  assert_true(s.sum > 2.0524999 && s.sum < 2.0525001);
  px_hist_init_exp(&h, 1, 2, 100); /* capped */
  assert_int_equal(h.n, PX_HIST_MAX);
}

static px_hist g_h;

static void* observer(void* arg) {
  uint64_t k = (uint64_t)(uintptr_t)arg;
  for (uint64_t i = 0; i < 100000; i++) px_hist_observe_ns(&g_h, (i % 7) * 1000000 * k);
  return NULL;
}

static void test_concurrent(void** state) {
  (void)state;
  px_hist_init_exp(&g_h, 0.001, 2, 8);
  pthread_t t[4];
  for (uintptr_t i = 0; i < 4; i++) assert_int_equal(pthread_create(&t[i], NULL, observer, (void*)(i + 1)), 0);
  for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
  px_hist_snap s;
  px_hist_snapshot(&g_h, &s);
  assert_int_equal(s.cum[s.n], 400000);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_buckets),
      cmocka_unit_test(test_concurrent),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
