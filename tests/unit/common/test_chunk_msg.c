/* Data-plane framing: nanopb (common/wire) and protobuf-c, generated from the same
 * .proto, must produce and accept the same bytes; hostile bytes are rejected. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "codec/checksum.h"
#include "util/iov.h"
#include "wire/chunk_msg.h"
#include "paramex.pb-c.h"

static uint8_t payload[5000];

static void fill_payload(void) {
  for (size_t i = 0; i < sizeof payload; i++) payload[i] = (uint8_t)(i * 37u + 11u);
}

static px_chunk sample_push(void) {
  px_chunk c = {0};
  c.worker_id = 3;
  c.incarnation = 1795611678911156ull;
  c.step = 42;
  c.tensor_id = 7;
  c.chunk = 9;
  c.encoding = 0;
  c.dtype = 1;
  c.raw_len = sizeof payload;
  c.checksum = px_checksum(payload, sizeof payload);
  return c;
}

/* nanopb header + payload is exactly what protobuf-c packs for the same message. */
static void test_push_bytes_identical(void** st) {
  (void)st;
  px_chunk c = sample_push();
  uint8_t head[PX_CHUNK_HDR_MAX];
  size_t hl = px_chunk_encode_header(PX_CHUNK_PUSH, &c, sizeof payload, head, sizeof head);
  assert_true(hl > 0);
  Paramex__V1__PushChunk m = PARAMEX__V1__PUSH_CHUNK__INIT;
  m.worker_id = c.worker_id;
  m.incarnation = c.incarnation;
  m.step = c.step;
  m.tensor_id = c.tensor_id;
  m.chunk = c.chunk;
  m.dtype = PARAMEX__V1__DTYPE__DTYPE_F32;
  m.raw_len = c.raw_len;
  m.checksum = c.checksum;
  m.payload.data = payload;
  m.payload.len = sizeof payload;
  size_t n = paramex__v1__push_chunk__get_packed_size(&m);
  uint8_t* packed = malloc(n);
  paramex__v1__push_chunk__pack(&m, packed);
  assert_int_equal(n, hl + sizeof payload);
  assert_memory_equal(packed, head, hl);
  assert_memory_equal(packed + hl, payload, sizeof payload);
  free(packed);
}

static void test_pull_bytes_identical(void** st) {
  (void)st;
  px_chunk c = {0};
  c.tensor_id = 2;
  c.chunk = 1;
  c.version = 77;
  c.base_version = 76;
  c.encoding = 1;
  c.dtype = 1;
  c.raw_len = 4096;
  c.checksum = 0xfeedfacecafebeefull;
  uint8_t head[PX_CHUNK_HDR_MAX];
  size_t hl = px_chunk_encode_header(PX_CHUNK_PULL, &c, 0, head, sizeof head);
  Paramex__V1__PullChunk m = PARAMEX__V1__PULL_CHUNK__INIT;
  m.tensor_id = 2;
  m.chunk = 1;
  m.version = 77;
  m.base_version = 76;
  m.encoding = PARAMEX__V1__ENCODING__ENCODING_UNCHANGED;
  m.dtype = PARAMEX__V1__DTYPE__DTYPE_F32;
  m.raw_len = 4096;
  m.checksum = c.checksum;
  size_t n = paramex__v1__pull_chunk__get_packed_size(&m);
  uint8_t packed[128];
  paramex__v1__pull_chunk__pack(&m, packed);
  assert_int_equal(n, hl);
  assert_memory_equal(packed, head, hl);
}

/* protobuf-c packs, nanopb parses, whatever the segmentation of the received bytes. */
static void test_parse_protobufc_any_split(void** st) {
  (void)st;
  Paramex__V1__PushChunk m = PARAMEX__V1__PUSH_CHUNK__INIT;
  m.worker_id = 1;
  m.incarnation = 5;
  m.step = 1000000000000ull;
  m.tensor_id = 4;
  m.chunk = 3;
  m.dtype = PARAMEX__V1__DTYPE__DTYPE_F32;
  m.raw_len = sizeof payload;
  m.checksum = px_checksum(payload, sizeof payload);
  m.payload.data = payload;
  m.payload.len = sizeof payload;
  size_t n = paramex__v1__push_chunk__get_packed_size(&m);
  uint8_t* packed = malloc(n);
  paramex__v1__push_chunk__pack(&m, packed);
  const size_t splits[] = {1, 2, 3, 7, 64, 1000, 4096, n};
  for (size_t k = 0; k < sizeof splits / sizeof splits[0]; k++) {
    size_t seglen = splits[k];
    size_t nseg = (n + seglen - 1) / seglen;
    px_iov* seg = calloc(nseg + 2, sizeof *seg);
    size_t ns = 0;
    seg[ns++] = (px_iov){packed, 0}; /* an empty segment first */
    for (size_t off = 0; off < n; off += seglen)
      seg[ns++] = (px_iov){packed + off, off + seglen <= n ? seglen : n - off};
    px_chunk c;
    char err[128];
    assert_int_equal(px_chunk_parse(PX_CHUNK_PUSH, seg, ns, &c, err, sizeof err), 0);
    assert_int_equal(c.worker_id, 1);
    assert_int_equal(c.incarnation, 5);
    assert_true(c.step == 1000000000000ull);
    assert_int_equal(c.tensor_id, 4);
    assert_int_equal(c.chunk, 3);
    assert_int_equal(c.dtype, 1);
    assert_int_equal(c.raw_len, sizeof payload);
    assert_true(c.has_payload);
    assert_int_equal(c.payload_len, sizeof payload);
    uint8_t out[sizeof payload];
    memset(out, 0, sizeof out);
    assert_int_equal(px_chunk_copy_payload(&c, seg, ns, out, sizeof out), 0);
    assert_memory_equal(out, payload, sizeof payload);
    /* a destination that is too small is refused, not overrun */
    assert_int_equal(px_chunk_copy_payload(&c, seg, ns, out, sizeof out - 1), -1);
    free(seg);
  }
  free(packed);
}

