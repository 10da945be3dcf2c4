/* Unit tests of server/control.c (control.h): the control calls of an in-process server
 * (server_fixture.h) spoken to over gRPC. Join (incarnations, the world_size and rank
 * checks with their exact messages, malformed requests, lease_ms from --worker-timeout,
 * server_id), Declare (created, conflicts naming both declarations, initial values in
 * pieces waking a pull parked for version 0), Stats (every counter and the tensor and
 * worker rows after pushes; a tensor's checksum is the xxh64 of its bytes), Checkpoint
 * (without and with --checkpoint-dir), Heartbeat (lease refresh, stale incarnations,
 * unknown ranks) and Health (SERVING, unknown services, NOT_SERVING once draining). Every
 * refusal is counted in rejected_calls and changes nothing else. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <poll.h>

#include <inttypes.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "codec/checksum.h"
#include "codec/dtype.h"
#include "codec/initializer.h"
#include "codec/payload.h"
#include "health.pb-c.h"
#include "paramex.pb-c.h"
#include "rpc/rpc_base.h"
#include "rpc/rpc_client.h"
#include "server_fixture.h"
#include "monitor.h"
#include "util/clock.h"
#include "wire/chunk_msg.h"

#define CALL_MS 20000
#define WAIT_MS 20000
#define LR 0.5f
#define N_W 2500u /* tensor "w": chunks of 1024, 1024 and 452 elements */
#define CHUNK_ELEMS 1024u

static px_sf g_f;
static char g_dir[512]; /* a temp dir of the test, removed at teardown */

static int teardown(void** state) {
  (void)state;
  px_sf_stop(&g_f);
  if (g_dir[0]) px_h_rmtree(g_dir);
  g_dir[0] = 0;
  return 0;
}

/* A started server of 2 workers, 4 KiB chunks, lr 0.5, and more flags (NULL-ended). */
static px_server* start(const char* const* more) {
  static const char* const base[] = {"--workers", "2", "--chunk-bytes", "4K", "--lr", "0.5", NULL};
  const char* a[32];
  px_sf_start(&g_f, px_sf_flags(a, 32, base, more));
  return g_f.srv;
}

/* ---- small helpers ------------------------------------------------------------------------ */


typedef struct park_arg {
  px_server* srv;
  px_chunk_state* c;
  size_t n;
} park_arg;

static size_t parked_on(px_server* s, px_chunk_state* c) {
  size_t n = 0;
  pthread_mutex_lock(&s->waiters.mu);
  for (px_waiter* w = c->waiters.head; w && n < 100000; w = w->next) n++;
  pthread_mutex_unlock(&s->waiters.mu);
  return n;
}

static bool parked_enough(void* arg) {
  park_arg* p = arg;
  return parked_on(p->srv, p->c) >= p->n;
}


static void expect_status(int got, const char* det, int want, const char* want_det) {
  if (got != want)
    fail_msg("status %s (%d) '%s', want %s", got >= 0 ? px_status_name(got) : "harness", got, det,
             px_status_name(want));
  if (want_det) assert_string_equal(det, want_det);
}

/* A unary call with raw request bytes; the response is freed. */
static int unary_raw(const char* path, const void* b, size_t n, char* det, size_t cap) {
  uint8_t* resp = NULL;
  size_t rl = 0;
  det[0] = 0;
  int st = px_rpc_unary(g_f.ch, path, b, n, CALL_MS, true, &resp, &rl, det, cap);
  free(resp);
  return st;
}

/* A varint tag of field 1 without its value: no message unpacks from it. */
static const uint8_t k_malformed[] = {0x08};

static int join_req(uint32_t rank, uint32_t world, const char* name,
                    Paramex__V1__JoinResponse** out, char* det, size_t cap) {
  Paramex__V1__JoinRequest req = PARAMEX__V1__JOIN_REQUEST__INIT;
  req.rank = rank;
  req.world_size = world;
  req.name = (char*)name;
  ProtobufCMessage* resp = NULL;
  int st = px_h_unary_pb(g_f.ch, PX_H_PATH_JOIN, &req.base,
                         &paramex__v1__join_response__descriptor, &resp, CALL_MS, det, cap);
  *out = (Paramex__V1__JoinResponse*)resp;
  return st;
}

static uint64_t rejected(void) { return atomic_load(&g_f.srv->ctr.rejected_calls); }

/* Gradient element i of rank at step: varied magnitudes, exactly representable. */
static float grad_at(uint32_t rank, uint64_t step, size_t i) {
  uint64_t x = (i + 1) * 2654435761u + rank * 40503u + step * 977u;
  float m = (float)(int)(x % 2001) - 1000.0f;
  return m * (rank ? 0.0078125f : 0.001953125f);
}


/* Pushes chunks [c0, c1) of rank's gradient g (numel elements) for step in one call;
 * returns the status, with the response's counts and the bytes sent on the wire. */
static int push_chunks(uint32_t rank, uint64_t inc, uint64_t step, uint32_t tid, const float* g,
                       size_t numel, uint32_t c0, uint32_t c1, uint32_t* acc, uint32_t* dup,
                       uint64_t* wire) {
  uint8_t heads[8][PX_CHUNK_HDR_MAX];
  px_h_msg m[8];
  size_t n = 0;
  uint64_t w = 0;
  for (uint32_t k = c0; k < c1 && n < 8; k++, n++) {
    size_t first = (size_t)k * CHUNK_ELEMS;
    size_t cnt = numel - first < CHUNK_ELEMS ? numel - first : CHUNK_ELEMS;
    m[n] = px_sf_push_chunk(heads[n], rank, inc, step, tid, k, g + first, cnt);
    w += m[n].head_len + m[n].body_len;
  }
  px_h_result r;
  int st = px_h_call(g_f.ch, PX_H_PATH_PUSH, m, n, CALL_MS, &r);
  if (st == PX_ST_OK) {
    assert_int_equal(r.nresp, 1);
    Paramex__V1__PushResponse* pr =
        paramex__v1__push_response__unpack(NULL, r.resp_len[0], r.resp[0]);
    assert_non_null(pr);
    if (acc) *acc = pr->accepted;
    if (dup) *dup = pr->duplicate;
    paramex__v1__push_response__free_unpacked(pr, NULL);
  } else if (acc || dup) {
    print_error("push: %s: %s\n", px_status_name(st), r.details);
  }
  if (wire) *wire = w;
  px_h_result_free(&r);
  return st;
}

static Paramex__V1__StatsResponse* stats(void) {
  char det[512];
  Paramex__V1__StatsResponse* s = px_h_stats(g_f.ch, det, sizeof det);
  if (!s) fail_msg("%s", det);
  return s;
}

/* ---- Join --------------------------------------------------------------------------------- */

