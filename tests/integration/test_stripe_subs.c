/*
 * test_stripe_subs.c - customers, subscriptions and invoices driven from
 * tally, over real sockets: the embedded broker, a real `tally run` with
 * stripe.plans, and tests/stripe_fake standing in for Stripe's API. The
 * fake records each change as the event Stripe would deliver; the test
 * signs it and posts it to tally's webhook, the way Stripe would, and
 * tally's state moves only then.
 *
 *   - the whole flow: customer -> webhook -> linked -> subscribe ->
 *     webhook -> plan -> plan change with Stripe's proration preview next
 *     to tally's own -> webhook -> cancel at period end, then now ->
 *     webhook -> canceled; what crossed the socket checked at each step;
 *   - retries under a 5xx, a dropped answer and a timeout create nothing
 *     twice (the fake's counts), also when the client repeats the whole
 *     request and Stripe's search lags;
 *   - invoices next to tally's closed cycle: matches_folded true for the
 *     invoice whose metered lines equal the folded cost, false for one
 *     that does not;
 *   - bad requests: no token, unknown plan, unknown field, unlinked
 *     subject, no Stripe key (503).
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
#define WEBHOOK_SECRET "whsec_subs"

static th_broker_t broker;
static th_run_t run;
static th_stripe_fake_t fake;
static char *dir;
static char key_env[128];

static void write_file(const char *path, const char *text) {
  FILE *file = fopen(path, "w");
  assert_non_null(file);
  fputs(text, file);
  fclose(file);
}

static int fake_post(const char *path, const char *json) {
  long status;
  return th_stripe_fake_control(&fake, "POST", path, json, &status, NULL) ==
                     0 &&
                 status == 200
             ? 0
             : -1;
}

static int setup(void **state) {
  (void)state;
  char config_path[600], config[3000], state_dir[600];
  dir = th_mkdtemp("stripe-subs");
  if (!dir || th_broker_start(&broker, PARTITIONS) ||
      th_stripe_fake_start(&fake))
    return -1;
  /* Stripe's prices: base prices in cents, metered 1 cent a call. */
  if (fake_post("/_fake/prices",
                "{\"id\": \"price_starter\", \"unit_amount\": 1000}") ||
      fake_post("/_fake/prices",
                "{\"id\": \"price_pro\", \"unit_amount\": 3000}") ||
      fake_post("/_fake/prices",
                "{\"id\": \"price_api\", \"unit_amount\": 1, \"usage_type\": "
                "\"metered\", \"meter_event_name\": \"api_requests\"}") ||
      fake_post("/_fake/prices",
                "{\"id\": \"price_api_pro\", \"unit_amount\": 1, "
                "\"usage_type\": \"metered\", \"meter_event_name\": "
                "\"api_requests\"}"))
    return -1;
  snprintf(config_path, sizeof(config_path), "%s/config.json", dir);
  snprintf(
      config, sizeof(config),
      "{\"stripe\": {\"api_base\": \"http://127.0.0.1:%d\", "
      "\"secret_key_env\": \"TALLY_TEST_STRIPE_KEY\", "
      "\"webhook_secrets\": [\"" WEBHOOK_SECRET "\"], \"timeout_ms\": 1000, "
      "\"meters\": {\"api_calls\": \"api_requests\"}, "
      "\"plans\": {\"starter\": {\"prices\": {\"base\": \"price_starter\", "
      "\"metered\": {\"api_calls\": \"price_api\"}}}, "
      "\"pro\": {\"prices\": {\"base\": \"price_pro\", "
      "\"metered\": {\"api_calls\": \"price_api_pro\"}}}}}, "
      "\"plans\": {\"starter\": {\"credits\": 100000, \"base_price_micros\": "
      "10000000, \"prices\": {\"api_calls\": {\"model\": \"graduated\", "
      "\"tiers\": [{\"up_to\": null, \"unit_micros\": 10000}]}}}, "
      "\"pro\": {\"credits\": 100000, \"base_price_micros\": 30000000, "
      "\"prices\": {\"api_calls\": {\"model\": \"graduated\", "
      "\"tiers\": [{\"up_to\": null, \"unit_micros\": 10000}]}}}}}",
      fake.port);
  write_file(config_path, config);
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  snprintf(key_env, sizeof(key_env), "TALLY_TEST_STRIPE_KEY=%s",
           fake.secret_key);
  th_run_env = key_env;
  const char *const extra[] = {"--config", config_path, NULL};
  if (th_run_start(&run, broker.bootstrap, state_dir, extra))
    return -1;
  /* Ready: its partitions assigned and caught up (the routes read the
   * subject's state on its partition). */
  for (int64_t deadline = th_now_ms() + 30000; th_now_ms() < deadline;
       th_sleep_ms(50)) {
    long status;
    char *text = NULL;
    if (th_http_request(run.port, "GET", "/readyz", NULL, NULL, 0, NULL,
                        &status, &text) == 0 &&
        status == 200) {
      free(text);
      return 0;
    }
    free(text);
  }
  return -1;
}

