/*
 * tly_request.c - the HTTP port's request parsing and answers, pure (see
 * tly_request.h for the contract of each function).
 *
 * Everything that takes client bytes lives here so one fuzz target covers
 * it: a crash or a hang found there is a crash or a hang the port would
 * have had. Bodies are parsed with jansson with duplicate keys refused (a
 * body whose meaning depends on the parser is refused, as in the config and
 * `tally emit`), unknown keys are refused so typos never pass silently, and
 * every number is an integer checked for range and overflow.
 */
#include "tly_request.h"

#include "tly_billing.h"
#include "tly_event_json.h"
#include "tly_event_time.h"
#include "tly_request_reserve.h"
#include "tly_request_subject.h"
#include "tly_sat.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DAY_MS 86400000LL
#define AI_ITEMS_MAX 1000

int tly_req_fail(tly_req_error_t *err, int status, const char *code,
                 const char *field, const char *fmt, ...) {
  va_list args;
  err->status = status;
  snprintf(err->code, sizeof(err->code), "%s", code);
  snprintf(err->field, sizeof(err->field), "%s", field ? field : "");
  va_start(args, fmt);
  vsnprintf(err->message, sizeof(err->message), fmt, args);
  va_end(args);
  return -1;
}

/* tly_event_json names fields as "field 'quantity': ..." or "unknown field
 * 'x'"; the name between the quotes becomes the error's field. */
static void field_from_message(const char *message, char *field,
                               size_t field_size) {
  const char *start = strstr(message, "field '");
  field[0] = '\0';
  if (!start)
    return;
  start += 7;
  const char *end = strchr(start, '\'');
  size_t len = end ? (size_t)(end - start) : 0;
  if (len && len < field_size) {
    memcpy(field, start, len);
    field[len] = '\0';
  }
}

/* A body as a JSON value; NULL with a 400 naming line and column. */
static json_t *load_body(const char *body, size_t len, tly_req_error_t *err) {
  json_error_t error;
  json_t *root;
  if (!body || !len) {
    tly_req_fail(err, 400, "malformed_json", "", "request body: empty");
    return NULL;
  }
  root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &error);
  if (!root)
    tly_req_fail(err, 400, "malformed_json", "",
                 "request body: invalid JSON at line %d column %d: %s",
                 error.line, error.column, error.text);
  return root;
}

/* Every key of object must be in allowed (NULL-terminated). */
static int check_keys(const json_t *object, const char *const *allowed,
                      tly_req_error_t *err) {
  const char *key;
  json_t *value;
  json_object_foreach((json_t *)object, key, value) {
    size_t i = 0;
    while (allowed[i] && strcmp(allowed[i], key) != 0)
      i++;
    if (!allowed[i])
      return tly_req_fail(err, 400, "bad_request", key, "unknown field '%s'",
                          key);
  }
  return 0;
}

/* An optional integer field >= 0: 0 absent (out untouched), 1 read, -1. */
static int get_count(const json_t *object, const char *key, const char *path,
                     int64_t *out, tly_req_error_t *err) {
  const json_t *value = json_object_get(object, key);
  if (!value)
    return 0;
  if (!json_is_integer(value) || json_integer_value(value) < 0)
    return tly_req_fail(err, 400, "bad_request", path,
                        "field '%s': must be an integer >= 0", path);
  *out = (int64_t)json_integer_value(value);
  return 1;
}

/* A required string field without NUL bytes. */
static const char *get_text(const json_t *object, const char *key,
                            tly_req_error_t *err) {
  const json_t *value = json_object_get(object, key);
  if (!value) {
    tly_req_fail(err, 400, "bad_request", key, "field '%s': required", key);
    return NULL;
  }
  if (!json_is_string(value) ||
      strlen(json_string_value(value)) != json_string_length(value) ||
      !json_string_length(value)) {
    tly_req_fail(err, 400, "bad_request", key,
                 "field '%s': must be a non-empty string", key);
    return NULL;
  }
  return json_string_value(value);
}

static const tly_plan_t *get_plan(const tly_config_t *config,
                                  const json_t *object, const char *key,
                                  tly_req_error_t *err) {
  const char *name = get_text(object, key, err);
  if (!name)
    return NULL;
  const tly_plan_t *plan = tly_config_plan(config, name);
  if (!plan)
    tly_req_fail(err, 400, "unknown_plan", key,
                 "field '%s': no plan named '%.64s' (GET /v1/plans lists them)",
                 key, name);
  return plan;
}

/* ---- subjects and features --------------------------------------------- */

int tly_req_parse_subject(const char *segment, tly_req_subject_t *out,
                          tly_req_error_t *err) {
  char errstr[256], *id = NULL;
  if (!segment || strlen(segment) > TLY_REQ_SUBJECT_MAX)
    return tly_req_fail(err, 400, "bad_subject", "subject",
                        "subject: longer than %d bytes", TLY_REQ_SUBJECT_MAX);
  if (!tly_req_utf8_valid(segment, strlen(segment)))
    return tly_req_fail(err, 400, "bad_subject", "subject",
                        "subject: not valid UTF-8 (percent-encode the UTF-8 "
                        "bytes of the id)");
  if (tly_subject_parse(segment, &out->kind, &id, errstr, sizeof(errstr)))
    return tly_req_fail(err, 400, "bad_subject", "subject", "%s", errstr);
  if (out->kind == TLY_SUBJECT_SYSTEM) {
    free(id);
    return tly_req_fail(err, 400, "bad_subject", "subject",
                        "subject: the system subject has no usage");
  }
  if (tly_req_check_subject(out->kind, id, "subject", err)) {
    free(id);
    return -1;
  }
  /* check_subject bounded the id. */
  _Static_assert(sizeof(out->id) > TLY_SUBJECT_ID_MAX, "id bound");
  size_t id_len = strlen(id);
  memcpy(out->id, id, id_len + 1);
  tly_subject_key(out->kind, id, out->key, sizeof(out->key));
  free(id);
  return 0;
}

