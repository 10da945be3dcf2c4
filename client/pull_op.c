/* Pull operations (pull_op.h). */
#include "pull_op.h"

#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "codec/payload.h"
#include "errors.h"
#include "paramex.pb-c.h"
#include "tensor.h"
#include "util/log.h"
#include "wire/chunk_msg.h"

/* Element width of tensor t in the op's view. */
static int view_width(const pmx_op* op, const pmx_tensor* t) {
  return op->view == 1 && t->dtype == PMX_F32 ? 2 : (int)t->elem;
}

bool px_pull_take_chunk(pmx_op* op, const px_iov* seg, size_t nseg, size_t wire) {
  px_chunk h;
  char err[200];
  pmx_client* c = op->client;
  if (px_chunk_parse(PX_CHUNK_PULL, seg, nseg, &h, err, sizeof err) != 0) {
    px_op_set_error(op, PMX_ERR_PROTOCOL, "Pull: %s", err);
    return false;
  }
  if (op->ti >= op->n) {
    px_op_set_error(op, PMX_ERR_PROTOCOL, "Pull: more chunks than requested");
    return false;
  }
  pmx_tensor* t = op->tensors[op->ti];
  const int w = view_width(op, t);
  const uint32_t want_dtype = w == 2 && t->dtype == PMX_F32 ? PMX_BF16 : (uint32_t)t->dtype;
  uint64_t first = (uint64_t)op->ci * t->chunk_elems;
  uint64_t elems = t->numel - first < t->chunk_elems ? t->numel - first : t->chunk_elems;
  uint8_t* dst = (uint8_t*)op->bufs[op->ti] + first * (uint64_t)w;
  if (h.tensor_id != t->id || h.chunk != op->ci || h.dtype != want_dtype ||
      h.version < op->min_version) {
    px_op_set_error(op, PMX_ERR_PROTOCOL,
                 "Pull: unexpected chunk (tensor %u chunk %u version %llu dtype %u), wanted "
                 "tensor %u chunk %u", h.tensor_id, h.chunk, (unsigned long long)h.version,
                 h.dtype, t->id, op->ci);
    return false;
  }
  if ((h.encoding == PX_ENC_UNCHANGED || h.encoding == PX_ENC_DELTA_ZSTD) &&
      (op->have[op->ti] == UINT64_MAX || h.base_version != op->have[op->ti])) {
    px_op_set_error(op, PMX_ERR_PROTOCOL,
                 "Pull: tensor '%s' chunk %u: %s against version %llu, but we hold %llu",
                 t->name, h.chunk, px_encoding_name(h.encoding),
                 (unsigned long long)h.base_version, (unsigned long long)op->have[op->ti]);
    return false;
  }
  px_decode_result r = px_chunk_decode(&h, seg, nseg, dst, (size_t)elems, w, err, sizeof err);
  if (r != PX_DECODE_OK) {
    /* A frame that fails to decode or to check (corrupted on the way) leaves dst
     * untouched; this tensor is pulled again in full once the stream ends. */
    atomic_fetch_add(&c->checksum_failures, 1);
    op->bad[op->ti] = true;
    px_warn("Pull: tensor '%s' chunk %u: %s; it is pulled again in full", t->name, h.chunk, err);
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
  return true;
}

static void pull_on_message(px_cli_call* call, void* ctx, px_msg* m) {
  pmx_op* op = ctx;
  if (!m) return; /* end of stream: the status follows */
  size_t nseg;
  const px_iov* seg = px_msg_segments(m, &nseg);
  bool ok = px_pull_take_chunk(op, seg, nseg, px_msg_len(m));
  px_msg_free(m);
  if (ok) px_cli_call_read(call);
  else px_cli_call_cancel(call);
}

static const px_cli_call_cbs pull_cbs = {pull_on_message, NULL, px_op_on_done};

/* Prepares op for a new pull of its tensors (retry: after a failed one, whose buffers
 * are partly written and so sent in full). */
static void pull_reset(pmx_op* op, bool retry) {
  for (size_t i = 0; i < op->n; i++) {
    if (retry) op->have[i] = UINT64_MAX;
    op->vmin[i] = UINT64_MAX;
    op->vmax[i] = 0;
    op->bad[i] = false;
  }
  op->ti = op->ci = 0;
}

uint8_t* px_pull_request_pack(pmx_op* op, size_t* len) {
  size_t n = op->n;
  uint32_t* ids = malloc(n * sizeof *ids);
  if (!ids) return NULL;
  bool any_have = false;
  for (size_t i = 0; i < n; i++) {
    ids[i] = op->tensors[i]->id;
    any_have |= op->have[i] != UINT64_MAX;
  }
  Paramex__V1__PullRequest req = PARAMEX__V1__PULL_REQUEST__INIT;
  Paramex__V1__Encoding accept[2] = {PARAMEX__V1__ENCODING__ENCODING_DELTA_ZSTD,
                                     PARAMEX__V1__ENCODING__ENCODING_SHUFFLE_ZSTD};
  req.worker_id = op->worker_id;
  req.incarnation = op->incarnation;
  req.n_tensor_ids = n;
  req.tensor_ids = ids;
  if (any_have) {
    req.n_have_versions = n;
    req.have_versions = op->have;
  }
  req.min_version = op->min_version;
  req.view = op->view == 1 ? PARAMEX__V1__DTYPE__DTYPE_BF16 : PARAMEX__V1__DTYPE__DTYPE_UNSPECIFIED;
  if (op->client->compressed_pulls) {
    req.n_accept = 2;
    req.accept = accept;
  }
  *len = paramex__v1__pull_request__get_packed_size(&req);
  uint8_t* buf = malloc(*len ? *len : 1);
  if (buf) paramex__v1__pull_request__pack(&req, buf);
  free(ids);
  return buf;
}

/* Starts the Pull call of op (its tensors, bufs, view, min_version and have set). */
static pmx_status pull_start(pmx_op* op, bool retry) {
  pmx_client* c = op->client;
  pull_reset(op, retry);
  size_t len;
  uint8_t* buf = px_pull_request_pack(op, &len);
  if (!buf) return px_fail(PMX_ERR_NO_MEMORY, "pmx_pull: out of memory");
  px_op_begin_call(op);
  op->call = px_cli_call_start(c->ch, PX_M_PULL, c->timeout_ms, false, &pull_cbs, op);
  if (!op->call) {
    free(buf);
    return px_fail(PMX_ERR_NO_MEMORY, "pmx_pull: out of memory");
  }
  px_out o = {buf, len, NULL, 0, NULL, NULL};
  px_cli_call_send(op->call, &o, true);
  px_cli_call_read(op->call);
  px_cli_call_unref(op->call);
  free(buf);
  return PMX_OK;
}

pmx_status px_pull_op_new(pmx_client* c, size_t n, pmx_tensor* const* tensors, void* const* dst,
                          pmx_dtype view, uint64_t min_version, uint64_t* versions, pmx_op** out) {
  pmx_status st = px_op_check_args(c, n, tensors, (const void* const*)dst, "pmx_pull");
  if (st != PMX_OK) return st;
  if (view != 0 && view != PMX_BF16)
    return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_pull: view must be 0 (native) or PMX_BF16");
  pmx_op* op = px_op_new(c, &px_pull_kind, n, tensors, (const void* const*)dst);
  if (!op) return px_fail(PMX_ERR_NO_MEMORY, "pmx_pull: out of memory");
  op->min_version = min_version;
  op->versions_out = versions;
  op->view = view == PMX_BF16 ? 1 : 0;
  op->have = malloc(n * sizeof *op->have);
  op->vmin = malloc(n * sizeof *op->vmin);
  op->vmax = calloc(n, sizeof *op->vmax);
  op->bad = calloc(n, sizeof *op->bad);
  op->orig = malloc(n * sizeof *op->orig);
  op->vres = malloc(n * sizeof *op->vres);
  op->n_caller = n;
  if (!op->have || !op->vmin || !op->vmax || !op->bad || !op->orig || !op->vres) {
    px_op_free(op);
    return px_fail(PMX_ERR_NO_MEMORY, "pmx_pull: out of memory");
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
  pull_reset(op, false);
  *out = op;
  return PMX_OK;
}

void px_pull_op_abandon(pmx_op* op) {
  pmx_client* c = op->client;
  pthread_mutex_lock(&c->mu);
  for (size_t i = 0; i < op->n; i++)
    if (op->have[i] != UINT64_MAX) op->tensors[i]->have_valid = true; /* dst as it was */
  pthread_mutex_unlock(&c->mu);
  px_op_free(op);
}

pmx_status pmx_pull_as_async(pmx_client* c, size_t n, pmx_tensor* const* tensors, void* const* dst,
                             pmx_dtype view, uint64_t min_version, uint64_t* versions,
                             pmx_op** out) {
  if (!out) return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_pull: no op pointer");
  pmx_op* op;
  pmx_status st = px_pull_op_new(c, n, tensors, dst, view, min_version, versions, &op);
  if (st != PMX_OK) return st;
  st = pull_start(op, false);
  if (st != PMX_OK) {
    px_op_free(op);
    return st;
  }
  *out = op;
  return PMX_OK;
}

pmx_status pmx_pull_async(pmx_client* c, size_t n, pmx_tensor* const* tensors, void* const* dst,
                          uint64_t min_version, uint64_t* versions, pmx_op** out) {
  return pmx_pull_as_async(c, n, tensors, dst, 0, min_version, versions, out);
}

#define HEAL_ROUNDS 3

/* Records what each successfully pulled buffer now holds (tensors whose chunks all
 * decoded), for the next pull's UNCHANGED and delta answers, and its version for
 * versions_out (written only when the whole pull succeeds). */
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
    op->vres[op->orig[i]] = op->vmin[i];
  }
  pthread_mutex_unlock(&c->mu);
}

static pmx_status pull_finish(pmx_op* op, pmx_status st) {
  if (st == PMX_OK && op->ti != op->n) {
    px_op_set_error(op, PMX_ERR_PROTOCOL, "Pull: the stream ended after %u of %zu tensors", op->ti,
                    op->n);
    st = op->status;
  }
  /* Chunks that failed their checksum left their buffer as it was: pull those tensors
   * again in full (no base), a bounded number of times. */
  while (st == PMX_OK) {
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
      px_op_set_error(op, PMX_ERR_DATA_LOSS, "Pull: checksum mismatch persists after %d full pulls",
                   HEAL_ROUNDS);
      st = op->status;
      break;
    }
    op->n = k;
    st = pull_start(op, false);
    if (st != PMX_OK) break;
    px_op_wait_call(op);
    st = op->status;
    if (st == PMX_OK && op->ti != op->n)
      px_op_set_error(op, PMX_ERR_PROTOCOL, "Pull: the stream ended early"), st = op->status;
  }
  if (st == PMX_OK && op->versions_out)
    memcpy(op->versions_out, op->vres, op->n_caller * sizeof *op->vres);
  return st;
}

const px_op_kind px_pull_kind = {"Pull", pull_start, pull_finish};
