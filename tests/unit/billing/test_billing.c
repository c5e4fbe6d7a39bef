/*
 * test_billing.c - the billing fold, rule by rule, over an in-memory state
 * view: tiers (graduated and volume), token prices with margin (exact, no
 * rounding loss), hard versus soft versus unlimited, thresholds once per
 * cycle, rollover with a late event, InvoicePaid reset, duplicates, unknown
 * models, ticks, the dedupe window, and the state encodings.
 */
#include "tly_billing.h"
#include "tly_event_time.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* 2026-01-01T00:00:00Z and friends, in ms. */
#define JAN1 1767225600000LL
#define DAY 86400000LL
#define FEB1 (JAN1 + 31 * DAY)
#define MAR1 (FEB1 + 28 * DAY)

static const char *config_json =
    "{\"credits\": {\"micros_per_credit\": 1000},"
    " \"pricing\": {\"margin_bps\": 2000, \"unknown_model\": \"dead_letter\","
    "   \"models\": {\"m1\": {\"input_per_mtok\": 1000000, "
    "                        \"output_per_mtok\": 3000000}}},"
    " \"thresholds\": [50, 100],"
    " \"cycles\": {\"anchor\": \"2026-01-01T00:00:00Z\"},"
    " \"default_plans\": {\"user\": \"t\", \"api_key\": \"t\", "
    "                     \"anonymous\": \"anonymous\"},"
    " \"plans\": {"
    "   \"t\": {\"credits\": 100,"
    "     \"limits\": {\"api_calls\": {\"limit\": 10, \"mode\": \"hard\"},"
    "                \"ai_tokens\": {\"limit\": 1000, \"mode\": \"soft\"},"
    "                \"storage_bytes\": {\"unlimited\": true}},"
    "     \"prices\": {"
    "       \"api_calls\": {\"model\": \"graduated\", \"tiers\": ["
    "          {\"up_to\": 5, \"unit_micros\": 1000},"
    "          {\"up_to\": null, \"unit_micros\": 500}]},"
    "       \"storage_bytes\": {\"model\": \"volume\", \"tiers\": ["
    "          {\"up_to\": 100, \"unit_micros\": 10},"
    "          {\"up_to\": null, \"unit_micros\": 5}]}}},"
    "   \"u\": {\"credits\": -1}}}";

/* ---- an in-memory state view ------------------------------------------ */

#define MAX_RECORDS 64
#define MAX_BUCKETS 4096 /* hours x features */

typedef struct {
  char id[64];
  tly_account_t account;
} account_slot_t;

typedef struct {
  char id[64];
  int64_t cycle;
  char feature[64];
  tly_billing_row_t row;
} row_slot_t;

typedef struct {
  char id[64];
  int32_t hour;
  char feature[64];
  tly_bucket_t totals;
} bucket_slot_t;

typedef struct {
  char id[64];
  tly_cycle_t cycle;
} archive_slot_t;

typedef struct {
  tly_billing_view_t view;
  account_slot_t accounts[MAX_RECORDS];
  size_t account_count;
  row_slot_t rows[MAX_RECORDS];
  size_t row_count;
  bucket_slot_t buckets[MAX_BUCKETS];
  size_t bucket_count;
  archive_slot_t archived[MAX_RECORDS];
  size_t archived_count;
  char seen[2048][64];
  int64_t seen_at[2048];
  size_t seen_count;
  int64_t watermark;
} memory_state_t;

static tly_account_t *mem_account(tly_billing_view_t *view,
                                  tly_subject_kind_t kind, const char *id) {
  memory_state_t *state = view->opaque;
  (void)kind;
  for (size_t i = 0; i < state->account_count; i++)
    if (!strcmp(state->accounts[i].id, id))
      return &state->accounts[i].account;
  account_slot_t *slot = &state->accounts[state->account_count++];
  snprintf(slot->id, sizeof(slot->id), "%s", id);
  return &slot->account;
}

static tly_billing_row_t *mem_row(tly_billing_view_t *view,
                                  tly_subject_kind_t kind, const char *id,
                                  int64_t cycle, const char *feature) {
  memory_state_t *state = view->opaque;
  (void)kind;
  for (size_t i = 0; i < state->row_count; i++)
    if (!strcmp(state->rows[i].id, id) && state->rows[i].cycle == cycle &&
        !strcmp(state->rows[i].feature, feature))
      return &state->rows[i].row;
  row_slot_t *slot = &state->rows[state->row_count++];
  snprintf(slot->id, sizeof(slot->id), "%s", id);
  snprintf(slot->feature, sizeof(slot->feature), "%s", feature);
  slot->cycle = cycle;
  return &slot->row;
}

static tly_bucket_t *mem_bucket(tly_billing_view_t *view,
                                tly_subject_kind_t kind, const char *id,
                                int32_t hour, const char *feature) {
  memory_state_t *state = view->opaque;
  (void)kind;
  for (size_t i = 0; i < state->bucket_count; i++)
    if (!strcmp(state->buckets[i].id, id) && state->buckets[i].hour == hour &&
        !strcmp(state->buckets[i].feature, feature))
      return &state->buckets[i].totals;
  assert_true(state->bucket_count < MAX_BUCKETS);
  bucket_slot_t *slot = &state->buckets[state->bucket_count++];
  snprintf(slot->id, sizeof(slot->id), "%s", id);
  snprintf(slot->feature, sizeof(slot->feature), "%s", feature);
  slot->hour = hour;
  return &slot->totals;
}

static int mem_archive(tly_billing_view_t *view, tly_subject_kind_t kind,
                       const char *id, const tly_cycle_t *cycle) {
  memory_state_t *state = view->opaque;
  (void)kind;
  archive_slot_t *slot = &state->archived[state->archived_count++];
  snprintf(slot->id, sizeof(slot->id), "%s", id);
  slot->cycle = *cycle;
  return 0;
}

static int mem_seen(tly_billing_view_t *view, const char *event_id,
                    int64_t occurred_at, int record) {
  memory_state_t *state = view->opaque;
  for (size_t i = 0; i < state->seen_count; i++)
    if (!strcmp(state->seen[i], event_id))
      return record ? 0 : 1;
  if (record) {
    snprintf(state->seen[state->seen_count], 64, "%s", event_id);
    state->seen_at[state->seen_count++] = occurred_at;
  }
  return 0;
}

static memory_state_t *new_state(void) {
  memory_state_t *state = calloc(1, sizeof(*state));
  state->view = (tly_billing_view_t){.opaque = state,
                                     .account = mem_account,
                                     .row = mem_row,
                                     .bucket = mem_bucket,
                                     .archive = mem_archive,
                                     .seen = mem_seen,
                                     .watermark_ms = &state->watermark};
  state->watermark = INT64_MIN;
  return state;
}

typedef struct {
  tly_config_t *config;
  tly_billing_t billing;
  memory_state_t *state;
  tly_alert_list_t alerts;
  char errstr[512];
  int counter;
} fixture_t;

static int setup(void **ctx) {
  fixture_t *f = calloc(1, sizeof(*f));
  f->config = tly_config_load_text(config_json, strlen(config_json), f->errstr,
                                   sizeof(f->errstr));
  if (!f->config) {
    fprintf(stderr, "config: %s\n", f->errstr);
    return -1;
  }
  /* A window long enough for the late-event cases; the dedupe test sets
   * its own. */
  f->billing = (tly_billing_t){f->config, 60 * DAY};
  f->state = new_state();
  *ctx = f;
  return 0;
}

