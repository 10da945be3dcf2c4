/* Unit tests of server/exchange_handler.c (exchange_handler.h): the Exchange stream of an
 * in-process server (server_fixture.h) driven by hand over gRPC, its messages built and
 * read with protobuf-c. A whole BSP step of two workers, each a StepRequest (push + pull):
 * the first parks until the second completes the step, both answered with the new
 * parameters bit-exact, and a second step on the same streams; a refused chunk answered
 * with its exact status while the stream stays open; malformed and empty StepRequests
 * refused INVALID_ARGUMENT; a push-only and a pull-only request; a parked step whose
 * client cancels leaves the server clean; stopping the server ends an idle stream
 * UNAVAILABLE at once. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/checksum.h"
#include "codec/payload.h"
#include "paramex.pb-c.h"
#include "rpc/rpc_base.h"
#include "rpc/rpc_client.h"
#include "server_fixture.h"
#include "wire/chunk_msg.h"

#define PATH_EXCHANGE "/paramex.v1.ParameterExchange/Exchange"
#define CALL_MS 60000
#define WAIT_MS 20000
#define LR 0.5f
#define CE 1024u  /* elements per 4 KiB chunk */
#define N_W 2500u /* chunks of 1024, 1024 and 452 elements */

static px_sf g_f;

static int teardown(void** state) {
  (void)state;
  px_sf_stop(&g_f);
  return 0;
}

static px_server* start(void) {
  static const char* const args[] = {"--workers", "2", "--chunk-bytes", "4K", "--lr", "0.5", NULL};
  px_sf_start(&g_f, args);
  return g_f.srv;
}

static float* grads(uint32_t rank, uint64_t step) {
  float* g = malloc(N_W * sizeof *g);
  assert_non_null(g);
  for (size_t i = 0; i < N_W; i++)
    g[i] = (float)((int)((i * 7 + rank * 13 + step * 5) % 97) - 48) / 64.0f;
  return g;
}

/* ---- messages ------------------------------------------------------------------------------ */

typedef struct step_req {
  uint8_t* buf;
  size_t len;
} step_req;

/* A StepRequest: the push of g (all chunks of tensor tid) when g is non-NULL, and a pull
 * of tid at min_version when pull is set. */
static step_req make_request(uint32_t rank, uint64_t inc, uint64_t step, uint32_t tid,
                             const float* g, bool pull, uint64_t min_version) {
  uint8_t chunk_bufs[3][PX_CHUNK_HDR_MAX + CE * 4];
  ProtobufCBinaryData chunks[3];
  size_t nchunks = 0;
  for (uint32_t k = 0; g && k < 3; k++) {
    const size_t n = k < 2 ? CE : N_W - 2 * CE;
    px_h_msg m = px_sf_push_chunk(chunk_bufs[k], rank, inc, step, tid, k, g + k * CE, n);
    memcpy(chunk_bufs[k] + m.head_len, m.body, m.body_len);
    chunks[nchunks++] = (ProtobufCBinaryData){m.head_len + m.body_len, chunk_bufs[k]};
  }
  Paramex__V1__PullRequest pr = PARAMEX__V1__PULL_REQUEST__INIT;
  uint32_t ids[1] = {tid};
  pr.worker_id = rank;
  pr.n_tensor_ids = 1;
  pr.tensor_ids = ids;
  pr.min_version = min_version;
  Paramex__V1__StepRequest req = PARAMEX__V1__STEP_REQUEST__INIT;
  req.n_push_chunks = nchunks;
  req.push_chunks = chunks;
  if (pull) req.pull = &pr;
  step_req r;
  r.len = paramex__v1__step_request__get_packed_size(&req);
  r.buf = malloc(r.len + 1);
  assert_non_null(r.buf);
  paramex__v1__step_request__pack(&req, r.buf);
  return r;
}

static void noop_release(void* ctx) { (void)ctx; }