/* Payload before the header fields is legal protobuf and still parses. */
static void test_payload_first(void** st) {
  (void)st;
  uint8_t msg[64];
  size_t n = 0;
  msg[n++] = (15 << 3) | 2;
  msg[n++] = 4;
  memcpy(msg + n, "abcd", 4);
  n += 4;
  msg[n++] = (4 << 3) | 0; /* tensor_id = 9 */
  msg[n++] = 9;
  px_iov seg = {msg, n};
  px_chunk c;
  char err[128];
  assert_int_equal(px_chunk_parse(PX_CHUNK_PUSH, &seg, 1, &c, err, sizeof err), 0);
  assert_int_equal(c.tensor_id, 9);
  assert_int_equal(c.payload_len, 4);
  char out[4];
  assert_int_equal(px_chunk_copy_payload(&c, &seg, 1, out, 4), 0);
  assert_memory_equal(out, "abcd", 4);
}

static void expect_malformed(const uint8_t* msg, size_t n) {
  px_iov seg = {msg, n};
  px_chunk c;
  char err[128] = "";
  assert_int_equal(px_chunk_parse(PX_CHUNK_PUSH, &seg, 1, &c, err, sizeof err), -1);
  assert_non_null(strstr(err, "malformed PushChunk"));
}

static void test_malformed(void** st) {
  (void)st;
  /* a payload length that runs past the message */
  const uint8_t past[] = {(15 << 3) | 2, 0x80, 0x80, 0x80, 0x02, 'x'};
  expect_malformed(past, sizeof past);
  /* a truncated varint */
  const uint8_t trunc[] = {(3 << 3) | 0, 0xff, 0xff};
  expect_malformed(trunc, sizeof trunc);
  /* wrong wire type for a varint field */
  const uint8_t wt[] = {(1 << 3) | 2, 1, 0};
  expect_malformed(wt, sizeof wt);
  /* garbage */
  const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  expect_malformed(junk, sizeof junk);
  /* field number 0 */
  const uint8_t f0[] = {0x00, 0x01};
  expect_malformed(f0, sizeof f0);
  /* the payload sent as a varint (found by fuzz_chunk: it crashed the parser) */
  const uint8_t pv[] = {0x78, 0x00};
  expect_malformed(pv, sizeof pv);
  /* ... or as a fixed64 / fixed32 */
  const uint8_t p64[] = {(15 << 3) | 1, 1, 2, 3, 4, 5, 6, 7, 8};
  expect_malformed(p64, sizeof p64);
  const uint8_t p32[] = {(15 << 3) | 5, 1, 2, 3, 4};
  expect_malformed(p32, sizeof p32);
}

static void test_empty_message(void** st) {
  (void)st;
  px_chunk c;
  char err[64];
  assert_int_equal(px_chunk_parse(PX_CHUNK_PULL, NULL, 0, &c, err, sizeof err), 0);
  assert_false(c.has_payload);
  assert_int_equal(c.payload_len, 0);
  assert_int_equal(c.tensor_id, 0);
  /* a PushChunk with no field set is no chunk (it was once reported as a stale
   * incarnation 0) */
  assert_int_equal(px_chunk_parse(PX_CHUNK_PUSH, NULL, 0, &c, err, sizeof err), -1);
  assert_string_equal(err, "empty PushChunk (no field set)");
}

static void test_header_too_small_buffer(void** st) {
  (void)st;
  px_chunk c = sample_push();
  uint8_t head[8];
  assert_int_equal(px_chunk_encode_header(PX_CHUNK_PUSH, &c, 10, head, sizeof head), 0);
}

int main(void) {
  fill_payload();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_push_bytes_identical),
      cmocka_unit_test(test_pull_bytes_identical),
      cmocka_unit_test(test_parse_protobufc_any_split),
      cmocka_unit_test(test_payload_first),
      cmocka_unit_test(test_malformed),
      cmocka_unit_test(test_empty_message),
      cmocka_unit_test(test_header_too_small_buffer),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
