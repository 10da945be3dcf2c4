/* Fuzz target: paramex-server's configuration (px_config_parse, server/config.h) from
 * command-line arguments and PMX_* environment variables.
 *
 * Input layout:
 *   byte 0  bits 0-2: how many of the strings below are environment assignments (the
 *           first ones)
 *   rest    strings separated by NUL bytes (at most MAX_STRINGS). An environment string's
 *           first byte picks the variable (modulo the names below), the rest is its value;
 *           the other strings are argv[1..] (argv[0] is "paramex-server").
 *
 * px_config_parse prints usage on stdout and returns one line in err on errors; stdout
 * goes to /dev/null (PMX_FUZZ_VERBOSE=1 shows it). Checks, besides ASan/UBSan: the return
 * value is 0, 1 or 2, and a configuration accepted for running satisfies the documented
 * ranges. Every variable is unset again before returning. */
#include "fuzz_common.h"
#include "config.h"
#include "framecache.h"
#include "util/log.h"

#define MAX_STRINGS 48

/* A fixed set: some of every flag type the server has, and one it does not read. */
static const char* const env_names[] = {
    "PMX_LISTEN",     "PMX_WORKERS",       "PMX_LR",          "PMX_CHUNK_BYTES",
    "PMX_LOG_LEVEL",  "PMX_COMPRESSION",   "PMX_HISTORY",     "PMX_DRAIN_TIMEOUT",
    "PMX_HOLD_BYTES", "PMX_MAX_TENSORS",   "PMX_TLS_CERT",    "PMX_TLS_KEY",
    "PMX_FUZZ_UNUSED",
};
#define NENV (sizeof env_names / sizeof env_names[0])

int LLVMFuzzerInitialize(int* argc, char*** argv) {
  (void)argc;
  (void)argv;
  fuzz_quiet_stdio();
  /* Only the input decides which variables are set. */
  for (size_t i = 0; i < NENV; i++) unsetenv(env_names[i]);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  fuzz_strings in = fuzz_split(data + 1, size - 1, MAX_STRINGS);
  int nenv = data[0] & 7;
  if (nenv > in.n) nenv = in.n;
  for (int i = 0; i < nenv; i++) {
    const char* s = in.v[i];
    if (!*s) continue;
    FUZZ_CHECK(setenv(env_names[(uint8_t)s[0] % NENV], s + 1, 1) == 0);
  }
  const int argc = 1 + in.n - nenv;
  char** argv = calloc((size_t)argc + 1, sizeof *argv);
  FUZZ_CHECK(argv != NULL);
  argv[0] = "paramex-server";
  for (int i = nenv; i < in.n; i++) argv[1 + i - nenv] = in.v[i];

  px_config cfg;
  char err[256] = "";
  int rc = px_config_parse(&cfg, argc, argv, err, sizeof err);
  FUZZ_CHECK(rc == 0 || rc == 1 || rc == 2);
  FUZZ_CHECK(rc != 2 || (err[0] && !strchr(err, '\n'))); /* one line naming the problem */
  if (rc == 0) {
    FUZZ_CHECK(cfg.workers >= 1 && cfg.workers <= 4096);
    FUZZ_CHECK(cfg.chunk_bytes >= 1024 && cfg.chunk_bytes <= (3u << 20));
    FUZZ_CHECK(cfg.chunk_bytes % 4 == 0);
    FUZZ_CHECK(cfg.threads >= 1 && cfg.cq_threads >= 1);
    FUZZ_CHECK(cfg.history <= PX_MAX_HISTORY);
    FUZZ_CHECK(cfg.compression_level >= 1 && cfg.compression_level <= 19);
    FUZZ_CHECK(cfg.lr >= 0 && cfg.lr <= 1e6);
    FUZZ_CHECK(cfg.listen && strchr(cfg.listen, ':') && cfg.listen[0] != ':');
    FUZZ_CHECK(cfg.log_level && px_log_level_parse(cfg.log_level) >= 0);
  }

  for (size_t i = 0; i < NENV; i++) unsetenv(env_names[i]);
  free(argv);
  fuzz_strings_free(&in);
  return 0;
}
