/* Unit tests of server/monitor.c (monitor.h): px_monitor_tick at chosen times on a started
 * in-process paramex-server (server_fixture.h) whose own monitor thread is stopped, so
 * that only the test's ticks act: a parked pull ends DEADLINE_EXCEEDED past --call-timeout;
 * without --elastic, the pulls waiting for a step end FAILED_PRECONDITION once a dead
 * worker stayed away past --rejoin-wait (not before, and no longer once it is back); with
 * --elastic the step completes without the dead worker, the parked pull then succeeds and
 * a push stalled behind the dead rank resumes. And px_monitor_start / px_monitor_stop:
 * the thread runs the checks on its period and is joined (stop twice, stop without
 * start). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "monitor.h"
#include "paramex.pb-c.h"
#include "rpc/rpc_base.h"
#include "server_fixture.h"
#include "util/clock.h"
#include "wire/chunk_msg.h"

#define CALL_MS 60000   /* client deadline of the calls */
#define WAIT_MS 20000   /* bound of every wait for a condition (normally milliseconds) */
#define LR 0.5f

static px_sf g_f;

static int teardown(void** state) {
  (void)state;
  px_sf_stop(&g_f);
  return 0;
}

/* A started server (4 KiB chunks, lr 0.5, the flags given) without its monitor thread. */
static px_server* start(const char* const* more) {
  static const char* const base[] = {"--chunk-bytes", "4K", "--lr", "0.5", NULL};
  const char* a[32];
  px_sf_start(&g_f, px_sf_flags(a, 32, base, more));
  px_monitor_stop(&g_f.svc.monitor); /* only the test's ticks from now on */
  assert_false(g_f.svc.monitor.started);
  return g_f.srv;
}

static void nap_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Whether a pull is parked on chunk c. */
static bool parked(px_chunk_state* c) {
  pthread_mutex_lock(&c->mu);
  bool p = c->waiters.head != NULL;
  pthread_mutex_unlock(&c->mu);
  return p;
}

/* Waits (bounded) until cond(c) holds. */
static void wait_until(bool (*cond)(px_chunk_state*), px_chunk_state* c, const char* what) {
  const uint64_t until = px_now_ms() + WAIT_MS;
  while (!cond(c)) {
    if (px_now_ms() > until) fail_msg("%s: not after %d ms", what, WAIT_MS);
    nap_ms(1);
  }
}

/* A Pull of worker for tensor id at min_version, started on its own thread. */
typedef struct pull {
  uint8_t* req;
  size_t len;
  px_h_msg msg;
  px_h_async* a;
} pull;

static void pull_start(pull* p, uint32_t worker, uint32_t id, uint64_t min_version) {
  p->req = px_sf_pull_request(worker, &id, 1, min_version, &p->len);
  p->msg = (px_h_msg){p->req, p->len, NULL, 0};
  p->a = px_h_async_start(g_f.ch, PX_H_PATH_PULL, &p->msg, 1, CALL_MS);
  assert_non_null(p->a);
}

static void pull_join(pull* p, px_h_result* res) {
  px_h_async_join(p->a, res);
  free(p->req);
}

/* The chunk message i of a pull result. */
static void pull_chunk(const px_h_result* res, size_t i, px_chunk* h) {
  px_iov seg = {res->resp[i], res->resp_len[i]};
  char err[256] = "";
  if (px_chunk_parse(PX_CHUNK_PULL, &seg, 1, h, err, sizeof err) != 0) fail_msg("%s", err);
}

/* Worker rank is heard from at now (as a call at that time would record). */
static void seen_at(px_server* s, uint32_t rank, uint64_t now) {
  atomic_store(&s->members.w[rank].last_seen_ms, now);
}

/* ---- --call-timeout --------------------------------------------------------------------- */

/* The deadline of the pull parked on c (set when it started: its call time plus
 * --call-timeout on the monotonic clock). */
static uint64_t parked_deadline(px_chunk_state* c) {
  pthread_mutex_lock(&c->mu);
  assert_non_null(c->waiters.head);
  uint64_t d = c->waiters.head->deadline_ms;
  pthread_mutex_unlock(&c->mu);
  return d;
}

