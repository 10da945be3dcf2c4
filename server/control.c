/* Control calls (control.h). */
#include "control.h"

#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "accept_guard.h"
#include "calls.h"
#include "monitor.h"
#include "health.pb-c.h"
#include "paramex.pb-c.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/str.h"

#define ERRLEN 512

/* ---- Join -------------------------------------------------------------------------------- */

/* Whether the client's shard list places this server where --shard/--shards do; -1 with
 * err when not. */
static int shard_check(const px_server* srv, const Paramex__V1__JoinRequest* r, char* err,
                       size_t errlen) {
  const uint32_t me = srv->cfg.shard, n = srv->cfg.shards;
  if (r->shards == 0 && n > 1) {
    snprintf(err, errlen, "this server is shard %u of %u (--shards %u): give the client all %u "
             "shard addresses, in shard order (a comma-separated list, or PMX_SERVERS)", me, n,
             n, n);
    return -1;
  }
  if (r->shards != 0 && (r->shards != n || r->shard != me)) {
    snprintf(err, errlen, "the shard list gives this server as shard %u of %u, but it serves "
             "shard %u of %u (--shard %u --shards %u)%s", r->shard, r->shards, me, n, me, n,
             r->shards != n ? ": the list's length differs" : ": the list's order differs");
    return -1;
  }
  return 0;
}

/* The settings all shards must share (JoinResponse.settings). */
static void settings(const px_server* srv, char* out, size_t cap) {
  const px_config* c = &srv->cfg;
  snprintf(out, cap, "workers=%u lr=%.15g momentum=%.15g weight-decay=%.15g chunk-bytes=%llu "
           "checkpoint-every=%llu elastic=%d reject-nonfinite=%d", c->workers, c->lr,
           c->momentum, c->weight_decay, (unsigned long long)c->chunk_bytes,
           (unsigned long long)c->checkpoint_every, c->elastic ? 1 : 0,
           c->reject_nonfinite ? 1 : 0);
}

void px_control_join(px_server* srv, px_srv_call* call, const uint8_t* p, size_t n) {
  char err[ERRLEN];
  Paramex__V1__JoinRequest* r = paramex__v1__join_request__unpack(NULL, n, p);
  if (!r) {
    px_reject(&srv->ctr, call, PX_ST_INVALID_ARGUMENT, "malformed JoinRequest");
    return;
  }
  if (shard_check(srv, r, err, sizeof err) != 0) {
    px_reject(&srv->ctr, call, PX_ST_FAILED_PRECONDITION, err);
  } else if (r->world_size != srv->cfg.workers) {
    snprintf(err, sizeof err, "world_size %u does not match the server's --workers %u",
             r->world_size, srv->cfg.workers);
    px_reject(&srv->ctr, call, PX_ST_FAILED_PRECONDITION, err);
  } else if (r->rank >= r->world_size) {
    snprintf(err, sizeof err, "rank %u is not below world_size %u", r->rank, r->world_size);
    px_reject(&srv->ctr, call, PX_ST_INVALID_ARGUMENT, err);
  } else if (r->name && !px_utf8_valid(r->name, strlen(r->name))) {
    px_reject(&srv->ctr, call, PX_ST_INVALID_ARGUMENT,
              "worker name is not valid UTF-8 (protobuf strings must be)");
  } else {
    bool replaced = false;
    const char* name = r->name ? r->name : "";
    uint64_t inc = px_members_claim(&srv->members, r->rank, name, &replaced, err, sizeof err);
    if (!inc) { /* fenced: retrying is right, the holder may be a crashed worker */
      px_warn("refused a Join: %s", err);
      px_reject(&srv->ctr, call, PX_ST_UNAVAILABLE, err);
      paramex__v1__join_request__free_unpacked(r, NULL);
      return;
    }
    char peer[96];
    px_info("worker %u joined from %s (incarnation %" PRIu64 "%s, %s)", r->rank,
            px_srv_call_peer(call, peer, sizeof peer), inc,
            replaced ? ", replacing an earlier one" : "", name[0] ? name : "unnamed");
    Paramex__V1__JoinResponse resp = PARAMEX__V1__JOIN_RESPONSE__INIT;
    resp.worker_id = r->rank;
    resp.incarnation = inc;
    resp.world_size = srv->cfg.workers;
    resp.server_id = srv->server_id;
    resp.lease_ms = (uint32_t)(srv->cfg.worker_timeout * 1000.0);
    resp.shard = srv->cfg.shard;
    resp.shards = srv->cfg.shards;
    char set[384];
    settings(srv, set, sizeof set);
    resp.settings = set;
    px_reply(call, &resp.base);
  }
  paramex__v1__join_request__free_unpacked(r, NULL);
}

