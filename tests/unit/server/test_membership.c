/* Unit tests of server/membership.c (membership.h): init (incarnations from the wall clock
 * in microseconds, the lease and rejoin-wait in ms, 0: never dead), joins (increasing
 * incarnations, replaced, names truncated to 63 characters), px_members_check's statuses
 * and messages, seen, lease scans at chosen times (death once, timeout 0, unjoined workers),
 * the BSP stall rule (after --rejoin-wait, stall_began on the first scan only, reset once
 * the worker is back; never with --elastic), and the incarnations text and its restore. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "rpc/rpc_base.h"
#include "util/clock.h"
#include "util/log.h"
#include "membership.h"

static uint64_t wall_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t last_seen(px_members* m, uint32_t r) { return atomic_load(&m->w[r].last_seen_ms); }
static uint64_t incarnation(px_members* m, uint32_t r) { return atomic_load(&m->w[r].incarnation); }

static void scan(px_members* m, uint64_t now, px_lease_scan* s) {
  memset(s, 0xA5, sizeof *s); /* scan must set every flag */
  px_members_scan(m, now, s);
}

/* ---- init, join, names ------------------------------------------------------------------- */

static void test_init(void** state) {
  (void)state;
  px_members m;
  const uint64_t before = wall_us();
  assert_int_equal(px_members_init(&m, 3, 2.5, 7.25, false), 0);
  const uint64_t after = wall_us();
  assert_int_equal(m.n, 3);
  assert_int_equal(m.timeout_ms, 2500);
  assert_int_equal(m.rejoin_wait_ms, 7250);
  assert_false(m.elastic);
  const uint64_t next = atomic_load(&m.next_incarnation);
  assert_true(next >= before);
  assert_true(next <= after);
  assert_int_equal(atomic_load(&m.stalled_by_dead), 0);
  for (uint32_t r = 0; r < 3; r++) {
    assert_int_equal(incarnation(&m, r), 0);
    assert_false(px_members_dead(&m, r));
    char name[64] = "x";
    px_members_name(&m, r, name, sizeof name);
    assert_string_equal(name, "");
  }
  px_members_deinit(&m);
  assert_null(m.w);
  /* timeout 0 (or below): never dead */
  assert_int_equal(px_members_init(&m, 1, 0, 0, true), 0);
  assert_true(m.timeout_ms == UINT64_MAX);
  assert_int_equal(m.rejoin_wait_ms, 0);
  assert_true(m.elastic);
  px_members_deinit(&m);
  assert_int_equal(px_members_init(&m, 1, -1, 0, false), 0);
  assert_true(m.timeout_ms == UINT64_MAX);
  px_members_deinit(&m);
  /* no workers at all */
  assert_int_equal(px_members_init(&m, 0, 1, 1, false), 0);
  assert_int_equal(m.n, 0);
  char buf[8] = "x";
  px_members_incarnations(&m, buf, sizeof buf);
  assert_string_equal(buf, "");
  px_lease_scan s;
  scan(&m, px_now_ms() + 1000000, &s);
  assert_false(s.newly_dead);
  assert_false(s.stalled);
  assert_false(s.stall_began);
  px_members_deinit(&m);
}

