/* Unit tests of client/op.c (op.h, and pmx_op_wait of paramex.h) against real
 * paramex-server processes: pmx_op_wait(NULL); pmx_op_wait's retries of UNAVAILABLE with
 * back-off: a push to a server that cannot be reached is retried ("retrying" logged) and
 * succeeds once the server is reachable again (through a gate, a loopback forwarder of
 * this file that stops and resumes on the same port), counted once; a retry timeout
 * spent gives UNAVAILABLE (pushes and pulls); a server restarted from its checkpoint on
 * the same port gives PMX_ERR_ABORTED with the server's message and the client joined it
 * again (new incarnation, the new server id; the training resumes bit-exact from the
 * restored version), also when the push was being retried while the server was down; and
 * cancelling a parked pull; pmx_client_destroy cancelling a parked pull, waiting for it and
 * freeing the ops never waited for. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "errors.h"
#include "harness.h"
#include "op.h"
#include "paramex/paramex.h"
#include "rpc/rpc_client.h"
#include "tensor.h"

#define SRV_START_MS 30000
#define SRV_STOP_MS 30000
#define LR 0.5f
#define N 4096 /* 4 chunks of 1024 */

static char g_dir[512];

static void expect_st(const char* what, pmx_status st, pmx_status want) {
  if (st != want)
    fail_msg("%s: %s (%d; '%s'), want %s (%d)", what, pmx_strerror(st), (int)st, pmx_last_error(),
             pmx_strerror(want), (int)want);
}

static void expect_error_has(const char* what, const char* needle) {
  if (!strstr(pmx_last_error(), needle))
    fail_msg("%s: last error '%s' does not contain '%s'", what, pmx_last_error(), needle);
}

static int group_setup(void** state) {
  (void)state;
  px_rpc_init();
  return px_h_mkdtemp(g_dir, sizeof g_dir);
}

static int group_teardown(void** state) {
  (void)state;
  px_h_rmtree(g_dir);
  px_rpc_shutdown();
  return 0;
}

static int teardown(void** state) {
  (void)state;
  pmx_set_log_callback(NULL, NULL, PMX_LOG_ERROR);
  px_h_kill_all();
  return 0;
}

/* listen NULL: an ephemeral port; ckdir NULL: no checkpoints */
static void server_start(px_h_server* s, const char* listen, const char* ckdir) {
  char err[512];
  const char* args[16] = {"--workers", "1", "--lr", "0.5", "--chunk-bytes", "4K", "--log-level", "warn"};
  size_t n = 8;
  if (ckdir) {
    args[n++] = "--checkpoint-dir";
    args[n++] = ckdir;
  }
  args[n] = NULL;
  if (px_h_server_start_ex(s, listen, args, NULL, -1, SRV_START_MS, err, sizeof err) != 0)
    fail_msg("server: %s", err);
}

static void server_stop(px_h_server* s) {
  int ws = 0;
  if (px_h_server_stop(s, SRV_STOP_MS, &ws, NULL) != 0) fail_msg("the server did not stop");
  char d[96];
  if (ws != 0) fail_msg("the server %s", px_h_describe_wstatus(ws, d, sizeof d));
}

static pmx_client* client(const char* addr, int64_t retry_ms) {
  pmx_options o = {.timeout_ms = 20000, .connect_timeout_ms = 20000, .retry_timeout_ms = retry_ms};
  pmx_client* c = NULL;
  expect_st("connect", pmx_connect(addr, &o, &c), PMX_OK);
  return c;
}

static Paramex__V1__StatsResponse* stats_of(const char* addr) {
  char err[256];
  px_rpc_channel* ch = px_rpc_channel_create(addr, err, sizeof err);
  assert_non_null(ch);
  Paramex__V1__StatsResponse* st = px_h_stats(ch, err, sizeof err);
  px_rpc_channel_destroy(ch);
  if (!st) fail_msg("%s", err);
  return st;
}

