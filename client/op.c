/* Operations (op.h). */
#include "op.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "errors.h"
#include "rpc/rpc_base.h"
#include "tensor.h"
#include "util/clock.h"
#include "util/log.h"

void px_op_set_error(pmx_op* op, pmx_status st, const char* fmt, ...) {
  pthread_mutex_lock(&op->mu);
  if (op->status == PMX_OK) {
    op->status = st;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(op->error, sizeof op->error, fmt, ap);
    va_end(ap);
  }
  pthread_mutex_unlock(&op->mu);
}

void px_op_free(pmx_op* op) {
  for (uint32_t i = 0; i < op->nkids; i++)
    if (op->kids[i]) px_op_free(op->kids[i]);
  free(op->kids);
  px_client_disown(op->client, &op->owned);
  pthread_mutex_destroy(&op->mu);
  pthread_cond_destroy(&op->cv);
  free(op->tensors);
  free(op->bufs);
  free(op->have);
  free(op->vmin);
  free(op->vmax);
  free(op->bad);
  free(op->badl);
  free(op->vres);
  free(op);
}

/* pmx_client_destroy: the op was never waited for; its call is over, but gRPC may still
 * hold gradient slices. */
static void release_unwaited(px_owned* o) {
  pmx_op* op = (pmx_op*)((char*)o - offsetof(pmx_op, owned));
  px_op_wait_call(op);
  px_op_free(op);
}

pmx_op* px_op_new(pmx_client* c, const px_op_kind* kind, size_t n, pmx_tensor* const* tensors,
                  const void* const* bufs) {
  pmx_op* op = calloc(1, sizeof *op);
  if (!op) return NULL;
  op->kind = kind;
  op->client = c;
  op->n = n;
  pthread_mutex_init(&op->mu, NULL);
  pthread_cond_init(&op->cv, NULL);
  op->tensors = malloc(n * sizeof *op->tensors);
  op->bufs = malloc(n * sizeof *op->bufs);
  if (!op->tensors || !op->bufs) {
    px_op_free(op);
    return NULL;
  }
  memcpy(op->tensors, tensors, n * sizeof *tensors);
  memcpy(op->bufs, bufs, n * sizeof *bufs);
  pthread_mutex_lock(&c->mu);
  op->worker_id = c->worker_id;
  op->incarnation = c->incarnation;
  memcpy(op->server_id, c->server_id, sizeof op->server_id);
  pthread_mutex_unlock(&c->mu);
  op->owned.release = release_unwaited;
  px_client_own(c, &op->owned);
  return op;
}

pmx_status px_op_check_args(pmx_client* c, size_t n, pmx_tensor* const* tensors,
                            const void* const* bufs, const char* what) {
  if (!c || n == 0 || !tensors || !bufs)
    return px_fail(PMX_ERR_INVALID_ARGUMENT, "%s: no tensors given", what);
  for (size_t i = 0; i < n; i++) {
    if (!tensors[i] || tensors[i]->client != c)
      return px_fail(PMX_ERR_INVALID_ARGUMENT, "%s: tensor %zu does not belong to this client",
                     what, i);
    if (!bufs[i]) return px_fail(PMX_ERR_INVALID_ARGUMENT, "%s: buffer %zu is NULL", what, i);
  }
  return PMX_OK;
}

void px_op_skip_empty(pmx_op* op) {
  while (op->ti < op->n && px_tensor_held(op->tensors[op->ti]) == 0) op->ti++;
}

/* op->mu held */
static void check_done(pmx_op* op) {
  if (!(op->done && op->slices_live == 0)) return;
  pthread_cond_broadcast(&op->cv);
  if (op->parent) { /* lock order: kid, then parent */
    pthread_mutex_lock(&op->parent->mu);
    op->parent->events++;
    pthread_cond_broadcast(&op->parent->cv);
    pthread_mutex_unlock(&op->parent->mu);
  }
}

void px_op_begin_call(pmx_op* op) {
  pthread_mutex_lock(&op->mu);
  op->done = false;
  op->status = PMX_OK;
  pthread_mutex_unlock(&op->mu);
}

void px_op_end_call(pmx_op* op) {
  pthread_mutex_lock(&op->mu);
  op->done = true;
  check_done(op);
  pthread_mutex_unlock(&op->mu);
}

void px_op_on_done(px_cli_call* call, void* ctx, int status, const char* details) {
  (void)call;
  pmx_op* op = ctx;
  if (status != PX_ST_OK)
    px_op_set_error(op, px_from_rpc(status), "%s: %s: %s", op->kind->name, px_status_name(status),
                    details);
  px_op_end_call(op);
}

void px_op_slices(pmx_op* op, int delta) {
  pthread_mutex_lock(&op->mu);
  op->slices_live += delta;
  check_done(op);
  pthread_mutex_unlock(&op->mu);
}

void px_op_wait_call(pmx_op* op) {
  if (op->kids) {
    for (uint32_t i = 0; i < op->nkids; i++)
      if (op->kids[i]) px_op_wait_call(op->kids[i]);
    return;
  }
  pthread_mutex_lock(&op->mu);
  while (!(op->done && op->slices_live == 0)) pthread_cond_wait(&op->cv, &op->mu);
  pthread_mutex_unlock(&op->mu);
}

