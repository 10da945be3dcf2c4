/* A test server on loopback with methods of every kind, and the synchronisation the rpc
 * unit tests share (tests/unit/common/test_rpc_*.c). See rpc_fixture.h. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec/checksum.h"
#include "rpc/rpc_base.h"
#include "rpc/rpc_client.h"
#include "rpc/rpc_server.h"
#include "util/iov.h"

#include "rpc_fixture.h"



/* ---- synchronisation --------------------------------------------------------------- */

pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
pthread_cond_t g_cv;

void deadline_in(struct timespec* ts, int64_t ms) {
  clock_gettime(CLOCK_MONOTONIC, ts);
  ts->tv_sec += ms / 1000;
  ts->tv_nsec += (ms % 1000) * 1000000L;
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000L;
  }
}

int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}



/* ---- zero-copy bodies and their release callbacks ---------------------------------- */

/* One slot per body handed to a send; the release frees the buffer on its first run
 * only, so that a second run is counted rather than crashing. */
rel_slot g_rel[MAX_REL];
atomic_long g_bodies_sent;     /* bodies with a release handed to any send */
atomic_long g_bodies_released; /* release runs, over the whole file */

void rel_free(void* p) {
  rel_slot* r = p;
  if (atomic_fetch_add(&r->runs, 1) == 0) free(r->buf);
  atomic_fetch_add(&g_bodies_released, 1);
  LOCKED((void)0);
}

void rel_reset(void) {
  for (int i = 0; i < MAX_REL; i++) {
    g_rel[i].buf = NULL;
    atomic_store(&g_rel[i].runs, 0);
  }
}

int rel_runs(int i) { return atomic_load(&g_rel[i].runs); }

bool rel_all_ran(int n) {
  for (int i = 0; i < n; i++)
    if (atomic_load(&g_rel[i].runs) == 0) return false;
  return true;
}

/* Position-dependent bytes, so that lost, repeated or reordered segments show. */
uint8_t pat(uint32_t seed, uint32_t msg, size_t j) {
  uint64_t x = (uint64_t)j * 0x9E3779B97F4A7C15ull + (uint64_t)msg * 0xBF58476D1CE4E5B9ull + seed;
  x ^= x >> 29;
  return (uint8_t)(x >> 17);
}

uint8_t* pat_buf(uint32_t seed, uint32_t msg, size_t n) {
  uint8_t* b = malloc(n ? n : 1);
  if (!b) return NULL;
  for (size_t j = 0; j < n; j++) b[j] = pat(seed, msg, j);
  return b;
}

