/* paramex-server: the parameter server process. */
#include <errno.h>
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

int main(int argc, char** argv) {
  /* Signals are taken synchronously by this thread only; block them before any thread
   * (gRPC's included) exists so that every thread inherits the mask. */
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
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
  px_log_init("server", (px_log_level)px_log_level_parse(cfg.log_level));
  raise_nofile();
  guard_accepts();
  px_tune_malloc();
  px_rpc_init();

  static px_service svc;
  rc = px_service_init(&svc, &cfg, err, sizeof err);
  if (rc != 0) {
    fprintf(stderr, "paramex-server: %s\n", err);
    return rc == -2 ? 2 : 1;
  }
  int port = 0;
  if (px_service_start(&svc, &port, err, sizeof err) != 0) {
    fprintf(stderr, "paramex-server: %s\n", err);
    px_service_deinit(&svc);
    px_rpc_shutdown();
    return 2;
  }
  const char* colon = strrchr(cfg.listen, ':');
  printf("paramex-server listening on %.*s:%d\n", (int)(colon - cfg.listen), cfg.listen, port);
  fflush(stdout);
  px_info("serving %u workers, lr %g momentum %g weight decay %g, chunk %llu bytes, "
           "%u compute threads, backend %s, %s%s%s", cfg.workers, cfg.lr, cfg.momentum, cfg.weight_decay,
           (unsigned long long)cfg.chunk_bytes, cfg.threads, svc.srv.backend->desc,
           cfg.tls_client_ca ? "mutual TLS" : cfg.tls_cert ? "TLS" : "plaintext",
           cfg.token_file ? ", bearer token required" : "",
           cfg.compression ? "" : ", compression off");

  int sig = 0;
  sigwait(&sigs, &sig);
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
