/* Unit tests of common/util/flags.c: every flag type, the environment, errors, usage. */
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

#define ARGC(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* ---- flags -------------------------------------------------------------------------- */

typedef struct {
  const char* listen;
  uint32_t workers;
  uint64_t steps;
  uint64_t chunk;
  double lr;
  bool verbose;
} opts;

static opts o;
static px_flag table[6];

static const char* const env_names[] = {"PMX_LISTEN", "PMX_WORKERS", "PMX_MAX_STEPS",
                                        "PMX_CHUNK_BYTES", "PMX_LR", "PMX_VERBOSE"};

static int flags_setup(void** state) {
  (void)state;
  for (size_t i = 0; i < sizeof env_names / sizeof env_names[0]; i++) unsetenv(env_names[i]);
  o = (opts){.listen = "127.0.0.1:0", .workers = 4, .steps = 10, .chunk = 4u << 20,
             .lr = 0.25, .verbose = false};
  px_flag t[6] = {
      {"listen", PX_FLAG_STR, &o.listen, 0, 0, "HOST:PORT", "address to listen on"},
      {"workers", PX_FLAG_U32, &o.workers, 1, 1024, "N", "number of workers"},
      {"max-steps", PX_FLAG_U64, &o.steps, 0, 0, "N", "steps to run"},
      {"chunk-bytes", PX_FLAG_SIZE, &o.chunk, 4096, 64 << 20, "BYTES", "chunk size"},
      {"lr", PX_FLAG_F64, &o.lr, 0, 0, "RATE", "learning rate"},
      {"verbose", PX_FLAG_BOOL, &o.verbose, 0, 0, NULL, "log more"},
  };
  memcpy(table, t, sizeof t);
  return 0;
}

static int parse(int argc, char** argv, px_flags_result* res, char* err) {
  memset(err, 'Q', 200);
  return px_flags_parse(table, 6, argc, argv, res, err, 200);
}

static void test_flags_defaults(void** state) {
  (void)state;
  char* argv[] = {"prog"};
  char err[200];
  px_flags_result res;
  assert_int_equal(parse(1, argv, &res, err), 0);
  assert_string_equal(err, "");
  assert_int_equal(res.npositional, 0);
  assert_string_equal(o.listen, "127.0.0.1:0");
  assert_int_equal(o.workers, 4);
  assert_int_equal(o.steps, 10);
  assert_int_equal(o.chunk, 4u << 20);
  assert_true(o.lr == 0.25);
  assert_false(o.verbose);
}

static void test_flags_every_type(void** state) {
  (void)state;
  char* argv[] = {"prog", "--listen", "0.0.0.0:7000", "--workers=16", "--max-steps",
                  "18446744073709551615", "--chunk-bytes=1MiB", "--lr", "-1.5e-3", "--verbose"};
  char err[200];
  px_flags_result res;
  assert_int_equal(parse(ARGC(argv), argv, &res, err), 0);
  assert_ptr_equal(o.listen, argv[2]); /* not copied */
  assert_int_equal(o.workers, 16);
  assert_true(o.steps == UINT64_MAX);
  assert_int_equal(o.chunk, 1u << 20);
  assert_true(o.lr == -1.5e-3);
  assert_true(o.verbose);

  char* argv2[] = {"prog", "--listen=", "--no-verbose", "--chunk-bytes", "4096", "--lr=7",
                   "--workers", "1", "--workers", "1024"};
  assert_int_equal(parse(ARGC(argv2), argv2, &res, err), 0);
  assert_string_equal(o.listen, "");
  assert_false(o.verbose);
  assert_int_equal(o.chunk, 4096);
  assert_true(o.lr == 7.0);
  assert_int_equal(o.workers, 1024); /* the last one wins */
}

static void test_flags_positional(void** state) {
  (void)state;
  char* argv[] = {"prog", "a", "--workers", "2", "b", "-", "--", "--verbose", "-h"};
  char err[200];
  px_flags_result res;
  assert_int_equal(parse(ARGC(argv), argv, &res, err), 0);
  assert_int_equal(res.npositional, 5);
  assert_string_equal(res.positional[0], "a");
  assert_string_equal(res.positional[1], "b");
  assert_string_equal(res.positional[2], "-");
  assert_string_equal(res.positional[3], "--verbose");
  assert_string_equal(res.positional[4], "-h");
  assert_int_equal(o.workers, 2);
  assert_false(o.verbose);

  char* many[20];
  many[0] = "prog";
  for (int i = 1; i < 20; i++) many[i] = "x";
  assert_int_equal(parse(17, many, &res, err), 0);
  assert_int_equal(res.npositional, 16);
  assert_int_equal(parse(18, many, &res, err), 2);
  assert_string_equal(err, "too many arguments");

  char* one[] = {"prog", "--workers", "3", "stray"};
  assert_int_equal(parse(ARGC(one), one, NULL, err), 2);
  assert_string_equal(err, "unexpected argument 'stray'");
  assert_int_equal(parse(3, one, NULL, err), 0);
}

