/* Where a worker (or a server shard, below) stands in its job, from the variables its
 * launcher set: PMX_RANK and PMX_WORLD_SIZE first (paramex-launch), else the conventions
 * users already have:
 *   frameworks  ps-lite/BytePS DMLC_WORKER_ID / DMLC_NUM_WORKER (with DMLC_ROLE=worker),
 *               TensorFlow's TF_CONFIG (a chief or worker task: tf_config.h),
 *               torchrun RANK / WORLD_SIZE;
 *   schedulers  Open MPI OMPI_COMM_WORLD_RANK / _SIZE, PMIx PMIX_RANK, PMI PMI_RANK /
 *               PMI_SIZE, Slurm SLURM_PROCID / SLURM_NTASKS, Kubernetes Indexed Jobs
 *               JOB_COMPLETION_INDEX (no size: give PMX_WORLD_SIZE).
 * A framework's variables win over a scheduler's (torchrun under Slurm); two frameworks
 * that disagree are an error naming both; among schedulers the innermost wins (mpirun
 * inside a Slurm allocation: MPI's). The environment is read through get (getenv in the
 * library, a table in tests). */
#ifndef PX_PLACE_H
#define PX_PLACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef const char* (*px_getenv_fn)(const char* name, void* ctx);

typedef struct px_place {
  int64_t rank, world;        /* -1: nothing says */
  int64_t workers;            /* px_place_server only: the workers a step waits for */
  char rank_from[48], world_from[48], workers_from[48]; /* the variable each came from,
                                                            e.g. "SLURM_PROCID" */
} px_place;

/* 0, or -1 with err naming the variable(s): a value that is not a number below
 * UINT32_MAX, or two frameworks that disagree. */
int px_place_worker(px_getenv_fn get, void* ctx, px_place* out, char* err, size_t errlen);

/* A server's shard (rank) and shard count (world) the same way: PMX_SHARD / PMX_SHARDS,
 * then ps-lite's DMLC_NUM_SERVER (count only, with DMLC_ROLE=server) and TF_CONFIG's ps
 * task (its index, the number of ps), then the world rank
 * of mpirun MPMD (servers first: OMPI_COMM_WORLD_RANK, PMIX_RANK, PMI_RANK; no count),
 * Slurm's SLURM_PROCID (not SLURM_NTASKS, which counts a batch script's tasks too), a
 * Kubernetes StatefulSet pod's ordinal (HOSTNAME "name-N", with KUBERNETES_SERVICE_HOST
 * set). Also -1 when the shard is not below the count. And the workers a step waits for:
 * PMX_WORKERS, ps-lite's DMLC_NUM_WORKER (DMLC_ROLE=server), TF_CONFIG's chiefs and
 * workers (a ps task). */
int px_place_server(px_getenv_fn get, void* ctx, px_place* out, char* err, size_t errlen);

/* The shard list a worker connects to: PMX_SERVERS, else TF_CONFIG's cluster.ps (*from
 * says which; static). *list is malloc'd, NULL when neither is set. 0, or -1 with err
 * (TF_CONFIG malformed). */
int px_place_servers(px_getenv_fn get, void* ctx, char** list, const char** from, char* err,
                     size_t errlen);

/* The address a server listens on when neither --listen nor PMX_LISTEN says: a TF_CONFIG
 * ps task's own port in cluster.ps, on every interface ("0.0.0.0:2222"); "" when nothing
 * says. 0, or -1 with err. */
int px_place_listen(px_getenv_fn get, void* ctx, char* buf, size_t cap, char* err,
                    size_t errlen);

/* The process's own environment (getenv) as a px_getenv_fn. */
const char* px_place_getenv(const char* name, void* ctx);

/* The variables that can give a worker's (server false) or a server's index (size false)
 * or count, in the order they are read, for messages: "PMX_RANK, DMLC_WORKER_ID with
 * DMLC_ROLE=worker, RANK, ...". */
void px_place_sources(bool server, bool size, char* buf, size_t cap);

#endif
