/* What every paramex command shares (cli_common.c): the connection flags and the channel
 * they open, one-line and UTF-8 sanitising of untrusted text, flag parsing of a
 * subcommand with its ADDR, and a unary call with an empty request. */
#ifndef PX_CLI_COMMON_H
#define PX_CLI_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "rpc/rpc_client.h"
#include "util/flags.h"

#ifndef PX_VERSION
#define PX_VERSION "0.1.0"
#endif

#define HEALTH_CHECK_PATH "/grpc.health.v1.Health/Check"
#define CHECKPOINT_PATH "/paramex.v1.ParameterExchange/Checkpoint"
#define PULL_PATH "/paramex.v1.ParameterExchange/Pull"
#define STATS_PATH "/paramex.v1.ParameterExchange/Stats"
#define HEALTH_TIMEOUT_MS 5000
#define STATS_TIMEOUT_MS 10000
#define WAIT_MAX_S 86400.0

typedef struct conn_opts {
  const char *tls_ca, *tls_cert, *tls_key, *tls_server_name, *token_file;
} conn_opts;
/* The connection flags' values (every command's flag table includes CONN_FLAGS). */
extern conn_opts g_conn;
#define CONN_FLAGS                                                                          \
  {"tls-ca", PX_FLAG_STR, &g_conn.tls_ca, 0, 0, "FILE", "PEM CA: connect with TLS"},          \
  {"tls-cert", PX_FLAG_STR, &g_conn.tls_cert, 0, 0, "FILE", "client certificate (mutual TLS)"}, \
  {"tls-key", PX_FLAG_STR, &g_conn.tls_key, 0, 0, "FILE", "key of --tls-cert"},              \
  {"tls-server-name", PX_FLAG_STR, &g_conn.tls_server_name, 0, 0, "NAME",                  \
   "name to expect in the server certificate"},                                              \
  {"token-file", PX_FLAG_STR, &g_conn.token_file, 0, 0, "FILE",                             \
   "bearer token (else PMX_TOKEN)"}

/* A channel to addr with the connection flags. NULL with one line in err. */
px_rpc_channel* open_channel(const char* addr, char* err, size_t errlen);
/* s as one printable line in buf: control characters and invalid UTF-8 become replacement. */
const char* one_line(const char* s, char* buf, size_t cap, char replacement);
void sleep_ms(uint64_t ms);
/* Writes s as a JSON string: escapes quotes, backslashes and control characters, and
 * replaces bytes that are not valid UTF-8 with U+FFFD. */
void json_str(FILE* out, const char* s);
/* v bytes as "512 B", "1.5 MiB", ... into buf. */
const char* human_bytes(uint64_t v, char* buf, size_t cap);
/* ms as "2.5 s", "3m07s" or "2h05m" into buf. */
const char* human_duration(uint64_t ms, char* buf, size_t cap);
/* Parses a subcommand's flags (argv[0] is the subcommand) and its single ADDR argument.
 * Returns -1 to continue, otherwise the exit status. */
int parse_cmd(const char* cmd, const px_flag* flags, size_t nflags, int argc, char** argv,
              const char** addr);
/* One unary call of `cmd` to addr with an empty request: opens the channel, calls, and
 * prints one line on failure. Returns the response (malloc'd; *len its size) or NULL. */
uint8_t* call_empty(const char* cmd, const char* addr, const char* path, int64_t timeout_ms,
                    size_t* len);

#endif
