/* Unit tests of server/store.c: declaration of f32, bf16 and f16 tensors (creation, repeats, conflicts, limits), initial values in pieces and from initializers, chunking, versions and checksums. The service is initialised without its gRPC server. */
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
    "PMX_MAX_TENSOR_BYTES", "PMX_HOLD_BYTES", "PMX_DRAIN_TIMEOUT", "PMX_LOG_LEVEL",
    "PMX_HISTORY", "PMX_HISTORY_BYTES", "PMX_COMPRESSION_LEVEL", "PMX_COMPRESSION"};

static void clear_env(void) {
  for (size_t i = 0; i < sizeof env_vars / sizeof env_vars[0]; i++) unsetenv(env_vars[i]);
}

/* ---- a service per test ------------------------------------------------------------------ */

static px_service g_svc;
static px_server* G = &g_svc.srv;
static bool g_live; /* g_svc is initialised */

static void svc_init(int argc, char** argv) {
  px_config cfg;
  char err[256] = "";
  if (px_config_parse(&cfg, argc, argv, err, sizeof err) != 0) fail_msg("config: %s", err);
  if (px_service_init(&g_svc, &cfg, err, sizeof err) != 0) fail_msg("service init: %s", err);
  g_live = true;
}

static int svc_setup(void** state) {
  (void)state;
  char* argv[] = {"paramex-server", "--workers", "2", "--chunk-bytes", "4K", "--threads", "1"};
  px_config cfg;
  char err[256];
  if (px_config_parse(&cfg, ARGC(argv), argv, err, sizeof err) != 0) return -1;
  if (px_service_init(&g_svc, &cfg, err, sizeof err) != 0) return -1;
  g_live = true;
  return 0;
}

static int svc_teardown(void** state) {
  (void)state;
  if (g_live) px_service_deinit(&g_svc);
  g_live = false;
  return 0;
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

static px_declare_args dargs(const char* name, const uint64_t* shape, size_t ndim) {
  px_declare_args a;
  memset(&a, 0, sizeof a);
  a.name = name;
  a.dtype = PX_DT_F32;
  a.shape = shape;
  a.ndim = ndim;
  a.init_kind = PX_FILL_ZEROS;
  a.worker_id = 1;
  a.incarnation = 42;
  return a;
}

static px_tensor_state* const SENTINEL = (px_tensor_state*)(uintptr_t)0x1234;

/* Declares and returns the status; *t untouched unless OK. */
static int declare(const px_declare_args* a, px_tensor_state** t, bool* created, char* err,
                   size_t errlen) {
  err[0] = 0;
  px_waiter* woken = NULL;
  int st = px_store_declare(&G->store, a, t, created, NULL, &woken, err, errlen);
  px_waiters_run(woken);
  return st;
}

static uint32_t ntensors(void) { return atomic_load(&G->store.ntensors); }

/* ---- declare ------------------------------------------------------------------------------- */

static void test_declare_create_and_repeat(void** state) {
  (void)state;
  const uint64_t shape[] = {10, 300};
  px_declare_args a = dargs("layer1.weight", shape, 2);
  px_tensor_state* t = NULL;
  bool created = false;
  char err[256];
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_OK);
  assert_non_null(t);
  assert_true(created);
  assert_int_equal(t->id, 0);
  assert_string_equal(t->name, "layer1.weight");
  assert_int_equal(t->dtype, PX_DT_F32);
  assert_int_equal(t->ndim, 2);
  assert_int_equal(t->shape[0], 10);
  assert_int_equal(t->shape[1], 300);
  assert_int_equal(t->numel, 3000);
  assert_int_equal(ntensors(), 1);
  assert_ptr_equal(px_store_tensor(&G->store, 0), t);
  assert_null(px_store_tensor(&G->store, 1));
  for (uint32_t i = 0; i < t->nchunks; i++) {
    assert_true(t->chunks[i].initialized);
    assert_int_equal(t->chunks[i].version, 0);
  }
  for (uint64_t i = 0; i < t->numel; i++)
    if (((const float*)t->params)[i] != 0.0f)
      fail_msg("element %llu not zero", (unsigned long long)i);

  /* The same declaration again: the same tensor, not created. */
  px_tensor_state* t2 = NULL;
  created = true;
  assert_int_equal(declare(&a, &t2, &created, err, sizeof err), PX_ST_OK);
  assert_ptr_equal(t2, t);
  assert_false(created);
  assert_int_equal(ntensors(), 1);

  /* Another name: the next id. */
  px_declare_args b = dargs("layer1.bias", shape + 1, 1);
  px_tensor_state* tb = NULL;
  assert_int_equal(declare(&b, &tb, &created, err, sizeof err), PX_ST_OK);
  assert_true(created);
  assert_int_equal(tb->id, 1);
  assert_ptr_equal(px_store_tensor(&G->store, 1), tb);

  /* Another shape under an existing name. */
  const uint64_t other[] = {10, 301};
  px_declare_args c = dargs("layer1.weight", other, 2);
  px_tensor_state* tc = SENTINEL;
  assert_int_equal(declare(&c, &tc, &created, err, sizeof err), PX_ST_FAILED_PRECONDITION);
  assert_ptr_equal(tc, SENTINEL);
  assert_non_null(strstr(err, "'layer1.weight'"));
  assert_non_null(strstr(err, "[10,300]"));
  assert_non_null(strstr(err, "[10,301]"));
  /* Another rank with the same element count. */
  const uint64_t flat[] = {3000};
  px_declare_args d = dargs("layer1.weight", flat, 1);
  assert_int_equal(declare(&d, &tc, &created, err, sizeof err), PX_ST_FAILED_PRECONDITION);
  assert_non_null(strstr(err, "layer1.weight"));
  /* Another (known) dtype under an existing name. */
  const int others[] = {PX_DT_BF16, PX_DT_F16};
  for (size_t i = 0; i < 2; i++) {
    px_declare_args e = dargs("layer1.weight", shape, 2);
    e.dtype = others[i];
    assert_int_equal(declare(&e, &tc, &created, err, sizeof err), PX_ST_FAILED_PRECONDITION);
    assert_non_null(strstr(err, "layer1.weight"));
    assert_non_null(strstr(err, "f32"));
    assert_non_null(strstr(err, px_dtype_name(others[i])));
    assert_ptr_equal(tc, SENTINEL);
  }
  /* An unknown dtype is refused before the name is looked up. */
  px_declare_args e = dargs("layer1.weight", shape, 2);
  e.dtype = 7;
  assert_int_equal(declare(&e, &tc, &created, err, sizeof err), PX_ST_INVALID_ARGUMENT);
  assert_non_null(strstr(err, "layer1.weight"));
  assert_non_null(strstr(err, "dtype 7"));
  assert_ptr_equal(tc, SENTINEL);
  assert_int_equal(ntensors(), 2);
}

