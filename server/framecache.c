/* Frames and the per-view history and cache (framecache.h). */
#include "framecache.h"

#include <stdlib.h>
#include <string.h>

#include "codec/payload.h"
#include "codec/transform.h"
#include "codec/zstdframe.h"
#include "util/bufpool.h"
#include "util/scratch.h"

void px_fcache_init(px_fcache* fc, const px_fcache_opts* o, px_counters* ctr) {
  memset(fc, 0, sizeof *fc);
  fc->o = *o;
  if (fc->o.history > PX_MAX_HISTORY) fc->o.history = PX_MAX_HISTORY;
  fc->ctr = ctr;
}

/* ---- frames ----------------------------------------------------------------------------- */

/* A frame around data (a px_buf_get buffer of cap bytes, which it then owns). */
static px_frame* frame_wrap(px_fcache* fc, void* data, size_t cap) {
  px_frame* f = calloc(1, sizeof *f);
  if (!f) return NULL;
  f->data = data;
  f->cap = cap;
  atomic_init(&f->refs, 1);
  f->base = PX_BASE_NONE;
  f->bytes = &fc->ctr->frame_bytes;
  return f;
}

px_frame* px_frame_new(px_fcache* fc, size_t cap) {
  if (cap == 0) cap = 1;
  void* data = px_buf_get(cap);
  px_frame* f = data ? frame_wrap(fc, data, cap) : NULL;
  if (!f) px_buf_put(data, cap);
  return f;
}

void px_frame_publish(px_fcache* fc, px_frame* f, size_t len, uint32_t enc, uint64_t version,
                      uint64_t base, uint64_t checksum) {
  f->len = len;
  f->encoding = enc;
  f->version = version;
  f->base = base;
  f->checksum = checksum;
  if (!f->counted) atomic_fetch_add(f->bytes, (int64_t)f->cap);
  f->counted = true;
  atomic_fetch_add(&fc->ctr->encodes, 1);
}

px_frame* px_frame_copy(px_fcache* fc, const void* bytes, size_t len, uint32_t enc,
                        uint64_t version, uint64_t base, uint64_t checksum) {
  px_frame* f = px_frame_new(fc, len);
  if (!f) return NULL;
  memcpy(f->data, bytes, len);
  px_frame_publish(fc, f, len, enc, version, base, checksum);
  return f;
}

px_frame* px_frame_adopt(px_fcache* fc, void** buf, size_t len, uint64_t version,
                         uint64_t checksum) {
  px_frame* f = frame_wrap(fc, *buf, len);
  if (!f) return NULL;
  *buf = NULL;
  px_frame_publish(fc, f, len, PX_ENC_RAW, version, PX_BASE_NONE, checksum);
  return f;
}

void px_frame_ref(px_frame* f) { atomic_fetch_add(&f->refs, 1); }

void px_frame_unref(void* fp) {
  px_frame* f = fp;
  if (!f) return;
  if (atomic_fetch_sub(&f->refs, 1) != 1) return;
  if (f->counted) atomic_fetch_sub(f->bytes, (int64_t)f->cap);
  px_buf_put(f->data, f->cap);
  free(f);
}

/* ---- cache slots -------------------------------------------------------------------------- */

static int slot_find(px_viewcache* vs, uint64_t key) {
  for (int i = 0; i < PX_CACHE_SLOTS; i++)
    if (vs->cache[i].used && vs->cache[i].key == key) return i;
  return -1;
}

/* A slot for key: a free one, else the least recently used that is not pending; -1 when
 * every slot is pending. */
static int slot_claim(px_fcache* fc, px_viewcache* vs, uint64_t key) {
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
  vs->cache[best].stamp = atomic_fetch_add(&fc->stamp, 1) + 1;
  return best;
}

static void slot_install(px_fcache* fc, px_viewcache* vs, uint64_t key, px_frame* f) {
  int i = slot_find(vs, key);
  if (i < 0) i = slot_claim(fc, vs, key);
  if (i < 0) return;
  px_frame_unref(vs->cache[i].frame);
  px_frame_ref(f);
  vs->cache[i].frame = f;
  vs->cache[i].pending = false;
}

static void cache_clear(px_viewcache* vs) {
  for (int i = 0; i < PX_CACHE_SLOTS; i++) {
    px_frame_unref(vs->cache[i].frame);
    memset(&vs->cache[i], 0, sizeof vs->cache[i]);
  }
}

static void hist_drop_from(px_fcache* fc, px_viewcache* vs, uint32_t keep) {
  while (vs->nhist > keep) {
    px_frame* f = vs->hist[--vs->nhist];
    vs->hist[vs->nhist] = NULL;
    atomic_fetch_sub(&fc->ctr->history_bytes, (int64_t)f->cap);
    px_frame_unref(f);
  }
}

void px_fcache_clear(px_fcache* fc, px_viewcache vs[2], bool history_too) {
  for (int v = 0; v < 2; v++) {
    cache_clear(&vs[v]);
    if (history_too) hist_drop_from(fc, &vs[v], 0);
  }
}

