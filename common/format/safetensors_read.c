/* safetensors reader (safetensors_read.h). Every file is untrusted: all checks happen in
 * px_st_open, so the accessors never fail on a handle they were given. */
#include "format/safetensors_read.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

struct px_st_file {
  const uint8_t* base;   /* whole file */
  size_t len;
  bool mapped;
  json_t* root;          /* owns the name and metadata strings */
  px_st_tensor* t;      /* by offset */
  size_t n;
  size_t* by_name;       /* indexes into t, sorted by name */
  uint64_t* dims;        /* all shapes */
  json_t* metaobj;       /* borrowed from root; NULL when absent */
  const char** meta;     /* key, value pairs in header order */
  size_t nmeta;
};

void px_st_close(px_st_file* f) {
  if (!f) return;
  if (f->mapped && f->len) munmap((void*)f->base, f->len);
  json_decref(f->root);
  free(f->t);
  free(f->by_name);
  free(f->dims);
  free(f->meta);
  free(f);
}

static int by_offset(const void* a, const void* b) {
  const px_st_tensor* x = a;
  const px_st_tensor* y = b;
  if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
  if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
  return strcmp(x->name, y->name); /* names are unique: a total order */
}

static int ptr_by_name(const void* a, const void* b) {
  const px_st_tensor* x = *(const px_st_tensor* const*)a;
  const px_st_tensor* y = *(const px_st_tensor* const*)b;
  return strcmp(x->name, y->name);
}

