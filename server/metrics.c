/* The /metrics endpoint (metrics.h). */
#include "metrics.h"

#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "accept_guard.h"
#include "http/http_server.h"
#include "metrics/prom.h"
#include "util/clock.h"

/* The method table's short names, for the calls' "method" label. */
static const char* method_label(const char* path) {
  const char* s = strrchr(path, '/');
  return s ? s + 1 : path;
}

static void calls(px_prom* p, const px_metrics* mx) {
  px_server* srv = mx->srv;
  px_prom_family(p, "paramex_calls_total", "counter",
                 "gRPC calls answered, by method and status code");
  const size_t nm = mx->nmethods;
  for (size_t m = 0; m <= nm; m++)
    for (int st = 0; st < PX_RPC_NSTATUS; st++) {
      uint64_t n = srv->rpc ? px_rpc_server_calls(srv->rpc, m, st) : 0;
      if (n == 0 && st != 0) continue; /* every method shows OK; the other codes once seen */
      px_prom_sample(p, "paramex_calls_total", (double)n, "method",
                  m < nm ? method_label(mx->methods[m].path) : "unknown", "code",
                  px_status_name(st), NULL);
    }
  px_prom_family(p, "paramex_exchange_steps_total", "counter",
                 "steps answered on Exchange streams, by status code");
  for (int st = 0; st < 17; st++) {
    uint64_t n = atomic_load(&srv->ctr.exchange_status[st]);
    if (n || st == 0) px_prom_sample(p, "paramex_exchange_steps_total", (double)n, "code",
                                  px_status_name(st), NULL);
  }
  px_prom_counter(p, "paramex_rejected_calls_total",
                  "calls and Exchange steps refused with an error status",
                  atomic_load(&srv->ctr.rejected_calls));
  px_prom_gauge(p, "paramex_active_calls", "Push and Pull calls and Exchange steps in progress "
                "(parked pulls included)", (double)atomic_load(&srv->active_calls));
  px_prom_counter(p, "paramex_refused_connections_total",
                  "connections closed at once because descriptors ran short",
                  px_accept_guard_refused());
}

static const char* const enc_names[4] = {"raw", "unchanged", "delta_zstd", "shuffle_zstd"};

static void traffic(px_prom* p, px_server* srv) {
  const px_counters* c = &srv->ctr;
  px_prom_counter(p, "paramex_push_chunks_total", "pushed chunks counted",
                  atomic_load(&c->push_chunks));
  px_prom_counter(p, "paramex_push_duplicates_total",
                  "pushed chunks ignored as duplicates (a retried push)",
                  atomic_load(&c->push_duplicates));
  px_prom_counter(p, "paramex_push_bytes_total", "bytes of the pushed chunks, decoded",
                  atomic_load(&c->push_raw_bytes));
  px_prom_family(p, "paramex_push_wire_bytes_total", "counter",
                 "bytes of the pushed chunks on the wire, by encoding");
  for (int e = 0; e < 4; e += 3) /* pushes are raw or shuffle_zstd */
    px_prom_sample(p, "paramex_push_wire_bytes_total", (double)atomic_load(&c->push_wire_enc[e]),
                "encoding", enc_names[e], NULL);
  px_prom_counter(p, "paramex_nonfinite_chunks_total", "pushed chunks holding inf or NaN",
                  atomic_load(&c->nonfinite_chunks));
  px_prom_counter(p, "paramex_pull_chunks_total", "pulled chunks sent",
                  atomic_load(&c->pull_chunks));
  px_prom_counter(p, "paramex_pull_bytes_total", "bytes of the pulled chunks, decoded",
                  atomic_load(&c->pull_raw_bytes));
  px_prom_family(p, "paramex_pull_wire_bytes_total", "counter",
                 "bytes of the pulled chunks on the wire, by encoding");
  for (int e = 0; e < 4; e++)
    px_prom_sample(p, "paramex_pull_wire_bytes_total", (double)atomic_load(&c->pull_wire_enc[e]),
                "encoding", enc_names[e], NULL);
  px_prom_counter(p, "paramex_frame_encodes_total", "pull frames encoded",
                  atomic_load(&c->encodes));
  px_prom_counter(p, "paramex_frame_cache_hits_total",
                  "pulled chunks sent from an already encoded frame", atomic_load(&c->cache_hits));
}

