/*
 * test_http_request.c - the HTTP port's pure parts, without a socket: the
 * OpenAPI document against the route table (both directions), bearer-token
 * checks, the config's "http" section, the quota decision, proration
 * rounding, dates, token pricing for estimates, and event bodies.
 */
#include "tly_auth.h"
#include "tly_billing.h"
#include "tly_config.h"
#include "tly_http.h"
#include "tly_request.h"

#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>

#ifndef TALLY_SOURCE_DIR
#define TALLY_SOURCE_DIR "."
#endif

/* ---- OpenAPI ------------------------------------------------------------ */

static void test_openapi_matches_routes(void **state) {
  (void)state;
  json_error_t error;
  json_t *doc =
      json_load_file(TALLY_SOURCE_DIR "/docs/openapi.json", 0, &error);
  if (!doc)
    fail_msg("docs/openapi.json: line %d: %s", error.line, error.text);
  assert_string_equal(json_string_value(json_object_get(doc, "openapi")),
                      "3.0.3");
  json_t *paths = json_object_get(doc, "paths");
  tly_http_route_info_t routes[64];
  size_t count = tly_http_routes(routes, 64);
  assert_true(count > 0 && count <= 64);

  /* Every route is documented, with the right security. */
  for (size_t i = 0; i < count; i++) {
    char method[16];
    size_t m = 0;
    for (; routes[i].method[m] && m + 1 < sizeof(method); m++)
      method[m] = (char)(routes[i].method[m] | 0x20); /* lowercase */
    method[m] = '\0';
    json_t *operation =
        json_object_get(json_object_get(paths, routes[i].path), method);
    if (!operation)
      fail_msg("route %s %s is not in docs/openapi.json", routes[i].method,
               routes[i].path);
    /* A public route overrides the global bearer requirement with an
     * empty list, or a list holding {} (no auth: /metrics when public); a
     * route that takes other schemes as well lists only them. */
    json_t *security = json_object_get(operation, "security");
    int documented_public = security && json_array_size(security) == 0;
    for (size_t k = 0; k < json_array_size(security); k++)
      if (json_object_size(json_array_get(security, k)) == 0)
        documented_public = 1;
    if (documented_public == routes[i].auth_required)
      fail_msg("%s %s: auth differs between the code and the document",
               routes[i].method, routes[i].path);
    json_t *responses = json_object_get(operation, "responses");
    if (!responses)
      fail_msg("%s %s: no responses documented", routes[i].method,
               routes[i].path);
    /* A route its partition's owner answers documents the 503 while the
     * partition moves and the header naming who answered. */
    json_t *ok = json_object_get(responses, "200");
    if (routes[i].owner_only &&
        (!json_object_get(responses, "503") ||
         !json_object_get(json_object_get(ok, "headers"), "X-Tally-Served-By")))
      fail_msg("%s %s: forwarded to the partition's owner, but the 503 "
               "partition_moving or X-Tally-Served-By is not documented",
               routes[i].method, routes[i].path);
  }
  /* Every documented operation exists. */
  static const char *const methods[] = {"get",     "put",  "post",  "delete",
                                        "options", "head", "patch", "trace"};
  const char *path;
  json_t *item;
  json_object_foreach(paths, path, item) {
    for (size_t k = 0; k < sizeof(methods) / sizeof(methods[0]); k++) {
      if (!json_object_get(item, methods[k]))
        continue;
      int found = 0;
      for (size_t i = 0; i < count && !found; i++)
        found = strcmp(routes[i].path, path) == 0 &&
                strncasecmp(routes[i].method, methods[k], 8) == 0;
      if (!found)
        fail_msg("docs/openapi.json documents %s %s, which does not exist",
                 methods[k], path);
    }
  }
  json_decref(doc);
}

/* ---- auth --------------------------------------------------------------- */

