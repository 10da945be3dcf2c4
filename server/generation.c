/* Recovery generations (generation.h). */
#include "generation.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint.h"
#include "util/log.h"

#define MARKER "recovery"
#define MAX_LISTED 1024

int px_gen_init(px_gen* g, const char* dir, char* err, size_t errlen) {
  memset(g, 0, sizeof *g);
  pthread_mutex_init(&g->mu, NULL);
  g->dir = dir;
  if (!dir) return 0;
  char path[700];
  snprintf(path, sizeof path, "%s/" MARKER, dir);
  FILE* f = fopen(path, "r");
  if (!f) {
    if (errno == ENOENT) return 0;
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return -1;
  }
  unsigned long long gen = 0, v = 0;
  int ok = fscanf(f, "%llu %llu", &gen, &v) == 2;
  fclose(f);
  if (!ok) {
    snprintf(err, errlen, "%s: not \"GENERATION VERSION\" (move it away to forget the shard's "
             "recovery generations)", path);
    return -1;
  }
  g->gen = gen;
  g->version = v;
  return 0;
}

void px_gen_deinit(px_gen* g) { pthread_mutex_destroy(&g->mu); }

/* Writes "G V" to dir/recovery through a renamed temporary file. */
static int persist(const px_gen* g, uint64_t gen, uint64_t version, char* err, size_t errlen) {
  if (!g->dir) return 0;
  char path[700], tmp[720];
  snprintf(path, sizeof path, "%s/" MARKER, g->dir);
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  char line[64];
  int n = snprintf(line, sizeof line, "%" PRIu64 " %" PRIu64 "\n", gen, version);
  bool ok = fd >= 0 && write(fd, line, (size_t)n) == n && fsync(fd) == 0;
  if (fd >= 0 && close(fd) != 0) ok = false;
  if (ok && rename(tmp, path) != 0) ok = false;
  if (!ok) {
    snprintf(err, errlen, "cannot record recovery generation %" PRIu64 " in %s: %s", gen, path,
             strerror(errno));
    unlink(tmp);
    return -1;
  }
  return 0;
}

/* Whether this shard can restart at version: from its checkpoint there, or (version 0)
 * from nothing when it never wrote one. Else err names what it has. */
static bool can_restart_at(const px_gen* g, uint64_t version, char* err, size_t errlen) {
  uint64_t vs[MAX_LISTED];
  size_t n = g->dir ? px_ckpt_list(g->dir, vs, MAX_LISTED) : 0;
  if (n > MAX_LISTED) n = MAX_LISTED;
  if (version == 0 && n == 0) return true;
  for (size_t i = 0; i < n; i++)
    if (vs[i] == version) return true;
  if (!g->dir) {
    snprintf(err, errlen, "it runs without --checkpoint-dir, so it keeps no earlier version");
    return false;
  }
  int len = snprintf(err, errlen, "it has no checkpoint at version %" PRIu64 " in %s (%s", version,
                     g->dir, n ? "its checkpoints: " : "none there");
  for (size_t i = 0; i < n && i < 8 && len > 0 && (size_t)len < errlen; i++)
    len += snprintf(err + len, errlen - (size_t)len, "%s%" PRIu64, i ? ", " : "", vs[i]);
  if (len > 0 && (size_t)len < errlen)
    snprintf(err + len, errlen - (size_t)len, "; --keep more checkpoints so that every shard has "
             "the version another one restarts from)");
  return false;
}

px_gen_action px_gen_decide(px_gen* g, uint64_t gen, uint64_t version, uint64_t vmin,
                            uint64_t vmax, bool fresh, char* err, size_t errlen) {
  pthread_mutex_lock(&g->mu);
  px_gen_action a;
  if (gen < g->gen) {
    snprintf(err, errlen, "recovery generation %" PRIu64 " is over: this shard is in generation "
             "%" PRIu64 " (version %" PRIu64 ")", gen, g->gen, g->version);
    a = PX_GEN_STALE;
  } else if (gen == g->gen || g->restart_pending) {
    a = PX_GEN_CURRENT;
  } else if (vmin == version && vmax == version) {
    /* At the version already. A shard that served since its start may hold contributions
     * to the next step (and pushes to it may be in flight) from before the recovery, which
     * the shards that restarted no longer have: it restarts too, from its checkpoint at
     * the version (written first when it has none), so that every shard begins the
     * generation alike, under a new server id. */
    if (fresh || (!g->dir && version > 0))
      a = PX_GEN_IN_PLACE;
    else if (can_restart_at(g, version, err, errlen))
      a = PX_GEN_RESTART;
    else {
      snprintf(err, errlen, "this shard is writing its checkpoint at version %" PRIu64
               " to restart from it", version);
      a = PX_GEN_SAVE;
    }
  } else if (vmax > version) {
    a = can_restart_at(g, version, err, errlen) ? PX_GEN_RESTART : PX_GEN_CANNOT;
  } else if (fresh) {
    /* restarted from an older checkpoint than the request assumed: look again */
    snprintf(err, errlen, "this shard restarted at version %" PRIu64 ", below %" PRIu64
             ": it cannot go forward by itself", vmin, version);
    a = PX_GEN_STALE;
  } else {
    snprintf(err, errlen, "this shard is at version %" PRIu64 ", behind %" PRIu64 ": pushes "
             "in flight have not all landed", vmin, version);
    a = PX_GEN_BEHIND;
  }
  if ((a == PX_GEN_IN_PLACE || a == PX_GEN_RESTART) && persist(g, gen, version, err, errlen) != 0)
    a = PX_GEN_CANNOT;
  if (a == PX_GEN_IN_PLACE || a == PX_GEN_RESTART) {
    g->gen = gen;
    g->version = version;
    g->taken = true;
    g->restart_pending = a == PX_GEN_RESTART;
  }
  pthread_mutex_unlock(&g->mu);
  return a;
}

void px_gen_get(px_gen* g, uint64_t* gen, uint64_t* version, bool* pending) {
  pthread_mutex_lock(&g->mu);
  if (gen) *gen = g->gen;
  if (version) *version = g->version;
  if (pending) *pending = g->restart_pending;
  pthread_mutex_unlock(&g->mu);
}

bool px_gen_untouched(px_gen* g) {
  pthread_mutex_lock(&g->mu);
  bool u = !g->restarted && !g->taken;
  pthread_mutex_unlock(&g->mu);
  return u;
}

void px_gen_set_aside_newer(const char* dir, uint64_t version) {
  if (!dir) return;
  uint64_t vs[MAX_LISTED];
  size_t n = px_ckpt_list(dir, vs, MAX_LISTED);
  if (n > MAX_LISTED) n = MAX_LISTED;
  size_t newer = 0; /* vs is newest first */
  while (newer < n && vs[newer] > version) newer++;
  if (newer) px_info("going back to version %" PRIu64 ": %zu newer checkpoint%s set aside",
                     version, newer, newer == 1 ? "" : "s");
  px_ckpt_set_aside(dir, vs, newer, ".rolled-back");
}

void px_gen_restarted(px_gen* g, uint64_t gen, uint64_t version) {
  pthread_mutex_lock(&g->mu);
  g->gen = gen;
  g->version = version;
  g->restarted = true;
  pthread_mutex_unlock(&g->mu);
}
