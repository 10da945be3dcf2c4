/* Backend selection (--device, --gpus) and the helpers shared by the backends. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server.h"

void px_backend_fatal(const char* name, const char* what) {
  px_error("backend %s: %s; the aggregation state cannot be trusted any more: aborting "
            "(a restart resumes from the last checkpoint)", name, what);
  abort();
}

int px_backend_create(const px_config* cfg, px_backend** out, char* err, size_t errlen) {
  const char* dev = cfg->device ? cfg->device : "cpu";
  int rc;
  *out = NULL;
  if (strcmp(dev, "cpu") == 0) {
    rc = px_backend_cpu_create(cfg, out, err, errlen);
  } else if (strcmp(dev, "cuda") == 0) {
#ifdef PX_HAVE_CUDA
    rc = px_backend_cuda_create(cfg, out, err, errlen);
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
  b->sgd.lr = (float)cfg->lr;
  b->sgd.momentum = (float)cfg->momentum;
  b->sgd.weight_decay = (float)cfg->weight_decay;
  b->chunk_bytes = cfg->chunk_bytes;
  b->momentum = cfg->momentum != 0;
  return 0;
}

void px_backend_destroy(px_backend* b) {
  if (b) b->ops->destroy(b);
}

#ifndef PX_HAVE_CUDA
int px_backend_cuda_available(char* why, size_t whylen) {
  snprintf(why, whylen, "built without CUDA");
  return 0;
}
#endif
