/* Unit tests of client/client.c (client.h, and pmx_connect / pmx_join / pmx_client_* of
 * paramex.h) against real paramex-server processes: pmx_connect's argument and option
 * errors (no address, compression out of range, PMX_PULL_COMPRESSION, TLS and token files
 * from options and from the environment, a client certificate without a CA or without a
 * key), pull compression AUTO / ON / OFF as reported by pmx_client_get_stats, the bearer
 * token (option, file, environment), pmx_join (its info, a new incarnation per join, a
 * world_size the server refuses, waiting for a server that comes up late,
 * connect_timeout_ms), the heartbeats that keep the lease of a worker that makes no other
 * call, the client's counters, and pmx_client_destroy(NULL); pmx_version's static string,
 * the option defaults (0 = 60000 / 30000 / 120000), PMX_PULL_COMPRESSION over the
 * compression option, AUTO on unix sockets and local interface addresses, token files read
 * by pmx_connect and tokens in no log message nor last error, and tls_server_name /
 * PMX_TLS_SERVER_NAME (openssl certificates; a failed handshake logged via the callback). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client.h"
#include "errors.h"
#include "harness.h"
#include "paramex/paramex.h"
#include "rpc/rpc_base.h"
#include "rpc/rpc_client.h"

#define SRV_START_MS 30000
#define SRV_STOP_MS 30000

static const char* const pmx_env[] = {"PMX_TLS_CA", "PMX_TLS_CERT", "PMX_TLS_KEY",
                                      "PMX_TLS_SERVER_NAME", "PMX_TOKEN", "PMX_TOKEN_FILE",
                                      "PMX_PULL_COMPRESSION", "PMX_MALLOC_TUNE"};

static void clear_env(void) {
  for (size_t i = 0; i < sizeof pmx_env / sizeof pmx_env[0]; i++) unsetenv(pmx_env[i]);
}

static void expect_st(const char* what, pmx_status st, pmx_status want) {
  if (st != want)
    fail_msg("%s: %s (%d; '%s'), want %s (%d)", what, pmx_strerror(st), (int)st, pmx_last_error(),
             pmx_strerror(want), (int)want);
}

static void expect_error_has(const char* what, const char* needle) {
  if (!strstr(pmx_last_error(), needle))
    fail_msg("%s: last error '%s' does not contain '%s'", what, pmx_last_error(), needle);
}

static char g_dir[512];

static int group_setup(void** state) {
  (void)state;
  clear_env();
  px_rpc_init();
  return px_h_mkdtemp(g_dir, sizeof g_dir);
}

static int group_teardown(void** state) {
  (void)state;
  px_h_rmtree(g_dir);
  px_rpc_shutdown();
  return 0;
}

static int teardown(void** state) {
  (void)state;
  pmx_set_log_callback(NULL, NULL, PMX_LOG_ERROR);
  clear_env();
  px_h_kill_all();
  return 0;
}

static void server_start(px_h_server* s, const char* const* args) {
  char err[512];
  if (px_h_server_start(s, args, NULL, SRV_START_MS, err, sizeof err) != 0) fail_msg("server: %s", err);
}

static void server_stop(px_h_server* s) {
  int ws = 0;
  size_t extra = 0;
  if (px_h_server_stop(s, SRV_STOP_MS, &ws, &extra) != 0) fail_msg("the server did not stop");
  char d[96];
  if (ws != 0) fail_msg("the server %s", px_h_describe_wstatus(ws, d, sizeof d));
}

static void write_file(const char* name, const char* text, char* path, size_t cap) {
  snprintf(path, cap, "%s/%s", g_dir, name);
  FILE* f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  assert_int_equal(fclose(f), 0);
}

/* pmx_connect must fail with st, write nothing to *out, and say needle. */
static void connect_fails(const char* what, const char* addr, const pmx_options* o, pmx_status st,
                          const char* needle) {
  pmx_client* c = (pmx_client*)(uintptr_t)0x10;
  px_fail(PMX_OK, "%s", "");
  expect_st(what, pmx_connect(addr, o, &c), st);
  assert_ptr_equal(c, (pmx_client*)(uintptr_t)0x10);
  expect_error_has(what, needle);
}

static int compressed(const char* addr, const pmx_options* o) {
  pmx_client* c = NULL;
  expect_st("connect", pmx_connect(addr, o, &c), PMX_OK);
  assert_non_null(c);
  pmx_client_stats s;
  memset(&s, 0x5a, sizeof s);
  pmx_client_get_stats(c, &s);
  int r = s.compressed_pulls;
  pmx_client_destroy(c);
  return r;
}

/* ---- pmx_connect ------------------------------------------------------------------------- */

static void test_version(void** state) {
  (void)state;
  char want[32];
  snprintf(want, sizeof want, "%d.%d.%d", PMX_VERSION_MAJOR, PMX_VERSION_MINOR, PMX_VERSION_PATCH);
  assert_string_equal(pmx_version(), want);
  /* a static string: the same pointer every time */
  assert_ptr_equal(pmx_version(), pmx_version());
}

/* "0 = 60000", "0 = 30000", "0 = 120000": opts NULL and zero fields get the defaults,
 * set fields are kept. */
static void test_connect_option_defaults(void** state) {
  (void)state;
  pmx_client* c = NULL;
  expect_st("connect with opts NULL", pmx_connect("127.0.0.1:1", NULL, &c), PMX_OK);
  assert_int_equal(c->timeout_ms, 60000);
  assert_int_equal(c->connect_timeout_ms, 30000);
  assert_int_equal(c->retry_timeout_ms, 120000);
  pmx_client_destroy(c);
  pmx_options zero = {0};
  c = NULL;
  expect_st("connect with zero options", pmx_connect("127.0.0.1:1", &zero, &c), PMX_OK);
  assert_int_equal(c->timeout_ms, 60000);
  assert_int_equal(c->connect_timeout_ms, 30000);
  assert_int_equal(c->retry_timeout_ms, 120000);
  pmx_client_destroy(c);
  pmx_options set = {.timeout_ms = 1234, .connect_timeout_ms = 567, .retry_timeout_ms = 89};
  c = NULL;
  expect_st("connect with options", pmx_connect("127.0.0.1:1", &set, &c), PMX_OK);
  assert_int_equal(c->timeout_ms, 1234);
  assert_int_equal(c->connect_timeout_ms, 567);
  assert_int_equal(c->retry_timeout_ms, 89);
  pmx_client_destroy(c);
}

