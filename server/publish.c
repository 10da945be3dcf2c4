/* Frame production (publish.h). */
#include "publish.h"

#include <stdlib.h>
#include <string.h>

#include "codec/checksum.h"
#include "codec/payload.h"
#include "codec/zstdframe.h"
#include "util/scratch.h"

/* The step's frames of view v, encoded outside the lock: its delta (when encoding) and,
 * when there is no delta worth sending, the RAW frame that takes over the step's output. */
static void encode_view(px_publish* p, px_tensor_state* t, px_chunk_state* c, int v,
                        uint64_t version, px_step_io* io, bool encode, px_frame** delta,
                        px_frame** full, uint64_t* sum) {
  const size_t raw = (size_t)c->elems * (size_t)px_view_width(t, v);
  *sum = px_checksum(io->bits[v], raw);
  *delta = *full = NULL;
  if (encode) {
    size_t cap = px_zstd_bound(raw);
    px_frame* f = px_frame_new(p->fc, cap);
    if (f) {
      size_t len = io->enc[v] ? px_zstd_compress(io->enc[v], raw, f->data, cap, p->fc->o.level)
                              : 0;
      px_frame_publish(p->fc, f, len, PX_ENC_DELTA_ZSTD, version, version - 1, *sum);
      if (f->len == 0) {
        px_frame_unref(f);
        f = NULL;
      }
    }
    *delta = f;
    if (!f || f->len * 100 >= raw * 95) *full = px_frame_adopt(p->fc, &io->bits[v], raw, version, *sum);
  } else {
    /* the step's output becomes the frame: no copy of the chunk */
    *full = px_frame_adopt(p->fc, &io->bits[v], raw, version, *sum);
  }
}

void px_publish_step(px_publish* p, px_tensor_state* t, px_chunk_state* c, uint64_t version,
                     px_step_io* io) {
  px_frame* delta[2] = {NULL, NULL};
  px_frame* full[2] = {NULL, NULL};
  uint64_t sums[2] = {0, 0};
  const bool want[2] = {io->bits[0] != NULL, io->bits[1] != NULL};
  const bool encode = io->enc[0] != NULL; /* the step's delta is wanted */
  for (int v = 0; v < 2; v++)
    if (want[v]) encode_view(p, t, c, v, version, io, encode, &delta[v], &full[v], &sums[v]);

  pthread_mutex_lock(&c->mu);
  if (c->version == version) {
    if (!want[0]) {
      px_fcache_step_failed(p->fc, c->view);
    } else {
      for (int v = 0; v < 2; v++)
        if (want[v])
          px_fcache_install_step(p->fc, &c->view[v], version, encode, delta[v], full[v], sums[v]);
    }
  }
  px_waiter* wake = px_waiters_take(p->waiters, &c->waiters);
  pthread_mutex_unlock(&c->mu);
  for (int v = 0; v < 2; v++) {
    px_frame_unref(delta[v]);
    px_frame_unref(full[v]);
  }
  px_waiters_run(wake);
}

/* ---- builds on demand ------------------------------------------------------------------- */

typedef struct build_job {
  px_job job;
  px_publish* p;
  px_tensor_state* t;
  px_chunk_state* c;
  int view;
  uint64_t key;
  uint64_t version;
} build_job;

static void build_run(px_job* j) {
  build_job* b = (build_job*)j;
  px_publish* p = b->p;
  px_chunk_state* c = b->c;
  const int v = b->view, w = px_view_width(b->t, v);
  const size_t n = c->elems, raw = n * (size_t)w;
  px_frame* hist[PX_MAX_HISTORY];
  uint32_t k = 0;
  uint8_t* cur = px_scratch(0, raw);
  px_viewcache* vs = &c->view[v];

  pthread_mutex_lock(&c->mu);
  bool ok = cur && c->version == b->version &&
            px_fcache_build_begin(p->fc, vs, b->version, b->key, hist, &k);
  if (ok) p->backend->ops->read_view(p->backend, b->t->be, c->index, v, cur);
  pthread_mutex_unlock(&c->mu);

  px_frame* f = NULL;
  uint64_t sum = 0;
  if (ok) {
    sum = px_checksum(cur, raw);
    f = px_fcache_build_encode(p->fc, cur, n, w, b->version, b->key, hist, k, sum);
  }
  pthread_mutex_lock(&c->mu);
  if (c->version == b->version) px_fcache_build_end(p->fc, vs, b->version, b->key, f, sum);
  px_waiter* wake = px_waiters_take(p->waiters, &c->waiters);
  pthread_mutex_unlock(&c->mu);
  px_frame_unref(f);
  free(b);
  px_waiters_run(wake);
}

bool px_publish_build(px_publish* p, px_tensor_state* t, px_chunk_state* c, int view, uint64_t key) {
  build_job* b = calloc(1, sizeof *b);
  if (!b) {
    px_fcache_build_end(p->fc, &c->view[view], c->version, key, NULL, 0);
    return false;
  }
  b->job.fn = build_run;
  b->p = p;
  b->t = t;
  b->c = c;
  b->view = view;
  b->key = key;
  b->version = c->version;
  px_taskpool_submit(p->pool, &b->job);
  return true;
}
