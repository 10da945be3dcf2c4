/* Data-plane framing: PushChunk and PullChunk messages (proto/paramex.proto) encoded and
 * decoded with nanopb. Decoding runs in two steps so that the payload is copied exactly
 * once, from the received segments straight into its destination:
 *   1. pmx_chunk_parse() reads the header fields and records where the payload lies;
 *   2. after the caller validated the header, pmx_chunk_copy_payload() copies it.
 * Encoding writes only the header and the payload's tag and length; the payload itself
 * is sent as a separate zero-copy segment after it. */
#ifndef PMX_WIRE_H
#define PMX_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A contiguous piece of a received message. */
typedef struct pmx_iov {
  const uint8_t* p;
  size_t n;
} pmx_iov;

typedef enum { PMX_CHUNK_PUSH, PMX_CHUNK_PULL } pmx_chunk_kind;

/* Header fields of either message; fields absent from one kind stay 0. */
typedef struct pmx_chunk {
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
} pmx_chunk;

/* Largest header that pmx_chunk_encode_header() writes (fields + payload tag/length). */
#define PMX_CHUNK_HDR_MAX 96

/* Parses a message made of nseg segments. Returns 0, or -1 with one line in err
 * ("malformed PushChunk: ..."). Never reads outside the segments. */
int pmx_chunk_parse(pmx_chunk_kind kind, const pmx_iov* seg, size_t nseg, pmx_chunk* out,
                    char* err, size_t errlen);
/* Copies the payload located by a successful parse into dst (cap bytes available).
 * Returns 0, or -1 when payload_len > cap. */
int pmx_chunk_copy_payload(const pmx_chunk* c, const pmx_iov* seg, size_t nseg, void* dst,
                           size_t cap);
/* Writes the header fields of c followed by the tag and length of a payload of
 * payload_len bytes (omitted when payload_len == 0). Returns bytes written (<=
 * PMX_CHUNK_HDR_MAX), 0 on failure. The complete message is header || payload. */
size_t pmx_chunk_encode_header(pmx_chunk_kind kind, const pmx_chunk* c, size_t payload_len,
                               uint8_t* buf, size_t cap);

#endif