static int teardown(void **state) {
  (void)state;
  const char *keep = getenv("TALLY_TEST_KEEP_FAKE_LOG"); /* debugging */
  if (keep) {
    char from[600];
    snprintf(from, sizeof(from), "%s/fake.log", fake.dir);
    char *text = th_read_file(from);
    if (text)
      write_file(keep, text);
    free(text);
  }
  return th_stripe_teardown(run.pid, &broker, &fake, dir);
}

/* ---- helpers -------------------------------------------------------------
 */

/* A request to tally with the harness's token (or authorization); the
 * answer's JSON. */
static json_t *call_auth(const char *method, const char *path,
                         const char *authorization, const char *body,
                         long *status) {
  char *text = NULL;
  if (th_http_request(run.port, method, path, authorization, body,
                      body ? strlen(body) : 0, NULL, status, &text))
    fail_msg("%s %s: no answer", method, path);
  json_t *json = json_loads(text, 0, NULL);
  if (!json)
    fail_msg("%s %s: not JSON: %s", method, path, text);
  free(text);
  return json;
}

static json_t *call(const char *method, const char *path, const char *body,
                    long *status) {
  return call_auth(method, path, TH_AUTH_DEFAULT, body, status);
}

/* Expects status; returns the answer. */
static json_t *call_expect(const char *method, const char *path,
                           const char *body, long expected) {
  long status;
  json_t *json = call(method, path, body, &status);
  if (status != expected) {
    char *text = json_dumps(json, 0);
    fail_msg("%s %s: %ld, expected %ld: %s", method, path, status, expected,
             text);
  }
  return json;
}

static const char *error_code(const json_t *json) {
  return json_string_value(
      json_object_get(json_object_get(json, "error"), "code"));
}

static json_t *fake_get(const char *path) {
  long status;
  char *text = NULL;
  if (th_stripe_fake_control(&fake, "GET", path, NULL, &status, &text) ||
      status != 200)
    fail_msg("fake %s: no answer", path);
  json_t *json = json_loads(text, 0, NULL);
  free(text);
  return json;
}

static long long fake_count(const char *what) {
  json_t *counts = fake_get("/_fake/billing");
  long long n = json_integer_value(json_object_get(counts, what));
  json_decref(counts);
  return n;
}

/* The last event of type about object_id the fake recorded (a new
 * reference). */
static json_t *fake_event(const char *type, const char *object_id) {
  json_t *all = fake_get("/_fake/events"), *found = NULL, *event;
  size_t i;
  json_array_foreach(json_object_get(all, "events"), i, event) {
    const char *id = json_string_value(json_object_get(
        json_object_get(json_object_get(event, "data"), "object"), "id"));
    if (strcmp(json_string_value(json_object_get(event, "type")), type) == 0 &&
        id && strcmp(id, object_id) == 0)
      found = event;
  }
  json_incref(found);
  json_decref(all);
  if (!found)
    fail_msg("the fake recorded no %s for %s", type, object_id);
  return found;
}

/* Signs body as Stripe does and posts it to tally's webhook: 200. */
static void deliver_body(const char *body) {
  char header[200], hex[TLY_STRIPE_SIGNATURE_HEX_LEN + 1], *text = NULL;
  long long t = (long long)time(NULL);
  long status;
  tly_stripe_signature_compute(WEBHOOK_SECRET, t, body, strlen(body), hex);
  snprintf(header, sizeof(header), "Stripe-Signature: t=%lld,v1=%s", t, hex);
  const char *headers[] = {header, NULL};
  if (th_http_request(run.port, "POST", "/v1/stripe/webhook", NULL, body,
                      strlen(body), headers, &status, &text))
    fail_msg("webhook: no answer");
  if (status != 200)
    fail_msg("webhook: %ld: %s", status, text);
  free(text);
}

static void deliver(const char *type, const char *object_id) {
  json_t *event = fake_event(type, object_id);
  char *body = json_dumps(event, JSON_COMPACT);
  deliver_body(body);
  free(body);
  json_decref(event);
}

