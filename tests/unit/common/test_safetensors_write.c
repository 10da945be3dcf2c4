/* Unit tests of common/format/safetensors_write.c: round trips through the reader, a file an independent reader (Python json + struct) accepts, callbacks that misbehave, unwritable and full directories (nothing left behind, the old file intact). */
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

/* Number of directory entries other than . and .. */
static int count_entries(const char* dir) {
  DIR* d = opendir(dir);
  assert_non_null(d);
  int n = 0;
  struct dirent* de;
  for (int guard = 0; guard < 1000 && (de = readdir(d)); guard++)
    if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) n++;
  closedir(d);
  return n;
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

/* The bytes written for the set, then checks them with pmx_st. */
static void check_set(px_st_file* f, const set_ctx* c) {
  assert_int_equal(px_st_count(f), NSET);
  uint64_t off = 0;
  for (size_t i = 0; i < NSET; i++) {
    px_st_tensor t, u;
    assert_int_equal(px_st_entry_at(f, i, &t), 0); /* file order = write order */
    assert_string_equal(t.name, SET[i].name);
    assert_int_equal(t.dtype, SET[i].dtype);
    assert_int_equal(t.ndim, SET[i].ndim);
    for (uint32_t d = 0; d < t.ndim; d++) assert_true(t.shape[d] == SET[i].shape[d]);
    assert_true(t.nbytes == c->nbytes[i]);
    assert_true(t.offset == off);
    if (c->nbytes[i]) assert_memory_equal(t.data, c->data[i], c->nbytes[i]);
    assert_int_equal(px_st_find(f, SET[i].name, &u), 0);
    assert_ptr_equal(u.data, t.data);
    assert_string_equal(u.name, t.name);
    off += c->nbytes[i];
  }
  px_st_tensor t;
  assert_int_equal(px_st_entry_at(f, NSET, &t), -1);
  assert_int_equal(px_st_find(f, "nope", &t), -1);
  assert_int_equal(px_st_find(f, "", &t), -1);
  assert_string_equal(px_st_meta(f, "paramex.step"), "1234");
  assert_string_equal(px_st_meta(f, "note"), "hello \"world\"\n");
  assert_string_equal(px_st_meta(f, "empty"), "");
  assert_string_equal(px_st_meta(f, "paramex.format"), "1");
  const char* hex = px_st_meta(f, "paramex.data_xxh64");
  assert_non_null(hex);
  assert_int_equal(strlen(hex), 16);
  assert_int_equal(strlen(px_st_meta(f, "paramex.header_xxh64")), 16);
  assert_null(px_st_meta(f, "absent"));
  assert_int_equal(px_st_meta_count(f), 6);
  const char *k, *v;
  assert_int_equal(px_st_meta_at(f, 0, &k, &v), 0);
  assert_string_equal(k, "paramex.step");
  assert_string_equal(v, "1234");
  assert_int_equal(px_st_meta_at(f, 6, &k, &v), -1);
}

static void roundtrip(size_t chunk) {
  char* dir = make_tmpdir();
  set_ctx c;
  set_init(&c, 1);
  c.chunk = chunk;
  char err[256] = "";
  assert_int_equal(write_set(dir, "a.safetensors", &c, err, sizeof err), 0);
  assert_int_equal(c.calls, (int)NSET);
  assert_int_equal(count_entries(dir), 1); /* no temp file left */

  char path[512];
  snprintf(path, sizeof path, "%s/a.safetensors", dir);
  px_st_file* f = px_st_open(path, err, sizeof err);
  if (!f) fail_msg("%s", err);
  check_set(f, &c);
  px_st_close(f);

  /* the same bytes through open_mem */
  size_t len;
  uint8_t* b = read_whole(path, &len);
  f = px_st_open_mem(b, len, err, sizeof err);
  if (!f) fail_msg("%s", err);
  check_set(f, &c);
  px_st_close(f);
  /* an edited metadata value (paramex.step 1234 -> 9234, same length) is refused: the
   * header has a checksum of its own (an edited pmx.version was once restored) */
  uint8_t* at = memmem(b, len, "\"1234\"", 6);
  assert_non_null(at);
  at[1] = '9';
  assert_null(px_st_open_mem(b, len, err, sizeof err));
  assert_non_null(strstr(err, "header checksum mismatch (its metadata or tensor table was changed)"));
  at[1] = '1';
  f = px_st_open_mem(b, len, err, sizeof err);
  assert_non_null(f);
  px_st_close(f);
  free(b);

  /* overwrite with other contents: replaced as a whole */
  set_ctx c2;
  set_init(&c2, 77);
  assert_int_equal(write_set(dir, "a.safetensors", &c2, err, sizeof err), 0);
  f = px_st_open(path, err, sizeof err);
  if (!f) fail_msg("%s", err);
  check_set(f, &c2);
  px_st_close(f);
  set_free(&c2);

  set_free(&c);
  rm_dir(dir);
  free(dir);
}

