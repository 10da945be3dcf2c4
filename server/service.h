/* The lifecycle of a paramex-server: building the rooms from the configuration (restoring
 * the newest checkpoint), serving the method table, and the drain at shutdown. */
#ifndef PX_SERVICE_H
#define PX_SERVICE_H

#include <stddef.h>

#include "config.h"
#include "metrics.h"
#include "monitor.h"
#include "server.h"

typedef struct px_service {
  px_server srv;
  px_monitor monitor;
  px_metrics metrics; /* --metrics-listen; metrics.port is the bound port */
} px_service;

/* 0; -1 with err when it cannot start; -2 with err when the configuration is wrong in a
 * way only start-up could tell (a --gpus device that does not exist): exit status 2. */
int px_service_init(px_service* svc, const px_config* cfg, char* err, size_t errlen);
/* Starts the gRPC server and the lease monitor; *port receives the bound port. */
int px_service_start(px_service* svc, int* port, char* err, size_t errlen);
/* Health goes NOT_SERVING, new calls get UNAVAILABLE, parked pulls end with UNAVAILABLE;
 * pushes and pulls in flight get --drain-timeout to finish, then the transport stops and
 * the final checkpoint is written. -1 when that checkpoint could not be written. */
int px_service_stop(px_service* svc);
/* The same stop without the final checkpoint: the service is about to restart from an
 * older one (a recovery generation, generation.h). */
void px_service_stop_for_restart(px_service* svc);
/* Frees everything (after stop, or after a failed init or start). */
void px_service_deinit(px_service* svc);

#endif