/* Polls the subject's usage until key equals expected (JSON text). */
static json_t *wait_usage(const char *subject, const char *key,
                          const char *expected_json) {
  char path[256];
  json_t *expected = json_loads(expected_json, JSON_DECODE_ANY, NULL);
  snprintf(path, sizeof(path), "/v1/subjects/%s/usage", subject);
  for (int64_t deadline = th_now_ms() + 15000; th_now_ms() < deadline;
       th_sleep_ms(50)) {
    long status;
    json_t *json = call("GET", path, NULL, &status);
    if (status == 200 && json_equal(json_object_get(json, key), expected)) {
      json_decref(expected);
      return json;
    }
    json_decref(json);
  }
  fail_msg("%s: %s never became %s", subject, key, expected_json);
  return NULL;
}

/* Polls until the subject is linked (its invoices answer, not 404). */
static void wait_linked(const char *subject) {
  char path[256];
  snprintf(path, sizeof(path), "/v1/subjects/%s/invoices?limit=1", subject);
  for (int64_t deadline = th_now_ms() + 15000; th_now_ms() < deadline;
       th_sleep_ms(50)) {
    long status;
    json_t *json = call("GET", path, NULL, &status);
    json_decref(json);
    if (status == 200)
      return;
  }
  fail_msg("%s was never linked", subject);
}

static const char *str_at(json_t *json, const char *a, const char *b) {
  json_t *value = json_object_get(json, a);
  return json_string_value(b ? json_object_get(value, b) : value);
}

/* Creates the subject's customer, delivers customer.created, waits for the
 * link. The customer's id into out. */
static void link_subject(const char *subject, char *out, size_t size) {
  char path[256];
  snprintf(path, sizeof(path), "/v1/subjects/%s/customer", subject);
  json_t *json =
      call_expect("POST", path, "{\"email\": \"x@example.com\"}", 200);
  snprintf(out, size, "%s", str_at(json, "customer", "id"));
  json_decref(json);
  deliver("customer.created", out);
  wait_linked(subject);
}

/* The fake's logged requests of method to path (an exact path, or a
 * prefix ending in '/'), a new array. */
static json_t *requests_to(const char *method, const char *path) {
  json_t *all = th_stripe_fake_requests(&fake), *out = json_array(), *entry;
  size_t i, len = strlen(path);
  json_array_foreach(all, i, entry) {
    const char *logged = str_at(entry, "path", NULL);
    if (strcmp(str_at(entry, "method", NULL), method) == 0 &&
        (path[len - 1] == '/' ? strncmp(logged, path, len) == 0
                              : strcmp(logged, path) == 0))
      json_array_append(out, entry);
  }
  json_decref(all);
  return out;
}

/* ---- the whole flow ------------------------------------------------------
 */

