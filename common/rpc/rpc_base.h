/* The transport adapter's vocabulary, shared by its server (rpc_server.h) and client
 * (rpc_client.h) sides: status codes, library start-up, received messages and outgoing
 * buffers. common/rpc/ is the ONLY code in paramex that calls grpc_* (the gRPC C core API
 * changes between releases); everything above it sees messages as segments (px_iov),
 * statuses as integers equal to gRPC's codes, and calls as opaque handles driven by
 * callbacks. shared/notes/grpc-core.md lists the traps this layer handles.
 *
 * Threads: every operation declared by the adapter is thread-safe unless it says
 * otherwise. Callbacks run on completion-queue threads and must not block. */
#ifndef PX_RPC_BASE_H
#define PX_RPC_BASE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/iov.h"

/* Status codes, equal to gRPC's. */
enum {
  PX_ST_OK = 0, PX_ST_CANCELLED = 1, PX_ST_UNKNOWN = 2, PX_ST_INVALID_ARGUMENT = 3,
  PX_ST_DEADLINE_EXCEEDED = 4, PX_ST_NOT_FOUND = 5, PX_ST_ALREADY_EXISTS = 6,
  PX_ST_PERMISSION_DENIED = 7, PX_ST_RESOURCE_EXHAUSTED = 8, PX_ST_FAILED_PRECONDITION = 9,
  PX_ST_ABORTED = 10, PX_ST_OUT_OF_RANGE = 11, PX_ST_UNIMPLEMENTED = 12,
  PX_ST_INTERNAL = 13, PX_ST_UNAVAILABLE = 14, PX_ST_DATA_LOSS = 15,
  PX_ST_UNAUTHENTICATED = 16
};
const char* px_status_name(int status); /* "INVALID_ARGUMENT", ...; "UNKNOWN_STATUS" */

/* Largest message either side accepts (gRPC's default receive limit). */
#define PX_RPC_MAX_MESSAGE (4u << 20)

/* grpc_init, reference counted; the first call also routes gRPC's own log lines (e.g. a
 * failed TLS handshake) into util/log.h's sink at WARN, so that nothing is printed unless
 * the program installed a sink. */
void px_rpc_init(void);
void px_rpc_shutdown(void); /* grpc_shutdown */

/* ---- received messages ---------------------------------------------------------------
 * A received message. The receiver owns it and frees it with px_msg_free (any thread). */
typedef struct px_msg px_msg;
size_t px_msg_len(const px_msg* m);
/* The message's segments (pointers into gRPC's slices, valid until px_msg_free); NULL
 * (and *nseg = 0) when out of memory. */
const px_iov* px_msg_segments(px_msg* m, size_t* nseg);
/* The whole message contiguous (copied once on first use when it has several segments;
 * valid until px_msg_free). NULL only when out of memory. */
const uint8_t* px_msg_flat(px_msg* m, size_t* len);
void px_msg_free(px_msg* m); /* accepts NULL */

/* ---- outgoing messages ---------------------------------------------------------------
 * A copied head (small: protobuf header fields, a packed control message) followed by an
 * optional zero-copy body. release(release_ctx) runs exactly once, on any thread, when
 * gRPC no longer references body (at once when body is NULL or the send could not
 * start); a body without release must outlive the call (static data). */
typedef void (*px_release_fn)(void* release_ctx);
typedef struct px_out {
  const void* head;
  size_t head_len;
  const void* body;
  size_t body_len;
  px_release_fn release;
  void* release_ctx;
} px_out;

/* ---- for the adapter's two sides only (rpc_server.c, rpc_client.c, rpc_call.c) ------ */
struct grpc_byte_buffer;
/* Takes ownership of bb (NULL gives NULL; bb is destroyed when out of memory). */
px_msg* px_rpc_msg_wrap(struct grpc_byte_buffer* bb);
/* A byte buffer holding out's head (copied) and body (zero-copy, released on its last
 * unref). Runs release at once and returns NULL when out of memory. */
struct grpc_byte_buffer* px_rpc_out_buffer(const px_out* out);
/* Runs out's release callback (when it has one); accepts NULL. */
void px_rpc_out_release(const px_out* out);

#endif