/* ---- Declare ----------------------------------------------------------------------------- */

void px_control_declare(px_server* srv, px_srv_call* call, const uint8_t* p, size_t n) {
  char err[ERRLEN];
  Paramex__V1__DeclareRequest* r = paramex__v1__declare_request__unpack(NULL, n, p);
  if (!r) {
    px_reject(&srv->ctr, call, PX_ST_INVALID_ARGUMENT, "malformed DeclareRequest");
    return;
  }
  px_declare_args a = {0};
  a.name = r->name ? r->name : "";
  a.dtype = r->dtype;
  a.shape = r->shape;
  a.ndim = r->n_shape;
  if (r->initializer) {
    a.init_kind = r->initializer->kind;
    a.init_a = r->initializer->a;
    a.init_b = r->initializer->b;
    a.init_seed = r->initializer->seed;
  }
  if (r->values.len) {
    a.values = r->values.data;
    a.values_len = r->values.len;
  }
  a.values_offset = r->values_offset;
  a.worker_id = r->worker_id;
  a.incarnation = r->incarnation;
  px_tensor_state* t = NULL;
  bool created = false;
  px_waiter* woken = NULL;
  /* A tensor is created by a joined worker (its values, its retries); a client that never
   * joined (incarnation 0) may only look an existing tensor up. */
  bool uploads = false;
  a.lookup_only = r->incarnation == 0;
  int st = px_members_check_caller(&srv->members, r->worker_id, r->incarnation, err, sizeof err);
  if (st == PX_ST_OK)
    st = px_store_declare(&srv->store, &a, &t, &created, &uploads, &woken, err, sizeof err);
  if (st != PX_ST_OK) {
    px_reject(&srv->ctr, call, st, err);
  } else {
    Paramex__V1__DeclareResponse resp = PARAMEX__V1__DECLARE_RESPONSE__INIT;
    resp.tensor_id = t->id;
    resp.version = px_tensor_version_min(t, NULL, NULL);
    resp.chunk_elems = t->chunk_elems;
    resp.num_chunks = t->nchunks;
    resp.created = created;
    resp.upload = uploads;
    px_reply(call, &resp.base);
  }
  paramex__v1__declare_request__free_unpacked(r, NULL);
  px_waiters_run(woken); /* pulls that waited for the initial values */
}

/* ---- Stats ------------------------------------------------------------------------------- */