static float grad_of(uint64_t step, size_t i) {
  uint32_t h = (uint32_t)(i * 2654435761u) ^ (uint32_t)(step * 977u + 5u);
  h ^= h >> 13;
  h *= 0x5bd1e995u;
  h ^= h >> 15;
  return ((float)(h % 20001u) - 10000.0f) / 1024.0f;
}

static void check_bits(const char* what, const float* got, const float* want, size_t n) {
  if (memcmp(got, want, n * sizeof *got) == 0) return;
  for (size_t i = 0; i < n; i++)
    if (memcmp(&got[i], &want[i], 4) != 0)
      fail_msg("%s: element %zu of %zu is %.9g, want %.9g", what, i, n, (double)got[i], (double)want[i]);
}

/* A worker's state: its tensor, parameters, the reference. */
typedef struct job {
  pmx_client* c;
  pmx_tensor* t;
  float p[N], ref[N], g[N];
} job;

static void job_start(job* j, const char* addr, int64_t retry_ms, pmx_join_info* info) {
  j->c = client(addr, retry_ms);
  expect_st("join", pmx_join(j->c, 0, 1, info), PMX_OK);
  for (size_t i = 0; i < N; i++) j->ref[i] = 0.125f * (float)((int)(i % 61) - 30);
  const uint64_t shape[2] = {64, 64};
  expect_st("declare", pmx_declare(j->c, "w", PMX_F32, shape, 2, j->ref, NULL, &j->t), PMX_OK);
  void* dst = j->p;
  expect_st("pull v0", pmx_pull(j->c, 1, &j->t, &dst, 0, NULL), PMX_OK);
  check_bits("v0", j->p, j->ref, N);
}

static void job_grads(job* j, uint64_t s) {
  for (size_t i = 0; i < N; i++) j->g[i] = grad_of(s, i);
}

static void job_ref_step(job* j) {
  for (size_t i = 0; i < N; i++) j->ref[i] = j->ref[i] - LR * (j->g[i] / 1.0f);
}

/* Pushes step s and pulls s+1, checking against the reference. */
static void job_step(job* j, uint64_t s) {
  job_grads(j, s);
  const void* gp = j->g;
  expect_st("push", pmx_push(j->c, s, 1, &j->t, &gp), PMX_OK);
  job_ref_step(j);
  void* dst = j->p;
  uint64_t v = 0;
  expect_st("pull", pmx_pull(j->c, 1, &j->t, &dst, s + 1, &v), PMX_OK);
  assert_int_equal(v, s + 1);
  check_bits("after a step", j->p, j->ref, N);
}

/* ---- log messages: a condition to wait on ---------------------------------------------------- */

typedef struct log_wait {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int retrying, joining;
} log_wait;

static log_wait g_lw = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};

static void on_log(void* ctx, pmx_log_level level, const char* msg) {
  log_wait* w = ctx;
  pthread_mutex_lock(&w->mu);
  if (level == PMX_LOG_WARN && strstr(msg, "retrying")) w->retrying++;
  if (level == PMX_LOG_INFO && strstr(msg, "joining again")) w->joining++;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

static void log_watch(void) {
  pthread_mutex_lock(&g_lw.mu);
  g_lw.retrying = g_lw.joining = 0;
  pthread_mutex_unlock(&g_lw.mu);
  pmx_set_log_callback(on_log, &g_lw, PMX_LOG_INFO);
}

/* Waits (at most 20 s) until a "retrying" warning was logged. */
static void wait_retrying(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 20;
  pthread_mutex_lock(&g_lw.mu);
  int rc = 0;
  while (g_lw.retrying == 0 && rc == 0) rc = pthread_cond_timedwait(&g_lw.cv, &g_lw.mu, &ts);
  int n = g_lw.retrying;
  pthread_mutex_unlock(&g_lw.mu);
  if (n == 0) fail_msg("no 'retrying' warning within 20 s");
}

/* ---- a gate: a loopback forwarder that stops and resumes on the same port ------------------- */

#define GATE_MAXC 16

typedef struct gate {
  int port, target, lfd;
  int cli[GATE_MAXC], srv[GATE_MAXC];
  pthread_t th;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool want_up, is_up, stop, failed;
} gate;

static int gate_listen(gate* g) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g->port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (bind(fd, (struct sockaddr*)&a, sizeof a) != 0 || listen(fd, 16) != 0 ||
      getsockname(fd, (struct sockaddr*)&a, &len) != 0) {
    close(fd);
    return -1;
  }
  g->port = ntohs(a.sin_port);
  return fd;
}

