/* Unit tests of common/wire/pb_fields.c: varints at their boundaries, messages written
 * with px_pb_put_* read back by protobuf-c (the independent implementation), messages
 * packed by protobuf-c walked by px_pb_next field by field, and every malformed input
 * refused: truncated varints and lengths, field 0, overlong varints, other wire types. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "paramex.pb-c.h"
#include "wire/pb_fields.h"

static void test_varint_boundaries(void** state) {
  (void)state;
  static const struct { uint64_t v; size_t len; } cases[] = {
      {0, 1}, {1, 1}, {127, 1}, {128, 2}, {16383, 2}, {16384, 3}, {UINT32_MAX, 5},
      {UINT64_MAX, 10}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    uint8_t buf[PX_PB_VARINT_MAX + 4];
    memset(buf, 0xEE, sizeof buf);
    size_t n = px_pb_put_uint(buf, 3, cases[i].v);
    assert_int_equal(n, 1 + cases[i].len);
    const uint8_t* p = buf;
    px_pb_field f;
    assert_int_equal(px_pb_next(&p, buf + n, &f), 1);
    assert_int_equal(f.field, 3);
    assert_int_equal(f.wire_type, PX_PB_WT_VARINT);
    assert_true(f.value == cases[i].v);
    assert_ptr_equal(p, buf + n);
    assert_int_equal(px_pb_next(&p, buf + n, &f), 0);
    /* one byte short: truncated */
    p = buf;
    assert_int_equal(px_pb_next(&p, buf + n - 1, &f), -1);
  }
}

/* A StepResponse written by hand, read by protobuf-c. */
static void test_written_fields_unpack(void** state) {
  (void)state;
  uint8_t buf[256];
  size_t n = 0;
  n += px_pb_put_uint(buf + n, 1, 14);
  const char* msg = "not so fast";
  n += px_pb_put_len_head(buf + n, 2, strlen(msg));
  memcpy(buf + n, msg, strlen(msg));
  n += strlen(msg);
  n += px_pb_put_uint(buf + n, 3, 300);
  for (int k = 0; k < 2; k++) {
    uint8_t chunk[40];
    memset(chunk, 'a' + k, sizeof chunk);
    n += px_pb_put_len_head(buf + n, 5, sizeof chunk - (size_t)k);
    memcpy(buf + n, chunk, sizeof chunk - (size_t)k);
    n += sizeof chunk - (size_t)k;
  }
  Paramex__V1__StepResponse* r = paramex__v1__step_response__unpack(NULL, n, buf);
  assert_non_null(r);
  assert_int_equal(r->code, 14);
  assert_string_equal(r->message, msg);
  assert_int_equal(r->accepted, 300);
  assert_int_equal(r->duplicate, 0);
  assert_int_equal(r->n_pull_chunks, 2);
  assert_int_equal(r->pull_chunks[0].len, 40);
  assert_int_equal(r->pull_chunks[1].len, 39);
  assert_int_equal(r->pull_chunks[1].data[0], 'b');
  paramex__v1__step_response__free_unpacked(r, NULL);
}

/* A StepRequest packed by protobuf-c, walked by px_pb_next. */
static void test_packed_message_walks(void** state) {
  (void)state;
  uint8_t c0[3] = {1, 2, 3}, c1[200];
  memset(c1, 7, sizeof c1);
  ProtobufCBinaryData chunks[2] = {{sizeof c0, c0}, {sizeof c1, c1}};
  Paramex__V1__PullRequest pull = PARAMEX__V1__PULL_REQUEST__INIT;
  pull.worker_id = 9;
  pull.min_version = 1234567;
  Paramex__V1__StepRequest req = PARAMEX__V1__STEP_REQUEST__INIT;
  req.n_push_chunks = 2;
  req.push_chunks = chunks;
  req.pull = &pull;
  size_t len = paramex__v1__step_request__get_packed_size(&req);
  uint8_t* buf = malloc(len);
  assert_non_null(buf);
  paramex__v1__step_request__pack(&req, buf);
  const uint8_t *p = buf, *end = buf + len;
  px_pb_field f;
  assert_int_equal(px_pb_next(&p, end, &f), 1);
  assert_int_equal(f.field, 1);
  assert_int_equal(f.wire_type, PX_PB_WT_LEN);
  assert_int_equal(f.len, 3);
  assert_memory_equal(f.data, c0, 3);
  assert_int_equal(px_pb_next(&p, end, &f), 1);
  assert_int_equal(f.len, 200);
  assert_memory_equal(f.data, c1, 200);
  assert_int_equal(px_pb_next(&p, end, &f), 1);
  assert_int_equal(f.field, 2);
  Paramex__V1__PullRequest* back = paramex__v1__pull_request__unpack(NULL, f.len, f.data);
  assert_non_null(back);
  assert_int_equal(back->worker_id, 9);
  assert_int_equal(back->min_version, 1234567);
  paramex__v1__pull_request__free_unpacked(back, NULL);
  assert_int_equal(px_pb_next(&p, end, &f), 0);
  free(buf);
}

static void test_malformed_refused(void** state) {
  (void)state;
  static const struct { uint8_t b[12]; size_t n; } bad[] = {
      {{0x08}, 1},                                   /* tag without its value */
      {{0x00, 0x01}, 2},                             /* field 0 */
      {{0x0a, 0x05, 'a', 'b'}, 4},                   /* length past the end */
      {{0x0a}, 1},                                   /* length missing */
      {{0x09, 1, 2, 3, 4, 5, 6, 7, 8}, 9},           /* fixed64: not used by paramex */
      {{0x0d, 1, 2, 3, 4}, 5},                       /* fixed32 */
      {{0x0b}, 1},                                   /* start group */
      {{0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, 12}, /* 11-byte varint */
      {{0x80}, 1},                                   /* truncated tag */
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    const uint8_t* p = bad[i].b;
    px_pb_field f;
    if (px_pb_next(&p, bad[i].b + bad[i].n, &f) != -1) fail_msg("case %zu was not refused", i);
  }
  /* an empty message is over at once */
  const uint8_t* p = bad[0].b;
  px_pb_field f;
  assert_int_equal(px_pb_next(&p, p, &f), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_varint_boundaries),
      cmocka_unit_test(test_written_fields_unpack),
      cmocka_unit_test(test_packed_message_walks),
      cmocka_unit_test(test_malformed_refused),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
