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
 * With --progress it also prints "progress DONE TOTAL SECONDS" (at most 5 a second, and after
 * the last step) and "measure" when the warm-up ends (the harness samples the server's CPU
 * time then).
 *
 *   paramex-bench-worker --server ADDR [--rank R --world W] [--model SPEC] [--steps S]
 *       [--warmup S] [--pull-dtype f32|bf16] [--compression auto|on|off] [--push raw|zstd|bf16]
 *   paramex-bench-worker --model SPEC --describe     (the model's tensors as JSON)
 *   paramex-bench-worker --check-models              (published totals; exit 0 when equal)
 */
#include "models.h"

#include <paramex/paramex.h>

#include <inttypes.h>
#include <stdbool.h>
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


static void usage(FILE* f) {
  fprintf(f,
          "usage: paramex-bench-worker --server ADDR [--rank R] [--world W] [--model SPEC]\n"
          "           [--steps S] [--warmup S] [--pull-dtype f32|bf16] [--compression auto|on|off]\n"
          "           [--push raw|zstd|bf16|bf16+zstd] [--grad-buffers K] [--timeout-ms MS]\n"
          "           [--progress] [--overlap]   (--no-compression = --compression off;\n"
          "           --overlap: each step one pmx_push_pull, the pull of step s+1 with the\n"
          "           push of step s; with a bf16 view the pull is started before the push)\n"
          "       paramex-bench-worker --model SPEC --describe\n"
          "       paramex-bench-worker --check-models\n"
          "SPEC: dense:N (N f32 values, K/M/G = 1e3/1e6/1e9), resnet50, bert-base\n");
}

/* The worker's settings, from the command line. */
typedef struct wopts {
  const char* addr;
  const char* spec;
  unsigned rank, world;
  int steps, warmup, ngrad, progress, do_describe;
  int bf16_view, compression;
  int overlap; /* --overlap: the pull of step s+1 starts before the push of step s */
  const char* push_name;
  pmx_push_mode push_mode;
  long long timeout_ms;
} wopts;

/* The value of a flag that takes one; -1 when it is not one of them, 2 on a bad value. */
static int set_valued(wopts* o, const char* a, const char* v) {
  char* end = NULL;
  if (!strcmp(a, "--server")) o->addr = v;
  else if (!strcmp(a, "--model")) o->spec = v;
  else if (!strcmp(a, "--rank")) o->rank = (unsigned)strtoul(v, &end, 10);
  else if (!strcmp(a, "--world")) o->world = (unsigned)strtoul(v, &end, 10);
  else if (!strcmp(a, "--steps")) o->steps = (int)strtol(v, &end, 10);
  else if (!strcmp(a, "--warmup")) o->warmup = (int)strtol(v, &end, 10);
  else if (!strcmp(a, "--grad-buffers")) o->ngrad = (int)strtol(v, &end, 10);
  else if (!strcmp(a, "--timeout-ms")) o->timeout_ms = strtoll(v, &end, 10);
  else if (!strcmp(a, "--pull-dtype")) {
    if (!strcmp(v, "bf16")) o->bf16_view = 1;
    else if (strcmp(v, "f32")) {
      fprintf(stderr, "bench-worker: --pull-dtype %s: want f32 or bf16\n", v);
      return 2;
    }
  } else if (!strcmp(a, "--compression")) {
    if (!strcmp(v, "auto")) o->compression = PMX_COMPRESSION_AUTO;
    else if (!strcmp(v, "on")) o->compression = PMX_COMPRESSION_ON;
    else if (!strcmp(v, "off")) o->compression = PMX_COMPRESSION_OFF;
    else {
      fprintf(stderr, "bench-worker: --compression %s: want auto, on or off\n", v);
      return 2;
    }
  } else if (!strcmp(a, "--push")) {
    o->push_name = v;
    if (!strcmp(v, "raw")) o->push_mode = PMX_PUSH_RAW;
    else if (!strcmp(v, "zstd")) o->push_mode = PMX_PUSH_ZSTD;
    else if (!strcmp(v, "bf16")) o->push_mode = PMX_PUSH_BF16;
    else if (!strcmp(v, "bf16+zstd")) o->push_mode = PMX_PUSH_BF16_ZSTD;
    else {
      fprintf(stderr, "bench-worker: --push %s: want raw, zstd, bf16 or bf16+zstd\n", v);
      return 2;
    }
  } else {
    return -1;
  }
  if (end && *end) {
    fprintf(stderr, "bench-worker: %s %s: not a number\n", a, v);
    return 2;
  }
  return 0;
}

/* -1 to run, else the exit status (help, --check-models, a bad flag). */
static int parse_args(wopts* o, int argc, char** argv) {
  *o = (wopts){.spec = "dense:25M", .world = 1, .steps = 10, .warmup = 2, .ngrad = 3,
               .compression = PMX_COMPRESSION_AUTO, .push_name = "raw", .push_mode = PMX_PUSH_RAW};
  for (int i = 1; i < argc; i++) {
    const char* a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(a, "--check-models")) {
      return check_models();
    } else if (!strcmp(a, "--describe")) {
      o->do_describe = 1;
    } else if (!strcmp(a, "--no-compression")) {
      o->compression = PMX_COMPRESSION_OFF;
    } else if (!strcmp(a, "--progress")) {
      o->progress = 1;
    } else if (!strcmp(a, "--overlap")) {
      o->overlap = 1;
    } else if (!v) {
      fprintf(stderr, "bench-worker: %s needs a value or is unknown\n", a);
      return 2;
    } else {
      i++;
      int rc = set_valued(o, a, v);
      if (rc == -1) {
        fprintf(stderr, "bench-worker: unknown flag %s\n", a);
        return 2;
      }
      if (rc) return rc;
    }
  }
  return -1;
}

