/* Unit tests of server/backend/step_io.c (step_io.h): px_step_io_alloc (which buffers for
 * every dtype, view and encode combination, ncontrib and first cleared, distinct bufpool
 * buffers of the right size, all or nothing when a buffer cannot be had and the others
 * then given back), px_step_io_free (the buffers still set go back to the pool, the rest
 * not; io cleared so that a second free gives nothing back twice), and px_step_outputs
 * bit for bit against a reference written here (the copy of the new bits, the bf16 view
 * with rounding and NaN quieting, the zigzag-shuffled word deltas of both views) for
 * every subset of outputs, every parameter dtype, sizes around vector widths (the last
 * partial block), n = 0, an in-place bits[0], scratch slot 0 left alone, threads at once,
 * and the abort when scratch memory cannot be had (through px_backend_fatal of
 * server/backend/backend.c, the one function that file holds: its exact line, then SIGABRT). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend/step_io.h"
#include "codec/dtype.h"
#include "codec/transform.h"
#include "util/bufpool.h"
#include "util/log.h"
#include "util/scratch.h"

/* ---- reference ------------------------------------------------------------------------ */

static uint64_t g_rng;

static uint64_t rnd(void) {
  uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Special f32 bit patterns: zeros, infinities, NaNs (quiet, signalling, with payloads),
 * subnormals, the largest finite, rounding ties (even and odd) and near-ties. */
static const uint32_t k_special32[] = {
    0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0xffc00000u,
    0x7f800001u, 0xff800001u, 0x7fbfffffu, 0x7f812345u, 0x00000001u, 0x807fffffu,
    0x7f7fffffu, 0xff7fffffu, 0x3f808000u, 0x3f818000u, 0x3f807fffu, 0x3f808001u,
    0x7f7f8000u, 0x7f7f7fffu, 0x3f800000u, 0xbf800000u, 0x00008000u, 0x00018000u,
};
static const uint16_t k_special16[] = {0x0000, 0x8000, 0x7f80, 0xff80, 0x7fc0, 0x7c00,
                                       0xfc00, 0x7e00, 0x0001, 0x8001, 0x7fff, 0xffff};

/* n words of width w: random bits, specials mixed in, and runs of small differences. */
static void fill_words(void* p, size_t n, int w, uint64_t seed) {
  g_rng = seed;
  for (size_t i = 0; i < n; i++) {
    uint64_t r = rnd();
    if (w == 4) {
      uint32_t v = (uint32_t)r;
      if (r % 7 == 0) v = k_special32[(r >> 40) % (sizeof k_special32 / sizeof k_special32[0])];
      memcpy((uint8_t*)p + i * 4, &v, 4);
    } else {
      uint16_t v = (uint16_t)r;
      if (r % 7 == 0) v = k_special16[(r >> 40) % (sizeof k_special16 / sizeof k_special16[0])];
      memcpy((uint8_t*)p + i * 2, &v, 2);
    }
  }
}

/* new_ = old + a small or large change per word (modulo 2^(8w)), so that deltas of every
 * magnitude and sign occur; a few words equal. */
static void step_words(const void* old, void* new_, size_t n, int w, uint64_t seed) {
  g_rng = seed;
  for (size_t i = 0; i < n; i++) {
    uint64_t r = rnd();
    int64_t d = (r % 3 == 0) ? 0 : (r % 3 == 1) ? (int64_t)(r >> 50) - 8192 : (int64_t)(r >> 8);
    if (w == 4) {
      uint32_t v;
      memcpy(&v, (const uint8_t*)old + i * 4, 4);
      v = (uint32_t)(v + (uint32_t)d);
      memcpy((uint8_t*)new_ + i * 4, &v, 4);
    } else {
      uint16_t v;
      memcpy(&v, (const uint8_t*)old + i * 2, 2);
      v = (uint16_t)(v + (uint16_t)d);
      memcpy((uint8_t*)new_ + i * 2, &v, 2);
    }
  }
}

/* bf16 of the f32 pattern u: round to nearest even; NaN keeps its sign and top payload
 * and is quieted. */
static uint16_t ref_bf16(uint32_t u) {
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static void ref_bf16_n(const void* src, uint16_t* dst, size_t n) {
  for (size_t i = 0; i < n; i++) {
    uint32_t u;
    memcpy(&u, (const uint8_t*)src + i * 4, 4);
    dst[i] = ref_bf16(u);
  }
}

/* out = byte planes of zigzag(new_ - base), n words of width w. */
static void ref_enc(const void* new_, const void* base, size_t n, int w, uint8_t* out) {
  for (size_t i = 0; i < n; i++) {
    uint32_t z;
    if (w == 4) {
      uint32_t a, b;
      memcpy(&a, (const uint8_t*)new_ + i * 4, 4);
      memcpy(&b, (const uint8_t*)base + i * 4, 4);
      uint32_t d = a - b;
      z = (d << 1) ^ (0u - (d >> 31));
    } else {
      uint16_t a, b;
      memcpy(&a, (const uint8_t*)new_ + i * 2, 2);
      memcpy(&b, (const uint8_t*)base + i * 2, 2);
      uint16_t d = (uint16_t)(a - b);
      z = (uint16_t)(((uint32_t)d << 1) ^ (0u - ((uint32_t)d >> 15)));
    }
    for (int k = 0; k < w; k++) out[(size_t)k * n + i] = (uint8_t)(z >> (8 * k));
  }
}

/* What px_step_outputs must produce for a chunk (every output). */
typedef struct expect {
  uint8_t* bits0;
  uint16_t* bits1;
  uint8_t* enc0;
  uint8_t* enc1;
} expect;

static void expect_make(expect* e, int dtype, size_t n, const void* old, const void* new_) {
  const int w = (int)px_dtype_size(dtype);
  const size_t bytes = n * (size_t)w;
  e->bits0 = malloc(bytes + 1);
  e->enc0 = malloc(bytes + 1);
  e->bits1 = malloc(n * 2 + 2);
  e->enc1 = malloc(n * 2 + 1);
  assert_non_null(e->bits0);
  assert_non_null(e->enc0);
  assert_non_null(e->bits1);
  assert_non_null(e->enc1);
  memcpy(e->bits0, new_, bytes);
  ref_enc(new_, old, n, w, e->enc0);
  if (dtype == PX_DT_F32) {
    uint16_t* o16 = malloc(n * 2 + 2);
    assert_non_null(o16);
    ref_bf16_n(new_, e->bits1, n);
    ref_bf16_n(old, o16, n);
    ref_enc(e->bits1, o16, n, 2, e->enc1);
    free(o16);
  }
}

static void expect_free(expect* e) {
  free(e->bits0);
  free(e->bits1);
  free(e->enc0);
  free(e->enc1);
}

/* malloc'd output buffers of exactly their size (ASan sees any overrun), pre-filled. */
static void* out_buf(size_t bytes, uint8_t fill) {
  uint8_t* p = malloc(bytes ? bytes : 1);
  assert_non_null(p);
  memset(p, fill, bytes ? bytes : 1);
  return p;
}

static bool all_bytes(const void* p, size_t n, uint8_t v) {
  for (size_t i = 0; i < n; i++)
    if (((const uint8_t*)p)[i] != v) return false;
  return true;
}

static const px_step_io k_zero_io;

/* ---- px_step_io_alloc / px_step_io_free ------------------------------------------------ */

static void test_alloc_combinations(void** state) {
  (void)state;
  const int dtypes[] = {PX_DT_F32, PX_DT_BF16, PX_DT_F16};
  const size_t sizes[] = {1, 1000, 1024, 70000}; /* 70000 f32: 280 KB, a big-class buffer */
  for (size_t di = 0; di < 3; di++)
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
      for (int view1 = 0; view1 <= 1; view1++)
        for (int encode = 0; encode <= 1; encode++) {
          const int dt = dtypes[di];
          const size_t n = sizes[si], es = px_dtype_size(dt);
          px_step_io io;
          memset(&io, 0xa5, sizeof io); /* whatever it held before */
          px_step_io_alloc(&io, dt, n, view1, encode);
          const bool v1 = view1 && dt == PX_DT_F32;
          assert_int_equal(io.ncontrib, 0);
          assert_false(io.first);
          assert_non_null(io.bits[0]);
          if (v1) assert_non_null(io.bits[1]);
          else assert_null(io.bits[1]);
          if (encode) assert_non_null(io.enc[0]);
          else assert_null(io.enc[0]);
          if (encode && v1) assert_non_null(io.enc[1]);
          else assert_null(io.enc[1]);
          /* distinct, 64-byte aligned pool buffers that hold the chunk */
          void* p[4] = {io.bits[0], io.bits[1], io.enc[0], io.enc[1]};
          const size_t len[4] = {n * es, n * 2, n * es, n * 2};
          for (int a = 0; a < 4; a++) {
            if (!p[a]) continue;
            assert_int_equal((uintptr_t)p[a] % 64, 0);
            memset(p[a], a + 1, len[a]);
            for (int b = a + 1; b < 4; b++) assert_true(p[a] != p[b]);
          }
          for (int a = 0; a < 4; a++)
            if (p[a]) assert_true(all_bytes(p[a], len[a], (uint8_t)(a + 1)));
          io.ncontrib = 3;
          io.first = true;
          px_step_io_free(&io, dt, n);
          assert_memory_equal(&io, &k_zero_io, sizeof io);
        }
}

/* Takes up to max buffers of bytes from the pool. */
static void pool_take(size_t bytes, void** out, int max) {
  for (int i = 0; i < max; i++) {
    out[i] = px_buf_get(bytes);
    assert_non_null(out[i]);
  }
}

static bool same_set(void* const* a, void* const* b, int n) {
  for (int i = 0; i < n; i++) {
    bool found = false;
    for (int j = 0; j < n; j++) found = found || a[i] == b[j];
    if (!found) return false;
  }
  return true;
}

static void test_free_gives_back(void** state) {
  (void)state;
  const size_t n = 4096; /* f32: 16 KiB words, 8 KiB bf16 views: two pool classes */
  px_step_io io;
  px_step_io_alloc(&io, PX_DT_F32, n, true, true);
  assert_non_null(io.enc[1]);
  void* words[2] = {io.bits[0], io.enc[0]};
  void* views[2] = {io.bits[1], io.enc[1]};
  px_step_io_free(&io, PX_DT_F32, n);
  assert_memory_equal(&io, &k_zero_io, sizeof io);
  /* the pool hands the same buffers out again (its lists are last in, first out) */
  void* got_w[2];
  void* got_v[2];
  pool_take(n * 4, got_w, 2);
  pool_take(n * 2, got_v, 2);
  assert_true(same_set(words, got_w, 2));
  assert_true(same_set(views, got_v, 2));
  for (int i = 0; i < 2; i++) {
    px_buf_put(got_w[i], n * 4);
    px_buf_put(got_v[i], n * 2);
  }

  /* only those still set go back: the caller kept enc[1] (as publish adopts a buffer) */
  px_step_io_alloc(&io, PX_DT_F32, n, true, true);
  void* kept = io.enc[1];
  void* bits1 = io.bits[1];
  assert_non_null(kept);
  io.enc[1] = NULL;
  px_step_io_free(&io, PX_DT_F32, n);
  assert_memory_equal(&io, &k_zero_io, sizeof io);
  void* v0 = px_buf_get(n * 2);
  void* v1 = px_buf_get(n * 2);
  assert_ptr_equal(v0, bits1);
  assert_true(v1 != kept && v1 != bits1);
  px_buf_put(v1, n * 2);
  px_buf_put(v0, n * 2);
  px_buf_put(kept, n * 2);

  /* a second free of the cleared io gives nothing back twice */
  px_step_io_alloc(&io, PX_DT_BF16, n, false, true);
  void* mine[2] = {io.bits[0], io.enc[0]};
  px_step_io_free(&io, PX_DT_BF16, n);
  px_step_io_free(&io, PX_DT_BF16, n);
  assert_memory_equal(&io, &k_zero_io, sizeof io);
  void* again[3];
  pool_take(n * 2, again, 3);
  assert_true(same_set(mine, again, 2)); /* the first two are ours ... */
  assert_true(again[2] != again[0] && again[2] != again[1]); /* ... once each */
  for (int i = 0; i < 3; i++) px_buf_put(again[i], n * 2);

  /* free of an io that holds nothing */
  memset(&io, 0, sizeof io);
  px_step_io_free(&io, PX_DT_F16, n);
  assert_memory_equal(&io, &k_zero_io, sizeof io);
}

static void test_alloc_all_or_nothing(void** state) {
  (void)state;
  /* 40 Mi f32 words: 160 MiB is past the largest pool class (128 MiB), so bits[0] and
   * enc[0] cannot be had while the bf16 views (80 MiB) can. Prime the 128 MiB class with
   * two buffers: the failed alloc must take them and give both back. */
  const size_t n = 40u << 20;
  const size_t view_bytes = n * 2;
  void* primed[2];
  pool_take(view_bytes, primed, 2);
  px_buf_put(primed[0], view_bytes);
  px_buf_put(primed[1], view_bytes);

  px_step_io io;
  memset(&io, 0x5a, sizeof io);
  px_step_io_alloc(&io, PX_DT_F32, n, true, true);
  assert_memory_equal(&io, &k_zero_io, sizeof io);
  void* back[2];
  pool_take(view_bytes, back, 2);
  assert_true(same_set(primed, back, 2));
  px_buf_put(back[0], view_bytes);
  px_buf_put(back[1], view_bytes);

  /* without encoder inputs: bits[1] taken, then given back */
  memset(&io, 0x5a, sizeof io);
  px_step_io_alloc(&io, PX_DT_F32, n, true, false);
  assert_memory_equal(&io, &k_zero_io, sizeof io);
  void* one = px_buf_get(view_bytes);
  assert_true(one == primed[0] || one == primed[1]);
  px_buf_put(one, view_bytes);

  /* 16-bit words past the largest class */
  memset(&io, 0x5a, sizeof io);
  px_step_io_alloc(&io, PX_DT_BF16, 80u << 20, true, true);
  assert_memory_equal(&io, &k_zero_io, sizeof io);
  px_step_io_free(&io, PX_DT_BF16, 80u << 20); /* harmless on the cleared io */
  assert_memory_equal(&io, &k_zero_io, sizeof io);
}

/* ---- px_step_outputs --------------------------------------------------------------------- */

/* Runs px_step_outputs on the outputs of mask (1 bits[0], 2 bits[1], 4 enc[0], 8 enc[1])
 * in exact-size buffers and checks each against the reference; the others stay NULL. With
 * an old of NULL when no encoder input is wanted. */
static void check_outputs(int dtype, size_t n, const void* old, const void* new_, unsigned mask,
                          const expect* e) {
  const size_t w = px_dtype_size(dtype), bytes = n * w;
  const bool f32 = dtype == PX_DT_F32;
  px_step_io io = {0};
  if (mask & 1) io.bits[0] = out_buf(bytes, 0xcd);
  if (mask & 2) io.bits[1] = out_buf(n * 2, 0xcd);
  if (mask & 4) io.enc[0] = out_buf(bytes, 0xcd);
  if (mask & 8) io.enc[1] = out_buf(n * 2, 0xcd);
  void* ptrs[4] = {io.bits[0], io.bits[1], io.enc[0], io.enc[1]};
  const bool wants_old = (mask & 4) || (f32 && (mask & 8));
  px_step_outputs(dtype, n, wants_old ? old : NULL, new_, &io);
  /* the pointers are the caller's: none replaced, none added */
  assert_ptr_equal(io.bits[0], ptrs[0]);
  assert_ptr_equal(io.bits[1], ptrs[1]);
  assert_ptr_equal(io.enc[0], ptrs[2]);
  assert_ptr_equal(io.enc[1], ptrs[3]);
  if (mask & 1) assert_memory_equal(io.bits[0], e->bits0, bytes);
  if (mask & 4) assert_memory_equal(io.enc[0], e->enc0, bytes);
  if (f32) {
    if (mask & 2) assert_memory_equal(io.bits[1], e->bits1, n * 2);
    if (mask & 8) assert_memory_equal(io.enc[1], e->enc1, n * 2);
  } else {
    /* no bf16 view of a 16-bit tensor: its buffers are not written */
    if (mask & 2) assert_true(all_bytes(io.bits[1], n * 2, 0xcd));
    if (mask & 8) assert_true(all_bytes(io.enc[1], n * 2, 0xcd));
  }
  for (int i = 0; i < 4; i++) free(ptrs[i]);
}

static void test_outputs_f32_every_subset(void** state) {
  (void)state;
  const size_t n = 1000;
  uint32_t* old = malloc(n * 4);
  uint32_t* new_ = malloc(n * 4);
  assert_non_null(old);
  assert_non_null(new_);
  fill_words(old, n, 4, 11);
  step_words(old, new_, n, 4, 12);
  /* every special pattern appears as a new value too */
  for (size_t i = 0; i < sizeof k_special32 / sizeof k_special32[0]; i++) new_[i * 3] = k_special32[i];
  const uint32_t old_copy0 = old[0], new_copy5 = new_[5];
  expect e;
  expect_make(&e, PX_DT_F32, n, old, new_);
  /* the reference itself against the library's scalar conversion and the inverse
   * transform: the expectations are what the header describes */
  for (size_t i = 0; i < n; i++) {
    float f;
    memcpy(&f, &new_[i], 4);
    assert_int_equal(e.bits1[i], px_f32_to_bf16(f));
  }
  uint32_t* d = malloc(n * 4);
  uint32_t* back = malloc(n * 4);
  assert_non_null(d);
  assert_non_null(back);
  px_unshuffle_unzigzag(e.enc0, n, 4, d);
  px_delta_apply(old, d, n, 4, back);
  assert_memory_equal(back, new_, n * 4);
  free(d);
  free(back);

  for (unsigned mask = 0; mask < 16; mask++) check_outputs(PX_DT_F32, n, old, new_, mask, &e);
  /* the inputs are read only */
  assert_int_equal(old[0], old_copy0);
  assert_int_equal(new_[5], new_copy5);
  expect_free(&e);
  free(old);
  free(new_);
}

static void test_outputs_16bit_dtypes(void** state) {
  (void)state;
  const int dtypes[2] = {PX_DT_BF16, PX_DT_F16};
  const size_t n = 777;
  for (int k = 0; k < 2; k++) {
    uint16_t* old = malloc(n * 2);
    uint16_t* new_ = malloc(n * 2);
    assert_non_null(old);
    assert_non_null(new_);
    fill_words(old, n, 2, 21 + (uint64_t)k);
    step_words(old, new_, n, 2, 31 + (uint64_t)k);
    expect e;
    expect_make(&e, dtypes[k], n, old, new_);
    uint16_t* d = malloc(n * 2);
    uint16_t* back = malloc(n * 2);
    assert_non_null(d);
    assert_non_null(back);
    px_unshuffle_unzigzag(e.enc0, n, 2, d);
    px_delta_apply(old, d, n, 2, back);
    assert_memory_equal(back, new_, n * 2);
    free(d);
    free(back);
    for (unsigned mask = 0; mask < 16; mask++) check_outputs(dtypes[k], n, old, new_, mask, &e);
    expect_free(&e);
    free(old);
    free(new_);
  }
}

static void test_outputs_sizes(void** state) {
  (void)state;
  /* around every vector width and unroll the compiler may pick: the last partial block */
  const size_t sizes[] = {1,  2,  3,  4,  5,  7,  8,  9,  15,  16,  17,   31,   32,  33,
                          63, 64, 65, 127, 129, 255, 257, 1023, 1025, 4095, 4097, 65537};
  for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
    const size_t n = sizes[si];
    for (int dk = 0; dk < 2; dk++) {
      const int dt = dk == 0 ? PX_DT_F32 : PX_DT_F16;
      const int w = (int)px_dtype_size(dt);
      void* old = malloc(n * (size_t)w);
      void* new_ = malloc(n * (size_t)w);
      assert_non_null(old);
      assert_non_null(new_);
      fill_words(old, n, w, 100 + si);
      step_words(old, new_, n, w, 200 + si);
      expect e;
      expect_make(&e, dt, n, old, new_);
      check_outputs(dt, n, old, new_, 15, &e);
      check_outputs(dt, n, old, new_, 8 | 4, &e); /* encoder inputs from scratch views */
      check_outputs(dt, n, old, new_, 2, &e);
      expect_free(&e);
      free(old);
      free(new_);
    }
  }
}

static void test_outputs_zero_words(void** state) {
  (void)state;
  const int dtypes[] = {PX_DT_F32, PX_DT_BF16, PX_DT_F16};
  for (int k = 0; k < 3; k++) {
    uint8_t b0 = 0xcd, b1[2] = {0xcd, 0xcd}, e0 = 0xcd, e1[2] = {0xcd, 0xcd};
    uint8_t old = 0x11, new_ = 0x22;
    px_step_io io = {0};
    io.bits[0] = &b0;
    io.bits[1] = b1;
    io.enc[0] = &e0;
    io.enc[1] = e1;
    px_step_outputs(dtypes[k], 0, &old, &new_, &io);
    assert_int_equal(b0, 0xcd);
    assert_int_equal(e0, 0xcd);
    assert_true(all_bytes(b1, 2, 0xcd));
    assert_true(all_bytes(e1, 2, 0xcd));
    assert_ptr_equal(io.bits[0], &b0);
    assert_ptr_equal(io.enc[1], e1);
  }
  /* and an allocation of zero words is one that can be freed */
  px_step_io io;
  px_step_io_alloc(&io, PX_DT_F32, 0, true, true);
  if (io.bits[0]) px_step_outputs(PX_DT_F32, 0, "", "", &io);
  px_step_io_free(&io, PX_DT_F32, 0);
  assert_memory_equal(&io, &k_zero_io, sizeof io);
}

static void test_outputs_in_place(void** state) {
  (void)state;
  /* a backend whose new bits already are io->bits[0] (the cpu backend steps into it) */
  const size_t n = 3001;
  px_step_io io;
  px_step_io_alloc(&io, PX_DT_F32, n, true, true);
  assert_non_null(io.enc[1]);
  uint32_t* old = malloc(n * 4);
  assert_non_null(old);
  fill_words(old, n, 4, 41);
  step_words(old, io.bits[0], n, 4, 42);
  expect e;
  expect_make(&e, PX_DT_F32, n, old, io.bits[0]);
  px_step_outputs(PX_DT_F32, n, old, io.bits[0], &io);
  assert_memory_equal(io.bits[0], e.bits0, n * 4);
  assert_memory_equal(io.bits[1], e.bits1, n * 2);
  assert_memory_equal(io.enc[0], e.enc0, n * 4);
  assert_memory_equal(io.enc[1], e.enc1, n * 2);
  expect_free(&e);
  free(old);
  px_step_io_free(&io, PX_DT_F32, n);
}

static void test_outputs_scratch(void** state) {
  (void)state;
  /* slot 0 is not among px_scratch(1..3): what a caller keeps there survives */
  const size_t n = 20000;
  uint8_t* s0 = px_scratch(0, 4096);
  assert_non_null(s0);
  for (size_t i = 0; i < 4096; i++) s0[i] = (uint8_t)(i * 7 + 3);
  /* a large step, then a smaller one: stale scratch from the first does not show */
  for (int round = 0; round < 2; round++) {
    const size_t m = round == 0 ? n : 333;
    uint32_t* old = malloc(m * 4);
    uint32_t* new_ = malloc(m * 4);
    assert_non_null(old);
    assert_non_null(new_);
    fill_words(old, m, 4, 51 + (uint64_t)round);
    step_words(old, new_, m, 4, 61 + (uint64_t)round);
    expect e;
    expect_make(&e, PX_DT_F32, m, old, new_);
    check_outputs(PX_DT_F32, m, old, new_, 8, &e);
    check_outputs(PX_DT_F32, m, old, new_, 4 | 8, &e);
    check_outputs(PX_DT_F32, m, old, new_, 15, &e);
    expect_free(&e);
    free(old);
    free(new_);
  }
  assert_ptr_equal(px_scratch(0, 4096), s0);
  for (size_t i = 0; i < 4096; i++) assert_int_equal(s0[i], (uint8_t)(i * 7 + 3));
}

/* ---- threads --------------------------------------------------------------------------- */

#define NTHREADS 3
#define THREAD_ROUNDS 20

typedef struct thr_arg {
  int id;
  int bad;
} thr_arg;

static void* thr_main(void* p) {
  thr_arg* a = p;
  const size_t n = 5000 + (size_t)a->id * 101;
  uint32_t* old = malloc(n * 4);
  uint32_t* new_ = malloc(n * 4);
  uint16_t* o16 = malloc(n * 2);
  uint8_t* want0 = malloc(n * 4);
  uint16_t* want1 = malloc(n * 2);
  uint8_t* want_e1 = malloc(n * 2);
  if (!old || !new_ || !o16 || !want0 || !want1 || !want_e1) {
    a->bad = -1;
  } else {
    for (int r = 0; r < THREAD_ROUNDS && a->bad == 0; r++) {
      /* private rng state: fill by hand instead of the shared g_rng */
      uint64_t x = 0x1234567ull * (uint64_t)(a->id + 1) + (uint64_t)r;
      for (size_t i = 0; i < n; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        old[i] = (uint32_t)(x >> 32);
        new_[i] = old[i] + (uint32_t)((x >> 11) & 0xffff) - 0x8000u;
      }
      ref_enc(new_, old, n, 4, want0);
      ref_bf16_n(new_, want1, n);
      ref_bf16_n(old, o16, n);
      ref_enc(want1, o16, n, 2, want_e1);
      px_step_io io;
      px_step_io_alloc(&io, PX_DT_F32, n, true, true);
      if (!io.bits[0]) {
        a->bad = -2;
        break;
      }
      px_step_outputs(PX_DT_F32, n, old, new_, &io);
      if (memcmp(io.bits[0], new_, n * 4) != 0 || memcmp(io.bits[1], want1, n * 2) != 0 ||
          memcmp(io.enc[0], want0, n * 4) != 0 || memcmp(io.enc[1], want_e1, n * 2) != 0)
        a->bad = r + 1;
      px_step_io_free(&io, PX_DT_F32, n);
    }
  }
  free(old);
  free(new_);
  free(o16);
  free(want0);
  free(want1);
  free(want_e1);
  return NULL;
}

static void test_outputs_threads(void** state) {
  (void)state;
  pthread_t th[NTHREADS];
  thr_arg a[NTHREADS];
  for (int i = 0; i < NTHREADS; i++) {
    a[i] = (thr_arg){i, 0};
    assert_int_equal(pthread_create(&th[i], NULL, thr_main, &a[i]), 0);
  }
  for (int i = 0; i < NTHREADS; i++) assert_int_equal(pthread_join(th[i], NULL), 0);
  for (int i = 0; i < NTHREADS; i++)
    if (a[i].bad != 0) fail_msg("thread %d: round %d wrong (negative: no memory)", i, a[i].bad);
}

/* ---- no scratch memory: the process ends ------------------------------------------------ */

static int g_log_fd = -1;

static void pipe_sink(void* ctx, px_log_level level, const char* msg) {
  (void)ctx;
  (void)level;
  if (g_log_fd >= 0) {
    ssize_t r = write(g_log_fd, msg, strlen(msg));
    r = write(g_log_fd, "\n", 1);
    (void)r;
  }
}

/* Runs px_step_outputs(dtype, n, ..., io) in a child; returns its wait status and what it
 * logged (in log, cap bytes). */
static int run_child(int dtype, size_t n, px_step_io io, char* log, size_t cap) {
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    close(fds[0]);
    g_log_fd = fds[1];
    px_log_set_sink(pipe_sink, NULL, PX_LOG_ERROR);
    uint8_t dummy[8] = {0};
    px_step_outputs(dtype, n, dummy, dummy, &io);
    _exit(0); /* it should not return */
  }
  close(fds[1]);
  size_t got = 0;
  const int deadline_ms = 60000;
  int waited = 0;
  for (;;) {
    struct pollfd pf = {fds[0], POLLIN, 0};
    int pr = poll(&pf, 1, 100);
    if (pr > 0) {
      ssize_t r = read(fds[0], log + got, cap - 1 - got);
      if (r <= 0) break; /* EOF: the child is gone */
      got += (size_t)r;
      if (got >= cap - 1) break;
    } else if (pr == 0) {
      waited += 100;
      if (waited >= deadline_ms) break;
    } else if (errno != EINTR) {
      break;
    }
  }
  log[got] = 0;
  close(fds[0]);
  int st = 0;
  pid_t w;
  int tries = 0;
  while ((w = waitpid(pid, &st, WNOHANG)) == 0 && tries++ < 600) {
    struct pollfd none;
    poll(&none, 0, 100);
  }
  if (w == 0) {
    kill(pid, SIGKILL); /* our own child */
    waitpid(pid, &st, 0);
    fail_msg("the child did not end within 60 s");
  }
  assert_int_equal(w, pid);
  return st;
}

