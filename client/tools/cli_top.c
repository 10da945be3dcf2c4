/* paramex top (cli_top.h). */
#include "cli_top.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "rpc/rpc_base.h"
#include "shard/shardmap.h"
#include "util/clock.h"
#include "util/flags.h"
#include "paramex.pb-c.h"

#include "cli_common.h"
#include "cli_model.h"

#define TOP_MAX_RANKS 4096 /* the server's --workers limit: ranks are below it */
#define TOP_TICK_MS 50     /* how often a wait looks at the stop flag */

typedef Paramex__V1__StatsResponse stats_t;

/* One shard: its newest answer and the one before (both NULL after a failure). */
typedef struct top_shard {
  char addr[256];
  stats_t *now, *before;
  uint64_t now_ms, before_ms; /* when they came (monotonic) */
  char err[512];              /* "" when the newest call succeeded */
} top_shard;

/* One worker rank over the shards. */
typedef struct top_worker {
  bool seen, alive, finished, dead;
  uint64_t chunks, steps, last_seen_ms; /* steps: the highest step pushed + 1, any shard */
  char name[96];
} top_worker;

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) {
  (void)sig;
  g_stop = 1;
}

/* Sleeps ms in ticks, ending early once a signal asked to stop. */
static void wait_ms(uint64_t ms) {
  for (uint64_t end = px_now_ms() + ms; !g_stop;) {
    uint64_t t = px_now_ms();
    if (t >= end) return;
    sleep_ms(end - t < TOP_TICK_MS ? end - t : TOP_TICK_MS);
  }
}

static void free_stats(stats_t** r) {
  if (*r) paramex__v1__stats_response__free_unpacked(*r, NULL);
  *r = NULL;
}

/* Calls Stats on every shard: the answer becomes `now`, the previous `now` `before`. */
static void fetch_all(top_shard* sh, uint32_t n, int64_t timeout_ms) {
  for (uint32_t s = 0; s < n && !g_stop; s++) {
    top_shard* t = &sh[s];
    stats_t* r = NULL;
    t->err[0] = '\0';
    int rc = cli_shard_stats(t->addr, timeout_ms, &r, t->err, sizeof t->err);
    uint64_t at = px_now_ms();
    free_stats(&t->before);
    if (rc != 0) {
      free_stats(&t->now);
      if (!t->err[0]) snprintf(t->err, sizeof t->err, "%s: Stats failed", t->addr);
      continue;
    }
    const uint32_t shards = r->shards ? r->shards : 1;
    if (shards != n || r->shard != s) {
      snprintf(t->err, sizeof t->err, "%s is shard %" PRIu32 " of %" PRIu32 " but the list "
               "gives it as shard %" PRIu32 " of %" PRIu32, t->addr, r->shard, shards, s, n);
      free_stats(&t->now);
      free_stats(&r);
      continue;
    }
    t->before = t->now;
    t->before_ms = t->now_ms;
    t->now = r;
    t->now_ms = at;
  }
}

/* (b - a) per second over the time between the two answers into buf, or "-" when there
 * is no earlier answer of the same server or the counter went back. bytes: as B/s. */
static const char* rate(const top_shard* t, uint64_t a, uint64_t b, bool bytes, char* buf,
                        size_t cap) {
  const bool same = t->before && t->now && t->before->server_id && t->now->server_id &&
                    strcmp(t->before->server_id, t->now->server_id) == 0;
  if (!same || b < a || t->now_ms <= t->before_ms) {
    snprintf(buf, cap, "-");
    return buf;
  }
  double per_s = (double)(b - a) * 1000.0 / (double)(t->now_ms - t->before_ms);
  if (bytes) {
    char h[32];
    snprintf(buf, cap, "%s/s", human_bytes((uint64_t)(per_s + 0.5), h, sizeof h));
  } else {
    snprintf(buf, cap, "%.1f", per_s);
  }
  return buf;
}

/* The bytes of the parameters this shard holds: each tensor's share of its chunks. */
static uint64_t param_bytes(const stats_t* r) {
  uint64_t sum = 0;
  for (size_t i = 0; i < r->n_tensors; i++) {
    const Paramex__V1__TensorStats* t = r->tensors[i];
    if (t->num_chunks == 0 || t->own_chunks >= t->num_chunks)
      sum += t->bytes;
    else
      sum += (uint64_t)((double)t->bytes * t->own_chunks / t->num_chunks);
  }
  return sum;
}