/* The tensor rows; returns the lowest and highest versions over all of them. */
static void stats_tensors(px_server* srv, Paramex__V1__TensorStats* ts, uint32_t nt,
                          uint64_t* vmin_all, uint64_t* vmax_all) {
  *vmin_all = UINT64_MAX;
  *vmax_all = 0;
  for (uint32_t i = 0; i < nt; i++) {
    px_tensor_state* t = srv->store.tensors[i];
    paramex__v1__tensor_stats__init(&ts[i]);
    ts[i].id = t->id;
    ts[i].name = t->name;
    ts[i].dtype = t->dtype;
    ts[i].n_shape = t->ndim;
    ts[i].shape = t->shape;
    ts[i].version_min = px_tensor_version_min(t, &ts[i].version_max, &ts[i].checksum);
    ts[i].bytes = t->params_bytes;
    ts[i].push_raw_bytes = atomic_load(&t->push_raw);
    ts[i].push_wire_bytes = atomic_load(&t->push_wire);
    ts[i].pull_raw_bytes = atomic_load(&t->pull_raw);
    ts[i].pull_wire_bytes = atomic_load(&t->pull_wire);
    ts[i].num_chunks = t->nchunks;
    ts[i].own_chunks = t->nown;
    ts[i].chunk_elems = t->chunk_elems;
    if (t->nown == 0) continue; /* none of it on this shard */
    if (ts[i].version_min < *vmin_all) *vmin_all = ts[i].version_min;
    if (ts[i].version_max > *vmax_all) *vmax_all = ts[i].version_max;
  }
}

/* The rows of the workers that joined; returns their count, alive ones in *alive. */
static size_t stats_workers(px_server* srv, Paramex__V1__WorkerStats* ws, char (*names)[64],
                            uint32_t* alive) {
  const uint64_t now = px_now_ms();
  size_t nw = 0;
  *alive = 0;
  for (uint32_t i = 0; i < srv->cfg.workers; i++) {
    px_worker_state* w = &srv->members.w[i];
    uint64_t inc = atomic_load(&w->incarnation);
    if (!inc) continue;
    paramex__v1__worker_stats__init(&ws[nw]);
    ws[nw].rank = i;
    ws[nw].incarnation = inc;
    px_members_name(&srv->members, i, names[nw], sizeof names[nw]);
    ws[nw].name = names[nw];
    ws[nw].chunks_pushed = atomic_load(&w->chunks_pushed);
    ws[nw].steps = atomic_load(&w->steps_begun);
    uint64_t seen = atomic_load(&w->last_seen_ms);
    ws[nw].last_seen_ms = now > seen ? now - seen : 0;
    ws[nw].finished = atomic_load(&w->left) != 0;
    ws[nw].alive = !atomic_load(&w->dead) && !ws[nw].finished;
    *alive += ws[nw].alive;
    nw++;
  }
  return nw;
}

/* Stats.fresh: started by its process, in no recovery generation since, no step done. */
static bool fresh(px_server* srv) {
  return px_gen_untouched(&srv->gen) && atomic_load(&srv->ctr.steps_completed) == 0;
}

static void stats_counters(px_server* srv, Paramex__V1__StatsResponse* s) {
  const px_counters* c = &srv->ctr;
  s->server_id = srv->server_id;
  s->uptime_ms = px_now_ms() - srv->start_ms;
  s->workers_expected = srv->cfg.workers;
  s->push_chunks = atomic_load(&c->push_chunks);
  s->push_duplicates = atomic_load(&c->push_duplicates);
  s->nonfinite_chunks = atomic_load(&c->nonfinite_chunks);
  s->refused_connections = px_accept_guard_refused();
  s->push_raw_bytes = atomic_load(&c->push_raw_bytes);
  s->push_wire_bytes = atomic_load(&c->push_wire_bytes);
  s->pull_chunks = atomic_load(&c->pull_chunks);
  s->pull_raw_bytes = atomic_load(&c->pull_raw_bytes);
  s->pull_wire_bytes = atomic_load(&c->pull_wire_bytes);
  s->steps_completed = atomic_load(&c->steps_completed);
  s->rejected_calls = atomic_load(&c->rejected_calls);
  s->exchange_steps = atomic_load(&c->exchange_steps);
  s->history_bytes = (uint64_t)atomic_load(&c->history_bytes);
  s->history_budget = srv->cfg.history_bytes;
  int64_t fb = atomic_load(&c->frame_bytes) - atomic_load(&c->history_bytes);
  s->frame_cache_bytes = fb > 0 ? (uint64_t)fb : 0;
  s->encodes = atomic_load(&c->encodes);
  s->frame_cache_hits = atomic_load(&c->cache_hits);
  s->pull_unchanged = atomic_load(&c->pull_unchanged);
  s->pull_delta = atomic_load(&c->pull_delta);
  s->pull_snapshot = atomic_load(&c->pull_snapshot);
  s->elastic = srv->cfg.elastic;
  s->shard = srv->cfg.shard;
  s->shards = srv->cfg.shards;
  px_gen_get(&srv->gen, &s->generation, &s->generation_version, NULL);
  s->fresh = fresh(srv);
}

