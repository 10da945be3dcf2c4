/* Encoded frames of chunk versions: the per-step delta history, the encode-once cache
 * and the build jobs that fill it on the compute pool.
 *
 * For every chunk and view the server keeps the last --history per-step deltas as
 * DELTA_ZSTD frames (integer delta of the bit patterns, zigzag, byte shuffle, zstd).
 * Integer deltas add up modulo 2^width, so the delta from any base within the history is
 * the sum of the per-step ones: the base does not need to be stored. The delta from the
 * previous version is encoded once when a step completes and served to every worker; a
 * frame for another base (or a full chunk) is encoded once on first demand and cached
 * for the current version. */
#include <stdlib.h>
#include <string.h>

#include "codec/codec.h"
#include "codec/diff.h"
#include "codec/frame.h"
#include "server.h"

/* A frame around data (a px_buf_get buffer of cap bytes, which it then owns). */
static px_frame* frame_wrap(void* data, size_t cap) {
  px_frame* f = calloc(1, sizeof *f);
  if (!f) return NULL;
  f->data = data;
  f->cap = cap;
  atomic_init(&f->refs, 1);
  f->base = PX_BASE_NONE;
  return f;
}

px_frame* px_frame_new(size_t cap) {
  if (cap == 0) cap = 1;
  void* data = px_buf_get(cap);
  px_frame* f = data ? frame_wrap(data, cap) : NULL;
  if (!f) px_buf_put(data, cap);
  return f;
}

static _Atomic int64_t* g_frame_bytes; /* the service's counter, set at first use */

void px_frame_unref(void* fp) {
  px_frame* f = fp;
  if (!f) return;
  if (atomic_fetch_sub(&f->refs, 1) != 1) return;
  if (g_frame_bytes) atomic_fetch_sub(g_frame_bytes, (int64_t)f->cap);
  px_buf_put(f->data, f->cap);
  free(f);
}

/* Describes a frame just built (len bytes of encoding enc, reconstructing version from
 * base) and counts it: frame_bytes (until its last unref) and encodes. */
static void frame_publish(px_service* svc, px_frame* f, size_t len, uint32_t enc,
                          uint64_t version, uint64_t base, uint64_t checksum) {
  f->len = len;
  f->encoding = enc;
  f->version = version;
  f->base = base;
  f->checksum = checksum;
  g_frame_bytes = &svc->ctr.frame_bytes;
  atomic_fetch_add(&svc->ctr.frame_bytes, (int64_t)f->cap);
  atomic_fetch_add(&svc->ctr.encodes, 1);
}

static px_frame* frame_from(px_service* svc, const void* bytes, size_t len, uint32_t enc,
                             uint64_t version, uint64_t base, uint64_t checksum) {
  px_frame* f = px_frame_new(len);
  if (!f) return NULL;
  memcpy(f->data, bytes, len);
  frame_publish(svc, f, len, enc, version, base, checksum);
  return f;
}

/* A RAW frame that takes over *buf (a px_buf_get buffer of len bytes: a step's output),
 * instead of copying it: *buf is NULL afterwards. NULL (and *buf kept) when out of memory. */
static px_frame* frame_adopt(px_service* svc, void** buf, size_t len, uint64_t version,
                              uint64_t checksum) {
  px_frame* f = frame_wrap(*buf, len);
  if (!f) return NULL;
  *buf = NULL;
  frame_publish(svc, f, len, PX_ENC_RAW, version, PX_BASE_NONE, checksum);
  return f;
}

int px_view_width(const px_tensor_state* t, int v) { return v == 1 ? 2 : (int)t->elem; }


/* ---- cache ------------------------------------------------------------------------------ */

static _Atomic uint64_t g_stamp; /* recency of cache slots */

static int slot_find(px_view_state* vs, uint64_t key) {
  for (int i = 0; i < PX_CACHE_SLOTS; i++)
    if (vs->cache[i].used && vs->cache[i].key == key) return i;
  return -1;
}

/* A slot for key: a free one, else the least recently used that is not pending; -1 when
 * every slot is pending. */
