/* Rank-ordered aggregation (aggregate.h). */
#include "aggregate.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "backend/step_io.h"
#include "rpc/rpc_base.h"
#include "util/bufpool.h"
#include "util/clock.h"

void px_agg_init(px_agg* a, const px_agg_opts* o, px_backend* backend, px_members* members,
                 px_fcache* fc, px_ckpt* ckpt, px_publish* publish, px_counters* ctr) {
  memset(a, 0, sizeof *a);
  a->o = *o;
  a->backend = backend;
  a->members = members;
  a->fc = fc;
  a->ckpt = ckpt;
  a->publish = publish;
  a->ctr = ctr;
  atomic_init(&a->hold_left, (int64_t)o->hold_bytes);
  px_steptime_init(&a->steps, ctr);
}

/* Moves c->next_rank past the ranks that are accounted for: held contributions are added
 * in rank order; with --elastic, ranks of dead workers and of workers that left that did
 * not contribute are skipped. c->mu held. */
static void chunk_advance(px_agg* a, px_tensor_state* t, px_chunk_state* c, px_agg_after* after) {
  while (c->next_rank < a->o.workers) {
    px_held* hd = &c->held[c->next_rank];
    if (!hd->buf) {
      if (a->o.elastic && !c->contributed[c->next_rank] &&
          px_members_gone(a->members, c->next_rank)) {
        c->next_rank++;
        continue;
      }
      break;
    }
    float* b = hd->buf;
    px_agg_stall* owner = hd->owner;
    bool taken = false;
    /* out of memory: the contribution stays held and the step waits for the next try */
    if (a->backend->ops->accumulate(a->backend, t->be, c->index, c->next_rank, b, false,
                                    &taken) != 0)
      break;
    hd->buf = NULL;
    hd->owner = NULL;
    c->next_rank++;
    if (owner) {
      owner->buf = b; /* the stalled call gets its buffer back and resumes */
      atomic_store(&owner->on, NULL);
      owner->next = after->resumed;
      after->resumed = owner;
    } else {
      px_buf_put(b, a->o.chunk_bytes);
      atomic_fetch_add(&a->hold_left, (int64_t)a->o.chunk_bytes);
    }
  }
}

/* Applies the step when every rank is accounted for (c->mu held); what must happen after
 * the lock is released is recorded in after. */
static void chunk_try_complete(px_agg* a, px_tensor_state* t, px_chunk_state* c,
                               px_agg_after* after) {
  if (c->next_rank != a->o.workers || c->ncontrib == 0 || after->step_c) return;
  const bool encode = px_fcache_eager_delta(a->fc, c->view, c->version + 1);
  px_step_io_alloc(&after->io, t->dtype, c->elems, c->view[1].enabled, encode);
  after->io.ncontrib = c->ncontrib;
  after->io.first = c->mom_first;
  after->io.lr = px_lr_at(&a->o.sched, c->version);
  px_ckpt_before_step(a->ckpt, t, c);
  /* the optimizer; c->params holds the new version when it returns */
  a->backend->ops->step(a->backend, t->be, c->index, &after->io);
  c->mom_first = false;
  c->next_rank = 0;
  c->ncontrib = 0;
  memset(c->contributed, 0, a->o.workers);
  c->version++;
  atomic_fetch_add(&a->ctr->steps_completed, 1);
  const uint64_t now = px_now_ns();
  px_hist_observe_ns(&a->steps.chunk_hist, now > c->step_begin_ns ? now - c->step_begin_ns : 0);
  px_steptime_end(&a->steps, c->version - 1, now);
  px_fcache_step_begin(a->fc, c->view, c->version, encode);
  px_ckpt_after_step(a->ckpt, t, c);
  after->step_t = t;
  after->step_c = c;
  after->step_version = c->version;
}

/* Which step a push of `step` to chunk c is; PX_AGG_REFUSED with status and err when it
 * cannot count. c->mu held. */
static px_agg_result step_check(px_tensor_state* t, px_chunk_state* c, uint64_t step,
                                uint32_t rank, int* status, char* err, size_t errlen) {
  if (!c->initialized) {
    *status = PX_ST_FAILED_PRECONDITION;
    snprintf(err, errlen, "tensor '%s' is still receiving its initial values", t->name);
    return PX_AGG_REFUSED;
  }
  if (step > c->version) {
    *status = PX_ST_OUT_OF_RANGE;
    snprintf(err, errlen, "tensor '%s' chunk %u: step %" PRIu64 " is ahead of version %" PRIu64,
             t->name, c->index, step, c->version);
    return PX_AGG_REFUSED;
  }
  if (step + 1 < c->version) {
    *status = PX_ST_FAILED_PRECONDITION;
    snprintf(err, errlen, "tensor '%s' chunk %u: step %" PRIu64 " is too old (chunk at version %"
             PRIu64 ")", t->name, c->index, step, c->version);
    return PX_AGG_REFUSED;
  }
  if (step + 1 == c->version || c->contributed[rank]) return PX_AGG_DUPLICATE;
  return PX_AGG_COUNTED;
}

