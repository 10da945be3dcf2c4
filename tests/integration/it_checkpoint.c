/* Checkpoints of a real paramex-server training the job of model.h (2 workers, SGD with
 * momentum 0.9 and weight decay, 4 KiB chunks: "a" 3000 floats in 3 chunks, "b" 10 x 100
 * in one):
 *  - periodic (--checkpoint-every 5 --keep 3): the files are at multiples of 5, the newest
 *    at the last version, at most --keep remain, no temporary file is left; each is a
 *    valid safetensors file, parsed here with jansson (header length, JSON, dtype, shape,
 *    contiguous data offsets, metadata, xxh64 of the data), whose tensors equal the
 *    reference parameters and momentum at its version, bit for bit;
 *  - on demand (the Checkpoint RPC): version, path and size; refused without a tensor or
 *    without --checkpoint-dir;
 *  - SIGTERM writes a final checkpoint and exits 0; a restart on the same directory
 *    restores it (Stats restored_version, versions and checksums equal the pre-shutdown
 *    ones) and training continues from it to the reference bits;
 *  - a truncated newest file, a corrupted one (one flipped data byte) and an empty one are
 *    skipped with a warning naming them, and the newest valid one is restored;
 *  - a checkpoint directory on a 256 KiB tmpfs that fills up: the write fails with a clear
 *    error (RPC status, server log), Stats counts the failure, the previous checkpoint is
 *    intact and the server goes on serving. Skipped when tmpfs cannot be mounted. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include "check.h"
#include "rpc/rpc_base.h"
#include "rpc/rpc_client.h"
#include "harness.h"
#include "model.h"
#include "train.h"

#define SERVER_START_MS 10000
#define SERVER_STOP_MS 20000
#define TRAIN_MS 60000
#define CALL_MS 20000
#define A_NUMEL 3000u

#define PATH_CHECKPOINT "/paramex.v1.ParameterExchange/Checkpoint"

static const it_sgd g_sgd = {"0.1", "0.9", "0.01"};
static char g_dir[512];        /* this test's temporary directory */
static char g_ckdir[600];      /* g_dir/ckpt */
static char g_mnt[600];        /* the tmpfs mount point while mounted, else "" */
static int g_nlog;             /* server logs written: g_dir/server-N.log */

/* ---- server ---------------------------------------------------------------------------- */

/* Starts a server with the job's flags plus extra (NULL-terminated); its stderr goes to a
 * new log file whose name is copied to log (may be NULL). */
static void start_server(px_h_server* srv, const char* workers, const char* const* extra, char* log,
                         size_t logcap) {
  const char* args[40] = {"--workers", workers, "--lr", g_sgd.lr, "--momentum", g_sgd.momentum,
                          "--weight-decay", g_sgd.weight_decay, "--chunk-bytes", "4K", "--threads", "2"};
  size_t n = 12;
  for (const char* const* e = extra; e && *e && n < 39; e++) args[n++] = *e;
  args[n] = NULL;
  char name[64], err[512];
  snprintf(name, sizeof name, "server-%d.log", ++g_nlog);
  if (log) snprintf(log, logcap, "%s", name);
  int fd = it_open_out(g_dir, name);
  int rc = px_h_server_start_ex(srv, NULL, args, NULL, fd, SERVER_START_MS, err, sizeof err);
  close(fd);
  CHECK(rc == 0, "server start: %s (its stderr: %s/%s)", err, g_dir, name);
}

static void stop_server_ok(px_h_server* srv) {
  int ws = 0;
  size_t extra = 0;
  CHECK(px_h_server_stop(srv, SERVER_STOP_MS, &ws, &extra) == 0, "server did not exit within %d ms of SIGTERM",
        SERVER_STOP_MS);
  char d[96];
  CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "server %s after SIGTERM", px_h_describe_wstatus(ws, d, sizeof d));
  CHECK(extra == 0, "the server wrote %zu more bytes on stdout", extra);
}

/* SIGKILL: no final checkpoint. */
static void kill_server(px_h_server* srv) {
  px_h_kill(srv->pid);
  srv->pid = 0;
  close(srv->out_fd);
  srv->out_fd = -1;
}

static px_rpc_channel* channel(const px_h_server* srv) {
  char err[512];
  px_rpc_channel* ch = px_rpc_channel_create(srv->addr, err, sizeof err);
  CHECK(ch, "channel: %s", err);
  return ch;
}

static Paramex__V1__StatsResponse* stats(px_rpc_channel* ch) {
  char err[512];
  Paramex__V1__StatsResponse* st = px_h_stats(ch, err, sizeof err);
  CHECK(st, "%s", err);
  return st;
}

