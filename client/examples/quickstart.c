/* paramex-quickstart: the example at the top of paramex.h, as a program. It is built by
 * meson and run by the tests (integration_quickstart), which check its parameters bit for
 * bit against the SGD steps recomputed in the test.
 *
 *   paramex-quickstart HOST:PORT RANK WORLD STEPS [OUT]
 *
 * Worker RANK of WORLD trains w, 1,000 floats starting at zero, on the loss
 * 0.5 * |w - target|^2 whose target is (RANK + 1) * (i % 7) / 8: its gradient is
 * w - target. The server averages the workers' gradients and applies SGD (its --lr), so w
 * moves toward the mean of the targets. After STEPS steps it prints
 * "rank R: version V, loss L" (L: this worker's loss at the final w) and writes w to OUT
 * (1,000 raw f32) when given. Errors: one line on stderr, exit 1. */
#include <paramex/paramex.h>
#include <stdio.h>
#include <stdlib.h>

#define N 1000

/* One line on stderr; the client goes without a Leave (this worker did not finish), and
 * before exit, so that no gRPC thread runs while the process ends. */
static int fail(pmx_client* c, const char* what, pmx_status st) {
  fprintf(stderr, "paramex-quickstart: %s: %s (%s)\n", what, pmx_strerror(st), pmx_last_error());
  pmx_client_abort(c);
  return 1;
}

static float target(uint32_t rank, size_t i) { return (float)(rank + 1) * (float)(i % 7) / 8.0f; }

/* This worker's gradient (and loss) at params. */
static double compute(uint32_t rank, const float* params, float* grad) {
  double loss = 0;
  for (size_t i = 0; i < N; i++) {
    grad[i] = params[i] - target(rank, i);
    loss += 0.5 * (double)grad[i] * grad[i];
  }
  return loss;
}

int main(int argc, char** argv) {
  if (argc != 5 && argc != 6) {
    fprintf(stderr, "usage: paramex-quickstart HOST:PORT RANK WORLD STEPS [OUT]\n");
    return 2;
  }
  const char* addr = argv[1];
  const uint32_t rank = (uint32_t)strtoul(argv[2], NULL, 10);
  const uint32_t world = (uint32_t)strtoul(argv[3], NULL, 10);
  const uint64_t steps = strtoull(argv[4], NULL, 10);
  static float params[N], grad[N];
  const uint64_t shape[1] = {N};
  pmx_client* c = NULL;
  pmx_tensor* w;
  pmx_status st;

  if ((st = pmx_connect(addr, NULL, &c))) return fail(c, "connect", st);
  if ((st = pmx_join(c, rank, world, NULL))) return fail(c, "join", st);
  if ((st = pmx_declare(c, "w", PMX_F32, shape, 1, NULL, NULL, &w))) return fail(c, "declare", st);
  void* dst[1] = {params};
  const void* src[1] = {grad};
  uint64_t s = 0, version = 0;
  if ((st = pmx_resume(c, 1, &w, dst, &s))) return fail(c, "pull", st);  // s: where the job is
  while (s < steps) {
    compute(rank, params, grad);
    st = pmx_push_pull(c, s, 1, &w, src, dst, &version);  // grad for step s; version s + 1
    if (st == PMX_ERR_ABORTED) st = pmx_resume(c, 1, &w, dst, &s);  // server restarted
    else s++;
    if (st) return fail(c, "step", st);
  }
  printf("rank %u: version %llu, loss %.6f\n", rank, (unsigned long long)version,
         compute(rank, params, grad));
  pmx_client_destroy(c);

  if (argc == 6) {
    FILE* f = fopen(argv[5], "wb");
    int bad = !f || fwrite(params, sizeof params, 1, f) != 1;
    if ((f && fclose(f) != 0) || bad) {
      fprintf(stderr, "paramex-quickstart: cannot write %s\n", argv[5]);
      return 1;
    }
  }
  return 0;
}
