/* Unit tests of server/pull_handler.c (pull_handler.h): the Pull call of an in-process
 * server (server_fixture.h) spoken to over gRPC. A pull at the current version answered at
 * once with RAW frames (headers, checksums and payloads decoded back to the parameters,
 * tensors in the order asked, the pull counters), UNCHANGED for the version the client
 * holds, a pull for a later version parked and answered chunk by chunk as the step
 * completes, several parked pulls answered by one step, a cancelled parked pull leaving
 * the server clean (no waiter, no active call), every refusal with its exact status and
 * message, the bf16 view of f32 parameters, and pulls of a worker that joined an earlier
 * run of the server refused ABORTED. (--call-timeout expiry is the monitor's.) */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec/checksum.h"
#include "codec/dtype.h"
#include "codec/initializer.h"
#include "codec/payload.h"
#include "paramex.pb-c.h"
#include "rpc/rpc_base.h"
#include "rpc/rpc_client.h"
#include "server_fixture.h"
#include "wire/chunk_msg.h"

#define CALL_MS 20000
#define WAIT_MS 20000
#define LR 0.5f
#define CE 1024u  /* elements per 4 KiB chunk */
#define N_W 2500u /* tensor "w": chunks of 1024, 1024 and 452 elements */
#define N_U 100u  /* tensor "u": one chunk */

static px_sf g_f;

static int teardown(void** state) {
  (void)state;
  px_sf_stop(&g_f);
  return 0;
}

/* A started server of 2 workers, 4 KiB chunks, lr 0.5, and more flags (NULL-ended). */
static px_server* start(const char* const* more) {
  static const char* const base[] = {"--workers", "2", "--chunk-bytes", "4K", "--lr", "0.5", NULL};
  const char* a[32];
  px_sf_start(&g_f, px_sf_flags(a, 32, base, more));
  return g_f.srv;
}

/* ---- helpers ------------------------------------------------------------------------------ */



static size_t parked_on(px_server* s, px_chunk_state* c) {
  size_t n = 0;
  pthread_mutex_lock(&s->waiters.mu);
  for (px_waiter* w = c->waiters.head; w && n < 100000; w = w->next) n++;
  pthread_mutex_unlock(&s->waiters.mu);
  return n;
}

typedef struct park_arg {
  px_server* srv;
  px_chunk_state* c;
  size_t n;
} park_arg;

static bool parked_exactly(void* arg) {
  park_arg* p = arg;
  return parked_on(p->srv, p->c) == p->n;
}

static void wait_parked(px_server* s, px_tensor_state* t, uint32_t chunk, size_t n) {
  park_arg pa = {s, &t->chunks[chunk], n};
  if (!px_sf_wait_until(parked_exactly, &pa, WAIT_MS))
    fail_msg("%zu pulls parked on chunk %u of '%s', want %zu", parked_on(s, &t->chunks[chunk]),
             chunk, t->name, n);
}

static float grad_at(uint32_t rank, uint64_t step, size_t i) {
  uint64_t x = (i + 3) * 2654435761u + rank * 40503u + step * 977u;
  float m = (float)(int)(x % 3001) - 1500.0f;
  return m * (rank ? 0.001953125f : 0.00048828125f);
}

static float* grads(uint32_t rank, uint64_t step, size_t n) {
  float* g = malloc(n * sizeof *g);
  assert_non_null(g);
  for (size_t i = 0; i < n; i++) g[i] = grad_at(rank, step, i);
  return g;
}


static uint64_t rejected(void) { return atomic_load(&g_f.srv->ctr.rejected_calls); }

/* Pushes chunks [c0, c1) of g (numel elements) for rank's step in one call. */
static void push_range(uint32_t rank, uint64_t inc, uint64_t step, uint32_t tid, const float* g,
                       size_t numel, uint32_t c0, uint32_t c1) {
  uint8_t heads[4][PX_CHUNK_HDR_MAX];
  px_h_msg m[4];
  size_t n = 0;
  for (uint32_t k = c0; k < c1 && n < 4; k++, n++) {
    size_t first = (size_t)k * CE, cnt = numel - first < CE ? numel - first : CE;
    m[n] = px_sf_push_chunk(heads[n], rank, inc, step, tid, k, g + first, cnt);
  }
  px_h_result r;
  if (px_h_call(g_f.ch, PX_H_PATH_PUSH, m, n, CALL_MS, &r) != PX_ST_OK)
    fail_msg("push: %s: %s", px_status_name(r.status), r.details);
  px_h_result_free(&r);
}

/* A whole step of both workers on tensor tid; *p (numel) becomes the SGD reference. */
static void step_all(const uint64_t inc[2], uint64_t step, uint32_t tid, float* p, size_t numel) {
  float* g0 = grads(0, step, numel);
  float* g1 = grads(1, step, numel);
  uint32_t nch = (uint32_t)((numel + CE - 1) / CE);
  push_range(0, inc[0], step, tid, g0, numel, 0, nch);
  push_range(1, inc[1], step, tid, g1, numel, 0, nch);
  for (size_t i = 0; i < numel; i++) p[i] = p[i] - LR * ((g0[i] + g1[i]) / 2.0f);
  free(g0);
  free(g1);
}

