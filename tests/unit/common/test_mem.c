/* Unit tests of common/util/mem.c. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <regex.h>
#include <stdatomic.h>
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util/clock.h"
#include "util/flags.h"
#include "util/log.h"
#include "util/mem.h"
#include "util/net.h"
#include "util/str.h"
#include "util/taskpool.h"

/* ---- memory ------------------------------------------------------------------------- */

static void test_big_alloc(void** state) {
  (void)state;
  static const size_t sizes[] = {1, 4096, 12345, (2u << 20) - 1, 2u << 20, (3u << 20) + 1,
                                 64u << 20};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    size_t n = sizes[i];
    unsigned char* p = px_big_alloc(n);
    assert_non_null(p);
    if (n >= (2u << 20)) assert_int_equal((uintptr_t)p % (2u << 20), 0);
    size_t step = n > 100000 ? 4093 : 1;
    for (size_t k = 0; k < n; k += step) assert_int_equal(p[k], 0);
    assert_int_equal(p[n - 1], 0);
    memset(p, 0xA5, n);
    assert_int_equal(p[0], 0xA5);
    assert_int_equal(p[n - 1], 0xA5);
    px_big_free(p, n);
  }
  assert_null(px_big_alloc(0));
  assert_null(px_big_alloc(SIZE_MAX - 4096));
  assert_null(px_big_alloc((size_t)1 << 62));
  px_big_free(NULL, 0);
}

static void test_tune_malloc(void** state) {
  (void)state;
  px_tune_malloc();
  void* p = malloc(1 << 20);
  assert_non_null(p);
  memset(p, 1, 1 << 20);
  free(p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_big_alloc),
      cmocka_unit_test(test_tune_malloc),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