static void gate_close_pair(gate* g, int i) {
  close(g->cli[i]);
  close(g->srv[i]);
  g->cli[i] = g->srv[i] = -1;
}

/* Copies what is readable on from to to; false on EOF or error. */
static bool gate_pump(int from, int to) {
  char buf[65536];
  ssize_t n = read(from, buf, sizeof buf);
  if (n < 0 && errno == EINTR) return true;
  if (n <= 0) return false;
  for (ssize_t off = 0; off < n;) {
    ssize_t w = write(to, buf + off, (size_t)(n - off));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    off += w;
  }
  return true;
}

static void* gate_main(void* arg) {
  gate* g = arg;
  for (;;) {
    pthread_mutex_lock(&g->mu);
    bool stop = g->stop;
    if (!stop && g->want_up != g->is_up) {
      if (g->want_up) {
        g->lfd = gate_listen(g);
        if (g->lfd < 0) g->failed = true;
      } else {
        close(g->lfd);
        g->lfd = -1;
        for (int i = 0; i < GATE_MAXC; i++)
          if (g->cli[i] >= 0) gate_close_pair(g, i);
      }
      g->is_up = g->want_up;
      pthread_cond_broadcast(&g->cv);
    }
    pthread_mutex_unlock(&g->mu);
    if (stop) break;
    struct pollfd p[1 + 2 * GATE_MAXC];
    int np = 0;
    if (g->lfd >= 0) p[np++] = (struct pollfd){.fd = g->lfd, .events = POLLIN};
    for (int i = 0; i < GATE_MAXC; i++)
      if (g->cli[i] >= 0) {
        p[np++] = (struct pollfd){.fd = g->cli[i], .events = POLLIN};
        p[np++] = (struct pollfd){.fd = g->srv[i], .events = POLLIN};
      }
    int pr = poll(p, (nfds_t)np, 20); /* 20 ms: the loop also watches want_up and stop */
    if (pr <= 0) continue;
    int k = 0;
    if (g->lfd >= 0) {
      if (p[0].revents & POLLIN) {
        int cfd = accept4(g->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (cfd >= 0) {
          int sfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
          struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g->target)};
          a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
          int slot = -1;
          for (int i = 0; i < GATE_MAXC && slot < 0; i++)
            if (g->cli[i] < 0) slot = i;
          if (sfd >= 0 && slot >= 0 && connect(sfd, (struct sockaddr*)&a, sizeof a) == 0) {
            g->cli[slot] = cfd;
            g->srv[slot] = sfd;
          } else {
            close(cfd);
            if (sfd >= 0) close(sfd);
          }
        }
      }
      k = 1;
    }
    for (int i = 0; i < GATE_MAXC; i++) {
      if (g->cli[i] < 0) continue;
      /* pairs added by this round's accept have no pollfd yet */
      if (k + 1 >= np || p[k].fd != g->cli[i]) continue;
      bool ok = true;
      if (p[k].revents & (POLLIN | POLLHUP | POLLERR)) ok = gate_pump(g->cli[i], g->srv[i]);
      if (ok && (p[k + 1].revents & (POLLIN | POLLHUP | POLLERR))) ok = gate_pump(g->srv[i], g->cli[i]);
      k += 2;
      if (!ok) gate_close_pair(g, i);
    }
  }
  if (g->lfd >= 0) close(g->lfd);
  for (int i = 0; i < GATE_MAXC; i++)
    if (g->cli[i] >= 0) gate_close_pair(g, i);
  return NULL;
}

