/* generation.c: what a Recover request gets from a shard's generation, version range and
 * checkpoints; the recovery file that keeps the generation over a restart; setting newer
 * checkpoints aside. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "generation.h"
#include "harness.h"

static char g_dir[512];

static void touch_ckpt(uint64_t v) {
  char p[700];
  snprintf(p, sizeof p, "%s/ckpt-%020" PRIu64 ".safetensors", g_dir, v);
  FILE* f = fopen(p, "w");
  assert_non_null(f);
  fclose(f);
}

static int setup(void** state) {
  (void)state;
  if (px_h_mkdtemp(g_dir, sizeof g_dir) != 0) return -1;
  return 0;
}

static int teardown(void** state) {
  (void)state;
  px_h_rmtree(g_dir);
  return 0;
}

static px_gen_action decide(px_gen* g, uint64_t gen, uint64_t v, uint64_t lo, uint64_t hi,
                            bool fresh, char* err) {
  err[0] = 0;
  return px_gen_decide(g, gen, v, lo, hi, fresh, err, 512);
}

static void test_decisions(void** state) {
  (void)state;
  char err[512];
  px_gen g;
  assert_int_equal(px_gen_init(&g, g_dir, err, sizeof err), 0);
  uint64_t gen = 9, v = 9;
  bool pending = true;
  px_gen_get(&g, &gen, &v, &pending);
  assert_true(gen == 0 && v == 0 && !pending); /* no recovery file: none yet */
  assert_true(px_gen_untouched(&g));

  /* at the version already: taken in place, and remembered */
  assert_int_equal(decide(&g, 1, 6, 6, 6, true, err), PX_GEN_IN_PLACE);
  assert_false(px_gen_untouched(&g));
  /* the same generation again (another worker): answered with what was taken */
  assert_int_equal(decide(&g, 1, 4, 6, 6, false, err), PX_GEN_CURRENT);
  px_gen_get(&g, &gen, &v, &pending);
  assert_true(gen == 1 && v == 6 && !pending);
  /* an older one: ABORTED-to-be, naming this shard's */
  assert_int_equal(decide(&g, 0, 6, 6, 6, false, err), PX_GEN_STALE);
  assert_non_null(strstr(err, "this shard is in generation 1 (version 6)"));

  /* behind the version: pushes in flight (or, fresh, a view that was stale) */
  assert_int_equal(decide(&g, 2, 8, 7, 8, false, err), PX_GEN_BEHIND);
  assert_non_null(strstr(err, "at version 7, behind 8"));
  assert_int_equal(decide(&g, 2, 8, 7, 7, true, err), PX_GEN_STALE);
  assert_non_null(strstr(err, "cannot go forward"));

  /* ahead without a checkpoint at the version: refused, naming what there is */
  touch_ckpt(10);
  touch_ckpt(12);
  assert_int_equal(decide(&g, 2, 8, 12, 13, false, err), PX_GEN_CANNOT);
  assert_non_null(strstr(err, "no checkpoint at version 8"));
  assert_non_null(strstr(err, "its checkpoints: 12, 10"));
  /* nothing changed by the refusals */
  px_gen_get(&g, &gen, &v, &pending);
  assert_true(gen == 1 && v == 6 && !pending);
  /* version 0 from nothing only where no checkpoint was ever written */
  assert_int_equal(decide(&g, 2, 0, 12, 13, false, err), PX_GEN_CANNOT);

  /* ahead with the checkpoint: restart pending; later requests get the generation */
  assert_int_equal(decide(&g, 2, 10, 12, 13, false, err), PX_GEN_RESTART);
  px_gen_get(&g, &gen, &v, &pending);
  assert_true(gen == 2 && v == 10 && pending);
  assert_int_equal(decide(&g, 3, 12, 12, 12, false, err), PX_GEN_CURRENT);
  px_gen_deinit(&g);

  /* the recovery file keeps it over a restart; newer checkpoints set aside */
  px_gen_set_aside_newer(g_dir, 10);
  uint64_t vs[8];
  assert_int_equal(px_ckpt_list(g_dir, vs, 8), 1);
  assert_true(vs[0] == 10);
  char p[700];
  snprintf(p, sizeof p, "%s/ckpt-%020d.safetensors.rolled-back", g_dir, 12);
  assert_int_equal(access(p, F_OK), 0);
  assert_int_equal(px_gen_init(&g, g_dir, err, sizeof err), 0);
  px_gen_get(&g, &gen, &v, &pending);
  assert_true(gen == 2 && v == 10 && !pending);
  assert_true(px_gen_untouched(&g));
  px_gen_restarted(&g, 2, 10);
  assert_false(px_gen_untouched(&g));
  px_gen_deinit(&g);
}

