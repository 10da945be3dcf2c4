/* Integration-test harness: real paramex-server and worker processes on ephemeral ports.
 *
 * Processes: every process the harness starts is recorded (by pid) and asks the kernel to
 * SIGKILL it when the test process dies (PR_SET_PDEATHSIG), so a failed or crashed test
 * leaves nothing behind. px_h_kill_all() ends the recorded ones that are still running;
 * call it from every cmocka teardown. Nothing is ever ended by name.
 *
 * Waiting: readiness is the server's one stdout line, read with poll() under a deadline;
 * process exits are awaited on a pidfd under a deadline. There is no sleep anywhere.
 *
 * Binaries: PMX_SERVER_BIN and PMX_WORKER_BIN (set by tests/integration/meson.build).
 * Children get the test's environment without any PMX_* variable, plus the ones given.
 *
 * Threads: the process helpers belong to the test's main thread; the rpc helpers may be
 * called from any thread. */
#ifndef PX_IT_HARNESS_H
#define PX_IT_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <xxhash.h>

#include "paramex.pb-c.h"
#include "rpc/rpc_client.h"

#define PX_H_PATH_JOIN "/paramex.v1.ParameterExchange/Join"
#define PX_H_PATH_DECLARE "/paramex.v1.ParameterExchange/Declare"
#define PX_H_PATH_PUSH "/paramex.v1.ParameterExchange/Push"
#define PX_H_PATH_PULL "/paramex.v1.ParameterExchange/Pull"
#define PX_H_PATH_STATS "/paramex.v1.ParameterExchange/Stats"
#define PX_H_PATH_HEALTH "/grpc.health.v1.Health/Check"

/* ---- processes ---------------------------------------------------------------------- */

/* $PMX_SERVER_BIN / $PMX_WORKER_BIN; aborts the test program with a message when unset. */
const char* px_h_server_bin(void);
const char* px_h_worker_bin(void);

typedef struct px_h_server {
  pid_t pid;      /* 0 once stopped or reaped */
  int out_fd;     /* read end of the server's stdout, -1 when closed */
  int port;
  char addr[64];  /* "127.0.0.1:PORT" */
} px_h_server;

/* Starts `paramex-server --listen 127.0.0.1:0 ARGS...` (args NULL-terminated, may be
 * NULL; env: NULL-terminated "NAME=VALUE" added to the child's environment, may be NULL)
 * and reads its stdout until the line "paramex-server listening on 127.0.0.1:PORT",
 * waiting at most timeout_ms. Returns 0, or -1 with the reason in err (the server's
 * stderr goes to the test's stderr). On failure the process is killed and reaped. */
int px_h_server_start(px_h_server* s, const char* const* args, const char* const* env,
                       int timeout_ms, char* err, size_t errlen);

/* px_h_server_start with more control: listen is the --listen value (NULL:
 * "127.0.0.1:0"; give "127.0.0.1:PORT" to restart a server on the port it had) and
 * stderr_fd receives the server's stderr (-1: the test's stderr). */
int px_h_server_start_ex(px_h_server* s, const char* listen, const char* const* args,
                          const char* const* env, int stderr_fd, int timeout_ms, char* err,
                          size_t errlen);

/* Sends SIGTERM and waits at most timeout_ms for the exit. Returns 0 and the waitpid
 * status in *wstatus, or -1 when it did not exit in time (it is then SIGKILLed and
 * reaped). *extra_stdout_bytes (may be NULL) receives how many bytes the server wrote on
 * stdout after its listening line (should be 0). */
int px_h_server_stop(px_h_server* s, int timeout_ms, int* wstatus, size_t* extra_stdout_bytes);

/* Spawns argv[0] with argv (NULL-terminated). An env entry replaces a variable of the
 * test's environment with the same name (ASAN_OPTIONS, say). stdout_fd / stderr_fd: a descriptor for the
 * child's stdout / stderr, or -1 to inherit. stdin is /dev/null. Returns the pid or -1. */
pid_t px_h_spawn(const char* const* argv, const char* const* env, int stdout_fd, int stderr_fd);

/* px_h_spawn with the child's stdout and stderr together into a pipe whose read end is
 * *out_fd (close-on-exec). Returns the pid, or -1 (nothing left open). */
pid_t px_h_spawn_piped(const char* const* argv, const char* const* env, int* out_fd);

/* Runs argv (env as px_h_spawn) to its exit: its stdout and stderr together in out
 * (NUL-terminated, cut to cap-1) and the waitpid status in *wstatus. 0, or -1 when it
 * could not start or did not exit within timeout_ms (it is then SIGKILLed and reaped). */
int px_h_run(const char* const* argv, const char* const* env, char* out, size_t cap,
             int timeout_ms, int* wstatus);

/* Waits at most timeout_ms for pid to exit and reaps it. Returns 0 with the waitpid
 * status in *wstatus, -1 on timeout (the process is left running). */
int px_h_wait(pid_t pid, int timeout_ms, int* wstatus);

/* SIGKILLs pid (only when it is one the harness started and has not reaped) and reaps it. */
void px_h_kill(pid_t pid);
/* SIGKILLs and reaps every process the harness started that is still unreaped. */
void px_h_kill_all(void);