static void test_declare_invalid(void** state) {
  (void)state;
  const uint64_t shape[] = {4, 4};
  px_tensor_state* t = SENTINEL;
  bool created;
  char err[256];
  char name[300];

  px_declare_args a = dargs("", shape, 2);
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_INVALID_ARGUMENT);
  assert_true(err[0] != 0);
  memset(name, 'n', sizeof name);
  name[256] = 0;
  a = dargs(name, shape, 2);
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_INVALID_ARGUMENT);
  assert_non_null(strstr(err, "256"));
  assert_ptr_equal(t, SENTINEL);
  assert_int_equal(ntensors(), 0);
  name[255] = 0; /* the longest name allowed */
  a = dargs(name, shape, 2);
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_OK);
  assert_string_equal(t->name, name);
  assert_int_equal(ntensors(), 1);

  t = SENTINEL;
  a = dargs("zero-dims", shape, 0);
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_INVALID_ARGUMENT);
  assert_non_null(strstr(err, "zero-dims"));
  const uint64_t nine[] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
  a = dargs("nine-dims", nine, 9);
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_INVALID_ARGUMENT);
  a = dargs("eight-dims", nine, 8); /* the most allowed */
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_OK);
  assert_int_equal(t->numel, 1);
  t = SENTINEL;
  const uint64_t zero[] = {4, 0, 2};
  a = dargs("dim-zero", zero, 3);
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_INVALID_ARGUMENT);
  assert_non_null(strstr(err, "dimension 1 is 0"));
  const uint64_t huge[] = {1ull << 32, 1ull << 32, 1ull << 32};
  a = dargs("overflow", huge, 3);
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_INVALID_ARGUMENT);
  const uint64_t big[] = {1ull << 40};
  a = dargs("too-big", big, 1); /* 4 TiB > --max-tensor-bytes 16G */
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_RESOURCE_EXHAUSTED);

  const int dtypes[] = {0, 4, 7, 99, -1}; /* f32, bf16 and f16 are 1..3 */
  for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++) {
    a = dargs("dtype", shape, 2);
    a.dtype = dtypes[i];
    assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_INVALID_ARGUMENT);
    assert_non_null(strstr(err, "dtype"));
  }
  a = dargs("init", shape, 2);
  a.init_kind = 7;
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_INVALID_ARGUMENT);
  float v[16] = {0};
  a = dargs("both", shape, 2);
  a.values = (const uint8_t*)v;
  a.values_len = sizeof v;
  a.init_kind = PX_FILL_NORMAL;
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_INVALID_ARGUMENT);
  a = dargs("offset", shape, 2);
  a.values_offset = 4;
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_INVALID_ARGUMENT);
  assert_ptr_equal(t, SENTINEL);
  assert_int_equal(ntensors(), 2);
}