static void test_auth(void **state) {
  (void)state;
  tly_api_key_t keys[2];
  char hex[TLY_SHA256_HEX_LEN + 1];
  memset(keys, 0, sizeof(keys));
  tly_sha256_hex("secret-one", 10, hex);
  assert_int_equal(tly_sha256_hex_parse(hex, keys[0].sha256), 0);
  tly_sha256_hex("secret-two", 10, hex);
  for (char *p = hex; *p; p++) /* uppercase parses too */
    if (*p >= 'a' && *p <= 'f')
      *p = (char)(*p - 'a' + 'A');
  assert_int_equal(tly_sha256_hex_parse(hex, keys[1].sha256), 0);
  assert_int_equal(tly_sha256_hex_parse("abc", keys[1].sha256), -1);
  hex[3] = 'g';
  assert_int_equal(tly_sha256_hex_parse(hex, keys[1].sha256), -1);

  const tly_api_key_t *match = NULL;
  assert_int_equal(tly_auth_check(keys, 2, "Bearer secret-one", &match),
                   TLY_AUTH_OK);
  assert_ptr_equal(match, &keys[0]);
  assert_int_equal(tly_auth_check(keys, 2, "bearer   secret-two  ", &match),
                   TLY_AUTH_OK);
  assert_ptr_equal(match, &keys[1]);
  assert_int_equal(tly_auth_check(keys, 2, NULL, NULL), TLY_AUTH_MISSING);
  assert_int_equal(tly_auth_check(keys, 2, "Bearer secret-three", NULL),
                   TLY_AUTH_INVALID);
  assert_int_equal(tly_auth_check(keys, 2, "Basic secret-one", NULL),
                   TLY_AUTH_MALFORMED);
  assert_int_equal(tly_auth_check(keys, 2, "Bearer", NULL), TLY_AUTH_MALFORMED);
  assert_int_equal(tly_auth_check(keys, 2, "Bearersecret-one", NULL),
                   TLY_AUTH_MALFORMED);
  assert_int_equal(tly_auth_check(keys, 2, "Bearer a b", NULL),
                   TLY_AUTH_MALFORMED);
  assert_int_equal(tly_auth_check(keys, 0, "Bearer secret-one", NULL),
                   TLY_AUTH_INVALID);

  /* The schema registry's routes: basic auth with the key as password (any
   * user name), or the bearer token. */
  assert_int_equal(
      tly_auth_check_basic_or_bearer(keys, 2, "Basic dTpzZWNyZXQtb25l"),
      TLY_AUTH_OK); /* u:secret-one */
  assert_int_equal(
      tly_auth_check_basic_or_bearer(keys, 2, "basic  OnNlY3JldC10d28= "),
      TLY_AUTH_OK); /* :secret-two */
  assert_int_equal(tly_auth_check_basic_or_bearer(keys, 2, "Bearer secret-one"),
                   TLY_AUTH_OK);
  assert_int_equal(tly_auth_check_basic_or_bearer(keys, 2, "Basic dTpub3Bl"),
                   TLY_AUTH_INVALID); /* u:nope */
  assert_int_equal(
      tly_auth_check_basic_or_bearer(keys, 2, "Basic bm9jb2xvbg=="),
      TLY_AUTH_MALFORMED); /* no colon */
  assert_int_equal(tly_auth_check_basic_or_bearer(keys, 2, "Basic ###"),
                   TLY_AUTH_MALFORMED);
  assert_int_equal(tly_auth_check_basic_or_bearer(keys, 2, NULL),
                   TLY_AUTH_MISSING);
  /* Only the registry's routes take basic auth. */
  assert_int_equal(tly_auth_check(keys, 2, "Basic dTpzZWNyZXQtb25l", NULL),
                   TLY_AUTH_MALFORMED);
}

/* ---- config ------------------------------------------------------------- */

