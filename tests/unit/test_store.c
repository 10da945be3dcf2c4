/* Unit tests of server/store.c (declaration, initial values, chunking, versions and
 * checksums, frames, buffer recycling) and server/config.c (flags and PMX_* variables).
 * The service is initialised without starting its gRPC server. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <xxhash.h>

#include "codec/codec.h"
#include "server.h"

#define ARGC(a) ((int)(sizeof(a) / sizeof((a)[0])))

static const char* const env_vars[] = {
    "PMX_LISTEN", "PMX_WORKERS", "PMX_LR", "PMX_MOMENTUM", "PMX_WEIGHT_DECAY",
    "PMX_CHUNK_BYTES", "PMX_THREADS", "PMX_CQ_THREADS", "PMX_MAX_TENSORS",
    "PMX_MAX_TENSOR_BYTES", "PMX_HOLD_BYTES", "PMX_DRAIN_TIMEOUT", "PMX_LOG_LEVEL"};

static void clear_env(void) {
  for (size_t i = 0; i < sizeof env_vars / sizeof env_vars[0]; i++) unsetenv(env_vars[i]);
}

/* ---- a service per test ------------------------------------------------------------------ */

static pmx_service g_svc;
static bool g_live; /* g_svc is initialised */

static void svc_init(int argc, char** argv) {
  pmx_config cfg;
  assert_int_equal(pmx_config_parse(&cfg, argc, argv), 0);
  char err[256] = "";
  if (pmx_service_init(&g_svc, &cfg, err, sizeof err) != 0) fail_msg("service init: %s", err);
  g_live = true;
}

static int svc_setup(void** state) {
  (void)state;
  char* argv[] = {"paramex-server", "--workers", "2", "--chunk-bytes", "4K", "--threads", "1"};
  pmx_config cfg;
  if (pmx_config_parse(&cfg, ARGC(argv), argv) != 0) return -1;
  char err[256];
  if (pmx_service_init(&g_svc, &cfg, err, sizeof err) != 0) return -1;
  g_live = true;
  return 0;
}

static int svc_teardown(void** state) {
  (void)state;
  if (g_live) pmx_service_deinit(&g_svc);
  g_live = false;
  return 0;
}

static int group_setup(void** state) {
  (void)state;
  clear_env();
  pmx_log_threshold = PMX_LOG_WARN; /* no "declared tensor" lines */
  pmx_rpc_init();
  return 0;
}

static int group_teardown(void** state) {
  (void)state;
  pmx_rpc_shutdown();
  return 0;
}

static pmx_declare_args dargs(const char* name, const uint64_t* shape, size_t ndim) {
  pmx_declare_args a;
  memset(&a, 0, sizeof a);
  a.name = name;
  a.dtype = PMX_DT_F32;
  a.shape = shape;
  a.ndim = ndim;
  a.init_kind = PMX_FILL_ZEROS;
  a.worker_id = 1;
  a.incarnation = 42;
  return a;
}

static pmx_tensor_state* const SENTINEL = (pmx_tensor_state*)(uintptr_t)0x1234;

/* Declares and returns the status; *t untouched unless OK. */
static int declare(const pmx_declare_args* a, pmx_tensor_state** t, bool* created, char* err,
                   size_t errlen) {
  err[0] = 0;
  return pmx_store_declare(&g_svc, a, t, created, err, errlen);
}

static uint32_t ntensors(void) { return atomic_load(&g_svc.ntensors); }

/* ---- declare ------------------------------------------------------------------------------- */

