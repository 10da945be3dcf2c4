/* The server side of the transport adapter: completion-queue threads, registered methods,
 * one call state machine per call (on the call core of rpc_call.h), UNIMPLEMENTED for
 * unknown methods, a bearer-token check, a limit on live calls and the shutdown order of
 * grpc-core.md (trap 4). The vocabulary (statuses, messages): rpc_base.h. */
#ifndef PX_RPC_SERVER_H
#define PX_RPC_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rpc/rpc_base.h"

typedef struct px_rpc_server px_rpc_server;
typedef struct px_srv_call px_srv_call;

typedef enum {
  PX_RPC_UNARY,
  PX_RPC_CLIENT_STREAMING,
  PX_RPC_SERVER_STREAMING,
  PX_RPC_BIDI_STREAMING
} px_rpc_kind;

typedef struct px_rpc_method {
  const char* path; /* "/paramex.v1.ParameterExchange/Push"; must outlive the server */
  px_rpc_kind kind;
  /* A new call (CQ thread). For unary and server-streaming methods req is the request
   * (owned by the handler; NULL when the client sent none); NULL for client and bidi streaming.
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
  /* More live calls than this (calls not answered yet) get RESOURCE_EXHAUSTED at once
   * (0: no limit); calls whose path starts with token_exempt_prefix (health) are always
   * served. */
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
/* Calls of methods[method] (method == nmethods: unknown methods) that ended with status
 * (0..PX_RPC_NSTATUS-1; others count as UNKNOWN), since the start. Lock-free. */
#define PX_RPC_NSTATUS 17
uint64_t px_rpc_server_calls(px_rpc_server* srv, size_t method, int status);

#endif
