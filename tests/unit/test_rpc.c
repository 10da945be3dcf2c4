/* Unit tests of common/rpc: the transport adapter, exercised end to end over loopback with
 * an in-process server (ephemeral port) and a client channel.
 *
 * Callbacks run on completion-queue threads, where cmocka assertions must not be used:
 * they record what happened under g_mu and the test thread asserts after a bounded wait. */
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

#include "codec/codec.h"
#include "rpc/rpc.h"

#define M_ECHO "/pmxtest.T/Echo"     /* unary: replies "echo:" + request */
#define M_FAIL "/pmxtest.T/Fail"     /* unary: INVALID_ARGUMENT "bad thing" */
#define M_PARK "/pmxtest.T/Park"     /* unary: never answers */
#define M_COUNT "/pmxtest.T/Count"   /* client streaming: replies count, bytes, hash */
#define M_SINK "/pmxtest.T/Sink"     /* client streaming: never reads, never answers */
#define M_STREAM "/pmxtest.T/Stream" /* server streaming: k messages of a requested size */
#define M_HOLD "/pmxtest.T/Hold"     /* unary: parks the call with a reference */

#define WAIT_MS 20000 /* upper bound of every wait; the tests normally take milliseconds */
#define MAX_REL 128

/* ---- synchronisation --------------------------------------------------------------- */

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv;

