/* paramex-baseline-tcp: the round trip of a plain TCP ping-pong on loopback between two
 * processes (TCP_NODELAY, blocking read/write), the floor under any request/response
 * here: what the kernel's wake-ups and socket copies cost before gRPC, HTTP/2 or paramex
 * add anything. The child echoes each message; the parent times `rounds` round trips.
 *   paramex-baseline-tcp [--bytes N] [--rounds R]      (defaults 4100, 5000)
 * One JSON line: {"bytes": N, "rounds": R, "p50_us": .., "p90_us": ..}. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int cmp_double(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

/* Reads exactly n bytes; 0, or -1 at end of stream or on error. */
static int read_full(int fd, char* buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, buf + got, n - got);
    if (r <= 0) return -1;
    got += (size_t)r;
  }
  return 0;
}

static int write_full(int fd, const char* buf, size_t n) {
  size_t put = 0;
  while (put < n) {
    ssize_t r = write(fd, buf + put, n - put);
    if (r <= 0) return -1;
    put += (size_t)r;
  }
  return 0;
}

int main(int argc, char** argv) {
  size_t bytes = 4100;
  int rounds = 5000;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--bytes")) bytes = strtoul(argv[i + 1], NULL, 10);
    else if (!strcmp(argv[i], "--rounds")) rounds = atoi(argv[i + 1]);
    else {
      fprintf(stderr, "paramex-baseline-tcp: unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  if (bytes == 0 || bytes > (64u << 20) || rounds < 1) {
    fprintf(stderr, "usage: paramex-baseline-tcp [--bytes 1..64M] [--rounds R>=1]\n");
    return 2;
  }
  const int one = 1;
  int l = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t al = sizeof a;
  if (l < 0 || bind(l, (struct sockaddr*)&a, sizeof a) != 0 || listen(l, 1) != 0 ||
      getsockname(l, (struct sockaddr*)&a, &al) != 0) {
    perror("paramex-baseline-tcp: listen on 127.0.0.1");
    return 1;
  }
  char* buf = calloc(1, bytes);
  double* ts = malloc((size_t)rounds * sizeof *ts);
  if (!buf || !ts) {
    fprintf(stderr, "paramex-baseline-tcp: out of memory\n");
    return 1;
  }
  pid_t child = fork();
  if (child < 0) {
    perror("paramex-baseline-tcp: fork");
    return 1;
  }
  if (child == 0) {
    int c = accept(l, NULL, NULL);
    if (c < 0) _exit(1);
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    while (read_full(c, buf, bytes) == 0 && write_full(c, buf, bytes) == 0) {
    }
    _exit(0);
  }
  close(l);
  int c = socket(AF_INET, SOCK_STREAM, 0);
  if (c < 0 || connect(c, (struct sockaddr*)&a, sizeof a) != 0) {
    perror("paramex-baseline-tcp: connect");
    kill(child, SIGKILL);
    return 1;
  }
  setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  for (int i = 0; i < rounds; i++) {
    double t0 = now_s();
    if (write_full(c, buf, bytes) != 0 || read_full(c, buf, bytes) != 0) {
      fprintf(stderr, "paramex-baseline-tcp: the echo process went away\n");
      kill(child, SIGKILL);
      return 1;
    }
    ts[i] = now_s() - t0;
  }
  close(c);
  waitpid(child, NULL, 0);
  qsort(ts, (size_t)rounds, sizeof *ts, cmp_double);
  printf("{\"bytes\": %zu, \"rounds\": %d, \"p50_us\": %.1f, \"p90_us\": %.1f}\n", bytes, rounds,
         ts[rounds / 2] * 1e6, ts[(size_t)rounds * 9 / 10] * 1e6);
  free(buf);
  free(ts);
  return 0;
}
