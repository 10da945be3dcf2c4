/* Server-side SGD. Element order and float operations are fixed (and the build disables
 * FMA contraction) so that results are bit-reproducible. */
#include "server.h"

void pmx_sgd_apply(const pmx_sgd* o, float* restrict p, float* restrict mom, bool first,
                   const float* restrict sum, size_t n, uint32_t nworkers) {
  const float nw = (float)nworkers;
  const float lr = o->lr, mu = o->momentum, wd = o->weight_decay;
  if (mu == 0.0f && wd == 0.0f) {
    for (size_t i = 0; i < n; i++) p[i] = p[i] - lr * (sum[i] / nw);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    float g = sum[i] / nw;
    if (wd != 0.0f) g = g + wd * p[i];
    if (mu != 0.0f) {
      float m = first ? g : mu * mom[i] + g;
      mom[i] = m;
      g = m;
    }
    p[i] = p[i] - lr * g;
  }
}