/* A running worker: its buffers, its client, its tensors and the timings of each step. */
typedef struct worker {
  const wopts* o;
  bench_model m;
  size_t bytes;
  float* grads[16];
  float* params;
  const void** gptr; /* [ngrad][m.n] */
  void** dst;
  pmx_tensor** tensors;
  uint64_t* versions;
  double *tpush, *tpull, *tstep;
  pmx_client* c;
  pmx_dtype view;
  uint64_t base;
  double t_gen, t_setup;
  double last_progress; /* when the last progress line went out */
  /* server restarts survived (pmx_resume) and the time they cost: from the start of the
   * step that met the restart until the run was back at that step */
  int restarts;
  double lost_s, t_abort;
  int abort_step; /* -1: none pending */
} worker;

#define WCHECK(what, expr)                                                                 \
  do {                                                                                     \
    pmx_status st_ = (expr);                                                               \
    if (st_ != PMX_OK) {                                                                   \
      fprintf(stderr, "bench-worker %u: %s: %s (%s)\n", w->o->rank, what, pmx_strerror(st_), \
              pmx_last_error());                                                           \
      return 1;                                                                            \
    }                                                                                      \
  } while (0)

/* Gradients first: generating them takes seconds for bert-base, and the server should not
 * see this worker before it can keep up with the others. */
