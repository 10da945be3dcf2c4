/* Recovery generations of a shard (the Recover call, paramex.proto): when one shard of a
 * cluster restarts from its checkpoint, the cluster goes back to one version as a whole,
 * and each such going-back is a generation, numbered from 1. A shard remembers the newest
 * generation it took part in and that generation's version, in a "recovery" file of its
 * checkpoint folder ("G V"), so that a shard restarted again still answers for it.
 *
 * The decision a Recover request gets (px_gen_decide) is made here from the shard's
 * version range and checkpoints; the handler (control.c) carries it out, and main.c
 * restarts the service from the checkpoint at the version when told to. */
#ifndef PX_GENERATION_H
#define PX_GENERATION_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct px_gen {
  pthread_mutex_t mu;
  const char* dir;      /* the checkpoint folder (NULL: nothing persisted, none to go back to) */
  uint64_t gen, version;/* the newest generation taken, and its version */
  bool restarted;       /* this service started to go back for `gen` (not by its process) */
  bool taken;           /* a generation was taken since the service started */
  bool restart_pending; /* px_gen_decide said PX_GEN_RESTART: main.c restarts the service */
} px_gen;

/* Reads dir's recovery file (absent: generation 0 at version 0). -1 with err when it
 * exists and cannot be read. */
int px_gen_init(px_gen* g, const char* dir, char* err, size_t errlen);
void px_gen_deinit(px_gen* g);

typedef enum px_gen_action {
  PX_GEN_CURRENT,  /* generation not newer than this shard's: answered with (gen, version) */
  PX_GEN_STALE,    /* older than this shard's: ABORTED */
  PX_GEN_IN_PLACE, /* taken: every own chunk is at the version, and the shard is fresh */
  PX_GEN_RESTART,  /* taken: restart from the checkpoint at the version (restart_pending set) */
  PX_GEN_SAVE,     /* not taken: at the version, not fresh, no checkpoint there: write one
                    * (UNAVAILABLE until it is written, then RESTART) */
  PX_GEN_BEHIND,   /* not taken: behind the version (UNAVAILABLE while pushes land) */
  PX_GEN_CANNOT    /* not taken: no checkpoint at the version (FAILED_PRECONDITION) */
} px_gen_action;

/* Decides a request for generation `gen` at `version`, this shard's own chunks being at
 * versions vmin..vmax, fresh as Stats.fresh says; takes the generation (writes the
 * recovery file) for IN_PLACE and RESTART. err gets the message of STALE, SAVE, BEHIND and
 * CANNOT. */
px_gen_action px_gen_decide(px_gen* g, uint64_t gen, uint64_t version, uint64_t vmin,
                            uint64_t vmax, bool fresh, char* err, size_t errlen);

/* The generation and its version; *pending: a restart is due. */
void px_gen_get(px_gen* g, uint64_t* gen, uint64_t* version, bool* pending);

/* Neither started to go back nor in a generation taken since the start. */
bool px_gen_untouched(px_gen* g);

/* Before the restart: renames the checkpoints of dir newer than version to
 * NAME.rolled-back (all of them for version 0) so that the restart restores version. */
void px_gen_set_aside_newer(const char* dir, uint64_t version);

/* After the restart (a new px_gen, from the file): the generation it restarted for, set
 * again when nothing was persisted. */
void px_gen_restarted(px_gen* g, uint64_t gen, uint64_t version);

#endif
