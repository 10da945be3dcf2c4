/* The tensor store (store.h). */
#include "store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "codec/checksum.h"
#include "codec/dtype.h"
#include "codec/initializer.h"
#include "rpc/rpc_base.h"
#include "shard/shardmap.h"
#include "util/str.h"
#include "util/bufpool.h"
#include "util/log.h"
#include "util/mem.h"

int px_store_init(px_store* s, const px_store_opts* o, px_backend* backend, px_fcache* fcache,
                  px_waiters* waiters, px_counters* ctr, char* err, size_t errlen) {
  memset(s, 0, sizeof *s);
  s->o = *o;
  s->backend = backend;
  s->fcache = fcache;
  s->waiters = waiters;
  s->ctr = ctr;
  pthread_mutex_init(&s->declare_mu, NULL);
  s->tensors = calloc(o->max_tensors ? o->max_tensors : 1, sizeof *s->tensors);
  if (!s->tensors) {
    snprintf(err, errlen, "out of memory at start");
    return -1;
  }
  return 0;
}

px_tensor_state* px_store_tensor(px_store* s, uint32_t id) {
  uint32_t n = atomic_load_explicit(&s->ntensors, memory_order_acquire);
  return id < n ? s->tensors[id] : NULL;
}

uint32_t px_store_count(px_store* s) {
  return atomic_load_explicit(&s->ntensors, memory_order_acquire);
}

int px_view_width(const px_tensor_state* t, int v) { return v == 1 ? 2 : (int)t->elem; }

static px_tensor_state* find_by_name(px_store* s, const char* name) {
  uint32_t n = atomic_load(&s->ntensors);
  for (uint32_t i = 0; i < n; i++)
    if (strcmp(s->tensors[i]->name, name) == 0) return s->tensors[i];
  return NULL;
}

static void tensor_free(px_store* s, px_tensor_state* t) {
  if (!t) return;
  s->backend->ops->tensor_destroy(s->backend, t->be);
  for (uint32_t i = 0; t->chunks && i < t->nchunks; i++) {
    px_chunk_state* c = &t->chunks[i];
    px_fcache_clear(s->fcache, c->view, true);
    for (uint32_t w = 0; c->held && w < s->o.workers; w++)
      if (c->held[w].buf && !c->held[w].owner) px_buf_put(c->held[w].buf, s->o.chunk_bytes);
    free(c->contributed);
    free(c->held);
    pthread_mutex_destroy(&c->mu);
  }
  free(t->chunks);
  free(t->own);
  px_big_free(t->params, t->params_bytes);
  free(t);
}

void px_store_deinit(px_store* s) {
  uint32_t nt = atomic_load(&s->ntensors);
  for (uint32_t i = 0; i < nt; i++) tensor_free(s, s->tensors[i]);
  free(s->tensors);
  s->tensors = NULL;
  atomic_store(&s->ntensors, 0);
  pthread_mutex_destroy(&s->declare_mu);
}

/* ---- declare ------------------------------------------------------------------------------- */

static int shape_check(const px_declare_args* a, uint64_t* numel, char* err, size_t errlen) {
  if (a->ndim == 0 || a->ndim > PX_MAX_DIMS) {
    snprintf(err, errlen, "tensor '%s': shape has %zu dimensions (want 1..%d)", a->name, a->ndim,
             PX_MAX_DIMS);
    return -1;
  }
  uint64_t n = 1;
  for (size_t i = 0; i < a->ndim; i++) {
    if (a->shape[i] == 0) {
      snprintf(err, errlen, "tensor '%s': dimension %zu is 0", a->name, i);
      return -1;
    }
    if (n > UINT64_MAX / a->shape[i]) {
      snprintf(err, errlen, "tensor '%s': shape overflows", a->name);
      return -1;
    }
    n *= a->shape[i];
  }
  *numel = n;
  return 0;
}