static void test_connect_arguments(void** state) {
  (void)state;
  connect_fails("NULL address", NULL, NULL, PMX_ERR_INVALID_ARGUMENT, "pmx_connect");
  connect_fails("empty address", "", NULL, PMX_ERR_INVALID_ARGUMENT, "no address");
  expect_st("NULL out", pmx_connect("127.0.0.1:1", NULL, NULL), PMX_ERR_INVALID_ARGUMENT);
  pmx_options o = {.compression = 3};
  connect_fails("compression 3", "127.0.0.1:1", &o, PMX_ERR_INVALID_ARGUMENT, "compression");
  expect_error_has("compression 3", "not 3");
  o.compression = -1;
  connect_fails("compression -1", "127.0.0.1:1", &o, PMX_ERR_INVALID_ARGUMENT, "not -1");
  /* lazy: a port nobody listens on is fine until the first call */
  pmx_client* c = NULL;
  expect_st("connect to a closed port", pmx_connect("127.0.0.1:1", NULL, &c), PMX_OK);
  assert_non_null(c);
  pmx_client_destroy(c);
  pmx_client_destroy(NULL); /* accepted */
}

static void test_connect_pull_compression_env(void** state) {
  (void)state;
  setenv("PMX_PULL_COMPRESSION", "bogus", 1);
  connect_fails("PMX_PULL_COMPRESSION=bogus", "127.0.0.1:1", NULL, PMX_ERR_INVALID_ARGUMENT,
                "PMX_PULL_COMPRESSION");
  expect_error_has("PMX_PULL_COMPRESSION=bogus", "bogus");
  setenv("PMX_PULL_COMPRESSION", "on", 1);
  assert_int_equal(compressed("127.0.0.1:1", NULL), 1);
  setenv("PMX_PULL_COMPRESSION", "off", 1);
  assert_int_equal(compressed("192.0.2.1:50051", NULL), 0);
  setenv("PMX_PULL_COMPRESSION", "auto", 1);
  assert_int_equal(compressed("127.0.0.1:1", NULL), 0);
  assert_int_equal(compressed("192.0.2.1:50051", NULL), 1);
  /* no_compression: raw chunks only, whatever the environment says */
  setenv("PMX_PULL_COMPRESSION", "on", 1);
  pmx_options o = {.no_compression = 1};
  assert_int_equal(compressed("127.0.0.1:1", &o), 0);
  /* the environment overrides pmx_options.compression */
  pmx_options off = {.compression = PMX_COMPRESSION_OFF};
  unsetenv("PMX_PULL_COMPRESSION");
  assert_int_equal(compressed("192.0.2.1:50051", &off), 0); /* without the environment */
  setenv("PMX_PULL_COMPRESSION", "on", 1);
  assert_int_equal(compressed("192.0.2.1:50051", &off), 1);
  pmx_options on = {.compression = PMX_COMPRESSION_ON};
  setenv("PMX_PULL_COMPRESSION", "off", 1);
  assert_int_equal(compressed("127.0.0.1:1", &on), 0);
  setenv("PMX_PULL_COMPRESSION", "auto", 1);
  assert_int_equal(compressed("127.0.0.1:1", &on), 0);
  assert_int_equal(compressed("192.0.2.1:50051", &off), 1);
  unsetenv("PMX_PULL_COMPRESSION");
}

static void test_connect_compression_modes(void** state) {
  (void)state;
  pmx_options o = {.compression = PMX_COMPRESSION_AUTO};
  /* AUTO: off for a server on this host, on for a remote one */
  assert_int_equal(compressed("127.0.0.1:1", NULL), 0);
  assert_int_equal(compressed("127.0.0.1:1", &o), 0);
  assert_int_equal(compressed("localhost:1", &o), 0);
  assert_int_equal(compressed("192.0.2.1:50051", &o), 1);
  o.compression = PMX_COMPRESSION_ON;
  assert_int_equal(compressed("127.0.0.1:1", &o), 1);
  o.compression = PMX_COMPRESSION_OFF;
  assert_int_equal(compressed("192.0.2.1:50051", &o), 0);
  pmx_options nc = {.no_compression = 1, .compression = PMX_COMPRESSION_ON};
  assert_int_equal(compressed("192.0.2.1:50051", &nc), 0);
  /* AUTO: "a loopback or local interface address, or a unix socket" is this host */
  o.compression = PMX_COMPRESSION_AUTO;
  char unix_addr[700];
  snprintf(unix_addr, sizeof unix_addr, "unix:%s/no-server.sock", g_dir);
  assert_int_equal(compressed(unix_addr, &o), 0);
  assert_int_equal(compressed("127.0.0.2:1", &o), 0);
  assert_int_equal(compressed("[::1]:1", &o), 0);
  struct ifaddrs* ifs = NULL;
  int checked = 0;
  if (getifaddrs(&ifs) == 0) {
    for (struct ifaddrs* i = ifs; i; i = i->ifa_next) {
      if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET || (i->ifa_flags & IFF_LOOPBACK)) continue;
      char ip[INET_ADDRSTRLEN], a[64];
      inet_ntop(AF_INET, &((struct sockaddr_in*)(void*)i->ifa_addr)->sin_addr, ip, sizeof ip);
      snprintf(a, sizeof a, "%s:1", ip);
      if (compressed(a, &o) != 0) fail_msg("AUTO compresses pulls from %s, an address of this host", a);
      checked++;
    }
    freeifaddrs(ifs);
  }
  if (!checked) print_message("# no non-loopback IPv4 interface: local interface address not checked\n");
}

