/*
 * test_event_time.c - event time is bounded (tly_event_time.h), against the
 * real `tally` binary and its embedded broker.
 *
 * Through Kafka: an event dated 2126 and a future-dated event of quantity 0
 * are dead-lettered with their reason, so the real-time events after them
 * on the same partition are all counted (the 2126 one used to move the
 * partition's watermark and send them all to the dead-letter topic) and a
 * subject at its hard limit stays there (the quantity-0 one used to roll
 * its cycle over into the future: used 10 -> 0, allowed). Records dated
 * INT64_MIN and INT64_MAX are dead-lettered and the processor goes on and
 * stops promptly on SIGTERM, before and after a restart (they used to spin
 * the fold forever: every partition stopped, SIGTERM ignored).
 *
 * Over HTTP: POST /v1/events with occurred_at INT64_MAX or an hour ahead is
 * 400 naming occurred_at; ?at=9223372036854775807 on /quota and /usage is a
 * quick 400 naming at (it used to pin an HTTP thread at 100 % for good) and
 * /healthz keeps answering.
 *
 * Every record is on one partition: they share its watermark.
 */
#include "harness.h"

#include "tly_codec.h"
#include "tly_event.h"
#include "tly_keys.h"
#include "tly_log.h"

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#define DAY 86400000LL
#define SUBJECTS 20
#define EVENTS_EACH 5
#define LIMIT 10              /* the hard api_calls limit of the test's plan */
#define Y2126 4951152000000LL /* 2126-11-24T00:00:00Z */

static const char *config_json =
    "{\"default_plans\": {\"user\": \"t\", \"api_key\": \"t\"},"
    " \"plans\": {\"t\": {\"credits\": -1,"
    "   \"limits\": {\"api_calls\": {\"limit\": 10, \"mode\": \"hard\"}}}}}";

/* A record the test produced: where it landed. */
typedef struct {
  const char *name;
  int64_t offset;
  const char *reason_part; /* what its dead letter's tally.error says */
  int dead_lettered;
} produced_t;

static void delivered(rd_kafka_t *rk, const rd_kafka_message_t *msg,
                      void *opaque) {
  produced_t *record = msg->_private;
  (void)rk, (void)opaque;
  if (record && !msg->err)
    record->offset = msg->offset;
}

typedef struct {
  rd_kafka_t *rk;
  tly_codec_t *codec;
} producer_t;

static void producer_open(producer_t *producer, const char *bootstrap) {
  char errstr[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, errstr,
                    sizeof(errstr));
  /* In order, each record once: the test reasons about log order. */
  rd_kafka_conf_set(conf, "enable.idempotence", "true", errstr, sizeof(errstr));
  rd_kafka_conf_set_dr_msg_cb(conf, delivered);
  producer->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  assert_non_null(producer->rk);
  producer->codec =
      tly_codec_new(TLY_CODEC_DEFAULT_SCHEMA_ID, errstr, sizeof(errstr));
  assert_non_null(producer->codec);
}

static void producer_close(producer_t *producer) {
  assert_int_equal(rd_kafka_flush(producer->rk, 30000), 0);
  rd_kafka_destroy(producer->rk);
  tly_codec_destroy(producer->codec);
}

/* A usage event of user:subject at occurred_at, produced as any Kafka
 * client would: keyed by subject, the Kafka timestamp librdkafka's (now). */
static void produce_usage(producer_t *producer, const char *event_id,
                          const char *subject, int64_t occurred_at,
                          int64_t quantity, produced_t *record) {
  char errstr[512], key[128];
  tly_event_t event = {0};
  event.event_id = (char *)event_id;
  event.occurred_at_ms = occurred_at;
  event.subject_kind = TLY_SUBJECT_USER;
  event.subject_id = (char *)subject;
  event.body_kind = TLY_BODY_USAGE_RECORDED;
  event.body.usage.feature = "api_calls";
  event.body.usage.unit = "call";
  event.body.usage.quantity = quantity;
  const void *value;
  size_t value_len;
  if (tly_codec_encode(producer->codec, &event, &value, &value_len, errstr,
                       sizeof(errstr)))
    fail_msg("encoding %s: %s", event_id, errstr);
  size_t key_len = tly_subject_key(TLY_SUBJECT_USER, subject, key, sizeof(key));
  assert_int_equal(rd_kafka_producev(producer->rk,
                                     RD_KAFKA_V_TOPIC("tally.usage"),
                                     RD_KAFKA_V_KEY(key, key_len),
                                     RD_KAFKA_V_VALUE((void *)value, value_len),
                                     RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                     RD_KAFKA_V_OPAQUE(record), RD_KAFKA_V_END),
                   0);
}

