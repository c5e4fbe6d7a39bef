/*
 * test_meters.c - meters.<feature>.aggregation (tly_meters.h) over an
 * in-memory state view: a table of event sequences, one per aggregation
 * (sum, count, max, latest, unique_count), each checked for the row's
 * value, its events, the hourly buckets summing to the value and the tier
 * cost of the value; thresholds on a value that falls (latest); the bounds
 * of unique_count (missing property, long value, the 1,000th new value)
 * rejected with the reason and nothing changed; a new cycle starting
 * empty; the pre-check's value after a request; the config's refusals
 * naming the field; and the subject record of version 5 (latest's
 * instant, the distinct values) round-tripping while a subject without
 * meter state keeps version 3's bytes.
 */
#include "tly_billing.h"
#include "tly_mem_view.h"
#include "tly_meters.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define JAN1 1767225600000LL /* 2026-01-01T00:00:00Z */
#define FEB1 1769904000000LL /* 2026-02-01T00:00:00Z */
#define HOUR 3600000LL

static const char *config_json =
    "{\"thresholds\": [50, 100],"
    " \"cycles\": {\"anchor\": \"2026-01-01T00:00:00Z\"},"
    " \"default_plans\": {\"user\": \"t\", \"api_key\": \"t\", "
    "                     \"anonymous\": \"t\"},"
    " \"meters\": {\"calls\": {\"aggregation\": \"count\"},"
    "              \"peak\": {\"aggregation\": \"max\"},"
    "              \"storage\": {\"aggregation\": \"latest\"},"
    "              \"seats\": {\"aggregation\": \"unique_count\","
    "                          \"property\": \"user\"},"
    "              \"bytes\": {\"aggregation\": \"sum\"}},"
    " \"plans\": {\"t\": {\"credits\": -1,"
    "   \"limits\": {\"storage\": {\"limit\": 10, \"mode\": \"hard\"},"
    "                \"seats\": {\"limit\": 2000, \"mode\": \"soft\"}},"
    "   \"prices\": {"
    "     \"calls\": {\"tiers\": [{\"up_to\": null, \"unit_micros\": 10}]},"
    "     \"peak\": {\"tiers\": [{\"up_to\": null, \"unit_micros\": 100}]},"
    "     \"storage\": {\"tiers\": [{\"up_to\": null, \"unit_micros\": 7}]},"
    "     \"seats\": {\"tiers\": [{\"up_to\": null, \"unit_micros\": 1000}]},"
    "     \"bytes\": {\"tiers\": [{\"up_to\": null, \"unit_micros\": 1}]}}"
    "}}}";

/* The one subject's account (its view: tly_mem_view.h). */
static tly_account_t *account_of(tly_mem_view_t *m) {
  return &tly_mem_subject(m, "alice")->account;
}

/* The row of (cycle, feature), or NULL. */
static const tly_billing_row_t *row_of(tly_mem_view_t *m, int64_t cycle,
                                       const char *feature) {
  return tly_mem_row_find(m, "alice", cycle, feature);
}

/* What the feature's buckets add up to. */
static tly_bucket_t bucket_sum(tly_mem_view_t *m, const char *feature) {
  tly_bucket_t sum = {0};
  for (size_t i = 0; i < m->bucket_count; i++) {
    if (strcmp(m->buckets[i].name, feature))
      continue;
    sum.quantity += m->buckets[i].bucket.quantity;
    sum.event_count += m->buckets[i].bucket.event_count;
    sum.cost_micros += m->buckets[i].bucket.cost_micros;
  }
  return sum;
}

typedef tly_mem_fixture_t fixture_t;

static int setup(void **ctx) {
  *ctx = tly_mem_fixture_new(config_json, TLY_MEM_WITH_DISTINCT, 0);
  return *ctx ? 0 : -1;
}

static int teardown(void **ctx) {
  tly_mem_fixture_free(*ctx);
  return 0;
}

/* Folds usage of feature (quantity at t, property user=value when value is
 * not NULL). */
