/*
 * test_stripe.c - Stripe webhook intake and billing portal sessions over
 * real sockets: the embedded broker, a real `tally run` with a "stripe"
 * config section, and tests/stripe_fake standing in for Stripe's API.
 *
 * Webhooks: each mapped type is posted signed and then seen in the folded
 * state (plan, Stripe's cycle bounds, payment_failed, canceled, the customer
 * link the portal uses); tampered, wrong-secret, stale and future deliveries
 * are refused, a rotated secret accepted, a replayed event id folded once,
 * an unknown price refused naming it, and Kafka gone is a 503. Portal: a
 * linked subject gets the fake's session URL, unlinked and unknown subjects
 * 404, Stripe errors and timeouts 502, no Stripe key 503.
 */
#include "harness.h"
#include "stripe_fake.h"

#include "tly_stripe_webhook.h"

#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#define PARTITIONS 2
#define DAY_S 86400LL

static th_broker_t broker;
static th_run_t run;
static th_stripe_fake_t fake;
static char *dir;
static char key_env[128];
static long long now_s;

static void write_file(const char *path, const char *text) {
  FILE *file = fopen(path, "w");
  assert_non_null(file);
  fputs(text, file);
  fclose(file);
}

static int setup(void **state) {
  (void)state;
  char config_path[600], config[2048], state_dir[600];
  now_s = (long long)time(NULL);
  dir = th_mkdtemp("stripe");
  if (!dir || th_broker_start(&broker, PARTITIONS) ||
      th_stripe_fake_start(&fake) ||
      th_stripe_fake_add_customer(&fake, "cus_wh1"))
    return -1;
  snprintf(config_path, sizeof(config_path), "%s/config.json", dir);
  snprintf(config, sizeof(config),
           "{\"stripe\": {\"api_base\": \"http://127.0.0.1:%d\", "
           "\"secret_key_env\": \"TALLY_TEST_STRIPE_KEY\", "
           "\"webhook_secrets\": [\"whsec_old\", \"whsec_new\"], "
           "\"prices\": {\"price_pro\": \"professional\", \"price_start\": "
           "\"starter\"}, \"timeout_ms\": 1000, "
           "\"portal_return_url\": \"https://app.test/billing\"}}",
           fake.port);
  write_file(config_path, config);
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  snprintf(key_env, sizeof(key_env), "TALLY_TEST_STRIPE_KEY=%s",
           fake.secret_key);
  th_run_env = key_env;
  const char *const extra[] = {"--config", config_path, NULL};
  return th_run_start(&run, broker.bootstrap, state_dir, extra);
}

static int teardown(void **state) {
  (void)state;
  /* 0 only after a clean stop: under the sanitizers, a leak (say, of a
   * portal call) makes tally's exit code non-zero. */
  return th_stripe_teardown(run.pid, &broker, &fake, dir);
}

/* POSTs body to the webhook of port, signed with the given secrets at t
 * (each a v1; NULL-terminated), with no bearer token. The answer's JSON. */
static json_t *deliver_signed(int port, const char *body,
                              const char *const *secrets, long long t,
                              long *status) {
  char header[600];
  int used = snprintf(header, sizeof(header), "Stripe-Signature: t=%lld", t);
  for (size_t i = 0; secrets[i]; i++) {
    char hex[TLY_STRIPE_SIGNATURE_HEX_LEN + 1];
    tly_stripe_signature_compute(secrets[i], t, body, strlen(body), hex);
    used +=
        snprintf(header + used, sizeof(header) - (size_t)used, ",v1=%s", hex);
  }
  const char *headers[] = {header, NULL};
  char *text = NULL;
  if (th_http_request(port, "POST", "/v1/stripe/webhook", NULL, body,
                      strlen(body), headers, status, &text))
    fail_msg("webhook: no answer");
  json_t *json = json_loads(text, 0, NULL);
  free(text);
  return json;
}

static json_t *deliver(const char *body, long *status) {
  static const char *const secrets[] = {"whsec_old", NULL};
  return deliver_signed(run.port, body, secrets, (long long)time(NULL), status);
}

