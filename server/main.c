/* paramex-server: the parameter server process. */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "accept_guard.h"
#include "rpc/rpc_base.h"
#include "service.h"
#include "util/log.h"
#include "util/mem.h"

/* Every connection is a descriptor: the soft limit (often 1,024) goes up to the hard one,
 * and accept_guard.h bounds connections below it (gRPC 1.51's listener stops accepting
 * for good after an accept that fails with EMFILE). */
static void raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max) return;
  rlim_t was = rl.rlim_cur;
  rl.rlim_cur = rl.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
    px_info("open-file limit raised from %llu to %llu", (unsigned long long)was,
            (unsigned long long)rl.rlim_max);
}

static void guard_accepts(void) {
  if (px_accept_guard_start(-1) != 0)
    px_warn("no spare descriptor for refusing connections at the open-file limit: %s",
            strerror(errno));
}

/* Starts svc on cfg->listen and prints the readiness line; 0, or the exit code. */
static int start(px_service* svc, const px_config* cfg, int* port) {
  char err[512];
  int rc = px_service_init(svc, cfg, err, sizeof err);
  if (rc != 0) {
    fprintf(stderr, "paramex-server: %s\n", err);
    return rc == -2 ? 2 : 1;
  }
  if (px_service_start(svc, port, err, sizeof err) != 0) {
    fprintf(stderr, "paramex-server: %s\n", err);
    px_service_deinit(svc);
    return 2;
  }
  const char* colon = strrchr(cfg->listen, ':');
  printf("paramex-server listening on %.*s:%d\n", (int)(colon - cfg->listen), cfg->listen, *port);
  if (svc->metrics.http) {
    const char* mc = strrchr(cfg->metrics_listen, ':');
    const int hl = (int)(mc - cfg->metrics_listen); /* ":PORT" binds every address */
    printf("paramex-server metrics on %s://%.*s:%d/metrics\n", cfg->tls_cert ? "https" : "http",
           hl ? hl : 7, hl ? cfg->metrics_listen : "0.0.0.0", svc->metrics.port);
  }
  fflush(stdout);
  return 0;
}

/* "HOST:port" of addr ("HOST:PORT") into out, which addr may be (a second restart);
 * returns out. */
static const char* with_port(char* out, size_t cap, const char* addr, int port) {
  char host[256];
  const char* colon = strrchr(addr, ':');
  snprintf(host, sizeof host, "%.*s", (int)(colon - addr), addr);
  snprintf(out, cap, "%s:%d", host, port);
  return out;
}

/* A recovery generation asked this shard to go back to an older version (generation.h):
 * the service stops without a final checkpoint, the newer checkpoints are set aside, and
 * it starts again on the same port from the checkpoint at that version, under a new
 * server id (so the workers that joined the earlier one are told ABORTED). 0, or the
 * exit code. */
static int restart_for_recovery(px_service* svc, px_config* cfg, int* port, char* listen,
                                size_t cap) {
  uint64_t gen = 0, version = 0;
  px_gen_get(&svc->srv.gen, &gen, &version, NULL);
  char dir[sizeof svc->srv.ckpt_dir];
  snprintf(dir, sizeof dir, "%s", svc->srv.ckpt.o.dir ? svc->srv.ckpt.o.dir : "");
  px_service_stop_for_restart(svc);
  px_service_deinit(svc);
  px_gen_set_aside_newer(dir[0] ? dir : NULL, version);
  cfg->listen = with_port(listen, cap, cfg->listen, *port);
  static char metrics[300]; /* the same metrics port too */
  if (cfg->metrics_listen)
    cfg->metrics_listen = with_port(metrics, sizeof metrics, cfg->metrics_listen,
                                    svc->metrics.port);
  int rc = start(svc, cfg, port);
  if (rc != 0) return rc;
  uint64_t vmax = 0, vmin = px_store_version_min(&svc->srv.store, &vmax);
  if (vmin != version || vmax != version) {
    px_error("recovery generation %" PRIu64 ": restarted at versions %" PRIu64 "..%" PRIu64
             ", not at %" PRIu64 " (see above)", gen, vmin, vmax, version);
    px_service_stop_for_restart(svc);
    px_service_deinit(svc);
    return 1;
  }
  px_gen_restarted(&svc->srv.gen, gen, version);
  px_info("recovery generation %" PRIu64 ": serving again at version %" PRIu64 " as %s", gen,
          version, svc->srv.server_id);
  return 0;
}

