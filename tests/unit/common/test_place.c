/* launch/place.c: a worker's rank and world size from its launcher's variables: PMX_*
 * first, each convention alone, frameworks over schedulers, the innermost scheduler,
 * disagreeing frameworks and bad numbers refused by name. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "launch/place.h"

/* An environment: NULL-terminated NAME, VALUE pairs. */
static const char* table_get(const char* name, void* ctx) {
  const char* const* kv = ctx;
  for (; kv[0]; kv += 2)
    if (strcmp(kv[0], name) == 0) return kv[1];
  return NULL;
}

static px_place place_ok(const char* const* env) {
  px_place p;
  char err[256] = "";
  int rc = px_place_worker(table_get, (void*)env, &p, err, sizeof err);
  if (rc != 0) fail_msg("refused: %s", err);
  return p;
}

static void expect(const char* const* env, int64_t rank, const char* rank_from, int64_t world,
                   const char* world_from) {
  px_place p = place_ok(env);
  assert_int_equal(p.rank, rank);
  assert_int_equal(p.world, world);
  if (rank >= 0) assert_string_equal(p.rank_from, rank_from);
  if (world >= 0) assert_string_equal(p.world_from, world_from);
}

static void test_each_convention(void** state) {
  (void)state;
  const char* none[] = {"HOME", "/root", NULL};
  expect(none, -1, NULL, -1, NULL);
  const char* pmx[] = {"PMX_RANK", "3", "PMX_WORLD_SIZE", "8", NULL};
  expect(pmx, 3, "PMX_RANK", 8, "PMX_WORLD_SIZE");
  const char* dmlc[] = {"DMLC_ROLE", "worker", "DMLC_WORKER_ID", "2", "DMLC_NUM_WORKER", "4",
                        NULL};
  expect(dmlc, 2, "DMLC_WORKER_ID", 4, "DMLC_NUM_WORKER");
  /* a ps-lite server or scheduler is no worker: its ids say nothing */
  const char* dmlc_server[] = {"DMLC_ROLE", "server", "DMLC_WORKER_ID", "2", NULL};
  expect(dmlc_server, -1, NULL, -1, NULL);
  const char* torchrun[] = {"RANK", "5", "WORLD_SIZE", "6", "LOCAL_RANK", "1", NULL};
  expect(torchrun, 5, "RANK", 6, "WORLD_SIZE");
  const char* ompi[] = {"OMPI_COMM_WORLD_RANK", "1", "OMPI_COMM_WORLD_SIZE", "2", NULL};
  expect(ompi, 1, "OMPI_COMM_WORLD_RANK", 2, "OMPI_COMM_WORLD_SIZE");
  const char* pmix[] = {"PMIX_RANK", "7", "PMI_SIZE", "9", NULL};
  expect(pmix, 7, "PMIX_RANK", 9, "PMI_SIZE");
  const char* slurm[] = {"SLURM_PROCID", "0", "SLURM_NTASKS", "4", NULL};
  expect(slurm, 0, "SLURM_PROCID", 4, "SLURM_NTASKS");
  const char* k8s[] = {"JOB_COMPLETION_INDEX", "11", NULL};
  expect(k8s, 11, "JOB_COMPLETION_INDEX", -1, NULL);
}

static void test_precedence(void** state) {
  (void)state;
  /* PMX_* wins over everything, even a framework that disagrees */
  const char* pmx_first[] = {"PMX_RANK", "1", "RANK", "4", "WORLD_SIZE", "8",
                             "SLURM_PROCID", "6", NULL};
  expect(pmx_first, 1, "PMX_RANK", 8, "WORLD_SIZE");
  /* torchrun under Slurm: the framework's ranks, not the node's task */
  const char* torch_slurm[] = {"SLURM_PROCID", "1", "SLURM_NTASKS", "2", "RANK", "5",
                               "WORLD_SIZE", "16", NULL};
  expect(torch_slurm, 5, "RANK", 16, "WORLD_SIZE");
  /* mpirun inside a Slurm allocation: MPI's ranks (the innermost launcher) */
  const char* mpi_slurm[] = {"SLURM_PROCID", "0", "SLURM_NTASKS", "1",
                             "OMPI_COMM_WORLD_RANK", "3", "OMPI_COMM_WORLD_SIZE", "4", NULL};
  expect(mpi_slurm, 3, "OMPI_COMM_WORLD_RANK", 4, "OMPI_COMM_WORLD_SIZE");
  /* two frameworks that agree are one */
  const char* agree[] = {"DMLC_ROLE", "worker", "DMLC_WORKER_ID", "2", "RANK", "2", NULL};
  expect(agree, 2, "DMLC_WORKER_ID", -1, NULL);
}

static void refused(const char* const* env, const char* says) {
  px_place p;
  char err[256] = "";
  assert_int_equal(px_place_worker(table_get, (void*)env, &p, err, sizeof err), -1);
  if (!strstr(err, says)) fail_msg("got \"%s\", want it to say \"%s\"", err, says);
}

static void test_refusals(void** state) {
  (void)state;
  const char* disagree[] = {"DMLC_ROLE", "worker", "DMLC_WORKER_ID", "2", "RANK", "3", NULL};
  refused(disagree, "the rank is 2 by DMLC_WORKER_ID but 3 by RANK: unset one of them (or "
                    "set PMX_RANK, which wins)");
  const char* sizes[] = {"DMLC_ROLE", "worker", "DMLC_NUM_WORKER", "4", "WORLD_SIZE", "8",
                         NULL};
  refused(sizes, "the world size is 4 by DMLC_NUM_WORKER but 8 by WORLD_SIZE");
  const char* word[] = {"SLURM_PROCID", "one", NULL};
  refused(word, "SLURM_PROCID=one is not a number below 4294967295");
  const char* neg[] = {"RANK", "-1", NULL};
  refused(neg, "RANK=-1 is not a number");
  const char* tail[] = {"PMX_WORLD_SIZE", "4 ", NULL};
  refused(tail, "PMX_WORLD_SIZE=4  is not a number");
  const char* big[] = {"PMX_RANK", "4294967295", NULL};
  refused(big, "PMX_RANK=4294967295 is not a number");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_each_convention),
      cmocka_unit_test(test_precedence),
      cmocka_unit_test(test_refusals),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
