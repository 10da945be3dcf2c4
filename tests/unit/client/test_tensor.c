/* Unit tests of client/tensor.c (tensor.h, and pmx_declare / pmx_tensor_* of paramex.h)
 * against real paramex-server processes: a declaration creates a tensor, later ones (other
 * clients) get the same tensor, a different dtype or shape is FAILED_PRECONDITION with the
 * server's message; argument errors (client, name, shape, dtype, overflow) leave *out
 * untouched; initial values from `values` (f32, bf16, f16; larger than one 2 MiB Declare
 * piece: they arrive whole) and from the seeded initializers come back bit-exact; values
 * are used only by the creating call (other values are an error); the facts (numel, bytes, id, num_chunks); many
 * declarations from several threads of one client; and the refusals of
 * pmx_tensor_set_push_compression. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "codec/dtype.h"
#include "codec/initializer.h"
#include "errors.h"
#include "harness.h"
#include "paramex/paramex.h"
#include "rpc/rpc_client.h"
#include "tensor.h"

#define SRV_START_MS 30000
#define SRV_STOP_MS 30000

static px_h_server g_srv;
static pmx_client* g_c;

static void expect_st(const char* what, pmx_status st, pmx_status want) {
  if (st != want)
    fail_msg("%s: %s (%d; '%s'), want %s (%d)", what, pmx_strerror(st), (int)st, pmx_last_error(),
             pmx_strerror(want), (int)want);
}

static void expect_error_has(const char* what, const char* needle) {
  if (!strstr(pmx_last_error(), needle))
    fail_msg("%s: last error '%s' does not contain '%s'", what, pmx_last_error(), needle);
}

static pmx_client* new_client(void) {
  pmx_options o = {.timeout_ms = 30000, .connect_timeout_ms = 30000};
  pmx_client* c = NULL;
  expect_st("connect", pmx_connect(g_srv.addr, &o, &c), PMX_OK);
  return c;
}

/* A server with chunks of 1024 f32 (4 KiB) and a joined client g_c for each test. */
static int setup(void** state) {
  (void)state;
  char err[512];
  const char* args[] = {"--workers", "1", "--chunk-bytes", "4K", "--log-level", "warn", NULL};
  if (px_h_server_start(&g_srv, args, NULL, SRV_START_MS, err, sizeof err) != 0) {
    fprintf(stderr, "server: %s\n", err);
    return -1;
  }
  pmx_options o = {.timeout_ms = 30000, .connect_timeout_ms = 30000};
  if (pmx_connect(g_srv.addr, &o, &g_c) != PMX_OK || pmx_join(g_c, 0, 1, NULL) != PMX_OK) {
    fprintf(stderr, "client: %s\n", pmx_last_error());
    return -1;
  }
  return 0;
}

static int teardown(void** state) {
  (void)state;
  pmx_client_destroy(g_c);
  g_c = NULL;
  int ws = 0;
  int rc = px_h_server_stop(&g_srv, SRV_STOP_MS, &ws, NULL);
  px_h_kill_all();
  return rc == 0 && ws == 0 ? 0 : -1;
}

/* Pulls t (version 0) into a fresh buffer of its bytes; the caller frees. */
static void* pull_all(pmx_client* c, pmx_tensor* t) {
  void* buf = malloc(pmx_tensor_bytes(t) ? pmx_tensor_bytes(t) : 1);
  assert_non_null(buf);
  uint64_t v = 99;
  expect_st("pull", pmx_pull(c, 1, &t, &buf, 0, &v), PMX_OK);
  assert_int_equal(v, 0);
  return buf;
}

static void check_bits(const char* what, const void* got, const void* want, size_t n) {
  if (memcmp(got, want, n) == 0) return;
  const uint8_t* a = got;
  const uint8_t* b = want;
  for (size_t i = 0; i < n; i++)
    if (a[i] != b[i]) fail_msg("%s: byte %zu of %zu is 0x%02x, want 0x%02x", what, i, n, a[i], b[i]);
}

/* ---- create, repeat, conflict ------------------------------------------------------------ */