int main(int argc, char** argv) {
  /* Signals are taken synchronously by this thread only; block them before any thread
   * (gRPC's included) exists so that every thread inherits the mask. SIGUSR1 is the
   * Recover handler's: restart from an older checkpoint. */
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &sigs, NULL);
  signal(SIGPIPE, SIG_IGN);

  px_config cfg;
  char err[512];
  int rc = px_config_parse(&cfg, argc, argv, err, sizeof err);
  if (rc == 1) return 0;
  if (rc != 0) {
    fprintf(stderr, "paramex-server: %s\n", err);
    return 2;
  }
  px_log_set_shard(cfg.shard);
  px_log_init_format("server", (px_log_level)px_log_level_parse(cfg.log_level),
                     (px_log_format)px_log_format_parse(cfg.log_format));
  raise_nofile();
  guard_accepts();
  px_tune_malloc();
  px_rpc_init();

  static px_service svc;
  static char listen[300];
  int port = 0;
  rc = start(&svc, &cfg, &port);
  if (rc != 0) {
    px_rpc_shutdown();
    return rc;
  }
  px_info("serving %u workers, lr %g %smomentum %g weight decay %g, chunk %llu bytes, "
           "%u compute threads, backend %s, %s%s%s", cfg.workers, cfg.lr,
           cfg.nesterov ? "Nesterov " : "", cfg.momentum, cfg.weight_decay,
           (unsigned long long)cfg.chunk_bytes, cfg.threads, svc.srv.backend->desc,
           cfg.tls_client_ca ? "mutual TLS" : cfg.tls_cert ? "TLS" : "plaintext",
           cfg.token_file ? ", bearer token required" : "",
           cfg.compression ? "" : ", compression off");

  if (cfg.opt_kind == 1) px_info("optimizer adagrad, eps %g", cfg.eps);
  if (cfg.opt_kind == 2) px_info("optimizer rmsprop, eps %g, alpha %g", cfg.eps, cfg.alpha);
  if (cfg.sched.kind != PX_LR_CONSTANT || cfg.sched.warmup) {
    char sched[160];
    px_lr_sched_describe(&cfg.sched, sched, sizeof sched);
    px_info("learning rate: %s", sched);
  }
  if (cfg.shard_from[0])
    px_info("shard %u of %u: the shard from %s", cfg.shard, cfg.shards, cfg.shard_from);
  if (cfg.workers_from[0] && strcmp(cfg.workers_from, "PMX_WORKERS") != 0)
    px_info("%u workers: the count from %s", cfg.workers, cfg.workers_from);
  if (cfg.listen_adopted[0])
    px_info("listening on %s: the address of this ps task in TF_CONFIG", cfg.listen_adopted);
  int sig = 0;
  for (;;) {
    sigwait(&sigs, &sig);
    if (sig != SIGUSR1) break;
    bool pending = false;
    px_gen_get(&svc.srv.gen, NULL, NULL, &pending);
    if (!pending) continue; /* not ours */
    rc = restart_for_recovery(&svc, &cfg, &port, listen, sizeof listen);
    if (rc != 0) {
      px_rpc_shutdown();
      return rc;
    }
  }
  px_info("%s: draining (up to %.1f s)", sig == SIGINT ? "SIGINT" : "SIGTERM",
           cfg.drain_timeout);
  rc = px_service_stop(&svc);
  px_service_deinit(&svc);
  px_rpc_shutdown();
  if (rc != 0) {
    px_error("stopped, but the final checkpoint could not be written (see above)");
    return 1;
  }
  px_info("stopped");
  return 0;
}
