/* Unit tests of server/config.c: defaults, every flag, PMX_* variables, bad values (one line naming the flag). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <xxhash.h>

#include "codec/checksum.h"
#include "codec/dtype.h"
#include "codec/initializer.h"
#include "codec/payload.h"
#include "codec/transform.h"
#include "rpc/rpc_base.h"
#include "util/bufpool.h"
#include "util/iov.h"
#include "util/log.h"
#include "util/taskpool.h"
#include "wire/chunk_msg.h"
#include "backend/step_io.h"
#include "config.h"
#include "service.h"

#define ARGC(a) ((int)(sizeof(a) / sizeof((a)[0])))

static const char* const env_vars[] = {
    "PMX_LISTEN", "PMX_WORKERS", "PMX_LR", "PMX_MOMENTUM", "PMX_WEIGHT_DECAY",
    "PMX_CHUNK_BYTES", "PMX_THREADS", "PMX_CQ_THREADS", "PMX_MAX_TENSORS",
    "PMX_MAX_TENSOR_BYTES", "PMX_HOLD_BYTES", "PMX_DRAIN_TIMEOUT", "PMX_LOG_LEVEL", "PMX_LOG_FORMAT",
    "PMX_HISTORY", "PMX_HISTORY_BYTES", "PMX_COMPRESSION_LEVEL", "PMX_COMPRESSION"};

static void clear_env(void) {
  for (size_t i = 0; i < sizeof env_vars / sizeof env_vars[0]; i++) unsetenv(env_vars[i]);
}

static int group_setup(void** state) {
  (void)state;
  clear_env();
  px_log_init("test", PX_LOG_WARN); /* no "declared tensor" lines */
  px_rpc_init();
  return 0;
}

static int group_teardown(void** state) {
  (void)state;
  px_rpc_shutdown();
  return 0;
}

static char g_perr[256];

/* ---- configuration ------------------------------------------------------------------------- */

/* Runs px_config_parse with stdout and stderr captured; returns its result. */
static int parse_captured(px_config* cfg, int argc, char** argv, char* out, size_t outcap,
                          char* errtext, size_t errcap) {
  FILE* fo = tmpfile();
  FILE* fe = tmpfile();
  assert_non_null(fo);
  assert_non_null(fe);
  fflush(stdout);
  fflush(stderr);
  int so = dup(1), se = dup(2);
  assert_true(so >= 0 && se >= 0);
  assert_true(dup2(fileno(fo), 1) >= 0);
  assert_true(dup2(fileno(fe), 2) >= 0);
  char perr[256] = "";
  int rc = px_config_parse(cfg, argc, argv, perr, sizeof perr);
  if (rc == 2) fprintf(stderr, "paramex-server: %s\n", perr); /* as main prints it */
  fflush(stdout);
  fflush(stderr);
  dup2(so, 1);
  dup2(se, 2);
  close(so);
  close(se);
  rewind(fo);
  rewind(fe);
  size_t n = fread(out, 1, outcap - 1, fo);
  out[n] = 0;
  n = fread(errtext, 1, errcap - 1, fe);
  errtext[n] = 0;
  fclose(fo);
  fclose(fe);
  return rc;
}

static void test_config_defaults(void** state) {
  (void)state;
  clear_env();
  char* argv[] = {"paramex-server"};
  px_config c;
  assert_int_equal(px_config_parse(&c, 1, argv, g_perr, sizeof g_perr), 0);
  assert_string_equal(c.listen, "0.0.0.0:50051");
  assert_int_equal(c.workers, 1);
  assert_true(c.lr == 0.01);
  assert_true(c.momentum == 0.0);
  assert_true(c.weight_decay == 0.0);
  assert_int_equal(c.chunk_bytes, 1u << 20);
  assert_int_equal(c.threads, px_ncpus());
  assert_int_equal(c.cq_threads, 2);
  assert_int_equal(c.max_tensors, 16384);
  assert_int_equal(c.max_tensor_bytes, 16ull << 30);
  assert_int_equal(c.hold_bytes, 256u << 20);
  assert_true(c.drain_timeout == 5.0);
  assert_string_equal(c.log_level, "info");
  assert_string_equal(c.log_format, "text");
  assert_int_equal(c.history, 2);
  assert_int_equal(c.history_bytes, 1ull << 30);
  assert_int_equal(c.compression_level, 1);
  assert_true(c.compression);
}

