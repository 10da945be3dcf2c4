/* Unit tests of client/exchange.c (pmx_push_pull of paramex.h) against real
 * paramex-server processes (plain SGD, lr 0.5, chunks of 1024 f32): two workers, each on
 * its own thread, exchange several steps of several tensors (some of several chunks) with
 * pmx_push_pull and get bit for bit what two workers get with pmx_push then pmx_pull on
 * another server, and what the reference computed here gives; versions are step + 1; a
 * push the server refuses (step 5 at version 0; a client that has not joined) returns its
 * error at once without a parked pull left waiting, dst untouched, and the next exchange
 * refills the buffer in full; argument errors. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "harness.h"
#include "paramex/paramex.h"

#define SRV_START_MS 30000
#define SRV_STOP_MS 30000
#define LR 0.5f
#define NT 3
#define STEPS 5
#define MAXN 3000

static const size_t g_n[NT] = {3000, 700, 2048}; /* 3, 1 and 2 chunks */
static const char* const g_names[NT] = {"a", "b", "c"};

static void expect_st(const char* what, pmx_status st, pmx_status want) {
  if (st != want)
    fail_msg("%s: %s (%d; '%s'), want %s (%d)", what, pmx_strerror(st), (int)st, pmx_last_error(),
             pmx_strerror(want), (int)want);
}

static void expect_error_has(const char* what, const char* needle) {
  if (!strstr(pmx_last_error(), needle))
    fail_msg("%s: last error '%s' does not contain '%s'", what, pmx_last_error(), needle);
}

static void server_start(px_h_server* s, const char* workers) {
  char err[512];
  const char* args[] = {"--workers", workers, "--lr", "0.5", "--chunk-bytes", "4K", "--log-level", "warn", NULL};
  if (px_h_server_start(s, args, NULL, SRV_START_MS, err, sizeof err) != 0) fail_msg("server: %s", err);
}

static void server_stop(px_h_server* s) {
  int ws = 0;
  int rc = px_h_server_stop(s, SRV_STOP_MS, &ws, NULL);
  char d[96];
  if (rc != 0 || ws != 0)
    fail_msg("server stop: %s", rc != 0 ? "it did not exit in time" : px_h_describe_wstatus(ws, d, sizeof d));
}

static int teardown(void** state) {
  (void)state;
  px_h_kill_all();
  return 0;
}

static pmx_client* joined(const char* addr, uint32_t rank, uint32_t world) {
  pmx_options o = {.timeout_ms = 20000, .connect_timeout_ms = 20000};
  pmx_client* c = NULL;
  expect_st("connect", pmx_connect(addr, &o, &c), PMX_OK);
  if (world) expect_st("join", pmx_join(c, rank, world, NULL), PMX_OK);
  return c;
}

static float grad_of(uint32_t rank, uint64_t step, size_t k, size_t i) {
  uint32_t h = (uint32_t)(i * 2654435761u) ^ (uint32_t)(rank * 40503u + step * 977u + k * 31u);
  h ^= h >> 13;
  h *= 0x5bd1e995u;
  h ^= h >> 15;
  return ((float)(h % 20001u) - 10000.0f) / 2048.0f;
}

static float init_of(size_t k, size_t i) { return 0.25f * (float)(k + 1) * (float)((int)(i % 89) - 44); }

static void check_bits(const char* what, const float* got, const float* want, size_t n) {
  if (memcmp(got, want, n * sizeof *got) == 0) return;
  for (size_t i = 0; i < n; i++) {
    uint32_t a, b;
    memcpy(&a, &got[i], 4);
    memcpy(&b, &want[i], 4);
    if (a != b)
      fail_msg("%s: element %zu of %zu is %.9g (0x%08x), want %.9g (0x%08x)", what, i, n,
               (double)got[i], a, (double)want[i], b);
  }
}

/* The parameters after STEPS steps of two workers (rank-order sum, mean, SGD in f32). */
static void reference(float ref[NT][MAXN]) {
  for (size_t k = 0; k < NT; k++)
    for (size_t i = 0; i < g_n[k]; i++) {
      float p = init_of(k, i);
      for (uint64_t s = 0; s < STEPS; s++) {
        float sum = grad_of(0, s, k, i);
        sum += grad_of(1, s, k, i);
        p = p - LR * (sum / 2.0f);
      }
      ref[k][i] = p;
    }
}

