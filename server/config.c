/* paramex-server flags; each is also a PMX_* environment variable. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

#include "framecache.h"
#include "launch/place.h"
#include "shard/shardmap.h"
#include "util/flags.h"
#include "util/log.h"
#include "util/str.h"
#include "util/taskpool.h"

#define SYNOPSIS "[--listen HOST:PORT] [--workers N] [--lr F] [flags...]"

/* The defaults, before the environment and the command line. */
static void set_defaults(px_config* cfg) {
  memset(cfg, 0, sizeof *cfg);
  cfg->listen = "0.0.0.0:50051";
  cfg->workers = 1;
  cfg->shards = 1;
  cfg->lr = 0.01;
  cfg->lr_schedule = "constant";
  cfg->optimizer = "sgd";
  cfg->eps = -1; /* the optimizer's own default */
  cfg->alpha = 0.99;
  cfg->lr_gamma = 0.1;
  cfg->chunk_bytes = 1u << 20;
  cfg->threads = px_ncpus();
  cfg->cq_threads = 2;
  cfg->max_tensors = 16384;
  cfg->max_tensor_bytes = 16ull << 30;
  cfg->hold_bytes = 256u << 20;
  cfg->drain_timeout = 5.0;
  cfg->history = 2;
  cfg->history_bytes = 1ull << 30;
  cfg->compression_level = 1;
  cfg->compression = true;
  cfg->keep = 3;
  cfg->worker_timeout = 30;
  cfg->rejoin_wait = 60;
  {
    /* default memory budget: 80% of the machine's memory */
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    cfg->memory_limit = pages > 0 && psz > 0 ? (uint64_t)pages * (uint64_t)psz / 5 * 4 : 0;
  }
  cfg->max_calls = 4096;
  cfg->call_timeout = 3600;
  cfg->log_level = "info";
  cfg->log_format = "text";
  cfg->device = "cpu";
}

/* --optimizer and its hyper-parameters. 0, or 2 with err. */
static int check_optimizer(px_config* cfg, char* err, size_t errlen) {
  static const char* const names[] = {"sgd", "momentum", "nesterov", "adagrad", "rmsprop"};
  int k = -1;
  for (int i = 0; i < 5; i++)
    if (strcmp(cfg->optimizer, names[i]) == 0) k = i;
  if (k < 0) {
    snprintf(err, errlen, "--optimizer: '%s' is not sgd, momentum, nesterov, adagrad or rmsprop",
             cfg->optimizer);
    return 2;
  }
  cfg->nesterov = k == 2;
  cfg->opt_kind = k == 3 ? 1 : k == 4 ? 2 : 0; /* px_opt_kind */
  if ((k == 1 || k == 2) && cfg->momentum == 0) {
    snprintf(err, errlen, "--optimizer %s needs --momentum F (F > 0)", cfg->optimizer);
    return 2;
  }
  if (k >= 3 && cfg->momentum != 0) {
    snprintf(err, errlen, "--momentum is for sgd, momentum and nesterov, not --optimizer %s",
             cfg->optimizer);
    return 2;
  }
  if (cfg->eps < 0) cfg->eps = k == 3 ? 1e-10 : 1e-8;
  return 0;
}

