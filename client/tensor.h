/* Declared tensors (tensor.c): what the client knows of each, and which version the buffer
 * it last pulled into holds. Internal to libparamex. */
#ifndef PX_TENSOR_H
#define PX_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "paramex/paramex.h"

struct pmx_tensor {
  pmx_client* client;
  uint32_t id;
  char name[256];
  pmx_dtype dtype;
  uint64_t numel;
  size_t elem;
  uint32_t chunk_elems, nchunks;
  /* Which version the buffer last pulled into holds (guarded by the client's mutex). */
  const void* have_dst;
  uint64_t have_version;
  int have_view;
  bool have_valid;
  /* push compression (pmx_tensor_set_push_compression) */
  pmx_push_mode push_mode;
  size_t push_min_bytes;
  /* The declaration, to declare again on a server that lost the tensor (pmx_resume). */
  uint64_t shape[8];
  size_t ndim;
  pmx_init init;
  bool has_init;
  void* values; /* a copy of the initial values given to pmx_declare (after the struct, in
                 * its allocation; a shard's tensor borrows its cluster tensor's), or NULL */
  /* Several shards: a cluster tensor has one tensor per shard's client (kids); a shard's
   * tensor knows the chunks its shard holds (own, ascending; NULL: all of them). */
  struct pmx_tensor** kids;
  uint32_t* own;
  uint32_t nown;
};

/* A new tensor of c, checked as pmx_declare checks its arguments, not declared yet: the
 * initial values copied (copy) or borrowed from a tensor that outlives it. */
pmx_status px_tensor_new(pmx_client* c, const char* name, pmx_dtype dtype, const uint64_t* shape,
                        size_t ndim, const void* values, bool copy, const pmx_init* init,
                        pmx_tensor** out);
/* Declares t (of px_tensor_new) to c's server and adds it to c's tensors; on error t is
 * freed. */
pmx_status px_tensor_declare_new(pmx_client* c, pmx_tensor* t);
/* Frees t (and what it owns). */
void px_tensor_free(pmx_tensor* t);

/* Chunks of t that its client's server holds, and the k-th of them. */
static inline uint32_t px_tensor_held(const pmx_tensor* t) { return t->own ? t->nown : t->nchunks; }
static inline uint32_t px_tensor_held_chunk(const pmx_tensor* t, uint32_t k) {
  return t->own ? t->own[k] : k;
}

/* Sends t's declaration (name, dtype, shape, initial values or initializer) to the server
 * and sets t's id and chunking from the answer. The tensor's facts must not change: a
 * different chunking is PMX_ERR_PROTOCOL. The message set on error. */
pmx_status px_tensor_declare(pmx_client* c, pmx_tensor* t);

/* Elements of chunk i of t. */
static inline uint64_t px_tensor_chunk_elems(const pmx_tensor* t, uint32_t i) {
  uint64_t first = (uint64_t)i * t->chunk_elems;
  return t->numel - first < t->chunk_elems ? t->numel - first : t->chunk_elems;
}

#endif
