/* Unit tests of common/codec/payload.c: every encoding decoded from messages split into many segments (1-byte and empty ones included); hostile payloads leave the destination byte for byte as it was; delta composition; the scratch slots each function uses. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "codec/checksum.h"
#include "codec/dtype.h"
#include "codec/payload.h"
#include "util/scratch.h"
#include "codec/transform.h"
#include "codec/zstdframe.h"
#include "util/iov.h"
#include "wire/chunk_msg.h"

/* ---- test data ------------------------------------------------------------------------ */

/* splitmix64: deterministic test data */
static uint64_t rng_state;
static uint64_t rnd(void) {
  uint64_t z = (rng_state += UINT64_C(0x9E3779B97F4A7C15));
  z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
  return z ^ (z >> 31);
}
static double gauss(void) {
  double u1 = ((double)(rnd() >> 11) + 1.0) * 0x1.0p-53;
  double u2 = (double)(rnd() >> 11) * 0x1.0p-53;
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Weights ~ N(0, 0.02^2) as f32. */
static float* weights(size_t n) {
  float* w = malloc(n * sizeof *w);
  assert_non_null(w);
  for (size_t i = 0; i < n; i++) w[i] = (float)(0.02 * gauss());
  return w;
}

/* One plain SGD step in place: w -= lr * g, g ~ N(0, 0.01^2). */
static void sgd_step(float* w, size_t n, float lr) {
  for (size_t i = 0; i < n; i++) w[i] -= lr * (float)(0.01 * gauss());
}

/* The words of f32 values as width-byte words: the f32 bits (4) or their bf16 view (2). */
static void* words_of(const float* w, size_t n, int width) {
  void* out = malloc(n * (size_t)width + 1);
  assert_non_null(out);
  if (width == 4) memcpy(out, w, n * 4);
  else px_f32_to_bf16_n(w, out, n);
  return out;
}

static void* random_words(size_t n, int width) {
  uint8_t* out = malloc(n * (size_t)width + 1);
  assert_non_null(out);
  for (size_t i = 0; i < n * (size_t)width; i++) out[i] = (uint8_t)rnd();
  return out;
}

static void* dup_mem(const void* p, size_t n) {
  void* q = malloc(n ? n : 1);
  assert_non_null(q);
  if (n) memcpy(q, p, n);
  return q;
}

/* ---- messages in segments ----------------------------------------------------------------- */

/* How a message is cut into segments. */
enum {
  SPLIT_ONE,      /* one contiguous segment */
  SPLIT_BYTES,    /* one byte per segment */
  SPLIT_HDR,      /* header | payload: the payload is contiguous (zero-copy path) */
  SPLIT_SMALL,    /* random sizes 0..36, many empty */
  SPLIT_LARGE,    /* random sizes 0..4096, some empty */
  SPLIT_EMPTIES,  /* header | empty | empty | half | empty | other half | empty */
  SPLIT_ODD,      /* header + 1 payload byte | the rest minus 1 | 1 byte */
  NSPLIT
};

/* A message copied into separately allocated segments, so that reading past the end of
 * one segment is an ASan error rather than a read of the next one. */
typedef struct msg {
  px_iov* seg;
  size_t nseg, cap;
} msg;

static void msg_add(msg* m, const uint8_t* p, size_t n) {
  if (m->nseg == m->cap) {
    m->cap = m->cap ? 2 * m->cap : 16;
    m->seg = realloc(m->seg, m->cap * sizeof *m->seg);
    assert_non_null(m->seg);
  }
  m->seg[m->nseg].p = dup_mem(p, n);
  m->seg[m->nseg].n = n;
  m->nseg++;
}

static void msg_free(msg* m) {
  for (size_t i = 0; i < m->nseg; i++) free((void*)m->seg[i].p);
  free(m->seg);
  m->seg = NULL;
  m->nseg = m->cap = 0;
}

/* Splits b[0..n) (header of hl bytes, then the payload) as `mode` says. */
static msg msg_split(const uint8_t* b, size_t n, size_t hl, int mode) {
  msg m = {NULL, 0, 0};
  size_t off = 0;
  switch (mode) {
    case SPLIT_ONE:
      msg_add(&m, b, n);
      break;
    case SPLIT_BYTES:
      for (off = 0; off < n; off++) msg_add(&m, b + off, 1);
      break;
    case SPLIT_HDR:
      msg_add(&m, b, hl);
      msg_add(&m, b + hl, n - hl);
      break;
    case SPLIT_SMALL:
    case SPLIT_LARGE:
      while (off < n) {
        size_t k = mode == SPLIT_SMALL ? rnd() % 37 : (rnd() % 8 == 0 ? 0 : rnd() % 4097);
        if (k > n - off) k = n - off;
        msg_add(&m, b + off, k);
        off += k;
      }
      msg_add(&m, b + n, 0);
      break;
    case SPLIT_EMPTIES: {
      size_t half = (n - hl) / 2;
      msg_add(&m, b, hl);
      msg_add(&m, b, 0);
      msg_add(&m, b, 0);
      msg_add(&m, b + hl, half);
      msg_add(&m, b, 0);
      msg_add(&m, b + hl + half, n - hl - half);
      msg_add(&m, b, 0);
      break;
    }
    case SPLIT_ODD:
      if (n - hl < 3) {
        msg_add(&m, b, n);
        break;
      }
      msg_add(&m, b, hl + 1);
      msg_add(&m, b + hl + 1, n - hl - 2);
      msg_add(&m, b + n - 1, 1);
      break;
  }
  return m;
}

/* The PullChunk (or PushChunk) message with header fields h and the payload. */
static uint8_t* msg_build(px_chunk_kind kind, const px_chunk* h, const void* payload,
                          size_t plen, size_t* len, size_t* hl) {
  uint8_t head[PX_CHUNK_HDR_MAX];
  *hl = px_chunk_encode_header(kind, h, plen, head, sizeof head);
  assert_true(*hl > 0);
  uint8_t* b = malloc(*hl + plen + 1);
  assert_non_null(b);
  memcpy(b, head, *hl);
  if (plen) memcpy(b + *hl, payload, plen);
  *len = *hl + plen;
  return b;
}

/* A chunk header for n words of width bytes. */
static px_chunk header(uint32_t enc, size_t n, int width, uint64_t checksum) {
  px_chunk h;
  memset(&h, 0, sizeof h);
  h.tensor_id = 3;
  h.chunk = 7;
  h.version = 12;
  h.base_version = 11;
  h.encoding = enc;
  h.dtype = width == 4 ? PX_DT_F32 : PX_DT_BF16;
  h.raw_len = (uint32_t)(n * (size_t)width);
  h.checksum = checksum;
  return h;
}

/* Sends (h, payload) through encode_header + split `mode` + parse, then decodes into dst.
 * The kind alternates with the mode: both messages carry payloads the same way. */
/* decode_msg uses px_chunk_decode_private (the server's receive path) when set */
static bool g_private;

static px_decode_result decode_msg(const px_chunk* h, const void* payload, size_t plen,
                                    int mode, void* dst, size_t n, int width, char* err,
                                    size_t errlen) {
  px_chunk_kind kind = mode % 2 ? PX_CHUNK_PUSH : PX_CHUNK_PULL;
  size_t len, hl;
  uint8_t* b = msg_build(kind, h, payload, plen, &len, &hl);
  msg m = msg_split(b, len, hl, mode);
  free(b);
  px_chunk c;
  char perr[160];
  if (px_chunk_parse(kind, m.seg, m.nseg, &c, perr, sizeof perr) != 0)
    fail_msg("parse (mode %d): %s", mode, perr);
  assert_int_equal(c.payload_len, plen);
  assert_int_equal(c.encoding, h->encoding);
  assert_int_equal(c.raw_len, h->raw_len);
  assert_true(c.checksum == h->checksum);
  err[0] = 0;
  px_decode_result r = g_private
                            ? px_chunk_decode_private(&c, m.seg, m.nseg, dst, n, width, err, errlen)
                            : px_chunk_decode(&c, m.seg, m.nseg, dst, n, width, err, errlen);
  msg_free(&m);
  return r;
}

/* Decodes (h, payload) in every split mode onto a copy of start; expects OK and want. */
static void expect_ok(const px_chunk* h, const void* payload, size_t plen, const void* start,
                      const void* want, size_t n, int width) {
  const size_t bytes = n * (size_t)width;
  void* dst = malloc(bytes + 1);
  assert_non_null(dst);
  for (int mode = 0; mode < NSPLIT; mode++) {
    memcpy(dst, start, bytes);
    char err[256];
    px_decode_result r = decode_msg(h, payload, plen, mode, dst, n, width, err, sizeof err);
    if (r != PX_DECODE_OK)
      fail_msg("%s n=%zu width=%d mode %d: result %d: %s", px_encoding_name(h->encoding), n,
               width, mode, (int)r, err);
    if (memcmp(dst, want, bytes) != 0)
      fail_msg("%s n=%zu width=%d mode %d: wrong contents", px_encoding_name(h->encoding), n,
               width, mode);
  }
  free(dst);
}

/* Decodes (h, payload) in `modes` split modes; expects result `want_r`, an error line
 * that mentions `what` (when not NULL), and dst byte for byte as it was. */
static void expect_reject(const char* what_case, const px_chunk* h, const void* payload,
                          size_t plen, const void* start, size_t n, int width,
                          px_decode_result want_r, const char* what, int modes) {
  const size_t bytes = n * (size_t)width;
  void* dst = malloc(bytes + 1);
  assert_non_null(dst);
  for (int mode = 0; mode < modes; mode++) {
    memcpy(dst, start, bytes);
    char err[256];
    px_decode_result r = decode_msg(h, payload, plen, mode, dst, n, width, err, sizeof err);
    if (r != want_r)
      fail_msg("%s (width %d, mode %d): result %d, want %d (%s)", what_case, width, mode, (int)r,
               (int)want_r, err);
    if (memcmp(dst, start, bytes) != 0)
      fail_msg("%s (width %d, mode %d): the destination was modified", what_case, width, mode);
    if (err[0] == 0 || strchr(err, '\n'))
      fail_msg("%s: error text '%s' is not one line", what_case, err);
    if (what && !strstr(err, what))
      fail_msg("%s: error '%s' does not mention '%s'", what_case, err, what);
  }
  free(dst);
}

/* ---- decode: every encoding --------------------------------------------------------------- */

static const size_t sizes[] = {1, 2, 31, 33, 1000, 4099};

static void test_decode_every_encoding(void** st) {
  (void)st;
  rng_state = 1;
  for (int width = 2; width <= 4; width += 2) {
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
      const size_t n = sizes[si], bytes = n * (size_t)width;
      float* w = weights(n);
      void* base = words_of(w, n, width);
      sgd_step(w, n, 1e-3f);
      void* next = words_of(w, n, width);
      void* junk = random_words(n, width);
      const uint64_t sum = px_checksum(next, bytes);
      const size_t cap = px_zstd_bound(bytes);
      uint8_t* frame = malloc(cap);
      assert_non_null(frame);

      /* RAW: the payload is the chunk; whatever dst held is replaced */
      px_chunk h = header(PX_ENC_RAW, n, width, sum);
      expect_ok(&h, next, bytes, junk, next, n, width);
      expect_ok(&h, next, bytes, next, next, n, width);

      /* UNCHANGED: no payload, dst checked as it is */
      h = header(PX_ENC_UNCHANGED, n, width, sum);
      expect_ok(&h, NULL, 0, next, next, n, width);

      /* DELTA_ZSTD applied to the base */
      size_t fl = px_encode_delta(next, base, n, width, 1, frame, cap);
      assert_true(fl > 0 && fl <= cap);
      h = header(PX_ENC_DELTA_ZSTD, n, width, sum);
      expect_ok(&h, frame, fl, base, next, n, width);
      /* the delta from a chunk to itself is all zeros and turns it into itself */
      size_t zl = px_encode_delta(next, next, n, width, 1, frame, cap);
      assert_true(zl > 0);
      expect_ok(&h, frame, zl, next, next, n, width);

      /* SHUFFLE_ZSTD: a full chunk; whatever dst held is replaced */
      fl = px_encode_shuffle(next, n, width, 1, frame, cap);
      assert_true(fl > 0 && fl <= cap);
      h = header(PX_ENC_SHUFFLE_ZSTD, n, width, sum);
      expect_ok(&h, frame, fl, junk, next, n, width);

      /* arbitrary bit patterns (NaN, inf, -0, subnormals) are just words */
      void* rb = random_words(n, width);
      void* rn = random_words(n, width);
      const uint64_t rsum = px_checksum(rn, bytes);
      fl = px_encode_delta(rn, rb, n, width, 1, frame, cap);
      assert_true(fl > 0 && fl <= cap); /* incompressible: still within the bound */
      h = header(PX_ENC_DELTA_ZSTD, n, width, rsum);
      expect_ok(&h, frame, fl, rb, rn, n, width);
      fl = px_encode_shuffle(rn, n, width, 1, frame, cap);
      h = header(PX_ENC_SHUFFLE_ZSTD, n, width, rsum);
      expect_ok(&h, frame, fl, junk, rn, n, width);

      free(rb);
      free(rn);
      free(frame);
      free(junk);
      free(next);
      free(base);
      free(w);
    }
  }
}