static void test_declare_create_and_repeat(void** state) {
  (void)state;
  const uint64_t shape[] = {10, 300};
  pmx_declare_args a = dargs("layer1.weight", shape, 2);
  pmx_tensor_state* t = NULL;
  bool created = false;
  char err[256];
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PMX_ST_OK);
  assert_non_null(t);
  assert_true(created);
  assert_int_equal(t->id, 0);
  assert_string_equal(t->name, "layer1.weight");
  assert_int_equal(t->dtype, PMX_DT_F32);
  assert_int_equal(t->ndim, 2);
  assert_int_equal(t->shape[0], 10);
  assert_int_equal(t->shape[1], 300);
  assert_int_equal(t->numel, 3000);
  assert_int_equal(ntensors(), 1);
  assert_ptr_equal(pmx_store_tensor(&g_svc, 0), t);
  assert_null(pmx_store_tensor(&g_svc, 1));
  for (uint32_t i = 0; i < t->nchunks; i++) {
    assert_true(t->chunks[i].initialized);
    assert_int_equal(t->chunks[i].version, 0);
  }
  for (uint64_t i = 0; i < t->numel; i++)
    if (t->params[i] != 0.0f) fail_msg("element %llu not zero", (unsigned long long)i);

  /* The same declaration again: the same tensor, not created. */
  pmx_tensor_state* t2 = NULL;
  created = true;
  assert_int_equal(declare(&a, &t2, &created, err, sizeof err), PMX_ST_OK);
  assert_ptr_equal(t2, t);
  assert_false(created);
  assert_int_equal(ntensors(), 1);

  /* Another name: the next id. */
  pmx_declare_args b = dargs("layer1.bias", shape + 1, 1);
  pmx_tensor_state* tb = NULL;
  assert_int_equal(declare(&b, &tb, &created, err, sizeof err), PMX_ST_OK);
  assert_true(created);
  assert_int_equal(tb->id, 1);
  assert_ptr_equal(pmx_store_tensor(&g_svc, 1), tb);

  /* Another shape under an existing name. */
  const uint64_t other[] = {10, 301};
  pmx_declare_args c = dargs("layer1.weight", other, 2);
  pmx_tensor_state* tc = SENTINEL;
  assert_int_equal(declare(&c, &tc, &created, err, sizeof err), PMX_ST_FAILED_PRECONDITION);
  assert_ptr_equal(tc, SENTINEL);
  assert_non_null(strstr(err, "'layer1.weight'"));
  assert_non_null(strstr(err, "[10,300]"));
  assert_non_null(strstr(err, "[10,301]"));
  /* Another rank with the same element count. */
  const uint64_t flat[] = {3000};
  pmx_declare_args d = dargs("layer1.weight", flat, 1);
  assert_int_equal(declare(&d, &tc, &created, err, sizeof err), PMX_ST_FAILED_PRECONDITION);
  assert_non_null(strstr(err, "layer1.weight"));
  /* Another dtype: only f32 is stored, so it is refused before the name is looked up. */
  pmx_declare_args e = dargs("layer1.weight", shape, 2);
  e.dtype = PMX_DT_BF16;
  assert_int_equal(declare(&e, &tc, &created, err, sizeof err), PMX_ST_INVALID_ARGUMENT);
  assert_non_null(strstr(err, "layer1.weight"));
  assert_ptr_equal(tc, SENTINEL);
  assert_int_equal(ntensors(), 2);
}

static void test_declare_invalid(void** state) {
  (void)state;
  const uint64_t shape[] = {4, 4};
  pmx_tensor_state* t = SENTINEL;
  bool created;
  char err[256];
  char name[300];

  pmx_declare_args a = dargs("", shape, 2);
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PMX_ST_INVALID_ARGUMENT);
  assert_true(err[0] != 0);
  memset(name, 'n', sizeof name);
  name[256] = 0;
  a = dargs(name, shape, 2);
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PMX_ST_INVALID_ARGUMENT);
  assert_non_null(strstr(err, "256"));
  assert_ptr_equal(t, SENTINEL);
  assert_int_equal(ntensors(), 0);
  name[255] = 0; /* the longest name allowed */
  a = dargs(name, shape, 2);
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PMX_ST_OK);
  assert_string_equal(t->name, name);
  assert_int_equal(ntensors(), 1);

  t = SENTINEL;
  a = dargs("zero-dims", shape, 0);
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PMX_ST_INVALID_ARGUMENT);
  assert_non_null(strstr(err, "zero-dims"));
  const uint64_t nine[] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
  a = dargs("nine-dims", nine, 9);
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PMX_ST_INVALID_ARGUMENT);
  a = dargs("eight-dims", nine, 8); /* the most allowed */
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PMX_ST_OK);
  assert_int_equal(t->numel, 1);
  t = SENTINEL;
  const uint64_t zero[] = {4, 0, 2};
  a = dargs("dim-zero", zero, 3);
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PMX_ST_INVALID_ARGUMENT);
  assert_non_null(strstr(err, "dimension 1 is 0"));
  const uint64_t huge[] = {1ull << 32, 1ull << 32, 1ull << 32};
  a = dargs("overflow", huge, 3);
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PMX_ST_INVALID_ARGUMENT);
  const uint64_t big[] = {1ull << 40};
  a = dargs("too-big", big, 1); /* 4 TiB > --max-tensor-bytes 16G */
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PMX_ST_RESOURCE_EXHAUSTED);

  const int dtypes[] = {0, PMX_DT_BF16, PMX_DT_F16, 99, -1};
  for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++) {
    a = dargs("dtype", shape, 2);
    a.dtype = dtypes[i];
    assert_int_equal(declare(&a, &t, &created, err, sizeof err), PMX_ST_INVALID_ARGUMENT);
    assert_non_null(strstr(err, "dtype"));
  }
  a = dargs("init", shape, 2);
  a.init_kind = 7;
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PMX_ST_INVALID_ARGUMENT);
  float v[16] = {0};
  a = dargs("both", shape, 2);
  a.values = (const uint8_t*)v;
  a.values_len = sizeof v;
  a.init_kind = PMX_FILL_NORMAL;
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PMX_ST_INVALID_ARGUMENT);
  a = dargs("offset", shape, 2);
  a.values_offset = 4;
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PMX_ST_INVALID_ARGUMENT);
  assert_ptr_equal(t, SENTINEL);
  assert_int_equal(ntensors(), 2);
}

