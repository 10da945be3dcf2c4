/* zstd frames of chunk payloads, with one compression and one decompression context per
 * thread. */
#ifndef PX_ZSTDFRAME_H
#define PX_ZSTDFRAME_H

#include <stddef.h>
#include <stdint.h>

/* Each calling thread gets its own compression and decompression context, created on
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
