/* Parked waiters (waiters.h). */
#include "waiters.h"

#include <stddef.h>

void px_waiters_init(px_waiters* ws) {
  pthread_mutex_init(&ws->mu, NULL);
  ws->draining = false;
}

void px_waiters_deinit(px_waiters* ws) { pthread_mutex_destroy(&ws->mu); }

static void unlink_waiter(px_waiter* w) {
  px_waitlist* l = w->on;
  if (w->prev) w->prev->next = w->next;
  else l->head = w->next;
  if (w->next) w->next->prev = w->prev;
  w->on = NULL;
  w->prev = w->next = NULL;
}

px_park_result px_waiters_park(px_waiters* ws, px_waitlist* l, px_waiter* w) {
  pthread_mutex_lock(&ws->mu);
  px_park_result r = w->closed ? PX_PARK_CLOSED : ws->draining ? PX_PARK_DRAINING : PX_PARKED;
  if (r == PX_PARKED) {
    w->on = l;
    w->prev = NULL;
    w->next = l->head;
    if (l->head) l->head->prev = w;
    l->head = w;
  }
  pthread_mutex_unlock(&ws->mu);
  return r;
}

/* Detaches the waiters of l for which take(w, arg) holds (all when take is NULL), in list
 * order. ws->mu held. */
static px_waiter* take_if(px_waitlist* l, bool (*take)(const px_waiter*, uint64_t), uint64_t arg) {
  px_waiter *out = NULL, *tail = NULL;
  px_waiter* w = l->head;
  while (w) {
    px_waiter* next = w->next;
    if (!take || take(w, arg)) {
      unlink_waiter(w);
      if (tail) tail->next = w;
      else out = w;
      tail = w;
    }
    w = next;
  }
  return out;
}

px_waiter* px_waiters_take(px_waiters* ws, px_waitlist* l) {
  pthread_mutex_lock(&ws->mu);
  px_waiter* out = take_if(l, NULL, 0);
  pthread_mutex_unlock(&ws->mu);
  return out;
}

static bool expired(const px_waiter* w, uint64_t now) { return w->deadline_ms < now; }

px_waiter* px_waiters_take_expired(px_waiters* ws, px_waitlist* l, uint64_t now_ms) {
  pthread_mutex_lock(&ws->mu);
  px_waiter* out = take_if(l, expired, now_ms);
  for (px_waiter* w = out; w; w = w->next) w->expired = true;
  pthread_mutex_unlock(&ws->mu);
  return out;
}

bool px_waiters_close(px_waiters* ws, px_waiter* w) {
  pthread_mutex_lock(&ws->mu);
  w->closed = true;
  bool parked = w->on != NULL;
  if (parked) unlink_waiter(w);
  pthread_mutex_unlock(&ws->mu);
  return parked;
}

void px_waiters_rearm(px_waiters* ws, px_waiter* w, uint64_t deadline_ms) {
  pthread_mutex_lock(&ws->mu);
  w->expired = false;
  w->deadline_ms = deadline_ms;
  pthread_mutex_unlock(&ws->mu);
}

void px_waiters_drain(px_waiters* ws) {
  pthread_mutex_lock(&ws->mu);
  ws->draining = true;
  pthread_mutex_unlock(&ws->mu);
}

bool px_waiters_draining(px_waiters* ws) {
  pthread_mutex_lock(&ws->mu);
  bool d = ws->draining;
  pthread_mutex_unlock(&ws->mu);
  return d;
}

void px_waiters_run(px_waiter* list) {
  while (list) {
    px_waiter* next = list->next;
    list->next = list->prev = NULL;
    list->job.fn(&list->job);
    list = next;
  }
}

px_waiter* px_waiters_join(px_waiter* a, px_waiter* b) {
  if (!a) return b;
  px_waiter* t = a;
  while (t->next) t = t->next;
  t->next = b;
  return a;
}
