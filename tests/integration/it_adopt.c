/* Environment adoption without paramex-launch (issue 14): the jobs users already have,
 * started by hand the way their own launchers would, end with the parameters of the same
 * run over 1 server (every worker's checksum):
 *   - a TensorFlow job: 2 ps tasks run paramex-server with TF_CONFIG and no flag at all
 *     (shard, shard count, worker count and port from TF_CONFIG), a chief and 3 workers
 *     run the demo with TF_CONFIG alone (rank, world size and shard list from it);
 *   - a ps-lite/BytePS job: servers with DMLC_ROLE=server, DMLC_NUM_SERVER and
 *     DMLC_NUM_WORKER (and --shard, since ps-lite numbers servers itself), workers with
 *     DMLC_ROLE=worker, DMLC_WORKER_ID, DMLC_NUM_WORKER and PMX_SERVERS.
 * And the refusals: a worker whose TF_CONFIG and torchrun RANK disagree, a server whose
 * TF_CONFIG is malformed: exit 2 with one line naming them. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define WAIT_MS 180000 /* normally a few seconds */
#define STEPS "20"
#define WORKERS 4

static const char* env_or_fail(const char* name) {
  const char* v = getenv(name);
  if (!v) fail_msg("%s is not set (meson sets it)", name);
  return v;
}

/* A port nobody listens on now (the kernel's pick; TF_CONFIG needs fixed ports). */
static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  assert_int_equal(bind(fd, (struct sockaddr*)&sa, sizeof sa), 0);
  socklen_t len = sizeof sa;
  assert_int_equal(getsockname(fd, (struct sockaddr*)&sa, &len), 0);
  close(fd);
  return ntohs(sa.sin_port);
}

/* argv = {the binary PMX_<bin_var> names, args..., NULL}; argv holds 16. */
static void make_argv(const char* argv[16], const char* bin_var, const char* const* args) {
  size_t k = 0;
  argv[k++] = env_or_fail(bin_var);
  for (; args && *args && k < 15; args++) argv[k++] = *args;
  argv[k] = NULL;
}

typedef struct server {
  pid_t pid;
  int out;
  int port;
} server;

/* paramex-server ARGS with env ("NAME=VALUE", NULL-terminated), up to its readiness line
 * on host (it says where it listens: the address it adopted). */
static server start_server(const char* const* args, const char* const* env, const char* host) {
  const char* argv[16];
  make_argv(argv, "PMX_SERVER_BIN", args);
  int po[2];
  assert_int_equal(pipe(po), 0);
  server s = {.pid = px_h_spawn(argv, env, po[1], -1), .out = po[0]};
  close(po[1]);
  assert_true(s.pid > 0);
  char prefix[96], acc[2048] = "", line[256];
  snprintf(prefix, sizeof prefix, "paramex-server listening on %s:", host);
  if (px_h_read_line_prefix(s.out, prefix, acc, sizeof acc, line, sizeof line, WAIT_MS) != 0)
    fail_msg("the server printed no \"%s\" line", prefix);
  s.port = atoi(line + strlen(prefix));
  assert_true(s.port > 0);
  return s;
}

