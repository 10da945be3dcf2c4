/* Unit tests of server/lr_schedule.c: each schedule against its formula written out here,
 * the warm-up, the flag checks. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <string.h>

#include "lr_schedule.h"

static void test_schedules(void** state) {
  (void)state;
  px_lr_sched c = {.kind = PX_LR_CONSTANT, .lr = 0.1};
  for (uint64_t s = 0; s < 5; s++) assert_true(px_lr_at(&c, s) == 0.1f);
  px_lr_sched st = {.kind = PX_LR_STEP, .lr = 0.5, .gamma = 0.5, .step_size = 2};
  const float want_step[] = {0.5f, 0.5f, 0.25f, 0.25f, 0.125f, 0.125f, 0.0625f};
  for (uint64_t s = 0; s < 7; s++) assert_true(px_lr_at(&st, s) == want_step[s]);
  px_lr_sched co = {.kind = PX_LR_COSINE, .lr = 1.0, .lr_min = 0.0, .total = 4};
  assert_true(px_lr_at(&co, 0) == 1.0f);
  assert_true(px_lr_at(&co, 2) == (float)(0.5 * (1.0 + cos(M_PI * 0.5))));
  assert_true(px_lr_at(&co, 4) == 0.0f);
  assert_true(px_lr_at(&co, 100) == 0.0f); /* lr_min after T */
  co.lr_min = 0.1;
  assert_true(px_lr_at(&co, 1) == (float)(0.1 + 0.9 * (1.0 + cos(M_PI * 0.25)) / 2.0));
  px_lr_sched w = {.kind = PX_LR_LINEAR_WARMUP, .lr = 0.8, .warmup = 4};
  const float want_w[] = {0.2f, 0.4f, (float)(0.8 * 3.0 / 4.0), 0.8f, 0.8f};
  for (uint64_t s = 0; s < 5; s++) assert_true(px_lr_at(&w, s) == want_w[s]);
  px_lr_sched cw = {.kind = PX_LR_COSINE, .lr = 1.0, .total = 10, .warmup = 2};
  assert_true(px_lr_at(&cw, 0) == (float)((1.0 + cos(0.0)) / 2.0 * 0.5));
  assert_true(px_lr_at(&cw, 1) == (float)((1.0 + cos(M_PI * 0.1)) / 2.0));
  char d[160];
  px_lr_sched_describe(&cw, d, sizeof d);
  assert_string_equal(d, "cosine lr 1 -> 0 over 10 steps, linear warm-up over 2 steps");
}

static void test_checks(void** state) {
  (void)state;
  char err[160];
  assert_int_equal(px_lr_kind_parse("cosine"), PX_LR_COSINE);
  assert_int_equal(px_lr_kind_parse("linear-warmup"), PX_LR_LINEAR_WARMUP);
  assert_int_equal(px_lr_kind_parse("Cosine"), -1);
  assert_string_equal(px_lr_kind_name(PX_LR_STEP), "step");
  px_lr_sched s = {.kind = PX_LR_STEP, .lr = 1, .gamma = 0.1};
  assert_int_equal(px_lr_sched_check(&s, err, sizeof err), -1);
  assert_string_equal(err, "--lr-schedule step needs --lr-step-size N (N >= 1)");
  s.step_size = 3;
  s.gamma = 0;
  assert_int_equal(px_lr_sched_check(&s, err, sizeof err), -1);
  assert_string_equal(err, "--lr-gamma 0: want 0 < gamma <= 1");
  s = (px_lr_sched){.kind = PX_LR_COSINE, .lr = 1, .total = 5, .lr_min = 2};
  assert_int_equal(px_lr_sched_check(&s, err, sizeof err), -1);
  assert_string_equal(err, "--lr-min 2: want 0 <= lr-min <= --lr 1");
  s.lr_min = 0;
  s.warmup = 6;
  assert_int_equal(px_lr_sched_check(&s, err, sizeof err), -1);
  assert_string_equal(err, "--lr-warmup-steps 6 is more than --lr-total-steps 5");
  s.total = 0;
  assert_int_equal(px_lr_sched_check(&s, err, sizeof err), -1);
  assert_string_equal(err, "--lr-schedule cosine needs --lr-total-steps N (N >= 1)");
  s = (px_lr_sched){.kind = PX_LR_LINEAR_WARMUP, .lr = 1};
  assert_int_equal(px_lr_sched_check(&s, err, sizeof err), -1);
  assert_string_equal(err, "--lr-schedule linear-warmup needs --lr-warmup-steps N (N >= 1)");
  s.warmup = 1;
  assert_int_equal(px_lr_sched_check(&s, err, sizeof err), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_schedules),
      cmocka_unit_test(test_checks),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
