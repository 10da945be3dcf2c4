/* Deterministic seeded initializers: the server generates a tensor's initial values from
 * (kind, a, b, seed), and any other party can compute the same floats bit for bit. */
#ifndef PX_INITIALIZER_H
#define PX_INITIALIZER_H

#include <stddef.h>
#include <stdint.h>

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
