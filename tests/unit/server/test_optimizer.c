/* Unit tests of server/backend/optimizer.c: px_sgd_apply against hand-computed values and,
 * bit for bit, against a straightforward reference loop. All hand-computed values are
 * exactly representable, so the comparisons are exact. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>

#include "backend/optimizer.h"

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

static void assert_floats(const float* got, const float* want, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (got[i] != want[i]) fail_msg("element %zu: got %.9g, want %.9g", i, got[i], want[i]);
}

static void test_plain_sgd(void** state) {
  (void)state;
  px_sgd o = {.lr = 0.5f, .momentum = 0.0f, .weight_decay = 0.0f, .nesterov = false};
  float p[] = {1, 1, -3, 0};
  const float sum[] = {4, -2, 1, 8};
  /* g = sum / 2 = {2, -1, 0.5, 4}; p -= 0.5 g */
  px_sgd_apply(&o, p, NULL, true, sum, N_OF(p), 2);
  const float want[] = {0, 1.5f, -3.25f, -2};
  assert_floats(p, want, N_OF(p));
  /* A second step: the same update again (no state). */
  px_sgd_apply(&o, p, NULL, false, sum, N_OF(p), 2);
  const float want2[] = {-1, 2, -3.5f, -4};
  assert_floats(p, want2, N_OF(p));
}

static void test_mean_over_workers(void** state) {
  (void)state;
  px_sgd o = {.lr = 1.0f, .momentum = 0.0f, .weight_decay = 0.0f, .nesterov = false};
  const float sum[] = {6, -12};
  float p1[] = {0, 0}, p3[] = {0, 0}, p4[] = {0, 0};
  px_sgd_apply(&o, p1, NULL, true, sum, 2, 1);
  px_sgd_apply(&o, p3, NULL, true, sum, 2, 3);
  px_sgd_apply(&o, p4, NULL, true, sum, 2, 4);
  const float w1[] = {-6, 12}, w3[] = {-2, 4}, w4[] = {-1.5f, 3};
  assert_floats(p1, w1, 2);
  assert_floats(p3, w3, 2);
  assert_floats(p4, w4, 2);
}

static void test_weight_decay(void** state) {
  (void)state;
  px_sgd o = {.lr = 0.25f, .momentum = 0.0f, .weight_decay = 0.5f, .nesterov = false};
  float p[] = {2, -4};
  float mom[] = {77, 77}; /* no momentum: never touched */
  const float sum[] = {2, 1};
  /* g = {2 + 0.5*2, 1 + 0.5*(-4)} = {3, -1}; p -= 0.25 g */
  px_sgd_apply(&o, p, mom, true, sum, 2, 1);
  const float want[] = {1.25f, -3.75f};
  assert_floats(p, want, 2);
  const float mom_want[] = {77, 77};
  assert_floats(mom, mom_want, 2);
}

static void test_momentum_first_and_later_steps(void** state) {
  (void)state;
  px_sgd o = {.lr = 0.5f, .momentum = 0.5f, .weight_decay = 0.0f, .nesterov = false};
  float p[] = {1, 2};
  float mom[] = {100, -100}; /* garbage: the first step must not read it */
  /* step 1: g = {8,-4}/4 = {2,-1}; buf = g; p -= 0.5 buf */
  const float s1[] = {8, -4};
  px_sgd_apply(&o, p, mom, true, s1, 2, 4);
  const float p1[] = {0, 2.5f}, m1[] = {2, -1};
  assert_floats(mom, m1, 2);
  assert_floats(p, p1, 2);
  /* step 2: g = {1,1}; buf = 0.5 {2,-1} + {1,1} = {2, 0.5}; p -= 0.5 buf */
  const float s2[] = {4, 4};
  px_sgd_apply(&o, p, mom, false, s2, 2, 4);
  const float p2[] = {-1, 2.25f}, m2[] = {2, 0.5f};
  assert_floats(mom, m2, 2);
  assert_floats(p, p2, 2);
  /* step 3: g = {-2, 0}; buf = 0.5 {2, 0.5} + {-2, 0} = {-1, 0.25}; p -= 0.5 buf */
  const float s3[] = {-8, 0};
  px_sgd_apply(&o, p, mom, false, s3, 2, 4);
  const float p3[] = {-0.5f, 2.125f}, m3[] = {-1, 0.25f};
  assert_floats(mom, m3, 2);
  assert_floats(p, p3, 2);
}

