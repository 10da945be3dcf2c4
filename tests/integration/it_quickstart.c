/* paramex-quickstart (client/examples/quickstart.c, the example of paramex.h) against a
 * real paramex-server: two worker processes train for 25 steps; each must print its line,
 * exit 0, and end with the parameters of the server's SGD recomputed here bit for bit;
 * bad arguments get the usage line and exit 2. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define N 1000
#define WORLD 2
#define STEPS 25
#define WAIT_MS 120000 /* normally well under a second */

static const char* quickstart_bin(void) {
  const char* b = getenv("PMX_QUICKSTART_BIN");
  if (!b) fail_msg("PMX_QUICKSTART_BIN is not set (meson sets it)");
  return b;
}

/* Runs argv to its exit; returns the exit status (fails the test on a signal or a hang)
 * and its stdout and stderr. */
static int run(const char* const* argv, char* out, size_t outcap, char* errb, size_t errcap) {
  int po[2], pe[2];
  assert_int_equal(pipe(po), 0);
  assert_int_equal(pipe(pe), 0);
  pid_t pid = px_h_spawn(argv, NULL, po[1], pe[1]);
  close(po[1]);
  close(pe[1]);
  assert_true(pid > 0);
  assert_true(px_h_read_all(po[0], out, outcap, WAIT_MS) >= 0);
  assert_true(px_h_read_all(pe[0], errb, errcap, WAIT_MS) >= 0);
  close(po[0]);
  close(pe[0]);
  int ws = 0;
  if (px_h_wait(pid, WAIT_MS, &ws) != 0) {
    px_h_kill(pid);
    fail_msg("%s did not exit", argv[0]);
  }
  char d[64];
  if (!WIFEXITED(ws)) fail_msg("%s %s; stderr: %s", argv[0], px_h_describe_wstatus(ws, d, sizeof d), errb);
  return WEXITSTATUS(ws);
}

/* The server's steps (--lr 0.5, gradients summed in rank order, then the mean), computed
 * from the example's loss as its text defines it. */
static void reference(float* w) {
  memset(w, 0, N * sizeof *w);
  for (int s = 0; s < STEPS; s++) {
    for (size_t i = 0; i < N; i++) {
      float sum = 0.0f;
      for (uint32_t r = 0; r < WORLD; r++) {
        float target = (float)(r + 1) * (float)(i % 7) / 8.0f;
        float g = w[i] - target;
        sum = r == 0 ? g : sum + g;
      }
      w[i] = w[i] - 0.5f * (sum / (float)WORLD);
    }
  }
}

static void test_two_workers(void** state) {
  (void)state;
  px_h_server s;
  char err[512];
  const char* args[] = {"--workers", "2", "--lr", "0.5", NULL};
  if (px_h_server_start(&s, args, NULL, 30000, err, sizeof err) != 0) fail_msg("server: %s", err);
  char dir[256];
  assert_int_equal(px_h_mkdtemp(dir, sizeof dir), 0);
  char out[WORLD][512], path[WORLD][300];
  pid_t pid[WORLD];
  int fd[WORLD];
  for (int r = 0; r < WORLD; r++) {
    char rank[8], steps[8];
    snprintf(rank, sizeof rank, "%d", r);
    snprintf(steps, sizeof steps, "%d", STEPS);
    snprintf(path[r], sizeof path[r], "%s/w%d.f32", dir, r);
    const char* argv[] = {quickstart_bin(), s.addr, rank, "2", steps, path[r], NULL};
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid[r] = px_h_spawn(argv, NULL, p[1], -1);
    close(p[1]);
    assert_true(pid[r] > 0);
    fd[r] = p[0];
  }
  float want[N];
  reference(want);
  for (int r = 0; r < WORLD; r++) {
    assert_true(px_h_read_all(fd[r], out[r], sizeof out[r], WAIT_MS) >= 0);
    close(fd[r]);
    int ws = 0;
    assert_int_equal(px_h_wait(pid[r], WAIT_MS, &ws), 0);
    char d[64];
    if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0)
      fail_msg("worker %d %s: %s", r, px_h_describe_wstatus(ws, d, sizeof d), out[r]);
    double loss = 0; /* the example's loss at the final w, as its text defines it */
    for (size_t i = 0; i < N; i++) {
      float g = want[i] - (float)(r + 1) * (float)(i % 7) / 8.0f;
      loss += 0.5 * (double)g * g;
    }
    char line[128];
    snprintf(line, sizeof line, "rank %d: version %d, loss %.6f\n", r, STEPS, loss);
    assert_string_equal(out[r], line);
    size_t len = 0;
    float* w = px_h_read_file(path[r], &len);
    assert_non_null(w);
    assert_int_equal(len, sizeof want);
    for (size_t i = 0; i < N; i++)
      if (memcmp(&w[i], &want[i], sizeof *w) != 0)
        fail_msg("worker %d: w[%zu] = %a, the server's SGD gives %a", r, i, (double)w[i],
                 (double)want[i]);
    free(w);
  }
  px_h_rmtree(dir);
  int ws = 0;
  size_t extra = 0;
  assert_int_equal(px_h_server_stop(&s, 30000, &ws, &extra), 0);
}

static void test_bad_arguments(void** state) {
  (void)state;
  char out[256], errb[512];
  const char* argv[] = {quickstart_bin(), "127.0.0.1:1", "0", NULL};
  assert_int_equal(run(argv, out, sizeof out, errb, sizeof errb), 2);
  assert_string_equal(errb, "usage: paramex-quickstart HOST:PORT RANK WORLD STEPS [OUT]\n");
  assert_string_equal(out, "");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_two_workers),
      cmocka_unit_test(test_bad_arguments),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  px_h_kill_all();
  return rc;
}