static void test_roundtrip_small_chunks(void** state) {
  (void)state;
  roundtrip(3);
}

static void test_roundtrip_whole_tensors(void** state) {
  (void)state;
  roundtrip(SIZE_MAX);
}

static void test_roundtrip_large_chunks(void** state) {
  (void)state;
  roundtrip((1u << 20) + 5); /* pieces larger than the writer's buffer */
}

static void test_no_tensors(void** state) {
  (void)state;
  char* dir = make_tmpdir();
  char err[256] = "";
  assert_int_equal(px_st_write(dir, "e", NULL, 0, NULL, NULL, NULL, 0, err, sizeof err), 0);
  char path[512];
  snprintf(path, sizeof path, "%s/e", dir);
  px_st_file* f = px_st_open(path, err, sizeof err);
  if (!f) fail_msg("%s", err);
  assert_int_equal(px_st_count(f), 0);
  px_st_tensor t;
  assert_int_equal(px_st_entry_at(f, 0, &t), -1);
  assert_int_equal(px_st_find(f, "x", &t), -1);
  assert_string_equal(px_st_meta(f, "paramex.format"), "1");
  px_st_close(f);
  px_st_close(NULL);
  rm_dir(dir);
  free(dir);
}

/* ---- an independent reader of the layout ---------------------------------------------- */

static void test_reference_reader(void** state) {
  (void)state;
  char* dir = make_tmpdir();
  set_ctx c;
  set_init(&c, 5);
  char err[256] = "";
  assert_int_equal(write_set(dir, "ref.safetensors", &c, err, sizeof err), 0);
  char path[512];
  snprintf(path, sizeof path, "%s/ref.safetensors", dir);
  size_t len;
  uint8_t* b = read_whole(path, &len);

  assert_true(len >= 8);
  uint64_t n = 0;
  for (int i = 0; i < 8; i++) n |= (uint64_t)b[i] << (8 * i);
  assert_true(n % 8 == 0);
  assert_true(n <= len - 8);
  assert_int_equal(b[8], '{');
  json_error_t je;
  json_t* root = json_loadb((const char*)b + 8, (size_t)n, JSON_REJECT_DUPLICATES, &je);
  if (!root) fail_msg("reference parse: %s", je.text);
  assert_true(json_is_object(root));
  assert_int_equal(json_object_size(root), NSET + 1);

  const uint8_t* data = b + 8 + n;
  size_t dlen = len - 8 - (size_t)n;
  uint64_t off = 0;
  for (size_t i = 0; i < NSET; i++) {
    json_t* t = json_object_get(root, SET[i].name);
    assert_non_null(t);
    assert_int_equal(json_object_size(t), 3);
    assert_string_equal(json_string_value(json_object_get(t, "dtype")), SET[i].st_dtype);
    json_t* shape = json_object_get(t, "shape");
    assert_int_equal(json_array_size(shape), SET[i].ndim);
    for (uint32_t d = 0; d < SET[i].ndim; d++)
      assert_true((uint64_t)json_integer_value(json_array_get(shape, d)) == SET[i].shape[d]);
    json_t* o = json_object_get(t, "data_offsets");
    assert_int_equal(json_array_size(o), 2);
    uint64_t b0 = (uint64_t)json_integer_value(json_array_get(o, 0));
    uint64_t b1 = (uint64_t)json_integer_value(json_array_get(o, 1));
    assert_true(b0 == off);
    assert_true(b1 - b0 == c.nbytes[i]);
    assert_true(b1 <= dlen);
    if (c.nbytes[i]) assert_memory_equal(data + b0, c.data[i], c.nbytes[i]);
    off = b1;
  }
  assert_true(off == dlen);

  json_t* meta = json_object_get(root, "__metadata__");
  assert_true(json_is_object(meta));
  const char* k;
  json_t* v;
  json_object_foreach(meta, k, v) assert_true(json_is_string(v));
  assert_string_equal(json_string_value(json_object_get(meta, "paramex.step")), "1234");
  assert_string_equal(json_string_value(json_object_get(meta, "paramex.format")), "1");
  char hex[17];
  snprintf(hex, sizeof hex, "%016" PRIx64, (uint64_t)XXH64(data, dlen, 0));
  assert_string_equal(json_string_value(json_object_get(meta, "paramex.data_xxh64")), hex);

  json_decref(root);
  free(b);
  set_free(&c);
  rm_dir(dir);
  free(dir);
}

