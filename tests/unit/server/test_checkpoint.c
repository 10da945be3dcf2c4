/* Unit tests of server/checkpoint.c (checkpoint.h): px_ckpt_now writes
 * ckpt-%020d.safetensors at the newest version with every tensor and its momentum
 * (compared byte for byte with the store and with an SGD reference computed here) and the
 * pmx.* metadata; --checkpoint-every; captures that stay at one version while steps go on
 * (the before- and after-step hooks); --keep; px_ckpt_restore into a fresh service
 * (parameters, version, momentum, incarnations), skipping a corrupt newest file or one of
 * another --workers with a warning; a directory that cannot be used; a write that fails;
 * px_ckpt_final; px_ckpt_get_info. Steps are driven through px_agg_push on a service
 * initialised from flags without its gRPC server (server_fixture.h). Checkpoints are
 * written by their thread: the tests wait for them on the checkpoint's condition variable
 * (bounded) and read px_ckpt_get_info. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

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
#include "codec/initializer.h"
#include "config.h"
#include "format/safetensors_read.h"
#include "rpc/rpc_base.h"
#include "restore.h"
#include "server_fixture.h"
#include "util/bufpool.h"
#include "util/clock.h"
#include "util/log.h"

#define CHUNK_BYTES 4096u
#define CHUNK_ELEMS (CHUNK_BYTES / 4u)
#define LR 0.5f
#define MU 0.9f
#define WORKERS 2u
#define WAIT_MS 30000 /* a checkpoint of a few KiB takes milliseconds */

static px_sf g_f;
static char g_dir[256];

/* ---- captured log lines ----------------------------------------------------------------- */

static char g_log[16384];
static size_t g_log_len;

static void capture_sink(void* ctx, px_log_level level, const char* msg) {
  (void)ctx;
  int n = snprintf(g_log + g_log_len, sizeof g_log - g_log_len, "%s %s\n",
                   px_log_level_name(level), msg);
  if (n > 0) g_log_len += (size_t)n < sizeof g_log - g_log_len ? (size_t)n : 0;
}

/* ---- services ----------------------------------------------------------------------------- */

static int setup(void** state) {
  (void)state;
  memset(&g_f, 0, sizeof g_f);
  if (px_h_mkdtemp(g_dir, sizeof g_dir) != 0) return -1;
  g_log_len = 0;
  g_log[0] = 0;
  return 0;
}

static int teardown(void** state) {
  (void)state;
  px_sf_stop(&g_f);
  px_h_rmtree(g_dir);
  return 0;
}

/* The argument vector: --workers 2, 4 KiB chunks, lr 0.5, --checkpoint-dir g_dir, more. */
static size_t build_args(const char** a, size_t cap, const char* const* more) {
  size_t n = 0;
  const char* base[] = {"--workers", "2", "--chunk-bytes", "4K", "--lr", "0.5",
                        "--checkpoint-dir", g_dir};
  for (size_t i = 0; i < sizeof base / sizeof base[0]; i++) a[n++] = base[i];
  for (size_t i = 0; more && more[i] && n + 1 < cap; i++) a[n++] = more[i];
  a[n] = NULL;
  return n;
}

static px_server* start(const char* const* more) {
  const char* a[32];
  build_args(a, 32, more);
  px_sf_init(&g_f, a);
  return g_f.srv;
}

/* As px_sf_init, but log lines (those of the restore included) go to g_log. */
static int init_capturing(const char* const* more, char* err, size_t errlen);

static px_server* start_capturing(const char* const* more) {
  char err[512] = "";
  if (init_capturing(more, err, sizeof err) != 0) fail_msg("service init: %s", err);
  return g_f.srv;
}

/* The service init of start_capturing; its status (err says why). */
static int init_capturing(const char* const* more, char* err, size_t errlen) {
  memset(&g_f, 0, sizeof g_f);
  const char* argv[40] = {"paramex-server", "--threads", "1", "--log-level", "warn"};
  size_t n = 5 + build_args(argv + 5, 35, more);
  px_config cfg;
  if (px_config_parse(&cfg, (int)n, (char**)argv, err, errlen) != 0) fail_msg("flags: %s", err);
  px_rpc_init();
  g_log_len = 0;
  g_log[0] = 0;
  px_log_set_sink(capture_sink, NULL, PX_LOG_WARN);
  int rc = px_service_init(&g_f.svc, &cfg, err, errlen);
  px_log_init("test-server", PX_LOG_WARN);
  g_f.srv = &g_f.svc.srv;
  g_f.inited = true;
  return rc;
}

static void stop(void) { assert_int_equal(px_sf_stop(&g_f), 0); }

/* ---- tensors, steps and their reference ------------------------------------------------- */

/* What the parameters and momentum of a tensor should be: updated by every step made
 * here with the optimizer's formula. */
typedef struct model {
  px_tensor_state* t;
  uint64_t numel;
  float* p;
  float* m;
  bool started[8]; /* a momentum step was applied to chunk i */
} model;

static void model_free(model* m) {
  free(m->p);
  free(m->m);
  memset(m, 0, sizeof *m);
}

