/* Unit tests of server/backend/cuda/: the backend conformance suite
 * (tests/helpers/backend_conformance.h) on the cuda backend, against the reference and
 * byte for byte against the cpu backend. Exits 77 (skipped) when this build has no CUDA
 * or no GPU is usable, unless PMX_TEST_REQUIRE_GPU=1 (then it fails). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/select.h"
#include "backend_conformance.h"

int main(void) {
  char why[256];
  if (!px_backend_cuda_available(why, sizeof why)) {
    const char* req = getenv("PMX_TEST_REQUIRE_GPU");
    if (req && strcmp(req, "1") == 0) {
      fprintf(stderr, "test_cuda: no usable GPU (%s) and PMX_TEST_REQUIRE_GPU=1\n", why);
      return 1;
    }
    printf("SKIP: cuda backend: %s\n", why);
    return 77;
  }
  return px_conformance_main("cuda");
}
