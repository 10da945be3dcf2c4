/* paramex-server internals: configuration, the tensor store with BSP aggregation, the
 * optimizer, and the service handlers. */
#ifndef PX_SERVER_H
#define PX_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "rpc/rpc.h"
#include "util/util.h"

/* ---- configuration (config.c) -------------------------------------------------------- */
typedef struct px_config {
  const char* listen;
  uint32_t workers;
  double lr, momentum, weight_decay;
  uint64_t chunk_bytes;
  uint32_t threads, cq_threads;
  uint32_t max_tensors;
  uint64_t max_tensor_bytes;
  uint64_t hold_bytes; /* budget for out-of-order contributions held for rank order */
  uint32_t history;          /* per-step deltas kept per chunk and view */
  uint64_t history_bytes;    /* memory budget of the history */
  uint32_t compression_level;
  bool compression;          /* false: --no-compression */
  double drain_timeout;
  const char* log_level;
  const char* tls_cert;      /* paths */
  const char* tls_key;
  const char* tls_client_ca;
  const char* token_file;
  const char* checkpoint_dir;
  uint64_t checkpoint_every;    /* steps; 0 = off */
  double checkpoint_interval;   /* seconds; 0 = off */
  uint32_t keep;
  double worker_timeout;        /* seconds without a call before a worker is dead; 0 off */
  double rejoin_wait;           /* BSP: how long steps wait for a dead worker */
  bool elastic;                 /* continue without dead workers */
  uint64_t memory_limit;        /* bytes for parameters, optimizer state and frames */
  uint32_t max_calls;           /* concurrent calls */
  double call_timeout;          /* longest a pull may stay parked, seconds */
  const char* device;           /* backend: "cpu" or "cuda" */
  const char* gpus;             /* --gpus LIST as given, NULL: every GPU */
#define PX_MAX_GPUS 64
  int gpu_ids[PX_MAX_GPUS];    /* parsed --gpus */
  uint32_t ngpus;               /* 0: every GPU */
} px_config;

/* Fills defaults, then environment, then argv. Returns 0 to run, 1 when usage was printed
 * (exit 0), 2 after printing one line naming the bad flag (exit 2). */
int px_config_parse(px_config* cfg, int argc, char** argv);

/* The optimizer (px_sgd, px_sgd_apply) and the backends are declared in backend.h. */

/* ---- buffers (store.c) ---------------------------------------------------------------- */
/* Chunk-sized buffers recycled through per-size-class free lists (never returned to the
 * kernel: page faults cost ~10 us here). */
void* px_buf_get(size_t bytes);
void px_buf_put(void* p, size_t bytes);

/* ---- store (store.c) ------------------------------------------------------------------- */
/* An encoded chunk payload, immutable once built and shared by every pull that sends
 * it (reference counted; the last unref frees it, on any thread). */
#define PX_BASE_NONE UINT64_MAX
typedef struct px_frame {
  atomic_int refs;
  uint64_t version;  /* the version it reconstructs */
  uint64_t base;     /* DELTA_ZSTD: the version it applies to; PX_BASE_NONE otherwise */
  uint32_t encoding; /* PMX_ENC_* */
  uint64_t checksum; /* xxh64 of the reconstructed chunk (of its view) */
  size_t len;
  size_t cap;        /* allocation size of data (a px_buf_get class) */
  uint8_t* data;
  bool in_history;
} px_frame;
/* A frame with room for cap bytes; NULL when out of memory. refs = 1. */
px_frame* px_frame_new(size_t cap);
void px_frame_unref(void* frame); /* px_release_fn-compatible */

struct pmx_push;
struct px_service;

/* A Pull call in progress: streams the wanted chunks in order, parking on a chunk that
 * has not reached min_version yet. */
typedef struct pmx_pull {
  struct px_service* svc;
  px_srv_call* call;
  uint32_t ntensors;
  uint32_t* tids;
  uint64_t* have;          /* [ntensors] or NULL */
  uint64_t min_version;
  int view;                /* 0 native, 1 bf16 view of f32 tensors */
  bool accept_delta, accept_shuffle;
  uint32_t ti, ci;         /* cursor: next chunk to send */
  /* parking (under svc->park_mu) */
  struct px_chunk_state* parked_on;
  struct pmx_pull *wprev, *wnext;
  bool closed;
  uint64_t started_ms;
  px_job job;
} pmx_pull;

