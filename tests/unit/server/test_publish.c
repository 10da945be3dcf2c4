/* Unit tests of server/publish.c with the frame cache it fills (framecache.c): the frames of a step (the per-step delta history, --history and --history-bytes, the frames for base version-1), builds on the compute pool for older bases and full chunks (pending, stale, shared), the bf16 view, 16-bit tensors, --no-compression. Steps are made as aggregation makes them: the outputs computed from the bits before and after (px_step_outputs), then px_publish_step. Every frame is decoded as a pull would and compared bit for bit. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <xxhash.h>

#include "codec/checksum.h"
#include "codec/dtype.h"
#include "codec/initializer.h"
#include "codec/payload.h"
#include "codec/transform.h"
#include "rpc/rpc_base.h"
#include "util/bufpool.h"
#include "util/iov.h"
#include "util/log.h"
#include "util/taskpool.h"
#include "wire/chunk_msg.h"
#include "backend/step_io.h"
#include "config.h"
#include "service.h"

#define ARGC(a) ((int)(sizeof(a) / sizeof((a)[0])))

static const char* const env_vars[] = {
    "PMX_LISTEN", "PMX_WORKERS", "PMX_LR", "PMX_MOMENTUM", "PMX_WEIGHT_DECAY",
    "PMX_CHUNK_BYTES", "PMX_THREADS", "PMX_CQ_THREADS", "PMX_MAX_TENSORS",
    "PMX_MAX_TENSOR_BYTES", "PMX_HOLD_BYTES", "PMX_DRAIN_TIMEOUT", "PMX_LOG_LEVEL",
    "PMX_HISTORY", "PMX_HISTORY_BYTES", "PMX_COMPRESSION_LEVEL", "PMX_COMPRESSION"};

static void clear_env(void) {
  for (size_t i = 0; i < sizeof env_vars / sizeof env_vars[0]; i++) unsetenv(env_vars[i]);
}

/* ---- a service per test ------------------------------------------------------------------ */

static px_service g_svc;
static px_server* G = &g_svc.srv;
static bool g_live; /* g_svc is initialised */

static void svc_init(int argc, char** argv) {
  px_config cfg;
  char err[256] = "";
  if (px_config_parse(&cfg, argc, argv, err, sizeof err) != 0) fail_msg("config: %s", err);
  if (px_service_init(&g_svc, &cfg, err, sizeof err) != 0) fail_msg("service init: %s", err);
  g_live = true;
}

static int svc_setup(void** state) {
  (void)state;
  char* argv[] = {"paramex-server", "--workers", "2", "--chunk-bytes", "4K", "--threads", "1"};
  px_config cfg;
  char err[256];
  if (px_config_parse(&cfg, ARGC(argv), argv, err, sizeof err) != 0) return -1;
  if (px_service_init(&g_svc, &cfg, err, sizeof err) != 0) return -1;
  g_live = true;
  return 0;
}

static int svc_teardown(void** state) {
  (void)state;
  if (g_live) px_service_deinit(&g_svc);
  g_live = false;
  return 0;
}

/* A step's frames made as aggregation makes them: the outputs computed on the cpu from the
 * bits before and after (px_step_outputs), then published (px_publish_step). */
static void after_step(px_tensor_state* t, px_chunk_state* c, uint64_t version, const void* old_bits,
                       const void* new_bits) {
  pthread_mutex_lock(&c->mu);
  bool view1 = c->view[1].enabled;
  pthread_mutex_unlock(&c->mu);
  px_step_io io;
  px_step_io_alloc(&io, t->dtype, c->elems, view1,
                   G->fcache.o.compression && G->fcache.o.history > 0);
  assert_non_null(io.bits[0]);
  px_step_outputs(t->dtype, c->elems, old_bits, new_bits, &io);
  px_publish_step(&G->publish, t, c, version, &io);
  px_step_io_free(&io, t->dtype, c->elems);
}

/* A step whose outputs could not be allocated. */
static void step_failed(px_tensor_state* t, px_chunk_state* c, uint64_t version) {
  px_step_io io;
  memset(&io, 0, sizeof io);
  px_publish_step(&G->publish, t, c, version, &io);
}

/* The frame for key, as a pull looks it up (c->mu held): a referenced frame, or NULL and
 * *wait saying whether one is being made (a build is started when nothing is). */
static px_frame* frames_get(px_tensor_state* t, px_chunk_state* c, int view, uint64_t key,
                            bool* wait) {
  px_frame* f = NULL;
  *wait = false;
  switch (px_fcache_get(&G->fcache, &c->view[view], c->version, key, &f)) {
    case PX_FC_HIT: return f;
    case PX_FC_WAIT: *wait = true; return NULL;
    case PX_FC_BUILD: *wait = px_publish_build(&G->publish, t, c, view, key); return NULL;
    case PX_FC_FULL: return NULL;
  }
  return NULL;
}

static int group_setup(void** state) {
  (void)state;
  clear_env();
  px_log_init("test", PX_LOG_WARN); /* no "declared tensor" lines */
  px_rpc_init();
  return 0;
}

static int group_teardown(void** state) {
  (void)state;
  px_rpc_shutdown();
  return 0;
}

static px_declare_args dargs(const char* name, const uint64_t* shape, size_t ndim) {
  px_declare_args a;
  memset(&a, 0, sizeof a);
  a.name = name;
  a.dtype = PX_DT_F32;
  a.shape = shape;
  a.ndim = ndim;
  a.init_kind = PX_FILL_ZEROS;
  a.worker_id = 1;
  a.incarnation = 42;
  return a;
}

/* Declares and returns the status; *t untouched unless OK. */
static int declare(const px_declare_args* a, px_tensor_state** t, bool* created, char* err,
                   size_t errlen) {
  err[0] = 0;
  px_waiter* woken = NULL;
  int st = px_store_declare(&G->store, a, t, created, NULL, &woken, err, errlen);
  px_waiters_run(woken);
  return st;
}

static uint32_t ntensors(void) { return atomic_load(&G->store.ntensors); }

/* ---- steps, the history and the frame cache --------------------------------------------- */

static int refs(px_frame* f) { return atomic_load(&f->refs); }

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

static void nap_ms(long ms) {
  struct timespec ts = {0, ms * 1000000L};
  nanosleep(&ts, NULL);
}

static void* dup_mem(const void* p, size_t n) {
  void* q = malloc(n ? n : 1);
  assert_non_null(q);
  memcpy(q, p, n);
  return q;
}

