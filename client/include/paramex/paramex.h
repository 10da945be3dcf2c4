/* libparamex — the paramex client library.
 *
 * A worker connects to a paramex-server, joins with its rank, declares the tensors it
 * trains, and then, every step s, pushes its gradients for step s and pulls the
 * parameters of version s+1 (the server aggregates the gradients of all workers for a
 * step, in rank order, and applies the optimizer). Version 0 holds the initial values.
 *
 * The core of client/examples/quickstart.c (built as paramex-quickstart and run by the
 * tests; scripts/check-header-example checks that these lines are its lines, in order):
 *
 *     if ((st = pmx_connect(addr, NULL, &c))) return fail(c, "connect", st);
 *     if ((st = pmx_join(c, rank, world, NULL))) return fail(c, "join", st);
 *     if ((st = pmx_declare(c, "w", PMX_F32, shape, 1, NULL, NULL, &w))) return fail(c, "declare", st);
 *     void* dst[1] = {params};
 *     const void* src[1] = {grad};
 *     uint64_t s = 0, version = 0;
 *     if ((st = pmx_resume(c, 1, &w, dst, &s))) return fail(c, "pull", st);  // s: where the job is
 *     while (s < steps) {
 *       compute(rank, params, grad);
 *       st = pmx_push_pull(c, s, 1, &w, src, dst, &version);  // grad for step s; version s + 1
 *       if (st == PMX_ERR_ABORTED) st = pmx_resume(c, 1, &w, dst, &s);  // server restarted
 *       else s++;
 *       if (st) return fail(c, "step", st);
 *     }
 *     pmx_client_destroy(c);
 *
 * That loop is the whole of fault tolerance on the worker's side: a server killed and
 * restarted from its checkpoint at version V answers the next step PMX_ERR_ABORTED, and
 * pmx_resume joins it again, declares what it lost, pulls version V and sets s = V; the
 * worker recomputes from there (steps it pushed before are acknowledged as duplicates).
 * A server that is down meanwhile is retried; a worker restarted itself starts at the
 * job's version the same way, and over several shards the same loop recovers them as one.
 *
 * Conventions:
 *  - Every function returning pmx_status returns PMX_OK (0) or an error, and then
 *    pmx_last_error() holds a one-line message from the server or the library for the
 *    calling thread. On error nothing was written to the output arguments, with one
 *    exception: a pull's dst buffers may hold some chunks of the new version (the library
 *    then forgets which version they hold, and the next pull into them sends them in
 *    full).
 *  - Handles are opaque. A pmx_client may be used from several threads at once unless a
 *    function says otherwise; a pmx_op belongs to the thread that waits on it.
 *  - No gRPC or protobuf type appears here; the library hides every other symbol.
 */
#ifndef PARAMEX_H
#define PARAMEX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define PMX_API __attribute__((visibility("default")))
#else
#define PMX_API
#endif

#define PMX_VERSION_MAJOR 0
#define PMX_VERSION_MINOR 1
#define PMX_VERSION_PATCH 0
/* The library's version as "MAJOR.MINOR.PATCH" (static string). */
PMX_API const char* pmx_version(void);

/* Errors. The values are pinned; the first ones equal gRPC status codes. */
typedef enum pmx_status {
  PMX_OK = 0,
  PMX_ERR_CANCELLED = 1,
  PMX_ERR_UNKNOWN = 2,
  PMX_ERR_INVALID_ARGUMENT = 3,    /* bad argument or request (shape, length, name, ...) */
  PMX_ERR_DEADLINE_EXCEEDED = 4,   /* the timeout ran out */
  PMX_ERR_NOT_FOUND = 5,           /* unknown tensor */
  PMX_ERR_ALREADY_EXISTS = 6,
  PMX_ERR_PERMISSION_DENIED = 7,
  PMX_ERR_RESOURCE_EXHAUSTED = 8,  /* a server limit */
  PMX_ERR_FAILED_PRECONDITION = 9, /* e.g. not joined, stale incarnation, shape conflict */
  PMX_ERR_ABORTED = 10,            /* the server restarted from a checkpoint: resynchronise */
  PMX_ERR_OUT_OF_RANGE = 11,       /* e.g. a step ahead of the server's version */
  PMX_ERR_UNIMPLEMENTED = 12,
  PMX_ERR_INTERNAL = 13,
  PMX_ERR_UNAVAILABLE = 14,        /* server not reachable or shutting down */
  PMX_ERR_DATA_LOSS = 15,          /* checksum mismatch */
  PMX_ERR_UNAUTHENTICATED = 16,
  PMX_ERR_NO_MEMORY = 100,
  PMX_ERR_PROTOCOL = 101,          /* the server sent something malformed */
} pmx_status;

