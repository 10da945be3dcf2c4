/* Declaring tensors (tensor.h, and pmx_declare / pmx_tensor_* of paramex.h). */
#include "tensor.h"

#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "codec/dtype.h"
#include "errors.h"
#include "paramex.pb-c.h"
#include "shard/shardmap.h"
#include "util/str.h"

/* Initial values travel in Declare calls of at most this many bytes. */
#define DECLARE_PIECE (2u << 20)

pmx_status px_tensor_declare(pmx_client* c, pmx_tensor* t) {
  Paramex__V1__DeclareRequest req = PARAMEX__V1__DECLARE_REQUEST__INIT;
  Paramex__V1__Initializer ini = PARAMEX__V1__INITIALIZER__INIT;
  req.name = t->name;
  req.dtype = (Paramex__V1__DType)t->dtype;
  req.n_shape = t->ndim;
  req.shape = t->shape;
  pthread_mutex_lock(&c->mu);
  req.worker_id = c->worker_id;
  req.incarnation = c->incarnation;
  pthread_mutex_unlock(&c->mu);
  if (!t->values && t->has_init) {
    ini.kind = (Paramex__V1__Initializer__Kind)t->init.kind;
    ini.a = t->init.a;
    ini.b = t->init.b;
    ini.seed = t->init.seed;
    req.initializer = &ini;
  }
  const size_t es = t->elem;
  const uint64_t total = t->numel * es;
  if (t->values) {
    req.values.data = t->values;
    req.values.len = total < DECLARE_PIECE ? total : DECLARE_PIECE - DECLARE_PIECE % es;
  }
  uint8_t* resp = NULL;
  size_t len = 0;
  pmx_status st = px_client_unary(c, PX_M_DECLARE, &req.base, c->timeout_ms, false, &resp, &len);
  if (st != PMX_OK) return st;
  Paramex__V1__DeclareResponse* r = paramex__v1__declare_response__unpack(NULL, len, resp);
  free(resp);
  if (!r) return px_fail(PMX_ERR_PROTOCOL, "Declare: malformed DeclareResponse");
  if (r->chunk_elems == 0 || r->num_chunks != (t->numel + r->chunk_elems - 1) / r->chunk_elems ||
      (t->chunk_elems && (r->chunk_elems != t->chunk_elems || r->num_chunks != t->nchunks))) {
    paramex__v1__declare_response__free_unpacked(r, NULL);
    return px_fail(PMX_ERR_PROTOCOL, "Declare: inconsistent chunking in DeclareResponse");
  }
  t->id = r->tensor_id;
  t->chunk_elems = r->chunk_elems;
  t->nchunks = r->num_chunks;
  if (c->shard_count > 1 && !t->own) { /* the chunks this shard holds */
    t->own = malloc(t->nchunks * sizeof *t->own);
    if (!t->own) {
      paramex__v1__declare_response__free_unpacked(r, NULL);
      return px_fail(PMX_ERR_NO_MEMORY, "pmx_declare: out of memory");
    }
    t->nown = px_shard_chunks(t->name, strlen(t->name), t->nchunks, c->shard_index,
                              c->shard_count, t->own);
  }
  const bool created = r->created || r->upload; /* this call owns the upload */
  paramex__v1__declare_response__free_unpacked(r, NULL);

  /* The creator sends the rest of the initial values in further pieces. */
  for (uint64_t sent = t->values ? req.values.len : total; created && sent < total;) {
    uint64_t piece = total - sent < DECLARE_PIECE ? total - sent : DECLARE_PIECE - DECLARE_PIECE % es;
    req.values.data = (uint8_t*)t->values + sent;
    req.values.len = piece;
    req.values_offset = sent / es;
    st = px_client_unary(c, PX_M_DECLARE, &req.base, c->timeout_ms, false, &resp, &len);
    if (st != PMX_OK) return st;
    free(resp);
    sent += piece;
  }
  return PMX_OK;
}

pmx_status px_tensor_new(pmx_client* c, const char* name, pmx_dtype dtype, const uint64_t* shape,
                        size_t ndim, const void* values, bool copy, const pmx_init* init,
                        pmx_tensor** out) {
  if (!c || !name || !out || (ndim && !shape))
    return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_declare: missing argument");
  size_t es = px_dtype_size((int)dtype);
  if (es == 0) return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_declare: unknown dtype %d", (int)dtype);
  if (ndim < 1 || ndim > 8)
    return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_declare: '%s' has %zu dimensions (1..8)",
                   name, ndim);
  size_t nlen = strlen(name);
  if (nlen == 0 || nlen > 255)
    return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_declare: a name is 1..255 bytes, not %zu",
                   nlen);
  uint64_t numel = 1;
  for (size_t i = 0; i < ndim; i++) {
    if (shape[i] == 0)
      return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_declare: '%s': dimension %zu is 0", name, i);
    if (numel > UINT64_MAX / shape[i] / es)
      return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_declare: shape of '%s' overflows", name);
    numel *= shape[i];
  }
  /* The values are kept (after the tensor, in the same allocation that the client frees)
   * to declare the tensor again on a server that lost it (pmx_resume). */
  pmx_tensor* t = calloc(1, sizeof *t + (values && copy ? (size_t)(numel * es) : 0));
  if (!t) return px_fail(PMX_ERR_NO_MEMORY, "pmx_declare: out of memory for '%s'", name);
  t->client = c;
  px_strlcpy(t->name, name, sizeof t->name);
  t->dtype = dtype;
  t->numel = numel;
  t->elem = es;
  t->ndim = ndim;
  memcpy(t->shape, shape, ndim * sizeof *shape);
  if (init) t->init = *init;
  t->has_init = init != NULL;
  if (values) t->values = copy ? memcpy(t + 1, values, (size_t)(numel * es)) : (void*)values;
  *out = t;
  return PMX_OK;
}

pmx_status px_tensor_declare_new(pmx_client* c, pmx_tensor* t) {
  pmx_status st = px_tensor_declare(c, t);
  if (st == PMX_OK) st = px_client_adopt(c, t, px_tensor_free);
  if (st != PMX_OK) px_tensor_free(t);
  return st;
}

void px_tensor_free(pmx_tensor* t) {
  if (!t) return;
  free(t->kids);
  free(t->own);
  free(t);
}

pmx_status pmx_tensor_set_push_compression(pmx_tensor* t, pmx_push_mode mode, size_t min_bytes) {
  if (!t || mode < PMX_PUSH_RAW || mode > PMX_PUSH_BF16_ZSTD)
    return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_tensor_set_push_compression: bad mode");
  if ((mode & PMX_PUSH_BF16) && t->dtype != PMX_F32)
    return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_tensor_set_push_compression: '%s' is not f32",
                t->name);
  t->push_mode = mode;
  t->push_min_bytes = min_bytes;
  for (uint32_t i = 0; t->kids && i < t->client->nshards; i++) {
    t->kids[i]->push_mode = mode;
    t->kids[i]->push_min_bytes = min_bytes;
  }
  return PMX_OK;
}

uint64_t pmx_tensor_numel(const pmx_tensor* t) { return t->numel; }
size_t pmx_tensor_bytes(const pmx_tensor* t) { return (size_t)(t->numel * t->elem); }
uint32_t pmx_tensor_id(const pmx_tensor* t) { return t->id; }
uint32_t pmx_tensor_num_chunks(const pmx_tensor* t) { return t->nchunks; }
