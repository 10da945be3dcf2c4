/* The corrupting proxy (corrupt_proxy.h). One thread polls the listening socket and every
 * connection pair; every loop is bounded by poll's timeout and the stop flag. */
#include "corrupt_proxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXCONN 16
#define MAXSTREAMS 64

/* The gRPC message in progress on one HTTP/2 stream. */
typedef struct msg_state {
  uint32_t stream; /* 0: free */
  uint8_t prefix[5];
  unsigned prefix_got;
  uint32_t len, left; /* the message's length and bytes still to come */
} msg_state;

/* The server-to-client byte stream of one connection: HTTP/2 frames. */
typedef struct conn {
  int cli, srv;
  uint8_t hdr[9];
  unsigned hdr_got;
  uint32_t frame_left; /* payload bytes of the current frame still to come */
  uint8_t type, flags;
  uint32_t stream;
  unsigned messages;   /* counted messages of >= min_len bytes */
  msg_state m[MAXSTREAMS];
} conn;

struct px_h_proxy {
  int lfd, target;
  unsigned every;
  uint32_t min_len;
  pthread_t th;
  atomic_bool stop;
  atomic_ulong corrupted;
  conn c[MAXCONN];
  int nconn;
};

static msg_state* stream_state(conn* c, uint32_t id) {
  msg_state* free_slot = NULL;
  for (int i = 0; i < MAXSTREAMS; i++) {
    if (c->m[i].stream == id) return &c->m[i];
    if (!c->m[i].stream && !free_slot) free_slot = &c->m[i];
  }
  if (free_slot) {
    memset(free_slot, 0, sizeof *free_slot);
    free_slot->stream = id;
  }
  return free_slot;
}

/* DATA payload bytes b[0..n) of stream id: tracks message boundaries and flips bytes. */
static void data_bytes(px_h_proxy* p, conn* c, uint32_t id, uint8_t* b, size_t n) {
  msg_state* m = stream_state(c, id);
  if (!m) return;
  for (size_t i = 0; i < n;) {
    if (m->left == 0 && m->prefix_got < 5) {
      m->prefix[m->prefix_got++] = b[i++];
      if (m->prefix_got == 5) {
        m->len = (uint32_t)m->prefix[1] << 24 | (uint32_t)m->prefix[2] << 16 |
                 (uint32_t)m->prefix[3] << 8 | m->prefix[4];
        m->left = m->len;
        if (m->len == 0) m->prefix_got = 0;
      }
      continue;
    }
    size_t take = n - i < m->left ? n - i : m->left;
    m->left -= (uint32_t)take;
    i += take;
    if (m->left == 0) {
      m->prefix_got = 0;
      if (m->len >= p->min_len && ++c->messages % p->every == 0) {
        b[i - 1] ^= 0x40; /* the message's last byte */
        atomic_fetch_add(&p->corrupted, 1);
      }
    }
  }
}

/* Bytes from the server, parsed as HTTP/2 frames and changed in place. */
static void server_bytes(px_h_proxy* p, conn* c, uint8_t* b, size_t n) {
  size_t i = 0;
  while (i < n) {
    if (c->frame_left == 0 && c->hdr_got < 9) {
      c->hdr[c->hdr_got++] = b[i++];
      if (c->hdr_got == 9) {
        c->frame_left = (uint32_t)c->hdr[0] << 16 | (uint32_t)c->hdr[1] << 8 | c->hdr[2];
        c->type = c->hdr[3];
        c->flags = c->hdr[4];
        c->stream = ((uint32_t)c->hdr[5] << 24 | (uint32_t)c->hdr[6] << 16 |
                     (uint32_t)c->hdr[7] << 8 | c->hdr[8]) & 0x7fffffffu;
        if (c->frame_left == 0) c->hdr_got = 0;
      }
      continue;
    }
    size_t take = n - i < c->frame_left ? n - i : c->frame_left;
    /* DATA frames without padding (gRPC does not pad) */
    if (c->type == 0 && !(c->flags & 0x8)) data_bytes(p, c, c->stream, b + i, take);
    c->frame_left -= (uint32_t)take;
    i += take;
    if (c->frame_left == 0) c->hdr_got = 0;
  }
}

