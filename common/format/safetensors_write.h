/* Writing safetensors files atomically (the layout: safetensors.h). */
#ifndef PX_SAFETENSORS_WRITE_H
#define PX_SAFETENSORS_WRITE_H

#include <stddef.h>
#include <stdint.h>

#include "format/safetensors.h"

/* One tensor to write. The writer borrows every pointer for the duration of the call. */
typedef struct px_st_entry {
  const char* name;       /* UTF-8, unique, not "__metadata__" */
  int dtype;              /* PX_DT_* (codec/dtype.h) */
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

#endif
