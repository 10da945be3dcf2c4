/* The lease monitor: a thread that, every second (or a quarter of --worker-timeout), finds
 * workers that missed their lease (membership.h) and acts on it: --elastic completes the
 * steps that wait only for dead workers, and without it, once a dead worker stays away
 * past --rejoin-wait, the pulls waiting for a step fail. It also ends pulls parked longer
 * than --call-timeout. It acts on parked pulls only by waking them: each re-examines what
 * it waits for (pull_handler.h). */
#ifndef PX_MONITOR_H
#define PX_MONITOR_H

#include <pthread.h>
#include <stdbool.h>

#include "server.h"

typedef struct px_monitor {
  px_server* srv;
  pthread_t thread;
  bool started, stop;
  pthread_mutex_t mu;
  pthread_cond_t cv;
} px_monitor;

/* 0, or -1 when the thread cannot start. */
int px_monitor_start(px_monitor* m, px_server* srv);
/* Stops and joins the thread (accepts a monitor that never started). */
void px_monitor_stop(px_monitor* m);
/* A worker left (Leave): with --elastic the steps waiting for it complete without it;
 * without, the pulls parked on a step it will not contribute to end at once. */
void px_monitor_member_left(px_server* srv);
/* One round of checks at now_ms (what the thread does each period; for tests). */
void px_monitor_tick(px_server* srv, uint64_t now_ms);

#endif
