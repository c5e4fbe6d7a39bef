/*
 * test_stripe_fake.c - the Stripe-shaped test server (tests/stripe_fake)
 * does what its header promises, since the webhook, portal and reporting
 * tests rely on it: bearer auth, form decoding with bracket keys, required
 * parameters, the meter event timestamp window, unknown customers,
 * duplicate identifiers, Idempotency-Key replay and mismatch, and each
 * injectable fault. It is driven through tally's own Stripe client
 * (producers/tly_stripe_client.c), so the client's encoding, headers and
 * reading of Retry-After / Stripe-Should-Retry / Idempotent-Replayed are
 * checked on the same wire.
 */
#include "harness.h"
#include "stripe_fake.h"

#include "tly_stripe_client.h"

#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

static th_stripe_fake_t fake;
static tly_stripe_client_t *client;

static tly_stripe_client_t *new_client(const char *key, long timeout_ms) {
  char base[64], errstr[256];
  snprintf(base, sizeof(base), "http://127.0.0.1:%d", fake.port);
  tly_stripe_client_conf_t conf = {.api_base = base,
                                   .secret_key = key,
                                   .api_version = "2024-06-20",
                                   .timeout_ms = timeout_ms};
  tly_stripe_client_t *made =
      tly_stripe_client_new(&conf, errstr, sizeof(errstr));
  if (!made)
    fail_msg("%s", errstr);
  return made;
}

static int setup(void **state) {
  (void)state;
  if (th_stripe_fake_start(&fake))
    return -1;
  client = new_client(fake.secret_key, 5000);
  return th_stripe_fake_add_customer(&fake, "cus_a") ||
         th_stripe_fake_add_customer(&fake, "cus_b");
}

static int teardown(void **state) {
  (void)state;
  tly_stripe_client_destroy(client);
  th_stripe_fake_stop(&fake);
  return 0;
}

/* A meter event through the client. */
static int meter_event(tly_stripe_client_t *with, const char *customer,
                       const char *event_name, const char *value,
                       const char *identifier, long long timestamp,
                       const char *idempotency_key,
                       tly_stripe_response_t *out) {
  char ts[32];
  snprintf(ts, sizeof(ts), "%lld", timestamp);
  tly_stripe_param_t params[] = {
      {"event_name", event_name}, {"payload[stripe_customer_id]", customer},
      {"payload[value]", value},  {"identifier", identifier},
      {"timestamp", ts},
  };
  return tly_stripe_post(with, "/v1/billing/meter_events", params,
                         identifier ? 5 : 2 + (value != NULL), idempotency_key,
                         out);
}

static json_t *error_of(const tly_stripe_response_t *response) {
  json_t *json = json_loads(response->body, 0, NULL);
  json_t *error = json_object_get(json, "error");
  json_incref(error);
  json_decref(json);
  return error;
}

static void expect_error(const tly_stripe_response_t *response, long status,
                         const char *type, const char *code,
                         const char *param_name) {
  assert_int_equal(response->status, status);
  json_t *error = error_of(response);
  assert_non_null(error);
  assert_string_equal(json_string_value(json_object_get(error, "type")), type);
  if (code)
    assert_string_equal(json_string_value(json_object_get(error, "code")),
                        code);
  if (param_name)
    assert_string_equal(json_string_value(json_object_get(error, "param")),
                        param_name);
  json_decref(error);
}

static void fault(const char *json) {
  assert_int_equal(th_stripe_fake_fault(&fake, json), 0);
}

static void test_form_encoding(void **state) {
  (void)state;
  tly_stripe_param_t params[] = {{"payload[stripe_customer_id]", "cus_a"},
                                 {"return_url", "https://x.test/a b?c=d&e"}};
  char *form = tly_stripe_form_encode(params, 2);
  assert_string_equal(form, "payload%5Bstripe_customer_id%5D=cus_a&return_url="
                            "https%3A%2F%2Fx.test%2Fa%20b%3Fc%3Dd%26e");
  free(form);
}

