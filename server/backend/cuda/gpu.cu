/* The GPU side of the cuda backend (gpu.h): devices, pinned staging, kernels, NCCL.
 *
 * Compiled by nvcc with -fmad=false -ftz=false -prec-div=true (see server/meson.build);
 * the kernels also spell every rounding out (__fadd_rn, __fmul_rn, __fdiv_rn,
 * __fsub_rn), so no contraction or flush-to-zero can change a result. The 16-bit
 * conversions are the branch-free ones of common/codec/dtype.c (round to nearest even,
 * NaN quieted with its payload kept), written again for the device: CUDA's own
 * __float2bfloat16_rn returns a canonical NaN, which would break bit-identity with the
 * cpu backend. */
#include <cuda_runtime.h>
#include <nccl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "codec/dtype.h"
#include "codec/transform.h"
}
#include "backend/cuda/gpu.h"

#define NSTREAMS 4 /* per GPU: chunks are spread over them so copies overlap kernels */
#define NSTAGE 8   /* pinned staging slots per GPU */
#define NOUT 4     /* pinned output slots per GPU */

namespace {

struct stage_slot {
  pthread_mutex_t mu;
  float* host; /* pinned, max_elems f32 */
  float* dev;  /* max_elems f32 on the slot's GPU */
  cudaEvent_t done; /* recorded after the last use of host and dev */
};

struct out_slot {
  pthread_mutex_t mu;
  void* h_params;    /* pinned, max_elems * 4 bytes */
  uint16_t* h_bits1; /* pinned, max_elems words */
  uint8_t* h_enc0;   /* pinned, max_elems * 4 bytes */
  uint8_t* h_enc1;   /* pinned, max_elems * 2 bytes */
  uint16_t* d_bits1;
  uint8_t* d_enc0;
  uint8_t* d_enc1;
};

struct gpu_dev {
  int id;
  char name[256];
  cudaStream_t s[NSTREAMS];
  cudaStream_t ns; /* NCCL's stream */
  ncclComm_t comm;
  unsigned next_stage, next_out; /* round-robin cursors (atomic builtins) */
  stage_slot stage[NSTAGE];
  out_slot out[NOUT];
};

}  // namespace

struct px_gpu {
  int n;
  gpu_dev* d;
  size_t max_elems;
  pthread_mutex_t nccl_mu; /* one NCCL group at a time, so every communicator sees the
                            * reductions in the same order */
};

struct px_gpu_chunk {
  uint32_t elems;
  int dtype;
  size_t es;        /* bytes per parameter */
  int owner;        /* index into px_gpu::d */
  int sid;          /* stream index on every GPU */
  void* params;     /* on the owner */
  float* mom;       /* on the owner, NULL without momentum */
  float** part;     /* [n]: partial sum of the step on GPU g */
  unsigned char* has; /* [n]: part[g] holds a contribution of this step */
  cudaEvent_t* ev;  /* [n]: orders GPU g's chunk stream and NCCL stream */
};

/* ---- errors ------------------------------------------------------------------------- */