static void test_config_http_section(void **state) {
  (void)state;
  char errstr[512];
  char hex[TLY_SHA256_HEX_LEN + 1];
  tly_sha256_hex("k", 1, hex);
  char text[1024];
  snprintf(text, sizeof(text),
           "{\"http\": {\"api_keys\": [{\"name\": \"svc\", \"sha256\": "
           "\"%s\"}], \"metrics_public\": false, \"max_body_bytes\": 4096, "
           "\"max_url_bytes\": 512, \"threads\": 3}}",
           hex);
  tly_config_t *config =
      tly_config_load_text(text, strlen(text), errstr, sizeof(errstr));
  assert_non_null(config);
  assert_int_equal(config->http.api_key_count, 1);
  assert_string_equal(config->http.api_keys[0].name, "svc");
  assert_int_equal(config->http.metrics_public, 0);
  assert_int_equal(config->http.max_body_bytes, 4096);
  assert_int_equal(config->http.max_url_bytes, 512);
  assert_int_equal(config->http.threads, 3);
  tly_config_free(config);

  config = tly_config_default();
  assert_int_equal(config->http.api_key_count, 0);
  assert_int_equal(config->http.metrics_public, 1);
  assert_int_equal(config->http.max_body_bytes, 1048576);
  assert_int_equal(config->http.threads, 0); /* one per two cores */
  tly_config_free(config);

  static const struct {
    const char *json, *path;
  } bad[] = {
      {"{\"http\": {\"api_keys\": [{\"name\": \"a\", \"sha256\": "
       "\"rawkey\"}]}}",
       "http.api_keys[0].sha256: "},
      {"{\"http\": {\"api_keys\": [{\"sha256\": "
       "\"0000000000000000000000000000000000000000000000000000000000000000\"}]"
       "}}",
       "http.api_keys[0].name: required"},
      {"{\"http\": {\"api_keys\": [{\"name\": \"a\"}]}}",
       "http.api_keys[0].sha256: required"},
      {"{\"http\": {\"api_keys\": {}}}", "http.api_keys: "},
      {"{\"http\": {\"metrics_public\": 1}}", "http.metrics_public: "},
      {"{\"http\": {\"max_body_bytes\": 10}}", "http.max_body_bytes: "},
      {"{\"http\": {\"max_url_bytes\": 1e9}}", "http.max_url_bytes: "},
      {"{\"http\": {\"port\": 80}}", "http.port: unknown key"},
      {"{\"http\": {\"threads\": 65}}", "http.threads: "},
      {"{\"http\": {\"threads\": -1}}", "http.threads: "},
      {"{\"http\": {\"threads\": \"2\"}}", "http.threads: "},
      {"{\"http\": {\"api_keys\": [{\"name\": \"a\", \"sha256\": "
       "\"0000000000000000000000000000000000000000000000000000000000000000\"},"
       "{\"name\": \"a\", \"sha256\": "
       "\"1111111111111111111111111111111111111111111111111111111111111111\"}]"
       "}}",
       "http.api_keys[1].name: duplicate"},
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    config = tly_config_load_text(bad[i].json, strlen(bad[i].json), errstr,
                                  sizeof(errstr));
    if (config || strncmp(errstr, bad[i].path, strlen(bad[i].path)) != 0)
      fail_msg("%s: got '%s', expected '%s...'", bad[i].json, errstr,
               bad[i].path);
  }
}

/* ---- quota decision ------------------------------------------------------ */