int tly_req_feature_known(const tly_config_t *config, const char *feature) {
  for (size_t i = 0; i < config->plan_count; i++)
    if (tly_plan_limit(&config->plans[i], feature) ||
        tly_plan_price(&config->plans[i], feature))
      return 1;
  return 0;
}

/* ---- cycles ------------------------------------------------------------ */

int tly_req_effective_cycle(const tly_config_t *config,
                            const tly_account_t *account, int64_t now_ms,
                            int64_t *start_ms, int64_t *end_ms) {
  if (!account || !account->exists) {
    tly_billing_month_cycle(config->cycle_anchor_ms, now_ms, start_ms, end_ms);
    return 0;
  }
  if (now_ms < account->cycle.end_ms) {
    *start_ms = account->cycle.start_ms;
    *end_ms = account->cycle.end_ms;
    return 0;
  }
  /* As the fold's next_cycle(): Stripe's period continues monthly from its
   * last end; otherwise the config's monthly cycles. */
  int64_t anchor =
      account->stripe_period ? account->cycle.end_ms : config->cycle_anchor_ms;
  tly_billing_month_cycle(anchor, now_ms, start_ms, end_ms);
  return 1;
}

/* ---- quota ------------------------------------------------------------- */

/* Parses a decimal integer >= 0 that fits int64 (no sign, no spaces). */
static int parse_count_text(const char *text, int64_t *out) {
  int64_t value = 0;
  if (!text || !*text || strlen(text) > 19)
    return -1;
  for (const char *p = text; *p; p++) {
    if (*p < '0' || *p > '9' ||
        __builtin_mul_overflow(value, (int64_t)10, &value) ||
        __builtin_add_overflow(value, (int64_t)(*p - '0'), &value))
      return -1;
  }
  *out = value;
  return 0;
}

int tly_req_parse_at(const char *text, int64_t now_ms, int64_t *out,
                     tly_req_error_t *err) {
  *out = now_ms;
  if (text && (parse_count_text(text, out) || !tly_event_time_in_range(*out)))
    return tly_req_fail(err, 400, "bad_date", "at",
                        "query parameter 'at': must be milliseconds since the "
                        "epoch from 0 to %lld (1970-01-01T00:00:00Z to "
                        "9999-12-31T23:59:59.999Z)",
                        TLY_TIME_MAX_MS);
  return 0;
}

int tly_req_parse_quota(const tly_config_t *config, const char *feature,
                        const char *quantity, tly_req_quota_query_t *out,
                        tly_req_error_t *err) {
  if (!feature || !*feature)
    return tly_req_fail(err, 400, "bad_request", "feature",
                        "query parameter 'feature': required");
  if (strlen(feature) >= sizeof(out->feature) ||
      !tly_req_feature_known(config, feature))
    return tly_req_fail(err, 400, "unknown_feature", "feature",
                        "query parameter 'feature': no plan has a limit or a "
                        "price for '%.64s'",
                        feature);
  snprintf(out->feature, sizeof(out->feature), "%s", feature);
  out->quantity = 1;
  if (quantity && parse_count_text(quantity, &out->quantity))
    return tly_req_fail(err, 400, "bad_request", "quantity",
                        "query parameter 'quantity': must be an integer >= 0");
  return 0;
}

void tly_req_quota_decide(const tly_config_t *config, const tly_plan_t *plan,
                          const char *feature, int64_t used,
                          int64_t cycle_cost_micros, int64_t quantity,
                          tly_req_quota_t *out) {
  const tly_feature_limit_t *limit = tly_plan_limit(plan, feature);
  memset(out, 0, sizeof(*out));
  out->used = used;
  out->credits_used = cycle_cost_micros / config->micros_per_credit;
  out->credits_limit = plan->credits;
  out->credits_remaining = -1;
  out->limit = TLY_UNLIMITED;
  out->remaining = TLY_UNLIMITED;
  if (!limit || limit->limit == TLY_UNLIMITED) {
    out->allowed = 1;
    out->reason = "unlimited";
    out->mode = "unlimited";
    if (plan->credits != TLY_UNLIMITED)
      out->credits_remaining = plan->credits > out->credits_used
                                   ? plan->credits - out->credits_used
                                   : 0;
    return;
  }
  out->limit = limit->limit;
  out->mode = limit->mode == TLY_LIMIT_HARD ? "hard" : "soft";
  /* The value after the request, by the feature's aggregation
   * (tly_meters.h: used + quantity for a sum). */
  int64_t after = tly_meter_value_after(tly_meter_aggregation(config, feature),
                                        used, quantity);
  int overflow = after == INT64_MAX;
  int over_limit = overflow || after > limit->limit;
  out->remaining = over_limit ? 0 : limit->limit - after;

  int credits_blocked = 0;
  if (plan->credits != TLY_UNLIMITED) {
    /* What the request itself costs under the plan's tiers; an overflow is
     * far past any quota. */
    const tly_feature_price_t *price = tly_plan_price(plan, feature);
    int64_t delta = 0, credits_after = out->credits_used;
    if (price && quantity > 0) {
      int64_t before_cost = tly_billing_tier_cost(price, used);
      int64_t after_cost = overflow ? -1 : tly_billing_tier_cost(price, after);
      int64_t cost_after;
      if (before_cost < 0 || after_cost < 0 ||
          __builtin_sub_overflow(after_cost, before_cost, &delta) ||
          __builtin_add_overflow(cycle_cost_micros, delta, &cost_after))
        credits_after = INT64_MAX;
      else
        credits_after = cost_after / config->micros_per_credit;
    }
    credits_blocked = quantity > 0 && (out->credits_used >= plan->credits ||
                                       credits_after > plan->credits);
    out->credits_remaining =
        credits_after < plan->credits ? plan->credits - credits_after : 0;
  }
  if (over_limit && limit->mode == TLY_LIMIT_HARD) {
    out->reason = "limit_exceeded";
  } else if (credits_blocked) {
    out->reason = "credits_exhausted";
  } else {
    out->allowed = 1;
    out->reason = over_limit ? "soft_limit_exceeded" : "within_limit";
  }
}

