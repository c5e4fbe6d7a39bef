/*
 * test_request_groups.c - answers by dimension and the analytics answers
 * (tly_request_groups.h), pure: group_by parsing and its 400 naming the
 * field; the daily and usage answers' groups summing to each feature
 * exactly, hours without groups counted in "none", groups never shown as
 * features; the daily CSV's group column; the analytics query's bounds and
 * defaults; a subject's part (top, breakdown by model and by plan), the
 * merge of several instances' parts (order by the figure then subject,
 * limit, groups summed, complete only when every part is) and the CSV.
 */
#include "tly_dims.h"
#include "tly_request.h"
#include "tly_request_groups.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define HOUR_MS 3600000LL

static tly_subject_bucket_t bucket(int32_t hour, const char *feature,
                                   const char *label, const char *value,
                                   int64_t quantity, int64_t events,
                                   int64_t cost) {
  tly_subject_bucket_t b = {.hour = hour};
  if (label)
    tly_dims_bucket_name(b.feature, sizeof(b.feature), feature, label, value);
  else
    snprintf(b.feature, sizeof(b.feature), "%s", feature);
  b.totals = (tly_bucket_t){quantity, 0, 0, events, cost};
  return b;
}

static json_int_t member(const json_t *o, const char *key) {
  return json_integer_value(json_object_get(o, key));
}

/* The group of value in a groups list, or NULL. */
static const json_t *find(const json_t *groups, const char *value) {
  for (size_t i = 0; i < json_array_size(groups); i++)
    if (!strcmp(json_string_value(
                    json_object_get(json_array_get(groups, i), "value")),
                value))
      return json_array_get(groups, i);
  return NULL;
}

static void test_parse_group_by(void **state) {
  (void)state;
  char label[TLY_ANALYTICS_LABEL_MAX];
  tly_req_error_t err;
  assert_int_equal(tly_req_parse_group_by(NULL, 0, label, &err), 0);
  assert_string_equal(label, "");
  assert_int_equal(tly_req_parse_group_by("provider", 0, label, &err), 0);
  assert_string_equal(label, "provider");
  assert_int_equal(tly_req_parse_group_by("properties.region", 0, label, &err),
                   0);
  assert_string_equal(label, "properties.region");
  assert_int_equal(tly_req_parse_group_by("plan", 0, label, &err), -1);
  assert_int_equal(err.status, 400);
  assert_string_equal(err.field, "group_by");
  assert_int_equal(tly_req_parse_group_by("plan", 1, label, &err), 0);
  assert_int_equal(tly_req_parse_group_by("region", 1, label, &err), -1);
  assert_string_equal(err.field, "group_by");
}

