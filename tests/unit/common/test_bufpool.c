/* Unit tests of common/util/bufpool.c: size classes, recycling, alignment, refusals, and
 * many threads getting and putting at once (no buffer handed out twice). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "util/bufpool.h"

static void test_recycles_by_class(void** state) {
  (void)state;
  void* a = px_buf_get(5000); /* class 8 KiB */
  assert_non_null(a);
  assert_int_equal((uintptr_t)a % 64, 0);
  memset(a, 0xab, 8192); /* the whole class is usable */
  px_buf_put(a, 5000);
  void* b = px_buf_get(8192); /* same class: the same buffer comes back */
  assert_ptr_equal(a, b);
  void* c = px_buf_get(8192); /* the list is empty now: a new one */
  assert_non_null(c);
  assert_ptr_not_equal(b, c);
  px_buf_put(b, 8192);
  px_buf_put(c, 6000);
  /* last in, first out within a class */
  assert_ptr_equal(px_buf_get(7000), c);
  assert_ptr_equal(px_buf_get(7000), b);
  px_buf_put(b, 8192);
  px_buf_put(c, 8192);
}

static void test_classes_do_not_mix(void** state) {
  (void)state;
  void* small = px_buf_get(4096);
  void* big = px_buf_get(1u << 20);
  assert_non_null(small);
  assert_non_null(big);
  assert_int_equal((uintptr_t)big % 64, 0);
  memset(big, 1, 1u << 20);
  px_buf_put(small, 4096);
  px_buf_put(big, 1u << 20);
  void* b2 = px_buf_get(1u << 19 | 1); /* the 1 MiB class again */
  assert_ptr_equal(b2, big);
  void* s2 = px_buf_get(1);
  assert_ptr_equal(s2, small);
  px_buf_put(b2, 1u << 20);
  px_buf_put(s2, 1);
}

static void test_refusals(void** state) {
  (void)state;
  assert_null(px_buf_get((size_t)256 << 20)); /* above the largest class (128 MiB) */
  assert_null(px_buf_get(SIZE_MAX));
  px_buf_put(NULL, 4096);  /* accepted */
  int x;
  px_buf_put(&x, SIZE_MAX); /* never handed out: ignored, not freed */
  void* a = px_buf_get(4096);
  assert_ptr_not_equal(a, &x);
  px_buf_put(a, 4096);
}

#define THREADS 4
#define ROUNDS 2000

static void* churn(void* arg) {
  uintptr_t id = (uintptr_t)arg;
  for (int r = 0; r < ROUNDS; r++) {
    uint8_t* p[3];
    for (int k = 0; k < 3; k++) {
      p[k] = px_buf_get(4096u << k);
      if (!p[k]) return (void*)1;
      memset(p[k], (int)id, 64); /* mark it ours */
    }
    for (int k = 0; k < 3; k++) {
      for (int j = 0; j < 64; j++)
        if (p[k][j] != (uint8_t)id) return (void*)2; /* someone else had it too */
      px_buf_put(p[k], 4096u << k);
    }
  }
  return NULL;
}

static void test_threads(void** state) {
  (void)state;
  pthread_t th[THREADS];
  for (uintptr_t i = 0; i < THREADS; i++)
    assert_int_equal(pthread_create(&th[i], NULL, churn, (void*)(i + 1)), 0);
  for (int i = 0; i < THREADS; i++) {
    void* rc;
    pthread_join(th[i], &rc);
    assert_null(rc);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_recycles_by_class),
      cmocka_unit_test(test_classes_do_not_mix),
      cmocka_unit_test(test_refusals),
      cmocka_unit_test(test_threads),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