/* ---- steps ------------------------------------------------------------------------------- */

bool px_fcache_eager_delta(const px_fcache* fc, const px_viewcache vs[2], uint64_t next) {
  if (!fc->o.compression || fc->o.history == 0) return false;
  /* the version the step makes, against the last version a pull wanted diffs from */
  const uint64_t window = (uint64_t)fc->o.history + 1;
  for (int v = 0; v < 2; v++) {
    const uint64_t d = vs[v].delta_demand;
    if (vs[v].enabled && d > 0 && next <= d - 1 + window) return true;
  }
  return false;
}

void px_fcache_step_begin(px_fcache* fc, px_viewcache vs[2], uint64_t version, bool encode) {
  encode = encode && fc->o.compression && fc->o.history > 0;
  for (int v = 0; v < 2; v++) {
    cache_clear(&vs[v]);
    vs[v].checksum_valid = false;
    if (!vs[v].enabled) continue;
    if (encode) {
      slot_claim(fc, &vs[v], version - 1);
    } else {
      if (!fc->o.compression) slot_claim(fc, &vs[v], PX_KEY_FULL);
      slot_claim(fc, &vs[v], PX_KEY_RAW);
    }
  }
}

/* The step's delta becomes the newest history entry; the history keeps its budget. */
static void hist_push(px_fcache* fc, px_viewcache* vs, uint64_t version, px_frame* delta) {
  if (vs->nhist > 0 && vs->hist[0]->version + 1 != version) hist_drop_from(fc, vs, 0);
  hist_drop_from(fc, vs, fc->o.history - 1);
  memmove(&vs->hist[1], &vs->hist[0], vs->nhist * sizeof vs->hist[0]);
  vs->hist[0] = delta;
  delta->in_history = true;
  px_frame_ref(delta);
  vs->nhist++;
  atomic_fetch_add(&fc->ctr->history_bytes, (int64_t)delta->cap);
  /* over budget: this chunk gives up its oldest deltas (it keeps its newest) */
  while (vs->nhist > 1 && atomic_load(&fc->ctr->history_bytes) > (int64_t)fc->o.history_bytes)
    hist_drop_from(fc, vs, vs->nhist - 1);
}

void px_fcache_install_step(px_fcache* fc, px_viewcache* vs, uint64_t version, bool encode,
                            px_frame* delta, px_frame* full, uint64_t checksum) {
  vs->checksum = checksum;
  vs->checksum_valid = true;
  if (!encode) hist_drop_from(fc, vs, 0); /* a gap: nobody pulls diffs now */
  if (delta) {
    hist_push(fc, vs, version, delta);
    slot_install(fc, vs, version - 1, full ? full : delta);
  } else if (full) {
    if (encode) {
      slot_install(fc, vs, version - 1, full);
    } else {
      if (!fc->o.compression) slot_install(fc, vs, PX_KEY_FULL, full);
      slot_install(fc, vs, PX_KEY_RAW, full);
    }
  } else {
    /* a pending slot nobody will fill (encoding failed) must not stall pulls */
    for (int i = 0; i < PX_CACHE_SLOTS; i++)
      if (vs->cache[i].used && vs->cache[i].pending &&
          (vs->cache[i].key == version - 1 || vs->cache[i].key >= PX_KEY_RAW))
        memset(&vs->cache[i], 0, sizeof vs->cache[i]);
  }
}

void px_fcache_step_failed(px_fcache* fc, px_viewcache vs[2]) { px_fcache_clear(fc, vs, true); }

/* ---- lookups ------------------------------------------------------------------------------ */

uint64_t px_fcache_key(px_fcache* fc, px_viewcache* vs, uint64_t version, uint64_t have,
                       bool accept_delta, bool accept_shuffle) {
  uint64_t full = accept_shuffle && fc->o.compression ? PX_KEY_FULL : PX_KEY_RAW;
  if (!fc->o.compression) return PX_KEY_FULL; /* RAW frames, shared by both keys */
  if (accept_delta && version + 1 > vs->delta_demand) vs->delta_demand = version + 1;
  if (!accept_delta || have == PX_BASE_NONE || have >= version) return full;
  if (slot_find(vs, have) >= 0) return have;
  uint64_t k = version - have;
  if (k <= vs->nhist && vs->hist[k - 1]->version == have + 1) return have;
  /* The step that made this version is still being encoded (its delta is not in the
   * history yet): the history will cover the base once it is; wait for it. */
  int st = slot_find(vs, version - 1);
  if (st >= 0 && vs->cache[st].pending && k >= 2 && k - 1 <= vs->nhist &&
      k <= fc->o.history && vs->hist[k - 2]->version == have + 1) /* within its reach then */
    return have;
  return full;
}