static int connect_target(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr*)&a, sizeof a) != 0) {
    close(fd);
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

static bool write_all(int fd, const uint8_t* b, size_t n) {
  while (n) {
    ssize_t w = write(fd, b, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    b += w;
    n -= (size_t)w;
  }
  return true;
}

static void conn_close(conn* c) {
  if (c->cli >= 0) close(c->cli);
  if (c->srv >= 0) close(c->srv);
  memset(c, 0, sizeof *c);
  c->cli = c->srv = -1;
}

/* Moves what is readable on fd of c; false when the connection is over. */
static bool pump(px_h_proxy* p, conn* c, bool from_server) {
  uint8_t buf[65536];
  int in = from_server ? c->srv : c->cli, out = from_server ? c->cli : c->srv;
  ssize_t r = read(in, buf, sizeof buf);
  if (r < 0 && errno == EINTR) return true;
  if (r <= 0) return false;
  if (from_server) server_bytes(p, c, buf, (size_t)r);
  return write_all(out, buf, (size_t)r);
}

static void accept_one(px_h_proxy* p) {
  int cfd = accept(p->lfd, NULL, NULL);
  if (cfd < 0) return;
  int sfd = connect_target(p->target);
  int slot = -1;
  for (int i = 0; i < MAXCONN; i++)
    if (p->c[i].cli < 0) {
      slot = i;
      break;
    }
  if (sfd < 0 || slot < 0) {
    close(cfd);
    if (sfd >= 0) close(sfd);
    return;
  }
  int one = 1;
  setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  conn* c = &p->c[slot];
  memset(c, 0, sizeof *c);
  c->cli = cfd;
  c->srv = sfd;
}

static void* proxy_main(void* arg) {
  px_h_proxy* p = arg;
  while (!atomic_load(&p->stop)) {
    struct pollfd fds[1 + 2 * MAXCONN];
    int idx[1 + 2 * MAXCONN];
    int n = 0;
    fds[n] = (struct pollfd){p->lfd, POLLIN, 0};
    idx[n++] = -1;
    for (int i = 0; i < MAXCONN; i++) {
      if (p->c[i].cli < 0) continue;
      fds[n] = (struct pollfd){p->c[i].cli, POLLIN, 0};
      idx[n++] = 2 * i;
      fds[n] = (struct pollfd){p->c[i].srv, POLLIN, 0};
      idx[n++] = 2 * i + 1;
    }
    if (poll(fds, (nfds_t)n, 100) <= 0) continue;
    for (int k = 0; k < n; k++) {
      if (!(fds[k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      if (idx[k] < 0) {
        accept_one(p);
        continue;
      }
      conn* c = &p->c[idx[k] / 2];
      if (c->cli >= 0 && !pump(p, c, idx[k] % 2 == 1)) conn_close(c);
    }
  }
  return NULL;
}

px_h_proxy* px_h_proxy_start(int target_port, unsigned every, uint32_t min_len, int* port) {
  px_h_proxy* p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->target = target_port;
  p->every = every ? every : 1;
  p->min_len = min_len;
  for (int i = 0; i < MAXCONN; i++) p->c[i].cli = p->c[i].srv = -1;
  p->lfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t al = sizeof a;
  if (p->lfd < 0 || bind(p->lfd, (struct sockaddr*)&a, sizeof a) != 0 || listen(p->lfd, 16) != 0 ||
      getsockname(p->lfd, (struct sockaddr*)&a, &al) != 0 ||
      pthread_create(&p->th, NULL, proxy_main, p) != 0) {
    if (p->lfd >= 0) close(p->lfd);
    free(p);
    return NULL;
  }
  *port = ntohs(a.sin_port);
  return p;
}

uint64_t px_h_proxy_corrupted(px_h_proxy* p) { return atomic_load(&p->corrupted); }

void px_h_proxy_stop(px_h_proxy* p) {
  if (!p) return;
  atomic_store(&p->stop, true);
  pthread_join(p->th, NULL);
  for (int i = 0; i < MAXCONN; i++)
    if (p->c[i].cli >= 0) conn_close(&p->c[i]);
  close(p->lfd);
  free(p);
}
