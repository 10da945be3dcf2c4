/* Unit tests of server/metrics.c on an in-process server (tests/helpers/server_fixture):
 * the page after real pushes (a step, a duplicate, a refused push), off without the flag. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "server_fixture.h"
#include "wire/chunk_msg.h"

#define CALL_MS 60000

static int push(px_sf* f, uint64_t inc, uint64_t step, uint32_t tid, const float* g, size_t n) {
  uint8_t head[PX_CHUNK_HDR_MAX];
  px_h_msg m = px_sf_push_chunk(head, 0, inc, step, tid, 0, g, n);
  px_h_result r;
  int st = px_h_call(f->ch, PX_H_PATH_PUSH, &m, 1, CALL_MS, &r);
  px_h_result_free(&r);
  return st;
}

static void has(const char* page, const char* line) {
  if (!strstr(page, line)) fail_msg("the page lacks \"%s\":\n%s", line, page);
}

static void test_page_after_pushes(void** state) {
  (void)state;
  px_sf f;
  const char* args[] = {"--workers", "1", "--metrics-listen", "127.0.0.1:0", NULL};
  px_sf_start(&f, args);
  assert_non_null(f.svc.metrics.http);
  assert_true(f.svc.metrics.port > 0);
  uint64_t inc = px_sf_join(&f, 0, 1);
  uint32_t tid = px_sf_declare_f32(&f, "w", 1000, 1);
  float g[1000];
  for (int i = 0; i < 1000; i++) g[i] = 1.0f;
  assert_int_equal(push(&f, inc, 0, tid, g, 1000), PX_ST_OK);
  assert_int_equal(push(&f, inc, 0, tid, g, 1000), PX_ST_OK); /* a duplicate */
  assert_int_equal(push(&f, inc, 5, tid, g, 1000), PX_ST_OUT_OF_RANGE);
  char* page = NULL;
  size_t len = 0;
  assert_int_equal(px_metrics_render(&f.svc.metrics, &page, &len), 0);
  assert_int_equal(strlen(page), len);
  has(page, "paramex_version{shard=\"0\"} 1\n");
  has(page, "paramex_steps_completed_total{shard=\"0\"} 1\n");
  has(page, "paramex_step_duration_seconds_count{shard=\"0\"} 1\n");
  has(page, "paramex_push_chunks_total{shard=\"0\"} 1\n");
  has(page, "paramex_push_duplicates_total{shard=\"0\"} 1\n");
  has(page, "paramex_push_bytes_total{shard=\"0\"} 4000\n");
  has(page, "paramex_calls_total{shard=\"0\",method=\"Push\",code=\"OK\"} 2\n");
  has(page, "paramex_calls_total{shard=\"0\",method=\"Push\",code=\"OUT_OF_RANGE\"} 1\n");
  has(page, "paramex_calls_total{shard=\"0\",method=\"Join\",code=\"OK\"} 1\n");
  has(page, "paramex_worker_steps{shard=\"0\",worker=\"0\"} 1\n");
  has(page, "paramex_worker_up{shard=\"0\",worker=\"0\"} 1\n");
  has(page, "paramex_worker_lag_steps{shard=\"0\",worker=\"0\"} 0\n");
  has(page, "paramex_chunk_step_duration_seconds_count{shard=\"0\"} 1\n");
  has(page, "paramex_workers_joined{shard=\"0\"} 1\n");
  has(page, "paramex_memory_bytes{shard=\"0\",kind=\"parameters\"} 4000\n");
  has(page, "paramex_memory_bytes{shard=\"0\",kind=\"optimizer_state\"} 0\n");
  has(page, "paramex_tensors{shard=\"0\"} 1\n");
  has(page, "# TYPE process_cpu_seconds_total counter\n");
  assert_null(strstr(page, "process_cpu_seconds_total{")); /* no shard label on process_* */
  free(page);
  assert_int_equal(px_sf_stop(&f), 0);
}

static void test_off_without_the_flag(void** state) {
  (void)state;
  px_sf f;
  const char* args[] = {"--workers", "1", NULL};
  px_sf_start(&f, args);
  assert_null(f.svc.metrics.http);
  char* page = NULL;
  size_t len = 0;
  assert_int_equal(px_metrics_render(&f.svc.metrics, &page, &len), 0); /* still renders */
  has(page, "paramex_workers_expected{shard=\"0\"} 1\n");
  free(page);
  assert_int_equal(px_sf_stop(&f), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_page_after_pushes),
      cmocka_unit_test(test_off_without_the_flag),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