/* What the flag types alone cannot check: values and combinations. 0, or 2 with err. */
static int check(px_config* cfg, char* err, size_t errlen) {
  int rc = 0;
  if (rc == 0 && px_log_level_parse(cfg->log_level) < 0) {
    snprintf(err, errlen, "--log-level: '%s' is not one of error, warn, info, debug",
             cfg->log_level);
    rc = 2;
  }
  if (rc == 0 && px_log_format_parse(cfg->log_format) < 0) {
    snprintf(err, errlen, "--log-format: '%.40s' is not text or json", cfg->log_format);
    rc = 2;
  }
  if (rc == 0) rc = check_optimizer(cfg, err, errlen);
  const int kind = px_lr_kind_parse(cfg->lr_schedule);
  if (rc == 0 && kind < 0) {
    snprintf(err, errlen, "--lr-schedule: '%s' is not constant, step, cosine or linear-warmup",
             cfg->lr_schedule);
    rc = 2;
  }
  if (rc == 0) {
    cfg->sched = (px_lr_sched){.kind = (px_lr_kind)kind, .lr = cfg->lr, .gamma = cfg->lr_gamma,
                               .lr_min = cfg->lr_min, .step_size = cfg->lr_step_size,
                               .total = cfg->lr_total_steps, .warmup = cfg->lr_warmup_steps};
    if (px_lr_sched_check(&cfg->sched, err, errlen) != 0) rc = 2;
  }
  if (rc == 0 && cfg->shard >= cfg->shards) {
    snprintf(err, errlen, "%s %u is not below --shards %u (shards are numbered from 0)",
             cfg->shard_from[0] ? cfg->shard_from : "--shard", cfg->shard, cfg->shards);
    rc = 2;
  }
  if (rc == 0 && (cfg->chunk_bytes % 4) != 0) {
    snprintf(err, errlen, "--chunk-bytes: %llu is not a multiple of 4",
             (unsigned long long)cfg->chunk_bytes);
    rc = 2;
  }
  if (rc == 0 && (!strchr(cfg->listen, ':') || cfg->listen[0] == ':')) {
    snprintf(err, errlen, "--listen: '%s' is not HOST:PORT", cfg->listen);
    rc = 2;
  }
  if (rc == 0 && (!cfg->tls_cert) != (!cfg->tls_key)) {
    snprintf(err, errlen, "%s needs %s too", cfg->tls_cert ? "--tls-cert" : "--tls-key",
             cfg->tls_cert ? "--tls-key" : "--tls-cert");
    rc = 2;
  }
  if (rc == 0 && !cfg->checkpoint_dir && (cfg->checkpoint_every || cfg->checkpoint_interval > 0)) {
    snprintf(err, errlen, "--checkpoint-%s needs --checkpoint-dir",
             cfg->checkpoint_every ? "every" : "interval");
    rc = 2;
  }
  if (rc == 0 && cfg->tls_client_ca && !cfg->tls_cert) {
    snprintf(err, errlen, "--tls-client-ca needs --tls-cert and --tls-key");
    rc = 2;
  }
  if (rc == 0 && strcmp(cfg->device, "cpu") != 0 && strcmp(cfg->device, "cuda") != 0) {
    snprintf(err, errlen, "--device: '%.40s' is not cpu or cuda", cfg->device);
    rc = 2;
  }
  if (rc == 0 && cfg->gpus && strcmp(cfg->device, "cuda") != 0) {
    snprintf(err, errlen, "--gpus needs --device cuda");
    rc = 2;
  }
  if (rc == 0 && cfg->gpus &&
      px_gpu_list_parse(cfg->gpus, cfg->gpu_ids, PX_MAX_GPUS, &cfg->ngpus, err, errlen) != 0)
    rc = 2;
  return rc;
}

static bool on_command_line(int argc, char** argv, const char* flag) {
  const size_t n = strlen(flag);
  for (int i = 1; i < argc; i++)
    if (strncmp(argv[i], flag, n) == 0 && (argv[i][n] == 0 || argv[i][n] == '=')) return true;
  return false;
}

/* --shard / --shards / --workers / --listen not given (the flags read PMX_SHARD, PMX_SHARDS,
 * PMX_WORKERS, PMX_LISTEN): from the launcher's variables (launch/place.h). 0, or 2 with
 * err. */
