/* The wire contract of docs/protocol.md, checked against a real paramex-server (issue 12).
 *
 * Everything on the data plane here is written from docs/protocol.md alone, not from the
 * server's code: a small PullChunk reader (protobuf varints and length-delimited fields,
 * absent fields = 0, unknown fields skipped), the decoders of RAW, UNCHANGED, SHUFFLE_ZSTD
 * and DELTA_ZSTD (byte planes, zigzag, wrapping word deltas, libzstd's ZSTD_decompress),
 * the XXH3-64 checksums, the PushChunk encoder (RAW, SHUFFLE_ZSTD, a bf16 cast of an f32
 * gradient), the round to nearest even of bf16, and the reference of the server's SGD
 * (gradients summed in rank order, divided by the number of workers, lr as a float,
 * bf16 parameters updated in f32 and rounded back). Nothing from common/codec/ or
 * common/wire/ is used; the control plane goes through protobuf-c's paramex.pb-c.h.
 *
 * One server: --workers 3, --lr 0.1, no momentum, no weight decay, 4 KiB chunks (1024
 * elements for every dtype), --history 2. Tensor "w" f32 [50, 50] (chunks 1024, 1024, 452)
 * and tensor "b" bf16 [1500] (chunks 1024, 476), three steps. The test joins all three
 * ranks itself and pushes each step in the order rank 2 (bf16 cast for "w"), rank 1
 * (SHUFFLE_ZSTD), rank 0 (RAW). Every pull is decoded and must equal the reference bit
 * for bit, with the encoding, versions and base the document predicts (and the server's
 * RAW answer, and the xxh64 of Stats). Then the document's step rules (duplicate, too old,
 * ahead, checksum), a foreign pmx-server-id (ABORTED), the seeded initializers' formulas
 * and a second Leave. The tests share the server and run in order. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <xxhash.h>
#include <zstd.h>

#include "check.h"
#include "harness.h"
#include "rpc/rpc_base.h"
#include "rpc/rpc_client.h"

#define CALL_MS 10000
#define WORKERS 3
#define STEPS 3
#define CHUNK_ELEMS 1024u /* --chunk-bytes 4K / 4, for every dtype */
#define W_NUMEL 2500u
#define B_NUMEL 1500u
#define MAX_CHUNKS 3u
#define NONE UINT64_MAX /* have_versions: "nothing" */

/* proto enums (paramex.proto) */
enum { ENC_RAW = 0, ENC_UNCHANGED = 1, ENC_DELTA = 2, ENC_SHUFFLE = 3 };
enum { DT_F32 = 1, DT_BF16 = 2 };

static const float LR = (float)0.1; /* the flag, parsed as a double, used as a float */

static px_h_server g_srv;
static px_rpc_channel* g_ch;
static uint64_t g_inc[WORKERS];
static char g_server_id[96];
static uint32_t g_tid_w, g_tid_b;
static uint64_t g_seen[4]; /* pulled chunks per encoding */

/* reference parameters per version, and gradients per worker and step */
static float g_ref_w[STEPS + 1][W_NUMEL];
static uint16_t g_ref_b[STEPS + 1][B_NUMEL];
static uint16_t g_ref_v[STEPS + 1][W_NUMEL]; /* the bf16 view of w */
static float g_gw[WORKERS][STEPS][W_NUMEL];
static uint16_t g_gb[WORKERS][STEPS][B_NUMEL];

/* ---- numbers, as docs/protocol.md defines them ------------------------------------------ */

typedef union word32 {
  float f;
  uint32_t u;
} word32;

static uint32_t f32_bits(float f) { return ((word32){.f = f}).u; }
static float bits_f32(uint32_t u) { return ((word32){.u = u}).f; }

/* bf16: round to nearest even (the values here are never NaN) */
static uint16_t bf16_rne(float f) {
  uint32_t u = f32_bits(f);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static float bf16_widen(uint16_t h) { return bits_f32((uint32_t)h << 16); }

/* little-endian words of width w (2 or 4) */
static uint32_t get_word(const uint8_t* p, int w) {
  uint32_t v = 0;
  for (int b = 0; b < w; b++) v |= (uint32_t)p[b] << (8 * b);
  return v;
}

static void put_word(uint8_t* p, int w, uint32_t v) {
  for (int b = 0; b < w; b++) p[b] = (uint8_t)(v >> (8 * b));
}

static uint32_t width_mask(int w) { return w == 4 ? 0xffffffffu : 0xffffu; }

/* ---- the chunk messages (docs/protocol.md "Chunk messages") ----------------------------- */

static bool get_varint(const uint8_t** p, const uint8_t* end, uint64_t* v) {
  uint64_t r = 0;
  for (unsigned shift = 0; shift < 70; shift += 7) {
    if (*p >= end) return false;
    uint8_t b = *(*p)++;
    r |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) {
      *v = r;
      return true;
    }
  }
  return false;
}

static size_t put_varint(uint8_t* o, uint64_t v) {
  size_t n = 0;
  do { /* 7 bits a byte, least significant first; the high bit says "more follows" */
    const uint8_t low = (uint8_t)(v & 0x7f);
    v >>= 7;
    o[n++] = v ? (uint8_t)(low | 0x80) : low;
  } while (v);
  return n;
}

/* A varint field; zero values are omitted, as a proto3 encoder does. */
static size_t put_uint_field(uint8_t* o, uint32_t field, uint64_t v) {
  if (v == 0) return 0;
  size_t n = put_varint(o, (uint64_t)field << 3);
  return n + put_varint(o + n, v);
}

typedef struct pull_chunk {
  uint64_t tensor_id, chunk, version, base_version, encoding, dtype, raw_len, checksum;
  const uint8_t* payload;
  size_t payload_len;
} pull_chunk;

