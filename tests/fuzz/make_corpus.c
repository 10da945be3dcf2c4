/* Writes the seed corpora of the fuzz targets: `scripts/fuzz.sh --make-corpus` runs it
 * with tests/fuzz/corpus as OUT and the files are committed. Every seed is a valid input
 * of its target's layout (see the comment at the top of each fuzz_*.c), so that fuzzing
 * starts from messages that parse and decode. Deterministic: the same files every run.
 *
 * usage: make_corpus OUT   (writes OUT/chunk, OUT/zstd, OUT/proto, OUT/flags,
 *                           OUT/server_config; never OUT/safetensors) */
#include <errno.h>
#include <protobuf-c/protobuf-c.h>
#include <sys/stat.h>

#include "codec/checksum.h"
#include "codec/dtype.h"
#include "codec/payload.h"
#include "codec/zstdframe.h"
#include "wire/chunk_msg.h"
#include "fuzz_common.h"
#include "health.pb-c.h"
#include "paramex.pb-c.h"

static const char* out_dir;

static void put(const char* target, const char* name, const void* a, size_t alen, const void* b,
                size_t blen) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", out_dir, target);
  if (mkdir(path, 0777) != 0 && errno != EEXIST) {
    perror(path);
    exit(1);
  }
  snprintf(path, sizeof path, "%s/%s/%s", out_dir, target, name);
  FILE* f = fopen(path, "wb");
  if (!f || fwrite(a, 1, alen, f) != alen || (blen && fwrite(b, 1, blen, f) != blen) ||
      fclose(f) != 0) {
    perror(path);
    exit(1);
  }
}

/* ---- chunk: option byte, split points, PushChunk/PullChunk ----------------------------- */

static void chunk_seed(const char* name, const uint8_t* prefix, size_t nprefix,
                       px_chunk_kind kind, px_chunk* c, const uint8_t* payload, size_t plen) {
  uint8_t buf[8 + PX_CHUNK_HDR_MAX + 4096];
  FUZZ_CHECK(nprefix <= 8 && plen <= 4096);
  memcpy(buf, prefix, nprefix);
  size_t h = px_chunk_encode_header(kind, c, plen, buf + nprefix, PX_CHUNK_HDR_MAX);
  FUZZ_CHECK(h > 0);
  if (plen) memcpy(buf + nprefix + h, payload, plen);
  put("chunk", name, buf, nprefix + h + plen, NULL, 0);
}