static void test_join(void** state) {
  (void)state;
  px_members m;
  const uint64_t before = wall_us();
  assert_int_equal(px_members_init(&m, 3, 10, 10, false), 0);
  bool replaced = true;
  const uint64_t t0 = px_now_ms();
  const uint64_t i1 = px_members_join(&m, 1, "alpha", &replaced);
  const uint64_t t1 = px_now_ms();
  assert_false(replaced);
  assert_true(i1 >= before);
  assert_true(i1 <= wall_us());
  assert_int_equal(incarnation(&m, 1), i1);
  assert_true(last_seen(&m, 1) >= t0 && last_seen(&m, 1) <= t1);
  replaced = true;
  const uint64_t i2 = px_members_join(&m, 0, "beta", &replaced);
  assert_false(replaced);
  assert_int_equal(i2, i1 + 1);
  /* rank 1 again: replaces it */
  replaced = false;
  const uint64_t i3 = px_members_join(&m, 1, "gamma", &replaced);
  assert_true(replaced);
  assert_int_equal(i3, i2 + 1);
  assert_int_equal(incarnation(&m, 1), i3);
  assert_int_equal(incarnation(&m, 0), i2);
  assert_int_equal(incarnation(&m, 2), 0);
  assert_int_equal(atomic_load(&m.next_incarnation), i3 + 1);
  char name[64];
  px_members_name(&m, 1, name, sizeof name);
  assert_string_equal(name, "gamma");
  px_members_name(&m, 0, name, sizeof name);
  assert_string_equal(name, "beta");
  px_members_name(&m, 2, name, sizeof name);
  assert_string_equal(name, "");
  /* a small buffer gets the start of the name */
  char small[3];
  px_members_name(&m, 1, small, sizeof small);
  assert_string_equal(small, "ga");
  /* names are kept to 63 characters */
  char lng[101];
  for (int i = 0; i < 100; i++) lng[i] = (char)('a' + i % 26);
  lng[100] = 0;
  replaced = false;
  const uint64_t i4 = px_members_join(&m, 2, lng, &replaced);
  assert_false(replaced);
  assert_int_equal(i4, i3 + 1);
  char got[128];
  px_members_name(&m, 2, got, sizeof got);
  assert_int_equal(strlen(got), 63);
  assert_memory_equal(got, lng, 63);
  /* an empty name replaces the old one */
  px_members_join(&m, 0, "", &replaced);
  assert_true(replaced);
  px_members_name(&m, 0, name, sizeof name);
  assert_string_equal(name, "");
  px_members_deinit(&m);
}

/* ---- check ------------------------------------------------------------------------------- */

static void test_check(void** state) {
  (void)state;
  px_members m;
  assert_int_equal(px_members_init(&m, 3, 10, 10, false), 0);
  char err[256] = "";
  assert_int_equal(px_members_check(&m, 5, 1, err, sizeof err), PX_ST_INVALID_ARGUMENT);
  assert_string_equal(err, "worker_id 5 is not below --workers 3");
  assert_int_equal(px_members_check(&m, 3, 1, err, sizeof err), PX_ST_INVALID_ARGUMENT);
  assert_string_equal(err, "worker_id 3 is not below --workers 3");
  assert_int_equal(px_members_check(&m, UINT32_MAX, 1, err, sizeof err), PX_ST_INVALID_ARGUMENT);
  assert_string_equal(err, "worker_id 4294967295 is not below --workers 3");
  assert_int_equal(px_members_check(&m, 1, 0, err, sizeof err), PX_ST_FAILED_PRECONDITION);
  assert_string_equal(err, "worker 1 has not joined");
  bool replaced;
  const uint64_t a = px_members_join(&m, 1, "w1", &replaced);
  err[0] = 0;
  assert_int_equal(px_members_check(&m, 1, a, err, sizeof err), PX_ST_OK);
  assert_string_equal(err, ""); /* untouched */
  /* another rank is still not joined */
  assert_int_equal(px_members_check(&m, 0, a, err, sizeof err), PX_ST_FAILED_PRECONDITION);
  assert_string_equal(err, "worker 0 has not joined");
  /* rejoin: the old incarnation is stale */
  const uint64_t b = px_members_join(&m, 1, "w1", &replaced);
  assert_int_equal(px_members_check(&m, 1, a, err, sizeof err), PX_ST_FAILED_PRECONDITION);
  assert_non_null(strstr(err, "is stale"));
  char want[256];
  snprintf(want, sizeof want,
           "worker 1: incarnation %" PRIu64 " is stale (current %" PRIu64 "): it rejoined", a, b);
  assert_string_equal(err, want);
  /* an incarnation from the future is no better */
  assert_int_equal(px_members_check(&m, 1, b + 1, err, sizeof err), PX_ST_FAILED_PRECONDITION);
  assert_non_null(strstr(err, "is stale"));
  /* no incarnation at all: a client that never joined */
  assert_int_equal(px_members_check(&m, 1, 0, err, sizeof err), PX_ST_FAILED_PRECONDITION);
  assert_string_equal(err, "worker 1: the call carries no incarnation (its client never joined): "
                           "call Join first");
  assert_int_equal(px_members_check(&m, 1, b, err, sizeof err), PX_ST_OK);
  /* the message fits the buffer it is given */
  char tiny[8];
  assert_int_equal(px_members_check(&m, 9, 1, tiny, sizeof tiny), PX_ST_INVALID_ARGUMENT);
  assert_string_equal(tiny, "worker_");
  px_members_deinit(&m);
}