static void test_call_timeout(void** state) {
  (void)state;
  /* --call-timeout 30: no tick on the real clock reaches it while the test runs */
  static const char* const more[] = {"--workers", "1", "--call-timeout", "30", NULL};
  px_server* s = start(more);
  px_sf_join(&g_f, 0, 1);
  const uint32_t id = px_sf_declare_f32(&g_f, "w", 100, 1);
  px_chunk_state* c = &s->store.tensors[0]->chunks[0];
  const uint64_t t0 = px_now_ms();
  pull p;
  pull_start(&p, 0, id, 1); /* version 1 never comes */
  wait_until(parked, c, "the pull parked");
  const uint64_t deadline = parked_deadline(c);
  assert_true(deadline >= t0 + 30000 && deadline <= px_now_ms() + 30000);
  /* a tick before the deadline leaves it parked */
  px_monitor_tick(s, px_now_ms());
  assert_true(parked(c));
  assert_int_equal(parked_deadline(c), deadline);
  /* a tick at a time past the deadline ends it, whatever the real clock says */
  px_monitor_tick(s, px_now_ms() + 3600000);
  assert_false(parked(c));
  px_h_result res;
  pull_join(&p, &res);
  assert_int_equal(res.status, PX_ST_DEADLINE_EXCEEDED);
  assert_string_equal(res.details, "the pull waited longer than the server's --call-timeout");
  assert_int_equal(res.nresp, 0);
  assert_true(res.elapsed_ms < CALL_MS);
  px_h_result_free(&res);
  assert_int_equal(s->store.tensors[0]->chunks[0].version, 0);
}

/* ---- a dead worker without --elastic ---------------------------------------------------- */

static void test_rejoin_wait(void** state) {
  (void)state;
  static const char* const more[] = {"--workers", "2", "--worker-timeout", "1", "--rejoin-wait",
                                     "5", NULL};
  px_server* s = start(more);
  px_sf_join(&g_f, 0, 2);
  px_sf_join(&g_f, 1, 2);
  const uint32_t id = px_sf_declare_f32(&g_f, "w", 1500, 2);
  px_tensor_state* t = s->store.tensors[0];
  px_chunk_state* c = &t->chunks[0];
  pull p;
  pull_start(&p, 0, id, 1);
  wait_until(parked, c, "the pull parked");
  const uint64_t now0 = px_now_ms() + 10000;
  seen_at(s, 0, now0);
  /* worker 1 is dead from now0; the pull waits for it */
  px_monitor_tick(s, now0);
  assert_true(px_members_dead(&s->members, 1));
  assert_false(px_members_dead(&s->members, 0));
  assert_int_equal(atomic_load(&s->members.stalled_by_dead), 0);
  assert_true(parked(c));
  seen_at(s, 0, now0 + 4999);
  px_monitor_tick(s, now0 + 4999); /* just within --rejoin-wait */
  assert_int_equal(atomic_load(&s->members.stalled_by_dead), 0);
  assert_true(parked(c));
  assert_int_equal(c->version, 0);
  seen_at(s, 0, now0 + 5000);
  px_monitor_tick(s, now0 + 5000); /* it stayed away --rejoin-wait: the pull fails */
  assert_int_equal(atomic_load(&s->members.stalled_by_dead), 1);
  assert_false(parked(c));
  px_h_result res;
  pull_join(&p, &res);
  assert_int_equal(res.status, PX_ST_FAILED_PRECONDITION);
  assert_string_equal(res.details, "a worker has been gone longer than --rejoin-wait: this step "
                                   "cannot complete (restart that worker, or run the server with "
                                   "--elastic)");
  px_h_result_free(&res);
  assert_int_equal(c->version, 0); /* no step without it */
  /* a new pull for the step fails at once while the stall lasts */
  pull_start(&p, 0, id, 1);
  pull_join(&p, &res);
  assert_int_equal(res.status, PX_ST_FAILED_PRECONDITION);
  px_h_result_free(&res);
  /* a pull of the current version is served */
  pull_start(&p, 0, id, 0);
  pull_join(&p, &res);
  assert_int_equal(res.status, PX_ST_OK);
  assert_int_equal(res.nresp, 2);
  px_h_result_free(&res);
  /* worker 1 comes back: the next scan ends the stall and pulls park again */
  px_members_seen(&s->members, 1);
  assert_false(px_members_dead(&s->members, 1));
  px_monitor_tick(s, px_now_ms());
  assert_int_equal(atomic_load(&s->members.stalled_by_dead), 0);
  pull_start(&p, 0, id, 1);
  wait_until(parked, c, "the pull parked again");
  px_monitor_stop(&g_f.svc.monitor); /* (already stopped) */
  /* the drain ends it (the channel stays: px_sf_stop would cancel the call first) */
  assert_int_equal(px_service_stop(&g_f.svc), 0);
  g_f.started = false;
  pull_join(&p, &res);
  assert_int_equal(res.status, PX_ST_UNAVAILABLE);
  assert_string_equal(res.details, "server is shutting down");
  px_h_result_free(&res);
}

