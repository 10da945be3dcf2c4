/* Unit tests of server/push_handler.c (push_handler.h): the Push call of an in-process
 * server (server_fixture.h) spoken to over gRPC. A whole BSP step of 2 workers over a
 * multi-chunk tensor (PushResponse counts, the server's push counters, parameters
 * bit-exact against plain SGD computed here), retried pushes counted once as duplicates,
 * every refusal with its exact status and message and nothing changed by it, chunks larger
 * than 64 KiB (processed on the compute pool) and smaller (processed inline), SHUFFLE_ZSTD
 * and bf16 payloads, a push stalled by --hold-bytes 0 that stops reading until the lower
 * rank arrives, and pushes of a worker that joined an earlier run of the server (header
 * pmx-server-id) refused ABORTED. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <inttypes.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>

#include "codec/checksum.h"
#include "codec/dtype.h"
#include "codec/payload.h"
#include "codec/zstdframe.h"
#include "paramex.pb-c.h"
#include "rpc/rpc_base.h"
#include "rpc/rpc_client.h"
#include "server_fixture.h"
#include "wire/chunk_msg.h"

#define CALL_MS 20000
#define WAIT_MS 20000
#define LR 0.5f
#define N_W 2500u /* tensor "w" with 4 KiB chunks: 1024, 1024 and 452 elements */
#define MAX_MSGS 8

static px_sf g_f;

static int teardown(void** state) {
  (void)state;
  px_sf_stop(&g_f);
  return 0;
}

/* A started server of 2 workers, lr 0.5, chunk_bytes ("4K" ...) and more flags. */
static px_server* start(const char* chunk_bytes, const char* const* more) {
  const char* const base[] = {"--workers", "2", "--chunk-bytes", chunk_bytes, "--lr", "0.5", NULL};
  const char* a[32];
  px_sf_start(&g_f, px_sf_flags(a, 32, base, more));
  return g_f.srv;
}

/* ---- helpers ------------------------------------------------------------------------------ */



/* Gradient element i of rank at step: varied magnitudes, exactly representable. */
static float grad_at(uint32_t rank, uint64_t step, size_t i) {
  uint64_t x = (i + 7) * 2654435761u + rank * 40503u + step * 977u;
  float m = (float)(int)(x % 4001) - 2000.0f;
  return m * (rank ? 0.00390625f : 0.0009765625f);
}

static float* grads(uint32_t rank, uint64_t step, size_t n) {
  float* g = malloc(n * sizeof *g);
  assert_non_null(g);
  for (size_t i = 0; i < n; i++) g[i] = grad_at(rank, step, i);
  return g;
}

/* Plain SGD of 2 workers: p - lr * ((g0 + g1) / 2), in place. */
static void sgd_ref(float* p, const float* g0, const float* g1, size_t n) {
  for (size_t i = 0; i < n; i++) p[i] = p[i] - LR * ((g0[i] + g1[i]) / 2.0f);
}


static uint64_t chunk_version(px_tensor_state* t, uint32_t k) {
  pthread_mutex_lock(&t->chunks[k].mu);
  uint64_t v = t->chunks[k].version;
  pthread_mutex_unlock(&t->chunks[k].mu);
  return v;
}

static void expect_versions(px_tensor_state* t, uint64_t v) {
  for (uint32_t k = 0; k < t->nchunks; k++)
    if (chunk_version(t, k) != v)
      fail_msg("tensor '%s' chunk %u at version %" PRIu64 ", want %" PRIu64, t->name, k,
               chunk_version(t, k), v);
}

typedef struct push_out {
  int status;
  char details[512];
  uint32_t accepted, duplicate;
} push_out;

/* Runs one Push call of n messages. */
static void push(px_rpc_channel* ch, const px_h_msg* m, size_t n, push_out* o) {
  px_h_result r;
  memset(o, 0, sizeof *o);
  o->status = px_h_call(ch, PX_H_PATH_PUSH, m, n, CALL_MS, &r);
  snprintf(o->details, sizeof o->details, "%s", r.details);
  if (o->status == PX_ST_OK) {
    assert_int_equal(r.nresp, 1);
    Paramex__V1__PushResponse* pr =
        paramex__v1__push_response__unpack(NULL, r.resp_len[0], r.resp[0]);
    assert_non_null(pr);
    o->accepted = pr->accepted;
    o->duplicate = pr->duplicate;
    paramex__v1__push_response__free_unpacked(pr, NULL);
  } else {
    assert_int_equal(r.nresp, 0);
  }
  px_h_result_free(&r);
}

static void expect_ok(const push_out* o, uint32_t accepted, uint32_t duplicate) {
  if (o->status != PX_ST_OK)
    fail_msg("push: %s (%d): %s", o->status >= 0 ? px_status_name(o->status) : "harness",
             o->status, o->details);
  assert_int_equal(o->accepted, accepted);
  assert_int_equal(o->duplicate, duplicate);
}

/* The messages of chunks [c0, c1) of a RAW f32 push of g (numel elements, chunks of ce). */
typedef struct msgs {
  uint8_t heads[MAX_MSGS][PX_CHUNK_HDR_MAX];
  px_h_msg m[MAX_MSGS];
  size_t n;
  uint64_t wire;
} msgs;

static void raw_msgs(msgs* ms, uint32_t rank, uint64_t inc, uint64_t step, uint32_t tid,
                     const float* g, size_t numel, size_t ce, uint32_t c0, uint32_t c1) {
  ms->n = 0;
  ms->wire = 0;
  for (uint32_t k = c0; k < c1; k++) {
    assert_true(ms->n < MAX_MSGS);
    size_t first = (size_t)k * ce;
    size_t cnt = numel - first < ce ? numel - first : ce;
    ms->m[ms->n] = px_sf_push_chunk(ms->heads[ms->n], rank, inc, step, tid, k, g + first, cnt);
    ms->wire += ms->m[ms->n].head_len + ms->m[ms->n].body_len;
    ms->n++;
  }
}

