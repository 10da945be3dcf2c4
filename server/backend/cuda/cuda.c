/* The cuda backend (cuda.h). Chunks are dealt to the GPUs round robin in declaration
 * order, so small tensors spread as well as big ones. */
#include "backend/cuda/cuda.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/gpu.h"
#include "codec/dtype.h"

typedef struct cuda_backend {
  px_backend base;
  px_gpu* gpu;
  uint64_t next_seq; /* chunks dealt so far (tensor_create does not overlap itself) */
} cuda_backend;

typedef struct cuda_tensor {
  px_be_tensor_desc d;
  size_t es;
  px_gpu_chunk** chunks; /* [nchunks] */
} cuda_tensor;

#define CT(t) ((cuda_tensor*)(void*)(t))

static px_gpu* gpu_of(px_backend* b) { return ((cuda_backend*)b)->gpu; }

static uint8_t* chunk_params(const cuda_tensor* t, uint32_t i) {
  return (uint8_t*)t->d.params + (uint64_t)i * t->d.chunk_elems * t->es;
}

static void check(int rc, const char* err) {
  if (rc != 0) px_backend_fatal("cuda", err);
}

static void cuda_tensor_destroy(px_backend* b, px_be_tensor* bt) {
  cuda_tensor* t = CT(bt);
  if (!t) return;
  for (uint32_t i = 0; t->chunks && i < t->d.nchunks; i++)
    px_gpu_chunk_destroy(gpu_of(b), t->chunks[i]);
  free(t->chunks);
  free(t);
}

static int cuda_tensor_create(px_backend* b, const px_be_tensor_desc* d, px_be_tensor** out,
                              char* err, size_t errlen) {
  cuda_backend* cb = (cuda_backend*)b;
  cuda_tensor* t = calloc(1, sizeof *t);
  if (t) t->chunks = calloc(d->nchunks ? d->nchunks : 1, sizeof *t->chunks);
  if (!t || !t->chunks) {
    free(t);
    snprintf(err, errlen, "tensor '%s': out of memory", d->name);
    return -1;
  }
  t->d = *d;
  t->es = px_dtype_size(d->dtype);
  char why[256];
  for (uint32_t i = 0; i < d->nchunks; i++) {
    if (px_gpu_chunk_create(cb->gpu, cb->next_seq + i, px_be_chunk_elems(d, i), d->dtype,
                            b->momentum, &t->chunks[i], why, sizeof why) != 0) {
      cuda_tensor_destroy(b, (px_be_tensor*)(void*)t);
      snprintf(err, errlen, "tensor '%s': GPU memory for chunk %u: %s", d->name, i, why);
      return -1;
    }
  }
  cb->next_seq += d->nchunks;
  *out = (px_be_tensor*)(void*)t;
  return 0;
}

static void cuda_chunk_load(px_backend* b, px_be_tensor* bt, uint32_t i, const float* mom) {
  cuda_tensor* t = CT(bt);
  char err[256];
  check(px_gpu_load(gpu_of(b), t->chunks[i], chunk_params(t, i), mom, err, sizeof err), err);
}

static int cuda_accumulate(px_backend* b, px_be_tensor* bt, uint32_t i, uint32_t rank, float* g,
                           bool give, bool* taken) {
  (void)give;
  char err[256];
  *taken = false;
  check(px_gpu_accumulate(gpu_of(b), CT(bt)->chunks[i], rank, g, err, sizeof err), err);
  return 0;
}

static void cuda_step(px_backend* b, px_be_tensor* bt, uint32_t i, px_step_io* io) {
  cuda_tensor* t = CT(bt);
  char err[256];
  px_gpu_step_args a = {
      .lr = io->lr, /* the schedule's, for this step */
      .momentum = b->sgd.momentum,
      .weight_decay = b->sgd.weight_decay,
      .nesterov = b->sgd.nesterov,
      .kind = (int)b->sgd.kind,
      .eps = b->sgd.eps,
      .alpha = b->sgd.alpha,
      .ncontrib = io->ncontrib,
      .first = io->first,
      .params_out = chunk_params(t, i),
      .bits0_out = io->bits[0],
      .bits1_out = io->bits[1],
      .enc0_out = io->enc[0],
      .enc1_out = io->enc[1],
  };
  check(px_gpu_step(gpu_of(b), t->chunks[i], &a, err, sizeof err), err);
}

static void cuda_read_view(px_backend* b, px_be_tensor* bt, uint32_t i, int view, void* out) {
  cuda_tensor* t = CT(bt);
  char err[256];
  if (view == 1) check(px_gpu_read_bf16(gpu_of(b), t->chunks[i], out, err, sizeof err), err);
  else memcpy(out, chunk_params(t, i), (size_t)px_be_chunk_elems(&t->d, i) * t->es); /* mirror */
}

static void cuda_snapshot(px_backend* b, px_be_tensor* bt, uint32_t i, void* params, float* mom) {
  cuda_tensor* t = CT(bt);
  char err[256];
  memcpy(params, chunk_params(t, i), (size_t)px_be_chunk_elems(&t->d, i) * t->es);
  if (mom) check(px_gpu_read_mom(gpu_of(b), t->chunks[i], mom, err, sizeof err), err);
}

static void cuda_destroy(px_backend* b) {
  px_gpu_destroy(gpu_of(b));
  free(b);
}

static const px_backend_ops cuda_ops = {
    cuda_tensor_create, cuda_tensor_destroy, cuda_chunk_load, cuda_accumulate,
    cuda_step,          cuda_read_view,      cuda_snapshot,   cuda_destroy,
};

int px_backend_cuda_create(const px_backend_opts* o, px_backend** out, char* err, size_t errlen) {
  cuda_backend* cb = calloc(1, sizeof *cb);
  char why[400];
  if (!cb) {
    snprintf(err, errlen, "out of memory at start");
    return -1;
  }
  int rc = px_gpu_create(o->gpu_ids, (int)o->ngpus, o->chunk_bytes / sizeof(float), &cb->gpu,
                         why, sizeof why);
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

int px_backend_cuda_usable(char* why, size_t whylen) {
  char err[256];
  int n = px_gpu_count(err, sizeof err);
  if (n <= 0) {
    snprintf(why, whylen, "%s", err);
    return 0;
  }
  return 1;
}
