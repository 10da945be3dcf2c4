/* paramex stats (cli_stats.h). */
#include "cli_stats.h"

#include <errno.h>
#include <pthread.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec/dtype.h"
#include "codec/payload.h"
#include "format/safetensors_read.h"
#include "format/safetensors_write.h"
#include "rpc/rpc_base.h"
#include "rpc/rpc_client.h"
#include "util/clock.h"
#include "util/file.h"
#include "util/flags.h"
#include "util/iov.h"
#include "util/str.h"
#include "wire/chunk_msg.h"
#include "health.pb-c.h"
#include "paramex.pb-c.h"

#include "cli_common.h"
#include "cli_model.h"

/* ---- JSON --------------------------------------------------------------------------- */

static void json_key(FILE* out, const char* key, bool* first) {
  if (!*first) fputc(',', out);
  *first = false;
  json_str(out, key);
  fputc(':', out);
}

static void json_u64(FILE* out, const char* key, uint64_t v, bool* first) {
  json_key(out, key, first);
  fprintf(out, "%" PRIu64, v);
}

static void json_bool(FILE* out, const char* key, bool v, bool* first) {
  json_key(out, key, first);
  fputs(v ? "true" : "false", out);
}

static void json_string_field(FILE* out, const char* key, const char* v, bool* first) {
  json_key(out, key, first);
  json_str(out, v);
}

/* Enums as their proto value names, as the protobuf JSON mapping writes them; a number
 * when the value is unknown. */
static void json_enum(FILE* out, const char* key, const ProtobufCEnumDescriptor* d, int v,
                      bool* first) {
  const ProtobufCEnumValue* ev = protobuf_c_enum_descriptor_get_value(d, v);
  json_key(out, key, first);
  if (ev)
    json_str(out, ev->name);
  else
    fprintf(out, "%d", v);
}

