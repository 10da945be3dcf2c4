/* Training helpers of the integration tests; see train.h. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "train.h"

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "harness.h"
#include "model.h"

size_t it_numel(const it_train* j, int t) {
  return t == 0 ? (size_t)j->a_numel : (size_t)PX_IT_B_ROWS * PX_IT_B_COLS;
}

pid_t it_worker_start(const it_train* j, uint32_t rank, int stdout_fd, int stderr_fd,
                      const char* const* more) {
  char rank_s[16], world_s[16], steps_s[24], numel_s[24], tmo_s[24], conn_s[24], out[600];
  snprintf(rank_s, sizeof rank_s, "%" PRIu32, rank);
  snprintf(world_s, sizeof world_s, "%" PRIu32, j->world);
  snprintf(steps_s, sizeof steps_s, "%" PRIu64, j->steps);
  snprintf(numel_s, sizeof numel_s, "%" PRIu64, j->a_numel);
  snprintf(tmo_s, sizeof tmo_s, "%" PRId64, j->timeout_ms > 0 ? j->timeout_ms : 30000);
  snprintf(conn_s, sizeof conn_s, "%" PRId64, j->connect_ms);
  snprintf(out, sizeof out, "%s/params.%" PRIu32, j->dir, rank);
  const char* argv[40] = {px_h_worker_bin(), "--server", j->addr, "--rank", rank_s,
                          "--world", world_s, "--steps", steps_s, "--out", out,
                          "--a-numel", numel_s, "--timeout-ms", tmo_s};
  size_t n = 15;
  if (j->connect_ms > 0) {
    argv[n++] = "--connect-timeout-ms";
    argv[n++] = conn_s;
  }
  if (j->resync) argv[n++] = "--resync";
  for (const char* const* m = more; m && *m && n < 39; m++) argv[n++] = *m;
  argv[n] = NULL;
  pid_t pid = px_h_spawn(argv, j->env, stdout_fd, stderr_fd);
  CHECK(pid > 0, "cannot start worker %" PRIu32, rank);
  return pid;
}

void it_worker_expect_ok(pid_t pid, uint32_t rank, int ms) {
  int ws = 0;
  CHECK(px_h_wait(pid, ms, &ws) == 0, "worker %" PRIu32 " did not finish within %d ms", rank, ms);
  char d[96];
  CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "worker %" PRIu32 " %s (its stderr is above)", rank,
        px_h_describe_wstatus(ws, d, sizeof d));
}

void it_train_run(const it_train* j, int ms) {
  pid_t pids[64];
  CHECK(j->world <= 64, "world too large");
  for (uint32_t r = 0; r < j->world; r++) pids[r] = it_worker_start(j, r, -1, -1, NULL);
  int64_t deadline = px_h_now_ms() + ms;
  for (uint32_t r = 0; r < j->world; r++) {
    int64_t left = deadline - px_h_now_ms();
    it_worker_expect_ok(pids[r], r, left > 0 ? (int)left : 0);
  }
}

void it_check_bits(const char* what, const void* got_v, const float* want, size_t n) {
  if (memcmp(got_v, want, n * sizeof(float)) == 0) return;
  const uint8_t* got = got_v;
  for (size_t i = 0; i < n; i++) {
    uint32_t x, y;
    float gx;
    memcpy(&x, got + i * 4, 4);
    memcpy(&y, &want[i], 4);
    memcpy(&gx, &x, 4);
    CHECK(x == y, "%s: element %zu of %zu is %.9g (0x%08x), want %.9g (0x%08x)", what, i, n,
          (double)gx, x, (double)want[i], y);
  }
}

float* it_reference(const it_train* j, const it_sgd* sgd, int t, uint64_t steps, float** mom) {
  size_t n = it_numel(j, t);
  float* p = malloc(n * sizeof *p);
  float* m = mom ? malloc(n * sizeof *m) : NULL;
  CHECK(p && (!mom || m), "out of memory");
  CHECK(px_it_reference(t, n, j->world, steps, sgd->lr, sgd->momentum, sgd->weight_decay, p, m) == 0,
        "reference failed");
  if (mom) *mom = m;
  return p;
}

void it_train_check(const it_train* j, const it_sgd* sgd) {
  float* ref[PX_IT_NTENSORS];
  size_t total = 0;
  for (int t = 0; t < PX_IT_NTENSORS; t++) {
    ref[t] = it_reference(j, sgd, t, j->steps, NULL);
    total += it_numel(j, t);
  }
  for (uint32_t r = 0; r < j->world; r++) {
    char path[600];
    snprintf(path, sizeof path, "%s/params.%" PRIu32, j->dir, r);
    size_t len = 0;
    uint8_t* got = px_h_read_file(path, &len);
    CHECK(got != NULL, "cannot read %s", path);
    CHECK(len == total * sizeof(float), "%s has %zu bytes, want %zu", path, len, total * sizeof(float));
    size_t off = 0;
    for (int t = 0; t < PX_IT_NTENSORS; t++) {
      char what[96];
      snprintf(what, sizeof what, "worker %" PRIu32 ", tensor %s after %" PRIu64 " steps vs reference",
               r, px_it_tensor_name(t), j->steps);
      it_check_bits(what, got + off, ref[t], it_numel(j, t));
      off += it_numel(j, t) * sizeof(float);
    }
    free(got);
  }
  for (int t = 0; t < PX_IT_NTENSORS; t++) free(ref[t]);
}

static int cmp_u64(const void* a, const void* b) {
  uint64_t x = *(const uint64_t*)a, y = *(const uint64_t*)b;
  return x < y ? -1 : x > y;
}

int it_ckpt_versions(const char* dir, uint64_t* out, size_t cap) {
  DIR* d = opendir(dir);
  if (!d) return -1;
  size_t n = 0;
  struct dirent* e;
  while ((e = readdir(d)) != NULL) {
    unsigned long long v;
    int used = 0;
    if (strlen(e->d_name) != strlen("ckpt-00000000000000000000.safetensors")) continue;
    if (sscanf(e->d_name, "ckpt-%20llu.safetensors%n", &v, &used) != 1 || e->d_name[used]) continue;
    if (n < cap) out[n++] = v;
  }
  closedir(d);
  qsort(out, n, sizeof *out, cmp_u64);
  return (int)n;
}

bool it_ckpt_temp_left(const char* dir) {
  DIR* d = opendir(dir);
  if (!d) return false;
  bool found = false;
  struct dirent* e;
  while ((e = readdir(d)) != NULL)
    if (strncmp(e->d_name, ".ckpt-", 6) == 0) found = true;
  closedir(d);
  return found;
}

int it_open_out(const char* dir, const char* name) {
  char path[700];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  CHECK(fd >= 0, "cannot create %s", path);
  return fd;
}

char* it_slurp(const char* dir, const char* name) {
  char path[700];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  size_t len = 0;
  char* s = px_h_read_file(path, &len);
  if (!s) {
    s = malloc(1);
    CHECK(s, "out of memory");
    len = 0;
  }
  s[len] = 0;
  return s;
}

size_t it_count(const char* hay, const char* needle) {
  size_t n = 0, k = strlen(needle);
  for (const char* p = hay; k && (p = strstr(p, needle)) != NULL; p += k) n++;
  return n;
}

uint64_t it_wait_step(int fd, char* acc, size_t cap, uint64_t target, const char* who, int ms) {
  int64_t deadline = px_h_now_ms() + ms;
  for (;;) {
    char line[128];
    int64_t left = deadline - px_h_now_ms();
    CHECK(px_h_read_line_prefix(fd, "step ", acc, cap, line, sizeof line,
                                left > 0 ? (int)left : 0) == 0,
          "%s did not report step %" PRIu64 " within %d ms (it ended or hangs)", who, target, ms);
    uint64_t s = strtoull(line + 5, NULL, 10);
    if (s >= target) return s;
  }
}

long it_resyncs_of(const char* out) {
  const char* p = strstr(out, "resyncs ");
  return p ? strtol(p + 8, NULL, 10) : -1;
}

void it_seed_rng(uint64_t* state) {
  const char* s = getenv("PMX_IT_SEED");
  if (s && *s) {
    *state = strtoull(s, NULL, 10);
  } else {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    *state = ((uint64_t)ts.tv_sec * 1000003u) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 20);
  }
  if (*state == 0) *state = 1;
  fprintf(stderr, "# seed %" PRIu64 " (PMX_IT_SEED=%" PRIu64 " repeats these moments)\n", *state,
          *state);
}

uint64_t it_rnd_between(uint64_t* state, uint64_t lo, uint64_t hi) {
  uint64_t x = *state; /* xorshift64* */
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *state = x;
  return lo + (x * 2685821657736338717ull) % (hi - lo + 1);
}