static int cu_err(char* err, size_t errlen, const char* what, cudaError_t e) {
  if (err && errlen)
    snprintf(err, errlen, "%s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
  return -1;
}

/* ncclGetErrorString only names the class of error ("unhandled system error"); the
 * detail (which file, which syscall, which peer) is in ncclGetLastError. The server runs
 * on GPU machines that nobody can debug interactively, so the one line must say it all. */
static int nccl_err(char* err, size_t errlen, const char* what, ncclResult_t r) {
  const char* last = ncclGetLastError(NULL);
  if (err && errlen)
    snprintf(err, errlen, "%s: %s%s%s", what, ncclGetErrorString(r), last && *last ? ": " : "",
             last ? last : "");
  for (char* q = err; err && errlen && *q; q++) /* one line, whatever NCCL's text holds */
    if (*q == '\n' || *q == '\r') *q = ' ';
  return -1;
}

/* In functions with a `fail:` label that undoes what is held; rc is the result. */
#define CU_GO(what, call)                                 \
  do {                                                    \
    cudaError_t e_ = (call);                              \
    if (e_ != cudaSuccess) {                              \
      rc = cu_err(err, errlen, what, e_);                 \
      goto fail;                                          \
    }                                                     \
  } while (0)
#define CU(what, call)                                    \
  do {                                                    \
    cudaError_t e_ = (call);                              \
    if (e_ != cudaSuccess) return cu_err(err, errlen, what, e_); \
  } while (0)

#include "backend/cuda/kernels.cuh"

/* ---- devices --------------------------------------------------------------------------- */

int px_gpu_count(char* err, size_t errlen) {
  int n = 0;
  CU("cudaGetDeviceCount", cudaGetDeviceCount(&n));
  if (n <= 0) {
    snprintf(err, errlen, "cudaGetDeviceCount: no CUDA device");
    return -1;
  }
  return n;
}

int px_gpu_ndev(const px_gpu* g) { return g->n; }

void px_gpu_describe(const px_gpu* g, char* out, size_t cap) {
  size_t off = 0;
  out[0] = 0;
  for (int i = 0; i < g->n && off < cap; i++) {
    int w = snprintf(out + off, cap - off, "%s%d:%s", i ? ", " : "", g->d[i].id, g->d[i].name);
    if (w < 0) break;
    off += (size_t)w;
  }
}

/* Frees what dev d holds (the parts that were created). Errors are ignored: this runs
 * when tearing down. */
static void dev_free(gpu_dev* d) {
  if (cudaSetDevice(d->id) != cudaSuccess) return;
  for (int k = 0; k < NSTREAMS; k++)
    if (d->s[k]) cudaStreamSynchronize(d->s[k]);
  if (d->ns) cudaStreamSynchronize(d->ns);
  for (int k = 0; k < NSTAGE; k++) {
    stage_slot* sl = &d->stage[k];
    if (sl->done) cudaEventDestroy(sl->done);
    if (sl->host) cudaFreeHost(sl->host);
    if (sl->dev) cudaFree(sl->dev);
    pthread_mutex_destroy(&sl->mu);
  }
  for (int k = 0; k < NOUT; k++) {
    out_slot* o = &d->out[k];
    if (o->h_params) cudaFreeHost(o->h_params);
    if (o->h_bits1) cudaFreeHost(o->h_bits1);
    if (o->h_enc0) cudaFreeHost(o->h_enc0);
    if (o->h_enc1) cudaFreeHost(o->h_enc1);
    if (o->d_bits1) cudaFree(o->d_bits1);
    if (o->d_enc0) cudaFree(o->d_enc0);
    if (o->d_enc1) cudaFree(o->d_enc1);
    pthread_mutex_destroy(&o->mu);
  }
  if (d->comm) ncclCommDestroy(d->comm);
  for (int k = 0; k < NSTREAMS; k++)
    if (d->s[k]) cudaStreamDestroy(d->s[k]);
  if (d->ns) cudaStreamDestroy(d->ns);
}

static int dev_init(gpu_dev* d, size_t max_elems, char* err, size_t errlen) {
  cudaDeviceProp prop;
  const size_t b4 = max_elems * 4, b2 = max_elems * 2;
  CU("cudaSetDevice", cudaSetDevice(d->id));
  CU("cudaGetDeviceProperties", cudaGetDeviceProperties(&prop, d->id));
  snprintf(d->name, sizeof d->name, "%s", prop.name);
  for (int k = 0; k < NSTREAMS; k++)
    CU("cudaStreamCreateWithFlags", cudaStreamCreateWithFlags(&d->s[k], cudaStreamNonBlocking));
  CU("cudaStreamCreateWithFlags", cudaStreamCreateWithFlags(&d->ns, cudaStreamNonBlocking));
  for (int k = 0; k < NSTAGE; k++) {
    stage_slot* sl = &d->stage[k];
    CU("cudaHostAlloc", cudaHostAlloc((void**)&sl->host, b4, cudaHostAllocDefault));
    CU("cudaMalloc", cudaMalloc((void**)&sl->dev, b4));
    CU("cudaEventCreateWithFlags", cudaEventCreateWithFlags(&sl->done, cudaEventDisableTiming));
  }
  for (int k = 0; k < NOUT; k++) {
    out_slot* o = &d->out[k];
    CU("cudaHostAlloc", cudaHostAlloc(&o->h_params, b4, cudaHostAllocDefault));
    CU("cudaHostAlloc", cudaHostAlloc((void**)&o->h_bits1, b2, cudaHostAllocDefault));
    CU("cudaHostAlloc", cudaHostAlloc((void**)&o->h_enc0, b4, cudaHostAllocDefault));
    CU("cudaHostAlloc", cudaHostAlloc((void**)&o->h_enc1, b2, cudaHostAllocDefault));
    CU("cudaMalloc", cudaMalloc((void**)&o->d_bits1, b2));
    CU("cudaMalloc", cudaMalloc((void**)&o->d_enc0, b4));
    CU("cudaMalloc", cudaMalloc((void**)&o->d_enc1, b2));
  }
  return 0;
}

void px_gpu_destroy(px_gpu* g) {
  if (!g) return;
  for (int i = 0; g->d && i < g->n; i++) dev_free(&g->d[i]);
  free(g->d);
  pthread_mutex_destroy(&g->nccl_mu);
  free(g);
}

int px_gpu_create(const int* devs, int ndev, size_t max_elems, px_gpu** out, char* err,
                   size_t errlen) {
  *out = NULL;
  int count = px_gpu_count(err, errlen);
  if (count < 0) return -1;
  for (int i = 0; i < ndev; i++)
    if (devs[i] < 0 || devs[i] >= count) {
      snprintf(err, errlen, "--gpus: device %d does not exist (CUDA sees %d device%s: 0..%d)",
               devs[i], count, count == 1 ? "" : "s", count - 1);
      return -2;
    }
  px_gpu* g = (px_gpu*)calloc(1, sizeof *g);
  int* ids = (int*)calloc((size_t)(ndev ? ndev : count), sizeof *ids);
  ncclComm_t* comms = NULL;
  ncclResult_t nr;
  int rc = 0;
  if (!g || !ids) {
    free(g);
    free(ids);
    snprintf(err, errlen, "out of memory at start");
    return -1;
  }
  pthread_mutex_init(&g->nccl_mu, NULL);
  g->max_elems = max_elems;
  g->d = (gpu_dev*)calloc((size_t)(ndev ? ndev : count), sizeof *g->d);
  comms = (ncclComm_t*)calloc((size_t)(ndev ? ndev : count), sizeof *comms);
  if (!g->d || !comms) {
    snprintf(err, errlen, "out of memory at start");
    rc = -1;
    goto fail;
  }
  g->n = ndev ? ndev : count; /* from here on px_gpu_destroy frees g->d[0..n) */
  for (int i = 0; i < g->n; i++) {
    gpu_dev* d = &g->d[i];
    d->id = ids[i] = ndev ? devs[i] : i;
    for (int k = 0; k < NSTAGE; k++) pthread_mutex_init(&d->stage[k].mu, NULL);
    for (int k = 0; k < NOUT; k++) pthread_mutex_init(&d->out[k].mu, NULL);
  }
  for (int i = 0; i < g->n; i++) {
    rc = dev_init(&g->d[i], max_elems, err, errlen);
    if (rc != 0) goto fail;
  }
  nr = ncclCommInitAll(comms, g->n, ids);
  if (nr != ncclSuccess) {
    rc = nccl_err(err, errlen, "ncclCommInitAll", nr);
    goto fail;
  }
  for (int i = 0; i < g->n; i++) g->d[i].comm = comms[i];
  free(comms);
  free(ids);
  *out = g;
  return 0;
fail:
  free(comms);
  free(ids);
  px_gpu_destroy(g);
  return rc;
}

/* ---- chunks ------------------------------------------------------------------------- */

/* cudaMalloc and cudaFree may synchronise a whole device. Done while another thread is
 * between the per-device kernel launches of ncclGroupEnd, that can wait on an NCCL kernel
 * whose peers are not launched yet (NCCL's documentation warns about exactly this). Chunks
 * are created and destroyed under the store's declare lock while other chunks step, so
 * their device allocations take nccl_mu: then no NCCL group is half launched, and every
 * NCCL kernel a device synchronisation may wait for has all its peers launched. */
void px_gpu_chunk_destroy(px_gpu* g, px_gpu_chunk* c) {
  if (!c) return;
  pthread_mutex_lock(&g->nccl_mu);
  for (int i = 0; c->part && i < g->n; i++) {
    if (cudaSetDevice(g->d[i].id) != cudaSuccess) continue;
    cudaStreamSynchronize(g->d[i].s[c->sid]);
    cudaStreamSynchronize(g->d[i].ns);
    if (c->part[i]) cudaFree(c->part[i]);
    if (c->ev && c->ev[i]) cudaEventDestroy(c->ev[i]);
  }
  if (cudaSetDevice(g->d[c->owner].id) == cudaSuccess) {
    if (c->params) cudaFree(c->params);
    if (c->mom) cudaFree(c->mom);
  }
  pthread_mutex_unlock(&g->nccl_mu);
  free(c->part);
  free(c->has);
  free(c->ev);
  free(c);
}

int px_gpu_chunk_create(px_gpu* g, uint64_t seq, uint32_t elems, int dtype, int momentum,
                         px_gpu_chunk** out, char* err, size_t errlen) {
  *out = NULL;
  if (elems == 0 || elems > g->max_elems || px_dtype_size(dtype) == 0) {
    snprintf(err, errlen, "chunk of %u elements of dtype %d (at most %zu f32 elements)", elems,
             dtype, g->max_elems);
    return -1;
  }
  px_gpu_chunk* c = (px_gpu_chunk*)calloc(1, sizeof *c);
  int rc = 0;
  if (!c) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  c->elems = elems;
  c->dtype = dtype;
  c->es = px_dtype_size(dtype);
  c->owner = (int)(seq % (uint64_t)g->n);
  c->sid = (int)((seq / (uint64_t)g->n) % NSTREAMS);
  c->part = (float**)calloc((size_t)g->n, sizeof *c->part);
  c->has = (unsigned char*)calloc((size_t)g->n, 1);
  c->ev = (cudaEvent_t*)calloc((size_t)g->n, sizeof *c->ev);
  pthread_mutex_lock(&g->nccl_mu); /* see px_gpu_chunk_destroy */
  if (!c->part || !c->has || !c->ev) {
    snprintf(err, errlen, "out of memory");
    rc = -1;
    goto fail;
  }
  CU_GO("cudaSetDevice", cudaSetDevice(g->d[c->owner].id));
  CU_GO("cudaMalloc", cudaMalloc(&c->params, (size_t)elems * c->es));
  if (momentum) {
    CU_GO("cudaMalloc", cudaMalloc((void**)&c->mom, (size_t)elems * sizeof(float)));
    /* On the chunk's own stream: a plain cudaMemset runs on the legacy default stream,
     * which the cudaStreamNonBlocking streams are NOT ordered after, so it could land
     * after (and wipe) a momentum that px_gpu_load restores on the chunk's stream. */
    CU_GO("cudaMemsetAsync", cudaMemsetAsync(c->mom, 0, (size_t)elems * sizeof(float),
                                             g->d[c->owner].s[c->sid]));
  }
  for (int i = 0; i < g->n; i++) {
    CU_GO("cudaSetDevice", cudaSetDevice(g->d[i].id));
    CU_GO("cudaMalloc", cudaMalloc((void**)&c->part[i], (size_t)elems * sizeof(float)));
    CU_GO("cudaEventCreateWithFlags", cudaEventCreateWithFlags(&c->ev[i], cudaEventDisableTiming));
  }
  pthread_mutex_unlock(&g->nccl_mu);
  *out = c;
  return 0;
fail:
  pthread_mutex_unlock(&g->nccl_mu);
  px_gpu_chunk_destroy(g, c);
  return rc;
}

int px_gpu_load(px_gpu* g, px_gpu_chunk* c, const void* params, const float* mom, char* err,
                 size_t errlen) {
  gpu_dev* d = &g->d[c->owner];
  cudaStream_t s = d->s[c->sid];
  CU("cudaSetDevice", cudaSetDevice(d->id));
  CU("cudaMemcpyAsync", cudaMemcpyAsync(c->params, params, (size_t)c->elems * c->es,
                                        cudaMemcpyHostToDevice, s));
  if (mom && c->mom)
    CU("cudaMemcpyAsync", cudaMemcpyAsync(c->mom, mom, (size_t)c->elems * sizeof(float),
                                          cudaMemcpyHostToDevice, s));
  CU("cudaStreamSynchronize", cudaStreamSynchronize(s));
  return 0;
}

int px_gpu_accumulate(px_gpu* g, px_gpu_chunk* c, uint32_t rank, const float* x, char* err,
                       size_t errlen) {
  const int gi = (int)(rank % (uint32_t)g->n);
  gpu_dev* d = &g->d[gi];
  cudaStream_t s = d->s[c->sid];
  const size_t bytes = (size_t)c->elems * sizeof(float);
  stage_slot* sl = &d->stage[__atomic_fetch_add(&d->next_stage, 1u, __ATOMIC_RELAXED) % NSTAGE];
  int rc = 0;
  CU("cudaSetDevice", cudaSetDevice(d->id));
  pthread_mutex_lock(&sl->mu);
  /* the slot's previous copy (and kernel) must be done before its buffers are reused */
  CU_GO("cudaEventSynchronize", cudaEventSynchronize(sl->done));
  memcpy(sl->host, x, bytes);
  if (!c->has[gi]) {
    CU_GO("cudaMemcpyAsync", cudaMemcpyAsync(c->part[gi], sl->host, bytes,
                                             cudaMemcpyHostToDevice, s));
  } else {
    CU_GO("cudaMemcpyAsync", cudaMemcpyAsync(sl->dev, sl->host, bytes, cudaMemcpyHostToDevice, s));
    k_add<<<grid_for(c->elems), THREADS, 0, s>>>(c->part[gi], sl->dev, c->elems);
    CU_GO("k_add launch", cudaGetLastError());
  }
  CU_GO("cudaEventRecord", cudaEventRecord(sl->done, s));
  c->has[gi] = 1;
fail:
  pthread_mutex_unlock(&sl->mu);
  return rc;
}

/* Sums the partials onto the owner's part[] with one NCCL group (c's lock held). */
static int reduce(px_gpu* g, px_gpu_chunk* c, char* err, size_t errlen) {
  const size_t bytes = (size_t)c->elems * sizeof(float);
  int rc = 0;
  ncclResult_t nr;
  pthread_mutex_lock(&g->nccl_mu);
  for (int i = 0; i < g->n; i++) {
    gpu_dev* d = &g->d[i];
    CU_GO("cudaSetDevice", cudaSetDevice(d->id));
    if (!c->has[i])  /* no rank of this GPU contributed (fewer workers than GPUs, --elastic) */
      CU_GO("cudaMemsetAsync", cudaMemsetAsync(c->part[i], 0, bytes, d->s[c->sid]));
    CU_GO("cudaEventRecord", cudaEventRecord(c->ev[i], d->s[c->sid]));
    CU_GO("cudaStreamWaitEvent", cudaStreamWaitEvent(d->ns, c->ev[i], 0));
  }
  nr = ncclGroupStart();
  if (nr != ncclSuccess) {
    rc = nccl_err(err, errlen, "ncclGroupStart", nr);
    goto fail;
  }
  for (int i = 0; i < g->n; i++) {
    /* in place on the root; recvbuff is not used on the others */
    nr = ncclReduce(c->part[i], c->part[i], c->elems, ncclFloat32, ncclSum, c->owner,
                    g->d[i].comm, g->d[i].ns);
    if (nr != ncclSuccess) {
      ncclGroupEnd();
      rc = nccl_err(err, errlen, "ncclReduce", nr);
      goto fail;
    }
  }
  nr = ncclGroupEnd();
  if (nr != ncclSuccess) {
    rc = nccl_err(err, errlen, "ncclGroupEnd", nr);
    goto fail;
  }
  /* the chunk's streams continue after the reduction: the optimizer on the owner, the
   * next step's contributions everywhere */
  for (int i = 0; i < g->n; i++) {
    gpu_dev* d = &g->d[i];
    CU_GO("cudaSetDevice", cudaSetDevice(d->id));
    CU_GO("cudaEventRecord", cudaEventRecord(c->ev[i], d->ns));
    CU_GO("cudaStreamWaitEvent", cudaStreamWaitEvent(d->s[c->sid], c->ev[i], 0));
  }
fail:
  pthread_mutex_unlock(&g->nccl_mu);
  return rc;
}

static out_slot* out_take(gpu_dev* d) {
  out_slot* o = &d->out[__atomic_fetch_add(&d->next_out, 1u, __ATOMIC_RELAXED) % NOUT];
  pthread_mutex_lock(&o->mu);
  return o;
}

int px_gpu_step(px_gpu* g, px_gpu_chunk* c, const px_gpu_step_args* a, char* err,
                 size_t errlen) {
  bool any = false;
  for (int i = 0; i < g->n; i++) any = any || c->has[i];
  if (!any) {
    snprintf(err, errlen, "step without a contribution");
    return -1;
  }
  if (reduce(g, c, err, errlen) != 0) return -1;
  gpu_dev* d = &g->d[c->owner];
  cudaStream_t s = d->s[c->sid];
  const size_t n = c->elems, nb = n * c->es;
  const bool f32 = c->dtype == PX_DT_F32;
  uint16_t* bits1 = f32 && a->bits1_out ? a->bits1_out : NULL;
  uint8_t* enc1 = f32 && a->enc1_out ? a->enc1_out : NULL;
  step_k k;
  k.lr = a->lr;
  k.mu = a->momentum;
  k.wd = a->weight_decay;
  k.nw = (float)a->ncontrib;
  k.first = a->first;
  k.nest = a->nesterov;
  k.kind = a->kind;
  k.eps = a->eps;
  k.alpha = a->alpha;
  k.om = 1.0f - a->alpha;
  k.n = n;
  int rc = 0;
  CU("cudaSetDevice", cudaSetDevice(d->id));
  out_slot* o = out_take(d);
  uint8_t* e0 = a->enc0_out ? o->d_enc0 : NULL;
  uint16_t* b1 = bits1 ? o->d_bits1 : NULL;
  uint8_t* e1 = enc1 ? o->d_enc1 : NULL;
  if (c->dtype == PX_DT_F32)
    k_step<PX_DT_F32><<<grid_for(n), THREADS, 0, s>>>(c->params, c->mom, c->part[c->owner], k, e0,
                                                       b1, e1);
  else if (c->dtype == PX_DT_BF16)
    k_step<PX_DT_BF16><<<grid_for(n), THREADS, 0, s>>>(c->params, c->mom, c->part[c->owner], k,
                                                        e0, NULL, NULL);
  else
    k_step<PX_DT_F16><<<grid_for(n), THREADS, 0, s>>>(c->params, c->mom, c->part[c->owner], k,
                                                       e0, NULL, NULL);
  CU_GO("k_step launch", cudaGetLastError());
  CU_GO("cudaMemcpyAsync", cudaMemcpyAsync(o->h_params, c->params, nb, cudaMemcpyDeviceToHost, s));
  if (e0)
    CU_GO("cudaMemcpyAsync", cudaMemcpyAsync(o->h_enc0, e0, nb, cudaMemcpyDeviceToHost, s));
  if (b1)
    CU_GO("cudaMemcpyAsync", cudaMemcpyAsync(o->h_bits1, b1, n * 2, cudaMemcpyDeviceToHost, s));
  if (e1)
    CU_GO("cudaMemcpyAsync", cudaMemcpyAsync(o->h_enc1, e1, n * 2, cudaMemcpyDeviceToHost, s));
  CU_GO("cudaStreamSynchronize", cudaStreamSynchronize(s));
  memcpy(a->params_out, o->h_params, nb);
  if (a->bits0_out) memcpy(a->bits0_out, o->h_params, nb);
  if (e0) memcpy(a->enc0_out, o->h_enc0, nb);
  if (b1) memcpy(bits1, o->h_bits1, n * 2);
  if (e1) memcpy(enc1, o->h_enc1, n * 2);
  memset(c->has, 0, (size_t)g->n);
fail:
  pthread_mutex_unlock(&o->mu);
  return rc;
}

int px_gpu_read_bf16(px_gpu* g, px_gpu_chunk* c, uint16_t* out, char* err, size_t errlen) {
  if (c->dtype != PX_DT_F32) {
    snprintf(err, errlen, "the bf16 view needs an f32 chunk");
    return -1;
  }
  gpu_dev* d = &g->d[c->owner];
  cudaStream_t s = d->s[c->sid];
  int rc = 0;
  CU("cudaSetDevice", cudaSetDevice(d->id));
  out_slot* o = out_take(d);
  k_bf16<<<grid_for(c->elems), THREADS, 0, s>>>((const float*)c->params, o->d_bits1, c->elems);
  CU_GO("k_bf16 launch", cudaGetLastError());
  CU_GO("cudaMemcpyAsync", cudaMemcpyAsync(o->h_bits1, o->d_bits1, (size_t)c->elems * 2,
                                           cudaMemcpyDeviceToHost, s));
  CU_GO("cudaStreamSynchronize", cudaStreamSynchronize(s));
  memcpy(out, o->h_bits1, (size_t)c->elems * 2);
fail:
  pthread_mutex_unlock(&o->mu);
  return rc;
}

int px_gpu_read_mom(px_gpu* g, px_gpu_chunk* c, float* out, char* err, size_t errlen) {
  const size_t bytes = (size_t)c->elems * sizeof(float);
  if (!c->mom) {
    memset(out, 0, bytes);
    return 0;
  }
  gpu_dev* d = &g->d[c->owner];
  cudaStream_t s = d->s[c->sid];
  int rc = 0;
  CU("cudaSetDevice", cudaSetDevice(d->id));
  out_slot* o = out_take(d);
  CU_GO("cudaMemcpyAsync", cudaMemcpyAsync(o->h_params, c->mom, bytes, cudaMemcpyDeviceToHost, s));
  CU_GO("cudaStreamSynchronize", cudaStreamSynchronize(s));
  memcpy(out, o->h_params, bytes);
fail:
  pthread_mutex_unlock(&o->mu);
  return rc;
}
