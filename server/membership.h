/* Workers and their leases: who joined with which incarnation, when each was last heard
 * from, and which are dead (no call within --worker-timeout). Lock free except for the
 * workers' names. */
#ifndef PX_MEMBERSHIP_H
#define PX_MEMBERSHIP_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct px_worker_state {
  _Atomic uint64_t incarnation; /* 0: not joined */
  _Atomic uint64_t chunks_pushed;
  _Atomic uint64_t steps_begun;  /* the highest step it pushed a chunk of, plus one */
  _Atomic uint64_t last_seen_ms;
  _Atomic int dead;             /* missed its lease */
  _Atomic int left;             /* said Leave: finished, not dead (until it joins again) */
  _Atomic uint64_t left_since_ms;
  _Atomic int left_expired;     /* BSP: left longer than --rejoin-wait (steps it did not
                                 * contribute to cannot complete) */
  _Atomic uint64_t dead_since_ms;
  char name[64];                /* under the members' mutex */
} px_worker_state;

typedef struct px_members {
  uint32_t n;                   /* --workers */
  uint64_t timeout_ms;          /* lease; UINT64_MAX: never dead */
  uint64_t rejoin_wait_ms;
  bool elastic;
  px_worker_state* w;           /* [n] */
  _Atomic uint64_t next_incarnation;
  _Atomic int stalled_by_dead;  /* BSP: a dead worker stayed away past --rejoin-wait */
  _Atomic uint32_t nleft;       /* workers that left */
  pthread_mutex_t mu;
} px_members;

/* Incarnations start at the wall clock in microseconds so that they stay unique across
 * restarts of the server. 0, or -1 when out of memory. */
int px_members_init(px_members* m, uint32_t workers, double timeout_s, double rejoin_wait_s,
                    bool elastic);
void px_members_deinit(px_members* m);

/* Worker rank (< n) joins: a new incarnation, returned; *replaced says whether it replaced
 * an earlier one. */
uint64_t px_members_join(px_members* m, uint32_t rank, const char* name, bool* replaced);
/* px_members_join for a Join from a worker named name ("host:pid"), fenced: while rank is
 * held by a live incarnation (not left, not dead, its lease running) whose name names
 * another host, returns 0 with err (the holder, and when its lease runs out) and changes
 * nothing. A worker restarted on the same host takes its rank over at once; one restarted
 * elsewhere once the crashed one's lease ran out. A holder without a name (restored from a
 * checkpoint) does not fence. */
uint64_t px_members_claim(px_members* m, uint32_t rank, const char* name, bool* replaced,
                          char* err, size_t errlen);
/* Rank pushed a chunk of step. */
void px_members_pushed(px_members* m, uint32_t rank, uint64_t step);
/* Whether every joined worker pushed a chunk of a step >= step or left (a dead one may
 * come back and push; false when none joined). */
bool px_members_all_pushed(px_members* m, uint64_t step);
/* Rank called (any call counts for the lease): alive again if it was dead. */
void px_members_seen(px_members* m, uint32_t rank);
/* A gRPC status for a data-plane call of (rank, incarnation): OK, or INVALID_ARGUMENT (rank
 * out of range) / FAILED_PRECONDITION (not joined, stale incarnation) with err. */
int px_members_check(px_members* m, uint32_t rank, uint64_t incarnation, char* err,
                     size_t errlen);
/* px_members_check for a caller that may never have joined (Declare, Pull): incarnation
 * 0 only needs rank below --workers. */
int px_members_check_caller(px_members* m, uint32_t rank, uint64_t incarnation, char* err,
                            size_t errlen);
bool px_members_dead(px_members* m, uint32_t rank);
/* Dead or left: a worker that contributes nothing now. */
bool px_members_gone(px_members* m, uint32_t rank);
/* Rank (whose identity the caller checked) is done: it left. Its lease stops, it is never
 * reported dead, and its pushes are refused until it joins again. Returns false when it
 * had left already. */
bool px_members_leave(px_members* m, uint32_t rank);
bool px_members_left(px_members* m, uint32_t rank);
/* BSP: whether rank left longer than --rejoin-wait ago (a step it did not contribute to
 * waits no longer for it to join again). */
bool px_members_left_expired(px_members* m, uint32_t rank);

/* What a lease scan found. */
typedef struct px_lease_scan {
  bool newly_dead;  /* a worker just missed its lease */
  bool stalled;     /* BSP: a dead worker exceeded --rejoin-wait (steps cannot complete) */
  bool stall_began; /* ... and it is the first scan to see it: fail the waiting pulls (also
                     * when a worker that left passes --rejoin-wait) */
  uint32_t stalled_rank;
  double stalled_for_s; /* since its last call */
} px_lease_scan;
void px_members_scan(px_members* m, uint64_t now_ms, px_lease_scan* out);

/* The incarnation of every worker as "i0,i1,..." into buf (cap >= 21 * n + 1). */
void px_members_incarnations(px_members* m, char* buf, size_t cap);
/* Restores incarnations from that form (a checkpoint's); later joins get higher ones.
 * Each restored worker gets a fresh lease (from now). */
void px_members_restore(px_members* m, const char* list);
/* The ranks that left (Leave) as "r,r,..." ("" when none) into buf (cap >= 11 * n + 1). */
void px_members_left_list(px_members* m, char* buf, size_t cap);
/* Restores that form (a checkpoint's): those ranks are finished again, their
 * --rejoin-wait counted from now. Ranks out of range are ignored. */
void px_members_restore_left(px_members* m, const char* list);
/* Copies rank's name. */
void px_members_name(px_members* m, uint32_t rank, char* buf, size_t cap);

#endif
