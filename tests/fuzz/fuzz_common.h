/* Helpers shared by the libFuzzer targets in tests/fuzz/ (built by scripts/fuzz.sh).
 * Header-only: every target is one translation unit linked with the paramex sources it
 * exercises. Everything here is for fuzzing only: a broken invariant calls abort() so that
 * libFuzzer records the input as a crash. */
#ifndef PX_FUZZ_COMMON_H
#define PX_FUZZ_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
int LLVMFuzzerInitialize(int* argc, char*** argv);

/* Reports a broken invariant on fd 2 (not through stderr, which fuzz_quiet_stdio may
 * have pointed at /dev/null) and aborts. */
#define FUZZ_CHECK(cond)                                                                \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      dprintf(2, "%s:%d: fuzz invariant failed: %s\n", __FILE__, __LINE__, #cond);     \
      abort();                                                                          \
    }                                                                                   \
  } while (0)

/* The contents of a destination chunk before decoding: the base that DELTA_ZSTD applies
 * to and that UNCHANGED is checked against. make_corpus.c uses the same bytes, so the
 * seed chunks decode successfully. */
static inline void fuzz_fill_base(uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(i * 37u + 11u);
}

/* True when the error buffer holds a NUL-terminated line that fits in errlen. */
static inline int fuzz_err_ok(const char* err, size_t errlen) {
  return errlen == 0 || memchr(err, '\0', errlen) != NULL;
}

/* Input bytes split at NUL bytes into strings, each in its own heap block (so that ASan
 * sees a read past any terminator). At most max strings; bytes after the last one
 * allowed are ignored. The last piece is whatever follows the last NUL (may be ""). */
typedef struct fuzz_strings {
  int n;
  char** v; /* v[n] == NULL */
} fuzz_strings;

static inline fuzz_strings fuzz_split(const uint8_t* d, size_t len, int max) {
  fuzz_strings s = {0, calloc((size_t)max + 1, sizeof(char*))};
  FUZZ_CHECK(s.v != NULL);
  size_t start = 0;
  while (s.n < max) {
    const uint8_t* nul = start < len ? memchr(d + start, 0, len - start) : NULL;
    size_t end = nul ? (size_t)(nul - d) : len;
    char* p = malloc(end - start + 1);
    FUZZ_CHECK(p != NULL);
    if (end > start) memcpy(p, d + start, end - start);
    p[end - start] = '\0';
    s.v[s.n++] = p;
    if (!nul) break;
    start = end + 1;
  }
  return s;
}

static inline void fuzz_strings_free(fuzz_strings* s) {
  for (int i = 0; i < s->n; i++) free(s->v[i]);
  free(s->v);
  s->v = NULL;
  s->n = 0;
}

/* Silences the C streams of the code under test (usage text, one-line errors) without
 * touching file descriptors 1 and 2: libFuzzer captured its own stderr FILE before
 * LLVMFuzzerInitialize runs and the sanitizers write to fd 2 directly, so their reports
 * still appear. Set PMX_FUZZ_VERBOSE=1 to see the output when reproducing. */
static inline void fuzz_quiet_stdio(void) {
  if (getenv("PMX_FUZZ_VERBOSE")) return;
  FILE* null = fopen("/dev/null", "w");
  if (!null) return;
  stdout = null;
  stderr = null;
}

#endif
