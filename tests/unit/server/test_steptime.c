/* Unit tests of server/steptime.c: a step's duration runs from the first contribution on
 * any chunk to the last of the shard's chunks completing it; ring slots are reused by
 * newer steps and never go back to older ones. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "steptime.h"

static px_counters g_ctr;
static px_steptime g_st;

static uint64_t observed(void) {
  px_hist_snap s;
  px_hist_snapshot(&g_st.hist, &s);
  return s.cum[s.n];
}

static void test_duration_spans_the_chunks(void** state) {
  (void)state;
  memset(&g_ctr, 0, sizeof g_ctr);
  atomic_store(&g_ctr.own_chunks, 2);
  px_steptime_init(&g_st, &g_ctr);
  px_steptime_begin(&g_st, 0, 1000);
  px_steptime_begin(&g_st, 0, 500); /* another chunk's contribution, earlier */
  px_steptime_end(&g_st, 0, 2000);
  assert_int_equal(observed(), 0); /* one of two chunks */
  px_steptime_end(&g_st, 0, 3500);
  assert_int_equal(observed(), 1);
  assert_int_equal(atomic_load(&g_st.last_ns), 3000);
  px_steptime_end(&g_st, 0, 9000); /* a stray completion does not count twice */
  assert_int_equal(observed(), 1);
  /* the next step */
  px_steptime_begin(&g_st, 1, 10000);
  px_steptime_end(&g_st, 1, 10100);
  px_steptime_end(&g_st, 1, 10400);
  assert_int_equal(observed(), 2);
  assert_int_equal(atomic_load(&g_st.last_ns), 400);
}

static void test_ring_reuse(void** state) {
  (void)state;
  memset(&g_ctr, 0, sizeof g_ctr);
  atomic_store(&g_ctr.own_chunks, 1);
  px_steptime_init(&g_st, &g_ctr);
  px_steptime_begin(&g_st, 3, 100);
  px_steptime_begin(&g_st, 3 + PX_STEPTIME_RING, 5000); /* a newer step takes the slot */
  px_steptime_begin(&g_st, 3, 200);                    /* the older one cannot take it back */
  px_steptime_end(&g_st, 3, 300);
  assert_int_equal(observed(), 0);
  px_steptime_end(&g_st, 3 + PX_STEPTIME_RING, 5600);
  assert_int_equal(observed(), 1);
  assert_int_equal(atomic_load(&g_st.last_ns), 600);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_duration_spans_the_chunks),
      cmocka_unit_test(test_ring_reuse),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