/* Nesterov by hand: buf as with momentum, then g + mu * buf is applied. */
static void test_nesterov(void** state) {
  (void)state;
  px_sgd o = {.lr = 0.5f, .momentum = 0.5f, .weight_decay = 0.0f, .nesterov = true};
  float p[] = {1, 2};
  float mom[] = {100, -100};
  /* step 1: g = {2,-1}; buf = g = {2,-1}; d = g + 0.5 buf = {3,-1.5}; p -= 0.5 d */
  const float s1[] = {8, -4};
  px_sgd_apply(&o, p, mom, true, s1, 2, 4);
  const float p1[] = {-0.5f, 2.75f}, m1[] = {2, -1};
  assert_floats(mom, m1, 2);
  assert_floats(p, p1, 2);
  /* step 2: g = {1,1}; buf = 0.5 {2,-1} + {1,1} = {2, 0.5}; d = {1,1} + 0.5 buf = {2, 1.25} */
  const float s2[] = {4, 4};
  px_sgd_apply(&o, p, mom, false, s2, 2, 4);
  const float p2[] = {-1.5f, 2.125f}, m2[] = {2, 0.5f};
  assert_floats(mom, m2, 2);
  assert_floats(p, p2, 2);
}

static void test_momentum_with_weight_decay(void** state) {
  (void)state;
  px_sgd o = {.lr = 0.5f, .momentum = 0.5f, .weight_decay = 0.5f, .nesterov = false};
  float p[] = {2};
  float mom[] = {-9};
  /* step 1: g = 2/2 + 0.5*2 = 2; buf = 2; p = 2 - 1 = 1 */
  const float s1[] = {2};
  px_sgd_apply(&o, p, mom, true, s1, 1, 2);
  assert_true(mom[0] == 2.0f);
  assert_true(p[0] == 1.0f);
  /* step 2: g = 4/2 + 0.5*1 = 2.5; buf = 0.5*2 + 2.5 = 3.5; p = 1 - 1.75 = -0.75 */
  const float s2[] = {4};
  px_sgd_apply(&o, p, mom, false, s2, 1, 2);
  assert_true(mom[0] == 3.5f);
  assert_true(p[0] == -0.75f);
}

static void test_zero_elements(void** state) {
  (void)state;
  px_sgd o = {.lr = 0.5f, .momentum = 0.9f, .weight_decay = 0.1f, .nesterov = false};
  float p[] = {3};
  float mom[] = {4};
  const float sum[] = {5};
  px_sgd_apply(&o, p, mom, true, sum, 0, 1);
  assert_true(p[0] == 3.0f);
  assert_true(mom[0] == 4.0f);
}

/* Adagrad and RMSprop by hand (values whose square roots are exact). */
static void test_adagrad_rmsprop(void** state) {
  (void)state;
  px_sgd ada = {.lr = 0.5f, .kind = PX_OPT_ADAGRAD, .eps = 0.0f};
  float p[] = {1, 2}, v[] = {100, 100};
  /* g = {3, -4}; v = g^2 = {9, 16}; p -= 0.5 * g / sqrt(v) = 0.5 * {1, -1} */
  const float s1[] = {6, -8};
  px_sgd_apply(&ada, p, v, true, s1, 2, 2);
  const float p1[] = {0.5f, 2.5f}, v1[] = {9, 16};
  assert_floats(v, v1, 2);
  assert_floats(p, p1, 2);
  /* g = {4, 0}; v = {25, 16}; p -= 0.5 * {4/5, 0} */
  const float s2[] = {8, 0};
  px_sgd_apply(&ada, p, v, false, s2, 2, 2);
  const float p2[] = {0.5f - 0.4f, 2.5f}, v2[] = {25, 16};
  assert_floats(v, v2, 2);
  assert_floats(p, p2, 2);
  px_sgd rms = {.lr = 1.0f, .kind = PX_OPT_RMSPROP, .eps = 0.0f, .alpha = 0.75f};
  float q[] = {0}, w[] = {-7};
  /* g = 2; v = 0.25 * 4 = 1; q -= 2 / 1 */
  const float t1[] = {2};
  px_sgd_apply(&rms, q, w, true, t1, 1, 1);
  assert_true(w[0] == 1.0f && q[0] == -2.0f);
  /* g = 4; v = 0.75 * 1 + 0.25 * 16 = 4.75; q -= 4 / sqrt(4.75) */
  const float t2[] = {4};
  px_sgd_apply(&rms, q, w, false, t2, 1, 1);
  assert_true(w[0] == 4.75f && q[0] == -2.0f - 4.0f / sqrtf(4.75f));
}