static px_tensor_state* declare(px_server* s, const char* name, uint64_t numel, uint64_t seed,
                                model* m) {
  px_declare_args a;
  memset(&a, 0, sizeof a);
  a.name = name;
  a.dtype = PX_DT_F32;
  a.shape = &numel;
  a.ndim = 1;
  a.init_kind = PX_FILL_NORMAL;
  a.init_b = 0.02f;
  a.init_seed = seed;
  px_tensor_state* t = NULL;
  bool created = false;
  px_waiter* woken = NULL;
  char err[256] = "";
  int st = px_store_declare(&s->store, &a, &t, &created, NULL, &woken, err, sizeof err);
  if (st != PX_ST_OK) fail_msg("declare %s: %s: %s", name, px_status_name(st), err);
  px_waiters_run(woken);
  if (m) {
    memset(m, 0, sizeof *m);
    m->t = t;
    m->numel = numel;
    m->p = malloc(numel * sizeof(float));
    m->m = calloc(numel, sizeof(float));
    assert_true(m->p && m->m);
    memcpy(m->p, t->params, numel * sizeof(float));
  }
  return t;
}

static uint64_t mix(uint64_t x) {
  x += UINT64_C(0x9E3779B97F4A7C15);
  x = (x ^ (x >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
  x = (x ^ (x >> 27)) * UINT64_C(0x94D049BB133111EB);
  return x ^ (x >> 31);
}

/* Gradient of rank for element e of tensor tid at step. */
static float grad_at(uint32_t tid, uint32_t rank, uint64_t step, uint64_t e) {
  uint64_t r = mix(((uint64_t)tid << 56) ^ ((uint64_t)rank << 48) ^ (step << 32) ^ e);
  return ((float)(r >> 40) / (float)(1u << 24) - 0.5f) * 0.1f;
}

/* Rank's contribution to chunk k of t at step; the step's frames are published when it
 * completes. Returns whether it completed the step. */
static bool push_one(px_server* s, px_tensor_state* t, uint32_t k, uint64_t step, uint32_t rank) {
  px_chunk_state* c = &t->chunks[k];
  float* b = px_buf_get(CHUNK_BYTES);
  assert_non_null(b);
  const uint64_t first = (uint64_t)k * t->chunk_elems;
  for (uint32_t i = 0; i < c->elems; i++) b[i] = grad_at(t->id, rank, step, first + i);
  px_agg_after after;
  memset(&after, 0, sizeof after);
  px_agg_stall stall;
  memset(&stall, 0, sizeof stall);
  int status = 0;
  char err[256] = "";
  px_agg_result r = px_agg_push(&s->agg, t, c, step, rank, &b, &stall, &after, &status, err,
                                sizeof err);
  if (r != PX_AGG_COUNTED) fail_msg("push %s chunk %u step %" PRIu64 " rank %u: %d %s", t->name,
                                    k, step, rank, (int)r, err);
  px_buf_put(b, CHUNK_BYTES);
  const bool done = after.step_c == c;
  px_agg_finish(&s->agg, &after);
  return done;
}

/* The reference of one step of chunk k (ranks 0..WORKERS-1 summed in order). */
static void model_step(model* m, uint32_t k, uint64_t step, bool momentum) {
  px_tensor_state* t = m->t;
  const uint64_t first = (uint64_t)k * t->chunk_elems;
  const uint32_t n = t->chunks[k].elems;
  for (uint32_t i = 0; i < n; i++) {
    const uint64_t e = first + i;
    float sum = grad_at(t->id, 0, step, e);
    for (uint32_t r = 1; r < WORKERS; r++) sum += grad_at(t->id, r, step, e);
    float g = sum / (float)WORKERS;
    if (momentum) {
      float mm = m->started[k] ? MU * m->m[e] + g : g;
      m->m[e] = mm;
      g = mm;
    }
    m->p[e] = m->p[e] - LR * g;
  }
  if (momentum) m->started[k] = true;
}

/* The missing ranks of chunk k's step (from rank `from`): completes it. */
static void chunk_finish_step(px_server* s, model* m, uint32_t k, uint32_t from, bool momentum) {
  px_tensor_state* t = m->t;
  const uint64_t step = t->chunks[k].version;
  for (uint32_t r = from; r < WORKERS; r++) {
    bool done = push_one(s, t, k, step, r);
    assert_int_equal(done, r + 1 == WORKERS);
  }
  model_step(m, k, step, momentum);
  assert_int_equal(t->chunks[k].version, step + 1);
}

static void chunk_step(px_server* s, model* m, uint32_t k, bool momentum) {
  chunk_finish_step(s, m, k, 0, momentum);
}

static void tensor_step(px_server* s, model* m, bool momentum) {
  for (uint32_t k = 0; k < m->t->nchunks; k++) chunk_step(s, m, k, momentum);
}

/* ---- waiting for the writer --------------------------------------------------------------- */

/* Waits (bounded) until n checkpoints were written or failed in all; returns the info. */
static px_ckpt_info wait_done(px_ckpt* ck, uint64_t n) {
  struct timespec until;
  px_deadline_ts(&until, CLOCK_MONOTONIC, WAIT_MS);
  pthread_mutex_lock(&ck->mu);
  while (ck->written + ck->failures < n)
    if (pthread_cond_timedwait(&ck->cv, &ck->mu, &until) != 0) break;
  pthread_mutex_unlock(&ck->mu);
  px_ckpt_info info;
  px_ckpt_get_info(ck, &info);
  if (info.written + info.failures < n)
    fail_msg("after %d ms: %" PRIu64 " checkpoints written, %" PRIu64 " failed (want %" PRIu64 ")",
             WAIT_MS, info.written, info.failures, n);
  return info;
}

static px_ckpt_info wait_written(px_ckpt* ck, uint64_t n) {
  px_ckpt_info info = wait_done(ck, n);
  assert_int_equal(info.failures, 0);
  assert_int_equal(info.written, n);
  return info;
}

/* Whether a checkpoint is being captured (none was started, or it was handed to the
 * writer). */
static bool pending(px_ckpt* ck) {
  pthread_mutex_lock(&ck->mu);
  bool p = ck->pending != NULL;
  pthread_mutex_unlock(&ck->mu);
  return p;
}

static void ckpt_path(char* out, size_t cap, uint64_t version) {
  snprintf(out, cap, "%s/ckpt-%020" PRIu64 ".safetensors", g_dir, version);
}

static bool exists(const char* path) {
  struct stat st;
  return stat(path, &st) == 0;
}

/* The names in g_dir, sorted, joined with ' '. */
static void dir_listing(char* out, size_t cap) {
  char names[32][256];
  size_t n = 0;
  DIR* d = opendir(g_dir);
  assert_non_null(d);
  struct dirent* e;
  while ((e = readdir(d)) != NULL && n < 32) {
    if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2]))) continue;
    snprintf(names[n++], sizeof names[0], "%s", e->d_name);
  }
  closedir(d);
  for (size_t i = 1; i < n; i++)
    for (size_t j = i; j > 0 && strcmp(names[j], names[j - 1]) < 0; j--) {
      char tmp[256];
      memcpy(tmp, names[j], sizeof tmp);
      memcpy(names[j], names[j - 1], sizeof tmp);
      memcpy(names[j - 1], tmp, sizeof tmp);
    }
  size_t off = 0;
  out[0] = 0;
  for (size_t i = 0; i < n && off < cap; i++)
    off += (size_t)snprintf(out + off, cap - off, i ? " %s" : "%s", names[i]);
}

