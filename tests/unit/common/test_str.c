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

/* Well-formed UTF-8 (RFC 3629): what protobuf parsers of other languages accept. */
static void test_utf8_valid(void** state) {
  (void)state;
  static const char* const good[] = {"", "w", "layer.0/weight", "\xc3\xa9t\xc3\xa9",
                                     "\xe2\x82\xac", "\xef\xbf\xbf", "\xf0\x90\x80\x80",
                                     "\xf4\x8f\xbf\xbf", "\xed\x9f\xbf", NULL};
  static const char* const bad[] = {"\xff", "\x80", "\xc0\xaf", "\xc1\xbf",  /* stray, overlong */
                                    "\xe0\x80\xaf", "\xed\xa0\x80",         /* overlong, surrogate */
                                    "\xf4\x90\x80\x80", "\xf5\x80\x80\x80", /* > U+10FFFF */
                                    "\xc3", "\xe2\x82", "\xf0\x90\x80",     /* truncated */
                                    "a\xc3(", "\xe2\x28\xa1", NULL};
  for (int i = 0; good[i]; i++)
    if (!px_utf8_valid(good[i], strlen(good[i]))) fail_msg("good[%d] refused", i);
  for (int i = 0; bad[i]; i++)
    if (px_utf8_valid(bad[i], strlen(bad[i]))) fail_msg("bad[%d] accepted", i);
  /* the length bounds the check: a prefix ending mid-character is not valid */
  assert_false(px_utf8_valid("\xc3\xa9", 1));
  assert_true(px_utf8_valid("ab\xff", 2));
}

/* Escapes s with px_json_char into buf. */
static const char* json_of(const char* s, size_t n, char* buf) {
  size_t k = 0;
  for (size_t i = 0; i < n;) {
    size_t used;
    k += px_json_char((const unsigned char*)s + i, n - i, buf + k, &used);
    i += used;
  }
  buf[k] = '\0';
  return buf;
}

static void test_json_char(void** state) {
  (void)state;
  char buf[128];
  assert_string_equal(json_of("a\"b\\c", 5, buf), "a\\\"b\\\\c");
  assert_string_equal(json_of("\n\r\t\b\f\x01\x1f", 7, buf), "\\n\\r\\t\\b\\f\\u0001\\u001f");
  assert_string_equal(json_of("\xc3\xa9\xe2\x82\xac", 5, buf), "\xc3\xa9\xe2\x82\xac"); /* kept */
  assert_string_equal(json_of("\xff\xc3(\xed\xa0\x80", 6, buf), "\\ufffd\\ufffd(\\ufffd\\ufffd\\ufffd");
  assert_string_equal(json_of("\xc3\xa9", 1, buf), "\\ufffd"); /* cut mid-character */
  assert_int_equal(px_utf8_seq((const unsigned char*)"\xf0\x9f\x98\x80", 4), 4);
  assert_int_equal(px_utf8_seq((const unsigned char*)"\xc0\xaf", 2), 0); /* overlong */
}

static void test_secret_equal(void** state) {
  (void)state;
  assert_true(px_secret_equal("Bearer ab", 9, "Bearer ab", 9));
  assert_false(px_secret_equal("Bearer ab", 9, "Bearer ac", 9));
  assert_false(px_secret_equal("Bearer ab", 9, "Bearer a", 8));   /* a prefix */
  assert_false(px_secret_equal("Bearer ab", 9, "Bearer abc", 10)); /* longer */
  assert_false(px_secret_equal("x", 1, NULL, 0));
  assert_true(px_secret_equal("", 0, NULL, 0));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_strlcpy),
      cmocka_unit_test(test_utf8_valid),
      cmocka_unit_test(test_json_char),
      cmocka_unit_test(test_secret_equal),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
