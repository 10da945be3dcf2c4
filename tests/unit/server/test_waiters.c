/* Unit tests of server/waiters.c (waiters.h): parking and taking (order, content, the
 * links of what stays parked), take on an empty list, take_expired (strictly before now,
 * the rest kept linked), close of parked and unparked waiters, the drain, run (each job
 * once, in list order, a job re-parking itself meanwhile), join, several lists under one
 * px_waiters, and threads parking, closing, taking and running at once with every park
 * accounted for exactly once. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "waiters.h"

/* ---- a waiter that records its runs -------------------------------------------------------- */

typedef struct tw {
  px_waiter w; /* first: a px_job* is a px_waiter* is a tw* */
  int id;
  int runs;
  px_waiters* ws;       /* re-park target of repark_fn */
  px_waitlist* repark;
  px_park_result repark_result;
} tw;

#define LOG_MAX 64
static int run_log[LOG_MAX];
static int run_nlog;

static void log_reset(void) { run_nlog = 0; }

static void record_fn(px_job* j) {
  tw* t = (tw*)j;
  /* run detaches the waiter from the taken list before its job runs */
  assert_null(t->w.next);
  assert_null(t->w.prev);
  assert_null(t->w.on);
  t->runs++;
  assert_true(run_nlog < LOG_MAX);
  run_log[run_nlog++] = t->id;
}

/* Records, then parks itself again on t->repark. */
static void repark_fn(px_job* j) {
  tw* t = (tw*)j;
  record_fn(j);
  t->repark_result = px_waiters_park(t->ws, t->repark, &t->w);
}

static void tw_init(tw* t, int id, uint64_t deadline_ms) {
  memset(t, 0, sizeof *t);
  t->w.job.fn = record_fn;
  t->w.deadline_ms = deadline_ms;
  t->id = id;
  t->repark_result = (px_park_result)-1;
}

/* The ids of list l from its head, checking its links: head->prev NULL, next->prev == this,
 * every member's on == l. At most max; fails when longer. */
static int parked_ids(const px_waitlist* l, int* ids, int max) {
  int n = 0;
  const px_waiter* prev = NULL;
  for (const px_waiter* w = l->head; w; w = w->next) {
    if (n >= max) fail_msg("list longer than %d (a cycle?)", max);
    assert_ptr_equal(w->prev, prev);
    assert_ptr_equal(w->on, l);
    ids[n++] = ((const tw*)w)->id;
    prev = w;
  }
  return n;
}

/* The ids of a taken list (linked by next), checking that none is parked any more. */
static int taken_ids(const px_waiter* list, int* ids, int max) {
  int n = 0;
  for (const px_waiter* w = list; w; w = w->next) {
    if (n >= max) fail_msg("taken list longer than %d (a cycle?)", max);
    assert_null(w->on);
    ids[n++] = ((const tw*)w)->id;
  }
  return n;
}

static void expect_ids(const int* got, int ngot, const int* want, int nwant) {
  if (ngot != nwant) fail_msg("%d waiters, want %d", ngot, nwant);
  for (int i = 0; i < nwant; i++)
    if (got[i] != want[i]) fail_msg("waiter %d is id %d, want %d", i, got[i], want[i]);
}

static void expect_parked(const px_waitlist* l, const int* want, int nwant) {
  int got[LOG_MAX];
  int n = parked_ids(l, got, LOG_MAX);
  expect_ids(got, n, want, nwant);
}

static void expect_taken(const px_waiter* list, const int* want, int nwant) {
  int got[LOG_MAX];
  int n = taken_ids(list, got, LOG_MAX);
  expect_ids(got, n, want, nwant);
}

/* ---- park and take ------------------------------------------------------------------------- */