static void stats_json(FILE* out, const Paramex__V1__StatsResponse* r) {
  bool first = true;
  fputc('{', out);
  json_string_field(out, "server_id", r->server_id, &first);
  json_u64(out, "uptime_ms", r->uptime_ms, &first);
  json_u64(out, "workers_expected", r->workers_expected, &first);
  json_u64(out, "workers_joined", r->workers_joined, &first);
  json_u64(out, "push_chunks", r->push_chunks, &first);
  json_u64(out, "push_duplicates", r->push_duplicates, &first);
  json_u64(out, "nonfinite_chunks", r->nonfinite_chunks, &first);
  json_u64(out, "push_raw_bytes", r->push_raw_bytes, &first);
  json_u64(out, "push_wire_bytes", r->push_wire_bytes, &first);
  json_u64(out, "pull_chunks", r->pull_chunks, &first);
  json_u64(out, "pull_raw_bytes", r->pull_raw_bytes, &first);
  json_u64(out, "pull_wire_bytes", r->pull_wire_bytes, &first);
  json_u64(out, "steps_completed", r->steps_completed, &first);
  json_u64(out, "rejected_calls", r->rejected_calls, &first);
  json_u64(out, "refused_connections", r->refused_connections, &first);
  json_u64(out, "exchange_steps", r->exchange_steps, &first);
  json_u64(out, "active_calls", r->active_calls, &first);
  json_u64(out, "history_bytes", r->history_bytes, &first);
  json_u64(out, "history_budget", r->history_budget, &first);
  json_u64(out, "frame_cache_bytes", r->frame_cache_bytes, &first);
  json_u64(out, "encodes", r->encodes, &first);
  json_u64(out, "frame_cache_hits", r->frame_cache_hits, &first);
  json_u64(out, "pull_unchanged", r->pull_unchanged, &first);
  json_u64(out, "pull_delta", r->pull_delta, &first);
  json_u64(out, "pull_snapshot", r->pull_snapshot, &first);
  json_u64(out, "workers_alive", r->workers_alive, &first);
  json_bool(out, "elastic", r->elastic, &first);
  json_u64(out, "checkpoints_written", r->checkpoints_written, &first);
  json_u64(out, "checkpoint_failures", r->checkpoint_failures, &first);
  json_u64(out, "checkpoint_version", r->checkpoint_version, &first);
  json_string_field(out, "checkpoint_path", r->checkpoint_path, &first);
  json_u64(out, "restored_version", r->restored_version, &first);
  json_key(out, "tensors", &first);
  fputc('[', out);
  for (size_t i = 0; i < r->n_tensors; i++) {
    const Paramex__V1__TensorStats* t = r->tensors[i];
    bool f = true;
    fputs(i ? ",{" : "{", out);
    json_u64(out, "id", t->id, &f);
    json_string_field(out, "name", t->name, &f);
    json_enum(out, "dtype", &paramex__v1__dtype__descriptor, (int)t->dtype, &f);
    json_key(out, "shape", &f);
    fputc('[', out);
    for (size_t k = 0; k < t->n_shape; k++) fprintf(out, "%s%" PRIu64, k ? "," : "", t->shape[k]);
    fputc(']', out);
    json_u64(out, "version_min", t->version_min, &f);
    json_u64(out, "version_max", t->version_max, &f);
    json_u64(out, "bytes", t->bytes, &f);
    json_u64(out, "num_chunks", t->num_chunks, &f);
    json_u64(out, "own_chunks", t->own_chunks, &f);
    json_u64(out, "checksum", t->checksum, &f);
    json_u64(out, "push_raw_bytes", t->push_raw_bytes, &f);
    json_u64(out, "push_wire_bytes", t->push_wire_bytes, &f);
    json_u64(out, "pull_raw_bytes", t->pull_raw_bytes, &f);
    json_u64(out, "pull_wire_bytes", t->pull_wire_bytes, &f);
    fputc('}', out);
  }
  fputc(']', out);
  json_key(out, "workers", &first);
  fputc('[', out);
  for (size_t i = 0; i < r->n_workers; i++) {
    const Paramex__V1__WorkerStats* w = r->workers[i];
    bool f = true;
    fputs(i ? ",{" : "{", out);
    json_u64(out, "rank", w->rank, &f);
    json_u64(out, "incarnation", w->incarnation, &f);
    json_string_field(out, "name", w->name, &f);
    json_u64(out, "chunks_pushed", w->chunks_pushed, &f);
    json_u64(out, "steps", w->steps, &f);
    json_u64(out, "last_seen_ms", w->last_seen_ms, &f);
    json_bool(out, "alive", w->alive, &f);
    json_bool(out, "finished", w->finished, &f);
    fputc('}', out);
  }
  fputc(']', out);
  json_u64(out, "version_min", r->version_min, &first);
  json_u64(out, "version_max", r->version_max, &first);
  json_u64(out, "shard", r->shard, &first);
  json_u64(out, "shards", r->shards ? r->shards : 1, &first);
  fputc('}', out);
}

/* ---- human-readable stats ----------------------------------------------------------- */

static const char* ratio(uint64_t wire, uint64_t raw, char* buf, size_t cap) {
  if (raw == 0)
    snprintf(buf, cap, "n/a");
  else
    snprintf(buf, cap, "%.3f", (double)wire / (double)raw);
  return buf;
}

static const char* shape_str(const Paramex__V1__TensorStats* t, char* buf, size_t cap) {
  size_t n = (size_t)snprintf(buf, cap, "[");
  for (size_t k = 0; k < t->n_shape && n < cap; k++)
    n += (size_t)snprintf(buf + n, cap - n, "%s%" PRIu64, k ? "," : "", t->shape[k]);
  if (n < cap) snprintf(buf + n, cap - n, "]");
  return buf;
}

static int text_width(const char* s, int min, int max) {
  int n = (int)strlen(s);
  return n < min ? min : n > max ? max : n;
}

