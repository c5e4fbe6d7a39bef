/*
 * test_stripe_fake.c - the Stripe-shaped test server (tests/stripe_fake)
 * does what its header promises, since the webhook, portal and reporting
 * tests rely on it: bearer auth, form decoding with bracket keys, required
 * parameters, the meter event timestamp window, unknown customers,
 * duplicate identifiers, Idempotency-Key replay and mismatch, a stored 500
 * replayed with Stripe-Should-Retry: false, 409 idempotency_key_in_use
 * while the key's first request runs, meters and their event summaries,
 * the 24 hours of identifier and key uniqueness under a moved clock, and
 * each injectable fault. It is driven through tally's own Stripe client
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

/* A 500 kept for its key, replayed with Stripe-Should-Retry: false; a key
 * busy while its first request runs; what a fresh key with the same
 * identifier gets in both cases (Stripe's identifier dedupe). */
static void test_stored_500_and_key_in_use(void **state) {
  (void)state;
  tly_stripe_response_t response;
  long long now = (long long)time(NULL);

  fault("{\"status\": 500, \"apply\": true, \"customer\": \"cus_a\"}");
  assert_int_equal(meter_event(client, "cus_a", "stored", "6", "s-1", now,
                               "sk-1", &response),
                   0);
  expect_error(&response, 500, "api_error", NULL, NULL);
  assert_int_equal(response.idempotent_replayed, 0);
  tly_stripe_response_clear(&response);
  /* It ran: the event is in the ledger although the answer was a 500. */
  assert_int_equal(th_stripe_fake_sum(&fake, "cus_a", "stored"), 6);
  for (int i = 0; i < 2; i++) {
    assert_int_equal(meter_event(client, "cus_a", "stored", "6", "s-1", now,
                                 "sk-1", &response),
                     0);
    expect_error(&response, 500, "api_error", NULL, NULL);
    assert_int_equal(response.should_retry, 0);
    assert_int_equal(response.idempotent_replayed, 1);
    tly_stripe_response_clear(&response);
  }
  assert_int_equal(meter_event(client, "cus_a", "stored", "6", "s-1", now,
                               "sk-1-fresh", &response),
                   0);
  assert_int_equal(response.status, 400);
  assert_non_null(
      strstr(response.body, "An event already exists with identifier s-1"));
  tly_stripe_response_clear(&response);
  assert_int_equal(th_stripe_fake_sum(&fake, "cus_a", "stored"), 6);

  /* Still processing: the client gave up, the event is applied, and the
   * same key is 409 idempotency_key_in_use (not kept) until it is done. */
  tly_stripe_client_t *quick = new_client(fake.secret_key, 300);
  fault("{\"processing_ms\": 1500}");
  int64_t started = th_now_ms();
  assert_int_equal(
      meter_event(quick, "cus_a", "busy", "9", "b-1", now, "bk-1", &response),
      -1);
  tly_stripe_response_clear(&response);
  tly_stripe_client_destroy(quick);
  assert_int_equal(th_stripe_fake_sum(&fake, "cus_a", "busy"), 9);
  assert_int_equal(
      meter_event(client, "cus_a", "busy", "9", "b-1", now, "bk-1", &response),
      0);
  assert_true(th_now_ms() - started < 1500);
  expect_error(&response, 409, "idempotency_error", "idempotency_key_in_use",
               NULL);
  assert_int_equal(response.idempotent_replayed, 0);
  tly_stripe_response_clear(&response);
  assert_int_equal(meter_event(client, "cus_a", "busy", "9", "b-1", now,
                               "bk-1-fresh", &response),
                   0);
  assert_int_equal(response.status, 400);
  assert_non_null(
      strstr(response.body, "An event already exists with identifier b-1"));
  tly_stripe_response_clear(&response);
  th_sleep_ms(1600 - (int)(th_now_ms() - started));
  assert_int_equal(
      meter_event(client, "cus_a", "busy", "9", "b-1", now, "bk-1", &response),
      0);
  assert_int_equal(response.status, 200);
  assert_int_equal(response.idempotent_replayed, 1);
  tly_stripe_response_clear(&response);
  assert_int_equal(th_stripe_fake_sum(&fake, "cus_a", "busy"), 9);

  /* A fault for one customer leaves the others alone; faults left can be
   * dropped. */
  fault("{\"status\": 500, \"customer\": \"cus_b\"}");
  assert_int_equal(
      meter_event(client, "cus_a", "only", "1", "o-1", now, NULL, &response),
      0);
  assert_int_equal(response.status, 200);
  tly_stripe_response_clear(&response);
  assert_int_equal(
      meter_event(client, "cus_b", "only", "1", "o-2", now, NULL, &response),
      0);
  assert_int_equal(response.status, 500);
  tly_stripe_response_clear(&response);
  fault("{\"count\": 5, \"status\": 503}");
  assert_int_equal(th_stripe_fake_clear_faults(&fake), 0);
  assert_int_equal(
      meter_event(client, "cus_b", "only", "1", "o-3", now, NULL, &response),
      0);
  assert_int_equal(response.status, 200);
  tly_stripe_response_clear(&response);
}

