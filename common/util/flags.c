/* Command-line flags and PMX_* environment variables (flags.h).
 *
 * argv[0] is the program (or subcommand) name and is skipped. The command line is parsed
 * first; afterwards every flag that the command line did not set is looked up in the
 * environment, so an invalid environment value of a flag given on the command line is
 * never read. Numbers are parsed by hand: strtoull would accept "-1", " 1" and "+1". */
#include <ctype.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/flags.h"
#include "util/str.h"

#define MAX_FLAGS 64
#define ENV_NAME_MAX 128

/* Decimal digits only, no sign, no spaces; -1 when not a number, -2 on overflow.
 * *end receives the first byte after the digits. */
static int parse_digits(const char* s, uint64_t* out, const char** end) {
  uint64_t v = 0;
  const char* p = s;
  if (!isdigit((unsigned char)*p)) return -1;
  for (; isdigit((unsigned char)*p); p++) {
    unsigned d = (unsigned)(*p - '0');
    if (v > (UINT64_MAX - d) / 10) return -2;
    v = v * 10 + d;
  }
  *out = v;
  *end = p;
  return 0;
}

static int parse_size_rc(const char* s, uint64_t* out) {
  uint64_t v;
  const char* p;
  int rc = parse_digits(s, &v, &p);
  if (rc) return rc;
  unsigned shift = 0;
  switch (*p) {
    case 'k': case 'K': shift = 10; p++; break;
    case 'm': case 'M': shift = 20; p++; break;
    case 'g': case 'G': shift = 30; p++; break;
    default: break;
  }
  if (shift && (*p == 'i' || *p == 'I')) {
    p++;
    if (*p != 'b' && *p != 'B') return -1;
  }
  if (*p == 'b' || *p == 'B') p++;
  if (*p) return -1;
  if (shift && v > (UINT64_MAX >> shift)) return -2;
  *out = v << shift;
  return 0;
}

int px_parse_size(const char* s, uint64_t* out) {
  uint64_t v;
  if (!s || parse_size_rc(s, &v) != 0) return -1;
  *out = v;
  return 0;
}

static int parse_bool(const char* s, bool* out) {
  static const char* const yes[] = {"1", "true", "yes", "on"};
  static const char* const no[] = {"0", "false", "no", "off"};
  for (int i = 0; i < 4; i++) {
    if (strcasecmp(s, yes[i]) == 0) { *out = true; return 0; }
    if (strcasecmp(s, no[i]) == 0) { *out = false; return 0; }
  }
  return -1;
}

static bool has_range(const px_flag* f) { return !(f->min == 0 && f->max == 0); }

/* Integers print as integers, the rest with enough digits to be recognisable. */
static void fmt_num(char* buf, size_t cap, double v) {
  if (v == floor(v) && fabs(v) < 1.8446744073709552e19)
    snprintf(buf, cap, "%s%" PRIu64, v < 0 ? "-" : "", (uint64_t)fabs(v));
  else
    snprintf(buf, cap, "%.15g", v);
}

static int range_error(const px_flag* f, const char* who, double v, char* err, size_t errlen) {
  char a[32], b[32], c[32];
  fmt_num(a, sizeof a, v);
  fmt_num(b, sizeof b, f->min);
  fmt_num(c, sizeof c, f->max);
  snprintf(err, errlen, "%s: %s is out of range [%s, %s]", who, a, b, c);
  return -1;
}

/* Parses text for flag f and stores it in *f->dst. who names the source in errors
 * ("--workers" or "PMX_WORKERS"). *dst is written only on success. */
