/* The Exchange stream (stream.h). */
#include "stream.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client.h"
#include "errors.h"
#include "op.h"
#include "pull_op.h"
#include "push_op.h"
#include "rpc/rpc_client.h"
#include "tensor.h"
#include "util/clock.h"
#include "wire/chunk_msg.h"
#include "wire/pb_fields.h"

/* After a stream failed, the steps of the next second use the calls (a server that is
 * down or restarting is not asked for a new stream at every step). */
#define RETRY_AFTER_MS 1000

/* StepRequest / StepResponse field numbers (paramex.proto) */
enum { REQ_PUSH_CHUNKS = 1, REQ_PULL = 2 };
enum { RESP_CODE = 1, RESP_MESSAGE = 2, RESP_ACCEPTED = 3, RESP_DUPLICATE = 4, RESP_PULL_CHUNKS = 5 };

typedef struct px_stream {
  px_owned owned;      /* released with the client, after its channel (every call is over) */
  pmx_client* client;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  /* under mu: */
  px_cli_call* call;   /* the open stream (valid until its on_done), NULL when none */
  bool busy;           /* a step uses it */
  bool have_resp;      /* the step's read completed: resp (NULL: the stream ended) */
  px_msg* resp;
  bool sending;        /* a send of `call` has not completed yet (its on_sent may come
                        * after the answer it asked for) */
  bool unsupported;    /* the server has no Exchange method */
  uint64_t retry_at_ms;
} px_stream;

/* Forgets the stream (mu held): a stream that failed or timed out is not used again. */
static void forget_call(px_stream* s, px_cli_call* call) {
  if (s->call != call) return;
  s->call = NULL;
  s->retry_at_ms = px_now_ms() + RETRY_AFTER_MS;
}

static void on_message(px_cli_call* call, void* ctx, px_msg* msg) {
  px_stream* s = ctx;
  const bool ended = msg == NULL;
  bool delivered = false;
  pthread_mutex_lock(&s->mu);
  if (call == s->call && s->busy && !s->have_resp) {
    s->resp = msg;
    s->have_resp = delivered = true;
    msg = NULL;
    pthread_cond_broadcast(&s->cv);
  }
  if (ended || !delivered) forget_call(s, call); /* over, or a message nobody asked for */
  pthread_mutex_unlock(&s->mu);
  px_msg_free(msg);
}

static void on_sent(px_cli_call* call, void* ctx, bool ok) {
  px_stream* s = ctx;
  pthread_mutex_lock(&s->mu);
  (void)ok; /* a failed send: the pending read reports the end of the stream */
  if (call == s->call) s->sending = false;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

static void on_done(px_cli_call* call, void* ctx, int status, const char* details) {
  (void)details;
  px_stream* s = ctx;
  pthread_mutex_lock(&s->mu);
  forget_call(s, call);
  if (status == PX_ST_UNIMPLEMENTED) s->unsupported = true; /* an older server */
  pthread_mutex_unlock(&s->mu);
}

static const px_cli_call_cbs stream_cbs = {on_message, on_sent, on_done};

static void stream_release(px_owned* o) {
  px_stream* s = (px_stream*)((char*)o - offsetof(px_stream, owned));
  px_client_disown(s->client, &s->owned);
  px_msg_free(s->resp);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cv);
  free(s);
}

/* The client's stream object, created on first use; NULL when out of memory. */
static px_stream* stream_of(pmx_client* c) {
  bool created = false;
  pthread_mutex_lock(&c->mu);
  px_stream* s = c->stream;
  if (!s && (s = calloc(1, sizeof *s))) {
    s->client = c;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->owned.release = stream_release;
    c->stream = s;
    created = true;
  }
  pthread_mutex_unlock(&c->mu);
  if (created) px_client_own(c, &s->owned); /* takes c->mu itself */
  return s;
}

/* Takes the stream for one step: a referenced call (a new one when none is open), or NULL
 * when the step must use the calls. */