static void stats_text(FILE* out, const Paramex__V1__StatsResponse* r) {
  char a[64], b[256], c[64], line[512];
  fprintf(out, "%-18s %s\n", "server_id", one_line(r->server_id, line, sizeof line, '?'));
  if (r->shards > 1)
    fprintf(out, "%-18s %" PRIu32 " of %" PRIu32 "\n", "shard", r->shard, r->shards);
  fprintf(out, "%-18s %" PRIu64 " (%s)\n", "uptime_ms", r->uptime_ms,
          human_duration(r->uptime_ms, a, sizeof a));
  fprintf(out, "%-18s %" PRIu32 "\n", "workers_expected", r->workers_expected);
  fprintf(out, "%-18s %" PRIu32 "\n", "workers_joined", r->workers_joined);
  fprintf(out, "%-18s %" PRIu32 "%s\n", "workers_alive", r->workers_alive,
          r->elastic ? " (--elastic)" : "");
  fprintf(out, "%-18s %" PRIu64 "\n", "version_min", r->version_min);
  fprintf(out, "%-18s %" PRIu64 "\n", "version_max", r->version_max);
  fprintf(out, "%-18s %" PRIu64 "\n", "steps_completed", r->steps_completed);
  fprintf(out, "%-18s %" PRIu64 "\n", "rejected_calls", r->rejected_calls);
  if (r->refused_connections)
    fprintf(out, "%-18s %" PRIu64 " (at the open-file limit; raise ulimit -n)\n",
            "refused_conns", r->refused_connections);
  fprintf(out, "%-18s %" PRIu64 "\n", "exchange_steps", r->exchange_steps);
  fprintf(out, "%-18s %" PRIu64 "\n", "active_calls", r->active_calls);
  fprintf(out, "%-18s %" PRIu64 "\n", "push_chunks", r->push_chunks);
  fprintf(out, "%-18s %" PRIu64 "\n", "push_duplicates", r->push_duplicates);
  fprintf(out, "%-18s %" PRIu64 "%s\n", "nonfinite_chunks", r->nonfinite_chunks,
          r->nonfinite_chunks ? " (pushed chunks with inf or NaN)" : "");
  fprintf(out, "%-18s %" PRIu64 " (%s)\n", "push_raw_bytes", r->push_raw_bytes,
          human_bytes(r->push_raw_bytes, a, sizeof a));
  fprintf(out, "%-18s %" PRIu64 " (%s)\n", "push_wire_bytes", r->push_wire_bytes,
          human_bytes(r->push_wire_bytes, a, sizeof a));
  fprintf(out, "%-18s %s\n", "push wire/raw",
          ratio(r->push_wire_bytes, r->push_raw_bytes, a, sizeof a));
  fprintf(out, "%-18s %" PRIu64 "\n", "pull_chunks", r->pull_chunks);
  fprintf(out, "%-18s %" PRIu64 " (%s)\n", "pull_raw_bytes", r->pull_raw_bytes,
          human_bytes(r->pull_raw_bytes, a, sizeof a));
  fprintf(out, "%-18s %" PRIu64 " (%s)\n", "pull_wire_bytes", r->pull_wire_bytes,
          human_bytes(r->pull_wire_bytes, a, sizeof a));
  fprintf(out, "%-18s %s\n", "pull wire/raw",
          ratio(r->pull_wire_bytes, r->pull_raw_bytes, a, sizeof a));
  fprintf(out, "%-18s %" PRIu64 "\n", "pull_unchanged", r->pull_unchanged);
  fprintf(out, "%-18s %" PRIu64 "\n", "pull_delta", r->pull_delta);
  fprintf(out, "%-18s %" PRIu64 "\n", "pull_snapshot", r->pull_snapshot);
  fprintf(out, "%-18s %" PRIu64 "\n", "encodes", r->encodes);
  fprintf(out, "%-18s %" PRIu64 "\n", "frame_cache_hits", r->frame_cache_hits);
  fprintf(out, "%-18s %" PRIu64 " (%s)\n", "frame_cache_bytes", r->frame_cache_bytes,
          human_bytes(r->frame_cache_bytes, a, sizeof a));
  fprintf(out, "%-18s %" PRIu64 " (%s)\n", "history_bytes", r->history_bytes,
          human_bytes(r->history_bytes, a, sizeof a));
  fprintf(out, "%-18s %" PRIu64 " (%s)\n", "history_budget", r->history_budget,
          human_bytes(r->history_budget, a, sizeof a));

  /* Column widths follow the content (names capped at 64 characters). */
  int wname = 4, wshape = 5;
  for (size_t i = 0; i < r->n_tensors; i++) {
    int wn = text_width(r->tensors[i]->name, 4, 64);
    int ws = text_width(shape_str(r->tensors[i], b, sizeof b), 5, 63);
    wname = wn > wname ? wn : wname;
    wshape = ws > wshape ? ws : wshape;
  }
  fprintf(out, "\ntensors (%zu)\n", r->n_tensors);
  if (r->n_tensors)
    fprintf(out, "  %5s  %-*s  %-5s  %-*s  %11s  %11s  %14s  %8s  %s\n", "ID", wname, "NAME",
            "DTYPE", wshape, "SHAPE", "VERSION_MIN", "VERSION_MAX", "BYTES", "CHUNKS", "CHECKSUM");
  for (size_t i = 0; i < r->n_tensors; i++) {
    const Paramex__V1__TensorStats* t = r->tensors[i];
    if (t->checksum)
      snprintf(c, sizeof c, "0x%016" PRIx64, t->checksum);
    else
      snprintf(c, sizeof c, "-");
    fprintf(out, "  %5" PRIu32 "  %-*s  %-5s  %-*s  %11" PRIu64 "  %11" PRIu64 "  %14" PRIu64
                 "  %8" PRIu32 "  %s\n",
            t->id, wname, one_line(t->name, line, sizeof line, '?'), px_dtype_name((int)t->dtype),
            wshape, shape_str(t, b, sizeof b), t->version_min, t->version_max, t->bytes,
            t->num_chunks, c);
  }
  /* Traffic per tensor, in its own table so that the one above stays readable: raw
   * bytes are the decoded chunk contents, wire bytes the messages as sent. */
  if (r->n_tensors) {
    fprintf(out, "\ntensor traffic\n");
    fprintf(out, "  %5s  %-*s  %12s  %12s  %8s  %12s  %12s  %8s\n", "ID", wname, "NAME",
            "PUSH_RAW", "PUSH_WIRE", "WIRE/RAW", "PULL_RAW", "PULL_WIRE", "WIRE/RAW");
  }
  for (size_t i = 0; i < r->n_tensors; i++) {
    const Paramex__V1__TensorStats* t = r->tensors[i];
    char pr[32], pw[32], pq[32], lr[32], lw[32], lq[32];
    fprintf(out, "  %5" PRIu32 "  %-*s  %12s  %12s  %8s  %12s  %12s  %8s\n", t->id, wname,
            one_line(t->name, line, sizeof line, '?'), human_bytes(t->push_raw_bytes, pr, sizeof pr),
            human_bytes(t->push_wire_bytes, pw, sizeof pw),
            ratio(t->push_wire_bytes, t->push_raw_bytes, pq, sizeof pq),
            human_bytes(t->pull_raw_bytes, lr, sizeof lr),
            human_bytes(t->pull_wire_bytes, lw, sizeof lw),
            ratio(t->pull_wire_bytes, t->pull_raw_bytes, lq, sizeof lq));
  }

  fprintf(out, "%-18s %" PRIu64 " (failures %" PRIu64 ")\n", "checkpoints", r->checkpoints_written,
          r->checkpoint_failures);
  fprintf(out, "%-18s %" PRIu64 "%s%s\n", "checkpoint_version", r->checkpoint_version,
          r->checkpoint_path && *r->checkpoint_path ? " " : "",
          r->checkpoint_path ? one_line(r->checkpoint_path, line, sizeof line, '?') : "");
  fprintf(out, "%-18s %" PRIu64 "\n", "restored_version", r->restored_version);

  int wwname = 4;
  for (size_t i = 0; i < r->n_workers; i++) {
    int wn = text_width(r->workers[i]->name, 4, 64);
    wwname = wn > wwname ? wn : wwname;
  }
  fprintf(out, "\nworkers (%zu)\n", r->n_workers);
  if (r->n_workers)
    fprintf(out, "  %5s  %-8s  %20s  %-*s  %14s  %8s  %12s\n", "RANK", "STATE", "INCARNATION",
            wwname, "NAME", "CHUNKS_PUSHED", "STEPS", "LAST_SEEN_MS");
  for (size_t i = 0; i < r->n_workers; i++) {
    const Paramex__V1__WorkerStats* w = r->workers[i];
    const char* state = w->finished ? "finished" : w->alive ? "alive" : "dead";
    fprintf(out, "  %5" PRIu32 "  %-8s  %20" PRIu64 "  %-*s  %14" PRIu64 "  %8" PRIu64
                 "  %12" PRIu64 "\n",
            w->rank, state, w->incarnation, wwname, one_line(w->name, line, sizeof line, '?'),
            w->chunks_pushed, w->steps, w->last_seen_ms);
  }
}