/* Reads a PullChunk; NULL or why not. */
static const char* pull_chunk_read(const uint8_t* buf, size_t len, pull_chunk* c) {
  memset(c, 0, sizeof *c);
  uint64_t* num[9] = {NULL, &c->tensor_id, &c->chunk, &c->version, &c->base_version,
                      &c->encoding, &c->dtype, &c->raw_len, &c->checksum};
  const uint8_t *p = buf, *end = buf + len;
  while (p < end) {
    uint64_t tag, v;
    if (!get_varint(&p, end, &tag) || (tag >> 3) == 0) return "bad tag";
    const uint64_t field = tag >> 3;
    const bool known = field <= 8 || field == 15;
    switch (tag & 7) {
      case 0: /* varint */
        if (!get_varint(&p, end, &v)) return "truncated varint";
        if (field == 15) return "payload is not length-delimited";
        if (known) *num[field] = v;
        break;
      case 2: /* length-delimited */
        if (!get_varint(&p, end, &v) || v > (uint64_t)(end - p)) return "bad length";
        if (known && field != 15) return "a number field is length-delimited";
        if (field == 15) {
          c->payload = p;
          c->payload_len = (size_t)v;
        }
        p += v;
        break;
      case 1: /* 64-bit, 32-bit: only unknown fields may use them */
      case 5:
        if (known) return "a known field has a fixed-width wire type";
        if ((uint64_t)(end - p) < ((tag & 7) == 1 ? 8u : 4u)) return "truncated fixed field";
        p += (tag & 7) == 1 ? 8 : 4;
        break;
      default:
        return "unknown wire type";
    }
  }
  return NULL;
}

/* Decodes c into held (n elements of width w), which holds the client's base for DELTA_ZSTD
 * and UNCHANGED: into scratch memory, checked against the checksum, then copied. NULL or
 * why not (held unchanged then). */
static const char* chunk_decode(const pull_chunk* c, uint8_t* held, size_t n, int w) {
  static uint8_t planes[4 * CHUNK_ELEMS], out[4 * CHUNK_ELEMS];
  const size_t raw = n * (size_t)w;
  const uint8_t* result = out;
  if (c->raw_len != raw) return "raw_len";
  switch (c->encoding) {
    case ENC_RAW:
      if (c->payload_len != raw) return "RAW payload length";
      result = c->payload;
      break;
    case ENC_UNCHANGED:
      if (c->payload_len != 0) return "UNCHANGED with a payload";
      result = held;
      break;
    case ENC_SHUFFLE:
    case ENC_DELTA: {
      if (c->payload_len == 0) return "empty zstd payload";
      if (ZSTD_getFrameContentSize(c->payload, c->payload_len) != raw)
        return "zstd frame without the content size raw_len";
      size_t got = ZSTD_decompress(planes, raw, c->payload, c->payload_len);
      if (ZSTD_isError(got) || got != raw) return "zstd frame does not decode to raw_len bytes";
      for (size_t i = 0; i < n; i++) {
        uint32_t z = 0;
        for (int b = 0; b < w; b++) z |= (uint32_t)planes[(size_t)b * n + i] << (8 * b);
        uint32_t word = z;
        if (c->encoding == ENC_DELTA) {
          uint32_t d = (z >> 1) ^ (0u - (z & 1u));
          word = (get_word(held + i * (size_t)w, w) + d) & width_mask(w);
        }
        put_word(out + i * (size_t)w, w, word);
      }
      break;
    }
    default:
      return "unknown encoding";
  }
  if (XXH3_64bits(result, raw) != c->checksum) return "checksum mismatch";
  memmove(held, result, raw);
  return NULL;
}

/* One PushChunk: the fields and the payload's tag and length in head, the payload in body. */
typedef struct push_msg {
  uint8_t head[96];
  uint8_t* body;
  size_t body_len;
} push_msg;

typedef enum { PUSH_RAW, PUSH_SHUFFLE, PUSH_BF16_CAST } push_mode;

typedef struct chunk_ref {
  uint32_t tensor_id, chunk;
  int width;                /* of the tensor */
  const uint8_t* elems;     /* the chunk's elements, as the tensor's dtype */
  size_t n;
} chunk_ref;

static size_t push_msg_build(push_msg* m, uint32_t rank, uint64_t step, const chunk_ref* cr,
                             push_mode mode, bool bad_checksum) {
  int w = cr->width;
  uint32_t dtype = w == 4 ? DT_F32 : DT_BF16;
  size_t raw = cr->n * (size_t)w;
  uint8_t* data = malloc(raw);
  CHECK(data, "out of memory");
  memcpy(data, cr->elems, raw);
  if (mode == PUSH_BF16_CAST && w == 4) { /* f32 gradient sent as bf16 */
    for (size_t i = 0; i < cr->n; i++)
      put_word(data + 2 * i, 2, bf16_rne(bits_f32(get_word(cr->elems + 4 * i, 4))));
    w = 2;
    dtype = DT_BF16;
    raw = cr->n * 2;
  }
  uint64_t sum = XXH3_64bits(data, raw) ^ (bad_checksum ? 1u : 0u);
  uint32_t enc = ENC_RAW;
  m->body = data;
  m->body_len = raw;
  if (mode == PUSH_SHUFFLE) {
    uint8_t* planes = malloc(raw);
    size_t cap = ZSTD_compressBound(raw);
    uint8_t* z = malloc(cap);
    CHECK(planes && z, "out of memory");
    for (size_t i = 0; i < cr->n; i++)
      for (int b = 0; b < w; b++) planes[(size_t)b * cr->n + i] = data[i * (size_t)w + (size_t)b];
    size_t zl = ZSTD_compress(z, cap, planes, raw, 1);
    CHECK(!ZSTD_isError(zl), "ZSTD_compress: %s", ZSTD_getErrorName(zl));
    free(planes);
    free(data);
    m->body = z;
    m->body_len = zl;
    enc = ENC_SHUFFLE;
  }
  size_t h = 0;
  h += put_uint_field(m->head + h, 1, rank);
  h += put_uint_field(m->head + h, 2, g_inc[rank]);
  h += put_uint_field(m->head + h, 3, step);
  h += put_uint_field(m->head + h, 4, cr->tensor_id);
  h += put_uint_field(m->head + h, 5, cr->chunk);
  h += put_uint_field(m->head + h, 6, enc);
  h += put_uint_field(m->head + h, 7, dtype);
  h += put_uint_field(m->head + h, 8, raw);
  h += put_uint_field(m->head + h, 9, sum);
  h += put_varint(m->head + h, 15u << 3 | 2u);
  h += put_varint(m->head + h, m->body_len);
  return h;
}

