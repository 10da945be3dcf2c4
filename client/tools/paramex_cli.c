/* paramex: command-line tool for a running paramex-server.
 *
 *   paramex health ADDR [--wait SECONDS] [--service NAME]   grpc.health.v1 Check
 *   paramex stats ADDR [--json]                             ParameterExchange/Stats
 *   paramex checkpoint ADDR [--timeout SECONDS]             ParameterExchange/Checkpoint
 *   paramex export ADDR|CHECKPOINT --out FILE.safetensors   parameters as safetensors
 *   paramex version | --help
 * Every command that talks to a server takes --tls-ca/--tls-cert/--tls-key/
 * --tls-server-name/--token-file (or PMX_TLS_CA, ..., PMX_TOKEN_FILE, PMX_TOKEN).
 *
 * Exit status: 0 success (health: SERVING), 1 failure (RPC error, NOT_SERVING), 2 usage.
 * Talks to the server only through common/rpc; messages are (de)serialised with
 * protobuf-c. Strings from the server are untrusted: control characters are replaced
 * before they reach the terminal and JSON output is always valid UTF-8. */
#include <errno.h>
#include <pthread.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec/dtype.h"
#include "codec/payload.h"
#include "format/safetensors_read.h"
#include "format/safetensors_write.h"
#include "rpc/rpc_base.h"
#include "rpc/rpc_client.h"
#include "util/clock.h"
#include "util/file.h"
#include "util/flags.h"
#include "util/iov.h"
#include "util/str.h"
#include "wire/chunk_msg.h"
#include "health.pb-c.h"
#include "paramex.pb-c.h"

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

/* ---- connection flags ---------------------------------------------------------------- */

typedef struct conn_opts {
  const char *tls_ca, *tls_cert, *tls_key, *tls_server_name, *token_file;
} conn_opts;
static conn_opts g_conn;
#define CONN_FLAGS                                                                          \
  {"tls-ca", PX_FLAG_STR, &g_conn.tls_ca, 0, 0, "FILE", "PEM CA: connect with TLS"},          \
  {"tls-cert", PX_FLAG_STR, &g_conn.tls_cert, 0, 0, "FILE", "client certificate (mutual TLS)"}, \
  {"tls-key", PX_FLAG_STR, &g_conn.tls_key, 0, 0, "FILE", "key of --tls-cert"},              \
  {"tls-server-name", PX_FLAG_STR, &g_conn.tls_server_name, 0, 0, "NAME",                  \
   "name to expect in the server certificate"},                                              \
  {"token-file", PX_FLAG_STR, &g_conn.token_file, 0, 0, "FILE",                             \
   "bearer token (else PMX_TOKEN)"}

/* A channel to addr with the connection flags. NULL with one line in err. */
static px_rpc_channel* open_channel(const char* addr, char* err, size_t errlen) {
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

/* Length of the valid UTF-8 sequence at p (n bytes available), 0 when invalid. */
static size_t utf8_seq(const unsigned char* p, size_t n) {
  unsigned char c = p[0];
  size_t len;
  unsigned char lo = 0x80, hi = 0xBF; /* bounds of the second byte */
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) len = 2;
  else if (c == 0xE0) { len = 3; lo = 0xA0; }
  else if (c == 0xED) { len = 3; hi = 0x9F; }  /* no surrogates */
  else if (c >= 0xE1 && c <= 0xEF) len = 3;
  else if (c == 0xF0) { len = 4; lo = 0x90; }
  else if (c >= 0xF1 && c <= 0xF3) len = 4;
  else if (c == 0xF4) { len = 4; hi = 0x8F; }  /* <= U+10FFFF */
  else return 0;
  if (n < len || p[1] < lo || p[1] > hi) return 0;
  for (size_t i = 2; i < len; i++)
    if (p[i] < 0x80 || p[i] > 0xBF) return 0;
  return len;
}

/* Copies s into buf with every control character and every byte that is not valid UTF-8
 * replaced by replacement, so that text from the server or from gRPC stays on one line
 * and cannot drive the terminal. */
