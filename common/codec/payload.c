/* Chunk payload encode/decode on top of the transforms and zstd frames (payload.h). */
#include "codec/payload.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

#include "codec/checksum.h"
#include "codec/transform.h"
#include "codec/zstdframe.h"
#include "util/scratch.h"

const char* px_encoding_name(uint32_t enc) {
  switch (enc) {
    case PX_ENC_RAW: return "raw";
    case PX_ENC_UNCHANGED: return "unchanged";
    case PX_ENC_DELTA_ZSTD: return "delta+zstd";
    case PX_ENC_SHUFFLE_ZSTD: return "shuffle+zstd";
  }
  return "unknown";
}

/* ---- decode ------------------------------------------------------------------------------ */

/* Copies the payload into contiguous memory when it spans segments. */
static const uint8_t* payload_flat(const px_chunk* c, const px_iov* seg, size_t nseg,
                                   uint8_t* tmp) {
  size_t i = c->payload_seg, off = c->payload_off;
  while (i < nseg && off >= seg[i].n) {
    i++;
    off = 0;
  }
  if (c->payload_len == 0) return tmp;
  if (i < nseg && seg[i].n - off >= c->payload_len) return seg[i].p + off;
  if (px_chunk_copy_payload(c, seg, nseg, tmp, c->payload_len) != 0) return NULL;
  return tmp;
}

/* Walks a RAW payload of `bytes` and checks its checksum. With dst, copies it there on the
 * way, 32 KiB at a time, hashing each block where it was just written (in L1), so the
 * payload is read once; without, only hashes it where it lies. */
static px_decode_result raw_walk(const px_chunk* c, const px_iov* seg, size_t nseg,
                                  uint8_t* dst, size_t bytes, char* err, size_t errlen) {
  enum { BLOCK = 32 << 10 };
  XXH3_state_t st;
  XXH3_INITSTATE(&st);
  XXH3_64bits_reset(&st);
  size_t i = c->payload_seg, off = c->payload_off, left = bytes;
  while (left > 0 && i < nseg) {
    size_t k = seg[i].n - off < left ? seg[i].n - off : left;
    if (!dst) {
      XXH3_64bits_update(&st, seg[i].p + off, k);
    } else {
      for (size_t done = 0; done < k;) {
        size_t b = k - done < BLOCK ? k - done : BLOCK;
        memcpy(dst, seg[i].p + off + done, b);
        XXH3_64bits_update(&st, dst, b);
        dst += b;
        done += b;
      }
    }
    left -= k;
    i++;
    off = 0;
  }
  if (left > 0) {
    snprintf(err, errlen, "RAW payload truncated");
    return PX_DECODE_MALFORMED;
  }
  if (XXH3_64bits_digest(&st) != c->checksum) {
    snprintf(err, errlen, "checksum mismatch");
    return PX_DECODE_CHECKSUM;
  }
  return PX_DECODE_OK;
}

px_decode_result px_chunk_decode_private(const px_chunk* c, const px_iov* seg, size_t nseg,
                                           void* dst, size_t n, int width, char* err,
                                           size_t errlen) {
  const size_t bytes = n * (size_t)width;
  if (c->encoding == PX_ENC_RAW && c->raw_len == bytes && c->payload_len == bytes)
    return raw_walk(c, seg, nseg, dst, bytes, err, errlen);
  return px_chunk_decode(c, seg, nseg, dst, n, width, err, errlen);
}

