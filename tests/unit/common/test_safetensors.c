/* Unit tests of common/format/safetensors.c: the spelling of element types. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "codec/dtype.h"
#include "format/safetensors.h"
#include "format/safetensors_read.h"
#include "format/safetensors_write.h"

/* ---- round trip ----------------------------------------------------------------------- */

static void test_dtype_table(void** state) {
  (void)state;
  assert_int_equal(px_dtype_size_any(PX_DT_F32), 4);
  assert_int_equal(px_dtype_size_any(PX_DT_BF16), 2);
  assert_int_equal(px_dtype_size_any(PX_DT_F16), 2);
  assert_int_equal(px_dtype_size_any(PX_DT_U64), 8);
  assert_int_equal(px_dtype_size_any(PX_DT_U8), 1);
  assert_int_equal(px_dtype_size_any(PX_DT_F64), 8);
  assert_int_equal(px_dtype_size_any(0), 0);
  assert_int_equal(px_dtype_size_any(99), 0);
  char b[16];
  assert_string_equal(px_st_dtype_name(PX_DT_BF16, b, sizeof b), "BF16");
  assert_string_equal(px_st_dtype_name(PX_DT_I64, b, sizeof b), "I64");
  assert_string_equal(px_st_dtype_name(PX_DT_F8_E4M3, b, sizeof b), "F8_E4M3");
  assert_string_equal(px_st_dtype_name(0, b, sizeof b), "?");
  assert_int_equal(px_st_dtype_parse("F8_E5M2"), PX_DT_F8_E5M2);
  assert_int_equal(px_st_dtype_parse("BOOL"), PX_DT_BOOL);
  assert_int_equal(px_st_dtype_parse("f32"), 0); /* lower case is not the format's spelling */
  assert_int_equal(px_st_dtype_parse("F33"), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_dtype_table),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