static void test_config_each_flag(void** state) {
  (void)state;
  clear_env();
  char* argv[] = {"paramex-server", "--listen", "127.0.0.1:0", "--workers", "7", "--lr", "0.25",
                  "--momentum", "0.9", "--weight-decay=0.001", "--chunk-bytes", "64K",
                  "--threads", "3", "--cq-threads", "4", "--max-tensors", "100",
                  "--max-tensor-bytes", "2G", "--hold-bytes", "1M", "--drain-timeout", "1.5",
                  "--log-level", "debug", "--history", "5", "--history-bytes", "64M",
                  "--compression-level", "3", "--no-compression", "--log-format", "json",
                  "--lr-schedule", "cosine", "--lr-total-steps", "100", "--lr-min", "0.01",
                  "--lr-warmup-steps", "10", "--optimizer", "nesterov"};
  px_config c;
  assert_int_equal(px_config_parse(&c, ARGC(argv), argv, g_perr, sizeof g_perr), 0);
  assert_string_equal(c.listen, "127.0.0.1:0");
  assert_int_equal(c.workers, 7);
  assert_true(c.lr == 0.25);
  assert_true(c.momentum == 0.9);
  assert_true(c.weight_decay == 0.001);
  assert_true(c.nesterov);
  assert_int_equal(c.sched.kind, PX_LR_COSINE);
  assert_true(c.sched.lr == 0.25 && c.sched.lr_min == 0.01);
  assert_int_equal(c.sched.total, 100);
  assert_int_equal(c.sched.warmup, 10);
  assert_int_equal(c.chunk_bytes, 64u << 10);
  assert_int_equal(c.threads, 3);
  assert_int_equal(c.cq_threads, 4);
  assert_int_equal(c.max_tensors, 100);
  assert_int_equal(c.max_tensor_bytes, 2ull << 30);
  assert_int_equal(c.hold_bytes, 1u << 20);
  assert_true(c.drain_timeout == 1.5);
  assert_string_equal(c.log_level, "debug");
  assert_string_equal(c.log_format, "json");
  assert_int_equal(c.history, 5);
  assert_int_equal(c.history_bytes, 64u << 20);
  assert_int_equal(c.compression_level, 3);
  assert_false(c.compression);
  /* The range ends are accepted. */
  char* edges[] = {"paramex-server", "--chunk-bytes", "1K", "--workers", "4096", "--chunk-bytes",
                   "3M", "--history", "16", "--history-bytes", "0", "--compression-level", "19",
                   "--no-compression", "--compression"};
  assert_int_equal(px_config_parse(&c, ARGC(edges), edges, g_perr, sizeof g_perr), 0);
  assert_int_equal(c.chunk_bytes, 3u << 20);
  assert_int_equal(c.workers, 4096);
  assert_int_equal(c.history, PX_MAX_HISTORY);
  assert_int_equal(c.history_bytes, 0);
  assert_int_equal(c.compression_level, 19);
  assert_true(c.compression); /* the last one wins */
  char* low[] = {"paramex-server", "--history", "0", "--compression-level", "1"};
  assert_int_equal(px_config_parse(&c, ARGC(low), low, g_perr, sizeof g_perr), 0);
  assert_int_equal(c.history, 0);
  assert_int_equal(c.compression_level, 1);
}