static void test_declare_create_repeat_conflict(void** state) {
  (void)state;
  const uint64_t shape[2] = {30, 100}; /* 3000 f32: chunks of 1024 -> 3 */
  pmx_tensor* t = NULL;
  expect_st("create", pmx_declare(g_c, "w", PMX_F32, shape, 2, NULL, NULL, &t), PMX_OK);
  assert_non_null(t);
  assert_int_equal(pmx_tensor_numel(t), 3000);
  assert_int_equal(pmx_tensor_bytes(t), 12000);
  assert_int_equal(pmx_tensor_num_chunks(t), 3);
  assert_int_equal(t->chunk_elems, 1024);
  assert_string_equal(t->name, "w");
  assert_ptr_equal(t->client, g_c);
  assert_int_equal(t->push_mode, PMX_PUSH_RAW); /* off by default */

  /* the same declaration again, here and from another client: the same tensor */
  pmx_tensor* again = NULL;
  expect_st("repeat", pmx_declare(g_c, "w", PMX_F32, shape, 2, NULL, NULL, &again), PMX_OK);
  assert_int_equal(pmx_tensor_id(again), pmx_tensor_id(t));
  assert_int_equal(pmx_tensor_num_chunks(again), 3);
  pmx_client* other = new_client();
  pmx_tensor* ot = NULL;
  expect_st("repeat from another client", pmx_declare(other, "w", PMX_F32, shape, 2, NULL, NULL, &ot),
            PMX_OK);
  assert_int_equal(pmx_tensor_id(ot), pmx_tensor_id(t));
  assert_int_equal(pmx_tensor_numel(ot), 3000);

  /* conflicts: dtype, shape, rank of the shape */
  pmx_tensor* keep = (pmx_tensor*)(uintptr_t)0x99;
  expect_st("other dtype", pmx_declare(other, "w", PMX_BF16, shape, 2, NULL, NULL, &keep),
            PMX_ERR_FAILED_PRECONDITION);
  expect_error_has("other dtype", "tensor 'w' exists as f32");
  expect_error_has("other dtype", "not bf16");
  const uint64_t shape2[2] = {100, 30};
  expect_st("other shape", pmx_declare(g_c, "w", PMX_F32, shape2, 2, NULL, NULL, &keep),
            PMX_ERR_FAILED_PRECONDITION);
  expect_error_has("other shape", "exists as");
  const uint64_t flat[1] = {3000};
  expect_st("same numel, other rank", pmx_declare(g_c, "w", PMX_F32, flat, 1, NULL, NULL, &keep),
            PMX_ERR_FAILED_PRECONDITION);
  assert_ptr_equal(keep, (pmx_tensor*)(uintptr_t)0x99);

  /* a second tensor gets another id */
  pmx_tensor* b = NULL;
  expect_st("create b", pmx_declare(g_c, "b", PMX_F32, flat, 1, NULL, NULL, &b), PMX_OK);
  assert_true(pmx_tensor_id(b) != pmx_tensor_id(t));
  pmx_client_destroy(other);
  /* t stays valid until its client is destroyed */
  assert_int_equal(pmx_tensor_numel(t), 3000);
}