/* ---- --elastic ---------------------------------------------------------------------------- */

static void test_elastic_completes_step(void** state) {
  (void)state;
  static const char* const more[] = {"--workers", "2", "--worker-timeout", "1", "--elastic", NULL};
  px_server* s = start(more);
  const uint64_t inc0 = px_sf_join(&g_f, 0, 2);
  px_sf_join(&g_f, 1, 2);
  const uint32_t id = px_sf_declare_f32(&g_f, "w", 1500, 3);
  px_tensor_state* t = s->store.tensors[0];
  float* want = malloc(1500 * 4);
  float* g = malloc(1500 * 4);
  assert_true(want && g);
  memcpy(want, t->params, 1500 * 4);
  for (size_t i = 0; i < 1500; i++) g[i] = (float)((int)(i % 97) - 48) * 1e-2f;
  for (size_t i = 0; i < 1500; i++) want[i] = want[i] - LR * (g[i] / 1.0f);
  /* worker 0 pushes its step 0; worker 1 never will */
  uint8_t h0[PX_CHUNK_HDR_MAX], h1[PX_CHUNK_HDR_MAX];
  px_h_msg msgs[2] = {px_sf_push_chunk(h0, 0, inc0, 0, id, 0, g, 1024),
                      px_sf_push_chunk(h1, 0, inc0, 0, id, 1, g + 1024, 1500 - 1024)};
  px_h_result res;
  px_h_call(g_f.ch, PX_H_PATH_PUSH, msgs, 2, CALL_MS, &res);
  assert_int_equal(res.status, PX_ST_OK);
  px_h_result_free(&res);
  assert_int_equal(t->chunks[0].ncontrib, 1);
  assert_int_equal(t->chunks[1].ncontrib, 1);
  pull p;
  pull_start(&p, 0, id, 1);
  wait_until(parked, &t->chunks[0], "the pull parked");
  /* a tick before worker 1's lease ran out changes nothing */
  px_monitor_tick(s, px_now_ms());
  assert_true(parked(&t->chunks[0]));
  assert_int_equal(t->chunks[0].version, 0);
  const uint64_t steps0 = atomic_load(&s->ctr.steps_completed);
  const uint64_t now0 = px_now_ms() + 10000;
  seen_at(s, 0, now0);
  px_monitor_tick(s, now0);
  assert_true(px_members_dead(&s->members, 1));
  assert_int_equal(atomic_load(&s->members.stalled_by_dead), 0); /* elastic: no stall */
  assert_int_equal(t->chunks[0].version, 1);
  assert_int_equal(t->chunks[1].version, 1);
  assert_int_equal(atomic_load(&s->ctr.steps_completed), steps0 + 2);
  assert_memory_equal(t->params, want, 1500 * 4);
  pull_join(&p, &res);
  assert_int_equal(res.status, PX_ST_OK);
  assert_int_equal(res.nresp, 2);
  for (size_t i = 0; i < 2; i++) {
    px_chunk h;
    pull_chunk(&res, i, &h);
    assert_int_equal(h.tensor_id, id);
    assert_int_equal(h.chunk, i);
    assert_int_equal(h.version, 1);
  }
  px_h_result_free(&res);
  free(want);
  free(g);
}

static bool push_stalled(px_chunk_state* c) {
  pthread_mutex_lock(&c->mu);
  bool st = c->held[2].buf != NULL && c->held[2].owner != NULL;
  pthread_mutex_unlock(&c->mu);
  return st;
}

/* A push stalled (--hold-bytes 0) behind a rank that died resumes when the sweep of the
 * tick completes the step. */
