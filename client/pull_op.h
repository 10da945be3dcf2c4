/* Pull operations (pull_op.c): a Pull call streaming the wanted chunks into the caller's
 * buffers, each decoded and checked against its checksum before the buffer is written;
 * tensors with a chunk that failed are pulled again in full (a bounded number of times).
 * The client remembers which version each buffer holds, so that the next pull gets
 * UNCHANGED chunks and diffs. Internal to libparamex (the API: pmx_pull* of paramex.h). */
#ifndef PX_PULL_OP_H
#define PX_PULL_OP_H

#include "op.h"

extern const px_op_kind px_pull_kind;

#endif
