/*
 * test_time_bounds.c - the bounds on event time (tly_event_time.h) and where
 * they are applied without a broker: the absolute range and the future
 * skew, the config's "events" section, the JSON reader, and the HTTP
 * port's event bodies and ?at= (the processor's side, against the record's
 * Kafka timestamp, is tests/integration/test_event_time.c).
 */
#include "tly_config.h"
#include "tly_event_json.h"
#include "tly_event_time.h"
#include "tly_request.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define NOW 1796371984000LL /* 2026-12-04T08:13:04Z */
#define SKEW TLY_DEFAULT_MAX_FUTURE_SKEW_MS

static tly_event_t usage_at(int64_t t) {
  return (tly_event_t){.event_id = "e",
                       .occurred_at_ms = t,
                       .subject_kind = TLY_SUBJECT_USER,
                       .subject_id = "u",
                       .body_kind = TLY_BODY_USAGE_RECORDED,
                       .body.usage = {.feature = "f", .quantity = 1}};
}

static void test_range(void **state) {
  (void)state;
  char errstr[512];
  assert_true(tly_event_time_in_range(0));
  assert_true(tly_event_time_in_range(TLY_TIME_MAX_MS));
  assert_false(tly_event_time_in_range(-1));
  assert_false(tly_event_time_in_range(TLY_TIME_MAX_MS + 1));
  assert_false(tly_event_time_in_range(INT64_MIN));
  assert_false(tly_event_time_in_range(INT64_MAX));
  /* TLY_TIME_MAX_MS is the last millisecond of 9999. */
  assert_int_equal(TLY_TIME_MAX_MS + 1, 253402300800000LL);

  static const int64_t bad[] = {INT64_MIN, -1, TLY_TIME_MAX_MS + 1, INT64_MAX};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    tly_event_t event = usage_at(bad[i]);
    /* With no clock, and with one the time would pass. */
    assert_int_equal(
        tly_event_time_check(&event, 0, SKEW, NULL, errstr, sizeof(errstr)),
        -1);
    assert_non_null(strstr(errstr, "field 'occurred_at': "));
    assert_non_null(strstr(errstr, "outside the range"));
    assert_int_equal(tly_event_time_check(&event, INT64_MAX, SKEW, "now",
                                          errstr, sizeof(errstr)),
                     -1);
  }
  tly_event_t event = usage_at(TLY_TIME_MAX_MS);
  assert_int_equal(
      tly_event_time_check(&event, 0, SKEW, NULL, errstr, sizeof(errstr)), 0);

  /* Period bounds: 0 is "unknown", anything else in the range. */
  tly_event_t paid = {.event_id = "p",
                      .occurred_at_ms = NOW,
                      .subject_kind = TLY_SUBJECT_USER,
                      .subject_id = "u",
                      .body_kind = TLY_BODY_INVOICE_PAID,
                      .body.invoice_paid = {"in_1", 1, 0, 0}};
  assert_int_equal(
      tly_event_time_check(&paid, NOW, SKEW, "now", errstr, sizeof(errstr)), 0);
  paid.body.invoice_paid.period_end_ms = INT64_MAX;
  assert_int_equal(
      tly_event_time_check(&paid, NOW, SKEW, "now", errstr, sizeof(errstr)),
      -1);
  assert_non_null(strstr(errstr, "field 'period_end': "));
  /* A period ahead of the clock is Stripe's next cycle: no skew rule. */
  paid.body.invoice_paid.period_start_ms = NOW + 100LL * 86400000;
  paid.body.invoice_paid.period_end_ms = NOW + 130LL * 86400000;
  assert_int_equal(
      tly_event_time_check(&paid, NOW, SKEW, "now", errstr, sizeof(errstr)), 0);
}