/* One message from a header (any fields) and payload. */
static px_h_msg chunk_msg(uint8_t* head, const px_chunk* h, const void* payload, size_t plen) {
  size_t hl = px_chunk_encode_header(PX_CHUNK_PUSH, h, plen, head, PX_CHUNK_HDR_MAX);
  assert_true(hl > 0);
  return (px_h_msg){head, hl, payload, plen};
}

/* ---- a whole step ------------------------------------------------------------------------- */

static void test_whole_step(void** state) {
  (void)state;
  px_server* s = start("4K", NULL);
  const uint64_t inc[2] = {px_sf_join(&g_f, 0, 2), px_sf_join(&g_f, 1, 2)};
  const uint32_t tw = px_sf_declare_f32(&g_f, "w", N_W, 11);
  px_tensor_state* t = px_store_tensor(&s->store, tw);
  assert_non_null(t);
  assert_int_equal(t->nchunks, 3);
  float* want = malloc(N_W * sizeof *want);
  float* cur = malloc(N_W * sizeof *cur);
  assert_non_null(want);
  assert_non_null(cur);
  px_sf_copy_params(t, want);
  float* g[2] = {grads(0, 0, N_W), grads(1, 0, N_W)};
  msgs m0, m1;
  push_out o;

  raw_msgs(&m0, 0, inc[0], 0, tw, g[0], N_W, 1024, 0, 3);
  push(g_f.ch, m0.m, m0.n, &o);
  expect_ok(&o, 3, 0);
  /* half a step: counted, but nothing moved */
  expect_versions(t, 0);
  px_sf_copy_params(t, cur);
  assert_memory_equal(cur, want, N_W * sizeof *cur);
  assert_int_equal(atomic_load(&s->ctr.push_chunks), 3);
  assert_int_equal(atomic_load(&s->ctr.steps_completed), 0);
  for (uint32_t k = 0; k < 3; k++) {
    assert_int_equal(t->chunks[k].ncontrib, 1);
    assert_int_equal(t->chunks[k].contributed[0], 1);
    assert_int_equal(t->chunks[k].next_rank, 1);
  }

  raw_msgs(&m1, 1, inc[1], 0, tw, g[1], N_W, 1024, 0, 3);
  push(g_f.ch, m1.m, m1.n, &o);
  expect_ok(&o, 3, 0);
  expect_versions(t, 1);
  sgd_ref(want, g[0], g[1], N_W);
  px_sf_copy_params(t, cur);
  assert_memory_equal(cur, want, N_W * sizeof *cur);

  assert_int_equal(atomic_load(&s->ctr.push_chunks), 6);
  assert_int_equal(atomic_load(&s->ctr.push_duplicates), 0);
  assert_int_equal(atomic_load(&s->ctr.push_raw_bytes), 2 * N_W * 4);
  assert_int_equal(atomic_load(&s->ctr.push_wire_bytes), m0.wire + m1.wire);
  assert_int_equal(atomic_load(&s->ctr.steps_completed), 3);
  assert_int_equal(atomic_load(&s->ctr.rejected_calls), 0);
  assert_int_equal(atomic_load(&t->push_raw), 2 * N_W * 4);
  assert_int_equal(atomic_load(&t->push_wire), m0.wire + m1.wire);
  assert_int_equal(atomic_load(&s->members.w[0].chunks_pushed), 3);
  assert_int_equal(atomic_load(&s->members.w[1].chunks_pushed), 3);
  for (uint32_t k = 0; k < 3; k++) {
    assert_int_equal(t->chunks[k].ncontrib, 0);
    assert_int_equal(t->chunks[k].next_rank, 0);
  }

  /* the next step, higher rank first and chunks in another order per call */
  float* h[2] = {grads(0, 1, N_W), grads(1, 1, N_W)};
  raw_msgs(&m1, 1, inc[1], 1, tw, h[1], N_W, 1024, 0, 3);
  px_h_msg rev[3] = {m1.m[2], m1.m[0], m1.m[1]};
  push(g_f.ch, rev, 3, &o);
  expect_ok(&o, 3, 0);
  expect_versions(t, 1);
  raw_msgs(&m0, 0, inc[0], 1, tw, h[0], N_W, 1024, 0, 3);
  push(g_f.ch, m0.m, m0.n, &o);
  expect_ok(&o, 3, 0);
  expect_versions(t, 2);
  sgd_ref(want, h[0], h[1], N_W);
  px_sf_copy_params(t, cur);
  assert_memory_equal(cur, want, N_W * sizeof *cur);
  assert_int_equal(atomic_load(&s->ctr.push_chunks), 12);
  assert_int_equal(atomic_load(&s->ctr.steps_completed), 6);
  assert_true(px_sf_wait_until(px_sf_no_active_calls, s, WAIT_MS));

  /* a call with no message at all: an empty response */
  push(g_f.ch, NULL, 0, &o);
  expect_ok(&o, 0, 0);
  assert_int_equal(atomic_load(&s->ctr.push_chunks), 12);
  assert_true(px_sf_wait_until(px_sf_no_active_calls, s, WAIT_MS));
  for (int r = 0; r < 2; r++) {
    free(g[r]);
    free(h[r]);
  }
  free(want);
  free(cur);
}

/* ---- duplicates --------------------------------------------------------------------------- */

