/* Operations over several shards (cluster_op.c): a push or pull of a cluster client is one
 * op per shard, started at once on the shards' channels (no thread per shard), each
 * carrying only the chunks its shard holds, all writing into the caller's buffers (the
 * shards' chunks are disjoint parts of them). Waiting settles each shard's op as its call
 * ends -- retrying a shard that is unavailable while the others go on -- and cancels the
 * other shards' pulls once one fails for good (a shard that restarted answers ABORTED:
 * the step cannot complete). Its error names the shard. With one server the ops of
 * push_op.h and pull_op.h run as they are. Internal to libparamex (the API:
 * pmx_push_async, pmx_pull_async, pmx_pull_as_async and pmx_op_wait of paramex.h). */
#ifndef PX_CLUSTER_OP_H
#define PX_CLUSTER_OP_H

#include "op.h"

#endif
