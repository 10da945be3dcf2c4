/* Compute thread pool (taskpool.h): a mutex-protected intrusive FIFO and a condition
 * variable. Workers leave only when the pool is stopping AND the queue is empty, so
 * destroy runs every queued job, including jobs resubmitted by running jobs. */
#include "util/taskpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

struct px_taskpool {
  pthread_mutex_t mu;
  pthread_cond_t cv;      /* signalled when a job is queued or the pool stops */
  px_job* head;
  px_job* tail;
  bool stopping;
  unsigned nthreads;      /* threads started */
  pthread_t threads[];
};

static void* pool_main(void* arg) {
  px_taskpool* pool = arg;
  pthread_mutex_lock(&pool->mu);
  for (;;) {
    while (!pool->head && !pool->stopping) pthread_cond_wait(&pool->cv, &pool->mu);
    px_job* job = pool->head;
    if (!job) break; /* stopping and drained */
    pool->head = job->next;
    if (!pool->head) pool->tail = NULL;
    pthread_mutex_unlock(&pool->mu);
    job->next = NULL;
    job->fn(job); /* may free or resubmit job: not touched afterwards */
    pthread_mutex_lock(&pool->mu);
  }
  pthread_mutex_unlock(&pool->mu);
  return NULL;
}

static void pool_stop_join(px_taskpool* pool) {
  pthread_mutex_lock(&pool->mu);
  pool->stopping = true;
  pthread_cond_broadcast(&pool->cv);
  pthread_mutex_unlock(&pool->mu);
  for (unsigned i = 0; i < pool->nthreads; i++) pthread_join(pool->threads[i], NULL);
}

px_taskpool* px_taskpool_create(unsigned nthreads) {
  if (nthreads == 0 || nthreads > 4096) return NULL;
  px_taskpool* pool = calloc(1, sizeof *pool + nthreads * sizeof(pthread_t));
  if (!pool) return NULL;
  if (pthread_mutex_init(&pool->mu, NULL) != 0) {
    free(pool);
    return NULL;
  }
  if (pthread_cond_init(&pool->cv, NULL) != 0) {
    pthread_mutex_destroy(&pool->mu);
    free(pool);
    return NULL;
  }
  for (unsigned i = 0; i < nthreads; i++) {
    if (pthread_create(&pool->threads[i], NULL, pool_main, pool) != 0) {
      px_taskpool_destroy(pool); /* joins the threads started so far */
      return NULL;
    }
    pool->nthreads = i + 1;
  }
  return pool;
}

void px_taskpool_submit(px_taskpool* pool, px_job* job) {
  job->next = NULL;
  pthread_mutex_lock(&pool->mu);
  if (pool->tail)
    pool->tail->next = job;
  else
    pool->head = job;
  pool->tail = job;
  pthread_cond_signal(&pool->cv);
  pthread_mutex_unlock(&pool->mu);
}

unsigned px_taskpool_threads(const px_taskpool* pool) { return pool ? pool->nthreads : 0; }

void px_taskpool_destroy(px_taskpool* pool) {
  if (!pool) return;
  pool_stop_join(pool);
  pthread_cond_destroy(&pool->cv);
  pthread_mutex_destroy(&pool->mu);
  free(pool);
}

unsigned px_ncpus(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return (unsigned)n;
  }
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (unsigned)n : 1;
}
