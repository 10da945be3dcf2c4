/* The backend conformance suite (server/backend/backend.h), run by the unit tests of each
 * backend (tests/unit/server/test_cpu.c, test_cuda.c) through the backend interface alone.
 *
 * Each scenario creates a tensor on the backend (4K chunks, so that tensors have several
 * chunks and a partial last one), then drives it the way aggregation does: contributions of every rank in rank order (f32, or rounded through bf16 /
 * f16 like 16-bit pushes), a step, the bf16 view, the encoder inputs, a checkpoint
 * snapshot, a restore of the momentum. Every output is compared with reference values
 * computed here independently (plain C loops, -ffp-contract=off like the server).
 *
 * Exactness: the cpu backend must match the reference bit for bit. So must the cuda
 * backend on one GPU (same rank order, same f32 operations), and the cuda run also
 * replays each scenario on the cpu backend and compares every output byte. With G > 1
 * GPUs NCCL adds the per-GPU partial sums (ranks g, g+G, ...) in its own order: an f32
 * sum of at most 4 terms of magnitude <= 1 then differs by at most 3 roundings of a
 * value < 4, i.e. 3 * 2^-22 < 1e-6, before the division by the worker count; over the
 * 4 steps of a scenario (momentum 0.9 multiplies earlier errors by < 1) the parameters
 * (|p| < 2, lr <= 0.5) stay within 1e-5 of the reference, and 16-bit parameters within
 * one unit in the last place (a rounding may flip). That is the tolerance used when the
 * backend reports more than one device; the encoder inputs are then checked against the
 * backend's own bits.
 *
 * Besides: subnormal values (f16 and f32, so that a device flushing them to zero fails)
 * and a concurrency run (8 threads stepping 41 chunks at once, like the compute pool,
 * compared byte for byte with a single-threaded cpu run). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/dtype.h"
#include "util/bufpool.h"
#include "util/log.h"
#include "backend/backend.h"
#include "backend/select.h"
#include "backend_conformance.h"

static const char* g_dev = "cpu";

/* ---- independent reference arithmetic ------------------------------------------------- */