static void test_max_tensors(void** state) {
  (void)state;
  char* argv[] = {"paramex-server", "--workers", "2", "--chunk-bytes", "4K",
                  "--threads", "1", "--max-tensors", "2"};
  svc_init(ARGC(argv), argv);
  const uint64_t shape[] = {8};
  px_tensor_state* t = NULL;
  bool created;
  char err[256];
  px_declare_args a = dargs("a", shape, 1);
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_OK);
  a = dargs("b", shape, 1);
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_OK);
  a = dargs("c", shape, 1);
  t = SENTINEL;
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_RESOURCE_EXHAUSTED);
  assert_non_null(strstr(err, "'c'"));
  assert_non_null(strstr(err, "max-tensors"));
  assert_ptr_equal(t, SENTINEL);
  assert_int_equal(ntensors(), 2);
  /* Existing tensors can still be declared again. */
  a = dargs("a", shape, 1);
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_OK);
  assert_false(created);
  assert_int_equal(t->id, 0);
}

/* ---- initial values ------------------------------------------------------------------------- */

static int put_values(const char* name, const uint64_t* shape, const float* v, uint64_t off,
                      size_t nbytes, uint32_t worker, uint64_t inc, px_tensor_state** t,
                      bool* created, char* err, size_t errlen) {
  px_declare_args a = dargs(name, shape, 1);
  a.values = (const uint8_t*)(v + off);
  a.values_len = nbytes;
  a.values_offset = off;
  a.worker_id = worker;
  a.incarnation = inc;
  return declare(&a, t, created, err, errlen);
}

static void chunks_initialized(const px_tensor_state* t, bool c0, bool c1, bool c2) {
  assert_int_equal(t->nchunks, 3);
  assert_int_equal(t->chunks[0].initialized, c0);
  assert_int_equal(t->chunks[1].initialized, c1);
  assert_int_equal(t->chunks[2].initialized, c2);
  /* a chunk's checksum is known exactly when it is initialised */
  const bool want[3] = {c0, c1, c2};
  for (int i = 0; i < 3; i++) assert_int_equal(t->chunks[i].view[0].checksum_valid, want[i]);
}

