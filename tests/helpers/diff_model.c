/* The training job of the diff-sync tests; see diff_model.h. */
#include "diff_model.h"

#include "codec/initializer.h"

int px_dm_init(uint32_t t, float* p, size_t n) {
  return px_init_fill_f32(p, 0, n, PX_FILL_NORMAL, 0.0f, PX_DM_SIGMA_W, 500u + t);
}

int px_dm_grad(uint32_t t, uint32_t rank, uint64_t step, const float* held, float* g, size_t n) {
  uint64_t seed = 7000003u * (uint64_t)(t + 1) + 10007u * (uint64_t)rank + step;
  if (px_init_fill_f32(g, 0, n, PX_FILL_NORMAL, 0.0f, PX_DM_SIGMA_G, seed) != 0) return -1;
  for (size_t i = 0; i < n; i++) g[i] = g[i] + PX_DM_COUPLING * held[i];
  return 0;
}
