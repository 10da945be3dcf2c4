/* Backend conformance suite (server/backend.h), run once per backend:
 *   test_backend cpu     the cpu backend
 *   test_backend cuda    the cuda backend; exits 77 (skipped) when this build has no CUDA
 *                        or no GPU is usable, unless PMX_TEST_REQUIRE_GPU=1 (then fails)
 *
 * Each scenario declares a tensor on a real service (--device NAME, 4K chunks so tensors
 * have several chunks and a partial last one), then drives the backend the way the push
 * handler does: contributions of every rank in rank order (f32, or rounded through bf16 /
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
 * backend's own bits. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/codec.h"
#include "server.h"

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
  if (dtype == PMX_DT_BF16) return ref_bf16_f32(ref_bf16(f));
  if (dtype == PMX_DT_F16) return ref_f16_f32(ref_f16(f));
  return f;
}
/* the native word of f in dtype */
static uint32_t word_of(int dtype, float f) {
  if (dtype == PMX_DT_BF16) return ref_bf16(f);
  if (dtype == PMX_DT_F16) return ref_f16(f);
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
} scenario;

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

static pmx_service g_svc;

static void svc_up(const scenario* sc, const char* dev) {
  char w[16], lr[32], mu[32], wd[32];
  snprintf(w, sizeof w, "%u", sc->workers);
  snprintf(lr, sizeof lr, "%.9g", sc->lr);
  snprintf(mu, sizeof mu, "%.9g", sc->momentum);
  snprintf(wd, sizeof wd, "%.9g", sc->wd);
  char* argv[] = {"paramex-server", "--device", (char*)dev, "--workers", w, "--lr", lr,
                  "--momentum", mu, "--weight-decay", wd, "--chunk-bytes", "4K", "--threads", "1"};
  pmx_config cfg;
  assert_int_equal(pmx_config_parse(&cfg, (int)(sizeof argv / sizeof argv[0]), argv), 0);
  char err[512] = "";
  if (pmx_service_init(&g_svc, &cfg, err, sizeof err) != 0) fail_msg("service init: %s", err);
}

/* Compares a backend's native words with the reference (exact, or within the tolerance
 * of the header comment). */
static void expect_words(const scenario* sc, const void* got, const float* ref, size_t n,
                         bool exact, const char* what, int step) {
  const int width = (int)pmx_dtype_size(sc->dtype);
  for (size_t i = 0; i < n; i++) {
    uint32_t g = load_word(got, i, width), r = word_of(sc->dtype, ref[i]);
    if (g == r) continue;
    if (!exact) {
      float gf = sc->dtype == PMX_DT_F32    ? from32(g)
                 : sc->dtype == PMX_DT_BF16 ? ref_bf16_f32((uint16_t)g)
                                            : ref_f16_f32((uint16_t)g);
      bool close = sc->dtype == PMX_DT_F32 ? fabsf(gf - ref[i]) <= 1e-5f
                                           : (g > r ? g - r : r - g) <= 1;
      if (close) continue;
    }
    fail_msg("%s on %s: %s after step %d, element %zu: 0x%x, want 0x%x", sc->name, g_dev, what,
             step, i, g, r);
  }
}

