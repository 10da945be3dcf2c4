/* Resumption without recovery code in the application: paramex-train-demo (the shipped
 * example; its loop is pmx_push_pull + pmx_resume) trains with 4 workers while the server
 * is SIGKILLed 12 times and restarted on the same port and checkpoint directory:
 *  - once before its first checkpoint (it restarts with nothing: the workers declare
 *    again and start over from step 0),
 *  - at moments when a checkpoint is being written (an inotify event on the temporary
 *    file's creation triggers the kill; at least one kill must leave the temporary file
 *    behind, i.e. land mid-write),
 *  - at random steps, some of whose restarts are themselves killed during start-up
 *    (before the server listens: while it restores its checkpoint).
 * Every worker must resume after the kills and end with parameters whose XXH64 (the
 * demo's "final params" line) equals that of a fault-free run of the same job, and the
 * same test accuracy. The moments come from a seeded generator: the seed is printed and
 * PMX_IT_SEED=N repeats a run. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "harness.h"
#include "rpc/rpc_client.h"
#include "train.h"

#define WORLD 4
#define STEPS 480
#define KILLS 12
#define SERVER_START_MS 20000
#define SERVER_STOP_MS 30000
#define PROGRESS_MS 60000
#define JOB_MS 240000

static char g_dir[512];
static uint64_t g_rng;

static uint64_t rnd_between(uint64_t lo, uint64_t hi) { return it_rnd_between(&g_rng, lo, hi); }

static const char* demo_bin(void) {
  const char* b = getenv("PMX_DEMO_BIN");
  CHECK(b && *b, "PMX_DEMO_BIN is not set (run through meson test)");
  return b;
}

/* The server on listen (NULL: an ephemeral port), its stderr appended to DIR/log. */
static void start_server(px_h_server* srv, const char* listen, const char* const* args,
                         const char* log) {
  char path[700], err[512];
  snprintf(path, sizeof path, "%s/%s", g_dir, log);
  int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  CHECK(fd >= 0, "cannot open %s", path);
  int rc = px_h_server_start_ex(srv, listen, args, NULL, fd, SERVER_START_MS, err, sizeof err);
  close(fd);
  CHECK(rc == 0, "server start: %s (its log: %s)", err, path);
}

static void stop_server_ok(px_h_server* srv) {
  int ws = 0;
  CHECK(px_h_server_stop(srv, SERVER_STOP_MS, &ws, NULL) == 0, "server did not exit on SIGTERM");
  char d[96];
  CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "server %s after SIGTERM",
        px_h_describe_wstatus(ws, d, sizeof d));
}

/* Starts the demo's worker rank against addr; stdout to out_fd. */
static pid_t start_worker(const char* addr, uint32_t rank, int out_fd, int err_fd) {
  char r[16], w[16], s[16];
  snprintf(r, sizeof r, "%" PRIu32, rank);
  snprintf(w, sizeof w, "%d", WORLD);
  snprintf(s, sizeof s, "%d", STEPS);
  const char* argv[] = {demo_bin(), "--server", addr, "--rank", r, "--world", w, "--steps", s, NULL};
  pid_t pid = px_h_spawn(argv, NULL, out_fd, err_fd);
  CHECK(pid > 0, "cannot start %s", demo_bin());
  return pid;
}

/* Waits for the server to create a checkpoint's temporary file in dir (watch: an inotify
 * descriptor on dir), then SIGKILLs it at once. */
static void kill_at_checkpoint_write(int watch, pid_t server) {
  int64_t deadline = px_h_now_ms() + PROGRESS_MS;
  for (;;) {
    int64_t left = deadline - px_h_now_ms();
    CHECK(left > 0, "no checkpoint write began within %d ms", PROGRESS_MS);
    struct pollfd p = {.fd = watch, .events = POLLIN};
    int n = poll(&p, 1, (int)left);
    CHECK(n >= 0 || errno == EINTR, "poll: %s", strerror(errno));
    if (n <= 0) continue;
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    ssize_t len = read(watch, buf, sizeof buf);
    CHECK(len > 0 || errno == EAGAIN, "inotify read: %s", strerror(errno));
    for (ssize_t off = 0; off < len;) {
      const struct inotify_event* e = (const struct inotify_event*)(buf + off);
      if (e->len && strncmp(e->name, ".ckpt-", 6) == 0) {
        px_h_kill(server);
        return;
      }
      off += (ssize_t)(sizeof *e + e->len);
    }
  }
}