static int teardown(void **ctx) {
  fixture_t *f = *ctx;
  tly_alert_list_clear(&f->alerts);
  tly_config_free(f->config);
  free(f->state);
  free(f);
  return 0;
}

static tly_fold_result_t fold(fixture_t *f, tly_event_t *event) {
  char event_id[32];
  if (!event->event_id) {
    snprintf(event_id, sizeof(event_id), "e-%d", ++f->counter);
    event->event_id = event_id;
  }
  if (!event->subject_id)
    event->subject_id = "alice";
  tly_fold_result_t rc =
      tly_billing_fold(&f->billing, &f->state->view, event, &f->alerts,
                       f->errstr, sizeof(f->errstr));
  if (event->event_id == event_id)
    event->event_id = NULL;
  return rc;
}

static tly_fold_result_t usage(fixture_t *f, int64_t at, const char *feature,
                               int64_t quantity) {
  tly_event_t event = {
      .occurred_at_ms = at,
      .body_kind = TLY_BODY_USAGE_RECORDED,
      .body.usage = {.feature = (char *)feature, .quantity = quantity}};
  return fold(f, &event);
}

static tly_fold_result_t tokens(fixture_t *f, int64_t at, const char *model,
                                int64_t in, int64_t out) {
  tly_event_t event = {.occurred_at_ms = at,
                       .body_kind = TLY_BODY_USAGE_RECORDED,
                       .body.usage = {.feature = "ai_tokens",
                                      .quantity = in + out,
                                      .has_ai = 1,
                                      .ai = {"p", (char *)model, in, out}}};
  return fold(f, &event);
}

static const tly_billing_row_t *row_of(fixture_t *f, int64_t cycle,
                                       const char *feature) {
  return mem_row(&f->state->view, TLY_SUBJECT_USER, "alice", cycle, feature);
}

static tly_account_t *alice(fixture_t *f) {
  return mem_account(&f->state->view, TLY_SUBJECT_USER, "alice");
}

/* ---- tests ------------------------------------------------------------- */

static void test_tier_boundaries(void **ctx) {
  (void)ctx;
  tly_feature_price_t graduated = {
      "api_calls", TLY_PRICE_GRADUATED, 3, {{5, 1000}, {10, 500}, {-1, 100}}};
  tly_feature_price_t volume = {
      "storage", TLY_PRICE_VOLUME, 2, {{100, 10}, {-1, 5}}};
  const struct {
    const tly_feature_price_t *price;
    int64_t quantity, cost;
  } cases[] = {
      {&graduated, 0, 0},         {&graduated, 1, 1000},
      {&graduated, 5, 5000},      {&graduated, 6, 5500},
      {&graduated, 10, 7500},     {&graduated, 11, 7600},
      {&graduated, 1000, 106500}, {&volume, 0, 0},
      {&volume, 1, 10},           {&volume, 100, 1000},
      {&volume, 101, 505},        {&volume, 200, 1000},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    int64_t cost = tly_billing_tier_cost(cases[i].price, cases[i].quantity);
    if (cost != cases[i].cost)
      fail_msg("case %zu: %lld units cost %lld, expected %lld", i,
               (long long)cases[i].quantity, (long long)cost,
               (long long)cases[i].cost);
  }
  tly_feature_price_t huge = {"x", TLY_PRICE_VOLUME, 1, {{-1, INT64_MAX}}};
  assert_int_equal(tly_billing_tier_cost(&huge, 2), -1);
}

static void test_month_cycles(void **ctx) {
  (void)ctx;
  int64_t start, end;
  tly_billing_month_cycle(0, JAN1 + 14 * DAY + 5, &start, &end);
  assert_int_equal(start, JAN1);
  assert_int_equal(end, FEB1);
  tly_billing_month_cycle(0, FEB1, &start, &end); /* the end is exclusive */
  assert_int_equal(start, FEB1);
  assert_int_equal(end, MAR1);
  /* An anchor on the 31st bills on the last day of shorter months. */
  int64_t jan31 = JAN1 + 30 * DAY;
  tly_billing_month_cycle(jan31, FEB1 + 14 * DAY, &start, &end);
  assert_int_equal(start, jan31);
  assert_int_equal(end, FEB1 + 27 * DAY); /* 2026-02-28 */
  tly_billing_month_cycle(jan31, MAR1, &start, &end);
  assert_int_equal(start, FEB1 + 27 * DAY);
  assert_int_equal(end, MAR1 + 30 * DAY); /* 2026-03-31 */
  /* Before the anchor too. */
  tly_billing_month_cycle(FEB1, JAN1 + DAY, &start, &end);
  assert_int_equal(start, JAN1);
  assert_int_equal(end, FEB1);
}

/* Any int64 anchor and time: an answer at once (the old search stepped a
 * month at a time and, its arithmetic overflowing, never ended for
 * INT64_MAX), start <= t < end wherever the end fits in an int64. */
static void test_month_cycle_extremes(void **ctx) {
  (void)ctx;
  static const int64_t anchors[] = {0,
                                    JAN1,
                                    JAN1 + 30 * DAY + 3600000,
                                    -1,
                                    INT64_MIN,
                                    INT64_MIN + 1,
                                    INT64_MAX - 1,
                                    INT64_MAX,
                                    TLY_TIME_MAX_MS};
  static const int64_t times[] = {INT64_MIN,
                                  INT64_MIN + 1,
                                  INT64_MIN + DAY,
                                  -DAY,
                                  -1,
                                  0,
                                  JAN1,
                                  TLY_TIME_MAX_MS,
                                  TLY_TIME_MAX_MS + 1,
                                  INT64_MAX - DAY,
                                  INT64_MAX - 1,
                                  INT64_MAX};
  for (size_t a = 0; a < sizeof(anchors) / sizeof(anchors[0]); a++) {
    for (size_t i = 0; i < sizeof(times) / sizeof(times[0]); i++) {
      int64_t start = 0, end = 0, t = times[i];
      tly_billing_month_cycle(anchors[a], t, &start, &end);
      if (start > t || (t >= end && end != INT64_MAX) || start > end)
        fail_msg("anchor %lld, t %lld: cycle [%lld, %lld)",
                 (long long)anchors[a], (long long)t, (long long)start,
                 (long long)end);
    }
  }
  /* The last month of the range, exactly. */
  int64_t start, end;
  tly_billing_month_cycle(0, TLY_TIME_MAX_MS, &start, &end);
  assert_int_equal(start, tly_days_from_civil(9999, 12, 1) * DAY);
  assert_int_equal(end, TLY_TIME_MAX_MS + 1); /* 10000-01-01 */
  tly_billing_month_cycle(JAN1 + 30 * DAY, TLY_TIME_MAX_MS, &start, &end);
  assert_int_equal(start, tly_days_from_civil(9999, 12, 31) * DAY);
  assert_int_equal(end, tly_days_from_civil(10000, 1, 31) * DAY);
  /* Far from the anchor in both directions: 9999 from an anchor in the
   * year 0 and the reverse. */
  int64_t year0 = tly_days_from_civil(0, 3, 15) * DAY + 7;
  tly_billing_month_cycle(year0, TLY_TIME_MAX_MS, &start, &end);
  assert_int_equal(start, tly_days_from_civil(9999, 12, 15) * DAY + 7);
  assert_int_equal(end, tly_days_from_civil(10000, 1, 15) * DAY + 7);
  tly_billing_month_cycle(TLY_TIME_MAX_MS, year0, &start, &end);
  assert_int_equal(start, tly_days_from_civil(0, 2, 29) * DAY + DAY - 1);
  assert_int_equal(end, tly_days_from_civil(0, 3, 31) * DAY + DAY - 1);
  /* Saturated ends: beyond the int64 range. */
  tly_billing_month_cycle(JAN1 + 30 * DAY, INT64_MAX, &start, &end);
  assert_true(start <= INT64_MAX && start > INT64_MAX - 31 * DAY);
  assert_int_equal(end, INT64_MAX);
  tly_billing_month_cycle(JAN1, INT64_MIN, &start, &end);
  assert_int_equal(start, INT64_MIN);
  assert_true(end > INT64_MIN && end < INT64_MIN + 32 * DAY);
}

