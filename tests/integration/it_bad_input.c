/* Bad input against one real paramex-server (--workers 2, plain SGD with lr 0.5, 4 KiB
 * chunks), spoken to through the raw rpc layer: every malformed or out-of-contract request
 * gets its exact gRPC status with a message, and changes nothing (Stats counters of
 * accepted chunks, versions and checksums, the parameters themselves). The tests share the
 * server and run in order; the last one changes state on purpose (a Push call that fails
 * half way counts the chunks before the failure).
 *
 * Tensor "t": f32 [2500], chunks of 1024 elements (1024, 1024, 452). Before the first bad
 * push the two workers run steps 0 and 1 correctly, so every chunk of "t" is at version 2.
 * Tensor "u": f32 [3], initializer constant 1.5, never pushed (version 0). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "check.h"
#include "codec/checksum.h"
#include "codec/initializer.h"
#include "rpc/rpc_base.h"
#include "rpc/rpc_client.h"
#include "util/iov.h"
#include "wire/chunk_msg.h"
#include "harness.h"
#include "health.pb-c.h"

#define T_NUMEL 2500u
#define T_CHUNK_ELEMS 1024u
#define T_CHUNKS 3u
#define LR 0.5f
#define CALL_MS 10000

static px_h_server g_srv;
static px_rpc_channel* g_ch;
static uint64_t g_inc[2];      /* current incarnations of workers 0 and 1 */
static uint64_t g_inc1_old;    /* worker 1's first incarnation (stale after its rejoin) */
static uint32_t g_tid_t, g_tid_u;
static float g_grad[2][4][T_NUMEL]; /* worker, step: gradients used by the valid pushes */
static float g_cur[T_NUMEL];        /* what "t" must hold now */
static uint64_t g_ver[T_CHUNKS];    /* the version of each chunk of "t" now */

/* ---- expectations --------------------------------------------------------------------- */

typedef struct snap {
  uint64_t push_chunks, push_duplicates, steps_completed, rejected_calls;
  uint32_t workers_joined;
  size_t ntensors;
  struct {
    uint32_t id;
    uint64_t vmin, vmax, checksum;
  } t[8];
} snap;

static snap g_base;

static void take_snap(snap* s) {
  char err[512];
  Paramex__V1__StatsResponse* st = px_h_stats(g_ch, err, sizeof err);
  CHECK(st, "%s", err);
  memset(s, 0, sizeof *s);
  s->push_chunks = st->push_chunks;
  s->push_duplicates = st->push_duplicates;
  s->steps_completed = st->steps_completed;
  s->rejected_calls = st->rejected_calls;
  s->workers_joined = st->workers_joined;
  s->ntensors = st->n_tensors;
  for (size_t i = 0; i < st->n_tensors && i < 8; i++) {
    s->t[i].id = st->tensors[i]->id;
    s->t[i].vmin = st->tensors[i]->version_min;
    s->t[i].vmax = st->tensors[i]->version_max;
    s->t[i].checksum = st->tensors[i]->checksum;
  }
  protobuf_c_message_free_unpacked(&st->base, NULL);
}

/* After a bad request: nothing changed. rejected: the service must have counted it. */
static void expect_unchanged(const char* what, bool rejected) {
  snap now;
  take_snap(&now);
  CHECK(now.push_chunks == g_base.push_chunks, "%s: push_chunks %" PRIu64 " -> %" PRIu64, what,
        g_base.push_chunks, now.push_chunks);
  CHECK(now.push_duplicates == g_base.push_duplicates, "%s: push_duplicates %" PRIu64 " -> %" PRIu64,
        what, g_base.push_duplicates, now.push_duplicates);
  CHECK(now.steps_completed == g_base.steps_completed, "%s: steps_completed %" PRIu64 " -> %" PRIu64,
        what, g_base.steps_completed, now.steps_completed);
  CHECK(now.workers_joined == g_base.workers_joined, "%s: workers_joined %" PRIu32 " -> %" PRIu32,
        what, g_base.workers_joined, now.workers_joined);
  CHECK(now.ntensors == g_base.ntensors, "%s: %zu tensors -> %zu", what, g_base.ntensors, now.ntensors);
  for (size_t i = 0; i < now.ntensors && i < 8; i++) {
    CHECK(now.t[i].id == g_base.t[i].id && now.t[i].vmin == g_base.t[i].vmin &&
              now.t[i].vmax == g_base.t[i].vmax && now.t[i].checksum == g_base.t[i].checksum,
          "%s: tensor row %zu changed: id %" PRIu32 " versions %" PRIu64 "..%" PRIu64
          " checksum %016" PRIx64 " -> id %" PRIu32 " versions %" PRIu64 "..%" PRIu64
          " checksum %016" PRIx64,
          what, i, g_base.t[i].id, g_base.t[i].vmin, g_base.t[i].vmax, g_base.t[i].checksum,
          now.t[i].id, now.t[i].vmin, now.t[i].vmax, now.t[i].checksum);
  }
  CHECK(now.rejected_calls >= g_base.rejected_calls, "%s: rejected_calls went down", what);
  if (rejected)
    CHECK(now.rejected_calls > g_base.rejected_calls, "%s: rejected_calls did not count the call (%" PRIu64 ")",
          what, now.rejected_calls);
  g_base.rejected_calls = now.rejected_calls;
}

static void expect_status(const char* what, int got, int want, const char* details) {
  CHECK(got == want, "%s: got %s (%d) '%s', want %s", what, got >= 0 ? px_status_name(got) : "harness error",
        got, details, px_status_name(want));
  if (want != PX_ST_OK && want != PX_ST_DEADLINE_EXCEEDED)
    CHECK(details && details[0], "%s: %s without a message naming the problem", what, px_status_name(want));
}

/* ---- requests ------------------------------------------------------------------------- */

static int unary_raw(const char* path, const void* buf, size_t len, char* details, size_t cap) {
  uint8_t* resp = NULL;
  size_t resp_len = 0;
  int st = px_rpc_unary(g_ch, path, buf, len, CALL_MS, true, &resp, &resp_len, details, cap);
  free(resp);
  return st;
}

static int join(uint32_t rank, uint32_t world, uint64_t* inc, char* det, size_t cap) {
  Paramex__V1__JoinRequest req = PARAMEX__V1__JOIN_REQUEST__INIT;
  req.rank = rank;
  req.world_size = world;
  req.name = (char*)"test_bad_input";
  ProtobufCMessage* resp = NULL;
  int st = px_h_unary_pb(g_ch, PX_H_PATH_JOIN, &req.base, &paramex__v1__join_response__descriptor,
                          &resp, CALL_MS, det, cap);
  if (st == PX_ST_OK) {
    Paramex__V1__JoinResponse* r = (Paramex__V1__JoinResponse*)resp;
    CHECK(r->worker_id == rank && r->world_size == world, "join response %" PRIu32 "/%" PRIu32,
          r->worker_id, r->world_size);
    if (inc) *inc = r->incarnation;
    protobuf_c_message_free_unpacked(resp, NULL);
  }
  return st;
}

