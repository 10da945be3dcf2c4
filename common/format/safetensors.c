/* What the safetensors reader and writer share (safetensors.h). */
#include "format/safetensors.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

const char* px_st_dtype_name(int dtype, char* buf, size_t cap) {
  const char* n = px_dtype_name(dtype);
  size_t i = 0;
  for (; n[i] && i + 1 < cap; i++) buf[i] = (char)toupper((unsigned char)n[i]);
  if (cap) buf[i] = 0;
  return buf;
}

int px_st_dtype_parse(const char* s) {
  /* upper case only: "f32" is not a safetensors spelling */
  for (const char* p = s; *p; p++)
    if (islower((unsigned char)*p)) return 0;
  return px_dtype_parse(s);
}

void px_st_seterr(char* err, size_t errlen, const char* fmt, ...) {
  if (!err || errlen == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
  /* one line whatever the file held (jansson quotes the input near a syntax error) */
  for (char* p = err; *p; p++)
    if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '?';
}

px_st_quoted px_st_quote(const char* name) {
  px_st_quoted r;
  size_t j = 0;
  for (const unsigned char* p = (const unsigned char*)name; *p && j < 64; p++)
    r.s[j++] = (*p < 0x20 || *p == 0x7f) ? '?' : (char)*p;
  if (name[j] && j == 64) memcpy(r.s + j, "...", 4);
  else r.s[j] = '\0';
  return r;
}

int px_st_shape_bytes(const uint64_t* shape, uint32_t ndim, size_t elem, uint64_t* out) {
  uint64_t p = elem;
  bool overflow = false;
  for (uint32_t i = 0; i < ndim; i++) {
    if (shape[i] == 0) {
      *out = 0;
      return 0;
    }
    if (!overflow && p > UINT64_MAX / shape[i]) overflow = true;
    if (!overflow) p *= shape[i];
  }
  if (overflow) return -1;
  *out = p;
  return 0;
}
