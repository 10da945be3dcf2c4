/* Unit tests of common/util/file.c: whole-file reads and secrets, with the one-line errors
 * of missing, special, oversize and malformed files. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/file.h"

static char g_dir[64];

static int setup(void** state) {
  (void)state;
  snprintf(g_dir, sizeof g_dir, "/tmp/pmx-test-file-XXXXXX");
  return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown(void** state) {
  (void)state;
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  return system(cmd) == 0 ? 0 : -1;
}

static const char* write_file(const char* name, const void* data, size_t n) {
  static char path[128];
  snprintf(path, sizeof path, "%s/%s", g_dir, name);
  FILE* f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(data, 1, n, f), n);
  fclose(f);
  return path;
}

static void test_read_file(void** state) {
  (void)state;
  char err[256];
  const char* p = write_file("a.pem", "hello\0world", 11);
  size_t len = 0;
  char* s = px_read_file(p, 100, &len, err, sizeof err);
  assert_non_null(s);
  assert_int_equal(len, 11);
  assert_memory_equal(s, "hello\0world", 11);
  assert_int_equal(s[11], 0); /* NUL-terminated */
  free(s);
  s = px_read_file(p, 100, NULL, err, sizeof err); /* len may be NULL */
  assert_non_null(s);
  free(s);
  /* exactly max is fine, one more is not */
  s = px_read_file(p, 11, NULL, err, sizeof err);
  assert_non_null(s);
  free(s);
  assert_null(px_read_file(p, 10, NULL, err, sizeof err));
  assert_non_null(strstr(err, "larger than 10 bytes"));
  assert_non_null(strstr(err, p));
  /* empty file */
  p = write_file("empty", "", 0);
  s = px_read_file(p, 10, &len, err, sizeof err);
  assert_non_null(s);
  assert_int_equal(len, 0);
  assert_string_equal(s, "");
  free(s);
}

static void test_read_file_errors(void** state) {
  (void)state;
  char err[256], path[128];
  snprintf(path, sizeof path, "%s/missing", g_dir);
  assert_null(px_read_file(path, 100, NULL, err, sizeof err));
  assert_non_null(strstr(err, "No such file or directory"));
  assert_non_null(strstr(err, path));
  assert_null(px_read_file(g_dir, 100, NULL, err, sizeof err));
  assert_non_null(strstr(err, "not a regular file"));
  assert_null(strchr(err, '\n'));
}

static void test_read_token(void** state) {
  (void)state;
  char err[256];
  const char* p = write_file("tok", "s3cret-token \n\t\n", 16);
  char* t = px_read_token(p, err, sizeof err);
  assert_non_null(t);
  assert_string_equal(t, "s3cret-token"); /* trailing whitespace dropped */
  px_free_secret(t);
  px_free_secret(NULL);
  p = write_file("blank", " \n", 2);
  assert_null(px_read_token(p, err, sizeof err));
  assert_non_null(strstr(err, p));
  p = write_file("ctl", "ab\001cd", 5);
  assert_null(px_read_token(p, err, sizeof err));
  assert_non_null(strstr(err, p));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_read_file),
      cmocka_unit_test(test_read_file_errors),
      cmocka_unit_test(test_read_token),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