/* Drops the inotify events that piled up. */
static void drain_events(int watch) {
  char buf[4096];
  while (read(watch, buf, sizeof buf) > 0) {
  }
}

/* The value after "final params xxh64=" and "final test accuracy " in a worker's output. */
static void final_of(const char* out, char* hash, size_t hcap, char* acc, size_t acap) {
  const char* h = strstr(out, "final params xxh64=");
  const char* a = strstr(out, "final test accuracy ");
  CHECK(h && a, "no final lines in the worker's output: %.400s",
        strlen(out) > 400 ? out + strlen(out) - 400 : out);
  snprintf(hash, hcap, "%.16s", h + strlen("final params xxh64="));
  snprintf(acc, acap, "%.5s", a + strlen("final test accuracy "));
}

/* Starts the WORLD workers against addr: rank r's stdout into DIR/PREFIX-r.out, except
 * rank 0's into rank0_fd when it is not -1 (a pipe the test reads progress from); with
 * errs, stderr into DIR/PREFIX-r.err. */
static void start_workers(const char* addr, const char* prefix, int rank0_fd, bool errs,
                          pid_t* pids) {
  for (uint32_t r = 0; r < WORLD; r++) {
    char name[64];
    snprintf(name, sizeof name, "%s-%" PRIu32 ".out", prefix, r);
    int fd = r == 0 && rank0_fd >= 0 ? rank0_fd : it_open_out(g_dir, name);
    snprintf(name, sizeof name, "%s-%" PRIu32 ".err", prefix, r);
    int efd = errs ? it_open_out(g_dir, name) : -1;
    pids[r] = start_worker(addr, r, fd, efd);
    close(fd);
    if (efd >= 0) close(efd);
  }
}

/* The whole stdout of worker r after it exited (malloc'd): DIR/PREFIX-r.out, or for rank 0
 * when rank0_fd is not -1, what acc holds of its pipe plus the rest of the pipe. */
static char* worker_output(uint32_t r, const char* prefix, int rank0_fd, const char* acc) {
  if (r != 0 || rank0_fd < 0) {
    char name[64];
    snprintf(name, sizeof name, "%s-%" PRIu32 ".out", prefix, r);
    return it_slurp(g_dir, name);
  }
  char* o = calloc(1, 1 << 20);
  CHECK(o, "out of memory");
  size_t n = strlen(acc);
  memcpy(o, acc, n + 1);
  px_h_read_all(rank0_fd, o + n, (1 << 20) - n, 5000);
  return o;
}

/* A fault-free run: the reference hash and accuracy. */
static void reference_run(char* hash, size_t hcap, char* acc, size_t acap) {
  const char* args[] = {"--workers", "4", NULL};
  px_h_server srv;
  start_server(&srv, NULL, args, "ref-server.log");
  pid_t pids[WORLD];
  start_workers(srv.addr, "ref", -1, false, pids);
  for (uint32_t r = 0; r < WORLD; r++) it_worker_expect_ok(pids[r], r, JOB_MS);
  for (uint32_t r = 0; r < WORLD; r++) {
    char h[32], a[16];
    char* o = worker_output(r, "ref", -1, "");
    final_of(o, h, sizeof h, a, sizeof a);
    free(o);
    if (r == 0) {
      snprintf(hash, hcap, "%s", h);
      snprintf(acc, acap, "%s", a);
    }
    CHECK(strcmp(h, hash) == 0, "fault-free run: rank %" PRIu32 " ends with %s, rank 0 %s", r, h, hash);
  }
  stop_server_ok(&srv);
}

/* Spawns the server on listen and SIGKILLs it during start-up, before its listening line
 * (it restores its checkpoint then). Returns whether it was killed before listening. */