/* Over the whole range of event times, each answer is a calendar month of
 * the anchor: the anchor's day of month (clamped) and time of day, 28 to 31
 * days long, and the cycle after it starts where it ends. */
static void test_month_cycle_properties(void **ctx) {
  (void)ctx;
  uint64_t seed = 0x9e3779b97f4a7c15u;
  for (int i = 0; i < 20000; i++) {
    seed = seed * 6364136223846793005u + 1442695040888963407u;
    int64_t anchor = (int64_t)((seed >> 11) % (uint64_t)(TLY_TIME_MAX_MS + 1));
    seed = seed * 6364136223846793005u + 1442695040888963407u;
    int64_t t = (int64_t)((seed >> 11) % (uint64_t)(TLY_TIME_MAX_MS + 1));
    int64_t start, end, next_start, next_end;
    tly_billing_month_cycle(anchor, t, &start, &end);
    tly_billing_month_cycle(anchor, end, &next_start, &next_end);
    int64_t ay, am, ad, sy, sm, sd;
    tly_civil_from_days(anchor / DAY, &ay, &am, &ad);
    tly_civil_from_days(start / DAY, &sy, &sm, &sd);
    int64_t month_days =
        tly_days_from_civil(sm == 12 ? sy + 1 : sy, sm == 12 ? 1 : sm + 1, 1) -
        tly_days_from_civil(sy, sm, 1);
    if (!(start <= t && t < end) || end - start < 28 * DAY ||
        end - start > 31 * DAY || next_start != end ||
        start % DAY != anchor % DAY ||
        sd != (ad < month_days ? ad : month_days))
      fail_msg("anchor %lld, t %lld: cycle [%lld, %lld), next from %lld",
               (long long)anchor, (long long)t, (long long)start,
               (long long)end, (long long)next_start);
  }
}

static void test_billing_hour_extremes(void **ctx) {
  (void)ctx;
  assert_int_equal(tly_billing_hour(0), 0);
  assert_int_equal(tly_billing_hour(-1), -1);
  assert_int_equal(tly_billing_hour(TLY_TIME_MAX_MS), 70389527);
  assert_int_equal(tly_billing_hour(INT64_MAX), INT32_MAX);
  assert_int_equal(tly_billing_hour(INT64_MIN), INT32_MIN);
  assert_int_equal(tly_billing_hour((int64_t)INT32_MAX * TLY_HOUR_MS),
                   INT32_MAX);
  assert_int_equal(tly_billing_hour(((int64_t)INT32_MAX + 1) * TLY_HOUR_MS),
                   INT32_MAX);
}

/* A time outside 1970..9999 is rejected before it touches anything: no
 * account, no cycle, no watermark, no alert. INT64_MAX spun the fold
 * forever before. */
static void test_fold_refuses_times_out_of_range(void **ctx) {
  fixture_t *f = *ctx;
  static const int64_t bad[] = {INT64_MIN,           INT64_MIN + 1, -1,
                                TLY_TIME_MAX_MS + 1, INT64_MAX - 1, INT64_MAX};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    assert_int_equal(usage(f, bad[i], "api_calls", 0), TLY_FOLD_REJECTED);
    assert_non_null(strstr(f->errstr, "field 'occurred_at'"));
    tly_event_t tick = {.occurred_at_ms = bad[i],
                        .subject_kind = TLY_SUBJECT_SYSTEM,
                        .subject_id = "tick",
                        .body_kind = TLY_BODY_TICK};
    assert_int_equal(fold(f, &tick), TLY_FOLD_REJECTED);
    tly_event_t paid = {.occurred_at_ms = JAN1,
                        .body_kind = TLY_BODY_INVOICE_PAID,
                        .body.invoice_paid = {"in_1", 1, JAN1, bad[i]}};
    assert_int_equal(fold(f, &paid), TLY_FOLD_REJECTED);
    assert_non_null(strstr(f->errstr, "field 'period_end'"));
    tly_event_t change = {
        .occurred_at_ms = JAN1,
        .body_kind = TLY_BODY_SUBSCRIPTION_CHANGED,
        .body.subscription_changed = {
            .plan = "u", .period_start_ms = bad[i], .period_end_ms = FEB1}};
    assert_int_equal(fold(f, &change), TLY_FOLD_REJECTED);
    assert_non_null(strstr(f->errstr, "field 'period_start'"));
  }
  assert_int_equal(f->state->watermark, INT64_MIN);
  assert_int_equal(alice(f)->exists, 0);
  assert_int_equal(f->alerts.count, 0);
  assert_int_equal(f->state->seen_count, 0);

  /* The edges of the range fold. */
  assert_int_equal(usage(f, TLY_TIME_MIN_MS, "api_calls", 1), TLY_FOLD_APPLIED);
  assert_int_equal(usage(f, TLY_TIME_MAX_MS, "api_calls", 1), TLY_FOLD_APPLIED);
  assert_int_equal(f->state->watermark, TLY_TIME_MAX_MS);
  assert_int_equal(alice(f)->cycle.start_ms,
                   tly_days_from_civil(9999, 12, 1) * DAY);
  assert_int_equal(alice(f)->cycle.end_ms, TLY_TIME_MAX_MS + 1);
  /* A tick past the range (no such tick folds) changes nothing. */
  tly_account_t before = *alice(f);
  assert_int_equal(tly_billing_tick(&f->billing, &f->state->view,
                                    TLY_SUBJECT_USER, "alice", INT64_MAX,
                                    &f->alerts),
                   TLY_FOLD_APPLIED);
  assert_memory_equal(alice(f), &before, sizeof(before));
  /* The cycle ends just past the range: the last tick in it keeps it. */
  assert_int_equal(tly_billing_tick(&f->billing, &f->state->view,
                                    TLY_SUBJECT_USER, "alice", TLY_TIME_MAX_MS,
                                    &f->alerts),
                   TLY_FOLD_APPLIED);
  assert_memory_equal(alice(f), &before, sizeof(before));
}

static void test_graduated_price_and_hard_limit_alerts(void **ctx) {
  fixture_t *f = *ctx;
  for (int i = 0; i < 11; i++)
    assert_int_equal(usage(f, JAN1 + i, "api_calls", 1), TLY_FOLD_APPLIED);
  const tly_billing_row_t *row = row_of(f, JAN1, "api_calls");
  assert_int_equal(row->quantity, 11);
  assert_int_equal(row->cost_micros, 5 * 1000 + 6 * 500);
  assert_int_equal(alice(f)->cycle.cost_micros, 8000);
  assert_int_equal(tly_billing_credits_used(f->config, alice(f)), 8);
  /* 50 % at the 5th call, 100 % at the 10th, nothing more at the 11th. */
  assert_int_equal(f->alerts.count, 2);
  assert_int_equal(f->alerts.items[0].type, TLY_ALERT_LIMIT_WARNING);
  assert_int_equal(f->alerts.items[0].threshold_percent, 50);
  assert_int_equal(f->alerts.items[0].used, 5);
  assert_int_equal(f->alerts.items[0].hard, 1);
  assert_string_equal(f->alerts.items[0].alert_id,
                      "limit_warning:user:alice:1767225600000:api_calls:50");
  assert_int_equal(f->alerts.items[1].type, TLY_ALERT_LIMIT_EXCEEDED);
  assert_int_equal(f->alerts.items[1].used, 10);
  assert_int_equal(f->alerts.items[1].limit, 10);
}