/* ---- leases ------------------------------------------------------------------------------ */

static void test_seen_and_death(void** state) {
  (void)state;
  px_members m;
  assert_int_equal(px_members_init(&m, 3, 1.0, 100.0, true), 0);
  bool replaced;
  px_members_join(&m, 1, "one", &replaced);
  const uint64_t s = last_seen(&m, 1);
  px_lease_scan sc;
  /* exactly the lease: still alive */
  scan(&m, s + 1000, &sc);
  assert_false(sc.newly_dead);
  assert_false(sc.stalled);
  assert_false(sc.stall_began);
  assert_false(px_members_dead(&m, 1));
  /* a time before its last call: alive */
  scan(&m, s > 0 ? s - 1 : 0, &sc);
  assert_false(sc.newly_dead);
  /* just past the lease: dead, once */
  scan(&m, s + 1001, &sc);
  assert_true(sc.newly_dead);
  assert_false(sc.stalled); /* --elastic */
  assert_true(px_members_dead(&m, 1));
  assert_int_equal(atomic_load(&m.w[1].dead_since_ms), s + 1001);
  scan(&m, s + 5000, &sc);
  assert_false(sc.newly_dead);
  assert_true(px_members_dead(&m, 1));
  assert_int_equal(atomic_load(&m.w[1].dead_since_ms), s + 1001);
  /* workers that never joined never die */
  assert_false(px_members_dead(&m, 0));
  assert_false(px_members_dead(&m, 2));
  /* seen: alive again, with a new last call */
  const uint64_t t0 = px_now_ms();
  px_members_seen(&m, 1);
  const uint64_t t1 = px_now_ms();
  assert_false(px_members_dead(&m, 1));
  assert_true(last_seen(&m, 1) >= t0 && last_seen(&m, 1) <= t1);
  scan(&m, last_seen(&m, 1) + 1000, &sc);
  assert_false(sc.newly_dead);
  assert_false(px_members_dead(&m, 1));
  /* and it can die again */
  scan(&m, last_seen(&m, 1) + 1001, &sc);
  assert_true(sc.newly_dead);
  assert_true(px_members_dead(&m, 1));
  /* a rejoin also brings it back */
  px_members_join(&m, 1, "one", &replaced);
  assert_true(replaced);
  assert_false(px_members_dead(&m, 1));
  /* seen of a rank out of range is ignored */
  px_members_seen(&m, 3);
  px_members_seen(&m, UINT32_MAX);
  /* seen of a worker that never joined: it is still not joined and never dies */
  px_members_seen(&m, 0);
  scan(&m, px_now_ms() + 1000000, &sc);
  assert_true(sc.newly_dead); /* rank 1 */
  assert_true(px_members_dead(&m, 1));
  assert_false(px_members_dead(&m, 0));
  px_members_deinit(&m);
}

static void test_timeout_zero_never_dead(void** state) {
  (void)state;
  px_members m;
  assert_int_equal(px_members_init(&m, 2, 0, 0, false), 0);
  bool replaced;
  px_members_join(&m, 0, "a", &replaced);
  px_members_join(&m, 1, "b", &replaced);
  px_lease_scan sc;
  const uint64_t s = px_now_ms();
  const uint64_t nows[] = {s, s + 1001, s + 86400000ull, s + (UINT64_C(1) << 40), UINT64_MAX};
  for (size_t i = 0; i < sizeof nows / sizeof nows[0]; i++) {
    scan(&m, nows[i], &sc);
    assert_false(sc.newly_dead);
    assert_false(sc.stalled);
    assert_false(sc.stall_began);
    assert_false(px_members_dead(&m, 0));
    assert_false(px_members_dead(&m, 1));
  }
  px_members_deinit(&m);
}

