/* Declaring tensors (tensor.h, and pmx_declare / pmx_tensor_* of paramex.h). */
#include "tensor.h"

#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "codec/dtype.h"
#include "errors.h"
#include "paramex.pb-c.h"
#include "util/str.h"

/* Initial values travel in Declare calls of at most this many bytes. */
#define DECLARE_PIECE (2u << 20)

pmx_status pmx_declare(pmx_client* c, const char* name, pmx_dtype dtype, const uint64_t* shape,
                       size_t ndim, const void* values, const pmx_init* init, pmx_tensor** out) {
  if (!c || !name || !out || (ndim && !shape))
    return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_declare: missing argument");
  size_t es = px_dtype_size((int)dtype);
  if (es == 0) return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_declare: unknown dtype %d", (int)dtype);
  uint64_t numel = 1;
  for (size_t i = 0; i < ndim; i++) {
    if (shape[i] != 0 && numel > UINT64_MAX / shape[i])
      return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_declare: shape of '%s' overflows", name);
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
  pmx_status st = px_client_unary(c, PX_M_DECLARE, &req.base, c->timeout_ms, false, &resp, &len);
  if (st != PMX_OK) return st;
  Paramex__V1__DeclareResponse* r = paramex__v1__declare_response__unpack(NULL, len, resp);
  free(resp);
  if (!r) return px_fail(PMX_ERR_PROTOCOL, "Declare: malformed DeclareResponse");
  if (r->chunk_elems == 0 || r->num_chunks != (numel + r->chunk_elems - 1) / r->chunk_elems) {
    paramex__v1__declare_response__free_unpacked(r, NULL);
    return px_fail(PMX_ERR_PROTOCOL, "Declare: inconsistent chunking in DeclareResponse");
  }
  pmx_tensor* t = calloc(1, sizeof *t);
  if (!t) {
    paramex__v1__declare_response__free_unpacked(r, NULL);
    return px_fail(PMX_ERR_NO_MEMORY, "pmx_declare: out of memory");
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
    st = px_client_unary(c, PX_M_DECLARE, &req.base, c->timeout_ms, false, &resp, &len);
    if (st != PMX_OK) {
      free(t);
      return st;
    }
    free(resp);
    sent += piece;
  }
  st = px_client_adopt(c, t);
  if (st != PMX_OK) {
    free(t);
    return st;
  }
  *out = t;
  return PMX_OK;
}

pmx_status pmx_tensor_set_push_compression(pmx_tensor* t, pmx_push_mode mode, size_t min_bytes) {
  if (!t || mode < PMX_PUSH_RAW || mode > PMX_PUSH_BF16_ZSTD)
    return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_tensor_set_push_compression: bad mode");
  if ((mode & PMX_PUSH_BF16) && t->dtype != PMX_F32)
    return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_tensor_set_push_compression: '%s' is not f32",
                t->name);
  t->push_mode = mode;
  t->push_min_bytes = min_bytes;
  return PMX_OK;
}

uint64_t pmx_tensor_numel(const pmx_tensor* t) { return t->numel; }
size_t pmx_tensor_bytes(const pmx_tensor* t) { return (size_t)(t->numel * t->elem); }
uint32_t pmx_tensor_id(const pmx_tensor* t) { return t->id; }
uint32_t pmx_tensor_num_chunks(const pmx_tensor* t) { return t->nchunks; }