static void test_flags_help(void** state) {
  (void)state;
  char err[200];
  px_flags_result res;
  char* a1[] = {"prog", "--help"};
  assert_int_equal(parse(ARGC(a1), a1, &res, err), 1);
  char* a2[] = {"prog", "x", "-h", "--workers", "abc"};
  assert_int_equal(parse(ARGC(a2), a2, &res, err), 1);
  char* a3[] = {"prog", "--workers", "abc", "--help"};
  assert_int_equal(parse(ARGC(a3), a3, &res, err), 2); /* errors are reported in order */
}

/* Expects parse(argv) to fail with exactly msg and to leave every option unchanged. */
static void expect_error(int argc, char** argv, const char* msg) {
  opts before = o;
  char err[200];
  px_flags_result res;
  int rc = parse(argc, argv, &res, err);
  if (rc != 2 || strcmp(err, msg) != 0)
    fail_msg("argv[1]=%s: rc %d err '%s', want 2 '%s'", argc > 1 ? argv[1] : "", rc, err, msg);
  assert_true(before.listen == o.listen && before.workers == o.workers &&
              before.steps == o.steps && before.chunk == o.chunk && before.lr == o.lr &&
              before.verbose == o.verbose);
}

#define EXPECT_ERROR(msg, ...)                  \
  do {                                          \
    char* av_[] = {"prog", __VA_ARGS__};        \
    expect_error(ARGC(av_), av_, (msg));        \
  } while (0)

static void test_flags_errors(void** state) {
  (void)state;
  EXPECT_ERROR("unknown flag --foo", "--foo");
  EXPECT_ERROR("unknown flag --foo", "--foo=1");
  EXPECT_ERROR("unknown flag -x", "-x");
  EXPECT_ERROR("unknown flag --no-listen", "--no-listen");
  EXPECT_ERROR("unknown flag --work", "--work", "1");
  EXPECT_ERROR("--workers: missing value", "--workers");
  EXPECT_ERROR("--workers: 'abc' is not an unsigned integer", "--workers", "abc");
  EXPECT_ERROR("--workers: '-1' is not an unsigned integer", "--workers", "-1");
  EXPECT_ERROR("--workers: '+1' is not an unsigned integer", "--workers=+1");
  EXPECT_ERROR("--workers: '' is not an unsigned integer", "--workers=");
  EXPECT_ERROR("--workers: ' 1' is not an unsigned integer", "--workers", " 1");
  EXPECT_ERROR("--workers: '12x' is not an unsigned integer", "--workers", "12x");
  EXPECT_ERROR("--workers: '1.0' is not an unsigned integer", "--workers", "1.0");
  EXPECT_ERROR("--workers: '4294967296' is too large", "--workers", "4294967296");
  EXPECT_ERROR("--workers: 0 is out of range [1, 1024]", "--workers", "0");
  EXPECT_ERROR("--workers: 1025 is out of range [1, 1024]", "--workers=1025");
  EXPECT_ERROR("--max-steps: '18446744073709551616' is too large", "--max-steps",
               "18446744073709551616");
  EXPECT_ERROR("--max-steps: '99999999999999999999999' is too large", "--max-steps",
               "99999999999999999999999");
  EXPECT_ERROR("--chunk-bytes: '1T' is not a size (N, NK, NM or NG)", "--chunk-bytes", "1T");
  EXPECT_ERROR("--chunk-bytes: '1.5M' is not a size (N, NK, NM or NG)", "--chunk-bytes", "1.5M");
  EXPECT_ERROR("--chunk-bytes: '-4K' is not a size (N, NK, NM or NG)", "--chunk-bytes", "-4K");
  EXPECT_ERROR("--chunk-bytes: '17179869184G' is too large", "--chunk-bytes", "17179869184G");
  EXPECT_ERROR("--chunk-bytes: 1024 is out of range [4096, 67108864]", "--chunk-bytes", "1K");
  EXPECT_ERROR("--chunk-bytes: 1073741824 is out of range [4096, 67108864]",
               "--chunk-bytes=1g");
  EXPECT_ERROR("--lr: 'x' is not a number", "--lr", "x");
  EXPECT_ERROR("--lr: '' is not a number", "--lr=");
  EXPECT_ERROR("--lr: '1.0x' is not a number", "--lr", "1.0x");
  EXPECT_ERROR("--lr: ' 1' is not a number", "--lr", " 1");
  EXPECT_ERROR("--lr: 'nan' is not a finite number", "--lr", "nan");
  EXPECT_ERROR("--lr: '-inf' is not a finite number", "--lr", "-inf");
  EXPECT_ERROR("--lr: 'infinity' is not a finite number", "--lr=infinity");
  EXPECT_ERROR("--lr: '1e999' is not a finite number", "--lr", "1e999");
  EXPECT_ERROR("--verbose: takes no value", "--verbose=true");
  EXPECT_ERROR("--no-verbose: takes no value", "--no-verbose=1");
}

