/* Unit tests of client/pull_op.c (pull_op.h, and pmx_pull / pmx_pull_as / pmx_pull_async /
 * pmx_pull_as_async of paramex.h) against real paramex-server processes (plain SGD, lr
 * 0.5, chunks of 1024 f32): pulls into buffers are bit-exact against a reference computed
 * here; a second pull into the same buffer at the same version is all UNCHANGED (client
 * pull_unchanged_chunks, a few wire bytes) and a different buffer is refilled in full;
 * versions out; with compression on, a pull after a sparse step travels as a small diff;
 * the bf16 view (round to nearest even, NaN and infinities kept, other dtypes as they
 * are, UNCHANGED against the view); a pull waiting for min_version completes when the
 * step happens and times out with nothing written; argument errors; pulls from several
 * threads of one client; healing through the corrupting proxy (chunks that fail their
 * checksum are pulled again: bit-exact buffers, checksum_failures equal to the corrupted
 * chunks) and DATA_LOSS when the corruption persists (versions[] untouched, also for a
 * tensor that came through intact); *op
 * untouched on argument errors; versions are the lowest chunk version (one chunk pushed
 * alone by a raw Push stream) and min_version must be reached by every chunk. */
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
#include "codec/checksum.h"
#include "codec/dtype.h"
#include "codec/payload.h"
#include "corrupt_proxy.h"
#include "errors.h"
#include "harness.h"
#include "op.h"
#include "paramex/paramex.h"
#include "rpc/rpc_client.h"
#include "tensor.h"
#include "wire/chunk_msg.h"

#define SRV_START_MS 30000
#define SRV_STOP_MS 30000
#define LR 0.5f

static px_h_server g_srv;
static px_rpc_channel* g_ch; /* Stats */

static void expect_st(const char* what, pmx_status st, pmx_status want) {
  if (st != want)
    fail_msg("%s: %s (%d; '%s'), want %s (%d)", what, pmx_strerror(st), (int)st, pmx_last_error(),
             pmx_strerror(want), (int)want);
}

static void expect_error_has(const char* what, const char* needle) {
  if (!strstr(pmx_last_error(), needle))
    fail_msg("%s: last error '%s' does not contain '%s'", what, pmx_last_error(), needle);
}

static int setup(void** state) {
  (void)state;
  char err[512];
  const char* args[] = {"--workers", "1", "--lr", "0.5", "--chunk-bytes", "4K", "--log-level", "warn", NULL};
  if (px_h_server_start(&g_srv, args, NULL, SRV_START_MS, err, sizeof err) != 0) {
    fprintf(stderr, "server: %s\n", err);
    return -1;
  }
  g_ch = px_rpc_channel_create(g_srv.addr, err, sizeof err);
  return g_ch ? 0 : -1;
}

static int teardown(void** state) {
  (void)state;
  px_rpc_channel_destroy(g_ch);
  g_ch = NULL;
  int ws = 0;
  int rc = px_h_server_stop(&g_srv, SRV_STOP_MS, &ws, NULL);
  px_h_kill_all();
  return rc == 0 && ws == 0 ? 0 : -1;
}

static int group_setup(void** state) {
  (void)state;
  unsetenv("PMX_PULL_COMPRESSION");
  px_rpc_init();
  return 0;
}

static int group_teardown(void** state) {
  (void)state;
  px_rpc_shutdown();
  return 0;
}

static pmx_client* client_at(const char* addr, int compression, int64_t timeout_ms, bool join) {
  pmx_options o = {.timeout_ms = timeout_ms, .connect_timeout_ms = 30000, .compression = compression};
  pmx_client* c = NULL;
  expect_st("connect", pmx_connect(addr, &o, &c), PMX_OK);
  if (join) expect_st("join", pmx_join(c, 0, 1, NULL), PMX_OK);
  return c;
}

static pmx_client* joined(void) { return client_at(g_srv.addr, PMX_COMPRESSION_AUTO, 30000, true); }

static pmx_tensor* declare(pmx_client* c, const char* name, pmx_dtype dt, uint64_t n, const void* values) {
  const uint64_t shape[1] = {n};
  pmx_tensor* t = NULL;
  expect_st(name, pmx_declare(c, name, dt, shape, 1, values, NULL, &t), PMX_OK);
  return t;
}

/* Creates tensor name on the server through a joined client of its own (only a joined
 * worker creates tensors), for a test whose client does not join. */
static void create_joined(const char* name, pmx_dtype dt, uint64_t n, const void* values) {
  pmx_client* maker = client_at(g_srv.addr, PMX_COMPRESSION_OFF, 30000, true);
  declare(maker, name, dt, n, values);
  pmx_client_destroy(maker);
}

static Paramex__V1__StatsResponse* stats(void) {
  char err[256];
  Paramex__V1__StatsResponse* st = px_h_stats(g_ch, err, sizeof err);
  if (!st) fail_msg("%s", err);
  return st;
}