/* Static English name of a status, e.g. "invalid argument". Never NULL. */
PMX_API const char* pmx_strerror(pmx_status status);
/* The calling thread's message for its last failed call (static per thread, overwritten
 * by the next failure). "" when none. */
PMX_API const char* pmx_last_error(void);

/* Log messages. libparamex never writes to stdout or stderr: what it has to say (a server
 * that cannot be reached and is retried, a chunk that failed its checksum and is pulled
 * again, a rejoin after a server restart, and gRPC's own warnings such as a failed TLS
 * handshake) goes to the callback set here, and nowhere when none is set (the default).
 * The values are pinned. */
typedef enum pmx_log_level {
  PMX_LOG_ERROR = 0,
  PMX_LOG_WARN = 1,
  PMX_LOG_INFO = 2,
  PMX_LOG_DEBUG = 3,
} pmx_log_level;
/* message: one line without a newline, valid during the call only. */
typedef void (*pmx_log_fn)(void* ctx, pmx_log_level level, const char* message);
/* Sends every message of level <= max_level to fn(ctx, ...); fn NULL: log nothing. For the
 * whole process; may be called at any time from any thread. fn runs on the library's
 * threads, one message at a time, and must not call libparamex. */
PMX_API void pmx_set_log_callback(pmx_log_fn fn, void* ctx, pmx_log_level max_level);

typedef enum pmx_dtype { PMX_F32 = 1, PMX_BF16 = 2, PMX_F16 = 3 } pmx_dtype;

typedef struct pmx_client pmx_client;
typedef struct pmx_tensor pmx_tensor; /* owned by its client; valid until pmx_client_destroy */
typedef struct pmx_op pmx_op;

typedef struct pmx_options {
  /* Deadline of each call in milliseconds (pull waits included); 0 = 60000. */
  int64_t timeout_ms;
  /* How long pmx_join waits for a server that is not reachable yet; 0 = 30000. */
  int64_t connect_timeout_ms;
  /* Non-zero: accept only raw chunks on pulls (no diffs, no zstd); same as
   * compression = PMX_COMPRESSION_OFF. */
  int no_compression;
  /* Security. Each NULL field falls back to its environment variable.
   * tls_ca_file (PMX_TLS_CA): PEM CA file; set = TLS, verifying the server against it.
   * tls_cert_file / tls_key_file (PMX_TLS_CERT / PMX_TLS_KEY): a client certificate for
   *   mutual TLS. tls_server_name (PMX_TLS_SERVER_NAME): the name to check in the server's
   *   certificate instead of the address's host.
   * token (PMX_TOKEN) or token_file (PMX_TOKEN_FILE): the bearer token sent on every call.
   * Files are read by pmx_connect; secrets are never logged. */
  const char* tls_ca_file;
  const char* tls_cert_file;
  const char* tls_key_file;
  const char* tls_server_name;
  const char* token;
  const char* token_file;
  /* How long a push or pull keeps retrying while the server is unavailable (down,
   * restarting): capped exponential back-off from 25 ms to 2 s; 0 = 120000. */
  int64_t retry_timeout_ms;
  /* Pull compression: compressed pulls are diffs against the version the buffer holds
   * (or whole chunks), zstd-compressed, whenever that is smaller.
   * PMX_COMPRESSION_AUTO (0, the default; environment PMX_PULL_COMPRESSION=auto|on|off
   * overrides it): on, unless the server is on this host (a loopback or local interface
   * address, or a unix socket), where the transfer runs at memory speed and encoding
   * only costs time (measured: bench/README.md). */
  int compression;
  /* Non-zero: leave glibc's malloc settings alone. By default pmx_connect raises the
   * trim and mmap thresholds once per process (see PMX_MALLOC_TUNE=0), because gRPC
   * allocates per message and a heap returned to the kernel is re-faulted on every
   * large pull (~10 us per 4 KiB page on VMs; it halved pull throughput here). */
  int no_malloc_tuning;
} pmx_options;