/* Delivers and expects 200 with the given event id. */
static void deliver_ok(const char *body, const char *event_id) {
  long status;
  json_t *json = deliver(body, &status);
  if (status != 200)
    fail_msg("%ld: %s", status, json_dumps(json, 0));
  assert_true(json_is_true(json_object_get(json, "received")));
  assert_string_equal(json_string_value(json_object_get(json, "event_id")),
                      event_id);
  json_decref(json);
}

static const char *error_code(const json_t *json) {
  return json_string_value(
      json_object_get(json_object_get(json, "error"), "code"));
}

static json_t *get(const char *path, long *status) {
  char *text = NULL;
  if (th_http_get(run.port, path, status, &text))
    fail_msg("GET %s: no answer", path);
  json_t *json = json_loads(text, 0, NULL);
  free(text);
  return json;
}

/* Polls the subject's usage until key (a top-level field) equals the JSON
 * value given as text; returns the usage. */
static json_t *wait_usage_field(const char *subject, const char *key,
                                const char *expected_json) {
  char path[256];
  json_t *expected = json_loads(expected_json, JSON_DECODE_ANY, NULL);
  snprintf(path, sizeof(path), "/v1/subjects/%s/usage", subject);
  int64_t deadline = th_now_ms() + 15000;
  while (th_now_ms() < deadline) {
    long status;
    json_t *json = get(path, &status);
    if (status == 200 && json_equal(json_object_get(json, key), expected)) {
      json_decref(expected);
      return json;
    }
    json_decref(json);
    th_sleep_ms(50);
  }
  fail_msg("%s: %s never became %s", subject, key, expected_json);
  return NULL;
}

static void subscription_body(char *out, size_t size, const char *event_id,
                              const char *type, const char *subject,
                              const char *price, long long start,
                              long long end) {
  snprintf(out, size,
           "{\"id\": \"%s\", \"object\": \"event\", \"type\": \"%s\", "
           "\"created\": %lld, \"data\": {\"object\": {\"id\": \"sub_wh\", "
           "\"object\": \"subscription\", \"customer\": \"cus_wh1\", "
           "\"metadata\": {\"tally_subject\": \"%s\"}, "
           "\"current_period_start\": %lld, \"current_period_end\": %lld, "
           "\"items\": {\"data\": [{\"price\": {\"id\": \"%s\"}}]}}}}",
           event_id, type, now_s, subject, start, end, price);
}

/* Delivers a subscription event for subject and waits until the usage's key
 * shows expected (JSON text); returns the usage. */
static json_t *subscribe(const char *event_id, const char *type,
                         const char *subject, const char *price,
                         long long start, long long end, const char *key,
                         const char *expected) {
  char body[2048];
  subscription_body(body, sizeof(body), event_id, type, subject, price, start,
                    end);
  deliver_ok(body, event_id);
  return wait_usage_field(subject, key, expected);
}

/* ---- webhooks: every mapped type, folded ----------------------------------
 */