/* The checks that need no tensor; a status and err. */
static int args_check(const px_declare_args* a, uint64_t* numel, char* err, size_t errlen) {
  size_t namelen = strlen(a->name);
  if (namelen == 0 || namelen > PX_MAX_NAME) {
    snprintf(err, errlen, "tensor name must be 1..%d bytes (got %zu)", PX_MAX_NAME, namelen);
    return PX_ST_INVALID_ARGUMENT;
  }
  if (!px_utf8_valid(a->name, namelen)) {
    snprintf(err, errlen, "tensor name is not valid UTF-8 (protobuf strings must be)");
    return PX_ST_INVALID_ARGUMENT;
  }
  if (px_dtype_size(a->dtype) == 0) {
    snprintf(err, errlen, "tensor '%s': unknown dtype %d (want f32, bf16 or f16)", a->name,
             a->dtype);
    return PX_ST_INVALID_ARGUMENT;
  }
  if (shape_check(a, numel, err, errlen) != 0) return PX_ST_INVALID_ARGUMENT;
  if (a->values && a->init_kind != PX_FILL_ZEROS) {
    snprintf(err, errlen, "tensor '%s': give either values or an initializer", a->name);
    return PX_ST_INVALID_ARGUMENT;
  }
  if (a->init_kind < PX_FILL_ZEROS || a->init_kind > PX_FILL_UNIFORM) {
    snprintf(err, errlen, "tensor '%s': unknown initializer kind %d", a->name, a->init_kind);
    return PX_ST_INVALID_ARGUMENT;
  }
  if (a->values_offset != 0 && !a->values) {
    snprintf(err, errlen, "tensor '%s': values_offset without values", a->name);
    return PX_ST_INVALID_ARGUMENT;
  }
  return PX_ST_OK;
}

static bool same_decl(const px_tensor_state* t, const px_declare_args* a) {
  if (t->dtype != a->dtype || t->ndim != a->ndim) return false;
  for (size_t i = 0; i < a->ndim; i++)
    if (t->shape[i] != a->shape[i]) return false;
  return true;
}

static void shape_str(char* buf, size_t cap, const uint64_t* shape, size_t ndim) {
  size_t off = 0;
  off += (size_t)snprintf(buf + off, cap - off, "[");
  for (size_t i = 0; i < ndim && off < cap; i++)
    off += (size_t)snprintf(buf + off, cap - off, i ? ",%llu" : "%llu",
                            (unsigned long long)shape[i]);
  if (off < cap) snprintf(buf + off, cap - off, "]");
}

/* Chunk c holds its values: the backend takes them and view 0's checksum is known. c->mu
 * held. */
static void chunk_ready(px_store* s, px_tensor_state* t, px_chunk_state* c) {
  c->initialized = true;
  s->backend->ops->chunk_load(s->backend, t->be, c->index, NULL);
  c->view[0].checksum = px_checksum(c->params, (size_t)c->elems * t->elem);
  c->view[0].checksum_valid = true;
}

/* Marks the chunks whose elements are all present as initialized; returns their waiters. */
static px_waiter* mark_initialized(px_store* s, px_tensor_state* t, uint64_t upto) {
  px_waiter* all = NULL;
  for (uint32_t i = 0; i < t->nchunks; i++) {
    px_chunk_state* c = &t->chunks[i];
    uint64_t end = (uint64_t)i * t->chunk_elems + c->elems;
    if (end > upto) break;
    if (!c->own) continue;
    pthread_mutex_lock(&c->mu);
    if (!c->initialized) {
      chunk_ready(s, t, c);
      all = px_waiters_join(all, px_waiters_take(s->waiters, &c->waiters));
    }
    pthread_mutex_unlock(&c->mu);
  }
  return all;
}

/* The seeded initializer, generated in f32 and rounded for 16-bit tensors. */
static int fill_init(px_tensor_state* t, const px_declare_args* a) {
  if (t->dtype == PX_DT_F32 && t->nown == t->nchunks)
    return px_init_fill_f32(t->params, 0, t->numel, a->init_kind, a->init_a, a->init_b,
                            a->init_seed);
  float* tmp = malloc((size_t)t->chunk_elems * sizeof *tmp);
  if (!tmp) return -1;
  uint16_t* dst = t->params;
  for (uint32_t k = 0; k < t->nown; k++) { /* the chunks held here: element i's value
                                            * depends on i and the seed only */
    const uint64_t first = (uint64_t)t->own[k] * t->chunk_elems;
    const size_t n = t->chunks[t->own[k]].elems;
    if (t->dtype == PX_DT_F32) {
      px_init_fill_f32((float*)t->params + first, first, n, a->init_kind, a->init_a, a->init_b,
                       a->init_seed);
      continue;
    }
    px_init_fill_f32(tmp, first, n, a->init_kind, a->init_a, a->init_b, a->init_seed);
    if (t->dtype == PX_DT_BF16) px_f32_to_bf16_n(tmp, dst + first, n);
    else px_f32_to_f16_n(tmp, dst + first, n);
  }
  free(tmp);
  return 0;
}