static void test_max_tensors(void** state) {
  (void)state;
  char* argv[] = {"paramex-server", "--workers", "2", "--chunk-bytes", "4K",
                  "--threads", "1", "--max-tensors", "2"};
  svc_init(ARGC(argv), argv);
  const uint64_t shape[] = {8};
  pmx_tensor_state* t = NULL;
  bool created;
  char err[256];
  pmx_declare_args a = dargs("a", shape, 1);
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PMX_ST_OK);
  a = dargs("b", shape, 1);
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PMX_ST_OK);
  a = dargs("c", shape, 1);
  t = SENTINEL;
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PMX_ST_RESOURCE_EXHAUSTED);
  assert_non_null(strstr(err, "'c'"));
  assert_non_null(strstr(err, "max-tensors"));
  assert_ptr_equal(t, SENTINEL);
  assert_int_equal(ntensors(), 2);
  /* Existing tensors can still be declared again. */
  a = dargs("a", shape, 1);
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PMX_ST_OK);
  assert_false(created);
  assert_int_equal(t->id, 0);
}

/* ---- initial values ------------------------------------------------------------------------- */

static int put_values(const char* name, const uint64_t* shape, const float* v, uint64_t off,
                      size_t nbytes, uint32_t worker, uint64_t inc, pmx_tensor_state** t,
                      bool* created, char* err, size_t errlen) {
  pmx_declare_args a = dargs(name, shape, 1);
  a.values = (const uint8_t*)(v + off);
  a.values_len = nbytes;
  a.values_offset = off;
  a.worker_id = worker;
  a.incarnation = inc;
  return declare(&a, t, created, err, errlen);
}

