/* Several shards: S paramex-server processes (--shard I --shards S) hold one model, and
 * pmx_test_worker processes given the shard list train it. The same job with S = 1, 2, 3
 * and 5 ends with bit-identical parameters in every worker, each shard holds its chunks
 * (and only those) at the final version, and the shards' chunks add up to the tensor.
 * Bad shard lists and settings fail at join with a message naming the problem; a chunk
 * sent to the wrong shard is refused FAILED_PRECONDITION naming its shard. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "check.h"
#include "codec/checksum.h"
#include "codec/dtype.h"
#include "codec/payload.h"
#include "format/safetensors_read.h"
#include "harness.h"
#include "model.h"
#include "paramex.pb-c.h"
#include "rpc/rpc_base.h"
#include "rpc/rpc_client.h"
#include "shard/shardmap.h"
#include "wire/chunk_msg.h"

#define SERVER_START_MS 10000
#define JOB_DEADLINE_MS 120000
#define SERVER_STOP_MS 15000
#define MAX_SHARDS 5
#define WORLD 3
#define STEPS 4
#define A_NUMEL 60001 /* 4 KiB chunks: 59 chunks of "a" spread over the shards */

typedef struct cluster {
  uint32_t n;
  px_h_server srv[MAX_SHARDS];
  char list[MAX_SHARDS * 64];
} cluster;

/* Starts n shards with args (NULL-terminated) and, for shard `odd`, odd_args instead. */
static void cluster_start_ex(cluster* c, uint32_t n, const char* const* args, int odd,
                             const char* const* odd_args) {
  char err[512];
  c->n = n;
  c->list[0] = 0;
  for (uint32_t i = 0; i < n; i++) {
    const char* a[32];
    char shard_s[16], shards_s[16];
    snprintf(shard_s, sizeof shard_s, "%u", i);
    snprintf(shards_s, sizeof shards_s, "%u", n);
    size_t k = 0;
    a[k++] = "--shard";
    a[k++] = shard_s;
    a[k++] = "--shards";
    a[k++] = shards_s;
    for (const char* const* p = (int)i == odd ? odd_args : args; *p && k < 31; p++) a[k++] = *p;
    a[k] = NULL;
    CHECK(px_h_server_start(&c->srv[i], a, NULL, SERVER_START_MS, err, sizeof err) == 0,
          "shard %u: %s", i, err);
    size_t l = strlen(c->list);
    snprintf(c->list + l, sizeof c->list - l, "%s%s", i ? "," : "", c->srv[i].addr);
  }
}

static void cluster_start(cluster* c, uint32_t n, const char* const* args) {
  cluster_start_ex(c, n, args, -1, NULL);
}

static void cluster_stop(cluster* c) {
  for (uint32_t i = 0; i < c->n; i++) {
    int ws = 0;
    CHECK(px_h_server_stop(&c->srv[i], SERVER_STOP_MS, &ws, NULL) == 0,
          "shard %u did not exit within %d ms of SIGTERM", i, SERVER_STOP_MS);
    char d[96];
    CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "shard %u %s after SIGTERM", i,
          px_h_describe_wstatus(ws, d, sizeof d));
  }
}

static const char* const k_args[] = {"--workers", "3", "--lr", "0.1", "--momentum", "0.9",
                                     "--weight-decay", "0.01", "--chunk-bytes", "4K",
                                     "--log-level", "warn", NULL};

/* Runs the job against the shards of list: every worker's final parameters, checked
 * equal, are returned (malloc'd, *len bytes). */
