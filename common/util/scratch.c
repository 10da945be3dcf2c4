/* Per-thread scratch buffers (scratch.h). */
#include "util/scratch.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct scratch {
  uint8_t* p[PX_SCRATCH_SLOTS];
  size_t cap[PX_SCRATCH_SLOTS];
} scratch;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static _Thread_local scratch* tl_scratch;

static void scratch_free(void* v) {
  scratch* s = v;
  for (int i = 0; i < PX_SCRATCH_SLOTS; i++) free(s->p[i]);
  free(s);
}
static void scratch_key_create(void) { pthread_key_create(&scratch_key, scratch_free); }

uint8_t* px_scratch(int which, size_t bytes) {
  if (which < 0 || which >= PX_SCRATCH_SLOTS || bytes > SIZE_MAX - 4096) return NULL;
  if (!tl_scratch) {
    pthread_once(&scratch_once, scratch_key_create);
    tl_scratch = calloc(1, sizeof *tl_scratch);
    if (!tl_scratch) return NULL;
    pthread_setspecific(scratch_key, tl_scratch);
  }
  scratch* s = tl_scratch;
  if (s->cap[which] < bytes || !s->p[which]) {
    size_t cap = bytes < 4096 ? 4096 : bytes;
    uint8_t* p = aligned_alloc(64, (cap + 63) & ~(size_t)63);
    if (!p) return NULL;
    free(s->p[which]);
    s->p[which] = p;
    s->cap[which] = cap;
  }
  return s->p[which];
}
