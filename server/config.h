/* paramex-server's configuration: every flag, also a PMX_* environment variable. */
#ifndef PX_CONFIG_H
#define PX_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lr_schedule.h"

#define PX_MAX_GPUS 64
#define PX_MAX_WORKERS 4096 /* --workers limit */

typedef struct px_config {
  const char* listen;            /* may point to listen_adopted: keep the parsed struct */
  uint32_t workers;
  uint32_t shard, shards;        /* this server is shard `shard` of `shards` */
  char shard_from[48];           /* the launcher's variable the shard came from ("": a flag) */
  char workers_from[48];         /* the same for --workers */
  char listen_adopted[64];       /* a TF_CONFIG ps task's own address ("": not adopted) */
  double lr, momentum, weight_decay;
  const char* optimizer;        /* sgd, momentum, nesterov, adagrad, rmsprop */
  bool nesterov;                /* --optimizer nesterov */
  int opt_kind;                 /* px_opt_kind (backend.h) */
  double eps, alpha;            /* adagrad, rmsprop (eps: their defaults when not given) */
  const char* lr_schedule;      /* constant, step, cosine, linear-warmup (lr_schedule.h) */
  uint64_t lr_step_size, lr_total_steps, lr_warmup_steps;
  double lr_gamma, lr_min;
  px_lr_sched sched;            /* the schedule, checked */
  uint64_t chunk_bytes;
  uint32_t threads, cq_threads;
  uint32_t max_tensors;
  uint64_t max_tensor_bytes;
  uint64_t hold_bytes;          /* budget for out-of-order contributions held for rank order */
  uint32_t history;             /* per-step deltas kept per chunk and view */
  uint64_t history_bytes;       /* memory budget of the history */
  uint32_t compression_level;
  bool compression;             /* false: --no-compression */
  double drain_timeout;
  const char* log_level;
  const char* log_format;       /* "text" or "json" (util/log.h's px_log_format_parse) */
  const char* tls_cert;         /* paths */
  const char* tls_key;
  const char* tls_client_ca;
  const char* token_file;
  const char* metrics_listen;   /* HOST:PORT of /metrics; NULL: off */
  bool metrics_no_auth;         /* /metrics without the bearer token of --token-file */
  const char* checkpoint_dir;
  uint64_t checkpoint_every;    /* steps; 0 = off */
  double checkpoint_interval;   /* seconds; 0 = off */
  uint32_t keep;
  double worker_timeout;        /* seconds without a call before a worker is dead; 0 off */
  double rejoin_wait;           /* BSP: how long steps wait for a dead worker */
  bool elastic;                 /* continue without dead workers */
  bool reject_nonfinite;        /* refuse pushed chunks holding inf or NaN */
  uint64_t memory_limit;        /* bytes for parameters, optimizer state and frames */
  uint32_t max_calls;           /* concurrent calls */
  double call_timeout;          /* longest a pull may stay parked, seconds */
  const char* device;           /* backend: "cpu" or "cuda" */
  const char* gpus;             /* --gpus LIST as given, NULL: every GPU */
  int gpu_ids[PX_MAX_GPUS];     /* parsed --gpus */
  uint32_t ngpus;               /* 0: every GPU */
} px_config;

/* Fills defaults, then environment, then argv. Returns 0 to run, 1 when usage was printed
 * on stdout (exit 0), 2 when a flag is wrong: err holds one line naming it (exit 2). */
int px_config_parse(px_config* cfg, int argc, char** argv, char* err, size_t errlen);

/* Parses a --gpus list "0,1,3" into ids (at most cap). 0, or -1 with err naming the
 * problem (not a number, a duplicate, too many, empty). */
int px_gpu_list_parse(const char* s, int* ids, uint32_t cap, uint32_t* n, char* err,
                      size_t errlen);

#endif
