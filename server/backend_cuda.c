/* The cuda backend: parameters, momentum and sums on the GPUs (server/cuda/px_gpu.cu),
 * with the host mirror c->params refreshed by every step. Chunks are dealt to the GPUs
 * round robin in declaration order, so small tensors spread as well as big ones.
 * Built only with PX_HAVE_CUDA (meson -Dcuda). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/codec.h"
#include "cuda/pmx_gpu.h"
#include "server.h"

typedef struct cuda_backend {
  px_backend base;
  px_gpu* gpu;
  uint64_t next_seq; /* chunks dealt so far (under the store's declare lock) */
} cuda_backend;

static px_gpu* gpu_of(px_backend* b) { return ((cuda_backend*)b)->gpu; }

static void check(int rc, const char* err) {
  if (rc != 0) px_backend_fatal("cuda", err);
}

static void cuda_tensor_destroy(px_backend* b, px_tensor_state* t) {
  for (uint32_t i = 0; t->chunks && i < t->nchunks; i++) {
    px_gpu_chunk_destroy(gpu_of(b), t->chunks[i].be);
    t->chunks[i].be = NULL;
  }
}

static int cuda_tensor_create(px_backend* b, px_tensor_state* t, char* err, size_t errlen) {
  cuda_backend* cb = (cuda_backend*)b;
  char why[256];
  for (uint32_t i = 0; i < t->nchunks; i++) {
    px_gpu_chunk* gc = NULL;
    if (px_gpu_chunk_create(cb->gpu, cb->next_seq + i, t->chunks[i].elems, t->dtype,
                             b->momentum, &gc, why, sizeof why) != 0) {
      cuda_tensor_destroy(b, t);
      snprintf(err, errlen, "tensor '%s': GPU memory for chunk %u: %s", t->name, i, why);
      return -1;
    }
    t->chunks[i].be = gc;
  }
  cb->next_seq += t->nchunks;
  return 0;
}

static void cuda_chunk_load(px_backend* b, px_tensor_state* t, px_chunk_state* c,
                            const float* mom) {
  (void)t;
  char err[256];
  check(px_gpu_load(gpu_of(b), c->be, c->params, mom, err, sizeof err), err);
}

static int cuda_accumulate(px_backend* b, px_tensor_state* t, px_chunk_state* c,
                           uint32_t rank, float* g, bool give, bool* taken) {
  (void)t;
  (void)give;
  char err[256];
  *taken = false;
  check(px_gpu_accumulate(gpu_of(b), c->be, rank, g, err, sizeof err), err);
  return 0;
}

static void cuda_step(px_backend* b, px_tensor_state* t, px_chunk_state* c, px_step_io* io) {
  (void)t;
  char err[256];
  px_gpu_step_args a = {
      .lr = b->sgd.lr,
      .momentum = b->sgd.momentum,
      .weight_decay = b->sgd.weight_decay,
      .ncontrib = io->ncontrib,
      .first = io->first,
      .params_out = c->params,
      .bits0_out = io->bits[0],
      .bits1_out = io->bits[1],
      .enc0_out = io->enc[0],
      .enc1_out = io->enc[1],
  };
  check(px_gpu_step(gpu_of(b), c->be, &a, err, sizeof err), err);
}

static void cuda_read_view(px_backend* b, px_tensor_state* t, px_chunk_state* c, int view,
                           void* out) {
  char err[256];
  if (view == 1) check(px_gpu_read_bf16(gpu_of(b), c->be, out, err, sizeof err), err);
  else memcpy(out, c->params, (size_t)c->elems * t->elem); /* the mirror equals the GPU's */
}

static void cuda_snapshot(px_backend* b, px_tensor_state* t, px_chunk_state* c, void* params,
                          float* mom) {
  char err[256];
  memcpy(params, c->params, (size_t)c->elems * t->elem);
  if (mom) check(px_gpu_read_mom(gpu_of(b), c->be, mom, err, sizeof err), err);
}

static void cuda_destroy(px_backend* b) {
  px_gpu_destroy(gpu_of(b));
  free(b);
}

static const px_backend_ops cuda_ops = {
    cuda_tensor_create, cuda_tensor_destroy, cuda_chunk_load, cuda_accumulate,
    cuda_step,          cuda_read_view,      cuda_snapshot,   cuda_destroy,
};

int px_backend_cuda_create(const px_config* cfg, px_backend** out, char* err, size_t errlen) {
  cuda_backend* cb = calloc(1, sizeof *cb);
  char why[400];
  if (!cb) {
    snprintf(err, errlen, "out of memory at start");
    return -1;
  }
  int rc = px_gpu_create(cfg->gpu_ids, (int)cfg->ngpus, cfg->chunk_bytes / sizeof(float),
                          &cb->gpu, why, sizeof why);
  if (rc != 0) {
    free(cb);
    snprintf(err, errlen, "%s%s", rc == -2 ? "" : "--device cuda: ", why);
    return rc;
  }
  cb->base.ops = &cuda_ops;
  cb->base.name = "cuda";
  cb->base.ndev = (uint32_t)px_gpu_ndev(cb->gpu);
  char devs[200];
  px_gpu_describe(cb->gpu, devs, sizeof devs);
  snprintf(cb->base.desc, sizeof cb->base.desc, "cuda on %d GPU%s (%s), one NCCL communicator",
           px_gpu_ndev(cb->gpu), px_gpu_ndev(cb->gpu) == 1 ? "" : "s", devs);
  *out = &cb->base;
  return 0;
}

int px_backend_cuda_available(char* why, size_t whylen) {
  char err[256];
  int n = px_gpu_count(err, sizeof err);
  if (n <= 0) {
    snprintf(why, whylen, "%s", err);
    return 0;
  }
  return 1;
}
