/* The client side of the transport adapter (rpc_client.h): a channel with its own
 * completion-queue thread (or another channel's); each call is a px_rpc_call (rpc_call.h)
 * plus the status batch that tells when it is over, half-close and cancel. */
#include "rpc/rpc_client.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rpc/rpc_call.h"
#include "util/clock.h"
#include "util/log.h"

#define MAX_REGISTERED 32

struct px_cli_call {
  px_rpc_call core; /* first: the core's hooks cast back */
  px_rpc_channel* ch;
  grpc_metadata_array init_md, trail_md;
  grpc_status_code status;
  grpc_slice details;
  px_rpc_tag t_status;
  grpc_metadata md[2]; /* initial metadata sent by this call (own slice refs) */
  const px_cli_call_cbs* cbs;
  void* ctx;
  px_cli_call *prev, *next; /* live list of the channel */
};

/* A completion queue and the thread that drains it, shared by the channels made with
 * opts->share_thread_of (the last one to go stops it). */
typedef struct cq_thread {
  grpc_completion_queue* cq;
  pthread_t thread;
  pthread_mutex_t mu;
  int refs;
} cq_thread;

struct px_rpc_channel {
  grpc_channel* channel;
  cq_thread* t; /* its completion queue and thread, maybe another channel's */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  px_cli_call* live; /* calls not yet done */
  size_t nlive;
  struct {
    const char* path;
    void* handle;
  } reg[MAX_REGISTERED];
  size_t nreg;
  grpc_metadata auth_md; /* authorization header, when a token was given */
  bool has_auth;
  grpc_slice extra_key, extra_value; /* px_rpc_channel_set_header (under mu) */
  bool has_extra;
};

#define CLI_CALL(core) ((px_cli_call*)(core))

static const px_cli_call_cbs no_cbs = {0};

static cq_thread* cq_thread_start(void) {
  cq_thread* t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->cq = grpc_completion_queue_create_for_next(NULL);
  if (!t->cq || pthread_create(&t->thread, NULL, px_rpc_cq_thread, t->cq) != 0) {
    if (t->cq) {
      grpc_completion_queue_shutdown(t->cq);
      grpc_completion_queue_destroy(t->cq);
    }
    free(t);
    return NULL;
  }
  pthread_mutex_init(&t->mu, NULL);
  t->refs = 1;
  return t;
}

static cq_thread* cq_thread_ref(cq_thread* t) {
  pthread_mutex_lock(&t->mu);
  t->refs++;
  pthread_mutex_unlock(&t->mu);
  return t;
}

/* The last reference stops the thread (every call on the queue is over by then). */
static void cq_thread_unref(cq_thread* t) {
  pthread_mutex_lock(&t->mu);
  bool last = --t->refs == 0;
  pthread_mutex_unlock(&t->mu);
  if (!last) return;
  grpc_completion_queue_shutdown(t->cq);
  pthread_join(t->thread, NULL);
  grpc_completion_queue_destroy(t->cq);
  pthread_mutex_destroy(&t->mu);
  free(t);
}

/* ---- channels ----------------------------------------------------------------------------- */

px_rpc_channel* px_rpc_channel_create(const char* target, char* err, size_t errlen) {
  return px_rpc_channel_create_ex(target, NULL, err, errlen);
}

static grpc_channel_credentials* channel_credentials(const px_rpc_channel_opts* opts) {
  if (!opts || !opts->tls_ca_pem) return grpc_insecure_credentials_create();
  grpc_ssl_pem_key_cert_pair kp = {opts->tls_key_pem, opts->tls_cert_pem};
  return grpc_ssl_credentials_create_ex(opts->tls_ca_pem,
                                        opts->tls_cert_pem && opts->tls_key_pem ? &kp : NULL,
                                        NULL, NULL);
}

/* The authorization header of opts->token (call credentials are refused on plaintext
 * channels: the header is sent by hand). -1 when out of memory. */
static int set_token(px_rpc_channel* ch, const char* token) {
  size_t n = strlen(token) + 8;
  char* v = malloc(n);
  if (!v) return -1;
  snprintf(v, n, "Bearer %s", token);
  ch->auth_md.key = grpc_slice_from_static_string("authorization");
  ch->auth_md.value = grpc_slice_from_copied_string(v);
  memset(v, 0, n);
  free(v);
  ch->has_auth = true;
  return 0;
}

