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
