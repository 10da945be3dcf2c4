/* Unit tests of server/store.c (declaration of f32, bf16 and f16 tensors, initial
 * values, chunking, versions and checksums, buffer recycling), server/frames.c (the
 * per-step delta history, the encode-once frame cache, cache keys, build jobs on the
 * compute pool) and server/config.c (flags and PMX_* variables).
 * The service is initialised without starting its gRPC server; steps are made the way
 * the push handler makes them (px_frames_step_begin under the chunk lock, then
 * px_frames_after_step). Background builds are waited for with bounded polling loops. */
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

#include "codec/codec.h"
#include "codec/diff.h"
#include "codec/frame.h"
#include "server.h"

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
static bool g_live; /* g_svc is initialised */

static void svc_init(int argc, char** argv) {
  px_config cfg;
  assert_int_equal(px_config_parse(&cfg, argc, argv), 0);
  char err[256] = "";
  if (px_service_init(&g_svc, &cfg, err, sizeof err) != 0) fail_msg("service init: %s", err);
  g_live = true;
}

static int svc_setup(void** state) {
  (void)state;
  char* argv[] = {"paramex-server", "--workers", "2", "--chunk-bytes", "4K", "--threads", "1"};
  px_config cfg;
  if (px_config_parse(&cfg, ARGC(argv), argv) != 0) return -1;
  char err[256];
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
  px_log_threshold = PX_LOG_WARN; /* no "declared tensor" lines */
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
  return px_store_declare(&g_svc, a, t, created, err, errlen);
}

static uint32_t ntensors(void) { return atomic_load(&g_svc.ntensors); }

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
  assert_ptr_equal(px_store_tensor(&g_svc, 0), t);
  assert_null(px_store_tensor(&g_svc, 1));
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
  assert_ptr_equal(px_store_tensor(&g_svc, 1), tb);

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
   * not the creator's upload: ignored. */
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
  /* After completion a repeat is still accepted and changes nothing. */
  assert_int_equal(put_values("w", shape, other, 0, N * 4, 1, 42, &t, &created, err, sizeof err),
                   PX_ST_OK);
  assert_memory_equal(t->params, v, N * 4);
  free(v);
  free(other);
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
  px_tensor_state* t1 = px_store_tensor(&g_svc, 0);
  px_tensor_state* t2 = px_store_tensor(&g_svc, 1);
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
    if (t->mom) assert_ptr_equal(c->mom, t->mom + (uint64_t)i * chunk_elems);
    else assert_null(c->mom);
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
    assert_null(t->mom);
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
  assert_non_null(t->mom);
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

/* ---- buffers and frames --------------------------------------------------------------------- */

static void test_buf_recycling(void** state) {
  (void)state;
  uint8_t* p = px_buf_get(5000); /* the 8 KiB class */
  assert_non_null(p);
  memset(p, 0xAB, 5000);
  px_buf_put(p, 5000);
  uint8_t* q = px_buf_get(8192); /* same class: the same buffer */
  assert_ptr_equal(q, p);
  uint8_t* r = px_buf_get(4096); /* another class */
  assert_non_null(r);
  assert_ptr_not_equal(r, p);
  uint8_t* s = px_buf_get(6000); /* the class is empty now: a new buffer */
  assert_non_null(s);
  assert_ptr_not_equal(s, p);
  px_buf_put(q, 8192);
  px_buf_put(s, 6000);
  /* Both come back (most recent first). */
  uint8_t* x = px_buf_get(7000);
  uint8_t* y = px_buf_get(4097);
  assert_ptr_equal(x, s);
  assert_ptr_equal(y, p);
  px_buf_put(x, 7000);
  px_buf_put(y, 4097);
  px_buf_put(r, 4096);
  px_buf_put(NULL, 4096); /* accepted */
  assert_ptr_equal(px_buf_get(1), r);
  px_buf_put(r, 1);

  /* Large classes (mapped memory) are recycled the same way. */
  uint8_t* big = px_buf_get(300u << 10);
  assert_non_null(big);
  memset(big, 1, 300u << 10);
  px_buf_put(big, 300u << 10);
  assert_ptr_equal(px_buf_get(400u << 10), big);
  px_buf_put(big, 400u << 10);
  /* Past the largest class: refused. */
  assert_null(px_buf_get((4096u << 15) + 1));
}

/* ---- steps, the history and the frame cache --------------------------------------------- */

static int refs(px_frame* f) { return atomic_load(&f->refs); }

