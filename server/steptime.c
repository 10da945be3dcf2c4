/* Step durations (steptime.h). */
#include "steptime.h"

#include <string.h>

void px_steptime_init(px_steptime* st, px_counters* ctr) {
  memset(st, 0, sizeof *st);
  st->ctr = ctr;
  for (int i = 0; i < PX_STEPTIME_RING; i++) pthread_mutex_init(&st->ring[i].mu, NULL);
  px_hist_init_exp(&st->hist, 0.0005, 2, 18); /* 0.5 ms .. 65 s */
  px_hist_init_exp(&st->chunk_hist, 0.0005, 2, 18);
  atomic_init(&st->last_ns, 0);
}

void px_steptime_begin(px_steptime* st, uint64_t step, uint64_t now_ns) {
  px_steptime_slot* s = &st->ring[step % PX_STEPTIME_RING];
  pthread_mutex_lock(&s->mu);
  if (s->step_plus1 < step + 1) { /* older or unused: the slot is this step's now */
    s->step_plus1 = step + 1;
    s->first_ns = now_ns;
    s->done = 0;
  } else if (s->step_plus1 == step + 1 && now_ns < s->first_ns) {
    s->first_ns = now_ns;
  }
  pthread_mutex_unlock(&s->mu);
}

void px_steptime_end(px_steptime* st, uint64_t step, uint64_t now_ns) {
  px_steptime_slot* s = &st->ring[step % PX_STEPTIME_RING];
  const uint64_t own = atomic_load_explicit(&st->ctr->own_chunks, memory_order_relaxed);
  pthread_mutex_lock(&s->mu);
  if (s->step_plus1 == step + 1 && ++s->done == own) {
    uint64_t ns = now_ns > s->first_ns ? now_ns - s->first_ns : 0;
    px_hist_observe_ns(&st->hist, ns);
    atomic_store_explicit(&st->last_ns, ns, memory_order_relaxed);
  }
  pthread_mutex_unlock(&s->mu);
}
