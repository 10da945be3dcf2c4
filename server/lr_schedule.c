/* Learning-rate schedules (lr_schedule.h). */
#include "lr_schedule.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const char* const names[] = {"constant", "step", "cosine", "linear-warmup"};

int px_lr_kind_parse(const char* s) {
  for (int i = 0; s && i < 4; i++)
    if (strcmp(s, names[i]) == 0) return i;
  return -1;
}

const char* px_lr_kind_name(px_lr_kind k) { return (unsigned)k < 4 ? names[k] : "?"; }

int px_lr_sched_check(const px_lr_sched* s, char* err, size_t errlen) {
  if (s->kind == PX_LR_STEP && s->step_size == 0)
    snprintf(err, errlen, "--lr-schedule step needs --lr-step-size N (N >= 1)");
  else if (s->kind == PX_LR_STEP && !(s->gamma > 0 && s->gamma <= 1))
    snprintf(err, errlen, "--lr-gamma %g: want 0 < gamma <= 1", s->gamma);
  else if (s->kind == PX_LR_COSINE && s->total == 0)
    snprintf(err, errlen, "--lr-schedule cosine needs --lr-total-steps N (N >= 1)");
  else if (s->kind == PX_LR_COSINE && !(s->lr_min >= 0 && s->lr_min <= s->lr))
    snprintf(err, errlen, "--lr-min %g: want 0 <= lr-min <= --lr %g", s->lr_min, s->lr);
  else if (s->kind == PX_LR_LINEAR_WARMUP && s->warmup == 0)
    snprintf(err, errlen, "--lr-schedule linear-warmup needs --lr-warmup-steps N (N >= 1)");
  else if (s->kind == PX_LR_COSINE && s->warmup > s->total)
    snprintf(err, errlen, "--lr-warmup-steps %llu is more than --lr-total-steps %llu",
             (unsigned long long)s->warmup, (unsigned long long)s->total);
  else
    return 0;
  return -1;
}

float px_lr_at(const px_lr_sched* s, uint64_t step) {
  double lr = s->lr;
  if (s->kind == PX_LR_STEP) {
    lr = s->lr * pow(s->gamma, (double)(step / s->step_size));
  } else if (s->kind == PX_LR_COSINE) {
    const double t = (double)(step < s->total ? step : s->total) / (double)s->total;
    lr = s->lr_min + (s->lr - s->lr_min) * (1.0 + cos(M_PI * t)) / 2.0;
  }
  if (s->warmup && step + 1 < s->warmup) lr = lr * (double)(step + 1) / (double)s->warmup;
  return (float)lr;
}

void px_lr_sched_describe(const px_lr_sched* s, char* buf, size_t cap) {
  int n = 0;
  if (s->kind == PX_LR_STEP)
    n = snprintf(buf, cap, "step lr %g x %g every %llu steps", s->lr, s->gamma,
                 (unsigned long long)s->step_size);
  else if (s->kind == PX_LR_COSINE)
    n = snprintf(buf, cap, "cosine lr %g -> %g over %llu steps", s->lr, s->lr_min,
                 (unsigned long long)s->total);
  else
    n = snprintf(buf, cap, "constant lr %g", s->lr);
  if (s->warmup && n >= 0 && (size_t)n < cap)
    snprintf(buf + n, cap - (size_t)n, ", linear warm-up over %llu steps",
             (unsigned long long)s->warmup);
}
