/* Shape tables of the benchmark models (see models.h), written from the architectures:
 * torchvision.models.resnet50 (Bottleneck blocks [3, 4, 6, 3], expansion 4, parameters
 * only: batch-norm running statistics are buffers and are not trained) and Hugging Face
 * BertModel for bert-base-uncased (vocabulary 30522, 512 positions, 2 token types,
 * hidden 768, 12 layers, intermediate 3072, pooler). */
#include "models.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct builder {
  bench_model* m;
  size_t cap;
  int failed;
} builder;

static void add(builder* b, const uint64_t* shape, size_t ndim, const char* fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void add(builder* b, const uint64_t* shape, size_t ndim, const char* fmt, ...) {
  if (b->failed) return;
  if (b->m->n == b->cap) {
    size_t cap = b->cap ? 2 * b->cap : 64;
    bench_tensor* t = realloc(b->m->tensors, cap * sizeof *t);
    if (!t) {
      b->failed = 1;
      return;
    }
    b->m->tensors = t;
    b->cap = cap;
  }
  bench_tensor* t = &b->m->tensors[b->m->n++];
  memset(t, 0, sizeof *t);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(t->name, sizeof t->name, fmt, ap);
  va_end(ap);
  t->ndim = ndim;
  t->numel = 1;
  for (size_t i = 0; i < ndim; i++) {
    t->shape[i] = shape[i];
    t->numel *= shape[i];
  }
  b->m->numel += t->numel;
}

#define SHAPE(...) (const uint64_t[]){__VA_ARGS__}, sizeof((const uint64_t[]){__VA_ARGS__}) / sizeof(uint64_t)

static void conv_bn(builder* b, const char* prefix, const char* conv, const char* bn,
                    uint64_t out, uint64_t in, uint64_t k) {
  add(b, SHAPE(out, in, k, k), "%s%s.weight", prefix, conv);
  add(b, SHAPE(out), "%s%s.weight", prefix, bn);
  add(b, SHAPE(out), "%s%s.bias", prefix, bn);
}

static void resnet50(builder* b) {
  static const int blocks[4] = {3, 4, 6, 3};
  conv_bn(b, "", "conv1", "bn1", 64, 3, 7);
  uint64_t inplanes = 64;
  for (int layer = 0; layer < 4; layer++) {
    uint64_t planes = 64ull << layer;
    for (int i = 0; i < blocks[layer]; i++) {
      char p[32];
      snprintf(p, sizeof p, "layer%d.%d.", layer + 1, i);
      conv_bn(b, p, "conv1", "bn1", planes, inplanes, 1);
      conv_bn(b, p, "conv2", "bn2", planes, planes, 3);
      conv_bn(b, p, "conv3", "bn3", planes * 4, planes, 1);
      if (i == 0) conv_bn(b, p, "downsample.0", "downsample.1", planes * 4, inplanes, 1);
      inplanes = planes * 4;
    }
  }
  add(b, SHAPE(1000, 2048), "fc.weight");
  add(b, SHAPE(1000), "fc.bias");
}

static void linear(builder* b, const char* name, uint64_t out, uint64_t in) {
  add(b, SHAPE(out, in), "%s.weight", name);
  add(b, SHAPE(out), "%s.bias", name);
}

static void layer_norm(builder* b, const char* name, uint64_t n) {
  add(b, SHAPE(n), "%s.weight", name);
  add(b, SHAPE(n), "%s.bias", name);
}

static void bert_base(builder* b) {
  const uint64_t h = 768, ff = 3072;
  add(b, SHAPE(30522, h), "embeddings.word_embeddings.weight");
  add(b, SHAPE(512, h), "embeddings.position_embeddings.weight");
  add(b, SHAPE(2, h), "embeddings.token_type_embeddings.weight");
  layer_norm(b, "embeddings.LayerNorm", h);
  for (int l = 0; l < 12; l++) {
    char p[96];
    static const char* const qkv[3] = {"query", "key", "value"};
    for (int i = 0; i < 3; i++) {
      snprintf(p, sizeof p, "encoder.layer.%d.attention.self.%s", l, qkv[i]);
      linear(b, p, h, h);
    }
    snprintf(p, sizeof p, "encoder.layer.%d.attention.output.dense", l);
    linear(b, p, h, h);
    snprintf(p, sizeof p, "encoder.layer.%d.attention.output.LayerNorm", l);
    layer_norm(b, p, h);
    snprintf(p, sizeof p, "encoder.layer.%d.intermediate.dense", l);
    linear(b, p, ff, h);
    snprintf(p, sizeof p, "encoder.layer.%d.output.dense", l);
    linear(b, p, h, ff);
    snprintf(p, sizeof p, "encoder.layer.%d.output.LayerNorm", l);
    layer_norm(b, p, h);
  }
  linear(b, "pooler.dense", h, h);
}

/* "25M" -> 25000000. Returns 0 on success. */
static int parse_count(const char* s, uint64_t* out) {
  errno = 0;
  char* end;
  unsigned long long v = strtoull(s, &end, 10);
  if (end == s || errno || *s == '-') return -1;
  uint64_t mul = 1;
  if (*end == 'K' || *end == 'k') mul = 1000ull, end++;
  else if (*end == 'M' || *end == 'm') mul = 1000000ull, end++;
  else if (*end == 'G' || *end == 'g') mul = 1000000000ull, end++;
  if (*end || v == 0 || v > UINT64_MAX / mul) return -1;
  *out = v * mul;
  return 0;
}

int bench_model_init(bench_model* m, const char* spec, char* err, size_t errlen) {
  memset(m, 0, sizeof *m);
  size_t slen = strlen(spec);
  if (slen >= sizeof m->spec) {
    snprintf(err, errlen, "model spec too long: %.64s...", spec);
    return -1;
  }
  memcpy(m->spec, spec, slen + 1);
  builder b = {m, 0, 0};
  if (!strncmp(spec, "dense:", 6)) {
    uint64_t n;
    if (parse_count(spec + 6, &n)) {
      snprintf(err, errlen, "bad size in '%s' (want dense:N, N with optional K/M/G)", spec);
      return -1;
    }
    add(&b, SHAPE(n), "dense%s", spec + 6);
  } else if (!strcmp(spec, "resnet50")) {
    resnet50(&b);
  } else if (!strcmp(spec, "bert-base")) {
    bert_base(&b);
  } else {
    snprintf(err, errlen, "unknown model '%s' (dense:N, resnet50, bert-base)", spec);
    return -1;
  }
  if (b.failed) {
    bench_model_deinit(m);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  return 0;
}

void bench_model_deinit(bench_model* m) {
  free(m->tensors);
  m->tensors = NULL;
  m->n = 0;
  m->numel = 0;
}
