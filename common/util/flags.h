/* Command-line flags, each also a PMX_* environment variable. */
#ifndef PX_FLAGS_H
#define PX_FLAGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* A flag named "chunk-bytes" is given as `--chunk-bytes V` or `--chunk-bytes=V`, and as
 * the environment variable PMX_CHUNK_BYTES (upper case, '-' -> '_'). Precedence:
 * command line > environment > the default already stored in *dst.
 * Types: STR stores a const char* pointing into argv/environ (not copied); U32/U64 are
 * decimal unsigned integers; SIZE is an unsigned integer with an optional K, M or G
 * suffix (powers of 1024, case-insensitive, optional trailing 'B' or "iB"); F64 is a
 * finite double; BOOL takes no value on the command line (`--flag` sets true, `--no-flag`
 * sets false) and "1/0/true/false/yes/no/on/off" in the environment.
 * Numeric values must lie in [min, max] (inclusive; ignored when min == max == 0). */
typedef enum { PX_FLAG_STR, PX_FLAG_U32, PX_FLAG_U64, PX_FLAG_SIZE, PX_FLAG_F64, PX_FLAG_BOOL } px_flag_type;

typedef struct px_flag {
  const char* name;    /* without dashes, e.g. "listen" */
  px_flag_type type;
  void* dst;           /* const char**, uint32_t*, uint64_t*, uint64_t* (SIZE), double*, bool* */
  double min, max;
  const char* metavar; /* shown in usage, e.g. "HOST:PORT"; NULL for BOOL */
  const char* help;    /* one line */
} px_flag;

typedef struct px_flags_result {
  int npositional;       /* arguments that are not flags, in order */
  char* positional[16];  /* point into argv */
} px_flags_result;

/* Returns 0 on success; 1 when --help/-h was given (usage not printed: call
 * px_flags_usage); 2 on any error, with one line naming the problem written to err
 * (e.g. "--workers: 'abc' is not an unsigned integer", "unknown flag --foo",
 * "PMX_LR: 'x' is not a number", "--workers: 0 is out of range [1, 1024]",
 * "too many arguments"). `--` ends flag parsing. *dst is left unchanged on error of that
 * flag. res may be NULL when no positional argument is allowed (then one is an error). */
int px_flags_parse(const px_flag* flags, size_t nflags, int argc, char** argv,
                    px_flags_result* res, char* err, size_t errlen);
/* Usage text: "usage: PROG SYNOPSIS" then one line per flag with its env variable and
 * current (default) value. */
void px_flags_usage(FILE* out, const char* prog, const char* synopsis, const px_flag* flags,
                     size_t nflags);
/* Parses a SIZE value as above; returns 0 or -1. */
int px_parse_size(const char* s, uint64_t* out);

#endif
