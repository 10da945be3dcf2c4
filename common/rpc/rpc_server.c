/* The server side of the transport adapter (rpc_server.h). Each call is a px_rpc_call
 * (rpc_call.h) plus what only a server does: the request slot, RECV_CLOSE_ON_SERVER (which
 * tells when the call is over, cancelled or not), the status, and the shutdown order of
 * grpc-core.md (trap 4). */
#include "rpc/rpc_server.h"

#include <errno.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "rpc/rpc_call.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/str.h"

#define REQUESTS_PER_METHOD 8

struct px_srv_call {
  px_rpc_call core; /* first: the core's hooks cast back */
  px_rpc_server* srv;
  int method; /* index, or -1 for an unknown method */
  gpr_timespec deadline;
  grpc_metadata_array md;
  grpc_call_details details; /* unknown methods only */
  grpc_byte_buffer* payload;
  grpc_byte_buffer* final_bb;
  grpc_slice status_details;
  bool has_status_details;
  int cancelled;
  bool live;     /* counted in srv->live_calls */
  bool answered; /* live, its status started: counted in srv->answered_calls */
  bool finished; /* the status was started (under core.mu) */
  px_rpc_tag t_request, t_close, t_status;
  const px_srv_call_cbs* cbs;
  void* ctx;
};

struct px_rpc_server {
  grpc_server* server;
  grpc_completion_queue* cq;
  pthread_t* threads;
  unsigned nthreads;
  const px_rpc_method* methods;
  size_t nmethods;
  void** registered;
  void* svc;
  px_rpc_tag t_shutdown;

  pthread_mutex_t mu;
  pthread_cond_t cv;
  size_t live_calls;
  size_t answered_calls; /* live calls whose status went out: --max-calls does not count
                          * them (their close may still be on its way) */
  bool shutting_down, shutdown_seen;
  size_t max_calls;
  char* want_auth; /* "Bearer TOKEN", or NULL */
  char* token_exempt_prefix;
  _Atomic uint64_t* finished; /* [(nmethods + 1) * PX_RPC_NSTATUS]: calls by method, status */
};

static const px_srv_call_cbs no_cbs = {0};

/* Client-streaming and bidi calls read their messages themselves; the others get their one
 * request with the call. */
static bool streams_in(px_rpc_kind k) { return k == PX_RPC_CLIENT_STREAMING || k == PX_RPC_BIDI_STREAMING; }

#define SRV_CALL(core) ((px_srv_call*)(core))
#define TAG_OWNER(tag, field) ((px_srv_call*)((char*)(tag) - offsetof(px_srv_call, field)))

/* Constant-time comparison of the authorization header with the expected value: the time
 * depends only on the expected length. */
static bool auth_ok(px_srv_call* c) {
  const char* want = c->srv->want_auth;
  if (!want) return true;
  const grpc_slice* got = NULL;
  for (size_t i = 0; i < c->md.count; i++)
    if (grpc_slice_str_cmp(c->md.metadata[i].key, "authorization") == 0) got = &c->md.metadata[i].value;
  const char* g = got ? (const char*)GRPC_SLICE_START_PTR(*got) : NULL;
  return px_secret_equal(want, strlen(want), g, got ? GRPC_SLICE_LENGTH(*got) : 0);
}

static void request_new(px_rpc_server* srv, int method);

static void call_free(px_srv_call* c) {
  px_rpc_server* srv = c->srv;
  bool live = c->live, answered = c->answered;
  if (c->payload) grpc_byte_buffer_destroy(c->payload);
  if (c->final_bb) grpc_byte_buffer_destroy(c->final_bb);
  if (c->has_status_details) grpc_slice_unref(c->status_details);
  grpc_metadata_array_destroy(&c->md);
  grpc_call_details_destroy(&c->details);
  px_rpc_call_deinit(&c->core);
  free(c);
  if (live) {
    pthread_mutex_lock(&srv->mu);
    srv->live_calls--;
    if (answered) srv->answered_calls--;
    pthread_cond_broadcast(&srv->cv);
    pthread_mutex_unlock(&srv->mu);
  }
}

/* ---- the core's hooks ------------------------------------------------------------------ */

static void hook_received(px_rpc_call* core, px_msg* m, bool ok) {
  px_srv_call* c = SRV_CALL(core);
  if (c->cbs->on_message) c->cbs->on_message(c, c->ctx, m, ok);
  else px_msg_free(m);
}