static void test_config_env(void** state) {
  (void)state;
  clear_env();
  setenv("PMX_WORKERS", "5", 1);
  setenv("PMX_LR", "0.5", 1);
  setenv("PMX_CHUNK_BYTES", "8K", 1);
  setenv("PMX_LISTEN", "localhost:7000", 1);
  setenv("PMX_LOG_LEVEL", "warn", 1);
  setenv("PMX_LOG_FORMAT", "JSON", 1);
  setenv("PMX_WEIGHT_DECAY", "0.125", 1);
  char* argv[] = {"paramex-server", "--workers", "3"};
  px_config c;
  int rc = px_config_parse(&c, ARGC(argv), argv, g_perr, sizeof g_perr);
  clear_env();
  assert_int_equal(rc, 0);
  assert_int_equal(c.workers, 3); /* the command line wins */
  assert_true(c.lr == 0.5);
  assert_int_equal(c.chunk_bytes, 8u << 10);
  assert_string_equal(c.listen, "localhost:7000");
  assert_string_equal(c.log_level, "warn");
  assert_string_equal(c.log_format, "JSON"); /* any case, as --log-level */
  assert_true(c.weight_decay == 0.125);

  /* The history and compression settings from the environment. */
  setenv("PMX_HISTORY", "4", 1);
  setenv("PMX_HISTORY_BYTES", "2M", 1);
  setenv("PMX_COMPRESSION_LEVEL", "2", 1);
  setenv("PMX_COMPRESSION", "false", 1);
  rc = px_config_parse(&c, 1, argv, g_perr, sizeof g_perr);
  assert_int_equal(rc, 0);
  assert_int_equal(c.history, 4);
  assert_int_equal(c.history_bytes, 2u << 20);
  assert_int_equal(c.compression_level, 2);
  assert_false(c.compression);
  char* on[] = {"paramex-server", "--compression", "--history", "1"};
  rc = px_config_parse(&c, ARGC(on), on, g_perr, sizeof g_perr); /* the command line wins */
  clear_env();
  assert_int_equal(rc, 0);
  assert_true(c.compression);
  assert_int_equal(c.history, 1);

  /* A bad environment value is an error naming the variable... */
  setenv("PMX_MAX_TENSORS", "lots", 1);
  char out[512], errt[512];
  char* plain[] = {"paramex-server"};
  rc = parse_captured(&c, 1, plain, out, sizeof out, errt, sizeof errt);
  assert_int_equal(rc, 2);
  assert_non_null(strstr(errt, "PMX_MAX_TENSORS"));
  /* ...unless the command line gives the flag. */
  char* given[] = {"paramex-server", "--max-tensors", "9"};
  rc = px_config_parse(&c, ARGC(given), given, g_perr, sizeof g_perr);
  clear_env();
  assert_int_equal(rc, 0);
  assert_int_equal(c.max_tensors, 9);
  /* chunk-bytes from the environment is checked like the flag */
  setenv("PMX_CHUNK_BYTES", "4098", 1);
  rc = parse_captured(&c, 1, plain, out, sizeof out, errt, sizeof errt);
  clear_env();
  assert_int_equal(rc, 2);
  assert_non_null(strstr(errt, "multiple of 4"));
  /* compression levels and history lengths from the environment are range checked */
  const char* const bad_env[][2] = {{"PMX_COMPRESSION_LEVEL", "0"}, {"PMX_COMPRESSION_LEVEL", "20"},
                                    {"PMX_HISTORY", "17"}, {"PMX_COMPRESSION", "maybe"}};
  for (size_t i = 0; i < sizeof bad_env / sizeof bad_env[0]; i++) {
    setenv(bad_env[i][0], bad_env[i][1], 1);
    rc = parse_captured(&c, 1, plain, out, sizeof out, errt, sizeof errt);
    clear_env();
    if (rc != 2 || !strstr(errt, bad_env[i][0]))
      fail_msg("%s=%s: rc %d, stderr '%s'", bad_env[i][0], bad_env[i][1], rc, errt);
  }
}

/* --shard / --shards / --workers / --listen from the launcher's variables
 * (launch/place.h; every convention is in unit-place): adopted only where neither the
 * flag nor PMX_* says, and a scheduler's index only where there are several shards. */
static const char* const launcher_vars[] = {
    "PMX_SHARD", "PMX_SHARDS", "SLURM_PROCID", "DMLC_ROLE", "DMLC_NUM_SERVER",
    "OMPI_COMM_WORLD_RANK", "KUBERNETES_SERVICE_HOST", "HOSTNAME", "TF_CONFIG",
    "DMLC_NUM_WORKER", "PMX_WORKERS", "PMX_LISTEN"};

static int parse_with(const char* const* kv, char** argv, int argc, px_config* c) {
  const char* host = getenv("HOSTNAME");
  char saved[256];
  snprintf(saved, sizeof saved, "%s", host ? host : "");
  for (size_t i = 0; i < sizeof launcher_vars / sizeof launcher_vars[0]; i++)
    unsetenv(launcher_vars[i]);
  for (; kv && kv[0]; kv += 2) setenv(kv[0], kv[1], 1);
  int rc = px_config_parse(c, argc, argv, g_perr, sizeof g_perr);
  for (size_t i = 0; i < sizeof launcher_vars / sizeof launcher_vars[0]; i++)
    unsetenv(launcher_vars[i]);
  if (host) setenv("HOSTNAME", saved, 1);
  return rc;
}

