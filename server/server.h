/* One paramex-server process: the rooms it is made of, as the call handlers (control.h,
 * push_handler.h, pull_handler.h, exchange_handler.h), the lease monitor (monitor.h) and the lifecycle
 * (service.h) see them. Only those top rooms include this header; every room below them
 * gets just the parts it uses. */
#ifndef PX_SERVER_H
#define PX_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "aggregate.h"
#include "backend/backend.h"
#include "checkpoint.h"
#include "config.h"
#include "counters.h"
#include "framecache.h"
#include "generation.h"
#include "membership.h"
#include "publish.h"
#include "rpc/rpc_server.h"
#include "store.h"
#include "util/taskpool.h"
#include "waiters.h"

typedef struct px_server {
  px_config cfg;
  char server_id[64];       /* "<start time in us, hex>-<pid>": new every start */
  char ckpt_dir[600];       /* --checkpoint-dir, or its shard-I folder with several shards */
  uint64_t start_ms;
  uint64_t start_unix_ms;   /* the process's start, Unix time (process_start_time_seconds) */
  px_counters ctr;
  px_taskpool* pool;        /* compute: large pushes, frame builds, control calls */
  px_backend* backend;      /* --device */
  px_fcache fcache;
  px_waiters waiters;       /* parked pulls; draining once the server stops */
  px_store store;
  px_publish publish;
  px_members members;
  px_ckpt ckpt;
  px_agg agg;
  px_gen gen;               /* recovery generations of shards (the Recover call) */
  px_rpc_server* rpc;
  _Atomic int64_t active_calls; /* Push and Pull calls and Exchange steps in progress (the drain waits) */
  pthread_mutex_t idle_mu;      /* guards idle_exchanges */
  struct ex_call* idle_exchanges; /* Exchange streams between steps (exchange_handler.c) */
  char *tls_cert_pem, *tls_key_pem, *tls_client_ca_pem, *token; /* loaded at start */
} px_server;

#endif