/* Holds rank's contribution until its turn; PX_AGG_STALLED when the budget is spent. */
static px_agg_result hold(px_agg* a, px_chunk_state* c, uint32_t rank, float** buf,
                          px_agg_stall* stall) {
  const int64_t cb = (int64_t)a->o.chunk_bytes;
  px_held* hd = &c->held[rank];
  hd->buf = *buf;
  *buf = NULL;
  if (atomic_fetch_sub(&a->hold_left, cb) >= cb) {
    hd->owner = NULL;
    return PX_AGG_COUNTED;
  }
  /* Budget spent: the call waits, without reading, until its buffer is consumed. Lower
   * ranks never wait for higher ones, so the wait always ends. */
  atomic_fetch_add(&a->hold_left, cb);
  hd->owner = stall;
  stall->rank = rank;
  atomic_store(&stall->on, c);
  return PX_AGG_STALLED;
}

px_agg_result px_agg_push(px_agg* a, px_tensor_state* t, px_chunk_state* c, uint64_t step,
                          uint32_t rank, float** buf, px_agg_stall* stall, px_agg_after* after,
                          int* status, char* err, size_t errlen) {
  pthread_mutex_lock(&c->mu);
  px_agg_result r = step_check(t, c, step, rank, status, err, errlen);
  if (r != PX_AGG_COUNTED) {
    pthread_mutex_unlock(&c->mu);
    return r;
  }
  if (c->ncontrib == 0) {
    c->step_begin_ns = px_now_ns();
    px_steptime_begin(&a->steps, step, c->step_begin_ns);
  }
  c->contributed[rank] = 1;
  c->ncontrib++;
  if (rank <= c->next_rank) {
    /* in rank order; or (elastic) a rank skipped as dead that came back within the step */
    bool taken = false;
    if (a->backend->ops->accumulate(a->backend, t->be, c->index, rank, *buf, true, &taken) != 0) {
      c->contributed[rank] = 0;
      c->ncontrib--;
      pthread_mutex_unlock(&c->mu);
      *status = PX_ST_RESOURCE_EXHAUSTED;
      snprintf(err, errlen, "tensor '%s' chunk %u: out of memory for the sum", t->name, c->index);
      return PX_AGG_REFUSED;
    }
    if (taken) *buf = NULL;
    if (rank == c->next_rank) {
      c->next_rank++;
      chunk_advance(a, t, c, after);
    }
  } else {
    r = hold(a, c, rank, buf, stall);
    chunk_advance(a, t, c, after); /* elastic: dead ranks before it may be skipped */
  }
  chunk_try_complete(a, t, c, after);
  pthread_mutex_unlock(&c->mu);
  return r;
}

void px_agg_finish(px_agg* a, px_agg_after* after) {
  if (!after->step_c) return;
  px_tensor_state* t = after->step_t;
  px_chunk_state* c = after->step_c;
  px_publish_step(a->publish, t, c, after->step_version, &after->io);
  px_step_io_free(&after->io, t->dtype, c->elems);
  after->step_t = NULL;
  after->step_c = NULL;
}

bool px_agg_unstall(px_agg* a, px_agg_stall* s) {
  /* s->on changes only under the chunk's mutex: read it, then confirm under it */
  for (int tries = 0; tries < 2; tries++) {
    px_chunk_state* c = atomic_load(&s->on);
    if (!c) return false;
    pthread_mutex_lock(&c->mu);
    bool mine = atomic_load(&s->on) == c && c->held[s->rank].owner == s;
    if (mine) {
      c->held[s->rank].owner = NULL;
      atomic_fetch_sub(&a->hold_left, (int64_t)a->o.chunk_bytes);
      atomic_store(&s->on, NULL);
    }
    pthread_mutex_unlock(&c->mu);
    if (mine) return true;
  }
  return false;
}

px_agg_stall* px_agg_sweep(px_agg* a, px_store* s) {
  px_agg_stall* resumed = NULL;
  uint32_t nt = px_store_count(s);
  for (uint32_t i = 0; i < nt; i++) {
    px_tensor_state* t = s->tensors[i];
    for (uint32_t k = 0; k < t->nchunks; k++) {
      px_chunk_state* c = &t->chunks[k];
      px_agg_after after;
      memset(&after, 0, sizeof after);
      pthread_mutex_lock(&c->mu);
      if (c->initialized && c->ncontrib > 0) {
        chunk_advance(a, t, c, &after);
        chunk_try_complete(a, t, c, &after);
      }
      pthread_mutex_unlock(&c->mu);
      px_agg_finish(a, &after);
      while (after.resumed) {
        px_agg_stall* r = after.resumed;
        after.resumed = r->next;
        r->next = resumed;
        resumed = r;
      }
    }
  }
  return resumed;
}