static void steps(px_prom* p, px_server* srv) {
  uint64_t vmax = 0, vmin = px_store_version_min(&srv->store, &vmax);
  px_prom_gauge(p, "paramex_version", "the version every chunk of this shard reached",
                (double)vmin);
  px_prom_gauge(p, "paramex_version_max", "the newest version of a chunk of this shard",
                (double)vmax);
  px_hist_snap hs;
  px_hist_snapshot(&srv->agg.steps.hist, &hs);
  px_prom_counter(p, "paramex_steps_completed_total",
                  "steps every chunk of this shard completed", hs.cum[hs.n]);
  px_prom_family(p, "paramex_step_duration_seconds", "histogram",
                 "time from the first push of a step to its completion on this shard");
  px_prom_hist(p, "paramex_step_duration_seconds", &hs);
  px_prom_gauge(p, "paramex_last_step_duration_seconds", "the newest step's duration",
                (double)atomic_load(&srv->agg.steps.last_ns) / 1e9);
  px_prom_counter(p, "paramex_chunk_steps_total", "chunk aggregations completed",
                  atomic_load(&srv->ctr.steps_completed));
  px_hist_snapshot(&srv->agg.steps.chunk_hist, &hs);
  px_prom_family(p, "paramex_chunk_step_duration_seconds", "histogram",
                 "time from the first push of a chunk's step to its completion");
  px_prom_hist(p, "paramex_chunk_step_duration_seconds", &hs);
  px_prom_gauge(p, "paramex_tensors", "tensors declared", (double)px_store_count(&srv->store));
  px_prom_gauge(p, "paramex_learning_rate", "the lr of the next step at paramex_version "
                "(--lr and --lr-schedule)", (double)px_lr_at(&srv->cfg.sched, vmin));
}

/* One worker as a scrape sees it: read once, so that every family agrees (the training
 * threads move these meanwhile). */
typedef struct worker_snap {
  bool joined, up, left;
  uint64_t steps, seen_ms, chunks;
} worker_snap;

static double worker_value(size_t f, const worker_snap* w, uint64_t top, uint64_t now) {
  switch (f) {
    case 0: return w->up;
    case 1: return w->left;
    case 2: return (double)(top > w->steps ? top - w->steps : 0);
    case 3: return now > w->seen_ms ? (double)(now - w->seen_ms) / 1e3 : 0;
    case 4: return (double)w->steps;
    default: return (double)w->chunks;
  }
}

/* The workers' rows: label worker="RANK" (bounded by --workers). A worker that left has no
 * lag (it is done, not behind). */
static void workers(px_prom* p, px_server* srv) {
  const px_members* m = &srv->members;
  const uint64_t now = px_now_ms();
  worker_snap* ws = calloc(m->n ? m->n : 1, sizeof *ws);
  if (!ws) {
    p->failed = true;
    return;
  }
  uint64_t top = 0;
  uint32_t alive = 0, joined = 0;
  for (uint32_t r = 0; r < m->n; r++) {
    const px_worker_state* w = &m->w[r];
    worker_snap* x = &ws[r];
    x->joined = atomic_load(&w->incarnation) != 0;
    x->left = atomic_load(&w->left) != 0;
    x->up = x->joined && !x->left && !atomic_load(&w->dead);
    x->steps = atomic_load(&w->steps_begun);
    x->seen_ms = atomic_load(&w->last_seen_ms);
    x->chunks = atomic_load(&w->chunks_pushed);
    if (x->joined && x->steps > top) top = x->steps;
    joined += x->joined;
    alive += x->up;
  }
  px_prom_gauge(p, "paramex_workers_expected", "--workers", (double)m->n);
  static const struct { const char* name; const char* help; const char* type; } fam[] = {
      {"paramex_worker_up", "1 while the worker holds its lease (joined, not dead, not left)",
       "gauge"},
      {"paramex_worker_finished", "1 once the worker left (Leave): done, not dead", "gauge"},
      {"paramex_worker_lag_steps", "steps the worker is behind the furthest worker (workers "
       "that left are not listed)", "gauge"},
      {"paramex_worker_last_seen_seconds", "seconds since the worker's last call", "gauge"},
      {"paramex_worker_steps", "the highest step the worker pushed a chunk of, plus one", "gauge"},
      {"paramex_worker_pushed_chunks_total", "chunks the worker pushed", "counter"}};
  for (size_t f = 0; f < sizeof fam / sizeof fam[0]; f++) {
    px_prom_family(p, fam[f].name, fam[f].type, fam[f].help);
    for (uint32_t r = 0; r < m->n; r++) {
      if (!ws[r].joined || (f == 2 && ws[r].left)) continue;
      char rank[16];
      snprintf(rank, sizeof rank, "%u", r);
      px_prom_sample(p, fam[f].name, worker_value(f, &ws[r], top, now), "worker", rank, NULL);
    }
  }
  free(ws);
  px_prom_gauge(p, "paramex_workers_joined", "workers that joined", (double)joined);
  px_prom_gauge(p, "paramex_workers_up", "workers holding their lease", (double)alive);
}

