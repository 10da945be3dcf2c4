/* pmx_diff_worker: one worker of the diff-sync tests (test_diff.c), driving libparamex.
 *
 *   pmx_diff_worker --server ADDR --rank R --world N --steps S --out FILE --plan PLAN
 *                   --tensor NAME:DTYPE:NUMEL [--tensor ...] [--sync-numel N]
 *                   [--view bf16] [--push-mode raw|zstd|bf16|bf16zstd] [--push-min-bytes B]
 *                   [--no-compression] [--timeout-ms MS]
 *
 * Declares the data tensors (--tensor, in order: tensor indexes 0..k-1 of diff_model.h;
 * DTYPE f32, bf16 or f16) and the f32 tensor "sync" (index k, --sync-numel elements,
 * default 2000), all with explicit initial values. PLAN has S+1 characters (diff_model.h).
 * For each step s = 0..S:
 *   1. pull "sync" at min_version s into its own buffer (every step, so that the server's
 *      chunks are all at version s before this worker pushes step s: BSP refuses a push
 *      from the future, and a worker that skips pulls of its data tensors still needs to
 *      know when step s-1 is complete);
 *   2. act on PLAN[s] for the data tensors (pmx_pull_as with --view, min_version s; they
 *      are then exactly at version s since this worker has not pushed step s yet);
 *   3. unless s == S: compute the gradients from the buffers it holds and push step s
 *      (data tensors first, "sync" last).
 * Every pull appends a record (diff_model.h) with the buffers it filled to FILE; the last
 * record ('E') has the client's totals. Exit 0 on success, 1 when a paramex call failed
 * or returned an unexpected version (one line on stderr), 2 on bad usage. */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/dtype.h"
#include "diff_model.h"
#include "paramex/paramex.h"

static uint32_t g_rank;

static void die_pmx(const char* what, uint64_t step, pmx_status st) {
  fprintf(stderr, "pmx_diff_worker[rank %" PRIu32 "]: %s (step %" PRIu64 "): %s: %s\n", g_rank,
          what, step, pmx_strerror(st), pmx_last_error());
  exit(1);
}

static void die(const char* msg) {
  fprintf(stderr, "pmx_diff_worker[rank %" PRIu32 "]: %s\n", g_rank, msg);
  exit(1);
}

static void usage(const char* why) {
  fprintf(stderr, "pmx_diff_worker: %s\n", why);
  exit(2);
}

static uint64_t parse_u64(const char* flag, const char* v) {
  char* end = NULL;
  if (!v || !*v || *v == '-') goto bad;
  unsigned long long x = strtoull(v, &end, 10);
  if (*end) goto bad;
  return (uint64_t)x;
bad:
  fprintf(stderr, "pmx_diff_worker: %s: bad value '%s'\n", flag, v ? v : "");
  exit(2);
}

typedef struct dtensor {
  char name[64];
  pmx_dtype dtype;
  size_t numel;
  pmx_tensor* h;
  void* held;  /* the buffer the data tensor is pulled into (width bytes per element) */
  float* f32;  /* held as f32 */
  float* grad;
  uint16_t* grad16; /* the gradient in the tensor's dtype (16-bit tensors) */
} dtensor;

static size_t g_n;          /* data tensors */
static dtensor g_t[PX_DM_MAX_TENSORS];
static int g_view;          /* 0 or PMX_BF16 */
static FILE* g_out;

static size_t pulled_width(const dtensor* t) {
  if (t->dtype == PMX_F32) return g_view == PMX_BF16 ? 2 : 4;
  return 2;
}