typedef struct px_held {
  float* buf;
  struct pmx_push* owner; /* non-NULL: that call is stalled until this buffer is used */
} px_held;

/* What a chunk keeps for one view of its parameters (0: the tensor's own dtype, 1: the
 * bf16 view of an f32 tensor, enabled when a client first asks for it). */
#define PX_MAX_HISTORY 16
#define PX_CACHE_SLOTS 4
#define PX_KEY_FULL (UINT64_MAX)      /* a full chunk, best allowed encoding */
#define PX_KEY_RAW (UINT64_MAX - 1)   /* a full chunk, RAW */
typedef struct px_view_state {
  bool enabled;
  bool checksum_valid;
  uint64_t checksum;                /* of this view at the chunk's version */
  px_frame* hist[PX_MAX_HISTORY]; /* hist[i]: delta version-i-1 -> version-i */
  uint32_t nhist;
  /* 1 + the chunk version at which a pull of this view last accepted deltas (0: none
   * yet): steps encode their delta eagerly only while such pulls are recent
   * (px_frames_eager_delta). */
  uint64_t delta_demand;
  struct {
    uint64_t key;                   /* base version, PX_KEY_FULL or PX_KEY_RAW */
    px_frame* frame;               /* NULL while pending */
    bool used, pending;
    uint64_t stamp;                 /* for least-recently-used eviction */
  } cache[PX_CACHE_SLOTS];         /* frames of the current version */
} px_view_state;

typedef struct px_chunk_state {
  pthread_mutex_t mu;
  uint64_t version;
  bool initialized;     /* initial values complete */
  uint32_t index;
  uint32_t elems;
  void* params;         /* into the tensor's buffer, elements of the tensor's dtype (host
                         * mirror: equal to the backend's copy whenever c->mu is free) */
  float* mom;           /* cpu backend: host momentum; NULL without momentum or on cuda */
  bool mom_first;       /* no momentum step applied yet */
  void* be;             /* the backend's state of this chunk (its sum of this step, ...) */
  uint32_t next_rank;   /* ranks 0..next_rank-1 are in acc */
  uint32_t ncontrib;
  uint8_t* contributed; /* [workers] for the step at `version` */
  px_held* held;       /* [workers] out-of-order contributions */
  px_view_state view[2];
  struct pmx_pull* waiters;
  uint64_t ckpt_gen;    /* the checkpoint generation that copied this chunk */
} px_chunk_state;

#define PX_MAX_NAME 255
#define PX_MAX_WORKERS 4096
#define PX_MAX_DIMS 8

typedef struct px_tensor_state {
  uint32_t id;
  size_t elem;          /* bytes per element */
  char name[PX_MAX_NAME + 1];
  int dtype;
  uint32_t ndim;
  uint64_t shape[PX_MAX_DIMS];
  uint64_t numel;
  uint32_t chunk_elems, nchunks;
  void* params;
  size_t params_bytes;
  float* mom;           /* numel f32, with momentum on the cpu backend (else NULL) */
  void* be;             /* the backend's state of this tensor */
  px_chunk_state* chunks;
  /* initial values upload (guarded by the store's declare mutex) */
  uint32_t creator;
  uint64_t creator_incarnation;
  uint64_t init_cursor; /* elements received so far */
  _Atomic uint64_t push_raw, push_wire, pull_raw, pull_wire;
} px_tensor_state;

typedef struct px_worker_state {
  _Atomic uint64_t incarnation; /* 0: not joined */
  _Atomic uint64_t chunks_pushed;
  _Atomic uint64_t last_seen_ms;
  _Atomic int dead;             /* missed its lease */
  _Atomic uint64_t dead_since_ms;
  char name[64];
} px_worker_state;

