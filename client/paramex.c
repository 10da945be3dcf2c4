/* libparamex: the client library behind client/include/paramex/paramex.h. */
#include "paramex/paramex.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "codec/codec.h"
#include "codec/diff.h"
#include "codec/frame.h"
#include "paramex.pb-c.h"
#include "rpc/rpc.h"
#include "util/util.h"
#include "wire/wire.h"

#define M_JOIN "/paramex.v1.ParameterExchange/Join"
#define M_DECLARE "/paramex.v1.ParameterExchange/Declare"
#define M_PUSH "/paramex.v1.ParameterExchange/Push"
#define M_PULL "/paramex.v1.ParameterExchange/Pull"

/* Initial values travel in Declare calls of at most this many bytes. */
#define DECLARE_PIECE (2u << 20)

struct pmx_tensor {
  pmx_client* client;
  uint32_t id;
  char name[256];
  pmx_dtype dtype;
  uint64_t numel;
  size_t elem;
  uint32_t chunk_elems, nchunks;
  /* Which version the buffer last pulled into holds (guarded by the client mutex). */
  const void* have_dst;
  uint64_t have_version;
  int have_view;
  bool have_valid;
  /* push compression (pmx_tensor_set_push_compression) */
  pmx_push_mode push_mode;
  size_t push_min_bytes;
};

struct pmx_client {
  px_rpc_channel* ch;
  int64_t timeout_ms, connect_timeout_ms;
  bool compressed_pulls;
  pthread_mutex_t mu;
  uint32_t worker_id;
  uint64_t incarnation;
  bool joined;
  uint32_t rank, world;     /* for rejoining after a server restart */
  char server_id[96];
  int64_t retry_timeout_ms;
  /* heartbeats keep the lease (JoinResponse.lease_ms) while the worker computes */
  pthread_t hb_thread;
  bool hb_started, hb_stop;
  uint32_t lease_ms;
  pthread_cond_t hb_cv;
  pmx_tensor** tensors;
  size_t ntensors, cap;
  _Atomic uint64_t push_chunks, push_raw, push_wire;
  _Atomic uint64_t pull_chunks, pull_raw, pull_wire, pull_unchanged, checksum_failures;
};

/* ---- errors ------------------------------------------------------------------------------ */

static _Thread_local char tl_error[512];

static pmx_status fail(pmx_status st, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
static pmx_status fail(pmx_status st, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(tl_error, sizeof tl_error, fmt, ap);
  va_end(ap);
  return st;
}

const char* pmx_last_error(void) { return tl_error; }
const char* pmx_version(void) { return "0.1.0"; }

const char* pmx_strerror(pmx_status s) {
  switch (s) {
    case PMX_OK: return "ok";
    case PMX_ERR_CANCELLED: return "cancelled";
    case PMX_ERR_UNKNOWN: return "unknown error";
    case PMX_ERR_INVALID_ARGUMENT: return "invalid argument";
    case PMX_ERR_DEADLINE_EXCEEDED: return "deadline exceeded";
    case PMX_ERR_NOT_FOUND: return "not found";
    case PMX_ERR_ALREADY_EXISTS: return "already exists";
    case PMX_ERR_PERMISSION_DENIED: return "permission denied";
    case PMX_ERR_RESOURCE_EXHAUSTED: return "resource exhausted";
    case PMX_ERR_FAILED_PRECONDITION: return "failed precondition";
    case PMX_ERR_ABORTED: return "aborted";
    case PMX_ERR_OUT_OF_RANGE: return "out of range";
    case PMX_ERR_UNIMPLEMENTED: return "unimplemented";
    case PMX_ERR_INTERNAL: return "internal error";
    case PMX_ERR_UNAVAILABLE: return "server unavailable";
    case PMX_ERR_DATA_LOSS: return "data loss (checksum mismatch)";
    case PMX_ERR_UNAUTHENTICATED: return "unauthenticated";
    case PMX_ERR_NO_MEMORY: return "out of memory";
    case PMX_ERR_PROTOCOL: return "protocol error";
  }
  return "unknown status";
}

static pmx_status from_rpc(int st) {
  return st >= 0 && st <= PX_ST_UNAUTHENTICATED ? (pmx_status)st : PMX_ERR_UNKNOWN;
}

/* ---- client --------------------------------------------------------------------------------- */

pmx_status pmx_connect(const char* addr, const pmx_options* opts, pmx_client** out) {
  if (!addr || !*addr || !out) return fail(PMX_ERR_INVALID_ARGUMENT, "pmx_connect: no address");
  pmx_client* c = calloc(1, sizeof *c);
  if (!c) return fail(PMX_ERR_NO_MEMORY, "pmx_connect: out of memory");
  c->timeout_ms = opts && opts->timeout_ms > 0 ? opts->timeout_ms : 60000;
  c->connect_timeout_ms = opts && opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : 30000;
  c->retry_timeout_ms = opts && opts->retry_timeout_ms > 0 ? opts->retry_timeout_ms : 120000;
  pthread_mutex_init(&c->mu, NULL);
  pthread_condattr_t cattr;
  pthread_condattr_init(&cattr);
  pthread_condattr_setclock(&cattr, CLOCK_MONOTONIC);
  pthread_cond_init(&c->hb_cv, &cattr);
  pthread_condattr_destroy(&cattr);
  char err[256] = "";
  px_rpc_channel_opts co = {0};
  char *ca = NULL, *cert = NULL, *key = NULL, *token = NULL;
  bool ok = true;
#define OPT(field, env) (opts && opts->field ? opts->field : getenv(env))
  const char* ca_file = OPT(tls_ca_file, "PMX_TLS_CA");
  const char* cert_file = OPT(tls_cert_file, "PMX_TLS_CERT");
  const char* key_file = OPT(tls_key_file, "PMX_TLS_KEY");
  const char* token_file = OPT(token_file, "PMX_TOKEN_FILE");
  co.tls_server_name = OPT(tls_server_name, "PMX_TLS_SERVER_NAME");
  co.token = OPT(token, "PMX_TOKEN");
#undef OPT
  if (ca_file && *ca_file) {
    ok = (ca = px_read_file(ca_file, 1u << 20, NULL, err, sizeof err)) != NULL;
    if (ok && ((cert_file && *cert_file) != (key_file && *key_file))) {
      snprintf(err, sizeof err, "a client certificate needs both PMX_TLS_CERT and PMX_TLS_KEY");
      ok = false;
    }
    if (ok && cert_file && *cert_file)
      ok = (cert = px_read_file(cert_file, 1u << 20, NULL, err, sizeof err)) &&
           (key = px_read_file(key_file, 1u << 20, NULL, err, sizeof err));
    co.tls_ca_pem = ca;
    co.tls_cert_pem = cert;
    co.tls_key_pem = key;
  } else if (cert_file && *cert_file) {
    snprintf(err, sizeof err, "a client certificate needs a CA (tls_ca_file or PMX_TLS_CA)");
    ok = false;
  }
  if (ok && !(co.token && *co.token) && token_file && *token_file) {
    ok = (token = px_read_token(token_file, err, sizeof err)) != NULL;
    co.token = token;
  }
  if (co.token && !*co.token) co.token = NULL;
  int compression = opts ? opts->compression : PMX_COMPRESSION_AUTO;
  if (ok && (compression < PMX_COMPRESSION_AUTO || compression > PMX_COMPRESSION_OFF)) {
    snprintf(err, sizeof err, "compression must be PMX_COMPRESSION_AUTO, _ON or _OFF, not %d",
             compression);
    ok = false;
  }
  const char* cenv = getenv("PMX_PULL_COMPRESSION");
  if (ok && cenv && *cenv) {
    if (strcmp(cenv, "auto") == 0) compression = PMX_COMPRESSION_AUTO;
    else if (strcmp(cenv, "on") == 0) compression = PMX_COMPRESSION_ON;
    else if (strcmp(cenv, "off") == 0) compression = PMX_COMPRESSION_OFF;
    else {
      snprintf(err, sizeof err, "PMX_PULL_COMPRESSION must be auto, on or off, not '%.40s'", cenv);
      ok = false;
    }
  }
  if (opts && opts->no_compression) compression = PMX_COMPRESSION_OFF;
  c->compressed_pulls = compression == PMX_COMPRESSION_ON ||
                        (compression == PMX_COMPRESSION_AUTO && !px_target_is_local(addr));
  const char* menv = getenv("PMX_MALLOC_TUNE");
  if (ok && !(opts && opts->no_malloc_tuning) && !(menv && strcmp(menv, "0") == 0))
    px_tune_malloc_once();
  if (ok) {
    px_rpc_init();
    c->ch = px_rpc_channel_create_ex(addr, &co, err, sizeof err);
    if (!c->ch) px_rpc_shutdown();
  }
  free(ca);
  free(cert);
  px_free_secret(key);
  px_free_secret(token);
  if (!ok || !c->ch) {
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->hb_cv);
    free(c);
    return fail(PMX_ERR_INVALID_ARGUMENT, "pmx_connect: %s", err);
  }
  *out = c;
  return PMX_OK;
}

