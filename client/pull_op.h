/* Pull operations (pull_op.c): a Pull call streaming the wanted chunks into the caller's
 * buffers, each decoded and checked against its checksum before the buffer is written;
 * the chunks that failed are pulled again, each tensor's in one call (PullRequest.chunks), a
 * bounded number of times.
 * The client remembers which version each buffer holds, so that the next pull gets
 * UNCHANGED chunks and diffs. Internal to libparamex (the API: pmx_pull* of paramex.h). */
#ifndef PX_PULL_OP_H
#define PX_PULL_OP_H

#include "op.h"

extern const px_op_kind px_pull_kind;

/* pmx_pull_as_async with one server. */
pmx_status px_pull_as_async(pmx_client* c, size_t n, pmx_tensor* const* tensors, void* const* dst,
                           pmx_dtype view, uint64_t min_version, uint64_t* versions,
                           pmx_op** out);

/* A pull op (not started) of pmx_pull_as_async's arguments, checked as it checks them:
 * what each buffer holds is taken over (and forgotten by the tensors until it ends). */
pmx_status px_pull_op_new(pmx_client* c, size_t n, pmx_tensor* const* tensors, void* const* dst,
                          pmx_dtype view, uint64_t min_version, uint64_t* versions, pmx_op** out);
/* Frees an op of px_pull_op_new that wrote nothing to dst: each buffer holds again what it
 * held before. */
void px_pull_op_abandon(pmx_op* op);
/* op's PullRequest, packed (malloc'd, *len bytes); NULL when out of memory. */
uint8_t* px_pull_request_pack(pmx_op* op, size_t* len);
/* Decodes one PullChunk message (wire bytes in all) into the buffer it belongs to and
 * moves op's cursor. false, with op's error set, when the chunk is not the one expected
 * or malformed (the pull must end); a chunk that fails its checksum is not an error here
 * (its tensor is pulled again by finish). */
bool px_pull_take_chunk(pmx_op* op, const px_iov* seg, size_t nseg, size_t wire);

#endif