static void test_retry_counted_once(void** state) {
  (void)state;
  px_server* s = start("4K", NULL);
  const uint64_t inc[2] = {px_sf_join(&g_f, 0, 2), px_sf_join(&g_f, 1, 2)};
  const uint32_t tw = px_sf_declare_f32(&g_f, "w", N_W, 12);
  px_tensor_state* t = px_store_tensor(&s->store, tw);
  float* want = malloc(N_W * sizeof *want);
  float* cur = malloc(N_W * sizeof *cur);
  assert_non_null(want);
  assert_non_null(cur);
  px_sf_copy_params(t, want);
  float* g[2] = {grads(0, 0, N_W), grads(1, 0, N_W)};
  msgs m0, m1;
  push_out o;

  /* chunk 0 twice in one call, then again in a call of its own */
  raw_msgs(&m0, 0, inc[0], 0, tw, g[0], N_W, 1024, 0, 3);
  px_h_msg twice[4] = {m0.m[0], m0.m[0], m0.m[1], m0.m[2]};
  push(g_f.ch, twice, 4, &o);
  expect_ok(&o, 3, 1);
  push(g_f.ch, m0.m, 1, &o);
  expect_ok(&o, 0, 1);
  assert_int_equal(atomic_load(&s->ctr.push_chunks), 3);
  assert_int_equal(atomic_load(&s->ctr.push_duplicates), 2);
  assert_int_equal(atomic_load(&s->members.w[0].chunks_pushed), 3);
  assert_int_equal(t->chunks[0].ncontrib, 1);
  /* a retry with other values is a duplicate too: the first contribution stays */
  float* other = grads(1, 9, N_W);
  raw_msgs(&m1, 0, inc[0], 0, tw, other, N_W, 1024, 0, 1);
  push(g_f.ch, m1.m, 1, &o);
  expect_ok(&o, 0, 1);

  raw_msgs(&m1, 1, inc[1], 0, tw, g[1], N_W, 1024, 0, 3);
  push(g_f.ch, m1.m, m1.n, &o);
  expect_ok(&o, 3, 0);
  expect_versions(t, 1);
  sgd_ref(want, g[0], g[1], N_W);
  px_sf_copy_params(t, cur);
  assert_memory_equal(cur, want, N_W * sizeof *cur);

  /* retries of the completed step (their response was lost): duplicates, nothing moves */
  push(g_f.ch, m0.m, m0.n, &o);
  expect_ok(&o, 0, 3);
  push(g_f.ch, m1.m, m1.n, &o);
  expect_ok(&o, 0, 3);
  expect_versions(t, 1);
  px_sf_copy_params(t, cur);
  assert_memory_equal(cur, want, N_W * sizeof *cur);
  assert_int_equal(atomic_load(&s->ctr.push_chunks), 6);
  assert_int_equal(atomic_load(&s->ctr.push_duplicates), 9);
  assert_int_equal(atomic_load(&s->ctr.steps_completed), 3);
  assert_int_equal(atomic_load(&s->ctr.push_raw_bytes), 2 * N_W * 4);
  assert_int_equal(atomic_load(&s->members.w[0].chunks_pushed), 3);
  assert_int_equal(atomic_load(&s->members.w[1].chunks_pushed), 3);
  assert_int_equal(atomic_load(&s->ctr.rejected_calls), 0);
  for (int r = 0; r < 2; r++) free(g[r]);
  free(other);
  free(want);
  free(cur);
}

/* ---- refusals ----------------------------------------------------------------------------- */

typedef struct snap {
  uint64_t push_chunks, dups, raw, wire, steps, rejected, tpush_raw, tpush_wire;
  uint64_t pushed[2], ver[3];
  float params[N_W];
} snap;

static void take(px_server* s, px_tensor_state* t, snap* x) {
  x->push_chunks = atomic_load(&s->ctr.push_chunks);
  x->dups = atomic_load(&s->ctr.push_duplicates);
  x->raw = atomic_load(&s->ctr.push_raw_bytes);
  x->wire = atomic_load(&s->ctr.push_wire_bytes);
  x->steps = atomic_load(&s->ctr.steps_completed);
  x->rejected = atomic_load(&s->ctr.rejected_calls);
  x->tpush_raw = atomic_load(&t->push_raw);
  x->tpush_wire = atomic_load(&t->push_wire);
  for (int r = 0; r < 2; r++) x->pushed[r] = atomic_load(&s->members.w[r].chunks_pushed);
  for (uint32_t k = 0; k < 3; k++) x->ver[k] = chunk_version(t, k);
  px_sf_copy_params(t, x->params);
}

static snap g_before, g_after;

/* One refused call: its exact status and message (or message prefix), counted once in
 * rejected_calls, and nothing else changed. */
static void expect_refused(px_server* s, px_tensor_state* t, const px_h_msg* m, size_t n,
                           int want, const char* msg, bool prefix) {
  take(s, t, &g_before);
  push_out o;
  push(g_f.ch, m, n, &o);
  if (o.status != want)
    fail_msg("got %s (%d) '%s', want %s '%s'", o.status >= 0 ? px_status_name(o.status) : "harness",
             o.status, o.details, px_status_name(want), msg);
  if (prefix) {
    if (strncmp(o.details, msg, strlen(msg)) != 0)
      fail_msg("details '%s' do not start with '%s'", o.details, msg);
  } else {
    assert_string_equal(o.details, msg);
  }
  take(s, t, &g_after);
  g_before.rejected++;
  assert_memory_equal(&g_after, &g_before, sizeof g_after);
  assert_int_equal(t->chunks[0].ncontrib, 0);
  assert_true(px_sf_wait_until(px_sf_no_active_calls, s, WAIT_MS));
}