/* ---- the tensors as a client holds them ---------------------------------------------------- */

typedef struct tview {
  const char* name;
  uint32_t* id;
  uint32_t numel;
  int width;
  uint32_t dtype;          /* PullChunk.dtype */
  bool view_bf16;          /* pulled with view = DTYPE_BF16 */
  uint8_t held[4 * W_NUMEL];
  uint64_t have;           /* version in held, or NONE */
  const uint8_t* fixed;    /* what every version must hold, or NULL: the reference's */
} tview;

#define TVIEW(nm, idp, numel_, w, dt, view) \
  {.name = nm, .id = idp, .numel = numel_, .width = w, .dtype = dt, .view_bf16 = view, .have = NONE}
static tview g_tw = TVIEW("w", &g_tid_w, W_NUMEL, 4, DT_F32, false);
static tview g_tb = TVIEW("b", &g_tid_b, B_NUMEL, 2, DT_BF16, false);
static tview g_tv = TVIEW("w (bf16 view)", &g_tid_w, W_NUMEL, 2, DT_BF16, true);

static const uint8_t* expected(const tview* t, uint64_t v) {
  if (t->fixed) return t->fixed;
  if (t == &g_tw) return (const uint8_t*)g_ref_w[v];
  if (t == &g_tb) return (const uint8_t*)g_ref_b[v];
  return (const uint8_t*)g_ref_v[v];
}

static uint32_t nchunks(const tview* t) { return (t->numel + CHUNK_ELEMS - 1) / CHUNK_ELEMS; }

static size_t chunk_n(const tview* t, uint32_t k) {
  return k + 1 < nchunks(t) ? CHUNK_ELEMS : t->numel - (nchunks(t) - 1) * CHUNK_ELEMS;
}

/* ---- calls ------------------------------------------------------------------------------- */

static void expect_status(const char* what, int got, int want, const char* details) {
  CHECK(got == want, "%s: got %s (%d) '%s', want %s", what,
        got >= 0 ? px_status_name(got) : "harness error", got, details, px_status_name(want));
}

static int join(uint32_t rank, Paramex__V1__JoinResponse** out, char* det, size_t cap) {
  Paramex__V1__JoinRequest req = PARAMEX__V1__JOIN_REQUEST__INIT;
  req.rank = rank;
  req.world_size = WORKERS;
  req.name = (char*)"it_protocol";
  return px_h_unary_pb(g_ch, PX_H_PATH_JOIN, &req.base, &paramex__v1__join_response__descriptor,
                       (ProtobufCMessage**)out, CALL_MS, det, cap);
}

static int declare_init(uint32_t rank, uint64_t incarnation, const char* name, uint32_t dtype,
                        const uint64_t* shape, size_t ndim, Paramex__V1__Initializer* init,
                        const void* values, size_t values_len, uint64_t offset,
                        Paramex__V1__DeclareResponse** out, char* det, size_t cap) {
  Paramex__V1__DeclareRequest req = PARAMEX__V1__DECLARE_REQUEST__INIT;
  req.initializer = init;
  req.name = (char*)name;
  req.dtype = (Paramex__V1__DType)dtype;
  req.n_shape = ndim;
  req.shape = (uint64_t*)shape;
  req.values.data = (uint8_t*)values;
  req.values.len = values_len;
  req.values_offset = offset;
  req.worker_id = rank;
  req.incarnation = incarnation;
  return px_h_unary_pb(g_ch, PX_H_PATH_DECLARE, &req.base,
                       &paramex__v1__declare_response__descriptor, (ProtobufCMessage**)out,
                       CALL_MS, det, cap);
}

static int declare(uint32_t rank, uint64_t incarnation, const char* name, uint32_t dtype,
                   const uint64_t* shape, size_t ndim, const void* values, size_t values_len,
                   uint64_t offset, Paramex__V1__DeclareResponse** out, char* det, size_t cap) {
  return declare_init(rank, incarnation, name, dtype, shape, ndim, NULL, values, values_len,
                      offset, out, det, cap);
}

/* A packed PullRequest of worker 0 (malloc'd). */
static uint8_t* pull_request(tview* const* ts, size_t nts, const uint64_t* have,
                             uint64_t min_version, bool accept, size_t* len) {
  uint32_t ids[4];
  Paramex__V1__Encoding acc[2] = {PARAMEX__V1__ENCODING__ENCODING_DELTA_ZSTD,
                                  PARAMEX__V1__ENCODING__ENCODING_SHUFFLE_ZSTD};
  Paramex__V1__PullRequest req = PARAMEX__V1__PULL_REQUEST__INIT;
  for (size_t i = 0; i < nts; i++) ids[i] = *ts[i]->id;
  req.worker_id = 0;
  req.incarnation = g_inc[0];
  req.n_tensor_ids = nts;
  req.tensor_ids = ids;
  req.n_have_versions = have ? nts : 0;
  req.have_versions = (uint64_t*)have;
  req.min_version = min_version;
  req.view = ts[0]->view_bf16 ? PARAMEX__V1__DTYPE__DTYPE_BF16 : PARAMEX__V1__DTYPE__DTYPE_UNSPECIFIED;
  req.n_accept = accept ? 2 : 0;
  req.accept = acc;
  *len = paramex__v1__pull_request__get_packed_size(&req);
  uint8_t* buf = malloc(*len ? *len : 1);
  CHECK(buf, "out of memory");
  paramex__v1__pull_request__pack(&req, buf);
  return buf;
}

/* Checks the chunks of a finished pull of ts: each at version want_v with encoding enc[i]
 * for tensor i, base_version as the document says, decoded into the held buffers and
 * equal to the reference. */