/* ---- a model over several shards ------------------------------------------------------ */

/* What the shards add up to: counters summed, versions over the chunks each holds. */
typedef struct combined {
  uint64_t push_chunks, push_duplicates, pull_chunks, push_raw, push_wire, pull_raw, pull_wire;
  uint64_t steps_completed, rejected_calls, checkpoints, checkpoint_failures;
  uint64_t vmin, vmax, checkpoint_version; /* checkpoint: the newest every shard has written */
  uint32_t workers_joined, workers_alive;  /* the fewest over the shards */
} combined;

static void tensor_versions(const cli_model* m, size_t i, uint64_t* lo, uint64_t* hi,
                            uint32_t* held) {
  *lo = UINT64_MAX;
  *hi = 0;
  *held = 0;
  for (uint32_t s = 0; s < m->nshards; s++) {
    const Paramex__V1__StatsResponse* r = m->stats[s];
    for (size_t k = 0; k < r->n_tensors; k++) {
      const Paramex__V1__TensorStats* t = r->tensors[k];
      if (!t->name || strcmp(t->name, m->t[i].name) != 0 || t->own_chunks == 0) continue;
      *held += t->own_chunks;
      if (t->version_min < *lo) *lo = t->version_min;
      if (t->version_max > *hi) *hi = t->version_max;
    }
  }
  if (*lo == UINT64_MAX) *lo = 0;
}

