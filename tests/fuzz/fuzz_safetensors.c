/* libFuzzer target: safetensors reader (common/codec/safetensors.c).
 *
 * Any input must either be rejected with a one-line message or yield a handle whose
 * every accessor stays within the input: each tensor's bytes are read (so ASan sees an
 * out-of-bounds range), shapes must agree with nbytes, ranges must tile the data section,
 * and lookups by name and metadata key must find what iteration returned.
 *
 * Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -Icommon \
 *          tests/fuzz/fuzz_safetensors.c common/codec/safetensors.c common/codec/codec.c \
 *          -ljansson -lxxhash -lm -o fuzz_safetensors
 * Seeds: tests/fuzz/corpus/safetensors/ */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "format/safetensors_read.h"
#include "format/safetensors_write.h"

static volatile unsigned sink; /* keeps the reads of tensor bytes */

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  char err[256];
  err[0] = '\0';
  px_st_file* f = px_st_open_mem(data, size, err, sizeof err);
  if (!f) {
    if (err[0] == '\0' || strchr(err, '\n')) abort(); /* always one line */
    return 0;
  }
  size_t n = px_st_count(f);
  uint64_t covered = 0;
  unsigned sum = 0;
  for (size_t i = 0; i < n; i++) {
    px_st_tensor t, u;
    if (px_st_entry_at(f, i, &t) != 0) abort();
    if (t.offset != covered) abort(); /* file order tiles the data section */
    covered += t.nbytes;
    const uint8_t* p = t.data;
    if (p < data || t.nbytes > (uint64_t)(data + size - p)) abort();
    for (uint64_t j = 0; j < t.nbytes; j++) sum += p[j];
    uint64_t elems = 1;
    int zero = 0;
    for (uint32_t d = 0; d < t.ndim; d++) {
      if (t.shape[d] == 0) zero = 1;
      else elems *= t.shape[d]; /* validated not to overflow */
    }
    if ((zero ? 0 : elems * px_dtype_size_any(t.dtype)) != t.nbytes) abort();
    if (px_st_find(f, t.name, &u) != 0 || u.data != t.data || strcmp(u.name, t.name)) abort();
  }
  px_st_tensor t;
  if (px_st_entry_at(f, n, &t) != -1) abort();
  for (size_t i = 0; i < px_st_meta_count(f); i++) {
    const char *k, *v;
    if (px_st_meta_at(f, i, &k, &v) != 0) abort();
    const char* w = px_st_meta(f, k);
    if (!w || strcmp(w, v)) abort();
    sum += (unsigned)strlen(v);
  }
  px_st_close(f);
  sink = sum;
  return 0;
}
