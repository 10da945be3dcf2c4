/* paramex-baseline-mem: memory bandwidth on a given size, the ceiling under any transfer.
 *
 *   memcpy_gbps       memcpy between two warm buffers (bytes copied per second)
 *   sum_gbps          f32 `acc[i] += g[i]` over warm buffers (bytes of g absorbed per
 *                     second): what the server's aggregation costs at best on one thread
 *   first_touch_gbps  memset of a freshly malloc'ed buffer: the page-fault path that code
 *                     allocating a buffer per message pays (on these VMs ~0.4-0.7 GB/s)
 *
 * Each is the median of 5 samples of at least ~64 MB of work each. One JSON line.
 *   paramex-baseline-mem --bytes N
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_d(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

static double median(double* v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_d);
  return v[n / 2];
}

/* Kept out of line so that the compiler cannot drop or fuse repeated passes. */
__attribute__((noinline)) static void sum_f32(float* restrict acc, const float* restrict g,
                                              size_t n) {
  for (size_t i = 0; i < n; i++) acc[i] += g[i];
}

enum { SAMPLES = 5 };

int main(int argc, char** argv) {
  unsigned long long bytes = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--bytes")) bytes = strtoull(argv[i + 1], NULL, 10);
  }
  bytes &= ~3ull;
  if (bytes < 4) {
    fprintf(stderr, "usage: paramex-baseline-mem --bytes N   (N >= 4)\n");
    return 2;
  }
  size_t n = bytes / 4;
  float* a = malloc(bytes);
  float* b = malloc(bytes);
  if (!a || !b) {
    fprintf(stderr, "baseline-mem: out of memory\n");
    return 1;
  }
  for (size_t i = 0; i < n; i++) a[i] = (float)(i % 1024) * 1e-6f, b[i] = 0.0f;
  /* Repetitions per sample so that small sizes still time ~64 MB of work. */
  unsigned long long reps = (64ull << 20) / bytes;
  if (reps < 1) reps = 1;

  double copy[SAMPLES], sum[SAMPLES], touch[SAMPLES];
  volatile float sink = 0;
  for (int s = 0; s < SAMPLES; s++) {
    double t0 = now_s();
    for (unsigned long long r = 0; r < reps; r++) {
      memcpy(b, a, bytes);
      __asm__ volatile("" ::"r"(b) : "memory");
    }
    copy[s] = (double)bytes * (double)reps / (now_s() - t0) / 1e9;
    t0 = now_s();
    for (unsigned long long r = 0; r < reps; r++) sum_f32(b, a, n);
    sum[s] = (double)bytes * (double)reps / (now_s() - t0) / 1e9;
    sink += b[n / 2];
  }
  for (int s = 0; s < SAMPLES; s++) {
    double t0 = now_s();
    char* f = malloc(bytes);
    if (!f) return 1;
    memset(f, s + 1, bytes);
    __asm__ volatile("" ::"r"(f) : "memory");
    touch[s] = (double)bytes / (now_s() - t0) / 1e9;
    sink += (float)f[bytes / 2];
    free(f);
  }
  (void)sink;
  printf("{\"bytes\": %llu, \"memcpy_gbps\": %.4g, \"sum_gbps\": %.4g, "
         "\"first_touch_gbps\": %.4g, \"samples\": %d, \"reps\": %llu}\n",
         bytes, median(copy, SAMPLES), median(sum, SAMPLES), median(touch, SAMPLES), SAMPLES, reps);
  free(a);
  free(b);
  return 0;
}