static const char* one_line(const char* s, char* buf, size_t cap, char replacement) {
  const unsigned char* p = (const unsigned char*)(s ? s : "");
  size_t n = 0, left = strlen((const char*)p);
  while (left && n + 1 < cap) {
    size_t len = utf8_seq(p, left);
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

static void sleep_ms(uint64_t ms) {
  struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static void top_usage(FILE* out) {
  fputs("usage: paramex COMMAND [ARGS]\n"
        "\n"
        "commands:\n"
        "  health ADDR [--wait SECONDS] [--service NAME]\n"
        "                  check a server's gRPC health; exit 0 when SERVING\n"
        "  stats ADDR [--json]\n"
        "                  print a server's counters, tensors and workers\n"
        "  checkpoint ADDR [--timeout SECONDS]\n"
        "                  have the server write a checkpoint now; prints its path\n"
        "  export ADDR|CHECKPOINT --out FILE.safetensors\n"
        "                  write the parameters (no optimizer state) as safetensors\n"
        "  version         print the version\n"
        "  help            show this help\n"
        "\n"
        "Run 'paramex COMMAND --help' for the flags of a command.\n"
        "Exit status: 0 success, 1 failure, 2 usage error.\n",
        out);
}

/* Parses a subcommand's flags (argv[0] is the subcommand) and its single ADDR argument.
 * Returns -1 to continue, otherwise the exit status. */
static int parse_cmd(const char* cmd, const px_flag* flags, size_t nflags, int argc, char** argv,
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

/* ---- health ------------------------------------------------------------------------- */

/* One Check call. Returns the gRPC status; on OK *serving receives the ServingStatus. */
static int health_once(px_rpc_channel* ch, const uint8_t* req, size_t req_len, int64_t timeout_ms,
                       bool wait_for_ready, int* serving, char* details, size_t cap) {
  uint8_t* resp = NULL;
  size_t resp_len = 0;
  int st = px_rpc_unary(ch, HEALTH_CHECK_PATH, req, req_len, timeout_ms, wait_for_ready, &resp,
                         &resp_len, details, cap);
  if (st == PX_ST_OK) {
    Grpc__Health__V1__HealthCheckResponse* r =
        grpc__health__v1__health_check_response__unpack(NULL, resp_len, resp);
    if (!r) {
      st = PX_ST_INTERNAL;
      snprintf(details, cap, "malformed HealthCheckResponse");
    } else {
      *serving = (int)r->status;
      grpc__health__v1__health_check_response__free_unpacked(r, NULL);
    }
  }
  free(resp);
  return st;
}

static const char* serving_name(int s, char* buf, size_t cap) {
  switch (s) {
    case GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__UNKNOWN: return "UNKNOWN";
    case GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING: return "SERVING";
    case GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING: return "NOT_SERVING";
    case GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN:
      return "SERVICE_UNKNOWN";
    default: snprintf(buf, cap, "UNKNOWN(%d)", s); return buf;
  }
}

static int cmd_health(int argc, char** argv) {
  double wait_s = 0;
  const char* service = "";
  const px_flag flags[] = {
      {"wait", PX_FLAG_F64, &wait_s, 0, WAIT_MAX_S, "SECONDS",
       "retry until SERVING or this many seconds passed (0: one attempt, 5 s deadline)"},
      {"service", PX_FLAG_STR, &service, 0, 0, "NAME", "service to check (empty: the server)"},
      CONN_FLAGS,
  };
  const char* addr = NULL;
  int rc = parse_cmd("health", flags, sizeof flags / sizeof flags[0], argc, argv, &addr);
  if (rc >= 0) return rc;

  Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  req.service = (char*)service;
  size_t req_len = grpc__health__v1__health_check_request__get_packed_size(&req);
  uint8_t* req_buf = malloc(req_len ? req_len : 1);
  if (!req_buf) {
    fprintf(stderr, "paramex: health %s: out of memory\n", addr);
    return 1;
  }
  grpc__health__v1__health_check_request__pack(&req, req_buf);

  px_rpc_init();
  char err[256], details[512];
  px_rpc_channel* ch = open_channel(addr, err, sizeof err);
  int st = PX_ST_UNKNOWN, serving = -1;
  details[0] = '\0';
  if (!ch) {
    st = PX_ST_INVALID_ARGUMENT;
    px_strlcpy(details, err, sizeof details);
  } else if (wait_s <= 0) {
    st = health_once(ch, req_buf, req_len, HEALTH_TIMEOUT_MS, false, &serving, details,
                     sizeof details);
  } else {
    /* Each attempt may use all the time that is left (wait_for_ready queues it until the
     * server is reachable). An attempt that ends early (NOT_SERVING, the server not up
     * yet, a refused connection) is retried after a pause that grows from 50 ms to 1 s,
     * which also bounds the number of attempts by about 8 + wait seconds. */
    const uint64_t deadline = px_now_ms() + (uint64_t)(wait_s * 1000.0 + 0.5);
    const unsigned max_attempts = 16 + (unsigned)wait_s;
    uint64_t pause = 50;
    for (unsigned attempt = 0; attempt < max_attempts; attempt++) {
      uint64_t now = px_now_ms();
      int64_t left = deadline > now ? (int64_t)(deadline - now) : 0;
      if (attempt > 0 && left == 0) break;
      serving = -1;
      st = health_once(ch, req_buf, req_len, left > 0 ? left : 1, true, &serving, details,
                       sizeof details);
      if (st == PX_ST_OK && serving == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING)
        break;
      now = px_now_ms();
      if (now >= deadline) break;
      sleep_ms(pause < deadline - now ? pause : deadline - now);
      pause = pause * 2 < 1000 ? pause * 2 : 1000;
    }
  }
  px_rpc_channel_destroy(ch);
  px_rpc_shutdown();
  free(req_buf);

  char line[512], nbuf[32];
  if (st != PX_ST_OK) {
    if (details[0])
      fprintf(stderr, "error: %s: %s\n", px_status_name(st), one_line(details, line, sizeof line, ' '));
    else
      fprintf(stderr, "error: %s\n", px_status_name(st));
    return 1;
  }
  printf("%s\n", serving_name(serving, nbuf, sizeof nbuf));
  if (fflush(stdout) != 0) return 1;
  return serving == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING ? 0 : 1;
}

/* ---- JSON --------------------------------------------------------------------------- */

/* Writes s as a JSON string: escapes quotes, backslashes and control characters, and
 * replaces bytes that are not valid UTF-8 with U+FFFD. */
static void json_str(FILE* out, const char* s) {
  const unsigned char* p = (const unsigned char*)(s ? s : "");
  size_t n = strlen((const char*)p);
  fputc('"', out);
  for (size_t i = 0; i < n;) {
    unsigned char c = p[i];
    switch (c) {
      case '"': fputs("\\\"", out); i++; continue;
      case '\\': fputs("\\\\", out); i++; continue;
      case '\b': fputs("\\b", out); i++; continue;
      case '\f': fputs("\\f", out); i++; continue;
      case '\n': fputs("\\n", out); i++; continue;
      case '\r': fputs("\\r", out); i++; continue;
      case '\t': fputs("\\t", out); i++; continue;
      default: break;
    }
    if (c < 0x20) {
      fprintf(out, "\\u%04x", c);
      i++;
      continue;
    }
    size_t len = utf8_seq(p + i, n - i);
    if (len == 0) {
      fputs("\\ufffd", out);
      i++;
    } else {
      fwrite(p + i, 1, len, out);
      i += len;
    }
  }
  fputc('"', out);
}

static void json_key(FILE* out, const char* key, bool* first) {
  if (!*first) fputc(',', out);
  *first = false;
  json_str(out, key);
  fputc(':', out);
}

static void json_u64(FILE* out, const char* key, uint64_t v, bool* first) {
  json_key(out, key, first);
  fprintf(out, "%" PRIu64, v);
}

static void json_string_field(FILE* out, const char* key, const char* v, bool* first) {
  json_key(out, key, first);
  json_str(out, v);
}

/* Enums as their proto value names, as the protobuf JSON mapping writes them; a number
 * when the value is unknown. */
static void json_enum(FILE* out, const char* key, const ProtobufCEnumDescriptor* d, int v,
                      bool* first) {
  const ProtobufCEnumValue* ev = protobuf_c_enum_descriptor_get_value(d, v);
  json_key(out, key, first);
  if (ev)
    json_str(out, ev->name);
  else
    fprintf(out, "%d", v);
}

static void stats_json(FILE* out, const Paramex__V1__StatsResponse* r) {
  bool first = true;
  fputc('{', out);
  json_string_field(out, "server_id", r->server_id, &first);
  json_u64(out, "uptime_ms", r->uptime_ms, &first);
  json_u64(out, "workers_expected", r->workers_expected, &first);
  json_u64(out, "workers_joined", r->workers_joined, &first);
  json_u64(out, "push_chunks", r->push_chunks, &first);
  json_u64(out, "push_duplicates", r->push_duplicates, &first);
  json_u64(out, "push_raw_bytes", r->push_raw_bytes, &first);
  json_u64(out, "push_wire_bytes", r->push_wire_bytes, &first);
  json_u64(out, "pull_chunks", r->pull_chunks, &first);
  json_u64(out, "pull_raw_bytes", r->pull_raw_bytes, &first);
  json_u64(out, "pull_wire_bytes", r->pull_wire_bytes, &first);
  json_u64(out, "steps_completed", r->steps_completed, &first);
  json_u64(out, "rejected_calls", r->rejected_calls, &first);
  json_u64(out, "history_bytes", r->history_bytes, &first);
  json_u64(out, "history_budget", r->history_budget, &first);
  json_u64(out, "frame_cache_bytes", r->frame_cache_bytes, &first);
  json_u64(out, "encodes", r->encodes, &first);
  json_u64(out, "frame_cache_hits", r->frame_cache_hits, &first);
  json_u64(out, "pull_unchanged", r->pull_unchanged, &first);
  json_u64(out, "pull_delta", r->pull_delta, &first);
  json_u64(out, "pull_snapshot", r->pull_snapshot, &first);
  json_key(out, "tensors", &first);
  fputc('[', out);
  for (size_t i = 0; i < r->n_tensors; i++) {
    const Paramex__V1__TensorStats* t = r->tensors[i];
    bool f = true;
    fputs(i ? ",{" : "{", out);
    json_u64(out, "id", t->id, &f);
    json_string_field(out, "name", t->name, &f);
    json_enum(out, "dtype", &paramex__v1__dtype__descriptor, (int)t->dtype, &f);
    json_key(out, "shape", &f);
    fputc('[', out);
    for (size_t k = 0; k < t->n_shape; k++) fprintf(out, "%s%" PRIu64, k ? "," : "", t->shape[k]);
    fputc(']', out);
    json_u64(out, "version_min", t->version_min, &f);
    json_u64(out, "version_max", t->version_max, &f);
    json_u64(out, "bytes", t->bytes, &f);
    json_u64(out, "num_chunks", t->num_chunks, &f);
    json_u64(out, "checksum", t->checksum, &f);
    json_u64(out, "push_raw_bytes", t->push_raw_bytes, &f);
    json_u64(out, "push_wire_bytes", t->push_wire_bytes, &f);
    json_u64(out, "pull_raw_bytes", t->pull_raw_bytes, &f);
    json_u64(out, "pull_wire_bytes", t->pull_wire_bytes, &f);
    fputc('}', out);
  }
  fputc(']', out);
  json_key(out, "workers", &first);
  fputc('[', out);
  for (size_t i = 0; i < r->n_workers; i++) {
    const Paramex__V1__WorkerStats* w = r->workers[i];
    bool f = true;
    fputs(i ? ",{" : "{", out);
    json_u64(out, "rank", w->rank, &f);
    json_u64(out, "incarnation", w->incarnation, &f);
    json_string_field(out, "name", w->name, &f);
    json_u64(out, "chunks_pushed", w->chunks_pushed, &f);
    json_u64(out, "last_seen_ms", w->last_seen_ms, &f);
    fputc('}', out);
  }
  fputc(']', out);
  json_u64(out, "version_min", r->version_min, &first);
  json_u64(out, "version_max", r->version_max, &first);
  fputs("}\n", out);
}

/* ---- human-readable stats ----------------------------------------------------------- */

static const char* human_bytes(uint64_t v, char* buf, size_t cap) {
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

static const char* ratio(uint64_t wire, uint64_t raw, char* buf, size_t cap) {
  if (raw == 0)
    snprintf(buf, cap, "n/a");
  else
    snprintf(buf, cap, "%.3f", (double)wire / (double)raw);
  return buf;
}

static const char* human_duration(uint64_t ms, char* buf, size_t cap) {
  uint64_t s = ms / 1000;
  if (s < 60)
    snprintf(buf, cap, "%.1f s", (double)ms / 1000.0);
  else if (s < 3600)
    snprintf(buf, cap, "%" PRIu64 "m%02" PRIu64 "s", s / 60, s % 60);
  else
    snprintf(buf, cap, "%" PRIu64 "h%02" PRIu64 "m", s / 3600, (s / 60) % 60);
  return buf;
}

static const char* shape_str(const Paramex__V1__TensorStats* t, char* buf, size_t cap) {
  size_t n = (size_t)snprintf(buf, cap, "[");
  for (size_t k = 0; k < t->n_shape && n < cap; k++)
    n += (size_t)snprintf(buf + n, cap - n, "%s%" PRIu64, k ? "," : "", t->shape[k]);
  if (n < cap) snprintf(buf + n, cap - n, "]");
  return buf;
}

static int text_width(const char* s, int min, int max) {
  int n = (int)strlen(s);
  return n < min ? min : n > max ? max : n;
}

static void stats_text(FILE* out, const Paramex__V1__StatsResponse* r) {
  char a[64], b[256], c[64], line[512];
  fprintf(out, "%-18s %s\n", "server_id", one_line(r->server_id, line, sizeof line, '?'));
  fprintf(out, "%-18s %" PRIu64 " (%s)\n", "uptime_ms", r->uptime_ms,
          human_duration(r->uptime_ms, a, sizeof a));
  fprintf(out, "%-18s %" PRIu32 "\n", "workers_expected", r->workers_expected);
  fprintf(out, "%-18s %" PRIu32 "\n", "workers_joined", r->workers_joined);
  fprintf(out, "%-18s %" PRIu64 "\n", "version_min", r->version_min);
  fprintf(out, "%-18s %" PRIu64 "\n", "version_max", r->version_max);
  fprintf(out, "%-18s %" PRIu64 "\n", "steps_completed", r->steps_completed);
  fprintf(out, "%-18s %" PRIu64 "\n", "rejected_calls", r->rejected_calls);
  fprintf(out, "%-18s %" PRIu64 "\n", "push_chunks", r->push_chunks);
  fprintf(out, "%-18s %" PRIu64 "\n", "push_duplicates", r->push_duplicates);
  fprintf(out, "%-18s %" PRIu64 " (%s)\n", "push_raw_bytes", r->push_raw_bytes,
          human_bytes(r->push_raw_bytes, a, sizeof a));
  fprintf(out, "%-18s %" PRIu64 " (%s)\n", "push_wire_bytes", r->push_wire_bytes,
          human_bytes(r->push_wire_bytes, a, sizeof a));
  fprintf(out, "%-18s %s\n", "push wire/raw",
          ratio(r->push_wire_bytes, r->push_raw_bytes, a, sizeof a));
  fprintf(out, "%-18s %" PRIu64 "\n", "pull_chunks", r->pull_chunks);
  fprintf(out, "%-18s %" PRIu64 " (%s)\n", "pull_raw_bytes", r->pull_raw_bytes,
          human_bytes(r->pull_raw_bytes, a, sizeof a));
  fprintf(out, "%-18s %" PRIu64 " (%s)\n", "pull_wire_bytes", r->pull_wire_bytes,
          human_bytes(r->pull_wire_bytes, a, sizeof a));
  fprintf(out, "%-18s %s\n", "pull wire/raw",
          ratio(r->pull_wire_bytes, r->pull_raw_bytes, a, sizeof a));
  fprintf(out, "%-18s %" PRIu64 "\n", "pull_unchanged", r->pull_unchanged);
  fprintf(out, "%-18s %" PRIu64 "\n", "pull_delta", r->pull_delta);
  fprintf(out, "%-18s %" PRIu64 "\n", "pull_snapshot", r->pull_snapshot);
  fprintf(out, "%-18s %" PRIu64 "\n", "encodes", r->encodes);
  fprintf(out, "%-18s %" PRIu64 "\n", "frame_cache_hits", r->frame_cache_hits);
  fprintf(out, "%-18s %" PRIu64 " (%s)\n", "frame_cache_bytes", r->frame_cache_bytes,
          human_bytes(r->frame_cache_bytes, a, sizeof a));
  fprintf(out, "%-18s %" PRIu64 " (%s)\n", "history_bytes", r->history_bytes,
          human_bytes(r->history_bytes, a, sizeof a));
  fprintf(out, "%-18s %" PRIu64 " (%s)\n", "history_budget", r->history_budget,
          human_bytes(r->history_budget, a, sizeof a));

  /* Column widths follow the content (names capped at 64 characters). */
  int wname = 4, wshape = 5;
  for (size_t i = 0; i < r->n_tensors; i++) {
    int wn = text_width(r->tensors[i]->name, 4, 64);
    int ws = text_width(shape_str(r->tensors[i], b, sizeof b), 5, 63);
    wname = wn > wname ? wn : wname;
    wshape = ws > wshape ? ws : wshape;
  }
  fprintf(out, "\ntensors (%zu)\n", r->n_tensors);
  if (r->n_tensors)
    fprintf(out, "  %5s  %-*s  %-5s  %-*s  %11s  %11s  %14s  %8s  %s\n", "ID", wname, "NAME",
            "DTYPE", wshape, "SHAPE", "VERSION_MIN", "VERSION_MAX", "BYTES", "CHUNKS", "CHECKSUM");
  for (size_t i = 0; i < r->n_tensors; i++) {
    const Paramex__V1__TensorStats* t = r->tensors[i];
    if (t->checksum)
      snprintf(c, sizeof c, "0x%016" PRIx64, t->checksum);
    else
      snprintf(c, sizeof c, "-");
    fprintf(out, "  %5" PRIu32 "  %-*s  %-5s  %-*s  %11" PRIu64 "  %11" PRIu64 "  %14" PRIu64
                 "  %8" PRIu32 "  %s\n",
            t->id, wname, one_line(t->name, line, sizeof line, '?'), px_dtype_name((int)t->dtype),
            wshape, shape_str(t, b, sizeof b), t->version_min, t->version_max, t->bytes,
            t->num_chunks, c);
  }
  /* Traffic per tensor, in its own table so that the one above stays readable: raw
   * bytes are the decoded chunk contents, wire bytes the messages as sent. */
  if (r->n_tensors) {
    fprintf(out, "\ntensor traffic\n");
    fprintf(out, "  %5s  %-*s  %12s  %12s  %8s  %12s  %12s  %8s\n", "ID", wname, "NAME",
            "PUSH_RAW", "PUSH_WIRE", "WIRE/RAW", "PULL_RAW", "PULL_WIRE", "WIRE/RAW");
  }
  for (size_t i = 0; i < r->n_tensors; i++) {
    const Paramex__V1__TensorStats* t = r->tensors[i];
    char pr[32], pw[32], pq[32], lr[32], lw[32], lq[32];
    fprintf(out, "  %5" PRIu32 "  %-*s  %12s  %12s  %8s  %12s  %12s  %8s\n", t->id, wname,
            one_line(t->name, line, sizeof line, '?'), human_bytes(t->push_raw_bytes, pr, sizeof pr),
            human_bytes(t->push_wire_bytes, pw, sizeof pw),
            ratio(t->push_wire_bytes, t->push_raw_bytes, pq, sizeof pq),
            human_bytes(t->pull_raw_bytes, lr, sizeof lr),
            human_bytes(t->pull_wire_bytes, lw, sizeof lw),
            ratio(t->pull_wire_bytes, t->pull_raw_bytes, lq, sizeof lq));
  }

  int wwname = 4;
  for (size_t i = 0; i < r->n_workers; i++) {
    int wn = text_width(r->workers[i]->name, 4, 64);
    wwname = wn > wwname ? wn : wwname;
  }
  fprintf(out, "\nworkers (%zu)\n", r->n_workers);
  if (r->n_workers)
    fprintf(out, "  %5s  %20s  %-*s  %14s  %12s\n", "RANK", "INCARNATION", wwname, "NAME",
            "CHUNKS_PUSHED", "LAST_SEEN_MS");
  for (size_t i = 0; i < r->n_workers; i++) {
    const Paramex__V1__WorkerStats* w = r->workers[i];
    fprintf(out, "  %5" PRIu32 "  %20" PRIu64 "  %-*s  %14" PRIu64 "  %12" PRIu64 "\n", w->rank,
            w->incarnation, wwname, one_line(w->name, line, sizeof line, '?'), w->chunks_pushed,
            w->last_seen_ms);
  }
}

/* One unary call of `cmd` to addr with an empty request: opens the channel, calls, and
 * prints one line on failure. Returns the response (malloc'd; *len its size) or NULL. */
static uint8_t* call_empty(const char* cmd, const char* addr, const char* path, int64_t timeout_ms,
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

static int cmd_stats(int argc, char** argv) {
  bool json = false;
  const px_flag flags[] = {
      {"json", PX_FLAG_BOOL, &json, 0, 0, NULL, "print one JSON object (proto field names)"},
      CONN_FLAGS,
  };
  const char* addr = NULL;
  int rc = parse_cmd("stats", flags, sizeof flags / sizeof flags[0], argc, argv, &addr);
  if (rc >= 0) return rc;

  size_t resp_len = 0;
  uint8_t* resp = call_empty("stats", addr, STATS_PATH, STATS_TIMEOUT_MS, &resp_len);
  if (!resp) return 1;
  Paramex__V1__StatsResponse* r = paramex__v1__stats_response__unpack(NULL, resp_len, resp);
  free(resp);
  if (!r) {
    fprintf(stderr, "paramex: stats %s: malformed StatsResponse\n", addr);
    return 1;
  }
  if (json)
    stats_json(stdout, r);
  else
    stats_text(stdout, r);
  paramex__v1__stats_response__free_unpacked(r, NULL);
  if (fflush(stdout) != 0 || ferror(stdout)) {
    fprintf(stderr, "paramex: stats: cannot write the output\n");
    return 1;
  }
  return 0;
}

/* ---- checkpoint ------------------------------------------------------------------------ */

static int cmd_checkpoint(int argc, char** argv) {
  double timeout_s = 600;
  const px_flag flags[] = {
      {"timeout", PX_FLAG_F64, &timeout_s, 1, 86400, "SECONDS",
       "wait this long for every chunk to reach the version and the file to be written"},
      CONN_FLAGS,
  };
  const char* addr = NULL;
  int rc = parse_cmd("checkpoint", flags, sizeof flags / sizeof flags[0], argc, argv, &addr);
  if (rc >= 0) return rc;
  size_t resp_len = 0;
  uint8_t* resp = call_empty("checkpoint", addr, CHECKPOINT_PATH, (int64_t)(timeout_s * 1000.0),
                             &resp_len);
  if (!resp) return 1;
  char line[512];
  Paramex__V1__CheckpointResponse* r = paramex__v1__checkpoint_response__unpack(NULL, resp_len, resp);
  free(resp);
  if (!r) {
    fprintf(stderr, "paramex: checkpoint %s: malformed CheckpointResponse\n", addr);
    return 1;
  }
  printf("checkpoint at version %" PRIu64 ": %s (%" PRIu64 " bytes)\n", r->version,
         one_line(r->path ? r->path : "", line, sizeof line, '?'), r->bytes);
  paramex__v1__checkpoint_response__free_unpacked(r, NULL);
  return fflush(stdout) == 0 ? 0 : 1;
}

/* ---- export ------------------------------------------------------------------------------ */

typedef struct export_src {
  size_t n;
  px_st_entry* e;
  const void** data; /* one buffer per entry */
} export_src;

static int export_write(void* ctx, size_t index, px_st_sink* sink) {
  export_src* x = ctx;
  return px_st_sink_write(sink, x->data[index], x->e[index].nbytes);
}

/* Splits "dir/name" for px_st_write; out must be absolute or relative. */
static int write_safetensors(const char* out, export_src* x, const char* version, char* err,
                             size_t errlen) {
  char dir[4096];
  const char* slash = strrchr(out, '/');
  const char* name = slash ? slash + 1 : out;
  if (!*name) {
    snprintf(err, errlen, "--out %s: not a file name", out);
    return -1;
  }
  snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - out) : 1, slash ? out : ".");
  if (slash == out) snprintf(dir, sizeof dir, "/");
  const char* meta[] = {"pmx.version", version};
  return px_st_write(dir, name, x->e, x->n, export_write, x, meta, version ? 1 : 0, err, errlen);
}

static int export_checkpoint(const char* path, const char* out) {
  char err[512], line[512];
  px_st_file* f = px_st_open(path, err, sizeof err);
  if (!f) {
    fprintf(stderr, "paramex: export: %s\n", one_line(err, line, sizeof line, ' '));
    return 1;
  }
  size_t n = px_st_count(f), k = 0;
  export_src x = {0, calloc(n ? n : 1, sizeof *x.e), calloc(n ? n : 1, sizeof *x.data)};
  for (size_t i = 0; x.e && x.data && i < n; i++) {
    px_st_tensor t;
    px_st_entry_at(f, i, &t);
    size_t nl = strlen(t.name);
    if (nl > 9 && strcmp(t.name + nl - 9, "@momentum") == 0) continue; /* optimizer state */
    x.e[k] = (px_st_entry){t.name, t.dtype, t.ndim, t.shape, t.nbytes};
    x.data[k++] = t.data;
  }
  x.n = k;
  int rc = x.e && x.data ? write_safetensors(out, &x, px_st_meta(f, "pmx.version"), err, sizeof err)
                         : -1;
  if (rc != 0) fprintf(stderr, "paramex: export: %s\n", one_line(err, line, sizeof line, ' '));
  else printf("exported %zu tensors from %s to %s\n", k, path, out);
  free(x.e);
  free(x.data);
  px_st_close(f);
  return rc == 0 ? 0 : 1;
}

/* From a live server: Stats for the tensors, one Pull (RAW chunks) for their bytes. */
typedef struct export_pull {
  Paramex__V1__StatsResponse* stats;
  uint8_t** bufs;
  uint32_t ti, ci, chunk_elems0;
  uint64_t vmin, vmax;
  bool bad;
  char err[256];
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool done;
  int status;
  char details[256];
} export_pull;

static void xp_message(px_cli_call* call, void* ctx, px_msg* m) {
  export_pull* x = ctx;
  if (!m) return;
  size_t nseg;
  const px_iov* seg = px_msg_segments(m, &nseg);
  px_chunk h;
  if (x->bad || px_chunk_parse(PX_CHUNK_PULL, seg, nseg, &h, x->err, sizeof x->err) != 0 ||
      x->ti >= x->stats->n_tensors) {
    if (!x->bad && x->ti >= x->stats->n_tensors) snprintf(x->err, sizeof x->err, "too many chunks");
    x->bad = true;
    px_msg_free(m);
    px_cli_call_cancel(call);
    return;
  }
  Paramex__V1__TensorStats* t = x->stats->tensors[x->ti];
  size_t es = px_dtype_size(t->dtype);
  if (h.chunk == 0) x->chunk_elems0 = es ? h.raw_len / (uint32_t)es : 0;
  uint64_t off = (uint64_t)h.chunk * x->chunk_elems0 * es;
  if (h.tensor_id != t->id || h.chunk != x->ci || es == 0 || off + h.raw_len > t->bytes ||
      px_chunk_decode(&h, seg, nseg, x->bufs[x->ti] + off, h.raw_len / es, (int)es, x->err,
                       sizeof x->err) != PX_DECODE_OK) {
    if (h.tensor_id != t->id || h.chunk != x->ci) snprintf(x->err, sizeof x->err, "chunks out of order");
    x->bad = true;
    px_msg_free(m);
    px_cli_call_cancel(call);
    return;
  }
  if (h.version < x->vmin) x->vmin = h.version;
  if (h.version > x->vmax) x->vmax = h.version;
  if (++x->ci == t->num_chunks) {
    x->ci = 0;
    x->ti++;
  }
  px_msg_free(m);
  px_cli_call_read(call);
}

static void xp_done(px_cli_call* call, void* ctx, int status, const char* details) {
  (void)call;
  export_pull* x = ctx;
  pthread_mutex_lock(&x->mu);
  x->status = status;
  snprintf(x->details, sizeof x->details, "%s", details);
  x->done = true;
  pthread_cond_signal(&x->cv);
  pthread_mutex_unlock(&x->mu);
}

static const px_cli_call_cbs xp_cbs = {xp_message, NULL, xp_done};

static int export_server(const char* addr, const char* out) {
  char err[512], details[512], line[512];
  px_rpc_init();
  px_rpc_channel* ch = open_channel(addr, err, sizeof err);
  if (!ch) {
    px_rpc_shutdown();
    fprintf(stderr, "paramex: export %s: %s\n", addr, one_line(err, line, sizeof line, ' '));
    return 1;
  }
  uint8_t* resp = NULL;
  size_t resp_len = 0;
  int st = px_rpc_unary(ch, STATS_PATH, "", 0, STATS_TIMEOUT_MS, false, &resp, &resp_len,
                         details, sizeof details);
  Paramex__V1__StatsResponse* s = st == PX_ST_OK ? paramex__v1__stats_response__unpack(NULL, resp_len, resp) : NULL;
  free(resp);
  int rc = 1;
  export_pull x = {0};
  pthread_mutex_init(&x.mu, NULL);
  pthread_cond_init(&x.cv, NULL);
  x.vmin = UINT64_MAX;
  if (!s) {
    fprintf(stderr, "paramex: export %s: Stats: %s: %s\n", addr, px_status_name(st),
            one_line(details, line, sizeof line, ' '));
    goto out;
  }
  x.stats = s;
  x.bufs = calloc(s->n_tensors ? s->n_tensors : 1, sizeof *x.bufs);
  uint32_t* ids = calloc(s->n_tensors ? s->n_tensors : 1, sizeof *ids);
  for (size_t i = 0; x.bufs && ids && i < s->n_tensors; i++) {
    x.bufs[i] = malloc(s->tensors[i]->bytes ? s->tensors[i]->bytes : 1);
    ids[i] = s->tensors[i]->id;
    if (!x.bufs[i]) break;
  }
  Paramex__V1__PullRequest pr = PARAMEX__V1__PULL_REQUEST__INIT;
  pr.n_tensor_ids = s->n_tensors;
  pr.tensor_ids = ids;
  pr.min_version = s->version_max; /* every chunk at least at the newest version seen */
  size_t plen = paramex__v1__pull_request__get_packed_size(&pr);
  uint8_t* pbuf = malloc(plen ? plen : 1);
  if (s->n_tensors == 0) {
    fprintf(stderr, "paramex: export %s: the server has no tensor\n", addr);
  } else if (pbuf && ids && x.bufs) {
    paramex__v1__pull_request__pack(&pr, pbuf);
    px_cli_call* call = px_cli_call_start(ch, PULL_PATH, 600000, false, &xp_cbs, &x);
    px_out o = {pbuf, plen, NULL, 0, NULL, NULL};
    px_cli_call_send(call, &o, true);
    px_cli_call_read(call);
    px_cli_call_unref(call);
    pthread_mutex_lock(&x.mu);
    while (!x.done) pthread_cond_wait(&x.cv, &x.mu);
    pthread_mutex_unlock(&x.mu);
    if (x.bad || x.status != PX_ST_OK || x.ti != s->n_tensors) {
      fprintf(stderr, "paramex: export %s: Pull: %s\n", addr,
              x.bad ? x.err : x.status != PX_ST_OK ? one_line(x.details, line, sizeof line, ' ')
                                                     : "the stream ended early");
    } else {
      export_src src = {s->n_tensors, calloc(s->n_tensors, sizeof *src.e),
                        calloc(s->n_tensors, sizeof *src.data)};
      for (size_t i = 0; src.e && src.data && i < s->n_tensors; i++) {
        src.e[i] = (px_st_entry){s->tensors[i]->name, s->tensors[i]->dtype,
                                  (uint32_t)s->tensors[i]->n_shape, s->tensors[i]->shape,
                                  s->tensors[i]->bytes};
        src.data[i] = x.bufs[i];
      }
      char version[32];
      snprintf(version, sizeof version, "%" PRIu64, x.vmin);
      if (src.e && src.data && write_safetensors(out, &src, version, err, sizeof err) == 0) {
        printf("exported %zu tensors at version %" PRIu64 "%s from %s to %s\n", s->n_tensors,
               x.vmin, x.vmin == x.vmax ? "" : " (some chunks newer: training was running)",
               addr, out);
        rc = 0;
      } else {
        fprintf(stderr, "paramex: export: %s\n", one_line(err, line, sizeof line, ' '));
      }
      free(src.e);
      free(src.data);
    }
  }
  for (size_t i = 0; x.bufs && i < s->n_tensors; i++) free(x.bufs[i]);
  free(x.bufs);
  free(ids);
  free(pbuf);
out:
  if (s) paramex__v1__stats_response__free_unpacked(s, NULL);
  px_rpc_channel_destroy(ch);
  px_rpc_shutdown();
  pthread_mutex_destroy(&x.mu);
  pthread_cond_destroy(&x.cv);
  return rc;
}

static int cmd_export(int argc, char** argv) {
  const char* out = NULL;
  const px_flag flags[] = {
      {"out", PX_FLAG_STR, &out, 0, 0, "FILE", "safetensors file to write (required)"},
      CONN_FLAGS,
  };
  const char* src = NULL;
  int rc = parse_cmd("export", flags, sizeof flags / sizeof flags[0], argc, argv, &src);
  if (rc >= 0) return rc;
  if (!out) {
    fprintf(stderr, "paramex export: --out FILE is required\n");
    return 2;
  }
  FILE* f = fopen(src, "rb");
  if (f) {
    fclose(f);
    return export_checkpoint(src, out);
  }
  return export_server(src, out);
}

/* ---- main --------------------------------------------------------------------------- */

int main(int argc, char** argv) {
  if (argc < 2) {
    top_usage(stderr);
    return 2;
  }
  const char* cmd = argv[1];
  if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
    top_usage(stdout);
    return 0;
  }
  if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
    if (argc > 2) {
      fprintf(stderr, "paramex: version: unexpected argument '%s'\n", argv[2]);
      return 2;
    }
    printf("paramex %s\n", PX_VERSION);
    return fflush(stdout) == 0 ? 0 : 1;
  }
  if (strcmp(cmd, "health") == 0) return cmd_health(argc - 1, argv + 1);
  if (strcmp(cmd, "stats") == 0) return cmd_stats(argc - 1, argv + 1);
  if (strcmp(cmd, "checkpoint") == 0) return cmd_checkpoint(argc - 1, argv + 1);
  if (strcmp(cmd, "export") == 0) return cmd_export(argc - 1, argv + 1);
  if (cmd[0] == '-')
    fprintf(stderr, "paramex: unknown flag %s (try 'paramex --help')\n", cmd);
  else
    fprintf(stderr, "paramex: unknown command '%s' (try 'paramex --help')\n", cmd);
  return 2;
}
