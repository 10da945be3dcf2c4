/* Whole-file reads for certificates and tokens. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util/file.h"

char* px_read_file(const char* path, size_t max, size_t* len, char* err, size_t errlen) {
  FILE* f = fopen(path, "rb");
  if (!f) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return NULL;
  }
  struct stat st;
  if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
    snprintf(err, errlen, "%s: not a regular file", path);
    fclose(f);
    return NULL;
  }
  if ((uint64_t)st.st_size > max) {
    snprintf(err, errlen, "%s: larger than %zu bytes", path, max);
    fclose(f);
    return NULL;
  }
  size_t n = (size_t)st.st_size;
  char* buf = malloc(n + 1);
  if (!buf) {
    snprintf(err, errlen, "%s: out of memory", path);
    fclose(f);
    return NULL;
  }
  size_t got = fread(buf, 1, n, f);
  int rerr = ferror(f);
  fclose(f);
  if (rerr || got != n) {
    snprintf(err, errlen, "%s: read error", path);
    free(buf);
    return NULL;
  }
  buf[n] = 0;
  if (len) *len = n;
  return buf;
}

char* px_read_token(const char* path, char* err, size_t errlen) {
  size_t n;
  char* t = px_read_file(path, 4096, &n, err, errlen);
  if (!t) return NULL;
  while (n > 0 && (t[n - 1] == '\n' || t[n - 1] == '\r' || t[n - 1] == ' ' || t[n - 1] == '\t'))
    t[--n] = 0;
  bool bad = n == 0;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)t[i] < 0x21 || (unsigned char)t[i] == 0x7f) bad = true;
  if (bad) {
    snprintf(err, errlen, "%s: the token is empty or contains spaces or control characters", path);
    px_free_secret(t);
    return NULL;
  }
  return t;
}

void px_free_secret(char* s) {
  if (!s) return;
  volatile char* v = s;
  for (size_t i = 0; v[i]; i++) v[i] = 0;
  free(s);
}
