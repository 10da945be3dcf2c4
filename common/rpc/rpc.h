/* The transport adapter: the ONLY code in paramex that calls grpc_* (the gRPC C core API
 * changes between releases). Everything above it sees messages as segments (px_iov),
 * statuses as integers equal to gRPC's codes, and calls as opaque handles driven by
 * callbacks. See shared/notes/grpc-core.md for the traps this layer handles.
 *
 * Threads: each server and each channel owns its completion-queue threads. Callbacks
 * run on those threads unless stated otherwise and must not block; hand work to a pool.
 * Every call operation below is thread-safe and may be called from any thread. */
#ifndef PX_RPC_H
#define PX_RPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "wire/wire.h"

/* Status codes, equal to gRPC's. */
enum {
  PX_ST_OK = 0, PX_ST_CANCELLED = 1, PX_ST_UNKNOWN = 2, PX_ST_INVALID_ARGUMENT = 3,
  PX_ST_DEADLINE_EXCEEDED = 4, PX_ST_NOT_FOUND = 5, PX_ST_ALREADY_EXISTS = 6,
  PX_ST_PERMISSION_DENIED = 7, PX_ST_RESOURCE_EXHAUSTED = 8, PX_ST_FAILED_PRECONDITION = 9,
  PX_ST_ABORTED = 10, PX_ST_OUT_OF_RANGE = 11, PX_ST_UNIMPLEMENTED = 12,
  PX_ST_INTERNAL = 13, PX_ST_UNAVAILABLE = 14, PX_ST_DATA_LOSS = 15,
  PX_ST_UNAUTHENTICATED = 16
};
const char* px_status_name(int status); /* "INVALID_ARGUMENT", ... */

/* Largest message either side accepts (gRPC's default receive limit). */
#define PX_RPC_MAX_MESSAGE (4u << 20)

void px_rpc_init(void);     /* grpc_init; reference counted */
void px_rpc_shutdown(void); /* grpc_shutdown */

/* ---- received messages --------------------------------------------------------------
 * A received message. The receiver owns it and frees it with px_msg_free (any thread). */
typedef struct px_msg px_msg;
size_t px_msg_len(const px_msg* m);
/* The message's segments (pointers into gRPC's slices, valid until px_msg_free). */
const px_iov* px_msg_segments(px_msg* m, size_t* nseg);
/* The whole message contiguous (copied once on first use when it has several segments;
 * valid until px_msg_free). NULL only when out of memory. */
const uint8_t* px_msg_flat(px_msg* m, size_t* len);
void px_msg_free(px_msg* m); /* accepts NULL */

/* Outgoing messages are a copied head (small: protobuf header fields, a packed control
 * message) followed by an optional zero-copy body. release(release_ctx) runs exactly once,
 * on any thread, when gRPC no longer references body (immediately when body is NULL or
 * the send could not start). */
typedef void (*px_release_fn)(void* release_ctx);
typedef struct px_out {
  const void* head;
  size_t head_len;
  const void* body;
  size_t body_len;
  px_release_fn release;
  void* release_ctx;
} px_out;

/* ---- server ------------------------------------------------------------------------- */
typedef struct px_rpc_server px_rpc_server;
typedef struct px_srv_call px_srv_call;

typedef enum { PX_RPC_UNARY, PX_RPC_CLIENT_STREAMING, PX_RPC_SERVER_STREAMING } px_rpc_kind;

typedef struct px_rpc_method {
  const char* path; /* "/paramex.v1.ParameterExchange/Push"; must outlive the server */
  px_rpc_kind kind;
  /* A new call (CQ thread). For unary and server-streaming methods req is the request
   * (owned by the handler; NULL when the client sent none); NULL for client streaming.
   * The handler must eventually finish the call, or it lives until the client's deadline
   * or cancel. */
  void (*on_call)(void* svc, px_srv_call* call, px_msg* req);
} px_rpc_method;

typedef struct px_srv_call_cbs {
  /* After px_srv_call_read: ok && msg: a message (yours); ok && !msg: the client
   * half-closed; !ok: the call failed or was cancelled. */
  void (*on_message)(px_srv_call* call, void* ctx, px_msg* msg, bool ok);
  /* After px_srv_call_send: ok false when the call failed. */
  void (*on_sent)(px_srv_call* call, void* ctx, bool ok);
  /* Once, when the call is over on the wire (status sent, cancelled or deadline).
   * cancelled: ended without the status we sent. Release references to the call that
   * parked work holds. May be NULL. */
  void (*on_closed)(px_srv_call* call, void* ctx, bool cancelled);
  /* Once, last, after on_closed, when no operation is pending and no reference is held:
   * free ctx here. Runs on the thread that dropped the last reference. May be NULL. */
  void (*on_done)(px_srv_call* call, void* ctx);
} px_srv_call_cbs;

/* Attach callbacks and context (in on_call, before any other operation). */
void px_srv_call_set(px_srv_call* call, const px_srv_call_cbs* cbs, void* ctx);
/* Whether px_srv_call_set attached a context. */
bool px_srv_call_has_ctx(px_srv_call* call);
void px_srv_call_ref(px_srv_call* call);
void px_srv_call_unref(px_srv_call* call);
/* Request the next client message (one outstanding read at a time). false when the call
 * is already finished (no callback follows). */
bool px_srv_call_read(px_srv_call* call);
/* Send one message (one outstanding send at a time). false when finished (release has
 * run, no callback follows). */
bool px_srv_call_send(px_srv_call* call, const px_out* out);
/* Send an optional last message (out may be NULL) and the status. Only the first finish
 * of a call has effect; details is copied. out must be NULL while a send is pending: such
 * a message is released unsent and the call ends INTERNAL. */