static json_t *integer_or_null(int64_t value) {
  return value == TLY_UNLIMITED ? json_null() : json_integer(value);
}

int tly_req_quota_answer(const tly_config_t *config,
                         const tly_req_subject_t *subject,
                         const tly_subject_state_t *state,
                         const tly_req_quota_query_t *query, int64_t now_ms,
                         tly_req_quota_answer_t *out, tly_req_error_t *err) {
  /* Open reservations count as used (tly_request_reserve.h). */
  tly_req_held_quota_t held;
  if (tly_req_quota_held(config, subject->kind, state, NULL, 0, query->feature,
                         query->quantity, now_ms, &held, err))
    return -1;
  memset(out, 0, sizeof(*out));
  out->subject = subject->key;
  out->feature = query->feature;
  out->quantity = query->quantity;
  out->plan = held.plan->name;
  out->known_subject = state != NULL;
  out->cycle_start_ms = held.start_ms;
  out->cycle_end_ms = held.end_ms;
  out->cycle_ended = held.ended;
  out->quota = held.quota;
  out->held = held.held;
  out->credits_held = held.credits_held;
  out->warning = strcmp(out->quota.reason, "soft_limit_exceeded") == 0
                     ? "over the soft limit: allowed, and billed"
                     : NULL;
  return 0;
}

json_t *tly_req_quota_answer_json(const tly_req_quota_answer_t *answer) {
  const tly_req_quota_t *quota = &answer->quota;
  json_t *credits = json_pack(
      "{s:I,s:I,s:o,s:o}", "used", (json_int_t)quota->credits_used, "held",
      (json_int_t)answer->credits_held, "limit",
      integer_or_null(quota->credits_limit), "remaining",
      quota->credits_remaining < 0 ? json_null()
                                   : json_integer(quota->credits_remaining));
  return json_pack(
      "{s:s,s:s,s:I,s:b,s:s,s:o,s:s,s:s,s:o,s:I,s:I,s:o,s:o,"
      "s:{s:I,s:I},s:b,s:b}",
      "subject", answer->subject, "feature", answer->feature, "quantity",
      (json_int_t)answer->quantity, "allowed", quota->allowed, "reason",
      quota->reason, "warning",
      answer->warning ? json_string(answer->warning) : json_null(), "plan",
      answer->plan, "mode", quota->mode, "limit", integer_or_null(quota->limit),
      "used", (json_int_t)quota->used, "held", (json_int_t)answer->held,
      "remaining", integer_or_null(quota->remaining), "credits", credits,
      "cycle", "start_ms", (json_int_t)answer->cycle_start_ms, "end_ms",
      (json_int_t)answer->cycle_end_ms, "cycle_ended", answer->cycle_ended,
      "known_subject", answer->known_subject);
}

json_t *tly_req_quota_json(const tly_config_t *config,
                           const tly_req_subject_t *subject,
                           const tly_subject_state_t *state,
                           const tly_req_quota_query_t *query, int64_t now_ms,
                           tly_req_error_t *err) {
  tly_req_quota_answer_t answer;
  if (tly_req_quota_answer(config, subject, state, query, now_ms, &answer, err))
    return NULL;
  return tly_req_quota_answer_json(&answer);
}

/* ---- the usage history ------------------------------------------------ */

int tly_req_parse_daily(const char *from, const char *to, int32_t *from_day,
                        int32_t *to_day, tly_req_error_t *err) {
  int64_t from_ms, to_ms;
  if (!from || !*from)
    return tly_req_fail(err, 400, "bad_request", "from",
                        "query parameter 'from': required (YYYY-MM-DD)");
  if (tly_req_parse_date(from, &from_ms))
    return tly_req_fail(err, 400, "bad_date", "from",
                        "query parameter 'from': must be a date YYYY-MM-DD");
  if (!to || !*to)
    return tly_req_fail(err, 400, "bad_request", "to",
                        "query parameter 'to': required (YYYY-MM-DD)");
  if (tly_req_parse_date(to, &to_ms))
    return tly_req_fail(err, 400, "bad_date", "to",
                        "query parameter 'to': must be a date YYYY-MM-DD");
  if (to_ms < from_ms)
    return tly_req_fail(err, 400, "bad_date", "to",
                        "query parameter 'to': must not be before 'from'");
  if ((to_ms - from_ms) / DAY_MS >= TLY_REQ_DAILY_MAX_DAYS)
    return tly_req_fail(err, 400, "bad_date", "to",
                        "query parameter 'to': at most %d days from 'from'",
                        TLY_REQ_DAILY_MAX_DAYS);
  *from_day = (int32_t)(from_ms / DAY_MS);
  *to_day = (int32_t)(to_ms / DAY_MS);
  return 0;
}

void tly_req_format_day(int32_t day, char out[16]) {
  int64_t year, month, date;
  tly_civil_from_days(day, &year, &month, &date);
  snprintf(out, 16, "%04d-%02d-%02d", (int)year, (int)month, (int)date);
}

int32_t tly_req_day_of_hour(int32_t hour) {
  return hour >= 0 ? hour / 24 : -((-hour + 23) / 24);
}

/* By day, then feature (the hours of one day and feature end up next to
 * each other, to be summed). */
static int compare_buckets(const void *a, const void *b) {
  const tly_subject_bucket_t *x = *(const tly_subject_bucket_t *const *)a;
  const tly_subject_bucket_t *y = *(const tly_subject_bucket_t *const *)b;
  int32_t dx = tly_req_day_of_hour(x->hour), dy = tly_req_day_of_hour(y->hour);
  if (dx != dy)
    return dx < dy ? -1 : 1;
  return strcmp(x->feature, y->feature);
}

static json_t *bucket_entry(const tly_bucket_t *totals) {
  return json_pack("{s:I,s:I,s:I,s:I,s:I}", "quantity",
                   (json_int_t)totals->quantity, "input_tokens",
                   (json_int_t)totals->input_tokens, "output_tokens",
                   (json_int_t)totals->output_tokens, "events",
                   (json_int_t)totals->event_count, "cost_micros",
                   (json_int_t)totals->cost_micros);
}