static int declare(Paramex__V1__DeclareRequest* req, Paramex__V1__DeclareResponse** out, char* det,
                   size_t cap) {
  req->worker_id = 0;
  req->incarnation = g_inc[0];
  ProtobufCMessage* resp = NULL;
  int st = px_h_unary_pb(g_ch, PX_H_PATH_DECLARE, &req->base,
                          &paramex__v1__declare_response__descriptor, &resp, CALL_MS, det, cap);
  if (out) *out = (Paramex__V1__DeclareResponse*)resp;
  else if (resp) protobuf_c_message_free_unpacked(resp, NULL);
  return st;
}

/* One PushChunk: header written by the wire codec, payload as a separate segment. */
typedef struct cmsg {
  uint8_t hdr[PX_CHUNK_HDR_MAX];
  px_h_msg m;
} cmsg;

static void cmsg_build(cmsg* cm, const px_chunk* c, const void* payload, size_t plen) {
  size_t h = px_chunk_encode_header(PX_CHUNK_PUSH, c, plen, cm->hdr, sizeof cm->hdr);
  CHECK(h > 0, "pmx_chunk_encode_header failed");
  cm->m.head = cm->hdr;
  cm->m.head_len = h;
  cm->m.body = payload;
  cm->m.body_len = plen;
}

static size_t chunk_elems(uint32_t k) {
  return k + 1 < T_CHUNKS ? T_CHUNK_ELEMS : T_NUMEL - (T_CHUNKS - 1) * T_CHUNK_ELEMS;
}

/* The valid chunk k of worker w's gradient for step s. */
static px_chunk valid_chunk(uint32_t w, uint64_t s, uint32_t k, const void** payload, size_t* plen) {
  px_chunk c;
  memset(&c, 0, sizeof c);
  c.worker_id = w;
  c.incarnation = g_inc[w];
  c.step = s;
  c.tensor_id = g_tid_t;
  c.chunk = k;
  c.encoding = PARAMEX__V1__ENCODING__ENCODING_RAW;
  c.dtype = PARAMEX__V1__DTYPE__DTYPE_F32;
  c.raw_len = (uint32_t)(chunk_elems(k) * sizeof(float));
  *payload = &g_grad[w][s][k * T_CHUNK_ELEMS];
  *plen = c.raw_len;
  c.checksum = px_checksum(*payload, *plen);
  return c;
}

/* Runs a Push call; on OK *accepted and *dup get the PushResponse's counts. */
static int push_call(const px_h_msg* msgs, size_t n, uint32_t* accepted, uint32_t* dup, char* det,
                     size_t cap) {
  px_h_result r;
  int st = px_h_call(g_ch, PX_H_PATH_PUSH, msgs, n, CALL_MS, &r);
  snprintf(det, cap, "%s", r.details);
  if (st == PX_ST_OK) {
    CHECK(r.nresp == 1, "Push returned %zu messages", r.nresp);
    Paramex__V1__PushResponse* pr = paramex__v1__push_response__unpack(NULL, r.resp_len[0], r.resp[0]);
    CHECK(pr, "PushResponse does not unpack");
    if (accepted) *accepted = pr->accepted;
    if (dup) *dup = pr->duplicate;
    paramex__v1__push_response__free_unpacked(pr, NULL);
  }
  px_h_result_free(&r);
  return st;
}

/* Pushes one chunk message and expects `want` and no change. */
static void push_expect(const char* what, const px_chunk* c, const void* payload, size_t plen,
                        int want) {
  cmsg cm;
  cmsg_build(&cm, c, payload, plen);
  char det[512];
  int st = push_call(&cm.m, 1, NULL, NULL, det, sizeof det);
  expect_status(what, st, want, det);
  expect_unchanged(what, want != PX_ST_RESOURCE_EXHAUSTED);
}

/* Pushes all chunks of step s for worker w (one call) and expects them all accepted. */
static void push_step_ok(uint32_t w, uint64_t s) {
  cmsg cm[T_CHUNKS];
  px_h_msg msgs[T_CHUNKS];
  for (uint32_t k = 0; k < T_CHUNKS; k++) {
    const void* p;
    size_t n;
    px_chunk c = valid_chunk(w, s, k, &p, &n);
    cmsg_build(&cm[k], &c, p, n);
    msgs[k] = cm[k].m;
  }
  char det[512];
  uint32_t acc = 0, dup = 0;
  int st = push_call(msgs, T_CHUNKS, &acc, &dup, det, sizeof det);
  CHECK(st == PX_ST_OK, "valid push of worker %" PRIu32 " step %" PRIu64 ": %s '%s'", w, s,
        px_status_name(st), det);
  CHECK(acc == T_CHUNKS && dup == 0, "valid push of worker %" PRIu32 " step %" PRIu64
        ": accepted %" PRIu32 " duplicate %" PRIu32, w, s, acc, dup);
}

/* Applies step s of the BSP reference (2 workers, plain SGD) to chunk k of g_cur. */
static void apply_ref_chunk(uint64_t s, uint32_t k) {
  for (size_t i = k * T_CHUNK_ELEMS; i < k * T_CHUNK_ELEMS + chunk_elems(k); i++) {
    float sum = g_grad[0][s][i];
    sum += g_grad[1][s][i];
    float mean = sum / (float)2;
    g_cur[i] = g_cur[i] - LR * mean;
  }
  g_ver[k] = s + 1;
}

static void pull_req(Paramex__V1__PullRequest* req, uint32_t* ids, size_t nids, uint64_t* have,
                     size_t nhave, uint64_t min_version, uint8_t** buf, size_t* len) {
  paramex__v1__pull_request__init(req);
  req->worker_id = 0;
  req->n_tensor_ids = nids;
  req->tensor_ids = ids;
  req->n_have_versions = nhave;
  req->have_versions = have;
  req->min_version = min_version;
  *len = paramex__v1__pull_request__get_packed_size(req);
  *buf = malloc(*len ? *len : 1);
  CHECK(*buf, "out of memory");
  paramex__v1__pull_request__pack(req, *buf);
}

static int pull(uint32_t* ids, size_t nids, uint64_t* have, size_t nhave, uint64_t min_version,
                int64_t timeout_ms, px_h_result* res) {
  Paramex__V1__PullRequest req;
  uint8_t* buf;
  size_t len;
  pull_req(&req, ids, nids, have, nhave, min_version, &buf, &len);
  px_h_msg m = {buf, len, NULL, 0};
  int st = px_h_call(g_ch, PX_H_PATH_PULL, &m, 1, timeout_ms, res);
  free(buf);
  return st;
}