static void memory(px_prom* p, px_server* srv) {
  const px_counters* c = &srv->ctr;
  const int64_t store = atomic_load(&c->store_bytes), params = atomic_load(&c->params_bytes);
  const int64_t frames = atomic_load(&c->frame_bytes), hist = atomic_load(&c->history_bytes);
  const int64_t held = (int64_t)srv->cfg.hold_bytes - atomic_load(&srv->agg.hold_left);
  const struct { const char* kind; int64_t v; } kinds[] = {
      {"parameters", params}, {"optimizer_state", store - params}, {"history", hist},
      {"frames", frames - hist}, {"held_contributions", held}};
  px_prom_family(p, "paramex_memory_bytes", "gauge",
                 "memory by kind (parameters, optimizer_state and frames with history count "
                 "against --memory-limit)");
  for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
    px_prom_sample(p, "paramex_memory_bytes", (double)(kinds[i].v > 0 ? kinds[i].v : 0), "kind",
                kinds[i].kind, NULL);
  px_prom_gauge(p, "paramex_memory_limit_bytes", "--memory-limit (0: none)",
                (double)srv->cfg.memory_limit);
  px_prom_gauge(p, "paramex_memory_used_ratio", "(parameters + optimizer state + frames) / "
                "--memory-limit (0 without a limit)",
                srv->cfg.memory_limit ? (double)(store + frames) / (double)srv->cfg.memory_limit
                                      : 0.0);
  px_prom_gauge(p, "paramex_history_budget_bytes", "--history-bytes",
                (double)srv->cfg.history_bytes);
  px_prom_gauge(p, "paramex_hold_budget_bytes", "--hold-bytes", (double)srv->cfg.hold_bytes);
}

static void checkpoints(px_prom* p, px_server* srv) {
  px_ckpt_info ck;
  px_ckpt_get_info(&srv->ckpt, &ck);
  px_prom_counter(p, "paramex_checkpoints_written_total", "checkpoints written", ck.written);
  px_prom_counter(p, "paramex_checkpoint_failures_total",
                  "checkpoints that could not be written (the previous one is intact)",
                  ck.failures);
  px_hist_snap hs;
  px_hist_snapshot(&srv->ckpt.seconds, &hs);
  px_prom_family(p, "paramex_checkpoint_duration_seconds", "histogram",
                 "time to write a checkpoint file");
  px_prom_hist(p, "paramex_checkpoint_duration_seconds", &hs);
  px_prom_gauge(p, "paramex_checkpoint_last_version",
                "version of the newest checkpoint written or restored", (double)ck.last_version);
  px_prom_gauge(p, "paramex_checkpoint_last_bytes", "size of the newest checkpoint written",
                (double)ck.last_bytes);
  px_prom_gauge(p, "paramex_checkpoint_last_timestamp_seconds",
                "when the newest checkpoint was written (Unix time; 0: none yet)",
                (double)ck.last_unix_ms / 1e3);
  px_prom_gauge(p, "paramex_restored_version", "version restored at start (0: none)",
                (double)ck.restored_version);
  uint64_t gen = 0, gver = 0;
  px_gen_get(&srv->gen, &gen, &gver, NULL);
  px_prom_gauge(p, "paramex_recovery_generation",
                "the newest recovery generation this shard took part in", (double)gen);
}

