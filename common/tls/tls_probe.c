/* TLS diagnosis with OpenSSL alone (tls_probe.h). */
#include "tls/tls_probe.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "util/net.h"

/* A TCP connection within timeout_ms, or -1 (out says why). */
static int connect_to(const char* host, const char* port, int timeout_ms, char* out, size_t cap) {
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
  int rc = getaddrinfo(host, port, &hints, &res);
  if (rc != 0) {
    snprintf(out, cap, "cannot resolve %s: %s", host, gai_strerror(rc));
    return -1;
  }
  int fd = -1;
  for (struct addrinfo* a = res; a && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) continue;
    if (connect(fd, a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
      snprintf(out, cap, "connect: %s", strerror(errno));
      close(fd);
      fd = -1;
      continue;
    }
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int err = 0;
    socklen_t len = sizeof err;
    if (poll(&p, 1, timeout_ms) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 ||
        err != 0) {
      snprintf(out, cap, "connect: %s", err ? strerror(err) : "timed out");
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(res);
  if (fd < 0) return -1;
  int flags = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  return fd;
}

static int add_cas(SSL_CTX* ctx, const char* ca_pem) {
  BIO* bio = BIO_new_mem_buf(ca_pem, -1);
  if (!bio) return -1;
  X509_STORE* store = SSL_CTX_get_cert_store(ctx);
  int n = 0;
  for (X509* x; (x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL; X509_free(x))
    n += X509_STORE_add_cert(store, x) == 1;
  ERR_clear_error(); /* the end of the PEM data */
  BIO_free(bio);
  return n > 0 ? 0 : -1;
}

static void asn1_time_text(const ASN1_TIME* t, char* out, size_t cap) {
  BIO* b = BIO_new(BIO_s_mem());
  out[0] = 0;
  if (!b) return;
  if (ASN1_TIME_print(b, t) == 1) {
    int n = BIO_read(b, out, (int)cap - 1);
    out[n > 0 ? n : 0] = 0;
  }
  BIO_free(b);
}

/* The validity date of the certificate that failed verification (the peer certificate is
 * not kept after a failed handshake): noted by the verify callback, per thread. */
static __thread char t_when[64];

static int note_dates(int ok, X509_STORE_CTX* x) {
  if (!ok) {
    int e = X509_STORE_CTX_get_error(x);
    X509* cert = X509_STORE_CTX_get_current_cert(x);
    if (cert && e == X509_V_ERR_CERT_HAS_EXPIRED)
      asn1_time_text(X509_get0_notAfter(cert), t_when, sizeof t_when);
    else if (cert && e == X509_V_ERR_CERT_NOT_YET_VALID)
      asn1_time_text(X509_get0_notBefore(cert), t_when, sizeof t_when);
  }
  return ok;
}

/* The verification's reason, with the dates of a certificate out of its period. */
static void verify_reason(long vr, char* out, size_t cap) {
  const char* why = X509_verify_cert_error_string(vr);
  if (t_when[0] && (vr == X509_V_ERR_CERT_HAS_EXPIRED || vr == X509_V_ERR_CERT_NOT_YET_VALID))
    snprintf(out, cap, "%s (%s %s)", why, vr == X509_V_ERR_CERT_HAS_EXPIRED ? "on" : "until",
             t_when);
  else snprintf(out, cap, "%s", why);
}

int px_tls_probe(const char* target, const char* ca_pem, const char* server_name, int timeout_ms,
                 char* out, size_t cap) {
  char host[256], port[16];
  if (!target || !px_target_split(target, host, sizeof host, port, sizeof port) || !port[0]) {
    snprintf(out, cap, "cannot probe '%s'", target ? target : "");
    return -1;
  }
  const char* name = server_name && *server_name ? server_name : host;
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx) {
    snprintf(out, cap, "out of memory");
    return -1;
  }
  int rc = -1;
  SSL* ssl = NULL;
  int fd = -1;
  t_when[0] = 0;
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, note_dates);
  if (!ca_pem || add_cas(ctx, ca_pem) != 0) {
    snprintf(out, cap, "the CA file holds no certificate");
    rc = 0;
    goto done;
  }
  if ((fd = connect_to(host, port, timeout_ms, out, cap)) < 0) goto done;
  if (!(ssl = SSL_new(ctx))) goto done;
  X509_VERIFY_PARAM* vp = SSL_get0_param(ssl);
  struct in6_addr ip;
  bool is_ip = inet_pton(AF_INET, name, &ip) == 1 || inet_pton(AF_INET6, name, &ip) == 1;
  if (is_ip) X509_VERIFY_PARAM_set1_ip_asc(vp, name);
  else {
    X509_VERIFY_PARAM_set1_host(vp, name, 0);
    SSL_set_tlsext_host_name(ssl, name);
  }
  static const unsigned char alpn[] = {2, 'h', '2'};
  SSL_set_alpn_protos(ssl, alpn, sizeof alpn);
  SSL_set_fd(ssl, fd);
  if (SSL_connect(ssl) == 1) {
    snprintf(out, cap, "the TLS handshake verifies");
    rc = 1;
    goto done;
  }
  long vr = SSL_get_verify_result(ssl);
  if (vr != X509_V_OK) {
    verify_reason(vr, out, cap);
  } else {
    unsigned long e = ERR_peek_last_error();
    char buf[256] = "the server closed the connection";
    if (e) ERR_error_string_n(e, buf, sizeof buf);
    snprintf(out, cap, "handshake: %s", buf);
  }
  rc = 0;
done:
  ERR_clear_error();
  if (ssl) SSL_free(ssl);
  if (fd >= 0) close(fd);
  SSL_CTX_free(ctx);
  return rc;
}

int px_tls_cert_validity(const char* cert_pem, char* out, size_t cap) {
  BIO* bio = BIO_new_mem_buf(cert_pem, -1);
  X509* x = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
  BIO_free(bio);
  ERR_clear_error();
  if (!x) {
    snprintf(out, cap, "no PEM certificate");
    return -1;
  }
  int rc = 0;
  char when[64];
  if (X509_cmp_current_time(X509_get0_notAfter(x)) < 0) {
    asn1_time_text(X509_get0_notAfter(x), when, sizeof when);
    snprintf(out, cap, "expired on %s", when);
    rc = 1;
  } else if (X509_cmp_current_time(X509_get0_notBefore(x)) > 0) {
    asn1_time_text(X509_get0_notBefore(x), when, sizeof when);
    snprintf(out, cap, "not valid until %s", when);
    rc = 1;
  }
  X509_free(x);
  return rc;
}
