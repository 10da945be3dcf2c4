/* A small HTTP(S) server for read-only endpoints (the server's /metrics), on
 * libmicrohttpd: one internal polling thread, a connection cap, an idle timeout and a
 * request memory limit (slow or oversized requests are the library's to refuse), GET and
 * HEAD only (405 otherwise, with Allow), 404 for unknown paths, and an optional bearer
 * token (401). Only this room includes <microhttpd.h>. Nothing it does touches the
 * training path: a handler runs on the HTTP thread. */
#ifndef PX_HTTP_SERVER_H
#define PX_HTTP_SERVER_H

#include <stddef.h>

typedef struct px_http px_http;

/* Renders a page: *body (malloc'd, taken by the server) of *len bytes; 0, or -1 when it
 * cannot (answered 500). Runs on the HTTP thread. */
typedef int (*px_http_render)(void* ctx, char** body, size_t* len);

typedef struct px_http_route {
  const char* path;         /* "/metrics" */
  const char* content_type; /* "text/plain; version=0.0.4; charset=utf-8" */
  px_http_render render;
} px_http_route;

typedef struct px_http_opts {
  const char* listen;       /* "HOST:PORT", "[V6]:PORT" or ":PORT" (every address); port 0
                             * picks a free one */
  const char* tls_cert_pem; /* PEM contents: serve HTTPS (both or neither) */
  const char* tls_key_pem;
  const char* token;        /* "Authorization: Bearer TOKEN" required; NULL: none */
  unsigned max_connections; /* 0: 64 */
  unsigned timeout_s;       /* idle connections closed after it; 0: 15 */
} px_http_opts;

/* Binds and starts; *port receives the bound port. NULL with one line in err (a port in
 * use says so). routes (and their strings) must outlive the server. */
px_http* px_http_start(const px_http_opts* o, const px_http_route* routes, size_t nroutes,
                       void* ctx, int* port, char* err, size_t errlen);
/* Stops the thread, closes every connection, frees. Accepts NULL. */
void px_http_stop(px_http* h);

#endif
