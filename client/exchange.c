/* The pipelined step (exchange.h, and pmx_push_pull of paramex.h). */
#include "exchange.h"

#include "op.h"

pmx_status pmx_push_pull(pmx_client* c, uint64_t step, size_t n, pmx_tensor* const* tensors,
                         const void* const* grads, void* const* dst, uint64_t* versions) {
  pmx_op* pull = NULL;
  pmx_status st = pmx_pull_async(c, n, tensors, dst, step + 1, versions, &pull);
  if (st != PMX_OK) return st;
  st = pmx_push(c, step, n, tensors, grads);
  if (st != PMX_OK) {
    /* The step may never complete now: stop the parked pull and report the push's error
     * at once. Not pmx_op_wait: its retries (a pull that failed UNAVAILABLE) would wait
     * for a version this push did not make, and its rejoin would repeat the push's. The
     * buffers stay marked as holding nothing certain (a later pull sends them in full). */
    px_op_cancel(pull);
    px_op_wait_call(pull);
    px_op_free(pull);
    return st;
  }
  return pmx_op_wait(pull);
}