static void test_soft_limit_and_exact_token_cost(void **ctx) {
  fixture_t *f = *ctx;
  /* 1,000 events of 1 input token at 1 micro/token + 20 % margin: 1.2
   * micros each. Rounding per event would lose 200 micros; the fold must
   * not. */
  for (int i = 0; i < 1000; i++)
    assert_int_equal(tokens(f, JAN1 + i, "m1", 1, 0), TLY_FOLD_APPLIED);
  const tly_billing_row_t *row = row_of(f, JAN1, "ai_tokens");
  assert_int_equal(row->input_tokens, 1000);
  assert_int_equal(row->cost_micros, 1200);
  assert_int_equal(row->cost_remainder, 0);
  /* Soft: warning at 500, exceeded at 1000, not hard; credits 1 < 50. */
  assert_int_equal(f->alerts.count, 2);
  assert_int_equal(f->alerts.items[1].type, TLY_ALERT_LIMIT_EXCEEDED);
  assert_int_equal(f->alerts.items[1].hard, 0);
  assert_string_equal(f->alerts.items[1].feature, "ai_tokens");
  /* Output tokens at 3 micros + margin: 100 tokens -> 360 micros. */
  assert_int_equal(tokens(f, JAN1 + 2000, "m1", 0, 100), TLY_FOLD_APPLIED);
  assert_int_equal(row->cost_micros, 1560);
}

static void test_unlimited_volume_and_credit_thresholds(void **ctx) {
  fixture_t *f = *ctx;
  /* Volume: 100 units at 10 = 1000 micros; 200 units at 5 = 1000. */
  assert_int_equal(usage(f, JAN1, "storage_bytes", 100), TLY_FOLD_APPLIED);
  assert_int_equal(row_of(f, JAN1, "storage_bytes")->cost_micros, 1000);
  assert_int_equal(usage(f, JAN1 + 1, "storage_bytes", 100), TLY_FOLD_APPLIED);
  assert_int_equal(row_of(f, JAN1, "storage_bytes")->cost_micros, 1000);
  assert_int_equal(f->alerts.count, 0); /* unlimited, credits 1 of 100 */
  /* 60,000 units: 300,000 micros = 300 credits: both credit thresholds. */
  assert_int_equal(usage(f, JAN1 + 2, "storage_bytes", 59800),
                   TLY_FOLD_APPLIED);
  assert_int_equal(tly_billing_credits_used(f->config, alice(f)), 300);
  assert_int_equal(f->alerts.count, 2);
  assert_string_equal(f->alerts.items[0].feature, TLY_CREDITS_FEATURE);
  assert_int_equal(f->alerts.items[0].threshold_percent, 50);
  assert_int_equal(f->alerts.items[1].threshold_percent, 100);
  assert_int_equal(f->alerts.items[1].hard, 1);
}

static void test_rollover_and_late_event(void **ctx) {
  fixture_t *f = *ctx;
  assert_int_equal(usage(f, JAN1 + DAY, "api_calls", 2), TLY_FOLD_APPLIED);
  /* The first event at or after the end closes January. */
  assert_int_equal(usage(f, FEB1 + DAY, "api_calls", 3), TLY_FOLD_APPLIED);
  assert_int_equal(f->alerts.count, 1);
  tly_alert_t *end = &f->alerts.items[0];
  assert_int_equal(end->type, TLY_ALERT_BILLING_CYCLE_END);
  assert_int_equal(end->cycle_start_ms, JAN1);
  assert_int_equal(end->cycle_end_ms, FEB1);
  assert_int_equal(end->cost_micros, 2000);
  assert_int_equal(end->credits_used, 2);
  assert_string_equal(end->alert_id,
                      "billing_cycle_end:user:alice:1767225600000");
  assert_int_equal(alice(f)->cycle.start_ms, FEB1);
  assert_int_equal(alice(f)->history_count, 1);
  /* A late January event lands in January's row and history, not in the
   * current cycle, and raises no alert for a closed cycle. */
  assert_int_equal(usage(f, JAN1 + 2 * DAY, "api_calls", 4), TLY_FOLD_APPLIED);
  assert_int_equal(row_of(f, JAN1, "api_calls")->quantity, 6);
  assert_int_equal(row_of(f, FEB1, "api_calls")->quantity, 3);
  assert_int_equal(alice(f)->history[0].cost_micros, 5500);
  assert_int_equal(alice(f)->cycle.cost_micros, 3000);
  assert_int_equal(f->alerts.count, 1);
  /* Older than every kept cycle: rejected, not silently dropped. */
  assert_int_equal(usage(f, JAN1 - 20 * DAY, "api_calls", 1),
                   TLY_FOLD_REJECTED);
  assert_non_null(strstr(f->errstr, "before every billing cycle"));
}

static const tly_bucket_t *bucket_of(fixture_t *f, int64_t t,
                                     const char *feature) {
  return mem_bucket(&f->state->view, TLY_SUBJECT_USER, "alice",
                    tly_billing_hour(t), feature);
}

#define HOUR (3600 * 1000LL)

static void test_hourly_buckets(void **ctx) {
  fixture_t *f = *ctx;
  /* Graduated: 5 units at 1000, then 500 each. Hour one crosses the tier. */
  assert_int_equal(usage(f, JAN1 + 10, "api_calls", 4), TLY_FOLD_APPLIED);
  assert_int_equal(usage(f, JAN1 + HOUR - 1, "api_calls", 2), TLY_FOLD_APPLIED);
  assert_int_equal(usage(f, JAN1 + HOUR, "api_calls", 3), TLY_FOLD_APPLIED);
  assert_int_equal(tokens(f, JAN1 + HOUR + 5, "m1", 1000, 2000),
                   TLY_FOLD_APPLIED);
  const tly_bucket_t *one = bucket_of(f, JAN1, "api_calls");
  const tly_bucket_t *two = bucket_of(f, JAN1 + HOUR, "api_calls");
  assert_int_equal(one->quantity, 6);
  assert_int_equal(one->event_count, 2);
  assert_int_equal(one->cost_micros, 5 * 1000 + 500);
  assert_int_equal(two->quantity, 3);
  assert_int_equal(two->cost_micros, 3 * 500);
  /* A late event for hour one lands in hour one. */
  assert_int_equal(usage(f, JAN1 + 20, "api_calls", 1), TLY_FOLD_APPLIED);
  assert_int_equal(bucket_of(f, JAN1, "api_calls")->quantity, 7);
  assert_int_equal(bucket_of(f, JAN1, "api_calls")->cost_micros, 6000);
  /* Tokens: 1000 in at 1 micro, 2000 out at 3, plus the 20 % margin. */
  const tly_bucket_t *ai = bucket_of(f, JAN1 + HOUR, "ai_tokens");
  assert_int_equal(ai->cost_micros, 8400);
  assert_int_equal(ai->input_tokens, 1000);
  assert_int_equal(ai->output_tokens, 2000);
  assert_int_equal(ai->event_count, 1);
  /* The buckets' costs sum to the cycle's cost. */
  assert_int_equal(bucket_of(f, JAN1, "api_calls")->cost_micros +
                       bucket_of(f, JAN1 + HOUR, "api_calls")->cost_micros +
                       ai->cost_micros,
                   alice(f)->cycle.cost_micros);
  /* A rejected event adds nothing to any bucket. */
  assert_int_equal(tokens(f, JAN1 + HOUR, "nope", 1, 1), TLY_FOLD_REJECTED);
  assert_int_equal(bucket_of(f, JAN1 + HOUR, "ai_tokens")->event_count, 1);
  assert_int_equal(tly_billing_hour(-1), -1); /* floor, not truncation */
  assert_int_equal(tly_billing_hour(JAN1 + HOUR), (int32_t)(JAN1 / HOUR) + 1);
}

