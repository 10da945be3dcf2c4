/* Shards recovered as one (issue 13): three paramex-server shards with --checkpoint-every 2
 * hold the model of pmx_test_worker --resync (3 workers, momentum, weight decay).
 *  - A random shard is SIGKILLed at random moments, at least 5 times in the run, once the
 *    moment its checkpoint writer creates the temporary file of a checkpoint (inotify), and
 *    restarted each time on its port and folder. Each time the cluster goes back to the
 *    restarted shard's version as a whole (the other shards take it in place or restart
 *    from their checkpoint at it), the workers resume from there, and the run ends with
 *    the bits of the uninterrupted reference in every worker and every shard.
 *  - A shard that restarts from a checkpoint the others no longer have (--keep 1) makes
 *    pmx_resume fail FAILED_PRECONDITION naming the shard that cannot go back and what it
 *    has, and changes nothing on any shard.
 * The moments come from a seeded generator: the seed is printed and PMX_IT_SEED=N repeats
 * a run. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "harness.h"
#include "model.h"
#include "paramex.pb-c.h"
#include "rpc/rpc_base.h"
#include "rpc/rpc_client.h"
#include "train.h"

#define SHARDS 3
#define WORLD 3
#define STEPS 150
#define START_MS 10000
#define STOP_MS 20000
#define PROGRESS_MS 60000
#define JOB_MS 120000
#define MIN_KILLS 5

static const it_sgd g_sgd = {"0.05", "0.9", "0.01"};
static char g_dir[512];
static uint64_t g_rng;

typedef struct cluster {
  px_h_server srv[SHARDS];
  char listen[SHARDS][64];
  char list[SHARDS * 64];
  const char* const* args;
} cluster;

/* Starts shard i of c (listen NULL: an ephemeral port), its stderr appended to a log. */
static void shard_start(cluster* c, uint32_t i, const char* listen) {
  char path[700], err[512], shard_s[16], shards_s[16];
  snprintf(path, sizeof path, "%s/shard-%u.log", g_dir, i);
  int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  CHECK(fd >= 0, "cannot open %s", path);
  snprintf(shard_s, sizeof shard_s, "%u", i);
  snprintf(shards_s, sizeof shards_s, "%u", SHARDS);
  const char* a[40] = {"--shard", shard_s, "--shards", shards_s};
  size_t k = 4;
  for (const char* const* p = c->args; *p && k < 39; p++) a[k++] = *p;
  a[k] = NULL;
  int rc = px_h_server_start_ex(&c->srv[i], listen, a, NULL, fd, START_MS, err, sizeof err);
  close(fd);
  CHECK(rc == 0, "shard %u start: %s (its log: %s)", i, err, path);
  snprintf(c->listen[i], sizeof c->listen[i], "127.0.0.1:%d", c->srv[i].port);
}

static void cluster_start(cluster* c, const char* const* args) {
  c->args = args;
  c->list[0] = 0;
  for (uint32_t i = 0; i < SHARDS; i++) {
    shard_start(c, i, NULL);
    size_t l = strlen(c->list);
    snprintf(c->list + l, sizeof c->list - l, "%s%s", i ? "," : "", c->srv[i].addr);
  }
}

static void cluster_stop(cluster* c) {
  for (uint32_t i = 0; i < SHARDS; i++) {
    int ws = 0;
    CHECK(px_h_server_stop(&c->srv[i], STOP_MS, &ws, NULL) == 0, "shard %u did not exit within "
          "%d ms of SIGTERM", i, STOP_MS);
    char d[96];
    CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "shard %u %s after SIGTERM", i,
          px_h_describe_wstatus(ws, d, sizeof d));
  }
}

static Paramex__V1__StatsResponse* shard_stats(const px_h_server* srv) {
  char err[512];
  px_rpc_channel* ch = px_rpc_channel_create(srv->addr, err, sizeof err);
  CHECK(ch, "channel: %s", err);
  Paramex__V1__StatsResponse* st = px_h_stats(ch, err, sizeof err);
  CHECK(st, "Stats of %s: %s", srv->addr, err);
  px_rpc_channel_destroy(ch);
  return st;
}

/* Reads lines from fd until rank 0's "resync at ..." (the next kill would otherwise fall
 * before it noticed this one, and one resynchronisation would cover both). */
static void wait_resync(int fd, char* acc, size_t cap, int kill) {
  char line[128];
  CHECK(px_h_read_line_prefix(fd, "resync at ", acc, cap, line, sizeof line, PROGRESS_MS) == 0,
        "rank 0 did not resynchronise within %d ms of kill %d (it ended or hangs)", PROGRESS_MS,
        kill);
}

