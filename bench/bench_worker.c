/* paramex-bench-worker: one worker of the paramex-bench harness (bench/paramex-bench).
 *
 * Declares the tensors of a model (models.h) with the server's NORMAL(0, 0.02) initializer,
 * pulls version 0, then per step pushes a synthetic gradient (N(0, 0.01^2), from a few
 * buffers generated before the first step and used in turn) and pulls the next version:
 * plain BSP SGD with the optimizer on the server. Warm-up steps are run first and not
 * measured. Prints one JSON object on stdout: step, push and pull time percentiles (exact,
 * from every sample), raw and wire bytes both ways from pmx_client_get_stats, GB/s of raw
 * data, and this process's CPU seconds over the measured steps.
 *
 * With --progress it also prints "progress DONE TOTAL" after every step and "measure" when
 * the warm-up ends (the harness samples the server's CPU time then).
 *
 *   paramex-bench-worker --server ADDR [--rank R --world W] [--model SPEC] [--steps S]
 *       [--warmup S] [--pull-dtype f32|bf16] [--compression auto|on|off] [--push raw|zstd|bf16]
 *   paramex-bench-worker --model SPEC --describe     (the model's tensors as JSON)
 *   paramex-bench-worker --check-models              (published totals; exit 0 when equal)
 */
#include "models.h"

#include <paramex/paramex.h>

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