/* Pulls "t" and checks every chunk against g_cur / g_ver. */
static void check_params(const char* what) {
  px_h_result r;
  uint32_t ids[1] = {g_tid_t};
  int st = pull(ids, 1, NULL, 0, 0, CALL_MS, &r);
  CHECK(st == PX_ST_OK, "%s: pull of t: %s '%s'", what, px_status_name(st), r.details);
  CHECK(r.nresp == T_CHUNKS, "%s: pull of t returned %zu chunks", what, r.nresp);
  for (uint32_t k = 0; k < T_CHUNKS; k++) {
    px_chunk c;
    char err[256];
    px_iov seg = {r.resp[k], r.resp_len[k]};
    CHECK(px_chunk_parse(PX_CHUNK_PULL, &seg, 1, &c, err, sizeof err) == 0, "%s: %s", what, err);
    size_t bytes = chunk_elems(k) * sizeof(float);
    CHECK(c.tensor_id == g_tid_t && c.chunk == k, "%s: message %" PRIu32 " is tensor %" PRIu32 " chunk %" PRIu32,
          what, k, c.tensor_id, c.chunk);
    CHECK(c.encoding == PARAMEX__V1__ENCODING__ENCODING_RAW && c.dtype == PARAMEX__V1__DTYPE__DTYPE_F32,
          "%s: chunk %" PRIu32 " encoding %" PRIu32 " dtype %" PRIu32, what, k, c.encoding, c.dtype);
    CHECK(c.version == g_ver[k], "%s: chunk %" PRIu32 " version %" PRIu64 ", want %" PRIu64, what, k,
          c.version, g_ver[k]);
    CHECK(c.raw_len == bytes && c.has_payload && c.payload_len == bytes,
          "%s: chunk %" PRIu32 " raw_len %" PRIu32 " payload %zu", what, k, c.raw_len, c.payload_len);
    const uint8_t* p = r.resp[k] + c.payload_off;
    CHECK(c.checksum == px_checksum(p, bytes), "%s: chunk %" PRIu32 " checksum does not match its payload",
          what, k);
    CHECK(memcmp(p, &g_cur[k * T_CHUNK_ELEMS], bytes) == 0,
          "%s: chunk %" PRIu32 " parameters differ from the reference", what, k);
  }
  px_h_result_free(&r);
}

/* ---- fixture -------------------------------------------------------------------------- */

static int group_setup(void** state) {
  (void)state;
  px_rpc_init();
  char err[512];
  const char* args[] = {"--workers", "2", "--lr", "0.5", "--momentum", "0", "--weight-decay", "0",
                        "--chunk-bytes", "4K", "--threads", "2", "--cq-threads", "1", NULL};
  if (px_h_server_start(&g_srv, args, NULL, 10000, err, sizeof err) != 0) {
    fprintf(stderr, "server start: %s\n", err);
    return -1;
  }
  g_ch = px_rpc_channel_create(g_srv.addr, err, sizeof err);
  if (!g_ch) {
    fprintf(stderr, "channel: %s\n", err);
    return -1;
  }
  for (int w = 0; w < 2; w++)
    for (int s = 0; s < 4; s++)
      px_init_fill_f32(g_grad[w][s], 0, T_NUMEL, PX_FILL_NORMAL, 0.0f, 1.0f, 100u + 10u * w + s);
  px_init_fill_f32(g_cur, 0, T_NUMEL, PX_FILL_UNIFORM, -1.0f, 1.0f, 7);
  return 0;
}

static int group_teardown(void** state) {
  (void)state;
  int rc = 0;
  px_rpc_channel_destroy(g_ch);
  g_ch = NULL;
  if (g_srv.pid > 0) {
    int ws = 0;
    size_t extra = 0;
    if (px_h_server_stop(&g_srv, 15000, &ws, &extra) != 0) {
      fprintf(stderr, "server did not exit within 15 s of SIGTERM\n");
      rc = -1;
    } else if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0 || extra != 0) {
      char d[96];
      fprintf(stderr, "server %s after SIGTERM, %zu extra stdout bytes\n",
              px_h_describe_wstatus(ws, d, sizeof d), extra);
      rc = -1;
    }
  }
  px_h_kill_all();
  px_rpc_shutdown();
  return rc;
}

/* Join as worker 0, declare t (explicit values) and u (initializer); worker 1 stays out. */
static void test_setup_join_and_declare(void** state) {
  (void)state;
  char det[512];
  int st = join(0, 2, &g_inc[0], det, sizeof det);
  expect_status("join 0/2", st, PX_ST_OK, det);

  Paramex__V1__DeclareRequest req = PARAMEX__V1__DECLARE_REQUEST__INIT;
  uint64_t shape_t[1] = {T_NUMEL};
  req.name = (char*)"t";
  req.dtype = PARAMEX__V1__DTYPE__DTYPE_F32;
  req.n_shape = 1;
  req.shape = shape_t;
  req.values.data = (uint8_t*)g_cur;
  req.values.len = sizeof g_cur;
  Paramex__V1__DeclareResponse* dr = NULL;
  st = declare(&req, &dr, det, sizeof det);
  expect_status("declare t", st, PX_ST_OK, det);
  CHECK(dr->created && dr->version == 0 && dr->chunk_elems == T_CHUNK_ELEMS && dr->num_chunks == T_CHUNKS,
        "declare t: created %d version %" PRIu64 " chunk_elems %" PRIu32 " num_chunks %" PRIu32,
        (int)dr->created, dr->version, dr->chunk_elems, dr->num_chunks);
  g_tid_t = dr->tensor_id;
  protobuf_c_message_free_unpacked(&dr->base, NULL);

  Paramex__V1__DeclareRequest ru = PARAMEX__V1__DECLARE_REQUEST__INIT;
  Paramex__V1__Initializer init = PARAMEX__V1__INITIALIZER__INIT;
  init.kind = PARAMEX__V1__INITIALIZER__KIND__KIND_CONSTANT;
  init.a = 1.5f;
  uint64_t shape_u[1] = {3};
  ru.name = (char*)"u";
  ru.dtype = PARAMEX__V1__DTYPE__DTYPE_F32;
  ru.n_shape = 1;
  ru.shape = shape_u;
  ru.initializer = &init;
  st = declare(&ru, &dr, det, sizeof det);
  expect_status("declare u", st, PX_ST_OK, det);
  CHECK(dr->created && dr->num_chunks == 1, "declare u");
  g_tid_u = dr->tensor_id;
  CHECK(g_tid_u != g_tid_t, "t and u got the same id");
  protobuf_c_message_free_unpacked(&dr->base, NULL);

  take_snap(&g_base);
  check_params("after declare");
}