/* Real-time events of SUBJECTS other subjects, added to per_subject. */
static void produce_real_time(producer_t *producer, const char *round,
                              int64_t at, long long *per_subject) {
  char subject[32], event_id[64];
  for (int i = 0; i < SUBJECTS * EVENTS_EACH; i++) {
    int s = i % SUBJECTS;
    long long quantity = 1 + i % 3;
    snprintf(subject, sizeof(subject), "now-%02d", s);
    snprintf(event_id, sizeof(event_id), "%s-%d", round, i);
    produce_usage(producer, event_id, subject, at + i, quantity, NULL);
    per_subject[s] += quantity;
  }
}

static json_t *get_json(int port, const char *path, long expect_status) {
  long status = 0;
  char *body = NULL;
  if (th_http_get(port, path, &status, &body))
    fail_msg("GET %s: no answer", path);
  if (status != expect_status)
    fail_msg("GET %s: %ld, expected %ld: %s", path, status, expect_status,
             body);
  json_t *json = json_loads(body, 0, NULL);
  free(body);
  assert_non_null(json);
  return json;
}

/* Each subject's api_calls quantity over HTTP, at `at` (so a month ending
 * while the test runs changes nothing). */
static void assert_counted(int port, const long long *per_subject, int64_t at) {
  for (int s = 0; s < SUBJECTS; s++) {
    char path[128];
    snprintf(path, sizeof(path), "/v1/subjects/user:now-%02d/usage?at=%lld", s,
             (long long)at);
    json_t *json = get_json(port, path, 200);
    json_t *row =
        json_object_get(json_object_get(json, "features"), "api_calls");
    long long quantity = json_integer_value(json_object_get(row, "quantity"));
    if (quantity != per_subject[s])
      fail_msg("user:now-%02d: %lld counted, %lld produced", s, quantity,
               per_subject[s]);
    json_decref(json);
  }
}

typedef struct {
  produced_t *records;
  size_t count;
  int unmatched;
} dead_letters_t;

static void visit_dead_letter(void *opaque, const rd_kafka_message_t *msg) {
  dead_letters_t *letters = opaque;
  char reason[1024], offset[32];
  assert_non_null(th_header(msg, "tally.error", reason, sizeof(reason)));
  assert_non_null(
      th_header(msg, "tally.source.offset", offset, sizeof(offset)));
  for (size_t i = 0; i < letters->count; i++) {
    produced_t *record = &letters->records[i];
    if (record->offset != atoll(offset))
      continue;
    printf("# dead letter '%s': %s\n", record->name, reason);
    if (!strstr(reason, record->reason_part))
      fail_msg("dead letter '%s': reason '%s' lacks '%s'", record->name, reason,
               record->reason_part);
    record->dead_lettered++;
    return;
  }
  printf("# unexpected dead letter @%s: %s\n", offset, reason);
  letters->unmatched++;
}

static void assert_dead_lettered(const char *bootstrap, produced_t *records,
                                 size_t count) {
  dead_letters_t letters = {records, count, 0};
  assert_true(th_read_topic(bootstrap, "tally.usage.dlq", 1, visit_dead_letter,
                            &letters) >= 0);
  assert_int_equal(letters.unmatched, 0);
  for (size_t i = 0; i < count; i++)
    if (records[i].dead_lettered != 1)
      fail_msg("'%s' dead-lettered %d times", records[i].name,
               records[i].dead_lettered);
}

static char *write_config(const char *dir) {
  char path[700];
  snprintf(path, sizeof(path), "%s/tally.json", dir);
  FILE *file = fopen(path, "w");
  assert_non_null(file);
  fputs(config_json, file);
  fclose(file);
  return strdup(path);
}

