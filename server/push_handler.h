/* The Push call (client streaming): every PushChunk is validated, decoded into a receive
 * buffer and handed to aggregation (aggregate.h); the call ends with a PushResponse once
 * the client half-closed. Small chunks are processed on the completion-queue thread that
 * received them (a hand-off to the compute pool costs more than they do), larger ones on
 * the pool. */
#ifndef PX_PUSH_HANDLER_H
#define PX_PUSH_HANDLER_H

#include "aggregate.h"
#include "rpc/rpc_server.h"
#include "server.h"

#include "wire/chunk_msg.h"

/* Push messages up to this decoded size are processed on the completion-queue thread that
 * received them (the 1,000-float round trip); larger ones on the compute pool. */
#define PX_INLINE_PUSH_BYTES (64u << 10)

/* One pushed chunk's way through validation, decoding and aggregation: what a Push call
 * and the Exchange stream (exchange_handler.h) share. The owner sets srv and stall.resume
 * once, then h, seg, nseg and wire for each chunk. */
typedef struct px_pusher {
  px_server* srv;
  px_chunk h;        /* the chunk's header (px_chunk_parse) */
  const px_iov* seg; /* its message */
  size_t nseg, wire;
  float* buf;        /* receive buffer (cfg.chunk_bytes) owned by the pusher, or NULL */
  uint32_t accepted, duplicate;
  px_agg_stall stall;
} px_pusher;

/* Processes the chunk; PX_AGG_REFUSED with *status and err on bad input (nothing changed).
 * PX_AGG_STALLED: the owner stops until stall.resume runs. The caller then runs
 * px_agg_finish(after) and px_push_resume(after->resumed). */
px_agg_result px_pusher_process(px_pusher* p, px_agg_after* after, int* status, char* err,
                                size_t errlen);
/* Gives the receive buffer back to the pool. */
void px_pusher_release(px_pusher* p);

/* The method's on_call (rpc_server.h); s is the px_server. */
void px_push_on_call(void* s, px_srv_call* call, px_msg* req);
/* Resumes the pushes that aggregation gave their buffers back to (px_agg_sweep,
 * px_agg_after): runs each stall's resume. */
void px_push_resume(px_agg_stall* list);

#endif