static void take_pull(const char* what, px_h_result* r, tview* const* ts, size_t nts,
                      const uint64_t* have, uint64_t want_v, const int* enc) {
  CHECK(r->status == PX_ST_OK, "%s: pull: %s '%s'", what, px_status_name(r->status), r->details);
  size_t m = 0;
  for (size_t i = 0; i < nts; i++) {
    tview* t = ts[i];
    CHECK(!have || have[i] == NONE || t->have == have[i], "%s: %s holds version %" PRIu64
          ", not the %" PRIu64 " asked with", what, t->name, t->have, have ? have[i] : 0);
    for (uint32_t k = 0; k < nchunks(t); k++, m++) {
      CHECK(m < r->nresp, "%s: only %zu chunk messages", what, r->nresp);
      pull_chunk c;
      const char* err = pull_chunk_read(r->resp[m], r->resp_len[m], &c);
      CHECK(!err, "%s: %s chunk %" PRIu32 ": %s", what, t->name, k, err);
      CHECK(c.tensor_id == *t->id && c.chunk == k && c.dtype == t->dtype,
            "%s: message %zu is tensor %" PRIu64 " chunk %" PRIu64 " dtype %" PRIu64
            ", want %" PRIu32 " %" PRIu32 " %" PRIu32, what, m, c.tensor_id, c.chunk, c.dtype,
            *t->id, k, t->dtype);
      CHECK(c.version == want_v, "%s: %s chunk %" PRIu32 " at version %" PRIu64 ", want %" PRIu64,
            what, t->name, k, c.version, want_v);
      CHECK((int)c.encoding == enc[i], "%s: %s chunk %" PRIu32 " came as encoding %" PRIu64
            ", the document says %d", what, t->name, k, c.encoding, enc[i]);
      uint64_t want_base = enc[i] == ENC_DELTA ? have[i] : enc[i] == ENC_UNCHANGED ? want_v : 0;
      CHECK(c.base_version == want_base, "%s: %s chunk %" PRIu32 ": base_version %" PRIu64
            ", want %" PRIu64, what, t->name, k, c.base_version, want_base);
      uint8_t* dst = t->held + (size_t)k * CHUNK_ELEMS * (size_t)t->width;
      err = chunk_decode(&c, dst, chunk_n(t, k), t->width);
      CHECK(!err, "%s: %s chunk %" PRIu32 " (encoding %" PRIu64 "): %s", what, t->name, k,
            c.encoding, err);
      g_seen[c.encoding]++;
    }
    CHECK(memcmp(t->held, expected(t, want_v), (size_t)t->numel * (size_t)t->width) == 0,
          "%s: %s differs from the reference at version %" PRIu64, what, t->name, want_v);
    t->have = want_v;
  }
  CHECK(m == r->nresp, "%s: %zu chunk messages, want %zu", what, r->nresp, m);
}

/* Pulls ts (holding have[i], NULL: nothing) at min_version and checks it (take_pull). */
static void pull_check(const char* what, tview* const* ts, size_t nts, const uint64_t* have,
                       uint64_t min_version, bool accept, uint64_t want_v, const int* enc) {
  size_t len;
  uint8_t* req = pull_request(ts, nts, have, min_version, accept, &len);
  px_h_msg msg = {req, len, NULL, 0};
  px_h_result r;
  px_h_call(g_ch, PX_H_PATH_PULL, &msg, 1, CALL_MS, &r);
  free(req);
  take_pull(what, &r, ts, nts, have, want_v, enc);
  px_h_result_free(&r);
}

/* Every chunk of w and b for worker rank's gradient of step s, in one Push call (a step
 * past the job's carries the last step's gradient: it is refused anyway).
 * bad_chunk: the index of a chunk sent with a wrong checksum (-1: none). */
static int push_step(uint32_t rank, uint64_t s, push_mode mode, int bad_chunk, uint32_t* acc,
                     uint32_t* dup, char* det, size_t cap) {
  push_msg pm[5];
  px_h_msg msgs[5];
  size_t n = 0;
  const uint64_t gs = s < STEPS ? s : STEPS - 1;
  for (uint32_t k = 0; k < nchunks(&g_tw); k++, n++) {
    chunk_ref cr = {g_tid_w, k, 4, (const uint8_t*)&g_gw[rank][gs][k * CHUNK_ELEMS], chunk_n(&g_tw, k)};
    size_t h = push_msg_build(&pm[n], rank, s, &cr, mode, bad_chunk == (int)n);
    msgs[n] = (px_h_msg){pm[n].head, h, pm[n].body, pm[n].body_len};
  }
  for (uint32_t k = 0; k < nchunks(&g_tb); k++, n++) {
    chunk_ref cr = {g_tid_b, k, 2, (const uint8_t*)&g_gb[rank][gs][k * CHUNK_ELEMS], chunk_n(&g_tb, k)};
    size_t h = push_msg_build(&pm[n], rank, s, &cr, mode, bad_chunk == (int)n);
    msgs[n] = (px_h_msg){pm[n].head, h, pm[n].body, pm[n].body_len};
  }
  px_h_result r;
  int st = px_h_call(g_ch, PX_H_PATH_PUSH, msgs, n, CALL_MS, &r);
  snprintf(det, cap, "%s", r.details);
  Paramex__V1__PushResponse* pr =
      st == PX_ST_OK && r.nresp == 1
          ? paramex__v1__push_response__unpack(NULL, r.resp_len[0], r.resp[0])
          : NULL;
  px_h_result_free(&r);
  CHECK(st != PX_ST_OK || pr, "an OK Push without exactly one PushResponse that unpacks");
  *acc = pr ? pr->accepted : 0;
  *dup = pr ? pr->duplicate : 0;
  if (pr) paramex__v1__push_response__free_unpacked(pr, NULL);
  for (size_t i = 0; i < n; i++) free(pm[i].body);
  return st;
}

/* Step s of the reference: rank-order sum (rank 2's f32 gradient as its bf16 cast), mean
 * over the 3 workers, p - lr * mean in f32; bf16 parameters through f32 and back (RNE). */
