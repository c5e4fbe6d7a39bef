/*
 * test_stripe_subs_rules.c - the pure parts of producers/tly_stripe_subs.h: when
 * a Stripe answer is retried, what a Stripe error becomes, the
 * deterministic Idempotency-Keys, the metadata search query, and an
 * invoice next to tally's closed cycle (matches_folded).
 */
#include "tly_stripe_subs.h"

#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

static tly_stripe_response_t answer(long status, int should_retry) {
  tly_stripe_response_t response = {0};
  response.status = status;
  response.should_retry = should_retry;
  response.retry_after_s = -1;
  return response;
}

static void test_retryable(void **state) {
  (void)state;
  assert_true(tly_stripe_subs_retryable(NULL)); /* no answer */
  tly_stripe_response_t r = answer(0, -1);
  assert_true(tly_stripe_subs_retryable(&r));
  r = answer(500, -1);
  assert_true(tly_stripe_subs_retryable(&r));
  r = answer(503, -1);
  assert_true(tly_stripe_subs_retryable(&r));
  r = answer(409, -1); /* idempotency_key_in_use */
  assert_true(tly_stripe_subs_retryable(&r));
  r = answer(429, -1);
  assert_true(tly_stripe_subs_retryable(&r));
  r = answer(400, -1);
  assert_false(tly_stripe_subs_retryable(&r));
  r = answer(200, -1);
  assert_false(tly_stripe_subs_retryable(&r));
  /* Stripe-Should-Retry decides when present. */
  r = answer(500, 0);
  assert_false(tly_stripe_subs_retryable(&r));
  r = answer(400, 1);
  assert_true(tly_stripe_subs_retryable(&r));
}

static void check_error(long stripe_status, const char *body, int status,
                        const char *code, const char *stripe_code,
                        const char *field) {
  int got;
  json_t *json = tly_stripe_subs_error(stripe_status, body, "timed out", &got);
  json_t *error = json_object_get(json, "error");
  assert_int_equal(got, status);
  assert_string_equal(json_string_value(json_object_get(error, "code")), code);
  const char *have = json_string_value(json_object_get(error, "stripe_code"));
  if (stripe_code)
    assert_string_equal(have, stripe_code);
  else
    assert_null(have);
  have = json_string_value(json_object_get(error, "field"));
  if (field)
    assert_string_equal(have, field);
  else
    assert_null(have);
  json_decref(json);
}

static void test_errors(void **state) {
  (void)state;
  check_error(0, NULL, 502, "stripe_unavailable", NULL, NULL);
  check_error(400,
              "{\"error\": {\"type\": \"invalid_request_error\", \"code\": "
              "\"resource_missing\", \"param\": \"customer\", \"message\": "
              "\"No such customer\"}}",
              400, "stripe_error", "resource_missing", "customer");
  check_error(404, "{\"error\": {\"type\": \"invalid_request_error\"}}", 404,
              "stripe_error", NULL, NULL);
  check_error(401, "{\"error\": {\"type\": \"invalid_request_error\"}}", 502,
              "stripe_error", NULL, NULL);
  check_error(429, "{\"error\": {\"code\": \"rate_limit\"}}", 503,
              "stripe_error", "rate_limit", NULL);
  check_error(500, "{\"error\": {\"type\": \"api_error\"}}", 502,
              "stripe_error", NULL, NULL);
  check_error(400,
              "{\"error\": {\"type\": \"idempotency_error\", \"message\": "
              "\"Keys for idempotent requests...\"}}",
              409, "idempotency_conflict", NULL, NULL);
  /* The message says what Stripe said. */
  int status;
  json_t *json = tly_stripe_subs_error(
      402, "{\"error\": {\"message\": \"Your card was declined.\"}}", NULL,
      &status);
  assert_int_equal(status, 402);
  assert_non_null(strstr(json_string_value(json_object_get(
                             json_object_get(json, "error"), "message")),
                         "Your card was declined."));
  json_decref(json);
}

static void test_keys(void **state) {
  (void)state;
  char a[256], b[256], c[256], d[256];
  const char *one[] = {"user:1", "cus_1", "pro"};
  const char *two[] = {"user:1", "cus_1", "starter"};
  const char *split1[] = {"ab", "c"};
  const char *split2[] = {"a", "bc"};
  tly_stripe_subs_key("subscribe", one, 3, a, sizeof(a));
  tly_stripe_subs_key("subscribe", one, 3, b, sizeof(b));
  assert_string_equal(a, b); /* deterministic: a retry repeats it */
  assert_int_equal(strncmp(a, "tally-subscribe-", 16), 0);
  assert_int_equal(strlen(a), 16 + 64);
  tly_stripe_subs_key("subscribe", two, 3, b, sizeof(b));
  assert_string_not_equal(a, b);
  tly_stripe_subs_key("change", one, 3, b, sizeof(b));
  assert_string_not_equal(a, b); /* another purpose, another key */
  tly_stripe_subs_key("x", split1, 2, c, sizeof(c));
  tly_stripe_subs_key("x", split2, 2, d, sizeof(d));
  assert_string_not_equal(c, d);
}