/* The creator's piece of initial values; wakes the pulls of chunks it completes. */
static int write_values(px_store* s, px_tensor_state* t, const px_declare_args* a,
                        px_waiter** wake, char* err, size_t errlen) {
  size_t es = px_dtype_size(t->dtype);
  if (a->values_len % es != 0) {
    snprintf(err, errlen, "tensor '%s': %zu bytes of values is not a multiple of %zu", t->name,
             a->values_len, es);
    return PX_ST_INVALID_ARGUMENT;
  }
  uint64_t n = a->values_len / es;
  if (a->values_offset > t->numel || n > t->numel - a->values_offset) {
    snprintf(err, errlen, "tensor '%s': values [%llu, %llu) run past its %llu elements", t->name,
             (unsigned long long)a->values_offset, (unsigned long long)(a->values_offset + n),
             (unsigned long long)t->numel);
    return PX_ST_INVALID_ARGUMENT;
  }
  if (a->values_offset + n <= t->init_cursor) return PX_ST_OK; /* a repeat: already have it */
  if (a->values_offset > t->init_cursor) {
    snprintf(err, errlen, "tensor '%s': values_offset %llu leaves a gap (next expected %llu)",
             t->name, (unsigned long long)a->values_offset, (unsigned long long)t->init_cursor);
    return PX_ST_INVALID_ARGUMENT;
  }
  const uint64_t end = a->values_offset + n;
  for (uint64_t i = t->init_cursor; i < end;) { /* the parts of chunks held here */
    const px_chunk_state* c = &t->chunks[i / t->chunk_elems];
    uint64_t stop = (uint64_t)c->index * t->chunk_elems + c->elems;
    if (stop > end) stop = end;
    if (c->own)
      memcpy((uint8_t*)t->params + i * es, a->values + (i - a->values_offset) * es,
             (stop - i) * es);
    i = stop;
  }
  t->init_cursor = a->values_offset + n;
  *wake = mark_initialized(s, t, t->init_cursor);
  return PX_ST_OK;
}

/* The limits a new tensor of numel elements must fit in. declare_mu held. */
static int limits_check(px_store* s, const px_declare_args* a, uint64_t numel, uint64_t* need,
                        char* err, size_t errlen) {
  const size_t es = px_dtype_size(a->dtype);
  if (numel > s->o.max_tensor_bytes / es) {
    snprintf(err, errlen, "tensor '%s': %llu elements exceed --max-tensor-bytes %llu", a->name,
             (unsigned long long)numel, (unsigned long long)s->o.max_tensor_bytes);
    return PX_ST_RESOURCE_EXHAUSTED;
  }
  *need = numel * es + (s->o.momentum ? numel * sizeof(float) : 0);
  int64_t used = atomic_load(&s->ctr->store_bytes) + atomic_load(&s->ctr->frame_bytes);
  if (s->o.memory_limit && (uint64_t)used + *need > s->o.memory_limit) {
    snprintf(err, errlen, "tensor '%s': %llu more bytes would exceed --memory-limit %llu (%lld in use)",
             a->name, (unsigned long long)*need, (unsigned long long)s->o.memory_limit,
             (long long)used);
    return PX_ST_RESOURCE_EXHAUSTED;
  }
  if (atomic_load(&s->ntensors) >= s->o.max_tensors) {
    snprintf(err, errlen, "tensor '%s': the server holds --max-tensors %u tensors", a->name,
             s->o.max_tensors);
    return PX_ST_RESOURCE_EXHAUSTED;
  }
  return PX_ST_OK;
}

