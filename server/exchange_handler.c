/* Exchange streams (exchange_handler.h). */
#include "exchange_handler.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calls.h"
#include "paramex.pb-c.h"
#include "pull_handler.h"
#include "push_handler.h"
#include "util/log.h"
#include "wire/pb_fields.h"

#define ERRLEN 512

/* StepResponse field numbers (paramex.proto) */
enum { F_CODE = 1, F_MESSAGE = 2, F_ACCEPTED = 3, F_DUPLICATE = 4, F_PULL_CHUNKS = 5 };

typedef struct ex_call {
  px_pusher push;
  px_puller pull;
  px_srv_call* call;
  px_job job;                     /* a large step's pushes run on the pool */
  px_msg* msg;                    /* the StepRequest being answered */
  Paramex__V1__StepRequest* req;  /* ... unpacked */
  size_t next;                    /* its next push chunk */
  px_iov seg;                     /* that chunk's bytes */
  uint8_t* resp;                  /* the StepResponse being built */
  size_t len, cap;
  bool oom;                       /* it could not grow */
  bool in_step;                   /* counted in active_calls */
  bool idle;                      /* in srv->idle_exchanges */
  struct ex_call *prev, *next_idle;
} ex_call;

#define EX_OF_PUSH_STALL(s) ((ex_call*)((char*)(s) - offsetof(ex_call, push.stall)))
#define EX_OF_PULL(p) ((ex_call*)((char*)(p) - offsetof(ex_call, pull)))

/* ---- the response, encoded by hand (its chunks are frames already) ----------------------- */

static bool resp_reserve(ex_call* ex, size_t more) {
  if (ex->oom) return false;
  if (ex->len + more <= ex->cap) return true;
  size_t cap = ex->cap ? ex->cap : 4096;
  while (cap < ex->len + more) cap *= 2;
  uint8_t* p = realloc(ex->resp, cap);
  if (!p) {
    ex->oom = true;
    return false;
  }
  ex->resp = p;
  ex->cap = cap;
  return true;
}

static void put_uint_field(ex_call* ex, uint32_t field, uint64_t v) {
  if (v == 0 || !resp_reserve(ex, 1 + PX_PB_VARINT_MAX)) return; /* proto3: zero is the default */
  ex->len += px_pb_put_uint(ex->resp + ex->len, field, v);
}

/* A length-delimited field made of the bytes a[0..al) then b[0..bl). */
static void put_len_field(ex_call* ex, uint32_t field, const void* a, size_t al, const void* b,
                          size_t bl) {
  if (!resp_reserve(ex, PX_PB_LEN_HEAD_MAX + al + bl)) return;
  ex->len += px_pb_put_len_head(ex->resp + ex->len, field, al + bl);
  if (al) memcpy(ex->resp + ex->len, a, al);
  ex->len += al;
  if (bl) memcpy(ex->resp + ex->len, b, bl);
  ex->len += bl;
}

/* ---- idle streams -------------------------------------------------------------------------- */

/* Takes ex off the idle list (its next step arrived, or it is over). */
static void idle_leave(ex_call* ex) {
  px_server* srv = ex->push.srv;
  pthread_mutex_lock(&srv->idle_mu);
  if (ex->idle) {
    if (ex->prev) ex->prev->next_idle = ex->next_idle;
    else srv->idle_exchanges = ex->next_idle;
    if (ex->next_idle) ex->next_idle->prev = ex->prev;
    ex->prev = ex->next_idle = NULL;
    ex->idle = false;
  }
  pthread_mutex_unlock(&srv->idle_mu);
}

/* Waits for the next step: on the idle list, a read pending; or, while the server drains,
 * ends the stream. */
static void idle_enter(ex_call* ex) {
  px_server* srv = ex->push.srv;
  pthread_mutex_lock(&srv->idle_mu);
  bool draining = px_waiters_draining(&srv->waiters);
  if (!draining) {
    ex->prev = NULL;
    ex->next_idle = srv->idle_exchanges;
    if (srv->idle_exchanges) srv->idle_exchanges->prev = ex;
    srv->idle_exchanges = ex;
    ex->idle = true;
  }
  pthread_mutex_unlock(&srv->idle_mu);
  if (draining) px_reject(&srv->ctr, ex->call, PX_ST_UNAVAILABLE, "server is shutting down");
  else px_srv_call_read(ex->call);
}

void px_exchange_drain(px_server* srv) {
  pthread_mutex_lock(&srv->idle_mu);
  for (ex_call* ex = srv->idle_exchanges; ex; ex = ex->next_idle) {
    ex->idle = false;
    px_srv_call_finish(ex->call, NULL, PX_ST_UNAVAILABLE, "server is shutting down");
  }
  srv->idle_exchanges = NULL;
  pthread_mutex_unlock(&srv->idle_mu);
}

