/* Encoded frames of chunk versions: the per-step delta history and the encode-once cache
 * of every chunk and view. This room only keeps frames; producing them (encoding outside
 * the chunk's lock, on the compute pool) is publish.h's job.
 *
 * For every chunk and view the server keeps the last --history per-step deltas as
 * DELTA_ZSTD frames (integer delta of the bit patterns, zigzag, byte shuffle, zstd).
 * Integer deltas add up modulo 2^width, so the delta from any base within the history is
 * the sum of the per-step ones: the base does not need to be stored. The delta from the
 * previous version is encoded once when a step completes and served to every worker; a
 * frame for another base (or a full chunk) is encoded once on first demand and cached for
 * the current version (PX_CACHE_SLOTS slots per chunk and view).
 *
 * Locking: the px_viewcache of a chunk is guarded by that chunk's lock (store.h), which
 * callers of the functions taking a px_viewcache hold. Frames are immutable once
 * published and reference counted: any thread may send one and drop its reference. */
#ifndef PX_FRAMECACHE_H
#define PX_FRAMECACHE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "counters.h"

#define PX_BASE_NONE UINT64_MAX
#define PX_MAX_HISTORY 16
#define PX_CACHE_SLOTS 4
#define PX_KEY_FULL (UINT64_MAX)    /* cache key of a full chunk, best allowed encoding */
#define PX_KEY_RAW (UINT64_MAX - 1) /* cache key of a full chunk, RAW */

/* An encoded chunk payload, shared by every pull that sends it. */
typedef struct px_frame {
  atomic_int refs;
  uint64_t version;  /* the version it reconstructs */
  uint64_t base;     /* DELTA_ZSTD: the version it applies to; PX_BASE_NONE otherwise */
  uint32_t encoding; /* PX_ENC_* */
  uint64_t checksum; /* px_checksum of the reconstructed chunk (of its view) */
  size_t len;
  size_t cap;        /* allocation size of data (a px_buf_get size) */
  uint8_t* data;
  bool in_history;
  bool counted;           /* published: its cap is counted in *bytes until the last unref */
  _Atomic int64_t* bytes;
} px_frame;

typedef struct px_fcache_opts {
  bool compression;       /* false: RAW frames only (--no-compression) */
  uint32_t history;       /* per-step deltas kept (<= PX_MAX_HISTORY) */
  uint64_t history_bytes; /* budget of all histories */
  int level;              /* zstd level */
  uint64_t memory_limit;  /* no new frame while store_bytes + frame_bytes exceed it (0: off) */
} px_fcache_opts;

typedef struct px_fcache {
  px_fcache_opts o;
  px_counters* ctr;       /* frame_bytes, history_bytes, encodes, cache_hits; store_bytes read */
  _Atomic uint64_t stamp; /* recency of cache slots */
} px_fcache;

/* What a chunk keeps for one view of its parameters (0: the tensor's own dtype, 1: the bf16
 * view of an f32 tensor, enabled when a client first asks for it). */
typedef struct px_viewcache {
  bool enabled;
  bool checksum_valid;
  uint64_t checksum;                /* of this view at the chunk's version */
  px_frame* hist[PX_MAX_HISTORY];   /* hist[i]: delta version-i-1 -> version-i */
  uint32_t nhist;
  /* 1 + the chunk version at which a pull of this view last accepted deltas (0: none
   * yet): steps encode their delta eagerly only while such pulls are recent
   * (px_fcache_eager_delta). */
  uint64_t delta_demand;
  struct {
    uint64_t key;                   /* base version, PX_KEY_FULL or PX_KEY_RAW */
    px_frame* frame;                /* NULL while pending */
    bool used, pending;
    uint64_t stamp;                 /* for least-recently-used eviction */
  } cache[PX_CACHE_SLOTS];          /* frames of the current version */
} px_viewcache;

void px_fcache_init(px_fcache* fc, const px_fcache_opts* o, px_counters* ctr);

/* ---- frames ----------------------------------------------------------------------------- */
/* A frame with room for cap bytes, not yet published; NULL when out of memory. refs = 1. */
px_frame* px_frame_new(px_fcache* fc, size_t cap);
/* Describes a frame just built (len bytes of encoding enc, reconstructing version from
 * base) and counts it in frame_bytes (until its last unref) and encodes. */
void px_frame_publish(px_fcache* fc, px_frame* f, size_t len, uint32_t enc, uint64_t version,
                      uint64_t base, uint64_t checksum);