static void test_park_take_order(void** state) {
  (void)state;
  px_waiters ws;
  px_waiters_init(&ws);
  assert_false(px_waiters_draining(&ws));
  px_waitlist l = {NULL};
  tw t[5];
  for (int i = 0; i < 5; i++) {
    tw_init(&t[i], i + 1, 0);
    assert_int_equal(px_waiters_park(&ws, &l, &t[i].w), PX_PARKED);
    assert_ptr_equal(t[i].w.on, &l);
    assert_false(t[i].w.closed);
  }
  /* parking puts a waiter at the head: the list is newest first */
  const int order[] = {5, 4, 3, 2, 1};
  expect_parked(&l, order, 5);
  px_waiter* got = px_waiters_take(&ws, &l);
  assert_null(l.head);
  expect_taken(got, order, 5);
  for (int i = 0; i < 5; i++) {
    assert_int_equal(t[i].runs, 0); /* take runs nothing */
    assert_false(t[i].w.closed);
  }
  /* taking again: nothing */
  assert_null(px_waiters_take(&ws, &l));
  /* a taken waiter can park again */
  assert_int_equal(px_waiters_park(&ws, &l, &t[2].w), PX_PARKED);
  const int one[] = {3};
  expect_parked(&l, one, 1);
  expect_taken(px_waiters_take(&ws, &l), one, 1);
  assert_null(l.head);
  px_waiters_deinit(&ws);
}

static void test_take_empty(void** state) {
  (void)state;
  px_waiters ws;
  px_waiters_init(&ws);
  px_waitlist l = {NULL};
  assert_null(px_waiters_take(&ws, &l));
  assert_null(px_waiters_take_expired(&ws, &l, 0));
  assert_null(px_waiters_take_expired(&ws, &l, UINT64_MAX));
  assert_null(l.head);
  px_waiters_deinit(&ws);
}

static void test_take_expired(void** state) {
  (void)state;
  px_waiters ws;
  px_waiters_init(&ws);
  px_waitlist l = {NULL};
  /* parked in id order 0..7, so the list (newest first) is 7,6,...,0 */
  const uint64_t deadline[8] = {10, 100, 5, 100, 99, 101, 0, UINT64_MAX};
  tw t[8];
  for (int i = 0; i < 8; i++) {
    tw_init(&t[i], i, deadline[i]);
    assert_int_equal(px_waiters_park(&ws, &l, &t[i].w), PX_PARKED);
  }
  const int all[] = {7, 6, 5, 4, 3, 2, 1, 0};
  expect_parked(&l, all, 8);
  /* deadline 0 is not before 0: nothing */
  assert_null(px_waiters_take_expired(&ws, &l, 0));
  expect_parked(&l, all, 8);
  /* before 1: only deadline 0 (id 6, in the middle) */
  const int e1[] = {6};
  expect_taken(px_waiters_take_expired(&ws, &l, 1), e1, 1);
  const int r1[] = {7, 5, 4, 3, 2, 1, 0};
  expect_parked(&l, r1, 7);
  /* before 100: deadlines 10, 5, 99 (ids 4, 2, 0: the tail among them), in list order;
   * the 100s are not before 100 */
  const int e2[] = {4, 2, 0};
  expect_taken(px_waiters_take_expired(&ws, &l, 100), e2, 3);
  const int r2[] = {7, 5, 3, 1};
  expect_parked(&l, r2, 4);
  /* the head (id 7, UINT64_MAX) never expires; before 101: ids 3 and 1 */
  const int e3[] = {3, 1};
  expect_taken(px_waiters_take_expired(&ws, &l, 101), e3, 2);
  const int r3[] = {7, 5};
  expect_parked(&l, r3, 2);
  /* before UINT64_MAX: id 5 (the tail) */
  const int e4[] = {5};
  expect_taken(px_waiters_take_expired(&ws, &l, UINT64_MAX), e4, 1);
  const int r4[] = {7};
  expect_parked(&l, r4, 1);
  assert_null(px_waiters_take_expired(&ws, &l, UINT64_MAX));
  /* the rest: take them all */
  expect_taken(px_waiters_take(&ws, &l), r4, 1);
  assert_null(l.head);
  /* every waiter expired at once: the list is empty afterwards */
  for (int i = 0; i < 4; i++) {
    tw_init(&t[i], i, (uint64_t)i);
    assert_int_equal(px_waiters_park(&ws, &l, &t[i].w), PX_PARKED);
  }
  const int e5[] = {3, 2, 1, 0};
  expect_taken(px_waiters_take_expired(&ws, &l, 4), e5, 4);
  assert_null(l.head);
  /* only the head expired: the new head has no prev */
  for (int i = 0; i < 3; i++) {
    tw_init(&t[i], i, i == 2 ? 0 : 50);
    assert_int_equal(px_waiters_park(&ws, &l, &t[i].w), PX_PARKED);
  }
  const int e6[] = {2};
  expect_taken(px_waiters_take_expired(&ws, &l, 1), e6, 1);
  const int r6[] = {1, 0};
  expect_parked(&l, r6, 2);
  expect_taken(px_waiters_take(&ws, &l), r6, 2);
  px_waiters_deinit(&ws);
}

