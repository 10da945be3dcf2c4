/* Bounded string copies, UTF-8 checks and JSON string escaping. */
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

/* Whether got[0..gl) equals want[0..wl) (a bearer header against the expected one), in
 * time that depends only on wl: no early exit on the first difference. */
int px_secret_equal(const char* want, size_t wl, const char* got, size_t gl);

/* Length of the well-formed UTF-8 sequence that starts at p (n >= 1 bytes available), 0
 * when p[0] does not start one (the same rules as px_utf8_valid). */
size_t px_utf8_seq(const unsigned char* p, size_t n);

/* The JSON string form of the character at p (n >= 1 bytes available): writes 1 to 6
 * bytes into out (no NUL) and returns how many; *used is set to the input bytes it
 * stands for. Quotes, backslashes and control characters are escaped; a byte that does
 * not start a well-formed UTF-8 sequence becomes \ufffd (used 1), so that any input
 * gives a valid JSON string. */
size_t px_json_char(const unsigned char* p, size_t n, char out[6], size_t* used);

#endif