static void chunk_seeds(void) {
  uint8_t src[4096], base[4096], frame[4096];
  for (size_t i = 0; i < sizeof src; i++) src[i] = (uint8_t)(i * 7u + (i >> 3));

  /* PushChunk, RAW f32, one segment. */
  px_chunk c = {.worker_id = 1, .incarnation = 3, .step = 5, .tensor_id = 2, .chunk = 0,
                 .encoding = PX_ENC_RAW, .dtype = PX_DT_F32, .raw_len = 64};
  c.checksum = px_checksum(src, 64);
  chunk_seed("push-raw-f32", (const uint8_t[]){0x00}, 1, PX_CHUNK_PUSH, &c, src, 64);

  /* PushChunk, SHUFFLE_ZSTD f32, three segments. */
  size_t n = 64;
  size_t z = px_encode_shuffle(src, n, 4, 1, frame, sizeof frame);
  FUZZ_CHECK(z > 0);
  c.encoding = PX_ENC_SHUFFLE_ZSTD;
  c.raw_len = (uint32_t)(n * 4);
  c.checksum = px_checksum(src, n * 4);
  chunk_seed("push-shuffle-f32-3seg", (const uint8_t[]){2 << 2, 0x40, 0xc0}, 3, PX_CHUNK_PUSH,
             &c, frame, z);

  /* PullChunk, DELTA_ZSTD f32 against fuzz_fill_base, four segments (one empty). */
  n = 32;
  fuzz_fill_base(base, n * 4);
  memcpy(src, base, n * 4);
  for (size_t i = 0; i < n; i += 3) src[i * 4] ^= 0x5a;
  z = px_encode_delta(src, base, n, 4, 1, frame, sizeof frame);
  FUZZ_CHECK(z > 0);
  px_chunk p = {.tensor_id = 4, .chunk = 1, .version = 9, .base_version = 8,
                 .encoding = PX_ENC_DELTA_ZSTD, .dtype = PX_DT_F32, .raw_len = (uint32_t)(n * 4)};
  p.checksum = px_checksum(src, n * 4);
  chunk_seed("pull-delta-f32-4seg", (const uint8_t[]){1 | 3 << 2, 0x10, 0x80, 0x80}, 4,
             PX_CHUNK_PULL, &p, frame, z);

  /* PullChunk, UNCHANGED bf16: no payload, checksum of the base. */
  n = 24;
  fuzz_fill_base(base, n * 2);
  px_chunk u = {.tensor_id = 4, .chunk = 2, .version = 9, .base_version = 9,
                 .encoding = PX_ENC_UNCHANGED, .dtype = PX_DT_BF16, .raw_len = (uint32_t)(n * 2)};
  u.checksum = px_checksum(base, n * 2);
  chunk_seed("pull-unchanged-bf16", (const uint8_t[]){1 | 2}, 1, PX_CHUNK_PULL, &u, NULL, 0);

  /* PullChunk, RAW bf16, two segments. */
  n = 8;
  px_chunk r = {.tensor_id = 1, .chunk = 0, .version = 2, .encoding = PX_ENC_RAW,
                 .dtype = PX_DT_BF16, .raw_len = (uint32_t)(n * 2)};
  r.checksum = px_checksum(src, n * 2);
  chunk_seed("pull-raw-bf16-2seg", (const uint8_t[]){1 | 2 | 1 << 2, 0x80}, 2, PX_CHUNK_PULL,
             &r, src, n * 2);
}

/* ---- zstd: option byte, explicit size (2 bytes), frame ----------------------------------- */

static void zstd_seeds(void) {
  uint8_t d[1024], frame[2048];
  /* Small wrapping deltas, as a DELTA_ZSTD frame carries them. */
  for (size_t i = 0; i < 256; i++) d[i] = (uint8_t)((i % 5) - 2);
  size_t z = px_encode_delta_words(d, 64, 4, 1, frame, sizeof frame);
  FUZZ_CHECK(z > 0);
  put("zstd", "delta-words-u32", (const uint8_t[]){0x00, 0, 0}, 3, frame, z);

  z = px_encode_delta_words(d, 100, 2, 1, frame, sizeof frame);
  FUZZ_CHECK(z > 0);
  put("zstd", "delta-words-u16", (const uint8_t[]){0x04 | 3 << 5, 0, 0}, 3, frame, z);

  static const char text[] =
      "paramex paramex paramex: a parameter server; parameters, parameters, parameters.";
  z = px_zstd_compress(text, sizeof text, frame, sizeof frame, 3);
  FUZZ_CHECK(z > 0);
  put("zstd", "text-explicit-size", (const uint8_t[]){0x01 | 2 << 3, sizeof text & 0xff, 0}, 3,
      frame, z);

  z = px_zstd_compress("", 0, frame, sizeof frame, 1);
  FUZZ_CHECK(z > 0);
  put("zstd", "empty", (const uint8_t[]){0x00 | 1 << 5, 0, 0}, 3, frame, z);
}

/* ---- proto: type byte, message ----------------------------------------------------------
 * Every message type gets one seed with every field set (repeated fields twice, nested
 * messages filled too), built from the protobuf-c descriptors so that new messages and
 * fields are covered without editing this file. */

static const ProtobufCMessageDescriptor* const proto_types[] = {
#define X(name) &name##__descriptor,
#include "fuzz_proto_messages.h"
#undef X
};
#define NPROTO (sizeof proto_types / sizeof proto_types[0])

static void* arena[4096];
static size_t narena;
static void* arena_alloc(size_t n) {
  FUZZ_CHECK(narena < sizeof arena / sizeof arena[0]);
  void* p = calloc(1, n ? n : 1);
  FUZZ_CHECK(p != NULL);
  return arena[narena++] = p;
}