/* ---- close and drain ----------------------------------------------------------------------- */

static void test_close_parked(void** state) {
  (void)state;
  px_waiters ws;
  px_waiters_init(&ws);
  px_waitlist l = {NULL};
  tw t[5];
  for (int i = 0; i < 5; i++) {
    tw_init(&t[i], i, 0);
    assert_int_equal(px_waiters_park(&ws, &l, &t[i].w), PX_PARKED);
  }
  /* list 4,3,2,1,0: close the middle one */
  assert_true(px_waiters_close(&ws, &t[2].w));
  assert_true(t[2].w.closed);
  assert_null(t[2].w.on);
  assert_null(t[2].w.next);
  assert_null(t[2].w.prev);
  const int r1[] = {4, 3, 1, 0};
  expect_parked(&l, r1, 4);
  /* the head and the tail */
  assert_true(px_waiters_close(&ws, &t[4].w));
  const int r2[] = {3, 1, 0};
  expect_parked(&l, r2, 3);
  assert_true(px_waiters_close(&ws, &t[0].w));
  const int r3[] = {3, 1};
  expect_parked(&l, r3, 2);
  /* a closed waiter never parks again and the list stays as it is */
  assert_int_equal(px_waiters_park(&ws, &l, &t[2].w), PX_PARK_CLOSED);
  assert_null(t[2].w.on);
  expect_parked(&l, r3, 2);
  /* closing again: it is not parked */
  assert_false(px_waiters_close(&ws, &t[2].w));
  assert_true(t[2].w.closed);
  /* the last two */
  assert_true(px_waiters_close(&ws, &t[3].w));
  assert_true(px_waiters_close(&ws, &t[1].w));
  assert_null(l.head);
  assert_null(px_waiters_take(&ws, &l));
  px_waiters_deinit(&ws);
}

static void test_close_not_parked(void** state) {
  (void)state;
  px_waiters ws;
  px_waiters_init(&ws);
  px_waitlist l = {NULL};
  tw a, b, c;
  tw_init(&a, 1, 0);
  tw_init(&b, 2, 0);
  tw_init(&c, 3, 0);
  /* never parked */
  assert_false(px_waiters_close(&ws, &a.w));
  assert_true(a.w.closed);
  assert_int_equal(px_waiters_park(&ws, &l, &a.w), PX_PARK_CLOSED);
  assert_null(l.head);
  /* parked, then taken: close finds it not parked (the taker owns it) */
  assert_int_equal(px_waiters_park(&ws, &l, &b.w), PX_PARKED);
  assert_int_equal(px_waiters_park(&ws, &l, &c.w), PX_PARKED);
  px_waiter* got = px_waiters_take(&ws, &l);
  assert_false(px_waiters_close(&ws, &b.w));
  assert_true(b.w.closed);
  /* the taken list is unchanged by the close */
  const int both[] = {3, 2};
  expect_taken(got, both, 2);
  log_reset();
  px_waiters_run(got);
  expect_ids(run_log, run_nlog, both, 2);
  /* closed while taken: its job re-examines and parks again, which answers CLOSED */
  assert_int_equal(px_waiters_park(&ws, &l, &b.w), PX_PARK_CLOSED);
  assert_int_equal(px_waiters_park(&ws, &l, &c.w), PX_PARKED);
  const int only_c[] = {3};
  expect_parked(&l, only_c, 1);
  assert_true(px_waiters_close(&ws, &c.w));
  assert_null(l.head);
  px_waiters_deinit(&ws);
}

