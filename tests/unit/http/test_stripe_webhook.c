/*
 * test_stripe_webhook.c - unit tests of http/tly_stripe_webhook.c: the
 * signature against a value computed by `openssl dgst -hmac`, every way a
 * Stripe-Signature header is refused, and each Stripe event type mapped to
 * its tally event (or ignored, or refused with the reason).
 */
#include "tly_config.h"
#include "tly_event.h"
#include "tly_stripe_portal.h"
#include "tly_stripe_webhook.h"

#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define NOW_S 1800000000LL /* 2027-01-15 */

static tly_config_t *config;

static int setup(void **state) {
  (void)state;
  static const char text[] =
      "{\"stripe\": {\"webhook_secrets\": [\"whsec_test\", \"whsec_next\"], "
      "\"prices\": {\"price_pro\": \"professional\", \"price_start\": "
      "\"starter\"}}}";
  char errstr[256];
  config = tly_config_load_text(text, strlen(text), errstr, sizeof(errstr));
  return config ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  tly_config_free(config);
  return 0;
}

/* "t=<t>,v1=<signature with secret>" for body. */
static void sign(const char *secret, long long t, const char *body, char *out,
                 size_t size) {
  char hex[TLY_STRIPE_SIGNATURE_HEX_LEN + 1];
  tly_stripe_signature_compute(secret, t, body, strlen(body), hex);
  snprintf(out, size, "t=%lld,v1=%s", t, hex);
}

static void test_signature_matches_openssl(void **state) {
  (void)state;
  char hex[TLY_STRIPE_SIGNATURE_HEX_LEN + 1];
  /* printf '%s' '1700000000.{"id":"evt_1"}' | openssl dgst -sha256 -hmac
   * whsec_test */
  tly_stripe_signature_compute("whsec_test", 1700000000, "{\"id\":\"evt_1\"}",
                               14, hex);
  assert_string_equal(
      hex, "c89214b5b5da833daed6f0b8c5bb6bd58cea9022bd80ccc78230f3942d632925");
}

static void expect_refused(const char *header, const char *body, int status,
                           const char *code) {
  tly_req_error_t err;
  memset(&err, 0, sizeof(err));
  int rc = tly_stripe_signature_verify(&config->stripe, header, body,
                                       strlen(body), NOW_S, &err);
  if (rc == 0)
    fail_msg("accepted: %s", header ? header : "(none)");
  if (err.status != status || strcmp(err.code, code) != 0)
    fail_msg("%s: got %d %s (%s), wanted %d %s", header ? header : "(none)",
             err.status, err.code, err.message, status, code);
}

static void test_signature_verification(void **state) {
  (void)state;
  const char *body = "{\"id\":\"evt_1\"}";
  char header[512], other[TLY_STRIPE_SIGNATURE_HEX_LEN + 1];
  tly_req_error_t err;

  sign("whsec_test", NOW_S, body, header, sizeof(header));
  assert_int_equal(tly_stripe_signature_verify(&config->stripe, header, body,
                                               strlen(body), NOW_S, &err),
                   0);
  /* The second secret (rotation), as the second v1 of the header. */
  tly_stripe_signature_compute("whsec_next", NOW_S, body, strlen(body), other);
  snprintf(header, sizeof(header), "t=%lld,v1=%064d,v1=%s,v0=deadbeef", NOW_S,
           0, other);
  assert_int_equal(tly_stripe_signature_verify(&config->stripe, header, body,
                                               strlen(body), NOW_S, &err),
                   0);
  /* Spaces around items are tolerated. */
  snprintf(header, sizeof(header), " t=%lld , v1=%s ", NOW_S, other);
  assert_int_equal(tly_stripe_signature_verify(&config->stripe, header, body,
                                               strlen(body), NOW_S, &err),
                   0);
  /* Within the tolerance both ways. */
  sign("whsec_test", NOW_S - 300, body, header, sizeof(header));
  assert_int_equal(tly_stripe_signature_verify(&config->stripe, header, body,
                                               strlen(body), NOW_S, &err),
                   0);
  sign("whsec_test", NOW_S + 300, body, header, sizeof(header));
  assert_int_equal(tly_stripe_signature_verify(&config->stripe, header, body,
                                               strlen(body), NOW_S, &err),
                   0);

  expect_refused(NULL, body, 400, "missing_signature");
  expect_refused("", body, 400, "missing_signature");
  expect_refused("garbage", body, 400, "malformed_signature");
  expect_refused("v1=abc", body, 400, "malformed_signature");
  snprintf(header, sizeof(header), "t=%lld", NOW_S);
  expect_refused(header, body, 400, "malformed_signature");
  expect_refused("t=12x,v1=00", body, 400, "malformed_signature");
  snprintf(header, sizeof(header), "t=1,t=2,v1=%s", other);
  expect_refused(header, body, 400, "malformed_signature");
  /* Tampered body, wrong secret, stale and future stamps. */
  sign("whsec_test", NOW_S, body, header, sizeof(header));
  expect_refused(header, "{\"id\":\"evt_2\"}", 400, "signature_mismatch");
  sign("whsec_other", NOW_S, body, header, sizeof(header));
  expect_refused(header, body, 400, "signature_mismatch");
  sign("whsec_test", NOW_S - 301, body, header, sizeof(header));
  expect_refused(header, body, 400, "timestamp_outside_tolerance");
  sign("whsec_test", NOW_S + 301, body, header, sizeof(header));
  expect_refused(header, body, 400, "timestamp_outside_tolerance");
  /* A signature over another timestamp does not match this one. */
  char hex[TLY_STRIPE_SIGNATURE_HEX_LEN + 1];
  tly_stripe_signature_compute("whsec_test", NOW_S, body, strlen(body), hex);
  snprintf(header, sizeof(header), "t=%lld,v1=%s", NOW_S + 1, hex);
  expect_refused(header, body, 400, "signature_mismatch");

  /* No secret configured: 503, so Stripe keeps retrying. */
  tly_stripe_config_t none = config->stripe;
  none.webhook_secret_count = 0;
  assert_int_equal(tly_stripe_signature_verify(&none, header, body,
                                               strlen(body), NOW_S, &err),
                   -1);
  assert_int_equal(err.status, 503);
}

