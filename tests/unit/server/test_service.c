/* Unit tests of server/service.c (service.h): the lifecycle of an in-process server
 * (server_fixture.h). Init: the errors (-1 for an unusable --checkpoint-dir or a
 * checkpoint that fails half way, -2 for a backend only start-up can refuse, with their
 * messages) and deinit after each; restore of the newest valid checkpoint. Start: the bound
 * port, each path of the method table reaching its own handler (told apart by their
 * refusals), unknown methods, a whole step through the table, the bearer token (health
 * exempt), --max-calls (health exempt), and the start errors (address, token and TLS
 * files) each freed by deinit. The drain gate: Join, Declare, Checkpoint, Push and Pull
 * refused UNAVAILABLE, Stats, Heartbeat and Health (NOT_SERVING) served. Stop: a parked
 * pull ends UNAVAILABLE at once instead of waiting out --drain-timeout; a push in flight
 * finishes during the drain while new calls are refused and a waiting Checkpoint call
 * ends UNAVAILABLE, then the final checkpoint holds that step and a new service restores
 * it; a push that does not finish is cancelled once --drain-timeout is spent; the
 * transport is gone after stop; the final checkpoint's failure is -1, and none is written
 * without tensors. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <time.h>

#include "backend/select.h"
#include "codec/checksum.h"
#include "codec/dtype.h"
#include "codec/initializer.h"
#include "codec/payload.h"
#include "config.h"
#include "format/safetensors_write.h"
#include "health.pb-c.h"
#include "paramex.pb-c.h"
#include "rpc/rpc_base.h"
#include "rpc/rpc_client.h"
#include "server_fixture.h"
#include "util/log.h"
#include "wire/chunk_msg.h"

#define CALL_MS 20000
#define WAIT_MS 20000
#define LR 0.5f
#define CE 1024u  /* elements per 4 KiB chunk */
#define N_W 2500u /* tensor "w": chunks of 1024, 1024 and 452 elements */
#define PATH_CKPT "/paramex.v1.ParameterExchange/Checkpoint"
#define PATH_HEARTBEAT "/paramex.v1.ParameterExchange/Heartbeat"

static px_sf g_f;
/* The deadline of the helpers' calls; shorter while the drain is tested, so that a stop
 * that already closed the transport fails fast instead of waiting out CALL_MS per call. */
static int64_t g_call_ms = CALL_MS;
static char g_dir[512];  /* a temp dir of the test, removed at teardown */
static char g_dir2[512];

/* A stop running on a thread of its own (the drain tests talk to the server meanwhile). */
typedef struct stopper {
  px_service* svc;
  pthread_t th;
  bool running;
  atomic_bool done;
  int rc;
  int64_t ms;
} stopper;
static stopper g_stop;

static void* stop_main(void* p) {
  stopper* s = p;
  const int64_t t0 = px_h_now_ms();
  s->rc = px_service_stop(s->svc);
  s->ms = px_h_now_ms() - t0;
  atomic_store(&s->done, true);
  return NULL;
}

static void stop_begin(void) {
  memset(&g_stop, 0, sizeof g_stop);
  g_stop.svc = &g_f.svc;
  assert_int_equal(pthread_create(&g_stop.th, NULL, stop_main, &g_stop), 0);
  g_stop.running = true;
}

/* Joins the stop thread; the fixture is then stopped (its deinit remains). */
static int stop_join(void) {
  pthread_join(g_stop.th, NULL);
  g_stop.running = false;
  g_f.started = false;
  return g_stop.rc;
}

static void end_open_push(void);

static int teardown(void** state) {
  (void)state;
  g_call_ms = CALL_MS;
  end_open_push();
  if (g_stop.running) stop_join();
  px_sf_stop(&g_f);
  if (g_dir[0]) px_h_rmtree(g_dir);
  if (g_dir2[0]) px_h_rmtree(g_dir2);
  g_dir[0] = g_dir2[0] = 0;
  return 0;
}

/* A started server of 2 workers, 4 KiB chunks, lr 0.5, and more flags (NULL-ended). */
static px_server* start(const char* const* more) {
  const char* a[32] = {"--workers", "2", "--chunk-bytes", "4K", "--lr", "0.5"};
  size_t n = 6;
  for (size_t i = 0; more && more[i] && n < 31; i++) a[n++] = more[i];
  a[n] = NULL;
  px_sf_start(&g_f, a);
  return g_f.srv;
}

/* px_service_init of paramex-server flags (NULL-ended; 2 workers, 4 KiB chunks, one
 * thread); returns its rc with err. cfg may change the parsed configuration first. */
static int init_only(px_service* svc, const char* const* more, void (*cfg_fn)(px_config*),
                     char* err, size_t errlen) {
  const char* argv[40] = {"paramex-server", "--threads", "1", "--log-level", "error",
                          "--workers", "2", "--chunk-bytes", "4K"};
  int argc = 9;
  for (size_t i = 0; more && more[i] && argc < 39; i++) argv[argc++] = more[i];
  px_config cfg;
  err[0] = 0;
  if (px_config_parse(&cfg, argc, (char**)argv, err, errlen) != 0) fail_msg("flags: %s", err);
  if (cfg_fn) cfg_fn(&cfg);
  px_log_init("test-server", PX_LOG_ERROR);
  return px_service_init(svc, &cfg, err, errlen);
}

/* ---- small helpers ------------------------------------------------------------------------ */

typedef bool (*cond_fn)(void* arg);

/* Waits (bounded) until fn(arg) holds. */
static bool wait_until(cond_fn fn, void* arg, int64_t ms) {
  const int64_t end = px_h_now_ms() + ms;
  for (;;) {
    if (fn(arg)) return true;
    if (px_h_now_ms() > end) return fn(arg);
    sched_yield();
  }
}

static bool no_active_calls(void* arg) {
  return atomic_load(&((px_server*)arg)->active_calls) == 0;
}

static bool is_draining(void* arg) { return px_waiters_draining(&((px_server*)arg)->waiters); }

static bool ckpt_has_waiter(void* arg) {
  px_ckpt* ck = &((px_server*)arg)->ckpt;
  pthread_mutex_lock(&ck->mu);
  bool w = ck->waiters != NULL;
  pthread_mutex_unlock(&ck->mu);
  return w;
}

typedef struct active_arg {
  px_server* s;
  int64_t n;
} active_arg;