/* Waits for the checkpoint writer of the shard whose folder is dir to create a temporary
 * file (".ckpt-..."), then SIGKILLs pid at once. True when the file was still there after
 * the kill (the write was cut), false when no write began within ms. */
static bool kill_during_write(const char* dir, pid_t pid, int ms) {
  int in = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  CHECK(in >= 0, "inotify_init1: %s", strerror(errno));
  CHECK(inotify_add_watch(in, dir, IN_CREATE) >= 0, "inotify on %s: %s", dir, strerror(errno));
  int64_t deadline = px_h_now_ms() + ms;
  bool seen = false;
  while (!seen && px_h_now_ms() < deadline) {
    struct pollfd p = {in, POLLIN, 0};
    if (poll(&p, 1, 50) <= 0) continue;
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    ssize_t n = read(in, buf, sizeof buf);
    for (ssize_t off = 0; n > 0 && off < n;) {
      const struct inotify_event* e = (const struct inotify_event*)(buf + off);
      if (e->len && strncmp(e->name, ".ckpt-", 6) == 0) seen = true;
      off += (ssize_t)(sizeof *e + e->len);
    }
  }
  close(in);
  if (!seen) return false;
  px_h_kill(pid);
  return it_ckpt_temp_left(dir);
}

/* ---- kills --------------------------------------------------------------------------------- */

