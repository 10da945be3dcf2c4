/* Whether a gRPC target names this host: decides the client's default pull compression
 * (a loopback or same-host transfer runs at memory speed, where zstd only costs time). */
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include "util.h"

static bool sockaddr_is_loopback(const struct sockaddr* sa) {
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in* s4 = (const struct sockaddr_in*)(const void*)sa;
    return (ntohl(s4->sin_addr.s_addr) >> 24) == 127;
  }
  if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6* s6 = (const struct sockaddr_in6*)(const void*)sa;
    if (IN6_IS_ADDR_LOOPBACK(&s6->sin6_addr)) return true;
    /* ::ffff:127.x.y.z */
    return IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr) && s6->sin6_addr.s6_addr[12] == 127;
  }
  return false;
}

static bool sockaddr_same_host(const struct sockaddr* a, const struct sockaddr* b) {
  if (a->sa_family != b->sa_family) return false;
  if (a->sa_family == AF_INET)
    return ((const struct sockaddr_in*)(const void*)a)->sin_addr.s_addr ==
           ((const struct sockaddr_in*)(const void*)b)->sin_addr.s_addr;
  if (a->sa_family == AF_INET6)
    return memcmp(&((const struct sockaddr_in6*)(const void*)a)->sin6_addr,
                  &((const struct sockaddr_in6*)(const void*)b)->sin6_addr,
                  sizeof(struct in6_addr)) == 0;
  return false;
}

/* Host part of "HOST:PORT", "[V6]:PORT", "dns:///HOST:PORT", "ipv4:A:PORT"; false when
 * it does not fit. */
static bool target_host(const char* target, char* host, size_t cap) {
  static const char* const prefixes[] = {"dns:///", "dns:", "ipv4:", "ipv6:"};
  for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++) {
    size_t n = strlen(prefixes[i]);
    if (strncmp(target, prefixes[i], n) == 0) {
      target += n;
      break;
    }
  }
  const char* end;
  if (*target == '[') {
    target++;
    end = strchr(target, ']');
    if (!end) return false;
  } else {
    end = strrchr(target, ':');
    if (!end || strchr(target, ':') != end) end = target + strlen(target); /* bare v6/host */
  }
  size_t len = (size_t)(end - target);
  if (len == 0 || len >= cap) return false;
  memcpy(host, target, len);
  host[len] = '\0';
  return true;
}

bool pmx_target_is_local(const char* target) {
  if (!target) return false;
  if (strncmp(target, "unix:", 5) == 0 || strncmp(target, "unix-abstract:", 14) == 0) return true;
  char host[256];
  if (!target_host(target, host, sizeof host)) return false;
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  struct addrinfo* res = NULL;
  if (getaddrinfo(host, NULL, &hints, &res) != 0 || !res) return false;
  struct ifaddrs* ifs = NULL;
  bool have_ifs = getifaddrs(&ifs) == 0;
  bool local = true; /* every address the name resolves to must be this host's */
  for (struct addrinfo* r = res; r && local; r = r->ai_next) {
    bool mine = sockaddr_is_loopback(r->ai_addr);
    for (struct ifaddrs* i = have_ifs ? ifs : NULL; i && !mine; i = i->ifa_next)
      mine = i->ifa_addr && sockaddr_same_host(r->ai_addr, i->ifa_addr);
    local = mine;
  }
  if (have_ifs) freeifaddrs(ifs);
  freeaddrinfo(res);
  return local;
}