static void test_search_query(void **state) {
  (void)state;
  char out[128];
  tly_stripe_subs_search_query("user:42", out, sizeof(out));
  assert_string_equal(out, "metadata['tally_subject']:'user:42'");
  tly_stripe_subs_search_query("user:o'b\\x", out, sizeof(out));
  assert_string_equal(out, "metadata['tally_subject']:'user:o\\'b\\\\x'");
  /* Cut short, still terminated. */
  tly_stripe_subs_search_query("user:a-very-long-subject-id", out, 30);
  assert_true(strlen(out) < 30);
}

static void test_invoice_next_to_cycle(void **state) {
  (void)state;
  char errstr[256];
  static const char text[] =
      "{\"stripe\": {\"meters\": {\"api_calls\": \"api_requests\"}, "
      "\"plans\": {\"paid\": {\"prices\": {\"base\": \"price_paid\", "
      "\"metered\": {\"api_calls\": \"price_api\"}}}}}}";
  tly_config_t *config =
      tly_config_load_text(text, strlen(text), errstr, sizeof(errstr));
  if (!config)
    fail_msg("%s", errstr);
  /* 2024-06-20 lines (price.id) and 2025-03-31 ones (pricing). */
  json_t *invoice = json_loads(
      "{\"id\": \"in_1\", \"number\": \"A-1\", \"status\": \"paid\", "
      "\"currency\": \"usd\", \"total\": 3120, \"period_start\": 1000, "
      "\"period_end\": 2000, \"hosted_invoice_url\": \"https://h\", "
      "\"invoice_pdf\": \"https://p\", \"lines\": {\"has_more\": false, "
      "\"data\": [{\"amount\": 3000, \"price\": {\"id\": \"price_paid\"}}, "
      "{\"amount\": 100, \"price\": {\"id\": \"price_api\"}}, "
      "{\"amount\": 20, \"pricing\": {\"price_details\": {\"price\": "
      "\"price_api\"}}}]}}",
      0, NULL);
  assert_non_null(invoice);
  tly_cycle_t cycles[] = {{500000, 1000000, 999, 1},
                          {1000000, 2000000, 1200000, 7}};
  json_t *entry = tly_stripe_subs_invoice_json(config, invoice, cycles, 2);
  assert_int_equal(json_integer_value(json_object_get(entry, "metered_micros")),
                   1200000);
  assert_int_equal(json_integer_value(json_object_get(entry, "total_micros")),
                   31200000);
  assert_true(json_is_true(json_object_get(entry, "matches_folded")));
  assert_int_equal(json_integer_value(json_object_get(
                       json_object_get(entry, "folded"), "events")),
                   7);
  assert_string_equal(json_string_value(json_object_get(entry, "invoice_pdf")),
                      "https://p");
  json_decref(entry);

  cycles[1].cost_micros = 1190000; /* tally folded less: flagged */
  entry = tly_stripe_subs_invoice_json(config, invoice, cycles, 2);
  assert_true(json_is_false(json_object_get(entry, "matches_folded")));
  json_decref(entry);
  entry = tly_stripe_subs_invoice_json(config, invoice, cycles, 1);
  assert_true(json_is_null(json_object_get(entry, "matches_folded")));
  assert_true(json_is_null(json_object_get(entry, "folded")));
  json_decref(entry);
  /* Lines cut short by Stripe: no verdict. */
  json_object_set_new(json_object_get(invoice, "lines"), "has_more",
                      json_true());
  entry = tly_stripe_subs_invoice_json(config, invoice, cycles, 2);
  assert_true(json_is_null(json_object_get(entry, "matches_folded")));
  assert_true(json_is_null(json_object_get(entry, "metered_micros")));
  json_decref(entry);
  json_decref(invoice);
  tly_config_free(config);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_retryable),
      cmocka_unit_test(test_errors),
      cmocka_unit_test(test_keys),
      cmocka_unit_test(test_search_query),
      cmocka_unit_test(test_invoice_next_to_cycle),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
