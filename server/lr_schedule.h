/* Learning-rate schedules, evaluated on the server by version: step s of a chunk (the
 * step that makes version s + 1) runs with lr(s), computed in double from the flags and
 * rounded once to float, the same on every backend and after a restore (it depends on the
 * version alone). PyTorch's definitions:
 *   constant       lr
 *   step           lr * gamma^floor(s / step_size)                           (StepLR)
 *   cosine         lr_min + (lr - lr_min) * (1 + cos(pi * min(s, T) / T)) / 2 (CosineAnnealingLR,
 *                  T = total steps; lr_min after T)
 *   linear-warmup  constant with a warm-up (below)
 * and with warmup W > 0, any of them times min(1, (s + 1) / W) (a linear warm-up from
 * lr/W at step 0 to the full value at step W - 1). */
#ifndef PX_LR_SCHEDULE_H
#define PX_LR_SCHEDULE_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
  PX_LR_CONSTANT = 0,
  PX_LR_STEP = 1,
  PX_LR_COSINE = 2,
  PX_LR_LINEAR_WARMUP = 3,
} px_lr_kind;

typedef struct px_lr_sched {
  px_lr_kind kind;
  double lr, gamma, lr_min;
  uint64_t step_size, total, warmup;
} px_lr_sched;

/* "constant", "step", "cosine", "linear-warmup" -> kind; -1 when unknown. */
int px_lr_kind_parse(const char* s);
const char* px_lr_kind_name(px_lr_kind k);
/* What a schedule's flags must satisfy; 0, or -1 with one line naming the flag in err. */
int px_lr_sched_check(const px_lr_sched* s, char* err, size_t errlen);
/* lr(step), rounded to float. */
float px_lr_at(const px_lr_sched* s, uint64_t step);
/* "cosine lr 0.1 -> 0.001 over 1000 steps, warm-up 100" for the start-up log. */
void px_lr_sched_describe(const px_lr_sched* s, char* buf, size_t cap);

#endif