static void test_connect_tls_files(void** state) {
  (void)state;
  char missing[700], cert[700], key[700], ca[700];
  snprintf(missing, sizeof missing, "%s/no-such-ca.pem", g_dir);
  write_file("cert.pem", "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n", cert, sizeof cert);
  write_file("key.pem", "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n", key, sizeof key);
  write_file("ca.pem", "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n", ca, sizeof ca);

  pmx_options o = {.tls_ca_file = missing};
  connect_fails("missing CA file", "127.0.0.1:1", &o, PMX_ERR_INVALID_ARGUMENT, missing);
  /* the same from the environment */
  setenv("PMX_TLS_CA", missing, 1);
  connect_fails("missing PMX_TLS_CA", "127.0.0.1:1", NULL, PMX_ERR_INVALID_ARGUMENT, missing);
  unsetenv("PMX_TLS_CA");

  /* a client certificate needs a CA */
  pmx_options oc = {.tls_cert_file = cert, .tls_key_file = key};
  connect_fails("certificate without CA", "127.0.0.1:1", &oc, PMX_ERR_INVALID_ARGUMENT, "CA");
  setenv("PMX_TLS_CERT", cert, 1);
  setenv("PMX_TLS_KEY", key, 1);
  connect_fails("PMX_TLS_CERT without CA", "127.0.0.1:1", NULL, PMX_ERR_INVALID_ARGUMENT, "CA");
  unsetenv("PMX_TLS_CERT");
  unsetenv("PMX_TLS_KEY");

  /* ... and both halves */
  pmx_options ok = {.tls_ca_file = ca, .tls_cert_file = cert};
  connect_fails("certificate without key", "127.0.0.1:1", &ok, PMX_ERR_INVALID_ARGUMENT, "PMX_TLS_KEY");
  pmx_options okey = {.tls_ca_file = ca, .tls_key_file = key};
  connect_fails("key without certificate", "127.0.0.1:1", &okey, PMX_ERR_INVALID_ARGUMENT, "PMX_TLS_CERT");

  /* a missing certificate or key file is named */
  char missing_cert[700], missing_key[700];
  snprintf(missing_cert, sizeof missing_cert, "%s/no-such-cert.pem", g_dir);
  snprintf(missing_key, sizeof missing_key, "%s/no-such-key.pem", g_dir);
  pmx_options mc = {.tls_ca_file = ca, .tls_cert_file = missing_cert, .tls_key_file = key};
  connect_fails("missing certificate", "127.0.0.1:1", &mc, PMX_ERR_INVALID_ARGUMENT, missing_cert);
  pmx_options mk = {.tls_ca_file = ca, .tls_cert_file = cert, .tls_key_file = missing_key};
  connect_fails("missing key", "127.0.0.1:1", &mk, PMX_ERR_INVALID_ARGUMENT, missing_key);

  /* an option wins over its environment variable */
  setenv("PMX_TLS_CA", missing, 1);
  pmx_options mine = {.tls_ca_file = missing_cert};
  connect_fails("option over PMX_TLS_CA", "127.0.0.1:1", &mine, PMX_ERR_INVALID_ARGUMENT, missing_cert);
  unsetenv("PMX_TLS_CA");

  /* token files */
  char missing_tok[700];
  snprintf(missing_tok, sizeof missing_tok, "%s/no-such-token", g_dir);
  pmx_options ot = {.token_file = missing_tok};
  connect_fails("missing token file", "127.0.0.1:1", &ot, PMX_ERR_INVALID_ARGUMENT, missing_tok);
  setenv("PMX_TOKEN_FILE", missing_tok, 1);
  connect_fails("missing PMX_TOKEN_FILE", "127.0.0.1:1", NULL, PMX_ERR_INVALID_ARGUMENT, missing_tok);
  unsetenv("PMX_TOKEN_FILE");
  char empty_tok[700];
  write_file("empty-token", " \n", empty_tok, sizeof empty_tok);
  pmx_options oe = {.token_file = empty_tok};
  connect_fails("empty token file", "127.0.0.1:1", &oe, PMX_ERR_INVALID_ARGUMENT, empty_tok);
}

/* ---- the bearer token ---------------------------------------------------------------------- */

static void test_token(void** state) {
  (void)state;
  char tokfile[700], wrongfile[700];
  write_file("token", "s3cret-Token-42\n", tokfile, sizeof tokfile);
  write_file("wrong-token", "s3cret-Token-43\n", wrongfile, sizeof wrongfile);
  const char* args[] = {"--workers", "1", "--token-file", tokfile, "--log-level", "warn", NULL};
  px_h_server srv;
  server_start(&srv, args);
  pmx_options base = {.timeout_ms = 20000, .connect_timeout_ms = 20000};
  pmx_client* c = NULL;

  /* none: refused */
  expect_st("connect", pmx_connect(srv.addr, &base, &c), PMX_OK);
  expect_st("join without a token", pmx_join(c, 0, 1, NULL), PMX_ERR_UNAUTHENTICATED);
  expect_error_has("join without a token", "Join");
  pmx_client_destroy(c);

  /* a wrong one: refused */
  pmx_options o = base;
  o.token_file = wrongfile;
  expect_st("connect", pmx_connect(srv.addr, &o, &c), PMX_OK);
  expect_st("join with a wrong token", pmx_join(c, 0, 1, NULL), PMX_ERR_UNAUTHENTICATED);
  pmx_client_destroy(c);

  /* the option, the file (its newline is not part of it), the environment variables */
  o = base;
  o.token = "s3cret-Token-42";
  expect_st("connect", pmx_connect(srv.addr, &o, &c), PMX_OK);
  expect_st("join with token", pmx_join(c, 0, 1, NULL), PMX_OK);
  pmx_client_destroy(c);
  o = base;
  o.token_file = tokfile;
  expect_st("connect", pmx_connect(srv.addr, &o, &c), PMX_OK);
  expect_st("join with token_file", pmx_join(c, 0, 1, NULL), PMX_OK);
  pmx_client_destroy(c);
  setenv("PMX_TOKEN", "s3cret-Token-42", 1);
  expect_st("connect", pmx_connect(srv.addr, &base, &c), PMX_OK);
  expect_st("join with PMX_TOKEN", pmx_join(c, 0, 1, NULL), PMX_OK);
  pmx_client_destroy(c);
  unsetenv("PMX_TOKEN");
  setenv("PMX_TOKEN_FILE", tokfile, 1);
  expect_st("connect", pmx_connect(srv.addr, &base, &c), PMX_OK);
  expect_st("join with PMX_TOKEN_FILE", pmx_join(c, 0, 1, NULL), PMX_OK);
  pmx_client_destroy(c);
  /* the option wins over the environment */
  setenv("PMX_TOKEN_FILE", wrongfile, 1);
  o = base;
  o.token_file = tokfile;
  expect_st("connect", pmx_connect(srv.addr, &o, &c), PMX_OK);
  expect_st("join with token_file over PMX_TOKEN_FILE", pmx_join(c, 0, 1, NULL), PMX_OK);
  pmx_client_destroy(c);
  unsetenv("PMX_TOKEN_FILE");
  server_stop(&srv);
}

