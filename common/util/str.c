/* Bounded string copies (str.h). */
#include "util/str.h"

#include <string.h>

char* px_strlcpy(char* dst, const char* src, size_t cap) {
  if (cap == 0) return dst;
  if (!src) src = "";
  size_t n = strnlen(src, cap - 1);
  memcpy(dst, src, n);
  dst[n] = '\0';
  return dst;
}

char* px_str_oneline(char* s) {
  for (char* p = s; p && *p; p++)
    if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '?';
  return s;
}