static int alloc_buffers(worker* w) {
  const wopts* o = w->o;
  w->bytes = (size_t)w->m.numel * sizeof(float);
  w->t_gen = now_s();
  for (int g = 0; g < o->ngrad; g++) {
    w->grads[g] = big_alloc(w->bytes);
    if (!w->grads[g]) return 1;
    fill_normal(w->grads[g], w->m.numel, 0.01f, 1 + o->rank * 64ull + (uint64_t)g);
  }
  w->params = big_alloc(w->bytes);
  if (!w->params) return 1;
  memset(w->params, 0, w->bytes);
  w->t_gen = now_s() - w->t_gen;
  const size_t n = w->m.n;
  const int total = o->warmup + o->steps;
  w->gptr = calloc((size_t)o->ngrad * n, sizeof *w->gptr);
  w->dst = calloc(n, sizeof *w->dst);
  w->tensors = calloc(n, sizeof *w->tensors);
  w->versions = calloc(n, sizeof *w->versions);
  w->tpush = calloc((size_t)total, sizeof *w->tpush);
  w->tpull = calloc((size_t)total, sizeof *w->tpull);
  w->tstep = calloc((size_t)o->steps, sizeof *w->tstep);
  if (!w->gptr || !w->dst || !w->tensors || !w->versions || !w->tpush || !w->tpull || !w->tstep)
    return 1;
  uint64_t off = 0;
  for (size_t i = 0; i < n; i++) {
    for (int g = 0; g < o->ngrad; g++) w->gptr[(size_t)g * n + i] = w->grads[g] + off;
    w->dst[i] = w->params + off; /* a bf16 view fills the first half of the slot */
    off += w->m.tensors[i].numel;
  }
  return 0;
}

/* Connects, joins, declares every tensor and pulls the version the server holds. */
static int setup(worker* w) {
  const wopts* o = w->o;
  w->t_setup = now_s();
  pmx_options opts = {0};
  opts.compression = o->compression;
  opts.timeout_ms = o->timeout_ms;
  WCHECK("connect", pmx_connect(o->addr, &opts, &w->c));
  WCHECK("join", pmx_join(w->c, o->rank, o->world, NULL));
  for (size_t i = 0; i < w->m.n; i++) {
    char name[BENCH_NAME_MAX + 64];
    const char* model_name = strncmp(w->m.spec, "dense:", 6) ? w->m.spec : "dense";
    snprintf(name, sizeof name, "%s/%s", model_name, w->m.tensors[i].name);
    /* One seed per tensor, the same on every worker (the first declaration wins). */
    pmx_init init = {PMX_INIT_NORMAL, 0.0f, 0.02f, 1000 + i};
    WCHECK("declare", pmx_declare(w->c, name, PMX_F32, w->m.tensors[i].shape,
                                  w->m.tensors[i].ndim, NULL, &init, &w->tensors[i]));
    WCHECK("push mode", pmx_tensor_set_push_compression(w->tensors[i], o->push_mode, 0));
  }
  w->view = o->bf16_view ? PMX_BF16 : (pmx_dtype)0;
  /* Start at the version the server holds (a server given with --servers may be reused). */
  WCHECK("pull", pmx_pull_as(w->c, w->m.n, w->tensors, w->dst, w->view, 0, w->versions));
  w->base = w->versions[0];
  for (size_t i = 1; i < w->m.n; i++) {
    if (w->versions[i] != w->base) {
      fprintf(stderr, "bench-worker %u: tensors at different versions (%" PRIu64 " and %" PRIu64
                      "): use a fresh server\n", o->rank, w->base, w->versions[i]);
      return 1;
    }
  }
  w->t_setup = now_s() - w->t_setup;
  return 0;
}

/* One step s: push then pull, or pipelined: pmx_push_pull_as (one message each way on the
 * Exchange stream for steps up to 1 MiB; else the pull started before the push, parked on
 * the server until the step is complete), half of its time counted for each direction. */
