/* Shards recovered as one (recover.h). */
#include "recover.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster.h"
#include "errors.h"
#include "paramex.pb-c.h"
#include "util/clock.h"
#include "util/log.h"

#define CALL_MS 10000

/* What Stats says of one shard. */
typedef struct shard_view {
  uint64_t version, version_max, gen, gen_version;
  bool fresh, holds; /* holds: a chunk of some tensor is on it (its versions mean something) */
} shard_view;

/* The next step of the recovery. */
typedef enum { ONE, PROPOSE, AGAIN, FAILED } verdict;

static void nap_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L}; /* a back-off, bounded */
  nanosleep(&ts, NULL);
}

/* Retried (look again) rather than final: a shard that restarts (its calls in flight end
 * CANCELLED or UNAVAILABLE), a generation that moved on (ABORTED). */
static bool passing(pmx_status st) {
  return st == PMX_ERR_UNAVAILABLE || st == PMX_ERR_ABORTED || st == PMX_ERR_DEADLINE_EXCEEDED ||
         st == PMX_ERR_CANCELLED;
}

/* Stats of every shard into v; marks a shard client whose server is not the one it
 * joined for joining again. */
static verdict look(pmx_client* c, shard_view* v, pmx_status* st) {
  for (uint32_t s = 0; s < c->nshards; s++) {
    pmx_client* k = c->shard[s];
    Paramex__V1__StatsRequest req = PARAMEX__V1__STATS_REQUEST__INIT;
    uint8_t* buf = NULL;
    size_t len = 0;
    *st = px_client_unary(k, PX_M_STATS, &req.base, CALL_MS, false, &buf, &len);
    if (*st != PMX_OK) return passing(*st) ? AGAIN : (*st = px_cluster_shard_fail(c, s, *st, "pmx_resume: "), FAILED);
    Paramex__V1__StatsResponse* r = paramex__v1__stats_response__unpack(NULL, len, buf);
    free(buf);
    if (!r) {
      *st = px_fail(PMX_ERR_INTERNAL, "pmx_resume: shard %u (%s): malformed StatsResponse", s,
                    k->addr);
      return FAILED;
    }
    v[s] = (shard_view){r->version_min, r->version_max, r->generation, r->generation_version,
                        r->fresh, false};
    for (size_t i = 0; i < r->n_tensors; i++)
      if (r->tensors[i]->own_chunks > 0) v[s].holds = true;
    pthread_mutex_lock(&k->mu);
    if (k->joined && strcmp(k->server_id, r->server_id ? r->server_id : "") != 0)
      k->rejoin_failed = true; /* px_client_join_again joins it */
    pthread_mutex_unlock(&k->mu);
    paramex__v1__stats_response__free_unpacked(r, NULL);
  }
  return ONE;
}

/* From the views: ONE when the shards are one (one generation, none fresh, every chunk at
 * one version), AGAIN while one generation's shards are at different versions (the last
 * pushes of a step still landing), else PROPOSE with the generation and version to ask
 * for. A fresh shard cannot move forward. While the newest generation is not taken by
 * every shard it goes on, when each fresh shard is outside it and not below its version;
 * otherwise a new generation goes to the lowest version a fresh shard is at (lower still:
 * the unfinished generation's). */
static verdict decide(const pmx_client* c, const shard_view* v, uint64_t* gen, uint64_t* ver,
                      pmx_status* st) {
  uint64_t gmax = 0, fresh_min = UINT64_MAX, top_min = UINT64_MAX, top_max = 0;
  uint64_t lo = UINT64_MAX, hi = 0;
  bool same = true;
  for (uint32_t s = 0; s < c->nshards; s++) {
    if (v[s].gen > gmax) gmax = v[s].gen;
    if (v[s].gen != v[0].gen || v[s].gen_version != v[0].gen_version) same = false;
    if (v[s].fresh && v[s].version < fresh_min) fresh_min = v[s].version;
    if (v[s].holds && v[s].version < lo) lo = v[s].version;
    if (v[s].holds && v[s].version_max > hi) hi = v[s].version_max;
  }
  if (same && fresh_min == UINT64_MAX) {
    if (lo >= hi) return ONE;
    *st = px_fail(PMX_ERR_UNAVAILABLE, "the shards' chunks are at versions %" PRIu64 "..%" PRIu64
                  " in recovery generation %" PRIu64 " (the pushes of a step not all landed)",
                  lo, hi, gmax);
    return AGAIN;
  }
  bool fresh_inside = false;
  for (uint32_t s = 0; s < c->nshards; s++) {
    if (v[s].gen != gmax) continue;
    if (v[s].gen_version < top_min) top_min = v[s].gen_version;
    if (v[s].gen_version > top_max) top_max = v[s].gen_version;
    if (v[s].fresh) fresh_inside = true;
  }
  if (!same && top_min == top_max && !fresh_inside &&
      (fresh_min == UINT64_MAX || fresh_min >= top_min)) {
    *gen = gmax; /* generation gmax is not over: go on with it */
    *ver = top_min;
    return PROPOSE;
  }
  *gen = gmax + 1;
  *ver = fresh_min;
  if (!same && top_min < *ver) *ver = top_min;
  return PROPOSE;
}

