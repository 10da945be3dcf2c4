/* Large buffers and malloc tuning. Page faults cost ~10 us on these VMs
 * (shared/notes/memory-and-baselines.md), so large buffers are mapped once, backed by huge
 * pages, and reused. */
#ifndef PX_MEM_H
#define PX_MEM_H

#include <stddef.h>

/* Zero-filled memory from mmap with MADV_HUGEPAGE (2 MiB aligned when at least 2 MiB).
 * Free it with px_big_free and the same size. NULL on failure. */
void* px_big_alloc(size_t bytes);
void px_big_free(void* p, size_t bytes); /* accepts NULL */
/* Raises glibc's trim and mmap thresholds so that the heap is not returned to the kernel
 * and faulted in again between messages (the gRPC core allocates per message). Call once
 * at start. */
void px_tune_malloc(void);
void px_tune_malloc_once(void); /* the same, at most once per process (libraries) */

#endif
