/* Chunk payloads as they travel: encoding and decoding of one chunk of elements in the
 * encodings of proto/paramex.proto (RAW, UNCHANGED, DELTA_ZSTD, SHUFFLE_ZSTD). Decoding
 * works on untrusted input: the reconstructed chunk is checked against the sender's
 * checksum BEFORE the destination is written, so a hostile or corrupted payload never
 * changes the destination. Thread-safe; working memory is the calling thread's scratch (util/scratch.h), in the
 * slots each function names. */
#ifndef PX_PAYLOAD_H
#define PX_PAYLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "util/iov.h"
#include "wire/chunk_msg.h"

/* Encodings; values equal paramex.v1.Encoding. */
enum { PX_ENC_RAW = 0, PX_ENC_UNCHANGED = 1, PX_ENC_DELTA_ZSTD = 2, PX_ENC_SHUFFLE_ZSTD = 3 };
const char* px_encoding_name(uint32_t enc);

typedef enum {
  PX_DECODE_OK = 0,
  PX_DECODE_MALFORMED = -1, /* lengths, zstd frame or encoding wrong: a protocol error */
  PX_DECODE_CHECKSUM = -2,  /* well formed, but the result is not what the sender had */
} px_decode_result;

/* Decodes the payload located by px_chunk_parse (c, seg, nseg) into dst, a chunk of n
 * elements of width bytes (2 or 4). DELTA_ZSTD applies the delta to dst's current
 * contents (the base); UNCHANGED checks dst as it is. On any failure dst is untouched and
 * err holds one line. Uses px_scratch(0) and (1). */
px_decode_result px_chunk_decode(const px_chunk* c, const px_iov* seg, size_t nseg, void* dst,
                                   size_t n, int width, char* err, size_t errlen);
/* The same for a destination private to the caller, which may be written even when the
 * decode then fails (a receive buffer): a RAW payload is copied and hashed in one pass
 * instead of hashed in place and then copied (one read of the payload fewer). */
px_decode_result px_chunk_decode_private(const px_chunk* c, const px_iov* seg, size_t nseg,
                                           void* dst, size_t n, int width, char* err,
                                           size_t errlen);

/* Encodes a DELTA_ZSTD frame of new against base (n words of width bytes) into out (cap
 * >= px_zstd_bound(n*width)). Returns its size, 0 on error. Uses px_scratch(2), (3). */
size_t px_encode_delta(const void* new_, const void* base, size_t n, int width, int level,
                        uint8_t* out, size_t cap);
/* The same from an integer delta d = new - base that the caller already has. */
size_t px_encode_delta_words(const void* d, size_t n, int width, int level, uint8_t* out,
                              size_t cap);
/* Encodes a SHUFFLE_ZSTD frame of src. Returns its size, 0 on error. Uses px_scratch(2). */
size_t px_encode_shuffle(const void* src, size_t n, int width, int level, uint8_t* out,
                          size_t cap);
/* Decodes a DELTA_ZSTD frame (trusted, e.g. the server's own history) back to the words
 * d (n words of width bytes). Returns 0 or -1. Uses px_scratch(3). */
int px_decode_delta_words(const uint8_t* frame, size_t len, size_t n, int width, void* d);

#endif