static int slot_claim(px_view_state* vs, uint64_t key) {
  int best = -1;
  for (int i = 0; i < PX_CACHE_SLOTS; i++) {
    if (!vs->cache[i].used) {
      best = i;
      break;
    }
    if (!vs->cache[i].pending && (best < 0 || vs->cache[i].stamp < vs->cache[best].stamp))
      best = i;
  }
  if (best < 0) return -1;
  px_frame_unref(vs->cache[best].frame);
  vs->cache[best].frame = NULL;
  vs->cache[best].used = true;
  vs->cache[best].pending = true;
  vs->cache[best].key = key;
  vs->cache[best].stamp = ++g_stamp;
  return best;
}

static void slot_install(px_view_state* vs, uint64_t key, px_frame* f) {
  int i = slot_find(vs, key);
  if (i < 0) i = slot_claim(vs, key);
  if (i < 0) return;
  px_frame_unref(vs->cache[i].frame);
  atomic_fetch_add(&f->refs, 1);
  vs->cache[i].frame = f;
  vs->cache[i].pending = false;
}

static void cache_clear(px_view_state* vs) {
  for (int i = 0; i < PX_CACHE_SLOTS; i++) {
    px_frame_unref(vs->cache[i].frame);
    memset(&vs->cache[i], 0, sizeof vs->cache[i]);
  }
}

static void hist_drop_from(px_service* svc, px_view_state* vs, uint32_t keep) {
  while (vs->nhist > keep) {
    px_frame* f = vs->hist[--vs->nhist];
    vs->hist[vs->nhist] = NULL;
    atomic_fetch_sub(&svc->ctr.history_bytes, (int64_t)f->cap);
    px_frame_unref(f);
  }
}

void px_frames_clear(px_service* svc, px_chunk_state* c, bool history_too) {
  for (int v = 0; v < 2; v++) {
    cache_clear(&c->view[v]);
    if (history_too) hist_drop_from(svc, &c->view[v], 0);
  }
}

/* Called under c->mu right after c->version was incremented: the old version's frames go,
 * and the frames that px_frames_after_step will install are marked pending so that pulls
 * wait for them instead of building their own. */
static void mark_pending_after_step(px_service* svc, px_chunk_state* c, bool encode) {
  for (int v = 0; v < 2; v++) {
    px_view_state* vs = &c->view[v];
    cache_clear(vs);
    vs->checksum_valid = false;
    if (!vs->enabled) continue;
    if (encode) {
      slot_claim(vs, c->version - 1);
    } else {
      if (!svc->cfg.compression) slot_claim(vs, PX_KEY_FULL);
      slot_claim(vs, PX_KEY_RAW);
    }
  }
}

void px_frames_step_begin(px_service* svc, px_chunk_state* c, bool encode) {
  mark_pending_after_step(svc, c, encode && svc->cfg.compression && svc->cfg.history > 0);
}

bool px_frames_eager_delta(px_service* svc, px_chunk_state* c) {
  if (!svc->cfg.compression || svc->cfg.history == 0) return false;
  /* the version the step makes, against the last version a pull wanted diffs from */
  const uint64_t next = c->version + 1, window = (uint64_t)svc->cfg.history + 1;
  for (int v = 0; v < 2; v++) {
    const uint64_t d = c->view[v].delta_demand;
    if (c->view[v].enabled && d > 0 && next <= d - 1 + window) return true;
  }
  return false;
}

void px_step_io_init(px_service* svc, px_tensor_state* t, px_chunk_state* c, bool view1,
                      bool encode, px_step_io* io) {
  const size_t n = c->elems;
  const bool v1 = view1 && t->dtype == PX_DT_F32;
  const bool enc = encode && svc->cfg.compression && svc->cfg.history > 0;
  memset(io, 0, sizeof *io);
  io->bits[0] = px_buf_get(n * t->elem);
  if (v1) io->bits[1] = px_buf_get(n * 2);
  if (enc) io->enc[0] = px_buf_get(n * t->elem);
  if (enc && v1) io->enc[1] = px_buf_get(n * 2);
  if (!io->bits[0] || (v1 && !io->bits[1]) || (enc && !io->enc[0]) || (enc && v1 && !io->enc[1]))
    px_step_io_free(t, c, io); /* all or nothing: no bits[0] means "failed" */
}

