/* What every paramex command shares (cli_common.h). */
#include "cli_common.h"

#include <errno.h>
#include <pthread.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rpc/rpc_base.h"
#include "rpc/rpc_client.h"
#include "util/clock.h"
#include "util/file.h"
#include "util/flags.h"
#include "util/iov.h"
#include "util/str.h"

/* ---- connection flags ---------------------------------------------------------------- */

conn_opts g_conn;

/* A channel to addr with the connection flags. NULL with one line in err. */
px_rpc_channel* open_channel(const char* addr, char* err, size_t errlen) {
  px_rpc_channel_opts o = {0};
  char *ca = NULL, *cert = NULL, *key = NULL, *token = NULL;
  px_rpc_channel* ch = NULL;
  if ((g_conn.tls_cert != NULL) != (g_conn.tls_key != NULL)) {
    snprintf(err, errlen, "--tls-cert and --tls-key go together");
    return NULL;
  }
  if (g_conn.tls_cert && !g_conn.tls_ca) {
    snprintf(err, errlen, "--tls-cert needs --tls-ca");
    return NULL;
  }
  if (g_conn.tls_ca && !(ca = px_read_file(g_conn.tls_ca, 1u << 20, NULL, err, errlen))) goto out;
  if (g_conn.tls_cert && (!(cert = px_read_file(g_conn.tls_cert, 1u << 20, NULL, err, errlen)) ||
                          !(key = px_read_file(g_conn.tls_key, 1u << 20, NULL, err, errlen))))
    goto out;
  if (g_conn.token_file && !(token = px_read_token(g_conn.token_file, err, errlen))) goto out;
  o.tls_ca_pem = ca;
  o.tls_cert_pem = cert;
  o.tls_key_pem = key;
  o.tls_server_name = g_conn.tls_server_name;
  o.token = token ? token : getenv("PMX_TOKEN");
  if (o.token && !*o.token) o.token = NULL;
  ch = px_rpc_channel_create_ex(addr, &o, err, errlen);
out:
  free(ca);
  free(cert);
  px_free_secret(key);
  px_free_secret(token);
  return ch;
}

/* ---- small helpers ------------------------------------------------------------------ */

/* Copies s into buf with every control character and every byte that is not valid UTF-8
 * replaced by replacement, so that text from the server or from gRPC stays on one line
 * and cannot drive the terminal. */
const char* one_line(const char* s, char* buf, size_t cap, char replacement) {
  const unsigned char* p = (const unsigned char*)(s ? s : "");
  size_t n = 0, left = strlen((const char*)p);
  while (left && n + 1 < cap) {
    size_t len = px_utf8_seq(p, left);
    if (len == 0 || len >= cap - n || (len == 1 && (*p < 0x20 || *p == 0x7f))) {
      buf[n++] = replacement;
      len = 1;
    } else {
      memcpy(buf + n, p, len);
      n += len;
    }
    p += len;
    left -= len;
  }
  buf[n] = '\0';
  return buf;
}

void sleep_ms(uint64_t ms) {
  struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* Parses a subcommand's flags (argv[0] is the subcommand) and its single ADDR argument.
 * Returns -1 to continue, otherwise the exit status. */
int parse_cmd(const char* cmd, const px_flag* flags, size_t nflags, int argc, char** argv,
                     const char** addr) {
  char err[256], prog[32];
  px_flags_result res;
  snprintf(prog, sizeof prog, "paramex %s", cmd);
  int rc = px_flags_parse(flags, nflags, argc, argv, &res, err, sizeof err);
  if (rc == 1) {
    px_flags_usage(stdout, prog, "ADDR [flags]", flags, nflags);
    return 0;
  }
  if (rc != 0) {
    fprintf(stderr, "%s: %s\n", prog, err);
    return 2;
  }
  if (res.npositional == 0) {
    fprintf(stderr, "%s: missing ADDR (HOST:PORT)\n", prog);
    return 2;
  }
  if (res.npositional > 1) {
    fprintf(stderr, "%s: unexpected argument '%s'\n", prog, res.positional[1]);
    return 2;
  }
  *addr = res.positional[0];
  return -1;
}

/* One unary call of `cmd` to addr with an empty request: opens the channel, calls, and
 * prints one line on failure. Returns the response (malloc'd; *len its size) or NULL. */
uint8_t* call_empty(const char* cmd, const char* addr, const char* path, int64_t timeout_ms,
                           size_t* len) {
  char err[512], details[512], line[512];
  px_rpc_init();
  px_rpc_channel* ch = open_channel(addr, err, sizeof err);
  if (!ch) {
    px_rpc_shutdown();
    fprintf(stderr, "paramex: %s %s: %s\n", cmd, addr, one_line(err, line, sizeof line, ' '));
    return NULL;
  }
  uint8_t* resp = NULL;
  int st = px_rpc_unary(ch, path, "", 0, timeout_ms, false, &resp, len, details, sizeof details);
  px_rpc_channel_destroy(ch);
  px_rpc_shutdown();
  if (st != PX_ST_OK) {
    fprintf(stderr, "paramex: %s %s: %s: %s\n", cmd, addr, px_status_name(st),
            details[0] ? one_line(details, line, sizeof line, ' ') : "no details");
    free(resp);
    return NULL;
  }
  return resp;
}


/* Writes s as a JSON string: escapes quotes, backslashes and control characters, and
 * replaces bytes that are not valid UTF-8 with U+FFFD. */
void json_str(FILE* out, const char* s) {
  const unsigned char* p = (const unsigned char*)(s ? s : "");
  size_t n = strlen((const char*)p);
  fputc('"', out);
  for (size_t i = 0; i < n;) {
    char esc[6];
    size_t used;
    fwrite(esc, 1, px_json_char(p + i, n - i, esc, &used), out);
    i += used;
  }
  fputc('"', out);
}

const char* human_bytes(uint64_t v, char* buf, size_t cap) {
  static const char* const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double d = (double)v;
  int u = 0;
  while (d >= 1024.0 && u < 6) {
    d /= 1024.0;
    u++;
  }
  if (u == 0)
    snprintf(buf, cap, "%" PRIu64 " B", v);
  else
    snprintf(buf, cap, "%.1f %s", d, units[u]);
  return buf;
}

const char* human_duration(uint64_t ms, char* buf, size_t cap) {
  uint64_t s = ms / 1000;
  if (s < 60)
    snprintf(buf, cap, "%.1f s", (double)ms / 1000.0);
  else if (s < 3600)
    snprintf(buf, cap, "%" PRIu64 "m%02" PRIu64 "s", s / 60, s % 60);
  else
    snprintf(buf, cap, "%" PRIu64 "h%02" PRIu64 "m", s / 3600, (s / 60) % 60);
  return buf;
}