static void test_daily_and_usage_groups(void **state) {
  (void)state;
  tly_config_t *config = tly_config_default();
  tly_req_subject_t subject;
  tly_req_error_t err;
  assert_int_equal(tly_req_parse_subject("user:g", &subject, &err), 0);
  int32_t d = 20000 * 24;
  tly_subject_bucket_t hours[] = {
      bucket(d + 1, "ai", NULL, NULL, 30, 3, 300),
      bucket(d + 1, "ai", "model", "m1", 10, 1, 100),
      bucket(d + 1, "ai", "model", "m2", 20, 2, 200),
      bucket(d + 1, "ai", "provider", "p", 30, 3, 300),
      bucket(d + 2, "ai", NULL, NULL, 5, 1, 50), /* no groups: "none" */
      bucket(d + 2, "api", NULL, NULL, 4, 4, 40),
      bucket(d + 25, "ai", NULL, NULL, 7, 1, 70),
      bucket(d + 25, "ai", "model", "m2", 7, 1, 70),
  };
  size_t n = sizeof(hours) / sizeof(hours[0]);
  json_t *daily = tly_req_daily_json(config, &subject, hours, n, 20000, 20001);
  assert_int_equal(tly_req_daily_add_groups(daily, "model", hours, n), 0);
  json_t *days = json_object_get(daily, "days");
  assert_int_equal(json_array_size(days), 2);
  json_t *features = json_object_get(json_array_get(days, 0), "features");
  assert_int_equal(json_object_size(features), 2); /* groups are no feature */
  json_t *ai = json_object_get(features, "ai");
  assert_int_equal(member(ai, "quantity"), 35);
  json_t *groups = json_object_get(ai, "groups");
  assert_int_equal(json_array_size(groups), 3);
  assert_string_equal(
      json_string_value(json_object_get(json_array_get(groups, 0), "value")),
      "m1");
  assert_int_equal(member(find(groups, "m1"), "cost_micros"), 100);
  assert_int_equal(member(find(groups, "m2"), "quantity"), 20);
  assert_int_equal(member(find(groups, "none"), "quantity"), 5);
  json_int_t q = 0, c = 0, e = 0;
  for (size_t i = 0; i < json_array_size(groups); i++) {
    q += member(json_array_get(groups, i), "quantity");
    c += member(json_array_get(groups, i), "cost_micros");
    e += member(json_array_get(groups, i), "events");
  }
  assert_int_equal(q, member(ai, "quantity"));
  assert_int_equal(c, member(ai, "cost_micros"));
  assert_int_equal(e, member(ai, "events"));
  json_t *api = json_object_get(features, "api");
  assert_int_equal(
      member(find(json_object_get(api, "groups"), "none"), "events"), 4);
  char *csv = tly_req_daily_groups_csv(daily);
  assert_non_null(csv);
  assert_non_null(
      strstr(csv, "date,feature,group,quantity,input_tokens,output_tokens,"
                  "events,cost_micros\r\n"));
  assert_non_null(strstr(csv, "2024-10-04,ai,m1,10,0,0,1,100\r\n"));
  assert_non_null(strstr(csv, "2024-10-04,ai,none,5,0,0,1,50\r\n"));
  assert_non_null(strstr(csv, "2024-10-05,ai,m2,7,0,0,1,70\r\n"));
  free(csv);
  json_decref(daily);

  /* /usage: the hours overlapping the cycle. */
  json_t *usage =
      json_pack("{s:{s:{s:I}}}", "features", "ai", "quantity", (json_int_t)35);
  assert_int_equal(tly_req_usage_add_groups(usage, "model", hours, n,
                                            (int64_t)d * HOUR_MS,
                                            (int64_t)(d + 24) * HOUR_MS),
                   0);
  groups = json_object_get(
      json_object_get(json_object_get(usage, "features"), "ai"), "groups");
  assert_int_equal(json_array_size(groups), 3);
  assert_int_equal(member(find(groups, "m2"), "quantity"), 20);
  assert_string_equal(json_string_value(json_object_get(usage, "group_by")),
                      "model");
  json_decref(usage);
  tly_config_free(config);
}

static void test_parse_analytics(void **state) {
  (void)state;
  tly_config_t *config = tly_config_default();
  tly_analytics_query_t q;
  tly_req_error_t err;
  int64_t now = 1767225600000LL + 5 * 86400000LL; /* 2026-01-06 */
  assert_int_equal(tly_req_parse_analytics(config, TLY_ANALYTICS_TOP, NULL,
                                           NULL, NULL, NULL, NULL, NULL, now,
                                           &q, &err),
                   0);
  assert_int_equal(q.limit, 10);
  assert_true(q.by_cost);
  assert_true(q.from_ms <= now && now < q.to_ms);
  assert_int_equal(tly_req_parse_analytics(config, TLY_ANALYTICS_TOP, "ai",
                                           "quantity", NULL, "2026-01-01",
                                           "2026-01-01", "1000", now, &q, &err),
                   0);
  assert_false(q.by_cost);
  assert_int_equal(q.to_ms - q.from_ms, 86400000LL);
  assert_int_equal(tly_req_parse_analytics(config, TLY_ANALYTICS_TOP, NULL,
                                           NULL, NULL, NULL, NULL, "1001", now,
                                           &q, &err),
                   -1);
  assert_string_equal(err.field, "limit");
  assert_int_equal(tly_req_parse_analytics(config, TLY_ANALYTICS_TOP, NULL,
                                           "price", NULL, NULL, NULL, NULL, now,
                                           &q, &err),
                   -1);
  assert_string_equal(err.field, "by");
  assert_int_equal(tly_req_parse_analytics(config, TLY_ANALYTICS_BREAKDOWN,
                                           NULL, NULL, NULL, NULL, NULL, NULL,
                                           now, &q, &err),
                   -1);
  assert_string_equal(err.field, "group_by");
  assert_int_equal(tly_req_parse_analytics(config, TLY_ANALYTICS_BREAKDOWN,
                                           NULL, NULL, "color", NULL, NULL,
                                           NULL, now, &q, &err),
                   -1);
  assert_string_equal(err.field, "group_by");
  assert_int_equal(tly_req_parse_analytics(config, TLY_ANALYTICS_BREAKDOWN,
                                           NULL, NULL, "plan", "2026-01-05",
                                           "2026-01-04", NULL, now, &q, &err),
                   -1);
  assert_string_equal(err.field, "to");
  tly_config_free(config);
}

