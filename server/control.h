/* The control calls of paramex.v1.ParameterExchange: Join, Declare, Stats, Checkpoint,
 * Heartbeat and Leave, and grpc.health.v1.Health/Check. Each takes its request as bytes (service.h
 * runs them on the compute pool) and finishes the call. */
#ifndef PX_CONTROL_H
#define PX_CONTROL_H

#include <stddef.h>
#include <stdint.h>

#include "rpc/rpc_server.h"
#include "server.h"

typedef void (*px_control_fn)(px_server* srv, px_srv_call* call, const uint8_t* req, size_t len);

void px_control_join(px_server* srv, px_srv_call* call, const uint8_t* req, size_t len);
void px_control_declare(px_server* srv, px_srv_call* call, const uint8_t* req, size_t len);
void px_control_stats(px_server* srv, px_srv_call* call, const uint8_t* req, size_t len);
void px_control_checkpoint(px_server* srv, px_srv_call* call, const uint8_t* req, size_t len);
void px_control_heartbeat(px_server* srv, px_srv_call* call, const uint8_t* req, size_t len);
void px_control_leave(px_server* srv, px_srv_call* call, const uint8_t* req, size_t len);
/* Recover: brings this shard to a recovery generation's version (generation.h); when it
 * must restart from a checkpoint it answers first, then signals SIGUSR1 to its process,
 * whose main thread restarts the service. */
void px_control_recover(px_server* srv, px_srv_call* call, const uint8_t* req, size_t len);
void px_control_health(px_server* srv, px_srv_call* call, const uint8_t* req, size_t len);

#endif