/* A 1 MiB chunk (the default chunk size), in a few split modes. */
static void test_decode_large_chunk(void** st) {
  (void)st;
  rng_state = 2;
  const size_t n = 1u << 18; /* f32 words */
  float* w = weights(n);
  void* base = words_of(w, n, 4);
  sgd_step(w, n, 1e-3f);
  void* next = words_of(w, n, 4);
  const size_t bytes = n * 4, cap = px_zstd_bound(bytes);
  uint8_t* frame = malloc(cap);
  void* dst = malloc(bytes);
  assert_true(frame && dst);
  size_t fl = px_encode_delta(next, base, n, 4, 1, frame, cap);
  /* compression.md: the f32 int delta compresses 1.46-2.44x at level 1 */
  assert_true(fl > 0 && fl * 10 < bytes * 7);
  px_chunk h = header(PX_ENC_DELTA_ZSTD, n, 4, px_checksum(next, bytes));
  static const int modes[] = {SPLIT_ONE, SPLIT_HDR, SPLIT_LARGE, SPLIT_EMPTIES, SPLIT_ODD};
  for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
    memcpy(dst, base, bytes);
    char err[256];
    assert_int_equal(decode_msg(&h, frame, fl, modes[i], dst, n, 4, err, sizeof err),
                     PX_DECODE_OK);
    assert_memory_equal(dst, next, bytes);
  }
  free(dst);
  free(frame);
  free(next);
  free(base);
  free(w);
}