static float* run_workers(const char* list, size_t* len) {
  char dir[512];
  CHECK(px_h_mkdtemp(dir, sizeof dir) == 0, "mkdtemp");
  pid_t pids[WORLD];
  char world_s[16], steps_s[16], numel_s[24];
  snprintf(world_s, sizeof world_s, "%d", WORLD);
  snprintf(steps_s, sizeof steps_s, "%d", STEPS);
  snprintf(numel_s, sizeof numel_s, "%d", A_NUMEL);
  for (uint32_t r = 0; r < WORLD; r++) {
    char rank_s[16], out[600];
    snprintf(rank_s, sizeof rank_s, "%u", r);
    snprintf(out, sizeof out, "%s/params.%u", dir, r);
    const char* argv[] = {px_h_worker_bin(), "--server", list, "--rank", rank_s, "--world",
                          world_s, "--steps", steps_s, "--out", out, "--a-numel", numel_s,
                          "--timeout-ms", "60000", NULL};
    pids[r] = px_h_spawn(argv, NULL, -1, -1);
    CHECK(pids[r] > 0, "cannot start worker %u", r);
  }
  const int64_t deadline = px_h_now_ms() + JOB_DEADLINE_MS;
  for (uint32_t r = 0; r < WORLD; r++) {
    int ws = 0;
    int64_t left = deadline - px_h_now_ms();
    CHECK(px_h_wait(pids[r], left > 0 ? (int)left : 0, &ws) == 0,
          "worker %u did not finish within %d ms", r, JOB_DEADLINE_MS);
    char d[96];
    CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "worker %u %s (its stderr is above)", r,
          px_h_describe_wstatus(ws, d, sizeof d));
  }
  float* first = NULL;
  for (uint32_t r = 0; r < WORLD; r++) {
    char path[600];
    snprintf(path, sizeof path, "%s/params.%u", dir, r);
    size_t l = 0;
    float* got = px_h_read_file(path, &l);
    CHECK(got, "cannot read %s", path);
    if (!first) {
      first = got;
      *len = l;
      continue;
    }
    CHECK(l == *len && memcmp(got, first, l) == 0, "worker %u's parameters differ from worker 0's",
          r);
    free(got);
  }
  px_h_rmtree(dir);
  return first;
}

/* Each shard holds its chunks of every tensor at version STEPS; together they hold all. */
static void check_shard_stats(const cluster* c) {
  uint64_t own_total[PX_IT_NTENSORS] = {0}, pushes = 0;
  uint32_t nchunks[PX_IT_NTENSORS] = {0};
  for (uint32_t i = 0; i < c->n; i++) {
    char err[512];
    px_rpc_channel* ch = px_rpc_channel_create(c->srv[i].addr, err, sizeof err);
    CHECK(ch, "channel: %s", err);
    Paramex__V1__StatsResponse* st = px_h_stats(ch, err, sizeof err);
    CHECK(st, "shard %u: %s", i, err);
    CHECK(st->shard == i && st->shards == c->n, "shard %u says it is shard %u of %u", i,
          st->shard, st->shards);
    for (int t = 0; t < PX_IT_NTENSORS; t++) {
      const Paramex__V1__TensorStats* ts = px_h_stats_tensor(st, px_it_tensor_name(t));
      CHECK(ts, "shard %u has no tensor %s", i, px_it_tensor_name(t));
      nchunks[t] = ts->num_chunks;
      uint32_t want = 0;
      const char* name = px_it_tensor_name(t);
      for (uint32_t k = 0; k < ts->num_chunks; k++)
        want += px_shard_of(name, strlen(name), k, c->n) == i;
      CHECK(ts->own_chunks == want, "shard %u holds %u chunks of %s, the map gives it %u", i,
            ts->own_chunks, name, want);
      own_total[t] += ts->own_chunks;
      if (ts->own_chunks)
        CHECK(ts->version_min == STEPS && ts->version_max == STEPS,
              "shard %u: %s at versions %" PRIu64 "..%" PRIu64 ", want %d", i, name,
              ts->version_min, ts->version_max, STEPS);
    }
    pushes += st->push_chunks;
    CHECK(st->rejected_calls == 0, "shard %u rejected %" PRIu64 " calls", i, st->rejected_calls);
    protobuf_c_message_free_unpacked(&st->base, NULL);
    px_rpc_channel_destroy(ch);
  }
  uint64_t chunks = 0;
  for (int t = 0; t < PX_IT_NTENSORS; t++) {
    CHECK(own_total[t] == nchunks[t], "the shards hold %" PRIu64 " of the %u chunks of %s",
          own_total[t], nchunks[t], px_it_tensor_name(t));
    chunks += nchunks[t];
  }
  CHECK(pushes == (uint64_t)WORLD * STEPS * chunks,
        "the shards counted %" PRIu64 " pushed chunks, want %" PRIu64 " (each once)", pushes,
        (uint64_t)WORLD * STEPS * chunks);
}