static void test_join(void** state) {
  (void)state;
  const char* more[] = {"--worker-timeout", "7.5", NULL};
  px_server* s = start(more);
  char det[512];
  Paramex__V1__JoinResponse* r = NULL;

  expect_status(join_req(0, 2, "host-a:1", &r, det, sizeof det), det, PX_ST_OK, NULL);
  assert_int_equal(r->worker_id, 0);
  assert_int_equal(r->world_size, 2);
  assert_string_equal(r->server_id, s->server_id);
  assert_int_equal(r->lease_ms, 7500);
  const uint64_t inc0 = r->incarnation;
  assert_true(inc0 != 0);
  assert_true(atomic_load(&s->members.w[0].incarnation) == inc0);
  assert_true(atomic_load(&s->members.w[1].incarnation) == 0);
  char name[64];
  px_members_name(&s->members, 0, name, sizeof name);
  assert_string_equal(name, "host-a:1");
  protobuf_c_message_free_unpacked(&r->base, NULL);

  /* rank 1, then rank 0 again (a restarted worker): new, increasing incarnations */
  expect_status(join_req(1, 2, "host-b:2", &r, det, sizeof det), det, PX_ST_OK, NULL);
  const uint64_t inc1 = r->incarnation;
  assert_int_equal(r->worker_id, 1);
  assert_true(inc1 > inc0);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  expect_status(join_req(0, 2, "host-a:3", &r, det, sizeof det), det, PX_ST_OK, NULL);
  const uint64_t inc0b = r->incarnation;
  assert_true(inc0b > inc1);
  assert_string_equal(r->server_id, s->server_id);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  assert_true(atomic_load(&s->members.w[0].incarnation) == inc0b);
  assert_true(atomic_load(&s->members.w[1].incarnation) == inc1);
  px_members_name(&s->members, 0, name, sizeof name);
  assert_string_equal(name, "host-a:3");
  assert_int_equal(rejected(), 0);

  /* refusals, each counted, none joining anybody */
  expect_status(join_req(0, 3, "x", &r, det, sizeof det), det, PX_ST_FAILED_PRECONDITION,
                "world_size 3 does not match the server's --workers 2");
  assert_null(r);
  /* the world is checked before the rank */
  expect_status(join_req(5, 3, "x", &r, det, sizeof det), det, PX_ST_FAILED_PRECONDITION,
                "world_size 3 does not match the server's --workers 2");
  expect_status(join_req(0, 1, "x", &r, det, sizeof det), det, PX_ST_FAILED_PRECONDITION,
                "world_size 1 does not match the server's --workers 2");
  expect_status(join_req(2, 2, "x", &r, det, sizeof det), det, PX_ST_INVALID_ARGUMENT,
                "rank 2 is not below world_size 2");
  expect_status(join_req(4000000000u, 2, "x", &r, det, sizeof det), det, PX_ST_INVALID_ARGUMENT,
                "rank 4000000000 is not below world_size 2");
  expect_status(unary_raw(PX_H_PATH_JOIN, k_malformed, sizeof k_malformed, det, sizeof det), det,
                PX_ST_INVALID_ARGUMENT, "malformed JoinRequest");
  assert_int_equal(rejected(), 6);
  assert_true(atomic_load(&s->members.w[0].incarnation) == inc0b);
  assert_true(atomic_load(&s->members.w[1].incarnation) == inc1);
  px_members_name(&s->members, 0, name, sizeof name);
  assert_string_equal(name, "host-a:3");

  /* an empty request is a valid one: rank 0 of world 0, which does not match */
  expect_status(unary_raw(PX_H_PATH_JOIN, "", 0, det, sizeof det), det, PX_ST_FAILED_PRECONDITION,
                "world_size 0 does not match the server's --workers 2");
  assert_int_equal(rejected(), 7);
}

static void test_join_lease(void** state) {
  (void)state;
  const struct {
    const char* flag; /* NULL: the default */
    uint32_t lease_ms;
  } cases[] = {{NULL, 30000}, {"0", 0}, {"0.25", 250}, {"86400", 86400000u}};
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    const char* more[] = {"--worker-timeout", cases[k].flag, NULL};
    px_server* s = start(cases[k].flag ? more : NULL);
    char det[512];
    Paramex__V1__JoinResponse* r = NULL;
    expect_status(join_req(1, 2, "w", &r, det, sizeof det), det, PX_ST_OK, NULL);
    assert_int_equal(r->lease_ms, cases[k].lease_ms);
    assert_string_equal(r->server_id, s->server_id);
    assert_true(strlen(r->server_id) > 0);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    assert_int_equal(px_sf_stop(&g_f), 0);
  }
}

/* A Join from another host cannot take over a rank whose worker is alive (a second job
 * with the same ranks would kill this one); one from the same host can (a restarted
 * worker), and anyone can once the holder left or its lease ran out. */
static void test_join_fence(void** state) {
  (void)state;
  px_server* s = start(NULL); /* --worker-timeout 30 */
  char det[512];
  Paramex__V1__JoinResponse* r = NULL;
  expect_status(join_req(0, 2, "host-a:1", &r, det, sizeof det), det, PX_ST_OK, NULL);
  const uint64_t inc = r->incarnation;
  protobuf_c_message_free_unpacked(&r->base, NULL);
  assert_int_equal(join_req(0, 2, "host-b:9", &r, det, sizeof det), PX_ST_UNAVAILABLE);
  assert_null(r);
  const char* want = "rank 0 is held by a live worker 'host-a:1' (last call ";
  if (strncmp(det, want, strlen(want)) != 0) fail_msg("'%s'", det);
  assert_non_null(strstr(det, "a Join from another host ('host-b:9') takes it over only when "
                              "that lease runs out (--worker-timeout 30 s, in "));
  assert_int_equal(rejected(), 1);
  assert_true(atomic_load(&s->members.w[0].incarnation) == inc);
  char name[64];
  px_members_name(&s->members, 0, name, sizeof name);
  assert_string_equal(name, "host-a:1");
  /* a name without ':' is all host: "host-a" is the host of "host-a:1" */
  expect_status(join_req(0, 2, "host-a", &r, det, sizeof det), det, PX_ST_OK, NULL);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  assert_int_equal(join_req(0, 2, "host-ab:1", &r, det, sizeof det), PX_ST_UNAVAILABLE);
  /* the same host takes over at once: a restarted worker */
  expect_status(join_req(0, 2, "host-a:2", &r, det, sizeof det), det, PX_ST_OK, NULL);
  const uint64_t inc2 = r->incarnation;
  assert_true(inc2 > inc);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  /* after a Leave, anyone */
  assert_true(px_members_leave(&s->members, 0));
  expect_status(join_req(0, 2, "host-b:9", &r, det, sizeof det), det, PX_ST_OK, NULL);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  px_members_name(&s->members, 0, name, sizeof name);
  assert_string_equal(name, "host-b:9");
  assert_int_equal(rejected(), 2);
  assert_int_equal(px_sf_stop(&g_f), 0);

  /* once the lease ran out, anyone (waited for: the lease is 0.3 s) */
  const char* shorter[] = {"--worker-timeout", "0.3", NULL};
  s = start(shorter);
  expect_status(join_req(1, 2, "host-a:1", &r, det, sizeof det), det, PX_ST_OK, NULL);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  int st = PX_ST_UNAVAILABLE;
  for (int64_t t0 = px_h_now_ms(); st == PX_ST_UNAVAILABLE && px_h_now_ms() - t0 < 20000;) {
    st = join_req(1, 2, "host-b:2", &r, det, sizeof det);
    if (st == PX_ST_UNAVAILABLE) assert_non_null(strstr(det, "held by a live worker"));
    if (st == PX_ST_UNAVAILABLE) usleep(20000);
  }
  expect_status(st, det, PX_ST_OK, NULL);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  px_members_name(&s->members, 1, name, sizeof name);
  assert_string_equal(name, "host-b:2");
  assert_int_equal(px_sf_stop(&g_f), 0);

  /* without a lease (--worker-timeout 0) nothing tells a live holder from a dead one */
  const char* none[] = {"--worker-timeout", "0", NULL};
  s = start(none);
  expect_status(join_req(1, 2, "host-a:1", &r, det, sizeof det), det, PX_ST_OK, NULL);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  expect_status(join_req(1, 2, "host-b:1", &r, det, sizeof det), det, PX_ST_OK, NULL);
  protobuf_c_message_free_unpacked(&r->base, NULL);
}

