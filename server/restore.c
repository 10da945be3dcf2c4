/* Restoring the newest checkpoint at start (restore.h). */
#include "restore.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/dtype.h"
#include "format/safetensors_read.h"
#include "util/log.h"
#include "util/mem.h"

/* One tensor of a checkpoint (its momentum: mom, unaligned, or NULL). */
static int restore_tensor(px_ckpt* ck, const px_st_tensor* e, const void* mom, uint64_t version,
                          char* err, size_t errlen) {
  float* m = NULL;
  uint64_t numel = e->nbytes / (px_dtype_size(e->dtype) ? px_dtype_size(e->dtype) : 1);
  if (mom) { /* the file's data is not necessarily aligned for floats */
    m = px_big_alloc(numel * sizeof(float));
    if (!m) {
      snprintf(err, errlen, "tensor '%s': out of memory for its momentum", e->name);
      return -1;
    }
    memcpy(m, mom, numel * sizeof(float));
  }
  int rc = px_store_restore(ck->store, e->name, e->dtype, e->shape, e->ndim, e->data, e->nbytes, m,
                            version, err, errlen);
  px_big_free(m, numel * sizeof(float));
  return rc;
}

/* Whether f was written by another shard (files without pmx.shards: shard 0 of 1). */
static bool shard_mismatch(px_ckpt* ck, px_st_file* f, char* err, size_t errlen) {
  const char* a = px_st_meta(f, "pmx.shard");
  const char* b = px_st_meta(f, "pmx.shards");
  unsigned long shard = a ? strtoul(a, NULL, 10) : 0, shards = b ? strtoul(b, NULL, 10) : 1;
  if (shard == ck->store->o.shard && shards == ck->store->o.shards) return false;
  snprintf(err, errlen, "written by shard %lu of %lu, this server is shard %u of %u "
           "(--shard/--shards): chunks are placed by the shard count, so a checkpoint restores "
           "only into the same shard of the same count", shard, shards, ck->store->o.shard,
           ck->store->o.shards);
  return true;
}

/* Whether f holds optimizer state of another kind than this server keeps (a momentum
 * buffer is not an Adagrad sum); files without pmx.state hold momentum when pmx.momentum
 * is 1. A file without state restores into any server (its state starts fresh). */
static bool state_mismatch(px_ckpt* ck, const px_st_file* f, char* err, size_t errlen) {
  const char* st = px_st_meta(f, "pmx.state");
  const char* mom = px_st_meta(f, "pmx.momentum");
  const char* has = st ? st : mom && strcmp(mom, "1") == 0 ? "momentum" : "none";
  if (strcmp(has, "none") == 0) return false;
  const char* want = ck->o.momentum && ck->o.state ? ck->o.state : "none";
  if (strcmp(has, want) == 0 || strcmp(want, "none") == 0) return false;
  snprintf(err, errlen, "it holds %s state, and this server's optimizer keeps %s state (start "
           "it with the --optimizer that wrote it)", has, want);
  return true;
}

/* Loads one checkpoint file into the (empty) store. */
static int restore_file(px_ckpt* ck, const char* path, uint64_t* version, char* err,
                        size_t errlen) {
  px_st_file* f = px_st_open(path, err, errlen);
  if (!f) return -1;
  const char* vs = px_st_meta(f, "pmx.version");
  const char* ws = px_st_meta(f, "pmx.workers");
  char* end = NULL;
  unsigned long long v = vs ? strtoull(vs, &end, 10) : 0;
  int rc = -1;
  if (!vs || !end || *end) {
    snprintf(err, errlen, "no pmx.version in its metadata");
  } else if (!ws || strtoul(ws, NULL, 10) != ck->members->n) {
    snprintf(err, errlen, "written for %s workers, this server has --workers %u",
             ws ? ws : "?", ck->members->n);
  } else if (!state_mismatch(ck, f, err, errlen) && !shard_mismatch(ck, f, err, errlen)) {
    rc = 0;
    size_t n = px_st_count(f);
    for (size_t i = 0; rc == 0 && i < n; i++) {
      px_st_tensor e;
      px_st_entry_at(f, i, &e);
      size_t nl = strlen(e.name);
      if (nl > strlen(PX_CKPT_MOM_SUFFIX) && strcmp(e.name + nl - strlen(PX_CKPT_MOM_SUFFIX), PX_CKPT_MOM_SUFFIX) == 0)
        continue;
      px_st_tensor m;
      char mname[PX_MAX_NAME + 16];
      snprintf(mname, sizeof mname, "%s" PX_CKPT_MOM_SUFFIX, e.name);
      bool has_mom = px_st_find(f, mname, &m) == 0 && m.dtype == PX_DT_F32 &&
                     m.nbytes == e.nbytes / px_dtype_size(e.dtype) * sizeof(float);
      rc = restore_tensor(ck, &e, has_mom ? m.data : NULL, v, err, errlen);
    }
    const char* inc = px_st_meta(f, "pmx.incarnations");
    if (rc == 0 && inc) px_members_restore(ck->members, inc);
    if (rc == 0 && inc) px_members_restore_left(ck->members, px_st_meta(f, "pmx.left"));
  }
  px_st_close(f);
  *version = v;
  return rc;
}

int px_ckpt_restore(px_ckpt* ck) {
  if (!ck->o.dir) return 0;
  uint64_t vs[1024];
  size_t n = px_ckpt_list(ck->o.dir, vs, 1024);
  char first_err[512] = "";
  for (size_t i = 0; i < n; i++) {
    char path[PX_CKPT_PATH_MAX], err[512];
    px_ckpt_path(path, sizeof path, ck->o.dir, vs[i]);
    uint64_t v = 0;
    if (restore_file(ck, path, &v, err, sizeof err) == 0) {
      px_info("restored %s: version %" PRIu64 ", %u tensors", path, v,
               atomic_load(&ck->store->ntensors));
      ck->last_version = v;
      ck->restored_version = v;
      snprintf(ck->last_path, sizeof ck->last_path, "%s", path);
      /* the newer ones that failed: kept for inspection, but no longer ranked with this
       * run's files (their higher versions once got the new run's checkpoints pruned by
       * --keep, so that a restart then restored nothing) */
      px_ckpt_set_aside(ck->o.dir, vs, i, ".unrestorable");
      return 0;
    }
    px_warn("skipping checkpoint %s: %s", path, err);
    if (!first_err[0]) snprintf(first_err, sizeof first_err, "%.200s: %.290s", path, err);
    if (atomic_load(&ck->store->ntensors) > 0) {
      /* a file that failed half way left tensors behind: start over cleanly */
      px_error("checkpoint %s failed after loading some tensors; not restoring", path);
      return -1;
    }
  }
  if (n == 0) {
    px_info("no checkpoint in %s: starting empty", ck->o.dir);
    return 0;
  }
  /* Checkpoints exist and none restores: most often a flag that differs from the run that
   * wrote them (--workers). Starting empty would throw that run away. */
  px_error("--checkpoint-dir %s holds %zu checkpoint%s and none can be restored (newest: %s): "
           "fix the flags, or move the files away to start over", ck->o.dir, n, n == 1 ? "" : "s",
           first_err);
  return -1;
}
