/* Unit tests of common/util/scratch.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "codec/checksum.h"
#include "codec/dtype.h"
#include "codec/payload.h"
#include "util/scratch.h"
#include "codec/transform.h"
#include "codec/zstdframe.h"
#include "util/iov.h"
#include "wire/chunk_msg.h"

/* ---- messages in segments ----------------------------------------------------------------- */

/* How a message is cut into segments. */
enum {
  SPLIT_ONE,      /* one contiguous segment */
  SPLIT_BYTES,    /* one byte per segment */
  SPLIT_HDR,      /* header | payload: the payload is contiguous (zero-copy path) */
  SPLIT_SMALL,    /* random sizes 0..36, many empty */
  SPLIT_LARGE,    /* random sizes 0..4096, some empty */
  SPLIT_EMPTIES,  /* header | empty | empty | half | empty | other half | empty */
  SPLIT_ODD,      /* header + 1 payload byte | the rest minus 1 | 1 byte */
  NSPLIT
};

static void* scratch_thread(void* arg) {
  uint8_t** out = arg;
  out[0] = px_scratch(0, 5000);
  if (out[0]) memset(out[0], 0x77, 5000);
  out[1] = px_scratch(0, 100);
  return NULL;
}

static void test_scratch(void** st) {
  (void)st;
  static const size_t asks[] = {0, 1, 100, 4096, 4097, 100000, 1u << 20, (1u << 20) + 1};
  for (int which = 0; which < 4; which++) {
    uint8_t* prev = NULL;
    size_t prev_size = 0;
    for (size_t i = 0; i < sizeof asks / sizeof asks[0]; i++) {
      uint8_t* p = px_scratch(which, asks[i]);
      assert_non_null(p);
      memset(p, which, asks[i]); /* at least the size asked: ASan checks the bound */
      if (prev && asks[i] <= prev_size) assert_ptr_equal(p, prev);
      prev = p;
      if (asks[i] > prev_size) prev_size = asks[i];
      /* stable for every smaller size */
      for (size_t k = 0; k <= i; k++) assert_ptr_equal(px_scratch(which, asks[k]), p);
      assert_ptr_equal(px_scratch(which, 0), p);
    }
  }
  /* the four buffers are distinct and do not overlap */
  uint8_t* b[4];
  for (int i = 0; i < 4; i++) b[i] = px_scratch(i, 1u << 20);
  for (int i = 0; i < 4; i++)
    for (int j = i + 1; j < 4; j++)
      assert_true(b[i] + (1u << 20) <= b[j] || b[j] + (1u << 20) <= b[i]);
  /* out of range */
  assert_null(px_scratch(-1, 10));
  assert_null(px_scratch(4, 10));
  assert_null(px_scratch(1000, 10));
  /* per thread: another thread gets its own buffer (freed at its exit: LSan) */
  uint8_t* got[2] = {NULL, NULL};
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, scratch_thread, got), 0);
  assert_int_equal(pthread_join(th, NULL), 0);
  assert_non_null(got[0]);
  assert_ptr_equal(got[1], got[0]);
  assert_ptr_not_equal(got[0], b[0]);
}

/* A request too large to round up to the allocation granule is refused: never a buffer
 * smaller than asked, and the thread's buffer stays usable. Runs on its own thread so
 * that a failure cannot leave this thread's scratch broken for the other tests. */
static void* huge_thread(void* arg) {
  int* ok = arg;
  uint8_t* before = px_scratch(0, 100);
  ok[0] = before != NULL;
  ok[1] = px_scratch(0, SIZE_MAX) == NULL;
  ok[2] = px_scratch(0, SIZE_MAX - 62) == NULL;
  ok[3] = px_scratch(0, 100) == before;
  return NULL;
}

/* A thread's first request may be for 0 bytes (found by fuzz_zstd: it returned NULL). */
static void *zero_scratch_thread(void* arg) {
  (void)arg;
  return px_scratch(1, 0);
}

static void test_scratch_zero_first(void** st) {
  (void)st;
  pthread_t th;
  void* got = NULL;
  assert_int_equal(pthread_create(&th, NULL, zero_scratch_thread, NULL), 0);
  assert_int_equal(pthread_join(th, &got), 0);
  assert_non_null(got);
}

static void test_scratch_huge_request(void** st) {
  (void)st;
  int ok[4] = {0, 0, 0, 0};
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, huge_thread, ok), 0);
  assert_int_equal(pthread_join(th, NULL), 0);
  assert_true(ok[0]);
  if (!ok[1]) fail_msg("pmx_scratch(0, SIZE_MAX) returned a buffer");
  if (!ok[2]) fail_msg("pmx_scratch(0, SIZE_MAX - 62) returned a buffer");
  if (!ok[3]) fail_msg("after a refused request the thread's scratch 0 moved");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_scratch),
      cmocka_unit_test(test_scratch_huge_request),
      cmocka_unit_test(test_scratch_zero_first),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
