/* Unit tests of common/codec/dtype.c: the type table, and the conversions between f32 and bf16 / f16 against independent references (exhaustive over 16-bit patterns). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "codec/dtype.h"
#include "codec/transform.h"
#include "codec/zstdframe.h"

static uint32_t bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static float fbits(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* ---- independent references --------------------------------------------------------
 * A binary format with `ebits` exponent bits and `mbits` stored mantissa bits:
 * bf16 = (8, 7), f16 = (5, 10). */

/* Value of a 16-bit pattern from its fields, via ldexp. NaN patterns return NAN. */
static double ref_decode(uint16_t h, int ebits, int mbits) {
  int bias = (1 << (ebits - 1)) - 1;
  unsigned e = (h >> mbits) & ((1u << ebits) - 1);
  unsigned m = h & ((1u << mbits) - 1);
  double s = (h & 0x8000) ? -1.0 : 1.0;
  if (e == (1u << ebits) - 1) return m ? NAN : s * INFINITY;
  if (e == 0) return s * ldexp((double)m, 1 - bias - mbits);
  return s * ldexp((double)((1u << mbits) + m), (int)e - bias - mbits);
}

/* Round a non-NaN float to the format, nearest with ties to even, computed in double:
 * scale |f| so the format's quantum in its binade is 1, round with rint (the default
 * rounding mode is ties-to-even), rebuild the pattern. A carry out of the mantissa
 * lands in the exponent field by the addition, up to the infinity pattern. */
static uint16_t ref_round(float f, int ebits, int mbits) {
  int bias = (1 << (ebits - 1)) - 1;
  uint32_t inf = ((1u << ebits) - 1) << mbits;
  uint16_t sign = signbit(f) ? 0x8000 : 0;
  double a = fabs((double)f);
  if (isinf(f)) return (uint16_t)(sign | inf);
  if (a == 0) return sign;
  int e;
  frexp(a, &e);
  int E = e - 1; /* a in [2^E, 2^(E+1)) */
  if (E < 1 - bias) E = 1 - bias; /* subnormal range: fixed quantum */
  double m = rint(ldexp(a, mbits - E)); /* exact scaling; m in [0, 2^(mbits+1)] */
  int64_t pat = ((int64_t)(E + bias) << mbits) + (int64_t)m - ((int64_t)1 << mbits);
  if (pat >= (int64_t)inf) pat = inf;
  return (uint16_t)(sign | (uint16_t)pat);
}

static int is_nan16(uint16_t h, int mbits) {
  uint16_t inf = (uint16_t)(0x7fffu >> mbits << mbits);
  return (h & inf) == inf && (h & ((1u << mbits) - 1));
}

/* ---- dtype: exhaustive 16-bit patterns ------------------------------------------- */

static void check_exhaustive(int ebits, int mbits, float (*to32)(uint16_t),
                             uint16_t (*to16)(float),
                             void (*to32n)(const uint16_t*, float*, size_t),
                             void (*to16n)(const float*, uint16_t*, size_t)) {
  const uint16_t quiet = (uint16_t)(1u << (mbits - 1));
  static uint16_t all[65536], back[65536];
  static float wide[65536];
  for (uint32_t i = 0; i < 65536; i++) {
    uint16_t h = (uint16_t)i;
    all[i] = h;
    float f = to32(h);
    double ref = ref_decode(h, ebits, mbits);
    if (isnan(ref)) {
      assert_true(isnan(f));
      assert_int_equal(!!signbit(f), h >> 15);
      /* widening keeps the payload bit for bit (not quieted) */
      assert_int_equal(bits(f), ((uint32_t)(h & 0x8000) << 16) | 0x7f800000u |
                                    ((uint32_t)(h & ((1u << mbits) - 1)) << (23 - mbits)));
      uint16_t b = to16(f);
      assert_true(is_nan16(b, mbits));
      assert_int_equal(b >> 15, h >> 15);
      assert_int_equal(b, h | quiet); /* quieted, payload kept */
    } else {
      assert_int_equal(bits(f), bits((float)ref)); /* exact, sign of zero included */
      assert_int_equal(to16(f), h);
    }
  }
  to32n(all, wide, 65536);
  for (uint32_t i = 0; i < 65536; i++) assert_int_equal(bits(wide[i]), bits(to32(all[i])));
  to16n(wide, back, 65536);
  for (uint32_t i = 0; i < 65536; i++) assert_int_equal(back[i], to16(wide[i]));
  /* lengths that are not a multiple of the vector block, at odd offsets: the tails */
  static const size_t lens[] = {1, 5, 31, 33, 65533};
  for (size_t l = 0; l < sizeof lens / sizeof lens[0]; l++) {
    static float w2[65536];
    static uint16_t b2[65536];
    memset(w2, 0, sizeof w2);
    to32n(all + 3, w2, lens[l]);
    for (size_t i = 0; i < lens[l]; i++) assert_int_equal(bits(w2[i]), bits(wide[i + 3]));
    assert_int_equal(bits(w2[lens[l]]), 0);
    memset(b2, 0, sizeof b2);
    to16n(wide + 1, b2, lens[l]);
    for (size_t i = 0; i < lens[l]; i++) assert_int_equal(b2[i], back[i + 1]);
    assert_int_equal(b2[lens[l]], 0);
  }
}