json_t *tly_req_daily_json(const tly_config_t *config,
                           const tly_req_subject_t *subject,
                           const tly_subject_bucket_t *buckets, size_t count,
                           int32_t from_day, int32_t to_day) {
  char from[16], to[16], date[16];
  const tly_subject_bucket_t **sorted =
      malloc((count ? count : 1) * sizeof(*sorted));
  json_t *list = json_array();
  if (!sorted || !list) {
    free(sorted);
    json_decref(list);
    return NULL;
  }
  size_t n = 0;
  for (size_t i = 0; i < count; i++) {
    int32_t day = tly_req_day_of_hour(buckets[i].hour);
    if (day >= from_day && day <= to_day && buckets[i].totals.event_count &&
        !strchr(buckets[i].feature, '\x1f')) /* a group (tly_dims.h) */
      sorted[n++] = &buckets[i];
  }
  qsort(sorted, n, sizeof(*sorted), compare_buckets);
  json_t *day = NULL, *features = NULL; /* borrowed from list */
  int64_t day_cost = 0;
  for (size_t i = 0; i < n;) {
    int32_t number = tly_req_day_of_hour(sorted[i]->hour);
    if (!day || number != tly_req_day_of_hour(sorted[i - 1]->hour)) {
      tly_req_format_day(number, date);
      features = json_object();
      day = json_pack("{s:s,s:o}", "date", date, "features", features);
      json_array_append_new(list, day);
      day_cost = 0;
    }
    /* Sum this feature's hours of the day. */
    tly_bucket_t sum = {0};
    size_t j = i;
    for (; j < n && tly_req_day_of_hour(sorted[j]->hour) == number &&
           strcmp(sorted[j]->feature, sorted[i]->feature) == 0;
         j++) {
      const tly_bucket_t *hour = &sorted[j]->totals;
      sum.quantity = tly_add_saturating(sum.quantity, hour->quantity);
      sum.input_tokens =
          tly_add_saturating(sum.input_tokens, hour->input_tokens);
      sum.output_tokens =
          tly_add_saturating(sum.output_tokens, hour->output_tokens);
      sum.event_count = tly_add_saturating(sum.event_count, hour->event_count);
      sum.cost_micros = tly_add_saturating(sum.cost_micros, hour->cost_micros);
    }
    json_object_set_new(features, sorted[i]->feature, bucket_entry(&sum));
    day_cost = tly_add_saturating(day_cost, sum.cost_micros);
    json_object_set_new(day, "cost_micros", json_integer(day_cost));
    i = j;
  }
  free(sorted);
  tly_req_format_day(from_day, from);
  tly_req_format_day(to_day, to);
  return json_pack("{s:s,s:s,s:s,s:I,s:o}", "subject", subject->key, "from",
                   from, "to", to, "retention_days",
                   (json_int_t)config->retention.daily_days, "days", list);
}

static int compare_cycles(const void *a, const void *b) {
  const tly_req_cycle_t *x = a, *y = b;
  if (x->cycle.start_ms != y->cycle.start_ms)
    return x->cycle.start_ms > y->cycle.start_ms ? -1 : 1;
  return 0;
}

json_t *tly_req_cycles_json(const tly_config_t *config,
                            const tly_req_subject_t *subject,
                            tly_req_cycle_t *cycles, size_t count) {
  json_t *list = json_array();
  if (!list)
    return NULL;
  if (count)
    qsort(cycles, count, sizeof(*cycles), compare_cycles);
  for (size_t i = 0; i < count; i++) {
    const tly_cycle_t *cycle = &cycles[i].cycle;
    json_t *features = json_object();
    for (size_t r = 0; r < cycles[i].row_count; r++)
      if (cycles[i].rows[r].cycle_start_ms == cycle->start_ms &&
          cycles[i].rows[r].row.event_count)
        json_object_set_new(features, cycles[i].rows[r].feature,
                            tly_req_usage_entry(&cycles[i].rows[r].row));
    json_array_append_new(
        list,
        json_pack("{s:I,s:I,s:b,s:I,s:I,s:I,s:o}", "start_ms",
                  (json_int_t)cycle->start_ms, "end_ms",
                  (json_int_t)cycle->end_ms, "final", cycles[i].final, "events",
                  (json_int_t)cycle->events, "cost_micros",
                  (json_int_t)cycle->cost_micros, "credits_used",
                  (json_int_t)(cycle->cost_micros / config->micros_per_credit),
                  "features", features));
  }
  return json_pack("{s:s,s:o}", "subject", subject->key, "cycles", list);
}

int tly_req_parse_limit(const char *text, int64_t *out, tly_req_error_t *err) {
  *out = TLY_REQ_ALERTS_DEFAULT;
  if (text &&
      (parse_count_text(text, out) || *out < 1 || *out > TLY_REQ_ALERTS_MAX))
    return tly_req_fail(err, 400, "bad_request", "limit",
                        "query parameter 'limit': must be an integer from 1 "
                        "to %d",
                        TLY_REQ_ALERTS_MAX);
  return 0;
}

json_t *tly_req_alert_json(const tly_alert_t *alert) {
  char subject[TLY_REQ_SUBJECT_MAX + 16];
  tly_subject_key(alert->subject_kind, alert->subject_id, subject,
                  sizeof(subject));
  return json_pack(
      "{s:s,s:s,s:s,s:I,s:{s:I,s:I},s:s,s:s,s:i,s:I,s:o,s:b,s:I,s:I,s:s}",
      "alert_id", alert->alert_id, "type", tly_alert_type_name(alert->type),
      "subject", subject, "occurred_at_ms", (json_int_t)alert->occurred_at_ms,
      "cycle", "start_ms", (json_int_t)alert->cycle_start_ms, "end_ms",
      (json_int_t)alert->cycle_end_ms, "plan", alert->plan ? alert->plan : "",
      "feature", alert->feature ? alert->feature : "", "threshold_percent",
      (int)alert->threshold_percent, "used", (json_int_t)alert->used, "limit",
      alert->limit < 0 ? json_null() : json_integer(alert->limit), "hard",
      alert->hard, "credits_used", (json_int_t)alert->credits_used,
      "cost_micros", (json_int_t)alert->cost_micros, "detail",
      alert->detail ? alert->detail : "");
}