static void test_auth(void **state) {
  (void)state;
  tly_stripe_response_t response;
  tly_stripe_client_t *wrong = new_client("sk_test_wrong", 5000);
  assert_int_equal(meter_event(wrong, "cus_a", "api", "1", "auth-1",
                               (long long)time(NULL), NULL, &response),
                   0);
  expect_error(&response, 401, "invalid_request_error", NULL, NULL);
  tly_stripe_response_clear(&response);
  tly_stripe_client_destroy(wrong);

  long status;
  char *text = NULL;
  const char *body = "event_name=api";
  assert_int_equal(th_http_request(fake.port, "POST",
                                   "/v1/billing/meter_events", NULL, body,
                                   strlen(body), NULL, &status, &text),
                   0);
  assert_int_equal(status, 401);
  assert_non_null(strstr(text, "You did not provide an API key"));
  free(text);
  assert_int_equal(th_stripe_fake_sum(&fake, "cus_a", "api"), 0);
}

static void test_required_parameters_and_bracket_keys(void **state) {
  (void)state;
  tly_stripe_response_t response;
  tly_stripe_param_t no_name[] = {{"payload[stripe_customer_id]", "cus_a"},
                                  {"payload[value]", "1"}};
  assert_int_equal(tly_stripe_post(client, "/v1/billing/meter_events", no_name,
                                   2, NULL, &response),
                   0);
  expect_error(&response, 400, "invalid_request_error", "parameter_missing",
               "event_name");
  tly_stripe_response_clear(&response);
  assert_int_equal(
      meter_event(client, "cus_a", "api", NULL, NULL, 0, NULL, &response), 0);
  expect_error(&response, 400, "invalid_request_error", "parameter_missing",
               "payload[value]");
  tly_stripe_response_clear(&response);
  assert_int_equal(meter_event(client, "cus_a", "api", "1.5", "bad-value",
                               (long long)time(NULL), NULL, &response),
                   0);
  expect_error(&response, 400, "invalid_request_error",
               "parameter_invalid_integer", "payload[value]");
  tly_stripe_response_clear(&response);

  /* Unencoded brackets and '+' for a space decode too. */
  char auth[128], *text = NULL;
  long status;
  snprintf(auth, sizeof(auth), "Bearer %s", fake.secret_key);
  const char *body = "event_name=raw+api&payload[stripe_customer_id]=cus_a&"
                     "payload[value]=7&identifier=raw-1";
  assert_int_equal(th_http_request(fake.port, "POST",
                                   "/v1/billing/meter_events", auth, body,
                                   strlen(body), NULL, &status, &text),
                   0);
  assert_int_equal(status, 200);
  json_t *event = json_loads(text, 0, NULL);
  free(text);
  assert_string_equal(
      json_string_value(json_object_get(json_object_get(event, "payload"),
                                        "stripe_customer_id")),
      "cus_a");
  json_decref(event);
  assert_int_equal(th_stripe_fake_sum(&fake, "cus_a", "raw api"), 7);
}

static void test_meter_events_window_customers_duplicates(void **state) {
  (void)state;
  tly_stripe_response_t response;
  long long now = (long long)time(NULL);
  assert_int_equal(meter_event(client, "cus_a", "calls", "5", "w-ok",
                               now - 34 * 86400, NULL, &response),
                   0);
  assert_int_equal(response.status, 200);
  assert_non_null(strstr(response.body, "\"identifier\":\"w-ok\""));
  tly_stripe_response_clear(&response);
  assert_int_equal(meter_event(client, "cus_a", "calls", "5", "w-old",
                               now - 36 * 86400, NULL, &response),
                   0);
  expect_error(&response, 400, "invalid_request_error",
               "timestamp_too_far_in_past", "timestamp");
  tly_stripe_response_clear(&response);
  assert_int_equal(meter_event(client, "cus_a", "calls", "5", "w-future",
                               now + 600, NULL, &response),
                   0);
  expect_error(&response, 400, "invalid_request_error", "timestamp_in_future",
               "timestamp");
  tly_stripe_response_clear(&response);
  assert_int_equal(meter_event(client, "cus_nobody", "calls", "5", "w-who", now,
                               NULL, &response),
                   0);
  expect_error(&response, 400, "invalid_request_error", "resource_missing",
               "payload[stripe_customer_id]");
  tly_stripe_response_clear(&response);

  /* The same identifier again: refused as Stripe does, never counted. */
  assert_int_equal(
      meter_event(client, "cus_a", "calls", "5", "w-ok", now, NULL, &response),
      0);
  expect_error(&response, 400, "invalid_request_error", NULL, NULL);
  assert_non_null(
      strstr(response.body, "An event already exists with identifier w-ok"));
  assert_int_equal(response.should_retry, 0);
  tly_stripe_response_clear(&response);
  assert_int_equal(th_stripe_fake_sum(&fake, "cus_a", "calls"), 5);
}

