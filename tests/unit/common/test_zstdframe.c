/* Unit tests of common/codec/zstdframe.c: round trips, hostile frames, per-thread contexts. */
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
static double gauss(void) {
  double u1 = ((double)(rnd() >> 11) + 1.0) * 0x1.0p-53;
  double u2 = (double)(rnd() >> 11) * 0x1.0p-53;
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* ---- zstd ----------------------------------------------------------------------------- */

/* 1 MiB of a realistic shuffled f32 delta: weights N(0, 0.02^2), one SGD step with
 * gradients N(0, 0.01^2) at lr 1e-3. */
static uint8_t* realistic_delta(size_t nbytes) {
  size_t n = nbytes / 4;
  float* w = malloc(n * 4);
  float* w2 = malloc(n * 4);
  uint32_t* d = malloc(n * 4);
  uint8_t* out = malloc(nbytes);
  assert_true(w && w2 && d && out);
  for (size_t i = 0; i < n; i++) {
    w[i] = (float)(0.02 * gauss());
    w2[i] = w[i] - 1e-3f * (float)(0.01 * gauss());
  }
  px_delta(w2, w, n, 4, d);
  px_zigzag_shuffle(d, n, 4, out);
  free(w);
  free(w2);
  free(d);
  return out;
}

static void test_zstd_round_trip(void** st) {
  (void)st;
  rng_state = 7;
  const size_t n = 1 << 20;
  uint8_t* src = realistic_delta(n);
  size_t cap = px_zstd_bound(n);
  assert_true(cap >= n);
  uint8_t* frame = malloc(cap);
  uint8_t* back = malloc(n);
  assert_true(frame && back);
  for (int level = 1; level <= 3; level += 2) {
    size_t fl = px_zstd_compress(src, n, frame, cap, level);
    assert_true(fl > 0);
    /* compression.md: the shuffled int delta compresses 1.46-2.44x at level 1 */
    assert_true(fl * 14 < n * 10);
    char err[128] = "";
    memset(back, 0, n);
    assert_int_equal(px_zstd_decompress(frame, fl, back, n, err, sizeof err), 0);
    assert_memory_equal(back, src, n);
    assert_string_equal(err, "");
  }
  /* small and empty inputs */
  static const size_t small[] = {0, 1, 7, 1000};
  for (size_t i = 0; i < sizeof small / sizeof small[0]; i++) {
    size_t k = small[i];
    size_t fl = px_zstd_compress(k ? src : NULL, k, frame, cap, 1);
    assert_true(fl > 0);
    assert_int_equal(px_zstd_decompress(frame, fl, k ? back : NULL, k, NULL, 0), 0);
    if (k) assert_memory_equal(back, src, k);
  }
  /* levels < 1 and above the maximum are rejected; so is a too small cap */
  assert_int_equal(px_zstd_compress(src, 1000, frame, cap, 0), 0);
  assert_int_equal(px_zstd_compress(src, 1000, frame, cap, -1), 0);
  assert_int_equal(px_zstd_compress(src, 1000, frame, cap, -5), 0);
  assert_int_equal(px_zstd_compress(src, 1000, frame, cap, ZSTD_maxCLevel() + 1), 0);
  assert_int_equal(px_zstd_compress(src, 1000, frame, 10, 1), 0);
  assert_int_equal(px_zstd_bound(SIZE_MAX), 0);
  free(src);
  free(frame);
  free(back);
}

/* Expects failure with a message that contains `what`. */
static void expect_reject(const void* src, size_t n, size_t expected, const char* what) {
  static uint8_t dst[1 << 17];
  char err[160] = "";
  assert_true(expected <= sizeof dst);
  int rc = px_zstd_decompress(src, n, dst, expected, err, sizeof err);
  if (rc != -1) fail_msg("accepted (%zu bytes, expected %zu), want: %s", n, expected, what);
  assert_true(strlen(err) > 0);
  assert_null(strchr(err, '\n'));
  if (!strstr(err, what)) fail_msg("message \"%s\" lacks \"%s\"", err, what);
}

/* Offset and size of a frame's Frame_Content_Size field (RFC 8878 3.1.1.1). */
static void fcs_field(const uint8_t* f, size_t* off, size_t* size) {
  uint8_t fhd = f[4];
  static const size_t did[4] = {0, 1, 2, 4};
  int single = (fhd >> 5) & 1;
  static const size_t fcs[4] = {0, 2, 4, 8};
  *off = 5 + (single ? 0 : 1) + did[fhd & 3];
  *size = (fhd >> 6) == 0 ? (single ? 1 : 0) : fcs[fhd >> 6];
}

static void test_zstd_hostile(void** st) {
  (void)st;
  rng_state = 11;
  const size_t n = 40000;
  uint8_t* src = realistic_delta(n);
  static uint8_t frame[1 << 17], frame70[1 << 17], buf[1 << 17], big[1 << 17];
  size_t fl = px_zstd_compress(src, n, frame, sizeof frame, 1);
  assert_true(fl > 16 && fl < n);

  /* every truncation */
  for (size_t k = 0; k < fl; k++) {
    static uint8_t scratch[40000];
    char err[160] = "";
    assert_int_equal(px_zstd_decompress(frame, k, scratch, n, err, sizeof err), -1);
    assert_true(strlen(err) > 0);
  }
  expect_reject(frame, fl - 1, n, "truncated");
  expect_reject(frame, 0, n, "empty");
  expect_reject(NULL, 0, 0, "empty");

  /* wrong expected size, both ways */
  expect_reject(frame, fl, n - 1, "declares 40000");
  expect_reject(frame, fl, n + 1, "declares 40000");
  expect_reject(frame, fl, 0, "declares 40000");

  /* trailing garbage, and a second frame after the first */
  memcpy(buf, frame, fl);
  buf[fl] = 0;
  expect_reject(buf, fl + 1, n, "1 trailing");
  memcpy(buf + fl, frame, 32);
  expect_reject(buf, fl + 32, n, "32 trailing");

  /* a frame without a content size */
  ZSTD_CCtx* c = ZSTD_createCCtx();
  assert_non_null(c);
  assert_false(ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, 0)));
  size_t ul = ZSTD_compress2(c, buf, sizeof buf, src, n);
  assert_false(ZSTD_isError(ul));
  expect_reject(buf, ul, n, "content size");

  /* a frame whose header claims a huge content size: hand-edited FCS field. 70000
   * bytes need the 4-byte field (256 + 65535 < 70000 < 2^32); the frame is single
   * segment, so the field follows the descriptor byte. */
  size_t off, fsz;
  const size_t m = 70000;
  uint8_t* src70 = realistic_delta(m);
  size_t bl = px_zstd_compress(src70, m, frame70, sizeof frame70, 1);
  assert_true(bl > 0);
  fcs_field(frame70, &off, &fsz);
  assert_int_equal(fsz, 4);
  memcpy(big, frame70, bl);
  memset(big + off, 0xff, 4); /* 4 GiB - 1 */
  expect_reject(big, bl, m, "declares 4294967295");
  /* rebuilt with an 8-byte field claiming 1 TiB */
  memcpy(big, frame70, off);
  big[4] = (uint8_t)(big[4] | 0xc0);
  uint64_t tib = UINT64_C(1) << 40;
  for (int b = 0; b < 8; b++) big[off + (size_t)b] = (uint8_t)(tib >> (8 * b));
  memcpy(big + off + 8, frame70 + off + 4, bl - off - 4);
  expect_reject(big, bl + 4, m, "declares 1099511627776");
  /* ... and one that lies by a byte about a size the caller does expect */
  memcpy(big, frame70, bl);
  big[off] = (uint8_t)((m + 1) & 0xff);
  big[off + 1] = (uint8_t)((m + 1) >> 8);
  big[off + 2] = (uint8_t)((m + 1) >> 16);
  big[off + 3] = 0;
  expect_reject(big, bl, m + 1, "corrupt");

  /* a window larger than 2^24 is refused; exactly 2^24 is fine. 600000 bytes at level
   * 1 use a 2^19 window, smaller than the content: the frame has a Window_Descriptor. */
  {
    const size_t wn = 600000;
    uint8_t* wsrc = realistic_delta(wn);
    uint8_t* wf = malloc(px_zstd_bound(wn));
    uint8_t* wout = malloc(wn);
    assert_true(wf && wout);
    size_t wl = px_zstd_compress(wsrc, wn, wf, px_zstd_bound(wn), 1);
    assert_true(wl > 0);
    assert_int_equal(wf[4] & 0x20, 0); /* not single segment */
    char err[160] = "";
    wf[5] = (uint8_t)((27 - 10) << 3);
    assert_int_equal(px_zstd_decompress(wf, wl, wout, wn, err, sizeof err), -1);
    assert_non_null(strstr(err, "window"));
    wf[5] = (uint8_t)(((24 - 10) << 3) | 1); /* 2^24 + 2^21 */
    assert_int_equal(px_zstd_decompress(wf, wl, wout, wn, err, sizeof err), -1);
    wf[5] = (uint8_t)((24 - 10) << 3);
    assert_int_equal(px_zstd_decompress(wf, wl, wout, wn, NULL, 0), 0);
    assert_memory_equal(wout, wsrc, wn);
    free(wsrc);
    free(wf);
    free(wout);
  }

  /* skippable frame, bad magic, random bytes */
  uint8_t skip[12] = {0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4};
  expect_reject(skip, sizeof skip, 0, "skippable");
  expect_reject(skip, 3, 0, "too short");
  for (int t = 0; t < 2000; t++) {
    size_t len = 1 + rnd() % 300;
    for (size_t i = 0; i < len; i++) buf[i] = (uint8_t)rnd();
    if (t & 1 && len >= 4) memcpy(buf, frame, 4); /* valid magic, random rest */
    expect_reject(buf, len, (size_t)(rnd() % 1000), "zstd");
  }

  /* corrupted real frames: must not crash or overrun (ASan); a corruption inside a
   * raw or RLE block can still decode, so the result itself is not asserted */
  for (int t = 0; t < 2000; t++) {
    memcpy(buf, frame, fl);
    int flips = 1 + (int)(rnd() % 4);
    for (int f = 0; f < flips; f++) buf[rnd() % fl] ^= (uint8_t)(1u << (rnd() % 8));
    static uint8_t scratch[40000];
    char err[64];
    int rc = px_zstd_decompress(buf, fl, scratch, n, err, sizeof err);
    assert_true(rc == 0 || rc == -1);
  }

  /* a short err buffer truncates; NULL err is fine */
  char tiny[8];
  assert_int_equal(px_zstd_decompress(frame, fl, buf, n + 1, tiny, sizeof tiny), -1);
  assert_int_equal(strlen(tiny), 7);
  assert_int_equal(px_zstd_decompress(frame, fl, buf, n + 1, NULL, 0), -1);
  assert_int_equal(px_zstd_decompress(frame, fl, buf, n + 1, tiny, 0), -1);

  ZSTD_freeCCtx(c);
  free(src70);
  free(src);
}