static void test_flags_f64_range(void** state) {
  (void)state;
  double v = 1;
  px_flag f[] = {{"wait", PX_FLAG_F64, &v, 0, 2.5, "S", "seconds"}};
  char err[200];
  char* ok[] = {"p", "--wait", "2.5"};
  assert_int_equal(px_flags_parse(f, 1, 3, ok, NULL, err, sizeof err), 0);
  assert_true(v == 2.5);
  char* bad[] = {"p", "--wait", "2.75"};
  assert_int_equal(px_flags_parse(f, 1, 3, bad, NULL, err, sizeof err), 2);
  assert_string_equal(err, "--wait: 2.75 is out of range [0, 2.5]");
  assert_true(v == 2.5);
  char* neg[] = {"p", "--wait=-0.5"};
  assert_int_equal(px_flags_parse(f, 1, 2, neg, NULL, err, sizeof err), 2);
  assert_string_equal(err, "--wait: -0.5 is out of range [0, 2.5]");
}

static void test_flags_env(void** state) {
  (void)state;
  char err[200];
  px_flags_result res;
  char* bare[] = {"prog"};
  setenv("PMX_WORKERS", "8", 1);
  setenv("PMX_MAX_STEPS", "77", 1);
  setenv("PMX_CHUNK_BYTES", "8k", 1);
  setenv("PMX_LR", "0.5", 1);
  setenv("PMX_VERBOSE", "yes", 1);
  setenv("PMX_LISTEN", "env:1", 1);
  assert_int_equal(parse(1, bare, &res, err), 0);
  assert_int_equal(o.workers, 8);
  assert_int_equal(o.steps, 77);
  assert_int_equal(o.chunk, 8192);
  assert_true(o.lr == 0.5);
  assert_true(o.verbose);
  assert_string_equal(o.listen, "env:1");

  /* the command line beats the environment */
  char* argv[] = {"prog", "--workers", "3", "--no-verbose", "--listen=cli:2"};
  assert_int_equal(parse(ARGC(argv), argv, &res, err), 0);
  assert_int_equal(o.workers, 3);
  assert_false(o.verbose);
  assert_string_equal(o.listen, "cli:2");

  /* boolean spellings */
  static const char* const truthy[] = {"1", "true", "YES", "on"};
  static const char* const falsy[] = {"0", "False", "no", "OFF"};
  for (int i = 0; i < 4; i++) {
    o.verbose = false;
    setenv("PMX_VERBOSE", truthy[i], 1);
    assert_int_equal(parse(1, bare, &res, err), 0);
    assert_true(o.verbose);
    setenv("PMX_VERBOSE", falsy[i], 1);
    assert_int_equal(parse(1, bare, &res, err), 0);
    assert_false(o.verbose);
  }
}