static bool active_is(void* arg) {
  active_arg* a = arg;
  return atomic_load(&a->s->active_calls) == a->n;
}

static bool no_live_calls(void* arg) { return px_rpc_server_live_calls(((px_server*)arg)->rpc) == 0; }

static uint64_t chunk_version(px_chunk_state* c) {
  pthread_mutex_lock(&c->mu);
  uint64_t v = c->version;
  pthread_mutex_unlock(&c->mu);
  return v;
}

typedef struct count_arg {
  px_server* s;
  uint64_t n;
} count_arg;

static bool pushed_at_least(void* arg) {
  count_arg* c = arg;
  return atomic_load(&c->s->ctr.push_chunks) >= c->n;
}

static size_t parked_on(px_server* s, px_chunk_state* c) {
  size_t n = 0;
  pthread_mutex_lock(&s->waiters.mu);
  for (px_waiter* w = c->waiters.head; w && n < 100000; w = w->next) n++;
  pthread_mutex_unlock(&s->waiters.mu);
  return n;
}

typedef struct park_arg {
  px_server* srv;
  px_chunk_state* c;
} park_arg;

static bool parked_one(void* arg) {
  park_arg* p = arg;
  return parked_on(p->srv, p->c) == 1;
}

static void expect_status(int got, const char* det, int want, const char* want_det) {
  if (got != want)
    fail_msg("status %s (%d) '%s', want %s", got >= 0 ? px_status_name(got) : "harness", got, det,
             px_status_name(want));
  if (want_det) assert_string_equal(det, want_det);
}

/* A unary call with raw request bytes; the response is freed. */
static int unary_raw(px_rpc_channel* ch, const char* path, const void* b, size_t n, char* det,
                     size_t cap) {
  uint8_t* resp = NULL;
  size_t rl = 0;
  det[0] = 0;
  int st = px_rpc_unary(ch, path, b, n, g_call_ms, true, &resp, &rl, det, cap);
  free(resp);
  return st;
}

/* A varint tag of field 1 without its value: no message unpacks from it. */
static const uint8_t k_malformed[] = {0x08};

static uint64_t rejected(void) { return atomic_load(&g_f.srv->ctr.rejected_calls); }

static int health(px_rpc_channel* ch, int* serving, char* det, size_t cap) {
  Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  req.service = "";
  ProtobufCMessage* resp = NULL;
  int st = px_h_unary_pb(ch, PX_H_PATH_HEALTH, &req.base,
                         &grpc__health__v1__health_check_response__descriptor, &resp, g_call_ms,
                         det, cap);
  *serving = -1;
  if (resp) {
    *serving = (int)((Grpc__Health__V1__HealthCheckResponse*)resp)->status;
    protobuf_c_message_free_unpacked(resp, NULL);
  }
  return st;
}

#define SERVING GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
#define NOT_SERVING GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING

static int join_req(px_rpc_channel* ch, uint32_t rank, char* det, size_t cap) {
  Paramex__V1__JoinRequest req = PARAMEX__V1__JOIN_REQUEST__INIT;
  req.rank = rank;
  req.world_size = 2;
  req.name = "t";
  ProtobufCMessage* resp = NULL;
  int st = px_h_unary_pb(ch, PX_H_PATH_JOIN, &req.base, &paramex__v1__join_response__descriptor,
                         &resp, g_call_ms, det, cap);
  if (resp) protobuf_c_message_free_unpacked(resp, NULL);
  return st;
}

static int declare_req(const char* name, char* det, size_t cap) {
  Paramex__V1__DeclareRequest req = PARAMEX__V1__DECLARE_REQUEST__INIT;
  uint64_t shape[1] = {10};
  req.name = (char*)name;
  req.dtype = PARAMEX__V1__DTYPE__DTYPE_F32;
  req.n_shape = 1;
  req.shape = shape;
  ProtobufCMessage* resp = NULL;
  int st = px_h_unary_pb(g_f.ch, PX_H_PATH_DECLARE, &req.base,
                         &paramex__v1__declare_response__descriptor, &resp, g_call_ms, det, cap);
  if (resp) protobuf_c_message_free_unpacked(resp, NULL);
  return st;
}

static int heartbeat(uint32_t rank, uint64_t inc, char* det, size_t cap) {
  Paramex__V1__HeartbeatRequest req = PARAMEX__V1__HEARTBEAT_REQUEST__INIT;
  req.worker_id = rank;
  req.incarnation = inc;
  ProtobufCMessage* resp = NULL;
  int st = px_h_unary_pb(g_f.ch, PATH_HEARTBEAT, &req.base,
                         &paramex__v1__heartbeat_response__descriptor, &resp, g_call_ms, det, cap);
  if (resp) protobuf_c_message_free_unpacked(resp, NULL);
  return st;
}

static float grad_at(uint32_t rank, uint64_t step, size_t i) {
  uint64_t x = (i + 5) * 2654435761u + rank * 40503u + step * 977u;
  float m = (float)(int)(x % 2001) - 1000.0f;
  return m * (rank ? 0.0078125f : 0.001953125f);
}

static float* grads(uint32_t rank, uint64_t step, size_t n) {
  float* g = malloc(n * sizeof *g);
  assert_non_null(g);
  for (size_t i = 0; i < n; i++) g[i] = grad_at(rank, step, i);
  return g;
}


/* Pushes chunks [c0, c1) of g (numel elements) for rank's step in one call; the status. */
static int push_range(uint32_t rank, uint64_t inc, uint64_t step, uint32_t tid, const float* g,
                      size_t numel, uint32_t c0, uint32_t c1, char* det, size_t cap) {
  uint8_t heads[4][PX_CHUNK_HDR_MAX];
  px_h_msg m[4];
  size_t n = 0;
  for (uint32_t k = c0; k < c1 && n < 4; k++, n++) {
    size_t first = (size_t)k * CE, cnt = numel - first < CE ? numel - first : CE;
    m[n] = px_sf_push_chunk(heads[n], rank, inc, step, tid, k, g + first, cnt);
  }
  px_h_result r;
  int st = px_h_call(g_f.ch, PX_H_PATH_PUSH, m, n, g_call_ms, &r);
  snprintf(det, cap, "%s", r.details);
  px_h_result_free(&r);
  return st;
}

/* ---- a push driven by hand: messages sent one at a time, the call left open ------------- */

static uint8_t g_heads[4][PX_CHUNK_HDR_MAX]; /* of the chunks mc_send_chunk sends */

