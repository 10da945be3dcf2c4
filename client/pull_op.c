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

/* Lists chunk ci of tensor ti as failed; false when out of memory. */
static bool bad_add(pmx_op* op, uint32_t ti, uint32_t ci) {
  if (op->nbad == op->capbad) {
    size_t cap = op->capbad ? op->capbad * 2 : 8;
    px_bad_chunk* l = realloc(op->badl, cap * sizeof *l);
    if (!l) return false;
    op->badl = l;
    op->capbad = cap;
  }
  op->badl[op->nbad++] = (px_bad_chunk){ti, ci};
  op->bad[ti] = true;
  return true;
}

bool px_pull_take_chunk(pmx_op* op, const px_iov* seg, size_t nseg, size_t wire) {
  px_chunk h;
  char err[200];
  pmx_client* c = op->client;
  if (px_chunk_parse(PX_CHUNK_PULL, seg, nseg, &h, err, sizeof err) != 0) {
    px_op_set_error(op, PMX_ERR_PROTOCOL, "Pull: %s", err);
    return false;
  }
  if (op->sel ? op->ki >= op->nsel : op->ti >= op->n) {
    px_op_set_error(op, PMX_ERR_PROTOCOL, "Pull: more chunks than requested");
    return false;
  }
  pmx_tensor* t = op->tensors[op->ti];
  const uint32_t ci = op->sel ? op->sel[op->ki] : px_tensor_held_chunk(t, op->ci);
  const int w = view_width(op, t);
  const uint32_t want_dtype = w == 2 && t->dtype == PMX_F32 ? PMX_BF16 : (uint32_t)t->dtype;
  uint64_t first = (uint64_t)ci * t->chunk_elems;
  uint64_t elems = t->numel - first < t->chunk_elems ? t->numel - first : t->chunk_elems;
  uint8_t* dst = (uint8_t*)op->bufs[op->ti] + first * (uint64_t)w;
  if (h.tensor_id != t->id || h.chunk != ci || h.dtype != want_dtype ||
      h.version < op->min_version) {
    px_op_set_error(op, PMX_ERR_PROTOCOL,
                 "Pull: unexpected chunk (tensor %u chunk %u version %llu dtype %u), wanted "
                 "tensor %u chunk %u", h.tensor_id, h.chunk, (unsigned long long)h.version,
                 h.dtype, t->id, ci);
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
     * untouched; the chunk is pulled again once the stream ends. */
    atomic_fetch_add(&c->checksum_failures, 1);
    if (!bad_add(op, op->ti, h.chunk)) {
      px_op_set_error(op, PMX_ERR_NO_MEMORY, "Pull: out of memory");
      return false;
    }
    px_warn("Pull: tensor '%s' chunk %u: %s; the chunk is pulled again", t->name, h.chunk, err);
  }
  if (h.encoding == PX_ENC_UNCHANGED) atomic_fetch_add(&c->pull_unchanged, 1);
  if (h.version < op->vmin[op->ti]) op->vmin[op->ti] = h.version;
  if (h.version > op->vmax[op->ti]) op->vmax[op->ti] = h.version;
  atomic_fetch_add(&c->pull_chunks, 1);
  atomic_fetch_add(&c->pull_raw, elems * (uint64_t)w);
  atomic_fetch_add(&c->pull_wire, wire);
  if (op->sel) {
    op->ki++;
  } else if (++op->ci == px_tensor_held(t)) {
    op->ci = 0;
    op->ti++;
    px_op_skip_empty(op);
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
  op->nbad = 0;
  op->ti = op->ci = 0;
  px_op_skip_empty(op);
}

uint8_t* px_pull_request_pack(pmx_op* op, size_t* len) {
  /* a healing pull: the chosen chunks of one tensor, in full */
  size_t n = op->sel ? 1 : op->n;
  uint32_t* ids = malloc(n * sizeof *ids);
  if (!ids) return NULL;
  bool any_have = false;
  for (size_t i = 0; i < n; i++) {
    ids[i] = op->tensors[op->sel ? op->ti : i]->id;
    any_have |= !op->sel && op->have[i] != UINT64_MAX;
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
  req.n_chunks = op->sel ? op->nsel : 0;
  req.chunks = (uint32_t*)op->sel;
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

/* Starts the Pull call of op's request. */
static pmx_status call_start(pmx_op* op) {
  pmx_client* c = op->client;
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

/* Starts the Pull call of op (its tensors, bufs, view, min_version and have set). */
static pmx_status pull_start(pmx_op* op, bool retry) {
  pull_reset(op, retry);
  return call_start(op);
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
  op->vres = malloc(n * sizeof *op->vres);
  if (!op->have || !op->vmin || !op->vmax || !op->bad || !op->vres) {
    px_op_free(op);
    return px_fail(PMX_ERR_NO_MEMORY, "pmx_pull: out of memory");
  }
  /* What each buffer holds; a buffer being pulled into holds nothing certain until done. */
  pthread_mutex_lock(&c->mu);
  for (size_t i = 0; i < n; i++) {
    pmx_tensor* t = tensors[i];
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

pmx_status px_pull_as_async(pmx_client* c, size_t n, pmx_tensor* const* tensors, void* const* dst,
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
    op->vres[i] = op->vmin[i];
  }
  pthread_mutex_unlock(&c->mu);
}

/* Pulls chunks sel[0..nsel) of tensor ti again, in full; those that fail once more are
 * listed again. */
static pmx_status heal_tensor(pmx_op* op, uint32_t ti, const uint32_t* sel, uint32_t nsel) {
  op->ti = ti;
  op->sel = sel;
  op->nsel = nsel;
  op->ki = 0;
  pmx_status st = call_start(op);
  if (st == PMX_OK) {
    px_op_wait_call(op);
    st = op->status;
    if (st == PMX_OK && op->ki != nsel) {
      px_op_set_error(op, PMX_ERR_PROTOCOL, "Pull: the stream ended after %u of %u chunks pulled "
                      "again", op->ki, nsel);
      st = op->status;
    }
  }
  op->sel = NULL;
  op->ti = (uint32_t)op->n;
  return st;
}

/* Chunks that failed their checksum left their part of the buffer as it was: pull them
 * again (each tensor's in one call), a bounded number of rounds. */
static pmx_status heal(pmx_op* op) {
  for (int round = 1; op->nbad > 0; round++) {
    if (round > HEAL_ROUNDS) {
      px_op_set_error(op, PMX_ERR_DATA_LOSS, "Pull: tensor '%s' chunk %u still fails its "
                      "checksum after %d pulls of it", op->tensors[op->badl[0].ti]->name,
                      op->badl[0].ci, HEAL_ROUNDS + 1);
      return op->status;
    }
    uint32_t* sel = malloc(op->nbad * sizeof *sel);
    if (!sel) {
      px_op_set_error(op, PMX_ERR_NO_MEMORY, "Pull: out of memory");
      return op->status;
    }
    /* this round's list; chunks that fail again go to a new one */
    px_bad_chunk* failed = op->badl;
    size_t nfailed = op->nbad;
    op->badl = NULL;
    op->nbad = op->capbad = 0;
    pmx_status st = PMX_OK;
    for (size_t a = 0, b; a < nfailed && st == PMX_OK; a = b) {
      /* the chunks of one tensor are listed together, in ascending order */
      for (b = a; b < nfailed && failed[b].ti == failed[a].ti; b++) sel[b - a] = failed[b].ci;
      st = heal_tensor(op, failed[a].ti, sel, (uint32_t)(b - a));
    }
    free(failed);
    free(sel);
    if (st != PMX_OK) return st;
  }
  return PMX_OK;
}

static pmx_status pull_finish(pmx_op* op, pmx_status st) {
  if (st == PMX_OK && op->ti != op->n) {
    px_op_set_error(op, PMX_ERR_PROTOCOL, "Pull: the stream ended after %u of %zu tensors", op->ti,
                    op->n);
    st = op->status;
  }
  if (st == PMX_OK) {
    record_pulled(op); /* the tensors that came whole, even if healing fails */
    st = heal(op);
  }
  if (st == PMX_OK) {
    memset(op->bad, 0, op->n * sizeof *op->bad);
    record_pulled(op);
    if (op->versions_out) memcpy(op->versions_out, op->vres, op->n * sizeof *op->vres);
  }
  return st;
}

const px_op_kind px_pull_kind = {"Pull", pull_start, pull_finish, true};
