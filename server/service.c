/* The ParameterExchange and Health handlers. Completion-queue threads only dispatch:
 * decoding, validation, accumulation and the optimizer run on the compute pool. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "codec/codec.h"
#include "codec/diff.h"
#include "codec/frame.h"
#include "health.pb-c.h"
#include "paramex.pb-c.h"
#include "server.h"

#define ERRLEN 512

/* ---- helpers ------------------------------------------------------------------------------ */

static void reject(px_service* svc, px_srv_call* call, int status, const char* msg) {
  atomic_fetch_add(&svc->ctr.rejected_calls, 1);
  px_debug("rejected call: %s: %s", px_status_name(status), msg);
  px_srv_call_finish(call, NULL, status, msg);
}

/* Finishes a unary call with a packed protobuf-c message. */
static void reply(px_srv_call* call, const ProtobufCMessage* m) {
  size_t n = protobuf_c_message_get_packed_size(m);
  uint8_t stackbuf[512];
  uint8_t* buf = n <= sizeof stackbuf ? stackbuf : malloc(n);
  if (!buf) {
    px_srv_call_finish(call, NULL, PX_ST_RESOURCE_EXHAUSTED, "out of memory for the reply");
    return;
  }
  protobuf_c_message_pack(m, buf);
  px_out out = {buf, n, NULL, 0, NULL, NULL};
  px_srv_call_finish(call, &out, PX_ST_OK, NULL);
  if (buf != stackbuf) free(buf);
}

static bool draining(px_service* svc) {
  pthread_mutex_lock(&svc->park_mu);
  bool d = svc->draining;
  pthread_mutex_unlock(&svc->park_mu);
  return d;
}

/* A push or pull that names another server id (the header libparamex sends after Join)
 * comes from a worker that joined an earlier run of this server: it must resynchronise
 * from the version this server has (restored from a checkpoint), not continue. */
static bool stale_server(px_service* svc, px_srv_call* call) {
  char id[96];
  const char* h = px_srv_call_header(call, "pmx-server-id", id, sizeof id);
  if (!h || strcmp(h, svc->server_id) == 0) return false;
  uint64_t vmin = UINT64_MAX;
  uint32_t nt = atomic_load_explicit(&svc->ntensors, memory_order_acquire);
  for (uint32_t i = 0; i < nt; i++) {
    uint64_t v = px_tensor_version_min(svc->tensors[i], NULL, NULL);
    if (v < vmin) vmin = v;
  }
  char msg[256];
  snprintf(msg, sizeof msg,
           "server restarted (was %.40s, now %s) with its tensors at version %llu: join again "
           "and resume from there", h, svc->server_id, nt ? (unsigned long long)vmin : 0ull);
  reject(svc, call, PX_ST_ABORTED, msg);
  return true;
}

/* A unary call handled on the pool. */
typedef struct unary_job {
  px_job job;
  px_service* svc;
  px_srv_call* call;
  px_msg* req;
  void (*handle)(px_service* svc, px_srv_call* call, const uint8_t* req, size_t len);
} unary_job;

static void unary_run(px_job* j) {
  unary_job* u = (unary_job*)j;
  size_t len = 0;
  const uint8_t* p = u->req ? px_msg_flat(u->req, &len) : (const uint8_t*)"";
  if (!p) reject(u->svc, u->call, PX_ST_RESOURCE_EXHAUSTED, "out of memory reading request");
  else u->handle(u->svc, u->call, p, len);
  px_msg_free(u->req);
  px_srv_call_unref(u->call);
  free(u);
}