/* A packed PullRequest with every field; the caller frees it. */
static uint8_t* pull_req(const uint32_t* ids, size_t nt, const uint64_t* have, size_t nhave,
                         uint64_t min_version, int view, size_t* len) {
  Paramex__V1__PullRequest req = PARAMEX__V1__PULL_REQUEST__INIT;
  req.worker_id = 0;
  req.n_tensor_ids = nt;
  req.tensor_ids = (uint32_t*)ids;
  req.n_have_versions = nhave;
  req.have_versions = (uint64_t*)have;
  req.min_version = min_version;
  req.view = (Paramex__V1__DType)view;
  *len = paramex__v1__pull_request__get_packed_size(&req);
  uint8_t* b = malloc(*len ? *len : 1);
  assert_non_null(b);
  paramex__v1__pull_request__pack(&req, b);
  return b;
}

static void pull(px_rpc_channel* ch, const uint8_t* req, size_t len, px_h_result* r) {
  px_h_msg m = {req, len, NULL, 0};
  px_h_call(ch, PX_H_PATH_PULL, &m, 1, CALL_MS, r);
}

static void expect_pull_ok(const px_h_result* r, size_t nresp) {
  if (r->status != PX_ST_OK)
    fail_msg("pull: %s (%d): %s", r->status >= 0 ? px_status_name(r->status) : "harness",
             r->status, r->details);
  assert_int_equal(r->nresp, nresp);
}

/* Checks responses [first, first + nchunks of t) of r: the chunks of t in order at
 * version, in encoding enc (RAW or UNCHANGED), of dtype with words of width bytes, whose
 * content must be want (the whole tensor's words in that dtype). Returns the wire bytes. */
static uint64_t check_chunks(const px_h_result* r, size_t first, px_tensor_state* t,
                             uint64_t version, uint32_t enc, int dtype, int width,
                             const void* want) {
  uint64_t wire = 0;
  uint8_t* buf = malloc((size_t)CE * 4);
  assert_non_null(buf);
  assert_true(first + t->nchunks <= r->nresp);
  for (uint32_t k = 0; k < t->nchunks; k++) {
    const size_t i = first + k;
    px_iov seg = {r->resp[i], r->resp_len[i]};
    px_chunk h;
    char err[256];
    if (px_chunk_parse(PX_CHUNK_PULL, &seg, 1, &h, err, sizeof err) != 0) fail_msg("%s", err);
    const size_t n = t->chunks[k].elems, bytes = n * (size_t)width;
    const uint8_t* w = (const uint8_t*)want + (size_t)k * CE * (size_t)width;
    assert_int_equal(h.tensor_id, t->id);
    assert_int_equal(h.chunk, k);
    assert_int_equal(h.version, version);
    assert_int_equal(h.encoding, enc);
    assert_int_equal(h.dtype, dtype);
    assert_int_equal(h.raw_len, bytes);
    assert_true(h.checksum == px_checksum(w, bytes));
    if (enc == PX_ENC_UNCHANGED) {
      assert_int_equal(h.base_version, version);
      assert_int_equal(h.payload_len, 0);
      memcpy(buf, w, bytes); /* checks what the client holds */
    } else {
      assert_int_equal(h.base_version, 0);
      assert_int_equal(h.payload_len, bytes);
      memset(buf, 0xee, bytes);
    }
    if (px_chunk_decode(&h, &seg, 1, buf, n, width, err, sizeof err) != PX_DECODE_OK)
      fail_msg("chunk %u: %s", k, err);
    assert_memory_equal(buf, w, bytes);
    wire += r->resp_len[i];
  }
  free(buf);
  return wire;
}

/* Both workers joined, "w" and "u" declared. */
typedef struct world {
  px_server* s;
  uint64_t inc[2];
  px_tensor_state *w, *u;
  float pw[N_W], pu[N_U]; /* their parameters now (the reference) */
} world;

static world g_w;

static void setup_world(const char* const* more) {
  g_w.s = start(more);
  g_w.inc[0] = px_sf_join(&g_f, 0, 2);
  g_w.inc[1] = px_sf_join(&g_f, 1, 2);
  uint32_t tw = px_sf_declare_f32(&g_f, "w", N_W, 31);
  uint32_t tu = px_sf_declare_f32(&g_f, "u", N_U, 32);
  g_w.w = px_store_tensor(&g_w.s->store, tw);
  g_w.u = px_store_tensor(&g_w.s->store, tu);
  assert_non_null(g_w.w);
  assert_non_null(g_w.u);
  assert_int_equal(px_init_fill_f32(g_w.pw, 0, N_W, PX_FILL_NORMAL, 0.0f, 0.02f, 31), 0);
  assert_int_equal(px_init_fill_f32(g_w.pu, 0, N_U, PX_FILL_NORMAL, 0.0f, 0.02f, 32), 0);
  float cur[N_W];
  px_sf_copy_params(g_w.w, cur);
  assert_memory_equal(cur, g_w.pw, sizeof g_w.pw);
}

/* ---- at the current version --------------------------------------------------------------- */