static void test_future_skew(void **state) {
  (void)state;
  char errstr[512];
  tly_event_t event = usage_at(NOW + SKEW);
  assert_int_equal(
      tly_event_time_check(&event, NOW, SKEW, "now", errstr, sizeof(errstr)),
      0);
  event.occurred_at_ms = NOW + SKEW + 1;
  assert_int_equal(tly_event_time_check(&event, NOW, SKEW,
                                        "the record's Kafka timestamp", errstr,
                                        sizeof(errstr)),
                   -1);
  assert_non_null(strstr(errstr, "field 'occurred_at': "));
  assert_non_null(strstr(errstr, "300001 ms after the record's Kafka "
                                 "timestamp 1796371984000"));
  assert_non_null(strstr(errstr, "events.max_future_skew_ms"));
  /* 2126: the event that used to poison its partition's watermark. */
  event.occurred_at_ms = 4951152000000LL; /* 2126-11-24 */
  assert_int_equal(
      tly_event_time_check(&event, NOW, SKEW, "now", errstr, sizeof(errstr)),
      -1);
  assert_non_null(strstr(errstr, "(2126-11-24T00:00:00.000Z)"));
  /* The past is not this rule's (the fold's dedupe window is). */
  event.occurred_at_ms = 0;
  assert_int_equal(
      tly_event_time_check(&event, NOW, SKEW, "now", errstr, sizeof(errstr)),
      0);
  /* Skew 0: nothing after the clock. */
  event.occurred_at_ms = NOW + 1;
  assert_int_equal(
      tly_event_time_check(&event, NOW, 0, "now", errstr, sizeof(errstr)), -1);
  event.occurred_at_ms = NOW;
  assert_int_equal(
      tly_event_time_check(&event, NOW, 0, "now", errstr, sizeof(errstr)), 0);
  /* No clock (a record without a timestamp): the range only. */
  event.occurred_at_ms = TLY_TIME_MAX_MS;
  assert_int_equal(
      tly_event_time_check(&event, 0, SKEW, NULL, errstr, sizeof(errstr)), 0);
  assert_int_equal(
      tly_event_time_check(&event, -1, SKEW, NULL, errstr, sizeof(errstr)), 0);
  /* Clocks and skews at the int64 edges: no overflow (UBSan watches). */
  assert_int_equal(tly_event_time_check(&event, INT64_MAX, INT64_MAX, "now",
                                        errstr, sizeof(errstr)),
                   0);
  assert_int_equal(
      tly_event_time_check(&event, 1, INT64_MAX, "now", errstr, sizeof(errstr)),
      0);
  assert_int_equal(
      tly_event_time_check(&event, 1, INT64_MIN, "now", errstr, sizeof(errstr)),
      -1);
}

static void test_config_events_section(void **state) {
  (void)state;
  char errstr[512];
  tly_config_t *config = tly_config_default();
  assert_non_null(config);
  assert_int_equal(config->events.max_future_skew_ms, 300000);
  tly_config_free(config);

  const char *ok = "{\"events\": {\"max_future_skew_ms\": 60000}}";
  config = tly_config_load_text(ok, strlen(ok), errstr, sizeof(errstr));
  assert_non_null(config);
  assert_int_equal(config->events.max_future_skew_ms, 60000);
  tly_config_free(config);

  /* The dedupe window: 35 days by default, an hour to 366 days. */
  config = tly_config_default();
  assert_int_equal(config->events.dedupe_window_ms, 35LL * 86400000);
  tly_config_free(config);
  const char *window = "{\"events\": {\"dedupe_window_ms\": 604800000}}";
  config = tly_config_load_text(window, strlen(window), errstr, sizeof(errstr));
  assert_non_null(config);
  assert_int_equal(config->events.dedupe_window_ms, 604800000);
  assert_int_equal(config->events.max_future_skew_ms, 300000);
  tly_config_free(config);

  static const struct {
    const char *json, *message;
  } bad[] = {
      {"{\"events\": {\"max_future_skew_ms\": -1}}",
       "events.max_future_skew_ms: must be an integer from 0 to 31622400000"},
      {"{\"events\": {\"max_future_skew_ms\": 31622400001}}",
       "events.max_future_skew_ms: must be an integer from 0 to"},
      {"{\"events\": {\"max_future_skew_ms\": \"5m\"}}",
       "events.max_future_skew_ms: must be an integer"},
      {"{\"events\": {\"max_past_ms\": 1}}", "events.max_past_ms: unknown key"},
      {"{\"events\": {\"dedupe_window_ms\": 3599999}}",
       "events.dedupe_window_ms: must be an integer from 3600000 to "
       "31622400000"},
      {"{\"events\": {\"dedupe_window_ms\": 31622400001}}",
       "events.dedupe_window_ms: must be an integer from 3600000 to"},
      {"{\"events\": {\"dedupe_window_ms\": \"35d\"}}",
       "events.dedupe_window_ms: must be an integer"},
      {"{\"events\": 5}", "events: must be an object"},
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    config = tly_config_load_text(bad[i].json, strlen(bad[i].json), errstr,
                                  sizeof(errstr));
    if (config || !strstr(errstr, bad[i].message))
      fail_msg("%s: expected '%s', got '%s'", bad[i].json, bad[i].message,
               config ? "(loaded)" : errstr);
  }
}

