/* A test server on loopback for the rpc unit tests (tests/unit/common/test_rpc_*.c): methods
 * of every kind (unary echo, failure and parking; client streaming that counts or never
 * reads; server streaming of k messages), a shared client channel, zero-copy bodies whose
 * releases are counted, and bounded waits on one condition variable. group_setup starts
 * the server and the channel; group_teardown checks that every call ended and every body
 * was released exactly once. Include after <cmocka.h>. */
#ifndef PX_RPC_FIXTURE_H
#define PX_RPC_FIXTURE_H

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "rpc/rpc_base.h"
#include "rpc/rpc_client.h"
#include "rpc/rpc_server.h"

#define M_ECHO "/pmxtest.T/Echo"     /* unary: replies "echo:" + request */
#define M_FAIL "/pmxtest.T/Fail"     /* unary: INVALID_ARGUMENT "bad thing" */
#define M_PARK "/pmxtest.T/Park"     /* unary: never answers */
#define M_COUNT "/pmxtest.T/Count"   /* client streaming: replies count, bytes, hash */
#define M_SINK "/pmxtest.T/Sink"     /* client streaming: never reads, never answers */
#define M_STREAM "/pmxtest.T/Stream" /* server streaming: k messages of a requested size */
#define M_HOLD "/pmxtest.T/Hold"     /* unary: parks the call with a reference */
#define WAIT_MS 20000 /* upper bound of every wait; the tests normally take milliseconds */
#define MAX_REL 128

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

typedef struct rel_slot {
  uint8_t* buf;
  atomic_int runs;
} rel_slot;
typedef struct count_ctx {
  uint64_t count, bytes, hash;
} count_ctx;
typedef struct stream_ctx {
  uint32_t k, size, seed, i;
} stream_ctx;
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

/* Everything below is guarded by g_mu. */
typedef struct rpc_fixture_state {
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
} rpc_fixture_state;

void deadline_in(struct timespec* ts, int64_t ms);
int64_t now_ms(void);
void rel_free(void* p);
void rel_reset(void);
int rel_runs(int i);
bool rel_all_ran(int n);
uint8_t pat(uint32_t seed, uint32_t msg, size_t j);
uint8_t* pat_buf(uint32_t seed, uint32_t msg, size_t n);
void put_u32(uint8_t* p, uint32_t v);
uint32_t get_u32(const uint8_t* p);
uint64_t get_u64(const uint8_t* p);
void release_msg(void* p);
void echo_on_call(void* svc, px_srv_call* call, px_msg* req);
void fail_on_call(void* svc, px_srv_call* call, px_msg* req);
void park_on_closed(px_srv_call* call, void* ctx, bool cancelled);
void park_on_done(px_srv_call* call, void* ctx);
void park_on_call(void* svc, px_srv_call* call, px_msg* req);
void hold_on_closed(px_srv_call* call, void* ctx, bool cancelled);
void hold_on_done(px_srv_call* call, void* ctx);
void hold_on_call(void* svc, px_srv_call* call, px_msg* req);
void count_on_message(px_srv_call* call, void* ctx, px_msg* msg, bool ok);
void count_on_done(px_srv_call* call, void* ctx);
void count_on_call(void* svc, px_srv_call* call, px_msg* req);
void sink_on_closed(px_srv_call* call, void* ctx, bool cancelled);
void sink_on_done(px_srv_call* call, void* ctx);
void sink_on_call(void* svc, px_srv_call* call, px_msg* req);
void stream_send_next(px_srv_call* call, stream_ctx* s);
void stream_on_sent(px_srv_call* call, void* ctx, bool ok);
void stream_on_done(px_srv_call* call, void* ctx);
void stream_on_call(void* svc, px_srv_call* call, px_msg* req);
int group_setup(void** state);
int group_teardown(void** state);
void rec_on_done(px_cli_call* call, void* ctx, int status, const char* details);
void cli_wait_done(cli_rec* r);
extern pthread_mutex_t g_mu;
extern pthread_cond_t g_cv;
extern rel_slot g_rel[MAX_REL];
extern atomic_long g_bodies_sent;
extern atomic_long g_bodies_released;
extern rpc_fixture_state S;
extern atomic_long g_msg_bodies, g_msg_releases;
extern const px_srv_call_cbs park_cbs;
extern const px_srv_call_cbs hold_cbs;
extern const px_srv_call_cbs count_cbs;
extern const px_srv_call_cbs sink_cbs;
extern const px_srv_call_cbs stream_cbs;
extern const px_rpc_method g_methods[];
extern const size_t g_nmethods;
#define NMETHODS g_nmethods
extern px_rpc_server* g_srv;
extern px_rpc_channel* g_ch;
extern char g_target[64];

#endif
