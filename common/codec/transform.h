/* The lossless transforms of diff-compressed parameter sync: integer deltas of bit
 * patterns, zigzag and byte shuffle. Why this encoding: shared/notes/compression.md; a
 * pull frame is
 *   delta of bit patterns -> zigzag + byte shuffle -> zstd level 1,   per chunk,
 * which is lossless, unlike a float difference new - old.
 *
 * Rules for every function here:
 * - Pure functions on caller memory: nothing is allocated, retained or freed. No global
 *   mutable state. Thread-safe as long as no other thread writes the buffers a call reads
 *   or reads/writes the buffers it writes.
 * - n counts elements (words), not bytes, unless it says bytes. n == 0 is a no-op and the
 *   pointers may then be NULL.
 * - Buffers must not overlap unless a function says otherwise.
 * - width is 2 (u16 words: bf16, f16) or 4 (u32 words: f32). Any other width is a
 *   programming error: the transforms then do nothing.
 * - Word buffers (void*) need no alignment.
 * - Host byte order is little endian; the shuffled byte planes are therefore
 *   little-endian byte planes and are the wire format. */
#ifndef PX_TRANSFORM_H
#define PX_TRANSFORM_H

#include <stddef.h>
#include <stdint.h>

/* Operate on element bit patterns as u16 (width 2) or u32 (width 4) words, n words per
 * buffer (n * width bytes). All arithmetic is modulo 2^(8*width), so every transform is
 * exactly invertible and never looks at float values (NaN, -0 and inf are just bits).
 * Deltas compose: delta(v2, v0) == delta(v2, v1) + delta(v1, v0) (wrapping). */

/* d[i] = new_[i] - base[i]. d must not overlap new_ or base. */
void px_delta(const void* new_, const void* base, size_t n, int width, void* d);
/* acc[i] += d[i] (accumulates deltas). acc and d must not overlap. */
void px_delta_add(void* acc, const void* d, size_t n, int width);
/* out[i] = base[i] + d[i]. out may be exactly base (in-place apply); otherwise out must
 * not overlap base. d never overlaps either. */
void px_delta_apply(const void* base, const void* d, size_t n, int width, void* out);
/* zigzag each word (w -> (w << 1) ^ -(w >> (8*width-1)), so differences -1, 1, -2, ...
 * become 1, 2, 3, ...), then byte-shuffle into width planes of n bytes each:
 *   out[b*n + i] = byte b (b = 0 least significant) of zigzag(d[i]).
 * out holds n*width bytes and must not overlap d. */
void px_zigzag_shuffle(const void* d, size_t n, int width, uint8_t* out);
/* The inverse: d[i] = unzigzag(word assembled from in[b*n + i], b = 0..width-1).
 * in holds n*width bytes and must not overlap d. */
void px_unshuffle_unzigzag(const uint8_t* in, size_t n, int width, void* d);
/* Plain byte shuffle / unshuffle (for full snapshots): the same plane layout, no
 * zigzag. out / the output must not overlap the input. */
void px_shuffle(const void* src, size_t n, int width, uint8_t* out);
void px_unshuffle(const uint8_t* in, size_t n, int width, void* out);


#endif
