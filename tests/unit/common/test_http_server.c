/* Unit tests of common/http/http_server.c over real sockets on loopback: a page, 404,
 * 405 with Allow, the bearer token, a render failure (500), a port in use, a bad address. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http/http_server.h"

static int g_renders;

static int render_ok(void* ctx, char** body, size_t* len) {
  g_renders++;
  *body = strdup((const char*)ctx);
  *len = strlen(*body);
  return *body ? 0 : -1;
}

static int render_fail(void* ctx, char** body, size_t* len) {
  (void)ctx;
  (void)body;
  (void)len;
  return -1;
}

static const px_http_route routes[] = {{"/metrics", "text/plain; version=0.0.4", render_ok},
                                       {"/broken", "text/plain", render_fail}};

/* The whole answer to request (sent as is) from 127.0.0.1:port, NUL-terminated. */
static void ask(int port, const char* request, char* out, size_t cap) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(connect(fd, (struct sockaddr*)&a, sizeof a), 0);
  assert_int_equal(write(fd, request, strlen(request)), (ssize_t)strlen(request));
  size_t n = 0;
  for (int i = 0; i < 10000 && n + 1 < cap; i++) { /* bounded: the server closes */
    struct pollfd p = {fd, POLLIN, 0};
    assert_true(poll(&p, 1, 60000) == 1);
    ssize_t r = read(fd, out + n, cap - 1 - n);
    if (r <= 0) break;
    n += (size_t)r;
  }
  out[n] = 0;
  close(fd);
}

static px_http* start(const char* token, int* port) {
  px_http_opts o = {.listen = "127.0.0.1:0", .token = token};
  char err[256] = "";
  px_http* h = px_http_start(&o, routes, 2, "the page\n", port, err, sizeof err);
  assert_non_null(h);
  assert_true(*port > 0);
  return h;
}

static void test_routes_and_methods(void** state) {
  (void)state;
  int port = 0;
  px_http* h = start(NULL, &port);
  char out[4096];
  ask(port, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", out, sizeof out);
  assert_non_null(strstr(out, "HTTP/1.1 200"));
  assert_non_null(strstr(out, "Content-Type: text/plain; version=0.0.4"));
  assert_non_null(strstr(out, "\r\n\r\nthe page\n"));
  ask(port, "GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", out, sizeof out);
  assert_non_null(strstr(out, "HTTP/1.1 404"));
  ask(port, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
      out, sizeof out);
  assert_non_null(strstr(out, "HTTP/1.1 405"));
  assert_non_null(strstr(out, "Allow: GET, HEAD"));
  ask(port, "GET /broken HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", out, sizeof out);
  assert_non_null(strstr(out, "HTTP/1.1 500"));
  int before = g_renders;
  ask(port, "garbage\r\n\r\n", out, sizeof out);
  assert_true(out[0] == 0 || strstr(out, "HTTP/1.1 400")); /* closed, or Bad Request */
  assert_int_equal(g_renders, before); /* nothing rendered for a bad request */
  px_http_stop(h);
}

static void test_token(void** state) {
  (void)state;
  int port = 0;
  px_http* h = start("s3cret", &port);
  char out[4096];
  ask(port, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", out, sizeof out);
  assert_non_null(strstr(out, "HTTP/1.1 401"));
  assert_non_null(strstr(out, "WWW-Authenticate: Bearer"));
  ask(port, "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cre\r\n"
      "Connection: close\r\n\r\n", out, sizeof out);
  assert_non_null(strstr(out, "HTTP/1.1 401"));
  ask(port, "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n"
      "Connection: close\r\n\r\n", out, sizeof out);
  assert_non_null(strstr(out, "HTTP/1.1 200"));
  px_http_stop(h);
}

static void test_every_address(void** state) {
  (void)state;
  px_http_opts o = {.listen = ":0"}; /* every address: loopback too */
  char err[256] = "", out[4096];
  int port = 0;
  px_http* h = px_http_start(&o, routes, 2, "all\n", &port, err, sizeof err);
  assert_non_null(h);
  ask(port, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", out, sizeof out);
  assert_non_null(strstr(out, "\r\n\r\nall\n"));
  px_http_stop(h);
}

static void test_start_errors(void** state) {
  (void)state;
  int port = 0;
  px_http* h = start(NULL, &port);
  char listen[64], err[256];
  snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
  px_http_opts o = {.listen = listen};
  int p2 = 0;
  assert_null(px_http_start(&o, routes, 2, "x", &p2, err, sizeof err));
  char want[128];
  snprintf(want, sizeof want, "cannot listen on 127.0.0.1:%d: Address already in use", port);
  assert_string_equal(err, want);
  px_http_stop(h);
  o.listen = "no-port";
  assert_null(px_http_start(&o, routes, 2, "x", &p2, err, sizeof err));
  assert_string_equal(err, "'no-port' is not HOST:PORT");
  o.listen = "127.0.0.1:0";
  o.tls_cert_pem = "not a certificate";
  o.tls_key_pem = "not a key";
  assert_null(px_http_start(&o, routes, 2, "x", &p2, err, sizeof err));
  assert_non_null(strstr(err, "cannot start the HTTPS server on 127.0.0.1:0"));
  px_http_stop(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_routes_and_methods),
      cmocka_unit_test(test_token),
      cmocka_unit_test(test_every_address),
      cmocka_unit_test(test_start_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
