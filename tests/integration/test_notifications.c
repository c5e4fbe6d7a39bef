/*
 * test_notifications.c - notifications with read state against a real
 * `tally run` on the embedded broker:
 *
 * - GET /v1/subjects/{s}/notifications lists the subject's alerts (the
 *   same ids as /alerts), all unread at first; ?unread=1 filters;
 * - POST .../notifications/read marks some read: 202 once Kafka has the
 *   marks, then the GET shows them read (and ?unread=1 leaves them out);
 *   marking them again is 200 with already_read and produces nothing;
 * - bad bodies are 400 naming the field, an id that is no alert of the
 *   subject 404 notification_not_found, no key 401;
 * - the marks are events folded like any other: a SIGKILL right after a
 *   mark was acknowledged loses nothing (the restarted instance shows it),
 *   and a new instance on an empty state dir (the partition moved) shows
 *   the same read state.
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
#define SUBJECT "user:n-alice"
#define NOTES "/v1/subjects/" SUBJECT "/notifications"

static const char config_json[] =
    "{\"thresholds\": [25, 50, 75, 90, 100],"
    " \"default_plans\": {\"anonymous\": \"t\", \"user\": \"t\", \"api_key\": "
    "\"t\"},"
    " \"plans\": {\"t\": {\"credits\": -1, \"limits\": {\"api_calls\": "
    "{\"limit\": 100, \"mode\": \"hard\"}}}}}";

static int port;

static json_t *call(const char *method, const char *path, const char *auth,
                    const char *body, long *status) {
  char *text = NULL;
  if (th_http_request(port, method, path, auth, body, body ? strlen(body) : 0,
                      NULL, status, &text))
    fail_msg("%s %s: no answer", method, path);
  json_t *json = json_loads(text, 0, NULL);
  free(text);
  return json;
}

static const char *error_code(const json_t *json) {
  return json_string_value(
      json_object_get(json_object_get(json, "error"), "code"));
}

static long long unread_count(void) {
  long status;
  json_t *json = call("GET", NOTES, TH_AUTH_DEFAULT, NULL, &status);
  long long unread =
      status == 200 ? json_integer_value(json_object_get(json, "unread")) : -1;
  json_decref(json);
  return unread;
}

/* Waits until the subject has want unread notifications (30 s). */
static void wait_unread(long long want) {
  int64_t deadline = th_now_ms() + 30000;
  long long got = -1;
  while (th_now_ms() < deadline && (got = unread_count()) != want)
    th_sleep_ms(50);
  if (got != want)
    fail_msg("unread stayed %lld, wanted %lld", got, want);
}

/* The read flag of alert id in the GET (asserting it is listed). */
static int is_read(const char *id) {
  long status;
  json_t *json =
      call("GET", NOTES "?limit=1000", TH_AUTH_DEFAULT, NULL, &status);
  assert_int_equal(status, 200);
  json_t *list = json_object_get(json, "notifications");
  for (size_t i = 0; i < json_array_size(list); i++) {
    json_t *note = json_array_get(list, i);
    if (strcmp(json_string_value(json_object_get(note, "alert_id")), id) == 0) {
      int read = json_is_true(json_object_get(note, "read"));
      json_decref(json);
      return read;
    }
  }
  fail_msg("notification %s not listed", id);
  return -1;
}

static char *mark_body(const char *const *ids, size_t count) {
  json_t *list = json_array();
  for (size_t i = 0; i < count; i++)
    json_array_append_new(list, json_string(ids[i]));
  json_t *body = json_pack("{s:o}", "ids", list);
  char *text = json_dumps(body, JSON_COMPACT);
  json_decref(body);
  return text;
}

