/* Server side of the transport adapter: completion-queue threads, one state machine
 * per call, UNIMPLEMENTED for unknown methods, and the shutdown order of
 * shared/notes/grpc-core.md (trap 4). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rpc/rpc_internal.h"

#define REQUESTS_PER_METHOD 8

struct px_srv_call {
  px_rpc_server* srv;
  int method; /* index, or -1 for an unknown method */
  grpc_call* call;
  gpr_timespec deadline;
  grpc_metadata_array md;
  grpc_call_details details; /* unknown methods only */
  grpc_byte_buffer* payload;
  grpc_byte_buffer* recv_bb;
  grpc_byte_buffer* send_bb;
  grpc_byte_buffer* final_bb;
  grpc_slice status_details;
  bool has_status_details;
  int cancelled;
  rpc_tag t_request, t_close, t_recv, t_send, t_status;

  pthread_mutex_t mu;
  int refs;
  bool live, finished, closed, reading, sending;
  /* Initial metadata not sent yet: it goes out with the first message or the status (one
   * write and one completion fewer per call). Under mu. */
  bool md_pending;
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
  rpc_tag t_shutdown;

  pthread_mutex_t mu;
  pthread_cond_t cv;
  size_t live_calls;
  bool shutting_down, shutdown_seen;
  size_t max_calls;
  char* want_auth;          /* "Bearer TOKEN", or NULL */
  char* token_exempt_prefix;
};

/* Constant-time comparison of the authorization header with the expected value: the time
 * depends only on the expected length. */
static bool auth_ok(px_srv_call* c) {
  const char* want = c->srv->want_auth;
  if (!want) return true;
  const grpc_slice* got = NULL;
  for (size_t i = 0; i < c->md.count; i++)
    if (grpc_slice_str_cmp(c->md.metadata[i].key, "authorization") == 0) got = &c->md.metadata[i].value;
  size_t wl = strlen(want);
  const uint8_t* g = got ? GRPC_SLICE_START_PTR(*got) : NULL;
  size_t gl = got ? GRPC_SLICE_LENGTH(*got) : 0;
  unsigned diff = gl != wl;
  for (size_t i = 0; i < wl; i++) diff |= (unsigned)(uint8_t)want[i] ^ (i < gl ? g[i] : 0u);
  return diff == 0;
}

static const px_srv_call_cbs no_cbs = {0};

static void request_new(px_rpc_server* srv, int method);

static void call_free(px_srv_call* c) {
  px_rpc_server* srv = c->srv;
  bool live = c->live;
  if (c->payload) grpc_byte_buffer_destroy(c->payload);
  if (c->recv_bb) grpc_byte_buffer_destroy(c->recv_bb);
  if (c->send_bb) grpc_byte_buffer_destroy(c->send_bb);
  if (c->final_bb) grpc_byte_buffer_destroy(c->final_bb);
  if (c->has_status_details) grpc_slice_unref(c->status_details);
  grpc_metadata_array_destroy(&c->md);
  grpc_call_details_destroy(&c->details);
  if (c->call) grpc_call_unref(c->call);
  pthread_mutex_destroy(&c->mu);
  free(c);
  if (live) {
    pthread_mutex_lock(&srv->mu);
    srv->live_calls--;
    pthread_cond_broadcast(&srv->cv);
    pthread_mutex_unlock(&srv->mu);
  }
}

void px_srv_call_ref(px_srv_call* c) {
  pthread_mutex_lock(&c->mu);
  c->refs++;
  pthread_mutex_unlock(&c->mu);
}

void px_srv_call_unref(px_srv_call* c) {
  pthread_mutex_lock(&c->mu);
  int left = --c->refs;
  pthread_mutex_unlock(&c->mu);
  if (left > 0) return;
  if (c->cbs->on_done) c->cbs->on_done(c, c->ctx);
  call_free(c);
}

bool px_srv_call_has_ctx(px_srv_call* c) { return c->ctx != NULL; }

void px_srv_call_set(px_srv_call* c, const px_srv_call_cbs* cbs, void* ctx) {
  c->cbs = cbs ? cbs : &no_cbs;
  c->ctx = ctx;
}

/* Starts a batch; false (logged) when gRPC refuses it: the caller drops the reference it
 * took for the batch. */
static bool start_batch(px_srv_call* c, grpc_op* ops, size_t n, rpc_tag* tag) {
  grpc_call_error e = grpc_call_start_batch(c->call, ops, n, tag, NULL);
  if (e != GRPC_CALL_OK) {
    fprintf(stderr, "paramex rpc: start_batch failed: %s\n", grpc_call_error_to_string(e));
    return false;
  }
  return true;
}

/* c->mu held: puts the pending initial metadata first in ops; returns the ops used (0/1).
 * The batch carrying it is started before c->mu is released so that no other send can
 * overtake it. */