/* ---- atomic replacement ----------------------------------------------------------------- */

/* Writes the set into dir/name, then runs a failing write and checks the file is intact,
 * nothing else is in dir and err contains want. */
static void failing_write(set_ctx* bad, const char* want) {
  char* dir = make_tmpdir();
  set_ctx good;
  set_init(&good, 9);
  char err[256] = "";
  assert_int_equal(write_set(dir, "x", &good, err, sizeof err), 0);
  char path[512];
  snprintf(path, sizeof path, "%s/x", dir);
  size_t len0, len1;
  uint8_t* before = read_whole(path, &len0);

  err[0] = '\0';
  assert_int_equal(write_set(dir, "x", bad, err, sizeof err), -1);
  if (!strstr(err, want)) fail_msg("error '%s' lacks '%s'", err, want);
  assert_null(strchr(err, '\n'));
  assert_int_equal(count_entries(dir), 1);
  uint8_t* after = read_whole(path, &len1);
  assert_int_equal(len0, len1);
  assert_memory_equal(before, after, len0);
  px_st_file* f = px_st_open(path, err, sizeof err);
  if (!f) fail_msg("%s", err);
  check_set(f, &good);
  px_st_close(f);

  /* a failing write of a new name leaves nothing at all */
  bad->calls = 0;
  assert_int_equal(write_set(dir, "new", bad, err, sizeof err), -1);
  assert_int_equal(count_entries(dir), 1);

  free(before);
  free(after);
  set_free(&good);
  rm_dir(dir);
  free(dir);
}

static void test_callback_fails_midway(void** state) {
  (void)state;
  set_ctx bad;
  set_init(&bad, 3);
  bad.chunk = 4096;
  bad.fail_at = 1; /* halfway through the big tensor, after the buffer was flushed */
  failing_write(&bad, "checkpoint: tensor 'big': data callback failed");
  assert_int_equal(bad.calls, 2); /* never called after the failure */
  set_free(&bad);
}

static void test_callback_gives_too_few(void** state) {
  (void)state;
  set_ctx bad;
  set_init(&bad, 3);
  bad.short_at = 4;
  failing_write(&bad, "tensor 'b.bf16': callback gave 13 of 14 bytes");
  set_free(&bad);
}

static void test_callback_gives_too_many(void** state) {
  (void)state;
  set_ctx bad;
  set_init(&bad, 3);
  bad.over_at = 0;
  failing_write(&bad, "tensor 'w.f32': callback gave more than 60 bytes");
  assert_int_equal(bad.calls, 1);
  set_free(&bad);
}

static int never_called(void* ctx, size_t i, px_st_sink* s) {
  (void)i;
  (void)s;
  (*(int*)ctx)++;
  return 0;
}

static void expect_write_error(const char* dir, const char* name, const px_st_entry* e, size_t n,
                               const char* const* kv, size_t nmeta, const char* want) {
  char err[256] = "";
  int calls = 0;
  assert_int_equal(px_st_write(dir, name, e, n, never_called, &calls, kv, nmeta, err, sizeof err),
                   -1);
  if (!strstr(err, want)) fail_msg("error '%s' lacks '%s'", err, want);
  assert_null(strchr(err, '\n'));
  assert_int_equal(calls, 0);
}

static void test_invalid_arguments(void** state) {
  (void)state;
  char* dir = make_tmpdir();
  static const uint64_t s4[] = {4};
  px_st_entry e[2] = {{"a", PX_DT_F32, 1, s4, 16}, {"a", PX_DT_F32, 1, s4, 16}};
  expect_write_error(dir, "x", e, 2, NULL, 0, "duplicate tensor name 'a'");
  e[1].name = "__metadata__";
  expect_write_error(dir, "x", e, 2, NULL, 0, "reserved");
  e[1].name = "b";
  e[1].nbytes = 15;
  expect_write_error(dir, "x", e, 2, NULL, 0, "tensor 'b': nbytes 15 does not match its shape");
  e[1].nbytes = 16;
  e[1].dtype = 0;
  expect_write_error(dir, "x", e, 2, NULL, 0, "tensor 'b': unknown dtype 0");
  e[1].dtype = PX_DT_F32;
  e[1].name = "\xff\xfe";
  expect_write_error(dir, "x", e, 2, NULL, 0, "not valid UTF-8");
  e[1].name = "b";
  const char* kv1[] = {"paramex.data_xxh64", "0"};
  expect_write_error(dir, "x", e, 2, kv1, 1, "metadata key 'paramex.data_xxh64' is reserved");
  const char* kv2[] = {"k", "1", "k", "2"};
  expect_write_error(dir, "x", e, 2, kv2, 2, "duplicate metadata key 'k'");
  const char* kv3[] = {"k", "\xc3"};
  expect_write_error(dir, "x", e, 2, kv3, 1, "not valid UTF-8");
  expect_write_error(dir, "a/b", e, 2, NULL, 0, "invalid arguments");
  expect_write_error(dir, "", e, 2, NULL, 0, "invalid arguments");
  assert_int_equal(count_entries(dir), 0);
  rm_dir(dir);
  free(dir);
}