static float grad_of(uint64_t step, size_t i) {
  uint32_t h = (uint32_t)(i * 2654435761u) ^ (uint32_t)(step * 977u + 13u);
  h ^= h >> 13;
  h *= 0x5bd1e995u;
  h ^= h >> 15;
  return ((float)(h % 20001u) - 10000.0f) / 4096.0f;
}

/* One step of a single worker: the server's p - lr * (g / 1). */
static void sgd_ref(float* p, const float* g, size_t n) {
  for (size_t i = 0; i < n; i++) p[i] = p[i] - LR * (g[i] / 1.0f);
}

static void check_bits(const char* what, const void* got, const void* want, size_t bytes) {
  if (memcmp(got, want, bytes) == 0) return;
  const uint8_t* a = got;
  const uint8_t* b = want;
  for (size_t i = 0; i < bytes; i++)
    if (a[i] != b[i])
      fail_msg("%s: byte %zu of %zu is 0x%02x, want 0x%02x", what, i, bytes, a[i], b[i]);
}

static void init_values(float* v, size_t n, float scale) {
  for (size_t i = 0; i < n; i++) v[i] = scale * (float)((int)(i % 97) - 48);
}

static pmx_client_stats cstats(pmx_client* c) {
  pmx_client_stats s;
  pmx_client_get_stats(c, &s);
  return s;
}

/* Pushes g for step s (one tensor) and updates the reference. */
static void step(pmx_client* c, pmx_tensor* t, uint64_t s, float* g, float* ref, size_t n) {
  for (size_t i = 0; i < n; i++) g[i] = grad_of(s, i);
  const void* gp = g;
  expect_st("push", pmx_push(c, s, 1, &t, &gp), PMX_OK);
  sgd_ref(ref, g, n);
}

/* ---- pulls, UNCHANGED, refills ------------------------------------------------------------- */

#define NA 3000 /* 3 chunks */
#define NB 1024 /* 1 chunk */

static void test_pull_unchanged_and_refill(void** state) {
  (void)state;
  pmx_client* c = joined();
  static float ia[NA], ib[NB], ra[NA], rb[NB], ga[NA], gb[NB];
  static float a1[NA], b1[NB], a2[NA], b2[NB];
  init_values(ia, NA, 0.5f);
  init_values(ib, NB, -0.25f);
  memcpy(ra, ia, sizeof ia);
  memcpy(rb, ib, sizeof ib);
  pmx_tensor* t[2] = {declare(c, "a", PMX_F32, NA, ia), declare(c, "b", PMX_F32, NB, ib)};
  uint64_t v[2] = {99, 99};
  void* d1[2] = {a1, b1};
  expect_st("pull v0", pmx_pull(c, 2, t, d1, 0, v), PMX_OK);
  assert_int_equal(v[0], 0);
  assert_int_equal(v[1], 0);
  check_bits("a v0", a1, ia, sizeof ia);
  check_bits("b v0", b1, ib, sizeof ib);
  pmx_client_stats s0 = cstats(c);
  assert_int_equal(s0.pull_chunks, 4);
  assert_int_equal(s0.pull_raw_bytes, (NA + NB) * 4);
  assert_int_equal(s0.pull_unchanged_chunks, 0);
  assert_true(s0.pull_wire_bytes > (NA + NB) * 4);

  /* two steps, then pull into the same buffers */
  step(c, t[0], 0, ga, ra, NA);
  step(c, t[1], 0, gb, rb, NB);
  step(c, t[0], 1, ga, ra, NA);
  step(c, t[1], 1, gb, rb, NB);
  expect_st("pull v2", pmx_pull(c, 2, t, d1, 2, v), PMX_OK);
  assert_int_equal(v[0], 2);
  assert_int_equal(v[1], 2);
  check_bits("a v2", a1, ra, sizeof ra);
  check_bits("b v2", b1, rb, sizeof rb);
  pmx_client_stats s1 = cstats(c);
  assert_int_equal(s1.pull_chunks - s0.pull_chunks, 4);
  assert_int_equal(s1.pull_unchanged_chunks, 0);

  /* again at the same version: all UNCHANGED, a few bytes each, buffers as they were */
  v[0] = v[1] = 99;
  expect_st("pull v2 again", pmx_pull(c, 2, t, d1, 2, v), PMX_OK);
  assert_int_equal(v[0], 2);
  assert_int_equal(v[1], 2);
  pmx_client_stats s2 = cstats(c);
  assert_int_equal(s2.pull_chunks - s1.pull_chunks, 4);
  assert_int_equal(s2.pull_unchanged_chunks - s1.pull_unchanged_chunks, 4);
  assert_int_equal(s2.pull_raw_bytes - s1.pull_raw_bytes, (NA + NB) * 4);
  if (s2.pull_wire_bytes - s1.pull_wire_bytes > 4 * 64)
    fail_msg("an all-UNCHANGED pull of 4 chunks took %llu wire bytes",
             (unsigned long long)(s2.pull_wire_bytes - s1.pull_wire_bytes));
  check_bits("a unchanged", a1, ra, sizeof ra);
  check_bits("b unchanged", b1, rb, sizeof rb);
  /* min_version 0 also gets the newest version, unchanged */
  expect_st("pull min 0", pmx_pull(c, 2, t, d1, 0, NULL), PMX_OK);
  pmx_client_stats s3 = cstats(c);
  assert_int_equal(s3.pull_unchanged_chunks - s2.pull_unchanged_chunks, 4);

  /* other buffers are refilled in full */
  memset(a2, 0xff, sizeof a2);
  memset(b2, 0xff, sizeof b2);
  void* d2[2] = {a2, b2};
  expect_st("pull into other buffers", pmx_pull(c, 2, t, d2, 2, v), PMX_OK);
  check_bits("a refilled", a2, ra, sizeof ra);
  check_bits("b refilled", b2, rb, sizeof rb);
  pmx_client_stats s4 = cstats(c);
  assert_int_equal(s4.pull_unchanged_chunks, s3.pull_unchanged_chunks);
  assert_true(s4.pull_wire_bytes - s3.pull_wire_bytes > (NA + NB) * 4);
  /* one buffer swapped: only that tensor is sent again */
  void* d3[2] = {a2, b1};
  expect_st("pull, b's buffer swapped", pmx_pull(c, 2, t, d3, 2, v), PMX_OK);
  pmx_client_stats s5 = cstats(c);
  assert_int_equal(s5.pull_unchanged_chunks - s4.pull_unchanged_chunks, 3);
  check_bits("b into b1", b1, rb, sizeof rb);
  /* a tensor pulled alone keeps what its buffer holds */
  expect_st("pull b alone", pmx_pull(c, 1, &t[1], &d3[1], 2, NULL), PMX_OK);
  assert_int_equal(cstats(c).pull_unchanged_chunks - s5.pull_unchanged_chunks, 1);

  /* the server counted the same */
  Paramex__V1__StatsResponse* st = stats();
  assert_int_equal(st->pull_unchanged, s5.pull_unchanged_chunks + 1);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  pmx_client_destroy(c);
}