/* The puller's identity: a worker id outside the world, a stale incarnation and a worker
 * that never joined are refused with their statuses (a pull of "worker 7 of 2" was once
 * served); an identified pull is served. */
static void test_pull_identity(void** state) {
  (void)state;
  setup_world(NULL);
  const uint32_t ids[1] = {g_w.w->id};
  Paramex__V1__PullRequest req = PARAMEX__V1__PULL_REQUEST__INIT;
  req.n_tensor_ids = 1;
  req.tensor_ids = (uint32_t*)ids;
  const struct {
    uint32_t worker;
    uint64_t inc;
    int status;
    const char* msg;
  } cases[] = {
      {7, 0, PX_ST_INVALID_ARGUMENT, "worker_id 7 is not below --workers 2"},
      {7, 5, PX_ST_INVALID_ARGUMENT, "worker_id 7 is not below --workers 2"},
      {1, g_w.inc[1] - 1, PX_ST_FAILED_PRECONDITION, NULL},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    req.worker_id = cases[i].worker;
    req.incarnation = cases[i].inc;
    uint8_t b[64];
    size_t n = paramex__v1__pull_request__pack(&req, b);
    px_h_result r;
    pull(g_f.ch, b, n, &r);
    if (r.status != cases[i].status)
      fail_msg("case %zu: %s '%s'", i, px_status_name(r.status), r.details);
    if (cases[i].msg) assert_string_equal(r.details, cases[i].msg);
    else assert_non_null(strstr(r.details, "is stale"));
    assert_int_equal(r.nresp, 0);
    px_h_result_free(&r);
  }
  req.worker_id = 1;
  req.incarnation = g_w.inc[1];
  uint8_t b[64];
  size_t n = paramex__v1__pull_request__pack(&req, b);
  px_h_result r;
  pull(g_f.ch, b, n, &r);
  expect_pull_ok(&r, 3);
  px_h_result_free(&r);
}

static void test_pull_current_version(void** state) {
  (void)state;
  setup_world(NULL);
  px_server* s = g_w.s;
  const uint32_t ids[2] = {g_w.w->id, g_w.u->id};
  size_t len;
  uint8_t* rq = px_sf_pull_request(0, ids, 2, 0, &len);
  px_h_result r;
  pull(g_f.ch, rq, len, &r);
  expect_pull_ok(&r, 4);
  uint64_t wire = check_chunks(&r, 0, g_w.w, 0, PX_ENC_RAW, PX_DT_F32, 4, g_w.pw);
  wire += check_chunks(&r, 3, g_w.u, 0, PX_ENC_RAW, PX_DT_F32, 4, g_w.pu);
  px_h_result_free(&r);
  free(rq);
  assert_int_equal(atomic_load(&s->ctr.pull_chunks), 4);
  assert_int_equal(atomic_load(&s->ctr.pull_raw_bytes), (N_W + N_U) * 4);
  assert_int_equal(atomic_load(&s->ctr.pull_wire_bytes), wire);
  assert_int_equal(atomic_load(&s->ctr.pull_snapshot), 4);
  assert_int_equal(atomic_load(&s->ctr.pull_unchanged), 0);
  assert_int_equal(atomic_load(&s->ctr.pull_delta), 0);
  assert_int_equal(atomic_load(&g_w.w->pull_raw), N_W * 4);
  assert_int_equal(atomic_load(&g_w.u->pull_raw), N_U * 4);
  assert_int_equal(rejected(), 0);

  /* the order asked; a tensor twice */
  const uint32_t ids2[3] = {g_w.u->id, g_w.w->id, g_w.u->id};
  rq = px_sf_pull_request(1, ids2, 3, 0, &len);
  pull(g_f.ch, rq, len, &r);
  expect_pull_ok(&r, 5);
  check_chunks(&r, 0, g_w.u, 0, PX_ENC_RAW, PX_DT_F32, 4, g_w.pu);
  check_chunks(&r, 1, g_w.w, 0, PX_ENC_RAW, PX_DT_F32, 4, g_w.pw);
  check_chunks(&r, 4, g_w.u, 0, PX_ENC_RAW, PX_DT_F32, 4, g_w.pu);
  px_h_result_free(&r);
  free(rq);
  assert_int_equal(atomic_load(&s->ctr.pull_chunks), 9);

  /* after a step: min_version 0 and 1 both get version 1 at once */
  step_all(g_w.inc, 0, g_w.w->id, g_w.pw, N_W);
  for (uint64_t mv = 0; mv <= 1; mv++) {
    rq = px_sf_pull_request(0, ids, 1, mv, &len);
    pull(g_f.ch, rq, len, &r);
    expect_pull_ok(&r, 3);
    check_chunks(&r, 0, g_w.w, 1, PX_ENC_RAW, PX_DT_F32, 4, g_w.pw);
    px_h_result_free(&r);
    free(rq);
  }
  float cur[N_W];
  px_sf_copy_params(g_w.w, cur);
  assert_memory_equal(cur, g_w.pw, sizeof cur);
  assert_true(px_sf_wait_until(px_sf_no_active_calls, s, WAIT_MS));
  assert_int_equal(rejected(), 0);
}