static int step(worker* w, int s) {
  const wopts* o = w->o;
  const void* const* g = w->gptr + (size_t)(s % o->ngrad) * w->m.n;
  const uint64_t v = w->base + (uint64_t)s;
  double t0 = now_s(), t1, t2;
  if (o->overlap) {
    pmx_status st = pmx_push_pull_as(w->c, v, w->m.n, w->tensors, g, w->dst, w->view, NULL);
    if (st == PMX_ERR_ABORTED) return 2;
    WCHECK("push_pull", st);
    t2 = now_s();
    t1 = t0 + (t2 - t0) / 2; /* one exchange: half of it counted for each direction */
  } else {
    pmx_status st = pmx_push(w->c, v, w->m.n, w->tensors, g);
    if (st == PMX_ERR_ABORTED) return 2;
    WCHECK("push", st);
    t1 = now_s();
    st = pmx_pull_as(w->c, w->m.n, w->tensors, w->dst, w->view, v + 1, NULL);
    if (st == PMX_ERR_ABORTED) return 2;
    WCHECK("pull", st);
    t2 = now_s();
  }
  w->tpush[s] = t1 - t0;
  w->tpull[s] = t2 - t1;
  if (s >= o->warmup) w->tstep[s - o->warmup] = t2 - t0;
  /* At most 5 progress lines a second: a line per step would wake the harness every few
   * hundred microseconds, and on two cores its work would show in the step times. */
  if (o->progress && (t2 - w->last_progress >= 0.2 || s + 1 == o->warmup + o->steps)) {
    w->last_progress = t2;
    printf("progress %d %d %.6f\n", s + 1, o->warmup + o->steps, t2 - t0);
    fflush(stdout);
  }
  return 0;
}

/* The one JSON line of results. */
static void report(const worker* w, const pmx_client_stats* st0, const pmx_client_stats* st1,
                   double wall, double cpu) {
  const wopts* o = w->o;
  const int steps = o->steps, warmup = o->warmup, total = warmup + steps;
  uint64_t push_raw = st1->push_raw_bytes - st0->push_raw_bytes;
  uint64_t push_wire = st1->push_wire_bytes - st0->push_wire_bytes;
  uint64_t pull_raw = st1->pull_raw_bytes - st0->pull_raw_bytes;
  uint64_t pull_wire = st1->pull_wire_bytes - st0->pull_wire_bytes;
  double push_sum = 0, pull_sum = 0;
  for (int s = warmup; s < total; s++) push_sum += w->tpush[s], pull_sum += w->tpull[s];
  printf("{\"rank\": %u, \"world\": %u, \"model\": \"%s\", \"tensors\": %zu, \"numel\": %" PRIu64
         ", \"model_bytes\": %zu, \"steps\": %d, \"warmup\": %d, \"pull_dtype\": \"%s\", "
         "\"push_mode\": \"%s\", \"compressed_pulls\": %s",
         o->rank, o->world, w->m.spec, w->m.n, w->m.numel, w->bytes, steps, warmup,
         o->bf16_view ? "bf16" : "f32", o->push_name, st1->compressed_pulls ? "true" : "false");
  print_percentiles("step", w->tstep, steps);
  print_percentiles("push", w->tpush + warmup, steps);
  print_percentiles("pull", w->tpull + warmup, steps);
  printf(", \"push_gbps\": %.6g, \"pull_gbps\": %.6g", push_sum > 0 ? push_raw / push_sum / 1e9 : 0,
         pull_sum > 0 ? pull_raw / pull_sum / 1e9 : 0);
  printf(", \"push_raw_bytes\": %" PRIu64 ", \"push_wire_bytes\": %" PRIu64
         ", \"pull_raw_bytes\": %" PRIu64 ", \"pull_wire_bytes\": %" PRIu64
         ", \"pull_unchanged_chunks\": %" PRIu64 ", \"checksum_failures\": %" PRIu64,
         push_raw, push_wire, pull_raw, pull_wire,
         st1->pull_unchanged_chunks - st0->pull_unchanged_chunks, st1->checksum_failures);
  printf(", \"measured_wall_s\": %.6g, \"cpu_s\": %.6g, \"setup_s\": %.6g, \"grad_gen_s\": %.6g, "
         "\"maxrss_kib\": %ld, \"base_version\": %" PRIu64 ", \"server_restarts\": %d, "
         "\"restart_lost_s\": %.6g",
         wall, cpu, w->t_setup, w->t_gen, maxrss_kib(), w->base, w->restarts, w->lost_s);
  print_samples("step_s", w->tstep, steps);
  print_samples("push_s", w->tpush + warmup, steps);
  print_samples("pull_s", w->tpull + warmup, steps);
  printf("}\n");
  fflush(stdout);
}