static void test_bf16_exhaustive(void** st) {
  (void)st;
  check_exhaustive(8, 7, px_bf16_to_f32, px_f32_to_bf16, px_bf16_to_f32_n, px_f32_to_bf16_n);
}

static void test_f16_exhaustive(void** st) {
  (void)st;
  check_exhaustive(5, 10, px_f16_to_f32, px_f32_to_f16, px_f16_to_f32_n, px_f32_to_f16_n);
}

/* ---- dtype: f32 -> 16-bit rounding sweeps ------------------------------------------ */

/* Every upper-16-bit pattern combined with each low-16-bit value in `lows`: compares
 * the scalar and _n conversions with ref_round (NaN: quieted truncation). */
static void sweep(const uint16_t* lows, size_t nlows, int ebits, int mbits,
                  uint16_t (*to16)(float), void (*to16n)(const float*, uint16_t*, size_t)) {
  size_t n = 65536 * nlows;
  float* in = malloc(n * sizeof *in);
  uint16_t* out = malloc(n * sizeof *out);
  uint16_t* want = malloc(n * sizeof *want);
  assert_non_null(in);
  assert_non_null(out);
  assert_non_null(want);
  size_t k = 0;
  for (uint32_t up = 0; up < 65536; up++) {
    for (size_t j = 0; j < nlows; j++, k++) {
      uint32_t u = up << 16 | lows[j];
      float f = fbits(u);
      in[k] = f;
      if (isnan(f)) {
        /* sign, quiet bit, top payload bits */
        want[k] = (uint16_t)(((u >> 16) & 0x8000u) | (0x7fffu >> mbits << mbits) |
                             (1u << (mbits - 1)) | ((u & 0x007fffffu) >> (23 - mbits)));
      } else {
        want[k] = ref_round(f, ebits, mbits);
      }
      uint16_t got = to16(f);
      if (got != want[k]) fail_msg("f32 0x%08x -> 0x%04x, want 0x%04x", u, got, want[k]);
    }
  }
  to16n(in, out, n);
  for (k = 0; k < n; k++)
    if (out[k] != want[k])
      fail_msg("_n: f32 0x%08x -> 0x%04x, want 0x%04x", bits(in[k]), out[k], want[k]);
  free(in);
  free(out);
  free(want);
}

static void test_bf16_rounding_sweep(void** st) {
  (void)st;
  static const uint16_t lows[] = {0, 1, 0x7fff, 0x8000, 0x8001, 0xffff};
  sweep(lows, sizeof lows / sizeof lows[0], 8, 7, px_f32_to_bf16, px_f32_to_bf16_n);
}

/* f16 drops 13 bits from normal f32s, 14-15 bits for the largest f16 subnormals and 16+
 * further down; the low values put the half-way bit at positions 12, 13, 14, 15 with
 * the kept LSB both even and odd, plus the one-ulp-around-half neighbours. */
static void test_f16_rounding_sweep(void** st) {
  (void)st;
  static const uint16_t lows[] = {0,      1,      0x0fff, 0x1000, 0x1001, 0x3000, 0x2000,
                                  0x6000, 0x4000, 0xc000, 0x7fff, 0x8000, 0x8001, 0xffff};
  sweep(lows, sizeof lows / sizeof lows[0], 5, 10, px_f32_to_f16, px_f32_to_f16_n);
}

/* Nextafter reasoning, no reference rounding: for every finite non-negative pattern h
 * and its successor h+1 (for the largest finite one: 2^(emax+1), i.e. inf), the exact
 * midpoint rounds to whichever of them is even, one f32 ulp above it to h+1, one below
 * to h; h's own value and its f32 neighbours round to h. Both signs. Covers ties to
 * even, subnormal results, overflow to inf (f16: 65520) and underflow to zero. */
static void check_ties(int ebits, int mbits, uint16_t (*to16)(float)) {
  uint16_t inf = (uint16_t)(0x7fffu >> mbits << mbits);
  for (uint32_t h = 0; h < inf; h++) {
    double v = ref_decode((uint16_t)h, ebits, mbits);
    double w = h + 1 == inf ? 2 * ref_decode((uint16_t)(h - (1u << mbits) + 1), ebits, mbits)
                            : ref_decode((uint16_t)(h + 1), ebits, mbits);
    float mid = (float)((v + w) / 2);
    assert_true((double)mid == (v + w) / 2); /* the midpoint is an f32 */
    uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
    for (int s = 0; s < 2; s++) {
      float sg = s ? -1.0f : 1.0f;
      uint16_t sb = s ? 0x8000 : 0;
      assert_int_equal(to16(sg * mid), sb | even);
      assert_int_equal(to16(sg * nextafterf(mid, INFINITY)), sb | (h + 1));
      assert_int_equal(to16(sg * nextafterf(mid, 0)), sb | h);
      assert_int_equal(to16(sg * (float)v), sb | h);
      if (v > 0) assert_int_equal(to16(sg * nextafterf((float)v, 0)), sb | h);
      assert_int_equal(to16(sg * nextafterf((float)v, INFINITY)), sb | h);
    }
  }
}