static void hook_sent(px_rpc_call* core, bool ok) {
  px_srv_call* c = SRV_CALL(core);
  if (c->cbs->on_sent) c->cbs->on_sent(c, c->ctx, ok);
}

static void hook_last_unref(px_rpc_call* core) {
  px_srv_call* c = SRV_CALL(core);
  if (c->cbs->on_done) c->cbs->on_done(c, c->ctx);
  call_free(c);
}

static const px_rpc_call_hooks srv_hooks = {hook_received, hook_sent, hook_last_unref};

/* ---- operations -------------------------------------------------------------------------- */

void px_srv_call_ref(px_srv_call* c) { px_rpc_call_ref(&c->core); }
void px_srv_call_unref(px_srv_call* c) { px_rpc_call_unref(&c->core); }

bool px_srv_call_has_ctx(px_srv_call* c) { return c->ctx != NULL; }

void px_srv_call_set(px_srv_call* c, const px_srv_call_cbs* cbs, void* ctx) {
  c->cbs = cbs ? cbs : &no_cbs;
  c->ctx = ctx;
}

bool px_srv_call_read(px_srv_call* c) { return px_rpc_call_read(&c->core, false); }

bool px_srv_call_send(px_srv_call* c, const px_out* out) {
  return px_rpc_call_send(&c->core, out, NULL, false);
}

void px_srv_call_finish(px_srv_call* c, const px_out* out, int status, const char* details) {
  px_rpc_call* core = &c->core;
  pthread_mutex_lock(&core->mu);
  if (c->finished || core->over) {
    pthread_mutex_unlock(&core->mu);
    px_rpc_out_release(out);
    return;
  }
  c->finished = true;
  if (c->live) { /* lock order: a call's mutex, then the server's */
    pthread_mutex_lock(&c->srv->mu);
    c->answered = true;
    c->srv->answered_calls++;
    pthread_mutex_unlock(&c->srv->mu);
  }
  core->no_send = core->no_recv = true;
  core->refs++;
  grpc_op ops[3];
  memset(ops, 0, sizeof ops);
  size_t n = px_rpc_call_take_md(core, &ops[0]); /* a status never goes without it (trap 1) */
  if (out && !core->sending) {
    c->final_bb = px_rpc_out_buffer(out);
    if (c->final_bb) {
      ops[n].op = GRPC_OP_SEND_MESSAGE;
      ops[n].data.send_message.send_message = c->final_bb;
      n++;
    }
  } else if (out) {
    /* A last message while a send is pending cannot be queued: report the misuse rather
     * than end the call OK without it. */
    px_rpc_out_release(out);
    status = PX_ST_INTERNAL;
    details = "server error: final message while a send was pending";
  }
  if (c->srv->finished) { /* the status that goes out */
    size_t m = c->method >= 0 ? (size_t)c->method : c->srv->nmethods;
    int st = status >= 0 && status < PX_RPC_NSTATUS ? status : PX_ST_UNKNOWN;
    atomic_fetch_add_explicit(&c->srv->finished[m * PX_RPC_NSTATUS + (size_t)st], 1,
                              memory_order_relaxed);
  }
  c->status_details = grpc_slice_from_copied_string(details ? details : "");
  c->has_status_details = true;
  ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
  ops[n].data.send_status_from_server.status = (grpc_status_code)status;
  ops[n].data.send_status_from_server.trailing_metadata_count = 0;
  ops[n].data.send_status_from_server.status_details = &c->status_details;
  n++;
  bool ok = px_rpc_call_start(core, ops, n, &c->t_status);
  pthread_mutex_unlock(&core->mu);
  if (!ok) px_rpc_call_unref(core);
}

const char* px_srv_call_header(px_srv_call* c, const char* key, char* buf, size_t cap) {
  for (size_t i = 0; i < c->md.count; i++) {
    if (grpc_slice_str_cmp(c->md.metadata[i].key, key) == 0) {
      size_t n = GRPC_SLICE_LENGTH(c->md.metadata[i].value);
      if (cap == 0) return NULL;
      if (n >= cap) n = cap - 1;
      memcpy(buf, GRPC_SLICE_START_PTR(c->md.metadata[i].value), n);
      buf[n] = 0;
      return buf;
    }
  }
  return NULL;
}

const char* px_srv_call_peer(px_srv_call* c, char* buf, size_t cap) {
  char* p = grpc_call_get_peer(c->core.call);
  snprintf(buf, cap, "%s", p ? p : "?");
  gpr_free(p);
  return buf;
}