static void test_refusals(void** state) {
  (void)state;
  px_server* s = start("4K", NULL);
  const uint64_t inc_old = px_sf_join(&g_f, 0, 2);
  const uint64_t inc = px_sf_join(&g_f, 0, 2);
  const uint32_t tw = px_sf_declare_f32(&g_f, "w", N_W, 13);
  px_tensor_state* t = px_store_tensor(&s->store, tw);
  float* g = grads(0, 0, N_W);
  uint8_t head[PX_CHUNK_HDR_MAX];
  char msg[256];
  px_chunk h0;
  memset(&h0, 0, sizeof h0);
  h0.worker_id = 0;
  h0.incarnation = inc;
  h0.step = 0;
  h0.tensor_id = tw;
  h0.chunk = 0;
  h0.encoding = PX_ENC_RAW;
  h0.dtype = PX_DT_F32;
  h0.raw_len = 4096;
  h0.checksum = px_checksum(g, 4096);
  px_chunk h;
  px_h_msg m;

  h = h0, h.tensor_id = 9;
  m = chunk_msg(head, &h, g, 4096);
  expect_refused(s, t, &m, 1, PX_ST_NOT_FOUND, "unknown tensor id 9", false);
  h = h0, h.chunk = 3;
  m = chunk_msg(head, &h, g, 4096);
  expect_refused(s, t, &m, 1, PX_ST_OUT_OF_RANGE, "tensor 'w': chunk 3 out of range (it has 3)",
                 false);
  h = h0, h.chunk = 4000000000u;
  m = chunk_msg(head, &h, g, 4096);
  expect_refused(s, t, &m, 1, PX_ST_OUT_OF_RANGE,
                 "tensor 'w': chunk 4000000000 out of range (it has 3)", false);
  /* the last chunk holds 452 elements */
  h = h0, h.chunk = 2;
  m = chunk_msg(head, &h, g, 4096);
  expect_refused(s, t, &m, 1, PX_ST_INVALID_ARGUMENT,
                 "tensor 'w' chunk 2: raw_len 4096 and payload 4096 bytes, expected 1808", false);
  h = h0, h.raw_len = 4092, h.checksum = px_checksum(g, 4092);
  m = chunk_msg(head, &h, g, 4092);
  expect_refused(s, t, &m, 1, PX_ST_INVALID_ARGUMENT,
                 "tensor 'w' chunk 0: raw_len 4092 and payload 4092 bytes, expected 4096", false);
  h = h0;
  m = chunk_msg(head, &h, g, 4000);
  expect_refused(s, t, &m, 1, PX_ST_INVALID_ARGUMENT,
                 "tensor 'w' chunk 0: raw_len 4096 and payload 4000 bytes, expected 4096", false);
  h = h0;
  m = chunk_msg(head, &h, NULL, 0);
  expect_refused(s, t, &m, 1, PX_ST_INVALID_ARGUMENT,
                 "tensor 'w' chunk 0: raw_len 4096 and payload 0 bytes, expected 4096", false);
  h = h0, h.checksum ^= 1;
  m = chunk_msg(head, &h, g, 4096);
  expect_refused(s, t, &m, 1, PX_ST_DATA_LOSS, "tensor 'w' chunk 0: checksum mismatch", false);
  h = h0, h.worker_id = 1;
  m = chunk_msg(head, &h, g, 4096);
  expect_refused(s, t, &m, 1, PX_ST_FAILED_PRECONDITION, "worker 1 has not joined", false);
  h = h0, h.incarnation = inc_old;
  m = chunk_msg(head, &h, g, 4096);
  snprintf(msg, sizeof msg,
           "worker 0: incarnation %" PRIu64 " is stale (current %" PRIu64 "): it rejoined", inc_old,
           inc);
  expect_refused(s, t, &m, 1, PX_ST_FAILED_PRECONDITION, msg, false);
  h = h0, h.worker_id = 2;
  m = chunk_msg(head, &h, g, 4096);
  expect_refused(s, t, &m, 1, PX_ST_INVALID_ARGUMENT, "worker_id 2 is not below --workers 2", false);
  const uint32_t encs[] = {PX_ENC_UNCHANGED, PX_ENC_DELTA_ZSTD, 7};
  for (size_t i = 0; i < 3; i++) {
    h = h0, h.encoding = encs[i];
    m = chunk_msg(head, &h, g, 4096);
    snprintf(msg, sizeof msg, "tensor 'w' chunk 0: push encoding %u is not supported", encs[i]);
    expect_refused(s, t, &m, 1, PX_ST_INVALID_ARGUMENT, msg, false);
  }
  h = h0, h.dtype = PX_DT_F16, h.raw_len = 2048;
  m = chunk_msg(head, &h, g, 2048);
  expect_refused(s, t, &m, 1, PX_ST_INVALID_ARGUMENT,
                 "tensor 'w': a f16 payload cannot be pushed to a f32 tensor", false);
  h = h0, h.dtype = PX_DT_F64, h.raw_len = 8192;
  m = chunk_msg(head, &h, g, 4096);
  expect_refused(s, t, &m, 1, PX_ST_INVALID_ARGUMENT,
                 "tensor 'w': a f64 payload cannot be pushed to a f32 tensor", false);
  h = h0, h.dtype = 0;
  m = chunk_msg(head, &h, g, 4096);
  expect_refused(s, t, &m, 1, PX_ST_INVALID_ARGUMENT, "tensor 'w': a ", true);
  /* a bf16 payload is allowed, but of 2 bytes per element */
  h = h0, h.dtype = PX_DT_BF16;
  m = chunk_msg(head, &h, g, 4096);
  expect_refused(s, t, &m, 1, PX_ST_INVALID_ARGUMENT,
                 "tensor 'w' chunk 0: raw_len 4096 and payload 4096 bytes, expected 2048", false);
  h = h0, h.step = 5;
  m = chunk_msg(head, &h, g, 4096);
  expect_refused(s, t, &m, 1, PX_ST_OUT_OF_RANGE, "tensor 'w' chunk 0: step 5 is ahead of version 0",
                 false);
  uint8_t junk[100];
  for (size_t i = 0; i < sizeof junk; i++) junk[i] = (uint8_t)(i * 37 + 1);
  h = h0, h.encoding = PX_ENC_SHUFFLE_ZSTD;
  m = chunk_msg(head, &h, junk, sizeof junk);
  expect_refused(s, t, &m, 1, PX_ST_INVALID_ARGUMENT, "tensor 'w' chunk 0: bad zstd frame: ", true);
  static const uint8_t garbage[] = {0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01};
  m = (px_h_msg){garbage, sizeof garbage, NULL, 0};
  expect_refused(s, t, &m, 1, PX_ST_INVALID_ARGUMENT, "malformed PushChunk", true);

  /* a good chunk then a bad one: the first counts, the call ends with the second's status */
  take(s, t, &g_before);
  uint8_t head2[PX_CHUNK_HDR_MAX];
  px_h_msg two[2];
  two[0] = chunk_msg(head, &h0, g, 4096);
  h = h0, h.chunk = 1, h.checksum ^= 0xff;
  two[1] = chunk_msg(head2, &h, g + 1024, 4096);
  push_out o;
  push(g_f.ch, two, 2, &o);
  assert_int_equal(o.status, PX_ST_DATA_LOSS);
  assert_string_equal(o.details, "tensor 'w' chunk 1: checksum mismatch");
  take(s, t, &g_after);
  assert_int_equal(g_after.push_chunks, g_before.push_chunks + 1);
  assert_int_equal(g_after.rejected, g_before.rejected + 1);
  assert_int_equal(g_after.pushed[0], 1);
  assert_int_equal(t->chunks[0].ncontrib, 1);
  assert_int_equal(t->chunks[1].ncontrib, 0);
  expect_versions(t, 0);

  /* after all that the step still runs, bit-exact */
  const uint64_t inc1 = px_sf_join(&g_f, 1, 2);
  float* g1 = grads(1, 0, N_W);
  float* want = malloc(N_W * sizeof *want);
  float* cur = malloc(N_W * sizeof *cur);
  assert_non_null(want);
  assert_non_null(cur);
  memcpy(want, g_before.params, N_W * sizeof *want);
  msgs ms;
  raw_msgs(&ms, 0, inc, 0, tw, g, N_W, 1024, 0, 3);
  push(g_f.ch, ms.m, ms.n, &o);
  expect_ok(&o, 2, 1);
  raw_msgs(&ms, 1, inc1, 0, tw, g1, N_W, 1024, 0, 3);
  push(g_f.ch, ms.m, ms.n, &o);
  expect_ok(&o, 3, 0);
  expect_versions(t, 1);
  sgd_ref(want, g, g1, N_W);
  px_sf_copy_params(t, cur);
  assert_memory_equal(cur, want, N_W * sizeof *cur);

  /* a step that is too old now (a chunk two versions on) */
  float* g2[2] = {grads(0, 1, N_W), grads(1, 1, N_W)};
  raw_msgs(&ms, 0, inc, 1, tw, g2[0], N_W, 1024, 0, 1);
  push(g_f.ch, ms.m, 1, &o);
  expect_ok(&o, 1, 0);
  raw_msgs(&ms, 1, inc1, 1, tw, g2[1], N_W, 1024, 0, 1);
  push(g_f.ch, ms.m, 1, &o);
  expect_ok(&o, 1, 0);
  assert_int_equal(chunk_version(t, 0), 2);
  raw_msgs(&ms, 0, inc, 0, tw, g, N_W, 1024, 0, 1);
  take(s, t, &g_before);
  push(g_f.ch, ms.m, 1, &o);
  assert_int_equal(o.status, PX_ST_FAILED_PRECONDITION);
  assert_string_equal(o.details, "tensor 'w' chunk 0: step 0 is too old (chunk at version 2)");
  take(s, t, &g_after);
  g_before.rejected++;
  assert_memory_equal(&g_after, &g_before, sizeof g_after);
  for (int r = 0; r < 2; r++) free(g2[r]);
  free(g);
  free(g1);
  free(want);
  free(cur);
}