/* ---- Declare ------------------------------------------------------------------------------ */

static int declare_req(Paramex__V1__DeclareRequest* req, Paramex__V1__DeclareResponse** out,
                       char* det, size_t cap) {
  ProtobufCMessage* resp = NULL;
  int st = px_h_unary_pb(g_f.ch, PX_H_PATH_DECLARE, &req->base,
                         &paramex__v1__declare_response__descriptor, &resp, CALL_MS, det, cap);
  *out = (Paramex__V1__DeclareResponse*)resp;
  return st;
}

static void test_declare_created_and_conflicts(void** state) {
  (void)state;
  px_server* s = start(NULL);
  char det[512];
  Paramex__V1__DeclareRequest req = PARAMEX__V1__DECLARE_REQUEST__INIT;
  /* without an identity nothing is created */
  uint64_t shape0[1] = {N_W};
  req.name = "w";
  req.dtype = PARAMEX__V1__DTYPE__DTYPE_F32;
  req.n_shape = 1;
  req.shape = shape0;
  Paramex__V1__DeclareResponse* r0 = NULL;
  expect_status(declare_req(&req, &r0, det, sizeof det), det, PX_ST_FAILED_PRECONDITION,
                "tensor 'w' does not exist, and only a joined worker creates tensors: call Join "
                "first");
  req.worker_id = 3;
  expect_status(declare_req(&req, &r0, det, sizeof det), det, PX_ST_INVALID_ARGUMENT,
                "worker_id 3 is not below --workers 2");
  req.incarnation = 5;
  req.worker_id = 0;
  expect_status(declare_req(&req, &r0, det, sizeof det), det, PX_ST_FAILED_PRECONDITION,
                "worker 0 has not joined");
  assert_int_equal(px_store_count(&s->store), 0);
  req.incarnation = px_sf_join(&g_f, 0, 2);
  Paramex__V1__Initializer ini = PARAMEX__V1__INITIALIZER__INIT;
  uint64_t shape[2] = {N_W, 0};
  req.name = "w";
  req.dtype = PARAMEX__V1__DTYPE__DTYPE_F32;
  req.n_shape = 1;
  req.shape = shape;
  ini.kind = PARAMEX__V1__INITIALIZER__KIND__KIND_UNIFORM;
  ini.a = -1.0f;
  ini.b = 1.0f;
  ini.seed = 77;
  req.initializer = &ini;
  Paramex__V1__DeclareResponse* r = NULL;
  expect_status(declare_req(&req, &r, det, sizeof det), det, PX_ST_OK, NULL);
  assert_true(r->created);
  assert_int_equal(r->tensor_id, 0);
  assert_int_equal(r->version, 0);
  assert_int_equal(r->chunk_elems, CHUNK_ELEMS);
  assert_int_equal(r->num_chunks, 3);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  assert_int_equal(px_store_count(&s->store), 1);
  px_tensor_state* t = px_store_tensor(&s->store, 0);
  assert_non_null(t);
  assert_string_equal(t->name, "w");
  float* want = malloc(N_W * sizeof *want);
  assert_non_null(want);
  assert_int_equal(px_init_fill_f32(want, 0, N_W, PX_FILL_UNIFORM, -1.0f, 1.0f, 77), 0);
  assert_memory_equal(t->params, want, N_W * sizeof *want);

  /* again (another initializer does not matter): the same tensor, not created */
  ini.seed = 78;
  expect_status(declare_req(&req, &r, det, sizeof det), det, PX_ST_OK, NULL);
  assert_false(r->created);
  assert_int_equal(r->tensor_id, 0);
  assert_int_equal(r->num_chunks, 3);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  assert_memory_equal(t->params, want, N_W * sizeof *want);

  /* conflicts name both declarations */
  shape[0] = N_W + 1;
  expect_status(declare_req(&req, &r, det, sizeof det), det, PX_ST_FAILED_PRECONDITION,
                "tensor 'w' exists as f32 [2500], not f32 [2501]");
  shape[0] = 50;
  shape[1] = 50;
  req.n_shape = 2;
  expect_status(declare_req(&req, &r, det, sizeof det), det, PX_ST_FAILED_PRECONDITION,
                "tensor 'w' exists as f32 [2500], not f32 [50,50]");
  shape[0] = N_W;
  req.n_shape = 1;
  req.dtype = PARAMEX__V1__DTYPE__DTYPE_BF16;
  expect_status(declare_req(&req, &r, det, sizeof det), det, PX_ST_FAILED_PRECONDITION,
                "tensor 'w' exists as f32 [2500], not bf16 [2500]");
  assert_null(r);
  /* bad requests */
  expect_status(unary_raw(PX_H_PATH_DECLARE, k_malformed, sizeof k_malformed, det, sizeof det),
                det, PX_ST_INVALID_ARGUMENT, "malformed DeclareRequest");
  req.dtype = 9;
  expect_status(declare_req(&req, &r, det, sizeof det), det, PX_ST_INVALID_ARGUMENT,
                "tensor 'w': unknown dtype 9 (want f32, bf16 or f16)");
  assert_int_equal(rejected(), 8); /* 3 without an identity, 5 conflicts */
  assert_int_equal(px_store_count(&s->store), 1);
  assert_memory_equal(t->params, want, N_W * sizeof *want);

  /* another name: the next id */
  req.name = "b";
  req.dtype = PARAMEX__V1__DTYPE__DTYPE_F16;
  shape[0] = 10;
  req.initializer = NULL;
  expect_status(declare_req(&req, &r, det, sizeof det), det, PX_ST_OK, NULL);
  assert_true(r->created);
  assert_int_equal(r->tensor_id, 1);
  assert_int_equal(r->num_chunks, 1);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  assert_int_equal(px_store_count(&s->store), 2);
  assert_int_equal(px_store_tensor(&s->store, 1)->dtype, PX_DT_F16);
  free(want);
}