static void test_bf16_ties(void** st) {
  (void)st;
  check_ties(8, 7, px_f32_to_bf16);
  /* the largest finite f32 is above the last midpoint 0x1.ffp127 */
  assert_int_equal(px_f32_to_bf16(fbits(0x7f7fffffu)), 0x7f80);
  assert_int_equal(px_f32_to_bf16(fbits(0x7f7f7fffu)), 0x7f7f);
}

static void test_f16_ties_and_edges(void** st) {
  (void)st;
  check_ties(5, 10, px_f32_to_f16);
  assert_int_equal(px_f32_to_f16(65504.0f), 0x7bff);
  assert_int_equal(px_f32_to_f16(65519.996f), 0x7bff);
  assert_int_equal(px_f32_to_f16(65520.0f), 0x7c00);
  assert_int_equal(px_f32_to_f16(-1e10f), 0xfc00);
  assert_int_equal(px_f32_to_f16(fbits(0x7f7fffffu)), 0x7c00);
  assert_int_equal(px_f32_to_f16(0x1.0p-24f), 0x0001);
  assert_int_equal(px_f32_to_f16(0x1.0p-25f), 0x0000);              /* tie to even 0 */
  assert_int_equal(px_f32_to_f16(0x1.8p-24f), 0x0002);              /* tie to even 2 */
  assert_int_equal(px_f32_to_f16(-0x1.0p-26f), 0x8000);             /* -0 */
  assert_int_equal(px_f32_to_f16(fbits(0x00000001u)), 0x0000);      /* f32 subnormal */
  assert_int_equal(px_f32_to_f16(0x1.ff8p-15f), 0x03ff);            /* largest subnormal */
  assert_int_equal(px_f32_to_f16(0x1.ffcp-15f), 0x0400);            /* tie -> min normal */
  assert_int_equal(px_f32_to_f16(0x1.ffap-15f), 0x03ff);
  assert_int_equal(px_f32_to_f16(INFINITY), 0x7c00);
  assert_int_equal(px_f32_to_f16(-INFINITY), 0xfc00);
  /* NaN with only low payload bits stays NaN (not inf), sign kept */
  assert_int_equal(px_f32_to_f16(fbits(0xff800001u)), 0xfe00);
  assert_int_equal(px_f32_to_bf16(fbits(0x7f800001u)), 0x7fc0);
}

/* Each thread uses its own contexts; they are freed at thread exit (LeakSanitizer). */
struct thread_arg {
  const uint8_t* src;
  int ok;
};

static void test_dtype_table(void** state) {
  (void)state;
  assert_int_equal(px_dtype_size(PX_DT_F32), 4);
  assert_int_equal(px_dtype_size(PX_DT_BF16), 2);
  assert_int_equal(px_dtype_size(PX_DT_F16), 2);
  assert_int_equal(px_dtype_size(0), 0);
  assert_int_equal(px_dtype_size(4), 0);
  assert_int_equal(px_dtype_size(-1), 0);
  assert_int_equal(px_dtype_size(PX_DT_U64), 0); /* not a parameter type */
  assert_int_equal(px_dtype_size_any(PX_DT_U64), 8);
  assert_int_equal(px_dtype_size_any(PX_DT_I16), 2);
  assert_int_equal(px_dtype_size_any(PX_DT_F8_E5M2), 1);
  assert_int_equal(px_dtype_size_any(99), 0);
  assert_string_equal(px_dtype_name(PX_DT_F32), "f32");
  assert_string_equal(px_dtype_name(PX_DT_BF16), "bf16");
  assert_string_equal(px_dtype_name(PX_DT_F16), "f16");
  assert_string_equal(px_dtype_name(PX_DT_BOOL), "bool");
  assert_string_equal(px_dtype_name(0), "?");
  assert_string_equal(px_dtype_name(99), "?");
  assert_int_equal(px_dtype_parse("bf16"), PX_DT_BF16);
  assert_int_equal(px_dtype_parse("BF16"), PX_DT_BF16);
  assert_int_equal(px_dtype_parse("F8_E4M3"), PX_DT_F8_E4M3);
  assert_int_equal(px_dtype_parse("f33"), 0);
  assert_int_equal(px_dtype_parse(NULL), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_dtype_table),
      cmocka_unit_test(test_bf16_exhaustive),
      cmocka_unit_test(test_f16_exhaustive),
      cmocka_unit_test(test_bf16_rounding_sweep),
      cmocka_unit_test(test_f16_rounding_sweep),
      cmocka_unit_test(test_bf16_ties),
      cmocka_unit_test(test_f16_ties_and_edges),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
