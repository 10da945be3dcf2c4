/* pmx_test_worker: one worker of the end-to-end tests, driving libparamex as a user would.
 *
 *   pmx_test_worker --server ADDR --rank R --world N --steps S --out FILE
 *                   [--a-numel N] [--dup-step K] [--progress] [--timeout-ms MS]
 *                   [--connect-timeout-ms MS] [--progress-every K] [--resync]
 *
 * Joins, declares "a" and "b" (model.h) with explicit initial values, pulls version 0,
 * then for each step s: computes its gradients from the pulled parameters, pushes step s
 * and pulls version s+1 (odd steps overlap pmx_push_async with pmx_pull_async, steps
 * 2, 6, ... use pmx_push_pull). With
 * --dup-step K it pushes step K twice more (once before and once after the pull of K+1),
 * as a retry would. --progress prints "step N" on stdout after each of the first 16
 * steps, --progress-every K after every step s with s % K == 0. Writes the final
 * parameters (a then b, raw f32) to FILE. --connect-timeout-ms bounds pmx_join's wait for
 * the server (default 20000).
 *
 * --resync (the recovery path of an application): the first step is the version the
 * initial pull returned (so a restarted worker continues where the job is; it prints
 * "start step V"), and a push or pull that fails PMX_ERR_ABORTED (the server restarted
 * from a checkpoint, or from nothing) is followed by pmx_resume, which gives the step to
 * resume from; the worker prints "resync at step S: resuming at step V" each time and
 * "resyncs N" at the end. Gradients depend
 * only on (rank, step, parameters), so a resumed run ends with the bits of an
 * uninterrupted one.
 * Exit 0 on success, 1 when a paramex call failed (one line on stderr), 2 on bad usage. */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "paramex/paramex.h"

static uint32_t g_rank;

static void die_pmx(const char* what, uint64_t step, pmx_status st) {
  fprintf(stderr, "pmx_test_worker[rank %" PRIu32 "]: %s (step %" PRIu64 "): %s: %s\n", g_rank,
          what, step, pmx_strerror(st), pmx_last_error());
  exit(1);
}

static void die(const char* msg) {
  fprintf(stderr, "pmx_test_worker[rank %" PRIu32 "]: %s\n", g_rank, msg);
  exit(1);
}

static uint64_t parse_u64(const char* flag, const char* v) {
  char* end = NULL;
  if (!v || !*v || *v == '-') goto bad;
  unsigned long long x = strtoull(v, &end, 10);
  if (*end) goto bad;
  return (uint64_t)x;
bad:
  fprintf(stderr, "pmx_test_worker: %s: bad value '%s'\n", flag, v ? v : "");
  exit(2);
}