static int adopt_place(px_config* cfg, int argc, char** argv, char* err, size_t errlen) {
  bool shard_set = on_command_line(argc, argv, "--shard"),
       shards_set = on_command_line(argc, argv, "--shards"),
       workers_set = on_command_line(argc, argv, "--workers"),
       listen_set = on_command_line(argc, argv, "--listen") || getenv("PMX_LISTEN");
  if (shard_set && shards_set && workers_set && listen_set) return 0;
  px_place p;
  char why[256];
  if (px_place_server(px_place_getenv, NULL, &p, why, sizeof why) != 0 ||
      (!listen_set && px_place_listen(px_place_getenv, NULL, cfg->listen_adopted,
                                      sizeof cfg->listen_adopted, why, sizeof why) != 0)) {
    snprintf(err, errlen, "%s", why);
    return 2;
  }
  if (!listen_set && cfg->listen_adopted[0]) cfg->listen = cfg->listen_adopted;
  if (!workers_set && p.workers >= 0) {
    if (p.workers < 1 || p.workers > PX_MAX_WORKERS) {
      snprintf(err, errlen, "%lld workers by %s: --workers is 1..%d", (long long)p.workers,
               p.workers_from, PX_MAX_WORKERS);
      return 2;
    }
    cfg->workers = (uint32_t)p.workers;
    snprintf(cfg->workers_from, sizeof cfg->workers_from, "%s", p.workers_from);
  }
  if (!shards_set && p.world >= 0) cfg->shards = (uint32_t)p.world;
  /* a scheduler's index only where the count says there are several shards: a lone
   * server inside a Slurm batch script, under mpirun or in a pod keeps being shard 0 */
  if (!shard_set && p.rank >= 0 && cfg->shards > 1) {
    cfg->shard = (uint32_t)p.rank;
    snprintf(cfg->shard_from, sizeof cfg->shard_from, "%s", p.rank_from);
  }
  if (cfg->shard >= PX_MAX_SHARDS || cfg->shards < 1 || cfg->shards > PX_MAX_SHARDS) {
    snprintf(err, errlen, "shard %u of %u (%s): shards are 0..%d", cfg->shard, cfg->shards,
             cfg->shard_from[0] ? cfg->shard_from : "--shard", PX_MAX_SHARDS - 1);
    return 2;
  }
  return 0;
}

