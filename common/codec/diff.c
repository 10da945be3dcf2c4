/* Integer delta, zigzag and byte-shuffle transforms on u16 / u32 words (diff.h).
 *
 * Written for gcc -O2 auto-vectorisation (SSE2): one loop per width, restrict-qualified
 * parameters so no runtime alias checks are needed, and a main loop whose trip count is
 * a multiple of BLK (gcc 12's -O2 "very cheap" cost model vectorises nothing else)
 * followed by a scalar tail. Word pointers are declared with aligned(1) and may_alias:
 * callers pass float arrays and byte buffers from the wire, so the words may be
 * unaligned and their effective type may be float.
 * No assert() on width: in gcc 12 an inlined assert before the loops stops their
 * vectorisation, so a bad width is documented as a no-op instead. */
#include "codec/diff.h"

#define BLK 32

typedef uint16_t w16 __attribute__((aligned(1), may_alias));
typedef uint32_t w32 __attribute__((aligned(1), may_alias));

static inline uint16_t zz16(uint16_t w) { return (uint16_t)((w << 1) ^ (0u - (w >> 15))); }
static inline uint32_t zz32(uint32_t w) { return (w << 1) ^ (0u - (w >> 31)); }
static inline uint16_t unzz16(uint16_t z) { return (uint16_t)((z >> 1) ^ (0u - (z & 1u))); }
static inline uint32_t unzz32(uint32_t z) { return (z >> 1) ^ (0u - (z & 1u)); }

/* Runs BODY for i in [0, n): first up to a multiple of BLK, then the tail. */
#define FOR_EACH(n, BODY)                       \
  do {                                          \
    size_t m_ = (n) & ~(size_t)(BLK - 1), i;    \
    for (i = 0; i < m_; i++) { BODY; }          \
    for (; i < (n); i++) { BODY; }              \
  } while (0)

/* ---- delta -------------------------------------------------------------------------- */

static void sub16(const w16* restrict a, const w16* restrict b, size_t n, w16* restrict d) {
  FOR_EACH(n, d[i] = (uint16_t)(a[i] - b[i]));
}
static void sub32(const w32* restrict a, const w32* restrict b, size_t n, w32* restrict d) {
  FOR_EACH(n, d[i] = a[i] - b[i]);
}
static void add16(const w16* restrict a, const w16* restrict b, size_t n, w16* restrict d) {
  FOR_EACH(n, d[i] = (uint16_t)(a[i] + b[i]));
}
static void add32(const w32* restrict a, const w32* restrict b, size_t n, w32* restrict d) {
  FOR_EACH(n, d[i] = a[i] + b[i]);
}
static void inc16(w16* restrict acc, const w16* restrict d, size_t n) {
  FOR_EACH(n, acc[i] = (uint16_t)(acc[i] + d[i]));
}
static void inc32(w32* restrict acc, const w32* restrict d, size_t n) {
  FOR_EACH(n, acc[i] += d[i]);
}

void pmx_delta(const void* new_, const void* base, size_t n, int width, void* d) {
  if (n == 0) return;
  if (width == 2) sub16(new_, base, n, d);
  else if (width == 4) sub32(new_, base, n, d);
}

void pmx_delta_add(void* acc, const void* d, size_t n, int width) {
  if (n == 0) return;
  if (width == 2) inc16(acc, d, n);
  else if (width == 4) inc32(acc, d, n);
}

void pmx_delta_apply(const void* base, const void* d, size_t n, int width, void* out) {
  if (n == 0) return;
  if (out == base) { /* in place: base and out must not both be restrict */
    pmx_delta_add(out, d, n, width);
  } else if (width == 2) {
    add16(base, d, n, out);
  } else if (width == 4) {
    add32(base, d, n, out);
  }
}

/* ---- zigzag + shuffle --------------------------------------------------------------- */