static void test_values_in_pieces(void** state) {
  (void)state;
  enum { N = 2500 }; /* chunks of 1024, 1024 and 452 elements */
  const uint64_t shape[] = {N};
  float* v = malloc(N * sizeof *v);
  float* other = malloc(N * sizeof *other);
  assert_non_null(v);
  assert_non_null(other);
  for (int i = 0; i < N; i++) {
    v[i] = (float)i * 0.5f - 100.0f;
    other[i] = -7.0f;
  }
  px_tensor_state* t = NULL;
  bool created;
  char err[256];

  /* A first piece that leaves a gap does not create the tensor. */
  assert_int_equal(put_values("w", shape, v, 5, 40, 1, 42, &t, &created, err, sizeof err),
                   PX_ST_INVALID_ARGUMENT);
  assert_int_equal(ntensors(), 0);

  assert_int_equal(put_values("w", shape, v, 0, 1000 * 4, 1, 42, &t, &created, err, sizeof err),
                   PX_ST_OK);
  assert_true(created);
  assert_int_equal(t->init_cursor, 1000);
  chunks_initialized(t, false, false, false);
  assert_memory_equal(t->params, v, 1000 * 4);
  uint64_t cs = 1;
  px_tensor_version_min(t, NULL, &cs);
  assert_true(cs == 0); /* not all initialised: no checksum */

  /* A gap. */
  assert_int_equal(put_values("w", shape, v, 1500, 100 * 4, 1, 42, &t, &created, err, sizeof err),
                   PX_ST_INVALID_ARGUMENT);
  assert_non_null(strstr(err, "gap"));
  assert_int_equal(t->init_cursor, 1000);

  /* Overlapping the end: only the new part is taken; chunk 0 is now complete. */
  assert_int_equal(put_values("w", shape, v, 900, 200 * 4, 1, 42, &t, &created, err, sizeof err),
                   PX_ST_OK);
  assert_false(created);
  assert_int_equal(t->init_cursor, 1100);
  chunks_initialized(t, true, false, false);
  assert_memory_equal(t->params, v, 1100 * 4);

  /* A repeat (with other bytes) is accepted and changes nothing. */
  assert_int_equal(put_values("w", shape, other, 0, 500 * 4, 1, 42, &t, &created, err, sizeof err),
                   PX_ST_OK);
  assert_int_equal(t->init_cursor, 1100);
  assert_memory_equal(t->params, v, 1100 * 4);

  /* Past the end. */
  assert_int_equal(put_values("w", shape, v, 2400, 200 * 4, 1, 42, &t, &created, err, sizeof err),
                   PX_ST_INVALID_ARGUMENT);
  assert_non_null(strstr(err, "2500"));
  px_declare_args past = dargs("w", shape, 1);
  past.values = (const uint8_t*)v;
  past.values_len = 0;
  past.values_offset = N + 1;
  past.worker_id = 1;
  past.incarnation = 42;
  assert_int_equal(declare(&past, &t, &created, err, sizeof err), PX_ST_INVALID_ARGUMENT);
  /* A length that is not a whole number of elements. */
  assert_int_equal(put_values("w", shape, v, 1100, 10 * 4 + 2, 1, 42, &t, &created, err, sizeof err),
                   PX_ST_INVALID_ARGUMENT);
  assert_non_null(strstr(err, "multiple of 4"));
  assert_int_equal(t->init_cursor, 1100);

  /* Values from another worker, or from an earlier incarnation of the creator, are
   * not the creator's upload: not taken (beyond what arrived, nothing to compare with). */
  assert_int_equal(put_values("w", shape, other, 1100, 100 * 4, 0, 42, &t, &created, err, sizeof err),
                   PX_ST_OK);
  assert_int_equal(put_values("w", shape, other, 1100, 100 * 4, 1, 41, &t, &created, err, sizeof err),
                   PX_ST_OK);
  assert_int_equal(t->init_cursor, 1100);
  chunks_initialized(t, true, false, false);

  /* Up to the end of chunk 1 exactly. */
  assert_int_equal(put_values("w", shape, v, 1100, 948 * 4, 1, 42, &t, &created, err, sizeof err),
                   PX_ST_OK);
  assert_int_equal(t->init_cursor, 2048);
  chunks_initialized(t, true, true, false);
  /* The rest. */
  assert_int_equal(put_values("w", shape, v, 2048, (N - 2048) * 4, 1, 42, &t, &created, err,
                              sizeof err),
                   PX_ST_OK);
  assert_int_equal(t->init_cursor, N);
  chunks_initialized(t, true, true, true);
  assert_memory_equal(t->params, v, N * 4);
  uint64_t vmax = 99;
  assert_int_equal(px_tensor_version_min(t, &vmax, &cs), 0);
  assert_int_equal(vmax, 0);
  assert_true(cs == XXH64(v, N * 4, 0));
  /* Chunks completed by values have their checksum; frames are built on demand. */
  for (uint32_t i = 0; i < t->nchunks; i++) {
    px_chunk_state* c = &t->chunks[i];
    assert_true(c->view[0].checksum_valid);
    assert_true(c->view[0].checksum == px_checksum(c->params, (size_t)c->elems * 4));
    assert_int_equal(c->view[0].nhist, 0);
    for (int k = 0; k < PX_CACHE_SLOTS; k++) assert_false(c->view[0].cache[k].used);
    assert_false(c->view[1].enabled);
  }
  /* After completion a repeat of the same values is accepted and changes nothing, from
   * anyone; other values are an error naming the first element that differs. */
  assert_int_equal(put_values("w", shape, v, 0, N * 4, 1, 42, &t, &created, err, sizeof err),
                   PX_ST_OK);
  assert_int_equal(put_values("w", shape, v, 100, 50 * 4, 0, 7, &t, &created, err, sizeof err),
                   PX_ST_OK);
  assert_int_equal(put_values("w", shape, other, 0, N * 4, 1, 42, &t, &created, err, sizeof err),
                   PX_ST_FAILED_PRECONDITION);
  assert_non_null(strstr(err, "tensor 'w' exists with other initial values (element 0 differs)"));
  assert_memory_equal(t->params, v, N * 4);
  free(v);
  free(other);
}

