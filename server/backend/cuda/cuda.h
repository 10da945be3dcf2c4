/* The cuda backend (backend.h): parameters, momentum and sums on the GPUs (gpu.h), with the
 * host mirror refreshed by every step. Built only with PX_HAVE_CUDA (meson -Dcuda). */
#ifndef PX_CUDA_H
#define PX_CUDA_H

#include <stddef.h>

#include "backend/backend.h"

/* A cuda backend on o->gpu_ids (every GPU when o->ngpus is 0). 0; -1 with err when it
 * cannot start (no GPU, a CUDA or NCCL error); -2 with err when o names a GPU that does not
 * exist. */
int px_backend_cuda_create(const px_backend_opts* o, px_backend** out, char* err, size_t errlen);
/* Whether at least one GPU is usable; otherwise 0 and why in `why`. */
int px_backend_cuda_usable(char* why, size_t whylen);

#endif