static void
test_closed_cycles_are_archived_once_they_leave_history(void **ctx) {
  fixture_t *f = *ctx;
  int64_t starts[6] = {JAN1, FEB1, MAR1};
  for (int i = 3; i < 6; i++) {
    int64_t end;
    tly_billing_month_cycle(JAN1, starts[i - 1] + 40 * DAY, &starts[i], &end);
  }
  for (int i = 0; i < 5; i++)
    assert_int_equal(usage(f, starts[i] + DAY, "api_calls", i + 1),
                     TLY_FOLD_APPLIED);
  /* Four closed cycles: three kept, January archived. */
  assert_int_equal(alice(f)->history_count, TLY_BILLING_HISTORY);
  assert_int_equal(f->state->archived_count, 1);
  assert_int_equal(f->state->archived[0].cycle.start_ms, JAN1);
  assert_int_equal(f->state->archived[0].cycle.end_ms, FEB1);
  assert_int_equal(f->state->archived[0].cycle.events, 1);
  assert_int_equal(f->state->archived[0].cycle.cost_micros, 1000);
  /* A rejected event that would close a cycle archives nothing. */
  tly_event_t bad = {.occurred_at_ms = starts[5] + DAY,
                     .body_kind = TLY_BODY_PLAN_ASSIGNED,
                     .body.plan_assigned = {.plan = "no-such-plan"}};
  assert_int_equal(fold(f, &bad), TLY_FOLD_REJECTED);
  assert_int_equal(f->state->archived_count, 1);
  /* A tick that closes the cycle archives February. */
  assert_int_equal(tly_billing_tick(&f->billing, &f->state->view,
                                    TLY_SUBJECT_USER, "alice", starts[5] + 1,
                                    &f->alerts),
                   TLY_FOLD_APPLIED);
  assert_int_equal(f->state->archived_count, 2);
  assert_int_equal(f->state->archived[1].cycle.start_ms, FEB1);
  assert_int_equal(f->state->archived[1].cycle.events, 1);
}

static void test_invoice_paid_resets_quota(void **ctx) {
  fixture_t *f = *ctx;
  for (int i = 0; i < 10; i++)
    usage(f, JAN1 + i, "api_calls", 1);
  assert_int_equal(f->alerts.count, 2);
  tly_event_t paid = {.occurred_at_ms = JAN1 + 10 * DAY,
                      .body_kind = TLY_BODY_INVOICE_PAID,
                      .body.invoice_paid = {"in_1", 29000000, JAN1 + 10 * DAY,
                                            FEB1 + 10 * DAY}};
  assert_int_equal(fold(f, &paid), TLY_FOLD_APPLIED);
  assert_int_equal(f->alerts.count, 3);
  assert_int_equal(f->alerts.items[2].type, TLY_ALERT_BILLING_CYCLE_END);
  assert_int_equal(alice(f)->cycle.start_ms, JAN1 + 10 * DAY);
  assert_int_equal(alice(f)->cycle.end_ms, FEB1 + 10 * DAY);
  assert_int_equal(alice(f)->cycle.cost_micros, 0);
  /* Quota is fresh: the thresholds fire again in the new cycle. */
  for (int i = 0; i < 5; i++)
    usage(f, JAN1 + 11 * DAY, "api_calls", 1);
  assert_int_equal(f->alerts.count, 4);
  assert_int_equal(f->alerts.items[3].threshold_percent, 50);
  assert_int_equal(f->alerts.items[3].cycle_start_ms, JAN1 + 10 * DAY);
}

static void test_duplicate_event_ids(void **ctx) {
  fixture_t *f = *ctx;
  tly_event_t event = {.event_id = "same",
                       .occurred_at_ms = JAN1,
                       .body_kind = TLY_BODY_USAGE_RECORDED,
                       .body.usage = {.feature = "api_calls", .quantity = 7}};
  assert_int_equal(fold(f, &event), TLY_FOLD_APPLIED);
  assert_int_equal(fold(f, &event), TLY_FOLD_DUPLICATE);
  event.body.usage.quantity = 1; /* same id, other content: still a dupe */
  assert_int_equal(fold(f, &event), TLY_FOLD_DUPLICATE);
  assert_int_equal(row_of(f, JAN1, "api_calls")->quantity, 7);
  assert_int_equal(row_of(f, JAN1, "api_calls")->event_count, 1);
}

static void test_unknown_model(void **ctx) {
  fixture_t *f = *ctx;
  assert_int_equal(tokens(f, JAN1, "mystery", 10, 10), TLY_FOLD_REJECTED);
  assert_non_null(strstr(f->errstr, "mystery"));
  /* Rejected means untouched: no row, no id remembered. */
  assert_int_equal(row_of(f, JAN1, "ai_tokens")->event_count, 0);
  assert_int_equal(f->state->seen_count, 0);
  /* With a fallback price configured it is priced, never free. */
  f->config->unknown_model = TLY_UNKNOWN_MODEL_FALLBACK;
  f->config->fallback.input_per_mtok = 5000000;
  f->config->fallback.output_per_mtok = 5000000;
  assert_int_equal(tokens(f, JAN1, "mystery", 10, 10), TLY_FOLD_APPLIED);
  assert_int_equal(row_of(f, JAN1, "ai_tokens")->cost_micros, 120);
}

static void test_tick_closes_idle_cycle(void **ctx) {
  fixture_t *f = *ctx;
  assert_int_equal(usage(f, JAN1, "api_calls", 1), TLY_FOLD_APPLIED);
  assert_int_equal(tly_billing_tick(&f->billing, &f->state->view,
                                    TLY_SUBJECT_USER, "alice", FEB1 - 1,
                                    &f->alerts),
                   TLY_FOLD_APPLIED);
  assert_int_equal(f->alerts.count, 0);
  assert_int_equal(tly_billing_tick(&f->billing, &f->state->view,
                                    TLY_SUBJECT_USER, "alice", FEB1 + 5,
                                    &f->alerts),
                   TLY_FOLD_APPLIED);
  assert_int_equal(f->alerts.count, 1);
  assert_int_equal(f->alerts.items[0].type, TLY_ALERT_BILLING_CYCLE_END);
  assert_int_equal(alice(f)->cycle.start_ms, FEB1);
  /* A tick for a subject with no account creates nothing. */
  assert_int_equal(tly_billing_tick(&f->billing, &f->state->view,
                                    TLY_SUBJECT_USER, "nobody", FEB1 + 5,
                                    &f->alerts),
                   TLY_FOLD_APPLIED);
  assert_int_equal(f->alerts.count, 1);
}