/* splitmix64: deterministic test data */
static uint64_t rng_state;
static uint64_t rnd(void) {
  uint64_t z = (rng_state += UINT64_C(0x9E3779B97F4A7C15));
  z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
  return z ^ (z >> 31);
}
static double gauss(void) {
  double u1 = ((double)(rnd() >> 11) + 1.0) * 0x1.0p-53;
  double u2 = (double)(rnd() >> 11) * 0x1.0p-53;
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static void nap_ms(long ms) {
  struct timespec ts = {0, ms * 1000000L};
  nanosleep(&ts, NULL);
}

static void* dup_mem(const void* p, size_t n) {
  void* q = malloc(n ? n : 1);
  assert_non_null(q);
  memcpy(q, p, n);
  return q;
}

/* A copy of chunk c's native bits, taken under its lock. */
static void* chunk_bits(const px_tensor_state* t, px_chunk_state* c) {
  pthread_mutex_lock(&c->mu);
  void* b = dup_mem(c->params, (size_t)c->elems * t->elem);
  pthread_mutex_unlock(&c->mu);
  return b;
}

/* View v's words of native bits: the bits themselves, or the bf16 view of f32 bits. */
static void* view_words(const px_tensor_state* t, const void* bits, size_t n, int v) {
  if (v == 0) return dup_mem(bits, n * t->elem);
  uint16_t* o = malloc(n * 2);
  assert_non_null(o);
  px_f32_to_bf16_n(bits, o, n);
  return o;
}

/* One SGD step on chunk c made the way the push handler makes it: the new values (in f32,
 * rounded back for 16-bit tensors), version + 1 and px_frames_step_begin under the lock,
 * then px_frames_after_step with copies of the bits before and after. Returns the new
 * version. */
static uint64_t step(px_tensor_state* t, px_chunk_state* c, float lr) {
  const size_t n = c->elems, nb = n * t->elem;
  void* old = malloc(nb);
  void* nw = malloc(nb);
  float* f = malloc(n * sizeof *f);
  assert_true(old && nw && f);
  pthread_mutex_lock(&c->mu);
  memcpy(old, c->params, nb);
  if (t->dtype == PX_DT_F32) memcpy(f, c->params, nb);
  else if (t->dtype == PX_DT_BF16) px_bf16_to_f32_n(c->params, f, n);
  else px_f16_to_f32_n(c->params, f, n);
  for (size_t i = 0; i < n; i++) f[i] -= lr * (float)(0.01 * gauss());
  if (t->dtype == PX_DT_F32) memcpy(c->params, f, nb);
  else if (t->dtype == PX_DT_BF16) px_f32_to_bf16_n(f, c->params, n);
  else px_f32_to_f16_n(f, c->params, n);
  memcpy(nw, c->params, nb);
  c->version++;
  const uint64_t v = c->version;
  px_frames_step_begin(&g_svc, c, true);
  pthread_mutex_unlock(&c->mu);
  px_frames_after_step(&g_svc, t, c, v, old, nw);
  free(f);
  free(nw);
  free(old);
  return v;
}

/* The cache slot of key, -1 when none. */
static int slot_of(const px_view_state* vs, uint64_t key) {
  for (int i = 0; i < PX_CACHE_SLOTS; i++)
    if (vs->cache[i].used && vs->cache[i].key == key) return i;
  return -1;
}

/* Sum of the allocation sizes of every history frame of every chunk and view. */
static int64_t history_sum(void) {
  int64_t s = 0;
  for (uint32_t i = 0; i < ntensors(); i++) {
    px_tensor_state* t = px_store_tensor(&g_svc, i);
    for (uint32_t k = 0; k < t->nchunks; k++) {
      px_chunk_state* c = &t->chunks[k];
      pthread_mutex_lock(&c->mu);
      for (int v = 0; v < 2; v++)
        for (uint32_t h = 0; h < c->view[v].nhist; h++) s += (int64_t)c->view[v].hist[h]->cap;
      pthread_mutex_unlock(&c->mu);
    }
  }
  return s;
}

static uint64_t ctr(_Atomic uint64_t* c) { return atomic_load(c); }

/* Drops every frame of every chunk (the cache first, then the history) and checks that
 * the memory counters come back to zero: every frame counted was uncounted once. */
static void clear_all_frames(void) {
  for (int history_too = 0; history_too < 2; history_too++) {
    for (uint32_t i = 0; i < ntensors(); i++) {
      px_tensor_state* t = px_store_tensor(&g_svc, i);
      for (uint32_t k = 0; k < t->nchunks; k++) {
        px_chunk_state* c = &t->chunks[k];
        pthread_mutex_lock(&c->mu);
        px_frames_clear(&g_svc, c, history_too);
        for (int v = 0; v < 2; v++) {
          for (int j = 0; j < PX_CACHE_SLOTS; j++) assert_false(c->view[v].cache[j].used);
          if (history_too) assert_int_equal(c->view[v].nhist, 0);
        }
        pthread_mutex_unlock(&c->mu);
      }
    }
    assert_int_equal(atomic_load(&g_svc.ctr.history_bytes), history_sum());
    if (!history_too) /* only the history is left */
      assert_int_equal(atomic_load(&g_svc.ctr.frame_bytes), history_sum());
  }
  assert_int_equal(atomic_load(&g_svc.ctr.history_bytes), 0);
  assert_int_equal(atomic_load(&g_svc.ctr.frame_bytes), 0);
}

/* Decodes frame f as a pull sends it (px_chunk_decode) onto a copy of start (or onto
 * junk when start is NULL) and expects want. */
static void expect_frame(const px_frame* f, const void* start, const void* want, size_t n,
                         int width) {
  const size_t bytes = n * (size_t)width;
  px_chunk h;
  memset(&h, 0, sizeof h);
  h.encoding = f->encoding;
  h.raw_len = (uint32_t)bytes;
  h.checksum = f->checksum;
  h.has_payload = f->len > 0;
  h.payload_len = f->len;
  px_iov seg = {f->data, f->len};
  uint8_t* dst = malloc(bytes);
  assert_non_null(dst);
  if (start) memcpy(dst, start, bytes);
  else memset(dst, 0xEE, bytes);
  char err[256] = "";
  px_decode_result r = px_chunk_decode(&h, &seg, 1, dst, n, width, err, sizeof err);
  if (r != PX_DECODE_OK)
    fail_msg("%s frame v%llu (base %lld): %s", px_encoding_name(f->encoding),
             (unsigned long long)f->version, (long long)f->base, err);
  assert_memory_equal(dst, want, bytes);
  assert_true(f->checksum == px_checksum(want, bytes));
  if (f->encoding == PX_ENC_DELTA_ZSTD) {
    /* the decoded delta words applied to the base give the new words */
    assert_non_null(start);
    uint8_t* d = malloc(bytes);
    assert_non_null(d);
    assert_int_equal(px_decode_delta_words(f->data, f->len, n, width, d), 0);
    px_delta_apply(start, d, n, width, dst);
    assert_memory_equal(dst, want, bytes);
    free(d);
  }
  free(dst);
}

/* The frame for key: from the cache, or built on the pool, waited for with a bounded
 * polling loop (2 s). Returns a referenced frame. */
static px_frame* get_frame(px_tensor_state* t, px_chunk_state* c, int view, uint64_t key) {
  for (int i = 0; i < 2000; i++) {
    bool wait = false;
    pthread_mutex_lock(&c->mu);
    px_frame* f = px_frames_get(&g_svc, t, c, view, key, &wait);
    pthread_mutex_unlock(&c->mu);
    if (f) return f;
    if (!wait) fail_msg("pmx_frames_get: no frame and nothing to wait for");
    nap_ms(1);
  }
  fail_msg("no frame for key %llu after 2 s", (unsigned long long)key);
  return NULL;
}

static uint64_t key_of(px_chunk_state* c, int view, uint64_t have, bool delta, bool shuffle) {
  pthread_mutex_lock(&c->mu);
  uint64_t k = px_frames_key(&g_svc, c, view, have, delta, shuffle);
  pthread_mutex_unlock(&c->mu);
  return k;
}

/* A job that holds the (one-thread) pool until opened, so that build jobs queue behind
 * it; a marker job after them tells when they ran. */
typedef struct gate {
  px_job job;
  atomic_int open, ran;
} gate;

static void gate_run(px_job* j) {
  gate* g = (gate*)j;
  atomic_store(&g->ran, 1);
  for (int i = 0; i < 4000 && !atomic_load(&g->open); i++) nap_ms(1);
}

static void marker_run(px_job* j) { atomic_store(&((gate*)j)->ran, 1); }

static void pool_block(gate* g) {
  memset(g, 0, sizeof *g);
  g->job.fn = gate_run;
  px_pool_submit(g_svc.pool, &g->job);
}

/* Opens the gate and returns once every job queued behind it has run. */
static void pool_release_and_drain(gate* g) {
  static gate m;
  memset(&m, 0, sizeof m);
  m.job.fn = marker_run;
  px_pool_submit(g_svc.pool, &m.job);
  atomic_store(&g->open, 1);
  for (int i = 0; i < 2000 && !atomic_load(&m.ran); i++) nap_ms(1);
  assert_true(atomic_load(&m.ran));
}

static px_tensor_state* declare_normal(const char* name, uint64_t numel, int dtype, float sd,
                                        uint64_t seed) {
  px_declare_args a = dargs(name, &numel, 1);
  a.dtype = dtype;
  a.init_kind = PX_FILL_NORMAL;
  a.init_a = 0;
  a.init_b = sd;
  a.init_seed = seed;
  px_tensor_state* t = NULL;
  bool created;
  char err[256];
  int st = declare(&a, &t, &created, err, sizeof err);
  if (st != PX_ST_OK) fail_msg("declare %s: %s", name, err);
  return t;
}

static void test_chunk_frames(void** state) {
  (void)state;
  const uint64_t shape[] = {3000};
  px_declare_args a = dargs("f", shape, 1);
  a.init_kind = PX_FILL_NORMAL;
  a.init_a = 0;
  a.init_b = 1;
  a.init_seed = 77;
  px_tensor_state* t = NULL;
  bool created;
  char err[256];
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PX_ST_OK);
  px_chunk_state* c = &t->chunks[2];
  assert_int_equal(c->elems, 952);
  const size_t bytes = 952 * 4;
  px_view_state* vs = &c->view[0];
  /* nothing is built before it is asked for */
  assert_int_equal(vs->nhist, 0);
  for (int i = 0; i < PX_CACHE_SLOTS; i++) assert_false(vs->cache[i].used);
  assert_true(vs->checksum_valid);
  assert_true(vs->checksum == px_checksum(c->params, bytes));
  pthread_mutex_lock(&c->mu);
  assert_null(px_chunk_wake(&g_svc, c)); /* nobody waits */
  pthread_mutex_unlock(&c->mu);
  assert_true(key_of(c, 0, PX_BASE_NONE, true, true) == PX_KEY_FULL);

  /* A full frame, built once on the pool and then shared. */
  const uint64_t e0 = ctr(&g_svc.ctr.encodes), h0 = ctr(&g_svc.ctr.cache_hits);
  px_frame* f1 = get_frame(t, c, 0, PX_KEY_FULL);
  assert_int_equal(f1->version, 0);
  assert_true(f1->base == PX_BASE_NONE);
  assert_true(f1->encoding == PX_ENC_SHUFFLE_ZSTD || f1->encoding == PX_ENC_RAW);
  assert_false(f1->in_history);
  assert_true(f1->checksum == px_checksum(c->params, bytes));
  assert_true(f1->len <= f1->cap);
  expect_frame(f1, NULL, c->params, 952, 4);
  assert_int_equal(ctr(&g_svc.ctr.encodes), e0 + 1);
  px_frame* f2 = get_frame(t, c, 0, PX_KEY_FULL);
  assert_ptr_equal(f1, f2);
  assert_int_equal(refs(f1), 3); /* the cache's + ours */
  assert_int_equal(ctr(&g_svc.ctr.encodes), e0 + 1);
  assert_true(ctr(&g_svc.ctr.cache_hits) >= h0 + 2);
  int si = slot_of(vs, PX_KEY_FULL);
  assert_true(si >= 0);
  assert_ptr_equal(vs->cache[si].frame, f1);
  assert_false(vs->cache[si].pending);
  px_frame_unref(f1);
  px_frame_unref(f2);
  assert_int_equal(refs(vs->cache[si].frame), 1);

  /* RAW for clients that accept no shuffle */
  assert_true(key_of(c, 0, PX_BASE_NONE, true, false) == PX_KEY_RAW);
  px_frame* fr = get_frame(t, c, 0, PX_KEY_RAW);
  assert_int_equal(fr->encoding, PX_ENC_RAW);
  assert_int_equal(fr->len, bytes);
  assert_memory_equal(fr->data, c->params, bytes);
  px_frame_unref(fr);

  /* A step: the chunk drops its frames; a holder keeps the old one intact. */
  px_frame* old = get_frame(t, c, 0, PX_KEY_FULL);
  void* before = chunk_bits(t, c);
  pthread_mutex_lock(&c->mu);
  float* p = c->params;
  const float old0 = p[0];
  p[0] = old0 + 42.0f;
  void* after = dup_mem(c->params, bytes);
  c->version = 1;
  px_frames_step_begin(&g_svc, c, true);
  assert_true(slot_of(vs, PX_KEY_FULL) < 0);
  assert_true(slot_of(vs, PX_KEY_RAW) < 0);
  si = slot_of(vs, 0); /* the delta from version 0 will be installed: pulls wait for it */
  assert_true(si >= 0);
  assert_true(vs->cache[si].pending);
  assert_null(vs->cache[si].frame);
  assert_false(vs->checksum_valid);
  bool wait = false;
  assert_null(px_frames_get(&g_svc, t, c, 0, 0, &wait));
  assert_true(wait);
  pthread_mutex_unlock(&c->mu);
  assert_int_equal(refs(old), 1); /* only ours now */
  px_frames_after_step(&g_svc, t, c, 1, before, after);
  assert_int_equal(old->version, 0);
  expect_frame(old, NULL, before, 952, 4);
  px_frame* f3 = get_frame(t, c, 0, PX_KEY_FULL);
  assert_ptr_not_equal(f3, old);
  assert_int_equal(f3->version, 1);
  assert_true(f3->checksum == px_checksum(c->params, bytes));
  assert_true(f3->checksum != old->checksum);
  expect_frame(f3, NULL, after, 952, 4);
  assert_int_equal(refs(f3), 2);
  /* the one-step delta: one changed word */
  px_frame* d1 = get_frame(t, c, 0, 0);
  assert_int_equal(d1->encoding, PX_ENC_DELTA_ZSTD);
  assert_int_equal(d1->base, 0);
  assert_true(d1->len < 100);
  expect_frame(d1, before, after, 952, 4);
  assert_ptr_equal(d1, vs->hist[0]);
  px_frame_unref(d1);
  px_frame_unref(old); /* freed: its buffer goes back to the free list */
  px_frame_unref(f3);
  si = slot_of(vs, PX_KEY_FULL);
  assert_int_equal(refs(vs->cache[si].frame), 1);
  px_frame_unref(NULL); /* accepted */
  free(before);
  free(after);
}

