/* Unit tests of common/codec/initializer.c: golden values, chunking independence, moments and bounds. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "codec/checksum.h"
#include "codec/dtype.h"
#include "codec/initializer.h"

static uint32_t bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

/* The formulas are part of the wire contract: these values come from an independent
 * re-implementation (Python) of the documented splitmix64 + Box-Muller recipe. */
static void test_init_golden_values(void** state) {
  (void)state;
  static const uint64_t idx[] = {0, 1, 2, 3, 1000000007};
  static const uint32_t normal_42[] = {0xbe92d39e, 0xbfbd8a73, 0xbf95cc33, 0x3fd67393, 0x3fb0a500};
  static const uint32_t normal_7[] = {0x3f013d93, 0x3f06550d, 0x3ef2ceaa, 0x3ef3e3f1, 0x3eef35d0};
  static const uint32_t uniform_42[] = {0x3f505f89, 0x3e8ce7d7, 0xbec73046, 0xbdb56dd3, 0xbf629067};
  for (int i = 0; i < 5; i++) {
    float v;
    assert_int_equal(px_init_fill_f32(&v, idx[i], 1, PX_FILL_NORMAL, 0.0f, 1.0f, 42), 0);
    assert_int_equal(bits(v), normal_42[i]);
    assert_int_equal(px_init_fill_f32(&v, idx[i], 1, PX_FILL_NORMAL, 0.5f, 0.02f, 7), 0);
    assert_int_equal(bits(v), normal_7[i]);
    assert_int_equal(px_init_fill_f32(&v, idx[i], 1, PX_FILL_UNIFORM, -1.0f, 1.0f, 42), 0);
    assert_int_equal(bits(v), uniform_42[i]);
  }
}

static void test_init_chunking_independent(void** state) {
  (void)state;
  enum { N = 100003 };
  static const int kinds[] = {PX_FILL_ZEROS, PX_FILL_CONSTANT, PX_FILL_NORMAL, PX_FILL_UNIFORM};
  static const uint64_t firsts[] = {0, 12345, UINT64_C(1) << 40};
  float* whole = malloc(N * sizeof(float));
  float* parts = malloc(N * sizeof(float));
  assert_non_null(whole);
  assert_non_null(parts);
  for (size_t k = 0; k < 4; k++) {
    for (size_t f = 0; f < 3; f++) {
      assert_int_equal(px_init_fill_f32(whole, firsts[f], N, kinds[k], -0.5f, 2.0f, 99), 0);
      memset(parts, 0xFF, N * sizeof(float));
      size_t off = 0, step = 1;
      while (off < N) { /* irregular pieces: 1, 2, 5, 14, ... elements */
        size_t n = step < N - off ? step : N - off;
        assert_int_equal(
            px_init_fill_f32(parts + off, firsts[f] + off, n, kinds[k], -0.5f, 2.0f, 99), 0);
        off += n;
        step = step * 3 - 1;
      }
      assert_memory_equal(whole, parts, N * sizeof(float));
    }
  }
  free(whole);
  free(parts);
}

static void test_init_normal_moments(void** state) {
  (void)state;
  enum { N = 1000000 };
  const double mean = 3.0, sd = 2.0;
  float* v = malloc(N * sizeof(float));
  assert_non_null(v);
  assert_int_equal(px_init_fill_f32(v, 0, N, PX_FILL_NORMAL, (float)mean, (float)sd, 1234), 0);
  double s = 0, s2 = 0;
  size_t within1 = 0, within2 = 0;
  for (size_t i = 0; i < N; i++) {
    assert_true(isfinite(v[i]));
    double d = v[i] - mean;
    s += d;
    s2 += d * d;
    within1 += fabs(d) <= sd;
    within2 += fabs(d) <= 2 * sd;
  }
  double m = s / N, sdev = sqrt(s2 / N - m * m);
  /* standard error of the mean: sd / 1000; these bounds are > 5 standard errors */
  assert_true(fabs(m) < 0.01);
  assert_true(fabs(sdev - sd) < 0.01);
  /* shape: 68.27 % within one sd, 95.45 % within two */
  assert_true(fabs((double)within1 / N - 0.6827) < 0.003);
  assert_true(fabs((double)within2 / N - 0.9545) < 0.002);
  free(v);
}

