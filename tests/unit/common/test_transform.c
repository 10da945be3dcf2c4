/* Unit tests of common/codec/transform.c: deltas, zigzag and byte shuffle. */
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

/* splitmix64: deterministic test data */
static uint64_t rng_state;
static uint64_t rnd(void) {
  uint64_t z = (rng_state += UINT64_C(0x9E3779B97F4A7C15));
  z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
  return z ^ (z >> 31);
}

/* ---- diff transforms ---------------------------------------------------------------- */

static const uint32_t specials[] = {0, 1, 2, 0x7fffffffu, 0x80000000u, 0xfffffffeu, 0xffffffffu,
                                    0x3c23d70au, 0xbc23d70au, 0x7f800000u, 0x7fc00000u};
#define NSPECIAL (sizeof specials / sizeof specials[0])

static uint32_t word_at(const uint8_t* p, size_t i, int width) {
  if (width == 2) return (uint32_t)p[2 * i] | (uint32_t)p[2 * i + 1] << 8;
  return (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 | (uint32_t)p[4 * i + 2] << 16 |
         (uint32_t)p[4 * i + 3] << 24;
}

static void fill_words(uint8_t* p, size_t n, int width) {
  /* every (special, special) pair appears in the first NSPECIAL^2 elements of the pair
   * (p, q) filled with index i and i / NSPECIAL; the rest random */
  static int which;
  which ^= 1;
  for (size_t i = 0; i < n * (size_t)width; i++) p[i] = (uint8_t)rnd();
  for (size_t i = 0; i < n && i < NSPECIAL * NSPECIAL; i++) {
    uint32_t v = specials[which ? i % NSPECIAL : i / NSPECIAL];
    if (width == 2) v = (v >> 16) ^ v;
    for (int b = 0; b < width; b++) p[i * (size_t)width + (size_t)b] = (uint8_t)(v >> (8 * b));
  }
}

static void test_delta_round_trip(void** st) {
  (void)st;
  rng_state = 1;
  static const size_t sizes[] = {0, 1, 31, 32, 33, 121, 1000, 4099};
  for (int width = 2; width <= 4; width += 2) {
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
      size_t n = sizes[s], nb = n * (size_t)width;
      /* +1: the word buffers are deliberately misaligned */
      uint8_t* m = malloc(6 * (nb + 1) + 1);
      assert_non_null(m);
      uint8_t *v0 = m + 1, *v1 = v0 + nb + 1, *v2 = v1 + nb + 1, *d = v2 + nb + 1,
              *e = d + nb + 1, *o = e + nb + 1;
      fill_words(v0, n, width);
      fill_words(v1, n, width);
      fill_words(v2, n, width);
      uint32_t mask = width == 2 ? 0xffffu : 0xffffffffu;

      px_delta(v1, v0, n, width, d);
      for (size_t i = 0; i < n; i++)
        assert_int_equal(word_at(d, i, width),
                         (word_at(v1, i, width) - word_at(v0, i, width)) & mask);
      px_delta_apply(v0, d, n, width, o);
      if (nb) assert_memory_equal(o, v1, nb);
      memcpy(o, v0, nb);
      px_delta_apply(o, d, n, width, o); /* in place */
      if (nb) assert_memory_equal(o, v1, nb);
      memcpy(o, v0, nb);
      px_delta_add(o, d, n, width);
      if (nb) assert_memory_equal(o, v1, nb);

      /* composition: delta(v2, v0) == delta(v2, v1) + delta(v1, v0) */
      px_delta(v2, v1, n, width, e);
      px_delta_add(e, d, n, width);
      px_delta(v2, v0, n, width, o);
      if (nb) assert_memory_equal(o, e, nb);

      /* zigzag + shuffle inverts, and matches the definition */
      px_zigzag_shuffle(d, n, width, e);
      for (size_t i = 0; i < n; i++) {
        uint32_t w = word_at(d, i, width), top = w >> (8 * width - 1);
        uint32_t z = ((w << 1) ^ (0u - top)) & mask;
        for (int b = 0; b < width; b++)
          assert_int_equal(e[(size_t)b * n + i], (uint8_t)(z >> (8 * b)));
      }
      memset(o, 0xa5, nb);
      px_unshuffle_unzigzag(e, n, width, o);
      if (nb) assert_memory_equal(o, d, nb);

      /* plain shuffle inverts */
      px_shuffle(v2, n, width, e);
      for (size_t i = 0; i < n; i++)
        for (int b = 0; b < width; b++)
          assert_int_equal(e[(size_t)b * n + i], v2[i * (size_t)width + (size_t)b]);
      memset(o, 0x5a, nb);
      px_unshuffle(e, n, width, o);
      if (nb) assert_memory_equal(o, v2, nb);
      free(m);
    }
  }
}

