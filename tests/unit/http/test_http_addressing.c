/*
 * test_http_addressing.c - the HTTP port's addressing and arithmetic, pure
 * (issue 13, finding 7): percent-encoded subject segments, UTF-8 and length
 * checks on subjects from a path or a body, unknown models refused at
 * ingest as the fold would refuse them, and daily sums that saturate
 * instead of wrapping when one day holds the hours of two cycles.
 */
#include "tly_config.h"
#include "tly_request.h"
#include "tly_request_subject.h"
#include "tly_sat.h"

#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static void test_decode_segment(void **state) {
  (void)state;
  char out[TLY_REQ_SUBJECT_MAX + 2];
  tly_req_error_t err;
  static const struct {
    const char *raw, *decoded;
  } good[] = {
      {"user:alice", "user:alice"},
      {"user%3Aa%2Fb", "user:a/b"},
      {"user:a%2fb%3F%25%23", "user:a/b?%#"},
      {"user:a+b", "user:a+b"}, /* '+' is no space in a path */
      {"user:%C3%A9", "user:\xc3\xa9"},
      {"", ""},
  };
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
    assert_int_equal(tly_req_decode_segment(good[i].raw, strlen(good[i].raw),
                                            out, sizeof(out), &err),
                     0);
    assert_string_equal(out, good[i].decoded);
  }
  /* Only len bytes are read: the rest of the path is not the segment. */
  assert_int_equal(
      tly_req_decode_segment("user:x/usage", 6, out, sizeof(out), &err), 0);
  assert_string_equal(out, "user:x");
  static const char *const bad[] = {"user:%", "user:%4", "user:%zz", "user:%4g",
                                    "user:a%00b"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    memset(&err, 0, sizeof(err));
    assert_int_equal(
        tly_req_decode_segment(bad[i], strlen(bad[i]), out, sizeof(out), &err),
        -1);
    assert_int_equal(err.status, 400);
    assert_string_equal(err.field, "subject");
  }
  /* Too long for the buffer: 400, never a truncated subject. */
  char raw[3 * 600 + 1] = "";
  for (int i = 0; i < 600; i++)
    strcat(raw, "%41");
  assert_int_equal(
      tly_req_decode_segment(raw, strlen(raw), out, sizeof(out), &err), -1);
  assert_int_equal(err.status, 400);
}

static void test_utf8(void **state) {
  (void)state;
  static const char *const valid[] = {
      "", "abc", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "a\x7f"};
  for (size_t i = 0; i < sizeof(valid) / sizeof(valid[0]); i++)
    assert_true(tly_req_utf8_valid(valid[i], strlen(valid[i])));
  static const char *const invalid[] = {"\xff",
                                        "\x80",
                                        "\xc3",
                                        "\xc0\xaf",
                                        "\xe0\x80\xaf",
                                        "\xed\xa0\x80",
                                        "\xf4\x90\x80\x80",
                                        "a\xc3(",
                                        "\xf0\x9f\x98"};
  for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++)
    assert_false(tly_req_utf8_valid(invalid[i], strlen(invalid[i])));
  char text[] = "ok \xff \xc3\xa9 \xe2\x82";
  tly_req_utf8_sanitize(text);
  assert_string_equal(text, "ok ? \xc3\xa9 ??");
}

static void test_path_subjects(void **state) {
  (void)state;
  tly_req_subject_t subject;
  tly_req_error_t err;
  assert_int_equal(tly_req_parse_subject("user:a/b?c%d", &subject, &err), 0);
  assert_string_equal(subject.id, "a/b?c%d");
  assert_string_equal(subject.key, "user:a/b?c%d");
  assert_int_equal(
      tly_req_parse_subject("user:\xc3\xa9t\xc3\xa9", &subject, &err), 0);
  /* "user:%ff" decodes to a byte that is no UTF-8: 400 naming subject
   * (it was a 500 "out of memory" when the JSON answer failed). */
  memset(&err, 0, sizeof(err));
  assert_int_equal(tly_req_parse_subject("user:\xff", &subject, &err), -1);
  assert_int_equal(err.status, 400);
  assert_string_equal(err.field, "subject");
  assert_string_equal(err.code, "bad_subject");
  /* The bound is the event model's on the id (TLY_SUBJECT_ID_MAX). */
  char id[TLY_SUBJECT_ID_MAX + 2];
  memset(id, 'a', TLY_SUBJECT_ID_MAX + 1);
  id[TLY_SUBJECT_ID_MAX + 1] = '\0';
  memset(&err, 0, sizeof(err));
  assert_int_equal(tly_req_parse_subject(id, &subject, &err), -1);
  assert_int_equal(err.status, 400);
  assert_string_equal(err.field, "subject");
  id[TLY_SUBJECT_ID_MAX] = '\0';
  assert_int_equal(tly_req_parse_subject(id, &subject, &err), 0);
  assert_int_equal(strlen(subject.key), 5 + TLY_SUBJECT_ID_MAX);
}

/* One event through the ingest parser: 1 ok, 0 refused (err filled). */
static int parse_one(const tly_config_t *config, const char *body,
                     tly_req_error_t *err) {
  tly_req_events_t events;
  tly_req_error_t whole;
  assert_int_equal(
      tly_req_parse_events(config, body, strlen(body), 1000, &events, &whole),
      0);
  assert_int_equal(events.count, 1);
  int ok = events.items[0].ok;
  *err = events.items[0].error;
  tly_req_events_clear(&events);
  return ok;
}

