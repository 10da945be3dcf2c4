/* The server's counters, reported by Stats (and, later, metrics). Plain atomics: every
 * room that counts something gets a pointer to this struct. */
#ifndef PX_COUNTERS_H
#define PX_COUNTERS_H

#include <stdatomic.h>
#include <stdint.h>

typedef struct px_counters {
  _Atomic uint64_t push_chunks, push_duplicates, push_raw_bytes, push_wire_bytes;
  _Atomic uint64_t nonfinite_chunks; /* pushed chunks holding inf or NaN */
  _Atomic uint64_t pull_chunks, pull_raw_bytes, pull_wire_bytes;
  _Atomic uint64_t steps_completed, rejected_calls, exchange_steps;
  _Atomic uint64_t encodes, cache_hits, pull_unchanged, pull_delta, pull_snapshot;
  _Atomic int64_t frame_bytes, history_bytes; /* frames alive (history included), history */
  _Atomic int64_t store_bytes;                /* parameters + momentum */
  _Atomic int64_t params_bytes;               /* parameters alone */
  _Atomic uint64_t own_chunks;                /* chunks this shard holds (declared) */
  /* Exchange steps answered (StepResponse status, 0..16); calls are counted by rpc_server */
  _Atomic uint64_t exchange_status[17];
  /* wire bytes by chunk encoding (codec/payload.h PX_ENC_*: raw, unchanged, delta_zstd,
   * shuffle_zstd) */
  _Atomic uint64_t push_wire_enc[4], pull_wire_enc[4];
} px_counters;

#endif