/* --history H: each step adds its delta; H are kept and no more; the counter follows; the
 * slot for base version-1 holds the delta frame. */
static void test_after_step_history(void** state) {
  (void)state;
  char* argv[] = {"paramex-server", "--workers", "1", "--chunk-bytes", "4K", "--threads", "1",
                  "--history", "3"};
  svc_init(ARGC(argv), argv);
  rng_state = 1;
  px_tensor_state* t = declare_normal("h", 2500, PX_DT_F32, 0.02f, 5);
  assert_int_equal(t->nchunks, 3);
  enum { STEPS = 8 };
  px_chunk_state* c = &t->chunks[1];
  const size_t n = c->elems, bytes = n * 4;
  void* bits[STEPS + 1];
  bits[0] = chunk_bits(t, c);
  assert_int_equal(atomic_load(&g_svc.ctr.history_bytes), 0);
  for (uint64_t s = 1; s <= STEPS; s++) {
    const uint64_t e0 = ctr(&g_svc.ctr.encodes);
    for (uint32_t k = 0; k < t->nchunks; k++) assert_int_equal(step(t, &t->chunks[k], 1e-3f), s);
    assert_true(ctr(&g_svc.ctr.encodes) >= e0 + t->nchunks);
    bits[s] = chunk_bits(t, c);
    px_view_state* vs = &c->view[0];
    pthread_mutex_lock(&c->mu);
    const uint32_t want = s < 3 ? (uint32_t)s : 3;
    assert_int_equal(vs->nhist, want);
    for (uint32_t i = 0; i < vs->nhist; i++) {
      px_frame* h = vs->hist[i];
      assert_int_equal(h->version, s - i);
      assert_int_equal(h->base, s - i - 1);
      assert_int_equal(h->encoding, PX_ENC_DELTA_ZSTD);
      assert_true(h->in_history);
      assert_true(h->len > 0 && h->len <= h->cap);
    }
    for (uint32_t i = vs->nhist; i < PX_MAX_HISTORY; i++) assert_null(vs->hist[i]);
    assert_true(vs->checksum_valid);
    assert_true(vs->checksum == px_checksum(bits[s], bytes));
    int si = slot_of(vs, s - 1);
    assert_true(si >= 0);
    assert_false(vs->cache[si].pending);
    px_frame* f = vs->cache[si].frame;
    assert_non_null(f);
    assert_int_equal(f->encoding, PX_ENC_DELTA_ZSTD); /* SGD deltas compress ~2x */
    assert_ptr_equal(f, vs->hist[0]);
    assert_int_equal(f->version, s);
    assert_int_equal(f->base, s - 1);
    assert_true(f->len * 10 < bytes * 8);
    assert_false(c->view[1].enabled);
    assert_int_equal(c->view[1].nhist, 0);
    pthread_mutex_unlock(&c->mu);
    expect_frame(f, bits[s - 1], bits[s], n, 4);
    for (uint32_t i = 0; i < vs->nhist; i++)
      expect_frame(vs->hist[i], bits[s - i - 1], bits[s - i], n, 4);
    assert_int_equal(atomic_load(&g_svc.ctr.history_bytes), history_sum());
    assert_true(history_sum() > 0);
    /* the frame counter covers at least the history */
    assert_true(atomic_load(&g_svc.ctr.frame_bytes) >= atomic_load(&g_svc.ctr.history_bytes));
  }
  /* the other chunks likewise */
  for (uint32_t k = 0; k < t->nchunks; k++) assert_int_equal(t->chunks[k].view[0].nhist, 3);
  uint64_t vmax;
  assert_int_equal(px_tensor_version_min(t, &vmax, NULL), STEPS);
  assert_int_equal(vmax, STEPS);

  /* A step whose copies could not be made: the history (now with a gap) goes, pulls get
   * full chunks, and the next step starts a new history. */
  pthread_mutex_lock(&c->mu);
  c->version++;
  px_frames_step_begin(&g_svc, c, true);
  pthread_mutex_unlock(&c->mu);
  px_frames_after_step_failed(&g_svc, c, STEPS + 1);
  assert_int_equal(c->view[0].nhist, 0);
  for (int i = 0; i < PX_CACHE_SLOTS; i++) assert_false(c->view[0].cache[i].used);
  assert_int_equal(atomic_load(&g_svc.ctr.history_bytes), history_sum());
  assert_true(key_of(c, 0, STEPS, true, true) == PX_KEY_FULL);
  void* cur = chunk_bits(t, c);
  px_frame* f = get_frame(t, c, 0, PX_KEY_FULL);
  assert_int_equal(f->version, STEPS + 1);
  expect_frame(f, NULL, cur, n, 4);
  px_frame_unref(f);
  assert_true(c->view[0].checksum_valid);
  assert_true(c->view[0].checksum == px_checksum(cur, bytes));
  assert_int_equal(step(t, c, 1e-3f), STEPS + 2);
  void* next = chunk_bits(t, c);
  assert_int_equal(c->view[0].nhist, 1);
  assert_int_equal(key_of(c, 0, STEPS + 1, true, true), STEPS + 1);
  assert_true(key_of(c, 0, STEPS, true, true) == PX_KEY_FULL);
  f = get_frame(t, c, 0, STEPS + 1);
  expect_frame(f, cur, next, n, 4);
  px_frame_unref(f);
  free(next);
  free(cur);
  clear_all_frames();
  for (int s = 0; s <= STEPS; s++) free(bits[s]);
}

