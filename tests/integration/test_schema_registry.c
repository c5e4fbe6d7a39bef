/*
 * test_schema_registry.c - `tally run --schema-registry` against a
 * registry-shaped server (tests/harness/registry_fake.h) that assigns ids
 * from 7, over real sockets and the embedded broker.
 *
 * What it proves:
 *   - startup registers tally.usage-value and tally.alerts-value (basic
 *     auth, the password from the environment) and the alerts on
 *     tally.alerts are framed with the id the registry assigned (8), not 2;
 *   - an event framed with the registry's id for tally's schema (7) is
 *     folded, and so is one written with an evolved schema the registry
 *     holds under another id (a field added with a default);
 *   - an incompatible writer schema (quantity a string) and an id the
 *     registry does not have are dead-lettered with the reason;
 *   - while the registry is down, a record with an id not yet looked up is
 *     neither folded nor dead-lettered: its partition waits (the metric says
 *     so) and a later record of the same subject waits behind it; once the
 *     registry answers, both are folded, to the unit;
 *   - the registry read API on tally's port mirrors the assigned ids.
 */
#include "harness.h"
#include "registry_fake.h"

#include "tly_codec.h"
#include "tly_event.h"

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define PARTITIONS 4

/* Every event's time, and the time usage is asked at. */
static int64_t event_time_ms;

static rd_kafka_t *new_producer(const char *bootstrap) {
  char errstr[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  assert_int_equal(rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap,
                                     errstr, sizeof(errstr)),
                   RD_KAFKA_CONF_OK);
  /* tally's own partitioner: records land on their subject's partition. */
  assert_int_equal(
      rd_kafka_conf_set(conf, "partitioner", "murmur2", errstr, sizeof(errstr)),
      RD_KAFKA_CONF_OK);
  rd_kafka_t *producer =
      rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  assert_non_null(producer);
  return producer;
}

static void produce(rd_kafka_t *producer, const char *key, const void *value,
                    size_t len) {
  assert_int_equal(rd_kafka_producev(producer, RD_KAFKA_V_TOPIC("tally.usage"),
                                     RD_KAFKA_V_KEY(key, strlen(key)),
                                     RD_KAFKA_V_VALUE((void *)value, len),
                                     RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                     RD_KAFKA_V_END),
                   0);
  assert_int_equal(rd_kafka_flush(producer, 10000), 0);
}

/* A usage event of tally's schema framed with id (tally's own codec). */
static size_t usage_record(int32_t id, const char *event_id, const char *user,
                           int64_t quantity, unsigned char *out, size_t cap) {
  char errstr[256];
  tly_codec_t *codec = tly_codec_new(id, errstr, sizeof(errstr));
  assert_non_null(codec);
  tly_event_t event = {0};
  event.event_id = (char *)event_id;
  event.occurred_at_ms = event_time_ms;
  event.subject_kind = TLY_SUBJECT_USER;
  event.subject_id = (char *)user;
  event.body_kind = TLY_BODY_USAGE_RECORDED;
  event.body.usage.feature = "api_calls";
  event.body.usage.quantity = quantity;
  event.body.usage.unit = "";
  const void *bytes = NULL;
  size_t len = 0;
  assert_int_equal(
      tly_codec_encode(codec, &event, &bytes, &len, errstr, sizeof(errstr)), 0);
  assert_true(len <= cap);
  memcpy(out, bytes, len);
  tly_codec_destroy(codec);
  return len;
}

/* tally's schema with one more UsageRecorded field, last (so a record of
 * it is ours plus that field's bytes at the very end: the body is the
 * envelope's last field and properties UsageRecorded's). */
static char *evolved_schema(const char *name, const char *type,
                            json_t *default_value) {
  json_t *schema = json_loads(tly_event_schema_json, 0, NULL);
  json_t *fields = json_object_get(schema, "fields");
  json_t *body = NULL;
  for (size_t i = 0; i < json_array_size(fields); i++)
    if (strcmp(json_string_value(
                   json_object_get(json_array_get(fields, i), "name")),
               "body") == 0)
      body = json_object_get(json_array_get(fields, i), "type");
  assert_non_null(body);
  json_t *usage = json_array_get(body, 0);
  assert_string_equal(json_string_value(json_object_get(usage, "name")),
                      "UsageRecorded");
  json_array_append_new(json_object_get(usage, "fields"),
                        json_pack("{s:s,s:s,s:o}", "name", name, "type", type,
                                  "default", default_value));
  char *text = json_dumps(schema, JSON_COMPACT);
  json_decref(schema);
  return text;
}

static int usage_quantity(int port, const char *user) {
  char path[256], *body = NULL;
  long status = 0;
  snprintf(path, sizeof(path), "/v1/subjects/user:%s/usage?at=%lld", user,
           (long long)event_time_ms);
  assert_int_equal(th_http_get(port, path, &status, &body), 0);
  json_t *json = json_loads(body, 0, NULL);
  free(body);
  int quantity = -1; /* not folded: no such subject */
  if (status == 200)
    quantity = (int)json_integer_value(json_object_get(
        json_object_get(json_object_get(json, "features"), "api_calls"),
        "quantity"));
  json_decref(json);
  return quantity;
}

