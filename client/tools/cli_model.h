/* A running model's parameters (cli_model.c): every tensor of the one server, or of the
 * shards of a comma-separated list (in shard order), pulled as RAW chunks -- each shard its
 * own chunks -- and put together in chunk order; and `paramex checksum`, which prints the
 * xxh64 of each whole tensor (the checksum Stats gives with one server, so that a sharded
 * run and a single-server run can be compared). */
#ifndef PX_CLI_MODEL_H
#define PX_CLI_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "paramex.pb-c.h"

typedef struct cli_tensor {
  const char* name; /* in shard 0's Stats */
  int dtype;
  uint32_t ndim;
  const uint64_t* shape;
  uint64_t bytes;
  uint32_t nchunks, chunk_elems;
  uint32_t* ids;    /* [nshards]: the tensor's id on each shard */
  uint32_t* held;   /* [nshards]: the chunks each shard holds */
  uint8_t* data;    /* bytes */
  uint8_t* have;    /* [nchunks] */
  uint64_t vmin, vmax;
} cli_tensor;

typedef struct cli_model {
  uint32_t nshards;
  char** addr;                           /* [nshards] */
  Paramex__V1__StatsResponse** stats;    /* [nshards] */
  size_t n;
  cli_tensor* t;
  uint64_t vmin, vmax;                   /* over every chunk */
} cli_model;

/* One Stats call to addr (a channel opened and closed for it) within timeout_ms: 0 with
 * *out (free with paramex__v1__stats_response__free_unpacked), or -1 with one line in err
 * that starts with addr. */
int cli_shard_stats(const char* addr, int64_t timeout_ms, Paramex__V1__StatsResponse** out,
                    char* err, size_t errlen);
/* Stats of every shard of list, checked to be the shards of one model in that order:
 * 0, or -1 with one line in err. m is freed with cli_model_free either way. */
int cli_model_stats(const char* list, cli_model* m, char* err, size_t errlen);
/* cli_model_stats, then every chunk of every tensor from the shard that holds it. */
int cli_model_pull(const char* list, cli_model* m, char* err, size_t errlen);
void cli_model_free(cli_model* m);

/* paramex checksum ADDR[,ADDR...] [--json] */
int cmd_checksum(int argc, char** argv);

#endif
