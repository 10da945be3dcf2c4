/* Push operations (push_op.c): a Push call streaming the chunks of every tensor, zero copy
 * for raw chunks, compressed into buffers of its own when the tensor's push mode says so.
 * Internal to libparamex (the API: pmx_push, pmx_push_async of paramex.h). */
#ifndef PX_PUSH_OP_H
#define PX_PUSH_OP_H

#include "op.h"

extern const px_op_kind px_push_kind;

/* pmx_push_async with one server. */
pmx_status px_push_async(pmx_client* c, uint64_t step, size_t n, pmx_tensor* const* tensors,
                         const void* const* grads, pmx_op** out);

/* Chunk ci of tensor t, whose gradient buffer is grad, as the PushChunk of worker_id /
 * incarnation at step: its header goes to head (PX_CHUNK_HDR_MAX bytes), *body and
 * *body_len give its payload: grad's own bytes (zero copy), or a compressed buffer of ours
 * in *owned that the caller frees after sending (NULL when the chunk goes raw). Counted in
 * the client's push counters. Returns the header's length. */
size_t px_push_chunk_encode(pmx_client* c, const pmx_tensor* t, uint32_t ci, const void* grad,
                            uint32_t worker_id, uint64_t incarnation, uint64_t step,
                            uint8_t* head, const uint8_t** body, size_t* body_len,
                            uint8_t** owned);

#endif