void px_step_io_free(px_tensor_state* t, px_chunk_state* c, px_step_io* io) {
  const size_t n = c->elems;
  px_buf_put(io->bits[0], n * t->elem);
  px_buf_put(io->bits[1], n * 2);
  px_buf_put(io->enc[0], n * t->elem);
  px_buf_put(io->enc[1], n * 2);
  memset(io, 0, sizeof *io);
}

void px_frames_after_step(px_service* svc, px_tensor_state* t, px_chunk_state* c,
                           uint64_t version, const void* old_bits, const void* new_bits) {
  pthread_mutex_lock(&c->mu);
  bool view1 = c->view[1].enabled;
  pthread_mutex_unlock(&c->mu);
  px_step_io io;
  px_step_io_init(svc, t, c, view1, true, &io);
  if (io.bits[0]) {
    px_step_outputs(t, c->elems, old_bits, new_bits, &io);
    px_frames_after_step_io(svc, t, c, version, &io);
  } else {
    px_frames_after_step_failed(svc, c, version);
  }
  px_step_io_free(t, c, &io);
}

void px_frames_after_step_io(px_service* svc, px_tensor_state* t, px_chunk_state* c,
                              uint64_t version, px_step_io* io) {
  px_frame* delta[2] = {NULL, NULL};
  px_frame* full[2] = {NULL, NULL};
  uint64_t sums[2] = {0, 0};
  const bool want[2] = {io->bits[0] != NULL, io->bits[1] != NULL};
  const bool encode = io->enc[0] != NULL; /* the step's delta is wanted */

  const size_t n = c->elems;
  for (int v = 0; v < 2; v++) {
    if (!want[v]) continue;
    int w = px_view_width(t, v);
    size_t raw = n * (size_t)w;
    const void* nb = io->bits[v];
    sums[v] = px_checksum(nb, raw);
    if (encode) {
      size_t cap = px_zstd_bound(raw);
      px_frame* f = px_frame_new(cap);
      if (f) {
        size_t len = io->enc[v] ? px_zstd_compress(io->enc[v], raw, f->data, cap,
                                                    (int)svc->cfg.compression_level)
                                : 0;
        frame_publish(svc, f, len, PX_ENC_DELTA_ZSTD, version, version - 1, sums[v]);
        if (f->len == 0) {
          px_frame_unref(f);
          f = NULL;
        }
      }
      delta[v] = f;
      if (!f || f->len * 100 >= raw * 95) full[v] = frame_adopt(svc, &io->bits[v], raw, version, sums[v]);
    } else {
      /* the step's output becomes the frame: no copy of the chunk */
      full[v] = frame_adopt(svc, &io->bits[v], raw, version, sums[v]);
    }
  }

  pthread_mutex_lock(&c->mu);
  if (c->version == version) {
    for (int v = 0; v < 2; v++) {
      if (!want[v]) continue;
      px_view_state* vs = &c->view[v];
      vs->checksum = sums[v];
      vs->checksum_valid = true;
      if (!encode) hist_drop_from(svc, vs, 0); /* a gap: nobody pulls diffs now */
      if (delta[v]) {
        if (vs->nhist > 0 && vs->hist[0]->version + 1 != version) hist_drop_from(svc, vs, 0);
        hist_drop_from(svc, vs, svc->cfg.history - 1);
        memmove(&vs->hist[1], &vs->hist[0], vs->nhist * sizeof vs->hist[0]);
        vs->hist[0] = delta[v];
        delta[v]->in_history = true;
        atomic_fetch_add(&delta[v]->refs, 1);
        vs->nhist++;
        atomic_fetch_add(&svc->ctr.history_bytes, (int64_t)delta[v]->cap);
        /* over budget: this chunk gives up its oldest deltas (it keeps its newest) */
        while (vs->nhist > 1 &&
               atomic_load(&svc->ctr.history_bytes) > (int64_t)svc->cfg.history_bytes)
          hist_drop_from(svc, vs, vs->nhist - 1);
        slot_install(vs, version - 1, full[v] ? full[v] : delta[v]);
      } else if (full[v]) {
        if (encode) {
          slot_install(vs, version - 1, full[v]);
        } else {
          if (!svc->cfg.compression) slot_install(vs, PX_KEY_FULL, full[v]);
          slot_install(vs, PX_KEY_RAW, full[v]);
        }
      }
      /* a pending slot nobody will fill (encoding failed) must not stall pulls */
      for (int i = 0; i < PX_CACHE_SLOTS; i++)
        if (vs->cache[i].used && vs->cache[i].pending && !delta[v] && !full[v] &&
            (vs->cache[i].key == version - 1 || vs->cache[i].key >= PX_KEY_RAW))
          memset(&vs->cache[i], 0, sizeof vs->cache[i]);
    }
  }
  pmx_pull* wake = px_chunk_wake(svc, c);
  pthread_mutex_unlock(&c->mu);
  for (int v = 0; v < 2; v++) {
    px_frame_unref(delta[v]);
    px_frame_unref(full[v]);
  }
  px_pulls_resume(wake);
}

