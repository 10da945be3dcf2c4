/* Per-thread scratch buffers: working memory for decoding, encoding and the cpu
 * backend's step, reused for the thread's life (freed when it exits) so that the hot paths
 * allocate nothing. Each thread has PX_SCRATCH_SLOTS independent slots; a function that
 * uses slots says which in its contract, and callers must not hold a pointer from a slot
 * across a call that uses the same slot. */
#ifndef PX_SCRATCH_H
#define PX_SCRATCH_H

#include <stddef.h>
#include <stdint.h>

#define PX_SCRATCH_SLOTS 4

/* Slot `which` (0..PX_SCRATCH_SLOTS-1) of the calling thread, at least bytes bytes
 * (64-byte aligned; its old contents are lost when it grows). NULL when out of memory. */
uint8_t* px_scratch(int which, size_t bytes);

#endif
