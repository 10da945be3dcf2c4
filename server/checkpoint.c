/* Checkpoints: consistent (every chunk at one version), written atomically as safetensors
 * by a thread of their own, restored at start.
 *
 * A checkpoint at version V copies each chunk's parameters and momentum as they are at V:
 * a chunk already at V is copied when the checkpoint starts, a chunk still below V when
 * it arrives at V (after its step), and a chunk about to leave V just before its step.
 * Copies are taken under the chunk's lock; the file is written outside every lock. */
#include "checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "codec/dtype.h"
#include "format/safetensors_read.h"
#include "format/safetensors_write.h"
#include "rpc/rpc_base.h"
#include "rpc/rpc_server.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/mem.h"
#include "paramex.pb-c.h"


struct ckpt_copy {
  uint64_t gen;
  uint64_t version;
  uint32_t ntensors;
  void** params;   /* [ntensors] copies */
  float** mom;     /* [ntensors] copies, NULL without momentum */
  size_t* pbytes;
  size_t* mbytes;
  size_t remaining; /* chunks not captured yet (under ckpt.mu) */
  uint32_t pins;    /* request()s still walking the chunks: the writer waits for them */
  bool final;       /* at shutdown: no push comes any more */
  char reason[24];
  uint64_t started_ms;
};

typedef struct ckpt_waiter {
  px_srv_call* call;
  struct ckpt_waiter* next;
} ckpt_waiter;

static void ckpt_free(ckpt_copy* k) {
  if (!k) return;
  for (uint32_t i = 0; i < k->ntensors; i++) {
    px_big_free(k->params[i], k->pbytes[i]);
    if (k->mom) px_big_free(k->mom[i], k->mbytes[i]);
  }
  free(k->params);
  free(k->mom);
  free(k->pbytes);
  free(k->mbytes);
  free(k);
}

/* ---- capture --------------------------------------------------------------------------- */

/* Copies chunk c into k (c->mu held). */
static void capture(px_ckpt* ck, ckpt_copy* k, px_tensor_state* t, px_chunk_state* c) {
  if (t->id >= k->ntensors || c->ckpt_gen == k->gen) return;
  uint64_t first = (uint64_t)c->index * t->chunk_elems;
  float* mom = k->mom && k->mom[t->id] ? k->mom[t->id] + first : NULL;
  if (mom && c->mom_first) { /* no momentum yet: zeros, whatever the backend holds */
    memset(mom, 0, (size_t)c->elems * sizeof(float));
    mom = NULL;
  }
  ck->store->backend->ops->snapshot(ck->store->backend, t->be, c->index,
                                    (uint8_t*)k->params[t->id] + first * t->elem, mom);
  c->ckpt_gen = k->gen;
  pthread_mutex_lock(&ck->mu);
  if (--k->remaining == 0) pthread_cond_broadcast(&ck->cv);
  pthread_mutex_unlock(&ck->mu);
}

/* A new pending checkpoint of the tensors declared now (ckpt.mu held). */
static ckpt_copy* ckpt_new(px_ckpt* ck, uint64_t version, const char* reason) {
  ckpt_copy* k = calloc(1, sizeof *k);
  if (!k) return NULL;
  uint32_t nt = atomic_load_explicit(&ck->store->ntensors, memory_order_acquire);
  k->gen = ++ck->gen;
  k->version = version;
  k->ntensors = nt;
  k->params = calloc(nt ? nt : 1, sizeof *k->params);
  k->pbytes = calloc(nt ? nt : 1, sizeof *k->pbytes);
  k->mbytes = calloc(nt ? nt : 1, sizeof *k->mbytes);
  if (ck->o.momentum) k->mom = calloc(nt ? nt : 1, sizeof *k->mom);
  snprintf(k->reason, sizeof k->reason, "%s", reason);
  k->started_ms = px_now_ms();
  bool ok = k->params && k->pbytes && k->mbytes && (!ck->o.momentum || k->mom);
  for (uint32_t i = 0; ok && i < nt; i++) {
    px_tensor_state* t = ck->store->tensors[i];
    k->pbytes[i] = t->params_bytes;
    k->mbytes[i] = t->numel * sizeof(float);
    k->params[i] = px_big_alloc(t->params_bytes);
    ok = k->params[i] != NULL;
    if (ok && k->mom) ok = (k->mom[i] = px_big_alloc(k->mbytes[i])) != NULL;
    k->remaining += t->nown;
  }
  if (!ok) {
    ckpt_free(k);
    px_error("checkpoint at version %" PRIu64 ": out of memory for the copies", version);
    return NULL;
  }
  pthread_cond_broadcast(&ck->cv); /* the writer: it looks for idle chunks while k waits */
  return k;
}

