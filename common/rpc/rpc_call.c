/* The call core and the completion-queue loop (rpc_call.h). */
#include "rpc/rpc_call.h"

#include <stdlib.h>
#include <string.h>

#include "util/log.h"

void* px_rpc_cq_thread(void* arg) {
  grpc_completion_queue* cq = arg;
  for (;;) {
    grpc_event ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
    if (ev.type != GRPC_OP_COMPLETE || !ev.tag) continue;
    px_rpc_tag* t = ev.tag;
    t->done(t, ev.success != 0);
  }
  return NULL;
}

gpr_timespec px_rpc_deadline_ms(int64_t ms) {
  if (ms <= 0) return gpr_inf_future(GPR_CLOCK_MONOTONIC);
  return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(ms, GPR_TIMESPAN));
}

#define CALL_OF(tag, field) ((px_rpc_call*)((char*)(tag) - offsetof(px_rpc_call, field)))

static void recv_done(px_rpc_tag* t, bool ok) {
  px_rpc_call* c = CALL_OF(t, t_recv);
  grpc_byte_buffer* bb = c->recv_bb;
  c->recv_bb = NULL;
  /* trap 5: a cancel can complete the read with success and no message */
  bool good = ok && !(bb == NULL && grpc_call_failed_before_recv_message(c->call));
  pthread_mutex_lock(&c->mu);
  c->reading = false;
  pthread_mutex_unlock(&c->mu);
  px_msg* m = good ? px_rpc_msg_wrap(bb) : NULL;
  if (!good && bb) grpc_byte_buffer_destroy(bb);
  c->hooks->received(c, m, good);
  px_rpc_call_unref(c);
}

static void send_done(px_rpc_tag* t, bool ok) {
  px_rpc_call* c = CALL_OF(t, t_send);
  grpc_byte_buffer_destroy(c->send_bb);
  c->send_bb = NULL;
  pthread_mutex_lock(&c->mu);
  c->sending = false;
  pthread_mutex_unlock(&c->mu);
  c->hooks->sent(c, ok);
  px_rpc_call_unref(c);
}

/* The batch that sent only the initial metadata (ahead of a read). */
static void md_done(px_rpc_tag* t, bool ok) {
  (void)ok;
  px_rpc_call_unref(CALL_OF(t, t_md));
}

void px_rpc_call_init(px_rpc_call* c, const px_rpc_call_hooks* hooks, int refs) {
  c->hooks = hooks;
  c->refs = refs;
  pthread_mutex_init(&c->mu, NULL);
  c->t_recv.done = recv_done;
  c->t_send.done = send_done;
  c->t_md.done = md_done;
}

void px_rpc_call_deinit(px_rpc_call* c) {
  if (c->recv_bb) grpc_byte_buffer_destroy(c->recv_bb);
  if (c->send_bb) grpc_byte_buffer_destroy(c->send_bb);
  if (c->call) grpc_call_unref(c->call);
  pthread_mutex_destroy(&c->mu);
}

void px_rpc_call_ref(px_rpc_call* c) {
  pthread_mutex_lock(&c->mu);
  c->refs++;
  pthread_mutex_unlock(&c->mu);
}

bool px_rpc_call_try_ref(px_rpc_call* c) {
  pthread_mutex_lock(&c->mu);
  bool ok = c->refs > 0;
  if (ok) c->refs++;
  pthread_mutex_unlock(&c->mu);
  return ok;
}

void px_rpc_call_unref(px_rpc_call* c) {
  pthread_mutex_lock(&c->mu);
  int left = --c->refs;
  pthread_mutex_unlock(&c->mu);
  if (left == 0) c->hooks->last_unref(c);
}

size_t px_rpc_call_take_md(px_rpc_call* c, grpc_op* op) {
  if (!c->md_pending) return 0;
  c->md_pending = false;
  op->op = GRPC_OP_SEND_INITIAL_METADATA;
  op->flags = c->md_flags;
  op->data.send_initial_metadata.count = c->nmd;
  op->data.send_initial_metadata.metadata = c->nmd ? c->md : NULL;
  return 1;
}

void px_rpc_call_restore_md(px_rpc_call* c, size_t taken) {
  if (taken) c->md_pending = true;
}

bool px_rpc_call_start(px_rpc_call* c, const grpc_op* ops, size_t n, px_rpc_tag* tag) {
  grpc_call_error e = grpc_call_start_batch(c->call, ops, n, tag, NULL);
  if (e == GRPC_CALL_OK) return true;
  px_error("rpc: grpc_call_start_batch refused a batch: %s", grpc_call_error_to_string(e));
  return false;
}

bool px_rpc_call_read(px_rpc_call* c, bool md_first) {
  pthread_mutex_lock(&c->mu);
  if (c->over || c->no_recv || c->reading) {
    pthread_mutex_unlock(&c->mu);
    return false;
  }
  c->reading = true;
  c->refs++;
  grpc_op op[1];
  memset(op, 0, sizeof op);
  if (md_first && px_rpc_call_take_md(c, &op[0])) {
    c->refs++;
    if (!px_rpc_call_start(c, op, 1, &c->t_md)) {
      c->refs--;
      px_rpc_call_restore_md(c, 1);
    }
    memset(op, 0, sizeof op);
  }
  op[0].op = GRPC_OP_RECV_MESSAGE;
  op[0].data.recv_message.recv_message = &c->recv_bb;
  bool ok = px_rpc_call_start(c, op, 1, &c->t_recv);
  if (!ok) c->reading = false;
  pthread_mutex_unlock(&c->mu);
  if (!ok) px_rpc_call_unref(c);
  return ok;
}

bool px_rpc_call_send(px_rpc_call* c, const px_out* out, const grpc_op* extra, bool close_send) {
  pthread_mutex_lock(&c->mu);
  if (c->over || c->no_send || c->sending) {
    pthread_mutex_unlock(&c->mu);
    px_rpc_out_release(out);
    return false;
  }
  c->sending = true;
  c->refs++;
  c->send_bb = px_rpc_out_buffer(out);
  grpc_op ops[3];
  memset(ops, 0, sizeof ops);
  const size_t md = px_rpc_call_take_md(c, &ops[0]);
  size_t n = md;
  ops[n].op = GRPC_OP_SEND_MESSAGE;
  ops[n].data.send_message.send_message = c->send_bb;
  n++;
  if (extra) ops[n++] = *extra;
  bool ok = c->send_bb && px_rpc_call_start(c, ops, n, &c->t_send);
  grpc_byte_buffer* drop = NULL;
  if (ok) {
    if (close_send) c->no_send = true;
  } else {
    drop = c->send_bb; /* destroyed after unlocking: its release callback may take locks */
    c->send_bb = NULL;
    c->sending = false;
    px_rpc_call_restore_md(c, md); /* the headers did not go: the next batch carries them */
  }
  pthread_mutex_unlock(&c->mu);
  if (drop) grpc_byte_buffer_destroy(drop);
  if (!ok) px_rpc_call_unref(c);
  return ok;
}