static void test_pull_unchanged(void** state) {
  (void)state;
  setup_world(NULL);
  px_server* s = g_w.s;
  const uint32_t ids[2] = {g_w.w->id, g_w.u->id};
  uint64_t have[2] = {0, 0};
  size_t len;
  uint8_t* rq = pull_req(ids, 2, have, 2, 0, 0, &len);
  px_h_result r;
  pull(g_f.ch, rq, len, &r);
  expect_pull_ok(&r, 4);
  uint64_t wire = check_chunks(&r, 0, g_w.w, 0, PX_ENC_UNCHANGED, PX_DT_F32, 4, g_w.pw);
  wire += check_chunks(&r, 3, g_w.u, 0, PX_ENC_UNCHANGED, PX_DT_F32, 4, g_w.pu);
  px_h_result_free(&r);
  free(rq);
  assert_int_equal(atomic_load(&s->ctr.pull_unchanged), 4);
  assert_int_equal(atomic_load(&s->ctr.pull_snapshot), 0);
  assert_int_equal(atomic_load(&s->ctr.pull_chunks), 4);
  assert_int_equal(atomic_load(&s->ctr.pull_raw_bytes), (N_W + N_U) * 4);
  assert_int_equal(atomic_load(&s->ctr.pull_wire_bytes), wire);
  assert_true(wire < 4 * 64); /* headers only */

  /* "w" moves to version 1: holding 0 gets it RAW, "u" is still UNCHANGED */
  step_all(g_w.inc, 0, g_w.w->id, g_w.pw, N_W);
  rq = pull_req(ids, 2, have, 2, 0, 0, &len);
  pull(g_f.ch, rq, len, &r);
  expect_pull_ok(&r, 4);
  check_chunks(&r, 0, g_w.w, 1, PX_ENC_RAW, PX_DT_F32, 4, g_w.pw);
  check_chunks(&r, 3, g_w.u, 0, PX_ENC_UNCHANGED, PX_DT_F32, 4, g_w.pu);
  px_h_result_free(&r);
  free(rq);
  /* holding 1: UNCHANGED at version 1 */
  have[0] = 1;
  const uint32_t only_w[1] = {g_w.w->id};
  rq = pull_req(only_w, 1, have, 1, 1, 0, &len);
  pull(g_f.ch, rq, len, &r);
  expect_pull_ok(&r, 3);
  check_chunks(&r, 0, g_w.w, 1, PX_ENC_UNCHANGED, PX_DT_F32, 4, g_w.pw);
  px_h_result_free(&r);
  free(rq);
  /* a version the server never had (ahead of it): a full chunk */
  have[0] = 7;
  rq = pull_req(only_w, 1, have, 1, 0, 0, &len);
  pull(g_f.ch, rq, len, &r);
  expect_pull_ok(&r, 3);
  check_chunks(&r, 0, g_w.w, 1, PX_ENC_RAW, PX_DT_F32, 4, g_w.pw);
  px_h_result_free(&r);
  free(rq);
  assert_int_equal(atomic_load(&s->ctr.pull_unchanged), 4 + 1 + 3);
  assert_int_equal(atomic_load(&s->ctr.pull_snapshot), 3 + 3);
  assert_int_equal(rejected(), 0);
}

/* ---- parked pulls ------------------------------------------------------------------------- */

static void test_pull_parks_until_step(void** state) {
  (void)state;
  setup_world(NULL);
  px_server* s = g_w.s;
  px_tensor_state* t = g_w.w;
  const uint32_t ids[1] = {t->id};
  size_t len;
  uint8_t* rq = px_sf_pull_request(0, ids, 1, 1, &len);
  px_h_msg m = {rq, len, NULL, 0};
  px_h_async* a = px_h_async_start(g_f.ch, PX_H_PATH_PULL, &m, 1, CALL_MS);
  assert_non_null(a);
  wait_parked(s, t, 0, 1);
  assert_int_equal(atomic_load(&s->active_calls), 1);
  assert_int_equal(atomic_load(&s->ctr.pull_chunks), 0);

  /* chunk 0 completes: the pull sends it and parks on chunk 1 */
  float* g0 = grads(0, 0, N_W);
  float* g1 = grads(1, 0, N_W);
  push_range(0, g_w.inc[0], 0, t->id, g0, N_W, 0, 1);
  assert_int_equal(parked_on(s, &t->chunks[0]), 1); /* half a step wakes nobody for good */
  push_range(1, g_w.inc[1], 0, t->id, g1, N_W, 0, 1);
  wait_parked(s, t, 1, 1);
  assert_int_equal(parked_on(s, &t->chunks[0]), 0);
  assert_int_equal(atomic_load(&s->ctr.pull_chunks), 1);
  /* the rest of the step */
  push_range(0, g_w.inc[0], 0, t->id, g0, N_W, 1, 3);
  push_range(1, g_w.inc[1], 0, t->id, g1, N_W, 1, 3);
  for (size_t i = 0; i < N_W; i++) g_w.pw[i] = g_w.pw[i] - LR * ((g0[i] + g1[i]) / 2.0f);
  px_h_result r;
  px_h_async_join(a, &r);
  expect_pull_ok(&r, 3);
  check_chunks(&r, 0, t, 1, PX_ENC_RAW, PX_DT_F32, 4, g_w.pw);
  px_h_result_free(&r);
  assert_int_equal(atomic_load(&s->ctr.pull_chunks), 3);
  for (uint32_t k = 0; k < 3; k++) assert_int_equal(parked_on(s, &t->chunks[k]), 0);
  assert_true(px_sf_wait_until(px_sf_no_active_calls, s, WAIT_MS));
  assert_int_equal(rejected(), 0);
  free(rq);
  free(g0);
  free(g1);
}