/* Pushes from a worker that has not joined, then from a stale incarnation. */
static void test_push_not_joined_and_stale_incarnation(void** state) {
  (void)state;
  const void* p;
  size_t n;
  g_inc[1] = 12345;
  px_chunk c = valid_chunk(1, 0, 0, &p, &n);
  push_expect("push from worker 1 before it joined", &c, p, n, PX_ST_FAILED_PRECONDITION);

  char det[512];
  int st = join(1, 2, &g_inc1_old, det, sizeof det);
  expect_status("join 1/2", st, PX_ST_OK, det);
  st = join(1, 2, &g_inc[1], det, sizeof det);
  expect_status("join 1/2 again", st, PX_ST_OK, det);
  CHECK(g_inc[1] != g_inc1_old, "a new join kept the incarnation %" PRIu64, g_inc[1]);
  take_snap(&g_base); /* workers_joined is 2 from here on */

  c = valid_chunk(1, 0, 0, &p, &n);
  c.incarnation = g_inc1_old;
  push_expect("push with worker 1's previous incarnation", &c, p, n, PX_ST_FAILED_PRECONDITION);
  c.incarnation = g_inc[1] ^ UINT64_C(0x5a5a5a5a5a5a5a5a);
  while (c.incarnation == 0 || c.incarnation == g_inc[0] || c.incarnation == g_inc[1] ||
         c.incarnation == g_inc1_old)
    c.incarnation++;
  push_expect("push with an incarnation never issued", &c, p, n, PX_ST_FAILED_PRECONDITION);

  /* Steps 0 and 1, correctly, by both workers: every chunk of t reaches version 2. */
  for (uint64_t s = 0; s < 2; s++) {
    push_step_ok(1, s);
    push_step_ok(0, s);
    for (uint32_t k = 0; k < T_CHUNKS; k++) apply_ref_chunk(s, k);
  }
  take_snap(&g_base);
  CHECK(g_base.push_chunks == 4 * T_CHUNKS, "push_chunks %" PRIu64 " after 2 steps of 2 workers",
        g_base.push_chunks);
  CHECK(g_base.steps_completed == 2 * T_CHUNKS, "steps_completed %" PRIu64, g_base.steps_completed);
  check_params("after steps 0 and 1");
}

static void test_join_bad(void** state) {
  (void)state;
  char det[512];
  int st = join(2, 2, NULL, det, sizeof det);
  expect_status("join rank 2 of 2", st, PX_ST_INVALID_ARGUMENT, det);
  expect_unchanged("join rank 2 of 2", true);
  st = join(UINT32_MAX, 2, NULL, det, sizeof det);
  expect_status("join rank 2^32-1 of 2", st, PX_ST_INVALID_ARGUMENT, det);
  expect_unchanged("join rank 2^32-1 of 2", true);
  st = join(0, 3, NULL, det, sizeof det);
  expect_status("join world 3 (server has 2)", st, PX_ST_FAILED_PRECONDITION, det);
  expect_unchanged("join world 3", true);
  st = join(0, 1, NULL, det, sizeof det);
  expect_status("join world 1 (server has 2)", st, PX_ST_FAILED_PRECONDITION, det);
  expect_unchanged("join world 1", true);
  {
    Paramex__V1__JoinRequest jr = PARAMEX__V1__JOIN_REQUEST__INIT;
    jr.rank = 0;
    jr.world_size = 2;
    jr.name = (char*)"host\xc3(:1";
    st = px_h_unary_pb(g_ch, PX_H_PATH_JOIN, &jr.base, &paramex__v1__join_response__descriptor, NULL,
                       CALL_MS, det, sizeof det);
  }
  expect_status("join with a name that is not UTF-8", st, PX_ST_INVALID_ARGUMENT, det);
  expect_unchanged("join with a name that is not UTF-8", true);
  static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
  st = unary_raw(PX_H_PATH_JOIN, garbage, sizeof garbage, det, sizeof det);
  expect_status("join with malformed protobuf", st, PX_ST_INVALID_ARGUMENT, det);
  expect_unchanged("join with malformed protobuf", true);
  /* The incarnations of the joined workers still hold. */
  check_params("after bad joins");
}

static void declare_expect(const char* what, Paramex__V1__DeclareRequest* req, int want) {
  char det[512];
  int st = declare(req, NULL, det, sizeof det);
  expect_status(what, st, want, det);
  expect_unchanged(what, true);
}

static void test_declare_bad(void** state) {
  (void)state;
  uint64_t shape10[1] = {10};
  float vals[16] = {0};
  char longname[257];
  memset(longname, 'x', 256);
  longname[256] = 0;

  Paramex__V1__DeclareRequest r = PARAMEX__V1__DECLARE_REQUEST__INIT;
  r.dtype = PARAMEX__V1__DTYPE__DTYPE_F32;
  r.n_shape = 1;
  r.shape = shape10;
  r.name = (char*)"";
  declare_expect("declare with an empty name", &r, PX_ST_INVALID_ARGUMENT);
  r.name = longname;
  declare_expect("declare with a 256-byte name", &r, PX_ST_INVALID_ARGUMENT);
  /* not UTF-8: protobuf parsers of other languages could no longer read Stats */
  r.name = (char*)"w\xff\xfe";
  declare_expect("declare with a name that is not UTF-8", &r, PX_ST_INVALID_ARGUMENT);

  r.name = (char*)"v";
  r.dtype = PARAMEX__V1__DTYPE__DTYPE_UNSPECIFIED;
  declare_expect("declare with dtype unspecified", &r, PX_ST_INVALID_ARGUMENT);
  r.dtype = (Paramex__V1__DType)7;
  declare_expect("declare with dtype 7", &r, PX_ST_INVALID_ARGUMENT);
  r.dtype = PARAMEX__V1__DTYPE__DTYPE_F32;

  r.n_shape = 0;
  r.shape = NULL;
  declare_expect("declare with an empty shape", &r, PX_ST_INVALID_ARGUMENT);
  uint64_t shape_zero[2] = {3, 0};
  r.n_shape = 2;
  r.shape = shape_zero;
  declare_expect("declare with a 0 dimension", &r, PX_ST_INVALID_ARGUMENT);
  uint64_t shape9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
  r.n_shape = 9;
  r.shape = shape9;
  declare_expect("declare with 9 dimensions", &r, PX_ST_INVALID_ARGUMENT);

  /* Hostile sizes: the element count overflows 64 bits or exceeds any memory. */
  uint64_t shape_huge[2] = {UINT64_C(1) << 40, UINT64_C(1) << 40};
  r.n_shape = 2;
  r.shape = shape_huge;
  {
    char det[512];
    int st = declare(&r, NULL, det, sizeof det);
    CHECK(st == PX_ST_INVALID_ARGUMENT || st == PX_ST_RESOURCE_EXHAUSTED,
          "declare of 2^80 elements: got %s '%s', want INVALID_ARGUMENT or RESOURCE_EXHAUSTED",
          st >= 0 ? px_status_name(st) : "harness error", det);
    CHECK(det[0], "declare of 2^80 elements: no message");
    expect_unchanged("declare of 2^80 elements", true);
  }

  /* An existing name with another shape or dtype. */
  uint64_t shape_t2[1] = {T_NUMEL + 1};
  r.name = (char*)"t";
  r.n_shape = 1;
  r.shape = shape_t2;
  declare_expect("declare t with shape [2501]", &r, PX_ST_FAILED_PRECONDITION);
  uint64_t shape_t3[2] = {50, 50};
  r.n_shape = 2;
  r.shape = shape_t3;
  declare_expect("declare t with shape [50, 50]", &r, PX_ST_FAILED_PRECONDITION);
  uint64_t shape_t[1] = {T_NUMEL};
  r.n_shape = 1;
  r.shape = shape_t;
  /* Another dtype: bf16 is also not stored by this server yet, so the request is invalid
   * on its own (INVALID_ARGUMENT) as well as conflicting (FAILED_PRECONDITION). */
  r.dtype = PARAMEX__V1__DTYPE__DTYPE_BF16;
  {
    char det[512];
    int st = declare(&r, NULL, det, sizeof det);
    CHECK(st == PX_ST_FAILED_PRECONDITION || st == PX_ST_INVALID_ARGUMENT,
          "declare t with dtype bf16: got %s '%s', want FAILED_PRECONDITION or INVALID_ARGUMENT",
          st >= 0 ? px_status_name(st) : "harness error", det);
    CHECK(det[0], "declare t with dtype bf16: no message");
    expect_unchanged("declare t with dtype bf16", true);
  }
  r.dtype = PARAMEX__V1__DTYPE__DTYPE_F32;

  /* The same declaration again is fine and changes nothing. */
  {
    char det[512];
    Paramex__V1__DeclareResponse* dr = NULL;
    int st = declare(&r, &dr, det, sizeof det);
    expect_status("declare t again, same shape", st, PX_ST_OK, det);
    CHECK(!dr->created && dr->tensor_id == g_tid_t && dr->version == 2 && dr->num_chunks == T_CHUNKS,
          "declare t again: created %d id %" PRIu32 " version %" PRIu64, (int)dr->created, dr->tensor_id,
          dr->version);
    protobuf_c_message_free_unpacked(&dr->base, NULL);
    expect_unchanged("declare t again", false);
  }

  /* Values that do not fit a new tensor "v" of 10 elements: "v" must not be created. */
  r.name = (char*)"v";
  r.n_shape = 1;
  r.shape = shape10;
  r.values.data = (uint8_t*)vals;
  r.values.len = 39;
  declare_expect("declare v with 39 bytes of f32 values", &r, PX_ST_INVALID_ARGUMENT);
  r.values.len = 44;
  declare_expect("declare v with 11 values for 10 elements", &r, PX_ST_INVALID_ARGUMENT);
  r.values.len = 12;
  r.values_offset = 8;
  declare_expect("declare v with 3 values at offset 8 of 10", &r, PX_ST_INVALID_ARGUMENT);
  r.values.len = 4;
  r.values_offset = UINT64_MAX;
  declare_expect("declare v with values at offset 2^64-1", &r, PX_ST_INVALID_ARGUMENT);
  r.values_offset = (UINT64_MAX / 4) + 1;
  declare_expect("declare v with values at offset 2^62 (byte offset overflows)", &r,
                 PX_ST_INVALID_ARGUMENT);

  char det[512];
  static const uint8_t garbage[] = {0x0a, 0x80, 0x80, 0x80, 0x80, 0x10, 'v'};
  int st = unary_raw(PX_H_PATH_DECLARE, garbage, sizeof garbage, det, sizeof det);
  expect_status("declare with malformed protobuf", st, PX_ST_INVALID_ARGUMENT, det);
  expect_unchanged("declare with malformed protobuf", true);

  /* Above gRPC's 4 MiB receive limit. */
  size_t big = PX_RPC_MAX_MESSAGE + 1024;
  uint8_t* bigbuf = calloc(1, big);
  CHECK(bigbuf, "out of memory");
  uint64_t shape_big[1] = {big / 4};
  r.name = (char*)"big";
  r.shape = shape_big;
  r.values.data = bigbuf;
  r.values.len = big;
  r.values_offset = 0;
  st = declare(&r, NULL, det, sizeof det);
  free(bigbuf);
  expect_status("declare with a message over 4 MiB", st, PX_ST_RESOURCE_EXHAUSTED, det);
  expect_unchanged("declare over 4 MiB", false);
  check_params("after bad declares");
}

