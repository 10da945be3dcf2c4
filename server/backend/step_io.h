/* The output buffers of a step (px_step_io, backend.h) and their cpu computation. */
#ifndef PX_STEP_IO_H
#define PX_STEP_IO_H

#include <stdbool.h>
#include <stddef.h>

#include "backend/backend.h"

/* Fills io with buffers (util/bufpool.h) for a step of a chunk of n words of dtype:
 * bits[0] always, the bf16 view when view1 (f32 tensors only), the encoder inputs when
 * encode. All or nothing: when out of memory every pointer is NULL (then io->bits[0] ==
 * NULL says so). ncontrib and first are zero. */
void px_step_io_alloc(px_step_io* io, int dtype, size_t n, bool view1, bool encode);
/* Gives io's buffers back (those still set) and clears it. */
void px_step_io_free(px_step_io* io, int dtype, size_t n);

/* Fills io's outputs (those non-NULL) of a chunk of n words of dtype from host copies of
 * its bits before and after a step: the cpu implementation of the bf16 view and of the
 * encoder inputs (old_bits may be NULL when no encoder input is wanted). Uses
 * px_scratch(1..3); ends the process (px_backend_fatal) when scratch memory runs out. */
void px_step_outputs(int dtype, size_t n, const void* old_bits, const void* new_bits,
                     px_step_io* io);

#endif