static void noop_release(void* ctx) { (void)ctx; }

static px_sf_mcall g_m; /* the push driven by hand (static: teardown ends it after a failure) */

static void end_open_push(void) {
  if (!g_m.call) return; /* a failed test left its push open */
  px_cli_call_cancel(g_m.call);
  px_cli_call_unref(g_m.call);
  g_m.call = NULL;
}

static void mc_start(px_sf_mcall* m) { px_sf_mcall_start(m, g_f.ch, PX_H_PATH_PUSH, CALL_MS); }

/* Sends chunk k of rank's gradient g (numel elements) for step; last half-closes. Returns
 * whether the send completed. */
static bool mc_send_chunk(px_sf_mcall* m, uint32_t rank, uint64_t inc, uint64_t step, uint32_t tid,
                          const float* g, size_t numel, uint32_t k, bool last) {
  size_t first = (size_t)k * CE, cnt = numel - first < CE ? numel - first : CE;
  px_h_msg hm = px_sf_push_chunk(g_heads[k % 4], rank, inc, step, tid, k, g + first, cnt);
  px_out out = {hm.head, hm.head_len, hm.body, hm.body_len, noop_release, NULL};
  pthread_mutex_lock(&m->mu);
  m->sent = 0;
  pthread_mutex_unlock(&m->mu);
  if (!px_cli_call_send(m->call, &out, last)) return false;
  pthread_mutex_lock(&m->mu);
  bool ok = px_sf_mcall_wait(m, NULL, &m->sent) && m->sent == 1;
  pthread_mutex_unlock(&m->mu);
  return ok;
}

/* Drops our reference and waits for the status. */
static void mc_finish(px_sf_mcall* m) {
  px_cli_call_unref(m->call);
  m->call = NULL;
  pthread_mutex_lock(&m->mu);
  bool done = px_sf_mcall_wait(m, &m->done, NULL);
  pthread_mutex_unlock(&m->mu);
  if (!done) fail_msg("the push call did not end within %d ms", WAIT_MS);
}


/* Both workers joined and tensor "w" declared (NORMAL(0, 0.02), seed 7). */
typedef struct world {
  px_server* s;
  uint64_t inc[2];
  px_tensor_state* t;
} world;

static void setup_world(world* w, const char* const* more) {
  w->s = start(more);
  w->inc[0] = px_sf_join(&g_f, 0, 2);
  w->inc[1] = px_sf_join(&g_f, 1, 2);
  uint32_t id = px_sf_declare_f32(&g_f, "w", N_W, 7);
  w->t = px_store_tensor(&w->s->store, id);
  assert_non_null(w->t);
}

static void expect_file(const char* dir, const char* name, bool present) {
  char p[700];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  struct stat sb;
  if (present) {
    if (stat(p, &sb) != 0 || !S_ISREG(sb.st_mode)) fail_msg("no checkpoint file %s", p);
  } else if (stat(p, &sb) == 0) {
    fail_msg("unexpected file %s", p);
  }
}

static int count_ckpt_files(const char* dir) {
  DIR* d = opendir(dir);
  if (!d) return -1;
  int n = 0;
  struct dirent* e;
  while ((e = readdir(d)) != NULL)
    if (strncmp(e->d_name, "ckpt-", 5) == 0) n++;
  closedir(d);
  return n;
}

/* ---- init ----------------------------------------------------------------------------------- */

static void cfg_tpu(px_config* c) { c->device = "tpu"; }

/* A checkpoint file written the way checkpoint.c writes them: tensors "a" (f32 [4] of
 * values) and optionally "b" (i32 [4], not a parameter type). */
typedef struct st_src {
  const void* data[2];
  size_t len[2];
} st_src;

static int st_fn(void* ctx, size_t index, px_st_sink* sink) {
  st_src* s = ctx;
  return px_st_sink_write(sink, s->data[index], s->len[index]);
}

static void write_ckpt(const char* dir, uint64_t version, const float* a4, bool with_b) {
  static const uint64_t shape[1] = {4};
  static const int32_t b4[4] = {1, 2, 3, 4};
  px_st_entry e[2] = {{"a", PX_DT_F32, 1, shape, 16}, {"b", PX_DT_I32, 1, shape, 16}};
  st_src src = {{a4, b4}, {16, 16}};
  char vs[32], name[64], err[512];
  snprintf(vs, sizeof vs, "%" PRIu64, version);
  snprintf(name, sizeof name, "ckpt-%020" PRIu64 ".safetensors", version);
  const char* meta[] = {"pmx.version", vs, "pmx.workers", "2", "pmx.server_id", "old-1",
                        "pmx.momentum", "0"};
  if (px_st_write(dir, name, e, with_b ? 2 : 1, st_fn, &src, meta, 4, err, sizeof err) != 0)
    fail_msg("write %s: %s", name, err);
}

static void test_init_errors(void** state) {
  (void)state;
  px_service svc;
  char err[512], want[700];

  /* --checkpoint-dir that is a file */
  assert_int_equal(px_h_mkdtemp(g_dir, sizeof g_dir), 0);
  char file[600];
  snprintf(file, sizeof file, "%s/plain", g_dir);
  FILE* fp = fopen(file, "w");
  assert_non_null(fp);
  fputs("x", fp);
  fclose(fp);
  const char* bad_dir[] = {"--checkpoint-dir", file, NULL};
  assert_int_equal(init_only(&svc, bad_dir, NULL, err, sizeof err), -1);
  snprintf(want, sizeof want, "--checkpoint-dir %s: not a writable directory", file);
  assert_string_equal(err, want);
  px_service_deinit(&svc);

  /* a device start-up refuses: -2 */
  assert_int_equal(init_only(&svc, NULL, cfg_tpu, err, sizeof err), -2);
  assert_string_equal(err, "--device: 'tpu' is not cpu or cuda");
  px_service_deinit(&svc);

  /* --device cuda --gpus 63: -2 when that device does not exist (or no CUDA in this
   * build); -1 when CUDA cannot start at all */
  const char* cuda[] = {"--device", "cuda", "--gpus", "63", NULL};
  char why[256] = "";
  const int usable = px_backend_cuda_available(why, sizeof why);
  int rc = init_only(&svc, cuda, NULL, err, sizeof err);
#ifdef PX_HAVE_CUDA
  if (usable) {
    assert_int_equal(rc, -2);
    assert_non_null(strstr(err, "--gpus: device 63 does not exist"));
  } else {
    assert_int_equal(rc, -1);
    assert_non_null(strstr(err, "--device cuda: "));
  }
#else
  (void)usable;
  assert_int_equal(rc, -2);
  assert_non_null(strstr(err, "this paramex-server was built without CUDA"));
#endif
  px_service_deinit(&svc);

  /* a checkpoint that fails after loading a tensor: -1, nothing half restored kept */
  assert_int_equal(px_h_mkdtemp(g_dir2, sizeof g_dir2), 0);
  const float a4[4] = {1.5f, -2.0f, 0.25f, 8.0f};
  write_ckpt(g_dir2, 3, a4, true);
  const char* half[] = {"--checkpoint-dir", g_dir2, NULL};
  assert_int_equal(init_only(&svc, half, NULL, err, sizeof err), -1);
  snprintf(want, sizeof want, "could not restore from %s (see above)", g_dir2);
  assert_string_equal(err, want);
  px_service_deinit(&svc);
}