static json_t *get_list(const char *path, const tly_stripe_param_t *params,
                        size_t count, long want_status) {
  tly_stripe_response_t response;
  assert_int_equal(tly_stripe_get(client, path, params, count, &response), 0);
  if (response.status != want_status)
    fail_msg("GET %s: %ld %s", path, response.status, response.body);
  json_t *json = json_loads(response.body, 0, NULL);
  tly_stripe_response_clear(&response);
  assert_non_null(json);
  return json;
}

static double summary_value(json_t *list, size_t i) {
  json_t *value = json_object_get(
      json_array_get(json_object_get(list, "data"), i), "aggregated_value");
  assert_true(json_is_real(value)); /* a float, as Stripe sends it */
  return json_real_value(value);
}

static void test_meters_and_summaries(void **state) {
  (void)state;
  char meter[64], path[160], start[24], end[24], mid[24];
  tly_stripe_response_t response;
  assert_int_equal(
      th_stripe_fake_add_meter(&fake, "summed", meter, sizeof(meter)), 0);
  char again[64];
  assert_int_equal(
      th_stripe_fake_add_meter(&fake, "summed", again, sizeof(again)), 0);
  assert_string_equal(meter, again);
  json_t *meters = get_list("/v1/billing/meters", NULL, 0, 200);
  json_t *found = NULL, *item;
  size_t i;
  json_array_foreach(json_object_get(meters, "data"), i, item) {
    if (strcmp(json_string_value(json_object_get(item, "id")), meter) == 0)
      found = item;
  }
  assert_non_null(found);
  assert_string_equal(json_string_value(json_object_get(found, "event_name")),
                      "summed");
  assert_string_equal(
      json_string_value(json_object_get(
          json_object_get(found, "default_aggregation"), "formula")),
      "sum");
  json_decref(meters);

  long long now = (long long)time(NULL);
  long long base = now - now % 3600 - 2 * 3600;
  struct {
    const char *customer, *event_name, *value, *identifier;
    long long at;
  } events[] = {
      {"cus_a", "summed", "5", "sum-1", base + 10},
      {"cus_a", "summed", "7", "sum-2", base + 3600 + 20},
      {"cus_b", "summed", "100", "sum-3", base + 30},
      {"cus_a", "other", "1000", "sum-4", base + 40},
      {"cus_a", "summed", "50", "sum-5", base + 7200},
  };
  for (i = 0; i < sizeof(events) / sizeof(events[0]); i++) {
    assert_int_equal(meter_event(client, events[i].customer,
                                 events[i].event_name, events[i].value,
                                 events[i].identifier, events[i].at, NULL,
                                 &response),
                     0);
    assert_int_equal(response.status, 200);
    tly_stripe_response_clear(&response);
  }
  snprintf(path, sizeof(path), "/v1/billing/meters/%s/event_summaries", meter);
  snprintf(start, sizeof(start), "%lld", base);
  snprintf(end, sizeof(end), "%lld", base + 7200);
  snprintf(mid, sizeof(mid), "%lld", base + 3600);
  /* One summary over the range: cus_a's events of the meter, end
   * exclusive. */
  tly_stripe_param_t range[] = {
      {"customer", "cus_a"}, {"start_time", start}, {"end_time", end}};
  json_t *list = get_list(path, range, 3, 200);
  assert_string_equal(json_string_value(json_object_get(list, "object")),
                      "list");
  assert_int_equal(json_array_size(json_object_get(list, "data")), 1);
  assert_true(summary_value(list, 0) == 12.0);
  json_t *summary = json_array_get(json_object_get(list, "data"), 0);
  assert_string_equal(json_string_value(json_object_get(summary, "meter")),
                      meter);
  assert_int_equal(json_integer_value(json_object_get(summary, "start_time")),
                   base);
  json_decref(list);
  /* Hourly, newest first, a page at a time. */
  tly_stripe_param_t hourly[] = {
      {"customer", "cus_a"}, {"start_time", start},
      {"end_time", end},     {"value_grouping_window", "hour"},
      {"limit", "1"},        {"starting_after", ""}};
  list = get_list(path, hourly, 5, 200);
  assert_int_equal(json_array_size(json_object_get(list, "data")), 1);
  assert_true(summary_value(list, 0) == 7.0);
  assert_true(json_is_true(json_object_get(list, "has_more")));
  char after[400];
  snprintf(after, sizeof(after), "%s",
           json_string_value(json_object_get(
               json_array_get(json_object_get(list, "data"), 0), "id")));
  json_decref(list);
  hourly[5].value = after;
  list = get_list(path, hourly, 6, 200);
  assert_true(summary_value(list, 0) == 5.0);
  assert_false(json_is_true(json_object_get(list, "has_more")));
  json_decref(list);
  tly_stripe_param_t other[] = {
      {"customer", "cus_b"}, {"start_time", start}, {"end_time", mid}};
  list = get_list(path, other, 3, 200);
  assert_true(summary_value(list, 0) == 100.0);
  json_decref(list);

  /* Stripe's checks: minute boundaries, required parameters, the meter. */
  char odd[24];
  snprintf(odd, sizeof(odd), "%lld", base + 30);
  tly_stripe_param_t misaligned[] = {
      {"customer", "cus_a"}, {"start_time", odd}, {"end_time", end}};
  json_decref(get_list(path, misaligned, 3, 400));
  json_decref(get_list(path, range + 1, 2, 400));
  json_decref(
      get_list("/v1/billing/meters/mtr_nope/event_summaries", range, 3, 404));
  /* The summaries of an event_name without a meter cannot be asked for, but
   * such an event is accepted (Stripe reports it asynchronously). */
  assert_int_equal(th_stripe_fake_sum(&fake, "cus_a", "other"), 1000);
}

