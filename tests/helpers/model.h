/* The training job of the end-to-end tests, shared by pmx_test_worker (which runs it
 * through libparamex) and test_e2e (which recomputes it locally as the reference).
 *
 * Two f32 tensors: "a" (numel given on the command line; by default 3,000,001, so it spans
 * several chunks and ends in a short one) and "b" (shape 10 x 100). Initial values come
 * from the seeded initializers of codec.h; the gradient of worker `rank` at step `step` is
 *     g[i] = 0.5f * p[i] + noise(tensor, rank, step)[i]
 * so a wrong pull (p) or a wrong aggregation (sum in rank order) changes the result.
 * Both sides are compiled with -ffp-contract=off, so the float operations below give the
 * same bits everywhere. The definitions are in model.c, so that the worker (a libparamex
 * user) does not need codec.h. */
#ifndef PX_IT_MODEL_H
#define PX_IT_MODEL_H

#include <stddef.h>
#include <stdint.h>

#define PX_IT_NTENSORS 2
#define PX_IT_DEFAULT_A_NUMEL 3000001u
#define PX_IT_B_ROWS 10u
#define PX_IT_B_COLS 100u

/* "a" or "b". */
const char* px_it_tensor_name(int t);
/* Initial values of tensor t (version 0). Returns 0, -1 on failure. */
int px_it_init(int t, float* p, size_t n);
/* Gradient of worker `rank` at `step` for tensor t, from the pulled parameters p.
 * Returns 0, -1 on failure. */
int px_it_grad(int t, uint32_t rank, uint64_t step, const float* p, float* g, size_t n);

/* The BSP reference the server must compute: tensor t (n elements) after `steps` steps of
 * `world` workers (gradients summed in rank order, mean, weight decay, momentum, SGD, in
 * float). lr, momentum and weight_decay are the server's flag strings, converted as the
 * server converts them. params receives the parameters; mom (may be NULL) the momentum
 * buffer (zeros before the first step). Returns 0, -1 when out of memory. */
int px_it_reference(int t, size_t n, uint32_t world, uint64_t steps, const char* lr,
                     const char* momentum, const char* weight_decay, float* params, float* mom);

#endif
