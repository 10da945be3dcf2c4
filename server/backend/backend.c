/* What every backend shares (backend.h). */
#include "backend/backend.h"

#include <stdlib.h>

#include "util/log.h"

void px_backend_fatal(const char* name, const char* what) {
  px_error("backend %s: %s; the aggregation state cannot be trusted any more: aborting "
           "(a restart resumes from the last checkpoint)", name, what);
  abort();
}