static void declare_piece(const char* name, const float* v, uint64_t off, size_t n, uint32_t worker,
                          uint64_t inc, bool want_created) {
  Paramex__V1__DeclareRequest req = PARAMEX__V1__DECLARE_REQUEST__INIT;
  uint64_t shape[1] = {N_W};
  req.name = (char*)name;
  req.dtype = PARAMEX__V1__DTYPE__DTYPE_F32;
  req.n_shape = 1;
  req.shape = shape;
  req.values.data = (uint8_t*)(v + off);
  req.values.len = n * sizeof(float);
  req.values_offset = off;
  req.worker_id = worker;
  req.incarnation = inc;
  Paramex__V1__DeclareResponse* r = NULL;
  char det[512];
  expect_status(declare_req(&req, &r, det, sizeof det), det, PX_ST_OK, NULL);
  assert_int_equal(r->created, want_created);
  assert_int_equal(r->tensor_id, 0);
  assert_int_equal(r->version, 0);
  assert_int_equal(r->num_chunks, 3);
  protobuf_c_message_free_unpacked(&r->base, NULL);
}

/* The creator of a tensor dies half way through its upload of the initial values: a pull
 * of version 0 waiting for them fails at once, naming how far the upload got (it once
 * waited for its deadline with no explanation). */
static void test_declare_incomplete_creator_dead(void** state) {
  (void)state;
  const char* more[] = {"--worker-timeout", "5", NULL};
  px_server* s = start(more);
  const uint64_t inc = px_sf_join(&g_f, 1, 2);
  float* v = malloc(N_W * sizeof *v);
  assert_non_null(v);
  for (size_t i = 0; i < N_W; i++) v[i] = (float)i;
  declare_piece("half", v, 0, 1000, 1, inc, true);
  uint32_t ids[1] = {0};
  size_t rl = 0;
  uint8_t* rq = px_sf_pull_request(0, ids, 1, 0, &rl);
  px_h_msg m = {rq, rl, NULL, 0};
  px_h_async* a = px_h_async_start(g_f.ch, PX_H_PATH_PULL, &m, 1, CALL_MS);
  assert_non_null(a);
  px_tensor_state* t = px_store_tensor(&s->store, 0);
  park_arg pa = {s, &t->chunks[0], 1};
  assert_true(px_sf_wait_until(parked_enough, &pa, WAIT_MS));
  /* the lease runs out (a monitor round 6 s later) */
  px_monitor_tick(s, px_now_ms() + 6000);
  px_h_result res;
  px_h_async_join(a, &res);
  assert_int_equal(res.status, PX_ST_FAILED_PRECONDITION);
  assert_string_equal(res.details, "values of 'half' incomplete: 1000 of 2500 elements, and worker 1 "
                                   "that declares them is dead: it sends them again when it joins "
                                   "again");
  px_h_result_free(&res);
  free(rq);
  free(v);
}

static void test_declare_values_in_pieces_wake_pull(void** state) {
  (void)state;
  px_server* s = start(NULL);
  const uint64_t inc = px_sf_join(&g_f, 1, 2);
  float* v = malloc(N_W * sizeof *v);
  float* junk = malloc(N_W * sizeof *junk);
  assert_non_null(v);
  assert_non_null(junk);
  for (size_t i = 0; i < N_W; i++) {
    v[i] = (float)i * 0.25f - 300.0f;
    junk[i] = 99.0f;
  }
  declare_piece("v", v, 0, 1000, 1, inc, true);
  px_tensor_state* t = px_store_tensor(&s->store, 0);
  assert_non_null(t);
  for (uint32_t i = 0; i < 3; i++) assert_false(t->chunks[i].initialized);

  /* a pull for version 0 of the whole tensor parks on the first chunk without values */
  uint32_t ids[1] = {0};
  size_t rl = 0;
  uint8_t* rq = px_sf_pull_request(0, ids, 1, 0, &rl);
  px_h_msg m = {rq, rl, NULL, 0};
  px_h_async* a = px_h_async_start(g_f.ch, PX_H_PATH_PULL, &m, 1, CALL_MS);
  assert_non_null(a);
  park_arg pa = {s, &t->chunks[0], 1};
  assert_true(px_sf_wait_until(parked_enough, &pa, WAIT_MS));
  Paramex__V1__StatsResponse* st = stats(); /* the parked pull is a call in progress */
  assert_int_equal(st->active_calls, 1);
  protobuf_c_message_free_unpacked(&st->base, NULL);

  /* another worker's values are not the creator's upload: not taken, the pull stays */
  const uint64_t inc0 = px_sf_join(&g_f, 0, 2);
  declare_piece("v", junk, 1000, 1100, 0, inc0, false);
  assert_false(t->chunks[0].initialized);
  assert_int_equal(parked_on(s, &t->chunks[0]), 1);

  /* chunks 0 and 1 complete: the pull sends them and parks on chunk 2 */
  declare_piece("v", v, 1000, 1100, 1, inc, false);
  pa.c = &t->chunks[2];
  assert_true(px_sf_wait_until(parked_enough, &pa, WAIT_MS));
  assert_true(t->chunks[0].initialized);
  assert_true(t->chunks[1].initialized);
  assert_false(t->chunks[2].initialized);
  assert_int_equal(parked_on(s, &t->chunks[0]), 0);
  assert_int_equal(atomic_load(&s->ctr.pull_chunks), 2);

  /* the last piece answers it */
  declare_piece("v", v, 2100, N_W - 2100, 1, inc, false);
  px_h_result res;
  px_h_async_join(a, &res);
  if (res.status != PX_ST_OK) fail_msg("pull: %s: %s", px_status_name(res.status), res.details);
  assert_int_equal(res.nresp, 3);
  float* got = calloc(N_W, sizeof *got);
  assert_non_null(got);
  for (size_t k = 0; k < res.nresp; k++) {
    px_iov seg = {res.resp[k], res.resp_len[k]};
    px_chunk h;
    char err[256];
    if (px_chunk_parse(PX_CHUNK_PULL, &seg, 1, &h, err, sizeof err) != 0) fail_msg("%s", err);
    assert_int_equal(h.tensor_id, 0);
    assert_int_equal(h.chunk, k);
    assert_int_equal(h.version, 0);
    assert_int_equal(h.encoding, PX_ENC_RAW);
    size_t n = k < 2 ? CHUNK_ELEMS : N_W - 2 * CHUNK_ELEMS;
    assert_int_equal(px_chunk_decode(&h, &seg, 1, got + k * CHUNK_ELEMS, n, 4, err, sizeof err),
                     PX_DECODE_OK);
  }
  assert_memory_equal(got, v, N_W * sizeof *v);
  assert_memory_equal(t->params, v, N_W * sizeof *v);
  px_h_result_free(&res);
  assert_true(px_sf_wait_until(px_sf_no_active_calls, s, WAIT_MS));
  assert_int_equal(rejected(), 0);
  free(got);
  free(rq);
  free(v);
  free(junk);
}