/* --history-bytes: the history stays within its budget; the newest delta is always kept. */
static void test_history_budget(void** state) {
  (void)state;
  char* argv[] = {"paramex-server", "--workers", "1", "--chunk-bytes", "4K", "--threads", "1",
                  "--history", "4"};
  svc_init(ARGC(argv), argv);
  rng_state = 2;
  px_tensor_state* t = declare_normal("b", 1024, PX_DT_F32, 0.02f, 6);
  px_chunk_state* c = &t->chunks[0];
  step(t, c, 1e-3f);
  const int64_t fcap = (int64_t)c->view[0].hist[0]->cap;
  assert_int_equal(atomic_load(&g_svc.ctr.history_bytes), fcap);
  /* room for two deltas */
  g_svc.cfg.history_bytes = (uint64_t)(2 * fcap);
  void* prev = chunk_bits(t, c);
  for (int s = 2; s <= 10; s++) {
    uint64_t v = step(t, c, 1e-3f);
    void* cur = chunk_bits(t, c);
    px_view_state* vs = &c->view[0];
    const int64_t hb = atomic_load(&g_svc.ctr.history_bytes);
    assert_int_equal(hb, history_sum());
    assert_true(hb <= 2 * fcap);
    assert_true(vs->nhist >= 1 && vs->nhist <= 2);
    for (uint32_t i = 0; i < vs->nhist; i++) assert_int_equal(vs->hist[i]->version, v - i);
    expect_frame(vs->hist[0], prev, cur, c->elems, 4);
    free(prev);
    prev = cur;
  }
  /* A budget of 0 keeps only the newest delta (it is also the frame pulls get). */
  g_svc.cfg.history_bytes = 0;
  step(t, c, 1e-3f);
  assert_int_equal(c->view[0].nhist, 1);
  assert_int_equal(atomic_load(&g_svc.ctr.history_bytes), fcap);
  free(prev);
}

