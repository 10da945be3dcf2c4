/* Operations over several shards (cluster_op.h). */
#include "cluster_op.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "cluster.h"
#include "errors.h"
#include "pull_op.h"
#include "push_op.h"
#include "shard/shardmap.h"
#include "tensor.h"

/* A cluster op has no call of its own: its kids' calls are the work. */
static pmx_status no_start(pmx_op* op, bool retry) {
  (void)retry;
  px_op_set_error(op, PMX_ERR_INTERNAL, "a cluster operation has no call of its own");
  return op->status;
}
static pmx_status no_finish(pmx_op* op, pmx_status st) {
  (void)op;
  return st;
}
static const px_op_kind cluster_push = {"Push", no_start, no_finish, false};
static const px_op_kind cluster_pull = {"Pull", no_start, no_finish, true};

/* pmx_client_destroy: an op nobody waited for stops its kids' calls and frees them. */
static void release_unwaited(px_owned* o) {
  pmx_op* op = (pmx_op*)((char*)o - offsetof(pmx_op, owned));
  px_op_cancel(op);
  px_op_wait_call(op);
  px_op_free(op);
}

static pmx_op* cluster_op_new(pmx_client* c, const px_op_kind* kind, size_t n,
                              pmx_tensor* const* tensors, const void* const* bufs) {
  pmx_op* op = px_op_new(c, kind, n, tensors, bufs);
  if (!op) return NULL;
  op->owned.release = release_unwaited;
  op->done = true;
  op->kids = calloc(c->nshards, sizeof *op->kids);
  if (!op->kids) {
    px_op_free(op);
    return NULL;
  }
  op->nkids = c->nshards;
  return op;
}

/* kid runs for op: it tells op when its call is over. */
static void adopt_kid(pmx_op* op, uint32_t s, pmx_op* kid) {
  pthread_mutex_lock(&kid->mu);
  kid->parent = op;
  pthread_mutex_unlock(&kid->mu);
  op->kids[s] = kid;
}

/* A kid could not start (the thread's error set): the started ones are stopped. */
static pmx_status start_failed(pmx_op* op, pmx_status st, uint32_t s) {
  char err[PX_ERROR_LEN];
  memcpy(err, px_last_error_buf(), sizeof err);
  px_op_cancel(op);
  px_op_wait_call(op);
  pmx_client* c = op->client;
  px_op_free(op);
  return px_fail(st, "shard %u (%s): %s", s, c->shard[s]->addr, err);
}

/* Starts op's kid on every shard that holds a chunk of its tensors; on success *out = op,
 * else op is freed. */
static pmx_status start_kids(pmx_op* op, pmx_op** out) {
  pmx_client* c = op->client;
  const size_t n = op->n;
  pmx_tensor** kt = malloc(n * sizeof *kt);
  if (!kt) {
    px_op_free(op);
    return px_fail(PMX_ERR_NO_MEMORY, "pmx_%s: out of memory",
                   op->kind == &cluster_push ? "push" : "pull");
  }
  for (uint32_t s = 0; s < c->nshards; s++) {
    if (px_cluster_kid_tensors(op->tensors, n, s, kt) == 0) continue;
    pmx_op* kid;
    pmx_status st =
        op->kind == &cluster_push
            ? px_push_async(c->shard[s], op->step, n, kt, (const void* const*)op->bufs, &kid)
            : px_pull_as_async(c->shard[s], n, kt, op->bufs, op->view ? PMX_BF16 : 0,
                               op->min_version, op->vres + (size_t)s * n, &kid);
    if (st != PMX_OK) {
      free(kt);
      return start_failed(op, st, s);
    }
    adopt_kid(op, s, kid);
  }
  free(kt);
  *out = op;
  return PMX_OK;
}

pmx_status pmx_push_async(pmx_client* c, uint64_t step, size_t n, pmx_tensor* const* tensors,
                          const void* const* grads, pmx_op** out) {
  if (!c || !c->nshards) return px_push_async(c, step, n, tensors, grads, out);
  pmx_status st = px_op_check_args(c, n, tensors, grads, "pmx_push");
  if (st != PMX_OK) return st;
  if (!out) return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_push: no op pointer");
  pmx_op* op = cluster_op_new(c, &cluster_push, n, tensors, grads);
  if (!op) return px_fail(PMX_ERR_NO_MEMORY, "pmx_push: out of memory");
  op->step = step;
  return start_kids(op, out);
}

