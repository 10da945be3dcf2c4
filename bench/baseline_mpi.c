/* paramex-baseline-mpi: MPI_Allreduce (sum, f32) of a model's gradients, what users would
 * run instead of a parameter server. Same model tables as paramex-bench-worker.
 *
 * Two ways, each timed per iteration as the slowest rank's time after a barrier:
 *   fused       one MPI_Allreduce of all the model's values (what Horovod's fusion buffer
 *               or a single DDP bucket does)
 *   per_tensor  one MPI_Allreduce per tensor, in order
 * Send and receive buffers are separate and allocated with malloc (so that
 * GLIBC_TUNABLES=glibc.malloc.hugetlb=1 applies to them as to Open MPI's own buffers), and
 * touched before the first iteration. Rank 0 prints one JSON line.
 *
 *   mpirun -np W --mca btl tcp,self paramex-baseline-mpi --model SPEC [--iters N] [--warmup N]
 */
#include "models.h"

#include <mpi.h>

#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_d(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

static double pct(const double* sorted, int n, double p) {
  int i = (int)ceil(p / 100.0 * n) - 1;
  if (i < 0) i = 0;
  if (i >= n) i = n - 1;
  return sorted[i];
}

/* Times `iters` iterations (after `warmup`) of one way; fills t (iters samples, slowest
 * rank) on rank 0. Returns an MPI error code. */
static int time_way(const bench_model* m, int fused, const float* send, float* recv, int warmup,
                    int iters, double* t) {
  for (int it = 0; it < warmup + iters; it++) {
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    int rc;
    if (fused) {
      rc = MPI_Allreduce(send, recv, (int)m->numel, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    } else {
      uint64_t off = 0;
      rc = MPI_SUCCESS;
      for (size_t i = 0; i < m->n && rc == MPI_SUCCESS; i++) {
        rc = MPI_Allreduce(send + off, recv + off, (int)m->tensors[i].numel, MPI_FLOAT, MPI_SUM,
                           MPI_COMM_WORLD);
        off += m->tensors[i].numel;
      }
    }
    if (rc != MPI_SUCCESS) return rc;
    double dt = MPI_Wtime() - t0, slowest = 0;
    MPI_Reduce(&dt, &slowest, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    if (it >= warmup) t[it - warmup] = slowest;
  }
  return MPI_SUCCESS;
}

static void print_way(const char* key, double* t, int iters, double bytes, int ranks) {
  qsort(t, (size_t)iters, sizeof *t, cmp_d);
  double p50 = pct(t, iters, 50);
  printf(", \"%s\": {\"p50_s\": %.6g, \"p90_s\": %.6g, \"p99_s\": %.6g, \"min_s\": %.6g", key,
         p50, pct(t, iters, 90), pct(t, iters, 99), t[0]);
  /* algbw: bytes / time; busbw: the bytes each rank's link must carry in a ring,
   * 2 (n - 1) / n of them (the nccl-tests convention). */
  printf(", \"algbw_gbps\": %.6g, \"busbw_gbps\": %.6g}", bytes / p50 / 1e9,
         bytes / p50 / 1e9 * 2.0 * (ranks - 1) / ranks);
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank, ranks;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  const char* spec = "dense:25M";
  int iters = 10, warmup = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--model")) spec = argv[i + 1];
    else if (!strcmp(argv[i], "--iters")) iters = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--warmup")) warmup = atoi(argv[i + 1]);
  }
  bench_model m;
  char err[160];
  if (bench_model_init(&m, spec, err, sizeof err) || iters < 1 || warmup < 0 ||
      m.numel > (uint64_t)INT_MAX) {
    if (rank == 0) {
      fprintf(stderr, "baseline-mpi: %s\n",
              iters < 1 || warmup < 0 ? "--iters must be >= 1 and --warmup >= 0"
              : m.numel > (uint64_t)INT_MAX ? "model too large for one MPI count" : err);
    }
    MPI_Finalize();
    return 2;
  }
  size_t bytes = (size_t)m.numel * sizeof(float);
  float* send = malloc(bytes);
  float* recv = malloc(bytes);
  double* t = malloc((size_t)iters * sizeof *t);
  if (!send || !recv || !t) {
    fprintf(stderr, "baseline-mpi: out of memory\n");
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  for (uint64_t i = 0; i < m.numel; i++) send[i] = 1e-3f * (float)((i + (uint64_t)rank) % 97);
  memset(recv, 0, bytes);

  const char* tun = getenv("GLIBC_TUNABLES");
  if (rank == 0) {
    printf("{\"model\": \"%s\", \"tensors\": %zu, \"bytes\": %zu, \"ranks\": %d, \"iters\": %d, "
           "\"warmup\": %d, \"glibc_tunables\": \"%s\"",
           m.spec, m.n, bytes, ranks, iters, warmup, tun ? tun : "");
  }
  int rc = time_way(&m, 1, send, recv, warmup, iters, t);
  if (rc == MPI_SUCCESS && rank == 0) print_way("fused", t, iters, (double)bytes, ranks);
  if (rc == MPI_SUCCESS) rc = time_way(&m, 0, send, recv, warmup, iters, t);
  if (rc == MPI_SUCCESS && rank == 0) print_way("per_tensor", t, iters, (double)bytes, ranks);
  if (rank == 0) printf("}\n");
  fflush(stdout);
  free(send);
  free(recv);
  free(t);
  bench_model_deinit(&m);
  MPI_Finalize();
  return rc == MPI_SUCCESS ? 0 : 1;
}
