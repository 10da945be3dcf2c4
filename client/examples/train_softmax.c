/* paramex-train-demo: one worker of a data-parallel softmax-regression job.
 *
 * Every worker generates the same synthetic dataset from a fixed seed (10 Gaussian blobs
 * in 32 dimensions: 8,000 training and 2,000 test examples), keeps the training examples
 * i with i % world == rank, and trains one tensor "softmax.weight" of shape [10, 33]
 * (32 weights and a bias per class) through a paramex-server: each step it computes the
 * full-batch gradient of the mean cross-entropy over its shard, pushes it, and pulls the
 * parameters the server produced from all workers' gradients (server-side SGD).
 *
 * Uses only the public API of <paramex/paramex.h> (plus xxhash for the final checksum),
 * so it doubles as an example of the library. scripts/demo.sh runs four of these.
 *
 * A server that restarts (killed, then started again from its checkpoint) is survived:
 * the step that meets it ends PMX_ERR_ABORTED and pmx_resume continues from the server's
 * version (the line "rank R: the server restarted during step S; resuming at step V").
 *
 * Output: rank 0 prints one progress line per step; every rank ends with
 *   final test accuracy 0.913
 *   final params xxh64=<16 hex digits>     (XXH64, seed 0, of the raw float bytes)
 * Exit status: 0 on success, 1 on a paramex error, 2 on a bad flag.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <paramex/paramex.h>
#include <xxhash.h>

#define PROG "paramex-train-demo"

enum {
  NUM_CLASSES = 10,
  NUM_FEATURES = 32,
  NUM_COLS = NUM_FEATURES + 1, /* weights + bias */
  NUM_PARAMS = NUM_CLASSES * NUM_COLS,
  NUM_TRAIN = 8000,
  NUM_TEST = 2000,
};

/* Seed of the dataset: identical in every worker, so every worker sees the same data. */
#define DATA_SEED UINT64_C(0x5eed0fda7a5e7001)
/* Standard deviation of the class means per dimension; the noise has unit variance. Chosen
 * so that the classes overlap: test accuracy ends near 90% after 60 steps, well above chance (10%). */
#define MEAN_SCALE 0.55

/* ---- deterministic random numbers (splitmix64 + Box-Muller) ---- */

typedef struct rng {
  uint64_t state;
  double spare;
  int has_spare;
} rng;

static uint64_t rng_next(rng* r) {
  uint64_t z = (r->state += UINT64_C(0x9e3779b97f4a7c15));
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  return z ^ (z >> 31);
}

/* Uniform in (0, 1]. */
static double rng_uniform(rng* r) { return (double)((rng_next(r) >> 11) + 1) * 0x1p-53; }

static double rng_gaussian(rng* r) {
  if (r->has_spare) {
    r->has_spare = 0;
    return r->spare;
  }
  const double two_pi = 6.283185307179586476925286766559;
  double radius = sqrt(-2.0 * log(rng_uniform(r)));
  double angle = two_pi * rng_uniform(r);
  r->spare = radius * sin(angle);
  r->has_spare = 1;
  return radius * cos(angle);
}

/* Uniform in [0, n) for small n. */
static uint32_t rng_below(rng* r, uint32_t n) {
  return (uint32_t)(((rng_next(r) >> 32) * (uint64_t)n) >> 32);
}

/* ---- the dataset ---- */

typedef struct dataset {
  size_t n;
  float* x;   /* n * NUM_FEATURES */
  uint8_t* y; /* n labels in [0, NUM_CLASSES) */
} dataset;

/* The client, destroyed before any exit (aborted on an error: no Leave, the worker did not
 * finish): its threads (gRPC's, mid TLS handshake) must not run while exit() tears the
 * process down (a bad CA once crashed the demo at exit). */
static pmx_client* g_client;

