/* Unit tests of client/errors.c (errors.h, and pmx_strerror / pmx_last_error /
 * pmx_set_log_callback of paramex.h): a distinct static name for every status and
 * "unknown status" for the rest, the calling thread's last error (per thread, px_fail's
 * formatting and truncation), the mapping of transport statuses (px_from_rpc), and the
 * log callback: library messages of level <= max_level reach it with its ctx (a chunk
 * that fails its checksum through the corrupting proxy logs a warning naming the tensor;
 * a push to a server that is down logs "retrying"), nothing above max_level, nothing
 * after fn NULL; one message at a time from several library threads while another thread
 * changes the callback; a one-line last error from a failure of every function (kept by
 * later successes); and nothing written to stdout or stderr by the library. The log tests
 * run against a real paramex-server. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "codec/initializer.h"
#include "corrupt_proxy.h"
#include "errors.h"
#include "harness.h"
#include "paramex/paramex.h"
#include "rpc/rpc_base.h"

#define SRV_START_MS 30000
#define SRV_STOP_MS 30000

static void expect_st(const char* what, pmx_status st, pmx_status want) {
  if (st != want)
    fail_msg("%s: %s (%d; '%s'), want %s (%d)", what, pmx_strerror(st), (int)st, pmx_last_error(),
             pmx_strerror(want), (int)want);
}

static int teardown(void** state) {
  (void)state;
  pmx_set_log_callback(NULL, NULL, PMX_LOG_ERROR);
  px_h_kill_all();
  return 0;
}

/* ---- pmx_strerror ------------------------------------------------------------------------ */

static const pmx_status all_statuses[] = {
    PMX_OK, PMX_ERR_CANCELLED, PMX_ERR_UNKNOWN, PMX_ERR_INVALID_ARGUMENT,
    PMX_ERR_DEADLINE_EXCEEDED, PMX_ERR_NOT_FOUND, PMX_ERR_ALREADY_EXISTS,
    PMX_ERR_PERMISSION_DENIED, PMX_ERR_RESOURCE_EXHAUSTED, PMX_ERR_FAILED_PRECONDITION,
    PMX_ERR_ABORTED, PMX_ERR_OUT_OF_RANGE, PMX_ERR_UNIMPLEMENTED, PMX_ERR_INTERNAL,
    PMX_ERR_UNAVAILABLE, PMX_ERR_DATA_LOSS, PMX_ERR_UNAUTHENTICATED, PMX_ERR_NO_MEMORY,
    PMX_ERR_PROTOCOL};
#define NSTATUS (sizeof all_statuses / sizeof all_statuses[0])

static void test_strerror_distinct(void** state) {
  (void)state;
  for (size_t i = 0; i < NSTATUS; i++) {
    const char* s = pmx_strerror(all_statuses[i]);
    assert_non_null(s);
    if (!*s) fail_msg("pmx_strerror(%d) is empty", (int)all_statuses[i]);
    if (strcmp(s, "unknown status") == 0)
      fail_msg("pmx_strerror(%d) is 'unknown status' for a status of paramex.h", (int)all_statuses[i]);
    if (strchr(s, '\n')) fail_msg("pmx_strerror(%d) has a newline", (int)all_statuses[i]);
    /* static: the same pointer every time */
    assert_ptr_equal(s, pmx_strerror(all_statuses[i]));
    for (size_t j = 0; j < i; j++)
      if (strcmp(s, pmx_strerror(all_statuses[j])) == 0)
        fail_msg("pmx_strerror(%d) and pmx_strerror(%d) are both '%s'", (int)all_statuses[i],
                 (int)all_statuses[j], s);
  }
  /* the example of paramex.h */
  assert_string_equal(pmx_strerror(PMX_ERR_INVALID_ARGUMENT), "invalid argument");
}

static void test_strerror_pinned_values(void** state) {
  (void)state;
  /* "The values are pinned; the first ones equal gRPC status codes." */
  for (int i = 0; i <= 16; i++) assert_int_equal((int)all_statuses[i], i);
  assert_int_equal(PMX_ERR_NO_MEMORY, 100);
  assert_int_equal(PMX_ERR_PROTOCOL, 101);
  assert_int_equal(PMX_LOG_ERROR, 0);
  assert_int_equal(PMX_LOG_WARN, 1);
  assert_int_equal(PMX_LOG_INFO, 2);
  assert_int_equal(PMX_LOG_DEBUG, 3);
}

static void test_strerror_unknown(void** state) {
  (void)state;
  const int unknown[] = {-1, 17, 18, 50, 99, 102, 1000, -100000, 0x7fffffff};
  for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
    const char* s = pmx_strerror((pmx_status)unknown[i]);
    assert_non_null(s);
    if (strcmp(s, "unknown status") != 0)
      fail_msg("pmx_strerror(%d) = '%s', want 'unknown status'", unknown[i], s);
  }
}