/* Sends bytes on the stream m (no half-close) and asks for the answer. */
static void send_step(px_sf_mcall* m, const uint8_t* b, size_t len) {
  px_out out = {b, len, NULL, 0, noop_release, NULL};
  pthread_mutex_lock(&m->mu);
  m->sent = 0;
  m->have_msg = false;
  pthread_mutex_unlock(&m->mu);
  assert_true(px_cli_call_send(m->call, &out, false));
  pthread_mutex_lock(&m->mu);
  assert_true(px_sf_mcall_wait(m, NULL, &m->sent));
  assert_int_equal(m->sent, 1);
  pthread_mutex_unlock(&m->mu);
  assert_true(px_cli_call_read(m->call));
}

/* The StepResponse to the step sent last (fails the test without one). */
static Paramex__V1__StepResponse* answer(px_sf_mcall* m) {
  pthread_mutex_lock(&m->mu);
  assert_true(px_sf_mcall_wait(m, &m->have_msg, NULL));
  px_msg* msg = m->msg;
  m->msg = NULL;
  m->have_msg = false;
  pthread_mutex_unlock(&m->mu);
  if (!msg) fail_msg("the stream ended instead of answering (status %d: %s)", m->status, m->details);
  size_t len = 0;
  const uint8_t* p = px_msg_flat(msg, &len);
  assert_non_null(p);
  Paramex__V1__StepResponse* r = paramex__v1__step_response__unpack(NULL, len, p);
  px_msg_free(msg);
  assert_non_null(r);
  return r;
}

static Paramex__V1__StepResponse* exchange(px_sf_mcall* m, step_req rq) {
  send_step(m, rq.buf, rq.len);
  free(rq.buf);
  return answer(m);
}

/* The response's pull chunks: tensor tid's three chunks at version, RAW, holding want. */
static void check_pulled(const Paramex__V1__StepResponse* r, uint32_t tid, uint64_t version,
                         const float* want) {
  if (r->code != 0) fail_msg("step answered %d: %s", r->code, r->message);
  assert_int_equal(r->n_pull_chunks, 3);
  for (uint32_t k = 0; k < 3; k++) {
    px_iov seg = {r->pull_chunks[k].data, r->pull_chunks[k].len};
    px_chunk h;
    char err[256];
    if (px_chunk_parse(PX_CHUNK_PULL, &seg, 1, &h, err, sizeof err) != 0) fail_msg("%s", err);
    const size_t n = k < 2 ? CE : N_W - 2 * CE;
    assert_int_equal(h.tensor_id, tid);
    assert_int_equal(h.chunk, k);
    assert_int_equal(h.version, version);
    assert_int_equal(h.encoding, PX_ENC_RAW);
    assert_int_equal(h.raw_len, n * 4);
    assert_int_equal(h.payload_len, n * 4);
    assert_true(h.checksum == px_checksum(want + k * CE, n * 4));
    /* the payload is the message's tail */
    assert_memory_equal(seg.p + seg.n - n * 4, want + k * CE, n * 4);
  }
}

static bool parked_one(void* arg) {
  px_server* s = arg;
  px_tensor_state* t = s->store.tensors[0];
  pthread_mutex_lock(&s->waiters.mu);
  bool any = t->chunks[0].waiters.head != NULL;
  pthread_mutex_unlock(&s->waiters.mu);
  return any;
}

/* ---- tests ---------------------------------------------------------------------------------- */