static uint32_t bits32(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
static float from32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
/* round to nearest even; the test's values are finite and not NaN */
static uint16_t ref_bf16(float f) {
  uint32_t u = bits32(f);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
static float ref_bf16_f32(uint16_t h) { return from32((uint32_t)h << 16); }
static uint16_t ref_f16(float f) {
  _Float16 h = (_Float16)f; /* gcc's software conversion: round to nearest even */
  uint16_t u;
  memcpy(&u, &h, 2);
  return u;
}
static float ref_f16_f32(uint16_t u) {
  _Float16 h;
  memcpy(&h, &u, 2);
  return (float)h;
}
static float round_to(int dtype, float f) {
  if (dtype == PX_DT_BF16) return ref_bf16_f32(ref_bf16(f));
  if (dtype == PX_DT_F16) return ref_f16_f32(ref_f16(f));
  return f;
}
/* the native word of f in dtype */
static uint32_t word_of(int dtype, float f) {
  if (dtype == PX_DT_BF16) return ref_bf16(f);
  if (dtype == PX_DT_F16) return ref_f16(f);
  return bits32(f);
}
static uint32_t load_word(const void* p, size_t i, int width) {
  if (width == 4) {
    uint32_t w;
    memcpy(&w, (const uint8_t*)p + 4 * i, 4);
    return w;
  }
  uint16_t h;
  memcpy(&h, (const uint8_t*)p + 2 * i, 2);
  return h;
}
/* zigzag(new - old) of n words, byte plane b at out[b*n + i] */
static void ref_encode(const void* new_, const void* old, size_t n, int width, uint8_t* out) {
  for (size_t i = 0; i < n; i++) {
    uint32_t d = load_word(new_, i, width) - load_word(old, i, width), z;
    if (width == 4) {
      z = (d << 1) ^ (0u - (d >> 31));
    } else {
      d &= 0xffffu;
      z = ((d << 1) ^ (0u - (d >> 15))) & 0xffffu;
    }
    for (int b = 0; b < width; b++) out[(size_t)b * n + i] = (uint8_t)(z >> (8 * b));
  }
}

/* deterministic values in [-1, 1) */
static float val(uint64_t a, uint64_t b, uint64_t c) {
  uint64_t x = a * 0x9E3779B97F4A7C15ull ^ b * 0xC2B2AE3D27D4EB4Full ^ c * 0x165667B19E3779F9ull;
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return (float)((double)(x >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
}

/* ---- scenarios ------------------------------------------------------------------------- */

typedef struct scenario {
  const char* name;
  int dtype;          /* tensor */
  int gdtype;         /* contributions are rounded through this type */
  uint64_t numel;
  uint32_t workers;
  float lr, momentum, wd;
  int steps;
  bool view1, enc;    /* ask for the bf16 view and the encoder inputs */
  float scale;        /* values are scale * [-1, 1); 0 means 1. Tiny scales make the values
                       * subnormal (f32 below 2^-126, f16 below 2^-14): a device that
                       * flushed them to zero would differ from the cpu */
  bool nesterov;      /* Nesterov momentum */
  int kind;           /* px_opt_kind: adagrad and rmsprop keep their state in "momentum" */
  float eps, alpha;
} scenario;

static float scale_of(const scenario* sc) { return sc->scale != 0.0f ? sc->scale : 1.0f; }

/* Every output byte of a run, in order, for comparing two backends. */
typedef struct outlog {
  uint8_t* p;
  size_t len, cap;
} outlog;

static void log_add(outlog* l, const void* p, size_t n) {
  if (!l) return;
  if (l->len + n > l->cap) {
    l->cap = (l->len + n) * 2;
    l->p = realloc(l->p, l->cap);
    assert_non_null(l->p);
  }
  memcpy(l->p + l->len, p, n);
  l->len += n;
}

/* The backend under test and the one tensor of a scenario (4K chunks, so that tensors
 * have several chunks and a partial last one). */
#define CHUNK_BYTES 4096u
static px_backend* g_be;
static px_be_tensor_desc g_d;
static px_be_tensor* g_bt;
static bool* g_first; /* [nchunks]: no momentum step yet (kept by the caller, as the store does) */

static void backend_up(const scenario* sc, const char* dev) {
  px_backend_opts o = {dev, NULL, 0, CHUNK_BYTES, {.lr = sc->lr, .momentum = sc->momentum, .weight_decay = sc->wd, .nesterov = sc->nesterov,
                        .kind = (px_opt_kind)sc->kind, .eps = sc->eps, .alpha = sc->alpha}, 1};
  char err[512] = "";
  if (px_backend_create(&o, &g_be, err, sizeof err) != 0) fail_msg("backend %s: %s", dev, err);
}

static void backend_down(void) {
  g_be->ops->tensor_destroy(g_be, g_bt);
  px_backend_destroy(g_be);
  free(g_d.params);
  free(g_first);
  g_be = NULL;
  g_bt = NULL;
}

/* The host mirror of chunk k. */
static uint8_t* cp(uint32_t k) {
  return (uint8_t*)g_d.params + (size_t)k * g_d.chunk_elems * px_dtype_size(g_d.dtype);
}

/* Compares a backend's native words with the reference (exact, or within the tolerance
 * of the header comment). */
static void expect_words(const scenario* sc, const void* got, const float* ref, size_t n,
                         bool exact, const char* what, int step) {
  const int width = (int)px_dtype_size(sc->dtype);
  for (size_t i = 0; i < n; i++) {
    uint32_t g = load_word(got, i, width), r = word_of(sc->dtype, ref[i]);
    if (g == r) continue;
    if (!exact) {
      float gf = sc->dtype == PX_DT_F32    ? from32(g)
                 : sc->dtype == PX_DT_BF16 ? ref_bf16_f32((uint16_t)g)
                                            : ref_f16_f32((uint16_t)g);
      bool close = sc->dtype == PX_DT_F32 ? fabsf(gf - ref[i]) <= 1e-5f
                                           : (g > r ? g - r : r - g) <= 1;
      if (close) continue;
    }
    fail_msg("%s on %s: %s after step %d, element %zu: 0x%x, want 0x%x", sc->name, g_dev, what,
             step, i, g, r);
  }
}

/* Creates sc's tensor on the backend with its initial values; pref (may be NULL) gets them
 * as f32 values. */
static void declare(const scenario* sc, float* pref) {
  const size_t es = px_dtype_size(sc->dtype), n = sc->numel;
  uint8_t* init = malloc(n * es);
  assert_non_null(init);
  for (size_t i = 0; i < n; i++) {
    float v = round_to(sc->dtype, scale_of(sc) * val(1, 0, i));
    if (pref) pref[i] = v;
    uint32_t wv = word_of(sc->dtype, v);
    memcpy(init + i * es, &wv, es); /* little endian: the low bytes */
  }
  const uint32_t ce = CHUNK_BYTES / 4;
  g_d = (px_be_tensor_desc){sc->name, sc->dtype, n, ce, (uint32_t)((n + ce - 1) / ce), init};
  assert_true(g_d.nchunks >= 2);
  char err[512];
  if (g_be->ops->tensor_create(g_be, &g_d, &g_bt, err, sizeof err) != 0) fail_msg("tensor: %s", err);
  g_first = malloc(g_d.nchunks * sizeof *g_first);
  assert_non_null(g_first);
  for (uint32_t k = 0; k < g_d.nchunks; k++) {
    g_be->ops->chunk_load(g_be, g_bt, k, NULL);
    g_first[k] = true;
  }
}

/* Returns the number of devices the backend used. */
static uint32_t run(const scenario* sc, const char* dev, outlog* log) {
  backend_up(sc, dev);
  px_backend* b = g_be;
  const uint32_t ndev = b->ndev;
  const bool exact = ndev == 1;
  const size_t es = px_dtype_size(sc->dtype), n = sc->numel;
  float* pref = malloc(n * sizeof(float));   /* reference parameters (f32 values) */
  float* mref = calloc(n, sizeof(float));    /* reference momentum */
  assert_true(pref && mref);
  declare(sc, pref);

  bool first = true;
  for (int s = 0; s <= sc->steps; s++) {
    const bool restore_step = s == sc->steps; /* the last step follows a momentum restore */
    for (uint32_t k = 0; k < g_d.nchunks; k++) {
      const size_t m = px_be_chunk_elems(&g_d, k), off = (size_t)k * g_d.chunk_elems;
      float* g = px_buf_get(CHUNK_BYTES);
      float* sum = malloc(m * sizeof(float));
      uint8_t* old = malloc(m * es);
      assert_true(g && sum && old);
      memcpy(old, cp(k), m * es);
      if (restore_step && b->momentum) {
        float* mom = malloc(m * sizeof(float));
        assert_non_null(mom);
        for (size_t i = 0; i < m; i++)
          mref[off + i] = mom[i] = 0.25f * scale_of(sc) * (sc->kind ? fabsf(val(7, k, i))
                                                                       : val(7, k, i));
        b->ops->chunk_load(b, g_bt, k, mom);
        g_first[k] = false;
        free(mom);
      }
      for (uint32_t r = 0; r < sc->workers; r++) {
        for (size_t i = 0; i < m; i++) {
          g[i] = round_to(sc->gdtype, scale_of(sc) * val(100 + (uint64_t)s, r, off + i));
          sum[i] = r == 0 ? g[i] : sum[i] + g[i];
        }
        bool taken = false;
        /* rank 0 hands its buffer over, the way the push handler does */
        assert_int_equal(b->ops->accumulate(b, g_bt, k, r, g, r == 0, &taken), 0);
        if (taken) {
          g = px_buf_get(CHUNK_BYTES);
          assert_non_null(g);
        }
      }
      px_step_io io = {.ncontrib = sc->workers, .first = g_first[k], .lr = b->sgd.lr};
      const bool v1 = sc->view1 && sc->dtype == PX_DT_F32;
      if (sc->view1 || sc->enc) io.bits[0] = malloc(m * es);
      if (v1) io.bits[1] = malloc(m * 2);
      if (sc->enc) io.enc[0] = malloc(m * es);
      if (sc->enc && v1) io.enc[1] = malloc(m * 2);
      b->ops->step(b, g_bt, k, &io);
      g_first[k] = false;

      /* the reference step (px_sgd_apply's formula, written out) */
      for (size_t i = 0; i < m; i++) {
        float gr = sum[i] / (float)sc->workers, p = pref[off + i];
        if (sc->wd != 0.0f) gr = gr + sc->wd * p;
        if (sc->kind != 0) { /* adagrad, rmsprop: optimizer.h's formulas */
          const float sq = gr * gr, om = 1.0f - sc->alpha, was = mref[off + i];
          const bool fresh = first && !restore_step;
          const float vv = sc->kind == 2 ? (fresh ? om * sq : sc->alpha * was + om * sq)
                                         : (fresh ? sq : was + sq);
          mref[off + i] = vv;
          pref[off + i] = round_to(sc->dtype, p - sc->lr * (gr / (sqrtf(vv) + sc->eps)));
          continue;
        }
        if (sc->momentum != 0.0f) {
          float mm = first && !restore_step ? gr : sc->momentum * mref[off + i] + gr;
          mref[off + i] = mm;
          gr = sc->nesterov ? gr + sc->momentum * mm : mm;
        }
        pref[off + i] = round_to(sc->dtype, p - sc->lr * gr);
      }
      expect_words(sc, cp(k), pref + off, m, exact, "parameters", s);
      log_add(log, cp(k), m * es);
      if (io.bits[0]) assert_memory_equal(io.bits[0], cp(k), m * es);
      if (io.bits[1]) {
        for (size_t i = 0; i < m; i++) {
          uint16_t got;
          memcpy(&got, (uint8_t*)io.bits[1] + 2 * i, 2);
          assert_int_equal(got, ref_bf16(from32(load_word(cp(k), i, 4))));
        }
        log_add(log, io.bits[1], m * 2);
      }
      uint8_t* want = malloc(m * 4);
      assert_non_null(want);
      if (io.enc[0]) {
        ref_encode(cp(k), old, m, (int)es, want); /* the backend's own bits */
        assert_memory_equal(io.enc[0], want, m * es);
        log_add(log, io.enc[0], m * es);
      }
      if (io.enc[1]) {
        uint16_t* o16 = malloc(m * 2);
        assert_non_null(o16);
        for (size_t i = 0; i < m; i++) o16[i] = ref_bf16(from32(load_word(old, i, 4)));
        ref_encode(io.bits[1], o16, m, 2, want);
        assert_memory_equal(io.enc[1], want, m * 2);
        log_add(log, io.enc[1], m * 2);
        free(o16);
      }
      free(want);
      free(io.bits[0]);
      free(io.bits[1]);
      free(io.enc[0]);
      free(io.enc[1]);
      px_buf_put(g, CHUNK_BYTES);
      free(sum);
      free(old);
    }
    first = false;
  }

  /* views and the checkpoint snapshot of the final state */
  for (uint32_t k = 0; k < g_d.nchunks; k++) {
    const size_t m = px_be_chunk_elems(&g_d, k), off = (size_t)k * g_d.chunk_elems;
    uint8_t* p = malloc(m * es);
    float* mom = malloc(m * sizeof(float));
    uint16_t* v = malloc(m * 4);
    assert_true(p && mom && v);
    b->ops->snapshot(b, g_bt, k, p, b->momentum ? mom : NULL);
    b->ops->read_view(b, g_bt, k, 0, v);
    assert_memory_equal(v, cp(k), m * es);
    if (sc->dtype == PX_DT_F32) b->ops->read_view(b, g_bt, k, 1, v);
    expect_words(sc, p, pref + off, m, exact, "snapshot", sc->steps);
    log_add(log, p, m * es);
    if (b->momentum) {
      for (size_t i = 0; i < m; i++)
        if (mom[i] != mref[off + i] && !(!exact && fabsf(mom[i] - mref[off + i]) <= 1e-5f))
          fail_msg("%s on %s: momentum element %zu: %a, want %a", sc->name, g_dev, off + i,
                   (double)mom[i], (double)mref[off + i]);
      log_add(log, mom, m * sizeof(float));
    }
    if (sc->dtype == PX_DT_F32) {
      for (size_t i = 0; i < m; i++) assert_int_equal(v[i], ref_bf16(from32(load_word(p, i, 4))));
      log_add(log, v, m * 2);
    }
    free(p);
    free(mom);
    free(v);
  }
  free(pref);
  free(mref);
  backend_down();
  return ndev;
}

/* Runs sc on the backend under test and, when that is not cpu and uses one device, on
 * the cpu backend too: every output byte must agree. */
static void conform(const scenario* sc) {
  outlog mine = {0}, cpu = {0};
  uint32_t ndev = run(sc, g_dev, &mine);
  if (strcmp(g_dev, "cpu") != 0) {
    if (ndev == 1) {
      run(sc, "cpu", &cpu);
      assert_int_equal(mine.len, cpu.len);
      assert_memory_equal(mine.p, cpu.p, mine.len);
    } else {
      print_message("%s: %u GPUs: compared with the reference within the stated tolerance\n",
                    sc->name, ndev);
    }
  }
  free(mine.p);
  free(cpu.p);
}

static void test_f32_plain(void** state) {
  (void)state;
  const scenario sc = {"f32-plain", PX_DT_F32, PX_DT_F32, 3000, 3, 0.5f, 0, 0, 2, true, true, 0, false, 0, 0.0f, 0.0f};
  conform(&sc);
}

static void test_f32_momentum_wd_bf16_pushes(void** state) {
  (void)state;
  const scenario sc = {"f32-momentum", PX_DT_F32, PX_DT_BF16, 2500, 4, 0.1f, 0.9f, 0.01f, 3,
                       true, true, 0, false, 0, 0.0f, 0.0f};
  conform(&sc);
}

static void test_f32_nesterov_wd(void** state) {
  (void)state;
  const scenario sc = {"f32-nesterov", PX_DT_F32, PX_DT_F32, 2300, 3, 0.1f, 0.9f, 0.01f, 3,
                       true, true, 0, true, 0, 0.0f, 0.0f};
  conform(&sc);
}

static void test_f32_adagrad(void** state) {
  (void)state;
  const scenario sc = {"f32-adagrad", PX_DT_F32, PX_DT_F32, 2200, 3, 0.05f, 0, 0.01f, 3,
                       true, true, 0, false, 1, 1e-10f, 0.0f};
  conform(&sc);
}

static void test_bf16_rmsprop(void** state) {
  (void)state;
  const scenario sc = {"bf16-rmsprop", PX_DT_BF16, PX_DT_BF16, 1800, 2, 0.01f, 0, 0, 3,
                       false, true, 0, false, 2, 1e-8f, 0.9f};
  conform(&sc);
}

static void test_bf16_tensor(void** state) {
  (void)state;
  const scenario sc = {"bf16", PX_DT_BF16, PX_DT_BF16, 2100, 2, 0.25f, 0.9f, 0, 3, false, true, 0, false, 0, 0.0f, 0.0f};
  conform(&sc);
}

static void test_f16_tensor(void** state) {
  (void)state;
  const scenario sc = {"f16", PX_DT_F16, PX_DT_F16, 1500, 3, 0.125f, 0, 0.01f, 2, false, true, 0, false, 0, 0.0f, 0.0f};
  conform(&sc);
}

static void test_no_outputs(void** state) {
  (void)state;
  const scenario sc = {"bare", PX_DT_F32, PX_DT_F32, 2049, 1, 0.5f, 0.5f, 0, 2, false, false, 0, false, 0, 0.0f, 0.0f};
  conform(&sc);
}

/* f16 parameters and contributions that are mostly f16 subnormals (|x| < 2^-14): the
 * subnormal paths of both 16-bit conversions. */
static void test_f16_subnormal(void** state) {
  (void)state;
  const scenario sc = {"f16-subnormal", PX_DT_F16, PX_DT_F16, 2100, 3, 0.5f, 0.9f, 0, 3,
                       false, true, 0x1p-15f, false, 0, 0.0f, 0.0f};
  conform(&sc);
}

/* f32 values around 2^-126 and below: every product and sum is subnormal, and so is the
 * bf16 view. A device that flushed subnormals to zero (-ftz=true) fails this. */
static void test_f32_subnormal(void** state) {
  (void)state;
  const scenario sc = {"f32-subnormal", PX_DT_F32, PX_DT_F32, 2500, 2, 0.25f, 0.5f, 0.5f, 3,
                       true, true, 0x1p-125f, false, 0, 0.0f, 0.0f};
  conform(&sc);
}

/* ---- concurrency: chunks stepped from several threads at once -------------------------------
 * The server's compute pool runs ops on different chunks concurrently (each under its
 * chunk's lock). Here NTH threads do that with many chunks (so chunks share device streams,
 * staging and output slots, and NCCL reductions interleave), and every output byte of every
 * step must equal a single-threaded cpu run's (with one device; with more, the parameters
 * must agree within the tolerance of the top of the file). Threads record outputs only:
 * cmocka's assertions are made on the main thread after the join. */

typedef struct mt_run {
  const scenario* sc;
  px_backend* b;
  int step;             /* 0..steps-1: a step; steps: the final snapshot and views */
  uint32_t nth;
  size_t slot;          /* output bytes per chunk and step */
  uint8_t* out;         /* [steps + 1][nchunks][slot] */
  int failed;           /* set (atomically) by a thread when the backend refused */
} mt_run;

typedef struct mt_arg {
  mt_run* r;
  uint32_t id;
} mt_arg;

static void* mt_thread(void* p) {
  mt_arg* a = p;
  mt_run* r = a->r;
  const scenario* sc = r->sc;
  px_backend* b = r->b;
  const size_t es = px_dtype_size(sc->dtype), ce = g_d.chunk_elems;
  const bool v1 = sc->dtype == PX_DT_F32;
  for (uint32_t k = a->id; k < g_d.nchunks; k += r->nth) { /* each chunk on one thread */
    const size_t m = px_be_chunk_elems(&g_d, k), off = (size_t)k * ce;
    uint8_t* o = r->out + ((size_t)r->step * g_d.nchunks + k) * r->slot;
    if (r->step == sc->steps) { /* layout: params, momentum, bf16 view */
      b->ops->snapshot(b, g_bt, k, o, b->momentum ? (float*)(o + ce * es) : NULL);
      if (v1) b->ops->read_view(b, g_bt, k, 1, o + ce * es + ce * 4);
      continue;
    }
    float* g = px_buf_get(CHUNK_BYTES);
    if (!g) {
      __atomic_store_n(&r->failed, 1, __ATOMIC_RELAXED);
      return NULL;
    }
    for (uint32_t w = 0; w < sc->workers; w++) {
      for (size_t i = 0; i < m; i++)
        g[i] = round_to(sc->gdtype, scale_of(sc) * val(100 + (uint64_t)r->step, w, off + i));
      bool taken = false;
      if (b->ops->accumulate(b, g_bt, k, w, g, w == 0, &taken) != 0)
        __atomic_store_n(&r->failed, 1, __ATOMIC_RELAXED);
      if (taken) g = px_buf_get(CHUNK_BYTES);
      if (!g) {
        __atomic_store_n(&r->failed, 1, __ATOMIC_RELAXED);
        return NULL;
      }
    }
    /* layout: params (the host mirror), new bits, bf16 view, encoder input 0, 1 */
    px_step_io io = {.ncontrib = sc->workers, .first = g_first[k], .lr = b->sgd.lr};
    io.bits[0] = o + ce * es;
    if (v1) io.bits[1] = o + 2 * ce * es;
    io.enc[0] = o + 2 * ce * es + ce * 2;
    if (v1) io.enc[1] = o + 3 * ce * es + ce * 2;
    b->ops->step(b, g_bt, k, &io);
    g_first[k] = false;
    memcpy(o, cp(k), m * es);
    px_buf_put(g, CHUNK_BYTES);
  }
  return NULL;
}

/* Runs sc on dev with nth threads; returns the outputs (caller frees), *len their size. */
static uint8_t* run_mt(const scenario* sc, const char* dev, uint32_t nth, uint32_t* ndev,
                       size_t* len) {
  backend_up(sc, dev);
  mt_run r = {.sc = sc, .b = g_be, .nth = nth};
  declare(sc, NULL);
  *ndev = r.b->ndev;
  const size_t es = px_dtype_size(sc->dtype), ce = g_d.chunk_elems;
  r.slot = ce * (3 * es + 4); /* the larger of the step layout and the snapshot layout */
  if (r.slot < ce * (es + 4 + 2)) r.slot = ce * (es + 4 + 2);
  *len = (size_t)(sc->steps + 1) * g_d.nchunks * r.slot;
  r.out = calloc(1, *len); /* bytes a layout leaves unused stay 0 in every run */
  assert_non_null(r.out);
  pthread_t th[16];
  mt_arg args[16];
  assert_true(nth >= 1 && nth <= 16);
  for (r.step = 0; r.step <= sc->steps; r.step++) {
    for (uint32_t i = 0; i < nth; i++) {
      args[i] = (mt_arg){&r, i};
      assert_int_equal(pthread_create(&th[i], NULL, mt_thread, &args[i]), 0);
    }
    for (uint32_t i = 0; i < nth; i++) pthread_join(th[i], NULL);
    if (r.failed) fail_msg("%s on %s: the backend refused a contribution", sc->name, dev);
  }
  backend_down();
  return r.out;
}

static void test_concurrent_chunks(void** state) {
  (void)state;
  /* 41 chunks of 1024 elements (4K chunks), the last one partial */
  const scenario sc = {"concurrent", PX_DT_F32, PX_DT_BF16, 40 * 1024 + 300, 4, 0.1f, 0.9f,
                       0.01f, 3, true, true, 0, false, 0, 0.0f, 0.0f};
  uint32_t ndev = 0, ndev_cpu = 0;
  size_t len = 0, len_cpu = 0;
  uint8_t* mine = run_mt(&sc, g_dev, 8, &ndev, &len);
  uint8_t* ref = run_mt(&sc, "cpu", 1, &ndev_cpu, &len_cpu);
  assert_int_equal(len, len_cpu);
  if (ndev == 1) {
    for (size_t i = 0; i < len; i++)
      if (mine[i] != ref[i])
        fail_msg("%s on %s with 8 threads: output byte %zu is 0x%02x, the single-threaded cpu "
                 "run's 0x%02x", sc.name, g_dev, i, mine[i], ref[i]);
  } else {
    /* the parameters of every step (the first 4 * chunk_elems bytes of each slot) */
    const size_t ce = 1024, slot = ce * (3 * 4 + 4), nslots = len / slot;
    for (size_t k = 0; k < nslots; k++)
      for (size_t i = 0; i < ce; i++) {
        float a, b;
        memcpy(&a, mine + k * slot + 4 * i, 4);
        memcpy(&b, ref + k * slot + 4 * i, 4);
        if (!(fabsf(a - b) <= 1e-5f))
          fail_msg("%s on %u GPUs: parameter %zu of slot %zu: %a, cpu %a", sc.name, ndev, i, k,
                   (double)a, (double)b);
      }
    print_message("%s: %u GPUs: compared with the cpu within the stated tolerance\n", sc.name,
                  ndev);
  }
  free(mine);
  free(ref);
}

int px_conformance_main(const char* dev) {
  g_dev = dev;
  px_log_init("test", PX_LOG_WARN);
  const struct CMUnitTest conformance[] = {
      cmocka_unit_test(test_f32_plain),
      cmocka_unit_test(test_f32_momentum_wd_bf16_pushes),
      cmocka_unit_test(test_f32_nesterov_wd),
      cmocka_unit_test(test_f32_adagrad),
      cmocka_unit_test(test_bf16_rmsprop),
      cmocka_unit_test(test_bf16_tensor),
      cmocka_unit_test(test_f16_tensor),
      cmocka_unit_test(test_no_outputs),
      cmocka_unit_test(test_f16_subnormal),
      cmocka_unit_test(test_f32_subnormal),
      cmocka_unit_test(test_concurrent_chunks),
  };
  return strcmp(dev, "cuda") == 0
             ? _cmocka_run_group_tests("backend-cuda", conformance,
                                       sizeof conformance / sizeof conformance[0], NULL, NULL)
             : _cmocka_run_group_tests("backend-cpu", conformance,
                                       sizeof conformance / sizeof conformance[0], NULL, NULL);
}