/* A creator killed during its upload joins again: its new incarnation takes the upload
 * over (the upload once stayed half done forever, every pull waiting at version 0); an
 * older incarnation does not; a client that never joined cannot create a tensor. */
static void test_upload_taken_over(void** state) {
  (void)state;
  const uint64_t shape[] = {2500};
  const size_t N = 2500;
  float* v = malloc(N * sizeof *v);
  assert_non_null(v);
  for (size_t i = 0; i < N; i++) v[i] = (float)i * 0.25f;
  px_tensor_state* t = NULL;
  bool created = false;
  char err[256];
  assert_int_equal(put_values("u", shape, v, 0, 1100 * 4, 1, 42, &t, &created, err, sizeof err),
                   PX_ST_OK);
  assert_true(created);
  assert_int_equal(t->init_cursor, 1100);
  /* the restarted worker (incarnation 43) declares again from the start */
  px_declare_args a = dargs("u", shape, 1);
  a.values = (const uint8_t*)v;
  a.values_len = 2048 * 4;
  a.worker_id = 1;
  a.incarnation = 43;
  bool uploads = false;
  px_waiter* woken = NULL;
  assert_int_equal(px_store_declare(&G->store, &a, &t, &created, &uploads, &woken, err, sizeof err),
                   PX_ST_OK);
  assert_false(created);
  assert_true(uploads);
  assert_int_equal(t->init_cursor, 2048);
  assert_int_equal(t->creator_incarnation, 43);
  /* incarnation 42 is not the creator any more */
  assert_int_equal(put_values("u", shape, v, 2048, 452 * 4, 1, 42, &t, &created, err, sizeof err),
                   PX_ST_OK);
  assert_int_equal(t->init_cursor, 2048);
  assert_int_equal(put_values("u", shape, v, 2048, 452 * 4, 1, 43, &t, &created, err, sizeof err),
                   PX_ST_OK);
  assert_int_equal(t->init_cursor, N);
  assert_memory_equal(t->params, v, N * 4);
  /* a lookup-only declaration finds "u" but creates nothing */
  px_declare_args look = dargs("u", shape, 1);
  look.lookup_only = true;
  assert_int_equal(px_store_declare(&G->store, &look, &t, &created, &uploads, &woken, err, sizeof err),
                   PX_ST_OK);
  assert_false(created || uploads);
  look.name = "nobody";
  assert_int_equal(px_store_declare(&G->store, &look, &t, &created, &uploads, &woken, err, sizeof err),
                   PX_ST_FAILED_PRECONDITION);
  assert_string_equal(err, "tensor 'nobody' does not exist, and only a joined worker creates "
                           "tensors: call Join first");
  free(v);
}

static void test_initializer_fill(void** state) {
  (void)state;
  const uint64_t shape[] = {50, 100};
  const size_t n = 5000;
  float* want = malloc(n * sizeof *want);
  assert_non_null(want);
  const struct {
    const char* name;
    int kind;
    float a, b;
    uint64_t seed;
  } cases[] = {
      {"normal", PX_FILL_NORMAL, 0.5f, 2.0f, 1234},
      {"normal2", PX_FILL_NORMAL, 0.5f, 2.0f, 1235},
      {"uniform", PX_FILL_UNIFORM, -1.0f, 1.0f, 9},
      {"constant", PX_FILL_CONSTANT, 3.5f, 0.0f, 0},
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    px_declare_args a = dargs(cases[k].name, shape, 2);
    a.init_kind = cases[k].kind;
    a.init_a = cases[k].a;
    a.init_b = cases[k].b;
    a.init_seed = cases[k].seed;
    px_tensor_state* t = NULL;
    bool created;
    char err[256];
    assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_OK);
    assert_int_equal(px_init_fill_f32(want, 0, n, cases[k].kind, cases[k].a, cases[k].b,
                                       cases[k].seed),
                     0);
    assert_memory_equal(t->params, want, n * sizeof *want);
    assert_int_equal(t->init_cursor, n);
    for (uint32_t i = 0; i < t->nchunks; i++) assert_true(t->chunks[i].initialized);
  }
  /* The seed matters (the comparison above is not vacuous). */
  px_tensor_state* t1 = px_store_tensor(&G->store, 0);
  px_tensor_state* t2 = px_store_tensor(&G->store, 1);
  assert_memory_not_equal(t1->params, t2->params, n * sizeof(float));
  free(want);
}