static void test_dedupe_window(void **ctx) {
  fixture_t *f = *ctx;
  /* The default: 35 days (Stripe takes meter events up to 35 days old). */
  assert_int_equal(TLY_BILLING_DEFAULT_DEDUPE_WINDOW_MS, 35LL * DAY);
  f->billing.dedupe_window_ms = TLY_BILLING_DEFAULT_DEDUPE_WINDOW_MS;
  /* (The subject's first cycle starts in February: late events reach back
   * to its closed cycles, not before its first.) */
  assert_int_equal(usage(f, FEB1, "api_calls", 1), TLY_FOLD_APPLIED);
  assert_int_equal(usage(f, FEB1 + 40 * DAY, "api_calls", 1), TLY_FOLD_APPLIED);
  assert_int_equal(f->state->watermark, FEB1 + 40 * DAY);
  /* 34 days back: a backfill inside the window counts. */
  assert_int_equal(usage(f, FEB1 + 6 * DAY, "api_calls", 1), TLY_FOLD_APPLIED);
  assert_int_equal(f->state->watermark, FEB1 + 40 * DAY);
  /* Exactly at the window's edge counts; one ms past it does not. */
  assert_int_equal(usage(f, FEB1 + 5 * DAY, "api_calls", 1), TLY_FOLD_APPLIED);
  assert_int_equal(usage(f, FEB1 + 5 * DAY - 1, "api_calls", 1),
                   TLY_FOLD_REJECTED);
  assert_non_null(strstr(f->errstr, "dedupe window"));
  /* A window of 7 days (configured): 8 days back is dead-lettered. */
  f->billing.dedupe_window_ms = 7 * DAY;
  assert_int_equal(usage(f, FEB1 + 32 * DAY, "api_calls", 1),
                   TLY_FOLD_REJECTED);
  assert_non_null(strstr(f->errstr, "dedupe window"));
  assert_int_equal(usage(f, FEB1 + 34 * DAY, "api_calls", 1), TLY_FOLD_APPLIED);
}

/* The dedupe floor (the window was raised: ids the smaller window let go
 * are unknown): an event older than the floor is dead-lettered, even
 * inside the window; one at the floor counts. */
static void test_dedupe_floor(void **ctx) {
  fixture_t *f = *ctx;
  int64_t floor = FEB1 + 33 * DAY;
  f->billing.dedupe_window_ms = TLY_BILLING_DEFAULT_DEDUPE_WINDOW_MS;
  assert_int_equal(usage(f, FEB1, "api_calls", 1), TLY_FOLD_APPLIED);
  assert_int_equal(usage(f, FEB1 + 40 * DAY, "api_calls", 1), TLY_FOLD_APPLIED);
  f->state->view.dedupe_floor_ms = &floor;
  assert_int_equal(usage(f, floor - 1, "api_calls", 1), TLY_FOLD_REJECTED);
  assert_non_null(strstr(f->errstr, "older than the dedupe window"));
  assert_non_null(strstr(f->errstr, "window was raised"));
  assert_int_equal(usage(f, floor, "api_calls", 1), TLY_FOLD_APPLIED);
  /* Without a floor the window alone decides. */
  f->state->view.dedupe_floor_ms = NULL;
  assert_int_equal(usage(f, floor - 1, "api_calls", 1), TLY_FOLD_APPLIED);
}

static void test_feature_name_bound(void **ctx) {
  fixture_t *f = *ctx;
  char name[TLY_CONFIG_NAME_MAX + 1];
  memset(name, 'f', sizeof(name) - 1);
  name[TLY_CONFIG_NAME_MAX] = '\0'; /* one byte too long to store */
  assert_int_equal(usage(f, FEB1, name, 1), TLY_FOLD_REJECTED);
  assert_non_null(strstr(f->errstr, "feature name is longer than"));
  name[TLY_CONFIG_NAME_MAX - 1] = '\0'; /* the longest that is stored */
  assert_int_equal(usage(f, FEB1, name, 1), TLY_FOLD_APPLIED);
}

static void test_plans_payments_and_cancellation(void **ctx) {
  fixture_t *f = *ctx;
  tly_event_t assign = {.occurred_at_ms = JAN1,
                        .body_kind = TLY_BODY_PLAN_ASSIGNED,
                        .body.plan_assigned = {"u"}};
  assert_int_equal(fold(f, &assign), TLY_FOLD_APPLIED);
  assert_string_equal(alice(f)->plan, "u");
  for (int i = 0; i < 20; i++) /* plan u: no limits, unlimited credits */
    usage(f, JAN1 + i, "api_calls", 1);
  assert_int_equal(f->alerts.count, 0);
  assign.body.plan_assigned.plan = "gold";
  assert_int_equal(fold(f, &assign), TLY_FOLD_REJECTED);
  assert_non_null(strstr(f->errstr, "gold"));

  tly_event_t failed = {.occurred_at_ms = JAN1 + DAY,
                        .body_kind = TLY_BODY_PAYMENT_FAILED,
                        .body.payment_failed = {"in_9", 1000, 1}};
  assert_int_equal(fold(f, &failed), TLY_FOLD_APPLIED);
  assert_int_equal(alice(f)->payment_failed, 1);
  tly_event_t canceled = {
      .occurred_at_ms = JAN1 + 2 * DAY,
      .body_kind = TLY_BODY_SUBSCRIPTION_CANCELED,
      .body.subscription_canceled = {"sub_1", "too pricey"}};
  assert_int_equal(fold(f, &canceled), TLY_FOLD_APPLIED);
  assert_int_equal(alice(f)->canceled, 1);
  assert_string_equal(alice(f)->plan, "t"); /* back to the kind's default */
  assert_int_equal(f->alerts.count, 2);
  assert_int_equal(f->alerts.items[0].type, TLY_ALERT_PAYMENT_FAILED);
  assert_int_equal(f->alerts.items[1].type, TLY_ALERT_SUBSCRIPTION_CANCELED);
  assert_string_equal(f->alerts.items[1].detail, "too pricey");
}

static void test_same_log_same_alerts(void **ctx) {
  fixture_t *f = *ctx;
  memory_state_t *other = new_state();
  tly_alert_list_t first = {0}, second = {0};
  for (int run = 0; run < 2; run++) {
    tly_billing_view_t *view = run ? &other->view : &f->state->view;
    tly_alert_list_t *out = run ? &second : &first;
    for (int i = 0; i < 300; i++) {
      char event_id[32];
      snprintf(event_id, sizeof(event_id), "d-%d", i);
      tly_event_t event = {
          .event_id = event_id,
          .occurred_at_ms = JAN1 + (int64_t)i * DAY / 5,
          .subject_id = "alice",
          .body_kind = TLY_BODY_USAGE_RECORDED,
          .body.usage = {.feature = "api_calls", .quantity = 1}};
      tly_billing_fold(&f->billing, view, &event, out, f->errstr,
                       sizeof(f->errstr));
    }
  }
  assert_true(first.count > 4);
  assert_int_equal(first.count, second.count);
  for (size_t i = 0; i < first.count; i++)
    assert_string_equal(first.items[i].alert_id, second.items[i].alert_id);
  tly_alert_list_clear(&first);
  tly_alert_list_clear(&second);
  free(other);
}