/* Polls Stats (every 10 ms, at most 15 s) until checkpoint_version == v. */
static void wait_checkpoint_version(px_rpc_channel* ch, uint64_t v) {
  int64_t deadline = px_h_now_ms() + 15000;
  for (;;) {
    Paramex__V1__StatsResponse* st = stats(ch);
    uint64_t got = st->checkpoint_version;
    protobuf_c_message_free_unpacked(&st->base, NULL);
    if (got == v) return;
    CHECK(px_h_now_ms() < deadline, "Stats checkpoint_version is %" PRIu64 " 15 s after training, want %" PRIu64,
          got, v);
    poll(NULL, 0, 10);
  }
}

/* The Checkpoint RPC. On OK, version/path/bytes are copied out. */
static int checkpoint_rpc(px_rpc_channel* ch, uint64_t* version, char* path, size_t pathcap, uint64_t* bytes,
                          char* det, size_t detcap) {
  Paramex__V1__CheckpointRequest req = PARAMEX__V1__CHECKPOINT_REQUEST__INIT;
  ProtobufCMessage* resp = NULL;
  int st = px_h_unary_pb(ch, PATH_CHECKPOINT, &req.base, &paramex__v1__checkpoint_response__descriptor, &resp,
                          CALL_MS, det, detcap);
  if (st == PX_ST_OK) {
    Paramex__V1__CheckpointResponse* r = (Paramex__V1__CheckpointResponse*)resp;
    if (version) *version = r->version;
    if (path) snprintf(path, pathcap, "%s", r->path ? r->path : "");
    if (bytes) *bytes = r->bytes;
    protobuf_c_message_free_unpacked(resp, NULL);
  }
  return st;
}

static void ckpt_path(char* out, size_t cap, const char* dir, uint64_t v) {
  snprintf(out, cap, "%s/ckpt-%020" PRIu64 ".safetensors", dir, v);
}

/* ---- the safetensors file, read independently of the server's reader ---------------------- */

static uint64_t le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

typedef struct range {
  uint64_t begin, end;
  const char* name;
} range;