/* Waits (at most 10 s) until the gate is up or down as asked. */
static void gate_set(gate* g, bool up) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 10;
  pthread_mutex_lock(&g->mu);
  g->want_up = up;
  int rc = 0;
  while (g->is_up != up && rc == 0) rc = pthread_cond_timedwait(&g->cv, &g->mu, &ts);
  bool ok = g->is_up == up && !g->failed;
  pthread_mutex_unlock(&g->mu);
  if (!ok) fail_msg("the gate did not go %s (port %d)", up ? "up" : "down", g->port);
}

static void gate_start(gate* g, int target) {
  memset(g, 0, sizeof *g);
  g->target = target;
  g->lfd = -1;
  for (int i = 0; i < GATE_MAXC; i++) g->cli[i] = g->srv[i] = -1;
  pthread_mutex_init(&g->mu, NULL);
  pthread_cond_init(&g->cv, NULL);
  assert_int_equal(pthread_create(&g->th, NULL, gate_main, g), 0);
  gate_set(g, true);
}

static void gate_stop(gate* g) {
  pthread_mutex_lock(&g->mu);
  g->stop = true;
  pthread_mutex_unlock(&g->mu);
  pthread_join(g->th, NULL);
  pthread_mutex_destroy(&g->mu);
  pthread_cond_destroy(&g->cv);
}

/* pmx_op_wait on a thread of its own. */
typedef struct waiter {
  pthread_t th;
  pmx_op* op;
  pmx_status st;
  char err[PX_ERROR_LEN];
} waiter;

static void* waiter_main(void* arg) {
  waiter* w = arg;
  w->st = pmx_op_wait(w->op);
  snprintf(w->err, sizeof w->err, "%s", pmx_last_error());
  return NULL;
}

static void waiter_start(waiter* w, pmx_op* op) {
  w->op = op;
  w->st = PMX_ERR_UNKNOWN;
  assert_int_equal(pthread_create(&w->th, NULL, waiter_main, w), 0);
}

/* ---- tests ---------------------------------------------------------------------------------------- */

static void test_op_wait_null(void** state) {
  (void)state;
  expect_st("pmx_op_wait(NULL)", pmx_op_wait(NULL), PMX_ERR_INVALID_ARGUMENT);
  assert_string_equal(pmx_last_error(), "pmx_op_wait: no op");
}

static void test_push_retried_until_reachable(void** state) {
  (void)state;
  px_h_server srv;
  server_start(&srv, NULL, NULL);
  gate g;
  gate_start(&g, srv.port);
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", g.port);
  static job j;
  job_start(&j, addr, 60000, NULL);
  job_step(&j, 0);

  /* the server cannot be reached: the push is retried ... */
  gate_set(&g, false);
  log_watch();
  job_grads(&j, 1);
  const void* gp = j.g;
  pmx_op* op = NULL;
  pmx_client_stats before;
  pmx_client_get_stats(j.c, &before);
  expect_st("push_async", pmx_push_async(j.c, 1, 1, &j.t, &gp, &op), PMX_OK);
  waiter w;
  waiter_start(&w, op);
  wait_retrying();
  /* ... and succeeds once it can be reached again */
  gate_set(&g, true);
  assert_int_equal(pthread_join(w.th, NULL), 0);
  if (w.st != PMX_OK) fail_msg("the retried push: %s: %s", pmx_strerror(w.st), w.err);
  job_ref_step(&j);
  pmx_client_stats after;
  pmx_client_get_stats(j.c, &after);
  /* the failed attempt handed at least its first chunk to gRPC before it failed; the
   * retry sent all 4 */
  if (after.push_chunks - before.push_chunks < 5)
    fail_msg("%llu chunks sent for a push of 4 that was retried",
             (unsigned long long)(after.push_chunks - before.push_chunks));
  void* dst = j.p;
  uint64_t v = 0;
  expect_st("pull", pmx_pull(j.c, 1, &j.t, &dst, 2, &v), PMX_OK);
  assert_int_equal(v, 2);
  check_bits("after the retried push", j.p, j.ref, N);
  /* counted once, by the same server */
  Paramex__V1__StatsResponse* st = stats_of(srv.addr);
  assert_int_equal(st->push_chunks, 8);
  assert_int_equal(st->steps_completed, 8);
  assert_string_equal(st->server_id, j.c->server_id);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  pmx_set_log_callback(NULL, NULL, PMX_LOG_ERROR);
  pmx_client_destroy(j.c);
  gate_stop(&g);
  server_stop(&srv);
}