enum { PMX_COMPRESSION_AUTO = 0, PMX_COMPRESSION_ON = 1, PMX_COMPRESSION_OFF = 2 };

/* Creates a client for the server at addr ("HOST:PORT"), or for a model over several
 * shards ("HOST:PORT,HOST:PORT,...", in shard order). addr NULL: the list in PMX_SERVERS
 * (what paramex-launch sets), else TensorFlow's TF_CONFIG cluster.ps. opts may be NULL.
 * Connecting is lazy: an unreachable server is reported by the first call. *out is
 * destroyed with pmx_client_destroy. */
PMX_API pmx_status pmx_connect(const char* addr, const pmx_options* opts, pmx_client** out);
/* Says Leave to the server when the client joined (the worker is then reported finished,
 * not dead; see pmx_join), cancels operations still running, waits for them, frees the
 * client and its tensors.
 * Operations started and not yet passed to pmx_op_wait are freed with it: their pmx_op
 * is invalid afterwards. Accepts NULL. No other thread may use the client during or after
 * this call. */
PMX_API void pmx_client_destroy(pmx_client* client);
/* pmx_client_destroy without the Leave: for a worker that gives up on an error. The
 * server keeps its rank joined, reports it dead once --worker-timeout passes without a
 * call (not finished), and a restarted worker of that rank joins again. Frees everything
 * as pmx_client_destroy does, so that the process exits with no gRPC thread running.
 * Accepts NULL. */
PMX_API void pmx_client_abort(pmx_client* client);

typedef struct pmx_join_info {
  uint32_t worker_id;
  uint64_t incarnation;
  uint32_t world_size;
} pmx_join_info;

/* Joins as worker `rank` of `world_size` (which must match the server's --workers),
 * waiting up to connect_timeout_ms for the server to come up (then PMX_ERR_UNAVAILABLE
 * naming the cause; a TLS or token mistake is reported at once). A new join (for example
 * after a restart) gets a new incarnation; pushes of the old incarnation are refused.
 * info may be NULL. Must precede pmx_push. The worker leaves at pmx_client_destroy: it is
 * reported finished; without --elastic a step it did not push cannot complete, and pulls
 * waiting for one fail PMX_ERR_FAILED_PRECONDITION at once; with --elastic the steps go on
 * without it. */
PMX_API pmx_status pmx_join(pmx_client* client, uint32_t rank, uint32_t world_size,
                            pmx_join_info* info);
/* rank or world_size PMX_FROM_ENV: taken from the environment: PMX_RANK / PMX_WORLD_SIZE
 * (what paramex-launch sets), else the launcher's own variables: ps-lite's DMLC_WORKER_ID
 * / DMLC_NUM_WORKER (DMLC_ROLE=worker), TF_CONFIG, torchrun's RANK / WORLD_SIZE, Open MPI's
 * OMPI_COMM_WORLD_RANK / _SIZE, PMIX_RANK, PMI_RANK / PMI_SIZE, Slurm's SLURM_PROCID /
 * SLURM_NTASKS, a Kubernetes Indexed Job's JOB_COMPLETION_INDEX. A framework's variables
 * win over a scheduler's, the innermost scheduler over the outer; two frameworks that
 * disagree, a value that is not a number, or nothing at all: PMX_ERR_INVALID_ARGUMENT
 * naming the variables. */
#define PMX_FROM_ENV UINT32_MAX

/* The rank and world size PMX_FROM_ENV would take, for a worker that needs them before
 * pmx_join (to pick its share of the data): each set from the environment as above, or
 * left PMX_FROM_ENV where no variable gives it. TensorFlow's TF_CONFIG is read too (a
 * chief or worker task: the chief is rank 0, the workers follow; the world is chiefs +
 * workers). Two frameworks that disagree or a value that is not a number:
 * PMX_ERR_INVALID_ARGUMENT naming the variables, and nothing written. */
PMX_API pmx_status pmx_env_rank(uint32_t* rank, uint32_t* world_size);

typedef enum pmx_init_kind {
  PMX_INIT_ZEROS = 0,
  PMX_INIT_CONSTANT = 1, /* a */
  PMX_INIT_NORMAL = 2,   /* mean a, standard deviation b */
  PMX_INIT_UNIFORM = 3,  /* [a, b) */
} pmx_init_kind;