/* Cancels the op's call if it is still running. px_op_on_done takes op->mu, so while
 * op->mu is held and done is false the call's memory is valid; try_ref refuses a call
 * whose last reference is already going. Lock order op->mu -> call mutex: only for pull
 * ops, whose sends have no release callback (a push's release callbacks take op->mu and
 * may run under the call's mutex). */
void px_op_cancel(pmx_op* op) {
  if (op->kids) {
    for (uint32_t i = 0; i < op->nkids; i++)
      if (op->kids[i] && op->kids[i]->kind->cancellable) px_op_cancel(op->kids[i]);
    return;
  }
  pthread_mutex_lock(&op->mu);
  op->cancelled = true;
  px_cli_call* call = !op->done && op->call && px_cli_call_try_ref(op->call) ? op->call : NULL;
  pthread_mutex_unlock(&op->mu);
  if (!call) return;
  px_cli_call_cancel(call);
  px_cli_call_unref(call);
}

/* Waits ms on the op's condition variable (nothing signals it while no call runs). */
static void backoff_wait(pmx_op* op, int64_t ms) {
  struct timespec ts;
  px_deadline_ts(&ts, CLOCK_REALTIME, ms);
  pthread_mutex_lock(&op->mu);
  while (pthread_cond_timedwait(&op->cv, &op->mu, &ts) == 0) {
  }
  pthread_mutex_unlock(&op->mu);
}

/* Whether st ends an op that is tried again: the server is unreachable, or going down
 * (a call that reaches a server in the instant between its drain and its stop is
 * cancelled by gRPC itself; the library cancels only calls nobody waits for). Pushes and
 * pulls are idempotent. */
bool px_op_transient(pmx_op* op, pmx_status st) {
  if (st != PMX_ERR_CANCELLED) return st == PMX_ERR_UNAVAILABLE;
  pthread_mutex_lock(&op->mu);
  bool ours = op->cancelled;
  pthread_mutex_unlock(&op->mu);
  return !ours;
}

/* Retries the op while the server is unavailable, until the client's retry timeout. */
static pmx_status retry_unavailable(pmx_op* op, pmx_status st) {
  pmx_client* cl = op->client;
  uint64_t give_up = px_now_ms() + (uint64_t)cl->retry_timeout_ms;
  int64_t delay = 50;
  if (px_op_transient(op, st)) px_warn("%s: %s; retrying for up to %lld ms", op->kind->name, op->error,
                             (long long)cl->retry_timeout_ms);
  while (px_op_transient(op, st) && px_now_ms() + (uint64_t)delay < give_up) {
    int64_t jitter = (int64_t)((uint64_t)rand() % (uint64_t)(delay / 2 + 1));
    backoff_wait(op, delay / 2 + jitter);
    delay = delay * 2 > 2000 ? 2000 : delay * 2;
    /* Another operation found the server restarted and joined again: this one belongs to
     * the earlier run (its step or version may not exist any more). */
    pthread_mutex_lock(&cl->mu);
    bool restarted = strcmp(cl->server_id, op->server_id) != 0;
    pthread_mutex_unlock(&cl->mu);
    if (restarted) {
      op->status = PMX_OK;
      px_op_set_error(op, PMX_ERR_ABORTED,
                      "%s: the server restarted (from a checkpoint) while this operation was "
                      "retried: resume from the server's version", op->kind->name);
      return op->status;
    }
    char cause[sizeof op->error];
    pthread_mutex_lock(&op->mu);
    memcpy(cause, op->error, sizeof cause);
    pthread_mutex_unlock(&op->mu);
    st = op->kind->start(op, true);
    if (st != PMX_OK) return st;
    px_op_wait_call(op);
    st = op->status;
    if (st == PMX_ERR_DEADLINE_EXCEEDED) {
      /* the attempt ran out of time (a connection that hangs): keep what the earlier
       * attempts met, which says why */
      pthread_mutex_lock(&op->mu);
      size_t n = strlen(op->error);
      snprintf(op->error + n, sizeof op->error - n, " (after retrying: %.300s)", cause);
      pthread_mutex_unlock(&op->mu);
    }
  }
  if (px_op_transient(op, st)) {
    pthread_mutex_lock(&op->mu);
    size_t n = strlen(op->error);
    snprintf(op->error + n, sizeof op->error - n, " (retried for %lld ms)",
             (long long)cl->retry_timeout_ms);
    pthread_mutex_unlock(&op->mu);
  }
  return st;
}

pmx_status px_op_settle(pmx_op* op) {
  /* Transport failures (server down, restarting, network) are retried with capped
   * exponential back-off; the server ignores chunks it already counted. */
  pmx_status st = retry_unavailable(op, op->status);
  if (st == PMX_ERR_ABORTED) {
    px_info("%s: %s; joining again", op->kind->name, op->error);
    px_client_rejoin(op->client);
  }
  return op->kind->finish(op, st);
}

pmx_status px_op_wait(pmx_op* op) {
  px_op_wait_call(op);
  pmx_status st = px_op_settle(op);
  if (st != PMX_OK) px_fail(st, "%s", op->error);
  px_op_free(op);
  return st;
}