/* BSP (not --elastic): a dead worker that stays away for --rejoin-wait stalls the steps. */
static void test_stall_rule(void** state) {
  (void)state;
  px_members m;
  assert_int_equal(px_members_init(&m, 3, 1.0, 5.0, false), 0);
  bool replaced;
  px_members_join(&m, 2, "two", &replaced);
  const uint64_t s = last_seen(&m, 2);
  const uint64_t T = s + 1001; /* it dies here */
  px_lease_scan sc;
  scan(&m, T, &sc);
  assert_true(sc.newly_dead);
  assert_false(sc.stalled);
  assert_false(sc.stall_began);
  scan(&m, T + 4999, &sc);
  assert_false(sc.newly_dead);
  assert_false(sc.stalled);
  assert_false(sc.stall_began);
  assert_int_equal(atomic_load(&m.stalled_by_dead), 0);
  /* --rejoin-wait after its death: stalled, and this scan is the first to see it */
  scan(&m, T + 5000, &sc);
  assert_false(sc.newly_dead);
  assert_true(sc.stalled);
  assert_true(sc.stall_began);
  assert_int_equal(sc.stalled_rank, 2);
  assert_true(sc.stalled_for_s == 6.0); /* 5 s dead + the 1 s lease before */
  assert_int_equal(atomic_load(&m.stalled_by_dead), 1);
  /* later scans: still stalled, the stall began before */
  scan(&m, T + 6000, &sc);
  assert_true(sc.stalled);
  assert_false(sc.stall_began);
  assert_int_equal(sc.stalled_rank, 2);
  assert_true(sc.stalled_for_s == 7.0);
  scan(&m, T + 6000, &sc);
  assert_true(sc.stalled);
  assert_false(sc.stall_began);
  /* it is back: no stall, and the flag is reset by the next scan */
  px_members_seen(&m, 2);
  const uint64_t s2 = last_seen(&m, 2);
  scan(&m, s2, &sc);
  assert_false(sc.stalled);
  assert_false(sc.stall_began);
  assert_false(sc.newly_dead);
  assert_int_equal(atomic_load(&m.stalled_by_dead), 0);
  /* it dies again: a new stall begins */
  scan(&m, s2 + 1001, &sc);
  assert_true(sc.newly_dead);
  assert_false(sc.stalled);
  scan(&m, s2 + 1001 + 5000, &sc);
  assert_true(sc.stalled);
  assert_true(sc.stall_began);
  assert_int_equal(sc.stalled_rank, 2);
  /* a rejoin ends it too */
  px_members_join(&m, 2, "two", &replaced);
  scan(&m, last_seen(&m, 2), &sc);
  assert_false(sc.stalled);
  assert_int_equal(atomic_load(&m.stalled_by_dead), 0);
  px_members_deinit(&m);
}

/* Spins until the monotonic clock passes ms (a millisecond or two; bounded). */
static void clock_past(uint64_t ms) {
  const uint64_t limit_ns = px_now_ns() + UINT64_C(10000000000);
  while (px_now_ms() <= ms)
    if (px_now_ns() > limit_ns) fail_msg("the monotonic clock did not advance");
}

