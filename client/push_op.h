/* Push operations (push_op.c): a Push call streaming the chunks of every tensor, zero copy
 * for raw chunks, compressed into buffers of its own when the tensor's push mode says so.
 * Internal to libparamex (the API: pmx_push, pmx_push_async of paramex.h). */
#ifndef PX_PUSH_OP_H
#define PX_PUSH_OP_H

#include "op.h"

extern const px_op_kind px_push_kind;

#endif