static void test_json_reader_range(void **state) {
  (void)state;
  char errstr[512], line[512];
  tly_event_t event = {0};
  static const struct {
    const char *occurred_at, *message;
  } cases[] = {
      {"9223372036854775807", "field 'occurred_at': milliseconds must be at "
                              "most 253402300799999"},
      {"253402300800000", "field 'occurred_at': milliseconds must be at most"},
      {"-9223372036854775808",
       "field 'occurred_at': milliseconds must be >= 0"},
      {"\"9999-12-31T23:30:00-01:00\"",
       "field 'occurred_at': after 9999-12-31T23:59:59.999Z"},
      {"253402300799999", NULL},
      {"\"9999-12-31T23:59:59.999Z\"", NULL},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    snprintf(line, sizeof(line),
             "{\"event_id\": \"e\", \"subject\": \"u\", \"feature\": \"f\", "
             "\"quantity\": 1, \"occurred_at\": %s}",
             cases[i].occurred_at);
    int rc = tly_event_from_json_text(line, strlen(line), NOW, &event, errstr,
                                      sizeof(errstr));
    if (cases[i].message ? rc != -1 || !strstr(errstr, cases[i].message)
                         : rc != 0)
      fail_msg("occurred_at %s: rc %d, '%s'", cases[i].occurred_at, rc,
               rc ? errstr : "");
    if (!rc)
      assert_int_equal(event.occurred_at_ms, TLY_TIME_MAX_MS);
    tly_event_clear(&event);
  }
  /* Period bounds too. */
  const char *paid =
      "{\"type\": \"invoice_paid\", \"event_id\": \"e\", \"subject\": \"u\", "
      "\"invoice_id\": \"in_1\", \"amount_paid_micros\": 1, \"period_start\": "
      "1, "
      "\"period_end\": "
      "9223372036854775807}";
  assert_int_equal(tly_event_from_json_text(paid, strlen(paid), NOW, &event,
                                            errstr, sizeof(errstr)),
                   -1);
  assert_non_null(strstr(errstr, "field 'period_end': "));
}

