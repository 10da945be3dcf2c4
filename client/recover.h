/* Shards recovered as one (recover.c), the first part of pmx_resume over several shards:
 * when a shard restarted from its checkpoint, every shard goes back to one version V
 * before the workers resume from V. Each going-back is a recovery generation
 * (RecoverRequest in paramex.proto): the client looks at every shard (Stats: version,
 * generation, fresh), picks the generation and V, asks shard 0 first (its answer decides
 * V for everyone), then the others in order, and looks again until every shard is in one
 * generation at one version with none fresh. Several workers doing this at once agree
 * through shard 0; a shard killed meanwhile makes a newer generation. Internal to
 * libparamex. */
#ifndef PX_RECOVER_H
#define PX_RECOVER_H

#include <stdint.h>

#include "client.h"

/* Brings c's shards to one generation at one version; tries until px_now_ms() reaches
 * give_up_ms. PMX_OK, or the error naming the shard (FAILED_PRECONDITION: a shard has no
 * checkpoint at the version another restarted from). Marks the shard clients whose
 * server restarted so that pmx_resume joins them again. */
pmx_status px_recover_shards(pmx_client* c, uint64_t give_up_ms);

#endif
