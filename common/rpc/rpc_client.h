/* The client side of the transport adapter: channels, each with its own completion-queue
 * thread, and callback-driven calls on the call core of rpc_call.h. The vocabulary
 * (statuses, messages): rpc_base.h. */
#ifndef PX_RPC_CLIENT_H
#define PX_RPC_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rpc/rpc_base.h"

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
  /* Not NULL: the channel's calls complete on this channel's completion-queue thread
   * instead of a thread of its own (the thread stops with the last channel using it, in
   * any order). One thread then polls every connection: gRPC's epoll engine lets one
   * thread poll at a time, and a thread per channel passed that role back and forth. */
  const px_rpc_channel* share_thread_of;
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