typedef struct worker {
  const char* addr;
  uint32_t rank;
  bool pipelined; /* pmx_push_pull; else pmx_push then pmx_pull */
  float params[NT][MAXN];
  float grads[NT][MAXN];
  uint64_t versions[STEPS][NT];
  pmx_status st;
  char err[PX_ERROR_LEN];
  char what[64];
} worker;

static void* worker_main(void* arg) {
  worker* w = arg;
  w->st = PMX_OK;
  pmx_options o = {.timeout_ms = 20000, .connect_timeout_ms = 20000};
  pmx_client* c = NULL;
  pmx_tensor* t[NT];
  void* dst[NT];
  const void* gp[NT];
#define TRY(call, name)                                                  \
  do {                                                                   \
    if (w->st == PMX_OK && (w->st = (call)) != PMX_OK) {                 \
      snprintf(w->err, sizeof w->err, "%s", pmx_last_error());           \
      snprintf(w->what, sizeof w->what, "%s", name);                     \
    }                                                                    \
  } while (0)
  TRY(pmx_connect(w->addr, &o, &c), "connect");
  TRY(pmx_join(c, w->rank, 2, NULL), "join");
  for (size_t k = 0; k < NT; k++) {
    for (size_t i = 0; i < g_n[k]; i++) w->params[k][i] = init_of(k, i);
    const uint64_t shape[1] = {g_n[k]};
    TRY(pmx_declare(c, g_names[k], PMX_F32, shape, 1, w->params[k], NULL, &t[k]), "declare");
    dst[k] = w->params[k];
    gp[k] = w->grads[k];
  }
  TRY(pmx_pull(c, NT, t, dst, 0, NULL), "initial pull");
  for (uint64_t s = 0; s < STEPS && w->st == PMX_OK; s++) {
    for (size_t k = 0; k < NT; k++)
      for (size_t i = 0; i < g_n[k]; i++) w->grads[k][i] = grad_of(w->rank, s, k, i);
    if (w->pipelined) {
      TRY(pmx_push_pull(c, s, NT, t, gp, dst, w->versions[s]), "push_pull");
    } else {
      TRY(pmx_push(c, s, NT, t, gp), "push");
      TRY(pmx_pull(c, NT, t, dst, s + 1, w->versions[s]), "pull");
    }
  }
  pmx_client_destroy(c);
  return NULL;
#undef TRY
}

static void run_pair(const char* addr, bool pipelined, worker* w) {
  pthread_t th[2];
  for (uint32_t r = 0; r < 2; r++) {
    memset(&w[r], 0, sizeof w[r]);
    w[r].addr = addr;
    w[r].rank = r;
    w[r].pipelined = pipelined;
    assert_int_equal(pthread_create(&th[r], NULL, worker_main, &w[r]), 0);
  }
  for (int r = 0; r < 2; r++) assert_int_equal(pthread_join(th[r], NULL), 0);
  for (int r = 0; r < 2; r++)
    if (w[r].st != PMX_OK)
      fail_msg("%s rank %d: %s: %s: %s", pipelined ? "push_pull" : "push+pull", r, w[r].what,
               pmx_strerror(w[r].st), w[r].err);
}

static void test_push_pull_equals_push_then_pull(void** state) {
  (void)state;
  px_h_server s1, s2;
  server_start(&s1, "2");
  server_start(&s2, "2");
  static worker piped[2], plain[2];
  static float ref[NT][MAXN];
  reference(ref);
  run_pair(s1.addr, true, piped);
  run_pair(s2.addr, false, plain);
  for (int r = 0; r < 2; r++)
    for (size_t k = 0; k < NT; k++) {
      char what[64];
      snprintf(what, sizeof what, "push_pull rank %d tensor %s", r, g_names[k]);
      check_bits(what, piped[r].params[k], plain[r].params[k], g_n[k]);
      check_bits(what, piped[r].params[k], ref[k], g_n[k]);
      for (uint64_t s = 0; s < STEPS; s++) {
        assert_int_equal(piped[r].versions[s][k], s + 1);
        assert_int_equal(plain[r].versions[s][k], s + 1);
      }
    }
  server_stop(&s1);
  server_stop(&s2);
}