/* The one-pass copy+hash of RAW payloads into a private buffer: every split of the
 * message (payloads across segments and past the 32 KiB copy blocks), both widths; a
 * wrong checksum or a short payload is refused like by px_chunk_decode; other encodings
 * take px_chunk_decode's path. */
static void test_decode_private(void** st) {
  (void)st;
  rng_state = 9;
  g_private = true;
  const size_t lens[] = {1, 777, (1u << 18) + 3};
  for (size_t s = 0; s < sizeof lens / sizeof *lens; s++) {
    for (int width = 2; width <= 4; width += 2) {
      const size_t n = lens[s], bytes = n * (size_t)width;
      void* v = random_words(n, width);
      void* start = random_words(n, width);
      px_chunk h = header(PX_ENC_RAW, n, width, px_checksum(v, bytes));
      expect_ok(&h, v, bytes, start, v, n, width);
      void* dst = dup_mem(start, bytes);
      char err[256];
      h.checksum ^= 1;
      for (int mode = 0; mode < NSPLIT; mode++)
        assert_int_equal(decode_msg(&h, v, bytes, mode, dst, n, width, err, sizeof err),
                         PX_DECODE_CHECKSUM);
      h.checksum ^= 1;
      if (n > 1) /* a payload shorter than raw_len says */
        assert_int_equal(decode_msg(&h, v, bytes - (size_t)width, SPLIT_ONE, dst, n, width, err,
                                    sizeof err),
                         PX_DECODE_MALFORMED);
      /* SHUFFLE_ZSTD through the private entry point decodes as usual */
      const size_t cap = px_zstd_bound(bytes);
      uint8_t* frame = malloc(cap);
      assert_non_null(frame);
      size_t fl = px_encode_shuffle(v, n, width, 1, frame, cap);
      assert_true(fl > 0);
      px_chunk hz = header(PX_ENC_SHUFFLE_ZSTD, n, width, px_checksum(v, bytes));
      expect_ok(&hz, frame, fl, start, v, n, width);
      free(frame);
      free(dst);
      free(start);
      free(v);
    }
  }
  g_private = false;
}

/* ---- encoder round trips ----------------------------------------------------------------- */

