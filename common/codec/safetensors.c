/* safetensors writer and reader (safetensors.h).
 *
 * Writer: the header carries the checksum of the data, which is only known after the
 * callbacks ran, and callbacks must run once (the caller copies live state under its
 * locks). So the header is first written with a placeholder of the same width and patched
 * in place with pwrite at the end; its length cannot change.
 *
 * Reader: every file is untrusted. All checks happen in px_st_open, so accessors never
 * fail on a handle they were given. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "codec/safetensors.h"

#define KEY_FORMAT "paramex.format"
#define KEY_XXH64 "paramex.data_xxh64"
#define META "__metadata__"

static const struct {
  int dtype;
  const char* name;
  size_t size;
} dtypes[] = {
    {PX_DT_F32, "F32", 4},      {PX_DT_BF16, "BF16", 2},   {PX_DT_F16, "F16", 2},
    {PX_ST_F64, "F64", 8},      {PX_ST_I64, "I64", 8},     {PX_ST_I32, "I32", 4},
    {PX_ST_I16, "I16", 2},      {PX_ST_I8, "I8", 1},       {PX_ST_U64, "U64", 8},
    {PX_ST_U32, "U32", 4},      {PX_ST_U16, "U16", 2},     {PX_ST_U8, "U8", 1},
    {PX_ST_BOOL, "BOOL", 1},    {PX_ST_F8_E5M2, "F8_E5M2", 1},
    {PX_ST_F8_E4M3, "F8_E4M3", 1},
};
#define NDTYPES (sizeof dtypes / sizeof dtypes[0])

size_t px_st_dtype_size(int dtype) {
  for (size_t i = 0; i < NDTYPES; i++)
    if (dtypes[i].dtype == dtype) return dtypes[i].size;
  return 0;
}

const char* px_st_dtype_name(int dtype) {
  for (size_t i = 0; i < NDTYPES; i++)
    if (dtypes[i].dtype == dtype) return dtypes[i].name;
  return "?";
}

static int dtype_parse(const char* s) {
  for (size_t i = 0; i < NDTYPES; i++)
    if (strcmp(dtypes[i].name, s) == 0) return dtypes[i].dtype;
  return 0;
}

static void seterr(char* err, size_t errlen, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void seterr(char* err, size_t errlen, const char* fmt, ...) {
  if (!err || errlen == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
  /* one line whatever the file held (jansson quotes the input near a syntax error) */
  for (char* p = err; *p; p++)
    if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '?';
}

/* A name from an untrusted file, safe to quote in a one-line message: at most 64 bytes,
 * control characters replaced by '?'. */
typedef struct { char s[72]; } quoted;
static quoted q(const char* name) {
  quoted r;
  size_t j = 0;
  for (const unsigned char* p = (const unsigned char*)name; *p && j < 64; p++)
    r.s[j++] = (*p < 0x20 || *p == 0x7f) ? '?' : (char)*p;
  if (name[j] && j == 64) memcpy(r.s + j, "...", 4);
  else r.s[j] = '\0';
  return r;
}

/* Product of the dimensions times elem, or -1 on overflow. Any zero dimension makes the
 * result 0 even if the others would overflow. */
static int shape_bytes(const uint64_t* shape, uint32_t ndim, size_t elem, uint64_t* out) {
  uint64_t p = elem;
  bool overflow = false;
  for (uint32_t i = 0; i < ndim; i++) {
    if (shape[i] == 0) {
      *out = 0;
      return 0;
    }
    if (!overflow && p > UINT64_MAX / shape[i]) overflow = true;
    if (!overflow) p *= shape[i];
  }
  if (overflow) return -1;
  *out = p;
  return 0;
}

/* ==== writing ======================================================================== */

#define SINK_BUF (1u << 20)

struct px_st_sink {
  int fd;
  uint64_t pos;        /* file offset of buf[0] */
  uint8_t* buf;
  size_t used;
  uint64_t remaining;  /* bytes still owed for the current tensor */
  bool overrun;        /* the callback gave more than nbytes */
  int err;             /* errno of the first failed write, 0 if none */
  XXH64_state_t* xxh;
};