#define NPULLS 4

static void test_pull_many_parked_one_step(void** state) {
  (void)state;
  setup_world(NULL);
  px_server* s = g_w.s;
  px_tensor_state* t = g_w.w;
  const uint32_t ids[1] = {t->id};
  const uint32_t ids2[2] = {g_w.u->id, t->id};
  size_t len, len2;
  uint8_t* rq = px_sf_pull_request(0, ids, 1, 1, &len);
  uint8_t* rq2 = px_sf_pull_request(1, ids2, 2, 0, &len2);
  px_h_msg m = {rq, len, NULL, 0};
  px_h_async* a[NPULLS];
  for (int i = 0; i < NPULLS; i++) {
    a[i] = px_h_async_start(g_f.ch, PX_H_PATH_PULL, &m, 1, CALL_MS);
    assert_non_null(a[i]);
  }
  wait_parked(s, t, 0, NPULLS);
  assert_int_equal(atomic_load(&s->active_calls), NPULLS);
  /* a pull of the current versions meanwhile is answered at once */
  px_h_result r;
  pull(g_f.ch, rq2, len2, &r);
  expect_pull_ok(&r, 4);
  check_chunks(&r, 0, g_w.u, 0, PX_ENC_RAW, PX_DT_F32, 4, g_w.pu);
  check_chunks(&r, 1, t, 0, PX_ENC_RAW, PX_DT_F32, 4, g_w.pw);
  px_h_result_free(&r);
  const uint64_t pulled_before = atomic_load(&s->ctr.pull_chunks);
  assert_int_equal(pulled_before, 4);
  assert_int_equal(parked_on(s, &t->chunks[0]), NPULLS);

  step_all(g_w.inc, 0, t->id, g_w.pw, N_W);
  for (int i = 0; i < NPULLS; i++) {
    px_h_async_join(a[i], &r);
    expect_pull_ok(&r, 3);
    check_chunks(&r, 0, t, 1, PX_ENC_RAW, PX_DT_F32, 4, g_w.pw);
    px_h_result_free(&r);
  }
  assert_int_equal(atomic_load(&s->ctr.pull_chunks), pulled_before + 3 * NPULLS);
  for (uint32_t k = 0; k < 3; k++) assert_int_equal(parked_on(s, &t->chunks[k]), 0);
  assert_true(px_sf_wait_until(px_sf_no_active_calls, s, WAIT_MS));
  assert_int_equal(rejected(), 0);
  free(rq);
  free(rq2);
}

/* ---- a cancelled pull --------------------------------------------------------------------- */

static void noop_release(void* ctx) { (void)ctx; }

static void test_pull_cancelled_while_parked(void** state) {
  (void)state;
  setup_world(NULL);
  px_server* s = g_w.s;
  px_tensor_state* t = g_w.w;
  const uint32_t ids[1] = {t->id};
  size_t len;
  uint8_t* rq = px_sf_pull_request(0, ids, 1, 1, &len);
  float* g0 = grads(0, 0, N_W);
  float* g1 = grads(1, 0, N_W);
  /* chunk 0 at version 1 already: the pull sends it and parks on chunk 1 */
  push_range(0, g_w.inc[0], 0, t->id, g0, N_W, 0, 1);
  push_range(1, g_w.inc[1], 0, t->id, g1, N_W, 0, 1);

  px_sf_mcall m;
  px_cli_call* call = px_sf_mcall_start(&m, g_f.ch, PX_H_PATH_PULL, CALL_MS);
  px_out out = {rq, len, NULL, 0, noop_release, NULL};
  assert_true(px_cli_call_send(call, &out, true));
  pthread_mutex_lock(&m.mu);
  assert_true(px_sf_mcall_wait(&m, NULL, &m.sent));
  assert_int_equal(m.sent, 1);
  pthread_mutex_unlock(&m.mu);
  assert_true(px_cli_call_read(call));
  pthread_mutex_lock(&m.mu);
  assert_true(px_sf_mcall_wait(&m, &m.have_msg, NULL));
  px_msg* first = m.msg;
  m.have_msg = false;
  m.msg = NULL;
  pthread_mutex_unlock(&m.mu);
  assert_non_null(first);
  size_t fl = 0;
  const uint8_t* fb = px_msg_flat(first, &fl);
  assert_non_null(fb);
  px_iov seg = {fb, fl};
  px_chunk h;
  char err[256];
  assert_int_equal(px_chunk_parse(PX_CHUNK_PULL, &seg, 1, &h, err, sizeof err), 0);
  assert_int_equal(h.chunk, 0);
  assert_int_equal(h.version, 1);
  px_msg_free(first);
  wait_parked(s, t, 1, 1);
  assert_int_equal(atomic_load(&s->active_calls), 1);

  /* the client goes away */
  assert_true(px_cli_call_read(call));
  px_cli_call_cancel(call);
  px_cli_call_unref(call);
  pthread_mutex_lock(&m.mu);
  assert_true(px_sf_mcall_wait(&m, &m.done, NULL));
  assert_int_equal(m.status, PX_ST_CANCELLED);
  assert_null(m.msg);
  pthread_mutex_unlock(&m.mu);
  px_sf_mcall_destroy(&m);

  /* the server forgets it: no waiter left, no active call */
  if (!px_sf_wait_until(px_sf_no_active_calls, s, WAIT_MS))
    fail_msg("%lld calls still active", (long long)atomic_load(&s->active_calls));
  for (uint32_t k = 0; k < 3; k++) assert_int_equal(parked_on(s, &t->chunks[k]), 0);
  assert_int_equal(atomic_load(&s->ctr.pull_chunks), 1);
  assert_int_equal(rejected(), 0);

  /* the step completes without it, and a new pull gets version 1 */
  push_range(0, g_w.inc[0], 0, t->id, g0, N_W, 1, 3);
  push_range(1, g_w.inc[1], 0, t->id, g1, N_W, 1, 3);
  for (size_t i = 0; i < N_W; i++) g_w.pw[i] = g_w.pw[i] - LR * ((g0[i] + g1[i]) / 2.0f);
  px_h_result r;
  pull(g_f.ch, rq, len, &r);
  expect_pull_ok(&r, 3);
  check_chunks(&r, 0, t, 1, PX_ENC_RAW, PX_DT_F32, 4, g_w.pw);
  px_h_result_free(&r);
  assert_true(px_sf_wait_until(px_sf_no_active_calls, s, WAIT_MS));
  free(rq);
  free(g0);
  free(g1);
}

