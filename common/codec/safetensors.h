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
 * reported as one line in the caller's err buffer (err may be NULL when errlen is 0). */
#ifndef PX_SAFETENSORS_H
#define PX_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "codec/codec.h"

/* Element types. PX_DT_F32 / PX_DT_BF16 / PX_DT_F16 (codec.h, values 1..3) are the
 * parameter types; the others carry raw state (optimizer counters, dedup tables) or come
 * from other writers. Values are pinned. */
enum {
  PX_ST_F64 = 16,
  PX_ST_I64 = 17,
  PX_ST_I32 = 18,
  PX_ST_I16 = 19,
  PX_ST_I8 = 20,
  PX_ST_U64 = 21,
  PX_ST_U32 = 22,
  PX_ST_U16 = 23,
  PX_ST_U8 = 24,
  PX_ST_BOOL = 25,
  PX_ST_F8_E5M2 = 26,
  PX_ST_F8_E4M3 = 27,
};
/* Bytes per element of any type above (including PMX_DT_*), 0 when unknown. */
size_t px_st_dtype_size(int dtype);
/* The safetensors spelling ("F32", "BF16", "U64", ...), "?" when unknown. */
const char* px_st_dtype_name(int dtype);

/* Limits enforced by both the writer and the reader. */
#define PX_ST_MAX_HEADER (100u * 1024u * 1024u) /* bytes of JSON header */
#define PX_ST_MAX_NDIM 64u

/* ---- writing ------------------------------------------------------------------------ */

/* One tensor to write. The writer borrows every pointer for the duration of the call. */
typedef struct px_st_entry {
  const char* name;       /* UTF-8, unique, not "__metadata__" */
  int dtype;              /* a type above */
  uint32_t ndim;          /* <= PX_ST_MAX_NDIM; 0 is a scalar */
  const uint64_t* shape;  /* ndim dimensions (may be NULL when ndim is 0) */
  uint64_t nbytes;        /* must equal product(shape) * px_st_dtype_size(dtype) */
} px_st_entry;

/* Where a write callback puts a tensor's bytes. Opaque; valid only inside the callback. */
typedef struct px_st_sink px_st_sink;

/* Appends len bytes of the current tensor (the data is copied before it returns, so the
 * caller may hold its own lock only around each call). Returns 0, or -1 when the bytes
 * exceed the tensor's nbytes or the file could not be written; the failure is sticky and
 * its reason is reported by px_st_write, so the callback should just return -1. */
int px_st_sink_write(px_st_sink* sink, const void* p, size_t len);

/* Produces tensor `index`: must give exactly e[index].nbytes bytes through
 * px_st_sink_write, in any number of calls, and return 0 (or -1 to abort the write). */
typedef int (*px_st_write_fn)(void* ctx, size_t index, px_st_sink* sink);

/* Writes DIR/NAME atomically: the file is built as DIR/.NAME.tmp.<pid>, fsync'd, renamed
 * over DIR/NAME, then DIR is fsync'd. Tensors are laid out in the order given (callers
 * that care about alignment put wider element types first). meta_kv holds nmeta key/value
 * pairs (meta_kv[2k] = key, meta_kv[2k+1] = value, UTF-8, unique keys, not "paramex.*")
 * stored in __metadata__; the writer adds "paramex.format" and "paramex.data_xxh64".
 *
 * fn is called exactly once per tensor, in order, on the calling thread, and never after
 * a failure (nor at all when the arguments are invalid). name must not contain '/'.
 * Two writes of the same DIR/NAME must not run at once in one process.
 *
 * Returns 0, or -1 with one line in err ("checkpoint: write /dir/x: No space left on
 * device", "checkpoint: tensor 'w': callback gave 12 of 16 bytes"). On failure before the
 * rename nothing is left behind: the temp file is removed and an existing DIR/NAME is
 * untouched. If only the final fsync of DIR fails, the new file is in place but may not
 * survive a crash; -1 is returned all the same. */
int px_st_write(const char* dir, const char* name, const px_st_entry* e, size_t n,
                 px_st_write_fn fn, void* ctx, const char* const* meta_kv, size_t nmeta,
                 char* err, size_t errlen);

/* ---- reading ------------------------------------------------------------------------ */

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
