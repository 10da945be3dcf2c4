/* The cpu backend (backend.h): the sum, the optimizer and the views in host memory, on the
 * compute pool's threads. */
#ifndef PX_CPU_H
#define PX_CPU_H

#include <stddef.h>

#include "backend/backend.h"

/* A cpu backend for o (o->device is not looked at). 0, or -1 with err. */
int px_backend_cpu_create(const px_backend_opts* o, px_backend** out, char* err, size_t errlen);

#endif