/* pmx_push_pull_as(PMX_BF16): each step's pull is the bf16 view of the version the step
 * made, bit for bit what pmx_pull_as returns for it, on the stream (one chunk) and on the
 * calls (a tensor past the stream's 1 MiB). */
static void test_push_pull_bf16_view(void** state) {
  (void)state;
  px_h_server srv;
  server_start(&srv, "1");
  pmx_client* c = joined(srv.addr, 0, 1);
  const size_t sizes[2] = {700, 300000};
  for (int k = 0; k < 2; k++) {
    const size_t n = sizes[k];
    const uint64_t shape[1] = {n};
    char name[16];
    snprintf(name, sizeof name, "v%d", k);
    float* init = malloc(n * sizeof *init);
    float* g = malloc(n * sizeof *g);
    uint16_t* got = malloc(n * sizeof *got);
    uint16_t* want = malloc(n * sizeof *want);
    assert_true(init && g && got && want);
    for (size_t i = 0; i < n; i++) init[i] = init_of(0, i) + 1e-3f * (float)(i % 7);
    pmx_tensor* t = NULL;
    expect_st("declare", pmx_declare(c, name, PMX_F32, shape, 1, init, NULL, &t), PMX_OK);
    const void* gp = g;
    void* dst = got;
    void* wdst = want;
    for (uint64_t s = 0; s < 3; s++) {
      for (size_t i = 0; i < n; i++) g[i] = grad_of(0, s, 0, i % 3000);
      uint64_t v = 0, wv = 0;
      expect_st("push_pull_as", pmx_push_pull_as(c, s, 1, &t, &gp, &dst, PMX_BF16, &v), PMX_OK);
      assert_int_equal(v, s + 1);
      expect_st("pull_as", pmx_pull_as(c, 1, &t, &wdst, PMX_BF16, s + 1, &wv), PMX_OK);
      assert_int_equal(wv, s + 1);
      assert_memory_equal(got, want, n * sizeof *got);
    }
    free(init);
    free(g);
    free(got);
    free(want);
  }
  pmx_client_destroy(c);
  server_stop(&srv);
}

static void test_push_pull_failed_push(void** state) {
  (void)state;
  px_h_server srv;
  server_start(&srv, "1");
  pmx_client* c = joined(srv.addr, 0, 1);
  const size_t n = 3000;
  static float p[3000], g[3000], want[3000];
  for (size_t i = 0; i < n; i++) p[i] = init_of(0, i);
  const uint64_t shape[1] = {n};
  pmx_tensor* t = NULL;
  expect_st("declare", pmx_declare(c, "x", PMX_F32, shape, 1, p, NULL, &t), PMX_OK);
  void* dst = p;
  uint64_t v = 99;
  expect_st("initial pull", pmx_pull(c, 1, &t, &dst, 0, &v), PMX_OK);
  assert_int_equal(v, 0);
  for (size_t i = 0; i < n; i++) g[i] = grad_of(0, 0, 0, i);
  const void* gp = g;

  /* step 5 at version 0: the push's error, at once (the pull would wait for version 6
   * until its 20 s deadline) */
  v = 99;
  int64_t t0 = px_h_now_ms();
  expect_st("push_pull of step 5 at version 0", pmx_push_pull(c, 5, 1, &t, &gp, &dst, &v),
            PMX_ERR_OUT_OF_RANGE);
  int64_t dt = px_h_now_ms() - t0;
  expect_error_has("push_pull of step 5", "Push");
  expect_error_has("push_pull of step 5", "step 5 is ahead of version 0");
  if (dt > 5000) fail_msg("the failed push_pull took %lld ms: its pull was left parked", (long long)dt);
  assert_int_equal(v, 99);
  for (size_t i = 0; i < n; i++)
    if (p[i] != init_of(0, i)) fail_msg("dst[%zu] changed by a failed push_pull", i);

  /* the next exchanges work; the buffer is sent in full once (nothing certain in it) */
  pmx_client_stats before;
  pmx_client_get_stats(c, &before);
  for (size_t i = 0; i < n; i++) want[i] = p[i];
  for (uint64_t s = 0; s < 3; s++) {
    for (size_t i = 0; i < n; i++) {
      g[i] = grad_of(0, s, 0, i);
      want[i] = want[i] - LR * (g[i] / 1.0f);
    }
    expect_st("push_pull", pmx_push_pull(c, s, 1, &t, &gp, &dst, &v), PMX_OK);
    assert_int_equal(v, s + 1);
    check_bits("after push_pull", p, want, n);
  }
  pmx_client_stats after;
  pmx_client_get_stats(c, &after);
  assert_int_equal(after.push_chunks - before.push_chunks, 9);
  assert_int_equal(after.pull_chunks - before.pull_chunks, 9);
  assert_int_equal(after.pull_unchanged_chunks, before.pull_unchanged_chunks);
  assert_int_equal(after.checksum_failures, 0);

  /* a client that has not joined: refused at once as well */
  pmx_client* u = joined(srv.addr, 0, 0);
  pmx_tensor* ut = NULL;
  expect_st("declare", pmx_declare(u, "x", PMX_F32, shape, 1, NULL, NULL, &ut), PMX_OK);
  static float up[3000];
  void* udst = up;
  t0 = px_h_now_ms();
  expect_st("push_pull before join", pmx_push_pull(u, 3, 1, &ut, &gp, &udst, NULL),
            PMX_ERR_FAILED_PRECONDITION);
  expect_error_has("push_pull before join", "has not joined");
  if (px_h_now_ms() - t0 > 5000) fail_msg("a refused push_pull took more than 5 s");
  pmx_client_destroy(u);
  pmx_client_destroy(c);
  server_stop(&srv);
}

