/* The exchange of a training step (exchange.c): pmx_push_pull, the push of step s and the
 * pull of version s + 1 pipelined. Internal to libparamex. */
#ifndef PX_EXCHANGE_H
#define PX_EXCHANGE_H

#include "paramex/paramex.h"

#endif