static void test_config_adopted_shard(void** state) {
  (void)state;
  px_config c;
  char* plain[] = {"paramex-server"};
  char* two[] = {"paramex-server", "--shards", "2"};
  char* flag[] = {"paramex-server", "--shards", "2", "--shard=0"};
  const char* slurm[] = {"SLURM_PROCID", "1", NULL};
  assert_int_equal(parse_with(slurm, plain, 1, &c), 0); /* a lone server stays shard 0 */
  assert_true(c.shard == 0 && c.shards == 1);
  assert_int_equal(parse_with(slurm, two, 3, &c), 0);
  assert_true(c.shard == 1 && c.shards == 2);
  assert_string_equal(c.shard_from, "SLURM_PROCID");
  assert_int_equal(parse_with(slurm, flag, 4, &c), 0); /* the flag wins */
  assert_true(c.shard == 0 && c.shards == 2);
  const char* mpmd[] = {"DMLC_ROLE", "server", "DMLC_NUM_SERVER", "3", "OMPI_COMM_WORLD_RANK",
                        "2", NULL};
  assert_int_equal(parse_with(mpmd, plain, 1, &c), 0);
  assert_true(c.shard == 2 && c.shards == 3);
  const char* pod[] = {"KUBERNETES_SERVICE_HOST", "10.0.0.1", "HOSTNAME", "paramex-3",
                       "PMX_SHARDS", "4", NULL};
  assert_int_equal(parse_with(pod, plain, 1, &c), 0);
  assert_true(c.shard == 3 && c.shards == 4);
  const char* deployment[] = {"KUBERNETES_SERVICE_HOST", "10.0.0.1", "HOSTNAME",
                              "paramex-7d9f8-abcde", "PMX_SHARDS", "4", NULL};
  assert_int_equal(parse_with(deployment, plain, 1, &c), 0); /* no ordinal: shard 0 */
  assert_true(c.shard == 0 && c.shards == 4);
  const char* far[] = {"SLURM_PROCID", "5", NULL};
  assert_int_equal(parse_with(far, two, 3, &c), 2);
  assert_string_equal(g_perr, "SLURM_PROCID 5 is not below --shards 2 (shards are numbered "
                              "from 0)");
  const char* bad[] = {"SLURM_PROCID", "x1", NULL};
  assert_int_equal(parse_with(bad, two, 3, &c), 2);
  assert_non_null(strstr(g_perr, "SLURM_PROCID=x1 is not a number"));
}

/* A TF_CONFIG ps task: its shard, the shard count, the workers (chief + workers) and its
 * own port; ps-lite's DMLC_NUM_WORKER; flags and PMX_* first; bad ones exit 2. */
static void test_config_adopted_tf_config(void** state) {
  (void)state;
  px_config c;
  char* plain[] = {"paramex-server"};
  char* flags[] = {"paramex-server", "--listen", "127.0.0.1:0", "--workers", "2", "--shard",
                   "0", "--shards", "2"};
  const char* ps1[] = {"TF_CONFIG", "{\"cluster\": {\"chief\": [\"c:2222\"], \"worker\": "
                       "[\"w0:2222\", \"w1:2222\"], \"ps\": [\"p0:2222\", \"p1:2223\"]}, "
                       "\"task\": {\"type\": \"ps\", \"index\": 1}}", NULL};
  assert_int_equal(parse_with(ps1, plain, 1, &c), 0);
  assert_true(c.shard == 1 && c.shards == 2 && c.workers == 3);
  assert_string_equal(c.shard_from, "TF_CONFIG");
  assert_string_equal(c.workers_from, "TF_CONFIG");
  assert_string_equal(c.listen, "0.0.0.0:2223");
  assert_int_equal(parse_with(ps1, flags, 9, &c), 0); /* the flags win */
  assert_true(c.shard == 0 && c.shards == 2 && c.workers == 2);
  assert_string_equal(c.listen, "127.0.0.1:0");
  assert_string_equal(c.listen_adopted, "");
  const char* ps1_pmx[] = {"TF_CONFIG", ps1[1], "PMX_LISTEN", "127.0.0.1:7", "PMX_WORKERS", "5",
                           NULL};
  assert_int_equal(parse_with(ps1_pmx, plain, 1, &c), 0);
  assert_string_equal(c.listen, "127.0.0.1:7");
  assert_int_equal(c.workers, 5);
  /* a worker task's TF_CONFIG says nothing about a server */
  const char* worker[] = {"TF_CONFIG", "{\"cluster\": {\"worker\": [\"w0:1\"]}, "
                          "\"task\": {\"type\": \"worker\", \"index\": 0}}", NULL};
  assert_int_equal(parse_with(worker, plain, 1, &c), 0);
  assert_true(c.shard == 0 && c.shards == 1 && c.workers == 1);
  assert_string_equal(c.listen, "0.0.0.0:50051");
  const char* dmlc[] = {"DMLC_ROLE", "server", "DMLC_NUM_WORKER", "6", NULL};
  assert_int_equal(parse_with(dmlc, plain, 1, &c), 0);
  assert_int_equal(c.workers, 6);
  assert_string_equal(c.workers_from, "DMLC_NUM_WORKER");
  const char* too_many[] = {"DMLC_ROLE", "server", "DMLC_NUM_WORKER", "5000", NULL};
  assert_int_equal(parse_with(too_many, plain, 1, &c), 2);
  assert_string_equal(g_perr, "5000 workers by DMLC_NUM_WORKER: --workers is 1..4096");
  const char* bad[] = {"TF_CONFIG", "{\"cluster\": 1}", NULL};
  assert_int_equal(parse_with(bad, plain, 1, &c), 2);
  assert_string_equal(g_perr, "TF_CONFIG has no \"cluster\" object");
  const char* conflict[] = {"TF_CONFIG", ps1[1], "DMLC_ROLE", "server", "DMLC_NUM_WORKER", "4",
                            NULL};
  assert_int_equal(parse_with(conflict, plain, 1, &c), 2);
  assert_string_equal(g_perr, "the worker count is 4 by DMLC_NUM_WORKER but 3 by TF_CONFIG: "
                              "unset one of them (or set PMX_WORKERS, which wins)");
}

