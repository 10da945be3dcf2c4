/* The Pull call (server streaming): streams the wanted chunks in order, each as the frame
 * that suits the version the client holds (framecache.h), parking on a chunk that has not
 * reached min_version yet (waiters.h) without blocking any thread. Handled on the
 * completion-queue threads: looking a frame up and starting a send is cheap, and frames
 * that must be built are built on the compute pool (publish.h). */
#ifndef PX_PULL_HANDLER_H
#define PX_PULL_HANDLER_H

#include "rpc/rpc_server.h"
#include "server.h"

/* The method's on_call (rpc_server.h); s is the px_server. */
void px_pull_on_call(void* s, px_srv_call* call, px_msg* req);

#endif
