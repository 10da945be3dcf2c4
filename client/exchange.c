/* The blocking operations (exchange.h; pmx_push, pmx_pull, pmx_pull_as and pmx_push_pull
 * of paramex.h). */
#include "exchange.h"

#include "op.h"
#include "stream.h"

/* A push through the Push call. */
static pmx_status push_call(pmx_client* c, uint64_t step, size_t n, pmx_tensor* const* tensors,
                            const void* const* grads) {
  pmx_op* op;
  pmx_status st = pmx_push_async(c, step, n, tensors, grads, &op);
  return st == PMX_OK ? pmx_op_wait(op) : st;
}

pmx_status pmx_push(pmx_client* c, uint64_t step, size_t n, pmx_tensor* const* tensors,
                    const void* const* grads) {
  pmx_status st;
  if (px_stream_run(c, step, n, tensors, grads, NULL, 0, 0, NULL, &st)) return st;
  return push_call(c, step, n, tensors, grads);
}

pmx_status pmx_pull_as(pmx_client* c, size_t n, pmx_tensor* const* tensors, void* const* dst,
                       pmx_dtype view, uint64_t min_version, uint64_t* versions) {
  pmx_status st;
  if (px_stream_run(c, 0, n, tensors, NULL, dst, view, min_version, versions, &st)) return st;
  pmx_op* op;
  st = pmx_pull_as_async(c, n, tensors, dst, view, min_version, versions, &op);
  return st == PMX_OK ? pmx_op_wait(op) : st;
}

pmx_status pmx_pull(pmx_client* c, size_t n, pmx_tensor* const* tensors, void* const* dst,
                    uint64_t min_version, uint64_t* versions) {
  return pmx_pull_as(c, n, tensors, dst, 0, min_version, versions);
}

pmx_status pmx_push_pull(pmx_client* c, uint64_t step, size_t n, pmx_tensor* const* tensors,
                         const void* const* grads, void* const* dst, uint64_t* versions) {
  pmx_status st;
  if (grads && dst && px_stream_run(c, step, n, tensors, grads, dst, 0, step + 1, versions, &st))
    return st;
  pmx_op* pull = NULL;
  st = pmx_pull_async(c, n, tensors, dst, step + 1, versions, &pull);
  if (st != PMX_OK) return st;
  st = push_call(c, step, n, tensors, grads);
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