/* ---- plans ------------------------------------------------------------- */

static json_t *plan_json(const tly_config_t *config, const tly_plan_t *plan) {
  json_t *thresholds = json_array(), *limits = json_object(),
         *prices = json_object();
  size_t count =
      plan->threshold_count ? plan->threshold_count : config->threshold_count;
  const int *percents =
      plan->threshold_count ? plan->thresholds : config->thresholds;
  for (size_t i = 0; i < count; i++)
    json_array_append_new(thresholds, json_integer(percents[i]));
  for (size_t i = 0; i < plan->limit_count; i++) {
    const tly_feature_limit_t *limit = &plan->limits[i];
    json_object_set_new(limits, limit->feature,
                        json_pack("{s:o,s:s}", "limit",
                                  integer_or_null(limit->limit), "mode",
                                  limit->limit == TLY_UNLIMITED   ? "unlimited"
                                  : limit->mode == TLY_LIMIT_HARD ? "hard"
                                                                  : "soft"));
  }
  for (size_t i = 0; i < plan->price_count; i++) {
    const tly_feature_price_t *price = &plan->prices[i];
    json_t *tiers = json_array();
    for (size_t t = 0; t < price->tier_count; t++)
      json_array_append_new(tiers,
                            json_pack("{s:o,s:I}", "up_to",
                                      integer_or_null(price->tiers[t].up_to),
                                      "unit_micros",
                                      (json_int_t)price->tiers[t].unit_micros));
    json_object_set_new(
        prices, price->feature,
        json_pack("{s:s,s:o}", "model",
                  price->model == TLY_PRICE_VOLUME ? "volume" : "graduated",
                  "tiers", tiers));
  }
  return json_pack("{s:s,s:o,s:I,s:o,s:o,s:o}", "name", plan->name, "credits",
                   integer_or_null(plan->credits), "base_price_micros",
                   (json_int_t)plan->base_price_micros, "thresholds",
                   thresholds, "limits", limits, "prices", prices);
}

json_t *tly_req_plans_json(const tly_config_t *config) {
  json_t *plans = json_array(), *models = json_object();
  for (size_t i = 0; i < config->plan_count; i++)
    json_array_append_new(plans, plan_json(config, &config->plans[i]));
  for (size_t i = 0; i < config->model_count; i++)
    json_object_set_new(
        models, config->models[i].model,
        json_pack("{s:I,s:I}", "input_per_mtok",
                  (json_int_t)config->models[i].input_per_mtok,
                  "output_per_mtok",
                  (json_int_t)config->models[i].output_per_mtok));
  return json_pack(
      "{s:o,s:{s:s,s:s,s:s},s:I,s:{s:I,s:s,s:o}}", "plans", plans,
      "default_plans", "user", config->default_plan[TLY_SUBJECT_USER],
      "api_key", config->default_plan[TLY_SUBJECT_API_KEY], "anonymous",
      config->default_plan[TLY_SUBJECT_ANONYMOUS], "micros_per_credit",
      (json_int_t)config->micros_per_credit, "pricing", "margin_bps",
      (json_int_t)config->margin_bps, "unknown_model",
      config->unknown_model == TLY_UNKNOWN_MODEL_FALLBACK ? "fallback"
                                                          : "dead_letter",
      "models", models);
}

/* ---- estimate ---------------------------------------------------------- */

/* The features entry of name, created with quantity 0 and cost 0. */
static json_t *feature_entry(json_t *features, const char *name) {
  json_t *entry = json_object_get(features, name);
  if (!entry) {
    entry = json_pack("{s:I,s:I}", "quantity", (json_int_t)0, "cost_micros",
                      (json_int_t)0);
    json_object_set_new(features, name, entry);
  }
  return entry;
}

/* entry[key] += amount, refusing an overflow. */
static int entry_add(json_t *entry, const char *key, int64_t amount) {
  int64_t sum;
  if (__builtin_add_overflow(
          (int64_t)json_integer_value(json_object_get(entry, key)), amount,
          &sum))
    return -1;
  json_object_set_new(entry, key, json_integer(sum));
  return 0;
}

static int estimate_usage(const json_t *usage, json_t *features,
                          const tly_config_t *config, tly_req_error_t *err) {
  char path[128];
  const char *feature;
  json_t *value;
  if (!json_is_object(usage))
    return tly_req_fail(err, 400, "bad_request", "usage",
                        "field 'usage': must be an object {feature: quantity}");
  json_object_foreach((json_t *)usage, feature, value) {
    snprintf(path, sizeof(path), "usage.%.64s", feature);
    if (strlen(feature) >= TLY_CONFIG_NAME_MAX ||
        !tly_req_feature_known(config, feature))
      return tly_req_fail(err, 400, "unknown_feature", path,
                          "field '%s': no plan has a limit or a price for "
                          "this feature",
                          path);
    if (!json_is_integer(value) || json_integer_value(value) < 0)
      return tly_req_fail(err, 400, "bad_request", path,
                          "field '%s': must be an integer >= 0", path);
    json_t *entry = feature_entry(features, feature);
    if (entry_add(entry, "quantity", (int64_t)json_integer_value(value)))
      return tly_req_fail(err, 400, "bad_request", path,
                          "field '%s': too large", path);
  }
  return 0;
}

/* Each AI item is priced by its model, the sub-micro remainder carried from
 * item to item as the fold carries it from event to event of a row. */
