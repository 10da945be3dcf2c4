/* Push calls (push_handler.h). */
#include "push_handler.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calls.h"
#include "codec/dtype.h"
#include "codec/payload.h"
#include "paramex.pb-c.h"
#include "util/bufpool.h"
#include "util/log.h"
#include "util/scratch.h"
#include "wire/chunk_msg.h"

#define ERRLEN 512

typedef struct push_call {
  px_pusher p;       /* first: the stall's owner is found from it */
  px_srv_call* call;
  px_job job;
  px_msg* msg;       /* the message being processed */
} push_call;

static void push_on_done(px_srv_call* call, void* ctx) {
  (void)call;
  push_call* ps = ctx;
  atomic_fetch_sub(&ps->p.srv->active_calls, 1);
  px_msg_free(ps->msg);
  px_pusher_release(&ps->p);
  free(ps);
}

void px_pusher_release(px_pusher* p) {
  px_buf_put(p->buf, p->srv->cfg.chunk_bytes);
  p->buf = NULL;
}

void px_push_resume(px_agg_stall* list) {
  while (list) {
    px_agg_stall* next = list->next;
    list->resume(list);
    list = next;
  }
}

static void push_call_resume(px_agg_stall* s) {
  push_call* ps = (push_call*)((char*)s - offsetof(push_call, p.stall));
  ps->p.buf = s->buf;
  s->buf = NULL;
  px_srv_call_read(ps->call);
  px_srv_call_unref(ps->call); /* the stall's reference */
}

/* The chunk the header names, checked against the tensor; NULL with status and err. */
static px_chunk_state* push_target(px_pusher* ps, px_tensor_state** tp, int* status, char* err,
                                   size_t errlen) {
  px_server* srv = ps->srv;
  const px_chunk* h = &ps->h;
  *status = px_members_check(&srv->members, h->worker_id, h->incarnation, err, errlen);
  if (*status != PX_ST_OK) return NULL;
  px_tensor_state* t = px_store_tensor(&srv->store, h->tensor_id);
  if (!t) {
    *status = PX_ST_NOT_FOUND;
    snprintf(err, errlen, "unknown tensor id %u", h->tensor_id);
    return NULL;
  }
  *status = PX_ST_OUT_OF_RANGE;
  if (h->chunk >= t->nchunks) {
    snprintf(err, errlen, "tensor '%s': chunk %u out of range (it has %u)", t->name, h->chunk,
             t->nchunks);
    return NULL;
  }
  px_chunk_state* c = &t->chunks[h->chunk];
  if (!c->own) {
    *status = px_store_foreign(&srv->store, t, h->chunk, err, errlen);
    return NULL;
  }
  *status = PX_ST_INVALID_ARGUMENT;
  const int pdt = (int)h->dtype;
  if (pdt != t->dtype && !(t->dtype == PX_DT_F32 && pdt == PX_DT_BF16)) {
    snprintf(err, errlen, "tensor '%s': a %s payload cannot be pushed to a %s tensor", t->name,
             px_dtype_name(pdt), px_dtype_name(t->dtype));
    return NULL;
  }
  if (h->encoding != PX_ENC_RAW && h->encoding != PX_ENC_SHUFFLE_ZSTD) {
    snprintf(err, errlen, "tensor '%s' chunk %u: push encoding %u is not supported", t->name,
             h->chunk, h->encoding);
    return NULL;
  }
  const size_t bytes = (size_t)c->elems * px_dtype_size(pdt);
  if (h->raw_len != bytes || (h->encoding == PX_ENC_RAW && h->payload_len != bytes)) {
    snprintf(err, errlen, "tensor '%s' chunk %u: raw_len %u and payload %zu bytes, expected %zu",
             t->name, h->chunk, h->raw_len, h->payload_len, bytes);
    return NULL;
  }
  *tp = t;
  return c;
}

/* inf and NaN in a contribution turn every parameter they touch into NaN: counted and
 * logged (the first of the server's life), or refused with --reject-nonfinite. */
