/* Unit tests of common/format/safetensors_read.c: every hostile or truncated file is refused with one line naming the problem; files of other writers are read. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "codec/dtype.h"
#include "format/safetensors.h"
#include "format/safetensors_read.h"
#include "format/safetensors_write.h"

/* ---- helpers ------------------------------------------------------------------------- */

static char* make_tmpdir(void) {
  char tmpl[] = "/tmp/pmx_st_XXXXXX";
  char* d = mkdtemp(tmpl);
  assert_non_null(d);
  return strdup(d);
}

/* Removes the files of a flat directory and the directory. */
static void rm_dir(const char* dir) {
  DIR* d = opendir(dir);
  if (d) {
    struct dirent* de;
    char p[512];
    for (int guard = 0; guard < 1000 && (de = readdir(d)); guard++) {
      if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
      snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
      unlink(p);
    }
    closedir(d);
  }
  rmdir(dir);
}

static uint8_t* read_whole(const char* path, size_t* len) {
  FILE* fp = fopen(path, "rb");
  assert_non_null(fp);
  assert_int_equal(fseek(fp, 0, SEEK_END), 0);
  long sz = ftell(fp);
  assert_true(sz >= 0);
  rewind(fp);
  uint8_t* b = malloc((size_t)sz + 1);
  assert_non_null(b);
  assert_int_equal(fread(b, 1, (size_t)sz, fp), (size_t)sz);
  fclose(fp);
  *len = (size_t)sz;
  return b;
}

static void write_whole(const char* path, const void* p, size_t len) {
  FILE* fp = fopen(path, "wb");
  assert_non_null(fp);
  assert_int_equal(fwrite(p, 1, len, fp), len);
  assert_int_equal(fclose(fp), 0);
}

/* A tensor of the test set with the spelling an independent reader expects. */
typedef struct {
  const char* name;
  int dtype;
  const char* st_dtype;
  uint32_t ndim;
  uint64_t shape[4];
  size_t elem;
} spec;

static const spec SET[] = {
    {"w.f32", PX_DT_F32, "F32", 2, {3, 5}, 4},
    {"big", PX_DT_F32, "F32", 1, {700000}, 4}, /* > the writer's 1 MiB buffer */
    {"opt.step", PX_DT_U64, "U64", 0, {0}, 8},
    {"counts", PX_DT_I64, "I64", 1, {2}, 8},
    {"b.bf16", PX_DT_BF16, "BF16", 1, {7}, 2},
    {"h.f16", PX_DT_F16, "F16", 3, {2, 2, 2}, 2},
    {"empty", PX_DT_F32, "F32", 2, {0, 4}, 4},
    {"dedup.bits", PX_DT_U8, "U8", 1, {13}, 1},
    {"ünïcode/名前", PX_DT_U8, "U8", 1, {1}, 1},
};
#define NSET (sizeof SET / sizeof SET[0])

static const char* const META_KV[] = {"paramex.step", "1234", "note", "hello \"world\"\n",
                                      "empty", ""};

typedef struct {
  px_st_entry e[NSET];
  uint8_t* data[NSET];
  uint64_t nbytes[NSET];
  size_t chunk;     /* bytes per px_st_sink_write */
  size_t fail_at;   /* index whose callback returns -1 (SIZE_MAX: none) */
  size_t short_at;  /* index whose callback gives one byte too few */
  size_t over_at;   /* index whose callback gives one byte too many */
  int calls;
  uint8_t salt;
} set_ctx;

static void set_init(set_ctx* c, uint8_t salt) {
  memset(c, 0, sizeof *c);
  c->chunk = SIZE_MAX;
  c->fail_at = c->short_at = c->over_at = SIZE_MAX;
  c->salt = salt;
  for (size_t i = 0; i < NSET; i++) {
    uint64_t n = SET[i].elem;
    for (uint32_t d = 0; d < SET[i].ndim; d++) n *= SET[i].shape[d];
    c->nbytes[i] = n;
    c->data[i] = malloc(n ? n : 1);
    assert_non_null(c->data[i]);
    for (uint64_t j = 0; j < n; j++)
      c->data[i][j] = (uint8_t)(salt + i * 31 + j * 7 + (j >> 8));
    c->e[i] = (px_st_entry){SET[i].name, SET[i].dtype, SET[i].ndim, SET[i].shape, n};
  }
}

static void set_free(set_ctx* c) {
  for (size_t i = 0; i < NSET; i++) free(c->data[i]);
}