static int estimate_ai(const json_t *ai, json_t *features, json_t *items_out,
                       const tly_config_t *config, tly_req_error_t *err) {
  static const char *const allowed[] = {"model", "input_tokens",
                                        "output_tokens", "feature", NULL};
  char path[128];
  int64_t remainder = 0;
  if (!json_is_array(ai) || json_array_size(ai) > AI_ITEMS_MAX)
    return tly_req_fail(err, 400, "bad_request", "ai",
                        "field 'ai': must be an array of at most %d items",
                        AI_ITEMS_MAX);
  for (size_t i = 0; i < json_array_size(ai); i++) {
    const json_t *item = json_array_get(ai, i);
    tly_req_error_t inner;
    int64_t input = 0, output = 0, cost = 0;
    snprintf(path, sizeof(path), "ai[%zu]", i);
    if (!json_is_object(item))
      return tly_req_fail(err, 400, "bad_request", path,
                          "field '%s': must be an object", path);
    if (check_keys(item, allowed, &inner))
      return tly_req_fail(err, 400, "bad_request", path,
                          "field '%s.%s': unknown field", path, inner.field);
    const char *model_name = get_text(item, "model", &inner);
    if (!model_name)
      return tly_req_fail(err, 400, "bad_request", path, "field '%s.model': %s",
                          path, "required non-empty string");
    const tly_model_price_t *model = tly_config_model(config, model_name);
    if (!model && config->unknown_model == TLY_UNKNOWN_MODEL_FALLBACK)
      model = &config->fallback;
    if (!model)
      return tly_req_fail(err, 400, "unknown_model", path,
                          "field '%s.model': no price for model '%.64s'", path,
                          model_name);
    if (get_count(item, "input_tokens", "input_tokens", &input, &inner) < 0 ||
        get_count(item, "output_tokens", "output_tokens", &output, &inner) < 0)
      return tly_req_fail(err, 400, "bad_request", path, "field '%s.%s': %s",
                          path, inner.field, "must be an integer >= 0");
    const char *feature = "ai_tokens";
    if (json_object_get(item, "feature")) {
      feature = get_text(item, "feature", &inner);
      if (!feature || strlen(feature) >= TLY_CONFIG_NAME_MAX ||
          !tly_req_feature_known(config, feature))
        return tly_req_fail(err, 400, "unknown_feature", path,
                            "field '%s.feature': not a feature of any plan",
                            path);
    }
    int64_t tokens;
    json_t *entry = feature_entry(features, feature);
    if (tly_billing_token_cost(config, model, input, output, &cost,
                               &remainder) ||
        __builtin_add_overflow(input, output, &tokens) ||
        entry_add(entry, "quantity", tokens) ||
        entry_add(entry, "cost_micros", cost))
      return tly_req_fail(err, 400, "bad_request", path,
                          "field '%s': token counts too large", path);
    json_array_append_new(
        items_out,
        json_pack("{s:s,s:s,s:I,s:I,s:I}", "model", model_name, "feature",
                  feature, "input_tokens", (json_int_t)input, "output_tokens",
                  (json_int_t)output, "cost_micros", (json_int_t)cost));
  }
  return 0;
}

json_t *tly_req_estimate(const tly_config_t *config, const char *body,
                         size_t len, tly_req_error_t *err) {
  static const char *const allowed[] = {"plan", "usage", "ai", NULL};
  json_t *root = load_body(body, len, err), *features = json_object(),
         *ai_items = json_array(), *answer = NULL;
  const tly_plan_t *plan;
  int64_t usage_cost = 0, total, credits_used;
  int within_limits = 1;

  if (!root)
    goto done;
  if (!json_is_object(root)) {
    tly_req_fail(err, 400, "bad_request", "",
                 "request body: must be an object");
    goto done;
  }
  if (check_keys(root, allowed, err) ||
      !(plan = get_plan(config, root, "plan", err)))
    goto done;
  if (json_object_get(root, "usage") &&
      estimate_usage(json_object_get(root, "usage"), features, config, err))
    goto done;
  if (json_object_get(root, "ai") &&
      estimate_ai(json_object_get(root, "ai"), features, ai_items, config, err))
    goto done;

  const char *feature;
  json_t *entry;
  json_object_foreach(features, feature, entry) {
    int64_t quantity =
        (int64_t)json_integer_value(json_object_get(entry, "quantity"));
    const tly_feature_price_t *price = tly_plan_price(plan, feature);
    int64_t tier_cost = 0, feature_cost;
    /* Token features are priced by model above; the rest by the tiers. */
    json_t *from_usage =
        json_object_get(json_object_get(root, "usage"), feature);
    if (price && from_usage)
      tier_cost = tly_billing_tier_cost(price, json_integer_value(from_usage));
    if (tier_cost < 0 || entry_add(entry, "cost_micros", tier_cost)) {
      tly_req_fail(err, 400, "bad_request", "usage",
                   "field 'usage.%s': cost overflows", feature);
      goto done;
    }
    feature_cost =
        (int64_t)json_integer_value(json_object_get(entry, "cost_micros"));
    if (__builtin_add_overflow(usage_cost, feature_cost, &usage_cost)) {
      tly_req_fail(err, 400, "bad_request", "usage", "total cost overflows");
      goto done;
    }
    tly_req_limit_fields(entry, plan, feature, quantity);
    const tly_feature_limit_t *limit = tly_plan_limit(plan, feature);
    if (json_is_true(json_object_get(entry, "exceeded")) && limit &&
        limit->mode == TLY_LIMIT_HARD)
      within_limits = 0;
  }
  if (__builtin_add_overflow(plan->base_price_micros, usage_cost, &total)) {
    tly_req_fail(err, 400, "bad_request", "usage", "total cost overflows");
    goto done;
  }
  credits_used = usage_cost / config->micros_per_credit;
  int credits_exceeded =
      plan->credits != TLY_UNLIMITED && credits_used > plan->credits;
  if (credits_exceeded)
    within_limits = 0;
  answer = json_pack(
      "{s:s,s:I,s:I,s:I,s:{s:I,s:o,s:b},s:O,s:O,s:b}", "plan", plan->name,
      "base_price_micros", (json_int_t)plan->base_price_micros,
      "usage_cost_micros", (json_int_t)usage_cost, "total_micros",
      (json_int_t)total, "credits", "used", (json_int_t)credits_used, "limit",
      integer_or_null(plan->credits), "exceeded", credits_exceeded, "features",
      features, "ai", ai_items, "within_limits", within_limits);
  if (!answer)
    tly_req_fail(err, 500, "internal", "", "out of memory");
done:
  json_decref(root);
  json_decref(features);
  json_decref(ai_items);
  return answer;
}