/* ---- bit-exact against a reference ----------------------------------------------------- */

static uint64_t rng_state;
static float rnd(float lo, float hi) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  double u = (double)(rng_state >> 11) * 0x1.0p-53;
  return (float)(lo + (hi - lo) * u);
}

/* The documented formula, one element at a time. */
static void ref_sgd(float lr, float mu, float wd, bool nesterov, float* p, float* mom,
                    bool first, const float* sum, size_t n, uint32_t nworkers) {
  for (size_t i = 0; i < n; i++) {
    float g = sum[i] / (float)nworkers;
    if (wd != 0.0f) g = g + wd * p[i];
    if (mu != 0.0f) {
      if (first) mom[i] = g;
      else mom[i] = mu * mom[i] + g;
      g = nesterov ? g + mu * mom[i] : mom[i]; /* Sutskever et al. as PyTorch writes it */
    }
    p[i] = p[i] - lr * g;
  }
}

/* Adagrad and RMSprop from their formulas (optimizer.h), one element at a time. */
static void ref_adaptive(const px_sgd* o, float* p, float* v, bool first, const float* sum,
                         size_t n, uint32_t nworkers) {
  const float om = 1.0f - o->alpha;
  for (size_t i = 0; i < n; i++) {
    float g = sum[i] / (float)nworkers;
    if (o->weight_decay != 0.0f) g = g + o->weight_decay * p[i];
    float sq = g * g;
    if (o->kind == PX_OPT_ADAGRAD) v[i] = first ? sq : v[i] + sq;
    else v[i] = first ? om * sq : o->alpha * v[i] + om * sq;
    float denom = sqrtf(v[i]) + o->eps;
    p[i] = p[i] - o->lr * (g / denom);
  }
}

static void test_adaptive_bit_exact_random(void** state) {
  (void)state;
  enum { n = 777 };
  static float p[n], pr[n], v[n], vr[n], sum[n];
  const px_sgd opts[] = {
      {.lr = 0.01f, .kind = PX_OPT_ADAGRAD, .eps = 1e-10f},
      {.lr = 0.01f, .weight_decay = 1e-3f, .kind = PX_OPT_ADAGRAD, .eps = 1e-10f},
      {.lr = 0.01f, .kind = PX_OPT_RMSPROP, .eps = 1e-8f, .alpha = 0.99f},
      {.lr = 0.003f, .weight_decay = 1e-2f, .kind = PX_OPT_RMSPROP, .eps = 1e-8f, .alpha = 0.9f}};
  rng_state = 0x2545f4914f6cdd1dull;
  for (size_t k = 0; k < N_OF(opts); k++) {
    for (size_t i = 0; i < n; i++) {
      p[i] = pr[i] = rnd(-2, 2);
      v[i] = vr[i] = rnd(0, 1);
    }
    for (int step = 0; step < 6; step++) {
      for (size_t i = 0; i < n; i++) sum[i] = rnd(-3, 3);
      px_sgd_apply(&opts[k], p, v, step == 0, sum, n, 3);
      ref_adaptive(&opts[k], pr, vr, step == 0, sum, n, 3);
      if (memcmp(p, pr, sizeof p) != 0 || memcmp(v, vr, sizeof v) != 0)
        fail_msg("optimizer %zu differs from its formula at step %d", k, step);
    }
  }
}

