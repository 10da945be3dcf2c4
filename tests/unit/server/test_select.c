/* Unit tests of server/backend/select.c: the backends it creates from --device, the
 * refusals (an unknown device, cuda without CUDA or without a GPU) with one line naming
 * why, and the options it gives the backend. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "backend/select.h"

static void test_cpu(void** state) {
  (void)state;
  px_backend_opts o = {"cpu", NULL, 0, 1u << 20, {.lr = 0.5f, .momentum = 0.9f, .weight_decay = 0.01f, .nesterov = false}, 3};
  px_backend* b = NULL;
  char err[256] = "";
  assert_int_equal(px_backend_create(&o, &b, err, sizeof err), 0);
  assert_non_null(b);
  assert_string_equal(b->name, "cpu");
  assert_int_equal(b->ndev, 1);
  assert_true(b->sgd.lr == 0.5f && b->sgd.momentum == 0.9f && b->sgd.weight_decay == 0.01f);
  assert_int_equal(b->chunk_bytes, 1u << 20);
  assert_true(b->momentum);
  assert_non_null(strstr(b->desc, "3 compute threads"));
  px_backend_destroy(b);
  o.sgd.momentum = 0;
  o.device = NULL; /* cpu by default */
  assert_int_equal(px_backend_create(&o, &b, err, sizeof err), 0);
  assert_false(b->momentum);
  px_backend_destroy(b);
  px_backend_destroy(NULL); /* accepted */
}

static void test_unknown_device(void** state) {
  (void)state;
  px_backend_opts o = {"tpu", NULL, 0, 4096, {.lr = 0.1f, .momentum = 0, .weight_decay = 0, .nesterov = false}, 1};
  px_backend* b = (px_backend*)&o; /* overwritten */
  char err[256] = "";
  assert_int_equal(px_backend_create(&o, &b, err, sizeof err), -2);
  assert_null(b);
  assert_string_equal(err, "--device: 'tpu' is not cpu or cuda");
}

/* Without CUDA or a GPU, the cuda backend refuses to start with one line naming why. */
static void test_cuda_refusal(void** state) {
  (void)state;
  char why[256];
  if (px_backend_cuda_available(why, sizeof why)) skip();
  assert_true(why[0] != 0);
  px_backend_opts o = {"cuda", NULL, 0, 4096, {.lr = 0.1f, .momentum = 0, .weight_decay = 0, .nesterov = false}, 1};
  px_backend* b = NULL;
  char err[512] = "";
  int rc = px_backend_create(&o, &b, err, sizeof err);
  assert_null(b);
  assert_null(strchr(err, '\n'));
#ifdef PX_HAVE_CUDA
  assert_int_equal(rc, -1);
  assert_non_null(strstr(err, "--device cuda: cuda"));
#else
  assert_int_equal(rc, -2);
  assert_non_null(strstr(err, "built without CUDA"));
#endif
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cpu),
      cmocka_unit_test(test_unknown_device),
      cmocka_unit_test(test_cuda_refusal),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