/* A copy of chunk c's native bits, taken under its lock. */
static void* chunk_bits(const px_tensor_state* t, px_chunk_state* c) {
  pthread_mutex_lock(&c->mu);
  void* b = dup_mem(c->params, (size_t)c->elems * t->elem);
  pthread_mutex_unlock(&c->mu);
  return b;
}

/* View v's words of native bits: the bits themselves, or the bf16 view of f32 bits. */
static void* view_words(const px_tensor_state* t, const void* bits, size_t n, int v) {
  if (v == 0) return dup_mem(bits, n * t->elem);
  uint16_t* o = malloc(n * 2);
  assert_non_null(o);
  px_f32_to_bf16_n(bits, o, n);
  return o;
}

/* One SGD step on chunk c made the way the push handler makes it: the new values (in f32,
 * rounded back for 16-bit tensors), version + 1 and px_frames_step_begin under the lock,
 * then px_frames_after_step with copies of the bits before and after. Returns the new
 * version. */
static uint64_t step(px_tensor_state* t, px_chunk_state* c, float lr) {
  const size_t n = c->elems, nb = n * t->elem;
  void* old = malloc(nb);
  void* nw = malloc(nb);
  float* f = malloc(n * sizeof *f);
  assert_true(old && nw && f);
  pthread_mutex_lock(&c->mu);
  memcpy(old, c->params, nb);
  if (t->dtype == PX_DT_F32) memcpy(f, c->params, nb);
  else if (t->dtype == PX_DT_BF16) px_bf16_to_f32_n(c->params, f, n);
  else px_f16_to_f32_n(c->params, f, n);
  for (size_t i = 0; i < n; i++) f[i] -= lr * (float)(0.01 * gauss());
  if (t->dtype == PX_DT_F32) memcpy(c->params, f, nb);
  else if (t->dtype == PX_DT_BF16) px_f32_to_bf16_n(f, c->params, n);
  else px_f32_to_f16_n(f, c->params, n);
  memcpy(nw, c->params, nb);
  c->version++;
  const uint64_t v = c->version;
  px_fcache_step_begin(&G->fcache, c->view, c->version, true);
  pthread_mutex_unlock(&c->mu);
  after_step(t, c, v, old, nw);
  free(f);
  free(nw);
  free(old);
  return v;
}

/* The cache slot of key, -1 when none. */
static int slot_of(const px_viewcache* vs, uint64_t key) {
  for (int i = 0; i < PX_CACHE_SLOTS; i++)
    if (vs->cache[i].used && vs->cache[i].key == key) return i;
  return -1;
}

/* Sum of the allocation sizes of every history frame of every chunk and view. */
static int64_t history_sum(void) {
  int64_t s = 0;
  for (uint32_t i = 0; i < ntensors(); i++) {
    px_tensor_state* t = px_store_tensor(&G->store, i);
    for (uint32_t k = 0; k < t->nchunks; k++) {
      px_chunk_state* c = &t->chunks[k];
      pthread_mutex_lock(&c->mu);
      for (int v = 0; v < 2; v++)
        for (uint32_t h = 0; h < c->view[v].nhist; h++) s += (int64_t)c->view[v].hist[h]->cap;
      pthread_mutex_unlock(&c->mu);
    }
  }
  return s;
}

static uint64_t ctr(_Atomic uint64_t* c) { return atomic_load(c); }

/* Drops every frame of every chunk (the cache first, then the history) and checks that
 * the memory counters come back to zero: every frame counted was uncounted once. */
static void clear_all_frames(void) {
  for (int history_too = 0; history_too < 2; history_too++) {
    for (uint32_t i = 0; i < ntensors(); i++) {
      px_tensor_state* t = px_store_tensor(&G->store, i);
      for (uint32_t k = 0; k < t->nchunks; k++) {
        px_chunk_state* c = &t->chunks[k];
        pthread_mutex_lock(&c->mu);
        px_fcache_clear(&G->fcache, c->view, history_too);
        for (int v = 0; v < 2; v++) {
          for (int j = 0; j < PX_CACHE_SLOTS; j++) assert_false(c->view[v].cache[j].used);
          if (history_too) assert_int_equal(c->view[v].nhist, 0);
        }
        pthread_mutex_unlock(&c->mu);
      }
    }
    assert_int_equal(atomic_load(&G->ctr.history_bytes), history_sum());
    if (!history_too) /* only the history is left */
      assert_int_equal(atomic_load(&G->ctr.frame_bytes), history_sum());
  }
  assert_int_equal(atomic_load(&G->ctr.history_bytes), 0);
  assert_int_equal(atomic_load(&G->ctr.frame_bytes), 0);
}

/* Decodes frame f as a pull sends it (px_chunk_decode) onto a copy of start (or onto
 * junk when start is NULL) and expects want. */
static void expect_frame(const px_frame* f, const void* start, const void* want, size_t n,
                         int width) {
  const size_t bytes = n * (size_t)width;
  px_chunk h;
  memset(&h, 0, sizeof h);
  h.encoding = f->encoding;
  h.raw_len = (uint32_t)bytes;
  h.checksum = f->checksum;
  h.has_payload = f->len > 0;
  h.payload_len = f->len;
  px_iov seg = {f->data, f->len};
  uint8_t* dst = malloc(bytes);
  assert_non_null(dst);
  if (start) memcpy(dst, start, bytes);
  else memset(dst, 0xEE, bytes);
  char err[256] = "";
  px_decode_result r = px_chunk_decode(&h, &seg, 1, dst, n, width, err, sizeof err);
  if (r != PX_DECODE_OK)
    fail_msg("%s frame v%llu (base %lld): %s", px_encoding_name(f->encoding),
             (unsigned long long)f->version, (long long)f->base, err);
  assert_memory_equal(dst, want, bytes);
  assert_true(f->checksum == px_checksum(want, bytes));
  if (f->encoding == PX_ENC_DELTA_ZSTD) {
    /* the decoded delta words applied to the base give the new words */
    assert_non_null(start);
    uint8_t* d = malloc(bytes);
    assert_non_null(d);
    assert_int_equal(px_decode_delta_words(f->data, f->len, n, width, d), 0);
    px_delta_apply(start, d, n, width, dst);
    assert_memory_equal(dst, want, bytes);
    free(d);
  }
  free(dst);
}