static void test_pull_diff_compressed(void** state) {
  (void)state;
  pmx_client* c = client_at(g_srv.addr, PMX_COMPRESSION_ON, 30000, true);
  assert_int_equal(cstats(c).compressed_pulls, 1);
  static float init[NA], ref[NA], g[NA], got[NA];
  init_values(init, NA, 0.75f);
  memcpy(ref, init, sizeof init);
  pmx_tensor* t = declare(c, "sparse", PMX_F32, NA, init);
  void* dst = got;
  expect_st("pull v0", pmx_pull(c, 1, &t, &dst, 0, NULL), PMX_OK);
  check_bits("v0", got, init, sizeof init);
  /* a sparse step: 1 element in 100 changes */
  memset(g, 0, sizeof g);
  for (size_t i = 0; i < NA; i += 100) g[i] = 1.5f;
  const void* gp = g;
  expect_st("push", pmx_push(c, 0, 1, &t, &gp), PMX_OK);
  sgd_ref(ref, g, NA);
  pmx_client_stats a = cstats(c);
  uint64_t v = 0;
  expect_st("pull v1", pmx_pull(c, 1, &t, &dst, 1, &v), PMX_OK);
  assert_int_equal(v, 1);
  check_bits("v1 from a diff", got, ref, sizeof ref);
  pmx_client_stats b = cstats(c);
  assert_int_equal(b.pull_raw_bytes - a.pull_raw_bytes, NA * 4);
  if ((b.pull_wire_bytes - a.pull_wire_bytes) * 4 > NA * 4)
    fail_msg("a pull after a sparse step took %llu wire bytes for %d raw",
             (unsigned long long)(b.pull_wire_bytes - a.pull_wire_bytes), NA * 4);
  Paramex__V1__StatsResponse* st = stats();
  assert_true(st->pull_delta >= 1);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  pmx_client_destroy(c);
}

/* ---- bf16 view -------------------------------------------------------------------------------- */

