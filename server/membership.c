/* Workers and leases (membership.h). */
#include "membership.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rpc/rpc_base.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/str.h"

int px_members_init(px_members* m, uint32_t workers, double timeout_s, double rejoin_wait_s,
                    bool elastic) {
  m->n = workers;
  m->timeout_ms = timeout_s > 0 ? (uint64_t)(timeout_s * 1000.0) : UINT64_MAX;
  m->rejoin_wait_ms = (uint64_t)(rejoin_wait_s * 1000.0);
  m->elastic = elastic;
  m->w = calloc(workers ? workers : 1, sizeof *m->w);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  atomic_init(&m->next_incarnation, (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u);
  atomic_init(&m->stalled_by_dead, 0);
  atomic_init(&m->nleft, 0);
  pthread_mutex_init(&m->mu, NULL);
  return m->w ? 0 : -1;
}

void px_members_deinit(px_members* m) {
  free(m->w);
  m->w = NULL;
  pthread_mutex_destroy(&m->mu);
}

/* The host of a worker's name "host:pid": its length (all of it when there is no ':'). */
static size_t host_len(const char* name) {
  const char* colon = strrchr(name, ':');
  return colon ? (size_t)(colon - name) : strlen(name);
}

/* m->mu held. */
static uint64_t join_locked(px_members* m, uint32_t rank, const char* name, bool* replaced) {
  px_worker_state* w = &m->w[rank];
  uint64_t inc = atomic_fetch_add(&m->next_incarnation, 1);
  px_strlcpy(w->name, name, sizeof w->name);
  /* cut at a character boundary: Stats carries it as a protobuf string */
  for (size_t n = strlen(w->name); n > 0 && !px_utf8_valid(w->name, n); n--) w->name[n - 1] = 0;
  *replaced = atomic_exchange(&w->incarnation, inc) != 0;
  atomic_store(&w->last_seen_ms, px_now_ms());
  if (atomic_exchange(&w->dead, 0)) px_info("worker %u is back", rank);
  if (atomic_exchange(&w->left, 0)) atomic_fetch_sub(&m->nleft, 1);
  return inc;
}

uint64_t px_members_join(px_members* m, uint32_t rank, const char* name, bool* replaced) {
  pthread_mutex_lock(&m->mu);
  uint64_t inc = join_locked(m, rank, name, replaced);
  pthread_mutex_unlock(&m->mu);
  return inc;
}

uint64_t px_members_claim(px_members* m, uint32_t rank, const char* name, bool* replaced,
                          char* err, size_t errlen) {
  px_worker_state* w = &m->w[rank];
  pthread_mutex_lock(&m->mu);
  const uint64_t now = px_now_ms(), seen = atomic_load(&w->last_seen_ms);
  const size_t hl = host_len(w->name);
  const bool live = atomic_load(&w->incarnation) && !atomic_load(&w->left) &&
                    !atomic_load(&w->dead) && m->timeout_ms != UINT64_MAX &&
                    (now <= seen || now - seen <= m->timeout_ms);
  if (live && w->name[0] && (hl != host_len(name) || memcmp(w->name, name, hl) != 0)) {
    const uint64_t ago = now > seen ? now - seen : 0;
    snprintf(err, errlen, "rank %u is held by a live worker '%s' (last call %.1f s ago): a "
             "Join from another host ('%s') takes it over only when that lease runs out "
             "(--worker-timeout %g s, in %.1f s); is a second job using these ranks?", rank,
             w->name, ago / 1000.0, name, m->timeout_ms / 1000.0,
             (m->timeout_ms - ago) / 1000.0);
    pthread_mutex_unlock(&m->mu);
    return 0;
  }
  uint64_t inc = join_locked(m, rank, name, replaced);
  pthread_mutex_unlock(&m->mu);
  return inc;
}

bool px_members_leave(px_members* m, uint32_t rank) {
  px_worker_state* w = &m->w[rank];
  if (atomic_exchange(&w->left, 1)) return false;
  atomic_store(&w->left_since_ms, px_now_ms());
  atomic_store(&w->left_expired, m->rejoin_wait_ms == 0);
  atomic_fetch_add(&m->nleft, 1);
  atomic_store(&w->dead, 0);
  return true;
}

bool px_members_left(px_members* m, uint32_t rank) { return atomic_load(&m->w[rank].left) != 0; }

bool px_members_left_expired(px_members* m, uint32_t rank) {
  return atomic_load(&m->w[rank].left) && atomic_load(&m->w[rank].left_expired);
}

void px_members_pushed(px_members* m, uint32_t rank, uint64_t step) {
  _Atomic uint64_t* b = &m->w[rank].steps_begun;
  uint64_t cur = atomic_load(b);
  while (cur < step + 1 && !atomic_compare_exchange_weak(b, &cur, step + 1)) {
  }
}

bool px_members_all_pushed(px_members* m, uint64_t step) {
  uint32_t joined = 0;
  for (uint32_t r = 0; r < m->n; r++) {
    px_worker_state* w = &m->w[r];
    if (!atomic_load(&w->incarnation)) continue;
    joined++;
    if (atomic_load(&w->left)) continue; /* done: it pushes nothing any more */
    if (atomic_load(&w->dead) || atomic_load(&w->steps_begun) <= step) return false;
  }
  return joined > 0;
}

void px_members_seen(px_members* m, uint32_t rank) {
  if (rank >= m->n) return;
  atomic_store(&m->w[rank].last_seen_ms, px_now_ms());
  if (atomic_load_explicit(&m->w[rank].dead, memory_order_relaxed) &&
      atomic_exchange(&m->w[rank].dead, 0))
    px_info("worker %u is back", rank);
}

int px_members_check(px_members* m, uint32_t rank, uint64_t incarnation, char* err,
                     size_t errlen) {
  if (rank >= m->n) {
    snprintf(err, errlen, "worker_id %u is not below --workers %u", rank, m->n);
    return PX_ST_INVALID_ARGUMENT;
  }
  uint64_t inc = atomic_load(&m->w[rank].incarnation);
  if (inc == 0) {
    snprintf(err, errlen, "worker %u has not joined", rank);
    return PX_ST_FAILED_PRECONDITION;
  }
  if (incarnation == 0) {
    snprintf(err, errlen, "worker %u: the call carries no incarnation (its client never "
             "joined): call Join first", rank);
    return PX_ST_FAILED_PRECONDITION;
  }
  if (incarnation != inc) {
    snprintf(err, errlen, "worker %u: incarnation %" PRIu64 " is stale (current %" PRIu64
             "): it rejoined", rank, incarnation, inc);
    return PX_ST_FAILED_PRECONDITION;
  }
  if (atomic_load(&m->w[rank].left)) {
    snprintf(err, errlen, "worker %u left (Leave): join again to take part", rank);
    return PX_ST_FAILED_PRECONDITION;
  }
  return PX_ST_OK;
}

int px_members_check_caller(px_members* m, uint32_t rank, uint64_t incarnation, char* err,
                            size_t errlen) {
  if (incarnation) return px_members_check(m, rank, incarnation, err, errlen);
  if (rank >= m->n) {
    snprintf(err, errlen, "worker_id %u is not below --workers %u", rank, m->n);
    return PX_ST_INVALID_ARGUMENT;
  }
  return PX_ST_OK;
}

bool px_members_dead(px_members* m, uint32_t rank) { return atomic_load(&m->w[rank].dead) != 0; }

bool px_members_gone(px_members* m, uint32_t rank) {
  return px_members_dead(m, rank) || px_members_left(m, rank);
}

void px_members_scan(px_members* m, uint64_t now, px_lease_scan* out) {
  out->newly_dead = out->stalled = out->stall_began = false;
  for (uint32_t r = 0; r < m->n; r++) {
    px_worker_state* w = &m->w[r];
    if (!atomic_load(&w->incarnation)) continue;
    if (atomic_load(&w->left)) { /* finished: never dead; BSP stops waiting after a while */
      if (!m->elastic && !atomic_load(&w->left_expired) &&
          now - atomic_load(&w->left_since_ms) >= m->rejoin_wait_ms &&
          !atomic_exchange(&w->left_expired, 1)) {
        out->stall_began = true;
        px_warn("worker %u left %.1f s ago and has not joined again (--rejoin-wait %g s): the "
                "pulls of steps it did not push fail", r,
                (now - atomic_load(&w->left_since_ms)) / 1000.0, m->rejoin_wait_ms / 1000.0);
      }
      continue;
    }
    uint64_t seen = atomic_load(&w->last_seen_ms);
    if (m->timeout_ms != UINT64_MAX && !atomic_load(&w->dead) && now > seen &&
        now - seen > m->timeout_ms) {
      atomic_store(&w->dead_since_ms, now);
      atomic_store(&w->dead, 1);
      out->newly_dead = true;
      char name[64];
      px_members_name(m, r, name, sizeof name);
      px_warn("worker %u (%s) is dead: no call for %.1f s (--worker-timeout %g s)%s", r, name,
              (now - seen) / 1000.0, m->timeout_ms / 1000.0,
              m->elastic ? "; continuing without it (--elastic)" : "");
    }
    if (!m->elastic && atomic_load(&w->dead) && !out->stalled) {
      uint64_t gone = now - atomic_load(&w->dead_since_ms);
      if (gone >= m->rejoin_wait_ms) {
        out->stalled = true;
        out->stalled_rank = r;
        out->stalled_for_s = (gone + (m->timeout_ms == UINT64_MAX ? 0 : m->timeout_ms)) / 1000.0;
      }
    }
  }
  if (out->stalled) {
    out->stall_began = !atomic_exchange(&m->stalled_by_dead, 1) || out->stall_began;
    if (out->stall_began)
      px_error("worker %u has not come back within --rejoin-wait %g s: failing the pulls "
               "that wait for this step", out->stalled_rank, m->rejoin_wait_ms / 1000.0);
  } else {
    atomic_store(&m->stalled_by_dead, 0);
  }
}

void px_members_incarnations(px_members* m, char* buf, size_t cap) {
  size_t off = 0;
  if (cap) buf[0] = 0;
  for (uint32_t w = 0; w < m->n && off < cap; w++)
    off += (size_t)snprintf(buf + off, cap - off, w ? ",%" PRIu64 : "%" PRIu64,
                            (uint64_t)atomic_load(&m->w[w].incarnation));
}

void px_members_restore(px_members* m, const char* list) {
  const char* p = list;
  for (uint32_t w = 0; p && *p && w < m->n; w++) {
    char* end;
    uint64_t x = strtoull(p, &end, 10);
    atomic_store(&m->w[w].incarnation, x);
    /* a fresh lease: the worker had no chance to call this process yet */
    atomic_store(&m->w[w].last_seen_ms, px_now_ms());
    if (x >= atomic_load(&m->next_incarnation)) atomic_store(&m->next_incarnation, x + 1);
    p = *end == ',' ? end + 1 : end;
  }
}

void px_members_left_list(px_members* m, char* buf, size_t cap) {
  size_t off = 0;
  if (cap) buf[0] = 0;
  for (uint32_t w = 0; w < m->n && off < cap; w++)
    if (atomic_load(&m->w[w].left))
      off += (size_t)snprintf(buf + off, cap - off, off ? ",%u" : "%u", w);
}

void px_members_restore_left(px_members* m, const char* list) {
  for (const char* p = list; p && *p;) {
    char* end;
    unsigned long r = strtoul(p, &end, 10);
    if (end == p) break;
    if (r < m->n && atomic_load(&m->w[r].incarnation)) px_members_leave(m, (uint32_t)r);
    p = *end == ',' ? end + 1 : end;
  }
}

void px_members_name(px_members* m, uint32_t rank, char* buf, size_t cap) {
  pthread_mutex_lock(&m->mu);
  px_strlcpy(buf, m->w[rank].name, cap);
  pthread_mutex_unlock(&m->mu);
}
