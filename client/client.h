/* A connection to a paramex-server (client.c): options, the channel, joining and the
 * heartbeats that keep the lease, and the client's counters. Internal to libparamex. */
#ifndef PX_CLIENT_H
#define PX_CLIENT_H

#include <protobuf-c/protobuf-c.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "paramex/paramex.h"
#include "rpc/rpc_client.h"

#define PX_M_JOIN "/paramex.v1.ParameterExchange/Join"
#define PX_M_DECLARE "/paramex.v1.ParameterExchange/Declare"
#define PX_M_PUSH "/paramex.v1.ParameterExchange/Push"
#define PX_M_PULL "/paramex.v1.ParameterExchange/Pull"
#define PX_M_EXCHANGE "/paramex.v1.ParameterExchange/Exchange"
#define PX_M_HEARTBEAT "/paramex.v1.ParameterExchange/Heartbeat"
#define PX_M_LEAVE "/paramex.v1.ParameterExchange/Leave"
#define PX_M_STATS "/paramex.v1.ParameterExchange/Stats"
#define PX_M_RECOVER "/paramex.v1.ParameterExchange/Recover"

struct pmx_client {
  px_rpc_channel* ch;
  int64_t timeout_ms, connect_timeout_ms, retry_timeout_ms;
  bool compressed_pulls;
  bool tls;                 /* the channel uses TLS */
  char* addr;               /* the target, and (TLS) the CA and server name, to tell a */
  char* tls_ca;             /* failed handshake's reason (tls/tls_probe.h) */
  char* tls_server_name;
  pthread_mutex_t mu;       /* guards the fields below and every tensor's have_* */
  uint32_t worker_id;
  uint64_t incarnation;
  bool joined;
  bool rejoin_failed;       /* the server restarted and joining it again failed */
  uint32_t rank, world;     /* for rejoining after a server restart */
  char server_id[96];
  /* heartbeats keep the lease (JoinResponse.lease_ms) while the worker computes */
  pthread_t hb_thread;
  bool hb_started, hb_stop;
  uint32_t lease_ms;
  pthread_cond_t hb_cv;
  pmx_tensor** tensors;     /* declared, freed with the client by tensor_free */
  void (*tensor_free)(pmx_tensor* t);
  struct px_owned* owned;   /* objects of the layers above, released with the client */
  struct px_stream* stream; /* the Exchange stream (stream.c), created on first use */
  size_t ntensors, cap;
  /* A model over several shards (cluster.c): this client has no channel of its own and
   * fans every call out to one client per shard, shard[i] talking to shard i. */
  struct pmx_client** shard;
  uint32_t nshards;         /* 0: one server, this client talks to it */
  /* A shard's client: its place in the list (sent in Join) and what the shard answered */
  uint32_t shard_index, shard_count; /* shard_count 0: the only server */
  char* settings;           /* JoinResponse.settings, compared across shards */
  _Atomic uint64_t push_chunks, push_raw, push_wire;
  _Atomic uint64_t pull_chunks, pull_raw, pull_wire, pull_unchanged, checksum_failures;
};

/* A client of the one server at addr (pmx_connect of one address). */
pmx_status px_client_connect(const char* addr, const pmx_options* opts, pmx_client** out);
/* The same, its calls completing on beside's completion-queue thread (beside NULL: its
 * own); a cluster's shard clients share shard 0's. */
pmx_status px_client_connect_beside(const char* addr, const pmx_options* opts,
                                    const pmx_client* beside, pmx_client** out);
/* pmx_client_destroy (say_leave) or pmx_client_abort of a client of one server. */
void px_client_free(pmx_client* c, bool say_leave);
/* pmx_join with one server. */
pmx_status px_client_join(pmx_client* c, uint32_t rank, uint32_t world_size, pmx_join_info* info);

/* An object of a layer above (an operation not waited for yet) that the client releases
 * when it is destroyed, after its calls are over: release must px_client_disown it and
 * free it. */
typedef struct px_owned {
  struct px_owned *prev, *next;
  void (*release)(struct px_owned* o);
} px_owned;
void px_client_own(pmx_client* c, px_owned* o);
void px_client_disown(pmx_client* c, px_owned* o); /* o not owned: nothing */
/* Releases every object c owns, newest first. */
void px_client_release_owned(pmx_client* c);

/* Packs m, runs a unary call on method, returns the status (the error message set); on
 * OK *resp (malloc'd, the caller frees) and *resp_len hold the response. */
pmx_status px_client_unary(pmx_client* c, const char* method, const ProtobufCMessage* m,
                           int64_t timeout_ms, bool wait_ready, uint8_t** resp, size_t* resp_len);
/* After the server restarted: joins again as the same rank (new server id and
 * incarnation); the caller's last error is kept. No-op when never joined. A failure is
 * remembered (rejoin_failed) for pmx_resume. */
void px_client_rejoin(pmx_client* c);
/* pmx_resume's join: joins again when the client has joined before and the server
 * restarted since (or a rejoin failed); PMX_OK when nothing is needed. */
pmx_status px_client_join_again(pmx_client* c);
/* Adds t to the tensors freed with c (by free_fn, of the room above that made it);
 * PMX_ERR_NO_MEMORY when it cannot. */
pmx_status px_client_adopt(pmx_client* c, pmx_tensor* t, void (*free_fn)(pmx_tensor* t));

#endif
