/* paramex-backend-bench: throughput of an aggregation backend, driven through its interface
 * alone (server/backend/backend.h, created by select.h).
 *
 *   paramex-backend-bench [--device cpu|cuda] [--mb N] [--workers W] [--steps S] [--threads T]
 *
 * Drives the backend the way the server does, without the network: an f32 tensor of N MiB
 * in 1 MiB chunks, W contributions per chunk in rank order, then the step (SGD with
 * momentum and weight decay) with every output the frames need (new bits, bf16 view,
 * both encoder inputs); T threads work on different chunks, like the compute pool.
 * Prints the step time, the contribution bytes absorbed per second, and the memory
 * traffic per second under the model below, next to a reference bandwidth measured in
 * the same run: memcpy on T threads for cpu. (The cuda kernels alone, against the device's
 * bandwidth: paramex-gpu-kernel-bench.)
 *
 * Traffic model per element (f32 tensor): the first contribution 8 bytes (read, write),
 * each further one 12 (read contribution and sum, write sum), the step 32 (read sum,
 * parameter, momentum; write parameter, momentum, 4 + 2 bytes of new bits and bf16 view,
 * 4 + 2 bytes of encoder input). */
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend.h"
#include "backend/select.h"
#include "backend/step_io.h"
#include "codec/dtype.h"
#include "codec/initializer.h"
#include "util/log.h"
#include "util/mem.h"
#include "util/taskpool.h"

typedef struct bench {
  px_backend* be;
  px_be_tensor* t;
  px_be_tensor_desc d;
  float** g;        /* [workers] contributions (one chunk each) */
  bool* first;      /* [nchunks] no momentum step yet */
  uint32_t workers, threads;
} bench;

typedef struct worker_arg {
  bench* b;
  uint32_t id;
} worker_arg;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void* step_chunks(void* p) {
  worker_arg* w = p;
  bench* b = w->b;
  px_backend* be = b->be;
  for (uint32_t k = w->id; k < b->d.nchunks; k += b->threads) {
    const uint32_t n = px_be_chunk_elems(&b->d, k);
    for (uint32_t r = 0; r < b->workers; r++) {
      bool taken;
      if (be->ops->accumulate(be, b->t, k, r, b->g[r], false, &taken) != 0) {
        fprintf(stderr, "backend-bench: out of memory for the sum\n");
        exit(1);
      }
    }
    px_step_io io;
    px_step_io_alloc(&io, PX_DT_F32, n, true, true); /* bf16 view and encoder input too */
    if (!io.bits[0]) {
      fprintf(stderr, "backend-bench: out of memory for the step outputs\n");
      exit(1);
    }
    io.ncontrib = b->workers;
    io.first = b->first[k];
    be->ops->step(be, b->t, k, &io);
    b->first[k] = false;
    px_step_io_free(&io, PX_DT_F32, n);
  }
  return NULL;
}
static void run_threads(bench* b, void* (*fn)(void*)) {
  pthread_t th[256];
  worker_arg args[256];
  for (uint32_t i = 0; i < b->threads; i++) {
    args[i] = (worker_arg){b, i};
    if (pthread_create(&th[i], NULL, fn, &args[i]) != 0) {
      fprintf(stderr, "backend-bench: cannot start threads\n");
      exit(1);
    }
  }
  for (uint32_t i = 0; i < b->threads; i++) pthread_join(th[i], NULL);
}

/* memcpy bandwidth (read + write) on T threads over n bytes each */
typedef struct copy_arg {
  uint8_t *src, *dst;
  size_t n;
} copy_arg;
static void* copy_fn(void* p) {
  copy_arg* a = p;
  memcpy(a->dst, a->src, a->n);
  return NULL;
}
static double memcpy_gbs(size_t bytes, uint32_t threads) {
  size_t per = bytes / threads;
  uint8_t* src = malloc(bytes);
  uint8_t* dst = malloc(bytes);
  if (!src || !dst) {
    free(src);
    free(dst);
    return 0;
  }
  memset(src, 1, bytes);
  memset(dst, 2, bytes);
  pthread_t th[256];
  copy_arg a[256];
  double best = 0;
  for (int rep = 0; rep < 3; rep++) {
    double t0 = now_s();
    for (uint32_t i = 0; i < threads; i++) {
      a[i] = (copy_arg){src + i * per, dst + i * per, per};
      if (pthread_create(&th[i], NULL, copy_fn, &a[i]) != 0) exit(1);
    }
    for (uint32_t i = 0; i < threads; i++) pthread_join(th[i], NULL);
    double gbs = 2.0 * (double)per * threads / (now_s() - t0) / 1e9;
    if (gbs > best) best = gbs;
  }
  free(src);
  free(dst);
  return best;
}

