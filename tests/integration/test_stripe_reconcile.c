/*
 * test_stripe_reconcile.c - a report intent that stays unsettled past
 * Stripe's 24 hours of identifier uniqueness is never resent blind: tally
 * asks Stripe's meter event summaries whether the delta is in Stripe's
 * total, with the clock moved (tally's reporting clock through
 * TALLY_TEST_STRIPE_CLOCK_OFFSET_MS, the fake's through /_fake/clock; the
 * fake forgets identifiers and Idempotency-Keys after 24 hours of its
 * clock, as Stripe does).
 *
 * Three lives of one `tally run` on one state (the embedded broker, the
 * state changelog off, tests/stripe_fake as Stripe):
 *   1. now: user "lost"'s delta reaches Stripe but its answer is lost
 *      (drop-after-apply), then Stripe answers 503 until tally stops: the
 *      intent stays pending;
 *   2. 25 h later: the intent is in Stripe's total: counted reported, not
 *      sent again (resent under its identifier, Stripe would count it a
 *      second time). Then user "never"'s delta gets only 503s until tally
 *      stops: pending, and never in Stripe;
 *   3. 50 h later: "never"'s intent is not in Stripe's total: sent again
 *      under a new identifier, once. Then user "shared"'s delta gets only
 *      503s until tally stops, and another sender reports usage of its
 *      customer in the same window;
 *   4. 75 h later: Stripe's total is neither what tally reported nor that
 *      plus the delta: not resent (it could count twice), counted failed
 *      with a dead letter and an alert giving both totals.
 * Each time Stripe's ledger equals the folded usage to the unit, less what
 * was counted failed (accepted + failed = folded), and only the
 * undetermined delta is a dead letter and an alert.
 */
#include "harness.h"
#include "reference.h"
#include "stripe_fake.h"

#include "tally_producer.h"
#include "tly_billing.h"
#include "tly_stripe_reconcile.h"

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
#define HOUR_S 3600LL

static th_broker_t broker;
static th_run_t run;
static th_stripe_fake_t fake;
static tally_producer_t *producer;
static char *dir, state_dir[600], *config;
static int64_t hour_ms; /* the start of the current hour at setup */

/* Starts `tally run` with its reporting clock, and the fake's, offset_h
 * hours ahead. */
static void start_run(int offset_h) {
  char offset[32];
  assert_int_equal(th_stripe_fake_set_clock(&fake, offset_h * HOUR_S), 0);
  snprintf(offset, sizeof(offset), "%lld", offset_h * HOUR_S * 1000);
  setenv(TLY_STRIPE_CLOCK_OFFSET_ENV, offset, 1);
  th_run_env = th_stripe_fake_key_env(&fake);
  const char *const extra[] = {"--config", config, "--changelog-topic", "",
                               NULL};
  int rc = th_run_start(&run, broker.bootstrap, state_dir, extra);
  unsetenv(TLY_STRIPE_CLOCK_OFFSET_ENV);
  assert_int_equal(rc, 0);
}

/* Stops it: a clean exit (a pending intent stays pending). */
static void stop_run(void) {
  assert_int_equal(th_stop(run.pid), 0);
  run.pid = 0;
}

static int setup(void **state) {
  (void)state;
  char errstr[256], meter[64];
  int64_t now = (int64_t)time(NULL) * 1000;
  hour_ms = now - now % TLY_HOUR_MS;
  dir = th_mkdtemp("stripe-reconcile");
  if (!dir || th_broker_start(&broker, PARTITIONS) ||
      th_stripe_fake_start(&fake) ||
      th_stripe_fake_add_customer(&fake, "cus_lost") ||
      th_stripe_fake_add_customer(&fake, "cus_never") ||
      th_stripe_fake_add_meter(&fake, "api_requests", meter, sizeof(meter)) ||
      th_stripe_fake_add_meter(&fake, "storage", meter, sizeof(meter)))
    return -1;
  if (!(config = th_stripe_report_config(dir, &fake, 100, 1000, 1)))
    return -1;
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  tally_producer_conf_t pconf = {.brokers = broker.bootstrap};
  producer = tally_producer_new(&pconf, errstr, sizeof(errstr));
  return producer ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  tally_producer_destroy(producer);
  free(config);
  return th_stripe_teardown(run.pid, &broker, &fake, dir);
}

