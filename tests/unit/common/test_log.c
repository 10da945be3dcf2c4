/* Unit tests of common/util/log.c: levels, the stderr sink, the JSON sink, the threshold,
 * long messages. */
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

#include <jansson.h>

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

static void test_log_format_parse(void** state) {
  (void)state;
  assert_int_equal(px_log_format_parse("text"), PX_LOG_TEXT);
  assert_int_equal(px_log_format_parse("JSON"), PX_LOG_JSON);
  assert_int_equal(px_log_format_parse("xml"), -1);
  assert_int_equal(px_log_format_parse(""), -1);
  assert_int_equal(px_log_format_parse(NULL), -1);
}

static void log_json_some(void) {
  px_log_init_format("tester", PX_LOG_INFO, PX_LOG_JSON);
  px_info("hello %d", 42);
  px_log_set_shard(3);
  px_warn("say \"hi\"\\ now\nnext\tline \x01 bad \xff\xc3( ok \xc3\xa9");
  px_debug("hidden");
  px_log_set_shard(-1);
  px_log_init("paramex", PX_LOG_INFO);
}

/* Parses one JSON line and checks its fixed fields; returns the object. */
static json_t* parse_line(const char* line, const char* level, json_int_t shard) {
  json_error_t jerr;
  json_t* o = json_loads(line, 0, &jerr);
  if (!o) fail_msg("not JSON (%s): %s", jerr.text, line);
  assert_true(json_is_object(o));
  regex_t re;
  assert_int_equal(regcomp(&re, "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z$",
                           REG_EXTENDED), 0);
  const char* t = json_string_value(json_object_get(o, "time"));
  assert_non_null(t);
  assert_int_equal(regexec(&re, t, 0, NULL, 0), 0);
  regfree(&re);
  assert_string_equal(json_string_value(json_object_get(o, "level")), level);
  assert_string_equal(json_string_value(json_object_get(o, "role")), "tester");
  json_t* sh = json_object_get(o, "shard");
  if (shard < 0) assert_null(sh);
  else assert_int_equal(json_integer_value(sh), shard);
  return o;
}

static void test_log_json(void** state) {
  (void)state;
  char* out = capture_stderr(log_json_some);
  char* nl = strchr(out, '\n');
  assert_non_null(nl);
  *nl = '\0';
  json_t* o = parse_line(out, "info", -1);
  assert_string_equal(json_string_value(json_object_get(o, "event")), "hello 42");
  json_decref(o);
  char* second = nl + 1;
  nl = strchr(second, '\n');
  assert_non_null(nl);
  assert_string_equal(nl + 1, ""); /* two lines: debug dropped */
  *nl = '\0';
  o = parse_line(second, "warn", 3);
  /* escapes kept, the control byte kept as \u0001, invalid bytes replaced by U+FFFD */
  assert_string_equal(json_string_value(json_object_get(o, "event")),
                      "say \"hi\"\\ now\nnext\tline \x01 bad \xef\xbf\xbd\xef\xbf\xbd( ok \xc3\xa9");
  assert_non_null(strstr(second, "\\u0001"));
  json_decref(o);
  free(out);
}

static void log_json_long(void) {
  px_log_init_format("tester", PX_LOG_INFO, PX_LOG_JSON);
  char big[3000];
  memset(big, 1, sizeof big - 1); /* escapes to \u0001, six times its length: cut */
  big[sizeof big - 1] = '\0';
  px_info("%s", big);
  px_log_init("paramex", PX_LOG_INFO);
}

static void test_log_json_long_event_is_cut(void** state) {
  (void)state;
  char* out = capture_stderr(log_json_long);
  size_t len = strlen(out);
  assert_true(len > 8000 && len <= 8192);
  assert_ptr_equal(strchr(out, '\n'), out + len - 1); /* one line */
  json_t* o = parse_line(out, "info", -1);
  const char* ev = json_string_value(json_object_get(o, "event"));
  assert_non_null(ev);
  assert_true(strlen(ev) > 1000 && strlen(ev) < 2999);
  assert_string_equal(ev + strlen(ev) - 3, "...");
  json_decref(o);
  free(out);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_log_level_parse),
      cmocka_unit_test(test_log_format),
      cmocka_unit_test(test_log_long_message_is_cut),
      cmocka_unit_test(test_log_format_parse),
      cmocka_unit_test(test_log_json),
      cmocka_unit_test(test_log_json_long_event_is_cut),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