/* "Files are read by pmx_connect; secrets are never logged." */
typedef struct secret_log {
  pthread_mutex_t mu;
  int n;
  bool leaked;
  char first_leak[256];
} secret_log;

static secret_log g_slog = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void on_log_secret(void* ctx, pmx_log_level level, const char* message) {
  (void)level;
  const char* secret = ctx;
  pthread_mutex_lock(&g_slog.mu);
  g_slog.n++;
  if (strstr(message, secret) && !g_slog.leaked) {
    g_slog.leaked = true;
    snprintf(g_slog.first_leak, sizeof g_slog.first_leak, "%s", message);
  }
  pthread_mutex_unlock(&g_slog.mu);
}

static void test_token_file_read_at_connect_never_logged(void** state) {
  (void)state;
  static const char secret[] = "Zq9-very-secret-token-77";
  static const char wrong[] = "Zq9-wrong-secret-token-78";
  char tokfile[700], wrongfile[700], srvfile[700];
  write_file("srv-token", "Zq9-very-secret-token-77\n", srvfile, sizeof srvfile);
  const char* args[] = {"--workers", "1", "--token-file", srvfile, "--log-level", "warn", NULL};
  px_h_server srv;
  server_start(&srv, args);
  g_slog.n = 0;
  g_slog.leaked = false;
  pmx_set_log_callback(on_log_secret, (void*)secret, PMX_LOG_DEBUG);

  /* the file is read by pmx_connect: removed afterwards, the token still goes out */
  write_file("conn-token", "Zq9-very-secret-token-77\n", tokfile, sizeof tokfile);
  pmx_options o = {.timeout_ms = 20000, .connect_timeout_ms = 20000, .token_file = tokfile};
  pmx_client* c = NULL;
  expect_st("connect", pmx_connect(srv.addr, &o, &c), PMX_OK);
  assert_int_equal(unlink(tokfile), 0);
  expect_st("join after the token file was removed", pmx_join(c, 0, 1, NULL), PMX_OK);
  if (strstr(pmx_last_error(), secret)) fail_msg("the token is in the last error");
  pmx_client_destroy(c);
  /* ... and changing it afterwards changes nothing for that client */
  write_file("conn-token", "Zq9-very-secret-token-77\n", tokfile, sizeof tokfile);
  c = NULL;
  expect_st("connect", pmx_connect(srv.addr, &o, &c), PMX_OK);
  write_file("conn-token", "Zq9-wrong-secret-token-78\n", tokfile, sizeof tokfile);
  expect_st("join after the token file changed", pmx_join(c, 0, 1, NULL), PMX_OK);
  pmx_client_destroy(c);

  /* a refused token (option and file) appears neither in the log nor in the last error */
  pmx_set_log_callback(on_log_secret, (void*)wrong, PMX_LOG_DEBUG);
  pmx_options ow = {.timeout_ms = 20000, .connect_timeout_ms = 20000, .token = wrong};
  c = NULL;
  expect_st("connect", pmx_connect(srv.addr, &ow, &c), PMX_OK);
  expect_st("join with a wrong token", pmx_join(c, 0, 1, NULL), PMX_ERR_UNAUTHENTICATED);
  if (strstr(pmx_last_error(), wrong)) fail_msg("the token is in the last error: '%s'", pmx_last_error());
  pmx_client_destroy(c);
  write_file("wrong-token2", "Zq9-wrong-secret-token-78\n", wrongfile, sizeof wrongfile);
  pmx_options of = {.timeout_ms = 20000, .connect_timeout_ms = 20000, .token_file = wrongfile};
  c = NULL;
  expect_st("connect", pmx_connect(srv.addr, &of, &c), PMX_OK);
  expect_st("join with a wrong token file", pmx_join(c, 0, 1, NULL), PMX_ERR_UNAUTHENTICATED);
  if (strstr(pmx_last_error(), wrong)) fail_msg("the token is in the last error: '%s'", pmx_last_error());
  pmx_client_destroy(c);
  pmx_set_log_callback(NULL, NULL, PMX_LOG_ERROR);
  pthread_mutex_lock(&g_slog.mu);
  bool leaked = g_slog.leaked;
  pthread_mutex_unlock(&g_slog.mu);
  if (leaked) fail_msg("a log message holds the token: '%s'", g_slog.first_leak);
  server_stop(&srv);
}

/* ---- tls_server_name / PMX_TLS_SERVER_NAME ------------------------------------------------------- */

/* Runs openssl (found on PATH) with args in g_dir, its output to g_dir/openssl.log.
 * Returns 0 when it exited 0, -1 otherwise or when there is no openssl. */
static int openssl_run(const char* const* args) {
  static char bin[600];
  if (!bin[0]) {
    const char* path = getenv("PATH");
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path && *path ? path : "/usr/bin:/bin");
    bool found = false;
    for (char *save = NULL, *d = strtok_r(buf, ":", &save); d && !found; d = strtok_r(NULL, ":", &save)) {
      snprintf(bin, sizeof bin, "%s/openssl", *d ? d : ".");
      found = access(bin, X_OK) == 0;
    }
    if (!found) {
      bin[0] = 0;
      return -1;
    }
  }
  const char* argv[40];
  size_t n = 0;
  argv[n++] = bin;
  for (const char* const* a = args; *a && n < 39; a++) argv[n++] = *a;
  argv[n] = NULL;
  char logp[700];
  snprintf(logp, sizeof logp, "%s/openssl.log", g_dir);
  int log = open(logp, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (log < 0) return -1;
  pid_t pid = px_h_spawn(argv, NULL, log, log);
  close(log);
  int ws = 0;
  if (pid <= 0 || px_h_wait(pid, 30000, &ws) != 0) {
    if (pid > 0) px_h_kill(pid);
    return -1;
  }
  return WIFEXITED(ws) && WEXITSTATUS(ws) == 0 ? 0 : -1;
}