static long long metric(const char *name, const char *labels) {
  return th_metric_labeled(run.port, name, labels);
}

static long long failed_total(void) {
  return metric("tally_stripe_reports_total", "{result=\"failed\"}");
}

static void wait_metric_at_least(const char *name, const char *labels,
                                 long long want) {
  int64_t deadline = th_now_ms() + 30000;
  while (metric(name, labels) < want && th_now_ms() < deadline)
    th_sleep_ms(50);
  if (metric(name, labels) < want)
    fail_msg("%s%s: %lld, want at least %lld", name, labels,
             metric(name, labels), want);
}

static void wait_ledger(const char *customer, long long want) {
  int64_t deadline = th_now_ms() + 30000;
  long long sum = -1;
  while (th_now_ms() < deadline &&
         (sum = th_stripe_fake_sum(&fake, customer, "api_requests")) != want)
    th_sleep_ms(50);
  if (sum != want)
    fail_msg("%s: ledger %lld, want %lld", customer, sum, want);
}

static long long folded(const char *id) {
  return th_folded_quantity(run.port, id, "api_calls", hour_ms - 2 * DAY_MS,
                            hour_ms + DAY_MS);
}

/* The meter event requests for customer the fake logged: how many, how
 * many it answered with status, and the identifiers of the first and the
 * last. */
typedef struct {
  int count, with_status;
  char first[64], last[64];
} sent_t;

static sent_t sent_for(const char *customer, long status) {
  sent_t sent = {0};
  json_t *log = th_stripe_fake_requests(&fake), *request;
  size_t i;
  assert_non_null(log);
  json_array_foreach(log, i, request) {
    json_t *params = json_object_get(request, "params");
    const char *to = json_string_value(
        json_object_get(params, "payload[stripe_customer_id]"));
    const char *identifier =
        json_string_value(json_object_get(params, "identifier"));
    if (!to || strcmp(to, customer) != 0 || !identifier)
      continue;
    if (!sent.count++)
      snprintf(sent.first, sizeof(sent.first), "%s", identifier);
    snprintf(sent.last, sizeof(sent.last), "%s", identifier);
    sent.with_status +=
        json_integer_value(json_object_get(request, "status")) == status;
  }
  json_decref(log);
  return sent;
}

/* How many summary requests for customer the fake logged. */
static int summaries_asked(const char *customer) {
  json_t *log = th_stripe_fake_requests(&fake), *request;
  size_t i;
  int asked = 0;
  json_array_foreach(log, i, request) {
    const char *path = json_string_value(json_object_get(request, "path"));
    const char *of = json_string_value(
        json_object_get(json_object_get(request, "params"), "customer"));
    asked += path && strstr(path, "/event_summaries") && of &&
             strcmp(of, customer) == 0;
  }
  json_decref(log);
  return asked;
}

static void wait_answered(const char *customer, long status) {
  int64_t deadline = th_now_ms() + 30000;
  while (sent_for(customer, status).with_status < 1 && th_now_ms() < deadline)
    th_sleep_ms(50);
  assert_true(sent_for(customer, status).with_status >= 1);
}

/* The emitter's dead letters: how many, and the last one's error and
 * subject. */
typedef struct {
  int count;
  char error[600], subject[64];
} dead_t;

static void visit_dead_letter(void *opaque, const rd_kafka_message_t *msg) {
  dead_t *dead = opaque;
  char source[64];
  if (!th_header(msg, "tally.source", source, sizeof(source)) ||
      strcmp(source, "stripe.meter_events") != 0)
    return;
  dead->count++;
  th_header(msg, "tally.error", dead->error, sizeof(dead->error));
  snprintf(dead->subject, sizeof(dead->subject), "%.*s", (int)msg->key_len,
           (const char *)msg->key);
}

static void count_alert(void *opaque, const tly_alert_t *alert) {
  if (alert->type == TLY_ALERT_STRIPE_REPORT_FAILED)
    ++*(int *)opaque;
}

