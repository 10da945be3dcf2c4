/* The Exchange call (bidirectional streaming, one per client, kept open): each
 * StepRequest is a worker's whole push for a step and the pull of the version it makes,
 * answered by one StepResponse, so that a small step costs one message each way instead
 * of a Push and a Pull call. The push goes through the Push call's chunk path
 * (px_pusher), the pull through the Pull call's walk (px_puller) with a sink that gathers
 * the chunks into the response. Between steps a stream is idle (a read pending); stopping
 * the server ends idle streams UNAVAILABLE at once, so they do not hold the drain. */
#ifndef PX_EXCHANGE_HANDLER_H
#define PX_EXCHANGE_HANDLER_H

#include "rpc/rpc_server.h"
#include "server.h"

/* The method's on_call (rpc_server.h); s is the px_server. */
void px_exchange_on_call(void* s, px_srv_call* call, px_msg* req);
/* Ends every idle Exchange stream UNAVAILABLE (the waiters are draining already: a
 * stream between steps ends as soon as its next step arrives). */
void px_exchange_drain(px_server* srv);

#endif
