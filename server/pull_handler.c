/* Pull calls (pull_handler.h). */
#include "pull_handler.h"

#include <stdio.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calls.h"
#include "codec/dtype.h"
#include "codec/payload.h"
#include "paramex.pb-c.h"
#include "util/clock.h"
#include "wire/chunk_msg.h"

#define ERRLEN 512

typedef struct pull_call {
  px_puller p; /* first */
  px_srv_call* call;
} pull_call;

#define PULL_CALL(pl) ((pull_call*)(pl))

void px_puller_free(px_puller* p) {
  free(p->tids);
  free(p->have);
  free(p->sel);
  p->tids = NULL;
  p->have = NULL;
  p->sel = NULL;
}

static void pull_on_done(px_srv_call* call, void* ctx) {
  (void)call;
  pull_call* pc = ctx;
  atomic_fetch_sub(&pc->p.srv->active_calls, 1);
  px_puller_free(&pc->p);
  free(pc);
}

/* What the next chunk allows, decided under its lock. */
typedef enum { NEXT_SEND, NEXT_PARK, NEXT_END } next_kind;
typedef struct next_chunk {
  next_kind kind;
  int status;          /* NEXT_END */
  const char* msg;
  char text[512];      /* msg, when it is composed */
  px_frame* f;         /* NEXT_SEND: the frame, or NULL for UNCHANGED */
  uint64_t version, sum;
} next_chunk;

/* The frame of chunk c for this pull (c->mu held, c at a version the pull accepts). */
static void choose_frame(px_puller* p, px_tensor_state* t, px_chunk_state* c, int vi,
                         next_chunk* nx) {
  px_server* srv = p->srv;
  px_viewcache* vs = &c->view[vi];
  const uint64_t have = p->have ? p->have[p->ti] : PX_BASE_NONE;
  vs->enabled = true; /* the bf16 view: its history starts with the next step */
  nx->version = c->version;
  if (have == c->version && vs->checksum_valid) {
    nx->kind = NEXT_SEND; /* UNCHANGED */
    nx->sum = vs->checksum;
    return;
  }
  uint64_t key = px_fcache_key(&srv->fcache, vs, c->version, have, p->accept_delta,
                               p->accept_shuffle);
  switch (px_fcache_get(&srv->fcache, vs, c->version, key, &nx->f)) {
    case PX_FC_HIT:
      nx->kind = NEXT_SEND;
      return;
    case PX_FC_WAIT:
      nx->kind = NEXT_PARK;
      return;
    case PX_FC_BUILD:
      if (px_publish_build(&srv->publish, t, c, vi, key)) {
        nx->kind = NEXT_PARK;
        return;
      }
      __attribute__((fallthrough)); /* no memory to build it */
    case PX_FC_FULL:
      nx->kind = NEXT_END;
      nx->status = PX_ST_RESOURCE_EXHAUSTED;
      nx->msg = "no memory for another frame within --memory-limit (or out of memory)";
      return;
  }
}

/* BSP: the rank of a worker that left longer than --rejoin-wait ago and that the steps
 * up to min_version still need (it did not contribute to chunk c's current step, or a
 * later step is needed), or UINT32_MAX. c->mu held. */
static uint32_t left_blocking(px_members* m, const px_chunk_state* c, uint64_t min_version) {
  if (!atomic_load(&m->nleft)) return UINT32_MAX;
  for (uint32_t r = 0; r < m->n; r++)
    if (px_members_left_expired(m, r) && (min_version > c->version + 1 || !c->contributed[r]))
      return r;
  return UINT32_MAX;
}

/* Whether the upload of t's initial values stopped for good: its creator (still the
 * same incarnation, so no restart took it over) is dead or left. */
static bool creator_gone(px_members* m, const px_tensor_state* t) {
  if (t->creator >= m->n) return false;
  if (atomic_load(&m->w[t->creator].incarnation) != atomic_load(&t->creator_incarnation))
    return false;
  return px_members_gone(m, t->creator);
}

/* Decides the next step of the pull on chunk c (locks it); parks the pull when it must
 * wait. */