static void chunks_initialized(const pmx_tensor_state* t, bool c0, bool c1, bool c2) {
  assert_int_equal(t->nchunks, 3);
  assert_int_equal(t->chunks[0].initialized, c0);
  assert_int_equal(t->chunks[1].initialized, c1);
  assert_int_equal(t->chunks[2].initialized, c2);
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
  pmx_tensor_state* t = NULL;
  bool created;
  char err[256];

  /* A first piece that leaves a gap does not create the tensor. */
  assert_int_equal(put_values("w", shape, v, 5, 40, 1, 42, &t, &created, err, sizeof err),
                   PMX_ST_INVALID_ARGUMENT);
  assert_int_equal(ntensors(), 0);

  assert_int_equal(put_values("w", shape, v, 0, 1000 * 4, 1, 42, &t, &created, err, sizeof err),
                   PMX_ST_OK);
  assert_true(created);
  assert_int_equal(t->init_cursor, 1000);
  chunks_initialized(t, false, false, false);
  assert_memory_equal(t->params, v, 1000 * 4);
  uint64_t cs = 1;
  pmx_tensor_version_min(t, NULL, &cs);
  assert_true(cs == 0); /* not all initialised: no checksum */

  /* A gap. */
  assert_int_equal(put_values("w", shape, v, 1500, 100 * 4, 1, 42, &t, &created, err, sizeof err),
                   PMX_ST_INVALID_ARGUMENT);
  assert_non_null(strstr(err, "gap"));
  assert_int_equal(t->init_cursor, 1000);

  /* Overlapping the end: only the new part is taken; chunk 0 is now complete. */
  assert_int_equal(put_values("w", shape, v, 900, 200 * 4, 1, 42, &t, &created, err, sizeof err),
                   PMX_ST_OK);
  assert_false(created);
  assert_int_equal(t->init_cursor, 1100);
  chunks_initialized(t, true, false, false);
  assert_memory_equal(t->params, v, 1100 * 4);

  /* A repeat (with other bytes) is accepted and changes nothing. */
  assert_int_equal(put_values("w", shape, other, 0, 500 * 4, 1, 42, &t, &created, err, sizeof err),
                   PMX_ST_OK);
  assert_int_equal(t->init_cursor, 1100);
  assert_memory_equal(t->params, v, 1100 * 4);

  /* Past the end. */
  assert_int_equal(put_values("w", shape, v, 2400, 200 * 4, 1, 42, &t, &created, err, sizeof err),
                   PMX_ST_INVALID_ARGUMENT);
  assert_non_null(strstr(err, "2500"));
  pmx_declare_args past = dargs("w", shape, 1);
  past.values = (const uint8_t*)v;
  past.values_len = 0;
  past.values_offset = N + 1;
  past.worker_id = 1;
  past.incarnation = 42;
  assert_int_equal(declare(&past, &t, &created, err, sizeof err), PMX_ST_INVALID_ARGUMENT);
  /* A length that is not a whole number of elements. */
  assert_int_equal(put_values("w", shape, v, 1100, 10 * 4 + 2, 1, 42, &t, &created, err, sizeof err),
                   PMX_ST_INVALID_ARGUMENT);
  assert_non_null(strstr(err, "multiple of 4"));
  assert_int_equal(t->init_cursor, 1100);

  /* Values from another worker, or from an earlier incarnation of the creator, are
   * not the creator's upload: ignored. */
  assert_int_equal(put_values("w", shape, other, 1100, 100 * 4, 0, 42, &t, &created, err, sizeof err),
                   PMX_ST_OK);
  assert_int_equal(put_values("w", shape, other, 1100, 100 * 4, 1, 41, &t, &created, err, sizeof err),
                   PMX_ST_OK);
  assert_int_equal(t->init_cursor, 1100);
  chunks_initialized(t, true, false, false);

  /* Up to the end of chunk 1 exactly. */
  assert_int_equal(put_values("w", shape, v, 1100, 948 * 4, 1, 42, &t, &created, err, sizeof err),
                   PMX_ST_OK);
  assert_int_equal(t->init_cursor, 2048);
  chunks_initialized(t, true, true, false);
  /* The rest. */
  assert_int_equal(put_values("w", shape, v, 2048, (N - 2048) * 4, 1, 42, &t, &created, err,
                              sizeof err),
                   PMX_ST_OK);
  assert_int_equal(t->init_cursor, N);
  chunks_initialized(t, true, true, true);
  assert_memory_equal(t->params, v, N * 4);
  uint64_t vmax = 99;
  assert_int_equal(pmx_tensor_version_min(t, &vmax, &cs), 0);
  assert_int_equal(vmax, 0);
  assert_true(cs == XXH64(v, N * 4, 0));
  /* Chunks completed by values have their frame built. */
  for (uint32_t i = 0; i < t->nchunks; i++) {
    pmx_chunk_state* c = &t->chunks[i];
    assert_non_null(c->frame);
    assert_true(c->frame->checksum == pmx_checksum(c->params, (size_t)c->elems * 4));
  }
  /* After completion a repeat is still accepted and changes nothing. */
  assert_int_equal(put_values("w", shape, other, 0, N * 4, 1, 42, &t, &created, err, sizeof err),
                   PMX_ST_OK);
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
      {"normal", PMX_FILL_NORMAL, 0.5f, 2.0f, 1234},
      {"normal2", PMX_FILL_NORMAL, 0.5f, 2.0f, 1235},
      {"uniform", PMX_FILL_UNIFORM, -1.0f, 1.0f, 9},
      {"constant", PMX_FILL_CONSTANT, 3.5f, 0.0f, 0},
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    pmx_declare_args a = dargs(cases[k].name, shape, 2);
    a.init_kind = cases[k].kind;
    a.init_a = cases[k].a;
    a.init_b = cases[k].b;
    a.init_seed = cases[k].seed;
    pmx_tensor_state* t = NULL;
    bool created;
    char err[256];
    assert_int_equal(declare(&a, &t, &created, err, sizeof err), PMX_ST_OK);
    assert_int_equal(pmx_init_fill_f32(want, 0, n, cases[k].kind, cases[k].a, cases[k].b,
                                       cases[k].seed),
                     0);
    assert_memory_equal(t->params, want, n * sizeof *want);
    assert_int_equal(t->init_cursor, n);
    for (uint32_t i = 0; i < t->nchunks; i++) assert_true(t->chunks[i].initialized);
  }
  /* The seed matters (the comparison above is not vacuous). */
  pmx_tensor_state* t1 = pmx_store_tensor(&g_svc, 0);
  pmx_tensor_state* t2 = pmx_store_tensor(&g_svc, 1);
  assert_memory_not_equal(t1->params, t2->params, n * sizeof(float));
  free(want);
}