static size_t take_initial_md(px_srv_call* c, grpc_op* op) {
  if (!c->md_pending) return 0;
  c->md_pending = false;
  op->op = GRPC_OP_SEND_INITIAL_METADATA;
  return 1;
}

bool px_srv_call_read(px_srv_call* c) {
  pthread_mutex_lock(&c->mu);
  if (c->finished || c->closed || c->reading) {
    pthread_mutex_unlock(&c->mu);
    return false;
  }
  c->reading = true;
  c->refs++;
  pthread_mutex_unlock(&c->mu);
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_RECV_MESSAGE;
  op.data.recv_message.recv_message = &c->recv_bb;
  if (!start_batch(c, &op, 1, &c->t_recv)) {
    pthread_mutex_lock(&c->mu);
    c->reading = false;
    pthread_mutex_unlock(&c->mu);
    px_srv_call_unref(c);
    return false;
  }
  return true;
}

bool px_srv_call_send(px_srv_call* c, const px_out* out) {
  pthread_mutex_lock(&c->mu);
  if (c->finished || c->closed || c->sending) {
    pthread_mutex_unlock(&c->mu);
    rpc_out_release(out);
    return false;
  }
  c->sending = true;
  c->refs++;
  c->send_bb = rpc_out_buffer(out);
  grpc_op ops[2];
  memset(ops, 0, sizeof ops);
  const size_t md = take_initial_md(c, &ops[0]);
  size_t n = md;
  ops[n].op = GRPC_OP_SEND_MESSAGE;
  ops[n].data.send_message.send_message = c->send_bb;
  n++;
  bool ok = c->send_bb && start_batch(c, ops, n, &c->t_send);
  grpc_byte_buffer* drop = NULL;
  if (!ok) {
    drop = c->send_bb; /* destroyed after unlocking: its release callback may take locks */
    c->send_bb = NULL;
    c->sending = false;
    if (md) c->md_pending = true; /* the status must still carry the headers (trap 1) */
  }
  pthread_mutex_unlock(&c->mu);
  if (drop) grpc_byte_buffer_destroy(drop);
  if (!ok) px_srv_call_unref(c);
  return ok;
}

void px_srv_call_finish(px_srv_call* c, const px_out* out, int status, const char* details) {
  pthread_mutex_lock(&c->mu);
  if (c->finished || c->closed) {
    pthread_mutex_unlock(&c->mu);
    rpc_out_release(out);
    return;
  }
  c->finished = true;
  c->refs++;
  bool sending = c->sending;
  grpc_op ops[3];
  memset(ops, 0, sizeof ops);
  size_t n = take_initial_md(c, &ops[0]); /* a status never goes without it (trap 1) */
  if (out && !sending) {
    c->final_bb = rpc_out_buffer(out);
    if (c->final_bb) {
      ops[n].op = GRPC_OP_SEND_MESSAGE;
      ops[n].data.send_message.send_message = c->final_bb;
      n++;
    }
  } else if (out) {
    /* A last message while a send is pending cannot be queued: report the misuse rather
     * than end the call OK without it. */
    rpc_out_release(out);
    status = PX_ST_INTERNAL;
    details = "server error: final message while a send was pending";
  }
  c->status_details = grpc_slice_from_copied_string(details ? details : "");
  c->has_status_details = true;
  ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
  ops[n].data.send_status_from_server.status = (grpc_status_code)status;
  ops[n].data.send_status_from_server.trailing_metadata_count = 0;
  ops[n].data.send_status_from_server.status_details = &c->status_details;
  n++;
  bool ok = start_batch(c, ops, n, &c->t_status);
  pthread_mutex_unlock(&c->mu);
  if (!ok) px_srv_call_unref(c);
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
  char* p = grpc_call_get_peer(c->call);
  snprintf(buf, cap, "%s", p ? p : "?");
  gpr_free(p);
  return buf;
}

/* ---- events ------------------------------------------------------------------------ */