void pmx_client_destroy(pmx_client* c) {
  if (!c) return;
  if (c->hb_started) {
    pthread_mutex_lock(&c->mu);
    c->hb_stop = true;
    pthread_cond_broadcast(&c->hb_cv);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->hb_thread, NULL);
  }
  pthread_cond_destroy(&c->hb_cv);
  px_rpc_channel_destroy(c->ch);
  for (size_t i = 0; i < c->ntensors; i++) free(c->tensors[i]);
  free(c->tensors);
  pthread_mutex_destroy(&c->mu);
  free(c);
  px_rpc_shutdown();
}

void pmx_client_get_stats(pmx_client* c, pmx_client_stats* s) {
  s->push_chunks = atomic_load(&c->push_chunks);
  s->push_raw_bytes = atomic_load(&c->push_raw);
  s->push_wire_bytes = atomic_load(&c->push_wire);
  s->pull_chunks = atomic_load(&c->pull_chunks);
  s->pull_raw_bytes = atomic_load(&c->pull_raw);
  s->pull_wire_bytes = atomic_load(&c->pull_wire);
  s->pull_unchanged_chunks = atomic_load(&c->pull_unchanged);
  s->checksum_failures = atomic_load(&c->checksum_failures);
  s->compressed_pulls = c->compressed_pulls;
}

/* Packs m, runs a unary call, returns the status; *resp is malloc'd on OK. */
static pmx_status unary(pmx_client* c, const char* method, const ProtobufCMessage* m,
                        int64_t timeout_ms, bool wait_ready, uint8_t** resp, size_t* resp_len) {
  size_t n = protobuf_c_message_get_packed_size(m);
  uint8_t* buf = malloc(n ? n : 1);
  if (!buf) return fail(PMX_ERR_NO_MEMORY, "%s: out of memory", method);
  protobuf_c_message_pack(m, buf);
  char details[256];
  int st = px_rpc_unary(c->ch, method, buf, n, timeout_ms, wait_ready, resp, resp_len, details,
                         sizeof details);
  free(buf);
  if (st != PX_ST_OK)
    return fail(from_rpc(st), "%s: %s: %s", strrchr(method, '/') + 1, px_status_name(st),
                details);
  return PMX_OK;
}

/* Sends a Heartbeat every lease/3 until the client is destroyed. Failures are ignored: a
 * push or pull reports a real problem; a missed lease is what the server acts on. */
static void* heartbeat_thread(void* arg) {
  pmx_client* c = arg;
  pthread_mutex_lock(&c->mu);
  while (!c->hb_stop) {
    uint32_t period = c->lease_ms / 3 ? c->lease_ms / 3 : 1;
    struct timespec ts;
    px_deadline_ts(&ts, CLOCK_MONOTONIC, period);
    pthread_cond_timedwait(&c->hb_cv, &c->mu, &ts);
    if (c->hb_stop) break;
    Paramex__V1__HeartbeatRequest req = PARAMEX__V1__HEARTBEAT_REQUEST__INIT;
    req.worker_id = c->worker_id;
    req.incarnation = c->incarnation;
    pthread_mutex_unlock(&c->mu);
    uint8_t buf[32];
    size_t n = paramex__v1__heartbeat_request__pack(&req, buf);
    char details[128];
    px_rpc_unary(c->ch, "/paramex.v1.ParameterExchange/Heartbeat", buf, n, period, false, NULL,
                  NULL, details, sizeof details);
    pthread_mutex_lock(&c->mu);
  }
  pthread_mutex_unlock(&c->mu);
  return NULL;
}