/* ---- a step ---------------------------------------------------------------------------------- */

/* The step is over: drops its request and its place in active_calls. */
static void step_over(ex_call* ex) {
  if (ex->req) paramex__v1__step_request__free_unpacked(ex->req, NULL);
  ex->req = NULL;
  px_msg_free(ex->msg);
  ex->msg = NULL;
  px_puller_free(&ex->pull);
  if (ex->in_step) atomic_fetch_sub(&ex->push.srv->active_calls, 1);
  ex->in_step = false;
}

/* Answers the step with code (its pull chunks gathered already when OK) and drops the
 * step's reference; the stream goes on with the next step once the answer is sent. */
static void respond(ex_call* ex, int code, const char* msg) {
  if (code != PX_ST_OK) ex->len = 0; /* no chunk goes with an error */
  put_uint_field(ex, F_CODE, (uint64_t)(uint32_t)code);
  if (code != PX_ST_OK && msg) put_len_field(ex, F_MESSAGE, msg, strlen(msg), NULL, 0);
  put_uint_field(ex, F_ACCEPTED, ex->push.accepted);
  put_uint_field(ex, F_DUPLICATE, ex->push.duplicate);
  px_srv_call* call = ex->call;
  atomic_fetch_add(&ex->push.srv->ctr.exchange_steps, 1);
  if (code != PX_ST_OK) atomic_fetch_add(&ex->push.srv->ctr.rejected_calls, 1);
  atomic_fetch_add(&ex->push.srv->ctr.exchange_status[code >= 0 && code < 17 ? code : 2], 1);
  step_over(ex);
  if (ex->oom) {
    ex->oom = false;
    ex->len = 0;
    px_reject(&ex->push.srv->ctr, call, PX_ST_RESOURCE_EXHAUSTED, "out of memory for a StepResponse");
  } else {
    px_out out = {NULL, 0, ex->resp, ex->len, free, ex->resp};
    ex->resp = NULL;
    ex->len = ex->cap = 0;
    if (!px_srv_call_send(call, &out))
      px_srv_call_finish(call, NULL, PX_ST_INTERNAL, "server error: a StepResponse could not be sent");
  }
  px_srv_call_unref(call); /* the step's */
}

static bool sink_emit(px_puller* p, const px_out* out) {
  ex_call* ex = EX_OF_PULL(p);
  put_len_field(ex, F_PULL_CHUNKS, out->head, out->head_len, out->body, out->body_len);
  px_rpc_out_release(out);
  return true;
}

static void sink_end(px_puller* p, int status, const char* msg) {
  ex_call* ex = EX_OF_PULL(p);
  if (status < 0) { /* the stream is gone */
    step_over(ex);
    px_srv_call_unref(ex->call);
    return;
  }
  if (status == PX_ST_UNAVAILABLE && px_waiters_draining(&ex->push.srv->waiters)) {
    /* the server stops: the stream ends, so that the client retries elsewhere in time */
    px_srv_call* call = ex->call;
    step_over(ex);
    px_reject(&ex->push.srv->ctr, call, status, msg);
    px_srv_call_unref(call);
    return;
  }
  respond(ex, status, msg);
}

static const px_pull_sink ex_sink = {sink_emit, sink_end};

/* After the pushes: the pull of the step's request. */
static void start_pull(ex_call* ex) {
  char err[ERRLEN];
  px_server* srv = ex->push.srv;
  /* the waiter is kept: a close may be marking it right now (px_waiters_rearm) */
  memset(&ex->pull, 0, offsetof(px_puller, waiter));
  ex->pull.srv = srv;
  ex->pull.sink = &ex_sink;
  int st = px_puller_setup(&ex->pull, ex->req->pull, err, sizeof err);
  if (st != PX_ST_OK) {
    respond(ex, st, err);
    return;
  }
  ex->len = 0;
  px_puller_advance(&ex->pull);
}

/* Processes the request's push chunks from ex->next; stops at a stall (resumed by
 * ex_resume) or a refused chunk (the step is answered with its status). */
static void run_pushes(ex_call* ex) {
  px_server* srv = ex->push.srv;
  char err[ERRLEN];
  while (ex->next < ex->req->n_push_chunks) {
    const ProtobufCBinaryData* b = &ex->req->push_chunks[ex->next++];
    ex->seg = (px_iov){b->data, b->len};
    ex->push.seg = &ex->seg;
    ex->push.nseg = 1;
    ex->push.wire = b->len;
    if (px_chunk_parse(PX_CHUNK_PUSH, &ex->seg, 1, &ex->push.h, err, sizeof err) != 0) {
      respond(ex, PX_ST_INVALID_ARGUMENT, err);
      return;
    }
    px_agg_after after = {0};
    int status = PX_ST_OK;
    px_srv_call_ref(ex->call); /* the stall's, should the chunk keep our buffer */
    px_agg_result r = px_pusher_process(&ex->push, &after, &status, err, sizeof err);
    if (r != PX_AGG_STALLED) px_srv_call_unref(ex->call);
    px_agg_finish(&srv->agg, &after);
    px_push_resume(after.resumed);
    if (r == PX_AGG_REFUSED) {
      respond(ex, status, err);
      return;
    }
    if (r == PX_AGG_STALLED) return;
  }
  if (ex->req->pull) start_pull(ex);
  else respond(ex, PX_ST_OK, NULL);
}

