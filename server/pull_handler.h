/* The Pull call (server streaming): streams the wanted chunks in order, each as the frame
 * that suits the version the client holds (framecache.h), parking on a chunk that has not
 * reached min_version yet (waiters.h) without blocking any thread. Handled on the
 * completion-queue threads: looking a frame up and starting a send is cheap, and frames
 * that must be built are built on the compute pool (publish.h). */
#ifndef PX_PULL_HANDLER_H
#define PX_PULL_HANDLER_H

#include "rpc/rpc_server.h"
#include "server.h"

#include "paramex.pb-c.h"
#include "waiters.h"

/* A pull's walk over its chunks, shared by Pull calls and the Exchange stream
 * (exchange_handler.h); where the chunks go is the sink's. */
typedef struct px_puller px_puller;
typedef struct px_pull_sink {
  /* One chunk's message (out's release frees the frame reference it carries). true: the
   * walk goes on at once; false: the sink calls px_puller_advance itself later (or ended
   * the pull). */
  bool (*emit)(px_puller* p, const px_out* out);
  /* The pull is over: PX_ST_OK, an error status with msg, or -1 when its call is gone. */
  void (*end)(px_puller* p, int status, const char* msg);
} px_pull_sink;

struct px_puller {
  px_server* srv;
  const px_pull_sink* sink;
  uint32_t ntensors;
  uint32_t* tids;
  uint64_t* have;          /* [ntensors] or NULL */
  uint64_t min_version;
  int view;                /* 0 native, 1 bf16 view of f32 tensors */
  bool accept_delta, accept_shuffle;
  uint32_t ti, ci;         /* cursor: next chunk to send */
  uint32_t* sel;           /* PullRequest.chunks of the one tensor, or NULL: every chunk */
  uint32_t nsel, ki;       /* their count; the cursor in them */
  px_waiter waiter;        /* parked on a chunk (its job: the walk goes on) */
};

/* Checks r and fills p from it (srv and sink set, the rest zero but the waiter, which
 * may have waited for an earlier pull of the same stream); a status and err. The pull's
 * deadline (--call-timeout) starts now. */
int px_puller_setup(px_puller* p, const Paramex__V1__PullRequest* r, char* err, size_t errlen);
/* Emits the next chunks, parks on one that is not ready, or ends the pull. */
void px_puller_advance(px_puller* p);
/* Frees what setup allocated. */
void px_puller_free(px_puller* p);

/* The method's on_call (rpc_server.h); s is the px_server. */
void px_pull_on_call(void* s, px_srv_call* call, px_msg* req);

#endif
