/*
 * test_stripe_report.c - usage reporting to Stripe over real sockets: the
 * embedded broker, a real `tally run` reporting two meters, and
 * tests/stripe_fake standing in for Stripe's API.
 *
 * In order (they share one broker, one fake and one tally):
 *   - a window older than Stripe's 35 days is never sent: a dead letter and
 *     a stripe_report_failed alert instead, counted failed (first, while the
 *     partitions' event time is still 40 days back, so the fold takes it);
 *   - the happy path: usage over 3 hours is one meter event per window and
 *     the ledger equals the folded totals; a late event is a further delta
 *     with an identifier of its own;
 *   - an unknown customer: a dead letter with Stripe's error and an alert,
 *     while another subject is reported;
 *   - faults: 429 with Retry-After, 500, a hang beyond the client's time
 *     limit, a dropped connection after Stripe applied the event (the
 *     resend is replayed), and an identifier Stripe already has (taken as
 *     reported): the totals stay exact;
 *   - no false failures: a 500 Stripe kept for the Idempotency-Key
 *     (replayed with Stripe-Should-Retry: false) and a 409
 *     idempotency_key_in_use while the first request still runs, each
 *     after Stripe applied the event: resent under a fresh key with the
 *     same identifier, the ledger equals the folded usage, no dead letter,
 *     no stripe_report_failed alert.
 * With the state changelog off (--changelog-topic ""), as one instance may
 * run.
 */
#include "harness.h"
#include "reference.h"
#include "stripe_fake.h"

#include "tally_producer.h"
#include "tly_billing.h"
#include "tly_stripe_emitter.h"

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#define PARTITIONS 2
#define DAY_MS 86400000LL

static th_broker_t broker;
static th_run_t run;
static th_stripe_fake_t fake;
static tally_producer_t *producer;
static char *dir;
static int64_t hour_ms; /* the start of the current hour at setup */

static int setup(void **state) {
  (void)state;
  char state_dir[600], errstr[256];
  int64_t now = (int64_t)time(NULL) * 1000;
  hour_ms = now - now % TLY_HOUR_MS;
  dir = th_mkdtemp("stripe-report");
  if (!dir || th_broker_start(&broker, PARTITIONS) ||
      th_stripe_fake_start(&fake))
    return -1;
  char *config = th_stripe_report_config(dir, &fake, 100, 1000, 1);
  if (!config)
    return -1;
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  th_run_env = th_stripe_fake_key_env(&fake);
  /* The state changelog off: one instance reports from its own marks and
   * cursors (test_stripe_crash and test_stripe_scale run with it). */
  const char *const extra[] = {"--config", config, "--changelog-topic", "",
                               NULL};
  int rc = th_run_start(&run, broker.bootstrap, state_dir, extra);
  free(config);
  tally_producer_conf_t pconf = {.brokers = broker.bootstrap};
  producer = tally_producer_new(&pconf, errstr, sizeof(errstr));
  return rc || !producer ? -1 : 0;
}

static int teardown(void **state) {
  (void)state;
  tally_producer_destroy(producer);
  return th_stripe_teardown(run.pid, &broker, &fake, dir);
}

static void flush(void) {
  assert_int_equal(tally_producer_flush(producer, 10000), 0);
}

/* The value of one sample of /metrics ("name{labels}" as printed); -1. */
static long long metric(const char *sample) {
  long status;
  char *body = NULL;
  long long value = -1;
  if (th_http_get(run.port, "/metrics", &status, &body) == 0 && body) {
    size_t len = strlen(sample);
    for (char *line = body; line && *line; line = strchr(line, '\n')) {
      line += *line == '\n';
      if (strncmp(line, sample, len) == 0 && line[len] == ' ')
        value = atoll(line + len + 1);
    }
  }
  free(body);
  return value;
}

static void wait_metric_at_least(const char *sample, long long want) {
  int64_t deadline = th_now_ms() + 20000;
  while (metric(sample) < want && th_now_ms() < deadline)
    th_sleep_ms(50);
  assert_true(metric(sample) >= want);
}