/* The HTTP side: bounded times are 400s naming their field, answered at
 * once, and the port stays healthy. */
static void check_http_bounds(int port, int64_t now) {
  static const char *const paths[] = {
      "/v1/subjects/user:quota/quota?feature=api_calls&at=9223372036854775807",
      "/v1/subjects/user:quota/usage?at=9223372036854775807",
      "/v1/subjects/user:quota/quota?feature=api_calls&at=253402300800000",
  };
  for (int round = 0; round < 2; round++) {
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
      int64_t started = th_now_ms();
      json_t *json = get_json(port, paths[i], 400);
      /* It used to be no answer at all (the harness gives up after 20 s). */
      assert_true(th_now_ms() - started < 5000);
      json_t *error = json_object_get(json, "error");
      assert_string_equal(json_string_value(json_object_get(error, "field")),
                          "at");
      json_decref(json);
    }
    json_decref(get_json(port, "/healthz", 200));
  }

  char body[512];
  const int64_t times[] = {INT64_MAX, now + 3600 * 1000};
  for (size_t i = 0; i < 2; i++) {
    long status = 0;
    char *response = NULL;
    snprintf(body, sizeof(body),
             "{\"event_id\": \"http-%zu\", \"subject\": \"user:http\", "
             "\"feature\": \"api_calls\", \"quantity\": 1, \"occurred_at\": "
             "%lld}",
             i, (long long)times[i]);
    assert_int_equal(th_http_request(port, "POST", "/v1/events",
                                     TH_AUTH_DEFAULT, body, strlen(body), NULL,
                                     &status, &response),
                     0);
    if (status != 400)
      fail_msg("POST occurred_at %lld: %ld %s", (long long)times[i], status,
               response);
    json_t *json = json_loads(response, 0, NULL);
    json_t *error = json_object_get(json, "error");
    assert_string_equal(json_string_value(json_object_get(error, "field")),
                        "occurred_at");
    json_decref(json);
    free(response);
  }
  json_decref(get_json(port, "/healthz", 200));
}

static void test_future_events_are_dead_lettered(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  char *dir = th_mkdtemp("event-time");
  char state_dir[600], path[256];
  long long per_subject[SUBJECTS] = {0};
  char *config_path = write_config(dir);
  const char *extra[] = {"--config", config_path, NULL};
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  /* One partition: every record below shares the partition (and its
   * watermark) with every other. */
  assert_int_equal(th_broker_start(&broker, 1), 0);

  int64_t now = tly_wall_ms();
  produced_t future[] = {
      {"quantity 0, 40 days ahead", -1, "after the record's Kafka timestamp",
       0},
      {"dated 2126", -1, "after the record's Kafka timestamp", 0},
  };
  producer_t producer;
  producer_open(&producer, broker.bootstrap);
  /* user:quota uses its whole hard limit... */
  for (int i = 0; i < LIMIT; i++) {
    char event_id[32];
    snprintf(event_id, sizeof(event_id), "quota-%d", i);
    produce_usage(&producer, event_id, "quota", now, 1, NULL);
  }
  /* ...then an event of quantity 0 dated next month (it rolled the cycle
   * over, a fresh quota), one dated 2126, and the present again. */
  produce_usage(&producer, "quota-future", "quota", now + 40 * DAY, 0,
                &future[0]);
  produce_usage(&producer, "far-future", "future", Y2126, 1, &future[1]);
  produce_real_time(&producer, "a", now, per_subject);
  producer_close(&producer);

  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, extra), 0);
  assert_int_equal(
      th_wait_caught_up(run.port, broker.bootstrap, "tally.usage", 1, 30000),
      0);
  assert_int_equal(th_metric_sum(run.port, "tally_events_folded_total"),
                   LIMIT + SUBJECTS * EVENTS_EACH);
  assert_int_equal(th_metric_sum(run.port, "tally_dead_letters_total"), 2);
  assert_counted(run.port, per_subject, now);

  /* The hard limit still holds: no cycle moved. */
  snprintf(path, sizeof(path),
           "/v1/subjects/user:quota/quota?feature=api_calls&quantity=1&at=%lld",
           (long long)now);
  json_t *quota = get_json(run.port, path, 200);
  assert_int_equal(json_integer_value(json_object_get(quota, "used")), LIMIT);
  assert_true(json_is_false(json_object_get(quota, "allowed")));
  json_decref(quota);
  /* Nothing of the 2126 event was folded. */
  json_decref(get_json(run.port, "/v1/subjects/user:future/usage", 404));

  assert_int_equal(th_wait_outbox_empty(run.port, 30000), 0);
  assert_dead_lettered(broker.bootstrap, future, 2);

  /* More real-time events (dated as the first ones, so that a month ending
   * while the test runs cannot split them): the partition's watermark did
   * not move ahead. */
  producer_open(&producer, broker.bootstrap);
  produce_real_time(&producer, "b", now, per_subject);
  producer_close(&producer);
  assert_int_equal(
      th_wait_caught_up(run.port, broker.bootstrap, "tally.usage", 1, 30000),
      0);
  assert_int_equal(th_metric_sum(run.port, "tally_events_folded_total"),
                   LIMIT + 2 * SUBJECTS * EVENTS_EACH);
  assert_int_equal(th_metric_sum(run.port, "tally_dead_letters_total"), 2);
  assert_counted(run.port, per_subject, now);

  check_http_bounds(run.port, tly_wall_ms());

  assert_int_equal(th_stop(run.pid), 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(config_path);
  free(dir);
}