/* `paramex checksum LIST --json` gives each whole tensor's xxh64: that of the workers'
 * parameters (a, then b, in params). */
static void check_cli_checksum(const cluster* c, const float* params) {
  int rc = -1;
  const char* args[] = {"checksum", c->list, "--json", NULL};
  char* out = px_h_cli(args, &rc);
  CHECK(out && rc == 0, "paramex checksum %s: exit %d: %s", c->list, rc, out ? out : "");
  char want[512];
  const size_t na = A_NUMEL, nb = (size_t)PX_IT_B_ROWS * PX_IT_B_COLS;
  snprintf(want, sizeof want, "{\"shards\":%u,\"version\":%d,\"tensors\":[{\"name\":\"%s\","
           "\"version\":%d,\"checksum\":\"0x%016" PRIx64 "\"},{\"name\":\"%s\",\"version\":%d,"
           "\"checksum\":\"0x%016" PRIx64 "\"}]}\n", c->n, STEPS, px_it_tensor_name(0), STEPS,
           it_stats_checksum(params, na * 4), px_it_tensor_name(1), STEPS,
           it_stats_checksum(params + na, nb * 4));
  CHECK(strcmp(out, want) == 0, "paramex checksum said\n%s\nwant\n%s", out, want);
  free(out);
  /* paramex export LIST: the whole tensors, from their shards */
  char dir[512], file[600], err[512];
  CHECK(px_h_mkdtemp(dir, sizeof dir) == 0, "mkdtemp");
  snprintf(file, sizeof file, "%s/model.safetensors", dir);
  const char* eargs[] = {"export", c->list, "--out", file, NULL};
  out = px_h_cli(eargs, &rc);
  CHECK(out && rc == 0, "paramex export %s: exit %d: %s", c->list, rc, out ? out : "");
  free(out);
  px_st_file* f = px_st_open(file, err, sizeof err);
  CHECK(f, "%s: %s", file, err);
  px_st_tensor e;
  CHECK(px_st_find(f, px_it_tensor_name(0), &e) == 0 && e.nbytes == na * 4 &&
            memcmp(e.data, params, na * 4) == 0,
        "exported tensor %s differs from the workers' parameters", px_it_tensor_name(0));
  CHECK(px_st_find(f, px_it_tensor_name(1), &e) == 0 && e.nbytes == nb * 4 &&
            memcmp(e.data, params + na, nb * 4) == 0,
        "exported tensor %s differs from the workers' parameters", px_it_tensor_name(1));
  px_st_close(f);
  px_h_rmtree(dir);
  if (c->n == 1) return;
  const char* sargs[] = {"stats", c->list, "--json", NULL};
  out = px_h_cli(sargs, &rc);
  CHECK(out && rc == 0, "paramex stats %s: exit %d", c->list, rc);
  snprintf(want, sizeof want, "\"combined\":{\"shards\":%u,\"version_min\":%d,\"version_max\":%d,"
           "\"workers_joined\":%d", c->n, STEPS, STEPS, WORLD);
  CHECK(strstr(out, want) && strncmp(out, "{\"shards\":[{\"server_id\"", 23) == 0,
        "paramex stats --json: no '%s' in\n%.2000s", want, out);
  free(out);
  const char* targs[] = {"stats", c->list, NULL};
  out = px_h_cli(targs, &rc);
  CHECK(out && rc == 0 && strstr(out, "== the model: ") && strstr(out, "== shard 1 of "),
        "paramex stats (text): exit %d\n%.2000s", rc, out ? out : "");
  free(out);
}

