/* The Exchange stream (stream.c): one bidirectional call per client, kept open, that
 * carries a whole small step -- its push chunks and the pull of the version they make --
 * as one StepRequest answered by one StepResponse, instead of a Push and a Pull call.
 * Only a step's success is its own: a step it cannot carry (larger than
 * PX_STREAM_MAX_STEP, not joined, another step on the stream, a server without the
 * Exchange method) or whose answer is not OK is left to the Push and Pull calls, which
 * give every error its usual status, message and retries (a push already counted is a
 * duplicate there). Internal to libparamex. */
#ifndef PX_STREAM_H
#define PX_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "paramex/paramex.h"

/* The largest step (the tensors' bytes) a stream carries: a StepRequest is one message,
 * copied once; above this the Push call's zero-copy chunks pay. */
#define PX_STREAM_MAX_STEP ((size_t)1 << 20)

/* A blocking push (grads; dst NULL), pull (dst, view, min_version, versions; grads NULL)
 * or both (pmx_push_pull: step's push, then the pull at min_version) over the stream.
 * true: it was carried and *st is its result: OK, or an error of the pull (a malformed
 * chunk, no answer within the client's timeout), its message set as pmx_pull sets it.
 * false: nothing was written (a push may have been counted: the Push call repeats it as
 * a duplicate) and the caller runs the Push and Pull calls. */
bool px_stream_run(pmx_client* c, uint64_t step, size_t n, pmx_tensor* const* tensors,
                   const void* const* grads, void* const* dst, pmx_dtype view,
                   uint64_t min_version, uint64_t* versions, pmx_status* st);

#endif
