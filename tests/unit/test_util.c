/* Unit tests of common/util: logging, flags and environment, the pool, memory helpers. */
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

#include "util/util.h"

#define ARGC(a) ((int)(sizeof(a) / sizeof((a)[0])))

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

/* ---- pool --------------------------------------------------------------------------- */

#define NJOBS 20000

typedef struct {
  px_job job;
  atomic_int runs;
} count_job;

static void count_fn(px_job* j) {
  count_job* c = (count_job*)j;
  atomic_fetch_add(&c->runs, 1);
}

typedef struct {
  px_pool* pool;
  count_job* jobs;
  size_t n;
} producer_arg;

static void* producer(void* arg) {
  producer_arg* p = arg;
  for (size_t i = 0; i < p->n; i++) px_pool_submit(p->pool, &p->jobs[i].job);
  return NULL;
}

static void test_pool_runs_each_job_once(void** state) {
  (void)state;
  px_pool* pool = px_pool_create(4);
  assert_non_null(pool);
  assert_int_equal(px_pool_threads(pool), 4);
  count_job* jobs = calloc(NJOBS, sizeof *jobs);
  assert_non_null(jobs);
  for (size_t i = 0; i < NJOBS; i++) jobs[i].job.fn = count_fn;
  /* four producers submit concurrently */
  pthread_t th[4];
  producer_arg pa[4];
  for (int t = 0; t < 4; t++) {
    pa[t] = (producer_arg){pool, jobs + t * (NJOBS / 4), NJOBS / 4};
    assert_int_equal(pthread_create(&th[t], NULL, producer, &pa[t]), 0);
  }
  for (int t = 0; t < 4; t++) pthread_join(th[t], NULL);
  px_pool_destroy(pool);
  for (size_t i = 0; i < NJOBS; i++)
    if (atomic_load(&jobs[i].runs) != 1) fail_msg("job %zu ran %d times", i, jobs[i].runs);
  free(jobs);
}

/* Every thread of the pool must be able to run a job at the same time: nthreads jobs
 * wait for each other (bounded by a 10 s deadline). */
typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  unsigned arrived, want;
  bool timed_out;
  pthread_t who[8];
} rendezvous;

typedef struct {
  px_job job;
  rendezvous* r;
} rv_job;

static struct timespec deadline_in(int seconds) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += seconds;
  return ts;
}

static void rv_fn(px_job* j) {
  rendezvous* r = ((rv_job*)j)->r;
  struct timespec dl = deadline_in(10);
  pthread_mutex_lock(&r->mu);
  r->who[r->arrived++] = pthread_self();
  pthread_cond_broadcast(&r->cv);
  while (r->arrived < r->want && !r->timed_out)
    if (pthread_cond_timedwait(&r->cv, &r->mu, &dl) == ETIMEDOUT) r->timed_out = true;
  pthread_mutex_unlock(&r->mu);
}

static void test_pool_threads_run_concurrently(void** state) {
  (void)state;
  enum { N = 4 };
  rendezvous r = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, N, false, {0}};
  rv_job jobs[N];
  px_pool* pool = px_pool_create(N);
  assert_non_null(pool);
  for (int i = 0; i < N; i++) {
    jobs[i] = (rv_job){{rv_fn, NULL}, &r};
    px_pool_submit(pool, &jobs[i].job);
  }
  px_pool_destroy(pool);
  assert_false(r.timed_out);
  assert_int_equal(r.arrived, N);
  for (int i = 0; i < N; i++)
    for (int k = i + 1; k < N; k++) assert_false(pthread_equal(r.who[i], r.who[k]));
}

/* A job that blocks the only thread until the gate opens, so the others stay queued. */
typedef struct {
  px_job job;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool started, open;
} gate_job;

static void gate_fn(px_job* j) {
  gate_job* g = (gate_job*)j;
  struct timespec dl = deadline_in(10);
  pthread_mutex_lock(&g->mu);
  g->started = true;
  pthread_cond_broadcast(&g->cv);
  while (!g->open)
    if (pthread_cond_timedwait(&g->cv, &g->mu, &dl) == ETIMEDOUT) break;
  pthread_mutex_unlock(&g->mu);
}