static void test_customer_subscribe_change_cancel(void **state) {
  (void)state;
  char customer[128], sub_id[128];
  long status;

  /* Customer: created in Stripe with the subject in its metadata, under a
   * deterministic Idempotency-Key; tally does not know it yet. */
  json_t *json = call_expect("POST", "/v1/subjects/user:flow/customer",
                             "{\"email\": \"flow@example.com\", \"name\": "
                             "\"Flow\"}",
                             200);
  assert_true(json_is_true(json_object_get(json, "pending")));
  assert_true(json_is_true(json_object_get(json, "created")));
  snprintf(customer, sizeof(customer), "%s", str_at(json, "customer", "id"));
  assert_non_null(strstr(customer, "cus_fake_"));
  json_decref(json);
  json_t *last = th_stripe_fake_last_request(&fake);
  assert_string_equal(str_at(last, "path", NULL), "/v1/customers");
  assert_string_equal(
      str_at(json_object_get(last, "params"), "metadata[tally_subject]", NULL),
      "user:flow");
  assert_string_equal(str_at(json_object_get(last, "params"), "email", NULL),
                      "flow@example.com");
  assert_non_null(
      strstr(str_at(last, "idempotency_key", NULL), "tally-customer-"));
  json_decref(last);
  /* Before the link comes back, subscribing is 404 not_linked. */
  json = call_expect("POST", "/v1/subjects/user:flow/subscription",
                     "{\"plan\": \"starter\"}", 404);
  assert_string_equal(error_code(json), "not_linked");
  json_decref(json);

  /* customer.created -> linked; asking again asks Stripe nothing. */
  deliver("customer.created", customer);
  wait_linked("user:flow");
  json = call_expect("POST", "/v1/subjects/user:flow/customer", NULL, 200);
  assert_true(json_is_true(json_object_get(json, "linked")));
  assert_string_equal(str_at(json, "customer", "id"), customer);
  json_decref(json);
  assert_int_equal(fake_count("customers"), 1);

  /* Subscribe: the plan's base price and its metered price. */
  json = call_expect("POST", "/v1/subjects/user:flow/subscription",
                     "{\"plan\": \"starter\"}", 200);
  assert_true(json_is_true(json_object_get(json, "pending")));
  assert_string_equal(str_at(json, "subscription", "plan"), "starter");
  snprintf(sub_id, sizeof(sub_id), "%s", str_at(json, "subscription", "id"));
  json_decref(json);
  last = th_stripe_fake_last_request(&fake);
  json_t *params = json_object_get(last, "params");
  assert_string_equal(str_at(last, "path", NULL), "/v1/subscriptions");
  assert_string_equal(str_at(params, "customer", NULL), customer);
  assert_string_equal(str_at(params, "items[0][price]", NULL), "price_starter");
  assert_string_equal(str_at(params, "items[1][price]", NULL), "price_api");
  assert_string_equal(str_at(params, "metadata[tally_subject]", NULL),
                      "user:flow");
  json_decref(last);
  /* tally's plan moves only with the webhook. */
  json = call("GET", "/v1/subjects/user:flow/usage", NULL, &status);
  assert_string_equal(str_at(json, "plan", NULL), "free");
  json_decref(json);
  deliver("customer.subscription.created", sub_id);
  json_decref(wait_usage("user:flow", "plan", "\"starter\""));

  /* The same request again (a client retry): nothing new; another plan
   * by POST: 409. */
  json = call_expect("POST", "/v1/subjects/user:flow/subscription",
                     "{\"plan\": \"starter\"}", 200);
  assert_true(json_is_false(json_object_get(json, "created")));
  json_decref(json);
  json = call_expect("POST", "/v1/subjects/user:flow/subscription",
                     "{\"plan\": \"pro\"}", 409);
  assert_string_equal(error_code(json), "already_subscribed");
  json_decref(json);
  assert_int_equal(fake_count("subscriptions"), 1);

  /* Plan change: Stripe's preview and tally's figure side by side. */
  json = call_expect("PUT", "/v1/subjects/user:flow/subscription",
                     "{\"plan\": \"pro\"}", 200);
  assert_true(json_is_true(json_object_get(json, "pending")));
  assert_string_equal(str_at(json, "from_plan", NULL), "starter");
  assert_string_equal(str_at(json, "to_plan", NULL), "pro");
  assert_string_equal(str_at(json, "subscription", "plan"), "pro");
  json_t *sub = json_object_get(json, "subscription");
  long long start =
      json_integer_value(json_object_get(sub, "current_period_start"));
  long long end =
      json_integer_value(json_object_get(sub, "current_period_end"));
  long long date = json_integer_value(json_object_get(json, "proration_date"));
  long long remaining = end - date, total = end - start;
  /* Stripe's proration, by the second, rounded half up per line. */
  long long credit = (2 * 1000 * remaining + total) / (2 * total);
  long long charge = (2 * 3000 * remaining + total) / (2 * total);
  json_t *preview = json_object_get(json, "stripe_preview");
  assert_int_equal(
      json_integer_value(json_object_get(preview, "proration_total")),
      charge - credit);
  assert_int_equal(
      json_integer_value(json_object_get(preview, "proration_micros")),
      (charge - credit) * 10000);
  json_t *tally = json_object_get(json, "tally_prorate");
  assert_string_equal(str_at(tally, "from_plan", NULL), "starter");
  assert_string_equal(str_at(tally, "to_plan", NULL), "pro");
  assert_true(json_is_integer(json_object_get(tally, "net_micros")));
  json_decref(json);
  /* The preview and the change were asked as of one proration_date. */
  json_t *previews = requests_to("POST", "/v1/invoices/create_preview");
  json_t *changes = requests_to("POST", "/v1/subscriptions/");
  json_t *preview_params = json_object_get(
      json_array_get(previews, json_array_size(previews) - 1), "params");
  json_t *change_params = json_object_get(
      json_array_get(changes, json_array_size(changes) - 1), "params");
  assert_string_equal(
      str_at(preview_params, "subscription_details[proration_date]", NULL),
      str_at(change_params, "proration_date", NULL));
  assert_string_equal(str_at(change_params, "proration_behavior", NULL),
                      "create_prorations");
  assert_string_equal(str_at(change_params, "items[0][price]", NULL),
                      "price_pro");
  assert_string_equal(str_at(change_params, "items[1][price]", NULL),
                      "price_api_pro");
  json_decref(previews);
  json_decref(changes);
  assert_int_equal(fake_count("pending_items"), 2); /* credit and charge */
  deliver("customer.subscription.updated", sub_id);
  json_decref(wait_usage("user:flow", "plan", "\"pro\""));
  /* Changing to the plan it is on changes nothing. */
  json = call_expect("PUT", "/v1/subjects/user:flow/subscription",
                     "{\"plan\": \"pro\"}", 200);
  assert_true(json_is_true(json_object_get(json, "unchanged")));
  json_decref(json);

  /* Cancel at the period's end, then now. */
  json =
      call_expect("DELETE", "/v1/subjects/user:flow/subscription", NULL, 200);
  assert_true(json_is_true(json_object_get(json, "pending")));
  assert_true(json_is_true(json_object_get(
      json_object_get(json, "subscription"), "cancel_at_period_end")));
  assert_string_equal(str_at(json, "subscription", "status"), "active");
  json_decref(json);
  json = call_expect("DELETE",
                     "/v1/subjects/user:flow/subscription?at_period_end=false",
                     NULL, 200);
  assert_string_equal(str_at(json, "subscription", "status"), "canceled");
  json_decref(json);
  last = th_stripe_fake_last_request(&fake);
  assert_string_equal(str_at(last, "method", NULL), "DELETE");
  json_decref(last);
  deliver("customer.subscription.deleted", sub_id);
  json_decref(wait_usage("user:flow", "canceled", "true"));
  json = call_expect("PUT", "/v1/subjects/user:flow/subscription",
                     "{\"plan\": \"starter\"}", 404);
  assert_string_equal(error_code(json), "not_subscribed");
  json_decref(json);
}

