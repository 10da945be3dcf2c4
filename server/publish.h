/* Producing the frames of a chunk's versions (framecache.h keeps them): the frames of a
 * step, encoded once outside the chunk's lock right after the step, and the frames built
 * on demand on the compute pool (another base, a full chunk). Each wakes the chunk's
 * parked pulls when done, by running them (waiters.h) on the calling thread. */
#ifndef PX_PUBLISH_H
#define PX_PUBLISH_H

#include <stdbool.h>
#include <stdint.h>

#include "backend/backend.h"
#include "framecache.h"
#include "store.h"
#include "util/taskpool.h"
#include "waiters.h"

typedef struct px_publish {
  px_fcache* fc;
  px_backend* backend;
  px_waiters* waiters;
  px_taskpool* pool; /* where builds run */
} px_publish;

/* After a step moved chunk c to version (c->mu NOT held): io holds what the backend
 * produced for the views that were enabled (io->bits[v] non-NULL; io->enc[v] too when the
 * step's delta is encoded: px_fcache_eager_delta). With io->enc it compresses the per-step
 * deltas, extends the history and primes the cache with the frames for base version-1;
 * without, it installs the RAW frames of the new version (taking io->bits[v] over). When
 * io->bits[0] is NULL (the outputs could not be allocated) it drops the chunk's frames so
 * that pulls build what they need. Then it sets the view checksums and runs the pulls
 * parked on c. io's buffers stay the caller's to free (px_step_io_free). */
void px_publish_step(px_publish* p, px_tensor_state* t, px_chunk_state* c, uint64_t version,
                     px_step_io* io);
/* Starts building the frame for key of view `view` at c's version on the pool (c->mu held,
 * px_fcache_get answered PX_FC_BUILD). false when out of memory: the claimed slot is
 * released and the caller should answer RESOURCE_EXHAUSTED. */
bool px_publish_build(px_publish* p, px_tensor_state* t, px_chunk_state* c, int view, uint64_t key);

#endif
