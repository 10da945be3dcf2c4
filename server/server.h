/* paramex-server internals: configuration, the tensor store with BSP aggregation, the
 * optimizer, and the service handlers. */
#ifndef PMX_SERVER_H
#define PMX_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rpc/rpc.h"
#include "util/util.h"

/* ---- configuration (config.c) -------------------------------------------------------- */
typedef struct pmx_config {
  const char* listen;
  uint32_t workers;
  double lr, momentum, weight_decay;
  uint64_t chunk_bytes;
  uint32_t threads, cq_threads;
  uint32_t max_tensors;
  uint64_t max_tensor_bytes;
  uint64_t hold_bytes; /* budget for out-of-order contributions held for rank order */
  double drain_timeout;
  const char* log_level;
} pmx_config;

/* Fills defaults, then environment, then argv. Returns 0 to run, 1 when usage was printed
 * (exit 0), 2 after printing one line naming the bad flag (exit 2). */
int pmx_config_parse(pmx_config* cfg, int argc, char** argv);

/* ---- optimizer (optimizer.c) ---------------------------------------------------------- */
typedef struct pmx_sgd {
  float lr, momentum, weight_decay;
} pmx_sgd;
/* One SGD step on n elements from the rank-ordered gradient sum of nworkers workers:
 *   g = sum / nworkers; if (wd) g = g + wd * p; if (momentum) { m = first ? g : momentum*m + g;
 *   g = m; } p = p - lr * g.   (PyTorch's SGD with dampening 0, nesterov off.) */
void pmx_sgd_apply(const pmx_sgd* o, float* p, float* mom, bool first, const float* sum,
                   size_t n, uint32_t nworkers);

/* ---- buffers (store.c) ---------------------------------------------------------------- */
/* Chunk-sized buffers recycled through per-size-class free lists (never returned to the
 * kernel: page faults cost ~10 us here). */
void* pmx_buf_get(size_t bytes);
void pmx_buf_put(void* p, size_t bytes);

/* ---- store (store.c) ------------------------------------------------------------------- */
typedef struct pmx_frame {
  atomic_int refs;
  uint64_t version;
  uint64_t checksum;
  size_t len;
  uint8_t* data;
} pmx_frame;
void pmx_frame_unref(void* frame); /* pmx_release_fn-compatible */

struct pmx_push;
struct pmx_service;

/* A Pull call in progress: streams the wanted chunks in order, parking on a chunk that
 * has not reached min_version yet. */
typedef struct pmx_pull {
  struct pmx_service* svc;
  pmx_srv_call* call;
  uint32_t ntensors;
  uint32_t* tids;
  uint64_t* have;          /* [ntensors] or NULL */
  uint64_t min_version;
  uint32_t ti, ci;         /* cursor: next chunk to send */
  /* parking (under svc->park_mu) */
  struct pmx_chunk_state* parked_on;
  struct pmx_pull *wprev, *wnext;
  bool closed;
  pmx_job job;
} pmx_pull;

typedef struct pmx_held {
  float* buf;
  struct pmx_push* owner; /* non-NULL: that call is stalled until this buffer is used */
} pmx_held;

typedef struct pmx_chunk_state {
  pthread_mutex_t mu;
  uint64_t version;
  bool initialized;     /* initial values complete */
  uint32_t elems;
  float* params;        /* into the tensor's buffer */
  float* mom;           /* NULL without momentum */
  bool mom_first;       /* no momentum step applied yet */
  float* acc;           /* rank-ordered sum of this step, NULL before rank 0 */
  uint32_t next_rank;   /* ranks 0..next_rank-1 are in acc */
  uint32_t ncontrib;
  uint8_t* contributed; /* [workers] for the step at `version` */
  pmx_held* held;       /* [workers] out-of-order contributions */
  pmx_frame* frame;     /* the current version's frame, built on demand */
  struct pmx_pull* waiters;
} pmx_chunk_state;

#define PMX_MAX_NAME 255
#define PMX_MAX_WORKERS 4096
#define PMX_MAX_DIMS 8