typedef struct tls_log {
  pthread_mutex_t mu;
  int n;
  char first[256];
} tls_log;

static tls_log g_tlog = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void on_log_tls(void* ctx, pmx_log_level level, const char* message) {
  (void)ctx;
  (void)level;
  pthread_mutex_lock(&g_tlog.mu);
  if (g_tlog.n++ == 0) snprintf(g_tlog.first, sizeof g_tlog.first, "%s", message);
  pthread_mutex_unlock(&g_tlog.mu);
}

/* A server certificate for the name "pmx.test" only (no IP address): a client reaching it
 * at 127.0.0.1 must be told the name to check, by tls_server_name or PMX_TLS_SERVER_NAME
 * (the option winning); a wrong name fails. A client trusting another CA fails its TLS
 * handshake, which gRPC reports through the log callback. Skipped without openssl. */
static void test_tls_server_name(void** state) {
  (void)state;
  char ca_key[700], ca_pem[700], key[700], csr[700], pem[700], ext[700];
  snprintf(ca_key, sizeof ca_key, "%s/sn-ca.key", g_dir);
  snprintf(ca_pem, sizeof ca_pem, "%s/sn-ca.pem", g_dir);
  snprintf(key, sizeof key, "%s/sn-server.key", g_dir);
  snprintf(csr, sizeof csr, "%s/sn-server.csr", g_dir);
  snprintf(pem, sizeof pem, "%s/sn-server.pem", g_dir);
  write_file("sn-server.ext",
             "subjectAltName=DNS:pmx.test\nbasicConstraints=CA:FALSE\n"
             "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
             ext, sizeof ext);
  const char* mk_ca[] = {"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                         "-nodes", "-keyout", ca_key, "-out", ca_pem, "-days", "2", "-subj", "/CN=pmx test CA",
                         "-addext", "basicConstraints=critical,CA:TRUE",
                         "-addext", "keyUsage=critical,keyCertSign,cRLSign", NULL};
  const char* mk_req[] = {"req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                          "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=pmx.test", NULL};
  const char* mk_sign[] = {"x509", "-req", "-in", csr, "-CA", ca_pem, "-CAkey", ca_key, "-set_serial",
                           "11", "-days", "2", "-out", pem, "-extfile", ext, NULL};
  char other_key[700], other_pem[700];
  snprintf(other_key, sizeof other_key, "%s/sn-other-ca.key", g_dir);
  snprintf(other_pem, sizeof other_pem, "%s/sn-other-ca.pem", g_dir);
  const char* mk_other[] = {"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                            "-nodes", "-keyout", other_key, "-out", other_pem, "-days", "2", "-subj",
                            "/CN=pmx other CA", "-addext", "basicConstraints=critical,CA:TRUE",
                            "-addext", "keyUsage=critical,keyCertSign,cRLSign", NULL};
  if (openssl_run(mk_ca) != 0 || openssl_run(mk_req) != 0 || openssl_run(mk_sign) != 0 ||
      openssl_run(mk_other) != 0) {
    print_message("openssl is not installed (or failed, see %s/openssl.log): skipped\n", g_dir);
    skip();
  }
  const char* args[] = {"--workers", "1", "--tls-cert", pem, "--tls-key", key, "--log-level", "warn", NULL};
  px_h_server srv;
  char err[512];
  if (px_h_server_start_ex(&srv, NULL, args, NULL, -1, SRV_START_MS, err, sizeof err) != 0)
    fail_msg("TLS server: %s", err);
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", srv.port);
  pmx_options base = {.timeout_ms = 10000, .connect_timeout_ms = 3000, .tls_ca_file = ca_pem};
  pmx_client* c = NULL;

  /* no name: 127.0.0.1 is not in the certificate */
  expect_st("connect", pmx_connect(addr, &base, &c), PMX_OK);
  int64_t t0 = px_h_now_ms();
  if (pmx_join(c, 0, 1, NULL) == PMX_OK) fail_msg("join without tls_server_name passed the check of 127.0.0.1");
  if (px_h_now_ms() - t0 > 10000) fail_msg("the failed check took %lld ms", (long long)(px_h_now_ms() - t0));
  pmx_client_destroy(c);

  /* a client trusting another CA: its TLS handshake fails, and gRPC's warning about it
   * reaches the log callback */
  g_tlog.n = 0;
  pmx_set_log_callback(on_log_tls, NULL, PMX_LOG_DEBUG);
  pmx_options other = base;
  other.tls_ca_file = other_pem;
  other.tls_server_name = "pmx.test";
  c = NULL;
  expect_st("connect", pmx_connect(addr, &other, &c), PMX_OK);
  if (pmx_join(c, 0, 1, NULL) == PMX_OK) fail_msg("join trusting another CA passed");
  pmx_client_destroy(c);
  pmx_set_log_callback(NULL, NULL, PMX_LOG_ERROR);
  pthread_mutex_lock(&g_tlog.mu);
  int logged = g_tlog.n;
  pthread_mutex_unlock(&g_tlog.mu);
  if (logged == 0) fail_msg("a failed TLS handshake logged nothing through the callback");

  /* the option */
  pmx_options o = base;
  o.tls_server_name = "pmx.test";
  c = NULL;
  expect_st("connect", pmx_connect(addr, &o, &c), PMX_OK);
  expect_st("join with tls_server_name", pmx_join(c, 0, 1, NULL), PMX_OK);
  pmx_client_destroy(c);
  /* a wrong name */
  o.tls_server_name = "other.test";
  c = NULL;
  expect_st("connect", pmx_connect(addr, &o, &c), PMX_OK);
  if (pmx_join(c, 0, 1, NULL) == PMX_OK) fail_msg("join checking 'other.test' passed");
  pmx_client_destroy(c);
  /* the environment variable */
  setenv("PMX_TLS_SERVER_NAME", "pmx.test", 1);
  c = NULL;
  expect_st("connect", pmx_connect(addr, &base, &c), PMX_OK);
  expect_st("join with PMX_TLS_SERVER_NAME", pmx_join(c, 0, 1, NULL), PMX_OK);
  pmx_client_destroy(c);
  /* the option wins over it */
  setenv("PMX_TLS_SERVER_NAME", "other.test", 1);
  o.tls_server_name = "pmx.test";
  c = NULL;
  expect_st("connect", pmx_connect(addr, &o, &c), PMX_OK);
  expect_st("join with tls_server_name over PMX_TLS_SERVER_NAME", pmx_join(c, 0, 1, NULL), PMX_OK);
  pmx_client_destroy(c);
  unsetenv("PMX_TLS_SERVER_NAME");
  server_stop(&srv);
}

/* ---- pmx_join -------------------------------------------------------------------------------- */

static void test_join(void** state) {
  (void)state;
  const char* args[] = {"--workers", "2", "--worker-timeout", "30", "--log-level", "warn", NULL};
  px_h_server srv;
  server_start(&srv, args);
  pmx_options o = {.timeout_ms = 20000, .connect_timeout_ms = 20000};
  pmx_client *c0 = NULL, *c1 = NULL;
  expect_st("connect", pmx_connect(srv.addr, &o, &c0), PMX_OK);
  expect_st("connect", pmx_connect(srv.addr, &o, &c1), PMX_OK);

  expect_st("join(NULL)", pmx_join(NULL, 0, 2, NULL), PMX_ERR_INVALID_ARGUMENT);
  /* world_size must match --workers: the server's message */
  pmx_join_info info = {77, 77, 77};
  expect_st("join with world 3", pmx_join(c0, 0, 3, &info), PMX_ERR_FAILED_PRECONDITION);
  expect_error_has("join with world 3", "world_size 3 does not match the server's --workers 2");
  assert_int_equal(info.worker_id, 77); /* nothing written on error */
  assert_int_equal(info.incarnation, 77);
  assert_int_equal(info.world_size, 77);
  expect_st("join rank 2 of 2", pmx_join(c0, 2, 2, &info), PMX_ERR_INVALID_ARGUMENT);
  expect_error_has("join rank 2 of 2", "rank 2 is not below world_size 2");

  expect_st("join 1", pmx_join(c1, 1, 2, &info), PMX_OK);
  assert_int_equal(info.worker_id, 1);
  assert_int_equal(info.world_size, 2);
  assert_true(info.incarnation != 0);
  const uint64_t inc1 = info.incarnation;
  pmx_join_info info0;
  expect_st("join 0", pmx_join(c0, 0, 2, &info0), PMX_OK);
  assert_int_equal(info0.worker_id, 0);
  assert_int_equal(info0.world_size, 2);
  assert_true(info0.incarnation != 0);
  expect_st("join 0 with info NULL", pmx_join(c0, 0, 2, NULL), PMX_OK);
  /* every join a new incarnation */
  pmx_join_info again;
  expect_st("join 1 again", pmx_join(c1, 1, 2, &again), PMX_OK);
  assert_true(again.incarnation != inc1);
  assert_int_equal(again.worker_id, 1);
  assert_int_equal(c1->incarnation, again.incarnation);
  assert_true(c1->joined);

  /* Stats: both ranks joined, rank 1 with its newest incarnation */
  char err[256];
  px_rpc_channel* ch = px_rpc_channel_create(srv.addr, err, sizeof err);
  assert_non_null(ch);
  Paramex__V1__StatsResponse* st = px_h_stats(ch, err, sizeof err);
  if (!st) fail_msg("%s", err);
  assert_int_equal(st->workers_joined, 2);
  bool seen1 = false;
  for (size_t i = 0; i < st->n_workers; i++)
    if (st->workers[i]->rank == 1) {
      seen1 = true;
      assert_int_equal(st->workers[i]->incarnation, again.incarnation);
      assert_true(st->workers[i]->alive);
    }
  assert_true(seen1);
  assert_string_equal(c1->server_id, st->server_id);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  px_rpc_channel_destroy(ch);
  pmx_client_destroy(c0);
  pmx_client_destroy(c1);
  server_stop(&srv);
}

/* A rank held by a live worker of another host: pmx_join waits (the holder may be a
 * crashed worker whose lease runs out) and then says who holds it. */
static void test_join_fenced(void** state) {
  (void)state;
  const char* args[] = {"--workers", "1", "--log-level", "error", NULL};
  px_h_server srv;
  server_start(&srv, args);
  char err[256];
  px_rpc_channel* ch = px_rpc_channel_create(srv.addr, err, sizeof err);
  assert_non_null(ch);
  Paramex__V1__JoinRequest jr = PARAMEX__V1__JOIN_REQUEST__INIT;
  jr.world_size = 1;
  jr.name = "elsewhere:77";
  char det[256];
  int rs = px_h_unary_pb(ch, PX_H_PATH_JOIN, &jr.base, &paramex__v1__join_response__descriptor,
                         NULL, 20000, det, sizeof det);
  if (rs != PX_ST_OK) fail_msg("raw Join: %s", det);
  pmx_options o = {.timeout_ms = 20000, .connect_timeout_ms = 600};
  pmx_client* c = NULL;
  expect_st("connect", pmx_connect(srv.addr, &o, &c), PMX_OK);
  expect_st("join a held rank", pmx_join(c, 0, 1, NULL), PMX_ERR_UNAVAILABLE);
  expect_error_has("join a held rank", "Join: rank 0 is held by a live worker 'elsewhere:77'");
  expect_error_has("join a held rank", "(waited 600 ms)");
  assert_false(c->joined);
  pmx_client_destroy(c);
  px_rpc_channel_destroy(ch);
  server_stop(&srv);
}

/* pmx_client_destroy says Leave (the worker is finished); pmx_client_abort does not (the
 * rank stays joined, not finished, until its lease runs out). */
static void test_destroy_leaves_abort_does_not(void** state) {
  (void)state;
  const char* args[] = {"--workers", "2", "--log-level", "error", NULL};
  px_h_server srv;
  server_start(&srv, args);
  pmx_options o = {.timeout_ms = 20000, .connect_timeout_ms = 20000};
  pmx_client* c[2] = {NULL, NULL};
  for (uint32_t r = 0; r < 2; r++) {
    expect_st("connect", pmx_connect(srv.addr, &o, &c[r]), PMX_OK);
    expect_st("join", pmx_join(c[r], r, 2, NULL), PMX_OK);
  }
  pmx_client_destroy(c[0]);
  pmx_client_abort(c[1]);
  pmx_client_abort(NULL);
  char err[256];
  px_rpc_channel* ch = px_rpc_channel_create(srv.addr, err, sizeof err);
  assert_non_null(ch);
  Paramex__V1__StatsResponse* st = px_h_stats(ch, err, sizeof err);
  if (!st) fail_msg("stats: %s", err);
  assert_int_equal(st->n_workers, 2);
  for (size_t i = 0; i < 2; i++) {
    const Paramex__V1__WorkerStats* w = st->workers[i];
    assert_int_equal(w->finished, w->rank == 0);
    assert_int_equal(w->alive, w->rank == 1);
  }
  protobuf_c_message_free_unpacked(&st->base, NULL);
  px_rpc_channel_destroy(ch);
  server_stop(&srv);
}

/* A port nobody listens on now (a server's, after it stopped). */
static int free_port(void) {
  const char* args[] = {"--workers", "1", "--log-level", "error", NULL};
  px_h_server s;
  server_start(&s, args);
  int port = s.port;
  server_stop(&s);
  return port;
}

static void test_join_connect_timeout(void** state) {
  (void)state;
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", free_port());
  pmx_options o = {.timeout_ms = 20000, .connect_timeout_ms = 300};
  pmx_client* c = NULL;
  expect_st("connect", pmx_connect(addr, &o, &c), PMX_OK);
  pmx_join_info info = {5, 5, 5};
  int64_t t0 = px_h_now_ms();
  pmx_status st = pmx_join(c, 0, 1, &info);
  int64_t dt = px_h_now_ms() - t0;
  if (st != PMX_ERR_DEADLINE_EXCEEDED && st != PMX_ERR_UNAVAILABLE)
    fail_msg("join without a server: %s '%s'", pmx_strerror(st), pmx_last_error());
  expect_error_has("join without a server", "Join");
  if (dt < 250) fail_msg("join gave up after %lld ms, before connect_timeout_ms 300", (long long)dt);
  if (dt > 10000) fail_msg("join took %lld ms with connect_timeout_ms 300", (long long)dt);
  assert_int_equal(info.worker_id, 5);
  assert_false(c->joined);
  pmx_client_destroy(c);
}

typedef struct join_thread {
  pmx_client* c;
  pmx_status st;
  pmx_join_info info;
} join_thread;

static void* join_main(void* arg) {
  join_thread* j = arg;
  j->st = pmx_join(j->c, 0, 1, &j->info);
  return NULL;
}

static void test_join_waits_for_server(void** state) {
  (void)state;
  int port = free_port();
  char addr[64], listen[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
  snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
  pmx_options o = {.timeout_ms = 20000, .connect_timeout_ms = 30000};
  join_thread j = {.st = PMX_ERR_UNKNOWN};
  expect_st("connect", pmx_connect(addr, &o, &j.c), PMX_OK);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, join_main, &j), 0);
  /* the join waits while the server comes up */
  const char* args[] = {"--workers", "1", "--log-level", "warn", NULL};
  px_h_server srv;
  char err[512];
  if (px_h_server_start_ex(&srv, listen, args, NULL, -1, SRV_START_MS, err, sizeof err) != 0)
    fail_msg("server on port %d: %s", port, err);
  assert_int_equal(pthread_join(th, NULL), 0);
  expect_st("join of a server that came up late", j.st, PMX_OK);
  assert_int_equal(j.info.worker_id, 0);
  assert_int_equal(j.info.world_size, 1);
  pmx_client_destroy(j.c);
  server_stop(&srv);
}