/* ---- Stats -------------------------------------------------------------------------------- */

static void test_stats_after_pushes(void** state) {
  (void)state;
  px_server* s = start(NULL);
  Paramex__V1__StatsResponse* st = stats();
  assert_string_equal(st->server_id, s->server_id);
  assert_int_equal(st->workers_expected, 2);
  assert_int_equal(st->workers_joined, 0);
  assert_int_equal(st->n_workers, 0);
  assert_int_equal(st->n_tensors, 0);
  assert_int_equal(st->version_min, 0);
  assert_int_equal(st->version_max, 0);
  assert_int_equal(st->push_chunks + st->pull_chunks + st->steps_completed + st->rejected_calls, 0);
  assert_int_equal(st->active_calls, 0);
  assert_false(st->elastic);
  protobuf_c_message_free_unpacked(&st->base, NULL);

  uint64_t inc[2];
  inc[0] = px_sf_join(&g_f, 0, 2);
  inc[1] = px_sf_join(&g_f, 1, 2);
  const uint32_t tw = px_sf_declare_f32(&g_f, "w", N_W, 5);
  const uint32_t tu = px_sf_declare_f32(&g_f, "u", 100, 6);
  float* g[2];
  float* p0 = malloc(N_W * sizeof *p0);
  float* want = malloc(N_W * sizeof *want);
  assert_non_null(p0);
  assert_non_null(want);
  for (int r = 0; r < 2; r++) {
    g[r] = malloc(N_W * sizeof(float));
    assert_non_null(g[r]);
    for (size_t i = 0; i < N_W; i++) g[r][i] = grad_at((uint32_t)r, 0, i);
  }
  px_tensor_state* t = px_store_tensor(&s->store, tw);
  px_sf_copy_params(t, p0);
  for (size_t i = 0; i < N_W; i++) want[i] = p0[i] - LR * ((g[0][i] + g[1][i]) / 2.0f);

  uint32_t acc = 0, dup = 0;
  uint64_t wire0 = 0, wire1 = 0, w;
  assert_int_equal(push_chunks(0, inc[0], 0, tw, g[0], N_W, 0, 3, &acc, &dup, &wire0), PX_ST_OK);
  assert_int_equal(acc, 3);
  assert_int_equal(push_chunks(1, inc[1], 0, tw, g[1], N_W, 0, 3, &acc, &dup, &wire1), PX_ST_OK);
  assert_int_equal(acc, 3);
  /* a retried push (duplicate) and a refused one (unknown tensor) */
  assert_int_equal(push_chunks(0, inc[0], 0, tw, g[0], N_W, 1, 2, &acc, &dup, &w), PX_ST_OK);
  assert_int_equal(dup, 1);
  assert_int_equal(push_chunks(0, inc[0], 0, 7, g[0], N_W, 0, 1, NULL, NULL, NULL),
                   PX_ST_NOT_FOUND);
  /* one pull of "w" */
  uint32_t ids[1] = {tw};
  size_t rl;
  uint8_t* rq = px_sf_pull_request(0, ids, 1, 1, &rl);
  px_h_msg pm = {rq, rl, NULL, 0};
  px_h_result pr;
  assert_int_equal(px_h_call(g_f.ch, PX_H_PATH_PULL, &pm, 1, CALL_MS, &pr), PX_ST_OK);
  assert_int_equal(pr.nresp, 3);
  uint64_t pull_wire = 0;
  for (size_t k = 0; k < pr.nresp; k++) pull_wire += pr.resp_len[k];
  px_h_result_free(&pr);
  free(rq);

  st = stats();
  assert_string_equal(st->server_id, s->server_id);
  assert_int_equal(st->workers_expected, 2);
  assert_int_equal(st->workers_joined, 2);
  assert_int_equal(st->workers_alive, 2);
  assert_int_equal(st->push_chunks, 6);
  assert_int_equal(st->push_duplicates, 1);
  assert_int_equal(st->push_raw_bytes, 2 * N_W * 4);
  assert_int_equal(st->push_wire_bytes, wire0 + wire1);
  assert_int_equal(st->steps_completed, 3);
  assert_int_equal(st->rejected_calls, 1);
  assert_int_equal(st->pull_chunks, 3);
  assert_int_equal(st->pull_raw_bytes, N_W * 4);
  assert_int_equal(st->pull_wire_bytes, pull_wire);
  assert_int_equal(st->pull_snapshot, 3);
  assert_int_equal(st->pull_unchanged, 0);
  assert_int_equal(st->pull_delta, 0);
  assert_int_equal(st->version_min, 0); /* "u" never stepped */
  assert_int_equal(st->version_max, 1);
  assert_int_equal(st->history_budget, 1ull << 30);
  assert_int_equal(st->checkpoints_written, 0);
  assert_int_equal(st->n_tensors, 2);
  const Paramex__V1__TensorStats* rw = px_h_stats_tensor(st, "w");
  const Paramex__V1__TensorStats* ru = px_h_stats_tensor(st, "u");
  assert_non_null(rw);
  assert_non_null(ru);
  assert_int_equal(rw->id, tw);
  assert_int_equal(rw->dtype, PARAMEX__V1__DTYPE__DTYPE_F32);
  assert_int_equal(rw->n_shape, 1);
  assert_int_equal(rw->shape[0], N_W);
  assert_int_equal(rw->version_min, 1);
  assert_int_equal(rw->version_max, 1);
  assert_int_equal(rw->bytes, N_W * 4);
  assert_int_equal(rw->num_chunks, 3);
  assert_int_equal(rw->push_raw_bytes, 2 * N_W * 4);
  assert_int_equal(rw->push_wire_bytes, wire0 + wire1);
  assert_int_equal(rw->pull_raw_bytes, N_W * 4);
  assert_int_equal(rw->pull_wire_bytes, pull_wire);
  /* the parameters are the SGD step, and the checksum is the xxh64 of their bytes */
  float* cur = malloc(N_W * sizeof *cur);
  assert_non_null(cur);
  px_sf_copy_params(t, cur);
  assert_memory_equal(cur, want, N_W * sizeof *want);
  assert_true(rw->checksum == it_stats_checksum(want, N_W * 4));
  assert_int_equal(ru->id, tu);
  assert_int_equal(ru->version_min, 0);
  assert_int_equal(ru->version_max, 0);
  assert_int_equal(ru->num_chunks, 1);
  assert_int_equal(ru->push_raw_bytes, 0);
  float uinit[100];
  assert_int_equal(px_init_fill_f32(uinit, 0, 100, PX_FILL_NORMAL, 0.0f, 0.02f, 6), 0);
  assert_true(ru->checksum == XXH64(uinit, sizeof uinit, 0));
  assert_int_equal(st->n_workers, 2);
  for (size_t k = 0; k < 2; k++) {
    const Paramex__V1__WorkerStats* ws = st->workers[k];
    assert_int_equal(ws->rank, k);
    assert_true(ws->incarnation == inc[k]);
    assert_string_equal(ws->name, "fixture");
    assert_int_equal(ws->chunks_pushed, 3);
    assert_true(ws->alive);
    assert_true(ws->last_seen_ms < 3600000);
  }
  protobuf_c_message_free_unpacked(&st->base, NULL);

  /* chunk 0 one step ahead: versions 1..2 and no checksum (not at one version) */
  assert_int_equal(push_chunks(0, inc[0], 1, tw, g[1], N_W, 0, 1, &acc, &dup, NULL), PX_ST_OK);
  assert_int_equal(push_chunks(1, inc[1], 1, tw, g[0], N_W, 0, 1, &acc, &dup, NULL), PX_ST_OK);
  st = stats();
  rw = px_h_stats_tensor(st, "w");
  assert_non_null(rw);
  assert_int_equal(rw->version_min, 1);
  assert_int_equal(rw->version_max, 2);
  assert_true(rw->checksum == 0);
  assert_int_equal(st->version_min, 0);
  assert_int_equal(st->version_max, 2);
  assert_int_equal(st->steps_completed, 4);
  assert_int_equal(st->push_chunks, 8);
  assert_int_equal(st->workers[0]->chunks_pushed, 4);
  assert_int_equal(st->workers[1]->chunks_pushed, 4);
  protobuf_c_message_free_unpacked(&st->base, NULL);

  /* a malformed StatsRequest */
  char det[512];
  expect_status(unary_raw(PX_H_PATH_STATS, k_malformed, sizeof k_malformed, det, sizeof det), det,
                PX_ST_INVALID_ARGUMENT, "malformed StatsRequest");
  assert_int_equal(rejected(), 2);
  for (int r = 0; r < 2; r++) free(g[r]);
  free(p0);
  free(want);
  free(cur);
}