/* POST /v1/events and /plan: 400 naming occurred_at past now + skew. */
static void test_http_event_bodies(void **state) {
  (void)state;
  char body[1024];
  tly_req_events_t events;
  tly_req_error_t err;
  tly_config_t *config = tly_config_default();
  snprintf(body, sizeof(body),
           "[{\"event_id\": \"max\", \"subject\": \"user:u\", \"feature\": "
           "\"api_calls\", \"quantity\": 1, \"occurred_at\": "
           "9223372036854775807},"
           " {\"event_id\": \"late\", \"subject\": \"user:u\", \"feature\": "
           "\"api_calls\", \"quantity\": 0, \"occurred_at\": %lld},"
           " {\"event_id\": \"near\", \"subject\": \"user:u\", \"feature\": "
           "\"api_calls\", \"quantity\": 1, \"occurred_at\": %lld},"
           " {\"event_id\": \"y2126\", \"subject\": \"user:u\", \"feature\": "
           "\"api_calls\", \"quantity\": 1, \"occurred_at\": "
           "\"2126-11-24T00:00:00Z\"}]",
           NOW + SKEW + 1, NOW + SKEW);
  assert_int_equal(
      tly_req_parse_events(config, body, strlen(body), NOW, &events, &err), 0);
  assert_int_equal(events.count, 4);
  assert_false(events.items[0].ok);
  assert_int_equal(events.items[0].error.status, 400);
  assert_string_equal(events.items[0].error.field, "occurred_at");
  assert_false(events.items[1].ok);
  assert_string_equal(events.items[1].error.field, "occurred_at");
  assert_non_null(strstr(events.items[1].error.message, "after now"));
  assert_null(events.items[1].event.event_id); /* nothing left to send */
  assert_true(events.items[2].ok);
  assert_false(events.items[3].ok);
  assert_string_equal(events.items[3].error.field, "occurred_at");
  tly_req_events_clear(&events);

  /* The configured skew is the one applied. */
  config->events.max_future_skew_ms = 1000;
  snprintf(body, sizeof(body),
           "{\"event_id\": \"a\", \"subject\": \"user:u\", \"feature\": "
           "\"api_calls\", \"quantity\": 1, \"occurred_at\": %lld}",
           NOW + 1001);
  assert_int_equal(
      tly_req_parse_events(config, body, strlen(body), NOW, &events, &err), 0);
  assert_false(events.items[0].ok);
  tly_req_events_clear(&events);

  tly_req_subject_t subject;
  tly_event_t event = {0};
  assert_int_equal(tly_req_parse_subject("user:u", &subject, &err), 0);
  snprintf(body, sizeof(body), "{\"plan\": \"paid\", \"occurred_at\": %lld}",
           NOW + 1001);
  assert_int_equal(tly_req_parse_plan(config, &subject, body, strlen(body), NOW,
                                      "gen-1", &event, &err),
                   -1);
  assert_int_equal(err.status, 400);
  assert_string_equal(err.field, "occurred_at");
  assert_null(event.event_id);
  tly_config_free(config);
}

/* ?at= on /usage and /quota: within the range of event times, 400 naming
 * "at" otherwise (INT64_MAX pinned an HTTP thread before). */
static void test_http_at(void **state) {
  (void)state;
  tly_req_error_t err;
  int64_t at = 0;
  assert_int_equal(tly_req_parse_at(NULL, NOW, &at, &err), 0);
  assert_int_equal(at, NOW);
  assert_int_equal(tly_req_parse_at("253402300799999", NOW, &at, &err), 0);
  assert_int_equal(at, TLY_TIME_MAX_MS);
  assert_int_equal(tly_req_parse_at("0", NOW, &at, &err), 0);
  assert_int_equal(at, 0);
  static const char *const bad[] = {"9223372036854775807",
                                    "253402300800000",
                                    "9223372036854775808",
                                    "-1",
                                    "",
                                    "1e3"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    memset(&err, 0, sizeof(err));
    if (tly_req_parse_at(bad[i], NOW, &at, &err) != -1)
      fail_msg("at=%s accepted", bad[i]);
    assert_int_equal(err.status, 400);
    assert_string_equal(err.field, "at");
    assert_non_null(strstr(err.message, "253402300799999"));
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_range),
      cmocka_unit_test(test_future_skew),
      cmocka_unit_test(test_config_events_section),
      cmocka_unit_test(test_json_reader_range),
      cmocka_unit_test(test_http_event_bodies),
      cmocka_unit_test(test_http_at),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