int px_config_parse(px_config* cfg, int argc, char** argv, char* err, size_t errlen) {
  set_defaults(cfg);
  const px_flag flags[] = {
      {"listen", PX_FLAG_STR, &cfg->listen, 0, 0, "HOST:PORT",
       "address to serve on; port 0 picks a free port"},
      {"workers", PX_FLAG_U32, &cfg->workers, 1, PX_MAX_WORKERS, "N",
       "workers per step (BSP: a step completes when all N pushed)"},
      {"shard", PX_FLAG_U32, &cfg->shard, 0, PX_MAX_SHARDS - 1, "I",
       "this server is shard I (0..S-1) of --shards S: it holds the chunks rendezvous hashing "
       "gives it"},
      {"shards", PX_FLAG_U32, &cfg->shards, 1, PX_MAX_SHARDS, "S",
       "servers that together hold the model (workers list them all, in shard order)"},
      {"lr", PX_FLAG_F64, &cfg->lr, 0, 1e6, "F", "SGD learning rate (the schedule's base)"},
      {"optimizer", PX_FLAG_STR, &cfg->optimizer, 0, 0, "NAME",
       "sgd (with --momentum when given), momentum (sgd, needs --momentum), nesterov "
       "(Nesterov momentum, needs --momentum), adagrad or rmsprop"},
      {"eps", PX_FLAG_F64, &cfg->eps, 1e-30, 1, "F",
       "adagrad and rmsprop: added to the square root (defaults 1e-10 and 1e-8, PyTorch's)"},
      {"alpha", PX_FLAG_F64, &cfg->alpha, 0, 0.999999, "F",
       "rmsprop: the decay of the average of squared gradients (default 0.99)"},
      {"lr-schedule", PX_FLAG_STR, &cfg->lr_schedule, 0, 0, "NAME",
       "constant, step, cosine or linear-warmup: the lr of each step by version"},
      {"lr-step-size", PX_FLAG_U64, &cfg->lr_step_size, 0, 1e15, "STEPS",
       "step: multiply the lr by --lr-gamma every STEPS steps"},
      {"lr-gamma", PX_FLAG_F64, &cfg->lr_gamma, 0, 1, "F", "step: the factor (default 0.1)"},
      {"lr-total-steps", PX_FLAG_U64, &cfg->lr_total_steps, 0, 1e15, "STEPS",
       "cosine: steps from --lr down to --lr-min"},
      {"lr-min", PX_FLAG_F64, &cfg->lr_min, 0, 1e6, "F", "cosine: the final lr (default 0)"},
      {"lr-warmup-steps", PX_FLAG_U64, &cfg->lr_warmup_steps, 0, 1e15, "STEPS",
       "linear warm-up over the first STEPS steps (any schedule; linear-warmup needs it)"},
      {"momentum", PX_FLAG_F64, &cfg->momentum, 0, 0.999999, "F", "SGD momentum (0 = none)"},
      {"weight-decay", PX_FLAG_F64, &cfg->weight_decay, 0, 1e3, "F", "L2 weight decay"},
      {"chunk-bytes", PX_FLAG_SIZE, &cfg->chunk_bytes, 1024, 3u << 20, "SIZE",
       "bytes of f32 per chunk (K/M suffixes; 1K..3M)"},
      {"threads", PX_FLAG_U32, &cfg->threads, 1, 256, "N", "compute threads"},
      {"cq-threads", PX_FLAG_U32, &cfg->cq_threads, 1, 64, "N", "gRPC completion-queue threads"},
      {"max-tensors", PX_FLAG_U32, &cfg->max_tensors, 1, 1u << 20, "N", "most tensors"},
      {"max-tensor-bytes", PX_FLAG_SIZE, &cfg->max_tensor_bytes, 4, 1ull << 40, "SIZE",
       "largest tensor"},
      {"hold-bytes", PX_FLAG_SIZE, &cfg->hold_bytes, 0, 1ull << 40, "SIZE",
       "memory for contributions that arrive before a lower rank's"},
      {"history", PX_FLAG_U32, &cfg->history, 0, PX_MAX_HISTORY, "H",
       "per-step deltas kept per chunk: pulls from up to H versions back get a diff"},
      {"history-bytes", PX_FLAG_SIZE, &cfg->history_bytes, 0, 1ull << 40, "SIZE",
       "memory budget of that history (older deltas are dropped past it)"},
      {"compression-level", PX_FLAG_U32, &cfg->compression_level, 1, 19, "L",
       "zstd level of pull frames (1 is fastest; higher gains <1% here)"},
      {"compression", PX_FLAG_BOOL, &cfg->compression, 0, 0, NULL,
       "diff-compress pulls (--no-compression: raw chunks only)"},
      {"drain-timeout", PX_FLAG_F64, &cfg->drain_timeout, 0, 3600, "SECONDS",
       "on SIGTERM, time for calls in flight before they are cancelled"},
      {"log-level", PX_FLAG_STR, &cfg->log_level, 0, 0, "LEVEL", "error, warn, info or debug"},
      {"log-format", PX_FLAG_STR, &cfg->log_format, 0, 0, "text|json",
       "stderr lines as text or as one JSON object each (time, level, role, shard, event)"},
      {"checkpoint-dir", PX_FLAG_STR, &cfg->checkpoint_dir, 0, 0, "DIR",
       "write checkpoints here, restore the newest valid one at start"},
      {"checkpoint-every", PX_FLAG_U64, &cfg->checkpoint_every, 0, 1e15, "STEPS",
       "checkpoint at every version that is a multiple of STEPS (0: off)"},
      {"checkpoint-interval", PX_FLAG_F64, &cfg->checkpoint_interval, 0, 1e7, "SECONDS",
       "checkpoint every SECONDS (0: off)"},
      {"keep", PX_FLAG_U32, &cfg->keep, 1, 100000, "K", "checkpoints kept (oldest removed)"},
      {"worker-timeout", PX_FLAG_F64, &cfg->worker_timeout, 0, 86400, "SECONDS",
       "a worker with no call (libparamex sends heartbeats) for this long is dead (0: never)"},
      {"rejoin-wait", PX_FLAG_F64, &cfg->rejoin_wait, 0, 86400, "SECONDS",
       "without --elastic: how long steps wait for a dead worker before pulls fail"},
      {"elastic", PX_FLAG_BOOL, &cfg->elastic, 0, 0, NULL,
       "steps complete with the workers still alive; a restarted worker rejoins"},
      {"reject-nonfinite", PX_FLAG_BOOL, &cfg->reject_nonfinite, 0, 0, NULL,
       "refuse pushed chunks holding inf or NaN (INVALID_ARGUMENT); else applied and counted"},
      {"memory-limit", PX_FLAG_SIZE, &cfg->memory_limit, 0, 1ull << 50, "SIZE",
       "budget for parameters, optimizer state, history and frames (default 80% of RAM)"},
      {"max-calls", PX_FLAG_U32, &cfg->max_calls, 1, 1u << 20, "N",
       "concurrent calls; more get RESOURCE_EXHAUSTED"},
      {"call-timeout", PX_FLAG_F64, &cfg->call_timeout, 1, 86400 * 7, "SECONDS",
       "longest a pull may wait for its version (clients usually set a shorter deadline)"},
      {"tls-cert", PX_FLAG_STR, &cfg->tls_cert, 0, 0, "FILE",
       "PEM certificate chain: serve TLS (needs --tls-key)"},
      {"tls-key", PX_FLAG_STR, &cfg->tls_key, 0, 0, "FILE", "PEM private key of --tls-cert"},
      {"tls-client-ca", PX_FLAG_STR, &cfg->tls_client_ca, 0, 0, "FILE",
       "PEM CA: require client certificates signed by it (mutual TLS)"},
      {"token-file", PX_FLAG_STR, &cfg->token_file, 0, 0, "FILE",
       "bearer token every call but health must carry"},
      {"metrics-listen", PX_FLAG_STR, &cfg->metrics_listen, 0, 0, "HOST:PORT",
       "serve Prometheus metrics at http(s)://HOST:PORT/metrics (port 0: a free port; off "
       "by default)"},
      {"metrics-no-auth", PX_FLAG_BOOL, &cfg->metrics_no_auth, 0, 0, NULL,
       "serve /metrics without the --token-file token"},
      {"device", PX_FLAG_STR, &cfg->device, 0, 0, "cpu|cuda",
       "where gradients are summed and the optimizer runs (cuda: GPUs with NCCL)"},
      {"gpus", PX_FLAG_STR, &cfg->gpus, 0, 0, "LIST",
       "with --device cuda: the GPUs to use, e.g. 0,1 (default: every GPU)"},
  };
  const size_t nflags = sizeof flags / sizeof flags[0];
  int rc = px_flags_parse(flags, nflags, argc, argv, NULL, err, errlen);
  if (rc == 1) {
    px_flags_usage(stdout, "paramex-server", SYNOPSIS, flags, nflags);
    return 1;
  }
  if (rc == 0) rc = adopt_place(cfg, argc, argv, err, errlen);
  if (rc == 0) rc = check(cfg, err, errlen);
  if (rc == 2) px_str_oneline(err); /* values are quoted as given */
  return rc;
}