/* ---- builds on demand ---------------------------------------------------------------------- */

typedef struct build_job {
  px_job job;
  px_service* svc;
  px_tensor_state* t;
  px_chunk_state* c;
  int view;
  uint64_t key;
  uint64_t version;
} build_job;

static void build_run(px_job* j) {
  build_job* b = (build_job*)j;
  px_service* svc = b->svc;
  px_tensor_state* t = b->t;
  px_chunk_state* c = b->c;
  const int v = b->view, w = px_view_width(t, v);
  const size_t n = c->elems, raw = n * (size_t)w;
  px_frame* hist[PX_MAX_HISTORY];
  uint32_t k = 0;
  px_frame* f = NULL;
  uint8_t* cur = px_scratch(0, raw);
  bool ok = cur != NULL;

  pthread_mutex_lock(&c->mu);
  px_view_state* vs = &c->view[v];
  int slot = slot_find(vs, b->key);
  if (!ok || c->version != b->version || slot < 0 || !vs->cache[slot].pending) {
    ok = false;
  } else {
    svc->backend->ops->read_view(svc->backend, t, c, v, cur);
    if (b->key < PX_KEY_RAW) {
      k = (uint32_t)(b->version - b->key);
      if (k == 0 || k > vs->nhist) k = 0;
      for (uint32_t i = 0; i < k; i++) {
        hist[i] = vs->hist[i];
        atomic_fetch_add(&hist[i]->refs, 1);
      }
    }
  }
  pthread_mutex_unlock(&c->mu);

  uint64_t sum = 0;
  if (ok) {
    sum = px_checksum(cur, raw);
    const int level = (int)svc->cfg.compression_level;
    size_t cap = px_zstd_bound(raw);
    if (k > 0) {
      /* sum the per-step deltas: delta(base -> version) */
      uint8_t* acc = px_scratch(1, raw);
      uint8_t* d = malloc(raw);
      bool good = acc && d && px_decode_delta_words(hist[0]->data, hist[0]->len, n, w, acc) == 0;
      for (uint32_t i = 1; good && i < k; i++) {
        good = px_decode_delta_words(hist[i]->data, hist[i]->len, n, w, d) == 0;
        if (good) px_delta_add(acc, d, n, w);
      }
      free(d);
      if (good) {
        f = px_frame_new(cap);
        if (f) {
          size_t len = px_encode_delta_words(acc, n, w, level, f->data, cap);
          frame_publish(svc, f, len, PX_ENC_DELTA_ZSTD, b->version, b->key, sum);
          if (f->len == 0 || f->len * 100 >= raw * 95) {
            px_frame_unref(f);
            f = NULL;
          }
        }
      }
    } else if (b->key == PX_KEY_FULL && svc->cfg.compression) {
      uint8_t* z = malloc(cap);
      size_t zl = z ? px_encode_shuffle(cur, n, w, level, z, cap) : 0;
      if (zl > 0 && zl * 100 < raw * 95)
        f = frame_from(svc, z, zl, PX_ENC_SHUFFLE_ZSTD, b->version, PX_BASE_NONE, sum);
      free(z);
    }
    if (!f) f = frame_from(svc, cur, raw, PX_ENC_RAW, b->version, PX_BASE_NONE, sum);
  }
  for (uint32_t i = 0; i < k; i++) px_frame_unref(hist[i]);

  pthread_mutex_lock(&c->mu);
  slot = slot_find(vs, b->key);
  if (slot >= 0 && vs->cache[slot].pending && c->version == b->version) {
    if (f) {
      slot_install(vs, b->key, f);
      if (!vs->checksum_valid) {
        vs->checksum = sum;
        vs->checksum_valid = true;
      }
    } else {
      memset(&vs->cache[slot], 0, sizeof vs->cache[slot]); /* let a later pull retry */
    }
  }
  pmx_pull* wake = px_chunk_wake(svc, c);
  pthread_mutex_unlock(&c->mu);
  px_frame_unref(f);
  free(b);
  px_pulls_resume(wake);
}

