/* A model over several shards (cluster.h, and pmx_connect / pmx_join / pmx_declare /
 * pmx_client_destroy / pmx_client_abort / pmx_client_get_stats of paramex.h). */
#include "cluster.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "launch/place.h"
#include "shard/shardmap.h"
#include "tensor.h"
#include "util/log.h"

/* Rewrites the thread's error as "shard i of n (addr): error", dropping a leading
 * "what: " that the outer call repeats. */
static pmx_status shard_fail(pmx_status st, const char* what, const pmx_client* sub) {
  char inner[PX_ERROR_LEN];
  const char* e = pmx_last_error();
  size_t wl = strlen(what);
  if (strncmp(e, what, wl) == 0 && e[wl] == ':' && e[wl + 1] == ' ') e += wl + 2;
  snprintf(inner, sizeof inner, "%s", e);
  return px_fail(st, "%s: shard %u of %u (%s): %s", what, sub->shard_index, sub->shard_count,
                 sub->addr, inner);
}

pmx_status pmx_connect(const char* addr, const pmx_options* opts, pmx_client** out) {
  if (!out) return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_connect: no client pointer");
  char err[300];
  char* env_list = NULL; /* PMX_SERVERS or TF_CONFIG's cluster.ps */
  const char* from = NULL;
  if (!addr && px_place_servers(px_place_getenv, NULL, &env_list, &from, err, sizeof err) != 0)
    return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_connect: %s", err);
  const char* list = addr ? addr : env_list;
  if (!list || !*list) {
    free(env_list);
    return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_connect: no address (give HOST:PORT, a "
                   "comma-separated list of shards, or set PMX_SERVERS or TF_CONFIG)");
  }
  uint32_t n = px_shard_list_count(list, PX_MAX_SHARDS, err, sizeof err);
  if (n == 0 || n == 1) {
    pmx_status st = n == 0 ? px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_connect: %s%s%s%s", err,
                                     from ? " (" : "", from ? from : "", from ? ")" : "")
                           : px_client_connect(list, opts, out);
    free(env_list);
    return st;
  }
  pmx_client* c = calloc(1, sizeof *c);
  if (!c || !(c->shard = calloc(n, sizeof *c->shard)) || !(c->addr = strdup(list))) {
    if (c) free(c->shard);
    free(c);
    free(env_list);
    return px_fail(PMX_ERR_NO_MEMORY, "pmx_connect: out of memory");
  }
  free(env_list);
  list = c->addr;
  pthread_mutex_init(&c->mu, NULL);
  c->nshards = n;
  for (uint32_t i = 0; i < n; i++) {
    char a[256];
    px_shard_list_get(list, i, a, sizeof a);
    pmx_status st = px_client_connect_beside(a, opts, i ? c->shard[0] : NULL, &c->shard[i]);
    if (st != PMX_OK) {
      st = px_fail(st, "pmx_connect: shard %u of %u (%s): %s", i, n, a,
                   pmx_last_error() + (strncmp(pmx_last_error(), "pmx_connect: ", 13) ? 0 : 13));
      c->nshards = i;
      char saved[PX_ERROR_LEN];
      memcpy(saved, px_last_error_buf(), sizeof saved);
      pmx_client_abort(c);
      memcpy(px_last_error_buf(), saved, sizeof saved);
      return st;
    }
    c->shard[i]->shard_index = i;
    c->shard[i]->shard_count = n;
  }
  c->timeout_ms = c->shard[0]->timeout_ms;
  c->connect_timeout_ms = c->shard[0]->connect_timeout_ms;
  c->retry_timeout_ms = c->shard[0]->retry_timeout_ms;
  c->compressed_pulls = c->shard[0]->compressed_pulls;
  *out = c;
  return PMX_OK;
}