static void test_init_uniform_bounds(void** state) {
  (void)state;
  enum { N = 1000000 };
  float* v = malloc(N * sizeof(float));
  assert_non_null(v);
  assert_int_equal(px_init_fill_f32(v, 0, N, PX_FILL_UNIFORM, -0.25f, 0.75f, 5), 0);
  float lo = INFINITY, hi = -INFINITY;
  double s = 0;
  for (size_t i = 0; i < N; i++) {
    assert_true(v[i] >= -0.25f && v[i] < 0.75f);
    lo = fminf(lo, v[i]);
    hi = fmaxf(hi, v[i]);
    s += v[i];
  }
  assert_true(lo < -0.2499f && hi > 0.7499f);
  assert_true(fabs(s / N - 0.25) < 0.002); /* sd of the mean: 0.29 / 1000 */

  /* b one ulp above a: the double result rounds up to b for half the draws, and must
   * still be < b */
  const float a = 1.0f, b = nextafterf(1.0f, 2.0f);
  assert_int_equal(px_init_fill_f32(v, 0, 10000, PX_FILL_UNIFORM, a, b, 5), 0);
  for (size_t i = 0; i < 10000; i++) assert_true(v[i] == a);
  free(v);
}

static void test_init_constant_zeros(void** state) {
  (void)state;
  float v[1000];
  memset(v, 0x7F, sizeof v);
  assert_int_equal(px_init_fill_f32(v, 77, 1000, PX_FILL_CONSTANT, -2.5f, 9.0f, 3), 0);
  for (int i = 0; i < 1000; i++) assert_true(v[i] == -2.5f);
  memset(v, 0x7F, sizeof v);
  assert_int_equal(px_init_fill_f32(v, 77, 1000, PX_FILL_ZEROS, -2.5f, 9.0f, 3), 0);
  for (int i = 0; i < 1000; i++) assert_int_equal(bits(v[i]), 0); /* +0.0 */
  /* n == 0 writes nothing */
  v[0] = 5.0f;
  assert_int_equal(px_init_fill_f32(v, 0, 0, PX_FILL_CONSTANT, 1.0f, 0, 0), 0);
  assert_true(v[0] == 5.0f);
}

static void test_init_unknown_kind(void** state) {
  (void)state;
  float v[4] = {1, 2, 3, 4};
  assert_int_equal(px_init_fill_f32(v, 0, 4, 4, 0, 1, 0), -1);
  assert_int_equal(px_init_fill_f32(v, 0, 4, -1, 0, 1, 0), -1);
  assert_true(v[0] == 1 && v[3] == 4); /* untouched */
}

static void test_init_seeds_differ(void** state) {
  (void)state;
  enum { N = 10000 };
  static float x[N], y[N], z[N];
  static const int kinds[] = {PX_FILL_NORMAL, PX_FILL_UNIFORM};
  for (int k = 0; k < 2; k++) {
    assert_int_equal(px_init_fill_f32(x, 0, N, kinds[k], 0, 1, 1), 0);
    assert_int_equal(px_init_fill_f32(y, 0, N, kinds[k], 0, 1, 2), 0);
    assert_int_equal(px_init_fill_f32(z, 0, N, kinds[k], 0, 1, 1), 0);
    assert_memory_equal(x, z, sizeof x); /* deterministic */
    size_t same = 0, shifted = 0;
    for (size_t i = 0; i < N; i++) {
      same += x[i] == y[i];
      shifted += i + 1 < N && x[i + 1] == y[i]; /* not a shifted copy either */
    }
    assert_true(same < 5);
    assert_true(shifted < 5);
    /* neighbouring elements are not equal */
    size_t repeats = 0;
    for (size_t i = 1; i < N; i++) repeats += x[i] == x[i - 1];
    assert_true(repeats < 5);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_init_golden_values),
      cmocka_unit_test(test_init_chunking_independent),
      cmocka_unit_test(test_init_normal_moments),
      cmocka_unit_test(test_init_uniform_bounds),
      cmocka_unit_test(test_init_constant_zeros),
      cmocka_unit_test(test_init_unknown_kind),
      cmocka_unit_test(test_init_seeds_differ),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