/* Waits until the ledger of (customer, meter) holds want. */
static void wait_ledger(const char *customer, const char *meter,
                        long long want) {
  int64_t deadline = th_now_ms() + 30000;
  long long sum = -1;
  while (th_now_ms() < deadline &&
         (sum = th_stripe_fake_sum(&fake, customer, meter)) != want)
    th_sleep_ms(50);
  if (sum != want)
    fail_msg("%s %s: ledger %lld, want %lld", customer, meter, sum, want);
}

/* The folded usage of a feature of user:id over the last days. */
static long long folded(const char *id, const char *feature) {
  return th_folded_quantity(run.port, id, feature, hour_ms - 2 * DAY_MS,
                            hour_ms + DAY_MS);
}

/* The emitter's dead letters of one subject (key "kind:id"): how many,
 * and the headers of the last. */
typedef struct {
  const char *key;
  int count;
  char error[600];
  char output_id[128];
  char status[16];
} found_t;

static void visit_dead_letter(void *opaque, const rd_kafka_message_t *msg) {
  found_t *found = opaque;
  char source[64];
  if (msg->key_len != strlen(found->key) ||
      memcmp(msg->key, found->key, msg->key_len) != 0 ||
      !th_header(msg, "tally.source", source, sizeof(source)) ||
      strcmp(source, "stripe.meter_events") != 0)
    return;
  found->count++;
  th_header(msg, "tally.error", found->error, sizeof(found->error));
  th_header(msg, "tally.output.id", found->output_id, sizeof(found->output_id));
  th_header(msg, "tally.stripe.status", found->status, sizeof(found->status));
  json_t *value = json_loadb(msg->payload, msg->len, 0, NULL);
  assert_non_null(value);
  assert_string_equal(json_string_value(json_object_get(value, "subject")),
                      found->key);
  json_decref(value);
}

static found_t read_dead_letters(const char *key) {
  found_t found = {.key = key};
  assert_true(th_read_topic(broker.bootstrap, "tally.usage.dlq", 1,
                            visit_dead_letter, &found) >= 0);
  return found;
}

typedef struct {
  const char *subject_id;
  int count;
  long long used;
  char detail[600];
} alert_seen_t;

static void visit_alert(void *opaque, const tly_alert_t *alert) {
  alert_seen_t *seen = opaque;
  if (alert->type != TLY_ALERT_STRIPE_REPORT_FAILED ||
      strcmp(alert->subject_id, seen->subject_id) != 0)
    return;
  seen->count++;
  seen->used = alert->used;
  snprintf(seen->detail, sizeof(seen->detail), "%s", alert->detail);
}

/* The subject's stripe_report_failed alerts: on the alerts topic, and in
 * its alert history (GET .../alerts). */
static alert_seen_t read_alerts(const char *subject_id) {
  alert_seen_t seen = {.subject_id = subject_id};
  th_read_alerts(broker.bootstrap, visit_alert, &seen);
  char path[256], *body = NULL;
  long status;
  snprintf(path, sizeof(path), "/v1/subjects/user:%s/alerts", subject_id);
  assert_int_equal(th_http_get(run.port, path, &status, &body), 0);
  assert_int_equal(status, 200);
  assert_non_null(strstr(body, "\"stripe_report_failed\""));
  free(body);
  return seen;
}

/* ---- a window beyond Stripe's 35 days ---------------------------------- */

static void test_window_too_old_is_an_alert(void **state) {
  (void)state;
  int64_t old = hour_ms - 40 * DAY_MS + 60000;
  assert_int_equal(th_stripe_fake_add_customer(&fake, "cus_old"), 0);
  assert_int_equal(th_send_link(producer, "old-link", old, "old", "cus_old"),
                   0);
  assert_int_equal(
      th_send_usage(producer, "old-1", old + 1000, "old", "api_calls", 3), 0);
  flush();
  wait_metric_at_least("tally_stripe_reports_total{result=\"failed\"}", 1);
  found_t dead = read_dead_letters("user:old");
  assert_int_equal(dead.count, 1);
  assert_non_null(strstr(dead.error, "35 days"));
  assert_string_equal(dead.status, "0");
  assert_memory_equal(dead.output_id, "stripe:tly_", 11);
  alert_seen_t alerts = read_alerts("old");
  assert_int_equal(alerts.count, 1);
  assert_int_equal(alerts.used, 3);
  assert_non_null(strstr(alerts.detail, "35 days"));
  assert_int_equal(th_stripe_fake_count(&fake, "cus_old", "api_requests"), 0);
}