typedef struct {
  px_job job;
  px_pool* pool;
  int left;
  atomic_int* total;
} chain_job;

/* Resubmits itself `left` times, then frees itself. */
static void chain_fn(px_job* j) {
  chain_job* c = (chain_job*)j;
  atomic_fetch_add(c->total, 1);
  if (c->left-- > 0)
    px_pool_submit(c->pool, &c->job);
  else
    free(c);
}

static atomic_int order_next;
typedef struct {
  px_job job;
  int idx;
  int ran_as;
} order_job;
static void order_fn(px_job* j) {
  order_job* oj = (order_job*)j;
  oj->ran_as = atomic_fetch_add(&order_next, 1);
}

static void test_pool_destroy_runs_queued_jobs(void** state) {
  (void)state;
  px_pool* pool = px_pool_create(1);
  assert_non_null(pool);
  gate_job g = {.job = {gate_fn, NULL}, .mu = PTHREAD_MUTEX_INITIALIZER,
                .cv = PTHREAD_COND_INITIALIZER};
  px_pool_submit(pool, &g.job);
  enum { N = 500 };
  order_job* jobs = calloc(N, sizeof *jobs);
  assert_non_null(jobs);
  atomic_store(&order_next, 0);
  for (int i = 0; i < N; i++) {
    jobs[i] = (order_job){{order_fn, NULL}, i, -1};
    px_pool_submit(pool, &jobs[i].job);
  }
  atomic_int total = 0;
  for (int i = 0; i < 3; i++) {
    chain_job* c = malloc(sizeof *c);
    assert_non_null(c);
    *c = (chain_job){{chain_fn, NULL}, pool, 10, &total};
    px_pool_submit(pool, &c->job);
  }
  /* wait until the gate job runs (bounded), then open it and destroy at once */
  struct timespec dl = deadline_in(10);
  pthread_mutex_lock(&g.mu);
  while (!g.started)
    if (pthread_cond_timedwait(&g.cv, &g.mu, &dl) == ETIMEDOUT) break;
  assert_true(g.started);
  assert_int_equal(atomic_load(&order_next), 0); /* still queued behind the gate */
  g.open = true;
  pthread_cond_broadcast(&g.cv);
  pthread_mutex_unlock(&g.mu);
  px_pool_destroy(pool);
  assert_int_equal(atomic_load(&order_next), N);
  for (int i = 0; i < N; i++) assert_int_equal(jobs[i].ran_as, i); /* FIFO on one thread */
  assert_int_equal(atomic_load(&total), 3 * 11);
  free(jobs);
}

static void test_pool_edge_cases(void** state) {
  (void)state;
  assert_null(px_pool_create(0));
  px_pool_destroy(NULL);
  assert_int_equal(px_pool_threads(NULL), 0);
  px_pool* pool = px_pool_create(3);
  assert_non_null(pool);
  px_pool_destroy(pool); /* no jobs */
}

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

/* Whether one of this host's interfaces has the numeric address ip. */
static bool host_has_address(const char* ip) {
  unsigned char want[16];
  int fam = strchr(ip, ':') ? AF_INET6 : AF_INET;
  if (inet_pton(fam, ip, want) != 1) return false;
  struct ifaddrs* ifs = NULL;
  if (getifaddrs(&ifs) != 0) return false;
  bool found = false;
  for (struct ifaddrs* i = ifs; i && !found; i = i->ifa_next) {
    if (!i->ifa_addr || i->ifa_addr->sa_family != fam) continue;
    const void* a = fam == AF_INET ? (const void*)&((const struct sockaddr_in*)(const void*)i->ifa_addr)->sin_addr
                                   : (const void*)&((const struct sockaddr_in6*)(const void*)i->ifa_addr)->sin6_addr;
    found = memcmp(a, want, fam == AF_INET ? 4 : 16) == 0;
  }
  freeifaddrs(ifs);
  return found;
}

