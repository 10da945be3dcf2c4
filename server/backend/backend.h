/* Aggregation backends: everything that touches a tensor's memory (the per-step sum of the
 * contributions, the optimizer, the bf16 view, the encoder inputs of the diff frames)
 * goes through this one interface, implemented by `cpu` (cpu.h) and `cuda` (cuda/cuda.h),
 * chosen by select.h (paramex-server --device cpu|cuda). An implementation includes only
 * this header (and step_io.h, optimizer.h): it knows nothing of the server's store.
 *
 * A backend's tensor is described by px_be_tensor_desc: its element type, size, chunking
 * and its host parameters (the "host mirror"), memory the caller owns and everything else
 * in the server reads (frames, pulls, checkpoints, stats). A backend keeps the mirror equal
 * to its own copy: after every step the new parameters are in the mirror before the step
 * returns. What a backend owns besides is the sum of the step in progress, the optimizer
 * state (momentum) and, for cuda, the parameters on the GPU.
 *
 * Determinism: contributions are accumulated in the order the caller hands them over,
 * which is worker-rank order; both backends add them with the same f32 operations in that
 * order and apply the optimizer with the same operations (no fused multiply-add), so a
 * step is bit-identical on cpu and on cuda with one GPU. With G > 1 GPUs the partial sums
 * of ranks r = g (mod G) are combined by NCCL, which changes the association of the sum:
 * results then differ from cpu by a few ulps (tests/unit/server/test_backend.c states the
 * bound).
 *
 * Threads: calls on one chunk must not overlap (the server holds the chunk's lock): a
 * chunk sees one op at a time, in order; ops on different chunks run concurrently.
 * tensor_create and tensor_destroy must not overlap any op on that tensor.
 *
 * Errors: tensor_create and accumulate may fail (out of memory) and then change nothing.
 * Any other failure (a CUDA or NCCL error after start-up, no memory for scratch) leaves
 * state that cannot be trusted: the backend calls px_backend_fatal, which logs and ends
 * the process, and a restarted server resumes from its last checkpoint. */
#ifndef PX_BACKEND_H
#define PX_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The optimizer's hyper-parameters (the arithmetic: optimizer.h). */
typedef enum {
  PX_OPT_SGD = 0,     /* SGD, with momentum when momentum != 0 (nesterov: Nesterov's) */
  PX_OPT_ADAGRAD = 1, /* per-element sum of squared gradients */
  PX_OPT_RMSPROP = 2, /* per-element running average of squared gradients (alpha) */
} px_opt_kind;

typedef struct px_sgd {
  float lr, momentum, weight_decay;
  bool nesterov;      /* Nesterov momentum (needs momentum != 0) */
  px_opt_kind kind;
  float eps, alpha;   /* adagrad and rmsprop: added to the square root; rmsprop's decay */
} px_sgd;

/* Whether o keeps one f32 of state per element (the momentum buffer, Adagrad's sum,
 * RMSprop's average): the "momentum" arrays of the backends and the checkpoints. */
static inline bool px_sgd_has_state(const px_sgd* o) {
  return o->kind != PX_OPT_SGD || o->momentum != 0.0f;
}

/* A tensor as a backend sees it. Chunk i holds elements [i * chunk_elems, min(numel,
 * (i + 1) * chunk_elems)). */
typedef struct px_be_tensor_desc {
  const char* name;     /* for messages; borrowed while the tensor lives */
  int dtype;            /* PX_DT_F32, PX_DT_BF16 or PX_DT_F16 */
  uint64_t numel;
  uint32_t chunk_elems; /* elements per chunk (the last chunk may be shorter) */
  uint32_t nchunks;
  void* params;         /* the host mirror: numel elements of dtype, owned by the caller */
} px_be_tensor_desc;

/* Elements of chunk i of d. */
static inline uint32_t px_be_chunk_elems(const px_be_tensor_desc* d, uint32_t i) {
  uint64_t first = (uint64_t)i * d->chunk_elems;
  return (uint32_t)(d->numel - first < d->chunk_elems ? d->numel - first : d->chunk_elems);
}

