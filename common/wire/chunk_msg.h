/* Data-plane framing: PushChunk and PullChunk messages (proto/paramex.proto) encoded and
 * decoded with nanopb. Decoding runs in two steps so that the payload is copied exactly
 * once, from the received segments straight into its destination:
 *   1. px_chunk_parse() reads the header fields and records where the payload lies;
 *   2. after the caller validated the header, px_chunk_copy_payload() copies it.
 * Encoding writes only the header and the payload's tag and length; the payload itself
 * is sent as a separate zero-copy segment after it. */
#ifndef PX_CHUNK_MSG_H
#define PX_CHUNK_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/iov.h"

typedef enum { PX_CHUNK_PUSH, PX_CHUNK_PULL } px_chunk_kind;

/* Header fields of either message; fields absent from one kind stay 0. */
typedef struct px_chunk {
  uint32_t worker_id;    /* push */
  uint64_t incarnation;  /* push */
  uint64_t step;         /* push */
  uint32_t tensor_id;
  uint32_t chunk;
  uint64_t version;      /* pull */
  uint64_t base_version; /* pull */
  uint32_t encoding;
  uint32_t dtype;
  uint32_t raw_len;
  uint64_t checksum;
  /* filled by parse: */
  bool has_payload;
  size_t payload_len;
  size_t payload_seg;    /* segment index and offset where the payload starts */
  size_t payload_off;
} px_chunk;

/* Largest header that px_chunk_encode_header() writes (fields + payload tag/length). */
#define PX_CHUNK_HDR_MAX 96

/* Parses a message made of nseg segments. Returns 0, or -1 with one line in err
 * ("malformed PushChunk: ..."). Never reads outside the segments. */
int px_chunk_parse(px_chunk_kind kind, const px_iov* seg, size_t nseg, px_chunk* out,
                    char* err, size_t errlen);
/* Copies the payload located by a successful parse into dst (cap bytes available).
 * Returns 0, or -1 when payload_len > cap. */
int px_chunk_copy_payload(const px_chunk* c, const px_iov* seg, size_t nseg, void* dst,
                           size_t cap);
/* Writes the header fields of c followed by the tag and length of a payload of
 * payload_len bytes (omitted when payload_len == 0). Returns bytes written (<=
 * PX_CHUNK_HDR_MAX), 0 on failure. The complete message is header || payload. */
size_t px_chunk_encode_header(px_chunk_kind kind, const px_chunk* c, size_t payload_len,
                               uint8_t* buf, size_t cap);

#endif