/* ---- Checkpoint --------------------------------------------------------------------------- */

#define PATH_CKPT "/paramex.v1.ParameterExchange/Checkpoint"
#define PATH_HEARTBEAT "/paramex.v1.ParameterExchange/Heartbeat"

static int checkpoint_req(Paramex__V1__CheckpointResponse** out, char* det, size_t cap) {
  Paramex__V1__CheckpointRequest req = PARAMEX__V1__CHECKPOINT_REQUEST__INIT;
  ProtobufCMessage* resp = NULL;
  int st = px_h_unary_pb(g_f.ch, PATH_CKPT, &req.base,
                         &paramex__v1__checkpoint_response__descriptor, &resp, CALL_MS, det, cap);
  *out = (Paramex__V1__CheckpointResponse*)resp;
  return st;
}

static void test_checkpoint_without_dir(void** state) {
  (void)state;
  start(NULL);
  px_sf_declare_f32(&g_f, "w", N_W, 1);
  char det[512];
  Paramex__V1__CheckpointResponse* r = NULL;
  expect_status(checkpoint_req(&r, det, sizeof det), det, PX_ST_FAILED_PRECONDITION,
                "the server runs without --checkpoint-dir");
  assert_null(r);
  expect_status(unary_raw(PATH_CKPT, k_malformed, sizeof k_malformed, det, sizeof det), det,
                PX_ST_INVALID_ARGUMENT, "malformed CheckpointRequest");
  assert_int_equal(rejected(), 2);
  Paramex__V1__StatsResponse* st = stats();
  assert_int_equal(st->checkpoints_written, 0);
  assert_int_equal(st->checkpoint_failures, 0);
  protobuf_c_message_free_unpacked(&st->base, NULL);
}

#define PATH_RECOVER "/paramex.v1.ParameterExchange/Recover"

static int recover_req(uint64_t gen, uint64_t version, Paramex__V1__RecoverResponse** out,
                       char* det, size_t cap) {
  Paramex__V1__RecoverRequest req = PARAMEX__V1__RECOVER_REQUEST__INIT;
  req.generation = gen;
  req.version = version;
  ProtobufCMessage* resp = NULL;
  int st = px_h_unary_pb(g_f.ch, PATH_RECOVER, &req.base,
                         &paramex__v1__recover_response__descriptor, &resp, CALL_MS, det, cap);
  *out = (Paramex__V1__RecoverResponse*)resp;
  return st;
}

/* Recover on one server without checkpoints (the restart itself is integration's):
 * taken in place at its version, the same generation answered, older ones ABORTED, a
 * version ahead UNAVAILABLE (a fresh server: ABORTED), and bad requests
 * INVALID_ARGUMENT; Stats shows the generation. */