/* ---- chunking -------------------------------------------------------------------------------- */

static void check_chunks(pmx_tensor_state* t, uint32_t chunk_elems) {
  assert_int_equal(t->chunk_elems, chunk_elems);
  assert_int_equal(t->nchunks, (t->numel + chunk_elems - 1) / chunk_elems);
  uint64_t total = 0;
  for (uint32_t i = 0; i < t->nchunks; i++) {
    pmx_chunk_state* c = &t->chunks[i];
    assert_ptr_equal(c->params, t->params + (uint64_t)i * chunk_elems);
    if (i + 1 < t->nchunks) assert_int_equal(c->elems, chunk_elems);
    assert_true(c->elems >= 1 && c->elems <= chunk_elems);
    if (t->mom) assert_ptr_equal(c->mom, t->mom + (uint64_t)i * chunk_elems);
    else assert_null(c->mom);
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
    pmx_declare_args a = dargs(name, &cases[k].numel, 1);
    pmx_tensor_state* t = NULL;
    bool created;
    char err[256];
    assert_int_equal(declare(&a, &t, &created, err, sizeof err), PMX_ST_OK);
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
  pmx_declare_args a = dargs("m", shape, 2);
  pmx_tensor_state* t = NULL;
  bool created;
  char err[256];
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PMX_ST_OK);
  assert_non_null(t->mom);
  check_chunks(t, 262144);
  assert_int_equal(t->nchunks, 3);
  assert_int_equal(t->chunks[2].elems, 75712);
}

/* ---- versions and checksums ------------------------------------------------------------------ */

static void test_version_min_and_checksum(void** state) {
  (void)state;
  const uint64_t shape[] = {3000};
  pmx_declare_args a = dargs("v", shape, 1);
  a.init_kind = PMX_FILL_UNIFORM;
  a.init_a = -1;
  a.init_b = 1;
  a.init_seed = 3;
  pmx_tensor_state* t = NULL;
  bool created;
  char err[256];
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PMX_ST_OK);
  const uint64_t want = XXH64(t->params, 3000 * 4, 0);
  assert_true(want == pmx_checksum(t->params, 3000 * 4));
  uint64_t vmax = 99, cs = 0;
  assert_int_equal(pmx_tensor_version_min(t, &vmax, &cs), 0);
  assert_int_equal(vmax, 0);
  assert_true(cs == want);
  assert_int_equal(pmx_tensor_version_min(t, NULL, NULL), 0);

  /* Chunks at different versions: min and max, and no checksum. */
  t->chunks[1].version = 3;
  cs = 1;
  assert_int_equal(pmx_tensor_version_min(t, &vmax, &cs), 0);
  assert_int_equal(vmax, 3);
  assert_true(cs == 0);
  /* All at version 3 after a step changed the parameters. */
  t->chunks[0].version = 3;
  t->chunks[2].version = 3;
  t->params[2999] += 1.0f;
  assert_int_equal(pmx_tensor_version_min(t, &vmax, &cs), 3);
  assert_int_equal(vmax, 3);
  assert_true(cs == XXH64(t->params, 3000 * 4, 0));
  assert_true(cs != want);
}

/* ---- buffers and frames --------------------------------------------------------------------- */