static int set_write(void* ctx, size_t i, px_st_sink* sink) {
  set_ctx* c = ctx;
  c->calls++;
  uint64_t n = c->nbytes[i];
  if (i == c->short_at) n--;
  for (uint64_t off = 0; off < n;) {
    size_t step = (size_t)(n - off < c->chunk ? n - off : c->chunk);
    if (i == c->fail_at && off >= n / 2) return -1;
    if (px_st_sink_write(sink, c->data[i] + off, step) < 0) return -1;
    off += step;
  }
  if (i == c->over_at) {
    uint8_t extra = 0;
    if (px_st_sink_write(sink, &extra, 1) < 0) return -1;
  }
  return 0;
}

static int write_set(const char* dir, const char* name, set_ctx* c, char* err, size_t errlen) {
  return px_st_write(dir, name, c->e, NSET, set_write, c, META_KV, 3, err, errlen);
}

/* ---- rejection of bad files ---------------------------------------------------------------- */

static void expect_reject(const void* buf, size_t len, const char* want) {
  char err[512] = "";
  px_st_file* f = px_st_open_mem(buf, len, err, sizeof err);
  if (f) {
    px_st_close(f);
    fail_msg("accepted a file that should fail with '%s'", want);
  }
  if (!strstr(err, want)) fail_msg("error '%s' lacks '%s'", err, want);
  assert_int_equal(strncmp(err, "checkpoint <memory>: ", 21), 0);
  assert_null(strchr(err, '\n'));
}

/* A file with header json (padded with pad spaces) and dlen data bytes. */
static uint8_t* craft(const char* json, size_t pad, size_t dlen, size_t* len) {
  size_t jl = strlen(json);
  uint64_t n = jl + pad;
  *len = 8 + n + dlen;
  uint8_t* b = malloc(*len + 1);
  assert_non_null(b);
  for (int i = 0; i < 8; i++) b[i] = (uint8_t)(n >> (8 * i));
  memcpy(b + 8, json, jl);
  memset(b + 8 + jl, ' ', pad);
  for (size_t i = 0; i < dlen; i++) b[8 + n + i] = (uint8_t)i;
  return b;
}

static void reject_json(const char* json, size_t dlen, const char* want) {
  size_t len;
  uint8_t* b = craft(json, 0, dlen, &len);
  expect_reject(b, len, want);
  free(b);
}

static px_st_file* accept_json(const char* json, size_t pad, size_t dlen, uint8_t** keep) {
  size_t len;
  char err[512] = "";
  *keep = craft(json, pad, dlen, &len);
  px_st_file* f = px_st_open_mem(*keep, len, err, sizeof err);
  if (!f) fail_msg("rejected '%s': %s", json, err);
  return f;
}

/* A valid file from the writer, in memory. */
static uint8_t* valid_file(size_t* len, uint64_t* hl) {
  char* dir = make_tmpdir();
  set_ctx c;
  set_init(&c, 4);
  char err[256] = "";
  assert_int_equal(write_set(dir, "v", &c, err, sizeof err), 0);
  char path[512];
  snprintf(path, sizeof path, "%s/v", dir);
  uint8_t* b = read_whole(path, len);
  *hl = 0;
  for (int i = 0; i < 8; i++) *hl |= (uint64_t)b[i] << (8 * i);
  set_free(&c);
  rm_dir(dir);
  free(dir);
  return b;
}

