/* Checkpoints: consistent (every chunk at one version), written atomically as safetensors
 * files by a thread of their own, restored at start; on a period of steps or seconds, on
 * demand (the Checkpoint call) and at shutdown. */
#ifndef PX_CHECKPOINT_H
#define PX_CHECKPOINT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "membership.h"
#include "rpc/rpc_server.h"
#include "metrics/hist.h"
#include "store.h"

typedef struct px_ckpt_opts {
  const char* dir;          /* NULL: no checkpoints (every function is then a no-op) */
  uint64_t every;           /* steps; 0 = off */
  double interval;          /* seconds; 0 = off */
  uint32_t keep;            /* files kept (the oldest are removed) */
  bool momentum;            /* optimizer state (the "momentum" arrays) is written and restored */
  const char* server_id;    /* written into the metadata */
  const char* state;        /* what that state is: "momentum", "adagrad" or "rmsprop"
                             * (pmx.state; a checkpoint of another kind is not restored) */
} px_ckpt_opts;

typedef struct ckpt_copy ckpt_copy;
struct ckpt_waiter;

typedef struct px_ckpt {
  px_ckpt_opts o;
  px_store* store;
  px_members* members;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  ckpt_copy* pending;           /* the checkpoint being captured */
  struct ckpt_waiter* waiters;  /* Checkpoint calls waiting for the next file */
  pthread_t thread;
  bool thread_started, stop, done_ok;
  uint64_t gen, done_gen;
  uint64_t written, failures, last_version, restored_version;
  uint64_t last_bytes, last_unix_ms; /* the newest file's size, when it was written */
  char last_path[600];
  px_hist seconds;               /* time to write each checkpoint (failed ones too) */
} px_ckpt;

/* Creates the directory (when missing), removes temp files of interrupted writes and starts
 * the writer thread. 0, or -1 with err (the directory is not usable). */
int px_ckpt_init(px_ckpt* ck, const px_ckpt_opts* o, px_store* store, px_members* members,
                 char* err, size_t errlen);
/* Versions of the checkpoint files of dir (ckpt-%020llu.safetensors), newest first;
 * returns their count (at most cap). */
size_t px_ckpt_list(const char* dir, uint64_t* versions, size_t cap);
/* DIR/ckpt-%020llu.safetensors of version into buf (dir NULL: the file name alone). */
#define PX_CKPT_PATH_MAX 600
void px_ckpt_path(char* buf, size_t cap, const char* dir, uint64_t version);
/* Renames the checkpoints of dir at versions vs[0..n) to NAME + suffix (kept for
 * inspection, no longer listed or restored), logging each. */
void px_ckpt_set_aside(const char* dir, const uint64_t* vs, size_t n, const char* suffix);
/* The momentum of tensor NAME is stored as NAME PX_CKPT_MOM_SUFFIX. */
#define PX_CKPT_MOM_SUFFIX "@momentum"
/* Capture hooks of a step, c->mu held: before the step leaves c->version, after it arrived
 * at the new one. */
void px_ckpt_before_step(px_ckpt* ck, px_tensor_state* t, px_chunk_state* c);
void px_ckpt_after_step(px_ckpt* ck, px_tensor_state* t, px_chunk_state* c);
/* A checkpoint on demand; waiter (may be NULL) is finished with a CheckpointResponse when
 * the file is written. -1: no directory, or out of memory. */
int px_ckpt_now(px_ckpt* ck, px_srv_call* waiter, const char* reason);
/* The checkpoint at shutdown; waits up to wait_ms. -1 when its write failed (0 when
 * written, or skipped because a step never completed). */
int px_ckpt_final(px_ckpt* ck, int64_t wait_ms);
/* Ends the Checkpoint calls still waiting with UNAVAILABLE (before the transport drains). */
void px_ckpt_fail_waiters(px_ckpt* ck);
/* Stops the thread and frees what is left. */
void px_ckpt_shutdown(px_ckpt* ck);

typedef struct px_ckpt_info {
  uint64_t written, failures, last_version, restored_version;
  uint64_t last_bytes, last_unix_ms; /* 0 before the first write */
  char last_path[600];
} px_ckpt_info;
void px_ckpt_get_info(px_ckpt* ck, px_ckpt_info* out);

#endif