static void submit_unary(px_service* svc, px_srv_call* call, px_msg* req,
                         void (*handle)(px_service*, px_srv_call*, const uint8_t*, size_t)) {
  unary_job* u = calloc(1, sizeof *u);
  if (!u) {
    px_msg_free(req);
    reject(svc, call, PX_ST_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  u->job.fn = unary_run;
  u->svc = svc;
  u->call = call;
  u->req = req;
  u->handle = handle;
  px_srv_call_ref(call);
  px_pool_submit(svc->pool, &u->job);
}

/* ---- Join --------------------------------------------------------------------------------- */

static void handle_join(px_service* svc, px_srv_call* call, const uint8_t* p, size_t n) {
  char err[ERRLEN];
  Paramex__V1__JoinRequest* r = paramex__v1__join_request__unpack(NULL, n, p);
  if (!r) {
    reject(svc, call, PX_ST_INVALID_ARGUMENT, "malformed JoinRequest");
    return;
  }
  if (r->world_size != svc->cfg.workers) {
    snprintf(err, sizeof err, "world_size %u does not match the server's --workers %u",
             r->world_size, svc->cfg.workers);
    reject(svc, call, PX_ST_FAILED_PRECONDITION, err);
  } else if (r->rank >= r->world_size) {
    snprintf(err, sizeof err, "rank %u is not below world_size %u", r->rank, r->world_size);
    reject(svc, call, PX_ST_INVALID_ARGUMENT, err);
  } else {
    px_worker_state* w = &svc->workers[r->rank];
    uint64_t inc = atomic_fetch_add(&svc->next_incarnation, 1);
    pthread_mutex_lock(&svc->declare_mu);
    px_strlcpy(w->name, r->name ? r->name : "", sizeof w->name);
    pthread_mutex_unlock(&svc->declare_mu);
    uint64_t old = atomic_exchange(&w->incarnation, inc);
    atomic_store(&w->last_seen_ms, px_now_ms());
    if (atomic_exchange(&w->dead, 0)) px_info("worker %u is back", r->rank);
    px_info("worker %u joined (incarnation %llu%s, %s)", r->rank, (unsigned long long)inc,
             old ? ", replacing an earlier one" : "", r->name && r->name[0] ? r->name : "unnamed");
    Paramex__V1__JoinResponse resp = PARAMEX__V1__JOIN_RESPONSE__INIT;
    resp.worker_id = r->rank;
    resp.incarnation = inc;
    resp.world_size = svc->cfg.workers;
    resp.server_id = svc->server_id;
    resp.lease_ms = (uint32_t)(svc->cfg.worker_timeout * 1000.0);
    reply(call, &resp.base);
  }
  paramex__v1__join_request__free_unpacked(r, NULL);
}

/* ---- Declare ------------------------------------------------------------------------------ */

static void handle_declare(px_service* svc, px_srv_call* call, const uint8_t* p, size_t n) {
  char err[ERRLEN];
  Paramex__V1__DeclareRequest* r = paramex__v1__declare_request__unpack(NULL, n, p);
  if (!r) {
    reject(svc, call, PX_ST_INVALID_ARGUMENT, "malformed DeclareRequest");
    return;
  }
  px_declare_args a = {0};
  a.name = r->name ? r->name : "";
  a.dtype = r->dtype;
  a.shape = r->shape;
  a.ndim = r->n_shape;
  if (r->initializer) {
    a.init_kind = r->initializer->kind;
    a.init_a = r->initializer->a;
    a.init_b = r->initializer->b;
    a.init_seed = r->initializer->seed;
  }
  if (r->values.len) {
    a.values = r->values.data;
    a.values_len = r->values.len;
  }
  a.values_offset = r->values_offset;
  a.worker_id = r->worker_id;
  a.incarnation = r->incarnation;
  px_tensor_state* t = NULL;
  bool created = false;
  int st = px_store_declare(svc, &a, &t, &created, err, sizeof err);
  if (st != PX_ST_OK) {
    reject(svc, call, st, err);
  } else {
    Paramex__V1__DeclareResponse resp = PARAMEX__V1__DECLARE_RESPONSE__INIT;
    resp.tensor_id = t->id;
    resp.version = px_tensor_version_min(t, NULL, NULL);
    resp.chunk_elems = t->chunk_elems;
    resp.num_chunks = t->nchunks;
    resp.created = created;
    reply(call, &resp.base);
  }
  paramex__v1__declare_request__free_unpacked(r, NULL);
}

/* ---- Push --------------------------------------------------------------------------------- */

typedef struct pmx_push {
  px_service* svc;
  px_srv_call* call;
  px_job job;
  px_msg* msg;
  float* buf;       /* receive buffer (svc->cfg.chunk_bytes) owned by this call, or NULL */
  uint32_t accepted, duplicate;
  px_chunk_state* stalled_on; /* chunk holding our buffer while we wait (under its mu) */
  uint32_t stalled_rank;
} pmx_push;

enum { PUSH_CONTINUE, PUSH_STALL, PUSH_FAIL };

static void push_release_buf(pmx_push* ps) {
  if (ps->buf) px_buf_put(ps->buf, ps->svc->cfg.chunk_bytes);
  ps->buf = NULL;
}

static void push_on_done(px_srv_call* call, void* ctx) {
  (void)call;
  pmx_push* ps = ctx;
  atomic_fetch_sub(&ps->svc->active_calls, 1);
  px_msg_free(ps->msg);
  push_release_buf(ps);
  free(ps);
}

/* Adds the contribution of `rank` (in *buf, a receive buffer of the call) to the chunk's
 * sum through the backend, which may keep the buffer (then *buf becomes NULL). c->mu held.
 * -1 when the backend is out of memory (nothing changed). */
static int acc_add(px_service* svc, px_tensor_state* t, px_chunk_state* c, uint32_t rank,
                   float** buf) {
  bool taken = false;
  if (svc->backend->ops->accumulate(svc->backend, t, c, rank, *buf, true, &taken) != 0) return -1;
  if (taken) *buf = NULL;
  return 0;
}

typedef struct resume_list {
  pmx_push* stalled[PX_MAX_WORKERS];
  size_t n;
  /* a step completed by this push: frames to encode once the lock is released */
  px_tensor_state* step_t;
  px_chunk_state* step_c;
  uint64_t step_version;
  px_step_io io; /* what the backend produced for the frames */
} resume_list;

/* Moves c->next_rank past the ranks that are accounted for: held contributions are added
 * in rank order; with --elastic, ranks of dead workers that did not contribute are
 * skipped. c->mu held. */
static void chunk_advance(px_service* svc, px_tensor_state* t, px_chunk_state* c,
                          resume_list* rl) {
  const size_t cb = svc->cfg.chunk_bytes;
  while (c->next_rank < svc->cfg.workers) {
    px_held* hd = &c->held[c->next_rank];
    if (!hd->buf) {
      if (svc->cfg.elastic && !c->contributed[c->next_rank] &&
          atomic_load(&svc->workers[c->next_rank].dead)) {
        c->next_rank++;
        continue;
      }
      break;
    }
    float* b = hd->buf;
    pmx_push* owner = hd->owner;
    bool taken = false;
    /* out of memory: the contribution stays held and the step waits for the next try */
    if (svc->backend->ops->accumulate(svc->backend, t, c, c->next_rank, b, false, &taken) != 0)
      break;
    hd->buf = NULL;
    hd->owner = NULL;
    c->next_rank++;
    if (owner) {
      owner->buf = b; /* the stalled call gets its buffer back and resumes */
      __atomic_store_n(&owner->stalled_on, NULL, __ATOMIC_RELEASE);
      rl->stalled[rl->n++] = owner;
    } else {
      px_buf_put(b, cb);
      atomic_fetch_add(&svc->hold_left, (int64_t)cb);
    }
  }
}

/* Applies the step when every rank is accounted for (c->mu held); what must happen after
 * the lock is released is recorded in rl. */
static void chunk_try_complete(px_service* svc, px_tensor_state* t, px_chunk_state* c,
                               resume_list* rl) {
  if (c->next_rank != svc->cfg.workers || c->ncontrib == 0 || rl->step_c) return;
  const bool encode = px_frames_eager_delta(svc, c);
  px_step_io_init(svc, t, c, c->view[1].enabled, encode, &rl->io);
  rl->io.ncontrib = c->ncontrib;
  rl->io.first = c->mom_first;
  px_ckpt_before_step(svc, t, c);
  /* the optimizer; c->params holds the new version when it returns */
  svc->backend->ops->step(svc->backend, t, c, &rl->io);
  c->mom_first = false;
  c->next_rank = 0;
  c->ncontrib = 0;
  memset(c->contributed, 0, svc->cfg.workers);
  c->version++;
  atomic_fetch_add(&svc->ctr.steps_completed, 1);
  px_frames_step_begin(svc, c, encode);
  px_ckpt_after_step(svc, t, c);
  rl->step_t = t;
  rl->step_c = c;
  rl->step_version = c->version;
}

/* Encodes once, on the pool and outside the chunk's lock, the frames of the step that rl
 * recorded: the deltas every worker will pull. */
static void frames_after(px_service* svc, resume_list* rl) {
  if (rl->io.bits[0])
    px_frames_after_step_io(svc, rl->step_t, rl->step_c, rl->step_version, &rl->io);
  else
    px_frames_after_step_failed(svc, rl->step_c, rl->step_version);
  px_step_io_free(rl->step_t, rl->step_c, &rl->io);
  rl->step_c = NULL;
}

/* After the chunk's lock is released: resume stalled pushes, encode the new version. */
static void resume_after(px_service* svc, resume_list* rl) {
  for (size_t i = 0; i < rl->n; i++) {
    pmx_push* o = rl->stalled[i];
    px_srv_call_read(o->call);
    px_srv_call_unref(o->call);
  }
  rl->n = 0;
  if (rl->step_c) {
    frames_after(svc, rl);
  }
}

static int push_process(pmx_push* ps, resume_list* rl, pmx_pull** wake, int* status, char* err,
                        size_t errlen) {
  px_service* svc = ps->svc;
  size_t nseg;
  const px_iov* seg = px_msg_segments(ps->msg, &nseg);
  size_t wire = px_msg_len(ps->msg);
  px_chunk h;
  *status = PX_ST_INVALID_ARGUMENT;
  if (!seg && wire > 0) {
    *status = PX_ST_RESOURCE_EXHAUSTED;
    snprintf(err, errlen, "out of memory reading a PushChunk");
    return PUSH_FAIL;
  }
  if (px_chunk_parse(PX_CHUNK_PUSH, seg, nseg, &h, err, errlen) != 0) return PUSH_FAIL;
  if (h.worker_id >= svc->cfg.workers) {
    snprintf(err, errlen, "worker_id %u is not below --workers %u", h.worker_id, svc->cfg.workers);
    return PUSH_FAIL;
  }
  px_worker_state* w = &svc->workers[h.worker_id];
  uint64_t inc = atomic_load(&w->incarnation);
  if (inc == 0) {
    *status = PX_ST_FAILED_PRECONDITION;
    snprintf(err, errlen, "worker %u has not joined", h.worker_id);
    return PUSH_FAIL;
  }
  if (h.incarnation != inc) {
    *status = PX_ST_FAILED_PRECONDITION;
    snprintf(err, errlen, "worker %u: incarnation %llu is stale (current %llu): it rejoined",
             h.worker_id, (unsigned long long)h.incarnation, (unsigned long long)inc);
    return PUSH_FAIL;
  }
  px_tensor_state* t = px_store_tensor(svc, h.tensor_id);
  if (!t) {
    *status = PX_ST_NOT_FOUND;
    snprintf(err, errlen, "unknown tensor id %u", h.tensor_id);
    return PUSH_FAIL;
  }
  if (h.chunk >= t->nchunks) {
    *status = PX_ST_OUT_OF_RANGE;
    snprintf(err, errlen, "tensor '%s': chunk %u out of range (it has %u)", t->name, h.chunk,
             t->nchunks);
    return PUSH_FAIL;
  }
  px_chunk_state* c = &t->chunks[h.chunk];
  const int pdt = (int)h.dtype;
  if (pdt != t->dtype && !(t->dtype == PX_DT_F32 && pdt == PX_DT_BF16)) {
    snprintf(err, errlen, "tensor '%s': a %s payload cannot be pushed to a %s tensor", t->name,
             px_dtype_name(pdt), px_dtype_name(t->dtype));
    return PUSH_FAIL;
  }
  if (h.encoding != PX_ENC_RAW && h.encoding != PX_ENC_SHUFFLE_ZSTD) {
    snprintf(err, errlen, "tensor '%s' chunk %u: push encoding %u is not supported", t->name,
             h.chunk, h.encoding);
    return PUSH_FAIL;
  }
  const size_t pw = px_dtype_size(pdt), bytes = (size_t)c->elems * pw;
  if (h.raw_len != bytes || (h.encoding == PX_ENC_RAW && h.payload_len != bytes)) {
    snprintf(err, errlen, "tensor '%s' chunk %u: raw_len %u and payload %zu bytes, expected %zu",
             t->name, h.chunk, h.raw_len, h.payload_len, bytes);
    return PUSH_FAIL;
  }
  const size_t cb = svc->cfg.chunk_bytes;
  if (!ps->buf) {
    ps->buf = px_buf_get(cb);
    if (!ps->buf) {
      *status = PX_ST_RESOURCE_EXHAUSTED;
      snprintf(err, errlen, "out of memory for a receive buffer");
      return PUSH_FAIL;
    }
  }
  void* dst = pdt == PX_DT_F32 ? (void*)ps->buf : (void*)px_scratch(2, bytes);
  char derr[200];
  /* dst is this call's receive buffer or scratch: it may be written before the check */
  px_decode_result dr = dst ? px_chunk_decode_private(&h, seg, nseg, dst, c->elems, (int)pw,
                                                        derr, sizeof derr)
                             : PX_DECODE_MALFORMED;
  if (dr != PX_DECODE_OK) {
    *status = dr == PX_DECODE_CHECKSUM ? PX_ST_DATA_LOSS : PX_ST_INVALID_ARGUMENT;
    snprintf(err, errlen, "tensor '%s' chunk %u: %s", t->name, h.chunk, dst ? derr : "out of memory");
    return PUSH_FAIL;
  }
  if (pdt == PX_DT_BF16) px_bf16_to_f32_n(dst, ps->buf, c->elems);
  else if (pdt == PX_DT_F16) px_f16_to_f32_n(dst, ps->buf, c->elems);
  atomic_store(&w->last_seen_ms, px_now_ms());
  atomic_store(&w->dead, 0);

  int result = PUSH_CONTINUE;
  pthread_mutex_lock(&c->mu);
  if (!c->initialized) {
    pthread_mutex_unlock(&c->mu);
    *status = PX_ST_FAILED_PRECONDITION;
    snprintf(err, errlen, "tensor '%s' is still receiving its initial values", t->name);
    return PUSH_FAIL;
  }
  if (h.step > c->version) {
    uint64_t v = c->version;
    pthread_mutex_unlock(&c->mu);
    *status = PX_ST_OUT_OF_RANGE;
    snprintf(err, errlen, "tensor '%s' chunk %u: step %llu is ahead of version %llu", t->name,
             h.chunk, (unsigned long long)h.step, (unsigned long long)v);
    return PUSH_FAIL;
  }
  if (h.step + 1 < c->version) {
    uint64_t v = c->version;
    pthread_mutex_unlock(&c->mu);
    *status = PX_ST_FAILED_PRECONDITION;
    snprintf(err, errlen, "tensor '%s' chunk %u: step %llu is too old (chunk at version %llu)",
             t->name, h.chunk, (unsigned long long)h.step, (unsigned long long)v);
    return PUSH_FAIL;
  }
  if (h.step + 1 == c->version || c->contributed[h.worker_id]) {
    pthread_mutex_unlock(&c->mu);
    ps->duplicate++;
    atomic_fetch_add(&svc->ctr.push_duplicates, 1);
    return PUSH_CONTINUE;
  }
  c->contributed[h.worker_id] = 1;
  c->ncontrib++;
  if (h.worker_id <= c->next_rank) {
    /* in rank order; or (elastic) a rank skipped as dead that came back within the step */
    if (acc_add(svc, t, c, h.worker_id, &ps->buf) != 0) {
      c->contributed[h.worker_id] = 0;
      c->ncontrib--;
      pthread_mutex_unlock(&c->mu);
      *status = PX_ST_RESOURCE_EXHAUSTED;
      snprintf(err, errlen, "tensor '%s' chunk %u: out of memory for the sum", t->name, h.chunk);
      return PUSH_FAIL;
    }
    if (h.worker_id == c->next_rank) {
      c->next_rank++;
      chunk_advance(svc, t, c, rl);
    }
  } else {
    px_held* hd = &c->held[h.worker_id];
    hd->buf = ps->buf;
    if (atomic_fetch_sub(&svc->hold_left, (int64_t)cb) >= (int64_t)cb) {
      hd->owner = NULL;
      ps->buf = NULL;
    } else {
      /* Budget spent: this call waits, without reading, until its buffer is consumed.
       * Lower ranks never wait for higher ones, so the wait always ends. */
      atomic_fetch_add(&svc->hold_left, (int64_t)cb);
      hd->owner = ps;
      ps->buf = NULL;
      __atomic_store_n(&ps->stalled_on, c, __ATOMIC_RELEASE);
      ps->stalled_rank = h.worker_id;
      px_srv_call_ref(ps->call);
      result = PUSH_STALL;
    }
    chunk_advance(svc, t, c, rl); /* elastic: dead ranks before it may be skipped */
  }
  chunk_try_complete(svc, t, c, rl);
  pthread_mutex_unlock(&c->mu);
  (void)wake;
  ps->accepted++;
  atomic_fetch_add(&svc->ctr.push_chunks, 1);
  atomic_fetch_add(&svc->ctr.push_raw_bytes, (size_t)c->elems * t->elem);
  atomic_fetch_add(&svc->ctr.push_wire_bytes, wire);
  atomic_fetch_add(&t->push_raw, (size_t)c->elems * t->elem);
  atomic_fetch_add(&t->push_wire, wire);
  atomic_fetch_add(&w->chunks_pushed, 1);
  return result;
}

/* Push messages up to this size are processed inline (the 1,000-float round trip). */
#define INLINE_PUSH_BYTES (64u << 10)

static bool push_is_small(px_msg* msg) {
  if (px_msg_len(msg) > INLINE_PUSH_BYTES) return false;
  size_t nseg;
  const px_iov* seg = px_msg_segments(msg, &nseg);
  px_chunk h;
  char err[8];
  return px_chunk_parse(PX_CHUNK_PUSH, seg, nseg, &h, err, sizeof err) == 0 &&
         h.raw_len <= INLINE_PUSH_BYTES;
}

static void push_job(px_job* j) {
  pmx_push* ps = (pmx_push*)((char*)j - offsetof(pmx_push, job));
  resume_list rl;
  memset(&rl, 0, sizeof rl);
  pmx_pull* wake = NULL;
  int status;
  char err[ERRLEN];
  int r = push_process(ps, &rl, &wake, &status, err, sizeof err);
  px_msg_free(ps->msg);
  ps->msg = NULL;
  if (r == PUSH_FAIL) reject(ps->svc, ps->call, status, err);
  else if (r == PUSH_CONTINUE) px_srv_call_read(ps->call); /* receive while we encode */
  px_pulls_resume(wake);
  if (rl.step_c) frames_after(ps->svc, &rl);
  for (size_t i = 0; i < rl.n; i++) {
    pmx_push* o = rl.stalled[i];
    px_srv_call_read(o->call);
    px_srv_call_unref(o->call);
  }
  px_srv_call_unref(ps->call);
}

static void push_on_message(px_srv_call* call, void* ctx, px_msg* msg, bool ok) {
  pmx_push* ps = ctx;
  if (!ok) return; /* cancelled: nothing to answer */
  if (!msg) {
    Paramex__V1__PushResponse resp = PARAMEX__V1__PUSH_RESPONSE__INIT;
    resp.accepted = ps->accepted;
    resp.duplicate = ps->duplicate;
    reply(call, &resp.base);
    return;
  }
  ps->msg = msg;
  px_srv_call_ref(call);
  /* A small chunk costs less to process here, on the completion-queue thread, than a
   * hand-off to the pool costs in thread wake-ups; larger ones go to the pool. Small by
   * its decoded size: a compressed message may expand to a whole chunk. */
  if (push_is_small(msg)) push_job(&ps->job);
  else px_pool_submit(ps->svc->pool, &ps->job);
}

/* A cancelled call stops waiting; its held contribution stays counted. */
static void push_on_closed(px_srv_call* call, void* ctx, bool cancelled) {
  (void)cancelled;
  pmx_push* ps = ctx;
  bool unstall = false;
  px_chunk_state* c = NULL;
  /* stalled_on changes only under the chunk's mutex; read it, then confirm under it. */
  for (int tries = 0; tries < 2 && !unstall; tries++) {
    c = __atomic_load_n(&ps->stalled_on, __ATOMIC_ACQUIRE);
    if (!c) break;
    pthread_mutex_lock(&c->mu);
    if (ps->stalled_on == c && c->held[ps->stalled_rank].owner == ps) {
      c->held[ps->stalled_rank].owner = NULL;
      atomic_fetch_sub(&ps->svc->hold_left, (int64_t)ps->svc->cfg.chunk_bytes);
      __atomic_store_n(&ps->stalled_on, NULL, __ATOMIC_RELEASE);
      unstall = true;
    }
    pthread_mutex_unlock(&c->mu);
  }
  if (unstall) px_srv_call_unref(call);
}

static const px_srv_call_cbs push_cbs = {push_on_message, NULL, push_on_closed, push_on_done};

static void on_push(void* s, px_srv_call* call, px_msg* req) {
  px_service* svc = s;
  (void)req;
  if (draining(svc)) {
    reject(svc, call, PX_ST_UNAVAILABLE, "server is shutting down");
    return;
  }
  if (stale_server(svc, call)) return;
  pmx_push* ps = calloc(1, sizeof *ps);
  if (!ps) {
    reject(svc, call, PX_ST_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  ps->svc = svc;
  ps->call = call;
  ps->job.fn = push_job;
  atomic_fetch_add(&svc->active_calls, 1);
  px_srv_call_set(call, &push_cbs, ps);
  px_srv_call_read(call);
}

/* ---- Pull --------------------------------------------------------------------------------- */

static void pull_free(pmx_pull* p) {
  free(p->tids);
  free(p->have);
  free(p);
}

static void pull_on_done(px_srv_call* call, void* ctx) {
  (void)call;
  pmx_pull* p = ctx;
  atomic_fetch_sub(&p->svc->active_calls, 1);
  pull_free(p);
}

/* Ends the pull's active reference. */
static void pull_end(pmx_pull* p, int status, const char* msg) {
  if (status >= 0) px_srv_call_finish(p->call, NULL, status, msg);
  px_srv_call_unref(p->call);
}

/* Sends the next chunk, parks on it, or finishes. Holds the pull's active reference. */
static void pull_advance(pmx_pull* p) {
  px_service* svc = p->svc;
  for (;;) {
    if (p->ti >= p->ntensors) {
      pull_end(p, PX_ST_OK, NULL);
      return;
    }
    px_tensor_state* t = px_store_tensor(svc, p->tids[p->ti]);
    if (p->ci >= t->nchunks) {
      p->ti++;
      p->ci = 0;
      continue;
    }
    px_chunk_state* c = &t->chunks[p->ci];
    const int vi = p->view == 1 && t->dtype == PX_DT_F32 ? 1 : 0;
    const int width = px_view_width(t, vi);
    const uint64_t have = p->have ? p->have[p->ti] : PX_BASE_NONE;
    px_frame* f = NULL;
    bool unchanged = false, wait = false;
    uint64_t version = 0, sum = 0;
    pthread_mutex_lock(&c->mu);
    if (!c->initialized || c->version < p->min_version) {
      wait = true;
    } else {
      px_view_state* vs = &c->view[vi];
      vs->enabled = true; /* the bf16 view: its history starts with the next step */
      version = c->version;
      if (have == version && vs->checksum_valid) {
        unchanged = true;
        sum = vs->checksum;
      } else {
        uint64_t key = px_frames_key(svc, c, vi, have, p->accept_delta, p->accept_shuffle);
        f = px_frames_get(svc, t, c, vi, key, &wait);
        if (!f && !wait) {
          pthread_mutex_unlock(&c->mu);
          pull_end(p, PX_ST_RESOURCE_EXHAUSTED,
                   "no memory for another frame within --memory-limit (or out of memory)");
          return;
        }
      }
    }
    if (wait && c->initialized && c->version < p->min_version &&
        atomic_load(&svc->stalled_by_dead)) {
      pthread_mutex_unlock(&c->mu);
      pull_end(p, PX_ST_FAILED_PRECONDITION,
               "a worker has been gone longer than --rejoin-wait: this step cannot complete "
               "(restart that worker, or run the server with --elastic)");
      return;
    }
    if (wait) {
      pthread_mutex_lock(&svc->park_mu);
      bool closed = p->closed, drain = svc->draining;
      if (!closed && !drain) {
        p->parked_on = c;
        p->wprev = NULL;
        p->wnext = c->waiters;
        if (c->waiters) c->waiters->wprev = p;
        c->waiters = p;
      }
      pthread_mutex_unlock(&svc->park_mu);
      pthread_mutex_unlock(&c->mu);
      if (closed) pull_end(p, -1, NULL);
      else if (drain) pull_end(p, PX_ST_UNAVAILABLE, "server is shutting down");
      return;
    }
    pthread_mutex_unlock(&c->mu);
    px_chunk h = {0};
    h.tensor_id = t->id;
    h.chunk = p->ci;
    h.version = version;
    h.dtype = vi == 1 ? PX_DT_BF16 : (uint32_t)t->dtype;
    h.raw_len = (uint32_t)((size_t)c->elems * width);
    if (unchanged) {
      h.encoding = PX_ENC_UNCHANGED;
      h.base_version = version;
      h.checksum = sum;
      atomic_fetch_add(&svc->ctr.pull_unchanged, 1);
    } else {
      h.encoding = f->encoding;
      h.base_version = f->encoding == PX_ENC_DELTA_ZSTD ? f->base : 0;
      h.checksum = f->checksum;
      atomic_fetch_add(f->encoding == PX_ENC_DELTA_ZSTD ? &svc->ctr.pull_delta
                                                         : &svc->ctr.pull_snapshot, 1);
    }
    size_t body = f ? f->len : 0;
    uint8_t head[PX_CHUNK_HDR_MAX];
    size_t hl = px_chunk_encode_header(PX_CHUNK_PULL, &h, body, head, sizeof head);
    px_out out = {head, hl, f ? f->data : NULL, body, f ? px_frame_unref : NULL, f};
    if (f && svc->fault_corrupt_every &&
        atomic_fetch_add(&svc->fault_count, 1) % svc->fault_corrupt_every ==
            svc->fault_corrupt_every - 1) {
      /* test hook (PMX_FAULT_CORRUPT_PULL): this send carries one flipped byte */
      uint8_t* bad = malloc(body);
      if (bad) {
        memcpy(bad, f->data, body);
        bad[body / 2] ^= 0x40;
        px_frame_unref(f);
        out.body = bad;
        out.release = free;
        out.release_ctx = bad;
      }
    }
    atomic_fetch_add(&svc->ctr.pull_chunks, 1);
    atomic_fetch_add(&svc->ctr.pull_raw_bytes, h.raw_len);
    atomic_fetch_add(&svc->ctr.pull_wire_bytes, hl + body);
    atomic_fetch_add(&t->pull_raw, h.raw_len);
    atomic_fetch_add(&t->pull_wire, hl + body);
    p->ci++;
    /* false: the call is over (then finishing does nothing) or gRPC refused the batch */
    if (!px_srv_call_send(p->call, &out))
      pull_end(p, PX_ST_INTERNAL, "server error: a pull chunk could not be sent");
    return;
  }
}

static void pull_job(px_job* j) {
  pull_advance((pmx_pull*)((char*)j - offsetof(pmx_pull, job)));
}

void px_pulls_resume(pmx_pull* list) {
  while (list) {
    pmx_pull* next = list->wnext;
    list->wnext = list->wprev = NULL;
    pull_advance(list);
    list = next;
  }
}

static void pull_on_sent(px_srv_call* call, void* ctx, bool ok) {
  (void)call;
  pmx_pull* p = ctx;
  if (!ok) {
    pull_end(p, -1, NULL);
    return;
  }
  pull_advance(p); /* no compute: takes a frame reference and starts the next send */
}

static void pull_on_closed(px_srv_call* call, void* ctx, bool cancelled) {
  (void)call;
  (void)cancelled;
  pmx_pull* p = ctx;
  px_service* svc = p->svc;
  pthread_mutex_lock(&svc->park_mu);
  p->closed = true;
  px_chunk_state* c = p->parked_on;
  if (c) {
    if (p->wprev) p->wprev->wnext = p->wnext;
    else c->waiters = p->wnext;
    if (p->wnext) p->wnext->wprev = p->wprev;
    p->parked_on = NULL;
  }
  pthread_mutex_unlock(&svc->park_mu);
  if (c) px_srv_call_unref(p->call); /* the parked pull's active reference */
}

static const px_srv_call_cbs pull_cbs = {NULL, pull_on_sent, pull_on_closed, pull_on_done};

static void handle_pull(px_service* svc, px_srv_call* call, const uint8_t* b, size_t n) {
  char err[ERRLEN];
  Paramex__V1__PullRequest* r = paramex__v1__pull_request__unpack(NULL, n, b);
  if (!r) {
    reject(svc, call, PX_ST_INVALID_ARGUMENT, "malformed PullRequest");
    return;
  }
  int st = PX_ST_OK;
  if (r->n_tensor_ids == 0) {
    st = PX_ST_INVALID_ARGUMENT;
    snprintf(err, sizeof err, "PullRequest names no tensor");
  } else if (r->view != PARAMEX__V1__DTYPE__DTYPE_UNSPECIFIED &&
             r->view != PARAMEX__V1__DTYPE__DTYPE_BF16) {
    st = PX_ST_INVALID_ARGUMENT;
    snprintf(err, sizeof err, "PullRequest view %d is not supported (unspecified or bf16)",
             (int)r->view);
  } else if (r->n_have_versions != 0 && r->n_have_versions != r->n_tensor_ids) {
    st = PX_ST_INVALID_ARGUMENT;
    snprintf(err, sizeof err, "PullRequest has %zu have_versions for %zu tensors",
             r->n_have_versions, r->n_tensor_ids);
  } else {
    for (size_t i = 0; i < r->n_tensor_ids; i++) {
      if (!px_store_tensor(svc, r->tensor_ids[i])) {
        st = PX_ST_NOT_FOUND;
        snprintf(err, sizeof err, "unknown tensor id %u", r->tensor_ids[i]);
        break;
      }
    }
  }
  pmx_pull* p = NULL;
  if (st == PX_ST_OK) {
    p = calloc(1, sizeof *p);
    if (p) {
      p->tids = malloc(r->n_tensor_ids * sizeof *p->tids);
      p->have = r->n_have_versions ? malloc(r->n_tensor_ids * sizeof *p->have) : NULL;
    }
    if (!p || !p->tids || (r->n_have_versions && !p->have)) {
      if (p) pull_free(p);
      st = PX_ST_RESOURCE_EXHAUSTED;
      snprintf(err, sizeof err, "out of memory");
    }
  }
  if (st != PX_ST_OK) {
    reject(svc, call, st, err);
    paramex__v1__pull_request__free_unpacked(r, NULL);
    return;
  }
  p->svc = svc;
  p->call = call;
  p->job.fn = pull_job;
  p->started_ms = px_now_ms();
  p->ntensors = (uint32_t)r->n_tensor_ids;
  memcpy(p->tids, r->tensor_ids, r->n_tensor_ids * sizeof *p->tids);
  if (p->have) memcpy(p->have, r->have_versions, r->n_tensor_ids * sizeof *p->have);
  p->min_version = r->min_version;
  p->view = r->view == PARAMEX__V1__DTYPE__DTYPE_BF16 ? 1 : 0;
  for (size_t i = 0; i < r->n_accept; i++) {
    if ((int)r->accept[i] == PX_ENC_DELTA_ZSTD) p->accept_delta = true;
    if ((int)r->accept[i] == PX_ENC_SHUFFLE_ZSTD) p->accept_shuffle = true;
  }
  if (r->worker_id < svc->cfg.workers) {
    atomic_store(&svc->workers[r->worker_id].last_seen_ms, px_now_ms());
    atomic_store(&svc->workers[r->worker_id].dead, 0);
  }
  paramex__v1__pull_request__free_unpacked(r, NULL);
  px_srv_call_set(call, &pull_cbs, p); /* its on_done ends the count begun in on_pull */
  px_srv_call_ref(call); /* the pull's active reference */
  pull_advance(p);
}

/* ---- Stats -------------------------------------------------------------------------------- */

static void handle_stats(px_service* svc, px_srv_call* call, const uint8_t* b, size_t n) {
  Paramex__V1__StatsRequest* r = paramex__v1__stats_request__unpack(NULL, n, b);
  if (!r) {
    reject(svc, call, PX_ST_INVALID_ARGUMENT, "malformed StatsRequest");
    return;
  }
  paramex__v1__stats_request__free_unpacked(r, NULL);
  Paramex__V1__StatsResponse s = PARAMEX__V1__STATS_RESPONSE__INIT;
  s.server_id = svc->server_id;
  s.uptime_ms = px_now_ms() - svc->start_ms;
  s.workers_expected = svc->cfg.workers;
  s.push_chunks = atomic_load(&svc->ctr.push_chunks);
  s.push_duplicates = atomic_load(&svc->ctr.push_duplicates);
  s.push_raw_bytes = atomic_load(&svc->ctr.push_raw_bytes);
  s.push_wire_bytes = atomic_load(&svc->ctr.push_wire_bytes);
  s.pull_chunks = atomic_load(&svc->ctr.pull_chunks);
  s.pull_raw_bytes = atomic_load(&svc->ctr.pull_raw_bytes);
  s.pull_wire_bytes = atomic_load(&svc->ctr.pull_wire_bytes);
  s.steps_completed = atomic_load(&svc->ctr.steps_completed);
  s.rejected_calls = atomic_load(&svc->ctr.rejected_calls);
  s.history_bytes = (uint64_t)atomic_load(&svc->ctr.history_bytes);
  s.history_budget = svc->cfg.history_bytes;
  int64_t fb = atomic_load(&svc->ctr.frame_bytes) - atomic_load(&svc->ctr.history_bytes);
  s.frame_cache_bytes = fb > 0 ? (uint64_t)fb : 0;
  s.encodes = atomic_load(&svc->ctr.encodes);
  s.frame_cache_hits = atomic_load(&svc->ctr.cache_hits);
  s.pull_unchanged = atomic_load(&svc->ctr.pull_unchanged);
  s.pull_delta = atomic_load(&svc->ctr.pull_delta);
  s.pull_snapshot = atomic_load(&svc->ctr.pull_snapshot);
  char ckpt_path[600];
  pthread_mutex_lock(&svc->ckpt.mu);
  s.checkpoints_written = svc->ckpt.written;
  s.checkpoint_failures = svc->ckpt.failures;
  s.checkpoint_version = svc->ckpt.last_version;
  s.restored_version = svc->ckpt.restored_version;
  snprintf(ckpt_path, sizeof ckpt_path, "%s", svc->ckpt.last_path);
  pthread_mutex_unlock(&svc->ckpt.mu);
  s.checkpoint_path = ckpt_path;

  uint32_t nt = atomic_load_explicit(&svc->ntensors, memory_order_acquire);
  Paramex__V1__TensorStats* ts = calloc(nt ? nt : 1, sizeof *ts);
  Paramex__V1__TensorStats** tp = calloc(nt ? nt : 1, sizeof *tp);
  Paramex__V1__WorkerStats* ws = calloc(svc->cfg.workers, sizeof *ws);
  Paramex__V1__WorkerStats** wp = calloc(svc->cfg.workers, sizeof *wp);
  char(*names)[64] = calloc(svc->cfg.workers, sizeof *names);
  if (!ts || !tp || !ws || !wp || !names) {
    reject(svc, call, PX_ST_RESOURCE_EXHAUSTED, "out of memory");
    goto out;
  }
  uint64_t vmin_all = UINT64_MAX, vmax_all = 0;
  for (uint32_t i = 0; i < nt; i++) {
    px_tensor_state* t = svc->tensors[i];
    paramex__v1__tensor_stats__init(&ts[i]);
    ts[i].id = t->id;
    ts[i].name = t->name;
    ts[i].dtype = t->dtype;
    ts[i].n_shape = t->ndim;
    ts[i].shape = t->shape;
    ts[i].version_min = px_tensor_version_min(t, &ts[i].version_max, &ts[i].checksum);
    ts[i].bytes = t->params_bytes;
    ts[i].push_raw_bytes = atomic_load(&t->push_raw);
    ts[i].push_wire_bytes = atomic_load(&t->push_wire);
    ts[i].pull_raw_bytes = atomic_load(&t->pull_raw);
    ts[i].pull_wire_bytes = atomic_load(&t->pull_wire);
    ts[i].num_chunks = t->nchunks;
    if (ts[i].version_min < vmin_all) vmin_all = ts[i].version_min;
    if (ts[i].version_max > vmax_all) vmax_all = ts[i].version_max;
    tp[i] = &ts[i];
  }
  s.n_tensors = nt;
  s.tensors = tp;
  s.version_min = nt ? vmin_all : 0;
  s.version_max = vmax_all;
  uint64_t now = px_now_ms();
  size_t nw = 0;
  pthread_mutex_lock(&svc->declare_mu);
  for (uint32_t i = 0; i < svc->cfg.workers; i++) {
    px_worker_state* w = &svc->workers[i];
    uint64_t inc = atomic_load(&w->incarnation);
    if (!inc) continue;
    paramex__v1__worker_stats__init(&ws[nw]);
    ws[nw].rank = i;
    ws[nw].incarnation = inc;
    px_strlcpy(names[nw], w->name, sizeof names[nw]);
    ws[nw].name = names[nw];
    ws[nw].chunks_pushed = atomic_load(&w->chunks_pushed);
    uint64_t seen = atomic_load(&w->last_seen_ms);
    ws[nw].last_seen_ms = now > seen ? now - seen : 0;
    ws[nw].alive = !atomic_load(&w->dead);
    s.workers_alive += ws[nw].alive;
    wp[nw] = &ws[nw];
    nw++;
  }
  pthread_mutex_unlock(&svc->declare_mu);
  s.workers_joined = (uint32_t)nw;
  s.elastic = svc->cfg.elastic;
  s.n_workers = nw;
  s.workers = wp;
  reply(call, &s.base);
out:
  free(ts);
  free(tp);
  free(ws);
  free(wp);
  free(names);
}

/* ---- Checkpoint ------------------------------------------------------------------------- */

static void handle_checkpoint(px_service* svc, px_srv_call* call, const uint8_t* b, size_t n) {
  Paramex__V1__CheckpointRequest* r = paramex__v1__checkpoint_request__unpack(NULL, n, b);
  if (!r) {
    reject(svc, call, PX_ST_INVALID_ARGUMENT, "malformed CheckpointRequest");
    return;
  }
  paramex__v1__checkpoint_request__free_unpacked(r, NULL);
  if (!svc->cfg.checkpoint_dir) {
    reject(svc, call, PX_ST_FAILED_PRECONDITION, "the server runs without --checkpoint-dir");
    return;
  }
  if (atomic_load(&svc->ntensors) == 0) {
    reject(svc, call, PX_ST_FAILED_PRECONDITION, "no tensor declared yet: nothing to checkpoint");
    return;
  }
  if (px_ckpt_now(svc, call, "requested") != 0)
    reject(svc, call, PX_ST_RESOURCE_EXHAUSTED, "cannot start a checkpoint (out of memory)");
  /* the call is finished by the checkpoint thread once the file is written */
}

/* ---- Heartbeat and leases ------------------------------------------------------------- */

static void handle_heartbeat(px_service* svc, px_srv_call* call, const uint8_t* b, size_t n) {
  Paramex__V1__HeartbeatRequest* r = paramex__v1__heartbeat_request__unpack(NULL, n, b);
  if (!r) {
    reject(svc, call, PX_ST_INVALID_ARGUMENT, "malformed HeartbeatRequest");
    return;
  }
  char err[ERRLEN];
  if (r->worker_id >= svc->cfg.workers) {
    snprintf(err, sizeof err, "worker_id %u is not below --workers %u", r->worker_id,
             svc->cfg.workers);
    reject(svc, call, PX_ST_INVALID_ARGUMENT, err);
  } else if (atomic_load(&svc->workers[r->worker_id].incarnation) != r->incarnation) {
    snprintf(err, sizeof err, "worker %u: incarnation %llu is not the current one", r->worker_id,
             (unsigned long long)r->incarnation);
    reject(svc, call, PX_ST_FAILED_PRECONDITION, err);
  } else {
    px_worker_state* w = &svc->workers[r->worker_id];
    atomic_store(&w->last_seen_ms, px_now_ms());
    if (atomic_exchange(&w->dead, 0)) px_info("worker %u is back", r->worker_id);
    Paramex__V1__HeartbeatResponse resp = PARAMEX__V1__HEARTBEAT_RESPONSE__INIT;
    reply(call, &resp.base);
  }
  paramex__v1__heartbeat_request__free_unpacked(r, NULL);
}

/* --elastic: steps waiting only for dead workers complete without them. */
static void complete_without_dead(px_service* svc) {
  uint32_t nt = atomic_load_explicit(&svc->ntensors, memory_order_acquire);
  for (uint32_t i = 0; i < nt; i++) {
    px_tensor_state* t = svc->tensors[i];
    for (uint32_t k = 0; k < t->nchunks; k++) {
      px_chunk_state* c = &t->chunks[k];
      resume_list rl;
      memset(&rl, 0, sizeof rl);
      pthread_mutex_lock(&c->mu);
      if (c->initialized && c->ncontrib > 0) {
        chunk_advance(svc, t, c, &rl);
        chunk_try_complete(svc, t, c, &rl);
      }
      pthread_mutex_unlock(&c->mu);
      resume_after(svc, &rl);
    }
  }
}

/* Detaches, from every chunk's waiter list, the parked pulls for which pred(c, p, arg)
 * holds (checked with the chunk's and the park locks held) and returns them as a list. */
static pmx_pull* detach_parked(px_service* svc, bool (*pred)(px_chunk_state*, pmx_pull*, uint64_t),
                               uint64_t arg) {
  pmx_pull* list = NULL;
  uint32_t nt = atomic_load_explicit(&svc->ntensors, memory_order_acquire);
  for (uint32_t i = 0; i < nt; i++) {
    px_tensor_state* t = svc->tensors[i];
    for (uint32_t k = 0; k < t->nchunks; k++) {
      px_chunk_state* c = &t->chunks[k];
      pthread_mutex_lock(&c->mu);
      pthread_mutex_lock(&svc->park_mu);
      pmx_pull** pp = &c->waiters;
      while (*pp) {
        pmx_pull* p = *pp;
        if (pred(c, p, arg)) {
          *pp = p->wnext;
          if (p->wnext) p->wnext->wprev = p->wprev;
          p->parked_on = NULL;
          p->wnext = list;
          list = p;
        } else {
          pp = &p->wnext;
        }
      }
      pthread_mutex_unlock(&svc->park_mu);
      pthread_mutex_unlock(&c->mu);
    }
  }
  return list;
}

static void end_pulls(pmx_pull* list, int status, const char* msg) {
  while (list) {
    pmx_pull* next = list->wnext;
    pull_end(list, status, msg);
    list = next;
  }
}

static bool waits_for_version(px_chunk_state* c, pmx_pull* p, uint64_t unused) {
  (void)unused;
  return c->initialized && c->version < p->min_version;
}

static bool started_before(px_chunk_state* c, pmx_pull* p, uint64_t before_ms) {
  (void)c;
  return p->started_ms < before_ms;
}

/* BSP: a dead worker stayed away past --rejoin-wait; pulls waiting for a version end. */
static void fail_waiting_pulls(px_service* svc, uint32_t rank, double gone_s) {
  char msg[256];
  snprintf(msg, sizeof msg,
           "worker %u has been gone for %.0f s (--rejoin-wait %.0f s): this step cannot "
           "complete (restart that worker, or run the server with --elastic)",
           rank, gone_s, svc->cfg.rejoin_wait);
  end_pulls(detach_parked(svc, waits_for_version, 0), PX_ST_FAILED_PRECONDITION, msg);
}

/* Pulls parked longer than --call-timeout end with DEADLINE_EXCEEDED. */
static void expire_parked_pulls(px_service* svc, uint64_t now) {
  const uint64_t limit = (uint64_t)(svc->cfg.call_timeout * 1000.0);
  if (now <= limit) return;
  end_pulls(detach_parked(svc, started_before, now - limit), PX_ST_DEADLINE_EXCEEDED,
            "the pull waited longer than the server's --call-timeout");
}

static void* monitor_thread(void* arg) {
  px_service* svc = arg;
  const uint64_t timeout = svc->cfg.worker_timeout > 0 ? (uint64_t)(svc->cfg.worker_timeout * 1000.0)
                                                       : UINT64_MAX;
  const uint64_t period = timeout / 4 < 1000 ? (timeout / 4 ? timeout / 4 : 1) : 1000;
  pthread_mutex_lock(&svc->monitor_mu);
  while (!svc->monitor_stop) {
    struct timespec ts;
    px_deadline_ts(&ts, CLOCK_MONOTONIC, (int64_t)period);
    pthread_cond_timedwait(&svc->monitor_cv, &svc->monitor_mu, &ts);
    if (svc->monitor_stop) break;
    pthread_mutex_unlock(&svc->monitor_mu);
    uint64_t now = px_now_ms();
    bool newly_dead = false, stalled = false;
    for (uint32_t r = 0; r < svc->cfg.workers; r++) {
      px_worker_state* w = &svc->workers[r];
      if (!atomic_load(&w->incarnation)) continue;
      uint64_t seen = atomic_load(&w->last_seen_ms);
      if (timeout != UINT64_MAX && !atomic_load(&w->dead) && now > seen && now - seen > timeout) {
        atomic_store(&w->dead_since_ms, now);
        atomic_store(&w->dead, 1);
        newly_dead = true;
        px_warn("worker %u (%s) is dead: no call for %.1f s (--worker-timeout %.0f s)%s", r,
                 w->name, (now - seen) / 1000.0, svc->cfg.worker_timeout,
                 svc->cfg.elastic ? "; continuing without it (--elastic)" : "");
      }
      if (!svc->cfg.elastic && atomic_load(&w->dead)) {
        double gone = (now - atomic_load(&w->dead_since_ms)) / 1000.0;
        if (gone >= svc->cfg.rejoin_wait) {
          stalled = true;
          if (!atomic_exchange(&svc->stalled_by_dead, 1)) {
            px_error("worker %u has not come back within --rejoin-wait %.0f s: failing the "
                      "pulls that wait for this step", r, svc->cfg.rejoin_wait);
            fail_waiting_pulls(svc, r, gone + svc->cfg.worker_timeout);
          }
        }
      }
    }
    if (!stalled) atomic_store(&svc->stalled_by_dead, 0);
    if (newly_dead && svc->cfg.elastic) complete_without_dead(svc);
    expire_parked_pulls(svc, now);
    pthread_mutex_lock(&svc->monitor_mu);
  }
  pthread_mutex_unlock(&svc->monitor_mu);
  return NULL;
}

/* ---- Health ------------------------------------------------------------------------------- */

static void handle_health(px_service* svc, px_srv_call* call, const uint8_t* b, size_t n) {
  Grpc__Health__V1__HealthCheckRequest* r = grpc__health__v1__health_check_request__unpack(NULL, n, b);
  if (!r) {
    reject(svc, call, PX_ST_INVALID_ARGUMENT, "malformed HealthCheckRequest");
    return;
  }
  const char* name = r->service ? r->service : "";
  if (name[0] && strcmp(name, "paramex.v1.ParameterExchange") != 0) {
    char err[ERRLEN];
    snprintf(err, sizeof err, "unknown service '%.200s'", name);
    reject(svc, call, PX_ST_NOT_FOUND, err);
  } else {
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    resp.status = draining(svc) ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
                                : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    reply(call, &resp.base);
  }
  grpc__health__v1__health_check_request__free_unpacked(r, NULL);
}

/* ---- dispatch ------------------------------------------------------------------------------ */

#define UNARY_ENTRY(fn_name, handler, gate)                                   \
  static void fn_name(void* s, px_srv_call* call, px_msg* req) {           \
    px_service* svc = s;                                                     \
    if ((gate) && draining(svc)) {                                            \
      px_msg_free(req);                                                      \
      reject(svc, call, PX_ST_UNAVAILABLE, "server is shutting down");      \
      return;                                                                 \
    }                                                                         \
    submit_unary(svc, call, req, handler);                                    \
  }
UNARY_ENTRY(on_join, handle_join, true)
UNARY_ENTRY(on_declare, handle_declare, true)
/* A pull counts as active from its arrival (so that a drain waits for a pull still
 * queued on the pool) until its call is done; pulls refused before they start stop
 * counting at once. */
static void handle_pull_checked(px_service* svc, px_srv_call* call, const uint8_t* b, size_t n) {
  if (!stale_server(svc, call)) handle_pull(svc, call, b, n);
  if (!px_srv_call_has_ctx(call)) atomic_fetch_sub(&svc->active_calls, 1);
}
static void on_pull(void* s, px_srv_call* call, px_msg* req) {
  px_service* svc = s;
  if (draining(svc)) {
    px_msg_free(req);
    reject(svc, call, PX_ST_UNAVAILABLE, "server is shutting down");
    return;
  }
  atomic_fetch_add(&svc->active_calls, 1);
  submit_unary(svc, call, req, handle_pull_checked);
}
UNARY_ENTRY(on_stats, handle_stats, false)
UNARY_ENTRY(on_checkpoint, handle_checkpoint, true)
UNARY_ENTRY(on_heartbeat, handle_heartbeat, false)
UNARY_ENTRY(on_health, handle_health, false)

static const px_rpc_method methods[] = {
    {"/paramex.v1.ParameterExchange/Join", PX_RPC_UNARY, on_join},
    {"/paramex.v1.ParameterExchange/Declare", PX_RPC_UNARY, on_declare},
    {"/paramex.v1.ParameterExchange/Push", PX_RPC_CLIENT_STREAMING, on_push},
    {"/paramex.v1.ParameterExchange/Pull", PX_RPC_SERVER_STREAMING, on_pull},
    {"/paramex.v1.ParameterExchange/Stats", PX_RPC_UNARY, on_stats},
    {"/paramex.v1.ParameterExchange/Checkpoint", PX_RPC_UNARY, on_checkpoint},
    {"/paramex.v1.ParameterExchange/Heartbeat", PX_RPC_UNARY, on_heartbeat},
    {"/grpc.health.v1.Health/Check", PX_RPC_UNARY, on_health},
};

int px_service_init(px_service* svc, const px_config* cfg, char* err, size_t errlen) {
  memset(svc, 0, sizeof *svc);
  svc->cfg = *cfg;
  svc->start_ms = px_now_ms();
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  /* Incarnations stay unique across restarts of the server: they start at the wall
   * clock in microseconds. */
  uint64_t now_us = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
  atomic_init(&svc->next_incarnation, now_us);
  snprintf(svc->server_id, sizeof svc->server_id, "%llx-%d", (unsigned long long)now_us,
           (int)getpid());
  pthread_mutex_init(&svc->declare_mu, NULL);
  pthread_mutex_init(&svc->park_mu, NULL);
  atomic_init(&svc->hold_left, (int64_t)cfg->hold_bytes);
  const char* fault = getenv("PMX_FAULT_CORRUPT_PULL");
  if (fault && *fault) {
    svc->fault_corrupt_every = strtoull(fault, NULL, 10);
    px_warn("PMX_FAULT_CORRUPT_PULL=%llu: every %lluth pulled frame is sent corrupted (a test hook)",
             (unsigned long long)svc->fault_corrupt_every,
             (unsigned long long)svc->fault_corrupt_every);
  }
  int brc = px_backend_create(cfg, &svc->backend, err, errlen);
  if (brc != 0) return brc;
  svc->tensors = calloc(cfg->max_tensors, sizeof *svc->tensors);
  svc->workers = calloc(cfg->workers, sizeof *svc->workers);
  svc->pool = px_pool_create(cfg->threads);
  if (!svc->tensors || !svc->workers || !svc->pool) {
    snprintf(err, errlen, "out of memory at start");
    return -1;
  }
  if (px_ckpt_init(svc, err, errlen) != 0) return -1;
  if (px_ckpt_restore(svc) != 0) {
    snprintf(err, errlen, "could not restore from %s (see above)", cfg->checkpoint_dir);
    return -1;
  }
  return 0;
}

int px_service_start(px_service* svc, int* port, char* err, size_t errlen) {
  px_rpc_server_opts o = {.listen = svc->cfg.listen, .cq_threads = svc->cfg.cq_threads,
                           .max_calls = svc->cfg.max_calls,
                           .token_exempt_prefix = "/grpc.health.v1.Health/"};
  const size_t max_pem = 1u << 20;
  if (svc->cfg.tls_cert) {
    svc->tls_cert_pem = px_read_file(svc->cfg.tls_cert, max_pem, NULL, err, errlen);
    if (svc->tls_cert_pem)
      svc->tls_key_pem = px_read_file(svc->cfg.tls_key, max_pem, NULL, err, errlen);
    if (svc->tls_key_pem && svc->cfg.tls_client_ca)
      svc->tls_client_ca_pem = px_read_file(svc->cfg.tls_client_ca, max_pem, NULL, err, errlen);
    if (!svc->tls_cert_pem || !svc->tls_key_pem || (svc->cfg.tls_client_ca && !svc->tls_client_ca_pem))
      return -1;
    o.tls_cert_pem = svc->tls_cert_pem;
    o.tls_key_pem = svc->tls_key_pem;
    o.tls_client_ca_pem = svc->tls_client_ca_pem;
  }
  if (svc->cfg.token_file) {
    svc->token = px_read_token(svc->cfg.token_file, err, errlen);
    if (!svc->token) return -1;
    o.token = svc->token;
  }
  svc->rpc = px_rpc_server_start(&o, methods, sizeof methods / sizeof methods[0], svc, port,
                                  err, errlen);
  if (!svc->rpc) return -1;
  pthread_mutex_init(&svc->monitor_mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&svc->monitor_cv, &ca);
  pthread_condattr_destroy(&ca);
  if (pthread_create(&svc->monitor, NULL, monitor_thread, svc) == 0)
    svc->monitor_started = true;
  return 0;
}

int px_service_stop(px_service* svc) {
  if (svc->monitor_started) {
    pthread_mutex_lock(&svc->monitor_mu);
    svc->monitor_stop = true;
    pthread_cond_broadcast(&svc->monitor_cv);
    pthread_mutex_unlock(&svc->monitor_mu);
    pthread_join(svc->monitor, NULL);
    svc->monitor_started = false;
  }
  /* Health turns NOT_SERVING and parked pulls end with UNAVAILABLE at once: they may wait
   * for a step that will never come. Pushes and sends in flight get the drain time. */
  pmx_pull* list = NULL;
  pthread_mutex_lock(&svc->park_mu);
  svc->draining = true;
  uint32_t nt = atomic_load(&svc->ntensors);
  for (uint32_t i = 0; i < nt; i++) {
    px_tensor_state* t = svc->tensors[i];
    for (uint32_t k = 0; k < t->nchunks; k++) {
      px_chunk_state* c = &t->chunks[k];
      while (c->waiters) {
        pmx_pull* p = c->waiters;
        c->waiters = p->wnext;
        p->parked_on = NULL;
        p->wnext = list;
        list = p;
      }
    }
  }
  pthread_mutex_unlock(&svc->park_mu);
  while (list) {
    pmx_pull* next = list->wnext;
    pull_end(list, PX_ST_UNAVAILABLE, "server is shutting down");
    list = next;
  }
  px_ckpt_fail_waiters(svc);
  /* Drain while still answering: health says NOT_SERVING and new work gets UNAVAILABLE,
   * pushes and pulls in flight may finish; then the transport stops (cancelling what is
   * left when --drain-timeout is spent). */
  const uint64_t drain_ms = (uint64_t)(svc->cfg.drain_timeout * 1000.0);
  const uint64_t until = px_now_ms() + drain_ms;
  for (int i = 0; i < 100000 && atomic_load(&svc->active_calls) > 0 && px_now_ms() < until; i++) {
    struct timespec ts = {0, 5 * 1000000L};
    nanosleep(&ts, NULL);
  }
  uint64_t now = px_now_ms();
  px_info("drained: %lld push/pull calls still active after %llu ms",
           (long long)atomic_load(&svc->active_calls), (unsigned long long)(drain_ms - (until > now ? until - now : 0)));
  px_rpc_server_shutdown(svc->rpc, (int64_t)(until > now ? until - now : 0));
  /* every call is over: the final checkpoint sees no more steps */
  if (svc->cfg.checkpoint_dir && atomic_load(&svc->ntensors) > 0)
    return px_ckpt_final(svc, (int64_t)(svc->cfg.drain_timeout * 1000.0) + 60000);
  return 0;
}

void px_service_deinit(px_service* svc) {
  px_ckpt_shutdown(svc);
  px_pool_destroy(svc->pool);
  px_rpc_server_destroy(svc->rpc);
  uint32_t nt = atomic_load(&svc->ntensors);
  for (uint32_t i = 0; i < nt; i++) {
    px_tensor_state* t = svc->tensors[i];
    for (uint32_t k = 0; k < t->nchunks; k++) {
      px_chunk_state* c = &t->chunks[k];
      px_frames_clear(svc, c, true);
      for (uint32_t w = 0; w < svc->cfg.workers; w++)
        if (c->held[w].buf && !c->held[w].owner) px_buf_put(c->held[w].buf, svc->cfg.chunk_bytes);
      free(c->contributed);
      free(c->held);
      pthread_mutex_destroy(&c->mu);
    }
    svc->backend->ops->tensor_destroy(svc->backend, t);
    free(t->chunks);
    px_big_free(t->params, t->params_bytes);
    free(t);
  }
  px_backend_destroy(svc->backend);
  svc->backend = NULL;
  free(svc->tensors);
  free(svc->workers);
  free(svc->tls_cert_pem);
  px_free_secret(svc->tls_key_pem);
  free(svc->tls_client_ca_pem);
  px_free_secret(svc->token);
}
