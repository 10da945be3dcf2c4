/* Fuzz target: command-line flags and PMX_* environment variables (px_flags_parse,
 * util/util.h) over a table with every flag type, with and without ranges.
 *
 * Input layout:
 *   byte 0  bits 0-2: how many of the strings below are environment assignments (the
 *           first ones); bit 3: res == NULL (no positional argument allowed); bits 4-5:
 *           error buffer (NULL/0, 1, 16 or 256 bytes)
 *   rest    strings separated by NUL bytes (at most MAX_STRINGS). An environment string's
 *           first byte picks the variable (modulo the names below) and the rest is its
 *           value; the other strings are argv[1..] (argv[0] is "fuzz").
 *
 * Checks, besides ASan/UBSan: the return value is 0, 1 or 2; a failure leaves one line that
 * fits in err; on success every ranged value lies in its range, doubles are finite and a
 * string flag points at its default, an argv string or its environment value; positional
 * arguments point into argv. The usage text is then printed (to /dev/null) with whatever
 * values were parsed. Every variable is unset again before returning. */
#include <math.h>

#include "fuzz_common.h"
#include "util/flags.h"

#define MAX_STRINGS 48
#define LONG_NAME                                                                        \
  "fuzz-long-name-lllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllll" \
  "lllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllll"

static const char* v_str;
static const char* v_long;
static uint32_t v_u32, v_u32r;
static uint64_t v_u64, v_u64r, v_size, v_sizer;
static double v_f64, v_f64r;
static bool v_bool, v_no_x;

static const px_flag flags[] = {
    {"fuzz-str", PX_FLAG_STR, &v_str, 0, 0, "S", "a string"},
    {"fuzz-u32", PX_FLAG_U32, &v_u32, 0, 0, "N", "u32, no range"},
    {"fuzz-u32-range", PX_FLAG_U32, &v_u32r, 1, 4096, "N", "u32 in [1, 4096]"},
    {"fuzz-u64", PX_FLAG_U64, &v_u64, 0, 0, "N", "u64, no range"},
    {"fuzz-u64-range", PX_FLAG_U64, &v_u64r, 10, 1e18, "N", "u64 in [10, 1e18]"},
    {"fuzz-size", PX_FLAG_SIZE, &v_size, 0, 0, "SIZE", "size, no range"},
    {"fuzz-size-range", PX_FLAG_SIZE, &v_sizer, 1024, 3u << 20, "SIZE", "size in [1K, 3M]"},
    {"fuzz-f64", PX_FLAG_F64, &v_f64, 0, 0, "F", "double, no range"},
    {"fuzz-f64-range", PX_FLAG_F64, &v_f64r, -1, 0.5, "F", "double in [-1, 0.5]"},
    {"fuzz-bool", PX_FLAG_BOOL, &v_bool, 0, 0, NULL, "bool"},
    /* A flag whose name starts with "no-": --no-x must not be read as its negation. */
    {"no-x", PX_FLAG_BOOL, &v_no_x, 0, 0, NULL, "bool named no-x"},
    /* Longer than the parser's environment-name buffer. */
    {LONG_NAME, PX_FLAG_STR, &v_long, 0, 0, NULL, "long name"},
};
#define NFLAGS (sizeof flags / sizeof flags[0])

/* The variables the input may set: one per flag (as util.h derives them), the long
 * flag's name cut to 127 characters (what a 128-byte name buffer would hold), and one
 * that no flag reads. */
static char env_names[NFLAGS + 2][256];
#define NENV (sizeof env_names / sizeof env_names[0])
#define ENV_LONG_CUT NFLAGS

static FILE* devnull;

