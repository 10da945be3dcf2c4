/* Security of a real paramex-server, with certificates generated here by openssl (a CA, a
 * server certificate for IP:127.0.0.1, a client certificate; a second CA and a client
 * certificate it signed, which the server must not trust). The tests are skipped when
 * openssl is not installed.
 *  - TLS: workers given PMX_TLS_CA train bit-exactly; a plaintext client and a client that
 *    trusts another CA fail promptly (not at their call deadline);
 *  - mutual TLS: a client without a certificate, or with one from the other CA, fails
 *    promptly; with its certificate it trains bit-exactly;
 *  - bearer token: without it, or with a wrong, truncated, extended or non-Bearer one,
 *    Join, Declare, Push, Pull, Stats and Checkpoint get UNAUTHENTICATED and change
 *    nothing; health answers SERVING without a token; workers with PMX_TOKEN or
 *    PMX_TOKEN_FILE train; one with a wrong token fails promptly; the token appears in no
 *    output of the server (run at --log-level debug) nor of the workers;
 *  - start-up: a token file holding only whitespace (or nothing), and a missing or
 *    unreadable certificate, key, client CA or token file make the server exit 2 with one
 *    stderr line (naming the file) and nothing on stdout. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "codec/checksum.h"
#include "rpc/rpc_base.h"
#include "rpc/rpc_client.h"
#include "wire/chunk_msg.h"
#include "harness.h"
#include "health.pb-c.h"
#include "train.h"

#define SERVER_START_MS 10000
#define SERVER_STOP_MS 15000
#define TRAIN_MS 60000
/* A client that cannot connect must give up within this (its connect timeout is 1 s). */
#define FAIL_FAST_MS 40000
/* A misconfiguration (TLS, token) is named within this, whatever the connect timeout. */
#define NAMED_WITHIN_MS 5000
#define CALL_MS 10000

static char g_dir[512];     /* certificates, token files, logs */
static bool g_have_certs;   /* openssl ran */
static const it_sgd g_sgd = {"0.1", "0.5", "0"};

static char* path_in(char* buf, size_t cap, const char* name) {
  snprintf(buf, cap, "%s/%s", g_dir, name);
  return buf;
}

static void write_text(const char* name, const char* text) {
  char p[700];
  FILE* f = fopen(path_in(p, sizeof p, name), "w");
  CHECK(f && fputs(text, f) >= 0 && fclose(f) == 0, "cannot write %s", p);
}

/* ---- certificates --------------------------------------------------------------------- */