static void test_outputs_no_scratch_aborts(void** state) {
  (void)state;
  char log[1024];
  uint8_t enc[8];
  /* the words' delta: n 16-bit words need more scratch than any allocation can give */
  px_step_io io = {0};
  io.enc[0] = enc;
  int st = run_child(PX_DT_BF16, SIZE_MAX / 2, io, log, sizeof log);
  assert_true(WIFSIGNALED(st));
  assert_int_equal(WTERMSIG(st), SIGABRT);
  /* px_backend_fatal's whole line (backend/backend.c): one error line, then abort */
  assert_string_equal(log, "backend cpu: out of memory for step scratch buffers; the aggregation "
                           "state cannot be trusted any more: aborting (a restart resumes from "
                           "the last checkpoint)\n");
  /* the scratch bf16 view of the new bits (enc[1] without bits[1]) */
  memset(&io, 0, sizeof io);
  io.enc[1] = enc;
  st = run_child(PX_DT_F32, SIZE_MAX / 2 - 1, io, log, sizeof log);
  assert_true(WIFSIGNALED(st));
  assert_int_equal(WTERMSIG(st), SIGABRT);
  assert_non_null(strstr(log, "backend cpu: out of memory for step scratch buffers"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_alloc_combinations),
      cmocka_unit_test(test_free_gives_back),
      cmocka_unit_test(test_alloc_all_or_nothing),
      cmocka_unit_test(test_outputs_f32_every_subset),
      cmocka_unit_test(test_outputs_16bit_dtypes),
      cmocka_unit_test(test_outputs_sizes),
      cmocka_unit_test(test_outputs_zero_words),
      cmocka_unit_test(test_outputs_in_place),
      cmocka_unit_test(test_outputs_scratch),
      cmocka_unit_test(test_outputs_threads),
      cmocka_unit_test(test_outputs_no_scratch_aborts),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