/* The tensor `name` of f: f32 of numel elements, its bytes equal to want. */
static void expect_entry(px_st_file* f, const char* name, uint64_t numel, const void* want) {
  px_st_tensor e;
  if (px_st_find(f, name, &e) != 0) fail_msg("no tensor '%s' in the checkpoint", name);
  assert_int_equal(e.dtype, PX_DT_F32);
  assert_int_equal(e.ndim, 1);
  assert_int_equal(e.shape[0], numel);
  assert_int_equal(e.nbytes, numel * 4);
  if (memcmp(e.data, want, numel * 4) != 0) fail_msg("tensor '%s' differs in the checkpoint", name);
}

static px_st_file* open_ckpt(const char* path) {
  char err[512] = "";
  px_st_file* f = px_st_open(path, err, sizeof err);
  if (!f) fail_msg("%s", err);
  return f;
}

/* ---- writing -------------------------------------------------------------------------------- */

static void test_now_writes_everything(void** state) {
  (void)state;
  static const char* const more[] = {"--momentum", "0.9", NULL};
  px_server* s = start(more);
  px_ckpt* ck = &s->ckpt;
  px_ckpt_info info;
  px_ckpt_get_info(ck, &info);
  assert_int_equal(info.written, 0);
  assert_int_equal(info.failures, 0);
  assert_int_equal(info.last_version, 0);
  assert_int_equal(info.restored_version, 0);
  assert_string_equal(info.last_path, "");
  bool replaced;
  px_members_join(&s->members, 0, "w0", &replaced);
  px_members_join(&s->members, 1, "w1", &replaced);
  model ma, mb;
  declare(s, "a", 1500, 1, &ma);
  declare(s, "b", 300, 2, &mb);
  for (int i = 0; i < 2; i++) {
    tensor_step(s, &ma, true);
    tensor_step(s, &mb, true);
  }
  assert_memory_equal(ma.t->params, ma.p, 1500 * 4);
  assert_memory_equal(mb.t->params, mb.p, 300 * 4);
  assert_int_equal(px_ckpt_now(ck, NULL, "test"), 0);
  info = wait_written(ck, 1);
  char path[600];
  ckpt_path(path, sizeof path, 2);
  assert_string_equal(info.last_path, path);
  assert_int_equal(info.last_version, 2);
  assert_false(pending(ck));

  px_st_file* f = open_ckpt(path);
  assert_int_equal(px_st_count(f), 4);
  expect_entry(f, "a", 1500, ma.t->params);
  expect_entry(f, "a@momentum", 1500, ma.m);
  expect_entry(f, "b", 300, mb.t->params);
  expect_entry(f, "b@momentum", 300, mb.m);
  assert_string_equal(px_st_meta(f, "pmx.version"), "2");
  assert_string_equal(px_st_meta(f, "pmx.workers"), "2");
  assert_string_equal(px_st_meta(f, "pmx.momentum"), "1");
  assert_string_equal(px_st_meta(f, "pmx.server_id"), s->server_id);
  char inc[64];
  snprintf(inc, sizeof inc, "%" PRIu64 ",%" PRIu64, (uint64_t)atomic_load(&s->members.w[0].incarnation),
           (uint64_t)atomic_load(&s->members.w[1].incarnation));
  assert_string_equal(px_st_meta(f, "pmx.incarnations"), inc);
  px_st_close(f);
  /* nothing else in the directory (no temp file left) */
  char listing[1024];
  dir_listing(listing, sizeof listing);
  assert_string_equal(listing, "ckpt-00000000000000000002.safetensors");

  /* a second one at the same version replaces it */
  assert_int_equal(px_ckpt_now(ck, NULL, "again"), 0);
  info = wait_written(ck, 2);
  assert_string_equal(info.last_path, path);
  dir_listing(listing, sizeof listing);
  assert_string_equal(listing, "ckpt-00000000000000000002.safetensors");
  model_free(&ma);
  model_free(&mb);
}