static void test_bsp_steps_bit_exact(void** state) {
  (void)state;
  px_server* s = start();
  const uint64_t inc[2] = {px_sf_join(&g_f, 0, 2), px_sf_join(&g_f, 1, 2)};
  const uint32_t tid = px_sf_declare_f32(&g_f, "w", N_W, 11);
  px_tensor_state* t = px_store_tensor(&s->store, tid);
  float* want = malloc(N_W * sizeof *want);
  assert_non_null(want);
  px_sf_copy_params(t, want);
  px_sf_mcall m[2];
  px_sf_mcall_start(&m[0], g_f.ch, PATH_EXCHANGE, CALL_MS);
  px_sf_mcall_start(&m[1], g_f.ch, PATH_EXCHANGE, CALL_MS);
  for (uint64_t step = 0; step < 2; step++) {
    float* g0 = grads(0, step);
    float* g1 = grads(1, step);
    /* rank 0's step parks: its pull waits for rank 1's push */
    step_req r0 = make_request(0, inc[0], step, tid, g0, true, step + 1);
    send_step(&m[0], r0.buf, r0.len);
    free(r0.buf);
    assert_true(px_sf_wait_until(parked_one, s, WAIT_MS));
    Paramex__V1__StepResponse* a1 = exchange(&m[1], make_request(1, inc[1], step, tid, g1, true, step + 1));
    Paramex__V1__StepResponse* a0 = answer(&m[0]);
    for (size_t i = 0; i < N_W; i++) want[i] = want[i] - LR * ((g0[i] + g1[i]) / 2.0f);
    check_pulled(a0, tid, step + 1, want);
    check_pulled(a1, tid, step + 1, want);
    assert_int_equal(a0->accepted, 3);
    assert_int_equal(a1->accepted, 3);
    assert_int_equal(a0->duplicate + a1->duplicate, 0);
    paramex__v1__step_response__free_unpacked(a0, NULL);
    paramex__v1__step_response__free_unpacked(a1, NULL);
    free(g0);
    free(g1);
  }
  assert_int_equal(atomic_load(&s->ctr.exchange_steps), 4);
  assert_int_equal(atomic_load(&s->ctr.push_chunks), 12);
  assert_int_equal(atomic_load(&s->ctr.rejected_calls), 0);
  /* between steps a stream is no call in progress: nothing holds the drain */
  assert_true(px_sf_wait_until(px_sf_no_active_calls, s, WAIT_MS));
  for (int k = 0; k < 2; k++) {
    px_cli_call_cancel(m[k].call);
    px_cli_call_unref(m[k].call);
    pthread_mutex_lock(&m[k].mu);
    assert_true(px_sf_mcall_wait(&m[k], &m[k].done, NULL));
    pthread_mutex_unlock(&m[k].mu);
    px_sf_mcall_destroy(&m[k]);
  }
  free(want);
}

static void test_refusals_keep_the_stream(void** state) {
  (void)state;
  px_server* s = start();
  const uint64_t inc = px_sf_join(&g_f, 0, 2);
  px_sf_join(&g_f, 1, 2);
  const uint32_t tid = px_sf_declare_f32(&g_f, "w", N_W, 11);
  px_tensor_state* t = px_store_tensor(&s->store, tid);
  float* want = malloc(N_W * sizeof *want);
  assert_non_null(want);
  px_sf_copy_params(t, want);
  float* g = grads(0, 0);
  px_sf_mcall m;
  px_sf_mcall_start(&m, g_f.ch, PATH_EXCHANGE, CALL_MS);

  /* a chunk of an unknown tensor: the push's exact refusal, no pull chunk */
  Paramex__V1__StepResponse* a = exchange(&m, make_request(0, inc, 0, 9, g, true, 1));
  assert_int_equal(a->code, PX_ST_NOT_FOUND);
  assert_non_null(strstr(a->message, "unknown tensor id 9"));
  assert_int_equal(a->n_pull_chunks, 0);
  paramex__v1__step_response__free_unpacked(a, NULL);

  /* bytes that are no StepRequest, and one asking for nothing */
  static const uint8_t junk[] = {0xff, 0xff, 0xff};
  send_step(&m, junk, sizeof junk);
  a = answer(&m);
  assert_int_equal(a->code, PX_ST_INVALID_ARGUMENT);
  assert_string_equal(a->message, "malformed StepRequest");
  paramex__v1__step_response__free_unpacked(a, NULL);
  send_step(&m, junk, 0);
  a = answer(&m);
  assert_int_equal(a->code, PX_ST_INVALID_ARGUMENT);
  assert_string_equal(a->message, "StepRequest has neither a push chunk nor a pull");
  paramex__v1__step_response__free_unpacked(a, NULL);
  assert_int_equal(atomic_load(&s->ctr.rejected_calls), 3);
  assert_int_equal(atomic_load(&s->ctr.push_chunks), 0);

  /* the same stream still serves: a pull only, then a push only */
  a = exchange(&m, make_request(0, inc, 0, tid, NULL, true, 0));
  check_pulled(a, tid, 0, want);
  paramex__v1__step_response__free_unpacked(a, NULL);
  a = exchange(&m, make_request(0, inc, 0, tid, g, false, 0));
  assert_int_equal(a->code, 0);
  assert_int_equal(a->accepted, 3);
  assert_int_equal(a->n_pull_chunks, 0);
  paramex__v1__step_response__free_unpacked(a, NULL);
  /* again: every chunk a duplicate */
  a = exchange(&m, make_request(0, inc, 0, tid, g, false, 0));
  assert_int_equal(a->code, 0);
  assert_int_equal(a->accepted, 0);
  assert_int_equal(a->duplicate, 3);
  paramex__v1__step_response__free_unpacked(a, NULL);
  assert_int_equal(atomic_load(&s->ctr.push_chunks), 3);
  assert_int_equal(atomic_load(&s->ctr.push_duplicates), 3);

  px_cli_call_cancel(m.call);
  px_cli_call_unref(m.call);
  pthread_mutex_lock(&m.mu);
  assert_true(px_sf_mcall_wait(&m, &m.done, NULL));
  pthread_mutex_unlock(&m.mu);
  px_sf_mcall_destroy(&m);
  free(g);
  free(want);
}

