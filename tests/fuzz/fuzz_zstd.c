/* Fuzz target: zstd frames from the wire (px_zstd_decompress, codec/diff.h) and the
 * delta-word decoder on top of it (px_decode_delta_words, codec/frame.h).
 *
 * Input layout:
 *   byte 0    bits 0-1: expected size: 0 the frame's declared content size, 1 bytes 1-2
 *             (little endian), 2 declared + 1, 3 declared - 1; bit 2: width 4 (0) or 2 (1);
 *             bits 3-4: compression level 1..4 for the round trip; bits 5-6: error buffer
 *             (NULL/0, 1, 8 or 160 bytes)
 *   bytes 1-2 the explicit expected size for mode 1
 *   rest      the frame
 *
 * Checks, besides ASan/UBSan: the error line fits its buffer; a frame that decodes is
 * recompressed and decodes to the same bytes; px_decode_delta_words accepts exactly the
 * frames px_zstd_decompress accepts, its words equal unshuffle+unzigzag of the bytes, and
 * re-encoding them with px_encode_delta_words round-trips. */
#include <zstd.h>

#include "codec/payload.h"
#include "codec/transform.h"
#include "codec/zstdframe.h"
#include "fuzz_common.h"

#define MAX_EXPECTED (1u << 20)

static void delta_words(const uint8_t* frame, size_t len, const uint8_t* bytes, size_t expected,
                        int width, int level) {
  if (expected % (size_t)width) return;
  const size_t n = expected / (size_t)width;
  uint8_t* d = malloc(expected ? expected : 1);
  uint8_t* want = malloc(expected ? expected : 1);
  FUZZ_CHECK(d && want);
  int rc = px_decode_delta_words(frame, len, n, width, d);
  FUZZ_CHECK(rc == (bytes ? 0 : -1));
  if (rc == 0) {
    px_unshuffle_unzigzag(bytes, n, width, want);
    FUZZ_CHECK(memcmp(d, want, expected) == 0);
    size_t cap = px_zstd_bound(expected);
    uint8_t* out = malloc(cap);
    FUZZ_CHECK(out != NULL);
    size_t flen = px_encode_delta_words(d, n, width, level, out, cap);
    FUZZ_CHECK(flen > 0);
    FUZZ_CHECK(px_decode_delta_words(out, flen, n, width, want) == 0);
    FUZZ_CHECK(memcmp(d, want, expected) == 0);
    free(out);
  }
  free(want);
  free(d);
}

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  const uint8_t opt = data[0];
  const uint8_t* frame = data + 3;
  const size_t len = size - 3;
  const int width = (opt & 4) ? 2 : 4;
  const int level = 1 + ((opt >> 3) & 3);
  static const size_t errlens[4] = {0, 1, 8, 160};
  const size_t errlen = errlens[(opt >> 5) & 3];

  unsigned long long declared = ZSTD_getFrameContentSize(frame, len);
  bool have_declared = declared <= MAX_EXPECTED; /* excludes the ERROR/UNKNOWN markers */
  size_t expected;
  switch (opt & 3) {
    case 0: expected = have_declared ? (size_t)declared : 0; break;
    case 1: expected = (size_t)data[1] | (size_t)data[2] << 8; break;
    case 2: expected = have_declared ? (size_t)declared + 1 : 1; break;
    default: expected = have_declared && declared > 0 ? (size_t)declared - 1 : 0; break;
  }

  /* Exactly expected bytes (ASan catches any write past them); NULL when 0, as allowed. */
  uint8_t* dst = expected ? malloc(expected) : NULL;
  FUZZ_CHECK(expected == 0 || dst != NULL);
  char errbuf[160];
  char* err = errlen ? errbuf : NULL;
  if (err) memset(err, 'x', errlen);
  int rc = px_zstd_decompress(frame, len, dst, expected, err, errlen);
  FUZZ_CHECK(rc == 0 || rc == -1);
  if (rc != 0 && err) FUZZ_CHECK(fuzz_err_ok(err, errlen));

  if (rc == 0) {
    /* The frame decoded: compress the bytes again and get them back. */
    size_t cap = px_zstd_bound(expected);
    uint8_t* z = malloc(cap);
    uint8_t* back = malloc(expected ? expected : 1);
    FUZZ_CHECK(z && back);
    size_t zlen = px_zstd_compress(dst, expected, z, cap, level);
    FUZZ_CHECK(zlen > 0);
    FUZZ_CHECK(ZSTD_getFrameContentSize(z, zlen) == (unsigned long long)expected);
    FUZZ_CHECK(px_zstd_decompress(z, zlen, expected ? back : NULL, expected, NULL, 0) == 0);
    FUZZ_CHECK(expected == 0 || memcmp(dst, back, expected) == 0);
    free(back);
    free(z);
  }
  delta_words(frame, len, rc == 0 ? (dst ? dst : (const uint8_t*)"") : NULL, expected, width,
              level);
  free(dst);
  return 0;
}