/* The key a pull uses, by the base it holds and the encodings it accepts. */
static void test_frames_key(void** state) {
  (void)state;
  char* argv[] = {"paramex-server", "--workers", "1", "--chunk-bytes", "4K", "--threads", "1",
                  "--history", "3"};
  svc_init(ARGC(argv), argv);
  rng_state = 3;
  px_tensor_state* t = declare_normal("k", 1024, PX_DT_F32, 0.02f, 7);
  px_chunk_state* c = &t->chunks[0];
  void* bits[6];
  bits[0] = chunk_bits(t, c);
  for (int s = 1; s <= 5; s++) {
    step(t, c, 1e-3f);
    bits[s] = chunk_bits(t, c);
  }
  /* version 5, history 3: the deltas 2->3, 3->4, 4->5 */
  const uint64_t FULL = PX_KEY_FULL, RAW = PX_KEY_RAW;
  const struct {
    uint64_t have;
    uint64_t both, no_shuffle, no_delta, neither;
  } cases[] = {
      {4, 4, 4, FULL, RAW},          /* cached frame */
      {3, 3, 3, FULL, RAW},          /* within the history */
      {2, 2, 2, FULL, RAW},          /* the oldest base within it */
      {1, FULL, RAW, FULL, RAW},     /* too old */
      {0, FULL, RAW, FULL, RAW},
      {PX_BASE_NONE, FULL, RAW, FULL, RAW},
      {5, FULL, RAW, FULL, RAW},     /* the current version (pulls send UNCHANGED first) */
      {6, FULL, RAW, FULL, RAW},     /* never seen */
      {1000, FULL, RAW, FULL, RAW},
      {PX_KEY_RAW, FULL, RAW, FULL, RAW},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const uint64_t h = cases[i].have;
    if (key_of(c, 0, h, true, true) != cases[i].both ||
        key_of(c, 0, h, true, false) != cases[i].no_shuffle ||
        key_of(c, 0, h, false, true) != cases[i].no_delta ||
        key_of(c, 0, h, false, false) != cases[i].neither)
      fail_msg("have %llu: keys %llu %llu %llu %llu", (unsigned long long)h,
               (unsigned long long)key_of(c, 0, h, true, true),
               (unsigned long long)key_of(c, 0, h, true, false),
               (unsigned long long)key_of(c, 0, h, false, true),
               (unsigned long long)key_of(c, 0, h, false, false));
  }
  /* each key's frame brings that base to version 5 */
  for (uint64_t have = 2; have <= 4; have++) {
    px_frame* f = get_frame(t, c, 0, key_of(c, 0, have, true, true));
    assert_int_equal(f->encoding, PX_ENC_DELTA_ZSTD);
    assert_int_equal(f->base, have);
    assert_int_equal(f->version, 5);
    expect_frame(f, bits[have], bits[5], c->elems, 4);
    px_frame_unref(f);
  }
  /* a base older than the history asked for anyway: a full chunk under that key */
  px_frame* f = get_frame(t, c, 0, 1);
  assert_true(f->encoding == PX_ENC_RAW);
  expect_frame(f, bits[1], bits[5], c->elems, 4);
  px_frame_unref(f);
  /* the bf16 view has no history until it is enabled and steps happen */
  assert_true(key_of(c, 1, 4, true, true) == FULL);
  assert_true(key_of(c, 1, 4, true, false) == RAW);
  for (int s = 0; s <= 5; s++) free(bits[s]);

  /* --no-compression: always the full (RAW) frame */
  px_service_deinit(&g_svc);
  g_live = false;
  char* raw_argv[] = {"paramex-server", "--workers", "1", "--chunk-bytes", "4K", "--threads",
                      "1", "--no-compression"};
  svc_init(ARGC(raw_argv), raw_argv);
  t = declare_normal("k", 1024, PX_DT_F32, 0.02f, 7);
  c = &t->chunks[0];
  for (int s = 1; s <= 3; s++) step(t, c, 1e-3f);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    for (int m = 0; m < 4; m++)
      assert_true(key_of(c, 0, cases[i].have, m & 1, m & 2) == FULL);

  /* --history 0: no deltas at all */
  px_service_deinit(&g_svc);
  g_live = false;
  char* h0_argv[] = {"paramex-server", "--workers", "1", "--chunk-bytes", "4K", "--threads",
                     "1", "--history", "0"};
  svc_init(ARGC(h0_argv), h0_argv);
  t = declare_normal("k", 1024, PX_DT_F32, 0.02f, 7);
  c = &t->chunks[0];
  for (int s = 1; s <= 3; s++) {
    step(t, c, 1e-3f);
    assert_int_equal(c->view[0].nhist, 0);
    assert_true(c->view[0].checksum_valid);
    assert_true(c->view[0].checksum == px_checksum(c->params, c->elems * 4));
    assert_true(slot_of(&c->view[0], (uint64_t)s - 1) < 0);
    assert_true(key_of(c, 0, (uint64_t)s - 1, true, true) == FULL);
    assert_true(key_of(c, 0, (uint64_t)s - 1, true, false) == RAW);
  }
  assert_int_equal(atomic_load(&g_svc.ctr.history_bytes), 0);
  void* cur = chunk_bits(t, c);
  f = get_frame(t, c, 0, FULL);
  assert_int_equal(f->version, 3);
  expect_frame(f, NULL, cur, c->elems, 4);
  px_frame_unref(f);
  free(cur);
}