static void test_shard_kills_recover_as_one(void** state) {
  (void)state;
  char ckdir[600], out[600];
  snprintf(ckdir, sizeof ckdir, "%s/ckpt", g_dir);
  snprintf(out, sizeof out, "%s/out", g_dir);
  mkdir(out, 0755);
  const char* args[] = {"--workers", "3", "--lr", g_sgd.lr, "--momentum", g_sgd.momentum,
                        "--weight-decay", g_sgd.weight_decay, "--chunk-bytes", "4K",
                        "--threads", "2", "--checkpoint-dir", ckdir, "--checkpoint-every", "2",
                        "--keep", "3", NULL};
  cluster c;
  cluster_start(&c, args);
  /* "a" of 200,000 floats is 196 chunks over 3 shards (a kill falls between the chunks of
   * a step), and a checkpoint file of ~0.5 MB per shard: a write lasts long enough to be
   * cut */
  it_train j = {.addr = c.list, .world = WORLD, .steps = STEPS, .a_numel = 200000, .dir = out,
                .resync = true, .timeout_ms = 30000};
  int pfd[2];
  CHECK(pipe2(pfd, O_CLOEXEC) == 0, "pipe");
  pid_t pids[WORLD];
  const char* progress[] = {"--progress-every", "1", NULL};
  for (uint32_t r = 0; r < WORLD; r++) {
    char name[32];
    snprintf(name, sizeof name, "worker-%u.out", r);
    int fd = r == 0 ? pfd[1] : it_open_out(g_dir, name);
    pids[r] = it_worker_start(&j, r, fd, -1, r == 0 ? progress : NULL);
    close(fd);
  }
  char acc[4096] = "";
  const int nkills = (int)it_rnd_between(&g_rng, MIN_KILLS, MIN_KILLS + 1);
  const uint64_t lo = 10, span = (STEPS - 20 - lo) / (uint64_t)nkills;
  bool cut_write = false;
  int64_t t0 = px_h_now_ms();
  for (int k = 0; k < nkills; k++) {
    uint64_t target = it_rnd_between(&g_rng, lo + (uint64_t)k * span, lo + (uint64_t)(k + 1) * span - 1);
    uint64_t at = it_wait_step(pfd[0], acc, sizeof acc, target, "rank 0", PROGRESS_MS);
    uint32_t v = (uint32_t)it_rnd_between(&g_rng, 0, SHARDS - 1);
    char vdir[700];
    snprintf(vdir, sizeof vdir, "%s/shard-%u", ckdir, v);
    const char* how = "between checkpoints";
    /* kills wait for a checkpoint write to begin until one was cut */
    if (!cut_write) {
      cut_write = kill_during_write(vdir, c.srv[v].pid, 20000);
      how = cut_write ? "during a checkpoint write (the first one after)"
                      : "as a checkpoint write ended (the first one after)";
    }
    if (c.srv[v].pid) px_h_kill(c.srv[v].pid);
    close(c.srv[v].out_fd);
    uint64_t vs[16];
    int n = it_ckpt_versions(vdir, vs, 16);
    CHECK(n >= 1, "shard %u has no checkpoint to restart from in %s", v, vdir);
    shard_start(&c, v, c.listen[v]);
    /* Stats.fresh is not asked for: the workers retry at once and may have started a
     * recovery generation on the new process before this call reaches it. The restored
     * version is the new process's own (the old one restored an older one, or none). */
    Paramex__V1__StatsResponse* st = shard_stats(&c.srv[v]);
    CHECK(st->restored_version == vs[n - 1], "kill %d: shard %u restored version %" PRIu64
          ", its newest checkpoint is %" PRIu64, k + 1, v, st->restored_version, vs[n - 1]);
    protobuf_c_message_free_unpacked(&st->base, NULL);
    fprintf(stderr, "# kill %d of %d: shard %u SIGKILLed %s when rank 0 had step %" PRIu64
            "; restarted from version %" PRIu64 "\n", k + 1, nkills, v, how, at, vs[n - 1]);
    wait_resync(pfd[0], acc, sizeof acc, k + 1);
  }
  CHECK(cut_write, "no kill of the %d fell inside a checkpoint write", nkills);

  int64_t deadline = px_h_now_ms() + JOB_MS;
  for (uint32_t r = 0; r < WORLD; r++) {
    int64_t left = deadline - px_h_now_ms();
    it_worker_expect_ok(pids[r], r, left > 0 ? (int)left : 0);
  }
  int64_t t_job = px_h_now_ms() - t0;
  static char o0[1 << 20];
  size_t nacc = strlen(acc);
  memcpy(o0, acc, nacc + 1);
  px_h_read_all(pfd[0], o0 + nacc, sizeof o0 - nacc, 5000);
  close(pfd[0]);
  for (uint32_t r = 0; r < WORLD; r++) {
    char name[32];
    snprintf(name, sizeof name, "worker-%u.out", r);
    char* o = r == 0 ? o0 : it_slurp(g_dir, name);
    long n = it_resyncs_of(o);
    CHECK(n >= nkills, "worker %u resynchronised %ld times for %d shard restarts", r, n, nkills);
    if (r) free(o);
  }
  it_train_check(&j, &g_sgd);
  uint64_t gen = 0;
  for (uint32_t i = 0; i < SHARDS; i++) {
    Paramex__V1__StatsResponse* st = shard_stats(&c.srv[i]);
    CHECK(st->version_min == STEPS && st->version_max == STEPS, "shard %u at versions %" PRIu64
          "..%" PRIu64 ", want %d", i, st->version_min, st->version_max, STEPS);
    CHECK(i == 0 || st->generation == gen, "shard %u in recovery generation %" PRIu64
          ", shard 0 in %" PRIu64, i, st->generation, gen);
    gen = st->generation;
    protobuf_c_message_free_unpacked(&st->base, NULL);
  }
  CHECK(gen > (uint64_t)nkills, "recovery generation %" PRIu64 " after %d kills (and the start)",
        gen, nkills);
  cluster_stop(&c);
  fprintf(stderr, "# %d shard kills: %d workers x %d steps over %d shards in %" PRId64 " ms, "
          "%" PRIu64 " recovery generations, bit-identical to the reference\n", nkills, WORLD,
          STEPS, SHARDS, t_job, gen);
}

/* ---- a shard that cannot go back -------------------------------------------------------------- */

static void copy_file(const char* from, const char* to) {
  size_t len = 0;
  uint8_t* b = px_h_read_file(from, &len);
  CHECK(b, "cannot read %s", from);
  FILE* f = fopen(to, "wb");
  CHECK(f && fwrite(b, 1, len, f) == len && fclose(f) == 0, "cannot write %s", to);
  free(b);
}

/* Waits until dir's newest checkpoint is at version v. */
static void wait_ckpt(const char* dir, uint64_t v) {
  int64_t until = px_h_now_ms() + 20000;
  for (;;) {
    uint64_t vs[16];
    int n = it_ckpt_versions(dir, vs, 16);
    if (n >= 1 && vs[n - 1] == v) return;
    CHECK(px_h_now_ms() < until, "no checkpoint at version %" PRIu64 " in %s within 20 s", v, dir);
    poll(NULL, 0, 5);
  }
}