/* S = 1, 2, 3, 5: the same bits. */
static void test_bit_identical_across_shard_counts(void** state) {
  (void)state;
  static const uint32_t counts[] = {1, 2, 3, 5};
  float* base = NULL;
  size_t base_len = 0;
  for (size_t k = 0; k < sizeof counts / sizeof counts[0]; k++) {
    cluster c;
    cluster_start(&c, counts[k], k_args);
    size_t len = 0;
    float* got = run_workers(c.list, &len);
    check_shard_stats(&c);
    check_cli_checksum(&c, got);
    cluster_stop(&c);
    if (!base) {
      base = got;
      base_len = len;
      continue;
    }
    CHECK(len == base_len, "S=%u: %zu bytes of parameters, S=1 had %zu", counts[k], len, base_len);
    for (size_t i = 0; i < len / sizeof(float); i++) {
      uint32_t x, y;
      memcpy(&x, &got[i], 4);
      memcpy(&y, &base[i], 4);
      CHECK(x == y, "S=%u: element %zu is 0x%08x, with one server 0x%08x", counts[k], i, x, y);
    }
    fprintf(stderr, "# S=%u: bit-identical to one server\n", counts[k]);
    free(got);
  }
  free(base);
}

/* A worker given list runs the job for one step; its exit status is returned and its
 * stderr (one line) in err. */
static int worker_error(const char* list, char* err, size_t cap) {
  char dir[512];
  CHECK(px_h_mkdtemp(dir, sizeof dir) == 0, "mkdtemp");
  char out[600], errpath[600];
  snprintf(out, sizeof out, "%s/params", dir);
  snprintf(errpath, sizeof errpath, "%s/stderr", dir);
  FILE* ef = fopen(errpath, "w");
  CHECK(ef, "cannot create %s", errpath);
  const char* argv[] = {px_h_worker_bin(), "--server", list, "--rank", "0", "--world", "3",
                        "--steps", "1", "--out", out, "--a-numel", "1000",
                        "--timeout-ms", "20000", "--connect-timeout-ms", "3000", NULL};
  pid_t pid = px_h_spawn(argv, NULL, -1, fileno(ef));
  fclose(ef);
  CHECK(pid > 0, "cannot start the worker");
  int ws = 0;
  CHECK(px_h_wait(pid, 60000, &ws) == 0, "the worker did not exit within 60 s");
  size_t len = 0;
  char* text = px_h_read_file(errpath, &len);
  snprintf(err, cap, "%s", text ? text : "");
  free(text);
  px_h_rmtree(dir);
  return WIFEXITED(ws) ? WEXITSTATUS(ws) : -1;
}

static void expect_join_error(const char* list, const char* want) {
  char err[2048];
  int rc = worker_error(list, err, sizeof err);
  CHECK(rc == 1, "the worker exited %d with '%s', want 1 (a failed call)", rc, err);
  CHECK(strstr(err, want), "the worker said '%s', want it to contain '%s'", err, want);
  fprintf(stderr, "# refused as expected: %s", err);
}

/* Wrong order, wrong count, one shard of several, a shard that does not answer. */
static void test_bad_shard_lists(void** state) {
  (void)state;
  cluster c;
  cluster_start(&c, 2, k_args);
  char list[512];
  snprintf(list, sizeof list, "%s,%s", c.srv[1].addr, c.srv[0].addr);
  expect_join_error(list, "gives this server as shard 0 of 2, but it serves shard 1 of 2 "
                          "(--shard 1 --shards 2): the list's order differs");
  snprintf(list, sizeof list, "%s,%s,%s", c.srv[0].addr, c.srv[1].addr, c.srv[1].addr);
  expect_join_error(list, "as shard 0 of 3, but it serves shard 0 of 2 (--shard 0 --shards 2): "
                          "the list's length differs");
  expect_join_error(c.srv[0].addr, "this server is shard 0 of 2 (--shards 2): give the client "
                                   "all 2 shard addresses");
  /* a port nobody listens on (a stopped server's) */
  px_h_server gone;
  char err[512];
  const char* a[] = {"--log-level", "warn", NULL};
  CHECK(px_h_server_start(&gone, a, NULL, SERVER_START_MS, err, sizeof err) == 0, "%s", err);
  CHECK(px_h_server_stop(&gone, SERVER_STOP_MS, NULL, NULL) == 0, "stop");
  snprintf(list, sizeof list, "%s,%s", c.srv[0].addr, gone.addr);
  char want[160];
  snprintf(want, sizeof want, "Join: shard 1 of 2 (%s): the server was not reachable", gone.addr);
  expect_join_error(list, want);
  snprintf(list, sizeof list, "%s,,%s", c.srv[0].addr, c.srv[1].addr);
  expect_join_error(list, "shard list");
  cluster_stop(&c);
}