static int write_all(int fd, const void* p, size_t len, uint64_t off) {
  const uint8_t* b = p;
  while (len > 0) {
    size_t step = len > (1u << 30) ? (1u << 30) : len;
    ssize_t w = pwrite(fd, b, step, (off_t)off);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (w == 0) {
      errno = EIO;
      return -1;
    }
    b += w;
    off += (uint64_t)w;
    len -= (size_t)w;
  }
  return 0;
}

static int sink_flush(px_st_sink* s) {
  if (s->used == 0 || s->err) return s->err ? -1 : 0;
  if (write_all(s->fd, s->buf, s->used, s->pos) < 0) {
    s->err = errno;
    return -1;
  }
  s->pos += s->used;
  s->used = 0;
  return 0;
}

int px_st_sink_write(px_st_sink* s, const void* p, size_t len) {
  if (s->err || s->overrun) return -1;
  if (len > s->remaining) {
    s->overrun = true;
    return -1;
  }
  if (len == 0) return 0;
  XXH64_update(s->xxh, p, len);
  s->remaining -= len;
  if (len >= SINK_BUF) { /* large pieces go straight to the file */
    if (sink_flush(s) < 0) return -1;
    if (write_all(s->fd, p, len, s->pos) < 0) {
      s->err = errno;
      return -1;
    }
    s->pos += len;
    return 0;
  }
  if (s->used + len > SINK_BUF && sink_flush(s) < 0) return -1;
  memcpy(s->buf + s->used, p, len);
  s->used += len;
  return 0;
}

/* Checks the arguments of px_st_write; returns the data section size or -1. */
static int check_entries(const px_st_entry* e, size_t n, const char* const* meta_kv,
                         size_t nmeta, uint64_t* total, char* err, size_t errlen) {
  uint64_t t = 0;
  for (size_t i = 0; i < n; i++) {
    size_t elem = px_st_dtype_size(e[i].dtype);
    uint64_t nb;
    if (!e[i].name) {
      seterr(err, errlen, "checkpoint: tensor %zu has no name", i);
      return -1;
    }
    if (strcmp(e[i].name, META) == 0) {
      seterr(err, errlen, "checkpoint: tensor name '%s' is reserved", META);
      return -1;
    }
    if (elem == 0) {
      seterr(err, errlen, "checkpoint: tensor '%s': unknown dtype %d", q(e[i].name).s,
             e[i].dtype);
      return -1;
    }
    if (e[i].ndim > PX_ST_MAX_NDIM || (e[i].ndim > 0 && !e[i].shape)) {
      seterr(err, errlen, "checkpoint: tensor '%s': bad shape (%" PRIu32 " dimensions)",
             q(e[i].name).s, e[i].ndim);
      return -1;
    }
    if (shape_bytes(e[i].shape, e[i].ndim, elem, &nb) < 0 || nb != e[i].nbytes) {
      seterr(err, errlen, "checkpoint: tensor '%s': nbytes %" PRIu64 " does not match its shape",
             q(e[i].name).s, e[i].nbytes);
      return -1;
    }
    if (e[i].nbytes > (uint64_t)INT64_MAX - t) {
      seterr(err, errlen, "checkpoint: data section too large");
      return -1;
    }
    t += e[i].nbytes;
  }
  for (size_t k = 0; k < nmeta; k++) {
    const char* key = meta_kv[2 * k];
    if (!key || !meta_kv[2 * k + 1]) {
      seterr(err, errlen, "checkpoint: metadata pair %zu is NULL", k);
      return -1;
    }
    if (strncmp(key, "paramex.", 8) == 0 && (strcmp(key, KEY_FORMAT) == 0 ||
                                             strcmp(key, KEY_XXH64) == 0)) {
      seterr(err, errlen, "checkpoint: metadata key '%s' is reserved", q(key).s);
      return -1;
    }
  }
  *total = t;
  return 0;
}

