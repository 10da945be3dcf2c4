/* Unit tests of client/push_op.c (push_op.h, and pmx_push / pmx_push_async of paramex.h)
 * against real paramex-server processes (plain SGD, lr 0.5): pushes of several tensors,
 * some of several chunks, from two workers give bit for bit the reference computed here
 * (p - lr * ((g0 + g1) / 2) in f32); the push modes ZSTD (lossless, fewer wire bytes for
 * compressible gradients, raw when it does not pay), BF16 and BF16_ZSTD (about half the
 * wire bytes; the server sums the gradients rounded to bf16) and their min_bytes
 * threshold; gradients read in place until pmx_op_wait returns (zero copy); a repeated
 * push of a step acknowledged and counted once (PushResponse.duplicate, Stats
 * push_duplicates); refused pushes (arguments, not joined, stale incarnation, a step ahead
 * of the version, a step too old) with the server's messages; the client's push counters;
 * pushes of one client from several threads at once. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "codec/dtype.h"
#include "errors.h"
#include "harness.h"
#include "op.h"
#include "paramex/paramex.h"
#include "rpc/rpc_client.h"
#include "tensor.h"

#define SRV_START_MS 30000
#define SRV_STOP_MS 30000
#define LR 0.5f

static px_h_server g_srv;
static px_rpc_channel* g_ch; /* Stats */

static void expect_st(const char* what, pmx_status st, pmx_status want) {
  if (st != want)
    fail_msg("%s: %s (%d; '%s'), want %s (%d)", what, pmx_strerror(st), (int)st, pmx_last_error(),
             pmx_strerror(want), (int)want);
}

static void expect_error_has(const char* what, const char* needle) {
  if (!strstr(pmx_last_error(), needle))
    fail_msg("%s: last error '%s' does not contain '%s'", what, pmx_last_error(), needle);
}

static int start(const char* workers) {
  char err[512];
  const char* args[] = {"--workers", workers, "--lr", "0.5", "--chunk-bytes", "4K", "--log-level",
                        "warn", NULL};
  if (px_h_server_start(&g_srv, args, NULL, SRV_START_MS, err, sizeof err) != 0) {
    fprintf(stderr, "server: %s\n", err);
    return -1;
  }
  g_ch = px_rpc_channel_create(g_srv.addr, err, sizeof err);
  return g_ch ? 0 : -1;
}

static int setup1(void** state) {
  (void)state;
  return start("1");
}

static int setup2(void** state) {
  (void)state;
  return start("2");
}

static int teardown(void** state) {
  (void)state;
  px_rpc_channel_destroy(g_ch);
  g_ch = NULL;
  int ws = 0;
  int rc = px_h_server_stop(&g_srv, SRV_STOP_MS, &ws, NULL);
  px_h_kill_all();
  return rc == 0 && ws == 0 ? 0 : -1;
}

static int group_setup(void** state) {
  (void)state;
  px_rpc_init();
  return 0;
}

static int group_teardown(void** state) {
  (void)state;
  px_rpc_shutdown();
  return 0;
}

static pmx_client* joined(uint32_t rank, uint32_t world) {
  pmx_options o = {.timeout_ms = 30000, .connect_timeout_ms = 30000};
  pmx_client* c = NULL;
  expect_st("connect", pmx_connect(g_srv.addr, &o, &c), PMX_OK);
  expect_st("join", pmx_join(c, rank, world, NULL), PMX_OK);
  return c;
}

static pmx_tensor* declare(pmx_client* c, const char* name, uint64_t n, const float* values) {
  const uint64_t shape[1] = {n};
  pmx_tensor* t = NULL;
  expect_st(name, pmx_declare(c, name, PMX_F32, shape, 1, values, NULL, &t), PMX_OK);
  return t;
}

static Paramex__V1__StatsResponse* stats(void) {
  char err[256];
  Paramex__V1__StatsResponse* st = px_h_stats(g_ch, err, sizeof err);
  if (!st) fail_msg("%s", err);
  return st;
}

