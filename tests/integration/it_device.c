/* paramex-server --device / --gpus as an operator meets them: a bad value or a build or
 * machine that cannot run the cuda backend gets exactly one line on stderr naming the
 * problem and the documented exit status (2: usage, 1: cannot start), nothing on stdout.
 * PX_HAVE_CUDA (set by meson) says whether this build has the cuda backend. On a machine
 * with a GPU the cuda server must start and stop cleanly instead. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

static bool have_cuda(void) {
  const char* v = getenv("PMX_HAVE_CUDA");
  return v && strcmp(v, "1") == 0;
}

/* Runs the server with args and expects it to exit with status `want` after printing one
 * line on stderr that contains `needle`, and nothing on stdout. */
static void expect_refusal(const char* const* args, int want, const char* needle) {
  char errpath[] = "/tmp/pmx-device-err-XXXXXX", outpath[] = "/tmp/pmx-device-out-XXXXXX";
  int efd = mkstemp(errpath), ofd = mkstemp(outpath);
  assert_true(efd >= 0 && ofd >= 0);
  const char* argv[16] = {px_h_server_bin(), "--listen", "127.0.0.1:0"};
  size_t n = 3;
  for (size_t i = 0; args[i] && n < 15; i++) argv[n++] = args[i];
  argv[n] = NULL;
  pid_t pid = px_h_spawn(argv, NULL, ofd, efd);
  assert_true(pid > 0);
  int ws = 0;
  if (px_h_wait(pid, 60000, &ws) != 0) {
    px_h_kill(pid);
    fail_msg("paramex-server %s %s did not exit", args[0], args[1] ? args[1] : "");
  }
  char err[2048] = "", out[256] = "";
  ssize_t el = pread(efd, err, sizeof err - 1, 0), ol = pread(ofd, out, sizeof out - 1, 0);
  close(efd);
  close(ofd);
  unlink(errpath);
  unlink(outpath);
  err[el > 0 ? el : 0] = 0;
  if (!WIFEXITED(ws) || WEXITSTATUS(ws) != want)
    fail_msg("%s: exit %d, want %d; stderr: %s", args[1], WIFEXITED(ws) ? WEXITSTATUS(ws) : -1,
             want, err);
  assert_true(ol <= 0);
  size_t len = strlen(err);
  assert_true(len > 0 && err[len - 1] == '\n');
  if (memchr(err, '\n', len - 1)) fail_msg("more than one line on stderr: %s", err);
  assert_true(strncmp(err, "paramex-server: ", 16) == 0);
  if (!strstr(err, needle)) fail_msg("stderr '%s' does not name '%s'", err, needle);
}

static void test_bad_values(void** state) {
  (void)state;
  const char* tpu[] = {"--device", "tpu", NULL};
  expect_refusal(tpu, 2, "--device: 'tpu' is not cpu or cuda");
  const char* nodev[] = {"--gpus", "0", NULL};
  expect_refusal(nodev, 2, "--gpus needs --device cuda");
  const char* dup[] = {"--device", "cuda", "--gpus", "1,1", NULL};
  expect_refusal(dup, 2, "--gpus: device 1 is listed twice");
  const char* word[] = {"--device", "cuda", "--gpus", "zero", NULL};
  expect_refusal(word, 2, "--gpus: 'zero' is not a device number");
}

static void test_cuda(void** state) {
  (void)state;
  const char* cuda[] = {"--device", "cuda", NULL};
  if (!have_cuda()) {
    expect_refusal(cuda, 2, "built without CUDA");
    return;
  }
  /* a build with CUDA: either no GPU here (one line naming the CUDA error, exit 1), or a
   * GPU, and then the server must run and stop cleanly */
  px_h_server s;
  char err[512];
  if (px_h_server_start(&s, cuda, NULL, 60000, err, sizeof err) != 0) {
    /* scripts/gpu-check.sh sets PMX_TEST_REQUIRE_GPU=1: there a refusal is a failure */
    const char* req = getenv("PMX_TEST_REQUIRE_GPU");
    if (req && strcmp(req, "1") == 0) fail_msg("--device cuda did not start on a GPU machine: %s", err);
    expect_refusal(cuda, 1, "--device cuda: cuda");
    return;
  }
  int ws = 0;
  size_t extra = 1;
  assert_int_equal(px_h_server_stop(&s, 30000, &ws, &extra), 0);
  assert_true(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
  const char* far[] = {"--device", "cuda", "--gpus", "1000", NULL};
  expect_refusal(far, 2, "--gpus: device 1000 does not exist");
}

static int teardown(void** state) {
  (void)state;
  px_h_kill_all();
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_bad_values, teardown),
      cmocka_unit_test_teardown(test_cuda, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