/* ---- pmx_last_error ------------------------------------------------------------------------ */

typedef struct thread_check {
  char initial[PX_ERROR_LEN];
  char after[PX_ERROR_LEN];
  pmx_status returned;
} thread_check;

static void* other_thread(void* arg) {
  thread_check* t = arg;
  snprintf(t->initial, sizeof t->initial, "%s", pmx_last_error());
  t->returned = px_fail(PMX_ERR_NOT_FOUND, "thread %d's own error", 2);
  snprintf(t->after, sizeof t->after, "%s", pmx_last_error());
  return NULL;
}

static void test_last_error_per_thread(void** state) {
  (void)state;
  assert_int_equal(px_fail(PMX_ERR_INTERNAL, "main %s %d", "thread", 1), PMX_ERR_INTERNAL);
  assert_string_equal(pmx_last_error(), "main thread 1");
  assert_ptr_equal(pmx_last_error(), px_last_error_buf());
  thread_check t;
  memset(&t, 0x55, sizeof t);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, other_thread, &t), 0);
  assert_int_equal(pthread_join(th, NULL), 0);
  assert_string_equal(t.initial, ""); /* a new thread has no error */
  assert_int_equal(t.returned, PMX_ERR_NOT_FOUND);
  assert_string_equal(t.after, "thread 2's own error");
  assert_string_equal(pmx_last_error(), "main thread 1"); /* untouched by the other thread */
  /* overwritten by the next failure */
  px_fail(PMX_ERR_UNKNOWN, "second");
  assert_string_equal(pmx_last_error(), "second");
}

static void test_last_error_truncated(void** state) {
  (void)state;
  char big[2 * PX_ERROR_LEN];
  memset(big, 'x', sizeof big - 1);
  big[sizeof big - 1] = 0;
  assert_int_equal(px_fail(PMX_ERR_DATA_LOSS, "%s", big), PMX_ERR_DATA_LOSS);
  assert_int_equal(strlen(pmx_last_error()), PX_ERROR_LEN - 1);
  assert_int_equal(px_fail(PMX_OK, "%s", ""), PMX_OK);
  assert_string_equal(pmx_last_error(), "");
}

static void test_last_error_of_library_call(void** state) {
  (void)state;
  pmx_client* c = (pmx_client*)(uintptr_t)0x1;
  expect_st("pmx_connect(NULL)", pmx_connect(NULL, NULL, &c), PMX_ERR_INVALID_ARGUMENT);
  assert_ptr_equal(c, (pmx_client*)(uintptr_t)0x1); /* nothing written on error */
  assert_string_equal(pmx_last_error(), "pmx_connect: no address (give HOST:PORT, a "
                                        "comma-separated list of shards, or set PMX_SERVERS or TF_CONFIG)");
  /* TF_CONFIG's cluster.ps where PMX_SERVERS is unset; a malformed one refused by name */
  unsetenv("PMX_SERVERS");
  setenv("TF_CONFIG", "{\"cluster\": {\"ps\": [\"127.0.0.1:1\", \"127.0.0.1:2\"]}}", 1);
  expect_st("pmx_connect(NULL), TF_CONFIG", pmx_connect(NULL, NULL, &c), PMX_OK);
  pmx_client_destroy(c);
  c = (pmx_client*)(uintptr_t)0x1;
  setenv("TF_CONFIG", "{\"cluster\": {\"ps\": [\"127.0.0.1\"]}}", 1);
  expect_st("pmx_connect(NULL), bad TF_CONFIG", pmx_connect(NULL, NULL, &c),
            PMX_ERR_INVALID_ARGUMENT);
  assert_ptr_equal(c, (pmx_client*)(uintptr_t)0x1);
  assert_string_equal(pmx_last_error(), "pmx_connect: TF_CONFIG: cluster.ps[0] is not a "
                                        "\"host:port\" string (port 1..65535)");
  unsetenv("TF_CONFIG");
  expect_st("pmx_op_wait(NULL)", pmx_op_wait(NULL), PMX_ERR_INVALID_ARGUMENT);
  assert_string_equal(pmx_last_error(), "pmx_op_wait: no op");
}

/* "Every function returning pmx_status returns PMX_OK (0) or an error, and then
 * pmx_last_error() holds a one-line message": one failure of each, from a cleared message. */
static void expect_message(const char* what, pmx_status st) {
  if (st == PMX_OK) fail_msg("%s: PMX_OK, want an error", what);
  const char* m = pmx_last_error();
  if (!m || !*m) fail_msg("%s: %s with an empty pmx_last_error()", what, pmx_strerror(st));
  if (strchr(m, '\n')) fail_msg("%s: pmx_last_error() '%s' is not one line", what, m);
}