/* Recover(gen, *ver) on shard s; shard 0's answer sets *ver. */
static verdict ask(pmx_client* c, uint32_t s, uint64_t gen, uint64_t* ver, pmx_status* st) {
  Paramex__V1__RecoverRequest req = PARAMEX__V1__RECOVER_REQUEST__INIT;
  req.generation = gen;
  req.version = *ver;
  uint8_t* buf = NULL;
  size_t len = 0;
  *st = px_client_unary(c->shard[s], PX_M_RECOVER, &req.base, CALL_MS, false, &buf, &len);
  if (*st != PMX_OK) return passing(*st) ? AGAIN : (*st = px_cluster_shard_fail(c, s, *st, "pmx_resume: "), FAILED);
  Paramex__V1__RecoverResponse* r = paramex__v1__recover_response__unpack(NULL, len, buf);
  free(buf);
  if (!r) {
    *st = px_fail(PMX_ERR_INTERNAL, "pmx_resume: shard %u (%s): malformed RecoverResponse", s,
                  c->shard[s]->addr);
    return FAILED;
  }
  verdict out = r->generation == gen && (s == 0 || r->version == *ver) ? ONE : AGAIN;
  if (out == ONE && s == 0) *ver = r->version;
  if (out == ONE && r->restarting)
    px_info("recovery generation %" PRIu64 ": shard %u (%s) restarts from its checkpoint at "
            "version %" PRIu64, gen, s, c->shard[s]->addr, *ver);
  paramex__v1__recover_response__free_unpacked(r, NULL);
  return out;
}

pmx_status px_recover_shards(pmx_client* c, uint64_t give_up_ms) {
  shard_view* v = calloc(c->nshards, sizeof *v);
  if (!v) return px_fail(PMX_ERR_NO_MEMORY, "pmx_resume: out of memory");
  pmx_status st = PMX_OK;
  long pause = 20;
  for (;;) { /* bounded by give_up_ms */
    verdict d = look(c, v, &st);
    uint64_t gen = 0, ver = 0;
    if (d == ONE) d = decide(c, v, &gen, &ver, &st);
    if (d == ONE || d == FAILED) break;
    if (d == PROPOSE) {
      px_info("recovery generation %" PRIu64 ": bringing %u shards to version %" PRIu64, gen,
              c->nshards, ver);
      for (uint32_t s = 0; d != AGAIN && d != FAILED && s < c->nshards; s++)
        d = ask(c, s, gen, &ver, &st);
      if (d == FAILED) break;
      if (d != AGAIN && px_now_ms() < give_up_ms) {
        pause = 20;
        continue; /* every shard answered: look again to see them as one */
      }
    }
    if (px_now_ms() >= give_up_ms) {
      char e[PX_ERROR_LEN];
      memcpy(e, px_last_error_buf(), sizeof e);
      st = st != PMX_OK
               ? px_fail(st, "pmx_resume: the shards did not come to one version in time: %s", e)
               : px_fail(PMX_ERR_UNAVAILABLE, "pmx_resume: the shards did not come to one "
                         "version in time (they kept changing: shards restarting again?)");
      break;
    }
    nap_ms(pause); /* a shard restarts, or pushes in flight land */
    pause = pause * 2 > 500 ? 500 : pause * 2;
  }
  free(v);
  return st;
}