/* ---- the happy path ------------------------------------------------------ */

static void test_usage_over_three_hours_then_late(void **state) {
  (void)state;
  assert_int_equal(th_stripe_fake_add_customer(&fake, "cus_happy"), 0);
  assert_int_equal(th_send_link(producer, "happy-link",
                                hour_ms - 3 * TLY_HOUR_MS, "happy",
                                "cus_happy"),
                   0);
  /* One event per hour: one meter event per window. */
  assert_int_equal(th_send_usage(producer, "happy-1", hour_ms - 2 * TLY_HOUR_MS,
                                 "happy", "api_calls", 5),
                   0);
  assert_int_equal(th_send_usage(producer, "happy-2",
                                 hour_ms - TLY_HOUR_MS + 5000, "happy",
                                 "api_calls", 11),
                   0);
  assert_int_equal(th_send_usage(producer, "happy-3", hour_ms + 1000, "happy",
                                 "api_calls", 13),
                   0);
  assert_int_equal(th_send_usage(producer, "happy-4", hour_ms + 2000, "happy",
                                 "storage_bytes", 4096),
                   0);
  flush();
  wait_ledger("cus_happy", "api_requests", 29);
  wait_ledger("cus_happy", "storage", 4096);
  assert_int_equal(folded("happy", "api_calls"), 29);
  assert_int_equal(th_stripe_fake_count(&fake, "cus_happy", "api_requests"), 3);
  json_t *last = th_stripe_fake_last_request(&fake);
  assert_non_null(last);
  json_t *params = json_object_get(last, "params");
  const char *identifier =
      json_string_value(json_object_get(params, "identifier"));
  assert_non_null(identifier);
  assert_memory_equal(identifier, "tly_", 4);
  assert_string_equal(
      json_string_value(json_object_get(last, "idempotency_key")), identifier);
  json_decref(last);

  /* A late event for the first hour: a further delta, a new identifier. */
  assert_int_equal(th_send_usage(producer, "happy-late",
                                 hour_ms - 2 * TLY_HOUR_MS + 60000, "happy",
                                 "api_calls", 7),
                   0);
  flush();
  wait_ledger("cus_happy", "api_requests", 36);
  assert_int_equal(folded("happy", "api_calls"), 36);
  assert_int_equal(th_stripe_fake_count(&fake, "cus_happy", "api_requests"), 4);
  /* Settled: nothing more goes out, and nothing waits. */
  th_sleep_ms(1000);
  assert_int_equal(th_stripe_fake_sum(&fake, "cus_happy", "api_requests"), 36);
  assert_int_equal(metric("tally_stripe_oldest_unreported_seconds"), 0);
  assert_true(metric("tally_stripe_reports_total{result=\"sent\"}") >= 5);
}

/* ---- a customer Stripe does not know ------------------------------------ */

static void test_unknown_customer_is_a_dead_letter(void **state) {
  (void)state;
  long long failed_before =
      metric("tally_stripe_reports_total{result=\"failed\"}");
  assert_int_equal(th_stripe_fake_add_customer(&fake, "cus_fine"), 0);
  assert_int_equal(th_send_link(producer, "ghost-link", hour_ms - TLY_HOUR_MS,
                                "ghost", "cus_ghost"),
                   0);
  assert_int_equal(th_send_link(producer, "fine-link", hour_ms - TLY_HOUR_MS,
                                "fine", "cus_fine"),
                   0);
  assert_int_equal(th_send_usage(producer, "ghost-1", hour_ms - 60000, "ghost",
                                 "api_calls", 6),
                   0);
  assert_int_equal(th_send_usage(producer, "fine-1", hour_ms - 60000, "fine",
                                 "api_calls", 8),
                   0);
  flush();
  wait_ledger("cus_fine", "api_requests", 8);
  wait_metric_at_least("tally_stripe_reports_total{result=\"failed\"}",
                       failed_before + 1);
  found_t dead = read_dead_letters("user:ghost");
  assert_int_equal(dead.count, 1);
  assert_non_null(strstr(dead.error, "No such customer: 'cus_ghost'"));
  assert_string_equal(dead.status, "400");
  alert_seen_t alerts = read_alerts("ghost");
  assert_int_equal(alerts.count, 1);
  assert_int_equal(alerts.used, 6);
  assert_non_null(strstr(alerts.detail, "No such customer"));
  assert_int_equal(th_stripe_fake_count(&fake, "cus_ghost", "api_requests"), 0);
}