typedef struct px_counters {
  _Atomic uint64_t push_chunks, push_duplicates, push_raw_bytes, push_wire_bytes;
  _Atomic uint64_t pull_chunks, pull_raw_bytes, pull_wire_bytes;
  _Atomic uint64_t steps_completed, rejected_calls;
  _Atomic uint64_t encodes, cache_hits, pull_unchanged, pull_delta, pull_snapshot;
  _Atomic int64_t frame_bytes, history_bytes;
  _Atomic int64_t store_bytes; /* parameters + momentum */
} px_counters;

typedef struct px_ckpt px_ckpt;
struct ckpt_waiter;
typedef struct px_ckpt_state {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  px_ckpt* pending;
  struct ckpt_waiter* waiters;
  pthread_t thread;
  bool thread_started, stop, done_ok;
  uint64_t gen, done_gen;
  uint64_t written, failures, last_version, restored_version;
  char last_path[600];
} px_ckpt_state;

typedef struct px_service {
  px_config cfg;
  px_backend* backend;       /* --device */
  px_pool* pool;
  px_rpc_server* rpc;
  char server_id[64];
  uint64_t start_ms;
  _Atomic uint64_t next_incarnation;

  pthread_mutex_t declare_mu;
  px_tensor_state** tensors; /* [max_tensors] */
  _Atomic uint32_t ntensors;
  px_worker_state* workers;  /* [workers] */

  pthread_mutex_t park_mu;    /* guards every chunk's waiter list and pull parking state */
  bool draining;              /* under park_mu */
  _Atomic int64_t hold_left;  /* bytes of the hold budget still free */
  px_counters ctr;
  char *tls_cert_pem, *tls_key_pem, *tls_client_ca_pem, *token; /* loaded at start */
  px_ckpt_state ckpt;
  _Atomic int64_t active_calls; /* Push and Pull calls in progress */
  pthread_t monitor;            /* leases */
  bool monitor_started;
  pthread_mutex_t monitor_mu;
  pthread_cond_t monitor_cv;
  bool monitor_stop;
  _Atomic int stalled_by_dead;  /* BSP: a dead worker exceeded --rejoin-wait */
  uint64_t fault_corrupt_every; /* test hook PMX_FAULT_CORRUPT_PULL: corrupt every Nth frame */
  _Atomic uint64_t fault_count;
} px_service;

/* service.c */
/* 0; -1 with err when it cannot start; -2 with err when the configuration is wrong in a
 * way only start-up could tell (a --gpus device that does not exist): exit status 2. */
int px_service_init(px_service* svc, const px_config* cfg, char* err, size_t errlen);
/* Starts the gRPC server; *port receives the bound port. */
int px_service_start(px_service* svc, int* port, char* err, size_t errlen);
/* Health goes NOT_SERVING, new calls get UNAVAILABLE, parked pulls end with UNAVAILABLE;
 * then the transport drains for drain_ms and stops. */
int px_service_stop(px_service* svc); /* -1: the final checkpoint could not be written */
void px_service_deinit(px_service* svc);

/* store.c — called by the handlers in service.c */
typedef struct px_declare_args {
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
} px_declare_args;
/* Returns a gRPC status; err names the problem. On OK *out is the tensor, *created says
 * whether this call created it. */
int px_store_declare(px_service* svc, const px_declare_args* a, px_tensor_state** out,
                      bool* created, char* err, size_t errlen);
px_tensor_state* px_store_tensor(px_service* svc, uint32_t id); /* NULL if unknown */
uint64_t px_tensor_version_min(px_tensor_state* t, uint64_t* vmax, uint64_t* checksum);

/* Creates a tensor from a checkpoint entry at version (all chunks initialized). */
struct px_st_tensor;
int px_store_restore(px_service* svc, const struct px_st_tensor* e, const void* mom,
                      uint64_t version, char* err, size_t errlen);

/* Checkpoints (checkpoint.c) */
int px_ckpt_init(px_service* svc, char* err, size_t errlen);
/* Restores the newest valid checkpoint of --checkpoint-dir (skipping corrupt ones with a
 * warning). -1 only when a file failed half way through loading. */
