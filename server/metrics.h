/* paramex-server's Prometheus endpoint (--metrics-listen): GET /metrics answers the text
 * exposition format 0.0.4 rendered from the server's counters at the time of the scrape
 * (common/metrics/prom.h), served on the HTTP thread of common/http (libmicrohttpd), with
 * the server's TLS certificate when TLS is on and its bearer token when --token-file is
 * set (unless --metrics-no-auth). Every sample carries shard="I". Nothing here is on the
 * training path: the counters it reads are atomics the rooms update anyway; the versions
 * come from px_store_version_min, which takes each held chunk's mutex for a moment (0.65 ms
 * for a scrape at 10,000 tensors, bench/metrics_scrape.py). */
#ifndef PX_METRICS_H
#define PX_METRICS_H

#include <stddef.h>

#include "server.h"

typedef struct px_metrics {
  struct px_http* http; /* NULL: off */
  int port;             /* the bound port */
  px_server* srv;
  const px_rpc_method* methods; /* the gRPC method table, for the calls' method label */
  size_t nmethods;
} px_metrics;

/* Starts the endpoint when srv->cfg.metrics_listen is set (after the gRPC server: it
 * reports its calls of methods[0..nmethods)). 0, or -1 with one line in err (a port in
 * use says so). */
int px_metrics_start(px_metrics* m, px_server* srv, const px_rpc_method* methods,
                     size_t nmethods, char* err, size_t errlen);
/* Stops serving (before the gRPC server is destroyed). */
void px_metrics_stop(px_metrics* m);
/* The page, as a scrape gets it: *body malloc'd. 0, or -1 (out of memory). */
int px_metrics_render(const px_metrics* m, char** body, size_t* len);

#endif