typedef struct pmx_tensor_state {
  uint32_t id;
  char name[PMX_MAX_NAME + 1];
  int dtype;
  uint32_t ndim;
  uint64_t shape[PMX_MAX_DIMS];
  uint64_t numel;
  uint32_t chunk_elems, nchunks;
  float* params;
  size_t params_bytes;
  float* mom;
  pmx_chunk_state* chunks;
  /* initial values upload (guarded by the store's declare mutex) */
  uint32_t creator;
  uint64_t creator_incarnation;
  uint64_t init_cursor; /* elements received so far */
} pmx_tensor_state;

typedef struct pmx_worker_state {
  _Atomic uint64_t incarnation; /* 0: not joined */
  _Atomic uint64_t chunks_pushed;
  _Atomic uint64_t last_seen_ms;
  char name[64];
} pmx_worker_state;

typedef struct pmx_counters {
  _Atomic uint64_t push_chunks, push_duplicates, push_raw_bytes, push_wire_bytes;
  _Atomic uint64_t pull_chunks, pull_raw_bytes, pull_wire_bytes;
  _Atomic uint64_t steps_completed, rejected_calls;
} pmx_counters;

typedef struct pmx_service {
  pmx_config cfg;
  pmx_sgd sgd;
  pmx_pool* pool;
  pmx_rpc_server* rpc;
  char server_id[64];
  uint64_t start_ms;
  _Atomic uint64_t next_incarnation;

  pthread_mutex_t declare_mu;
  pmx_tensor_state** tensors; /* [max_tensors] */
  _Atomic uint32_t ntensors;
  pmx_worker_state* workers;  /* [workers] */

  pthread_mutex_t park_mu;    /* guards every chunk's waiter list and pull parking state */
  bool draining;              /* under park_mu */
  _Atomic int64_t hold_left;  /* bytes of the hold budget still free */
  pmx_counters ctr;
} pmx_service;

/* service.c */
int pmx_service_init(pmx_service* svc, const pmx_config* cfg, char* err, size_t errlen);
/* Starts the gRPC server; *port receives the bound port. */
int pmx_service_start(pmx_service* svc, int* port, char* err, size_t errlen);
/* Health goes NOT_SERVING, new calls get UNAVAILABLE, parked pulls end with UNAVAILABLE;
 * then the transport drains for drain_ms and stops. */
void pmx_service_stop(pmx_service* svc);
void pmx_service_deinit(pmx_service* svc);

/* store.c — called by the handlers in service.c */
typedef struct pmx_declare_args {
  const char* name;
  int dtype;
  const uint64_t* shape;
  size_t ndim;
  int init_kind;
  float init_a, init_b;
  uint64_t init_seed;
  const uint8_t* values;
  size_t values_len;
  uint64_t values_offset;
  uint32_t worker_id;
  uint64_t incarnation;
} pmx_declare_args;
/* Returns a gRPC status; err names the problem. On OK *out is the tensor, *created says
 * whether this call created it. */
int pmx_store_declare(pmx_service* svc, const pmx_declare_args* a, pmx_tensor_state** out,
                      bool* created, char* err, size_t errlen);
pmx_tensor_state* pmx_store_tensor(pmx_service* svc, uint32_t id); /* NULL if unknown */
uint64_t pmx_tensor_version_min(pmx_tensor_state* t, uint64_t* vmax, uint64_t* checksum);

/* Chunk completion: called with c->mu held when the chunk reached a new version or got
 * its initial values. Drops the old frame and takes the waiter list (returned; resume
 * them after unlocking with pmx_pulls_resume). */
struct pmx_pull* pmx_chunk_advanced(pmx_service* svc, pmx_chunk_state* c);
void pmx_pulls_resume(struct pmx_pull* list);
/* The current frame of c (built on demand), with a reference for the caller. c->mu held. */
pmx_frame* pmx_chunk_frame(pmx_chunk_state* c, int dtype);

#endif