static void test_drain(void** state) {
  (void)state;
  px_waiters ws;
  px_waiters_init(&ws);
  px_waitlist l = {NULL};
  tw a, b, c, d;
  tw_init(&a, 1, 0);
  tw_init(&b, 2, 0);
  tw_init(&c, 3, 0);
  tw_init(&d, 4, 0);
  assert_false(px_waiters_draining(&ws));
  assert_int_equal(px_waiters_park(&ws, &l, &a.w), PX_PARKED);
  assert_int_equal(px_waiters_park(&ws, &l, &d.w), PX_PARKED);
  px_waiters_drain(&ws);
  assert_true(px_waiters_draining(&ws));
  /* no more parking */
  assert_int_equal(px_waiters_park(&ws, &l, &b.w), PX_PARK_DRAINING);
  assert_null(b.w.on);
  assert_false(b.w.closed);
  /* a closed waiter answers CLOSED even while draining */
  assert_false(px_waiters_close(&ws, &c.w));
  assert_int_equal(px_waiters_park(&ws, &l, &c.w), PX_PARK_CLOSED);
  /* what was parked before stays parked: close and take still work */
  const int before[] = {4, 1};
  expect_parked(&l, before, 2);
  assert_true(px_waiters_close(&ws, &d.w));
  const int left[] = {1};
  expect_taken(px_waiters_take(&ws, &l), left, 1);
  assert_null(l.head);
  /* draining stays on */
  px_waiters_drain(&ws);
  assert_true(px_waiters_draining(&ws));
  assert_int_equal(px_waiters_park(&ws, &l, &a.w), PX_PARK_DRAINING);
  assert_null(l.head);
  px_waiters_deinit(&ws);
}

/* ---- run and join -------------------------------------------------------------------------- */

static void test_run_order(void** state) {
  (void)state;
  px_waiters ws;
  px_waiters_init(&ws);
  px_waitlist a = {NULL}, b = {NULL};
  tw t[6];
  for (int i = 0; i < 6; i++) {
    tw_init(&t[i], 10 + i, 0);
    assert_int_equal(px_waiters_park(&ws, &a, &t[i].w), PX_PARKED);
  }
  /* ids 11, 13 and 15 park themselves on b while run goes on through the list */
  for (int i = 1; i < 6; i += 2) {
    t[i].w.job.fn = repark_fn;
    t[i].ws = &ws;
    t[i].repark = &b;
  }
  px_waiter* got = px_waiters_take(&ws, &a);
  const int order[] = {15, 14, 13, 12, 11, 10};
  expect_taken(got, order, 6);
  log_reset();
  px_waiters_run(got);
  expect_ids(run_log, run_nlog, order, 6);
  for (int i = 0; i < 6; i++) assert_int_equal(t[i].runs, 1);
  assert_null(a.head);
  for (int i = 1; i < 6; i += 2) assert_int_equal(t[i].repark_result, PX_PARKED);
  /* re-parked in run order 15, 13, 11: newest (11) first on b */
  const int on_b[] = {11, 13, 15};
  expect_parked(&b, on_b, 3);
  /* the ones that did not re-park are not linked to anything */
  for (int i = 0; i < 6; i += 2) {
    assert_null(t[i].w.on);
    assert_null(t[i].w.next);
    assert_null(t[i].w.prev);
  }
  /* run them again: each once more */
  for (int i = 1; i < 6; i += 2) t[i].w.job.fn = record_fn;
  log_reset();
  px_waiters_run(px_waiters_take(&ws, &b));
  expect_ids(run_log, run_nlog, on_b, 3);
  for (int i = 0; i < 6; i++) assert_int_equal(t[i].runs, i % 2 ? 2 : 1);
  /* an empty list runs nothing */
  log_reset();
  px_waiters_run(NULL);
  assert_int_equal(run_nlog, 0);
  px_waiters_deinit(&ws);
}

