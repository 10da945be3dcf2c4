/* Operations (op.c): a push or a pull in flight, as pmx_op of paramex.h. The core here is
 * kind-neutral: the call's completion, the error of the operation, waiting, cancelling,
 * and pmx_op_wait's retries of a server that is unavailable (down, restarting), with
 * capped exponential back-off. What differs lives in push_op.c and pull_op.c, reached
 * through the op's px_op_kind. Internal to libparamex. */
#ifndef PX_OP_H
#define PX_OP_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "client.h"
#include "paramex/paramex.h"
#include "rpc/rpc_client.h"

typedef struct px_op_kind {
  const char* name; /* "Push", "Pull" */
  /* Starts (retry: again, after UNAVAILABLE) the op's call; an error status (message set)
   * when it cannot. */
  pmx_status (*start)(pmx_op* op, bool retry);
  /* The op's calls are over with st: checks what they produced and finishes the op (a
   * pull heals chunks that failed their checksum here). Returns the op's status. */
  pmx_status (*finish)(pmx_op* op, pmx_status st);
  /* px_op_cancel may stop its call (pulls: no send has a release callback, see op.c) */
  bool cancellable;
} px_op_kind;

typedef struct px_bad_chunk {
  uint32_t ti, ci; /* index in the op's tensors; chunk */
} px_bad_chunk;

struct pmx_op {
  const px_op_kind* kind;
  pmx_client* client;
  px_owned owned; /* the client frees an op never waited for (client.h) */
  px_cli_call* call;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool done;        /* the call is over (under mu) */
  bool cancelled;   /* px_op_cancel ran: its CANCELLED is not retried (under mu) */
  int slices_live;  /* zero-copy gradient slices gRPC still references (under mu) */
  pmx_status status;
  char error[512];

  size_t n;
  pmx_tensor** tensors;
  void** bufs;      /* grads (push) or dst (pull) */
  uint64_t step, min_version;
  uint64_t* versions_out;
  uint32_t ti, ci;  /* cursor */
  uint32_t worker_id;
  uint64_t incarnation;
  char server_id[96]; /* the server this operation was started against */
  /* push */
  uint32_t accepted, duplicate;
  /* pull */
  uint64_t* have;   /* [n] the have_version sent, or UINT64_MAX for none */
  uint64_t* vmin;   /* [n] lowest chunk version received */
  uint64_t* vmax;
  int view;         /* 0: each tensor's dtype; 1: bf16 view of f32 tensors */
  bool* bad;        /* [n] one of its chunks failed its checksum (it is in badl) */
  px_bad_chunk* badl; /* the chunks that failed, in the order they came: pulled again */
  size_t nbad, capbad;
  const uint32_t* sel; /* a healing pull: only these chunks of tensor ti (else NULL) */
  uint32_t nsel, ki;   /* their count; the cursor in them */
  uint64_t* vres;   /* [n] the versions, copied to versions_out only on success */
  /* several shards: a cluster op (cluster_op.c) runs one op per shard (kids; NULL where a
   * shard holds none of the chunks); each kid tells its parent when its call is over */
  struct pmx_op** kids;
  uint32_t nkids;
  struct pmx_op* parent;
  uint64_t events;  /* kids' calls that ended (under mu) */
};

/* Checks the arguments of a push or pull (what: "pmx_push"); the message set on error. */
pmx_status px_op_check_args(pmx_client* c, size_t n, pmx_tensor* const* tensors,
                            const void* const* bufs, const char* what);
/* A new op of kind over copies of the arrays, with the client's identity; NULL when out of
 * memory. */
pmx_op* px_op_new(pmx_client* c, const px_op_kind* kind, size_t n, pmx_tensor* const* tensors,
                  const void* const* bufs);
void px_op_free(pmx_op* op);
/* The op's first error wins; later ones are dropped. */
void px_op_set_error(pmx_op* op, pmx_status st, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Marks the op's call as starting (not done, status OK). */
void px_op_begin_call(pmx_op* op);
/* The op's call is over (or what stood in for it: the Exchange stream's answer). */
void px_op_end_call(pmx_op* op);
/* The px_cli_call_cbs.on_done of every op call. */
void px_op_on_done(px_cli_call* call, void* ctx, int status, const char* details);
/* A zero-copy slice of the op went out (+1) or came back (-1). */
void px_op_slices(pmx_op* op, int delta);
/* Waits until the op's call is over and gRPC holds none of its slices (a cluster op: every
 * kid's). */
void px_op_wait_call(pmx_op* op);
/* Cancels the op's call when it still runs (a cluster op: its kids' pull calls). */
void px_op_cancel(pmx_op* op);
/* Moves the op's cursor (ti, ci: the ci-th chunk its server holds of tensor ti) past the
 * tensors of which its server holds no chunk. */
void px_op_skip_empty(pmx_op* op);
/* After the op's call is over: retries it while the server is unavailable, joins again
 * when it restarted (ABORTED) and finishes the op. Returns its status, the message in
 * op->error; the op stays allocated. */
pmx_status px_op_settle(pmx_op* op);
/* Whether st ends an op that is tried again (the server is unreachable or going down). */
bool px_op_transient(pmx_op* op, pmx_status st);
/* pmx_op_wait of an op of one server: waits, settles, sets the thread's error, frees. */
pmx_status px_op_wait(pmx_op* op);

#endif