void px_control_stats(px_server* srv, px_srv_call* call, const uint8_t* b, size_t n) {
  Paramex__V1__StatsRequest* r = paramex__v1__stats_request__unpack(NULL, n, b);
  if (!r) {
    px_reject(&srv->ctr, call, PX_ST_INVALID_ARGUMENT, "malformed StatsRequest");
    return;
  }
  paramex__v1__stats_request__free_unpacked(r, NULL);
  uint64_t gen = 0, gver = 0;
  bool restarting = false;
  px_gen_get(&srv->gen, &gen, &gver, &restarting);
  if (restarting) { /* what it would say is about to change */
    char msg[160];
    snprintf(msg, sizeof msg, "restarting from its checkpoint at version %" PRIu64
             " (recovery generation %" PRIu64 ")", gver, gen);
    px_reject(&srv->ctr, call, PX_ST_UNAVAILABLE, msg);
    return;
  }
  Paramex__V1__StatsResponse s = PARAMEX__V1__STATS_RESPONSE__INIT;
  stats_counters(srv, &s);
  px_ckpt_info ck;
  px_ckpt_get_info(&srv->ckpt, &ck);
  s.checkpoints_written = ck.written;
  s.checkpoint_failures = ck.failures;
  s.checkpoint_version = ck.last_version;
  s.restored_version = ck.restored_version;
  s.checkpoint_path = ck.last_path;
  const uint32_t nt = px_store_count(&srv->store), nw = srv->cfg.workers;
  Paramex__V1__TensorStats* ts = calloc(nt ? nt : 1, sizeof *ts);
  Paramex__V1__TensorStats** tp = calloc(nt ? nt : 1, sizeof *tp);
  Paramex__V1__WorkerStats* ws = calloc(nw, sizeof *ws);
  Paramex__V1__WorkerStats** wp = calloc(nw, sizeof *wp);
  char(*names)[64] = calloc(nw, sizeof *names);
  if (!ts || !tp || !ws || !wp || !names) {
    px_reject(&srv->ctr, call, PX_ST_RESOURCE_EXHAUSTED, "out of memory");
  } else {
    uint64_t vmin = 0, vmax = 0;
    stats_tensors(srv, ts, nt, &vmin, &vmax);
    for (uint32_t i = 0; i < nt; i++) tp[i] = &ts[i];
    s.n_tensors = nt;
    s.tensors = tp;
    s.version_min = vmin != UINT64_MAX ? vmin : 0;
    s.version_max = vmax;
    s.n_workers = stats_workers(srv, ws, names, &s.workers_alive);
    for (size_t i = 0; i < s.n_workers; i++) wp[i] = &ws[i];
    s.workers_joined = (uint32_t)s.n_workers;
    s.active_calls = (uint64_t)atomic_load(&srv->active_calls);
    s.workers = wp;
    px_reply(call, &s.base);
  }
  free(ts);
  free(tp);
  free(ws);
  free(wp);
  free(names);
}

/* ---- Checkpoint -------------------------------------------------------------------------- */