int main(int argc, char** argv) {
  const char* server = NULL;
  const char* out_path = NULL;
  uint64_t rank = 0, world = 0, steps = 0, a_numel = PX_IT_DEFAULT_A_NUMEL;
  int64_t dup_step = -1, timeout_ms = 60000, connect_timeout_ms = 20000;
  uint64_t progress_every = 0;
  bool progress = false, resync = false;
  for (int i = 1; i < argc; i++) {
    const char* f = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(f, "--progress")) {
      progress = true;
      continue;
    }
    if (!strcmp(f, "--resync")) {
      resync = true;
      continue;
    }
    if (!v) {
      fprintf(stderr, "pmx_test_worker: %s needs a value\n", f);
      return 2;
    }
    i++;
    if (!strcmp(f, "--server")) server = v;
    else if (!strcmp(f, "--out")) out_path = v;
    else if (!strcmp(f, "--rank")) rank = parse_u64(f, v);
    else if (!strcmp(f, "--world")) world = parse_u64(f, v);
    else if (!strcmp(f, "--steps")) steps = parse_u64(f, v);
    else if (!strcmp(f, "--a-numel")) a_numel = parse_u64(f, v);
    else if (!strcmp(f, "--dup-step")) dup_step = (int64_t)parse_u64(f, v);
    else if (!strcmp(f, "--timeout-ms")) timeout_ms = (int64_t)parse_u64(f, v);
    else if (!strcmp(f, "--connect-timeout-ms")) connect_timeout_ms = (int64_t)parse_u64(f, v);
    else if (!strcmp(f, "--progress-every")) progress_every = parse_u64(f, v);
    else {
      fprintf(stderr, "pmx_test_worker: unknown flag %s\n", f);
      return 2;
    }
  }
  if (!server || !out_path || world == 0 || rank >= world || a_numel == 0 || rank > UINT32_MAX ||
      world > UINT32_MAX) {
    fprintf(stderr, "usage: pmx_test_worker --server ADDR --rank R --world N --steps S --out FILE "
                    "[--a-numel N] [--dup-step K] [--progress] [--timeout-ms MS] "
                    "[--connect-timeout-ms MS] [--progress-every K] [--resync]\n");
    return 2;
  }
  g_rank = (uint32_t)rank;

  size_t numel[PX_IT_NTENSORS] = {(size_t)a_numel, PX_IT_B_ROWS * PX_IT_B_COLS};
  float* params[PX_IT_NTENSORS];
  float* grads[PX_IT_NTENSORS];
  for (int t = 0; t < PX_IT_NTENSORS; t++) {
    params[t] = malloc(numel[t] * sizeof(float));
    grads[t] = malloc(numel[t] * sizeof(float));
    if (!params[t] || !grads[t]) die("out of memory");
  }

  pmx_options opts = {.timeout_ms = timeout_ms, .connect_timeout_ms = connect_timeout_ms,
                      .retry_timeout_ms = timeout_ms};
  pmx_client* c = NULL;
  pmx_status st = pmx_connect(server, &opts, &c);
  if (st != PMX_OK) die_pmx("pmx_connect", 0, st);
  pmx_join_info info;
  st = pmx_join(c, (uint32_t)rank, (uint32_t)world, &info);
  if (st != PMX_OK) die_pmx("pmx_join", 0, st);
  if (info.worker_id != rank || info.world_size != world) die("pmx_join: unexpected join info");

  pmx_tensor* tensors[PX_IT_NTENSORS];
  for (int t = 0; t < PX_IT_NTENSORS; t++) {
    /* Every worker sends the initial values; only the creating call uses them. */
    if (px_it_init(t, grads[t], numel[t]) != 0) die("initializer failed");
    uint64_t shape_a[1] = {a_numel};
    uint64_t shape_b[2] = {PX_IT_B_ROWS, PX_IT_B_COLS};
    st = pmx_declare(c, px_it_tensor_name(t), PMX_F32, t == 0 ? shape_a : shape_b,
                     t == 0 ? 1 : 2, grads[t], NULL, &tensors[t]);
    if (st != PMX_OK) die_pmx("pmx_declare", 0, st);
    if (pmx_tensor_numel(tensors[t]) != numel[t] ||
        pmx_tensor_bytes(tensors[t]) != numel[t] * sizeof(float) ||
        pmx_tensor_num_chunks(tensors[t]) == 0)
      die("pmx_declare: the tensor's facts do not match its shape");
  }
  void* dst[PX_IT_NTENSORS] = {params[0], params[1]};
  const void* src[PX_IT_NTENSORS] = {grads[0], grads[1]};
  uint64_t versions[PX_IT_NTENSORS];

  uint64_t s = 0, resyncs = 0;
  if (resync) {
    /* where the job is (a restarted worker continues there) */
    st = pmx_resume(c, PX_IT_NTENSORS, tensors, dst, &s);
    if (st != PMX_OK) die_pmx("pmx_resume", 0, st);
    if (s > 0) {
      printf("start step %" PRIu64 "\n", s);
      fflush(stdout);
    }
  } else {
    st = pmx_pull(c, PX_IT_NTENSORS, tensors, dst, 0, versions);
    if (st != PMX_OK) die_pmx("pmx_pull", 0, st);
  }
  while (s < steps) {
    for (int t = 0; t < PX_IT_NTENSORS; t++)
      if (px_it_grad(t, (uint32_t)rank, s, params[t], grads[t], numel[t]) != 0)
        die("gradient failed");
    bool dup = (int64_t)s == dup_step;
    pmx_status aborted = PMX_OK; /* PMX_ERR_ABORTED when --resync must resynchronise */
    if (s % 2 == 1 && !dup) {
      /* Overlap: the pull of s+1 is parked until every push of s (ours included) is in. */
      pmx_op* push_op = NULL;
      pmx_op* pull_op = NULL;
      st = pmx_push_async(c, s, PX_IT_NTENSORS, tensors, src, &push_op);
      if (st != PMX_OK) die_pmx("pmx_push_async", s, st);
      st = pmx_pull_async(c, PX_IT_NTENSORS, tensors, dst, s + 1, versions, &pull_op);
      if (st != PMX_OK) {
        pmx_op_wait(push_op);
        die_pmx("pmx_pull_async", s, st);
      }
      pmx_status st_push = pmx_op_wait(push_op);
      char push_err[512];
      snprintf(push_err, sizeof push_err, "%s", st_push == PMX_OK ? "" : pmx_last_error());
      pmx_status st_pull = pmx_op_wait(pull_op);
      bool push_ok = st_push == PMX_OK || (resync && st_push == PMX_ERR_ABORTED);
      bool pull_ok = st_pull == PMX_OK || (resync && st_pull == PMX_ERR_ABORTED);
      if (!push_ok || !pull_ok) {
        const bool push_failed = !push_ok;
        fprintf(stderr, "pmx_test_worker[rank %" PRIu32 "]: pmx_op_wait(%s) (step %" PRIu64 "): %s: %s "
                "(the overlapped %s ended %s)\n", g_rank, push_failed ? "push" : "pull", s,
                pmx_strerror(push_failed ? st_push : st_pull),
                push_failed ? push_err : pmx_last_error(), push_failed ? "pull" : "push",
                pmx_strerror(push_failed ? st_pull : st_push));
        exit(1);
      }
      if (st_push == PMX_ERR_ABORTED || st_pull == PMX_ERR_ABORTED) aborted = PMX_ERR_ABORTED;
    } else if (s % 4 == 2 && !dup) {
      /* the pipelined form: pull of s+1 started first, then the push */
      st = pmx_push_pull(c, s, PX_IT_NTENSORS, tensors, src, dst, versions);
      if (resync && st == PMX_ERR_ABORTED) aborted = st;
      else if (st != PMX_OK) die_pmx("pmx_push_pull", s, st);
    } else {
      st = pmx_push(c, s, PX_IT_NTENSORS, tensors, src);
      if (resync && st == PMX_ERR_ABORTED) aborted = st;
      else if (st != PMX_OK) die_pmx("pmx_push", s, st);
      if (!aborted && dup) {
        st = pmx_push(c, s, PX_IT_NTENSORS, tensors, src);
        if (st != PMX_OK) die_pmx("pmx_push (retry before pull)", s, st);
      }
      if (!aborted) {
        st = pmx_pull(c, PX_IT_NTENSORS, tensors, dst, s + 1, versions);
        if (resync && st == PMX_ERR_ABORTED) aborted = st;
        else if (st != PMX_OK) die_pmx("pmx_pull", s, st);
      }
      if (!aborted && dup) {
        st = pmx_push(c, s, PX_IT_NTENSORS, tensors, src);
        if (st != PMX_OK) die_pmx("pmx_push (retry after pull)", s, st);
      }
    }
    if (aborted) {
      /* The server went back to a checkpoint (or to nothing): pmx_resume says where the
       * job is, following a server that restarts again meanwhile. */
      uint64_t v = 0;
      st = pmx_resume(c, PX_IT_NTENSORS, tensors, dst, &v);
      if (st != PMX_OK) die_pmx("pmx_resume", s, st);
      resyncs++;
      printf("resync at step %" PRIu64 ": resuming at step %" PRIu64 "\n", s, v);
      fflush(stdout);
      s = v;
      continue;
    }
    for (int t = 0; t < PX_IT_NTENSORS; t++)
      if (versions[t] != s + 1) {
        fprintf(stderr, "pmx_test_worker[rank %" PRIu64 "]: pull of step %" PRIu64
                        " returned version %" PRIu64 " for %s, want %" PRIu64 "\n",
                rank, s, versions[t], px_it_tensor_name(t), s + 1);
        return 1;
      }
    if ((progress && s < 16) || (progress_every && s % progress_every == 0)) {
      printf("step %" PRIu64 "\n", s);
      fflush(stdout);
    }
    s++;
  }
  if (resync) {
    printf("resyncs %" PRIu64 "\n", resyncs);
    fflush(stdout);
  }

  pmx_client_stats cs;
  pmx_client_get_stats(c, &cs);
  if (cs.checksum_failures != 0) die("the client saw checksum failures");
  pmx_client_destroy(c);

  FILE* f = fopen(out_path, "wb");
  if (!f) die("cannot open --out");
  for (int t = 0; t < PX_IT_NTENSORS; t++)
    if (fwrite(params[t], sizeof(float), numel[t], f) != numel[t]) die("cannot write --out");
  if (fclose(f) != 0) die("cannot write --out");
  for (int t = 0; t < PX_IT_NTENSORS; t++) {
    free(params[t]);
    free(grads[t]);
  }
  return 0;
}
