/* launch/place.c: a worker's rank and world size from its launcher's variables: PMX_*
 * first, each convention alone, frameworks over schedulers, the innermost scheduler,
 * disagreeing frameworks and bad numbers refused by name; a server's shard, count and
 * workers; TF_CONFIG's tasks, shard list and listen port. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
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

static void expect_server(const char* const* env, int64_t shard, const char* from,
                          int64_t count, const char* count_from) {
  px_place p;
  char err[256] = "";
  if (px_place_server(table_get, (void*)env, &p, err, sizeof err) != 0)
    fail_msg("refused: %s", err);
  assert_int_equal(p.rank, shard);
  assert_int_equal(p.world, count);
  if (shard >= 0) assert_string_equal(p.rank_from, from);
  if (count >= 0) assert_string_equal(p.world_from, count_from);
}

static void test_servers(void** state) {
  (void)state;
  const char* pmx[] = {"PMX_SHARD", "1", "PMX_SHARDS", "2", "OMPI_COMM_WORLD_RANK", "0", NULL};
  expect_server(pmx, 1, "PMX_SHARD", 2, "PMX_SHARDS");
  const char* dmlc[] = {"DMLC_ROLE", "server", "DMLC_NUM_SERVER", "4", "PMIX_RANK", "3", NULL};
  expect_server(dmlc, 3, "PMIX_RANK", 4, "DMLC_NUM_SERVER");
  /* a ps-lite worker's DMLC_NUM_SERVER is no server's count */
  const char* worker[] = {"DMLC_ROLE", "worker", "DMLC_NUM_SERVER", "4", NULL};
  expect_server(worker, -1, NULL, -1, NULL);
  /* the MPI world size counts the workers too, SLURM_NTASKS a batch script's tasks */
  const char* mpi[] = {"OMPI_COMM_WORLD_RANK", "1", "OMPI_COMM_WORLD_SIZE", "6",
                       "SLURM_NTASKS", "6", NULL};
  expect_server(mpi, 1, "OMPI_COMM_WORLD_RANK", -1, NULL);
  const char* slurm[] = {"SLURM_PROCID", "2", NULL};
  expect_server(slurm, 2, "SLURM_PROCID", -1, NULL);
  const char* pod[] = {"KUBERNETES_SERVICE_HOST", "10.0.0.1", "HOSTNAME", "pmx-shard-12", NULL};
  expect_server(pod, 12, "HOSTNAME", -1, NULL);
  const char* outside[] = {"HOSTNAME", "build-12", NULL}; /* not in Kubernetes */
  expect_server(outside, -1, NULL, -1, NULL);
  const char* deployment[] = {"KUBERNETES_SERVICE_HOST", "10.0.0.1", "HOSTNAME", "pmx-5f6-x9z",
                              NULL};
  expect_server(deployment, -1, NULL, -1, NULL);
  px_place p;
  char err[256] = "";
  const char* beyond[] = {"DMLC_ROLE", "server", "DMLC_NUM_SERVER", "2", "SLURM_PROCID", "2",
                          NULL};
  assert_int_equal(px_place_server(table_get, (void*)beyond, &p, err, sizeof err), -1);
  assert_string_equal(err, "the shard is 2 by SLURM_PROCID, not below the shard count 2 by "
                           "DMLC_NUM_SERVER");
}

/* A Kubeflow TFJob's TF_CONFIG: one chief, two workers, two ps. */
#define TF_CLUSTER                                                                          \
  "{\"cluster\": {\"chief\": [\"job-chief-0:2222\"], \"worker\": [\"job-worker-0:2222\", "  \
  "\"job-worker-1:2222\"], \"ps\": [\"job-ps-0:2222\", \"job-ps-1:2223\"]}, "
#define TF_TASK(type, index) TF_CLUSTER "\"task\": {\"type\": \"" type "\", \"index\": " #index "}}"