/* The frame for key: from the cache, or built on the pool, waited for with a bounded
 * polling loop (2 s). Returns a referenced frame. */
static px_frame* get_frame(px_tensor_state* t, px_chunk_state* c, int view, uint64_t key) {
  for (int i = 0; i < 2000; i++) {
    bool wait = false;
    pthread_mutex_lock(&c->mu);
    px_frame* f = frames_get(t, c, view, key, &wait);
    pthread_mutex_unlock(&c->mu);
    if (f) return f;
    if (!wait) fail_msg("pmx_frames_get: no frame and nothing to wait for");
    nap_ms(1);
  }
  fail_msg("no frame for key %llu after 2 s", (unsigned long long)key);
  return NULL;
}

static uint64_t key_of(px_chunk_state* c, int view, uint64_t have, bool delta, bool shuffle) {
  pthread_mutex_lock(&c->mu);
  uint64_t k = px_fcache_key(&G->fcache, &c->view[view], c->version, have, delta, shuffle);
  pthread_mutex_unlock(&c->mu);
  return k;
}

/* A job that holds the (one-thread) pool until opened, so that build jobs queue behind
 * it; a marker job after them tells when they ran. */
typedef struct gate {
  px_job job;
  atomic_int open, ran;
} gate;

static void gate_run(px_job* j) {
  gate* g = (gate*)j;
  atomic_store(&g->ran, 1);
  for (int i = 0; i < 4000 && !atomic_load(&g->open); i++) nap_ms(1);
}

static void marker_run(px_job* j) { atomic_store(&((gate*)j)->ran, 1); }

static void pool_block(gate* g) {
  memset(g, 0, sizeof *g);
  g->job.fn = gate_run;
  px_taskpool_submit(G->pool, &g->job);
}

/* Opens the gate and returns once every job queued behind it has run. */
static void pool_release_and_drain(gate* g) {
  static gate m;
  memset(&m, 0, sizeof m);
  m.job.fn = marker_run;
  px_taskpool_submit(G->pool, &m.job);
  atomic_store(&g->open, 1);
  for (int i = 0; i < 2000 && !atomic_load(&m.ran); i++) nap_ms(1);
  assert_true(atomic_load(&m.ran));
}

static px_tensor_state* declare_normal(const char* name, uint64_t numel, int dtype, float sd,
                                        uint64_t seed) {
  px_declare_args a = dargs(name, &numel, 1);
  a.dtype = dtype;
  a.init_kind = PX_FILL_NORMAL;
  a.init_a = 0;
  a.init_b = sd;
  a.init_seed = seed;
  px_tensor_state* t = NULL;
  bool created;
  char err[256];
  int st = declare(&a, &t, &created, err, sizeof err);
  if (st != PX_ST_OK) fail_msg("declare %s: %s", name, err);
  return t;
}

static void test_chunk_frames(void** state) {
  (void)state;
  const uint64_t shape[] = {3000};
  px_declare_args a = dargs("f", shape, 1);
  a.init_kind = PX_FILL_NORMAL;
  a.init_a = 0;
  a.init_b = 1;
  a.init_seed = 77;
  px_tensor_state* t = NULL;
  bool created;
  char err[256];
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_OK);
  px_chunk_state* c = &t->chunks[2];
  assert_int_equal(c->elems, 952);
  const size_t bytes = 952 * 4;
  px_viewcache* vs = &c->view[0];
  /* nothing is built before it is asked for */
  assert_int_equal(vs->nhist, 0);
  for (int i = 0; i < PX_CACHE_SLOTS; i++) assert_false(vs->cache[i].used);
  assert_true(vs->checksum_valid);
  assert_true(vs->checksum == px_checksum(c->params, bytes));
  pthread_mutex_lock(&c->mu);
  assert_null(px_waiters_take(&G->waiters, &c->waiters)); /* nobody waits */
  pthread_mutex_unlock(&c->mu);
  assert_true(key_of(c, 0, PX_BASE_NONE, true, true) == PX_KEY_FULL);

  /* A full frame, built once on the pool and then shared. */
  const uint64_t e0 = ctr(&G->ctr.encodes), h0 = ctr(&G->ctr.cache_hits);
  px_frame* f1 = get_frame(t, c, 0, PX_KEY_FULL);
  assert_int_equal(f1->version, 0);
  assert_true(f1->base == PX_BASE_NONE);
  assert_true(f1->encoding == PX_ENC_SHUFFLE_ZSTD || f1->encoding == PX_ENC_RAW);
  assert_false(f1->in_history);
  assert_true(f1->checksum == px_checksum(c->params, bytes));
  assert_true(f1->len <= f1->cap);
  expect_frame(f1, NULL, c->params, 952, 4);
  assert_int_equal(ctr(&G->ctr.encodes), e0 + 1);
  px_frame* f2 = get_frame(t, c, 0, PX_KEY_FULL);
  assert_ptr_equal(f1, f2);
  assert_int_equal(refs(f1), 3); /* the cache's + ours */
  assert_int_equal(ctr(&G->ctr.encodes), e0 + 1);
  assert_true(ctr(&G->ctr.cache_hits) >= h0 + 2);
  int si = slot_of(vs, PX_KEY_FULL);
  assert_true(si >= 0);
  assert_ptr_equal(vs->cache[si].frame, f1);
  assert_false(vs->cache[si].pending);
  px_frame_unref(f1);
  px_frame_unref(f2);
  assert_int_equal(refs(vs->cache[si].frame), 1);

  /* RAW for clients that accept no shuffle */
  assert_true(key_of(c, 0, PX_BASE_NONE, true, false) == PX_KEY_RAW);
  px_frame* fr = get_frame(t, c, 0, PX_KEY_RAW);
  assert_int_equal(fr->encoding, PX_ENC_RAW);
  assert_int_equal(fr->len, bytes);
  assert_memory_equal(fr->data, c->params, bytes);
  px_frame_unref(fr);

  /* A step: the chunk drops its frames; a holder keeps the old one intact. */
  px_frame* old = get_frame(t, c, 0, PX_KEY_FULL);
  void* before = chunk_bits(t, c);
  pthread_mutex_lock(&c->mu);
  float* p = c->params;
  const float old0 = p[0];
  p[0] = old0 + 42.0f;
  void* after = dup_mem(c->params, bytes);
  c->version = 1;
  px_fcache_step_begin(&G->fcache, c->view, c->version, true);
  assert_true(slot_of(vs, PX_KEY_FULL) < 0);
  assert_true(slot_of(vs, PX_KEY_RAW) < 0);
  si = slot_of(vs, 0); /* the delta from version 0 will be installed: pulls wait for it */
  assert_true(si >= 0);
  assert_true(vs->cache[si].pending);
  assert_null(vs->cache[si].frame);
  assert_false(vs->checksum_valid);
  bool wait = false;
  assert_null(frames_get(t, c, 0, 0, &wait));
  assert_true(wait);
  pthread_mutex_unlock(&c->mu);
  assert_int_equal(refs(old), 1); /* only ours now */
  after_step(t, c, 1, before, after);
  assert_int_equal(old->version, 0);
  expect_frame(old, NULL, before, 952, 4);
  px_frame* f3 = get_frame(t, c, 0, PX_KEY_FULL);
  assert_ptr_not_equal(f3, old);
  assert_int_equal(f3->version, 1);
  assert_true(f3->checksum == px_checksum(c->params, bytes));
  assert_true(f3->checksum != old->checksum);
  expect_frame(f3, NULL, after, 952, 4);
  assert_int_equal(refs(f3), 2);
  /* the one-step delta: one changed word */
  px_frame* d1 = get_frame(t, c, 0, 0);
  assert_int_equal(d1->encoding, PX_ENC_DELTA_ZSTD);
  assert_int_equal(d1->base, 0);
  assert_true(d1->len < 100);
  expect_frame(d1, before, after, 952, 4);
  assert_ptr_equal(d1, vs->hist[0]);
  px_frame_unref(d1);
  px_frame_unref(old); /* freed: its buffer goes back to the free list */
  px_frame_unref(f3);
  si = slot_of(vs, PX_KEY_FULL);
  assert_int_equal(refs(vs->cache[si].frame), 1);
  px_frame_unref(NULL); /* accepted */
  free(before);
  free(after);
}

