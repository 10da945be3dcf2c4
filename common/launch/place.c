/* A worker's rank and world size from its launcher's variables (place.h). */
#include "launch/place.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One convention: where the index and the count are (NULL: it has none); role: a
 * variable that must say role_value (ps-lite's DMLC_ROLE), or only be set (role_value
 * NULL: Kubernetes' KUBERNETES_SERVICE_HOST); ordinal: the index is the number after the
 * last '-' of the value (a StatefulSet pod's HOSTNAME, "paramex-3"). The first entry of a
 * table is paramex's own. */
typedef struct convention {
  const char *rank, *size, *role, *role_value;
  bool framework, ordinal;
} convention;

static const convention k_workers[] = {
    {"PMX_RANK", "PMX_WORLD_SIZE", NULL, NULL, true, false},
    {"DMLC_WORKER_ID", "DMLC_NUM_WORKER", "DMLC_ROLE", "worker", true, false},
    {"RANK", "WORLD_SIZE", NULL, NULL, true, false},
    {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", NULL, NULL, false, false},
    {"PMIX_RANK", NULL, NULL, NULL, false, false},
    {"PMI_RANK", "PMI_SIZE", NULL, NULL, false, false},
    {"SLURM_PROCID", "SLURM_NTASKS", NULL, NULL, false, false},
    {"JOB_COMPLETION_INDEX", NULL, NULL, NULL, false, false},
};

/* Servers: ps-lite names only their count; under mpirun MPMD (servers first) the world
 * rank is the shard, not the world size; a StatefulSet pod's ordinal is its shard. */
static const convention k_servers[] = {
    {"PMX_SHARD", "PMX_SHARDS", NULL, NULL, true, false},
    {NULL, "DMLC_NUM_SERVER", "DMLC_ROLE", "server", true, false},
    {"OMPI_COMM_WORLD_RANK", NULL, NULL, NULL, false, false},
    {"PMIX_RANK", NULL, NULL, NULL, false, false},
    {"PMI_RANK", NULL, NULL, NULL, false, false},
    {"SLURM_PROCID", NULL, NULL, NULL, false, false}, /* not SLURM_NTASKS: a batch script's */
    {"HOSTNAME", NULL, "KUBERNETES_SERVICE_HOST", NULL, false, true},
};

/* *v from variable name (-1 when unset; ordinal: from its last '-'); -1 with err when it
 * is not a number. */
static int number(px_getenv_fn get, void* ctx, const char* name, bool ordinal, int64_t* v,
                  char* err, size_t errlen) {
  *v = -1;
  const char* s = name ? get(name, ctx) : NULL;
  if (s && ordinal) {
    const char* dash = strrchr(s, '-');
    if (!dash || !dash[1] || strspn(dash + 1, "0123456789") != strlen(dash + 1))
      return 0; /* not a StatefulSet pod's name (a Deployment's ends in letters) */
    s = dash + 1;
  }
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
static int pick(const convention* table, size_t n, const char* what, px_getenv_fn get,
                void* ctx, bool want_size, int64_t* v, char* from, size_t fromcap, char* err,
                size_t errlen) {
  const char* sched_from = NULL;
  int64_t sched = -1;
  *v = -1;
  for (size_t i = 0; i < n; i++) {
    const convention* k = &table[i];
    const char* name = want_size ? k->size : k->rank;
    if (!name) continue;
    if (k->role) {
      const char* r = get(k->role, ctx);
      if (!r || (k->role_value && strcmp(r, k->role_value) != 0)) continue; /* another role */
    }
    int64_t x;
    if (number(get, ctx, name, k->ordinal && !want_size, &x, err, errlen) != 0) return -1;
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
               want_size ? table[0].size : table[0].rank);
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

const char* px_place_getenv(const char* name, void* ctx) {
  (void)ctx;
  return getenv(name);
}

void px_place_sources(bool server, bool size, char* buf, size_t cap) {
  const convention* table = server ? k_servers : k_workers;
  const size_t n = server ? sizeof k_servers / sizeof k_servers[0]
                          : sizeof k_workers / sizeof k_workers[0];
  size_t len = 0;
  buf[0] = 0;
  for (size_t i = 0; i < n && len < cap; i++) {
    const convention* k = &table[i];
    const char* name = size ? k->size : k->rank;
    if (!name) continue;
    int w = k->role && k->role_value
                ? snprintf(buf + len, cap - len, "%s%s with %s=%s", len ? ", " : "", name,
                           k->role, k->role_value)
            : k->role ? snprintf(buf + len, cap - len, "%s%s with %s set", len ? ", " : "", name,
                                 k->role)
                      : snprintf(buf + len, cap - len, "%s%s", len ? ", " : "", name);
    if (w < 0) break;
    len += (size_t)w;
  }
}

int px_place_worker(px_getenv_fn get, void* ctx, px_place* out, char* err, size_t errlen) {
  const size_t n = sizeof k_workers / sizeof k_workers[0];
  *out = (px_place){.rank = -1, .world = -1};
  if (pick(k_workers, n, "rank", get, ctx, false, &out->rank, out->rank_from,
           sizeof out->rank_from, err, errlen) != 0)
    return -1;
  return pick(k_workers, n, "world size", get, ctx, true, &out->world, out->world_from,
              sizeof out->world_from, err, errlen);
}

int px_place_server(px_getenv_fn get, void* ctx, px_place* out, char* err, size_t errlen) {
  const size_t n = sizeof k_servers / sizeof k_servers[0];
  *out = (px_place){.rank = -1, .world = -1};
  if (pick(k_servers, n, "shard", get, ctx, false, &out->rank, out->rank_from,
           sizeof out->rank_from, err, errlen) != 0 ||
      pick(k_servers, n, "shard count", get, ctx, true, &out->world, out->world_from,
           sizeof out->world_from, err, errlen) != 0)
    return -1;
  if (out->rank >= 0 && out->world >= 0 && out->rank >= out->world) {
    snprintf(err, errlen, "the shard is %lld by %s, not below the shard count %lld by %s",
             (long long)out->rank, out->rank_from, (long long)out->world, out->world_from);
    return -1;
  }
  return 0;
}