/* Builds the header JSON with the given checksum text; NULL with err on failure. */
static json_t* build_header(const px_st_entry* e, size_t n, const char* const* meta_kv,
                            size_t nmeta, const char* xxh_hex, char* err, size_t errlen) {
  json_t* root = json_object();
  json_t* meta = json_object();
  if (!root || !meta || json_object_set_new(root, META, meta) < 0) goto oom;
  for (size_t k = 0; k < nmeta; k++) {
    const char* key = meta_kv[2 * k];
    json_t* v = json_string(meta_kv[2 * k + 1]);
    if (!v) {
      seterr(err, errlen, "checkpoint: metadata '%s' is not valid UTF-8", q(key).s);
      goto fail;
    }
    if (json_object_get(meta, key)) {
      json_decref(v);
      seterr(err, errlen, "checkpoint: duplicate metadata key '%s'", q(key).s);
      goto fail;
    }
    if (json_object_set_new(meta, key, v) < 0) {
      seterr(err, errlen, "checkpoint: metadata key '%s' is not valid UTF-8", q(key).s);
      goto fail;
    }
  }
  if (json_object_set_new(meta, KEY_FORMAT, json_string("1")) < 0 ||
      json_object_set_new(meta, KEY_XXH64, json_string(xxh_hex)) < 0)
    goto oom;
  uint64_t off = 0;
  for (size_t i = 0; i < n; i++) {
    if (json_object_get(root, e[i].name)) {
      seterr(err, errlen, "checkpoint: duplicate tensor name '%s'", q(e[i].name).s);
      goto fail;
    }
    json_t* shape = json_array();
    json_t* offs = json_pack("[II]", (json_int_t)off, (json_int_t)(off + e[i].nbytes));
    json_t* t = json_pack("{s:s, s:o, s:o}", "dtype", px_st_dtype_name(e[i].dtype),
                          "shape", shape, "data_offsets", offs);
    if (!t) goto oom; /* json_pack steals shape and offs even on failure */
    for (uint32_t d = 0; d < e[i].ndim; d++) {
      if (e[i].shape[d] > (uint64_t)INT64_MAX) {
        json_decref(t);
        seterr(err, errlen, "checkpoint: tensor '%s': dimension too large", q(e[i].name).s);
        goto fail;
      }
      if (json_array_append_new(shape, json_integer((json_int_t)e[i].shape[d])) < 0) {
        json_decref(t);
        goto oom;
      }
    }
    if (json_object_set_new(root, e[i].name, t) < 0) {
      seterr(err, errlen, "checkpoint: tensor name '%s' is not valid UTF-8", q(e[i].name).s);
      goto fail;
    }
    off += e[i].nbytes;
  }
  return root;
oom:
  seterr(err, errlen, "checkpoint: out of memory building the header");
fail:
  json_decref(root);
  return NULL;
}

/* The header bytes: u64 length + JSON padded with spaces to a multiple of 8. */
static uint8_t* dump_header(json_t* root, size_t* len) {
  char* js = json_dumps(root, JSON_COMPACT);
  if (!js) return NULL;
  size_t jl = strlen(js);
  size_t padded = (jl + 7) & ~(size_t)7;
  uint8_t* b = malloc(8 + padded);
  if (b) {
    uint64_t n = padded;
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(n >> (8 * i));
    memcpy(b + 8, js, jl);
    memset(b + 8 + jl, ' ', padded - jl);
    *len = 8 + padded;
  }
  free(js);
  return b;
}

static char* join_path(const char* dir, const char* prefix, const char* name, const char* suffix) {
  size_t len = strlen(dir) + strlen(prefix) + strlen(name) + strlen(suffix) + 2;
  char* p = malloc(len);
  if (p) snprintf(p, len, "%s/%s%s%s", dir, prefix, name, suffix);
  return p;
}

