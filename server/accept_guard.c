/* accept4() for gRPC's listener: bounds connections and survives EMFILE
 * (accept_guard.h). */
#include "accept_guard.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "util/clock.h"
#include "util/log.h"

#define WARN_EVERY_MS 10000

static struct {
  pthread_mutex_t mu; /* the spare descriptor and the warning's state */
  _Atomic long bound; /* 0: not started; else close accepted fds >= bound */
  _Atomic long limit; /* the soft limit at start, for the message */
  int spare;          /* -1 when it could not be opened again */
  _Atomic uint64_t refused;
  uint64_t warned_ms;    /* when the last warning went out (0: never) */
  uint64_t warned_count; /* refused at that warning */
} g = {.mu = PTHREAD_MUTEX_INITIALIZER, .spare = -1};

/* The system call itself: the C library's accept4 is the symbol this file
 * replaces. */
static int sys_accept4(int fd, struct sockaddr* addr, socklen_t* len, int flags) {
  return (int)syscall(SYS_accept4, fd, addr, len, flags);
}

/* The soft RLIMIT_NOFILE now; 2^30 when unlimited or unknown (no bound worth the name). */
static long soft_limit(void) {
  struct rlimit rl;
  long limit = 1L << 30;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
      rl.rlim_cur < (rlim_t)limit)
    limit = (long)rl.rlim_cur;
  return limit;
}

long px_accept_guard_reserve_for(long limit) {
  long r = limit / 8;
  return r < 8 ? 8 : r > 64 ? 64 : r;
}

int px_accept_guard_start(long reserve) {
  long limit = soft_limit();
  if (reserve < 0) reserve = px_accept_guard_reserve_for(limit);
  long bound = limit - reserve;
  if (bound < 1) bound = 1;
  pthread_mutex_lock(&g.mu);
  int rc = 0;
  if (g.spare < 0) {
    g.spare = open("/dev/null", O_RDONLY | O_CLOEXEC);
    rc = g.spare < 0 ? -1 : 0;
  }
  atomic_store(&g.limit, limit);
  atomic_store(&g.bound, bound);
  pthread_mutex_unlock(&g.mu);
  return rc;
}

uint64_t px_accept_guard_refused(void) { return atomic_load(&g.refused); }

/* Counts a closed connection and logs at most once every WARN_EVERY_MS. */
static void note_refused(int why_errno, long fd) {
  uint64_t n = atomic_fetch_add(&g.refused, 1) + 1;
  uint64_t now = px_now_ms();
  pthread_mutex_lock(&g.mu);
  bool say = g.warned_ms == 0 || now - g.warned_ms >= WARN_EVERY_MS;
  uint64_t since = n - g.warned_count;
  if (say) {
    g.warned_ms = now;
    g.warned_count = n;
  }
  pthread_mutex_unlock(&g.mu);
  if (!say) return;
  long limit = soft_limit(); /* it may have changed since start (prlimit) */
  char what[160];
  if (why_errno)
    snprintf(what, sizeof what, "no descriptor left (%s)",
             why_errno == ENFILE ? "the system's file table is full" : "too many open files");
  else
    snprintf(what, sizeof what,
             "its descriptor %ld reached the open-file limit less a reserve of %ld", fd,
             atomic_load(&g.limit) - atomic_load(&g.bound));
  px_warn(
      "refused %llu connection%s (%llu since start): %s; the open-file limit is %ld, "
      "raise it with ulimit -n",
      (unsigned long long)since, since == 1 ? "" : "s", (unsigned long long)n, what, limit);
}

/* No descriptor for the pending connection: take it with the spare one and
 * close it. Returns true when a connection was closed. */
static bool shed_with_spare(int fd) {
  pthread_mutex_lock(&g.mu);
  bool shed = false;
  if (g.spare >= 0) {
    close(g.spare);
    int c = sys_accept4(fd, NULL, NULL, SOCK_CLOEXEC);
    if (c >= 0) {
      close(c);
      shed = true;
    }
    g.spare = open("/dev/null", O_RDONLY | O_CLOEXEC);
  } else {
    g.spare = open("/dev/null", O_RDONLY | O_CLOEXEC); /* freed since: take it back */
  }
  pthread_mutex_unlock(&g.mu);
  return shed;
}

/* The prototype is the C library's (a transparent union for the address under
 * _GNU_SOURCE); default visibility puts it in the executable's dynamic symbol
 * table, where libgrpc's reference to accept4 finds it first. */
__attribute__((visibility("default"))) int accept4(int fd, __SOCKADDR_ARG addr,
                                                   socklen_t* __restrict len, int flags) {
  struct sockaddr* sa = addr.__sockaddr__;
  int c = sys_accept4(fd, sa, len, flags);
  long bound = atomic_load(&g.bound);
  if (bound == 0) return c;
  if (c >= 0) {
    if (c < bound) return c;
    close(c);
    note_refused(0, c);
    errno = EINTR; /* gRPC accepts again at once */
    return -1;
  }
  int e = errno;
  if (e != EMFILE && e != ENFILE) return -1; /* errno as the call left it */
  if (shed_with_spare(fd)) {
    note_refused(e, 0);
    errno = EINTR;
  } else {
    /* No spare and nothing freed: EAGAIN keeps the listener; the connection waits in
     * the backlog for the next readiness (a later connection or a retry). */
    errno = EAGAIN;
  }
  return -1;
}