px_decode_result px_chunk_decode(const px_chunk* c, const px_iov* seg, size_t nseg, void* dst,
                                   size_t n, int width, char* err, size_t errlen) {
  const size_t bytes = n * (size_t)width;
  if (c->raw_len != bytes) {
    snprintf(err, errlen, "raw_len %u, expected %zu", c->raw_len, bytes);
    return PX_DECODE_MALFORMED;
  }
  switch (c->encoding) {
    case PX_ENC_UNCHANGED:
      if (c->payload_len != 0) {
        snprintf(err, errlen, "an UNCHANGED chunk carries %zu bytes", c->payload_len);
        return PX_DECODE_MALFORMED;
      }
      if (px_checksum(dst, bytes) != c->checksum) {
        snprintf(err, errlen, "checksum mismatch of the unchanged chunk");
        return PX_DECODE_CHECKSUM;
      }
      return PX_DECODE_OK;
    case PX_ENC_RAW: {
      if (c->payload_len != bytes) {
        snprintf(err, errlen, "RAW payload of %zu bytes, expected %zu", c->payload_len, bytes);
        return PX_DECODE_MALFORMED;
      }
      /* Hash the payload where it lies, then copy it once: dst stays untouched on failure. */
      px_decode_result r = raw_walk(c, seg, nseg, NULL, bytes, err, errlen);
      if (r != PX_DECODE_OK) return r;
      px_chunk_copy_payload(c, seg, nseg, dst, bytes);
      return PX_DECODE_OK;
    }
    case PX_ENC_DELTA_ZSTD:
    case PX_ENC_SHUFFLE_ZSTD: {
      if (c->payload_len == 0 || c->payload_len > px_zstd_bound(bytes)) {
        snprintf(err, errlen, "%s payload of %zu bytes for a %zu-byte chunk",
                 px_encoding_name(c->encoding), c->payload_len, bytes);
        return PX_DECODE_MALFORMED;
      }
      uint8_t* s0 = px_scratch(0, px_zstd_bound(bytes));
      uint8_t* s1 = px_scratch(1, bytes);
      if (!s0 || !s1) {
        snprintf(err, errlen, "out of memory");
        return PX_DECODE_MALFORMED;
      }
      const uint8_t* frame = payload_flat(c, seg, nseg, s0);
      char zerr[160];
      if (!frame || px_zstd_decompress(frame, c->payload_len, s1, bytes, zerr, sizeof zerr) != 0) {
        snprintf(err, errlen, "bad zstd frame: %s", frame ? zerr : "truncated");
        return PX_DECODE_MALFORMED;
      }
      /* s1: shuffled words; s0 (free again) and then s1 hold the result */
      const uint8_t* result = s0;
      if (c->encoding == PX_ENC_DELTA_ZSTD) {
        px_unshuffle_unzigzag(s1, n, width, s0);
        px_delta_apply(dst, s0, n, width, s1); /* no aliasing: d and out differ */
        result = s1;
      } else {
        px_unshuffle(s1, n, width, s0);
      }
      if (px_checksum(result, bytes) != c->checksum) {
        snprintf(err, errlen, "checksum mismatch%s",
                 c->encoding == PX_ENC_DELTA_ZSTD ? " (wrong or modified base?)" : "");
        return PX_DECODE_CHECKSUM;
      }
      memcpy(dst, result, bytes);
      return PX_DECODE_OK;
    }
  }
  snprintf(err, errlen, "unknown encoding %u", c->encoding);
  return PX_DECODE_MALFORMED;
}

/* ---- encode ------------------------------------------------------------------------------ */

size_t px_encode_delta_words(const void* d, size_t n, int width, int level, uint8_t* out,
                              size_t cap) {
  uint8_t* sh = px_scratch(2, n * (size_t)width);
  if (!sh) return 0;
  px_zigzag_shuffle(d, n, width, sh);
  return px_zstd_compress(sh, n * (size_t)width, out, cap, level);
}

size_t px_encode_delta(const void* new_, const void* base, size_t n, int width, int level,
                        uint8_t* out, size_t cap) {
  uint8_t* d = px_scratch(3, n * (size_t)width);
  if (!d) return 0;
  px_delta(new_, base, n, width, d);
  return px_encode_delta_words(d, n, width, level, out, cap);
}

size_t px_encode_shuffle(const void* src, size_t n, int width, int level, uint8_t* out,
                          size_t cap) {
  uint8_t* sh = px_scratch(2, n * (size_t)width);
  if (!sh) return 0;
  px_shuffle(src, n, width, sh);
  return px_zstd_compress(sh, n * (size_t)width, out, cap, level);
}

int px_decode_delta_words(const uint8_t* frame, size_t len, size_t n, int width, void* d) {
  size_t bytes = n * (size_t)width;
  uint8_t* sh = px_scratch(3, bytes);
  char err[64];
  if (!sh || px_zstd_decompress(frame, len, sh, bytes, err, sizeof err) != 0) return -1;
  px_unshuffle_unzigzag(sh, n, width, d);
  return 0;
}