/* ---- where chunks are processed ----------------------------------------------------------- */

/* A gradient holding inf (or NaN) would turn the parameters it touches into NaN: with
 * --reject-nonfinite the chunk is refused, naming it; without, it is applied and counted
 * (nonfinite_chunks in Stats). */
static void nonfinite_push(bool reject) {
  const char* const more[] = {"--reject-nonfinite", NULL};
  px_server* s = start("4K", reject ? more : NULL);
  const uint64_t inc = px_sf_join(&g_f, 0, 2);
  const uint32_t tw = px_sf_declare_f32(&g_f, "w", N_W, 13);
  px_tensor_state* t = px_store_tensor(&s->store, tw);
  float* g = grads(0, 0, N_W);
  g[17] = INFINITY;
  g[30] = NAN;
  uint8_t head[PX_CHUNK_HDR_MAX];
  px_chunk h;
  memset(&h, 0, sizeof h);
  h.incarnation = inc;
  h.tensor_id = tw;
  h.encoding = PX_ENC_RAW;
  h.dtype = PX_DT_F32;
  h.raw_len = 4096;
  h.checksum = px_checksum(g, 4096);
  px_h_msg m = chunk_msg(head, &h, g, 4096);
  if (reject) {
    expect_refused(s, t, &m, 1, PX_ST_INVALID_ARGUMENT,
                   "tensor 'w' chunk 0 of worker 0, step 0: 2 non-finite gradient values (the "
                   "first at element 17: inf): refused (--reject-nonfinite)", false);
  } else {
    push_out o;
    push(g_f.ch, &m, 1, &o);
    expect_ok(&o, 1, 0);
    assert_int_equal(t->chunks[0].ncontrib, 1);
  }
  assert_int_equal(atomic_load(&s->ctr.nonfinite_chunks), 1);
  free(g);
}

static void test_nonfinite_rejected(void** state) {
  (void)state;
  nonfinite_push(true);
}

static void test_nonfinite_counted(void** state) {
  (void)state;
  nonfinite_push(false);
}