static void combine(const cli_model* m, combined* c) {
  memset(c, 0, sizeof *c);
  c->vmin = UINT64_MAX;
  c->checkpoint_version = UINT64_MAX;
  c->workers_joined = c->workers_alive = UINT32_MAX;
  for (uint32_t s = 0; s < m->nshards; s++) {
    const Paramex__V1__StatsResponse* r = m->stats[s];
    c->push_chunks += r->push_chunks;
    c->push_duplicates += r->push_duplicates;
    c->pull_chunks += r->pull_chunks;
    c->push_raw += r->push_raw_bytes;
    c->push_wire += r->push_wire_bytes;
    c->pull_raw += r->pull_raw_bytes;
    c->pull_wire += r->pull_wire_bytes;
    c->steps_completed += r->steps_completed;
    c->rejected_calls += r->rejected_calls;
    c->checkpoints += r->checkpoints_written;
    c->checkpoint_failures += r->checkpoint_failures;
    if (r->checkpoint_version < c->checkpoint_version) c->checkpoint_version = r->checkpoint_version;
    if (r->workers_joined < c->workers_joined) c->workers_joined = r->workers_joined;
    if (r->workers_alive < c->workers_alive) c->workers_alive = r->workers_alive;
  }
  for (size_t i = 0; i < m->n; i++) {
    uint64_t lo, hi;
    uint32_t held;
    tensor_versions(m, i, &lo, &hi, &held);
    if (lo < c->vmin) c->vmin = lo;
    if (hi > c->vmax) c->vmax = hi;
  }
  if (c->vmin == UINT64_MAX) c->vmin = 0;
}

