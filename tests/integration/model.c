/* The training job of the end-to-end tests; see model.h. */
#include "model.h"

#include "codec/codec.h"

const char* pmx_it_tensor_name(int t) { return t == 0 ? "a" : "b"; }

int pmx_it_init(int t, float* p, size_t n) {
  if (t == 0) return pmx_init_fill_f32(p, 0, n, PMX_FILL_NORMAL, 0.0f, 1.0f, 42);
  return pmx_init_fill_f32(p, 0, n, PMX_FILL_UNIFORM, -1.0f, 1.0f, 43);
}

int pmx_it_grad(int t, uint32_t rank, uint64_t step, const float* p, float* g, size_t n) {
  uint64_t seed = (uint64_t)(t + 1) * 1000003u + (uint64_t)rank * 1000u + step;
  if (pmx_init_fill_f32(g, 0, n, PMX_FILL_NORMAL, 0.0f, 1.0f, seed) != 0) return -1;
  for (size_t i = 0; i < n; i++) g[i] = 0.5f * p[i] + g[i];
  return 0;
}