static void test_notifications_read_state(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  char *dir = th_mkdtemp("notifications");
  char state_dir[600], fresh_dir[600], config[600];
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  snprintf(fresh_dir, sizeof(fresh_dir), "%s/fresh", dir);
  snprintf(config, sizeof(config), "%s/tally.json", dir);
  FILE *file = fopen(config, "w");
  assert_non_null(file);
  fputs(config_json, file);
  fclose(file);
  const char *const extra[] = {"--config", config, NULL};
  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, extra), 0);
  port = run.port;

  /* 80 api calls of a 100 limit: warnings at 25, 50 and 75 %. */
  long status;
  json_t *json = call("POST", "/v1/events", TH_AUTH_DEFAULT,
                      "[{\"event_id\": \"n1\", \"subject\": \"" SUBJECT
                      "\", \"feature\": \"api_calls\", \"quantity\": 30},"
                      " {\"event_id\": \"n2\", \"subject\": \"" SUBJECT
                      "\", \"feature\": \"api_calls\", \"quantity\": 30},"
                      " {\"event_id\": \"n3\", \"subject\": \"" SUBJECT
                      "\", \"feature\": \"api_calls\", \"quantity\": 20}]",
                      &status);
  assert_int_equal(status, 202);
  json_decref(json);
  wait_unread(3);

  /* The same alerts as /alerts, newest first, all unread. */
  json = call("GET", NOTES, TH_AUTH_DEFAULT, NULL, &status);
  assert_int_equal(status, 200);
  json_t *alerts = call("GET", "/v1/subjects/" SUBJECT "/alerts",
                        TH_AUTH_DEFAULT, NULL, &status);
  json_t *notes = json_object_get(json, "notifications");
  json_t *alert_list = json_object_get(alerts, "alerts");
  assert_int_equal(json_array_size(notes), 3);
  assert_int_equal(json_integer_value(json_object_get(json, "total")), 3);
  assert_int_equal(json_array_size(alert_list), 3);
  char ids[3][700];
  for (size_t i = 0; i < 3; i++) {
    json_t *note = json_array_get(notes, i);
    assert_string_equal(json_string_value(json_object_get(note, "alert_id")),
                        json_string_value(json_object_get(
                            json_array_get(alert_list, i), "alert_id")));
    assert_true(json_is_false(json_object_get(note, "read")));
    snprintf(ids[i], sizeof(ids[i]), "%s",
             json_string_value(json_object_get(note, "alert_id")));
  }
  json_decref(json);
  json_decref(alerts);

  /* Bad requests change nothing. */
  static const struct {
    const char *body;
    long status;
    const char *code;
  } bad[] = {{"not json", 400, "bad_json"},
             {"{\"ids\": []}", 400, "bad_request"},
             {"{\"ids\": [1]}", 400, "bad_request"},
             {"{\"ids\": [\"\"]}", 400, "bad_request"},
             {"{\"ids\": \"x\"}", 400, "bad_request"},
             {"{\"ids\": [\"x\"], \"all\": true}", 400, "unknown_field"},
             {"{\"ids\": [\"limit_warning:user:n-alice:0:api_calls:25\"]}", 404,
              "notification_not_found"}};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    json = call("POST", NOTES "/read", TH_AUTH_DEFAULT, bad[i].body, &status);
    if (status != bad[i].status || strcmp(error_code(json), bad[i].code))
      fail_msg("%s: %ld %s, wanted %ld %s", bad[i].body, status,
               error_code(json), bad[i].status, bad[i].code);
    json_decref(json);
  }
  char many[8192] = "{\"ids\": [";
  for (int i = 0; i <= 100; i++)
    snprintf(many + strlen(many), sizeof(many) - strlen(many), "%s\"id-%d\"",
             i ? "," : "", i);
  strcat(many, "]}");
  json = call("POST", NOTES "/read", TH_AUTH_DEFAULT, many, &status);
  assert_int_equal(status, 400);
  json_decref(json);
  json = call("POST", NOTES "/read", NULL, "{\"ids\": [\"x\"]}", &status);
  assert_int_equal(status, 401);
  json_decref(json);
  json = call("GET", NOTES "?unread=maybe", TH_AUTH_DEFAULT, NULL, &status);
  assert_int_equal(status, 400);
  json_decref(json);
  assert_int_equal(unread_count(), 3);

  /* Two marked read (one named twice). */
  const char *two[] = {ids[0], ids[2], ids[0]};
  char *body = mark_body(two, 3);
  json = call("POST", NOTES "/read", TH_AUTH_DEFAULT, body, &status);
  free(body);
  assert_int_equal(status, 202);
  assert_int_equal(json_array_size(json_object_get(json, "marked")), 2);
  json_decref(json);
  wait_unread(1);
  assert_true(is_read(ids[0]));
  assert_false(is_read(ids[1]));
  assert_true(is_read(ids[2]));
  json = call("GET", NOTES "?unread=1", TH_AUTH_DEFAULT, NULL, &status);
  assert_int_equal(json_array_size(json_object_get(json, "notifications")), 1);
  assert_string_equal(
      json_string_value(json_object_get(
          json_array_get(json_object_get(json, "notifications"), 0),
          "alert_id")),
      ids[1]);
  json_decref(json);
  /* Again: read already, nothing produced. */
  body = mark_body(two, 2);
  json = call("POST", NOTES "/read", TH_AUTH_DEFAULT, body, &status);
  free(body);
  assert_int_equal(status, 200);
  assert_int_equal(json_array_size(json_object_get(json, "already_read")), 2);
  assert_int_equal(json_array_size(json_object_get(json, "marked")), 0);
  json_decref(json);

  /* The last one, then SIGKILL as soon as Kafka acknowledged it: the
   * restarted instance folds it from the log. */
  const char *last[] = {ids[1]};
  body = mark_body(last, 1);
  json = call("POST", NOTES "/read", TH_AUTH_DEFAULT, body, &status);
  free(body);
  assert_int_equal(status, 202);
  json_decref(json);
  th_kill9(run.pid);
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, extra), 0);
  port = run.port;
  wait_unread(0);
  for (int i = 0; i < 3; i++)
    assert_true(is_read(ids[i]));
  assert_int_equal(th_wait_caught_up(port, broker.bootstrap, "tally.usage",
                                     PARTITIONS, 60000),
                   0);
  assert_int_equal(th_wait_outbox_empty(port, 60000), 0);
  assert_int_equal(th_metric_sum(port, "tally_dead_letters_total"), 0);
  assert_int_equal(th_stop(run.pid), 0);

  /* The partition moved: a new instance on an empty state dir. */
  assert_int_equal(th_run_start(&run, broker.bootstrap, fresh_dir, extra), 0);
  port = run.port;
  wait_unread(0);
  for (int i = 0; i < 3; i++)
    assert_true(is_read(ids[i]));
  json = call("GET", NOTES, TH_AUTH_DEFAULT, NULL, &status);
  assert_int_equal(json_integer_value(json_object_get(json, "total")), 3);
  json_decref(json);
  assert_int_equal(th_stop(run.pid), 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_notifications_read_state),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