/* Frames for older bases are built on the pool, once, and reconstruct exactly. */
static void test_build_older_base(void** state) {
  (void)state;
  char* argv[] = {"paramex-server", "--workers", "1", "--chunk-bytes", "4K", "--threads", "1",
                  "--history", "4"};
  svc_init(ARGC(argv), argv);
  rng_state = 4;
  px_tensor_state* t = declare_normal("o", 1024, PX_DT_F32, 0.02f, 8);
  px_chunk_state* c = &t->chunks[0];
  const size_t n = c->elems, bytes = n * 4;
  void* bits[5];
  bits[0] = chunk_bits(t, c);
  for (int s = 1; s <= 4; s++) {
    step(t, c, 1e-3f);
    bits[s] = chunk_bits(t, c);
  }
  px_view_state* vs = &c->view[0];
  for (uint64_t have = 0; have <= 2; have++) {
    assert_int_equal(key_of(c, 0, have, true, true), have);
    const uint64_t e0 = ctr(&g_svc.ctr.encodes);
    bool wait = false;
    pthread_mutex_lock(&c->mu);
    assert_null(px_frames_get(&g_svc, t, c, 0, have, &wait));
    assert_true(wait);
    assert_true(slot_of(vs, have) >= 0); /* pending, or built already */
    pthread_mutex_unlock(&c->mu);
    px_frame* f = get_frame(t, c, 0, have);
    assert_int_equal(ctr(&g_svc.ctr.encodes), e0 + 1); /* one encode however often asked */
    assert_int_equal(f->encoding, PX_ENC_DELTA_ZSTD);
    assert_int_equal(f->version, 4);
    assert_int_equal(f->base, have);
    assert_false(f->in_history);
    assert_true(f->checksum == px_checksum(bits[4], bytes));
    expect_frame(f, bits[have], bits[4], n, 4);
    /* the same delta as encoding v -> 4 directly */
    void* d = malloc(bytes);
    void* want = malloc(bytes);
    assert_true(d && want);
    assert_int_equal(px_decode_delta_words(f->data, f->len, n, 4, d), 0);
    px_delta(bits[4], bits[have], n, 4, want);
    assert_memory_equal(d, want, bytes);
    /* one direct diff is smaller than the chained one-step ones */
    size_t chained = 0;
    for (uint64_t s = have; s < 4; s++) chained += vs->hist[3 - s]->len;
    if (4 - have > 1) assert_true(f->len < chained);
    free(want);
    free(d);
    px_frame* again = get_frame(t, c, 0, have);
    assert_ptr_equal(again, f);
    assert_int_equal(ctr(&g_svc.ctr.encodes), e0 + 1);
    px_frame_unref(again);
    px_frame_unref(f);
  }
  /* a full snapshot: shuffled + zstd for N(0, 0.02^2) weights */
  px_frame* f = get_frame(t, c, 0, PX_KEY_FULL);
  assert_int_equal(f->encoding, PX_ENC_SHUFFLE_ZSTD);
  assert_true(f->len * 100 < bytes * 95);
  expect_frame(f, NULL, bits[4], n, 4);
  px_frame_unref(f);
  /* the base-3 slot was the least recently used and is gone; asked again, it is rebuilt
   * from the history */
  assert_true(slot_of(vs, 3) < 0);
  assert_int_equal(key_of(c, 0, 3, true, true), 3);
  f = get_frame(t, c, 0, 3);
  assert_ptr_not_equal(f, vs->hist[0]);
  expect_frame(f, bits[3], bits[4], n, 4);
  px_frame_unref(f);
  for (int s = 0; s <= 4; s++) free(bits[s]);
}

/* Pending slots: a second request waits for the first build; a full cache of pending
 * slots makes a pull wait; a build overtaken by a step installs nothing. */
static void test_build_pending_and_stale(void** state) {
  (void)state;
  char* argv[] = {"paramex-server", "--workers", "1", "--chunk-bytes", "4K", "--threads", "1",
                  "--history", "3"};
  svc_init(ARGC(argv), argv);
  rng_state = 5;
  px_tensor_state* t = declare_normal("p", 1024, PX_DT_F32, 0.02f, 9);
  px_chunk_state* c = &t->chunks[0];
  const size_t n = c->elems;
  void* bits[5];
  bits[0] = chunk_bits(t, c);
  for (int s = 1; s <= 3; s++) {
    step(t, c, 1e-3f);
    bits[s] = chunk_bits(t, c);
  }
  px_view_state* vs = &c->view[0];
  static gate g;
  pool_block(&g);
  const uint64_t e0 = ctr(&g_svc.ctr.encodes);
  const uint64_t keys[4] = {PX_KEY_FULL, PX_KEY_RAW, 1, 0};
  pthread_mutex_lock(&c->mu);
  for (int i = 0; i < 4; i++) {
    for (int again = 0; again < 2; again++) {
      bool wait = false;
      assert_null(px_frames_get(&g_svc, t, c, 0, keys[i], &wait));
      assert_true(wait);
    }
    int si = slot_of(vs, keys[i]);
    assert_true(si >= 0);
    assert_true(vs->cache[si].pending);
  }
  /* every slot pending: a fifth key waits without a slot (and the base-2 slot, the least
   * recently used finished one, was given up for them) */
  assert_true(slot_of(vs, 2) < 0);
  bool wait = false;
  assert_null(px_frames_get(&g_svc, t, c, 0, 2, &wait));
  assert_true(wait);
  assert_true(slot_of(vs, 2) < 0);
  pthread_mutex_unlock(&c->mu);
  pool_release_and_drain(&g);
  assert_int_equal(ctr(&g_svc.ctr.encodes), e0 + 4); /* one build per key */
  for (int i = 0; i < 4; i++) {
    int si = slot_of(vs, keys[i]);
    assert_true(si >= 0);
    assert_false(vs->cache[si].pending);
    assert_non_null(vs->cache[si].frame);
    assert_int_equal(vs->cache[si].frame->version, 3);
    expect_frame(vs->cache[si].frame, keys[i] < 4 ? bits[keys[i]] : NULL, bits[3], n, 4);
  }
  px_frame* f = get_frame(t, c, 0, 2); /* now it gets a slot */
  expect_frame(f, bits[2], bits[3], n, 4);
  px_frame_unref(f);

  /* A build for version 3 that runs only after the step to 4: it installs nothing, and
   * a newer build of the same key (queued after the step) is not disturbed. */
  assert_true(slot_of(vs, PX_KEY_FULL) < 0); /* evicted for the base-2 frame */
  pool_block(&g);
  pthread_mutex_lock(&c->mu);
  wait = false;
  assert_null(px_frames_get(&g_svc, t, c, 0, PX_KEY_FULL, &wait));
  assert_true(wait);
  pthread_mutex_unlock(&c->mu);
  const uint64_t e1 = ctr(&g_svc.ctr.encodes);
  assert_int_equal(step(t, c, 1e-3f), 4);
  bits[4] = chunk_bits(t, c);
  const uint64_t e2 = ctr(&g_svc.ctr.encodes);
  assert_true(e2 > e1);
  assert_true(slot_of(vs, PX_KEY_FULL) < 0); /* the step dropped the pending slot */
  int s3 = slot_of(vs, 3);
  assert_true(s3 >= 0);
  assert_int_equal(vs->cache[s3].frame->version, 4);
  pthread_mutex_lock(&c->mu);
  wait = false;
  assert_null(px_frames_get(&g_svc, t, c, 0, PX_KEY_FULL, &wait)); /* for version 4 */
  assert_true(wait);
  pthread_mutex_unlock(&c->mu);
  pool_release_and_drain(&g);
  assert_int_equal(ctr(&g_svc.ctr.encodes), e2 + 1); /* the stale job encoded nothing */
  int sf = slot_of(vs, PX_KEY_FULL);
  assert_true(sf >= 0);
  assert_false(vs->cache[sf].pending);
  assert_int_equal(vs->cache[sf].frame->version, 4);
  expect_frame(vs->cache[sf].frame, NULL, bits[4], n, 4);
  expect_frame(vs->cache[s3].frame, bits[3], bits[4], n, 4);
  clear_all_frames();
  for (int s = 0; s <= 4; s++) free(bits[s]);
}

/* The bf16 view of an f32 tensor: enabled by a pull, then its own history of 16-bit
 * deltas, its own checksum, and frames against the bf16 words the client holds. */