static void test_push_bad(void** state) {
  (void)state;
  const void* p;
  size_t n;
  const px_chunk base = valid_chunk(0, 2, 0, &p, &n);
  px_chunk c;

  c = base; c.worker_id = 2;
  push_expect("push worker_id 2 of 2", &c, p, n, PX_ST_INVALID_ARGUMENT);
  c = base; c.worker_id = 4000000000u;
  push_expect("push worker_id 4e9", &c, p, n, PX_ST_INVALID_ARGUMENT);
  c = base; c.incarnation = 0;
  push_expect("push incarnation 0", &c, p, n, PX_ST_FAILED_PRECONDITION);
  c = base; c.tensor_id = g_tid_t + g_tid_u + 1000;
  push_expect("push unknown tensor", &c, p, n, PX_ST_NOT_FOUND);
  c = base; c.chunk = T_CHUNKS;
  push_expect("push chunk == num_chunks", &c, p, n, PX_ST_OUT_OF_RANGE);
  c = base; c.chunk = UINT32_MAX;
  push_expect("push chunk 2^32-1", &c, p, n, PX_ST_OUT_OF_RANGE);
  c = base; c.dtype = PARAMEX__V1__DTYPE__DTYPE_BF16;
  push_expect("push dtype bf16 to an f32 tensor", &c, p, n, PX_ST_INVALID_ARGUMENT);
  c = base; c.dtype = 0;
  push_expect("push dtype unspecified", &c, p, n, PX_ST_INVALID_ARGUMENT);
  c = base; c.dtype = 99;
  push_expect("push dtype 99", &c, p, n, PX_ST_INVALID_ARGUMENT);
  c = base; c.encoding = PARAMEX__V1__ENCODING__ENCODING_UNCHANGED;
  push_expect("push encoding UNCHANGED", &c, p, n, PX_ST_INVALID_ARGUMENT);
  c = base; c.encoding = 77;
  push_expect("push encoding 77", &c, p, n, PX_ST_INVALID_ARGUMENT);

  /* Lengths. */
  c = base; c.raw_len = (uint32_t)n - 4; c.checksum = px_checksum(p, n - 4);
  push_expect("push raw_len one element short (payload too)", &c, p, n - 4, PX_ST_INVALID_ARGUMENT);
  c = base; c.raw_len = (uint32_t)n + 4;
  push_expect("push raw_len longer than the chunk", &c, p, n, PX_ST_INVALID_ARGUMENT);
  c = base; c.raw_len = 0; c.checksum = px_checksum(p, 0);
  push_expect("push raw_len 0 without payload", &c, NULL, 0, PX_ST_INVALID_ARGUMENT);
  c = base; c.checksum = px_checksum(p, n - 4);
  push_expect("push payload shorter than raw_len", &c, p, n - 4, PX_ST_INVALID_ARGUMENT);
  {
    float longer[T_CHUNK_ELEMS + 1] = {0};
    memcpy(longer, p, n);
    c = base; c.checksum = px_checksum(longer, n + 4);
    push_expect("push payload longer than raw_len", &c, longer, n + 4, PX_ST_INVALID_ARGUMENT);
  }
  c = base;
  push_expect("push without payload", &c, NULL, 0, PX_ST_INVALID_ARGUMENT);
  {
    /* The last chunk (452 elements) sent with a full chunk's length. */
    const void* p2;
    size_t n2;
    px_chunk last = valid_chunk(0, 2, T_CHUNKS - 1, &p2, &n2);
    last.raw_len = T_CHUNK_ELEMS * 4;
    last.checksum = px_checksum(p, T_CHUNK_ELEMS * 4);
    push_expect("push a full-size last chunk", &last, p, T_CHUNK_ELEMS * 4, PX_ST_INVALID_ARGUMENT);
  }

  /* Checksum. */
  c = base; c.checksum ^= 1;
  push_expect("push with a wrong checksum", &c, p, n, PX_ST_DATA_LOSS);
  {
    float flipped[T_CHUNK_ELEMS];
    memcpy(flipped, p, n);
    flipped[17] = -flipped[17];
    c = base;
    push_expect("push with a payload that does not match its checksum", &c, flipped, n, PX_ST_DATA_LOSS);
  }

  /* Steps: version is 2. */
  c = base; c.step = 3;
  push_expect("push step 3 at version 2", &c, p, n, PX_ST_OUT_OF_RANGE);
  c = base; c.step = UINT64_MAX;
  push_expect("push step 2^64-1", &c, p, n, PX_ST_OUT_OF_RANGE);
  {
    const void* p0;
    size_t n0;
    c = valid_chunk(0, 0, 0, &p0, &n0);
    push_expect("push step 0 at version 2", &c, p0, n0, PX_ST_FAILED_PRECONDITION);
  }

  /* Malformed protobuf. */
  {
    static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
    px_h_msg m = {garbage, sizeof garbage, NULL, 0};
    char det[512];
    int st = push_call(&m, 1, NULL, NULL, det, sizeof det);
    expect_status("push of garbage bytes", st, PX_ST_INVALID_ARGUMENT, det);
    expect_unchanged("push of garbage bytes", true);

    /* A valid header whose payload is cut short. */
    cmsg cm;
    cmsg_build(&cm, &base, p, n);
    cm.m.body_len = n / 2;
    st = push_call(&cm.m, 1, NULL, NULL, det, sizeof det);
    expect_status("push truncated in its payload", st, PX_ST_INVALID_ARGUMENT, det);
    expect_unchanged("push truncated in its payload", true);

    /* Field 4 (tensor_id, a varint) sent as a length-delimited field of 2^31 bytes. */
    static const uint8_t wrongtype[] = {0x08, 0x00, 0x22, 0x80, 0x80, 0x80, 0x80, 0x08, 0x00};
    px_h_msg m2 = {wrongtype, sizeof wrongtype, NULL, 0};
    st = push_call(&m2, 1, NULL, NULL, det, sizeof det);
    expect_status("push with a wrong wire type and a huge length", st, PX_ST_INVALID_ARGUMENT, det);
    expect_unchanged("push with a wrong wire type", true);

    /* Garbage first, then a valid chunk: the call ends at the garbage, nothing counts. */
    px_h_msg both[2] = {m, cm.m};
    both[1].body_len = n;
    st = push_call(both, 2, NULL, NULL, det, sizeof det);
    expect_status("push of garbage then a valid chunk", st, PX_ST_INVALID_ARGUMENT, det);
    expect_unchanged("push of garbage then a valid chunk", true);
  }

  /* One message above gRPC's 4 MiB receive limit. */
  {
    size_t big = PX_RPC_MAX_MESSAGE + 1024;
    uint8_t* bigbuf = calloc(1, big);
    CHECK(bigbuf, "out of memory");
    c = base;
    c.raw_len = (uint32_t)big;
    c.checksum = px_checksum(bigbuf, big);
    push_expect("push of a message over 4 MiB", &c, bigbuf, big, PX_ST_RESOURCE_EXHAUSTED);
    free(bigbuf);
  }
  check_params("after bad pushes");
}

