/* Lock-free histograms (hist.h). */
#include "hist.h"

#include <string.h>

void px_hist_init_exp(px_hist* h, double start, double factor, size_t n) {
  memset(h, 0, sizeof *h);
  if (n > PX_HIST_MAX) n = PX_HIST_MAX;
  h->n = n;
  double b = start;
  for (size_t i = 0; i < n; i++, b *= factor) {
    h->le[i] = b;
    h->le_ns[i] = (uint64_t)(b * 1e9 + 0.5);
  }
  for (size_t i = 0; i <= PX_HIST_MAX; i++) atomic_init(&h->count[i], 0);
  atomic_init(&h->sum_ns, 0);
}

void px_hist_observe_ns(px_hist* h, uint64_t ns) {
  size_t lo = 0, hi = h->n; /* the first bound >= ns, or n */
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (h->le_ns[mid] >= ns) hi = mid;
    else lo = mid + 1;
  }
  atomic_fetch_add_explicit(&h->count[lo], 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&h->sum_ns, ns, memory_order_relaxed);
}

void px_hist_snapshot(px_hist* h, px_hist_snap* s) {
  s->n = h->n;
  s->le = h->le;
  uint64_t acc = 0;
  for (size_t i = 0; i <= h->n; i++) {
    acc += atomic_load_explicit(&h->count[i], memory_order_relaxed);
    s->cum[i] = acc;
  }
  s->sum = (double)atomic_load_explicit(&h->sum_ns, memory_order_relaxed) / 1e9;
}