/* --history H: each step adds its delta; H are kept and no more; the counter follows; the
 * slot for base version-1 holds the delta frame. */
static void test_after_step_history(void** state) {
  (void)state;
  char* argv[] = {"paramex-server", "--workers", "1", "--chunk-bytes", "4K", "--threads", "1",
                  "--history", "3"};
  svc_init(ARGC(argv), argv);
  rng_state = 1;
  px_tensor_state* t = declare_normal("h", 2500, PX_DT_F32, 0.02f, 5);
  assert_int_equal(t->nchunks, 3);
  enum { STEPS = 8 };
  px_chunk_state* c = &t->chunks[1];
  const size_t n = c->elems, bytes = n * 4;
  void* bits[STEPS + 1];
  bits[0] = chunk_bits(t, c);
  assert_int_equal(atomic_load(&G->ctr.history_bytes), 0);
  for (uint64_t s = 1; s <= STEPS; s++) {
    const uint64_t e0 = ctr(&G->ctr.encodes);
    for (uint32_t k = 0; k < t->nchunks; k++) assert_int_equal(step(t, &t->chunks[k], 1e-3f), s);
    assert_true(ctr(&G->ctr.encodes) >= e0 + t->nchunks);
    bits[s] = chunk_bits(t, c);
    px_viewcache* vs = &c->view[0];
    pthread_mutex_lock(&c->mu);
    const uint32_t want = s < 3 ? (uint32_t)s : 3;
    assert_int_equal(vs->nhist, want);
    for (uint32_t i = 0; i < vs->nhist; i++) {
      px_frame* h = vs->hist[i];
      assert_int_equal(h->version, s - i);
      assert_int_equal(h->base, s - i - 1);
      assert_int_equal(h->encoding, PX_ENC_DELTA_ZSTD);
      assert_true(h->in_history);
      assert_true(h->len > 0 && h->len <= h->cap);
    }
    for (uint32_t i = vs->nhist; i < PX_MAX_HISTORY; i++) assert_null(vs->hist[i]);
    assert_true(vs->checksum_valid);
    assert_true(vs->checksum == px_checksum(bits[s], bytes));
    int si = slot_of(vs, s - 1);
    assert_true(si >= 0);
    assert_false(vs->cache[si].pending);
    px_frame* f = vs->cache[si].frame;
    assert_non_null(f);
    assert_int_equal(f->encoding, PX_ENC_DELTA_ZSTD); /* SGD deltas compress ~2x */
    assert_ptr_equal(f, vs->hist[0]);
    assert_int_equal(f->version, s);
    assert_int_equal(f->base, s - 1);
    assert_true(f->len * 10 < bytes * 8);
    assert_false(c->view[1].enabled);
    assert_int_equal(c->view[1].nhist, 0);
    pthread_mutex_unlock(&c->mu);
    expect_frame(f, bits[s - 1], bits[s], n, 4);
    for (uint32_t i = 0; i < vs->nhist; i++)
      expect_frame(vs->hist[i], bits[s - i - 1], bits[s - i], n, 4);
    assert_int_equal(atomic_load(&G->ctr.history_bytes), history_sum());
    assert_true(history_sum() > 0);
    /* the frame counter covers at least the history */
    assert_true(atomic_load(&G->ctr.frame_bytes) >= atomic_load(&G->ctr.history_bytes));
  }
  /* the other chunks likewise */
  for (uint32_t k = 0; k < t->nchunks; k++) assert_int_equal(t->chunks[k].view[0].nhist, 3);
  uint64_t vmax;
  assert_int_equal(px_tensor_version_min(t, &vmax, NULL), STEPS);
  assert_int_equal(vmax, STEPS);

  /* A step whose copies could not be made: the history (now with a gap) goes, pulls get
   * full chunks, and the next step starts a new history. */
  pthread_mutex_lock(&c->mu);
  c->version++;
  px_fcache_step_begin(&G->fcache, c->view, c->version, true);
  pthread_mutex_unlock(&c->mu);
  step_failed(t, c, STEPS + 1);
  assert_int_equal(c->view[0].nhist, 0);
  for (int i = 0; i < PX_CACHE_SLOTS; i++) assert_false(c->view[0].cache[i].used);
  assert_int_equal(atomic_load(&G->ctr.history_bytes), history_sum());
  assert_true(key_of(c, 0, STEPS, true, true) == PX_KEY_FULL);
  void* cur = chunk_bits(t, c);
  px_frame* f = get_frame(t, c, 0, PX_KEY_FULL);
  assert_int_equal(f->version, STEPS + 1);
  expect_frame(f, NULL, cur, n, 4);
  px_frame_unref(f);
  assert_true(c->view[0].checksum_valid);
  assert_true(c->view[0].checksum == px_checksum(cur, bytes));
  assert_int_equal(step(t, c, 1e-3f), STEPS + 2);
  void* next = chunk_bits(t, c);
  assert_int_equal(c->view[0].nhist, 1);
  assert_int_equal(key_of(c, 0, STEPS + 1, true, true), STEPS + 1);
  assert_true(key_of(c, 0, STEPS, true, true) == PX_KEY_FULL);
  f = get_frame(t, c, 0, STEPS + 1);
  expect_frame(f, cur, next, n, 4);
  px_frame_unref(f);
  free(next);
  free(cur);
  clear_all_frames();
  for (int s = 0; s <= STEPS; s++) free(bits[s]);
}

