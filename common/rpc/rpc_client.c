/* Client side of the transport adapter: a channel with its own completion-queue thread
 * and callback-driven calls. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rpc/rpc_internal.h"

#define MAX_REGISTERED 32

struct px_cli_call {
  px_rpc_channel* ch;
  grpc_call* call;
  grpc_metadata_array init_md, trail_md;
  grpc_status_code status;
  grpc_slice details;
  grpc_byte_buffer* recv_bb;
  grpc_byte_buffer* send_bb;
  rpc_tag t_start, t_status, t_recv, t_send;
  grpc_metadata md[2]; /* initial metadata sent by this call (own slice refs) */
  size_t nmd;
  /* Initial metadata not sent yet: it goes out with the first send, close or read, so
   * that headers and the request share one write (and one completion). Under mu. */
  bool md_pending;
  uint32_t md_flags;

  pthread_mutex_t mu;
  int refs;
  bool status_done, reading, sending, half_closed;
  const px_cli_call_cbs* cbs;
  void* ctx;
  px_cli_call *prev, *next; /* live list of the channel */
};

struct px_rpc_channel {
  grpc_channel* channel;
  grpc_completion_queue* cq;
  pthread_t thread;
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

static void* channel_thread(void* arg) {
  px_rpc_channel* ch = arg;
  for (;;) {
    grpc_event ev =
        grpc_completion_queue_next(ch->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
    if (ev.type != GRPC_OP_COMPLETE || !ev.tag) continue;
    rpc_tag* t = ev.tag;
    px_cli_call* c = t->owner;
    bool ok = ev.success != 0;
    switch (t->kind) {
      case TAG_START:
        px_cli_call_unref(c);
        break;
      case TAG_STATUS:
        pthread_mutex_lock(&c->mu);
        c->status_done = true;
        pthread_mutex_unlock(&c->mu);
        px_cli_call_unref(c); /* the status batch */
        px_cli_call_unref(c); /* the call itself */
        break;
      case TAG_RECV: {
        grpc_byte_buffer* bb = c->recv_bb;
        c->recv_bb = NULL;
        pthread_mutex_lock(&c->mu);
        c->reading = false;
        pthread_mutex_unlock(&c->mu);
        px_msg* m = NULL;
        if (ok) m = rpc_msg_wrap(bb);
        else if (bb) grpc_byte_buffer_destroy(bb);
        if (c->cbs->on_message) c->cbs->on_message(c, c->ctx, m);
        else px_msg_free(m);
        px_cli_call_unref(c);
        break;
      }
      case TAG_SEND:
        grpc_byte_buffer_destroy(c->send_bb);
        c->send_bb = NULL;
        pthread_mutex_lock(&c->mu);
        c->sending = false;
        pthread_mutex_unlock(&c->mu);
        if (c->cbs->on_sent) c->cbs->on_sent(c, c->ctx, ok);
        px_cli_call_unref(c);
        break;
      default:
        break;
    }
  }
  return NULL;
}

px_rpc_channel* px_rpc_channel_create(const char* target, char* err, size_t errlen) {
  return px_rpc_channel_create_ex(target, NULL, err, errlen);
}

px_rpc_channel* px_rpc_channel_create_ex(const char* target, const px_rpc_channel_opts* opts,
                                           char* err, size_t errlen) {
  px_rpc_channel* ch = calloc(1, sizeof *ch);
  if (!ch) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  pthread_mutex_init(&ch->mu, NULL);
  rpc_cond_init_monotonic(&ch->cv);
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
  grpc_channel_credentials* creds;
  if (opts && opts->tls_ca_pem) {
    grpc_ssl_pem_key_cert_pair kp = {opts->tls_key_pem, opts->tls_cert_pem};
    creds = grpc_ssl_credentials_create_ex(opts->tls_ca_pem,
                                           opts->tls_cert_pem && opts->tls_key_pem ? &kp : NULL,
                                           NULL, NULL);
  } else {
    creds = grpc_insecure_credentials_create();
  }
  if (!creds) {
    snprintf(err, errlen, "cannot load the TLS CA, certificate or key");
    free(ch);
    return NULL;
  }
  ch->channel = grpc_channel_create(target, creds, &ca);
  grpc_channel_credentials_release(creds);
  if (opts && opts->token) {
    /* Call credentials are refused on plaintext channels: send the header ourselves. */
    size_t n = strlen(opts->token) + 8;
    char* v = malloc(n);
    if (v) {
      snprintf(v, n, "Bearer %s", opts->token);
      ch->auth_md.key = grpc_slice_from_static_string("authorization");
      ch->auth_md.value = grpc_slice_from_copied_string(v);
      memset(v, 0, n);
      free(v);
      ch->has_auth = true;
    }
  }
  if (!ch->channel) {
    snprintf(err, errlen, "cannot create a channel to %s", target);
    free(ch);
    return NULL;
  }
  ch->cq = grpc_completion_queue_create_for_next(NULL);
  if (pthread_create(&ch->thread, NULL, channel_thread, ch) != 0) {
    snprintf(err, errlen, "cannot start the channel thread");
    grpc_channel_destroy(ch->channel);
    grpc_completion_queue_shutdown(ch->cq);
    grpc_completion_queue_destroy(ch->cq);
    free(ch);
    return NULL;
  }
  return ch;
}

void px_rpc_channel_destroy(px_rpc_channel* ch) {
  if (!ch) return;
  pthread_mutex_lock(&ch->mu);
  for (px_cli_call* c = ch->live; c; c = c->next) grpc_call_cancel(c->call, NULL);
  while (ch->nlive > 0) pthread_cond_wait(&ch->cv, &ch->mu);
  pthread_mutex_unlock(&ch->mu);
  grpc_channel_destroy(ch->channel);
  grpc_completion_queue_shutdown(ch->cq);
  pthread_join(ch->thread, NULL);
  grpc_completion_queue_destroy(ch->cq);
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
  for (size_t i = 0; i < c->nmd; i++) {
    grpc_slice_unref(c->md[i].key);
    grpc_slice_unref(c->md[i].value);
  }
  if (c->recv_bb) grpc_byte_buffer_destroy(c->recv_bb);
  if (c->send_bb) grpc_byte_buffer_destroy(c->send_bb);
  grpc_call_unref(c->call);
  pthread_mutex_destroy(&c->mu);
  free(c);
}

void px_cli_call_ref(px_cli_call* c) {
  pthread_mutex_lock(&c->mu);
  c->refs++;
  pthread_mutex_unlock(&c->mu);
}

bool px_cli_call_try_ref(px_cli_call* c) {
  pthread_mutex_lock(&c->mu);
  bool ok = c->refs > 0;
  if (ok) c->refs++;
  pthread_mutex_unlock(&c->mu);
  return ok;
}

void px_cli_call_unref(px_cli_call* c) {
  pthread_mutex_lock(&c->mu);
  int left = --c->refs;
  pthread_mutex_unlock(&c->mu);
  if (left > 0) return;
  if (c->cbs && c->cbs->on_done) {
    char* d = grpc_slice_to_c_string(c->details);
    c->cbs->on_done(c, c->ctx, (int)c->status, d);
    gpr_free(d);
  }
  call_free(c);
}

static const px_cli_call_cbs no_cbs = {0};

px_cli_call* px_cli_call_start(px_rpc_channel* ch, const char* path, int64_t timeout_ms,
                                 bool wait_for_ready, const px_cli_call_cbs* cbs, void* ctx) {
  px_cli_call* c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->ch = ch;
  c->cbs = cbs ? cbs : &no_cbs;
  c->ctx = ctx;
  c->status = GRPC_STATUS_UNKNOWN;
  c->details = grpc_empty_slice();
  pthread_mutex_init(&c->mu, NULL);
  grpc_metadata_array_init(&c->init_md);
  grpc_metadata_array_init(&c->trail_md);
  c->t_start = (rpc_tag){TAG_START, c};
  c->t_status = (rpc_tag){TAG_STATUS, c};
  c->t_recv = (rpc_tag){TAG_RECV, c};
  c->t_send = (rpc_tag){TAG_SEND, c};
  void* reg = registered_method(ch, path);
  gpr_timespec deadline = rpc_deadline_ms(timeout_ms);
  if (reg)
    c->call = grpc_channel_create_registered_call(ch->channel, NULL, GRPC_PROPAGATE_DEFAULTS,
                                                  ch->cq, reg, deadline, NULL);
  else
    c->call = grpc_channel_create_call(ch->channel, NULL, GRPC_PROPAGATE_DEFAULTS, ch->cq,
                                       grpc_slice_from_static_string(path), NULL, deadline,
                                       NULL);
  pthread_mutex_lock(&ch->mu);
  c->next = ch->live;
  if (ch->live) ch->live->prev = c;
  ch->live = c;
  ch->nlive++;
  pthread_mutex_unlock(&ch->mu);

  /* the call itself (dropped with the status) + the status batch + the caller's */
  c->refs = 3;
  c->md_pending = true;
  c->md_flags = wait_for_ready ? GRPC_INITIAL_METADATA_WAIT_FOR_READY : 0;
  pthread_mutex_lock(&ch->mu);
  if (ch->has_auth) {
    c->md[c->nmd].key = grpc_slice_ref(ch->auth_md.key);
    c->md[c->nmd].value = grpc_slice_ref(ch->auth_md.value);
    c->nmd++;
  }
  if (ch->has_extra) {
    c->md[c->nmd].key = grpc_slice_ref(ch->extra_key);
    c->md[c->nmd].value = grpc_slice_ref(ch->extra_value);
    c->nmd++;
  }
  pthread_mutex_unlock(&ch->mu);
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
  grpc_call_error e = grpc_call_start_batch(c->call, ops, 2, &c->t_status, NULL);
  if (e != GRPC_CALL_OK) {
    /* Cannot happen with a fresh call; fail loudly rather than hang. */
    fprintf(stderr, "paramex rpc: cannot start call %s: %s\n", path, grpc_call_error_to_string(e));
    abort();
  }
  return c;
}

/* c->mu held: puts the pending initial metadata first in ops; returns the ops used (0/1).
 * The batch that carries it must be started before c->mu is released, so that no other
 * batch of the call overtakes it. */
static size_t take_initial_md(px_cli_call* c, grpc_op* op) {
  if (!c->md_pending) return 0;
  c->md_pending = false;
  op->op = GRPC_OP_SEND_INITIAL_METADATA;
  op->flags = c->md_flags;
  op->data.send_initial_metadata.count = c->nmd;
  op->data.send_initial_metadata.metadata = c->nmd ? c->md : NULL;
  return 1;
}

bool px_cli_call_send(px_cli_call* c, const px_out* out, bool last) {
  pthread_mutex_lock(&c->mu);
  if (c->status_done || c->sending || c->half_closed) {
    pthread_mutex_unlock(&c->mu);
    rpc_out_release(out);
    return false;
  }
  c->sending = true;
  c->half_closed = last;
  c->refs++;
  c->send_bb = rpc_out_buffer(out);
  grpc_op ops[3];
  memset(ops, 0, sizeof ops);
  const size_t md = take_initial_md(c, &ops[0]);
  size_t n = md;
  ops[n].op = GRPC_OP_SEND_MESSAGE;
  ops[n].data.send_message.send_message = c->send_bb;
  n++;
  if (last) ops[n++].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  bool ok = c->send_bb && grpc_call_start_batch(c->call, ops, n, &c->t_send, NULL) == GRPC_CALL_OK;
  grpc_byte_buffer* drop = NULL;
  if (!ok) {
    drop = c->send_bb; /* destroyed after unlocking: its release callback takes other locks */
    c->send_bb = NULL;
    c->sending = false;
    if (md) c->md_pending = true; /* the headers did not go: the next batch carries them */
  }
  pthread_mutex_unlock(&c->mu);
  if (drop) grpc_byte_buffer_destroy(drop);
  if (!ok) px_cli_call_unref(c);
  return ok;
}

bool px_cli_call_close_send(px_cli_call* c) {
  pthread_mutex_lock(&c->mu);
  if (c->status_done || c->sending || c->half_closed) {
    pthread_mutex_unlock(&c->mu);
    return false;
  }
  c->half_closed = true;
  c->sending = true;
  c->refs++;
  grpc_op ops[2];
  memset(ops, 0, sizeof ops);
  const size_t md = take_initial_md(c, &ops[0]);
  size_t n = md;
  ops[n++].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  bool ok = grpc_call_start_batch(c->call, ops, n, &c->t_send, NULL) == GRPC_CALL_OK;
  if (!ok) {
    c->sending = false;
    if (md) c->md_pending = true;
  }
  pthread_mutex_unlock(&c->mu);
  if (!ok) px_cli_call_unref(c);
  return ok;
}

bool px_cli_call_read(px_cli_call* c) {
  pthread_mutex_lock(&c->mu);
  if (c->status_done || c->reading) {
    pthread_mutex_unlock(&c->mu);
    return false;
  }
  c->reading = true;
  c->refs++;
  grpc_op op[2];
  memset(op, 0, sizeof op);
  if (take_initial_md(c, &op[0])) { /* a read before any send: the headers go first */
    c->refs++;
    if (grpc_call_start_batch(c->call, op, 1, &c->t_start, NULL) != GRPC_CALL_OK) {
      c->refs--;
      c->md_pending = true;
    }
    memset(op, 0, sizeof op);
  }
  op[0].op = GRPC_OP_RECV_MESSAGE;
  op[0].data.recv_message.recv_message = &c->recv_bb;
  bool ok = grpc_call_start_batch(c->call, op, 1, &c->t_recv, NULL) == GRPC_CALL_OK;
  if (!ok) c->reading = false;
  pthread_mutex_unlock(&c->mu);
  if (!ok) px_cli_call_unref(c);
  return ok;
}

void px_cli_call_cancel(px_cli_call* c) { grpc_call_cancel(c->call, NULL); }

/* ---- blocking unary ----------------------------------------------------------------- */

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
  int st = w.status;
  if (st == PX_ST_OK) {
    if (!w.resp) {
      st = PX_ST_INTERNAL;
      if (details && details_cap) snprintf(details, details_cap, "no response message");
    } else if (resp) {
      size_t n;
      const uint8_t* p = px_msg_flat(w.resp, &n);
      *resp = malloc(n ? n : 1);
      if (!p || !*resp) {
        free(*resp);
        *resp = NULL;
        st = PX_ST_RESOURCE_EXHAUSTED;
      } else {
        memcpy(*resp, p, n);
        if (resp_len) *resp_len = n;
      }
    }
  }
  px_msg_free(w.resp);
  pthread_mutex_destroy(&w.mu);
  pthread_cond_destroy(&w.cv);
  return st;
}