static void test_webhooks_fold_into_plan_cycle_and_link(void **state) {
  (void)state;
  char body[2048];
  /* A period that began a minute ago: after the calendar month's start
   * (the cycle the fold would have made), so Stripe's bounds replace it. */
  long long start = now_s - 60, end = now_s + 30 * DAY_S;
  json_decref(subscribe("evt_sub_created", "customer.subscription.created",
                        "user:wh-1", "price_start", start, end, "plan",
                        "\"starter\""));
  json_t *usage =
      subscribe("evt_sub_updated", "customer.subscription.updated", "user:wh-1",
                "price_pro", start, end, "plan", "\"professional\"");
  json_t *cycle = json_object_get(usage, "cycle");
  assert_int_equal(json_integer_value(json_object_get(cycle, "start_ms")),
                   start * 1000);
  assert_int_equal(json_integer_value(json_object_get(cycle, "end_ms")),
                   end * 1000);
  json_decref(usage);

  snprintf(body, sizeof(body),
           "{\"id\": \"evt_cus\", \"type\": \"customer.created\", "
           "\"created\": %lld, \"data\": {\"object\": {\"id\": \"cus_wh1\", "
           "\"object\": \"customer\", \"metadata\": {\"tally_subject\": "
           "\"user:wh-1\"}}}}",
           now_s);
  deliver_ok(body, "evt_cus");

  snprintf(body, sizeof(body),
           "{\"id\": \"evt_fail\", \"type\": \"invoice.payment_failed\", "
           "\"created\": %lld, \"data\": {\"object\": {\"id\": \"in_1\", "
           "\"currency\": \"usd\", \"amount_due\": 4900, \"attempt_count\": 1, "
           "\"subscription_details\": {\"metadata\": {\"tally_subject\": "
           "\"user:wh-1\"}}}}}",
           now_s);
  deliver_ok(body, "evt_fail");
  json_decref(wait_usage_field("user:wh-1", "payment_failed", "true"));

  snprintf(body, sizeof(body),
           "{\"id\": \"evt_paid\", \"type\": \"invoice.paid\", \"created\": "
           "%lld, \"data\": {\"object\": {\"id\": \"in_1\", \"currency\": "
           "\"usd\", \"amount_paid\": 4900, \"subscription_details\": "
           "{\"metadata\": {\"tally_subject\": \"user:wh-1\"}}, \"lines\": "
           "{\"data\": [{\"type\": \"subscription\", \"proration\": false, "
           "\"period\": {\"start\": %lld, \"end\": %lld}}]}}}}",
           now_s, start, end);
  deliver_ok(body, "evt_paid");
  usage = wait_usage_field("user:wh-1", "payment_failed", "false");
  assert_int_equal(json_integer_value(json_object_get(
                       json_object_get(usage, "cycle"), "end_ms")),
                   end * 1000);
  json_decref(usage);

  /* Canceled: back on the default plan. Another subject, so the portal
   * test keeps user:wh-1 as it is. */
  json_decref(subscribe("evt_sub2", "customer.subscription.created",
                        "user:wh-2", "price_pro", start, end, "plan",
                        "\"professional\""));
  usage = subscribe("evt_sub2_del", "customer.subscription.deleted",
                    "user:wh-2", "price_pro", start, end, "canceled", "true");
  assert_string_equal(json_string_value(json_object_get(usage, "plan")),
                      "free");
  json_decref(usage);
}

/* ---- webhooks: refused, rotated, ignored ----------------------------------
 */

static void test_webhook_signatures(void **state) {
  (void)state;
  char body[2048];
  long status;
  subscription_body(body, sizeof(body), "evt_sig",
                    "customer.subscription.updated", "user:sig", "price_pro",
                    now_s - 60, now_s + DAY_S);
  static const char *const old_secret[] = {"whsec_old", NULL};
  static const char *const wrong[] = {"whsec_wrong", NULL};
  static const char *const rotated[] = {"whsec_gone", "whsec_new", NULL};

  /* Tampered: signed, then one byte of the body changed. */
  char header[600], hex[TLY_STRIPE_SIGNATURE_HEX_LEN + 1], *text = NULL;
  tly_stripe_signature_compute("whsec_old", now_s, body, strlen(body), hex);
  snprintf(header, sizeof(header), "Stripe-Signature: t=%lld,v1=%s", now_s,
           hex);
  char tampered[2048];
  snprintf(tampered, sizeof(tampered), "%s", body);
  *strstr(tampered, "price_pro") = 'P';
  const char *headers[] = {header, NULL};
  assert_int_equal(th_http_request(run.port, "POST", "/v1/stripe/webhook", NULL,
                                   tampered, strlen(tampered), headers, &status,
                                   &text),
                   0);
  assert_int_equal(status, 400);
  assert_non_null(strstr(text, "signature_mismatch"));
  free(text);

  json_t *json = deliver_signed(run.port, body, wrong, now_s, &status);
  assert_int_equal(status, 400);
  assert_string_equal(error_code(json), "signature_mismatch");
  json_decref(json);
  json = deliver_signed(run.port, body, old_secret, (long long)time(NULL) - 400,
                        &status);
  assert_int_equal(status, 400);
  assert_string_equal(error_code(json), "timestamp_outside_tolerance");
  json_decref(json);
  json = deliver_signed(run.port, body, old_secret, (long long)time(NULL) + 400,
                        &status);
  assert_int_equal(status, 400);
  assert_string_equal(error_code(json), "timestamp_outside_tolerance");
  json_decref(json);
  assert_int_equal(th_http_request(run.port, "POST", "/v1/stripe/webhook", NULL,
                                   body, strlen(body), NULL, &status, &text),
                   0);
  assert_int_equal(status, 400);
  assert_non_null(strstr(text, "missing_signature"));
  free(text);
  /* Nothing refused reached the log. */
  json = get("/v1/subjects/user:sig/usage", &status);
  assert_int_equal(status, 404);
  json_decref(json);

  /* Rotation: the second v1 matches the second configured secret. */
  json = deliver_signed(run.port, body, rotated, now_s, &status);
  assert_int_equal(status, 200);
  json_decref(json);
  json_decref(wait_usage_field("user:sig", "plan", "\"professional\""));

  /* An unknown price: 400 naming it, nothing produced. */
  subscription_body(body, sizeof(body), "evt_gold",
                    "customer.subscription.updated", "user:gold", "price_gold",
                    now_s - 60, now_s + DAY_S);
  json = deliver(body, &status);
  assert_int_equal(status, 400);
  assert_string_equal(error_code(json), "unknown_price");
  assert_non_null(strstr(json_string_value(json_object_get(
                             json_object_get(json, "error"), "message")),
                         "price_gold"));
  json_decref(json);
  /* A type tally does not use: 200, ignored. */
  snprintf(body, sizeof(body),
           "{\"id\": \"evt_charge\", \"type\": \"charge.succeeded\", "
           "\"created\": %lld, \"data\": {\"object\": {\"id\": \"ch_1\"}}}",
           now_s);
  json = deliver(body, &status);
  assert_int_equal(status, 200);
  assert_true(json_is_true(json_object_get(json, "ignored")));
  json_decref(json);
  json = get("/v1/subjects/user:gold/usage", &status);
  assert_int_equal(status, 404);
  json_decref(json);
}

