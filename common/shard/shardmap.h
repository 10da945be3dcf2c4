/* Which shard holds a chunk (shardmap.c): rendezvous (highest-random-weight) hashing of
 * (tensor name, chunk index) over S shards. Every process computes the same map from the
 * same inputs, so no coordinator is needed, a tensor larger than a chunk is spread over
 * all shards, and going from S to S + 1 shards moves only the chunks the new shard wins
 * (about 1/(S + 1) of them). The weights are XXH3-64 of the name with the chunk index and
 * the shard index mixed in: the map is fixed forever (checkpoints rely on it). */
#ifndef PX_SHARDMAP_H
#define PX_SHARDMAP_H

#include <stddef.h>
#include <stdint.h>

#define PX_MAX_SHARDS 256

/* The shard (0..shards-1) that holds chunk `chunk` of the tensor named name[0..len).
 * shards 0 or 1: 0. */
uint32_t px_shard_of(const char* name, size_t len, uint32_t chunk, uint32_t shards);

/* The chunks of a tensor of nchunks chunks that shard `shard` of `shards` holds, in
 * ascending order: written to own (room for nchunks), their count returned. */
uint32_t px_shard_chunks(const char* name, size_t len, uint32_t nchunks, uint32_t shard,
                         uint32_t shards, uint32_t* own);

/* Parses a comma-separated shard list "h1:p1,h2:p2": the number of entries (1..max),
 * each at most 255 bytes and non-empty, or 0 with err naming the problem. */
uint32_t px_shard_list_count(const char* list, uint32_t max, char* err, size_t errlen);
/* Copies entry i of list (as checked by px_shard_list_count) into out[cap]; 0 or -1. */
int px_shard_list_get(const char* list, uint32_t i, char* out, size_t cap);

#endif
