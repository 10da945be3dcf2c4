/* paramex-server: the parameter server process. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "server.h"

int main(int argc, char** argv) {
  /* Signals are taken synchronously by this thread only; block them before any thread
   * (gRPC's included) exists so that every thread inherits the mask. */
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, NULL);
  signal(SIGPIPE, SIG_IGN);

  pmx_config cfg;
  int rc = pmx_config_parse(&cfg, argc, argv);
  if (rc == 1) return 0;
  if (rc != 0) return 2;
  pmx_log_init("server", (pmx_log_level)pmx_log_level_parse(cfg.log_level));
  pmx_tune_malloc();
  pmx_rpc_init();

  static pmx_service svc;
  char err[512];
  rc = pmx_service_init(&svc, &cfg, err, sizeof err);
  if (rc != 0) {
    fprintf(stderr, "paramex-server: %s\n", err);
    return rc == -2 ? 2 : 1;
  }
  int port = 0;
  if (pmx_service_start(&svc, &port, err, sizeof err) != 0) {
    fprintf(stderr, "paramex-server: %s\n", err);
    pmx_service_deinit(&svc);
    pmx_rpc_shutdown();
    return 2;
  }
  const char* colon = strrchr(cfg.listen, ':');
  printf("paramex-server listening on %.*s:%d\n", (int)(colon - cfg.listen), cfg.listen, port);
  fflush(stdout);
  pmx_info("serving %u workers, lr %g momentum %g weight decay %g, chunk %llu bytes, "
           "%u compute threads, backend %s, %s%s%s", cfg.workers, cfg.lr, cfg.momentum, cfg.weight_decay,
           (unsigned long long)cfg.chunk_bytes, cfg.threads, svc.backend->desc,
           cfg.tls_client_ca ? "mutual TLS" : cfg.tls_cert ? "TLS" : "plaintext",
           cfg.token_file ? ", bearer token required" : "",
           cfg.compression ? "" : ", compression off");

  int sig = 0;
  sigwait(&sigs, &sig);
  pmx_info("%s: draining (up to %.1f s)", sig == SIGINT ? "SIGINT" : "SIGTERM",
           cfg.drain_timeout);
  rc = pmx_service_stop(&svc);
  pmx_service_deinit(&svc);
  pmx_rpc_shutdown();
  if (rc != 0) {
    pmx_error("stopped, but the final checkpoint could not be written (see above)");
    return 1;
  }
  pmx_info("stopped");
  return 0;
}