uint64_t px_frames_key(px_service* svc, px_chunk_state* c, int view, uint64_t have,
                        bool accept_delta, bool accept_shuffle) {
  px_view_state* vs = &c->view[view];
  uint64_t full = accept_shuffle && svc->cfg.compression ? PX_KEY_FULL : PX_KEY_RAW;
  if (!svc->cfg.compression) return PX_KEY_FULL; /* RAW frames, shared by both keys */
  if (accept_delta && c->version + 1 > vs->delta_demand) vs->delta_demand = c->version + 1;
  if (!accept_delta || have == PX_BASE_NONE || have >= c->version) return full;
  if (slot_find(vs, have) >= 0) return have;
  uint64_t k = c->version - have;
  if (k <= vs->nhist && vs->hist[k - 1]->version == have + 1) return have;
  /* The step that made this version is still being encoded (its delta is not in the
   * history yet): the history will cover the base once it is; wait for it. */
  int st = slot_find(vs, c->version - 1);
  if (st >= 0 && vs->cache[st].pending && k - 1 <= vs->nhist && k >= 2 &&
      vs->hist[k - 2]->version == have + 1)
    return have;
  return full;
}

px_frame* px_frames_get(px_service* svc, px_tensor_state* t, px_chunk_state* c, int view,
                          uint64_t key, bool* must_wait) {
  px_view_state* vs = &c->view[view];
  *must_wait = false;
  int i = slot_find(vs, key);
  if (i >= 0 && !vs->cache[i].pending) {
    vs->cache[i].stamp = ++g_stamp;
    atomic_fetch_add(&vs->cache[i].frame->refs, 1);
    atomic_fetch_add(&svc->ctr.cache_hits, 1);
    return vs->cache[i].frame;
  }
  *must_wait = true;
  if (i >= 0) return NULL; /* being built */
  if (key < PX_KEY_RAW) {
    int st = slot_find(vs, c->version - 1);
    if (st >= 0 && vs->cache[st].pending) return NULL; /* the step's delta comes first */
  }
  if (svc->cfg.memory_limit &&
      (uint64_t)(atomic_load(&svc->ctr.store_bytes) + atomic_load(&svc->ctr.frame_bytes)) >
          svc->cfg.memory_limit) {
    *must_wait = false; /* the caller answers RESOURCE_EXHAUSTED naming --memory-limit */
    return NULL;
  }
  build_job* b = calloc(1, sizeof *b);
  if (!b || slot_claim(vs, key) < 0) {
    free(b);
    return NULL; /* every slot busy: a finishing build wakes us */
  }
  b->job.fn = build_run;
  b->svc = svc;
  b->t = t;
  b->c = c;
  b->view = view;
  b->key = key;
  b->version = c->version;
  px_pool_submit(svc->pool, &b->job);
  return NULL;
}

void px_frames_after_step_failed(px_service* svc, px_chunk_state* c, uint64_t version) {
  pthread_mutex_lock(&c->mu);
  if (c->version == version) {
    for (int v = 0; v < 2; v++) {
      cache_clear(&c->view[v]);             /* pulls then build what they need */
      hist_drop_from(svc, &c->view[v], 0);  /* the history has a gap now */
    }
  }
  pmx_pull* wake = px_chunk_wake(svc, c);
  pthread_mutex_unlock(&c->mu);
  px_pulls_resume(wake);
}