static int nonfinite_check(px_pusher* ps, px_tensor_state* t, const uint32_t* bits, uint32_t n,
                           char* err, size_t errlen) {
  uint32_t any = 0;
  for (uint32_t i = 0; i < n; i++) any |= (bits[i] & 0x7f800000u) == 0x7f800000u;
  if (!any) return PX_ST_OK;
  uint32_t count = 0, first = 0;
  for (uint32_t i = n; i-- > 0;)
    if ((bits[i] & 0x7f800000u) == 0x7f800000u) count++, first = i;
  float v;
  memcpy(&v, &bits[first], sizeof v);
  px_server* srv = ps->srv;
  const bool first_seen = atomic_fetch_add(&srv->ctr.nonfinite_chunks, 1) == 0;
  snprintf(err, errlen,
           "tensor '%.255s' chunk %u of worker %u, step %" PRIu64 ": %u non-finite gradient "
           "value%s (the first at element %u: %g)%s", t->name, ps->h.chunk, ps->h.worker_id,
           ps->h.step, count, count == 1 ? "" : "s", first, (double)v,
           srv->cfg.reject_nonfinite ? ": refused (--reject-nonfinite)" : "");
  if (srv->cfg.reject_nonfinite) return PX_ST_INVALID_ARGUMENT;
  if (first_seen) px_warn("%s; applied (--reject-nonfinite refuses them)", err);
  return PX_ST_OK;
}

/* Decodes the payload into the call's receive buffer as f32; a status. */
static int push_decode(px_pusher* ps, px_tensor_state* t, px_chunk_state* c, char* err,
                       size_t errlen) {
  const size_t cb = ps->srv->cfg.chunk_bytes;
  const int pdt = (int)ps->h.dtype;
  const size_t pw = px_dtype_size(pdt), bytes = (size_t)c->elems * pw;
  if (!ps->buf) ps->buf = px_buf_get(cb);
  /* the receive buffer or scratch: private, so it may be written before the check */
  void* dst = !ps->buf ? NULL : pdt == PX_DT_F32 ? (void*)ps->buf : (void*)px_scratch(2, bytes);
  if (!dst) {
    snprintf(err, errlen, "out of memory for a receive buffer");
    return PX_ST_RESOURCE_EXHAUSTED;
  }
  char derr[200];
  px_decode_result dr = px_chunk_decode_private(&ps->h, ps->seg, ps->nseg, dst, c->elems,
                                                (int)pw, derr, sizeof derr);
  if (dr != PX_DECODE_OK) {
    snprintf(err, errlen, "tensor '%s' chunk %u: %s", t->name, ps->h.chunk, derr);
    return dr == PX_DECODE_CHECKSUM ? PX_ST_DATA_LOSS : PX_ST_INVALID_ARGUMENT;
  }
  if (pdt == PX_DT_BF16) px_bf16_to_f32_n(dst, ps->buf, c->elems);
  else if (pdt == PX_DT_F16) px_f16_to_f32_n(dst, ps->buf, c->elems);
  return nonfinite_check(ps, t, (const uint32_t*)ps->buf, c->elems, err, errlen);
}

static void count_chunk(px_pusher* ps, px_tensor_state* t, px_chunk_state* c) {
  px_server* srv = ps->srv;
  const size_t raw = (size_t)c->elems * t->elem, wire = ps->wire;
  ps->accepted++;
  atomic_fetch_add(&srv->ctr.push_chunks, 1);
  atomic_fetch_add(&srv->ctr.push_raw_bytes, raw);
  atomic_fetch_add(&srv->ctr.push_wire_bytes, wire);
  atomic_fetch_add(&srv->ctr.push_wire_enc[ps->h.encoding & 3], wire);
  atomic_fetch_add(&t->push_raw, raw);
  atomic_fetch_add(&t->push_wire, wire);
  atomic_fetch_add(&srv->members.w[ps->h.worker_id].chunks_pushed, 1);
  px_members_pushed(&srv->members, ps->h.worker_id, ps->h.step);
}

