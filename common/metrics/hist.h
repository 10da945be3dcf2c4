/* Latency histograms for Prometheus: fixed bucket bounds, observed from any thread without
 * a lock (one atomic add for the bucket, one for the sum), read as a snapshot by the
 * metrics endpoint. Durations are observed in nanoseconds and exposed in seconds. */
#ifndef PX_HIST_H
#define PX_HIST_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define PX_HIST_MAX 24 /* bucket bounds at most */

typedef struct px_hist {
  size_t n;                                 /* bounds */
  double le[PX_HIST_MAX];                   /* upper bounds in seconds, ascending */
  uint64_t le_ns[PX_HIST_MAX];              /* the same in nanoseconds */
  _Atomic uint64_t count[PX_HIST_MAX + 1];  /* per bucket, not cumulative; [n]: +Inf */
  _Atomic uint64_t sum_ns;
} px_hist;

/* Buckets start, start*factor, ... (n of them, n <= PX_HIST_MAX), in seconds. */
void px_hist_init_exp(px_hist* h, double start, double factor, size_t n);
void px_hist_observe_ns(px_hist* h, uint64_t ns);

/* Cumulative counts as Prometheus wants them: cum[i] observations <= le[i], cum[n] all. */
typedef struct px_hist_snap {
  size_t n;
  const double* le;
  uint64_t cum[PX_HIST_MAX + 1];
  double sum; /* seconds */
} px_hist_snap;

void px_hist_snapshot(px_hist* h, px_hist_snap* s);

#endif