/* --history-bytes: the history stays within its budget; the newest delta is always kept. */
static void test_history_budget(void** state) {
  (void)state;
  char* argv[] = {"paramex-server", "--workers", "1", "--chunk-bytes", "4K", "--threads", "1",
                  "--history", "4"};
  svc_init(ARGC(argv), argv);
  rng_state = 2;
  px_tensor_state* t = declare_normal("b", 1024, PX_DT_F32, 0.02f, 6);
  px_chunk_state* c = &t->chunks[0];
  step(t, c, 1e-3f);
  const int64_t fcap = (int64_t)c->view[0].hist[0]->cap;
  assert_int_equal(atomic_load(&G->ctr.history_bytes), fcap);
  /* room for two deltas */
  G->fcache.o.history_bytes = (uint64_t)(2 * fcap);
  void* prev = chunk_bits(t, c);
  for (int s = 2; s <= 10; s++) {
    uint64_t v = step(t, c, 1e-3f);
    void* cur = chunk_bits(t, c);
    px_viewcache* vs = &c->view[0];
    const int64_t hb = atomic_load(&G->ctr.history_bytes);
    assert_int_equal(hb, history_sum());
    assert_true(hb <= 2 * fcap);
    assert_true(vs->nhist >= 1 && vs->nhist <= 2);
    for (uint32_t i = 0; i < vs->nhist; i++) assert_int_equal(vs->hist[i]->version, v - i);
    expect_frame(vs->hist[0], prev, cur, c->elems, 4);
    free(prev);
    prev = cur;
  }
  /* A budget of 0 keeps only the newest delta (it is also the frame pulls get). */
  G->fcache.o.history_bytes = 0;
  step(t, c, 1e-3f);
  assert_int_equal(c->view[0].nhist, 1);
  assert_int_equal(atomic_load(&G->ctr.history_bytes), fcap);
  free(prev);
}

/* The key a pull uses, by the base it holds and the encodings it accepts. */
static void test_frames_key(void** state) {
  (void)state;
  char* argv[] = {"paramex-server", "--workers", "1", "--chunk-bytes", "4K", "--threads", "1",
                  "--history", "3"};
  svc_init(ARGC(argv), argv);
  rng_state = 3;
  px_tensor_state* t = declare_normal("k", 1024, PX_DT_F32, 0.02f, 7);
  px_chunk_state* c = &t->chunks[0];
  void* bits[6];
  bits[0] = chunk_bits(t, c);
  for (int s = 1; s <= 5; s++) {
    step(t, c, 1e-3f);
    bits[s] = chunk_bits(t, c);
  }
  /* version 5, history 3: the deltas 2->3, 3->4, 4->5 */
  const uint64_t FULL = PX_KEY_FULL, RAW = PX_KEY_RAW;
  const struct {
    uint64_t have;
    uint64_t both, no_shuffle, no_delta, neither;
  } cases[] = {
      {4, 4, 4, FULL, RAW},          /* cached frame */
      {3, 3, 3, FULL, RAW},          /* within the history */
      {2, 2, 2, FULL, RAW},          /* the oldest base within it */
      {1, FULL, RAW, FULL, RAW},     /* too old */
      {0, FULL, RAW, FULL, RAW},
      {PX_BASE_NONE, FULL, RAW, FULL, RAW},
      {5, FULL, RAW, FULL, RAW},     /* the current version (pulls send UNCHANGED first) */
      {6, FULL, RAW, FULL, RAW},     /* never seen */
      {1000, FULL, RAW, FULL, RAW},
      {PX_KEY_RAW, FULL, RAW, FULL, RAW},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const uint64_t h = cases[i].have;
    if (key_of(c, 0, h, true, true) != cases[i].both ||
        key_of(c, 0, h, true, false) != cases[i].no_shuffle ||
        key_of(c, 0, h, false, true) != cases[i].no_delta ||
        key_of(c, 0, h, false, false) != cases[i].neither)
      fail_msg("have %llu: keys %llu %llu %llu %llu", (unsigned long long)h,
               (unsigned long long)key_of(c, 0, h, true, true),
               (unsigned long long)key_of(c, 0, h, true, false),
               (unsigned long long)key_of(c, 0, h, false, true),
               (unsigned long long)key_of(c, 0, h, false, false));
  }
  /* each key's frame brings that base to version 5 */
  for (uint64_t have = 2; have <= 4; have++) {
    px_frame* f = get_frame(t, c, 0, key_of(c, 0, have, true, true));
    assert_int_equal(f->encoding, PX_ENC_DELTA_ZSTD);
    assert_int_equal(f->base, have);
    assert_int_equal(f->version, 5);
    expect_frame(f, bits[have], bits[5], c->elems, 4);
    px_frame_unref(f);
  }
  /* a base older than the history asked for anyway: a full chunk under that key */
  px_frame* f = get_frame(t, c, 0, 1);
  assert_true(f->encoding == PX_ENC_RAW);
  expect_frame(f, bits[1], bits[5], c->elems, 4);
  px_frame_unref(f);
  /* the bf16 view has no history until it is enabled and steps happen */
  assert_true(key_of(c, 1, 4, true, true) == FULL);
  assert_true(key_of(c, 1, 4, true, false) == RAW);
  for (int s = 0; s <= 5; s++) free(bits[s]);

  /* --no-compression: always the full (RAW) frame */
  px_service_deinit(&g_svc);
  g_live = false;
  char* raw_argv[] = {"paramex-server", "--workers", "1", "--chunk-bytes", "4K", "--threads",
                      "1", "--no-compression"};
  svc_init(ARGC(raw_argv), raw_argv);
  t = declare_normal("k", 1024, PX_DT_F32, 0.02f, 7);
  c = &t->chunks[0];
  for (int s = 1; s <= 3; s++) step(t, c, 1e-3f);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    for (int m = 0; m < 4; m++)
      assert_true(key_of(c, 0, cases[i].have, m & 1, m & 2) == FULL);

  /* --history 0: no deltas at all */
  px_service_deinit(&g_svc);
  g_live = false;
  char* h0_argv[] = {"paramex-server", "--workers", "1", "--chunk-bytes", "4K", "--threads",
                     "1", "--history", "0"};
  svc_init(ARGC(h0_argv), h0_argv);
  t = declare_normal("k", 1024, PX_DT_F32, 0.02f, 7);
  c = &t->chunks[0];
  for (int s = 1; s <= 3; s++) {
    step(t, c, 1e-3f);
    assert_int_equal(c->view[0].nhist, 0);
    assert_true(c->view[0].checksum_valid);
    assert_true(c->view[0].checksum == px_checksum(c->params, c->elems * 4));
    assert_true(slot_of(&c->view[0], (uint64_t)s - 1) < 0);
    assert_true(key_of(c, 0, (uint64_t)s - 1, true, true) == FULL);
    assert_true(key_of(c, 0, (uint64_t)s - 1, true, false) == RAW);
  }
  assert_int_equal(atomic_load(&G->ctr.history_bytes), 0);
  void* cur = chunk_bits(t, c);
  f = get_frame(t, c, 0, FULL);
  assert_int_equal(f->version, 3);
  expect_frame(f, NULL, cur, c->elems, 4);
  px_frame_unref(f);
  free(cur);
}

