/* paramex-gpu-kernel-bench: throughput of the cuda backend's kernels with their data
 * resident on one GPU, against the device's theoretical bandwidth (2 x memory clock x bus
 * width) and a device-to-device cudaMemcpy measured in the same run (goal: >= 0.7x of the
 * theoretical bandwidth on an H100).
 *
 *   paramex-gpu-kernel-bench [--gpu ID] [--mb N] [--iters K]
 *
 * GB/s count bytes read + written: the accumulate kernel moves 12 bytes per element (read
 * the sum and the contribution, write the sum), the fused optimizer 28 (read sum,
 * parameter, momentum; write parameter, momentum, 4 + 2 + 2 bytes of view and encoder
 * input). A program of its own: the production object gpu.cu has no benchmark code. */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/kernels.cuh"

#define CHECK(what, call)                                                          \
  do {                                                                             \
    cudaError_t e_ = (call);                                                       \
    if (e_ != cudaSuccess) {                                                       \
      fprintf(stderr, "paramex-gpu-kernel-bench: %s: %s (%s)\n", what, cudaGetErrorString(e_), \
              cudaGetErrorName(e_));                                               \
      exit(1);                                                                     \
    }                                                                              \
  } while (0)

/* Milliseconds of iters launches of fn on s, timed with events. */
template <typename F>
static float time_ms(cudaStream_t s, int iters, F fn) {
  cudaEvent_t a, b;
  CHECK("cudaEventCreate", cudaEventCreate(&a));
  CHECK("cudaEventCreate", cudaEventCreate(&b));
  CHECK("cudaEventRecord", cudaEventRecord(a, s));
  for (int i = 0; i < iters; i++) {
    fn();
    CHECK("kernel launch", cudaGetLastError());
  }
  CHECK("cudaEventRecord", cudaEventRecord(b, s));
  CHECK("cudaEventSynchronize", cudaEventSynchronize(b));
  float ms = 0;
  CHECK("cudaEventElapsedTime", cudaEventElapsedTime(&ms, a, b));
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms;
}

static long arg_long(int argc, char** argv, int* i, long lo, long hi) {
  if (*i + 1 >= argc) {
    fprintf(stderr, "paramex-gpu-kernel-bench: %s needs a value\n", argv[*i]);
    exit(2);
  }
  char* end;
  long v = strtol(argv[++*i], &end, 10);
  if (*end || v < lo || v > hi) {
    fprintf(stderr, "paramex-gpu-kernel-bench: %s: '%s' is not in [%ld, %ld]\n", argv[*i - 1],
            argv[*i], lo, hi);
    exit(2);
  }
  return v;
}

int main(int argc, char** argv) {
  int gpu = 0;
  long mb = 256, iters = 20;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--gpu") == 0) gpu = (int)arg_long(argc, argv, &i, 0, 1023);
    else if (strcmp(argv[i], "--mb") == 0) mb = arg_long(argc, argv, &i, 1, 65536);
    else if (strcmp(argv[i], "--iters") == 0) iters = arg_long(argc, argv, &i, 1, 100000);
    else {
      fprintf(stderr, "usage: paramex-gpu-kernel-bench [--gpu ID] [--mb N] [--iters K]\n");
      return strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0 ? 0 : 2;
    }
  }
  const size_t elems = (size_t)mb << 18, b4 = elems * 4;
  CHECK("cudaSetDevice", cudaSetDevice(gpu));
  cudaDeviceProp prop;
  CHECK("cudaGetDeviceProperties", cudaGetDeviceProperties(&prop, gpu));
  cudaStream_t s;
  CHECK("cudaStreamCreate", cudaStreamCreate(&s));
  float *acc, *x, *p, *mom;
  uint8_t *e0, *e1;
  uint16_t* b1;
  CHECK("cudaMalloc", cudaMalloc((void**)&acc, b4));
  CHECK("cudaMalloc", cudaMalloc((void**)&x, b4));
  CHECK("cudaMalloc", cudaMalloc((void**)&p, b4));
  CHECK("cudaMalloc", cudaMalloc((void**)&mom, b4));
  CHECK("cudaMalloc", cudaMalloc((void**)&e0, b4));
  CHECK("cudaMalloc", cudaMalloc((void**)&e1, elems * 2));
  CHECK("cudaMalloc", cudaMalloc((void**)&b1, elems * 2));
  for (float* q : {acc, x, p, mom}) CHECK("cudaMemsetAsync", cudaMemsetAsync(q, 0, b4, s));
  step_k k;
  k.lr = 0.01f;
  k.mu = 0.9f;
  k.wd = 1e-4f;
  k.nw = 4.0f;
  k.first = 0;
  k.n = elems;
  auto add = [&] { k_add<<<grid_for(elems), THREADS, 0, s>>>(acc, x, elems); };
  auto step = [&] {
    k_step<PX_DT_F32><<<grid_for(elems), THREADS, 0, s>>>(p, mom, acc, k, e0, b1, e1);
  };
  auto copy = [&] { CHECK("cudaMemcpyAsync", cudaMemcpyAsync(p, acc, b4, cudaMemcpyDeviceToDevice, s)); };
  time_ms(s, 1, add); /* warm-up */
  time_ms(s, 1, step);
  time_ms(s, 1, copy);
  const double acc_gbs = 12.0 * (double)elems * iters / (time_ms(s, (int)iters, add) * 1e6);
  const double step_gbs = 28.0 * (double)elems * iters / (time_ms(s, (int)iters, step) * 1e6);
  const double d2d_gbs = 8.0 * (double)elems * iters / (time_ms(s, (int)iters, copy) * 1e6);
  int clock_khz = 0, bus_bits = 0;
  double peak = 0;
  if (cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, gpu) == cudaSuccess &&
      cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, gpu) == cudaSuccess &&
      clock_khz > 0 && bus_bits > 0)
    peak = 2.0 * clock_khz * 1e3 * (bus_bits / 8.0) / 1e9;
  printf("device-resident kernels on GPU %d (%s), %ld MiB, %ld iterations:\n", gpu, prop.name, mb,
         iters);
  printf("  accumulate %.1f GB/s, fused optimizer %.1f GB/s, cudaMemcpy D2D %.1f GB/s\n", acc_gbs,
         step_gbs, d2d_gbs);
  if (peak > 0)
    printf("  theoretical %.1f GB/s: accumulate %.2fx, optimizer %.2fx (goal >= 0.70x)\n", peak,
           acc_gbs / peak, step_gbs / peak);
  else
    printf("  the device reports no memory clock: accumulate %.2fx, optimizer %.2fx of D2D\n",
           acc_gbs / d2d_gbs, step_gbs / d2d_gbs);
  for (void* q : {(void*)acc, (void*)x, (void*)p, (void*)mom, (void*)e0, (void*)e1, (void*)b1})
    cudaFree(q);
  cudaStreamDestroy(s);
  return 0;
}
