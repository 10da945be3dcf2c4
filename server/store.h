/* The tensor store: tensors and their chunks, declaration and initial values, restore from
 * a checkpoint, versions and checksums. The chunk is the unit of everything else: its lock
 * guards its version, its aggregation state (aggregate.h acts on it), its frames
 * (framecache.h) and its parked pulls (waiters.h). The store never calls the rooms above
 * it: a change that wakes parked pulls returns them to the caller to run. */
#ifndef PX_STORE_H
#define PX_STORE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"
#include "counters.h"
#include "framecache.h"
#include "waiters.h"

#define PX_MAX_NAME 255
#define PX_MAX_DIMS 8

/* A contribution that arrived before a lower rank's, held until its turn. */
typedef struct px_held {
  float* buf;  /* a px_buf_get buffer of the configured chunk bytes */
  void* owner; /* non-NULL: the stalled push call that lent it (aggregate.h) */
} px_held;

typedef struct px_chunk_state {
  pthread_mutex_t mu;
  uint64_t version;
  bool initialized;     /* initial values complete */
  uint32_t index;
  uint32_t elems;
  bool own;             /* this shard holds the chunk (shard/shardmap.h); else it is inert */
  void* params;         /* into the tensor's host mirror (backend.h) */
  bool mom_first;       /* no momentum step applied yet */
  /* aggregation of the step at `version` (aggregate.h) */
  uint32_t next_rank;   /* ranks 0..next_rank-1 are in the sum */
  uint32_t ncontrib;
  uint8_t* contributed; /* [workers] */
  px_held* held;        /* [workers] out-of-order contributions */
  px_viewcache view[2]; /* frames of view 0 (native) and 1 (bf16 of f32) */
  px_waitlist waiters;  /* parked pulls */
  uint64_t ckpt_gen;    /* the checkpoint generation that copied this chunk */
  uint64_t step_begin_ns; /* the first contribution to the step at `version` (steptime.h) */
} px_chunk_state;

typedef struct px_tensor_state {
  uint32_t id;
  size_t elem;          /* bytes per element */
  char name[PX_MAX_NAME + 1];
  int dtype;
  uint32_t ndim;
  uint64_t shape[PX_MAX_DIMS];
  uint64_t numel;
  uint32_t chunk_elems, nchunks;
  uint32_t* own;        /* the chunks this shard holds, ascending (all of them with one shard) */
  uint32_t nown;
  void* params;         /* the host mirror (only the chunks held are ever written) */
  size_t params_bytes;
  px_be_tensor* be;     /* the backend's state of this tensor */
  px_chunk_state* chunks;
  /* initial values upload (under the store's declare lock) */
  uint32_t creator;
  _Atomic uint64_t creator_incarnation;
  _Atomic uint64_t init_cursor; /* elements received so far */
  _Atomic uint64_t push_raw, push_wire, pull_raw, pull_wire;
} px_tensor_state;

typedef struct px_store_opts {
  uint32_t workers;
  uint64_t chunk_bytes;     /* of f32: chunks hold chunk_bytes / 4 elements */
  uint32_t max_tensors;
  uint64_t max_tensor_bytes;
  uint64_t memory_limit;    /* 0: none */
  bool momentum;            /* count momentum in the memory budget */
  uint32_t shard, shards;   /* this store holds the chunks of shard `shard` of `shards` */
} px_store_opts;

typedef struct px_store {
  px_store_opts o;
  px_backend* backend;
  px_fcache* fcache;
  px_waiters* waiters;
  px_counters* ctr;
  pthread_mutex_t declare_mu;
  px_tensor_state** tensors; /* [max_tensors] */
  _Atomic uint32_t ntensors;
} px_store;

/* 0, or -1 with err (out of memory). */
int px_store_init(px_store* s, const px_store_opts* o, px_backend* backend, px_fcache* fcache,
                  px_waiters* waiters, px_counters* ctr, char* err, size_t errlen);
/* Frees every tensor (its frames, held buffers and backend state). */
void px_store_deinit(px_store* s);

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
  bool lookup_only;    /* a client that never joined: it may not create the tensor */
} px_declare_args;
/* Declares a tensor (or finds the same declaration again, or adds the creator's next
 * piece of initial values). A lookup_only declaration does not create a tensor; a
 * new incarnation of the creator's rank takes an unfinished upload over; values from
 * anyone else must equal those the tensor holds (while it is at version 0). Returns a gRPC
 * status; err names the problem and nothing changed. On OK *out is the tensor, *created
 * says whether this call created it, *uploads (may be NULL) whether the caller is to send
 * the rest of the initial values, and
 * *woken the pulls parked on chunks that just got their initial values (run them with
 * px_waiters_run after returning). */
int px_store_declare(px_store* s, const px_declare_args* a, px_tensor_state** out, bool* created,
                     bool* uploads, px_waiter** woken, char* err, size_t errlen);
/* Creates a tensor from a checkpoint entry (dtype, shape, values) at version, with its
 * momentum (NULL: none) loaded into the backend. 0, or -1 with err. */
int px_store_restore(px_store* s, const char* name, int dtype, const uint64_t* shape,
                     uint32_t ndim, const void* values, uint64_t nbytes, const float* mom,
                     uint64_t version, char* err, size_t errlen);

/* The tensor with id, NULL when unknown. Lock free. */
px_tensor_state* px_store_tensor(px_store* s, uint32_t id);
uint32_t px_store_count(px_store* s);
/* The lowest version of the chunks t holds; *vmax (may be NULL) the highest; *checksum
 * (may be NULL) the xxh64 of those chunks' bytes one after the other (the whole tensor with
 * one shard) when every one is initialised and at one version (else 0). A tensor none of
 * whose chunks is held: 0, *vmax 0, *checksum 0. Takes each chunk's lock in turn. */
uint64_t px_tensor_version_min(px_tensor_state* t, uint64_t* vmax, uint64_t* checksum);
/* The lowest version over every tensor with a chunk held here (0 when there is none) and
 * the highest. */
uint64_t px_store_version_min(px_store* s, uint64_t* vmax);
/* Width in bytes of view v's words (1: bf16 of an f32 tensor). */
int px_view_width(const px_tensor_state* t, int v);
/* Chunk c of t is not held here: err names the shard that holds it; a gRPC status
 * (FAILED_PRECONDITION). */
int px_store_foreign(const px_store* s, const px_tensor_state* t, uint32_t c, char* err,
                     size_t errlen);

#endif
