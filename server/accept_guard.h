/* The listener's guard against running out of descriptors.
 *
 * gRPC 1.51's posix listener gives up for good after one accept4() that fails
 * with anything but EAGAIN, ECONNABORTED or EINTR: after a single EMFILE the
 * server accepts no connection again while the open ones go on working. This
 * room defines accept4() in paramex-server itself, so gRPC's calls to it land
 * here (the executable comes first in symbol lookup), and once started:
 *   - a connection whose descriptor number reaches the open-file soft limit
 * minus a reserve is closed at once (the reserve keeps descriptors for
 * checkpoint files and gRPC's own needs): connections are bounded by `ulimit
 * -n` minus the reserve;
 *   - an accept that fails with EMFILE or ENFILE takes the pending connection
 * with a spare descriptor kept for the purpose and closes it, so the listener
 * never sees the error and the client sees its connection closed instead of a
 * silent hang;
 *   - each refusal answers EINTR, on which gRPC accepts again at once (the
 * backlog is drained until EAGAIN), and is counted and logged (at most once
 * every 10 s). Before px_accept_guard_start, and in programs that do not link
 * this room, accept4 is the C library's. Thread-safe. */
#ifndef PX_ACCEPT_GUARD_H
#define PX_ACCEPT_GUARD_H

#include <stdint.h>

/* The reserve paramex-server uses for a soft limit of `limit` descriptors: an
 * eighth of it, at least 8 and at most 64. */
long px_accept_guard_reserve_for(long limit);

/* Starts guarding with the current soft RLIMIT_NOFILE and `reserve` descriptors
 * kept free (negative: px_accept_guard_reserve_for the limit; opens the spare
 * descriptor, /dev/null). Call after the limit is
 * final; calling again re-reads the limit. Returns 0, or -1 with errno when the
 * spare cannot be opened (the guard then still bounds connections). */
int px_accept_guard_start(long reserve);

/* Connections closed by the guard since start (for Stats). */
uint64_t px_accept_guard_refused(void);

#endif