static void test_tf_config(void** state) {
  (void)state;
  /* the chief is rank 0, the workers follow; the world is chiefs + workers */
  const char* chief[] = {"TF_CONFIG", TF_TASK("chief", 0), NULL};
  expect(chief, 0, "TF_CONFIG", 3, "TF_CONFIG");
  const char* worker[] = {"TF_CONFIG", TF_TASK("worker", 1), NULL};
  expect(worker, 2, "TF_CONFIG", 3, "TF_CONFIG");
  /* a ps or an evaluator trains nothing: no rank, and a ps task is a shard */
  const char* ps[] = {"TF_CONFIG", TF_TASK("ps", 1), NULL};
  expect(ps, -1, NULL, -1, NULL);
  px_place p;
  char err[256] = "";
  assert_int_equal(px_place_server(table_get, (void*)ps, &p, err, sizeof err), 0);
  assert_int_equal(p.rank, 1);
  assert_int_equal(p.world, 2);
  assert_int_equal(p.workers, 3);
  assert_string_equal(p.rank_from, "TF_CONFIG");
  assert_string_equal(p.workers_from, "TF_CONFIG");
  assert_int_equal(px_place_server(table_get, (void*)worker, &p, err, sizeof err), 0);
  assert_int_equal(p.rank, -1);
  assert_int_equal(p.workers, -1);
  const char* evaluator[] = {"TF_CONFIG", TF_CLUSTER "\"task\": {\"type\": \"evaluator\"}}",
                             NULL};
  expect(evaluator, -1, NULL, -1, NULL);
  /* PMX_* wins; another framework that agrees is one, one that disagrees an error */
  const char* pmx[] = {"TF_CONFIG", TF_TASK("worker", 1), "PMX_RANK", "0", NULL};
  expect(pmx, 0, "PMX_RANK", 3, "TF_CONFIG");
  const char* torch_agrees[] = {"TF_CONFIG", TF_TASK("worker", 0), "RANK", "1", "WORLD_SIZE",
                                "3", NULL};
  expect(torch_agrees, 1, "TF_CONFIG", 3, "TF_CONFIG");
  const char* torch[] = {"TF_CONFIG", TF_TASK("worker", 0), "RANK", "0", NULL};
  refused(torch, "the rank is 1 by TF_CONFIG but 0 by RANK: unset one of them (or set "
                 "PMX_RANK, which wins)");
  /* a framework over a scheduler: TF_CONFIG over SLURM_PROCID */
  const char* slurm[] = {"TF_CONFIG", TF_TASK("worker", 1), "SLURM_PROCID", "0", NULL};
  expect(slurm, 2, "TF_CONFIG", 3, "TF_CONFIG");
  /* a malformed TF_CONFIG is refused by name, unless PMX_* is read first */
  const char* bad[] = {"TF_CONFIG", "{\"cluster\": ", NULL};
  refused(bad, "TF_CONFIG is not valid JSON");
  const char* bad_but_pmx[] = {"TF_CONFIG", "{", "PMX_RANK", "1", "PMX_WORLD_SIZE", "2", NULL};
  expect(bad_but_pmx, 1, "PMX_RANK", 2, "PMX_WORLD_SIZE");
  /* servers: TF_CONFIG with DMLC's count, and PMX_WORKERS first */
  const char* ps_pmx[] = {"TF_CONFIG", TF_TASK("ps", 0), "PMX_WORKERS", "8", NULL};
  assert_int_equal(px_place_server(table_get, (void*)ps_pmx, &p, err, sizeof err), 0);
  assert_int_equal(p.workers, 8);
  assert_string_equal(p.workers_from, "PMX_WORKERS");
  const char* ps_dmlc[] = {"TF_CONFIG", TF_TASK("ps", 0), "DMLC_ROLE", "server",
                           "DMLC_NUM_SERVER", "3", NULL};
  assert_int_equal(px_place_server(table_get, (void*)ps_dmlc, &p, err, sizeof err), -1);
  assert_string_equal(err, "the shard count is 3 by DMLC_NUM_SERVER but 2 by TF_CONFIG: unset "
                           "one of them (or set PMX_SHARDS, which wins)");
  const char* dmlc_workers[] = {"DMLC_ROLE", "server", "DMLC_NUM_WORKER", "4", NULL};
  assert_int_equal(px_place_server(table_get, (void*)dmlc_workers, &p, err, sizeof err), 0);
  assert_int_equal(p.workers, 4);
  assert_string_equal(p.workers_from, "DMLC_NUM_WORKER");
}