px_fc_result px_fcache_get(px_fcache* fc, px_viewcache* vs, uint64_t version, uint64_t key,
                           px_frame** out) {
  *out = NULL;
  int i = slot_find(vs, key);
  if (i >= 0 && !vs->cache[i].pending) {
    vs->cache[i].stamp = atomic_fetch_add(&fc->stamp, 1) + 1;
    px_frame_ref(vs->cache[i].frame);
    atomic_fetch_add(&fc->ctr->cache_hits, 1);
    *out = vs->cache[i].frame;
    return PX_FC_HIT;
  }
  if (i >= 0) return PX_FC_WAIT; /* being built */
  if (key < PX_KEY_RAW) {
    int st = slot_find(vs, version - 1);
    if (st >= 0 && vs->cache[st].pending) return PX_FC_WAIT; /* the step's delta comes first */
  }
  if (fc->o.memory_limit &&
      (uint64_t)(atomic_load(&fc->ctr->store_bytes) + atomic_load(&fc->ctr->frame_bytes)) >
          fc->o.memory_limit)
    return PX_FC_FULL;
  /* every slot busy: a finishing build wakes us */
  return slot_claim(fc, vs, key) < 0 ? PX_FC_WAIT : PX_FC_BUILD;
}

/* ---- builds ------------------------------------------------------------------------------- */

bool px_fcache_build_begin(px_fcache* fc, px_viewcache* vs, uint64_t version, uint64_t key,
                           px_frame* hist[PX_MAX_HISTORY], uint32_t* k) {
  (void)fc;
  (void)version;
  *k = 0;
  int slot = slot_find(vs, key);
  if (slot < 0 || !vs->cache[slot].pending) return false;
  if (key < PX_KEY_RAW) {
    uint32_t want = (uint32_t)(version - key);
    if (want == 0 || want > vs->nhist) want = 0;
    for (uint32_t i = 0; i < want; i++) {
      hist[i] = vs->hist[i];
      px_frame_ref(hist[i]);
    }
    *k = want;
  }
  return true;
}

/* delta(base -> version) as the sum of the k per-step deltas, encoded. */
static px_frame* encode_summed(px_fcache* fc, size_t n, int w, uint64_t version, uint64_t base,
                               px_frame* hist[], uint32_t k, uint64_t checksum) {
  const size_t raw = n * (size_t)w, cap = px_zstd_bound(raw);
  uint8_t* acc = px_scratch(1, raw);
  uint8_t* d = malloc(raw);
  bool good = acc && d && px_decode_delta_words(hist[0]->data, hist[0]->len, n, w, acc) == 0;
  for (uint32_t i = 1; good && i < k; i++) {
    good = px_decode_delta_words(hist[i]->data, hist[i]->len, n, w, d) == 0;
    if (good) px_delta_add(acc, d, n, w);
  }
  free(d);
  px_frame* f = good ? px_frame_new(fc, cap) : NULL;
  if (!f) return NULL;
  size_t len = px_encode_delta_words(acc, n, w, fc->o.level, f->data, cap);
  px_frame_publish(fc, f, len, PX_ENC_DELTA_ZSTD, version, base, checksum);
  if (f->len == 0 || f->len * 100 >= raw * 95) {
    px_frame_unref(f);
    return NULL;
  }
  return f;
}

px_frame* px_fcache_build_encode(px_fcache* fc, const uint8_t* cur, size_t n, int w,
                                 uint64_t version, uint64_t key, px_frame* hist[], uint32_t k,
                                 uint64_t checksum) {
  const size_t raw = n * (size_t)w;
  px_frame* f = NULL;
  if (k > 0) {
    f = encode_summed(fc, n, w, version, key, hist, k, checksum);
  } else if (key == PX_KEY_FULL && fc->o.compression) {
    size_t cap = px_zstd_bound(raw);
    uint8_t* z = malloc(cap);
    size_t zl = z ? px_encode_shuffle(cur, n, w, fc->o.level, z, cap) : 0;
    if (zl > 0 && zl * 100 < raw * 95)
      f = px_frame_copy(fc, z, zl, PX_ENC_SHUFFLE_ZSTD, version, PX_BASE_NONE, checksum);
    free(z);
  }
  if (!f) f = px_frame_copy(fc, cur, raw, PX_ENC_RAW, version, PX_BASE_NONE, checksum);
  for (uint32_t i = 0; i < k; i++) px_frame_unref(hist[i]);
  return f;
}

void px_fcache_build_end(px_fcache* fc, px_viewcache* vs, uint64_t version, uint64_t key,
                         px_frame* f, uint64_t checksum) {
  (void)version;
  int slot = slot_find(vs, key);
  if (slot < 0 || !vs->cache[slot].pending) return;
  if (f) {
    slot_install(fc, vs, key, f);
    if (!vs->checksum_valid) {
      vs->checksum = checksum;
      vs->checksum_valid = true;
    }
  } else {
    memset(&vs->cache[slot], 0, sizeof vs->cache[slot]); /* let a later pull retry */
  }
}
