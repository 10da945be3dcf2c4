/* The cpu backend: the sum, the optimizer and the views in host memory, on the compute
 * pool's threads. Per chunk its state is the sum of the step in progress (a px_buf_get
 * buffer, the first contribution's own buffer when it may be kept); the momentum lives
 * in t->mom / c->mom. Element order and float operations are fixed and the build
 * disables FMA contraction, so results are bit-reproducible. */
#include <stdlib.h>
#include <string.h>

#include "codec/codec.h"
#include "codec/diff.h"
#include "codec/frame.h"
#include "server.h"

typedef struct cpu_chunk {
  float* acc; /* this step's sum, NULL before the first contribution */
} cpu_chunk;

static int cpu_tensor_create(px_backend* b, px_tensor_state* t, char* err, size_t errlen) {
  cpu_chunk* k = calloc(t->nchunks, sizeof *k);
  float* mom = b->momentum ? px_big_alloc(t->numel * sizeof(float)) : NULL;
  if (!k || (b->momentum && !mom)) {
    free(k);
    px_big_free(mom, t->numel * sizeof(float));
    snprintf(err, errlen, "tensor '%s': out of memory for the optimizer state", t->name);
    return -1;
  }
  t->be = k;
  t->mom = mom;
  for (uint32_t i = 0; i < t->nchunks; i++) {
    t->chunks[i].be = &k[i];
    t->chunks[i].mom = mom ? mom + (uint64_t)i * t->chunk_elems : NULL;
  }
  return 0;
}

static void cpu_tensor_destroy(px_backend* b, px_tensor_state* t) {
  cpu_chunk* k = t->be;
  if (k)
    for (uint32_t i = 0; i < t->nchunks; i++) px_buf_put(k[i].acc, b->chunk_bytes);
  free(k);
  t->be = NULL;
  if (t->mom) px_big_free(t->mom, t->numel * sizeof(float));
  t->mom = NULL;
}

static void cpu_chunk_load(px_backend* b, px_tensor_state* t, px_chunk_state* c,
                           const float* mom) {
  (void)b;
  (void)t;
  if (mom && c->mom) memcpy(c->mom, mom, (size_t)c->elems * sizeof(float));
}

static int cpu_accumulate(px_backend* b, px_tensor_state* t, px_chunk_state* c,
                          uint32_t rank, float* g, bool give, bool* taken) {
  (void)t;
  (void)rank;
  cpu_chunk* k = c->be;
  *taken = false;
  if (!k->acc) {
    if (give) {
      k->acc = g;
      *taken = true;
      return 0;
    }
    k->acc = px_buf_get(b->chunk_bytes);
    if (!k->acc) return -1;
    memcpy(k->acc, g, (size_t)c->elems * sizeof(float));
    return 0;
  }
  px_f32_add(k->acc, g, c->elems);
  return 0;
}

static uint8_t* scratch_or_die(int which, size_t bytes) {
  uint8_t* p = px_scratch(which, bytes);
  if (!p) px_backend_fatal("cpu", "out of memory for step scratch buffers");
  return p;
}

void px_step_outputs(const px_tensor_state* t, size_t n, const void* old_bits,
                      const void* new_bits, px_step_io* io) {
  const int w = (int)t->elem;
  if (io->bits[0] && io->bits[0] != new_bits) memcpy(io->bits[0], new_bits, n * t->elem);
  const bool view1 = t->dtype == PX_DT_F32 && (io->bits[1] || io->enc[1]);
  uint16_t* new16 = io->bits[1];
  if (view1 && !new16) new16 = (uint16_t*)scratch_or_die(3, n * 2);
  if (view1) px_f32_to_bf16_n(new_bits, new16, n);
  if (!io->enc[0] && !(view1 && io->enc[1])) return;
  uint8_t* d = scratch_or_die(1, n * t->elem);
  if (io->enc[0]) {
    px_delta(new_bits, old_bits, n, w, d);
    px_zigzag_shuffle(d, n, w, io->enc[0]);
  }
  if (view1 && io->enc[1]) {
    uint16_t* old16 = (uint16_t*)scratch_or_die(2, n * 2);
    px_f32_to_bf16_n(old_bits, old16, n);
    px_delta(new16, old16, n, 2, d);
    px_zigzag_shuffle(d, n, 2, io->enc[1]);
  }
}

/* Scratch use: 0 the old native bits, 3 an f32 copy of 16-bit parameters (then
 * px_step_outputs: 1..3). */
static void cpu_step(px_backend* b, px_tensor_state* t, px_chunk_state* c, px_step_io* io) {
  cpu_chunk* k = c->be;
  const size_t n = c->elems, nb = n * t->elem;
  uint8_t* old = NULL; /* the old bits, only for a delta the frames want */
  if (io->enc[0] || io->enc[1]) {
    old = scratch_or_die(0, nb);
    memcpy(old, c->params, nb);
  }
  if (!k->acc) px_backend_fatal("cpu", "step without a contribution");
  if (t->dtype == PX_DT_F32) {
    px_sgd_apply(&b->sgd, c->params, c->mom, io->first, k->acc, n, io->ncontrib);
  } else {
    float* p32 = (float*)scratch_or_die(3, n * sizeof(float));
    if (t->dtype == PX_DT_BF16) px_bf16_to_f32_n(c->params, p32, n);
    else px_f16_to_f32_n(c->params, p32, n);
    px_sgd_apply(&b->sgd, p32, c->mom, io->first, k->acc, n, io->ncontrib);
    if (t->dtype == PX_DT_BF16) px_f32_to_bf16_n(p32, c->params, n);
    else px_f32_to_f16_n(p32, c->params, n);
  }
  px_buf_put(k->acc, b->chunk_bytes);
  k->acc = NULL;
  px_step_outputs(t, n, old, c->params, io);
}

static void cpu_read_view(px_backend* b, px_tensor_state* t, px_chunk_state* c, int view,
                          void* out) {
  (void)b;
  if (view == 1) px_f32_to_bf16_n(c->params, out, c->elems);
  else memcpy(out, c->params, (size_t)c->elems * t->elem);
}

static void cpu_snapshot(px_backend* b, px_tensor_state* t, px_chunk_state* c, void* params,
                         float* mom) {
  (void)b;
  memcpy(params, c->params, (size_t)c->elems * t->elem);
  if (mom && c->mom) memcpy(mom, c->mom, (size_t)c->elems * sizeof(float));
}

static void cpu_destroy(px_backend* b) { free(b); }

static const px_backend_ops cpu_ops = {
    cpu_tensor_create, cpu_tensor_destroy, cpu_chunk_load, cpu_accumulate,
    cpu_step,          cpu_read_view,      cpu_snapshot,   cpu_destroy,
};

int px_backend_cpu_create(const px_config* cfg, px_backend** out, char* err, size_t errlen) {
  px_backend* b = calloc(1, sizeof *b);
  if (!b) {
    snprintf(err, errlen, "out of memory at start");
    return -1;
  }
  b->ops = &cpu_ops;
  b->name = "cpu";
  b->ndev = 1;
  snprintf(b->desc, sizeof b->desc, "cpu (%u compute threads)", cfg->threads);
  *out = b;
  return 0;
}