static tly_fold_result_t fold(fixture_t *f, const char *feature,
                              int64_t quantity, int64_t t, const char *value) {
  char event_id[32];
  tly_property_t property = {"user", (char *)value};
  snprintf(event_id, sizeof(event_id), "e-%d", ++f->counter);
  tly_event_t e = {.event_id = event_id,
                   .occurred_at_ms = t,
                   .subject_kind = TLY_SUBJECT_USER,
                   .subject_id = "alice",
                   .body_kind = TLY_BODY_USAGE_RECORDED};
  e.body.usage.feature = (char *)feature;
  e.body.usage.quantity = quantity;
  e.body.usage.unit = "";
  if (value) {
    e.body.usage.property_count = 1;
    e.body.usage.properties = &property;
  }
  return tly_billing_fold(&f->billing, &f->m->view, &e, &f->alerts, f->errstr,
                          sizeof(f->errstr));
}

/* ---- the table -------------------------------------------------------- */

typedef struct {
  int64_t quantity;
  int64_t offset_ms; /* after JAN1 */
  const char *value; /* unique_count's property */
} step_t;

typedef struct {
  const char *feature;
  step_t steps[6];
  size_t step_count;
  int64_t value;      /* the aggregated value after the steps */
  int64_t unit_price; /* the feature's tier price */
} case_t;

static void table(void **ctx) {
  const case_t cases[] = {
      {"bytes", {{5, 0, NULL}, {3, HOUR, NULL}, {7, 2 * HOUR, NULL}}, 3, 15, 1},
      {"calls", {{5, 0, NULL}, {3, HOUR, NULL}, {7, 2 * HOUR, NULL}}, 3, 3, 10},
      {"peak",
       {{5, 0, NULL},
        {9, HOUR, NULL},
        {7, 2 * HOUR, NULL},
        {0, 3 * HOUR, NULL}},
       4,
       9,
       100},
      /* An older event leaves the value; a later one, lower, lowers it;
       * one at the same instant replaces it (the later in the log wins). */
      {"storage",
       {{5, 2 * HOUR, NULL},
        {9, HOUR, NULL},
        {8, 3 * HOUR, NULL},
        {2, 4 * HOUR, NULL},
        {6, 4 * HOUR, NULL}},
       5,
       6,
       7},
      {"seats",
       {{1, 0, "a"}, {5, HOUR, "b"}, {1, 2 * HOUR, "a"}, {0, 3 * HOUR, "c"}},
       4,
       3,
       1000},
  };
  for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
    fixture_t *f = *ctx;
    const case_t *k = &cases[c];
    tly_mem_view_free(f->m);
    f->m = tly_mem_view_new(TLY_MEM_WITH_DISTINCT);
    for (size_t i = 0; i < k->step_count; i++)
      assert_int_equal(fold(f, k->feature, k->steps[i].quantity,
                            JAN1 + k->steps[i].offset_ms, k->steps[i].value),
                       TLY_FOLD_APPLIED);
    const tly_billing_row_t *row = row_of(f->m, JAN1, k->feature);
    assert_non_null(row);
    if (row->quantity != k->value)
      fail_msg("%s: value %lld, expected %lld", k->feature,
               (long long)row->quantity, (long long)k->value);
    assert_int_equal(row->event_count, (int64_t)k->step_count);
    assert_int_equal(row->cost_micros, k->value * k->unit_price);
    assert_int_equal(account_of(f->m)->cycle.cost_micros, row->cost_micros);
    /* The hours' changes add up to the value, its cost and its events. */
    tly_bucket_t sum = bucket_sum(f->m, k->feature);
    assert_int_equal(sum.quantity, k->value);
    assert_int_equal(sum.cost_micros, row->cost_micros);
    assert_int_equal(sum.event_count, (int64_t)k->step_count);
  }
}

/* A falling value (latest): a threshold fires once per cycle, when the
 * value first reaches it; falling below re-arms nothing. */
