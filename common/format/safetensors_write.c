/* safetensors writer (safetensors_write.h).
 *
 * The header carries the checksum of the data, which is only known after the callbacks
 * ran, and callbacks must run once (the caller copies live state under its locks). So the
 * header is first written with a placeholder of the same width and patched in place with
 * pwrite at the end; its length cannot change. */
#include "format/safetensors_write.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

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
    size_t elem = px_dtype_size_any(e[i].dtype);
    uint64_t nb;
    if (!e[i].name) {
      px_st_seterr(err, errlen, "checkpoint: tensor %zu has no name", i);
      return -1;
    }
    if (strcmp(e[i].name, PX_ST_METADATA) == 0) {
      px_st_seterr(err, errlen, "checkpoint: tensor name '%s' is reserved", PX_ST_METADATA);
      return -1;
    }
    if (elem == 0) {
      px_st_seterr(err, errlen, "checkpoint: tensor '%s': unknown dtype %d", px_st_quote(e[i].name).s,
             e[i].dtype);
      return -1;
    }
    if (e[i].ndim > PX_ST_MAX_NDIM || (e[i].ndim > 0 && !e[i].shape)) {
      px_st_seterr(err, errlen, "checkpoint: tensor '%s': bad shape (%" PRIu32 " dimensions)",
             px_st_quote(e[i].name).s, e[i].ndim);
      return -1;
    }
    if (px_st_shape_bytes(e[i].shape, e[i].ndim, elem, &nb) < 0 || nb != e[i].nbytes) {
      px_st_seterr(err, errlen, "checkpoint: tensor '%s': nbytes %" PRIu64 " does not match its shape",
             px_st_quote(e[i].name).s, e[i].nbytes);
      return -1;
    }
    if (e[i].nbytes > (uint64_t)INT64_MAX - t) {
      px_st_seterr(err, errlen, "checkpoint: data section too large");
      return -1;
    }
    t += e[i].nbytes;
  }
  for (size_t k = 0; k < nmeta; k++) {
    const char* key = meta_kv[2 * k];
    if (!key || !meta_kv[2 * k + 1]) {
      px_st_seterr(err, errlen, "checkpoint: metadata pair %zu is NULL", k);
      return -1;
    }
    if (strncmp(key, "paramex.", 8) == 0 && (strcmp(key, PX_ST_KEY_FORMAT) == 0 ||
                                             strcmp(key, PX_ST_KEY_XXH64) == 0)) {
      px_st_seterr(err, errlen, "checkpoint: metadata key '%s' is reserved", px_st_quote(key).s);
      return -1;
    }
  }
  *total = t;
  return 0;
}