static void test_bf16_view(void** state) {
  (void)state;
  char* argv[] = {"paramex-server", "--workers", "1", "--chunk-bytes", "4K", "--threads", "1",
                  "--history", "2"};
  svc_init(ARGC(argv), argv);
  rng_state = 6;
  px_tensor_state* t = declare_normal("v", 1500, PX_DT_F32, 0.02f, 10);
  px_chunk_state* c = &t->chunks[1];
  const size_t n = c->elems;
  assert_int_equal(n, 476);
  assert_int_equal(px_view_width(t, 0), 4);
  assert_int_equal(px_view_width(t, 1), 2);
  px_view_state* vs = &c->view[1];
  assert_false(vs->enabled);
  assert_false(vs->checksum_valid);
  /* a pull of the view enables it (as pull_advance does) and gets a full frame */
  pthread_mutex_lock(&c->mu);
  vs->enabled = true;
  pthread_mutex_unlock(&c->mu);
  assert_true(key_of(c, 1, PX_BASE_NONE, true, true) == PX_KEY_FULL);
  void* b0 = chunk_bits(t, c);
  void* w0 = view_words(t, b0, n, 1);
  px_frame* f = get_frame(t, c, 1, PX_KEY_FULL);
  assert_int_equal(f->version, 0);
  expect_frame(f, NULL, w0, n, 2);
  px_frame_unref(f);
  assert_true(vs->checksum_valid); /* learnt from the build */
  assert_true(vs->checksum == px_checksum(w0, n * 2));
  void* words[5] = {w0, NULL, NULL, NULL, NULL};
  for (uint64_t s = 1; s <= 4; s++) {
    assert_int_equal(t->nchunks, 2);
    step(t, &t->chunks[0], 1e-3f);
    assert_int_equal(step(t, c, 1e-3f), s);
    void* b = chunk_bits(t, c);
    words[s] = view_words(t, b, n, 1);
    assert_int_equal(vs->nhist, s < 2 ? s : 2);
    assert_int_equal(c->view[0].nhist, s < 2 ? s : 2);
    assert_int_equal(t->chunks[0].view[1].nhist, 0); /* enabled per chunk */
    assert_true(vs->checksum_valid);
    assert_true(vs->checksum == px_checksum(words[s], n * 2));
    assert_true(c->view[0].checksum == px_checksum(b, n * 4));
    for (uint32_t i = 0; i < vs->nhist; i++) {
      assert_int_equal(vs->hist[i]->version, s - i);
      expect_frame(vs->hist[i], words[s - i - 1], words[s - i], n, 2);
    }
    int si = slot_of(vs, s - 1);
    assert_true(si >= 0);
    assert_false(vs->cache[si].pending);
    expect_frame(vs->cache[si].frame, words[s - 1], words[s], n, 2);
    /* most bf16 words do not move at lr 1e-3: far smaller than the f32 delta */
    assert_true(vs->hist[0]->len * 3 < c->view[0].hist[0]->len);
    assert_int_equal(atomic_load(&g_svc.ctr.history_bytes), history_sum());
    free(b);
  }
  /* a base two versions back, built from the view's history */
  assert_int_equal(key_of(c, 1, 2, true, true), 2);
  f = get_frame(t, c, 1, 2);
  assert_int_equal(f->base, 2);
  expect_frame(f, words[2], words[4], n, 2);
  px_frame_unref(f);
  assert_true(key_of(c, 1, 1, true, true) == PX_KEY_FULL);
  f = get_frame(t, c, 1, PX_KEY_RAW);
  assert_int_equal(f->encoding, PX_ENC_RAW);
  assert_memory_equal(f->data, words[4], n * 2);
  px_frame_unref(f);
  clear_all_frames();
  free(b0);
  for (int s = 0; s <= 4; s++) free(words[s]);
}

/* bf16 and f16 tensors: 16-bit words throughout the history and the frames. */
static void test_16bit_tensor_frames(void** state) {
  (void)state;
  char* argv[] = {"paramex-server", "--workers", "1", "--chunk-bytes", "4K", "--threads", "1",
                  "--history", "3"};
  svc_init(ARGC(argv), argv);
  rng_state = 7;
  const int dts[] = {PX_DT_BF16, PX_DT_F16};
  for (int d = 0; d < 2; d++) {
    px_tensor_state* t = declare_normal(d ? "f16" : "bf16", 2000, dts[d], 0.02f, 11);
    assert_int_equal(t->elem, 2);
    assert_int_equal(px_view_width(t, 0), 2);
    px_chunk_state* c = &t->chunks[1];
    const size_t n = c->elems, bytes = n * 2;
    assert_int_equal(n, 2000 - 1024);
    void* bits[5];
    bits[0] = chunk_bits(t, c);
    for (uint64_t s = 1; s <= 4; s++) {
      step(t, &t->chunks[0], 1e-2f);
      step(t, c, 1e-2f);
      bits[s] = chunk_bits(t, c);
      assert_memory_not_equal(bits[s], bits[s - 1], bytes);
      px_view_state* vs = &c->view[0];
      assert_int_equal(vs->nhist, s < 3 ? s : 3);
      assert_true(vs->checksum == px_checksum(bits[s], bytes));
      for (uint32_t i = 0; i < vs->nhist; i++)
        expect_frame(vs->hist[i], bits[s - i - 1], bits[s - i], n, 2);
      int si = slot_of(vs, s - 1);
      assert_true(si >= 0);
      expect_frame(vs->cache[si].frame, bits[s - 1], bits[s], n, 2);
      assert_int_equal(atomic_load(&g_svc.ctr.history_bytes), history_sum());
    }
    px_frame* f = get_frame(t, c, 0, 1);
    assert_int_equal(f->encoding, PX_ENC_DELTA_ZSTD);
    expect_frame(f, bits[1], bits[4], n, 2);
    px_frame_unref(f);
    f = get_frame(t, c, 0, PX_KEY_FULL);
    expect_frame(f, NULL, bits[4], n, 2);
    px_frame_unref(f);
    for (int s = 0; s <= 4; s++) free(bits[s]);
  }
  clear_all_frames();
}