static void zzsh16(const w16* restrict d, size_t n, uint8_t* restrict p0, uint8_t* restrict p1) {
  FOR_EACH(n, uint16_t z = zz16(d[i]); p0[i] = (uint8_t)z; p1[i] = (uint8_t)(z >> 8));
}
static void zzsh32(const w32* restrict d, size_t n, uint8_t* restrict p0, uint8_t* restrict p1,
                   uint8_t* restrict p2, uint8_t* restrict p3) {
  FOR_EACH(n, uint32_t z = zz32(d[i]); p0[i] = (uint8_t)z; p1[i] = (uint8_t)(z >> 8);
           p2[i] = (uint8_t)(z >> 16); p3[i] = (uint8_t)(z >> 24));
}
static void unzzsh16(const uint8_t* restrict p0, const uint8_t* restrict p1, size_t n,
                     w16* restrict d) {
  FOR_EACH(n, d[i] = unzz16((uint16_t)(p0[i] | p1[i] << 8)));
}
static void unzzsh32(const uint8_t* restrict p0, const uint8_t* restrict p1,
                     const uint8_t* restrict p2, const uint8_t* restrict p3, size_t n,
                     w32* restrict d) {
  FOR_EACH(n, d[i] = unzz32((uint32_t)p0[i] | (uint32_t)p1[i] << 8 | (uint32_t)p2[i] << 16 |
                            (uint32_t)p3[i] << 24));
}

static void sh16(const w16* restrict s, size_t n, uint8_t* restrict p0, uint8_t* restrict p1) {
  FOR_EACH(n, uint16_t w = s[i]; p0[i] = (uint8_t)w; p1[i] = (uint8_t)(w >> 8));
}
static void sh32(const w32* restrict s, size_t n, uint8_t* restrict p0, uint8_t* restrict p1,
                 uint8_t* restrict p2, uint8_t* restrict p3) {
  FOR_EACH(n, uint32_t w = s[i]; p0[i] = (uint8_t)w; p1[i] = (uint8_t)(w >> 8);
           p2[i] = (uint8_t)(w >> 16); p3[i] = (uint8_t)(w >> 24));
}
static void unsh16(const uint8_t* restrict p0, const uint8_t* restrict p1, size_t n,
                   w16* restrict d) {
  FOR_EACH(n, d[i] = (uint16_t)(p0[i] | p1[i] << 8));
}
static void unsh32(const uint8_t* restrict p0, const uint8_t* restrict p1,
                   const uint8_t* restrict p2, const uint8_t* restrict p3, size_t n,
                   w32* restrict d) {
  FOR_EACH(n, d[i] = (uint32_t)p0[i] | (uint32_t)p1[i] << 8 | (uint32_t)p2[i] << 16 |
                     (uint32_t)p3[i] << 24);
}

void pmx_zigzag_shuffle(const void* d, size_t n, int width, uint8_t* out) {
  if (n == 0) return;
  if (width == 2) zzsh16(d, n, out, out + n);
  else if (width == 4) zzsh32(d, n, out, out + n, out + 2 * n, out + 3 * n);
}

void pmx_unshuffle_unzigzag(const uint8_t* in, size_t n, int width, void* d) {
  if (n == 0) return;
  if (width == 2) unzzsh16(in, in + n, n, d);
  else if (width == 4) unzzsh32(in, in + n, in + 2 * n, in + 3 * n, n, d);
}

void pmx_shuffle(const void* src, size_t n, int width, uint8_t* out) {
  if (n == 0) return;
  if (width == 2) sh16(src, n, out, out + n);
  else if (width == 4) sh32(src, n, out, out + n, out + 2 * n, out + 3 * n);
}

void pmx_unshuffle(const uint8_t* in, size_t n, int width, void* out) {
  if (n == 0) return;
  if (width == 2) unsh16(in, in + n, n, out);
  else if (width == 4) unsh32(in, in + n, in + 2 * n, in + 3 * n, n, out);
}