typedef struct {
  int count;
  int framed_8;
  char errors[4][600];
  int error_count;
} seen_t;

static void visit_alert(void *opaque, const rd_kafka_message_t *msg) {
  seen_t *seen = opaque;
  const unsigned char *bytes = msg->payload;
  seen->count++;
  if (msg->len > 5 && bytes[0] == 0 &&
      tly_codec_frame_id(msg->payload, msg->len) == 8)
    seen->framed_8++;
}

static void visit_dead_letter(void *opaque, const rd_kafka_message_t *msg) {
  seen_t *seen = opaque;
  seen->count++;
  if (seen->error_count < 4)
    th_header(msg, "tally.error", seen->errors[seen->error_count++],
              sizeof(seen->errors[0]));
}

static int dead_letter_says(const seen_t *seen, const char *a, const char *b) {
  for (int i = 0; i < seen->error_count; i++)
    if (strstr(seen->errors[i], a) && strstr(seen->errors[i], b))
      return 1;
  return 0;
}

static void test_registry_end_to_end(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  char *dir = th_mkdtemp("registry");
  char state_dir[600];
  unsigned char record[2048];
  size_t len;
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  event_time_ms = th_now_ms();

  registry_fake_t *fake = registry_fake_start(7, "tally", "s3cret-pw");
  assert_non_null(fake);
  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);
  const char *extra[] = {"--schema-registry", registry_fake_url(fake),
                         "--schema-registry-user", "tally", NULL};
  th_run_env = "TALLY_SCHEMA_REGISTRY_PASSWORD=s3cret-pw";
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, extra), 0);
  th_run_env = NULL;

  /* Startup registered both subjects; the registry chose the ids. */
  assert_int_equal(registry_fake_subject_id(fake, "tally.usage-value"), 7);
  assert_int_equal(registry_fake_subject_id(fake, "tally.alerts-value"), 8);

  rd_kafka_t *producer = new_producer(broker.bootstrap);
  /* Tally's schema under the registry's id: folded; crosses 25% and 50% of
   * the free plan's 1,000 api_calls, so two alerts. */
  len = usage_record(7, "reg-1", "reg-a", 600, record, sizeof(record));
  produce(producer, "user:reg-a", record, len);

  /* An evolved writer schema the registry holds under its own id. */
  char *evolved = evolved_schema("region", "string", json_string("eu"));
  int32_t evolved_id = registry_fake_add(fake, "tally.usage-value", evolved);
  assert_int_equal(evolved_id, 9);
  len = usage_record(evolved_id, "reg-2", "reg-b", 42, record, sizeof(record));
  memcpy(record + len,
         "\x0e"
         "eu-west",
         8); /* region = "eu-west" */
  produce(producer, "user:reg-b", record, len + 8);

  /* Incompatible: quantity is a string. */
  json_t *schema = json_loads(tly_event_schema_json, 0, NULL);
  json_t *usage = json_array_get(
      json_object_get(json_array_get(json_object_get(schema, "fields"), 3),
                      "type"),
      0);
  json_object_set_new(json_array_get(json_object_get(usage, "fields"), 1),
                      "type", json_string("string"));
  char *incompatible = json_dumps(schema, JSON_COMPACT);
  json_decref(schema);
  int32_t incompatible_id =
      registry_fake_add(fake, "tally.usage-value", incompatible);
  len = usage_record(incompatible_id, "reg-3", "reg-c", 5, record,
                     sizeof(record));
  produce(producer, "user:reg-c", record, len);
  /* An id the registry does not have. */
  len = usage_record(99, "reg-4", "reg-c", 5, record, sizeof(record));
  produce(producer, "user:reg-c", record, len);

  assert_int_equal(th_wait_caught_up(run.port, broker.bootstrap, "tally.usage",
                                     PARTITIONS, 60000),
                   0);
  assert_int_equal(usage_quantity(run.port, "reg-a"), 600);
  assert_int_equal(usage_quantity(run.port, "reg-b"), 42);
  assert_int_equal(usage_quantity(run.port, "reg-c"), -1);

  /* The registry is down: an id not looked up yet waits, and so does the
   * record of the same subject behind it. */
  char *evolved2 = evolved_schema("zone", "long", json_integer(0));
  int32_t evolved2_id = registry_fake_add(fake, "tally.usage-value", evolved2);
  registry_fake_down(fake, 1);
  len = usage_record(evolved2_id, "reg-5", "reg-d", 5, record, sizeof(record));
  memcpy(record + len, "\x14", 1); /* zone = 10 */
  produce(producer, "user:reg-d", record, len + 1);
  len = usage_record(7, "reg-6", "reg-d", 3, record, sizeof(record));
  produce(producer, "user:reg-d", record, len);
  int64_t deadline = th_now_ms() + 20000;
  while (th_metric_sum(run.port, "tally_schema_registry_waiting_partitions") !=
             1 &&
         th_now_ms() < deadline)
    th_sleep_ms(50);
  assert_int_equal(
      th_metric_sum(run.port, "tally_schema_registry_waiting_partitions"), 1);
  /* Several retries go by: still nothing folded, nothing dead-lettered. */
  long refused = registry_fake_refused(fake);
  while (registry_fake_refused(fake) < refused + 3 && th_now_ms() < deadline)
    th_sleep_ms(50);
  assert_true(registry_fake_refused(fake) >= refused + 3);
  assert_int_equal(usage_quantity(run.port, "reg-d"), -1);
  assert_int_equal(th_metric_sum(run.port, "tally_dead_letters_total"), 2);
  registry_fake_down(fake, 0);
  assert_int_equal(th_wait_caught_up(run.port, broker.bootstrap, "tally.usage",
                                     PARTITIONS, 60000),
                   0);
  assert_int_equal(usage_quantity(run.port, "reg-d"), 8);
  assert_int_equal(
      th_metric_sum(run.port, "tally_schema_registry_waiting_partitions"), 0);
  assert_true(
      th_metric_sum(run.port, "tally_schema_registry_lookup_failures_total") >=
      3);

  /* Dead letters: the two refused records, each with its reason. */
  assert_int_equal(th_wait_outbox_empty(run.port, 30000), 0);
  seen_t dead = {0};
  assert_int_equal(th_read_topic(broker.bootstrap, "tally.usage.dlq", 1,
                                 visit_dead_letter, &dead),
                   2);
  assert_true(dead_letter_says(&dead, "not compatible", "quantity"));
  assert_true(dead_letter_says(&dead, "schema id 99",
                               "not found in the schema registry"));

  /* Alerts, framed with the registry's id for the alert schema. */
  seen_t alerts = {0};
  assert_true(th_read_topic(broker.bootstrap, "tally.alerts", 4, visit_alert,
                            &alerts) >= 2);
  assert_int_equal(alerts.framed_8, alerts.count);

  /* tally's registry API mirrors the ids it frames with. */
  long status = 0;
  char *body = NULL;
  assert_int_equal(th_http_get(run.port,
                               "/subjects/tally.alerts-value/"
                               "versions/latest",
                               &status, &body),
                   0);
  assert_int_equal(status, 200);
  json_t *latest = json_loads(body, 0, NULL);
  free(body);
  assert_int_equal(json_integer_value(json_object_get(latest, "id")), 8);
  json_decref(latest);
  assert_int_equal(th_http_get(run.port, "/schemas/ids/7", &status, &body), 0);
  assert_int_equal(status, 200);
  free(body);
  assert_int_equal(th_http_get(run.port, "/schemas/ids/1", &status, &body), 0);
  assert_int_equal(status, 404);
  free(body);

  rd_kafka_destroy(producer);
  free(evolved);
  free(evolved2);
  free(incompatible);
  assert_int_equal(th_stop(run.pid), 0);
  th_broker_stop(&broker);
  registry_fake_stop(fake);
  th_rmrf(dir);
  free(dir);
}

