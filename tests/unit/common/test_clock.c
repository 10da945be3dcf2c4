/* Unit tests of common/util/clock.c. */
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

/* ---- clocks and misc ---------------------------------------------------------------- */

static void test_clocks(void** state) {
  (void)state;
  uint64_t a = px_now_ns();
  uint64_t m = px_now_ms();
  uint64_t b = px_now_ns();
  assert_true(b >= a);
  assert_true(m >= a / 1000000u && m <= b / 1000000u);
  assert_true(px_ncpus() >= 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_clocks),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