static void latest_thresholds(void **ctx) {
  fixture_t *f = *ctx;
  assert_int_equal(fold(f, "storage", 6, JAN1, NULL), TLY_FOLD_APPLIED);
  assert_int_equal(f->alerts.count, 1); /* 50 % of 10 */
  assert_int_equal(f->alerts.items[0].threshold_percent, 50);
  assert_int_equal(f->alerts.items[0].used, 6);
  assert_int_equal(fold(f, "storage", 2, JAN1 + 1, NULL), TLY_FOLD_APPLIED);
  assert_int_equal(fold(f, "storage", 7, JAN1 + 2, NULL), TLY_FOLD_APPLIED);
  assert_int_equal(f->alerts.count, 1);
  assert_int_equal(fold(f, "storage", 12, JAN1 + 3, NULL), TLY_FOLD_APPLIED);
  assert_int_equal(f->alerts.count, 2);
  assert_int_equal(f->alerts.items[1].type, TLY_ALERT_LIMIT_EXCEEDED);
  assert_int_equal(f->alerts.items[1].used, 12);
  assert_int_equal(fold(f, "storage", 1, JAN1 + 4, NULL), TLY_FOLD_APPLIED);
  assert_int_equal(fold(f, "storage", 15, JAN1 + 5, NULL), TLY_FOLD_APPLIED);
  assert_int_equal(f->alerts.count, 2);
  /* A new cycle starts empty, and its thresholds fire again. */
  assert_int_equal(fold(f, "storage", 5, FEB1, NULL), TLY_FOLD_APPLIED);
  const tly_billing_row_t *row = row_of(f->m, FEB1, "storage");
  assert_non_null(row);
  assert_int_equal(row->quantity, 5);
  size_t warnings = 0;
  for (size_t i = 0; i < f->alerts.count; i++)
    warnings += f->alerts.items[i].type == TLY_ALERT_LIMIT_WARNING &&
                f->alerts.items[i].cycle_start_ms == FEB1;
  assert_int_equal(warnings, 1);
}

/* unique_count's bounds: rejected with the reason, nothing changed. */
static void unique_count_bounds(void **ctx) {
  fixture_t *f = *ctx;
  char value[TLY_DISTINCT_VALUE_MAX + 2];
  assert_int_equal(fold(f, "seats", 1, JAN1, NULL), TLY_FOLD_REJECTED);
  assert_non_null(strstr(f->errstr, "property 'user'"));
  memset(value, 'x', sizeof(value) - 1);
  value[sizeof(value) - 1] = '\0';
  assert_int_equal(fold(f, "seats", 1, JAN1, value), TLY_FOLD_REJECTED);
  assert_non_null(strstr(f->errstr, "longer than the 128 bytes"));
  value[TLY_DISTINCT_VALUE_MAX] = '\0'; /* exactly the bound: counted */
  assert_int_equal(fold(f, "seats", 1, JAN1, value), TLY_FOLD_APPLIED);
  for (int i = 1; i < TLY_DISTINCT_MAX; i++) {
    char name[16];
    snprintf(name, sizeof(name), "u%04d", i);
    assert_int_equal(fold(f, "seats", 1, JAN1 + i, name), TLY_FOLD_APPLIED);
  }
  const tly_billing_row_t *row = row_of(f->m, JAN1, "seats");
  assert_int_equal(row->quantity, TLY_DISTINCT_MAX);
  tly_billing_row_t before = *row;
  int64_t cost_before = account_of(f->m)->cycle.cost_micros;
  assert_int_equal(fold(f, "seats", 1, JAN1 + 5000, "new"), TLY_FOLD_REJECTED);
  assert_non_null(strstr(f->errstr, "1000 distinct values"));
  assert_memory_equal(row, &before, sizeof(before));
  assert_int_equal(account_of(f->m)->cycle.cost_micros, cost_before);
  const tly_distinct_set_t *set = tly_distinct_find(
      &tly_mem_subject(f->m, "alice")->distinct, JAN1, "seats");
  assert_int_equal(set->count, TLY_DISTINCT_MAX);
  assert_false(tly_distinct_has(set, "new"));
  /* A value already counted still applies, as an event. */
  assert_int_equal(fold(f, "seats", 1, JAN1 + 5001, "u0500"), TLY_FOLD_APPLIED);
  assert_int_equal(row->quantity, TLY_DISTINCT_MAX);
  assert_int_equal(row->event_count, before.event_count + 1);
  /* The next cycle has its own set. */
  assert_int_equal(fold(f, "seats", 1, FEB1, "new"), TLY_FOLD_APPLIED);
  assert_int_equal(row_of(f->m, FEB1, "seats")->quantity, 1);
  /* Without a distinct view the state cannot keep one: rejected. */
  f->m->view.distinct = NULL;
  assert_int_equal(fold(f, "seats", 1, FEB1 + 1, "other"), TLY_FOLD_REJECTED);
  assert_non_null(strstr(f->errstr, "unique_count"));
}