static void reference_step(uint64_t s) {
  for (size_t i = 0; i < W_NUMEL; i++) {
    float sum = g_gw[0][s][i];
    sum = sum + g_gw[1][s][i];
    sum = sum + bf16_widen(bf16_rne(g_gw[2][s][i]));
    float g = sum / (float)WORKERS;
    g_ref_w[s + 1][i] = g_ref_w[s][i] - LR * g;
    g_ref_v[s + 1][i] = bf16_rne(g_ref_w[s + 1][i]);
  }
  for (size_t i = 0; i < B_NUMEL; i++) {
    float sum = bf16_widen(g_gb[0][s][i]);
    sum = sum + bf16_widen(g_gb[1][s][i]);
    sum = sum + bf16_widen(g_gb[2][s][i]);
    float g = sum / (float)WORKERS;
    g_ref_b[s + 1][i] = bf16_rne(bf16_widen(g_ref_b[s][i]) - LR * g);
  }
}

static void expect_stats_at(const char* what, uint64_t v) {
  char det[512];
  Paramex__V1__StatsResponse* st = px_h_stats(g_ch, det, sizeof det);
  CHECK(st, "%s: Stats: %s", what, det);
  const Paramex__V1__TensorStats* tw = px_h_stats_tensor(st, "w");
  const Paramex__V1__TensorStats* tb = px_h_stats_tensor(st, "b");
  CHECK(tw && tb, "%s: Stats lacks w or b", what);
  CHECK(tw->version_min == v && tw->version_max == v && tb->version_min == v && tb->version_max == v,
        "%s: versions w %" PRIu64 "..%" PRIu64 " b %" PRIu64 "..%" PRIu64 ", want %" PRIu64, what,
        tw->version_min, tw->version_max, tb->version_min, tb->version_max, v);
  CHECK(tw->checksum == XXH64(g_ref_w[v], sizeof g_ref_w[v], 0) &&
            tb->checksum == XXH64(g_ref_b[v], sizeof g_ref_b[v], 0),
        "%s: Stats checksums are not the xxh64 of the reference", what);
  protobuf_c_message_free_unpacked(&st->base, NULL);
}

/* A float in [-1, 1) with a full 24-bit mantissa, from (i, r, s). */
static float unit_noise(uint64_t i, uint64_t r, uint64_t s) {
  uint64_t z = (i * 1000003u + r * 7919u + s * 104729u + 1u) * UINT64_C(0x9E3779B97F4A7C15);
  z = (z ^ (z >> 31)) * UINT64_C(0xBF58476D1CE4E5B9);
  z ^= z >> 29;
  return (float)((double)(z >> 40) / 16777216.0) * 2.0f - 1.0f;
}

/* ---- fixture ----------------------------------------------------------------------------- */

/* The initial values, the gradients and the reference of every version. */
static void make_reference(void) {
  for (size_t i = 0; i < W_NUMEL; i++) {
    g_ref_w[0][i] = 0.25f + (float)(i % 61) / 64.0f;
    g_ref_v[0][i] = bf16_rne(g_ref_w[0][i]);
  }
  for (size_t i = 0; i < B_NUMEL; i++) g_ref_b[0][i] = bf16_rne(0.5f + (float)(i % 37) / 64.0f);
  /* Most gradients are small multiples of 2^-16, so that deltas compress; every eighth is
   * large with a full mantissa, so that the order of the sum, the float lr, the division
   * and the rounding of bf16 all show in the bits. */
  for (int r = 0; r < WORKERS; r++) {
    const float scale = 1.0f + (float)r / 3.0f;
    for (int s = 0; s < STEPS; s++) {
      for (size_t i = 0; i < W_NUMEL; i++)
        g_gw[r][s][i] = i % 8 == 0 ? unit_noise(i, (uint64_t)r, (uint64_t)s) * 4.0f * scale
                                   : (float)((int)((i * 7 + (size_t)r * 3 + (size_t)s * 5) % 17) - 8) *
                                         scale / 65536.0f;
      for (size_t i = 0; i < B_NUMEL; i++)
        g_gb[r][s][i] = bf16_rne(i % 8 == 0 ? unit_noise(i, (uint64_t)r + 8, (uint64_t)s) * 2.0f * scale
                                            : (float)((int)((i * 5 + (size_t)r + (size_t)s * 3) % 13) - 6) *
                                                  scale / 16.0f);
    }
  }
  for (uint64_t s = 0; s < STEPS; s++) reference_step(s);
}

static int group_setup(void** state) {
  (void)state;
  px_rpc_init();
  char err[512] = "";
  const char* args[] = {"--workers", "3", "--lr", "0.1", "--momentum", "0", "--weight-decay", "0",
                        "--chunk-bytes", "4K", "--history", "2", "--threads", "2",
                        "--cq-threads", "1", "--worker-timeout", "0", NULL};
  const bool up = px_h_server_start(&g_srv, args, NULL, 10000, err, sizeof err) == 0 &&
                  (g_ch = px_rpc_channel_create(g_srv.addr, err, sizeof err)) != NULL;
  if (!up) fprintf(stderr, "it_protocol: no server: %s\n", err);
  make_reference();
  return up ? 0 : -1;
}

/* The server must end with status 0 on SIGTERM, and write nothing after its ready line. */
static int group_teardown(void** state) {
  (void)state;
  px_rpc_channel_destroy(g_ch);
  int ws = 0;
  size_t extra = 0;
  const bool stopped = g_srv.pid <= 0 || px_h_server_stop(&g_srv, 15000, &ws, &extra) == 0;
  const bool clean = stopped && WIFEXITED(ws) && WEXITSTATUS(ws) == 0 && extra == 0;
  char how[96] = "no exit within 15 s";
  if (stopped) px_h_describe_wstatus(ws, how, sizeof how);
  if (!clean) fprintf(stderr, "it_protocol: server after SIGTERM: %s, %zu more stdout bytes\n", how, extra);
  px_h_kill_all();
  px_rpc_shutdown();
  return clean ? 0 : -1;
}

/* ---- tests ------------------------------------------------------------------------------- */