static void test_replayed_event_folds_once(void **state) {
  (void)state;
  char body[1024];
  snprintf(body, sizeof(body),
           "{\"id\": \"evt_replay\", \"type\": \"invoice.payment_failed\", "
           "\"created\": %lld, \"data\": {\"object\": {\"id\": \"in_r\", "
           "\"currency\": \"usd\", \"amount_due\": 100, \"attempt_count\": 1, "
           "\"metadata\": {\"tally_subject\": \"user:replay\"}}}}",
           now_s);
  assert_int_equal(th_wait_caught_up(run.port, broker.bootstrap, "tally.usage",
                                     PARTITIONS, 15000),
                   0);
  long long folded = th_metric_sum(run.port, "tally_events_folded_total");
  long long duplicates = th_metric_sum(run.port, "tally_duplicates_total");
  deliver_ok(body, "evt_replay");
  deliver_ok(body, "evt_replay"); /* Stripe's retry: the same event */
  assert_int_equal(th_wait_caught_up(run.port, broker.bootstrap, "tally.usage",
                                     PARTITIONS, 15000),
                   0);
  assert_int_equal(th_metric_sum(run.port, "tally_events_folded_total"),
                   folded + 1);
  assert_int_equal(th_metric_sum(run.port, "tally_duplicates_total"),
                   duplicates + 1);
  json_decref(wait_usage_field("user:replay", "payment_failed", "true"));
}

/* ---- billing portal -------------------------------------------------------
 */

static json_t *portal(const char *subject, const char *authorization,
                      long *status) {
  char path[256], *text = NULL;
  snprintf(path, sizeof(path), "/v1/subjects/%s/billing-portal", subject);
  if (th_http_request(run.port, "POST", path, authorization, NULL, 0, NULL,
                      status, &text))
    fail_msg("portal: no answer");
  json_t *json = json_loads(text, 0, NULL);
  free(text);
  return json;
}