static bool kill_during_startup(const char* listen, const char* const* args) {
  const char* argv[32];
  size_t n = 0;
  argv[n++] = px_h_server_bin();
  argv[n++] = "--listen";
  argv[n++] = listen;
  for (size_t i = 0; args[i] && n < 30; i++) argv[n++] = args[i];
  argv[n] = NULL;
  int pfd[2];
  CHECK(pipe2(pfd, O_CLOEXEC) == 0, "pipe");
  char path[700];
  snprintf(path, sizeof path, "%s/resume-server.log", g_dir);
  int efd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  CHECK(efd >= 0, "cannot open %s", path);
  pid_t pid = px_h_spawn(argv, NULL, pfd[1], efd);
  close(pfd[1]);
  close(efd);
  CHECK(pid > 0, "cannot start the server");
  /* a random moment within its first milliseconds (it takes tens to listen) */
  struct pollfd p = {.fd = pfd[0], .events = POLLIN};
  int ready = poll(&p, 1, (int)rnd_between(0, 4));
  px_h_kill(pid);
  close(pfd[0]);
  return ready == 0;
}

static void test_demo_survives_server_kills(void** state) {
  (void)state;
  char ref_hash[32], ref_acc[16];
  reference_run(ref_hash, sizeof ref_hash, ref_acc, sizeof ref_acc);

  char ckdir[600], listen[64];
  snprintf(ckdir, sizeof ckdir, "%s/ckpt", g_dir);
  CHECK(mkdir(ckdir, 0755) == 0, "mkdir %s", ckdir);
  int watch = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  CHECK(watch >= 0 && inotify_add_watch(watch, ckdir, IN_CREATE) >= 0, "inotify: %s",
        strerror(errno));
  /* First life: no checkpoint will be written (its kill restarts the job from nothing). */
  const char* first[] = {"--workers", "4", "--checkpoint-dir", ckdir, "--checkpoint-every", "1000000", NULL};
  const char* args[] = {"--workers", "4", "--checkpoint-dir", ckdir, "--checkpoint-every", "3",
                        "--keep", "2", NULL};
  px_h_server srv;
  start_server(&srv, NULL, first, "resume-server.log");
  snprintf(listen, sizeof listen, "127.0.0.1:%d", srv.port);

  int pfd[2];
  CHECK(pipe2(pfd, O_CLOEXEC) == 0, "pipe");
  pid_t pids[WORLD];
  start_workers(srv.addr, "worker", pfd[1], true, pids);
  char acc[8192] = "";
  int mid_write = 0, write_kills = 0, startup_kills = 0;
  uint64_t target = 0;
  const int64_t t0 = px_h_now_ms();
  for (int k = 0; k < KILLS; k++) {
    const char* kind;
    bool write_kill = k > 0 && k % 3 == 1;
    if (write_kill) {
      drain_events(watch);
      kill_at_checkpoint_write(watch, srv.pid);
      write_kills++;
      kind = "at a checkpoint write";
      if (it_ckpt_temp_left(ckdir)) {
        mid_write++;
        kind = "mid checkpoint write";
      }
    } else {
      /* a random step ahead of the last target (steps go back after each restart) */
      target += rnd_between(5, (STEPS - 60) / KILLS);
      it_wait_step(pfd[0], acc, sizeof acc, target, "rank 0", PROGRESS_MS);
      px_h_kill(srv.pid);
      kind = k == 0 ? "before the first checkpoint" : "at a random step";
    }
    close(srv.out_fd);
    uint64_t vs[8];
    int nck = it_ckpt_versions(ckdir, vs, 8);
    CHECK(k > 0 || nck == 0, "a checkpoint was written in the first life");
    bool startup = k % 3 == 2;
    if (startup && kill_during_startup(listen, args)) startup_kills++;
    start_server(&srv, listen, args, "resume-server.log");
    fprintf(stderr, "# kill %d of %d %s%s; restarted from %s\n", k + 1, KILLS, kind,
            startup ? " (and its restart killed during start-up)" : "",
            nck ? "the newest checkpoint" : "nothing");
  }
  for (uint32_t r = 0; r < WORLD; r++) it_worker_expect_ok(pids[r], r, JOB_MS);
  const int64_t t_job = px_h_now_ms() - t0;
  close(watch);
  for (uint32_t r = 0; r < WORLD; r++) {
    char h[32], a[16];
    char* o = worker_output(r, "worker", pfd[0], acc);
    final_of(o, h, sizeof h, a, sizeof a);
    const char* res = strstr(o, "resumed ");
    CHECK(res, "rank %" PRIu32 " never resumed", r);
    CHECK(strcmp(h, ref_hash) == 0 && strcmp(a, ref_acc) == 0,
          "rank %" PRIu32 " ends with params %s (accuracy %s); the fault-free run %s (%s)", r, h,
          a, ref_hash, ref_acc);
    fprintf(stderr, "# rank %" PRIu32 ": %.60s\n", r, res);
    free(o);
  }
  close(pfd[0]);
  CHECK(mid_write >= 1, "none of %d kills at a checkpoint write landed mid-write", write_kills);
  stop_server_ok(&srv);
  fprintf(stderr, "# %d server kills (%d of %d at a checkpoint write landed mid-write, %d restarts "
                  "killed during start-up): %d workers x %d steps in %" PRId64
                  " ms, final params %s as without faults\n",
          KILLS, mid_write, write_kills, startup_kills, WORLD, STEPS, t_job, ref_hash);
}

