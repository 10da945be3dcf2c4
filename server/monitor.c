/* The lease monitor (monitor.h). */
#include "monitor.h"

#include <string.h>
#include <time.h>

#include "push_handler.h"
#include "util/clock.h"

/* Takes from every chunk the parked pulls (all of them, or those past their deadline) and
 * runs them. */
static void wake_parked(px_server* srv, bool expired_only, uint64_t now_ms) {
  uint32_t nt = px_store_count(&srv->store);
  for (uint32_t i = 0; i < nt; i++) {
    px_tensor_state* t = srv->store.tensors[i];
    for (uint32_t k = 0; k < t->nchunks; k++) {
      px_chunk_state* c = &t->chunks[k];
      pthread_mutex_lock(&c->mu);
      px_waiter* w = expired_only ? px_waiters_take_expired(&srv->waiters, &c->waiters, now_ms)
                                  : px_waiters_take(&srv->waiters, &c->waiters);
      pthread_mutex_unlock(&c->mu);
      px_waiters_run(w);
    }
  }
}

void px_monitor_tick(px_server* srv, uint64_t now_ms) {
  px_lease_scan scan;
  px_members_scan(&srv->members, now_ms, &scan);
  /* the pulls that wait for a step see the stall and fail FAILED_PRECONDITION */
  /* (and a pull waiting for the initial values of a creator that just died fails) */
  if (scan.stall_began || scan.newly_dead) wake_parked(srv, false, now_ms);
  if (scan.newly_dead && srv->cfg.elastic) px_push_resume(px_agg_sweep(&srv->agg, &srv->store));
  wake_parked(srv, true, now_ms); /* past --call-timeout: they end DEADLINE_EXCEEDED */
}

void px_monitor_member_left(px_server* srv) {
  /* elastic: the steps it did not contribute to complete without it; BSP: the pulls that
   * wait for such a step see it and fail at once */
  if (srv->cfg.elastic) px_push_resume(px_agg_sweep(&srv->agg, &srv->store));
  wake_parked(srv, false, px_now_ms());
}

static void* monitor_thread(void* arg) {
  px_monitor* m = arg;
  px_server* srv = m->srv;
  const uint64_t timeout = srv->members.timeout_ms;
  const uint64_t period = timeout / 4 < 1000 ? (timeout / 4 ? timeout / 4 : 1) : 1000;
  pthread_mutex_lock(&m->mu);
  while (!m->stop) {
    struct timespec ts;
    px_deadline_ts(&ts, CLOCK_MONOTONIC, (int64_t)period);
    pthread_cond_timedwait(&m->cv, &m->mu, &ts);
    if (m->stop) break;
    pthread_mutex_unlock(&m->mu);
    px_monitor_tick(srv, px_now_ms());
    pthread_mutex_lock(&m->mu);
  }
  pthread_mutex_unlock(&m->mu);
  return NULL;
}

int px_monitor_start(px_monitor* m, px_server* srv) {
  memset(m, 0, sizeof *m);
  m->srv = srv;
  pthread_mutex_init(&m->mu, NULL);
  px_cond_init_monotonic(&m->cv);
  m->started = pthread_create(&m->thread, NULL, monitor_thread, m) == 0;
  return m->started ? 0 : -1;
}

void px_monitor_stop(px_monitor* m) {
  if (!m->started) return;
  pthread_mutex_lock(&m->mu);
  m->stop = true;
  pthread_cond_broadcast(&m->cv);
  pthread_mutex_unlock(&m->mu);
  pthread_join(m->thread, NULL);
  m->started = false;
  pthread_mutex_destroy(&m->mu);
  pthread_cond_destroy(&m->cv);
}
