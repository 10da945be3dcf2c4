/* Connections to one server (client.h). */
#include "client.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "errors.h"
#include "paramex.pb-c.h"
#include "tls/tls_probe.h"
#include "util/clock.h"
#include "util/file.h"
#include "util/log.h"
#include "util/mem.h"
#include "util/net.h"
#include "util/str.h"

const char* pmx_version(void) { return PX_VERSION; }

pmx_status px_client_connect(const char* addr, const pmx_options* opts, pmx_client** out) {
  return px_client_connect_beside(addr, opts, NULL, out);
}

pmx_status px_client_connect_beside(const char* addr, const pmx_options* opts,
                                    const pmx_client* beside, pmx_client** out) {
  if (!addr || !*addr || !out) return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_connect: no address");
  pmx_client* c = calloc(1, sizeof *c);
  if (!c) return px_fail(PMX_ERR_NO_MEMORY, "pmx_connect: out of memory");
  c->timeout_ms = opts && opts->timeout_ms > 0 ? opts->timeout_ms : 60000;
  c->connect_timeout_ms = opts && opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : 30000;
  c->retry_timeout_ms = opts && opts->retry_timeout_ms > 0 ? opts->retry_timeout_ms : 120000;
  pthread_mutex_init(&c->mu, NULL);
  pthread_condattr_t cattr;
  pthread_condattr_init(&cattr);
  pthread_condattr_setclock(&cattr, CLOCK_MONOTONIC);
  pthread_cond_init(&c->hb_cv, &cattr);
  pthread_condattr_destroy(&cattr);
  char err[256] = "";
  px_rpc_channel_opts co = {0};
  co.share_thread_of = beside ? beside->ch : NULL;
  char *ca = NULL, *cert = NULL, *key = NULL, *token = NULL;
  bool ok = true;
#define OPT(field, env) (opts && opts->field ? opts->field : getenv(env))
  const char* ca_file = OPT(tls_ca_file, "PMX_TLS_CA");
  const char* cert_file = OPT(tls_cert_file, "PMX_TLS_CERT");
  const char* key_file = OPT(tls_key_file, "PMX_TLS_KEY");
  const char* token_file = OPT(token_file, "PMX_TOKEN_FILE");
  co.tls_server_name = OPT(tls_server_name, "PMX_TLS_SERVER_NAME");
  co.token = OPT(token, "PMX_TOKEN");
#undef OPT
  if (ca_file && *ca_file) {
    ok = (ca = px_read_file(ca_file, 1u << 20, NULL, err, sizeof err)) != NULL;
    char why[64];
    if (ok && ((cert_file && *cert_file) != (key_file && *key_file))) {
      snprintf(err, sizeof err, "a client certificate needs both PMX_TLS_CERT and PMX_TLS_KEY");
      ok = false;
    }
    if (ok && cert_file && *cert_file)
      ok = (cert = px_read_file(cert_file, 1u << 20, NULL, err, sizeof err)) &&
           (key = px_read_file(key_file, 1u << 20, NULL, err, sizeof err));
    if (ok && px_tls_cert_validity(ca, why, sizeof why) < 0) {
      /* gRPC would only say "empty address list" at the first call */
      snprintf(err, sizeof err, "%s (tls_ca_file / PMX_TLS_CA) holds no PEM certificate", ca_file);
      ok = false;
    }
    if (ok && cert && px_tls_cert_validity(cert, why, sizeof why) < 0) {
      snprintf(err, sizeof err, "%s (tls_cert_file / PMX_TLS_CERT) holds no PEM certificate",
               cert_file);
      ok = false;
    }
    co.tls_ca_pem = ca;
    c->tls = true;
    c->tls_ca = ca ? strdup(ca) : NULL;
    c->tls_server_name = co.tls_server_name ? strdup(co.tls_server_name) : NULL;
    co.tls_cert_pem = cert;
    co.tls_key_pem = key;
  } else if (cert_file && *cert_file) {
    snprintf(err, sizeof err, "a client certificate needs a CA (tls_ca_file or PMX_TLS_CA)");
    ok = false;
  }
  if (ok && !(co.token && *co.token) && token_file && *token_file) {
    ok = (token = px_read_token(token_file, err, sizeof err)) != NULL;
    co.token = token;
  }
  if (co.token && !*co.token) co.token = NULL;
  int compression = opts ? opts->compression : PMX_COMPRESSION_AUTO;
  if (ok && (compression < PMX_COMPRESSION_AUTO || compression > PMX_COMPRESSION_OFF)) {
    snprintf(err, sizeof err, "compression must be PMX_COMPRESSION_AUTO, _ON or _OFF, not %d",
             compression);
    ok = false;
  }
  const char* cenv = getenv("PMX_PULL_COMPRESSION");
  if (ok && cenv && *cenv) {
    if (strcmp(cenv, "auto") == 0) compression = PMX_COMPRESSION_AUTO;
    else if (strcmp(cenv, "on") == 0) compression = PMX_COMPRESSION_ON;
    else if (strcmp(cenv, "off") == 0) compression = PMX_COMPRESSION_OFF;
    else {
      snprintf(err, sizeof err, "PMX_PULL_COMPRESSION must be auto, on or off, not '%.40s'", cenv);
      ok = false;
    }
  }
  if (opts && opts->no_compression) compression = PMX_COMPRESSION_OFF;
  c->compressed_pulls = compression == PMX_COMPRESSION_ON ||
                        (compression == PMX_COMPRESSION_AUTO && !px_target_is_local(addr));
  const char* menv = getenv("PMX_MALLOC_TUNE");
  if (ok && !(opts && opts->no_malloc_tuning) && !(menv && strcmp(menv, "0") == 0))
    px_tune_malloc_once();
  if (ok) {
    px_rpc_init();
    c->ch = px_rpc_channel_create_ex(addr, &co, err, sizeof err);
    if (!c->ch) px_rpc_shutdown();
  }
  free(ca);
  free(cert);
  px_free_secret(key);
  px_free_secret(token);
  c->addr = strdup(addr);
  if (!ok || !c->ch || !c->addr) {
    free(c->addr);
    free(c->tls_ca);
    free(c->tls_server_name);
    px_rpc_channel_destroy(c->ch);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->hb_cv);
    free(c);
    return px_fail(PMX_ERR_INVALID_ARGUMENT, "pmx_connect: %s", err);
  }
  *out = c;
  return PMX_OK;
}