static void test_large_and_small_chunks(void** state) {
  (void)state;
  /* 256 KiB chunks: chunks 0 and 1 of "big" (256 KiB each) go to the compute pool, its last
   * (400 bytes) and "small" (40 bytes) are processed inline. */
  px_server* s = start("256K", NULL);
  const size_t ce = 65536, nbig = 2 * 65536 + 100, nsmall = 10;
  const uint64_t inc[2] = {px_sf_join(&g_f, 0, 2), px_sf_join(&g_f, 1, 2)};
  const uint32_t tb = px_sf_declare_f32(&g_f, "big", nbig, 21);
  const uint32_t ts = px_sf_declare_f32(&g_f, "small", nsmall, 22);
  px_tensor_state* t = px_store_tensor(&s->store, tb);
  px_tensor_state* u = px_store_tensor(&s->store, ts);
  assert_int_equal(t->nchunks, 3);
  assert_int_equal(t->chunks[0].elems, ce);
  assert_int_equal(t->chunks[2].elems, 100);
  float* want = malloc(nbig * sizeof *want);
  float* cur = malloc(nbig * sizeof *cur);
  float wsmall[10], csmall[10];
  assert_non_null(want);
  assert_non_null(cur);
  px_sf_copy_params(t, want);
  px_sf_copy_params(u, wsmall);
  float* g[2] = {grads(0, 0, nbig), grads(1, 0, nbig)};
  float* gs[2] = {grads(0, 5, nsmall), grads(1, 5, nsmall)};
  uint64_t wire = 0;
  for (uint32_t r = 0; r < 2; r++) {
    msgs ms;
    raw_msgs(&ms, r, inc[r], 0, tb, g[r], nbig, ce, 0, 3);
    /* the small tensor between the big chunks, in the same call */
    px_h_msg all[4] = {ms.m[0], {0}, ms.m[1], ms.m[2]};
    uint8_t hs[PX_CHUNK_HDR_MAX];
    all[1] = px_sf_push_chunk(hs, r, inc[r], 0, ts, 0, gs[r], nsmall);
    wire += ms.wire + all[1].head_len + all[1].body_len;
    push_out o;
    push(g_f.ch, all, 4, &o);
    expect_ok(&o, 4, 0);
  }
  expect_versions(t, 1);
  expect_versions(u, 1);
  sgd_ref(want, g[0], g[1], nbig);
  sgd_ref(wsmall, gs[0], gs[1], nsmall);
  px_sf_copy_params(t, cur);
  px_sf_copy_params(u, csmall);
  assert_memory_equal(cur, want, nbig * sizeof *cur);
  assert_memory_equal(csmall, wsmall, sizeof wsmall);
  assert_int_equal(atomic_load(&s->ctr.push_chunks), 8);
  assert_int_equal(atomic_load(&s->ctr.push_raw_bytes), 2 * (nbig + nsmall) * 4);
  assert_int_equal(atomic_load(&s->ctr.push_wire_bytes), wire);
  assert_int_equal(atomic_load(&s->ctr.steps_completed), 4);
  assert_int_equal(atomic_load(&t->push_raw), 2 * nbig * 4);
  assert_int_equal(atomic_load(&u->push_raw), 2 * nsmall * 4);

  /* a bad large chunk is refused from the pool as one from the inline path would be */
  float* g2 = grads(0, 1, nbig);
  uint8_t head[PX_CHUNK_HDR_MAX];
  px_chunk h;
  memset(&h, 0, sizeof h);
  h.worker_id = 0;
  h.incarnation = inc[0];
  h.step = 1;
  h.tensor_id = tb;
  h.chunk = 1;
  h.dtype = PX_DT_F32;
  h.raw_len = (uint32_t)(ce * 4);
  h.checksum = px_checksum(g2 + ce, ce * 4) ^ 2;
  px_h_msg m = chunk_msg(head, &h, g2 + ce, ce * 4);
  push_out o;
  push(g_f.ch, &m, 1, &o);
  assert_int_equal(o.status, PX_ST_DATA_LOSS);
  assert_string_equal(o.details, "tensor 'big' chunk 1: checksum mismatch");
  assert_int_equal(atomic_load(&s->ctr.push_chunks), 8);
  assert_int_equal(atomic_load(&s->ctr.rejected_calls), 1);
  assert_int_equal(t->chunks[1].ncontrib, 0);
  px_sf_copy_params(t, cur);
  assert_memory_equal(cur, want, nbig * sizeof *cur);
  assert_true(px_sf_wait_until(px_sf_no_active_calls, s, WAIT_MS));
  for (int r = 0; r < 2; r++) {
    free(g[r]);
    free(gs[r]);
  }
  free(g2);
  free(want);
  free(cur);
}

/* ---- other payloads ----------------------------------------------------------------------- */

