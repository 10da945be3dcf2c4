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
  bool have_valid;
};

struct pmx_client {
  pmx_rpc_channel* ch;
  int64_t timeout_ms, connect_timeout_ms;
  pthread_mutex_t mu;
  uint32_t worker_id;
  uint64_t incarnation;
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
  return st >= 0 && st <= PMX_ST_UNAUTHENTICATED ? (pmx_status)st : PMX_ERR_UNKNOWN;
}

/* ---- client --------------------------------------------------------------------------------- */

pmx_status pmx_connect(const char* addr, const pmx_options* opts, pmx_client** out) {
  if (!addr || !*addr || !out) return fail(PMX_ERR_INVALID_ARGUMENT, "pmx_connect: no address");
  pmx_client* c = calloc(1, sizeof *c);
  if (!c) return fail(PMX_ERR_NO_MEMORY, "pmx_connect: out of memory");
  c->timeout_ms = opts && opts->timeout_ms > 0 ? opts->timeout_ms : 60000;
  c->connect_timeout_ms = opts && opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : 30000;
  pthread_mutex_init(&c->mu, NULL);
  pmx_rpc_init();
  char err[256];
  c->ch = pmx_rpc_channel_create(addr, err, sizeof err);
  if (!c->ch) {
    pthread_mutex_destroy(&c->mu);
    free(c);
    pmx_rpc_shutdown();
    return fail(PMX_ERR_INVALID_ARGUMENT, "pmx_connect: %s", err);
  }
  *out = c;
  return PMX_OK;
}

void pmx_client_destroy(pmx_client* c) {
  if (!c) return;
  pmx_rpc_channel_destroy(c->ch);
  for (size_t i = 0; i < c->ntensors; i++) free(c->tensors[i]);
  free(c->tensors);
  pthread_mutex_destroy(&c->mu);
  free(c);
  pmx_rpc_shutdown();
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
}