/* The client's default pull compression depends on this: same host = raw pulls. */
static void test_target_is_local(void** state) {
  (void)state;
  assert_true(px_target_is_local("127.0.0.1:5000"));
  assert_true(px_target_is_local("127.8.9.10:1"));
  assert_true(px_target_is_local("localhost:5000"));
  assert_true(px_target_is_local("dns:///127.0.0.1:5000"));
  assert_true(px_target_is_local("ipv4:127.0.0.1:80"));
  assert_true(px_target_is_local("dns://8.8.8.8/127.0.0.1:5000")); /* the authority is skipped */
  assert_true(px_target_is_local("0.0.0.0:5000"));                 /* reaches this host */
  assert_true(px_target_is_local("[::ffff:127.0.0.1]:5000"));      /* v4-mapped loopback */
  assert_true(px_target_is_local("unix:/tmp/paramex.sock"));
  /* documentation addresses (checked not to be this host's: VMs do use them) */
  static const char* const remote[][2] = {
      {"192.0.2.1", "192.0.2.1:5000"},       {"2001:db8::1", "[2001:db8::1]:5000"},
      {"198.51.100.7", "198.51.100.7"},      {"192.0.2.1", "[::ffff:192.0.2.1]:5000"},
      {"192.0.2.1", "dns://127.0.0.1/192.0.2.1:5000"},
      {"203.0.113.9", "203.0.113.9:5000"},
  };
  for (size_t i = 0; i < sizeof remote / sizeof *remote; i++)
    if (!host_has_address(remote[i][0]) && px_target_is_local(remote[i][1]))
      fail_msg("%s is taken for this host", remote[i][1]);
  assert_false(px_target_is_local("dns://127.0.0.1"));
  /* what does not parse or resolve is remote (compression on) */
  assert_false(px_target_is_local(""));
  assert_false(px_target_is_local(":5000"));
  assert_false(px_target_is_local("[::1:5000"));
  assert_false(px_target_is_local("no-such-host.invalid:5000"));
  assert_false(px_target_is_local(NULL));
  /* an address of one of this host's interfaces (where it has one besides loopback) */
  struct ifaddrs* ifs = NULL;
  if (getifaddrs(&ifs) == 0) {
    for (struct ifaddrs* i = ifs; i; i = i->ifa_next) {
      if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
      const struct sockaddr_in* s4 = (const struct sockaddr_in*)(const void*)i->ifa_addr;
      if ((ntohl(s4->sin_addr.s_addr) >> 24) == 127) continue;
      char ip[INET_ADDRSTRLEN], target[64];
      assert_non_null(inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip));
      snprintf(target, sizeof target, "%s:5000", ip);
      if (!px_target_is_local(target)) fail_msg("%s (interface %s) is not local", target, i->ifa_name);
      break;
    }
    freeifaddrs(ifs);
  }
  /* ::1 only where the host has IPv6 loopback configured; the parse must accept it */
  struct addrinfo hints = {.ai_family = AF_INET6, .ai_flags = AI_NUMERICHOST};
  struct addrinfo* r = NULL;
  if (getaddrinfo("::1", NULL, &hints, &r) == 0) {
    freeaddrinfo(r);
    assert_true(px_target_is_local("[::1]:5000"));
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_log_level_parse),
      cmocka_unit_test(test_log_format),
      cmocka_unit_test(test_log_long_message_is_cut),
      cmocka_unit_test(test_clocks),
      cmocka_unit_test(test_strlcpy),
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
      cmocka_unit_test(test_pool_runs_each_job_once),
      cmocka_unit_test(test_pool_threads_run_concurrently),
      cmocka_unit_test(test_pool_destroy_runs_queued_jobs),
      cmocka_unit_test(test_pool_edge_cases),
      cmocka_unit_test(test_big_alloc),
      cmocka_unit_test(test_tune_malloc),
      cmocka_unit_test(test_target_is_local),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
