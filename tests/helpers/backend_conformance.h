/* The backend conformance suite (backend_conformance.c): every scenario on backend dev
 * ("cpu" or "cuda"), compared with independent reference arithmetic and, for cuda on one
 * GPU, byte for byte with the cpu backend. Returns cmocka's result. */
#ifndef PX_BACKEND_CONFORMANCE_H
#define PX_BACKEND_CONFORMANCE_H

int px_conformance_main(const char* dev);

#endif
