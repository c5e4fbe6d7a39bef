/*
 * test_crash_matrix.c - the billing fold under crashes, end to end.
 *
 * 200,000 events over 2,000 subjects, paced so the stream lasts through
 * every crash, with a plan whose limits and credits each subject crosses
 * at every threshold. The processor is SIGKILLed at least 20 times: by the
 * test at random moments, and by its own fault injection right after Kafka
 * acknowledged an alert and before the outbox delete (the window the
 * recovery reconciliation exists for). Afterwards, for every subject, usage
 * and credits equal a reference computed here from the test's own input,
 * and the alerts topic holds exactly the expected alerts, each once.
 */
#include "harness.h"

#include "tally_producer.h"
#include "tly_alert.h"

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define PARTITIONS 24
#define SUBJECTS 2000
#define EVENTS 200000
#define EVENTS_PER_SECOND 2000
#define MIN_KILLS 20
#define CYCLE_START 1793491200000LL /* 2026-11-01T00:00:00Z */
#define FIRST_EVENT 1794268800000LL /* 2026-11-10T00:00:00Z */
#define API_LIMIT 100
#define TOKEN_LIMIT 40000
#define CREDITS 150

static const int thresholds[] = {25, 50, 75, 90, 100};
#define THRESHOLDS 5

/* Prices chosen so the reference is plain integer arithmetic: an API call
 * costs 1,000 micros (1 credit); a token 1 micro in, 2 out (no margin). */
static const char *config_json =
    "{\"credits\": {\"micros_per_credit\": 1000},"
    " \"pricing\": {\"margin_bps\": 0, \"models\": {\"m\": "
    "   {\"input_per_mtok\": 1000000, \"output_per_mtok\": 2000000}}},"
    " \"thresholds\": [25, 50, 75, 90, 100],"
    " \"default_plans\": {\"user\": \"matrix\"},"
    " \"plans\": {\"matrix\": {\"credits\": 150,"
    "   \"limits\": {\"api_calls\": {\"limit\": 100, \"mode\": \"hard\"},"
    "              \"ai_tokens\": {\"limit\": 40000, \"mode\": \"soft\"}},"
    "   \"prices\": {\"api_calls\": {\"model\": \"graduated\", \"tiers\": "
    "     [{\"up_to\": null, \"unit_micros\": 1000}]}}}}}";

typedef struct {
  long long api_calls, tokens, input, output, cost_micros;
} expected_t;

static expected_t expected[SUBJECTS];
static atomic_int producer_done;
static char producer_error[1024];
static const char *bootstrap;

static void *produce_stream(void *arg) {
  tally_producer_conf_t conf = {.brokers = bootstrap};
  char errstr[512], id[32], event_id[32];
  unsigned seed = 11;
  (void)arg;
  tally_producer_t *producer = tally_producer_new(&conf, errstr, sizeof(errstr));
  if (!producer) {
    snprintf(producer_error, sizeof(producer_error), "producer: %s", errstr);
    atomic_store(&producer_done, 1);
    return NULL;
  }
  int64_t started = th_now_ms();
  for (int i = 0; i < EVENTS; i++) {
    int s = rand_r(&seed) % SUBJECTS;
    tly_event_t event = {0};
    snprintf(id, sizeof(id), "m%04d", s);
    snprintf(event_id, sizeof(event_id), "x-%d", i);
    event.event_id = event_id;
    event.occurred_at_ms = FIRST_EVENT + i;
    event.subject_kind = TLY_SUBJECT_USER;
    event.subject_id = id;
    event.body_kind = TLY_BODY_USAGE_RECORDED;
    if (rand_r(&seed) % 2) {
      event.body.usage.feature = "api_calls";
      event.body.usage.quantity = 1 + rand_r(&seed) % 3;
      expected[s].api_calls += event.body.usage.quantity;
      expected[s].cost_micros += 1000 * event.body.usage.quantity;
    } else {
      int64_t in = 100 + rand_r(&seed) % 600, out = rand_r(&seed) % 400;
      event.body.usage.feature = "ai_tokens";
      event.body.usage.has_ai = 1;
      event.body.usage.ai = (tly_ai_usage_t){"p", "m", in, out};
      event.body.usage.quantity = in + out;
      expected[s].tokens += in + out;
      expected[s].input += in;
      expected[s].output += out;
      expected[s].cost_micros += in + 2 * out;
    }
    if (tally_producer_send(producer, &event, NULL, errstr, sizeof(errstr))) {
      snprintf(producer_error, sizeof(producer_error), "send %d: %s", i, errstr);
      break;
    }
    int64_t due = started + (int64_t)i * 1000 / EVENTS_PER_SECOND;
    int64_t wait = due - th_now_ms();
    tally_producer_poll(producer, wait > 0 ? (int)wait : 0);
  }
  tally_producer_stats_t stats;
  if (tally_producer_flush(producer, 60000))
    snprintf(producer_error, sizeof(producer_error), "flush timed out");
  tally_producer_stats(producer, &stats);
  if (stats.failed || stats.delivered != EVENTS)
    snprintf(producer_error, sizeof(producer_error),
             "%llu delivered, %llu failed of %d",
             (unsigned long long)stats.delivered,
             (unsigned long long)stats.failed, EVENTS);
  tally_producer_destroy(producer);
  atomic_store(&producer_done, 1);
  return NULL;
}