int px_st_write(const char* dir, const char* name, const px_st_entry* e, size_t n,
                 px_st_write_fn fn, void* ctx, const char* const* meta_kv, size_t nmeta,
                 char* err, size_t errlen) {
  uint64_t total;
  if (!dir || !name || !*name || strchr(name, '/') || (n && (!e || !fn)) ||
      (nmeta && !meta_kv)) {
    seterr(err, errlen, "checkpoint: invalid arguments to write");
    return -1;
  }
  if (check_entries(e, n, meta_kv, nmeta, &total, err, errlen) < 0) return -1;

  int rc = -1, fd = -1;
  char *final = NULL, *tmp = NULL;
  uint8_t *hdr = NULL, *hdr2 = NULL;
  json_t* root = NULL;
  px_st_sink sink = {.fd = -1};
  char suffix[32];
  snprintf(suffix, sizeof suffix, ".tmp.%ld", (long)getpid());
  final = join_path(dir, "", name, "");
  tmp = join_path(dir, ".", name, suffix);
  sink.buf = malloc(SINK_BUF);
  sink.xxh = XXH64_createState();
  if (!final || !tmp || !sink.buf || !sink.xxh) {
    seterr(err, errlen, "checkpoint: out of memory");
    goto out;
  }

  size_t hlen, hlen2;
  root = build_header(e, n, meta_kv, nmeta, "0000000000000000", err, errlen);
  if (!root) goto out;
  hdr = dump_header(root, &hlen);
  if (!hdr) {
    seterr(err, errlen, "checkpoint: out of memory building the header");
    goto out;
  }
  if (hlen - 8 > PX_ST_MAX_HEADER) {
    seterr(err, errlen, "checkpoint: header of %zu bytes exceeds the limit of %u", hlen - 8,
           PX_ST_MAX_HEADER);
    goto out;
  }

  fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    seterr(err, errlen, "checkpoint: create %s: %s", tmp, strerror(errno));
    goto out_notmp;
  }
  if (write_all(fd, hdr, hlen, 0) < 0) {
    seterr(err, errlen, "checkpoint: write %s: %s", final, strerror(errno));
    goto out;
  }

  sink.fd = fd;
  sink.pos = hlen;
  XXH64_reset(sink.xxh, 0);
  for (size_t i = 0; i < n; i++) {
    sink.remaining = e[i].nbytes;
    int r = fn(ctx, i, &sink);
    if (sink.err) {
      seterr(err, errlen, "checkpoint: write %s: %s", final, strerror(sink.err));
      goto out;
    }
    if (sink.overrun) {
      seterr(err, errlen, "checkpoint: tensor '%s': callback gave more than %" PRIu64 " bytes",
             q(e[i].name).s, e[i].nbytes);
      goto out;
    }
    if (r != 0) {
      seterr(err, errlen, "checkpoint: tensor '%s': data callback failed", q(e[i].name).s);
      goto out;
    }
    if (sink.remaining) {
      seterr(err, errlen, "checkpoint: tensor '%s': callback gave %" PRIu64 " of %" PRIu64 " bytes",
             q(e[i].name).s, e[i].nbytes - sink.remaining, e[i].nbytes);
      goto out;
    }
  }
  if (sink_flush(&sink) < 0) {
    seterr(err, errlen, "checkpoint: write %s: %s", final, strerror(sink.err));
    goto out;
  }

  /* Patch the checksum into the header; same key set and width, so the same length. */
  char hex[17];
  snprintf(hex, sizeof hex, "%016" PRIx64, (uint64_t)XXH64_digest(sink.xxh));
  json_decref(root);
  root = build_header(e, n, meta_kv, nmeta, hex, err, errlen);
  if (!root) goto out;
  hdr2 = dump_header(root, &hlen2);
  if (!hdr2 || hlen2 != hlen) {
    seterr(err, errlen, "checkpoint: %s", hdr2 ? "header length changed" : "out of memory");
    goto out;
  }
  if (write_all(fd, hdr2, hlen2, 0) < 0 || fsync(fd) < 0) {
    seterr(err, errlen, "checkpoint: write %s: %s", final, strerror(errno));
    goto out;
  }
  int cfd = fd;
  fd = -1;
  if (close(cfd) < 0) {
    seterr(err, errlen, "checkpoint: write %s: %s", final, strerror(errno));
    goto out;
  }
  if (rename(tmp, final) < 0) {
    seterr(err, errlen, "checkpoint: rename %s to %s: %s", tmp, final, strerror(errno));
    goto out;
  }
  /* From here the new file is in place; never remove it. */
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0 || fsync(dfd) < 0) {
    seterr(err, errlen, "checkpoint: fsync directory %s: %s", dir, strerror(errno));
    if (dfd >= 0) close(dfd);
    goto out_notmp;
  }
  close(dfd);
  rc = 0;
  goto out_notmp;

out:
  if (fd >= 0) close(fd);
  fd = -1;
  if (tmp) unlink(tmp);
out_notmp:
  if (fd >= 0) close(fd);
  json_decref(root);
  free(hdr);
  free(hdr2);
  free(sink.buf);
  if (sink.xxh) XXH64_freeState(sink.xxh);
  free(final);
  free(tmp);
  return rc;
}

/* ==== reading ======================================================================== */

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
    seterr(err, errlen, "checkpoint %s: %s", label, m_);        \
    goto fail;                                                  \
  } while (0)

