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

/* The method's on_call (rpc_server.h); s is the px_server. */
void px_push_on_call(void* s, px_srv_call* call, px_msg* req);
/* Resumes pushes that aggregation gave their buffers back to (px_agg_sweep, px_agg_after). */
void px_push_resume(px_agg_stall* list);

#endif
