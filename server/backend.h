/* Aggregation backends: everything that touches tensor memory goes through one interface
 * with a `cpu` and a `cuda` implementation (paramex-server --device cpu|cuda).
 *
 * The rest of the server (frames, pulls, checkpoints, stats) reads host bytes: every
 * chunk has its parameters in host memory (c->params, the "host mirror"), which a backend
 * keeps equal to its own copy: after every step the new parameters are in c->params
 * before the step is published (before c->version moves). What a backend owns besides
 * is the per-step sum of the contributions, the optimizer state (momentum) and, for
 * cuda, the parameters on the GPU.
 *
 * Determinism: contributions are accumulated in the order the server hands them over,
 * which is worker-rank order; both backends add them with the same f32 operations in that
 * order and apply the optimizer with the same operations (no fused multiply-add), so a
 * step is bit-identical on cpu and on cuda with one GPU. With G > 1 GPUs the partial sums
 * of ranks r = g (mod G) are combined by NCCL, which changes the association of the sum:
 * results then differ from cpu by a few ulps (tests/unit/test_backend.c states the bound).
 *
 * Threads and locks: every op on a chunk is called with c->mu held (so a chunk sees one
 * op at a time, in order); ops on different chunks run concurrently from the compute
 * pool. Tensor create/destroy run under the store's declare lock or at shutdown.
 *
 * Errors: tensor_create and accumulate may fail (out of memory) and then change nothing.
 * Any other failure (a CUDA or NCCL error after start-up, out of memory for scratch) is
 * fatal: the backend logs it and aborts, because the device state can no longer be
 * trusted; a restarted server resumes from its last checkpoint. */
#ifndef PX_BACKEND_H
#define PX_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct px_tensor_state;
struct px_chunk_state;
struct px_config;

/* ---- optimizer parameters (the cpu implementation is in optimizer.c) ------------------- */
typedef struct px_sgd {
  float lr, momentum, weight_decay;
} px_sgd;
/* One SGD step on n elements from the rank-ordered gradient sum of nworkers workers:
 *   g = sum / nworkers; if (wd) g = g + wd * p; if (momentum) { m = first ? g : momentum*m + g;
 *   g = m; } p = p - lr * g.   (PyTorch's SGD with dampening 0, nesterov off.) */
void px_sgd_apply(const px_sgd* o, float* p, float* mom, bool first, const float* sum,
                   size_t n, uint32_t nworkers);
/* acc[i] += g[i] for i in [0, n), in order (vectorized; the same bits as the scalar loop). */
void px_f32_add(float* acc, const float* g, size_t n);

/* ---- one step's inputs and outputs ------------------------------------------------------- */
/* Output buffers are host memory owned by the caller, c->elems words each; a NULL output
 * is not produced. */
typedef struct px_step_io {
  uint32_t ncontrib;     /* contributions in the sum (the optimizer divides by it) */
  bool first;            /* no momentum step applied to this chunk yet */
  void* bits[2];         /* new bits: [0] the tensor's dtype, [1] the bf16 view (f32 only) */
  uint8_t* enc[2];       /* encoder input of view v: px_zigzag_shuffle of the word delta
                          * (new bits - old bits), the bytes the DELTA_ZSTD frame compresses */
} px_step_io;

/* Fills io's outputs (those non-NULL) of a chunk of n words of t's dtype from host copies
 * of its native bits before and after a step: the cpu implementation of the bf16 view
 * and the encoder input, also used by px_frames_after_step. Uses px_scratch(1..3). */
void px_step_outputs(const struct px_tensor_state* t, size_t n, const void* old_bits,
                      const void* new_bits, px_step_io* io);

typedef struct px_backend px_backend;