void px_client_own(pmx_client* c, px_owned* o) {
  pthread_mutex_lock(&c->mu);
  o->prev = NULL;
  o->next = c->owned;
  if (c->owned) c->owned->prev = o;
  c->owned = o;
  pthread_mutex_unlock(&c->mu);
}

void px_client_release_owned(pmx_client* c) {
  for (;;) {
    pthread_mutex_lock(&c->mu);
    px_owned* o = c->owned;
    pthread_mutex_unlock(&c->mu);
    if (!o) break;
    o->release(o);
  }
}

void px_client_disown(pmx_client* c, px_owned* o) {
  pthread_mutex_lock(&c->mu);
  if (o->prev) o->prev->next = o->next;
  else if (c->owned == o) c->owned = o->next;
  if (o->next) o->next->prev = o->prev;
  o->prev = o->next = NULL;
  pthread_mutex_unlock(&c->mu);
}

/* A joined worker says it is done, so that the server reports it finished, not dead
 * (best effort, bounded: a server that is gone or restarted does not hold the exit). */
static void leave(pmx_client* c) {
  pthread_mutex_lock(&c->mu);
  bool joined = c->joined && !c->rejoin_failed;
  Paramex__V1__LeaveRequest req = PARAMEX__V1__LEAVE_REQUEST__INIT;
  req.worker_id = c->worker_id;
  req.incarnation = c->incarnation;
  pthread_mutex_unlock(&c->mu);
  if (!joined) return;
  uint8_t buf[32];
  size_t n = paramex__v1__leave_request__pack(&req, buf);
  char details[256];
  int st = px_rpc_unary(c->ch, PX_M_LEAVE, buf, n, 2000, false, NULL, NULL, details, sizeof details);
  if (st != PX_ST_OK) px_debug("Leave: %s: %s", px_status_name(st), details);
}