void px_srv_call_finish(px_srv_call* call, const px_out* out, int status, const char* details);
/* A request header's value, or NULL. Valid while the call lives. key is lower case. */
const char* px_srv_call_header(px_srv_call* call, const char* key, char* buf, size_t cap);
/* "ipv4:127.0.0.1:5000" style peer; copied into buf. */
const char* px_srv_call_peer(px_srv_call* call, char* buf, size_t cap);

typedef struct px_rpc_server_opts {
  const char* listen;   /* "HOST:PORT", port 0 = ephemeral */
  unsigned cq_threads;  /* completion-queue threads, >= 1 */
  /* TLS: PEM contents (not paths); all NULL = plaintext. With tls_client_ca_pem, clients
   * must present a certificate signed by it (mutual TLS). */
  const char* tls_cert_pem;
  const char* tls_key_pem;
  const char* tls_client_ca_pem;
  /* Bearer token every call must carry as "authorization: Bearer TOKEN", compared in
   * constant time, except methods whose path starts with token_exempt_prefix (health).
   * Others get UNAUTHENTICATED before their handler runs. NULL = no token. */
  const char* token;
  const char* token_exempt_prefix;
  /* More live calls than this get RESOURCE_EXHAUSTED at once (0: no limit); calls whose
   * path starts with token_exempt_prefix (health) are always served. */
  size_t max_calls;
} px_rpc_server_opts;

/* Creates, binds and starts the server. Unknown methods are answered UNIMPLEMENTED.
 * *port receives the bound port. NULL with one line in err on failure. */
px_rpc_server* px_rpc_server_start(const px_rpc_server_opts* opts, const px_rpc_method* methods,
                                     size_t nmethods, void* svc, int* port, char* err, size_t errlen);
/* Stops accepting calls and waits up to drain_ms for the live calls to end, then cancels
 * the rest, waits for every call to be done and stops the threads. Blocking; call once,
 * not from a callback. */
void px_rpc_server_shutdown(px_rpc_server* srv, int64_t drain_ms);
void px_rpc_server_destroy(px_rpc_server* srv); /* after shutdown; accepts NULL */
size_t px_rpc_server_live_calls(px_rpc_server* srv);

/* ---- client ------------------------------------------------------------------------- */
typedef struct px_rpc_channel px_rpc_channel;
typedef struct px_cli_call px_cli_call;

/* A channel to target "HOST:PORT" with its own completion-queue thread. NULL with one line
 * in err on failure. Connecting is lazy. Plaintext, no token. */
px_rpc_channel* px_rpc_channel_create(const char* target, char* err, size_t errlen);

typedef struct px_rpc_channel_opts {
  /* TLS: PEM contents. tls_ca_pem set = TLS, verifying the server against it; cert and key
   * add a client certificate (mutual TLS). tls_server_name overrides the name checked in
   * the server's certificate (default: the target's host). */
  const char* tls_ca_pem;
  const char* tls_cert_pem;
  const char* tls_key_pem;
  const char* tls_server_name;
  /* Sent as "authorization: Bearer TOKEN" on every call (copied). */
  const char* token;
} px_rpc_channel_opts;
px_rpc_channel* px_rpc_channel_create_ex(const char* target, const px_rpc_channel_opts* opts,
                                           char* err, size_t errlen);
/* Sets (value non-NULL) or clears one extra request header sent by every call started
 * afterwards (key lower case; both copied). */
void px_rpc_channel_set_header(px_rpc_channel* ch, const char* key, const char* value);
/* Cancels live calls, waits for them to be done, stops the thread. Accepts NULL. */
void px_rpc_channel_destroy(px_rpc_channel* ch);

typedef struct px_cli_call_cbs {
  void (*on_message)(px_cli_call* call, void* ctx, px_msg* msg); /* NULL: end or failure */
  void (*on_sent)(px_cli_call* call, void* ctx, bool ok);
  /* Once, last, when the status arrived, no operation is pending and no reference is
   * held. details is valid during the callback only. Free ctx here. */
  void (*on_done)(px_cli_call* call, void* ctx, int status, const char* details);
} px_cli_call_cbs;

/* Starts a call on method path with a deadline timeout_ms from now. wait_for_ready:
 * queue the call while the server is not reachable yet (until the deadline) instead of
 * failing UNAVAILABLE at once. Returns NULL only when out of memory. The caller holds one
 * reference on the returned call (callbacks may already run, but on_done cannot) and
 * drops it with px_cli_call_unref after its last operation on the handle. */
px_cli_call* px_cli_call_start(px_rpc_channel* ch, const char* path, int64_t timeout_ms,
                                 bool wait_for_ready, const px_cli_call_cbs* cbs, void* ctx);
void px_cli_call_ref(px_cli_call* call);
/* A reference unless the last one is already being dropped (false: on_done is running or
 * about to, and call must not be used). The caller must know call's memory is still
 * valid, e.g. because on_done has not returned yet. */
bool px_cli_call_try_ref(px_cli_call* call);
void px_cli_call_unref(px_cli_call* call);
/* One outstanding send at a time; last: also half-close. false when the call is over
 * (release has run, no callback follows). */
bool px_cli_call_send(px_cli_call* call, const px_out* out, bool last);
bool px_cli_call_close_send(px_cli_call* call); /* half-close without a message */
/* One outstanding read at a time. */
bool px_cli_call_read(px_cli_call* call);
void px_cli_call_cancel(px_cli_call* call);

/* Blocking unary call. Returns the status; on OK *resp (malloc'd, caller frees) and
 * *resp_len hold the response. details gets the status message (may be empty). */
int px_rpc_unary(px_rpc_channel* ch, const char* path, const void* req, size_t req_len,
                  int64_t timeout_ms, bool wait_for_ready, uint8_t** resp, size_t* resp_len,
                  char* details, size_t details_cap);

#endif