/* Frames for older bases are built on the pool, once, and reconstruct exactly. */
static void test_build_older_base(void** state) {
  (void)state;
  char* argv[] = {"paramex-server", "--workers", "1", "--chunk-bytes", "4K", "--threads", "1",
                  "--history", "4"};
  svc_init(ARGC(argv), argv);
  rng_state = 4;
  px_tensor_state* t = declare_normal("o", 1024, PX_DT_F32, 0.02f, 8);
  px_chunk_state* c = &t->chunks[0];
  const size_t n = c->elems, bytes = n * 4;
  void* bits[5];
  bits[0] = chunk_bits(t, c);
  for (int s = 1; s <= 4; s++) {
    step(t, c, 1e-3f);
    bits[s] = chunk_bits(t, c);
  }
  px_viewcache* vs = &c->view[0];
  for (uint64_t have = 0; have <= 2; have++) {
    assert_int_equal(key_of(c, 0, have, true, true), have);
    const uint64_t e0 = ctr(&G->ctr.encodes);
    bool wait = false;
    pthread_mutex_lock(&c->mu);
    assert_null(frames_get(t, c, 0, have, &wait));
    assert_true(wait);
    assert_true(slot_of(vs, have) >= 0); /* pending, or built already */
    pthread_mutex_unlock(&c->mu);
    px_frame* f = get_frame(t, c, 0, have);
    assert_int_equal(ctr(&G->ctr.encodes), e0 + 1); /* one encode however often asked */
    assert_int_equal(f->encoding, PX_ENC_DELTA_ZSTD);
    assert_int_equal(f->version, 4);
    assert_int_equal(f->base, have);
    assert_false(f->in_history);
    assert_true(f->checksum == px_checksum(bits[4], bytes));
    expect_frame(f, bits[have], bits[4], n, 4);
    /* the same delta as encoding v -> 4 directly */
    void* d = malloc(bytes);
    void* want = malloc(bytes);
    assert_true(d && want);
    assert_int_equal(px_decode_delta_words(f->data, f->len, n, 4, d), 0);
    px_delta(bits[4], bits[have], n, 4, want);
    assert_memory_equal(d, want, bytes);
    /* one direct diff is smaller than the chained one-step ones */
    size_t chained = 0;
    for (uint64_t s = have; s < 4; s++) chained += vs->hist[3 - s]->len;
    if (4 - have > 1) assert_true(f->len < chained);
    free(want);
    free(d);
    px_frame* again = get_frame(t, c, 0, have);
    assert_ptr_equal(again, f);
    assert_int_equal(ctr(&G->ctr.encodes), e0 + 1);
    px_frame_unref(again);
    px_frame_unref(f);
  }
  /* a full snapshot: shuffled + zstd for N(0, 0.02^2) weights */
  px_frame* f = get_frame(t, c, 0, PX_KEY_FULL);
  assert_int_equal(f->encoding, PX_ENC_SHUFFLE_ZSTD);
  assert_true(f->len * 100 < bytes * 95);
  expect_frame(f, NULL, bits[4], n, 4);
  px_frame_unref(f);
  /* the base-3 slot was the least recently used and is gone; asked again, it is rebuilt
   * from the history */
  assert_true(slot_of(vs, 3) < 0);
  assert_int_equal(key_of(c, 0, 3, true, true), 3);
  f = get_frame(t, c, 0, 3);
  assert_ptr_not_equal(f, vs->hist[0]);
  expect_frame(f, bits[3], bits[4], n, 4);
  px_frame_unref(f);
  for (int s = 0; s <= 4; s++) free(bits[s]);
}

/* Pending slots: a second request waits for the first build; a full cache of pending
 * slots makes a pull wait; a build overtaken by a step installs nothing. */