/* --no-compression: RAW frames only, shared by both full keys, and no history. */
static void test_no_compression(void** state) {
  (void)state;
  char* argv[] = {"paramex-server", "--workers", "1", "--chunk-bytes", "4K", "--threads", "1",
                  "--no-compression"};
  svc_init(ARGC(argv), argv);
  rng_state = 8;
  px_tensor_state* t = declare_normal("r", 1024, PX_DT_F32, 0.02f, 12);
  px_chunk_state* c = &t->chunks[0];
  const size_t n = c->elems, bytes = n * 4;
  px_frame* f = get_frame(t, c, 0, PX_KEY_FULL);
  assert_int_equal(f->encoding, PX_ENC_RAW);
  assert_memory_equal(f->data, c->params, bytes);
  px_frame_unref(f);
  pthread_mutex_lock(&c->mu);
  c->view[1].enabled = true;
  pthread_mutex_unlock(&c->mu);
  for (uint64_t s = 1; s <= 3; s++) {
    step(t, c, 1e-3f);
    void* b = chunk_bits(t, c);
    for (int v = 0; v < 2; v++) {
      px_view_state* vs = &c->view[v];
      const int w = v ? 2 : 4;
      void* words = view_words(t, b, n, v);
      assert_int_equal(vs->nhist, 0);
      int sf = slot_of(vs, PX_KEY_FULL), sr = slot_of(vs, PX_KEY_RAW);
      assert_true(sf >= 0 && sr >= 0);
      assert_false(vs->cache[sf].pending);
      assert_ptr_equal(vs->cache[sf].frame, vs->cache[sr].frame);
      f = vs->cache[sf].frame;
      assert_int_equal(f->encoding, PX_ENC_RAW);
      assert_int_equal(f->version, s);
      assert_int_equal(f->len, n * (size_t)w);
      assert_memory_equal(f->data, words, n * (size_t)w);
      assert_true(f->checksum == px_checksum(words, n * (size_t)w));
      assert_true(vs->checksum == f->checksum);
      assert_true(slot_of(vs, s - 1) < 0);
      for (int m = 0; m < 4; m++) assert_true(key_of(c, v, s - 1, m & 1, m & 2) == PX_KEY_FULL);
      free(words);
    }
    free(b);
  }
  assert_int_equal(atomic_load(&g_svc.ctr.history_bytes), 0);
  clear_all_frames();
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
    px_tensor_state* t = px_store_tensor(&g_svc, i);
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
  int rc = px_config_parse(cfg, argc, argv);
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
  assert_int_equal(px_config_parse(&c, 1, argv), 0);
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
                  "--compression-level", "3", "--no-compression"};
  px_config c;
  assert_int_equal(px_config_parse(&c, ARGC(argv), argv), 0);
  assert_string_equal(c.listen, "127.0.0.1:0");
  assert_int_equal(c.workers, 7);
  assert_true(c.lr == 0.25);
  assert_true(c.momentum == 0.9);
  assert_true(c.weight_decay == 0.001);
  assert_int_equal(c.chunk_bytes, 64u << 10);
  assert_int_equal(c.threads, 3);
  assert_int_equal(c.cq_threads, 4);
  assert_int_equal(c.max_tensors, 100);
  assert_int_equal(c.max_tensor_bytes, 2ull << 30);
  assert_int_equal(c.hold_bytes, 1u << 20);
  assert_true(c.drain_timeout == 1.5);
  assert_string_equal(c.log_level, "debug");
  assert_int_equal(c.history, 5);
  assert_int_equal(c.history_bytes, 64u << 20);
  assert_int_equal(c.compression_level, 3);
  assert_false(c.compression);
  /* The range ends are accepted. */
  char* edges[] = {"paramex-server", "--chunk-bytes", "1K", "--workers", "4096", "--chunk-bytes",
                   "3M", "--history", "16", "--history-bytes", "0", "--compression-level", "19",
                   "--no-compression", "--compression"};
  assert_int_equal(px_config_parse(&c, ARGC(edges), edges), 0);
  assert_int_equal(c.chunk_bytes, 3u << 20);
  assert_int_equal(c.workers, 4096);
  assert_int_equal(c.history, PX_MAX_HISTORY);
  assert_int_equal(c.history_bytes, 0);
  assert_int_equal(c.compression_level, 19);
  assert_true(c.compression); /* the last one wins */
  char* low[] = {"paramex-server", "--history", "0", "--compression-level", "1"};
  assert_int_equal(px_config_parse(&c, ARGC(low), low), 0);
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
  setenv("PMX_WEIGHT_DECAY", "0.125", 1);
  char* argv[] = {"paramex-server", "--workers", "3"};
  px_config c;
  int rc = px_config_parse(&c, ARGC(argv), argv);
  clear_env();
  assert_int_equal(rc, 0);
  assert_int_equal(c.workers, 3); /* the command line wins */
  assert_true(c.lr == 0.5);
  assert_int_equal(c.chunk_bytes, 8u << 10);
  assert_string_equal(c.listen, "localhost:7000");
  assert_string_equal(c.log_level, "warn");
  assert_true(c.weight_decay == 0.125);

  /* The history and compression settings from the environment. */
  setenv("PMX_HISTORY", "4", 1);
  setenv("PMX_HISTORY_BYTES", "2M", 1);
  setenv("PMX_COMPRESSION_LEVEL", "2", 1);
  setenv("PMX_COMPRESSION", "false", 1);
  rc = px_config_parse(&c, 1, argv);
  assert_int_equal(rc, 0);
  assert_int_equal(c.history, 4);
  assert_int_equal(c.history_bytes, 2u << 20);
  assert_int_equal(c.compression_level, 2);
  assert_false(c.compression);
  char* on[] = {"paramex-server", "--compression", "--history", "1"};
  rc = px_config_parse(&c, ARGC(on), on); /* the command line wins */
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
  rc = px_config_parse(&c, ARGC(given), given);
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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_declare_create_and_repeat, svc_setup, svc_teardown),
      cmocka_unit_test_setup_teardown(test_declare_invalid, svc_setup, svc_teardown),
      cmocka_unit_test_teardown(test_max_tensors, svc_teardown),
      cmocka_unit_test_setup_teardown(test_values_in_pieces, svc_setup, svc_teardown),
      cmocka_unit_test_setup_teardown(test_initializer_fill, svc_setup, svc_teardown),
      cmocka_unit_test_setup_teardown(test_chunking, svc_setup, svc_teardown),
      cmocka_unit_test_teardown(test_chunking_with_momentum, svc_teardown),
      cmocka_unit_test_setup_teardown(test_version_min_and_checksum, svc_setup, svc_teardown),
      cmocka_unit_test_setup_teardown(test_buf_recycling, svc_setup, svc_teardown),
      cmocka_unit_test_setup_teardown(test_chunk_frames, svc_setup, svc_teardown),
      cmocka_unit_test_teardown(test_after_step_history, svc_teardown),
      cmocka_unit_test_teardown(test_history_budget, svc_teardown),
      cmocka_unit_test_teardown(test_frames_key, svc_teardown),
      cmocka_unit_test_teardown(test_build_older_base, svc_teardown),
      cmocka_unit_test_teardown(test_build_pending_and_stale, svc_teardown),
      cmocka_unit_test_teardown(test_bf16_view, svc_teardown),
      cmocka_unit_test_teardown(test_16bit_tensor_frames, svc_teardown),
      cmocka_unit_test_teardown(test_no_compression, svc_teardown),
      cmocka_unit_test_teardown(test_declare_16bit, svc_teardown),
      cmocka_unit_test(test_config_defaults),
      cmocka_unit_test(test_config_each_flag),
      cmocka_unit_test(test_config_env),
      cmocka_unit_test(test_config_bad_values),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