static void die(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs(PROG ": ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  pmx_client_abort(g_client);
  exit(1);
}

static void* xcalloc(size_t n, size_t size) {
  void* p = calloc(n, size);
  if (p == NULL) die("out of memory");
  return p;
}

/* Generates all NUM_TRAIN + NUM_TEST examples in a fixed order (so every worker gets the
 * same values) and keeps the training examples of this rank's shard and every test
 * example. */
static void make_data(uint32_t rank, uint32_t world, dataset* train, dataset* test) {
  rng r = {.state = DATA_SEED};
  double means[NUM_CLASSES][NUM_FEATURES];
  for (int k = 0; k < NUM_CLASSES; k++)
    for (int j = 0; j < NUM_FEATURES; j++) means[k][j] = MEAN_SCALE * rng_gaussian(&r);

  size_t shard = (NUM_TRAIN - rank + world - 1) / world; /* #{i < NUM_TRAIN : i % world == rank} */
  train->n = 0;
  train->x = xcalloc(shard * NUM_FEATURES, sizeof(float));
  train->y = xcalloc(shard, 1);
  test->n = 0;
  test->x = xcalloc((size_t)NUM_TEST * NUM_FEATURES, sizeof(float));
  test->y = xcalloc(NUM_TEST, 1);

  float row[NUM_FEATURES];
  for (size_t i = 0; i < NUM_TRAIN + NUM_TEST; i++) {
    uint8_t label = (uint8_t)rng_below(&r, NUM_CLASSES);
    for (int j = 0; j < NUM_FEATURES; j++) row[j] = (float)(means[label][j] + rng_gaussian(&r));
    dataset* d = NULL;
    if (i >= NUM_TRAIN)
      d = test;
    else if (i % world == rank)
      d = train;
    if (d == NULL) continue;
    memcpy(d->x + d->n * NUM_FEATURES, row, sizeof row);
    d->y[d->n++] = label;
  }
}

/* ---- the model ---- */

/* Logits of example x under parameters w (row k: 32 weights then the bias). */
static void logits(const float* w, const float* x, double z[NUM_CLASSES]) {
  for (int k = 0; k < NUM_CLASSES; k++) {
    const float* wk = w + k * NUM_COLS;
    double acc = wk[NUM_FEATURES];
    for (int j = 0; j < NUM_FEATURES; j++) acc += (double)wk[j] * x[j];
    z[k] = acc;
  }
}

static int argmax(const double z[NUM_CLASSES]) {
  int best = 0;
  for (int k = 1; k < NUM_CLASSES; k++)
    if (z[k] > z[best]) best = k;
  return best;
}

/* Mean cross-entropy over d and its gradient with respect to w (written to grad as
 * float); also the accuracy of w on d. Accumulates in double. */
static void loss_and_grad(const float* w, const dataset* d, float* grad, double* loss,
                          double* accuracy) {
  double g[NUM_PARAMS] = {0};
  double total = 0;
  size_t correct = 0;
  for (size_t i = 0; i < d->n; i++) {
    const float* x = d->x + i * NUM_FEATURES;
    int y = d->y[i];
    double z[NUM_CLASSES], p[NUM_CLASSES];
    logits(w, x, z);
    int best = argmax(z);
    correct += best == y;
    /* Numerically stable softmax: shift by the largest logit. */
    double sum = 0;
    for (int k = 0; k < NUM_CLASSES; k++) sum += p[k] = exp(z[k] - z[best]);
    total += log(sum) - (z[y] - z[best]);
    for (int k = 0; k < NUM_CLASSES; k++) {
      double delta = p[k] / sum - (k == y);
      double* gk = g + k * NUM_COLS;
      for (int j = 0; j < NUM_FEATURES; j++) gk[j] += delta * x[j];
      gk[NUM_FEATURES] += delta;
    }
  }
  double inv_n = d->n > 0 ? 1.0 / (double)d->n : 0.0;
  for (int i = 0; i < NUM_PARAMS; i++) grad[i] = (float)(g[i] * inv_n);
  *loss = total * inv_n;
  *accuracy = (double)correct * inv_n;
}

static double accuracy_of(const float* w, const dataset* d) {
  size_t correct = 0;
  double z[NUM_CLASSES];
  for (size_t i = 0; i < d->n; i++) {
    logits(w, d->x + i * NUM_FEATURES, z);
    correct += argmax(z) == d->y[i];
  }
  return d->n > 0 ? (double)correct / (double)d->n : 0.0;
}

/* ---- command line ---- */

typedef struct config {
  const char* server;
  uint64_t rank, world, steps;
} config;

static void usage(FILE* f) {
  fprintf(f,
          "usage: " PROG " --server HOST:PORT [--rank R] [--world N] [--steps S]\n"
          "Trains softmax regression on synthetic data as worker R of N through a\n"
          "paramex-server (whose --workers must be N).\n"
          "  --server HOST:PORT  the paramex-server, or a shard list HOST:PORT,... (default:\n"
          "                      PMX_SERVERS, or TF_CONFIG's cluster.ps; required)\n"
          "  --rank R            this worker's rank, 0 <= R < N (default: PMX_RANK or the\n"
          "                      launcher's variables, see pmx_env_rank; else 0)\n"
          "  --world N           number of workers, 1..%d (default: PMX_WORLD_SIZE or the\n"
          "                      launcher's; else 1)\n"
          "  --steps S           training steps (default 60)\n",
          NUM_TRAIN);
}

static void bad_flag(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs(PROG ": ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(2);
}

/* A decimal integer in [min, max], nothing else (no sign, no spaces, no suffix). */
static uint64_t parse_uint(const char* flag, const char* s, uint64_t min, uint64_t max) {
  char* end = NULL;
  unsigned long long v = 0;
  int ok = s[0] >= '0' && s[0] <= '9';
  if (ok) {
    errno = 0;
    v = strtoull(s, &end, 10);
    ok = *end == '\0' && errno == 0 && v >= min && v <= max;
  }
  if (!ok)
    bad_flag("%s: expected an integer in [%" PRIu64 ", %" PRIu64 "], got '%s'", flag, min,
             max, s);
  return (uint64_t)v;
}

/* Whether the flag part (the first len bytes) of an argument is `name`. */
static int flag_is(const char* arg, size_t len, const char* name) {
  return strlen(name) == len && memcmp(arg, name, len) == 0;
}

static void parse_flags(int argc, char** argv, config* cfg) {
  const char* rank_s = NULL;
  const char* world_s = NULL;
  const char* steps_s = NULL;
  *cfg = (config){.server = NULL, .rank = 0, .world = 1, .steps = 60};
  for (int i = 1; i < argc; i++) {
    const char* arg = argv[i];
    if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
      usage(stdout);
      exit(0);
    }
    const char** slot = NULL;
    size_t len = strcspn(arg, "=");
    if (flag_is(arg, len, "--server"))
      slot = &cfg->server;
    else if (flag_is(arg, len, "--rank"))
      slot = &rank_s;
    else if (flag_is(arg, len, "--world"))
      slot = &world_s;
    else if (flag_is(arg, len, "--steps"))
      slot = &steps_s;
    else if (arg[0] == '-')
      bad_flag("unknown flag '%.*s' (see --help)", (int)len, arg);
    else
      bad_flag("unexpected argument '%s' (see --help)", arg);
    if (*slot != NULL) bad_flag("%.*s given more than once", (int)len, arg);
    if (arg[len] == '=') {
      *slot = arg + len + 1;
    } else {
      if (i + 1 >= argc) bad_flag("%s needs a value", arg);
      *slot = argv[++i];
    }
  }
  /* unset flags from the environment (a flag wins): PMX_SERVERS or TF_CONFIG for the
   * servers (pmx_connect reads them when given NULL), the rank and world size from
   * PMX_RANK / PMX_WORLD_SIZE or the launcher's own variables (pmx_env_rank) */
  if (cfg->server == NULL) cfg->server = getenv("PMX_SERVERS");
  if (cfg->server == NULL && !getenv("TF_CONFIG"))
    bad_flag("--server HOST:PORT is required (see --help)");
  if (cfg->server != NULL && cfg->server[0] == '\0') bad_flag("--server: empty address");
  uint32_t env_rank, env_world;
  if ((rank_s == NULL || world_s == NULL) && pmx_env_rank(&env_rank, &env_world) != PMX_OK)
    bad_flag("%s", pmx_last_error());
  if (world_s != NULL) cfg->world = parse_uint("--world", world_s, 1, NUM_TRAIN);
  else if (env_world != PMX_FROM_ENV) cfg->world = env_world;
  if (cfg->world < 1 || cfg->world > NUM_TRAIN)
    bad_flag("world size %" PRIu64 " (from the environment) is not in [1, %d]", cfg->world,
             NUM_TRAIN);
  if (rank_s != NULL) cfg->rank = parse_uint("--rank", rank_s, 0, cfg->world - 1);
  else if (env_rank != PMX_FROM_ENV) cfg->rank = env_rank;
  if (cfg->rank >= cfg->world)
    bad_flag("rank %" PRIu64 " (from the environment) is not below the world size %" PRIu64,
             cfg->rank, cfg->world);
  if (steps_s != NULL) cfg->steps = parse_uint("--steps", steps_s, 0, 100000000);
}

/* ---- paramex calls ---- */

/* Every paramex failure ends the worker with one line: what, the status, the detail. */
static void check(pmx_status st, const char* fmt, ...) {
  if (st == PMX_OK) return;
  va_list ap;
  va_start(ap, fmt);
  fputs(PROG ": ", stderr);
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, ": %s (%s)\n", pmx_strerror(st), pmx_last_error());
  va_end(ap);
  pmx_client_abort(g_client);
  exit(1);
}

