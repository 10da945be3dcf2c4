/* Whole-file reads for certificates and secrets. */
#ifndef PX_FILE_H
#define PX_FILE_H

#include <stddef.h>

/* Reads a whole regular file (at most max bytes) into a NUL-terminated malloc'd buffer;
 * *len (may be NULL) gets its length. NULL with one line in err ("PATH: No such file or
 * directory", "PATH: larger than 1048576 bytes") on failure. */
char* px_read_file(const char* path, size_t max, size_t* len, char* err, size_t errlen);
/* Reads a secret token from path: the file's content without trailing whitespace; empty
 * or containing control characters is an error. Returns a malloc'd string (free it with
 * px_free_secret) or NULL with err. */
char* px_read_token(const char* path, char* err, size_t errlen);
/* Overwrites and frees a secret (accepts NULL). */
void px_free_secret(char* s);

#endif