static void test_flags_env_errors(void** state) {
  (void)state;
  char err[200];
  px_flags_result res;
  char* bare[] = {"prog"};
  setenv("PMX_LR", "x", 1);
  assert_int_equal(parse(1, bare, &res, err), 2);
  assert_string_equal(err, "PMX_LR: 'x' is not a number");
  assert_true(o.lr == 0.25);
  /* a flag given on the command line does not read its variable */
  char* lr[] = {"prog", "--lr", "2"};
  assert_int_equal(parse(ARGC(lr), lr, &res, err), 0);
  assert_true(o.lr == 2.0);
  unsetenv("PMX_LR");

  setenv("PMX_WORKERS", "0", 1);
  assert_int_equal(parse(1, bare, &res, err), 2);
  assert_string_equal(err, "PMX_WORKERS: 0 is out of range [1, 1024]");
  setenv("PMX_WORKERS", "-3", 1);
  assert_int_equal(parse(1, bare, &res, err), 2);
  assert_string_equal(err, "PMX_WORKERS: '-3' is not an unsigned integer");
  setenv("PMX_WORKERS", "", 1);
  assert_int_equal(parse(1, bare, &res, err), 2);
  assert_string_equal(err, "PMX_WORKERS: '' is not an unsigned integer");
  assert_int_equal(o.workers, 4);
  unsetenv("PMX_WORKERS");

  setenv("PMX_CHUNK_BYTES", "lots", 1);
  assert_int_equal(parse(1, bare, &res, err), 2);
  assert_string_equal(err, "PMX_CHUNK_BYTES: 'lots' is not a size (N, NK, NM or NG)");
  unsetenv("PMX_CHUNK_BYTES");

  setenv("PMX_VERBOSE", "maybe", 1);
  assert_int_equal(parse(1, bare, &res, err), 2);
  assert_string_equal(err,
                      "PMX_VERBOSE: 'maybe' is not a boolean (true/false, yes/no, on/off, 1/0)");
  assert_false(o.verbose);
  unsetenv("PMX_VERBOSE");

  setenv("PMX_LR", "inf", 1);
  assert_int_equal(parse(1, bare, &res, err), 2);
  assert_string_equal(err, "PMX_LR: 'inf' is not a finite number");
  unsetenv("PMX_LR");
}

static void test_flags_small_err_buffer(void** state) {
  (void)state;
  char err[8];
  char* argv[] = {"prog", "--nonexistent-flag"};
  assert_int_equal(px_flags_parse(table, 6, 2, argv, NULL, err, sizeof err), 2);
  assert_string_equal(err, "unknown");
  assert_int_equal(px_flags_parse(table, 6, 2, argv, NULL, NULL, 0), 2);
}

static void test_flags_usage(void** state) {
  (void)state;
  char* buf = NULL;
  size_t len = 0;
  FILE* f = open_memstream(&buf, &len);
  assert_non_null(f);
  px_flags_usage(f, "paramex-server", "[flags]", table, 6);
  fclose(f);
  static const char* const want[] = {
      "usage: paramex-server [flags]\n",
      "--listen HOST:PORT",
      "address to listen on (env PMX_LISTEN, default \"127.0.0.1:0\")\n",
      "--workers N",
      "number of workers (env PMX_WORKERS, default 4)\n",
      "--max-steps N",
      "(env PMX_MAX_STEPS, default 10)\n",
      "--chunk-bytes BYTES",
      "(env PMX_CHUNK_BYTES, default 4MiB)\n",
      "--lr RATE",
      "(env PMX_LR, default 0.25)\n",
      "--[no-]verbose",
      "log more (env PMX_VERBOSE, default false)\n",
      "--help",
  };
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
    if (!strstr(buf, want[i])) fail_msg("usage lacks '%s':\n%s", want[i], buf);
  free(buf);
}

static void test_parse_size(void** state) {
  (void)state;
  static const struct {
    const char* s;
    uint64_t v;
  } ok[] = {
      {"0", 0},          {"123", 123},          {"123B", 123},       {"1k", 1024},
      {"1K", 1024},      {"1KB", 1024},         {"1KiB", 1024},      {"1kib", 1024},
      {"4M", 4u << 20},  {"4mb", 4u << 20},     {"3G", UINT64_C(3) << 30},
      {"16383G", UINT64_C(16383) << 30},        {"18446744073709551615", UINT64_MAX},
  };
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    uint64_t v = 42;
    if (px_parse_size(ok[i].s, &v) != 0 || v != ok[i].v) fail_msg("'%s'", ok[i].s);
  }
  static const char* const bad[] = {"",    "K",   "1T",  "1.5M", "-1", " 1",
                                    "1 ",  "1Ki", "1iB", "1KBB", "0x10",
                                    "18446744073709551616", "17179869184G", NULL};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    uint64_t v = 42;
    if (px_parse_size(bad[i], &v) != -1 || v != 42) fail_msg("'%s' accepted", bad[i] ? bad[i] : "NULL");
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup(test_flags_defaults, flags_setup),
      cmocka_unit_test_setup(test_flags_every_type, flags_setup),
      cmocka_unit_test_setup(test_flags_positional, flags_setup),
      cmocka_unit_test_setup(test_flags_help, flags_setup),
      cmocka_unit_test_setup(test_flags_errors, flags_setup),
      cmocka_unit_test_setup(test_flags_f64_range, flags_setup),
      cmocka_unit_test_setup(test_flags_env, flags_setup),
      cmocka_unit_test_setup(test_flags_env_errors, flags_setup),
      cmocka_unit_test_setup(test_flags_small_err_buffer, flags_setup),
      cmocka_unit_test_setup(test_flags_usage, flags_setup),
      cmocka_unit_test(test_parse_size),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