static void test_quota_decide(void **state) {
  (void)state;
  tly_config_t *config = tly_config_default();
  const tly_plan_t *free_plan = tly_config_plan(config, "free");
  const tly_plan_t *paid = tly_config_plan(config, "paid");
  const tly_plan_t *professional = tly_config_plan(config, "professional");
  tly_req_quota_t quota;

  tly_req_quota_decide(config, free_plan, "api_calls", 999, 0, 1, &quota);
  assert_true(quota.allowed);
  assert_string_equal(quota.reason, "within_limit");
  assert_int_equal(quota.remaining, 0);
  tly_req_quota_decide(config, free_plan, "api_calls", 999, 0, 2, &quota);
  assert_false(quota.allowed);
  assert_string_equal(quota.reason, "limit_exceeded");
  /* Quantity 0 is a status check: allowed while not over. */
  tly_req_quota_decide(config, free_plan, "api_calls", 1000, 0, 0, &quota);
  assert_true(quota.allowed);
  /* Credits used up (2,500 credits = 2,500,000 micros) block a limited
   * feature even within its own limit. */
  tly_req_quota_decide(config, free_plan, "api_calls", 1, 2500000, 1, &quota);
  assert_false(quota.allowed);
  assert_string_equal(quota.reason, "credits_exhausted");
  /* Soft limit: allowed, flagged. */
  tly_req_quota_decide(config, paid, "api_calls", 100000, 0, 1, &quota);
  assert_true(quota.allowed);
  assert_string_equal(quota.reason, "soft_limit_exceeded");
  assert_string_equal(quota.mode, "soft");
  /* Unlimited: always, even past the credits. */
  tly_req_quota_decide(config, paid, "storage_bytes", INT64_MAX - 1,
                       INT64_MAX - 1, INT64_MAX, &quota);
  assert_true(quota.allowed);
  assert_string_equal(quota.reason, "unlimited");
  /* The request's own tier price counts against the credits: professional
   * has 100,000 credits and charges 50 micros per call past 500,000 calls
   * (a soft limit); with 99,999,950 micros spent, 20 more calls end at
   * 100,000.95 credits (100,000: fine), 21 at 100,001 (too many). */
  tly_req_quota_decide(config, professional, "api_calls", 500000, 99999950, 20,
                       &quota);
  assert_true(quota.allowed);
  assert_string_equal(quota.reason, "soft_limit_exceeded");
  tly_req_quota_decide(config, professional, "api_calls", 500000, 99999950, 21,
                       &quota);
  assert_false(quota.allowed);
  assert_string_equal(quota.reason, "credits_exhausted");
  /* Overflowing requests never wrap into "allowed". */
  tly_req_quota_decide(config, free_plan, "api_calls", INT64_MAX, 0, INT64_MAX,
                       &quota);
  assert_false(quota.allowed);
  tly_config_free(config);
}

static void test_effective_cycle(void **state) {
  (void)state;
  tly_config_t *config = tly_config_default();
  tly_account_t account = {.exists = 1};
  int64_t start, end;
  /* 2026-10-01 .. 2026-11-01, asked on 2026-11-23: ended, November shown. */
  account.cycle.start_ms = 1790812800000LL;
  account.cycle.end_ms = 1793491200000LL;
  assert_int_equal(
      tly_req_effective_cycle(config, &account, 1795400000000LL, &start, &end),
      1);
  assert_int_equal(start, 1793491200000LL);
  assert_int_equal(end, 1796083200000LL);
  assert_int_equal(
      tly_req_effective_cycle(config, &account, 1792000000000LL, &start, &end),
      0);
  assert_int_equal(start, account.cycle.start_ms);
  /* Stripe's period (the 15th): continues monthly from its end. */
  account.stripe_period = 1;
  account.cycle.start_ms = 1792022400000LL; /* 2026-10-15 */
  account.cycle.end_ms = 1794700800000LL;   /* 2026-11-15 */
  assert_int_equal(
      tly_req_effective_cycle(config, &account, 1795400000000LL, &start, &end),
      1);
  assert_int_equal(start, 1794700800000LL);
  assert_int_equal(end, 1797292800000LL); /* 2026-12-15 */
  tly_config_free(config);
}

/* ---- proration, dates, token prices -------------------------------------- */

static void test_prorate_rounding(void **state) {
  (void)state;
  assert_int_equal(tly_req_prorate_amount(30, 1, 3), 10);
  assert_int_equal(tly_req_prorate_amount(10, 1, 3), 3); /* 3.33 */
  assert_int_equal(tly_req_prorate_amount(20, 1, 3), 7); /* 6.67 */
  assert_int_equal(tly_req_prorate_amount(1, 1, 2), 1);  /* 0.5 up */
  assert_int_equal(tly_req_prorate_amount(3, 1, 2), 2);  /* 1.5 up */
  assert_int_equal(tly_req_prorate_amount(0, 5, 10), 0);
  /* No overflow with the largest price over a long cycle. */
  assert_int_equal(
      tly_req_prorate_amount(INT64_MAX, 2678400000LL, 2678400000LL), INT64_MAX);
  assert_int_equal(tly_req_prorate_amount(1, 1, 0), -1);
}