void px_client_free(pmx_client* c, bool say_leave) {
  if (!c) return;
  if (c->hb_started) {
    pthread_mutex_lock(&c->mu);
    c->hb_stop = true;
    pthread_cond_broadcast(&c->hb_cv);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->hb_thread, NULL);
  }
  pthread_cond_destroy(&c->hb_cv);
  if (say_leave) leave(c);
  px_rpc_channel_destroy(c->ch); /* cancels the calls still running and waits for them */
  px_client_release_owned(c);
  for (size_t i = 0; i < c->ntensors; i++) c->tensor_free(c->tensors[i]);
  free(c->tensors);
  free(c->addr);
  free(c->tls_ca);
  free(c->tls_server_name);
  free(c->settings);
  pthread_mutex_destroy(&c->mu);
  free(c);
  px_rpc_shutdown();
}

/* Whether a failed connection attempt's details name a problem that waiting will not
 * cure: TLS (handshake, certificate, server name) or a peer that closes every connection
 * during the handshake (a TLS server reached in plaintext, or the reverse). */
static bool handshake_failure(const char* details) {
  static const char* const marks[] = {"andshake", "SSL", "ssl", "ertificate", "Socket closed",
                                      "Connection reset", "peer name", "target name", NULL};
  for (int i = 0; marks[i]; i++)
    if (strstr(details, marks[i])) return true;
  return false;
}

/* A hint for the usual causes of a handshake failure (tls: the client uses TLS). */
static const char* handshake_hint(const char* details, bool tls) {
  if ((strstr(details, "Socket closed") || strstr(details, "Connection reset")) && !tls)
    return " (the server closed the connection during the handshake: it is probably a TLS "
           "server; set tls_ca_file / PMX_TLS_CA)";
  if (strstr(details, "Socket closed") || strstr(details, "Connection reset"))
    return " (the server closed the connection during the TLS handshake: it refused this "
           "client's certificate (mutual TLS: set tls_cert_file / tls_key_file to one signed by "
           "its --tls-client-ca), or it is not a TLS server)";
  if (strstr(details, "peer name") || strstr(details, "target name") ||
      strstr(details, "name mismatch") || strstr(details, "Hostname"))
    return " (the server's certificate does not name this address: set tls_server_name / "
           "PMX_TLS_SERVER_NAME to a name it holds)";
  if (strstr(details, "expired")) return " (a certificate has expired)";
  if (strstr(details, "verify")) return " (the server's certificate is not signed by the CA in "
                                       "tls_ca_file / PMX_TLS_CA, or a client certificate is "
                                       "missing or refused)";
  return "";
}

/* One unary call; with wait_ready, attempts until timeout_ms while the server cannot be
 * reached (not started yet, restarting), keeping the last cause: a call that waited ends
 * UNAVAILABLE with what stood in its way (connection refused, DNS), and a handshake
 * failure ends it at once (after a second attempt, in case it was one closing server). */