pmx_status pmx_pull_as_async(pmx_client* c, size_t n, pmx_tensor* const* tensors, void* const* dst,
                             pmx_dtype view, uint64_t min_version, uint64_t* versions,
                             pmx_op** out) {
  if (!c || !c->nshards)
    return px_pull_as_async(c, n, tensors, dst, view, min_version, versions, out);
  pmx_status st = px_op_check_args(c, n, tensors, (const void* const*)dst, "pmx_pull");
  if (st != PMX_OK) return st;
  if (!out) return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_pull: no op pointer");
  if (view != 0 && view != PMX_BF16)
    return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_pull: view must be 0 (native) or PMX_BF16");
  pmx_op* op = cluster_op_new(c, &cluster_pull, n, tensors, (const void* const*)dst);
  if (op) op->vres = malloc((size_t)c->nshards * n * sizeof *op->vres); /* the kids' versions */
  if (!op || !op->vres) {
    if (op) px_op_free(op);
    return px_fail(PMX_ERR_NO_MEMORY, "pmx_pull: out of memory");
  }
  op->versions_out = versions;
  op->min_version = min_version;
  op->view = view == PMX_BF16 ? 1 : 0;
  return start_kids(op, out);
}

pmx_status pmx_pull_async(pmx_client* c, size_t n, pmx_tensor* const* tensors, void* const* dst,
                          uint64_t min_version, uint64_t* versions, pmx_op** out) {
  return pmx_pull_as_async(c, n, tensors, dst, 0, min_version, versions, out);
}

/* Whether kid's call is over. */
static bool kid_done(pmx_op* kid) {
  pthread_mutex_lock(&kid->mu);
  bool d = kid->done && kid->slices_live == 0;
  pthread_mutex_unlock(&kid->mu);
  return d;
}

/* Settles every kid as its call ends; the first that fails for good gives op its error and
 * stops the other pulls. */
static pmx_status cluster_wait(pmx_op* op) {
  bool settled[PX_MAX_SHARDS] = {false};
  pmx_status first = PMX_OK;
  for (;;) {
    pthread_mutex_lock(&op->mu);
    const uint64_t seen = op->events;
    pthread_mutex_unlock(&op->mu);
    bool all = true;
    for (uint32_t s = 0; s < op->nkids; s++) {
      pmx_op* kid = op->kids[s];
      if (!kid || settled[s]) continue;
      if (!kid_done(kid)) {
        all = false;
        continue;
      }
      /* retries an unavailable shard here (with back-off) while the others' calls go on */
      pmx_status st = px_op_settle(kid);
      settled[s] = true;
      if (st != PMX_OK && first == PMX_OK) {
        first = st;
        px_op_set_error(op, st, "shard %u (%s): %s", s, kid->client->addr, kid->error);
        px_op_cancel(op); /* the step cannot complete everywhere now */
      }
    }
    if (all) break;
    pthread_mutex_lock(&op->mu);
    while (op->events == seen) pthread_cond_wait(&op->cv, &op->mu);
    pthread_mutex_unlock(&op->mu);
  }
  if (first == PMX_OK && op->versions_out) {
    /* each tensor's version: the lowest of its chunks, over the shards holding some */
    for (size_t i = 0; i < op->n; i++) {
      uint64_t v = UINT64_MAX;
      for (uint32_t s = 0; s < op->nkids; s++)
        if (op->kids[s] && px_tensor_held(op->tensors[i]->kids[s]) > 0 &&
            op->vres[(size_t)s * op->n + i] < v)
          v = op->vres[(size_t)s * op->n + i];
      op->versions_out[i] = v;
    }
  }
  return first;
}

pmx_status pmx_op_wait(pmx_op* op) {
  if (!op) return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_op_wait: no op");
  if (!op->kids) return px_op_wait(op);
  pmx_status st = cluster_wait(op);
  if (st != PMX_OK) px_fail(st, "%s", op->error);
  px_op_free(op);
  return st;
}
