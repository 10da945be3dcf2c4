/* Unit tests of server/accept_guard.c (accept_guard.h), on real loopback sockets in this
 * process, whose accept4 is the guard's: before px_accept_guard_start it is the C
 * library's; once started, connections whose descriptor reaches the soft open-file limit
 * less the reserve are closed (the caller sees EINTR and accepts again; the client reads
 * end of file) and counted; with the descriptor table full (EMFILE) the pending
 * connection is taken with the spare descriptor and closed, an empty backlog answers
 * EAGAIN rather than EMFILE, and once descriptors are free again connections are
 * accepted as before. The soft limit is lowered for a test and restored after it. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "accept_guard.h"

#define CLIENTS 6
#define WAIT_MS 20000 /* bound of a wait for a closed connection (normally at once) */

static struct rlimit g_saved;

static int save_limit(void** state) {
  (void)state;
  return getrlimit(RLIMIT_NOFILE, &g_saved);
}

static int restore_limit(void** state) {
  (void)state;
  return setrlimit(RLIMIT_NOFILE, &g_saved);
}

/* A non-blocking listener on 127.0.0.1:0 (as gRPC's); *port receives its port. */
static int listener(int* port) {
  int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  assert_true(l >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  assert_int_equal(bind(l, (struct sockaddr*)&a, sizeof a), 0);
  assert_int_equal(listen(l, 64), 0);
  socklen_t len = sizeof a;
  assert_int_equal(getsockname(l, (struct sockaddr*)&a, &len), 0);
  *port = ntohs(a.sin_port);
  return l;
}

/* A client connected to port (the kernel completes it in the listener's backlog). */
static int client(int port) {
  int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(c >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  assert_int_equal(connect(c, (struct sockaddr*)&a, sizeof a), 0);
  return c;
}

static int local_port(int fd, bool peer) {
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  int rc = peer ? getpeername(fd, (struct sockaddr*)&a, &len)
                : getsockname(fd, (struct sockaddr*)&a, &len);
  assert_int_equal(rc, 0);
  return ntohs(a.sin_port);
}

/* True when the server closed c: it reads end of file (or a reset) within WAIT_MS. */
static bool closed_by_server(int c, int wait_ms) {
  struct pollfd p = {.fd = c, .events = POLLIN};
  if (poll(&p, 1, wait_ms) != 1) return false;
  char b;
  ssize_t n = recv(c, &b, 1, MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno == ECONNRESET);
}

/* The lowest free descriptor number. */
static int lowest_free(void) {
  int t = fcntl(0, F_DUPFD_CLOEXEC, 0);
  assert_true(t >= 0);
  close(t);
  return t;
}

static void set_soft_limit(long n) {
  struct rlimit rl = g_saved;
  rl.rlim_cur = (rlim_t)n;
  assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
}

/* Runs first: not started, accept4 is the C library's, whatever the limit. */
static void test_not_started_passes_through(void** state) {
  (void)state;
  int port, l = listener(&port);
  int c = client(port);
  set_soft_limit(lowest_free() + 1); /* a started guard would refuse this one */
  int a = accept4(l, NULL, NULL, SOCK_CLOEXEC);
  assert_true(a >= 0);
  assert_int_equal(local_port(a, true), local_port(c, false));
  assert_int_equal(px_accept_guard_refused(), 0);
  close(a);
  close(c);
  close(l);
}

static void test_reserve_for(void** state) {
  (void)state;
  assert_int_equal(px_accept_guard_reserve_for(10), 8);
  assert_int_equal(px_accept_guard_reserve_for(200), 25);
  assert_int_equal(px_accept_guard_reserve_for(1024), 64);
  assert_int_equal(px_accept_guard_reserve_for(1048576), 64);
}

/* Two connections fit under the bound; the other four are closed and counted. */
static void test_bound_closes_connections_over_it(void** state) {
  (void)state;
  int port, l = listener(&port);
  int c[CLIENTS];
  for (int i = 0; i < CLIENTS; i++) c[i] = client(port);
  enum { RESERVE = 3 };
  int lo = lowest_free(); /* the spare descriptor takes it */
  set_soft_limit(lo + 1 + 2 + RESERVE);
  assert_int_equal(px_accept_guard_start(RESERVE), 0);
  uint64_t refused0 = px_accept_guard_refused();

  int got[CLIENTS], ngot = 0, nintr = 0, rc;
  for (int i = 0; i < 100; i++) {
    rc = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    if (rc >= 0) {
      assert_true(ngot < CLIENTS);
      got[ngot++] = rc;
    } else if (errno == EINTR) {
      nintr++;
    } else {
      break;
    }
  }
  assert_int_equal(rc, -1);
  assert_int_equal(errno, EAGAIN);
  assert_int_equal(ngot, 2);
  assert_int_equal(nintr, CLIENTS - 2);
  assert_int_equal(px_accept_guard_refused() - refused0, CLIENTS - 2);
  /* the accepted two are the first in the backlog; the others were closed */
  for (int i = 0; i < CLIENTS; i++) {
    bool accepted = false;
    for (int j = 0; j < ngot; j++) accepted |= local_port(got[j], true) == local_port(c[i], false);
    assert_int_equal(accepted, i < 2);
    assert_int_equal(closed_by_server(c[i], accepted ? 0 : WAIT_MS), !accepted);
  }
  for (int j = 0; j < ngot; j++) close(got[j]);
  for (int i = 0; i < CLIENTS; i++) close(c[i]);
  close(l);
}

/* The table full: the pending connection is closed through the spare descriptor, an
 * empty backlog is EAGAIN (not EMFILE), and after freeing two descriptors a new
 * connection is accepted. */
static void test_emfile_sheds_and_listener_survives(void** state) {
  (void)state;
  int port, l = listener(&port);
  int c1 = client(port);
  int lo = lowest_free();
  set_soft_limit(lo + 16);
  assert_int_equal(px_accept_guard_start(0), 0); /* bound = limit: only EMFILE stops it */
  uint64_t refused0 = px_accept_guard_refused();
  int fill[32], nfill = 0, d;
  while (nfill < 32 && (d = fcntl(l, F_DUPFD_CLOEXEC, 0)) >= 0) fill[nfill++] = d;
  assert_true(nfill < 32);
  assert_int_equal(errno, EMFILE);

  assert_int_equal(accept4(l, NULL, NULL, SOCK_CLOEXEC), -1);
  assert_int_equal(errno, EINTR);
  assert_int_equal(px_accept_guard_refused() - refused0, 1);
  assert_true(closed_by_server(c1, WAIT_MS));
  assert_int_equal(accept4(l, NULL, NULL, SOCK_CLOEXEC), -1);
  assert_int_equal(errno, EAGAIN); /* nothing pending: what gRPC waits on, not EMFILE */
  assert_int_equal(px_accept_guard_refused() - refused0, 1);

  close(fill[--nfill]);
  close(fill[--nfill]);
  int c2 = client(port);
  int a = accept4(l, NULL, NULL, SOCK_CLOEXEC);
  assert_true(a >= 0);
  assert_int_equal(local_port(a, true), local_port(c2, false));
  assert_int_equal(px_accept_guard_refused() - refused0, 1);
  close(a);
  close(c2);
  close(c1);
  while (nfill > 0) close(fill[--nfill]);
  close(l);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_not_started_passes_through, save_limit,
                                      restore_limit),
      cmocka_unit_test(test_reserve_for),
      cmocka_unit_test_setup_teardown(test_bound_closes_connections_over_it, save_limit,
                                      restore_limit),
      cmocka_unit_test_setup_teardown(test_emfile_sheds_and_listener_survives, save_limit,
                                      restore_limit),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