/* Reads fd until EOF or the deadline into buf (NUL-terminated, truncated to cap-1).
 * Returns the bytes read or -1 on timeout. */
ssize_t px_h_read_all(int fd, char* buf, size_t cap, int timeout_ms);
/* Reads fd one line at a time until a line starts with prefix; copies that line (without
 * the newline) into line. Returns 0, -1 on EOF or timeout. Keeps partial-line state in
 * the caller's buffer acc (cap bytes, NUL-terminated; start it as ""). */
int px_h_read_line_prefix(int fd, const char* prefix, char* acc, size_t cap, char* line,
                           size_t linecap, int timeout_ms);

/* "exited 0", "exited 3", "killed by signal 11 (Segmentation fault)" into buf. */
const char* px_h_describe_wstatus(int wstatus, char* buf, size_t cap);

/* A fresh directory under $TMPDIR (or /tmp) and its recursive removal. */
int px_h_mkdtemp(char* out, size_t cap);
void px_h_rmtree(const char* dir);

/* Reads a whole file (malloc'd, caller frees; a NUL follows the *len bytes, so text can
 * be searched as a string). NULL on error. */
void* px_h_read_file(const char* path, size_t* len);

/* Runs `paramex ARGS...` ($PMX_CLI_BIN; args NULL-terminated, at most 14) and returns its
 * stdout (malloc'd, NUL-terminated; at most 1 MiB, read within 30 s) and its exit status
 * in *exit_status (-1 when it did not exit normally within 30 s). NULL when it cannot run. */
char* px_h_cli(const char* const* args, int* exit_status);

/* VmRSS of a running process in KiB (from /proc/PID/status), -1 when unreadable. */
long px_h_rss_kib(pid_t pid);

/* Milliseconds on CLOCK_MONOTONIC. */
int64_t px_h_now_ms(void);

/* ---- rpc ------------------------------------------------------------------------------ */

/* One message to send: head (copied) followed by body (not copied; must stay valid until
 * the call returned). */
typedef struct px_h_msg {
  const void* head;
  size_t head_len;
  const void* body;
  size_t body_len;
} px_h_msg;

typedef struct px_h_result {
  int status;          /* PMX_ST_*, or -1 when the harness gave up waiting (a hang) */
  char details[512];
  size_t nresp;        /* response messages, each flattened */
  uint8_t** resp;
  size_t* resp_len;
  int64_t elapsed_ms;
} px_h_result;

/* Runs one call of any kind on ch: sends msgs in order (the last one half-closes; with
 * n == 0 it only half-closes), then reads every response until the end, then waits for
 * the status. Sending stops at the first failed send. The harness waits at most
 * timeout_ms + 10 s in all before it reports a hang (status -1). Returns res->status. */
int px_h_call(px_rpc_channel* ch, const char* path, const px_h_msg* msgs, size_t n,
               int64_t timeout_ms, px_h_result* res);
/* px_h_call with gRPC's wait-for-ready chosen: false fails at once (UNAVAILABLE) when the
 * channel has no connection, instead of waiting for one until the deadline. */
int px_h_call_ex(px_rpc_channel* ch, const char* path, const px_h_msg* msgs, size_t n,
                 int64_t timeout_ms, bool wait_for_ready, px_h_result* res);
void px_h_result_free(px_h_result* res);

/* px_h_call on its own thread (for calls that park). The msgs array and bodies must stay
 * valid until px_h_async_join. */
typedef struct px_h_async px_h_async;
px_h_async* px_h_async_start(px_rpc_channel* ch, const char* path, const px_h_msg* msgs,
                               size_t n, int64_t timeout_ms);
px_h_async* px_h_async_start_ex(px_rpc_channel* ch, const char* path, const px_h_msg* msgs,
                                size_t n, int64_t timeout_ms, bool wait_for_ready);
/* Waits for the call to finish; *res gets the result (free it with px_h_result_free). */
void px_h_async_join(px_h_async* a, px_h_result* res);

/* A unary call with a protobuf-c request. *resp_out (may be NULL) receives the unpacked
 * response when the status is OK (free with protobuf_c_message_free_unpacked); a response
 * that does not unpack is reported as status -2. details may be NULL. */
int px_h_unary_pb(px_rpc_channel* ch, const char* path, const ProtobufCMessage* req,
                   const ProtobufCMessageDescriptor* resp_desc, ProtobufCMessage** resp_out,
                   int64_t timeout_ms, char* details, size_t details_cap);

/* Stats of the server behind ch. NULL on failure (with the status in details). */
Paramex__V1__StatsResponse* px_h_stats(px_rpc_channel* ch, char* details, size_t cap);
/* The row of tensor `name`, or NULL. */
const Paramex__V1__TensorStats* px_h_stats_tensor(const Paramex__V1__StatsResponse* st,
                                                   const char* name);

/* The whole-tensor checksum of a Stats response: xxh64 (seed 0) of the tensor's bytes
 * (chunks carry XXH3-64; Stats keeps the xxh64 users compare with, as the demo does). */
static inline uint64_t it_stats_checksum(const void* p, size_t n) { return XXH64(p, n, 0); }

#endif