/* Signs body now and parses it. */
static tly_stripe_webhook_result_t parse(const char *body, tly_event_t *event,
                                         tly_stripe_webhook_info_t *info,
                                         tly_req_error_t *err) {
  char header[512];
  sign("whsec_test", NOW_S, body, header, sizeof(header));
  return tly_stripe_webhook_parse(config, header, body, strlen(body),
                                  NOW_S * 1000 + 123, event, info, err);
}

static void expect_event(const char *body, tly_event_t *event) {
  tly_stripe_webhook_info_t info;
  tly_req_error_t err;
  tly_stripe_webhook_result_t result = parse(body, event, &info, &err);
  if (result != TLY_STRIPE_WEBHOOK_EVENT)
    fail_msg("not mapped (%d): %s %s", (int)result, err.code, err.message);
}

static void expect_error(const char *body, const char *code,
                         const char *in_message) {
  tly_event_t event;
  tly_stripe_webhook_info_t info;
  tly_req_error_t err;
  if (parse(body, &event, &info, &err) != TLY_STRIPE_WEBHOOK_ERROR)
    fail_msg("accepted: %s", body);
  assert_int_equal(err.status, 400);
  if (strcmp(err.code, code) != 0 || !strstr(err.message, in_message))
    fail_msg("%s: got %s (%s)", body, err.code, err.message);
  assert_null(event.event_id);
}

