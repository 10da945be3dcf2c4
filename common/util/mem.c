/* Large buffers and malloc tuning (mem.h). */
#include <malloc.h>
#include <stdint.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include "util/mem.h"

#define HUGE_PAGE ((size_t)2 << 20)

void* px_big_alloc(size_t bytes) {
  if (bytes == 0 || bytes > SIZE_MAX - HUGE_PAGE) return NULL;
  /* Regions of at least one huge page start on a 2 MiB boundary so that transparent
   * huge pages can back all of them: map 2 MiB more and unmap the unaligned ends. */
  size_t len = bytes >= HUGE_PAGE ? bytes + HUGE_PAGE : bytes;
  uint8_t* base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) return NULL;
  uint8_t* p = base;
  if (len != bytes) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)base + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1);
    p = (uint8_t*)a;
    size_t used = (bytes + page - 1) & ~(page - 1);
    if (p > base) munmap(base, (size_t)(p - base));
    uint8_t* end = base + len;
    if (p + used < end) munmap(p + used, (size_t)(end - (p + used)));
  }
  (void)madvise(p, bytes, MADV_HUGEPAGE); /* best effort: THP may be off */
  return p;
}

void px_big_free(void* p, size_t bytes) {
  if (p && bytes) munmap(p, bytes);
}

void px_tune_malloc(void) {
  /* glibc caps M_MMAP_THRESHOLD at HEAP_MAX_SIZE/2 (32 MiB on 64-bit) and rejects larger
   * values, so fall back to the cap. Setting it also stops glibc's dynamic adjustment. */
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  if (mallopt(M_MMAP_THRESHOLD, 256 << 20) == 0) mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TOP_PAD, 64 << 20);
}

void px_tune_malloc_once(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, px_tune_malloc);
}