static void test_shard_cannot_go_back(void** state) {
  (void)state;
  char ckdir[600], out[600], d0[700], d1[700], saved[760], path[760];
  snprintf(ckdir, sizeof ckdir, "%s/ckpt-keep1", g_dir);
  snprintf(out, sizeof out, "%s/out-keep1", g_dir);
  snprintf(d0, sizeof d0, "%s/shard-0", ckdir);
  snprintf(d1, sizeof d1, "%s/shard-1", ckdir);
  mkdir(out, 0755);
  const char* args[] = {"--workers", "3", "--lr", g_sgd.lr, "--momentum", g_sgd.momentum,
                        "--weight-decay", g_sgd.weight_decay, "--chunk-bytes", "4K",
                        "--checkpoint-dir", ckdir, "--checkpoint-every", "2", "--keep", "1", NULL};
  cluster c;
  cluster_start(&c, args);
  it_train j = {.addr = c.list, .world = WORLD, .steps = 4, .a_numel = 20000, .dir = out,
                .resync = true, .timeout_ms = 30000};
  it_train_run(&j, JOB_MS);
  wait_ckpt(d1, 4);
  snprintf(saved, sizeof saved, "%s/saved-v4.safetensors", g_dir);
  snprintf(path, sizeof path, "%s/ckpt-%020d.safetensors", d1, 4);
  copy_file(path, saved);
  j.steps = 10; /* the workers resume at 4 and go on to 10: only checkpoints at 10 remain */
  it_train_run(&j, JOB_MS);
  it_train_check(&j, &g_sgd);
  wait_ckpt(d0, 10);
  wait_ckpt(d1, 10);

  /* shard 1 comes back from its older checkpoint, which the others no longer have */
  px_h_kill(c.srv[1].pid);
  close(c.srv[1].out_fd);
  snprintf(path, sizeof path, "%s/ckpt-%020d.safetensors", d1, 10);
  CHECK(unlink(path) == 0, "unlink %s: %s", path, strerror(errno));
  snprintf(path, sizeof path, "%s/ckpt-%020d.safetensors", d1, 4);
  copy_file(saved, path);
  shard_start(&c, 1, c.listen[1]);

  int efd = it_open_out(g_dir, "keep1-worker.err");
  j.steps = 12;
  pid_t pid = it_worker_start(&j, 0, -1, efd, NULL);
  close(efd);
  int ws = 0;
  CHECK(px_h_wait(pid, JOB_MS, &ws) == 0, "the worker did not end within %d ms", JOB_MS);
  char* e = it_slurp(g_dir, "keep1-worker.err");
  char want[200];
  snprintf(want, sizeof want, "shard 0 (%s): Recover: FAILED_PRECONDITION: shard 0 of 3 cannot go "
           "back to version 4: it has no checkpoint at version 4", c.srv[0].addr);
  CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 1 && strstr(e, want) && strstr(e, "its checkpoints: 10"),
        "the worker's pmx_resume over a shard that cannot go back: exit %d, stderr '%s', want '%s'",
        WIFEXITED(ws) ? WEXITSTATUS(ws) : -1, e, want);
  fprintf(stderr, "# %s", e);
  free(e);
  /* nothing changed: shards 0 and 2 at 10, shard 1 at 4, no generation taken */
  for (uint32_t i = 0; i < SHARDS; i++) {
    Paramex__V1__StatsResponse* st = shard_stats(&c.srv[i]);
    uint64_t want_v = i == 1 ? 4 : 10;
    CHECK(st->version_min == want_v && st->version_max == want_v && st->generation == 1,
          "shard %u at versions %" PRIu64 "..%" PRIu64 " in generation %" PRIu64 ", want %" PRIu64
          " in 1 (the start's)", i, st->version_min, st->version_max, st->generation, want_v);
    protobuf_c_message_free_unpacked(&st->base, NULL);
  }
  cluster_stop(&c);
}

/* ---- setup --------------------------------------------------------------------------------------- */

static int teardown(void** state) {
  (void)state;
  px_h_kill_all();
  return 0;
}

static int group_setup(void** state) {
  (void)state;
  px_rpc_init();
  it_seed_rng(&g_rng);
  return px_h_mkdtemp(g_dir, sizeof g_dir);
}

static int group_teardown(void** state) {
  (void)state;
  px_h_kill_all();
  if (!getenv("PMX_IT_KEEP")) px_h_rmtree(g_dir); /* PMX_IT_KEEP=1: keep the shards' logs */
  px_rpc_shutdown();
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_shard_kills_recover_as_one, teardown),
      cmocka_unit_test_teardown(test_shard_cannot_go_back, teardown),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