static void pull_next(px_puller* p, px_tensor_state* t, px_chunk_state* c, int vi,
                      next_chunk* nx) {
  px_server* srv = p->srv;
  memset(nx, 0, sizeof *nx);
  pthread_mutex_lock(&c->mu);
  const bool waits_version = c->initialized && c->version < p->min_version;
  if (!c->initialized || waits_version) nx->kind = NEXT_PARK;
  else choose_frame(p, t, c, vi, nx);
  uint32_t gone = UINT32_MAX;
  if (nx->kind == NEXT_PARK && waits_version && !srv->cfg.elastic)
    gone = left_blocking(&srv->members, c, p->min_version);
  if (nx->kind == NEXT_PARK && !c->initialized && creator_gone(&srv->members, t)) {
    nx->kind = NEXT_END;
    nx->status = PX_ST_FAILED_PRECONDITION;
    snprintf(nx->text, sizeof nx->text,
             "values of '%.255s' incomplete: %" PRIu64 " of %" PRIu64 " elements, and worker %u "
             "that declares them %s: it sends them again when it joins again", t->name,
             (uint64_t)atomic_load(&t->init_cursor), t->numel, t->creator,
             px_members_left(&srv->members, t->creator) ? "left" : "is dead");
    nx->msg = nx->text;
  } else if (gone != UINT32_MAX) {
    nx->kind = NEXT_END;
    nx->status = PX_ST_FAILED_PRECONDITION;
    snprintf(nx->text, sizeof nx->text,
             "worker %u left (finished) without its contribution to step %" PRIu64 " of '%.255s' "
             "and did not join again within --rejoin-wait: without --elastic every step needs "
             "every worker", gone,
             p->min_version > c->version + 1 ? c->version + 1 : c->version, t->name);
    nx->msg = nx->text;
  } else if (nx->kind == NEXT_PARK && waits_version && atomic_load(&srv->members.stalled_by_dead)) {
    nx->kind = NEXT_END;
    nx->status = PX_ST_FAILED_PRECONDITION;
    nx->msg = "a worker has been gone longer than --rejoin-wait: this step cannot complete "
              "(restart that worker, or run the server with --elastic)";
  } else if (nx->kind == NEXT_PARK &&
             (p->waiter.expired || px_now_ms() > p->waiter.deadline_ms)) {
    nx->kind = NEXT_END;
    nx->status = PX_ST_DEADLINE_EXCEEDED;
    nx->msg = "the pull waited longer than the server's --call-timeout";
  } else if (nx->kind == NEXT_PARK) {
    px_park_result r = px_waiters_park(&srv->waiters, &c->waiters, &p->waiter);
    if (r != PX_PARKED) {
      nx->kind = NEXT_END;
      nx->status = r == PX_PARK_CLOSED ? -1 : PX_ST_UNAVAILABLE;
      nx->msg = "server is shutting down";
    }
  }
  pthread_mutex_unlock(&c->mu);
}

/* Hands chunk c's frame (nx->f, or UNCHANGED when NULL) to the sink, which takes the
 * frame reference; true when the sink goes on at once. */
static bool pull_send(px_puller* p, px_tensor_state* t, px_chunk_state* c, int vi,
                      const next_chunk* nx) {
  px_server* srv = p->srv;
  px_frame* f = nx->f;
  px_chunk h = {0};
  h.tensor_id = t->id;
  h.chunk = c->index;
  h.version = nx->version;
  h.dtype = vi == 1 ? PX_DT_BF16 : (uint32_t)t->dtype;
  h.raw_len = (uint32_t)((size_t)c->elems * px_view_width(t, vi));
  if (!f) {
    h.encoding = PX_ENC_UNCHANGED;
    h.base_version = nx->version;
    h.checksum = nx->sum;
    atomic_fetch_add(&srv->ctr.pull_unchanged, 1);
  } else {
    h.encoding = f->encoding;
    h.base_version = f->encoding == PX_ENC_DELTA_ZSTD ? f->base : 0;
    h.checksum = f->checksum;
    atomic_fetch_add(f->encoding == PX_ENC_DELTA_ZSTD ? &srv->ctr.pull_delta
                                                      : &srv->ctr.pull_snapshot, 1);
  }
  size_t body = f ? f->len : 0;
  uint8_t head[PX_CHUNK_HDR_MAX];
  size_t hl = px_chunk_encode_header(PX_CHUNK_PULL, &h, body, head, sizeof head);
  px_out out = {head, hl, f ? f->data : NULL, body, f ? px_frame_unref : NULL, f};
  atomic_fetch_add(&srv->ctr.pull_chunks, 1);
  atomic_fetch_add(&srv->ctr.pull_raw_bytes, h.raw_len);
  atomic_fetch_add(&srv->ctr.pull_wire_bytes, hl + body);
  atomic_fetch_add(&srv->ctr.pull_wire_enc[h.encoding & 3], hl + body);
  atomic_fetch_add(&t->pull_raw, h.raw_len);
  atomic_fetch_add(&t->pull_wire, hl + body);
  if (p->sel) p->ki++;
  else p->ci++;
  return p->sink->emit(p, &out);
}