/* ---- events ------------------------------------------------------------------------------ */

static void status_done(px_rpc_tag* t, bool ok) {
  (void)ok;
  px_srv_call* c = TAG_OWNER(t, t_status);
  if (c->final_bb) {
    grpc_byte_buffer_destroy(c->final_bb);
    c->final_bb = NULL;
  }
  px_rpc_call_unref(&c->core);
}

static void close_done(px_rpc_tag* t, bool ok) {
  (void)ok;
  px_srv_call* c = TAG_OWNER(t, t_close);
  pthread_mutex_lock(&c->core.mu);
  c->core.over = true;
  bool cancelled = c->cancelled != 0 || !c->finished;
  pthread_mutex_unlock(&c->core.mu);
  if (c->cbs->on_closed) c->cbs->on_closed(c, c->ctx, cancelled);
  px_rpc_call_unref(&c->core); /* the close batch */
  px_rpc_call_unref(&c->core); /* the call itself */
}

/* The first answer of a call the server refuses before its handler (returns true). */
static bool refuse_early(px_srv_call* c, const px_rpc_method* m, bool too_many) {
  px_rpc_server* srv = c->srv;
  if (!m) {
    px_srv_call_finish(c, NULL, PX_ST_UNIMPLEMENTED, "unknown method");
    return true;
  }
  bool exempt = srv->token_exempt_prefix &&
                strncmp(m->path, srv->token_exempt_prefix, strlen(srv->token_exempt_prefix)) == 0;
  if (srv->want_auth && !exempt && !auth_ok(c)) {
    px_srv_call_finish(c, NULL, PX_ST_UNAUTHENTICATED, "missing or invalid bearer token");
    return true;
  }
  if (too_many && !exempt) {
    char msg[96];
    snprintf(msg, sizeof msg, "too many concurrent calls (--max-calls %zu)", srv->max_calls);
    px_srv_call_finish(c, NULL, PX_ST_RESOURCE_EXHAUSTED, msg);
    return true;
  }
  return false;
}

static void request_done(px_rpc_tag* t, bool ok) {
  px_srv_call* c = TAG_OWNER(t, t_request);
  px_rpc_server* srv = c->srv;
  if (!ok) { /* server shutting down: the request slot is cancelled */
    call_free(c);
    return;
  }
  pthread_mutex_lock(&srv->mu);
  srv->live_calls++;
  bool shutting = srv->shutting_down;
  bool too_many = srv->max_calls && srv->live_calls - srv->answered_calls > srv->max_calls;
  c->live = true;
  pthread_mutex_unlock(&srv->mu);
  if (!shutting) request_new(srv, c->method);

  /* RECV_CLOSE_ON_SERVER tells us when the call is over, cancelled or not. The initial
   * metadata goes with the first message or the status. The close batch may complete on
   * another queue thread as soon as it is started (a client that cancels at once, a
   * shutdown): this function holds its own reference until it returns, taken before. */
  c->core.refs = 3; /* the call itself (dropped when closed) + the close batch + this function */
  c->core.md_pending = true;
  grpc_op ops[1];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  ops[0].data.recv_close_on_server.cancelled = &c->cancelled;
  if (!px_rpc_call_start(&c->core, ops, 1, &c->t_close)) {
    c->core.over = true;
    c->core.refs = 1;
    px_rpc_call_unref(&c->core);
    return;
  }
  const px_rpc_method* m = c->method >= 0 ? &srv->methods[c->method] : NULL;
  if (!refuse_early(c, m, too_many)) {
    px_msg* req = NULL;
    if (!streams_in(m->kind)) {
      req = px_rpc_msg_wrap(c->payload);
      c->payload = NULL;
    }
    m->on_call(srv->svc, c, req);
  }
  px_rpc_call_unref(&c->core); /* this function's reference */
}

static void shutdown_done(px_rpc_tag* t, bool ok) {
  (void)ok;
  px_rpc_server* srv = (px_rpc_server*)((char*)t - offsetof(px_rpc_server, t_shutdown));
  pthread_mutex_lock(&srv->mu);
  srv->shutdown_seen = true;
  pthread_cond_broadcast(&srv->cv);
  pthread_mutex_unlock(&srv->mu);
}