static void test_buf_recycling(void** state) {
  (void)state;
  uint8_t* p = pmx_buf_get(5000); /* the 8 KiB class */
  assert_non_null(p);
  memset(p, 0xAB, 5000);
  pmx_buf_put(p, 5000);
  uint8_t* q = pmx_buf_get(8192); /* same class: the same buffer */
  assert_ptr_equal(q, p);
  uint8_t* r = pmx_buf_get(4096); /* another class */
  assert_non_null(r);
  assert_ptr_not_equal(r, p);
  uint8_t* s = pmx_buf_get(6000); /* the class is empty now: a new buffer */
  assert_non_null(s);
  assert_ptr_not_equal(s, p);
  pmx_buf_put(q, 8192);
  pmx_buf_put(s, 6000);
  /* Both come back (most recent first). */
  uint8_t* x = pmx_buf_get(7000);
  uint8_t* y = pmx_buf_get(4097);
  assert_ptr_equal(x, s);
  assert_ptr_equal(y, p);
  pmx_buf_put(x, 7000);
  pmx_buf_put(y, 4097);
  pmx_buf_put(r, 4096);
  pmx_buf_put(NULL, 4096); /* accepted */
  assert_ptr_equal(pmx_buf_get(1), r);
  pmx_buf_put(r, 1);

  /* Large classes (mapped memory) are recycled the same way. */
  uint8_t* big = pmx_buf_get(300u << 10);
  assert_non_null(big);
  memset(big, 1, 300u << 10);
  pmx_buf_put(big, 300u << 10);
  assert_ptr_equal(pmx_buf_get(400u << 10), big);
  pmx_buf_put(big, 400u << 10);
  /* Past the largest class: refused. */
  assert_null(pmx_buf_get((4096u << 15) + 1));
}

static void test_chunk_frame(void** state) {
  (void)state;
  const uint64_t shape[] = {3000};
  pmx_declare_args a = dargs("f", shape, 1);
  a.init_kind = PMX_FILL_NORMAL;
  a.init_a = 0;
  a.init_b = 1;
  a.init_seed = 77;
  pmx_tensor_state* t = NULL;
  bool created;
  char err[256];
  assert_int_equal(declare(&a, &t, &created, err, sizeof err), PMX_ST_OK);
  pmx_chunk_state* c = &t->chunks[2];
  assert_int_equal(c->elems, 952);
  assert_null(c->frame); /* built on demand */

  pthread_mutex_lock(&c->mu);
  pmx_frame* f1 = pmx_chunk_frame(c, t->dtype);
  pmx_frame* f2 = pmx_chunk_frame(c, t->dtype);
  pthread_mutex_unlock(&c->mu);
  assert_non_null(f1);
  assert_ptr_equal(f1, f2);
  assert_ptr_equal(c->frame, f1);
  assert_int_equal(atomic_load(&f1->refs), 3); /* the chunk's + ours */
  assert_int_equal(f1->len, 952 * 4);
  assert_int_equal(f1->version, 0);
  assert_memory_equal(f1->data, c->params, f1->len);
  assert_true(f1->checksum == pmx_checksum(c->params, 952 * 4));
  pmx_frame_unref(f1);
  pmx_frame_unref(f2);
  assert_int_equal(atomic_load(&c->frame->refs), 1);

  /* A step: the chunk drops its frame; a holder keeps the old one intact. */
  pthread_mutex_lock(&c->mu);
  pmx_frame* old = pmx_chunk_frame(c, t->dtype);
  const float old0 = c->params[0];
  c->params[0] = old0 + 42.0f;
  c->version = 1;
  pmx_pull* waiters = pmx_chunk_advanced(&g_svc, c);
  assert_null(c->frame);
  pmx_frame* f3 = pmx_chunk_frame(c, t->dtype);
  pthread_mutex_unlock(&c->mu);
  assert_null(waiters);
  assert_ptr_equal(old, f1);
  assert_int_equal(atomic_load(&old->refs), 1); /* only ours now */
  float o0;
  memcpy(&o0, old->data, 4);
  assert_true(o0 == old0);
  assert_ptr_not_equal(f3, old);
  assert_int_equal(f3->version, 1);
  assert_true(f3->checksum == pmx_checksum(c->params, 952 * 4));
  assert_true(f3->checksum != old->checksum);
  assert_int_equal(atomic_load(&f3->refs), 2);
  pmx_frame_unref(old); /* freed: its buffer goes back to the free list */
  pmx_frame_unref(f3);
  assert_int_equal(atomic_load(&c->frame->refs), 1);
  pmx_frame_unref(NULL); /* accepted */
}

