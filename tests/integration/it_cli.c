/* The `paramex` command line against a real server: after a short job with checkpoints,
 * `paramex stats ADDR --json` carries what the README points operators to (workers_alive,
 * checkpoints_written, checkpoint_failures, checkpoint_version and path, restored_version,
 * and per worker alive and finished), and the text form names each worker's state.
 * `paramex top`: after a short job, `--once` prints one frame with the shard's version, a
 * row per worker and real rates (two fetches --interval apart); without --once and not on
 * a terminal it keeps printing frames until SIGINT (exit 0); an unknown flag is a one-line
 * usage error (exit 2) and an unreachable shard with --once exits 1 naming the shard. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "harness.h"
#include "rpc/rpc_client.h"
#include "train.h"

static char g_dir[512];

/* Runs `paramex ARGS...` and returns its stdout (malloc'd); it must exit 0. */
static char* cli(const char* const* args) {
  int rc = -1;
  char* out = px_h_cli(args, &rc);
  CHECK(out, "cannot run paramex (PMX_CLI_BIN, through meson test)");
  CHECK(rc == 0, "paramex %s %s failed (%d): %s", args[0], args[1], rc, out);
  return out;
}

static void test_stats_for_operators(void** state) {
  (void)state;
  char ckdir[600], out[600];
  snprintf(ckdir, sizeof ckdir, "%s/ckpt", g_dir);
  snprintf(out, sizeof out, "%s/out", g_dir);
  CHECK(mkdir(ckdir, 0755) == 0 && mkdir(out, 0755) == 0, "mkdir");
  const char* args[] = {"--workers", "2", "--checkpoint-dir", ckdir, "--checkpoint-every", "2", NULL};
  px_h_server srv;
  char err[512];
  CHECK(px_h_server_start(&srv, args, NULL, 20000, err, sizeof err) == 0, "server: %s", err);
  it_train j = {.addr = srv.addr, .world = 2, .steps = 4, .a_numel = 100, .dir = out};
  it_train_run(&j, 60000);
  /* the checkpoint of version 4 is written by a thread of its own: wait for it (bounded) */
  json_t* root = NULL;
  for (int64_t until = px_h_now_ms() + 20000;;) {
    const char* a[] = {"stats", srv.addr, "--json", NULL};
    char* text = cli(a);
    json_error_t je;
    root = json_loads(text, JSON_DECODE_INT_AS_REAL, &je); /* checksums exceed int64 */
    CHECK(root, "paramex stats --json is not JSON (%s): %s", je.text, text);
    free(text);
    if (json_number_value(json_object_get(root, "checkpoint_version")) == 4) break;
    json_decref(root);
    CHECK(px_h_now_ms() < until, "no checkpoint of version 4 within 20 s");
    poll(NULL, 0, 20);
  }
  static const char* const keys[] = {"workers_alive", "elastic", "checkpoints_written",
                                     "checkpoint_failures", "checkpoint_version",
                                     "checkpoint_path", "restored_version", NULL};
  for (int i = 0; keys[i]; i++)
    CHECK(json_object_get(root, keys[i]), "paramex stats --json has no '%s'", keys[i]);
  CHECK(json_number_value(json_object_get(root, "checkpoints_written")) >= 2, "checkpoints_written");
  CHECK(json_number_value(json_object_get(root, "checkpoint_failures")) == 0, "checkpoint_failures");
  CHECK(strstr(json_string_value(json_object_get(root, "checkpoint_path")), "ckpt-"), "checkpoint_path");
  CHECK(json_number_value(json_object_get(root, "workers_alive")) == 0,
        "both workers left, yet workers_alive is not 0");
  json_t* ws = json_object_get(root, "workers");
  CHECK(json_array_size(ws) == 2, "workers");
  for (size_t i = 0; i < 2; i++) {
    json_t* w = json_array_get(ws, i);
    CHECK(json_is_false(json_object_get(w, "alive")) && json_is_true(json_object_get(w, "finished")),
          "worker %zu is not reported finished", i);
  }
  json_decref(root);
  const char* a[] = {"stats", srv.addr, NULL};
  char* text = cli(a);
  CHECK(strstr(text, "STATE") && strstr(text, "finished") && strstr(text, "restored_version") &&
            strstr(text, "checkpoints        ") && strstr(text, "workers_alive"),
        "the text form lacks the workers' state or the checkpoint lines: %s", text);
  free(text);
  int st = 0;
  CHECK(px_h_server_stop(&srv, 30000, &st, NULL) == 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
        "server stop");
}

#define WAIT_MS 30000

/* Runs `paramex top ARGS...` to its exit: stdout and stderr in out; returns the exit status
 * (-1 when it did not exit normally). */
static int top(const char* const* args, char* out, size_t cap) {
  const char* argv[16] = {getenv("PMX_CLI_BIN"), "top"};
  CHECK(argv[0], "PMX_CLI_BIN is not set (run through meson test)");
  size_t n = 2;
  for (size_t i = 0; args[i] && n < 15; i++) argv[n++] = args[i];
  argv[n] = NULL;
  int ws = 0;
  CHECK(px_h_run(argv, NULL, out, cap, WAIT_MS, &ws) == 0, "paramex top did not exit: %s", out);
  return WIFEXITED(ws) ? WEXITSTATUS(ws) : -1;
}

/* The frame's row of shard 0 (a copy up to its newline). */
static void shard_row(const char* out, char* row, size_t cap) {
  const char* p = strstr(out, "\n    0  127.0.0.1:");
  CHECK(p, "no row of shard 0 in: %s", out);
  p++;
  size_t len = strcspn(p, "\n");
  snprintf(row, cap, "%.*s", (int)len, p);
}

