/* Aggregation (BSP): the contributions of a chunk's step are summed in worker-rank order,
 * whatever order they arrive in, so the result never depends on timing; when every rank is
 * accounted for the optimizer runs and the chunk's version moves on.
 *
 * A contribution that arrives ahead of a lower rank's is held (its buffer kept) within the
 * --hold-bytes budget; past the budget its push call stalls, without reading further, until
 * the buffer is consumed. Lower ranks never wait for higher ones, so every stall ends. With
 * --elastic, ranks of dead workers that did not contribute are skipped.
 *
 * This room never calls the push handler: the pushes whose buffers it consumed are
 * returned in px_agg_after for the caller to resume. */
#ifndef PX_AGGREGATE_H
#define PX_AGGREGATE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"
#include "checkpoint.h"
#include "counters.h"
#include "framecache.h"
#include "lr_schedule.h"
#include "membership.h"
#include "publish.h"
#include "steptime.h"
#include "store.h"

/* Embedded in the state of a push call that may stall: its token. */
typedef struct px_agg_stall {
  struct px_agg_stall* next;        /* in px_agg_after.resumed */
  void (*resume)(struct px_agg_stall* s); /* the owner's: take buf back and go on */
  float* buf;                       /* the call's buffer, given back when it resumes */
  _Atomic(px_chunk_state*) on;      /* the chunk holding the buffer while stalled (set and
                                     * cleared under that chunk's lock) */
  uint32_t rank;
} px_agg_stall;

/* What the caller does after px_agg_push returned: resume these pushes (their buf is
 * back), and px_agg_finish publishes the frames of a step completed on the way. */
typedef struct px_agg_after {
  px_agg_stall* resumed;
  px_tensor_state* step_t; /* non-NULL: a step completed */
  px_chunk_state* step_c;
  uint64_t step_version;
  px_step_io io;
} px_agg_after;

typedef struct px_agg_opts {
  px_lr_sched sched;    /* the lr of each step, by the chunk's version */
  uint32_t workers;
  uint64_t chunk_bytes; /* size of contribution buffers */
  uint64_t hold_bytes;
  bool elastic;
} px_agg_opts;

typedef struct px_agg {
  px_agg_opts o;
  px_backend* backend;
  px_members* members;
  px_fcache* fc;
  px_ckpt* ckpt;
  px_publish* publish;
  px_counters* ctr;
  _Atomic int64_t hold_left; /* bytes of the hold budget still free */
  px_steptime steps;         /* step durations */
} px_agg;

void px_agg_init(px_agg* a, const px_agg_opts* o, px_backend* backend, px_members* members,
                 px_fcache* fc, px_ckpt* ckpt, px_publish* publish, px_counters* ctr);

typedef enum {
  PX_AGG_COUNTED,   /* the contribution is in (summed or held) */
  PX_AGG_DUPLICATE, /* it was already counted (a retried push): nothing changed */
  PX_AGG_STALLED,   /* held, and the hold budget is spent: the call must stop reading until
                     * it is resumed (its buffer went with the contribution) */
  PX_AGG_REFUSED,   /* *status and err say why; nothing changed */
} px_agg_result;

/* Rank's contribution *buf (the chunk's elements, f32, a px_buf_get buffer of chunk_bytes)
 * for step of chunk c. Locks the chunk. Takes *buf when it keeps it (then *buf is NULL).
 * stall is the call's token (used when the result is PX_AGG_STALLED). */
px_agg_result px_agg_push(px_agg* a, px_tensor_state* t, px_chunk_state* c, uint64_t step,
                          uint32_t rank, float** buf, px_agg_stall* stall, px_agg_after* after,
                          int* status, char* err, size_t errlen);
/* After px_agg_push (or px_agg_sweep) returned: publishes the frames of a step it completed
 * (the compute is done; this encodes), and runs the pulls waiting for it. after->resumed is
 * left to the caller. */
void px_agg_finish(px_agg* a, px_agg_after* after);
/* A stalled call went away: it stops waiting (its held contribution stays counted). true
 * when it was stalled: the caller drops what the stall held. */
bool px_agg_unstall(px_agg* a, px_agg_stall* s);
/* --elastic: completes the steps that wait only for dead workers. Returns the resumed
 * pushes of every chunk (their steps' frames are already published). */
px_agg_stall* px_agg_sweep(px_agg* a, px_store* s);

#endif
