/* Backend selection (--device, --gpus) and the helpers shared by the backends. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server.h"

int pmx_gpu_list_parse(const char* s, int* ids, uint32_t cap, uint32_t* n, char* err,
                       size_t errlen) {
  uint32_t k = 0;
  const char* p = s;
  if (!*p) {
    snprintf(err, errlen, "--gpus: empty list (want device numbers such as 0,1)");
    return -1;
  }
  for (;;) {
    char* end;
    errno = 0;
    long v = *p >= '0' && *p <= '9' ? strtol(p, &end, 10) : -1;
    if (v < 0 || errno != 0 || v > 1023 || (end != p && *end != ',' && *end != 0)) {
      size_t len = strcspn(p, ",");
      snprintf(err, errlen, "--gpus: '%.*s' is not a device number (want a list such as 0,1)",
               (int)(len > 40 ? 40 : len), p);
      return -1;
    }
    for (uint32_t i = 0; i < k; i++)
      if (ids[i] == (int)v) {
        snprintf(err, errlen, "--gpus: device %ld is listed twice", v);
        return -1;
      }
    if (k == cap) {
      snprintf(err, errlen, "--gpus: more than %u devices", cap);
      return -1;
    }
    ids[k++] = (int)v;
    if (*end == 0) break;
    p = end + 1;
  }
  *n = k;
  return 0;
}

void pmx_backend_fatal(const char* name, const char* what) {
  pmx_error("backend %s: %s; the aggregation state cannot be trusted any more: aborting "
            "(a restart resumes from the last checkpoint)", name, what);
  abort();
}

int pmx_backend_create(const pmx_config* cfg, pmx_backend** out, char* err, size_t errlen) {
  const char* dev = cfg->device ? cfg->device : "cpu";
  int rc;
  *out = NULL;
  if (strcmp(dev, "cpu") == 0) {
    rc = pmx_backend_cpu_create(cfg, out, err, errlen);
  } else if (strcmp(dev, "cuda") == 0) {
#ifdef PMX_HAVE_CUDA
    rc = pmx_backend_cuda_create(cfg, out, err, errlen);
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
  pmx_backend* b = *out;
  b->sgd.lr = (float)cfg->lr;
  b->sgd.momentum = (float)cfg->momentum;
  b->sgd.weight_decay = (float)cfg->weight_decay;
  b->chunk_bytes = cfg->chunk_bytes;
  b->momentum = cfg->momentum != 0;
  return 0;
}

void pmx_backend_destroy(pmx_backend* b) {
  if (b) b->ops->destroy(b);
}

#ifndef PMX_HAVE_CUDA
int pmx_backend_cuda_available(char* why, size_t whylen) {
  snprintf(why, whylen, "built without CUDA");
  return 0;
}
#endif