/* ---- refusals ----------------------------------------------------------------------------- */

static void expect_refused(px_rpc_channel* ch, const uint8_t* rq, size_t len, int want,
                           const char* msg) {
  px_server* s = g_w.s;
  const uint64_t rej = rejected(), chunks = atomic_load(&s->ctr.pull_chunks);
  const uint64_t raw = atomic_load(&s->ctr.pull_raw_bytes);
  px_h_result r;
  pull(ch, rq, len, &r);
  if (r.status != want)
    fail_msg("got %s (%d) '%s', want %s '%s'", r.status >= 0 ? px_status_name(r.status) : "harness",
             r.status, r.details, px_status_name(want), msg);
  assert_string_equal(r.details, msg);
  assert_int_equal(r.nresp, 0);
  px_h_result_free(&r);
  assert_int_equal(rejected(), rej + 1);
  assert_int_equal(atomic_load(&s->ctr.pull_chunks), chunks);
  assert_int_equal(atomic_load(&s->ctr.pull_raw_bytes), raw);
  assert_true(px_sf_wait_until(px_sf_no_active_calls, s, WAIT_MS));
}

static void test_pull_refusals(void** state) {
  (void)state;
  setup_world(NULL);
  px_server* s = g_w.s;
  size_t len;
  uint8_t* rq;
  const uint32_t wid = g_w.w->id, uid = g_w.u->id;

  rq = pull_req(NULL, 0, NULL, 0, 0, 0, &len);
  expect_refused(g_f.ch, rq, len, PX_ST_INVALID_ARGUMENT, "PullRequest names no tensor");
  free(rq);
  expect_refused(g_f.ch, (const uint8_t*)"", 0, PX_ST_INVALID_ARGUMENT,
                 "PullRequest names no tensor");
  const uint32_t unknown[2] = {wid, 42};
  rq = pull_req(unknown, 2, NULL, 0, 0, 0, &len);
  expect_refused(g_f.ch, rq, len, PX_ST_NOT_FOUND, "unknown tensor id 42");
  free(rq);
  const uint32_t ids[2] = {wid, uid};
  const int views[] = {PARAMEX__V1__DTYPE__DTYPE_F32, PARAMEX__V1__DTYPE__DTYPE_F16, 99};
  for (size_t i = 0; i < 3; i++) {
    char msg[128];
    snprintf(msg, sizeof msg, "PullRequest view %d is not supported (unspecified or bf16)",
             views[i]);
    rq = pull_req(ids, 2, NULL, 0, 0, views[i], &len);
    expect_refused(g_f.ch, rq, len, PX_ST_INVALID_ARGUMENT, msg);
    free(rq);
  }
  const uint64_t have[3] = {0, 0, 0};
  rq = pull_req(ids, 2, have, 1, 0, 0, &len);
  expect_refused(g_f.ch, rq, len, PX_ST_INVALID_ARGUMENT, "PullRequest has 1 have_versions for 2 tensors");
  free(rq);
  rq = pull_req(ids, 2, have, 3, 0, 0, &len);
  expect_refused(g_f.ch, rq, len, PX_ST_INVALID_ARGUMENT, "PullRequest has 3 have_versions for 2 tensors");
  free(rq);
  static const uint8_t garbage[] = {0x12, 0x05, 0x01};
  expect_refused(g_f.ch, garbage, sizeof garbage, PX_ST_INVALID_ARGUMENT, "malformed PullRequest");

  /* a worker that joined an earlier run of the server */
  char err[256];
  px_rpc_channel* ch = px_rpc_channel_create(g_f.addr, err, sizeof err);
  assert_non_null(ch);
  px_rpc_channel_set_header(ch, "pmx-server-id", "1234-5");
  rq = px_sf_pull_request(0, ids, 2, 0, &len);
  char msg[256];
  snprintf(msg, sizeof msg,
           "server restarted (was 1234-5, now %s) with its tensors at version 0: join again and "
           "resume from there", s->server_id);
  expect_refused(ch, rq, len, PX_ST_ABORTED, msg);
  /* with this server's id the same request is served */
  px_rpc_channel_set_header(ch, "pmx-server-id", s->server_id);
  px_h_result r;
  pull(ch, rq, len, &r);
  expect_pull_ok(&r, 4);
  px_h_result_free(&r);
  free(rq);
  px_rpc_channel_destroy(ch);
  assert_int_equal(rejected(), 10);
  for (uint32_t k = 0; k < 3; k++) assert_int_equal(parked_on(s, &g_w.w->chunks[k]), 0);
}