static void test_top_once_and_live(void** state) {
  (void)state;
  char outdir[600];
  snprintf(outdir, sizeof outdir, "%s/top", g_dir);
  CHECK(mkdir(outdir, 0755) == 0, "mkdir");
  const char* args[] = {"--workers", "2", NULL};
  px_h_server srv;
  char err[512];
  CHECK(px_h_server_start(&srv, args, NULL, 20000, err, sizeof err) == 0, "server: %s", err);
  it_train j = {.addr = srv.addr, .world = 2, .steps = 4, .a_numel = 100, .dir = outdir};
  it_train_run(&j, 60000);

  static char out[1 << 16];
  const char* once[] = {srv.addr, "--once", "--interval", "0.2", NULL};
  CHECK(top(once, out, sizeof out) == 0, "paramex top --once failed: %s", out);
  CHECK(strstr(out, "paramex top") == out, "the frame has no header: %s", out);
  CHECK(!strstr(out, "\033["), "--once wrote terminal escapes: %s", out);
  char row[512], addr[64], ver[64], steps[32], in[32], unit_in[16];
  shard_row(out, row, sizeof row);
  unsigned shard = 99;
  CHECK(sscanf(row, "%u %63s %63s %31s %31s %15s", &shard, addr, ver, steps, in, unit_in) == 6,
        "shard row: %s", row);
  CHECK(shard == 0 && strcmp(addr, srv.addr) == 0, "shard row: %s", row);
  CHECK(strcmp(ver, "4..4") == 0, "version is not 4..4 after 4 steps: %s", row);
  /* the job is over: a real rate (not "-") of nothing */
  CHECK(strcmp(steps, "0.0") == 0 && strcmp(in, "0") == 0 && strcmp(unit_in, "B/s") == 0,
        "rates are not 0.0 steps/s and 0 B/s: %s", row);
  CHECK(strstr(out, "workers (2)"), "no workers table: %s", out);
  for (int r = 0; r < 2; r++) {
    char want[64];
    snprintf(want, sizeof want, "\n      %d  ", r);
    const char* w = strstr(out, want);
    CHECK(w && strstr(w, "finished"), "no finished row of worker %d: %s", r, out);
    /* after the state: last seen ("0.3 s"), steps pushed, steps behind, chunks */
    double seen = -1;
    unsigned long long steps_w = 0, behind = 99, chunks = 0;
    CHECK(sscanf(strstr(w, "finished") + 8, " %lf s %llu %llu %llu", &seen, &steps_w, &behind,
                 &chunks) == 4 && steps_w == 4 && behind == 0 && chunks >= 4,
          "worker %d's row does not say 4 steps, 0 behind: %s", r, w);
  }

  /* live, not on a terminal: frames one after another, until SIGINT */
  const char* argv[] = {getenv("PMX_CLI_BIN"), "top", srv.addr, "--interval", "0.05", NULL};
  int fd = -1;
  pid_t pid = px_h_spawn_piped(argv, NULL, &fd);
  CHECK(pid > 0, "cannot start paramex top");
  char acc[8192] = "", line[512];
  for (int f = 0; f < 3; f++)
    CHECK(px_h_read_line_prefix(fd, "paramex top  ", acc, sizeof acc, line, sizeof line,
                                WAIT_MS) == 0,
          "frame %d of paramex top did not come", f);
  CHECK(kill(pid, SIGINT) == 0, "kill");
  int ws = 0;
  CHECK(px_h_wait(pid, WAIT_MS, &ws) == 0, "paramex top did not end on SIGINT");
  close(fd);
  CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "paramex top: %s after SIGINT",
        px_h_describe_wstatus(ws, line, sizeof line));
  int st = 0;
  CHECK(px_h_server_stop(&srv, 30000, &st, NULL) == 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
        "server stop");
}

static void test_top_bad_input(void** state) {
  (void)state;
  static char out[1 << 14];
  const char* bogus[] = {"127.0.0.1:1", "--bogus", NULL};
  CHECK(top(bogus, out, sizeof out) == 2, "unknown flag: not exit 2: %s", out);
  CHECK(strstr(out, "--bogus") && strchr(out, '\n') == out + strlen(out) - 1,
        "unknown flag: not one line naming it: %s", out);
  const char* interval[] = {"127.0.0.1:1", "--interval", "0", NULL};
  CHECK(top(interval, out, sizeof out) == 2 && strstr(out, "--interval"),
        "--interval 0: not a usage error: %s", out);
  /* a port nothing listens on: the port of a server that stopped */
  px_h_server srv;
  char err[512];
  CHECK(px_h_server_start(&srv, NULL, NULL, 20000, err, sizeof err) == 0, "server: %s", err);
  int st = 0;
  CHECK(px_h_server_stop(&srv, 30000, &st, NULL) == 0, "server stop");
  const char* gone[] = {srv.addr, "--once", "--interval", "0.05", NULL};
  CHECK(top(gone, out, sizeof out) == 1, "unreachable shard: not exit 1: %s", out);
  char want[128];
  snprintf(want, sizeof want, "paramex: top: shard 0: %s", srv.addr);
  CHECK(strstr(out, want) && strstr(out, "error: "), "the failed shard is not named: %s", out);
}

static int group_setup(void** state) {
  (void)state;
  px_rpc_init();
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
      cmocka_unit_test(test_stats_for_operators),
      cmocka_unit_test(test_top_once_and_live),
      cmocka_unit_test(test_top_bad_input),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