static void test_stall_first_rank_and_zero_wait(void** state) {
  (void)state;
  px_members m;
  /* --rejoin-wait 0: stalled by the scan that finds the death */
  assert_int_equal(px_members_init(&m, 4, 2.0, 0, false), 0);
  bool replaced;
  px_members_join(&m, 3, "three", &replaced);
  const uint64_t s3 = last_seen(&m, 3);
  clock_past(s3);
  px_members_join(&m, 1, "one", &replaced);
  const uint64_t s1 = last_seen(&m, 1);
  assert_true(s1 > s3);
  px_lease_scan sc;
  /* rank 3 missed its lease, rank 1 did not */
  scan(&m, s3 + 2001, &sc);
  assert_true(sc.newly_dead);
  assert_true(px_members_dead(&m, 3));
  assert_false(px_members_dead(&m, 1));
  assert_true(sc.stalled);
  assert_true(sc.stall_began);
  assert_int_equal(sc.stalled_rank, 3);
  assert_true(sc.stalled_for_s == 2.0);
  /* rank 1 too: the stall goes on, reported for the lowest dead rank */
  scan(&m, s1 + 2001, &sc);
  assert_true(sc.newly_dead);
  assert_true(px_members_dead(&m, 1));
  assert_true(sc.stalled);
  assert_false(sc.stall_began);
  assert_int_equal(sc.stalled_rank, 1);
  assert_true(sc.stalled_for_s == 2.0);
  /* rank 1 back: rank 3 still stalls */
  px_members_seen(&m, 1);
  assert_false(px_members_dead(&m, 1));
  scan(&m, last_seen(&m, 1) + 2000, &sc); /* within its new lease, after rank 3's death */
  assert_false(sc.newly_dead);
  assert_false(px_members_dead(&m, 1));
  assert_true(sc.stalled);
  assert_false(sc.stall_began);
  assert_int_equal(sc.stalled_rank, 3);
  assert_int_equal(atomic_load(&m.stalled_by_dead), 1);
  /* both back: over */
  px_members_seen(&m, 3);
  scan(&m, last_seen(&m, 1) + 2000, &sc);
  assert_false(sc.newly_dead);
  assert_false(sc.stalled);
  assert_false(sc.stall_began);
  assert_int_equal(atomic_load(&m.stalled_by_dead), 0);
  px_members_deinit(&m);
}

static void test_elastic_never_stalls(void** state) {
  (void)state;
  px_members m;
  assert_int_equal(px_members_init(&m, 2, 1.0, 5.0, true), 0);
  bool replaced;
  px_members_join(&m, 0, "zero", &replaced);
  const uint64_t s = last_seen(&m, 0);
  px_lease_scan sc;
  scan(&m, s + 1001, &sc);
  assert_true(sc.newly_dead);
  assert_false(sc.stalled);
  const uint64_t later[] = {s + 6001, s + 60000, s + 86400000ull};
  for (size_t i = 0; i < sizeof later / sizeof later[0]; i++) {
    scan(&m, later[i], &sc);
    assert_false(sc.newly_dead);
    assert_false(sc.stalled);
    assert_false(sc.stall_began);
    assert_true(px_members_dead(&m, 0));
  }
  assert_int_equal(atomic_load(&m.stalled_by_dead), 0);
  px_members_deinit(&m);
}

/* ---- restored workers get a fresh lease ---------------------------------------------------- */

/* A restored worker has had no chance to call the new process: its lease starts at the
 * restore, so a scan within --worker-timeout of it finds nobody dead (it once found them
 * dead at once, "no call for 447.5 s", and --elastic then completed steps without them). */
static void test_restore_fresh_lease(void** state) {
  (void)state;
  px_members m;
  assert_int_equal(px_members_init(&m, 2, 10, 10, true), 0);
  const uint64_t before = px_now_ms();
  px_members_restore(&m, "7,9");
  assert_true(last_seen(&m, 0) >= before && last_seen(&m, 1) >= before);
  px_lease_scan s;
  scan(&m, px_now_ms() + 9000, &s);
  assert_false(s.newly_dead);
  assert_false(px_members_dead(&m, 0));
  assert_false(px_members_dead(&m, 1));
  /* the lease still runs out when they never come back */
  scan(&m, px_now_ms() + 11000, &s);
  assert_true(s.newly_dead);
  assert_true(px_members_dead(&m, 0) && px_members_dead(&m, 1));
  px_members_deinit(&m);
}

/* ---- incarnations text and restore ------------------------------------------------------- */