static void test_idempotency_key(void **state) {
  (void)state;
  tly_stripe_response_t first, again, other;
  long long now = (long long)time(NULL);
  assert_int_equal(
      meter_event(client, "cus_b", "idem", "3", "i-1", now, "key-1", &first),
      0);
  assert_int_equal(first.status, 200);
  assert_int_equal(first.idempotent_replayed, 0);
  assert_int_equal(
      meter_event(client, "cus_b", "idem", "3", "i-1", now, "key-1", &again),
      0);
  assert_int_equal(again.status, 200);
  assert_int_equal(again.idempotent_replayed, 1);
  assert_string_equal(again.body, first.body);
  assert_int_equal(
      meter_event(client, "cus_b", "idem", "4", "i-1", now, "key-1", &other),
      0);
  expect_error(&other, 400, "idempotency_error", NULL, NULL);
  assert_int_equal(th_stripe_fake_sum(&fake, "cus_b", "idem"), 3);
  tly_stripe_response_clear(&first);
  tly_stripe_response_clear(&again);
  tly_stripe_response_clear(&other);

  /* A refused parameter check is not kept: the fixed request goes through
   * under the same key. */
  assert_int_equal(
      meter_event(client, "cus_b", "idem", "x", "i-2", now, "key-2", &first),
      0);
  assert_int_equal(first.status, 400);
  assert_int_equal(
      meter_event(client, "cus_b", "idem", "2", "i-2", now, "key-2", &again),
      0);
  assert_int_equal(again.status, 200);
  assert_int_equal(again.idempotent_replayed, 0);
  tly_stripe_response_clear(&first);
  tly_stripe_response_clear(&again);
  assert_int_equal(th_stripe_fake_sum(&fake, "cus_b", "idem"), 5);
}

static void test_faults(void **state) {
  (void)state;
  tly_stripe_response_t response;
  long long now = (long long)time(NULL);

  fault("{\"count\": 1, \"status\": 429, \"retry_after_s\": 2}");
  assert_int_equal(meter_event(client, "cus_a", "faults", "1", "f-1", now,
                               "fk-1", &response),
                   0);
  expect_error(&response, 429, "invalid_request_error", "rate_limit", NULL);
  assert_int_equal(response.retry_after_s, 2);
  tly_stripe_response_clear(&response);

  fault("{\"count\": 2, \"status\": 500, \"should_retry\": true}");
  for (int i = 0; i < 2; i++) {
    assert_int_equal(meter_event(client, "cus_a", "faults", "1", "f-1", now,
                                 "fk-1", &response),
                     0);
    expect_error(&response, 500, "api_error", NULL, NULL);
    assert_int_equal(response.should_retry, 1);
    tly_stripe_response_clear(&response);
  }
  fault("{\"count\": 1, \"status\": 503, \"should_retry\": false}");
  assert_int_equal(meter_event(client, "cus_a", "faults", "1", "f-1", now,
                               "fk-1", &response),
                   0);
  assert_int_equal(response.status, 503);
  assert_int_equal(response.should_retry, 0);
  tly_stripe_response_clear(&response);
  /* None of those ran the endpoint: the key is still fresh. */
  assert_int_equal(th_stripe_fake_sum(&fake, "cus_a", "faults"), 0);

  /* A hang past the client's time limit: no answer, nothing applied. */
  tly_stripe_client_t *quick = new_client(fake.secret_key, 300);
  fault("{\"count\": 1, \"hang_ms\": 1500}");
  int64_t started = th_now_ms();
  assert_int_equal(
      meter_event(quick, "cus_a", "faults", "1", "f-1", now, "fk-1", &response),
      -1);
  assert_true(response.timed_out);
  assert_true(th_now_ms() - started < 1400);
  tly_stripe_response_clear(&response);
  tly_stripe_client_destroy(quick);
  assert_int_equal(th_stripe_fake_sum(&fake, "cus_a", "faults"), 0);

  /* Applied, then the connection dropped: the client has no answer, the
   * ledger has the event, and the retry with the same key is replayed. */
  fault("{\"count\": 1, \"drop_after_apply\": true}");
  assert_int_equal(meter_event(client, "cus_a", "faults", "1", "f-1", now,
                               "fk-1", &response),
                   -1);
  assert_int_equal(response.status, 0);
  tly_stripe_response_clear(&response);
  assert_int_equal(th_stripe_fake_sum(&fake, "cus_a", "faults"), 1);
  assert_int_equal(meter_event(client, "cus_a", "faults", "1", "f-1", now,
                               "fk-1", &response),
                   0);
  assert_int_equal(response.status, 200);
  assert_int_equal(response.idempotent_replayed, 1);
  tly_stripe_response_clear(&response);
  /* Without the key, the identifier still guards it. */
  assert_int_equal(
      meter_event(client, "cus_a", "faults", "1", "f-1", now, NULL, &response),
      0);
  assert_int_equal(response.status, 400);
  tly_stripe_response_clear(&response);
  assert_int_equal(th_stripe_fake_sum(&fake, "cus_a", "faults"), 1);

  /* A fault for one path leaves the others alone. */
  fault("{\"count\": 1, \"status\": 500, \"path\": "
        "\"/v1/billing_portal/sessions\"}");
  assert_int_equal(
      meter_event(client, "cus_a", "faults", "2", "f-2", now, NULL, &response),
      0);
  assert_int_equal(response.status, 200);
  tly_stripe_response_clear(&response);
  tly_stripe_param_t portal[] = {{"customer", "cus_a"}};
  assert_int_equal(tly_stripe_post(client, "/v1/billing_portal/sessions",
                                   portal, 1, NULL, &response),
                   0);
  assert_int_equal(response.status, 500);
  tly_stripe_response_clear(&response);
}