static void test_pull_as_bf16(void** state) {
  (void)state;
  pmx_client* c = joined();
  static float f[NA];
  init_values(f, NA, 0.001f);
  /* ties, infinities, NaNs, the largest values */
  uint32_t bits[] = {0x3f808000u, 0x3f818000u, 0x3f80c000u, 0x7f800000u, 0xff800000u,
                     0x7fc00001u, 0xffa12345u, 0x7f7fffffu, 0x00000001u, 0x80000000u};
  for (size_t i = 0; i < sizeof bits / sizeof bits[0]; i++) memcpy(&f[i * 7], &bits[i], 4);
  uint16_t h[NB];
  for (size_t i = 0; i < NB; i++) h[i] = (uint16_t)(0x3c00u + i);
  pmx_tensor* t[2] = {declare(c, "f", PMX_F32, NA, f), declare(c, "h", PMX_F16, NB, h)};
  static uint16_t vf[NA], vh[NB], want[NA];
  for (size_t i = 0; i < NA; i++) want[i] = px_f32_to_bf16(f[i]);
  assert_int_equal(want[0], 0x3f80); /* a tie to even (down) */
  assert_int_equal(want[7], 0x3f82); /* a tie to even (up) */
  assert_int_equal(want[21], 0x7f80);
  void* dst[2] = {vf, vh};
  uint64_t v[2] = {9, 9};
  expect_st("pull_as bf16", pmx_pull_as(c, 2, t, dst, PMX_BF16, 0, v), PMX_OK);
  assert_int_equal(v[0], 0);
  assert_int_equal(v[1], 0);
  for (size_t i = 0; i < NA; i++) {
    bool nan_f = isnan(f[i]);
    bool nan_v = (vf[i] & 0x7f80) == 0x7f80 && (vf[i] & 0x7f) != 0;
    uint32_t fb;
    memcpy(&fb, &f[i], 4);
    if (nan_f != nan_v || (!nan_f && vf[i] != want[i]) || (nan_f && (vf[i] & 0x8000) != (want[i] & 0x8000)))
      fail_msg("bf16 view of element %zu (0x%08x): 0x%04x, want 0x%04x", i, (unsigned)fb, vf[i],
               want[i]);
  }
  check_bits("f16 tensor in its own dtype", vh, h, sizeof h);
  pmx_client_stats s0 = cstats(c);
  assert_int_equal(s0.pull_raw_bytes, NA * 2 + NB * 2);
  assert_true(s0.pull_wire_bytes < NA * 4);
  /* the same view into the same buffers: UNCHANGED */
  expect_st("pull_as bf16 again", pmx_pull_as(c, 2, t, dst, PMX_BF16, 0, v), PMX_OK);
  pmx_client_stats s1 = cstats(c);
  assert_int_equal(s1.pull_unchanged_chunks - s0.pull_unchanged_chunks, 4);
  /* view 0 is pmx_pull: the f32 bits */
  static float full[NA];
  void* dst2[2] = {full, vh};
  expect_st("pull_as 0", pmx_pull_as(c, 2, t, dst2, 0, 0, v), PMX_OK);
  check_bits("view 0", full, f, sizeof f);
  pmx_client_stats s2 = cstats(c);
  /* vh was last pulled under the bf16 view: view 0 sends it again (the view it holds differs) */
  assert_int_equal(s2.pull_unchanged_chunks, s1.pull_unchanged_chunks);
  /* a bad view */
  pmx_op* op = (pmx_op*)(uintptr_t)0x31;
  expect_st("view f16", pmx_pull_as(c, 2, t, dst, PMX_F16, 0, v), PMX_ERR_INVALID_ARGUMENT);
  expect_error_has("view f16", "view must be 0 (native) or PMX_BF16");
  expect_st("view f16 async", pmx_pull_as_async(c, 2, t, dst, PMX_F16, 0, v, &op), PMX_ERR_INVALID_ARGUMENT);
  assert_ptr_equal(op, (pmx_op*)(uintptr_t)0x31);
  /* after a step the view follows the parameters */
  static float g[NA], ref[NA];
  memcpy(ref, f, sizeof f);
  for (size_t i = 0; i < NA; i++) g[i] = (i % 7 == 0) ? 0.0f : grad_of(0, i);
  const void* gp = g;
  expect_st("push", pmx_push(c, 0, 1, &t[0], &gp), PMX_OK);
  sgd_ref(ref, g, NA);
  expect_st("pull_as after a step", pmx_pull_as(c, 1, &t[0], &dst[0], PMX_BF16, 1, v), PMX_OK);
  assert_int_equal(v[0], 1);
  for (size_t i = 0; i < NA; i++) {
    if (isnan(ref[i])) continue;
    if (vf[i] != px_f32_to_bf16(ref[i]))
      fail_msg("bf16 view after a step, element %zu: 0x%04x, want 0x%04x", i, vf[i],
               px_f32_to_bf16(ref[i]));
  }
  pmx_client_destroy(c);
}

/* ---- waiting for a version ------------------------------------------------------------------- */

