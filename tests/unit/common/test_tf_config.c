/* launch/tf_config.c: TF_CONFIG's tasks as ranks and shards (chief first, TF1's master as a
 * chief, ps in their order, the index defaulting to 0), cluster.ps as a shard list, and every
 * malformed shape refused in one line naming the field. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "launch/tf_config.h"

static px_tf_config parse_ok(const char* json) {
  px_tf_config c;
  char err[256] = "";
  if (px_tf_config_parse(json, &c, err, sizeof err) != 0) fail_msg("refused: %s", err);
  return c;
}

static void test_tasks(void** state) {
  (void)state;
  const char* cluster = "{\"cluster\": {\"chief\": [\"c:1\"], \"worker\": [\"w0:2\", \"w1:2\", "
                        "\"w2:2\"], \"ps\": [\"p0:3\", \"[::1]:4\"], \"evaluator\": [\"e:5\"]}, ";
  char json[512];
  snprintf(json, sizeof json, "%s\"task\": {\"type\": \"worker\", \"index\": 2}}", cluster);
  px_tf_config c = parse_ok(json);
  assert_int_equal(c.role, PX_TF_WORKER);
  assert_string_equal(c.type, "worker");
  assert_int_equal(c.index, 2);
  assert_int_equal(c.rank, 3);
  assert_int_equal(c.chiefs, 1);
  assert_int_equal(c.workers, 3);
  assert_int_equal(c.ps, 2);
  assert_string_equal(c.ps_list, "p0:3,[::1]:4");
  px_tf_config_free(&c);
  px_tf_config_free(&c); /* twice is harmless */

  snprintf(json, sizeof json, "%s\"task\": {\"type\": \"chief\", \"index\": 0}}", cluster);
  c = parse_ok(json);
  assert_int_equal(c.role, PX_TF_WORKER);
  assert_int_equal(c.rank, 0);
  px_tf_config_free(&c);

  snprintf(json, sizeof json, "%s\"task\": {\"type\": \"ps\", \"index\": 1}}", cluster);
  c = parse_ok(json);
  assert_int_equal(c.role, PX_TF_PS);
  assert_int_equal(c.index, 1);
  assert_int_equal(c.ps_port, 4);
  px_tf_config_free(&c);

  /* the evaluator trains nothing; no index means 0, as TensorFlow reads it */
  snprintf(json, sizeof json, "%s\"task\": {\"type\": \"evaluator\"}}", cluster);
  c = parse_ok(json);
  assert_int_equal(c.role, PX_TF_NONE);
  assert_int_equal(c.index, 0);
  px_tf_config_free(&c);

  /* TF1's master is the chief; no task at all: the cluster only */
  c = parse_ok("{\"cluster\": {\"master\": [\"m:1\"], \"worker\": [\"w:1\"]}, "
               "\"task\": {\"type\": \"worker\"}}");
  assert_int_equal(c.rank, 1);
  assert_int_equal(c.chiefs, 1);
  assert_null(c.ps_list);
  px_tf_config_free(&c);
  c = parse_ok("{\"cluster\": {\"ps\": [\"p:1\"]}}");
  assert_int_equal(c.role, PX_TF_NONE);
  assert_string_equal(c.type, "");
  assert_string_equal(c.ps_list, "p:1");
  px_tf_config_free(&c);
}

static void refused(const char* json, const char* says) {
  px_tf_config c;
  char err[256] = "";
  assert_int_equal(px_tf_config_parse(json, &c, err, sizeof err), -1);
  if (!strstr(err, says)) fail_msg("got \"%s\", want it to say \"%s\"", err, says);
  assert_null(strchr(err, '\n'));
  assert_null(c.ps_list);
}

static void test_refusals(void** state) {
  (void)state;
  refused("", "TF_CONFIG is not valid JSON (line 1: ");
  refused("{\"cluster\": {\"ps\": [\"p:1\"]},\n\"task\": ", "TF_CONFIG is not valid JSON");
  refused("{\"cluster\": {}, \"cluster\": {}}", "TF_CONFIG is not valid JSON");
  refused("[1]", "TF_CONFIG has no \"cluster\" object");
  refused("{\"task\": {\"type\": \"worker\"}}", "TF_CONFIG has no \"cluster\" object");
  refused("{\"cluster\": {\"ps\": {\"1\": \"p:1\"}}}",
          "TF_CONFIG: cluster.ps is a dict of task indices, which paramex does not read: list "
          "every ps task's address");
  refused("{\"cluster\": {\"ps\": \"p:1\"}}", "TF_CONFIG: cluster.ps is not a list of addresses");
  refused("{\"cluster\": {\"ps\": [\"p:1\", 7]}}",
          "TF_CONFIG: cluster.ps[1] is not a \"host:port\" string (port 1..65535)");
  refused("{\"cluster\": {\"ps\": [\"p\"]}}", "cluster.ps[0] is not a \"host:port\"");
  refused("{\"cluster\": {\"ps\": [\"p:0\"]}}", "cluster.ps[0] is not a \"host:port\"");
  refused("{\"cluster\": {\"ps\": [\"p:65536\"]}}", "cluster.ps[0] is not a \"host:port\"");
  refused("{\"cluster\": {\"ps\": [\":80\"]}}", "cluster.ps[0] is not a \"host:port\"");
  refused("{\"cluster\": {\"ps\": [\"a:1,b:2\"]}}", "cluster.ps[0] is not a \"host:port\"");
  refused("{\"cluster\": {\"worker\": [\"w:x\"]}}", "cluster.worker[0] is not a \"host:port\"");
  refused("{\"cluster\": {\"worker\": [\"w:1\"]}, \"task\": 3}", "TF_CONFIG: task is not an "
          "object");
  refused("{\"cluster\": {\"worker\": [\"w:1\"]}, \"task\": {\"index\": 0}}",
          "TF_CONFIG: task.type is not a job name");
  refused("{\"cluster\": {\"worker\": [\"w:1\"]}, \"task\": {\"type\": \"worker\", \"index\": "
          "-1}}", "TF_CONFIG: task.index is not a task number");
  refused("{\"cluster\": {\"worker\": [\"w:1\"]}, \"task\": {\"type\": \"worker\", \"index\": "
          "\"0\"}}", "TF_CONFIG: task.index is not a task number");
  refused("{\"cluster\": {\"worker\": [\"w:1\"]}, \"task\": {\"type\": \"worker\", \"index\": "
          "1}}", "TF_CONFIG: the task is worker 1, but cluster.worker lists 1");
  refused("{\"cluster\": {\"worker\": [\"w:1\"]}, \"task\": {\"type\": \"ps\"}}",
          "TF_CONFIG: the task is ps 0, but cluster.ps lists 0");
  refused("{\"cluster\": {\"worker\": [\"w:1\"]}, \"task\": {\"type\": \"chief\"}}",
          "TF_CONFIG: the task is chief 0, but cluster.chief lists 0");
  /* a quoted newline in the input stays out of the message */
  refused("{\"cluster\": {\"worker\": [\"w:1\"]}, \"task\": {\"type\": \"worker\", \"index\": "
          "1}}\n\n\x01", "TF_CONFIG is not valid JSON (line 3");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_tasks),
      cmocka_unit_test(test_refusals),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