static void test_retry_timeout_spent(void** state) {
  (void)state;
  px_h_server srv;
  server_start(&srv, NULL, NULL);
  static job j;
  job_start(&j, srv.addr, 1500, NULL);
  server_stop(&srv);
  job_grads(&j, 0);
  const void* gp = j.g;
  int64_t t0 = px_h_now_ms();
  expect_st("push to a stopped server", pmx_push(j.c, 0, 1, &j.t, &gp), PMX_ERR_UNAVAILABLE);
  int64_t dt = px_h_now_ms() - t0;
  expect_error_has("push to a stopped server", "Push");
  expect_error_has("push to a stopped server", "UNAVAILABLE");
  /* back-off waits of 25..50, 50..100, ... ms until the next would pass 1500 ms */
  if (dt < 300 || dt > 11500)
    fail_msg("a push with retry_timeout_ms 1500 gave up after %lld ms", (long long)dt);
  pmx_client_stats s;
  pmx_client_get_stats(j.c, &s);
  /* every attempt hands its first chunk to the transport, which fails it at once */
  if (s.push_chunks < 3) fail_msg("only %llu chunks sent: the push was not retried",
                                  (unsigned long long)s.push_chunks);
  /* a pull as well; the buffer is left as it was */
  static float keep[N];
  memcpy(keep, j.p, sizeof keep);
  void* dst = j.p;
  uint64_t v = 42;
  t0 = px_h_now_ms();
  expect_st("pull from a stopped server", pmx_pull(j.c, 1, &j.t, &dst, 0, &v), PMX_ERR_UNAVAILABLE);
  dt = px_h_now_ms() - t0;
  expect_error_has("pull from a stopped server", "Pull");
  if (dt < 300 || dt > 11500)
    fail_msg("a pull with retry_timeout_ms 1500 gave up after %lld ms", (long long)dt);
  assert_int_equal(v, 42);
  check_bits("buffer after a failed pull", j.p, keep, N);
  pmx_client_destroy(j.c);
}

