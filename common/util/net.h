/* Where a gRPC target lives: decides the client's default pull compression (a transfer on
 * the same host runs at memory speed, where zstd only costs time). */
#ifndef PX_NET_H
#define PX_NET_H

#include <stdbool.h>
#include <stddef.h>

/* Whether a gRPC target ("HOST:PORT", "[V6]:PORT", "dns:///HOST:PORT", "unix:PATH") is
 * this host: unix sockets, and names whose every address is loopback or one of this
 * host's interface addresses. False when it does not resolve. */
bool px_target_is_local(const char* target);
/* The host of a gRPC target ("HOST:PORT", "[V6]:PORT", "dns:///HOST:PORT",
 * "dns://DNS-SERVER/HOST:PORT", "ipv4:A:PORT") into host, and (port not NULL) its port
 * into port ("" when it names none); false when a part does not fit. */
bool px_target_split(const char* target, char* host, size_t cap, char* port, size_t pcap);

#endif