/* Without momentum: one entry per tensor; a chunk that never stepped under --momentum
 * writes zeros. */
static void test_entries_without_momentum(void** state) {
  (void)state;
  px_server* s = start(NULL);
  model m;
  declare(s, "x", 700, 3, &m);
  tensor_step(s, &m, false);
  assert_int_equal(px_ckpt_now(&s->ckpt, NULL, "test"), 0);
  px_ckpt_info info = wait_written(&s->ckpt, 1);
  assert_int_equal(info.last_version, 1);
  px_st_file* f = open_ckpt(info.last_path);
  assert_int_equal(px_st_count(f), 1);
  expect_entry(f, "x", 700, m.p);
  assert_string_equal(px_st_meta(f, "pmx.momentum"), "0");
  assert_string_equal(px_st_meta(f, "pmx.incarnations"), "0,0"); /* nobody joined */
  px_st_close(f);
  model_free(&m);
}

/* --momentum: a tensor that never stepped writes zeros as its momentum. */
static void test_momentum_zero_before_first_step(void** state) {
  (void)state;
  static const char* const more[] = {"--momentum", "0.9", NULL};
  px_server* s = start(more);
  model m;
  declare(s, "y", 500, 5, &m);
  assert_int_equal(px_ckpt_now(&s->ckpt, NULL, "test"), 0);
  px_ckpt_info info = wait_written(&s->ckpt, 1);
  assert_int_equal(info.last_version, 0);
  char path[600];
  ckpt_path(path, sizeof path, 0);
  assert_string_equal(info.last_path, path);
  px_st_file* f = open_ckpt(info.last_path);
  expect_entry(f, "y", 500, m.p);
  expect_entry(f, "y@momentum", 500, m.m); /* calloc'd: zeros */
  px_st_close(f);
  model_free(&m);
}

static void test_every(void** state) {
  (void)state;
  static const char* const more[] = {"--checkpoint-every", "2", "--keep", "10", NULL};
  px_server* s = start(more);
  px_ckpt* ck = &s->ckpt;
  model m;
  declare(s, "e", CHUNK_ELEMS + 10, 6, &m);
  float* at2 = NULL;
  for (uint64_t v = 1; v <= 5; v++) {
    tensor_step(s, &m, false);
    if (v % 2 == 0) {
      px_ckpt_info info = wait_written(ck, v / 2);
      assert_int_equal(info.last_version, v);
      char path[600];
      ckpt_path(path, sizeof path, v);
      assert_string_equal(info.last_path, path);
      if (v == 2) {
        at2 = malloc(m.numel * 4);
        assert_non_null(at2);
        memcpy(at2, m.p, m.numel * 4);
      }
    } else {
      /* versions that are not multiples of 2 start no checkpoint */
      assert_false(pending(ck));
      pthread_mutex_lock(&ck->mu);
      assert_int_equal(ck->gen, v / 2);
      pthread_mutex_unlock(&ck->mu);
    }
  }
  px_ckpt_info info;
  px_ckpt_get_info(ck, &info);
  assert_int_equal(info.written, 2);
  char listing[1024];
  dir_listing(listing, sizeof listing);
  assert_string_equal(listing, "ckpt-00000000000000000002.safetensors "
                               "ckpt-00000000000000000004.safetensors");
  char path[600];
  ckpt_path(path, sizeof path, 2);
  px_st_file* f = open_ckpt(path);
  expect_entry(f, "e", m.numel, at2);
  assert_string_equal(px_st_meta(f, "pmx.version"), "2");
  px_st_close(f);
  free(at2);
  model_free(&m);
}

/* A checkpoint requested while a step is in progress: every chunk is captured at one
 * version, the chunks ahead when the request came, the one behind when it arrives, even
 * though the first move on meanwhile. */
