/* The training job of the diff-sync tests, shared by pmx_diff_worker (which runs it through
 * libparamex) and test_diff (which recomputes it as the reference).
 *
 * The synthetic SGD workload of issue 3: initial weights N(0, 0.02^2); the gradient of
 * worker `rank` at `step` for the tensor with index t is
 *     g[i] = noise(t, rank, step)[i] + 0.1f * held[i],   noise ~ N(0, 0.01^2)
 * where held is the tensor as this worker last pulled it, as f32 (a bf16 view or a bf16 /
 * f16 tensor widened exactly). The coupling term is small next to the noise, so the
 * diffs stay those of the workload, yet a pull that delivered wrong bits changes what the
 * worker pushes and so every later version.
 *
 * The worker's output file is a sequence of records, one per pull and a last one (kind
 * 'E') with the client's totals; see px_dm_rec. Both sides are compiled with
 * -ffp-contract=off, so the float operations give the same bits everywhere. */
#ifndef PX_IT_DIFF_MODEL_H
#define PX_IT_DIFF_MODEL_H

#include <stddef.h>
#include <stdint.h>

#define PX_DM_SIGMA_W 0.02f
#define PX_DM_SIGMA_G 0.01f
#define PX_DM_COUPLING 0.1f
#define PX_DM_MAX_TENSORS 8

/* Initial values of the tensor with index t (as f32; 16-bit tensors round them with RNE).
 * Returns 0, -1 on failure. */
int px_dm_init(uint32_t t, float* p, size_t n);
/* Gradient of worker `rank` at `step` for tensor index t from its held parameters (f32).
 * Returns 0, -1 on failure. */
int px_dm_grad(uint32_t t, uint32_t rank, uint64_t step, const float* held, float* g, size_t n);

/* Plan characters, one per step 0..steps: what a worker does with its data tensors before
 * it pushes that step (at `steps`: the final pull). Every worker pulls the sync tensor
 * each step regardless. */
#define PX_DM_PULL 'p'   /* pull version s into the buffers it holds (diff from their version) */
#define PX_DM_FRESH 'f'  /* pull version s into new buffers (no base), which it then holds */
#define PX_DM_REPEAT 'r' /* 'p', then the same pull again (all chunks unchanged) */
#define PX_DM_SKIP '.'   /* no pull: keep computing from the version it holds */

#define PX_DM_REC_MAGIC 0x52444d50u /* "PMDR" */

/* One record of the worker's output file, followed (kinds other than 'E') by ntensors
 * uint64_t versions (the `versions` output of the pull) and then each tensor's buffer as
 * pulled (numel elements of the pulled width, little endian). */
typedef struct px_dm_rec {
  uint32_t magic;
  uint32_t step;
  uint32_t kind;     /* 'S' the sync tensor; 'p', 'f', 'r' the data tensors; 'E' the end */
  uint32_t ntensors;
  /* Client-stats deltas over this pull (the heal pulls included); 'E': the totals. */
  uint64_t pull_wire, pull_raw, pull_unchanged, checksum_failures;
  uint64_t push_wire, push_raw; /* 'E' only */
} px_dm_rec;

#endif