typedef struct px_backend_ops {
  /* Sets up the backend's state of a new tensor (t->chunks exist, c->params allocated,
   * initial values maybe not yet there). 0, or -1 with err (nothing left allocated). */
  int (*tensor_create)(px_backend* b, struct px_tensor_state* t, char* err, size_t errlen);
  /* Frees what tensor_create set up, including a sum in progress. */
  void (*tensor_destroy)(px_backend* b, struct px_tensor_state* t);
  /* c->params now holds the chunk's values (initial values complete, or a restore): take
   * them; mom (c->elems f32, NULL: none) is its momentum from a checkpoint. */
  void (*chunk_load)(px_backend* b, struct px_tensor_state* t, struct px_chunk_state* c,
                     const float* mom);
  /* Adds the contribution g (c->elems f32) of `rank` to the chunk's sum of this step. The
   * first call of a step starts the sum. With give, g is a px_buf_get buffer of the
   * configured chunk bytes that the backend may keep (then *taken = true and the caller
   * forgets it). 0, or -1 when out of memory (nothing changed). */
  int (*accumulate)(px_backend* b, struct px_tensor_state* t, struct px_chunk_state* c,
                    uint32_t rank, float* g, bool give, bool* taken);
  /* Finishes the step: applies the optimizer to the sum, writes the new parameters to
   * c->params and the outputs of io, and forgets the sum (the next accumulate starts a
   * new one). */
  void (*step)(px_backend* b, struct px_tensor_state* t, struct px_chunk_state* c,
               px_step_io* io);
  /* The chunk's current parameters in view v (0: its dtype, 1: bf16 of an f32 tensor). */
  void (*read_view)(px_backend* b, struct px_tensor_state* t, struct px_chunk_state* c,
                    int view, void* out);
  /* Checkpoint copy: parameters (c->elems words) and, when mom != NULL, the momentum. */
  void (*snapshot)(px_backend* b, struct px_tensor_state* t, struct px_chunk_state* c,
                   void* params, float* mom);
  void (*destroy)(px_backend* b);
} px_backend_ops;

struct px_backend {
  const px_backend_ops* ops;
  const char* name;      /* "cpu" or "cuda" */
  px_sgd sgd;
  size_t chunk_bytes;    /* --chunk-bytes: the size of contribution buffers */
  bool momentum;         /* --momentum != 0: momentum state is kept */
  uint32_t ndev;         /* devices that sum (1 for cpu): results are bit-identical to the
                          * cpu backend's when it is 1 */
  char desc[256];        /* one line for the start-up log: devices used */
};

/* Creates the backend named by cfg->device with cfg->gpus. Returns 0; -1 with err when it
 * cannot start (built without CUDA, no GPU, a CUDA/NCCL error: err names it); -2 with
 * err when the configuration is wrong (a --gpus device that does not exist). */
int px_backend_create(const struct px_config* cfg, px_backend** out, char* err,
                       size_t errlen);
/* Accepts NULL. */
void px_backend_destroy(px_backend* b);

/* Whether this build has the cuda backend and at least one GPU is usable; otherwise
 * 0 and why in `why` (for tests that skip). */
int px_backend_cuda_available(char* why, size_t whylen);

/* Parses a --gpus list "0,1,3" into ids (at most cap). 0, or -1 with err naming the
 * problem (not a number, a duplicate, too many, empty). */
int px_gpu_list_parse(const char* s, int* ids, uint32_t cap, uint32_t* n, char* err,
                       size_t errlen);

/* Logs "backend NAME: WHAT" as an error and aborts: for failures after which the
 * backend's state cannot be trusted (see the top of this file). */
void px_backend_fatal(const char* name, const char* what) __attribute__((noreturn));

/* The implementations (backend_cpu.c, backend_cuda.c). */
int px_backend_cpu_create(const struct px_config* cfg, px_backend** out, char* err,
                           size_t errlen);
#ifdef PX_HAVE_CUDA
int px_backend_cuda_create(const struct px_config* cfg, px_backend** out, char* err,
                            size_t errlen);
#endif

#endif