static void worker_free(worker* w) {
  pmx_client_destroy(w->c);
  for (int g = 0; g < 16; g++) big_free(w->grads[g], w->bytes);
  big_free(w->params, w->bytes);
  free(w->gptr);
  free(w->dst);
  free(w->tensors);
  free(w->versions);
  free(w->tpush);
  free(w->tpull);
  free(w->tstep);
  bench_model_deinit(&w->m);
}

/* pmx_resume into the worker's buffers; a bf16 view is pulled again afterwards (resume
 * fills f32 buffers, and the view's buffers are half the size). */
static pmx_status resume_into(worker* w, uint64_t* v) {
  pmx_status st = pmx_resume(w->c, w->m.n, w->tensors, w->dst, v);
  if (st == PMX_OK && w->view) st = pmx_pull_as(w->c, w->m.n, w->tensors, w->dst, w->view, 0, NULL);
  return st;
}

/* Every step, measured after the warm-up. */
static int run(worker* w) {
  const wopts* o = w->o;
  pmx_client_stats st0 = {0}, st1;
  double cpu0 = 0, wall0 = 0;
  w->abort_step = -1;
  bool measuring = false;
  for (int s = 0; s < o->warmup + o->steps; s++) {
    if (s == w->abort_step) { /* back where the restart found the run */
      w->lost_s += now_s() - w->t_abort;
      w->abort_step = -1;
    }
    if (s == o->warmup && !measuring) {
      measuring = true;
      pmx_client_get_stats(w->c, &st0);
      cpu0 = cpu_s();
      wall0 = now_s();
      if (o->progress) {
        printf("measure\n");
        fflush(stdout);
      }
    }
    int rc = step(w, s);
    if (rc == 2) {
      /* The server restarted (killed, then back from its checkpoint): resume from its
       * version and count the time until the run is back at this step. */
      uint64_t v = 0;
      if (w->abort_step < 0) w->abort_step = s, w->t_abort = now_s();
      WCHECK("resume", resume_into(w, &v));
      if (v < w->base || v > w->base + (uint64_t)s) {
        fprintf(stderr, "bench-worker %u: the restarted server is at version %" PRIu64
                        ", outside this run (%" PRIu64 "..%" PRIu64 ")\n",
                o->rank, v, w->base, w->base + (uint64_t)s);
        return 1;
      }
      w->restarts++;
      fprintf(stderr, "bench-worker %u: the server restarted during step %d; resuming at step "
                      "%" PRIu64 "\n", o->rank, s, v - w->base);
      s = (int)(v - w->base) - 1;
      continue;
    }
    if (rc) return 1;
  }
  double wall = now_s() - wall0, cpu = cpu_s() - cpu0;
  pmx_client_get_stats(w->c, &st1);
  report(w, &st0, &st1, wall, cpu);
  return 0;
}

int main(int argc, char** argv) {
  wopts o;
  int rc = parse_args(&o, argc, argv);
  if (rc >= 0) return rc;
  worker w = {.o = &o};
  char err[160];
  if (bench_model_init(&w.m, o.spec, err, sizeof err)) {
    fprintf(stderr, "bench-worker: %s\n", err);
    return 2;
  }
  if (o.do_describe) {
    rc = describe(&w.m);
    bench_model_deinit(&w.m);
    return rc;
  }
  if (!o.addr || o.steps < 1 || o.warmup < 0 || o.world == 0 || o.rank >= o.world || o.ngrad < 1 ||
      o.ngrad > 16 || o.timeout_ms < 0) {
    usage(stderr);
    bench_model_deinit(&w.m);
    return 2;
  }
  if (alloc_buffers(&w)) {
    fprintf(stderr, "bench-worker %u: out of memory (%zu bytes per buffer)\n", o.rank, w.bytes);
    return 1;
  }
  rc = setup(&w) || run(&w) ? 1 : 0;
  worker_free(&w);
  return rc;
}