static void test_round_trips(void** st) {
  (void)st;
  rng_state = 3;
  for (int width = 2; width <= 4; width += 2) {
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
      const size_t n = sizes[si], bytes = n * (size_t)width, cap = px_zstd_bound(bytes);
      float* w = weights(n);
      void* base = words_of(w, n, width);
      sgd_step(w, n, 1e-2f);
      void* next = words_of(w, n, width);
      uint8_t* f1 = malloc(cap);
      uint8_t* f2 = malloc(cap);
      void* d = malloc(bytes + 1);
      void* back = malloc(bytes + 1);
      uint8_t* raw = malloc(bytes + 1);
      assert_true(f1 && f2 && d && back && raw);

      for (int level = 1; level <= 19; level += 9) {
        /* px_encode_delta -> px_decode_delta_words gives new - base */
        size_t l1 = px_encode_delta(next, base, n, width, level, f1, cap);
        assert_true(l1 > 0);
        memset(back, 0xA5, bytes);
        assert_int_equal(px_decode_delta_words(f1, l1, n, width, back), 0);
        px_delta(next, base, n, width, d);
        assert_memory_equal(back, d, bytes);
        px_delta_apply(base, back, n, width, back);
        assert_memory_equal(back, next, bytes);
        /* px_encode_delta_words on that delta gives the same frame (same input bytes) */
        size_t l2 = px_encode_delta_words(d, n, width, level, f2, cap);
        assert_int_equal(l2, l1);
        assert_memory_equal(f2, f1, l1);
        /* the frame is zstd over the zigzag-shuffled delta */
        assert_int_equal(px_zstd_decompress(f1, l1, raw, bytes, NULL, 0), 0);
        px_unshuffle_unzigzag(raw, n, width, back);
        assert_memory_equal(back, d, bytes);

        /* px_encode_shuffle: zstd over the byte planes */
        size_t l3 = px_encode_shuffle(next, n, width, level, f2, cap);
        assert_true(l3 > 0);
        assert_int_equal(px_zstd_decompress(f2, l3, raw, bytes, NULL, 0), 0);
        px_unshuffle(raw, n, width, back);
        assert_memory_equal(back, next, bytes);
      }

      /* the encoders fail cleanly: bad levels, too small an output */
      assert_int_equal(px_encode_delta(next, base, n, width, 0, f1, cap), 0);
      assert_int_equal(px_encode_delta(next, base, n, width, -1, f1, cap), 0);
      assert_int_equal(px_encode_delta_words(d, n, width, 23, f1, cap), 0); /* > ZSTD_maxCLevel() */
      assert_int_equal(px_encode_shuffle(next, n, width, 0, f1, cap), 0);
      assert_int_equal(px_encode_delta(next, base, n, width, 1, f1, 4), 0);
      assert_int_equal(px_encode_shuffle(next, n, width, 1, f1, 4), 0);

      /* px_decode_delta_words refuses a truncated frame, a wrong size, trailing bytes */
      size_t l1 = px_encode_delta(next, base, n, width, 1, f1, cap);
      memset(back, 0x5A, bytes);
      assert_int_equal(px_decode_delta_words(f1, l1 - 1, n, width, back), -1);
      assert_int_equal(px_decode_delta_words(f1, l1 / 2, n, width, back), -1);
      if (n > 1) assert_int_equal(px_decode_delta_words(f1, l1, n - 1, width, back), -1);
      f1[l1] = 0;
      assert_int_equal(px_decode_delta_words(f1, l1 + 1, n, width, back), -1);

      free(raw);
      free(back);
      free(d);
      free(f2);
      free(f1);
      free(next);
      free(base);
      free(w);
    }
  }
}

/* ---- hostile payloads ------------------------------------------------------------------- */

/* Offset and size of a frame's Frame_Content_Size field (RFC 8878 3.1.1.1). */
static void fcs_field(const uint8_t* f, size_t* off, size_t* size) {
  uint8_t fhd = f[4];
  static const size_t did[4] = {0, 1, 2, 4};
  int single = (fhd >> 5) & 1;
  static const size_t fcs[4] = {0, 2, 4, 8};
  *off = 5 + (single ? 0 : 1) + did[fhd & 3];
  *size = (fhd >> 6) == 0 ? (single ? 1 : 0) : fcs[fhd >> 6];
}

/* Rewrites frame f (len bytes) into out with a Frame_Content_Size field of flag code
 * `code` (2: 4 bytes, 3: 8 bytes) holding value. Returns the new length. */
static size_t set_fcs(const uint8_t* f, size_t len, int code, uint64_t value, uint8_t* out) {
  size_t off, fsz;
  fcs_field(f, &off, &fsz);
  size_t nsz = code == 2 ? 4 : 8;
  memcpy(out, f, off);
  out[4] = (uint8_t)((f[4] & 0x3f) | (code << 6));
  for (size_t b = 0; b < nsz; b++) out[off + b] = (uint8_t)(value >> (8 * b));
  memcpy(out + off + nsz, f + off + fsz, len - off - fsz);
  return len - fsz + nsz;
}