/* The standard process_* metrics, from /proc/self (Linux). */
static void process(px_prom* p, px_server* srv) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
               (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
  px_prom_family(p, "process_cpu_seconds_total", "counter",
                 "user and system CPU time spent in seconds");
  px_prom_sample(p, "process_cpu_seconds_total", cpu, NULL);
  long pages_total = 0, pages_rss = 0;
  FILE* f = fopen("/proc/self/statm", "r");
  if (f) {
    if (fscanf(f, "%ld %ld", &pages_total, &pages_rss) != 2) pages_total = pages_rss = 0;
    fclose(f);
  }
  const double page = (double)sysconf(_SC_PAGESIZE);
  px_prom_gauge(p, "process_resident_memory_bytes", "resident memory size in bytes",
                (double)pages_rss * page);
  px_prom_gauge(p, "process_virtual_memory_bytes", "virtual memory size in bytes",
                (double)pages_total * page);
  px_prom_gauge(p, "process_start_time_seconds",
                "start time of the process since the Unix epoch in seconds",
                (double)srv->start_unix_ms / 1e3);
  size_t fds = 0;
  DIR* d = opendir("/proc/self/fd");
  for (struct dirent* e; d && (e = readdir(d)) != NULL && fds < 1u << 24;)
    fds += e->d_name[0] != '.';
  if (d) closedir(d);
  px_prom_gauge(p, "process_open_fds", "number of open file descriptors",
                (double)(fds ? fds - 1 : 0)); /* less the one reading the folder */
  struct rlimit rl;
  px_prom_gauge(p, "process_max_fds", "maximum number of open file descriptors",
                getrlimit(RLIMIT_NOFILE, &rl) == 0 ? (double)rl.rlim_cur : 0.0);
}

int px_metrics_render(const px_metrics* m, char** body, size_t* len) {
  px_server* srv = m->srv;
  px_prom p;
  char shard[16];
  snprintf(shard, sizeof shard, "%u", srv->cfg.shard);
  px_prom_init(&p, "shard", shard);
  px_prom_family(&p, "paramex_build_info", "gauge", "1, labelled with the server's version");
  px_prom_sample(&p, "paramex_build_info", 1, "version", PX_VERSION, NULL);
  px_prom_gauge(&p, "paramex_shards", "--shards", (double)srv->cfg.shards);
  steps(&p, srv);
  workers(&p, srv);
  traffic(&p, srv);
  calls(&p, m);
  memory(&p, srv);
  checkpoints(&p, srv);
  p.constant[0] = 0; /* process_* carry no shard label: they are the process's */
  process(&p, srv);
  *body = px_prom_take(&p, len);
  return *body ? 0 : -1;
}

static int render(void* ctx, char** body, size_t* len) {
  return px_metrics_render(ctx, body, len);
}

static const px_http_route routes[] = {
    {"/metrics", "text/plain; version=0.0.4; charset=utf-8", render}};

int px_metrics_start(px_metrics* m, px_server* srv, const px_rpc_method* methods,
                     size_t nmethods, char* err, size_t errlen) {
  memset(m, 0, sizeof *m);
  m->srv = srv;
  m->methods = methods;
  m->nmethods = nmethods;
  if (!srv->cfg.metrics_listen) return 0;
  px_http_opts o = {.listen = srv->cfg.metrics_listen,
                    .tls_cert_pem = srv->tls_cert_pem,
                    .tls_key_pem = srv->tls_key_pem,
                    .token = srv->cfg.metrics_no_auth ? NULL : srv->token};
  char why[400];
  m->http = px_http_start(&o, routes, 1, m, &m->port, why, sizeof why);
  if (!m->http) {
    snprintf(err, errlen, "--metrics-listen: %s", why);
    return -1;
  }
  return 0;
}

void px_metrics_stop(px_metrics* m) { /* keeps m->port: a recovery restart binds it again (main.c) */
  px_http_stop(m->http);
  m->http = NULL;
}
