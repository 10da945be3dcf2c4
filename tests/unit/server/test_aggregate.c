/* Unit tests of server/aggregate.c (aggregate.h): rank-ordered sums whatever the arrival
 * order (bit-exact against an SGD reference computed here), duplicates and refusals with
 * their exact statuses and messages, the version moving only once every rank contributed,
 * the --hold-bytes budget (stalls, resumes, px_agg_unstall), --elastic sweeps past dead
 * workers (and none without --elastic), and px_agg_finish publishing a step's frames. The
 * service is initialised from flags without its gRPC server (server_fixture.h). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/checksum.h"
#include "codec/dtype.h"
#include "codec/initializer.h"
#include "codec/payload.h"
#include "rpc/rpc_base.h"
#include "server_fixture.h"
#include "util/bufpool.h"
#include "util/clock.h"

#define CHUNK_BYTES 4096u
#define CHUNK_ELEMS (CHUNK_BYTES / 4u)
#define LR 0.5f
#define MAX_RANKS 4

static px_sf g_f;

static int teardown(void** state) {
  (void)state;
  px_sf_stop(&g_f);
  return 0;
}

/* A service of `workers` workers, 4 KiB chunks, lr 0.5, and more flags (NULL-ended). */
static px_server* start(const char* workers, const char* const* more) {
  const char* const base[] = {"--workers", workers, "--chunk-bytes", "4K", "--lr", "0.5", NULL};
  const char* a[32];
  px_sf_init(&g_f, px_sf_flags(a, 32, base, more));
  return g_f.srv;
}

/* A tensor of numel f32 elements, NORMAL(0, 0.02) of seed. */
static px_tensor_state* declare(px_server* s, const char* name, uint64_t numel, uint64_t seed) {
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
  assert_true(created);
  px_waiters_run(woken);
  return t;
}