static void test_declare_argument_errors(void** state) {
  (void)state;
  const uint64_t shape[1] = {8};
  pmx_tensor* keep = (pmx_tensor*)(uintptr_t)0x99;
  expect_st("no client", pmx_declare(NULL, "a", PMX_F32, shape, 1, NULL, NULL, &keep),
            PMX_ERR_INVALID_ARGUMENT);
  expect_st("no name", pmx_declare(g_c, NULL, PMX_F32, shape, 1, NULL, NULL, &keep),
            PMX_ERR_INVALID_ARGUMENT);
  expect_st("no out", pmx_declare(g_c, "a", PMX_F32, shape, 1, NULL, NULL, NULL),
            PMX_ERR_INVALID_ARGUMENT);
  expect_st("no shape", pmx_declare(g_c, "a", PMX_F32, NULL, 1, NULL, NULL, &keep),
            PMX_ERR_INVALID_ARGUMENT);
  expect_st("dtype 0", pmx_declare(g_c, "a", (pmx_dtype)0, shape, 1, NULL, NULL, &keep),
            PMX_ERR_INVALID_ARGUMENT);
  expect_error_has("dtype 0", "unknown dtype 0");
  expect_st("dtype 4", pmx_declare(g_c, "a", (pmx_dtype)4, shape, 1, NULL, NULL, &keep),
            PMX_ERR_INVALID_ARGUMENT);
  expect_error_has("dtype 4", "unknown dtype 4");
  const uint64_t huge[2] = {UINT64_MAX / 2, 3};
  expect_st("overflow", pmx_declare(g_c, "a", PMX_F32, huge, 2, NULL, NULL, &keep),
            PMX_ERR_INVALID_ARGUMENT);
  expect_error_has("overflow", "overflows");
  /* the server's checks */
  expect_st("ndim 0", pmx_declare(g_c, "a", PMX_F32, shape, 0, NULL, NULL, &keep),
            PMX_ERR_INVALID_ARGUMENT);
  expect_error_has("ndim 0", "0 dimensions");
  const uint64_t nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 2};
  expect_st("ndim 9", pmx_declare(g_c, "a", PMX_F32, nine, 9, NULL, NULL, &keep),
            PMX_ERR_INVALID_ARGUMENT);
  expect_error_has("ndim 9", "9 dimensions");
  const uint64_t zero[2] = {4, 0};
  expect_st("dimension 0", pmx_declare(g_c, "a", PMX_F32, zero, 2, NULL, NULL, &keep),
            PMX_ERR_INVALID_ARGUMENT);
  expect_error_has("dimension 0", "dimension 1 is 0");
  expect_st("empty name", pmx_declare(g_c, "", PMX_F32, shape, 1, NULL, NULL, &keep),
            PMX_ERR_INVALID_ARGUMENT);
  expect_error_has("empty name", "1..255");
  char long_name[257];
  memset(long_name, 'n', 256);
  long_name[256] = 0;
  expect_st("256-byte name", pmx_declare(g_c, long_name, PMX_F32, shape, 1, NULL, NULL, &keep),
            PMX_ERR_INVALID_ARGUMENT);
  expect_error_has("256-byte name", "1..255");
  assert_ptr_equal(keep, (pmx_tensor*)(uintptr_t)0x99);
  /* the limits themselves are fine: 255 bytes, 8 dimensions */
  long_name[255] = 0;
  pmx_tensor* t = NULL;
  const uint64_t eight[8] = {1, 2, 1, 2, 1, 2, 1, 3};
  expect_st("255-byte name, 8 dimensions", pmx_declare(g_c, long_name, PMX_F32, eight, 8, NULL, NULL, &t),
            PMX_OK);
  assert_int_equal(pmx_tensor_numel(t), 24);
  assert_string_equal(t->name, long_name);
}

/* ---- initial values -------------------------------------------------------------------------- */

static void test_declare_values_f32_large(void** state) {
  (void)state;
  /* 1.3 M f32 = 5.2 MB: three Declare pieces (2 MiB, 2 MiB, the rest) */
  const size_t n = 1300001;
  float* v = malloc(n * sizeof *v);
  assert_non_null(v);
  for (size_t i = 0; i < n; i++) v[i] = (float)i * 0.5f - 1000.25f;
  const uint64_t shape[1] = {n};
  pmx_tensor* t = NULL;
  expect_st("declare", pmx_declare(g_c, "big", PMX_F32, shape, 1, v, NULL, &t), PMX_OK);
  assert_int_equal(pmx_tensor_numel(t), n);
  assert_int_equal(pmx_tensor_bytes(t), n * 4);
  assert_int_equal(pmx_tensor_num_chunks(t), (n + 1023) / 1024);
  float* got = pull_all(g_c, t);
  check_bits("1.3 M f32 values", got, v, n * sizeof *v);
  free(got);
  /* another client sees the same values */
  pmx_client* other = new_client();
  pmx_tensor* ot = NULL;
  expect_st("repeat", pmx_declare(other, "big", PMX_F32, shape, 1, NULL, NULL, &ot), PMX_OK);
  got = pull_all(other, ot);
  check_bits("1.3 M f32 values, other client", got, v, n * sizeof *v);
  free(got);
  pmx_client_destroy(other);
  free(v);
}

