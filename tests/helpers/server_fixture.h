/* An in-process paramex-server for the unit tests of the server's rooms: a px_service
 * initialised from flags (as paramex-server would be), optionally started on
 * 127.0.0.1:0 with a client channel to it, and helpers that speak the protocol the way a
 * worker does (Join, Declare, PushChunk messages, Pull). Failures fail the current cmocka
 * test (include after <cmocka.h>). */
#ifndef PX_SERVER_FIXTURE_H
#define PX_SERVER_FIXTURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <pthread.h>

#include "harness.h"
#include "rpc/rpc_client.h"
#include "service.h"

typedef struct px_sf {
  px_service svc;
  px_server* srv;       /* &svc.srv */
  px_rpc_channel* ch;   /* once started */
  int port;
  char addr[64];
  bool inited, started;
  uint32_t decl_rank;   /* the identity px_sf_declare_f32 declares with: the last join */
  uint64_t decl_inc;
} px_sf;

/* Initialises f from the flags in args (NULL-terminated, without the program name) on top
 * of "--threads 1 --log-level warn". Fails the test when the service does not start. */
void px_sf_init(px_sf* f, const char* const* args);
/* px_sf_init, then the gRPC server on 127.0.0.1:0 and a channel to it. */
void px_sf_start(px_sf* f, const char* const* args);
/* Stops (drains) and frees; accepts a fixture never initialised. Returns what
 * px_service_stop returned (0 when it was not started). */
int px_sf_stop(px_sf* f);

/* Joins the NULL-ended flag lists a and b (either may be NULL) into out, which holds cap
 * entries and ends NULL; returns out. */
const char** px_sf_flags(const char** out, size_t cap, const char* const* a,
                         const char* const* b);
/* Waits until fn(arg) holds, at most ms; returns whether it holds. */
bool px_sf_wait_until(bool (*fn)(void* arg), void* arg, int64_t ms);
/* A px_sf_wait_until condition: the px_server arg has no call in progress. */
bool px_sf_no_active_calls(void* srv);

/* A call driven by hand (rpc_client.h): what its callbacks saw, under mu. */
typedef struct px_sf_mcall {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int sent;      /* 0 pending, 1 ok, 2 failed (reset it before each send) */
  bool have_msg; /* a read completed: msg (NULL at the end); the test takes msg */
  px_msg* msg;
  bool done;     /* on_done ran: status, details */
  int status;
  char details[512];
  px_cli_call* call; /* the caller's reference, from px_sf_mcall_start */
} px_sf_mcall;
/* Initialises m and starts a call on path (wait_for_ready) with its callbacks; returns
 * m->call (fails the test when it cannot start). */
px_cli_call* px_sf_mcall_start(px_sf_mcall* m, px_rpc_channel* ch, const char* path,
                               int64_t timeout_ms);
/* m->mu held: waits at most 20 s until *flag (or, flag NULL, *iflag != 0); whether it holds. */
bool px_sf_mcall_wait(px_sf_mcall* m, const bool* flag, const int* iflag);
/* Frees what m still holds (a message not taken); the call must be over. */
void px_sf_mcall_destroy(px_sf_mcall* m);

/* Copies the current parameters of f32 tensor t into dst (each chunk under its lock). */
void px_sf_copy_params(px_tensor_state* t, float* dst);

/* Join as rank of world; returns the incarnation (fails the test on an error). Declarations
 * of px_sf_declare_f32 carry the identity of the last join (made by them when none was). */
uint64_t px_sf_join(px_sf* f, uint32_t rank, uint32_t world);
/* Declares an f32 tensor of numel elements with the NORMAL(0, 0.02) initializer of seed;
 * returns its id. */
uint32_t px_sf_declare_f32(px_sf* f, const char* name, uint64_t numel, uint64_t seed);

/* A PushChunk message of rank/incarnation for chunk `chunk` of tensor id at step, with
 * the n f32 values g as a RAW payload (checksum filled in). The head is written to head
 * (PX_CHUNK_HDR_MAX bytes); the body points at g. */
px_h_msg px_sf_push_chunk(uint8_t* head, uint32_t rank, uint64_t incarnation, uint64_t step,
                          uint32_t tensor, uint32_t chunk, const float* g, size_t n);
/* A packed PullRequest for tensor ids[0..nt) at min_version (RAW chunks only). The
 * caller frees the returned buffer; *len gets its length. */
uint8_t* px_sf_pull_request(uint32_t worker, const uint32_t* ids, size_t nt, uint64_t min_version,
                            size_t* len);

#endif