/* ---- retries create nothing twice ----------------------------------------
 */

static void test_retries_create_nothing_twice(void **state) {
  (void)state;
  char customer[128];
  long long customers = fake_count("customers");

  /* A 500 before Stripe ran it: retried, made once. */
  assert_int_equal(th_stripe_fake_fault(&fake, "{\"count\": 1, \"status\": "
                                               "500, \"path\": "
                                               "\"/v1/customers\"}"),
                   0);
  json_t *json =
      call_expect("POST", "/v1/subjects/user:r500/customer", NULL, 200);
  assert_true(json_is_true(json_object_get(json, "created")));
  json_decref(json);
  assert_int_equal(fake_count("customers"), ++customers);
  json_t *posts = requests_to("POST", "/v1/customers");
  size_t n = json_array_size(posts);
  assert_true(n >= 2);
  assert_string_equal(
      str_at(json_array_get(posts, n - 1), "idempotency_key", NULL),
      str_at(json_array_get(posts, n - 2), "idempotency_key", NULL));
  json_decref(posts);

  /* Made, then the answer lost: the retry gets Stripe's replay. */
  assert_int_equal(th_stripe_fake_fault(&fake, "{\"count\": 1, "
                                               "\"drop_after_apply\": true, "
                                               "\"path\": \"/v1/customers\"}"),
                   0);
  json = call_expect("POST", "/v1/subjects/user:drop/customer", NULL, 200);
  assert_string_equal(str_at(json, "found_by", NULL), "idempotency_replay");
  json_decref(json);
  assert_int_equal(fake_count("customers"), ++customers);

  /* A timeout (stripe.timeout_ms 1 s, the fake hangs 3 s): retried. */
  assert_int_equal(th_stripe_fake_fault(&fake, "{\"count\": 1, \"hang_ms\": "
                                               "3000, \"path\": "
                                               "\"/v1/customers\"}"),
                   0);
  json = call_expect("POST", "/v1/subjects/user:hang/customer", NULL, 200);
  json_decref(json);
  assert_int_equal(fake_count("customers"), ++customers);

  /* Every attempt's answer lost: 502; the client repeats the request
   * while Stripe's search lags: the same key, Stripe's replay, still one
   * customer. */
  assert_int_equal(fake_post("/_fake/search_delay", "{\"seconds\": 3600}"), 0);
  assert_int_equal(th_stripe_fake_fault(&fake, "{\"count\": 3, "
                                               "\"drop_after_apply\": true, "
                                               "\"path\": \"/v1/customers\"}"),
                   0);
  json = call_expect("POST", "/v1/subjects/user:lost/customer", NULL, 502);
  assert_string_equal(error_code(json), "stripe_unavailable");
  json_decref(json);
  assert_int_equal(fake_count("customers"), ++customers);
  json = call_expect("POST", "/v1/subjects/user:lost/customer", NULL, 200);
  assert_string_equal(str_at(json, "found_by", NULL), "idempotency_replay");
  snprintf(customer, sizeof(customer), "%s", str_at(json, "customer", "id"));
  json_decref(json);
  assert_int_equal(fake_count("customers"), customers);
  assert_int_equal(fake_post("/_fake/search_delay", "{\"seconds\": 0}"), 0);
  /* Without the lag, the search finds it first. */
  json = call_expect("POST", "/v1/subjects/user:lost/customer", NULL, 200);
  assert_string_equal(str_at(json, "found_by", NULL), "search");
  json_decref(json);
  assert_int_equal(fake_count("customers"), customers);

  /* A subscription under a 503 and a lost answer: three attempts under
   * one key, one subscription. */
  deliver("customer.created", customer);
  wait_linked("user:lost");
  long long subscriptions = fake_count("subscriptions");
  json_t *before = requests_to("POST", "/v1/subscriptions");
  size_t posts_before = json_array_size(before);
  json_decref(before);
  assert_int_equal(th_stripe_fake_fault(
                       &fake, "{\"count\": 1, \"status\": 503, \"path\": "
                              "\"/v1/subscriptions\", \"method\": \"POST\"}"),
                   0);
  assert_int_equal(
      th_stripe_fake_fault(&fake, "{\"count\": 1, \"drop_after_apply\": true, "
                                  "\"path\": \"/v1/subscriptions\", "
                                  "\"method\": \"POST\"}"),
      0);
  json = call_expect("POST", "/v1/subjects/user:lost/subscription",
                     "{\"plan\": \"starter\"}", 200);
  char sub_id[128], path[200];
  snprintf(sub_id, sizeof(sub_id), "%s", str_at(json, "subscription", "id"));
  json_decref(json);
  assert_int_equal(fake_count("subscriptions"), subscriptions + 1);
  json_t *creates = requests_to("POST", "/v1/subscriptions");
  assert_int_equal(json_array_size(creates), posts_before + 3);
  for (size_t k = posts_before + 1; k < posts_before + 3; k++)
    assert_string_equal(
        str_at(json_array_get(creates, k), "idempotency_key", NULL),
        str_at(json_array_get(creates, posts_before), "idempotency_key", NULL));
  json_decref(creates);
  /* A plan change whose answer is lost, then a timeout: prorated once. */
  long long pending = fake_count("pending_items");
  snprintf(path, sizeof(path), "/v1/subscriptions/%s", sub_id);
  char fault[400];
  snprintf(fault, sizeof(fault),
           "{\"count\": 1, \"drop_after_apply\": true, \"path\": \"%s\"}",
           path);
  assert_int_equal(th_stripe_fake_fault(&fake, fault), 0);
  snprintf(fault, sizeof(fault),
           "{\"count\": 1, \"hang_ms\": 3000, \"path\": \"%s\"}", path);
  assert_int_equal(th_stripe_fake_fault(&fake, fault), 0);
  json = call_expect("PUT", "/v1/subjects/user:lost/subscription",
                     "{\"plan\": \"pro\"}", 200);
  assert_string_equal(str_at(json, "subscription", "plan"), "pro");
  json_decref(json);
  assert_int_equal(fake_count("pending_items"), pending + 2);
  assert_int_equal(fake_count("subscriptions"), subscriptions + 1);

  /* Stripe refuses: its status and code come back. */
  assert_int_equal(th_stripe_fake_fault(&fake, "{\"count\": 3, \"status\": "
                                               "500, \"path\": "
                                               "\"/v1/subscriptions\"}"),
                   0);
  json = call_expect("GET", "/v1/subjects/user:lost/invoices", NULL, 200);
  json_decref(json);
  json =
      call_expect("DELETE", "/v1/subjects/user:lost/subscription", NULL, 502);
  assert_string_equal(error_code(json), "stripe_error");
  assert_int_equal(json_integer_value(json_object_get(
                       json_object_get(json, "error"), "stripe_status")),
                   500);
  json_decref(json);
  th_stripe_fake_clear_faults(&fake);
}