void px_control_checkpoint(px_server* srv, px_srv_call* call, const uint8_t* b, size_t n) {
  Paramex__V1__CheckpointRequest* r = paramex__v1__checkpoint_request__unpack(NULL, n, b);
  if (!r) {
    px_reject(&srv->ctr, call, PX_ST_INVALID_ARGUMENT, "malformed CheckpointRequest");
    return;
  }
  paramex__v1__checkpoint_request__free_unpacked(r, NULL);
  if (!srv->cfg.checkpoint_dir) {
    px_reject(&srv->ctr, call, PX_ST_FAILED_PRECONDITION, "the server runs without --checkpoint-dir");
    return;
  }
  if (px_store_count(&srv->store) == 0) {
    px_reject(&srv->ctr, call, PX_ST_FAILED_PRECONDITION,
              "no tensor declared yet: nothing to checkpoint");
    return;
  }
  if (px_ckpt_now(&srv->ckpt, call, "requested") != 0)
    px_reject(&srv->ctr, call, PX_ST_RESOURCE_EXHAUSTED, "cannot start a checkpoint (out of memory)");
  /* the call is finished by the checkpoint thread once the file is written */
}

/* ---- Heartbeat --------------------------------------------------------------------------- */

void px_control_heartbeat(px_server* srv, px_srv_call* call, const uint8_t* b, size_t n) {
  Paramex__V1__HeartbeatRequest* r = paramex__v1__heartbeat_request__unpack(NULL, n, b);
  if (!r) {
    px_reject(&srv->ctr, call, PX_ST_INVALID_ARGUMENT, "malformed HeartbeatRequest");
    return;
  }
  char err[ERRLEN];
  int st = px_members_check(&srv->members, r->worker_id, r->incarnation, err, sizeof err);
  if (st != PX_ST_OK) {
    px_reject(&srv->ctr, call, st, err);
  } else {
    px_members_seen(&srv->members, r->worker_id);
    Paramex__V1__HeartbeatResponse resp = PARAMEX__V1__HEARTBEAT_RESPONSE__INIT;
    px_reply(call, &resp.base);
  }
  paramex__v1__heartbeat_request__free_unpacked(r, NULL);
}

/* ---- Leave ------------------------------------------------------------------------------- */

void px_control_leave(px_server* srv, px_srv_call* call, const uint8_t* b, size_t n) {
  Paramex__V1__LeaveRequest* r = paramex__v1__leave_request__unpack(NULL, n, b);
  if (!r) {
    px_reject(&srv->ctr, call, PX_ST_INVALID_ARGUMENT, "malformed LeaveRequest");
    return;
  }
  char err[ERRLEN];
  int st = px_members_check(&srv->members, r->worker_id, r->incarnation, err, sizeof err);
  const uint32_t rank = r->worker_id;
  /* the same incarnation leaving again (its answer was lost, a retry): OK again */
  if (st == PX_ST_FAILED_PRECONDITION && px_members_left(&srv->members, rank) &&
      atomic_load(&srv->members.w[rank].incarnation) == r->incarnation)
    st = PX_ST_OK;
  paramex__v1__leave_request__free_unpacked(r, NULL);
  if (st != PX_ST_OK) {
    px_reject(&srv->ctr, call, st, err);
    return;
  }
  bool first = px_members_leave(&srv->members, rank);
  Paramex__V1__LeaveResponse resp = PARAMEX__V1__LEAVE_RESPONSE__INIT;
  px_reply(call, &resp.base);
  if (!first) return;
  char name[64];
  px_members_name(&srv->members, rank, name, sizeof name);
  px_info("worker %u (%s) left: finished%s", rank, name,
          srv->cfg.elastic ? "; the steps go on without it (--elastic)" : "");
  px_monitor_member_left(srv);
}

/* ---- Health ------------------------------------------------------------------------------ */

void px_control_health(px_server* srv, px_srv_call* call, const uint8_t* b, size_t n) {
  Grpc__Health__V1__HealthCheckRequest* r = grpc__health__v1__health_check_request__unpack(NULL, n, b);
  if (!r) {
    px_reject(&srv->ctr, call, PX_ST_INVALID_ARGUMENT, "malformed HealthCheckRequest");
    return;
  }
  const char* name = r->service ? r->service : "";
  if (name[0] && strcmp(name, "paramex.v1.ParameterExchange") != 0) {
    char err[ERRLEN];
    snprintf(err, sizeof err, "unknown service '%.200s'", name);
    px_reject(&srv->ctr, call, PX_ST_NOT_FOUND, err);
  } else {
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    resp.status = px_waiters_draining(&srv->waiters)
                      ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
                      : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    px_reply(call, &resp.base);
  }
  grpc__health__v1__health_check_request__free_unpacked(r, NULL);
}

