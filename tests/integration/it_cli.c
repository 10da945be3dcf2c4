/* The `paramex` command line against a real server: after a short job with checkpoints,
 * `paramex stats ADDR --json` carries what the README points operators to (workers_alive,
 * checkpoints_written, checkpoint_failures, checkpoint_version and path, restored_version,
 * and per worker alive and finished), and the text form names each worker's state. */
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
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_stats_for_operators)};
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