static void test_dates(void **state) {
  (void)state;
  int64_t ms;
  assert_int_equal(tly_req_parse_date("2026-11-16", &ms), 0);
  assert_int_equal(ms, 1794787200000LL);
  assert_int_equal(tly_req_parse_date("2024-02-29", &ms), 0);
  assert_int_equal(tly_req_parse_date("2026-02-29", &ms), -1);
  assert_int_equal(tly_req_parse_date("2026-13-01", &ms), -1);
  assert_int_equal(tly_req_parse_date("2026-1-01", &ms), -1);
  assert_int_equal(tly_req_parse_date("1969-12-31", &ms), -1);
  assert_int_equal(tly_req_parse_date("2026-11-16T00:00:00Z", &ms), -1);
}

static void test_history_queries(void **state) {
  (void)state;
  tly_req_error_t err;
  int32_t from, to;
  char date[16];
  assert_int_equal(
      tly_req_parse_daily("2026-11-01", "2026-11-16", &from, &to, &err), 0);
  assert_int_equal(from, (int32_t)(1793491200000LL / 86400000));
  assert_int_equal(to - from, 15);
  tly_req_format_day(to, date);
  assert_string_equal(date, "2026-11-16");
  tly_req_format_day(0, date);
  assert_string_equal(date, "1970-01-01");
  tly_req_format_day(from + 60, date);
  assert_string_equal(date, "2026-12-31");
  /* Each bad input names its field. */
  static const struct {
    const char *from, *to, *field;
  } bad[] = {
      {NULL, "2026-11-01", "from"},       {"2026-11", "2026-11-01", "from"},
      {"2026-11-01", NULL, "to"},         {"2026-11-01", "11/02", "to"},
      {"2026-11-02", "2026-11-01", "to"}, {"2025-01-01", "2026-01-02", "to"}};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    assert_int_equal(
        tly_req_parse_daily(bad[i].from, bad[i].to, &from, &to, &err), -1);
    assert_int_equal(err.status, 400);
    assert_string_equal(err.field, bad[i].field);
  }
  /* 366 days, both ends included, is the widest range. */
  assert_int_equal(
      tly_req_parse_daily("2025-01-01", "2026-01-01", &from, &to, &err), 0);

  int64_t limit;
  assert_int_equal(tly_req_parse_limit(NULL, &limit, &err), 0);
  assert_int_equal(limit, TLY_REQ_ALERTS_DEFAULT);
  assert_int_equal(tly_req_parse_limit("7", &limit, &err), 0);
  assert_int_equal(limit, 7);
  assert_int_equal(tly_req_parse_limit("0", &limit, &err), -1);
  assert_string_equal(err.field, "limit");
  assert_int_equal(tly_req_parse_limit("1001", &limit, &err), -1);
  assert_int_equal(tly_req_parse_limit("-3", &limit, &err), -1);
}