/* ---- configuration ------------------------------------------------------------------------- */

/* Runs pmx_config_parse with stdout and stderr captured; returns its result. */
static int parse_captured(pmx_config* cfg, int argc, char** argv, char* out, size_t outcap,
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
  int rc = pmx_config_parse(cfg, argc, argv);
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
  pmx_config c;
  assert_int_equal(pmx_config_parse(&c, 1, argv), 0);
  assert_string_equal(c.listen, "0.0.0.0:50051");
  assert_int_equal(c.workers, 1);
  assert_true(c.lr == 0.01);
  assert_true(c.momentum == 0.0);
  assert_true(c.weight_decay == 0.0);
  assert_int_equal(c.chunk_bytes, 1u << 20);
  assert_int_equal(c.threads, pmx_ncpus());
  assert_int_equal(c.cq_threads, 2);
  assert_int_equal(c.max_tensors, 16384);
  assert_int_equal(c.max_tensor_bytes, 16ull << 30);
  assert_int_equal(c.hold_bytes, 256u << 20);
  assert_true(c.drain_timeout == 5.0);
  assert_string_equal(c.log_level, "info");
}

static void test_config_each_flag(void** state) {
  (void)state;
  clear_env();
  char* argv[] = {"paramex-server", "--listen", "127.0.0.1:0", "--workers", "7", "--lr", "0.25",
                  "--momentum", "0.9", "--weight-decay=0.001", "--chunk-bytes", "64K",
                  "--threads", "3", "--cq-threads", "4", "--max-tensors", "100",
                  "--max-tensor-bytes", "2G", "--hold-bytes", "1M", "--drain-timeout", "1.5",
                  "--log-level", "debug"};
  pmx_config c;
  assert_int_equal(pmx_config_parse(&c, ARGC(argv), argv), 0);
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
  /* The range ends are accepted. */
  char* edges[] = {"paramex-server", "--chunk-bytes", "1K", "--workers", "4096", "--chunk-bytes",
                   "3M"};
  assert_int_equal(pmx_config_parse(&c, ARGC(edges), edges), 0);
  assert_int_equal(c.chunk_bytes, 3u << 20);
  assert_int_equal(c.workers, 4096);
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
  pmx_config c;
  int rc = pmx_config_parse(&c, ARGC(argv), argv);
  clear_env();
  assert_int_equal(rc, 0);
  assert_int_equal(c.workers, 3); /* the command line wins */
  assert_true(c.lr == 0.5);
  assert_int_equal(c.chunk_bytes, 8u << 10);
  assert_string_equal(c.listen, "localhost:7000");
  assert_string_equal(c.log_level, "warn");
  assert_true(c.weight_decay == 0.125);

  /* A bad environment value is an error naming the variable... */
  setenv("PMX_MAX_TENSORS", "lots", 1);
  char out[512], errt[512];
  char* plain[] = {"paramex-server"};
  rc = parse_captured(&c, 1, plain, out, sizeof out, errt, sizeof errt);
  assert_int_equal(rc, 2);
  assert_non_null(strstr(errt, "PMX_MAX_TENSORS"));
  /* ...unless the command line gives the flag. */
  char* given[] = {"paramex-server", "--max-tensors", "9"};
  rc = pmx_config_parse(&c, ARGC(given), given);
  clear_env();
  assert_int_equal(rc, 0);
  assert_int_equal(c.max_tensors, 9);
  /* chunk-bytes from the environment is checked like the flag */
  setenv("PMX_CHUNK_BYTES", "4098", 1);
  rc = parse_captured(&c, 1, plain, out, sizeof out, errt, sizeof errt);
  clear_env();
  assert_int_equal(rc, 2);
  assert_non_null(strstr(errt, "multiple of 4"));
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
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char* argv[] = {"paramex-server", (char*)bad[i].flag, (char*)bad[i].value};
    pmx_config c;
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
  pmx_config c;
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
      cmocka_unit_test_setup_teardown(test_chunk_frame, svc_setup, svc_teardown),
      cmocka_unit_test(test_config_defaults),
      cmocka_unit_test(test_config_each_flag),
      cmocka_unit_test(test_config_env),
      cmocka_unit_test(test_config_bad_values),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
