/* Unit tests of common/codec/checksum.c: XXH3-64 of known vectors. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "codec/checksum.h"
#include "codec/dtype.h"
#include "codec/initializer.h"

/* Chunk checksums are XXH3-64 with seed 0. Expected values: "" and "a" are the published
 * anchors of the xxHash project; the rest are LLVM's independent implementation's test
 * vectors (llvm/unittests/Support/xxhashTest.cpp: a xorshift-filled buffer, prefixes of
 * lengths that cross every code path of the algorithm). */
static void test_checksum_vectors(void** state) {
  (void)state;
  assert_true(px_checksum("", 0) == UINT64_C(0x2D06800538D394C2));
  assert_true(px_checksum(NULL, 0) == UINT64_C(0x2D06800538D394C2));
  assert_true(px_checksum("a", 1) == UINT64_C(0xE6C632B61E964E1F));
  static uint8_t a[2243];
  uint64_t x = 1;
  for (size_t i = 0; i < sizeof a; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    a[i] = (uint8_t)x;
  }
  static const struct { size_t len; uint64_t want; } v[] = {
      {0, UINT64_C(0x2d06800538d394c2)},    {1, UINT64_C(0xd0d496e05c553485)},
      {2, UINT64_C(0x84d625edb7055eac)},    {3, UINT64_C(0x6ea2d59aca5c3778)},
      {4, UINT64_C(0xbf65290914e80242)},    {8, UINT64_C(0xabc1413da6cd0209)},
      {9, UINT64_C(0x8bc89400bfed51f6)},    {16, UINT64_C(0x7e46916754d7c9b8)},
      {17, UINT64_C(0xed4be912ba5f836d)},   {32, UINT64_C(0xf59b59b58c304fd1)},
      {64, UINT64_C(0xfa5271fcce0db1c3)},   {65, UINT64_C(0x79c42431727f1012)},
      {128, UINT64_C(0x06a146ee9a2da378)},  {129, UINT64_C(0xbc7138129bf065da)},
      {403, UINT64_C(0xcefeb3ffa532ad8c)},  {512, UINT64_C(0xcdfa6b6268e3650f)},
      {513, UINT64_C(0x4bb5d42742f9765f)},  {2048, UINT64_C(0x330ce110cbb79eae)},
      {2049, UINT64_C(0x3ba6afa0249fef9a)}, {2240, UINT64_C(0xd61d4d2a94e926a8)},
      {2243, UINT64_C(0x0979f786a24edde7)},
  };
  for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
    if (px_checksum(a, v[i].len) != v[i].want)
      fail_msg("XXH3-64 of %zu bytes: %016llx, want %016llx", v[i].len,
               (unsigned long long)px_checksum(a, v[i].len), (unsigned long long)v[i].want);
  }
  /* one flipped bit changes it */
  a[500] ^= 1;
  assert_true(px_checksum(a, sizeof a) != UINT64_C(0x0979f786a24edde7));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_checksum_vectors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