/* splitmix64 */
static uint64_t mix(uint64_t x) {
  x += UINT64_C(0x9E3779B97F4A7C15);
  x = (x ^ (x >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
  x = (x ^ (x >> 27)) * UINT64_C(0x94D049BB133111EB);
  return x ^ (x >> 31);
}

/* Gradient element i of rank at step: magnitudes from 1e-4 to 1e4, so that the sum
 * depends on the order of its terms. */
static float grad_at(uint32_t rank, uint64_t step, size_t i) {
  uint64_t r = mix(((uint64_t)rank << 48) ^ (step << 32) ^ (uint64_t)i);
  static const float scale[4] = {1e-4f, 1.0f, 1e4f, 3.0f};
  float u = (float)(r >> 40) / (float)(1u << 24) - 0.5f;
  return u * scale[(r >> 8) & 3];
}

static void grad_fill(float* g, uint32_t rank, uint64_t step, size_t n) {
  for (size_t i = 0; i < n; i++) g[i] = grad_at(rank, step, i);
}

/* The reference step: p -= lr * (sum / n), the sum in the order `order` (ranks). */
static void ref_step(float* p, size_t n, uint64_t step, const uint32_t* order, uint32_t nr,
                     uint32_t workers_div) {
  for (size_t i = 0; i < n; i++) {
    float s = grad_at(order[0], step, i);
    for (uint32_t k = 1; k < nr; k++) s += grad_at(order[k], step, i);
    p[i] = p[i] - LR * (s / (float)workers_div);
  }
}

static float* copy_params(px_chunk_state* c) {
  float* p = malloc((size_t)c->elems * sizeof *p);
  assert_non_null(p);
  pthread_mutex_lock(&c->mu);
  memcpy(p, c->params, (size_t)c->elems * sizeof *p);
  pthread_mutex_unlock(&c->mu);
  return p;
}

/* One push: a fresh px_buf_get buffer with rank's gradient of step. Returns the result;
 * *taken says whether aggregation took the buffer (else it is given back here). */
typedef struct push_out {
  px_agg_result r;
  int status;
  char err[256];
  bool taken;
  float* buf; /* the buffer handed over (may now belong to aggregation) */
} push_out;

static push_out push(px_server* s, px_tensor_state* t, px_chunk_state* c, uint64_t step,
                     uint32_t rank, px_agg_stall* stall, px_agg_after* after) {
  push_out o;
  memset(&o, 0, sizeof o);
  o.status = -1;
  float* b = px_buf_get(CHUNK_BYTES);
  assert_non_null(b);
  grad_fill(b, rank, step, c->elems);
  o.buf = b;
  px_agg_stall local;
  memset(&local, 0, sizeof local);
  o.r = px_agg_push(&s->agg, t, c, step, rank, &b, stall ? stall : &local, after, &o.status,
                    o.err, sizeof o.err);
  o.taken = b == NULL;
  if (b) {
    assert_ptr_equal(b, o.buf); /* never replaced by another buffer */
    px_buf_put(b, CHUNK_BYTES);
  }
  if (!stall) assert_null(atomic_load(&local.on));
  return o;
}

/* A push that must be counted and complete no step. */
static void push_counted(px_server* s, px_tensor_state* t, px_chunk_state* c, uint64_t step,
                         uint32_t rank) {
  px_agg_after after;
  memset(&after, 0, sizeof after);
  push_out o = push(s, t, c, step, rank, NULL, &after);
  if (o.r != PX_AGG_COUNTED) fail_msg("rank %u step %llu: result %d (%s)", rank,
                                      (unsigned long long)step, (int)o.r, o.err);
  assert_null(after.step_c);
  assert_null(after.resumed);
}

/* Pushes ranks in `order` for step; the last completes the step, which is finished. */
static void push_step(px_server* s, px_tensor_state* t, px_chunk_state* c, uint64_t step,
                      const uint32_t* order, uint32_t nr) {
  for (uint32_t k = 0; k + 1 < nr; k++) push_counted(s, t, c, step, order[k]);
  px_agg_after after;
  memset(&after, 0, sizeof after);
  push_out o = push(s, t, c, step, order[nr - 1], NULL, &after);
  assert_int_equal(o.r, PX_AGG_COUNTED);
  assert_ptr_equal(after.step_c, c);
  assert_ptr_equal(after.step_t, t);
  assert_int_equal(after.step_version, step + 1);
  assert_null(after.resumed);
  px_agg_finish(&s->agg, &after);
  assert_null(after.step_c);
}

static uint64_t steps_completed(px_server* s) { return atomic_load(&s->ctr.steps_completed); }

/* ---- rank order ------------------------------------------------------------------------- */

static void test_push_in_rank_order(void** state) {
  (void)state;
  px_server* s = start("3", NULL);
  px_tensor_state* t = declare(s, "w", 1500, 11);
  assert_int_equal(t->nchunks, 2);
  px_chunk_state* c = &t->chunks[1];
  assert_int_equal(c->elems, 1500 - CHUNK_ELEMS);
  float* want = copy_params(c);
  float* other0 = copy_params(&t->chunks[0]);
  const uint32_t order[3] = {0, 1, 2};
  ref_step(want, c->elems, 0, order, 3, 3);

  for (uint32_t r = 0; r < 2; r++) {
    px_agg_after after;
    memset(&after, 0, sizeof after);
    push_out o = push(s, t, c, 0, r, NULL, &after);
    assert_int_equal(o.r, PX_AGG_COUNTED);
    assert_int_equal(o.status, -1); /* untouched */
    assert_null(after.step_c);
    assert_int_equal(c->version, 0);
    assert_int_equal(c->next_rank, r + 1);
    assert_int_equal(c->ncontrib, r + 1);
    assert_int_equal(c->contributed[r], 1);
    assert_null(c->held[r].buf); /* in the sum, not held */
    assert_int_equal(steps_completed(s), 0);
  }
  /* the first contribution's buffer became the sum; the second was added into it */
  px_agg_after after;
  memset(&after, 0, sizeof after);
  push_out o = push(s, t, c, 0, 2, NULL, &after);
  assert_int_equal(o.r, PX_AGG_COUNTED);
  assert_ptr_equal(after.step_c, c);
  assert_ptr_equal(after.step_t, t);
  assert_int_equal(after.step_version, 1);
  assert_int_equal(after.io.ncontrib, 3);
  assert_non_null(after.io.bits[0]);
  assert_int_equal(c->version, 1);
  assert_int_equal(c->next_rank, 0);
  assert_int_equal(c->ncontrib, 0);
  for (uint32_t r = 0; r < 3; r++) assert_int_equal(c->contributed[r], 0);
  assert_int_equal(steps_completed(s), 1);
  assert_memory_equal(c->params, want, (size_t)c->elems * 4);
  assert_memory_equal(after.io.bits[0], want, (size_t)c->elems * 4);
  px_agg_finish(&s->agg, &after);
  assert_null(after.step_c);
  assert_null(after.step_t);
  /* the other chunk did not move */
  assert_int_equal(t->chunks[0].version, 0);
  assert_memory_equal(t->chunks[0].params, other0, CHUNK_BYTES);
  assert_int_equal(atomic_load(&s->agg.hold_left), (int64_t)s->agg.o.hold_bytes);
  free(want);
  free(other0);
}

/* Every arrival order of three ranks gives the bits of the rank-order sum; the sum in
 * another order would not (so the check can tell). */
static void test_push_any_order_same_bits(void** state) {
  (void)state;
  px_server* s = start("3", NULL);
  static const uint32_t perms[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2},
                                       {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
  px_tensor_state* ts[6];
  char name[16];
  for (int k = 0; k < 6; k++) {
    snprintf(name, sizeof name, "p%d", k);
    ts[k] = declare(s, name, CHUNK_ELEMS, 5); /* the same initial values */
  }
  const size_t n = CHUNK_ELEMS;
  float* want = copy_params(&ts[0]->chunks[0]);
  float* reversed = copy_params(&ts[0]->chunks[0]);
  const uint32_t rank_order[3] = {0, 1, 2}, rev[3] = {2, 1, 0};
  ref_step(want, n, 0, rank_order, 3, 3);
  ref_step(reversed, n, 0, rev, 3, 3);
  assert_memory_not_equal(want, reversed, n * 4); /* the order shows in the bits */
  const int64_t budget = (int64_t)s->agg.o.hold_bytes;
  for (int k = 0; k < 6; k++) {
    px_tensor_state* t = ts[k];
    px_chunk_state* c = &t->chunks[0];
    uint32_t held = 0;
    for (int j = 0; j < 2; j++) {
      const uint32_t r = perms[k][j];
      px_agg_after after;
      memset(&after, 0, sizeof after);
      push_out o = push(s, t, c, 0, r, NULL, &after);
      assert_int_equal(o.r, PX_AGG_COUNTED);
      assert_null(after.step_c);
      assert_int_equal(c->version, 0);
      if (r > c->next_rank) { /* ahead of a lower rank: held, its buffer kept */
        assert_true(o.taken);
        assert_ptr_equal(c->held[r].buf, o.buf);
        assert_null(c->held[r].owner);
      }
      held = 0;
      for (uint32_t w = 0; w < 3; w++) held += c->held[w].buf != NULL;
      assert_int_equal(atomic_load(&s->agg.hold_left), budget - (int64_t)held * CHUNK_BYTES);
    }
    /* the ranks from 0 up that are in are summed; those after a gap are held */
    uint32_t next = 0;
    while (next < 3 && (perms[k][0] == next || perms[k][1] == next)) next++;
    assert_int_equal(c->next_rank, next);
    assert_int_equal(held, (perms[k][0] >= next) + (perms[k][1] >= next));
    assert_int_equal(c->ncontrib, 2);
    push_step(s, t, c, 0, perms[k] + 2, 1);
    assert_int_equal(c->version, 1);
    if (memcmp(c->params, want, n * 4) != 0)
      fail_msg("arrival order %u,%u,%u: the parameters differ from the rank-order sum",
               perms[k][0], perms[k][1], perms[k][2]);
    for (uint32_t w = 0; w < 3; w++) assert_null(c->held[w].buf);
    assert_int_equal(atomic_load(&s->agg.hold_left), budget);
  }
  assert_int_equal(steps_completed(s), 6);
  free(want);
  free(reversed);
}

/* Several steps on two chunks: each chunk's version moves once per complete step, the
 * counter once per chunk step, the parameters follow the reference. */
static void test_steps_and_counter(void** state) {
  (void)state;
  px_server* s = start("2", NULL);
  px_tensor_state* t = declare(s, "m", 2 * CHUNK_ELEMS, 9);
  float* want[2] = {copy_params(&t->chunks[0]), copy_params(&t->chunks[1])};
  const uint32_t ord[2] = {0, 1}, rev[2] = {1, 0};
  for (uint64_t st = 0; st < 3; st++) {
    for (uint32_t k = 0; k < 2; k++) {
      px_chunk_state* c = &t->chunks[k];
      push_counted(s, t, c, st, (st + k) % 2 ? 1 : 0);
      assert_int_equal(c->version, st); /* one rank is not enough */
      assert_int_equal(steps_completed(s), st * 2 + k);
      push_step(s, t, c, st, (st + k) % 2 ? ord : rev, 1);
      assert_int_equal(c->version, st + 1);
      assert_int_equal(steps_completed(s), st * 2 + k + 1);
      ref_step(want[k], c->elems, st, ord, 2, 2);
      assert_memory_equal(c->params, want[k], (size_t)c->elems * 4);
    }
  }
  free(want[0]);
  free(want[1]);
}

/* ---- duplicates and refusals ------------------------------------------------------------ */

static void test_duplicates(void** state) {
  (void)state;
  px_server* s = start("2", NULL);
  px_tensor_state* t = declare(s, "d", CHUNK_ELEMS, 3);
  px_chunk_state* c = &t->chunks[0];
  float* want = copy_params(c);
  const uint32_t ord[2] = {0, 1};
  ref_step(want, c->elems, 0, ord, 2, 2);

  push_counted(s, t, c, 0, 0);
  /* rank 0 again in the same step: nothing changes, the buffer stays the caller's */
  px_agg_after after;
  memset(&after, 0, sizeof after);
  push_out o = push(s, t, c, 0, 0, NULL, &after);
  assert_int_equal(o.r, PX_AGG_DUPLICATE);
  assert_false(o.taken);
  assert_int_equal(o.status, -1);
  assert_null(after.step_c);
  assert_int_equal(c->ncontrib, 1);
  assert_int_equal(c->next_rank, 1);
  push_step(s, t, c, 0, ord + 1, 1);
  assert_int_equal(c->version, 1);
  assert_memory_equal(c->params, want, (size_t)c->elems * 4);
  const uint64_t done = steps_completed(s);

  /* pushes of the completed step (retries): duplicates, nothing changes */
  for (uint32_t r = 0; r < 2; r++) {
    memset(&after, 0, sizeof after);
    o = push(s, t, c, 0, r, NULL, &after);
    assert_int_equal(o.r, PX_AGG_DUPLICATE);
    assert_false(o.taken);
    assert_null(after.step_c);
    assert_int_equal(c->version, 1);
    assert_int_equal(c->ncontrib, 0);
    assert_int_equal(c->contributed[r], 0);
  }
  assert_int_equal(steps_completed(s), done);
  assert_memory_equal(c->params, want, (size_t)c->elems * 4);

  /* a held contribution pushed again is a duplicate too */
  memset(&after, 0, sizeof after);
  o = push(s, t, c, 1, 1, NULL, &after);
  assert_int_equal(o.r, PX_AGG_COUNTED);
  assert_true(o.taken);
  float* held = c->held[1].buf;
  assert_ptr_equal(held, o.buf);
  memset(&after, 0, sizeof after);
  o = push(s, t, c, 1, 1, NULL, &after);
  assert_int_equal(o.r, PX_AGG_DUPLICATE);
  assert_false(o.taken);
  assert_ptr_equal(c->held[1].buf, held);
  assert_int_equal(c->ncontrib, 1);
  assert_int_equal(c->next_rank, 0);
  assert_int_equal(c->version, 1);
  free(want);
}

static void test_refusals(void** state) {
  (void)state;
  px_server* s = start("2", NULL);
  px_tensor_state* t = declare(s, "w", CHUNK_ELEMS, 4);
  px_chunk_state* c = &t->chunks[0];
  float* p0 = copy_params(c);
  const uint32_t ord[2] = {0, 1};

  /* a step ahead of the version */
  px_agg_after after;
  memset(&after, 0, sizeof after);
  push_out o = push(s, t, c, 5, 0, NULL, &after);
  assert_int_equal(o.r, PX_AGG_REFUSED);
  assert_int_equal(o.status, PX_ST_OUT_OF_RANGE);
  assert_string_equal(o.err, "tensor 'w' chunk 0: step 5 is ahead of version 0");
  assert_false(o.taken);
  assert_null(after.step_c);
  assert_int_equal(c->ncontrib, 0);
  assert_int_equal(c->contributed[0], 0);
  assert_int_equal(c->next_rank, 0);
  o = push(s, t, c, 1, 1, NULL, &after);
  assert_int_equal(o.r, PX_AGG_REFUSED);
  assert_int_equal(o.status, PX_ST_OUT_OF_RANGE);
  assert_string_equal(o.err, "tensor 'w' chunk 0: step 1 is ahead of version 0");
  assert_memory_equal(c->params, p0, CHUNK_BYTES);

  /* two steps later, step 0 is too old (step 1 would be a duplicate) */
  push_step(s, t, c, 0, ord, 2);
  push_step(s, t, c, 1, ord, 2);
  assert_int_equal(c->version, 2);
  float* p2 = copy_params(c);
  memset(&after, 0, sizeof after);
  o = push(s, t, c, 0, 1, NULL, &after);
  assert_int_equal(o.r, PX_AGG_REFUSED);
  assert_int_equal(o.status, PX_ST_FAILED_PRECONDITION);
  assert_string_equal(o.err, "tensor 'w' chunk 0: step 0 is too old (chunk at version 2)");
  assert_false(o.taken);
  assert_int_equal(c->ncontrib, 0);
  assert_int_equal(c->contributed[1], 0);
  o = push(s, t, c, 3, 0, NULL, &after);
  assert_int_equal(o.status, PX_ST_OUT_OF_RANGE);
  assert_string_equal(o.err, "tensor 'w' chunk 0: step 3 is ahead of version 2");
  o = push(s, t, c, 1, 0, NULL, &after);
  assert_int_equal(o.r, PX_AGG_DUPLICATE);
  assert_null(after.step_c);
  assert_int_equal(c->version, 2);
  assert_memory_equal(c->params, p2, CHUNK_BYTES);
  assert_int_equal(steps_completed(s), 2);

  /* a chunk still waiting for its initial values (only the first chunk's were sent) */
  uint64_t numel = 2 * CHUNK_ELEMS;
  float* vals = calloc(CHUNK_ELEMS, sizeof *vals);
  assert_non_null(vals);
  px_declare_args a;
  memset(&a, 0, sizeof a);
  a.name = "u";
  a.dtype = PX_DT_F32;
  a.shape = &numel;
  a.ndim = 1;
  a.values = (const uint8_t*)vals;
  a.values_len = CHUNK_BYTES;
  a.worker_id = 0;
  a.incarnation = 7;
  px_tensor_state* u = NULL;
  bool created = false;
  px_waiter* woken = NULL;
  char err[256] = "";
  assert_int_equal(px_store_declare(&s->store, &a, &u, &created, NULL, &woken, err, sizeof err),
                   PX_ST_OK);
  px_waiters_run(woken);
  assert_true(u->chunks[0].initialized);
  assert_false(u->chunks[1].initialized);
  memset(&after, 0, sizeof after);
  o = push(s, u, &u->chunks[1], 0, 0, NULL, &after);
  assert_int_equal(o.r, PX_AGG_REFUSED);
  assert_int_equal(o.status, PX_ST_FAILED_PRECONDITION);
  assert_string_equal(o.err, "tensor 'u' is still receiving its initial values");
  assert_false(o.taken);
  assert_int_equal(u->chunks[1].ncontrib, 0);
  assert_int_equal(u->chunks[1].contributed[0], 0);
  /* its initialised chunk takes pushes */
  push_counted(s, u, &u->chunks[0], 0, 0);
  free(vals);
  free(p0);
  free(p2);
}

/* ---- the hold budget ------------------------------------------------------------------- */

static void test_hold_budget_stall(void** state) {
  (void)state;
  static const char* const more[] = {"--hold-bytes", "0", NULL};
  px_server* s = start("3", more);
  assert_int_equal(atomic_load(&s->agg.hold_left), 0);
  px_tensor_state* t = declare(s, "h", CHUNK_ELEMS, 6);
  px_chunk_state* c = &t->chunks[0];
  float* want = copy_params(c);
  const uint32_t ord[3] = {0, 1, 2};
  ref_step(want, c->elems, 0, ord, 3, 3);

  px_agg_stall st2, st1;
  memset(&st2, 0, sizeof st2);
  memset(&st1, 0, sizeof st1);
  px_agg_after after;
  memset(&after, 0, sizeof after);
  push_out o2 = push(s, t, c, 0, 2, &st2, &after);
  assert_int_equal(o2.r, PX_AGG_STALLED);
  assert_true(o2.taken); /* its buffer went with the contribution */
  assert_ptr_equal(atomic_load(&st2.on), c);
  assert_int_equal(st2.rank, 2);
  assert_ptr_equal(c->held[2].buf, o2.buf);
  assert_ptr_equal(c->held[2].owner, &st2);
  assert_int_equal(c->ncontrib, 1);
  assert_int_equal(atomic_load(&s->agg.hold_left), 0); /* a stall costs no budget */
  push_out o1 = push(s, t, c, 0, 1, &st1, &after);
  assert_int_equal(o1.r, PX_AGG_STALLED);
  assert_ptr_equal(atomic_load(&st1.on), c);
  assert_int_equal(st1.rank, 1);
  assert_null(after.resumed);
  assert_null(after.step_c);
  /* the stalled push of rank 2 retried: a duplicate, still stalled */
  push_out d = push(s, t, c, 0, 2, NULL, &after);
  assert_int_equal(d.r, PX_AGG_DUPLICATE);
  assert_ptr_equal(atomic_load(&st2.on), c);

  /* rank 0 arrives: both are consumed in rank order and resumed with their buffers */
  push_out o0 = push(s, t, c, 0, 0, NULL, &after);
  assert_int_equal(o0.r, PX_AGG_COUNTED);
  assert_ptr_equal(after.step_c, c);
  assert_int_equal(after.step_version, 1);
  int seen1 = 0, seen2 = 0, count = 0;
  for (px_agg_stall* r = after.resumed; r && count < 8; r = r->next, count++) {
    assert_non_null(r->buf);
    assert_null(atomic_load(&r->on));
    if (r == &st1) seen1++, assert_ptr_equal(r->buf, o1.buf);
    if (r == &st2) seen2++, assert_ptr_equal(r->buf, o2.buf);
  }
  assert_int_equal(count, 2);
  assert_int_equal(seen1, 1);
  assert_int_equal(seen2, 1);
  assert_null(c->held[1].buf);
  assert_null(c->held[2].buf);
  assert_int_equal(c->version, 1);
  assert_memory_equal(c->params, want, (size_t)c->elems * 4);
  px_agg_finish(&s->agg, &after);
  assert_int_equal(atomic_load(&s->agg.hold_left), 0);
  /* the resumed calls own their buffers again */
  px_buf_put(st1.buf, CHUNK_BYTES);
  px_buf_put(st2.buf, CHUNK_BYTES);
  /* resumed: not stalled any more */
  assert_false(px_agg_unstall(&s->agg, &st1));
  assert_false(px_agg_unstall(&s->agg, &st2));
  free(want);
}

/* A budget of one chunk: the first contribution ahead is held, the second stalls. */
static void test_hold_budget_one_chunk(void** state) {
  (void)state;
  static const char* const more[] = {"--hold-bytes", "4K", NULL};
  px_server* s = start("3", more);
  px_tensor_state* t = declare(s, "h1", CHUNK_ELEMS, 8);
  px_chunk_state* c = &t->chunks[0];
  float* want = copy_params(c);
  const uint32_t ord[3] = {0, 1, 2};
  ref_step(want, c->elems, 0, ord, 3, 3);
  px_agg_stall st1, st2;
  memset(&st1, 0, sizeof st1);
  memset(&st2, 0, sizeof st2);
  px_agg_after after;
  memset(&after, 0, sizeof after);
  push_out o2 = push(s, t, c, 0, 2, &st2, &after);
  assert_int_equal(o2.r, PX_AGG_COUNTED);
  assert_null(atomic_load(&st2.on));
  assert_null(c->held[2].owner);
  assert_int_equal(atomic_load(&s->agg.hold_left), 0);
  push_out o1 = push(s, t, c, 0, 1, &st1, &after);
  assert_int_equal(o1.r, PX_AGG_STALLED);
  assert_ptr_equal(atomic_load(&st1.on), c);
  assert_int_equal(atomic_load(&s->agg.hold_left), 0);
  push_out o0 = push(s, t, c, 0, 0, NULL, &after);
  assert_int_equal(o0.r, PX_AGG_COUNTED);
  assert_ptr_equal(after.resumed, &st1); /* only the stalled one is resumed */
  assert_null(st1.next);
  assert_ptr_equal(st1.buf, o1.buf);
  assert_null(atomic_load(&st1.on));
  assert_ptr_equal(after.step_c, c);
  assert_memory_equal(c->params, want, (size_t)c->elems * 4);
  px_agg_finish(&s->agg, &after);
  assert_int_equal(atomic_load(&s->agg.hold_left), CHUNK_BYTES); /* the held one given back */
  px_buf_put(st1.buf, CHUNK_BYTES);
  free(want);
}

static void test_unstall(void** state) {
  (void)state;
  static const char* const more[] = {"--hold-bytes", "0", NULL};
  px_server* s = start("2", more);
  px_tensor_state* t = declare(s, "s", CHUNK_ELEMS, 10);
  px_chunk_state* c = &t->chunks[0];
  float* want = copy_params(c);
  const uint32_t ord[2] = {0, 1};
  ref_step(want, c->elems, 0, ord, 2, 2);
  px_agg_stall st;
  memset(&st, 0, sizeof st);
  px_agg_after after;
  memset(&after, 0, sizeof after);
  push_out o1 = push(s, t, c, 0, 1, &st, &after);
  assert_int_equal(o1.r, PX_AGG_STALLED);
  assert_ptr_equal(atomic_load(&st.on), c);
  /* the call goes away: it stops waiting, its contribution stays counted (and held) */
  assert_true(px_agg_unstall(&s->agg, &st));
  assert_null(atomic_load(&st.on));
  assert_null(c->held[1].owner);
  assert_ptr_equal(c->held[1].buf, o1.buf);
  assert_int_equal(c->contributed[1], 1);
  assert_int_equal(atomic_load(&s->agg.hold_left), -(int64_t)CHUNK_BYTES);
  assert_false(px_agg_unstall(&s->agg, &st));
  assert_int_equal(atomic_load(&s->agg.hold_left), -(int64_t)CHUNK_BYTES);
  /* rank 0 completes the step with it; nothing is resumed */
  push_out o0 = push(s, t, c, 0, 0, NULL, &after);
  assert_int_equal(o0.r, PX_AGG_COUNTED);
  assert_null(after.resumed);
  assert_ptr_equal(after.step_c, c);
  assert_memory_equal(c->params, want, (size_t)c->elems * 4);
  px_agg_finish(&s->agg, &after);
  assert_null(c->held[1].buf);
  assert_int_equal(atomic_load(&s->agg.hold_left), 0);
  assert_false(px_agg_unstall(&s->agg, &st));
  /* a token that never stalled */
  px_agg_stall never;
  memset(&never, 0, sizeof never);
  assert_false(px_agg_unstall(&s->agg, &never));
  free(want);
}

/* ---- --elastic ---------------------------------------------------------------------------- */

/* Joins every rank, then marks `dead` dead by a lease scan at a late now (the others
 * are heard from at that time). */
static void kill_rank(px_server* s, uint32_t workers, uint32_t dead) {
  bool replaced = true;
  for (uint32_t r = 0; r < workers; r++) {
    assert_true(px_members_join(&s->members, r, "w", &replaced) != 0);
    assert_false(replaced);
  }
  const uint64_t late = px_now_ms() + 60000;
  for (uint32_t r = 0; r < workers; r++)
    if (r != dead) atomic_store(&s->members.w[r].last_seen_ms, late);
  px_lease_scan scan;
  px_members_scan(&s->members, late, &scan);
  assert_true(scan.newly_dead);
  for (uint32_t r = 0; r < workers; r++) assert_int_equal(px_members_dead(&s->members, r), r == dead);
}

static void test_elastic_sweep(void** state) {
  (void)state;
  static const char* const more[] = {"--elastic", "--worker-timeout", "1", "--hold-bytes", "4K",
                                     NULL};
  px_server* s = start("3", more);
  px_tensor_state* t = declare(s, "e", 3 * CHUNK_ELEMS, 12);
  px_chunk_state* c0 = &t->chunks[0];
  px_chunk_state* c1 = &t->chunks[1];
  px_chunk_state* c2 = &t->chunks[2];
  float* want0 = copy_params(c0);
  float* want1 = copy_params(c1);
  float* keep2 = copy_params(c2);
  const uint32_t live[2] = {0, 2};
  ref_step(want0, c0->elems, 0, live, 2, 2);
  ref_step(want1, c1->elems, 0, live, 2, 2);

  /* chunk 0: ranks 0 and 2 in (2 held: the budget is spent); chunk 1: rank 2 stalled and
   * rank 0 in */
  push_counted(s, t, c0, 0, 0);
  push_counted(s, t, c0, 0, 2);
  assert_non_null(c0->held[2].buf);
  assert_int_equal(atomic_load(&s->agg.hold_left), 0);
  px_agg_stall st;
  memset(&st, 0, sizeof st);
  px_agg_after after;
  memset(&after, 0, sizeof after);
  push_out o = push(s, t, c1, 0, 2, &st, &after);
  assert_int_equal(o.r, PX_AGG_STALLED);
  push_counted(s, t, c1, 0, 0);
  assert_ptr_equal(atomic_load(&st.on), c1);
  /* nobody is dead yet: the sweep completes nothing */
  assert_null(px_agg_sweep(&s->agg, &s->store));
  assert_int_equal(c0->version, 0);
  assert_int_equal(c1->version, 0);
  assert_int_equal(steps_completed(s), 0);

  kill_rank(s, 3, 1);
  px_agg_stall* resumed = px_agg_sweep(&s->agg, &s->store);
  assert_ptr_equal(resumed, &st);
  assert_null(st.next);
  assert_ptr_equal(st.buf, o.buf);
  assert_null(atomic_load(&st.on));
  px_buf_put(st.buf, CHUNK_BYTES);
  assert_null(c0->held[2].buf);
  assert_int_equal(atomic_load(&s->agg.hold_left), CHUNK_BYTES);
  assert_int_equal(c0->version, 1);
  assert_int_equal(c1->version, 1);
  assert_int_equal(c2->version, 0); /* no contribution at all: not a step */
  assert_int_equal(steps_completed(s), 2);
  assert_memory_equal(c0->params, want0, CHUNK_BYTES);
  assert_memory_equal(c1->params, want1, CHUNK_BYTES);
  assert_memory_equal(c2->params, keep2, CHUNK_BYTES);
  /* the sweep published the steps' frames */
  for (int k = 0; k < 2; k++) {
    px_viewcache* vs = &t->chunks[k].view[0];
    assert_true(vs->checksum_valid);
    assert_true(vs->checksum == px_checksum(t->chunks[k].params, CHUNK_BYTES));
  }
  assert_null(px_agg_sweep(&s->agg, &s->store)); /* nothing left */

  /* the next step skips the dead rank as it goes: rank 2 completes it */
  push_counted(s, t, c0, 1, 0);
  assert_int_equal(c0->next_rank, 2); /* rank 1 skipped */
  memset(&after, 0, sizeof after);
  o = push(s, t, c0, 1, 2, NULL, &after);
  assert_int_equal(o.r, PX_AGG_COUNTED);
  assert_ptr_equal(after.step_c, c0);
  assert_int_equal(after.io.ncontrib, 2);
  px_agg_finish(&s->agg, &after);
  ref_step(want0, c0->elems, 1, live, 2, 2);
  assert_memory_equal(c0->params, want0, CHUNK_BYTES);
  free(want0);
  free(want1);
  free(keep2);
}

/* Without --elastic a dead worker's rank is waited for. */
static void test_bsp_sweep_waits(void** state) {
  (void)state;
  static const char* const more[] = {"--worker-timeout", "1", NULL};
  px_server* s = start("2", more);
  px_tensor_state* t = declare(s, "b", CHUNK_ELEMS, 13);
  px_chunk_state* c = &t->chunks[0];
  float* p0 = copy_params(c);
  push_counted(s, t, c, 0, 0);
  kill_rank(s, 2, 1);
  assert_null(px_agg_sweep(&s->agg, &s->store));
  assert_int_equal(c->version, 0);
  assert_int_equal(c->next_rank, 1);
  assert_memory_equal(c->params, p0, CHUNK_BYTES);
  /* rank 0 pushing the next step is still ahead */
  px_agg_after after;
  memset(&after, 0, sizeof after);
  push_out o = push(s, t, c, 1, 0, NULL, &after);
  assert_int_equal(o.r, PX_AGG_REFUSED);
  assert_int_equal(o.status, PX_ST_OUT_OF_RANGE);
  free(p0);
}

/* ---- publishing --------------------------------------------------------------------------- */

static int slot_of(const px_viewcache* vs, uint64_t key) {
  for (int i = 0; i < PX_CACHE_SLOTS; i++)
    if (vs->cache[i].used && vs->cache[i].key == key) return i;
  return -1;
}

static void test_finish_publishes(void** state) {
  (void)state;
  px_server* s = start("2", NULL);
  px_tensor_state* t = declare(s, "f", CHUNK_ELEMS, 14);
  px_chunk_state* c = &t->chunks[0];
  px_viewcache* vs = &c->view[0];
  const uint32_t ord[2] = {0, 1};

  /* nobody pulls diffs: the step's RAW frame, pending until px_agg_finish */
  push_counted(s, t, c, 0, 0);
  px_agg_after after;
  memset(&after, 0, sizeof after);
  push_out o = push(s, t, c, 0, 1, NULL, &after);
  assert_int_equal(o.r, PX_AGG_COUNTED);
  assert_ptr_equal(after.step_c, c);
  int si = slot_of(vs, PX_KEY_RAW);
  assert_true(si >= 0);
  assert_true(vs->cache[si].pending);
  assert_null(vs->cache[si].frame);
  assert_false(vs->checksum_valid);
  px_agg_finish(&s->agg, &after);
  si = slot_of(vs, PX_KEY_RAW);
  assert_true(si >= 0);
  assert_false(vs->cache[si].pending);
  px_frame* f = vs->cache[si].frame;
  assert_non_null(f);
  assert_int_equal(f->version, 1);
  assert_int_equal(f->encoding, PX_ENC_RAW);
  assert_int_equal(f->len, CHUNK_BYTES);
  assert_memory_equal(f->data, c->params, CHUNK_BYTES);
  assert_true(f->checksum == px_checksum(c->params, CHUNK_BYTES));
  assert_true(vs->checksum_valid);
  assert_true(vs->checksum == f->checksum);
  /* px_agg_finish without a step does nothing */
  px_agg_after none;
  memset(&none, 0, sizeof none);
  px_agg_finish(&s->agg, &none);

  /* a pull accepted diffs at version 1: the next step encodes its delta for base 1 */
  float* old = copy_params(c);
  pthread_mutex_lock(&c->mu);
  (void)px_fcache_key(&s->fcache, vs, c->version, 0, true, true);
  pthread_mutex_unlock(&c->mu);
  push_counted(s, t, c, 1, 0);
  memset(&after, 0, sizeof after);
  o = push(s, t, c, 1, 1, NULL, &after);
  assert_ptr_equal(after.step_c, c);
  assert_non_null(after.io.enc[0]);
  si = slot_of(vs, 1);
  assert_true(si >= 0);
  assert_true(vs->cache[si].pending);
  px_agg_finish(&s->agg, &after);
  si = slot_of(vs, 1);
  assert_true(si >= 0);
  assert_false(vs->cache[si].pending);
  f = vs->cache[si].frame;
  assert_non_null(f);
  assert_int_equal(f->version, 2);
  assert_true(f->checksum == px_checksum(c->params, CHUNK_BYTES));
  assert_int_equal(vs->nhist, 1);
  assert_int_equal(vs->hist[0]->version, 2);
  assert_int_equal(vs->hist[0]->base, 1);
  assert_int_equal(vs->hist[0]->encoding, PX_ENC_DELTA_ZSTD);
  float* want = old;
  ref_step(want, c->elems, 1, ord, 2, 2);
  assert_memory_equal(c->params, want, CHUNK_BYTES);
  free(old);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_push_in_rank_order, teardown),
      cmocka_unit_test_teardown(test_push_any_order_same_bits, teardown),
      cmocka_unit_test_teardown(test_steps_and_counter, teardown),
      cmocka_unit_test_teardown(test_duplicates, teardown),
      cmocka_unit_test_teardown(test_refusals, teardown),
      cmocka_unit_test_teardown(test_hold_budget_stall, teardown),
      cmocka_unit_test_teardown(test_hold_budget_one_chunk, teardown),
      cmocka_unit_test_teardown(test_unstall, teardown),
      cmocka_unit_test_teardown(test_elastic_sweep, teardown),
      cmocka_unit_test_teardown(test_bsp_sweep_waits, teardown),
      cmocka_unit_test_teardown(test_finish_publishes, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