/* Join the three ranks; declare w in two pieces of values and b in one; the Declare rules. */
static void test_join_and_declare(void** state) {
  (void)state;
  char det[512];
  for (uint32_t r = 0; r < WORKERS; r++) {
    Paramex__V1__JoinResponse* jr = NULL;
    expect_status("join", join(r, &jr, det, sizeof det), PX_ST_OK, det);
    CHECK(jr->worker_id == r && jr->world_size == WORKERS && jr->incarnation != 0 &&
              jr->lease_ms == 0 && jr->server_id && jr->server_id[0],
          "JoinResponse of rank %" PRIu32 ": worker_id %" PRIu32 " world %" PRIu32 " lease %" PRIu32,
          r, jr->worker_id, jr->world_size, jr->lease_ms);
    g_inc[r] = jr->incarnation;
    snprintf(g_server_id, sizeof g_server_id, "%s", jr->server_id);
    protobuf_c_message_free_unpacked(&jr->base, NULL);
  }
  CHECK(g_inc[0] != g_inc[1] && g_inc[1] != g_inc[2], "incarnations repeat");
  /* as libparamex does: every later call names the server it joined */
  px_rpc_channel_set_header(g_ch, "pmx-server-id", g_server_id);

  const uint64_t shape_w[2] = {50, 50}, shape_b[1] = {B_NUMEL};
  Paramex__V1__DeclareResponse* dr = NULL;
  int st = declare(0, g_inc[0], "w", DT_F32, shape_w, 2, g_ref_w[0], 1500 * sizeof(float), 0, &dr,
                   det, sizeof det);
  expect_status("declare w, first piece", st, PX_ST_OK, det);
  CHECK(dr->created && dr->upload && dr->version == 0 && dr->chunk_elems == CHUNK_ELEMS &&
            dr->num_chunks == 3,
        "declare w: created %d upload %d version %" PRIu64 " chunk_elems %" PRIu32 " chunks %" PRIu32,
        dr->created, dr->upload, dr->version, dr->chunk_elems, dr->num_chunks);
  g_tid_w = dr->tensor_id;
  protobuf_c_message_free_unpacked(&dr->base, NULL);
  st = declare(0, g_inc[0], "w", DT_F32, shape_w, 2, &g_ref_w[0][1500], 1000 * sizeof(float), 1500,
               &dr, det, sizeof det);
  expect_status("declare w, second piece", st, PX_ST_OK, det);
  CHECK(!dr->created && dr->upload && dr->tensor_id == g_tid_w, "second piece: created %d upload %d",
        dr->created, dr->upload);
  protobuf_c_message_free_unpacked(&dr->base, NULL);

  st = declare(1, g_inc[1], "w", DT_F32, shape_w, 2, NULL, 0, 0, &dr, det, sizeof det);
  expect_status("declare w by rank 1", st, PX_ST_OK, det);
  CHECK(!dr->created && !dr->upload && dr->tensor_id == g_tid_w, "rank 1's declare of w");
  protobuf_c_message_free_unpacked(&dr->base, NULL);
  st = declare(2, g_inc[2], "w", DT_F32, shape_w, 2, g_ref_w[0], 100 * sizeof(float), 0, &dr, det,
               sizeof det);
  expect_status("declare w by rank 2 with the same values", st, PX_ST_OK, det);
  protobuf_c_message_free_unpacked(&dr->base, NULL);
  float other[100];
  memcpy(other, g_ref_w[0], sizeof other);
  other[7] += 1.0f;
  st = declare(2, g_inc[2], "w", DT_F32, shape_w, 2, other, sizeof other, 0, NULL, det, sizeof det);
  expect_status("declare w by rank 2 with other values", st, PX_ST_FAILED_PRECONDITION, det);
  CHECK(strstr(det, "element 7"), "the refusal does not name element 7: '%s'", det);

  st = declare(0, g_inc[0], "b", DT_BF16, shape_b, 1, g_ref_b[0], sizeof g_ref_b[0], 0, &dr, det,
               sizeof det);
  expect_status("declare b", st, PX_ST_OK, det);
  CHECK(dr->created && !dr->upload && dr->chunk_elems == CHUNK_ELEMS && dr->num_chunks == 2 &&
            dr->tensor_id != g_tid_w,
        "declare b: created %d upload %d chunk_elems %" PRIu32 " chunks %" PRIu32, dr->created,
        dr->upload, dr->chunk_elems, dr->num_chunks);
  g_tid_b = dr->tensor_id;
  protobuf_c_message_free_unpacked(&dr->base, NULL);

  /* incarnation 0: a lookup only */
  st = declare(0, 0, "w", DT_F32, shape_w, 2, NULL, 0, 0, &dr, det, sizeof det);
  expect_status("lookup of w without a join", st, PX_ST_OK, det);
  CHECK(!dr->created && dr->tensor_id == g_tid_w, "lookup of w");
  protobuf_c_message_free_unpacked(&dr->base, NULL);
  st = declare(0, 0, "nope", DT_F32, shape_b, 1, NULL, 0, 0, NULL, det, sizeof det);
  expect_status("creating without a join", st, PX_ST_FAILED_PRECONDITION, det);
}

/* Version 0: full pulls (SHUFFLE_ZSTD when accepted, RAW otherwise), UNCHANGED for the
 * version held, and the bf16 view with its own dtype and chunk bytes. */
static void test_pull_version_0(void** state) {
  (void)state;
  tview* wb[2] = {&g_tw, &g_tb};
  const int shuffle2[2] = {ENC_SHUFFLE, ENC_SHUFFLE}, raw2[2] = {ENC_RAW, ENC_RAW};
  const int unchanged2[2] = {ENC_UNCHANGED, ENC_UNCHANGED};
  pull_check("v0 accepting zstd", wb, 2, NULL, 0, true, 0, shuffle2);
  pull_check("v0 raw", wb, 2, NULL, 0, false, 0, raw2);
  const uint64_t have0[2] = {0, 0};
  pull_check("v0 held", wb, 2, have0, 0, false, 0, unchanged2);
  tview* v[1] = {&g_tv};
  pull_check("v0 bf16 view", v, 1, NULL, 0, true, 0, shuffle2);
}

/* Three steps; after each, pulls with the previous version as base get DELTA_ZSTD (the
 * first one parked before the step existed), for the tensors and for the bf16 view. */