/* SIGTERM, then the exit within timeout_ms; -1 if it did not exit. */
static int term_and_wait(pid_t pid, int timeout_ms) {
  kill(pid, SIGTERM);
  int rc = th_wait_exit(pid, timeout_ms);
  if (rc == -1)
    th_kill9(pid);
  return rc;
}

static void test_extreme_times_do_not_stop_the_processor(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  char *dir = th_mkdtemp("event-time-extremes");
  char state_dir[600];
  long long per_subject[SUBJECTS] = {0};
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  assert_int_equal(th_broker_start(&broker, 1), 0);

  int64_t now = tly_wall_ms();
  produced_t extremes[] = {
      {"INT64_MIN", -1, "outside the range of event times", 0},
      {"INT64_MAX", -1, "outside the range of event times", 0},
      {"-1", -1, "outside the range of event times", 0},
  };
  producer_t producer;
  producer_open(&producer, broker.bootstrap);
  produce_usage(&producer, "min", "min", INT64_MIN, 1, &extremes[0]);
  produce_real_time(&producer, "a", now, per_subject);
  produce_usage(&producer, "max", "max", INT64_MAX, 1, &extremes[1]);
  produce_usage(&producer, "minus-one", "minus", -1, 1, &extremes[2]);
  produce_real_time(&producer, "b", now, per_subject);
  producer_close(&producer);

  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, NULL), 0);
  assert_int_equal(
      th_wait_caught_up(run.port, broker.bootstrap, "tally.usage", 1, 30000),
      0);
  assert_int_equal(th_metric_sum(run.port, "tally_events_folded_total"),
                   2 * SUBJECTS * EVENTS_EACH);
  assert_int_equal(th_metric_sum(run.port, "tally_dead_letters_total"), 3);
  assert_counted(run.port, per_subject, now);
  json_decref(get_json(run.port, "/v1/subjects/user:max/usage", 404));
  json_decref(get_json(run.port, "/v1/subjects/user:min/usage", 404));
  assert_int_equal(th_wait_outbox_empty(run.port, 30000), 0);
  assert_dead_lettered(broker.bootstrap, extremes, 3);
  int64_t asked = th_now_ms();
  assert_int_equal(term_and_wait(run.pid, 10000), 0);
  printf("# exited %lld ms after SIGTERM\n", (long long)(th_now_ms() - asked));

  /* Restarted on its state: nothing to fold again, nothing to hang on. */
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, NULL), 0);
  assert_int_equal(
      th_wait_caught_up(run.port, broker.bootstrap, "tally.usage", 1, 30000),
      0);
  json_decref(get_json(run.port, "/healthz", 200));
  assert_counted(run.port, per_subject, now);
  assert_int_equal(term_and_wait(run.pid, 10000), 0);

  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_future_events_are_dead_lettered),
      cmocka_unit_test(test_extreme_times_do_not_stop_the_processor),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
