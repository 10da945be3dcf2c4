/* paramex-basic-bench: one worker process of the basic transfer benchmark. Every rank
 * declares one f32 tensor, then per step pushes a gradient and pulls the next version,
 * timing each phase. Rank 0 prints one JSON line with medians. Run by bench/basic.sh. */
#include <paramex/paramex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
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

/* N(0, 0.01^2) gradients by Box-Muller from a xorshift generator, seeded per rank. */
static void fill_normal(float** g, int ng, unsigned long long n, unsigned rank) {
  uint64_t x = 0x9e3779b97f4a7c15ull ^ (rank + 1ull) * 0xbf58476d1ce4e5b9ull;
  for (int k = 0; k < ng; k++) {
    for (unsigned long long i = 0; i < n; i += 2) {
      x ^= x << 13; x ^= x >> 7; x ^= x << 17;
      double u1 = ((x >> 11) + 1.0) / 9007199254740993.0;
      x ^= x << 13; x ^= x >> 7; x ^= x << 17;
      double u2 = (x >> 11) / 9007199254740992.0;
      double r = sqrt(-2.0 * log(u1)) * 0.01;
      g[k][i] = (float)(r * cos(6.283185307179586 * u2));
      if (i + 1 < n) g[k][i + 1] = (float)(r * sin(6.283185307179586 * u2));
    }
  }
}

#define CHECK(what, expr)                                                               \
  do {                                                                                  \
    pmx_status st_ = (expr);                                                            \
    if (st_ != PMX_OK) {                                                                \
      fprintf(stderr, "basic-bench: %s: %s (%s)\n", what, pmx_strerror(st_), pmx_last_error()); \
      return 1;                                                                         \
    }                                                                                   \
  } while (0)

/* Rank 0's JSON line: medians of the steps after the warm-up, bytes moved, wire ratios. */
static void report(unsigned world, unsigned long long numel, int steps, int warmup, int bf16_view,
                   double* tpush, double* tpull, const pmx_client_stats* st0,
                   const pmx_client_stats* st1) {
  double pull_raw = (double)(st1->pull_raw_bytes - st0->pull_raw_bytes);
  double pull_wire = (double)(st1->pull_wire_bytes - st0->pull_wire_bytes);
  double push_raw = (double)(st1->push_raw_bytes - st0->push_raw_bytes);
  double push_wire = (double)(st1->push_wire_bytes - st0->push_wire_bytes);
  double f32_bytes = (double)steps * (double)numel * 4.0;
  double* step = calloc((size_t)steps, sizeof *step);
  for (int s = 0; s < steps; s++) step[s] = tpush[warmup + s] + tpull[warmup + s];
  double bytes = (double)numel * 4.0;
  double p_push = pct(tpush + warmup, steps, 0.5), p_pull = pct(tpull + warmup, steps, 0.5);
  double p50 = pct(step, steps, 0.5), p90 = pct(step, steps, 0.9);
  printf("{\"workers\": %u, \"bytes\": %.0f, \"steps\": %d, \"step_p50_s\": %.6f, "
         "\"step_p90_s\": %.6f, \"push_p50_s\": %.6f, \"pull_p50_s\": %.6f, "
         "\"push_gbps_per_worker\": %.3f, \"pull_gbps_per_worker\": %.3f, "
         "\"push_gbps_aggregate\": %.3f, \"pull_gbps_aggregate\": %.3f, "
         "\"pull_dtype\": \"%s\", \"pull_wire_over_raw\": %.4f, "
         "\"pull_wire_over_f32\": %.4f, \"push_wire_over_raw\": %.4f, "
         "\"checksum_failures\": %llu}\n",
         world, bytes, steps, p50, p90, p_push, p_pull, bytes / p_push / 1e9,
         bytes / p_pull / 1e9, world * bytes / p_push / 1e9, world * bytes / p_pull / 1e9,
         bf16_view ? "bf16" : "f32", pull_raw > 0 ? pull_wire / pull_raw : 0,
         pull_wire / f32_bytes, push_raw > 0 ? push_wire / push_raw : 0,
         (unsigned long long)st1->checksum_failures);
  free(step);
}