/* A new tensor with its chunks and backend state, values not yet there; NULL with err. */
static px_tensor_state* tensor_new(px_store* s, const px_declare_args* a, uint64_t numel,
                                   char* err, size_t errlen) {
  const size_t es = px_dtype_size(a->dtype);
  px_tensor_state* t = calloc(1, sizeof *t);
  if (!t) goto oom;
  t->id = atomic_load(&s->ntensors);
  t->elem = es;
  memcpy(t->name, a->name, strlen(a->name) + 1);
  t->dtype = a->dtype;
  t->ndim = (uint32_t)a->ndim;
  memcpy(t->shape, a->shape, a->ndim * sizeof *a->shape);
  t->numel = numel;
  t->chunk_elems = (uint32_t)(s->o.chunk_bytes / 4);
  t->nchunks = (uint32_t)((numel + t->chunk_elems - 1) / t->chunk_elems);
  t->params_bytes = numel * es;
  t->params = px_big_alloc(t->params_bytes);
  t->chunks = calloc(t->nchunks, sizeof *t->chunks);
  t->own = malloc(t->nchunks * sizeof *t->own);
  if (!t->params || !t->chunks || !t->own) goto oom;
  t->nown = px_shard_chunks(t->name, strlen(t->name), t->nchunks, s->o.shard, s->o.shards, t->own);
  t->creator = a->worker_id;
  t->creator_incarnation = a->incarnation;
  for (uint32_t k = 0; k < t->nown; k++) t->chunks[t->own[k]].own = true;
  for (uint32_t i = 0; i < t->nchunks; i++) {
    px_chunk_state* c = &t->chunks[i];
    uint64_t first = (uint64_t)i * t->chunk_elems;
    c->index = i;
    c->elems = (uint32_t)(numel - first < t->chunk_elems ? numel - first : t->chunk_elems);
    c->params = (uint8_t*)t->params + first * es;
    c->view[0].enabled = true;
    c->mom_first = true;
    c->contributed = calloc(s->o.workers, 1);
    c->held = calloc(s->o.workers, sizeof *c->held);
    pthread_mutex_init(&c->mu, NULL);
    if (!c->contributed || !c->held) goto oom;
  }
  /* the backend's state: momentum, sums, device memory (cuda) */
  px_be_tensor_desc d = {t->name, t->dtype, t->numel, t->chunk_elems, t->nchunks, t->params};
  if (s->backend->ops->tensor_create(s->backend, &d, &t->be, err, errlen) != 0) {
    tensor_free(s, t);
    return NULL;
  }
  return t;
oom:
  tensor_free(s, t);
  snprintf(err, errlen, "tensor '%s': out of memory", a->name);
  return NULL;
}

/* Gives a new tensor its initial values: the creator's first piece, or the initializer. */
static int tensor_fill(px_store* s, px_tensor_state* t, const px_declare_args* a,
                       px_waiter** wake, char* err, size_t errlen) {
  if (a->values) return write_values(s, t, a, wake, err, errlen);
  if (a->init_kind != PX_FILL_ZEROS && fill_init(t, a) != 0) {
    snprintf(err, errlen, "tensor '%s': out of memory", a->name);
    return PX_ST_RESOURCE_EXHAUSTED;
  }
  t->init_cursor = t->numel;
  for (uint32_t k = 0; k < t->nown; k++) chunk_ready(s, t, &t->chunks[t->own[k]]);
  return PX_ST_OK;
}

/* Values given for a tensor whose upload is someone else's: they must be the values it
 * holds (a repeat is idempotent; different values are an error, not silently ignored).
 * Compared while every chunk they touch is at version 0 and holds them; a tensor already
 * trained (or a range not uploaded yet) has nothing to compare with. declare_mu held. */
static int same_values(px_tensor_state* t, const px_declare_args* a, char* err, size_t errlen) {
  const size_t es = t->elem;
  if (a->values_len % es != 0 || a->values_offset > t->numel ||
      a->values_len / es > t->numel - a->values_offset) {
    snprintf(err, errlen, "tensor '%s': values [%llu, +%zu bytes) do not fit its %llu elements",
             t->name, (unsigned long long)a->values_offset, a->values_len,
             (unsigned long long)t->numel);
    return PX_ST_INVALID_ARGUMENT;
  }
  uint64_t lo = a->values_offset, hi = lo + a->values_len / es;
  if (hi > t->init_cursor) hi = t->init_cursor;
  for (uint64_t i = lo; i < hi;) {
    px_chunk_state* c = &t->chunks[i / t->chunk_elems];
    uint64_t end = ((uint64_t)c->index + 1) * t->chunk_elems;
    if (end > hi) end = hi;
    if (!c->own) { /* held by another shard, which compares them */
      i = end;
      continue;
    }
    pthread_mutex_lock(&c->mu);
    bool fresh = c->version == 0 && c->ncontrib == 0;
    const uint8_t* have = (const uint8_t*)t->params + i * es;
    const uint8_t* give = a->values + (i - lo) * es;
    uint64_t bad = UINT64_MAX;
    if (fresh && memcmp(have, give, (end - i) * es) != 0)
      for (uint64_t k = 0; k < end - i && bad == UINT64_MAX; k++)
        if (memcmp(have + k * es, give + k * es, es) != 0) bad = i + k;
    pthread_mutex_unlock(&c->mu);
    if (!fresh) return PX_ST_OK; /* trained since: its initial values are gone */
    if (bad != UINT64_MAX) {
      snprintf(err, errlen, "tensor '%s' exists with other initial values (element %llu "
               "differs): every worker must give the creator's values, or none", t->name,
               (unsigned long long)bad);
      return PX_ST_FAILED_PRECONDITION;
    }
    i = end;
  }
  return PX_ST_OK;
}