static void test_join(void** state) {
  (void)state;
  px_waiters ws;
  px_waiters_init(&ws);
  px_waitlist a = {NULL}, b = {NULL};
  tw t[5];
  for (int i = 0; i < 5; i++) {
    tw_init(&t[i], i, 0);
    assert_int_equal(px_waiters_park(&ws, i < 3 ? &a : &b, &t[i].w), PX_PARKED);
  }
  assert_null(px_waiters_join(NULL, NULL));
  px_waiter* la = px_waiters_take(&ws, &a);
  px_waiter* lb = px_waiters_take(&ws, &b);
  assert_ptr_equal(px_waiters_join(la, NULL), la);
  assert_ptr_equal(px_waiters_join(NULL, lb), lb);
  px_waiter* j = px_waiters_join(la, lb);
  assert_ptr_equal(j, la);
  const int order[] = {2, 1, 0, 4, 3};
  expect_taken(j, order, 5);
  log_reset();
  px_waiters_run(j);
  expect_ids(run_log, run_nlog, order, 5);
  /* a one-waiter list joined with another */
  assert_int_equal(px_waiters_park(&ws, &a, &t[0].w), PX_PARKED);
  assert_int_equal(px_waiters_park(&ws, &b, &t[1].w), PX_PARKED);
  assert_int_equal(px_waiters_park(&ws, &b, &t[2].w), PX_PARKED);
  la = px_waiters_take(&ws, &a);
  lb = px_waiters_take(&ws, &b);
  const int order2[] = {0, 2, 1};
  expect_taken(px_waiters_join(la, lb), order2, 3);
  px_waiters_deinit(&ws);
}

static void test_lists_share_one_waiters(void** state) {
  (void)state;
  px_waiters ws;
  px_waiters_init(&ws);
  px_waitlist l[3] = {{NULL}, {NULL}, {NULL}};
  tw t[9];
  for (int i = 0; i < 9; i++) {
    tw_init(&t[i], i, (uint64_t)i);
    assert_int_equal(px_waiters_park(&ws, &l[i % 3], &t[i].w), PX_PARKED);
  }
  const int l0[] = {6, 3, 0}, l1[] = {7, 4, 1}, l2[] = {8, 5, 2};
  expect_parked(&l[0], l0, 3);
  expect_parked(&l[1], l1, 3);
  expect_parked(&l[2], l2, 3);
  /* taking one list leaves the others as they are */
  expect_taken(px_waiters_take(&ws, &l[1]), l1, 3);
  assert_null(l[1].head);
  expect_parked(&l[0], l0, 3);
  expect_parked(&l[2], l2, 3);
  /* take_expired on one list only looks at that list */
  const int e2[] = {2};
  expect_taken(px_waiters_take_expired(&ws, &l[2], 3), e2, 1);
  expect_parked(&l[0], l0, 3);
  const int l2r[] = {8, 5};
  expect_parked(&l[2], l2r, 2);
  /* a close unlinks from the list the waiter is on */
  assert_true(px_waiters_close(&ws, &t[3].w));
  const int l0r[] = {6, 0};
  expect_parked(&l[0], l0r, 2);
  expect_parked(&l[2], l2r, 2);
  /* a taken waiter parks on another list */
  assert_int_equal(px_waiters_park(&ws, &l[0], &t[4].w), PX_PARKED);
  const int l0b[] = {4, 6, 0};
  expect_parked(&l[0], l0b, 3);
  /* the drain is for every list */
  px_waiters_drain(&ws);
  assert_int_equal(px_waiters_park(&ws, &l[1], &t[1].w), PX_PARK_DRAINING);
  assert_int_equal(px_waiters_park(&ws, &l[2], &t[2].w), PX_PARK_DRAINING);
  assert_null(l[1].head);
  expect_taken(px_waiters_take(&ws, &l[0]), l0b, 3);
  expect_taken(px_waiters_take(&ws, &l[2]), l2r, 2);
  px_waiters_deinit(&ws);
}