static void parse_tensor(const char* v) {
  if (g_n == PX_DM_MAX_TENSORS - 1) usage("too many --tensor");
  dtensor* t = &g_t[g_n];
  const char* c1 = strchr(v, ':');
  const char* c2 = c1 ? strchr(c1 + 1, ':') : NULL;
  if (!c1 || !c2 || c1 == v || (size_t)(c1 - v) >= sizeof t->name) usage("--tensor NAME:DTYPE:NUMEL");
  memcpy(t->name, v, (size_t)(c1 - v));
  t->name[c1 - v] = 0;
  size_t dl = (size_t)(c2 - c1 - 1);
  if (dl == 3 && !strncmp(c1 + 1, "f32", 3)) t->dtype = PMX_F32;
  else if (dl == 4 && !strncmp(c1 + 1, "bf16", 4)) t->dtype = PMX_BF16;
  else if (dl == 3 && !strncmp(c1 + 1, "f16", 3)) t->dtype = PMX_F16;
  else usage("--tensor: DTYPE is f32, bf16 or f16");
  t->numel = (size_t)parse_u64("--tensor", c2 + 1);
  if (t->numel == 0) usage("--tensor: NUMEL must be > 0");
  g_n++;
}

static pmx_client_stats g_last;

static void write_or_die(const void* p, size_t n) {
  if (n && fwrite(p, 1, n, g_out) != n) die("cannot write --out");
}

/* Appends the record of the pull that just finished: nt tensors, their versions and bufs. */
static void record(pmx_client* c, uint64_t step, int kind, size_t nt, const uint64_t* versions,
                   void* const* bufs, const size_t* bytes) {
  pmx_client_stats now;
  pmx_client_get_stats(c, &now);
  px_dm_rec r = {PX_DM_REC_MAGIC, (uint32_t)step, (uint32_t)kind, (uint32_t)nt,
                  now.pull_wire_bytes - g_last.pull_wire_bytes,
                  now.pull_raw_bytes - g_last.pull_raw_bytes,
                  now.pull_unchanged_chunks - g_last.pull_unchanged_chunks,
                  now.checksum_failures - g_last.checksum_failures, 0, 0};
  g_last = now;
  write_or_die(&r, sizeof r);
  write_or_die(versions, nt * sizeof *versions);
  for (size_t i = 0; i < nt; i++) write_or_die(bufs[i], bytes[i]);
}

/* f32 -> the 16-bit dtype, round to nearest even. */
static void to_dtype(pmx_dtype dt, const float* src, uint16_t* dst, size_t n) {
  if (dt == PMX_BF16) px_f32_to_bf16_n(src, dst, n);
  else px_f32_to_f16_n(src, dst, n);
}

static void* alloc_garbage(size_t bytes) {
  void* p = malloc(bytes);
  if (!p) die("out of memory");
  memset(p, 0xa5, bytes); /* a pull must overwrite every byte */
  return p;
}

/* Pulls the data tensors at min_version s into bufs and checks the versions. */
static void pull_data(pmx_client* c, uint64_t s, int kind, void** bufs) {
  pmx_tensor* hs[PX_DM_MAX_TENSORS];
  uint64_t versions[PX_DM_MAX_TENSORS];
  size_t bytes[PX_DM_MAX_TENSORS];
  for (size_t i = 0; i < g_n; i++) {
    hs[i] = g_t[i].h;
    bytes[i] = g_t[i].numel * pulled_width(&g_t[i]);
  }
  pmx_status st = pmx_pull_as(c, g_n, hs, bufs, (pmx_dtype)g_view, s, versions);
  if (st != PMX_OK) die_pmx("pmx_pull_as (data tensors)", s, st);
  for (size_t i = 0; i < g_n; i++)
    if (versions[i] != s) {
      fprintf(stderr, "pmx_diff_worker[rank %" PRIu32 "]: pull at step %" PRIu64 " returned version %" PRIu64
                      " for %s\n", g_rank, s, versions[i], g_t[i].name);
      exit(1);
    }
  record(c, s, kind, g_n, versions, bufs, bytes);
}

