/* Training helpers of the security, checkpoint and fault tests: pmx_test_worker processes
 * (the job of model.h) against a running server, and the bit-exact check of what they
 * wrote against the BSP reference. Failures fail the current cmocka test (include after
 * <cmocka.h>; the helpers belong to the test's main thread). */
#ifndef PX_IT_TRAIN_H
#define PX_IT_TRAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* The optimizer flags of the server, as strings (the reference converts them the same way). */
typedef struct it_sgd {
  const char* lr;
  const char* momentum;
  const char* weight_decay;
} it_sgd;

typedef struct it_train {
  const char* addr;       /* the server, "127.0.0.1:PORT" */
  uint32_t world;         /* workers (ranks 0 .. world-1) */
  uint64_t steps;         /* --steps */
  uint64_t a_numel;       /* --a-numel */
  const char* dir;        /* each worker writes DIR/params.RANK */
  int64_t timeout_ms;     /* --timeout-ms (also the retry budget); 0: 30000 */
  int64_t connect_ms;     /* --connect-timeout-ms; 0: the worker's default */
  bool resync;            /* --resync */
  const char* const* env; /* extra "NAME=VALUE" of every worker (TLS, token); may be NULL */
} it_train;

/* Starts worker `rank` of j. stdout_fd / stderr_fd: -1 inherits the test's. more: extra
 * arguments (NULL-terminated, may be NULL). Returns the pid (fails the test otherwise). */
pid_t it_worker_start(const it_train* j, uint32_t rank, int stdout_fd, int stderr_fd,
                      const char* const* more);
/* Waits at most ms for worker pid and requires exit 0. */
void it_worker_expect_ok(pid_t pid, uint32_t rank, int ms);
/* Starts every worker of j (stdout and stderr inherited) and requires each to exit 0
 * within ms in all. */
void it_train_run(const it_train* j, int ms);

/* The tensor sizes of j: "a" then "b". */
size_t it_numel(const it_train* j, int t);
/* Every DIR/params.R (R < world) holds the reference after j->steps steps, bit for bit. */
void it_train_check(const it_train* j, const it_sgd* sgd);
/* The reference of tensor t after `steps` steps (malloc'd; mom, may be NULL, receives the
 * malloc'd momentum buffer). */
float* it_reference(const it_train* j, const it_sgd* sgd, int t, uint64_t steps, float** mom);
/* Fails with the first differing element when got and want differ in any bit. */
void it_check_bits(const char* what, const void* got, const float* want, size_t n);

/* Versions of the ckpt-%020llu.safetensors files in dir, ascending. Returns their count
 * (at most cap); -1 when dir cannot be read. */
int it_ckpt_versions(const char* dir, uint64_t* out, size_t cap);
/* Whether dir holds a leftover temporary file of a checkpoint write (".ckpt-*"). */
bool it_ckpt_temp_left(const char* dir);

/* A file of the test's own: dir/name created (truncated) for writing. Returns the fd. */
int it_open_out(const char* dir, const char* name);
/* The whole of dir/name as a NUL-terminated string (malloc'd; "" when absent). */
char* it_slurp(const char* dir, const char* name);
/* Occurrences of needle in hay. */
size_t it_count(const char* hay, const char* needle);
/* Reads "step N" lines of a --progress worker from fd (acc: px_h_read_line_prefix's
 * buffer; other lines skipped) until N >= target, within ms; returns N. Fails the test
 * naming who when none comes. */
uint64_t it_wait_step(int fd, char* acc, size_t cap, uint64_t target, const char* who, int ms);
/* The N of a --resync worker's "resyncs N" line in out, or -1. */
long it_resyncs_of(const char* out);

/* The random moments of the fault tests: it_seed_rng seeds *state from PMX_IT_SEED (to
 * repeat a run) or the clock and prints the seed; it_rnd_between is uniform in [lo, hi]. */
void it_seed_rng(uint64_t* state);
uint64_t it_rnd_between(uint64_t* state, uint64_t lo, uint64_t hi);

#endif
