/* safetensors files (https://github.com/huggingface/safetensors): checkpoints and exported
 * parameters in the layout ML tools already read.
 *
 * Layout: u64 little-endian N, then N bytes of UTF-8 JSON (padded with spaces to a
 * multiple of 8 by this writer), then the data section. The JSON object maps each tensor
 * name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data
 * section) plus an optional "__metadata__" object of string -> string. Tensor byte ranges
 * are contiguous, non-overlapping and cover the data section exactly; data is raw
 * little-endian.
 *
 * paramex adds two metadata keys: "paramex.format" = "1" and "paramex.data_xxh64" = 16 hex
 * digits, the xxh64 (seed 0) of the whole data section. Files from other writers lack
 * them and are accepted without a checksum.
 *
 * No global state; all functions are thread-safe on distinct handles, and an open
 * px_st_file may be read from several threads at once. Nothing here logs: failures are
 * reported as one line in the caller's err buffer (err may be NULL when errlen is 0).
 *
 * This header holds what the reader (safetensors_read.h) and the writer
 * (safetensors_write.h) share: the limits, the metadata keys, the spelling of element
 * types (the types themselves are codec/dtype.h's) and the helpers of their messages. */
#ifndef PX_SAFETENSORS_H
#define PX_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "codec/dtype.h"

/* Limits enforced by both the writer and the reader. */
#define PX_ST_MAX_HEADER (100u * 1024u * 1024u) /* bytes of JSON header */
#define PX_ST_MAX_NDIM 64u

#define PX_ST_KEY_FORMAT "paramex.format"
#define PX_ST_KEY_XXH64 "paramex.data_xxh64"
/* XXH64 (seed 0) of the header's JSON text as written with this key's value set to
 * "0000000000000000": the metadata (pmx.version, incarnations) and the tensor table are
 * covered, not only the data. */
#define PX_ST_KEY_HEADER_XXH64 "paramex.header_xxh64"
#define PX_ST_METADATA "__metadata__"

/* The safetensors spelling of a PX_DT_* type ("F32", "BF16", "U64", "?" when unknown),
 * written into buf (cap >= 8); returns buf. */
const char* px_st_dtype_name(int dtype, char* buf, size_t cap);
/* The PX_DT_* type of a safetensors spelling (upper case only); 0 when unknown. */
int px_st_dtype_parse(const char* s);

/* printf into err (nothing when err is NULL or errlen 0), with control characters
 * replaced by '?' so that the message stays one line whatever the file held. */
void px_st_seterr(char* err, size_t errlen, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* A name from an untrusted file, safe to quote in a one-line message: at most 64 bytes,
 * control characters replaced by '?', "..." when cut. */
typedef struct px_st_quoted {
  char s[72];
} px_st_quoted;
px_st_quoted px_st_quote(const char* name);
/* Product of the dimensions times elem into *out, or -1 on overflow. Any zero dimension
 * makes the result 0 even if the others would overflow. */
int px_st_shape_bytes(const uint64_t* shape, uint32_t ndim, size_t elem, uint64_t* out);

#endif