static void run(const scenario* sc, const char* dev, outlog* log) {
  svc_up(sc, dev);
  pmx_backend* b = g_svc.backend;
  const bool exact = b->ndev == 1;
  const size_t es = pmx_dtype_size(sc->dtype), n = sc->numel;
  float* pref = malloc(n * sizeof(float));   /* reference parameters (f32 values) */
  float* mref = calloc(n, sizeof(float));    /* reference momentum */
  uint8_t* init = malloc(n * es);
  assert_true(pref && mref && init);
  for (size_t i = 0; i < n; i++) {
    pref[i] = round_to(sc->dtype, val(1, 0, i));
    uint32_t wv = word_of(sc->dtype, pref[i]);
    memcpy(init + i * es, &wv, es); /* little endian: the low bytes */
  }
  const uint64_t shape[1] = {n};
  pmx_declare_args a = {.name = sc->name, .dtype = sc->dtype, .shape = shape, .ndim = 1,
                        .values = init, .values_len = n * es};
  pmx_tensor_state* t = NULL;
  bool created = false;
  char err[512];
  if (pmx_store_declare(&g_svc, &a, &t, &created, err, sizeof err) != PMX_ST_OK)
    fail_msg("declare: %s", err);
  assert_true(t->nchunks >= 2);

  bool first = true;
  for (int s = 0; s <= sc->steps; s++) {
    const bool restore_step = s == sc->steps; /* the last step follows a momentum restore */
    for (uint32_t k = 0; k < t->nchunks; k++) {
      pmx_chunk_state* c = &t->chunks[k];
      const size_t m = c->elems, off = (size_t)k * t->chunk_elems;
      float* g = pmx_buf_get(g_svc.cfg.chunk_bytes);
      float* sum = malloc(m * sizeof(float));
      uint8_t* old = malloc(m * es);
      assert_true(g && sum && old);
      pthread_mutex_lock(&c->mu);
      memcpy(old, c->params, m * es);
      if (restore_step && b->momentum) {
        float* mom = malloc(m * sizeof(float));
        assert_non_null(mom);
        for (size_t i = 0; i < m; i++) mref[off + i] = mom[i] = 0.25f * val(7, k, i);
        b->ops->chunk_load(b, t, c, mom);
        c->mom_first = false;
        free(mom);
      }
      for (uint32_t r = 0; r < sc->workers; r++) {
        for (size_t i = 0; i < m; i++) {
          g[i] = round_to(sc->gdtype, val(100 + (uint64_t)s, r, off + i));
          sum[i] = r == 0 ? g[i] : sum[i] + g[i];
        }
        bool taken = false;
        /* rank 0 hands its buffer over, the way the push handler does */
        assert_int_equal(b->ops->accumulate(b, t, c, r, g, r == 0, &taken), 0);
        if (taken) {
          g = pmx_buf_get(g_svc.cfg.chunk_bytes);
          assert_non_null(g);
        }
      }
      pmx_step_io io = {.ncontrib = sc->workers, .first = c->mom_first};
      const bool v1 = sc->view1 && sc->dtype == PMX_DT_F32;
      if (sc->view1 || sc->enc) io.bits[0] = malloc(m * es);
      if (v1) io.bits[1] = malloc(m * 2);
      if (sc->enc) io.enc[0] = malloc(m * es);
      if (sc->enc && v1) io.enc[1] = malloc(m * 2);
      b->ops->step(b, t, c, &io);
      c->mom_first = false;
      pthread_mutex_unlock(&c->mu);

      /* the reference step (pmx_sgd_apply's formula, written out) */
      for (size_t i = 0; i < m; i++) {
        float gr = sum[i] / (float)sc->workers, p = pref[off + i];
        if (sc->wd != 0.0f) gr = gr + sc->wd * p;
        if (sc->momentum != 0.0f) {
          float mm = first && !restore_step ? gr : sc->momentum * mref[off + i] + gr;
          mref[off + i] = mm;
          gr = mm;
        }
        pref[off + i] = round_to(sc->dtype, p - sc->lr * gr);
      }
      expect_words(sc, c->params, pref + off, m, exact, "parameters", s);
      log_add(log, c->params, m * es);
      if (io.bits[0]) assert_memory_equal(io.bits[0], c->params, m * es);
      if (io.bits[1]) {
        for (size_t i = 0; i < m; i++) {
          uint16_t got;
          memcpy(&got, (uint8_t*)io.bits[1] + 2 * i, 2);
          assert_int_equal(got, ref_bf16(from32(load_word(c->params, i, 4))));
        }
        log_add(log, io.bits[1], m * 2);
      }
      uint8_t* want = malloc(m * 4);
      assert_non_null(want);
      if (io.enc[0]) {
        ref_encode(c->params, old, m, (int)es, want); /* the backend's own bits */
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
      pmx_buf_put(g, g_svc.cfg.chunk_bytes);
      free(sum);
      free(old);
    }
    first = false;
  }

  /* views and the checkpoint snapshot of the final state */
  for (uint32_t k = 0; k < t->nchunks; k++) {
    pmx_chunk_state* c = &t->chunks[k];
    const size_t m = c->elems, off = (size_t)k * t->chunk_elems;
    uint8_t* p = malloc(m * es);
    float* mom = malloc(m * sizeof(float));
    uint16_t* v = malloc(m * 4);
    assert_true(p && mom && v);
    pthread_mutex_lock(&c->mu);
    b->ops->snapshot(b, t, c, p, b->momentum ? mom : NULL);
    b->ops->read_view(b, t, c, 0, v);
    assert_memory_equal(v, c->params, m * es);
    if (sc->dtype == PMX_DT_F32) b->ops->read_view(b, t, c, 1, v);
    pthread_mutex_unlock(&c->mu);
    expect_words(sc, p, pref + off, m, exact, "snapshot", sc->steps);
    log_add(log, p, m * es);
    if (b->momentum) {
      for (size_t i = 0; i < m; i++)
        if (mom[i] != mref[off + i] && !(!exact && fabsf(mom[i] - mref[off + i]) <= 1e-5f))
          fail_msg("%s on %s: momentum element %zu: %a, want %a", sc->name, g_dev, off + i,
                   (double)mom[i], (double)mref[off + i]);
      log_add(log, mom, m * sizeof(float));
    }
    if (sc->dtype == PMX_DT_F32) {
      for (size_t i = 0; i < m; i++) assert_int_equal(v[i], ref_bf16(from32(load_word(p, i, 4))));
      log_add(log, v, m * 2);
    }
    free(p);
    free(mom);
    free(v);
  }
  free(pref);
  free(mref);
  free(init);
  pmx_service_deinit(&g_svc);
}

/* Runs sc on the backend under test and, when that is not cpu and uses one device, on
 * the cpu backend too: every output byte must agree. */
static void conform(const scenario* sc) {
  outlog mine = {0}, cpu = {0};
  run(sc, g_dev, &mine);
  if (strcmp(g_dev, "cpu") != 0) {
    svc_up(sc, g_dev);
    uint32_t ndev = g_svc.backend->ndev;
    pmx_service_deinit(&g_svc);
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
  const scenario sc = {"f32-plain", PMX_DT_F32, PMX_DT_F32, 3000, 3, 0.5f, 0, 0, 2, true, true};
  conform(&sc);
}

static void test_f32_momentum_wd_bf16_pushes(void** state) {
  (void)state;
  const scenario sc = {"f32-momentum", PMX_DT_F32, PMX_DT_BF16, 2500, 4, 0.1f, 0.9f, 0.01f, 3,
                       true, true};
  conform(&sc);
}

static void test_bf16_tensor(void** state) {
  (void)state;
  const scenario sc = {"bf16", PMX_DT_BF16, PMX_DT_BF16, 2100, 2, 0.25f, 0.9f, 0, 3, false, true};
  conform(&sc);
}

static void test_f16_tensor(void** state) {
  (void)state;
  const scenario sc = {"f16", PMX_DT_F16, PMX_DT_F16, 1500, 3, 0.125f, 0, 0.01f, 2, false, true};
  conform(&sc);
}

static void test_no_outputs(void** state) {
  (void)state;
  const scenario sc = {"bare", PMX_DT_F32, PMX_DT_F32, 2049, 1, 0.5f, 0.5f, 0, 2, false, false};
  conform(&sc);
}

/* ---- --device and --gpus ------------------------------------------------------------------ */

static void test_gpu_lists(void** state) {
  (void)state;
  int ids[4];
  uint32_t n = 0;
  char err[256];
  assert_int_equal(pmx_gpu_list_parse("0,1,3", ids, 4, &n, err, sizeof err), 0);
  assert_int_equal(n, 3);
  assert_int_equal(ids[2], 3);
  const char* bad[] = {"", "a", "0,0", "1,", ",1", "-1", "2x", "0,1,2,3,4", "99999"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    err[0] = 0;
    assert_int_equal(pmx_gpu_list_parse(bad[i], ids, 4, &n, err, sizeof err), -1);
    assert_non_null(strstr(err, "--gpus"));
    assert_null(strchr(err, '\n'));
  }
  pmx_config cfg;
  char* a1[] = {"paramex-server", "--gpus", "0"}; /* needs --device cuda */
  assert_int_equal(pmx_config_parse(&cfg, 3, a1), 2);
  char* a2[] = {"paramex-server", "--device", "tpu"};
  assert_int_equal(pmx_config_parse(&cfg, 3, a2), 2);
  char* a3[] = {"paramex-server", "--device", "cuda", "--gpus", "1,0"};
  assert_int_equal(pmx_config_parse(&cfg, 5, a3), 0);
  assert_int_equal(cfg.ngpus, 2);
  assert_int_equal(cfg.gpu_ids[0], 1);
}

/* Without CUDA or a GPU, the cuda backend refuses to start with one line naming why. */
static void test_cuda_refusal(void** state) {
  (void)state;
  char why[256];
  if (pmx_backend_cuda_available(why, sizeof why)) skip();
  pmx_config cfg;
  char* argv[] = {"paramex-server", "--device", "cuda"};
  assert_int_equal(pmx_config_parse(&cfg, 3, argv), 0);
  pmx_backend* b = NULL;
  char err[512] = "";
  int rc = pmx_backend_create(&cfg, &b, err, sizeof err);
  assert_true(rc == -1 || rc == -2);
  assert_null(b);
  assert_null(strchr(err, '\n'));
#ifdef PMX_HAVE_CUDA
  assert_int_equal(rc, -1);
  assert_non_null(strstr(err, "--device cuda: cuda"));
#else
  assert_int_equal(rc, -2);
  assert_non_null(strstr(err, "built without CUDA"));
#endif
}

static int group_setup(void** state) {
  (void)state;
  pmx_log_threshold = PMX_LOG_WARN;
  pmx_rpc_init();
  return 0;
}

static int group_teardown(void** state) {
  (void)state;
  pmx_rpc_shutdown();
  return 0;
}

int main(int argc, char** argv) {
  g_dev = argc > 1 ? argv[1] : "cpu";
  if (strcmp(g_dev, "cpu") != 0 && strcmp(g_dev, "cuda") != 0) {
    fprintf(stderr, "usage: test_backend [cpu|cuda]\n");
    return 2;
  }
  char why[256];
  if (strcmp(g_dev, "cuda") == 0 && !pmx_backend_cuda_available(why, sizeof why)) {
    const char* req = getenv("PMX_TEST_REQUIRE_GPU");
    if (req && strcmp(req, "1") == 0) {
      fprintf(stderr, "test_backend cuda: no usable GPU (%s) and PMX_TEST_REQUIRE_GPU=1\n", why);
      return 1;
    }
    printf("SKIP: cuda backend: %s\n", why);
    return 77;
  }
  const struct CMUnitTest conformance[] = {
      cmocka_unit_test(test_f32_plain),
      cmocka_unit_test(test_f32_momentum_wd_bf16_pushes),
      cmocka_unit_test(test_bf16_tensor),
      cmocka_unit_test(test_f16_tensor),
      cmocka_unit_test(test_no_outputs),
  };
  const struct CMUnitTest config[] = {
      cmocka_unit_test(test_gpu_lists),
      cmocka_unit_test(test_cuda_refusal),
  };
  int rc = strcmp(g_dev, "cuda") == 0
               ? _cmocka_run_group_tests("backend-cuda", conformance,
                                         sizeof conformance / sizeof conformance[0],
                                         group_setup, group_teardown)
               : _cmocka_run_group_tests("backend-cpu", conformance,
                                         sizeof conformance / sizeof conformance[0],
                                         group_setup, group_teardown);
  if (strcmp(g_dev, "cpu") == 0) rc |= cmocka_run_group_tests(config, group_setup, group_teardown);
  return rc;
}