static void test_init_restores_newest(void** state) {
  (void)state;
  assert_int_equal(px_h_mkdtemp(g_dir, sizeof g_dir), 0);
  const float v1[4] = {1, 2, 3, 4}, v3[4] = {-1, -2, -3, -4};
  write_ckpt(g_dir, 1, v1, false);
  write_ckpt(g_dir, 3, v3, false);
  /* a newer file that is not a checkpoint at all: skipped */
  char p[700];
  snprintf(p, sizeof p, "%s/ckpt-%020d.safetensors", g_dir, 5);
  FILE* fp = fopen(p, "w");
  assert_non_null(fp);
  fputs("garbage", fp);
  fclose(fp);
  const char* more[] = {"--workers", "2", "--checkpoint-dir", g_dir, NULL};
  px_sf_init(&g_f, more);
  px_server* s = g_f.srv;
  assert_int_equal(px_store_count(&s->store), 1);
  px_tensor_state* t = px_store_tensor(&s->store, 0);
  assert_non_null(t);
  assert_string_equal(t->name, "a");
  assert_int_equal(t->dtype, PX_DT_F32);
  assert_int_equal(t->numel, 4);
  assert_memory_equal(t->params, v3, sizeof v3);
  for (uint32_t k = 0; k < t->nchunks; k++) {
    assert_int_equal(t->chunks[k].version, 3);
    assert_true(t->chunks[k].initialized);
  }
  px_ckpt_info info;
  px_ckpt_get_info(&s->ckpt, &info);
  assert_int_equal(info.restored_version, 3);
  /* a new server id for every start, whatever the file says */
  assert_true(strlen(s->server_id) > 0);
  assert_string_not_equal(s->server_id, "old-1");
  assert_int_equal(px_sf_stop(&g_f), 0); /* never started */

  /* an empty directory: an empty store */
  px_h_rmtree(g_dir);
  assert_int_equal(px_h_mkdtemp(g_dir, sizeof g_dir), 0);
  px_sf_init(&g_f, more);
  assert_int_equal(px_store_count(&g_f.srv->store), 0);
  char first_id[64];
  snprintf(first_id, sizeof first_id, "%s", g_f.srv->server_id);
  assert_int_equal(px_sf_stop(&g_f), 0);
  px_sf_init(&g_f, more);
  assert_string_not_equal(g_f.srv->server_id, first_id);
}

/* ---- start ----------------------------------------------------------------------------------- */

static void test_method_table(void** state) {
  (void)state;
  world w;
  setup_world(&w, NULL);
  px_server* s = w.s;
  assert_true(g_f.port > 0 && g_f.port < 65536);
  char det[512];
  int sv;
  expect_status(health(g_f.ch, &sv, det, sizeof det), det, PX_ST_OK, NULL);
  assert_int_equal(sv, SERVING);

  /* every path reaches its own handler: each refuses a malformed request in its words */
  const struct {
    const char* path;
    const char* msg;
  } unary[] = {
      {PX_H_PATH_JOIN, "malformed JoinRequest"},
      {PX_H_PATH_DECLARE, "malformed DeclareRequest"},
      {PX_H_PATH_STATS, "malformed StatsRequest"},
      {PATH_CKPT, "malformed CheckpointRequest"},
      {PATH_HEARTBEAT, "malformed HeartbeatRequest"},
      {PX_H_PATH_HEALTH, "malformed HealthCheckRequest"},
  };
  const uint64_t rej0 = rejected();
  for (size_t i = 0; i < sizeof unary / sizeof unary[0]; i++)
    expect_status(unary_raw(g_f.ch, unary[i].path, k_malformed, sizeof k_malformed, det, sizeof det),
                  det, PX_ST_INVALID_ARGUMENT, unary[i].msg);
  /* Pull: server streaming, its request is the first message */
  px_h_msg bad = {k_malformed, sizeof k_malformed, NULL, 0};
  px_h_result r;
  px_h_call(g_f.ch, PX_H_PATH_PULL, &bad, 1, CALL_MS, &r);
  expect_status(r.status, r.details, PX_ST_INVALID_ARGUMENT, "malformed PullRequest");
  assert_int_equal(r.nresp, 0);
  px_h_result_free(&r);
  /* Push: client streaming, each message a PushChunk */
  px_h_call(g_f.ch, PX_H_PATH_PUSH, &bad, 1, CALL_MS, &r);
  expect_status(r.status, r.details, PX_ST_INVALID_ARGUMENT, NULL);
  assert_true(strncmp(r.details, "malformed PushChunk", 19) == 0);
  px_h_result_free(&r);
  assert_int_equal(rejected(), rej0 + 8);
  /* a path the table does not have: the transport answers, no handler counts it */
  expect_status(unary_raw(g_f.ch, "/paramex.v1.ParameterExchange/Nope", "", 0, det, sizeof det), det,
                PX_ST_UNIMPLEMENTED, "unknown method");
  expect_status(unary_raw(g_f.ch, "/grpc.health.v1.Health/Watch", "", 0, det, sizeof det), det,
                PX_ST_UNIMPLEMENTED, "unknown method");
  assert_int_equal(rejected(), rej0 + 8);
  assert_true(wait_until(no_active_calls, s, WAIT_MS));

  /* a whole step through the table: Push of both workers, then Pull */
  float* g0 = grads(0, 0, N_W);
  float* g1 = grads(1, 0, N_W);
  float* want = malloc(N_W * sizeof *want);
  assert_non_null(want);
  px_sf_copy_params(w.t, want);
  for (size_t i = 0; i < N_W; i++) want[i] = want[i] - LR * ((g0[i] + g1[i]) / 2.0f);
  expect_status(push_range(0, w.inc[0], 0, w.t->id, g0, N_W, 0, 3, det, sizeof det), det, PX_ST_OK, NULL);
  expect_status(push_range(1, w.inc[1], 0, w.t->id, g1, N_W, 0, 3, det, sizeof det), det, PX_ST_OK, NULL);
  const uint32_t ids[1] = {w.t->id};
  size_t len;
  uint8_t* rq = px_sf_pull_request(0, ids, 1, 1, &len);
  px_h_msg m = {rq, len, NULL, 0};
  px_h_call(g_f.ch, PX_H_PATH_PULL, &m, 1, CALL_MS, &r);
  expect_status(r.status, r.details, PX_ST_OK, NULL);
  assert_int_equal(r.nresp, 3);
  float* got = calloc(N_W, sizeof *got);
  assert_non_null(got);
  for (size_t k = 0; k < r.nresp; k++) {
    px_iov seg = {r.resp[k], r.resp_len[k]};
    px_chunk h;
    char err[256];
    if (px_chunk_parse(PX_CHUNK_PULL, &seg, 1, &h, err, sizeof err) != 0) fail_msg("%s", err);
    assert_int_equal(h.version, 1);
    assert_int_equal(h.chunk, k);
    size_t n = k < 2 ? CE : N_W - 2 * CE;
    assert_int_equal(px_chunk_decode(&h, &seg, 1, got + k * CE, n, 4, err, sizeof err), PX_DECODE_OK);
  }
  assert_memory_equal(got, want, N_W * sizeof *want);
  px_h_result_free(&r);
  /* Stats and Heartbeat answer too */
  Paramex__V1__StatsResponse* st = px_h_stats(g_f.ch, det, sizeof det);
  if (!st) fail_msg("stats: %s", det);
  assert_int_equal(st->steps_completed, 3);
  assert_int_equal(st->push_chunks, 6);
  assert_int_equal(st->pull_chunks, 3);
  assert_string_equal(st->server_id, s->server_id);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  expect_status(heartbeat(1, w.inc[1], det, sizeof det), det, PX_ST_OK, NULL);
  assert_int_equal(rejected(), rej0 + 8);
  assert_true(wait_until(no_active_calls, s, WAIT_MS));
  free(rq);
  free(got);
  free(want);
  free(g0);
  free(g1);
}