/* failed deltas counted failed: as many dead letters and alerts. */
static dead_t expect_failures(int failed) {
  dead_t dead = {0};
  int alerts = 0;
  assert_int_equal(failed_total(), failed);
  assert_true(th_read_topic(broker.bootstrap, "tally.usage.dlq", 1,
                            visit_dead_letter, &dead) >= 0);
  assert_int_equal(dead.count, failed);
  assert_true(th_read_alerts(broker.bootstrap, count_alert, &alerts) >= 0);
  assert_int_equal(alerts, failed);
  return dead;
}

static void test_pending_intents_past_24_hours(void **state) {
  (void)state;
  /* 1. The delta reaches Stripe, its answer is lost, then Stripe fails
   * until tally stops. */
  assert_int_equal(th_stripe_fake_fault(&fake, "{\"customer\": \"cus_lost\", "
                                               "\"drop_after_apply\": true}"),
                   0);
  assert_int_equal(th_stripe_fake_fault(&fake, "{\"customer\": \"cus_lost\", "
                                               "\"status\": 503, \"count\": "
                                               "1000000}"),
                   0);
  start_run(0);
  assert_int_equal(th_send_link(producer, "lost-link", hour_ms - TLY_HOUR_MS,
                                "lost", "cus_lost"),
                   0);
  assert_int_equal(th_send_usage(producer, "lost-1",
                                 hour_ms - TLY_HOUR_MS + 1000, "lost",
                                 "api_calls", 23),
                   0);
  assert_int_equal(tally_producer_flush(producer, 10000), 0);
  wait_ledger("cus_lost", 23);
  wait_answered("cus_lost", 503);
  assert_int_equal(folded("lost"), 23);
  stop_run();
  assert_int_equal(th_stripe_fake_clear_faults(&fake), 0);
  sent_t lost = sent_for("cus_lost", 503);
  assert_int_equal(th_stripe_fake_count(&fake, "cus_lost", "api_requests"), 1);

  /* 2. 25 hours later Stripe no longer knows the identifier (resent, it
   * would count again); its summaries have the delta: reported. */
  start_run(25);
  wait_metric_at_least("tally_stripe_reports_total", "{result=\"sent\"}", 1);
  th_sleep_ms(1000);
  assert_int_equal(folded("lost"), 23);
  assert_int_equal(th_stripe_fake_sum(&fake, "cus_lost", "api_requests"), 23);
  assert_int_equal(
      metric("tally_stripe_reconciled_total", "{result=\"in_stripe\"}"), 1);
  assert_true(summaries_asked("cus_lost") >= 1);
  assert_int_equal(th_stripe_fake_count(&fake, "cus_lost", "api_requests"), 1);
  /* Not one more meter event request for it. */
  assert_int_equal(sent_for("cus_lost", 503).count, lost.count);
  assert_int_equal(
      metric("tally_stripe_reconciled_total", "{result=\"resent\"}"), 0);
  expect_failures(0);

  /* Then a delta that never reaches Stripe before tally stops. */
  assert_int_equal(th_stripe_fake_fault(&fake, "{\"customer\": \"cus_never\", "
                                               "\"status\": 503, \"count\": "
                                               "1000000}"),
                   0);
  assert_int_equal(th_send_link(producer, "never-link", hour_ms - TLY_HOUR_MS,
                                "never", "cus_never"),
                   0);
  assert_int_equal(th_send_usage(producer, "never-1",
                                 hour_ms - TLY_HOUR_MS + 2000, "never",
                                 "api_calls", 31),
                   0);
  assert_int_equal(tally_producer_flush(producer, 10000), 0);
  wait_answered("cus_never", 503);
  assert_int_equal(folded("never"), 31);
  stop_run();
  assert_int_equal(th_stripe_fake_clear_faults(&fake), 0);
  sent_t never = sent_for("cus_never", 503);
  assert_int_equal(never.with_status, never.count); /* none landed */
  assert_int_equal(th_stripe_fake_count(&fake, "cus_never", "api_requests"), 0);

  /* 3. 25 hours after that: not in Stripe's total, so sent again, under a
   * new identifier, once. */
  start_run(50);
  wait_ledger("cus_never", 31);
  wait_metric_at_least("tally_stripe_reconciled_total", "{result=\"resent\"}",
                       1);
  th_sleep_ms(1000);
  assert_int_equal(folded("never"), 31);
  assert_int_equal(th_stripe_fake_sum(&fake, "cus_never", "api_requests"), 31);
  assert_int_equal(th_stripe_fake_count(&fake, "cus_never", "api_requests"), 1);
  assert_true(summaries_asked("cus_never") >= 1);
  sent_t again = sent_for("cus_never", 200);
  assert_int_equal(again.with_status, 1);
  assert_string_equal(again.first, never.first);
  assert_string_not_equal(again.last, never.first);
  /* And "lost" stays as it was. */
  assert_int_equal(folded("lost"), 23);
  assert_int_equal(th_stripe_fake_sum(&fake, "cus_lost", "api_requests"), 23);
  expect_failures(0);
  assert_int_equal(metric("tally_stripe_oldest_unreported_seconds", ""), 0);

  /* Then one more pending intent, never in Stripe, whose customer has other
   * usage in the window (another sender's event): Stripe's total is
   * neither what tally reported nor that plus the delta. */
  assert_int_equal(th_stripe_fake_fault(&fake, "{\"customer\": "
                                               "\"cus_shared\", \"status\": "
                                               "503, \"count\": 1000000}"),
                   0);
  assert_int_equal(th_stripe_fake_add_customer(&fake, "cus_shared"), 0);
  assert_int_equal(th_send_link(producer, "shared-link", hour_ms - TLY_HOUR_MS,
                                "shared", "cus_shared"),
                   0);
  assert_int_equal(th_send_usage(producer, "shared-1",
                                 hour_ms - TLY_HOUR_MS + 3000, "shared",
                                 "api_calls", 13),
                   0);
  assert_int_equal(tally_producer_flush(producer, 10000), 0);
  wait_answered("cus_shared", 503);
  stop_run();
  assert_int_equal(th_stripe_fake_clear_faults(&fake), 0);
  char body[512], authorization[128], *answer = NULL;
  long status;
  snprintf(body, sizeof(body),
           "event_name=api_requests&payload[stripe_customer_id]=cus_shared&"
           "payload[value]=5&identifier=another-sender-1&timestamp=%lld",
           (long long)(hour_ms - TLY_HOUR_MS) / 1000 + 600);
  snprintf(authorization, sizeof(authorization), "Bearer %s", fake.secret_key);
  assert_int_equal(th_http_request(fake.port, "POST",
                                   "/v1/billing/meter_events", authorization,
                                   body, strlen(body), NULL, &status, &answer),
                   0);
  free(answer);
  assert_int_equal(status, 200);

  /* 4. 25 hours after that: undetermined, so never resent blind: counted
   * failed, with a dead letter and an alert saying both totals, for the
   * operator to decide. Accepted + failed = folded still. */
  start_run(75);
  wait_metric_at_least("tally_stripe_reports_total", "{result=\"failed\"}", 1);
  th_sleep_ms(500);
  assert_int_equal(folded("shared"), 13);
  assert_int_equal(th_stripe_fake_sum(&fake, "cus_shared", "api_requests"), 5);
  assert_int_equal(th_stripe_fake_count(&fake, "cus_shared", "api_requests"),
                   1);
  assert_true(summaries_asked("cus_shared") >= 1);
  dead_t dead = expect_failures(1);
  assert_string_equal(dead.subject, "user:shared");
  assert_non_null(strstr(dead.error, "not confirmed after 24 h"));
  assert_non_null(strstr(dead.error, "Stripe's total of the window is 5"));
  assert_non_null(strstr(dead.error, "delta of 13"));
  assert_int_equal(th_stripe_fake_sum(&fake, "cus_lost", "api_requests"), 23);
  assert_int_equal(th_stripe_fake_sum(&fake, "cus_never", "api_requests"), 31);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pending_intents_past_24_hours),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
