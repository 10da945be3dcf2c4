/* Chunk-sized buffers recycled through per-size-class free lists (power-of-two classes
 * from 4 KiB to 128 MiB). A buffer put back is never returned to the kernel: on these VMs
 * a page fault costs ~10 us, and the server cycles through the same few sizes (chunk
 * receive buffers, sums, frames) every step. Thread-safe. */
#ifndef PX_BUFPOOL_H
#define PX_BUFPOOL_H

#include <stddef.h>

/* A buffer of at least bytes bytes (64-byte aligned; huge-page backed from 256 KiB), not
 * zeroed; NULL when out of memory or bytes is above the largest class. */
void* px_buf_get(size_t bytes);
/* Gives p back; bytes is the size it was got with (any size of the same class works).
 * Accepts NULL. */
void px_buf_put(void* p, size_t bytes);

#endif