/* ---- PullRequest.chunks ------------------------------------------------------------------ */

static uint8_t* pull_req_chunks(const uint32_t* ids, size_t nt, const uint32_t* chunks,
                                size_t nc, size_t* len) {
  Paramex__V1__PullRequest req = PARAMEX__V1__PULL_REQUEST__INIT;
  req.n_tensor_ids = nt;
  req.tensor_ids = (uint32_t*)ids;
  req.n_chunks = nc;
  req.chunks = (uint32_t*)chunks;
  *len = paramex__v1__pull_request__get_packed_size(&req);
  uint8_t* b = malloc(*len ? *len : 1);
  assert_non_null(b);
  paramex__v1__pull_request__pack(&req, b);
  return b;
}

/* Only the chunks asked for come, in their order and whole; a list for two tensors, a
 * chunk past the end and a list that does not ascend are refused. */
static void test_pull_selected_chunks(void** state) {
  (void)state;
  setup_world(NULL);
  const uint32_t wid = g_w.w->id, uid = g_w.u->id;
  const uint32_t sel[2] = {0, 2};
  size_t len;
  uint8_t* rq = pull_req_chunks(&wid, 1, sel, 2, &len);
  px_h_result r;
  pull(g_f.ch, rq, len, &r);
  free(rq);
  expect_pull_ok(&r, 2);
  for (size_t i = 0; i < 2; i++) {
    px_iov seg = {r.resp[i], r.resp_len[i]};
    px_chunk h;
    char err[256];
    if (px_chunk_parse(PX_CHUNK_PULL, &seg, 1, &h, err, sizeof err) != 0) fail_msg("%s", err);
    assert_int_equal(h.tensor_id, wid);
    assert_int_equal(h.chunk, sel[i]);
    assert_int_equal(h.version, 0);
    const size_t n = g_w.w->chunks[sel[i]].elems;
    float buf[CE];
    if (px_chunk_decode(&h, &seg, 1, buf, n, 4, err, sizeof err) != PX_DECODE_OK)
      fail_msg("chunk %u: %s", sel[i], err);
    assert_memory_equal(buf, g_w.pw + (size_t)sel[i] * CE, n * 4);
  }
  px_h_result_free(&r);

  const uint32_t both[2] = {wid, uid};
  rq = pull_req_chunks(both, 2, sel, 2, &len);
  expect_refused(g_f.ch, rq, len, PX_ST_INVALID_ARGUMENT,
                 "PullRequest chunks name the chunks of one tensor, but 2 tensors are asked for");
  free(rq);
  const uint32_t past[2] = {1, 3};
  rq = pull_req_chunks(&wid, 1, past, 2, &len);
  expect_refused(g_f.ch, rq, len, PX_ST_INVALID_ARGUMENT,
                 "PullRequest chunk 3 of tensor 'w' does not exist (it has 3)");
  free(rq);
  const uint32_t down[2] = {2, 1}, twice[2] = {1, 1};
  rq = pull_req_chunks(&wid, 1, down, 2, &len);
  expect_refused(g_f.ch, rq, len, PX_ST_INVALID_ARGUMENT,
                 "PullRequest chunks must ascend strictly (1 after 2)");
  free(rq);
  rq = pull_req_chunks(&wid, 1, twice, 2, &len);
  expect_refused(g_f.ch, rq, len, PX_ST_INVALID_ARGUMENT,
                 "PullRequest chunks must ascend strictly (1 after 1)");
  free(rq);
}

/* ---- the bf16 view ------------------------------------------------------------------------ */