static void combined_json(FILE* out, const cli_model* m, const combined* c) {
  bool f = true;
  fputc('{', out);
  json_u64(out, "shards", m->nshards, &f);
  json_u64(out, "version_min", c->vmin, &f);
  json_u64(out, "version_max", c->vmax, &f);
  json_u64(out, "workers_joined", c->workers_joined, &f);
  json_u64(out, "workers_alive", c->workers_alive, &f);
  json_u64(out, "push_chunks", c->push_chunks, &f);
  json_u64(out, "push_duplicates", c->push_duplicates, &f);
  json_u64(out, "push_raw_bytes", c->push_raw, &f);
  json_u64(out, "push_wire_bytes", c->push_wire, &f);
  json_u64(out, "pull_chunks", c->pull_chunks, &f);
  json_u64(out, "pull_raw_bytes", c->pull_raw, &f);
  json_u64(out, "pull_wire_bytes", c->pull_wire, &f);
  json_u64(out, "steps_completed", c->steps_completed, &f);
  json_u64(out, "rejected_calls", c->rejected_calls, &f);
  json_u64(out, "checkpoints_written", c->checkpoints, &f);
  json_u64(out, "checkpoint_failures", c->checkpoint_failures, &f);
  json_u64(out, "checkpoint_version", c->checkpoint_version, &f);
  json_key(out, "tensors", &f);
  fputc('[', out);
  for (size_t i = 0; i < m->n; i++) {
    uint64_t lo, hi;
    uint32_t held;
    tensor_versions(m, i, &lo, &hi, &held);
    bool g = true;
    fputs(i ? ",{" : "{", out);
    json_string_field(out, "name", m->t[i].name, &g);
    json_u64(out, "version_min", lo, &g);
    json_u64(out, "version_max", hi, &g);
    json_u64(out, "num_chunks", m->t[i].nchunks, &g);
    json_u64(out, "bytes", m->t[i].bytes, &g);
    fputc('}', out);
  }
  fputs("]}", out);
}

static void combined_text(FILE* out, const cli_model* m, const combined* c) {
  char a[64], line[512];
  fprintf(out, "\n== the model: %u shards ==\n", m->nshards);
  fprintf(out, "%-18s %" PRIu64 "\n", "version_min", c->vmin);
  fprintf(out, "%-18s %" PRIu64 "\n", "version_max", c->vmax);
  fprintf(out, "%-18s %" PRIu32 " (alive %" PRIu32 ", fewest over the shards)\n",
          "workers_joined", c->workers_joined, c->workers_alive);
  fprintf(out, "%-18s %" PRIu64 " (duplicates %" PRIu64 ")\n", "push_chunks", c->push_chunks,
          c->push_duplicates);
  fprintf(out, "%-18s %s (wire/raw %s)\n", "push_raw_bytes", human_bytes(c->push_raw, a, sizeof a),
          ratio(c->push_wire, c->push_raw, line, sizeof line));
  fprintf(out, "%-18s %" PRIu64 "\n", "pull_chunks", c->pull_chunks);
  fprintf(out, "%-18s %s (wire/raw %s)\n", "pull_raw_bytes", human_bytes(c->pull_raw, a, sizeof a),
          ratio(c->pull_wire, c->pull_raw, line, sizeof line));
  fprintf(out, "%-18s %" PRIu64 "\n", "steps_completed", c->steps_completed);
  fprintf(out, "%-18s %" PRIu64 "\n", "rejected_calls", c->rejected_calls);
  fprintf(out, "%-18s %" PRIu64 " (failures %" PRIu64 "; every shard has version %" PRIu64 ")\n",
          "checkpoints", c->checkpoints, c->checkpoint_failures, c->checkpoint_version);
  fprintf(out, "\n  %-32s  %11s  %11s  %8s  %s\n", "NAME", "VERSION_MIN", "VERSION_MAX", "CHUNKS",
          "HELD PER SHARD");
  for (size_t i = 0; i < m->n; i++) {
    uint64_t lo, hi;
    uint32_t held;
    tensor_versions(m, i, &lo, &hi, &held);
    fprintf(out, "  %-32s  %11" PRIu64 "  %11" PRIu64 "  %8" PRIu32 "  ",
            one_line(m->t[i].name, line, sizeof line, '?'), lo, hi, m->t[i].nchunks);
    for (uint32_t s = 0; s < m->nshards; s++)
      fprintf(out, "%s%" PRIu32, s ? "/" : "", m->t[i].held[s]);
    fputc('\n', out);
  }
  fputs("(paramex checksum ADDRS gives each whole tensor's checksum)\n", out);
}