int px_ckpt_restore(px_service* svc);
/* Capture hooks, c->mu held: before a step leaves c->version, after it arrived. */
void px_ckpt_before_step(px_service* svc, px_tensor_state* t, px_chunk_state* c);
void px_ckpt_after_step(px_service* svc, px_tensor_state* t, px_chunk_state* c);
/* On demand; waiter (may be NULL) is finished when the file is written. -1: no dir/OOM. */
int px_ckpt_now(px_service* svc, px_srv_call* waiter, const char* reason);
/* The checkpoint at shutdown; waits up to wait_ms. -1 when its write failed (0 when
 * written, or skipped because a step never completed). */
int px_ckpt_final(px_service* svc, int64_t wait_ms);
/* Ends the Checkpoint calls still waiting with UNAVAILABLE (before the transport drains). */
void px_ckpt_fail_waiters(px_service* svc);
void px_ckpt_shutdown(px_service* svc);

/* Detaches the chunk's waiters (c->mu held); resume them after unlocking with
 * px_pulls_resume. Called whenever the chunk changed: new version, initial values, a
 * frame built. */
struct pmx_pull* px_chunk_wake(px_service* svc, px_chunk_state* c);
void px_pulls_resume(struct pmx_pull* list);
/* Width in bytes of view v's words. */
int px_view_width(const px_tensor_state* t, int v);

/* Frames (frames.c) */
/* After the optimizer moved chunk c from version-1 to version (c->mu NOT held): io holds
 * what the backend produced for the views that were enabled at the step (io->bits[v]
 * non-NULL; io->enc[v] too when the step's delta is encoded, see px_frames_eager_delta).
 * With io->enc it compresses the per-step deltas, extends the history and primes the
 * cache with the frames for base version-1; without, it installs the RAW frames of the
 * new version (and drops the history, which has a gap now). Then it sets the view
 * checksums and wakes waiters. */
void px_frames_after_step_io(px_service* svc, px_tensor_state* t, px_chunk_state* c,
                              uint64_t version, px_step_io* io); /* may take io->bits[v] */
/* The same from host copies of the native bits before and after the step: the outputs
 * are computed on the cpu (px_step_outputs) for the views enabled now. */
void px_frames_after_step(px_service* svc, px_tensor_state* t, px_chunk_state* c,
                           uint64_t version, const void* old_bits, const void* new_bits);
/* Output buffers of a step of chunk c for the frames: bits[0] always, the bf16 view when
 * view1 (f32 tensors), the encoder inputs when encode. All or nothing: on out of memory
 * every pointer is NULL. px_step_io_free gives them back. */
void px_step_io_init(px_service* svc, px_tensor_state* t, px_chunk_state* c, bool view1,
                      bool encode, px_step_io* io);
void px_step_io_free(px_tensor_state* t, px_chunk_state* c, px_step_io* io);
/* Called under c->mu right after a step incremented c->version: drops the old version's
 * frames and marks pending the ones px_frames_after_step will install (encode: the
 * step's delta, else its RAW frame). */
void px_frames_step_begin(px_service* svc, px_chunk_state* c, bool encode);
/* Whether the step about to complete on chunk c (c->mu held) should encode its delta:
 * compression and history are on and a pull of one of its views accepted deltas within
 * the last history+1 versions. Otherwise nobody pulls diffs (raw pulls are the client's
 * default on loopback) and the step publishes RAW frames, without the old bits, the
 * delta or zstd (which cost ResNet-50 with 4 workers ~0.18 s of server CPU per step). */
bool px_frames_eager_delta(px_service* svc, px_chunk_state* c);
/* When the copies for px_frames_after_step could not be made: unblocks the pulls. */
void px_frames_after_step_failed(px_service* svc, px_chunk_state* c, uint64_t version);
/* Drops every cached frame and the history of a chunk (c->mu held). */
void px_frames_clear(px_service* svc, px_chunk_state* c, bool history_too);
/* Lookup for a pull (c->mu held). Returns a referenced frame, or NULL and then *must_wait
 * says a build is pending (park and retry when woken). */
px_frame* px_frames_get(px_service* svc, px_tensor_state* t, px_chunk_state* c, int view,
                          uint64_t key, bool* must_wait);
/* The cache key a pull should use for a chunk at version v (c->mu held). */
uint64_t px_frames_key(px_service* svc, px_chunk_state* c, int view, uint64_t have,
                        bool accept_delta, bool accept_shuffle);

#endif
