/* Unit tests of server/framecache.c (framecache.h), on one px_fcache and the viewcaches of
 * a chunk or two, without a store: init (history clamped), frames (new, publish, copy,
 * adopt: fields, refs, frame_bytes counted from publish until the last unref, encodes;
 * out of memory; references dropped by several threads at once), eager_delta (compression,
 * history, enabled views and the window of history+1 versions after a pull's demand),
 * step_begin (old frames dropped, the pending slots it marks for each mode), install_step
 * (history order, bases, history_bytes, the cache primed, RAW and FULL keys, a gap, a step
 * that produced nothing), the history budget shared between chunks, the key a pull gets
 * for every base, get (HIT with a reference and cache_hits, WAIT for a slot being made or
 * the step's delta, BUILD claiming a slot, FULL at --memory-limit without side effects,
 * every slot busy, least-recently-used eviction), builds (summed deltas decoded bit for
 * bit the way a pull client decodes them, in both widths; SHUFFLE_ZSTD and RAW fulls;
 * fallbacks to RAW; stale and failed builds; the view checksum), and step_failed / clear
 * (frames a sender still holds stay valid). Every test ends with frame_bytes and
 * history_bytes back at 0: every reference was dropped exactly once. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/checksum.h"
#include "codec/dtype.h"
#include "codec/payload.h"
#include "codec/transform.h"
#include "codec/zstdframe.h"
#include "framecache.h"
#include "util/bufpool.h"
#include "util/iov.h"
#include "wire/chunk_msg.h"

#define N 1000u   /* words per chunk: not a power of two */
#define MAXV 12u  /* versions 0..MAXV of the test data */
#define LEVEL 1

static px_counters g_ctr;
static px_fcache g_fc;
static px_viewcache g_vs[2];  /* chunk A's views */
static px_viewcache g_vb[2];  /* chunk B's views */

/* Smooth words (small per-step deltas: they compress) of both widths, and random ones. */
static uint32_t g_w32[MAXV + 1][N];
static uint16_t g_w16[MAXV + 1][N];
static uint32_t g_rand32[MAXV + 1][N];