/* The alert ids the reference expects, as keys of a JSON object. */
static void expect_threshold_alerts(json_t *ids, int s, const char *feature,
                                    long long used, long long limit) {
  for (int t = 0; t < THRESHOLDS; t++) {
    if (used * 100 < limit * thresholds[t])
      continue;
    char alert_id[256];
    snprintf(alert_id, sizeof(alert_id), "%s:user:m%04d:%lld:%s:%d",
             thresholds[t] >= 100 ? "limit_exceeded" : "limit_warning", s,
             CYCLE_START, feature, thresholds[t]);
    json_object_set_new(ids, alert_id, json_integer(0));
  }
}

/* Reads the whole alerts topic; counts each id in ids (unknown ids fail). */
static int read_alerts(const char *servers, json_t *ids) {
  char errstr[512];
  int total = 0;
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", servers, errstr, sizeof(errstr));
  rd_kafka_conf_set(conf, "group.id", "matrix-reader", errstr, sizeof(errstr));
  rd_kafka_conf_set(conf, "enable.partition.eof", "true", errstr, sizeof(errstr));
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
  assert_non_null(rk);
  rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(4);
  for (int p = 0; p < 4; p++)
    rd_kafka_topic_partition_list_add(parts, "tally.alerts", p)->offset =
        RD_KAFKA_OFFSET_BEGINNING;
  assert_int_equal(rd_kafka_assign(rk, parts), 0);
  rd_kafka_topic_partition_list_destroy(parts);
  tly_alert_codec_t *codec = tly_alert_codec_new(errstr, sizeof(errstr));
  assert_non_null(codec);
  int eofs = 0;
  int64_t deadline = th_now_ms() + 60000;
  while (eofs < 4 && th_now_ms() < deadline) {
    rd_kafka_message_t *msg = rd_kafka_consumer_poll(rk, 200);
    if (!msg)
      continue;
    if (msg->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      eofs++;
    } else if (!msg->err) {
      tly_alert_t alert = {0};
      if (tly_alert_decode(codec, msg->payload, msg->len, &alert, errstr,
                           sizeof(errstr)))
        fail_msg("undecodable alert: %s", errstr);
      json_t *count = json_object_get(ids, alert.alert_id);
      if (!count)
        fail_msg("unexpected alert %s", alert.alert_id);
      json_integer_set(count, json_integer_value(count) + 1);
      total++;
      tly_alert_clear(&alert);
    }
    rd_kafka_message_destroy(msg);
  }
  assert_int_equal(eofs, 4);
  tly_alert_codec_destroy(codec);
  rd_kafka_consumer_close(rk);
  rd_kafka_destroy(rk);
  return total;
}

