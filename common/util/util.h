/* paramex common utilities: logging, clocks, flag/env parsing, a compute thread pool,
 * and large-buffer allocation. Depends on nothing else in the repository. */
#ifndef PX_UTIL_H
#define PX_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ---- clocks ---------------------------------------------------------------------- */
uint64_t px_now_ns(void); /* CLOCK_MONOTONIC */
uint64_t px_now_ms(void); /* CLOCK_MONOTONIC, milliseconds */
/* *ts = now + ms on clock (for pthread_cond_timedwait on a condition variable using that
 * clock: CLOCK_MONOTONIC when set with pthread_condattr_setclock, else CLOCK_REALTIME). */
struct timespec;
void px_deadline_ts(struct timespec* ts, int clock, int64_t ms);

/* ---- logging ----------------------------------------------------------------------
 * One line per message on stderr: "2026-11-25T12:00:00.123Z [role] LEVEL message".
 * Thread-safe. The level is checked before the message is formatted. Never blocks on
 * anything but stderr. */
typedef enum { PX_LOG_ERROR = 0, PX_LOG_WARN = 1, PX_LOG_INFO = 2, PX_LOG_DEBUG = 3 } px_log_level;
extern int px_log_threshold; /* messages with level > threshold are dropped; default INFO */
void px_log_init(const char* role, px_log_level threshold); /* role copied, e.g. "server" */
/* Parses "error", "warn", "info", "debug"; returns -1 when unknown. */
int px_log_level_parse(const char* s);
void px_log_write(px_log_level level, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
#define px_log(level, ...)                                                    \
  do {                                                                         \
    if ((int)(level) <= px_log_threshold) px_log_write((level), __VA_ARGS__); \
  } while (0)
#define px_error(...) px_log(PX_LOG_ERROR, __VA_ARGS__)
#define px_warn(...) px_log(PX_LOG_WARN, __VA_ARGS__)
#define px_info(...) px_log(PX_LOG_INFO, __VA_ARGS__)
#define px_debug(...) px_log(PX_LOG_DEBUG, __VA_ARGS__)

/* ---- flags and environment ---------------------------------------------------------
 * A flag named "chunk-bytes" is given as `--chunk-bytes V` or `--chunk-bytes=V`, and as
 * the environment variable PMX_CHUNK_BYTES (upper case, '-' -> '_'). Precedence:
 * command line > environment > the default already stored in *dst.
 * Types: STR stores a const char* pointing into argv/environ (not copied); U32/U64 are
 * decimal unsigned integers; SIZE is an unsigned integer with an optional K, M or G
 * suffix (powers of 1024, case-insensitive, optional trailing 'B' or "iB"); F64 is a
 * finite double; BOOL takes no value on the command line (`--flag` sets true, `--no-flag`
 * sets false) and "1/0/true/false/yes/no/on/off" in the environment.
 * Numeric values must lie in [min, max] (inclusive; ignored when min == max == 0). */
typedef enum { PX_FLAG_STR, PX_FLAG_U32, PX_FLAG_U64, PX_FLAG_SIZE, PX_FLAG_F64, PX_FLAG_BOOL } px_flag_type;

typedef struct px_flag {
  const char* name;    /* without dashes, e.g. "listen" */
  px_flag_type type;
  void* dst;           /* const char**, uint32_t*, uint64_t*, uint64_t* (SIZE), double*, bool* */
  double min, max;
  const char* metavar; /* shown in usage, e.g. "HOST:PORT"; NULL for BOOL */
  const char* help;    /* one line */
} px_flag;

typedef struct px_flags_result {
  int npositional;       /* arguments that are not flags, in order */
  char* positional[16];  /* point into argv */
} px_flags_result;

/* Returns 0 on success; 1 when --help/-h was given (usage not printed: call
 * px_flags_usage); 2 on any error, with one line naming the problem written to err
 * (e.g. "--workers: 'abc' is not an unsigned integer", "unknown flag --foo",
 * "PMX_LR: 'x' is not a number", "--workers: 0 is out of range [1, 1024]",
 * "too many arguments"). `--` ends flag parsing. *dst is left unchanged on error of that
 * flag. res may be NULL when no positional argument is allowed (then one is an error). */
int px_flags_parse(const px_flag* flags, size_t nflags, int argc, char** argv,
                    px_flags_result* res, char* err, size_t errlen);
/* Usage text: "usage: PROG SYNOPSIS" then one line per flag with its env variable and
 * current (default) value. */
void px_flags_usage(FILE* out, const char* prog, const char* synopsis, const px_flag* flags,
                     size_t nflags);
/* Parses a SIZE value as above; returns 0 or -1. */
int px_parse_size(const char* s, uint64_t* out);

/* ---- compute pool ------------------------------------------------------------------
 * Fixed threads running intrusive jobs in FIFO order. submit never blocks on the jobs
 * (only on a short mutex), so it is safe from gRPC completion-queue threads. A job's
 * memory belongs to the submitter and must stay valid until fn has started; fn may
 * free or resubmit it. */
typedef struct px_job {
  void (*fn)(struct px_job* job);
  struct px_job* next; /* owned by the pool while queued */
} px_job;
typedef struct px_pool px_pool;
px_pool* px_pool_create(unsigned nthreads); /* NULL on failure */
void px_pool_submit(px_pool* pool, px_job* job);
unsigned px_pool_threads(const px_pool* pool);
/* Runs every queued job, then stops and joins the threads. Accepts NULL. */
void px_pool_destroy(px_pool* pool);

/* ---- memory ------------------------------------------------------------------------
 * Page faults cost ~10 us on these VMs (shared/notes/memory-and-baselines.md). Large
 * buffers come from mmap with MADV_HUGEPAGE and are zero-filled; free them with the same
 * size. Returns NULL on failure. */
void* px_big_alloc(size_t bytes);
void px_big_free(void* p, size_t bytes);
/* Raise glibc's trim and mmap thresholds so the heap is not returned to the kernel and
 * re-faulted between messages (the gRPC core allocates per message). Call once at start. */
void px_tune_malloc(void);
void px_tune_malloc_once(void); /* the same, at most once per process (libraries) */

/* ---- files -------------------------------------------------------------------------- */
/* Reads a whole file (at most max bytes) into a NUL-terminated malloc'd buffer; *len (may
 * be NULL) gets its length. NULL with one line in err ("PATH: No such file or directory",
 * "PATH: larger than 1048576 bytes") on failure. */
char* px_read_file(const char* path, size_t max, size_t* len, char* err, size_t errlen);
/* Reads a secret token from path: the file's content without trailing whitespace; empty
 * or containing control characters is an error. Returns malloc'd string or NULL + err. */
char* px_read_token(const char* path, char* err, size_t errlen);
/* Overwrites and frees a secret (accepts NULL). */
void px_free_secret(char* s);

/* ---- misc -------------------------------------------------------------------------- */
unsigned px_ncpus(void);
/* Whether a gRPC target ("HOST:PORT", "[V6]:PORT", "dns:///HOST:PORT", "unix:PATH") is
 * this host: unix sockets, and names whose every address is loopback or one of this
 * host's interface addresses. False when it does not resolve. */
bool px_target_is_local(const char* target);
/* snprintf that always terminates and never overflows; returns dst. */
char* px_strlcpy(char* dst, const char* src, size_t cap);

#endif