static void test_truncated(void** state) {
  (void)state;
  size_t len;
  uint64_t hl;
  uint8_t* b = valid_file(&len, &hl);
  char err[512];
  px_st_file* f = px_st_open_mem(b, len, err, sizeof err);
  assert_non_null(f);
  px_st_close(f);

  expect_reject(b, 0, "file too short (0 bytes)");
  expect_reject(NULL, 0, "file too short (0 bytes)");
  expect_reject(b, 3, "file too short (3 bytes)");
  expect_reject(b, 7, "file too short (7 bytes)");
  char want[700];
  snprintf(want, sizeof want, "header length %" PRIu64 " exceeds file size 8", hl);
  expect_reject(b, 8, want);
  snprintf(want, sizeof want, "header length %" PRIu64 " exceeds file size %" PRIu64, hl,
           8 + hl / 2);
  expect_reject(b, 8 + hl / 2, want);
  snprintf(want, sizeof want, "exceeds file size %" PRIu64, 8 + hl - 1);
  expect_reject(b, 8 + hl - 1, want);
  /* header complete, data missing or cut short */
  expect_reject(b, 8 + hl, "exceed the data section (0 bytes)");
  expect_reject(b, 8 + hl + 61, "tensor 'big': data_offsets [60, 2800060] exceed the data section");
  expect_reject(b, len / 2, "tensor 'big': data_offsets [60, 2800060] exceed the data section");
  expect_reject(b, len - 1, "exceed the data section");
  /* one extra byte: not covered by any tensor */
  uint8_t* longer = malloc(len + 1);
  memcpy(longer, b, len);
  longer[len] = 0;
  snprintf(want, sizeof want, "data section has %" PRIu64 " bytes but the tensors cover %" PRIu64,
           (uint64_t)(len + 1 - 8 - hl), (uint64_t)(len - 8 - hl));
  expect_reject(longer, len + 1, want);
  free(longer);

  /* the same through a truncated file on disk: the message names the path */
  char* dir = make_tmpdir();
  char path[512];
  snprintf(path, sizeof path, "%s/cut.safetensors", dir);
  write_whole(path, b, len);
  assert_int_equal(truncate(path, (off_t)(len - 100)), 0);
  err[0] = '\0';
  assert_null(px_st_open(path, err, sizeof err));
  snprintf(want, sizeof want, "checkpoint %s: tensor", path);
  if (!strstr(err, want)) fail_msg("'%s'", err);
  assert_int_equal(truncate(path, 5), 0);
  assert_null(px_st_open(path, err, sizeof err));
  snprintf(want, sizeof want, "checkpoint %s: file too short (5 bytes)", path);
  assert_string_equal(err, want);
  assert_int_equal(truncate(path, 0), 0);
  assert_null(px_st_open(path, err, sizeof err));
  assert_non_null(strstr(err, "file too short (0 bytes)"));
  rm_dir(dir);
  free(dir);
  free(b);
}

static void test_open_errors(void** state) {
  (void)state;
  char err[512] = "";
  assert_null(px_st_open("/nonexistent/x.safetensors", err, sizeof err));
  assert_string_equal(err, "checkpoint /nonexistent/x.safetensors: No such file or directory");
  assert_null(px_st_open("/tmp", err, sizeof err));
  assert_string_equal(err, "checkpoint /tmp: not a regular file");
  assert_null(px_st_open_mem("", 0, NULL, 0)); /* err may be omitted */
}

static void test_header_length(void** state) {
  (void)state;
  uint8_t b[120] = {0};
  memset(b, 0xff, 8);
  expect_reject(b, sizeof b, "header length 18446744073709551615 exceeds file size 120");
  b[0] = 0x3f; /* 999999 */
  b[1] = 0x42;
  b[2] = 0x0f;
  memset(b + 3, 0, 5);
  expect_reject(b, sizeof b, "header length 999999 exceeds file size 120");
  b[0] = 113; /* one more than what is there */
  b[1] = b[2] = 0;
  expect_reject(b, sizeof b, "header length 113 exceeds file size 120");
  b[0] = 0; /* empty header */
  expect_reject(b, sizeof b, "header is not valid JSON");

  /* over the 100 MiB limit, although the file is large enough (pages stay untouched) */
  size_t big = 8 + PX_ST_MAX_HEADER + 16;
  uint8_t* h = calloc(1, big);
  assert_non_null(h);
  uint64_t n = PX_ST_MAX_HEADER + 1;
  for (int i = 0; i < 8; i++) h[i] = (uint8_t)(n >> (8 * i));
  expect_reject(h, big, "header length 104857601 exceeds the limit of 104857600");
  free(h);
}