/* A published copy of len bytes; NULL when out of memory. */
px_frame* px_frame_copy(px_fcache* fc, const void* bytes, size_t len, uint32_t enc,
                        uint64_t version, uint64_t base, uint64_t checksum);
/* A published RAW frame that takes over *buf (a px_buf_get buffer of len bytes: a step's
 * output) instead of copying it: *buf is NULL afterwards. NULL (and *buf kept) when out of
 * memory. */
px_frame* px_frame_adopt(px_fcache* fc, void** buf, size_t len, uint64_t version,
                         uint64_t checksum);
void px_frame_ref(px_frame* f);
void px_frame_unref(void* frame); /* px_release_fn-compatible; accepts NULL */

/* ---- a chunk's views (the chunk's lock held) ------------------------------------------- */
/* Whether the step about to make `next` (the chunk's version + 1) should encode its delta:
 * compression and history are on and a pull of one of the views accepted deltas within the
 * last history+1 versions. Otherwise nobody pulls diffs (raw pulls are the client's default
 * on loopback) and the step publishes RAW frames, without the old bits, the delta or zstd
 * (which cost ResNet-50 with 4 workers ~0.18 s of server CPU per step). */
bool px_fcache_eager_delta(const px_fcache* fc, const px_viewcache vs[2], uint64_t next);
/* Right after a step moved the chunk to `version`: drops the old version's frames and marks
 * pending the ones px_fcache_install_step will install (encode: the step's delta, else its
 * RAW frame), so that pulls wait for them instead of building their own. */
void px_fcache_step_begin(px_fcache* fc, px_viewcache vs[2], uint64_t version, bool encode);
/* Installs what a step of `version` produced for view v: its delta (or NULL), its full
 * frame (or NULL) and the checksum of the view; encode says whether the step encoded its
 * delta (else the history, which has a gap now, is dropped). Clears pending slots nobody
 * will fill. */
void px_fcache_install_step(px_fcache* fc, px_viewcache* vs, uint64_t version, bool encode,
                            px_frame* delta, px_frame* full, uint64_t checksum);
/* When a step's outputs could not be made: clears the cache and the history of every view
 * (pulls then build what they need). */
void px_fcache_step_failed(px_fcache* fc, px_viewcache vs[2]);
/* Drops every cached frame (and the history when history_too). */
void px_fcache_clear(px_fcache* fc, px_viewcache vs[2], bool history_too);

/* The cache key a pull should use for a chunk at version, holding version `have` of the
 * view (PX_BASE_NONE: nothing); records the demand for deltas. */
uint64_t px_fcache_key(px_fcache* fc, px_viewcache* vs, uint64_t version, uint64_t have,
                       bool accept_delta, bool accept_shuffle);

typedef enum {
  PX_FC_HIT,   /* *out is a referenced frame */
  PX_FC_WAIT,  /* a frame for the key is being made: park and look again when woken */
  PX_FC_BUILD, /* nothing for the key: a slot is claimed, the caller starts a build */
  PX_FC_FULL,  /* no memory for another frame within --memory-limit, or every slot busy */
} px_fc_result;
px_fc_result px_fcache_get(px_fcache* fc, px_viewcache* vs, uint64_t version, uint64_t key,
                           px_frame** out);

/* A build of the frame for key at version (see publish.h): begin (the chunk's lock held)
 * checks that the slot is still pending and takes references to the history deltas it
 * needs (*k of them, in hist[]); false when the build is stale. Slots do not record a
 * version: the caller must check, under the same lock, that the chunk is still at version
 * (a step clears the slots, but may claim the same key again for the next version). */
bool px_fcache_build_begin(px_fcache* fc, px_viewcache* vs, uint64_t version, uint64_t key,
                           px_frame* hist[PX_MAX_HISTORY], uint32_t* k);
/* Outside the lock: encodes the frame from the view's current words cur (n words of width
 * w) and the k history deltas (which it releases). NULL when out of memory. */
px_frame* px_fcache_build_encode(px_fcache* fc, const uint8_t* cur, size_t n, int w,
                                 uint64_t version, uint64_t key, px_frame* hist[], uint32_t k,
                                 uint64_t checksum);
/* The chunk's lock held, the chunk still at version (checked by the caller): installs f
 * (NULL: the build failed; a later pull retries) if the slot for key is still pending. */
void px_fcache_build_end(px_fcache* fc, px_viewcache* vs, uint64_t version, uint64_t key,
                         px_frame* f, uint64_t checksum);

#endif