static void test_history_answers(void **state) {
  (void)state;
  tly_config_t *config = tly_config_default();
  tly_req_subject_t subject;
  tly_req_error_t err;
  assert_int_equal(tly_req_parse_subject("user:h", &subject, &err), 0);
  /* Hourly buckets in any order: two hours of one day and feature (summed),
   * one outside the range, one unused. */
  tly_subject_bucket_t hours[] = {
      {20002 * 24 + 3, {5, 0, 0, 2, 50}, "api_calls"},
      {20000 * 24 + 23, {30, 10, 20, 1, 7}, "ai_tokens"},
      {20000 * 24 + 1, {1, 0, 0, 1, 10}, "api_calls"},
      {20000 * 24 + 2, {2, 0, 0, 1, 20}, "api_calls"},
      {19990 * 24, {9, 0, 0, 9, 90}, "api_calls"},
      {20001 * 24, {0}, "storage_bytes"},
  };
  json_t *json = tly_req_daily_json(config, &subject, hours, 6, 19995, 20002);
  json_t *list = json_object_get(json, "days");
  assert_int_equal(json_array_size(list), 2);
  json_t *first = json_array_get(list, 0);
  assert_string_equal(json_string_value(json_object_get(first, "date")),
                      "2024-10-04");
  assert_int_equal(json_integer_value(json_object_get(first, "cost_micros")),
                   37);
  json_t *features = json_object_get(first, "features");
  assert_int_equal(json_object_size(features), 2);
  assert_int_equal(
      json_integer_value(json_object_get(json_object_get(features, "ai_tokens"),
                                         "output_tokens")),
      20);
  json_t *calls = json_object_get(features, "api_calls");
  assert_int_equal(json_integer_value(json_object_get(calls, "quantity")), 3);
  assert_int_equal(json_integer_value(json_object_get(calls, "events")), 2);
  assert_int_equal(json_integer_value(
                       json_object_get(json_array_get(list, 1), "cost_micros")),
                   50);
  assert_int_equal(json_integer_value(json_object_get(json, "retention_days")),
                   90);
  json_decref(json);
  assert_int_equal(tly_req_day_of_hour(23), 0);
  assert_int_equal(tly_req_day_of_hour(24), 1);
  assert_int_equal(tly_req_day_of_hour(-1), -1);
  assert_int_equal(tly_req_day_of_hour(-24), -1);
  assert_int_equal(tly_req_day_of_hour(-25), -2);

  /* Cycles come out newest first, each with only its own rows. */
  tly_subject_row_t rows[] = {{100, {3, 0, 0, 3, 3000, 0, 0, 0}, "api_calls"},
                              {200, {4, 0, 0, 4, 4000, 0, 0, 0}, "api_calls"}};
  tly_req_cycle_t cycles[] = {{{100, 200, 3000, 3}, 1, rows, 2},
                              {{200, 300, 4000, 4}, 0, rows, 2}};
  json = tly_req_cycles_json(config, &subject, cycles, 2);
  list = json_object_get(json, "cycles");
  assert_int_equal(json_array_size(list), 2);
  first = json_array_get(list, 0);
  assert_int_equal(json_integer_value(json_object_get(first, "start_ms")), 200);
  assert_true(json_is_false(json_object_get(first, "final")));
  assert_int_equal(json_integer_value(json_object_get(first, "credits_used")),
                   4);
  assert_int_equal(
      json_integer_value(json_object_get(
          json_object_get(json_object_get(first, "features"), "api_calls"),
          "quantity")),
      4);
  assert_true(json_is_true(json_object_get(json_array_get(list, 1), "final")));
  json_decref(json);
  tly_config_free(config);
}

static void test_token_cost_carries_the_remainder(void **state) {
  (void)state;
  tly_config_t *config = tly_config_default();
  const tly_model_price_t *mini = tly_config_model(config, "gpt-4o-mini");
  int64_t cost = 0, remainder = 0;
  /* One input token: 0.15 micros + 20 % = 0.18; ten of them: 1.8. */
  for (int i = 0; i < 10; i++)
    assert_int_equal(
        tly_billing_token_cost(config, mini, 1, 0, &cost, &remainder), 0);
  assert_int_equal(cost, 1);
  assert_int_equal(remainder, 8000000000LL);
  const tly_model_price_t *gpt4o = tly_config_model(config, "gpt-4o");
  cost = remainder = 0;
  assert_int_equal(
      tly_billing_token_cost(config, gpt4o, 1000, 500, &cost, &remainder), 0);
  assert_int_equal(cost, 9000);
  assert_int_equal(
      tly_billing_token_cost(config, gpt4o, INT64_MAX, 0, &cost, &remainder),
      -1);
  assert_int_equal(cost, 9000); /* untouched on overflow */
  tly_config_free(config);
}

/* ---- bodies -------------------------------------------------------------- */

