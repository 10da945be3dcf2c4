/* Hand-written Protocol Buffers fields (pb_fields.h). */
#include "wire/pb_fields.h"

size_t px_pb_put_varint(uint8_t* out, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) {
    out[n++] = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  out[n++] = (uint8_t)v;
  return n;
}

size_t px_pb_put_uint(uint8_t* out, uint32_t field, uint64_t v) {
  size_t n = px_pb_put_varint(out, (uint64_t)field << 3 | PX_PB_WT_VARINT);
  return n + px_pb_put_varint(out + n, v);
}

size_t px_pb_put_len_head(uint8_t* out, uint32_t field, uint64_t len) {
  size_t n = px_pb_put_varint(out, (uint64_t)field << 3 | PX_PB_WT_LEN);
  return n + px_pb_put_varint(out + n, len);
}

/* A varint at *pos; false when truncated or longer than 10 bytes. */
static int get_varint(const uint8_t** pos, const uint8_t* end, uint64_t* v) {
  uint64_t r = 0;
  for (unsigned shift = 0; shift < 70; shift += 7) {
    if (*pos >= end) return 0;
    uint8_t b = *(*pos)++;
    r |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) {
      *v = r;
      return 1;
    }
  }
  return 0;
}

int px_pb_next(const uint8_t** pos, const uint8_t* end, px_pb_field* f) {
  if (*pos >= end) return 0;
  uint64_t tag;
  if (!get_varint(pos, end, &tag) || (tag >> 3) == 0 || (tag >> 3) > UINT32_MAX) return -1;
  f->field = (uint32_t)(tag >> 3);
  f->wire_type = (int)(tag & 7);
  f->value = 0;
  f->data = NULL;
  f->len = 0;
  if (f->wire_type == PX_PB_WT_VARINT) return get_varint(pos, end, &f->value) ? 1 : -1;
  if (f->wire_type != PX_PB_WT_LEN) return -1;
  uint64_t len;
  if (!get_varint(pos, end, &len) || len > (uint64_t)(end - *pos)) return -1;
  f->data = *pos;
  f->len = (size_t)len;
  *pos += len;
  return 1;
}