static void shard_row(FILE* out, uint32_t s, const top_shard* t) {
  char addr[64], line[512];
  one_line(t->addr, addr, sizeof addr, '?');
  if (!t->now) {
    fprintf(out, "%5" PRIu32 "  %-21s  error: %s\n", s, addr,
            one_line(t->err, line, sizeof line, ' '));
    return;
  }
  const stats_t* r = t->now;
  const stats_t* b = t->before;
  char ver[48], steps[32], in[32], outr[32], hist[32], frames[32], params[32];
  snprintf(ver, sizeof ver, "%" PRIu64 "..%" PRIu64, r->version_min, r->version_max);
  rate(t, b ? b->version_max : 0, r->version_max, false, steps, sizeof steps);
  rate(t, b ? b->push_wire_bytes : 0, r->push_wire_bytes, true, in, sizeof in);
  rate(t, b ? b->pull_wire_bytes : 0, r->pull_wire_bytes, true, outr, sizeof outr);
  fprintf(out, "%5" PRIu32 "  %-21s  %-13s  %8s  %12s  %12s  %10s  %10s  %10s  %8" PRIu64
               "  %6" PRIu64 "\n",
          s, addr, ver, steps, in, outr, human_bytes(r->history_bytes, hist, sizeof hist),
          human_bytes(r->frame_cache_bytes, frames, sizeof frames),
          human_bytes(param_bytes(r), params, sizeof params), r->checkpoint_version,
          r->checkpoint_failures);
}

/* The workers of every answering shard by rank: chunks pushed summed, last seen the most
 * recent, dead when a shard has it dead, finished when every shard that knows it has it
 * finished. Returns how many ranks were beyond TOP_MAX_RANKS (not shown). */
static size_t gather_workers(const top_shard* sh, uint32_t n, top_worker* w) {
  size_t beyond = 0;
  memset(w, 0, TOP_MAX_RANKS * sizeof *w);
  for (uint32_t s = 0; s < n; s++) {
    const stats_t* r = sh[s].now;
    for (size_t i = 0; r && i < r->n_workers; i++) {
      const Paramex__V1__WorkerStats* ws = r->workers[i];
      if (ws->rank >= TOP_MAX_RANKS) {
        beyond++;
        continue;
      }
      top_worker* x = &w[ws->rank];
      if (!x->seen) {
        x->seen = true;
        x->finished = true;
        x->last_seen_ms = UINT64_MAX;
        one_line(ws->name, x->name, sizeof x->name, '?');
      }
      x->chunks += ws->chunks_pushed;
      if (ws->steps > x->steps) x->steps = ws->steps;
      if (ws->last_seen_ms < x->last_seen_ms) x->last_seen_ms = ws->last_seen_ms;
      x->finished = x->finished && ws->finished;
      x->alive = x->alive || ws->alive;
      x->dead = x->dead || (!ws->alive && !ws->finished);
    }
  }
  return beyond;
}

static void worker_rows(FILE* out, const top_worker* w, size_t beyond) {
  uint64_t most = 0;
  size_t count = 0;
  for (size_t k = 0; k < TOP_MAX_RANKS; k++)
    if (w[k].seen) {
      count++;
      if (w[k].steps > most) most = w[k].steps;
    }
  fprintf(out, "\nworkers (%zu)\n", count);
  if (count)
    fprintf(out, "  %5s  %-24s  %-8s  %10s  %8s  %12s  %14s\n", "RANK", "NAME", "STATE",
            "LAST_SEEN", "STEPS", "BEHIND_STEPS", "CHUNKS_PUSHED");
  for (size_t k = 0; k < TOP_MAX_RANKS; k++) {
    if (!w[k].seen) continue;
    const char* state = w[k].dead ? "dead" : w[k].finished ? "finished" : "alive";
    char seen[32];
    fprintf(out, "  %5zu  %-24s  %-8s  %10s  %8" PRIu64 "  %12" PRIu64 "  %14" PRIu64 "\n", k,
            w[k].name, state, human_duration(w[k].last_seen_ms, seen, sizeof seen), w[k].steps,
            most - w[k].steps, w[k].chunks);
  }
  if (beyond) fprintf(out, "  (%zu workers with a rank above %d not shown)\n", beyond, TOP_MAX_RANKS);
}