static void test_billing_portal(void **state) {
  (void)state;
  long status;
  /* Linked by the customer.created webhook of the first test. */
  json_t *json = portal("user:wh-1", TH_AUTH_DEFAULT, &status);
  for (int64_t deadline = th_now_ms() + 15000;
       status == 404 && th_now_ms() < deadline; th_sleep_ms(50)) {
    json_decref(json);
    json = portal("user:wh-1", TH_AUTH_DEFAULT, &status);
  }
  assert_int_equal(status, 200);
  const char *url = json_string_value(json_object_get(json, "url"));
  assert_non_null(url);
  assert_non_null(strstr(url, "/p/session/bps_fake_"));
  json_decref(json);

  json_t *last = th_stripe_fake_last_request(&fake);
  assert_non_null(last);
  json_t *params = json_object_get(last, "params");
  assert_string_equal(json_string_value(json_object_get(params, "customer")),
                      "cus_wh1");
  assert_string_equal(json_string_value(json_object_get(params, "return_url")),
                      "https://app.test/billing");
  assert_string_equal(
      json_string_value(json_object_get(last, "stripe_version")), "2024-06-20");
  assert_true(json_is_true(json_object_get(last, "authorized")));
  json_decref(last);

  json = portal("user:wh-1", NULL, &status);
  assert_int_equal(status, 401);
  json_decref(json);
  json = portal("user:wh-2", TH_AUTH_DEFAULT, &status); /* not linked */
  assert_int_equal(status, 404);
  assert_string_equal(error_code(json), "not_linked");
  json_decref(json);
  json = portal("user:nobody", TH_AUTH_DEFAULT, &status);
  assert_int_equal(status, 404);
  json_decref(json);

  /* Stripe fails: 502 with its message; Stripe hangs: 502 after the
   * configured timeout (1 s), not later. */
  assert_int_equal(
      th_stripe_fake_fault(&fake, "{\"count\": 1, \"status\": 500}"), 0);
  json = portal("user:wh-1", TH_AUTH_DEFAULT, &status);
  assert_int_equal(status, 502);
  assert_string_equal(error_code(json), "stripe_error");
  json_decref(json);
  assert_int_equal(
      th_stripe_fake_fault(&fake, "{\"count\": 1, \"hang_ms\": 3000}"), 0);
  int64_t started = th_now_ms();
  json = portal("user:wh-1", TH_AUTH_DEFAULT, &status);
  assert_int_equal(status, 502);
  assert_string_equal(error_code(json), "stripe_unavailable");
  assert_true(th_now_ms() - started < 2500);
  json_decref(json);
  /* The port stayed responsive meanwhile, and answers again. */
  json = portal("user:wh-1", TH_AUTH_DEFAULT, &status);
  assert_int_equal(status, 200);
  json_decref(json);
}

/* ---- Kafka gone, and no Stripe key ----------------------------------------
 */

static void test_kafka_unavailable_is_503_and_no_key_is_503(void **state) {
  (void)state;
  th_broker_t lost;
  th_run_t other;
  char other_state[600], config_path[600];
  assert_int_equal(th_broker_start(&lost, 1), 0);
  snprintf(other_state, sizeof(other_state), "%s/lost-broker", dir);
  snprintf(config_path, sizeof(config_path), "%s/webhook-only.json", dir);
  write_file(config_path, "{\"stripe\": {\"webhook_secrets\": "
                          "[\"whsec_old\"], \"prices\": {\"price_pro\": "
                          "\"professional\"}}}");
  const char *const extra[] = {"--config", config_path, "-X",
                               "message.timeout.ms=1500", NULL};
  assert_int_equal(th_run_start(&other, lost.bootstrap, other_state, extra), 0);
  th_kill9(lost.pid);

  char body[2048];
  long status;
  static const char *const secrets[] = {"whsec_old", NULL};
  subscription_body(body, sizeof(body), "evt_lost",
                    "customer.subscription.updated", "user:lost", "price_pro",
                    now_s - 60, now_s + DAY_S);
  int64_t started = th_now_ms();
  json_t *json = deliver_signed(other.port, body, secrets, now_s, &status);
  assert_true(th_now_ms() - started < 10000);
  assert_int_equal(status, 503);
  assert_string_equal(error_code(json), "kafka_unavailable");
  json_decref(json);

  char *text = NULL;
  assert_int_equal(th_http_request(other.port, "POST",
                                   "/v1/subjects/user:lost/billing-portal",
                                   TH_AUTH_DEFAULT, NULL, 0, NULL, &status,
                                   &text),
                   0);
  assert_int_equal(status, 503);
  assert_non_null(strstr(text, "stripe_not_configured"));
  free(text);
  th_stop(other.pid); /* may need its SIGKILL: its broker is gone */
  th_rmrf(lost.dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_webhooks_fold_into_plan_cycle_and_link),
      cmocka_unit_test(test_webhook_signatures),
      cmocka_unit_test(test_replayed_event_folds_once),
      cmocka_unit_test(test_billing_portal),
      cmocka_unit_test(test_kafka_unavailable_is_503_and_no_key_is_503),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