/* Retries of chunks that already counted are acknowledged and ignored. */
static void test_push_duplicates(void** state) {
  (void)state;
  const void* p;
  size_t n;
  px_chunk c = valid_chunk(0, 1, 0, &p, &n);
  cmsg cm;
  cmsg_build(&cm, &c, p, n);
  char det[512];
  uint32_t acc = 99, dup = 99;
  int st = push_call(&cm.m, 1, &acc, &dup, det, sizeof det);
  expect_status("push of step 1 again (version 2)", st, PX_ST_OK, det);
  CHECK(acc == 0 && dup == 1, "push of step 1 again: accepted %" PRIu32 " duplicate %" PRIu32, acc, dup);
  g_base.push_duplicates += 1;
  expect_unchanged("push of step 1 again", false);

  cmsg all[T_CHUNKS];
  px_h_msg msgs[T_CHUNKS];
  for (uint32_t k = 0; k < T_CHUNKS; k++) {
    px_chunk ck = valid_chunk(1, 1, k, &p, &n);
    cmsg_build(&all[k], &ck, p, n);
    msgs[k] = all[k].m;
  }
  st = push_call(msgs, T_CHUNKS, &acc, &dup, det, sizeof det);
  expect_status("push of worker 1's whole step 1 again", st, PX_ST_OK, det);
  CHECK(acc == 0 && dup == T_CHUNKS, "worker 1's step 1 again: accepted %" PRIu32 " duplicate %" PRIu32, acc,
        dup);
  g_base.push_duplicates += T_CHUNKS;
  expect_unchanged("push of worker 1's whole step 1 again", false);
  check_params("after duplicates");
}

static void pull_expect(const char* what, uint32_t* ids, size_t nids, uint64_t* have, size_t nhave,
                        uint64_t min_version, int64_t timeout_ms, int want) {
  px_h_result r;
  int st = pull(ids, nids, have, nhave, min_version, timeout_ms, &r);
  expect_status(what, st, want, r.details);
  if (want == PX_ST_DEADLINE_EXCEEDED)
    CHECK(r.elapsed_ms >= timeout_ms / 2 && r.elapsed_ms < timeout_ms + 5000,
          "%s: DEADLINE_EXCEEDED after %" PRId64 " ms with a %" PRId64 " ms deadline", what, r.elapsed_ms,
          timeout_ms);
  px_h_result_free(&r);
  expect_unchanged(what, want != PX_ST_DEADLINE_EXCEEDED);
}

static void test_pull_bad(void** state) {
  (void)state;
  uint32_t unknown[1] = {g_tid_t + g_tid_u + 1000};
  uint32_t t_and_unknown[2] = {g_tid_t, g_tid_t + g_tid_u + 1000};
  uint32_t t_only[1] = {g_tid_t};
  uint64_t have2[2] = {2, 2};

  pull_expect("pull of no tensor", NULL, 0, NULL, 0, 0, CALL_MS, PX_ST_INVALID_ARGUMENT);
  pull_expect("pull of an unknown tensor", unknown, 1, NULL, 0, 0, CALL_MS, PX_ST_NOT_FOUND);
  pull_expect("pull of t and an unknown tensor", t_and_unknown, 2, NULL, 0, 0, CALL_MS, PX_ST_NOT_FOUND);
  pull_expect("pull with 2 have_versions for 1 tensor", t_only, 1, have2, 2, 0, CALL_MS,
              PX_ST_INVALID_ARGUMENT);
  pull_expect("pull of version 100 (parked until the deadline)", t_only, 1, NULL, 0, 100, 700,
              PX_ST_DEADLINE_EXCEEDED);

  char det[512];
  static const uint8_t garbage[] = {0x12, 0x05, 0x01};
  px_h_msg m = {garbage, sizeof garbage, NULL, 0};
  px_h_result r;
  int st = px_h_call(g_ch, PX_H_PATH_PULL, &m, 1, CALL_MS, &r);
  snprintf(det, sizeof det, "%s", r.details);
  px_h_result_free(&r);
  expect_status("pull with malformed protobuf", st, PX_ST_INVALID_ARGUMENT, det);
  expect_unchanged("pull with malformed protobuf", true);
  check_params("after bad pulls");
}

