/* Protocol Buffers fields written and read by hand (pb_fields.c), for the messages whose
 * fields are frames already (StepRequest, StepResponse): a varint, the head of a
 * length-delimited field, and a reader that walks a message's top-level fields without
 * copying. Only the wire types paramex messages use: varint (0) and length-delimited (2);
 * anything else is malformed here. */
#ifndef PX_PB_FIELDS_H
#define PX_PB_FIELDS_H

#include <stddef.h>
#include <stdint.h>

#define PX_PB_VARINT_MAX 10
#define PX_PB_LEN_HEAD_MAX (2 * PX_PB_VARINT_MAX) /* tag + length */

enum { PX_PB_WT_VARINT = 0, PX_PB_WT_LEN = 2 };

/* Writes v as a varint at out (PX_PB_VARINT_MAX bytes of room); returns its length. */
size_t px_pb_put_varint(uint8_t* out, uint64_t v);
/* Writes the tag of field (varint wire type) and v; returns the bytes written. */
size_t px_pb_put_uint(uint8_t* out, uint32_t field, uint64_t v);
/* Writes the tag and length of a length-delimited field of len bytes (the bytes follow);
 * returns the bytes written (at most PX_PB_LEN_HEAD_MAX). */
size_t px_pb_put_len_head(uint8_t* out, uint32_t field, uint64_t len);

typedef struct px_pb_field {
  uint32_t field;
  int wire_type;       /* PX_PB_WT_VARINT: value; PX_PB_WT_LEN: data, len (into the input) */
  uint64_t value;
  const uint8_t* data;
  size_t len;
} px_pb_field;

/* Reads the field at *pos (the message ends at end) into f and moves *pos past it.
 * 1: a field; 0: the message is over; -1: malformed (truncated, field 0, an overlong
 * varint, a wire type other than 0 and 2, a length past the end). */
int px_pb_next(const uint8_t** pos, const uint8_t* end, px_pb_field* f);

#endif