/* /usage names each feature's aggregation (meters.<feature>), and its
 * quantity is the row's aggregated value. */
static void test_usage_aggregation(void **ctx) {
  (void)ctx;
  const char *text =
      "{\"meters\": {\"storage\": {\"aggregation\": \"latest\"}}}";
  char errstr[256];
  tly_config_t *config =
      tly_config_load_text(text, strlen(text), errstr, sizeof(errstr));
  assert_non_null(config);
  tly_req_subject_t subject;
  tly_req_error_t err;
  assert_int_equal(tly_req_parse_subject("user:g", &subject, &err), 0);
  tly_state_row_t rows[] = {{0, {7, 0, 0, 3, 0, 0, 0, 5}, "storage"},
                            {0, {4, 0, 0, 2, 0, 0, 0, 0}, "api_calls"}};
  tly_subject_state_t subject_state = {0};
  subject_state.account.exists = 1;
  snprintf(subject_state.account.plan, sizeof(subject_state.account.plan),
           "free");
  subject_state.account.cycle = (tly_cycle_t){0, INT64_MAX, 0, 5};
  subject_state.rows = rows;
  subject_state.row_count = 2;
  json_t *json = tly_req_usage_json(config, &subject, &subject_state, 1000);
  json_t *features = json_object_get(json, "features");
  json_t *storage = json_object_get(features, "storage");
  assert_string_equal(
      json_string_value(json_object_get(storage, "aggregation")), "latest");
  assert_int_equal(json_integer_value(json_object_get(storage, "quantity")), 7);
  assert_string_equal(
      json_string_value(json_object_get(json_object_get(features, "api_calls"),
                                        "aggregation")),
      "sum");
  json_decref(json);
  tly_config_free(config);
}

/* The daily and cycles answers as CSV: the same figures, one line per
 * (day or cycle, feature); fields quoted when they hold , " CR LF or
 * start like a formula. */
static void test_csv(void **ctx) {
  (void)ctx;
  json_t *daily =
      json_loads("{\"days\": [{\"date\": \"2026-01-02\", \"features\": {"
                 "\"api_calls\": {\"quantity\": 3, \"input_tokens\": 0, "
                 "\"output_tokens\": 0, \"events\": 2, \"cost_micros\": 30},"
                 "\"a,\\\"b\": {\"quantity\": 1, \"input_tokens\": 2, "
                 "\"output_tokens\": 3, \"events\": 4, \"cost_micros\": 5},"
                 "\"=cmd\": {\"quantity\": -1, \"input_tokens\": 0, "
                 "\"output_tokens\": 0, \"events\": 1, \"cost_micros\": 0}}}]}",
                 0, NULL);
  assert_non_null(daily);
  char *csv = tly_req_daily_csv(daily);
  assert_string_equal(csv,
                      "date,feature,quantity,input_tokens,output_tokens,events,"
                      "cost_micros\r\n"
                      "2026-01-02,api_calls,3,0,0,2,30\r\n"
                      "2026-01-02,\"a,\"\"b\",1,2,3,4,5\r\n"
                      "2026-01-02,\"=cmd\",-1,0,0,1,0\r\n");
  free(csv);
  json_decref(daily);
  json_t *cycles = json_loads(
      "{\"cycles\": [{\"start_ms\": 100, \"end_ms\": 200, \"final\": true,"
      "\"features\": {\"api_calls\": {\"quantity\": 3, \"input_tokens\": 0,"
      "\"output_tokens\": 0, \"events\": 3, \"cost_micros\": 3000}}}]}",
      0, NULL);
  csv = tly_req_cycles_csv(cycles);
  assert_string_equal(csv, "start_ms,end_ms,final,feature,quantity,"
                           "input_tokens,output_tokens,events,cost_micros\r\n"
                           "100,200,true,api_calls,3,0,0,3,3000\r\n");
  free(csv);
  json_decref(cycles);
  assert_true(tly_req_wants_csv("text/csv"));
  assert_true(tly_req_wants_csv("application/json;q=0.5, Text/CSV"));
  assert_false(tly_req_wants_csv("application/json"));
  assert_false(tly_req_wants_csv(NULL));
}

