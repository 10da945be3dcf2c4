/* paramex diff codec: element type conversions, the integer-delta + zigzag + byte-shuffle
 * transforms and zstd framing used by diff-compressed parameter sync.
 *
 * Why this encoding: /work/shared/notes/compression.md. A pull frame is
 *   delta of bit patterns -> zigzag + byte shuffle -> zstd level 1,   per 1 MiB chunk;
 * it is lossless, unlike a float difference new - old.
 *
 * Common rules for every function here:
 * - Pure functions on caller memory: nothing is allocated, retained or freed except the
 *   per-thread zstd contexts described at pmx_zstd_*. No global mutable state.
 * - Thread-safe: any thread may call any function at any time, provided no other thread
 *   writes the buffers it reads or reads/writes the buffers it writes.
 * - n counts elements (words), not bytes, unless it says bytes. n == 0 is a no-op and the
 *   pointers may then be NULL.
 * - width is 2 (u16 words: bf16, f16) or 4 (u32 words: f32). Any other width is a
 *   programming error: the transforms then do nothing.
 * - Word buffers (void*) need no alignment; the float and uint16_t arrays of the dtype
 *   functions need their type's natural alignment.
 * - Buffers must not overlap unless a function says otherwise.
 * - Host byte order is little endian; the shuffled byte planes are therefore
 *   little-endian byte planes and are the wire format.
 * Depends only on libzstd. */
#ifndef PX_CODEC_DIFF_H
#define PX_CODEC_DIFF_H

#include <stddef.h>
#include <stdint.h>

/* ---- dtype conversion -------------------------------------------------------------
 * bf16 is the upper 16 bits of an f32; f16 is IEEE 754 binary16.
 *
 * To 16 bits (px_f32_to_bf16, px_f32_to_f16): round to nearest, ties to even, in every
 * case (including f16 subnormal results, which are exact when representable); finite
 * values too large round to +-inf (f16: |x| >= 65520; bf16: |x| >= 0x1.ffp127);
 * +-inf stays +-inf; +-0 keeps its sign; values too small round to +-0.
 * NaN stays NaN with its sign and is QUIETED: the top mantissa bit is set (bf16 0x0040,
 * f16 0x0200) and the top payload bits are kept (bf16: mantissa bits 22..16 of the f32,
 * f16: bits 22..13). So a signalling NaN comes back as the matching quiet NaN and every
 * NaN result is a NaN, never inf.
 * The f16 rounding uses the floating-point environment's rounding mode for subnormal
 * results; it must be the default round-to-nearest (paramex never changes it). It may
 * raise the FE_INEXACT flag, never any other flag, so it is safe with FP traps enabled.
 *
 * To f32 (px_bf16_to_f32, px_f16_to_f32): exact, every 16-bit pattern maps to the
 * f32 with the same value; NaNs keep sign and payload bit for bit and are NOT quieted
 * (bf16 -> f32 is exactly `h << 16`), so the widening is injective.
 * Round trip: to_f32 then back to 16 bits returns the same pattern for every non-NaN and
 * every quiet NaN; a signalling NaN h comes back as h | quiet bit.
 *
 * The _n forms convert n elements, src[i] -> dst[i], with results identical to the
 * scalar forms; src and dst must not overlap. Vectorised by the compiler (SSE2). */
uint16_t px_f32_to_bf16(float f);
float px_bf16_to_f32(uint16_t h);
uint16_t px_f32_to_f16(float f);
float px_f16_to_f32(uint16_t h);
void px_f32_to_bf16_n(const float* src, uint16_t* dst, size_t n);
void px_bf16_to_f32_n(const uint16_t* src, float* dst, size_t n);
void px_f32_to_f16_n(const float* src, uint16_t* dst, size_t n);
void px_f16_to_f32_n(const uint16_t* src, float* dst, size_t n);

/* ---- diff transforms ----------------------------------------------------------------
 * Operate on element bit patterns as u16 (width 2) or u32 (width 4) words, n words per
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

/* ---- zstd frames --------------------------------------------------------------------
 * Each calling thread gets its own compression and decompression context, created on
 * its first call (about 570 KiB after compressing a 1 MiB chunk at level 1, about
 * 95 KiB for decompression) and freed by a pthread key destructor when the thread exits; contexts
 * are never shared between threads, so all calls are thread-safe and lock free. The
 * contexts of the process's main thread are not freed at exit (the OS reclaims them).
 * A library that contains this code must not be unloaded (dlclose) while threads that
 * called it are still running. If a context cannot be allocated the call fails (0 / -1)
 * and a later call retries. */

/* The most bytes px_zstd_compress can produce for n input bytes (ZSTD_compressBound);
 * 0 when n is too large for zstd. */
size_t px_zstd_bound(size_t n);

/* Compresses src[0..n) (bytes) into one zstd frame in dst[0..cap) at `level`:
 * 1 is the design's default (level 3 gains < 0.6% at 1.2-4x the time); levels < 1 are
 * rejected (0 would mean "zstd default" and negative levels disable Huffman coding, so
 * floats do not compress at all), as are levels > ZSTD_maxCLevel(). The frame records
 * its content size (n) and carries no zstd checksum (callers checksum the reconstructed
 * chunk) and no dictionary. cap >= px_zstd_bound(n) always suffices.
 * Returns the frame size (> 0), or 0 on error (bad level, cap too small, no memory). */
size_t px_zstd_compress(const void* src, size_t n, void* dst, size_t cap, int level);

/* Decompresses exactly one frame from untrusted input src[0..n) into dst[0..expected).
 * Succeeds (returns 0) only if src starts with a zstd frame (not a skippable frame),
 * the frame header declares a content size of exactly `expected` bytes, the frame is
 * complete and ends exactly at src + n (no trailing bytes), its window is at most
 * 16 MiB (windowLog 24), it needs no dictionary, it decodes without error and the
 * output is exactly `expected` bytes. The checks on the header and the frame's extent
 * run before any output is written. Memory use is the per-thread context plus dst,
 * whatever the input says.
 * On failure returns -1 and, if err != NULL and errlen > 0, writes one NUL-terminated
 * line without newline (truncated to errlen) saying why; dst may then hold partial
 * output, so callers decode into scratch memory, never into live parameters.
 * src may be NULL only when n == 0 (which fails: "empty input"); dst may be NULL only
 * when expected == 0. src and dst must not overlap. */
int px_zstd_decompress(const void* src, size_t n, void* dst, size_t expected, char* err,
                        size_t errlen);

#endif