pmx_status pmx_join(pmx_client* c, uint32_t rank, uint32_t world_size, pmx_join_info* info) {
  if (!c) return fail(PMX_ERR_INVALID_ARGUMENT, "pmx_join: no client");
  Paramex__V1__JoinRequest req = PARAMEX__V1__JOIN_REQUEST__INIT;
  req.rank = rank;
  req.world_size = world_size;
  char name[128];
  char host[64] = "?";
  gethostname(host, sizeof host - 1);
  snprintf(name, sizeof name, "%s:%d", host, (int)getpid());
  req.name = name;
  uint8_t* resp = NULL;
  size_t len = 0;
  pmx_status st = unary(c, M_JOIN, &req.base, c->connect_timeout_ms, true, &resp, &len);
  if (st != PMX_OK) return st;
  Paramex__V1__JoinResponse* r = paramex__v1__join_response__unpack(NULL, len, resp);
  free(resp);
  if (!r) return fail(PMX_ERR_PROTOCOL, "Join: malformed JoinResponse");
  pthread_mutex_lock(&c->mu);
  c->worker_id = r->worker_id;
  c->incarnation = r->incarnation;
  c->joined = true;
  c->rank = rank;
  c->world = world_size;
  px_strlcpy(c->server_id, r->server_id ? r->server_id : "", sizeof c->server_id);
  c->lease_ms = r->lease_ms;
  bool start_hb = r->lease_ms > 0 && !c->hb_started;
  if (start_hb) c->hb_started = pthread_create(&c->hb_thread, NULL, heartbeat_thread, c) == 0;
  pthread_mutex_unlock(&c->mu);
  /* Pushes and pulls name the server they joined: a restarted server answers ABORTED. */
  if (r->server_id && *r->server_id) px_rpc_channel_set_header(c->ch, "pmx-server-id", r->server_id);
  if (info) {
    info->worker_id = r->worker_id;
    info->incarnation = r->incarnation;
    info->world_size = r->world_size;
  }
  paramex__v1__join_response__free_unpacked(r, NULL);
  return PMX_OK;
}

pmx_status pmx_declare(pmx_client* c, const char* name, pmx_dtype dtype, const uint64_t* shape,
                       size_t ndim, const void* values, const pmx_init* init, pmx_tensor** out) {
  if (!c || !name || !out || (ndim && !shape))
    return fail(PMX_ERR_INVALID_ARGUMENT, "pmx_declare: missing argument");
  size_t es = px_dtype_size((int)dtype);
  if (es == 0) return fail(PMX_ERR_INVALID_ARGUMENT, "pmx_declare: unknown dtype %d", (int)dtype);
  uint64_t numel = 1;
  for (size_t i = 0; i < ndim; i++) {
    if (shape[i] != 0 && numel > UINT64_MAX / shape[i])
      return fail(PMX_ERR_INVALID_ARGUMENT, "pmx_declare: shape of '%s' overflows", name);
    numel *= shape[i];
  }
  Paramex__V1__DeclareRequest req = PARAMEX__V1__DECLARE_REQUEST__INIT;
  Paramex__V1__Initializer ini = PARAMEX__V1__INITIALIZER__INIT;
  req.name = (char*)name;
  req.dtype = (Paramex__V1__DType)dtype;
  req.n_shape = ndim;
  req.shape = (uint64_t*)shape;
  pthread_mutex_lock(&c->mu);
  req.worker_id = c->worker_id;
  req.incarnation = c->incarnation;
  pthread_mutex_unlock(&c->mu);
  if (!values && init) {
    ini.kind = (Paramex__V1__Initializer__Kind)init->kind;
    ini.a = init->a;
    ini.b = init->b;
    ini.seed = init->seed;
    req.initializer = &ini;
  }
  uint64_t total = numel * es, sent = 0;
  if (values) {
    req.values.data = (uint8_t*)values;
    req.values.len = total < DECLARE_PIECE ? total : DECLARE_PIECE - DECLARE_PIECE % es;
  }
  uint8_t* resp = NULL;
  size_t len = 0;
  pmx_status st = unary(c, M_DECLARE, &req.base, c->timeout_ms, false, &resp, &len);
  if (st != PMX_OK) return st;
  Paramex__V1__DeclareResponse* r = paramex__v1__declare_response__unpack(NULL, len, resp);
  free(resp);
  if (!r) return fail(PMX_ERR_PROTOCOL, "Declare: malformed DeclareResponse");
  if (r->chunk_elems == 0 || r->num_chunks != (numel + r->chunk_elems - 1) / r->chunk_elems) {
    paramex__v1__declare_response__free_unpacked(r, NULL);
    return fail(PMX_ERR_PROTOCOL, "Declare: inconsistent chunking in DeclareResponse");
  }
  pmx_tensor* t = calloc(1, sizeof *t);
  if (!t) {
    paramex__v1__declare_response__free_unpacked(r, NULL);
    return fail(PMX_ERR_NO_MEMORY, "pmx_declare: out of memory");
  }
  t->client = c;
  t->id = r->tensor_id;
  px_strlcpy(t->name, name, sizeof t->name);
  t->dtype = dtype;
  t->numel = numel;
  t->elem = es;
  t->chunk_elems = r->chunk_elems;
  t->nchunks = r->num_chunks;
  bool created = r->created;
  paramex__v1__declare_response__free_unpacked(r, NULL);

  /* The creator sends the rest of the initial values in further pieces. */
  sent = values ? req.values.len : total;
  while (created && sent < total) {
    uint64_t piece = total - sent < DECLARE_PIECE ? total - sent : DECLARE_PIECE - DECLARE_PIECE % es;
    req.values.data = (uint8_t*)values + sent;
    req.values.len = piece;
    req.values_offset = sent / es;
    st = unary(c, M_DECLARE, &req.base, c->timeout_ms, false, &resp, &len);
    if (st != PMX_OK) {
      free(t);
      return st;
    }
    free(resp);
    sent += piece;
  }
  pthread_mutex_lock(&c->mu);
  if (c->ntensors == c->cap) {
    size_t ncap = c->cap ? c->cap * 2 : 16;
    pmx_tensor** n = realloc(c->tensors, ncap * sizeof *n);
    if (!n) {
      pthread_mutex_unlock(&c->mu);
      free(t);
      return fail(PMX_ERR_NO_MEMORY, "pmx_declare: out of memory");
    }
    c->tensors = n;
    c->cap = ncap;
  }
  c->tensors[c->ntensors++] = t;
  pthread_mutex_unlock(&c->mu);
  *out = t;
  return PMX_OK;
}