/* Builds the header JSON with the given checksum text; NULL with err on failure. */
static json_t* build_header(const px_st_entry* e, size_t n, const char* const* meta_kv,
                            size_t nmeta, const char* xxh_hex, const char* hdr_hex, char* err,
                            size_t errlen) {
  json_t* root = json_object();
  json_t* meta = json_object();
  if (!root || !meta || json_object_set_new(root, PX_ST_METADATA, meta) < 0) goto oom;
  for (size_t k = 0; k < nmeta; k++) {
    const char* key = meta_kv[2 * k];
    json_t* v = json_string(meta_kv[2 * k + 1]);
    if (!v) {
      px_st_seterr(err, errlen, "checkpoint: metadata '%s' is not valid UTF-8", px_st_quote(key).s);
      goto fail;
    }
    if (json_object_get(meta, key)) {
      json_decref(v);
      px_st_seterr(err, errlen, "checkpoint: duplicate metadata key '%s'", px_st_quote(key).s);
      goto fail;
    }
    if (json_object_set_new(meta, key, v) < 0) {
      px_st_seterr(err, errlen, "checkpoint: metadata key '%s' is not valid UTF-8", px_st_quote(key).s);
      goto fail;
    }
  }
  if (json_object_set_new(meta, PX_ST_KEY_FORMAT, json_string("1")) < 0 ||
      json_object_set_new(meta, PX_ST_KEY_XXH64, json_string(xxh_hex)) < 0 ||
      json_object_set_new(meta, PX_ST_KEY_HEADER_XXH64, json_string(hdr_hex)) < 0)
    goto oom;
  uint64_t off = 0;
  for (size_t i = 0; i < n; i++) {
    if (json_object_get(root, e[i].name)) {
      px_st_seterr(err, errlen, "checkpoint: duplicate tensor name '%s'", px_st_quote(e[i].name).s);
      goto fail;
    }
    json_t* shape = json_array();
    json_t* offs = json_pack("[II]", (json_int_t)off, (json_int_t)(off + e[i].nbytes));
    char dn[16];
    json_t* t = json_pack("{s:s, s:o, s:o}", "dtype", px_st_dtype_name(e[i].dtype, dn, sizeof dn),
                          "shape", shape, "data_offsets", offs);
    if (!t) goto oom; /* json_pack steals shape and offs even on failure */
    for (uint32_t d = 0; d < e[i].ndim; d++) {
      if (e[i].shape[d] > (uint64_t)INT64_MAX) {
        json_decref(t);
        px_st_seterr(err, errlen, "checkpoint: tensor '%s': dimension too large", px_st_quote(e[i].name).s);
        goto fail;
      }
      if (json_array_append_new(shape, json_integer((json_int_t)e[i].shape[d])) < 0) {
        json_decref(t);
        goto oom;
      }
    }
    if (json_object_set_new(root, e[i].name, t) < 0) {
      px_st_seterr(err, errlen, "checkpoint: tensor name '%s' is not valid UTF-8", px_st_quote(e[i].name).s);
      goto fail;
    }
    off += e[i].nbytes;
  }
  return root;
oom:
  px_st_seterr(err, errlen, "checkpoint: out of memory building the header");
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

/* Runs the callback of every tensor into the sink and flushes it; -1 with err. */
static int write_tensors(px_st_sink* sink, const px_st_entry* e, size_t n, px_st_write_fn fn,
                         void* ctx, const char* final, char* err, size_t errlen) {
  for (size_t i = 0; i < n; i++) {
    sink->remaining = e[i].nbytes;
    int r = fn(ctx, i, sink);
    const px_st_quoted name = px_st_quote(e[i].name);
    if (sink->err) {
      px_st_seterr(err, errlen, "checkpoint: write %s: %s", final, strerror(sink->err));
      return -1;
    }
    if (sink->overrun) {
      px_st_seterr(err, errlen, "checkpoint: tensor '%s': callback gave more than %" PRIu64
                   " bytes", name.s, e[i].nbytes);
      return -1;
    }
    if (r != 0) {
      px_st_seterr(err, errlen, "checkpoint: tensor '%s': data callback failed", name.s);
      return -1;
    }
    if (sink->remaining) {
      px_st_seterr(err, errlen, "checkpoint: tensor '%s': callback gave %" PRIu64 " of %" PRIu64
                   " bytes", name.s, e[i].nbytes - sink->remaining, e[i].nbytes);
      return -1;
    }
  }
  if (sink_flush(sink) < 0) {
    px_st_seterr(err, errlen, "checkpoint: write %s: %s", final, strerror(sink->err));
    return -1;
  }
  return 0;
}

int px_st_write(const char* dir, const char* name, const px_st_entry* e, size_t n,
                 px_st_write_fn fn, void* ctx, const char* const* meta_kv, size_t nmeta,
                 char* err, size_t errlen) {
  uint64_t total;
  if (!dir || !name || !*name || strchr(name, '/') || (n && (!e || !fn)) ||
      (nmeta && !meta_kv)) {
    px_st_seterr(err, errlen, "checkpoint: invalid arguments to write");
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
    px_st_seterr(err, errlen, "checkpoint: out of memory");
    goto out;
  }

  size_t hlen, hlen2;
  root = build_header(e, n, meta_kv, nmeta, "0000000000000000", "0000000000000000", err, errlen);
  if (!root) goto out;
  hdr = dump_header(root, &hlen);
  if (!hdr) {
    px_st_seterr(err, errlen, "checkpoint: out of memory building the header");
    goto out;
  }
  if (hlen - 8 > PX_ST_MAX_HEADER) {
    px_st_seterr(err, errlen, "checkpoint: header of %zu bytes exceeds the limit of %u", hlen - 8,
           PX_ST_MAX_HEADER);
    goto out;
  }

  fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    px_st_seterr(err, errlen, "checkpoint: create %s: %s", tmp, strerror(errno));
    goto out_notmp;
  }
  if (write_all(fd, hdr, hlen, 0) < 0) {
    px_st_seterr(err, errlen, "checkpoint: write %s: %s", final, strerror(errno));
    goto out;
  }

  sink.fd = fd;
  sink.pos = hlen;
  XXH64_reset(sink.xxh, 0);
  if (write_tensors(&sink, e, n, fn, ctx, final, err, errlen) < 0) goto out;

  /* Patch the checksum into the header; same key set and width, so the same length. */
  char hex[17];
  snprintf(hex, sizeof hex, "%016" PRIx64, (uint64_t)XXH64_digest(sink.xxh));
  json_decref(root);
  /* then the header's own checksum, over its text with that value zeroed */
  root = build_header(e, n, meta_kv, nmeta, hex, "0000000000000000", err, errlen);
  if (!root) goto out;
  hdr2 = dump_header(root, &hlen2);
  if (!hdr2 || hlen2 != hlen) {
    px_st_seterr(err, errlen, "checkpoint: %s", hdr2 ? "header length changed" : "out of memory");
    goto out;
  }
  char hhex[17];
  snprintf(hhex, sizeof hhex, "%016" PRIx64, (uint64_t)XXH64(hdr2 + 8, hlen2 - 8, 0));
  free(hdr2);
  json_decref(root);
  root = build_header(e, n, meta_kv, nmeta, hex, hhex, err, errlen);
  if (!root) goto out;
  hdr2 = dump_header(root, &hlen2);
  if (!hdr2 || hlen2 != hlen) {
    px_st_seterr(err, errlen, "checkpoint: %s", hdr2 ? "header length changed" : "out of memory");
    goto out;
  }
  if (write_all(fd, hdr2, hlen2, 0) < 0 || fsync(fd) < 0) {
    px_st_seterr(err, errlen, "checkpoint: write %s: %s", final, strerror(errno));
    goto out;
  }
  int cfd = fd;
  fd = -1;
  if (close(cfd) < 0) {
    px_st_seterr(err, errlen, "checkpoint: write %s: %s", final, strerror(errno));
    goto out;
  }
  if (rename(tmp, final) < 0) {
    px_st_seterr(err, errlen, "checkpoint: rename %s to %s: %s", tmp, final, strerror(errno));
    goto out;
  }
  /* From here the new file is in place; never remove it. */
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0 || fsync(dfd) < 0) {
    px_st_seterr(err, errlen, "checkpoint: fsync directory %s: %s", dir, strerror(errno));
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