static void test_state_encodings(void **ctx) {
  (void)ctx;
  tly_account_t account = {0}, back;
  unsigned char bytes[TLY_ACCOUNT_MAX];
  account.exists = 1;
  snprintf(account.plan, sizeof(account.plan), "professional");
  snprintf(account.stripe_customer_id, sizeof(account.stripe_customer_id),
           "cus_123");
  account.stripe_period = 1;
  account.canceled = 1;
  account.cycle = (tly_cycle_t){JAN1, FEB1, 123456, 7};
  account.credit_thresholds_fired = 0x5;
  account.history_count = 2;
  account.history[0] = (tly_cycle_t){JAN1 - 31 * DAY, JAN1, 9, 1};
  account.history[1] = (tly_cycle_t){JAN1 - 61 * DAY, JAN1 - 31 * DAY, 8, 2};
  size_t len = tly_account_encode(&account, bytes);
  assert_true(len <= sizeof(bytes));
  assert_int_equal(tly_account_decode(bytes, len, &back), 0);
  assert_int_equal(back.exists, 1);
  assert_string_equal(back.plan, "professional");
  assert_string_equal(back.stripe_customer_id, "cus_123");
  assert_int_equal(back.stripe_period, 1);
  assert_int_equal(back.payment_failed, 0);
  assert_int_equal(back.canceled, 1);
  assert_memory_equal(&back.cycle, &account.cycle, sizeof(account.cycle));
  assert_int_equal(back.credit_thresholds_fired, 0x5);
  assert_int_equal(back.history_count, 2);
  assert_memory_equal(back.history, account.history,
                      2 * sizeof(account.history[0]));
  for (size_t cut = 0; cut < len; cut++)
    assert_int_equal(tly_account_decode(bytes, cut, &back), -1);

  tly_billing_row_t row = {1, 2, 3, 4, 5, 6, 0x3, 0}, row_back;
  unsigned char row_bytes[TLY_BILLING_ROW_SIZE];
  tly_billing_row_encode(&row, row_bytes);
  assert_int_equal(
      tly_billing_row_decode(row_bytes, sizeof(row_bytes), &row_back), 0);
  assert_int_equal(row_back.quantity, 1);
  assert_int_equal(row_back.input_tokens, 2);
  assert_int_equal(row_back.output_tokens, 3);
  assert_int_equal(row_back.event_count, 4);
  assert_int_equal(row_back.cost_micros, 5);
  assert_int_equal(row_back.cost_remainder, 6);
  assert_int_equal(row_back.thresholds_fired, 0x3);
  assert_int_equal(
      tly_billing_row_decode(row_bytes, sizeof(row_bytes) - 1, &row_back), -1);
}

/* Field by field: the structs have padding that memcmp would read. */
static void assert_bucket_equal(const tly_subject_bucket_t *x,
                                const tly_subject_bucket_t *y) {
  assert_int_equal(x->hour, y->hour);
  assert_string_equal(x->feature, y->feature);
  assert_memory_equal(&x->totals, &y->totals, sizeof(x->totals));
}

static void assert_row_equal(const tly_subject_row_t *x,
                             const tly_subject_row_t *y) {
  assert_int_equal(x->cycle_start_ms, y->cycle_start_ms);
  assert_string_equal(x->feature, y->feature);
  assert_int_equal(x->row.quantity, y->row.quantity);
  assert_int_equal(x->row.input_tokens, y->row.input_tokens);
  assert_int_equal(x->row.output_tokens, y->row.output_tokens);
  assert_int_equal(x->row.event_count, y->row.event_count);
  assert_int_equal(x->row.cost_micros, y->row.cost_micros);
  assert_int_equal(x->row.cost_remainder, y->row.cost_remainder);
  assert_int_equal(x->row.thresholds_fired, y->row.thresholds_fired);
}

static void test_subject_record_keeps_rows_of_kept_cycles(void **ctx) {
  (void)ctx;
  tly_account_t account = {0}, back;
  account.exists = 1;
  snprintf(account.plan, sizeof(account.plan), "free");
  account.cycle = (tly_cycle_t){FEB1, FEB1 + 28 * DAY, 50, 5};
  account.history_count = 1;
  account.history[0] = (tly_cycle_t){JAN1, FEB1, 40, 4};
  tly_subject_row_t current = {FEB1, {10, 0, 0, 3, 30, 0, 1, 0}, "api_calls"};
  tly_subject_row_t tokens = {FEB1, {0, 7, 9, 2, 20, 12345, 0, 0}, "ai_tokens"};
  tly_subject_row_t kept = {JAN1, {4, 0, 0, 4, 40, 0, 0, 0}, "api_calls"};
  tly_subject_row_t gone = {
      JAN1 - 31 * DAY, {1, 0, 0, 1, 1, 0, 0, 0}, "api_calls"};
  tly_subject_row_t unused = {FEB1, {0}, "storage_bytes"};
  const tly_subject_row_t *rows[] = {&current, &gone, &tokens, &unused, &kept};
  tly_subject_bucket_t today = {20000, {6, 0, 0, 2, 18}, "api_calls"};
  tly_subject_bucket_t untouched = {20000, {0}, "ai_tokens"};
  const tly_subject_bucket_t *days[] = {&today, &untouched};
  unsigned char small[8], bytes[1024];
  size_t need = tly_subject_record_encode(&account, rows, 5, days, 2, small,
                                          sizeof(small));
  assert_true(need > sizeof(small)); /* tells the size, writes nothing */
  size_t len = tly_subject_record_encode(&account, rows, 5, days, 2, bytes,
                                         sizeof(bytes));
  assert_int_equal(len, need);

  tly_subject_record_t record;
  assert_int_equal(tly_subject_record_decode(bytes, len, &record), 0);
  back = record.account;
  assert_string_equal(back.plan, "free");
  assert_memory_equal(&back.cycle, &account.cycle, sizeof(account.cycle));
  /* The row of a cycle no longer kept and the unused row are left out. */
  tly_subject_row_t *decoded = record.rows;
  assert_int_equal(record.row_count, 3);
  assert_int_equal(decoded[0].cycle_start_ms, FEB1);
  assert_string_equal(decoded[0].feature, "api_calls");
  assert_int_equal(decoded[0].row.quantity, 10);
  assert_int_equal(decoded[0].row.event_count, 3);
  assert_int_equal(decoded[0].row.cost_micros, 30);
  assert_int_equal(decoded[0].row.thresholds_fired, 1);
  assert_string_equal(decoded[1].feature, "ai_tokens");
  assert_int_equal(decoded[1].row.cost_remainder, 12345);
  assert_int_equal(decoded[2].cycle_start_ms, JAN1);
  assert_int_equal(decoded[2].row.quantity, 4);
  /* The day's used bucket, not the untouched one. */
  assert_int_equal(record.bucket_count, 1);
  assert_bucket_equal(&record.buckets[0], &today);
  tly_subject_record_clear(&record);
  for (size_t cut = 0; cut < len; cut++) {
    assert_int_equal(tly_subject_record_decode(bytes, cut, &record), -1);
    assert_null(record.rows);
    assert_null(record.buckets);
  }
  bytes[0] ^= 0xff; /* unknown version */
  assert_int_equal(tly_subject_record_decode(bytes, len, &record), -1);
}

/* The varint decoders on bytes no encoder wrote: fail cleanly (and, under
 * the sanitizers, without reading out of bounds or allocating what a
 * garbage count claims). */