static void test_subscription_changed(void **state) {
  (void)state;
  tly_event_t event;
  /* An older API version: the period on the subscription; the first item
   * is a metered price that maps to no plan. */
  expect_event(
      "{\"id\": \"evt_sub1\", \"type\": \"customer.subscription.updated\", "
      "\"created\": 1799999990, \"data\": {\"object\": {\"id\": \"sub_1\", "
      "\"metadata\": {\"tally_subject\": \"user:42\"}, "
      "\"current_period_start\": 1798761600, \"current_period_end\": "
      "1801440000, \"items\": {\"data\": [{\"price\": {\"id\": "
      "\"price_metered\"}}, {\"price\": {\"id\": \"price_pro\"}}]}}}}",
      &event);
  assert_string_equal(event.event_id, "evt_sub1");
  assert_int_equal(event.occurred_at_ms, 1799999990000LL);
  assert_int_equal(event.subject_kind, TLY_SUBJECT_USER);
  assert_string_equal(event.subject_id, "42");
  assert_int_equal(event.body_kind, TLY_BODY_SUBSCRIPTION_CHANGED);
  assert_string_equal(event.body.subscription_changed.plan, "professional");
  assert_string_equal(event.body.subscription_changed.stripe_price_id,
                      "price_pro");
  assert_string_equal(event.body.subscription_changed.stripe_subscription_id,
                      "sub_1");
  assert_int_equal(event.body.subscription_changed.period_start_ms,
                   1798761600000LL);
  assert_int_equal(event.body.subscription_changed.period_end_ms,
                   1801440000000LL);
  tly_event_clear(&event);

  /* A newer API version: the period on the item; a bare id is a user. */
  expect_event(
      "{\"id\": \"evt_sub2\", \"type\": \"customer.subscription.created\", "
      "\"created\": 1799999991, \"data\": {\"object\": {\"id\": \"sub_2\", "
      "\"metadata\": {\"tally_subject\": \"alice\"}, \"items\": {\"data\": "
      "[{\"price\": {\"id\": \"price_start\"}, \"current_period_start\": "
      "1798000000, \"current_period_end\": 1800000000}]}}}}",
      &event);
  assert_string_equal(event.subject_id, "alice");
  assert_string_equal(event.body.subscription_changed.plan, "starter");
  assert_int_equal(event.body.subscription_changed.period_start_ms,
                   1798000000000LL);
  assert_int_equal(event.body.subscription_changed.period_end_ms,
                   1800000000000LL);
  tly_event_clear(&event);

  /* No period: 0 (unknown), the fold keeps its own cycle. */
  expect_event(
      "{\"id\": \"evt_sub3\", \"type\": \"customer.subscription.updated\", "
      "\"created\": 1799999991, \"data\": {\"object\": {\"id\": \"sub_3\", "
      "\"metadata\": {\"tally_subject\": \"user:b\"}, \"items\": {\"data\": "
      "[{\"price\": {\"id\": \"price_start\"}}]}}}}",
      &event);
  assert_int_equal(event.body.subscription_changed.period_start_ms, 0);
  assert_int_equal(event.body.subscription_changed.period_end_ms, 0);
  tly_event_clear(&event);

  expect_error(
      "{\"id\": \"evt_x\", \"type\": \"customer.subscription.updated\", "
      "\"created\": 1799999991, \"data\": {\"object\": {\"id\": \"sub_3\", "
      "\"metadata\": {\"tally_subject\": \"user:b\"}, \"items\": {\"data\": "
      "[{\"price\": {\"id\": \"price_gold\"}}]}}}}",
      "unknown_price", "price_gold");
  expect_error(
      "{\"id\": \"evt_x\", \"type\": \"customer.subscription.updated\", "
      "\"created\": 1799999991, \"data\": {\"object\": {\"id\": \"sub_3\", "
      "\"items\": {\"data\": [{\"price\": {\"id\": \"price_pro\"}}]}}}}",
      "missing_subject", "sub_3");
  expect_error(
      "{\"id\": \"evt_x\", \"type\": \"customer.subscription.updated\", "
      "\"created\": 1799999991, \"data\": {\"object\": {\"id\": \"sub_3\", "
      "\"metadata\": {\"tally_subject\": \"system:tick\"}, \"items\": "
      "{\"data\": [{\"price\": {\"id\": \"price_pro\"}}]}}}}",
      "bad_subject", "system");
}