/* One step's inputs and outputs. Output buffers are host memory owned by the caller, the
 * chunk's elements words each; a NULL output is not produced (step_io.h allocates them). */
typedef struct px_step_io {
  uint32_t ncontrib;     /* contributions in the sum (the optimizer divides by it) */
  bool first;            /* no momentum step applied to this chunk yet */
  float lr;              /* this step's learning rate (lr_schedule.h; the backend's sgd.lr
                          * is the base) */
  void* bits[2];         /* new bits: [0] the tensor's dtype, [1] the bf16 view (f32 only) */
  uint8_t* enc[2];       /* encoder input of view v: px_zigzag_shuffle of the word delta
                          * (new bits - old bits), the bytes the DELTA_ZSTD frame compresses */
} px_step_io;

typedef struct px_backend px_backend;
typedef struct px_be_tensor px_be_tensor; /* a backend's state of one tensor */

typedef struct px_backend_ops {
  /* Sets up the state of a new tensor (its mirror allocated, initial values maybe not yet
   * there); d is copied. 0, or -1 with err (nothing left allocated). */
  int (*tensor_create)(px_backend* b, const px_be_tensor_desc* d, px_be_tensor** out, char* err,
                       size_t errlen);
  /* Frees what tensor_create set up, including a sum in progress. Accepts NULL. */
  void (*tensor_destroy)(px_backend* b, px_be_tensor* t);
  /* The mirror of chunk i now holds its values (initial values complete, or a restore):
   * take them; mom (the chunk's elements f32, NULL: none) is its momentum from a
   * checkpoint. */
  void (*chunk_load)(px_backend* b, px_be_tensor* t, uint32_t i, const float* mom);
  /* Adds the contribution g (the chunk's elements f32) of `rank` to the sum of chunk i's
   * step. The first call of a step starts the sum. With give, g is a px_buf_get buffer of
   * the configured chunk bytes that the backend may keep (then *taken = true and the
   * caller forgets it). 0, or -1 when out of memory (nothing changed). */
  int (*accumulate)(px_backend* b, px_be_tensor* t, uint32_t i, uint32_t rank, float* g,
                    bool give, bool* taken);
  /* Finishes chunk i's step: applies the optimizer to the sum, writes the new parameters
   * to the mirror and the outputs of io, and forgets the sum (the next accumulate starts
   * a new one). At least one contribution was added. */
  void (*step)(px_backend* b, px_be_tensor* t, uint32_t i, px_step_io* io);
  /* Chunk i's current parameters in view v (0: its dtype, 1: bf16 of an f32 tensor). */
  void (*read_view)(px_backend* b, px_be_tensor* t, uint32_t i, int view, void* out);
  /* Checkpoint copy of chunk i: parameters and, when mom != NULL, the momentum. */
  void (*snapshot)(px_backend* b, px_be_tensor* t, uint32_t i, void* params, float* mom);
  void (*destroy)(px_backend* b);
} px_backend_ops;

struct px_backend {
  const px_backend_ops* ops;
  const char* name;      /* "cpu" or "cuda" */
  px_sgd sgd;
  size_t chunk_bytes;    /* the size of contribution buffers (px_buf_get) */
  bool momentum;         /* momentum != 0: momentum state is kept */
  uint32_t ndev;         /* devices that sum (1 for cpu): results are bit-identical to the
                          * cpu backend's when it is 1 */
  char desc[256];        /* one line for the start-up log: devices used */
};

/* What select.h creates a backend from. */
typedef struct px_backend_opts {
  const char* device;    /* "cpu" or "cuda" */
  const int* gpu_ids;    /* cuda: the GPUs to use; ngpus == 0: every GPU */
  uint32_t ngpus;
  size_t chunk_bytes;
  px_sgd sgd;
  unsigned threads;      /* compute threads (for the description) */
} px_backend_opts;

/* Logs "backend NAME: WHAT" as an error and ends the process: for failures after which a
 * backend's state cannot be trusted (see the top of this file). */
void px_backend_fatal(const char* name, const char* what) __attribute__((noreturn));

#endif