static void test_elastic_resumes_stalled_push(void** state) {
  (void)state;
  static const char* const more[] = {"--workers", "3", "--worker-timeout", "1", "--elastic",
                                     "--hold-bytes", "0", NULL};
  px_server* s = start(more);
  const uint64_t inc0 = px_sf_join(&g_f, 0, 3);
  px_sf_join(&g_f, 1, 3);
  const uint64_t inc2 = px_sf_join(&g_f, 2, 3);
  const uint32_t id = px_sf_declare_f32(&g_f, "w", 500, 4);
  px_tensor_state* t = s->store.tensors[0];
  px_chunk_state* c = &t->chunks[0];
  float g0[500], g2[500], want[500];
  memcpy(want, t->params, sizeof want);
  for (size_t i = 0; i < 500; i++) {
    g0[i] = (float)i * 1e-3f;
    g2[i] = 1.0f - (float)i * 3e-3f;
    want[i] = want[i] - LR * ((g0[i] + g2[i]) / 2.0f);
  }
  uint8_t h2[PX_CHUNK_HDR_MAX], h0[PX_CHUNK_HDR_MAX];
  px_h_msg m2 = px_sf_push_chunk(h2, 2, inc2, 0, id, 0, g2, 500);
  px_h_async* a2 = px_h_async_start(g_f.ch, PX_H_PATH_PUSH, &m2, 1, CALL_MS);
  assert_non_null(a2);
  wait_until(push_stalled, c, "rank 2's push stalled");
  px_h_msg m0 = px_sf_push_chunk(h0, 0, inc0, 0, id, 0, g0, 500);
  px_h_result res;
  px_h_call(g_f.ch, PX_H_PATH_PUSH, &m0, 1, CALL_MS, &res);
  assert_int_equal(res.status, PX_ST_OK);
  px_h_result_free(&res);
  assert_true(push_stalled(c)); /* rank 1 is still awaited */
  assert_int_equal(c->version, 0);
  const uint64_t now0 = px_now_ms() + 10000;
  seen_at(s, 0, now0);
  seen_at(s, 2, now0);
  px_monitor_tick(s, now0);
  assert_true(px_members_dead(&s->members, 1));
  assert_int_equal(c->version, 1);
  assert_memory_equal(t->params, want, sizeof want);
  px_h_async_join(a2, &res);
  assert_int_equal(res.status, PX_ST_OK);
  assert_int_equal(res.nresp, 1);
  Paramex__V1__PushResponse* pr = paramex__v1__push_response__unpack(NULL, res.resp_len[0],
                                                                      res.resp[0]);
  assert_non_null(pr);
  assert_int_equal(pr->accepted, 1);
  assert_int_equal(pr->duplicate, 0);
  paramex__v1__push_response__free_unpacked(pr, NULL);
  px_h_result_free(&res);
}

/* ---- the thread ----------------------------------------------------------------------------- */

static bool rank0_dead(px_chunk_state* unused) {
  (void)unused;
  return px_members_dead(&g_f.srv->members, 0);
}

static void test_start_stop(void** state) {
  (void)state;
  static const char* const more[] = {"--workers", "1", "--worker-timeout", "0.2", NULL};
  px_sf_init(&g_f, more);
  px_server* s = g_f.srv;
  px_monitor m;
  memset(&m, 0, sizeof m);
  px_monitor_stop(&m); /* never started: nothing to do */
  assert_false(m.started);
  bool replaced;
  px_members_join(&s->members, 0, "w", &replaced);
  assert_false(px_members_dead(&s->members, 0));
  assert_int_equal(px_monitor_start(&m, s), 0);
  assert_true(m.started);
  assert_ptr_equal(m.srv, s);
  /* the thread scans on its period (50 ms here): the silent worker is found dead */
  wait_until(rank0_dead, NULL, "the monitor thread found worker 0 dead");
  const uint64_t t0 = px_now_ms();
  px_monitor_stop(&m);
  assert_true(px_now_ms() - t0 < WAIT_MS);
  assert_false(m.started);
  px_monitor_stop(&m); /* twice */
  assert_false(m.started);
  /* started again after a stop */
  assert_int_equal(px_monitor_start(&m, s), 0);
  px_monitor_stop(&m);
  assert_false(m.started);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_call_timeout, teardown),
      cmocka_unit_test_teardown(test_rejoin_wait, teardown),
      cmocka_unit_test_teardown(test_elastic_completes_step, teardown),
      cmocka_unit_test_teardown(test_elastic_resumes_stalled_push, teardown),
      cmocka_unit_test_teardown(test_start_stop, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