static void test_steps_and_delta_pulls(void** state) {
  (void)state;
  tview* wb[2] = {&g_tw, &g_tb};
  tview* v[1] = {&g_tv};
  const int delta2[2] = {ENC_DELTA, ENC_DELTA};
  char det[512];
  for (uint64_t s = 0; s < STEPS; s++) {
    const uint64_t have[2] = {s, s};
    size_t len = 0;
    uint8_t* req = NULL;
    px_h_msg msg;
    px_h_async* parked = NULL;
    if (s == 0) { /* min_version 1 before step 0 exists: it waits */
      req = pull_request(wb, 2, have, 1, true, &len);
      msg = (px_h_msg){req, len, NULL, 0};
      parked = px_h_async_start(g_ch, PX_H_PATH_PULL, &msg, 1, CALL_MS);
      CHECK(parked, "out of memory");
    }
    const push_mode modes[WORKERS] = {PUSH_RAW, PUSH_SHUFFLE, PUSH_BF16_CAST};
    for (int r = WORKERS - 1; r >= 0; r--) { /* highest rank first: held until rank 0 */
      uint32_t acc = 0, dup = 0;
      int st = push_step((uint32_t)r, s, modes[r], -1, &acc, &dup, det, sizeof det);
      expect_status("push", st, PX_ST_OK, det);
      CHECK(acc == 5 && dup == 0, "push of rank %d step %" PRIu64 ": accepted %" PRIu32
            " duplicate %" PRIu32, r, s, acc, dup);
    }
    if (parked) {
      px_h_result r;
      px_h_async_join(parked, &r);
      take_pull("parked pull of version 1", &r, wb, 2, have, 1, delta2);
      px_h_result_free(&r);
      free(req);
    } else {
      pull_check("pull of the next version", wb, 2, have, s + 1, true, s + 1, delta2);
    }
    const uint64_t vhave[1] = {s};
    pull_check("bf16 view of the next version", v, 1, vhave, s + 1, true, s + 1, delta2);
  }
  expect_stats_at("after 3 steps", STEPS);
}

/* Bases at version 3: one two steps back (a summed delta), one past the history (a full
 * chunk), the version itself (UNCHANGED), and a RAW pull; each against the reference. */
static void test_bases(void** state) {
  (void)state;
  tview* wb[2] = {&g_tw, &g_tb};
  tview* v[1] = {&g_tv};
  const int delta2[2] = {ENC_DELTA, ENC_DELTA}, shuffle2[2] = {ENC_SHUFFLE, ENC_SHUFFLE};
  const int unchanged2[2] = {ENC_UNCHANGED, ENC_UNCHANGED}, raw2[2] = {ENC_RAW, ENC_RAW};
  /* a client that still holds version 1 */
  memcpy(g_tw.held, g_ref_w[1], sizeof g_ref_w[1]);
  memcpy(g_tb.held, g_ref_b[1], sizeof g_ref_b[1]);
  g_tw.have = g_tb.have = 1;
  const uint64_t have1[2] = {1, 1}, have0[2] = {0, 0}, have3[2] = {3, 3};
  pull_check("base 1 at version 3", wb, 2, have1, 0, true, 3, delta2);
  static uint8_t from_delta_w[sizeof g_tw.held], from_delta_b[sizeof g_tb.held];
  memcpy(from_delta_w, g_tw.held, sizeof from_delta_w);
  memcpy(from_delta_b, g_tb.held, sizeof from_delta_b);
  /* version 0 is beyond --history 2: a full chunk, whatever the client holds */
  memcpy(g_tw.held, g_ref_w[0], sizeof g_ref_w[0]);
  memcpy(g_tb.held, g_ref_b[0], sizeof g_ref_b[0]);
  g_tw.have = g_tb.have = 0;
  pull_check("base 0 at version 3", wb, 2, have0, 0, true, 3, shuffle2);
  pull_check("base 3 at version 3", wb, 2, have3, 3, true, 3, unchanged2);
  pull_check("view base 3 at version 3", v, 1, have3, 3, true, 3, unchanged2);
  memset(g_tw.held, 0, sizeof g_tw.held);
  memset(g_tb.held, 0, sizeof g_tb.held);
  g_tw.have = g_tb.have = NONE;
  pull_check("raw at version 3", wb, 2, NULL, 3, false, 3, raw2);
  CHECK(memcmp(from_delta_w, g_tw.held, sizeof(float) * W_NUMEL) == 0 &&
            memcmp(from_delta_b, g_tb.held, sizeof(uint16_t) * B_NUMEL) == 0,
        "what the deltas from version 1 rebuilt differs from the RAW pull of version 3");
  for (int e = 0; e < 4; e++)
    CHECK(g_seen[e] > 0, "no pulled chunk came as encoding %d", e);
}

/* The step rules of a push at version 3, a foreign pmx-server-id, and nothing changed. */
static void test_push_rules(void** state) {
  (void)state;
  char det[512];
  uint32_t acc = 0, dup = 0;
  int st = push_step(0, 2, PUSH_RAW, -1, &acc, &dup, det, sizeof det);
  expect_status("push of the previous step", st, PX_ST_OK, det);
  CHECK(acc == 0 && dup == 5, "previous step: accepted %" PRIu32 " duplicate %" PRIu32, acc, dup);
  st = push_step(0, 1, PUSH_RAW, -1, &acc, &dup, det, sizeof det);
  expect_status("push two steps back", st, PX_ST_FAILED_PRECONDITION, det);
  st = push_step(0, 4, PUSH_RAW, -1, &acc, &dup, det, sizeof det);
  expect_status("push of a step ahead", st, PX_ST_OUT_OF_RANGE, det);
  st = push_step(0, 3, PUSH_RAW, 0, &acc, &dup, det, sizeof det);
  expect_status("push with a wrong checksum", st, PX_ST_DATA_LOSS, det);

  char err[256];
  px_rpc_channel* other = px_rpc_channel_create(g_srv.addr, err, sizeof err);
  CHECK(other, "channel: %s", err);
  px_rpc_channel_set_header(other, "pmx-server-id", "0-0");
  tview* w[1] = {&g_tw};
  size_t len;
  uint8_t* req = pull_request(w, 1, NULL, 0, false, &len);
  px_h_msg msg = {req, len, NULL, 0};
  px_h_result r;
  st = px_h_call(other, PX_H_PATH_PULL, &msg, 1, CALL_MS, &r);
  expect_status("pull naming another server", st, PX_ST_ABORTED, r.details);
  CHECK(strstr(r.details, "version 3"), "ABORTED does not name version 3: '%s'", r.details);
  px_h_result_free(&r);
  free(req);
  px_rpc_channel_destroy(other);
  expect_stats_at("after the refused pushes", STEPS);
}

