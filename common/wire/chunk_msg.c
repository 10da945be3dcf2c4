/* PushChunk / PullChunk framing with nanopb over received segments. */
#include "wire/chunk_msg.h"

#include <pb_decode.h>
#include <pb_encode.h>
#include <stdio.h>
#include <string.h>

#include "paramex.pb.h"

typedef struct segreader {
  const px_iov* seg;
  size_t nseg;
  size_t i;   /* current segment */
  size_t off; /* offset inside it */
} segreader;

/* Advances past empty or exhausted segments. */
static void seg_normalize(segreader* r) {
  while (r->i < r->nseg && r->off >= r->seg[r->i].n) {
    r->i++;
    r->off = 0;
  }
}

/* Reads (buf != NULL) or skips (buf == NULL) count bytes. */
static bool seg_take(segreader* r, uint8_t* buf, size_t count) {
  while (count > 0) {
    seg_normalize(r);
    if (r->i >= r->nseg) return false;
    size_t avail = r->seg[r->i].n - r->off;
    size_t k = avail < count ? avail : count;
    if (buf) {
      memcpy(buf, r->seg[r->i].p + r->off, k);
      buf += k;
    }
    r->off += k;
    count -= k;
  }
  return true;
}

static bool seg_read_cb(pb_istream_t* stream, pb_byte_t* buf, size_t count) {
  return seg_take((segreader*)stream->state, buf, count);
}

/* Payload callback: remember where the payload starts and skip it without copying. */
static bool payload_locate_cb(pb_istream_t* stream, const pb_field_iter_t* field, void** arg) {
  (void)field;
  /* nanopb also calls this for a payload sent with a non-length-delimited wire type, on a
   * stream of its own over a small stack buffer: that is a malformed message. */
  if (stream->callback != seg_read_cb) return false;
  px_chunk* c = *arg;
  segreader* r = stream->state;
  seg_normalize(r);
  c->has_payload = true;
  c->payload_len = stream->bytes_left;
  c->payload_seg = r->i;
  c->payload_off = r->off;
  if (!seg_take(r, NULL, stream->bytes_left)) return false;
  stream->bytes_left = 0;
  return true;
}

int px_chunk_parse(px_chunk_kind kind, const px_iov* seg, size_t nseg, px_chunk* out,
                    char* err, size_t errlen) {
  memset(out, 0, sizeof *out);
  size_t total = 0;
  for (size_t i = 0; i < nseg; i++) total += seg[i].n;
  segreader r = {seg, nseg, 0, 0};
  pb_istream_t s = {seg_read_cb, &r, total, NULL};
  const char* what = kind == PX_CHUNK_PUSH ? "PushChunk" : "PullChunk";
  bool ok;
  if (kind == PX_CHUNK_PUSH) {
    paramex_v1_PushChunk m = paramex_v1_PushChunk_init_zero;
    m.payload.funcs.decode = payload_locate_cb;
    m.payload.arg = out;
    ok = pb_decode(&s, paramex_v1_PushChunk_fields, &m);
    if (ok) {
      out->worker_id = m.worker_id;
      out->incarnation = m.incarnation;
      out->step = m.step;
      out->tensor_id = m.tensor_id;
      out->chunk = m.chunk;
      out->encoding = (uint32_t)m.encoding;
      out->dtype = (uint32_t)m.dtype;
      out->raw_len = m.raw_len;
      out->checksum = m.checksum;
      /* every field at its default (proto3 cannot tell absent from zero): no chunk */
      if (!m.worker_id && !m.incarnation && !m.step && !m.tensor_id && !m.chunk && !m.encoding &&
          !m.dtype && !m.raw_len && !m.checksum && out->payload_len == 0) {
        snprintf(err, errlen, "empty %s (no field set)", what);
        return -1;
      }
    }
  } else {
    paramex_v1_PullChunk m = paramex_v1_PullChunk_init_zero;
    m.payload.funcs.decode = payload_locate_cb;
    m.payload.arg = out;
    ok = pb_decode(&s, paramex_v1_PullChunk_fields, &m);
    if (ok) {
      out->tensor_id = m.tensor_id;
      out->chunk = m.chunk;
      out->version = m.version;
      out->base_version = m.base_version;
      out->encoding = (uint32_t)m.encoding;
      out->dtype = (uint32_t)m.dtype;
      out->raw_len = m.raw_len;
      out->checksum = m.checksum;
    }
  }
  if (!ok) {
    snprintf(err, errlen, "malformed %s: %s", what, PB_GET_ERROR(&s));
    return -1;
  }
  return 0;
}

int px_chunk_copy_payload(const px_chunk* c, const px_iov* seg, size_t nseg, void* dst,
                           size_t cap) {
  if (!c->has_payload) return c->payload_len == 0 ? 0 : -1;
  if (c->payload_len > cap) return -1;
  segreader r = {seg, nseg, c->payload_seg, c->payload_off};
  return seg_take(&r, dst, c->payload_len) ? 0 : -1;
}

size_t px_chunk_encode_header(px_chunk_kind kind, const px_chunk* c, size_t payload_len,
                               uint8_t* buf, size_t cap) {
  pb_ostream_t s = pb_ostream_from_buffer(buf, cap);
  bool ok;
  if (kind == PX_CHUNK_PUSH) {
    paramex_v1_PushChunk m = paramex_v1_PushChunk_init_zero;
    m.worker_id = c->worker_id;
    m.incarnation = c->incarnation;
    m.step = c->step;
    m.tensor_id = c->tensor_id;
    m.chunk = c->chunk;
    m.encoding = (paramex_v1_Encoding)c->encoding;
    m.dtype = (paramex_v1_DType)c->dtype;
    m.raw_len = c->raw_len;
    m.checksum = c->checksum;
    ok = pb_encode(&s, paramex_v1_PushChunk_fields, &m);
  } else {
    paramex_v1_PullChunk m = paramex_v1_PullChunk_init_zero;
    m.tensor_id = c->tensor_id;
    m.chunk = c->chunk;
    m.version = c->version;
    m.base_version = c->base_version;
    m.encoding = (paramex_v1_Encoding)c->encoding;
    m.dtype = (paramex_v1_DType)c->dtype;
    m.raw_len = c->raw_len;
    m.checksum = c->checksum;
    ok = pb_encode(&s, paramex_v1_PullChunk_fields, &m);
  }
  /* payload = field 15, length-delimited; it follows every other field, as a stock
   * encoder would place it. */
  if (ok && payload_len > 0)
    ok = pb_encode_tag(&s, PB_WT_STRING, 15) && pb_encode_varint(&s, payload_len);
  return ok ? s.bytes_written : 0;
}