static void test_recover(void** state) {
  (void)state;
  start(NULL);
  uint64_t inc[2];
  inc[0] = px_sf_join(&g_f, 0, 2);
  inc[1] = px_sf_join(&g_f, 1, 2);
  const uint32_t tw = px_sf_declare_f32(&g_f, "w", N_W, 1);
  char det[512];
  Paramex__V1__StatsResponse* st = stats();
  assert_true(st->fresh && st->generation == 0 && st->generation_version == 0);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  Paramex__V1__RecoverResponse* r = NULL;
  expect_status(recover_req(1, 3, &r, det, sizeof det), det, PX_ST_ABORTED,
                "shard 0 of 1: this shard restarted at version 0, below 3: it cannot go forward by itself");
  expect_status(recover_req(1, 0, &r, det, sizeof det), det, PX_ST_OK, "");
  assert_true(r->generation == 1 && r->version == 0 && !r->restarting);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  expect_status(recover_req(1, 7, &r, det, sizeof det), det, PX_ST_OK, ""); /* generation 1's */
  assert_true(r->generation == 1 && r->version == 0);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  st = stats();
  assert_true(!st->fresh && st->generation == 1 && st->generation_version == 0);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  expect_status(recover_req(2, 5, &r, det, sizeof det), det, PX_ST_UNAVAILABLE,
                "shard 0 of 1: this shard is at version 0, behind 5: pushes in flight have not "
                "all landed");
  /* a step: the generation's version is behind it now (going back restarts the process,
   * as integration_shard_recovery tests; without a checkpoint a version above 0 cannot) */
  float* g = calloc(N_W, sizeof *g);
  assert_non_null(g);
  for (uint32_t k = 0; k < 2; k++)
    assert_int_equal(push_chunks(k, inc[k], 0, tw, g, N_W, 0, 3, NULL, NULL, NULL), PX_ST_OK);
  free(g);
  for (int i = 0; i < 2000; i++) { /* the step completes as the last push lands */
    st = stats();
    bool done = st->version_min == 1;
    protobuf_c_message_free_unpacked(&st->base, NULL);
    if (done) break;
    poll(NULL, 0, 5);
  }
  expect_status(recover_req(2, 2, &r, det, sizeof det), det, PX_ST_UNAVAILABLE,
                "shard 0 of 1: this shard is at version 1, behind 2: pushes in flight have not "
                "all landed");
  expect_status(recover_req(0, 0, &r, det, sizeof det), det, PX_ST_INVALID_ARGUMENT,
                "RecoverRequest: generation 0 is none");
  expect_status(unary_raw(PATH_RECOVER, k_malformed, sizeof k_malformed, det, sizeof det), det,
                PX_ST_INVALID_ARGUMENT, "malformed RecoverRequest");
  st = stats();
  assert_true(st->generation == 1 && st->version_min == 1);
  protobuf_c_message_free_unpacked(&st->base, NULL);
}

static void test_checkpoint_with_dir(void** state) {
  (void)state;
  assert_int_equal(px_h_mkdtemp(g_dir, sizeof g_dir), 0);
  const char* more[] = {"--checkpoint-dir", g_dir, NULL};
  px_server* s = start(more);
  char det[512];
  Paramex__V1__CheckpointResponse* r = NULL;
  expect_status(checkpoint_req(&r, det, sizeof det), det, PX_ST_FAILED_PRECONDITION,
                "no tensor declared yet: nothing to checkpoint");
  assert_int_equal(rejected(), 1);

  uint64_t inc[2] = {px_sf_join(&g_f, 0, 2), px_sf_join(&g_f, 1, 2)};
  const uint32_t tw = px_sf_declare_f32(&g_f, "w", N_W, 2);
  float* g = malloc(N_W * sizeof *g);
  assert_non_null(g);
  for (size_t i = 0; i < N_W; i++) g[i] = grad_at(0, 0, i);
  uint32_t acc;
  for (uint32_t k = 0; k < 2; k++)
    assert_int_equal(push_chunks(k, inc[k], 0, tw, g, N_W, 0, 3, &acc, NULL, NULL), PX_ST_OK);

  expect_status(checkpoint_req(&r, det, sizeof det), det, PX_ST_OK, NULL);
  assert_non_null(r);
  char want_path[700];
  snprintf(want_path, sizeof want_path, "%s/ckpt-00000000000000000001.safetensors", g_dir);
  assert_int_equal(r->version, 1);
  assert_string_equal(r->path, want_path);
  assert_int_equal(r->bytes, N_W * 4); /* the tensor data it holds */
  struct stat sb;
  assert_int_equal(stat(want_path, &sb), 0);
  assert_true(S_ISREG(sb.st_mode));
  assert_true((uint64_t)sb.st_size > r->bytes);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  /* one tensor without momentum: the file ends with its parameters at version 1 */
  float* cur = malloc(N_W * sizeof *cur);
  assert_non_null(cur);
  px_sf_copy_params(px_store_tensor(&s->store, tw), cur);
  size_t flen = 0;
  uint8_t* file = px_h_read_file(want_path, &flen);
  assert_non_null(file);
  assert_int_equal(flen, (size_t)sb.st_size);
  assert_memory_equal(file + flen - N_W * 4, cur, N_W * 4);
  free(file);
  free(cur);
  assert_int_equal(rejected(), 1);

  Paramex__V1__StatsResponse* st = stats();
  assert_int_equal(st->checkpoints_written, 1);
  assert_int_equal(st->checkpoint_failures, 0);
  assert_int_equal(st->checkpoint_version, 1);
  assert_string_equal(st->checkpoint_path, want_path);
  assert_int_equal(st->restored_version, 0);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  free(g);
}

/* ---- Heartbeat ---------------------------------------------------------------------------- */

static int heartbeat(uint32_t rank, uint64_t inc, char* det, size_t cap) {
  Paramex__V1__HeartbeatRequest req = PARAMEX__V1__HEARTBEAT_REQUEST__INIT;
  req.worker_id = rank;
  req.incarnation = inc;
  ProtobufCMessage* resp = NULL;
  int st = px_h_unary_pb(g_f.ch, PATH_HEARTBEAT, &req.base,
                         &paramex__v1__heartbeat_response__descriptor, &resp, CALL_MS, det, cap);
  if (resp) protobuf_c_message_free_unpacked(resp, NULL);
  return st;
}

static void test_heartbeat(void** state) {
  (void)state;
  px_server* s = start(NULL);
  char det[512], want[256];
  const uint64_t inc = px_sf_join(&g_f, 0, 2);

  /* a heartbeat renews the lease and brings a worker marked dead back */
  atomic_store(&s->members.w[0].last_seen_ms, 1);
  atomic_store(&s->members.w[0].dead, 1);
  expect_status(heartbeat(0, inc, det, sizeof det), det, PX_ST_OK, NULL);
  assert_true(atomic_load(&s->members.w[0].last_seen_ms) > 1);
  assert_int_equal(atomic_load(&s->members.w[0].dead), 0);
  assert_int_equal(rejected(), 0);

  /* refusals leave the lease alone */
  atomic_store(&s->members.w[0].last_seen_ms, 1);
  const uint64_t inc2 = px_sf_join(&g_f, 0, 2);
  atomic_store(&s->members.w[0].last_seen_ms, 1);
  snprintf(want, sizeof want,
           "worker 0: incarnation %" PRIu64 " is stale (current %" PRIu64 "): it rejoined", inc,
           inc2);
  expect_status(heartbeat(0, inc, det, sizeof det), det, PX_ST_FAILED_PRECONDITION, want);
  snprintf(want, sizeof want,
           "worker 0: incarnation %" PRIu64 " is stale (current %" PRIu64 "): it rejoined",
           inc2 + 1, inc2);
  expect_status(heartbeat(0, inc2 + 1, det, sizeof det), det, PX_ST_FAILED_PRECONDITION, want);
  expect_status(heartbeat(0, 0, det, sizeof det), det, PX_ST_FAILED_PRECONDITION,
                "worker 0: the call carries no incarnation (its client never joined): call "
                "Join first");
  expect_status(heartbeat(1, inc2, det, sizeof det), det, PX_ST_FAILED_PRECONDITION,
                "worker 1 has not joined");
  expect_status(heartbeat(2, inc2, det, sizeof det), det, PX_ST_INVALID_ARGUMENT,
                "worker_id 2 is not below --workers 2");
  expect_status(heartbeat(4000000000u, inc2, det, sizeof det), det, PX_ST_INVALID_ARGUMENT,
                "worker_id 4000000000 is not below --workers 2");
  expect_status(unary_raw(PATH_HEARTBEAT, k_malformed, sizeof k_malformed, det, sizeof det), det,
                PX_ST_INVALID_ARGUMENT, "malformed HeartbeatRequest");
  assert_int_equal(rejected(), 7);
  assert_int_equal(atomic_load(&s->members.w[0].last_seen_ms), 1);
  assert_true(atomic_load(&s->members.w[0].incarnation) == inc2);
  assert_true(atomic_load(&s->members.w[1].incarnation) == 0);

  expect_status(heartbeat(0, inc2, det, sizeof det), det, PX_ST_OK, NULL);
  assert_true(atomic_load(&s->members.w[0].last_seen_ms) > 1);
  assert_int_equal(rejected(), 7);
}

