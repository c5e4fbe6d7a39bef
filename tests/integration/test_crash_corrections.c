/*
 * test_crash_corrections.c - usage_corrected end to end over real sockets:
 * the embedded broker, a real `tally run` reporting to the Stripe-shaped
 * server, SIGKILLed twice.
 *
 * Subject user:fix gets usage events and then corrections (an amend, a
 * retraction, a correction of a correction's original twice: the latest
 * wins, one of an unknown id and one naming another feature: both to the
 * dead-letter topic with their reasons). Subject user:ref gets the same
 * usage "as if sent right" (each event with its final quantity, the
 * retracted one left out), at the same times. tally is SIGKILLed right
 * after the first corrections are produced (mid-fold) and again after the
 * rest, and restarted on its state each time. Then user:fix must answer
 * exactly what user:ref answers: /usage (quantity, events, cost),
 * /usage/daily (every day) and /cycles; and Stripe's ledger for fix's
 * customer must equal ref's and the folded total, with negative meter
 * events among fix's (the corrected windows reported down).
 */
#include "harness.h"
#include "stripe_fake.h"

#include "tally_producer.h"
#include "tly_billing.h"

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
static char *dir, *config, state_dir[600];
static int64_t hour_ms;

static void start_tally(void) {
  th_run_env = th_stripe_fake_key_env(&fake);
  const char *const extra[] = {"--config", config, NULL};
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, extra), 0);
}