static void stop_server(server* s) {
  kill(s->pid, SIGTERM);
  int ws = 0;
  if (px_h_wait(s->pid, WAIT_MS, &ws) != 0) {
    px_h_kill(s->pid);
    fail_msg("a server did not stop on SIGTERM");
  }
  close(s->out);
  assert_true(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
}

/* The demo with args and env to its exit: its exit status, its stdout and stderr in out. */
static int run_demo(const char* const* args, const char* const* env, char* out, size_t cap) {
  const char* argv[16];
  make_argv(argv, "PMX_DEMO_BIN", args);
  int ws = 0;
  if (px_h_run(argv, env, out, cap, WAIT_MS, &ws) != 0)
    fail_msg("the demo did not run to its exit; its output: %s", out);
  assert_true(WIFEXITED(ws));
  return WEXITSTATUS(ws);
}

/* Each worker's environment (env[r]: "NAME=VALUE", NULL-terminated) and arguments. */
typedef struct worker_setup {
  const char* env[WORKERS][8];
  const char* args[WORKERS][12];
} worker_setup;

static char g_out[WORKERS][1 << 16];

/* Starts the WORKERS demos at once (they wait for each other in BSP), then reads each to
 * its exit; every one must exit 0 and end with want (want "": the first one's, into
 * want). */
static void run_workers(const worker_setup* w, char* want, size_t cap) {
  pid_t pid[WORKERS];
  int out[WORKERS];
  for (int r = 0; r < WORKERS; r++) {
    const char* argv[16];
    make_argv(argv, "PMX_DEMO_BIN", w->args[r]);
    pid[r] = px_h_spawn_piped(argv, w->env[r], &out[r]);
    assert_true(pid[r] > 0);
  }
  for (int r = 0; r < WORKERS; r++) {
    assert_true(px_h_read_all(out[r], g_out[r], sizeof g_out[r], WAIT_MS) >= 0);
    close(out[r]);
    int ws = 0;
    if (px_h_wait(pid[r], WAIT_MS, &ws) != 0) {
      px_h_kill(pid[r]);
      fail_msg("worker %d did not exit; its output: %s", r, g_out[r]);
    }
    char d[64];
    if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0)
      fail_msg("worker %d %s: %s", r, px_h_describe_wstatus(ws, d, sizeof d), g_out[r]);
  }
  for (int r = 0; r < WORKERS; r++) {
    const char* key = "final params xxh64=";
    const char* p = strstr(g_out[r], key);
    if (!p) fail_msg("worker %d printed no checksum: %s", r, g_out[r]);
    char got[32];
    snprintf(got, sizeof got, "%.16s", p + strlen(key));
    if (!want[0]) snprintf(want, cap, "%s", got);
    if (strcmp(got, want) != 0)
      fail_msg("worker %d ends with %s, want %s: %s", r, got, want, g_out[r]);
  }
}

static char g_want[32]; /* 1 server, 4 workers given --rank/--world */
static char g_args[WORKERS][8][32];

static void test_one_server(void** state) {
  (void)state;
  const char* args[] = {"--listen", "127.0.0.1:0", "--workers", "4", "--log-level", "warn",
                        NULL};
  server s = start_server(args, NULL, "127.0.0.1");
  static char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", s.port);
  worker_setup w = {0};
  for (int r = 0; r < WORKERS; r++) {
    snprintf(g_args[r][0], sizeof g_args[r][0], "%d", r);
    const char* a[] = {"--server", addr, "--rank", g_args[r][0], "--world", "4", "--steps",
                       STEPS, NULL};
    memcpy(w.args[r], a, sizeof a);
  }
  run_workers(&w, g_want, sizeof g_want);
  stop_server(&s);
}

/* A Kubeflow TFJob's TF_CONFIG: chief, 3 workers, 2 ps on loopback. */
static char g_tf[6][1024];
static void tf_config(int ps0, int ps1) {
  const char* tasks[6][2] = {{"ps", "0"},     {"ps", "1"},     {"chief", "0"},
                             {"worker", "0"}, {"worker", "1"}, {"worker", "2"}};
  for (int i = 0; i < 6; i++)
    snprintf(g_tf[i], sizeof g_tf[i],
             "TF_CONFIG={\"cluster\": {\"chief\": [\"127.0.0.1:1\"], \"worker\": "
             "[\"127.0.0.1:2\", \"127.0.0.1:3\", \"127.0.0.1:4\"], \"ps\": [\"127.0.0.1:%d\", "
             "\"127.0.0.1:%d\"]}, \"task\": {\"type\": \"%s\", \"index\": %s}}",
             ps0, ps1, tasks[i][0], tasks[i][1]);
}