static void write_text(const char* dir, const char* name, const char* text, char* path,
                       size_t cap) {
  snprintf(path, cap, "%s/%s", dir, name);
  FILE* fp = fopen(path, "w");
  assert_non_null(fp);
  fputs(text, fp);
  fclose(fp);
}

/* px_sf_init with flags, then a start that must fail with err (exactly, or as a prefix
 * when prefix); deinit frees what the failed start loaded. */
static void expect_start_fails(const char* const* args, const char* want, bool prefix) {
  px_sf_init(&g_f, args);
  char err[512] = "";
  int port = -1;
  assert_int_equal(px_service_start(&g_f.svc, &port, err, sizeof err), -1);
  if (prefix) {
    if (strncmp(err, want, strlen(want)) != 0) fail_msg("err '%s', want '%s...'", err, want);
  } else {
    assert_string_equal(err, want);
  }
  assert_null(g_f.srv->rpc);
  assert_int_equal(px_sf_stop(&g_f), 0);
}

static void test_start_errors(void** state) {
  (void)state;
  assert_int_equal(px_h_mkdtemp(g_dir, sizeof g_dir), 0);
  char missing[600], empty[600], token[600], junk[600], want[800];
  snprintf(missing, sizeof missing, "%s/missing.pem", g_dir);
  write_text(g_dir, "empty", " \n", empty, sizeof empty);
  write_text(g_dir, "token", "s3cret\n", token, sizeof token);
  write_text(g_dir, "junk.pem", "-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n",
             junk, sizeof junk);

  /* an address this host does not have (TEST-NET-1) */
  const char* addr[] = {"--listen", "192.0.2.1:1", NULL};
  expect_start_fails(addr, "cannot listen on 192.0.2.1:1 (address in use, invalid, or a bad TLS "
                           "certificate or key)", false);
  /* the token file */
  const char* t1[] = {"--listen", "127.0.0.1:0", "--token-file", missing, NULL};
  snprintf(want, sizeof want, "%s: No such file or directory", missing);
  expect_start_fails(t1, want, false);
  const char* t2[] = {"--listen", "127.0.0.1:0", "--token-file", empty, NULL};
  snprintf(want, sizeof want, "%s: the token is empty or contains spaces or control characters", empty);
  expect_start_fails(t2, want, false);
  /* the TLS files: each missing one named; what was read before is freed by deinit */
  const char* c1[] = {"--listen", "127.0.0.1:0", "--tls-cert", missing, "--tls-key", junk, NULL};
  snprintf(want, sizeof want, "%s: No such file or directory", missing);
  expect_start_fails(c1, want, false);
  const char* c2[] = {"--listen", "127.0.0.1:0", "--tls-cert", junk, "--tls-key", missing, NULL};
  expect_start_fails(c2, want, false);
  const char* c3[] = {"--listen", "127.0.0.1:0", "--tls-cert", junk, "--tls-key", junk,
                      "--tls-client-ca", missing, "--token-file", token, NULL};
  expect_start_fails(c3, want, false);
  /* files that are not a certificate and key: gRPC refuses them */
  const char* c4[] = {"--listen", "127.0.0.1:0", "--tls-cert", junk, "--tls-key", junk,
                      "--token-file", token, NULL};
  expect_start_fails(c4, "cannot ", true);

  /* and a good start after all that */
  start(NULL);
  assert_true(g_f.port > 0);
  char det[256];
  int sv;
  expect_status(health(g_f.ch, &sv, det, sizeof det), det, PX_ST_OK, NULL);
  assert_int_equal(sv, SERVING);
  /* its port is in use: a second server refuses it (no SO_REUSEPORT sharing) */
  char busy[64];
  snprintf(busy, sizeof busy, "127.0.0.1:%d", g_f.port);
  const char* again[] = {"--listen", busy, NULL};
  px_sf second;
  px_sf_init(&second, again);
  char err[512] = "";
  int port = -1;
  assert_int_equal(px_service_start(&second.svc, &port, err, sizeof err), -1);
  snprintf(want, sizeof want, "cannot listen on %s (address in use", busy);
  if (strncmp(err, want, strlen(want)) != 0) fail_msg("err '%s', want '%s...'", err, want);
  assert_int_equal(px_sf_stop(&second), 0);
}