static int set_value(const px_flag* f, const char* who, const char* s, char* err, size_t errlen) {
  switch (f->type) {
    case PX_FLAG_STR:
      *(const char**)f->dst = s;
      return 0;
    case PX_FLAG_U32:
    case PX_FLAG_U64:
    case PX_FLAG_SIZE: {
      uint64_t v;
      const char* end;
      int rc;
      if (f->type == PX_FLAG_SIZE) {
        rc = parse_size_rc(s, &v);
      } else {
        rc = parse_digits(s, &v, &end);
        if (rc == 0 && *end) rc = -1;
      }
      if (rc == -1) {
        snprintf(err, errlen, "%s: '%s' is not %s", who, s,
                 f->type == PX_FLAG_SIZE ? "a size (N, NK, NM or NG)" : "an unsigned integer");
        return -1;
      }
      if (rc == -2 || (f->type == PX_FLAG_U32 && v > UINT32_MAX)) {
        snprintf(err, errlen, "%s: '%s' is too large", who, s);
        return -1;
      }
      if (has_range(f) && ((double)v < f->min || (double)v > f->max))
        return range_error(f, who, (double)v, err, errlen);
      if (f->type == PX_FLAG_U32)
        *(uint32_t*)f->dst = (uint32_t)v;
      else
        *(uint64_t*)f->dst = v;
      return 0;
    }
    case PX_FLAG_F64: {
      char* end = NULL;
      double v = 0;
      if (*s && !isspace((unsigned char)*s)) v = strtod(s, &end);
      if (!end || end == s || *end) {
        snprintf(err, errlen, "%s: '%s' is not a number", who, s);
        return -1;
      }
      if (!isfinite(v)) {
        snprintf(err, errlen, "%s: '%s' is not a finite number", who, s);
        return -1;
      }
      if (has_range(f) && (v < f->min || v > f->max)) return range_error(f, who, v, err, errlen);
      *(double*)f->dst = v;
      return 0;
    }
    case PX_FLAG_BOOL: {
      bool b;
      if (parse_bool(s, &b) != 0) {
        snprintf(err, errlen, "%s: '%s' is not a boolean (true/false, yes/no, on/off, 1/0)",
                 who, s);
        return -1;
      }
      *(bool*)f->dst = b;
      return 0;
    }
  }
  snprintf(err, errlen, "%s: bad flag type", who);
  return -1;
}

/* "chunk-bytes" -> "PMX_CHUNK_BYTES"; cap >= 5. */
static void env_name(const char* flag, char* buf, size_t cap) {
  size_t n = 0;
  for (const char* p = "PMX_"; *p; p++) buf[n++] = *p;
  for (const char* p = flag; *p && n + 1 < cap; p++)
    buf[n++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
  buf[n] = '\0';
}

/* The flag named exactly [name, name+len), or NULL. */
static const px_flag* find_flag(const px_flag* flags, size_t nflags, const char* name,
                                 size_t len) {
  for (size_t i = 0; i < nflags; i++)
    if (strlen(flags[i].name) == len && memcmp(flags[i].name, name, len) == 0) return &flags[i];
  return NULL;
}

static int parse_flags(const px_flag* flags, size_t nflags, int argc, char** argv,
                       px_flags_result* res, char* err, size_t errlen) {
  bool seen[MAX_FLAGS] = {false};
  char dummy[1];
  if (!err || errlen == 0) {
    err = dummy;
    errlen = sizeof dummy;
  }
  err[0] = '\0';
  if (nflags > MAX_FLAGS) {
    snprintf(err, errlen, "too many flags declared (%zu > %d)", nflags, MAX_FLAGS);
    return 2;
  }
  if (res) res->npositional = 0;

  bool flags_done = false;
  for (int i = 1; i < argc; i++) {
    char* a = argv[i];
    bool is_flag = !flags_done && a[0] == '-' && a[1] != '\0';
    if (!is_flag) {
      if (!res) {
        snprintf(err, errlen, "unexpected argument '%s'", a);
        return 2;
      }
      if (res->npositional >= (int)(sizeof res->positional / sizeof res->positional[0])) {
        snprintf(err, errlen, "too many arguments");
        return 2;
      }
      res->positional[res->npositional++] = a;
      continue;
    }
    if (strcmp(a, "--") == 0) {
      flags_done = true;
      continue;
    }
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) return 1;
    if (a[1] != '-') {
      snprintf(err, errlen, "unknown flag %s", a);
      return 2;
    }

    const char* name = a + 2;
    const char* eq = strchr(name, '=');
    size_t len = eq ? (size_t)(eq - name) : strlen(name);
    const px_flag* f = find_flag(flags, nflags, name, len);
    bool negated = false;
    if (!f && len > 3 && strncmp(name, "no-", 3) == 0) {
      f = find_flag(flags, nflags, name + 3, len - 3);
      if (f && f->type != PX_FLAG_BOOL) f = NULL;
      negated = f != NULL;
    }
    if (!f) {
      snprintf(err, errlen, "unknown flag --%.*s", (int)len, name);
      return 2;
    }
    char who[ENV_NAME_MAX];
    snprintf(who, sizeof who, "--%.*s", (int)len, name);

    if (f->type == PX_FLAG_BOOL) {
      if (eq) {
        snprintf(err, errlen, "%s: takes no value", who);
        return 2;
      }
      *(bool*)f->dst = !negated;
    } else {
      const char* v;
      if (eq) {
        v = eq + 1;
      } else if (i + 1 < argc) {
        v = argv[++i];
      } else {
        snprintf(err, errlen, "%s: missing value", who);
        return 2;
      }
      if (set_value(f, who, v, err, errlen) != 0) return 2;
    }
    seen[f - flags] = true;
  }

  for (size_t i = 0; i < nflags; i++) {
    if (seen[i]) continue;
    char ename[ENV_NAME_MAX];
    env_name(flags[i].name, ename, sizeof ename);
    const char* v = getenv(ename);
    if (v && set_value(&flags[i], ename, v, err, errlen) != 0) return 2;
  }
  return 0;
}