/* ---- faults --------------------------------------------------------------
 */

static void test_faults_keep_totals_exact(void **state) {
  (void)state;
  long long retried_before = metric("tally_stripe_retries_total");
  assert_int_equal(th_stripe_fake_add_customer(&fake, "cus_faulty"), 0);
  /* Faults apply to the next requests in this order. */
  static const char *const faults[] = {
      "{\"status\": 429, \"retry_after_s\": 1}",
      "{\"status\": 500}",
      "{\"hang_ms\": 2500}", /* beyond timeout_ms (1000) */
      "{\"drop_after_apply\": true}",
  };
  for (size_t i = 0; i < sizeof(faults) / sizeof(faults[0]); i++)
    assert_int_equal(th_stripe_fake_fault(&fake, faults[i]), 0);
  assert_int_equal(th_send_link(producer, "faulty-link", hour_ms - TLY_HOUR_MS,
                                "faulty", "cus_faulty"),
                   0);
  assert_int_equal(th_send_usage(producer, "faulty-1", hour_ms - 60000,
                                 "faulty", "api_calls", 21),
                   0);
  assert_int_equal(th_send_usage(producer, "faulty-2", hour_ms + 60000,
                                 "faulty", "api_calls", 22),
                   0);
  flush();
  wait_ledger("cus_faulty", "api_requests", 43);
  assert_int_equal(folded("faulty", "api_calls"), 43);
  assert_true(metric("tally_stripe_retries_total") >= retried_before + 4);
  th_sleep_ms(500);
  assert_int_equal(th_stripe_fake_sum(&fake, "cus_faulty", "api_requests"), 43);
  assert_int_equal(th_stripe_fake_count(&fake, "cus_faulty", "api_requests"),
                   2);

  /* An identifier Stripe already has (sent before by someone else with the
   * same value, say a previous life of this state): answered 400 "already
   * exists", taken as reported, never counted twice. */
  char identifier[TLY_STRIPE_IDENTIFIER_SIZE], body[512];
  int64_t window = hour_ms - TLY_HOUR_MS;
  tly_stripe_cursor_t fresh = {0};
  int32_t partition = rd_kafka_msg_partitioner_murmur2(NULL, "user:dup", 8,
                                                       PARTITIONS, NULL, NULL);
  tly_stripe_report_identifier(partition, TLY_SUBJECT_USER, "dup",
                               "api_requests", window, &fresh, identifier);
  assert_int_equal(th_stripe_fake_add_customer(&fake, "cus_dup"), 0);
  snprintf(body, sizeof(body),
           "event_name=api_requests&payload[stripe_customer_id]=cus_dup&"
           "payload[value]=9&identifier=%s&timestamp=%lld",
           identifier, (long long)(window / 1000 + 10));
  char authorization[128];
  snprintf(authorization, sizeof(authorization), "Bearer %s", fake.secret_key);
  const char *headers[] = {"Content-Type: application/x-www-form-urlencoded",
                           NULL};
  long status;
  char *answer = NULL;
  assert_int_equal(th_http_request(fake.port, "POST",
                                   "/v1/billing/meter_events", authorization,
                                   body, strlen(body), headers, &status,
                                   &answer),
                   0);
  free(answer);
  assert_int_equal(status, 200);
  assert_int_equal(th_send_link(producer, "dup-link", window, "dup", "cus_dup"),
                   0);
  assert_int_equal(
      th_send_usage(producer, "dup-1", window + 1000, "dup", "api_calls", 9),
      0);
  flush();
  int64_t deadline = th_now_ms() + 20000;
  json_t *last = NULL;
  while (th_now_ms() < deadline) {
    json_decref(last);
    last = th_stripe_fake_last_request(&fake);
    /* The emitter's request: the test's own carried no Idempotency-Key. */
    const char *sent = json_string_value(json_object_get(
        json_object_get(last, "params"), "payload[stripe_customer_id]"));
    if (sent && strcmp(sent, "cus_dup") == 0 &&
        json_is_string(json_object_get(last, "idempotency_key")))
      break;
    th_sleep_ms(50);
  }
  assert_int_equal(json_integer_value(json_object_get(last, "status")), 400);
  assert_string_equal(json_string_value(json_object_get(
                          json_object_get(last, "params"), "identifier")),
                      identifier);
  json_decref(last);
  th_sleep_ms(500);
  assert_int_equal(th_stripe_fake_sum(&fake, "cus_dup", "api_requests"), 9);
  assert_int_equal(th_stripe_fake_count(&fake, "cus_dup", "api_requests"), 1);
  assert_int_equal(metric("tally_stripe_oldest_unreported_seconds"), 0);
}