static void test_event_bodies(void **state) {
  (void)state;
  tly_config_t *config = tly_config_default();
  tly_req_events_t events;
  tly_req_error_t err;
  const char *body =
      "[{\"event_id\": \"a\", \"subject\": \"user:u\", \"feature\": "
      "\"api_calls\", \"quantity\": 1},"
      " {\"event_id\": \"b\", \"subject\": \"user:u\", \"feature\": "
      "\"api_calls\", \"quantity\": 1, \"typo\": 1},"
      " {\"event_id\": \"c\", \"subject\": \"user:u\", \"type\": "
      "\"plan_assigned\", \"plan\": \"nope\"},"
      " {\"event_id\": \"d\", \"subject\": \"user:u\", \"type\": \"tick\"}, 7]";
  assert_int_equal(
      tly_req_parse_events(config, body, strlen(body), 1000, &events, &err), 0);
  assert_int_equal(events.count, 5);
  assert_true(events.items[0].ok);
  assert_string_equal(events.items[0].event.subject_id, "u");
  assert_false(events.items[1].ok);
  assert_string_equal(events.items[1].error.field, "typo");
  assert_false(events.items[2].ok);
  assert_string_equal(events.items[2].error.code, "unknown_plan");
  assert_false(events.items[3].ok);
  assert_false(events.items[4].ok);
  tly_req_events_clear(&events);

  assert_int_equal(tly_req_parse_events(config, "{", 1, 0, &events, &err), -1);
  assert_string_equal(err.code, "malformed_json");
  assert_int_equal(tly_req_parse_events(config, "\"x\"", 3, 0, &events, &err),
                   -1);
  assert_int_equal(tly_req_parse_events(config, "", 0, 0, &events, &err), -1);
  /* Duplicate keys are ambiguous: refused. */
  const char *dup = "{\"event_id\": \"a\", \"event_id\": \"b\"}";
  assert_int_equal(
      tly_req_parse_events(config, dup, strlen(dup), 0, &events, &err), -1);

  tly_req_subject_t subject;
  assert_int_equal(tly_req_parse_subject("alice", &subject, &err), 0);
  assert_string_equal(subject.key, "user:alice");
  assert_int_equal(tly_req_parse_subject("system:tick", &subject, &err), -1);
  assert_string_equal(err.field, "subject");

  tly_event_t event = {0};
  const char *plan = "{\"plan\": \"paid\"}";
  assert_int_equal(tly_req_parse_plan(config, &subject, plan, strlen(plan), 5,
                                      "gen-1", &event, &err),
                   0);
  assert_int_equal(event.body_kind, TLY_BODY_PLAN_ASSIGNED);
  assert_string_equal(event.event_id, "gen-1");
  assert_string_equal(event.body.plan_assigned.plan, "paid");
  assert_int_equal(event.occurred_at_ms, 5);
  tly_event_clear(&event);
  plan = "{\"plan\": \"paid\", \"event_id\": 3}";
  assert_int_equal(tly_req_parse_plan(config, &subject, plan, strlen(plan), 5,
                                      "gen-1", &event, &err),
                   -1);
  assert_string_equal(err.field, "event_id");
  tly_config_free(config);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_openapi_matches_routes),
      cmocka_unit_test(test_auth),
      cmocka_unit_test(test_config_http_section),
      cmocka_unit_test(test_quota_decide),
      cmocka_unit_test(test_effective_cycle),
      cmocka_unit_test(test_prorate_rounding),
      cmocka_unit_test(test_dates),
      cmocka_unit_test(test_history_queries),
      cmocka_unit_test(test_history_answers),
      cmocka_unit_test(test_token_cost_carries_the_remainder),
      cmocka_unit_test(test_event_bodies),
      cmocka_unit_test(test_usage_aggregation),
      cmocka_unit_test(test_csv),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