static void cluster_free(pmx_client* c, bool say_leave) {
  if (!c) return;
  if (!c->nshards && !c->shard) {
    px_client_free(c, say_leave);
    return;
  }
  /* operations nobody waited for stop their shards' calls and wait for them, while the
   * shards' clients are still there */
  px_client_release_owned(c);
  for (uint32_t i = 0; i < c->nshards; i++) px_client_free(c->shard[i], say_leave);
  for (size_t i = 0; i < c->ntensors; i++) c->tensor_free(c->tensors[i]);
  free(c->tensors);
  free(c->shard);
  free(c->addr);
  pthread_mutex_destroy(&c->mu);
  free(c);
}

void pmx_client_destroy(pmx_client* c) { cluster_free(c, true); }

void pmx_client_abort(pmx_client* c) { cluster_free(c, false); }

/* The first "name=value" word of a that b gives differently (or lacks), into out. */
static void first_difference(const char* a, const char* b, char* wa, char* wb, size_t cap) {
  snprintf(wa, cap, "?");
  snprintf(wb, cap, "(nothing)");
  for (const char* p = a; *p;) {
    size_t l = strcspn(p, " ");
    const char* eq = memchr(p, '=', l);
    size_t kl = eq ? (size_t)(eq - p) + 1 : l;
    const char* q = b;
    bool found = false;
    while (*q && !found) {
      size_t m = strcspn(q, " ");
      if (m >= kl && strncmp(q, p, kl) == 0) {
        found = true;
        if (m != l || strncmp(q, p, l) != 0) {
          snprintf(wa, cap, "%.*s", (int)l, p);
          snprintf(wb, cap, "%.*s", (int)m, q);
          return;
        }
      }
      q += m;
      while (*q == ' ') q++;
    }
    if (!found) {
      snprintf(wa, cap, "%.*s", (int)l, p);
      return;
    }
    p += l;
    while (*p == ' ') p++;
  }
}

pmx_status pmx_env_rank(uint32_t* rank, uint32_t* world) {
  if (!rank || !world) return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_env_rank: missing argument");
  px_place p;
  char err[256];
  if (px_place_worker(px_place_getenv, NULL, &p, err, sizeof err) != 0)
    return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_env_rank: %s", err);
  *rank = p.rank >= 0 ? (uint32_t)p.rank : PMX_FROM_ENV;
  *world = p.world >= 0 ? (uint32_t)p.world : PMX_FROM_ENV;
  return PMX_OK;
}

/* rank and world PMX_FROM_ENV from the launcher's variables (launch/place.h). */
static pmx_status from_env(uint32_t* rank, uint32_t* world) {
  if (*rank != PMX_FROM_ENV && *world != PMX_FROM_ENV) return PMX_OK;
  px_place p;
  char err[256], vars[384];
  if (px_place_worker(px_place_getenv, NULL, &p, err, sizeof err) != 0)
    return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_join: %s", err);
  const bool no_rank = *rank == PMX_FROM_ENV && p.rank < 0;
  if (no_rank || (*world == PMX_FROM_ENV && p.world < 0)) {
    px_place_sources(false, !no_rank, vars, sizeof vars);
    return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_join: %s PMX_FROM_ENV, but no variable "
                   "gives it (%s)", no_rank ? "rank" : "world size", vars);
  }
  if (*rank == PMX_FROM_ENV) *rank = (uint32_t)p.rank;
  if (*world == PMX_FROM_ENV) *world = (uint32_t)p.world;
  px_info("joining as rank %u (%s) of %u (%s)", *rank, p.rank_from[0] ? p.rank_from : "given",
          *world, p.world_from[0] ? p.world_from : "given");
  return PMX_OK;
}

