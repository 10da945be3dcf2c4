/* Private to common/rpc/: shared pieces of the server and client adapters. */
#ifndef PX_RPC_INTERNAL_H
#define PX_RPC_INTERNAL_H

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <pthread.h>

#include "rpc/rpc.h"

/* Every completion-queue tag points at one of these, embedded in its owner. */
typedef enum {
  TAG_REQUEST, TAG_CLOSE, TAG_RECV, TAG_SEND, TAG_STATUS, TAG_START, TAG_SHUTDOWN
} rpc_tag_kind;
typedef struct rpc_tag {
  rpc_tag_kind kind;
  void* owner;
} rpc_tag;

struct px_msg {
  grpc_byte_buffer* bb;
  grpc_byte_buffer_reader rd;
  bool rd_init;
  px_iov* seg;
  size_t nseg;
  uint8_t* flat;
};

/* Takes ownership of bb (NULL gives NULL). */
px_msg* rpc_msg_wrap(grpc_byte_buffer* bb);
/* A byte buffer holding out's head (copied) and body (zero-copy, release on last unref).
 * Runs release at once and returns NULL when out of memory. */
grpc_byte_buffer* rpc_out_buffer(const px_out* out);
/* Runs out's release callback (when it has one). */
void rpc_out_release(const px_out* out);
gpr_timespec rpc_deadline_ms(int64_t ms);
/* Deadline ms from now on CLOCK_MONOTONIC, for pthread_cond_timedwait on a monotonic cond. */
void rpc_abs_monotonic(struct timespec* ts, int64_t ms);
void rpc_cond_init_monotonic(pthread_cond_t* cv);

#endif
