/* Restoring at start (restore.c): the newest checkpoint of --checkpoint-dir that verifies
 * goes into the empty store. Newer ones that do not verify are set aside (renamed
 * NAME.unrestorable, kept but no longer ranked with this run's files); a directory whose
 * checkpoints all fail refuses the start instead of training from nothing. */
#ifndef PX_RESTORE_H
#define PX_RESTORE_H

#include "checkpoint.h"

/* 0 (restored, or no checkpoint at all: empty), -1 when the start must not go on: a file
 * failed half way through loading, or none of the checkpoints can be restored. */
int px_ckpt_restore(px_ckpt* ck);

#endif