void px_ckpt_before_step(px_ckpt* ck, px_tensor_state* t, px_chunk_state* c) {
  if (!ck->o.dir) return;
  pthread_mutex_lock(&ck->mu);
  ckpt_copy* k = ck->pending;
  bool take = k && k->version == c->version && c->ckpt_gen != k->gen;
  pthread_mutex_unlock(&ck->mu);
  if (take) capture(ck, k, t, c);
}

void px_ckpt_after_step(px_ckpt* ck, px_tensor_state* t, px_chunk_state* c) {
  if (!ck->o.dir) return;
  pthread_mutex_lock(&ck->mu);
  ckpt_copy* k = ck->pending;
  if (!k && ck->o.every && c->version % ck->o.every == 0 &&
      c->version > ck->last_version)
    k = ck->pending = ckpt_new(ck, c->version, "periodic");
  bool take = k && k->version == c->version && c->ckpt_gen != k->gen;
  pthread_mutex_unlock(&ck->mu);
  if (take) capture(ck, k, t, c);
}

/* Chunks below k's version that no step will move: nobody contributed to their current
 * step although every worker already pushed step k->version or left (or, at shutdown, no
 * push comes any more). A tensor nobody pushes (frozen, pull-only, declared by a client
 * that never joined) is such a chunk at every checkpoint: its values are those of every
 * version, and it is copied as it is (it once kept every checkpoint from completing). */
static void capture_idle(px_ckpt* ck, ckpt_copy* k) {
  if (!k->final && !px_members_all_pushed(ck->members, k->version)) return;
  for (uint32_t i = 0; i < k->ntensors; i++) {
    px_tensor_state* t = ck->store->tensors[i];
    for (uint32_t j = 0; j < t->nown; j++) {
      px_chunk_state* c = &t->chunks[t->own[j]];
      pthread_mutex_lock(&c->mu);
      if (c->initialized && c->version < k->version && c->ncontrib == 0 && c->ckpt_gen != k->gen)
        capture(ck, k, t, c);
      pthread_mutex_unlock(&c->mu);
    }
  }
}

/* Starts a checkpoint at the newest version any chunk has (or joins the one in progress).
 * Returns its generation, 0 on failure. */
static uint64_t request(px_ckpt* ck, const char* reason, bool final) {
  uint64_t vmax = 0;
  px_store_version_min(ck->store, &vmax);
  pthread_mutex_lock(&ck->mu);
  ckpt_copy* k = ck->pending;
  if (!k) k = ck->pending = ckpt_new(ck, vmax, reason);
  if (k && final) k->final = true;
  uint64_t gen = k ? k->gen : 0;
  if (k) k->pins++; /* its last capture below must not let the writer free it under us */
  pthread_mutex_unlock(&ck->mu);
  if (!k) return 0;
  /* chunks already at the version are copied now; the others on arrival */
  for (uint32_t i = 0; i < k->ntensors; i++) {
    px_tensor_state* t = ck->store->tensors[i];
    for (uint32_t j = 0; j < t->nown; j++) {
      px_chunk_state* c = &t->chunks[t->own[j]];
      pthread_mutex_lock(&c->mu);
      if (c->initialized && c->version == k->version) capture(ck, k, t, c);
      pthread_mutex_unlock(&c->mu);
    }
  }
  capture_idle(ck, k);
  pthread_mutex_lock(&ck->mu);
  if (--k->pins == 0 && k->remaining == 0) pthread_cond_broadcast(&ck->cv);
  pthread_mutex_unlock(&ck->mu);
  return gen;
}

/* ---- writing ------------------------------------------------------------------------------ */

