/* Unit tests of common/metrics/prom.c: the exposition format's lines, escaping, the
 * constant label, histograms, and a failed allocation reported rather than truncated. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "metrics/prom.h"

static char* page(px_prom* p) {
  size_t len = 0;
  char* s = px_prom_take(p, &len);
  assert_non_null(s);
  assert_int_equal(strlen(s), len);
  return s;
}

static void test_families_and_samples(void** state) {
  (void)state;
  px_prom p;
  px_prom_init(&p, "shard", "3");
  px_prom_counter(&p, "x_total", "help with \\ and\nnewline", 42);
  px_prom_family(&p, "y", "gauge", "labelled");
  px_prom_sample(&p, "y", 7, "k", "a\"b\\c\nd", "m", "", NULL);
  px_prom_sample(&p, "y", 0.5, NULL);
  px_prom_sample(&p, "y", INFINITY, "k", "inf", NULL);
  px_prom_sample(&p, "y", NAN, "k", "nan", NULL);
  px_prom_gauge(&p, "z", "big", 20220946020.0);
  px_prom_sample(&p, "z", 9007199254740993.0, NULL); /* 2^53 + 1 is not a double: 2^53 */
  px_prom_sample(&p, "z", 1e300, NULL);
  char* s = page(&p);
  assert_string_equal(s,
                      "# HELP x_total help with \\\\ and\\nnewline\n"
                      "# TYPE x_total counter\n"
                      "x_total{shard=\"3\"} 42\n"
                      "# HELP y labelled\n"
                      "# TYPE y gauge\n"
                      "y{shard=\"3\",k=\"a\\\"b\\\\c\\nd\",m=\"\"} 7\n"
                      "y{shard=\"3\"} 0.5\n"
                      "y{shard=\"3\",k=\"inf\"} +Inf\n"
                      "y{shard=\"3\",k=\"nan\"} NaN\n"
                      "# HELP z big\n"
                      "# TYPE z gauge\n"
                      "z{shard=\"3\"} 20220946020\n"
                      "z{shard=\"3\"} 9007199254740992\n"
                      "z{shard=\"3\"} 1e+300\n");
  free(s);
  px_prom_init(&p, NULL, NULL); /* no constant label */
  px_prom_sample(&p, "a", 1, NULL);
  px_prom_sample(&p, "b", 2, "l", "v", NULL);
  s = page(&p);
  assert_string_equal(s, "a 1\nb{l=\"v\"} 2\n");
  free(s);
}

static void test_histogram(void** state) {
  (void)state;
  const double le[3] = {0.001, 0.01, 0.1};
  px_hist_snap sn = {.n = 3, .le = le, .cum = {2, 2, 3, 4}, .sum = 2.0515};
  px_prom p;
  px_prom_init(&p, "shard", "0");
  px_prom_hist(&p, "d_seconds", &sn);
  char* s = page(&p);
  assert_string_equal(s,
                      "d_seconds_bucket{shard=\"0\",le=\"0.001\"} 2\n"
                      "d_seconds_bucket{shard=\"0\",le=\"0.01\"} 2\n"
                      "d_seconds_bucket{shard=\"0\",le=\"0.1\"} 3\n"
                      "d_seconds_bucket{shard=\"0\",le=\"+Inf\"} 4\n"
                      "d_seconds_sum{shard=\"0\"} 2.0515\n"
                      "d_seconds_count{shard=\"0\"} 4\n");
  free(s);
}

static void test_big_page_and_failure(void** state) {
  (void)state;
  px_prom p;
  px_prom_init(&p, "shard", "0");
  for (int i = 0; i < 100000; i++) px_prom_sample(&p, "m", i, "t", "some-tensor", NULL);
  size_t len = 0;
  char* s = px_prom_take(&p, &len);
  assert_non_null(s);
  assert_true(len > 100000 * 20);
  assert_non_null(strstr(s, "m{shard=\"0\",t=\"some-tensor\"} 99999\n"));
  free(s);
  px_prom_init(&p, NULL, NULL);
  px_prom_sample(&p, "m", 1, NULL);
  p.failed = true; /* what a failed realloc leaves */
  px_prom_sample(&p, "m", 2, NULL);
  assert_null(px_prom_take(&p, &len));
  assert_null(p.buf);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_families_and_samples),
      cmocka_unit_test(test_histogram),
      cmocka_unit_test(test_big_page_and_failure),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