int main(int argc, char** argv) {
  const char* addr = NULL;
  unsigned rank = 0, world = 1;
  unsigned long long numel = 25000000ull;
  int steps = 10, warmup = 2;
  int sgd = 0;          /* --workload sgd: weights N(0,0.02^2), gradients N(0,0.01^2) */
  int bf16_view = 0;    /* --pull-dtype bf16 */
  int no_comp = 0;      /* --client-compression off: accept raw pulls only */
  int push_mode = 0;    /* --push raw|zstd|bf16|bf16+zstd */
  int overlap = 0;      /* --overlap on: pmx_push_pull (with a bf16 view: the pull of step s+1
                         * started before the push of s) */
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--server")) addr = argv[i + 1];
    else if (!strcmp(argv[i], "--rank")) rank = (unsigned)strtoul(argv[i + 1], NULL, 10);
    else if (!strcmp(argv[i], "--world")) world = (unsigned)strtoul(argv[i + 1], NULL, 10);
    else if (!strcmp(argv[i], "--numel")) numel = strtoull(argv[i + 1], NULL, 10);
    else if (!strcmp(argv[i], "--steps")) steps = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--warmup")) warmup = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--workload")) sgd = !strcmp(argv[i + 1], "sgd");
    else if (!strcmp(argv[i], "--pull-dtype")) bf16_view = !strcmp(argv[i + 1], "bf16");
    else if (!strcmp(argv[i], "--client-compression")) no_comp = !strcmp(argv[i + 1], "off");
    else if (!strcmp(argv[i], "--overlap")) overlap = !strcmp(argv[i + 1], "on");
    else if (!strcmp(argv[i], "--push"))
      push_mode = !strcmp(argv[i + 1], "zstd") ? PMX_PUSH_ZSTD
                  : !strcmp(argv[i + 1], "bf16") ? PMX_PUSH_BF16
                  : !strcmp(argv[i + 1], "bf16+zstd") ? PMX_PUSH_BF16_ZSTD : PMX_PUSH_RAW;
    else {
      fprintf(stderr, "basic-bench: unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  if (!addr || numel == 0 || steps < 1 || world == 0 || rank >= world) {
    fprintf(stderr, "usage: paramex-basic-bench --server ADDR [--rank R --world N] "
                    "[--numel N] [--steps S] [--warmup W] [--overlap on]\n");
    return 2;
  }
  pmx_client* c;
  pmx_tensor* t;
  pmx_options opts = {0};
  opts.no_compression = no_comp;
  CHECK("connect", pmx_connect(addr, &opts, &c));
  CHECK("join", pmx_join(c, rank, world, NULL));
  uint64_t shape[1] = {numel};
  pmx_init init = {PMX_INIT_CONSTANT, 1.0f, 0.0f, 0};
  if (sgd) init = (pmx_init){PMX_INIT_NORMAL, 0.0f, 0.02f, 1};
  char name[64];
  snprintf(name, sizeof name, "bench.x%llu", numel);
  CHECK("declare", pmx_declare(c, name, PMX_F32, shape, 1, NULL, &init, &t));
  CHECK("push mode", pmx_tensor_set_push_compression(t, (pmx_push_mode)push_mode, 0));
  float* params = malloc(numel * sizeof *params);
  /* Gradients: three buffers used in turn so that consecutive steps differ. */
  enum { NGRAD = 3 };
  float* grads[NGRAD];
  for (int g = 0; g < NGRAD; g++) {
    grads[g] = malloc(numel * sizeof *grads[g]);
    if (!sgd) {
      for (unsigned long long i = 0; i < numel; i++) grads[g][i] = 1e-3f * (float)((i + g) % 97);
    }
  }
  if (sgd) fill_normal(grads, NGRAD, numel, rank);
  memset(params, 0, numel * sizeof *params);
  void* pdst = params;
  uint64_t base = 0; /* start at the tensor's current version (a server may be reused) */
  CHECK("pull", pmx_pull_as(c, 1, &t, &pdst, bf16_view ? PMX_BF16 : 0, 0, &base));
  pmx_client_stats st0, st1;
  int total = warmup + steps;
  double* tpush = calloc((size_t)total, sizeof *tpush);
  double* tpull = calloc((size_t)total, sizeof *tpull);
  for (int s = 0; s < total; s++) {
    if (s == warmup) pmx_client_get_stats(c, &st0);
    const void* gsrc = grads[s % NGRAD];
    double t0 = now_s(), t1, t2;
    if (overlap && !bf16_view) {
      /* pmx_push_pull: the push of step s and the pull of version s + 1 together (one
       * message each way on the Exchange stream for small steps) */
      CHECK("push_pull", pmx_push_pull(c, base + (uint64_t)s, 1, &t, &gsrc, &pdst, NULL));
      t2 = now_s();
      t1 = t0 + (t2 - t0) / 2; /* one exchange: half of it counted for each direction */
    } else if (overlap) {
      /* pipelined: the pull parks on the server until the push completes the step, so the
       * round trip costs about one call instead of two */
      pmx_op* op = NULL;
      CHECK("pull", pmx_pull_as_async(c, 1, &t, &pdst, PMX_BF16, base + (uint64_t)s + 1, NULL, &op));
      CHECK("push", pmx_push(c, base + (uint64_t)s, 1, &t, &gsrc));
      t1 = now_s();
      CHECK("pull", pmx_op_wait(op));
      t2 = now_s();
    } else {
      CHECK("push", pmx_push(c, base + (uint64_t)s, 1, &t, &gsrc));
      t1 = now_s();
      CHECK("pull", pmx_pull_as(c, 1, &t, &pdst, bf16_view ? PMX_BF16 : 0, base + (uint64_t)s + 1, NULL));
      t2 = now_s();
    }
    tpush[s] = t1 - t0;
    tpull[s] = t2 - t1;
  }
  pmx_client_get_stats(c, &st1);
  if (rank == 0) report(world, numel, steps, warmup, bf16_view, tpush, tpull, &st0, &st1);
  free(tpush);
  free(tpull);
  free(params);
  for (int g = 0; g < NGRAD; g++) free(grads[g]);
  pmx_client_destroy(c);
  return 0;
}
