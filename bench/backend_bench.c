/* paramex-backend-bench: throughput of an aggregation backend (server/backend.h).
 *
 *   paramex-backend-bench [--device cpu|cuda] [--mb N] [--workers W] [--steps S] [--threads T]
 *
 * Drives the backend the way the server does, without the network: an f32 tensor of N MiB
 * in 1 MiB chunks, W contributions per chunk in rank order, then the step (SGD with
 * momentum and weight decay) with every output the frames need (new bits, bf16 view,
 * both encoder inputs); T threads work on different chunks, like the compute pool.
 * Prints the step time, the contribution bytes absorbed per second, and the memory
 * traffic per second under the model below, next to a reference bandwidth measured in
 * the same run: memcpy on T threads for cpu; for cuda the device's theoretical bandwidth
 * (2 x memory clock x bus width) and a device-to-device cudaMemcpy, with the device-
 * resident kernels (accumulate, fused optimizer) timed on GPU 0.
 *
 * Traffic model per element (f32 tensor): the first contribution 8 bytes (read, write),
 * each further one 12 (read contribution and sum, write sum), the step 32 (read sum,
 * parameter, momentum; write parameter, momentum, 4 + 2 bytes of new bits and bf16 view,
 * 4 + 2 bytes of encoder input). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec/codec.h"
#include "server.h"
#ifdef PX_HAVE_CUDA
#include "cuda/pmx_gpu.h"
#endif

typedef struct bench {
  px_service* svc;
  px_tensor_state* t;
  float** g;        /* [workers] contributions (one chunk each) */
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
  px_backend* be = b->svc->backend;
  px_tensor_state* t = b->t;
  for (uint32_t k = w->id; k < t->nchunks; k += b->threads) {
    px_chunk_state* c = &t->chunks[k];
    pthread_mutex_lock(&c->mu);
    for (uint32_t r = 0; r < b->workers; r++) {
      bool taken;
      if (be->ops->accumulate(be, t, c, r, b->g[r], false, &taken) != 0) {
        fprintf(stderr, "backend-bench: out of memory for the sum\n");
        exit(1);
      }
    }
    px_step_io io;
    px_step_io_init(b->svc, t, c, true, true, &io); /* bf16 view and encoder input too */
    if (!io.bits[0]) {
      fprintf(stderr, "backend-bench: out of memory for the step outputs\n");
      exit(1);
    }
    io.ncontrib = b->workers;
    io.first = c->mom_first;
    be->ops->step(be, t, c, &io);
    c->mom_first = false;
    pthread_mutex_unlock(&c->mu);
    px_step_io_free(t, c, &io);
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
  char w[16];
  snprintf(w, sizeof w, "%u", workers);
  char* sargv[] = {"paramex-server", "--device", (char*)device, "--workers", w, "--lr", "0.01",
                   "--momentum", "0.9", "--weight-decay", "0.0001", "--chunk-bytes", "1M",
                   "--threads", "1", "--log-level", "warn"};
  px_config cfg;
  if (px_config_parse(&cfg, (int)(sizeof sargv / sizeof sargv[0]), sargv) != 0) return 2;
  px_log_init("backend-bench", PX_LOG_WARN);
  static px_service svc;
  char err[512];
  int rc = px_service_init(&svc, &cfg, err, sizeof err);
  if (rc != 0) {
    fprintf(stderr, "paramex-backend-bench: %s\n", err);
    return rc == -2 ? 2 : 1;
  }
  const uint64_t numel = mb << 18; /* MiB of f32 */
  const uint64_t shape[1] = {numel};
  px_declare_args a = {.name = "bench", .dtype = PX_DT_F32, .shape = shape, .ndim = 1,
                        .init_kind = PX_FILL_NORMAL, .init_b = 0.02f, .init_seed = 1};
  px_tensor_state* t = NULL;
  bool created;
  if (px_store_declare(&svc, &a, &t, &created, err, sizeof err) != PX_ST_OK) {
    fprintf(stderr, "paramex-backend-bench: %s\n", err);
    return 1;
  }
  bench b = {&svc, t, calloc(workers, sizeof(float*)), workers, threads};
  if (!b.g) return 1;
  for (uint32_t r = 0; r < workers; r++) {
    b.g[r] = malloc(cfg.chunk_bytes);
    if (!b.g[r]) return 1;
    px_init_fill_f32(b.g[r], (uint64_t)r * t->chunk_elems, t->chunk_elems, PX_FILL_NORMAL,
                      0.0f, 0.01f, 7);
  }
  run_threads(&b, step_chunks); /* warm-up: first-touch, momentum's first step */
  double t0 = now_s();
  for (uint32_t s = 0; s < steps; s++) run_threads(&b, step_chunks);
  double dt = (now_s() - t0) / steps;
  const double n = (double)numel;
  const double traffic = n * (8.0 + 12.0 * (workers - 1) + 32.0);
  printf("backend %s: %s\n", svc.backend->name, svc.backend->desc);
  printf("tensor %llu MiB f32 in %u chunks of 1 MiB, %u workers, %u threads, %u steps\n",
         (unsigned long long)mb, t->nchunks, workers, threads, steps);
  printf("step (accumulate %u contributions + SGD with momentum + views + encoder input): "
         "%.2f ms\n", workers, dt * 1e3);
  printf("contributions absorbed: %.2f GB/s\n", n * 4.0 * workers / dt / 1e9);
  printf("memory traffic (model in the source): %.2f GB/s\n", traffic / dt / 1e9);
  if (strcmp(svc.backend->name, "cpu") == 0) {
    double ref = memcpy_gbs((size_t)numel * 4, threads);
    printf("reference: memcpy on %u threads %.2f GB/s (read + write); ratio %.2f\n", threads, ref,
           ref > 0 ? traffic / dt / 1e9 / ref : 0.0);
  }
#ifdef PX_HAVE_CUDA
  else {
    px_gpu* g = NULL;
    px_gpu_bench r;
    int dev0 = cfg.ngpus ? cfg.gpu_ids[0] : 0;
    if (px_gpu_create(&dev0, 1, 1, &g, err, sizeof err) != 0 ||
        px_gpu_kernel_bench(g, (size_t)numel, 20, &r, err, sizeof err) != 0) {
      fprintf(stderr, "paramex-backend-bench: kernel bench: %s\n", err);
      px_gpu_destroy(g);
      return 1;
    }
    px_gpu_destroy(g);
    printf("device-resident kernels on %s, %llu MiB:\n", r.name, (unsigned long long)mb);
    printf("  accumulate %.1f GB/s, fused optimizer %.1f GB/s, cudaMemcpy D2D %.1f GB/s\n",
           r.acc_gbs, r.step_gbs, r.d2d_gbs);
    if (r.peak_gbs > 0)
      printf("  theoretical %.1f GB/s: accumulate %.2fx, optimizer %.2fx (goal >= 0.70x)\n",
             r.peak_gbs, r.acc_gbs / r.peak_gbs, r.step_gbs / r.peak_gbs);
    else
      printf("  the device reports no memory clock: accumulate %.2fx, optimizer %.2fx of D2D\n",
             r.acc_gbs / r.d2d_gbs, r.step_gbs / r.d2d_gbs);
  }
#endif
  for (uint32_t r = 0; r < workers; r++) free(b.g[r]);
  free(b.g);
  px_service_deinit(&svc);
  return 0;
}