static void hostile_width(int width) {
  const size_t n = 4096 + 3, bytes = n * (size_t)width, cap = px_zstd_bound(bytes);
  float* w = weights(n);
  void* base = words_of(w, n, width);
  sgd_step(w, n, 1e-3f);
  void* next = words_of(w, n, width);
  const uint64_t sum = px_checksum(next, bytes);
  uint8_t* delta = malloc(cap + 64);
  uint8_t* shuf = malloc(cap + 64);
  uint8_t* buf = malloc(cap + 64);
  void* rawp = malloc(bytes + 64);
  assert_true(delta && shuf && buf && rawp);
  const size_t dl = px_encode_delta(next, base, n, width, 1, delta, cap);
  const size_t sl = px_encode_shuffle(next, n, width, 1, shuf, cap);
  assert_true(dl > 16 && sl > 16);
  memcpy(rawp, next, bytes);
  px_chunk h;

  /* wrong raw_len, for every encoding */
  static const uint32_t encs[] = {PX_ENC_RAW, PX_ENC_UNCHANGED, PX_ENC_DELTA_ZSTD,
                                  PX_ENC_SHUFFLE_ZSTD};
  for (size_t e = 0; e < 4; e++) {
    const void* pl = encs[e] == PX_ENC_RAW ? next : encs[e] == PX_ENC_DELTA_ZSTD ? delta : shuf;
    size_t plen = encs[e] == PX_ENC_RAW ? bytes
                  : encs[e] == PX_ENC_DELTA_ZSTD ? dl
                  : encs[e] == PX_ENC_SHUFFLE_ZSTD ? sl : 0;
    const void* start = encs[e] == PX_ENC_UNCHANGED ? next : base;
    static const long adj[] = {1, -1, 2, 4, -4};
    for (size_t a = 0; a < sizeof adj / sizeof adj[0]; a++) {
      h = header(encs[e], n, width, sum);
      h.raw_len = (uint32_t)((long)bytes + adj[a]);
      expect_reject("wrong raw_len", &h, pl, plen, start, n, width, PX_DECODE_MALFORMED,
                    "raw_len", 2);
    }
    h = header(encs[e], n, width, sum);
    h.raw_len = 0;
    expect_reject("raw_len 0", &h, pl, plen, start, n, width, PX_DECODE_MALFORMED, "raw_len", 1);
    h.raw_len = UINT32_MAX;
    expect_reject("raw_len 2^32-1", &h, pl, plen, start, n, width, PX_DECODE_MALFORMED,
                  "raw_len", 1);
  }

  /* RAW payload too short or too long */
  h = header(PX_ENC_RAW, n, width, sum);
  expect_reject("RAW too short", &h, next, bytes - 1, base, n, width, PX_DECODE_MALFORMED, "RAW",
                NSPLIT);
  expect_reject("RAW a word short", &h, next, bytes - (size_t)width, base, n, width,
                PX_DECODE_MALFORMED, "RAW", 2);
  memset((uint8_t*)rawp + bytes, 0, 64);
  expect_reject("RAW too long", &h, rawp, bytes + 1, base, n, width, PX_DECODE_MALFORMED, "RAW",
                NSPLIT);
  expect_reject("RAW far too long", &h, rawp, bytes + 64, base, n, width, PX_DECODE_MALFORMED,
                "RAW", 2);
  expect_reject("RAW empty", &h, NULL, 0, base, n, width, PX_DECODE_MALFORMED, "RAW", 1);
  /* RAW whose checksum does not match: every split mode, one flipped byte anywhere */
  ((uint8_t*)rawp)[bytes / 3] ^= 0x01;
  expect_reject("RAW bit flip", &h, rawp, bytes, base, n, width, PX_DECODE_CHECKSUM, "checksum",
                NSPLIT);
  memcpy(rawp, next, bytes);
  ((uint8_t*)rawp)[bytes - 1] ^= 0x80;
  expect_reject("RAW last byte", &h, rawp, bytes, base, n, width, PX_DECODE_CHECKSUM, "checksum",
                NSPLIT);
  h.checksum = sum ^ 1;
  expect_reject("RAW wrong checksum", &h, next, bytes, base, n, width, PX_DECODE_CHECKSUM,
                "checksum", 2);

  /* UNCHANGED with a payload; UNCHANGED whose dst does not match */
  h = header(PX_ENC_UNCHANGED, n, width, sum);
  expect_reject("UNCHANGED with payload", &h, next, bytes, next, n, width, PX_DECODE_MALFORMED,
                "UNCHANGED", NSPLIT);
  expect_reject("UNCHANGED with 1 byte", &h, next, 1, next, n, width, PX_DECODE_MALFORMED,
                "UNCHANGED", 2);
  expect_reject("UNCHANGED wrong dst", &h, NULL, 0, base, n, width, PX_DECODE_CHECKSUM,
                "checksum", 2);
  memcpy(rawp, next, bytes);
  ((uint8_t*)rawp)[0] ^= 1;
  expect_reject("UNCHANGED dst off by a bit", &h, NULL, 0, rawp, n, width, PX_DECODE_CHECKSUM,
                "checksum", 1);

  for (int k = 0; k < 2; k++) {
    const uint32_t enc = k ? PX_ENC_SHUFFLE_ZSTD : PX_ENC_DELTA_ZSTD;
    const uint8_t* fr = k ? shuf : delta;
    const size_t fl = k ? sl : dl;
    h = header(enc, n, width, sum);
    /* the frame is fine (the checks below are not vacuous) */
    expect_ok(&h, fr, fl, base, next, n, width);

    /* truncated frames: every length, a few split modes for some */
    for (size_t len = 1; len < fl; len++)
      expect_reject("truncated zstd frame", &h, fr, len, base, n, width, PX_DECODE_MALFORMED,
                    "zstd", len % 97 == 0 || len + 2 >= fl ? NSPLIT : 1);
    expect_reject("empty payload", &h, NULL, 0, base, n, width, PX_DECODE_MALFORMED, NULL, 1);

    /* trailing bytes after the frame */
    memcpy(buf, fr, fl);
    memcpy(buf + fl, fr, 16);
    expect_reject("trailing bytes", &h, buf, fl + 1, base, n, width, PX_DECODE_MALFORMED,
                  "trailing", NSPLIT);
    expect_reject("two frames", &h, buf, fl + 16, base, n, width, PX_DECODE_MALFORMED,
                  "trailing", 2);

    /* a header that claims a huge content size: 4 GiB - 1 and 1 TiB */
    size_t bl = set_fcs(fr, fl, 2, UINT32_MAX, buf);
    expect_reject("content size 2^32-1", &h, buf, bl, base, n, width, PX_DECODE_MALFORMED,
                  "declares 4294967295", NSPLIT);
    bl = set_fcs(fr, fl, 3, UINT64_C(1) << 40, buf);
    expect_reject("content size 1 TiB", &h, buf, bl, base, n, width, PX_DECODE_MALFORMED,
                  "declares 1099511627776", 2);
    bl = set_fcs(fr, fl, 3, UINT64_MAX - 2, buf);
    expect_reject("content size 2^64-3", &h, buf, bl, base, n, width, PX_DECODE_MALFORMED,
                  "zstd", 2);
    /* the rewriting itself is sound: the real size in the 8-byte form decodes */
    bl = set_fcs(fr, fl, 3, bytes, buf);
    expect_ok(&h, buf, bl, base, next, n, width);
    /* a header that lies by one word about a size the decoder does expect */
    bl = set_fcs(fr, fl, 3, bytes + (size_t)width, buf);
    px_chunk hl = h;
    hl.raw_len = (uint32_t)(bytes + (size_t)width);
    void* bigger = malloc(bytes + (size_t)width);
    assert_non_null(bigger);
    memcpy(bigger, base, bytes);
    memset((uint8_t*)bigger + bytes, 0, (size_t)width);
    expect_reject("content size lies", &hl, buf, bl, bigger, n + 1, width, PX_DECODE_MALFORMED,
                  "zstd", 2);
    free(bigger);

    /* a payload larger than any frame of this chunk could be */
    memset(buf, 0, cap + 1);
    memcpy(buf, fr, fl);
    expect_reject("payload over the zstd bound", &h, buf, cap + 1, base, n, width,
                  PX_DECODE_MALFORMED, "payload", 2);
    expect_reject("payload at the zstd bound", &h, buf, cap, base, n, width, PX_DECODE_MALFORMED,
                  "trailing", 1);

    /* wrong checksum in the header */
    h.checksum = sum + 1;
    expect_reject("wrong checksum", &h, fr, fl, base, n, width, PX_DECODE_CHECKSUM, "checksum", 2);
    h.checksum = sum;

    /* random corruption: never a crash or overrun; on failure dst untouched, and a
     * success (a flip zstd cannot see and the checksum cannot either) is never wrong */
    void* dst = malloc(bytes);
    assert_non_null(dst);
    for (int t = 0; t < 300; t++) {
      memcpy(buf, fr, fl);
      int flips = 1 + (int)(rnd() % 3);
      for (int f = 0; f < flips; f++) buf[rnd() % fl] ^= (uint8_t)(1u << (rnd() % 8));
      memcpy(dst, base, bytes);
      char err[256];
      px_decode_result r =
          decode_msg(&h, buf, fl, (int)(rnd() % NSPLIT), dst, n, width, err, sizeof err);
      if (r == PX_DECODE_OK) assert_memory_equal(dst, next, bytes);
      else assert_memory_equal(dst, base, bytes);
    }
    free(dst);
  }

  /* frames that decode to the wrong size: honest headers of one word less and more */
  {
    uint8_t* sh = malloc(bytes + (size_t)width);
    assert_non_null(sh);
    px_shuffle(next, n, width, sh);
    size_t l = px_zstd_compress(sh, bytes - (size_t)width, buf, cap, 1);
    assert_true(l > 0);
    h = header(PX_ENC_SHUFFLE_ZSTD, n, width, sum);
    expect_reject("frame one word short", &h, buf, l, base, n, width, PX_DECODE_MALFORMED,
                  "declares", 2);
    /* and its header rewritten to claim the right size: the blocks still end early */
    uint8_t* lie = malloc(cap + 16);
    assert_non_null(lie);
    size_t ll = set_fcs(buf, l, 3, bytes, lie);
    expect_reject("short frame claiming the size", &h, lie, ll, base, n, width,
                  PX_DECODE_MALFORMED, "zstd", 2);
    free(lie);
    memset(sh + bytes, 7, (size_t)width);
    l = px_zstd_compress(sh, bytes + (size_t)width, buf, cap + 64, 1);
    assert_true(l > 0 && l <= cap);
    h = header(PX_ENC_DELTA_ZSTD, n, width, sum);
    expect_reject("frame one word long", &h, buf, l, base, n, width, PX_DECODE_MALFORMED,
                  "declares", 2);
    free(sh);
  }

  /* a delta against the wrong base: checksum, dst untouched */
  h = header(PX_ENC_DELTA_ZSTD, n, width, sum);
  memcpy(rawp, base, bytes);
  ((uint8_t*)rawp)[bytes / 2] ^= 0x10;
  expect_reject("delta on a modified base", &h, delta, dl, rawp, n, width, PX_DECODE_CHECKSUM,
                "base", NSPLIT);
  expect_reject("delta on the new version", &h, delta, dl, next, n, width, PX_DECODE_CHECKSUM,
                "checksum", 2);
  {
    /* a delta from an older base applied to the newer one */
    void* older = words_of(w, n, width);
    sgd_step(w, n, 1e-3f);
    void* newest = words_of(w, n, width);
    size_t l = px_encode_delta(newest, older, n, width, 1, buf, cap);
    px_chunk h2 = header(PX_ENC_DELTA_ZSTD, n, width, px_checksum(newest, bytes));
    expect_ok(&h2, buf, l, older, newest, n, width);
    expect_reject("delta from another base", &h2, buf, l, base, n, width, PX_DECODE_CHECKSUM,
                  "checksum", 2);
    free(older);
    free(newest);
  }
  /* a SHUFFLE frame sent as DELTA and the other way round */
  h = header(PX_ENC_DELTA_ZSTD, n, width, sum);
  expect_reject("SHUFFLE frame as DELTA", &h, shuf, sl, base, n, width, PX_DECODE_CHECKSUM,
                "checksum", 1);
  h = header(PX_ENC_SHUFFLE_ZSTD, n, width, sum);
  expect_reject("DELTA frame as SHUFFLE", &h, delta, dl, base, n, width, PX_DECODE_CHECKSUM,
                "checksum", 1);

  /* a zstd payload that is no frame at all */
  for (size_t i = 0; i < 256; i++) buf[i] = (uint8_t)rnd();
  h = header(PX_ENC_DELTA_ZSTD, n, width, sum);
  expect_reject("random bytes", &h, buf, 256, base, n, width, PX_DECODE_MALFORMED, "zstd", 2);
  static const uint8_t skippable[12] = {0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4};
  expect_reject("skippable frame", &h, skippable, sizeof skippable, base, n, width,
                PX_DECODE_MALFORMED, "skippable", 2);

  /* unknown encodings */
  static const uint32_t unknown[] = {4, 5, 99, 0x7fffffff};
  for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
    h = header(unknown[i], n, width, sum);
    expect_reject("unknown encoding", &h, next, bytes, base, n, width, PX_DECODE_MALFORMED,
                  "unknown encoding", 2);
    expect_reject("unknown encoding, no payload", &h, NULL, 0, base, n, width,
                  PX_DECODE_MALFORMED, "unknown encoding", 1);
  }

  free(rawp);
  free(buf);
  free(shuf);
  free(delta);
  free(next);
  free(base);
  free(w);
}