int main(int argc, char** argv) {
  const char* device = "cpu";
  uint64_t mb = 256;
  uint32_t workers = 4, steps = 5, threads = px_ncpus();
  for (int i = 1; i < argc; i++) {
    const char* v = i + 1 < argc ? argv[i + 1] : NULL;
    char* end = NULL;
    unsigned long long x = v ? strtoull(v, &end, 10) : 0;
    bool num = v && end != v && *end == 0;
    if (strcmp(argv[i], "--device") == 0 && v) device = v;
    else if (strcmp(argv[i], "--mb") == 0 && num && x >= 1 && x <= 65536) mb = x;
    else if (strcmp(argv[i], "--workers") == 0 && num && x >= 1 && x <= 64) workers = (uint32_t)x;
    else if (strcmp(argv[i], "--steps") == 0 && num && x >= 1 && x <= 1000) steps = (uint32_t)x;
    else if (strcmp(argv[i], "--threads") == 0 && num && x >= 1 && x <= 256) threads = (uint32_t)x;
    else {
      fprintf(stderr, "paramex-backend-bench: bad flag or value '%s' (usage: [--device cpu|cuda] "
              "[--mb 1..65536] [--workers 1..64] [--steps 1..1000] [--threads 1..256])\n", argv[i]);
      return 2;
    }
    i++;
  }
  px_log_init("backend-bench", PX_LOG_WARN);
  const size_t chunk_bytes = 1u << 20;
  px_backend_opts o = {device, NULL, 0, chunk_bytes, {.lr = 0.01f, .momentum = 0.9f, .weight_decay = 1e-4f, .nesterov = false}, threads};
  bench b = {0};
  char err[512];
  int rc = px_backend_create(&o, &b.be, err, sizeof err);
  if (rc != 0) {
    fprintf(stderr, "paramex-backend-bench: %s\n", err);
    return rc == -2 ? 2 : 1;
  }
  const uint64_t numel = mb << 18; /* MiB of f32 */
  float* params = px_big_alloc(numel * sizeof(float));
  if (!params) return 1;
  px_init_fill_f32(params, 0, numel, PX_FILL_NORMAL, 0.0f, 0.02f, 1);
  b.d = (px_be_tensor_desc){"bench", PX_DT_F32, numel, (uint32_t)(chunk_bytes / 4),
                            (uint32_t)((numel + chunk_bytes / 4 - 1) / (chunk_bytes / 4)), params};
  if (b.be->ops->tensor_create(b.be, &b.d, &b.t, err, sizeof err) != 0) {
    fprintf(stderr, "paramex-backend-bench: %s\n", err);
    return 1;
  }
  for (uint32_t k = 0; k < b.d.nchunks; k++) b.be->ops->chunk_load(b.be, b.t, k, NULL);
  b.workers = workers;
  b.threads = threads;
  b.g = calloc(workers, sizeof(float*));
  b.first = calloc(b.d.nchunks, sizeof(bool));
  if (!b.g || !b.first) return 1;
  for (uint32_t k = 0; k < b.d.nchunks; k++) b.first[k] = true;
  for (uint32_t r = 0; r < workers; r++) {
    b.g[r] = malloc(chunk_bytes);
    if (!b.g[r]) return 1;
    px_init_fill_f32(b.g[r], (uint64_t)r * b.d.chunk_elems, b.d.chunk_elems, PX_FILL_NORMAL,
                     0.0f, 0.01f, 7);
  }
  run_threads(&b, step_chunks); /* warm-up: first-touch, momentum's first step */
  double t0 = now_s();
  for (uint32_t s = 0; s < steps; s++) run_threads(&b, step_chunks);
  double dt = (now_s() - t0) / steps;
  const double n = (double)numel;
  const double traffic = n * (8.0 + 12.0 * (workers - 1) + 32.0);
  printf("backend %s: %s\n", b.be->name, b.be->desc);
  printf("tensor %llu MiB f32 in %u chunks of 1 MiB, %u workers, %u threads, %u steps\n",
         (unsigned long long)mb, b.d.nchunks, workers, threads, steps);
  printf("step (accumulate %u contributions + SGD with momentum + views + encoder input): "
         "%.2f ms\n", workers, dt * 1e3);
  printf("contributions absorbed: %.2f GB/s\n", n * 4.0 * workers / dt / 1e9);
  printf("memory traffic (model in the source): %.2f GB/s\n", traffic / dt / 1e9);
  if (strcmp(b.be->name, "cpu") == 0) {
    double ref = memcpy_gbs((size_t)numel * 4, threads);
    printf("reference: memcpy on %u threads %.2f GB/s (read + write); ratio %.2f\n", threads, ref,
           ref > 0 ? traffic / dt / 1e9 / ref : 0.0);
  }
  for (uint32_t r = 0; r < workers; r++) free(b.g[r]);
  free(b.g);
  free(b.first);
  b.be->ops->tensor_destroy(b.be, b.t);
  px_backend_destroy(b.be);
  px_big_free(params, numel * sizeof(float));
  return 0;
}