static void test_bad_headers(void** state) {
  (void)state;
  static const struct {
    const char* json;
    size_t dlen;
    const char* want;
  } cases[] = {
      {"hello", 0, "header is not valid JSON"},
      {"{\"a\": ", 0, "header is not valid JSON"},
      {"{}x", 0, "header is not valid JSON"},
      {"[1, 2]", 0, "header is not a JSON object"},
      {"\"str\"", 0, "header is not valid JSON"}, /* jansson: top level must be [ or { */
      {"{\"a\": 5}", 0, "tensor 'a' is not an object"},
      {"{\"a\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4, "tensor 'a' has no dtype"},
      {"{\"a\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", 4, "tensor 'a' has no shape"},
      {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1]}}", 4, "tensor 'a' has no data_offsets"},
      {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4], \"x\": 1}}", 4,
       "tensor 'a' has unknown field 'x'"},
      {"{\"a\": {\"dtype\": \"F128\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 4,
       "tensor 'a': unknown dtype 'F128'"},
      {"{\"a\": {\"dtype\": \"f32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 4,
       "unknown dtype 'f32'"},
      {"{\"a\": {\"dtype\": 1, \"shape\": [1], \"data_offsets\": [0, 4]}}", 4,
       "tensor 'a': dtype is not a string"},
      {"{\"a\": {\"dtype\": \"F32\", \"shape\": 1, \"data_offsets\": [0, 4]}}", 4,
       "tensor 'a': shape is not an array"},
      {"{\"a\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", 4,
       "shape must hold non-negative integers"},
      {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1.0], \"data_offsets\": [0, 4]}}", 4,
       "shape must hold non-negative integers"},
      {"{\"a\": {\"dtype\": \"F32\", \"shape\": [\"1\"], \"data_offsets\": [0, 4]}}", 4,
       "shape must hold non-negative integers"},
      {"{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 4]}}", 4,
       "tensor 'a': shape needs 8 bytes but data_offsets give 4"},
      {"{\"a\": {\"dtype\": \"F32\", \"shape\": [], \"data_offsets\": [0, 8]}}", 8,
       "shape needs 4 bytes but data_offsets give 8"},
      {"{\"a\": {\"dtype\": \"U8\", \"shape\": [4294967296, 4294967296], \"data_offsets\": [0, 4]}}",
       4, "tensor 'a': shape overflows"},
      {"{\"a\": {\"dtype\": \"F32\", \"shape\": [4611686018427387904], \"data_offsets\": [0, 4]}}",
       4, "tensor 'a': shape overflows"},
      {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 99999999999999999999]}}",
       4, "header is not valid JSON"},
      {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0]}}", 4,
       "data_offsets must be two non-negative integers"},
      {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4, 8]}}", 4,
       "data_offsets must be two non-negative integers"},
      {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [-4, 0]}}", 4,
       "data_offsets must be two non-negative integers"},
      {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": {\"b\": 0}}}", 4,
       "data_offsets must be two non-negative integers"},
      {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 0]}}", 4,
       "tensor 'a': data_offsets [4, 0] are reversed"},
      {"{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}}", 8,
       "tensor 'a': data_offsets [0, 16] exceed the data section (8 bytes)"},
      {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 8,
       "data section has 8 bytes but the tensors cover 4"},
      {"{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
       " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}",
       12, "tensors 'a' and 'b' overlap"},
      {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
       " \"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}",
       4, "tensors 'a' and 'b' overlap"},
      {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
       " \"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 12]}}",
       12, "gap in the data section before tensor 'b' (bytes 4..8)"},
      {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}", 8,
       "gap in the data section before tensor 'a' (bytes 0..4)"},
      {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
       " \"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}",
       8, "duplicate object key"},
      {"{\"__metadata__\": {\"k\": 1}}", 0, "metadata 'k' is not a string"},
      {"{\"__metadata__\": {\"k\": null}}", 0, "metadata 'k' is not a string"},
      {"{\"__metadata__\": {\"k\": {\"x\": \"y\"}}}", 0, "metadata 'k' is not a string"},
      {"{\"__metadata__\": [\"k\", \"v\"]}", 0, "__metadata__ is not an object"},
      {"{\"__metadata__\": {}, \"__metadata__\": {}}", 0, "duplicate object key"},
      {"{\"__metadata__\": {\"paramex.format\": \"2\"}}", 0, "unsupported paramex.format '2'"},
      {"{\"__metadata__\": {\"paramex.data_xxh64\": \"12\"}}", 0,
       "paramex.data_xxh64 '12' is not 16 hex digits"},
      {"{\"__metadata__\": {\"paramex.data_xxh64\": \"ef46db3751d8e99g\"}}", 0,
       "is not 16 hex digits"},
      {"{\"__metadata__\": {\"paramex.data_xxh64\": \"0000000000000000\"}}", 0,
       "data checksum mismatch"},
      {"{\"a\\nb\": 5}", 0, "tensor 'a?b' is not an object"}, /* stays one line */
      {"{\"a\\u0000b\": 5}", 0, "header is not valid JSON"},
      /* jansson quotes the bad token, which here holds a newline: still one line (fuzzer) */
      {"{\"a\\\nb\": 1}", 0, "header is not valid JSON"},
      {"{\"\xff\": 5}", 0, "header is not valid JSON"}, /* not UTF-8 */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    reject_json(cases[i].json, cases[i].dlen, cases[i].want);

  /* a NUL byte inside the header */
  size_t len;
  uint8_t* b = craft("{} ", 0, 0, &len);
  b[10] = 0;
  expect_reject(b, len, "header is not valid JSON");
  free(b);

  /* a very long hostile name is cut in the message */
  char json[400];
  char longname[300];
  memset(longname, 'n', 299);
  longname[299] = '\0';
  snprintf(json, sizeof json, "{\"%s\": 5}", longname);
  char want[100];
  snprintf(want, sizeof want, "tensor '%.64s...' is not an object", longname);
  reject_json(json, 0, want);
}

