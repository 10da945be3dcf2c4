/* The in-process server of the server's unit tests (server_fixture.h). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "server_fixture.h"

#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec/checksum.h"
#include "codec/dtype.h"
#include "codec/initializer.h"
#include "codec/payload.h"
#include "config.h"
#include "paramex.pb-c.h"
#include "rpc/rpc_base.h"
#include "util/clock.h"
#include "util/log.h"
#include "wire/chunk_msg.h"

const char** px_sf_flags(const char** out, size_t cap, const char* const* a,
                         const char* const* b) {
  size_t n = 0;
  for (size_t i = 0; a && a[i] && n + 1 < cap; i++) out[n++] = a[i];
  for (size_t i = 0; b && b[i] && n + 1 < cap; i++) out[n++] = b[i];
  out[n] = NULL;
  return out;
}

bool px_sf_wait_until(bool (*fn)(void* arg), void* arg, int64_t ms) {
  const int64_t end = px_h_now_ms() + ms;
  for (;;) {
    if (fn(arg)) return true;
    if (px_h_now_ms() > end) return fn(arg);
    sched_yield();
  }
}

bool px_sf_no_active_calls(void* srv) {
  return atomic_load(&((px_server*)srv)->active_calls) == 0;
}

void px_sf_copy_params(px_tensor_state* t, float* dst) {
  for (uint32_t i = 0; i < t->nchunks; i++) {
    px_chunk_state* c = &t->chunks[i];
    pthread_mutex_lock(&c->mu);
    memcpy(dst + (size_t)i * t->chunk_elems, c->params, (size_t)c->elems * sizeof(float));
    pthread_mutex_unlock(&c->mu);
  }
}

void px_sf_init(px_sf* f, const char* const* args) {
  memset(f, 0, sizeof *f);
  const char* argv[64] = {"paramex-server", "--threads", "1", "--log-level", "warn"};
  int argc = 5;
  for (size_t i = 0; args && args[i] && argc < 63; i++) argv[argc++] = args[i];
  px_config cfg;
  char err[512] = "";
  if (px_config_parse(&cfg, argc, (char**)argv, err, sizeof err) != 0) fail_msg("flags: %s", err);
  px_log_init("test-server", PX_LOG_WARN);
  px_rpc_init();
  if (px_service_init(&f->svc, &cfg, err, sizeof err) != 0) fail_msg("service init: %s", err);
  f->srv = &f->svc.srv;
  f->inited = true;
}

void px_sf_start(px_sf* f, const char* const* args) {
  const char* a[64];
  size_t n = 0;
  a[n++] = "--listen";
  a[n++] = "127.0.0.1:0";
  for (size_t i = 0; args && args[i] && n < 62; i++) a[n++] = args[i];
  a[n] = NULL;
  px_sf_init(f, a);
  char err[512] = "";
  if (px_service_start(&f->svc, &f->port, err, sizeof err) != 0) fail_msg("service start: %s", err);
  snprintf(f->addr, sizeof f->addr, "127.0.0.1:%d", f->port);
  f->ch = px_rpc_channel_create(f->addr, err, sizeof err);
  if (!f->ch) fail_msg("channel: %s", err);
  f->started = true;
}

int px_sf_stop(px_sf* f) {
  int rc = 0;
  if (f->ch) px_rpc_channel_destroy(f->ch);
  f->ch = NULL;
  if (f->started) rc = px_service_stop(&f->svc);
  if (f->inited) {
    px_service_deinit(&f->svc);
    px_rpc_shutdown();
  }
  f->started = f->inited = false;
  return rc;
}

uint64_t px_sf_join(px_sf* f, uint32_t rank, uint32_t world) {
  Paramex__V1__JoinRequest req = PARAMEX__V1__JOIN_REQUEST__INIT;
  req.rank = rank;
  req.world_size = world;
  req.name = "fixture";
  ProtobufCMessage* resp = NULL;
  char d[256] = "";
  int st = px_h_unary_pb(f->ch, PX_H_PATH_JOIN, &req.base, &paramex__v1__join_response__descriptor,
                         &resp, 20000, d, sizeof d);
  if (st != PX_ST_OK) fail_msg("Join rank %u: %s: %s", rank, px_status_name(st), d);
  uint64_t inc = ((Paramex__V1__JoinResponse*)resp)->incarnation;
  protobuf_c_message_free_unpacked(resp, NULL);
  f->decl_rank = rank;
  f->decl_inc = inc;
  return inc;
}

uint32_t px_sf_declare_f32(px_sf* f, const char* name, uint64_t numel, uint64_t seed) {
  Paramex__V1__DeclareRequest req = PARAMEX__V1__DECLARE_REQUEST__INIT;
  Paramex__V1__Initializer ini = PARAMEX__V1__INITIALIZER__INIT;
  uint64_t shape[1] = {numel};
  req.name = (char*)name;
  req.dtype = PARAMEX__V1__DTYPE__DTYPE_F32;
  req.n_shape = 1;
  req.shape = shape;
  ini.kind = PARAMEX__V1__INITIALIZER__KIND__KIND_NORMAL;
  ini.b = 0.02f;
  ini.seed = seed;
  req.initializer = &ini;
  /* only a joined worker creates tensors */
  if (!f->decl_inc) px_sf_join(f, 0, f->srv->cfg.workers);
  req.worker_id = f->decl_rank;
  req.incarnation = f->decl_inc;
  ProtobufCMessage* resp = NULL;
  char d[256] = "";
  int st = px_h_unary_pb(f->ch, PX_H_PATH_DECLARE, &req.base,
                         &paramex__v1__declare_response__descriptor, &resp, 20000, d, sizeof d);
  if (st != PX_ST_OK) fail_msg("Declare %s: %s: %s", name, px_status_name(st), d);
  uint32_t id = ((Paramex__V1__DeclareResponse*)resp)->tensor_id;
  protobuf_c_message_free_unpacked(resp, NULL);
  return id;
}