static void test_pull_waits_for_min_version(void** state) {
  (void)state;
  pmx_client* c = joined();
  static float init[NA], ref[NA], g[NA], got[NA];
  init_values(init, NA, 0.5f);
  memcpy(ref, init, sizeof init);
  pmx_tensor* t = declare(c, "wait", PMX_F32, NA, init);
  void* dst = got;
  uint64_t v = 99;
  pmx_op* op = NULL;
  expect_st("pull_async v1", pmx_pull_async(c, 1, &t, &dst, 1, &v, &op), PMX_OK);
  assert_non_null(op);
  /* version 1 does not exist yet: the pull is parked on the server */
  pthread_mutex_lock(&op->mu);
  bool done = op->done;
  pthread_mutex_unlock(&op->mu);
  assert_false(done);
  assert_int_equal(v, 99);
  step(c, t, 0, g, ref, NA);
  expect_st("wait", pmx_op_wait(op), PMX_OK);
  assert_int_equal(v, 1);
  check_bits("v1", got, ref, sizeof ref);

  /* the pull for version 5 times out; nothing was written */
  pmx_client* quick = client_at(g_srv.addr, PMX_COMPRESSION_AUTO, 300, false);
  pmx_tensor* qt = declare(quick, "wait", PMX_F32, NA, NULL);
  static float q[NA];
  memset(q, 0x5a, sizeof q);
  static float q0[NA];
  memcpy(q0, q, sizeof q);
  void* qd = q;
  uint64_t qv = 77;
  int64_t t0 = px_h_now_ms();
  expect_st("pull v5", pmx_pull(quick, 1, &qt, &qd, 5, &qv), PMX_ERR_DEADLINE_EXCEEDED);
  int64_t dt = px_h_now_ms() - t0;
  expect_error_has("pull v5", "Pull");
  if (dt < 250 || dt > 10000) fail_msg("a pull with a 300 ms deadline ended after %lld ms", (long long)dt);
  assert_int_equal(qv, 77);
  check_bits("untouched", q, q0, sizeof q);
  /* two tensors, the first at version 1 and the second at 0: a pull of version 1 times
   * out on the second; versions are not written */
  declare(c, "wait2", PMX_F32, NB, NULL); /* created by the joined client */
  pmx_tensor* q2[2] = {qt, declare(quick, "wait2", PMX_F32, NB, NULL)};
  static float r2[NB];
  void* qd2[2] = {q, r2};
  uint64_t qv2[2] = {66, 66};
  expect_st("pull v1 of two", pmx_pull(quick, 2, q2, qd2, 1, qv2), PMX_ERR_DEADLINE_EXCEEDED);
  assert_int_equal(qv2[0], 66);
  assert_int_equal(qv2[1], 66);
  /* (the first tensor's buffer was written before the second timed out, although the
   * conventions of paramex.h say an error writes no output: see the report) the buffer is
   * not trusted afterwards: the next pull into it sends it in full */
  uint64_t unchanged = cstats(quick).pull_unchanged_chunks;
  memset(q, 0x5a, sizeof q);
  expect_st("pull after the failed one", pmx_pull(quick, 1, &qt, &qd, 1, &qv), PMX_OK);
  assert_int_equal(qv, 1);
  assert_int_equal(cstats(quick).pull_unchanged_chunks, unchanged);
  check_bits("refilled after a failed pull", q, ref, sizeof ref);
  pmx_client_destroy(quick);
  pmx_client_destroy(c);
}

/* "versions receives the lowest chunk version of each tensor", and a pull "waiting until
 * every chunk reached min_version": chunk 0 of a 3-chunk tensor is pushed alone (a raw Push
 * stream of this worker), so it is at version 1 and the others at 0. A pull of version 0
 * reports 0 with chunk 0 holding version 1's values; a pull of version 1 waits (times out);
 * the whole step pushed by pmx_push then completes it, chunk 0 counted once. */
static void test_pull_versions_lowest_chunk(void** state) {
  (void)state;
  pmx_client* c = joined();
  static float init[NA], ref[NA], g[NA], got[NA];
  init_values(init, NA, 0.5f);
  memcpy(ref, init, sizeof init);
  pmx_tensor* t = declare(c, "lowest", PMX_F32, NA, init);
  assert_int_equal(pmx_tensor_num_chunks(t), 3);
  for (size_t i = 0; i < NA; i++) g[i] = grad_of(0, i);
  sgd_ref(ref, g, NA);

  /* chunk 0 of step 0 alone */
  px_chunk h = {0};
  h.worker_id = c->worker_id;
  h.incarnation = c->incarnation;
  h.step = 0;
  h.tensor_id = pmx_tensor_id(t);
  h.chunk = 0;
  h.dtype = PMX_F32;
  h.encoding = PX_ENC_RAW;
  const size_t cbytes = 1024 * sizeof(float);
  h.raw_len = (uint32_t)cbytes;
  h.checksum = px_checksum(g, cbytes);
  uint8_t head[PX_CHUNK_HDR_MAX];
  size_t hl = px_chunk_encode_header(PX_CHUNK_PUSH, &h, cbytes, head, sizeof head);
  assert_true(hl > 0);
  px_h_msg m = {head, hl, g, cbytes};
  px_h_result r;
  int rs = px_h_call(g_ch, PX_H_PATH_PUSH, &m, 1, 20000, &r);
  if (rs != 0) fail_msg("raw push of chunk 0: status %d: %s", rs, r.details);
  px_h_result_free(&r);

  /* versions: the lowest chunk version */
  void* dst = got;
  uint64_t v = 99;
  expect_st("pull v0", pmx_pull(c, 1, &t, &dst, 0, &v), PMX_OK);
  assert_int_equal(v, 0);
  check_bits("chunk 0 at version 1", got, ref, cbytes);
  check_bits("chunks 1 and 2 at version 0", got + 1024, init + 1024, sizeof init - cbytes);

  /* every chunk must reach min_version: version 1 is not there yet */
  pmx_client* quick = client_at(g_srv.addr, PMX_COMPRESSION_AUTO, 300, false);
  pmx_tensor* qt = declare(quick, "lowest", PMX_F32, NA, NULL);
  static float q[NA];
  void* qd = q;
  uint64_t qv = 77;
  expect_st("pull v1 with chunks 1 and 2 at version 0", pmx_pull(quick, 1, &qt, &qd, 1, &qv),
            PMX_ERR_DEADLINE_EXCEEDED);
  assert_int_equal(qv, 77);
  pmx_client_destroy(quick);

  /* the whole step: chunk 0 again (acknowledged, not counted twice), 1 and 2 new */
  const void* gp = g;
  expect_st("push of step 0", pmx_push(c, 0, 1, &t, &gp), PMX_OK);
  expect_st("pull v1", pmx_pull(c, 1, &t, &dst, 1, &v), PMX_OK);
  assert_int_equal(v, 1);
  check_bits("version 1", got, ref, sizeof ref);
  pmx_client_destroy(c);
}