pmx_status pmx_tensor_set_push_compression(pmx_tensor* t, pmx_push_mode mode, size_t min_bytes) {
  if (!t || mode < PMX_PUSH_RAW || mode > PMX_PUSH_BF16_ZSTD)
    return fail(PMX_ERR_INVALID_ARGUMENT, "pmx_tensor_set_push_compression: bad mode");
  if ((mode & PMX_PUSH_BF16) && t->dtype != PMX_F32)
    return fail(PMX_ERR_INVALID_ARGUMENT, "pmx_tensor_set_push_compression: '%s' is not f32",
                t->name);
  t->push_mode = mode;
  t->push_min_bytes = min_bytes;
  return PMX_OK;
}

uint64_t pmx_tensor_numel(const pmx_tensor* t) { return t->numel; }
size_t pmx_tensor_bytes(const pmx_tensor* t) { return (size_t)(t->numel * t->elem); }
uint32_t pmx_tensor_id(const pmx_tensor* t) { return t->id; }
uint32_t pmx_tensor_num_chunks(const pmx_tensor* t) { return t->nchunks; }

/* ---- operations ------------------------------------------------------------------------------ */

typedef enum { OP_PUSH, OP_PULL } op_kind;

struct pmx_op {
  op_kind kind;
  pmx_client* client;
  px_cli_call* call;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool done;
  int slices_live; /* zero-copy gradient slices gRPC still references */
  pmx_status status;
  char error[512];

  size_t n;
  pmx_tensor** tensors;
  void** bufs; /* grads (push) or dst (pull) */
  uint64_t step, min_version;
  uint64_t* versions_out;
  uint32_t ti, ci; /* cursor */
  uint32_t worker_id;
  uint64_t incarnation;
  /* push */
  uint32_t accepted, duplicate;
  /* pull */
  uint64_t* have;   /* [n] the have_version sent, or UINT64_MAX for none */
  uint64_t* vmin;   /* [n] lowest chunk version received */
  uint64_t* vmax;
  int view;         /* 0: each tensor's dtype; 1: bf16 view of f32 tensors */
  bool* bad;        /* [n] a chunk failed its checksum: pull the tensor again, in full */
  size_t* orig;     /* [n] index in the caller's arrays (healing pulls a subset) */
  int heal_rounds;
  char server_id[96]; /* the server this operation was started against */
};