static void on_request(px_srv_call* c, bool ok) {
  px_rpc_server* srv = c->srv;
  if (!ok) { /* server shutting down: the request slot is cancelled */
    call_free(c);
    return;
  }
  pthread_mutex_lock(&srv->mu);
  srv->live_calls++;
  bool shutting = srv->shutting_down;
  bool too_many = srv->max_calls && srv->live_calls > srv->max_calls;
  pthread_mutex_unlock(&srv->mu);
  c->live = true;
  if (!shutting) request_new(srv, c->method);

  /* RECV_CLOSE_ON_SERVER tells us when the call is over, cancelled or not. The initial
   * metadata goes with the first message or the status (a status must never be sent
   * without it: px_srv_call_finish adds it). */
  c->refs = 2; /* the call itself (dropped when closed) + the close batch */
  c->md_pending = true;
  grpc_op ops[1];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  ops[0].data.recv_close_on_server.cancelled = &c->cancelled;
  if (!start_batch(c, ops, 1, &c->t_close)) {
    c->closed = true;
    c->refs = 1;
    px_srv_call_unref(c);
    return;
  }
  if (c->method < 0) {
    px_srv_call_finish(c, NULL, PX_ST_UNIMPLEMENTED, "unknown method");
    return;
  }
  const px_rpc_method* m = &srv->methods[c->method];
  bool exempt = srv->token_exempt_prefix &&
                strncmp(m->path, srv->token_exempt_prefix, strlen(srv->token_exempt_prefix)) == 0;
  if (srv->want_auth && !exempt && !auth_ok(c)) {
    px_srv_call_finish(c, NULL, PX_ST_UNAUTHENTICATED, "missing or invalid bearer token");
    return;
  }
  if (too_many && !exempt) {
    char msg[96];
    snprintf(msg, sizeof msg, "too many concurrent calls (--max-calls %zu)", srv->max_calls);
    px_srv_call_finish(c, NULL, PX_ST_RESOURCE_EXHAUSTED, msg);
    return;
  }
  px_msg* req = NULL;
  if (m->kind != PX_RPC_CLIENT_STREAMING) {
    req = rpc_msg_wrap(c->payload);
    c->payload = NULL;
  }
  px_srv_call_ref(c); /* keep the call alive through on_call */
  m->on_call(srv->svc, c, req);
  px_srv_call_unref(c);
}

static void dispatch(rpc_tag* t, bool ok) {
  if (t->kind == TAG_SHUTDOWN) {
    px_rpc_server* srv = t->owner;
    pthread_mutex_lock(&srv->mu);
    srv->shutdown_seen = true;
    pthread_cond_broadcast(&srv->cv);
    pthread_mutex_unlock(&srv->mu);
    return;
  }
  px_srv_call* c = t->owner;
  switch (t->kind) {
    case TAG_REQUEST:
      on_request(c, ok);
      return;
    case TAG_CLOSE: {
      pthread_mutex_lock(&c->mu);
      c->closed = true;
      bool cancelled = c->cancelled != 0 || !c->finished;
      pthread_mutex_unlock(&c->mu);
      if (c->cbs->on_closed) c->cbs->on_closed(c, c->ctx, cancelled);
      px_srv_call_unref(c); /* the close batch */
      px_srv_call_unref(c); /* the call itself */
      return;
    }
    case TAG_RECV: {
      grpc_byte_buffer* bb = c->recv_bb;
      c->recv_bb = NULL;
      bool good = ok && !(bb == NULL && grpc_call_failed_before_recv_message(c->call));
      pthread_mutex_lock(&c->mu);
      c->reading = false;
      pthread_mutex_unlock(&c->mu);
      px_msg* m = good ? rpc_msg_wrap(bb) : NULL;
      if (!good && bb) grpc_byte_buffer_destroy(bb);
      if (c->cbs->on_message) c->cbs->on_message(c, c->ctx, m, good);
      else px_msg_free(m);
      px_srv_call_unref(c);
      return;
    }
    case TAG_SEND:
      grpc_byte_buffer_destroy(c->send_bb);
      c->send_bb = NULL;
      pthread_mutex_lock(&c->mu);
      c->sending = false;
      pthread_mutex_unlock(&c->mu);
      if (c->cbs->on_sent) c->cbs->on_sent(c, c->ctx, ok);
      px_srv_call_unref(c);
      return;
    case TAG_STATUS:
      if (c->final_bb) {
        grpc_byte_buffer_destroy(c->final_bb);
        c->final_bb = NULL;
      }
      px_srv_call_unref(c);
      return;
    default:
      return;
  }
}