pmx_status pmx_join(pmx_client* c, uint32_t rank, uint32_t world_size, pmx_join_info* info) {
  if (!c) return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_join: no client");
  pmx_status est = from_env(&rank, &world_size);
  if (est != PMX_OK) return est;
  if (!c->nshards) return px_client_join(c, rank, world_size, info);
  for (uint32_t i = 0; i < c->nshards; i++) {
    pmx_status st = px_client_join(c->shard[i], rank, world_size, i == 0 ? info : NULL);
    if (st != PMX_OK) return shard_fail(st, "Join", c->shard[i]);
  }
  /* one model: the shards must aggregate and apply the same way */
  for (uint32_t i = 1; i < c->nshards; i++) {
    const pmx_client *a = c->shard[0], *b = c->shard[i];
    if (strcmp(a->settings, b->settings) == 0) continue;
    char wa[128], wb[128];
    first_difference(a->settings, b->settings, wa, wb, sizeof wa);
    return px_fail(PMX_ERR_FAILED_PRECONDITION, "Join: the shards disagree: shard 0 (%s) runs "
                   "with %s but shard %u (%s) with %s: start every shard with the same flags",
                   a->addr, wa, i, b->addr, wb);
  }
  pthread_mutex_lock(&c->mu);
  c->joined = true;
  c->rank = rank;
  c->world = world_size;
  pthread_mutex_unlock(&c->mu);
  return PMX_OK;
}

pmx_status pmx_declare(pmx_client* c, const char* name, pmx_dtype dtype, const uint64_t* shape,
                       size_t ndim, const void* values, const pmx_init* init, pmx_tensor** out) {
  if (!c || !out) return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_declare: missing argument");
  pmx_tensor* t;
  pmx_status st = px_tensor_new(c, name, dtype, shape, ndim, values, true, init, &t);
  if (st != PMX_OK) return st;
  if (!c->nshards) {
    st = px_tensor_declare_new(c, t);
    if (st == PMX_OK) *out = t;
    return st;
  }
  /* the tensor on every shard; each borrows t's copy of the values */
  if (!(t->kids = calloc(c->nshards, sizeof *t->kids))) {
    px_tensor_free(t);
    return px_fail(PMX_ERR_NO_MEMORY, "pmx_declare: out of memory");
  }
  for (uint32_t i = 0; i < c->nshards && st == PMX_OK; i++) {
    pmx_client* sub = c->shard[i];
    st = px_tensor_new(sub, name, dtype, shape, ndim, t->values, false, init, &t->kids[i]);
    if (st == PMX_OK) st = px_tensor_declare_new(sub, t->kids[i]);
    if (st != PMX_OK) {
      t->kids[i] = NULL;
      st = shard_fail(st, "pmx_declare", sub);
    } else if (t->kids[i]->chunk_elems != t->kids[0]->chunk_elems) {
      st = px_fail(PMX_ERR_FAILED_PRECONDITION, "pmx_declare: '%s': shard %u (%s) chunks it "
                   "in %u elements, shard 0 in %u: start every shard with the same --chunk-bytes",
                   name, i, sub->addr, t->kids[i]->chunk_elems, t->kids[0]->chunk_elems);
    }
  }
  if (st == PMX_OK) {
    t->id = t->kids[0]->id;
    t->chunk_elems = t->kids[0]->chunk_elems;
    t->nchunks = t->kids[0]->nchunks;
    st = px_client_adopt(c, t, px_tensor_free);
  }
  if (st != PMX_OK) {
    px_tensor_free(t); /* its shards' tensors stay with their clients */
    return st;
  }
  *out = t;
  return PMX_OK;
}

void pmx_client_get_stats(pmx_client* c, pmx_client_stats* s) {
  memset(s, 0, sizeof *s);
  for (uint32_t i = 0; i < px_cluster_nconn(c); i++) {
    pmx_client* k = px_cluster_conn(c, i);
    s->push_chunks += atomic_load(&k->push_chunks);
    s->push_raw_bytes += atomic_load(&k->push_raw);
    s->push_wire_bytes += atomic_load(&k->push_wire);
    s->pull_chunks += atomic_load(&k->pull_chunks);
    s->pull_raw_bytes += atomic_load(&k->pull_raw);
    s->pull_wire_bytes += atomic_load(&k->pull_wire);
    s->pull_unchanged_chunks += atomic_load(&k->pull_unchanged);
    s->checksum_failures += atomic_load(&k->checksum_failures);
  }
  s->compressed_pulls = c->compressed_pulls;
}
