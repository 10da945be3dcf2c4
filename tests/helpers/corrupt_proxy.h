/* A TCP proxy on loopback that corrupts gRPC messages on their way from a server to its
 * clients, like a faulty link would: it follows the HTTP/2 frames of the server's side and
 * the gRPC messages in every stream's DATA frames, and flips the last byte of every Nth
 * message of at least min_len bytes on each connection (for a PullChunk that is a payload
 * byte, so the client's checksum catches it). Headers, control frames and the client's
 * side pass unchanged. For tests of the client's healing; nothing in the server knows. */
#ifndef PX_CORRUPT_PROXY_H
#define PX_CORRUPT_PROXY_H

#include <stdint.h>

typedef struct px_h_proxy px_h_proxy;

/* Listens on 127.0.0.1:0 (the port in *port) and forwards every connection to
 * 127.0.0.1:target_port on a thread of its own. NULL when it cannot start. */
px_h_proxy* px_h_proxy_start(int target_port, unsigned every, uint32_t min_len, int* port);
/* Messages corrupted so far, over every connection. */
uint64_t px_h_proxy_corrupted(px_h_proxy* p);
/* Closes every connection and joins the thread. Accepts NULL. */
void px_h_proxy_stop(px_h_proxy* p);

#endif