px_agg_result px_pusher_process(px_pusher* ps, px_agg_after* after, int* status, char* err,
                                size_t errlen) {
  px_server* srv = ps->srv;
  px_tensor_state* t = NULL;
  px_chunk_state* c = push_target(ps, &t, status, err, errlen);
  if (!c) return PX_AGG_REFUSED;
  if ((*status = push_decode(ps, t, c, err, errlen)) != PX_ST_OK) return PX_AGG_REFUSED;
  px_members_seen(&srv->members, ps->h.worker_id);
  px_agg_result r = px_agg_push(&srv->agg, t, c, ps->h.step, ps->h.worker_id, &ps->buf,
                                &ps->stall, after, status, err, errlen);
  if (r == PX_AGG_DUPLICATE) {
    ps->duplicate++;
    atomic_fetch_add(&srv->ctr.push_duplicates, 1);
  } else if (r != PX_AGG_REFUSED) {
    count_chunk(ps, t, c);
  }
  return r;
}

static void push_job(px_job* j) {
  push_call* ps = (push_call*)((char*)j - offsetof(push_call, job));
  px_server* srv = ps->p.srv;
  px_agg_after after = {0};
  int status = PX_ST_OK;
  char err[ERRLEN];
  px_srv_call_ref(ps->call); /* the stall's, should the chunk keep our buffer */
  px_agg_result r = px_pusher_process(&ps->p, &after, &status, err, sizeof err);
  px_msg_free(ps->msg);
  ps->msg = NULL;
  if (r != PX_AGG_STALLED) px_srv_call_unref(ps->call);
  if (r == PX_AGG_REFUSED) px_reject(&srv->ctr, ps->call, status, err);
  else if (r != PX_AGG_STALLED) px_srv_call_read(ps->call); /* receive while we encode */
  px_agg_finish(&srv->agg, &after);
  px_push_resume(after.resumed);
  px_srv_call_unref(ps->call); /* the message's */
}

static void push_on_message(px_srv_call* call, void* ctx, px_msg* msg, bool ok) {
  push_call* ps = ctx;
  px_server* srv = ps->p.srv;
  if (!ok) return; /* cancelled: nothing to answer */
  if (!msg) {
    Paramex__V1__PushResponse resp = PARAMEX__V1__PUSH_RESPONSE__INIT;
    resp.accepted = ps->p.accepted;
    resp.duplicate = ps->p.duplicate;
    px_reply(call, &resp.base);
    return;
  }
  char err[ERRLEN];
  ps->msg = msg;
  ps->p.seg = px_msg_segments(msg, &ps->p.nseg);
  ps->p.wire = px_msg_len(msg);
  if (!ps->p.seg && px_msg_len(msg) > 0) {
    px_reject(&srv->ctr, call, PX_ST_RESOURCE_EXHAUSTED, "out of memory reading a PushChunk");
    return;
  }
  if (px_chunk_parse(PX_CHUNK_PUSH, ps->p.seg, ps->p.nseg, &ps->p.h, err, sizeof err) != 0) {
    px_reject(&srv->ctr, call, PX_ST_INVALID_ARGUMENT, err);
    return;
  }
  px_srv_call_ref(call);
  /* A small chunk costs less to process here, on the completion-queue thread, than a
   * hand-off to the pool costs in thread wake-ups; larger ones go to the pool. Small by
   * its decoded size: a compressed message may expand to a whole chunk. */
  if (px_msg_len(msg) <= PX_INLINE_PUSH_BYTES && ps->p.h.raw_len <= PX_INLINE_PUSH_BYTES)
    push_job(&ps->job);
  else px_taskpool_submit(srv->pool, &ps->job);
}

/* A cancelled call stops waiting; its held contribution stays counted. */
static void push_on_closed(px_srv_call* call, void* ctx, bool cancelled) {
  (void)cancelled;
  push_call* ps = ctx;
  if (px_agg_unstall(&ps->p.srv->agg, &ps->p.stall)) px_srv_call_unref(call);
}

static const px_srv_call_cbs push_cbs = {push_on_message, NULL, push_on_closed, push_on_done};

void px_push_on_call(void* s, px_srv_call* call, px_msg* req) {
  px_server* srv = s;
  (void)req;
  push_call* ps = px_data_call_new(&srv->ctr, &srv->store, &srv->waiters, srv->server_id, call,
                                  sizeof *ps);
  if (!ps) return;
  ps->p.srv = srv;
  ps->p.stall.resume = push_call_resume;
  ps->call = call;
  ps->job.fn = push_job;
  atomic_fetch_add(&srv->active_calls, 1);
  px_srv_call_set(call, &push_cbs, ps);
  px_srv_call_read(call);
}