/* ---- prorate ----------------------------------------------------------- */

int tly_req_parse_date(const char *text, int64_t *out_ms) {
  static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  int year = 0, month = 0, day = 0;
  if (!text || strlen(text) != 10 || text[4] != '-' || text[7] != '-')
    return -1;
  for (int i = 0; i < 10; i++) {
    if (i == 4 || i == 7)
      continue;
    if (!isdigit((unsigned char)text[i]))
      return -1;
    int digit = text[i] - '0';
    if (i < 4)
      year = year * 10 + digit;
    else if (i < 7)
      month = month * 10 + digit;
    else
      day = day * 10 + digit;
  }
  int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
  if (year < 1970 || month < 1 || month > 12 || day < 1 ||
      day > days[month - 1] + (month == 2 && leap))
    return -1;
  *out_ms = tly_days_from_civil(year, month, day) * DAY_MS;
  return 0;
}

int64_t tly_req_prorate_amount(int64_t base_micros, int64_t remaining_ms,
                               int64_t total_ms) {
  if (base_micros < 0 || remaining_ms < 0 || total_ms <= 0)
    return -1;
  /* Half up: floor((2 * base * remaining + total) / (2 * total)). */
  unsigned __int128 numerator =
      (unsigned __int128)base_micros * (unsigned __int128)remaining_ms * 2 +
      (unsigned __int128)total_ms;
  unsigned __int128 amount = numerator / ((unsigned __int128)total_ms * 2);
  return amount > (unsigned __int128)INT64_MAX ? -1 : (int64_t)amount;
}

static int get_date(const json_t *object, const char *key, int64_t *out,
                    tly_req_error_t *err) {
  const json_t *value = json_object_get(object, key);
  if (!value)
    return 0;
  if (!json_is_string(value) ||
      tly_req_parse_date(json_string_value(value), out))
    return tly_req_fail(err, 400, "bad_date", key,
                        "field '%s': must be a date \"YYYY-MM-DD\" (UTC)", key);
  return 1;
}

json_t *tly_req_prorate(const tly_config_t *config, const char *body,
                        size_t len, tly_req_error_t *err) {
  static const char *const allowed[] = {
      "from_plan", "to_plan", "change_date", "cycle_start", "cycle_end", NULL};
  json_t *root = load_body(body, len, err), *answer = NULL;
  const tly_plan_t *from, *to;
  int64_t change = 0, start = 0, end = 0;
  int have_start, have_end, have_change;

  if (!root)
    return NULL;
  if (!json_is_object(root)) {
    tly_req_fail(err, 400, "bad_request", "",
                 "request body: must be an object");
    goto done;
  }
  if (check_keys(root, allowed, err) ||
      !(from = get_plan(config, root, "from_plan", err)) ||
      !(to = get_plan(config, root, "to_plan", err)))
    goto done;
  if ((have_change = get_date(root, "change_date", &change, err)) < 0 ||
      (have_start = get_date(root, "cycle_start", &start, err)) < 0 ||
      (have_end = get_date(root, "cycle_end", &end, err)) < 0)
    goto done;
  if (!have_change) {
    tly_req_fail(err, 400, "bad_request", "change_date",
                 "field 'change_date': required (\"YYYY-MM-DD\")");
    goto done;
  }
  if (have_end && !have_start) {
    tly_req_fail(err, 400, "bad_request", "cycle_start",
                 "field 'cycle_start': required with cycle_end");
    goto done;
  }
  if (!have_start)
    tly_billing_month_cycle(config->cycle_anchor_ms, change, &start, &end);
  else if (!have_end)
    tly_billing_month_cycle(start, start, &start, &end);
  if (end <= start) {
    tly_req_fail(err, 400, "bad_date", "cycle_end",
                 "field 'cycle_end': must be after cycle_start");
    goto done;
  }
  if (change < start || change >= end) {
    tly_req_fail(err, 400, "bad_date", "change_date",
                 "field 'change_date': outside the cycle [%lld, %lld) ms",
                 (long long)start, (long long)end);
    goto done;
  }
  int64_t total = end - start, remaining = end - change;
  int64_t credit =
      tly_req_prorate_amount(from->base_price_micros, remaining, total);
  int64_t charge =
      tly_req_prorate_amount(to->base_price_micros, remaining, total);
  answer = json_pack(
      "{s:s,s:s,s:{s:I,s:I},s:I,s:I,s:I,s:I,s:I,s:I,s:s}", "from_plan",
      from->name, "to_plan", to->name, "cycle", "start_ms", (json_int_t)start,
      "end_ms", (json_int_t)end, "change_ms", (json_int_t)change, "days_total",
      (json_int_t)(total / DAY_MS), "days_remaining",
      (json_int_t)(remaining / DAY_MS), "unused_credit_micros",
      (json_int_t)credit, "new_charge_micros", (json_int_t)charge, "net_micros",
      (json_int_t)(charge - credit), "rounding",
      "each amount = base_price_micros x (cycle_end - change) / (cycle_end - "
      "cycle_start), in milliseconds, rounded half up to a whole micro-unit; "
      "net = new_charge - unused_credit");
  if (!answer)
    tly_req_fail(err, 500, "internal", "", "out of memory");
done:
  json_decref(root);
  return answer;
}

/* ---- events ------------------------------------------------------------ */

void tly_req_events_clear(tly_req_events_t *events) {
  for (size_t i = 0; events->items && i < events->count; i++)
    tly_event_clear(&events->items[i].event);
  free(events->items);
  events->items = NULL;
  events->count = 0;
}