static int u64_at(json_t* v, uint64_t* out) {
  if (!json_is_integer(v) || json_integer_value(v) < 0) return -1;
  *out = (uint64_t)json_integer_value(v);
  return 0;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

#define FAIL(...)                                               \
  do {                                                          \
    char m_[200];                                               \
    snprintf(m_, sizeof m_, __VA_ARGS__);                       \
    px_st_seterr(err, errlen, "checkpoint %s: %s", label, m_);  \
    return -1;                                                  \
  } while (0)

/* __metadata__: an object of strings, kept in header order. */
static int parse_meta(px_st_file* f, json_t* meta, const char* label, char* err, size_t errlen) {
  if (!json_is_object(meta)) FAIL("__metadata__ is not an object");
  f->metaobj = meta;
  size_t nm = json_object_size(meta);
  f->meta = calloc(nm ? 2 * nm : 1, sizeof *f->meta);
  if (!f->meta) FAIL("out of memory (%zu metadata)", nm);
  const char* k;
  json_t* v;
  json_object_foreach(meta, k, v) {
    if (!json_is_string(v)) FAIL("metadata '%s' is not a string", px_st_quote(k).s);
    f->meta[2 * f->nmeta] = k;
    f->meta[2 * f->nmeta + 1] = json_string_value(v);
    f->nmeta++;
  }
  return 0;
}

/* One tensor entry {"dtype", "shape", "data_offsets"} of the data section data[0..dlen);
 * its dimensions go to dims (room for all of them was counted). */
static int parse_entry(px_st_tensor* t, const char* name, json_t* ent, uint64_t* dims,
                       const uint8_t* data, uint64_t dlen, const char* label, char* err,
                       size_t errlen) {
  const px_st_quoted qn = px_st_quote(name);
  if (!json_is_object(ent)) FAIL("tensor '%s' is not an object", qn.s);
  json_t* jd = json_object_get(ent, "dtype");
  json_t* js = json_object_get(ent, "shape");
  json_t* jo = json_object_get(ent, "data_offsets");
  if (!jd) FAIL("tensor '%s' has no dtype", qn.s);
  if (!js) FAIL("tensor '%s' has no shape", qn.s);
  if (!jo) FAIL("tensor '%s' has no data_offsets", qn.s);
  if (json_object_size(ent) != 3) {
    const char* k;
    json_t* v;
    json_object_foreach(ent, k, v) {
      if (strcmp(k, "dtype") && strcmp(k, "shape") && strcmp(k, "data_offsets"))
        FAIL("tensor '%s' has unknown field '%s'", qn.s, px_st_quote(k).s);
    }
  }
  if (!json_is_string(jd)) FAIL("tensor '%s': dtype is not a string", qn.s);
  int dt = px_st_dtype_parse(json_string_value(jd));
  if (!dt) FAIL("tensor '%s': unknown dtype '%s'", qn.s, px_st_quote(json_string_value(jd)).s);
  if (!json_is_array(js)) FAIL("tensor '%s': shape is not an array", qn.s);
  size_t nd = json_array_size(js);
  if (nd > PX_ST_MAX_NDIM)
    FAIL("tensor '%s': %zu dimensions exceed the limit of %u", qn.s, nd, PX_ST_MAX_NDIM);
  for (size_t d = 0; d < nd; d++)
    if (u64_at(json_array_get(js, d), &dims[d]) < 0)
      FAIL("tensor '%s': shape must hold non-negative integers", qn.s);
  uint64_t begin, end, want;
  if (!json_is_array(jo) || json_array_size(jo) != 2 ||
      u64_at(json_array_get(jo, 0), &begin) < 0 || u64_at(json_array_get(jo, 1), &end) < 0)
    FAIL("tensor '%s': data_offsets must be two non-negative integers", qn.s);
  if (begin > end)
    FAIL("tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] are reversed", qn.s, begin, end);
  if (end > dlen)
    FAIL("tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] exceed the data section (%" PRIu64
         " bytes)", qn.s, begin, end, dlen);
  if (px_st_shape_bytes(dims, (uint32_t)nd, px_dtype_size_any(dt), &want) < 0)
    FAIL("tensor '%s': shape overflows", qn.s);
  if (want != end - begin)
    FAIL("tensor '%s': shape needs %" PRIu64 " bytes but data_offsets give %" PRIu64, qn.s, want,
         end - begin);
  t->name = name;
  t->dtype = dt;
  t->ndim = (uint32_t)nd;
  t->shape = dims;
  t->data = data + begin;
  t->nbytes = end - begin;
  t->offset = begin;
  return 0;
}

/* Every tensor entry of the header (all keys but __metadata__). */
static int parse_entries(px_st_file* f, json_t* meta, const uint8_t* data, uint64_t dlen,
                         const char* label, char* err, size_t errlen) {
  size_t n = json_object_size(f->root) - (meta ? 1 : 0);
  f->t = calloc(n ? n : 1, sizeof *f->t);
  f->by_name = calloc(n ? n : 1, sizeof *f->by_name);
  if (!f->t || !f->by_name) FAIL("out of memory (%zu tensors)", n);
  /* count the dimensions first so that one array holds all shapes */
  size_t ndims = 0, di = 0;
  const char* name;
  json_t* ent;
  json_object_foreach(f->root, name, ent) {
    if (ent == meta) continue;
    json_t* shape = json_is_object(ent) ? json_object_get(ent, "shape") : NULL;
    if (json_is_array(shape)) ndims += json_array_size(shape);
  }
  f->dims = calloc(ndims ? ndims : 1, sizeof *f->dims);
  if (!f->dims) FAIL("out of memory (%zu dimensions)", ndims);
  json_object_foreach(f->root, name, ent) {
    if (ent == meta) continue;
    px_st_tensor* t = &f->t[f->n];
    if (parse_entry(t, name, ent, f->dims + di, data, dlen, label, err, errlen) < 0) return -1;
    f->n++;
    di += t->ndim;
  }
  return 0;
}

/* The tensors' byte ranges are contiguous from 0 and cover the data section exactly; then
 * the index by name. */
static int check_layout(px_st_file* f, uint64_t dlen, const char* label, char* err,
                        size_t errlen) {
  qsort(f->t, f->n, sizeof *f->t, by_offset);
  uint64_t at = 0;
  for (size_t i = 0; i < f->n; i++) {
    if (f->t[i].offset < at)
      FAIL("tensors '%s' and '%s' overlap", px_st_quote(f->t[i - 1].name).s,
           px_st_quote(f->t[i].name).s);
    if (f->t[i].offset > at)
      FAIL("gap in the data section before tensor '%s' (bytes %" PRIu64 "..%" PRIu64 ")",
           px_st_quote(f->t[i].name).s, at, f->t[i].offset);
    at = f->t[i].offset + f->t[i].nbytes;
  }
  if (at != dlen)
    FAIL("data section has %" PRIu64 " bytes but the tensors cover %" PRIu64, dlen, at);
  /* name index: sort pointers, then turn them into indexes (t is final now) */
  if (f->n) {
    const px_st_tensor** p = malloc(f->n * sizeof *p);
    if (!p) FAIL("out of memory");
    for (size_t i = 0; i < f->n; i++) p[i] = &f->t[i];
    qsort(p, f->n, sizeof *p, ptr_by_name);
    for (size_t i = 0; i < f->n; i++) f->by_name[i] = (size_t)(p[i] - f->t);
    free(p);
  }
  return 0;
}

/* 16 hex digits into *v. */
static bool parse_hex64(const char* hex, uint64_t* v) {
  *v = 0;
  if (strlen(hex) != 16) return false;
  for (int i = 0; i < 16; i++) {
    int d = hexval(hex[i]);
    if (d < 0) return false;
    *v = *v << 4 | (uint64_t)d;
  }
  return true;
}

/* The header's own checksum (PX_ST_KEY_HEADER_XXH64), over its text hdr[0..hl) with the
 * value zeroed; files without it (written before it existed) pass. */
static int check_header_sum(px_st_file* f, const uint8_t* hdr, uint64_t hl, const char* label,
                            char* err, size_t errlen) {
  const char* hex = px_st_meta(f, PX_ST_KEY_HEADER_XXH64);
  if (!hex) return 0;
  uint64_t want;
  if (!parse_hex64(hex, &want))
    FAIL("%s '%s' is not 16 hex digits", PX_ST_KEY_HEADER_XXH64, px_st_quote(hex).s);
  static const char key[] = "\"" PX_ST_KEY_HEADER_XXH64 "\":\"";
  const uint8_t* at = memmem(hdr, (size_t)hl, key, sizeof key - 1);
  if (!at || (uint64_t)(at - hdr) + sizeof key - 1 + 16 > hl)
    FAIL("%s is not where paramex writes it", PX_ST_KEY_HEADER_XXH64);
  uint8_t* copy = malloc((size_t)hl ? (size_t)hl : 1);
  if (!copy) FAIL("out of memory");
  memcpy(copy, hdr, (size_t)hl);
  memset(copy + (at - hdr) + sizeof key - 1, '0', 16);
  uint64_t got = XXH64(copy, (size_t)hl, 0);
  free(copy);
  if (got != want) FAIL("header checksum mismatch (its metadata or tensor table was changed)");
  return 0;
}

/* paramex's own metadata: the format version and the checksum of the data section. */
static int check_paramex_meta(px_st_file* f, const uint8_t* data, uint64_t dlen,
                              const char* label, char* err, size_t errlen) {
  const char* fmt = px_st_meta(f, PX_ST_KEY_FORMAT);
  if (fmt && strcmp(fmt, "1") != 0) FAIL("unsupported %s '%s'", PX_ST_KEY_FORMAT, px_st_quote(fmt).s);
  const char* hex = px_st_meta(f, PX_ST_KEY_XXH64);
  if (!hex) return 0;
  uint64_t want = 0;
  if (!parse_hex64(hex, &want))
    FAIL("%s '%s' is not 16 hex digits", PX_ST_KEY_XXH64, px_st_quote(hex).s);
  if (XXH64(data, (size_t)dlen, 0) != want) FAIL("data checksum mismatch"); /* file format */
  return 0;
}

/* Validates the file in buf[0..len) (mapped: unmap it on failure); NULL with err. */
static px_st_file* parse(const uint8_t* buf, size_t len, bool mapped, const char* label,
                         char* err, size_t errlen) {
  px_st_file* f = calloc(1, sizeof *f);
  if (!f) {
    if (mapped && len) munmap((void*)buf, len);
    px_st_seterr(err, errlen, "checkpoint %s: out of memory", label);
    return NULL;
  }
  f->base = buf;
  f->len = len;
  f->mapped = mapped;
  uint64_t hl = 0;
  for (int i = 0; len >= 8 && i < 8; i++) hl |= (uint64_t)buf[i] << (8 * i);
  json_error_t je;
  if (len < 8) {
    px_st_seterr(err, errlen, "checkpoint %s: file too short (%zu bytes)", label, len);
  } else if (hl > len - 8) {
    px_st_seterr(err, errlen, "checkpoint %s: header length %" PRIu64 " exceeds file size %zu",
                 label, hl, len);
  } else if (hl > PX_ST_MAX_HEADER) {
    px_st_seterr(err, errlen, "checkpoint %s: header length %" PRIu64 " exceeds the limit of %u",
                 label, hl, PX_ST_MAX_HEADER);
  } else if (!(f->root = json_loadb((const char*)buf + 8, (size_t)hl, JSON_REJECT_DUPLICATES,
                                    &je))) {
    px_st_seterr(err, errlen, "checkpoint %s: header is not valid JSON: %s (at byte %d)", label,
                 je.text, je.position);
  } else if (!json_is_object(f->root)) {
    px_st_seterr(err, errlen, "checkpoint %s: header is not a JSON object", label);
  } else {
    const uint8_t* data = buf + 8 + hl;
    const uint64_t dlen = len - 8 - hl;
    json_t* meta = json_object_get(f->root, PX_ST_METADATA);
    if ((!meta || parse_meta(f, meta, label, err, errlen) == 0) &&
        parse_entries(f, meta, data, dlen, label, err, errlen) == 0 &&
        check_layout(f, dlen, label, err, errlen) == 0 &&
        check_paramex_meta(f, data, dlen, label, err, errlen) == 0 &&
        check_header_sum(f, buf + 8, hl, label, err, errlen) == 0)
      return f;
  }
  px_st_close(f);
  return NULL;
}

px_st_file* px_st_open_mem(const void* buf, size_t len, char* err, size_t errlen) {
  if (!buf && len) {
    px_st_seterr(err, errlen, "checkpoint <memory>: NULL buffer");
    return NULL;
  }
  static const uint8_t empty[1];
  return parse(buf ? buf : empty, len, false, "<memory>", err, errlen);
}

px_st_file* px_st_open(const char* path, char* err, size_t errlen) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    px_st_seterr(err, errlen, "checkpoint %s: %s", path, strerror(errno));
    return NULL;
  }
  struct stat st;
  if (fstat(fd, &st) < 0) {
    px_st_seterr(err, errlen, "checkpoint %s: %s", path, strerror(errno));
    close(fd);
    return NULL;
  }
  if (!S_ISREG(st.st_mode)) {
    px_st_seterr(err, errlen, "checkpoint %s: not a regular file", path);
    close(fd);
    return NULL;
  }
  if ((uint64_t)st.st_size > SIZE_MAX) {
    px_st_seterr(err, errlen, "checkpoint %s: file too large", path);
    close(fd);
    return NULL;
  }
  size_t len = (size_t)st.st_size;
  const uint8_t* base = NULL;
  if (len > 0) {
    void* m = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      px_st_seterr(err, errlen, "checkpoint %s: mmap: %s", path, strerror(errno));
      close(fd);
      return NULL;
    }
    madvise(m, len, MADV_SEQUENTIAL);
    base = m;
  }
  close(fd);
  static const uint8_t empty[1];
  return parse(len ? base : empty, len, len > 0, path, err, errlen);
}

size_t px_st_count(const px_st_file* f) { return f->n; }

int px_st_entry_at(const px_st_file* f, size_t i, px_st_tensor* out) {
  if (i >= f->n) return -1;
  *out = f->t[i];
  return 0;
}

int px_st_find(const px_st_file* f, const char* name, px_st_tensor* out) {
  size_t lo = 0, hi = f->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(name, f->t[f->by_name[mid]].name);
    if (c == 0) {
      *out = f->t[f->by_name[mid]];
      return 0;
    }
    if (c < 0) hi = mid;
    else lo = mid + 1;
  }
  return -1;
}

const char* px_st_meta(const px_st_file* f, const char* key) {
  /* every value was checked to be a string at open */
  return f->metaobj ? json_string_value(json_object_get(f->metaobj, key)) : NULL;
}

size_t px_st_meta_count(const px_st_file* f) { return f->nmeta; }

int px_st_meta_at(const px_st_file* f, size_t i, const char** key, const char** value) {
  if (i >= f->nmeta) return -1;
  *key = f->meta[2 * i];
  *value = f->meta[2 * i + 1];
  return 0;
}