/* SIGTERM then restart, many times: the drain ends the calls in flight with a status the
 * library retries (UNAVAILABLE; CANCELLED is retried too), the final checkpoint holds the
 * version reached, and every worker resumes and ends with the fault-free parameters (6 of
 * 41 such cycles once ended a worker with CANCELLED). */
#define TERMS 15

static void test_demo_survives_sigterm_restarts(void** state) {
  (void)state;
  char ref_hash[32], ref_acc[16];
  reference_run(ref_hash, sizeof ref_hash, ref_acc, sizeof ref_acc);
  char ckdir[600], listen[64];
  snprintf(ckdir, sizeof ckdir, "%s/ckpt-term", g_dir);
  CHECK(mkdir(ckdir, 0755) == 0, "mkdir %s", ckdir);
  const char* args[] = {"--workers", "4", "--checkpoint-dir", ckdir, "--checkpoint-every", "50",
                        "--keep", "2", NULL};
  px_h_server srv;
  start_server(&srv, NULL, args, "term-server.log");
  snprintf(listen, sizeof listen, "127.0.0.1:%d", srv.port);
  int pfd[2];
  CHECK(pipe2(pfd, O_CLOEXEC) == 0, "pipe");
  pid_t pids[WORLD];
  start_workers(srv.addr, "term", pfd[1], false, pids);
  char acc[8192] = "";
  uint64_t target = 0;
  for (int k = 0; k < TERMS; k++) {
    target += rnd_between(3, (STEPS - 60) / TERMS);
    it_wait_step(pfd[0], acc, sizeof acc, target, "rank 0", PROGRESS_MS);
    stop_server_ok(&srv);
    start_server(&srv, listen, args, "term-server.log");
  }
  for (uint32_t r = 0; r < WORLD; r++) it_worker_expect_ok(pids[r], r, JOB_MS);
  for (uint32_t r = 0; r < WORLD; r++) {
    char h[32], a[16];
    char* o = worker_output(r, "term", pfd[0], acc);
    final_of(o, h, sizeof h, a, sizeof a);
    CHECK(strcmp(h, ref_hash) == 0, "rank %" PRIu32 " ends with params %s; the fault-free run %s", r,
          h, ref_hash);
    free(o);
  }
  close(pfd[0]);
  stop_server_ok(&srv);
  fprintf(stderr, "# %d SIGTERM + restart cycles: every worker ended with %s, as without them\n",
          TERMS, ref_hash);
}

static int teardown(void** state) {
  (void)state;
  px_h_kill_all();
  return 0;
}

static int group_setup(void** state) {
  (void)state;
  px_rpc_init();
  it_seed_rng(&g_rng);
  return px_h_mkdtemp(g_dir, sizeof g_dir);
}

static int group_teardown(void** state) {
  (void)state;
  px_h_kill_all();
  px_h_rmtree(g_dir);
  px_rpc_shutdown();
  return 0;
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_demo_survives_server_kills, teardown),
      cmocka_unit_test_teardown(test_demo_survives_sigterm_restarts, teardown),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
