/* Push operations (push_op.h). */
#include "push_op.h"

#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "codec/checksum.h"
#include "codec/dtype.h"
#include "codec/payload.h"
#include "codec/zstdframe.h"
#include "errors.h"
#include "paramex.pb-c.h"
#include "tensor.h"
#include "wire/chunk_msg.h"

/* An encoded payload of ours, alive until gRPC releases it. */
typedef struct push_buf {
  pmx_op* op;
  uint8_t* data;
} push_buf;

/* Release of a zero-copy gradient slice. */
static void slice_released(void* ctx) { px_op_slices(ctx, -1); }

/* Release of an encoded payload: frees it, then counts the slice as released. */
static void push_buf_released(void* ctx) {
  push_buf* pb = ctx;
  pmx_op* op = pb->op;
  free(pb->data);
  free(pb);
  px_op_slices(op, -1);
}

/* The payload of a chunk of n elements at body in t's push mode: a buffer of ours (h's
 * dtype, encoding, raw_len and checksum set, *body_len its length), or NULL when the
 * chunk goes raw (a mode that does not pay, or no memory). */
static uint8_t* encode_chunk(const pmx_tensor* t, const uint8_t* body, size_t n, px_chunk* h,
                             size_t* body_len) {
  const pmx_push_mode mode = t->push_mode;
  int w = (int)t->elem;
  const uint8_t* src = body;
  uint8_t* cast = NULL;
  if (mode & PMX_PUSH_BF16) {
    cast = malloc(n * 2);
    if (cast) {
      px_f32_to_bf16_n((const float*)(const void*)body, (uint16_t*)cast, n);
      src = cast;
      w = 2;
    }
  }
  const size_t raw_len = n * (size_t)w;
  uint8_t* z = NULL;
  size_t zl = 0;
  if (mode & PMX_PUSH_ZSTD) {
    size_t cap = px_zstd_bound(raw_len);
    z = malloc(cap);
    zl = z ? px_encode_shuffle(src, n, w, 1, z, cap) : 0;
    if (zl == 0 || zl * 100 >= raw_len * 95) {
      free(z);
      z = NULL;
    }
  }
  if (!z && !cast) return NULL;
  h->dtype = src == cast ? PX_DT_BF16 : (uint32_t)t->dtype;
  h->raw_len = (uint32_t)raw_len;
  h->checksum = px_checksum(src, raw_len);
  if (z) {
    free(cast);
    *body_len = zl;
    h->encoding = PX_ENC_SHUFFLE_ZSTD;
    return z;
  }
  *body_len = raw_len;
  return cast;
}

size_t px_push_chunk_encode(pmx_client* c, const pmx_tensor* t, uint32_t ci, const void* grad,
                            uint32_t worker_id, uint64_t incarnation, uint64_t step,
                            uint8_t* head, const uint8_t** body, size_t* body_len,
                            uint8_t** owned) {
  const uint64_t elems = px_tensor_chunk_elems(t, ci);
  const size_t bytes = (size_t)(elems * t->elem);
  const uint8_t* raw = (const uint8_t*)grad + (uint64_t)ci * t->chunk_elems * t->elem;
  px_chunk h = {0};
  h.worker_id = worker_id;
  h.incarnation = incarnation;
  h.step = step;
  h.tensor_id = t->id;
  h.chunk = ci;
  h.dtype = (uint32_t)t->dtype;
  h.encoding = PX_ENC_RAW;
  *body_len = bytes;
  *owned = NULL;
  if (t->push_mode != PMX_PUSH_RAW && pmx_tensor_bytes(t) >= t->push_min_bytes)
    *owned = encode_chunk(t, raw, (size_t)elems, &h, body_len);
  if (*owned) {
    *body = *owned;
  } else {
    *body = raw;
    h.raw_len = (uint32_t)bytes;
    h.checksum = px_checksum(raw, bytes);
  }
  size_t hl = px_chunk_encode_header(PX_CHUNK_PUSH, &h, *body_len, head, PX_CHUNK_HDR_MAX);
  atomic_fetch_add(&c->push_chunks, 1);
  atomic_fetch_add(&c->push_raw, bytes);
  atomic_fetch_add(&c->push_wire, hl + *body_len);
  return hl;
}

