/* Why a TLS connection fails (tls_probe.c), for the error message of a client whose gRPC
 * handshake failed: gRPC reports "certificate verify failed" and nothing more, so the
 * client connects once more with OpenSSL alone and reads the verification's own reason
 * ("certificate has expired", "unable to get local issuer certificate", a name mismatch).
 * And the facts of a certificate an operator gives a server (expired, not valid yet). */
#ifndef PX_TLS_PROBE_H
#define PX_TLS_PROBE_H

#include <stddef.h>

/* Connects to target ("HOST:PORT", "ipv4:HOST:PORT"), runs a TLS handshake verifying the
 * peer against ca_pem and the name server_name (NULL: target's host), within timeout_ms,
 * and writes what went wrong into out ("certificate has expired", "the certificate names
 * neither 127.0.0.1 ...", "handshake: ..."). Returns 0 when the reason was found, 1 when
 * the handshake verified (nothing wrong at this level), -1 when the probe itself could not
 * run (out says why). */
int px_tls_probe(const char* target, const char* ca_pem, const char* server_name, int timeout_ms,
                 char* out, size_t cap);

/* Whether the first certificate of cert_pem is out of its validity period now: 0 valid,
 * 1 expired or not valid yet (out: "expired on Jan  2 00:00:00 2020 GMT"), -1 unreadable. */
int px_tls_cert_validity(const char* cert_pem, char* out, size_t cap);

#endif
