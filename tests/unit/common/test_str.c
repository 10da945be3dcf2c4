/* Unit tests of common/util/str.c. */
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

static void test_strlcpy(void** state) {
  (void)state;
  char buf[8];
  memset(buf, 'Z', sizeof buf);
  assert_ptr_equal(px_strlcpy(buf, "hello", sizeof buf), buf);
  assert_string_equal(buf, "hello");
  assert_ptr_equal(px_strlcpy(buf, "0123456789", sizeof buf), buf);
  assert_string_equal(buf, "0123456");
  px_strlcpy(buf, "1234567", sizeof buf); /* exact fit */
  assert_string_equal(buf, "1234567");
  memset(buf, 'Z', sizeof buf);
  px_strlcpy(buf, "abc", 1);
  assert_int_equal(buf[0], '\0');
  assert_int_equal(buf[1], 'Z');
  px_strlcpy(buf, "abc", 0); /* writes nothing */
  assert_int_equal(buf[0], '\0');
  assert_int_equal(buf[1], 'Z');
  px_strlcpy(buf, "", sizeof buf);
  assert_string_equal(buf, "");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_strlcpy),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