/* One frame on stdout. Returns how many shards failed. */
static uint32_t frame(const top_shard* sh, uint32_t n, top_worker* w, double interval,
                      bool tty) {
  FILE* out = stdout;
  uint32_t failed = 0;
  char stamp[32];
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", &tm);
  if (tty) fputs("\033[H\033[2J", out);
  fprintf(out, "paramex top  %s  every %.2f s  %" PRIu32 " shard%s\n\n", stamp, interval, n,
          n == 1 ? "" : "s");
  fprintf(out, "%5s  %-21s  %-13s  %8s  %12s  %12s  %10s  %10s  %10s  %8s  %6s\n", "SHARD",
          "ADDRESS", "VERSION", "STEPS/S", "PUSH_IN/S", "PULL_OUT/S", "HISTORY", "FRAMES",
          "PARAMS", "CKPT_VER", "CKPT_F");
  for (uint32_t s = 0; s < n; s++) {
    shard_row(out, s, &sh[s]);
    if (!sh[s].now) failed++;
  }
  worker_rows(out, w, gather_workers(sh, n, w));
  fflush(out);
  return failed;
}

/* The fetch-and-print loop; returns the exit status. */
static int run(top_shard* sh, uint32_t n, double interval, bool once) {
  const uint64_t every_ms = (uint64_t)(interval * 1000.0 + 0.5);
  const int64_t timeout_ms = every_ms * 2 < 1000 ? 1000
                             : every_ms * 2 > STATS_TIMEOUT_MS ? STATS_TIMEOUT_MS
                                                               : (int64_t)every_ms * 2;
  const bool tty = !once && isatty(STDOUT_FILENO);
  top_worker* w = calloc(TOP_MAX_RANKS, sizeof *w);
  if (!w) {
    fprintf(stderr, "paramex: top: out of memory\n");
    return 1;
  }
  int rc = 0;
  fetch_all(sh, n, timeout_ms);
  for (uint64_t frames = 0; !g_stop; frames++) {
    uint64_t next = px_now_ms() + every_ms;
    if (once) {
      wait_ms(every_ms); /* a second answer, so that the frame's rates are real */
      if (g_stop) break;
      fetch_all(sh, n, timeout_ms);
      if (g_stop) break;
    }
    if (frames && !tty) fputc('\n', stdout);
    uint32_t failed = frame(sh, n, w, interval, tty);
    if (ferror(stdout)) {
      fprintf(stderr, "paramex: top: cannot write the output\n");
      rc = 1;
      break;
    }
    if (once) {
      for (uint32_t s = 0; s < n; s++)
        if (!sh[s].now) {
          char line[512];
          fprintf(stderr, "paramex: top: shard %" PRIu32 ": %s\n", s,
                  one_line(sh[s].err, line, sizeof line, ' '));
        }
      rc = failed ? 1 : 0;
      break;
    }
    uint64_t t = px_now_ms();
    wait_ms(next > t ? next - t : 0);
    if (!g_stop) fetch_all(sh, n, timeout_ms);
  }
  free(w);
  return rc;
}

int cmd_top(int argc, char** argv) {
  double interval = 1.0;
  bool once = false;
  const px_flag flags[] = {
      {"interval", PX_FLAG_F64, &interval, 0.05, 3600, "SECONDS",
       "time between frames (with --once: between the two fetches a rate needs)"},
      {"once", PX_FLAG_BOOL, &once, 0, 0, NULL,
       "print one frame and exit (1 when a shard did not answer)"},
      CONN_FLAGS,
  };
  const char* list = NULL;
  int rc = parse_cmd("top", flags, sizeof flags / sizeof flags[0], argc, argv, &list);
  if (rc >= 0) return rc;
  char err[256];
  uint32_t n = px_shard_list_count(list, PX_MAX_SHARDS, err, sizeof err);
  if (n == 0) {
    char line[256];
    fprintf(stderr, "paramex top: %s\n", one_line(err, line, sizeof line, ' '));
    return 2;
  }
  top_shard* sh = calloc(n, sizeof *sh);
  if (!sh) {
    fprintf(stderr, "paramex: top: out of memory\n");
    return 1;
  }
  for (uint32_t s = 0; s < n; s++) px_shard_list_get(list, s, sh[s].addr, sizeof sh[s].addr);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  signal(SIGPIPE, SIG_IGN); /* a closed pipe (top | head) is a write error, exit 1 */
  px_rpc_init();
  rc = run(sh, n, interval, once);
  px_rpc_shutdown();
  for (uint32_t s = 0; s < n; s++) {
    free_stats(&sh[s].now);
    free_stats(&sh[s].before);
  }
  free(sh);
  return rc;
}