static void test_build_pending_and_stale(void** state) {
  (void)state;
  char* argv[] = {"paramex-server", "--workers", "1", "--chunk-bytes", "4K", "--threads", "1",
                  "--history", "3"};
  svc_init(ARGC(argv), argv);
  rng_state = 5;
  px_tensor_state* t = declare_normal("p", 1024, PX_DT_F32, 0.02f, 9);
  px_chunk_state* c = &t->chunks[0];
  const size_t n = c->elems;
  void* bits[5];
  bits[0] = chunk_bits(t, c);
  for (int s = 1; s <= 3; s++) {
    step(t, c, 1e-3f);
    bits[s] = chunk_bits(t, c);
  }
  px_viewcache* vs = &c->view[0];
  static gate g;
  pool_block(&g);
  const uint64_t e0 = ctr(&G->ctr.encodes);
  const uint64_t keys[4] = {PX_KEY_FULL, PX_KEY_RAW, 1, 0};
  pthread_mutex_lock(&c->mu);
  for (int i = 0; i < 4; i++) {
    for (int again = 0; again < 2; again++) {
      bool wait = false;
      assert_null(frames_get(t, c, 0, keys[i], &wait));
      assert_true(wait);
    }
    int si = slot_of(vs, keys[i]);
    assert_true(si >= 0);
    assert_true(vs->cache[si].pending);
  }
  /* every slot pending: a fifth key waits without a slot (and the base-2 slot, the least
   * recently used finished one, was given up for them) */
  assert_true(slot_of(vs, 2) < 0);
  bool wait = false;
  assert_null(frames_get(t, c, 0, 2, &wait));
  assert_true(wait);
  assert_true(slot_of(vs, 2) < 0);
  pthread_mutex_unlock(&c->mu);
  pool_release_and_drain(&g);
  assert_int_equal(ctr(&G->ctr.encodes), e0 + 4); /* one build per key */
  for (int i = 0; i < 4; i++) {
    int si = slot_of(vs, keys[i]);
    assert_true(si >= 0);
    assert_false(vs->cache[si].pending);
    assert_non_null(vs->cache[si].frame);
    assert_int_equal(vs->cache[si].frame->version, 3);
    expect_frame(vs->cache[si].frame, keys[i] < 4 ? bits[keys[i]] : NULL, bits[3], n, 4);
  }
  px_frame* f = get_frame(t, c, 0, 2); /* now it gets a slot */
  expect_frame(f, bits[2], bits[3], n, 4);
  px_frame_unref(f);

  /* A build for version 3 that runs only after the step to 4: it installs nothing, and
   * a newer build of the same key (queued after the step) is not disturbed. */
  assert_true(slot_of(vs, PX_KEY_FULL) < 0); /* evicted for the base-2 frame */
  pool_block(&g);
  pthread_mutex_lock(&c->mu);
  wait = false;
  assert_null(frames_get(t, c, 0, PX_KEY_FULL, &wait));
  assert_true(wait);
  pthread_mutex_unlock(&c->mu);
  const uint64_t e1 = ctr(&G->ctr.encodes);
  assert_int_equal(step(t, c, 1e-3f), 4);
  bits[4] = chunk_bits(t, c);
  const uint64_t e2 = ctr(&G->ctr.encodes);
  assert_true(e2 > e1);
  assert_true(slot_of(vs, PX_KEY_FULL) < 0); /* the step dropped the pending slot */
  int s3 = slot_of(vs, 3);
  assert_true(s3 >= 0);
  assert_int_equal(vs->cache[s3].frame->version, 4);
  pthread_mutex_lock(&c->mu);
  wait = false;
  assert_null(frames_get(t, c, 0, PX_KEY_FULL, &wait)); /* for version 4 */
  assert_true(wait);
  pthread_mutex_unlock(&c->mu);
  pool_release_and_drain(&g);
  assert_int_equal(ctr(&G->ctr.encodes), e2 + 1); /* the stale job encoded nothing */
  int sf = slot_of(vs, PX_KEY_FULL);
  assert_true(sf >= 0);
  assert_false(vs->cache[sf].pending);
  assert_int_equal(vs->cache[sf].frame->version, 4);
  expect_frame(vs->cache[sf].frame, NULL, bits[4], n, 4);
  expect_frame(vs->cache[s3].frame, bits[3], bits[4], n, 4);
  clear_all_frames();
  for (int s = 0; s <= 4; s++) free(bits[s]);
}

/* The bf16 view of an f32 tensor: enabled by a pull, then its own history of 16-bit
 * deltas, its own checksum, and frames against the bf16 words the client holds. */
static void test_bf16_view(void** state) {
  (void)state;
  char* argv[] = {"paramex-server", "--workers", "1", "--chunk-bytes", "4K", "--threads", "1",
                  "--history", "2"};
  svc_init(ARGC(argv), argv);
  rng_state = 6;
  px_tensor_state* t = declare_normal("v", 1500, PX_DT_F32, 0.02f, 10);
  px_chunk_state* c = &t->chunks[1];
  const size_t n = c->elems;
  assert_int_equal(n, 476);
  assert_int_equal(px_view_width(t, 0), 4);
  assert_int_equal(px_view_width(t, 1), 2);
  px_viewcache* vs = &c->view[1];
  assert_false(vs->enabled);
  assert_false(vs->checksum_valid);
  /* a pull of the view enables it (as pull_advance does) and gets a full frame */
  pthread_mutex_lock(&c->mu);
  vs->enabled = true;
  pthread_mutex_unlock(&c->mu);
  assert_true(key_of(c, 1, PX_BASE_NONE, true, true) == PX_KEY_FULL);
  void* b0 = chunk_bits(t, c);
  void* w0 = view_words(t, b0, n, 1);
  px_frame* f = get_frame(t, c, 1, PX_KEY_FULL);
  assert_int_equal(f->version, 0);
  expect_frame(f, NULL, w0, n, 2);
  px_frame_unref(f);
  assert_true(vs->checksum_valid); /* learnt from the build */
  assert_true(vs->checksum == px_checksum(w0, n * 2));
  void* words[5] = {w0, NULL, NULL, NULL, NULL};
  for (uint64_t s = 1; s <= 4; s++) {
    assert_int_equal(t->nchunks, 2);
    step(t, &t->chunks[0], 1e-3f);
    assert_int_equal(step(t, c, 1e-3f), s);
    void* b = chunk_bits(t, c);
    words[s] = view_words(t, b, n, 1);
    assert_int_equal(vs->nhist, s < 2 ? s : 2);
    assert_int_equal(c->view[0].nhist, s < 2 ? s : 2);
    assert_int_equal(t->chunks[0].view[1].nhist, 0); /* enabled per chunk */
    assert_true(vs->checksum_valid);
    assert_true(vs->checksum == px_checksum(words[s], n * 2));
    assert_true(c->view[0].checksum == px_checksum(b, n * 4));
    for (uint32_t i = 0; i < vs->nhist; i++) {
      assert_int_equal(vs->hist[i]->version, s - i);
      expect_frame(vs->hist[i], words[s - i - 1], words[s - i], n, 2);
    }
    int si = slot_of(vs, s - 1);
    assert_true(si >= 0);
    assert_false(vs->cache[si].pending);
    expect_frame(vs->cache[si].frame, words[s - 1], words[s], n, 2);
    /* most bf16 words do not move at lr 1e-3: far smaller than the f32 delta */
    assert_true(vs->hist[0]->len * 3 < c->view[0].hist[0]->len);
    assert_int_equal(atomic_load(&G->ctr.history_bytes), history_sum());
    free(b);
  }
  /* a base two versions back, built from the view's history */
  assert_int_equal(key_of(c, 1, 2, true, true), 2);
  f = get_frame(t, c, 1, 2);
  assert_int_equal(f->base, 2);
  expect_frame(f, words[2], words[4], n, 2);
  px_frame_unref(f);
  assert_true(key_of(c, 1, 1, true, true) == PX_KEY_FULL);
  f = get_frame(t, c, 1, PX_KEY_RAW);
  assert_int_equal(f->encoding, PX_ENC_RAW);
  assert_memory_equal(f->data, words[4], n * 2);
  px_frame_unref(f);
  clear_all_frames();
  free(b0);
  for (int s = 0; s <= 4; s++) free(words[s]);
}

