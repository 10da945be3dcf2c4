/* Reading and validating safetensors files (the layout: safetensors.h). */
#ifndef PX_SAFETENSORS_READ_H
#define PX_SAFETENSORS_READ_H

#include <stddef.h>
#include <stdint.h>

#include "format/safetensors.h"

/* An open, fully validated file. Opaque. */
typedef struct px_st_file px_st_file;

/* One tensor of an open file. All pointers stay valid until px_st_close. */
typedef struct px_st_tensor {
  const char* name;
  int dtype;
  uint32_t ndim;
  const uint64_t* shape;
  const void* data;   /* little-endian; NOT necessarily aligned for its type: use memcpy */
  uint64_t nbytes;
  uint64_t offset;    /* of data within the data section */
} px_st_tensor;

/* Opens and validates path before returning: size >= 8; header length <= size - 8 and <=
 * PX_ST_MAX_HEADER; the header is a UTF-8 JSON object without duplicate keys; every
 * entry has exactly dtype/shape/data_offsets with a known dtype, <= PX_ST_MAX_NDIM
 * non-negative dimensions and product(shape) * element size == end - begin (no
 * overflow); the ranges are contiguous from 0 and cover the data section exactly;
 * __metadata__ (if any) maps strings to strings; "paramex.format", when present, is "1";
 * and "paramex.data_xxh64", when present, matches the data.
 *
 * The file is mapped read-only (nothing is copied); it must not be truncated or modified
 * while open (paramex only ever replaces files by rename, which is safe).
 * Returns NULL with one line in err naming the problem ("checkpoint /d/x.safetensors:
 * data checksum mismatch", "checkpoint /d/x: header length 999999 exceeds file size
 * 120"). */
px_st_file* px_st_open(const char* path, char* err, size_t errlen);
/* The same on len bytes in memory (tests, fuzzing); buf is borrowed and must outlive the
 * handle. Messages start "checkpoint <memory>: ". */
px_st_file* px_st_open_mem(const void* buf, size_t len, char* err, size_t errlen);
/* Accepts NULL. */
void px_st_close(px_st_file* f);

size_t px_st_count(const px_st_file* f);
/* Tensor i (0 <= i < count) in file order, i.e. by offset in the data section. Returns 0,
 * or -1 when i is out of range. */
int px_st_entry_at(const px_st_file* f, size_t i, px_st_tensor* out);
/* The tensor called name (O(log n)). Returns 0, or -1 when absent. */
int px_st_find(const px_st_file* f, const char* name, px_st_tensor* out);
/* The __metadata__ value for key, NULL when absent. Valid until px_st_close. */
const char* px_st_meta(const px_st_file* f, const char* key);
/* Metadata pair i (0 <= i < count) in header order; returns 0, or -1 when out of range. */
size_t px_st_meta_count(const px_st_file* f);
int px_st_meta_at(const px_st_file* f, size_t i, const char** key, const char** value);

#endif
