/* Whether a gRPC target names this host: decides the client's default pull compression
 * (a loopback or same-host transfer runs at memory speed, where zstd only costs time). */
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include "util/net.h"

/* An IPv4 address (network order) in a or in its IPv4-mapped IPv6 form; false otherwise. */
static bool as_ipv4(const struct sockaddr* sa, uint32_t* v4) {
  if (sa->sa_family == AF_INET) {
    *v4 = ((const struct sockaddr_in*)(const void*)sa)->sin_addr.s_addr;
    return true;
  }
  if (sa->sa_family == AF_INET6) {
    const struct in6_addr* a = &((const struct sockaddr_in6*)(const void*)sa)->sin6_addr;
    if (!IN6_IS_ADDR_V4MAPPED(a)) return false;
    memcpy(v4, &a->s6_addr[12], 4);
    return true;
  }
  return false;
}

/* Loopback, or the unspecified address (a connection to 0.0.0.0 or :: reaches this host). */
static bool sockaddr_is_this_host(const struct sockaddr* sa) {
  uint32_t v4;
  if (as_ipv4(sa, &v4)) return (ntohl(v4) >> 24) == 127 || v4 == 0;
  if (sa->sa_family == AF_INET6) {
    const struct in6_addr* a = &((const struct sockaddr_in6*)(const void*)sa)->sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(a) || IN6_IS_ADDR_UNSPECIFIED(a);
  }
  return false;
}

static bool sockaddr_same_host(const struct sockaddr* a, const struct sockaddr* b) {
  uint32_t x, y;
  if (as_ipv4(a, &x) && as_ipv4(b, &y)) return x == y;
  if (a->sa_family == AF_INET6 && b->sa_family == AF_INET6)
    return memcmp(&((const struct sockaddr_in6*)(const void*)a)->sin6_addr,
                  &((const struct sockaddr_in6*)(const void*)b)->sin6_addr,
                  sizeof(struct in6_addr)) == 0;
  return false;
}

bool px_target_split(const char* target, char* host, size_t cap, char* port, size_t pcap) {
  static const char* const prefixes[] = {"dns:", "ipv4:", "ipv6:"};
  for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++) {
    size_t n = strlen(prefixes[i]);
    if (strncmp(target, prefixes[i], n) == 0) {
      target += n;
      break;
    }
  }
  if (strncmp(target, "//", 2) == 0) { /* an authority (the DNS server), then /HOST:PORT */
    const char* slash = strchr(target + 2, '/');
    if (!slash) return false;
    target = slash + 1;
  }
  const char* end;
  const char* rest; /* after the host: ":PORT" or "" */
  if (*target == '[') {
    target++;
    end = strchr(target, ']');
    if (!end) return false;
    rest = end + 1;
  } else {
    end = strrchr(target, ':');
    if (!end || strchr(target, ':') != end) end = target + strlen(target); /* bare v6/host */
    rest = end;
  }
  size_t len = (size_t)(end - target);
  if (len == 0 || len >= cap) return false;
  memcpy(host, target, len);
  host[len] = '\0';
  if (port) {
    const char* p = *rest == ':' ? rest + 1 : rest;
    if (strlen(p) >= pcap) return false;
    memcpy(port, p, strlen(p) + 1);
  }
  return true;
}

bool px_target_is_local(const char* target) {
  if (!target) return false;
  if (strncmp(target, "unix:", 5) == 0 || strncmp(target, "unix-abstract:", 14) == 0) return true;
  char host[256];
  if (!px_target_split(target, host, sizeof host, NULL, 0)) return false;
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  struct addrinfo* res = NULL;
  if (getaddrinfo(host, NULL, &hints, &res) != 0 || !res) return false;
  struct ifaddrs* ifs = NULL;
  bool have_ifs = getifaddrs(&ifs) == 0;
  bool local = true; /* every address the name resolves to must be this host's */
  for (struct addrinfo* r = res; r && local; r = r->ai_next) {
    bool mine = sockaddr_is_this_host(r->ai_addr);
    for (struct ifaddrs* i = have_ifs ? ifs : NULL; i && !mine; i = i->ifa_next)
      mine = i->ifa_addr && sockaddr_same_host(r->ai_addr, i->ifa_addr);
    local = mine;
  }
  if (have_ifs) freeifaddrs(ifs);
  freeaddrinfo(res);
  return local;
}
