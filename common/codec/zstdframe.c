/* zstd frames with per-thread contexts (zstdframe.h).
 *
 * Contexts: a _Thread_local pointer is the fast path; a pthread key (created once)
 * exists only so that its destructor frees the contexts when the thread exits. Reusing a
 * context per thread matters: creating one per 1 MiB chunk costs ~30-45% of the speed
 * on small chunks (compression.md).
 *
 * Untrusted frames: one-shot decompression into a caller buffer allocates nothing that
 * depends on the frame (zstd writes straight into dst), and zstd skips its
 * ZSTD_d_windowLogMax check on this single-pass path. So the header is validated here
 * before decoding: magic, content size == expected, window <= 2^24, and the frame's
 * compressed extent == n. The window limit is also set on the context for any
 * streaming use. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <zstd.h>

#include "codec/zstdframe.h"

#define WINDOW_LOG_MAX 24

struct zctx {
  ZSTD_CCtx* c;
  ZSTD_DCtx* d;
};

static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static pthread_key_t key;
static int key_ok; /* written once under key_once */
static _Thread_local struct zctx* tl_ctx;

static void zctx_destroy(void* p) {
  struct zctx* z = p;
  ZSTD_freeCCtx(z->c);
  ZSTD_freeDCtx(z->d);
  free(z);
  /* Runs on the exiting thread: a later destructor of another key that calls us again
   * gets fresh contexts (and this destructor runs again), never a dangling pointer. */
  tl_ctx = NULL;
}

static void key_create(void) { key_ok = pthread_key_create(&key, zctx_destroy) == 0; }

static struct zctx* thread_ctx(void) {
  if (tl_ctx) return tl_ctx;
  if (pthread_once(&key_once, key_create) != 0 || !key_ok) return NULL;
  struct zctx* z = calloc(1, sizeof *z);
  if (!z) return NULL;
  if (pthread_setspecific(key, z) != 0) {
    free(z);
    return NULL;
  }
  tl_ctx = z;
  return z;
}

static ZSTD_CCtx* thread_cctx(void) {
  struct zctx* z = thread_ctx();
  if (!z) return NULL;
  if (!z->c) z->c = ZSTD_createCCtx();
  return z->c;
}

static ZSTD_DCtx* thread_dctx(void) {
  struct zctx* z = thread_ctx();
  if (!z) return NULL;
  if (!z->d) {
    z->d = ZSTD_createDCtx();
    if (z->d && ZSTD_isError(ZSTD_DCtx_setParameter(z->d, ZSTD_d_windowLogMax, WINDOW_LOG_MAX))) {
      ZSTD_freeDCtx(z->d);
      z->d = NULL;
    }
  }
  return z->d;
}

size_t px_zstd_bound(size_t n) {
  size_t b = ZSTD_compressBound(n);
  return ZSTD_isError(b) ? 0 : b;
}

size_t px_zstd_compress(const void* src, size_t n, void* dst, size_t cap, int level) {
  if (level < 1 || level > ZSTD_maxCLevel()) return 0;
  ZSTD_CCtx* c = thread_cctx();
  if (!c) return 0;
  ZSTD_CCtx_reset(c, ZSTD_reset_session_and_parameters);
  if (ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, level)) ||
      ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, 1)) ||
      ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 0)) ||
      ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_dictIDFlag, 0)))
    return 0;
  size_t r = ZSTD_compress2(c, dst, cap, src, n);
  return ZSTD_isError(r) ? 0 : r;
}

__attribute__((format(printf, 3, 4))) static int fail(char* err, size_t errlen,
                                                      const char* fmt, ...) {
  if (err && errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return -1;
}

int px_zstd_decompress(const void* src, size_t n, void* dst, size_t expected, char* err,
                        size_t errlen) {
  const uint8_t* p = src;
  if (n == 0) return fail(err, errlen, "zstd: empty input");
  if (n < 4) return fail(err, errlen, "zstd: %zu bytes, too short for a frame", n);
  uint32_t magic = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                   (uint32_t)p[3] << 24;
  if (magic != ZSTD_MAGICNUMBER) {
    if ((magic & ZSTD_MAGIC_SKIPPABLE_MASK) == ZSTD_MAGIC_SKIPPABLE_START)
      return fail(err, errlen, "zstd: skippable frame, expected a data frame");
    return fail(err, errlen, "zstd: bad magic 0x%08x", (unsigned)magic);
  }
  unsigned long long fcs = ZSTD_getFrameContentSize(src, n);
  if (fcs == ZSTD_CONTENTSIZE_ERROR)
    return fail(err, errlen, "zstd: truncated or invalid frame header");
  if (fcs == ZSTD_CONTENTSIZE_UNKNOWN)
    return fail(err, errlen, "zstd: frame does not declare its content size");
  if (fcs != (unsigned long long)expected)
    return fail(err, errlen, "zstd: frame declares %llu content bytes, expected %zu", fcs,
                expected);
  /* Frame_Header_Descriptor bit 5: Single_Segment (then the window is the content
   * size, bounded by expected); otherwise a Window_Descriptor byte follows. The header
   * is complete here: ZSTD_getFrameContentSize has parsed it. */
  if (!(p[4] & 0x20)) {
    unsigned wlog = 10u + (p[5] >> 3);
    unsigned long long wsize = (1ull << wlog) + ((1ull << wlog) >> 3) * (p[5] & 7u);
    if (wsize > (1ull << WINDOW_LOG_MAX))
      return fail(err, errlen, "zstd: frame window of %llu bytes exceeds the limit of %llu",
                  wsize, 1ull << WINDOW_LOG_MAX);
  }
  size_t csize = ZSTD_findFrameCompressedSize(src, n);
  if (ZSTD_isError(csize))
    return fail(err, errlen, "zstd: truncated or corrupt frame (%s)", ZSTD_getErrorName(csize));
  if (csize != n)
    return fail(err, errlen, "zstd: %zu trailing bytes after the frame", n - csize);
  ZSTD_DCtx* d = thread_dctx();
  if (!d) return fail(err, errlen, "zstd: out of memory for a decompression context");
  size_t r = ZSTD_decompressDCtx(d, dst, expected, src, n);
  if (ZSTD_isError(r)) return fail(err, errlen, "zstd: corrupt frame (%s)", ZSTD_getErrorName(r));
  if (r != expected)
    return fail(err, errlen, "zstd: frame decoded to %zu bytes, expected %zu", r, expected);
  return 0;
}