/* ---- no false failures ------------------------------------------------- */

static void visit_any_alert(void *opaque, const tly_alert_t *alert) {
  alert_seen_t *seen = opaque;
  if (alert->type == TLY_ALERT_STRIPE_REPORT_FAILED &&
      strcmp(alert->subject_id, seen->subject_id) == 0)
    seen->count++;
}

/* The subject's stripe_report_failed alerts: none on the topic, none in its
 * history. */
static void expect_no_failure(const char *subject_id) {
  char key[64], path[256], *body = NULL;
  long status;
  snprintf(key, sizeof(key), "user:%s", subject_id);
  found_t dead = read_dead_letters(key);
  if (dead.count)
    fail_msg("%s: dead letter %s", key, dead.error);
  alert_seen_t seen = {.subject_id = subject_id};
  assert_true(th_read_alerts(broker.bootstrap, visit_any_alert, &seen) >= 0);
  assert_int_equal(seen.count, 0);
  snprintf(path, sizeof(path), "/v1/subjects/user:%s/alerts", subject_id);
  assert_int_equal(th_http_get(run.port, path, &status, &body), 0);
  assert_int_equal(status, 200);
  assert_null(strstr(body, "stripe_report_failed"));
  free(body);
}

/* The emitter's requests for customer (the fake's log): how many, how many
 * answered want_status, and whether one went under an Idempotency-Key
 * other than its identifier (a fresh key). The identifier must be one. */
typedef struct {
  int requests, with_status, fresh_keys;
  char identifier[64];
} requests_t;

static requests_t requests_of(const char *customer, long want_status) {
  requests_t seen = {0};
  json_t *log = th_stripe_fake_requests(&fake), *request;
  size_t i;
  assert_non_null(log);
  json_array_foreach(log, i, request) {
    json_t *params = json_object_get(request, "params");
    const char *sent = json_string_value(
        json_object_get(params, "payload[stripe_customer_id]"));
    const char *identifier =
        json_string_value(json_object_get(params, "identifier"));
    const char *key =
        json_string_value(json_object_get(request, "idempotency_key"));
    if (!sent || strcmp(sent, customer) != 0 || !identifier || !key)
      continue;
    if (!seen.requests++)
      snprintf(seen.identifier, sizeof(seen.identifier), "%s", identifier);
    assert_string_equal(identifier, seen.identifier);
    seen.with_status +=
        json_integer_value(json_object_get(request, "status")) == want_status;
    seen.fresh_keys += strcmp(key, identifier) != 0;
  }
  json_decref(log);
  return seen;
}