/* Sends the chunk at the cursor; the last one also half-closes. */
static void push_send_next(pmx_op* op) {
  pmx_tensor* t = op->tensors[op->ti];
  uint8_t head[PX_CHUNK_HDR_MAX];
  const uint8_t* body;
  size_t body_len;
  uint8_t* owned;
  size_t hl = px_push_chunk_encode(op->client, t, px_tensor_held_chunk(t, op->ci),
                                   op->bufs[op->ti], op->worker_id,
                                   op->incarnation, op->step, head, &body, &body_len, &owned);
  push_buf* pb = NULL;
  if (owned) {
    pb = malloc(sizeof *pb);
    if (!pb) {
      free(owned);
      px_op_set_error(op, PMX_ERR_NO_MEMORY, "Push: out of memory");
      px_cli_call_cancel(op->call);
      return;
    }
    pb->op = op;
    pb->data = owned;
  }
  if (++op->ci == px_tensor_held(t)) {
    op->ci = 0;
    op->ti++;
    px_op_skip_empty(op);
  }
  bool last = op->ti == op->n;
  px_op_slices(op, 1);
  px_out out = {head, hl, body, body_len, pb ? push_buf_released : slice_released,
                pb ? (void*)pb : (void*)op};
  px_cli_call_send(op->call, &out, last);
}

static void push_on_sent(px_cli_call* call, void* ctx, bool ok) {
  (void)call;
  pmx_op* op = ctx;
  if (ok && op->ti < op->n) push_send_next(op);
  /* After the last send (or a failure) the status tells the rest. */
}

static void push_on_message(px_cli_call* call, void* ctx, px_msg* m) {
  (void)call;
  pmx_op* op = ctx;
  if (!m) return;
  size_t len;
  const uint8_t* p = px_msg_flat(m, &len);
  Paramex__V1__PushResponse* r = p ? paramex__v1__push_response__unpack(NULL, len, p) : NULL;
  if (!r) {
    px_op_set_error(op, PMX_ERR_PROTOCOL, "Push: malformed PushResponse");
  } else {
    op->accepted = r->accepted;
    op->duplicate = r->duplicate;
    paramex__v1__push_response__free_unpacked(r, NULL);
  }
  px_msg_free(m);
}

static const px_cli_call_cbs push_cbs = {push_on_message, push_on_sent, px_op_on_done};

/* Starts (or restarts) the Push call of op from its first chunk, as the client's current
 * incarnation. */
static pmx_status push_start(pmx_op* op, bool retry) {
  (void)retry;
  pmx_client* c = op->client;
  op->ti = op->ci = 0;
  px_op_skip_empty(op); /* a cluster op's kid starts only where its shard holds a chunk */
  op->accepted = op->duplicate = 0;
  pthread_mutex_lock(&c->mu);
  op->worker_id = c->worker_id;
  op->incarnation = c->incarnation;
  pthread_mutex_unlock(&c->mu);
  if (op->incarnation == 0)
    return px_fail(PMX_ERR_FAILED_PRECONDITION, "pmx_push: this client has not joined (call "
                   "pmx_join first)");
  px_op_begin_call(op);
  op->call = px_cli_call_start(c->ch, PX_M_PUSH, c->timeout_ms, false, &push_cbs, op);
  if (!op->call) return px_fail(PMX_ERR_NO_MEMORY, "pmx_push: out of memory");
  px_cli_call_read(op->call); /* the PushResponse, once the stream is closed */
  push_send_next(op);
  px_cli_call_unref(op->call);
  return PMX_OK;
}

static pmx_status push_finish(pmx_op* op, pmx_status st) {
  (void)op;
  return st;
}

const px_op_kind px_push_kind = {"Push", push_start, push_finish, false};

pmx_status px_push_async(pmx_client* c, uint64_t step, size_t n, pmx_tensor* const* tensors,
                          const void* const* grads, pmx_op** out) {
  pmx_status st = px_op_check_args(c, n, tensors, grads, "pmx_push");
  if (st != PMX_OK) return st;
  if (!out) return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_push: no op pointer");
  pmx_op* op = px_op_new(c, &px_push_kind, n, tensors, grads);
  if (!op) return px_fail(PMX_ERR_NO_MEMORY, "pmx_push: out of memory");
  op->step = step;
  st = push_start(op, false);
  if (st != PMX_OK) {
    px_op_free(op);
    return st;
  }
  *out = op;
  return PMX_OK;
}