px_rpc_channel* px_rpc_channel_create_ex(const char* target, const px_rpc_channel_opts* opts,
                                         char* err, size_t errlen) {
  px_rpc_channel* ch = calloc(1, sizeof *ch);
  if (!ch || (opts && opts->token && set_token(ch, opts->token) != 0)) {
    free(ch);
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  grpc_arg args[3];
  args[0].type = GRPC_ARG_INTEGER;
  args[0].key = (char*)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
  args[0].value.integer = (int)PX_RPC_MAX_MESSAGE;
  /* Each client gets its own connection: several clients in one process (tests,
   * benchmarks) must not share one TCP stream. */
  args[1].type = GRPC_ARG_INTEGER;
  args[1].key = (char*)GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL;
  args[1].value.integer = 1;
  /* gRPC's retries stay on (the default): no retry policy is configured, but the same
   * layer retries transparently a call that raced a GOAWAY or a refused stream, which
   * the unary control calls rely on. */
  grpc_channel_args ca = {2, args};
  if (opts && opts->tls_server_name) {
    args[2].type = GRPC_ARG_STRING;
    args[2].key = (char*)GRPC_SSL_TARGET_NAME_OVERRIDE_ARG;
    args[2].value.string = (char*)opts->tls_server_name;
    ca.num_args = 3;
  }
  grpc_channel_credentials* creds = channel_credentials(opts);
  if (creds) {
    ch->channel = grpc_channel_create(target, creds, &ca);
    grpc_channel_credentials_release(creds);
  }
  const px_rpc_channel* share = opts ? opts->share_thread_of : NULL;
  ch->t = !ch->channel ? NULL : share ? cq_thread_ref(share->t) : cq_thread_start();
  if (!ch->t) {
    if (!creds) snprintf(err, errlen, "cannot load the TLS CA, certificate or key");
    else if (!ch->channel) snprintf(err, errlen, "cannot create a channel to %s", target);
    else snprintf(err, errlen, "cannot start the channel thread");
    if (ch->channel) grpc_channel_destroy(ch->channel);
    if (ch->has_auth) grpc_slice_unref(ch->auth_md.value);
    free(ch);
    return NULL;
  }
  pthread_mutex_init(&ch->mu, NULL);
  px_cond_init_monotonic(&ch->cv);
  return ch;
}

void px_rpc_channel_destroy(px_rpc_channel* ch) {
  if (!ch) return;
  pthread_mutex_lock(&ch->mu);
  for (px_cli_call* c = ch->live; c; c = c->next) grpc_call_cancel(c->core.call, NULL);
  while (ch->nlive > 0) pthread_cond_wait(&ch->cv, &ch->mu);
  pthread_mutex_unlock(&ch->mu);
  grpc_channel_destroy(ch->channel);
  cq_thread_unref(ch->t);
  pthread_mutex_destroy(&ch->mu);
  pthread_cond_destroy(&ch->cv);
  if (ch->has_auth) grpc_slice_unref(ch->auth_md.value);
  if (ch->has_extra) {
    grpc_slice_unref(ch->extra_key);
    grpc_slice_unref(ch->extra_value);
  }
  free(ch);
}

void px_rpc_channel_set_header(px_rpc_channel* ch, const char* key, const char* value) {
  grpc_slice k = grpc_slice_from_copied_string(key);
  grpc_slice v = grpc_slice_from_copied_string(value ? value : "");
  pthread_mutex_lock(&ch->mu);
  if (ch->has_extra) {
    grpc_slice_unref(ch->extra_key);
    grpc_slice_unref(ch->extra_value);
  }
  ch->extra_key = k;
  ch->extra_value = v;
  ch->has_extra = value != NULL;
  pthread_mutex_unlock(&ch->mu);
  if (!value) {
    grpc_slice_unref(k);
    grpc_slice_unref(v);
  }
}

static void* registered_method(px_rpc_channel* ch, const char* path) {
  void* h = NULL;
  pthread_mutex_lock(&ch->mu);
  for (size_t i = 0; i < ch->nreg; i++)
    if (ch->reg[i].path == path || strcmp(ch->reg[i].path, path) == 0) h = ch->reg[i].handle;
  if (!h && ch->nreg < MAX_REGISTERED) {
    /* grpc_channel_register_call does not copy path: callers pass string literals. */
    h = grpc_channel_register_call(ch->channel, path, NULL, NULL);
    ch->reg[ch->nreg].path = path;
    ch->reg[ch->nreg].handle = h;
    ch->nreg++;
  }
  pthread_mutex_unlock(&ch->mu);
  return h;
}

/* ---- calls -------------------------------------------------------------------------------- */

static void call_free(px_cli_call* c) {
  px_rpc_channel* ch = c->ch;
  pthread_mutex_lock(&ch->mu);
  if (c->prev) c->prev->next = c->next;
  else ch->live = c->next;
  if (c->next) c->next->prev = c->prev;
  ch->nlive--;
  pthread_cond_broadcast(&ch->cv);
  pthread_mutex_unlock(&ch->mu);
  grpc_metadata_array_destroy(&c->init_md);
  grpc_metadata_array_destroy(&c->trail_md);
  grpc_slice_unref(c->details);
  for (size_t i = 0; i < c->core.nmd; i++) {
    grpc_slice_unref(c->md[i].key);
    grpc_slice_unref(c->md[i].value);
  }
  px_rpc_call_deinit(&c->core);
  free(c);
}

static void hook_received(px_rpc_call* core, px_msg* m, bool ok) {
  px_cli_call* c = CLI_CALL(core);
  (void)ok; /* m is NULL at the end of the stream and on failure alike */
  if (c->cbs->on_message) c->cbs->on_message(c, c->ctx, m);
  else px_msg_free(m);
}

static void hook_sent(px_rpc_call* core, bool ok) {
  px_cli_call* c = CLI_CALL(core);
  if (c->cbs->on_sent) c->cbs->on_sent(c, c->ctx, ok);
}

static void hook_last_unref(px_rpc_call* core) {
  px_cli_call* c = CLI_CALL(core);
  if (c->cbs->on_done) {
    char* d = grpc_slice_to_c_string(c->details);
    c->cbs->on_done(c, c->ctx, (int)c->status, d ? d : "");
    gpr_free(d);
  }
  call_free(c);
}

static const px_rpc_call_hooks cli_hooks = {hook_received, hook_sent, hook_last_unref};

static void status_done(px_rpc_tag* t, bool ok) {
  (void)ok;
  px_cli_call* c = (px_cli_call*)((char*)t - offsetof(px_cli_call, t_status));
  pthread_mutex_lock(&c->core.mu);
  c->core.over = true;
  pthread_mutex_unlock(&c->core.mu);
  px_rpc_call_unref(&c->core); /* the status batch */
  px_rpc_call_unref(&c->core); /* the call itself */
}

/* The headers every call of ch sends (c->core.mu not needed: c is not shared yet). */
static void copy_headers(px_cli_call* c, px_rpc_channel* ch) {
  pthread_mutex_lock(&ch->mu);
  size_t n = 0;
  if (ch->has_auth) {
    c->md[n].key = grpc_slice_ref(ch->auth_md.key);
    c->md[n].value = grpc_slice_ref(ch->auth_md.value);
    n++;
  }
  if (ch->has_extra) {
    c->md[n].key = grpc_slice_ref(ch->extra_key);
    c->md[n].value = grpc_slice_ref(ch->extra_value);
    n++;
  }
  pthread_mutex_unlock(&ch->mu);
  c->core.md = c->md;
  c->core.nmd = n;
}

px_cli_call* px_cli_call_start(px_rpc_channel* ch, const char* path, int64_t timeout_ms,
                               bool wait_for_ready, const px_cli_call_cbs* cbs, void* ctx) {
  px_cli_call* c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->ch = ch;
  c->cbs = cbs ? cbs : &no_cbs;
  c->ctx = ctx;
  c->status = GRPC_STATUS_UNKNOWN;
  c->details = grpc_empty_slice();
  grpc_metadata_array_init(&c->init_md);
  grpc_metadata_array_init(&c->trail_md);
  c->t_status.done = status_done;
  /* the call itself (dropped with the status) + the status batch + the caller's */
  px_rpc_call_init(&c->core, &cli_hooks, 3);
  void* reg = registered_method(ch, path);
  gpr_timespec deadline = px_rpc_deadline_ms(timeout_ms);
  if (reg)
    c->core.call = grpc_channel_create_registered_call(ch->channel, NULL, GRPC_PROPAGATE_DEFAULTS,
                                                       ch->t->cq, reg, deadline, NULL);
  else
    c->core.call = grpc_channel_create_call(ch->channel, NULL, GRPC_PROPAGATE_DEFAULTS, ch->t->cq,
                                            grpc_slice_from_static_string(path), NULL, deadline,
                                            NULL);
  copy_headers(c, ch);
  c->core.md_pending = true;
  c->core.md_flags = wait_for_ready ? GRPC_INITIAL_METADATA_WAIT_FOR_READY : 0;
  /* The status batch may precede the initial metadata: the client channel queues
   * batches until the call starts with its SEND_INITIAL_METADATA. */
  grpc_op ops[2];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[0].data.recv_initial_metadata.recv_initial_metadata = &c->init_md;
  ops[1].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[1].data.recv_status_on_client.trailing_metadata = &c->trail_md;
  ops[1].data.recv_status_on_client.status = &c->status;
  ops[1].data.recv_status_on_client.status_details = &c->details;
  if (!c->core.call || !px_rpc_call_start(&c->core, ops, 2, &c->t_status)) {
    /* cannot happen with a fresh call; reported like running out of memory */
    grpc_metadata_array_destroy(&c->init_md);
    grpc_metadata_array_destroy(&c->trail_md);
    for (size_t i = 0; i < c->core.nmd; i++) {
      grpc_slice_unref(c->md[i].key);
      grpc_slice_unref(c->md[i].value);
    }
    px_rpc_call_deinit(&c->core);
    free(c);
    return NULL;
  }
  pthread_mutex_lock(&ch->mu);
  c->next = ch->live;
  if (ch->live) ch->live->prev = c;
  ch->live = c;
  ch->nlive++;
  pthread_mutex_unlock(&ch->mu);
  return c;
}

bool px_cli_call_try_ref(px_cli_call* c) { return px_rpc_call_try_ref(&c->core); }
void px_cli_call_unref(px_cli_call* c) { px_rpc_call_unref(&c->core); }

bool px_cli_call_send(px_cli_call* c, const px_out* out, bool last) {
  grpc_op close;
  memset(&close, 0, sizeof close);
  close.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  return px_rpc_call_send(&c->core, out, last ? &close : NULL, last);
}

bool px_cli_call_close_send(px_cli_call* c) {
  px_rpc_call* core = &c->core;
  pthread_mutex_lock(&core->mu);
  if (core->over || core->sending || core->no_send) {
    pthread_mutex_unlock(&core->mu);
    return false;
  }
  core->no_send = true;
  core->sending = true;
  core->refs++;
  grpc_op ops[2];
  memset(ops, 0, sizeof ops);
  const size_t md = px_rpc_call_take_md(core, &ops[0]);
  size_t n = md;
  ops[n++].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  bool ok = px_rpc_call_start(core, ops, n, &core->t_send);
  if (!ok) {
    core->sending = false;
    px_rpc_call_restore_md(core, md);
  }
  pthread_mutex_unlock(&core->mu);
  if (!ok) px_rpc_call_unref(core);
  return ok;
}

bool px_cli_call_read(px_cli_call* c) { return px_rpc_call_read(&c->core, true); }

void px_cli_call_cancel(px_cli_call* c) { grpc_call_cancel(c->core.call, NULL); }

/* ---- blocking unary ------------------------------------------------------------------------ */

typedef struct unary_wait {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool done;
  int status;
  px_msg* resp;
  char* details;
  size_t details_cap;
} unary_wait;

static void unary_on_message(px_cli_call* c, void* ctx, px_msg* m) {
  (void)c;
  unary_wait* w = ctx;
  if (w->resp) px_msg_free(w->resp);
  w->resp = m;
}

static void unary_on_done(px_cli_call* c, void* ctx, int status, const char* details) {
  (void)c;
  unary_wait* w = ctx;
  pthread_mutex_lock(&w->mu);
  w->status = status;
  if (w->details && w->details_cap) snprintf(w->details, w->details_cap, "%s", details);
  w->done = true;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

static const px_cli_call_cbs unary_cbs = {unary_on_message, NULL, unary_on_done};

/* The response of a finished unary call as the caller wants it: copied into *resp. */
static int unary_result(unary_wait* w, uint8_t** resp, size_t* resp_len) {
  int st = w->status;
  if (st != PX_ST_OK) return st;
  if (!w->resp) {
    if (w->details && w->details_cap) snprintf(w->details, w->details_cap, "no response message");
    return PX_ST_INTERNAL;
  }
  if (!resp) return st;
  size_t n;
  const uint8_t* p = px_msg_flat(w->resp, &n);
  *resp = p ? malloc(n ? n : 1) : NULL;
  if (!*resp) return PX_ST_RESOURCE_EXHAUSTED;
  memcpy(*resp, p, n);
  if (resp_len) *resp_len = n;
  return st;
}

int px_rpc_unary(px_rpc_channel* ch, const char* path, const void* req, size_t req_len,
                 int64_t timeout_ms, bool wait_for_ready, uint8_t** resp, size_t* resp_len,
                 char* details, size_t details_cap) {
  unary_wait w;
  memset(&w, 0, sizeof w);
  pthread_mutex_init(&w.mu, NULL);
  pthread_cond_init(&w.cv, NULL);
  w.details = details;
  w.details_cap = details_cap;
  if (details && details_cap) details[0] = 0;
  px_cli_call* c = px_cli_call_start(ch, path, timeout_ms, wait_for_ready, &unary_cbs, &w);
  if (!c) return PX_ST_RESOURCE_EXHAUSTED;
  px_out out = {req, req_len, NULL, 0, NULL, NULL};
  px_cli_call_send(c, &out, true);
  px_cli_call_read(c);
  px_cli_call_unref(c);
  pthread_mutex_lock(&w.mu);
  while (!w.done) pthread_cond_wait(&w.cv, &w.mu);
  pthread_mutex_unlock(&w.mu);
  int st = unary_result(&w, resp, resp_len);
  px_msg_free(w.resp);
  pthread_mutex_destroy(&w.mu);
  pthread_cond_destroy(&w.cv);
  return st;
}