static void test_declare_values_16bit(void** state) {
  (void)state;
  /* bf16 and f16 values over more than one piece (2 MiB = 1 Mi elements) */
  const size_t n = (1u << 20) + 777;
  uint16_t* v = malloc(n * sizeof *v);
  assert_non_null(v);
  for (size_t i = 0; i < n; i++) v[i] = (uint16_t)(0x3c00u + (i * 7u) % 0x0800u);
  const uint64_t shape[2] = {1, n};
  pmx_tensor *tb = NULL, *th = NULL;
  expect_st("declare bf16", pmx_declare(g_c, "b16", PMX_BF16, shape, 2, v, NULL, &tb), PMX_OK);
  expect_st("declare f16", pmx_declare(g_c, "h16", PMX_F16, shape, 2, v, NULL, &th), PMX_OK);
  assert_int_equal(pmx_tensor_bytes(tb), n * 2);
  assert_int_equal(pmx_tensor_bytes(th), n * 2);
  assert_int_equal(pmx_tensor_num_chunks(tb),
                   (n + tb->chunk_elems - 1) / tb->chunk_elems);
  uint16_t* got = pull_all(g_c, tb);
  check_bits("bf16 values", got, v, n * 2);
  free(got);
  got = pull_all(g_c, th);
  check_bits("f16 values", got, v, n * 2);
  free(got);
  free(v);
}

static void test_declare_values_only_on_create(void** state) {
  (void)state;
  float a[100], b[100];
  for (int i = 0; i < 100; i++) {
    a[i] = (float)i;
    b[i] = -(float)i - 1.0f;
  }
  const uint64_t shape[1] = {100};
  pmx_tensor *t = NULL, *t2 = NULL;
  expect_st("create", pmx_declare(g_c, "once", PMX_F32, shape, 1, a, NULL, &t), PMX_OK);
  /* other values than the tensor holds are an error, named (they were once ignored) */
  expect_st("repeat with other values", pmx_declare(g_c, "once", PMX_F32, shape, 1, b, NULL, &t2),
            PMX_ERR_FAILED_PRECONDITION);
  expect_error_has("repeat with other values",
                   "tensor 'once' exists with other initial values (element 0 differs)");
  expect_st("repeat with the same values", pmx_declare(g_c, "once", PMX_F32, shape, 1, a, NULL, &t2),
            PMX_OK);
  pmx_client* other = new_client();
  pmx_tensor* ot = NULL;
  const pmx_init ini = {PMX_INIT_CONSTANT, 5.0f, 0, 0};
  expect_st("repeat with an initializer", pmx_declare(other, "once", PMX_F32, shape, 1, NULL, &ini, &ot),
            PMX_OK);
  float* got = pull_all(other, ot);
  check_bits("values of the creating call", got, a, sizeof a);
  free(got);
  pmx_client_destroy(other);
  /* values were copied before return */
  memset(a, 0, sizeof a);
  got = pull_all(g_c, t);
  for (int i = 0; i < 100; i++) assert_true(got[i] == (float)i);
  free(got);
}

static void test_declare_initializers(void** state) {
  (void)state;
  const size_t n = 5000; /* 5 chunks: element i depends on i only */
  const uint64_t shape[2] = {50, 100};
  float* want = malloc(n * sizeof *want);
  assert_non_null(want);
  const struct {
    const char* name;
    pmx_init init;
    int kind;
  } cases[] = {
      {"normal", {PMX_INIT_NORMAL, 0.5f, 2.0f, 1234}, PX_FILL_NORMAL},
      {"uniform", {PMX_INIT_UNIFORM, -3.0f, 3.0f, 99}, PX_FILL_UNIFORM},
      {"constant", {PMX_INIT_CONSTANT, 0.125f, 0.0f, 0}, PX_FILL_CONSTANT},
      {"zeros", {PMX_INIT_ZEROS, 0.0f, 0.0f, 0}, PX_FILL_ZEROS},
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    pmx_tensor* t = NULL;
    expect_st(cases[k].name, pmx_declare(g_c, cases[k].name, PMX_F32, shape, 2, NULL, &cases[k].init, &t),
              PMX_OK);
    assert_int_equal(px_init_fill_f32(want, 0, n, cases[k].kind, cases[k].init.a, cases[k].init.b,
                                      cases[k].init.seed), 0);
    float* got = pull_all(g_c, t);
    check_bits(cases[k].name, got, want, n * sizeof *want);
    free(got);
  }
  /* init NULL (and no values): zeros */
  pmx_tensor* z = NULL;
  expect_st("no initializer", pmx_declare(g_c, "z", PMX_F32, shape, 2, NULL, NULL, &z), PMX_OK);
  float* got = pull_all(g_c, z);
  for (size_t i = 0; i < n; i++)
    if (got[i] != 0.0f || signbit(got[i])) fail_msg("z[%zu] = %g, want +0", i, (double)got[i]);
  free(got);
  /* values win over an initializer */
  float vals[16];
  for (int i = 0; i < 16; i++) vals[i] = (float)(i * i);
  const uint64_t s16[1] = {16};
  const pmx_init ini = {PMX_INIT_CONSTANT, 9.0f, 0, 0};
  pmx_tensor* vt = NULL;
  expect_st("values and init", pmx_declare(g_c, "vi", PMX_F32, s16, 1, vals, &ini, &vt), PMX_OK);
  got = pull_all(g_c, vt);
  check_bits("values over an initializer", got, vals, sizeof vals);
  free(got);
  free(want);
}