/* occurred_at at most events.max_future_skew_ms ahead of now: the
 * processor would send a later one to the dead-letter topic (its clock is
 * the record's Kafka timestamp, about now). 0, or -1 with errstr. */
static int event_time_check(const tly_config_t *config,
                            const tly_event_t *event, int64_t now_ms,
                            char *errstr, size_t errstr_size) {
  return tly_event_time_check(event, now_ms, config->events.max_future_skew_ms,
                              "now", errstr, errstr_size);
}

/* One event: the JSON reader's rules, its time against now, then that a
 * plan it names exists (the fold would send it to the dead-letter topic
 * otherwise). */
static void parse_one_event(const tly_config_t *config, const json_t *object,
                            int64_t now_ms, tly_req_event_t *item) {
  char errstr[512];
  const char *plan = NULL;
  if (tly_event_from_json(object, now_ms, &item->event, errstr,
                          sizeof(errstr)) ||
      event_time_check(config, &item->event, now_ms, errstr, sizeof(errstr))) {
    tly_req_fail(&item->error, 400, "invalid_event", "", "%s", errstr);
    field_from_message(errstr, item->error.field, sizeof(item->error.field));
    tly_event_clear(&item->event);
    return;
  }
  if (item->event.body_kind == TLY_BODY_PLAN_ASSIGNED)
    plan = item->event.body.plan_assigned.plan;
  else if (item->event.body_kind == TLY_BODY_SUBSCRIPTION_CHANGED)
    plan = item->event.body.subscription_changed.plan;
  if (plan && !tly_config_plan(config, plan)) {
    tly_req_fail(&item->error, 400, "unknown_plan", "plan",
                 "field 'plan': no plan named '%.64s'", plan);
    tly_event_clear(&item->event);
    return;
  }
  /* As the fold prices it (tly_billing.c): a model without a price is
   * dead-lettered there unless the config prices it at the fallback. */
  if (TLY_BODY_IS_USAGE(item->event.body_kind) &&
      item->event.body.usage.has_ai &&
      !tly_config_model(config, item->event.body.usage.ai.model) &&
      config->unknown_model != TLY_UNKNOWN_MODEL_FALLBACK) {
    tly_req_fail(&item->error, 400, "unknown_model", "ai.model",
                 "field 'ai.model': no price for model '%.64s' in the "
                 "configuration (pricing.models)",
                 item->event.body.usage.ai.model);
    tly_event_clear(&item->event);
    return;
  }
  if (tly_req_check_subject(item->event.subject_kind, item->event.subject_id,
                            "subject", &item->error)) {
    snprintf(item->error.code, sizeof(item->error.code), "invalid_event");
    tly_event_clear(&item->event);
    return;
  }
  item->ok = 1;
}

int tly_req_parse_events(const tly_config_t *config, const char *body,
                         size_t len, int64_t now_ms, tly_req_events_t *out,
                         tly_req_error_t *err) {
  json_t *root = load_body(body, len, err);
  memset(out, 0, sizeof(*out));
  if (!root)
    return -1;
  size_t count = json_is_array(root) ? json_array_size(root) : 1;
  int rc = -1;
  if (!json_is_array(root) && !json_is_object(root)) {
    tly_req_fail(err, 400, "bad_request", "",
                 "request body: must be an event object or an array of them");
    goto done;
  }
  if (count == 0) {
    tly_req_fail(err, 400, "bad_request", "", "request body: no events");
    goto done;
  }
  if (count > TLY_REQ_EVENTS_MAX) {
    tly_req_fail(err, 413, "too_many_events", "",
                 "request body: at most %d events per request",
                 TLY_REQ_EVENTS_MAX);
    goto done;
  }
  out->items = calloc(count, sizeof(*out->items));
  if (!out->items) {
    tly_req_fail(err, 500, "internal", "", "out of memory");
    goto done;
  }
  out->count = count;
  for (size_t i = 0; i < count; i++)
    parse_one_event(config,
                    json_is_array(root) ? json_array_get(root, i) : root,
                    now_ms, &out->items[i]);
  rc = 0;
done:
  json_decref(root);
  return rc;
}

int tly_req_parse_plan(const tly_config_t *config,
                       const tly_req_subject_t *subject, const char *body,
                       size_t len, int64_t now_ms, const char *default_event_id,
                       tly_event_t *out, tly_req_error_t *err) {
  static const char *const allowed[] = {"plan", "event_id", "occurred_at",
                                        NULL};
  char errstr[512];
  json_t *root = load_body(body, len, err), *event = NULL;
  int rc = -1;
  if (!root)
    return -1;
  if (!json_is_object(root)) {
    tly_req_fail(err, 400, "bad_request", "",
                 "request body: must be an object");
    goto done;
  }
  if (check_keys(root, allowed, err) || !get_plan(config, root, "plan", err))
    goto done;
  /* Built as the event JSON so the one reader validates it. */
  event = json_pack("{s:s,s:s,s:O}", "type", "plan_assigned", "subject",
                    subject->key, "plan", json_object_get(root, "plan"));
  json_t *event_id = json_object_get(root, "event_id");
  if (!event || json_object_set_new(event, "event_id",
                                    event_id ? json_incref(event_id)
                                             : json_string(default_event_id))) {
    tly_req_fail(err, 500, "internal", "", "out of memory");
    goto done;
  }
  if (json_object_get(root, "occurred_at"))
    json_object_set(event, "occurred_at", json_object_get(root, "occurred_at"));
  if (tly_event_from_json(event, now_ms, out, errstr, sizeof(errstr)) ||
      event_time_check(config, out, now_ms, errstr, sizeof(errstr))) {
    tly_req_fail(err, 400, "bad_request", "", "%s", errstr);
    field_from_message(errstr, err->field, sizeof(err->field));
    tly_event_clear(out);
    goto done;
  }
  rc = 0;
done:
  json_decref(event);
  json_decref(root);
  return rc;
}