static void fmt_size(char* buf, size_t cap, uint64_t v) {
  static const char* const units[] = {"GiB", "MiB", "KiB"};
  static const unsigned shifts[] = {30, 20, 10};
  for (int i = 0; i < 3; i++) {
    if (v != 0 && (v & ((UINT64_C(1) << shifts[i]) - 1)) == 0) {
      snprintf(buf, cap, "%" PRIu64 "%s", v >> shifts[i], units[i]);
      return;
    }
  }
  snprintf(buf, cap, "%" PRIu64, v);
}

static void fmt_default(const px_flag* f, char* buf, size_t cap) {
  switch (f->type) {
    case PX_FLAG_STR: {
      const char* s = *(const char* const*)f->dst;
      snprintf(buf, cap, "%s%s%s", s ? "\"" : "", s ? s : "none", s ? "\"" : "");
      return;
    }
    case PX_FLAG_U32: snprintf(buf, cap, "%" PRIu32, *(const uint32_t*)f->dst); return;
    case PX_FLAG_U64: snprintf(buf, cap, "%" PRIu64, *(const uint64_t*)f->dst); return;
    case PX_FLAG_SIZE: fmt_size(buf, cap, *(const uint64_t*)f->dst); return;
    case PX_FLAG_F64: snprintf(buf, cap, "%g", *(const double*)f->dst); return;
    case PX_FLAG_BOOL: snprintf(buf, cap, "%s", *(const bool*)f->dst ? "true" : "false"); return;
  }
  snprintf(buf, cap, "?");
}

void px_flags_usage(FILE* out, const char* prog, const char* synopsis, const px_flag* flags,
                     size_t nflags) {
  fprintf(out, "usage: %s%s%s\n", prog, synopsis && *synopsis ? " " : "",
          synopsis ? synopsis : "");
  if (nflags) fprintf(out, "\nflags:\n");
  for (size_t i = 0; i < nflags; i++) {
    const px_flag* f = &flags[i];
    char left[160], ename[ENV_NAME_MAX], def[160];
    if (f->type == PX_FLAG_BOOL)
      snprintf(left, sizeof left, "--[no-]%s", f->name);
    else
      snprintf(left, sizeof left, "--%s %s", f->name, f->metavar ? f->metavar : "VALUE");
    env_name(f->name, ename, sizeof ename);
    fmt_default(f, def, sizeof def);
    fprintf(out, "  %-28s %s (env %s, default %s)\n", left, f->help ? f->help : "", ename, def);
  }
  fprintf(out, "  %-28s %s\n", "-h, --help", "show this help");
}

int px_flags_parse(const px_flag* flags, size_t nflags, int argc, char** argv,
                   px_flags_result* res, char* err, size_t errlen) {
  int rc = parse_flags(flags, nflags, argc, argv, res, err, errlen);
  if (rc == 2 && err && errlen) px_str_oneline(err); /* values are quoted as given */
  return rc;
}