static px_cli_call* take_stream(px_stream* s) {
  pmx_client* c = s->client;
  px_cli_call* call = NULL;
  pthread_mutex_lock(&s->mu);
  if (!s->unsupported && !s->busy && (s->call || px_now_ms() >= s->retry_at_ms)) {
    if (s->call && px_cli_call_try_ref(s->call)) {
      call = s->call;
      s->busy = true; /* ours while we wait, too */
      /* one send at a time: the last step's completes at once (the server read it), but
       * its event may still be on its way */
      struct timespec ts;
      px_deadline_ts(&ts, CLOCK_REALTIME, c->timeout_ms);
      while (s->sending && call == s->call)
        if (pthread_cond_timedwait(&s->cv, &s->mu, &ts) != 0) break;
      if (s->sending || call != s->call) {
        s->busy = false;
        pthread_mutex_unlock(&s->mu);
        px_cli_call_unref(call);
        return NULL;
      }
    } else {
      s->sending = false;
      /* no deadline: the stream lives as long as the client; each step has its own */
      s->call = px_cli_call_start(c->ch, PX_M_EXCHANGE, 0, false, &stream_cbs, s);
      call = s->call; /* the reference px_cli_call_start gave us */
    }
    if (call) {
      s->busy = true;
      s->sending = true; /* the step's send, started next */
      s->have_resp = false;
      s->resp = NULL;
    }
  }
  pthread_mutex_unlock(&s->mu);
  return call;
}

/* Gives the stream back after a step; broken: it is not used again. */
static void give_stream(px_stream* s, px_cli_call* call, bool broken) {
  pthread_mutex_lock(&s->mu);
  s->busy = false;
  if (broken) forget_call(s, call);
  px_msg_free(s->resp);
  s->resp = NULL;
  s->have_resp = false;
  pthread_mutex_unlock(&s->mu);
  if (broken) px_cli_call_cancel(call);
  px_cli_call_unref(call);
}

/* Waits for the step's answer until the client's timeout; the message (NULL when the
 * stream ended), *timed_out when none came. */
static px_msg* wait_answer(px_stream* s, int64_t timeout_ms, bool* timed_out) {
  struct timespec ts;
  px_deadline_ts(&ts, CLOCK_REALTIME, timeout_ms);
  *timed_out = false;
  pthread_mutex_lock(&s->mu);
  while (!s->have_resp) {
    if (pthread_cond_timedwait(&s->cv, &s->mu, &ts) == ETIMEDOUT && !s->have_resp) {
      *timed_out = true;
      break;
    }
  }
  px_msg* m = s->resp;
  s->resp = NULL;
  pthread_mutex_unlock(&s->mu);
  return m;
}

/* The StepRequest: with grads, every chunk of every tensor as a PushChunk of worker_id /
 * incarnation at step; with pull, the pull's request. NULL when out of memory. */
static uint8_t* build_request(pmx_client* c, pmx_op* pull, uint32_t worker_id,
                              uint64_t incarnation, uint64_t step, size_t n,
                              pmx_tensor* const* tensors, const void* const* grads, size_t* len) {
  size_t pull_len = 0;
  uint8_t* preq = pull ? px_pull_request_pack(pull, &pull_len) : NULL;
  if (pull && !preq) return NULL;
  size_t cap = PX_PB_LEN_HEAD_MAX + pull_len;
  for (size_t i = 0; grads && i < n; i++)
    cap += tensors[i]->nchunks * (size_t)(PX_PB_LEN_HEAD_MAX + PX_CHUNK_HDR_MAX) +
           pmx_tensor_bytes(tensors[i]);
  uint8_t* buf = malloc(cap);
  if (!buf) {
    free(preq);
    return NULL;
  }
  size_t at = 0;
  for (size_t i = 0; grads && i < n; i++) {
    const pmx_tensor* t = tensors[i];
    for (uint32_t k = 0; k < t->nchunks; k++) {
      uint8_t head[PX_CHUNK_HDR_MAX];
      const uint8_t* body;
      size_t bl;
      uint8_t* owned;
      size_t hl = px_push_chunk_encode(c, t, k, grads[i], worker_id, incarnation, step, head,
                                       &body, &bl, &owned);
      at += px_pb_put_len_head(buf + at, REQ_PUSH_CHUNKS, hl + bl);
      memcpy(buf + at, head, hl);
      memcpy(buf + at + hl, body, bl);
      at += hl + bl;
      free(owned);
    }
  }
  if (pull) {
    at += px_pb_put_len_head(buf + at, REQ_PULL, pull_len);
    memcpy(buf + at, preq, pull_len);
    at += pull_len;
    free(preq);
  }
  *len = at;
  return buf;
}

