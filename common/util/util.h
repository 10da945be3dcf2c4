/* paramex common utilities: logging, clocks, flag/env parsing, a compute thread pool,
 * and large-buffer allocation. Depends on nothing else in the repository. */
#ifndef PMX_UTIL_H
#define PMX_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ---- clocks ---------------------------------------------------------------------- */
uint64_t pmx_now_ns(void); /* CLOCK_MONOTONIC */
uint64_t pmx_now_ms(void); /* CLOCK_MONOTONIC, milliseconds */
/* *ts = now + ms on clock (for pthread_cond_timedwait on a condition variable using that
 * clock: CLOCK_MONOTONIC when set with pthread_condattr_setclock, else CLOCK_REALTIME). */
struct timespec;
void pmx_deadline_ts(struct timespec* ts, int clock, int64_t ms);

/* ---- logging ----------------------------------------------------------------------
 * One line per message on stderr: "2026-11-25T12:00:00.123Z [role] LEVEL message".
 * Thread-safe. The level is checked before the message is formatted. Never blocks on
 * anything but stderr. */
typedef enum { PMX_LOG_ERROR = 0, PMX_LOG_WARN = 1, PMX_LOG_INFO = 2, PMX_LOG_DEBUG = 3 } pmx_log_level;
extern int pmx_log_threshold; /* messages with level > threshold are dropped; default INFO */
void pmx_log_init(const char* role, pmx_log_level threshold); /* role copied, e.g. "server" */
/* Parses "error", "warn", "info", "debug"; returns -1 when unknown. */
int pmx_log_level_parse(const char* s);
void pmx_log_write(pmx_log_level level, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
#define pmx_log(level, ...)                                                    \
  do {                                                                         \
    if ((int)(level) <= pmx_log_threshold) pmx_log_write((level), __VA_ARGS__); \
  } while (0)
#define pmx_error(...) pmx_log(PMX_LOG_ERROR, __VA_ARGS__)
#define pmx_warn(...) pmx_log(PMX_LOG_WARN, __VA_ARGS__)
#define pmx_info(...) pmx_log(PMX_LOG_INFO, __VA_ARGS__)
#define pmx_debug(...) pmx_log(PMX_LOG_DEBUG, __VA_ARGS__)

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
typedef enum { PMX_FLAG_STR, PMX_FLAG_U32, PMX_FLAG_U64, PMX_FLAG_SIZE, PMX_FLAG_F64, PMX_FLAG_BOOL } pmx_flag_type;

typedef struct pmx_flag {
  const char* name;    /* without dashes, e.g. "listen" */
  pmx_flag_type type;
  void* dst;           /* const char**, uint32_t*, uint64_t*, uint64_t* (SIZE), double*, bool* */
  double min, max;
  const char* metavar; /* shown in usage, e.g. "HOST:PORT"; NULL for BOOL */
  const char* help;    /* one line */
} pmx_flag;

typedef struct pmx_flags_result {
  int npositional;       /* arguments that are not flags, in order */
  char* positional[16];  /* point into argv */
} pmx_flags_result;

/* Returns 0 on success; 1 when --help/-h was given (usage not printed: call
 * pmx_flags_usage); 2 on any error, with one line naming the problem written to err
 * (e.g. "--workers: 'abc' is not an unsigned integer", "unknown flag --foo",
 * "PMX_LR: 'x' is not a number", "--workers: 0 is out of range [1, 1024]",
 * "too many arguments"). `--` ends flag parsing. *dst is left unchanged on error of that
 * flag. res may be NULL when no positional argument is allowed (then one is an error). */
int pmx_flags_parse(const pmx_flag* flags, size_t nflags, int argc, char** argv,
                    pmx_flags_result* res, char* err, size_t errlen);
/* Usage text: "usage: PROG SYNOPSIS" then one line per flag with its env variable and
 * current (default) value. */
void pmx_flags_usage(FILE* out, const char* prog, const char* synopsis, const pmx_flag* flags,
                     size_t nflags);
/* Parses a SIZE value as above; returns 0 or -1. */
int pmx_parse_size(const char* s, uint64_t* out);

/* ---- compute pool ------------------------------------------------------------------
 * Fixed threads running intrusive jobs in FIFO order. submit never blocks on the jobs
 * (only on a short mutex), so it is safe from gRPC completion-queue threads. A job's
 * memory belongs to the submitter and must stay valid until fn has started; fn may
 * free or resubmit it. */
typedef struct pmx_job {
  void (*fn)(struct pmx_job* job);
  struct pmx_job* next; /* owned by the pool while queued */
} pmx_job;
typedef struct pmx_pool pmx_pool;
pmx_pool* pmx_pool_create(unsigned nthreads); /* NULL on failure */
void pmx_pool_submit(pmx_pool* pool, pmx_job* job);
unsigned pmx_pool_threads(const pmx_pool* pool);
/* Runs every queued job, then stops and joins the threads. Accepts NULL. */
void pmx_pool_destroy(pmx_pool* pool);

/* ---- memory ------------------------------------------------------------------------
 * Page faults cost ~10 us on these VMs (shared/notes/memory-and-baselines.md). Large
 * buffers come from mmap with MADV_HUGEPAGE and are zero-filled; free them with the same
 * size. Returns NULL on failure. */
void* pmx_big_alloc(size_t bytes);
void pmx_big_free(void* p, size_t bytes);
/* Raise glibc's trim and mmap thresholds so the heap is not returned to the kernel and
 * re-faulted between messages (the gRPC core allocates per message). Call once at start. */
void pmx_tune_malloc(void);
void pmx_tune_malloc_once(void); /* the same, at most once per process (libraries) */

/* ---- files -------------------------------------------------------------------------- */
/* Reads a whole file (at most max bytes) into a NUL-terminated malloc'd buffer; *len (may
 * be NULL) gets its length. NULL with one line in err ("PATH: No such file or directory",
 * "PATH: larger than 1048576 bytes") on failure. */
char* pmx_read_file(const char* path, size_t max, size_t* len, char* err, size_t errlen);
/* Reads a secret token from path: the file's content without trailing whitespace; empty
 * or containing control characters is an error. Returns malloc'd string or NULL + err. */
char* pmx_read_token(const char* path, char* err, size_t errlen);
/* Overwrites and frees a secret (accepts NULL). */
void pmx_free_secret(char* s);

/* ---- misc -------------------------------------------------------------------------- */
unsigned pmx_ncpus(void);
/* Whether a gRPC target ("HOST:PORT", "[V6]:PORT", "dns:///HOST:PORT", "unix:PATH") is
 * this host: unix sockets, and names whose every address is loopback or one of this
 * host's interface addresses. False when it does not resolve. */
bool pmx_target_is_local(const char* target);
/* snprintf that always terminates and never overflows; returns dst. */
char* pmx_strlcpy(char* dst, const char* src, size_t cap);

#endif
