/* Tensor shape tables of the benchmark models, shared by paramex-bench-worker and the
 * MPI baseline so that both move exactly the same gradients.
 *
 *   dense:N    one f32 tensor of N values; N takes K, M or G (powers of 1000: dense:25M is
 *              25,000,000 values = 100 MB)
 *   resnet50   the 161 parameter tensors of torchvision's ResNet-50 (conv weights, batch
 *              norm weights and biases, fc), 25,557,032 values
 *   bert-base  the 199 parameter tensors of BERT-base uncased (Hugging Face BertModel with
 *              its pooler), 109,482,240 values
 *
 * Every tensor is f32. Shapes follow PyTorch's layout (out, in, kh, kw). */
#ifndef PX_BENCH_MODELS_H
#define PX_BENCH_MODELS_H

#include <stddef.h>
#include <stdint.h>

enum { BENCH_NAME_MAX = 96, BENCH_NDIM_MAX = 4 };

typedef struct bench_tensor {
  char name[BENCH_NAME_MAX];
  uint64_t shape[BENCH_NDIM_MAX];
  size_t ndim;
  uint64_t numel;
} bench_tensor;

typedef struct bench_model {
  char spec[64];        /* as given: "dense:25M", "resnet50", "bert-base" */
  bench_tensor* tensors; /* owned; freed by bench_model_deinit */
  size_t n;
  uint64_t numel;       /* sum over tensors */
} bench_model;

/* Fills *m (caller memory) from a model spec. Returns 0, or -1 with a one-line reason in
 * err (errlen bytes) for an unknown spec or a bad size. */
int bench_model_init(bench_model* m, const char* spec, char* err, size_t errlen);
/* Frees what bench_model_init allocated. Accepts a zeroed model. */
void bench_model_deinit(bench_model* m);

/* Published totals, checked by `paramex-bench-worker --check-models`. */
#define BENCH_RESNET50_TENSORS 161
#define BENCH_RESNET50_NUMEL 25557032ull
#define BENCH_BERT_BASE_TENSORS 199
#define BENCH_BERT_BASE_NUMEL 109482240ull

#endif