/* ---- invoices next to tally's closed cycles ------------------------------
 */

static void test_invoices_match_folded(void **state) {
  (void)state;
  char customer[128], sub_id[128], events[4096], body[600];
  link_subject("user:inv", customer, sizeof(customer));
  json_t *json = call_expect("POST", "/v1/subjects/user:inv/subscription",
                             "{\"plan\": \"starter\"}", 200);
  snprintf(sub_id, sizeof(sub_id), "%s", str_at(json, "subscription", "id"));
  long long start = json_integer_value(json_object_get(
      json_object_get(json, "subscription"), "current_period_start"));
  long long end = json_integer_value(json_object_get(
      json_object_get(json, "subscription"), "current_period_end"));
  json_decref(json);
  deliver("customer.subscription.created", sub_id);
  json_decref(wait_usage("user:inv", "plan", "\"starter\""));

  /* 120 calls in the period: 1.20 USD folded (10,000 micros a call). */
  long long at_ms = (start + 1) * 1000;
  while ((long long)time(NULL) * 1000 < at_ms) /* the wall clock */
    th_sleep_ms(50);
  snprintf(events, sizeof(events),
           "[{\"event_id\": \"inv-1\", \"subject\": \"user:inv\", \"feature\": "
           "\"api_calls\", \"quantity\": 100, \"occurred_at\": %lld}, "
           "{\"event_id\": \"inv-2\", \"subject\": \"user:inv\", \"feature\": "
           "\"api_calls\", \"quantity\": 20, \"occurred_at\": %lld}]",
           at_ms, at_ms);
  json_decref(call_expect("POST", "/v1/events", events, 202));
  json_decref(wait_usage("user:inv", "cost_micros", "1200000"));

  /* Stripe's renewal invoice: usage in arrears over [start, end), the
   * base price in advance; paid, it closes tally's cycle. */
  snprintf(body, sizeof(body),
           "{\"subscription\": \"%s\", \"period_start\": %lld, "
           "\"period_end\": %lld, \"lines\": [{\"price\": \"price_starter\", "
           "\"quantity\": 1}, {\"price\": \"price_api\", \"quantity\": 120}]}",
           sub_id, start, end);
  char *text = NULL;
  long status;
  assert_int_equal(th_stripe_fake_control(&fake, "POST", "/_fake/invoices",
                                          body, &status, &text),
                   0);
  assert_int_equal(status, 200);
  json_t *invoice = json_loads(text, 0, NULL);
  free(text);
  char good_id[64];
  snprintf(good_id, sizeof(good_id), "%s", str_at(invoice, "id", NULL));
  json_decref(invoice);
  deliver("invoice.paid", good_id);
  json_t *usage = wait_usage("user:inv", "cost_micros", "0");
  assert_int_equal(json_integer_value(json_object_get(
                       json_object_get(usage, "cycle"), "start_ms")),
                   end * 1000);
  json_decref(usage);
  /* One that billed 119 calls: a billing error to look at. */
  snprintf(body, sizeof(body),
           "{\"subscription\": \"%s\", \"period_start\": %lld, "
           "\"period_end\": %lld, \"status\": \"open\", \"lines\": "
           "[{\"price\": \"price_api\", \"quantity\": 119}]}",
           sub_id, start, end);
  assert_int_equal(th_stripe_fake_control(&fake, "POST", "/_fake/invoices",
                                          body, &status, &text),
                   0);
  invoice = json_loads(text, 0, NULL);
  free(text);
  char bad_id[64];
  snprintf(bad_id, sizeof(bad_id), "%s", str_at(invoice, "id", NULL));
  json_decref(invoice);

  json =
      call_expect("GET", "/v1/subjects/user:inv/invoices?limit=10", NULL, 200);
  assert_int_equal(json_integer_value(json_object_get(json, "mismatches")), 1);
  json_t *list = json_object_get(json, "invoices"), *entry;
  size_t i;
  int seen = 0;
  json_array_foreach(list, i, entry) {
    const char *id = str_at(entry, "id", NULL);
    json_t *folded = json_object_get(entry, "folded");
    if (strcmp(id, good_id) == 0) {
      seen |= 1;
      assert_true(json_is_true(json_object_get(entry, "matches_folded")));
      assert_int_equal(
          json_integer_value(json_object_get(entry, "metered_micros")),
          1200000);
      assert_int_equal(
          json_integer_value(json_object_get(folded, "cost_micros")), 1200000);
      assert_int_equal(json_integer_value(json_object_get(folded, "start_ms")),
                       start * 1000);
      assert_non_null(
          strstr(str_at(entry, "hosted_invoice_url", NULL), good_id));
      assert_non_null(strstr(str_at(entry, "invoice_pdf", NULL), "/pdf"));
      assert_string_equal(str_at(entry, "status", NULL), "paid");
      assert_non_null(str_at(entry, "number", NULL));
    } else if (strcmp(id, bad_id) == 0) {
      seen |= 2;
      assert_true(json_is_false(json_object_get(entry, "matches_folded")));
      assert_int_equal(
          json_integer_value(json_object_get(entry, "metered_micros")),
          1190000);
    } else {
      /* The first invoice (period start = end): no cycle to compare. */
      assert_true(json_is_null(json_object_get(entry, "matches_folded")));
    }
  }
  assert_int_equal(seen, 3);
  json_decref(json);
}