static void test_capture_during_step(void** state) {
  (void)state;
  static const char* const more[] = {"--momentum", "0.9", NULL};
  px_server* s = start(more);
  px_ckpt* ck = &s->ckpt;
  model m;
  declare(s, "c", 3 * CHUNK_ELEMS, 7, &m);
  float* p0 = malloc(m.numel * 4);
  assert_non_null(p0);
  memcpy(p0, m.p, m.numel * 4);
  chunk_step(s, &m, 0, true);
  chunk_step(s, &m, 2, true);
  assert_true(!push_one(s, m.t, 1, 0, 0)); /* chunk 1: its step 0 half done */
  float* p1 = malloc(m.numel * 4);
  float* m1 = malloc(m.numel * 4);
  assert_true(p1 && m1);
  assert_int_equal(px_ckpt_now(ck, NULL, "test"), 0); /* at version 1, the newest */
  assert_true(pending(ck));
  /* chunks 0 and 2 go on to version 3 */
  for (int i = 0; i < 2; i++) {
    chunk_step(s, &m, 0, true);
    chunk_step(s, &m, 2, true);
  }
  assert_true(pending(ck)); /* chunk 1 not at version 1 yet */
  px_ckpt_info info;
  px_ckpt_get_info(ck, &info);
  assert_int_equal(info.written, 0);
  /* chunk 1 arrives at version 1: copied, and the checkpoint is complete */
  chunk_finish_step(s, &m, 1, 1, true);
  info = wait_written(ck, 1);
  assert_int_equal(info.last_version, 1);
  /* the reference at version 1: one first momentum step from the initial values */
  for (uint32_t k = 0; k < 3; k++) {
    const uint64_t first = (uint64_t)k * CHUNK_ELEMS;
    for (uint32_t i = 0; i < CHUNK_ELEMS; i++) {
      float g = (grad_at(m.t->id, 0, 0, first + i) + grad_at(m.t->id, 1, 0, first + i)) / 2.0f;
      p1[first + i] = p0[first + i] - LR * g;
      m1[first + i] = g;
    }
  }
  px_st_file* f = open_ckpt(info.last_path);
  expect_entry(f, "c", m.numel, p1);
  expect_entry(f, "c@momentum", m.numel, m1);
  assert_string_equal(px_st_meta(f, "pmx.version"), "1");
  px_st_close(f);
  /* and the live tensor is at version 3 / 1 / 3 with the reference's values */
  assert_int_equal(m.t->chunks[0].version, 3);
  assert_int_equal(m.t->chunks[1].version, 1);
  assert_int_equal(m.t->chunks[2].version, 3);
  assert_memory_equal(m.t->params, m.p, m.numel * 4);
  free(p0);
  free(p1);
  free(m1);
  model_free(&m);
}

/* --checkpoint-every 2 on two chunks: a periodic checkpoint at version 4 started by chunk
 * B's step finds chunk A already at 4; A is copied just before its next step leaves 4. */
static void test_capture_before_step(void** state) {
  (void)state;
  static const char* const more[] = {"--checkpoint-every", "2", "--keep", "10", NULL};
  px_server* s = start(more);
  px_ckpt* ck = &s->ckpt;
  model m;
  declare(s, "ab", 2 * CHUNK_ELEMS, 8, &m);
  chunk_step(s, &m, 0, false);
  chunk_step(s, &m, 0, false); /* A at 2: the checkpoint at 2 starts, A copied */
  assert_true(pending(ck));
  chunk_step(s, &m, 0, false);
  chunk_step(s, &m, 0, false); /* A at 4: the one at 2 is still waiting for B */
  float* a4 = malloc(CHUNK_BYTES);
  assert_non_null(a4);
  memcpy(a4, m.p, CHUNK_BYTES);
  px_ckpt_info info;
  px_ckpt_get_info(ck, &info);
  assert_int_equal(info.written, 0);
  chunk_step(s, &m, 1, false);
  chunk_step(s, &m, 1, false); /* B at 2: written */
  info = wait_written(ck, 1);
  assert_int_equal(info.last_version, 2);
  chunk_step(s, &m, 1, false);
  chunk_step(s, &m, 1, false); /* B at 4: the checkpoint at 4 starts; A is at 4 already */
  /* (or it started when 2 was written, A being at 4 then: the writer catches up with the
   * periodic versions it missed, and B's arrival at 4 may have completed it already; A
   * is copied at 4 either way) */
  chunk_step(s, &m, 0, false); /* A leaves 4: copied before its step */
  assert_int_equal(m.t->chunks[0].version, 5);
  info = wait_written(ck, 2);
  assert_int_equal(info.last_version, 4);
  px_st_file* f = open_ckpt(info.last_path);
  px_st_tensor e;
  assert_int_equal(px_st_find(f, "ab", &e), 0);
  assert_int_equal(e.nbytes, 2 * CHUNK_BYTES);
  assert_memory_equal(e.data, a4, CHUNK_BYTES);                                 /* A at 4 */
  assert_memory_equal((const uint8_t*)e.data + CHUNK_BYTES, m.p + CHUNK_ELEMS, CHUNK_BYTES); /* B */
  assert_memory_not_equal(e.data, m.p, CHUNK_BYTES); /* A moved on since */
  px_st_close(f);
  free(a4);
  model_free(&m);
}

/* The checkpoint directory removed while the server runs: the next checkpoint creates it
 * again (it once failed every write from then on). */
static void test_dir_removed(void** state) {
  (void)state;
  px_server* s = start(NULL);
  model m;
  declare(s, "d", 100, 3, &m);
  tensor_step(s, &m, false);
  px_h_rmtree(g_dir);
  struct stat sb;
  assert_int_equal(stat(g_dir, &sb), -1);
  assert_int_equal(px_ckpt_now(&s->ckpt, NULL, "test"), 0);
  px_ckpt_info info = wait_written(&s->ckpt, 1);
  assert_int_equal(info.failures, 0);
  assert_int_equal(stat(info.last_path, &sb), 0);
  model_free(&m);
}