/* Deterministic gradients of (rank, step, i), some exact zeros among them. */
static float grad_of(uint32_t rank, uint64_t step, size_t i) {
  uint32_t h = (uint32_t)(i * 2654435761u) ^ (uint32_t)(rank * 40503u + step * 977u);
  h ^= h >> 13;
  h *= 0x5bd1e995u;
  h ^= h >> 15;
  if (h % 7 == 0) return 0.0f;
  return ((float)(h % 20001u) - 10000.0f) / 1024.0f;
}

/* Finite f32 of random sign, exponent (1..254) and mantissa: incompressible bytes. */
static float noise_of(size_t i) {
  uint64_t x = (uint64_t)i * 0x9e3779b97f4a7c15ull + 0x1234567ull;
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 29;
  uint32_t bits = (uint32_t)x & 0x807fffffu;
  bits |= (uint32_t)(1 + (x >> 40) % 254) << 23;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

static void fill_grads(float* g, size_t n, uint32_t rank, uint64_t step) {
  for (size_t i = 0; i < n; i++) g[i] = grad_of(rank, step, i);
}

static float bf16_round(float x) { return px_bf16_to_f32(px_f32_to_bf16(x)); }

/* The server's SGD of one step with the gradients of `world` workers (rank order). */
static void sgd_ref(float* p, const float* const* g, uint32_t world, size_t n, bool bf16) {
  for (size_t i = 0; i < n; i++) {
    float s = bf16 ? bf16_round(g[0][i]) : g[0][i];
    for (uint32_t r = 1; r < world; r++) s += bf16 ? bf16_round(g[r][i]) : g[r][i];
    float mean = s / (float)world;
    p[i] = p[i] - LR * mean;
  }
}

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

static void init_values(float* v, size_t n, float scale) {
  for (size_t i = 0; i < n; i++) v[i] = scale * (float)((int)(i % 101) - 50);
}

/* ---- several tensors, several chunks, two workers --------------------------------------------- */

#define NA 3000 /* 3 chunks of 1024 */
#define NB 700  /* 1 chunk */
#define NC 2048 /* exactly 2 chunks */

static void test_push_multi_tensor_two_workers(void** state) {
  (void)state;
  pmx_client* c[2] = {joined(0, 2), joined(1, 2)};
  const char* names[3] = {"a", "b", "c"};
  const size_t ns[3] = {NA, NB, NC};
  static float init[3][NA], ref[3][NA], got[3][NA], g[2][3][NA];
  pmx_tensor* t[2][3];
  for (int k = 0; k < 3; k++) {
    init_values(init[k], ns[k], 0.25f * (float)(k + 1));
    memcpy(ref[k], init[k], ns[k] * sizeof(float));
    for (int r = 0; r < 2; r++) t[r][k] = declare(c[r], names[k], ns[k], init[k]);
  }
  assert_int_equal(pmx_tensor_num_chunks(t[0][0]), 3);
  assert_int_equal(pmx_tensor_num_chunks(t[0][1]), 1);
  assert_int_equal(pmx_tensor_num_chunks(t[0][2]), 2);
  const int steps = 3;
  for (int s = 0; s < steps; s++) {
    const void* gp[2][3];
    for (uint32_t r = 0; r < 2; r++)
      for (int k = 0; k < 3; k++) {
        fill_grads(g[r][k], ns[k], r + 10u * (uint32_t)k, (uint64_t)s);
        gp[r][k] = g[r][k];
      }
    /* rank 1 first: its chunks wait on the server for rank 0's (rank-order sum) */
    pmx_op* op1 = NULL;
    expect_st("push rank 1", pmx_push_async(c[1], (uint64_t)s, 3, t[1], gp[1], &op1), PMX_OK);
    expect_st("push rank 0", pmx_push(c[0], (uint64_t)s, 3, t[0], gp[0]), PMX_OK);
    expect_st("wait rank 1", pmx_op_wait(op1), PMX_OK);
    for (int k = 0; k < 3; k++) {
      const float* gs[2] = {g[0][k], g[1][k]};
      sgd_ref(ref[k], gs, 2, ns[k], false);
    }
  }
  void* dst[3] = {got[0], got[1], got[2]};
  uint64_t v[3] = {0, 0, 0};
  expect_st("pull", pmx_pull(c[0], 3, t[0], dst, (uint64_t)steps, v), PMX_OK);
  for (int k = 0; k < 3; k++) {
    assert_int_equal(v[k], steps);
    check_bits(names[k], got[k], ref[k], ns[k]);
  }
  /* the counters: 6 chunks a push, raw */
  for (int r = 0; r < 2; r++) {
    pmx_client_stats cs;
    pmx_client_get_stats(c[r], &cs);
    assert_int_equal(cs.push_chunks, 6 * steps);
    assert_int_equal(cs.push_raw_bytes, (uint64_t)(NA + NB + NC) * 4 * steps);
    assert_true(cs.push_wire_bytes > cs.push_raw_bytes);
    assert_true(cs.push_wire_bytes < cs.push_raw_bytes + 6 * steps * 128);
  }
  Paramex__V1__StatsResponse* st = stats();
  assert_int_equal(st->push_chunks, 2 * 6 * steps);
  assert_int_equal(st->push_duplicates, 0);
  assert_int_equal(st->steps_completed, 6 * steps);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  pmx_client_destroy(c[0]);
  pmx_client_destroy(c[1]);
}

/* ---- push modes -------------------------------------------------------------------------------- */

#define NM 4096 /* 4 chunks */

typedef struct mode_case {
  const char* name;
  pmx_push_mode mode;
  size_t min_bytes;
  bool compressible; /* gradients with few distinct values and many zeros */
  bool bf16_sum;     /* the server sums bf16-rounded gradients */
  double wire_max;   /* push wire bytes / raw bytes at most (0: no bound) */
  double wire_min;   /* ... at least */
} mode_case;

static void run_mode(const mode_case* m) {
  pmx_client* c = joined(0, 1);
  static float init[NM], ref[NM], g[NM], got[NM];
  init_values(init, NM, 0.125f);
  memcpy(ref, init, sizeof init);
  pmx_tensor* t = declare(c, m->name, NM, init);
  expect_st("set_push_compression", pmx_tensor_set_push_compression(t, m->mode, m->min_bytes), PMX_OK);
  for (size_t i = 0; i < NM; i++)
    g[i] = m->compressible ? (i % 5 == 0 ? 0.5f * (float)(i % 3) : 0.0f) : noise_of(i);
  const void* gp = g;
  expect_st("push", pmx_push(c, 0, 1, &t, &gp), PMX_OK);
  const float* gs[1] = {g};
  sgd_ref(ref, gs, 1, NM, m->bf16_sum);
  void* dst = got;
  expect_st("pull", pmx_pull(c, 1, &t, &dst, 1, NULL), PMX_OK);
  check_bits(m->name, got, ref, NM);
  pmx_client_stats cs;
  pmx_client_get_stats(c, &cs);
  assert_int_equal(cs.push_chunks, 4);
  assert_int_equal(cs.push_raw_bytes, NM * 4);
  double ratio = (double)cs.push_wire_bytes / (double)cs.push_raw_bytes;
  if (m->wire_max > 0 && ratio > m->wire_max)
    fail_msg("%s: wire/raw %.3f, want <= %.3f", m->name, ratio, m->wire_max);
  if (ratio < m->wire_min) fail_msg("%s: wire/raw %.3f, want >= %.3f", m->name, ratio, m->wire_min);
  /* the server saw the same wire bytes for this tensor */
  Paramex__V1__StatsResponse* st = stats();
  const Paramex__V1__TensorStats* row = px_h_stats_tensor(st, m->name);
  assert_non_null(row);
  assert_int_equal(row->push_raw_bytes, NM * 4);
  assert_int_equal(row->push_wire_bytes, cs.push_wire_bytes);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  pmx_client_destroy(c);
}

static void test_push_mode_raw(void** state) {
  (void)state;
  const mode_case m = {"raw", PMX_PUSH_RAW, 0, true, false, 1.05, 1.0};
  run_mode(&m);
}

static void test_push_mode_zstd(void** state) {
  (void)state;
  /* lossless: the same bits as a raw push, far fewer bytes */
  const mode_case m = {"zstd", PMX_PUSH_ZSTD, 0, true, false, 0.25, 0.0};
  run_mode(&m);
}

static void test_push_mode_zstd_incompressible(void** state) {
  (void)state;
  /* gradients that do not compress by 5% go raw */
  const mode_case m = {"zstd_noise", PMX_PUSH_ZSTD, 0, false, false, 1.05, 1.0};
  run_mode(&m);
}

static void test_push_mode_bf16(void** state) {
  (void)state;
  const mode_case m = {"bf16", PMX_PUSH_BF16, 0, false, true, 0.55, 0.5};
  run_mode(&m);
}

static void test_push_mode_bf16_zstd(void** state) {
  (void)state;
  const mode_case m = {"bf16_zstd", PMX_PUSH_BF16_ZSTD, 0, true, true, 0.15, 0.0};
  run_mode(&m);
}

static void test_push_mode_min_bytes(void** state) {
  (void)state;
  /* min_bytes equal to the tensor's bytes: encoded */
  const mode_case at = {"min_at", PMX_PUSH_BF16, NM * 4, false, true, 0.55, 0.5};
  run_mode(&at);
}

static void test_push_mode_below_min_bytes(void** state) {
  (void)state;
  /* a tensor smaller than min_bytes goes raw: f32 bits, full size */
  const mode_case below = {"min_below", PMX_PUSH_BF16_ZSTD, NM * 4 + 1, false, false, 1.05, 1.0};
  run_mode(&below);
}

/* ---- in place --------------------------------------------------------------------------------- */

static void test_push_async_reads_in_place(void** state) {
  (void)state;
  pmx_client* c = joined(0, 1);
  static float init[NA], ref[NA], g[NA], got[NA];
  init_values(init, NA, 1.0f);
  memcpy(ref, init, sizeof init);
  pmx_tensor* t = declare(c, "inplace", NA, init);
  fill_grads(g, NA, 0, 0);
  const float* gs[1] = {g};
  sgd_ref(ref, gs, 1, NA, false);
  /* the pull of version 1 parks until the push is in */
  void* dst = got;
  pmx_op* pull = NULL;
  expect_st("pull_async", pmx_pull_async(c, 1, &t, &dst, 1, NULL, &pull), PMX_OK);
  const void* gp = g;
  pmx_op* push = NULL;
  expect_st("push_async", pmx_push_async(c, 0, 1, &t, &gp, &push), PMX_OK);
  assert_non_null(push);
  expect_st("wait push", pmx_op_wait(push), PMX_OK);
  /* once pmx_op_wait returned the library is done with the gradients */
  memset(g, 0x7f, sizeof g);
  expect_st("wait pull", pmx_op_wait(pull), PMX_OK);
  check_bits("parameters after push_async", got, ref, NA);
  pmx_client_destroy(c);
}

/* ---- duplicates ---------------------------------------------------------------------------------- */

static void test_push_duplicate_counted_once(void** state) {
  (void)state;
  pmx_client* c[2] = {joined(0, 2), joined(1, 2)};
  static float init[NA], ref[NA], g0[NA], g1[NA], got[NA];
  init_values(init, NA, 0.5f);
  memcpy(ref, init, sizeof init);
  pmx_tensor* t0 = declare(c[0], "dup", NA, init);
  pmx_tensor* t1 = declare(c[1], "dup", NA, init);
  fill_grads(g0, NA, 0, 0);
  fill_grads(g1, NA, 1, 0);
  const void* gp0 = g0;
  const void* gp1 = g1;
  /* rank 0 pushes step 0 twice before rank 1: the second is acknowledged, not counted */
  expect_st("push", pmx_push(c[0], 0, 1, &t0, &gp0), PMX_OK);
  pmx_op* op = NULL;
  expect_st("push again", pmx_push_async(c[0], 0, 1, &t0, &gp0, &op), PMX_OK);
  px_op_wait_call(op);
  assert_int_equal(op->accepted, 0);
  assert_int_equal(op->duplicate, 3);
  expect_st("wait", pmx_op_wait(op), PMX_OK);
  Paramex__V1__StatsResponse* st = stats();
  assert_int_equal(st->push_duplicates, 3);
  assert_int_equal(st->push_chunks, 3);
  assert_int_equal(st->steps_completed, 0);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  expect_st("push rank 1", pmx_push(c[1], 0, 1, &t1, &gp1), PMX_OK);
  /* and after the step completed, once more */
  op = NULL;
  expect_st("push after the step", pmx_push_async(c[0], 0, 1, &t0, &gp0, &op), PMX_OK);
  px_op_wait_call(op);
  assert_int_equal(op->accepted, 0);
  assert_int_equal(op->duplicate, 3);
  expect_st("wait", pmx_op_wait(op), PMX_OK);
  const float* gs[2] = {g0, g1};
  sgd_ref(ref, gs, 2, NA, false);
  void* dst = got;
  uint64_t v = 0;
  expect_st("pull", pmx_pull(c[0], 1, &t0, &dst, 1, &v), PMX_OK);
  assert_int_equal(v, 1);
  check_bits("parameters after duplicate pushes", got, ref, NA);
  st = stats();
  assert_int_equal(st->push_duplicates, 6);
  assert_int_equal(st->push_chunks, 6);
  assert_int_equal(st->steps_completed, 3);
  assert_int_equal(st->version_min, 1);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  /* the client counts what it sent */
  pmx_client_stats cs;
  pmx_client_get_stats(c[0], &cs);
  assert_int_equal(cs.push_chunks, 9);
  pmx_client_destroy(c[0]);
  pmx_client_destroy(c[1]);
}

/* ---- several threads of one client ---------------------------------------------------------- */

/* "A pmx_client may be used from several threads at once": threads of one worker push
 * their own tensor (some of several chunks) for steps 0..TSTEPS-1 at the same time; every
 * tensor ends bit for bit at the reference, every chunk counted once. */
#define TTH 3
#define TSTEPS 5

typedef struct push_thread {
  pmx_client* c;
  pmx_tensor* t;
  size_t n;
  uint32_t salt;
  float g[NA];
  pmx_status st;
  char err[PX_ERROR_LEN];
} push_thread;

static void* push_main(void* arg) {
  push_thread* p = arg;
  p->st = PMX_OK;
  for (uint64_t s = 0; s < TSTEPS && p->st == PMX_OK; s++) {
    fill_grads(p->g, p->n, p->salt, s);
    const void* gp = p->g;
    p->st = pmx_push(p->c, s, 1, &p->t, &gp);
    if (p->st != PMX_OK) snprintf(p->err, sizeof p->err, "%s", pmx_last_error());
  }
  return NULL;
}

static void test_push_from_threads(void** state) {
  (void)state;
  pmx_client* c = joined(0, 1);
  static const size_t n[TTH] = {NA, NB, NC};
  static const char* const names[TTH] = {"th_a", "th_b", "th_c"};
  static float init[TTH][NA], ref[TTH][NA], got[TTH][NA], g[NA];
  static push_thread p[TTH];
  pthread_t th[TTH];
  for (int k = 0; k < TTH; k++) {
    init_values(init[k], n[k], 0.25f * (float)(k + 1));
    memcpy(ref[k], init[k], sizeof init[k]);
    p[k].c = c;
    p[k].t = declare(c, names[k], n[k], init[k]);
    p[k].n = n[k];
    p[k].salt = 10u + (uint32_t)k;
  }
  for (int k = 0; k < TTH; k++) assert_int_equal(pthread_create(&th[k], NULL, push_main, &p[k]), 0);
  for (int k = 0; k < TTH; k++) assert_int_equal(pthread_join(th[k], NULL), 0);
  uint64_t chunks = 0;
  for (int k = 0; k < TTH; k++) {
    if (p[k].st != PMX_OK) fail_msg("thread %d: %s: %s", k, pmx_strerror(p[k].st), p[k].err);
    chunks += TSTEPS * pmx_tensor_num_chunks(p[k].t);
    for (uint64_t s = 0; s < TSTEPS; s++) {
      fill_grads(g, n[k], p[k].salt, s);
      const float* gs[1] = {g};
      sgd_ref(ref[k], gs, 1, n[k], false);
    }
  }
  pmx_tensor* ts[TTH] = {p[0].t, p[1].t, p[2].t};
  void* dst[TTH] = {got[0], got[1], got[2]};
  uint64_t v[TTH] = {0, 0, 0};
  expect_st("pull", pmx_pull(c, TTH, ts, dst, TSTEPS, v), PMX_OK);
  for (int k = 0; k < TTH; k++) {
    assert_int_equal(v[k], TSTEPS);
    check_bits(names[k], got[k], ref[k], n[k]);
  }
  pmx_client_stats cs;
  pmx_client_get_stats(c, &cs);
  assert_int_equal(cs.push_chunks, chunks);
  Paramex__V1__StatsResponse* st = stats();
  assert_int_equal(st->push_chunks, chunks);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  pmx_client_destroy(c);
}

/* ---- refusals --------------------------------------------------------------------------------- */

static void test_push_argument_errors(void** state) {
  (void)state;
  pmx_client* c = joined(0, 1);
  float g[8] = {0};
  pmx_tensor* t = declare(c, "args", 8, NULL);
  pmx_client* other = joined(0, 1);
  pmx_tensor* ot = declare(other, "args", 8, NULL);
  const void* gp = g;
  const void* nullg = NULL;
  pmx_op* op = (pmx_op*)(uintptr_t)0x77;
  expect_st("no client", pmx_push(NULL, 0, 1, &t, &gp), PMX_ERR_INVALID_ARGUMENT);
  expect_st("n 0", pmx_push(c, 0, 0, &t, &gp), PMX_ERR_INVALID_ARGUMENT);
  expect_error_has("n 0", "pmx_push: no tensors given");
  expect_st("tensors NULL", pmx_push(c, 0, 1, NULL, &gp), PMX_ERR_INVALID_ARGUMENT);
  expect_st("grads NULL", pmx_push(c, 0, 1, &t, NULL), PMX_ERR_INVALID_ARGUMENT);
  expect_st("grads[0] NULL", pmx_push(c, 0, 1, &t, &nullg), PMX_ERR_INVALID_ARGUMENT);
  expect_error_has("grads[0] NULL", "buffer 0 is NULL");
  pmx_tensor* two[2] = {t, ot};
  const void* g2[2] = {g, g};
  expect_st("tensor of another client", pmx_push(c, 0, 2, two, g2), PMX_ERR_INVALID_ARGUMENT);
  expect_error_has("tensor of another client", "tensor 1 does not belong to this client");
  pmx_tensor* tn[1] = {NULL};
  expect_st("tensor NULL", pmx_push(c, 0, 1, tn, &gp), PMX_ERR_INVALID_ARGUMENT);
  expect_st("no op pointer", pmx_push_async(c, 0, 1, &t, &gp, NULL), PMX_ERR_INVALID_ARGUMENT);
  expect_st("async with n 0", pmx_push_async(c, 0, 0, &t, &gp, &op), PMX_ERR_INVALID_ARGUMENT);
  assert_ptr_equal(op, (pmx_op*)(uintptr_t)0x77);
  /* nothing reached the server */
  pmx_client_stats cs;
  pmx_client_get_stats(c, &cs);
  assert_int_equal(cs.push_chunks, 0);
  pmx_client_destroy(c);
  pmx_client_destroy(other);
}

static void test_push_refused_by_server(void** state) {
  (void)state;
  pmx_options o = {.timeout_ms = 30000, .connect_timeout_ms = 30000};
  pmx_client* c = joined(0, 1);
  pmx_tensor* t = declare(c, "refused", 8, NULL); /* a joined worker creates it */
  pmx_client* unjoined = NULL;
  expect_st("connect", pmx_connect(g_srv.addr, &o, &unjoined), PMX_OK);
  float g[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  const void* gp = g;
  pmx_tensor* ut = declare(unjoined, "refused", 8, NULL); /* a lookup */
  expect_st("push before join", pmx_push(unjoined, 0, 1, &ut, &gp), PMX_ERR_FAILED_PRECONDITION);
  expect_error_has("push before join", "has not joined");
  expect_error_has("push before join", "pmx_join first"); /* refused before any call */
  pmx_tensor* none = NULL;
  const uint64_t shape8[1] = {8};
  expect_st("create before join", pmx_declare(unjoined, "nobody's", PMX_F32, shape8, 1, NULL, NULL, &none),
            PMX_ERR_FAILED_PRECONDITION);
  expect_error_has("create before join", "only a joined worker creates tensors: call Join first");

  /* a step ahead of the version */
  expect_st("step 5 at version 0", pmx_push(c, 5, 1, &t, &gp), PMX_ERR_OUT_OF_RANGE);
  expect_error_has("step 5 at version 0", "step 5 is ahead of version 0");
  /* a step too old */
  for (uint64_t s = 0; s < 3; s++) expect_st("push", pmx_push(c, s, 1, &t, &gp), PMX_OK);
  expect_st("step 0 at version 3", pmx_push(c, 0, 1, &t, &gp), PMX_ERR_FAILED_PRECONDITION);
  expect_error_has("step 0 at version 3", "step 0 is too old");
  /* another client joined as the same rank: the old incarnation is refused */
  pmx_client* newer = joined(0, 1);
  expect_st("push of a replaced incarnation", pmx_push(c, 3, 1, &t, &gp), PMX_ERR_FAILED_PRECONDITION);
  expect_error_has("push of a replaced incarnation", "stale");
  pmx_tensor* nt = declare(newer, "refused", 8, NULL);
  expect_st("push of the new incarnation", pmx_push(newer, 3, 1, &nt, &gp), PMX_OK);
  /* the version moved by the successful pushes only */
  float got[8];
  void* dst = got;
  uint64_t v = 0;
  expect_st("pull", pmx_pull(newer, 1, &nt, &dst, 0, &v), PMX_OK);
  assert_int_equal(v, 4);
  float ref[8] = {0};
  const float* gs[1] = {g};
  for (int s = 0; s < 4; s++) sgd_ref(ref, gs, 1, 8, false);
  check_bits("after 4 pushes", got, ref, 8);
  pmx_client_destroy(unjoined);
  pmx_client_destroy(c);
  pmx_client_destroy(newer);
}

int main(void) {
#define T1(f) cmocka_unit_test_setup_teardown(f, setup1, teardown)
#define T2(f) cmocka_unit_test_setup_teardown(f, setup2, teardown)
  const struct CMUnitTest tests[] = {
      T1(test_push_from_threads),
      T2(test_push_multi_tensor_two_workers),
      T1(test_push_mode_raw),
      T1(test_push_mode_zstd),
      T1(test_push_mode_zstd_incompressible),
      T1(test_push_mode_bf16),
      T1(test_push_mode_bf16_zstd),
      T1(test_push_mode_min_bytes),
      T1(test_push_mode_below_min_bytes),
      T1(test_push_async_reads_in_place),
      T2(test_push_duplicate_counted_once),
      T1(test_push_argument_errors),
      T1(test_push_refused_by_server),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
