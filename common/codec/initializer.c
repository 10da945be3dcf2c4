/* Seeded initializers (initializer.h).
 *
 * The initializers are counter based: the k-th 64-bit random word of a tensor is
 * splitmix64's output function applied to mix(seed) + (k + 1) * golden, with no state
 * carried between elements. Element i of a NORMAL tensor uses words 2i and 2i+1, other
 * kinds use word i. Client and server must compute the same floats bit for bit, so the
 * arithmetic is plain double (the build disables FMA contraction) and the formulas below
 * are part of the wire contract: changing them changes every initialised tensor. */
#include "codec/initializer.h"

#include <math.h>

#define GOLDEN UINT64_C(0x9E3779B97F4A7C15)

static inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
  return z ^ (z >> 31);
}

static inline uint64_t word(uint64_t base, uint64_t k) { return mix64(base + (k + 1) * GOLDEN); }

/* 53 random bits as a double in (0, 1] (never 0: it goes into log). */
static inline double unit_open0(uint64_t w) { return (double)((w >> 11) + 1) * 0x1.0p-53; }
/* 53 random bits as a double in [0, 1). */
static inline double unit_open1(uint64_t w) { return (double)(w >> 11) * 0x1.0p-53; }

int px_init_fill_f32(float* dst, uint64_t first, size_t n, int kind, float a, float b,
                      uint64_t seed) {
  const uint64_t base = mix64(seed ^ UINT64_C(0x706D78696E697421)); /* "pmxinit!" */
  switch (kind) {
    case PX_FILL_ZEROS:
      for (size_t j = 0; j < n; j++) dst[j] = 0.0f;
      return 0;
    case PX_FILL_CONSTANT:
      for (size_t j = 0; j < n; j++) dst[j] = a;
      return 0;
    case PX_FILL_NORMAL: {
      const double two_pi = 6.283185307179586476925286766559;
      for (size_t j = 0; j < n; j++) {
        uint64_t i = first + j;
        double u1 = unit_open0(word(base, 2 * i));
        double u2 = unit_open0(word(base, 2 * i + 1));
        double z = sqrt(-2.0 * log(u1)) * cos(two_pi * u2);
        dst[j] = (float)((double)a + (double)b * z);
      }
      return 0;
    }
    case PX_FILL_UNIFORM: {
      /* Rounding to float can reach b from below; keep the result in [a, b). */
      const float below_b = nextafterf(b, -INFINITY);
      for (size_t j = 0; j < n; j++) {
        double u = unit_open1(word(base, first + j));
        float v = (float)((double)a + ((double)b - (double)a) * u);
        if (b > a && v >= b) v = below_b;
        dst[j] = v;
      }
      return 0;
    }
    default:
      return -1;
  }
}
