/* A worker's rank and world size from its launcher's variables (place.h). */
#include "launch/place.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One convention: where the rank and the size are (size NULL: it has none), and, for
 * ps-lite, the role variable that must say "worker". */
typedef struct convention {
  const char *rank, *size, *role, *role_value;
  bool framework;
} convention;

static const convention k_conventions[] = {
    {"PMX_RANK", "PMX_WORLD_SIZE", NULL, NULL, true},
    {"DMLC_WORKER_ID", "DMLC_NUM_WORKER", "DMLC_ROLE", "worker", true},
    {"RANK", "WORLD_SIZE", NULL, NULL, true},
    {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", NULL, NULL, false},
    {"PMIX_RANK", NULL, NULL, NULL, false},
    {"PMI_RANK", "PMI_SIZE", NULL, NULL, false},
    {"SLURM_PROCID", "SLURM_NTASKS", NULL, NULL, false},
    {"JOB_COMPLETION_INDEX", NULL, NULL, NULL, false},
};

/* *v from variable name (-1 when unset); -1 with err when it is not a number. */
static int number(px_getenv_fn get, void* ctx, const char* name, int64_t* v, char* err,
                  size_t errlen) {
  *v = -1;
  const char* s = name ? get(name, ctx) : NULL;
  if (!s || !*s) return 0;
  char* end = NULL;
  errno = 0;
  unsigned long long x = s[0] >= '0' && s[0] <= '9' ? strtoull(s, &end, 10) : ~0ull;
  if (x >= UINT32_MAX || errno != 0 || !end || *end) {
    snprintf(err, errlen, "%s=%.40s is not a number below %u", name, s, UINT32_MAX);
    return -1;
  }
  *v = (int64_t)x;
  return 0;
}

/* One field (rank: want_size false; world size: true): PMX_* as it is; else the frameworks'
 * value (two that disagree: an error); else the first scheduler's in the table's order. */
static int pick(px_getenv_fn get, void* ctx, bool want_size, int64_t* v, char* from,
                size_t fromcap, char* err, size_t errlen) {
  const char* what = want_size ? "world size" : "rank";
  const size_t n = sizeof k_conventions / sizeof k_conventions[0];
  const char* sched_from = NULL;
  int64_t sched = -1;
  *v = -1;
  for (size_t i = 0; i < n; i++) {
    const convention* k = &k_conventions[i];
    const char* name = want_size ? k->size : k->rank;
    if (!name) continue;
    if (k->role) {
      const char* r = get(k->role, ctx);
      if (!r || strcmp(r, k->role_value) != 0) continue; /* a server or scheduler of it */
    }
    int64_t x;
    if (number(get, ctx, name, &x, err, errlen) != 0) return -1;
    if (x < 0) continue;
    if (i == 0) { /* the launcher's own: wins */
      *v = x;
      snprintf(from, fromcap, "%s", name);
      return 0;
    }
    if (!k->framework) {
      if (sched < 0) {
        sched = x;
        sched_from = name;
      }
      continue;
    }
    if (*v >= 0 && *v != x) {
      snprintf(err, errlen, "the %s is %lld by %s but %lld by %s: unset one of them (or set "
               "%s, which wins)", what, (long long)*v, from, (long long)x, name,
               want_size ? "PMX_WORLD_SIZE" : "PMX_RANK");
      return -1;
    }
    if (*v < 0) {
      *v = x;
      snprintf(from, fromcap, "%s", name);
    }
  }
  if (*v < 0 && sched >= 0) {
    *v = sched;
    snprintf(from, fromcap, "%s", sched_from);
  }
  return 0;
}

int px_place_worker(px_getenv_fn get, void* ctx, px_place* out, char* err, size_t errlen) {
  *out = (px_place){.rank = -1, .world = -1};
  if (pick(get, ctx, false, &out->rank, out->rank_from, sizeof out->rank_from, err, errlen))
    return -1;
  return pick(get, ctx, true, &out->world, out->world_from, sizeof out->world_from, err,
              errlen);
}
