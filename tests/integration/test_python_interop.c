/*
 * test_python_interop.c - a Kafka client that is not librdkafka, against
 * tally with no schema registry of its own: Debian's python3-kafka
 * (kafka-python) and python3-avro, run as tests/integration/python/
 * registry_interop.py (scripts/install-deps.sh installs both).
 *
 * What it proves: the client takes tally's event schema and id from
 * tally's registry API (no hand-copied .avsc), produces Confluent-framed
 * events with its own default partitioner (murmur2, as Java's), and tally
 * folds them to the unit with nothing dead-lettered; then it reads
 * tally.alerts and decodes every alert with the schema it fetched from
 * tally's API by the id in the record's framing (2), the fields as the
 * fold set them.
 */
#include "harness.h"

#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define PARTITIONS 4
#define QUANTITY 600

static const char *const users[] = {"py-a", "py-b", "py-c"};
#define USERS (sizeof(users) / sizeof(users[0]))

static void test_python_client(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  char *dir = th_mkdtemp("python");
  char state_dir[600], out[600], stdout_path[600], stderr_path[600];
  char http_base[64], user_list[128] = "";
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  snprintf(out, sizeof(out), "%s/alerts.jsonl", dir);
  snprintf(stdout_path, sizeof(stdout_path), "%s/python.out", dir);
  snprintf(stderr_path, sizeof(stderr_path), "%s/python.err", dir);
  for (size_t i = 0; i < USERS; i++)
    snprintf(user_list + strlen(user_list),
             sizeof(user_list) - strlen(user_list), "%s%s", i ? "," : "",
             users[i]);

  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, NULL), 0);
  snprintf(http_base, sizeof(http_base), "http://127.0.0.1:%d", run.port);
  char quantity[16];
  snprintf(quantity, sizeof(quantity), "%d", QUANTITY);
  char *argv[] = {"/usr/bin/python3",
                  TALLY_SOURCE_DIR
                  "/tests/integration/python/registry_interop.py",
                  broker.bootstrap,
                  http_base,
                  (char *)th_api_key(),
                  out,
                  user_list,
                  quantity,
                  NULL};
  pid_t pid = th_spawn(argv, NULL, stdout_path, stderr_path);
  int rc = th_wait_exit(pid, 120000);
  if (rc != 0) {
    char *text = th_read_file(stderr_path);
    fail_msg("registry_interop.py exited %d (python3-kafka and python3-avro "
             "come with scripts/install-deps.sh):\n%s",
             rc, text ? text : "");
  }

  /* tally folded what the python client produced, to the unit. */
  assert_int_equal(th_wait_caught_up(run.port, broker.bootstrap, "tally.usage",
                                     PARTITIONS, 60000),
                   0);
  assert_int_equal(th_metric_sum(run.port, "tally_events_folded_total"),
                   (long long)USERS);
  assert_int_equal(th_metric_sum(run.port, "tally_dead_letters_total"), 0);

  /* Every alert decoded by the python client: framed with id 2, the fold's
   * fields. 600 of the free plan's 1,000 api_calls: 25% and 50%. */
  char *text = th_read_file(out);
  assert_non_null(text);
  int seen[USERS][2] = {{0}};
  int lines = 0;
  for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
    json_t *record = json_loads(line, 0, NULL);
    assert_non_null(record);
    lines++;
    json_t *alert = json_object_get(record, "alert");
    assert_int_equal(json_integer_value(json_object_get(record, "schema_id")),
                     2);
    assert_string_equal(json_string_value(json_object_get(alert, "type")),
                        "limit_warning");
    assert_string_equal(json_string_value(json_object_get(alert, "feature")),
                        "api_calls");
    assert_int_equal(json_integer_value(json_object_get(alert, "used")),
                     QUANTITY);
    assert_int_equal(json_integer_value(json_object_get(alert, "limit")), 1000);
    const char *id = json_string_value(
        json_object_get(json_object_get(alert, "subject"), "id"));
    char key[64];
    snprintf(key, sizeof(key), "user:%s", id);
    assert_string_equal(json_string_value(json_object_get(record, "key")), key);
    int percent =
        (int)json_integer_value(json_object_get(alert, "threshold_percent"));
    assert_true(percent == 25 || percent == 50);
    for (size_t i = 0; i < USERS; i++)
      if (strcmp(id, users[i]) == 0)
        seen[i][percent == 50]++;
    json_decref(record);
  }
  free(text);
  for (size_t i = 0; i < USERS; i++) {
    assert_int_equal(seen[i][0], 1);
    assert_int_equal(seen[i][1], 1);
  }
  assert_int_equal(lines, 2 * (int)USERS);

  assert_int_equal(th_stop(run.pid), 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_python_client),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
