/* Fuzz target: data-plane chunk messages (wire/wire.h) and their payload decoding
 * (codec/frame.h), as the server decodes a PushChunk and the client a PullChunk.
 *
 * Input layout:
 *   byte 0   bit 0: 0 PushChunk, 1 PullChunk; bit 1: width 4 (0) or 2 (1);
 *            bits 2-4: number of split points k (0..7); bits 5-7: how n is derived
 *   k bytes  split points, each scaled to the message length (sorted; repeats give empty
 *            segments), so the message arrives in k+1 segments like gRPC slices
 *   rest     the serialized message
 *
 * Checks, besides ASan/UBSan: parse fails with one line or locates a payload that lies
 * inside the message; copy_payload copies exactly those bytes and refuses a smaller
 * buffer; header re-encoding round-trips; protobuf-c agrees on every field when both
 * decoders accept; decode leaves the destination untouched on every failure and, on
 * success, leaves a chunk whose XXH3-64 is the message's checksum. */
#include <stdbool.h>

#include "codec/checksum.h"
#include "codec/payload.h"
#include "util/iov.h"
#include "wire/chunk_msg.h"
#include "fuzz_common.h"
#include "paramex.pb-c.h"

#define MAX_SPLITS 7
#define MAX_DST_BYTES (64u << 10)

static size_t flat_offset(const px_iov* seg, size_t nseg, size_t si, size_t off) {
  size_t o = 0;
  for (size_t i = 0; i < si && i < nseg; i++) o += seg[i].n;
  return o + off;
}

/* Both decoders accepted the message: every header field and the payload must agree. */
static void compare_with_protobuf_c(px_chunk_kind kind, const px_chunk* c, const uint8_t* msg,
                                    size_t len) {
  if (kind == PX_CHUNK_PUSH) {
    Paramex__V1__PushChunk* m = paramex__v1__push_chunk__unpack(NULL, len, msg);
    if (!m) return;
    FUZZ_CHECK(m->worker_id == c->worker_id && m->incarnation == c->incarnation &&
               m->step == c->step && m->tensor_id == c->tensor_id && m->chunk == c->chunk &&
               (uint32_t)m->encoding == c->encoding && (uint32_t)m->dtype == c->dtype &&
               m->raw_len == c->raw_len && m->checksum == c->checksum);
    FUZZ_CHECK(m->payload.len == c->payload_len);
    paramex__v1__push_chunk__free_unpacked(m, NULL);
  } else {
    Paramex__V1__PullChunk* m = paramex__v1__pull_chunk__unpack(NULL, len, msg);
    if (!m) return;
    FUZZ_CHECK(m->tensor_id == c->tensor_id && m->chunk == c->chunk &&
               m->version == c->version && m->base_version == c->base_version &&
               (uint32_t)m->encoding == c->encoding && (uint32_t)m->dtype == c->dtype &&
               m->raw_len == c->raw_len && m->checksum == c->checksum);
    FUZZ_CHECK(m->payload.len == c->payload_len);
    paramex__v1__pull_chunk__free_unpacked(m, NULL);
  }
}

/* Re-encodes the parsed header plus its payload and parses the result again. */
static void round_trip(px_chunk_kind kind, const px_chunk* c, const uint8_t* payload) {
  uint8_t hdr[PX_CHUNK_HDR_MAX];
  size_t h = px_chunk_encode_header(kind, c, c->payload_len, hdr, sizeof hdr);
  FUZZ_CHECK(h <= PX_CHUNK_HDR_MAX);
  /* 0 means failure, but is also the correct encoding of a header whose fields are all
   * zero without a payload (proto3 writes no default values): allowed only then. */
  if (h == 0)
    FUZZ_CHECK(c->payload_len == 0 && c->worker_id == 0 && c->incarnation == 0 &&
               c->step == 0 && c->tensor_id == 0 && c->chunk == 0 && c->version == 0 &&
               c->base_version == 0 && c->encoding == 0 && c->dtype == 0 && c->raw_len == 0 &&
               c->checksum == 0);
  /* Header and payload as two segments, the way a sender gives them to gRPC. */
  px_iov seg[2] = {{hdr, h}, {payload, c->payload_len}};
  px_chunk c2;
  char err[128];
  FUZZ_CHECK(px_chunk_parse(kind, seg, 2, &c2, err, sizeof err) == 0);
  FUZZ_CHECK(c2.worker_id == c->worker_id && c2.incarnation == c->incarnation &&
             c2.step == c->step && c2.tensor_id == c->tensor_id && c2.chunk == c->chunk &&
             c2.version == c->version && c2.base_version == c->base_version &&
             c2.encoding == c->encoding && c2.dtype == c->dtype && c2.raw_len == c->raw_len &&
             c2.checksum == c->checksum && c2.payload_len == c->payload_len);
  if (c->payload_len > 0) {
    uint8_t* back = malloc(c->payload_len);
    FUZZ_CHECK(back != NULL);
    FUZZ_CHECK(px_chunk_copy_payload(&c2, seg, 2, back, c->payload_len) == 0);
    FUZZ_CHECK(memcmp(back, payload, c->payload_len) == 0);
    free(back);
  }
}