static void test_wraparound(void** st) {
  (void)st;
  uint32_t nw[4] = {0, 0xffffffffu, 0x80000000u, 5};
  uint32_t bw[4] = {0xffffffffu, 0, 0x7fffffffu, 5};
  uint32_t d[4], out[4];
  px_delta(nw, bw, 4, 4, d);
  assert_int_equal(d[0], 1);
  assert_int_equal(d[1], 0xffffffffu);
  assert_int_equal(d[2], 1);
  assert_int_equal(d[3], 0);
  px_delta_apply(bw, d, 4, 4, out);
  assert_memory_equal(out, nw, sizeof nw);
  uint16_t n16[3] = {0, 0xffff, 1}, b16[3] = {0xffff, 1, 0xffff}, d16[3], o16[3];
  px_delta(n16, b16, 3, 2, d16);
  assert_int_equal(d16[0], 1);
  assert_int_equal(d16[1], 0xfffe);
  assert_int_equal(d16[2], 2);
  px_delta_apply(b16, d16, 3, 2, o16);
  assert_memory_equal(o16, n16, sizeof n16);
}

static void test_shuffle_layout(void** st) {
  (void)st;
  const uint32_t w4[3] = {0x04030201u, 0x08070605u, 0x0c0b0a09u};
  const uint8_t want4[12] = {1, 5, 9, 2, 6, 10, 3, 7, 11, 4, 8, 12};
  uint8_t out[12];
  px_shuffle(w4, 3, 4, out);
  assert_memory_equal(out, want4, 12);
  const uint16_t w2[3] = {0x0201, 0x0403, 0x0605};
  const uint8_t want2[6] = {1, 3, 5, 2, 4, 6};
  px_shuffle(w2, 3, 2, out);
  assert_memory_equal(out, want2, 6);

  /* zigzag: 0, -1, 1, -2, INT_MAX, INT_MIN -> 0, 1, 2, 3, 0xfffffffe, 0xffffffff */
  const uint32_t d4[6] = {0, 0xffffffffu, 1, 0xfffffffeu, 0x7fffffffu, 0x80000000u};
  const uint8_t zz4[24] = {0, 1, 2, 3, 0xfe, 0xff, 0, 0, 0, 0, 0xff, 0xff,
                           0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0xff, 0xff};
  uint8_t z[24];
  px_zigzag_shuffle(d4, 6, 4, z);
  assert_memory_equal(z, zz4, 24);
  const uint16_t d2[3] = {0xffff, 1, 0x8000};
  const uint8_t zz2[6] = {1, 2, 0xff, 0, 0, 0xff};
  px_zigzag_shuffle(d2, 3, 2, z);
  assert_memory_equal(z, zz2, 6);
  uint16_t back[3];
  px_unshuffle_unzigzag(z, 3, 2, back);
  assert_memory_equal(back, d2, sizeof d2);

  /* a bad width and n == 0 do nothing */
  memset(out, 0x77, sizeof out);
  px_shuffle(w4, 3, 3, out);
  px_delta(w4, w4, 3, 8, out);
  for (size_t i = 0; i < sizeof out; i++) assert_int_equal(out[i], 0x77);
  px_shuffle(NULL, 0, 4, NULL);
  px_unshuffle(NULL, 0, 2, NULL);
  px_delta(NULL, NULL, 0, 4, NULL);
  px_delta_apply(NULL, NULL, 0, 2, NULL);
  px_f32_to_bf16_n(NULL, NULL, 0);
}

/* Each thread uses its own contexts; they are freed at thread exit (LeakSanitizer). */
struct thread_arg {
  const uint8_t* src;
  int ok;
};

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_delta_round_trip),
      cmocka_unit_test(test_wraparound),
      cmocka_unit_test(test_shuffle_layout),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