pmx_status px_client_unary(pmx_client* c, const char* method, const ProtobufCMessage* m,
                           int64_t timeout_ms, bool wait_ready, uint8_t** resp, size_t* resp_len) {
  size_t n = protobuf_c_message_get_packed_size(m);
  uint8_t* buf = malloc(n ? n : 1);
  if (!buf) return px_fail(PMX_ERR_NO_MEMORY, "%s: out of memory", method);
  protobuf_c_message_pack(m, buf);
  const char* name = strrchr(method, '/') + 1;
  char details[512];
  const uint64_t t0 = px_now_ms(), until = t0 + (uint64_t)timeout_ms;
  int64_t delay = 25;
  int st, handshakes = 0;
  for (;;) {
    uint64_t now = px_now_ms();
    int64_t left = until > now ? (int64_t)(until - now) : 1;
    st = px_rpc_unary(c->ch, method, buf, n, left, false, resp, resp_len, details, sizeof details);
    if (!wait_ready || st != PX_ST_UNAVAILABLE) break;
    if (handshake_failure(details) && ++handshakes >= 2) break;
    now = px_now_ms();
    if (now + 5 >= until) break;
    int64_t nap = (int64_t)(until - now) - 5 < delay ? (int64_t)(until - now) - 5 : delay;
    struct timespec ts = {nap / 1000, (nap % 1000) * 1000000L}; /* back-off, bounded */
    nanosleep(&ts, NULL);
    delay = delay * 2 > 1000 ? 1000 : delay * 2;
  }
  free(buf);
  if (st == PX_ST_OK) return PMX_OK;
  if (wait_ready && st == PX_ST_UNAVAILABLE && handshakes >= 2) {
    /* gRPC says "certificate verify failed" at most: OpenSSL alone tells why */
    char why[256];
    if (c->tls && c->tls_ca &&
        px_tls_probe(c->addr, c->tls_ca, c->tls_server_name, 2000, why, sizeof why) == 0)
      return px_fail(PMX_ERR_UNAVAILABLE, "%s: cannot connect: %s (TLS: %s)", name, details, why);
    return px_fail(PMX_ERR_UNAVAILABLE, "%s: cannot connect: %s%s", name, details,
                   handshake_hint(details, c->tls));
  }
  if (wait_ready && st == PX_ST_UNAVAILABLE && strstr(details, "held by a live worker"))
    return px_fail(PMX_ERR_UNAVAILABLE, "%s: %s (waited %lld ms)", name, details,
                   (long long)timeout_ms);
  if (wait_ready && st == PX_ST_UNAVAILABLE)
    return px_fail(PMX_ERR_UNAVAILABLE, "%s: the server was not reachable within %lld ms: %s",
                   name, (long long)timeout_ms, details);
  return px_fail(px_from_rpc(st), "%s: %s: %s", name, px_status_name(st), details);
}

/* Sends a Heartbeat every lease/3 until the client is destroyed. Failures are ignored: a
 * push or pull reports a real problem; a missed lease is what the server acts on. */
static void* heartbeat_thread(void* arg) {
  pmx_client* c = arg;
  pthread_mutex_lock(&c->mu);
  while (!c->hb_stop) {
    uint32_t period = c->lease_ms / 3 ? c->lease_ms / 3 : 1;
    struct timespec ts;
    px_deadline_ts(&ts, CLOCK_MONOTONIC, period);
    pthread_cond_timedwait(&c->hb_cv, &c->mu, &ts);
    if (c->hb_stop) break;
    Paramex__V1__HeartbeatRequest req = PARAMEX__V1__HEARTBEAT_REQUEST__INIT;
    req.worker_id = c->worker_id;
    req.incarnation = c->incarnation;
    pthread_mutex_unlock(&c->mu);
    uint8_t buf[32];
    size_t n = paramex__v1__heartbeat_request__pack(&req, buf);
    char details[128];
    px_rpc_unary(c->ch, PX_M_HEARTBEAT, buf, n, period, false, NULL,
                  NULL, details, sizeof details);
    pthread_mutex_lock(&c->mu);
  }
  pthread_mutex_unlock(&c->mu);
  return NULL;
}