static void test_token(void** state) {
  (void)state;
  assert_int_equal(px_h_mkdtemp(g_dir, sizeof g_dir), 0);
  char token[600];
  write_text(g_dir, "token", "s3cret\n", token, sizeof token);
  const char* more[] = {"--token-file", token, NULL};
  start(more);
  char det[512];
  int sv;
  /* the fixture's channel carries no token: refused before any handler */
  expect_status(join_req(g_f.ch, 0, det, sizeof det), det, PX_ST_UNAUTHENTICATED,
                "missing or invalid bearer token");
  expect_status(unary_raw(g_f.ch, PX_H_PATH_STATS, "", 0, det, sizeof det), det,
                PX_ST_UNAUTHENTICATED, "missing or invalid bearer token");
  /* health is exempt */
  expect_status(health(g_f.ch, &sv, det, sizeof det), det, PX_ST_OK, NULL);
  assert_int_equal(sv, SERVING);
  char err[256];
  px_rpc_channel_opts wrong = {.token = "s3cre"};
  px_rpc_channel* bad = px_rpc_channel_create_ex(g_f.addr, &wrong, err, sizeof err);
  assert_non_null(bad);
  expect_status(join_req(bad, 0, det, sizeof det), det, PX_ST_UNAUTHENTICATED,
                "missing or invalid bearer token");
  px_rpc_channel_destroy(bad);
  px_rpc_channel_opts right = {.token = "s3cret"}; /* without the file's newline */
  px_rpc_channel* ok = px_rpc_channel_create_ex(g_f.addr, &right, err, sizeof err);
  assert_non_null(ok);
  expect_status(join_req(ok, 0, det, sizeof det), det, PX_ST_OK, NULL);
  expect_status(unary_raw(ok, PX_H_PATH_STATS, "", 0, det, sizeof det), det, PX_ST_OK, NULL);
  px_rpc_channel_destroy(ok);
  assert_int_equal(rejected(), 0);
  assert_true(atomic_load(&g_f.srv->members.w[0].incarnation) != 0);
}

static void test_max_calls(void** state) {
  (void)state;
  const char* more[] = {"--max-calls", "1", NULL};
  world w;
  /* one call to set up (the first, so that no other is still closing): "w" */
  w.s = start(more);
  w.t = px_store_tensor(&w.s->store, px_sf_declare_f32(&g_f, "w", N_W, 7));
  assert_non_null(w.t);
  /* a pull parked for version 1 is the one live call (once the declare is closed) */
  assert_true(wait_until(no_live_calls, w.s, WAIT_MS));
  const uint32_t ids[1] = {w.t->id};
  size_t len;
  uint8_t* rq = px_sf_pull_request(0, ids, 1, 1, &len);
  px_h_msg m = {rq, len, NULL, 0};
  px_h_async* a = px_h_async_start(g_f.ch, PX_H_PATH_PULL, &m, 1, CALL_MS);
  assert_non_null(a);
  park_arg pa = {w.s, &w.t->chunks[0]};
  assert_true(wait_until(parked_one, &pa, WAIT_MS));
  char det[512];
  int sv;
  expect_status(join_req(g_f.ch, 0, det, sizeof det), det, PX_ST_RESOURCE_EXHAUSTED,
                "too many concurrent calls (--max-calls 1)");
  expect_status(unary_raw(g_f.ch, PX_H_PATH_STATS, "", 0, det, sizeof det), det,
                PX_ST_RESOURCE_EXHAUSTED, "too many concurrent calls (--max-calls 1)");
  expect_status(health(g_f.ch, &sv, det, sizeof det), det, PX_ST_OK, NULL);
  assert_int_equal(sv, SERVING);
  /* the stop ends the parked pull */
  assert_int_equal(px_service_stop(&g_f.svc), 0);
  g_f.started = false;
  px_h_result r;
  px_h_async_join(a, &r);
  expect_status(r.status, r.details, PX_ST_UNAVAILABLE, "server is shutting down");
  px_h_result_free(&r);
  free(rq);
}

/* ---- the drain ------------------------------------------------------------------------------- */

/* Calls that the drain refuses or serves, each checked (rank 1 of inc is joined). */
static void expect_drain_answers(px_server* s, const uint64_t inc[2], uint32_t tid) {
  char det[512];
  int sv;
  g_call_ms = 5000;
  const uint64_t rej = rejected();
  const uint32_t ntensors = px_store_count(&s->store);
  const uint64_t inc0 = atomic_load(&s->members.w[0].incarnation);
  expect_status(health(g_f.ch, &sv, det, sizeof det), det, PX_ST_OK, NULL);
  assert_int_equal(sv, NOT_SERVING);
  expect_status(join_req(g_f.ch, 0, det, sizeof det), det, PX_ST_UNAVAILABLE,
                "server is shutting down");
  expect_status(declare_req("new", det, sizeof det), det, PX_ST_UNAVAILABLE,
                "server is shutting down");
  expect_status(unary_raw(g_f.ch, PATH_CKPT, "", 0, det, sizeof det), det, PX_ST_UNAVAILABLE,
                "server is shutting down");
  float g[CE];
  for (size_t i = 0; i < CE; i++) g[i] = 1.0f;
  expect_status(push_range(0, inc[0], 0, tid, g, CE, 0, 1, det, sizeof det), det,
                PX_ST_UNAVAILABLE, "server is shutting down");
  const uint32_t ids[1] = {tid};
  size_t len;
  uint8_t* rq = px_sf_pull_request(0, ids, 1, 0, &len);
  px_h_msg m = {rq, len, NULL, 0};
  px_h_result r;
  px_h_call(g_f.ch, PX_H_PATH_PULL, &m, 1, g_call_ms, &r);
  expect_status(r.status, r.details, PX_ST_UNAVAILABLE, "server is shutting down");
  assert_int_equal(r.nresp, 0);
  px_h_result_free(&r);
  free(rq);
  assert_int_equal(rejected(), rej + 5);
  /* nothing changed for them */
  assert_int_equal(px_store_count(&s->store), ntensors);
  assert_true(atomic_load(&s->members.w[0].incarnation) == inc0);
  /* served: Stats, Heartbeat */
  Paramex__V1__StatsResponse* st = px_h_stats(g_f.ch, det, sizeof det);
  if (!st) fail_msg("stats while draining: %s", det);
  assert_int_equal(st->rejected_calls, rej + 5);
  protobuf_c_message_free_unpacked(&st->base, NULL);
  expect_status(heartbeat(1, inc[1], det, sizeof det), det, PX_ST_OK, NULL);
  assert_int_equal(rejected(), rej + 5);
  g_call_ms = CALL_MS;
}

