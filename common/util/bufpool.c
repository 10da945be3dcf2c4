/* Buffer recycling (bufpool.h). Class k holds buffers of 4 KiB << k; a free buffer's
 * first word links it into its class's list. */
#include "util/bufpool.h"

#include <pthread.h>
#include <stdlib.h>

#include "util/mem.h"

#define NCLASSES 16
#define BIG_CLASS_BYTES (256u << 10)

static struct {
  pthread_mutex_t mu;
  void* free[NCLASSES];
} g_bufs = {PTHREAD_MUTEX_INITIALIZER, {0}};

static int buf_class(size_t bytes, size_t* cap) {
  int k = 0;
  size_t c = 4096;
  while (c < bytes && k < NCLASSES - 1) {
    c <<= 1;
    k++;
  }
  *cap = c;
  return c >= bytes ? k : -1;
}

void* px_buf_get(size_t bytes) {
  size_t cap;
  int k = buf_class(bytes, &cap);
  if (k < 0) return NULL;
  pthread_mutex_lock(&g_bufs.mu);
  void* p = g_bufs.free[k];
  if (p) g_bufs.free[k] = *(void**)p;
  pthread_mutex_unlock(&g_bufs.mu);
  if (p) return p;
  if (cap >= BIG_CLASS_BYTES) return px_big_alloc(cap);
  return aligned_alloc(64, cap);
}

void px_buf_put(void* p, size_t bytes) {
  size_t cap;
  int k = buf_class(bytes, &cap);
  /* No class: px_buf_get never handed out such a buffer, so p cannot be one of ours. */
  if (!p || k < 0) return;
  pthread_mutex_lock(&g_bufs.mu);
  *(void**)p = g_bufs.free[k];
  g_bufs.free[k] = p;
  pthread_mutex_unlock(&g_bufs.mu);
}