/* The seeded initializers, as docs/protocol.md writes them. */
static uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
  return z ^ (z >> 31);
}

static float init_value(int kind, float a, float b, uint64_t seed, uint64_t i) {
  const uint64_t base = mix64(seed ^ UINT64_C(0x706D78696E697421));
#define WORD(k) mix64(base + ((k) + 1) * UINT64_C(0x9E3779B97F4A7C15))
  if (kind == PARAMEX__V1__INITIALIZER__KIND__KIND_CONSTANT) return a;
  if (kind == PARAMEX__V1__INITIALIZER__KIND__KIND_UNIFORM) {
    float v = (float)((double)a + ((double)b - (double)a) * ((double)(WORD(i) >> 11) * 0x1.0p-53));
    return b > a && v >= b ? nextafterf(b, -INFINITY) : v;
  }
  if (kind == PARAMEX__V1__INITIALIZER__KIND__KIND_NORMAL) {
    double u1 = (double)((WORD(2 * i) >> 11) + 1) * 0x1.0p-53;
    double u2 = (double)((WORD(2 * i + 1) >> 11) + 1) * 0x1.0p-53;
    return (float)((double)a + (double)b * (sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2)));
  }
#undef WORD
  return 0.0f;
}

/* Tensors made by the server's initializers equal the document's formulas, bit for bit
 * (bf16: rounded to nearest even), over several chunks. */
static void test_initializers(void** state) {
  (void)state;
  static const struct {
    const char* name;
    uint32_t dtype;
    int kind;
    float a, b;
    uint64_t seed;
  } inits[] = {
      {"init_uniform", DT_F32, PARAMEX__V1__INITIALIZER__KIND__KIND_UNIFORM, -1.0f, 1.0f, 42},
      {"init_normal", DT_F32, PARAMEX__V1__INITIALIZER__KIND__KIND_NORMAL, 0.5f, 0.02f, 7},
      {"init_bf16", DT_BF16, PARAMEX__V1__INITIALIZER__KIND__KIND_UNIFORM, -2.0f, 2.0f, 5},
      {"init_constant", DT_F32, PARAMEX__V1__INITIALIZER__KIND__KIND_CONSTANT, 1.5f, 0.0f, 0},
  };
  enum { N = 2100 }; /* three chunks */
  static uint8_t want[4 * N];
  const int raw1[1] = {ENC_RAW};
  for (size_t k = 0; k < sizeof inits / sizeof inits[0]; k++) {
    Paramex__V1__Initializer ini = PARAMEX__V1__INITIALIZER__INIT;
    ini.kind = (Paramex__V1__Initializer__Kind)inits[k].kind;
    ini.a = inits[k].a;
    ini.b = inits[k].b;
    ini.seed = inits[k].seed;
    const uint64_t shape[1] = {N};
    Paramex__V1__DeclareResponse* dr = NULL;
    char det[512];
    int st = declare_init(0, g_inc[0], inits[k].name, inits[k].dtype, shape, 1, &ini, NULL, 0, 0,
                          &dr, det, sizeof det);
    expect_status(inits[k].name, st, PX_ST_OK, det);
    uint32_t id = dr->tensor_id;
    CHECK(dr->created && !dr->upload && dr->num_chunks == 3, "%s: created %d upload %d chunks %" PRIu32,
          inits[k].name, dr->created, dr->upload, dr->num_chunks);
    protobuf_c_message_free_unpacked(&dr->base, NULL);
    const int w = inits[k].dtype == DT_F32 ? 4 : 2;
    for (uint64_t i = 0; i < N; i++) {
      float v = init_value(inits[k].kind, inits[k].a, inits[k].b, inits[k].seed, i);
      put_word(want + i * (uint64_t)w, w, w == 4 ? f32_bits(v) : bf16_rne(v));
    }
    tview t = TVIEW(inits[k].name, &id, N, w, inits[k].dtype, false);
    t.fixed = want;
    tview* ts[1] = {&t};
    pull_check(inits[k].name, ts, 1, NULL, 0, false, 0, raw1);
  }
}

/* Leave: once each; a second Leave of the same incarnation is OK again (idempotent), one
 * of another incarnation is refused. */
static void test_leave(void** state) {
  (void)state;
  char det[512];
  for (uint32_t r = 0; r <= WORKERS; r++) {
    Paramex__V1__LeaveRequest req = PARAMEX__V1__LEAVE_REQUEST__INIT;
    req.worker_id = r < WORKERS ? r : 0;
    req.incarnation = g_inc[req.worker_id];
    int st = px_h_unary_pb(g_ch, "/paramex.v1.ParameterExchange/Leave", &req.base,
                           &paramex__v1__leave_response__descriptor, NULL, CALL_MS, det, sizeof det);
    expect_status(r < WORKERS ? "leave" : "second leave", st, PX_ST_OK, det);
  }
  Paramex__V1__LeaveRequest req = PARAMEX__V1__LEAVE_REQUEST__INIT;
  req.incarnation = g_inc[0] + 1000;
  int st = px_h_unary_pb(g_ch, "/paramex.v1.ParameterExchange/Leave", &req.base,
                         &paramex__v1__leave_response__descriptor, NULL, CALL_MS, det, sizeof det);
  expect_status("leave of another incarnation", st, PX_ST_FAILED_PRECONDITION, det);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_join_and_declare),
      cmocka_unit_test(test_pull_version_0),
      cmocka_unit_test(test_steps_and_delta_pulls),
      cmocka_unit_test(test_bases),
      cmocka_unit_test(test_push_rules),
      cmocka_unit_test(test_initializers),
      cmocka_unit_test(test_leave),
  };
  return cmocka_run_group_tests_name("wire protocol", tests, group_setup, group_teardown);
}