static void test_drain_gate(void** state) {
  (void)state;
  world w;
  setup_world(&w, NULL);
  /* the first thing px_service_stop does */
  px_waiters_drain(&w.s->waiters);
  expect_drain_answers(w.s, w.inc, w.t->id);
  assert_true(wait_until(no_active_calls, w.s, WAIT_MS));
}

static void test_stop_ends_parked_pull(void** state) {
  (void)state;
  const char* more[] = {"--drain-timeout", "60", NULL};
  world w;
  setup_world(&w, more);
  px_server* s = w.s;
  const uint32_t ids[1] = {w.t->id};
  size_t len;
  uint8_t* rq = px_sf_pull_request(0, ids, 1, 1, &len);
  px_h_msg m = {rq, len, NULL, 0};
  px_h_async* a[2];
  for (int i = 0; i < 2; i++) {
    a[i] = px_h_async_start(g_f.ch, PX_H_PATH_PULL, &m, 1, CALL_MS);
    assert_non_null(a[i]);
  }
  px_chunk_state* c0 = &w.t->chunks[0];
  const int64_t end = px_h_now_ms() + WAIT_MS;
  while (parked_on(s, c0) < 2 && px_h_now_ms() < end) sched_yield();
  assert_int_equal(parked_on(s, c0), 2);
  assert_int_equal(atomic_load(&s->active_calls), 2);
  /* no step will ever come: stop must not wait out the 60 s drain for them */
  const int64_t t0 = px_h_now_ms();
  assert_int_equal(px_service_stop(&g_f.svc), 0);
  const int64_t ms = px_h_now_ms() - t0;
  g_f.started = false;
  if (ms >= 30000) fail_msg("stop took %lld ms with only parked pulls", (long long)ms);
  for (int i = 0; i < 2; i++) {
    px_h_result r;
    px_h_async_join(a[i], &r);
    expect_status(r.status, r.details, PX_ST_UNAVAILABLE, "server is shutting down");
    assert_int_equal(r.nresp, 0);
    px_h_result_free(&r);
  }
  assert_int_equal(parked_on(s, c0), 0);
  assert_int_equal(atomic_load(&s->active_calls), 0);
  assert_int_equal(px_rpc_server_live_calls(s->rpc), 0);
  /* the transport is gone */
  char det[256];
  uint8_t* resp = NULL;
  size_t rl = 0;
  int st = px_rpc_unary(g_f.ch, PX_H_PATH_HEALTH, "", 0, 10000, false, &resp, &rl, det, sizeof det);
  free(resp);
  assert_int_equal(st, PX_ST_UNAVAILABLE);
  free(rq);
}

static void test_stop_drains_push_in_flight(void** state) {
  (void)state;
  assert_int_equal(px_h_mkdtemp(g_dir, sizeof g_dir), 0);
  const char* more[] = {"--drain-timeout", "20", "--checkpoint-dir", g_dir, NULL};
  world w;
  setup_world(&w, more);
  px_server* s = w.s;
  px_tensor_state* t = w.t;
  char det[512];
  float* g0 = grads(0, 0, N_W);
  float* g1 = grads(1, 0, N_W);
  float* want = malloc(N_W * sizeof *want);
  assert_non_null(want);
  px_sf_copy_params(t, want);
  for (size_t i = 0; i < N_W; i++) want[i] = want[i] - LR * ((g0[i] + g1[i]) / 2.0f);
  /* rank 0's whole step; rank 1 sends chunks 0 and 1 and keeps its call open */
  expect_status(push_range(0, w.inc[0], 0, t->id, g0, N_W, 0, 3, det, sizeof det), det, PX_ST_OK, NULL);
  mc_start(&g_m);
  assert_true(mc_send_chunk(&g_m, 1, w.inc[1], 0, t->id, g1, N_W, 0, false));
  assert_true(mc_send_chunk(&g_m, 1, w.inc[1], 0, t->id, g1, N_W, 1, false));
  count_arg ca = {s, 5};
  assert_true(wait_until(pushed_at_least, &ca, WAIT_MS));
  assert_int_equal(chunk_version(&t->chunks[1]), 1);
  assert_int_equal(chunk_version(&t->chunks[2]), 0);
  active_arg one = {s, 1}; /* rank 1's open push (rank 0's may still be ending) */
  assert_true(wait_until(active_is, &one, WAIT_MS));
  /* a Checkpoint call waits for chunk 2 to reach version 1 */
  px_h_msg cm = {"", 0, NULL, 0};
  px_h_async* ck = px_h_async_start(g_f.ch, PATH_CKPT, &cm, 1, CALL_MS);
  assert_non_null(ck);
  assert_true(wait_until(ckpt_has_waiter, s, WAIT_MS));

  stop_begin();
  assert_true(wait_until(is_draining, s, WAIT_MS));
  /* the waiting Checkpoint call is ended at once */
  px_h_result r;
  px_h_async_join(ck, &r);
  expect_status(r.status, r.details, PX_ST_UNAVAILABLE, "server is shutting down");
  px_h_result_free(&r);
  /* while the push is in flight the server answers: new work refused, health NOT_SERVING */
  expect_drain_answers(s, w.inc, t->id);
  assert_false(atomic_load(&g_stop.done)); /* it waits for the push */
  assert_int_equal(atomic_load(&s->active_calls), 1);
  /* the push finishes within the drain, and its step completes */
  assert_true(mc_send_chunk(&g_m, 1, w.inc[1], 0, t->id, g1, N_W, 2, true));
  assert_true(px_cli_call_read(g_m.call));
  pthread_mutex_lock(&g_m.mu);
  assert_true(px_sf_mcall_wait(&g_m, &g_m.have_msg, NULL));
  pthread_mutex_unlock(&g_m.mu);
  assert_non_null(g_m.msg);
  size_t fl = 0;
  const uint8_t* fb = px_msg_flat(g_m.msg, &fl);
  assert_non_null(fb);
  Paramex__V1__PushResponse* pr = paramex__v1__push_response__unpack(NULL, fl, fb);
  assert_non_null(pr);
  assert_int_equal(pr->accepted, 3);
  assert_int_equal(pr->duplicate, 0);
  paramex__v1__push_response__free_unpacked(pr, NULL);
  mc_finish(&g_m);
  expect_status(g_m.status, g_m.details, PX_ST_OK, NULL);
  px_sf_mcall_destroy(&g_m);
  assert_int_equal(stop_join(), 0);
  if (g_stop.ms >= 20000) fail_msg("stop took %lld ms: it waited out the drain", (long long)g_stop.ms);
  for (uint32_t k = 0; k < 3; k++) assert_int_equal(chunk_version(&t->chunks[k]), 1);
  float* cur = malloc(N_W * sizeof *cur);
  assert_non_null(cur);
  px_sf_copy_params(t, cur);
  assert_memory_equal(cur, want, N_W * sizeof *want);
  assert_int_equal(atomic_load(&s->active_calls), 0);
  assert_int_equal(px_rpc_server_live_calls(s->rpc), 0);
  /* the final checkpoint holds the step finished during the drain */
  expect_file(g_dir, "ckpt-00000000000000000001.safetensors", true);
  px_ckpt_info info;
  px_ckpt_get_info(&s->ckpt, &info);
  assert_true(info.written >= 1);
  assert_int_equal(info.failures, 0);
  assert_int_equal(info.last_version, 1);
  char old_id[64];
  snprintf(old_id, sizeof old_id, "%s", s->server_id);
  px_sf_stop(&g_f);

  /* a new service restores it */
  const char* again[] = {"--workers", "2", "--chunk-bytes", "4K", "--checkpoint-dir", g_dir, NULL};
  px_sf_init(&g_f, again);
  px_tensor_state* t2 = px_store_tensor(&g_f.srv->store, 0);
  assert_non_null(t2);
  assert_string_equal(t2->name, "w");
  assert_int_equal(t2->numel, N_W);
  for (uint32_t k = 0; k < t2->nchunks; k++) assert_int_equal(t2->chunks[k].version, 1);
  px_sf_copy_params(t2, cur);
  assert_memory_equal(cur, want, N_W * sizeof *want);
  assert_string_not_equal(g_f.srv->server_id, old_id);
  free(cur);
  free(want);
  free(g0);
  free(g1);
}