typedef struct write_ctx {
  px_ckpt* ck;
  ckpt_copy* k;
} write_ctx;

static int write_tensor(void* ctx, size_t index, px_st_sink* sink) {
  write_ctx* w = ctx;
  ckpt_copy* k = w->k;
  size_t ti = k->mom ? index / 2 : index;
  bool mom = k->mom && index % 2 == 1;
  if (mom) return px_st_sink_write(sink, k->mom[ti], w->ck->store->tensors[ti]->numel * sizeof(float));
  return px_st_sink_write(sink, k->params[ti], k->pbytes[ti]);
}

static int name_version(const char* name, uint64_t* v) {
  unsigned long long x;
  int used = 0;
  if (sscanf(name, "ckpt-%20llu.safetensors%n", &x, &used) != 1 || name[used] != 0) return -1;
  *v = x;
  return 0;
}

/* Checkpoint files of dir, newest first. Returns their count (at most cap). */
size_t px_ckpt_list(const char* dir, uint64_t* versions, size_t cap) {
  DIR* d = opendir(dir);
  if (!d) return 0;
  size_t n = 0;
  struct dirent* e;
  while ((e = readdir(d)) != NULL) {
    uint64_t v;
    if (name_version(e->d_name, &v) != 0) continue;
    if (n < cap) versions[n++] = v;
  }
  closedir(d);
  for (size_t i = 1; i < n; i++) /* insertion sort, descending */
    for (size_t j = i; j > 0 && versions[j] > versions[j - 1]; j--) {
      uint64_t x = versions[j];
      versions[j] = versions[j - 1];
      versions[j - 1] = x;
    }
  return n;
}

void px_ckpt_path(char* buf, size_t cap, const char* dir, uint64_t version) {
  snprintf(buf, cap, "%s%sckpt-%020" PRIu64 ".safetensors", dir ? dir : "", dir ? "/" : "",
           version);
}

void px_ckpt_set_aside(const char* dir, const uint64_t* vs, size_t n, const char* suffix) {
  for (size_t i = 0; i < n; i++) {
    char from[PX_CKPT_PATH_MAX], to[PX_CKPT_PATH_MAX + 32];
    px_ckpt_path(from, sizeof from, dir, vs[i]);
    snprintf(to, sizeof to, "%s%s", from, suffix);
    if (rename(from, to) == 0) px_warn("checkpoint %s set aside as %s", from, to);
    else px_warn("cannot set %s aside: %s", from, strerror(errno));
  }
}

static void finish_waiters(px_ckpt* ck, ckpt_waiter* w, int status, const char* msg,
                           uint64_t version, const char* path, uint64_t bytes) {
  (void)ck;
  while (w) {
    ckpt_waiter* next = w->next;
    if (status == PX_ST_OK) {
      Paramex__V1__CheckpointResponse r = PARAMEX__V1__CHECKPOINT_RESPONSE__INIT;
      r.version = version;
      r.path = (char*)path;
      r.bytes = bytes;
      size_t n = paramex__v1__checkpoint_response__get_packed_size(&r);
      uint8_t* buf = malloc(n ? n : 1); /* a long path does not fit a fixed buffer */
      if (buf) {
        paramex__v1__checkpoint_response__pack(&r, buf);
        px_out out = {buf, n, NULL, 0, NULL, NULL};
        px_srv_call_finish(w->call, &out, PX_ST_OK, NULL);
        free(buf);
      } else {
        px_srv_call_finish(w->call, NULL, PX_ST_RESOURCE_EXHAUSTED,
                           "checkpoint written, but no memory for the response");
      }
    } else {
      px_srv_call_finish(w->call, NULL, status, msg);
    }
    px_srv_call_unref(w->call);
    free(w);
    w = next;
  }
}