/* ---- heartbeats ------------------------------------------------------------------------------ */

static const Paramex__V1__WorkerStats* worker_row(const Paramex__V1__StatsResponse* st, uint32_t rank) {
  for (size_t i = 0; i < st->n_workers; i++)
    if (st->workers[i]->rank == rank) return st->workers[i];
  return NULL;
}

static void test_heartbeats_keep_lease(void** state) {
  (void)state;
  const char* args[] = {"--workers", "2", "--worker-timeout", "2", "--log-level", "error", NULL};
  px_h_server srv;
  server_start(&srv, args);
  char err[256];
  px_rpc_channel* ch = px_rpc_channel_create(srv.addr, err, sizeof err);
  assert_non_null(ch);

  /* rank 0 joins by hand and makes no further call: its lease runs out (the control) */
  Paramex__V1__JoinRequest jr = PARAMEX__V1__JOIN_REQUEST__INIT;
  jr.rank = 0;
  jr.world_size = 2;
  jr.name = (char*)"silent";
  ProtobufCMessage* resp = NULL;
  int rs = px_h_unary_pb(ch, PX_H_PATH_JOIN, &jr.base, &paramex__v1__join_response__descriptor,
                         &resp, 10000, err, sizeof err);
  if (rs != PX_ST_OK) fail_msg("join rank 0: %s", err);
  assert_int_equal(((Paramex__V1__JoinResponse*)resp)->lease_ms, 2000);
  protobuf_c_message_free_unpacked(resp, NULL);

  /* rank 1 through libparamex: its heartbeats keep it alive */
  pmx_options o = {.timeout_ms = 20000, .connect_timeout_ms = 20000};
  pmx_client* c = NULL;
  expect_st("connect", pmx_connect(srv.addr, &o, &c), PMX_OK);
  expect_st("join 1", pmx_join(c, 1, 2, NULL), PMX_OK);
  assert_int_equal(c->lease_ms, 2000);
  assert_true(c->hb_started);
  const uint64_t shape[1] = {4};
  pmx_tensor* t = NULL;
  expect_st("declare", pmx_declare(c, "hb", PMX_F32, shape, 1, NULL, NULL, &t), PMX_OK);

  /* A bounded wait of 4 s without any call of rank 1: a pull by another, unjoined client
   * (worker id 0) for a version that never comes, until its deadline. */
  pmx_options wo = {.timeout_ms = 4000, .connect_timeout_ms = 20000};
  pmx_client* waiter = NULL;
  expect_st("connect", pmx_connect(srv.addr, &wo, &waiter), PMX_OK);
  pmx_tensor* wt = NULL;
  expect_st("declare (waiter)", pmx_declare(waiter, "hb", PMX_F32, shape, 1, NULL, NULL, &wt), PMX_OK);
  float buf[4];
  void* dst = buf;
  int64_t t0 = px_h_now_ms();
  expect_st("parked pull", pmx_pull(waiter, 1, &wt, &dst, 1, NULL), PMX_ERR_DEADLINE_EXCEEDED);
  int64_t waited = px_h_now_ms() - t0;
  if (waited < 3500) fail_msg("the parked pull ended after %lld ms", (long long)waited);

  /* Rank 0, silent since the parked pull arrived (it carried worker id 0), was found dead
   * by the server's monitor (every 500 ms) 2 to 2.5 s later. */
  Paramex__V1__StatsResponse* st = px_h_stats(ch, err, sizeof err);
  if (!st) fail_msg("%s", err);
  const Paramex__V1__WorkerStats* w0 = worker_row(st, 0);
  assert_non_null(w0);
  if (w0->alive) fail_msg("rank 0, silent for %lld ms with a 2 s lease, is alive", (long long)waited);
  const Paramex__V1__WorkerStats* w1 = worker_row(st, 1);
  assert_non_null(w1);
  if (!w1->alive) fail_msg("rank 1 (heartbeats) is dead after %lld ms", (long long)waited);
  if (w1->last_seen_ms >= 2000)
    fail_msg("rank 1 was last seen %llu ms ago with a 2 s lease",
             (unsigned long long)w1->last_seen_ms);
  assert_int_equal(st->workers_alive, 1);
  protobuf_c_message_free_unpacked(&st->base, NULL);

  /* the heartbeat thread stops with the client */
  pmx_client_destroy(waiter);
  pmx_client_destroy(c);
  px_rpc_channel_destroy(ch);
  server_stop(&srv);
}

