/* The blocking operations (exchange.h; pmx_push, pmx_pull, pmx_pull_as, pmx_push_pull and
 * pmx_push_pull_as and pmx_resume of paramex.h). */
#include "exchange.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client.h"
#include "cluster.h"
#include "errors.h"
#include "op.h"
#include "recover.h"
#include "stream.h"
#include "tensor.h"
#include "util/clock.h"
#include "util/log.h"

/* A push through the Push call. */
static pmx_status push_call(pmx_client* c, uint64_t step, size_t n, pmx_tensor* const* tensors,
                            const void* const* grads) {
  pmx_op* op;
  pmx_status st = pmx_push_async(c, step, n, tensors, grads, &op);
  return st == PMX_OK ? pmx_op_wait(op) : st;
}

pmx_status pmx_push(pmx_client* c, uint64_t step, size_t n, pmx_tensor* const* tensors,
                    const void* const* grads) {
  pmx_status st;
  if (px_stream_run(c, step, n, tensors, grads, NULL, 0, 0, NULL, &st)) return st;
  return push_call(c, step, n, tensors, grads);
}

pmx_status pmx_pull_as(pmx_client* c, size_t n, pmx_tensor* const* tensors, void* const* dst,
                       pmx_dtype view, uint64_t min_version, uint64_t* versions) {
  pmx_status st;
  if (px_stream_run(c, 0, n, tensors, NULL, dst, view, min_version, versions, &st)) return st;
  pmx_op* op;
  st = pmx_pull_as_async(c, n, tensors, dst, view, min_version, versions, &op);
  return st == PMX_OK ? pmx_op_wait(op) : st;
}

pmx_status pmx_pull(pmx_client* c, size_t n, pmx_tensor* const* tensors, void* const* dst,
                    uint64_t min_version, uint64_t* versions) {
  return pmx_pull_as(c, n, tensors, dst, 0, min_version, versions);
}

pmx_status pmx_push_pull(pmx_client* c, uint64_t step, size_t n, pmx_tensor* const* tensors,
                         const void* const* grads, void* const* dst, uint64_t* versions) {
  return pmx_push_pull_as(c, step, n, tensors, grads, dst, 0, versions);
}

pmx_status pmx_push_pull_as(pmx_client* c, uint64_t step, size_t n, pmx_tensor* const* tensors,
                            const void* const* grads, void* const* dst, pmx_dtype view,
                            uint64_t* versions) {
  pmx_status st;
  if (grads && dst && px_stream_run(c, step, n, tensors, grads, dst, view, step + 1, versions, &st))
    return st;
  pmx_op* pull = NULL;
  st = pmx_pull_as_async(c, n, tensors, dst, view, step + 1, versions, &pull);
  if (st != PMX_OK) return st;
  st = push_call(c, step, n, tensors, grads);
  if (st != PMX_OK) {
    /* The step may never complete now: stop the parked pull and report the push's error
     * at once. Not pmx_op_wait: its retries (a pull that failed UNAVAILABLE) would wait
     * for a version this push did not make, and its rejoin would repeat the push's. The
     * buffers stay marked as holding nothing certain (a later pull sends them in full). */
    px_op_cancel(pull);
    px_op_wait_call(pull);
    px_op_free(pull);
    return st;
  }
  return pmx_op_wait(pull);
}

/* Marks every tensor's buffer as holding nothing certain: a restarted server's versions
 * are not the ones the buffers hold, even where the numbers agree. */
static void forget_buffers(pmx_client* c) {
  pthread_mutex_lock(&c->mu);
  for (size_t i = 0; i < c->ntensors; i++) c->tensors[i]->have_valid = false;
  pthread_mutex_unlock(&c->mu);
}

/* Declares again every tensor of the client (a server that restarted with nothing, or
 * from a checkpoint older than a tensor, lost it; the others answer with their ids). */
static pmx_status declare_again_one(pmx_client* c) {
  pthread_mutex_lock(&c->mu);
  size_t n = c->ntensors;
  pthread_mutex_unlock(&c->mu);
  for (size_t i = 0; i < n; i++) {
    pthread_mutex_lock(&c->mu);
    pmx_tensor* t = c->tensors[i];
    pthread_mutex_unlock(&c->mu);
    pmx_status st = px_tensor_declare(c, t);
    if (st != PMX_OK) return st;
  }
  return PMX_OK;
}

/* Joins again where needed, then declares again, on every server of the client (each
 * shard's client holds its shard's tensors). */