/* ---- chunking -------------------------------------------------------------------------------- */

static void check_chunks(px_tensor_state* t, uint32_t chunk_elems) {
  assert_int_equal(t->chunk_elems, chunk_elems);
  assert_int_equal(t->nchunks, (t->numel + chunk_elems - 1) / chunk_elems);
  uint64_t total = 0;
  for (uint32_t i = 0; i < t->nchunks; i++) {
    px_chunk_state* c = &t->chunks[i];
    assert_ptr_equal(c->params, (uint8_t*)t->params + (uint64_t)i * chunk_elems * t->elem);
    if (i + 1 < t->nchunks) assert_int_equal(c->elems, chunk_elems);
    assert_true(c->elems >= 1 && c->elems <= chunk_elems);
    assert_true(c->view[0].enabled);
    assert_true(c->view[0].checksum_valid);
    assert_true(c->mom_first);
    assert_non_null(c->contributed);
    assert_non_null(c->held);
    total += c->elems;
  }
  assert_int_equal(total, t->numel);
}

static void test_chunking(void** state) {
  (void)state;
  const struct {
    uint64_t numel;
    uint32_t nchunks, last;
  } cases[] = {{1, 1, 1}, {1023, 1, 1023}, {1024, 1, 1024}, {1025, 2, 1}, {3000, 3, 952},
               {4096, 4, 1024}};
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    char name[32];
    snprintf(name, sizeof name, "t%zu", k);
    px_declare_args a = dargs(name, &cases[k].numel, 1);
    px_tensor_state* t = NULL;
    bool created;
    char err[256];
    assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_OK);
    check_chunks(t, 1024); /* --chunk-bytes 4K of f32 */
    assert_int_equal(t->nchunks, cases[k].nchunks);
    assert_int_equal(t->chunks[t->nchunks - 1].elems, cases[k].last);
  }
}

static void test_chunking_with_momentum(void** state) {
  (void)state;
  char* argv[] = {"paramex-server", "--workers", "3", "--chunk-bytes", "1M",
                  "--threads", "1", "--momentum", "0.9"};
  svc_init(ARGC(argv), argv);
  const uint64_t shape[] = {600, 1000}; /* 600000 = 2 * 262144 + 75712 */
  px_declare_args a = dargs("m", shape, 2);
  px_tensor_state* t = NULL;
  bool created;
  char err[256];
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_OK);
  /* the budget counts the parameters and the momentum the backend keeps */
  assert_int_equal(atomic_load(&G->ctr.store_bytes), 600000 * 4 * 2);
  check_chunks(t, 262144);
  assert_int_equal(t->nchunks, 3);
  assert_int_equal(t->chunks[2].elems, 75712);
}

/* ---- versions and checksums ------------------------------------------------------------------ */

static void test_version_min_and_checksum(void** state) {
  (void)state;
  const uint64_t shape[] = {3000};
  px_declare_args a = dargs("v", shape, 1);
  a.init_kind = PX_FILL_UNIFORM;
  a.init_a = -1;
  a.init_b = 1;
  a.init_seed = 3;
  px_tensor_state* t = NULL;
  bool created;
  char err[256];
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_OK);
  const uint64_t want = XXH64(t->params, 3000 * 4, 0);
  assert_true(XXH3_64bits(t->params, 3000 * 4) == px_checksum(t->params, 3000 * 4));
  uint64_t vmax = 99, cs = 0;
  assert_int_equal(px_tensor_version_min(t, &vmax, &cs), 0);
  assert_int_equal(vmax, 0);
  assert_true(cs == want);
  assert_int_equal(px_tensor_version_min(t, NULL, NULL), 0);

  /* Chunks at different versions: min and max, and no checksum. */
  t->chunks[1].version = 3;
  cs = 1;
  assert_int_equal(px_tensor_version_min(t, &vmax, &cs), 0);
  assert_int_equal(vmax, 3);
  assert_true(cs == 0);
  /* All at version 3 after a step changed the parameters. */
  t->chunks[0].version = 3;
  t->chunks[2].version = 3;
  ((float*)t->params)[2999] += 1.0f;
  assert_int_equal(px_tensor_version_min(t, &vmax, &cs), 3);
  assert_int_equal(vmax, 3);
  assert_true(cs == XXH64(t->params, 3000 * 4, 0));
  assert_true(cs != want);
}