static bool find_openssl(char* out, size_t cap) {
  const char* path = getenv("PATH");
  char buf[4096];
  snprintf(buf, sizeof buf, "%s", path && *path ? path : "/usr/bin:/bin");
  for (char* save = NULL, *d = strtok_r(buf, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
    snprintf(out, cap, "%s/openssl", *d ? d : ".");
    if (access(out, X_OK) == 0) return true;
  }
  return false;
}

/* Runs openssl with args (NULL-terminated) in g_dir; its output goes to openssl.log.
 * Returns 0 when it exited 0. */
static int openssl_run(const char* bin, const char* const* args) {
  const char* argv[40];
  size_t n = 0;
  argv[n++] = bin;
  for (const char* const* a = args; *a && n < 39; a++) argv[n++] = *a;
  argv[n] = NULL;
  char logp[700];
  int log = open(path_in(logp, sizeof logp, "openssl.log"), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
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

/* A key and a certificate signed by ca for name.pem / name.key (ext: extensions). */
static int make_leaf(const char* bin, const char* name, const char* cn, const char* ca, const char* ext) {
  char key[700], csr[700], pem[700], caf[700], cak[700], extf[700], tmp[64], subj[128];
  snprintf(tmp, sizeof tmp, "%s.key", name);
  path_in(key, sizeof key, tmp);
  snprintf(tmp, sizeof tmp, "%s.csr", name);
  path_in(csr, sizeof csr, tmp);
  snprintf(tmp, sizeof tmp, "%s.pem", name);
  path_in(pem, sizeof pem, tmp);
  snprintf(tmp, sizeof tmp, "%s.pem", ca);
  path_in(caf, sizeof caf, tmp);
  snprintf(tmp, sizeof tmp, "%s.key", ca);
  path_in(cak, sizeof cak, tmp);
  snprintf(tmp, sizeof tmp, "%s.ext", name);
  write_text(tmp, ext);
  path_in(extf, sizeof extf, tmp);
  snprintf(subj, sizeof subj, "/CN=%s", cn);
  const char* req[] = {"req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                       "-nodes", "-keyout", key, "-out", csr, "-subj", subj, NULL};
  const char* sign[] = {"x509", "-req", "-in", csr, "-CA", caf, "-CAkey", cak, "-set_serial", "7",
                        "-days", "2", "-out", pem, "-extfile", extf, NULL};
  return openssl_run(bin, req) == 0 && openssl_run(bin, sign) == 0 ? 0 : -1;
}

/* expired.pem / expired.key: a server certificate signed by ca that expired in 2020
 * (openssl ca backdates it; x509 -req cannot). */
static int make_expired_leaf(const char* bin) {
  char key[700], csr[700], pem[700], caf[700], cak[700], cnf[700], extf[700], db[700], ser[700];
  path_in(key, sizeof key, "expired.key");
  path_in(csr, sizeof csr, "expired.csr");
  path_in(pem, sizeof pem, "expired.pem");
  path_in(caf, sizeof caf, "ca.pem");
  path_in(cak, sizeof cak, "ca.key");
  path_in(db, sizeof db, "ca-index.txt");
  path_in(ser, sizeof ser, "ca-serial");
  write_text("ca-index.txt", "");
  write_text("ca-serial", "1000\n");
  char conf[2400];
  snprintf(conf, sizeof conf,
           "[ca]\ndefault_ca = d\n[d]\ndatabase = %s\nnew_certs_dir = %s\nserial = %s\n"
           "default_md = sha256\npolicy = p\nunique_subject = no\n[p]\ncommonName = supplied\n",
           db, g_dir, ser);
  write_text("ca.cnf", conf);
  path_in(cnf, sizeof cnf, "ca.cnf");
  write_text("expired.ext", "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                            "extendedKeyUsage=serverAuth\n");
  path_in(extf, sizeof extf, "expired.ext");
  const char* req[] = {"req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                       "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=paramex-expired", NULL};
  const char* sign[] = {"ca", "-batch", "-config", cnf, "-cert", caf, "-keyfile", cak, "-in", csr,
                        "-out", pem, "-notext", "-startdate", "20200101000000Z", "-enddate",
                        "20200102000000Z", "-extfile", extf, NULL};
  return openssl_run(bin, req) == 0 && openssl_run(bin, sign) == 0 ? 0 : -1;
}

static int make_ca(const char* bin, const char* name, const char* cn) {
  char key[700], pem[700], tmp[64], subj[128];
  snprintf(tmp, sizeof tmp, "%s.key", name);
  path_in(key, sizeof key, tmp);
  snprintf(tmp, sizeof tmp, "%s.pem", name);
  path_in(pem, sizeof pem, tmp);
  snprintf(subj, sizeof subj, "/CN=%s", cn);
  const char* args[] = {"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", key, "-out", pem, "-days", "2", "-subj", subj,
                        "-addext", "basicConstraints=critical,CA:TRUE",
                        "-addext", "keyUsage=critical,keyCertSign,cRLSign", NULL};
  return openssl_run(bin, args);
}

static void need_certs(void) {
  if (!g_have_certs) {
    print_message("openssl is not installed (or failed, see %s/openssl.log): skipped\n", g_dir);
    skip();
  }
}

/* ---- processes ------------------------------------------------------------------------- */

/* Starts the server with args, its stderr into g_dir/log_name. */
static void server_start(px_h_server* srv, const char* const* args, const char* log_name) {
  char err[512];
  int fd = log_name ? it_open_out(g_dir, log_name) : -1;
  int rc = px_h_server_start_ex(srv, NULL, args, NULL, fd, SERVER_START_MS, err, sizeof err);
  if (fd >= 0) close(fd);
  CHECK(rc == 0, "server start: %s", err);
}

static void server_stop_ok(px_h_server* srv) {
  int ws = 0;
  size_t extra = 0;
  CHECK(px_h_server_stop(srv, SERVER_STOP_MS, &ws, &extra) == 0, "server did not exit within %d ms of SIGTERM",
        SERVER_STOP_MS);
  char d[96];
  CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "server %s after SIGTERM", px_h_describe_wstatus(ws, d, sizeof d));
  CHECK(extra == 0, "the server wrote %zu more bytes on stdout after its listening line", extra);
}

/* A worker that must fail (exit 1 with a paramex error line) within FAIL_FAST_MS. Its
 * stderr goes to g_dir/log_name; returns that text (malloc'd). */
static char* worker_must_fail(const char* what, const it_train* j, const char* log_name, const char* want) {
  int fd = it_open_out(g_dir, log_name);
  int64_t t0 = px_h_now_ms();
  pid_t pid = it_worker_start(j, 0, -1, fd, NULL);
  close(fd);
  int ws = 0;
  CHECK(px_h_wait(pid, FAIL_FAST_MS, &ws) == 0, "%s: the worker still runs after %d ms (a hang)", what,
        FAIL_FAST_MS);
  int64_t ms = px_h_now_ms() - t0;
  char* out = it_slurp(g_dir, log_name);
  char d[96];
  CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 1, "%s: the worker %s, want exit 1 (stderr: %s)", what,
        px_h_describe_wstatus(ws, d, sizeof d), out);
  CHECK(strstr(out, "pmx_test_worker[rank 0]: pmx_"), "%s: no paramex error line (stderr: %s)", what, out);
  if (want) CHECK(strstr(out, want), "%s: the error does not say '%s': %s", what, want, out);
  /* named at once, not at the end of the connect timeout (issue 12) */
  CHECK(j->connect_ms < NAMED_WITHIN_MS || ms < NAMED_WITHIN_MS,
        "%s: the error came after %" PRId64 " ms (connect timeout %" PRId64 " ms): %s", what, ms,
        j->connect_ms, out);
  print_message("# %s: failed after %" PRId64 " ms: %s", what, ms, out);
  return out;
}

/* ---- TLS --------------------------------------------------------------------------------- */

static void test_tls(void** state) {
  (void)state;
  need_certs();
  char cert_buf[700], key_buf[700], ca_buf[700], other_ca_buf[700], out[600];
  const char* args[] = {"--workers", "2", "--lr", g_sgd.lr, "--momentum", g_sgd.momentum,
                        "--chunk-bytes", "4K", "--threads", "2",
                        "--tls-cert", path_in(cert_buf, sizeof cert_buf, "server.pem"),
                        "--tls-key", path_in(key_buf, sizeof key_buf, "server.key"), NULL};
  px_h_server srv;
  server_start(&srv, args, NULL);

  char ca_env[800], other_env[800];
  snprintf(ca_env, sizeof ca_env, "PMX_TLS_CA=%s", path_in(ca_buf, sizeof ca_buf, "ca.pem"));
  snprintf(other_env, sizeof other_env, "PMX_TLS_CA=%s", path_in(other_ca_buf, sizeof other_ca_buf, "other-ca.pem"));
  snprintf(out, sizeof out, "%s/tls-out", g_dir);
  mkdir(out, 0700);

  const char* env_ok[] = {ca_env, NULL};
  it_train j = {.addr = srv.addr, .world = 2, .steps = 4, .a_numel = 3000, .dir = out, .env = env_ok};
  it_train_run(&j, TRAIN_MS);
  it_train_check(&j, &g_sgd);

  /* the same server, clients that must not get through: each is told why at once, though
   * it would wait 20 s for a server that is not up yet */
  it_train bad = {.addr = srv.addr, .world = 2, .steps = 1, .a_numel = 3000, .dir = out,
                  .timeout_ms = 3000, .connect_ms = 20000};
  free(worker_must_fail("plaintext client against a TLS server", &bad, "w-plain.log",
                        "probably a TLS server; set tls_ca_file / PMX_TLS_CA"));
  const char* env_other[] = {other_env, NULL};
  bad.env = env_other;
  free(worker_must_fail("client trusting another CA", &bad, "w-otherca.log",
                        "TLS: unable to get local issuer certificate"));
  /* a CA file that holds no certificate: said at pmx_connect (gRPC said "empty address
   * list" at the first call) */
  write_text("garbage-ca.pem", "-----BEGIN NOTHING-----\nnot a certificate\n");
  char garbage_env[800], gbuf[700];
  snprintf(garbage_env, sizeof garbage_env, "PMX_TLS_CA=%s", path_in(gbuf, sizeof gbuf, "garbage-ca.pem"));
  const char* env_garbage[] = {garbage_env, NULL};
  bad.env = env_garbage;
  free(worker_must_fail("CA file without a certificate", &bad, "w-garbageca.log",
                        "garbage-ca.pem (tls_ca_file / PMX_TLS_CA) holds no PEM certificate"));
  char name_env[128];
  snprintf(name_env, sizeof name_env, "PMX_TLS_SERVER_NAME=wrong.example.com");
  const char* env_name[] = {ca_env, name_env, NULL};
  bad.env = env_name;
  free(worker_must_fail("client expecting another server name", &bad, "w-name.log",
                        "Peer name wrong.example.com is not in peer certificate (TLS: hostname "
                        "mismatch)"));
  server_stop_ok(&srv);

  /* a server whose certificate expired */
  char ecert[700], ekey[700];
  const char* eargs[] = {"--workers", "2", "--tls-cert", path_in(ecert, sizeof ecert, "expired.pem"),
                         "--tls-key", path_in(ekey, sizeof ekey, "expired.key"), NULL};
  server_start(&srv, eargs, "expired-server.log");
  it_train exp = {.addr = srv.addr, .world = 2, .steps = 1, .a_numel = 3000, .dir = out,
                  .timeout_ms = 3000, .connect_ms = 20000, .env = env_ok};
  free(worker_must_fail("server certificate expired", &exp, "w-expired.log",
                        "TLS: certificate has expired (on Jan  2 00:00:00 2020 GMT)"));
  server_stop_ok(&srv);
  char* slog = it_slurp(g_dir, "expired-server.log");
  CHECK(strstr(slog, "the certificate expired on Jan  2 00:00:00 2020 GMT: clients will refuse it"),
        "the server did not warn of its expired certificate: %s", slog);
  free(slog);

  /* nothing listens: the cause is named when the connect timeout ends */
  it_train gone = {.addr = "127.0.0.1:1", .world = 2, .steps = 1, .a_numel = 3000, .dir = out,
                   .timeout_ms = 3000, .connect_ms = 1500};
  free(worker_must_fail("no server on the port", &gone, "w-refused.log",
                        "not reachable within 1500 ms"));
  char* o = worker_must_fail("no server on the port", &gone, "w-refused.log", "Connection refused");
  free(o);
}

static void test_mutual_tls(void** state) {
  (void)state;
  need_certs();
  char cert_buf[700], key_buf[700], ca_buf[700], out[600], p1[700], p2[700], p3[700], p4[700];
  const char* args[] = {"--workers", "2", "--lr", g_sgd.lr, "--momentum", g_sgd.momentum,
                        "--chunk-bytes", "4K", "--threads", "2",
                        "--tls-cert", path_in(cert_buf, sizeof cert_buf, "server.pem"),
                        "--tls-key", path_in(key_buf, sizeof key_buf, "server.key"),
                        "--tls-client-ca", path_in(ca_buf, sizeof ca_buf, "ca.pem"), NULL};
  px_h_server srv;
  server_start(&srv, args, NULL);
  snprintf(out, sizeof out, "%s/mtls-out", g_dir);
  mkdir(out, 0700);

  char ca_env[800], cert_env[800], key_env[800], ocert_env[800], okey_env[800];
  snprintf(ca_env, sizeof ca_env, "PMX_TLS_CA=%s", ca_buf);
  snprintf(cert_env, sizeof cert_env, "PMX_TLS_CERT=%s", path_in(p1, sizeof p1, "client.pem"));
  snprintf(key_env, sizeof key_env, "PMX_TLS_KEY=%s", path_in(p2, sizeof p2, "client.key"));
  snprintf(ocert_env, sizeof ocert_env, "PMX_TLS_CERT=%s", path_in(p3, sizeof p3, "other-client.pem"));
  snprintf(okey_env, sizeof okey_env, "PMX_TLS_KEY=%s", path_in(p4, sizeof p4, "other-client.key"));

  it_train bad = {.addr = srv.addr, .world = 2, .steps = 1, .a_numel = 3000, .dir = out,
                  .timeout_ms = 3000, .connect_ms = 1000};
  const char* env_nocert[] = {ca_env, NULL};
  bad.env = env_nocert;
  free(worker_must_fail("mutual TLS, client without a certificate", &bad, "w-nocert.log",
                        "it refused this client's certificate"));
  const char* env_othercert[] = {ca_env, ocert_env, okey_env, NULL};
  bad.env = env_othercert;
  free(worker_must_fail("mutual TLS, client certificate of another CA", &bad, "w-othercert.log",
                        "it refused this client's certificate"));

  const char* env_ok[] = {ca_env, cert_env, key_env, NULL};
  it_train j = {.addr = srv.addr, .world = 2, .steps = 4, .a_numel = 3000, .dir = out, .env = env_ok};
  it_train_run(&j, TRAIN_MS);
  it_train_check(&j, &g_sgd);
  server_stop_ok(&srv);
}

/* ---- bearer token -------------------------------------------------------------------------- */

static uint64_t g_inc;
static uint32_t g_tid;

/* Each method on ch, with valid requests; returns the statuses in st[6] (Join, Declare,
 * Push, Pull, Stats, Checkpoint). */
static void all_methods(px_rpc_channel* ch, int st[6], char det[6][512]) {
  Paramex__V1__JoinRequest jr = PARAMEX__V1__JOIN_REQUEST__INIT;
  jr.rank = 0;
  jr.world_size = 1;
  jr.name = (char*)"test_security";
  st[0] = px_h_unary_pb(ch, PX_H_PATH_JOIN, &jr.base, &paramex__v1__join_response__descriptor, NULL,
                         CALL_MS, det[0], 512);

  Paramex__V1__DeclareRequest dr = PARAMEX__V1__DECLARE_REQUEST__INIT;
  uint64_t shape[1] = {8};
  dr.name = (char*)"u";
  dr.dtype = PARAMEX__V1__DTYPE__DTYPE_F32;
  dr.n_shape = 1;
  dr.shape = shape;
  dr.worker_id = 0;
  dr.incarnation = g_inc;
  st[1] = px_h_unary_pb(ch, PX_H_PATH_DECLARE, &dr.base, &paramex__v1__declare_response__descriptor,
                         NULL, CALL_MS, det[1], 512);

  float grad[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  px_chunk c;
  memset(&c, 0, sizeof c);
  c.worker_id = 0;
  c.incarnation = g_inc;
  c.step = 0;
  c.tensor_id = g_tid;
  c.chunk = 0;
  c.encoding = PARAMEX__V1__ENCODING__ENCODING_RAW;
  c.dtype = PARAMEX__V1__DTYPE__DTYPE_F32;
  c.raw_len = sizeof grad;
  c.checksum = px_checksum(grad, sizeof grad);
  uint8_t hdr[PX_CHUNK_HDR_MAX];
  size_t hl = px_chunk_encode_header(PX_CHUNK_PUSH, &c, sizeof grad, hdr, sizeof hdr);
  CHECK(hl > 0, "pmx_chunk_encode_header");
  px_h_msg m = {hdr, hl, grad, sizeof grad};
  px_h_result r;
  st[2] = px_h_call(ch, PX_H_PATH_PUSH, &m, 1, CALL_MS, &r);
  snprintf(det[2], 512, "%s", r.details);
  px_h_result_free(&r);

  Paramex__V1__PullRequest pr = PARAMEX__V1__PULL_REQUEST__INIT;
  uint32_t ids[1] = {g_tid};
  pr.worker_id = 0;
  pr.n_tensor_ids = 1;
  pr.tensor_ids = ids;
  pr.min_version = 0;
  uint8_t pbuf[128];
  size_t pl = paramex__v1__pull_request__pack(&pr, pbuf);
  px_h_msg pm = {pbuf, pl, NULL, 0};
  st[3] = px_h_call(ch, PX_H_PATH_PULL, &pm, 1, CALL_MS, &r);
  snprintf(det[3], 512, "%s", r.details);
  px_h_result_free(&r);

  Paramex__V1__StatsRequest sr = PARAMEX__V1__STATS_REQUEST__INIT;
  st[4] = px_h_unary_pb(ch, PX_H_PATH_STATS, &sr.base, &paramex__v1__stats_response__descriptor, NULL,
                         CALL_MS, det[4], 512);
  Paramex__V1__CheckpointRequest cr = PARAMEX__V1__CHECKPOINT_REQUEST__INIT;
  st[5] = px_h_unary_pb(ch, "/paramex.v1.ParameterExchange/Checkpoint", &cr.base,
                         &paramex__v1__checkpoint_response__descriptor, NULL, CALL_MS, det[5], 512);
}

static void expect_health_serving(px_rpc_channel* ch, const char* what) {
  Grpc__Health__V1__HealthCheckRequest hreq = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  ProtobufCMessage* resp = NULL;
  char det[512];
  int st = px_h_unary_pb(ch, PX_H_PATH_HEALTH, &hreq.base, &grpc__health__v1__health_check_response__descriptor,
                          &resp, CALL_MS, det, sizeof det);
  CHECK(st == PX_ST_OK, "health %s: %s '%s'", what, px_status_name(st), det);
  int hs = (int)((Grpc__Health__V1__HealthCheckResponse*)resp)->status;
  protobuf_c_message_free_unpacked(resp, NULL);
  CHECK(hs == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING, "health %s: status %d", what, hs);
}

static void test_token(void** state) {
  (void)state;
  /* A token nobody could guess from the logs: it must appear in none of them. */
  char token[64], tokfile[700], tokfile2[700], err[512];
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  snprintf(token, sizeof token, "pmxTok-%08lx%08lx-%d", (unsigned long)ts.tv_sec,
           (unsigned long)ts.tv_nsec, (int)getpid());
  char text[128];
  snprintf(text, sizeof text, "%s\n", token);
  write_text("token", text);
  path_in(tokfile, sizeof tokfile, "token");
  snprintf(text, sizeof text, "%s \r\n\n", token); /* trailing whitespace is not part of it */
  write_text("token2", text);
  path_in(tokfile2, sizeof tokfile2, "token2");

  const char* args[] = {"--workers", "1", "--lr", g_sgd.lr, "--momentum", g_sgd.momentum, "--chunk-bytes", "4K",
                        "--threads", "2", "--token-file", tokfile, "--log-level", "debug", NULL};
  px_h_server srv;
  server_start(&srv, args, "token-server.log");

  /* The right token: join, declare "u" (8 floats). */
  px_rpc_channel_opts good_o = {.token = token};
  px_rpc_channel* good = px_rpc_channel_create_ex(srv.addr, &good_o, err, sizeof err);
  CHECK(good, "channel: %s", err);
  {
    int st[6];
    char det[6][512];
    Paramex__V1__JoinRequest jr = PARAMEX__V1__JOIN_REQUEST__INIT;
    jr.world_size = 1;
    ProtobufCMessage* resp = NULL;
    st[0] = px_h_unary_pb(good, PX_H_PATH_JOIN, &jr.base, &paramex__v1__join_response__descriptor, &resp,
                           CALL_MS, det[0], 512);
    CHECK(st[0] == PX_ST_OK, "join with the token: %s '%s'", px_status_name(st[0]), det[0]);
    g_inc = ((Paramex__V1__JoinResponse*)resp)->incarnation;
    protobuf_c_message_free_unpacked(resp, NULL);
    Paramex__V1__DeclareRequest dr = PARAMEX__V1__DECLARE_REQUEST__INIT;
    uint64_t shape[1] = {8};
    dr.name = (char*)"u";
    dr.dtype = PARAMEX__V1__DTYPE__DTYPE_F32;
    dr.n_shape = 1;
    dr.shape = shape;
    dr.incarnation = g_inc;
    st[1] = px_h_unary_pb(good, PX_H_PATH_DECLARE, &dr.base, &paramex__v1__declare_response__descriptor,
                           &resp, CALL_MS, det[1], 512);
    CHECK(st[1] == PX_ST_OK, "declare with the token: %s '%s'", px_status_name(st[1]), det[1]);
    g_tid = ((Paramex__V1__DeclareResponse*)resp)->tensor_id;
    protobuf_c_message_free_unpacked(resp, NULL);
  }

  /* Without the token, and with wrong ones: every method but health is refused. */
  char trunc[64], longer[80], basic[96], wrong_bearer[96], exact_bearer[96];
  snprintf(trunc, sizeof trunc, "Bearer %.*s", (int)strlen(token) - 1, token);
  snprintf(longer, sizeof longer, "Bearer %sx", token);
  snprintf(basic, sizeof basic, "Basic %s", token);
  snprintf(wrong_bearer, sizeof wrong_bearer, "Bearer %c%s", token[0] == 'x' ? 'y' : 'x', token + 1);
  snprintf(exact_bearer, sizeof exact_bearer, "Bearer %s", token);
  const struct {
    const char* what;
    const char* auth; /* authorization header; NULL: none */
  } cases[] = {
      {"no token", NULL},
      {"a token differing in its first byte", wrong_bearer},
      {"the token without its last byte", trunc},
      {"the token with one more byte", longer},
      {"the token under the Basic scheme", basic},
      {"an empty Bearer token", "Bearer "},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    px_rpc_channel* ch = px_rpc_channel_create(srv.addr, err, sizeof err);
    CHECK(ch, "channel: %s", err);
    if (cases[i].auth) px_rpc_channel_set_header(ch, "authorization", cases[i].auth);
    int st[6];
    char det[6][512];
    all_methods(ch, st, det);
    static const char* const names[6] = {"Join", "Declare", "Push", "Pull", "Stats", "Checkpoint"};
    for (int k = 0; k < 6; k++)
      CHECK(st[k] == PX_ST_UNAUTHENTICATED, "%s with %s: %s '%s', want UNAUTHENTICATED", names[k],
            cases[i].what, st[k] >= 0 ? px_status_name(st[k]) : "(harness)", det[k]);
    expect_health_serving(ch, cases[i].what);
    px_rpc_channel_destroy(ch);
  }
  /* The same header set by hand is accepted (the checks above are about the token). */
  {
    px_rpc_channel* ch = px_rpc_channel_create(srv.addr, err, sizeof err);
    CHECK(ch, "channel: %s", err);
    px_rpc_channel_set_header(ch, "authorization", exact_bearer);
    Paramex__V1__StatsResponse* st = px_h_stats(ch, err, sizeof err);
    CHECK(st, "Stats with a hand-made Bearer header: %s", err);
    protobuf_c_message_free_unpacked(&st->base, NULL);
    px_rpc_channel_destroy(ch);
  }
  /* Nothing the refused calls carried was applied. */
  {
    Paramex__V1__StatsResponse* st = px_h_stats(good, err, sizeof err);
    CHECK(st, "%s", err);
    CHECK(st->push_chunks == 0 && st->push_duplicates == 0, "push_chunks %" PRIu64 ", duplicates %" PRIu64
          " after refused pushes", st->push_chunks, st->push_duplicates);
    CHECK(st->n_tensors == 1, "%zu tensors after refused declarations, want 1", st->n_tensors);
    CHECK(st->tensors[0]->version_max == 0, "tensor u at version %" PRIu64, st->tensors[0]->version_max);
    protobuf_c_message_free_unpacked(&st->base, NULL);
  }
  px_rpc_channel_destroy(good);

  /* Workers: PMX_TOKEN trains steps 0..3, PMX_TOKEN_FILE (with whitespace around the
   * token) continues to step 6, a wrong token fails at once. */
  char out[600], env_tok[128], env_file[800], env_wrong[128];
  snprintf(out, sizeof out, "%s/token-out", g_dir);
  mkdir(out, 0700);
  snprintf(env_tok, sizeof env_tok, "PMX_TOKEN=%s", token);
  snprintf(env_file, sizeof env_file, "PMX_TOKEN_FILE=%s", tokfile2);
  snprintf(env_wrong, sizeof env_wrong, "PMX_TOKEN=%s", wrong_bearer + strlen("Bearer "));
  const char* e1[] = {env_tok, NULL};
  it_train j = {.addr = srv.addr, .world = 1, .steps = 3, .a_numel = 2000, .dir = out, .env = e1};
  it_train_run(&j, TRAIN_MS);
  it_train_check(&j, &g_sgd);
  const char* e2[] = {env_file, NULL};
  j.env = e2;
  j.steps = 6;
  j.resync = true; /* starts at the server's version, 3 */
  it_train_run(&j, TRAIN_MS);
  it_train_check(&j, &g_sgd);

  const char* e3[] = {env_wrong, NULL};
  it_train bad = {.addr = srv.addr, .world = 1, .steps = 1, .a_numel = 2000, .dir = out, .env = e3,
                  .timeout_ms = 5000, .connect_ms = 5000};
  char* wlog = worker_must_fail("worker with a wrong token", &bad, "w-wrongtoken.log", "UNAUTHENTICATED");
  CHECK(!strstr(wlog, token), "the worker's error output contains the server's token");
  CHECK(!strstr(wlog, env_wrong + strlen("PMX_TOKEN=")), "the worker's error output contains its token");
  free(wlog);

  server_stop_ok(&srv);
  char* slog = it_slurp(g_dir, "token-server.log");
  CHECK(strlen(slog) > 0, "the server logged nothing at --log-level debug");
  CHECK(!strstr(slog, token), "the server's stderr contains the token");
  CHECK(!strstr(slog, env_wrong + strlen("PMX_TOKEN=")), "the server's stderr contains a presented (wrong) token");
  free(slog);
}

/* ---- start-up failures ---------------------------------------------------------------------- */

/* Runs the server with args (after --listen 127.0.0.1:0); it must exit 2 within 10 s with
 * exactly one stderr line (containing want, when not NULL) and nothing on stdout. */
static void expect_exit2(const char* what, const char* const* args, const char* want) {
  const char* argv[32] = {px_h_server_bin(), "--listen", "127.0.0.1:0"};
  size_t n = 3;
  for (const char* const* a = args; *a && n < 31; a++) argv[n++] = *a;
  argv[n] = NULL;
  int ofd = it_open_out(g_dir, "exit2.out"), efd = it_open_out(g_dir, "exit2.err");
  pid_t pid = px_h_spawn(argv, NULL, ofd, efd);
  close(ofd);
  close(efd);
  CHECK(pid > 0, "cannot start the server");
  int ws = 0;
  CHECK(px_h_wait(pid, 10000, &ws) == 0, "%s: the server still runs after 10 s", what);
  char* out = it_slurp(g_dir, "exit2.out");
  char* err = it_slurp(g_dir, "exit2.err");
  char d[96];
  CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 2, "%s: the server %s, want exit 2 (stderr: %s)", what,
        px_h_describe_wstatus(ws, d, sizeof d), err);
  CHECK(out[0] == 0, "%s: the server wrote on stdout: %s", what, out);
  size_t len = strlen(err);
  CHECK(len > 1 && err[len - 1] == '\n' && it_count(err, "\n") == 1, "%s: want one stderr line, got: '%s'",
        what, err);
  if (want) CHECK(strstr(err, want), "%s: the message does not name '%s': %s", what, want, err);
  print_message("# %s: %s", what, err);
  free(out);
  free(err);
}

static void test_startup_failures(void** state) {
  (void)state;
  char blank[700], empty[700], missing[700], good_tok[700];
  write_text("blank-token", "  \n\t \r\n\n");
  write_text("empty-token", "");
  write_text("good-token", "t0ken\n");
  path_in(blank, sizeof blank, "blank-token");
  path_in(empty, sizeof empty, "empty-token");
  path_in(missing, sizeof missing, "no-such-file");
  path_in(good_tok, sizeof good_tok, "good-token");

  const char* a1[] = {"--token-file", blank, NULL};
  expect_exit2("token file of whitespace only", a1, "blank-token");
  const char* a2[] = {"--token-file", empty, NULL};
  expect_exit2("empty token file", a2, "empty-token");
  const char* a3[] = {"--token-file", missing, NULL};
  expect_exit2("missing token file", a3, missing);

  if (!g_have_certs) return; /* the certificate cases need real files beside the missing one */
  char cert[700], key[700], ca[700];
  path_in(cert, sizeof cert, "server.pem");
  path_in(key, sizeof key, "server.key");
  path_in(ca, sizeof ca, "ca.pem");
  const char* b1[] = {"--tls-cert", missing, "--tls-key", key, NULL};
  expect_exit2("missing --tls-cert file", b1, missing);
  const char* b2[] = {"--tls-cert", cert, "--tls-key", missing, NULL};
  expect_exit2("missing --tls-key file", b2, missing);
  const char* b3[] = {"--tls-cert", cert, "--tls-key", key, "--tls-client-ca", missing, NULL};
  expect_exit2("missing --tls-client-ca file", b3, missing);
  const char* b4[] = {"--tls-cert", g_dir, "--tls-key", key, NULL};
  expect_exit2("a directory as --tls-cert", b4, g_dir);
  const char* b5[] = {"--tls-cert", cert, "--tls-key", key, "--token-file", blank, NULL};
  expect_exit2("TLS with a blank token file", b5, "blank-token");
}

/* ---- setup ------------------------------------------------------------------------------------ */

static int group_setup(void** state) {
  (void)state;
  px_rpc_init();
  if (px_h_mkdtemp(g_dir, sizeof g_dir) != 0) return -1;
  char bin[4096];
  if (!find_openssl(bin, sizeof bin)) return 0;
  int64_t t0 = px_h_now_ms();
  g_have_certs =
      make_ca(bin, "ca", "paramex-test-ca") == 0 &&
      make_leaf(bin, "server", "paramex-test-server", "ca",
                "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n") == 0 &&
      make_leaf(bin, "client", "paramex-test-client", "ca",
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=clientAuth\n") == 0 &&
      make_ca(bin, "other-ca", "paramex-other-ca") == 0 &&
      make_leaf(bin, "other-client", "paramex-other-client", "other-ca",
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=clientAuth\n") == 0 &&
      make_expired_leaf(bin) == 0;
  fprintf(stderr, "# certificates %s in %" PRId64 " ms\n", g_have_certs ? "generated" : "NOT generated",
          px_h_now_ms() - t0);
  return 0;
}

static int group_teardown(void** state) {
  (void)state;
  px_h_kill_all();
  if (g_dir[0]) px_h_rmtree(g_dir);
  px_rpc_shutdown();
  return 0;
}

static int teardown(void** state) {
  (void)state;
  px_h_kill_all();
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_tls, teardown),
      cmocka_unit_test_teardown(test_mutual_tls, teardown),
      cmocka_unit_test_teardown(test_token, teardown),
      cmocka_unit_test_teardown(test_startup_failures, teardown),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