/* Reads an OK StepResponse's pull chunks into the op (NULL: a push only). false when the
 * answer is not OK (the step goes to the calls). */
static bool take_answer(pmx_op* op, px_msg* m, bool* malformed) {
  size_t len;
  const uint8_t* p = px_msg_flat(m, &len);
  *malformed = false;
  if (!p) return false;
  const uint8_t *pos = p, *end = p + len;
  px_pb_field f;
  int r;
  /* an answer that is not OK has no chunk (the server drops them) */
  while ((r = px_pb_next(&pos, end, &f)) == 1) {
    if (f.field == RESP_CODE && f.wire_type == PX_PB_WT_VARINT && f.value != 0) return false;
    if (f.field == RESP_PULL_CHUNKS && f.wire_type == PX_PB_WT_LEN) {
      if (!op) {
        r = -1; /* chunks nobody asked for */
        break;
      }
      px_iov seg = {f.data, f.len};
      if (!px_pull_take_chunk(op, &seg, 1, f.len)) return true; /* op's error says why */
    }
  }
  if (r < 0) {
    *malformed = true;
    if (!op) return false; /* a push: the Push call says what happened to it */
    px_op_set_error(op, PMX_ERR_PROTOCOL, "Pull: malformed StepResponse");
  }
  return true;
}

bool px_stream_run(pmx_client* c, uint64_t step, size_t n, pmx_tensor* const* tensors,
                   const void* const* grads, void* const* dst, pmx_dtype view,
                   uint64_t min_version, uint64_t* versions, pmx_status* st) {
  /* bad arguments go to the calls, which report them; a cluster's steps go to its shards'
   * calls, in parallel */
  if (!c || c->nshards || (!grads && !dst) || (view != 0 && view != PMX_BF16) ||
      (grads && px_op_check_args(c, n, tensors, grads, "pmx_push") != PMX_OK) ||
      (dst && px_op_check_args(c, n, tensors, (const void* const*)dst, "pmx_pull") != PMX_OK))
    return false;
  size_t bytes = 0;
  for (size_t i = 0; i < n; i++) bytes += pmx_tensor_bytes(tensors[i]);
  pthread_mutex_lock(&c->mu);
  const uint32_t worker_id = c->worker_id;
  const uint64_t incarnation = c->incarnation;
  pthread_mutex_unlock(&c->mu);
  if (incarnation == 0 || bytes > PX_STREAM_MAX_STEP) return false;
  px_stream* s = stream_of(c);
  if (!s) return false;
  px_cli_call* call = take_stream(s);
  if (!call) return false;
  pmx_op* op = NULL;
  size_t len = 0;
  uint8_t* req = NULL;
  if (!dst || px_pull_op_new(c, n, tensors, dst, view, min_version, versions, &op) == PMX_OK)
    req = build_request(c, op, worker_id, incarnation, step, n, tensors, grads, &len);
  px_out out = {NULL, 0, req, len, free, req};
  if (!req || !px_cli_call_send(call, &out, false) || !px_cli_call_read(call)) {
    give_stream(s, call, req != NULL);
    if (op) px_pull_op_abandon(op);
    return false;
  }
  bool timed_out;
  px_msg* m = wait_answer(s, c->timeout_ms, &timed_out);
  bool malformed = false;
  bool carried = m && take_answer(op, m, &malformed);
  px_msg_free(m);
  give_stream(s, call, !m || malformed);
  if (timed_out && op) {
    px_op_set_error(op, PMX_ERR_DEADLINE_EXCEEDED,
                    "Pull: DEADLINE_EXCEEDED: no answer within %lld ms", (long long)c->timeout_ms);
    carried = true;
  }
  if (!op) {
    /* a push: no answer in time goes to the Push call (the chunks count once) */
    if (carried) *st = PMX_OK;
    return carried;
  }
  if (!carried) {
    px_pull_op_abandon(op); /* no chunk was taken: an answer that is not OK has none */
    return false;
  }
  px_op_end_call(op);
  *st = px_op_wait(op);
  return true;
}
