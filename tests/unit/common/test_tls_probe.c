/* Unit tests of common/tls/tls_probe.c: a certificate's validity (an expired one, one not
 * valid before 2100, text that is no certificate), and the probe's own failures (a target
 * it cannot parse, nothing listening, a CA file without a certificate). The probe's
 * reasons against real TLS servers (expired, unknown CA, wrong name) are asserted by
 * integration_security through libparamex. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "tls/tls_probe.h"

/* Signed by a throw-away CA (openssl ca -startdate/-enddate), valid 2020-01-01..02. */
static const char k_expired[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBAzCBqgICEAAwCgYIKoZIzj0EAwIwDTELMAkGA1UEAwwCY2EwHhcNMjAwMTAx\n"
    "MDAwMDAwWhcNMjAwMTAyMDAwMDAwWjAOMQwwCgYDVQQDDANvbGQwWTATBgcqhkjO\n"
    "PQIBBggqhkjOPQMBBwNCAATCk3GTSfFTVyTZjao05+tvPeggbnFaZdMir9TWnUvz\n"
    "GYznqXlLNR87cCgxThdyYAzT1Hqhyqb7Z/GXZBOKZ3rnMAoGCCqGSM49BAMCA0gA\n"
    "MEUCIGQwHuXyUpdKiwKstUeTTswDI6Aty5qDcAnuhACGRsYzAiEAlXNuSxQzD8WA\n"
    "t85kWVh4jFluNAy13MhniEeduKkFOW4=\n"
    "-----END CERTIFICATE-----\n";
/* The same key, valid 2100-01-01 .. 2101-01-01. */
static const char k_future[] =
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBCDCBrgICEAEwCgYIKoZIzj0EAwIwDTELMAkGA1UEAwwCY2EwIhgPMjEwMDAx\n"
    "MDEwMDAwMDBaGA8yMTAxMDEwMTAwMDAwMFowDjEMMAoGA1UEAwwDb2xkMFkwEwYH\n"
    "KoZIzj0CAQYIKoZIzj0DAQcDQgAEwpNxk0nxU1ck2Y2qNOfrbz3oIG5xWmXTIq/U\n"
    "1p1L8xmM56l5SzUfO3AoMU4XcmAM09R6ocqm+2fxl2QTimd65zAKBggqhkjOPQQD\n"
    "AgNJADBGAiEAyonpdSqKuWTDh5U5s/FSBoN3VkJ+NMI+SNPXvOkp9EQCIQCNQBrt\n"
    "p09voFmFNS3I27d8FyFfX8MoK8FIV3qsH/4AHw==\n"
    "-----END CERTIFICATE-----\n";

static void test_validity(void** state) {
  (void)state;
  char why[128];
  assert_int_equal(px_tls_cert_validity(k_expired, why, sizeof why), 1);
  assert_string_equal(why, "expired on Jan  2 00:00:00 2020 GMT");
  assert_int_equal(px_tls_cert_validity(k_future, why, sizeof why), 1);
  assert_string_equal(why, "not valid until Jan  1 00:00:00 2100 GMT");
  assert_int_equal(px_tls_cert_validity("not a certificate", why, sizeof why), -1);
  assert_string_equal(why, "no PEM certificate");
  assert_int_equal(px_tls_cert_validity("", why, sizeof why), -1);
}

static void test_probe_failures(void** state) {
  (void)state;
  char why[256];
  assert_int_equal(px_tls_probe("no-port", k_expired, NULL, 1000, why, sizeof why), -1);
  assert_string_equal(why, "cannot probe 'no-port'");
  assert_int_equal(px_tls_probe(NULL, k_expired, NULL, 1000, why, sizeof why), -1);
  /* port 1 of loopback: nothing listens */
  assert_int_equal(px_tls_probe("ipv4:127.0.0.1:1", k_expired, NULL, 2000, why, sizeof why), -1);
  assert_string_equal(why, "connect: Connection refused");
  /* a bracketed IPv6 target parses (refused, or no IPv6 here: either way the probe cannot run) */
  assert_int_equal(px_tls_probe("[::1]:1", k_expired, NULL, 2000, why, sizeof why), -1);
  /* a CA file without a certificate is the reason itself */
  assert_int_equal(px_tls_probe("127.0.0.1:1", "garbage", NULL, 2000, why, sizeof why), 0);
  assert_string_equal(why, "the CA file holds no certificate");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_validity),
      cmocka_unit_test(test_probe_failures),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