static void test_hostile(void** st) {
  (void)st;
  rng_state = 4;
  hostile_width(4);
  hostile_width(2);
}

/* A payload whose segments end before payload_len says (a header parsed from other
 * segments than the ones passed): rejected, dst untouched. */
static void test_segments_end_early(void** st) {
  (void)st;
  rng_state = 5;
  const size_t n = 500;
  for (int width = 2; width <= 4; width += 2) {
    const size_t bytes = n * (size_t)width, cap = px_zstd_bound(bytes);
    void* v = random_words(n, width);
    void* start = random_words(n, width);
    void* dst = dup_mem(start, bytes);
    uint8_t* frame = malloc(cap);
    assert_non_null(frame);
    size_t fl = px_encode_shuffle(v, n, width, 1, frame, cap);
    const uint32_t encs[] = {PX_ENC_RAW, PX_ENC_SHUFFLE_ZSTD, PX_ENC_DELTA_ZSTD};
    for (size_t e = 0; e < 3; e++) {
      const uint8_t* pl = encs[e] == PX_ENC_RAW ? v : frame;
      size_t plen = encs[e] == PX_ENC_RAW ? bytes : fl;
      px_iov seg[3] = {{pl, plen / 3}, {pl + plen / 3, 0}, {pl + plen / 3, plen / 3}};
      px_chunk c = header(encs[e], n, width, px_checksum(v, bytes));
      c.has_payload = true;
      c.payload_len = plen;
      c.payload_seg = 0;
      c.payload_off = 0;
      char err[256] = "";
      px_decode_result r = px_chunk_decode(&c, seg, 3, dst, n, width, err, sizeof err);
      assert_int_equal(r, PX_DECODE_MALFORMED);
      assert_memory_equal(dst, start, bytes);
      assert_true(err[0] != 0);
      /* ... and a payload that starts past the last segment */
      c.payload_seg = 3;
      r = px_chunk_decode(&c, seg, 3, dst, n, width, err, sizeof err);
      assert_int_equal(r, PX_DECODE_MALFORMED);
      assert_memory_equal(dst, start, bytes);
    }
    free(frame);
    free(dst);
    free(start);
    free(v);
  }
}