/* Shards started with other settings: named at join. */
static void test_shards_disagree(void** state) {
  (void)state;
  static const char* const odd[] = {"--workers", "3", "--lr", "0.05", "--momentum", "0.9",
                                    "--weight-decay", "0.01", "--chunk-bytes", "4K",
                                    "--log-level", "warn", NULL};
  cluster c;
  cluster_start_ex(&c, 3, k_args, 2, odd);
  char want[256];
  snprintf(want, sizeof want, "the shards disagree: shard 0 (%s) runs with lr=0.1 "
           "but shard 2 (%s) with lr=0.05", c.srv[0].addr, c.srv[2].addr);
  expect_join_error(c.list, want);
  cluster_stop(&c);
  static const char* const workers[] = {"--workers", "2", "--chunk-bytes", "4K", "--log-level",
                                        "warn", NULL};
  cluster_start_ex(&c, 2, k_args, 1, workers);
  expect_join_error(c.list, "world_size 3 does not match the server's --workers 2");
  cluster_stop(&c);
}

/* Raw calls: a chunk pushed or pulled from the wrong shard is refused, naming its shard. */
static void test_foreign_chunk_refused(void** state) {
  (void)state;
  cluster c;
  cluster_start(&c, 2, k_args);
  char err[512];
  px_rpc_channel* ch = px_rpc_channel_create(c.srv[0].addr, err, sizeof err);
  CHECK(ch, "channel: %s", err);
  Paramex__V1__JoinRequest jr = PARAMEX__V1__JOIN_REQUEST__INIT;
  jr.rank = 0;
  jr.world_size = 3;
  jr.shard = 0;
  jr.shards = 2;
  Paramex__V1__JoinResponse* j = NULL;
  int st = px_h_unary_pb(ch, "/paramex.v1.ParameterExchange/Join", &jr.base,
                         &paramex__v1__join_response__descriptor, (ProtobufCMessage**)&j, 10000,
                         err, sizeof err);
  CHECK(st == PX_ST_OK, "Join: %d %s", st, err);
  CHECK(j->shard == 0 && j->shards == 2 && j->settings && strstr(j->settings, "lr=0.1"),
        "JoinResponse: shard %u of %u, settings '%s'", j->shard, j->shards,
        j->settings ? j->settings : "");
  const uint64_t inc = j->incarnation;
  protobuf_c_message_free_unpacked(&j->base, NULL);
  Paramex__V1__DeclareRequest dr = PARAMEX__V1__DECLARE_REQUEST__INIT;
  uint64_t shape[1] = {8192}; /* 8 chunks of 4 KiB */
  dr.name = "w";
  dr.dtype = PARAMEX__V1__DTYPE__DTYPE_F32;
  dr.n_shape = 1;
  dr.shape = shape;
  dr.worker_id = 0;
  dr.incarnation = inc;
  Paramex__V1__DeclareResponse* d = NULL;
  st = px_h_unary_pb(ch, "/paramex.v1.ParameterExchange/Declare", &dr.base,
                     &paramex__v1__declare_response__descriptor, (ProtobufCMessage**)&d, 10000,
                     err, sizeof err);
  CHECK(st == PX_ST_OK && d->num_chunks == 8, "Declare: %d %s", st, err);
  const uint32_t tid = d->tensor_id;
  protobuf_c_message_free_unpacked(&d->base, NULL);
  uint32_t foreign = 8;
  for (uint32_t k = 0; k < 8 && foreign == 8; k++)
    if (px_shard_of("w", 1, k, 2) == 1) foreign = k;
  CHECK(foreign < 8, "no chunk of 'w' on shard 1");
  static float grad[1024];
  px_chunk h;
  memset(&h, 0, sizeof h);
  h.worker_id = 0;
  h.incarnation = inc;
  h.tensor_id = tid;
  h.chunk = foreign;
  h.dtype = PX_DT_F32;
  h.encoding = PX_ENC_RAW;
  h.raw_len = sizeof grad;
  h.checksum = px_checksum(grad, sizeof grad);
  uint8_t hdr[PX_CHUNK_HDR_MAX];
  size_t hl = px_chunk_encode_header(PX_CHUNK_PUSH, &h, sizeof grad, hdr, sizeof hdr);
  px_h_msg m = {hdr, hl, grad, sizeof grad};
  px_h_result res;
  px_h_call(ch, "/paramex.v1.ParameterExchange/Push", &m, 1, 10000, &res);
  char want[200];
  snprintf(want, sizeof want, "tensor 'w' chunk %u belongs to shard 1, not to this shard 0 of 2",
           foreign);
  CHECK(res.status == PX_ST_FAILED_PRECONDITION && strstr(res.details, want),
        "foreign push: status %d '%s', want FAILED_PRECONDITION '%s'", res.status, res.details,
        want);
  px_h_result_free(&res);
  /* a healing pull naming the chunk */
  Paramex__V1__PullRequest pr = PARAMEX__V1__PULL_REQUEST__INIT;
  pr.worker_id = 0;
  pr.incarnation = inc;
  pr.n_tensor_ids = 1;
  pr.tensor_ids = (uint32_t*)&tid;
  pr.n_chunks = 1;
  pr.chunks = &foreign;
  uint8_t buf[128];
  size_t bl = paramex__v1__pull_request__pack(&pr, buf);
  px_h_msg pm = {buf, bl, NULL, 0};
  px_h_call(ch, "/paramex.v1.ParameterExchange/Pull", &pm, 1, 10000, &res);
  CHECK(res.status == PX_ST_FAILED_PRECONDITION && strstr(res.details, want),
        "foreign pull: status %d '%s'", res.status, res.details);
  px_h_result_free(&res);
  /* a pull of the whole tensor from shard 0 sends exactly shard 0's chunks, in order */
  pr.n_chunks = 0;
  bl = paramex__v1__pull_request__pack(&pr, buf);
  pm.head_len = bl;
  px_h_call(ch, "/paramex.v1.ParameterExchange/Pull", &pm, 1, 10000, &res);
  CHECK(res.status == PX_ST_OK, "pull: %d %s", res.status, res.details);
  uint32_t own[8];
  uint32_t nown = px_shard_chunks("w", 1, 8, 0, 2, own);
  CHECK(res.nresp == nown, "shard 0 sent %zu chunks, it holds %u", res.nresp, nown);
  for (size_t k = 0; k < res.nresp; k++) {
    px_iov seg = {res.resp[k], res.resp_len[k]};
    px_chunk got;
    CHECK(px_chunk_parse(PX_CHUNK_PULL, &seg, 1, &got, err, sizeof err) == 0, "%s", err);
    CHECK(got.chunk == own[k], "pull chunk %zu is chunk %u, want %u", k, got.chunk, own[k]);
  }
  px_h_result_free(&res);
  px_rpc_channel_destroy(ch);
  cluster_stop(&c);
}

static int teardown(void** state) {
  (void)state;
  px_h_kill_all();
  return 0;
}

static int group_setup(void** state) {
  (void)state;
  px_rpc_init();
  return 0;
}

static int group_teardown(void** state) {
  (void)state;
  px_h_kill_all();
  px_rpc_shutdown();
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_bit_identical_across_shard_counts, teardown),
      cmocka_unit_test_teardown(test_bad_shard_lists, teardown),
      cmocka_unit_test_teardown(test_shards_disagree, teardown),
      cmocka_unit_test_teardown(test_foreign_chunk_refused, teardown),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