static void test_portal_sessions_and_request_log(void **state) {
  (void)state;
  tly_stripe_response_t response;
  tly_stripe_param_t missing[] = {{"return_url", "https://app.test/"}};
  assert_int_equal(tly_stripe_post(client, "/v1/billing_portal/sessions",
                                   missing, 1, NULL, &response),
                   0);
  expect_error(&response, 400, "invalid_request_error", "parameter_missing",
               "customer");
  tly_stripe_response_clear(&response);
  tly_stripe_param_t unknown[] = {{"customer", "cus_zzz"}};
  assert_int_equal(tly_stripe_post(client, "/v1/billing_portal/sessions",
                                   unknown, 1, NULL, &response),
                   0);
  expect_error(&response, 400, "invalid_request_error", "resource_missing",
               "customer");
  tly_stripe_response_clear(&response);
  tly_stripe_param_t good[] = {{"customer", "cus_b"},
                               {"return_url", "https://app.test/billing"}};
  assert_int_equal(tly_stripe_post(client, "/v1/billing_portal/sessions", good,
                                   2, NULL, &response),
                   0);
  assert_int_equal(response.status, 200);
  assert_true(response.request_id[0] != '\0');
  json_t *session = json_loads(response.body, 0, NULL);
  assert_string_equal(json_string_value(json_object_get(session, "object")),
                      "billing_portal.session");
  assert_non_null(strstr(json_string_value(json_object_get(session, "url")),
                         "/p/session/bps_"));
  json_decref(session);
  tly_stripe_response_clear(&response);

  /* The last request as the fake saw it: version header, decoded form. */
  json_t *last = th_stripe_fake_last_request(&fake);
  assert_non_null(last);
  assert_string_equal(json_string_value(json_object_get(last, "path")),
                      "/v1/billing_portal/sessions");
  assert_string_equal(
      json_string_value(json_object_get(last, "stripe_version")), "2024-06-20");
  assert_true(json_is_true(json_object_get(last, "authorized")));
  assert_string_equal(json_string_value(json_object_get(
                          json_object_get(last, "params"), "return_url")),
                      "https://app.test/billing");
  json_decref(last);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_form_encoding),
      cmocka_unit_test(test_auth),
      cmocka_unit_test(test_required_parameters_and_bracket_keys),
      cmocka_unit_test(test_meter_events_window_customers_duplicates),
      cmocka_unit_test(test_idempotency_key),
      cmocka_unit_test(test_faults),
      cmocka_unit_test(test_portal_sessions_and_request_log),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