/* ---- bad requests --------------------------------------------------------
 */

static void test_bad_requests(void **state) {
  (void)state;
  long status;
  static const char *const routes[][2] = {
      {"POST", "/v1/subjects/user:bad/customer"},
      {"POST", "/v1/subjects/user:bad/subscription"},
      {"PUT", "/v1/subjects/user:bad/subscription"},
      {"DELETE", "/v1/subjects/user:bad/subscription"},
      {"GET", "/v1/subjects/user:bad/invoices"}};
  for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
    json_t *json = call_auth(routes[i][0], routes[i][1], NULL, NULL, &status);
    assert_int_equal(status, 401);
    json_decref(json);
  }
  json_t *json = call_expect("POST", "/v1/subjects/user:bad/customer",
                             "{\"email\": 5}", 400);
  assert_string_equal(str_at(json, "error", "field"), "email");
  json_decref(json);
  json = call_expect("POST", "/v1/subjects/user:bad/customer",
                     "{\"phone\": \"1\"}", 400);
  assert_string_equal(str_at(json, "error", "field"), "phone");
  json_decref(json);
  json = call_expect("POST", "/v1/subjects/user:bad/customer", "{", 400);
  assert_string_equal(error_code(json), "bad_json");
  json_decref(json);
  json = call_expect("POST", "/v1/subjects/user:bad/subscription",
                     "{\"plan\": \"gold\"}", 400);
  assert_string_equal(error_code(json), "unknown_plan");
  assert_string_equal(str_at(json, "error", "field"), "plan");
  json_decref(json);
  json = call_expect("POST", "/v1/subjects/user:bad/subscription", "{}", 400);
  assert_string_equal(str_at(json, "error", "field"), "plan");
  json_decref(json);
  json = call_expect("PUT", "/v1/subjects/user:bad/subscription",
                     "{\"plan\": \"pro\", \"proration_behavior\": \"x\"}", 400);
  assert_string_equal(str_at(json, "error", "field"), "proration_behavior");
  json_decref(json);
  json = call_expect("DELETE",
                     "/v1/subjects/user:bad/subscription?at_period_end=maybe",
                     NULL, 400);
  assert_string_equal(str_at(json, "error", "field"), "at_period_end");
  json_decref(json);
  json =
      call_expect("GET", "/v1/subjects/user:bad/invoices?limit=101", NULL, 400);
  assert_string_equal(str_at(json, "error", "field"), "limit");
  json_decref(json);
  json = call_expect("GET", "/v1/subjects/user:bad/invoices", NULL, 404);
  assert_string_equal(error_code(json), "not_linked");
  json_decref(json);

  /* No Stripe key: 503 on every route (an instance on a broker of its
   * own, so it takes no partition from the one above). */
  th_run_t other;
  th_broker_t other_broker;
  char other_state[600], config_path[600];
  assert_int_equal(th_broker_start(&other_broker, 1), 0);
  snprintf(other_state, sizeof(other_state), "%s/no-key", dir);
  snprintf(config_path, sizeof(config_path), "%s/no-key.json", dir);
  write_file(config_path, "{\"stripe\": {\"webhook_secrets\": [\"whsec_x\"]}}");
  const char *const extra[] = {"--config", config_path, NULL};
  assert_int_equal(
      th_run_start(&other, other_broker.bootstrap, other_state, extra), 0);
  for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
    char *text = NULL;
    assert_int_equal(th_http_request(other.port, routes[i][0], routes[i][1],
                                     TH_AUTH_DEFAULT, NULL, 0, NULL, &status,
                                     &text),
                     0);
    assert_int_equal(status, 503);
    assert_non_null(strstr(text, "stripe_not_configured"));
    free(text);
  }
  assert_int_equal(th_stop(other.pid), 0);
  th_broker_stop(&other_broker);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_customer_subscribe_change_cancel),
      cmocka_unit_test(test_retries_create_nothing_twice),
      cmocka_unit_test(test_invoices_match_folded),
      cmocka_unit_test(test_bad_requests),
  };
  if (getenv("TALLY_TEST_FILTER")) /* one test, when debugging */
    cmocka_set_test_filter(getenv("TALLY_TEST_FILTER"));
  return cmocka_run_group_tests(tests, setup, teardown);
}