/* paramex stats A,B,...: each shard, then the model. */
static int cluster_stats(const char* list, bool json) {
  char err[768], line[768];
  cli_model m;
  px_rpc_init();
  int rc = cli_model_stats(list, &m, err, sizeof err);
  px_rpc_shutdown();
  if (rc != 0) {
    fprintf(stderr, "paramex: stats: %s\n", one_line(err, line, sizeof line, ' '));
    cli_model_free(&m);
    return 1;
  }
  combined c;
  combine(&m, &c);
  if (json) {
    fputs("{\"shards\":[", stdout);
    for (uint32_t s = 0; s < m.nshards; s++) {
      if (s) fputc(',', stdout);
      stats_json(stdout, m.stats[s]);
    }
    fputs("],\"combined\":", stdout);
    combined_json(stdout, &m, &c);
    fputs("}\n", stdout);
  } else {
    for (uint32_t s = 0; s < m.nshards; s++) {
      printf("%s== shard %u of %u: %s ==\n", s ? "\n" : "", s, m.nshards,
             one_line(m.addr[s], line, sizeof line, '?'));
      stats_text(stdout, m.stats[s]);
    }
    combined_text(stdout, &m, &c);
  }
  cli_model_free(&m);
  if (fflush(stdout) != 0 || ferror(stdout)) {
    fprintf(stderr, "paramex: stats: cannot write the output\n");
    return 1;
  }
  return 0;
}

int cmd_stats(int argc, char** argv) {
  bool json = false;
  const px_flag flags[] = {
      {"json", PX_FLAG_BOOL, &json, 0, 0, NULL, "print one JSON object (proto field names)"},
      CONN_FLAGS,
  };
  const char* addr = NULL;
  int rc = parse_cmd("stats", flags, sizeof flags / sizeof flags[0], argc, argv, &addr);
  if (rc >= 0) return rc;
  if (strchr(addr, ',')) return cluster_stats(addr, json);

  size_t resp_len = 0;
  uint8_t* resp = call_empty("stats", addr, STATS_PATH, STATS_TIMEOUT_MS, &resp_len);
  if (!resp) return 1;
  Paramex__V1__StatsResponse* r = paramex__v1__stats_response__unpack(NULL, resp_len, resp);
  free(resp);
  if (!r) {
    fprintf(stderr, "paramex: stats %s: malformed StatsResponse\n", addr);
    return 1;
  }
  if (json) {
    stats_json(stdout, r);
    fputc('\n', stdout);
  } else {
    stats_text(stdout, r);
  }
  paramex__v1__stats_response__free_unpacked(r, NULL);
  if (fflush(stdout) != 0 || ferror(stdout)) {
    fprintf(stderr, "paramex: stats: cannot write the output\n");
    return 1;
  }
  return 0;
}