static void test_bit_exact_random(void** state) {
  (void)state;
  const size_t n = 1037; /* not a multiple of any vector width */
  const float mus[] = {0.0f, 0.9f};
  const float wds[] = {0.0f, 1e-4f};
  const uint32_t nws[] = {1, 3, 7};
  float* p = malloc(n * sizeof *p);
  float* pr = malloc(n * sizeof *pr);
  float* m = malloc(n * sizeof *m);
  float* mr = malloc(n * sizeof *mr);
  float* sum = malloc(n * sizeof *sum);
  assert_non_null(p);
  assert_non_null(pr);
  assert_non_null(m);
  assert_non_null(mr);
  assert_non_null(sum);
  rng_state = 0x853c49e6748fea9bull;
  for (size_t a = 0; a < N_OF(mus) + 1; a++) { /* the last: Nesterov, mu 0.9 */
    for (size_t b = 0; b < N_OF(wds); b++) {
      for (size_t c = 0; c < N_OF(nws); c++) {
        const bool nest = a == N_OF(mus);
        px_sgd o = {.lr = 0.01f, .momentum = nest ? 0.9f : mus[a], .weight_decay = wds[b], .nesterov = nest};
        for (size_t i = 0; i < n; i++) {
          p[i] = pr[i] = rnd(-3, 3);
          m[i] = mr[i] = rnd(-1, 1);
        }
        for (int step = 0; step < 5; step++) {
          for (size_t i = 0; i < n; i++) sum[i] = rnd(-10, 10) * (float)nws[c];
          bool first = step == 0;
          px_sgd_apply(&o, p, m, first, sum, n, nws[c]);
          ref_sgd(o.lr, o.momentum, o.weight_decay, nest, pr, mr, first, sum, n, nws[c]);
          if (memcmp(p, pr, n * sizeof *p) != 0)
            fail_msg("params differ (mu=%g wd=%g nesterov=%d nw=%u step %d)", o.momentum,
                     wds[b], nest, nws[c], step);
          if (memcmp(m, mr, n * sizeof *m) != 0)
            fail_msg("momentum differs (mu=%g wd=%g nesterov=%d nw=%u step %d)", o.momentum,
                     wds[b], nest, nws[c], step);
        }
        /* The update really moved the parameters away from where they started. */
        float before = pr[0];
        px_sgd_apply(&o, p, m, false, sum, n, nws[c]);
        assert_true(p[0] != before);
        pr[0] = p[0];
      }
    }
  }
  free(p);
  free(pr);
  free(m);
  free(mr);
  free(sum);
}

/* The vectorized accumulation gives the scalar loop's bits, signed zeros, infinities and
 * NaN included, at every length around the vector block. */
static void test_f32_add_bit_exact(void** state) {
  (void)state;
  const size_t lens[] = {0, 1, 15, 16, 17, 1037};
  float acc[1037], ref[1037], g[1037];
  rng_state = 0x2545f4914f6cdd1dull;
  for (size_t l = 0; l < N_OF(lens); l++) {
    const size_t n = lens[l];
    for (size_t i = 0; i < n; i++) {
      acc[i] = ref[i] = rnd(-5, 5);
      g[i] = rnd(-5, 5);
    }
    if (n > 20) {
      acc[3] = ref[3] = -0.0f, g[3] = 0.0f;  /* -0 + 0 = +0 */
      acc[5] = ref[5] = -0.0f, g[5] = -0.0f; /* stays -0 */
      g[7] = 1.0f / 0.0f;
      acc[9] = ref[9] = 1.0f / 0.0f, g[9] = -1.0f / 0.0f; /* NaN */
    }
    px_f32_add(acc, g, n);
    for (size_t i = 0; i < n; i++) ref[i] += g[i];
    if (n && memcmp(acc, ref, n * sizeof *acc) != 0) fail_msg("pmx_f32_add differs at n=%zu", n);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_plain_sgd),
      cmocka_unit_test(test_mean_over_workers),
      cmocka_unit_test(test_weight_decay),
      cmocka_unit_test(test_momentum_first_and_later_steps),
      cmocka_unit_test(test_nesterov),
      cmocka_unit_test(test_adagrad_rmsprop),
      cmocka_unit_test(test_adaptive_bit_exact_random),
      cmocka_unit_test(test_momentum_with_weight_decay),
      cmocka_unit_test(test_zero_elements),
      cmocka_unit_test(test_bit_exact_random),
      cmocka_unit_test(test_f32_add_bit_exact),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