static void test_shuffle_and_bf16_payloads(void** state) {
  (void)state;
  px_server* s = start("4K", NULL);
  const uint64_t inc[2] = {px_sf_join(&g_f, 0, 2), px_sf_join(&g_f, 1, 2)};
  const uint32_t tw = px_sf_declare_f32(&g_f, "w", N_W, 14);
  px_tensor_state* t = px_store_tensor(&s->store, tw);
  float* want = malloc(N_W * sizeof *want);
  float* cur = malloc(N_W * sizeof *cur);
  assert_non_null(want);
  assert_non_null(cur);
  px_sf_copy_params(t, want);
  float* g0 = grads(0, 0, N_W);
  float* g1src = grads(1, 0, N_W);
  /* rank 1 sends bf16: the server sums the f32 values of its words */
  uint16_t* b1 = malloc(N_W * sizeof *b1);
  float* g1 = malloc(N_W * sizeof *g1);
  assert_non_null(b1);
  assert_non_null(g1);
  for (size_t i = 0; i < N_W; i++) g1src[i] *= 1.0009765625f; /* not bf16-exact */
  px_f32_to_bf16_n(g1src, b1, N_W);
  px_bf16_to_f32_n(b1, g1, N_W);
  assert_memory_not_equal(g1, g1src, N_W * sizeof *g1);

  /* rank 0: chunk 0 SHUFFLE_ZSTD, chunks 1 and 2 RAW */
  const size_t cap = px_zstd_bound(4096);
  uint8_t* z0 = malloc(cap);
  uint8_t* z1 = malloc(cap);
  assert_non_null(z0);
  assert_non_null(z1);
  size_t zl0 = px_encode_shuffle(g0, 1024, 4, 1, z0, cap);
  assert_true(zl0 > 0);
  uint8_t heads[3][PX_CHUNK_HDR_MAX];
  px_chunk h;
  memset(&h, 0, sizeof h);
  h.worker_id = 0;
  h.incarnation = inc[0];
  h.tensor_id = tw;
  h.dtype = PX_DT_F32;
  h.encoding = PX_ENC_SHUFFLE_ZSTD;
  h.raw_len = 4096;
  h.checksum = px_checksum(g0, 4096);
  px_h_msg m0[3];
  m0[0] = chunk_msg(heads[0], &h, z0, zl0);
  m0[1] = px_sf_push_chunk(heads[1], 0, inc[0], 0, tw, 1, g0 + 1024, 1024);
  m0[2] = px_sf_push_chunk(heads[2], 0, inc[0], 0, tw, 2, g0 + 2048, N_W - 2048);
  push_out o;
  push(g_f.ch, m0, 3, &o);
  expect_ok(&o, 3, 0);

  /* rank 1: bf16 RAW for chunks 0 and 1, bf16 SHUFFLE_ZSTD for chunk 2 */
  px_h_msg m1[3];
  uint8_t heads1[3][PX_CHUNK_HDR_MAX];
  for (uint32_t k = 0; k < 2; k++) {
    memset(&h, 0, sizeof h);
    h.worker_id = 1;
    h.incarnation = inc[1];
    h.tensor_id = tw;
    h.chunk = k;
    h.dtype = PX_DT_BF16;
    h.encoding = PX_ENC_RAW;
    h.raw_len = 2048;
    h.checksum = px_checksum(b1 + k * 1024, 2048);
    m1[k] = chunk_msg(heads1[k], &h, b1 + k * 1024, 2048);
  }
  const size_t n2 = N_W - 2048;
  size_t zl1 = px_encode_shuffle(b1 + 2048, n2, 2, 1, z1, cap);
  assert_true(zl1 > 0);
  h.chunk = 2;
  h.encoding = PX_ENC_SHUFFLE_ZSTD;
  h.raw_len = (uint32_t)(n2 * 2);
  h.checksum = px_checksum(b1 + 2048, n2 * 2);
  m1[2] = chunk_msg(heads1[2], &h, z1, zl1);
  push(g_f.ch, m1, 3, &o);
  expect_ok(&o, 3, 0);

  expect_versions(t, 1);
  sgd_ref(want, g0, g1, N_W);
  px_sf_copy_params(t, cur);
  assert_memory_equal(cur, want, N_W * sizeof *cur);
  /* raw bytes count the tensor's elements, wire bytes what was sent */
  assert_int_equal(atomic_load(&s->ctr.push_raw_bytes), 2 * N_W * 4);
  uint64_t wire = 0;
  for (int k = 0; k < 3; k++)
    wire += m0[k].head_len + m0[k].body_len + m1[k].head_len + m1[k].body_len;
  assert_int_equal(atomic_load(&s->ctr.push_wire_bytes), wire);
  free(g0);
  free(g1src);
  free(g1);
  free(b1);
  free(z0);
  free(z1);
  free(want);
  free(cur);
}

/* ---- a stalled push ----------------------------------------------------------------------- */

typedef struct stall_arg {
  px_tensor_state* t;
  uint32_t chunk, rank;
} stall_arg;

static bool stalled(void* arg) {
  stall_arg* a = arg;
  px_chunk_state* c = &a->t->chunks[a->chunk];
  pthread_mutex_lock(&c->mu);
  bool yes = c->held[a->rank].buf != NULL && c->held[a->rank].owner != NULL;
  pthread_mutex_unlock(&c->mu);
  return yes;
}

static bool one_chunk_counted(void* srv) {
  px_server* s = srv;
  return atomic_load(&s->ctr.push_chunks) >= 1 && atomic_load(&s->members.w[1].chunks_pushed) >= 1;
}