static void ex_resume(px_agg_stall* s) {
  ex_call* ex = EX_OF_PUSH_STALL(s);
  ex->push.buf = s->buf;
  s->buf = NULL;
  run_pushes(ex);
  px_srv_call_unref(ex->call); /* the stall's reference */
}

static void ex_job(px_job* j) { run_pushes((ex_call*)((char*)j - offsetof(ex_call, job))); }

/* The request's own checks; a status and err. */
static int request_check(const Paramex__V1__StepRequest* r, char* err, size_t errlen) {
  if (!r->pull && r->n_push_chunks == 0) {
    snprintf(err, errlen, "StepRequest has neither a push chunk nor a pull");
    return PX_ST_INVALID_ARGUMENT;
  }
  return PX_ST_OK;
}

static void ex_on_message(px_srv_call* call, void* ctx, px_msg* msg, bool ok) {
  ex_call* ex = ctx;
  px_server* srv = ex->push.srv;
  if (!ok) return; /* cancelled: nothing to answer */
  idle_leave(ex);
  if (!msg) { /* the client closed the stream */
    px_srv_call_finish(call, NULL, PX_ST_OK, NULL);
    return;
  }
  if (px_waiters_draining(&srv->waiters)) {
    px_msg_free(msg);
    px_reject(&srv->ctr, call, PX_ST_UNAVAILABLE, "server is shutting down");
    return;
  }
  size_t n = 0;
  const uint8_t* b = px_msg_flat(msg, &n);
  ex->req = b ? paramex__v1__step_request__unpack(NULL, n, b) : NULL;
  char err[ERRLEN];
  int st = PX_ST_OK;
  if (!b) st = PX_ST_RESOURCE_EXHAUSTED, snprintf(err, sizeof err, "out of memory reading a StepRequest");
  else if (!ex->req) st = PX_ST_INVALID_ARGUMENT, snprintf(err, sizeof err, "malformed StepRequest");
  else st = request_check(ex->req, err, sizeof err);
  ex->msg = msg;
  atomic_fetch_add(&srv->active_calls, 1);
  ex->in_step = true;
  px_srv_call_ref(call); /* the step's: dropped once it is answered */
  ex->push.accepted = ex->push.duplicate = 0;
  ex->next = 0;
  ex->len = 0;
  if (st != PX_ST_OK) {
    respond(ex, st, err);
    return;
  }
  /* as a Push: small steps here, on the completion-queue thread; large ones on the pool */
  if (n <= PX_INLINE_PUSH_BYTES) run_pushes(ex);
  else px_taskpool_submit(srv->pool, &ex->job);
}

static void ex_on_sent(px_srv_call* call, void* ctx, bool ok) {
  (void)call;
  if (ok) idle_enter(ctx);
}

/* A closed stream never resumes: a stalled push or a parked pull drops the step's hold. */
static void ex_on_closed(px_srv_call* call, void* ctx, bool cancelled) {
  (void)cancelled;
  ex_call* ex = ctx;
  idle_leave(ex);
  if (px_agg_unstall(&ex->push.srv->agg, &ex->push.stall)) {
    px_srv_call_unref(call); /* the stall's */
    px_srv_call_unref(call); /* the step's */
  }
  if (px_waiters_close(&ex->push.srv->waiters, &ex->pull.waiter)) px_srv_call_unref(call);
}

static void ex_on_done(px_srv_call* call, void* ctx) {
  (void)call;
  ex_call* ex = ctx;
  idle_leave(ex);
  step_over(ex);
  px_pusher_release(&ex->push);
  free(ex->resp);
  free(ex);
}

static const px_srv_call_cbs ex_cbs = {ex_on_message, ex_on_sent, ex_on_closed, ex_on_done};

void px_exchange_on_call(void* s, px_srv_call* call, px_msg* req) {
  px_server* srv = s;
  (void)req;
  ex_call* ex = px_data_call_new(&srv->ctr, &srv->store, &srv->waiters, srv->server_id, call,
                                  sizeof *ex);
  if (!ex) return;
  ex->push.srv = srv;
  ex->push.stall.resume = ex_resume;
  ex->call = call;
  ex->job.fn = ex_job;
  px_srv_call_set(call, &ex_cbs, ex);
  idle_enter(ex);
}