static px_st_file* parse(const uint8_t* buf, size_t len, bool mapped, const char* label,
                          char* err, size_t errlen) {
  px_st_file* f = calloc(1, sizeof *f);
  if (!f) {
    if (mapped && len) munmap((void*)buf, len);
    seterr(err, errlen, "checkpoint %s: out of memory", label);
    return NULL;
  }
  f->base = buf;
  f->len = len;
  f->mapped = mapped;

  if (len < 8) FAIL("file too short (%zu bytes)", len);
  uint64_t hl = 0;
  for (int i = 0; i < 8; i++) hl |= (uint64_t)buf[i] << (8 * i);
  if (hl > len - 8) FAIL("header length %" PRIu64 " exceeds file size %zu", hl, len);
  if (hl > PX_ST_MAX_HEADER)
    FAIL("header length %" PRIu64 " exceeds the limit of %u", hl, PX_ST_MAX_HEADER);
  const uint8_t* data = buf + 8 + hl;
  const uint64_t dlen = len - 8 - hl;

  json_error_t je;
  f->root = json_loadb((const char*)buf + 8, (size_t)hl, JSON_REJECT_DUPLICATES, &je);
  if (!f->root) FAIL("header is not valid JSON: %s (at byte %d)", je.text, je.position);
  if (!json_is_object(f->root)) FAIL("header is not a JSON object");

  size_t nkeys = json_object_size(f->root);
  json_t* meta = json_object_get(f->root, META);
  size_t n = nkeys - (meta ? 1 : 0);
  f->t = calloc(n ? n : 1, sizeof *f->t);
  f->by_name = calloc(n ? n : 1, sizeof *f->by_name);
  if (!f->t || !f->by_name) FAIL("out of memory (%zu tensors)", n);

  /* metadata */
  if (meta) {
    if (!json_is_object(meta)) FAIL("__metadata__ is not an object");
    f->metaobj = meta;
    size_t nm = json_object_size(meta);
    f->meta = calloc(nm ? 2 * nm : 1, sizeof *f->meta);
    if (!f->meta) FAIL("out of memory (%zu metadata)", nm);
    const char* k;
    json_t* v;
    json_object_foreach(meta, k, v) {
      if (!json_is_string(v)) FAIL("metadata '%s' is not a string", q(k).s);
      f->meta[2 * f->nmeta] = k;
      f->meta[2 * f->nmeta + 1] = json_string_value(v);
      f->nmeta++;
    }
  }

  /* tensors: count the dimensions first so that one array holds all shapes */
  size_t ndims = 0;
  const char* name;
  json_t* ent;
  json_object_foreach(f->root, name, ent) {
    if (ent == meta) continue;
    json_t* shape = json_is_object(ent) ? json_object_get(ent, "shape") : NULL;
    if (json_is_array(shape)) ndims += json_array_size(shape);
  }
  f->dims = calloc(ndims ? ndims : 1, sizeof *f->dims);
  if (!f->dims) FAIL("out of memory (%zu dimensions)", ndims);

  size_t di = 0;
  json_object_foreach(f->root, name, ent) {
    if (ent == meta) continue;
    if (!json_is_object(ent)) FAIL("tensor '%s' is not an object", q(name).s);
    json_t* jd = json_object_get(ent, "dtype");
    json_t* js = json_object_get(ent, "shape");
    json_t* jo = json_object_get(ent, "data_offsets");
    if (!jd) FAIL("tensor '%s' has no dtype", q(name).s);
    if (!js) FAIL("tensor '%s' has no shape", q(name).s);
    if (!jo) FAIL("tensor '%s' has no data_offsets", q(name).s);
    if (json_object_size(ent) != 3) {
      const char* k;
      json_t* v;
      json_object_foreach(ent, k, v) {
        if (strcmp(k, "dtype") && strcmp(k, "shape") && strcmp(k, "data_offsets"))
          FAIL("tensor '%s' has unknown field '%s'", q(name).s, q(k).s);
      }
    }
    if (!json_is_string(jd)) FAIL("tensor '%s': dtype is not a string", q(name).s);
    int dt = dtype_parse(json_string_value(jd));
    if (!dt) FAIL("tensor '%s': unknown dtype '%s'", q(name).s, q(json_string_value(jd)).s);
    if (!json_is_array(js)) FAIL("tensor '%s': shape is not an array", q(name).s);
    size_t nd = json_array_size(js);
    if (nd > PX_ST_MAX_NDIM)
      FAIL("tensor '%s': %zu dimensions exceed the limit of %u", q(name).s, nd, PX_ST_MAX_NDIM);
    uint64_t* dims = f->dims + di;
    for (size_t d = 0; d < nd; d++)
      if (u64_at(json_array_get(js, d), &dims[d]) < 0)
        FAIL("tensor '%s': shape must hold non-negative integers", q(name).s);
    di += nd;
    uint64_t begin, end, want;
    if (!json_is_array(jo) || json_array_size(jo) != 2 ||
        u64_at(json_array_get(jo, 0), &begin) < 0 || u64_at(json_array_get(jo, 1), &end) < 0)
      FAIL("tensor '%s': data_offsets must be two non-negative integers", q(name).s);
    if (begin > end)
      FAIL("tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] are reversed", q(name).s, begin,
           end);
    if (end > dlen)
      FAIL("tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] exceed the data section (%" PRIu64
           " bytes)", q(name).s, begin, end, dlen);
    if (shape_bytes(dims, (uint32_t)nd, px_st_dtype_size(dt), &want) < 0)
      FAIL("tensor '%s': shape overflows", q(name).s);
    if (want != end - begin)
      FAIL("tensor '%s': shape needs %" PRIu64 " bytes but data_offsets give %" PRIu64, q(name).s,
           want, end - begin);
    px_st_tensor* t = &f->t[f->n++];
    t->name = name;
    t->dtype = dt;
    t->ndim = (uint32_t)nd;
    t->shape = dims;
    t->data = data + begin;
    t->nbytes = end - begin;
    t->offset = begin;
  }

  qsort(f->t, f->n, sizeof *f->t, by_offset);
  uint64_t at = 0;
  for (size_t i = 0; i < f->n; i++) {
    if (f->t[i].offset < at)
      FAIL("tensors '%s' and '%s' overlap", q(f->t[i - 1].name).s, q(f->t[i].name).s);
    if (f->t[i].offset > at)
      FAIL("gap in the data section before tensor '%s' (bytes %" PRIu64 "..%" PRIu64 ")",
           q(f->t[i].name).s, at, f->t[i].offset);
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

  const char* fmt = px_st_meta(f, KEY_FORMAT);
  if (fmt && strcmp(fmt, "1") != 0) FAIL("unsupported %s '%s'", KEY_FORMAT, q(fmt).s);
  const char* hex = px_st_meta(f, KEY_XXH64);
  if (hex) {
    uint64_t want = 0;
    bool ok = strlen(hex) == 16;
    for (int i = 0; ok && i < 16; i++) {
      int v = hexval(hex[i]);
      if (v < 0) ok = false;
      want = want << 4 | (uint64_t)(v < 0 ? 0 : v);
    }
    if (!ok) FAIL("%s '%s' is not 16 hex digits", KEY_XXH64, q(hex).s);
    if (XXH64(data, (size_t)dlen, 0) != want) FAIL("data checksum mismatch"); /* file format */
  }
  return f;

fail:
  px_st_close(f);
  return NULL;
}

px_st_file* px_st_open_mem(const void* buf, size_t len, char* err, size_t errlen) {
  if (!buf && len) {
    seterr(err, errlen, "checkpoint <memory>: NULL buffer");
    return NULL;
  }
  static const uint8_t empty[1];
  return parse(buf ? buf : empty, len, false, "<memory>", err, errlen);
}

px_st_file* px_st_open(const char* path, char* err, size_t errlen) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    seterr(err, errlen, "checkpoint %s: %s", path, strerror(errno));
    return NULL;
  }
  struct stat st;
  if (fstat(fd, &st) < 0) {
    seterr(err, errlen, "checkpoint %s: %s", path, strerror(errno));
    close(fd);
    return NULL;
  }
  if (!S_ISREG(st.st_mode)) {
    seterr(err, errlen, "checkpoint %s: not a regular file", path);
    close(fd);
    return NULL;
  }
  if ((uint64_t)st.st_size > SIZE_MAX) {
    seterr(err, errlen, "checkpoint %s: file too large", path);
    close(fd);
    return NULL;
  }
  size_t len = (size_t)st.st_size;
  const uint8_t* base = NULL;
  if (len > 0) {
    void* m = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      seterr(err, errlen, "checkpoint %s: mmap: %s", path, strerror(errno));
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
