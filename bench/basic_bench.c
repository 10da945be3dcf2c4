/* paramex-basic-bench: one worker process of the basic transfer benchmark. Every rank
 * declares one f32 tensor, then per step pushes a gradient and pulls the next version,
 * timing each phase. Rank 0 prints one JSON line with medians. Run by bench/basic.sh. */
#include <paramex/paramex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_d(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

static double pct(double* v, int n, double p) {
  qsort(v, (size_t)n, sizeof *v, cmp_d);
  int i = (int)(p * (n - 1) + 0.5);
  return v[i];
}

#define CHECK(what, expr)                                                               \
  do {                                                                                  \
    pmx_status st_ = (expr);                                                            \
    if (st_ != PMX_OK) {                                                                \
      fprintf(stderr, "basic-bench: %s: %s (%s)\n", what, pmx_strerror(st_), pmx_last_error()); \
      return 1;                                                                         \
    }                                                                                   \
  } while (0)

int main(int argc, char** argv) {
  const char* addr = NULL;
  unsigned rank = 0, world = 1;
  unsigned long long numel = 25000000ull;
  int steps = 10, warmup = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--server")) addr = argv[i + 1];
    else if (!strcmp(argv[i], "--rank")) rank = (unsigned)strtoul(argv[i + 1], NULL, 10);
    else if (!strcmp(argv[i], "--world")) world = (unsigned)strtoul(argv[i + 1], NULL, 10);
    else if (!strcmp(argv[i], "--numel")) numel = strtoull(argv[i + 1], NULL, 10);
    else if (!strcmp(argv[i], "--steps")) steps = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--warmup")) warmup = atoi(argv[i + 1]);
    else {
      fprintf(stderr, "basic-bench: unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  if (!addr || numel == 0 || steps < 1 || world == 0 || rank >= world) {
    fprintf(stderr, "usage: paramex-basic-bench --server ADDR [--rank R --world N] "
                    "[--numel N] [--steps S] [--warmup W]\n");
    return 2;
  }
  pmx_client* c;
  pmx_tensor* t;
  CHECK("connect", pmx_connect(addr, NULL, &c));
  CHECK("join", pmx_join(c, rank, world, NULL));
  uint64_t shape[1] = {numel};
  pmx_init init = {PMX_INIT_CONSTANT, 1.0f, 0.0f, 0};
  char name[64];
  snprintf(name, sizeof name, "bench.x%llu", numel);
  CHECK("declare", pmx_declare(c, name, PMX_F32, shape, 1, NULL, &init, &t));
  float* params = malloc(numel * sizeof *params);
  float* grad = malloc(numel * sizeof *grad);
  for (unsigned long long i = 0; i < numel; i++) grad[i] = 1e-3f * (float)(i % 97);
  memset(params, 0, numel * sizeof *params);
  CHECK("pull v0", pmx_pull(c, 1, &t, (void* const*)&params, 0, NULL));
  int total = warmup + steps;
  double* tpush = calloc((size_t)total, sizeof *tpush);
  double* tpull = calloc((size_t)total, sizeof *tpull);
  for (int s = 0; s < total; s++) {
    double t0 = now_s();
    CHECK("push", pmx_push(c, (uint64_t)s, 1, &t, (const void* const*)&grad));
    double t1 = now_s();
    /* A fresh buffer content each step: pass the same buffer, all chunks change. */
    CHECK("pull", pmx_pull(c, 1, &t, (void* const*)&params, (uint64_t)s + 1, NULL));
    double t2 = now_s();
    tpush[s] = t1 - t0;
    tpull[s] = t2 - t1;
  }
  if (rank == 0) {
    double* step = calloc((size_t)steps, sizeof *step);
    for (int s = 0; s < steps; s++) step[s] = tpush[warmup + s] + tpull[warmup + s];
    double bytes = (double)numel * 4.0;
    double p_push = pct(tpush + warmup, steps, 0.5), p_pull = pct(tpull + warmup, steps, 0.5);
    double p50 = pct(step, steps, 0.5), p90 = pct(step, steps, 0.9);
    printf("{\"workers\": %u, \"bytes\": %.0f, \"steps\": %d, \"step_p50_s\": %.6f, "
           "\"step_p90_s\": %.6f, \"push_p50_s\": %.6f, \"pull_p50_s\": %.6f, "
           "\"push_gbps_per_worker\": %.3f, \"pull_gbps_per_worker\": %.3f, "
           "\"push_gbps_aggregate\": %.3f, \"pull_gbps_aggregate\": %.3f}\n",
           world, bytes, steps, p50, p90, p_push, p_pull, bytes / p_push / 1e9,
           bytes / p_pull / 1e9, world * bytes / p_push / 1e9, world * bytes / p_pull / 1e9);
    free(step);
  }
  free(tpush);
  free(tpull);
  free(params);
  free(grad);
  pmx_client_destroy(c);
  return 0;
}