static void decode(const px_chunk* c, const px_iov* seg, size_t nseg, int width, unsigned mode) {
  size_t n = c->raw_len / (unsigned)width;
  switch (mode) {
    case 5: n += 1; break;                                            /* raw_len too small */
    case 6: n = 0; break;                                             /* empty destination */
    case 7: n = (c->raw_len + (unsigned)width - 1) / (unsigned)width; break; /* rounds up */
    default: break;                                                   /* 0-4: consistent */
  }
  if (n * (size_t)width > MAX_DST_BYTES) n = MAX_DST_BYTES / (size_t)width;
  const size_t bytes = n * (size_t)width;
  uint8_t* dst = malloc(bytes ? bytes : 1);
  uint8_t* before = malloc(bytes ? bytes : 1);
  FUZZ_CHECK(dst && before);
  fuzz_fill_base(dst, bytes);
  memcpy(before, dst, bytes);
  char err[160];
  err[0] = 'x';
  px_decode_result r = px_chunk_decode(c, seg, nseg, dst, n, width, err, sizeof err);
  FUZZ_CHECK(r == PX_DECODE_OK || r == PX_DECODE_MALFORMED || r == PX_DECODE_CHECKSUM);
  if (r == PX_DECODE_OK) {
    FUZZ_CHECK(px_checksum(dst, bytes) == c->checksum);
  } else {
    FUZZ_CHECK(fuzz_err_ok(err, sizeof err) && err[0] != '\0');
    /* The contract: on any failure the destination is untouched. */
    FUZZ_CHECK(memcmp(dst, before, bytes) == 0);
  }
  free(before);
  free(dst);
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t opt = data[0];
  const px_chunk_kind kind = (opt & 1) ? PX_CHUNK_PULL : PX_CHUNK_PUSH;
  const int width = (opt & 2) ? 2 : 4;
  const size_t nsplit = (opt >> 2) & MAX_SPLITS;
  const unsigned nmode = opt >> 5;
  if (size < 1 + nsplit) return 0;
  const uint8_t* msg = data + 1 + nsplit;
  const size_t len = size - 1 - nsplit;

  size_t cut[MAX_SPLITS + 2];
  cut[0] = 0;
  for (size_t i = 0; i < nsplit; i++) cut[i + 1] = (size_t)data[1 + i] * len / 255;
  cut[nsplit + 1] = len;
  for (size_t i = 1; i <= nsplit; i++) /* insertion sort of the split points */
    for (size_t j = i; j > 1 && cut[j - 1] > cut[j]; j--) {
      size_t t = cut[j];
      cut[j] = cut[j - 1];
      cut[j - 1] = t;
    }
  /* Each segment in its own heap block of exactly its size: a read past a segment's end
   * is an ASan report rather than a silent read of the next segment. */
  const size_t nseg = nsplit + 1;
  px_iov seg[MAX_SPLITS + 1];
  uint8_t* own[MAX_SPLITS + 1];
  for (size_t i = 0; i < nseg; i++) {
    size_t n = cut[i + 1] - cut[i];
    own[i] = malloc(n ? n : 1);
    FUZZ_CHECK(own[i] != NULL);
    if (n) memcpy(own[i], msg + cut[i], n);
    seg[i].p = own[i];
    seg[i].n = n;
  }

  px_chunk c;
  char err[160];
  err[0] = 'x';
  if (px_chunk_parse(kind, seg, nseg, &c, err, sizeof err) != 0) {
    FUZZ_CHECK(fuzz_err_ok(err, sizeof err) && err[0] != '\0');
    goto out;
  }

  /* The located payload lies inside the message. */
  uint8_t* payload = malloc(c.payload_len ? c.payload_len : 1);
  FUZZ_CHECK(payload != NULL);
  if (c.has_payload) {
    FUZZ_CHECK(c.payload_seg <= nseg);
    size_t off = flat_offset(seg, nseg, c.payload_seg, c.payload_off);
    FUZZ_CHECK(off <= len && c.payload_len <= len - off);
    FUZZ_CHECK(px_chunk_copy_payload(&c, seg, nseg, payload, c.payload_len) == 0);
    FUZZ_CHECK(memcmp(payload, msg + off, c.payload_len) == 0);
    if (c.payload_len > 0) {
      /* One byte short: refused, and nothing is written past the buffer (ASan). */
      uint8_t* small = malloc(c.payload_len - 1 ? c.payload_len - 1 : 1);
      FUZZ_CHECK(small != NULL);
      FUZZ_CHECK(px_chunk_copy_payload(&c, seg, nseg, small, c.payload_len - 1) == -1);
      free(small);
    }
  } else {
    FUZZ_CHECK(c.payload_len == 0);
    FUZZ_CHECK(px_chunk_copy_payload(&c, seg, nseg, payload, 0) == 0);
  }

  round_trip(kind, &c, payload);
  compare_with_protobuf_c(kind, &c, msg, len);
  free(payload);

  decode(&c, seg, nseg, width, nmode);

out:
  for (size_t i = 0; i < nseg; i++) free(own[i]);
  return 0;
}