void px_puller_advance(px_puller* p) {
  for (;;) {
    if (p->ti >= p->ntensors) {
      p->sink->end(p, PX_ST_OK, NULL);
      return;
    }
    px_tensor_state* t = px_store_tensor(&p->srv->store, p->tids[p->ti]);
    /* ci counts the chunks held here (t->own); a healing pull names its own */
    uint32_t idx = p->sel ? (p->ki < p->nsel ? p->sel[p->ki] : t->nchunks)
                          : (p->ci < t->nown ? t->own[p->ci] : t->nchunks);
    if (idx >= t->nchunks) {
      p->ti++;
      p->ci = 0;
      continue;
    }
    px_chunk_state* c = &t->chunks[idx];
    const int vi = p->view == 1 && t->dtype == PX_DT_F32 ? 1 : 0;
    next_chunk nx;
    pull_next(p, t, c, vi, &nx);
    if (nx.kind == NEXT_END) p->sink->end(p, nx.status, nx.msg);
    else if (nx.kind == NEXT_SEND && pull_send(p, t, c, vi, &nx)) continue;
    return; /* parked: a wake resumes it; sent: the sink goes on */
  }
}

static void pull_wake(px_job* j) {
  px_puller_advance((px_puller*)((char*)j - offsetof(px_puller, waiter.job)));
}

/* ---- the Pull call's sink ------------------------------------------------------------------ */

/* Ends the pull's active reference (status < 0: the call is over already). */
static void call_end(px_puller* p, int status, const char* msg) {
  pull_call* pc = PULL_CALL(p);
  if (status >= 0) px_srv_call_finish(pc->call, NULL, status, msg);
  px_srv_call_unref(pc->call);
}

static bool call_emit(px_puller* p, const px_out* out) {
  /* false: the call is over (then finishing does nothing) or gRPC refused the batch */
  if (!px_srv_call_send(PULL_CALL(p)->call, out))
    call_end(p, PX_ST_INTERNAL, "server error: a pull chunk could not be sent");
  return false; /* the send's completion goes on */
}

static const px_pull_sink call_sink = {call_emit, call_end};

static void pull_on_sent(px_srv_call* call, void* ctx, bool ok) {
  (void)call;
  px_puller* p = ctx;
  if (!ok) call_end(p, -1, NULL);
  else px_puller_advance(p); /* no compute: takes a frame reference and starts the next send */
}

static void pull_on_closed(px_srv_call* call, void* ctx, bool cancelled) {
  (void)cancelled;
  px_puller* p = ctx;
  /* a parked pull held its active reference; closed, it never parks again */
  if (px_waiters_close(&p->srv->waiters, &p->waiter)) px_srv_call_unref(call);
}

static const px_srv_call_cbs pull_cbs = {NULL, pull_on_sent, pull_on_closed, pull_on_done};

/* PullRequest.chunks: one tensor, indices ascending and in range. */
static int chunks_check(px_server* srv, const Paramex__V1__PullRequest* r, char* err,
                        size_t errlen) {
  if (r->n_chunks == 0) return PX_ST_OK;
  if (r->n_tensor_ids != 1) {
    snprintf(err, errlen, "PullRequest chunks name the chunks of one tensor, but %zu tensors "
             "are asked for", r->n_tensor_ids);
    return PX_ST_INVALID_ARGUMENT;
  }
  const px_tensor_state* t = px_store_tensor(&srv->store, r->tensor_ids[0]);
  for (size_t k = 0; k < r->n_chunks; k++) {
    if (r->chunks[k] >= t->nchunks) {
      snprintf(err, errlen, "PullRequest chunk %u of tensor '%s' does not exist (it has %u)",
               r->chunks[k], t->name, t->nchunks);
      return PX_ST_INVALID_ARGUMENT;
    }
    if (k > 0 && r->chunks[k] <= r->chunks[k - 1]) {
      snprintf(err, errlen, "PullRequest chunks must ascend strictly (%u after %u)",
               r->chunks[k], r->chunks[k - 1]);
      return PX_ST_INVALID_ARGUMENT;
    }
    if (!t->chunks[r->chunks[k]].own)
      return px_store_foreign(&srv->store, t, r->chunks[k], err, errlen);
  }
  return PX_ST_OK;
}