/* ---- facts ------------------------------------------------------------------------------------ */

static void test_facts_match_server(void** state) {
  (void)state;
  const struct {
    const char* name;
    pmx_dtype dtype;
    uint64_t shape[3];
    size_t ndim;
    size_t elem;
  } cases[] = {
      {"f1", PMX_F32, {1}, 1, 4},
      {"f1024", PMX_F32, {1024}, 1, 4},
      {"f1025", PMX_F32, {5, 5, 41}, 3, 4},
      {"bf", PMX_BF16, {3, 1000}, 2, 2},
      {"hf", PMX_F16, {7, 301}, 2, 2},
  };
  char err[256];
  px_rpc_channel* ch = px_rpc_channel_create(g_srv.addr, err, sizeof err);
  assert_non_null(ch);
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    pmx_tensor* t = NULL;
    expect_st(cases[k].name, pmx_declare(g_c, cases[k].name, cases[k].dtype, cases[k].shape,
                                         cases[k].ndim, NULL, NULL, &t), PMX_OK);
    uint64_t numel = 1;
    for (size_t d = 0; d < cases[k].ndim; d++) numel *= cases[k].shape[d];
    assert_int_equal(pmx_tensor_numel(t), numel);
    assert_int_equal(pmx_tensor_bytes(t), numel * cases[k].elem);
    assert_int_equal(t->elem, cases[k].elem);
    assert_int_equal(t->dtype, cases[k].dtype);
    Paramex__V1__StatsResponse* st = px_h_stats(ch, err, sizeof err);
    if (!st) fail_msg("%s", err);
    const Paramex__V1__TensorStats* row = px_h_stats_tensor(st, cases[k].name);
    assert_non_null(row);
    assert_int_equal(pmx_tensor_id(t), row->id);
    assert_int_equal(pmx_tensor_num_chunks(t), row->num_chunks);
    assert_int_equal(pmx_tensor_bytes(t), row->bytes);
    assert_int_equal(pmx_tensor_num_chunks(t), (numel + t->chunk_elems - 1) / t->chunk_elems);
    assert_int_equal(row->n_shape, cases[k].ndim);
    for (size_t d = 0; d < cases[k].ndim; d++) assert_int_equal(row->shape[d], cases[k].shape[d]);
    protobuf_c_message_free_unpacked(&st->base, NULL);
  }
  px_rpc_channel_destroy(ch);
}

/* ---- many declarations, several threads ----------------------------------------------------- */

#define NTHREADS 4
#define PER_THREAD 20

typedef struct decl_thread {
  int index;
  pmx_tensor* t[PER_THREAD];
  pmx_status st;
  char err[PX_ERROR_LEN];
} decl_thread;

static void* decl_main(void* arg) {
  decl_thread* d = arg;
  d->st = PMX_OK;
  for (int i = 0; i < PER_THREAD && d->st == PMX_OK; i++) {
    char name[32];
    snprintf(name, sizeof name, "th%d.%d", d->index, i);
    const uint64_t shape[1] = {(uint64_t)(d->index * 100 + i + 1)};
    d->st = pmx_declare(g_c, name, PMX_F32, shape, 1, NULL, NULL, &d->t[i]);
    if (d->st != PMX_OK) snprintf(d->err, sizeof d->err, "%s", pmx_last_error());
  }
  return NULL;
}