static int write_checkpoint(px_ckpt* ck, ckpt_copy* k, char* path, size_t pathlen,
                            uint64_t* bytes, char* err, size_t errlen) {
  size_t n = (size_t)k->ntensors * (k->mom ? 2 : 1);
  px_st_entry* e = calloc(n ? n : 1, sizeof *e);
  char (*names)[PX_MAX_NAME + 16] = calloc(n ? n : 1, sizeof *names);
  if (!e || !names) {
    free(e);
    free(names);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  *bytes = 0;
  for (uint32_t i = 0, j = 0; i < k->ntensors; i++) {
    px_tensor_state* t = ck->store->tensors[i];
    e[j] = (px_st_entry){t->name, t->dtype, t->ndim, t->shape, t->params_bytes};
    *bytes += t->params_bytes;
    j++;
    if (k->mom) {
      snprintf(names[j], sizeof names[j], "%s" PX_CKPT_MOM_SUFFIX, t->name);
      e[j] = (px_st_entry){names[j], PX_DT_F32, t->ndim, t->shape, t->numel * sizeof(float)};
      *bytes += t->numel * sizeof(float);
      j++;
    }
  }
  /* metadata: the version, the workers' incarnations (so that they need not rejoin) and
   * which of them left (finished) */
  char version[32], workers[16], server[80];
  snprintf(version, sizeof version, "%" PRIu64, k->version);
  snprintf(workers, sizeof workers, "%u", ck->members->n);
  snprintf(server, sizeof server, "%s", ck->o.server_id);
  size_t inc_cap = (size_t)ck->members->n * 21 + 1;
  char* inc = malloc(inc_cap);
  if (inc) px_members_incarnations(ck->members, inc, inc_cap);
  size_t left_cap = (size_t)ck->members->n * 11 + 1;
  char* left = malloc(left_cap);
  if (left) px_members_left_list(ck->members, left, left_cap);
  char shard[16], shards[16];
  snprintf(shard, sizeof shard, "%u", ck->store->o.shard);
  snprintf(shards, sizeof shards, "%u", ck->store->o.shards);
  const char* meta[] = {"pmx.version", version, "pmx.workers", workers, "pmx.server_id", server,
                        "pmx.incarnations", inc ? inc : "", "pmx.left", left ? left : "",
                        "pmx.momentum", k->mom ? "1" : "0", "pmx.shard", shard,
                        "pmx.shards", shards, "pmx.state",
                        k->mom && ck->o.state ? ck->o.state : "none"};
  char name[64];
  px_ckpt_path(name, sizeof name, NULL, k->version);
  write_ctx ctx = {ck, k};
  struct stat sb;
  if (stat(ck->o.dir, &sb) != 0 && errno == ENOENT) { /* removed under us: made again */
    if (mkdir(ck->o.dir, 0755) == 0)
      px_warn("--checkpoint-dir %s had disappeared: created it again", ck->o.dir);
  }
  int rc = px_st_write(ck->o.dir, name, e, n, write_tensor, &ctx, meta,
                        sizeof meta / sizeof meta[0] / 2, err, errlen);
  snprintf(path, pathlen, "%s/%s", ck->o.dir, name);
  free(inc);
  free(left);
  free(e);
  free(names);
  if (rc != 0) return -1;
  /* keep the newest --keep */
  uint64_t vs[1024];
  size_t nv = px_ckpt_list(ck->o.dir, vs, 1024);
  for (size_t i = ck->o.keep; i < nv; i++) {
    char old[PX_CKPT_PATH_MAX];
    px_ckpt_path(old, sizeof old, ck->o.dir, vs[i]);
    if (unlink(old) != 0) px_warn("checkpoint: cannot remove %s: %s", old, strerror(errno));
  }
  return 0;
}

static void* ckpt_thread(void* arg) {
  px_ckpt* ck = arg;
  uint64_t next_timed = ck->o.interval > 0
                            ? px_now_ms() + (uint64_t)(ck->o.interval * 1000.0)
                            : UINT64_MAX;
  pthread_mutex_lock(&ck->mu);
  for (;;) {
    ckpt_copy* k = ck->pending;
    if (k && k->remaining == 0 && k->pins == 0) {
      ck->pending = NULL;
      ckpt_waiter* w = ck->waiters;
      ck->waiters = NULL;
      pthread_mutex_unlock(&ck->mu);
      char path[600], err[512];
      uint64_t bytes = 0, t0 = px_now_ms(), n0 = px_now_ns();
      int rc = write_checkpoint(ck, k, path, sizeof path, &bytes, err, sizeof err);
      px_hist_observe_ns(&ck->seconds, px_now_ns() - n0);
      struct stat fst; /* the file's size, header included (bytes: the data) */
      const uint64_t fsize = rc == 0 && stat(path, &fst) == 0 ? (uint64_t)fst.st_size : bytes;
      if (rc == 0)
        px_info("checkpoint written: %s (version %" PRIu64 ", %" PRIu64 " bytes, %s, %" PRIu64
                 " ms)", path, k->version, bytes, k->reason, px_now_ms() - t0);
      else
        px_error("checkpoint at version %" PRIu64 " failed, the previous one is intact: %s",
                  k->version, err);
      pthread_mutex_lock(&ck->mu);
      if (rc == 0) {
        ck->written++;
        ck->last_version = k->version;
        ck->last_bytes = fsize;
        ck->last_unix_ms = px_wall_ms();
        snprintf(ck->last_path, sizeof ck->last_path, "%s", path);
      } else {
        ck->failures++;
      }
      ck->done_gen = k->gen;
      ck->done_ok = rc == 0;
      pthread_cond_broadcast(&ck->cv);
      pthread_mutex_unlock(&ck->mu);
      finish_waiters(ck, w, rc == 0 ? PX_ST_OK : PX_ST_FAILED_PRECONDITION, err, k->version,
                     path, bytes);
      /* the steps went past a periodic version while k was captured or written (its own
       * could not start then): catch up at the newest version */
      uint64_t vmax = 0;
      px_store_version_min(ck->store, &vmax);
      bool behind = ck->o.every && vmax / ck->o.every * ck->o.every > k->version;
      ckpt_free(k);
      if (behind && !ck->stop) request(ck, "periodic", false);
      pthread_mutex_lock(&ck->mu);
      continue;
    }
    if (ck->stop) break;
    uint64_t now = px_now_ms();
    if (now >= next_timed) {
      next_timed = now + (uint64_t)(ck->o.interval * 1000.0);
      if (!ck->pending && atomic_load(&ck->store->ntensors) > 0) {
        pthread_mutex_unlock(&ck->mu);
        request(ck, "interval", false);
        pthread_mutex_lock(&ck->mu);
      }
      continue;
    }
    if (k && k->remaining > 0) {
      /* chunks that no step will bring to k's version: looked for every 20 ms while k
       * waits (k stays valid: only this thread frees a pending checkpoint) */
      uint64_t nap = next_timed - now < 20 ? next_timed - now : 20;
      struct timespec ts;
      px_deadline_ts(&ts, CLOCK_MONOTONIC, (int64_t)nap);
      pthread_cond_timedwait(&ck->cv, &ck->mu, &ts);
      if (ck->pending == k && k->remaining > 0 && !ck->stop) {
        k->pins++;
        pthread_mutex_unlock(&ck->mu);
        capture_idle(ck, k);
        pthread_mutex_lock(&ck->mu);
        k->pins--;
      }
    } else if (next_timed == UINT64_MAX) {
      pthread_cond_wait(&ck->cv, &ck->mu);
    } else {
      struct timespec ts;
      px_deadline_ts(&ts, CLOCK_MONOTONIC, (int64_t)(next_timed - now));
      pthread_cond_timedwait(&ck->cv, &ck->mu, &ts);
    }
  }
  pthread_mutex_unlock(&ck->mu);
  return NULL;
}

/* ---- lifecycle ------------------------------------------------------------------------------ */

int px_ckpt_init(px_ckpt* ck, const px_ckpt_opts* o, px_store* store, px_members* members,
                 char* err, size_t errlen) {
  memset(ck, 0, sizeof *ck);
  px_hist_init_exp(&ck->seconds, 0.01, 2, 16); /* 10 ms .. 5.5 min */
  ck->o = *o;
  ck->store = store;
  ck->members = members;
  pthread_mutex_init(&ck->mu, NULL);
  px_cond_init_monotonic(&ck->cv);
  if (!ck->o.dir) return 0;
  if (mkdir(ck->o.dir, 0755) != 0 && errno != EEXIST) {
    snprintf(err, errlen, "--checkpoint-dir %s: %s", ck->o.dir, strerror(errno));
    return -1;
  }
  struct stat st;
  if (stat(ck->o.dir, &st) != 0 || !S_ISDIR(st.st_mode) ||
      access(ck->o.dir, W_OK) != 0) {
    snprintf(err, errlen, "--checkpoint-dir %s: not a writable directory", ck->o.dir);
    return -1;
  }
  if (pthread_create(&ck->thread, NULL, ckpt_thread, ck) != 0) {
    snprintf(err, errlen, "cannot start the checkpoint thread");
    return -1;
  }
  ck->thread_started = true;
  /* temp files of writes that a crash interrupted */
  DIR* d = opendir(ck->o.dir);
  struct dirent* e;
  while (d && (e = readdir(d)) != NULL) {
    if (strncmp(e->d_name, ".ckpt-", 6) != 0 || !strstr(e->d_name, ".tmp")) continue;
    char p[600];
    snprintf(p, sizeof p, "%s/%s", ck->o.dir, e->d_name);
    if (unlink(p) == 0) px_info("removed %s, left by an interrupted checkpoint", p);
  }
  if (d) closedir(d);
  return 0;
}


int px_ckpt_now(px_ckpt* ck, px_srv_call* waiter, const char* reason) {
  if (!ck->o.dir) return -1;
  if (waiter) {
    ckpt_waiter* w = calloc(1, sizeof *w);
    if (!w) return -1;
    px_srv_call_ref(waiter);
    w->call = waiter;
    pthread_mutex_lock(&ck->mu);
    w->next = ck->waiters;
    ck->waiters = w;
    pthread_mutex_unlock(&ck->mu);
  }
  return request(ck, reason, false) ? 0 : -1;
}

int px_ckpt_final(px_ckpt* ck, int64_t wait_ms) {
  if (!ck->o.dir) return 0;
  uint64_t gen = request(ck, "shutdown", true);
  if (!gen) return -1;
  struct timespec until;
  px_deadline_ts(&until, CLOCK_MONOTONIC, wait_ms);
  pthread_mutex_lock(&ck->mu);
  while (ck->done_gen < gen)
    if (pthread_cond_timedwait(&ck->cv, &ck->mu, &until) != 0) break;
  int rc = 0;
  ckpt_copy* k = ck->pending;
  if (ck->done_gen >= gen && !ck->done_ok) rc = -1; /* the write failed */
  if (ck->done_gen < gen && k)
    px_warn("final checkpoint at version %" PRIu64 " not written: %zu chunks never reached it "
             "(a step was in progress); the newest checkpoint is version %" PRIu64,
             k->version, k->remaining, ck->last_version);
  pthread_mutex_unlock(&ck->mu);
  return rc;
}

void px_ckpt_fail_waiters(px_ckpt* ck) {
  pthread_mutex_lock(&ck->mu);
  ckpt_waiter* w = ck->waiters;
  ck->waiters = NULL;
  pthread_mutex_unlock(&ck->mu);
  finish_waiters(ck, w, PX_ST_UNAVAILABLE, "server is shutting down", 0, NULL, 0);
}

void px_ckpt_shutdown(px_ckpt* ck) {
  pthread_mutex_lock(&ck->mu);
  ck->stop = true;
  pthread_cond_broadcast(&ck->cv);
  ckpt_waiter* w = ck->waiters;
  ck->waiters = NULL;
  ckpt_copy* k = ck->pending;
  ck->pending = NULL;
  pthread_mutex_unlock(&ck->mu);
  if (ck->thread_started) pthread_join(ck->thread, NULL);
  finish_waiters(ck, w, PX_ST_UNAVAILABLE, "server is shutting down", 0, NULL, 0);
  ckpt_free(k);
  pthread_mutex_destroy(&ck->mu);
  pthread_cond_destroy(&ck->cv);
}

void px_ckpt_get_info(px_ckpt* ck, px_ckpt_info* out) {
  pthread_mutex_lock(&ck->mu);
  out->written = ck->written;
  out->failures = ck->failures;
  out->last_version = ck->last_version;
  out->last_bytes = ck->last_bytes;
  out->last_unix_ms = ck->last_unix_ms;
  out->restored_version = ck->restored_version;
  snprintf(out->last_path, sizeof out->last_path, "%s", ck->last_path);
  pthread_mutex_unlock(&ck->mu);
}