/* A shard at the version that served since its start restarts too (it may hold pushes of
 * the next step the restarted shard lost), writing the checkpoint first when it has none. */
static void test_at_version_not_fresh(void** state) {
  (void)state;
  char err[512];
  px_gen g;
  touch_ckpt(6);
  assert_int_equal(px_gen_init(&g, g_dir, err, sizeof err), 0);
  assert_int_equal(decide(&g, 1, 8, 8, 8, false, err), PX_GEN_SAVE);
  assert_non_null(strstr(err, "writing its checkpoint at version 8"));
  uint64_t gen = 9, v = 9;
  bool pending = true;
  px_gen_get(&g, &gen, &v, &pending);
  assert_true(gen == 0 && v == 0 && !pending); /* not taken */
  touch_ckpt(8);
  assert_int_equal(decide(&g, 1, 8, 8, 8, false, err), PX_GEN_RESTART);
  px_gen_get(&g, &gen, &v, &pending);
  assert_true(gen == 1 && v == 8 && pending);
  px_gen_deinit(&g);
  /* fresh at the version: in place, whatever the checkpoints */
  assert_int_equal(px_gen_init(&g, g_dir, err, sizeof err), 0);
  assert_int_equal(decide(&g, 2, 7, 7, 7, true, err), PX_GEN_IN_PLACE);
  px_gen_deinit(&g);
}

static void test_without_folder(void** state) {
  (void)state;
  char err[512];
  px_gen g;
  assert_int_equal(px_gen_init(&g, NULL, err, sizeof err), 0);
  assert_int_equal(decide(&g, 1, 0, 3, 3, false, err), PX_GEN_RESTART); /* from nothing */
  px_gen_deinit(&g);
  assert_int_equal(px_gen_init(&g, NULL, err, sizeof err), 0);
  assert_int_equal(decide(&g, 1, 2, 3, 3, false, err), PX_GEN_CANNOT);
  assert_non_null(strstr(err, "without --checkpoint-dir"));
  /* at the version: nothing to restart from but nothing (version 0), else in place */
  assert_int_equal(decide(&g, 1, 3, 3, 3, false, err), PX_GEN_IN_PLACE);
  px_gen_deinit(&g);
  assert_int_equal(px_gen_init(&g, NULL, err, sizeof err), 0);
  assert_int_equal(decide(&g, 1, 0, 0, 0, false, err), PX_GEN_RESTART);
  px_gen_deinit(&g);
}

static void test_bad_recovery_file(void** state) {
  (void)state;
  char p[700], err[512];
  snprintf(p, sizeof p, "%s/recovery", g_dir);
  FILE* f = fopen(p, "w");
  assert_non_null(f);
  fputs("two words\n", f);
  fclose(f);
  px_gen g;
  assert_int_equal(px_gen_init(&g, g_dir, err, sizeof err), -1);
  assert_non_null(strstr(err, "not \"GENERATION VERSION\""));
  px_gen_deinit(&g);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_decisions, setup, teardown),
      cmocka_unit_test_setup_teardown(test_at_version_not_fresh, setup, teardown),
      cmocka_unit_test_setup_teardown(test_without_folder, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_recovery_file, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