static void test_analytics_parts(void **state) {
  (void)state;
  tly_config_t *config = tly_config_default();
  tly_analytics_query_t q;
  tly_req_error_t err;
  int32_t h = 20000 * 24;
  int64_t now = (int64_t)h * HOUR_MS;
  assert_int_equal(tly_req_parse_analytics(config, TLY_ANALYTICS_TOP, "ai",
                                           "cost", NULL, "2024-10-04",
                                           "2024-10-04", "2", now, &q, &err),
                   0);
  tly_subject_bucket_t a[] = {bucket(h, "ai", NULL, NULL, 10, 1, 500),
                              bucket(h, "ai", "model", "m1", 10, 1, 500),
                              bucket(h, "api", NULL, NULL, 99, 9, 9999),
                              bucket(h - 1, "ai", NULL, NULL, 1, 1, 1)};
  tly_subject_bucket_t b[] = {bucket(h + 3, "ai", NULL, NULL, 20, 2, 500)};
  tly_subject_bucket_t c[] = {bucket(h + 4, "ai", NULL, NULL, 5, 1, 900),
                              bucket(h + 4, "ai", "model", "m2", 5, 1, 900)};
  /* Two instances' parts: {a, b} and {c}. */
  tly_analytics_acc_t *one = tly_analytics_acc_new(&q);
  tly_analytics_acc_t *two = tly_analytics_acc_new(&q);
  assert_int_equal(tly_analytics_acc_subject(one, "user:a", "t", a, 4), 0);
  assert_int_equal(tly_analytics_acc_subject(one, "user:b", "t", b, 1), 0);
  assert_int_equal(tly_analytics_acc_subject(two, "user:c", "free", c, 2), 0);
  json_t *parts[2] = {tly_analytics_acc_json(one, 1),
                      tly_analytics_acc_json(two, 1)};
  json_t *top = tly_analytics_merge(&q, parts, 2, &err);
  assert_non_null(top);
  json_t *subjects = json_object_get(top, "subjects");
  assert_int_equal(json_array_size(subjects), 2); /* the limit */
  /* 900 first; a and b tie at 500: subject ascending. */
  assert_string_equal(json_string_value(json_object_get(
                          json_array_get(subjects, 0), "subject")),
                      "user:c");
  assert_string_equal(json_string_value(json_object_get(
                          json_array_get(subjects, 1), "subject")),
                      "user:a");
  assert_int_equal(member(json_array_get(subjects, 1), "quantity"), 10);
  assert_true(json_is_true(json_object_get(top, "complete")));
  assert_string_equal(json_string_value(json_object_get(top, "feature")), "ai");
  assert_string_equal(json_string_value(json_object_get(top, "by")), "cost");
  char *csv = tly_req_analytics_csv(top);
  assert_string_equal(csv, "subject,quantity,cost_micros,events\r\n"
                           "user:c,5,900,1\r\nuser:a,10,500,1\r\n");
  free(csv);
  json_decref(top);
  json_decref(parts[0]);
  json_decref(parts[1]);
  tly_analytics_acc_free(one);
  tly_analytics_acc_free(two);

  /* Breakdown by model over every feature: api has no model: "none". */
  assert_int_equal(tly_req_parse_analytics(config, TLY_ANALYTICS_BREAKDOWN,
                                           NULL, NULL, "model", "2024-10-04",
                                           "2024-10-04", NULL, now, &q, &err),
                   0);
  one = tly_analytics_acc_new(&q);
  two = tly_analytics_acc_new(&q);
  assert_int_equal(tly_analytics_acc_subject(one, "user:a", "t", a, 4), 0);
  assert_int_equal(tly_analytics_acc_subject(one, "user:b", "t", b, 1), 0);
  assert_int_equal(tly_analytics_acc_subject(two, "user:c", "free", c, 2), 0);
  parts[0] = tly_analytics_acc_json(one, 1);
  parts[1] = tly_analytics_acc_json(two, 0);
  json_t *breakdown = tly_analytics_merge(&q, parts, 2, &err);
  assert_non_null(breakdown);
  assert_false(json_is_true(json_object_get(breakdown, "complete")));
  assert_true(json_is_null(json_object_get(breakdown, "feature")));
  json_t *total = json_object_get(breakdown, "total");
  assert_int_equal(member(total, "quantity"), 10 + 99 + 20 + 5);
  assert_int_equal(member(total, "cost_micros"), 500 + 9999 + 500 + 900);
  json_t *groups = json_object_get(breakdown, "groups");
  assert_int_equal(json_array_size(groups), 3);
  assert_int_equal(member(find(groups, "m1"), "cost_micros"), 500);
  assert_int_equal(member(find(groups, "m2"), "cost_micros"), 900);
  assert_int_equal(member(find(groups, "none"), "quantity"), 99 + 20);
  json_int_t sum = 0, events = 0;
  for (size_t i = 0; i < json_array_size(groups); i++) {
    sum += member(json_array_get(groups, i), "cost_micros");
    events += member(json_array_get(groups, i), "events");
  }
  assert_int_equal(sum, member(total, "cost_micros"));
  assert_int_equal(events, member(total, "events"));
  csv = tly_req_analytics_csv(breakdown);
  assert_string_equal(csv, "value,quantity,cost_micros,events\r\n"
                           "m1,10,500,1\r\nm2,5,900,1\r\n"
                           "none,119,10499,11\r\n");
  free(csv);
  json_decref(breakdown);
  json_decref(parts[0]);
  json_decref(parts[1]);
  tly_analytics_acc_free(one);
  tly_analytics_acc_free(two);

  /* By plan: the subject's plan takes all its usage. */
  assert_int_equal(tly_req_parse_analytics(config, TLY_ANALYTICS_BREAKDOWN,
                                           "ai", NULL, "plan", "2024-10-04",
                                           "2024-10-04", NULL, now, &q, &err),
                   0);
  one = tly_analytics_acc_new(&q);
  assert_int_equal(tly_analytics_acc_subject(one, "user:a", "t", a, 4), 0);
  assert_int_equal(tly_analytics_acc_subject(one, "user:c", "free", c, 2), 0);
  parts[0] = tly_analytics_acc_json(one, 1);
  breakdown = tly_analytics_merge(&q, parts, 1, &err);
  groups = json_object_get(breakdown, "groups");
  assert_int_equal(member(find(groups, "t"), "quantity"), 10);
  assert_int_equal(member(find(groups, "free"), "cost_micros"), 900);
  json_decref(breakdown);
  json_decref(parts[0]);
  tly_analytics_acc_free(one);

  /* A malformed part: 502. */
  json_t *bad = json_pack("{s:b,s:i}", "complete", 1, "groups", 3);
  assert_null(tly_analytics_merge(&q, &bad, 1, &err));
  assert_int_equal(err.status, 502);
  json_decref(bad);
  tly_config_free(config);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_parse_group_by),
      cmocka_unit_test(test_daily_and_usage_groups),
      cmocka_unit_test(test_parse_analytics),
      cmocka_unit_test(test_analytics_parts),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