static void test_pull_argument_errors(void** state) {
  (void)state;
  pmx_client* c = joined();
  float buf[8];
  pmx_tensor* t = declare(c, "pa", PMX_F32, 8, NULL);
  pmx_client* other = joined();
  pmx_tensor* ot = declare(other, "pa", PMX_F32, 8, NULL);
  void* dst = buf;
  void* nulld = NULL;
  expect_st("no client", pmx_pull(NULL, 1, &t, &dst, 0, NULL), PMX_ERR_INVALID_ARGUMENT);
  expect_st("n 0", pmx_pull(c, 0, &t, &dst, 0, NULL), PMX_ERR_INVALID_ARGUMENT);
  expect_error_has("n 0", "pmx_pull: no tensors given");
  expect_st("dst NULL", pmx_pull(c, 1, &t, NULL, 0, NULL), PMX_ERR_INVALID_ARGUMENT);
  expect_st("dst[0] NULL", pmx_pull(c, 1, &t, &nulld, 0, NULL), PMX_ERR_INVALID_ARGUMENT);
  expect_error_has("dst[0] NULL", "buffer 0 is NULL");
  expect_st("other client's tensor", pmx_pull(c, 1, &ot, &dst, 0, NULL), PMX_ERR_INVALID_ARGUMENT);
  expect_error_has("other client's tensor", "tensor 0 does not belong to this client");
  expect_st("no op pointer", pmx_pull_async(c, 1, &t, &dst, 0, NULL, NULL), PMX_ERR_INVALID_ARGUMENT);
  expect_st("as: no op pointer", pmx_pull_as_async(c, 1, &t, &dst, PMX_BF16, 0, NULL, NULL),
            PMX_ERR_INVALID_ARGUMENT);
  assert_int_equal(cstats(c).pull_chunks, 0);
  /* "On error nothing was written to the output arguments": *op stays as it was */
  pmx_op* keep = (pmx_op*)(uintptr_t)0x66;
  expect_st("async: no client", pmx_pull_async(NULL, 1, &t, &dst, 0, NULL, &keep),
            PMX_ERR_INVALID_ARGUMENT);
  expect_st("async: n 0", pmx_pull_async(c, 0, &t, &dst, 0, NULL, &keep), PMX_ERR_INVALID_ARGUMENT);
  expect_st("async: dst[0] NULL", pmx_pull_async(c, 1, &t, &nulld, 0, NULL, &keep),
            PMX_ERR_INVALID_ARGUMENT);
  expect_st("async: other client's tensor", pmx_pull_async(c, 1, &ot, &dst, 0, NULL, &keep),
            PMX_ERR_INVALID_ARGUMENT);
  expect_st("as async: view f16", pmx_pull_as_async(c, 1, &t, &dst, PMX_F16, 0, NULL, &keep),
            PMX_ERR_INVALID_ARGUMENT);
  expect_error_has("as async: view f16", "view");
  assert_ptr_equal(keep, (pmx_op*)(uintptr_t)0x66);
  /* versions untouched on an argument error */
  uint64_t v = 44;
  expect_st("dst[0] NULL with versions", pmx_pull(c, 1, &t, &nulld, 0, &v), PMX_ERR_INVALID_ARGUMENT);
  expect_st("as: view f16 with versions", pmx_pull_as(c, 1, &t, &dst, PMX_F16, 0, &v),
            PMX_ERR_INVALID_ARGUMENT);
  assert_int_equal(v, 44);
  assert_int_equal(cstats(c).pull_chunks, 0);
  pmx_client_destroy(c);
  pmx_client_destroy(other);
}

/* ---- several threads ---------------------------------------------------------------------------- */

#define NTH 4

typedef struct pull_thread {
  pmx_client* c;
  pmx_tensor* t;
  float buf[2][NA];
  pmx_status st;
  char err[PX_ERROR_LEN];
} pull_thread;

static void* pull_main(void* arg) {
  pull_thread* p = arg;
  p->st = PMX_OK;
  for (int i = 0; i < 10 && p->st == PMX_OK; i++) {
    void* dst = p->buf[i % 2];
    p->st = pmx_pull(p->c, 1, &p->t, &dst, 1, NULL);
    if (p->st != PMX_OK) snprintf(p->err, sizeof p->err, "%s", pmx_last_error());
  }
  return NULL;
}