static void test_restart_from_checkpoint_aborted(void** state) {
  (void)state;
  char ck[700];
  snprintf(ck, sizeof ck, "%s/ck-aborted", g_dir);
  px_h_server srv;
  server_start(&srv, NULL, ck);
  static job j;
  pmx_join_info info1;
  job_start(&j, srv.addr, 60000, &info1);
  job_step(&j, 0);
  job_step(&j, 1);
  char old_id[96];
  snprintf(old_id, sizeof old_id, "%s", j.c->server_id);
  /* SIGTERM writes a final checkpoint (version 2); the new server restores it */
  char listen[64];
  snprintf(listen, sizeof listen, "127.0.0.1:%d", srv.port);
  server_stop(&srv);
  server_start(&srv, listen, ck);
  Paramex__V1__StatsResponse* st = stats_of(srv.addr);
  assert_int_equal(st->restored_version, 2);
  assert_string_not_equal(st->server_id, old_id);
  protobuf_c_message_free_unpacked(&st->base, NULL);

  log_watch();
  job_grads(&j, 2);
  const void* gp = j.g;
  expect_st("push to the restarted server", pmx_push(j.c, 2, 1, &j.t, &gp), PMX_ERR_ABORTED);
  expect_error_has("push to the restarted server", "server restarted");
  expect_error_has("push to the restarted server", old_id);
  pthread_mutex_lock(&g_lw.mu);
  int joining = g_lw.joining;
  pthread_mutex_unlock(&g_lw.mu);
  assert_int_equal(joining, 1);
  pmx_set_log_callback(NULL, NULL, PMX_LOG_ERROR);
  /* the client joined the new server: its id, a new incarnation */
  st = stats_of(srv.addr);
  assert_string_equal(j.c->server_id, st->server_id);
  assert_true(j.c->incarnation != info1.incarnation);
  assert_int_equal(st->workers_joined, 1);
  bool found = false;
  for (size_t i = 0; i < st->n_workers; i++)
    if (st->workers[i]->rank == 0) {
      found = true;
      assert_int_equal(st->workers[i]->incarnation, j.c->incarnation);
    }
  assert_true(found);
  assert_int_equal(st->push_chunks, 0); /* the refused push counted nothing */
  protobuf_c_message_free_unpacked(&st->base, NULL);

  /* resume: the version restored, then step 2 again, bit-exact */
  void* dst = j.p;
  uint64_t v = 0;
  expect_st("pull after the restart", pmx_pull(j.c, 1, &j.t, &dst, 0, &v), PMX_OK);
  assert_int_equal(v, 2);
  check_bits("restored parameters", j.p, j.ref, N);
  job_step(&j, 2);
  /* a new join reports a new incarnation */
  pmx_join_info info2;
  expect_st("join again", pmx_join(j.c, 0, 1, &info2), PMX_OK);
  assert_true(info2.incarnation != info1.incarnation);
  job_step(&j, 3);
  pmx_client_destroy(j.c);
  server_stop(&srv);
}

static void test_retried_push_across_restart_aborted(void** state) {
  (void)state;
  char ck[700];
  snprintf(ck, sizeof ck, "%s/ck-retried", g_dir);
  px_h_server srv;
  server_start(&srv, NULL, ck);
  static job j;
  job_start(&j, srv.addr, 60000, NULL);
  job_step(&j, 0);
  uint64_t inc = j.c->incarnation;
  char listen[64];
  snprintf(listen, sizeof listen, "127.0.0.1:%d", srv.port);
  server_stop(&srv);
  /* the push finds no server and is retried; the server comes back from its checkpoint */
  log_watch();
  job_grads(&j, 1);
  const void* gp = j.g;
  pmx_op* op = NULL;
  expect_st("push_async", pmx_push_async(j.c, 1, 1, &j.t, &gp, &op), PMX_OK);
  waiter w;
  waiter_start(&w, op);
  wait_retrying();
  server_start(&srv, listen, ck);
  assert_int_equal(pthread_join(w.th, NULL), 0);
  if (w.st != PMX_ERR_ABORTED) fail_msg("the retried push: %s: %s, want aborted", pmx_strerror(w.st), w.err);
  if (!strstr(w.err, "restarted")) fail_msg("the retried push's error '%s' does not say restarted", w.err);
  pmx_set_log_callback(NULL, NULL, PMX_LOG_ERROR);
  Paramex__V1__StatsResponse* st = stats_of(srv.addr);
  assert_string_equal(j.c->server_id, st->server_id);
  assert_true(j.c->incarnation != inc);
  assert_int_equal(st->restored_version, 1);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  /* resume from the restored version */
  void* dst = j.p;
  uint64_t v = 0;
  expect_st("pull", pmx_pull(j.c, 1, &j.t, &dst, 0, &v), PMX_OK);
  assert_int_equal(v, 1);
  check_bits("restored", j.p, j.ref, N);
  job_step(&j, 1);
  pmx_client_destroy(j.c);
  server_stop(&srv);
}