static int cmp_range(const void* a, const void* b) {
  const range *x = a, *y = b;
  return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* path must be a checkpoint of job j at version v (momentum tensors included), whose
 * tensors equal the reference at v bit for bit. */
static void check_ckpt_file(const char* path, const it_train* j, uint64_t v) {
  size_t len = 0;
  uint8_t* buf = px_h_read_file(path, &len);
  CHECK(buf, "cannot read %s", path);
  CHECK(len >= 8, "%s: %zu bytes", path, len);
  uint64_t hl = le64(buf);
  CHECK(hl <= len - 8, "%s: header length %" PRIu64 " exceeds the file (%zu bytes)", path, hl, len);
  CHECK((8 + hl) % 8 == 0, "%s: the data section starts at %" PRIu64 ", not a multiple of 8", path, 8 + hl);
  json_error_t je;
  json_t* root = json_loadb((const char*)buf + 8, (size_t)hl, JSON_REJECT_DUPLICATES, &je);
  CHECK(root && json_is_object(root), "%s: the header is not a JSON object: %s", path, je.text);
  const uint8_t* data = buf + 8 + hl;
  const uint64_t data_len = len - 8 - hl;

  /* metadata */
  json_t* meta = json_object_get(root, "__metadata__");
  CHECK(json_is_object(meta), "%s: no __metadata__ object", path);
  const char* key;
  json_t* val;
  json_object_foreach(meta, key, val) CHECK(json_is_string(val), "%s: metadata %s is not a string", path, key);
  char want[64];
  snprintf(want, sizeof want, "%" PRIu64, v);
  const char* mv = json_string_value(json_object_get(meta, "pmx.version"));
  CHECK(mv && strcmp(mv, want) == 0, "%s: pmx.version %s, want %s", path, mv ? mv : "(none)", want);
  snprintf(want, sizeof want, "%" PRIu32, j->world);
  const char* mw = json_string_value(json_object_get(meta, "pmx.workers"));
  CHECK(mw && strcmp(mw, want) == 0, "%s: pmx.workers %s, want %s", path, mw ? mw : "(none)", want);
  const char* mi = json_string_value(json_object_get(meta, "pmx.incarnations"));
  CHECK(mi, "%s: no pmx.incarnations", path);
  uint32_t nin = 0;
  for (const char* p = mi; *p;) {
    char* end = NULL;
    unsigned long long x = strtoull(p, &end, 10);
    CHECK(end != p && x > 0 && (*end == 0 || *end == ','), "%s: pmx.incarnations '%s'", path, mi);
    nin++;
    p = *end ? end + 1 : end;
  }
  CHECK(nin == j->world, "%s: %" PRIu32 " incarnations in '%s', want %" PRIu32, path, nin, mi, j->world);
  const char* mf = json_string_value(json_object_get(meta, "paramex.format"));
  CHECK(mf && strcmp(mf, "1") == 0, "%s: paramex.format %s", path, mf ? mf : "(none)");
  const char* mx = json_string_value(json_object_get(meta, "paramex.data_xxh64"));
  snprintf(want, sizeof want, "%016llx", (unsigned long long)XXH64(data, (size_t)data_len, 0));
  CHECK(mx && strcmp(mx, want) == 0, "%s: paramex.data_xxh64 %s, the data hashes to %s", path, mx ? mx : "(none)",
        want);

  /* tensors: exactly a, a@momentum, b, b@momentum */
  CHECK(json_object_size(root) == 5, "%s: %zu header entries, want 4 tensors and __metadata__", path,
        json_object_size(root));
  range r[4];
  size_t nr = 0;
  for (int t = 0; t < PX_IT_NTENSORS; t++) {
    size_t n = it_numel(j, t);
    float* mom = NULL;
    float* ref = it_reference(j, &g_sgd, t, v, &mom);
    for (int m = 0; m < 2; m++) {
      char name[32];
      snprintf(name, sizeof name, "%s%s", px_it_tensor_name(t), m ? "@momentum" : "");
      json_t* e = json_object_get(root, name);
      CHECK(json_is_object(e) && json_object_size(e) == 3, "%s: entry %s is missing or has other fields", path,
            name);
      const char* dt = json_string_value(json_object_get(e, "dtype"));
      CHECK(dt && strcmp(dt, "F32") == 0, "%s: %s dtype %s", path, name, dt ? dt : "(none)");
      json_t* shape = json_object_get(e, "shape");
      size_t want_ndim = t == 0 ? 1 : 2;
      uint64_t want_shape[2] = {t == 0 ? A_NUMEL : PX_IT_B_ROWS, PX_IT_B_COLS};
      CHECK(json_is_array(shape) && json_array_size(shape) == want_ndim, "%s: %s shape", path, name);
      for (size_t d = 0; d < want_ndim; d++) {
        json_t* x = json_array_get(shape, d);
        CHECK(json_is_integer(x) && (uint64_t)json_integer_value(x) == want_shape[d], "%s: %s shape[%zu]", path,
              name, d);
      }
      json_t* off = json_object_get(e, "data_offsets");
      CHECK(json_is_array(off) && json_array_size(off) == 2 && json_is_integer(json_array_get(off, 0)) &&
                json_is_integer(json_array_get(off, 1)),
            "%s: %s data_offsets", path, name);
      json_int_t b = json_integer_value(json_array_get(off, 0)), en = json_integer_value(json_array_get(off, 1));
      CHECK(b >= 0 && en >= b && (uint64_t)en <= data_len, "%s: %s data_offsets [%lld, %lld] outside %" PRIu64,
            path, name, (long long)b, (long long)en, data_len);
      CHECK((uint64_t)(en - b) == n * sizeof(float), "%s: %s holds %lld bytes, want %zu", path, name,
            (long long)(en - b), n * sizeof(float));
      r[nr++] = (range){(uint64_t)b, (uint64_t)en, t == 0 ? (m ? "a@momentum" : "a") : (m ? "b@momentum" : "b")};
      char what[160];
      snprintf(what, sizeof what, "%s: %s at version %" PRIu64 " vs reference", path, name, v);
      it_check_bits(what, data + b, m ? mom : ref, n);
    }
    free(ref);
    free(mom);
  }
  qsort(r, nr, sizeof r[0], cmp_range);
  uint64_t at = 0;
  for (size_t i = 0; i < nr; i++) {
    CHECK(r[i].begin == at, "%s: %s starts at %" PRIu64 ", want %" PRIu64 " (ranges must be contiguous)", path,
          r[i].name, r[i].begin, at);
    at = r[i].end;
  }
  CHECK(at == data_len, "%s: the tensors cover %" PRIu64 " of %" PRIu64 " data bytes", path, at, data_len);
  json_decref(root);
  free(buf);
}

/* Stats says every tensor is at version v with the checksum of the reference at v. */
static void check_server_at(px_rpc_channel* ch, const it_train* j, uint64_t v, uint64_t checksum_out[2]) {
  Paramex__V1__StatsResponse* st = stats(ch);
  for (int t = 0; t < PX_IT_NTENSORS; t++) {
    const Paramex__V1__TensorStats* ts = px_h_stats_tensor(st, px_it_tensor_name(t));
    CHECK(ts, "Stats has no tensor %s", px_it_tensor_name(t));
    CHECK(ts->version_min == v && ts->version_max == v, "tensor %s at versions %" PRIu64 "..%" PRIu64 ", want %" PRIu64,
          px_it_tensor_name(t), ts->version_min, ts->version_max, v);
    float* ref = it_reference(j, &g_sgd, t, v, NULL);
    uint64_t want = it_stats_checksum(ref, it_numel(j, t) * sizeof(float));
    free(ref);
    CHECK(ts->checksum == want, "tensor %s: Stats checksum %016" PRIx64 ", the reference at version %" PRIu64
          " hashes to %016" PRIx64, px_it_tensor_name(t), ts->checksum, v, want);
    if (checksum_out) checksum_out[t] = ts->checksum;
  }
  protobuf_c_message_free_unpacked(&st->base, NULL);
}

static void check_restored(px_rpc_channel* ch, uint64_t v) {
  Paramex__V1__StatsResponse* st = stats(ch);
  CHECK(st->restored_version == v, "Stats restored_version %" PRIu64 ", want %" PRIu64, st->restored_version, v);
  CHECK(st->checkpoint_version == v, "Stats checkpoint_version %" PRIu64 " after restoring %" PRIu64,
        st->checkpoint_version, v);
  protobuf_c_message_free_unpacked(&st->base, NULL);
}

static void log_must_contain(const char* log, const char* needle, const char* what) {
  char* s = it_slurp(g_dir, log);
  CHECK(strstr(s, needle), "%s: the server log (%s/%s) has no '%s':\n%s", what, g_dir, log, needle, s);
  free(s);
}

/* A fresh, empty g_ckdir. */
static void fresh_ckdir(void) {
  px_h_rmtree(g_ckdir);
  CHECK(mkdir(g_ckdir, 0755) == 0, "mkdir %s: %s", g_ckdir, strerror(errno));
}

static it_train job(const px_h_server* srv, const char* subdir, uint64_t steps, bool resync) {
  static char out[8][600];
  static int k;
  char* o = out[k++ % 8];
  snprintf(o, 600, "%s/%s", g_dir, subdir);
  mkdir(o, 0755);
  it_train j = {.addr = srv->addr, .world = 2, .steps = steps, .a_numel = A_NUMEL, .dir = o, .resync = resync};
  return j;
}

/* ---- tests ------------------------------------------------------------------------------------ */

static void test_periodic_keep_and_format(void** state) {
  (void)state;
  fresh_ckdir();
  const char* extra[] = {"--checkpoint-dir", g_ckdir, "--checkpoint-every", "5", "--keep", "3", NULL};
  px_h_server srv;
  start_server(&srv, "2", extra, NULL, 0);
  it_train j = job(&srv, "periodic", 40, false);
  it_train_run(&j, TRAIN_MS);
  it_train_check(&j, &g_sgd);

  px_rpc_channel* ch = channel(&srv);
  wait_checkpoint_version(ch, 40);
  Paramex__V1__StatsResponse* st = stats(ch);
  uint64_t written = st->checkpoints_written;
  char want_path[700];
  ckpt_path(want_path, sizeof want_path, g_ckdir, 40);
  CHECK(st->checkpoint_failures == 0, "checkpoint_failures %" PRIu64, st->checkpoint_failures);
  CHECK(written >= 1 && written <= 8, "checkpoints_written %" PRIu64 " for versions 5..40 every 5", written);
  CHECK(st->checkpoint_path && strcmp(st->checkpoint_path, want_path) == 0, "checkpoint_path %s, want %s",
        st->checkpoint_path ? st->checkpoint_path : "(none)", want_path);
  CHECK(st->restored_version == 0, "restored_version %" PRIu64 " on a fresh directory", st->restored_version);
  protobuf_c_message_free_unpacked(&st->base, NULL);

  uint64_t vs[64];
  int n = it_ckpt_versions(g_ckdir, vs, 64);
  uint64_t want_n = written < 3 ? written : 3;
  CHECK(n >= 0 && (uint64_t)n == want_n, "%d checkpoint files with --keep 3 after %" PRIu64 " were written", n,
        written);
  CHECK(vs[n - 1] == 40, "the newest checkpoint is version %" PRIu64 ", want 40", vs[n - 1]);
  CHECK(!it_ckpt_temp_left(g_ckdir), "a temporary checkpoint file was left in %s", g_ckdir);
  for (int i = 0; i < n; i++) {
    CHECK(vs[i] % 5 == 0 && vs[i] >= 5, "checkpoint at version %" PRIu64 " with --checkpoint-every 5", vs[i]);
    char p[700];
    ckpt_path(p, sizeof p, g_ckdir, vs[i]);
    check_ckpt_file(p, &j, vs[i]);
  }
  fprintf(stderr, "# periodic: %" PRIu64 " checkpoints written, kept versions", written);
  for (int i = 0; i < n; i++) fprintf(stderr, " %" PRIu64, vs[i]);
  fprintf(stderr, "\n");
  px_rpc_channel_destroy(ch);
  stop_server_ok(&srv);
}

static void test_on_demand(void** state) {
  (void)state;
  char det[512], path[700], want_path[700];
  uint64_t v = 0, bytes = 0;

  /* Without --checkpoint-dir the RPC is refused. */
  px_h_server plain;
  start_server(&plain, "2", NULL, NULL, 0);
  px_rpc_channel* ch = channel(&plain);
  int st = checkpoint_rpc(ch, NULL, NULL, 0, NULL, det, sizeof det);
  CHECK(st == PX_ST_FAILED_PRECONDITION, "Checkpoint without --checkpoint-dir: %s '%s'", px_status_name(st), det);
  px_rpc_channel_destroy(ch);
  stop_server_ok(&plain);

  fresh_ckdir();
  const char* extra[] = {"--checkpoint-dir", g_ckdir, NULL};
  px_h_server srv;
  start_server(&srv, "2", extra, NULL, 0);
  ch = channel(&srv);
  st = checkpoint_rpc(ch, NULL, NULL, 0, NULL, det, sizeof det);
  CHECK(st == PX_ST_FAILED_PRECONDITION, "Checkpoint before any tensor: %s '%s'", px_status_name(st), det);

  it_train j = job(&srv, "ondemand", 7, false);
  it_train_run(&j, TRAIN_MS);
  it_train_check(&j, &g_sgd);
  st = checkpoint_rpc(ch, &v, path, sizeof path, &bytes, det, sizeof det);
  CHECK(st == PX_ST_OK, "Checkpoint: %s '%s'", px_status_name(st), det);
  ckpt_path(want_path, sizeof want_path, g_ckdir, 7);
  CHECK(v == 7, "Checkpoint version %" PRIu64 ", want 7", v);
  CHECK(strcmp(path, want_path) == 0, "Checkpoint path %s, want %s", path, want_path);
  uint64_t want_bytes = 2 * (A_NUMEL + PX_IT_B_ROWS * PX_IT_B_COLS) * sizeof(float);
  CHECK(bytes == want_bytes, "Checkpoint bytes %" PRIu64 ", want %" PRIu64 " (parameters and momentum)", bytes,
        want_bytes);
  check_ckpt_file(path, &j, 7);
  /* A second request at the same version rewrites the same file. */
  st = checkpoint_rpc(ch, &v, path, sizeof path, &bytes, det, sizeof det);
  CHECK(st == PX_ST_OK && v == 7, "second Checkpoint: %s '%s', version %" PRIu64, px_status_name(st), det, v);
  Paramex__V1__StatsResponse* s = stats(ch);
  CHECK(s->checkpoints_written == 2 && s->checkpoint_version == 7 && s->checkpoint_failures == 0,
        "Stats: written %" PRIu64 ", version %" PRIu64 ", failures %" PRIu64, s->checkpoints_written,
        s->checkpoint_version, s->checkpoint_failures);
  protobuf_c_message_free_unpacked(&s->base, NULL);
  uint64_t vs[8];
  int n = it_ckpt_versions(g_ckdir, vs, 8);
  CHECK(n == 1 && vs[0] == 7, "%d checkpoint files after two checkpoints at version 7", n);
  px_rpc_channel_destroy(ch);
  stop_server_ok(&srv);
}

static void test_sigterm_final_and_restore(void** state) {
  (void)state;
  fresh_ckdir();
  const char* extra[] = {"--checkpoint-dir", g_ckdir, "--checkpoint-every", "5", "--keep", "2", NULL};
  char log[64];
  px_h_server srv;
  start_server(&srv, "2", extra, log, sizeof log);
  it_train j = job(&srv, "final", 13, false);
  it_train_run(&j, TRAIN_MS);
  px_rpc_channel* ch = channel(&srv);
  uint64_t before[2];
  check_server_at(ch, &j, 13, before);
  px_rpc_channel_destroy(ch);
  stop_server_ok(&srv);

  /* The final checkpoint is at 13 (not a multiple of 5: only SIGTERM wrote it). */
  char p13[700];
  ckpt_path(p13, sizeof p13, g_ckdir, 13);
  log_must_contain(log, "shutdown", "final checkpoint");
  log_must_contain(log, p13, "final checkpoint");
  uint64_t vs[16];
  int n = it_ckpt_versions(g_ckdir, vs, 16);
  CHECK(n == 2 && vs[1] == 13, "after SIGTERM: %d files, newest %" PRIu64 ", want 2 files (--keep 2), newest 13", n,
        n > 0 ? vs[n - 1] : 0);
  check_ckpt_file(p13, &j, 13);

  /* Restart on the same directory: everything is as it was. */
  start_server(&srv, "2", extra, log, sizeof log);
  log_must_contain(log, "restored", "restart");
  ch = channel(&srv);
  check_restored(ch, 13);
  uint64_t after[2];
  check_server_at(ch, &j, 13, after);
  CHECK(after[0] == before[0] && after[1] == before[1], "checksums changed across the restart");
  /* Training goes on from version 13 (momentum restored too) to the reference bits. */
  it_train k = job(&srv, "final-resumed", 20, true);
  it_train_run(&k, TRAIN_MS);
  it_train_check(&k, &g_sgd);
  check_server_at(ch, &k, 20, NULL);
  px_rpc_channel_destroy(ch);
  stop_server_ok(&srv);
}

/* Trains (resync workers) to `steps` and takes a checkpoint by RPC: the file at steps. */
static void phase(px_h_server* srv, px_rpc_channel* ch, uint64_t steps) {
  char sub[32], det[512];
  snprintf(sub, sizeof sub, "phase-%" PRIu64, steps);
  it_train j = job(srv, sub, steps, true);
  it_train_run(&j, TRAIN_MS);
  uint64_t v = 0;
  int st = checkpoint_rpc(ch, &v, NULL, 0, NULL, det, sizeof det);
  CHECK(st == PX_ST_OK && v == steps, "Checkpoint after %" PRIu64 " steps: %s '%s', version %" PRIu64, steps,
        px_status_name(st), det, v);
}

static void test_skip_bad_checkpoints(void** state) {
  (void)state;
  fresh_ckdir();
  const char* extra[] = {"--checkpoint-dir", g_ckdir, "--keep", "10", NULL};
  char log[64], p5[700], p10[700], p15[700], p99[700];
  px_h_server srv;
  start_server(&srv, "2", extra, log, sizeof log);
  px_rpc_channel* ch = channel(&srv);
  phase(&srv, ch, 5);
  phase(&srv, ch, 10);
  phase(&srv, ch, 15);
  px_rpc_channel_destroy(ch);
  kill_server(&srv);
  ckpt_path(p5, sizeof p5, g_ckdir, 5);
  ckpt_path(p10, sizeof p10, g_ckdir, 10);
  ckpt_path(p15, sizeof p15, g_ckdir, 15);
  ckpt_path(p99, sizeof p99, g_ckdir, 99);
  it_train j = job(&srv, "phase-check", 0, false);

  /* 1. The newest file truncated to half: skipped, version 10 restored. */
  struct stat sb;
  CHECK(stat(p15, &sb) == 0, "stat %s", p15);
  CHECK(truncate(p15, sb.st_size / 2) == 0, "truncate %s", p15);
  start_server(&srv, "2", extra, log, sizeof log);
  char want[800];
  snprintf(want, sizeof want, "skipping checkpoint %s: ", p15);
  log_must_contain(log, want, "truncated newest checkpoint");
  ch = channel(&srv);
  check_restored(ch, 10);
  check_server_at(ch, &j, 10, NULL);
  px_rpc_channel_destroy(ch);
  kill_server(&srv);

  /* 2. One byte of version 10's data flipped as well: both skipped, version 5 restored. */
  CHECK(stat(p10, &sb) == 0, "stat %s", p10);
  int fd = open(p10, O_RDWR);
  CHECK(fd >= 0, "open %s", p10);
  uint8_t byte;
  off_t at = sb.st_size - 1000; /* inside "b@momentum", the last tensor */
  CHECK(pread(fd, &byte, 1, at) == 1, "read %s", p10);
  byte ^= 0x10;
  CHECK(pwrite(fd, &byte, 1, at) == 1, "write %s", p10);
  close(fd);
  /* the truncated one was set aside by the first restart: not ranked any more */
  CHECK(stat(p15, &sb) != 0, "%s is still in the directory", p15);
  char aside[800];
  snprintf(aside, sizeof aside, "%s.unrestorable", p15);
  CHECK(stat(aside, &sb) == 0, "%s was not set aside as %s", p15, aside);
  start_server(&srv, "2", extra, log, sizeof log);
  snprintf(want, sizeof want, "skipping checkpoint %s: ", p10);
  log_must_contain(log, want, "corrupted checkpoint");
  ch = channel(&srv);
  check_restored(ch, 5);
  check_server_at(ch, &j, 5, NULL);
  /* Training continues from 5; SIGTERM then writes version 8. */
  it_train k = job(&srv, "after-corrupt", 8, true);
  it_train_run(&k, TRAIN_MS);
  it_train_check(&k, &g_sgd);
  px_rpc_channel_destroy(ch);
  stop_server_ok(&srv);

  /* 3. An empty file under a newer name: skipped, version 8 restored. */
  fd = open(p99, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  CHECK(fd >= 0, "create %s", p99);
  close(fd);
  start_server(&srv, "2", extra, log, sizeof log);
  snprintf(want, sizeof want, "skipping checkpoint %s: ", p99);
  log_must_contain(log, want, "empty checkpoint file");
  ch = channel(&srv);
  check_restored(ch, 8);
  check_server_at(ch, &j, 8, NULL);
  px_rpc_channel_destroy(ch);
  kill_server(&srv);
  char* s = it_slurp(g_dir, log);
  char* line = strstr(s, "skipping checkpoint");
  CHECK(line, "no warning");
  char* eol = strchr(line, '\n');
  if (eol) *eol = 0;
  fprintf(stderr, "# warning: %s\n", line);
  free(s);
}

static void test_tmpfs_full(void** state) {
  (void)state;
  snprintf(g_mnt, sizeof g_mnt, "%s/tiny", g_dir);
  CHECK(mkdir(g_mnt, 0755) == 0, "mkdir %s", g_mnt);
  if (mount("tmpfs", g_mnt, "tmpfs", 0, "size=256k") != 0) {
    print_message("cannot mount a tmpfs on %s (%s): skipped\n", g_mnt, strerror(errno));
    rmdir(g_mnt);
    g_mnt[0] = 0;
    skip();
  }
  /* One worker, "a" of 40,000 floats, no momentum: a checkpoint takes ~164 KiB, so the
   * first fits and the temporary file of the second does not. */
  const char* args[] = {"--workers", "1", "--lr", "0.1", "--momentum", "0", "--chunk-bytes", "64K",
                        "--threads", "2", "--checkpoint-dir", g_mnt, "--keep", "2", NULL};
  const it_sgd sgd = {"0.1", "0", "0"};
  char name[32] = "server-tmpfs.log", err[512], det[512], path[700];
  int fd = it_open_out(g_dir, name);
  px_h_server srv;
  int rc = px_h_server_start_ex(&srv, NULL, args, NULL, fd, SERVER_START_MS, err, sizeof err);
  close(fd);
  CHECK(rc == 0, "server start: %s", err);
  px_rpc_channel* ch = channel(&srv);
  char out[600];
  snprintf(out, sizeof out, "%s/tmpfs-out", g_dir);
  mkdir(out, 0755);
  it_train j = {.addr = srv.addr, .world = 1, .steps = 2, .a_numel = 40000, .dir = out, .resync = true};
  it_train_run(&j, TRAIN_MS);
  uint64_t v = 0, bytes = 0;
  int st = checkpoint_rpc(ch, &v, path, sizeof path, &bytes, det, sizeof det);
  CHECK(st == PX_ST_OK && v == 2, "first Checkpoint on the tmpfs: %s '%s'", px_status_name(st), det);
  size_t len0 = 0;
  uint8_t* file0 = px_h_read_file(path, &len0);
  CHECK(file0, "cannot read %s", path);

  j.steps = 4;
  it_train_run(&j, TRAIN_MS);
  st = checkpoint_rpc(ch, &v, NULL, 0, NULL, det, sizeof det);
  CHECK(st != PX_ST_OK, "Checkpoint on a full tmpfs succeeded (version %" PRIu64 ")", v);
  CHECK(strstr(det, "No space left on device"), "Checkpoint on a full tmpfs: %s '%s', want the reason",
        px_status_name(st), det);
  fprintf(stderr, "# full tmpfs: Checkpoint -> %s '%s'\n", px_status_name(st), det);
  Paramex__V1__StatsResponse* s = stats(ch);
  CHECK(s->checkpoint_failures >= 1, "checkpoint_failures %" PRIu64 " after a failed write", s->checkpoint_failures);
  CHECK(s->checkpoint_version == 2 && s->checkpoints_written == 1, "Stats: checkpoint_version %" PRIu64
        ", written %" PRIu64 " after the failed write", s->checkpoint_version, s->checkpoints_written);
  protobuf_c_message_free_unpacked(&s->base, NULL);
  log_must_contain(name, "No space left on device", "full tmpfs");
  log_must_contain(name, "checkpoint at version 4 failed", "full tmpfs");

  /* The previous checkpoint is intact, nothing else is left on the tmpfs. */
  uint64_t vs[8];
  int n = it_ckpt_versions(g_mnt, vs, 8);
  CHECK(n == 1 && vs[0] == 2, "%d checkpoint files on the tmpfs, want only version 2", n);
  CHECK(!it_ckpt_temp_left(g_mnt), "the failed write left its temporary file on the tmpfs");
  size_t len1 = 0;
  uint8_t* file1 = px_h_read_file(path, &len1);
  CHECK(file1 && len1 == len0 && memcmp(file0, file1, len0) == 0, "%s changed after the failed write", path);
  free(file0);
  free(file1);

  /* The server keeps serving: training finishes with the reference bits. */
  j.steps = 10;
  it_train_run(&j, TRAIN_MS);
  it_train_check(&j, &sgd);
  px_rpc_channel_destroy(ch);
  int ws = 0;
  size_t extra = 0;
  CHECK(px_h_server_stop(&srv, SERVER_STOP_MS, &ws, &extra) == 0, "server did not exit after SIGTERM");
  char d[96];
  fprintf(stderr, "# full tmpfs: the server %s after SIGTERM (its final checkpoint cannot be written)\n",
          px_h_describe_wstatus(ws, d, sizeof d));
}

/* ---- setup ----------------------------------------------------------------------------------- */

static void unmount_tmpfs(void) {
  if (!g_mnt[0]) return;
  if (umount2(g_mnt, 0) != 0) umount2(g_mnt, MNT_DETACH);
  rmdir(g_mnt);
  g_mnt[0] = 0;
}

/* A tensor that nobody pushes (frozen, pull-only) once kept every checkpoint from
 * completing: no file for 40 steps, no error, and SIGTERM waited out its drain without the
 * final checkpoint. Now each checkpoint copies it as it is, and a restore puts it at the
 * checkpoint's version with its values. */
static void test_frozen_tensor_checkpointed(void** state) {
  (void)state;
  fresh_ckdir();
  const char* extra[] = {"--checkpoint-dir", g_ckdir, "--checkpoint-every", "2", "--keep", "10", NULL};
  char log[64], err[512];
  px_h_server srv;
  start_server(&srv, "2", extra, log, sizeof log);
  px_rpc_channel* ch = channel(&srv);
  /* a client joins as rank 1 and declares "frozen" (values 0.5): the workers never push it */
  Paramex__V1__JoinRequest jr = PARAMEX__V1__JOIN_REQUEST__INIT;
  jr.rank = 1;
  jr.world_size = 2;
  ProtobufCMessage* resp = NULL;
  int st = px_h_unary_pb(ch, PX_H_PATH_JOIN, &jr.base, &paramex__v1__join_response__descriptor, &resp,
                          CALL_MS, err, sizeof err);
  CHECK(st == PX_ST_OK, "join: %s '%s'", px_status_name(st), err);
  uint64_t inc = ((Paramex__V1__JoinResponse*)resp)->incarnation;
  protobuf_c_message_free_unpacked(resp, NULL);
  float vals[64];
  for (int i = 0; i < 64; i++) vals[i] = 0.5f;
  uint64_t shape[1] = {64};
  Paramex__V1__DeclareRequest dr = PARAMEX__V1__DECLARE_REQUEST__INIT;
  dr.name = (char*)"frozen";
  dr.dtype = PARAMEX__V1__DTYPE__DTYPE_F32;
  dr.n_shape = 1;
  dr.shape = shape;
  dr.values.data = (uint8_t*)vals;
  dr.values.len = sizeof vals;
  dr.worker_id = 1;
  dr.incarnation = inc;
  st = px_h_unary_pb(ch, PX_H_PATH_DECLARE, &dr.base, &paramex__v1__declare_response__descriptor, NULL,
                      CALL_MS, err, sizeof err);
  CHECK(st == PX_ST_OK, "declare: %s '%s'", px_status_name(st), err);
  it_train j = job(&srv, "frozen", 6, false);
  it_train_run(&j, TRAIN_MS);
  it_train_check(&j, &g_sgd);
  wait_checkpoint_version(ch, 6);
  uint64_t vs[16];
  int n = it_ckpt_versions(g_ckdir, vs, 16);
  /* 2, then 4 and 6 (or 6 alone, catching up, when 2 was still being captured at 4) */
  CHECK(n >= 2 && vs[0] == 2 && vs[n - 1] == 6, "checkpoints: %d files, the first %" PRIu64, n, vs[0]);
  px_rpc_channel_destroy(ch);
  /* SIGTERM: the final checkpoint is written at once (every chunk at 6 or idle) */
  int64_t t0 = px_h_now_ms();
  stop_server_ok(&srv);
  CHECK(px_h_now_ms() - t0 < 4000, "SIGTERM took %" PRId64 " ms", px_h_now_ms() - t0);
  char want[800];
  snprintf(want, sizeof want, "not written");
  char* text = it_slurp(g_dir, log);
  CHECK(!strstr(text, want), "the final checkpoint was not written: %s", text);
  free(text);
  /* the restore has "frozen" at version 6 with its values */
  start_server(&srv, "2", extra, log, sizeof log);
  ch = channel(&srv);
  check_restored(ch, 6);
  Paramex__V1__StatsResponse* sr = stats(ch);
  const Paramex__V1__TensorStats* ts = px_h_stats_tensor(sr, "frozen");
  CHECK(ts && ts->version_min == 6 && ts->version_max == 6, "frozen not restored at version 6");
  CHECK(ts->checksum == it_stats_checksum(vals, sizeof vals), "frozen lost its values");
  protobuf_c_message_free_unpacked(&sr->base, NULL);
  px_rpc_channel_destroy(ch);
  stop_server_ok(&srv);
}

static int teardown(void** state) {
  (void)state;
  px_h_kill_all();
  unmount_tmpfs();
  return 0;
}

static int group_setup(void** state) {
  (void)state;
  px_rpc_init();
  if (px_h_mkdtemp(g_dir, sizeof g_dir) != 0) return -1;
  snprintf(g_ckdir, sizeof g_ckdir, "%s/ckpt", g_dir);
  return 0;
}

static int group_teardown(void** state) {
  (void)state;
  px_h_kill_all();
  unmount_tmpfs();
  px_h_rmtree(g_dir);
  px_rpc_shutdown();
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_periodic_keep_and_format, teardown),
      cmocka_unit_test_teardown(test_on_demand, teardown),
      cmocka_unit_test_teardown(test_sigterm_final_and_restore, teardown),
      cmocka_unit_test_teardown(test_skip_bad_checkpoints, teardown),
      cmocka_unit_test_teardown(test_tmpfs_full, teardown),
      cmocka_unit_test_teardown(test_frozen_tensor_checkpointed, teardown),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
