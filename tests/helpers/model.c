/* The training job of the end-to-end tests; see model.h. */
#include "model.h"

#include <stdlib.h>
#include <string.h>

#include "codec/initializer.h"

const char* px_it_tensor_name(int t) { return t == 0 ? "a" : "b"; }

int px_it_init(int t, float* p, size_t n) {
  if (t == 0) return px_init_fill_f32(p, 0, n, PX_FILL_NORMAL, 0.0f, 1.0f, 42);
  return px_init_fill_f32(p, 0, n, PX_FILL_UNIFORM, -1.0f, 1.0f, 43);
}

int px_it_grad(int t, uint32_t rank, uint64_t step, const float* p, float* g, size_t n) {
  uint64_t seed = (uint64_t)(t + 1) * 1000003u + (uint64_t)rank * 1000u + step;
  if (px_init_fill_f32(g, 0, n, PX_FILL_NORMAL, 0.0f, 1.0f, seed) != 0) return -1;
  for (size_t i = 0; i < n; i++) g[i] = 0.5f * p[i] + g[i];
  return 0;
}

int px_it_reference(int t, size_t n, uint32_t world, uint64_t steps, const char* lr_s,
                     const char* momentum_s, const char* weight_decay_s, float* p, float* mom) {
  const float lr = (float)strtod(lr_s, NULL);
  const float mu = (float)strtod(momentum_s, NULL);
  const float wd = (float)strtod(weight_decay_s, NULL);
  float* g = malloc(n * sizeof *g);
  float* sum = malloc(n * sizeof *sum);
  float* buf = calloc(n, sizeof *buf);
  int rc = g && sum && buf && px_it_init(t, p, n) == 0 ? 0 : -1;
  for (uint64_t s = 0; rc == 0 && s < steps; s++) {
    for (uint32_t r = 0; rc == 0 && r < world; r++) {
      rc = px_it_grad(t, r, s, p, r == 0 ? sum : g, n);
      if (r > 0)
        for (size_t i = 0; i < n; i++) sum[i] += g[i];
    }
    for (size_t i = 0; rc == 0 && i < n; i++) {
      float d = sum[i] / (float)world;
      if (wd != 0) d = d + wd * p[i];
      if (mu != 0) {
        buf[i] = s == 0 ? d : mu * buf[i] + d;
        d = buf[i];
      }
      p[i] = p[i] - lr * d;
    }
  }
  if (rc == 0 && mom) memcpy(mom, buf, n * sizeof *buf);
  free(g);
  free(sum);
  free(buf);
  return rc;
}