/* Keeps one request slot of method (-1: unknown methods) pending. */
static void request_new(px_rpc_server* srv, int method) {
  px_srv_call* c = calloc(1, sizeof *c);
  if (!c) {
    px_error("rpc: out of memory for a call slot");
    return;
  }
  c->srv = srv;
  c->method = method;
  c->cbs = &no_cbs;
  px_rpc_call_init(&c->core, &srv_hooks, 1);
  grpc_metadata_array_init(&c->md);
  grpc_call_details_init(&c->details);
  c->t_request.done = request_done;
  c->t_close.done = close_done;
  c->t_status.done = status_done;
  grpc_call_error e;
  if (method < 0) {
    e = grpc_server_request_call(srv->server, &c->core.call, &c->details, &c->md, srv->cq,
                                 srv->cq, &c->t_request);
  } else {
    grpc_byte_buffer** pl =
        streams_in(srv->methods[method].kind) ? NULL : &c->payload;
    e = grpc_server_request_registered_call(srv->server, srv->registered[method], &c->core.call,
                                            &c->deadline, &c->md, pl, srv->cq, srv->cq,
                                            &c->t_request);
  }
  if (e != GRPC_CALL_OK) {
    px_error("rpc: grpc_server_request_call failed: %s", grpc_call_error_to_string(e));
    call_free(c);
  }
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

static grpc_server_credentials* server_credentials(const px_rpc_server_opts* opts) {
  if (!opts->tls_cert_pem && !opts->tls_key_pem) return grpc_insecure_server_credentials_create();
  grpc_ssl_pem_key_cert_pair kp = {opts->tls_key_pem, opts->tls_cert_pem};
  return grpc_ssl_server_credentials_create_ex(
      opts->tls_client_ca_pem, &kp, 1,
      opts->tls_client_ca_pem ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                              : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
      NULL);
}

/* Frees a server that never started (after a failed bind). */
static void server_free_unstarted(px_rpc_server* srv) {
  free(srv->want_auth);
  free(srv->token_exempt_prefix);
  grpc_server_destroy(srv->server);
  grpc_completion_queue_shutdown(srv->cq);
  while (grpc_completion_queue_next(srv->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
         GRPC_QUEUE_SHUTDOWN) {
  }
  grpc_completion_queue_destroy(srv->cq);
  pthread_mutex_destroy(&srv->mu);
  pthread_cond_destroy(&srv->cv);
  free(srv->registered);
  free((void*)srv->finished);
  free(srv);
}

px_rpc_server* px_rpc_server_start(const px_rpc_server_opts* opts, const px_rpc_method* methods,
                                   size_t nmethods, void* svc, int* port, char* err,
                                   size_t errlen) {
  px_rpc_server* srv = calloc(1, sizeof *srv);
  void** registered = calloc(nmethods ? nmethods : 1, sizeof *registered);
  _Atomic uint64_t* finished = calloc((nmethods + 1) * PX_RPC_NSTATUS, sizeof *finished);
  if (!srv || !registered || !finished) {
    free(srv);
    free(registered);
    free((void*)finished);
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  srv->registered = registered;
  srv->finished = finished;
  srv->methods = methods;
  srv->nmethods = nmethods;
  srv->svc = svc;
  srv->t_shutdown.done = shutdown_done;
  srv->max_calls = opts->max_calls;
  pthread_mutex_init(&srv->mu, NULL);
  px_cond_init_monotonic(&srv->cv);

  /* SO_REUSEPORT off: with it (gRPC's default) a second server binds a port in use and
   * the kernel splits the connections between the two. */
  grpc_arg args[2];
  args[0].type = GRPC_ARG_INTEGER;
  args[0].key = (char*)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
  args[0].value.integer = (int)PX_RPC_MAX_MESSAGE;
  args[1].type = GRPC_ARG_INTEGER;
  args[1].key = (char*)GRPC_ARG_ALLOW_REUSEPORT;
  args[1].value.integer = 0;
  grpc_channel_args ca = {2, args};
  srv->server = grpc_server_create(&ca, NULL);
  srv->cq = grpc_completion_queue_create_for_next(NULL);
  grpc_server_register_completion_queue(srv->server, srv->cq, NULL);
  for (size_t i = 0; i < nmethods; i++) {
    srv->registered[i] = grpc_server_register_method(
        srv->server, methods[i].path, NULL,
        streams_in(methods[i].kind) ? GRPC_SRM_PAYLOAD_NONE
            : GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER,
        0);
  }
  if (opts->token) {
    size_t n = strlen(opts->token) + 8;
    srv->want_auth = malloc(n);
    if (srv->want_auth) snprintf(srv->want_auth, n, "Bearer %s", opts->token);
  }
  if (opts->token_exempt_prefix) srv->token_exempt_prefix = strdup(opts->token_exempt_prefix);
  grpc_server_credentials* creds = server_credentials(opts);
  int bound = creds ? grpc_server_add_http2_port(srv->server, opts->listen, creds) : 0;
  if (creds) grpc_server_credentials_release(creds);
  if (bound == 0 || (opts->token && !srv->want_auth)) {
    if (!creds) snprintf(err, errlen, "cannot load the TLS certificate and key");
    else if (bound == 0)
      snprintf(err, errlen, "cannot listen on %s (address in use, invalid, or a bad TLS "
               "certificate or key)", opts->listen);
    else snprintf(err, errlen, "out of memory");
    server_free_unstarted(srv);
    return NULL;
  }
  /* The threads poll before the server starts, so that a server that cannot start one
   * is freed unstarted. */
  unsigned want = opts->cq_threads ? opts->cq_threads : 1;
  srv->threads = calloc(want, sizeof *srv->threads);
  for (unsigned i = 0; srv->threads && i < want; i++) {
    if (pthread_create(&srv->threads[srv->nthreads], NULL, px_rpc_cq_thread, srv->cq) != 0) break;
    srv->nthreads++;
  }
  if (srv->nthreads == 0) {
    snprintf(err, errlen, "cannot start a completion-queue thread");
    free(srv->threads);
    server_free_unstarted(srv);
    return NULL;
  }
  if (srv->nthreads < want)
    px_warn("rpc: started %u of %u completion-queue threads", srv->nthreads, want);
  *port = bound;
  grpc_server_start(srv->server);
  for (size_t i = 0; i < nmethods; i++)
    for (int k = 0; k < REQUESTS_PER_METHOD; k++) request_new(srv, (int)i);
  for (int k = 0; k < 2; k++) request_new(srv, -1);
  return srv;
}

uint64_t px_rpc_server_calls(px_rpc_server* srv, size_t method, int status) {
  if (method > srv->nmethods || status < 0 || status >= PX_RPC_NSTATUS) return 0;
  return atomic_load_explicit(&srv->finished[method * PX_RPC_NSTATUS + (size_t)status],
                              memory_order_relaxed);
}

size_t px_rpc_server_live_calls(px_rpc_server* srv) {
  pthread_mutex_lock(&srv->mu);
  size_t n = srv->live_calls;
  pthread_mutex_unlock(&srv->mu);
  return n;
}

void px_rpc_server_shutdown(px_rpc_server* srv, int64_t drain_ms) {
  pthread_mutex_lock(&srv->mu);
  srv->shutting_down = true;
  pthread_mutex_unlock(&srv->mu);
  grpc_server_shutdown_and_notify(srv->server, srv->cq, &srv->t_shutdown);

  struct timespec until;
  px_deadline_ts(&until, CLOCK_MONOTONIC, drain_ms);
  pthread_mutex_lock(&srv->mu);
  while (srv->live_calls > 0) {
    if (pthread_cond_timedwait(&srv->cv, &srv->mu, &until) == ETIMEDOUT) break;
  }
  bool cancel = srv->live_calls > 0;
  pthread_mutex_unlock(&srv->mu);
  if (cancel) grpc_server_cancel_all_calls(srv->server);

  /* Only when the shutdown tag arrived AND no call of ours is left may the queue be shut
   * down; the threads keep polling meanwhile. */
  pthread_mutex_lock(&srv->mu);
  while (!(srv->shutdown_seen && srv->live_calls == 0)) pthread_cond_wait(&srv->cv, &srv->mu);
  pthread_mutex_unlock(&srv->mu);
  grpc_completion_queue_shutdown(srv->cq);
  for (unsigned i = 0; i < srv->nthreads; i++) pthread_join(srv->threads[i], NULL);
}

void px_rpc_server_destroy(px_rpc_server* srv) {
  if (!srv) return;
  grpc_server_destroy(srv->server);
  grpc_completion_queue_destroy(srv->cq);
  pthread_mutex_destroy(&srv->mu);
  pthread_cond_destroy(&srv->cv);
  if (srv->want_auth) {
    /* the token does not linger in freed memory */
    volatile char* w = srv->want_auth;
    for (size_t i = 0; w[i]; i++) w[i] = 0;
  }
  free(srv->want_auth);
  free(srv->token_exempt_prefix);
  free(srv->threads);
  free(srv->registered);
  free((void*)srv->finished);
  free(srv);
}