static void test_stalled_push_resumes(void** state) {
  (void)state;
  const char* more[] = {"--hold-bytes", "0", NULL};
  px_server* s = start("4K", more);
  const uint64_t inc[2] = {px_sf_join(&g_f, 0, 2), px_sf_join(&g_f, 1, 2)};
  const uint32_t tw = px_sf_declare_f32(&g_f, "w", N_W, 15);
  px_tensor_state* t = px_store_tensor(&s->store, tw);
  float* want = malloc(N_W * sizeof *want);
  float* cur = malloc(N_W * sizeof *cur);
  assert_non_null(want);
  assert_non_null(cur);
  px_sf_copy_params(t, want);
  float* g[2] = {grads(0, 0, N_W), grads(1, 0, N_W)};
  assert_int_equal(atomic_load(&s->agg.hold_left), 0);

  /* rank 1 first: its first chunk cannot be held within the budget, so its call stalls
   * without reading its other chunks */
  msgs m1;
  raw_msgs(&m1, 1, inc[1], 0, tw, g[1], N_W, 1024, 0, 3);
  px_h_async* a = px_h_async_start(g_f.ch, PX_H_PATH_PUSH, m1.m, m1.n, CALL_MS);
  assert_non_null(a);
  stall_arg sa = {t, 0, 1};
  assert_true(px_sf_wait_until(stalled, &sa, WAIT_MS));
  /* the chunk is counted just after it is held, outside the chunk's lock */
  assert_true(px_sf_wait_until(one_chunk_counted, s, WAIT_MS));
  assert_int_equal(atomic_load(&s->ctr.push_chunks), 1);
  assert_int_equal(atomic_load(&s->members.w[1].chunks_pushed), 1);
  assert_int_equal(t->chunks[1].ncontrib, 0);
  assert_int_equal(t->chunks[2].ncontrib, 0);
  assert_int_equal(atomic_load(&s->active_calls), 1);
  expect_versions(t, 0);

  /* rank 0 arrives: both calls complete */
  msgs m0;
  raw_msgs(&m0, 0, inc[0], 0, tw, g[0], N_W, 1024, 0, 3);
  push_out o;
  push(g_f.ch, m0.m, m0.n, &o);
  expect_ok(&o, 3, 0);
  px_h_result r;
  px_h_async_join(a, &r);
  if (r.status != PX_ST_OK) fail_msg("stalled push: %s: %s", px_status_name(r.status), r.details);
  assert_int_equal(r.nresp, 1);
  Paramex__V1__PushResponse* pr = paramex__v1__push_response__unpack(NULL, r.resp_len[0], r.resp[0]);
  assert_non_null(pr);
  assert_int_equal(pr->accepted, 3);
  assert_int_equal(pr->duplicate, 0);
  paramex__v1__push_response__free_unpacked(pr, NULL);
  px_h_result_free(&r);

  expect_versions(t, 1);
  sgd_ref(want, g[0], g[1], N_W);
  px_sf_copy_params(t, cur);
  assert_memory_equal(cur, want, N_W * sizeof *cur);
  assert_int_equal(atomic_load(&s->ctr.push_chunks), 6);
  assert_int_equal(atomic_load(&s->ctr.steps_completed), 3);
  assert_int_equal(atomic_load(&s->ctr.rejected_calls), 0);
  assert_int_equal(atomic_load(&s->agg.hold_left), 0);
  for (uint32_t k = 0; k < 3; k++) {
    assert_null(t->chunks[k].held[1].buf);
    assert_null(t->chunks[k].held[1].owner);
  }
  assert_true(px_sf_wait_until(px_sf_no_active_calls, s, WAIT_MS));
  for (int i = 0; i < 2; i++) free(g[i]);
  free(want);
  free(cur);
}

/* ---- a server restarted since the worker joined ------------------------------------------- */

static void test_push_to_restarted_server(void** state) {
  (void)state;
  px_server* s = start("4K", NULL);
  const uint64_t inc[2] = {px_sf_join(&g_f, 0, 2), px_sf_join(&g_f, 1, 2)};
  const uint32_t tw = px_sf_declare_f32(&g_f, "w", N_W, 16);
  px_tensor_state* t = px_store_tensor(&s->store, tw);
  float* g[2] = {grads(0, 0, N_W), grads(1, 0, N_W)};
  char err[256];
  px_rpc_channel* ch = px_rpc_channel_create(g_f.addr, err, sizeof err);
  assert_non_null(ch);

  /* the header of this server: accepted */
  px_rpc_channel_set_header(ch, "pmx-server-id", s->server_id);
  msgs ms;
  push_out o;
  raw_msgs(&ms, 0, inc[0], 0, tw, g[0], N_W, 1024, 0, 3);
  push(ch, ms.m, ms.n, &o);
  expect_ok(&o, 3, 0);
  raw_msgs(&ms, 1, inc[1], 0, tw, g[1], N_W, 1024, 0, 3);
  push(ch, ms.m, ms.n, &o);
  expect_ok(&o, 3, 0);
  expect_versions(t, 1);

  /* another id: the worker joined an earlier run */
  const char* old = "17a2b3c4d5e6f-4242";
  px_rpc_channel_set_header(ch, "pmx-server-id", old);
  float* h = grads(0, 1, N_W);
  raw_msgs(&ms, 0, inc[0], 1, tw, h, N_W, 1024, 0, 3);
  push(ch, ms.m, ms.n, &o);
  char want[256];
  snprintf(want, sizeof want,
           "server restarted (was %s, now %s) with its tensors at version 1: join again and "
           "resume from there", old, s->server_id);
  assert_int_equal(o.status, PX_ST_ABORTED);
  assert_string_equal(o.details, want);
  /* a long id is cut in the message */
  const char* longid = "0123456789abcdef0123456789abcdef0123456789abcdef-99";
  px_rpc_channel_set_header(ch, "pmx-server-id", longid);
  push(ch, ms.m, ms.n, &o);
  snprintf(want, sizeof want,
           "server restarted (was %.40s, now %s) with its tensors at version 1: join again and "
           "resume from there", longid, s->server_id);
  assert_int_equal(o.status, PX_ST_ABORTED);
  assert_string_equal(o.details, want);
  assert_int_equal(atomic_load(&s->ctr.push_chunks), 6);
  assert_int_equal(atomic_load(&s->ctr.rejected_calls), 2);
  for (uint32_t k = 0; k < 3; k++) assert_int_equal(t->chunks[k].ncontrib, 0);
  assert_true(px_sf_wait_until(px_sf_no_active_calls, s, WAIT_MS));

  /* without the header (a client that does not send it): accepted */
  px_rpc_channel_set_header(ch, "pmx-server-id", NULL);
  push(ch, ms.m, ms.n, &o);
  expect_ok(&o, 3, 0);
  assert_int_equal(atomic_load(&s->ctr.push_chunks), 9);
  px_rpc_channel_destroy(ch);
  for (int i = 0; i < 2; i++) free(g[i]);
  free(h);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_whole_step, teardown),
      cmocka_unit_test_teardown(test_retry_counted_once, teardown),
      cmocka_unit_test_teardown(test_refusals, teardown),
      cmocka_unit_test_teardown(test_nonfinite_rejected, teardown),
      cmocka_unit_test_teardown(test_nonfinite_counted, teardown),
      cmocka_unit_test_teardown(test_large_and_small_chunks, teardown),
      cmocka_unit_test_teardown(test_shuffle_and_bf16_payloads, teardown),
      cmocka_unit_test_teardown(test_stalled_push_resumes, teardown),
      cmocka_unit_test_teardown(test_push_to_restarted_server, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