static void op_set_error(pmx_op* op, pmx_status st, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void op_set_error(pmx_op* op, pmx_status st, const char* fmt, ...) {
  pthread_mutex_lock(&op->mu);
  if (op->status == PMX_OK) {
    op->status = st;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(op->error, sizeof op->error, fmt, ap);
    va_end(ap);
  }
  pthread_mutex_unlock(&op->mu);
}

static void op_free(pmx_op* op) {
  pthread_mutex_destroy(&op->mu);
  pthread_cond_destroy(&op->cv);
  free(op->tensors);
  free(op->bufs);
  free(op->have);
  free(op->vmin);
  free(op->vmax);
  free(op->bad);
  free(op->orig);
  free(op);
}

static pmx_op* op_new(pmx_client* c, op_kind kind, size_t n, pmx_tensor* const* tensors,
                      const void* const* bufs) {
  pmx_op* op = calloc(1, sizeof *op);
  if (!op) return NULL;
  op->kind = kind;
  op->client = c;
  op->n = n;
  pthread_mutex_init(&op->mu, NULL);
  pthread_cond_init(&op->cv, NULL);
  op->tensors = malloc(n * sizeof *op->tensors);
  op->bufs = malloc(n * sizeof *op->bufs);
  if (!op->tensors || !op->bufs) {
    op_free(op);
    return NULL;
  }
  memcpy(op->tensors, tensors, n * sizeof *tensors);
  memcpy(op->bufs, bufs, n * sizeof *bufs);
  pthread_mutex_lock(&c->mu);
  op->worker_id = c->worker_id;
  op->incarnation = c->incarnation;
  memcpy(op->server_id, c->server_id, sizeof op->server_id);
  pthread_mutex_unlock(&c->mu);
  return op;
}

static void op_check_done(pmx_op* op) {
  /* caller holds op->mu */
  if (op->done && op->slices_live == 0) pthread_cond_broadcast(&op->cv);
}

static void slice_released(void* ctx) {
  pmx_op* op = ctx;
  pthread_mutex_lock(&op->mu);
  op->slices_live--;
  op_check_done(op);
  pthread_mutex_unlock(&op->mu);
}

static pmx_status check_args(pmx_client* c, size_t n, pmx_tensor* const* tensors,
                             const void* const* bufs, const char* what) {
  if (!c || n == 0 || !tensors || !bufs)
    return fail(PMX_ERR_INVALID_ARGUMENT, "%s: no tensors given", what);
  for (size_t i = 0; i < n; i++) {
    if (!tensors[i] || tensors[i]->client != c)
      return fail(PMX_ERR_INVALID_ARGUMENT, "%s: tensor %zu does not belong to this client", what, i);
    if (!bufs[i]) return fail(PMX_ERR_INVALID_ARGUMENT, "%s: buffer %zu is NULL", what, i);
  }
  return PMX_OK;
}

/* ---- push ---- */

typedef struct push_buf {
  pmx_op* op;
  uint8_t* data;
} push_buf;

/* Release of an encoded push payload: frees it, then counts the slice as released. */
static void push_buf_released(void* ctx) {
  push_buf* pb = ctx;
  pmx_op* op = pb->op;
  free(pb->data);
  free(pb);
  pthread_mutex_lock(&op->mu);
  op->slices_live--;
  op_check_done(op);
  pthread_mutex_unlock(&op->mu);
}

/* Sends the chunk at the cursor; the last one also half-closes. */
static void push_send_next(pmx_op* op) {
  pmx_tensor* t = op->tensors[op->ti];
  uint64_t first = (uint64_t)op->ci * t->chunk_elems;
  uint64_t elems = t->numel - first < t->chunk_elems ? t->numel - first : t->chunk_elems;
  size_t bytes = (size_t)(elems * t->elem);
  const uint8_t* body = (const uint8_t*)op->bufs[op->ti] + first * t->elem;
  px_chunk h = {0};
  h.worker_id = op->worker_id;
  h.incarnation = op->incarnation;
  h.step = op->step;
  h.tensor_id = t->id;
  h.chunk = op->ci;
  h.dtype = (uint32_t)t->dtype;
  h.encoding = PX_ENC_RAW;
  size_t body_len = bytes, raw_len = bytes;
  push_buf* pb = NULL;
  pmx_push_mode mode = t->push_mode;
  if (mode != PMX_PUSH_RAW && pmx_tensor_bytes(t) >= t->push_min_bytes) {
    /* Encode into a buffer of our own that lives until gRPC releases it. */
    size_t n = (size_t)elems;
    int w = (int)t->elem;
    const uint8_t* src = body;
    uint8_t* cast = NULL;
    if (mode & PMX_PUSH_BF16) {
      cast = malloc(n * 2);
      if (cast) {
        px_f32_to_bf16_n((const float*)body, (uint16_t*)cast, n);
        src = cast;
        w = 2;
        h.dtype = PMX_BF16;
      }
    }
    raw_len = n * (size_t)w;
    uint8_t* z = NULL;
    size_t zl = 0;
    if (mode & PMX_PUSH_ZSTD) {
      size_t cap = px_zstd_bound(raw_len);
      z = malloc(cap);
      zl = z ? px_encode_shuffle(src, n, w, 1, z, cap) : 0;
      if (zl == 0 || zl * 100 >= raw_len * 95) {
        free(z);
        z = NULL;
      }
    }
    pb = malloc(sizeof *pb);
    if (pb && (z || src != body)) {
      pb->op = op;
      h.checksum = px_checksum(src, raw_len);
      if (z) {
        free(cast);
        pb->data = z;
        body_len = zl;
        h.encoding = PX_ENC_SHUFFLE_ZSTD;
      } else {
        pb->data = cast;
        body_len = raw_len;
      }
      body = pb->data;
    } else {
      free(pb);
      free(z);
      free(cast);
      pb = NULL;
      h.dtype = (uint32_t)t->dtype;
      raw_len = bytes;
    }
  }
  h.raw_len = (uint32_t)raw_len;
  if (!pb) h.checksum = px_checksum(body, bytes);
  uint8_t head[PX_CHUNK_HDR_MAX];
  size_t hl = px_chunk_encode_header(PX_CHUNK_PUSH, &h, body_len, head, sizeof head);
  pmx_client* c = op->client;
  atomic_fetch_add(&c->push_chunks, 1);
  atomic_fetch_add(&c->push_raw, bytes);
  atomic_fetch_add(&c->push_wire, hl + body_len);
  if (++op->ci == t->nchunks) {
    op->ci = 0;
    op->ti++;
  }
  bool last = op->ti == op->n;
  pthread_mutex_lock(&op->mu);
  op->slices_live++;
  pthread_mutex_unlock(&op->mu);
  px_out out = {head, hl, body, body_len, pb ? push_buf_released : slice_released,
                 pb ? (void*)pb : (void*)op};
  px_cli_call_send(op->call, &out, last);
}

static void push_on_sent(px_cli_call* call, void* ctx, bool ok) {
  (void)call;
  pmx_op* op = ctx;
  if (ok && op->ti < op->n) push_send_next(op);
  /* After the last send (or a failure) the status tells the rest. */
}

static void push_on_message(px_cli_call* call, void* ctx, px_msg* m) {
  (void)call;
  pmx_op* op = ctx;
  if (!m) return;
  size_t len;
  const uint8_t* p = px_msg_flat(m, &len);
  Paramex__V1__PushResponse* r = p ? paramex__v1__push_response__unpack(NULL, len, p) : NULL;
  if (!r) {
    op_set_error(op, PMX_ERR_PROTOCOL, "Push: malformed PushResponse");
  } else {
    op->accepted = r->accepted;
    op->duplicate = r->duplicate;
    paramex__v1__push_response__free_unpacked(r, NULL);
  }
  px_msg_free(m);
}

static void op_on_done(px_cli_call* call, void* ctx, int status, const char* details) {
  (void)call;
  pmx_op* op = ctx;
  if (status != PX_ST_OK)
    op_set_error(op, from_rpc(status), "%s: %s: %s", op->kind == OP_PUSH ? "Push" : "Pull",
                 px_status_name(status), details);
  pthread_mutex_lock(&op->mu);
  op->done = true;
  op_check_done(op);
  pthread_mutex_unlock(&op->mu);
}

static const px_cli_call_cbs push_cbs = {push_on_message, push_on_sent, op_on_done};

/* Starts (or restarts) the Push call of op from its first chunk. */
static pmx_status push_start(pmx_op* op) {
  pmx_client* c = op->client;
  op->ti = op->ci = 0;
  op->accepted = op->duplicate = 0;
  pthread_mutex_lock(&c->mu);
  op->worker_id = c->worker_id;
  op->incarnation = c->incarnation;
  pthread_mutex_unlock(&c->mu);
  pthread_mutex_lock(&op->mu);
  op->done = false;
  op->status = PMX_OK;
  pthread_mutex_unlock(&op->mu);
  op->call = px_cli_call_start(c->ch, M_PUSH, c->timeout_ms, false, &push_cbs, op);
  if (!op->call) return fail(PMX_ERR_NO_MEMORY, "pmx_push: out of memory");
  px_cli_call_read(op->call); /* the PushResponse, once the stream is closed */
  push_send_next(op);
  px_cli_call_unref(op->call);
  return PMX_OK;
}

pmx_status pmx_push_async(pmx_client* c, uint64_t step, size_t n, pmx_tensor* const* tensors,
                          const void* const* grads, pmx_op** out) {
  pmx_status st = check_args(c, n, tensors, grads, "pmx_push");
  if (st != PMX_OK) return st;
  if (!out) return fail(PMX_ERR_INVALID_ARGUMENT, "pmx_push: no op pointer");
  pmx_op* op = op_new(c, OP_PUSH, n, tensors, grads);
  if (!op) return fail(PMX_ERR_NO_MEMORY, "pmx_push: out of memory");
  op->step = step;
  st = push_start(op);
  if (st != PMX_OK) {
    op_free(op);
    return st;
  }
  *out = op;
  return PMX_OK;
}

pmx_status pmx_push(pmx_client* c, uint64_t step, size_t n, pmx_tensor* const* tensors,
                    const void* const* grads) {
  pmx_op* op;
  pmx_status st = pmx_push_async(c, step, n, tensors, grads, &op);
  return st == PMX_OK ? pmx_op_wait(op) : st;
}

static void op_wait_call(pmx_op* op);

/* Cancels the op's call if it is still running. op_on_done takes op->mu, so while op->mu
 * is held and done is false the call's memory is valid; try_ref refuses a call whose last
 * reference is already going. Lock order op->mu -> call mutex: only for pull ops, whose
 * sends have no release callback (a push's release callbacks take op->mu and may run
 * under the call's mutex). */
static void op_cancel(pmx_op* op) {
  pthread_mutex_lock(&op->mu);
  px_cli_call* call = !op->done && op->call && px_cli_call_try_ref(op->call) ? op->call : NULL;
  pthread_mutex_unlock(&op->mu);
  if (!call) return;
  px_cli_call_cancel(call);
  px_cli_call_unref(call);
}

pmx_status pmx_push_pull(pmx_client* c, uint64_t step, size_t n, pmx_tensor* const* tensors,
                         const void* const* grads, void* const* dst, uint64_t* versions) {
  pmx_op* pull = NULL;
  pmx_status st = pmx_pull_async(c, n, tensors, dst, step + 1, versions, &pull);
  if (st != PMX_OK) return st;
  st = pmx_push(c, step, n, tensors, grads);
  if (st != PMX_OK) {
    /* The step may never complete now: stop the parked pull and report the push's error
     * at once. Not pmx_op_wait: its retries (a pull that failed UNAVAILABLE) would wait
     * for a version this push did not make, and its rejoin would repeat the push's. The
     * buffers stay marked as holding nothing certain (a later pull sends them in full). */
    op_cancel(pull);
    op_wait_call(pull);
    op_free(pull);
    return st;
  }
  return pmx_op_wait(pull);
}

/* ---- pull ---- */

/* Element width of tensor t in the op's view. */
static int view_width(const pmx_op* op, const pmx_tensor* t) {
  return op->view == 1 && t->dtype == PMX_F32 ? 2 : (int)t->elem;
}

static void pull_on_message(px_cli_call* call, void* ctx, px_msg* m) {
  pmx_op* op = ctx;
  if (!m) return; /* end of stream: the status follows */
  size_t nseg;
  const px_iov* seg = px_msg_segments(m, &nseg);
  size_t wire = px_msg_len(m);
  px_chunk h;
  char err[200];
  pmx_client* c = op->client;
  if (px_chunk_parse(PX_CHUNK_PULL, seg, nseg, &h, err, sizeof err) != 0) {
    op_set_error(op, PMX_ERR_PROTOCOL, "Pull: %s", err);
    goto cancel;
  }
  if (op->ti >= op->n) {
    op_set_error(op, PMX_ERR_PROTOCOL, "Pull: more chunks than requested");
    goto cancel;
  }
  pmx_tensor* t = op->tensors[op->ti];
  const int w = view_width(op, t);
  const uint32_t want_dtype = w == 2 && t->dtype == PMX_F32 ? PMX_BF16 : (uint32_t)t->dtype;
  uint64_t first = (uint64_t)op->ci * t->chunk_elems;
  uint64_t elems = t->numel - first < t->chunk_elems ? t->numel - first : t->chunk_elems;
  uint8_t* dst = (uint8_t*)op->bufs[op->ti] + first * (uint64_t)w;
  if (h.tensor_id != t->id || h.chunk != op->ci || h.dtype != want_dtype ||
      h.version < op->min_version) {
    op_set_error(op, PMX_ERR_PROTOCOL,
                 "Pull: unexpected chunk (tensor %u chunk %u version %llu dtype %u), wanted "
                 "tensor %u chunk %u", h.tensor_id, h.chunk, (unsigned long long)h.version,
                 h.dtype, t->id, op->ci);
    goto cancel;
  }
  if ((h.encoding == PX_ENC_UNCHANGED || h.encoding == PX_ENC_DELTA_ZSTD) &&
      (op->have[op->ti] == UINT64_MAX || h.base_version != op->have[op->ti])) {
    op_set_error(op, PMX_ERR_PROTOCOL,
                 "Pull: tensor '%s' chunk %u: %s against version %llu, but we hold %llu",
                 t->name, h.chunk, px_encoding_name(h.encoding),
                 (unsigned long long)h.base_version, (unsigned long long)op->have[op->ti]);
    goto cancel;
  }
  px_decode_result r = px_chunk_decode(&h, seg, nseg, dst, (size_t)elems, w, err, sizeof err);
  if (r != PX_DECODE_OK) {
    /* A frame that fails to decode or to check (corrupted on the way) leaves dst
     * untouched; this tensor is pulled again in full once the stream ends. */
    atomic_fetch_add(&c->checksum_failures, 1);
    op->bad[op->ti] = true;
  }
  if (h.encoding == PX_ENC_UNCHANGED) atomic_fetch_add(&c->pull_unchanged, 1);
  if (h.version < op->vmin[op->ti]) op->vmin[op->ti] = h.version;
  if (h.version > op->vmax[op->ti]) op->vmax[op->ti] = h.version;
  atomic_fetch_add(&c->pull_chunks, 1);
  atomic_fetch_add(&c->pull_raw, elems * (uint64_t)w);
  atomic_fetch_add(&c->pull_wire, wire);
  if (++op->ci == t->nchunks) {
    op->ci = 0;
    op->ti++;
  }
  px_msg_free(m);
  px_cli_call_read(call);
  return;
cancel:
  px_msg_free(m);
  px_cli_call_cancel(call);
}

static const px_cli_call_cbs pull_cbs = {pull_on_message, NULL, op_on_done};

/* Starts the Pull call of op (its tensors, bufs, view, min_version and have set). */
static pmx_status pull_start(pmx_op* op) {
  pmx_client* c = op->client;
  size_t n = op->n;
  uint32_t* ids = malloc(n * sizeof *ids);
  if (!ids) return fail(PMX_ERR_NO_MEMORY, "pmx_pull: out of memory");
  bool any_have = false;
  for (size_t i = 0; i < n; i++) {
    ids[i] = op->tensors[i]->id;
    op->vmin[i] = UINT64_MAX;
    op->vmax[i] = 0;
    op->bad[i] = false;
    any_have |= op->have[i] != UINT64_MAX;
  }
  op->ti = op->ci = 0;
  Paramex__V1__PullRequest req = PARAMEX__V1__PULL_REQUEST__INIT;
  Paramex__V1__Encoding accept[2] = {PARAMEX__V1__ENCODING__ENCODING_DELTA_ZSTD,
                                     PARAMEX__V1__ENCODING__ENCODING_SHUFFLE_ZSTD};
  req.worker_id = op->worker_id;
  req.n_tensor_ids = n;
  req.tensor_ids = ids;
  if (any_have) {
    req.n_have_versions = n;
    req.have_versions = op->have;
  }
  req.min_version = op->min_version;
  req.view = op->view == 1 ? PARAMEX__V1__DTYPE__DTYPE_BF16 : PARAMEX__V1__DTYPE__DTYPE_UNSPECIFIED;
  if (c->compressed_pulls) {
    req.n_accept = 2;
    req.accept = accept;
  }
  size_t len = paramex__v1__pull_request__get_packed_size(&req);
  uint8_t* buf = malloc(len ? len : 1);
  if (!buf) {
    free(ids);
    return fail(PMX_ERR_NO_MEMORY, "pmx_pull: out of memory");
  }
  paramex__v1__pull_request__pack(&req, buf);
  free(ids);
  pthread_mutex_lock(&op->mu);
  op->done = false;
  op->status = PMX_OK;
  pthread_mutex_unlock(&op->mu);
  op->call = px_cli_call_start(c->ch, M_PULL, c->timeout_ms, false, &pull_cbs, op);
  if (!op->call) {
    free(buf);
    return fail(PMX_ERR_NO_MEMORY, "pmx_pull: out of memory");
  }
  px_out o = {buf, len, NULL, 0, NULL, NULL};
  px_cli_call_send(op->call, &o, true);
  px_cli_call_read(op->call);
  px_cli_call_unref(op->call);
  free(buf);
  return PMX_OK;
}

pmx_status pmx_pull_as_async(pmx_client* c, size_t n, pmx_tensor* const* tensors, void* const* dst,
                             pmx_dtype view, uint64_t min_version, uint64_t* versions,
                             pmx_op** out) {
  pmx_status st = check_args(c, n, tensors, (const void* const*)dst, "pmx_pull");
  if (st != PMX_OK) return st;
  if (!out) return fail(PMX_ERR_INVALID_ARGUMENT, "pmx_pull: no op pointer");
  if (view != 0 && view != PMX_BF16)
    return fail(PMX_ERR_INVALID_ARGUMENT, "pmx_pull: view must be 0 (native) or PMX_BF16");
  pmx_op* op = op_new(c, OP_PULL, n, tensors, (const void* const*)dst);
  if (!op) return fail(PMX_ERR_NO_MEMORY, "pmx_pull: out of memory");
  op->min_version = min_version;
  op->versions_out = versions;
  op->view = view == PMX_BF16 ? 1 : 0;
  op->have = malloc(n * sizeof *op->have);
  op->vmin = malloc(n * sizeof *op->vmin);
  op->vmax = calloc(n, sizeof *op->vmax);
  op->bad = calloc(n, sizeof *op->bad);
  op->orig = malloc(n * sizeof *op->orig);
  if (!op->have || !op->vmin || !op->vmax || !op->bad || !op->orig) {
    op_free(op);
    return fail(PMX_ERR_NO_MEMORY, "pmx_pull: out of memory");
  }
  /* What each buffer holds; a buffer being pulled into holds nothing certain until done. */
  pthread_mutex_lock(&c->mu);
  for (size_t i = 0; i < n; i++) {
    pmx_tensor* t = tensors[i];
    op->orig[i] = i;
    bool same = t->have_valid && t->have_dst == dst[i] && t->have_view == op->view;
    op->have[i] = same ? t->have_version : UINT64_MAX;
    t->have_valid = false;
  }
  pthread_mutex_unlock(&c->mu);
  st = pull_start(op);
  if (st != PMX_OK) {
    op_free(op);
    return st;
  }
  *out = op;
  return PMX_OK;
}

pmx_status pmx_pull_async(pmx_client* c, size_t n, pmx_tensor* const* tensors, void* const* dst,
                          uint64_t min_version, uint64_t* versions, pmx_op** out) {
  return pmx_pull_as_async(c, n, tensors, dst, 0, min_version, versions, out);
}

pmx_status pmx_pull(pmx_client* c, size_t n, pmx_tensor* const* tensors, void* const* dst,
                    uint64_t min_version, uint64_t* versions) {
  pmx_op* op;
  pmx_status st = pmx_pull_async(c, n, tensors, dst, min_version, versions, &op);
  return st == PMX_OK ? pmx_op_wait(op) : st;
}

pmx_status pmx_pull_as(pmx_client* c, size_t n, pmx_tensor* const* tensors, void* const* dst,
                       pmx_dtype view, uint64_t min_version, uint64_t* versions) {
  pmx_op* op;
  pmx_status st = pmx_pull_as_async(c, n, tensors, dst, view, min_version, versions, &op);
  return st == PMX_OK ? pmx_op_wait(op) : st;
}

/* Waits for the op's call to be over. */
static void op_wait_call(pmx_op* op) {
  pthread_mutex_lock(&op->mu);
  while (!(op->done && op->slices_live == 0)) pthread_cond_wait(&op->cv, &op->mu);
  pthread_mutex_unlock(&op->mu);
}

#define HEAL_ROUNDS 3

/* Records what each successfully pulled buffer now holds (tensors whose chunks all
 * decoded), for the next pull's UNCHANGED and delta answers and for versions_out. */
static void record_pulled(pmx_op* op) {
  pmx_client* c = op->client;
  pthread_mutex_lock(&c->mu);
  for (size_t i = 0; i < op->n; i++) {
    if (op->bad[i]) continue;
    pmx_tensor* t = op->tensors[i];
    /* Every chunk of dst is at a version >= vmin and equal to what the server sent; a
     * uniform version can serve as the base of the next diff. */
    t->have_dst = op->bufs[i];
    t->have_version = op->vmin[i];
    t->have_view = op->view;
    t->have_valid = op->vmin[i] == op->vmax[i];
    if (op->versions_out) op->versions_out[op->orig[i]] = op->vmin[i];
  }
  pthread_mutex_unlock(&c->mu);
}

/* Waits ms on the op's condition variable (nothing signals it while no call runs). */
static void backoff_wait(pmx_op* op, int64_t ms) {
  struct timespec ts;
  px_deadline_ts(&ts, CLOCK_REALTIME, ms);
  pthread_mutex_lock(&op->mu);
  while (pthread_cond_timedwait(&op->cv, &op->mu, &ts) == 0) {
  }
  pthread_mutex_unlock(&op->mu);
}

/* After a server restart: join again (new server id and incarnation). */
static void rejoin(pmx_client* c) {
  pthread_mutex_lock(&c->mu);
  bool joined = c->joined;
  uint32_t rank = c->rank, world = c->world;
  pthread_mutex_unlock(&c->mu);
  if (!joined) return;
  char saved[sizeof tl_error];
  memcpy(saved, tl_error, sizeof saved);
  pmx_join(c, rank, world, NULL);
  memcpy(tl_error, saved, sizeof saved);
}

pmx_status pmx_op_wait(pmx_op* op) {
  if (!op) return fail(PMX_ERR_INVALID_ARGUMENT, "pmx_op_wait: no op");
  pmx_client* cl = op->client;
  uint64_t give_up = px_now_ms() + (uint64_t)cl->retry_timeout_ms;
  int64_t delay = 50;
  op_wait_call(op);
  pmx_status st = op->status;
  /* Transport failures (server down, restarting, network) are retried with capped
   * exponential back-off; the server ignores chunks it already counted. */
  while (st == PMX_ERR_UNAVAILABLE && px_now_ms() + (uint64_t)delay < give_up) {
    int64_t jitter = (int64_t)((uint64_t)rand() % (uint64_t)(delay / 2 + 1));
    backoff_wait(op, delay / 2 + jitter);
    delay = delay * 2 > 2000 ? 2000 : delay * 2;
    /* Another operation found the server restarted and joined again: this one belongs to
     * the earlier run (its step or version may not exist any more). */
    pthread_mutex_lock(&cl->mu);
    bool restarted = strcmp(cl->server_id, op->server_id) != 0;
    pthread_mutex_unlock(&cl->mu);
    if (restarted) {
      op->status = PMX_OK;
      op_set_error(op, PMX_ERR_ABORTED,
                   "%s: the server restarted (from a checkpoint) while this operation was "
                   "retried: resume from the server's version",
                   op->kind == OP_PUSH ? "Push" : "Pull");
      st = op->status;
      break;
    }
    if (op->kind == OP_PUSH) {
      st = push_start(op);
    } else {
      for (size_t i = 0; i < op->n; i++) op->have[i] = UINT64_MAX; /* partly written: full */
      st = pull_start(op);
    }
    if (st != PMX_OK) break;
    op_wait_call(op);
    st = op->status;
  }
  if (st == PMX_ERR_ABORTED) rejoin(cl);
  if (st == PMX_OK && op->kind == OP_PULL && op->ti != op->n)
    op_set_error(op, PMX_ERR_PROTOCOL, "Pull: the stream ended after %u of %zu tensors", op->ti,
                 op->n), st = op->status;
  /* Chunks that failed their checksum left their buffer as it was: pull those tensors
   * again in full (no base), a bounded number of times. */
  while (st == PMX_OK && op->kind == OP_PULL) {
    record_pulled(op);
    size_t k = 0;
    for (size_t i = 0; i < op->n; i++) {
      if (!op->bad[i]) continue;
      op->tensors[k] = op->tensors[i];
      op->bufs[k] = op->bufs[i];
      op->orig[k] = op->orig[i];
      op->have[k] = UINT64_MAX;
      k++;
    }
    if (k == 0) break;
    if (++op->heal_rounds > HEAL_ROUNDS) {
      op_set_error(op, PMX_ERR_DATA_LOSS, "Pull: checksum mismatch persists after %d full pulls",
                   HEAL_ROUNDS);
      st = op->status;
      break;
    }
    op->n = k;
    st = pull_start(op);
    if (st != PMX_OK) break;
    op_wait_call(op);
    st = op->status;
    if (st == PMX_OK && op->ti != op->n)
      op_set_error(op, PMX_ERR_PROTOCOL, "Pull: the stream ended early"), st = op->status;
  }
  if (st != PMX_OK) fail(st, "%s", op->error);
  op_free(op);
  return st;
}