static void* cq_thread(void* arg) {
  px_rpc_server* srv = arg;
  for (;;) {
    grpc_event ev =
        grpc_completion_queue_next(srv->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
    if (ev.type != GRPC_OP_COMPLETE || !ev.tag) continue;
    dispatch(ev.tag, ev.success != 0);
  }
  return NULL;
}

static void request_new(px_rpc_server* srv, int method) {
  px_srv_call* c = calloc(1, sizeof *c);
  if (!c) {
    fprintf(stderr, "paramex rpc: out of memory for a call slot\n");
    return;
  }
  c->srv = srv;
  c->method = method;
  c->cbs = &no_cbs;
  c->refs = 1;
  pthread_mutex_init(&c->mu, NULL);
  grpc_metadata_array_init(&c->md);
  grpc_call_details_init(&c->details);
  c->t_request = (rpc_tag){TAG_REQUEST, c};
  c->t_close = (rpc_tag){TAG_CLOSE, c};
  c->t_recv = (rpc_tag){TAG_RECV, c};
  c->t_send = (rpc_tag){TAG_SEND, c};
  c->t_status = (rpc_tag){TAG_STATUS, c};
  grpc_call_error e;
  if (method < 0) {
    e = grpc_server_request_call(srv->server, &c->call, &c->details, &c->md, srv->cq, srv->cq,
                                 &c->t_request);
  } else {
    grpc_byte_buffer** pl =
        srv->methods[method].kind == PX_RPC_CLIENT_STREAMING ? NULL : &c->payload;
    e = grpc_server_request_registered_call(srv->server, srv->registered[method], &c->call,
                                            &c->deadline, &c->md, pl, srv->cq, srv->cq,
                                            &c->t_request);
  }
  if (e != GRPC_CALL_OK) {
    fprintf(stderr, "paramex rpc: request_call failed: %s\n", grpc_call_error_to_string(e));
    call_free(c);
  }
}

px_rpc_server* px_rpc_server_start(const px_rpc_server_opts* opts, const px_rpc_method* methods,
                                     size_t nmethods, void* svc, int* port, char* err,
                                     size_t errlen) {
  px_rpc_server* srv = calloc(1, sizeof *srv);
  if (!srv) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  srv->methods = methods;
  srv->nmethods = nmethods;
  srv->svc = svc;
  srv->t_shutdown = (rpc_tag){TAG_SHUTDOWN, srv};
  srv->max_calls = opts->max_calls;
  pthread_mutex_init(&srv->mu, NULL);
  rpc_cond_init_monotonic(&srv->cv);
  srv->registered = calloc(nmethods ? nmethods : 1, sizeof *srv->registered);

  grpc_arg args[1];
  args[0].type = GRPC_ARG_INTEGER;
  args[0].key = (char*)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
  args[0].value.integer = (int)PX_RPC_MAX_MESSAGE;
  grpc_channel_args ca = {1, args};
  srv->server = grpc_server_create(&ca, NULL);
  srv->cq = grpc_completion_queue_create_for_next(NULL);
  grpc_server_register_completion_queue(srv->server, srv->cq, NULL);
  for (size_t i = 0; i < nmethods; i++) {
    srv->registered[i] = grpc_server_register_method(
        srv->server, methods[i].path, NULL,
        methods[i].kind == PX_RPC_CLIENT_STREAMING ? GRPC_SRM_PAYLOAD_NONE
                                                     : GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER,
        0);
  }
  if (opts->token) {
    size_t n = strlen(opts->token) + 8;
    srv->want_auth = malloc(n);
    if (srv->want_auth) snprintf(srv->want_auth, n, "Bearer %s", opts->token);
  }
  if (opts->token_exempt_prefix) srv->token_exempt_prefix = strdup(opts->token_exempt_prefix);
  grpc_server_credentials* creds;
  if (opts->tls_cert_pem || opts->tls_key_pem) {
    grpc_ssl_pem_key_cert_pair kp = {opts->tls_key_pem, opts->tls_cert_pem};
    creds = grpc_ssl_server_credentials_create_ex(
        opts->tls_client_ca_pem, &kp, 1,
        opts->tls_client_ca_pem ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
        NULL);
  } else {
    creds = grpc_insecure_server_credentials_create();
  }
  int bound = creds ? grpc_server_add_http2_port(srv->server, opts->listen, creds) : 0;
  if (creds) grpc_server_credentials_release(creds);
  if (bound == 0) {
    if (!creds) snprintf(err, errlen, "cannot load the TLS certificate and key");
    else snprintf(err, errlen, "cannot listen on %s (address in use, invalid, or a bad TLS "
                  "certificate or key)", opts->listen);
    free(srv->want_auth);
    free(srv->token_exempt_prefix);
    grpc_server_destroy(srv->server);
    grpc_completion_queue_shutdown(srv->cq);
    while (grpc_completion_queue_next(srv->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(srv->cq);
    free(srv->registered);
    free(srv);
    return NULL;
  }
  *port = bound;
  grpc_server_start(srv->server);
  for (size_t i = 0; i < nmethods; i++)
    for (int k = 0; k < REQUESTS_PER_METHOD; k++) request_new(srv, (int)i);
  for (int k = 0; k < 2; k++) request_new(srv, -1);

  srv->nthreads = opts->cq_threads ? opts->cq_threads : 1;
  srv->threads = calloc(srv->nthreads, sizeof *srv->threads);
  for (unsigned i = 0; i < srv->nthreads; i++)
    pthread_create(&srv->threads[i], NULL, cq_thread, srv);
  return srv;
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
  rpc_abs_monotonic(&until, drain_ms);
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
  free(srv);
}
