/* Unit tests of common/util/log.c: levels, the stderr sink, the threshold, long messages. */
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

/* ---- logging ------------------------------------------------------------------------ */

static void test_log_level_parse(void** state) {
  (void)state;
  assert_int_equal(px_log_level_parse("error"), PX_LOG_ERROR);
  assert_int_equal(px_log_level_parse("warn"), PX_LOG_WARN);
  assert_int_equal(px_log_level_parse("info"), PX_LOG_INFO);
  assert_int_equal(px_log_level_parse("debug"), PX_LOG_DEBUG);
  assert_int_equal(px_log_level_parse("DEBUG"), PX_LOG_DEBUG);
  assert_int_equal(px_log_level_parse("warning"), -1);
  assert_int_equal(px_log_level_parse(""), -1);
  assert_int_equal(px_log_level_parse("info "), -1);
  assert_int_equal(px_log_level_parse(NULL), -1);
}

/* Runs fn with stderr redirected to a temporary file and returns what it wrote. */
static char* capture_stderr(void (*fn)(void)) {
  FILE* tmp = tmpfile();
  assert_non_null(tmp);
  fflush(stderr);
  int saved = dup(2);
  assert_true(saved >= 0);
  assert_true(dup2(fileno(tmp), 2) >= 0);
  fn();
  fflush(stderr);
  assert_true(dup2(saved, 2) >= 0);
  close(saved);
  long len = ftell(tmp);
  if (len <= 0) {
    fseek(tmp, 0, SEEK_END);
    len = ftell(tmp);
  }
  assert_true(len >= 0);
  char* buf = calloc(1, (size_t)len + 1);
  assert_non_null(buf);
  rewind(tmp);
  assert_int_equal(fread(buf, 1, (size_t)len, tmp), (size_t)len);
  fclose(tmp);
  return buf;
}

static int side_effects;
static int bump(void) { return ++side_effects; }

static void log_some(void) {
  px_log_init("tester", PX_LOG_INFO);
  px_info("hello %d", 42);
  px_warn("second line\n"); /* trailing newline is not doubled */
  px_debug("hidden %d", bump()); /* dropped before its arguments are evaluated */
  px_log_write(PX_LOG_DEBUG, "also hidden");
  px_log_init("tester", PX_LOG_ERROR);
  px_warn("hidden too");
  px_error("bad %s", "thing");
  px_log_init("paramex", PX_LOG_INFO);
}

static void test_log_format(void** state) {
  (void)state;
  side_effects = 0;
  char* out = capture_stderr(log_some);
  assert_int_equal(side_effects, 0);
  regex_t re;
  const char* pat =
      "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z \\[tester\\] INFO hello 42\n"
      "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z \\[tester\\] WARN second line\n"
      "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z \\[tester\\] ERROR bad thing\n$";
  assert_int_equal(regcomp(&re, pat, REG_EXTENDED), 0);
  if (regexec(&re, out, 0, NULL, 0) != 0) fail_msg("unexpected log output:\n%s", out);
  regfree(&re);
  free(out);
  assert_int_equal(px_log_threshold, PX_LOG_INFO);
}

static void log_long(void) {
  char big[10000];
  memset(big, 'x', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  px_info("%s", big);
}

static void test_log_long_message_is_cut(void** state) {
  (void)state;
  char* out = capture_stderr(log_long);
  size_t len = strlen(out);
  assert_true(len > 4000 && len < 4200);
  assert_int_equal(out[len - 1], '\n');
  assert_memory_equal(out + len - 4, "...", 3);
  assert_ptr_equal(strchr(out, '\n'), out + len - 1); /* one line */
  free(out);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_log_level_parse),
      cmocka_unit_test(test_log_format),
      cmocka_unit_test(test_log_long_message_is_cut),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