/* Checks r; a status and err. */
static int request_check(px_server* srv, const Paramex__V1__PullRequest* r, char* err,
                         size_t errlen) {
  if (r->n_tensor_ids == 0) {
    snprintf(err, errlen, "PullRequest names no tensor");
    return PX_ST_INVALID_ARGUMENT;
  }
  int st = px_members_check_caller(&srv->members, r->worker_id, r->incarnation, err, errlen);
  if (st != PX_ST_OK) return st;
  if (r->view != PARAMEX__V1__DTYPE__DTYPE_UNSPECIFIED && r->view != PARAMEX__V1__DTYPE__DTYPE_BF16) {
    snprintf(err, errlen, "PullRequest view %d is not supported (unspecified or bf16)",
             (int)r->view);
    return PX_ST_INVALID_ARGUMENT;
  }
  if (r->n_have_versions != 0 && r->n_have_versions != r->n_tensor_ids) {
    snprintf(err, errlen, "PullRequest has %zu have_versions for %zu tensors",
             r->n_have_versions, r->n_tensor_ids);
    return PX_ST_INVALID_ARGUMENT;
  }
  for (size_t i = 0; i < r->n_tensor_ids; i++) {
    if (!px_store_tensor(&srv->store, r->tensor_ids[i])) {
      snprintf(err, errlen, "unknown tensor id %u", r->tensor_ids[i]);
      return PX_ST_NOT_FOUND;
    }
  }
  return chunks_check(srv, r, err, errlen);
}

/* Fills p from r; false when out of memory. */
static bool pull_setup(px_puller* p, const Paramex__V1__PullRequest* r) {
  p->tids = malloc(r->n_tensor_ids * sizeof *p->tids);
  p->have = r->n_have_versions ? malloc(r->n_tensor_ids * sizeof *p->have) : NULL;
  p->sel = r->n_chunks ? malloc(r->n_chunks * sizeof *p->sel) : NULL;
  if (!p->tids || (r->n_have_versions && !p->have) || (r->n_chunks && !p->sel)) return false;
  if (p->sel) memcpy(p->sel, r->chunks, r->n_chunks * sizeof *p->sel);
  p->nsel = (uint32_t)r->n_chunks;
  p->ntensors = (uint32_t)r->n_tensor_ids;
  memcpy(p->tids, r->tensor_ids, r->n_tensor_ids * sizeof *p->tids);
  if (p->have) memcpy(p->have, r->have_versions, r->n_tensor_ids * sizeof *p->have);
  p->min_version = r->min_version;
  p->view = r->view == PARAMEX__V1__DTYPE__DTYPE_BF16 ? 1 : 0;
  for (size_t i = 0; i < r->n_accept; i++) {
    if ((int)r->accept[i] == PX_ENC_DELTA_ZSTD) p->accept_delta = true;
    if ((int)r->accept[i] == PX_ENC_SHUFFLE_ZSTD) p->accept_shuffle = true;
  }
  p->waiter.job.fn = pull_wake;
  px_waiters_rearm(&p->srv->waiters, &p->waiter,
                   px_now_ms() + (uint64_t)(p->srv->cfg.call_timeout * 1000.0));
  return true;
}

int px_puller_setup(px_puller* p, const Paramex__V1__PullRequest* r, char* err, size_t errlen) {
  int st = request_check(p->srv, r, err, errlen);
  if (st == PX_ST_OK && !pull_setup(p, r))
    st = PX_ST_RESOURCE_EXHAUSTED, snprintf(err, errlen, "out of memory");
  if (st == PX_ST_OK && r->incarnation) px_members_seen(&p->srv->members, r->worker_id);
  return st;
}

/* Parses the request and starts streaming; the call is answered in every case. */
static void pull_start(pull_call* pc, px_msg* req) {
  px_server* srv = pc->p.srv;
  char err[ERRLEN];
  size_t n = 0;
  const uint8_t* b = req ? px_msg_flat(req, &n) : (const uint8_t*)"";
  Paramex__V1__PullRequest* r = b ? paramex__v1__pull_request__unpack(NULL, n, b) : NULL;
  int st = PX_ST_OK;
  if (!b) st = PX_ST_RESOURCE_EXHAUSTED, snprintf(err, sizeof err, "out of memory reading request");
  else if (!r) st = PX_ST_INVALID_ARGUMENT, snprintf(err, sizeof err, "malformed PullRequest");
  else st = px_puller_setup(&pc->p, r, err, sizeof err);
  if (r) paramex__v1__pull_request__free_unpacked(r, NULL);
  px_msg_free(req);
  if (st != PX_ST_OK) {
    px_reject(&srv->ctr, pc->call, st, err);
    return;
  }
  px_srv_call_ref(pc->call); /* the pull's active reference */
  px_puller_advance(&pc->p);
}

void px_pull_on_call(void* s, px_srv_call* call, px_msg* req) {
  px_server* srv = s;
  pull_call* pc = px_data_call_new(&srv->ctr, &srv->store, &srv->waiters, srv->server_id, call,
                                  sizeof *pc);
  if (!pc) {
    px_msg_free(req);
    return;
  }
  pc->p.srv = srv;
  pc->p.sink = &call_sink;
  pc->call = call;
  /* a pull counts as active from its arrival until its call is done (pull_on_done) */
  atomic_fetch_add(&srv->active_calls, 1);
  px_srv_call_set(call, &pull_cbs, pc);
  pull_start(pc, req);
}