/* --gpus LIST, here with the other flags (the flag fuzz target needs no backend). */
int px_gpu_list_parse(const char* s, int* ids, uint32_t cap, uint32_t* n, char* err,
                       size_t errlen) {
  uint32_t k = 0;
  const char* p = s;
  if (!*p) {
    snprintf(err, errlen, "--gpus: empty list (want device numbers such as 0,1)");
    return -1;
  }
  for (;;) {
    char* end;
    errno = 0;
    long v = *p >= '0' && *p <= '9' ? strtol(p, &end, 10) : -1;
    if (v < 0 || errno != 0 || v > 1023 || (end != p && *end != ',' && *end != 0)) {
      size_t len = strcspn(p, ",");
      snprintf(err, errlen, "--gpus: '%.*s' is not a device number (want a list such as 0,1)",
               (int)(len > 40 ? 40 : len), p);
      return -1;
    }
    for (uint32_t i = 0; i < k; i++)
      if (ids[i] == (int)v) {
        snprintf(err, errlen, "--gpus: device %ld is listed twice", v);
        return -1;
      }
    if (k == cap) {
      snprintf(err, errlen, "--gpus: more than %u devices", cap);
      return -1;
    }
    ids[k++] = (int)v;
    if (*end == 0) break;
    p = end + 1;
  }
  *n = k;
  return 0;
}
