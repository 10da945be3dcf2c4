/* The optimizer and the f32 accumulation in host memory: the cpu backend's arithmetic,
 * which the cuda kernels repeat operation for operation. Element order and float
 * operations are fixed (and the build disables FMA contraction), so results are
 * bit-reproducible. */
#ifndef PX_OPTIMIZER_H
#define PX_OPTIMIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"

/* One optimizer step on n elements from the rank-ordered gradient sum of nworkers workers;
 * mom is the state (px_sgd_has_state), first: the state was never written.
 *   g = sum / nworkers; if (wd) g = g + wd * p;
 *   sgd:     if (momentum) { m = first ? g : momentum*m + g; g = nesterov ? g + momentum*m : m; }
 *            p = p - lr * g     (PyTorch's SGD with dampening 0, nesterov on or off)
 *   adagrad: v = first ? g*g : v + g*g;                          p = p - lr * (g / (sqrt(v) + eps))
 *   rmsprop: v = first ? (1-alpha)*(g*g) : alpha*v + (1-alpha)*(g*g); the same p
 *            (PyTorch's Adagrad with lr_decay 0 and initial accumulator 0; RMSprop without
 *            momentum, not centered; 1 - alpha rounded to f32 once) */
void px_sgd_apply(const px_sgd* o, float* p, float* mom, bool first, const float* sum, size_t n,
                  uint32_t nworkers);
/* acc[i] += g[i] for i in [0, n), in order (vectorized; the same bits as the scalar loop). */
void px_f32_add(float* acc, const float* g, size_t n);

#endif