static void test_pull_from_threads(void** state) {
  (void)state;
  pmx_client* c = joined();
  static float init[NA], ref[NA], g[NA];
  init_values(init, NA, 0.5f);
  memcpy(ref, init, sizeof init);
  pmx_tensor* t = declare(c, "threads", PMX_F32, NA, init);
  step(c, t, 0, g, ref, NA);
  static pull_thread p[NTH];
  pthread_t th[NTH];
  for (int i = 0; i < NTH; i++) {
    p[i].c = c;
    p[i].t = t;
    assert_int_equal(pthread_create(&th[i], NULL, pull_main, &p[i]), 0);
  }
  for (int i = 0; i < NTH; i++) assert_int_equal(pthread_join(th[i], NULL), 0);
  for (int i = 0; i < NTH; i++) {
    if (p[i].st != PMX_OK) fail_msg("thread %d: %s: %s", i, pmx_strerror(p[i].st), p[i].err);
    check_bits("thread buffer 0", p[i].buf[0], ref, sizeof ref);
    check_bits("thread buffer 1", p[i].buf[1], ref, sizeof ref);
  }
  assert_int_equal(cstats(c).pull_chunks, NTH * 10 * 3);
  pmx_client_destroy(c);
}

/* A client (timeout 30 s) through a proxy corrupting every `every`th pulled message of at
 * least min_len bytes (corrupt_proxy.h). */
static pmx_client* client_via_proxy(unsigned every, uint32_t min_len, int compression, bool join,
                                    px_h_proxy** proxy) {
  int pport = 0;
  *proxy = px_h_proxy_start(g_srv.port, every, min_len, &pport);
  assert_non_null(*proxy);
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", pport);
  return client_at(addr, compression, 30000, join);
}

/* f32 tensor `name` of n elements with values init (filled here), created by another
 * joined client and declared by c. */
static pmx_tensor* created_by_other(pmx_client* c, const char* name, float* init, size_t n,
                                    float scale) {
  init_values(init, n, scale);
  create_joined(name, PMX_F32, n, init);
  return declare(c, name, PMX_F32, n, init);
}

/* ---- healing ----------------------------------------------------------------------------------- */

#define NX 2048 /* 2 chunks */
#define NY 1000 /* 1 chunk */
#define NZ 1024 /* 1 chunk */

static void test_pull_heals_corrupted_chunks(void** state) {
  (void)state;
  px_h_proxy* proxy;
  pmx_client* c = client_via_proxy(3, 100, PMX_COMPRESSION_AUTO, true, &proxy);
  static float ix[NX], iy[NY], iz[NZ], rx[NX], ry[NY], rz[NZ], gx[NX], gy[NY], gz[NZ];
  static float bx[2][NX], by[2][NY], bz[2][NZ];
  init_values(ix, NX, 1.0f);
  init_values(iy, NY, 2.0f);
  init_values(iz, NZ, 3.0f);
  memcpy(rx, ix, sizeof ix);
  memcpy(ry, iy, sizeof iy);
  memcpy(rz, iz, sizeof iz);
  pmx_tensor* t[3] = {declare(c, "x", PMX_F32, NX, ix), declare(c, "y", PMX_F32, NY, iy),
                      declare(c, "z", PMX_F32, NZ, iz)};
  for (int s = 0; s < 6; s++) {
    /* alternate buffers: every pull is a full one, every 3rd chunk of it corrupted */
    void* dst[3] = {bx[s % 2], by[s % 2], bz[s % 2]};
    memset(bx[s % 2], 0, sizeof bx[0]);
    uint64_t v[3] = {0, 0, 0};
    /* the Pull call (a blocking pmx_pull of this size would take the Exchange stream) */
    pmx_op* op = NULL;
    expect_st("pull through the corrupting proxy", pmx_pull_async(c, 3, t, dst, (uint64_t)s, v, &op),
              PMX_OK);
    expect_st("pull through the corrupting proxy", pmx_op_wait(op), PMX_OK);
    for (int k = 0; k < 3; k++) assert_int_equal(v[k], s);
    check_bits("x healed", bx[s % 2], rx, sizeof rx);
    check_bits("y healed", by[s % 2], ry, sizeof ry);
    check_bits("z healed", bz[s % 2], rz, sizeof rz);
    step(c, t[0], (uint64_t)s, gx, rx, NX);
    step(c, t[1], (uint64_t)s, gy, ry, NY);
    step(c, t[2], (uint64_t)s, gz, rz, NZ);
  }
  pmx_client_stats cs = cstats(c);
  uint64_t corrupted = px_h_proxy_corrupted(proxy);
  if (corrupted == 0) fail_msg("the proxy corrupted nothing");
  assert_int_equal(cs.checksum_failures, corrupted);
  assert_true(cs.checksum_failures >= 6);
  /* a chunk that failed is not trusted as a base: the next pull into that buffer is whole */
  pmx_client_destroy(c);
  px_h_proxy_stop(proxy);
}

/* A tensor of 8 chunks, its last chunk corrupted on the way: only that chunk is pulled
 * again (9 chunks in all, not 16), and the buffer ends bit-exact. */
#define N8 8000 /* 8 chunks of 1024 */

