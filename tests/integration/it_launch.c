/* paramex-launch, local backend (issue 14): the demo over 2 shards and 4 workers ends with
 * the parameters of the same run over 1 shard (every worker's checksum); each output
 * line carries its process's prefix; a worker that fails makes the launcher stop the
 * others and exit with its status, naming it; usage errors exit 2 with one line; nothing
 * it started is left running. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* Runs the launcher with args to its exit; returns the exit status, its output in out. */
static int launch(const char* const* args, char* out, size_t cap) {
  const char* argv[32] = {env_or_fail("PMX_LAUNCH_BIN"), "--server-bin",
                          env_or_fail("PMX_SERVER_BIN")};
  size_t k = 3;
  for (; *args && k < 31; args++) argv[k++] = *args;
  argv[k] = NULL;
  int po[2];
  assert_int_equal(pipe(po), 0);
  pid_t pid = px_h_spawn(argv, NULL, po[1], po[1]);
  close(po[1]);
  assert_true(pid > 0);
  assert_true(px_h_read_all(po[0], out, cap, WAIT_MS) >= 0);
  close(po[0]);
  int ws = 0;
  if (px_h_wait(pid, WAIT_MS, &ws) != 0) {
    px_h_kill(pid);
    fail_msg("paramex-launch did not exit; its output: %s", out);
  }
  char d[64];
  if (!WIFEXITED(ws)) fail_msg("paramex-launch %s; output: %s", px_h_describe_wstatus(ws, d, sizeof d), out);
  return WEXITSTATUS(ws);
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

static void test_two_shards_as_one(void** state) {
  (void)state;
  const char* demo = env_or_fail("PMX_DEMO_BIN");
  const char* one[] = {"--shards", "1", "--workers", "4", "--", demo, "--steps", STEPS, NULL};
  const char* two[] = {"--shards", "2", "--workers", "4", "--log-level", "warn", "--", demo,
                       "--steps", STEPS, NULL};
  assert_int_equal(launch(one, g_out1, sizeof g_out1), 0);
  assert_int_equal(launch(two, g_out2, sizeof g_out2), 0);
  char want[32], got[32];
  if (!checksum_of(g_out1, 0, want, sizeof want)) fail_msg("no checksum of rank 0: %s", g_out1);
  for (int r = 0; r < 4; r++) {
    if (!checksum_of(g_out1, r, got, sizeof got) || strcmp(got, want) != 0)
      fail_msg("1 shard: worker %d ends with %s, worker 0 with %s", r, got, want);
    if (!checksum_of(g_out2, r, got, sizeof got) || strcmp(got, want) != 0)
      fail_msg("2 shards: worker %d ends with %s, 1 shard with %s:\n%s", r, got, want, g_out2);
  }
  /* the list the workers got, and every line prefixed */
  assert_non_null(strstr(g_out2, "[server 1] paramex-server listening on 127.0.0.1:"));
  assert_non_null(strstr(g_out2, "[launch] 2 shard(s) serving: PMX_SERVERS=127.0.0.1:"));
  for (const char* p = g_out2; *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : p + strlen(p))
    if (*p && *p != '[') fail_msg("a line without its prefix: %.80s", p);
}

static void test_failing_worker(void** state) {
  (void)state;
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "test \"$PMX_RANK\" != 2 || exit 3; exec %s --steps 100000",
           env_or_fail("PMX_DEMO_BIN"));
  const char* args[] = {"--shards", "2", "--workers", "4", "--", "/bin/sh", "-c", cmd, NULL};
  assert_int_equal(launch(args, g_out1, sizeof g_out1), 3);
  assert_non_null(strstr(g_out1, "[launch] worker 2 exited 3: stopping the rest"));
  /* the others were stopped (they would run 100000 steps) and the shards drained */
  assert_null(strstr(g_out1, "final params"));
  assert_non_null(strstr(g_out1, "[server 0]"));
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
      {{"--shards", "2", "--workers", "2", "--no-such-flag", "--", "/bin/true", NULL},
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
      cmocka_unit_test(test_usage_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