/* ---- 16-bit tensors: declaration ------------------------------------------------------------ */

static void test_declare_16bit(void** state) {
  (void)state;
  char* argv[] = {"paramex-server", "--workers", "2", "--chunk-bytes", "4K", "--threads", "1",
                  "--max-tensor-bytes", "8K"};
  svc_init(ARGC(argv), argv);
  const uint64_t shape[] = {50, 100};
  const size_t n = 5000;
  float* f = malloc(n * sizeof *f);
  uint16_t* want = malloc(n * sizeof *want);
  assert_true(f && want);
  const struct {
    const char* name;
    int kind;
    float a, b;
    uint64_t seed;
  } cases[] = {
      {"normal", PX_FILL_NORMAL, 0.0f, 0.02f, 1234},
      {"uniform", PX_FILL_UNIFORM, -1.0f, 1.0f, 9},
      {"constant", PX_FILL_CONSTANT, 3.14159f, 0.0f, 0},
      {"big", PX_FILL_NORMAL, 0.0f, 1e5f, 3}, /* f16 overflows to inf: rounded the same way */
      {"zeros", PX_FILL_ZEROS, 0.0f, 0.0f, 0},
  };
  char err[256];
  bool created;
  const uint64_t small[] = {64, 64}; /* 4096 elements: 8 KiB of 16-bit words */
  for (int d = 0; d < 2; d++) {
    const int dt = d ? PX_DT_F16 : PX_DT_BF16;
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
      char name[64];
      snprintf(name, sizeof name, "%s.%s", px_dtype_name(dt), cases[k].name);
      /* --max-tensor-bytes 8K: 5000 16-bit elements do not fit; 4096 do */
      px_declare_args a = dargs(name, shape, 2);
      a.dtype = dt;
      a.init_kind = cases[k].kind;
      a.init_a = cases[k].a;
      a.init_b = cases[k].b;
      a.init_seed = cases[k].seed;
      px_tensor_state* t = SENTINEL;
      assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_RESOURCE_EXHAUSTED);
      assert_ptr_equal(t, SENTINEL);
      a.shape = small;
      assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_OK);
      assert_true(created);
      const size_t m = 4096;
      assert_int_equal(t->dtype, dt);
      assert_int_equal(t->elem, 2);
      assert_int_equal(t->numel, m);
      assert_int_equal(t->params_bytes, m * 2);
      check_chunks(t, 1024); /* chunk_elems: --chunk-bytes of f32 */
      assert_int_equal(px_init_fill_f32(f, 0, m, cases[k].kind, cases[k].a, cases[k].b,
                                         cases[k].seed),
                       0);
      if (cases[k].kind == PX_FILL_ZEROS) memset(f, 0, m * sizeof *f);
      if (dt == PX_DT_BF16) px_f32_to_bf16_n(f, want, m);
      else px_f32_to_f16_n(f, want, m);
      assert_memory_equal(t->params, want, m * 2);
      for (uint32_t i = 0; i < t->nchunks; i++) {
        px_chunk_state* c = &t->chunks[i];
        assert_true(c->initialized);
        assert_true(c->view[0].checksum == px_checksum(c->params, (size_t)c->elems * 2));
      }
      uint64_t cs = 0;
      assert_int_equal(px_tensor_version_min(t, NULL, &cs), 0);
      assert_true(cs == XXH64(want, m * 2, 0));
      /* the same declaration again; another dtype under the name */
      px_tensor_state* t2 = NULL;
      assert_int_equal(declare(&a, &t2, &created, err, sizeof err), PX_ST_OK);
      assert_ptr_equal(t2, t);
      assert_false(created);
      /* (f32 under the name is checked below: 4096 f32 exceed --max-tensor-bytes, which
       * is checked before the name is looked up) */
      const int others[] = {d ? PX_DT_BF16 : PX_DT_F16};
      for (int o = 0; o < 1; o++) {
        px_declare_args b = a;
        b.dtype = others[o];
        t2 = SENTINEL;
        assert_int_equal(declare(&b, &t2, &created, err, sizeof err), PX_ST_FAILED_PRECONDITION);
        assert_non_null(strstr(err, px_dtype_name(dt)));
        assert_non_null(strstr(err, px_dtype_name(others[o])));
        assert_ptr_equal(t2, SENTINEL);
      }
      px_declare_args u = a;
      u.dtype = 7;
      assert_int_equal(declare(&u, &t2, &created, err, sizeof err), PX_ST_INVALID_ARGUMENT);
      assert_non_null(strstr(err, "dtype"));
    }
  }
  /* f16 of the NORMAL(0, 1e5) tensor holds infinities, bf16 does not */
  px_tensor_state* tb = NULL;
  px_tensor_state* th = NULL;
  for (uint32_t i = 0; i < ntensors(); i++) {
    px_tensor_state* t = px_store_tensor(&G->store, i);
    if (strcmp(t->name, "bf16.big") == 0) tb = t;
    if (strcmp(t->name, "f16.big") == 0) th = t;
  }
  assert_true(tb && th);
  size_t infs = 0;
  for (size_t i = 0; i < 4096; i++) infs += (((uint16_t*)th->params)[i] & 0x7fff) == 0x7c00;
  assert_true(infs > 0);
  for (size_t i = 0; i < 4096; i++)
    assert_true((((uint16_t*)tb->params)[i] & 0x7f80) != 0x7f80);

  /* a small 16-bit tensor declared again as f32 */
  const uint64_t tiny[] = {16};
  for (int d = 0; d < 2; d++) {
    px_declare_args a16 = dargs(d ? "f16.tiny" : "bf16.tiny", tiny, 1);
    a16.dtype = d ? PX_DT_F16 : PX_DT_BF16;
    px_tensor_state* t16 = NULL;
    assert_int_equal(declare(&a16, &t16, &created, err, sizeof err), PX_ST_OK);
    a16.dtype = PX_DT_F32;
    px_tensor_state* tx = SENTINEL;
    assert_int_equal(declare(&a16, &tx, &created, err, sizeof err), PX_ST_FAILED_PRECONDITION);
    assert_non_null(strstr(err, "f32"));
    assert_non_null(strstr(err, d ? "f16" : "bf16"));
    assert_ptr_equal(tx, SENTINEL);
  }

  /* f32 fits half as many elements */
  const uint64_t f32_ok[] = {2048}, f32_big[] = {2049};
  px_declare_args a = dargs("f32.ok", f32_ok, 1);
  px_tensor_state* t = NULL;
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_OK);
  a = dargs("f32.big", f32_big, 1);
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_RESOURCE_EXHAUSTED);

  /* values of a 16-bit tensor: whole 2-byte elements, in pieces */
  const uint64_t vshape[] = {2500};
  uint16_t* v = malloc(2500 * sizeof *v);
  assert_non_null(v);
  for (int i = 0; i < 2500; i++) v[i] = px_f32_to_bf16((float)i * 0.25f - 300.0f);
  a = dargs("bf16.values", vshape, 1);
  a.dtype = PX_DT_BF16;
  a.values = (const uint8_t*)v;
  a.values_len = 3;
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_INVALID_ARGUMENT);
  assert_non_null(strstr(err, "multiple of 2"));
  a.values_len = 1100 * 2;
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_OK);
  assert_true(created);
  assert_int_equal(t->init_cursor, 1100);
  chunks_initialized(t, true, false, false);
  a.values = (const uint8_t*)(v + 1100);
  a.values_offset = 1100;
  a.values_len = 1400 * 2;
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_OK);
  assert_false(created);
  chunks_initialized(t, true, true, true);
  assert_memory_equal(t->params, v, 2500 * 2);
  assert_true(t->chunks[2].view[0].checksum ==
              px_checksum(v + 2048, (2500 - 2048) * sizeof *v));
  free(v);
  free(want);
  free(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_declare_create_and_repeat, svc_setup, svc_teardown),
      cmocka_unit_test_setup_teardown(test_declare_invalid, svc_setup, svc_teardown),
      cmocka_unit_test_teardown(test_max_tensors, svc_teardown),
      cmocka_unit_test_setup_teardown(test_values_in_pieces, svc_setup, svc_teardown),
      cmocka_unit_test_setup_teardown(test_upload_taken_over, svc_setup, svc_teardown),
      cmocka_unit_test_setup_teardown(test_initializer_fill, svc_setup, svc_teardown),
      cmocka_unit_test_setup_teardown(test_chunking, svc_setup, svc_teardown),
      cmocka_unit_test_teardown(test_chunking_with_momentum, svc_teardown),
      cmocka_unit_test_setup_teardown(test_version_min_and_checksum, svc_setup, svc_teardown),
      cmocka_unit_test_teardown(test_declare_16bit, svc_teardown),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