static void test_config_bad_values(void** state) {
  (void)state;
  clear_env();
  const struct {
    const char* flag;
    const char* value;
    const char* mention;
  } bad[] = {
      {"--workers", "0", "--workers"},
      {"--workers", "4097", "--workers"},
      {"--workers", "abc", "--workers"},
      {"--workers", "-1", "--workers"},
      {"--lr", "x", "--lr"},
      {"--lr", "-0.5", "--lr"},
      {"--lr", "nan", "--lr"},
      {"--momentum", "1", "--momentum"},
      {"--weight-decay", "1001", "--weight-decay"},
      {"--chunk-bytes", "512", "--chunk-bytes"},
      {"--chunk-bytes", "4M", "--chunk-bytes"},
      {"--chunk-bytes", "1001", "--chunk-bytes"},
      {"--chunk-bytes", "1026", "multiple of 4"},
      {"--chunk-bytes=4098", NULL, "multiple of 4"},
      {"--chunk-bytes", "4Q", "--chunk-bytes"},
      {"--threads", "0", "--threads"},
      {"--cq-threads", "65", "--cq-threads"},
      {"--max-tensors", "0", "--max-tensors"},
      {"--max-tensor-bytes", "2", "--max-tensor-bytes"},
      {"--drain-timeout", "-1", "--drain-timeout"},
      {"--log-level", "loud", "--log-level"},
      {"--log-format", "xml", "--log-format: 'xml' is not text or json"},
      {"--lr-schedule", "exp", "--lr-schedule: 'exp' is not constant, step, cosine or linear-warmup"},
      {"--lr-schedule", "step", "--lr-schedule step needs --lr-step-size N (N >= 1)"},
      {"--lr-schedule", "cosine", "--lr-schedule cosine needs --lr-total-steps N (N >= 1)"},
      {"--lr-schedule", "linear-warmup", "--lr-schedule linear-warmup needs --lr-warmup-steps"},
      {"--lr-gamma", "2", "--lr-gamma"},
      {"--optimizer", "adam", "--optimizer: 'adam' is not sgd, momentum, nesterov, adagrad or rmsprop"},
      {"--eps", "0", "--eps"},
      {"--alpha", "1", "--alpha"},
      {"--optimizer", "nesterov", "--optimizer nesterov needs --momentum F (F > 0)"},
      {"--lr-step-size", "-3", "--lr-step-size"},
      {"--log-format", "", "--log-format"},
      {"--listen", "nocolon", "--listen"},
      {"--listen", ":50051", "--listen"},
      {"--bogus", "1", "--bogus"},
      {"--history", "17", "--history"},
      {"--history", "-1", "--history"},
      {"--history-bytes", "lots", "--history-bytes"},
      {"--compression-level", "0", "--compression-level"},
      {"--compression-level", "20", "--compression-level"},
      {"--compression-level", "-1", "--compression-level"},
      {"--no-compression=1", NULL, "takes no value"},
      {"--no-history", "3", "--no-history"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char* argv[] = {"paramex-server", (char*)bad[i].flag, (char*)bad[i].value};
    px_config c;
    char out[512], errt[512];
    int rc = parse_captured(&c, bad[i].value ? 3 : 2, argv, out, sizeof out, errt, sizeof errt);
    if (rc != 2) fail_msg("%s %s: returned %d, want 2", bad[i].flag, bad[i].value, rc);
    if (!strstr(errt, bad[i].mention))
      fail_msg("%s: stderr '%s' does not name the problem", bad[i].flag, errt);
    /* exactly one line */
    char* nl = strchr(errt, '\n');
    if (!nl || nl[1] != 0)
      fail_msg("%s: stderr is not one line: '%s'", bad[i].flag, errt);
    assert_int_equal(out[0], 0);
  }
  /* A missing value, a positional argument. */
  char* missing[] = {"paramex-server", "--workers"};
  char* positional[] = {"paramex-server", "extra"};
  px_config c;
  char out[4096], errt[512];
  assert_int_equal(parse_captured(&c, ARGC(missing), missing, out, sizeof out, errt, sizeof errt),
                   2);
  assert_non_null(strstr(errt, "--workers"));
  assert_int_equal(
      parse_captured(&c, ARGC(positional), positional, out, sizeof out, errt, sizeof errt), 2);
  assert_non_null(strstr(errt, "extra"));
  /* --help prints the usage on stdout and returns 1. */
  char* help[] = {"paramex-server", "--help"};
  assert_int_equal(parse_captured(&c, ARGC(help), help, out, sizeof out, errt, sizeof errt), 1);
  assert_non_null(strstr(out, "usage: paramex-server"));
  assert_non_null(strstr(out, "--chunk-bytes"));
  assert_int_equal(errt[0], 0);
}

static void test_gpu_lists(void** state) {
  (void)state;
  int ids[4];
  uint32_t n = 0;
  char err[256];
  assert_int_equal(px_gpu_list_parse("0,1,3", ids, 4, &n, err, sizeof err), 0);
  assert_int_equal(n, 3);
  assert_int_equal(ids[2], 3);
  const char* bad[] = {"", "a", "0,0", "1,", ",1", "-1", "2x", "0,1,2,3,4", "99999"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    err[0] = 0;
    assert_int_equal(px_gpu_list_parse(bad[i], ids, 4, &n, err, sizeof err), -1);
    assert_non_null(strstr(err, "--gpus"));
    assert_null(strchr(err, '\n'));
  }
  px_config cfg;
  char* a1[] = {"paramex-server", "--gpus", "0"}; /* needs --device cuda */
  assert_int_equal(px_config_parse(&cfg, 3, a1, g_perr, sizeof g_perr), 2);
  assert_string_equal(g_perr, "--gpus needs --device cuda");
  char* a2[] = {"paramex-server", "--device", "tpu"};
  assert_int_equal(px_config_parse(&cfg, 3, a2, g_perr, sizeof g_perr), 2);
  char* a3[] = {"paramex-server", "--device", "cuda", "--gpus", "1,0"};
  assert_int_equal(px_config_parse(&cfg, 5, a3, g_perr, sizeof g_perr), 0);
  assert_int_equal(cfg.ngpus, 2);
  assert_int_equal(cfg.gpu_ids[0], 1);
}

/* A value with a newline (or any control character) still gives a one-line error. */
static void test_config_error_one_line(void** state) {
  (void)state;
  clear_env();
  px_config c;
  char* a1[] = {"paramex-server", "--workers", "3\nsecond line"};
  assert_int_equal(px_config_parse(&c, 3, a1, g_perr, sizeof g_perr), 2);
  assert_string_equal(g_perr, "--workers: '3?second line' is not an unsigned integer");
  char* a2[] = {"paramex-server", "--listen", "no\tport"};
  assert_int_equal(px_config_parse(&c, 3, a2, g_perr, sizeof g_perr), 2);
  assert_string_equal(g_perr, "--listen: 'no?port' is not HOST:PORT");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_config_defaults),
      cmocka_unit_test(test_config_each_flag),
      cmocka_unit_test(test_config_env),
      cmocka_unit_test(test_config_adopted_shard),
      cmocka_unit_test(test_config_adopted_tf_config),
      cmocka_unit_test(test_config_bad_values),
      cmocka_unit_test(test_gpu_lists),
      cmocka_unit_test(test_config_error_one_line),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
