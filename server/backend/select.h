/* Chooses and creates a backend (paramex-server --device cpu|cuda, --gpus): the one place
 * that knows the implementations. */
#ifndef PX_SELECT_H
#define PX_SELECT_H

#include <stddef.h>

#include "backend/backend.h"

/* Creates the backend named by o->device ("cpu" or "cuda"). 0; -1 with err when it cannot
 * start (no GPU, a CUDA or NCCL error: err names it); -2 with err when the request is wrong
 * (an unknown device, cuda in a build without it, a --gpus device that does not exist). */
int px_backend_create(const px_backend_opts* o, px_backend** out, char* err, size_t errlen);
/* Accepts NULL. */
void px_backend_destroy(px_backend* b);
/* Whether this build has the cuda backend and at least one GPU is usable; otherwise 0 and
 * why in `why` (for tests that skip). */
int px_backend_cuda_available(char* why, size_t whylen);

#endif