pmx_status px_client_join(pmx_client* c, uint32_t rank, uint32_t world_size, pmx_join_info* info) {
  Paramex__V1__JoinRequest req = PARAMEX__V1__JOIN_REQUEST__INIT;
  req.rank = rank;
  req.world_size = world_size;
  char name[128];
  char host[64] = "?";
  gethostname(host, sizeof host - 1);
  snprintf(name, sizeof name, "%s:%d", host, (int)getpid());
  req.name = name;
  req.shard = c->shard_index;
  req.shards = c->shard_count;
  uint8_t* resp = NULL;
  size_t len = 0;
  pmx_status st = px_client_unary(c, PX_M_JOIN, &req.base, c->connect_timeout_ms, true, &resp, &len);
  if (st != PMX_OK) return st;
  Paramex__V1__JoinResponse* r = paramex__v1__join_response__unpack(NULL, len, resp);
  free(resp);
  if (!r) return px_fail(PMX_ERR_PROTOCOL, "Join: malformed JoinResponse");
  pthread_mutex_lock(&c->mu);
  c->worker_id = r->worker_id;
  c->incarnation = r->incarnation;
  c->joined = true;
  c->rejoin_failed = false;
  c->rank = rank;
  c->world = world_size;
  px_strlcpy(c->server_id, r->server_id ? r->server_id : "", sizeof c->server_id);
  c->lease_ms = r->lease_ms;
  free(c->settings);
  c->settings = strdup(r->settings ? r->settings : "");
  bool start_hb = r->lease_ms > 0 && !c->hb_started;
  if (start_hb) c->hb_started = pthread_create(&c->hb_thread, NULL, heartbeat_thread, c) == 0;
  pthread_mutex_unlock(&c->mu);
  /* Pushes and pulls name the server they joined: a restarted server answers ABORTED. */
  if (r->server_id && *r->server_id) px_rpc_channel_set_header(c->ch, "pmx-server-id", r->server_id);
  if (info) {
    info->worker_id = r->worker_id;
    info->incarnation = r->incarnation;
    info->world_size = r->world_size;
  }
  paramex__v1__join_response__free_unpacked(r, NULL);
  return PMX_OK;
}

/* After a server restart: join again (new server id and incarnation). */
void px_client_rejoin(pmx_client* c) {
  pthread_mutex_lock(&c->mu);
  bool joined = c->joined;
  uint32_t rank = c->rank, world = c->world;
  pthread_mutex_unlock(&c->mu);
  if (!joined) return;
  char saved[PX_ERROR_LEN];
  memcpy(saved, px_last_error_buf(), sizeof saved);
  if (px_client_join(c, rank, world, NULL) != PMX_OK) {
    px_warn("joining the restarted server again failed: %s", px_last_error_buf());
    pthread_mutex_lock(&c->mu);
    c->rejoin_failed = true;
    pthread_mutex_unlock(&c->mu);
  }
  memcpy(px_last_error_buf(), saved, sizeof saved);
}

pmx_status px_client_join_again(pmx_client* c) {
  pthread_mutex_lock(&c->mu);
  bool need = c->joined && c->rejoin_failed;
  uint32_t rank = c->rank, world = c->world;
  pthread_mutex_unlock(&c->mu);
  return need ? px_client_join(c, rank, world, NULL) : PMX_OK;
}


pmx_status px_client_adopt(pmx_client* c, pmx_tensor* t, void (*free_fn)(pmx_tensor* t)) {
  pthread_mutex_lock(&c->mu);
  c->tensor_free = free_fn;
  if (c->ntensors == c->cap) {
    size_t ncap = c->cap ? c->cap * 2 : 16;
    pmx_tensor** n = realloc(c->tensors, ncap * sizeof *n);
    if (!n) {
      pthread_mutex_unlock(&c->mu);
      return px_fail(PMX_ERR_NO_MEMORY, "pmx_declare: out of memory");
    }
    c->tensors = n;
    c->cap = ncap;
  }
  c->tensors[c->ntensors++] = t;
  pthread_mutex_unlock(&c->mu);
  return PMX_OK;
}