static void test_keep(void** state) {
  (void)state;
  static const char* const more[] = {"--checkpoint-every", "1", "--keep", "2", NULL};
  px_server* s = start(more);
  model m;
  declare(s, "k", 100, 9, &m);
  char listing[1024];
  for (uint64_t v = 1; v <= 4; v++) {
    tensor_step(s, &m, false);
    px_ckpt_info info = wait_written(&s->ckpt, v);
    assert_int_equal(info.last_version, v);
    dir_listing(listing, sizeof listing);
    if (v == 1) assert_string_equal(listing, "ckpt-00000000000000000001.safetensors");
    else {
      char want[256];
      snprintf(want, sizeof want, "ckpt-%020" PRIu64 ".safetensors ckpt-%020" PRIu64 ".safetensors",
               v - 1, v);
      assert_string_equal(listing, want);
      char gone[600];
      ckpt_path(gone, sizeof gone, v - 2);
      if (v >= 3) assert_false(exists(gone)); /* the oldest was removed */
    }
  }
  model_free(&m);
}

/* ---- restoring ------------------------------------------------------------------------------ */

static void test_restore(void** state) {
  (void)state;
  static const char* const more[] = {"--momentum", "0.9", NULL};
  px_server* s = start(more);
  bool replaced;
  px_members_join(&s->members, 0, "w0", &replaced);
  px_members_join(&s->members, 1, "w1", &replaced);
  model ma, mb;
  declare(s, "a", 1500, 1, &ma);
  declare(s, "b", 300, 2, &mb);
  for (int i = 0; i < 3; i++) {
    tensor_step(s, &ma, true);
    tensor_step(s, &mb, true);
  }
  assert_true(px_members_leave(&s->members, 0)); /* rank 0 finished */
  assert_int_equal(px_ckpt_now(&s->ckpt, NULL, "test"), 0);
  wait_written(&s->ckpt, 1);
  char inc[128];
  px_members_incarnations(&s->members, inc, sizeof inc);
  const uint64_t inc1 = atomic_load(&s->members.w[1].incarnation);
  stop();

  /* a fresh service on the directory */
  s = start(more);
  assert_int_equal(px_store_count(&s->store), 2);
  px_tensor_state* a = s->store.tensors[0];
  px_tensor_state* b = s->store.tensors[1];
  assert_string_equal(a->name, "a");
  assert_string_equal(b->name, "b");
  assert_int_equal(a->numel, 1500);
  assert_int_equal(b->numel, 300);
  assert_int_equal(a->dtype, PX_DT_F32);
  assert_memory_equal(a->params, ma.p, 1500 * 4);
  assert_memory_equal(b->params, mb.p, 300 * 4);
  uint64_t vmax = 0;
  assert_int_equal(px_store_version_min(&s->store, &vmax), 3);
  assert_int_equal(vmax, 3);
  for (uint32_t k = 0; k < a->nchunks; k++) assert_true(a->chunks[k].initialized);
  px_ckpt_info info;
  px_ckpt_get_info(&s->ckpt, &info);
  assert_int_equal(info.restored_version, 3);
  assert_int_equal(info.last_version, 3);
  assert_int_equal(info.written, 0);
  char path[600];
  ckpt_path(path, sizeof path, 3);
  assert_string_equal(info.last_path, path);
  char inc2[128];
  px_members_incarnations(&s->members, inc2, sizeof inc2);
  assert_string_equal(inc2, inc);
  char err[256];
  assert_int_equal(px_members_check(&s->members, 1, inc1, err, sizeof err), PX_ST_OK);
  /* rank 0 is still finished (it is not waited for as a dead worker would be) */
  assert_true(px_members_left(&s->members, 0));
  assert_false(px_members_left(&s->members, 1));
  assert_int_equal(atomic_load(&s->members.nleft), 1);
  assert_true(px_members_join(&s->members, 0, "w0", &replaced) > 0);
  assert_false(px_members_left(&s->members, 0));
  /* a worker joining again gets a newer incarnation */
  assert_true(px_members_join(&s->members, 1, "w1", &replaced) > inc1);
  assert_true(replaced);
  /* the momentum came back: the next step matches the reference continued */
  ma.t = a;
  mb.t = b;
  tensor_step(s, &ma, true);
  tensor_step(s, &mb, true);
  assert_memory_equal(a->params, ma.p, 1500 * 4);
  assert_memory_equal(b->params, mb.p, 300 * 4);
  assert_int_equal(px_store_version_min(&s->store, NULL), 4);
  model_free(&ma);
  model_free(&mb);
}

