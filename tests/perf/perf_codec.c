/* paramex-codec-bench: throughput of the pull-frame pipeline on the SGD workload.
 *   encode (server): integer delta + zigzag + byte shuffle + zstd, per 1 MiB chunk, on
 *                    1..T threads (chunks shared out by an atomic counter);
 *   decode (client): zstd + unshuffle + unzigzag + apply + XXH3-64 check, one thread.
 * Weights N(0, 0.02^2), one SGD step with gradients N(0, 0.01^2) at --lr.
 * Usage: paramex-codec-bench [--mib N] [--lr F] [--threads T] [--view f32|bf16]
 * Prints one JSON line per thread count. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec/checksum.h"
#include "codec/dtype.h"
#include "codec/initializer.h"
#include "codec/payload.h"
#include "codec/zstdframe.h"
#include "util/iov.h"
#include "wire/chunk_msg.h"

#define CHUNK_ELEMS (256u * 1024u) /* 1 MiB of f32 */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct job {
  const uint8_t *newb, *oldb;
  size_t n, nchunks;
  int width;
  uint8_t** frames;
  size_t* lens;
  _Atomic size_t next;
} job;

static void* enc_thread(void* arg) {
  job* j = arg;
  for (;;) {
    size_t i = atomic_fetch_add(&j->next, 1);
    if (i >= j->nchunks) break;
    size_t first = i * CHUNK_ELEMS, n = j->n - first < CHUNK_ELEMS ? j->n - first : CHUNK_ELEMS;
    size_t off = first * (size_t)j->width;
    j->lens[i] = px_encode_delta(j->newb + off, j->oldb + off, n, j->width, 1, j->frames[i],
                                  px_zstd_bound(n * (size_t)j->width));
  }
  return NULL;
}

int main(int argc, char** argv) {
  size_t mib = 64;
  double lr = 1e-3;
  int maxt = 2, bf16 = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--mib")) mib = strtoull(argv[i + 1], NULL, 10);
    else if (!strcmp(argv[i], "--lr")) lr = atof(argv[i + 1]);
    else if (!strcmp(argv[i], "--threads")) maxt = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--view")) bf16 = !strcmp(argv[i + 1], "bf16");
    else {
      fprintf(stderr, "usage: paramex-codec-bench [--mib N] [--lr F] [--threads T] [--view f32|bf16]\n");
      return 2;
    }
  }
  size_t n = mib * 1024 * 1024 / 4;
  float* w0 = malloc(n * 4);
  float* g = malloc(n * 4);
  float* w1 = malloc(n * 4);
  px_init_fill_f32(w0, 0, n, PX_FILL_NORMAL, 0.0f, 0.02f, 1);
  px_init_fill_f32(g, 0, n, PX_FILL_NORMAL, 0.0f, 0.01f, 2);
  for (size_t i = 0; i < n; i++) w1[i] = w0[i] - (float)lr * g[i];
  int width = 4;
  const uint8_t *newb = (const uint8_t*)w1, *oldb = (const uint8_t*)w0;
  uint16_t *h0 = NULL, *h1 = NULL;
  if (bf16) {
    h0 = malloc(n * 2);
    h1 = malloc(n * 2);
    px_f32_to_bf16_n(w0, h0, n);
    px_f32_to_bf16_n(w1, h1, n);
    newb = (const uint8_t*)h1;
    oldb = (const uint8_t*)h0;
    width = 2;
  }
  size_t raw = n * (size_t)width;
  job j = {newb, oldb, n, (n + CHUNK_ELEMS - 1) / CHUNK_ELEMS, width, NULL, NULL, 0};
  j.frames = calloc(j.nchunks, sizeof *j.frames);
  j.lens = calloc(j.nchunks, sizeof *j.lens);
  for (size_t i = 0; i < j.nchunks; i++) j.frames[i] = malloc(px_zstd_bound(CHUNK_ELEMS * 4));
  for (int t = 1; t <= maxt; t++) {
    double best = 1e9;
    for (int rep = 0; rep < 3; rep++) {
      atomic_store(&j.next, 0);
      pthread_t th[64];
      double t0 = now_s();
      for (int k = 0; k < t; k++) pthread_create(&th[k], NULL, enc_thread, &j);
      for (int k = 0; k < t; k++) pthread_join(th[k], NULL);
      double dt = now_s() - t0;
      if (dt < best) best = dt;
    }
    size_t wire = 0;
    for (size_t i = 0; i < j.nchunks; i++) wire += j.lens[i];
    printf("{\"stage\": \"encode\", \"view\": \"%s\", \"lr\": %g, \"threads\": %d, \"raw_bytes\": %zu, "
           "\"wire_over_raw\": %.4f, \"gbps\": %.3f}\n",
           bf16 ? "bf16" : "f32", lr, t, raw, (double)wire / raw, raw / best / 1e9);
  }
  /* decode: the client's path, on a copy of the old version as base */
  uint8_t* dst = malloc(raw);
  double best = 1e9;
  int bad = 0;
  for (int rep = 0; rep < 3; rep++) {
    memcpy(dst, oldb, raw);
    double t0 = now_s();
    for (size_t i = 0; i < j.nchunks; i++) {
      size_t first = i * CHUNK_ELEMS, cn = n - first < CHUNK_ELEMS ? n - first : CHUNK_ELEMS;
      size_t off = first * (size_t)width;
      px_chunk c = {0};
      c.encoding = PX_ENC_DELTA_ZSTD;
      c.raw_len = (uint32_t)(cn * (size_t)width);
      c.checksum = px_checksum(newb + off, cn * (size_t)width);
      c.has_payload = 1;
      c.payload_len = j.lens[i];
      px_iov seg = {j.frames[i], j.lens[i]};
      char err[128];
      if (px_chunk_decode(&c, &seg, 1, dst + off, cn, width, err, sizeof err) != PX_DECODE_OK)
        bad++;
    }
    double dt = now_s() - t0;
    if (dt < best) best = dt;
  }
  int same = memcmp(dst, newb, raw) == 0;
  printf("{\"stage\": \"decode\", \"view\": \"%s\", \"lr\": %g, \"threads\": 1, \"raw_bytes\": %zu, "
         "\"gbps\": %.3f, \"bit_exact\": %s}\n",
         bf16 ? "bf16" : "f32", lr, raw, raw / best / 1e9, same && !bad ? "true" : "false");
  for (size_t i = 0; i < j.nchunks; i++) free(j.frames[i]);
  free(j.frames);
  free(j.lens);
  free(dst);
  free(h0);
  free(h1);
  free(w0);
  free(g);
  free(w1);
  return same && !bad ? 0 : 1;
}
