/* A pool of compute threads running intrusive jobs in FIFO order. Submitting never blocks
 * on the jobs (only on a short mutex), so it is safe from gRPC completion-queue threads. */
#ifndef PX_TASKPOOL_H
#define PX_TASKPOOL_H

/* A job's memory belongs to the submitter and must stay valid until fn has started; fn
 * may free or resubmit it. */
typedef struct px_job {
  void (*fn)(struct px_job* job);
  struct px_job* next; /* owned by the pool while queued */
} px_job;

typedef struct px_taskpool px_taskpool;

/* nthreads in 1..4096; NULL on failure. */
px_taskpool* px_taskpool_create(unsigned nthreads);
void px_taskpool_submit(px_taskpool* pool, px_job* job);
unsigned px_taskpool_threads(const px_taskpool* pool);
/* Runs every queued job (including jobs resubmitted meanwhile), then stops and joins the
 * threads. Accepts NULL. */
void px_taskpool_destroy(px_taskpool* pool);

/* CPUs this process may run on (its affinity mask), at least 1: the default pool size. */
unsigned px_ncpus(void);

#endif