static void test_restore_skips_corrupt(void** state) {
  (void)state;
  static const char* const more[] = {"--keep", "5", NULL};
  px_server* s = start(more);
  model m;
  declare(s, "q", 600, 3, &m);
  tensor_step(s, &m, false);
  assert_int_equal(px_ckpt_now(&s->ckpt, NULL, "test"), 0);
  wait_written(&s->ckpt, 1);
  float* at1 = malloc(600 * 4);
  assert_non_null(at1);
  memcpy(at1, m.p, 600 * 4);
  tensor_step(s, &m, false);
  assert_int_equal(px_ckpt_now(&s->ckpt, NULL, "test"), 0);
  wait_written(&s->ckpt, 2);
  stop();
  /* the newest file's last data byte flipped */
  char p2[600];
  ckpt_path(p2, sizeof p2, 2);
  FILE* fp = fopen(p2, "r+b");
  assert_non_null(fp);
  assert_int_equal(fseek(fp, -1, SEEK_END), 0);
  int ch = fgetc(fp);
  assert_true(ch != EOF);
  assert_int_equal(fseek(fp, -1, SEEK_END), 0);
  assert_int_equal(fputc(ch ^ 0x5A, fp), ch ^ 0x5A);
  assert_int_equal(fclose(fp), 0);

  s = start_capturing(more);
  assert_int_equal(px_store_count(&s->store), 1);
  assert_memory_equal(s->store.tensors[0]->params, at1, 600 * 4);
  assert_int_equal(px_store_version_min(&s->store, NULL), 1);
  px_ckpt_info info;
  px_ckpt_get_info(&s->ckpt, &info);
  assert_int_equal(info.restored_version, 1);
  char want[4000];
  snprintf(want, sizeof want, "WARN skipping checkpoint %s: checkpoint %s: data checksum mismatch\n"
           "WARN checkpoint %s set aside as %s.unrestorable\n", p2, p2, p2, p2);
  assert_string_equal(g_log, want);
  /* set aside: not ranked with the new run's files any more */
  struct stat sb;
  assert_int_equal(stat(p2, &sb), -1);
  char aside[700];
  snprintf(aside, sizeof aside, "%s.unrestorable", p2);
  assert_int_equal(stat(aside, &sb), 0);
  free(at1);
  model_free(&m);
}

/* A checkpoint of another --workers is skipped: the server starts empty. */
static void test_restore_skips_other_workers(void** state) {
  (void)state;
  px_server* s = start(NULL);
  model m;
  declare(s, "w", 50, 3, &m);
  assert_int_equal(px_ckpt_now(&s->ckpt, NULL, "test"), 0);
  wait_written(&s->ckpt, 1);
  stop();
  /* a restart with another --workers: nothing restores, and the server does not start
   * empty over the run's checkpoints (it once did, and then pruned them) */
  static const char* const three[] = {"--workers", "3", NULL};
  char err[512] = "";
  assert_int_not_equal(init_capturing(three, err, sizeof err), 0);
  s = g_f.srv;
  assert_int_equal(px_store_count(&s->store), 0);
  char p0[600], want[4000];
  ckpt_path(p0, sizeof p0, 0);
  snprintf(want, sizeof want,
           "WARN skipping checkpoint %s: written for 2 workers, this server has --workers 3\n"
           "ERROR --checkpoint-dir %s holds 1 checkpoint and none can be restored (newest: %s: "
           "written for 2 workers, this server has --workers 3): fix the flags, or move the "
           "files away to start over\n", p0, g_dir, p0);
  assert_string_equal(g_log, want);
  struct stat sb;
  assert_int_equal(stat(p0, &sb), 0); /* left where it was */
  model_free(&m);
}

/* ---- failures --------------------------------------------------------------------------------- */

static void test_unusable_dir(void** state) {
  (void)state;
  px_server* s = start(NULL); /* its store and members */
  /* a regular file */
  char file[400];
  snprintf(file, sizeof file, "%s/plain", g_dir);
  FILE* fp = fopen(file, "w");
  assert_non_null(fp);
  fclose(fp);
  px_ckpt ck;
  px_ckpt_opts o = {file, 0, 0, 3, false, "id", "momentum"};
  char err[512] = "";
  assert_int_equal(px_ckpt_init(&ck, &o, &s->store, &s->members, err, sizeof err), -1);
  char want[600];
  snprintf(want, sizeof want, "--checkpoint-dir %s: not a writable directory", file);
  assert_string_equal(err, want);
  assert_false(ck.thread_started);
  px_ckpt_shutdown(&ck);
  /* under a missing directory */
  char deep[400];
  snprintf(deep, sizeof deep, "%s/missing/sub", g_dir);
  o.dir = deep;
  err[0] = 0;
  assert_int_equal(px_ckpt_init(&ck, &o, &s->store, &s->members, err, sizeof err), -1);
  snprintf(want, sizeof want, "--checkpoint-dir %s: %s", deep, strerror(ENOENT));
  assert_string_equal(err, want);
  assert_null(strchr(err, '\n'));
  px_ckpt_shutdown(&ck);
  stop();

  /* the service refuses to start with it */
  const char* argv[] = {"paramex-server", "--threads", "1", "--workers", "2",
                        "--checkpoint-dir", file};
  px_config cfg;
  assert_int_equal(px_config_parse(&cfg, 7, (char**)argv, err, sizeof err), 0);
  px_rpc_init();
  px_service svc;
  err[0] = 0;
  assert_int_equal(px_service_init(&svc, &cfg, err, sizeof err), -1);
  snprintf(want, sizeof want, "--checkpoint-dir %s: not a writable directory", file);
  assert_string_equal(err, want);
  px_service_deinit(&svc);
  px_rpc_shutdown();
}