/* Identifiers and Idempotency-Keys are unique for 24 hours: with the
 * fake's clock moved past them, the same request counts again. */
static void test_clock_moves_past_the_windows(void **state) {
  (void)state;
  tly_stripe_response_t response;
  long long now = (long long)time(NULL);
  assert_int_equal(
      meter_event(client, "cus_b", "clock", "4", "c-1", now, "ck-1", &response),
      0);
  assert_int_equal(response.status, 200);
  tly_stripe_response_clear(&response);
  assert_int_equal(th_stripe_fake_set_clock(&fake, 23 * 3600), 0);
  assert_int_equal(
      meter_event(client, "cus_b", "clock", "4", "c-1", now, "ck-1", &response),
      0);
  assert_int_equal(response.idempotent_replayed, 1);
  tly_stripe_response_clear(&response);
  assert_int_equal(
      meter_event(client, "cus_b", "clock", "4", "c-1", now, NULL, &response),
      0);
  assert_int_equal(response.status, 400);
  tly_stripe_response_clear(&response);
  assert_int_equal(th_stripe_fake_sum(&fake, "cus_b", "clock"), 4);

  assert_int_equal(th_stripe_fake_set_clock(&fake, 24 * 3600 + 60), 0);
  assert_int_equal(
      meter_event(client, "cus_b", "clock", "4", "c-1", now, "ck-1", &response),
      0);
  assert_int_equal(response.status, 200);
  assert_int_equal(response.idempotent_replayed, 0);
  tly_stripe_response_clear(&response);
  assert_int_equal(th_stripe_fake_sum(&fake, "cus_b", "clock"), 8);
  /* Unique again for 24 hours from then. */
  assert_int_equal(
      meter_event(client, "cus_b", "clock", "4", "c-1", now, NULL, &response),
      0);
  assert_int_equal(response.status, 400);
  tly_stripe_response_clear(&response);
  json_t *ledger = th_stripe_fake_ledger(&fake);
  assert_int_equal(
      json_integer_value(json_object_get(ledger, "clock_offset_s")),
      24 * 3600 + 60);
  json_decref(ledger);
  assert_int_equal(th_stripe_fake_set_clock(&fake, 0), 0);
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
      cmocka_unit_test(test_stored_500_and_key_in_use),
      cmocka_unit_test(test_meters_and_summaries),
      cmocka_unit_test(test_clock_moves_past_the_windows),
      cmocka_unit_test(test_portal_sessions_and_request_log),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