static void test_canceled_invoices_and_customers(void **state) {
  (void)state;
  tly_event_t event;
  expect_event(
      "{\"id\": \"evt_del\", \"type\": \"customer.subscription.deleted\", "
      "\"created\": 1799999992, \"data\": {\"object\": {\"id\": \"sub_1\", "
      "\"metadata\": {\"tally_subject\": \"user:42\"}, "
      "\"cancellation_details\": {\"reason\": \"cancellation_requested\"}}}}",
      &event);
  assert_int_equal(event.body_kind, TLY_BODY_SUBSCRIPTION_CANCELED);
  assert_string_equal(event.body.subscription_canceled.stripe_subscription_id,
                      "sub_1");
  assert_string_equal(event.body.subscription_canceled.reason,
                      "cancellation_requested");
  tly_event_clear(&event);

  /* The subject from the subscription's metadata (newer API: parent); the
   * period from the subscription line, not the invoice's own (which looks
   * back one period) nor the proration line. */
  expect_event(
      "{\"id\": \"evt_paid\", \"type\": \"invoice.paid\", \"created\": "
      "1799999993, \"data\": {\"object\": {\"id\": \"in_1\", \"currency\": "
      "\"usd\", \"amount_paid\": 4900, \"period_start\": 1796083200, "
      "\"period_end\": 1798761600, \"parent\": {\"subscription_details\": "
      "{\"metadata\": {\"tally_subject\": \"user:42\"}}}, \"lines\": "
      "{\"data\": [{\"period\": {\"start\": 1798000000, \"end\": 1798500000}, "
      "\"parent\": {\"type\": \"subscription_item_details\", "
      "\"subscription_item_details\": {\"proration\": true}}}, {\"period\": "
      "{\"start\": 1798761600, \"end\": 1801440000}, \"parent\": {\"type\": "
      "\"subscription_item_details\", \"subscription_item_details\": "
      "{\"proration\": false}}}]}}}}",
      &event);
  assert_int_equal(event.body_kind, TLY_BODY_INVOICE_PAID);
  assert_string_equal(event.body.invoice_paid.invoice_id, "in_1");
  assert_int_equal(event.body.invoice_paid.amount_paid_micros, 49000000);
  assert_int_equal(event.body.invoice_paid.period_start_ms, 1798761600000LL);
  assert_int_equal(event.body.invoice_paid.period_end_ms, 1801440000000LL);
  tly_event_clear(&event);

  /* Older API: subscription_details, line type "subscription"; yen. */
  expect_event(
      "{\"id\": \"evt_paid2\", \"type\": \"invoice.paid\", \"created\": "
      "1799999993, \"data\": {\"object\": {\"id\": \"in_2\", \"currency\": "
      "\"JPY\", \"amount_paid\": 980, \"subscription_details\": "
      "{\"metadata\": {\"tally_subject\": \"user:7\"}}, \"lines\": {\"data\": "
      "[{\"type\": \"subscription\", \"proration\": false, \"period\": "
      "{\"start\": 1798761600, \"end\": 1801440000}}]}}}}",
      &event);
  assert_int_equal(event.body.invoice_paid.amount_paid_micros, 980000000);
  assert_int_equal(event.body.invoice_paid.period_end_ms, 1801440000000LL);
  tly_event_clear(&event);

  expect_event(
      "{\"id\": \"evt_fail\", \"type\": \"invoice.payment_failed\", "
      "\"created\": 1799999994, \"data\": {\"object\": {\"id\": \"in_3\", "
      "\"currency\": \"kwd\", \"amount_due\": 1500, \"attempt_count\": 2, "
      "\"metadata\": {\"tally_subject\": \"user:42\"}}}}",
      &event);
  assert_int_equal(event.body_kind, TLY_BODY_PAYMENT_FAILED);
  assert_string_equal(event.body.payment_failed.invoice_id, "in_3");
  assert_int_equal(event.body.payment_failed.amount_due_micros, 1500000);
  assert_int_equal(event.body.payment_failed.attempt, 2);
  tly_event_clear(&event);

  expect_event("{\"id\": \"evt_cus\", \"type\": \"customer.created\", "
               "\"created\": 1799999995, \"data\": {\"object\": {\"id\": "
               "\"cus_1\", \"metadata\": {\"tally_subject\": \"user:42\"}}}}",
               &event);
  assert_int_equal(event.body_kind, TLY_BODY_CUSTOMER_LINKED);
  assert_string_equal(event.body.customer_linked.stripe_customer_id, "cus_1");
  tly_event_clear(&event);

  expect_error("{\"id\": \"evt_x\", \"type\": \"invoice.paid\", \"created\": "
               "1799999993, \"data\": {\"object\": {\"id\": \"in_1\", "
               "\"amount_paid\": -1, \"metadata\": {\"tally_subject\": "
               "\"u\"}}}}",
               "bad_payload", "amount_paid");
  expect_error("{\"id\": \"evt_x\", \"type\": \"invoice.paid\", \"created\": "
               "1799999993, \"data\": {\"object\": {\"id\": \"in_1\", "
               "\"amount_paid\": 1}}}",
               "missing_subject", "in_1");
}

