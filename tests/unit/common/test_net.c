/* Unit tests of common/util/net.c. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <regex.h>
#include <stdatomic.h>
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util/clock.h"
#include "util/flags.h"
#include "util/log.h"
#include "util/mem.h"
#include "util/net.h"
#include "util/str.h"
#include "util/taskpool.h"

/* Whether one of this host's interfaces has the numeric address ip. */
static bool host_has_address(const char* ip) {
  unsigned char want[16];
  int fam = strchr(ip, ':') ? AF_INET6 : AF_INET;
  if (inet_pton(fam, ip, want) != 1) return false;
  struct ifaddrs* ifs = NULL;
  if (getifaddrs(&ifs) != 0) return false;
  bool found = false;
  for (struct ifaddrs* i = ifs; i && !found; i = i->ifa_next) {
    if (!i->ifa_addr || i->ifa_addr->sa_family != fam) continue;
    const void* a = fam == AF_INET ? (const void*)&((const struct sockaddr_in*)(const void*)i->ifa_addr)->sin_addr
                                   : (const void*)&((const struct sockaddr_in6*)(const void*)i->ifa_addr)->sin6_addr;
    found = memcmp(a, want, fam == AF_INET ? 4 : 16) == 0;
  }
  freeifaddrs(ifs);
  return found;
}

/* The client's default pull compression depends on this: same host = raw pulls. */
static void test_target_is_local(void** state) {
  (void)state;
  assert_true(px_target_is_local("127.0.0.1:5000"));
  assert_true(px_target_is_local("127.8.9.10:1"));
  assert_true(px_target_is_local("localhost:5000"));
  assert_true(px_target_is_local("dns:///127.0.0.1:5000"));
  assert_true(px_target_is_local("ipv4:127.0.0.1:80"));
  assert_true(px_target_is_local("dns://8.8.8.8/127.0.0.1:5000")); /* the authority is skipped */
  assert_true(px_target_is_local("0.0.0.0:5000"));                 /* reaches this host */
  assert_true(px_target_is_local("[::ffff:127.0.0.1]:5000"));      /* v4-mapped loopback */
  assert_true(px_target_is_local("unix:/tmp/paramex.sock"));
  /* documentation addresses (checked not to be this host's: VMs do use them) */
  static const char* const remote[][2] = {
      {"192.0.2.1", "192.0.2.1:5000"},       {"2001:db8::1", "[2001:db8::1]:5000"},
      {"198.51.100.7", "198.51.100.7"},      {"192.0.2.1", "[::ffff:192.0.2.1]:5000"},
      {"192.0.2.1", "dns://127.0.0.1/192.0.2.1:5000"},
      {"203.0.113.9", "203.0.113.9:5000"},
  };
  for (size_t i = 0; i < sizeof remote / sizeof *remote; i++)
    if (!host_has_address(remote[i][0]) && px_target_is_local(remote[i][1]))
      fail_msg("%s is taken for this host", remote[i][1]);
  assert_false(px_target_is_local("dns://127.0.0.1"));
  /* what does not parse or resolve is remote (compression on) */
  assert_false(px_target_is_local(""));
  assert_false(px_target_is_local(":5000"));
  assert_false(px_target_is_local("[::1:5000"));
  assert_false(px_target_is_local("no-such-host.invalid:5000"));
  assert_false(px_target_is_local(NULL));
  /* an address of one of this host's interfaces (where it has one besides loopback) */
  struct ifaddrs* ifs = NULL;
  if (getifaddrs(&ifs) == 0) {
    for (struct ifaddrs* i = ifs; i; i = i->ifa_next) {
      if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
      const struct sockaddr_in* s4 = (const struct sockaddr_in*)(const void*)i->ifa_addr;
      if ((ntohl(s4->sin_addr.s_addr) >> 24) == 127) continue;
      char ip[INET_ADDRSTRLEN], target[64];
      assert_non_null(inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip));
      snprintf(target, sizeof target, "%s:5000", ip);
      if (!px_target_is_local(target)) fail_msg("%s (interface %s) is not local", target, i->ifa_name);
      break;
    }
    freeifaddrs(ifs);
  }
  /* ::1 only where the host has IPv6 loopback configured; the parse must accept it */
  struct addrinfo hints = {.ai_family = AF_INET6, .ai_flags = AI_NUMERICHOST};
  struct addrinfo* r = NULL;
  if (getaddrinfo("::1", NULL, &hints, &r) == 0) {
    freeaddrinfo(r);
    assert_true(px_target_is_local("[::1]:5000"));
  }
}

/* Host and port of every target form gRPC takes (shared by the locality check and the
 * TLS probe). */
static void test_target_split(void** state) {
  (void)state;
  static const struct {
    const char *target, *host, *port;
  } ok[] = {
      {"127.0.0.1:5000", "127.0.0.1", "5000"}, {"[::1]:7", "::1", "7"},
      {"ipv4:10.0.0.1:80", "10.0.0.1", "80"},  {"dns:///node-3:50051", "node-3", "50051"},
      {"dns://8.8.8.8/h:1", "h", "1"},         {"localhost", "localhost", ""},
      {"::1", "::1", ""},
  };
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    char host[64], port[16];
    if (!px_target_split(ok[i].target, host, sizeof host, port, sizeof port))
      fail_msg("'%s' refused", ok[i].target);
    assert_string_equal(host, ok[i].host);
    assert_string_equal(port, ok[i].port);
  }
  char host[8], port[4];
  assert_false(px_target_split("[::1:5", host, sizeof host, port, sizeof port)); /* no ']' */
  assert_false(px_target_split(":5", host, sizeof host, port, sizeof port));     /* no host */
  assert_false(px_target_split("a-long-host:1", host, sizeof host, port, sizeof port));
  assert_false(px_target_split("h:123456", host, sizeof host, port, sizeof port));
  assert_true(px_target_split("h:1", host, sizeof host, NULL, 0));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_target_is_local),
      cmocka_unit_test(test_target_split),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