/* Each thread uses its own contexts; they are freed at thread exit (LeakSanitizer). */
struct thread_arg {
  const uint8_t* src;
  int ok;
};

static void* zstd_thread(void* p) {
  struct thread_arg* a = p;
  uint8_t frame[20000], back[16384];
  a->ok = 1;
  for (int i = 0; i < 20; i++) {
    size_t len = 1024 + 700 * (size_t)i;
    size_t fl = px_zstd_compress(a->src + i, len, frame, sizeof frame, 1 + i % 3);
    if (!fl || px_zstd_decompress(frame, fl, back, len, NULL, 0) != 0 ||
        memcmp(back, a->src + i, len) != 0)
      a->ok = 0;
  }
  return NULL;
}

static void test_zstd_threads(void** st) {
  (void)st;
  rng_state = 3;
  uint8_t* src = realistic_delta(1 << 16);
  pthread_t t[4];
  struct thread_arg a[4];
  for (int i = 0; i < 4; i++) {
    a[i].src = src;
    a[i].ok = 0;
    assert_int_equal(pthread_create(&t[i], NULL, zstd_thread, &a[i]), 0);
  }
  for (int i = 0; i < 4; i++) {
    assert_int_equal(pthread_join(t[i], NULL), 0);
    assert_true(a[i].ok);
  }
  free(src);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_zstd_round_trip),
      cmocka_unit_test(test_zstd_hostile),
      cmocka_unit_test(test_zstd_threads),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