static void deadline_in(struct timespec* ts, int64_t ms) {
  clock_gettime(CLOCK_MONOTONIC, ts);
  ts->tv_sec += ms / 1000;
  ts->tv_nsec += (ms % 1000) * 1000000L;
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000L;
  }
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits (bounded) until expr, evaluated under g_mu, holds; fails the test otherwise. */
#define WAIT_FOR(expr)                                                             \
  do {                                                                             \
    struct timespec until_;                                                        \
    deadline_in(&until_, WAIT_MS);                                                 \
    pthread_mutex_lock(&g_mu);                                                     \
    while (!(expr)) {                                                              \
      if (pthread_cond_timedwait(&g_cv, &g_mu, &until_) == ETIMEDOUT) break;       \
    }                                                                              \
    bool ok_ = (expr);                                                             \
    pthread_mutex_unlock(&g_mu);                                                   \
    if (!ok_) fail_msg("timed out after %d ms waiting for %s", WAIT_MS, #expr);    \
  } while (0)

#define LOCKED(stmt)               \
  do {                             \
    pthread_mutex_lock(&g_mu);     \
    stmt;                          \
    pthread_cond_broadcast(&g_cv); \
    pthread_mutex_unlock(&g_mu);   \
  } while (0)

/* ---- zero-copy bodies and their release callbacks ---------------------------------- */

/* One slot per body handed to a send; the release frees the buffer on its first run
 * only, so that a second run is counted rather than crashing. */
typedef struct rel_slot {
  uint8_t* buf;
  atomic_int runs;
} rel_slot;
static rel_slot g_rel[MAX_REL];
static atomic_long g_bodies_sent;     /* bodies with a release handed to any send */
static atomic_long g_bodies_released; /* release runs, over the whole file */

static void rel_free(void* p) {
  rel_slot* r = p;
  if (atomic_fetch_add(&r->runs, 1) == 0) free(r->buf);
  atomic_fetch_add(&g_bodies_released, 1);
  LOCKED((void)0);
}

static void rel_reset(void) {
  for (int i = 0; i < MAX_REL; i++) {
    g_rel[i].buf = NULL;
    atomic_store(&g_rel[i].runs, 0);
  }
}

static int rel_runs(int i) { return atomic_load(&g_rel[i].runs); }

static bool rel_all_ran(int n) {
  for (int i = 0; i < n; i++)
    if (atomic_load(&g_rel[i].runs) == 0) return false;
  return true;
}

/* Position-dependent bytes, so that lost, repeated or reordered segments show. */
static uint8_t pat(uint32_t seed, uint32_t msg, size_t j) {
  uint64_t x = (uint64_t)j * 0x9E3779B97F4A7C15ull + (uint64_t)msg * 0xBF58476D1CE4E5B9ull + seed;
  x ^= x >> 29;
  return (uint8_t)(x >> 17);
}

static uint8_t* pat_buf(uint32_t seed, uint32_t msg, size_t n) {
  uint8_t* b = malloc(n ? n : 1);
  if (!b) return NULL;
  for (size_t j = 0; j < n; j++) b[j] = pat(seed, msg, j);
  return b;
}

static void put_u32(uint8_t* p, uint32_t v) { memcpy(p, &v, 4); }
static uint32_t get_u32(const uint8_t* p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}
static uint64_t get_u64(const uint8_t* p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

/* ---- server handlers ------------------------------------------------------------------ */

/* Everything below is guarded by g_mu. */
static struct {
  int echo_calls;
  char echo_peer[128];
  int count_done;       /* Count calls whose on_done ran */
  int count_failed;     /* Count reads that failed */
  int stream_done;      /* Stream calls whose on_done ran */
  int stream_send_fail; /* sends refused or failed */
  int sink_calls, sink_done, sink_closed_cancelled;
  /* Park and Hold: the order of callbacks, "C" for on_closed and "D" for on_done */
  int park_calls;
  char park_events[8];
  int park_nev;
  bool park_cancelled;
  int hold_calls;
  char hold_events[8];
  int hold_nev;
  bool hold_cancelled;
  px_srv_call* hold_parked; /* the parked reference, dropped in on_closed */
} S;

static atomic_long g_msg_bodies, g_msg_releases;

static void release_msg(void* p) {
  atomic_fetch_add(&g_msg_releases, 1);
  px_msg_free(p);
}

/* Echo: "echo:" as the copied head and the request itself as the zero-copy body; the
 * request is freed by the body's release. */
static void echo_on_call(void* svc, px_srv_call* call, px_msg* req) {
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

static void fail_on_call(void* svc, px_srv_call* call, px_msg* req) {
  (void)svc;
  px_msg_free(req);
  px_srv_call_finish(call, NULL, PX_ST_INVALID_ARGUMENT, "bad thing");
}

/* Park: keeps no reference and never finishes; the call ends at the client's deadline. */
static void park_on_closed(px_srv_call* call, void* ctx, bool cancelled) {
  (void)call;
  (void)ctx;
  LOCKED(if (S.park_nev < 7) S.park_events[S.park_nev++] = 'C'; S.park_cancelled = cancelled);
}
static void park_on_done(px_srv_call* call, void* ctx) {
  (void)call;
  (void)ctx;
  LOCKED(if (S.park_nev < 7) S.park_events[S.park_nev++] = 'D');
}
static const px_srv_call_cbs park_cbs = {NULL, NULL, park_on_closed, park_on_done};
static void park_on_call(void* svc, px_srv_call* call, px_msg* req) {
  (void)svc;
  px_msg_free(req);
  px_srv_call_set(call, &park_cbs, NULL);
  LOCKED(S.park_calls++);
}

/* Hold: parks the call with a reference, as parked work in the service does; on_closed
 * drops it. */
static void hold_on_closed(px_srv_call* call, void* ctx, bool cancelled) {
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
static void hold_on_done(px_srv_call* call, void* ctx) {
  (void)call;
  (void)ctx;
  LOCKED(if (S.hold_nev < 7) S.hold_events[S.hold_nev++] = 'D');
}
static const px_srv_call_cbs hold_cbs = {NULL, NULL, hold_on_closed, hold_on_done};
static void hold_on_call(void* svc, px_srv_call* call, px_msg* req) {
  (void)svc;
  px_msg_free(req);
  px_srv_call_set(call, &hold_cbs, NULL);
  px_srv_call_ref(call);
  LOCKED(S.hold_calls++; S.hold_parked = call);
}

/* Count: reads every message; at the half-close replies {count, bytes, hash}. */
typedef struct count_ctx {
  uint64_t count, bytes, hash;
} count_ctx;
static void count_on_message(px_srv_call* call, void* ctx, px_msg* msg, bool ok) {
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
static void count_on_done(px_srv_call* call, void* ctx) {
  (void)call;
  free(ctx);
  LOCKED(S.count_done++);
}
static const px_srv_call_cbs count_cbs = {count_on_message, NULL, NULL, count_on_done};
static void count_on_call(void* svc, px_srv_call* call, px_msg* req) {
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
static void sink_on_closed(px_srv_call* call, void* ctx, bool cancelled) {
  (void)call;
  (void)ctx;
  LOCKED(if (cancelled) S.sink_closed_cancelled++);
}
static void sink_on_done(px_srv_call* call, void* ctx) {
  (void)call;
  (void)ctx;
  LOCKED(S.sink_done++);
}
static const px_srv_call_cbs sink_cbs = {NULL, NULL, sink_on_closed, sink_on_done};
static void sink_on_call(void* svc, px_srv_call* call, px_msg* req) {
  (void)svc;
  (void)req;
  px_srv_call_set(call, &sink_cbs, NULL);
  LOCKED(S.sink_calls++);
}

/* Stream: request {k, size, seed} (u32 each); sends k messages of size bytes, each a
 * zero-copy body in g_rel[i], one send at a time; the last goes with the status. */
typedef struct stream_ctx {
  uint32_t k, size, seed, i;
} stream_ctx;
static void stream_send_next(px_srv_call* call, stream_ctx* s) {
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
static void stream_on_sent(px_srv_call* call, void* ctx, bool ok) {
  if (!ok) {
    LOCKED(S.stream_send_fail++);
    return;
  }
  stream_send_next(call, ctx);
}
static void stream_on_done(px_srv_call* call, void* ctx) {
  (void)call;
  free(ctx);
  LOCKED(S.stream_done++);
}
static const px_srv_call_cbs stream_cbs = {NULL, stream_on_sent, NULL, stream_on_done};
static void stream_on_call(void* svc, px_srv_call* call, px_msg* req) {
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

static const px_rpc_method g_methods[] = {
    {M_ECHO, PX_RPC_UNARY, echo_on_call},
    {M_FAIL, PX_RPC_UNARY, fail_on_call},
    {M_PARK, PX_RPC_UNARY, park_on_call},
    {M_HOLD, PX_RPC_UNARY, hold_on_call},
    {M_COUNT, PX_RPC_CLIENT_STREAMING, count_on_call},
    {M_SINK, PX_RPC_CLIENT_STREAMING, sink_on_call},
    {M_STREAM, PX_RPC_SERVER_STREAMING, stream_on_call},
};
#define NMETHODS (sizeof g_methods / sizeof g_methods[0])

/* ---- the shared server and channel ------------------------------------------------------ */

static px_rpc_server* g_srv;
static px_rpc_channel* g_ch;
static char g_target[64];

static int group_setup(void** state) {
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

static int group_teardown(void** state) {
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
typedef struct cli_rec {
  bool done;
  int status;
  char details[128];
  int sent_ok, sent_fail;
  /* client streaming */
  uint32_t nmsgs, next, size, seed;
  int inflight, max_inflight, send_refused;
  px_msg* reply;
  /* server streaming */
  uint32_t got, bad, max_nseg;
  uint8_t* scratch;
  bool keep; /* keep received messages in kept[] for the test thread */
  px_msg* kept[8];
  uint32_t nkept;
  bool ended; /* on_message(NULL) seen */
} cli_rec;

static void rec_on_done(px_cli_call* call, void* ctx, int status, const char* details) {
  (void)call;
  cli_rec* r = ctx;
  LOCKED(r->status = status; snprintf(r->details, sizeof r->details, "%s", details);
         r->done = true);
}

static void cli_wait_done(cli_rec* r) { WAIT_FOR(r->done); }

/* ---- tests: status names ----------------------------------------------------------------- */

static void test_status_name(void** state) {
  (void)state;
  assert_string_equal(px_status_name(PX_ST_OK), "OK");
  assert_string_equal(px_status_name(PX_ST_CANCELLED), "CANCELLED");
  assert_string_equal(px_status_name(PX_ST_INVALID_ARGUMENT), "INVALID_ARGUMENT");
  assert_string_equal(px_status_name(PX_ST_DEADLINE_EXCEEDED), "DEADLINE_EXCEEDED");
  assert_string_equal(px_status_name(PX_ST_RESOURCE_EXHAUSTED), "RESOURCE_EXHAUSTED");
  assert_string_equal(px_status_name(PX_ST_FAILED_PRECONDITION), "FAILED_PRECONDITION");
  assert_string_equal(px_status_name(PX_ST_UNIMPLEMENTED), "UNIMPLEMENTED");
  assert_string_equal(px_status_name(PX_ST_UNAVAILABLE), "UNAVAILABLE");
  assert_string_equal(px_status_name(PX_ST_UNAUTHENTICATED), "UNAUTHENTICATED");
  assert_string_equal(px_status_name(17), "UNKNOWN_STATUS");
  assert_string_equal(px_status_name(-1), "UNKNOWN_STATUS");
  /* Every code has its own name. */
  for (int i = 0; i <= PX_ST_UNAUTHENTICATED; i++) {
    assert_non_null(px_status_name(i));
    assert_string_not_equal(px_status_name(i), "UNKNOWN_STATUS");
    for (int j = 0; j < i; j++) assert_string_not_equal(px_status_name(i), px_status_name(j));
  }
}

/* ---- tests: unary ------------------------------------------------------------------------- */

static void echo_round_trip(size_t n) {
  uint8_t* req = pat_buf(7, (uint32_t)n, n);
  assert_non_null(req);
  uint8_t* resp = NULL;
  size_t resp_len = 0;
  char details[128] = "x";
  int st = px_rpc_unary(g_ch, M_ECHO, req, n, 10000, true, &resp, &resp_len, details,
                         sizeof details);
  assert_int_equal(st, PX_ST_OK);
  assert_non_null(resp);
  assert_int_equal(resp_len, n + 5);
  assert_memory_equal(resp, "echo:", 5);
  if (n) assert_memory_equal(resp + 5, req, n);
  free(resp);
  free(req);
}

static void test_unary_round_trip(void** state) {
  (void)state;
  long bodies0 = atomic_load(&g_msg_bodies);
  echo_round_trip(0);
  echo_round_trip(1);
  echo_round_trip(1000);
  echo_round_trip((1u << 20) + 17); /* several segments on both sides */
  echo_round_trip(PX_RPC_MAX_MESSAGE - 5); /* the reply is exactly the limit */
  pthread_mutex_lock(&g_mu);
  int calls = S.echo_calls;
  char peer[128];
  snprintf(peer, sizeof peer, "%s", S.echo_peer);
  pthread_mutex_unlock(&g_mu);
  assert_true(calls >= 5);
  assert_true(strncmp(peer, "ipv4:127.0.0.1:", 15) == 0);
  /* Each request went back as a zero-copy body freed by its release, exactly once. */
  assert_int_equal(atomic_load(&g_msg_bodies) - bodies0, 5);
  WAIT_FOR(atomic_load(&g_msg_releases) == atomic_load(&g_msg_bodies));
}

static void test_unary_error_status_and_details(void** state) {
  (void)state;
  uint8_t* resp = NULL;
  size_t resp_len = 12345;
  char details[128] = "";
  int st = px_rpc_unary(g_ch, M_FAIL, "x", 1, 10000, true, &resp, &resp_len, details,
                         sizeof details);
  assert_int_equal(st, PX_ST_INVALID_ARGUMENT);
  assert_string_equal(details, "bad thing");
  assert_null(resp);
  assert_int_equal(resp_len, 12345);
  /* details is truncated to its capacity, always terminated */
  char small[4] = "zzz";
  st = px_rpc_unary(g_ch, M_FAIL, "x", 1, 10000, true, NULL, NULL, small, sizeof small);
  assert_int_equal(st, PX_ST_INVALID_ARGUMENT);
  assert_string_equal(small, "bad");
}

static void test_unknown_method_unimplemented(void** state) {
  (void)state;
  uint8_t* resp = NULL;
  size_t resp_len = 0;
  char details[128] = "";
  int st = px_rpc_unary(g_ch, "/pmxtest.T/NoSuchMethod", "abc", 3, 10000, true, &resp,
                         &resp_len, details, sizeof details);
  assert_int_equal(st, PX_ST_UNIMPLEMENTED);
  assert_null(resp);
  /* Many more: the generic request slot is re-armed each time, and a status that comes
   * back before the request is even sent (the server answers the headers) is handled. */
  int wrong = 0;
  for (int i = 0; i < 1000; i++) {
    st = px_rpc_unary(g_ch, (i & 1) ? "/other.Service/X" : "/pmxtest.T/NoSuchMethod", "abc", 3, 10000,
                       true, &resp, &resp_len, details, sizeof details);
    if (st != PX_ST_UNIMPLEMENTED) wrong++;
  }
  assert_int_equal(wrong, 0);
  assert_null(resp);
}

/* ---- tests: client streaming ----------------------------------------------------------------- */

static void cs_send_next(px_cli_call* call, cli_rec* r) {
  uint32_t i = r->next++;
  uint8_t* b = pat_buf(r->seed, i, r->size);
  g_rel[i].buf = b;
  atomic_fetch_add(&g_bodies_sent, 1);
  px_out out = {NULL, 0, b, r->size, rel_free, &g_rel[i]};
  LOCKED(r->inflight++; if (r->inflight > r->max_inflight) r->max_inflight = r->inflight);
  if (!px_cli_call_send(call, &out, i + 1 == r->nmsgs)) LOCKED(r->send_refused++; r->inflight--);
}

static void cs_on_sent(px_cli_call* call, void* ctx, bool ok) {
  cli_rec* r = ctx;
  bool more;
  pthread_mutex_lock(&g_mu);
  r->inflight--;
  if (ok) r->sent_ok++;
  else r->sent_fail++;
  more = ok && r->next < r->nmsgs;
  pthread_cond_broadcast(&g_cv);
  pthread_mutex_unlock(&g_mu);
  if (more) cs_send_next(call, r); /* back-pressure: the next send only after this one */
}

static void cs_on_message(px_cli_call* call, void* ctx, px_msg* msg) {
  (void)call;
  cli_rec* r = ctx;
  LOCKED(if (msg) { px_msg_free(r->reply); r->reply = msg; } else r->ended = true);
}

static const px_cli_call_cbs cs_cbs = {cs_on_message, cs_on_sent, rec_on_done};

static void test_client_streaming_backpressure(void** state) {
  (void)state;
  enum { N = 64, SIZE = 64 << 10 };
  rel_reset();
  cli_rec r;
  memset(&r, 0, sizeof r);
  r.nmsgs = N;
  r.size = SIZE;
  r.seed = 11;
  uint64_t want_hash = 0;
  for (uint32_t i = 0; i < N; i++) {
    uint8_t* b = pat_buf(r.seed, i, SIZE);
    want_hash = want_hash * 31 + px_checksum(b, SIZE);
    free(b);
  }
  pthread_mutex_lock(&g_mu);
  int done0 = S.count_done;
  pthread_mutex_unlock(&g_mu);

  px_cli_call* c = px_cli_call_start(g_ch, M_COUNT, 20000, true, &cs_cbs, &r);
  assert_non_null(c);
  assert_true(px_cli_call_read(c));
  cs_send_next(c, &r);
  px_cli_call_unref(c);
  cli_wait_done(&r);

  assert_int_equal(r.status, PX_ST_OK);
  assert_int_equal(r.send_refused, 0);
  assert_int_equal(r.sent_ok, N);
  assert_int_equal(r.sent_fail, 0);
  assert_int_equal(r.max_inflight, 1);
  assert_non_null(r.reply);
  size_t n;
  const uint8_t* p = px_msg_flat(r.reply, &n);
  assert_non_null(p);
  assert_int_equal(n, 24);
  assert_int_equal(get_u64(p), N);
  assert_int_equal(get_u64(p + 8), (uint64_t)N * SIZE);
  assert_true(get_u64(p + 16) == want_hash);
  px_msg_free(r.reply);
  WAIT_FOR(S.count_done == done0 + 1);
  WAIT_FOR(rel_all_ran(N));
  for (int i = 0; i < N; i++) assert_int_equal(rel_runs(i), 1);
}

/* A second send while one is pending is refused at once and its body released at once;
 * the pending send ends with on_sent(false) when the call is cancelled. The send is kept
 * pending deterministically: the channel points at a port nobody listens on (one a
 * server just gave back) and the call waits for the server to be ready. */
static void test_client_send_one_outstanding(void** state) {
  (void)state;
  char err[256] = "";
  int port = 0;
  px_rpc_server_opts so = {.listen = "127.0.0.1:0", .cq_threads = 1};
  px_rpc_server* tmp = px_rpc_server_start(&so, g_methods, NMETHODS, NULL, &port, err, sizeof err);
  assert_non_null(tmp);
  px_rpc_server_shutdown(tmp, 0);
  px_rpc_server_destroy(tmp);
  char target[64];
  snprintf(target, sizeof target, "127.0.0.1:%d", port);
  px_rpc_channel* ch = px_rpc_channel_create(target, err, sizeof err);
  assert_non_null(ch);

  rel_reset();
  cli_rec r;
  memset(&r, 0, sizeof r);
  px_cli_call* c = px_cli_call_start(ch, M_COUNT, 20000, true, &cs_cbs, &r);
  assert_non_null(c);
  g_rel[0].buf = pat_buf(1, 0, 1000);
  atomic_fetch_add(&g_bodies_sent, 1);
  px_out o1 = {"h", 1, g_rel[0].buf, 1000, rel_free, &g_rel[0]};
  assert_true(px_cli_call_send(c, &o1, false));
  g_rel[1].buf = pat_buf(1, 1, 64);
  atomic_fetch_add(&g_bodies_sent, 1);
  px_out o2 = {NULL, 0, g_rel[1].buf, 64, rel_free, &g_rel[1]};
  assert_false(px_cli_call_send(c, &o2, true));
  assert_int_equal(rel_runs(1), 1); /* released before the refusal returned */
  assert_int_equal(rel_runs(0), 0); /* the pending one is still referenced */
  assert_false(px_cli_call_close_send(c));
  pthread_mutex_lock(&g_mu);
  int sent = r.sent_ok + r.sent_fail;
  bool done = r.done;
  pthread_mutex_unlock(&g_mu);
  assert_int_equal(sent, 0);
  assert_false(done);
  px_cli_call_cancel(c);
  px_cli_call_unref(c);
  cli_wait_done(&r);
  assert_int_equal(r.status, PX_ST_CANCELLED);
  assert_int_equal(r.sent_ok, 0);
  assert_int_equal(r.sent_fail, 1);
  WAIT_FOR(rel_all_ran(2));
  assert_int_equal(rel_runs(0), 1);
  assert_int_equal(rel_runs(1), 1);
  px_rpc_channel_destroy(ch);
}

/* A client cancel reaches the server: on_closed(cancelled) then on_done. */
static void test_client_cancel_reaches_server(void** state) {
  (void)state;
  rel_reset();
  cli_rec r;
  memset(&r, 0, sizeof r);
  pthread_mutex_lock(&g_mu);
  int sink0 = S.sink_calls, sdone0 = S.sink_done, scanc0 = S.sink_closed_cancelled;
  pthread_mutex_unlock(&g_mu);
  px_cli_call* c = px_cli_call_start(g_ch, M_SINK, 20000, true, &cs_cbs, &r);
  assert_non_null(c);
  g_rel[0].buf = pat_buf(2, 0, 4096);
  atomic_fetch_add(&g_bodies_sent, 1);
  px_out o = {NULL, 0, g_rel[0].buf, 4096, rel_free, &g_rel[0]};
  assert_true(px_cli_call_send(c, &o, false));
  WAIT_FOR(S.sink_calls == sink0 + 1);
  px_cli_call_cancel(c);
  WAIT_FOR(S.sink_done == sdone0 + 1);
  assert_int_equal(S.sink_closed_cancelled, scanc0 + 1);
  /* Our reference keeps the client call: on_done waits for the last one. */
  WAIT_FOR(r.sent_ok + r.sent_fail == 1);
  pthread_mutex_lock(&g_mu);
  bool early = r.done;
  pthread_mutex_unlock(&g_mu);
  assert_false(early);
  px_cli_call_unref(c);
  cli_wait_done(&r);
  assert_int_equal(r.status, PX_ST_CANCELLED);
  assert_int_equal(r.sent_ok + r.sent_fail, 1);
  WAIT_FOR(rel_all_ran(1));
  assert_int_equal(rel_runs(0), 1);
}

/* A message over the 4 MiB receive limit fails the call with RESOURCE_EXHAUSTED. */
static void test_oversized_message_resource_exhausted(void** state) {
  (void)state;
  size_t n = PX_RPC_MAX_MESSAGE + 1;
  uint8_t* req = calloc(1, n);
  assert_non_null(req);
  uint8_t* resp = NULL;
  size_t resp_len = 0;
  char details[128] = "";
  int st = px_rpc_unary(g_ch, M_ECHO, req, n, 10000, true, &resp, &resp_len, details,
                         sizeof details);
  free(req);
  assert_int_equal(st, PX_ST_RESOURCE_EXHAUSTED);
  assert_null(resp);

  /* The same on a client stream. */
  rel_reset();
  cli_rec r;
  memset(&r, 0, sizeof r);
  px_cli_call* c = px_cli_call_start(g_ch, M_COUNT, 10000, true, &cs_cbs, &r);
  assert_non_null(c);
  px_cli_call_read(c);
  const size_t big = (5u << 20) + 1;
  g_rel[0].buf = calloc(1, big);
  assert_non_null(g_rel[0].buf);
  atomic_fetch_add(&g_bodies_sent, 1);
  px_out o = {NULL, 0, g_rel[0].buf, big, rel_free, &g_rel[0]};
  px_cli_call_send(c, &o, true);
  px_cli_call_unref(c);
  cli_wait_done(&r);
  assert_int_equal(r.status, PX_ST_RESOURCE_EXHAUSTED);
  assert_null(r.reply);
  WAIT_FOR(rel_all_ran(1));
  assert_int_equal(rel_runs(0), 1);
}

/* ---- tests: server streaming ------------------------------------------------------------------ */

static void ss_on_message(px_cli_call* call, void* ctx, px_msg* msg) {
  cli_rec* r = ctx;
  if (!msg) {
    LOCKED(r->ended = true);
    return;
  }
  if (r->keep) {
    pthread_mutex_lock(&g_mu);
    if (r->nkept < 8) r->kept[r->nkept++] = msg;
    else px_msg_free(msg);
    pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mu);
    px_cli_call_read(call);
    return;
  }
  /* Reassemble from the segments and compare with what the server generated. */
  size_t nseg = 0;
  const px_iov* seg = px_msg_segments(msg, &nseg);
  size_t total = 0;
  bool bad = seg == NULL || px_msg_len(msg) != r->size;
  for (size_t i = 0; !bad && i < nseg; i++) {
    if (total + seg[i].n > r->size) {
      bad = true;
      break;
    }
    memcpy(r->scratch + total, seg[i].p, seg[i].n);
    total += seg[i].n;
  }
  if (!bad && total != r->size) bad = true;
  uint32_t idx;
  pthread_mutex_lock(&g_mu);
  idx = r->got;
  pthread_mutex_unlock(&g_mu);
  for (size_t j = 0; !bad && j < total; j++)
    if (r->scratch[j] != pat(r->seed, idx, j)) bad = true;
  px_msg_free(msg);
  LOCKED(r->got++; if (bad) r->bad++; if (nseg > r->max_nseg) r->max_nseg = (uint32_t)nseg);
  px_cli_call_read(call);
}

static const px_cli_call_cbs ss_cbs = {ss_on_message, NULL, rec_on_done};

static void start_stream(cli_rec* r, uint32_t k, uint32_t size, uint32_t seed) {
  uint8_t req[12];
  put_u32(req, k);
  put_u32(req + 4, size);
  put_u32(req + 8, seed);
  r->size = size;
  r->seed = seed;
  px_cli_call* c = px_cli_call_start(g_ch, M_STREAM, 20000, true, &ss_cbs, r);
  assert_non_null(c);
  px_out o = {req, sizeof req, NULL, 0, NULL, NULL};
  assert_true(px_cli_call_send(c, &o, true));
  assert_true(px_cli_call_read(c));
  px_cli_call_unref(c);
}

static void test_server_streaming_segments(void** state) {
  (void)state;
  enum { K = 32, SIZE = 1 << 20 };
  rel_reset();
  pthread_mutex_lock(&g_mu);
  int done0 = S.stream_done, fail0 = S.stream_send_fail;
  pthread_mutex_unlock(&g_mu);
  cli_rec r;
  memset(&r, 0, sizeof r);
  r.scratch = malloc(SIZE);
  assert_non_null(r.scratch);
  start_stream(&r, K, SIZE, 99);
  cli_wait_done(&r);
  assert_int_equal(r.status, PX_ST_OK);
  assert_true(r.ended);
  assert_int_equal(r.got, K);
  assert_int_equal(r.bad, 0);
  assert_true(r.max_nseg > 1); /* 1 MiB arrives as several slices */
  free(r.scratch);
  WAIT_FOR(S.stream_done == done0 + 1);
  assert_int_equal(S.stream_send_fail, fail0);
  WAIT_FOR(rel_all_ran(K));
  for (int i = 0; i < K; i++) assert_int_equal(rel_runs(i), 1);
  for (int i = K; i < MAX_REL; i++) assert_int_equal(rel_runs(i), 0);
}

/* px_msg_flat: one copy for a multi-segment message (cached), none for one segment. */
static void test_msg_flat(void** state) {
  (void)state;
  enum { K = 3 };
  const uint32_t size = (1u << 20) + 3;
  rel_reset();
  cli_rec r;
  memset(&r, 0, sizeof r);
  r.keep = true;
  start_stream(&r, K, size, 5);
  cli_wait_done(&r);
  assert_int_equal(r.status, PX_ST_OK);
  assert_int_equal(r.nkept, K);
  bool multi = false;
  for (uint32_t m = 0; m < K; m++) {
    px_msg* msg = r.kept[m];
    assert_int_equal(px_msg_len(msg), size);
    size_t nseg = 0;
    const px_iov* seg = px_msg_segments(msg, &nseg);
    assert_non_null(seg);
    assert_true(nseg >= 1);
    size_t sum = 0;
    for (size_t i = 0; i < nseg; i++) sum += seg[i].n;
    assert_int_equal(sum, size);
    size_t len = 0;
    const uint8_t* flat = px_msg_flat(msg, &len);
    assert_non_null(flat);
    assert_int_equal(len, size);
    size_t off = 0;
    for (size_t i = 0; i < nseg; i++) {
      assert_memory_equal(flat + off, seg[i].p, seg[i].n);
      off += seg[i].n;
    }
    for (size_t j = 0; j < len; j++)
      if (flat[j] != pat(5, m, j)) fail_msg("message %u byte %zu differs", m, j);
    size_t len2 = 0;
    assert_ptr_equal(px_msg_flat(msg, &len2), flat); /* copied once */
    assert_int_equal(len2, size);
    if (nseg > 1) {
      multi = true;
      assert_ptr_not_equal(flat, seg[0].p);
    }
    /* segments again after flat: unchanged */
    size_t nseg2 = 0;
    assert_ptr_equal(px_msg_segments(msg, &nseg2), seg);
    assert_int_equal(nseg2, nseg);
    px_msg_free(msg);
  }
  assert_true(multi);
  WAIT_FOR(rel_all_ran(K));

  /* A small message: flat points into it when it arrived as one segment. */
  rel_reset();
  memset(&r, 0, sizeof r);
  r.keep = true;
  start_stream(&r, 1, 100, 6);
  cli_wait_done(&r);
  assert_int_equal(r.status, PX_ST_OK);
  assert_int_equal(r.nkept, 1);
  size_t nseg = 0, len = 0;
  const px_iov* seg = px_msg_segments(r.kept[0], &nseg);
  assert_true(nseg >= 1);
  const uint8_t* flat = px_msg_flat(r.kept[0], &len);
  if (nseg == 1) assert_ptr_equal(flat, seg[0].p); /* one segment: no copy */
  else assert_ptr_not_equal(flat, seg[0].p);
  assert_int_equal(len, 100);
  for (size_t j = 0; j < len; j++) assert_int_equal(flat[j], pat(6, 0, j));
  px_msg_free(r.kept[0]);
  px_msg_free(NULL); /* accepted */
  WAIT_FOR(rel_all_ran(1));
}

/* ---- tests: deadline and shutdown ------------------------------------------------------------- */

static const px_cli_call_cbs unary_rec_cbs = {NULL, NULL, rec_on_done};

static void test_deadline_exceeded(void** state) {
  (void)state;
  LOCKED(S.park_nev = 0; memset(S.park_events, 0, sizeof S.park_events);
         S.park_cancelled = false);
  cli_rec r;
  memset(&r, 0, sizeof r);
  int64_t t0 = now_ms();
  px_cli_call* c = px_cli_call_start(g_ch, M_PARK, 200, true, &unary_rec_cbs, &r);
  assert_non_null(c);
  px_out o = {"req", 3, NULL, 0, NULL, NULL};
  px_cli_call_send(c, &o, true);
  px_cli_call_read(c);
  px_cli_call_unref(c);
  cli_wait_done(&r);
  int64_t elapsed = now_ms() - t0;
  assert_int_equal(r.status, PX_ST_DEADLINE_EXCEEDED);
  assert_true(elapsed >= 190);
  assert_true(elapsed < 10000);
  /* The server saw the call end cancelled, then done. */
  WAIT_FOR(S.park_nev == 2);
  assert_string_equal(S.park_events, "CD");
  assert_true(S.park_cancelled);
  assert_int_equal(S.park_calls, 1);
}

static void test_server_shutdown_with_parked_call(void** state) {
  (void)state;
  char err[256] = "";
  int port = 0;
  px_rpc_server_opts so = {.listen = "127.0.0.1:0", .cq_threads = 1};
  px_rpc_server* srv = px_rpc_server_start(&so, g_methods, NMETHODS, NULL, &port, err, sizeof err);
  assert_non_null(srv);
  assert_true(port > 0);
  char target[64];
  snprintf(target, sizeof target, "127.0.0.1:%d", port);
  px_rpc_channel* ch = px_rpc_channel_create(target, err, sizeof err);
  assert_non_null(ch);
  LOCKED(S.hold_nev = 0; memset(S.hold_events, 0, sizeof S.hold_events);
         S.hold_cancelled = false; S.hold_calls = 0);

  cli_rec r;
  memset(&r, 0, sizeof r);
  px_cli_call* c = px_cli_call_start(ch, M_HOLD, 20000, true, &unary_rec_cbs, &r);
  assert_non_null(c);
  px_out o = {"req", 3, NULL, 0, NULL, NULL};
  px_cli_call_send(c, &o, true);
  px_cli_call_read(c);
  px_cli_call_unref(c);
  WAIT_FOR(S.hold_calls == 1 && S.hold_parked != NULL);
  assert_int_equal(px_rpc_server_live_calls(srv), 1);

  const int64_t drain = 300;
  int64_t t0 = now_ms();
  px_rpc_server_shutdown(srv, drain);
  int64_t elapsed = now_ms() - t0;
  assert_true(elapsed >= drain - 10); /* the live call got the drain time */
  assert_true(elapsed < drain + 5000); /* then it was cancelled */
  assert_int_equal(px_rpc_server_live_calls(srv), 0);
  pthread_mutex_lock(&g_mu);
  bool events_ok = strcmp(S.hold_events, "CD") == 0 && S.hold_cancelled && !S.hold_parked;
  pthread_mutex_unlock(&g_mu);
  assert_true(events_ok);

  cli_wait_done(&r);
  assert_int_not_equal(r.status, PX_ST_OK);
  px_rpc_channel_destroy(ch);
  px_rpc_server_destroy(srv);
}

static void test_server_shutdown_idle_is_prompt(void** state) {
  (void)state;
  char err[256] = "";
  int port = 0;
  px_rpc_server_opts so = {.listen = "127.0.0.1:0", .cq_threads = 2};
  px_rpc_server* srv = px_rpc_server_start(&so, g_methods, NMETHODS, NULL, &port, err, sizeof err);
  assert_non_null(srv);
  char target[64];
  snprintf(target, sizeof target, "127.0.0.1:%d", port);
  px_rpc_channel* ch = px_rpc_channel_create(target, err, sizeof err);
  assert_non_null(ch);
  uint8_t* resp = NULL;
  size_t len = 0;
  assert_int_equal(px_rpc_unary(ch, M_ECHO, "hi", 2, 10000, true, &resp, &len, NULL, 0),
                   PX_ST_OK);
  assert_int_equal(len, 7);
  assert_memory_equal(resp, "echo:hi", 7);
  free(resp);
  int64_t t0 = now_ms();
  px_rpc_server_shutdown(srv, 20000);
  assert_true(now_ms() - t0 < 10000); /* no live call: does not wait the drain time */
  assert_int_equal(px_rpc_server_live_calls(srv), 0);
  px_rpc_channel_destroy(ch);
  px_rpc_server_destroy(srv);
  px_rpc_server_destroy(NULL);
  px_rpc_channel_destroy(NULL);
}

static void test_listen_failure(void** state) {
  (void)state;
  char err[256] = "";
  int port = -7;
  px_rpc_server_opts so = {.listen = "256.1.2.3:bad", .cq_threads = 1};
  px_rpc_server* srv = px_rpc_server_start(&so, g_methods, NMETHODS, NULL, &port, err, sizeof err);
  assert_null(srv);
  assert_int_equal(port, -7);
  assert_non_null(strstr(err, "256.1.2.3:bad"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_status_name),
      cmocka_unit_test(test_unary_round_trip),
      cmocka_unit_test(test_unary_error_status_and_details),
      cmocka_unit_test(test_unknown_method_unimplemented),
      cmocka_unit_test(test_client_streaming_backpressure),
      cmocka_unit_test(test_client_send_one_outstanding),
      cmocka_unit_test(test_client_cancel_reaches_server),
      cmocka_unit_test(test_oversized_message_resource_exhausted),
      cmocka_unit_test(test_server_streaming_segments),
      cmocka_unit_test(test_msg_flat),
      cmocka_unit_test(test_deadline_exceeded),
      cmocka_unit_test(test_server_shutdown_with_parked_call),
      cmocka_unit_test(test_server_shutdown_idle_is_prompt),
      cmocka_unit_test(test_listen_failure),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