static uint64_t g_rng;
static uint64_t rnd(void) {
  uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static int group_setup(void** state) {
  (void)state;
  g_rng = 7;
  for (uint32_t i = 0; i < N; i++) {
    g_w32[0][i] = 0x3f000000u + i * 977u;
    g_w16[0][i] = (uint16_t)(0x3f00u + i * 3u);
    g_rand32[0][i] = (uint32_t)rnd();
  }
  for (uint32_t v = 1; v <= MAXV; v++)
    for (uint32_t i = 0; i < N; i++) {
      g_w32[v][i] = g_w32[v - 1][i] + (uint32_t)((i * 31u + v * 7u) % 9u) - 4u;
      g_w16[v][i] = (uint16_t)(g_w16[v - 1][i] + (uint16_t)((i * 13u + v * 5u) % 5u) - 2u);
      g_rand32[v][i] = (uint32_t)rnd();
    }
  return 0;
}

/* A fresh cache: compression, history (the option as given), the history budget and the
 * memory limit; view 0 of both chunks enabled. */
static void expect_all_freed(void);
static void fc_new(bool compression, uint32_t history, uint64_t history_bytes,
                   uint64_t memory_limit) {
  expect_all_freed(); /* nothing of the previous cache left */
  memset(&g_ctr, 0, sizeof g_ctr);
  memset(g_vs, 0, sizeof g_vs);
  memset(g_vb, 0, sizeof g_vb);
  px_fcache_opts o = {compression, history, history_bytes, LEVEL, memory_limit};
  px_fcache_init(&g_fc, &o, &g_ctr);
  g_vs[0].enabled = true;
  g_vb[0].enabled = true;
}

static int teardown(void** state) {
  (void)state;
  px_fcache_clear(&g_fc, g_vs, true);
  px_fcache_clear(&g_fc, g_vb, true);
  return 0;
}

/* Drops everything the cache holds; every frame must then be gone. */
static void expect_all_freed(void) {
  px_fcache_clear(&g_fc, g_vs, true);
  px_fcache_clear(&g_fc, g_vb, true);
  assert_int_equal(atomic_load(&g_ctr.frame_bytes), 0);
  assert_int_equal(atomic_load(&g_ctr.history_bytes), 0);
}

static int refs(const px_frame* f) { return atomic_load(&((px_frame*)f)->refs); }

static const void* words(int w, uint32_t v) { return w == 4 ? (const void*)g_w32[v] : (const void*)g_w16[v]; }
static uint64_t sum_of(int w, uint32_t v) { return px_checksum(words(w, v), N * (size_t)w); }

/* The per-step delta frame of version v (v-1 -> v) of width w, as publish encodes it. */
static px_frame* delta_frame(int w, uint32_t v) {
  const size_t cap = px_zstd_bound(N * (size_t)w);
  px_frame* f = px_frame_new(&g_fc, cap);
  assert_non_null(f);
  size_t len = px_encode_delta(words(w, v), words(w, v - 1), N, w, LEVEL, f->data, cap);
  assert_true(len > 0 && len < N * (size_t)w);
  px_frame_publish(&g_fc, f, len, PX_ENC_DELTA_ZSTD, v, v - 1, sum_of(w, v));
  return f;
}

/* A step of chunk A to version v that encoded its delta (view 0, width 4; with view 1
 * enabled, its bf16 words too). */
static void step_delta(px_viewcache vs[2], uint32_t v) {
  px_fcache_step_begin(&g_fc, vs, v, true);
  for (int view = 0; view < 2; view++) {
    if (!vs[view].enabled) continue;
    const int w = view == 0 ? 4 : 2;
    px_frame* d = delta_frame(w, v);
    px_fcache_install_step(&g_fc, &vs[view], v, true, d, NULL, sum_of(w, v));
    px_frame_unref(d);
  }
}

/* The index of the slot for key, or -1. */
static int slot_of(const px_viewcache* vs, uint64_t key) {
  for (int i = 0; i < PX_CACHE_SLOTS; i++)
    if (vs->cache[i].used && vs->cache[i].key == key) return i;
  return -1;
}

static int used_slots(const px_viewcache* vs) {
  int n = 0;
  for (int i = 0; i < PX_CACHE_SLOTS; i++) n += vs->cache[i].used;
  return n;
}

/* Decodes f the way a pull client does (PullChunk header + payload, px_chunk_decode) into
 * dst, which holds the base for a delta. */
static px_decode_result client_decode(const px_frame* f, int w, void* dst) {
  px_chunk h = {0};
  h.version = f->version;
  h.base_version = f->encoding == PX_ENC_DELTA_ZSTD ? f->base : 0;
  h.encoding = f->encoding;
  h.dtype = w == 4 ? PX_DT_F32 : PX_DT_BF16;
  h.raw_len = N * (uint32_t)w;
  h.checksum = f->checksum;
  uint8_t head[PX_CHUNK_HDR_MAX];
  size_t hl = px_chunk_encode_header(PX_CHUNK_PULL, &h, f->len, head, sizeof head);
  assert_true(hl > 0);
  px_iov seg[2] = {{head, hl}, {f->data, f->len}};
  px_chunk p;
  char err[256];
  if (px_chunk_parse(PX_CHUNK_PULL, seg, f->len ? 2 : 1, &p, err, sizeof err) != 0)
    fail_msg("parse: %s", err);
  px_decode_result r = px_chunk_decode(&p, seg, f->len ? 2 : 1, dst, N, w, err, sizeof err);
  if (r != PX_DECODE_OK) print_error("decode: %s\n", err);
  return r;
}

/* ---- init and frames ---------------------------------------------------------------------- */

static void test_init(void** state) {
  (void)state;
  px_fcache_opts o = {true, 40, 12345, 3, 999};
  memset(&g_fc, 0xff, sizeof g_fc);
  px_fcache_init(&g_fc, &o, &g_ctr);
  assert_true(g_fc.o.compression);
  assert_int_equal(g_fc.o.history, PX_MAX_HISTORY);
  assert_int_equal(g_fc.o.history_bytes, 12345);
  assert_int_equal(g_fc.o.level, 3);
  assert_int_equal(g_fc.o.memory_limit, 999);
  assert_ptr_equal(g_fc.ctr, &g_ctr);
  assert_int_equal(atomic_load(&g_fc.stamp), 0);
  o.history = PX_MAX_HISTORY;
  px_fcache_init(&g_fc, &o, &g_ctr);
  assert_int_equal(g_fc.o.history, PX_MAX_HISTORY);
  o.history = 3;
  o.compression = false;
  px_fcache_init(&g_fc, &o, &g_ctr);
  assert_int_equal(g_fc.o.history, 3);
  assert_false(g_fc.o.compression);
}

static void test_frame_lifecycle(void** state) {
  (void)state;
  fc_new(true, 4, 1 << 20, 0);
  px_frame* f = px_frame_new(&g_fc, 100);
  assert_non_null(f);
  assert_non_null(f->data);
  assert_int_equal(refs(f), 1);
  assert_int_equal(f->cap, 100);
  assert_true(f->base == PX_BASE_NONE);
  assert_false(f->counted);
  assert_false(f->in_history);
  assert_ptr_equal(f->bytes, &g_ctr.frame_bytes);
  /* not published: not counted yet */
  assert_int_equal(atomic_load(&g_ctr.frame_bytes), 0);
  assert_int_equal(atomic_load(&g_ctr.encodes), 0);
  memset(f->data, 0x42, 100);
  px_frame_publish(&g_fc, f, 60, PX_ENC_DELTA_ZSTD, 9, 8, 0xabcdefull);
  assert_int_equal(f->len, 60);
  assert_int_equal(f->encoding, PX_ENC_DELTA_ZSTD);
  assert_int_equal(f->version, 9);
  assert_int_equal(f->base, 8);
  assert_true(f->checksum == 0xabcdefull);
  assert_true(f->counted);
  assert_int_equal(atomic_load(&g_ctr.frame_bytes), 100);
  assert_int_equal(atomic_load(&g_ctr.encodes), 1);
  /* published again (re-described): counted once, encoded twice */
  px_frame_publish(&g_fc, f, 70, PX_ENC_RAW, 9, PX_BASE_NONE, 5);
  assert_int_equal(atomic_load(&g_ctr.frame_bytes), 100);
  assert_int_equal(atomic_load(&g_ctr.encodes), 2);
  assert_int_equal(f->len, 70);
  assert_true(f->base == PX_BASE_NONE);
  /* references: counted until the last one goes */
  px_frame_ref(f);
  px_frame_ref(f);
  assert_int_equal(refs(f), 3);
  px_frame_unref(f);
  px_frame_unref(f);
  assert_int_equal(refs(f), 1);
  assert_int_equal(atomic_load(&g_ctr.frame_bytes), 100);
  void (*release)(void*) = px_frame_unref; /* px_release_fn-compatible */
  release(f);
  assert_int_equal(atomic_load(&g_ctr.frame_bytes), 0);
  px_frame_unref(NULL);

  /* an unpublished frame leaves frame_bytes alone when it goes */
  px_frame* g = px_frame_new(&g_fc, 0);
  assert_non_null(g);
  assert_int_equal(g->cap, 1); /* room for at least one byte */
  g->data[0] = 1;
  atomic_store(&g_ctr.frame_bytes, 7);
  px_frame_unref(g);
  assert_int_equal(atomic_load(&g_ctr.frame_bytes), 7);
  atomic_store(&g_ctr.frame_bytes, 0);

  /* no memory (past the largest pool class): NULL, nothing counted */
  assert_null(px_frame_new(&g_fc, (size_t)200 << 20));
  assert_int_equal(atomic_load(&g_ctr.frame_bytes), 0);
  assert_int_equal(atomic_load(&g_ctr.encodes), 2);
  expect_all_freed();
}

static void test_frame_copy_and_adopt(void** state) {
  (void)state;
  fc_new(true, 4, 1 << 20, 0);
  uint8_t src[300];
  for (int i = 0; i < 300; i++) src[i] = (uint8_t)(i * 11 + 1);
  px_frame* c = px_frame_copy(&g_fc, src, sizeof src, PX_ENC_SHUFFLE_ZSTD, 4, PX_BASE_NONE, 77);
  assert_non_null(c);
  assert_true(c->data != src);
  assert_memory_equal(c->data, src, sizeof src);
  assert_int_equal(c->len, 300);
  assert_int_equal(c->cap, 300);
  assert_int_equal(c->encoding, PX_ENC_SHUFFLE_ZSTD);
  assert_int_equal(c->version, 4);
  assert_true(c->base == PX_BASE_NONE);
  assert_int_equal(c->checksum, 77);
  assert_int_equal(refs(c), 1);
  assert_true(c->counted);
  assert_int_equal(atomic_load(&g_ctr.frame_bytes), 300);
  assert_int_equal(atomic_load(&g_ctr.encodes), 1);
  src[0] ^= 0xff; /* a copy: the source may change */
  assert_int_equal(c->data[0], 1);
  /* a copy of nothing */
  px_frame* z = px_frame_copy(&g_fc, src, 0, PX_ENC_RAW, 5, PX_BASE_NONE, 0);
  assert_non_null(z);
  assert_int_equal(z->len, 0);
  assert_int_equal(atomic_load(&g_ctr.frame_bytes), 301);
  px_frame_unref(z);
  /* no memory: NULL and nothing counted (the bytes are never read) */
  assert_null(px_frame_copy(&g_fc, src, (size_t)200 << 20, PX_ENC_RAW, 5, PX_BASE_NONE, 0));
  assert_int_equal(atomic_load(&g_ctr.frame_bytes), 300);
  assert_int_equal(atomic_load(&g_ctr.encodes), 2);
  px_frame_unref(c);
  assert_int_equal(atomic_load(&g_ctr.frame_bytes), 0);

  /* adopt: the step's buffer becomes the frame, no copy */
  const size_t len = 5000;
  void* buf = px_buf_get(len);
  assert_non_null(buf);
  memset(buf, 0x3c, len);
  void* orig = buf;
  px_frame* a = px_frame_adopt(&g_fc, &buf, len, 6, 0x1234);
  assert_non_null(a);
  assert_null(buf);
  assert_ptr_equal(a->data, orig);
  assert_int_equal(a->len, len);
  assert_int_equal(a->cap, len);
  assert_int_equal(a->encoding, PX_ENC_RAW);
  assert_int_equal(a->version, 6);
  assert_true(a->base == PX_BASE_NONE);
  assert_int_equal(a->checksum, 0x1234);
  assert_int_equal(refs(a), 1);
  assert_int_equal(atomic_load(&g_ctr.frame_bytes), (int64_t)len);
  assert_int_equal(atomic_load(&g_ctr.encodes), 3);
  px_frame_unref(a);
  assert_int_equal(atomic_load(&g_ctr.frame_bytes), 0);
  /* its last unref gave the buffer back to the pool, in the size class it came from */
  void* again = px_buf_get(len);
  assert_ptr_equal(again, orig);
  px_buf_put(again, len);
  expect_all_freed();
}

#define REF_THREADS 4
#define REF_ROUNDS 20000

static void* ref_thread(void* p) {
  px_frame* f = p;
  for (int i = 0; i < REF_ROUNDS; i++) {
    px_frame_ref(f);
    if (f->data[0] != 0x5a) return (void*)1;
    px_frame_unref(f);
  }
  /* each thread was given a reference of its own: drop it */
  px_frame_unref(f);
  return NULL;
}

static void test_frame_refs_threads(void** state) {
  (void)state;
  fc_new(true, 4, 1 << 20, 0);
  uint8_t b[64];
  memset(b, 0x5a, sizeof b);
  px_frame* f = px_frame_copy(&g_fc, b, sizeof b, PX_ENC_RAW, 1, PX_BASE_NONE, 0);
  assert_non_null(f);
  pthread_t th[REF_THREADS];
  for (int i = 0; i < REF_THREADS; i++) px_frame_ref(f);
  for (int i = 0; i < REF_THREADS; i++)
    assert_int_equal(pthread_create(&th[i], NULL, ref_thread, f), 0);
  void* rc[REF_THREADS];
  for (int i = 0; i < REF_THREADS; i++) assert_int_equal(pthread_join(th[i], &rc[i]), 0);
  for (int i = 0; i < REF_THREADS; i++) assert_null(rc[i]);
  assert_int_equal(refs(f), 1);
  assert_int_equal(atomic_load(&g_ctr.frame_bytes), 64);
  px_frame_unref(f);
  expect_all_freed();
}

/* ---- steps ---------------------------------------------------------------------------- */

static void test_eager_delta(void** state) {
  (void)state;
  const uint32_t H = 3;
  fc_new(true, H, 1 << 20, 0);
  /* nobody asked for deltas yet */
  for (uint64_t next = 1; next < 10; next++) assert_false(px_fcache_eager_delta(&g_fc, g_vs, next));
  /* a pull at version 5 that does not accept deltas records nothing */
  (void)px_fcache_key(&g_fc, &g_vs[0], 5, 4, false, true);
  assert_false(px_fcache_eager_delta(&g_fc, g_vs, 6));
  /* one that does: steps making 6 .. 5+H+1 encode, later ones do not */
  (void)px_fcache_key(&g_fc, &g_vs[0], 5, PX_BASE_NONE, true, false);
  assert_int_equal(g_vs[0].delta_demand, 6);
  for (uint64_t next = 6; next <= 5 + H + 1; next++)
    assert_true(px_fcache_eager_delta(&g_fc, g_vs, next));
  assert_false(px_fcache_eager_delta(&g_fc, g_vs, 5 + H + 2));
  assert_false(px_fcache_eager_delta(&g_fc, g_vs, 100));
  /* an older pull does not lower the demand */
  (void)px_fcache_key(&g_fc, &g_vs[0], 2, 1, true, false);
  assert_int_equal(g_vs[0].delta_demand, 6);
  /* a disabled view's demand does not count; view 1's counts once enabled */
  g_vs[0].enabled = false;
  assert_false(px_fcache_eager_delta(&g_fc, g_vs, 6));
  g_vs[1].delta_demand = 11; /* a pull of the bf16 view at version 10 */
  assert_false(px_fcache_eager_delta(&g_fc, g_vs, 11));
  g_vs[1].enabled = true;
  assert_true(px_fcache_eager_delta(&g_fc, g_vs, 11));
  assert_true(px_fcache_eager_delta(&g_fc, g_vs, 10 + H + 1));
  assert_false(px_fcache_eager_delta(&g_fc, g_vs, 10 + H + 2));
  g_vs[0].enabled = true;
  assert_true(px_fcache_eager_delta(&g_fc, g_vs, 7)); /* view 0's window */

  /* without history or without compression: never */
  fc_new(true, 0, 1 << 20, 0);
  g_vs[0].delta_demand = 6;
  for (uint64_t next = 1; next < 10; next++) assert_false(px_fcache_eager_delta(&g_fc, g_vs, next));
  fc_new(false, 4, 1 << 20, 0);
  g_vs[0].delta_demand = 6;
  for (uint64_t next = 1; next < 10; next++) assert_false(px_fcache_eager_delta(&g_fc, g_vs, next));
  expect_all_freed();
}

/* The slots of a view as (key, pending) pairs, checked against want (n of them). */
static void expect_slots(const px_viewcache* vs, const uint64_t* keys, int n) {
  assert_int_equal(used_slots(vs), n);
  for (int i = 0; i < n; i++) {
    int s = slot_of(vs, keys[i]);
    if (s < 0) fail_msg("no slot for key %llu", (unsigned long long)keys[i]);
    assert_true(vs->cache[s].pending);
    assert_null(vs->cache[s].frame);
  }
}

static void test_step_begin(void** state) {
  (void)state;
  const struct {
    bool compression;
    uint32_t history;
    bool encode;
    int nkeys;
    uint64_t keys[2];
  } cases[] = {
      {true, 4, true, 1, {4}},                         /* the step's delta */
      {true, 4, false, 1, {PX_KEY_RAW}},               /* its RAW frame */
      {true, 0, true, 1, {PX_KEY_RAW}},                /* no history: no delta */
      {false, 4, true, 2, {PX_KEY_FULL, PX_KEY_RAW}},  /* RAW frames under both keys */
      {false, 4, false, 2, {PX_KEY_FULL, PX_KEY_RAW}},
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    fc_new(cases[k].compression, cases[k].history, 1 << 20, 0);
    g_vs[1].enabled = k % 2 == 0; /* view 1 enabled in some cases */
    /* version 4's frames in the cache of both views, and a checksum */
    for (int v = 0; v < 2; v++) {
      if (!g_vs[v].enabled) continue;
      px_frame* f = px_frame_copy(&g_fc, g_w32[4], N * 4, PX_ENC_RAW, 4, PX_BASE_NONE, sum_of(4, 4));
      assert_non_null(f);
      px_fcache_install_step(&g_fc, &g_vs[v], 4, false, NULL, f, sum_of(4, 4));
      px_frame_unref(f);
      assert_true(g_vs[v].checksum_valid);
      assert_true(used_slots(&g_vs[v]) >= 1);
    }
    assert_true(atomic_load(&g_ctr.frame_bytes) > 0);
    px_fcache_step_begin(&g_fc, g_vs, 5, cases[k].encode);
    /* the old version's frames are gone (freed: nobody else held them) */
    assert_int_equal(atomic_load(&g_ctr.frame_bytes), 0);
    for (int v = 0; v < 2; v++) {
      assert_false(g_vs[v].checksum_valid);
      if (g_vs[v].enabled) expect_slots(&g_vs[v], cases[k].keys, cases[k].nkeys);
      else assert_int_equal(used_slots(&g_vs[v]), 0);
    }
    /* pulls wait for them instead of building */
    px_frame* out = (px_frame*)1;
    for (int i = 0; i < cases[k].nkeys; i++) {
      assert_int_equal(px_fcache_get(&g_fc, &g_vs[0], 5, cases[k].keys[i], &out), PX_FC_WAIT);
      assert_null(out);
    }
    if (cases[k].keys[0] == 4) /* another base waits for the step's delta too */
      assert_int_equal(px_fcache_get(&g_fc, &g_vs[0], 5, 2, &out), PX_FC_WAIT);
    assert_int_equal(used_slots(&g_vs[0]), cases[k].nkeys);
    expect_all_freed();
  }
}

static void test_install_step_history(void** state) {
  (void)state;
  const uint32_t H = 4;
  fc_new(true, H, 1 << 20, 0);
  g_vs[1].enabled = true;
  for (uint32_t v = 1; v <= 7; v++) {
    step_delta(g_vs, v);
    for (int view = 0; view < 2; view++) {
      px_viewcache* vs = &g_vs[view];
      const int w = view == 0 ? 4 : 2;
      assert_true(vs->checksum_valid);
      assert_true(vs->checksum == sum_of(w, v));
      const uint32_t want = v < H ? v : H;
      assert_int_equal(vs->nhist, want);
      /* newest first: hist[i] is the delta version-i-1 -> version-i */
      for (uint32_t i = 0; i < want; i++) {
        assert_non_null(vs->hist[i]);
        assert_int_equal(vs->hist[i]->version, v - i);
        assert_int_equal(vs->hist[i]->base, v - i - 1);
        assert_int_equal(vs->hist[i]->encoding, PX_ENC_DELTA_ZSTD);
        assert_true(vs->hist[i]->in_history);
      }
      for (uint32_t i = want; i < PX_MAX_HISTORY; i++) assert_null(vs->hist[i]);
      /* the cache is primed with the delta for base version-1, nothing else */
      assert_int_equal(used_slots(vs), 1);
      px_frame* out = NULL;
      assert_int_equal(px_fcache_get(&g_fc, vs, v, v - 1, &out), PX_FC_HIT);
      assert_ptr_equal(out, vs->hist[0]);
      assert_int_equal(refs(out), 3); /* history, cache, us */
      px_frame_unref(out);
    }
    /* history_bytes: the caps of both views' deltas; frame_bytes: the same frames */
    int64_t hb = 0;
    for (int view = 0; view < 2; view++)
      for (uint32_t i = 0; i < g_vs[view].nhist; i++) hb += (int64_t)g_vs[view].hist[i]->cap;
    assert_int_equal(atomic_load(&g_ctr.history_bytes), hb);
    assert_int_equal(atomic_load(&g_ctr.frame_bytes), hb);
    assert_int_equal(atomic_load(&g_ctr.cache_hits), (uint64_t)v * 2);
  }
  /* the deltas compose: summed over the history they reconstruct version 7 from 3 */
  uint32_t cur[N];
  memcpy(cur, g_w32[3], sizeof cur);
  for (int i = (int)H - 1; i >= 0; i--) assert_int_equal(client_decode(g_vs[0].hist[i], 4, cur), PX_DECODE_OK);
  assert_memory_equal(cur, g_w32[7], sizeof cur);

  /* a step whose delta came with a full frame (the delta was not worth sending): the
   * history gets the delta, the cache the full frame for base version-1 */
  px_fcache_step_begin(&g_fc, g_vs, 8, true);
  px_frame* d = delta_frame(4, 8);
  px_frame* full = px_frame_copy(&g_fc, g_w32[8], N * 4, PX_ENC_RAW, 8, PX_BASE_NONE, sum_of(4, 8));
  assert_non_null(full);
  px_fcache_install_step(&g_fc, &g_vs[0], 8, true, d, full, sum_of(4, 8));
  assert_ptr_equal(g_vs[0].hist[0], d);
  assert_int_equal(g_vs[0].nhist, H);
  px_frame* out = NULL;
  assert_int_equal(px_fcache_get(&g_fc, &g_vs[0], 8, 7, &out), PX_FC_HIT);
  assert_ptr_equal(out, full);
  px_frame_unref(out);
  px_frame_unref(d);
  px_frame_unref(full);
  /* view 1 got nothing from this step: its pending slot must not stall pulls */
  px_fcache_install_step(&g_fc, &g_vs[1], 8, true, NULL, NULL, sum_of(2, 8));
  assert_int_equal(used_slots(&g_vs[1]), 0);
  assert_true(g_vs[1].checksum_valid);
  assert_true(g_vs[1].checksum == sum_of(2, 8));
  assert_int_equal(px_fcache_get(&g_fc, &g_vs[1], 8, 7, &out), PX_FC_BUILD);
  expect_all_freed();
}

static void test_install_step_full_frames(void** state) {
  (void)state;
  /* compression on, the step did not encode: RAW key only; the history has a gap now */
  fc_new(true, 4, 1 << 20, 0);
  for (uint32_t v = 1; v <= 3; v++) step_delta(g_vs, v);
  assert_int_equal(g_vs[0].nhist, 3);
  px_fcache_step_begin(&g_fc, g_vs, 4, false);
  px_frame* f = px_frame_copy(&g_fc, g_w32[4], N * 4, PX_ENC_RAW, 4, PX_BASE_NONE, sum_of(4, 4));
  assert_non_null(f);
  px_fcache_install_step(&g_fc, &g_vs[0], 4, false, NULL, f, sum_of(4, 4));
  assert_int_equal(g_vs[0].nhist, 0);
  assert_int_equal(atomic_load(&g_ctr.history_bytes), 0);
  for (int i = 0; i < PX_MAX_HISTORY; i++) assert_null(g_vs[0].hist[i]);
  assert_true(g_vs[0].checksum_valid);
  assert_true(g_vs[0].checksum == sum_of(4, 4));
  px_frame* out = NULL;
  assert_int_equal(px_fcache_get(&g_fc, &g_vs[0], 4, PX_KEY_RAW, &out), PX_FC_HIT);
  assert_ptr_equal(out, f);
  px_frame_unref(out);
  /* the full chunk with the best encoding is not this RAW frame: built on demand */
  assert_int_equal(px_fcache_get(&g_fc, &g_vs[0], 4, PX_KEY_FULL, &out), PX_FC_BUILD);
  assert_null(out);
  px_frame_unref(f);
  assert_int_equal(atomic_load(&g_ctr.frame_bytes), (int64_t)N * 4);
  expect_all_freed();

  /* compression off: the RAW frame serves both keys */
  fc_new(false, 4, 1 << 20, 0);
  px_fcache_step_begin(&g_fc, g_vs, 1, true);
  f = px_frame_copy(&g_fc, g_w32[1], N * 4, PX_ENC_RAW, 1, PX_BASE_NONE, sum_of(4, 1));
  assert_non_null(f);
  px_fcache_install_step(&g_fc, &g_vs[0], 1, false, NULL, f, sum_of(4, 1));
  px_frame_unref(f);
  assert_int_equal(used_slots(&g_vs[0]), 2);
  for (int k = 0; k < 2; k++) {
    assert_int_equal(px_fcache_get(&g_fc, &g_vs[0], 1, k ? PX_KEY_RAW : PX_KEY_FULL, &out), PX_FC_HIT);
    assert_ptr_equal(out, f);
    px_frame_unref(out);
  }
  assert_int_equal(refs(f), 2); /* two slots */
  assert_int_equal(atomic_load(&g_ctr.frame_bytes), (int64_t)N * 4);
  expect_all_freed();

  /* an encoding step that produced only a full frame: it serves base version-1; the
   * history is not extended (a later base gets a full chunk until it restarts) */
  fc_new(true, 4, 1 << 20, 0);
  for (uint32_t v = 1; v <= 3; v++) step_delta(g_vs, v);
  px_fcache_step_begin(&g_fc, g_vs, 4, true);
  f = px_frame_copy(&g_fc, g_w32[4], N * 4, PX_ENC_RAW, 4, PX_BASE_NONE, sum_of(4, 4));
  assert_non_null(f);
  px_fcache_install_step(&g_fc, &g_vs[0], 4, true, NULL, f, sum_of(4, 4));
  px_frame_unref(f);
  assert_int_equal(g_vs[0].nhist, 3);
  assert_int_equal(g_vs[0].hist[0]->version, 3);
  assert_int_equal(px_fcache_get(&g_fc, &g_vs[0], 4, 3, &out), PX_FC_HIT);
  assert_ptr_equal(out, f);
  px_frame_unref(out);
  assert_true(px_fcache_key(&g_fc, &g_vs[0], 4, 2, true, true) == PX_KEY_FULL);
  assert_true(px_fcache_key(&g_fc, &g_vs[0], 4, 2, true, false) == PX_KEY_RAW);
  /* the next delta finds the gap (its base is not the newest entry's version): the
   * history restarts with it */
  step_delta(g_vs, 5);
  assert_int_equal(g_vs[0].nhist, 1);
  assert_int_equal(g_vs[0].hist[0]->version, 5);
  expect_all_freed();

  /* a step that produced nothing: its pending slots are cleared (RAW and FULL keys) */
  fc_new(false, 4, 1 << 20, 0);
  px_fcache_step_begin(&g_fc, g_vs, 1, false);
  assert_int_equal(used_slots(&g_vs[0]), 2);
  px_fcache_install_step(&g_fc, &g_vs[0], 1, false, NULL, NULL, sum_of(4, 1));
  assert_int_equal(used_slots(&g_vs[0]), 0);
  assert_true(g_vs[0].checksum_valid);
  assert_int_equal(px_fcache_get(&g_fc, &g_vs[0], 1, PX_KEY_FULL, &out), PX_FC_BUILD);
  expect_all_freed();
}

static void test_history_budget(void** state) {
  (void)state;
  /* budget for about two deltas */
  fc_new(true, 8, 0, 0);
  px_frame* probe = delta_frame(4, 1);
  const uint64_t cap = probe->cap;
  px_frame_unref(probe);
  fc_new(true, 8, cap * 2 + cap / 2, 0);
  step_delta(g_vs, 1);
  step_delta(g_vs, 2);
  assert_int_equal(g_vs[0].nhist, 2);
  step_delta(g_vs, 3); /* over: the oldest goes, the newest stay */
  assert_int_equal(g_vs[0].nhist, 2);
  assert_int_equal(g_vs[0].hist[0]->version, 3);
  assert_int_equal(g_vs[0].hist[1]->version, 2);
  assert_int_equal(atomic_load(&g_ctr.history_bytes), (int64_t)cap * 2);
  /* the budget is shared: chunk B's delta pushes the total over, B gives up its own
   * oldest (it keeps its newest), A keeps both */
  step_delta(g_vb, 1);
  assert_int_equal(g_vb[0].nhist, 1);
  assert_int_equal(g_vs[0].nhist, 2);
  step_delta(g_vb, 2);
  assert_int_equal(g_vb[0].nhist, 1);
  assert_int_equal(g_vb[0].hist[0]->version, 2);
  assert_int_equal(g_vs[0].nhist, 2);
  assert_int_equal(atomic_load(&g_ctr.history_bytes), (int64_t)cap * 3);
  /* a budget smaller than one delta: each chunk keeps its newest */
  fc_new(true, 8, 1, 0);
  for (uint32_t v = 1; v <= 4; v++) step_delta(g_vs, v);
  assert_int_equal(g_vs[0].nhist, 1);
  assert_int_equal(g_vs[0].hist[0]->version, 4);
  expect_all_freed();

  /* history 1: only the newest delta */
  fc_new(true, 1, 1 << 20, 0);
  for (uint32_t v = 1; v <= 3; v++) step_delta(g_vs, v);
  assert_int_equal(g_vs[0].nhist, 1);
  assert_int_equal(g_vs[0].hist[0]->version, 3);
  assert_null(g_vs[0].hist[1]);
  expect_all_freed();

  /* --history 40 is clamped: at most PX_MAX_HISTORY deltas */
  fc_new(true, 40, 1 << 30, 0);
  for (uint32_t v = 1; v <= MAXV; v++) step_delta(g_vs, v);
  assert_int_equal(g_vs[0].nhist, MAXV);
  fc_new(true, 40, 1 << 30, 0);
  for (uint32_t v = 1; v <= PX_MAX_HISTORY + 3; v++) {
    px_fcache_step_begin(&g_fc, g_vs, v, true);
    /* the deltas' content does not matter here; their versions do */
    px_frame* f = px_frame_copy(&g_fc, "x", 1, PX_ENC_DELTA_ZSTD, v, v - 1, 0);
    assert_non_null(f);
    px_fcache_install_step(&g_fc, &g_vs[0], v, true, f, NULL, 0);
    px_frame_unref(f);
  }
  assert_int_equal(g_vs[0].nhist, PX_MAX_HISTORY);
  assert_int_equal(g_vs[0].hist[PX_MAX_HISTORY - 1]->version, 4);
  expect_all_freed();
}

/* ---- lookups ------------------------------------------------------------------------------ */

static void test_key(void** state) {
  (void)state;
  const uint32_t H = 4;
  fc_new(true, H, 1 << 20, 0);
  for (uint32_t v = 1; v <= 5; v++) step_delta(g_vs, v);
  /* at version 5 the history holds the deltas making 2..5 */
  const uint64_t V = 5;
  px_viewcache* vs = &g_vs[0];
  /* no deltas accepted, nothing held, or a base not behind: a full chunk */
  assert_true(px_fcache_key(&g_fc, vs, V, 3, false, true) == PX_KEY_FULL);
  assert_true(px_fcache_key(&g_fc, vs, V, 3, false, false) == PX_KEY_RAW);
  assert_true(px_fcache_key(&g_fc, vs, V, PX_BASE_NONE, true, true) == PX_KEY_FULL);
  assert_true(px_fcache_key(&g_fc, vs, V, V, true, true) == PX_KEY_FULL);
  assert_true(px_fcache_key(&g_fc, vs, V, V + 3, true, false) == PX_KEY_RAW);
  /* bases the history covers */
  for (uint64_t have = 1; have < V; have++)
    assert_true(px_fcache_key(&g_fc, vs, V, have, true, true) == have);
  assert_true(px_fcache_key(&g_fc, vs, V, 0, true, true) == PX_KEY_FULL); /* too old */
  assert_true(px_fcache_key(&g_fc, vs, V, 0, true, false) == PX_KEY_RAW);
  assert_int_equal(vs->delta_demand, V + 1);

  /* while step 6 is being encoded: bases the history will cover once its delta is in
   * (2..5) wait for it; one far past the history's reach does not */
  px_fcache_step_begin(&g_fc, g_vs, 6, true);
  for (uint64_t have = 2; have < 6; have++)
    assert_true(px_fcache_key(&g_fc, vs, 6, have, true, true) == have);
  assert_true(px_fcache_key(&g_fc, vs, 6, 0, true, true) == PX_KEY_FULL);
  /* base 1 needs 5 deltas, one more than --history 4 keeps once step 6's is in */
  assert_true(px_fcache_key(&g_fc, vs, 6, 1, true, true) == PX_KEY_FULL);
  assert_int_equal(vs->delta_demand, 7);
  px_frame* d = delta_frame(4, 6);
  px_fcache_install_step(&g_fc, vs, 6, true, d, NULL, sum_of(4, 6));
  px_frame_unref(d);
  assert_true(px_fcache_key(&g_fc, vs, 6, 1, true, true) == PX_KEY_FULL); /* dropped */
  for (uint64_t have = 2; have < 6; have++)
    assert_true(px_fcache_key(&g_fc, vs, 6, have, true, true) == have);

  /* a base only a cache slot knows (its frame being built), beyond the history */
  fc_new(true, 1, 1 << 20, 0);
  for (uint32_t v = 1; v <= 4; v++) step_delta(g_vs, v);
  assert_true(px_fcache_key(&g_fc, vs, 4, 1, true, false) == PX_KEY_RAW);
  px_frame* out = NULL;
  assert_int_equal(px_fcache_get(&g_fc, vs, 4, 1, &out), PX_FC_BUILD);
  assert_true(px_fcache_key(&g_fc, vs, 4, 1, true, false) == 1);
  assert_true(px_fcache_key(&g_fc, vs, 4, 3, true, false) == 3);
  assert_true(px_fcache_key(&g_fc, vs, 4, 2, true, false) == PX_KEY_RAW);

  /* without compression: FULL (RAW frames), whatever the pull accepts */
  fc_new(false, 4, 1 << 20, 0);
  assert_true(px_fcache_key(&g_fc, vs, 3, 2, true, false) == PX_KEY_FULL);
  assert_true(px_fcache_key(&g_fc, vs, 3, 2, true, true) == PX_KEY_FULL);
  assert_true(px_fcache_key(&g_fc, vs, 3, PX_BASE_NONE, false, false) == PX_KEY_FULL);
  expect_all_freed();
}

/* Builds and installs the frame for key at version of view 0 (RAW content). */
static px_frame* install_built(px_viewcache* vs, uint64_t version, uint64_t key) {
  px_frame* out = NULL;
  assert_int_equal(px_fcache_get(&g_fc, vs, version, key, &out), PX_FC_BUILD);
  px_frame* hist[PX_MAX_HISTORY];
  uint32_t k = 99;
  assert_true(px_fcache_build_begin(&g_fc, vs, version, key, hist, &k));
  px_frame* f = px_fcache_build_encode(&g_fc, (const uint8_t*)g_w32[version], N, 4, version, key,
                                       hist, k, sum_of(4, (uint32_t)version));
  assert_non_null(f);
  px_fcache_build_end(&g_fc, vs, version, key, f, sum_of(4, (uint32_t)version));
  return f; /* our reference */
}

static void test_get(void** state) {
  (void)state;
  fc_new(true, 4, 1 << 20, 0);
  for (uint32_t v = 1; v <= 3; v++) step_delta(g_vs, v);
  px_viewcache* vs = &g_vs[0];
  px_frame* out = (px_frame*)1;
  /* HIT: a reference, counted, the slot's recency renewed */
  const uint64_t hits = atomic_load(&g_ctr.cache_hits);
  const int s2 = slot_of(vs, 2);
  assert_true(s2 >= 0);
  const uint64_t st0 = vs->cache[s2].stamp;
  assert_int_equal(px_fcache_get(&g_fc, vs, 3, 2, &out), PX_FC_HIT);
  assert_ptr_equal(out, vs->hist[0]);
  assert_int_equal(refs(out), 3);
  assert_int_equal(atomic_load(&g_ctr.cache_hits), hits + 1);
  assert_true(vs->cache[s2].stamp > st0);
  px_frame_unref(out);
  /* BUILD claims a pending slot; a second pull then waits */
  assert_int_equal(px_fcache_get(&g_fc, vs, 3, PX_KEY_FULL, &out), PX_FC_BUILD);
  assert_null(out);
  int sf = slot_of(vs, PX_KEY_FULL);
  assert_true(sf >= 0);
  assert_true(vs->cache[sf].pending);
  assert_int_equal(px_fcache_get(&g_fc, vs, 3, PX_KEY_FULL, &out), PX_FC_WAIT);
  assert_null(out);
  assert_int_equal(atomic_load(&g_ctr.cache_hits), hits + 1);
  /* a base the slot does not have: BUILD too (the step is not pending) */
  assert_int_equal(px_fcache_get(&g_fc, vs, 3, 1, &out), PX_FC_BUILD);
  assert_int_equal(px_fcache_get(&g_fc, vs, 3, PX_KEY_RAW, &out), PX_FC_BUILD);
  assert_int_equal(used_slots(vs), 4);
  /* every slot busy except the installed one (2): it is evicted */
  assert_int_equal(px_fcache_get(&g_fc, vs, 3, 0, &out), PX_FC_BUILD);
  assert_int_equal(slot_of(vs, 2), -1);
  /* every slot pending: WAIT, and nothing changes */
  assert_int_equal(px_fcache_get(&g_fc, vs, 3, PX_KEY_RAW - 7, &out), PX_FC_WAIT);
  assert_null(out);
  assert_int_equal(slot_of(vs, PX_KEY_RAW - 7), -1);
  assert_int_equal(used_slots(vs), 4);
  expect_all_freed();

  /* while the step is pending: RAW and FULL builds proceed, bases wait for the delta */
  fc_new(true, 4, 1 << 20, 0);
  for (uint32_t v = 1; v <= 2; v++) step_delta(g_vs, v);
  px_fcache_step_begin(&g_fc, g_vs, 3, true);
  assert_int_equal(px_fcache_get(&g_fc, vs, 3, 2, &out), PX_FC_WAIT);
  assert_int_equal(px_fcache_get(&g_fc, vs, 3, 1, &out), PX_FC_WAIT);
  assert_int_equal(px_fcache_get(&g_fc, vs, 3, PX_KEY_RAW, &out), PX_FC_BUILD);
  assert_int_equal(px_fcache_get(&g_fc, vs, 3, PX_KEY_FULL, &out), PX_FC_BUILD);
  expect_all_freed();
}

static void test_get_memory_limit(void** state) {
  (void)state;
  const uint64_t LIMIT = 1 << 20;
  fc_new(true, 4, 1 << 20, LIMIT);
  step_delta(g_vs, 1);
  px_viewcache* vs = &g_vs[0];
  const int64_t fb = atomic_load(&g_ctr.frame_bytes);
  assert_true(fb > 0);
  /* exactly at the limit: still room */
  atomic_store(&g_ctr.store_bytes, (int64_t)LIMIT - fb);
  px_frame* out = (px_frame*)1;
  assert_int_equal(px_fcache_get(&g_fc, vs, 1, PX_KEY_RAW, &out), PX_FC_BUILD);
  /* one byte over: FULL, no slot claimed */
  atomic_store(&g_ctr.store_bytes, (int64_t)LIMIT - fb + 1);
  assert_int_equal(px_fcache_get(&g_fc, vs, 1, PX_KEY_FULL, &out), PX_FC_FULL);
  assert_null(out);
  assert_int_equal(slot_of(vs, PX_KEY_FULL), -1);
  assert_int_equal(used_slots(vs), 2);
  /* frames that exist are served, pending ones waited for, over the limit too */
  assert_int_equal(px_fcache_get(&g_fc, vs, 1, 0, &out), PX_FC_HIT);
  px_frame_unref(out);
  assert_int_equal(px_fcache_get(&g_fc, vs, 1, PX_KEY_RAW, &out), PX_FC_WAIT);
  /* frame bytes count as much as store bytes */
  atomic_store(&g_ctr.store_bytes, 0);
  px_frame* big = px_frame_new(&g_fc, LIMIT);
  assert_non_null(big);
  px_frame_publish(&g_fc, big, 1, PX_ENC_RAW, 1, PX_BASE_NONE, 0);
  assert_int_equal(px_fcache_get(&g_fc, vs, 1, PX_KEY_FULL, &out), PX_FC_FULL);
  px_frame_unref(big);
  assert_int_equal(px_fcache_get(&g_fc, vs, 1, PX_KEY_FULL, &out), PX_FC_BUILD);
  /* no limit: never FULL */
  g_fc.o.memory_limit = 0;
  atomic_store(&g_ctr.store_bytes, INT64_MAX / 4);
  assert_int_equal(px_fcache_get(&g_fc, vs, 1, 7, &out), PX_FC_BUILD);
  atomic_store(&g_ctr.store_bytes, 0);
  expect_all_freed();
}

static void test_get_lru_eviction(void** state) {
  (void)state;
  fc_new(true, 4, 1 << 20, 0);
  px_viewcache* vs = &g_vs[0];
  const uint64_t V = 9;
  /* four frames installed, oldest first: keys 5, 6, 7, 8 */
  px_frame* f[4];
  for (int i = 0; i < 4; i++) f[i] = install_built(vs, V, 5 + (uint64_t)i);
  assert_int_equal(used_slots(vs), 4);
  for (int i = 0; i < 4; i++) assert_int_equal(refs(f[i]), 2); /* slot + us */
  /* 5 used again: 6 is now the least recently used */
  px_frame* out = NULL;
  assert_int_equal(px_fcache_get(&g_fc, vs, V, 5, &out), PX_FC_HIT);
  px_frame_unref(out);
  assert_int_equal(px_fcache_get(&g_fc, vs, V, 4, &out), PX_FC_BUILD);
  assert_int_equal(slot_of(vs, 6), -1);
  assert_int_equal(refs(f[1]), 1); /* the slot's reference was dropped */
  assert_true(slot_of(vs, 5) >= 0 && slot_of(vs, 7) >= 0 && slot_of(vs, 8) >= 0);
  /* next: 7 (5 was used after it) */
  assert_int_equal(px_fcache_get(&g_fc, vs, V, 3, &out), PX_FC_BUILD);
  assert_int_equal(slot_of(vs, 7), -1);
  assert_int_equal(refs(f[2]), 1);
  /* the frame a sender holds is still intact after its eviction */
  assert_memory_equal(f[1]->data, g_w32[V], N * 4);
  for (int i = 0; i < 4; i++) px_frame_unref(f[i]);
  expect_all_freed();
}

/* ---- builds ------------------------------------------------------------------------------- */

static void test_build_summed_delta(void** state) {
  (void)state;
  const uint32_t H = 6;
  for (int view = 0; view < 2; view++) {
    const int w = view == 0 ? 4 : 2;
    fc_new(true, H, 1 << 20, 0);
    g_vs[1].enabled = true;
    for (uint32_t v = 1; v <= 7; v++) step_delta(g_vs, v);
    px_viewcache* vs = &g_vs[view];
    const uint64_t V = 7;
    for (uint64_t base = 1; base < V - 1; base++) { /* bases 1..5: k = 6..2 deltas */
      const uint64_t key = px_fcache_key(&g_fc, vs, V, base, true, true);
      assert_true(key == base);
      px_frame* out = NULL;
      assert_int_equal(px_fcache_get(&g_fc, vs, V, key, &out), PX_FC_BUILD);
      px_frame* hist[PX_MAX_HISTORY];
      uint32_t k = 0;
      int before[PX_MAX_HISTORY];
      for (uint32_t i = 0; i < vs->nhist; i++) before[i] = refs(vs->hist[i]);
      assert_true(px_fcache_build_begin(&g_fc, vs, V, key, hist, &k));
      assert_int_equal(k, V - base);
      for (uint32_t i = 0; i < k; i++) {
        assert_ptr_equal(hist[i], vs->hist[i]);
        assert_int_equal(refs(hist[i]), before[i] + 1);
      }
      const uint64_t enc0 = atomic_load(&g_ctr.encodes);
      px_frame* f = px_fcache_build_encode(&g_fc, words(w, (uint32_t)V), N, w, V, key, hist, k,
                                           sum_of(w, (uint32_t)V));
      assert_non_null(f);
      for (uint32_t i = 0; i < vs->nhist; i++) assert_int_equal(refs(vs->hist[i]), before[i]);
      assert_true(atomic_load(&g_ctr.encodes) > enc0);
      assert_int_equal(f->encoding, PX_ENC_DELTA_ZSTD);
      assert_int_equal(f->version, V);
      assert_int_equal(f->base, base);
      assert_true(f->checksum == sum_of(w, (uint32_t)V));
      assert_true(f->len < N * (size_t)w * 95 / 100);
      assert_false(f->in_history);
      /* a client holding the base reconstructs version V bit for bit */
      uint8_t cur[N * 4];
      memcpy(cur, words(w, (uint32_t)base), N * (size_t)w);
      assert_int_equal(client_decode(f, w, cur), PX_DECODE_OK);
      assert_memory_equal(cur, words(w, (uint32_t)V), N * (size_t)w);
      /* and the delta is the wrapping difference of the words */
      uint8_t d[N * 4], want[N * 4];
      assert_int_equal(px_decode_delta_words(f->data, f->len, N, w, d), 0);
      px_delta(words(w, (uint32_t)V), words(w, (uint32_t)base), N, w, want);
      assert_memory_equal(d, want, N * (size_t)w);
      px_fcache_build_end(&g_fc, vs, V, key, f, sum_of(w, (uint32_t)V));
      assert_int_equal(px_fcache_get(&g_fc, vs, V, key, &out), PX_FC_HIT);
      assert_ptr_equal(out, f);
      px_frame_unref(out);
      px_frame_unref(f); /* the next bases' builds evict it (least recently used) */
    }
    expect_all_freed();
  }
}

static void test_build_full_and_raw(void** state) {
  (void)state;
  fc_new(true, 4, 1 << 20, 0);
  px_viewcache* vs = &g_vs[0];
  px_frame* hist[PX_MAX_HISTORY];
  uint32_t k;
  px_frame* out;
  uint8_t cur[N * 4];
  /* FULL of compressible words: SHUFFLE_ZSTD */
  assert_int_equal(px_fcache_get(&g_fc, vs, 3, PX_KEY_FULL, &out), PX_FC_BUILD);
  assert_true(px_fcache_build_begin(&g_fc, vs, 3, PX_KEY_FULL, hist, &k));
  assert_int_equal(k, 0);
  px_frame* f = px_fcache_build_encode(&g_fc, (const uint8_t*)g_w32[3], N, 4, 3, PX_KEY_FULL,
                                       hist, k, sum_of(4, 3));
  assert_non_null(f);
  assert_int_equal(f->encoding, PX_ENC_SHUFFLE_ZSTD);
  assert_true(f->base == PX_BASE_NONE);
  assert_int_equal(f->version, 3);
  assert_true(f->len < N * 4 * 95 / 100);
  memset(cur, 0xee, sizeof cur);
  assert_int_equal(client_decode(f, 4, cur), PX_DECODE_OK);
  assert_memory_equal(cur, g_w32[3], N * 4);
  px_fcache_build_end(&g_fc, vs, 3, PX_KEY_FULL, f, sum_of(4, 3));
  px_frame_unref(f);
  /* RAW key: RAW, whatever the words */
  assert_int_equal(px_fcache_get(&g_fc, vs, 3, PX_KEY_RAW, &out), PX_FC_BUILD);
  assert_true(px_fcache_build_begin(&g_fc, vs, 3, PX_KEY_RAW, hist, &k));
  f = px_fcache_build_encode(&g_fc, (const uint8_t*)g_w32[3], N, 4, 3, PX_KEY_RAW, hist, k, sum_of(4, 3));
  assert_non_null(f);
  assert_int_equal(f->encoding, PX_ENC_RAW);
  assert_int_equal(f->len, N * 4);
  assert_memory_equal(f->data, g_w32[3], N * 4);
  assert_true(f->base == PX_BASE_NONE);
  px_fcache_build_end(&g_fc, vs, 3, PX_KEY_RAW, f, sum_of(4, 3));
  px_frame_unref(f);
  /* FULL of random words (zstd gains nothing): RAW */
  const uint64_t rs = px_checksum(g_rand32[3], N * 4);
  assert_int_equal(px_fcache_get(&g_fc, &g_vb[0], 3, PX_KEY_FULL, &out), PX_FC_BUILD);
  assert_true(px_fcache_build_begin(&g_fc, &g_vb[0], 3, PX_KEY_FULL, hist, &k));
  f = px_fcache_build_encode(&g_fc, (const uint8_t*)g_rand32[3], N, 4, 3, PX_KEY_FULL, hist, k, rs);
  assert_non_null(f);
  assert_int_equal(f->encoding, PX_ENC_RAW);
  assert_memory_equal(f->data, g_rand32[3], N * 4);
  assert_true(f->checksum == rs);
  memset(cur, 0, sizeof cur);
  assert_int_equal(client_decode(f, 4, cur), PX_DECODE_OK);
  px_fcache_build_end(&g_fc, &g_vb[0], 3, PX_KEY_FULL, f, rs);
  px_frame_unref(f);
  expect_all_freed();

  /* a summed delta of random words is not worth sending: RAW of the current words, and
   * the history's references are released all the same */
  fc_new(true, 4, 1 << 20, 0);
  for (uint32_t v = 1; v <= 3; v++) {
    px_fcache_step_begin(&g_fc, g_vs, v, true);
    const size_t cap = px_zstd_bound(N * 4);
    px_frame* d = px_frame_new(&g_fc, cap);
    assert_non_null(d);
    size_t len = px_encode_delta(g_rand32[v], g_rand32[v - 1], N, 4, LEVEL, d->data, cap);
    assert_true(len > 0);
    px_frame_publish(&g_fc, d, len, PX_ENC_DELTA_ZSTD, v, v - 1, px_checksum(g_rand32[v], N * 4));
    px_fcache_install_step(&g_fc, vs, v, true, d, NULL, px_checksum(g_rand32[v], N * 4));
    px_frame_unref(d);
  }
  assert_int_equal(px_fcache_get(&g_fc, vs, 3, 1, &out), PX_FC_BUILD);
  assert_true(px_fcache_build_begin(&g_fc, vs, 3, 1, hist, &k));
  assert_int_equal(k, 2);
  const uint64_t s3 = px_checksum(g_rand32[3], N * 4);
  f = px_fcache_build_encode(&g_fc, (const uint8_t*)g_rand32[3], N, 4, 3, 1, hist, k, s3);
  assert_non_null(f);
  assert_int_equal(f->encoding, PX_ENC_RAW);
  assert_true(f->base == PX_BASE_NONE);
  assert_int_equal(f->version, 3);
  assert_memory_equal(f->data, g_rand32[3], N * 4);
  assert_int_equal(refs(vs->hist[0]), 2); /* history + the step's cache slot */
  assert_int_equal(refs(vs->hist[1]), 1);
  px_fcache_build_end(&g_fc, vs, 3, 1, f, s3);
  assert_int_equal(px_fcache_get(&g_fc, vs, 3, 1, &out), PX_FC_HIT);
  assert_ptr_equal(out, f);
  px_frame_unref(out);
  px_frame_unref(f);
  expect_all_freed();

  /* a slot for a base the history cannot cover (it was dropped meanwhile): no deltas
   * taken, a RAW full chunk that still reconstructs the version */
  fc_new(true, 4, 1 << 20, 0);
  for (uint32_t v = 1; v <= 5; v++) step_delta(g_vs, v);
  assert_int_equal(px_fcache_get(&g_fc, vs, 5, 0, &out), PX_FC_BUILD);
  k = 99;
  assert_true(px_fcache_build_begin(&g_fc, vs, 5, 0, hist, &k));
  assert_int_equal(k, 0);
  f = px_fcache_build_encode(&g_fc, (const uint8_t*)g_w32[5], N, 4, 5, 0, hist, k, sum_of(4, 5));
  assert_non_null(f);
  assert_int_equal(f->encoding, PX_ENC_RAW);
  assert_memory_equal(f->data, g_w32[5], N * 4);
  px_fcache_build_end(&g_fc, vs, 5, 0, f, sum_of(4, 5));
  px_frame_unref(f);
  expect_all_freed();

  /* without compression a FULL build is RAW */
  fc_new(false, 4, 1 << 20, 0);
  assert_int_equal(px_fcache_get(&g_fc, vs, 2, PX_KEY_FULL, &out), PX_FC_BUILD);
  assert_true(px_fcache_build_begin(&g_fc, vs, 2, PX_KEY_FULL, hist, &k));
  f = px_fcache_build_encode(&g_fc, (const uint8_t*)g_w32[2], N, 4, 2, PX_KEY_FULL, hist, k, sum_of(4, 2));
  assert_non_null(f);
  assert_int_equal(f->encoding, PX_ENC_RAW);
  assert_memory_equal(f->data, g_w32[2], N * 4);
  px_fcache_build_end(&g_fc, vs, 2, PX_KEY_FULL, f, sum_of(4, 2));
  px_frame_unref(f);
  expect_all_freed();
}

static void test_build_stale_and_failed(void** state) {
  (void)state;
  fc_new(true, 4, 1 << 20, 0);
  px_viewcache* vs = &g_vs[0];
  px_frame* hist[PX_MAX_HISTORY];
  uint32_t k = 7;
  px_frame* out;
  step_delta(g_vs, 1);
  step_delta(g_vs, 2);
  /* no slot for the key: stale */
  assert_false(px_fcache_build_begin(&g_fc, vs, 2, PX_KEY_FULL, hist, &k));
  assert_int_equal(k, 0);
  /* a slot already installed (not pending): stale, no reference taken */
  const int r0 = refs(vs->hist[0]);
  k = 7;
  assert_false(px_fcache_build_begin(&g_fc, vs, 2, 1, hist, &k));
  assert_int_equal(k, 0);
  assert_int_equal(refs(vs->hist[0]), r0);
  /* a claimed slot that a step cleared before the build began */
  assert_int_equal(px_fcache_get(&g_fc, vs, 2, 0, &out), PX_FC_BUILD);
  step_delta(g_vs, 3);
  assert_false(px_fcache_build_begin(&g_fc, vs, 2, 0, hist, &k));

  /* a failed build (NULL) frees its slot: the next pull builds again */
  assert_int_equal(px_fcache_get(&g_fc, vs, 3, PX_KEY_FULL, &out), PX_FC_BUILD);
  assert_true(px_fcache_build_begin(&g_fc, vs, 3, PX_KEY_FULL, hist, &k));
  px_fcache_build_end(&g_fc, vs, 3, PX_KEY_FULL, NULL, 0);
  assert_int_equal(slot_of(vs, PX_KEY_FULL), -1);
  assert_int_equal(px_fcache_get(&g_fc, vs, 3, PX_KEY_FULL, &out), PX_FC_BUILD);

  /* a build that ends after its slot was dropped installs nothing (and keeps its frame) */
  assert_true(px_fcache_build_begin(&g_fc, vs, 3, PX_KEY_FULL, hist, &k));
  px_frame* f = px_fcache_build_encode(&g_fc, (const uint8_t*)g_w32[3], N, 4, 3, PX_KEY_FULL,
                                       hist, k, sum_of(4, 3));
  assert_non_null(f);
  px_fcache_clear(&g_fc, g_vs, false);
  px_fcache_build_end(&g_fc, vs, 3, PX_KEY_FULL, f, sum_of(4, 3));
  assert_int_equal(slot_of(vs, PX_KEY_FULL), -1);
  assert_int_equal(refs(f), 1);
  px_frame_unref(f);
  /* and one whose slot is installed already changes nothing */
  px_frame* g = install_built(vs, 3, PX_KEY_RAW);
  px_frame* h = px_frame_copy(&g_fc, g_w32[3], N * 4, PX_ENC_RAW, 3, PX_BASE_NONE, sum_of(4, 3));
  assert_non_null(h);
  px_fcache_build_end(&g_fc, vs, 3, PX_KEY_RAW, h, sum_of(4, 3));
  assert_int_equal(px_fcache_get(&g_fc, vs, 3, PX_KEY_RAW, &out), PX_FC_HIT);
  assert_ptr_equal(out, g);
  px_frame_unref(out);
  assert_int_equal(refs(h), 1);
  px_frame_unref(h);
  px_frame_unref(g);

  /* the view checksum: set by a build when the step left none, never overwritten */
  fc_new(true, 4, 1 << 20, 0);
  px_fcache_step_begin(&g_fc, g_vs, 4, false);
  px_fcache_install_step(&g_fc, vs, 4, false, NULL, NULL, 0); /* clears its slots... */
  vs->checksum_valid = false; /* ...and as if the step never said (a restore) */
  f = install_built(vs, 4, PX_KEY_FULL);
  assert_true(vs->checksum_valid);
  assert_true(vs->checksum == sum_of(4, 4));
  px_frame_unref(f);
  assert_int_equal(px_fcache_get(&g_fc, vs, 4, PX_KEY_RAW, &out), PX_FC_BUILD);
  assert_true(px_fcache_build_begin(&g_fc, vs, 4, PX_KEY_RAW, hist, &k));
  f = px_fcache_build_encode(&g_fc, (const uint8_t*)g_w32[4], N, 4, 4, PX_KEY_RAW, hist, k, 12345);
  px_fcache_build_end(&g_fc, vs, 4, PX_KEY_RAW, f, 12345);
  assert_true(vs->checksum == sum_of(4, 4));
  px_frame_unref(f);
  expect_all_freed();
}

/* ---- failed steps and clear --------------------------------------------------------------- */

static void test_step_failed_and_clear(void** state) {
  (void)state;
  fc_new(true, 4, 1 << 20, 0);
  g_vs[1].enabled = true;
  for (uint32_t v = 1; v <= 3; v++) step_delta(g_vs, v);
  px_frame* f = install_built(&g_vs[0], 3, PX_KEY_RAW);
  /* a sender holds the newest delta */
  px_frame* held = NULL;
  assert_int_equal(px_fcache_get(&g_fc, &g_vs[0], 3, 2, &held), PX_FC_HIT);
  /* clear without the history: the cache goes, the history stays */
  px_fcache_clear(&g_fc, g_vs, false);
  for (int v = 0; v < 2; v++) {
    assert_int_equal(used_slots(&g_vs[v]), 0);
    assert_int_equal(g_vs[v].nhist, 3);
  }
  assert_int_equal(refs(f), 1);
  px_frame_unref(f);
  px_frame* out = NULL;
  assert_int_equal(px_fcache_get(&g_fc, &g_vs[0], 3, 2, &out), PX_FC_BUILD);
  /* a failed step: the cache and the history of both views */
  px_fcache_step_failed(&g_fc, g_vs);
  for (int v = 0; v < 2; v++) {
    assert_int_equal(used_slots(&g_vs[v]), 0);
    assert_int_equal(g_vs[v].nhist, 0);
    for (int i = 0; i < PX_MAX_HISTORY; i++) assert_null(g_vs[v].hist[i]);
  }
  assert_int_equal(atomic_load(&g_ctr.history_bytes), 0);
  /* the sender's frame is intact and still counted until it lets go */
  assert_int_equal(refs(held), 1);
  assert_int_equal(atomic_load(&g_ctr.frame_bytes), (int64_t)held->cap);
  uint32_t cur[N];
  memcpy(cur, g_w32[2], sizeof cur);
  assert_int_equal(client_decode(held, 4, cur), PX_DECODE_OK);
  assert_memory_equal(cur, g_w32[3], sizeof cur);
  px_frame_unref(held);
  assert_int_equal(atomic_load(&g_ctr.frame_bytes), 0);
  /* keys after the failure: nothing to diff from */
  assert_true(px_fcache_key(&g_fc, &g_vs[0], 3, 2, true, true) == PX_KEY_FULL);
  /* the next steps start a new history */
  step_delta(g_vs, 4);
  assert_int_equal(g_vs[0].nhist, 1);
  assert_int_equal(g_vs[1].nhist, 1);
  expect_all_freed();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_init, teardown),
      cmocka_unit_test_teardown(test_frame_lifecycle, teardown),
      cmocka_unit_test_teardown(test_frame_copy_and_adopt, teardown),
      cmocka_unit_test_teardown(test_frame_refs_threads, teardown),
      cmocka_unit_test_teardown(test_eager_delta, teardown),
      cmocka_unit_test_teardown(test_step_begin, teardown),
      cmocka_unit_test_teardown(test_install_step_history, teardown),
      cmocka_unit_test_teardown(test_install_step_full_frames, teardown),
      cmocka_unit_test_teardown(test_history_budget, teardown),
      cmocka_unit_test_teardown(test_key, teardown),
      cmocka_unit_test_teardown(test_get, teardown),
      cmocka_unit_test_teardown(test_get_memory_limit, teardown),
      cmocka_unit_test_teardown(test_get_lru_eviction, teardown),
      cmocka_unit_test_teardown(test_build_summed_delta, teardown),
      cmocka_unit_test_teardown(test_build_full_and_raw, teardown),
      cmocka_unit_test_teardown(test_build_stale_and_failed, teardown),
      cmocka_unit_test_teardown(test_step_failed_and_clear, teardown),
  };
  return cmocka_run_group_tests(tests, group_setup, NULL);
}
