/* HTTP endpoints on libmicrohttpd (http_server.h). */
#include "http_server.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "util/log.h"
#include "util/net.h"
#include "util/str.h"

struct px_http {
  struct MHD_Daemon* d;
  const px_http_route* routes;
  size_t nroutes;
  void* ctx;
  char* want_auth; /* "Bearer TOKEN" or NULL */
};

static enum MHD_Result answer(struct MHD_Connection* c, unsigned code, const char* text,
                              const char* header, const char* value) {
  struct MHD_Response* r =
      MHD_create_response_from_buffer(strlen(text), (void*)text, MHD_RESPMEM_PERSISTENT);
  if (!r) return MHD_NO;
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
  if (header) MHD_add_response_header(r, header, value);
  enum MHD_Result ok = MHD_queue_response(c, code, r);
  MHD_destroy_response(r);
  return ok;
}

static enum MHD_Result on_request(void* cls, struct MHD_Connection* c, const char* url,
                                  const char* method, const char* version,
                                  const char* upload_data, size_t* upload_size, void** state) {
  (void)version;
  (void)upload_data;
  (void)upload_size;
  (void)state;
  px_http* h = cls;
  if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
    return answer(c, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD are served\n",
                  MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
  const px_http_route* route = NULL;
  for (size_t i = 0; i < h->nroutes && !route; i++)
    if (strcmp(url, h->routes[i].path) == 0) route = &h->routes[i];
  if (!route) return answer(c, MHD_HTTP_NOT_FOUND, "not found (this server has /metrics)\n",
                            NULL, NULL);
  if (h->want_auth) {
    const char* got = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                  MHD_HTTP_HEADER_AUTHORIZATION);
    if (!got || !px_secret_equal(h->want_auth, strlen(h->want_auth), got, strlen(got)))
      return answer(c, MHD_HTTP_UNAUTHORIZED, "a bearer token is required (Authorization: "
                    "Bearer TOKEN, the server's --token-file)\n",
                    MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
  }
  char* body = NULL;
  size_t len = 0;
  if (route->render(h->ctx, &body, &len) != 0)
    return answer(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "could not render the page (out of "
                  "memory)\n", NULL, NULL);
  struct MHD_Response* r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
  if (!r) {
    free(body);
    return MHD_NO;
  }
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, route->content_type);
  enum MHD_Result ok = MHD_queue_response(c, MHD_HTTP_OK, r);
  MHD_destroy_response(r);
  return ok;
}

static void on_log(void* cls, const char* fmt, va_list ap) {
  (void)cls;
  char msg[256];
  vsnprintf(msg, sizeof msg, fmt, ap);
  size_t n = strlen(msg);
  while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = 0;
  px_debug("metrics endpoint: %s", msg);
}

/* A listening socket on listen; its fd, or -1 with err. */
static int bind_listen(const char* addr, int* port, char* err, size_t errlen) {
  char host[256], ps[16];
  if (addr[0] == ':' && strlen(addr + 1) < sizeof ps) { /* ":PORT": every address */
    host[0] = 0;
    snprintf(ps, sizeof ps, "%s", addr + 1);
  } else if (!px_target_split(addr, host, sizeof host, ps, sizeof ps) || !ps[0]) {
    snprintf(err, errlen, "'%s' is not HOST:PORT", addr);
    return -1;
  }
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
  struct addrinfo* ai = NULL;
  int gai = getaddrinfo(host[0] ? host : NULL, ps, &hints, &ai);
  if (gai != 0) {
    snprintf(err, errlen, "%s: %s", addr, gai_strerror(gai));
    return -1;
  }
  int fd = -1, why = 0;
  for (struct addrinfo* a = ai; a && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      why = errno;
      continue;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, 64) != 0) {
      why = errno;
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(ai);
  if (fd < 0) {
    snprintf(err, errlen, "cannot listen on %s: %s", addr, strerror(why));
    return -1;
  }
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  getsockname(fd, (struct sockaddr*)&ss, &sl);
  *port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6*)&ss)->sin6_port
                                         : ((struct sockaddr_in*)&ss)->sin_port);
  return fd;
}

px_http* px_http_start(const px_http_opts* o, const px_http_route* routes, size_t nroutes,
                       void* ctx, int* port, char* err, size_t errlen) {
  const bool tls = o->tls_cert_pem && o->tls_key_pem;
  if (tls && MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
    snprintf(err, errlen, "this libmicrohttpd was built without TLS: cannot serve HTTPS");
    return NULL;
  }
  px_http* h = calloc(1, sizeof *h);
  if (!h) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  h->routes = routes;
  h->nroutes = nroutes;
  h->ctx = ctx;
  if (o->token) {
    size_t n = strlen(o->token) + 8;
    h->want_auth = malloc(n);
    if (!h->want_auth) {
      free(h);
      snprintf(err, errlen, "out of memory");
      return NULL;
    }
    snprintf(h->want_auth, n, "Bearer %s", o->token);
  }
  int fd = bind_listen(o->listen, port, err, errlen);
  if (fd < 0) {
    px_http_stop(h);
    return NULL;
  }
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_USE_ERROR_LOG |
                   (tls ? MHD_USE_TLS : 0);
  struct MHD_OptionItem tls_opts[] = {
      {tls ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, 0, (void*)o->tls_cert_pem},
      {MHD_OPTION_HTTPS_MEM_KEY, 0, (void*)o->tls_key_pem},
      {MHD_OPTION_END, 0, NULL}};
  h->d = MHD_start_daemon(
      flags, 0, NULL, NULL, on_request, h, MHD_OPTION_LISTEN_SOCKET, fd,
      MHD_OPTION_CONNECTION_LIMIT, (unsigned)(o->max_connections ? o->max_connections : 64),
      MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)(o->timeout_s ? o->timeout_s : 15),
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)32768, MHD_OPTION_EXTERNAL_LOGGER, on_log,
      NULL, MHD_OPTION_ARRAY, tls_opts, MHD_OPTION_END);
  if (!h->d) {
    /* fd is not closed here: libmicrohttpd closes a MHD_OPTION_LISTEN_SOCKET itself on most
     * of its failure paths (TLS setup, threads), and a second close could hit a descriptor
     * another thread opened since. On the others it stays open: the caller exits anyway. */
    snprintf(err, errlen, "cannot start the HTTP%s server on %s (libmicrohttpd refused%s)",
             tls ? "S" : "", o->listen, tls ? "; is the certificate and key PEM valid?" : "");
    px_http_stop(h);
    return NULL;
  }
  return h;
}

void px_http_stop(px_http* h) {
  if (!h) return;
  if (h->d) MHD_stop_daemon(h->d); /* closes the listening socket too */
  free(h->want_auth);
  free(h);
}
