/* Private to common/rpc/: the call core that the server (rpc_server.c) and the client
 * (rpc_client.c) build their call state machines on, and the completion-queue loop.
 *
 * A px_rpc_call holds what both sides do alike: the reference count (the call is freed
 * when the last reference goes, never while a batch is pending, since every started batch
 * holds one), one outstanding RECV_MESSAGE and one outstanding SEND_MESSAGE (trap 2 of
 * grpc-core.md), and the initial metadata, which is not sent on its own but rides in the
 * first batch that sends anything (one write and one completion fewer per call). A side
 * embeds it first in its own call struct and adds what differs: status and close on the
 * server, the status batch, half-close and cancel on the client.
 *
 * Locking: c->mu guards the flags and the pending metadata; every batch that may carry
 * the initial metadata is started with c->mu held so that no other batch overtakes it.
 * Callbacks (hooks) run without c->mu. */
#ifndef PX_RPC_CALL_H
#define PX_RPC_CALL_H

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <pthread.h>

#include "rpc/rpc_base.h"

/* Every completion-queue tag is one of these, embedded in its owner; the loop calls
 * done(tag, ok) for each event. */
typedef struct px_rpc_tag {
  void (*done)(struct px_rpc_tag* tag, bool ok);
} px_rpc_tag;

/* Runs the events of cq until it is shut down (a thread's body; arg is the queue). */
void* px_rpc_cq_thread(void* cq);

/* ms from now on the monotonic clock; <= 0: no deadline. */
gpr_timespec px_rpc_deadline_ms(int64_t ms);

typedef struct px_rpc_call px_rpc_call;

/* What a side adds to the core. Each hook runs on a completion-queue thread (last_unref:
 * on the thread that dropped the last reference) without c->mu. */
typedef struct px_rpc_call_hooks {
  /* A RECV_MESSAGE completed: m is the message (the hook owns it), or NULL at the end of
   * the stream or on failure; ok false when the call failed or was cancelled (on the
   * server a client cancel can look like a clean end of stream: trap 5). */
  void (*received)(px_rpc_call* c, px_msg* m, bool ok);
  /* A SEND_MESSAGE completed (ok false: the call failed). */
  void (*sent)(px_rpc_call* c, bool ok);
  /* The last reference went: report and free the call. */
  void (*last_unref)(px_rpc_call* c);
} px_rpc_call_hooks;

struct px_rpc_call {
  grpc_call* call;
  const px_rpc_call_hooks* hooks;
  pthread_mutex_t mu;
  int refs;
  bool reading, sending;
  bool no_recv;   /* no further read may start (server: finished; client: status in) */
  bool no_send;   /* no further send may start (server: finished; client: half-closed) */
  bool over;      /* the call is over on the wire: nothing may start */
  /* The initial metadata not sent yet (under mu). */
  bool md_pending;
  uint32_t md_flags;
  grpc_metadata* md;
  size_t nmd;
  grpc_byte_buffer* recv_bb;
  grpc_byte_buffer* send_bb;
  px_rpc_tag t_recv, t_send, t_md;
};

/* Initialises the core of a call with refs references; the side sets c->call (before the
 * first operation), c->md / nmd / md_flags (the initial metadata it will send; borrowed
 * until deinit) and md_pending. */
void px_rpc_call_init(px_rpc_call* c, const px_rpc_call_hooks* hooks, int refs);
/* Frees what the core holds (pending buffers, the mutex, the grpc_call). */
void px_rpc_call_deinit(px_rpc_call* c);

void px_rpc_call_ref(px_rpc_call* c);
/* A reference unless the last one is already being dropped (false: last_unref runs or is
 * about to). */
bool px_rpc_call_try_ref(px_rpc_call* c);
void px_rpc_call_unref(px_rpc_call* c);

/* c->mu held: puts the pending initial metadata into *op (then the caller must start the
 * batch before unlocking); returns the ops used (0 or 1). */
size_t px_rpc_call_take_md(px_rpc_call* c, grpc_op* op);
/* c->mu held: a batch that carried the initial metadata could not start: the next one
 * carries it. */
void px_rpc_call_restore_md(px_rpc_call* c, size_t taken);

/* Starts the next RECV_MESSAGE (one at a time); md_first: send the pending initial
 * metadata first (a client's read before any send). false when no read may start (no
 * hook follows). */
bool px_rpc_call_read(px_rpc_call* c, bool md_first);
/* Starts a SEND_MESSAGE of out (with the pending initial metadata, and then the extra op,
 * e.g. a client's half-close, in the same batch; extra may be NULL). close_send: no send
 * may follow. false when no send may start or gRPC refused the batch: out's release has
 * run and no hook follows. */
bool px_rpc_call_send(px_rpc_call* c, const px_out* out, const grpc_op* extra, bool close_send);
/* Starts a batch on c (c->mu held by the caller); false with one line logged when gRPC
 * refuses it. */
bool px_rpc_call_start(px_rpc_call* c, const grpc_op* ops, size_t n, px_rpc_tag* tag);

#endif