/* The directory is replaced by a file: the write fails, is counted, and px_ckpt_final
 * says so (a directory that merely disappeared is created again: test_dir_removed). */
static void test_write_failure(void** state) {
  (void)state;
  px_server* s = start(NULL);
  model m;
  declare(s, "f", 64, 3, &m);
  tensor_step(s, &m, false);
  px_h_rmtree(g_dir);
  FILE* blocker = fopen(g_dir, "w");
  assert_non_null(blocker);
  fclose(blocker);
  px_log_set_sink(NULL, NULL, PX_LOG_WARN); /* the expected error line */
  assert_int_equal(px_ckpt_now(&s->ckpt, NULL, "test"), 0);
  px_ckpt_info info = wait_done(&s->ckpt, 1);
  assert_int_equal(info.failures, 1);
  assert_int_equal(info.written, 0);
  assert_int_equal(info.last_version, 0);
  assert_string_equal(info.last_path, "");
  assert_int_equal(px_ckpt_final(&s->ckpt, WAIT_MS), -1);
  info = wait_done(&s->ckpt, 2);
  assert_int_equal(info.failures, 2);
  px_log_init("test-server", PX_LOG_WARN);
  assert_int_equal(unlink(g_dir), 0);
  assert_int_equal(mkdir(g_dir, 0755), 0); /* for the teardown */
  model_free(&m);
}

static void test_final(void** state) {
  (void)state;
  px_server* s = start(NULL);
  model m;
  declare(s, "g", 2 * CHUNK_ELEMS, 3, &m);
  tensor_step(s, &m, false);
  tensor_step(s, &m, false);
  assert_int_equal(px_ckpt_final(&s->ckpt, WAIT_MS), 0);
  px_ckpt_info info;
  px_ckpt_get_info(&s->ckpt, &info); /* px_ckpt_final returned once it was written */
  assert_int_equal(info.written, 1);
  assert_int_equal(info.last_version, 2);
  px_st_file* f = open_ckpt(info.last_path);
  expect_entry(f, "g", m.numel, m.p);
  px_st_close(f);
  /* a step in progress at the newest version: not written, 0 all the same */
  chunk_step(s, &m, 0, false);
  assert_true(!push_one(s, m.t, 1, 2, 0));
  px_log_set_sink(NULL, NULL, PX_LOG_WARN); /* the expected warning */
  assert_int_equal(px_ckpt_final(&s->ckpt, 100), 0);
  px_log_init("test-server", PX_LOG_WARN);
  px_ckpt_get_info(&s->ckpt, &info);
  assert_int_equal(info.written, 1);
  assert_int_equal(info.failures, 0);
  assert_true(pending(&s->ckpt));
  /* the step completes: that checkpoint is written after all */
  chunk_finish_step(s, &m, 1, 1, false);
  info = wait_written(&s->ckpt, 2);
  assert_int_equal(info.last_version, 3);
  f = open_ckpt(info.last_path);
  expect_entry(f, "g", m.numel, m.p);
  px_st_close(f);
  model_free(&m);
}

/* Without --checkpoint-dir every function is a no-op. */
static void test_no_dir(void** state) {
  (void)state;
  static const char* const a[] = {"--workers", "2", "--chunk-bytes", "4K", NULL};
  px_sf_init(&g_f, a);
  px_server* s = g_f.srv;
  declare(s, "n", 10, 1, NULL);
  assert_int_equal(px_ckpt_now(&s->ckpt, NULL, "test"), -1);
  assert_int_equal(px_ckpt_final(&s->ckpt, 10), 0);
  assert_int_equal(px_ckpt_restore(&s->ckpt), 0);
  px_ckpt_info info;
  px_ckpt_get_info(&s->ckpt, &info);
  assert_int_equal(info.written, 0);
  assert_int_equal(info.failures, 0);
  assert_false(s->ckpt.thread_started);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_now_writes_everything, setup, teardown),
      cmocka_unit_test_setup_teardown(test_entries_without_momentum, setup, teardown),
      cmocka_unit_test_setup_teardown(test_momentum_zero_before_first_step, setup, teardown),
      cmocka_unit_test_setup_teardown(test_every, setup, teardown),
      cmocka_unit_test_setup_teardown(test_capture_during_step, setup, teardown),
      cmocka_unit_test_setup_teardown(test_capture_before_step, setup, teardown),
      cmocka_unit_test_setup_teardown(test_keep, setup, teardown),
      cmocka_unit_test_setup_teardown(test_dir_removed, setup, teardown),
      cmocka_unit_test_setup_teardown(test_restore, setup, teardown),
      cmocka_unit_test_setup_teardown(test_restore_skips_corrupt, setup, teardown),
      cmocka_unit_test_setup_teardown(test_restore_skips_other_workers, setup, teardown),
      cmocka_unit_test_setup_teardown(test_unusable_dir, setup, teardown),
      cmocka_unit_test_setup_teardown(test_write_failure, setup, teardown),
      cmocka_unit_test_setup_teardown(test_final, setup, teardown),
      cmocka_unit_test_setup_teardown(test_no_dir, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