typedef struct pmx_init {
  pmx_init_kind kind;
  float a, b;
  uint64_t seed;
} pmx_init;

/* Declares tensor `name` (1..255 bytes) of dtype and shape (ndim 1..8, every dimension
 * >= 1). The first declaration creates it; later ones (from any worker) must give the same
 * dtype and shape and get the same tensor (PMX_ERR_FAILED_PRECONDITION otherwise). Initial
 * values: `values` (numel elements of dtype, copied before return; large tensors are sent
 * in several calls) or, when values is NULL, the seeded initializer `init` (NULL = zeros),
 * generated on the server. Values are used only by the creating call; the library keeps
 * a copy (numel elements, freed with the client) so that pmx_resume can declare the tensor
 * again on a server that lost it. *out stays valid until pmx_client_destroy. */
PMX_API pmx_status pmx_declare(pmx_client* client, const char* name, pmx_dtype dtype,
                               const uint64_t* shape, size_t ndim, const void* values,
                               const pmx_init* init, pmx_tensor** out);

/* Facts about a declared tensor. */
PMX_API uint64_t pmx_tensor_numel(const pmx_tensor* t);
PMX_API size_t pmx_tensor_bytes(const pmx_tensor* t);
PMX_API uint32_t pmx_tensor_id(const pmx_tensor* t);
PMX_API uint32_t pmx_tensor_num_chunks(const pmx_tensor* t);

/* Pushes this worker's gradients for `step`: grads[i] holds numel elements of tensors[i]'s
 * dtype. Returns once the server acknowledged every chunk. A retried push of a step that
 * was already counted is acknowledged and not counted twice. grads are read in place (not
 * copied; a push of up to 1 MiB is copied into one message on the client's Exchange
 * stream) and must not change until the call returns. */
PMX_API pmx_status pmx_push(pmx_client* client, uint64_t step, size_t n,
                            pmx_tensor* const* tensors, const void* const* grads);

/* Pulls the parameters of tensors[i] into dst[i] (numel elements each), waiting until
 * every chunk reached min_version (within timeout_ms). The client remembers which version
 * each dst holds, so chunks that did not change since are not sent again; dst must
 * therefore not be modified between pulls (pass a different buffer and it is refilled).
 * versions (may be NULL) receives the lowest chunk version of each tensor. */
PMX_API pmx_status pmx_pull(pmx_client* client, size_t n, pmx_tensor* const* tensors,
                            void* const* dst, uint64_t min_version, uint64_t* versions);

/* Pulls the bf16 view of f32 tensors (view = PMX_BF16: round to nearest even, NaN and
 * infinities kept; dst[i] then holds numel uint16_t bf16 words) or, with view = 0, each
 * tensor's own dtype (as pmx_pull). Tensors that are not f32 always come in their own
 * dtype. Diffs travel against the view the buffer holds, and bf16 words change far less
 * often than f32 ones: the cheapest way to feed workers that compute in bf16. */
PMX_API pmx_status pmx_pull_as(pmx_client* client, size_t n, pmx_tensor* const* tensors,
                               void* const* dst, pmx_dtype view, uint64_t min_version,
                               uint64_t* versions);

/* How pmx_push sends a tensor's gradients. Off (RAW) by default: dense gradients compress
 * losslessly only ~1.1x, and the lossy cast changes what the server aggregates. */
typedef enum pmx_push_mode {
  PMX_PUSH_RAW = 0,       /* the elements as they are */
  PMX_PUSH_ZSTD = 1,      /* lossless: byte shuffle + zstd, when that is >= 5% smaller */
  PMX_PUSH_BF16 = 2,      /* lossy, f32 tensors only: gradients rounded to bf16 (half) */
  PMX_PUSH_BF16_ZSTD = 3, /* both */
} pmx_push_mode;
/* Sets the push mode of t for chunks of tensors of at least min_bytes (smaller tensors
 * are sent raw). Not thread-safe with a push of t in flight. */
PMX_API pmx_status pmx_tensor_set_push_compression(pmx_tensor* t, pmx_push_mode mode,
                                                   size_t min_bytes);