static int setup(void **state) {
  (void)state;
  char errstr[256];
  int64_t now = (int64_t)time(NULL) * 1000;
  hour_ms = now - now % TLY_HOUR_MS;
  dir = th_mkdtemp("corrections");
  if (!dir || th_broker_start(&broker, PARTITIONS) ||
      th_stripe_fake_start(&fake))
    return -1;
  config = th_stripe_report_config(dir, &fake, 100, 1000, 1);
  if (!config)
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

static void send_correction(const char *event_id, int64_t at_ms,
                            const char *corrects, const char *feature,
                            int64_t quantity) {
  char errstr[512];
  tly_event_t event = {.event_id = (char *)event_id,
                       .occurred_at_ms = at_ms,
                       .subject_kind = TLY_SUBJECT_USER,
                       .subject_id = "fix",
                       .body_kind = TLY_BODY_USAGE_CORRECTED};
  event.body.usage.corrects = (char *)corrects;
  event.body.usage.feature = (char *)feature;
  event.body.usage.quantity = quantity;
  event.body.usage.unit = "unit";
  if (tally_producer_send(producer, &event, NULL, errstr, sizeof(errstr)))
    fail_msg("producing %s: %s", event_id, errstr);
}

static void flush(void) {
  assert_int_equal(tally_producer_flush(producer, 10000), 0);
}

static json_t *get_json(const char *path) {
  long status;
  char *body = NULL;
  assert_int_equal(th_http_get(run.port, path, &status, &body), 0);
  if (status != 200)
    fail_msg("%s: %ld %s", path, status, body ? body : "");
  json_t *json = json_loads(body, 0, NULL);
  free(body);
  assert_non_null(json);
  return json;
}

/* The answer of path for user:fix equals user:ref's, but for the subject
 * and the partition. */
static void assert_same_answer(const char *route) {
  char path[256];
  snprintf(path, sizeof(path), "/v1/subjects/user:fix%s", route);
  json_t *fix = get_json(path);
  snprintf(path, sizeof(path), "/v1/subjects/user:ref%s", route);
  json_t *ref = get_json(path);
  const char *drop[] = {"subject", "partition", "billing_linked"};
  for (size_t i = 0; i < 3; i++) {
    json_object_del(fix, drop[i]);
    json_object_del(ref, drop[i]);
  }
  if (!json_equal(fix, ref)) {
    char *a = json_dumps(fix, JSON_SORT_KEYS),
         *b = json_dumps(ref, JSON_SORT_KEYS);
    fail_msg("%s:\n fix %s\n ref %s", route, a, b);
  }
  json_decref(fix);
  json_decref(ref);
}

typedef struct {
  int unknown, feature, other;
} dead_t;

static void visit_dead_letter(void *opaque, const rd_kafka_message_t *msg) {
  dead_t *dead = opaque;
  char error[600];
  if (msg->key_len != 8 || memcmp(msg->key, "user:fix", 8) != 0)
    return;
  if (!th_header(msg, "tally.error", error, sizeof(error)))
    dead->other++;
  else if (strstr(error, "corrects 'nope': no usage event of subject user:fix"))
    dead->unknown++;
  else if (strstr(error, "corrects 'u4': the event is of feature "
                         "'api_calls', not 'storage_bytes'"))
    dead->feature++;
  else {
    fprintf(stderr, "# unexpected dead letter: %s\n", error);
    dead->other++;
  }
}

static long long wait_ledger(const char *customer, long long want) {
  int64_t deadline = th_now_ms() + 60000;
  long long sum = -1;
  while (th_now_ms() < deadline &&
         (sum = th_stripe_fake_sum(&fake, customer, "api_requests")) != want)
    th_sleep_ms(100);
  return sum;
}

static void test_corrections_survive_kills(void **state) {
  (void)state;
  /* The usage, and what each event finally counts for. */
  static const struct {
    const char *id;
    int64_t offset_ms;
    int64_t sent, final; /* final < 0: retracted */
  } usage[] = {
      {"u1", -2 * TLY_HOUR_MS + 1000, 5, 2},
      {"u2", -TLY_HOUR_MS + 2000, 11, -1},
      {"u3", 3000, 13, 1},
      {"u4", 4000, 7, 7},
  };
  assert_int_equal(th_stripe_fake_add_customer(&fake, "cus_fix"), 0);
  assert_int_equal(th_stripe_fake_add_customer(&fake, "cus_ref"), 0);
  start_tally();
  assert_int_equal(th_send_link(producer, "link-fix", hour_ms - 3 * TLY_HOUR_MS,
                                "fix", "cus_fix"),
                   0);
  assert_int_equal(th_send_link(producer, "link-ref", hour_ms - 3 * TLY_HOUR_MS,
                                "ref", "cus_ref"),
                   0);
  long long total = 0, sent = 0;
  for (size_t i = 0; i < sizeof(usage) / sizeof(usage[0]); i++) {
    char ref_id[32];
    int64_t at = hour_ms + usage[i].offset_ms;
    assert_int_equal(th_send_usage(producer, usage[i].id, at, "fix",
                                   "api_calls", usage[i].sent),
                     0);
    sent += usage[i].sent;
    if (usage[i].final < 0)
      continue;
    snprintf(ref_id, sizeof(ref_id), "ref-%s", usage[i].id);
    assert_int_equal(
        th_send_usage(producer, ref_id, at, "ref", "api_calls", usage[i].final),
        0);
    total += usage[i].final;
  }
  flush();
  /* Reported as sent first: the corrections below report windows down. */
  assert_int_equal(wait_ledger("cus_fix", sent), sent);

  int64_t now = hour_ms + 10000;
  send_correction("c1", now, "u1", "api_calls", 2);  /* amend */
  send_correction("c2", now, "u2", "api_calls", 0);  /* retract */
  send_correction("c3", now, "u3", "api_calls", 20); /* then corrected again */
  flush();
  th_kill9(run.pid); /* mid-fold, perhaps mid-report */
  start_tally();
  send_correction("c4", now + 1000, "u3", "api_calls", 1); /* the latest wins */
  send_correction("c1", now + 1000, "u1", "api_calls", 9); /* c1 again: dup */
  send_correction("c5", now + 1000, "nope", "api_calls", 1);   /* unknown */
  send_correction("c6", now + 1000, "u4", "storage_bytes", 1); /* feature */
  flush();
  th_sleep_ms(300);
  th_kill9(run.pid);
  start_tally();
  assert_int_equal(th_wait_caught_up(run.port, broker.bootstrap, "tally.usage",
                                     PARTITIONS, 60000),
                   0);
  assert_int_equal(th_wait_outbox_empty(run.port, 30000), 0);

  /* The answers equal the reference's. */
  char daily[128];
  char from[16], to[16];
  time_t t = (time_t)((hour_ms - DAY_MS) / 1000);
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(from, sizeof(from), "%Y-%m-%d", &tm);
  t = (time_t)((hour_ms + DAY_MS) / 1000);
  gmtime_r(&t, &tm);
  strftime(to, sizeof(to), "%Y-%m-%d", &tm);
  snprintf(daily, sizeof(daily), "/usage/daily?from=%s&to=%s", from, to);
  assert_same_answer("/usage");
  assert_same_answer(daily);
  assert_same_answer("/cycles");
  json_t *usage_fix = get_json("/v1/subjects/user:fix/usage");
  json_t *calls =
      json_object_get(json_object_get(usage_fix, "features"), "api_calls");
  assert_int_equal(json_integer_value(json_object_get(calls, "quantity")),
                   total);
  assert_int_equal(json_integer_value(json_object_get(calls, "events")), 3);
  json_decref(usage_fix);

  /* Two dead letters, once each, with their reasons. */
  dead_t dead = {0};
  assert_true(th_read_topic(broker.bootstrap, "tally.usage.dlq", 1,
                            visit_dead_letter, &dead) >= 0);
  assert_int_equal(dead.unknown, 1);
  assert_int_equal(dead.feature, 1);
  assert_int_equal(dead.other, 0);

  /* Stripe: fix's ledger is the folded total, as ref's is, and fix's
   * windows went down by negative meter events. */
  assert_int_equal(wait_ledger("cus_ref", total), total);
  assert_int_equal(wait_ledger("cus_fix", total), total);
  json_t *requests = th_stripe_fake_requests(&fake), *request;
  size_t i, negatives = 0;
  assert_non_null(requests);
  json_array_foreach(requests, i, request) {
    json_t *params = json_object_get(request, "params");
    const char *customer = json_string_value(
        json_object_get(params, "payload[stripe_customer_id]"));
    const char *value =
        json_string_value(json_object_get(params, "payload[value]"));
    if (customer && value && !strcmp(customer, "cus_fix") && value[0] == '-' &&
        json_integer_value(json_object_get(request, "status")) == 200)
      negatives++;
  }
  json_decref(requests);
  assert_true(negatives >= 2);
  assert_int_equal(th_stripe_fake_sum(&fake, "cus_fix", "api_requests"),
                   th_folded_quantity(run.port, "fix", "api_calls",
                                      hour_ms - DAY_MS, hour_ms + DAY_MS));

  /* A new instance on a fresh state dir restores the partitions from the
   * state changelog, contributions included: it corrects u4 (7 -> 3) as
   * the first one would have, and refuses u2's correction no more than
   * the first would (u2 was retracted: bringing it back works). */
  assert_int_equal(th_stop(run.pid), 0);
  snprintf(state_dir, sizeof(state_dir), "%s/state-b", dir);
  start_tally();
  send_correction("c7", now + 2000, "u4", "api_calls", 3);
  send_correction("c8", now + 2000, "u2", "api_calls", 4);
  flush();
  assert_int_equal(th_wait_caught_up(run.port, broker.bootstrap, "tally.usage",
                                     PARTITIONS, 60000),
                   0);
  /* restored, or built as a standby copy first (README "Standby replicas") */
  assert_true(th_metric_sum(run.port, "tally_changelog_restores_total") +
                  th_metric_sum(run.port, "tally_standby_catchups_total") >=
              1);
  usage_fix = get_json("/v1/subjects/user:fix/usage");
  calls = json_object_get(json_object_get(usage_fix, "features"), "api_calls");
  assert_int_equal(json_integer_value(json_object_get(calls, "quantity")),
                   total - 7 + 3 + 4);
  assert_int_equal(json_integer_value(json_object_get(calls, "events")), 4);
  json_decref(usage_fix);
  assert_int_equal(wait_ledger("cus_fix", total - 7 + 3 + 4),
                   total - 7 + 3 + 4);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_corrections_survive_kills),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