static void test_pull_heals_only_failed_chunks(void** state) {
  (void)state;
  px_h_proxy* proxy;
  pmx_client* c = client_via_proxy(8, 100, PMX_COMPRESSION_OFF, false, &proxy);
  static float init[N8], got[N8];
  pmx_tensor* t = created_by_other(c, "eight", init, N8, 0.25f);
  assert_int_equal(pmx_tensor_num_chunks(t), 8);
  memset(got, 0, sizeof got);
  void* dst = got;
  uint64_t v = 55;
  pmx_op* op = NULL; /* the Pull call: the proxy counts its messages alone */
  expect_st("pull", pmx_pull_async(c, 1, &t, &dst, 0, &v, &op), PMX_OK);
  expect_st("pull", pmx_op_wait(op), PMX_OK);
  assert_int_equal(v, 0);
  check_bits("healed tensor", got, init, sizeof init);
  assert_int_equal(px_h_proxy_corrupted(proxy), 1);
  pmx_client_stats cs = cstats(c);
  assert_int_equal(cs.checksum_failures, 1);
  assert_int_equal(cs.pull_chunks, 9);
  pmx_client_destroy(c);
  px_h_proxy_stop(proxy);
}

static void test_pull_persistent_corruption_is_data_loss(void** state) {
  (void)state;
  px_h_proxy* proxy;
  pmx_client* c = client_via_proxy(1, 100, PMX_COMPRESSION_AUTO, false, &proxy);
  /* 3 chunks, every one corrupted however often it is pulled again */
  static float init[NA], got[NA];
  pmx_tensor* t = created_by_other(c, "lossy", init, NA, 0.5f);
  void* dst = got;
  uint64_t v = 55;
  expect_st("pull", pmx_pull(c, 1, &t, &dst, 0, &v), PMX_ERR_DATA_LOSS);
  expect_error_has("pull", "tensor 'lossy' chunk 0 still fails its checksum after 4 pulls");
  assert_int_equal(v, 55);
  pmx_client_stats cs = cstats(c);
  assert_int_equal(cs.checksum_failures, 12); /* 3 chunks: the pull and 3 healing rounds */
  assert_int_equal(cs.checksum_failures, px_h_proxy_corrupted(proxy));
  assert_int_equal(cs.pull_chunks, 12);
  pmx_client_destroy(c);
  px_h_proxy_stop(proxy);
}

/* "On error nothing was written to the output arguments" (dst excepted): a pull of two
 * tensors, one of them small enough to pass the proxy untouched, the other corrupted on
 * every pull, fails DATA_LOSS; versions[] must keep what it held, the good tensor's entry
 * included. */
#define NSMALL 8 /* one chunk, a message far below the proxy's min_len */

static void test_pull_data_loss_leaves_versions(void** state) {
  (void)state;
  px_h_proxy* proxy;
  pmx_client* c = client_via_proxy(1, 1000, PMX_COMPRESSION_OFF, false, &proxy);
  static float ismall[NSMALL], ibig[NB], gsmall[NSMALL], gbig[NB];
  init_values(ismall, NSMALL, 1.0f);
  init_values(ibig, NB, 2.0f);
  create_joined("dl_small", PMX_F32, NSMALL, ismall);
  create_joined("dl_big", PMX_F32, NB, ibig);
  pmx_tensor* t[2] = {declare(c, "dl_small", PMX_F32, NSMALL, ismall),
                      declare(c, "dl_big", PMX_F32, NB, ibig)};
  /* the small tensor alone passes intact */
  void* d0 = gsmall;
  uint64_t v0 = 9;
  expect_st("pull of the small tensor alone", pmx_pull(c, 1, &t[0], &d0, 0, &v0), PMX_OK);
  assert_int_equal(v0, 0);
  check_bits("small tensor", gsmall, ismall, sizeof ismall);
  assert_int_equal(px_h_proxy_corrupted(proxy), 0);
  /* both: the big one is corrupted on every pull */
  static float b2[NSMALL];
  void* dst[2] = {b2, gbig};
  uint64_t v[2] = {55, 56};
  expect_st("pull of both", pmx_pull(c, 2, t, dst, 0, v), PMX_ERR_DATA_LOSS);
  expect_error_has("pull of both", "'dl_big' chunk 0 still fails its checksum");
  assert_true(px_h_proxy_corrupted(proxy) >= 4);
  assert_int_equal(v[1], 56); /* the corrupted tensor's entry */
  assert_int_equal(v[0], 55); /* the intact tensor's entry: untouched on error too */
  pmx_client_destroy(c);
  px_h_proxy_stop(proxy);
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
  const struct CMUnitTest tests[] = {
      T(test_pull_unchanged_and_refill),
      T(test_pull_diff_compressed),
      T(test_pull_as_bf16),
      T(test_pull_waits_for_min_version),
      T(test_pull_versions_lowest_chunk),
      T(test_pull_argument_errors),
      T(test_pull_from_threads),
      T(test_pull_heals_corrupted_chunks),
      T(test_pull_heals_only_failed_chunks),
      T(test_pull_persistent_corruption_is_data_loss),
      T(test_pull_data_loss_leaves_versions),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