static int declare_locked(px_store* s, const px_declare_args* a, uint64_t numel,
                          px_tensor_state** out, bool* created, bool* uploads, px_waiter** wake,
                          char* err, size_t errlen) {
  px_tensor_state* t = find_by_name(s, a->name);
  *created = t == NULL;
  *uploads = false;
  if (!t && a->lookup_only) {
    snprintf(err, errlen, "tensor '%s' does not exist, and only a joined worker creates "
             "tensors: call Join first", a->name);
    return PX_ST_FAILED_PRECONDITION;
  }
  if (t) {
    *out = t;
    if (!same_decl(t, a)) {
      char have[160], want[160];
      shape_str(have, sizeof have, t->shape, t->ndim);
      shape_str(want, sizeof want, a->shape, a->ndim);
      snprintf(err, errlen, "tensor '%s' exists as %s %s, not %s %s", a->name,
               px_dtype_name(t->dtype), have, px_dtype_name(a->dtype), want);
      return PX_ST_FAILED_PRECONDITION;
    }
    if (!a->values) return PX_ST_OK;
    if (t->init_cursor < t->numel && t->creator == a->worker_id &&
        a->incarnation > t->creator_incarnation) { /* incarnations only grow */
      /* the creator restarted during its upload: its new incarnation goes on with it */
      px_warn("tensor '%s': worker %u joined again during its upload of the initial values "
              "(%llu of %llu elements); its new incarnation takes the upload over", t->name,
              a->worker_id, (unsigned long long)t->init_cursor, (unsigned long long)t->numel);
      t->creator_incarnation = a->incarnation;
    }
    if (t->init_cursor < t->numel && t->creator == a->worker_id &&
        t->creator_incarnation == a->incarnation) {
      *uploads = true;
      return write_values(s, t, a, wake, err, errlen);
    }
    return same_values(t, a, err, errlen);
  }
  uint64_t need;
  int st = limits_check(s, a, numel, &need, err, errlen);
  if (st != PX_ST_OK) return st;
  t = tensor_new(s, a, numel, err, errlen);
  if (!t) return PX_ST_RESOURCE_EXHAUSTED;
  st = tensor_fill(s, t, a, wake, err, errlen);
  if (st != PX_ST_OK) {
    tensor_free(s, t);
    return st;
  }
  s->tensors[t->id] = t;
  atomic_fetch_add(&s->ctr->store_bytes, (int64_t)need);
  atomic_fetch_add(&s->ctr->params_bytes, (int64_t)(numel * t->elem));
  atomic_fetch_add(&s->ctr->own_chunks, t->nown);
  atomic_store_explicit(&s->ntensors, t->id + 1, memory_order_release);
  px_info("declared tensor %u '%s' %s numel=%llu chunks=%u", t->id, t->name,
          px_dtype_name(t->dtype), (unsigned long long)numel, t->nchunks);
  *out = t;
  *uploads = a->values && t->init_cursor < t->numel;
  return PX_ST_OK;
}

int px_store_declare(px_store* s, const px_declare_args* a, px_tensor_state** out, bool* created,
                     bool* uploads, px_waiter** woken, char* err, size_t errlen) {
  uint64_t numel = 0;
  *woken = NULL;
  int st = args_check(a, &numel, err, errlen);
  if (st != PX_ST_OK) return st;
  px_tensor_state* t = NULL;
  bool up = false;
  pthread_mutex_lock(&s->declare_mu);
  st = declare_locked(s, a, numel, &t, created, &up, woken, err, errlen);
  if (uploads) *uploads = up;
  pthread_mutex_unlock(&s->declare_mu);
  if (st == PX_ST_OK) *out = t;
  return st;
}

