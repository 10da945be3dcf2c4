/* Parked work: a pull waiting for a chunk's version (or for a frame being built) parks a
 * waiter on that chunk's list, and whoever changes the chunk takes the list and runs the
 * waiters. The lower rooms never call the pull handler: they return the list they took
 * (px_waiters_take) and their caller runs it (px_waiters_run), so the store and the frame
 * publisher stay below the handlers.
 *
 * A waiter is a job (util/taskpool.h) whose fn re-examines what it waits for: it either
 * proceeds or parks again. One mutex (the px_waiters) guards every list and the parking
 * state of every waiter; it is taken inside a chunk's lock, never around one. */
#ifndef PX_WAITERS_H
#define PX_WAITERS_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "util/taskpool.h"

typedef struct px_waitlist px_waitlist;

typedef struct px_waiter {
  px_job job;               /* run when woken; set by the owner */
  struct px_waiter *prev, *next;
  px_waitlist* on;          /* the list it is parked on, NULL when not parked */
  bool closed;              /* its owner went away: never park it again */
  uint64_t deadline_ms;     /* px_now_ms() after which px_waiters_take_expired takes it */
  bool expired;             /* set when px_waiters_take_expired took it: its time is up */
} px_waiter;

struct px_waitlist {
  px_waiter* head;
};

typedef struct px_waiters {
  pthread_mutex_t mu;
  bool draining;            /* no waiter parks any more (shutdown) */
} px_waiters;

void px_waiters_init(px_waiters* ws);
void px_waiters_deinit(px_waiters* ws);

typedef enum {
  PX_PARKED = 0,
  PX_PARK_CLOSED = 1,   /* the waiter was closed (its call is over): drop it */
  PX_PARK_DRAINING = 2, /* the server is shutting down: end it */
} px_park_result;
/* Parks w on list l (w must not be parked). */
px_park_result px_waiters_park(px_waiters* ws, px_waitlist* l, px_waiter* w);
/* Detaches every waiter of l; returns them as a list (linked by next) to run. */
px_waiter* px_waiters_take(px_waiters* ws, px_waitlist* l);
/* Detaches the waiters of l whose deadline_ms is before now_ms and marks them expired
 * (their fn then ends them instead of parking again, whatever clock now_ms came from). */
px_waiter* px_waiters_take_expired(px_waiters* ws, px_waitlist* l, uint64_t now_ms);
/* Marks w closed and detaches it when parked; true when it was parked (its owner then
 * holds what the parked waiter held and must release it). */
bool px_waiters_close(px_waiters* ws, px_waiter* w);
/* Makes a waiter that is not parked ready to wait again until deadline_ms (its expiry
 * cleared; a closed waiter stays closed): a stream that waits once per step. */
void px_waiters_rearm(px_waiters* ws, px_waiter* w, uint64_t deadline_ms);
/* Starts the drain: from now on parking answers PX_PARK_DRAINING. */
void px_waiters_drain(px_waiters* ws);
bool px_waiters_draining(px_waiters* ws);
/* Runs each waiter of a taken list (its job's fn), in order, on the calling thread. */
void px_waiters_run(px_waiter* list);
/* Appends list b to list a; returns the joined list. */
px_waiter* px_waiters_join(px_waiter* a, px_waiter* b);

#endif