/* ---- counters ---------------------------------------------------------------------------------- */

static void test_stats_counters(void** state) {
  (void)state;
  const char* args[] = {"--workers", "1", "--chunk-bytes", "4K", "--lr", "0.5", "--log-level", "warn", NULL};
  px_h_server srv;
  server_start(&srv, args);
  pmx_options o = {.timeout_ms = 20000, .connect_timeout_ms = 20000};
  pmx_client* c = NULL;
  expect_st("connect", pmx_connect(srv.addr, &o, &c), PMX_OK);
  pmx_client_stats s;
  memset(&s, 0x77, sizeof s);
  pmx_client_get_stats(c, &s);
  assert_int_equal(s.push_chunks, 0);
  assert_int_equal(s.push_raw_bytes, 0);
  assert_int_equal(s.push_wire_bytes, 0);
  assert_int_equal(s.pull_chunks, 0);
  assert_int_equal(s.pull_raw_bytes, 0);
  assert_int_equal(s.pull_wire_bytes, 0);
  assert_int_equal(s.pull_unchanged_chunks, 0);
  assert_int_equal(s.checksum_failures, 0);
  assert_int_equal(s.compressed_pulls, 0);
  expect_st("join", pmx_join(c, 0, 1, NULL), PMX_OK);
  /* 2500 f32 in chunks of 1024: 3 chunks, 10000 bytes */
  const uint64_t shape[2] = {50, 50};
  pmx_tensor* t = NULL;
  expect_st("declare", pmx_declare(c, "cnt", PMX_F32, shape, 2, NULL, NULL, &t), PMX_OK);
  assert_int_equal(pmx_tensor_num_chunks(t), 3);
  static float g[2500], p[2500];
  const void* gp = g;
  void* dst = p;
  expect_st("push", pmx_push(c, 0, 1, &t, &gp), PMX_OK);
  pmx_client_get_stats(c, &s);
  assert_int_equal(s.push_chunks, 3);
  assert_int_equal(s.push_raw_bytes, 10000);
  assert_true(s.push_wire_bytes > 10000 && s.push_wire_bytes < 10000 + 3 * 128);
  assert_int_equal(s.pull_chunks, 0);
  expect_st("pull", pmx_pull(c, 1, &t, &dst, 1, NULL), PMX_OK);
  pmx_client_get_stats(c, &s);
  assert_int_equal(s.push_chunks, 3);
  assert_int_equal(s.pull_chunks, 3);
  assert_int_equal(s.pull_raw_bytes, 10000);
  assert_true(s.pull_wire_bytes > 10000 && s.pull_wire_bytes < 10000 + 3 * 128);
  assert_int_equal(s.pull_unchanged_chunks, 0);
  assert_int_equal(s.checksum_failures, 0);
  pmx_client_destroy(c);
  server_stop(&srv);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_version, teardown),
      cmocka_unit_test_teardown(test_connect_option_defaults, teardown),
      cmocka_unit_test_teardown(test_connect_arguments, teardown),
      cmocka_unit_test_teardown(test_connect_pull_compression_env, teardown),
      cmocka_unit_test_teardown(test_connect_compression_modes, teardown),
      cmocka_unit_test_teardown(test_connect_tls_files, teardown),
      cmocka_unit_test_teardown(test_tls_server_name, teardown),
      cmocka_unit_test_teardown(test_token, teardown),
      cmocka_unit_test_teardown(test_token_file_read_at_connect_never_logged, teardown),
      cmocka_unit_test_teardown(test_join, teardown),
      cmocka_unit_test_teardown(test_join_fenced, teardown),
      cmocka_unit_test_teardown(test_destroy_leaves_abort_does_not, teardown),
      cmocka_unit_test_teardown(test_join_connect_timeout, teardown),
      cmocka_unit_test_teardown(test_join_waits_for_server, teardown),
      cmocka_unit_test_teardown(test_heartbeats_keep_lease, teardown),
      cmocka_unit_test_teardown(test_stats_counters, teardown),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