static void test_unwritable_directory(void** state) {
  (void)state;
  char* dir = make_tmpdir();
  char missing[512], file[512];
  snprintf(missing, sizeof missing, "%s/does-not-exist", dir);
  set_ctx c;
  set_init(&c, 1);
  char err[512] = "";
  assert_int_equal(write_set(missing, "x", &c, err, sizeof err), -1);
  assert_non_null(strstr(err, missing));
  assert_non_null(strstr(err, "No such file or directory"));
  assert_int_equal(c.calls, 0);
  /* the "directory" is a regular file */
  snprintf(file, sizeof file, "%s/plain", dir);
  write_whole(file, "x", 1);
  assert_int_equal(write_set(file, "x", &c, err, sizeof err), -1);
  assert_non_null(strstr(err, "Not a directory"));
  assert_int_equal(count_entries(dir), 1);
  set_free(&c);
  rm_dir(dir);
  free(dir);
}

/* A 64 KiB tmpfs that fills up; skipped where mounting is not allowed. */
static int tmpfs_setup(void** state) {
  char* dir = make_tmpdir();
  if (mount("tmpfs", dir, "tmpfs", 0, "size=64k") != 0) {
    rmdir(dir);
    free(dir);
    *state = NULL;
    return 0;
  }
  *state = dir;
  return 0;
}

static int tmpfs_teardown(void** state) {
  char* dir = *state;
  if (dir) {
    umount2(dir, MNT_DETACH);
    rmdir(dir);
    free(dir);
  }
  return 0;
}

static int small_write(void* ctx, size_t i, px_st_sink* s) {
  (void)i;
  uint8_t buf[1000];
  memset(buf, *(int*)ctx, sizeof buf);
  return px_st_sink_write(s, buf, sizeof buf);
}

static void test_tmpfs_full(void** state) {
  char* dir = *state;
  if (!dir) skip();
  char err[512] = "";
  static const uint64_t s250[] = {250};
  px_st_entry small = {"p", PX_DT_F32, 1, s250, 1000};
  int fill = 1;
  assert_int_equal(px_st_write(dir, "ck", &small, 1, small_write, &fill, NULL, 0, err, sizeof err),
                   0);
  char path[512];
  snprintf(path, sizeof path, "%s/ck", dir);
  size_t len0, len1;
  uint8_t* before = read_whole(path, &len0);

  set_ctx big; /* about 2.8 MB: cannot fit */
  set_init(&big, 2);
  assert_int_equal(write_set(dir, "ck", &big, err, sizeof err), -1);
  if (!strstr(err, "No space left on device")) fail_msg("unexpected error '%s'", err);
  char want[600];
  snprintf(want, sizeof want, "checkpoint: write %s/ck: ", dir);
  assert_non_null(strstr(err, want));
  assert_int_equal(count_entries(dir), 1);
  uint8_t* after = read_whole(path, &len1);
  assert_int_equal(len0, len1);
  assert_memory_equal(before, after, len0);
  px_st_file* f = px_st_open(path, err, sizeof err);
  if (!f) fail_msg("%s", err);
  px_st_tensor t;
  assert_int_equal(px_st_find(f, "p", &t), 0);
  assert_int_equal(((const uint8_t*)t.data)[999], 1);
  px_st_close(f);

  /* space is back: a small write succeeds again */
  fill = 2;
  assert_int_equal(px_st_write(dir, "ck", &small, 1, small_write, &fill, NULL, 0, err, sizeof err),
                   0);
  assert_int_equal(count_entries(dir), 1);
  free(before);
  free(after);
  set_free(&big);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_roundtrip_small_chunks),
      cmocka_unit_test(test_roundtrip_whole_tensors),
      cmocka_unit_test(test_roundtrip_large_chunks),
      cmocka_unit_test(test_no_tensors),
      cmocka_unit_test(test_reference_reader),
      cmocka_unit_test(test_callback_fails_midway),
      cmocka_unit_test(test_callback_gives_too_few),
      cmocka_unit_test(test_callback_gives_too_many),
      cmocka_unit_test(test_invalid_arguments),
      cmocka_unit_test(test_unwritable_directory),
      cmocka_unit_test_setup_teardown(test_tmpfs_full, tmpfs_setup, tmpfs_teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