/* ---- composition ------------------------------------------------------------------------- */

static void test_composition(void** st) {
  (void)st;
  rng_state = 6;
  for (int width = 2; width <= 4; width += 2) {
    const size_t n = 3000 + (size_t)width, bytes = n * (size_t)width, cap = px_zstd_bound(bytes);
    enum { K = 6 };
    float* w = weights(n);
    void* v[K + 1];
    v[0] = words_of(w, n, width);
    for (int k = 1; k <= K; k++) {
      sgd_step(w, n, 1e-2f);
      v[k] = words_of(w, n, width);
    }
    uint8_t* frame = malloc(cap);
    uint8_t* f2 = malloc(cap);
    void* dst = malloc(bytes);
    void* acc = malloc(bytes);
    void* d = malloc(bytes);
    void* d02 = malloc(bytes);
    assert_true(frame && f2 && dst && acc && d && d02);
    char err[256];

    /* delta(v0 -> v2) decoded onto v0 gives v2 */
    size_t fl = px_encode_delta(v[2], v[0], n, width, 1, frame, cap);
    px_chunk h = header(PX_ENC_DELTA_ZSTD, n, width, px_checksum(v[2], bytes));
    expect_ok(&h, frame, fl, v[0], v[2], n, width);

    /* two per-step deltas summed with px_delta_add, then encoded, reconstruct v2 just
     * like the direct delta does */
    px_delta(v[1], v[0], n, width, acc);
    px_delta(v[2], v[1], n, width, d);
    px_delta_add(acc, d, n, width);
    px_delta(v[2], v[0], n, width, d02);
    assert_memory_equal(acc, d02, bytes);
    size_t sl = px_encode_delta_words(acc, n, width, 1, f2, cap);
    assert_true(sl > 0);
    expect_ok(&h, f2, sl, v[0], v[2], n, width);
    memcpy(dst, v[0], bytes);
    assert_int_equal(decode_msg(&h, frame, fl, SPLIT_ONE, dst, n, width, err, sizeof err), 0);
    void* direct = dup_mem(dst, bytes);
    memcpy(dst, v[0], bytes);
    assert_int_equal(decode_msg(&h, f2, sl, SPLIT_SMALL, dst, n, width, err, sizeof err), 0);
    assert_memory_equal(dst, direct, bytes);
    free(direct);

    /* the same through the frames: decode each per-step frame to words and sum, as the
     * server does from its history, for every base k back from v[K] */
    for (int back = 1; back <= K; back++) {
      memset(acc, 0, bytes);
      for (int s = K; s > K - back; s--) {
        size_t l = px_encode_delta(v[s], v[s - 1], n, width, 1, frame, cap);
        assert_int_equal(px_decode_delta_words(frame, l, n, width, d), 0);
        px_delta_add(acc, d, n, width);
      }
      size_t l = px_encode_delta_words(acc, n, width, 1, frame, cap);
      px_chunk hk = header(PX_ENC_DELTA_ZSTD, n, width, px_checksum(v[K], bytes));
      memcpy(dst, v[K - back], bytes);
      assert_int_equal(decode_msg(&hk, frame, l, back % NSPLIT, dst, n, width, err, sizeof err),
                       PX_DECODE_OK);
      assert_memory_equal(dst, v[K], bytes);
      /* one direct v -> v+K diff is smaller than the K chained ones (compression.md) */
      if (back == K && width == 4) {
        size_t chained = 0;
        for (int s = 1; s <= K; s++) chained += px_encode_delta(v[s], v[s - 1], n, width, 1, f2, cap);
        assert_true(l < chained);
      }
    }

    /* chained one-step frames applied in turn also end at v[K] */
    memcpy(dst, v[0], bytes);
    for (int s = 1; s <= K; s++) {
      size_t l = px_encode_delta(v[s], v[s - 1], n, width, 1, frame, cap);
      px_chunk hs = header(PX_ENC_DELTA_ZSTD, n, width, px_checksum(v[s], bytes));
      assert_int_equal(decode_msg(&hs, frame, l, s % NSPLIT, dst, n, width, err, sizeof err),
                       PX_DECODE_OK);
    }
    assert_memory_equal(dst, v[K], bytes);

    free(d02);
    free(d);
    free(acc);
    free(dst);
    free(f2);
    free(frame);
    for (int k = 0; k <= K; k++) free(v[k]);
    free(w);
  }
}

