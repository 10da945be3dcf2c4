/* Unit tests of common/shard/shardmap.c: the chunk -> shard map is stable, balanced and
 * moves little when a shard is added; shard lists parse or name their problem. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shard/shardmap.h"

#define NCHUNKS 10000

static uint32_t of(const char* name, uint32_t chunk, uint32_t shards) {
  return px_shard_of(name, strlen(name), chunk, shards);
}

/* The map is part of the on-disk and wire contract: these values must never change. */
static void test_stable(void** state) {
  (void)state;
  static const struct {
    const char* name;
    uint32_t chunk, shards, want;
  } pinned[] = {
      {"w", 0, 2, 1}, {"w", 1, 2, 0}, {"w", 2, 2, 1}, {"w", 3, 2, 0},
      {"a", 0, 3, 0}, {"a", 7, 3, 2}, {"b", 0, 5, 4}, {"conv1.weight", 12, 16, 12},
  };
  for (size_t i = 0; i < sizeof pinned / sizeof pinned[0]; i++) {
    uint32_t got = of(pinned[i].name, pinned[i].chunk, pinned[i].shards);
    if (got != pinned[i].want)
      fail_msg("'%s' chunk %u of %u shards: shard %u, pinned %u", pinned[i].name,
               pinned[i].chunk, pinned[i].shards, got, pinned[i].want);
  }
  /* one shard, or none: everything is shard 0 */
  for (uint32_t c = 0; c < 100; c++) {
    assert_int_equal(of("x", c, 1), 0);
    assert_int_equal(of("x", c, 0), 0);
  }
  /* the same inputs always give the same shard; the name matters */
  uint32_t differ = 0;
  for (uint32_t c = 0; c < 1000; c++) {
    assert_int_equal(of("layer.0", c, 7), of("layer.0", c, 7));
    differ += of("layer.0", c, 7) != of("layer.1", c, 7);
  }
  assert_true(differ > 700); /* ~6/7 of them for independent maps */
}

/* Every shard gets within 10% of its share of 10,000 chunks, for S = 2..16, over one
 * tensor and over many small ones. */
static void test_balanced(void** state) {
  (void)state;
  for (uint32_t s = 2; s <= 16; s++) {
    uint32_t count[16] = {0}, count_many[16] = {0};
    for (uint32_t c = 0; c < NCHUNKS; c++) count[of("model.embedding", c, s)]++;
    for (uint32_t c = 0; c < NCHUNKS; c++) {
      char name[32];
      snprintf(name, sizeof name, "layer%u.weight", c / 4);
      count_many[of(name, c % 4, s)]++;
    }
    const double share = (double)NCHUNKS / s;
    for (uint32_t i = 0; i < s; i++) {
      if (count[i] < share * 0.9 || count[i] > share * 1.1)
        fail_msg("S=%u: shard %u holds %u of %d chunks (share %.0f)", s, i, count[i], NCHUNKS,
                 share);
      if (count_many[i] < share * 0.9 || count_many[i] > share * 1.1)
        fail_msg("S=%u, small tensors: shard %u holds %u chunks (share %.0f)", s, i,
                 count_many[i], share);
    }
  }
}

/* From S to S + 1 shards only the chunks the new shard wins move, about 1/(S + 1). */
static void test_minimal_movement(void** state) {
  (void)state;
  for (uint32_t s = 1; s < 16; s++) {
    uint32_t moved = 0;
    for (uint32_t c = 0; c < NCHUNKS; c++) {
      uint32_t a = of("t", c, s), b = of("t", c, s + 1);
      if (a != b) {
        assert_int_equal(b, s); /* it went to the new shard, nowhere else */
        moved++;
      }
    }
    double want = (double)NCHUNKS / (s + 1);
    if (moved < want * 0.9 || moved > want * 1.1)
      fail_msg("S=%u -> %u: %u chunks moved, expected about %.0f", s, s + 1, moved, want);
  }
}

static void test_chunk_lists(void** state) {
  (void)state;
  uint32_t own[64], total = 0;
  for (uint32_t sh = 0; sh < 3; sh++) {
    uint32_t n = px_shard_chunks("w", 1, 64, sh, 3, own);
    for (uint32_t k = 0; k < n; k++) {
      assert_int_equal(of("w", own[k], 3), sh);
      if (k) assert_true(own[k] > own[k - 1]);
    }
    total += n;
  }
  assert_int_equal(total, 64);
  assert_int_equal(px_shard_chunks("w", 1, 64, 0, 1, own), 64);
  assert_int_equal(own[63], 63);
}

static void test_lists(void** state) {
  (void)state;
  char err[256], e[300];
  assert_int_equal(px_shard_list_count("a:1", 8, err, sizeof err), 1);
  assert_int_equal(px_shard_list_count("a:1,b:2,c:3", 8, err, sizeof err), 3);
  assert_int_equal(px_shard_list_get("a:1,b:2,c:3", 1, e, sizeof e), 0);
  assert_string_equal(e, "b:2");
  assert_int_equal(px_shard_list_get("a:1,b:2,c:3", 2, e, sizeof e), 0);
  assert_string_equal(e, "c:3");
  assert_int_equal(px_shard_list_get("a:1,b:2,c:3", 3, e, sizeof e), -1);
  assert_int_equal(px_shard_list_get("a:1,bbbbbbbb:2", 1, e, 4), -1);
  assert_int_equal(px_shard_list_count("", 8, err, sizeof err), 0);
  assert_non_null(strstr(err, "empty"));
  assert_int_equal(px_shard_list_count(NULL, 8, err, sizeof err), 0);
  assert_int_equal(px_shard_list_count("a:1,,b:2", 8, err, sizeof err), 0);
  assert_non_null(strstr(err, "entry 1 is empty"));
  assert_int_equal(px_shard_list_count("a:1,", 8, err, sizeof err), 0);
  assert_non_null(strstr(err, "entry 1 is empty"));
  assert_int_equal(px_shard_list_count("a,b,c", 2, err, sizeof err), 0);
  assert_non_null(strstr(err, "more than 2"));
  char big[400];
  memset(big, 'x', 300);
  big[300] = 0;
  assert_int_equal(px_shard_list_count(big, 8, err, sizeof err), 0);
  assert_non_null(strstr(err, "longer than 255"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_stable),         cmocka_unit_test(test_balanced),
      cmocka_unit_test(test_minimal_movement), cmocka_unit_test(test_chunk_lists),
      cmocka_unit_test(test_lists),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