static size_t elem_size(const ProtobufCFieldDescriptor* f) {
  switch (f->type) {
    case PROTOBUF_C_TYPE_INT64: case PROTOBUF_C_TYPE_SINT64: case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64: case PROTOBUF_C_TYPE_FIXED64: case PROTOBUF_C_TYPE_DOUBLE:
      return 8;
    case PROTOBUF_C_TYPE_STRING: return sizeof(char*);
    case PROTOBUF_C_TYPE_BYTES: return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE: return sizeof(ProtobufCMessage*);
    default: return 4; /* 32-bit integers, float, bool (protobuf_c_boolean), enum */
  }
}

static ProtobufCMessage* fill_message(const ProtobufCMessageDescriptor* d, int depth);

static void fill_value(const ProtobufCFieldDescriptor* f, void* p, unsigned k, int depth) {
  switch (f->type) {
    case PROTOBUF_C_TYPE_INT32: case PROTOBUF_C_TYPE_SINT32: case PROTOBUF_C_TYPE_SFIXED32:
      *(int32_t*)p = -(int32_t)(k + 2);
      break;
    case PROTOBUF_C_TYPE_UINT32: case PROTOBUF_C_TYPE_FIXED32:
      *(uint32_t*)p = 300u * k + 7u;
      break;
    case PROTOBUF_C_TYPE_INT64: case PROTOBUF_C_TYPE_SINT64: case PROTOBUF_C_TYPE_SFIXED64:
      *(int64_t*)p = -(int64_t)(k + 1) * 1000003;
      break;
    case PROTOBUF_C_TYPE_UINT64: case PROTOBUF_C_TYPE_FIXED64:
      *(uint64_t*)p = (uint64_t)k * 0x10001 + 5;
      break;
    case PROTOBUF_C_TYPE_FLOAT: *(float*)p = 0.5f + (float)k; break;
    case PROTOBUF_C_TYPE_DOUBLE: *(double*)p = 0.25 + k; break;
    case PROTOBUF_C_TYPE_BOOL: *(protobuf_c_boolean*)p = 1; break;
    case PROTOBUF_C_TYPE_ENUM: {
      const ProtobufCEnumDescriptor* e = f->descriptor;
      *(int*)p = e->n_values ? e->values[(k + 1) % e->n_values].value : 0;
      break;
    }
    case PROTOBUF_C_TYPE_STRING: {
      char* s = arena_alloc(16);
      snprintf(s, 16, "%s%u", k ? "w" : "t", k);
      *(char**)p = s;
      break;
    }
    case PROTOBUF_C_TYPE_BYTES: {
      ProtobufCBinaryData* b = p;
      b->len = 12;
      b->data = arena_alloc(b->len);
      for (size_t i = 0; i < b->len; i++) b->data[i] = (uint8_t)(i * 17 + k);
      break;
    }
    case PROTOBUF_C_TYPE_MESSAGE:
      *(ProtobufCMessage**)p = fill_message(f->descriptor, depth + 1);
      break;
  }
}

static ProtobufCMessage* fill_message(const ProtobufCMessageDescriptor* d, int depth) {
  ProtobufCMessage* m = arena_alloc(d->sizeof_message);
  d->message_init(m);
  if (depth > 3) return m;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor* f = &d->fields[i];
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) continue; /* none in paramex's .proto files */
    char* field = (char*)m + f->offset;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      const size_t count = 2;
      void* arr = arena_alloc(count * elem_size(f));
      for (unsigned k = 0; k < count; k++) fill_value(f, (char*)arr + k * elem_size(f), k, depth);
      *(size_t*)((char*)m + f->quantifier_offset) = count;
      *(void**)field = arr;
    } else {
      fill_value(f, field, 1, depth);
      if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->quantifier_offset &&
          f->type != PROTOBUF_C_TYPE_MESSAGE && f->type != PROTOBUF_C_TYPE_STRING)
        *(protobuf_c_boolean*)((char*)m + f->quantifier_offset) = 1;
    }
  }
  return m;
}