/* Packs m, runs a unary call, returns the status; *resp is malloc'd on OK. */
static pmx_status unary(pmx_client* c, const char* method, const ProtobufCMessage* m,
                        int64_t timeout_ms, bool wait_ready, uint8_t** resp, size_t* resp_len) {
  size_t n = protobuf_c_message_get_packed_size(m);
  uint8_t* buf = malloc(n ? n : 1);
  if (!buf) return fail(PMX_ERR_NO_MEMORY, "%s: out of memory", method);
  protobuf_c_message_pack(m, buf);
  char details[256];
  int st = pmx_rpc_unary(c->ch, method, buf, n, timeout_ms, wait_ready, resp, resp_len, details,
                         sizeof details);
  free(buf);
  if (st != PMX_ST_OK)
    return fail(from_rpc(st), "%s: %s: %s", strrchr(method, '/') + 1, pmx_status_name(st),
                details);
  return PMX_OK;
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
  pthread_mutex_unlock(&c->mu);
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
  size_t es = pmx_dtype_size((int)dtype);
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
  pmx_strlcpy(t->name, name, sizeof t->name);
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

uint64_t pmx_tensor_numel(const pmx_tensor* t) { return t->numel; }
size_t pmx_tensor_bytes(const pmx_tensor* t) { return (size_t)(t->numel * t->elem); }
uint32_t pmx_tensor_id(const pmx_tensor* t) { return t->id; }
uint32_t pmx_tensor_num_chunks(const pmx_tensor* t) { return t->nchunks; }

/* ---- operations ------------------------------------------------------------------------------ */

typedef enum { OP_PUSH, OP_PULL } op_kind;

struct pmx_op {
  op_kind kind;
  pmx_client* client;
  pmx_cli_call* call;
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

/* Sends the chunk at the cursor; the last one also half-closes. */
static void push_send_next(pmx_op* op) {
  pmx_tensor* t = op->tensors[op->ti];
  uint64_t first = (uint64_t)op->ci * t->chunk_elems;
  uint64_t elems = t->numel - first < t->chunk_elems ? t->numel - first : t->chunk_elems;
  size_t bytes = (size_t)(elems * t->elem);
  const uint8_t* body = (const uint8_t*)op->bufs[op->ti] + first * t->elem;
  pmx_chunk h = {0};
  h.worker_id = op->worker_id;
  h.incarnation = op->incarnation;
  h.step = op->step;
  h.tensor_id = t->id;
  h.chunk = op->ci;
  h.dtype = (uint32_t)t->dtype;
  h.raw_len = (uint32_t)bytes;
  h.checksum = pmx_checksum(body, bytes);
  uint8_t head[PMX_CHUNK_HDR_MAX];
  size_t hl = pmx_chunk_encode_header(PMX_CHUNK_PUSH, &h, bytes, head, sizeof head);
  pmx_client* c = op->client;
  atomic_fetch_add(&c->push_chunks, 1);
  atomic_fetch_add(&c->push_raw, bytes);
  atomic_fetch_add(&c->push_wire, hl + bytes);
  if (++op->ci == t->nchunks) {
    op->ci = 0;
    op->ti++;
  }
  bool last = op->ti == op->n;
  pthread_mutex_lock(&op->mu);
  op->slices_live++;
  pthread_mutex_unlock(&op->mu);
  pmx_out out = {head, hl, body, bytes, slice_released, op};
  pmx_cli_call_send(op->call, &out, last);
}

static void push_on_sent(pmx_cli_call* call, void* ctx, bool ok) {
  (void)call;
  pmx_op* op = ctx;
  if (ok && op->ti < op->n) push_send_next(op);
  /* After the last send (or a failure) the status tells the rest. */
}

static void push_on_message(pmx_cli_call* call, void* ctx, pmx_msg* m) {
  (void)call;
  pmx_op* op = ctx;
  if (!m) return;
  size_t len;
  const uint8_t* p = pmx_msg_flat(m, &len);
  Paramex__V1__PushResponse* r = p ? paramex__v1__push_response__unpack(NULL, len, p) : NULL;
  if (!r) {
    op_set_error(op, PMX_ERR_PROTOCOL, "Push: malformed PushResponse");
  } else {
    op->accepted = r->accepted;
    op->duplicate = r->duplicate;
    paramex__v1__push_response__free_unpacked(r, NULL);
  }
  pmx_msg_free(m);
}

static void op_on_done(pmx_cli_call* call, void* ctx, int status, const char* details) {
  (void)call;
  pmx_op* op = ctx;
  if (status != PMX_ST_OK)
    op_set_error(op, from_rpc(status), "%s: %s: %s", op->kind == OP_PUSH ? "Push" : "Pull",
                 pmx_status_name(status), details);
  pthread_mutex_lock(&op->mu);
  op->done = true;
  op_check_done(op);
  pthread_mutex_unlock(&op->mu);
}

static const pmx_cli_call_cbs push_cbs = {push_on_message, push_on_sent, op_on_done};

pmx_status pmx_push_async(pmx_client* c, uint64_t step, size_t n, pmx_tensor* const* tensors,
                          const void* const* grads, pmx_op** out) {
  pmx_status st = check_args(c, n, tensors, grads, "pmx_push");
  if (st != PMX_OK) return st;
  if (!out) return fail(PMX_ERR_INVALID_ARGUMENT, "pmx_push: no op pointer");
  pmx_op* op = op_new(c, OP_PUSH, n, tensors, grads);
  if (!op) return fail(PMX_ERR_NO_MEMORY, "pmx_push: out of memory");
  op->step = step;
  op->call = pmx_cli_call_start(c->ch, M_PUSH, c->timeout_ms, false, &push_cbs, op);
  if (!op->call) {
    op_free(op);
    return fail(PMX_ERR_NO_MEMORY, "pmx_push: out of memory");
  }
  pmx_cli_call_read(op->call); /* the PushResponse, once the stream is closed */
  push_send_next(op);
  pmx_cli_call_unref(op->call);
  *out = op;
  return PMX_OK;
}

pmx_status pmx_push(pmx_client* c, uint64_t step, size_t n, pmx_tensor* const* tensors,
                    const void* const* grads) {
  pmx_op* op;
  pmx_status st = pmx_push_async(c, step, n, tensors, grads, &op);
  return st == PMX_OK ? pmx_op_wait(op) : st;
}

/* ---- pull ---- */

static void pull_on_message(pmx_cli_call* call, void* ctx, pmx_msg* m) {
  pmx_op* op = ctx;
  if (!m) return; /* end of stream: the status follows */
  size_t nseg;
  const pmx_iov* seg = pmx_msg_segments(m, &nseg);
  size_t wire = pmx_msg_len(m);
  pmx_chunk h;
  char err[200];
  pmx_client* c = op->client;
  if (pmx_chunk_parse(PMX_CHUNK_PULL, seg, nseg, &h, err, sizeof err) != 0) {
    op_set_error(op, PMX_ERR_PROTOCOL, "Pull: %s", err);
    goto cancel;
  }
  if (op->ti >= op->n) {
    op_set_error(op, PMX_ERR_PROTOCOL, "Pull: more chunks than requested");
    goto cancel;
  }
  pmx_tensor* t = op->tensors[op->ti];
  uint64_t first = (uint64_t)op->ci * t->chunk_elems;
  uint64_t elems = t->numel - first < t->chunk_elems ? t->numel - first : t->chunk_elems;
  size_t bytes = (size_t)(elems * t->elem);
  uint8_t* dst = (uint8_t*)op->bufs[op->ti] + first * t->elem;
  if (h.tensor_id != t->id || h.chunk != op->ci || h.raw_len != bytes ||
      h.dtype != (uint32_t)t->dtype || h.version < op->min_version) {
    op_set_error(op, PMX_ERR_PROTOCOL,
                 "Pull: unexpected chunk (tensor %u chunk %u version %llu, %u bytes), wanted "
                 "tensor %u chunk %u", h.tensor_id, h.chunk, (unsigned long long)h.version,
                 h.raw_len, t->id, op->ci);
    goto cancel;
  }
  if (h.encoding == 0) {
    if (h.payload_len != bytes || pmx_chunk_copy_payload(&h, seg, nseg, dst, bytes) != 0) {
      op_set_error(op, PMX_ERR_PROTOCOL, "Pull: tensor '%s' chunk %u: payload of %zu bytes, want %zu",
                   t->name, h.chunk, h.payload_len, bytes);
      goto cancel;
    }
  } else if (h.encoding == 1) {
    if (op->have[op->ti] != h.base_version || h.version != h.base_version) {
      op_set_error(op, PMX_ERR_PROTOCOL, "Pull: tensor '%s' chunk %u: UNCHANGED against version %llu, "
                   "but we hold %llu", t->name, h.chunk, (unsigned long long)h.base_version,
                   (unsigned long long)op->have[op->ti]);
      goto cancel;
    }
    atomic_fetch_add(&c->pull_unchanged, 1);
  } else {
    op_set_error(op, PMX_ERR_PROTOCOL, "Pull: unknown encoding %u", h.encoding);
    goto cancel;
  }
  if (pmx_checksum(dst, bytes) != h.checksum) {
    atomic_fetch_add(&c->checksum_failures, 1);
    op_set_error(op, PMX_ERR_DATA_LOSS, "Pull: tensor '%s' chunk %u version %llu: checksum mismatch%s",
                 t->name, h.chunk, (unsigned long long)h.version,
                 h.encoding == 1 ? " (the buffer was modified since the last pull)" : "");
    goto cancel;
  }
  if (h.version < op->vmin[op->ti]) op->vmin[op->ti] = h.version;
  if (h.version > op->vmax[op->ti]) op->vmax[op->ti] = h.version;
  atomic_fetch_add(&c->pull_chunks, 1);
  atomic_fetch_add(&c->pull_raw, bytes);
  atomic_fetch_add(&c->pull_wire, wire);
  if (++op->ci == t->nchunks) {
    op->ci = 0;
    op->ti++;
  }
  pmx_msg_free(m);
  pmx_cli_call_read(call);
  return;
cancel:
  pmx_msg_free(m);
  pmx_cli_call_cancel(call);
}

static const pmx_cli_call_cbs pull_cbs = {pull_on_message, NULL, op_on_done};

pmx_status pmx_pull_async(pmx_client* c, size_t n, pmx_tensor* const* tensors, void* const* dst,
                          uint64_t min_version, uint64_t* versions, pmx_op** out) {
  pmx_status st = check_args(c, n, tensors, (const void* const*)dst, "pmx_pull");
  if (st != PMX_OK) return st;
  if (!out) return fail(PMX_ERR_INVALID_ARGUMENT, "pmx_pull: no op pointer");
  pmx_op* op = op_new(c, OP_PULL, n, tensors, (const void* const*)dst);
  if (!op) return fail(PMX_ERR_NO_MEMORY, "pmx_pull: out of memory");
  op->min_version = min_version;
  op->versions_out = versions;
  op->have = malloc(n * sizeof *op->have);
  op->vmin = malloc(n * sizeof *op->vmin);
  op->vmax = calloc(n, sizeof *op->vmax);
  uint32_t* ids = malloc(n * sizeof *ids);
  if (!op->have || !op->vmin || !op->vmax || !ids) {
    free(ids);
    op_free(op);
    return fail(PMX_ERR_NO_MEMORY, "pmx_pull: out of memory");
  }
  /* What each buffer holds; a buffer being pulled into holds nothing certain until done. */
  pthread_mutex_lock(&c->mu);
  for (size_t i = 0; i < n; i++) {
    pmx_tensor* t = tensors[i];
    op->have[i] = t->have_valid && t->have_dst == dst[i] ? t->have_version : UINT64_MAX;
    t->have_valid = false;
    op->vmin[i] = UINT64_MAX;
    ids[i] = t->id;
  }
  pthread_mutex_unlock(&c->mu);
  Paramex__V1__PullRequest req = PARAMEX__V1__PULL_REQUEST__INIT;
  req.worker_id = op->worker_id;
  req.n_tensor_ids = n;
  req.tensor_ids = ids;
  bool any_have = false;
  for (size_t i = 0; i < n; i++) any_have |= op->have[i] != UINT64_MAX;
  if (any_have) {
    req.n_have_versions = n;
    req.have_versions = op->have;
  }
  req.min_version = min_version;
  size_t len = paramex__v1__pull_request__get_packed_size(&req);
  uint8_t* buf = malloc(len ? len : 1);
  if (!buf) {
    free(ids);
    op_free(op);
    return fail(PMX_ERR_NO_MEMORY, "pmx_pull: out of memory");
  }
  paramex__v1__pull_request__pack(&req, buf);
  free(ids);
  op->call = pmx_cli_call_start(c->ch, M_PULL, c->timeout_ms, false, &pull_cbs, op);
  if (!op->call) {
    free(buf);
    op_free(op);
    return fail(PMX_ERR_NO_MEMORY, "pmx_pull: out of memory");
  }
  pmx_out o = {buf, len, NULL, 0, NULL, NULL};
  pmx_cli_call_send(op->call, &o, true);
  pmx_cli_call_read(op->call);
  pmx_cli_call_unref(op->call);
  free(buf);
  *out = op;
  return PMX_OK;
}

pmx_status pmx_pull(pmx_client* c, size_t n, pmx_tensor* const* tensors, void* const* dst,
                    uint64_t min_version, uint64_t* versions) {
  pmx_op* op;
  pmx_status st = pmx_pull_async(c, n, tensors, dst, min_version, versions, &op);
  return st == PMX_OK ? pmx_op_wait(op) : st;
}

pmx_status pmx_op_wait(pmx_op* op) {
  if (!op) return fail(PMX_ERR_INVALID_ARGUMENT, "pmx_op_wait: no op");
  pthread_mutex_lock(&op->mu);
  while (!(op->done && op->slices_live == 0)) pthread_cond_wait(&op->cv, &op->mu);
  pthread_mutex_unlock(&op->mu);
  pmx_status st = op->status;
  if (st == PMX_OK && op->kind == OP_PULL && op->ti != op->n)
    op_set_error(op, PMX_ERR_PROTOCOL, "Pull: the stream ended after %u of %zu tensors", op->ti,
                 op->n), st = op->status;
  if (st == PMX_OK && op->kind == OP_PULL) {
    pmx_client* c = op->client;
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < op->n; i++) {
      pmx_tensor* t = op->tensors[i];
      /* Every chunk of dst is at a version >= vmin and equal to what the server sent:
       * chunks still at vmin can be answered UNCHANGED next time. */
      t->have_dst = op->bufs[i];
      t->have_version = op->vmin[i];
      t->have_valid = true;
      if (op->versions_out) op->versions_out[i] = op->vmin[i];
    }
    pthread_mutex_unlock(&c->mu);
  }
  if (st != PMX_OK) fail(st, "%s", op->error);
  op_free(op);
  return st;
}