/* ---- scratch ------------------------------------------------------------------------------- */

/* The decoder uses scratch 0 and 1 only, the encoders 2 and 3 only: the server and the
 * push path keep data in the others across these calls. */
static void test_scratch_discipline(void** st) {
  (void)st;
  rng_state = 7;
  const size_t n = 2000, bytes = n * 4, cap = px_zstd_bound(bytes), big = cap + 4096;
  float* w = weights(n);
  void* base = words_of(w, n, 4);
  sgd_step(w, n, 1e-3f);
  void* next = words_of(w, n, 4);
  uint8_t* frame = malloc(cap);
  void* d = malloc(bytes);
  assert_true(frame && d);
  uint8_t* s[4];
  for (int i = 0; i < 4; i++) {
    s[i] = px_scratch(i, big);
    assert_non_null(s[i]);
  }
  /* encoders: 0 and 1 keep their contents */
  memset(s[0], 0x11, big);
  memset(s[1], 0x22, big);
  size_t dl = px_encode_delta(next, base, n, 4, 1, frame, cap);
  px_delta(next, base, n, 4, d);
  assert_true(px_encode_delta_words(d, n, 4, 1, frame + 0, cap) == dl);
  assert_true(px_encode_shuffle(next, n, 4, 1, frame, cap) > 0);
  dl = px_encode_delta(next, base, n, 4, 1, frame, cap);
  assert_int_equal(px_decode_delta_words(frame, dl, n, 4, d), 0);
  for (size_t i = 0; i < big; i++)
    if (s[0][i] != 0x11 || s[1][i] != 0x22) fail_msg("an encoder wrote scratch 0 or 1 at %zu", i);
  /* decoder: 2 and 3 keep theirs */
  memset(s[2], 0x33, big);
  memset(s[3], 0x44, big);
  void* dst = dup_mem(base, bytes);
  char err[256];
  px_chunk h = header(PX_ENC_DELTA_ZSTD, n, 4, px_checksum(next, bytes));
  assert_int_equal(decode_msg(&h, frame, dl, SPLIT_SMALL, dst, n, 4, err, sizeof err), 0);
  assert_memory_equal(dst, next, bytes);
  h = header(PX_ENC_RAW, n, 4, px_checksum(next, bytes));
  assert_int_equal(decode_msg(&h, next, bytes, SPLIT_BYTES, dst, n, 4, err, sizeof err), 0);
  for (size_t i = 0; i < big; i++)
    if (s[2][i] != 0x33 || s[3][i] != 0x44) fail_msg("the decoder wrote scratch 2 or 3 at %zu", i);
  for (int i = 0; i < 4; i++) assert_ptr_equal(px_scratch(i, 1), s[i]);
  free(dst);
  free(d);
  free(frame);
  free(next);
  free(base);
  free(w);
}

static void test_encoding_names(void** st) {
  (void)st;
  assert_string_equal(px_encoding_name(PX_ENC_RAW), "raw");
  assert_string_equal(px_encoding_name(PX_ENC_UNCHANGED), "unchanged");
  assert_string_equal(px_encoding_name(PX_ENC_DELTA_ZSTD), "delta+zstd");
  assert_string_equal(px_encoding_name(PX_ENC_SHUFFLE_ZSTD), "shuffle+zstd");
  assert_string_equal(px_encoding_name(4), "unknown");
  assert_string_equal(px_encoding_name(UINT32_MAX), "unknown");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_decode_every_encoding),
      cmocka_unit_test(test_decode_large_chunk),
      cmocka_unit_test(test_decode_private),
      cmocka_unit_test(test_round_trips),
      cmocka_unit_test(test_hostile),
      cmocka_unit_test(test_segments_end_early),
      cmocka_unit_test(test_composition),
      cmocka_unit_test(test_scratch_discipline),
      cmocka_unit_test(test_encoding_names),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