static long maxrss_kib(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

/* Large buffers come from mmap with transparent huge pages requested, so that generating
 * them costs ~12 ms per 100 MB of page faults instead of ~270 ms on these VMs, and are
 * touched before the first step (the benchmark measures paramex, not the fault path). */
static void* big_alloc(size_t bytes) {
  void* p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return NULL;
#ifdef MADV_HUGEPAGE
  madvise(p, bytes, MADV_HUGEPAGE);
#endif
  return p;
}

static void big_free(void* p, size_t bytes) {
  if (p) munmap(p, bytes);
}

/* N(0, sigma^2) by Box-Muller from xorshift64*, one stream per (rank, buffer). */
static void fill_normal(float* g, uint64_t n, float sigma, uint64_t seed) {
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;
  if (!x) x = 1;
  for (uint64_t i = 0; i < n; i += 2) {
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    uint64_t r1 = x * 0x2545f4914f6cdd1dull;
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    uint64_t r2 = x * 0x2545f4914f6cdd1dull;
    /* float math: twice as fast as double, and 24 bits are plenty for gradients */
    float u1 = ((float)(r1 >> 40) + 1.0f) * (1.0f / 16777216.0f); /* (0, 1] */
    float u2 = (float)(r2 >> 40) * (1.0f / 16777216.0f);          /* [0, 1) */
    float r = sqrtf(-2.0f * logf(u1)) * sigma, s, c;
    sincosf(6.2831853f * u2, &s, &c);
    g[i] = r * c;
    if (i + 1 < n) g[i + 1] = r * s;
  }
}

static int cmp_d(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of n sorted samples. */
static double pct(const double* sorted, int n, double p) {
  int i = (int)ceil(p / 100.0 * n) - 1;
  if (i < 0) i = 0;
  if (i >= n) i = n - 1;
  return sorted[i];
}

static void print_samples(const char* key, const double* v, int n) {
  printf(", \"%s\": [", key);
  for (int i = 0; i < n; i++) printf("%s%.6g", i ? ", " : "", v[i]);
  printf("]");
}

/* Prints "KEY_p50_s", "_p90_s", "_p99_s", "_min_s", "_max_s" of v (sorted in a copy). */
static void print_percentiles(const char* key, const double* v, int n) {
  double* s = malloc((size_t)n * sizeof *s);
  if (!s) return;
  memcpy(s, v, (size_t)n * sizeof *s);
  qsort(s, (size_t)n, sizeof *s, cmp_d);
  printf(", \"%s_p50_s\": %.6g, \"%s_p90_s\": %.6g, \"%s_p99_s\": %.6g, \"%s_min_s\": %.6g, "
         "\"%s_max_s\": %.6g",
         key, pct(s, n, 50), key, pct(s, n, 90), key, pct(s, n, 99), key, s[0], key, s[n - 1]);
  free(s);
}

static int describe(const bench_model* m) {
  printf("{\"model\": \"%s\", \"tensors\": %zu, \"numel\": %" PRIu64 ", \"bytes\": %" PRIu64
         ", \"shapes\": [",
         m->spec, m->n, m->numel, m->numel * 4);
  for (size_t i = 0; i < m->n; i++) {
    const bench_tensor* t = &m->tensors[i];
    printf("%s{\"name\": \"%s\", \"shape\": [", i ? ", " : "", t->name);
    for (size_t d = 0; d < t->ndim; d++) printf("%s%" PRIu64, d ? ", " : "", t->shape[d]);
    printf("], \"numel\": %" PRIu64 "}", t->numel);
  }
  printf("]}\n");
  return 0;
}

static int check_models(void) {
  static const struct {
    const char* spec;
    size_t tensors;
    uint64_t numel;
  } want[] = {
      {"resnet50", BENCH_RESNET50_TENSORS, BENCH_RESNET50_NUMEL},
      {"bert-base", BENCH_BERT_BASE_TENSORS, BENCH_BERT_BASE_NUMEL},
      {"dense:25M", 1, 25000000ull},
      {"dense:1K", 1, 1000ull},
  };
  int bad = 0;
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    bench_model m;
    char err[160];
    if (bench_model_init(&m, want[i].spec, err, sizeof err)) {
      printf("FAIL %s: %s\n", want[i].spec, err);
      bad = 1;
      continue;
    }
    int ok = m.n == want[i].tensors && m.numel == want[i].numel;
    printf("%s %s: %zu tensors, %" PRIu64 " values (want %zu, %" PRIu64 ")\n",
           ok ? "ok" : "FAIL", want[i].spec, m.n, m.numel, want[i].tensors, want[i].numel);
    bad |= !ok;
    bench_model_deinit(&m);
  }
  const char* bad_specs[] = {"dense:0", "dense:", "dense:5Q", "resnet18", "dense:-3"};
  for (size_t i = 0; i < sizeof bad_specs / sizeof bad_specs[0]; i++) {
    bench_model m;
    char err[160];
    if (!bench_model_init(&m, bad_specs[i], err, sizeof err)) {
      printf("FAIL %s accepted\n", bad_specs[i]);
      bench_model_deinit(&m);
      bad = 1;
    }
  }
  return bad;
}

#define CHECK(what, expr)                                                                  \
  do {                                                                                     \
    pmx_status st_ = (expr);                                                               \
    if (st_ != PMX_OK) {                                                                   \
      fprintf(stderr, "bench-worker %u: %s: %s (%s)\n", rank, what, pmx_strerror(st_),     \
              pmx_last_error());                                                           \
      return 1;                                                                            \
    }                                                                                      \
  } while (0)

static void usage(FILE* f) {
  fprintf(f,
          "usage: paramex-bench-worker --server ADDR [--rank R] [--world W] [--model SPEC]\n"
          "           [--steps S] [--warmup S] [--pull-dtype f32|bf16] [--compression auto|on|off]\n"
          "           [--push raw|zstd|bf16|bf16+zstd] [--grad-buffers K] [--timeout-ms MS]\n"
          "           [--progress] [--overlap]   (--no-compression = --compression off;\n"
          "           --overlap starts the pull of step s+1 before the push of step s)\n"
          "       paramex-bench-worker --model SPEC --describe\n"
          "       paramex-bench-worker --check-models\n"
          "SPEC: dense:N (N f32 values, K/M/G = 1e3/1e6/1e9), resnet50, bert-base\n");
}

int main(int argc, char** argv) {
  const char* addr = NULL;
  const char* spec = "dense:25M";
  unsigned rank = 0, world = 1;
  int steps = 10, warmup = 2, ngrad = 3, progress = 0, do_describe = 0;
  int bf16_view = 0, compression = PMX_COMPRESSION_AUTO;
  int overlap = 0; /* --overlap: the pull of step s+1 starts before the push of step s */
  const char* push_name = "raw";
  pmx_push_mode push_mode = PMX_PUSH_RAW;
  long long timeout_ms = 0;
  for (int i = 1; i < argc; i++) {
    const char* a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(a, "--check-models")) {
      return check_models();
    } else if (!strcmp(a, "--describe")) {
      do_describe = 1;
    } else if (!strcmp(a, "--no-compression")) {
      compression = PMX_COMPRESSION_OFF;
    } else if (!strcmp(a, "--progress")) {
      progress = 1;
    } else if (!strcmp(a, "--overlap")) {
      overlap = 1;
    } else if (!v) {
      fprintf(stderr, "bench-worker: %s needs a value or is unknown\n", a);
      return 2;
    } else {
      i++;
      char* end = NULL;
      if (!strcmp(a, "--server")) addr = v;
      else if (!strcmp(a, "--model")) spec = v;
      else if (!strcmp(a, "--rank")) rank = (unsigned)strtoul(v, &end, 10);
      else if (!strcmp(a, "--world")) world = (unsigned)strtoul(v, &end, 10);
      else if (!strcmp(a, "--steps")) steps = (int)strtol(v, &end, 10);
      else if (!strcmp(a, "--warmup")) warmup = (int)strtol(v, &end, 10);
      else if (!strcmp(a, "--grad-buffers")) ngrad = (int)strtol(v, &end, 10);
      else if (!strcmp(a, "--timeout-ms")) timeout_ms = strtoll(v, &end, 10);
      else if (!strcmp(a, "--pull-dtype")) {
        if (!strcmp(v, "bf16")) bf16_view = 1;
        else if (strcmp(v, "f32")) {
          fprintf(stderr, "bench-worker: --pull-dtype %s: want f32 or bf16\n", v);
          return 2;
        }
      } else if (!strcmp(a, "--compression")) {
        if (!strcmp(v, "auto")) compression = PMX_COMPRESSION_AUTO;
        else if (!strcmp(v, "on")) compression = PMX_COMPRESSION_ON;
        else if (!strcmp(v, "off")) compression = PMX_COMPRESSION_OFF;
        else {
          fprintf(stderr, "bench-worker: --compression %s: want auto, on or off\n", v);
          return 2;
        }
      } else if (!strcmp(a, "--push")) {
        push_name = v;
        if (!strcmp(v, "raw")) push_mode = PMX_PUSH_RAW;
        else if (!strcmp(v, "zstd")) push_mode = PMX_PUSH_ZSTD;
        else if (!strcmp(v, "bf16")) push_mode = PMX_PUSH_BF16;
        else if (!strcmp(v, "bf16+zstd")) push_mode = PMX_PUSH_BF16_ZSTD;
        else {
          fprintf(stderr, "bench-worker: --push %s: want raw, zstd, bf16 or bf16+zstd\n", v);
          return 2;
        }
      } else {
        fprintf(stderr, "bench-worker: unknown flag %s\n", a);
        return 2;
      }
      if (end && *end) {
        fprintf(stderr, "bench-worker: %s %s: not a number\n", a, v);
        return 2;
      }
    }
  }

  bench_model m;
  char err[160];
  if (bench_model_init(&m, spec, err, sizeof err)) {
    fprintf(stderr, "bench-worker: %s\n", err);
    return 2;
  }
  if (do_describe) {
    int rc = describe(&m);
    bench_model_deinit(&m);
    return rc;
  }
  if (!addr || steps < 1 || warmup < 0 || world == 0 || rank >= world || ngrad < 1 ||
      ngrad > 16 || timeout_ms < 0) {
    usage(stderr);
    bench_model_deinit(&m);
    return 2;
  }

  /* Gradients first: generating them takes seconds for bert-base, and the server should
   * not see this worker before it can keep up with the others. */
  const size_t bytes = (size_t)m.numel * sizeof(float);
  float* grads[16] = {0};
  double t_gen = now_s();
  for (int g = 0; g < ngrad; g++) {
    grads[g] = big_alloc(bytes);
    if (!grads[g]) {
      fprintf(stderr, "bench-worker %u: out of memory (%zu bytes)\n", rank, bytes);
      return 1;
    }
    fill_normal(grads[g], m.numel, 0.01f, 1 + rank * 64ull + (uint64_t)g);
  }
  float* params = big_alloc(bytes);
  if (!params) {
    fprintf(stderr, "bench-worker %u: out of memory (%zu bytes)\n", rank, bytes);
    return 1;
  }
  memset(params, 0, bytes);
  t_gen = now_s() - t_gen;

  const void** gptr = calloc((size_t)ngrad * m.n, sizeof *gptr);
  void** dst = calloc(m.n, sizeof *dst);
  pmx_tensor** tensors = calloc(m.n, sizeof *tensors);
  uint64_t* versions = calloc(m.n, sizeof *versions);
  int total = warmup + steps;
  double* tpush = calloc((size_t)total, sizeof *tpush);
  double* tpull = calloc((size_t)total, sizeof *tpull);
  double* tstep = calloc((size_t)steps, sizeof *tstep);
  if (!gptr || !dst || !tensors || !versions || !tpush || !tpull || !tstep) {
    fprintf(stderr, "bench-worker %u: out of memory\n", rank);
    return 1;
  }
  uint64_t off = 0;
  for (size_t i = 0; i < m.n; i++) {
    for (int g = 0; g < ngrad; g++) gptr[(size_t)g * m.n + i] = grads[g] + off;
    dst[i] = params + off; /* a bf16 view fills the first half of the slot */
    off += m.tensors[i].numel;
  }

  double t_setup = now_s();
  pmx_client* c;
  pmx_options opts = {0};
  opts.compression = compression;
  opts.timeout_ms = timeout_ms;
  CHECK("connect", pmx_connect(addr, &opts, &c));
  CHECK("join", pmx_join(c, rank, world, NULL));
  for (size_t i = 0; i < m.n; i++) {
    char name[BENCH_NAME_MAX + 64];
    const char* model_name = strncmp(m.spec, "dense:", 6) ? m.spec : "dense";
    snprintf(name, sizeof name, "%s/%s", model_name, m.tensors[i].name);
    /* One seed per tensor, the same on every worker (the first declaration wins). */
    pmx_init init = {PMX_INIT_NORMAL, 0.0f, 0.02f, 1000 + i};
    CHECK("declare", pmx_declare(c, name, PMX_F32, m.tensors[i].shape, m.tensors[i].ndim,
                                 NULL, &init, &tensors[i]));
    CHECK("push mode", pmx_tensor_set_push_compression(tensors[i], push_mode, 0));
  }
  pmx_dtype view = bf16_view ? PMX_BF16 : (pmx_dtype)0;
  /* Start at the version the server holds (a server given with --servers may be reused). */
  CHECK("pull", pmx_pull_as(c, m.n, tensors, dst, view, 0, versions));
  uint64_t base = versions[0];
  for (size_t i = 1; i < m.n; i++) {
    if (versions[i] != base) {
      fprintf(stderr, "bench-worker %u: tensors at different versions (%" PRIu64 " and %" PRIu64
                      "): use a fresh server\n", rank, base, versions[i]);
      return 1;
    }
  }
  t_setup = now_s() - t_setup;

  pmx_client_stats st0 = {0}, st1;
  double cpu0 = 0, wall0 = 0;
  for (int s = 0; s < total; s++) {
    if (s == warmup) {
      pmx_client_get_stats(c, &st0);
      cpu0 = cpu_s();
      wall0 = now_s();
      if (progress) {
        printf("measure\n");
        fflush(stdout);
      }
    }
    const void* const* g = gptr + (size_t)(s % ngrad) * m.n;
    double t0 = now_s(), t1, t2;
    if (overlap) {
      /* pipelined: the pull parks on the server until the step is complete */
      pmx_op* op = NULL;
      CHECK("pull", pmx_pull_as_async(c, m.n, tensors, dst, view, base + (uint64_t)s + 1, NULL, &op));
      CHECK("push", pmx_push(c, base + (uint64_t)s, m.n, tensors, g));
      t1 = now_s();
      CHECK("pull", pmx_op_wait(op));
      t2 = now_s();
    } else {
      CHECK("push", pmx_push(c, base + (uint64_t)s, m.n, tensors, g));
      t1 = now_s();
      CHECK("pull", pmx_pull_as(c, m.n, tensors, dst, view, base + (uint64_t)s + 1, NULL));
      t2 = now_s();
    }
    tpush[s] = t1 - t0;
    tpull[s] = t2 - t1;
    if (s >= warmup) tstep[s - warmup] = t2 - t0;
    if (progress) {
      printf("progress %d %d %.6f\n", s + 1, total, t2 - t0);
      fflush(stdout);
    }
  }
  double wall = now_s() - wall0, cpu = cpu_s() - cpu0;
  pmx_client_get_stats(c, &st1);

  uint64_t push_raw = st1.push_raw_bytes - st0.push_raw_bytes;
  uint64_t push_wire = st1.push_wire_bytes - st0.push_wire_bytes;
  uint64_t pull_raw = st1.pull_raw_bytes - st0.pull_raw_bytes;
  uint64_t pull_wire = st1.pull_wire_bytes - st0.pull_wire_bytes;
  double push_sum = 0, pull_sum = 0;
  for (int s = warmup; s < total; s++) push_sum += tpush[s], pull_sum += tpull[s];

  printf("{\"rank\": %u, \"world\": %u, \"model\": \"%s\", \"tensors\": %zu, \"numel\": %" PRIu64
         ", \"model_bytes\": %zu, \"steps\": %d, \"warmup\": %d, \"pull_dtype\": \"%s\", "
         "\"push_mode\": \"%s\", \"compressed_pulls\": %s",
         rank, world, m.spec, m.n, m.numel, bytes, steps, warmup, bf16_view ? "bf16" : "f32",
         push_name, st1.compressed_pulls ? "true" : "false");
  print_percentiles("step", tstep, steps);
  print_percentiles("push", tpush + warmup, steps);
  print_percentiles("pull", tpull + warmup, steps);
  printf(", \"push_gbps\": %.6g, \"pull_gbps\": %.6g", push_sum > 0 ? push_raw / push_sum / 1e9 : 0,
         pull_sum > 0 ? pull_raw / pull_sum / 1e9 : 0);
  printf(", \"push_raw_bytes\": %" PRIu64 ", \"push_wire_bytes\": %" PRIu64
         ", \"pull_raw_bytes\": %" PRIu64 ", \"pull_wire_bytes\": %" PRIu64
         ", \"pull_unchanged_chunks\": %" PRIu64 ", \"checksum_failures\": %" PRIu64,
         push_raw, push_wire, pull_raw, pull_wire,
         st1.pull_unchanged_chunks - st0.pull_unchanged_chunks, st1.checksum_failures);
  printf(", \"measured_wall_s\": %.6g, \"cpu_s\": %.6g, \"setup_s\": %.6g, \"grad_gen_s\": %.6g, "
         "\"maxrss_kib\": %ld, \"base_version\": %" PRIu64,
         wall, cpu, t_setup, t_gen, maxrss_kib(), base);
  print_samples("step_s", tstep, steps);
  print_samples("push_s", tpush + warmup, steps);
  print_samples("pull_s", tpull + warmup, steps);
  printf("}\n");
  fflush(stdout);

  pmx_client_destroy(c);
  for (int g = 0; g < ngrad; g++) big_free(grads[g], bytes);
  big_free(params, bytes);
  free(gptr);
  free(dst);
  free(tensors);
  free(versions);
  free(tpush);
  free(tpull);
  free(tstep);
  bench_model_deinit(&m);
  return 0;
}