static void test_push_pull_arguments(void** state) {
  (void)state;
  px_h_server srv;
  server_start(&srv, "1");
  pmx_client* c = joined(srv.addr, 0, 1);
  const uint64_t shape[1] = {8};
  pmx_tensor* t = NULL;
  expect_st("declare", pmx_declare(c, "x", PMX_F32, shape, 1, NULL, NULL, &t), PMX_OK);
  float p[8], g[8] = {0};
  void* dst = p;
  void* nulld = NULL;
  const void* gp = g;
  const void* nullg = NULL;
  expect_st("no client", pmx_push_pull(NULL, 0, 1, &t, &gp, &dst, NULL), PMX_ERR_INVALID_ARGUMENT);
  expect_st("n 0", pmx_push_pull(c, 0, 0, &t, &gp, &dst, NULL), PMX_ERR_INVALID_ARGUMENT);
  expect_st("dst NULL", pmx_push_pull(c, 0, 1, &t, &gp, NULL, NULL), PMX_ERR_INVALID_ARGUMENT);
  expect_st("dst[0] NULL", pmx_push_pull(c, 0, 1, &t, &gp, &nulld, NULL), PMX_ERR_INVALID_ARGUMENT);
  expect_st("grads NULL", pmx_push_pull(c, 0, 1, &t, NULL, &dst, NULL), PMX_ERR_INVALID_ARGUMENT);
  expect_st("grads[0] NULL", pmx_push_pull(c, 0, 1, &t, &nullg, &dst, NULL), PMX_ERR_INVALID_ARGUMENT);
  expect_error_has("grads[0] NULL", "buffer 0 is NULL");
  /* nothing was sent, and a good exchange still works */
  pmx_client_stats s;
  pmx_client_get_stats(c, &s);
  assert_int_equal(s.push_chunks, 0);
  uint64_t v = 0;
  expect_st("push_pull", pmx_push_pull(c, 0, 1, &t, &gp, &dst, &v), PMX_OK);
  assert_int_equal(v, 1);
  for (int i = 0; i < 8; i++) assert_true(p[i] == 0.0f);
  pmx_client_destroy(c);
  server_stop(&srv);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_push_pull_equals_push_then_pull, teardown),
      cmocka_unit_test_teardown(test_push_pull_failed_push, teardown),
      cmocka_unit_test_teardown(test_push_pull_bf16_view, teardown),
      cmocka_unit_test_teardown(test_push_pull_arguments, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
