/* The tensor store: declaration, initial values, chunk frames and buffer recycling. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "codec/codec.h"
#include "codec/diff.h"
#include "codec/safetensors.h"
#include "server.h"

/* ---- buffers ---------------------------------------------------------------------------
 * Size classes are powers of two from 4 KiB; class k holds buffers of 4 KiB << k. */
#define NCLASSES 16
#define BIG_CLASS_BYTES (256u << 10)

static struct {
  pthread_mutex_t mu;
  void* free[NCLASSES];
} g_bufs = {PTHREAD_MUTEX_INITIALIZER, {0}};

static int buf_class(size_t bytes, size_t* cap) {
  int k = 0;
  size_t c = 4096;
  while (c < bytes && k < NCLASSES - 1) {
    c <<= 1;
    k++;
  }
  *cap = c;
  return c >= bytes ? k : -1;
}

void* px_buf_get(size_t bytes) {
  size_t cap;
  int k = buf_class(bytes, &cap);
  if (k < 0) return NULL;
  pthread_mutex_lock(&g_bufs.mu);
  void* p = g_bufs.free[k];
  if (p) g_bufs.free[k] = *(void**)p;
  pthread_mutex_unlock(&g_bufs.mu);
  if (p) return p;
  if (cap >= BIG_CLASS_BYTES) return px_big_alloc(cap);
  return aligned_alloc(64, cap);
}

void px_buf_put(void* p, size_t bytes) {
  if (!p) return;
  size_t cap;
  int k = buf_class(bytes, &cap);
  if (k < 0) abort(); /* never handed out by px_buf_get */
  pthread_mutex_lock(&g_bufs.mu);
  *(void**)p = g_bufs.free[k];
  g_bufs.free[k] = p;
  pthread_mutex_unlock(&g_bufs.mu);
}

pmx_pull* px_chunk_wake(px_service* svc, px_chunk_state* c) {
  pthread_mutex_lock(&svc->park_mu);
  pmx_pull* list = c->waiters;
  c->waiters = NULL;
  for (pmx_pull* p = list; p; p = p->wnext) p->parked_on = NULL;
  pthread_mutex_unlock(&svc->park_mu);
  return list;
}

/* ---- declare ----------------------------------------------------------------------------- */
px_tensor_state* px_store_tensor(px_service* svc, uint32_t id) {
  uint32_t n = atomic_load_explicit(&svc->ntensors, memory_order_acquire);
  return id < n ? svc->tensors[id] : NULL;
}

static px_tensor_state* find_by_name(px_service* svc, const char* name) {
  uint32_t n = atomic_load(&svc->ntensors);
  for (uint32_t i = 0; i < n; i++)
    if (strcmp(svc->tensors[i]->name, name) == 0) return svc->tensors[i];
  return NULL;
}

static void tensor_free(px_service* svc, px_tensor_state* t) {
  if (!t) return;
  svc->backend->ops->tensor_destroy(svc->backend, t);
  if (t->chunks) {
    for (uint32_t i = 0; i < t->nchunks; i++) {
      px_chunk_state* c = &t->chunks[i];
      free(c->contributed);
      free(c->held);
      pthread_mutex_destroy(&c->mu);
    }
  }
  free(t->chunks);
  px_big_free(t->params, t->params_bytes);
  free(t);
}

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

/* Marks chunks whose elements are all present as initialized; returns their waiters. */
static pmx_pull* mark_initialized(px_service* svc, px_tensor_state* t, uint64_t upto) {
  pmx_pull* all = NULL;
  for (uint32_t i = 0; i < t->nchunks; i++) {
    px_chunk_state* c = &t->chunks[i];
    uint64_t end = (uint64_t)i * t->chunk_elems + c->elems;
    if (end > upto) break;
    pthread_mutex_lock(&c->mu);
    if (!c->initialized) {
      c->initialized = true;
      svc->backend->ops->chunk_load(svc->backend, t, c, NULL);
      c->view[0].checksum = px_checksum(c->params, (size_t)c->elems * t->elem);
      c->view[0].checksum_valid = true;
      pmx_pull* w = px_chunk_wake(svc, c);
      while (w) {
        pmx_pull* nx = w->wnext;
        w->wnext = all;
        all = w;
        w = nx;
      }
    }
    pthread_mutex_unlock(&c->mu);
  }
  return all;
}

/* The seeded initializer, generated in f32 and rounded for 16-bit tensors. */
static int fill_init(px_tensor_state* t, const px_declare_args* a) {
  if (t->dtype == PX_DT_F32)
    return px_init_fill_f32(t->params, 0, t->numel, a->init_kind, a->init_a, a->init_b,
                             a->init_seed);
  float* tmp = malloc((size_t)t->chunk_elems * sizeof *tmp);
  if (!tmp) return -1;
  uint16_t* dst = t->params;
  for (uint64_t first = 0; first < t->numel; first += t->chunk_elems) {
    size_t n = t->numel - first < t->chunk_elems ? (size_t)(t->numel - first) : t->chunk_elems;
    px_init_fill_f32(tmp, first, n, a->init_kind, a->init_a, a->init_b, a->init_seed);
    if (t->dtype == PX_DT_BF16) px_f32_to_bf16_n(tmp, dst + first, n);
    else px_f32_to_f16_n(tmp, dst + first, n);
  }
  free(tmp);
  return 0;
}