/* ---- threads ----------------------------------------------------------------------------- */

#define CC_LISTS 3
#define CC_PARKERS 3
#define CC_TAKERS 2
#define CC_PER 200            /* waiters per parker */
#define CC_MAX_PARKS 4        /* successful parks per waiter at most (1 + re-parks) */
#define CC_TAKER_ITERS 200000 /* a bound; the main thread takes what is left */

typedef struct cw {
  px_waiter w; /* first */
  int id;
  _Atomic int attempts;   /* parks tried by anyone */
  _Atomic int parked;     /* parks that answered PX_PARKED */
  _Atomic int refused;    /* parks that answered PX_PARK_CLOSED */
  _Atomic int runs;
  _Atomic int bad;        /* run while still linked */
  int closed_parked;      /* px_waiters_close answered true (its owner only) */
} cw;

static px_waiters cc_ws;
static px_waitlist cc_lists[CC_LISTS];
static cw cc_w[CC_PARKERS][CC_PER];
static atomic_bool cc_reparking;
static atomic_int cc_parkers_done;
static _Atomic int cc_other; /* any other park answer: DRAINING must not happen */

static void cc_fn(px_job* j) {
  cw* c = (cw*)j;
  if (c->w.on || c->w.next || c->w.prev) atomic_fetch_add(&c->bad, 1);
  atomic_fetch_add(&c->runs, 1);
  if (!atomic_load(&cc_reparking)) return;
  /* re-examines and parks again, on another list, a bounded number of times */
  int a = atomic_fetch_add(&c->attempts, 1);
  if (a >= CC_MAX_PARKS) {
    atomic_fetch_sub(&c->attempts, 1);
    return;
  }
  px_park_result r = px_waiters_park(&cc_ws, &cc_lists[(c->id + a) % CC_LISTS], &c->w);
  if (r == PX_PARKED) atomic_fetch_add(&c->parked, 1);
  else if (r == PX_PARK_CLOSED) atomic_fetch_add(&c->refused, 1);
  else atomic_fetch_add(&cc_other, 1);
}

static void* cc_parker(void* arg) {
  const int p = (int)(intptr_t)arg;
  for (int i = 0; i < CC_PER; i++) {
    cw* c = &cc_w[p][i];
    atomic_fetch_add(&c->attempts, 1);
    px_park_result r = px_waiters_park(&cc_ws, &cc_lists[i % CC_LISTS], &c->w);
    if (r == PX_PARKED) atomic_fetch_add(&c->parked, 1);
    else atomic_fetch_add(&cc_other, 1);
    /* every third waiter's call ends a little later: close the one parked 2 before */
    if (i >= 2 && (i - 2) % 3 == 0)
      cc_w[p][i - 2].closed_parked = px_waiters_close(&cc_ws, &cc_w[p][i - 2].w);
  }
  atomic_fetch_add(&cc_parkers_done, 1);
  return NULL;
}

static void* cc_taker(void* arg) {
  const int k = (int)(intptr_t)arg;
  int after_done = 0;
  for (int it = 0; it < CC_TAKER_ITERS && after_done < 50; it++) {
    if (atomic_load(&cc_parkers_done) == CC_PARKERS) after_done++;
    px_waitlist* l = &cc_lists[(it + k) % CC_LISTS];
    px_waiter* got = (it % 4 == 1) ? px_waiters_take_expired(&cc_ws, l, (uint64_t)(it % 60))
                                   : px_waiters_take(&cc_ws, l);
    /* sometimes join two lists before running them */
    if (it % 5 == 0)
      got = px_waiters_join(got, px_waiters_take(&cc_ws, &cc_lists[(it + 1) % CC_LISTS]));
    px_waiters_run(got);
  }
  return NULL;
}