static void test_tf_config(void** state) {
  (void)state;
  assert_true(g_want[0]);
  int p0 = free_port(), p1 = free_port();
  while (p1 == p0) p1 = free_port();
  tf_config(p0, p1);
  const char* quiet[] = {"--log-level", "warn", NULL};
  const char* env0[] = {g_tf[0], NULL};
  const char* env1[] = {g_tf[1], NULL};
  server s0 = start_server(quiet, env0, "0.0.0.0"), s1 = start_server(quiet, env1, "0.0.0.0");
  assert_int_equal(s0.port, p0); /* each ps task listens on its own cluster.ps port */
  assert_int_equal(s1.port, p1);
  worker_setup w = {0};
  for (int r = 0; r < WORKERS; r++) {
    w.env[r][0] = g_tf[2 + r];
    w.args[r][0] = "--steps";
    w.args[r][1] = STEPS;
  }
  char want[32];
  snprintf(want, sizeof want, "%s", g_want);
  run_workers(&w, want, sizeof want);
  /* the chief is rank 0 (it prints the run's header), of 4 workers */
  assert_non_null(strstr(g_out[0], "4 workers, " STEPS " steps, server TF_CONFIG's cluster.ps"));
  stop_server(&s0);
  stop_server(&s1);
}

static void test_ps_lite(void** state) {
  (void)state;
  assert_true(g_want[0]);
  const char* env[] = {"DMLC_ROLE=server", "DMLC_NUM_SERVER=2", "DMLC_NUM_WORKER=4", NULL};
  const char* a0[] = {"--listen", "127.0.0.1:0", "--shard", "0", "--log-level", "warn", NULL};
  const char* a1[] = {"--listen", "127.0.0.1:0", "--shard", "1", "--log-level", "warn", NULL};
  server s0 = start_server(a0, env, "127.0.0.1"), s1 = start_server(a1, env, "127.0.0.1");
  static char servers[96], ids[WORKERS][32];
  snprintf(servers, sizeof servers, "PMX_SERVERS=127.0.0.1:%d,127.0.0.1:%d", s0.port, s1.port);
  worker_setup w = {0};
  for (int r = 0; r < WORKERS; r++) {
    snprintf(ids[r], sizeof ids[r], "DMLC_WORKER_ID=%d", r);
    const char* e[] = {"DMLC_ROLE=worker", ids[r], "DMLC_NUM_WORKER=4", servers, NULL};
    memcpy(w.env[r], e, sizeof e);
    w.args[r][0] = "--steps";
    w.args[r][1] = STEPS;
  }
  char want[32];
  snprintf(want, sizeof want, "%s", g_want);
  run_workers(&w, want, sizeof want);
  stop_server(&s0);
  stop_server(&s1);
}

static void test_refusals(void** state) {
  (void)state;
  char out[4096];
  tf_config(1, 2);
  const char* both[] = {g_tf[3], "RANK=0", NULL}; /* TF_CONFIG says rank 1 */
  const char* args[] = {"--steps", "1", NULL};
  assert_int_equal(run_demo(args, both, out, sizeof out), 2);
  assert_non_null(strstr(out, "the rank is 1 by TF_CONFIG but 0 by RANK: unset one of them"));
  const char* bad_env[] = {"TF_CONFIG={\"cluster\": {\"ps\": [\"p:1\"]}, \"task\": {\"type\": "
                           "\"ps\", \"index\": 1}}", NULL};
  const char* argv[] = {env_or_fail("PMX_SERVER_BIN"), NULL};
  int ws = 0;
  assert_int_equal(px_h_run(argv, bad_env, out, sizeof out, WAIT_MS, &ws), 0);
  assert_true(WIFEXITED(ws) && WEXITSTATUS(ws) == 2);
  assert_non_null(strstr(out, "TF_CONFIG: the task is ps 1, but cluster.ps lists 1"));
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  /* only what each process is given: nothing of this test's own environment */
  const char* conventions[] = {"TF_CONFIG", "RANK", "WORLD_SIZE", "DMLC_ROLE", "DMLC_WORKER_ID",
                               "DMLC_NUM_WORKER", "DMLC_NUM_SERVER", "PMX_SERVERS", "PMX_RANK",
                               "PMX_WORLD_SIZE", "PMX_SHARD", "PMX_SHARDS", "PMX_WORKERS",
                               "PMX_LISTEN", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK",
                               "JOB_COMPLETION_INDEX"};
  for (size_t i = 0; i < sizeof conventions / sizeof conventions[0]; i++)
    unsetenv(conventions[i]);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_one_server),
      cmocka_unit_test(test_tf_config),
      cmocka_unit_test(test_ps_lite),
      cmocka_unit_test(test_refusals),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