static void test_subject_record_rejects_garbage(void **ctx) {
  (void)ctx;
  tly_subject_record_t record;
  tly_account_t account;
  /* version, plan "", no customer, flags, then a varint of 11 bytes. */
  unsigned char overlong[16] = {3, 0, 0, 0};
  memset(overlong + 4, 0xff, 11);
  overlong[15] = 0x01;
  assert_int_equal(
      tly_subject_record_decode(overlong, sizeof(overlong), &record), -1);
  /* A tenth byte above 1 carries bits past 64. */
  unsigned char too_wide[] = {3,    0,    0,    0,    0xff, 0xff, 0xff,
                              0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02};
  assert_int_equal(
      tly_subject_record_decode(too_wide, sizeof(too_wide), &record), -1);
  /* A flag this version does not know. */
  unsigned char flags[] = {3, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0};
  assert_int_equal(tly_subject_record_decode(flags, sizeof(flags), &record),
                   -1);
  flags[3] = 0; /* the same record with known flags decodes */
  assert_int_equal(tly_subject_record_decode(flags, sizeof(flags), &record), 0);
  tly_subject_record_clear(&record);
  /* A row count far beyond the bytes left: rejected, nothing allocated. */
  unsigned char count[] = {3, 0, 0,    0,    0,    0,    0,    0,
                           0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, 0};
  assert_int_equal(tly_subject_record_decode(count, sizeof(count), &record),
                   -1);
  assert_null(record.rows);
  /* A history longer than kept. */
  unsigned char history[] = {2, 0, 0, 0, 0,
                             0, 0, 0, 0, TLY_BILLING_HISTORY + 1};
  assert_int_equal(tly_account_decode(history, sizeof(history), &account), -1);
  history[9] = 0;
  assert_int_equal(tly_account_decode(history, sizeof(history), &account), 0);
  /* Trailing bytes. */
  unsigned char trailing[] = {2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  assert_int_equal(tly_account_decode(trailing, sizeof(trailing), &account),
                   -1);

  /* Every byte of a real record replaced by a few values: whatever the
   * verdict, the decoder stays in bounds and a success round-trips. */
  tly_account_t full = {0};
  full.exists = 1;
  snprintf(full.plan, sizeof(full.plan), "pro");
  full.cycle = (tly_cycle_t){JAN1, FEB1, 1234567, 89};
  full.history_count = 1;
  full.history[0] = (tly_cycle_t){JAN1 - 31 * DAY, JAN1, 5, 6};
  tly_subject_row_t row = {
      JAN1, {-7, 300, 400, 2, 99, 12345, 3, 0}, "ai_tokens"};
  tly_subject_bucket_t bucket = {20000, {-7, 300, 400, 2, 99}, "ai_tokens"};
  const tly_subject_row_t *rows[] = {&row};
  const tly_subject_bucket_t *buckets[] = {&bucket};
  unsigned char bytes[512], work[512];
  size_t len = tly_subject_record_encode(&full, rows, 1, buckets, 1, bytes,
                                         sizeof(bytes));
  assert_true(len < sizeof(bytes));
  static const unsigned char values[] = {0x00, 0x01, 0x7f, 0x80, 0xff};
  for (size_t at = 0; at < len; at++)
    for (size_t v = 0; v < sizeof(values); v++) {
      memcpy(work, bytes, len);
      work[at] = values[v];
      if (tly_subject_record_decode(work, len, &record) == 0) {
        unsigned char again[512];
        const tly_subject_row_t *back_rows[4];
        const tly_subject_bucket_t *back_buckets[4];
        assert_true(record.row_count <= 4 && record.bucket_count <= 4);
        for (size_t i = 0; i < record.row_count; i++)
          back_rows[i] = &record.rows[i];
        for (size_t i = 0; i < record.bucket_count; i++)
          back_buckets[i] = &record.buckets[i];
        size_t again_len = tly_subject_record_encode(
            &record.account, back_rows, record.row_count, back_buckets,
            record.bucket_count, again, sizeof(again));
        (void)again_len; /* rows no longer kept drop out: no equality */
        tly_subject_record_clear(&record);
      } else {
        assert_null(record.rows);
        assert_null(record.buckets);
      }
    }
}

static void test_bucket_and_archive_encodings(void **ctx) {
  (void)ctx;
  tly_subject_bucket_t a = {20001, {1, 2, 3, 4, 5}, "api_calls"};
  tly_subject_bucket_t b = {20001, {7, 0, 0, 1, -9}, "storage_bytes"};
  tly_subject_bucket_t none = {20001, {0}, "ai_tokens"};
  const tly_subject_bucket_t *hours[] = {&a, &none, &b};
  unsigned char bytes[512];
  size_t len = tly_bucket_encode(hours, 3, bytes, sizeof(bytes));
  assert_true(len < sizeof(bytes));
  assert_true(tly_bucket_encode(hours, 3, bytes, 4) > 4);
  tly_subject_bucket_t *back = NULL;
  size_t count = 0;
  assert_int_equal(tly_bucket_decode(bytes, len, 20001, &back, &count), 0);
  assert_int_equal(count, 2);
  assert_bucket_equal(&back[0], &a);
  assert_bucket_equal(&back[1], &b);
  free(back);
  for (size_t cut = 0; cut < len; cut++) {
    assert_int_equal(tly_bucket_decode(bytes, cut, 20001, &back, &count), -1);
    assert_null(back);
  }

  tly_cycle_t cycle = {JAN1, FEB1, 123, 4}, cycle_back;
  tly_subject_row_t r1 = {JAN1, {10, 0, 0, 3, 30, 0, 1, 0}, "api_calls"};
  tly_subject_row_t r2 = {JAN1, {0, 7, 9, 1, 93, 5, 0, 0}, "ai_tokens"};
  const tly_subject_row_t *rows[] = {&r1, &r2};
  len = tly_cycle_archive_encode(&cycle, rows, 2, bytes, sizeof(bytes));
  assert_true(len < sizeof(bytes));
  tly_subject_row_t *rows_back = NULL;
  assert_int_equal(
      tly_cycle_archive_decode(bytes, len, &cycle_back, &rows_back, &count), 0);
  assert_memory_equal(&cycle_back, &cycle, sizeof(cycle));
  assert_int_equal(count, 2);
  assert_row_equal(&rows_back[0], &r1);
  assert_row_equal(&rows_back[1], &r2);
  free(rows_back);
  for (size_t cut = 0; cut < len; cut++) {
    assert_int_equal(
        tly_cycle_archive_decode(bytes, cut, &cycle_back, &rows_back, &count),
        -1);
    assert_null(rows_back);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_subject_record_keeps_rows_of_kept_cycles),
      cmocka_unit_test(test_subject_record_rejects_garbage),
      cmocka_unit_test(test_bucket_and_archive_encodings),
      cmocka_unit_test(test_tier_boundaries),
      cmocka_unit_test(test_month_cycles),
      cmocka_unit_test(test_month_cycle_extremes),
      cmocka_unit_test(test_month_cycle_properties),
      cmocka_unit_test(test_billing_hour_extremes),
      cmocka_unit_test_setup_teardown(test_fold_refuses_times_out_of_range,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_graduated_price_and_hard_limit_alerts, setup, teardown),
      cmocka_unit_test_setup_teardown(test_soft_limit_and_exact_token_cost,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_unlimited_volume_and_credit_thresholds, setup, teardown),
      cmocka_unit_test_setup_teardown(test_rollover_and_late_event, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_hourly_buckets, setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_closed_cycles_are_archived_once_they_leave_history, setup,
          teardown),
      cmocka_unit_test_setup_teardown(test_invoice_paid_resets_quota, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_duplicate_event_ids, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_unknown_model, setup, teardown),
      cmocka_unit_test_setup_teardown(test_tick_closes_idle_cycle, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_dedupe_window, setup, teardown),
      cmocka_unit_test_setup_teardown(test_dedupe_floor, setup, teardown),
      cmocka_unit_test_setup_teardown(test_feature_name_bound, setup, teardown),
      cmocka_unit_test_setup_teardown(test_plans_payments_and_cancellation,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_same_log_same_alerts, setup,
                                      teardown),
      cmocka_unit_test(test_state_encodings),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