static void test_ignored_and_bad_payloads(void **state) {
  (void)state;
  tly_event_t event;
  tly_stripe_webhook_info_t info;
  tly_req_error_t err;
  assert_int_equal(
      parse("{\"id\": \"evt_c\", \"type\": \"charge.succeeded\", \"created\": "
            "1799999995, \"data\": {\"object\": {\"id\": \"ch_1\"}}}",
            &event, &info, &err),
      TLY_STRIPE_WEBHOOK_IGNORED);
  assert_string_equal(info.type, "charge.succeeded");
  assert_string_equal(info.event_id, "evt_c");
  json_t *answer = tly_stripe_webhook_answer(NULL, &info);
  assert_true(json_is_true(json_object_get(answer, "ignored")));
  json_decref(answer);
  /* A customer that is not tally's. */
  assert_int_equal(parse("{\"id\": \"evt_c\", \"type\": \"customer.updated\", "
                         "\"created\": 1799999995, \"data\": {\"object\": "
                         "{\"id\": \"cus_9\", \"metadata\": {}}}}",
                         &event, &info, &err),
                   TLY_STRIPE_WEBHOOK_IGNORED);
  assert_null(event.event_id);

  expect_error("not json", "bad_payload", "not JSON");
  expect_error("{\"type\": \"invoice.paid\", \"created\": 1, \"data\": "
               "{\"object\": {}}}",
               "bad_payload", "id");
  expect_error("{\"id\": \"evt_1\", \"created\": 1, \"data\": {\"object\": "
               "{}}}",
               "bad_payload", "type");
  expect_error("{\"id\": \"evt_1\", \"type\": \"invoice.paid\", \"created\": "
               "\"soon\", \"data\": {\"object\": {}}}",
               "bad_payload", "created");
  expect_error("{\"id\": \"evt_1\", \"type\": \"invoice.paid\", \"created\": "
               "1, \"data\": {\"object\": []}}",
               "bad_payload", "data.object");

  /* The signature is checked before anything is parsed. */
  assert_int_equal(tly_stripe_webhook_parse(config, "t=1,v1=00", "{}", 2,
                                            NOW_S * 1000, &event, &info, &err),
                   TLY_STRIPE_WEBHOOK_ERROR);
  assert_string_equal(err.code, "malformed_signature");
}

static void test_amounts(void **state) {
  (void)state;
  assert_int_equal(tly_stripe_amount_micros(1, "usd"), 10000);
  assert_int_equal(tly_stripe_amount_micros(1, "EUR"), 10000);
  assert_int_equal(tly_stripe_amount_micros(1, NULL), 10000);
  assert_int_equal(tly_stripe_amount_micros(1, "jpy"), 1000000);
  assert_int_equal(tly_stripe_amount_micros(1, "bhd"), 1000);
  assert_int_equal(tly_stripe_amount_micros(-1, "usd"), -1);
  assert_int_equal(tly_stripe_amount_micros(INT64_MAX / 10000 + 1, "usd"), -1);
}

static void test_portal_answers(void **state) {
  (void)state;
  int status;
  json_t *answer = tly_stripe_portal_result(
      200, "{\"id\": \"bps_1\", \"url\": \"https://billing.test/p/1\"}", NULL,
      &status);
  assert_int_equal(status, 200);
  assert_string_equal(json_string_value(json_object_get(answer, "url")),
                      "https://billing.test/p/1");
  assert_string_equal(json_string_value(json_object_get(answer, "id")),
                      "bps_1");
  json_decref(answer);

  answer = tly_stripe_portal_result(
      400,
      "{\"error\": {\"type\": \"invalid_request_error\", \"message\": "
      "\"No such customer: 'cus_x'\"}}",
      NULL, &status);
  assert_int_equal(status, 502);
  json_t *error = json_object_get(answer, "error");
  assert_string_equal(json_string_value(json_object_get(error, "code")),
                      "stripe_error");
  assert_non_null(strstr(json_string_value(json_object_get(error, "message")),
                         "No such customer"));
  assert_int_equal(json_integer_value(json_object_get(error, "stripe_status")),
                   400);
  json_decref(answer);

  /* A 200 without a URL is no session; no answer at all is a 502 too. */
  answer = tly_stripe_portal_result(200, "{}", NULL, &status);
  assert_int_equal(status, 502);
  json_decref(answer);
  answer = tly_stripe_portal_result(0, NULL, "Timeout was reached", &status);
  assert_int_equal(status, 502);
  assert_string_equal(json_string_value(json_object_get(
                          json_object_get(answer, "error"), "code")),
                      "stripe_unavailable");
  json_decref(answer);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_signature_matches_openssl),
      cmocka_unit_test(test_signature_verification),
      cmocka_unit_test(test_subscription_changed),
      cmocka_unit_test(test_canceled_invoices_and_customers),
      cmocka_unit_test(test_ignored_and_bad_payloads),
      cmocka_unit_test(test_amounts),
      cmocka_unit_test(test_portal_answers),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