static void test_cancel_parked_pull(void** state) {
  (void)state;
  px_h_server srv;
  server_start(&srv, NULL, NULL);
  static job j;
  job_start(&j, srv.addr, 60000, NULL);
  void* dst = j.p;
  uint64_t v = 7;
  pmx_op* op = NULL;
  expect_st("pull_async v3", pmx_pull_async(j.c, 1, &j.t, &dst, 3, &v, &op), PMX_OK);
  int64_t t0 = px_h_now_ms();
  px_op_cancel(op);
  expect_st("wait for a cancelled pull", pmx_op_wait(op), PMX_ERR_CANCELLED);
  if (px_h_now_ms() - t0 > 5000) fail_msg("a cancelled pull took more than 5 s");
  expect_error_has("cancelled pull", "Pull");
  assert_int_equal(v, 7);
  /* cancelling a finished call does nothing */
  expect_st("pull_async v0", pmx_pull_async(j.c, 1, &j.t, &dst, 0, &v, &op), PMX_OK);
  px_op_wait_call(op);
  px_op_cancel(op);
  expect_st("wait", pmx_op_wait(op), PMX_OK);
  assert_int_equal(v, 0);
  /* the client goes on */
  job_step(&j, 0);
  pmx_client_destroy(j.c);
  server_stop(&srv);
}

/* "pmx_client_destroy: Cancels operations still running, waits for them ... Operations
 * started and not yet passed to pmx_op_wait are freed with it": a pull parked on the
 * server for a version that never comes (its deadline 20 s away) and a push that was never
 * waited for are cancelled or finished by the destroy, which returns promptly; versions[]
 * keeps what it held; the ops are freed by the client (the ASan build's leak check fails
 * this test when they are not) and the server is unharmed. */
static void test_destroy_frees_unwaited_ops(void** state) {
  (void)state;
  px_h_server srv;
  server_start(&srv, NULL, NULL);
  static job j;
  job_start(&j, srv.addr, 60000, NULL);
  void* dst = j.p;
  uint64_t v = 7;
  pmx_op* pull = NULL;
  expect_st("pull_async v3", pmx_pull_async(j.c, 1, &j.t, &dst, 3, &v, &pull), PMX_OK);
  pthread_mutex_lock(&pull->mu);
  bool done = pull->done;
  pthread_mutex_unlock(&pull->mu);
  assert_false(done); /* parked: version 3 does not exist */
  job_grads(&j, 0);
  const void* gp = j.g;
  pmx_op* push = NULL;
  expect_st("push_async", pmx_push_async(j.c, 0, 1, &j.t, &gp, &push), PMX_OK);
  int64_t t0 = px_h_now_ms();
  pmx_client_destroy(j.c);
  int64_t dt = px_h_now_ms() - t0;
  if (dt > 10000)
    fail_msg("pmx_client_destroy with a parked pull took %lld ms (the pull's deadline is 20 s)",
             (long long)dt);
  assert_int_equal(v, 7);
  /* the server is unharmed */
  Paramex__V1__StatsResponse* s = stats_of(srv.addr);
  assert_int_equal(s->workers_joined, 1);
  protobuf_c_message_free_unpacked(&s->base, NULL);
  server_stop(&srv);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_op_wait_null),
      cmocka_unit_test_teardown(test_push_retried_until_reachable, teardown),
      cmocka_unit_test_teardown(test_retry_timeout_spent, teardown),
      cmocka_unit_test_teardown(test_restart_from_checkpoint_aborted, teardown),
      cmocka_unit_test_teardown(test_retried_push_across_restart_aborted, teardown),
      cmocka_unit_test_teardown(test_cancel_parked_pull, teardown),
      cmocka_unit_test_teardown(test_destroy_frees_unwaited_ops, teardown),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