static void test_pull_bf16_view(void** state) {
  (void)state;
  setup_world(NULL);
  px_server* s = g_w.s;
  px_tensor_state* t = g_w.w;
  uint16_t want[N_W];
  px_f32_to_bf16_n(g_w.pw, want, N_W);
  const uint32_t ids[1] = {t->id};
  size_t len;
  uint8_t* rq = pull_req(ids, 1, NULL, 0, 0, PARAMEX__V1__DTYPE__DTYPE_BF16, &len);
  px_h_result r;
  pull(g_f.ch, rq, len, &r);
  expect_pull_ok(&r, 3);
  check_chunks(&r, 0, t, 0, PX_ENC_RAW, PX_DT_BF16, 2, want);
  px_h_result_free(&r);
  free(rq);
  assert_int_equal(atomic_load(&s->ctr.pull_raw_bytes), N_W * 2);
  assert_int_equal(atomic_load(&t->pull_raw), N_W * 2);
  /* the parameters themselves stay f32 */
  float cur[N_W];
  px_sf_copy_params(t, cur);
  assert_memory_equal(cur, g_w.pw, sizeof cur);

  /* a parked bf16 pull gets the bf16 words of the stepped parameters */
  rq = pull_req(ids, 1, NULL, 0, 1, PARAMEX__V1__DTYPE__DTYPE_BF16, &len);
  px_h_msg m = {rq, len, NULL, 0};
  px_h_async* a = px_h_async_start(g_f.ch, PX_H_PATH_PULL, &m, 1, CALL_MS);
  assert_non_null(a);
  wait_parked(s, t, 0, 1);
  step_all(g_w.inc, 0, t->id, g_w.pw, N_W);
  px_f32_to_bf16_n(g_w.pw, want, N_W);
  px_h_async_join(a, &r);
  expect_pull_ok(&r, 3);
  check_chunks(&r, 0, t, 1, PX_ENC_RAW, PX_DT_BF16, 2, want);
  px_h_result_free(&r);
  free(rq);
  /* and the native view of the same version is the f32 parameters */
  rq = px_sf_pull_request(0, ids, 1, 1, &len);
  pull(g_f.ch, rq, len, &r);
  expect_pull_ok(&r, 3);
  check_chunks(&r, 0, t, 1, PX_ENC_RAW, PX_DT_F32, 4, g_w.pw);
  px_h_result_free(&r);
  free(rq);

  /* a bf16 tensor: the view changes nothing, its words come as they are */
  Paramex__V1__DeclareRequest dq = PARAMEX__V1__DECLARE_REQUEST__INIT;
  Paramex__V1__Initializer ini = PARAMEX__V1__INITIALIZER__INIT;
  uint64_t shape[1] = {N_U};
  dq.name = "h";
  dq.dtype = PARAMEX__V1__DTYPE__DTYPE_BF16;
  dq.n_shape = 1;
  dq.shape = shape;
  ini.kind = PARAMEX__V1__INITIALIZER__KIND__KIND_UNIFORM;
  ini.a = -2.0f;
  ini.b = 2.0f;
  ini.seed = 33;
  dq.initializer = &ini;
  dq.worker_id = g_f.decl_rank; /* a joined worker creates it */
  dq.incarnation = g_f.decl_inc ? g_f.decl_inc : px_sf_join(&g_f, 0, g_f.srv->cfg.workers);
  ProtobufCMessage* resp = NULL;
  char det[256];
  assert_int_equal(px_h_unary_pb(g_f.ch, PX_H_PATH_DECLARE, &dq.base,
                                 &paramex__v1__declare_response__descriptor, &resp, CALL_MS, det,
                                 sizeof det),
                   PX_ST_OK);
  const uint32_t hid = ((Paramex__V1__DeclareResponse*)resp)->tensor_id;
  protobuf_c_message_free_unpacked(resp, NULL);
  px_tensor_state* th = px_store_tensor(&s->store, hid);
  assert_non_null(th);
  float f[N_U];
  uint16_t hw[N_U];
  assert_int_equal(px_init_fill_f32(f, 0, N_U, PX_FILL_UNIFORM, -2.0f, 2.0f, 33), 0);
  px_f32_to_bf16_n(f, hw, N_U);
  assert_memory_equal(th->params, hw, sizeof hw);
  const uint32_t hids[1] = {hid};
  for (int view = 0; view <= PARAMEX__V1__DTYPE__DTYPE_BF16; view += PARAMEX__V1__DTYPE__DTYPE_BF16) {
    rq = pull_req(hids, 1, NULL, 0, 0, view, &len);
    pull(g_f.ch, rq, len, &r);
    expect_pull_ok(&r, 1);
    check_chunks(&r, 0, th, 0, PX_ENC_RAW, PX_DT_BF16, 2, hw);
    px_h_result_free(&r);
    free(rq);
  }
  assert_true(px_sf_wait_until(px_sf_no_active_calls, s, WAIT_MS));
  assert_int_equal(rejected(), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_pull_current_version, teardown),
      cmocka_unit_test_teardown(test_pull_unchanged, teardown),
      cmocka_unit_test_teardown(test_pull_parks_until_step, teardown),
      cmocka_unit_test_teardown(test_pull_many_parked_one_step, teardown),
      cmocka_unit_test_teardown(test_pull_cancelled_while_parked, teardown),
      cmocka_unit_test_teardown(test_pull_refusals, teardown),
      cmocka_unit_test_teardown(test_pull_selected_chunks, teardown),
      cmocka_unit_test_teardown(test_pull_bf16_view, teardown),
      cmocka_unit_test_teardown(test_pull_identity, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