static void test_stop_drain_timeout_cancels(void** state) {
  (void)state;
  const char* more[] = {"--drain-timeout", "0.5", NULL};
  world w;
  setup_world(&w, more);
  px_server* s = w.s;
  float* g1 = grads(1, 0, N_W);
  mc_start(&g_m);
  assert_true(mc_send_chunk(&g_m, 1, w.inc[1], 0, w.t->id, g1, N_W, 0, false));
  count_arg ca = {s, 1};
  assert_true(wait_until(pushed_at_least, &ca, WAIT_MS));
  assert_int_equal(atomic_load(&s->active_calls), 1);
  /* the push never finishes: stop gives it the drain, then cancels it */
  const int64_t t0 = px_h_now_ms();
  assert_int_equal(px_service_stop(&g_f.svc), 0);
  const int64_t ms = px_h_now_ms() - t0;
  g_f.started = false;
  if (ms < 500) fail_msg("stop took %lld ms: less than --drain-timeout 0.5", (long long)ms);
  if (ms >= 20000) fail_msg("stop took %lld ms", (long long)ms);
  mc_finish(&g_m);
  assert_true(g_m.status != PX_ST_OK);
  px_sf_mcall_destroy(&g_m);
  assert_int_equal(atomic_load(&s->active_calls), 0);
  assert_int_equal(px_rpc_server_live_calls(s->rpc), 0);
  /* its contribution never made a step */
  assert_int_equal(chunk_version(&w.t->chunks[0]), 0);
  assert_int_equal(atomic_load(&s->ctr.steps_completed), 0);
  free(g1);
}

static void test_stop_final_checkpoint(void** state) {
  (void)state;
  /* with a directory but no tensor: nothing to write */
  assert_int_equal(px_h_mkdtemp(g_dir, sizeof g_dir), 0);
  const char* more[] = {"--checkpoint-dir", g_dir, NULL};
  start(more);
  assert_int_equal(px_sf_stop(&g_f), 0);
  assert_int_equal(count_ckpt_files(g_dir), 0);

  /* a tensor at version 0: written at stop */
  start(more);
  px_sf_declare_f32(&g_f, "w", N_W, 3);
  assert_int_equal(px_sf_stop(&g_f), 0);
  expect_file(g_dir, "ckpt-00000000000000000000.safetensors", true);
  assert_int_equal(count_ckpt_files(g_dir), 1);

  /* the directory is unusable by the time the server stops (a file took its place; a
   * directory merely removed is created again): -1 */
  assert_int_equal(px_h_mkdtemp(g_dir2, sizeof g_dir2), 0);
  const char* more2[] = {"--checkpoint-dir", g_dir2, NULL};
  px_server* s = start(more2);
  px_sf_declare_f32(&g_f, "w", N_W, 3);
  px_h_rmtree(g_dir2);
  FILE* blocker = fopen(g_dir2, "w");
  assert_non_null(blocker);
  fclose(blocker);
  assert_int_equal(px_service_stop(&g_f.svc), -1);
  unlink(g_dir2);
  g_f.started = false;
  px_ckpt_info info;
  px_ckpt_get_info(&s->ckpt, &info);
  assert_int_equal(info.written, 0);
  assert_int_equal(info.failures, 1);
  g_dir2[0] = 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_init_errors, teardown),
      cmocka_unit_test_teardown(test_init_restores_newest, teardown),
      cmocka_unit_test_teardown(test_method_table, teardown),
      cmocka_unit_test_teardown(test_start_errors, teardown),
      cmocka_unit_test_teardown(test_token, teardown),
      cmocka_unit_test_teardown(test_max_calls, teardown),
      cmocka_unit_test_teardown(test_drain_gate, teardown),
      cmocka_unit_test_teardown(test_stop_ends_parked_pull, teardown),
      cmocka_unit_test_teardown(test_stop_drains_push_in_flight, teardown),
      cmocka_unit_test_teardown(test_stop_drain_timeout_cancels, teardown),
      cmocka_unit_test_teardown(test_stop_final_checkpoint, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
