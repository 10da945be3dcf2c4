/* How long this shard's steps take: from the first contribution counted for a step (on
 * any chunk) to the moment the last chunk this shard holds completed it, into a
 * histogram (paramex_step_duration_seconds). The chunks a step must complete are the
 * shard's own (px_counters.own_chunks, counted by the store as tensors are declared), so
 * a step counts only while the shard's chunks move in lockstep, as in training that
 * declares its tensors before the first step and pushes them all every step; a tensor
 * declared later (its chunks start at version 0) stops it. The chunk-level histogram
 * (chunk_hist, paramex_chunk_step_duration_seconds: first contribution to completion of
 * each chunk's step, observed by aggregate.c under the chunk's mutex) always counts.
 * A ring of the recent steps, each slot with its own mutex, taken twice per chunk and step
 * (its first contribution, its completion) for a few nanoseconds: the chunks of one step
 * share it, the chunks of other steps do not. */
#ifndef PX_STEPTIME_H
#define PX_STEPTIME_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "counters.h"
#include "metrics/hist.h"

#define PX_STEPTIME_RING 64

typedef struct px_steptime_slot {
  pthread_mutex_t mu;
  uint64_t step_plus1; /* 0: unused */
  uint64_t first_ns;
  uint64_t done;       /* chunks that completed the step */
} px_steptime_slot;

typedef struct px_steptime {
  px_counters* ctr;
  px_steptime_slot ring[PX_STEPTIME_RING];
  px_hist hist;
  px_hist chunk_hist;       /* every chunk's step (observed by aggregate.c) */
  _Atomic uint64_t last_ns; /* the newest step's duration */
} px_steptime;

void px_steptime_init(px_steptime* st, px_counters* ctr);
/* A chunk's first contribution to step was counted at now_ns. */
void px_steptime_begin(px_steptime* st, uint64_t step, uint64_t now_ns);
/* A chunk completed step at now_ns. */
void px_steptime_end(px_steptime* st, uint64_t step, uint64_t now_ns);

#endif