px_h_msg px_sf_push_chunk(uint8_t* head, uint32_t rank, uint64_t incarnation, uint64_t step,
                          uint32_t tensor, uint32_t chunk, const float* g, size_t n) {
  px_chunk h = {0};
  h.worker_id = rank;
  h.incarnation = incarnation;
  h.step = step;
  h.tensor_id = tensor;
  h.chunk = chunk;
  h.dtype = PX_DT_F32;
  h.encoding = PX_ENC_RAW;
  h.raw_len = (uint32_t)(n * 4);
  h.checksum = px_checksum(g, n * 4);
  size_t hl = px_chunk_encode_header(PX_CHUNK_PUSH, &h, n * 4, head, PX_CHUNK_HDR_MAX);
  assert_true(hl > 0);
  return (px_h_msg){head, hl, g, n * 4};
}

uint8_t* px_sf_pull_request(uint32_t worker, const uint32_t* ids, size_t nt, uint64_t min_version,
                            size_t* len) {
  Paramex__V1__PullRequest req = PARAMEX__V1__PULL_REQUEST__INIT;
  req.worker_id = worker;
  req.n_tensor_ids = nt;
  req.tensor_ids = (uint32_t*)ids;
  req.min_version = min_version;
  *len = paramex__v1__pull_request__get_packed_size(&req);
  uint8_t* b = malloc(*len ? *len : 1);
  assert_non_null(b);
  paramex__v1__pull_request__pack(&req, b);
  return b;
}

/* ---- a call driven by hand ----------------------------------------------------------------- */

static void mc_on_message(px_cli_call* call, void* ctx, px_msg* msg) {
  (void)call;
  px_sf_mcall* m = ctx;
  pthread_mutex_lock(&m->mu);
  m->msg = msg;
  m->have_msg = true;
  pthread_cond_broadcast(&m->cv);
  pthread_mutex_unlock(&m->mu);
}

static void mc_on_sent(px_cli_call* call, void* ctx, bool ok) {
  (void)call;
  px_sf_mcall* m = ctx;
  pthread_mutex_lock(&m->mu);
  m->sent = ok ? 1 : 2;
  pthread_cond_broadcast(&m->cv);
  pthread_mutex_unlock(&m->mu);
}

static void mc_on_done(px_cli_call* call, void* ctx, int status, const char* details) {
  (void)call;
  px_sf_mcall* m = ctx;
  pthread_mutex_lock(&m->mu);
  m->done = true;
  m->status = status;
  snprintf(m->details, sizeof m->details, "%s", details ? details : "");
  pthread_cond_broadcast(&m->cv);
  pthread_mutex_unlock(&m->mu);
}

static const px_cli_call_cbs mc_cbs = {mc_on_message, mc_on_sent, mc_on_done};

px_cli_call* px_sf_mcall_start(px_sf_mcall* m, px_rpc_channel* ch, const char* path,
                               int64_t timeout_ms) {
  memset(m, 0, sizeof *m);
  pthread_mutex_init(&m->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&m->cv, &ca);
  pthread_condattr_destroy(&ca);
  m->call = px_cli_call_start(ch, path, timeout_ms, true, &mc_cbs, m);
  if (!m->call) fail_msg("cannot start a call on %s", path);
  return m->call;
}

bool px_sf_mcall_wait(px_sf_mcall* m, const bool* flag, const int* iflag) {
  struct timespec until;
  px_deadline_ts(&until, CLOCK_MONOTONIC, 20000);
  while (!(flag ? *flag : *iflag != 0))
    if (pthread_cond_timedwait(&m->cv, &m->mu, &until) != 0) return flag ? *flag : *iflag != 0;
  return true;
}

void px_sf_mcall_destroy(px_sf_mcall* m) {
  if (m->msg) px_msg_free(m->msg);
  m->msg = NULL;
  pthread_mutex_destroy(&m->mu);
  pthread_cond_destroy(&m->cv);
}