static pmx_status rejoin_and_declare(pmx_client* c) {
  for (uint32_t i = 0; i < px_cluster_nconn(c); i++) {
    pmx_client* k = px_cluster_conn(c, i);
    forget_buffers(k);
    pmx_status st = px_client_join_again(k);
    if (st == PMX_OK) st = declare_again_one(k);
    if (st != PMX_OK) {
      if (c->nshards) px_cluster_shard_fail(c, i, st, "");
      return st;
    }
  }
  return PMX_OK;
}

/* pmx_resume's pull; over several shards one shard at a time, each tensor's shards checked
 * to be at one version (px_recover_shards brought them there; a shard that restarted or
 * went on since makes this ABORTED naming both, and pmx_resume tries again), never mixed
 * bits. */
static pmx_status resume_pull(pmx_client* c, size_t n, pmx_tensor* const* tensors,
                              void* const* dst, uint64_t* versions) {
  if (!c->nshards) return pmx_pull(c, n, tensors, dst, 0, versions);
  pmx_tensor** kt = malloc(n * sizeof *kt);
  uint64_t* v = malloc(n * sizeof *v);
  uint32_t* from = malloc(n * sizeof *from);
  pmx_status st =
      kt && v && from ? PMX_OK : px_fail(PMX_ERR_NO_MEMORY, "pmx_resume: out of memory");
  for (size_t i = 0; st == PMX_OK && i < n; i++) versions[i] = UINT64_MAX;
  for (uint32_t s = 0; st == PMX_OK && s < c->nshards; s++) {
    if (px_cluster_kid_tensors(tensors, n, s, kt) == 0) continue;
    st = pmx_pull(c->shard[s], n, kt, dst, 0, v);
    if (st != PMX_OK) {
      px_cluster_shard_fail(c, s, st, "");
      break;
    }
    for (size_t i = 0; st == PMX_OK && i < n; i++) {
      if (px_tensor_held(kt[i]) == 0) continue;
      if (versions[i] == UINT64_MAX) {
        versions[i] = v[i];
        from[i] = s;
      } else if (versions[i] != v[i]) {
        /* a step completed on one shard since the look (pmx_resume looks again) */
        st = px_fail(PMX_ERR_ABORTED, "pmx_resume: tensor '%s' is at version %llu on shard %u "
                     "(%s) but at %llu on shard %u (%s): the shards moved on while resuming",
                     tensors[i]->name,
                     (unsigned long long)versions[i], from[i], c->shard[from[i]]->addr,
                     (unsigned long long)v[i], s, c->shard[s]->addr);
      }
    }
  }
  free(kt);
  free(v);
  free(from);
  return st;
}

pmx_status pmx_resume(pmx_client* c, size_t n, pmx_tensor* const* tensors, void* const* dst,
                      uint64_t* step) {
  pmx_status st = px_op_check_args(c, n, tensors, (const void* const*)dst, "pmx_resume");
  if (st != PMX_OK) return st;
  if (!step) return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_resume: step is NULL");
  uint64_t* versions = malloc(n * sizeof *versions);
  if (!versions) return px_fail(PMX_ERR_NO_MEMORY, "pmx_resume: out of memory");
  /* A server that restarts again meanwhile (ABORTED) or is not up yet (UNAVAILABLE) is
   * followed for up to retry_timeout_ms. */
  const uint64_t give_up = px_now_ms() + (uint64_t)c->retry_timeout_ms;
  for (int attempt = 0;; attempt++) {
    st = c->nshards ? px_recover_shards(c, give_up) : PMX_OK;
    if (st == PMX_OK) st = rejoin_and_declare(c);
    if (st == PMX_OK) st = resume_pull(c, n, tensors, dst, versions);
    if (st == PMX_OK) break;
    if (!(st == PMX_ERR_ABORTED || st == PMX_ERR_UNAVAILABLE) || px_now_ms() >= give_up ||
        attempt >= 100)
      break;
    if (st == PMX_ERR_UNAVAILABLE) {
      struct timespec ts = {0, 200 * 1000000L}; /* the server is not up yet: bounded above */
      nanosleep(&ts, NULL);
    }
  }
  if (st == PMX_OK) {
    uint64_t v = versions[0];
    for (size_t i = 1; i < n; i++) v = versions[i] < v ? versions[i] : v;
    *step = v;
    px_info("resuming at step %" PRIu64 " (the server's version)", v);
  }
  free(versions);
  return st;
}
