/* The cpu backend (cpu.h). Per chunk its state is the sum of the step in progress (a
 * px_buf_get buffer: the first contribution's own buffer when it may be kept); the
 * momentum of a tensor is one array of numel f32. Element order and float operations are
 * fixed and the build disables FMA contraction, so results are bit-reproducible. */
#include "backend/cpu.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/optimizer.h"
#include "backend/step_io.h"
#include "codec/dtype.h"
#include "util/bufpool.h"
#include "util/mem.h"
#include "util/scratch.h"

typedef struct cpu_tensor {
  px_be_tensor_desc d;
  size_t es;    /* bytes per element */
  float* mom;   /* numel f32 with momentum, else NULL */
  float** acc;  /* [nchunks]: the step's sum, NULL before the first contribution */
} cpu_tensor;

#define CPU(t) ((cpu_tensor*)(void*)(t))

static uint8_t* chunk_params(const cpu_tensor* t, uint32_t i) {
  return (uint8_t*)t->d.params + (uint64_t)i * t->d.chunk_elems * t->es;
}

static float* chunk_mom(const cpu_tensor* t, uint32_t i) {
  return t->mom ? t->mom + (uint64_t)i * t->d.chunk_elems : NULL;
}

static int cpu_tensor_create(px_backend* b, const px_be_tensor_desc* d, px_be_tensor** out,
                             char* err, size_t errlen) {
  cpu_tensor* t = calloc(1, sizeof *t);
  float** acc = calloc(d->nchunks ? d->nchunks : 1, sizeof *acc);
  float* mom = b->momentum ? px_big_alloc(d->numel * sizeof(float)) : NULL;
  if (!t || !acc || (b->momentum && !mom)) {
    free(t);
    free(acc);
    px_big_free(mom, d->numel * sizeof(float));
    snprintf(err, errlen, "tensor '%s': out of memory for the optimizer state", d->name);
    return -1;
  }
  t->d = *d;
  t->es = px_dtype_size(d->dtype);
  t->mom = mom;
  t->acc = acc;
  *out = (px_be_tensor*)(void*)t;
  return 0;
}

static void cpu_tensor_destroy(px_backend* b, px_be_tensor* bt) {
  cpu_tensor* t = CPU(bt);
  if (!t) return;
  for (uint32_t i = 0; i < t->d.nchunks; i++) px_buf_put(t->acc[i], b->chunk_bytes);
  free(t->acc);
  px_big_free(t->mom, t->d.numel * sizeof(float));
  free(t);
}

static void cpu_chunk_load(px_backend* b, px_be_tensor* bt, uint32_t i, const float* mom) {
  (void)b;
  cpu_tensor* t = CPU(bt);
  float* m = chunk_mom(t, i);
  if (mom && m) memcpy(m, mom, (size_t)px_be_chunk_elems(&t->d, i) * sizeof(float));
}

static int cpu_accumulate(px_backend* b, px_be_tensor* bt, uint32_t i, uint32_t rank, float* g,
                          bool give, bool* taken) {
  (void)rank;
  cpu_tensor* t = CPU(bt);
  *taken = false;
  const uint32_t n = px_be_chunk_elems(&t->d, i);
  if (!t->acc[i]) {
    if (give) {
      t->acc[i] = g;
      *taken = true;
      return 0;
    }
    t->acc[i] = px_buf_get(b->chunk_bytes);
    if (!t->acc[i]) return -1;
    memcpy(t->acc[i], g, (size_t)n * sizeof(float));
    return 0;
  }
  px_f32_add(t->acc[i], g, n);
  return 0;
}

static uint8_t* scratch_or_die(int which, size_t bytes) {
  uint8_t* p = px_scratch(which, bytes);
  if (!p) px_backend_fatal("cpu", "out of memory for step scratch buffers");
  return p;
}

/* Scratch use: 0 the old native bits, 3 an f32 copy of 16-bit parameters (then
 * px_step_outputs: 1..3). */
static void cpu_step(px_backend* b, px_be_tensor* bt, uint32_t i, px_step_io* io) {
  cpu_tensor* t = CPU(bt);
  const size_t n = px_be_chunk_elems(&t->d, i), nb = n * t->es;
  uint8_t* params = chunk_params(t, i);
  float* mom = chunk_mom(t, i);
  uint8_t* old = NULL; /* the old bits, only for a delta the frames want */
  if (io->enc[0] || io->enc[1]) {
    old = scratch_or_die(0, nb);
    memcpy(old, params, nb);
  }
  if (!t->acc[i]) px_backend_fatal("cpu", "step without a contribution");
  px_sgd o = b->sgd;
  o.lr = io->lr;
  if (t->d.dtype == PX_DT_F32) {
    px_sgd_apply(&o, (float*)params, mom, io->first, t->acc[i], n, io->ncontrib);
  } else {
    float* p32 = (float*)scratch_or_die(3, n * sizeof(float));
    if (t->d.dtype == PX_DT_BF16) px_bf16_to_f32_n((const uint16_t*)params, p32, n);
    else px_f16_to_f32_n((const uint16_t*)params, p32, n);
    px_sgd_apply(&o, p32, mom, io->first, t->acc[i], n, io->ncontrib);
    if (t->d.dtype == PX_DT_BF16) px_f32_to_bf16_n(p32, (uint16_t*)params, n);
    else px_f32_to_f16_n(p32, (uint16_t*)params, n);
  }
  px_buf_put(t->acc[i], b->chunk_bytes);
  t->acc[i] = NULL;
  px_step_outputs(t->d.dtype, n, old, params, io);
}

static void cpu_read_view(px_backend* b, px_be_tensor* bt, uint32_t i, int view, void* out) {
  (void)b;
  cpu_tensor* t = CPU(bt);
  const size_t n = px_be_chunk_elems(&t->d, i);
  if (view == 1) px_f32_to_bf16_n((const float*)(void*)chunk_params(t, i), out, n);
  else memcpy(out, chunk_params(t, i), n * t->es);
}

static void cpu_snapshot(px_backend* b, px_be_tensor* bt, uint32_t i, void* params, float* mom) {
  (void)b;
  cpu_tensor* t = CPU(bt);
  const size_t n = px_be_chunk_elems(&t->d, i);
  float* m = chunk_mom(t, i);
  memcpy(params, chunk_params(t, i), n * t->es);
  if (mom && m) memcpy(mom, m, n * sizeof(float));
}

static void cpu_destroy(px_backend* b) { free(b); }

static const px_backend_ops cpu_ops = {
    cpu_tensor_create, cpu_tensor_destroy, cpu_chunk_load, cpu_accumulate,
    cpu_step,          cpu_read_view,      cpu_snapshot,   cpu_destroy,
};

int px_backend_cpu_create(const px_backend_opts* o, px_backend** out, char* err, size_t errlen) {
  px_backend* b = calloc(1, sizeof *b);
  if (!b) {
    snprintf(err, errlen, "out of memory at start");
    return -1;
  }
  b->ops = &cpu_ops;
  b->name = "cpu";
  b->ndev = 1;
  snprintf(b->desc, sizeof b->desc, "cpu (%u compute threads)", o->threads);
  *out = b;
  return 0;
}
