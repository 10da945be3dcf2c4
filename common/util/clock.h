/* Monotonic clocks and deadlines for condition variables. */
#ifndef PX_CLOCK_H
#define PX_CLOCK_H

#include <pthread.h>
#include <stdint.h>

struct timespec;

uint64_t px_now_ns(void); /* CLOCK_MONOTONIC */
uint64_t px_now_ms(void); /* CLOCK_MONOTONIC, milliseconds */
uint64_t px_wall_ms(void); /* CLOCK_REALTIME: milliseconds since the Unix epoch */
/* *ts = now + ms on clock (for pthread_cond_timedwait on a condition variable using that
 * clock: CLOCK_MONOTONIC when made by px_cond_init_monotonic, else CLOCK_REALTIME). */
void px_deadline_ts(struct timespec* ts, int clock, int64_t ms);
/* Initialises cv to time out on CLOCK_MONOTONIC (immune to wall-clock jumps). */
void px_cond_init_monotonic(pthread_cond_t* cv);

#endif
