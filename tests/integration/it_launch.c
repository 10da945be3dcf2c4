/* paramex-launch, local and mpi backends (issue 14): the demo over 2 shards and 4 workers
 * ends with the parameters of the same run over 1 shard (every worker's checksum), on
 * this machine and as one mpirun MPMD job; each output line carries its process's
 * prefix; a worker that fails makes the launcher stop the others and exit with its
 * status, naming it; a port in use, a shard that never serves, too few mpirun slots and
 * usage errors each get one clear line and their exit status; after every launch nothing
 * it started is left running (the launcher and the server run under this test's own
 * paths, so the process list shows ours alone). The slurm backend: slurm/it_slurm.sh. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define WAIT_MS 180000 /* normally a few seconds */
#define STEPS "20"

static const char* env_or_fail(const char* name) {
  const char* v = getenv(name);
  if (!v) fail_msg("%s is not set (meson sets it)", name);
  return v;
}

static char g_dir[512], g_launch[600], g_server[600];

/* Whether any process's command line mentions this test's folder (what the launcher
 * started runs under it: the links to paramex-launch and paramex-server). */
static bool ours_running(char* which, size_t cap) {
  DIR* d = opendir("/proc");
  bool found = false;
  for (struct dirent* e; d && !found && (e = readdir(d));) {
    if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
    char path[300], cmd[1024];
    snprintf(path, sizeof path, "/proc/%s/cmdline", e->d_name);
    FILE* f = fopen(path, "r");
    if (!f) continue;
    size_t n = fread(cmd, 1, sizeof cmd - 1, f);
    fclose(f);
    for (size_t i = 0; i + 1 < n; i++)
      if (cmd[i] == 0) cmd[i] = ' ';
    cmd[n] = 0;
    if (n && strstr(cmd, g_dir)) {
      snprintf(which, cap, "pid %.20s: %.1000s", e->d_name, cmd);
      found = true;
    }
  }
  if (d) closedir(d);
  return found;
}

static void assert_none_left(void) {
  char which[1400];
  int64_t until = px_h_now_ms() + 20000; /* normally gone when the launcher exits */
  while (ours_running(which, sizeof which)) {
    if (px_h_now_ms() > until) fail_msg("left running after the launcher exited: %s", which);
    usleep(20000);
  }
}

/* Runs the launcher with args to its exit; returns the exit status, its output in out. */
static int launch_with(const char* server, const char* const* args, char* out, size_t cap) {
  const char* argv[40] = {g_launch, "--server-bin", server};
  size_t k = 3;
  for (; *args && k < 39; args++) argv[k++] = *args;
  argv[k] = NULL;
  int ws = 0;
  if (px_h_run(argv, NULL, out, cap, WAIT_MS, &ws) != 0)
    fail_msg("paramex-launch did not run to its exit; its output: %s", out);
  char d[64];
  if (!WIFEXITED(ws)) fail_msg("paramex-launch %s; output: %s", px_h_describe_wstatus(ws, d, sizeof d), out);
  assert_none_left();
  return WEXITSTATUS(ws);
}

static int launch(const char* const* args, char* out, size_t cap) {
  return launch_with(g_server, args, out, cap);
}

static int setup(void** state) {
  (void)state;
  if (px_h_mkdtemp(g_dir, sizeof g_dir) != 0) return -1;
  snprintf(g_launch, sizeof g_launch, "%s/paramex-launch", g_dir);
  snprintf(g_server, sizeof g_server, "%s/paramex-server", g_dir);
  return symlink(env_or_fail("PMX_LAUNCH_BIN"), g_launch) ||
         symlink(env_or_fail("PMX_SERVER_BIN"), g_server);
}

static int teardown(void** state) {
  (void)state;
  px_h_rmtree(g_dir);
  return 0;
}

/* "[worker R] final params xxh64=H" of rank r into h; false when absent. */
static bool checksum_of(const char* out, int r, char* h, size_t cap) {
  char key[64];
  snprintf(key, sizeof key, "[worker %d] final params xxh64=", r);
  const char* p = strstr(out, key);
  if (!p) return false;
  p += strlen(key);
  snprintf(h, cap, "%.16s", p);
  return strlen(h) == 16;
}