static void value_after(void **ctx) {
  (void)ctx;
  const struct {
    tly_aggregation_t aggregation;
    int64_t used, quantity, after;
  } cases[] = {
      {TLY_AGG_SUM, 5, 3, 8},          {TLY_AGG_COUNT, 5, 1, 6},
      {TLY_AGG_UNIQUE_COUNT, 5, 2, 7}, {TLY_AGG_MAX, 5, 3, 5},
      {TLY_AGG_MAX, 5, 9, 9},          {TLY_AGG_LATEST, 5, 3, 3},
      {TLY_AGG_LATEST, 5, 9, 9},       {TLY_AGG_SUM, INT64_MAX, 1, INT64_MAX},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
    assert_int_equal(tly_meter_value_after(cases[i].aggregation, cases[i].used,
                                           cases[i].quantity),
                     cases[i].after);
}

static void config_errors(void **ctx) {
  (void)ctx;
  const struct {
    const char *json, *message;
  } cases[] = {
      {"{\"meters\": {\"a\": {\"aggregation\": \"avg\"}}}",
       "meters.a.aggregation: must be \"sum\""},
      {"{\"meters\": {\"a\": {\"aggregation\": \"unique_count\"}}}",
       "meters.a.property: required for aggregation unique_count"},
      {"{\"meters\": {\"a\": {\"aggregation\": \"max\", \"property\": \"u\"}}}",
       "meters.a.property: only for aggregation unique_count"},
      {"{\"meters\": {\"a\": {\"aggregation\": \"unique_count\", "
       "\"property\": \"\"}}}",
       "meters.a.property: must be a property key of 1 to 127 bytes"},
      {"{\"meters\": {\"a\": {\"agg\": \"max\"}}}",
       "meters.a.agg: unknown key"},
      {"{\"meters\": {\"a b\": {}}}", "meters.a b: not a valid name"},
      {"{\"meters\": {\"a\": {\"group_by\": [\"region\"]}}}",
       "meters.a.group_by[0]: must be \"model\""},
      {"{\"meters\": {\"a\": {\"group_by\": [\"model\", \"model\"]}}}",
       "meters.a.group_by[1]: listed twice"},
      {"{\"meters\": {\"a\": {\"group_by\": [\"model\", \"provider\", "
       "\"properties.x\", \"properties.y\", \"properties.z\"]}}}",
       "meters.a.group_by: at most 4 dimensions"},
      {"{\"meters\": [1]}", "meters: must be an object"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char errstr[512] = "";
    tly_config_t *config = tly_config_load_text(
        cases[i].json, strlen(cases[i].json), errstr, sizeof(errstr));
    if (config || strncmp(errstr, cases[i].message, strlen(cases[i].message)))
      fail_msg("%s: got '%s', expected '%s...'", cases[i].json, errstr,
               cases[i].message);
  }
  /* A good one: group_by parsed, aggregation found by feature. */
  const char *good = "{\"meters\": {\"a\": {\"aggregation\": \"latest\", "
                     "\"group_by\": [\"provider\", \"properties.region\"]}}}";
  tly_config_t *config = tly_config_load_text(good, strlen(good), NULL, 0);
  assert_non_null(config);
  const tly_meter_t *meter = tly_config_meter(config, "a");
  assert_non_null(meter);
  assert_int_equal(meter->aggregation, TLY_AGG_LATEST);
  assert_int_equal(meter->group_count, 2);
  assert_int_equal(meter->group_by[1].kind, TLY_DIM_PROPERTY);
  assert_string_equal(meter->group_by[1].key, "region");
  assert_int_equal(tly_meter_aggregation(config, "b"), TLY_AGG_SUM);
  assert_string_equal(tly_aggregation_name(TLY_AGG_UNIQUE_COUNT),
                      "unique_count");
  tly_config_free(config);
}

/* Stripe reports deltas to sum meters: a latest feature cannot be one. */
static void stripe_refuses_latest(void **ctx) {
  (void)ctx;
  char errstr[512] = "";
  setenv("TEST_METERS_STRIPE_KEY", "sk_test_x", 1);
  const char *json =
      "{\"meters\": {\"storage\": {\"aggregation\": \"latest\"},"
      "              \"peak\": {\"aggregation\": \"max\"}},"
      " \"stripe\": {\"secret_key_env\": \"TEST_METERS_STRIPE_KEY\","
      "              \"meters\": {\"storage\": \"storage\"}}}";
  assert_null(tly_config_load_text(json, strlen(json), errstr, sizeof(errstr)));
  assert_non_null(strstr(errstr, "meters.storage.aggregation: a \"latest\" "
                                 "feature cannot be reported to Stripe"));
  const char *ok =
      "{\"meters\": {\"peak\": {\"aggregation\": \"max\"}},"
      " \"stripe\": {\"secret_key_env\": \"TEST_METERS_STRIPE_KEY\","
      "              \"meters\": {\"peak\": \"peak\"}}}";
  tly_config_t *config =
      tly_config_load_text(ok, strlen(ok), errstr, sizeof(errstr));
  if (!config)
    fail_msg("%s", errstr);
  tly_config_free(config);
}

/* Version 5 round-trips latest's instant and the distinct values, leaves
 * out the sets of cycles no longer kept, and a subject without meter state
 * keeps version 3's bytes. */
static void record_version_5(void **ctx) {
  (void)ctx;
  tly_account_t account = {0};
  account.exists = 1;
  snprintf(account.plan, sizeof(account.plan), "t");
  account.cycle = (tly_cycle_t){FEB1, FEB1 + 28 * 86400000LL, 10, 2};
  account.history_count = 1;
  account.history[0] = (tly_cycle_t){JAN1, FEB1, 5, 1};
  tly_subject_row_t r1 = {FEB1, {4, 0, 0, 2, 28, 0, 0, FEB1 + 7}, "storage"};
  tly_subject_row_t r2 = {JAN1, {2, 0, 0, 3, 2000, 0, 1, 0}, "seats"};
  const tly_subject_row_t *rows[] = {&r1, &r2};
  tly_distinct_sets_t sets = {0};
  assert_int_equal(tly_distinct_add(&sets, JAN1, "seats", "zed"), 0);
  assert_int_equal(tly_distinct_add(&sets, JAN1, "seats", "amy"), 0);
  assert_int_equal(
      tly_distinct_add(&sets, JAN1 - 31 * 86400000LL, "seats", "gone"), 0);
  unsigned char out[4096];
  size_t len = tly_subject_record_encode_meters(
      &account, rows, 2, NULL, 0, NULL, 0, &sets, NULL, out, sizeof(out));
  assert_true(len <= sizeof(out));
  assert_int_equal(out[0], 5);
  tly_subject_record_t back;
  assert_int_equal(tly_subject_record_decode(out, len, &back), 0);
  assert_int_equal(back.row_count, 2);
  assert_int_equal(back.rows[0].row.latest_at_ms, FEB1 + 7);
  assert_int_equal(back.rows[0].row.quantity, 4);
  assert_int_equal(back.distinct.count, 1); /* the dropped cycle's is gone */
  const tly_distinct_set_t *set =
      tly_distinct_find(&back.distinct, JAN1, "seats");
  assert_non_null(set);
  assert_int_equal(set->count, 2);
  assert_string_equal(set->values[0], "amy");
  assert_string_equal(set->values[1], "zed");
  tly_subject_record_clear(&back);
  /* Every shorter prefix is malformed. */
  for (size_t cut = 0; cut < len; cut++)
    assert_int_equal(tly_subject_record_decode(out, cut, &back), -1);
  /* No meter state: version 3, the same bytes as the encoder before. */
  r1.row.latest_at_ms = 0;
  tly_distinct_sets_clear(&sets);
  unsigned char plain[4096], old[4096];
  size_t plain_len = tly_subject_record_encode_meters(
      &account, rows, 2, NULL, 0, NULL, 0, &sets, NULL, plain, sizeof(plain));
  size_t old_len =
      tly_subject_record_encode(&account, rows, 2, NULL, 0, old, sizeof(old));
  assert_int_equal(plain[0], 3);
  assert_int_equal(plain_len, old_len);
  assert_memory_equal(plain, old, old_len);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(table, setup, teardown),
      cmocka_unit_test_setup_teardown(latest_thresholds, setup, teardown),
      cmocka_unit_test_setup_teardown(unique_count_bounds, setup, teardown),
      cmocka_unit_test(value_after),
      cmocka_unit_test(config_errors),
      cmocka_unit_test(stripe_refuses_latest),
      cmocka_unit_test(record_version_5),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
