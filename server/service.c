/* Lifecycle and method table (service.h). Completion-queue threads dispatch: pushes and
 * pulls are handled there (their handlers hand large work to the pool), control calls run
 * on the compute pool. */
#include "service.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/select.h"
#include "calls.h"
#include "control.h"
#include "restore.h"
#include "exchange_handler.h"
#include "pull_handler.h"
#include "push_handler.h"
#include "tls/tls_probe.h"
#include "util/clock.h"
#include "util/file.h"
#include "util/log.h"

/* ---- dispatch ---------------------------------------------------------------------------- */

/* A control call handled on the pool. */
typedef struct unary_job {
  px_job job;
  px_server* srv;
  px_srv_call* call;
  px_msg* req;
  px_control_fn handle;
} unary_job;

static void unary_run(px_job* j) {
  unary_job* u = (unary_job*)j;
  size_t len = 0;
  const uint8_t* p = u->req ? px_msg_flat(u->req, &len) : (const uint8_t*)"";
  if (!p) px_reject(&u->srv->ctr, u->call, PX_ST_RESOURCE_EXHAUSTED, "out of memory reading request");
  else u->handle(u->srv, u->call, p, len);
  px_msg_free(u->req);
  px_srv_call_unref(u->call);
  free(u);
}

static void submit_unary(px_server* srv, px_srv_call* call, px_msg* req, bool gate,
                         px_control_fn handle) {
  if (gate && px_waiters_draining(&srv->waiters)) {
    px_msg_free(req);
    px_reject(&srv->ctr, call, PX_ST_UNAVAILABLE, "server is shutting down");
    return;
  }
  unary_job* u = calloc(1, sizeof *u);
  if (!u) {
    px_msg_free(req);
    px_reject(&srv->ctr, call, PX_ST_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  u->job.fn = unary_run;
  u->srv = srv;
  u->call = call;
  u->req = req;
  u->handle = handle;
  px_srv_call_ref(call);
  px_taskpool_submit(srv->pool, &u->job);
}

/* gate: refused while the server drains */
#define UNARY_ENTRY(fn_name, handler, gate) \
  static void fn_name(void* s, px_srv_call* call, px_msg* req) { submit_unary(s, call, req, gate, handler); }
UNARY_ENTRY(on_join, px_control_join, true)
UNARY_ENTRY(on_declare, px_control_declare, true)
UNARY_ENTRY(on_stats, px_control_stats, false)
UNARY_ENTRY(on_checkpoint, px_control_checkpoint, true)
UNARY_ENTRY(on_heartbeat, px_control_heartbeat, false)
UNARY_ENTRY(on_leave, px_control_leave, false)
UNARY_ENTRY(on_health, px_control_health, false)
UNARY_ENTRY(on_recover, px_control_recover, true)

static const px_rpc_method methods[] = {
    {"/paramex.v1.ParameterExchange/Join", PX_RPC_UNARY, on_join},
    {"/paramex.v1.ParameterExchange/Declare", PX_RPC_UNARY, on_declare},
    {"/paramex.v1.ParameterExchange/Push", PX_RPC_CLIENT_STREAMING, px_push_on_call},
    {"/paramex.v1.ParameterExchange/Pull", PX_RPC_SERVER_STREAMING, px_pull_on_call},
    {"/paramex.v1.ParameterExchange/Exchange", PX_RPC_BIDI_STREAMING, px_exchange_on_call},
    {"/paramex.v1.ParameterExchange/Stats", PX_RPC_UNARY, on_stats},
    {"/paramex.v1.ParameterExchange/Checkpoint", PX_RPC_UNARY, on_checkpoint},
    {"/paramex.v1.ParameterExchange/Heartbeat", PX_RPC_UNARY, on_heartbeat},
    {"/paramex.v1.ParameterExchange/Leave", PX_RPC_UNARY, on_leave},
    {"/paramex.v1.ParameterExchange/Recover", PX_RPC_UNARY, on_recover},
    {"/grpc.health.v1.Health/Check", PX_RPC_UNARY, on_health},
};

/* ---- lifecycle --------------------------------------------------------------------------- */

/* The rooms below the handlers, wired together. */
static int rooms_init(px_server* srv, char* err, size_t errlen) {
  const px_config* cfg = &srv->cfg;
  px_backend_opts bo = {cfg->device, cfg->gpu_ids, cfg->ngpus, cfg->chunk_bytes,
                        {(float)cfg->lr, (float)cfg->momentum, (float)cfg->weight_decay,
                         cfg->nesterov, (px_opt_kind)cfg->opt_kind, (float)cfg->eps,
                         (float)cfg->alpha},
                        cfg->threads};
  int brc = px_backend_create(&bo, &srv->backend, err, errlen);
  if (brc != 0) return brc;
  px_fcache_opts fo = {cfg->compression, cfg->history, cfg->history_bytes,
                       (int)cfg->compression_level, cfg->memory_limit};
  px_fcache_init(&srv->fcache, &fo, &srv->ctr);
  px_waiters_init(&srv->waiters);
  px_store_opts so = {cfg->workers, cfg->chunk_bytes, cfg->max_tensors, cfg->max_tensor_bytes,
                      cfg->memory_limit, cfg->momentum != 0, cfg->shard, cfg->shards};
  if (px_store_init(&srv->store, &so, srv->backend, &srv->fcache, &srv->waiters, &srv->ctr, err,
                    errlen) != 0)
    return -1;
  srv->pool = px_taskpool_create(cfg->threads);
  if (!srv->pool || px_members_init(&srv->members, cfg->workers, cfg->worker_timeout,
                                    cfg->rejoin_wait, cfg->elastic) != 0) {
    snprintf(err, errlen, "out of memory at start");
    return -1;
  }
  srv->publish = (px_publish){&srv->fcache, srv->backend, &srv->waiters, srv->pool};
  const char* dir = cfg->checkpoint_dir;
  if (dir && cfg->shards > 1) {
    /* every shard may be given the same (shared) folder: each writes its own sub-folder */
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
      snprintf(err, errlen, "--checkpoint-dir %s: %s", dir, strerror(errno));
      return -1;
    }
    snprintf(srv->ckpt_dir, sizeof srv->ckpt_dir, "%s/shard-%u", dir, cfg->shard);
    dir = srv->ckpt_dir;
  }
  static const char* const states[] = {"momentum", "adagrad", "rmsprop"};
  px_ckpt_opts co = {dir,       cfg->checkpoint_every, cfg->checkpoint_interval,
                     cfg->keep, cfg->momentum != 0 || cfg->opt_kind != 0, srv->server_id,
                     states[cfg->opt_kind]};
  if (px_ckpt_init(&srv->ckpt, &co, &srv->store, &srv->members, err, errlen) != 0) return -1;
  if (px_gen_init(&srv->gen, dir, err, errlen) != 0) return -1;
  px_agg_opts ao = {cfg->sched, cfg->workers, cfg->chunk_bytes, cfg->hold_bytes, cfg->elastic};
  px_agg_init(&srv->agg, &ao, srv->backend, &srv->members, &srv->fcache, &srv->ckpt,
              &srv->publish, &srv->ctr);
  return 0;
}

int px_service_init(px_service* svc, const px_config* cfg, char* err, size_t errlen) {
  memset(svc, 0, sizeof *svc);
  px_server* srv = &svc->srv;
  srv->cfg = *cfg;
  srv->start_ms = px_now_ms();
  srv->start_unix_ms = px_wall_ms();
  pthread_mutex_init(&srv->idle_mu, NULL);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  snprintf(srv->server_id, sizeof srv->server_id, "%" PRIx64 "-%d",
           (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u, (int)getpid());
  int rc = rooms_init(srv, err, errlen);
  if (rc != 0) return rc;
  if (px_ckpt_restore(&srv->ckpt) != 0) {
    snprintf(err, errlen, "could not restore from %s (see above)", srv->ckpt.o.dir);
    return -1;
  }
  return 0;
}

/* Reads the PEM files and the token of the configuration into opts. */
static int load_secrets(px_server* srv, px_rpc_server_opts* o, char* err, size_t errlen) {
  const size_t max_pem = 1u << 20;
  const px_config* cfg = &srv->cfg;
  if (cfg->tls_cert) {
    srv->tls_cert_pem = px_read_file(cfg->tls_cert, max_pem, NULL, err, errlen);
    if (srv->tls_cert_pem) srv->tls_key_pem = px_read_file(cfg->tls_key, max_pem, NULL, err, errlen);
    if (srv->tls_key_pem && cfg->tls_client_ca)
      srv->tls_client_ca_pem = px_read_file(cfg->tls_client_ca, max_pem, NULL, err, errlen);
    if (!srv->tls_cert_pem || !srv->tls_key_pem || (cfg->tls_client_ca && !srv->tls_client_ca_pem))
      return -1;
    char why[128];
    if (px_tls_cert_validity(srv->tls_cert_pem, why, sizeof why) == 1)
      px_warn("--tls-cert %s: the certificate %s: clients will refuse it (renew it)", cfg->tls_cert,
              why);
    o->tls_cert_pem = srv->tls_cert_pem;
    o->tls_key_pem = srv->tls_key_pem;
    o->tls_client_ca_pem = srv->tls_client_ca_pem;
  }
  if (cfg->token_file) {
    srv->token = px_read_token(cfg->token_file, err, errlen);
    if (!srv->token) return -1;
    o->token = srv->token;
  }
  return 0;
}

int px_service_start(px_service* svc, int* port, char* err, size_t errlen) {
  px_server* srv = &svc->srv;
  px_rpc_server_opts o = {.listen = srv->cfg.listen, .cq_threads = srv->cfg.cq_threads,
                          .max_calls = srv->cfg.max_calls,
                          .token_exempt_prefix = "/grpc.health.v1.Health/"};
  if (load_secrets(srv, &o, err, errlen) != 0) return -1;
  srv->rpc = px_rpc_server_start(&o, methods, sizeof methods / sizeof methods[0], srv, port, err,
                                 errlen);
  if (!srv->rpc) return -1;
  if (px_metrics_start(&svc->metrics, srv, methods, sizeof methods / sizeof methods[0], err,
                       errlen) != 0) {
    px_rpc_server_shutdown(srv->rpc, 0);
    return -1;
  }
  if (px_monitor_start(&svc->monitor, srv) != 0)
    px_warn("cannot start the lease monitor: leases and --call-timeout are not enforced");
  return 0;
}

/* Wakes every parked pull: while draining, each ends UNAVAILABLE (or sends what is ready). */
static void end_parked_pulls(px_server* srv) {
  uint32_t nt = px_store_count(&srv->store);
  for (uint32_t i = 0; i < nt; i++) {
    px_tensor_state* t = srv->store.tensors[i];
    for (uint32_t k = 0; k < t->nchunks; k++) {
      px_chunk_state* c = &t->chunks[k];
      pthread_mutex_lock(&c->mu);
      px_waiter* w = px_waiters_take(&srv->waiters, &c->waiters);
      pthread_mutex_unlock(&c->mu);
      px_waiters_run(w);
    }
  }
}

static int stop(px_service* svc, bool final_checkpoint) {
  px_server* srv = &svc->srv;
  px_monitor_stop(&svc->monitor);
  /* Health turns NOT_SERVING and parked pulls end with UNAVAILABLE at once: they may wait
   * for a step that will never come. Pushes and sends in flight get the drain time. */
  px_waiters_drain(&srv->waiters);
  px_exchange_drain(srv);
  end_parked_pulls(srv);
  px_ckpt_fail_waiters(&srv->ckpt);
  /* Drain while still answering: health says NOT_SERVING and new work gets UNAVAILABLE,
   * pushes and pulls in flight may finish; then the transport stops (cancelling what is
   * left when --drain-timeout is spent). */
  const uint64_t drain_ms = (uint64_t)(srv->cfg.drain_timeout * 1000.0);
  const uint64_t t0 = px_now_ms(), until = t0 + drain_ms;
  while (atomic_load(&srv->active_calls) > 0 && px_now_ms() < until) {
    struct timespec ts = {0, 2 * 1000000L}; /* a poll of the count, bounded by the drain */
    nanosleep(&ts, NULL);
  }
  const uint64_t now = px_now_ms();
  px_info("drained: %lld push/pull calls still active (%zu calls live) after %" PRIu64 " ms",
          (long long)atomic_load(&srv->active_calls), px_rpc_server_live_calls(srv->rpc), now - t0);
  px_rpc_server_shutdown(srv->rpc, (int64_t)(until > now ? until - now : 0));
  /* every call is over: the final checkpoint sees no more steps */
  if (final_checkpoint && srv->cfg.checkpoint_dir && px_store_count(&srv->store) > 0)
    return px_ckpt_final(&srv->ckpt, (int64_t)drain_ms + 60000);
  return 0;
}

int px_service_stop(px_service* svc) { return stop(svc, true); }

void px_service_stop_for_restart(px_service* svc) { stop(svc, false); }

void px_service_deinit(px_service* svc) {
  px_server* srv = &svc->srv;
  px_metrics_stop(&svc->metrics); /* it reads the rooms freed below */
  px_monitor_stop(&svc->monitor);
  px_ckpt_shutdown(&srv->ckpt);
  px_taskpool_destroy(srv->pool);
  srv->pool = NULL;
  px_rpc_server_destroy(srv->rpc);
  srv->rpc = NULL;
  if (srv->store.tensors) px_store_deinit(&srv->store);
  px_members_deinit(&srv->members);
  px_gen_deinit(&srv->gen);
  px_waiters_deinit(&srv->waiters);
  pthread_mutex_destroy(&srv->idle_mu);
  px_backend_destroy(srv->backend);
  srv->backend = NULL;
  free(srv->tls_cert_pem);
  px_free_secret(srv->tls_key_pem);
  free(srv->tls_client_ca_pem);
  px_free_secret(srv->token);
}