int LLVMFuzzerInitialize(int* argc, char*** argv) {
  (void)argc;
  (void)argv;
  for (size_t i = 0; i < NFLAGS; i++) {
    size_t n = 0;
    for (const char* p = "PMX_"; *p; p++) env_names[i][n++] = *p;
    for (const char* p = flags[i].name; *p && n + 1 < sizeof env_names[i]; p++)
      env_names[i][n++] = *p == '-' ? '_' : (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
    env_names[i][n] = '\0';
  }
  snprintf(env_names[ENV_LONG_CUT], 128, "%s", env_names[NFLAGS - 1]);
  snprintf(env_names[NFLAGS + 1], sizeof env_names[NFLAGS + 1], "PMX_FUZZ_UNUSED");
  devnull = fopen("/dev/null", "w");
  FUZZ_CHECK(devnull != NULL);
  return 0;
}

static void set_defaults(void) {
  v_str = "default";
  v_long = NULL;
  v_u32 = 7;
  v_u32r = 1;
  v_u64 = 0;
  v_u64r = 10;
  v_size = 1u << 20;
  v_sizer = 1024;
  v_f64 = 0.25;
  v_f64r = 0;
  v_bool = true;
  v_no_x = false;
}

static bool in_argv(const char* s, const fuzz_strings* argv, int first) {
  for (int i = first; i < argv->n; i++) {
    size_t n = strlen(argv->v[i]);
    if (s >= argv->v[i] && s <= argv->v[i] + n) return true;
  }
  return false;
}

static bool str_ok(const char* s, const char* def, const char* envname, const fuzz_strings* in,
                   int first) {
  return s == def || in_argv(s, in, first) || (s && s == getenv(envname));
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t opt = data[0];
  fuzz_strings in = fuzz_split(data + 1, size - 1, MAX_STRINGS);
  int nenv = opt & 7;
  if (nenv > in.n) nenv = in.n;
  for (int i = 0; i < nenv; i++) {
    const char* s = in.v[i];
    if (!*s) continue;
    FUZZ_CHECK(setenv(env_names[(uint8_t)s[0] % NENV], s + 1, 1) == 0);
  }
  /* argv[0] is the program name, then the remaining strings. */
  const int argc = 1 + in.n - nenv;
  char** argv = calloc((size_t)argc + 1, sizeof *argv);
  FUZZ_CHECK(argv != NULL);
  argv[0] = "fuzz";
  for (int i = nenv; i < in.n; i++) argv[1 + i - nenv] = in.v[i];

  static const size_t errlens[4] = {0, 1, 16, 256};
  const size_t errlen = errlens[(opt >> 4) & 3];
  char errbuf[256];
  char* err = errlen ? errbuf : NULL;
  if (err) memset(err, 'x', errlen);
  px_flags_result res;
  px_flags_result* resp = (opt & 8) ? NULL : &res;

  set_defaults();
  const char* def_str = v_str;
  int rc = px_flags_parse(flags, NFLAGS, argc, argv, resp, err, errlen);
  FUZZ_CHECK(rc == 0 || rc == 1 || rc == 2);
  if (err) FUZZ_CHECK(fuzz_err_ok(err, errlen));
  if (rc == 2 && errlen > 1) FUZZ_CHECK(err[0] != '\0');
  if (rc == 0) {
    FUZZ_CHECK(v_u32r >= 1 && v_u32r <= 4096);
    FUZZ_CHECK(v_u64r >= 10 && v_u64r <= 1000000000000000000ull);
    FUZZ_CHECK(v_sizer >= 1024 && v_sizer <= (3u << 20));
    FUZZ_CHECK(isfinite(v_f64));
    FUZZ_CHECK(v_f64r >= -1 && v_f64r <= 0.5);
    FUZZ_CHECK(str_ok(v_str, def_str, env_names[0], &in, nenv));
    FUZZ_CHECK(str_ok(v_long, NULL, env_names[NFLAGS - 1], &in, nenv) ||
               (v_long && v_long == getenv(env_names[ENV_LONG_CUT])));
    if (resp) {
      FUZZ_CHECK(res.npositional >= 0 && res.npositional <= 16);
      for (int i = 0; i < res.npositional; i++) {
        bool found = false;
        for (int j = 1; j < argc; j++) found = found || res.positional[i] == argv[j];
        FUZZ_CHECK(found);
      }
    }
  }
  px_flags_usage(devnull, "fuzz", "[flags]", flags, NFLAGS);
  for (int i = 0; i < in.n; i++) {
    uint64_t v;
    (void)px_parse_size(in.v[i], &v);
  }

  for (size_t i = 0; i < NENV; i++) unsetenv(env_names[i]);
  free(argv);
  fuzz_strings_free(&in);
  return 0;
}