static void proto_seeds(void) {
  for (size_t t = 0; t < NPROTO; t++) {
    ProtobufCMessage* m = fill_message(proto_types[t], 0);
    size_t len = protobuf_c_message_get_packed_size(m);
    uint8_t* buf = malloc(len ? len : 1);
    FUZZ_CHECK(buf && protobuf_c_message_pack(m, buf) == len);
    uint8_t type = (uint8_t)t;
    char name[128];
    snprintf(name, sizeof name, "%s", proto_types[t]->name); /* first byte: index */
    put("proto", name, &type, 1, buf, len);
    free(buf);
    while (narena) free(arena[--narena]);
  }
}

/* ---- flags, server_config: option byte, NUL-separated strings ---------------------------- */

static void args_seed(const char* target, const char* name, uint8_t opt, const char* const* s) {
  uint8_t buf[1024];
  size_t n = 0;
  buf[n++] = opt;
  for (size_t i = 0; s[i]; i++) {
    size_t l = strlen(s[i]);
    FUZZ_CHECK(n + l + 1 < sizeof buf);
    if (i) buf[n++] = '\0';
    memcpy(buf + n, s[i], l);
    n += l;
  }
  put(target, name, buf, n, NULL, 0);
}

static void args_seeds(void) {
  /* fuzz_flags: environment strings start with the variable's index (modulo 14): 14
   * PMX_FUZZ_STR, 7 PMX_FUZZ_F64, 5 PMX_FUZZ_SIZE, 9 PMX_FUZZ_BOOL. */
  args_seed("flags", "argv-every-type", 0x00,
            (const char* const[]){"--fuzz-str", "hello", "--fuzz-u32", "42",
                                  "--fuzz-u32-range=4096", "--fuzz-u64", "18446744073709551615", "--fuzz-size=64KiB",
                                  "--fuzz-f64", "-1.5e-3", "--fuzz-bool", "--no-x", "pos", NULL});
  args_seed("flags", "env-and-argv", 0x04 | 3,
            (const char* const[]){"\x0e" "from-env", "\x07" "0.5", "\x05" "3M", "--no-fuzz-bool",
                                  "--fuzz-f64-range", "-0.75", "--", "--positional", NULL});
  args_seed("flags", "out-of-range-no-positional", 0x08 | 0x30,
            (const char* const[]){"--fuzz-u64-range=12345678901234567890", "--fuzz-size-range",
                                  "3MiB", NULL});
  args_seed("flags", "env-bool-help", 0x01 | 0x10,
            (const char* const[]){"\x09" "yes", "--fuzz-size", "1g", "-h", NULL});

  /* fuzz_server_config: 1 PMX_WORKERS, 3 PMX_CHUNK_BYTES, 4 PMX_LOG_LEVEL. */
  args_seed("server_config", "argv", 0x00,
            (const char* const[]){"--listen", "127.0.0.1:0", "--workers", "4", "--lr=0.1",
                                  "--chunk-bytes", "256K", "--no-compression", "--threads", "2",
                                  NULL});
  args_seed("server_config", "env-and-argv", 0x03,
            (const char* const[]){"\x01" "8", "\x03" "1M", "\x04" "debug", "--momentum", "0.9",
                                  "--history", "4", "--history-bytes=1G", "--drain-timeout",
                                  "2.5", NULL});
  args_seed("server_config", "help", 0x00, (const char* const[]){"--help", NULL});
  args_seed("server_config", "bad-chunk-bytes", 0x00,
            (const char* const[]){"--chunk-bytes=1027", "--log-level", "loud", NULL});
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: make_corpus OUT\n");
    return 2;
  }
  out_dir = argv[1];
  if (mkdir(out_dir, 0777) != 0 && errno != EEXIST) {
    perror(out_dir);
    return 1;
  }
  chunk_seeds();
  zstd_seeds();
  proto_seeds();
  args_seeds();
  return 0;
}