static void format_bytes(char* buf, size_t size, uint64_t bytes) {
  if (bytes < 1024)
    snprintf(buf, size, "%" PRIu64 " B", bytes);
  else if (bytes < 1024 * 1024)
    snprintf(buf, size, "%.1f KiB", (double)bytes / 1024);
  else if (bytes < UINT64_C(1024) * 1024 * 1024)
    snprintf(buf, size, "%.1f MiB", (double)bytes / (1024 * 1024));
  else
    snprintf(buf, size, "%.1f GiB", (double)bytes / (1024.0 * 1024 * 1024));
}

int main(int argc, char** argv) {
  config cfg;
  parse_flags(argc, argv, &cfg);
  uint32_t rank = (uint32_t)cfg.rank, world = (uint32_t)cfg.world;
  /* Progress lines appear as they happen even when stdout is a file or a pipe. */
  setvbuf(stdout, NULL, _IOLBF, 0);

  dataset train, test;
  make_data(rank, world, &train, &test);

  pmx_client* client;
  const char* servers = cfg.server ? cfg.server : "TF_CONFIG's cluster.ps";
  check(pmx_connect(cfg.server, NULL, &client), "connect to %s", servers);
  g_client = client;
  check(pmx_join(client, rank, world, NULL), "join %s as rank %" PRIu32 " of %" PRIu32,
        servers, rank, world);

  static const uint64_t shape[2] = {NUM_CLASSES, NUM_COLS};
  const pmx_init init = {.kind = PMX_INIT_NORMAL, .a = 0.0f, .b = 0.01f, .seed = 42};
  pmx_tensor* weight;
  check(pmx_declare(client, "softmax.weight", PMX_F32, shape, 2, NULL, &init, &weight),
        "declare softmax.weight");
  if (pmx_tensor_numel(weight) != NUM_PARAMS)
    die("declare softmax.weight: the server's tensor has %" PRIu64 " elements, expected %d",
        pmx_tensor_numel(weight), NUM_PARAMS);

  if (rank == 0)
    printf("softmax regression: %d classes, %d features, %d train / %d test examples, "
           "%" PRIu32 " worker%s, %" PRIu64 " steps, server %s (libparamex %s)\n",
           NUM_CLASSES, NUM_FEATURES, NUM_TRAIN, NUM_TEST, world, world == 1 ? "" : "s",
           cfg.steps, servers, pmx_version());

  static float params[NUM_PARAMS], grad[NUM_PARAMS];
  pmx_tensor* const tensors[1] = {weight};
  void* const dst[1] = {params};
  const void* const grads[1] = {grad};
  uint64_t version = 0, s = 0, resumed = 0;

  /* Where the job is: version 0 (the initial values) at the start; a restarted worker
   * continues at the server's version. */
  check(pmx_resume(client, 1, tensors, dst, &s), "pull the parameters");

  pmx_client_stats before, after;
  pmx_client_get_stats(client, &before);
  while (s < cfg.steps) {
    double loss, acc;
    loss_and_grad(params, &train, grad, &loss, &acc);

    /* One pipelined exchange per step: the pull of version s+1 starts first and waits on
     * the server, then the gradients of step s go out; each chunk of the new parameters
     * comes back as soon as every worker's step-s gradients were applied to it. */
    pmx_status st = pmx_push_pull(client, s, 1, tensors, grads, dst, &version);
    if (st == PMX_ERR_ABORTED) {
      /* The server restarted from its last checkpoint (or from nothing): go on from its
       * version. The data depend only on the step, so the run ends as without the crash. */
      uint64_t at = s;
      check(pmx_resume(client, 1, tensors, dst, &s), "resume after step %" PRIu64, at);
      resumed++;
      printf("rank %" PRIu32 ": the server restarted during step %" PRIu64
             "; resuming at step %" PRIu64 "\n", rank, at, s);
      continue;
    }
    check(st, "step %" PRIu64, s);
    if (version != s + 1)
      die("pull version %" PRIu64 ": got version %" PRIu64, s + 1, version);

    pmx_client_get_stats(client, &after);
    if (rank == 0) {
      char pushed[32], pulled[32];
      format_bytes(pushed, sizeof pushed, after.push_wire_bytes - before.push_wire_bytes);
      format_bytes(pulled, sizeof pulled, after.pull_wire_bytes - before.pull_wire_bytes);
      printf("step %" PRIu64 " loss %.4f acc(train shard) %.3f pushed %s pulled %s\n", s,
             loss, acc, pushed, pulled);
    }
    before = after;
    s++;
  }

  /* The final version; the last step's pull already holds it, so nothing is re-sent. */
  check(pmx_pull(client, 1, tensors, dst, cfg.steps, &version),
        "pull final version %" PRIu64, cfg.steps);
  if (version != cfg.steps)
    die("pull final version %" PRIu64 ": got version %" PRIu64, cfg.steps, version);
  pmx_client_get_stats(client, &after);
  if (after.checksum_failures != 0)
    die("%" PRIu64 " pulled chunks failed their checksum", after.checksum_failures);

  if (resumed)
    printf("rank %" PRIu32 ": resumed %" PRIu64 " time%s after server restarts\n", rank,
           resumed, resumed == 1 ? "" : "s");
  printf("final test accuracy %.3f\n", accuracy_of(params, &test));
  printf("final params xxh64=%016llx\n",
         (unsigned long long)XXH64(params, sizeof params, 0));

  pmx_client_destroy(client);
  g_client = NULL;
  free(train.x);
  free(train.y);
  free(test.x);
  free(test.y);
  return 0;
}