static void test_last_error_of_every_function(void** state) {
  (void)state;
  float g[4] = {0};
  const void* gp = g;
  void* dst = g;
  pmx_tensor* t = NULL;
  pmx_op* op = NULL;
#define CHECK_FAILS(call)          \
  do {                             \
    px_fail(PMX_OK, "%s", "");     \
    expect_message(#call, (call)); \
  } while (0)
  CHECK_FAILS(pmx_connect(NULL, NULL, NULL));
  CHECK_FAILS(pmx_join(NULL, 0, 1, NULL));
  CHECK_FAILS(pmx_declare(NULL, "x", PMX_F32, NULL, 0, NULL, NULL, &t));
  CHECK_FAILS(pmx_push(NULL, 0, 1, &t, &gp));
  CHECK_FAILS(pmx_pull(NULL, 1, &t, &dst, 0, NULL));
  CHECK_FAILS(pmx_pull_as(NULL, 1, &t, &dst, PMX_BF16, 0, NULL));
  CHECK_FAILS(pmx_push_async(NULL, 0, 1, &t, &gp, &op));
  CHECK_FAILS(pmx_pull_async(NULL, 1, &t, &dst, 0, NULL, &op));
  CHECK_FAILS(pmx_pull_as_async(NULL, 1, &t, &dst, PMX_BF16, 0, NULL, &op));
  CHECK_FAILS(pmx_push_pull(NULL, 0, 1, &t, &gp, &dst, NULL));
  CHECK_FAILS(pmx_tensor_set_push_compression(NULL, PMX_PUSH_ZSTD, 0));
  CHECK_FAILS(pmx_op_wait(NULL));
  /* failures reported by the transport: a server that is not there */
  pmx_options o = {.timeout_ms = 2000, .connect_timeout_ms = 300, .retry_timeout_ms = 100};
  pmx_client* c = NULL;
  expect_st("connect", pmx_connect("127.0.0.1:1", &o, &c), PMX_OK);
  CHECK_FAILS(pmx_join(c, 0, 1, NULL));
  const uint64_t shape[1] = {4};
  CHECK_FAILS(pmx_declare(c, "x", PMX_F32, shape, 1, NULL, NULL, &t));
#undef CHECK_FAILS
  assert_null(t); /* nothing written */
  assert_null(op);
  /* a success does not clear the message: only the next failure overwrites it */
  px_fail(PMX_ERR_INTERNAL, "kept until the next failure");
  pmx_client* c2 = NULL;
  expect_st("connect", pmx_connect("127.0.0.1:1", NULL, &c2), PMX_OK);
  pmx_client_destroy(c2);
  assert_string_equal(pmx_last_error(), "kept until the next failure");
  pmx_client_destroy(c);
}

/* pmx_join's PMX_FROM_ENV through the real environment: PMX_RANK / PMX_WORLD_SIZE, each
 * refused by name when unset or not a number before any call, then taken as given (the
 * server checks them); pmx_env_rank the same, TF_CONFIG among them; the conventions
 * themselves: unit-place. */
static void test_join_from_env(void** state) {
  (void)state;
  char err[512];
  const char* args[] = {"--workers", "2", "--log-level", "warn", NULL};
  px_h_server srv;
  if (px_h_server_start(&srv, args, NULL, SRV_START_MS, err, sizeof err) != 0)
    fail_msg("server: %s", err);
  pmx_options o = {.timeout_ms = 20000, .connect_timeout_ms = 20000};
  pmx_client* c = NULL;
  expect_st("connect", pmx_connect(srv.addr, &o, &c), PMX_OK);
  unsetenv("PMX_RANK");
  setenv("PMX_WORLD_SIZE", "2", 1);
  assert_int_equal(pmx_join(c, PMX_FROM_ENV, PMX_FROM_ENV, NULL), PMX_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(pmx_last_error(), "rank PMX_FROM_ENV, but no variable gives it "
                                           "(PMX_RANK, DMLC_WORKER_ID with DMLC_ROLE=worker, "
                                           "TF_CONFIG of a chief or worker task, RANK, "
                                           "OMPI_COMM_WORLD_RANK, PMIX_RANK, PMI_RANK, "
                                           "SLURM_PROCID, JOB_COMPLETION_INDEX)"));
  setenv("PMX_RANK", "1x", 1);
  assert_int_equal(pmx_join(c, PMX_FROM_ENV, 2, NULL), PMX_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(pmx_last_error(), "PMX_RANK=1x is not a number"));
  setenv("PMX_RANK", "1", 1);
  setenv("PMX_WORLD_SIZE", "-2", 1);
  assert_int_equal(pmx_join(c, PMX_FROM_ENV, PMX_FROM_ENV, NULL), PMX_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(pmx_last_error(), "PMX_WORLD_SIZE=-2 is not a number"));
  setenv("PMX_WORLD_SIZE", "2", 1);
  pmx_join_info info = {0};
  expect_st("join", pmx_join(c, PMX_FROM_ENV, PMX_FROM_ENV, &info), PMX_OK);
  assert_int_equal(info.world_size, 2);
  assert_int_equal(info.worker_id, 1);
  /* pmx_env_rank: what PMX_FROM_ENV would take, PMX_FROM_ENV where nothing says */
  uint32_t r = 7, w = 7;
  expect_st("env_rank", pmx_env_rank(&r, &w), PMX_OK);
  assert_true(r == 1 && w == 2);
  unsetenv("PMX_RANK");
  unsetenv("PMX_WORLD_SIZE");
  expect_st("env_rank", pmx_env_rank(&r, &w), PMX_OK);
  assert_true(r == PMX_FROM_ENV && w == PMX_FROM_ENV);
  setenv("TF_CONFIG", "{\"cluster\": {\"worker\": [\"w0:1\", \"w1:1\", \"w2:1\"]}, "
         "\"task\": {\"type\": \"worker\", \"index\": 2}}", 1);
  expect_st("env_rank", pmx_env_rank(&r, &w), PMX_OK);
  assert_true(r == 2 && w == 3);
  setenv("RANK", "1", 1);
  r = w = 7;
  assert_int_equal(pmx_env_rank(&r, &w), PMX_ERR_INVALID_ARGUMENT);
  assert_string_equal(pmx_last_error(), "pmx_env_rank: the rank is 2 by TF_CONFIG but 1 by "
                      "RANK: unset one of them (or set PMX_RANK, which wins)");
  assert_true(r == 7 && w == 7); /* nothing written */
  unsetenv("RANK");
  setenv("TF_CONFIG", "{\"cluster\"", 1);
  assert_int_equal(pmx_join(c, PMX_FROM_ENV, PMX_FROM_ENV, NULL), PMX_ERR_INVALID_ARGUMENT);
  assert_non_null(strstr(pmx_last_error(), "pmx_join: TF_CONFIG is not valid JSON"));
  unsetenv("TF_CONFIG");
  assert_int_equal(pmx_env_rank(NULL, &w), PMX_ERR_INVALID_ARGUMENT);
  pmx_client_destroy(c);
  int ws = 0;
  assert_int_equal(px_h_server_stop(&srv, 20000, &ws, NULL), 0);
}

/* ---- px_from_rpc ----------------------------------------------------------------------------- */

static void test_from_rpc(void** state) {
  (void)state;
  for (int st = PX_ST_OK; st <= PX_ST_UNAUTHENTICATED; st++) assert_int_equal(px_from_rpc(st), st);
  assert_int_equal(px_from_rpc(PX_ST_UNAVAILABLE), PMX_ERR_UNAVAILABLE);
  assert_int_equal(px_from_rpc(PX_ST_ABORTED), PMX_ERR_ABORTED);
  assert_int_equal(px_from_rpc(PX_ST_DATA_LOSS), PMX_ERR_DATA_LOSS);
  const int other[] = {-1, -2, 17, 100, 101, 1 << 20};
  for (size_t i = 0; i < sizeof other / sizeof other[0]; i++)
    assert_int_equal(px_from_rpc(other[i]), PMX_ERR_UNKNOWN);
}

/* ---- pmx_set_log_callback ---------------------------------------------------------------------- */

#define MAXLOG 256

typedef struct log_sink {
  pthread_mutex_t mu;
  int n;
  int level[MAXLOG];
  char msg[MAXLOG][512];
  void* ctx_seen[MAXLOG];
} log_sink;

static log_sink g_log = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void on_log(void* ctx, pmx_log_level level, const char* message) {
  pthread_mutex_lock(&g_log.mu);
  if (g_log.n < MAXLOG) {
    g_log.level[g_log.n] = (int)level;
    snprintf(g_log.msg[g_log.n], sizeof g_log.msg[0], "%s", message);
    g_log.ctx_seen[g_log.n] = ctx;
    g_log.n++;
  }
  pthread_mutex_unlock(&g_log.mu);
}

static void log_reset(void) {
  pthread_mutex_lock(&g_log.mu);
  g_log.n = 0;
  pthread_mutex_unlock(&g_log.mu);
}

/* Messages containing needle (and each of them with ctx and a level <= max). */
static int log_count(const char* needle, void* ctx, int max_level) {
  int k = 0;
  pthread_mutex_lock(&g_log.mu);
  for (int i = 0; i < g_log.n; i++) {
    if (g_log.level[i] > max_level || g_log.level[i] < 0)
      fail_msg("message of level %d with max_level %d: '%s'", g_log.level[i], max_level, g_log.msg[i]);
    if (g_log.ctx_seen[i] != ctx) fail_msg("message '%s' came with another ctx", g_log.msg[i]);
    if (strchr(g_log.msg[i], '\n')) fail_msg("message '%s' has a newline", g_log.msg[i]);
    if (strstr(g_log.msg[i], needle)) k++;
  }
  pthread_mutex_unlock(&g_log.mu);
  return k;
}

static int log_total(void) {
  pthread_mutex_lock(&g_log.mu);
  int n = g_log.n;
  pthread_mutex_unlock(&g_log.mu);
  return n;
}

/* A server (chunks of 1024 f32), a proxy corrupting every 2nd pulled chunk, a client
 * through it with a one-chunk tensor 'logged_w' declared and pulled once: from then on
 * every full pull has its chunk corrupted once (message 2k) and healed (message 2k+1). */
typedef struct corrupt_env {
  px_h_server srv;
  px_h_proxy* proxy;
  pmx_client* c;
  pmx_tensor* t;
} corrupt_env;

#define CN 1024

static void corrupt_env_start(corrupt_env* e) {
  char err[512];
  const char* args[] = {"--workers", "1", "--chunk-bytes", "4K", "--log-level", "warn", NULL};
  if (px_h_server_start(&e->srv, args, NULL, SRV_START_MS, err, sizeof err) != 0)
    fail_msg("server: %s", err);
  int pport = 0;
  e->proxy = px_h_proxy_start(e->srv.port, 2, 1000, &pport); /* chunks, not JoinResponses */
  assert_non_null(e->proxy);
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", pport);
  pmx_options o = {.timeout_ms = 20000, .connect_timeout_ms = 20000, .compression = PMX_COMPRESSION_OFF};
  expect_st("connect", pmx_connect(addr, &o, &e->c), PMX_OK);
  expect_st("join", pmx_join(e->c, 0, 1, NULL), PMX_OK);
  const uint64_t shape[1] = {CN};
  const pmx_init init = {PMX_INIT_UNIFORM, -1.0f, 1.0f, 7};
  expect_st("declare", pmx_declare(e->c, "logged_w", PMX_F32, shape, 1, NULL, &init, &e->t), PMX_OK);
  assert_int_equal(pmx_tensor_num_chunks(e->t), 1);
  static float first[CN];
  void* dst = first;
  expect_st("first pull", pmx_pull(e->c, 1, &e->t, &dst, 0, NULL), PMX_OK);
  pmx_client_stats s;
  pmx_client_get_stats(e->c, &s);
  assert_int_equal(s.checksum_failures, 0);
}

static void corrupt_env_stop(corrupt_env* e) {
  pmx_client_destroy(e->c);
  px_h_proxy_stop(e->proxy);
  int ws = 0;
  assert_int_equal(px_h_server_stop(&e->srv, SRV_STOP_MS, &ws, NULL), 0);
}

/* A full pull of e's tensor (into the buffer it did not pull into last: refilled in full);
 * returns the checksum failures it saw. The values must equal the initializer's. */
static uint64_t full_pull(corrupt_env* e) {
  static float bufs[2][CN];
  static int turn;
  static float want[CN];
  assert_int_equal(px_init_fill_f32(want, 0, CN, PX_FILL_UNIFORM, -1.0f, 1.0f, 7), 0);
  float* buf = bufs[turn];
  turn ^= 1;
  memset(buf, 0xff, sizeof bufs[0]);
  pmx_client_stats a, b;
  pmx_client_get_stats(e->c, &a);
  void* dst = buf;
  expect_st("pull", pmx_pull(e->c, 1, &e->t, &dst, 0, NULL), PMX_OK);
  pmx_client_get_stats(e->c, &b);
  if (memcmp(buf, want, sizeof want) != 0) fail_msg("a healed pull is not bit-exact");
  return b.checksum_failures - a.checksum_failures;
}

static void test_log_checksum_warning(void** state) {
  (void)state;
  corrupt_env e;
  corrupt_env_start(&e);
  int ctx_token = 0;
  log_reset();
  pmx_set_log_callback(on_log, &ctx_token, PMX_LOG_WARN);
  uint64_t fails = full_pull(&e);
  if (fails == 0) fail_msg("no chunk failed its checksum through the corrupting proxy");
  /* every failed chunk logged a warning naming the tensor; only WARN and ERROR came */
  int warned = log_count("'logged_w'", &ctx_token, PMX_LOG_WARN);
  if ((uint64_t)warned != fails)
    fail_msg("%d warnings naming 'logged_w' for %llu checksum failures", warned,
             (unsigned long long)fails);
  pthread_mutex_lock(&g_log.mu);
  bool found_warn = false;
  for (int i = 0; i < g_log.n; i++)
    if (strstr(g_log.msg[i], "'logged_w'") && g_log.level[i] == PMX_LOG_WARN) found_warn = true;
  pthread_mutex_unlock(&g_log.mu);
  assert_true(found_warn);

  /* max_level ERROR: the warnings are filtered out */
  log_reset();
  pmx_set_log_callback(on_log, &ctx_token, PMX_LOG_ERROR);
  fails = full_pull(&e);
  assert_true(fails > 0);
  assert_int_equal(log_count("logged_w", &ctx_token, PMX_LOG_ERROR), 0);

  /* a level below the pinned range counts as ERROR */
  log_reset();
  pmx_set_log_callback(on_log, &ctx_token, (pmx_log_level)-5);
  assert_true(full_pull(&e) > 0);
  assert_int_equal(log_count("logged_w", &ctx_token, PMX_LOG_ERROR), 0);

  /* fn NULL: nothing at all */
  log_reset();
  pmx_set_log_callback(NULL, &ctx_token, PMX_LOG_DEBUG);
  assert_true(full_pull(&e) > 0);
  assert_int_equal(log_total(), 0);

  /* a new ctx replaces the old one; above the pinned range counts as DEBUG */
  int other_ctx = 0;
  log_reset();
  pmx_set_log_callback(on_log, &other_ctx, (pmx_log_level)9);
  fails = full_pull(&e);
  assert_true(fails > 0);
  assert_true(log_count("'logged_w'", &other_ctx, PMX_LOG_DEBUG) >= (int)fails);

  pmx_set_log_callback(NULL, NULL, PMX_LOG_ERROR);
  corrupt_env_stop(&e);
}

/* A client joined to a server that has stopped since (its pushes are retried for 300 ms,
 * then fail UNAVAILABLE), with a 16-float tensor `name` declared. */
static pmx_client* client_of_stopped_server(const char* name, pmx_tensor** t) {
  px_h_server srv;
  char err[512];
  const char* args[] = {"--workers", "1", "--log-level", "warn", NULL};
  if (px_h_server_start(&srv, args, NULL, SRV_START_MS, err, sizeof err) != 0)
    fail_msg("server: %s", err);
  pmx_options o = {.timeout_ms = 20000, .connect_timeout_ms = 20000, .retry_timeout_ms = 300};
  pmx_client* c = NULL;
  expect_st("connect", pmx_connect(srv.addr, &o, &c), PMX_OK);
  expect_st("join", pmx_join(c, 0, 1, NULL), PMX_OK);
  const uint64_t shape[1] = {16};
  expect_st("declare", pmx_declare(c, name, PMX_F32, shape, 1, NULL, NULL, t), PMX_OK);
  int ws = 0;
  assert_int_equal(px_h_server_stop(&srv, SRV_STOP_MS, &ws, NULL), 0);
  return c;
}

static void test_log_retrying(void** state) {
  (void)state;
  pmx_tensor* t = NULL;
  pmx_client* c = client_of_stopped_server("r", &t);

  int ctx_token = 0;
  log_reset();
  pmx_set_log_callback(on_log, &ctx_token, PMX_LOG_WARN);
  float g[16] = {0};
  const void* gp = g;
  expect_st("push to a stopped server", pmx_push(c, 0, 1, &t, &gp), PMX_ERR_UNAVAILABLE);
  if (log_count("retrying", &ctx_token, PMX_LOG_WARN) < 1)
    fail_msg("no 'retrying' message for a push to a server that is down (%d messages)", log_total());

  /* nothing after fn NULL */
  pmx_set_log_callback(NULL, NULL, PMX_LOG_DEBUG);
  log_reset();
  expect_st("push again", pmx_push(c, 0, 1, &t, &gp), PMX_ERR_UNAVAILABLE);
  assert_int_equal(log_total(), 0);
  pmx_client_destroy(c);
}

/* ---- "fn runs on the library's threads, one message at a time"; "may be called at any
 * time from any thread" ----------------------------------------------------------------------- */

#define NCL 3       /* clients, each with its own channel thread where its warnings are logged */
#define NPULLS 12   /* full pulls per client */
#define NTOGGLE 200 /* callback changes by another thread meanwhile */

static atomic_int g_inside;
static atomic_int g_overlap;
static atomic_int g_msgs;
static atomic_int g_bad_ctx;
static int g_ctx_a, g_ctx_b;

static void on_log_serial(void* ctx, pmx_log_level level, const char* message) {
  (void)level;
  (void)message;
  if (atomic_fetch_add(&g_inside, 1) != 0) atomic_fetch_add(&g_overlap, 1);
  if (ctx != &g_ctx_a && ctx != &g_ctx_b) atomic_fetch_add(&g_bad_ctx, 1);
  for (int i = 0; i < 200; i++) sched_yield(); /* widen the window another message would hit */
  atomic_fetch_add(&g_msgs, 1);
  atomic_fetch_sub(&g_inside, 1);
}

typedef struct serial_puller {
  pmx_client* c;
  pmx_tensor* t;
  float buf[2][CN];
  pmx_status st;
  char err[PX_ERROR_LEN];
} serial_puller;

static void* serial_pull_main(void* arg) {
  serial_puller* p = arg;
  p->st = PMX_OK;
  for (int i = 0; i < NPULLS && p->st == PMX_OK; i++) {
    void* dst = p->buf[i % 2]; /* alternate buffers: every pull is a full one */
    p->st = pmx_pull(p->c, 1, &p->t, &dst, 0, NULL);
    if (p->st != PMX_OK) snprintf(p->err, sizeof p->err, "%s", pmx_last_error());
  }
  return NULL;
}

static void* toggle_main(void* arg) {
  (void)arg;
  for (int i = 0; i < NTOGGLE; i++) {
    pmx_set_log_callback(on_log_serial, i % 2 ? &g_ctx_b : &g_ctx_a, PMX_LOG_DEBUG);
    sched_yield();
  }
  return NULL;
}

static void test_log_one_message_at_a_time(void** state) {
  (void)state;
  px_h_server srv;
  char err[512];
  const char* args[] = {"--workers", "1", "--chunk-bytes", "4K", "--log-level", "warn", NULL};
  if (px_h_server_start(&srv, args, NULL, SRV_START_MS, err, sizeof err) != 0)
    fail_msg("server: %s", err);
  /* a proxy per client: each client's own pulls alternate corrupted and intact */
  px_h_proxy* proxy[NCL];
  static serial_puller p[NCL];
  const uint64_t shape[1] = {CN};
  const pmx_init init = {PMX_INIT_UNIFORM, -1.0f, 1.0f, 7};
  for (int k = 0; k < NCL; k++) {
    int pport = 0;
    proxy[k] = px_h_proxy_start(srv.port, 2, 1000, &pport);
    assert_non_null(proxy[k]);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", pport);
    pmx_options o = {.timeout_ms = 20000, .connect_timeout_ms = 20000, .compression = PMX_COMPRESSION_OFF};
    p[k].c = NULL;
    expect_st("connect", pmx_connect(addr, &o, &p[k].c), PMX_OK);
    if (k == 0) expect_st("join", pmx_join(p[k].c, 0, 1, NULL), PMX_OK); /* it creates the tensor */
    expect_st("declare", pmx_declare(p[k].c, "serial_w", PMX_F32, shape, 1, NULL, &init, &p[k].t), PMX_OK);
  }
  atomic_store(&g_inside, 0);
  atomic_store(&g_overlap, 0);
  atomic_store(&g_msgs, 0);
  atomic_store(&g_bad_ctx, 0);
  pmx_set_log_callback(on_log_serial, &g_ctx_a, PMX_LOG_DEBUG);
  pthread_t th[NCL], tog;
  for (int k = 0; k < NCL; k++) assert_int_equal(pthread_create(&th[k], NULL, serial_pull_main, &p[k]), 0);
  assert_int_equal(pthread_create(&tog, NULL, toggle_main, NULL), 0);
  for (int k = 0; k < NCL; k++) assert_int_equal(pthread_join(th[k], NULL), 0);
  assert_int_equal(pthread_join(tog, NULL), 0);
  pmx_set_log_callback(NULL, NULL, PMX_LOG_ERROR);
  static float want[CN];
  assert_int_equal(px_init_fill_f32(want, 0, CN, PX_FILL_UNIFORM, -1.0f, 1.0f, 7), 0);
  uint64_t fails = 0;
  for (int k = 0; k < NCL; k++) {
    if (p[k].st != PMX_OK) fail_msg("client %d: %s: %s", k, pmx_strerror(p[k].st), p[k].err);
    if (memcmp(p[k].buf[0], want, sizeof want) || memcmp(p[k].buf[1], want, sizeof want))
      fail_msg("client %d: a healed pull is not bit-exact", k);
    pmx_client_stats cs;
    pmx_client_get_stats(p[k].c, &cs);
    fails += cs.checksum_failures;
  }
  if (fails < NCL) fail_msg("only %llu checksum failures: too few messages to test",
                            (unsigned long long)fails);
  if (atomic_load(&g_msgs) < 1) fail_msg("no message reached the callback");
  if (atomic_load(&g_overlap) != 0)
    fail_msg("%d of %d messages ran while another was in the callback", atomic_load(&g_overlap),
             atomic_load(&g_msgs));
  assert_int_equal(atomic_load(&g_bad_ctx), 0);
  /* after fn NULL: nothing */
  int before = atomic_load(&g_msgs);
  void* dst = p[0].buf[0];
  expect_st("pull after fn NULL", pmx_pull(p[0].c, 1, &p[0].t, &dst, 0, NULL), PMX_OK);
  dst = p[0].buf[1];
  expect_st("pull after fn NULL", pmx_pull(p[0].c, 1, &p[0].t, &dst, 0, NULL), PMX_OK);
  assert_int_equal(atomic_load(&g_msgs), before);
  for (int k = 0; k < NCL; k++) {
    pmx_client_destroy(p[k].c);
    px_h_proxy_stop(proxy[k]);
  }
  int ws = 0;
  assert_int_equal(px_h_server_stop(&srv, SRV_STOP_MS, &ws, NULL), 0);
}

/* ---- "libparamex never writes to stdout or stderr" ------------------------------------------- */

/* Sends fds 1 and 2 to an anonymous temporary file (tmpfile: nothing left behind, even
 * after a crash) until capture_end. No cmocka assertion may run in between (its message
 * would go to the file). */
typedef struct capture {
  int saved_out, saved_err;
  FILE* f;
} capture;

static void capture_begin(capture* k) {
  fflush(stdout);
  fflush(stderr);
  k->f = tmpfile();
  assert_non_null(k->f);
  k->saved_out = dup(1);
  k->saved_err = dup(2);
  assert_true(k->saved_out >= 0 && k->saved_err >= 0);
  assert_true(dup2(fileno(k->f), 1) == 1 && dup2(fileno(k->f), 2) == 2);
}

/* Restores fds 1 and 2; returns what was written meanwhile (its first bytes in text). */
static long capture_end(capture* k, char* text, size_t cap) {
  fflush(stdout);
  fflush(stderr);
  dup2(k->saved_out, 1);
  dup2(k->saved_err, 2);
  close(k->saved_out);
  close(k->saved_err);
  rewind(k->f);
  size_t got = fread(text, 1, cap - 1, k->f);
  text[got] = 0;
  fseek(k->f, 0, SEEK_END);
  long n = ftell(k->f);
  fclose(k->f);
  return n;
}

static void test_no_stdout_stderr(void** state) {
  (void)state;
  char text[512];
  /* chunks failing their checksum (warnings), without a callback and with one */
  corrupt_env e;
  corrupt_env_start(&e);
  static float bufs[2][CN];
  pmx_client_stats a, b;
  pmx_client_get_stats(e.c, &a);
  int ctx_token = 0;
  log_reset();
  pmx_status st[4];
  capture k;
  capture_begin(&k);
  for (int i = 0; i < 4; i++) {
    if (i == 2) pmx_set_log_callback(on_log, &ctx_token, PMX_LOG_DEBUG);
    void* dst = bufs[i % 2];
    st[i] = pmx_pull(e.c, 1, &e.t, &dst, 0, NULL);
  }
  pmx_set_log_callback(NULL, NULL, PMX_LOG_ERROR);
  long n = capture_end(&k, text, sizeof text);
  for (int i = 0; i < 4; i++) expect_st("pull through the corrupting proxy", st[i], PMX_OK);
  pmx_client_get_stats(e.c, &b);
  if (b.checksum_failures - a.checksum_failures < 2)
    fail_msg("only %llu checksum failures in 4 full pulls",
             (unsigned long long)(b.checksum_failures - a.checksum_failures));
  if (log_count("'logged_w'", &ctx_token, PMX_LOG_DEBUG) < 1)
    fail_msg("the callback got no warning (so nothing was said at all)");
  if (n != 0) fail_msg("libparamex wrote %ld bytes to stdout/stderr: '%s'", n, text);
  corrupt_env_stop(&e);

  /* a push to a server that is down (retried, then UNAVAILABLE), no callback */
  pmx_tensor* t = NULL;
  pmx_client* c = client_of_stopped_server("quiet", &t);
  float g[16] = {0};
  const void* gp = g;
  capture_begin(&k);
  pmx_status pst = pmx_push(c, 0, 1, &t, &gp);
  pmx_client_destroy(c);
  n = capture_end(&k, text, sizeof text);
  expect_st("push to a stopped server", pst, PMX_ERR_UNAVAILABLE);
  if (n != 0) fail_msg("libparamex wrote %ld bytes to stdout/stderr: '%s'", n, text);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_strerror_distinct),
      cmocka_unit_test(test_strerror_pinned_values),
      cmocka_unit_test(test_strerror_unknown),
      cmocka_unit_test(test_last_error_per_thread),
      cmocka_unit_test(test_last_error_truncated),
      cmocka_unit_test(test_last_error_of_library_call),
      cmocka_unit_test(test_last_error_of_every_function),
      cmocka_unit_test(test_join_from_env),
      cmocka_unit_test(test_from_rpc),
      cmocka_unit_test_teardown(test_log_checksum_warning, teardown),
      cmocka_unit_test_teardown(test_log_retrying, teardown),
      cmocka_unit_test_teardown(test_log_one_message_at_a_time, teardown),
      cmocka_unit_test_teardown(test_no_stdout_stderr, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