int px_store_restore(px_store* s, const char* name, int dtype, const uint64_t* shape,
                     uint32_t ndim, const void* values, uint64_t nbytes, const float* mom,
                     uint64_t version, char* err, size_t errlen) {
  if (px_dtype_size(dtype) == 0) {
    snprintf(err, errlen, "tensor '%s': dtype %s is not a parameter type", name,
             px_dtype_name(dtype));
    return -1;
  }
  px_declare_args a = {0};
  a.name = name;
  a.dtype = dtype;
  a.shape = shape;
  a.ndim = ndim;
  a.values = values;
  a.values_len = nbytes;
  px_tensor_state* t = NULL;
  bool created = false;
  px_waiter* woken = NULL; /* nobody waits before the server starts */
  int st = px_store_declare(s, &a, &t, &created, NULL, &woken, err, errlen);
  if (st != PX_ST_OK || !created) {
    if (st == PX_ST_OK) snprintf(err, errlen, "tensor '%s' appears twice", name);
    return -1;
  }
  for (uint32_t k = 0; k < t->nown; k++) {
    const uint32_t i = t->own[k];
    px_chunk_state* c = &t->chunks[i];
    pthread_mutex_lock(&c->mu);
    c->version = version;
    if (mom && s->backend->momentum) {
      s->backend->ops->chunk_load(s->backend, t->be, i, mom + (uint64_t)i * t->chunk_elems);
      c->mom_first = version == 0;
    }
    pthread_mutex_unlock(&c->mu);
  }
  return 0;
}

uint64_t px_tensor_version_min(px_tensor_state* t, uint64_t* vmax, uint64_t* checksum) {
  uint64_t lo = UINT64_MAX, hi = 0;
  bool ready = true;
  if (t->nown == 0) {
    if (vmax) *vmax = 0;
    if (checksum) *checksum = 0;
    return 0;
  }
  for (uint32_t k = 0; k < t->nown; k++) {
    px_chunk_state* c = &t->chunks[t->own[k]];
    pthread_mutex_lock(&c->mu);
    if (c->version < lo) lo = c->version;
    if (c->version > hi) hi = c->version;
    if (!c->initialized) ready = false;
    pthread_mutex_unlock(&c->mu);
  }
  if (vmax) *vmax = hi;
  if (checksum) {
    *checksum = 0;
    if (ready && lo == hi) {
      /* Hash the tensor chunk by chunk under each chunk's lock; the version check
       * afterwards makes sure no step landed in between. */
      XXH64_state_t* st = XXH64_createState();
      if (st) {
        XXH64_reset(st, 0);
        bool same = true;
        for (uint32_t k = 0; k < t->nown && same; k++) {
          px_chunk_state* c = &t->chunks[t->own[k]];
          pthread_mutex_lock(&c->mu);
          same = c->version == lo;
          XXH64_update(st, c->params, (size_t)c->elems * t->elem);
          pthread_mutex_unlock(&c->mu);
        }
        if (same) *checksum = XXH64_digest(st);
        XXH64_freeState(st);
      }
    }
  }
  return lo;
}

uint64_t px_store_version_min(px_store* s, uint64_t* vmax) {
  uint32_t nt = px_store_count(s);
  uint64_t lo = UINT64_MAX, hi = 0;
  uint32_t held = 0;
  for (uint32_t i = 0; i < nt; i++) {
    if (s->tensors[i]->nown == 0) continue;
    held++;
    uint64_t h;
    uint64_t l = px_tensor_version_min(s->tensors[i], &h, NULL);
    if (l < lo) lo = l;
    if (h > hi) hi = h;
  }
  if (vmax) *vmax = hi;
  return held ? lo : 0;
}

int px_store_foreign(const px_store* s, const px_tensor_state* t, uint32_t c, char* err,
                     size_t errlen) {
  snprintf(err, errlen, "tensor '%s' chunk %u belongs to shard %u, not to this shard %u of %u: "
           "list the shards in shard order", t->name, c,
           px_shard_of(t->name, strlen(t->name), c, s->o.shards), s->o.shard, s->o.shards);
  return PX_ST_FAILED_PRECONDITION;
}
