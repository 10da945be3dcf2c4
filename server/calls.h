/* What every handler does with a call: answer it with a message, refuse it with a status
 * (counted in rejected_calls and logged at debug), and refuse the data-plane calls of a
 * worker that joined an earlier run of this server. */
#ifndef PX_CALLS_H
#define PX_CALLS_H

#include <stdbool.h>

#include <protobuf-c/protobuf-c.h>

#include "counters.h"
#include "rpc/rpc_server.h"
#include "store.h"
#include "waiters.h"

/* Finishes call OK with m packed as its message. */
void px_reply(px_srv_call* call, const ProtobufCMessage* m);
/* Finishes call with status (not OK) and msg. */
void px_reject(px_counters* ctr, px_srv_call* call, int status, const char* msg);
/* A push or pull names the server it joined (header pmx-server-id, sent by libparamex
 * after Join). When that is another server id, the worker joined an earlier run of this
 * server and must resynchronise from the version this one has (restored from a
 * checkpoint): the call is refused ABORTED naming that version, and true is returned. */
bool px_refuse_stale_server(px_counters* ctr, px_store* store, const char* server_id,
                            px_srv_call* call);

/* The start of a Push, Pull or Exchange call: refused UNAVAILABLE while the server drains, ABORTED
 * for a worker of an earlier run (px_refuse_stale_server) and RESOURCE_EXHAUSTED without
 * memory; otherwise a zeroed context of size bytes for the call (the caller's to free). */
void* px_data_call_new(px_counters* ctr, px_store* store, px_waiters* waiters,
                       const char* server_id, px_srv_call* call, size_t size);

#endif