static void test_ingest_refuses_what_the_fold_would(void **state) {
  (void)state;
  tly_req_error_t err;
  tly_config_t *config = tly_config_default();
  static const char unknown_model[] =
      "{\"event_id\": \"m\", \"subject\": \"user:u\", \"feature\": "
      "\"ai_tokens\", \"quantity\": 5, \"ai\": {\"provider\": \"x\", "
      "\"model\": \"no-such-model\", \"input_tokens\": 3, "
      "\"output_tokens\": 2}}";
  static const char known_model[] =
      "{\"event_id\": \"m\", \"subject\": \"user:u\", \"feature\": "
      "\"ai_tokens\", \"quantity\": 5, \"ai\": {\"provider\": \"openai\", "
      "\"model\": \"gpt-4o\", \"input_tokens\": 3, \"output_tokens\": 2}}";
  assert_false(parse_one(config, unknown_model, &err));
  assert_int_equal(err.status, 400);
  assert_string_equal(err.code, "unknown_model");
  assert_string_equal(err.field, "ai.model");
  assert_true(parse_one(config, known_model, &err));
  tly_config_free(config);
  /* With a fallback price, the fold prices any model: accepted. */
  static const char fallback[] =
      "{\"pricing\": {\"unknown_model\": \"fallback\", \"fallback\": "
      "{\"input_per_mtok\": 1, \"output_per_mtok\": 1}}}";
  char errstr[256];
  config =
      tly_config_load_text(fallback, strlen(fallback), errstr, sizeof(errstr));
  assert_non_null(config);
  assert_true(parse_one(config, unknown_model, &err));
  tly_config_free(config);

  /* A subject the port could not address again is refused with 400 (it
   * was accepted, then failed to produce: a retryable 503). */
  config = tly_config_default();
  char body[2048];
  char id[1101];
  memset(id, 'a', 1100);
  id[1100] = '\0';
  snprintf(body, sizeof(body),
           "{\"event_id\": \"l\", \"subject\": \"user:%s\", \"feature\": "
           "\"api_calls\", \"quantity\": 1}",
           id);
  assert_false(parse_one(config, body, &err));
  assert_int_equal(err.status, 400);
  assert_string_equal(err.field, "subject");
  id[TLY_SUBJECT_ID_MAX + 1] = '\0'; /* one byte over the id's bound */
  snprintf(body, sizeof(body),
           "{\"event_id\": \"l\", \"subject\": \"user:%s\", \"feature\": "
           "\"api_calls\", \"quantity\": 1}",
           id);
  assert_false(parse_one(config, body, &err));
  id[TLY_SUBJECT_ID_MAX] = '\0'; /* the longest */
  snprintf(body, sizeof(body),
           "{\"event_id\": \"l\", \"subject\": \"user:%s\", \"feature\": "
           "\"api_calls\", \"quantity\": 1}",
           id);
  assert_true(parse_one(config, body, &err));
  /* A '/' in a subject is fine: the path percent-encodes it. */
  assert_true(parse_one(config,
                        "{\"event_id\": \"s\", \"subject\": \"user:a/b\", "
                        "\"feature\": \"api_calls\", \"quantity\": 1}",
                        &err));
  tly_config_free(config);
}

static void test_daily_sums_saturate(void **state) {
  (void)state;
  tly_config_t *config = tly_config_default();
  tly_req_subject_t subject;
  tly_req_error_t err;
  assert_int_equal(tly_req_parse_subject("user:big", &subject, &err), 0);
  /* Two hours of day 20000, each near INT64_MAX (the fold caps each
   * cycle's total, not a day's: the hours belong to two cycles). */
  const int64_t near = INT64_MAX - 1000;
  tly_subject_bucket_t hours[] = {
      {20000 * 24 + 1, {near, near, near, near, near}, "storage_bytes"},
      {20000 * 24 + 5, {near, near, near, near, near}, "storage_bytes"},
      {20000 * 24 + 6, {1, 0, 0, 1, INT64_MAX}, "api_calls"},
  };
  json_t *json = tly_req_daily_json(config, &subject, hours, 3, 20000, 20000);
  assert_non_null(json);
  json_t *day = json_array_get(json_object_get(json, "days"), 0);
  json_t *storage =
      json_object_get(json_object_get(day, "features"), "storage_bytes");
  static const char *const fields[] = {
      "quantity", "input_tokens", "output_tokens", "events", "cost_micros"};
  for (size_t i = 0; i < 5; i++)
    assert_int_equal(json_integer_value(json_object_get(storage, fields[i])),
                     INT64_MAX);
  /* The day's cost over its features saturates too. */
  assert_int_equal(json_integer_value(json_object_get(day, "cost_micros")),
                   INT64_MAX);
  json_decref(json);
  /* Negative costs (a volume tier getting cheaper) hold at INT64_MIN. */
  assert_int_equal(tly_add_saturating(INT64_MIN + 5, -10), INT64_MIN);
  assert_int_equal(tly_add_saturating(INT64_MAX, INT64_MIN), -1);
  assert_int_equal(tly_add_saturating(40, 2), 42);
  tly_config_free(config);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_decode_segment),
      cmocka_unit_test(test_utf8),
      cmocka_unit_test(test_path_subjects),
      cmocka_unit_test(test_ingest_refuses_what_the_fold_would),
      cmocka_unit_test(test_daily_sums_saturate),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