static void test_crash_matrix(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  pthread_t producer;
  char *dir = th_mkdtemp("matrix");
  char state_dir[600], config_path[600], env[64];
  const char *extra[] = {"--config", config_path, NULL};
  unsigned seed = (unsigned)th_now_ms();
  int kills = 0, self_kills = 0;

  printf("# crash matrix seed %u\n", seed);
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  snprintf(config_path, sizeof(config_path), "%s/config.json", dir);
  FILE *file = fopen(config_path, "w");
  fputs(config_json, file);
  fclose(file);

  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);
  bootstrap = broker.bootstrap;
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, extra), 0);
  assert_int_equal(pthread_create(&producer, NULL, produce_stream, NULL), 0);

  while (kills < MIN_KILLS || !atomic_load(&producer_done)) {
    int64_t deadline = th_now_ms() + 60000;
    int rc = -1;
    while (rc < 0 && th_metric_sum(run.port, "tally_events_folded_total") <= 0 &&
           th_now_ms() < deadline)
      rc = th_wait_exit(run.pid, 20);
    /* Every third run dies by its own hand after a few alert acks, between
     * Kafka's acknowledgement and the outbox delete; the others are killed
     * from outside at a random moment. */
    if (rc < 0)
      rc = th_wait_exit(run.pid,
                        kills % 3 == 2 ? 4000 : (int)(rand_r(&seed) % 1200));
    if (rc == 128 + 9) {
      self_kills++;
    } else {
      assert_int_equal(rc, -1); /* still running: it must not exit alone */
      th_kill9(run.pid);
    }
    kills++;
    if (kills % 3 == 2) {
      snprintf(env, sizeof(env), "TALLY_FAULT_KILL_AFTER_ACKS=%u",
               1 + rand_r(&seed) % 5);
      th_run_env = env;
    }
    assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, extra), 0);
  }
  pthread_join(producer, NULL);
  if (producer_error[0])
    fail_msg("%s", producer_error);
  printf("# %d kills, %d of them right after an outbox ack\n", kills, self_kills);
  assert_true(self_kills >= 1);

  assert_int_equal(th_wait_caught_up(run.port, broker.bootstrap, "tally.usage",
                                     PARTITIONS, 240000),
                   0);
  int64_t deadline = th_now_ms() + 30000;
  while (th_metric_sum(run.port, "tally_outbox_entries") != 0 &&
         th_now_ms() < deadline)
    th_sleep_ms(100);
  assert_int_equal(th_metric_sum(run.port, "tally_outbox_entries"), 0);

  json_t *ids = json_object();
  int expected_alerts = 0;
  for (int s = 0; s < SUBJECTS; s++) {
    char path[128], *body;
    long status;
    expected_t *e = &expected[s];
    snprintf(path, sizeof(path), "/v1/subjects/user:m%04d/usage", s);
    assert_int_equal(th_http_get(run.port, path, &status, &body), 0);
    assert_int_equal(status, 200);
    json_t *json = json_loads(body, 0, NULL);
    free(body);
    json_t *features = json_object_get(json, "features");
    json_t *api = json_object_get(features, "api_calls");
    json_t *ai = json_object_get(features, "ai_tokens");
    assert_int_equal(json_integer_value(json_object_get(api, "quantity")),
                     e->api_calls);
    assert_int_equal(json_integer_value(json_object_get(ai, "quantity")), e->tokens);
    assert_int_equal(json_integer_value(json_object_get(ai, "input_tokens")),
                     e->input);
    assert_int_equal(json_integer_value(json_object_get(ai, "output_tokens")),
                     e->output);
    assert_int_equal(json_integer_value(json_object_get(json, "cost_micros")),
                     e->cost_micros);
    assert_int_equal(json_integer_value(json_object_get(
                         json_object_get(json, "credits"), "used")),
                     e->cost_micros / 1000);
    json_decref(json);
    size_t before = json_object_size(ids);
    expect_threshold_alerts(ids, s, "api_calls", e->api_calls, API_LIMIT);
    expect_threshold_alerts(ids, s, "ai_tokens", e->tokens, TOKEN_LIMIT);
    expect_threshold_alerts(ids, s, "credits", e->cost_micros / 1000, CREDITS);
    expected_alerts += (int)(json_object_size(ids) - before);
  }
  printf("# %d alerts expected\n", expected_alerts);
  assert_true(expected_alerts > SUBJECTS * 5); /* the matrix crosses a lot */

  assert_int_equal(read_alerts(broker.bootstrap, ids), expected_alerts);
  const char *id;
  json_t *count;
  json_object_foreach(ids, id, count) {
    if (json_integer_value(count) != 1)
      fail_msg("alert %s seen %lld times", id, (long long)json_integer_value(count));
  }
  json_decref(ids);

  assert_int_equal(th_stop(run.pid), 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_crash_matrix),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