/* Many pulls parked on a version that never comes do not block the server's threads: Stats
 * and a real pull are answered while they wait; they all end DEADLINE_EXCEEDED. The real
 * pull also checks the stream's order (u before t, chunk by chunk) and the UNCHANGED
 * markers for versions the client already holds. */
static void test_parked_pulls_block_no_thread(void** state) {
  (void)state;
  enum { NPARKED = 24 };
  static uint8_t* bufs[NPARKED];
  static px_h_msg msgs[NPARKED];
  static uint32_t ids[1];
  px_h_async* a[NPARKED];
  ids[0] = g_tid_t;
  for (int i = 0; i < NPARKED; i++) {
    Paramex__V1__PullRequest req;
    size_t len;
    pull_req(&req, ids, 1, NULL, 0, 1000, &bufs[i], &len);
    msgs[i] = (px_h_msg){bufs[i], len, NULL, 0};
    a[i] = px_h_async_start(g_ch, PX_H_PATH_PULL, &msgs[i], 1, 2500);
    CHECK(a[i], "cannot start parked pull %d", i);
  }
  int64_t t0 = px_h_now_ms();
  snap s;
  take_snap(&s);

  uint32_t ut[2] = {g_tid_u, g_tid_t};
  px_h_result r;
  int st = pull(ut, 2, NULL, 0, 0, CALL_MS, &r);
  int64_t took = px_h_now_ms() - t0;
  CHECK(st == PX_ST_OK, "pull of u, t while %d pulls are parked: %s '%s'", NPARKED, px_status_name(st),
        r.details);
  CHECK(took < 2000, "Stats + pull took %" PRId64 " ms while %d pulls were parked", took, NPARKED);
  CHECK(r.nresp == 1 + T_CHUNKS, "pull of u, t returned %zu messages", r.nresp);
  for (size_t i = 0; i < r.nresp; i++) {
    px_chunk c;
    char err[256];
    px_iov seg = {r.resp[i], r.resp_len[i]};
    CHECK(px_chunk_parse(PX_CHUNK_PULL, &seg, 1, &c, err, sizeof err) == 0, "%s", err);
    uint32_t want_id = i == 0 ? g_tid_u : g_tid_t;
    uint32_t want_chunk = i == 0 ? 0 : (uint32_t)i - 1;
    CHECK(c.tensor_id == want_id && c.chunk == want_chunk,
          "message %zu is tensor %" PRIu32 " chunk %" PRIu32 ", want tensor %" PRIu32 " chunk %" PRIu32, i,
          c.tensor_id, c.chunk, want_id, want_chunk);
    if (i == 0) {
      float want[3] = {1.5f, 1.5f, 1.5f};
      CHECK(c.version == 0 && c.raw_len == 12 && c.payload_len == 12 &&
                memcmp(r.resp[0] + c.payload_off, want, 12) == 0 &&
                c.checksum == px_checksum(want, 12),
            "u: version %" PRIu64 " raw_len %" PRIu32 ": not the constant initializer", c.version, c.raw_len);
    }
  }
  px_h_result_free(&r);

  /* The client already holds these versions: every chunk is an UNCHANGED marker. */
  uint64_t have[2] = {0, 2};
  st = pull(ut, 2, have, 2, 0, CALL_MS, &r);
  CHECK(st == PX_ST_OK, "pull with have_versions: %s '%s'", px_status_name(st), r.details);
  CHECK(r.nresp == 1 + T_CHUNKS, "pull with have_versions returned %zu messages", r.nresp);
  for (size_t i = 0; i < r.nresp; i++) {
    px_chunk c;
    char err[256];
    px_iov seg = {r.resp[i], r.resp_len[i]};
    CHECK(px_chunk_parse(PX_CHUNK_PULL, &seg, 1, &c, err, sizeof err) == 0, "%s", err);
    CHECK(c.encoding == PARAMEX__V1__ENCODING__ENCODING_UNCHANGED && c.payload_len == 0,
          "message %zu: encoding %" PRIu32 " payload %zu bytes for a chunk the client holds", i, c.encoding,
          c.payload_len);
    CHECK(c.version == c.base_version && c.version == (i == 0 ? 0u : 2u),
          "message %zu: version %" PRIu64 " base %" PRIu64, i, c.version, c.base_version);
  }
  px_h_result_free(&r);

  for (int i = 0; i < NPARKED; i++) {
    px_h_async_join(a[i], &r);
    CHECK(r.status == PX_ST_DEADLINE_EXCEEDED, "parked pull %d ended %s '%s'", i,
          r.status >= 0 ? px_status_name(r.status) : "harness error", r.details);
    px_h_result_free(&r);
    free(bufs[i]);
  }
  expect_unchanged("parked pulls", false);
  check_params("after parked pulls");
}

static void test_stats_health_unknown_methods(void** state) {
  (void)state;
  char det[512];
  static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
  int st = unary_raw(PX_H_PATH_STATS, garbage, sizeof garbage, det, sizeof det);
  expect_status("stats with malformed protobuf", st, PX_ST_INVALID_ARGUMENT, det);
  expect_unchanged("stats with malformed protobuf", true);

  Grpc__Health__V1__HealthCheckRequest hreq = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  ProtobufCMessage* resp = NULL;
  hreq.service = (char*)"";
  st = px_h_unary_pb(g_ch, PX_H_PATH_HEALTH, &hreq.base, &grpc__health__v1__health_check_response__descriptor,
                      &resp, CALL_MS, det, sizeof det);
  expect_status("health check of \"\"", st, PX_ST_OK, det);
  CHECK(((Grpc__Health__V1__HealthCheckResponse*)resp)->status ==
            GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING,
        "health status %d", (int)((Grpc__Health__V1__HealthCheckResponse*)resp)->status);
  protobuf_c_message_free_unpacked(resp, NULL);
  hreq.service = (char*)"no.such.Service";
  st = px_h_unary_pb(g_ch, PX_H_PATH_HEALTH, &hreq.base, &grpc__health__v1__health_check_response__descriptor,
                      NULL, CALL_MS, det, sizeof det);
  expect_status("health check of an unknown service", st, PX_ST_NOT_FOUND, det);
  static const uint8_t hgarbage[] = {0x0a, 0x7f, 'x'};
  st = unary_raw(PX_H_PATH_HEALTH, hgarbage, sizeof hgarbage, det, sizeof det);
  expect_status("health check with malformed protobuf", st, PX_ST_INVALID_ARGUMENT, det);
  expect_unchanged("health checks", false);

  st = unary_raw("/paramex.v1.ParameterExchange/Nope", "", 0, det, sizeof det);
  expect_status("unknown method of ParameterExchange", st, PX_ST_UNIMPLEMENTED, det);
  st = unary_raw("/no.such.Service/Method", garbage, sizeof garbage, det, sizeof det);
  expect_status("method of an unknown service", st, PX_ST_UNIMPLEMENTED, det);
  px_h_msg two[2] = {{garbage, sizeof garbage, NULL, 0}, {garbage, 3, NULL, 0}};
  px_h_result r;
  st = px_h_call(g_ch, "/paramex.v1.ParameterExchange/PushMore", two, 2, CALL_MS, &r);
  expect_status("unknown streaming method", st, PX_ST_UNIMPLEMENTED, r.details);
  px_h_result_free(&r);
  expect_unchanged("unknown methods", false);

  size_t big = PX_RPC_MAX_MESSAGE + 1;
  uint8_t* bigbuf = calloc(1, big);
  CHECK(bigbuf, "out of memory");
  st = unary_raw(PX_H_PATH_STATS, bigbuf, big, det, sizeof det);
  free(bigbuf);
  expect_status("stats request over 4 MiB", st, PX_ST_RESOURCE_EXHAUSTED, det);
  expect_unchanged("stats request over 4 MiB", false);
  check_params("after stats/health/unknown methods");
}

