/* The GPU side of the cuda backend: devices, streams, pinned staging, kernels and the
 * NCCL communicator. This directory is the only place that includes CUDA or NCCL
 * headers; this header is plain C (and C++) so that cuda.c can use it.
 *
 * Layout: every GPU g of the server has NSTREAMS streams, a stream for NCCL, a ring of
 * pinned host staging slots (each with a device buffer and an event) and a few pinned
 * output slots. A chunk has an owner GPU (chunks are dealt round robin) holding its
 * parameters and momentum, and on every GPU a partial sum. The contribution of rank r
 * goes to GPU r mod G: it is copied into a free staging slot (a host memcpy, so the
 * caller's buffer is free at once), sent with cudaMemcpyAsync on the chunk's stream of
 * that GPU and added there by a kernel; nothing waits for the GPU. When the step is
 * complete the partial sums are reduced onto the owner with ncclReduce (one NCCL group
 * over the G communicators, also for G = 1), and one fused kernel applies the optimizer
 * and produces the bf16 view and the encoder input (word delta, zigzag, byte shuffle);
 * the results come back through a pinned output slot, and the call returns after the
 * chunk's stream is synchronised.
 *
 * Determinism: the partial sum of GPU g adds ranks g, g+G, g+2G, ... in that order
 * (calls for one chunk come in rank order and go to one stream); the kernels use
 * explicitly rounded operations (__fadd_rn, __fmul_rn, __fdiv_rn, __fsub_rn) in the
 * order of the cpu code, so with G = 1 results are bit-identical to the cpu backend.
 *
 * Threads: any thread may call; calls for one chunk must not overlap (the server holds
 * the chunk's lock). NCCL communicators are not thread safe: every NCCL group (and every
 * chunk's device allocation or free, which may synchronise a device) runs under one
 * mutex of the px_gpu, so the communicators see the reductions in one order, never
 * concurrently. Every function returns 0, or -1 with one line in err naming the CUDA or
 * NCCL call and its error. */
#ifndef PX_GPU_H
#define PX_GPU_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct px_gpu px_gpu;
typedef struct px_gpu_chunk px_gpu_chunk;

/* Number of usable devices, or -1 with err (no driver, ...). */
int px_gpu_count(char* err, size_t errlen);

/* Opens devs[0..ndev) (ndev == 0: every device) for chunks of at most max_elems f32
 * elements. Returns 0; -1 with err on a CUDA/NCCL failure; -2 with err when a device in
 * devs does not exist. */
int px_gpu_create(const int* devs, int ndev, size_t max_elems, px_gpu** out, char* err,
                   size_t errlen);
void px_gpu_destroy(px_gpu* g); /* accepts NULL */
int px_gpu_ndev(const px_gpu* g);
/* "0:NVIDIA H100 80GB HBM3, 1:..." */
void px_gpu_describe(const px_gpu* g, char* out, size_t cap);

/* A chunk of elems elements of dtype (PMX_DT_*), owned by GPU (seq mod G); momentum:
 * keep momentum state. */
int px_gpu_chunk_create(px_gpu* g, uint64_t seq, uint32_t elems, int dtype, int momentum,
                         px_gpu_chunk** out, char* err, size_t errlen);
void px_gpu_chunk_destroy(px_gpu* g, px_gpu_chunk* c); /* accepts NULL */

/* Uploads the parameters (elems words of the dtype) and, when mom != NULL, the momentum. */
int px_gpu_load(px_gpu* g, px_gpu_chunk* c, const void* params, const float* mom, char* err,
                 size_t errlen);
/* Adds rank's contribution x (elems f32, host) to the chunk's sum. */
int px_gpu_accumulate(px_gpu* g, px_gpu_chunk* c, uint32_t rank, const float* x, char* err,
                       size_t errlen);

typedef struct px_gpu_step_args {
  float lr, momentum, weight_decay;
  int nesterov;
  int kind;             /* px_opt_kind */
  float eps, alpha;
  uint32_t ncontrib;
  int first;            /* first momentum step */
  void* params_out;     /* new parameters (required) */
  void* bits0_out;      /* a second copy of them, or NULL */
  uint16_t* bits1_out;  /* bf16 view (f32 chunks), or NULL */
  uint8_t* enc0_out;    /* encoder input of the native words, or NULL */
  uint8_t* enc1_out;    /* encoder input of the bf16 view (f32 chunks), or NULL */
} px_gpu_step_args;
/* Reduces the partial sums onto the owner, applies SGD, writes the outputs, and resets
 * the sum. Fails when no contribution was added. */
int px_gpu_step(px_gpu* g, px_gpu_chunk* c, const px_gpu_step_args* a, char* err,
                 size_t errlen);

/* The bf16 view of an f32 chunk's parameters (elems words). */
int px_gpu_read_bf16(px_gpu* g, px_gpu_chunk* c, uint16_t* out, char* err, size_t errlen);
/* The momentum (elems f32); zeros when the chunk has none. */
int px_gpu_read_mom(px_gpu* g, px_gpu_chunk* c, float* out, char* err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
