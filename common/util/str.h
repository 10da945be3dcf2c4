/* Bounded string copies. */
#ifndef PX_STR_H
#define PX_STR_H

#include <stddef.h>

/* Copies src (NULL: "") into dst[0..cap), always NUL-terminated when cap > 0, cut to fit;
 * returns dst. */
char* px_strlcpy(char* dst, const char* src, size_t cap);

/* Replaces every control character of s (newline included) with '?', so that a message
 * quoting untrusted text stays one line; returns s. */
char* px_str_oneline(char* s);

/* Whether s[0..n) is well-formed UTF-8 (no overlong forms, no surrogates, at most
 * U+10FFFF): what a protobuf string field must hold for other languages' parsers. */
int px_utf8_valid(const char* s, size_t n);

#endif