/* Asynchronous forms: start the operation and return at once; the same arguments must
 * stay valid (and grads unchanged, dst untouched) until pmx_op_wait returned. A worker can
 * so overlap its push of step s with its pull for step s + 1, or start the next pull
 * while it computes. */
PMX_API pmx_status pmx_push_async(pmx_client* client, uint64_t step, size_t n,
                                  pmx_tensor* const* tensors, const void* const* grads,
                                  pmx_op** op);
PMX_API pmx_status pmx_pull_async(pmx_client* client, size_t n, pmx_tensor* const* tensors,
                                  void* const* dst, uint64_t min_version, uint64_t* versions,
                                  pmx_op** op);
PMX_API pmx_status pmx_pull_as_async(pmx_client* client, size_t n, pmx_tensor* const* tensors,
                                     void* const* dst, pmx_dtype view, uint64_t min_version,
                                     uint64_t* versions, pmx_op** op);
/* Waits for the operation, returns its result and frees it (op is invalid afterwards,
 * even on error). */
PMX_API pmx_status pmx_op_wait(pmx_op* op);

/* One training step's exchange: the push of grads for step and the pull of version
 * step + 1 into dst. A step of up to 1 MiB (the tensors' bytes) is one message each way
 * on the client's Exchange stream (a bidirectional call kept open); larger steps start
 * the pull first, which waits on the server (no thread blocked there) while the push
 * goes, each chunk coming back as soon as its step is complete. Either way a step costs
 * about one round trip instead of two (1,000 floats here: 182-309 us against 359-405 us
 * for pmx_push then pmx_pull; ResNet-50 with 2 workers: 157 against 237 ms). The same as
 * pmx_push then pmx_pull otherwise: a failed push stops the pull and its error is
 * returned; grads unchanged and dst untouched until it returns. */
PMX_API pmx_status pmx_push_pull(pmx_client* client, uint64_t step, size_t n,
                                 pmx_tensor* const* tensors, const void* const* grads,
                                 void* const* dst, uint64_t* versions);

/* pmx_push_pull with the pull in a view (as pmx_pull_as): view = PMX_BF16 fills dst[i]
 * with the bf16 words of f32 tensors (numel uint16_t each), 0 each tensor's own dtype. The
 * step of a worker that computes in bf16, at about one round trip. */
PMX_API pmx_status pmx_push_pull_as(pmx_client* client, uint64_t step, size_t n,
                                    pmx_tensor* const* tensors, const void* const* grads,
                                    void* const* dst, pmx_dtype view, uint64_t* versions);

/* Resumes after PMX_ERR_ABORTED (the server restarted, from a checkpoint at version V or,
 * before its first checkpoint, from nothing) or at a worker's start: joins the server
 * again when that is still needed, declares again every tensor of the client (a tensor
 * the server lost is created anew from the values or initializer of its pmx_declare, which
 * the library keeps), pulls tensors[i] in full into dst[i] at the server's version and
 * sets *step to the lowest of them: the step to compute next. A server that is down or
 * restarts again meanwhile is followed for up to retry_timeout_ms. No other operation of
 * the client may run meanwhile.
 * Over several shards it first brings them to one version (README, Reliability): when a
 * shard restarted from its checkpoint at V, the others go back to V too (in place, or by
 * restarting from their own checkpoint at V), and every worker resumes at V. A shard
 * that has no checkpoint at V makes it fail PMX_ERR_FAILED_PRECONDITION naming that shard
 * and the checkpoints it has; nothing is changed then. */
PMX_API pmx_status pmx_resume(pmx_client* client, size_t n, pmx_tensor* const* tensors,
                              void* const* dst, uint64_t* step);

/* Counters of this client since pmx_connect. push_* count what was handed to the
 * transport, the attempts that failed and were retried included; pull_* count what
 * arrived. */
typedef struct pmx_client_stats {
  uint64_t push_chunks, push_raw_bytes, push_wire_bytes;
  uint64_t pull_chunks, pull_raw_bytes, pull_wire_bytes, pull_unchanged_chunks;
  uint64_t checksum_failures; /* chunks that failed their checksum (and were pulled again) */
  int compressed_pulls;        /* 1: pulls accept compressed frames (pmx_options.compression) */
} pmx_client_stats;
PMX_API void pmx_client_get_stats(pmx_client* client, pmx_client_stats* out);

#ifdef __cplusplus
}
#endif
#endif
