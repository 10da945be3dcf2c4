/* Step outputs (step_io.h). */
#include "backend/step_io.h"

#include <string.h>

#include "codec/dtype.h"
#include "codec/transform.h"
#include "util/bufpool.h"
#include "util/scratch.h"

void px_step_io_alloc(px_step_io* io, int dtype, size_t n, bool view1, bool encode) {
  const size_t es = px_dtype_size(dtype);
  const bool v1 = view1 && dtype == PX_DT_F32;
  memset(io, 0, sizeof *io);
  io->bits[0] = px_buf_get(n * es);
  if (v1) io->bits[1] = px_buf_get(n * 2);
  if (encode) io->enc[0] = px_buf_get(n * es);
  if (encode && v1) io->enc[1] = px_buf_get(n * 2);
  if (!io->bits[0] || (v1 && !io->bits[1]) || (encode && !io->enc[0]) ||
      (encode && v1 && !io->enc[1]))
    px_step_io_free(io, dtype, n);
}

void px_step_io_free(px_step_io* io, int dtype, size_t n) {
  const size_t es = px_dtype_size(dtype);
  px_buf_put(io->bits[0], n * es);
  px_buf_put(io->bits[1], n * 2);
  px_buf_put(io->enc[0], n * es);
  px_buf_put(io->enc[1], n * 2);
  memset(io, 0, sizeof *io);
}

static uint8_t* scratch_or_die(int which, size_t bytes) {
  uint8_t* p = px_scratch(which, bytes);
  if (!p) px_backend_fatal("cpu", "out of memory for step scratch buffers");
  return p;
}

void px_step_outputs(int dtype, size_t n, const void* old_bits, const void* new_bits,
                     px_step_io* io) {
  const size_t es = px_dtype_size(dtype);
  const int w = (int)es;
  if (io->bits[0] && io->bits[0] != new_bits) memcpy(io->bits[0], new_bits, n * es);
  const bool view1 = dtype == PX_DT_F32 && (io->bits[1] || io->enc[1]);
  uint16_t* new16 = io->bits[1];
  if (view1 && !new16) new16 = (uint16_t*)scratch_or_die(3, n * 2);
  if (view1) px_f32_to_bf16_n(new_bits, new16, n);
  if (!io->enc[0] && !(view1 && io->enc[1])) return;
  uint8_t* d = scratch_or_die(1, n * es);
  if (io->enc[0]) {
    px_delta(new_bits, old_bits, n, w, d);
    px_zigzag_shuffle(d, n, w, io->enc[0]);
  }
  if (view1 && io->enc[1]) {
    uint16_t* old16 = (uint16_t*)scratch_or_die(2, n * 2);
    px_f32_to_bf16_n(old_bits, old16, n);
    px_delta(new16, old16, n, 2, d);
    px_zigzag_shuffle(d, n, 2, io->enc[1]);
  }
}