static void test_threads(void** state) {
  (void)state;
  px_waiters_init(&cc_ws);
  memset(cc_lists, 0, sizeof cc_lists);
  memset(cc_w, 0, sizeof cc_w);
  atomic_store(&cc_reparking, true);
  atomic_store(&cc_parkers_done, 0);
  atomic_store(&cc_other, 0);
  for (int p = 0; p < CC_PARKERS; p++)
    for (int i = 0; i < CC_PER; i++) {
      cw* c = &cc_w[p][i];
      c->w.job.fn = cc_fn;
      c->id = p * CC_PER + i;
      c->w.deadline_ms = (uint64_t)(c->id % 50);
    }
  pthread_t th[CC_PARKERS + CC_TAKERS];
  for (int k = 0; k < CC_TAKERS; k++)
    assert_int_equal(pthread_create(&th[CC_PARKERS + k], NULL, cc_taker, (void*)(intptr_t)k), 0);
  for (int p = 0; p < CC_PARKERS; p++)
    assert_int_equal(pthread_create(&th[p], NULL, cc_parker, (void*)(intptr_t)p), 0);
  for (int i = 0; i < CC_PARKERS + CC_TAKERS; i++) assert_int_equal(pthread_join(th[i], NULL), 0);
  /* what is still parked: check the lists' links, then take and run it without re-parking */
  atomic_store(&cc_reparking, false);
  for (int l = 0; l < CC_LISTS; l++) {
    const px_waiter* prev = NULL;
    int n = 0;
    for (const px_waiter* w = cc_lists[l].head; w; w = w->next, n++) {
      assert_true(n < CC_PARKERS * CC_PER);
      assert_ptr_equal(w->prev, prev);
      assert_ptr_equal(w->on, &cc_lists[l]);
      prev = w;
    }
    px_waiters_run(px_waiters_take(&cc_ws, &cc_lists[l]));
    assert_null(cc_lists[l].head);
  }
  assert_int_equal(atomic_load(&cc_other), 0);
  /* every successful park ended exactly once: run by a taker (or the final take) or
   * unlinked by its owner's close */
  long parks = 0, runs = 0, closes = 0;
  for (int p = 0; p < CC_PARKERS; p++)
    for (int i = 0; i < CC_PER; i++) {
      cw* c = &cc_w[p][i];
      const int parked = atomic_load(&c->parked), r = atomic_load(&c->runs);
      if (parked != r + (c->closed_parked ? 1 : 0))
        fail_msg("waiter %d: parked %d times, ran %d, closed while parked %d", c->id, parked, r,
                 c->closed_parked);
      assert_int_equal(atomic_load(&c->bad), 0);
      assert_true(parked >= 1 && parked <= CC_MAX_PARKS);
      assert_int_equal(atomic_load(&c->attempts), parked + atomic_load(&c->refused));
      const bool closed = i <= CC_PER - 3 && i % 3 == 0;
      assert_int_equal(c->w.closed, closed);
      if (!closed) assert_int_equal(atomic_load(&c->refused), 0);
      /* a closed waiter parks no more: the close ended its last park, or its last run
       * was refused, or it ran out of re-parks */
      if (closed && !c->closed_parked)
        assert_true(atomic_load(&c->refused) == 1 || parked == CC_MAX_PARKS);
      assert_null(c->w.on);
      parks += parked;
      runs += r;
      closes += c->closed_parked;
    }
  assert_int_equal(parks, runs + closes);
  print_message("%ld parks, %ld runs, %ld closes of parked waiters\n", parks, runs, closes);
  px_waiters_deinit(&cc_ws);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_park_take_order),
      cmocka_unit_test(test_take_empty),
      cmocka_unit_test(test_take_expired),
      cmocka_unit_test(test_close_parked),
      cmocka_unit_test(test_close_not_parked),
      cmocka_unit_test(test_drain),
      cmocka_unit_test(test_run_order),
      cmocka_unit_test(test_join),
      cmocka_unit_test(test_lists_share_one_waiters),
      cmocka_unit_test(test_threads),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
