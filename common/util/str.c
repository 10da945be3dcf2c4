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

size_t px_utf8_seq(const unsigned char* p, size_t n) {
  unsigned c = p[0];
  if (c < 0x80) return 1;
  size_t len;
  unsigned lo = 0x80, hi = 0xBF; /* the second byte's range */
  if (c >= 0xC2 && c <= 0xDF) len = 2;
  else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;      /* overlong */
    else if (c == 0xED) hi = 0x9F; /* surrogates */
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;      /* overlong */
    else if (c == 0xF4) hi = 0x8F; /* above U+10FFFF */
  } else {
    return 0;
  }
  if (n < len || p[1] < lo || p[1] > hi) return 0;
  for (size_t k = 2; k < len; k++)
    if ((p[k] & 0xC0) != 0x80) return 0;
  return len;
}

int px_utf8_valid(const char* s, size_t n) {
  const unsigned char* p = (const unsigned char*)s;
  for (size_t i = 0; i < n;) {
    size_t len = px_utf8_seq(p + i, n - i);
    if (len == 0) return 0;
    i += len;
  }
  return 1;
}

size_t px_json_char(const unsigned char* p, size_t n, char out[6], size_t* used) {
  static const char hex[] = "0123456789abcdef";
  unsigned c = p[0];
  const char* esc = NULL;
  switch (c) {
    case '"': esc = "\\\""; break;
    case '\\': esc = "\\\\"; break;
    case '\b': esc = "\\b"; break;
    case '\f': esc = "\\f"; break;
    case '\n': esc = "\\n"; break;
    case '\r': esc = "\\r"; break;
    case '\t': esc = "\\t"; break;
    default: break;
  }
  *used = 1;
  if (esc) {
    out[0] = esc[0];
    out[1] = esc[1];
    return 2;
  }
  size_t len = c < 0x20 ? 0 : px_utf8_seq(p, n);
  if (len == 0) { /* a control character, or not UTF-8: \u00XX or the replacement */
    memcpy(out, c < 0x20 ? "\\u00XX" : "\\ufffd", 6);
    if (c < 0x20) {
      out[4] = hex[c >> 4];
      out[5] = hex[c & 15];
    }
    return 6;
  }
  memcpy(out, p, len);
  *used = len;
  return len;
}

int px_secret_equal(const char* want, size_t wl, const char* got, size_t gl) {
  unsigned diff = gl != wl;
  for (size_t i = 0; i < wl; i++)
    diff |= (unsigned)(unsigned char)want[i] ^ (i < gl ? (unsigned char)got[i] : 0u);
  return diff == 0;
}
