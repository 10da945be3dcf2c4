/* Integer delta, zigzag and byte-shuffle transforms on u16 / u32 words (transform.h).
 *
 * Written for gcc -O2 auto-vectorisation (SSE2): one loop per width, restrict-qualified
 * parameters so no runtime alias checks are needed, and a main loop whose trip count is
 * a multiple of BLK (gcc 12's -O2 "very cheap" cost model vectorises nothing else)
 * followed by a scalar tail. Word pointers are declared with aligned(1) and may_alias:
 * callers pass float arrays and byte buffers from the wire, so the words may be
 * unaligned and their effective type may be float.
 * No assert() on width: in gcc 12 an inlined assert before the loops stops their
 * vectorisation, so a bad width is documented as a no-op instead. */
#include "codec/transform.h"

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

void px_delta(const void* new_, const void* base, size_t n, int width, void* d) {
  if (n == 0) return;
  if (width == 2) sub16(new_, base, n, d);
  else if (width == 4) sub32(new_, base, n, d);
}

void px_delta_add(void* acc, const void* d, size_t n, int width) {
  if (n == 0) return;
  if (width == 2) inc16(acc, d, n);
  else if (width == 4) inc32(acc, d, n);
}

void px_delta_apply(const void* base, const void* d, size_t n, int width, void* out) {
  if (n == 0) return;
  if (out == base) { /* in place: base and out must not both be restrict */
    px_delta_add(out, d, n, width);
  } else if (width == 2) {
    add16(base, d, n, out);
  } else if (width == 4) {
    add32(base, d, n, out);
  }
}

/* ---- zigzag + shuffle ---------------------------------------------------------------
 * The byte planes are gathered / scattered with byte loads and stores (s[4*i + b]):
 * gcc turns those into SSE2 interleave permutes, 2.5-3x faster than extracting bytes
 * from words with shifts. Zigzag needs whole words, so it runs over a block of ZB words
 * in a stack buffer (L1 resident) that is then shuffled as bytes; the inverse
 * unshuffles into the output and unzigzags it in place, block by block. */

#define ZB 1024 /* words per zigzag block: 4 KiB on the stack */

static void gather2(const uint8_t* restrict s, size_t n, uint8_t* restrict p0,
                    uint8_t* restrict p1) {
  FOR_EACH(n, p0[i] = s[2 * i]; p1[i] = s[2 * i + 1]);
}
static void gather4(const uint8_t* restrict s, size_t n, uint8_t* restrict p0,
                    uint8_t* restrict p1, uint8_t* restrict p2, uint8_t* restrict p3) {
  FOR_EACH(n, p0[i] = s[4 * i]; p1[i] = s[4 * i + 1]; p2[i] = s[4 * i + 2]; p3[i] = s[4 * i + 3]);
}
static void scatter2(const uint8_t* restrict p0, const uint8_t* restrict p1, size_t n,
                     uint8_t* restrict d) {
  FOR_EACH(n, d[2 * i] = p0[i]; d[2 * i + 1] = p1[i]);
}
static void scatter4(const uint8_t* restrict p0, const uint8_t* restrict p1,
                     const uint8_t* restrict p2, const uint8_t* restrict p3, size_t n,
                     uint8_t* restrict d) {
  FOR_EACH(n, d[4 * i] = p0[i]; d[4 * i + 1] = p1[i]; d[4 * i + 2] = p2[i]; d[4 * i + 3] = p3[i]);
}

static void zz16_n(const w16* restrict s, size_t n, uint16_t* restrict t) {
  FOR_EACH(n, t[i] = zz16(s[i]));
}
static void zz32_n(const w32* restrict s, size_t n, uint32_t* restrict t) {
  FOR_EACH(n, t[i] = zz32(s[i]));
}
static void unzz16_n(w16* restrict t, size_t n) { FOR_EACH(n, t[i] = unzz16(t[i])); }
static void unzz32_n(w32* restrict t, size_t n) { FOR_EACH(n, t[i] = unzz32(t[i])); }

static void zzsh16(const uint8_t* d, size_t n, uint8_t* out) {
  uint16_t t[ZB];
  for (size_t i = 0; i < n; i += ZB) {
    size_t k = n - i < ZB ? n - i : ZB;
    zz16_n((const w16*)(d + 2 * i), k, t);
    gather2((const uint8_t*)t, k, out + i, out + n + i);
  }
}
static void zzsh32(const uint8_t* d, size_t n, uint8_t* out) {
  uint32_t t[ZB];
  for (size_t i = 0; i < n; i += ZB) {
    size_t k = n - i < ZB ? n - i : ZB;
    zz32_n((const w32*)(d + 4 * i), k, t);
    gather4((const uint8_t*)t, k, out + i, out + n + i, out + 2 * n + i, out + 3 * n + i);
  }
}
static void unzzsh16(const uint8_t* in, size_t n, uint8_t* d) {
  for (size_t i = 0; i < n; i += ZB) {
    size_t k = n - i < ZB ? n - i : ZB;
    scatter2(in + i, in + n + i, k, d + 2 * i);
    unzz16_n((w16*)(d + 2 * i), k);
  }
}
static void unzzsh32(const uint8_t* in, size_t n, uint8_t* d) {
  for (size_t i = 0; i < n; i += ZB) {
    size_t k = n - i < ZB ? n - i : ZB;
    scatter4(in + i, in + n + i, in + 2 * n + i, in + 3 * n + i, k, d + 4 * i);
    unzz32_n((w32*)(d + 4 * i), k);
  }
}

void px_zigzag_shuffle(const void* d, size_t n, int width, uint8_t* out) {
  if (n == 0) return;
  if (width == 2) zzsh16(d, n, out);
  else if (width == 4) zzsh32(d, n, out);
}

void px_unshuffle_unzigzag(const uint8_t* in, size_t n, int width, void* d) {
  if (n == 0) return;
  if (width == 2) unzzsh16(in, n, d);
  else if (width == 4) unzzsh32(in, n, d);
}

void px_shuffle(const void* src, size_t n, int width, uint8_t* out) {
  if (n == 0) return;
  if (width == 2) gather2(src, n, out, out + n);
  else if (width == 4) gather4(src, n, out, out + n, out + 2 * n, out + 3 * n);
}

void px_unshuffle(const uint8_t* in, size_t n, int width, void* out) {
  if (n == 0) return;
  if (width == 2) scatter2(in, in + n, n, out);
  else if (width == 4) scatter4(in, in + n, in + 2 * n, in + 3 * n, n, out);
}
