/* The blocking operations (exchange.c): pmx_push, pmx_pull, pmx_pull_as and
 * pmx_push_pull (the push of step s and the pull of version s + 1 pipelined). Each goes
 * over the client's Exchange stream when it carries it (stream.h: one message each way),
 * and otherwise through the Push and Pull calls of push_op.h and pull_op.h. Internal to
 * libparamex. */
#ifndef PX_EXCHANGE_H
#define PX_EXCHANGE_H

#include "paramex/paramex.h"

#endif