/* ---- Recover ----------------------------------------------------------------------------- */

static void recover_reply(px_server* srv, px_srv_call* call, bool restarting) {
  Paramex__V1__RecoverResponse out = PARAMEX__V1__RECOVER_RESPONSE__INIT;
  px_gen_get(&srv->gen, &out.generation, &out.version, NULL);
  out.restarting = restarting;
  px_reply(call, &out.base);
}

void px_control_recover(px_server* srv, px_srv_call* call, const uint8_t* b, size_t n) {
  Paramex__V1__RecoverRequest* r = paramex__v1__recover_request__unpack(NULL, n, b);
  if (!r) {
    px_reject(&srv->ctr, call, PX_ST_INVALID_ARGUMENT, "malformed RecoverRequest");
    return;
  }
  const uint64_t gen = r->generation, version = r->version;
  paramex__v1__recover_request__free_unpacked(r, NULL);
  if (gen == 0) {
    px_reject(&srv->ctr, call, PX_ST_INVALID_ARGUMENT, "RecoverRequest: generation 0 is none");
    return;
  }
  uint64_t vmax = 0, vmin = px_store_version_min(&srv->store, &vmax);
  char why[ERRLEN], err[ERRLEN + 128];
  why[0] = 0;
  px_gen_action a = px_gen_decide(&srv->gen, gen, version, vmin, vmax, fresh(srv), why, sizeof why);
  snprintf(err, sizeof err, "shard %u of %u: %s", srv->cfg.shard, srv->cfg.shards, why);
  switch (a) {
    case PX_GEN_CURRENT:
      recover_reply(srv, call, false);
      break;
    case PX_GEN_IN_PLACE:
      px_info("recovery generation %" PRIu64 ": at version %" PRIu64 " already", gen, version);
      recover_reply(srv, call, false);
      break;
    case PX_GEN_RESTART:
      /* From here every new call is UNAVAILABLE (a worker must not join this process);
       * main.c stops the service and starts it again from the checkpoint at version. */
      px_warn("recovery generation %" PRIu64 ": going back from versions %" PRIu64 "..%" PRIu64
              " to %" PRIu64 " (restarting from that checkpoint)", gen, vmin, vmax, version);
      px_waiters_drain(&srv->waiters);
      recover_reply(srv, call, true);
      kill(getpid(), SIGUSR1);
      break;
    case PX_GEN_STALE:
      px_reject(&srv->ctr, call, PX_ST_ABORTED, err);
      break;
    case PX_GEN_SAVE:
      /* captures the chunks now (all at the version); asked again once it is written */
      if (px_ckpt_now(&srv->ckpt, NULL, "recovery") != 0)
        snprintf(err, sizeof err, "shard %u of %u cannot go back to version %" PRIu64
                 ": out of memory for its checkpoint", srv->cfg.shard, srv->cfg.shards, version);
      px_reject(&srv->ctr, call, PX_ST_UNAVAILABLE, err);
      break;
    case PX_GEN_BEHIND:
      px_reject(&srv->ctr, call, PX_ST_UNAVAILABLE, err);
      break;
    case PX_GEN_CANNOT:
      px_warn("recovery generation %" PRIu64 " refused: %s", gen, why);
      snprintf(err, sizeof err, "shard %u of %u cannot go back to version %" PRIu64 ": %s",
               srv->cfg.shard, srv->cfg.shards, version, why);
      px_reject(&srv->ctr, call, PX_ST_FAILED_PRECONDITION, err);
      break;
  }
}