static void test_declare_from_threads(void** state) {
  (void)state;
  static decl_thread d[NTHREADS];
  pthread_t th[NTHREADS];
  for (int i = 0; i < NTHREADS; i++) {
    memset(&d[i], 0, sizeof d[i]);
    d[i].index = i;
    assert_int_equal(pthread_create(&th[i], NULL, decl_main, &d[i]), 0);
  }
  for (int i = 0; i < NTHREADS; i++) assert_int_equal(pthread_join(th[i], NULL), 0);
  bool seen[NTHREADS * PER_THREAD] = {false};
  for (int i = 0; i < NTHREADS; i++) {
    if (d[i].st != PMX_OK) fail_msg("thread %d: %s: %s", i, pmx_strerror(d[i].st), d[i].err);
    for (int k = 0; k < PER_THREAD; k++) {
      assert_int_equal(pmx_tensor_numel(d[i].t[k]), (uint64_t)(i * 100 + k + 1));
      uint32_t id = pmx_tensor_id(d[i].t[k]);
      assert_true(id < NTHREADS * PER_THREAD);
      if (seen[id]) fail_msg("tensor id %u given twice", id);
      seen[id] = true;
    }
  }
  assert_int_equal(g_c->ntensors, NTHREADS * PER_THREAD);
}

/* ---- push compression settings ---------------------------------------------------------------- */

static void test_set_push_compression(void** state) {
  (void)state;
  const uint64_t shape[1] = {64};
  pmx_tensor *f = NULL, *b = NULL, *h = NULL;
  expect_st("f32", pmx_declare(g_c, "pf", PMX_F32, shape, 1, NULL, NULL, &f), PMX_OK);
  expect_st("bf16", pmx_declare(g_c, "pb", PMX_BF16, shape, 1, NULL, NULL, &b), PMX_OK);
  expect_st("f16", pmx_declare(g_c, "ph", PMX_F16, shape, 1, NULL, NULL, &h), PMX_OK);

  expect_st("NULL tensor", pmx_tensor_set_push_compression(NULL, PMX_PUSH_ZSTD, 0),
            PMX_ERR_INVALID_ARGUMENT);
  expect_st("mode 4", pmx_tensor_set_push_compression(f, (pmx_push_mode)4, 0), PMX_ERR_INVALID_ARGUMENT);
  expect_error_has("mode 4", "bad mode");
  expect_st("mode -1", pmx_tensor_set_push_compression(f, (pmx_push_mode)-1, 0), PMX_ERR_INVALID_ARGUMENT);
  assert_int_equal(f->push_mode, PMX_PUSH_RAW);
  /* the lossy cast is for f32 tensors only */
  expect_st("BF16 on bf16", pmx_tensor_set_push_compression(b, PMX_PUSH_BF16, 0), PMX_ERR_INVALID_ARGUMENT);
  expect_error_has("BF16 on bf16", "'pb' is not f32");
  expect_st("BF16_ZSTD on f16", pmx_tensor_set_push_compression(h, PMX_PUSH_BF16_ZSTD, 0),
            PMX_ERR_INVALID_ARGUMENT);
  expect_error_has("BF16_ZSTD on f16", "'ph' is not f32");
  assert_int_equal(b->push_mode, PMX_PUSH_RAW);
  assert_int_equal(h->push_mode, PMX_PUSH_RAW);
  /* what is allowed */
  expect_st("ZSTD on bf16", pmx_tensor_set_push_compression(b, PMX_PUSH_ZSTD, 128), PMX_OK);
  assert_int_equal(b->push_mode, PMX_PUSH_ZSTD);
  assert_int_equal(b->push_min_bytes, 128);
  expect_st("ZSTD on f16", pmx_tensor_set_push_compression(h, PMX_PUSH_ZSTD, 0), PMX_OK);
  const pmx_push_mode modes[] = {PMX_PUSH_ZSTD, PMX_PUSH_BF16, PMX_PUSH_BF16_ZSTD, PMX_PUSH_RAW};
  for (size_t i = 0; i < 4; i++) {
    expect_st("f32 mode", pmx_tensor_set_push_compression(f, modes[i], 1000 + i), PMX_OK);
    assert_int_equal(f->push_mode, modes[i]);
    assert_int_equal(f->push_min_bytes, 1000 + i);
  }
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
  const struct CMUnitTest tests[] = {
      T(test_declare_create_repeat_conflict), T(test_declare_argument_errors),
      T(test_declare_values_f32_large),       T(test_declare_values_16bit),
      T(test_declare_values_only_on_create),  T(test_declare_initializers),
      T(test_facts_match_server),             T(test_declare_from_threads),
      T(test_set_push_compression),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