/* ---- Leave -------------------------------------------------------------------------------- */

#define PATH_LEAVE "/paramex.v1.ParameterExchange/Leave"

static int leave(uint32_t rank, uint64_t inc, char* det, size_t cap) {
  Paramex__V1__LeaveRequest req = PARAMEX__V1__LEAVE_REQUEST__INIT;
  req.worker_id = rank;
  req.incarnation = inc;
  ProtobufCMessage* resp = NULL;
  int st = px_h_unary_pb(g_f.ch, PATH_LEAVE, &req.base, &paramex__v1__leave_response__descriptor,
                         &resp, CALL_MS, det, cap);
  if (resp) protobuf_c_message_free_unpacked(resp, NULL);
  return st;
}

/* A Leave marks the worker left; the same Leave again (a retry after a lost answer) is OK
 * and changes nothing; other incarnations and unjoined ranks are refused; a heartbeat of
 * the rank that left names the Leave. */
static void test_leave(void** state) {
  (void)state;
  px_server* s = start(NULL);
  char det[512], want[256];
  const uint64_t inc = px_sf_join(&g_f, 0, 2);
  expect_status(leave(1, inc, det, sizeof det), det, PX_ST_FAILED_PRECONDITION,
                "worker 1 has not joined");
  snprintf(want, sizeof want,
           "worker 0: incarnation %" PRIu64 " is stale (current %" PRIu64 "): it rejoined",
           inc + 1, inc);
  expect_status(leave(0, inc + 1, det, sizeof det), det, PX_ST_FAILED_PRECONDITION, want);
  assert_false(px_members_left(&s->members, 0));
  expect_status(leave(0, inc, det, sizeof det), det, PX_ST_OK, NULL);
  assert_true(px_members_left(&s->members, 0));
  expect_status(leave(0, inc, det, sizeof det), det, PX_ST_OK, NULL);
  assert_true(px_members_left(&s->members, 0));
  expect_status(leave(0, inc + 1, det, sizeof det), det, PX_ST_FAILED_PRECONDITION, want);
  expect_status(heartbeat(0, inc, det, sizeof det), det, PX_ST_FAILED_PRECONDITION,
                "worker 0 left (Leave): join again to take part");
  assert_int_equal(rejected(), 4);
}

/* ---- Health ------------------------------------------------------------------------------- */

static int health(const char* service, int* serving, char* det, size_t cap) {
  Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  req.service = (char*)service;
  ProtobufCMessage* resp = NULL;
  int st = px_h_unary_pb(g_f.ch, PX_H_PATH_HEALTH, &req.base,
                         &grpc__health__v1__health_check_response__descriptor, &resp, CALL_MS,
                         det, cap);
  *serving = -1;
  if (resp) {
    *serving = (int)((Grpc__Health__V1__HealthCheckResponse*)resp)->status;
    protobuf_c_message_free_unpacked(resp, NULL);
  }
  return st;
}

static void test_health(void** state) {
  (void)state;
  px_server* s = start(NULL);
  char det[512];
  int sv;
  const int SERVING = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
  const int NOT_SERVING = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
  expect_status(health("", &sv, det, sizeof det), det, PX_ST_OK, NULL);
  assert_int_equal(sv, SERVING);
  expect_status(health("paramex.v1.ParameterExchange", &sv, det, sizeof det), det, PX_ST_OK, NULL);
  assert_int_equal(sv, SERVING);
  expect_status(health("paramex.v1.Other", &sv, det, sizeof det), det, PX_ST_NOT_FOUND,
                "unknown service 'paramex.v1.Other'");
  expect_status(health("paramex.v1.ParameterExchangeX", &sv, det, sizeof det), det,
                PX_ST_NOT_FOUND, "unknown service 'paramex.v1.ParameterExchangeX'");
  expect_status(unary_raw(PX_H_PATH_HEALTH, k_malformed, sizeof k_malformed, det, sizeof det), det,
                PX_ST_INVALID_ARGUMENT, "malformed HealthCheckRequest");
  assert_int_equal(rejected(), 3);

  /* the drain has begun (what px_service_stop does first): NOT_SERVING, for both names */
  px_waiters_drain(&s->waiters);
  expect_status(health("", &sv, det, sizeof det), det, PX_ST_OK, NULL);
  assert_int_equal(sv, NOT_SERVING);
  expect_status(health("paramex.v1.ParameterExchange", &sv, det, sizeof det), det, PX_ST_OK, NULL);
  assert_int_equal(sv, NOT_SERVING);
  expect_status(health("x", &sv, det, sizeof det), det, PX_ST_NOT_FOUND, "unknown service 'x'");
  assert_int_equal(rejected(), 4);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_join, teardown),
      cmocka_unit_test_teardown(test_join_fence, teardown),
      cmocka_unit_test_teardown(test_join_lease, teardown),
      cmocka_unit_test_teardown(test_declare_created_and_conflicts, teardown),
      cmocka_unit_test_teardown(test_declare_values_in_pieces_wake_pull, teardown),
      cmocka_unit_test_teardown(test_declare_incomplete_creator_dead, teardown),
      cmocka_unit_test_teardown(test_stats_after_pushes, teardown),
      cmocka_unit_test_teardown(test_checkpoint_without_dir, teardown),
      cmocka_unit_test_teardown(test_checkpoint_with_dir, teardown),
      cmocka_unit_test_teardown(test_heartbeat, teardown),
      cmocka_unit_test_teardown(test_leave, teardown),
      cmocka_unit_test_teardown(test_health, teardown),
      cmocka_unit_test_teardown(test_recover, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