/* bf16 and f16 tensors: 16-bit words throughout the history and the frames. */
static void test_16bit_tensor_frames(void** state) {
  (void)state;
  char* argv[] = {"paramex-server", "--workers", "1", "--chunk-bytes", "4K", "--threads", "1",
                  "--history", "3"};
  svc_init(ARGC(argv), argv);
  rng_state = 7;
  const int dts[] = {PX_DT_BF16, PX_DT_F16};
  for (int d = 0; d < 2; d++) {
    px_tensor_state* t = declare_normal(d ? "f16" : "bf16", 2000, dts[d], 0.02f, 11);
    assert_int_equal(t->elem, 2);
    assert_int_equal(px_view_width(t, 0), 2);
    px_chunk_state* c = &t->chunks[1];
    const size_t n = c->elems, bytes = n * 2;
    assert_int_equal(n, 2000 - 1024);
    void* bits[5];
    bits[0] = chunk_bits(t, c);
    for (uint64_t s = 1; s <= 4; s++) {
      step(t, &t->chunks[0], 1e-2f);
      step(t, c, 1e-2f);
      bits[s] = chunk_bits(t, c);
      assert_memory_not_equal(bits[s], bits[s - 1], bytes);
      px_viewcache* vs = &c->view[0];
      assert_int_equal(vs->nhist, s < 3 ? s : 3);
      assert_true(vs->checksum == px_checksum(bits[s], bytes));
      for (uint32_t i = 0; i < vs->nhist; i++)
        expect_frame(vs->hist[i], bits[s - i - 1], bits[s - i], n, 2);
      int si = slot_of(vs, s - 1);
      assert_true(si >= 0);
      expect_frame(vs->cache[si].frame, bits[s - 1], bits[s], n, 2);
      assert_int_equal(atomic_load(&G->ctr.history_bytes), history_sum());
    }
    px_frame* f = get_frame(t, c, 0, 1);
    assert_int_equal(f->encoding, PX_ENC_DELTA_ZSTD);
    expect_frame(f, bits[1], bits[4], n, 2);
    px_frame_unref(f);
    f = get_frame(t, c, 0, PX_KEY_FULL);
    expect_frame(f, NULL, bits[4], n, 2);
    px_frame_unref(f);
    for (int s = 0; s <= 4; s++) free(bits[s]);
  }
  clear_all_frames();
}

/* --no-compression: RAW frames only, shared by both full keys, and no history. */
static void test_no_compression(void** state) {
  (void)state;
  char* argv[] = {"paramex-server", "--workers", "1", "--chunk-bytes", "4K", "--threads", "1",
                  "--no-compression"};
  svc_init(ARGC(argv), argv);
  rng_state = 8;
  px_tensor_state* t = declare_normal("r", 1024, PX_DT_F32, 0.02f, 12);
  px_chunk_state* c = &t->chunks[0];
  const size_t n = c->elems, bytes = n * 4;
  px_frame* f = get_frame(t, c, 0, PX_KEY_FULL);
  assert_int_equal(f->encoding, PX_ENC_RAW);
  assert_memory_equal(f->data, c->params, bytes);
  px_frame_unref(f);
  pthread_mutex_lock(&c->mu);
  c->view[1].enabled = true;
  pthread_mutex_unlock(&c->mu);
  for (uint64_t s = 1; s <= 3; s++) {
    step(t, c, 1e-3f);
    void* b = chunk_bits(t, c);
    for (int v = 0; v < 2; v++) {
      px_viewcache* vs = &c->view[v];
      const int w = v ? 2 : 4;
      void* words = view_words(t, b, n, v);
      assert_int_equal(vs->nhist, 0);
      int sf = slot_of(vs, PX_KEY_FULL), sr = slot_of(vs, PX_KEY_RAW);
      assert_true(sf >= 0 && sr >= 0);
      assert_false(vs->cache[sf].pending);
      assert_ptr_equal(vs->cache[sf].frame, vs->cache[sr].frame);
      f = vs->cache[sf].frame;
      assert_int_equal(f->encoding, PX_ENC_RAW);
      assert_int_equal(f->version, s);
      assert_int_equal(f->len, n * (size_t)w);
      assert_memory_equal(f->data, words, n * (size_t)w);
      assert_true(f->checksum == px_checksum(words, n * (size_t)w));
      assert_true(vs->checksum == f->checksum);
      assert_true(slot_of(vs, s - 1) < 0);
      for (int m = 0; m < 4; m++) assert_true(key_of(c, v, s - 1, m & 1, m & 2) == PX_KEY_FULL);
      free(words);
    }
    free(b);
  }
  assert_int_equal(atomic_load(&G->ctr.history_bytes), 0);
  clear_all_frames();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_chunk_frames, svc_setup, svc_teardown),
      cmocka_unit_test_teardown(test_after_step_history, svc_teardown),
      cmocka_unit_test_teardown(test_history_budget, svc_teardown),
      cmocka_unit_test_teardown(test_frames_key, svc_teardown),
      cmocka_unit_test_teardown(test_build_older_base, svc_teardown),
      cmocka_unit_test_teardown(test_build_pending_and_stale, svc_teardown),
      cmocka_unit_test_teardown(test_bf16_view, svc_teardown),
      cmocka_unit_test_teardown(test_16bit_tensor_frames, svc_teardown),
      cmocka_unit_test_teardown(test_no_compression, svc_teardown),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