static void test_incarnations_restore(void** state) {
  (void)state;
  px_members m;
  assert_int_equal(px_members_init(&m, 3, 10, 10, false), 0);
  char buf[21 * 3 + 1];
  px_members_incarnations(&m, buf, sizeof buf);
  assert_string_equal(buf, "0,0,0");
  bool replaced;
  const uint64_t a = px_members_join(&m, 0, "a", &replaced);
  const uint64_t c = px_members_join(&m, 2, "c", &replaced);
  char want[128];
  snprintf(want, sizeof want, "%" PRIu64 ",0,%" PRIu64, a, c);
  px_members_incarnations(&m, buf, sizeof buf);
  assert_string_equal(buf, want);
  /* round trip into another server's members */
  px_members m2;
  assert_int_equal(px_members_init(&m2, 3, 10, 10, false), 0);
  px_members_restore(&m2, buf);
  char buf2[21 * 3 + 1];
  px_members_incarnations(&m2, buf2, sizeof buf2);
  assert_string_equal(buf2, want);
  assert_int_equal(incarnation(&m2, 0), a);
  assert_int_equal(incarnation(&m2, 1), 0);
  assert_int_equal(incarnation(&m2, 2), c);
  char err[256];
  assert_int_equal(px_members_check(&m2, 0, a, err, sizeof err), PX_ST_OK);
  assert_int_equal(px_members_check(&m2, 2, c, err, sizeof err), PX_ST_OK);
  assert_int_equal(px_members_check(&m2, 1, 0, err, sizeof err), PX_ST_FAILED_PRECONDITION);
  assert_string_equal(err, "worker 1 has not joined");
  /* later joins get higher incarnations than any restored */
  assert_true(atomic_load(&m2.next_incarnation) > c);
  const uint64_t d = px_members_join(&m2, 1, "b", &replaced);
  assert_false(replaced);
  assert_true(d > c);
  px_members_deinit(&m2);

  /* values above the clock raise the next incarnation to just above them */
  assert_int_equal(px_members_init(&m2, 3, 10, 10, false), 0);
  px_members_restore(&m2, "5,9000000000000000000,17");
  assert_int_equal(incarnation(&m2, 0), 5);
  assert_int_equal(incarnation(&m2, 1), UINT64_C(9000000000000000000));
  assert_int_equal(incarnation(&m2, 2), 17);
  assert_int_equal(atomic_load(&m2.next_incarnation), UINT64_C(9000000000000000001));
  assert_int_equal(px_members_join(&m2, 0, "a", &replaced), UINT64_C(9000000000000000001));
  assert_true(replaced);
  px_members_incarnations(&m2, buf2, sizeof buf2);
  assert_string_equal(buf2, "9000000000000000001,9000000000000000000,17");
  /* values below it do not lower it */
  px_members_restore(&m2, "1,2,3");
  assert_int_equal(atomic_load(&m2.next_incarnation), UINT64_C(9000000000000000002));
  px_members_incarnations(&m2, buf2, sizeof buf2);
  assert_string_equal(buf2, "1,2,3");
  /* a shorter list restores the first workers only; the empty list nothing */
  px_members_restore(&m2, "44");
  px_members_incarnations(&m2, buf2, sizeof buf2);
  assert_string_equal(buf2, "44,2,3");
  px_members_restore(&m2, "");
  px_members_incarnations(&m2, buf2, sizeof buf2);
  assert_string_equal(buf2, "44,2,3");
  /* a longer one: the extra values are ignored */
  px_members_restore(&m2, "7,8,9,10,11");
  px_members_incarnations(&m2, buf2, sizeof buf2);
  assert_string_equal(buf2, "7,8,9");
  /* the largest incarnations fit the documented capacity */
  px_members_restore(&m2, "18446744073709551614,18446744073709551614,18446744073709551614");
  px_members_incarnations(&m2, buf2, sizeof buf2);
  assert_string_equal(buf2, "18446744073709551614,18446744073709551614,18446744073709551614");
  assert_true(atomic_load(&m2.next_incarnation) == UINT64_MAX);
  px_members_deinit(&m2);
  px_members_deinit(&m);
}

static int group_setup(void** state) {
  (void)state;
  px_log_init("test", PX_LOG_ERROR); /* quiet the "is dead" and "is back" lines */
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_init),
      cmocka_unit_test(test_join),
      cmocka_unit_test(test_check),
      cmocka_unit_test(test_seen_and_death),
      cmocka_unit_test(test_timeout_zero_never_dead),
      cmocka_unit_test(test_stall_rule),
      cmocka_unit_test(test_stall_first_rank_and_zero_wait),
      cmocka_unit_test(test_elastic_never_stalls),
      cmocka_unit_test(test_incarnations_restore),
      cmocka_unit_test(test_restore_fresh_lease),
  };
  return cmocka_run_group_tests(tests, group_setup, NULL);
}