/* Startup stops, naming the flag, when the registry refuses the
 * credentials; and a password on the command line is refused. */
static void test_registry_startup_errors(void **state) {
  (void)state;
  registry_fake_t *fake = registry_fake_start(7, "tally", "right");
  assert_non_null(fake);
  char *dir = th_mkdtemp("registry-bad");
  char state_dir[600], out[600], err[600], url[128];
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  snprintf(out, sizeof(out), "%s/out", dir);
  snprintf(err, sizeof(err), "%s/err", dir);
  char *argv[] = {(char *)th_tally_bin(),
                  "run",
                  "--brokers",
                  "127.0.0.1:1",
                  "--state-dir",
                  state_dir,
                  "--no-auth",
                  "--schema-registry",
                  (char *)registry_fake_url(fake),
                  "--schema-registry-user",
                  "tally",
                  NULL};
  setenv("TALLY_SCHEMA_REGISTRY_PASSWORD", "wrong", 1);
  pid_t pid = th_spawn(argv, NULL, out, err);
  unsetenv("TALLY_SCHEMA_REGISTRY_PASSWORD");
  assert_int_equal(th_wait_exit(pid, 30000), 2);
  char *text = th_read_file(err);
  assert_non_null(strstr(text, "--schema-registry: registering "
                               "tally.usage-value"));
  assert_non_null(strstr(text, "HTTP 401"));
  free(text);

  snprintf(url, sizeof(url), "http://tally:right@127.0.0.1:%d",
           registry_fake_port(fake));
  argv[8] = url;
  argv[9] = NULL;
  pid = th_spawn(argv, NULL, out, err);
  assert_int_equal(th_wait_exit(pid, 30000), 2);
  text = th_read_file(err);
  assert_non_null(strstr(text, "credentials in the URL"));
  free(text);
  registry_fake_stop(fake);
  th_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_registry_end_to_end),
      cmocka_unit_test(test_registry_startup_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
