/* A model over several server shards (cluster.c): pmx_connect takes a comma-separated
 * list of shard addresses (or PMX_SERVERS) in shard order and makes one client per shard
 * beneath the one it returns; that client has no channel of its own. Joining joins every
 * shard (each Join says where the list places it, so a list in the wrong order or of the
 * wrong length is refused by the shard) and compares the settings the shards answer;
 * declaring declares on every shard, and each shard's tensor knows the chunks its shard
 * holds (shard/shardmap.h). Operations fan out in cluster_op.c. With one address nothing
 * of this is used: the client is that server's. Internal to libparamex (the API:
 * pmx_connect, pmx_join, pmx_declare, pmx_client_destroy, pmx_client_abort,
 * pmx_client_get_stats of paramex.h). */
#ifndef PX_CLUSTER_H
#define PX_CLUSTER_H

#include <string.h>

#include "client.h"
#include "errors.h"
#include "tensor.h"

/* Client i of c's connections: its shards' clients, or c itself with one server. */
static inline pmx_client* px_cluster_conn(pmx_client* c, uint32_t i) {
  return c->nshards ? c->shard[i] : c;
}
static inline uint32_t px_cluster_nconn(const pmx_client* c) {
  return c->nshards ? c->nshards : 1;
}

/* The tensors of shard s's client for the cluster tensors[0..n), into kt; returns the
 * chunks shard s holds of them. */
static inline uint64_t px_cluster_kid_tensors(pmx_tensor* const* tensors, size_t n, uint32_t s,
                                              pmx_tensor** kt) {
  uint64_t held = 0;
  for (size_t i = 0; i < n; i++) {
    kt[i] = tensors[i]->kids[s];
    held += px_tensor_held(kt[i]);
  }
  return held;
}

/* Fails st with the thread's last error behind prefix and shard s's name:
 * "PREFIXshard 1 (host:port): ERROR". */
static inline pmx_status px_cluster_shard_fail(pmx_client* c, uint32_t s, pmx_status st,
                                               const char* prefix) {
  char e[PX_ERROR_LEN];
  memcpy(e, px_last_error_buf(), sizeof e);
  return px_fail(st, "%sshard %u (%s): %s", prefix, s, c->shard[s]->addr, e);
}

#endif