/* Last (changes state): a Push call that fails half way keeps the chunks before the
 * failure; a retry of a chunk already contributed at the current version is a duplicate;
 * completing the step gives the reference parameters. */
static void test_push_call_ends_at_first_error(void** state) {
  (void)state;
  cmsg cm[3];
  px_h_msg msgs[3];
  for (uint32_t k = 0; k < 3; k++) {
    const void* p;
    size_t n;
    px_chunk c = valid_chunk(0, 2, k, &p, &n);
    if (k == 1) c.checksum ^= 0x100;
    cmsg_build(&cm[k], &c, p, n);
    msgs[k] = cm[k].m;
  }
  char det[512];
  int st = push_call(msgs, 3, NULL, NULL, det, sizeof det);
  expect_status("push of chunk 0 (valid), 1 (bad checksum), 2 (valid)", st, PX_ST_DATA_LOSS, det);
  snap now;
  take_snap(&now);
  CHECK(now.push_chunks == g_base.push_chunks + 1,
        "the chunk before the error must count and the one after must not: push_chunks %" PRIu64 " -> %" PRIu64,
        g_base.push_chunks, now.push_chunks);
  CHECK(now.steps_completed == g_base.steps_completed, "a step completed with one worker's chunk");
  g_base = now;

  /* Worker 0's chunk 0 of step 2 again: already contributed at the current version. */
  uint32_t acc = 99, dup = 99;
  st = push_call(&msgs[0], 1, &acc, &dup, det, sizeof det);
  expect_status("push of chunk 0 step 2 again", st, PX_ST_OK, det);
  CHECK(acc == 0 && dup == 1, "chunk 0 step 2 again: accepted %" PRIu32 " duplicate %" PRIu32, acc, dup);
  g_base.push_duplicates += 1;
  expect_unchanged("push of chunk 0 step 2 again", false);

  /* Worker 1 pushes chunk 0 of step 2: chunk 0 reaches version 3, the others stay at 2. */
  {
    const void* p;
    size_t n;
    px_chunk c = valid_chunk(1, 2, 0, &p, &n);
    cmsg one;
    cmsg_build(&one, &c, p, n);
    st = push_call(&one.m, 1, &acc, &dup, det, sizeof det);
    expect_status("worker 1 chunk 0 step 2", st, PX_ST_OK, det);
    CHECK(acc == 1 && dup == 0, "worker 1 chunk 0 step 2: accepted %" PRIu32 " duplicate %" PRIu32, acc, dup);
    apply_ref_chunk(2, 0);
    check_params("chunk 0 at version 3, chunks 1, 2 at version 2");
    Paramex__V1__StatsResponse* s = px_h_stats(g_ch, det, sizeof det);
    CHECK(s, "%s", det);
    const Paramex__V1__TensorStats* ts = px_h_stats_tensor(s, "t");
    CHECK(ts && ts->version_min == 2 && ts->version_max == 3 && ts->checksum == 0,
          "t with chunks at versions 3, 2, 2: versions %" PRIu64 "..%" PRIu64 " checksum %016" PRIx64,
          ts ? ts->version_min : 0, ts ? ts->version_max : 0, ts ? ts->checksum : 0);
    protobuf_c_message_free_unpacked(&s->base, NULL);
  }

  /* Step 3 on chunk 0 is from the future for chunks 1 and 2 only. */
  {
    const void* p;
    size_t n;
    px_chunk c = valid_chunk(0, 3, 1, &p, &n);
    take_snap(&g_base);
    push_expect("push step 3 on chunk 1 at version 2", &c, p, n, PX_ST_OUT_OF_RANGE);
  }

  /* Complete step 2 for chunks 1 and 2. */
  for (uint32_t w = 0; w < 2; w++) {
    cmsg rest[2];
    px_h_msg rm[2];
    for (uint32_t k = 1; k < 3; k++) {
      const void* p;
      size_t n;
      px_chunk c = valid_chunk(w, 2, k, &p, &n);
      cmsg_build(&rest[k - 1], &c, p, n);
      rm[k - 1] = rest[k - 1].m;
    }
    st = push_call(rm, 2, &acc, &dup, det, sizeof det);
    expect_status("rest of step 2", st, PX_ST_OK, det);
    CHECK(acc == 2 && dup == 0, "rest of step 2 of worker %" PRIu32 ": accepted %" PRIu32 " duplicate %" PRIu32,
          w, acc, dup);
  }
  apply_ref_chunk(2, 1);
  apply_ref_chunk(2, 2);
  check_params("after step 2");
  Paramex__V1__StatsResponse* s = px_h_stats(g_ch, det, sizeof det);
  CHECK(s, "%s", det);
  const Paramex__V1__TensorStats* ts = px_h_stats_tensor(s, "t");
  CHECK(ts && ts->version_min == 3 && ts->version_max == 3, "t not at version 3");
  CHECK(ts->checksum == it_stats_checksum(g_cur, sizeof g_cur), "t: Stats checksum %016" PRIx64
        " is not the checksum of the reference parameters", ts->checksum);
  CHECK(s->steps_completed == 3 * T_CHUNKS, "steps_completed %" PRIu64, s->steps_completed);
  CHECK(s->push_chunks == 6 * T_CHUNKS, "push_chunks %" PRIu64 " after 3 steps of 2 workers (duplicates: %" PRIu64 ")",
        s->push_chunks, s->push_duplicates);
  protobuf_c_message_free_unpacked(&s->base, NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_setup_join_and_declare),
      cmocka_unit_test(test_push_not_joined_and_stale_incarnation),
      cmocka_unit_test(test_join_bad),
      cmocka_unit_test(test_declare_bad),
      cmocka_unit_test(test_push_bad),
      cmocka_unit_test(test_push_duplicates),
      cmocka_unit_test(test_pull_bad),
      cmocka_unit_test(test_parked_pulls_block_no_thread),
      cmocka_unit_test(test_stats_health_unknown_methods),
      cmocka_unit_test(test_push_call_ends_at_first_error),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