static void test_cancelled_while_parked(void** state) {
  (void)state;
  px_server* s = start();
  const uint64_t inc = px_sf_join(&g_f, 0, 2);
  px_sf_join(&g_f, 1, 2);
  const uint32_t tid = px_sf_declare_f32(&g_f, "w", N_W, 11);
  float* g = grads(0, 0);
  px_sf_mcall m;
  px_sf_mcall_start(&m, g_f.ch, PATH_EXCHANGE, CALL_MS);
  step_req r = make_request(0, inc, 0, tid, g, true, 1);
  send_step(&m, r.buf, r.len);
  free(r.buf);
  assert_true(px_sf_wait_until(parked_one, s, WAIT_MS));
  assert_int_equal(atomic_load(&s->active_calls), 1);
  px_cli_call_cancel(m.call);
  px_cli_call_unref(m.call);
  pthread_mutex_lock(&m.mu);
  assert_true(px_sf_mcall_wait(&m, &m.done, NULL));
  assert_int_equal(m.status, PX_ST_CANCELLED);
  pthread_mutex_unlock(&m.mu);
  px_sf_mcall_destroy(&m);
  /* the server forgets the step: no waiter, no call in progress; the push stays counted */
  assert_true(px_sf_wait_until(px_sf_no_active_calls, s, WAIT_MS));
  assert_false(parked_one(s));
  assert_int_equal(atomic_load(&s->ctr.push_chunks), 3);
  free(g);
}

static void test_stop_ends_idle_stream(void** state) {
  (void)state;
  start();
  char err[256];
  /* a channel of its own: px_sf_stop destroys the fixture's */
  px_rpc_channel* ch = px_rpc_channel_create(g_f.addr, err, sizeof err);
  assert_non_null(ch);
  px_sf_mcall m;
  px_sf_mcall_start(&m, ch, PATH_EXCHANGE, CALL_MS);
  /* one answered request makes sure the stream is open and idle on the server */
  static const uint8_t junk[] = {0xff};
  send_step(&m, junk, sizeof junk);
  Paramex__V1__StepResponse* a = answer(&m);
  assert_int_equal(a->code, PX_ST_INVALID_ARGUMENT);
  paramex__v1__step_response__free_unpacked(a, NULL);
  assert_true(px_cli_call_read(m.call));
  assert_int_equal(px_sf_stop(&g_f), 0);
  pthread_mutex_lock(&m.mu);
  assert_true(px_sf_mcall_wait(&m, &m.have_msg, NULL)); /* the end of the stream */
  assert_null(m.msg);
  pthread_mutex_unlock(&m.mu);
  px_cli_call_unref(m.call);
  pthread_mutex_lock(&m.mu);
  assert_true(px_sf_mcall_wait(&m, &m.done, NULL));
  assert_int_equal(m.status, PX_ST_UNAVAILABLE);
  assert_string_equal(m.details, "server is shutting down");
  pthread_mutex_unlock(&m.mu);
  px_rpc_channel_destroy(ch);
  px_sf_mcall_destroy(&m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_bsp_steps_bit_exact, teardown),
      cmocka_unit_test_teardown(test_refusals_keep_the_stream, teardown),
      cmocka_unit_test_teardown(test_cancelled_while_parked, teardown),
      cmocka_unit_test_teardown(test_stop_ends_idle_stream, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