static void test_no_false_failures(void **state) {
  (void)state;
  long long failed_before =
      metric("tally_stripe_reports_total{result=\"failed\"}");
  assert_int_equal(th_stripe_fake_add_customer(&fake, "cus_replay"), 0);
  assert_int_equal(th_stripe_fake_add_customer(&fake, "cus_busy"), 0);
  /* Stripe applies the event, answers 500 and keeps it for the key: the
   * retry under that key gets the 500 again, Stripe-Should-Retry: false. */
  assert_int_equal(th_stripe_fake_fault(&fake, "{\"status\": 500, \"apply\": "
                                               "true, \"customer\": "
                                               "\"cus_replay\"}"),
                   0);
  /* Stripe applies the event but answers only after 2.5 s, beyond the
   * client's 1 s: the retry under that key is 409 idempotency_key_in_use. */
  assert_int_equal(th_stripe_fake_fault(&fake, "{\"processing_ms\": 2500, "
                                               "\"customer\": \"cus_busy\"}"),
                   0);
  assert_int_equal(th_send_link(producer, "replay-link", hour_ms - TLY_HOUR_MS,
                                "replay", "cus_replay"),
                   0);
  assert_int_equal(th_send_link(producer, "busy-link", hour_ms - TLY_HOUR_MS,
                                "busy", "cus_busy"),
                   0);
  assert_int_equal(th_send_usage(producer, "replay-1", hour_ms - 60000,
                                 "replay", "api_calls", 17),
                   0);
  assert_int_equal(th_send_usage(producer, "busy-1", hour_ms - 60000, "busy",
                                 "api_calls", 19),
                   0);
  flush();
  wait_ledger("cus_replay", "api_requests", 17);
  wait_ledger("cus_busy", "api_requests", 19);
  /* The ledger has both from the first requests (Stripe applied them);
   * the emitter, told the keys' answers will not change, sends each
   * again under a fresh key after its backoff: wait for those. */
  int64_t deadline = th_now_ms() + 30000;
  for (;;) {
    requests_t replay = requests_of("cus_replay", 500);
    requests_t busy = requests_of("cus_busy", 409);
    if ((replay.fresh_keys >= 1 && busy.fresh_keys >= 1) ||
        th_now_ms() > deadline)
      break;
    th_sleep_ms(100);
  }
  /* Settled: the emitter gave up on neither, and nothing waits. */
  deadline = th_now_ms() + 20000;
  while (metric("tally_stripe_oldest_unreported_seconds") != 0 &&
         th_now_ms() < deadline)
    th_sleep_ms(50);
  assert_int_equal(metric("tally_stripe_oldest_unreported_seconds"), 0);
  th_sleep_ms(500);
  assert_int_equal(folded("replay", "api_calls"), 17);
  assert_int_equal(folded("busy", "api_calls"), 19);
  assert_int_equal(th_stripe_fake_sum(&fake, "cus_replay", "api_requests"), 17);
  assert_int_equal(th_stripe_fake_sum(&fake, "cus_busy", "api_requests"), 19);
  assert_int_equal(th_stripe_fake_count(&fake, "cus_replay", "api_requests"),
                   1);
  assert_int_equal(th_stripe_fake_count(&fake, "cus_busy", "api_requests"), 1);
  assert_int_equal(metric("tally_stripe_reports_total{result=\"failed\"}"),
                   failed_before);
  expect_no_failure("replay");
  expect_no_failure("busy");

  /* The faults were met as meant: the stored 500 replayed under the key,
   * the busy key answered 409, and each delta went out again under a
   * fresh key with its one identifier. */
  requests_t replay = requests_of("cus_replay", 500);
  assert_true(replay.with_status >= 2);
  assert_true(replay.fresh_keys >= 1);
  requests_t busy = requests_of("cus_busy", 409);
  assert_true(busy.with_status >= 1);
  assert_true(busy.fresh_keys >= 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_window_too_old_is_an_alert),
      cmocka_unit_test(test_usage_over_three_hours_then_late),
      cmocka_unit_test(test_unknown_customer_is_a_dead_letter),
      cmocka_unit_test(test_faults_keep_totals_exact),
      cmocka_unit_test(test_no_false_failures),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