static int write_values(px_service* svc, px_tensor_state* t, const px_declare_args* a,
                        pmx_pull** wake, char* err, size_t errlen) {
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
  uint64_t skip = t->init_cursor - a->values_offset;
  memcpy((uint8_t*)t->params + t->init_cursor * es, a->values + skip * es, (n - skip) * es);
  t->init_cursor = a->values_offset + n;
  *wake = mark_initialized(svc, t, t->init_cursor);
  return PX_ST_OK;
}

int px_store_declare(px_service* svc, const px_declare_args* a, px_tensor_state** out,
                      bool* created, char* err, size_t errlen) {
  size_t namelen = strlen(a->name);
  if (namelen == 0 || namelen > PX_MAX_NAME) {
    snprintf(err, errlen, "tensor name must be 1..%d bytes (got %zu)", PX_MAX_NAME, namelen);
    return PX_ST_INVALID_ARGUMENT;
  }
  if (px_dtype_size(a->dtype) == 0) {
    snprintf(err, errlen, "tensor '%s': unknown dtype %d (want f32, bf16 or f16)", a->name,
             a->dtype);
    return PX_ST_INVALID_ARGUMENT;
  }
  uint64_t numel;
  if (shape_check(a, &numel, err, errlen) != 0) return PX_ST_INVALID_ARGUMENT;
  size_t es = px_dtype_size(a->dtype);
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

  pmx_pull* wake = NULL;
  int st = PX_ST_OK;
  pthread_mutex_lock(&svc->declare_mu);
  px_tensor_state* t = find_by_name(svc, a->name);
  if (t) {
    *created = false;
    if (!same_decl(t, a)) {
      char have[160], want[160];
      shape_str(have, sizeof have, t->shape, t->ndim);
      shape_str(want, sizeof want, a->shape, a->ndim);
      snprintf(err, errlen, "tensor '%s' exists as %s %s, not %s %s", a->name,
               px_dtype_name(t->dtype), have, px_dtype_name(a->dtype), want);
      st = PX_ST_FAILED_PRECONDITION;
    } else if (a->values && t->creator == a->worker_id &&
               t->creator_incarnation == a->incarnation && t->init_cursor < t->numel) {
      st = write_values(svc, t, a, &wake, err, errlen);
    }
    goto out;
  }
  *created = true;
  if (numel > svc->cfg.max_tensor_bytes / es) {
    snprintf(err, errlen, "tensor '%s': %llu elements exceed --max-tensor-bytes %llu", a->name,
             (unsigned long long)numel, (unsigned long long)svc->cfg.max_tensor_bytes);
    st = PX_ST_RESOURCE_EXHAUSTED;
    goto out;
  }
  uint64_t need = numel * es + (svc->cfg.momentum != 0 ? numel * sizeof(float) : 0);
  int64_t used = atomic_load(&svc->ctr.store_bytes) + atomic_load(&svc->ctr.frame_bytes);
  if (svc->cfg.memory_limit && (uint64_t)used + need > svc->cfg.memory_limit) {
    snprintf(err, errlen, "tensor '%s': %llu more bytes would exceed --memory-limit %llu (%lld in use)",
             a->name, (unsigned long long)need, (unsigned long long)svc->cfg.memory_limit,
             (long long)used);
    st = PX_ST_RESOURCE_EXHAUSTED;
    goto out;
  }
  uint32_t n = atomic_load(&svc->ntensors);
  if (n >= svc->cfg.max_tensors) {
    snprintf(err, errlen, "tensor '%s': the server holds --max-tensors %u tensors", a->name,
             svc->cfg.max_tensors);
    st = PX_ST_RESOURCE_EXHAUSTED;
    goto out;
  }
  t = calloc(1, sizeof *t);
  if (!t) goto oom;
  t->id = n;
  t->elem = es;
  memcpy(t->name, a->name, namelen + 1);
  t->dtype = a->dtype;
  t->ndim = (uint32_t)a->ndim;
  memcpy(t->shape, a->shape, a->ndim * sizeof *a->shape);
  t->numel = numel;
  t->chunk_elems = (uint32_t)(svc->cfg.chunk_bytes / 4);
  t->nchunks = (uint32_t)((numel + t->chunk_elems - 1) / t->chunk_elems);
  t->params_bytes = numel * es;
  t->params = px_big_alloc(t->params_bytes);
  t->chunks = calloc(t->nchunks, sizeof *t->chunks);
  if (!t->params || !t->chunks) goto oom;
  t->creator = a->worker_id;
  t->creator_incarnation = a->incarnation;
  for (uint32_t i = 0; i < t->nchunks; i++) {
    px_chunk_state* c = &t->chunks[i];
    uint64_t first = (uint64_t)i * t->chunk_elems;
    c->index = i;
    c->elems = (uint32_t)(numel - first < t->chunk_elems ? numel - first : t->chunk_elems);
    c->params = (uint8_t*)t->params + first * es;
    c->view[0].enabled = true;
    c->mom_first = true;
    c->contributed = calloc(svc->cfg.workers, 1);
    c->held = calloc(svc->cfg.workers, sizeof *c->held);
    pthread_mutex_init(&c->mu, NULL);
    if (!c->contributed || !c->held) goto oom;
  }
  /* the backend's state: momentum, sums, device memory (cuda) */
  if (svc->backend->ops->tensor_create(svc->backend, t, err, errlen) != 0) {
    tensor_free(svc, t);
    t = NULL;
    st = PX_ST_RESOURCE_EXHAUSTED;
    goto out;
  }
  if (a->values) {
    st = write_values(svc, t, a, &wake, err, errlen);
    if (st != PX_ST_OK) {
      tensor_free(svc, t);
      goto out;
    }
  } else {
    if (a->init_kind != PX_FILL_ZEROS && fill_init(t, a) != 0) goto oom;
    t->init_cursor = numel;
    for (uint32_t i = 0; i < t->nchunks; i++) {
      px_chunk_state* c = &t->chunks[i];
      c->initialized = true;
      svc->backend->ops->chunk_load(svc->backend, t, c, NULL);
      c->view[0].checksum = px_checksum(c->params, (size_t)c->elems * es);
      c->view[0].checksum_valid = true;
    }
  }
  svc->tensors[n] = t;
  atomic_fetch_add(&svc->ctr.store_bytes, (int64_t)need);
  atomic_store_explicit(&svc->ntensors, n + 1, memory_order_release);
  px_info("declared tensor %u '%s' %s numel=%llu chunks=%u", t->id, t->name,
           px_dtype_name(t->dtype), (unsigned long long)numel, t->nchunks);
  goto out;
oom:
  tensor_free(svc, t);
  t = NULL;
  snprintf(err, errlen, "tensor '%s': out of memory", a->name);
  st = PX_ST_RESOURCE_EXHAUSTED;
out:
  pthread_mutex_unlock(&svc->declare_mu);
  px_pulls_resume(wake);
  if (st == PX_ST_OK) *out = t;
  return st;
}

