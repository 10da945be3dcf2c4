/* Unit tests of common/util/taskpool.c. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <regex.h>
#include <stdatomic.h>
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util/clock.h"
#include "util/flags.h"
#include "util/log.h"
#include "util/mem.h"
#include "util/net.h"
#include "util/str.h"
#include "util/taskpool.h"

/* ---- pool --------------------------------------------------------------------------- */

#define NJOBS 20000

typedef struct {
  px_job job;
  atomic_int runs;
} count_job;

static void count_fn(px_job* j) {
  count_job* c = (count_job*)j;
  atomic_fetch_add(&c->runs, 1);
}

typedef struct {
  px_taskpool* pool;
  count_job* jobs;
  size_t n;
} producer_arg;

static void* producer(void* arg) {
  producer_arg* p = arg;
  for (size_t i = 0; i < p->n; i++) px_taskpool_submit(p->pool, &p->jobs[i].job);
  return NULL;
}

static void test_pool_runs_each_job_once(void** state) {
  (void)state;
  px_taskpool* pool = px_taskpool_create(4);
  assert_non_null(pool);
  assert_int_equal(px_taskpool_threads(pool), 4);
  count_job* jobs = calloc(NJOBS, sizeof *jobs);
  assert_non_null(jobs);
  for (size_t i = 0; i < NJOBS; i++) jobs[i].job.fn = count_fn;
  /* four producers submit concurrently */
  pthread_t th[4];
  producer_arg pa[4];
  for (int t = 0; t < 4; t++) {
    pa[t] = (producer_arg){pool, jobs + t * (NJOBS / 4), NJOBS / 4};
    assert_int_equal(pthread_create(&th[t], NULL, producer, &pa[t]), 0);
  }
  for (int t = 0; t < 4; t++) pthread_join(th[t], NULL);
  px_taskpool_destroy(pool);
  for (size_t i = 0; i < NJOBS; i++)
    if (atomic_load(&jobs[i].runs) != 1) fail_msg("job %zu ran %d times", i, jobs[i].runs);
  free(jobs);
}

/* Every thread of the pool must be able to run a job at the same time: nthreads jobs
 * wait for each other (bounded by a 10 s deadline). */
typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  unsigned arrived, want;
  bool timed_out;
  pthread_t who[8];
} rendezvous;

typedef struct {
  px_job job;
  rendezvous* r;
} rv_job;

static struct timespec deadline_in(int seconds) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += seconds;
  return ts;
}

static void rv_fn(px_job* j) {
  rendezvous* r = ((rv_job*)j)->r;
  struct timespec dl = deadline_in(10);
  pthread_mutex_lock(&r->mu);
  r->who[r->arrived++] = pthread_self();
  pthread_cond_broadcast(&r->cv);
  while (r->arrived < r->want && !r->timed_out)
    if (pthread_cond_timedwait(&r->cv, &r->mu, &dl) == ETIMEDOUT) r->timed_out = true;
  pthread_mutex_unlock(&r->mu);
}

static void test_pool_threads_run_concurrently(void** state) {
  (void)state;
  enum { N = 4 };
  rendezvous r = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, N, false, {0}};
  rv_job jobs[N];
  px_taskpool* pool = px_taskpool_create(N);
  assert_non_null(pool);
  for (int i = 0; i < N; i++) {
    jobs[i] = (rv_job){{rv_fn, NULL}, &r};
    px_taskpool_submit(pool, &jobs[i].job);
  }
  px_taskpool_destroy(pool);
  assert_false(r.timed_out);
  assert_int_equal(r.arrived, N);
  for (int i = 0; i < N; i++)
    for (int k = i + 1; k < N; k++) assert_false(pthread_equal(r.who[i], r.who[k]));
}

/* A job that blocks the only thread until the gate opens, so the others stay queued. */
typedef struct {
  px_job job;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool started, open;
} gate_job;

static void gate_fn(px_job* j) {
  gate_job* g = (gate_job*)j;
  struct timespec dl = deadline_in(10);
  pthread_mutex_lock(&g->mu);
  g->started = true;
  pthread_cond_broadcast(&g->cv);
  while (!g->open)
    if (pthread_cond_timedwait(&g->cv, &g->mu, &dl) == ETIMEDOUT) break;
  pthread_mutex_unlock(&g->mu);
}

typedef struct {
  px_job job;
  px_taskpool* pool;
  int left;
  atomic_int* total;
} chain_job;

/* Resubmits itself `left` times, then frees itself. */
static void chain_fn(px_job* j) {
  chain_job* c = (chain_job*)j;
  atomic_fetch_add(c->total, 1);
  if (c->left-- > 0)
    px_taskpool_submit(c->pool, &c->job);
  else
    free(c);
}

static atomic_int order_next;
typedef struct {
  px_job job;
  int idx;
  int ran_as;
} order_job;
static void order_fn(px_job* j) {
  order_job* oj = (order_job*)j;
  oj->ran_as = atomic_fetch_add(&order_next, 1);
}

static void test_pool_destroy_runs_queued_jobs(void** state) {
  (void)state;
  px_taskpool* pool = px_taskpool_create(1);
  assert_non_null(pool);
  gate_job g = {.job = {gate_fn, NULL}, .mu = PTHREAD_MUTEX_INITIALIZER,
                .cv = PTHREAD_COND_INITIALIZER};
  px_taskpool_submit(pool, &g.job);
  enum { N = 500 };
  order_job* jobs = calloc(N, sizeof *jobs);
  assert_non_null(jobs);
  atomic_store(&order_next, 0);
  for (int i = 0; i < N; i++) {
    jobs[i] = (order_job){{order_fn, NULL}, i, -1};
    px_taskpool_submit(pool, &jobs[i].job);
  }
  atomic_int total = 0;
  for (int i = 0; i < 3; i++) {
    chain_job* c = malloc(sizeof *c);
    assert_non_null(c);
    *c = (chain_job){{chain_fn, NULL}, pool, 10, &total};
    px_taskpool_submit(pool, &c->job);
  }
  /* wait until the gate job runs (bounded), then open it and destroy at once */
  struct timespec dl = deadline_in(10);
  pthread_mutex_lock(&g.mu);
  while (!g.started)
    if (pthread_cond_timedwait(&g.cv, &g.mu, &dl) == ETIMEDOUT) break;
  assert_true(g.started);
  assert_int_equal(atomic_load(&order_next), 0); /* still queued behind the gate */
  g.open = true;
  pthread_cond_broadcast(&g.cv);
  pthread_mutex_unlock(&g.mu);
  px_taskpool_destroy(pool);
  assert_int_equal(atomic_load(&order_next), N);
  for (int i = 0; i < N; i++) assert_int_equal(jobs[i].ran_as, i); /* FIFO on one thread */
  assert_int_equal(atomic_load(&total), 3 * 11);
  free(jobs);
}

static void test_pool_edge_cases(void** state) {
  (void)state;
  assert_null(px_taskpool_create(0));
  px_taskpool_destroy(NULL);
  assert_int_equal(px_taskpool_threads(NULL), 0);
  px_taskpool* pool = px_taskpool_create(3);
  assert_non_null(pool);
  px_taskpool_destroy(pool); /* no jobs */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pool_runs_each_job_once),
      cmocka_unit_test(test_pool_threads_run_concurrently),
      cmocka_unit_test(test_pool_destroy_runs_queued_jobs),
      cmocka_unit_test(test_pool_edge_cases),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