static void test_checksum_detects_flips(void** state) {
  (void)state;
  size_t len;
  uint64_t hl;
  uint8_t* b = valid_file(&len, &hl);
  /* flip one byte at several places of the data section */
  const size_t at[] = {8 + hl, 8 + hl + 59, 8 + hl + 1000000, len - 1};
  for (size_t k = 0; k < sizeof at / sizeof at[0]; k++) {
    b[at[k]] ^= 0x10;
    expect_reject(b, len, "data checksum mismatch");
    b[at[k]] ^= 0x10;
  }
  /* a changed hex digit of the stored checksum */
  char* p = memmem(b + 8, hl, "paramex.data_xxh64\":\"", 21);
  assert_non_null(p);
  p += 21;
  char saved = p[3];
  p[3] = (char)(p[3] == '0' ? '1' : '0');
  expect_reject(b, len, "data checksum mismatch");
  p[3] = saved;
  char err[256];
  px_st_file* f = px_st_open_mem(b, len, err, sizeof err);
  assert_non_null(f);
  px_st_close(f);
  free(b);
}

/* Files from other writers: keys in any order, no paramex metadata, padding, scalars,
 * zero-size tensors sharing an offset. */
static void test_foreign_file(void** state) {
  (void)state;
  uint8_t* keep;
  px_st_file* f = accept_json(
      "{\"z\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
      " \"__metadata__\": {\"format\": \"pt\"},"
      " \"a\": {\"dtype\": \"I32\", \"shape\": [], \"data_offsets\": [6, 10]},"
      " \"m\": {\"shape\": [2, 1], \"data_offsets\": [4, 6], \"dtype\": \"U8\"},"
      " \"e\": {\"dtype\": \"BF16\", \"shape\": [3, 0], \"data_offsets\": [10, 10]},"
      " \"b\": {\"dtype\": \"BOOL\", \"shape\": [0], \"data_offsets\": [10, 10]}}",
      13, 10, &keep);
  assert_int_equal(px_st_count(f), 5);
  const char* order[] = {"z", "m", "a", "b", "e"};
  px_st_tensor t;
  for (size_t i = 0; i < 5; i++) {
    assert_int_equal(px_st_entry_at(f, i, &t), 0);
    assert_string_equal(t.name, order[i]);
  }
  assert_int_equal(px_st_find(f, "a", &t), 0);
  assert_int_equal(t.dtype, PX_DT_I32);
  assert_int_equal(t.ndim, 0);
  assert_true(t.nbytes == 4 && t.offset == 6);
  assert_memory_equal(t.data, "\x06\x07\x08\x09", 4);
  assert_int_equal(px_st_find(f, "e", &t), 0);
  assert_true(t.nbytes == 0 && t.ndim == 2 && t.shape[0] == 3 && t.shape[1] == 0);
  assert_string_equal(px_st_meta(f, "format"), "pt");
  assert_null(px_st_meta(f, "paramex.data_xxh64"));
  px_st_close(f);
  free(keep);

  /* a header without __metadata__ and one that is empty */
  f = accept_json("{}", 6, 0, &keep);
  assert_int_equal(px_st_count(f), 0);
  assert_null(px_st_meta(f, "x"));
  assert_int_equal(px_st_meta_count(f), 0);
  px_st_close(f);
  free(keep);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_truncated),
      cmocka_unit_test(test_open_errors),
      cmocka_unit_test(test_header_length),
      cmocka_unit_test(test_bad_headers),
      cmocka_unit_test(test_checksum_detects_flips),
      cmocka_unit_test(test_foreign_file),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