int px_store_restore(px_service* svc, const struct px_st_tensor* e, const void* mom,
                      uint64_t version, char* err, size_t errlen) {
  if (px_dtype_size(e->dtype) == 0) {
    snprintf(err, errlen, "tensor '%s': dtype %s is not a parameter type", e->name,
             px_st_dtype_name(e->dtype));
    return -1;
  }
  px_declare_args a = {0};
  a.name = e->name;
  a.dtype = e->dtype;
  a.shape = e->shape;
  a.ndim = e->ndim;
  a.values = e->data;
  a.values_len = e->nbytes;
  px_tensor_state* t = NULL;
  bool created = false;
  int st = px_store_declare(svc, &a, &t, &created, err, errlen);
  if (st != PX_ST_OK || !created) {
    if (st == PX_ST_OK) snprintf(err, errlen, "tensor '%s' appears twice", e->name);
    return -1;
  }
  for (uint32_t i = 0; i < t->nchunks; i++) {
    px_chunk_state* c = &t->chunks[i];
    pthread_mutex_lock(&c->mu);
    c->version = version;
    if (mom && svc->backend->momentum) {
      svc->backend->ops->chunk_load(svc->backend, t, c,
                                    (const float*)mom + (uint64_t)i * t->chunk_elems);
      c->mom_first = version == 0;
    }
    pthread_mutex_unlock(&c->mu);
  }
  return 0;
}

uint64_t px_tensor_version_min(px_tensor_state* t, uint64_t* vmax, uint64_t* checksum) {
  uint64_t lo = UINT64_MAX, hi = 0;
  bool ready = true;
  for (uint32_t i = 0; i < t->nchunks; i++) {
    px_chunk_state* c = &t->chunks[i];
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
      XXH64_state_t* s = XXH64_createState();
      if (s) {
        XXH64_reset(s, 0);
        bool same = true;
        for (uint32_t i = 0; i < t->nchunks && same; i++) {
          px_chunk_state* c = &t->chunks[i];
          pthread_mutex_lock(&c->mu);
          same = c->version == lo;
          XXH64_update(s, c->params, (size_t)c->elems * t->elem);
          pthread_mutex_unlock(&c->mu);
        }
        if (same) *checksum = XXH64_digest(s);
        XXH64_freeState(s);
      }
    }
  }
  return lo;
}
