/* Backend selection (select.h). */
#include "backend/select.h"

#include <stdio.h>
#include <string.h>

#include "backend/cpu.h"
#ifdef PX_HAVE_CUDA
#include "backend/cuda/cuda.h"
#endif

int px_backend_create(const px_backend_opts* o, px_backend** out, char* err, size_t errlen) {
  const char* dev = o->device ? o->device : "cpu";
  int rc;
  *out = NULL;
  if (strcmp(dev, "cpu") == 0) {
    rc = px_backend_cpu_create(o, out, err, errlen);
  } else if (strcmp(dev, "cuda") == 0) {
#ifdef PX_HAVE_CUDA
    rc = px_backend_cuda_create(o, out, err, errlen);
#else
    snprintf(err, errlen, "--device cuda: this paramex-server was built without CUDA "
             "(configure with -Dcuda=enabled on a machine with nvcc and NCCL)");
    rc = -2;
#endif
  } else {
    snprintf(err, errlen, "--device: '%s' is not cpu or cuda", dev);
    rc = -2;
  }
  if (rc != 0) return rc;
  px_backend* b = *out;
  b->sgd = o->sgd;
  b->chunk_bytes = o->chunk_bytes;
  b->momentum = px_sgd_has_state(&o->sgd);
  return 0;
}

void px_backend_destroy(px_backend* b) {
  if (b) b->ops->destroy(b);
}

int px_backend_cuda_available(char* why, size_t whylen) {
#ifdef PX_HAVE_CUDA
  return px_backend_cuda_usable(why, whylen);
#else
  snprintf(why, whylen, "built without CUDA");
  return 0;
#endif
}
