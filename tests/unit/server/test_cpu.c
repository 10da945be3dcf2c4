/* Unit tests of server/backend/cpu.c: the backend conformance suite
 * (tests/helpers/backend_conformance.h) on the cpu backend, bit for bit against independent
 * reference arithmetic. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "backend_conformance.h"

int main(void) { return px_conformance_main("cpu"); }