int main(int argc, char** argv) {
  const char* server = NULL;
  const char* out_path = NULL;
  const char* plan = NULL;
  uint64_t rank = 0, world = 0, steps = 0, sync_numel = 2000, push_min = 0;
  int64_t timeout_ms = 60000;
  pmx_push_mode push_mode = PMX_PUSH_RAW;
  bool no_compression = false;
  for (int i = 1; i < argc; i++) {
    const char* f = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(f, "--no-compression")) {
      no_compression = true;
      continue;
    }
    if (!v) usage("a flag needs a value");
    i++;
    if (!strcmp(f, "--server")) server = v;
    else if (!strcmp(f, "--out")) out_path = v;
    else if (!strcmp(f, "--plan")) plan = v;
    else if (!strcmp(f, "--rank")) rank = parse_u64(f, v);
    else if (!strcmp(f, "--world")) world = parse_u64(f, v);
    else if (!strcmp(f, "--steps")) steps = parse_u64(f, v);
    else if (!strcmp(f, "--sync-numel")) sync_numel = parse_u64(f, v);
    else if (!strcmp(f, "--push-min-bytes")) push_min = parse_u64(f, v);
    else if (!strcmp(f, "--timeout-ms")) timeout_ms = (int64_t)parse_u64(f, v);
    else if (!strcmp(f, "--tensor")) parse_tensor(v);
    else if (!strcmp(f, "--view")) {
      if (strcmp(v, "bf16") != 0) usage("--view: only bf16");
      g_view = PMX_BF16;
    } else if (!strcmp(f, "--push-mode")) {
      if (!strcmp(v, "raw")) push_mode = PMX_PUSH_RAW;
      else if (!strcmp(v, "zstd")) push_mode = PMX_PUSH_ZSTD;
      else if (!strcmp(v, "bf16")) push_mode = PMX_PUSH_BF16;
      else if (!strcmp(v, "bf16zstd")) push_mode = PMX_PUSH_BF16_ZSTD;
      else usage("--push-mode: raw, zstd, bf16 or bf16zstd");
    } else {
      fprintf(stderr, "pmx_diff_worker: unknown flag %s\n", f);
      return 2;
    }
  }
  if (!server || !out_path || !plan || world == 0 || rank >= world || rank > UINT32_MAX ||
      g_n == 0 || sync_numel == 0 || strlen(plan) != steps + 1)
    usage("usage: --server ADDR --rank R --world N --steps S --out FILE --plan PLAN (S+1 chars) "
          "--tensor NAME:DTYPE:NUMEL ...");
  for (const char* p = plan; *p; p++)
    if (!strchr("pfr.", *p)) usage("--plan: characters p, f, r, .");
  if (plan[0] == PX_DM_SKIP) usage("--plan: step 0 must pull");
  g_rank = (uint32_t)rank;

  /* The sync tensor is the last one, index g_n. */
  dtensor* sy = &g_t[g_n];
  snprintf(sy->name, sizeof sy->name, "sync");
  sy->dtype = PMX_F32;
  sy->numel = (size_t)sync_numel;
  const size_t nall = g_n + 1;

  /* compression is forced on: the tests check the diffs' behaviour on loopback, where the
   * client's default (auto) would pull raw */
  pmx_options opts = {.timeout_ms = timeout_ms, .connect_timeout_ms = 20000,
                      .compression = no_compression ? PMX_COMPRESSION_OFF : PMX_COMPRESSION_ON};
  pmx_client* c = NULL;
  pmx_status st = pmx_connect(server, &opts, &c);
  if (st != PMX_OK) die_pmx("pmx_connect", 0, st);
  st = pmx_join(c, (uint32_t)rank, (uint32_t)world, NULL);
  if (st != PMX_OK) die_pmx("pmx_join", 0, st);

  for (size_t i = 0; i < nall; i++) {
    dtensor* t = &g_t[i];
    t->f32 = malloc(t->numel * sizeof(float));
    t->grad = malloc(t->numel * sizeof(float));
    t->grad16 = malloc(t->numel * sizeof(uint16_t));
    t->held = alloc_garbage(t->numel * (i == g_n ? 4 : pulled_width(t)));
    if (!t->f32 || !t->grad || !t->grad16) die("out of memory");
    if (px_dm_init((uint32_t)i, t->f32, t->numel) != 0) die("initializer failed");
    const void* values = t->f32;
    if (t->dtype != PMX_F32) {
      to_dtype(t->dtype, t->f32, t->grad16, t->numel);
      values = t->grad16;
    }
    uint64_t shape[1] = {t->numel};
    st = pmx_declare(c, t->name, t->dtype, shape, 1, values, NULL, &t->h);
    if (st != PMX_OK) die_pmx("pmx_declare", 0, st);
    if (i < g_n && push_mode != PMX_PUSH_RAW) {
      pmx_push_mode m = t->dtype == PMX_F32 ? push_mode : (pmx_push_mode)(push_mode & PMX_PUSH_ZSTD);
      st = pmx_tensor_set_push_compression(t->h, m, (size_t)push_min);
      if (st != PMX_OK) die_pmx("pmx_tensor_set_push_compression", 0, st);
    }
  }
  g_out = fopen(out_path, "wb");
  if (!g_out) die("cannot open --out");
  pmx_client_get_stats(c, &g_last);

  pmx_tensor* hs[PX_DM_MAX_TENSORS];
  const void* grads[PX_DM_MAX_TENSORS];
  void* bufs[PX_DM_MAX_TENSORS];
  for (uint64_t s = 0; s <= steps; s++) {
    /* 1. sync */
    uint64_t v = 0;
    size_t sb = sy->numel * sizeof(float);
    st = pmx_pull(c, 1, &sy->h, &sy->held, s, &v);
    if (st != PMX_OK) die_pmx("pmx_pull (sync)", s, st);
    if (v != s) die("the sync tensor is not at the step's version");
    record(c, s, 'S', 1, &v, &sy->held, &sb);

    /* 2. data tensors */
    const char act = plan[s];
    if (act == PX_DM_PULL || act == PX_DM_REPEAT) {
      for (size_t i = 0; i < g_n; i++) bufs[i] = g_t[i].held;
      pull_data(c, s, PX_DM_PULL, bufs);
      if (act == PX_DM_REPEAT) pull_data(c, s, PX_DM_REPEAT, bufs);
    } else if (act == PX_DM_FRESH) {
      /* allocated before the old buffers are freed: new addresses, so libparamex cannot
       * mistake them for the buffers it last filled */
      for (size_t i = 0; i < g_n; i++) bufs[i] = alloc_garbage(g_t[i].numel * pulled_width(&g_t[i]));
      pull_data(c, s, PX_DM_FRESH, bufs);
      for (size_t i = 0; i < g_n; i++) {
        free(g_t[i].held);
        g_t[i].held = bufs[i];
      }
    }
    if (s == steps) break;

    /* 3. gradients from what it holds, then the push of step s */
    for (size_t i = 0; i < nall; i++) {
      dtensor* t = &g_t[i];
      bool wide = i == g_n || (t->dtype == PMX_F32 && g_view == 0);
      if (wide) memcpy(t->f32, t->held, t->numel * sizeof(float));
      else if (t->dtype == PMX_F16) px_f16_to_f32_n(t->held, t->f32, t->numel);
      else px_bf16_to_f32_n(t->held, t->f32, t->numel);
      if (px_dm_grad((uint32_t)i, (uint32_t)rank, s, t->f32, t->grad, t->numel) != 0)
        die("gradient failed");
      hs[i] = t->h;
      grads[i] = t->grad;
      if (t->dtype != PMX_F32) {
        to_dtype(t->dtype, t->grad, t->grad16, t->numel); /* pushed in the tensor's dtype */
        grads[i] = t->grad16;
      }
    }
    st = pmx_push(c, s, nall, hs, grads);
    if (st != PMX_OK) die_pmx("pmx_push", s, st);
  }

  pmx_client_stats cs;
  pmx_client_get_stats(c, &cs);
  px_dm_rec e = {PX_DM_REC_MAGIC, (uint32_t)steps, 'E', 0, cs.pull_wire_bytes, cs.pull_raw_bytes,
                  cs.pull_unchanged_chunks, cs.checksum_failures, cs.push_wire_bytes,
                  cs.push_raw_bytes};
  write_or_die(&e, sizeof e);
  if (fclose(g_out) != 0) die("cannot write --out");
  pmx_client_destroy(c);
  for (size_t i = 0; i < nall; i++) {
    free(g_t[i].held);
    free(g_t[i].f32);
    free(g_t[i].grad);
    free(g_t[i].grad16);
  }
  return 0;
}