static char g_out1[1 << 20], g_out2[1 << 20];
static char g_want[32]; /* the 1-shard run's checksum */

/* Every worker of out ended with g_want. */
static void expect_checksums(const char* what, const char* out) {
  char got[32];
  for (int r = 0; r < 4; r++)
    if (!checksum_of(out, r, got, sizeof got) || strcmp(got, g_want) != 0)
      fail_msg("%s: worker %d ends with %s, 1 shard with %s:\n%s", what, r, got, g_want, out);
}

static void test_two_shards_as_one(void** state) {
  (void)state;
  const char* demo = env_or_fail("PMX_DEMO_BIN");
  const char* one[] = {"--shards", "1", "--workers", "4", "--", demo, "--steps", STEPS, NULL};
  const char* two[] = {"--shards", "2", "--workers", "4", "--log-level", "warn", "--", demo,
                       "--steps", STEPS, NULL};
  assert_int_equal(launch(one, g_out1, sizeof g_out1), 0);
  assert_int_equal(launch(two, g_out2, sizeof g_out2), 0);
  if (!checksum_of(g_out1, 0, g_want, sizeof g_want)) fail_msg("no checksum of rank 0: %s", g_out1);
  expect_checksums("1 shard", g_out1);
  expect_checksums("2 shards", g_out2);
  /* the list the workers got, and every line prefixed */
  assert_non_null(strstr(g_out2, "[server 1] paramex-server listening on 127.0.0.1:"));
  assert_non_null(strstr(g_out2, "[launch] 2 shard(s) serving: PMX_SERVERS=127.0.0.1:"));
  for (const char* p = g_out2; *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : p + strlen(p))
    if (*p && *p != '[') fail_msg("a line without its prefix: %.80s", p);
}

/* Worker 2 exits 3 at once, the others would run 100000 steps: backend's exit status 3. */
static void failing_worker(const char* backend) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "test \"$PMX_RANK\" != 2 || exit 3; exec %s --steps 100000",
           env_or_fail("PMX_DEMO_BIN"));
  /* (--oversubscribe: mpirun's slots are this machine's 2 cores; local ignores it) */
  const char* args[] = {"--backend", backend, "--oversubscribe", "--shards", "2", "--workers",
                        "4", "--", "/bin/sh", "-c", cmd, NULL};
  assert_int_equal(launch(args, g_out1, sizeof g_out1), 3);
  assert_non_null(strstr(g_out1, "[launch] worker 2 exited 3: stopping the rest"));
  /* the others were stopped (they would run 100000 steps) and the shards drained */
  assert_null(strstr(g_out1, "final params"));
  assert_non_null(strstr(g_out1, "[server 0]"));
}

/* A job longer than any socket timeout with nothing said meanwhile (the agents' reads of
 * the launcher once timed out after 10 s and stopped their shard as if it were gone). */
static void test_quiet_job(void** state) {
  (void)state;
  const char* args[] = {"--shards", "1", "--workers", "1", "--", "/bin/sh", "-c",
                        "sleep 12; echo quiet job done", NULL};
  char out[1 << 14];
  int rc = launch(args, out, sizeof out);
  if (rc != 0 || !strstr(out, "[worker 0] quiet job done") || strstr(out, "connection ended"))
    fail_msg("a 12 s quiet job did not end cleanly (exit %d):\n%s", rc, out);
}

static void test_failing_worker(void** state) {
  (void)state;
  failing_worker("local");
}

/* One mpirun MPMD job (-np 2 agent(server) : -np 4 agent(worker)) ends like 1 shard. */
static void test_mpi(void** state) {
  (void)state;
  assert_true(g_want[0]); /* test_two_shards_as_one ran first */
  const char* args[] = {"--backend", "mpi", "--oversubscribe", "--shards", "2", "--workers",
                        "4", "--log-level", "warn", "--", env_or_fail("PMX_DEMO_BIN"),
                        "--steps", STEPS, NULL};
  assert_int_equal(launch(args, g_out2, sizeof g_out2), 0);
  expect_checksums("mpirun, 2 shards", g_out2);
  assert_non_null(strstr(g_out2, "[launch] 2 shard(s) serving: PMX_SERVERS="));
  failing_worker("mpi");
  /* fewer slots than processes: refused before mpirun starts */
  const char* few[] = {"--backend", "mpi", "--hosts", "localhost:3", "--shards", "2",
                       "--workers", "4", "--", "/bin/true", NULL};
  assert_int_equal(launch(few, g_out1, sizeof g_out1), 2);
  assert_non_null(strstr(g_out1, "--hosts gives 3 slot(s); 2 shard(s) + 4 worker(s) need 6"));
}