/* The shard list: PMX_SERVERS, else cluster.ps; the listen address of a ps task. */
static void test_servers_and_listen(void** state) {
  (void)state;
  char* list;
  const char* from;
  char err[256] = "", addr[64];
  const char* worker[] = {"TF_CONFIG", TF_TASK("worker", 1), NULL};
  assert_int_equal(px_place_servers(table_get, (void*)worker, &list, &from, err, sizeof err), 0);
  assert_string_equal(list, "job-ps-0:2222,job-ps-1:2223");
  assert_string_equal(from, "TF_CONFIG");
  free(list);
  const char* both[] = {"TF_CONFIG", "{", "PMX_SERVERS", "a:1,b:2", NULL};
  assert_int_equal(px_place_servers(table_get, (void*)both, &list, &from, err, sizeof err), 0);
  assert_string_equal(list, "a:1,b:2");
  assert_string_equal(from, "PMX_SERVERS");
  free(list);
  const char* none[] = {"HOME", "/", NULL};
  assert_int_equal(px_place_servers(table_get, (void*)none, &list, &from, err, sizeof err), 0);
  assert_null(list);
  assert_null(from);
  const char* no_ps[] = {"TF_CONFIG", "{\"cluster\": {\"worker\": [\"w:1\"]}}", NULL};
  assert_int_equal(px_place_servers(table_get, (void*)no_ps, &list, &from, err, sizeof err), 0);
  assert_null(list);
  const char* bad[] = {"TF_CONFIG", "[]", NULL};
  assert_int_equal(px_place_servers(table_get, (void*)bad, &list, &from, err, sizeof err), -1);
  assert_string_equal(err, "TF_CONFIG has no \"cluster\" object");

  const char* ps[] = {"TF_CONFIG", TF_TASK("ps", 1), NULL};
  assert_int_equal(px_place_listen(table_get, (void*)ps, addr, sizeof addr, err, sizeof err), 0);
  assert_string_equal(addr, "0.0.0.0:2223");
  assert_int_equal(px_place_listen(table_get, (void*)worker, addr, sizeof addr, err,
                                   sizeof err), 0);
  assert_string_equal(addr, "");
  assert_int_equal(px_place_listen(table_get, (void*)none, addr, sizeof addr, err, sizeof err),
                   0);
  assert_string_equal(addr, "");
  assert_int_equal(px_place_listen(table_get, (void*)bad, addr, sizeof addr, err, sizeof err),
                   -1);
}

/* The lists messages name, in the order the variables are read. */
static void test_sources(void** state) {
  (void)state;
  char b[512];
  px_place_sources(false, false, b, sizeof b);
  assert_string_equal(b, "PMX_RANK, DMLC_WORKER_ID with DMLC_ROLE=worker, TF_CONFIG of a "
                         "chief or worker task, RANK, "
                         "OMPI_COMM_WORLD_RANK, PMIX_RANK, PMI_RANK, SLURM_PROCID, "
                         "JOB_COMPLETION_INDEX");
  px_place_sources(false, true, b, sizeof b);
  assert_string_equal(b, "PMX_WORLD_SIZE, DMLC_NUM_WORKER with DMLC_ROLE=worker, TF_CONFIG of "
                         "a chief or worker task, WORLD_SIZE, "
                         "OMPI_COMM_WORLD_SIZE, PMI_SIZE, SLURM_NTASKS");
  px_place_sources(true, false, b, sizeof b);
  assert_string_equal(b, "PMX_SHARD, TF_CONFIG of a ps task, OMPI_COMM_WORLD_RANK, PMIX_RANK, "
                         "PMI_RANK, SLURM_PROCID, "
                         "HOSTNAME with KUBERNETES_SERVICE_HOST set");
  px_place_sources(true, true, b, sizeof b);
  assert_string_equal(b, "PMX_SHARDS, DMLC_NUM_SERVER with DMLC_ROLE=server, TF_CONFIG of a ps "
                         "task");
  px_place_sources(false, false, b, 12); /* cut, still a string */
  assert_true(strlen(b) < 12);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_each_convention),
      cmocka_unit_test(test_precedence),
      cmocka_unit_test(test_refusals),
      cmocka_unit_test(test_servers),
      cmocka_unit_test(test_tf_config),
      cmocka_unit_test(test_servers_and_listen),
      cmocka_unit_test(test_sources),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