void put_u32(uint8_t* p, uint32_t v) { memcpy(p, &v, 4); }
uint32_t get_u32(const uint8_t* p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}
uint64_t get_u64(const uint8_t* p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

/* ---- server handlers ------------------------------------------------------------------ */

rpc_fixture_state S;

atomic_long g_msg_bodies, g_msg_releases;

void release_msg(void* p) {
  atomic_fetch_add(&g_msg_releases, 1);
  px_msg_free(p);
}

/* Echo: "echo:" as the copied head and the request itself as the zero-copy body; the
 * request is freed by the body's release. */
void echo_on_call(void* svc, px_srv_call* call, px_msg* req) {
  (void)svc;
  char peer[128];
  px_srv_call_peer(call, peer, sizeof peer);
  LOCKED(S.echo_calls++; snprintf(S.echo_peer, sizeof S.echo_peer, "%s", peer));
  if (!req) {
    px_srv_call_finish(call, NULL, PX_ST_INVALID_ARGUMENT, "no request");
    return;
  }
  size_t n;
  const uint8_t* p = px_msg_flat(req, &n);
  if (!p) {
    px_msg_free(req);
    px_srv_call_finish(call, NULL, PX_ST_RESOURCE_EXHAUSTED, "flat");
    return;
  }
  atomic_fetch_add(&g_msg_bodies, 1);
  px_out out = {"echo:", 5, p, n, release_msg, req};
  px_srv_call_finish(call, &out, PX_ST_OK, NULL);
}

void fail_on_call(void* svc, px_srv_call* call, px_msg* req) {
  (void)svc;
  px_msg_free(req);
  px_srv_call_finish(call, NULL, PX_ST_INVALID_ARGUMENT, "bad thing");
}

/* Park: keeps no reference and never finishes; the call ends at the client's deadline. */
void park_on_closed(px_srv_call* call, void* ctx, bool cancelled) {
  (void)call;
  (void)ctx;
  LOCKED(if (S.park_nev < 7) S.park_events[S.park_nev++] = 'C'; S.park_cancelled = cancelled);
}
void park_on_done(px_srv_call* call, void* ctx) {
  (void)call;
  (void)ctx;
  LOCKED(if (S.park_nev < 7) S.park_events[S.park_nev++] = 'D');
}
const px_srv_call_cbs park_cbs = {NULL, NULL, park_on_closed, park_on_done};
void park_on_call(void* svc, px_srv_call* call, px_msg* req) {
  (void)svc;
  px_msg_free(req);
  px_srv_call_set(call, &park_cbs, NULL);
  LOCKED(S.park_calls++);
}

/* Hold: parks the call with a reference, as parked work in the service does; on_closed
 * drops it. */
void hold_on_closed(px_srv_call* call, void* ctx, bool cancelled) {
  (void)ctx;
  px_srv_call* parked;
  pthread_mutex_lock(&g_mu);
  if (S.hold_nev < 7) S.hold_events[S.hold_nev++] = 'C';
  S.hold_cancelled = cancelled;
  parked = S.hold_parked;
  S.hold_parked = NULL;
  pthread_cond_broadcast(&g_cv);
  pthread_mutex_unlock(&g_mu);
  if (parked == call) px_srv_call_unref(call);
}
void hold_on_done(px_srv_call* call, void* ctx) {
  (void)call;
  (void)ctx;
  LOCKED(if (S.hold_nev < 7) S.hold_events[S.hold_nev++] = 'D');
}
const px_srv_call_cbs hold_cbs = {NULL, NULL, hold_on_closed, hold_on_done};
void hold_on_call(void* svc, px_srv_call* call, px_msg* req) {
  (void)svc;
  px_msg_free(req);
  px_srv_call_set(call, &hold_cbs, NULL);
  px_srv_call_ref(call);
  LOCKED(S.hold_calls++; S.hold_parked = call);
}

/* Count: reads every message; at the half-close replies {count, bytes, hash}. */
void count_on_message(px_srv_call* call, void* ctx, px_msg* msg, bool ok) {
  count_ctx* c = ctx;
  if (!ok) {
    LOCKED(S.count_failed++);
    return;
  }
  if (!msg) {
    uint8_t reply[24];
    memcpy(reply, &c->count, 8);
    memcpy(reply + 8, &c->bytes, 8);
    memcpy(reply + 16, &c->hash, 8);
    px_out out = {reply, sizeof reply, NULL, 0, NULL, NULL};
    px_srv_call_finish(call, &out, PX_ST_OK, NULL);
    return;
  }
  size_t n;
  const uint8_t* p = px_msg_flat(msg, &n);
  c->count++;
  c->bytes += n;
  c->hash = c->hash * 31 + (p ? px_checksum(p, n) : 0);
  px_msg_free(msg);
  px_srv_call_read(call);
}
void count_on_done(px_srv_call* call, void* ctx) {
  (void)call;
  free(ctx);
  LOCKED(S.count_done++);
}
const px_srv_call_cbs count_cbs = {count_on_message, NULL, NULL, count_on_done};
void count_on_call(void* svc, px_srv_call* call, px_msg* req) {
  (void)svc;
  (void)req; /* NULL for client streaming */
  count_ctx* c = calloc(1, sizeof *c);
  if (!c) {
    px_srv_call_finish(call, NULL, PX_ST_RESOURCE_EXHAUSTED, "oom");
    return;
  }
  px_srv_call_set(call, &count_cbs, c);
  px_srv_call_read(call);
}

/* Sink: accepts the call and never reads, so the client's sends stall on flow control. */
void sink_on_closed(px_srv_call* call, void* ctx, bool cancelled) {
  (void)call;
  (void)ctx;
  LOCKED(if (cancelled) S.sink_closed_cancelled++);
}
void sink_on_done(px_srv_call* call, void* ctx) {
  (void)call;
  (void)ctx;
  LOCKED(S.sink_done++);
}
const px_srv_call_cbs sink_cbs = {NULL, NULL, sink_on_closed, sink_on_done};
void sink_on_call(void* svc, px_srv_call* call, px_msg* req) {
  (void)svc;
  (void)req;
  px_srv_call_set(call, &sink_cbs, NULL);
  LOCKED(S.sink_calls++);
}

/* Stream: request {k, size, seed} (u32 each); sends k messages of size bytes, each a
 * zero-copy body in g_rel[i], one send at a time; the last goes with the status. */
void stream_send_next(px_srv_call* call, stream_ctx* s) {
  uint32_t i = s->i++;
  uint8_t* b = pat_buf(s->seed, i, s->size);
  if (!b || i >= MAX_REL) {
    free(b);
    px_srv_call_finish(call, NULL, PX_ST_RESOURCE_EXHAUSTED, "stream");
    return;
  }
  g_rel[i].buf = b;
  atomic_fetch_add(&g_bodies_sent, 1);
  px_out out = {NULL, 0, b, s->size, rel_free, &g_rel[i]};
  if (i + 1 == s->k) {
    px_srv_call_finish(call, &out, PX_ST_OK, NULL);
  } else if (!px_srv_call_send(call, &out)) {
    LOCKED(S.stream_send_fail++);
  }
}
void stream_on_sent(px_srv_call* call, void* ctx, bool ok) {
  if (!ok) {
    LOCKED(S.stream_send_fail++);
    return;
  }
  stream_send_next(call, ctx);
}
void stream_on_done(px_srv_call* call, void* ctx) {
  (void)call;
  free(ctx);
  LOCKED(S.stream_done++);
}
const px_srv_call_cbs stream_cbs = {NULL, stream_on_sent, NULL, stream_on_done};
void stream_on_call(void* svc, px_srv_call* call, px_msg* req) {
  (void)svc;
  size_t n = 0;
  const uint8_t* p = req ? px_msg_flat(req, &n) : NULL;
  if (!p || n != 12) {
    px_msg_free(req);
    px_srv_call_finish(call, NULL, PX_ST_INVALID_ARGUMENT, "want 12 bytes");
    return;
  }
  stream_ctx* s = calloc(1, sizeof *s);
  if (!s) {
    px_msg_free(req);
    px_srv_call_finish(call, NULL, PX_ST_RESOURCE_EXHAUSTED, "oom");
    return;
  }
  s->k = get_u32(p);
  s->size = get_u32(p + 4);
  s->seed = get_u32(p + 8);
  px_msg_free(req);
  px_srv_call_set(call, &stream_cbs, s);
  if (s->k == 0) {
    px_srv_call_finish(call, NULL, PX_ST_OK, NULL);
    return;
  }
  stream_send_next(call, s);
}

const px_rpc_method g_methods[] = {
    {M_ECHO, PX_RPC_UNARY, echo_on_call},
    {M_FAIL, PX_RPC_UNARY, fail_on_call},
    {M_PARK, PX_RPC_UNARY, park_on_call},
    {M_HOLD, PX_RPC_UNARY, hold_on_call},
    {M_COUNT, PX_RPC_CLIENT_STREAMING, count_on_call},
    {M_SINK, PX_RPC_CLIENT_STREAMING, sink_on_call},
    {M_STREAM, PX_RPC_SERVER_STREAMING, stream_on_call},
};
const size_t g_nmethods = sizeof g_methods / sizeof g_methods[0];

/* ---- the shared server and channel ------------------------------------------------------ */

px_rpc_server* g_srv;
px_rpc_channel* g_ch;
char g_target[64];

int group_setup(void** state) {
  (void)state;
  pthread_condattr_t a;
  pthread_condattr_init(&a);
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  pthread_cond_init(&g_cv, &a);
  pthread_condattr_destroy(&a);
  px_rpc_init();
  char err[256] = "";
  int port = 0;
  px_rpc_server_opts o = {.listen = "127.0.0.1:0", .cq_threads = 2};
  g_srv = px_rpc_server_start(&o, g_methods, NMETHODS, NULL, &port, err, sizeof err);
  if (!g_srv || port <= 0) {
    fprintf(stderr, "server start failed: %s\n", err);
    return -1;
  }
  snprintf(g_target, sizeof g_target, "127.0.0.1:%d", port);
  g_ch = px_rpc_channel_create(g_target, err, sizeof err);
  if (!g_ch) {
    fprintf(stderr, "channel create failed: %s\n", err);
    return -1;
  }
  return 0;
}

int group_teardown(void** state) {
  (void)state;
  px_rpc_channel_destroy(g_ch);
  px_rpc_server_shutdown(g_srv, 2000);
  size_t live = px_rpc_server_live_calls(g_srv);
  px_rpc_server_destroy(g_srv);
  px_rpc_shutdown();
  int rc = 0;
  if (live != 0) {
    fprintf(stderr, "%zu calls still live after shutdown\n", live);
    rc = -1;
  }
  /* Every zero-copy body handed to a send was released exactly once. */
  if (atomic_load(&g_bodies_sent) != atomic_load(&g_bodies_released) ||
      atomic_load(&g_msg_bodies) != atomic_load(&g_msg_releases)) {
    fprintf(stderr, "releases: %ld bodies sent, %ld released; %ld echo bodies, %ld released\n",
            atomic_load(&g_bodies_sent), atomic_load(&g_bodies_released),
            atomic_load(&g_msg_bodies), atomic_load(&g_msg_releases));
    rc = -1;
  }
  pthread_cond_destroy(&g_cv);
  return rc;
}

/* ---- client helpers ------------------------------------------------------------------------ */

/* What a client call saw; guarded by g_mu. */

void rec_on_done(px_cli_call* call, void* ctx, int status, const char* details) {
  (void)call;
  cli_rec* r = ctx;
  LOCKED(r->status = status; snprintf(r->details, sizeof r->details, "%s", details);
         r->done = true);
}

void cli_wait_done(cli_rec* r) { WAIT_FOR(r->done); }