/* A port in use: the shard's own line, exit 2; a shard that never serves: named with its
 * last lines after --ready-timeout, exit 1; the rest stopped. */
static void test_bad_shards(void** state) {
  (void)state;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  assert_int_equal(bind(fd, (struct sockaddr*)&sa, sizeof sa), 0);
  assert_int_equal(listen(fd, 1), 0);
  socklen_t len = sizeof sa;
  assert_int_equal(getsockname(fd, (struct sockaddr*)&sa, &len), 0);
  char port[16], want[128];
  snprintf(port, sizeof port, "%d", ntohs(sa.sin_port));
  const char* busy[] = {"--port", port, "--shards", "1", "--workers", "1", "--", "/bin/true", NULL};
  assert_int_equal(launch(busy, g_out1, sizeof g_out1), 2);
  close(fd);
  snprintf(want, sizeof want, "cannot listen on 127.0.0.1:%s (address in use", port);
  assert_non_null(strstr(g_out1, "[launch] shard 0 exited 2; its last lines:"));
  assert_non_null(strstr(g_out1, want));

  char fake[700];
  snprintf(fake, sizeof fake, "%s/never-serves", g_dir);
  FILE* f = fopen(fake, "w");
  assert_non_null(f);
  fputs("#!/bin/sh\necho \"loading a very large model\"\nwhile :; do sleep 1; done\n", f);
  fclose(f);
  assert_int_equal(chmod(fake, 0755), 0);
  const char* slow[] = {"--ready-timeout", "2", "--stop-timeout", "5", "--shards", "2",
                        "--workers", "1", "--", "/bin/true", NULL};
  assert_int_equal(launch_with(fake, slow, g_out1, sizeof g_out1), 1);
  assert_non_null(strstr(g_out1, "[launch] shard 0 (on "));
  assert_non_null(strstr(g_out1, ") printed no readiness line within 2 s; its last lines:"));
  assert_non_null(strstr(g_out1, "[launch]   loading a very large model"));
}

static void test_usage_errors(void** state) {
  (void)state;
  struct {
    const char* args[12];
    const char* says;
  } cases[] = {
      {{"--shards", "2", "--workers", "2", "--", "/nonexistent/worker", NULL},
       "worker command '/nonexistent/worker' not found"},
      {{"--shards", "2", "--workers", "2", "--listen", "0.0.0.0:1", "--", "/bin/true", NULL},
       "--listen is set by the launcher"},
      {{"--shards", "0", "--workers", "2", "--", "/bin/true", NULL}, "--shards must be 1..256"},
      {{"--shards", "1", "--workers", "2", NULL}, "no worker command"},
      {{"--shards", "1", "--workers", "2", "--backend", "yarn", "--", "/bin/true", NULL},
       "invalid choice: 'yarn'"},
      /* a flag the shards refuse: their own line, and which shard */
      {{"--shards", "1", "--workers", "2", "--no-such-flag", "--", "/bin/true", NULL},
       "[launch] shard 0 exited 2"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int rc = launch(cases[i].args, g_out1, sizeof g_out1);
    if (rc != 2 || !strstr(g_out1, cases[i].says))
      fail_msg("case %zu: exit %d, want 2 and \"%s\"; output: %s", i, rc, cases[i].says, g_out1);
  }
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_two_shards_as_one),
      cmocka_unit_test(test_failing_worker),
      cmocka_unit_test(test_quiet_job),
      cmocka_unit_test(test_mpi),
      cmocka_unit_test(test_bad_shards),
      cmocka_unit_test(test_usage_errors),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
