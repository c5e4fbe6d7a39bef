/*
 * tly_corrections.c - usage_corrected events and the contributions they
 * replace (see tly_corrections.h for the rules). Pure: no I/O, no clock.
 */
#include "tly_corrections.h"

#include "tly_bytes.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* 1: no groups section (written before groups were kept; still read).
 * 2: the groups after the feature. */
#define CONTRIBUTION_VERSION_PLAIN 1
#define CONTRIBUTION_VERSION 2

/* ---- encoding --------------------------------------------------------- */

static size_t put_varint(unsigned char *out, size_t at, uint64_t value) {
  while (value >= 0x80) {
    out[at++] = (unsigned char)(value | 0x80);
    value >>= 7;
  }
  out[at++] = (unsigned char)value;
  return at;
}

static size_t put_signed(unsigned char *out, size_t at, int64_t value) {
  return put_varint(out, at, ((uint64_t)value << 1) ^ (uint64_t)(value >> 63));
}

size_t tly_contribution_encode(const tly_contribution_t *c,
                               unsigned char *out) {
  size_t at = 8, feature_len = strnlen(c->feature, TLY_CONFIG_NAME_MAX - 1);
  tly_put_be64(out, (uint64_t)c->occurred_at_ms);
  out[at++] = CONTRIBUTION_VERSION;
  /* wrapping: any pair of times round-trips */
  at = put_signed(
      out, at,
      (int64_t)((uint64_t)c->occurred_at_ms - (uint64_t)c->cycle_start_ms));
  at = put_signed(out, at, c->quantity);
  at = put_signed(out, at, c->input_tokens);
  at = put_signed(out, at, c->output_tokens);
  at = put_signed(out, at, c->numerator);
  out[at++] = c->counted ? 1 : 0;
  out[at++] = (unsigned char)feature_len;
  memcpy(out + at, c->feature, feature_len);
  at += feature_len;
  /* The groups, in order, while they fit the bound (deterministic: the
   * same event keeps the same names on replay). */
  size_t count_at = at++, kept = 0;
  for (size_t i = 0; i < c->group_count && i < TLY_METER_GROUP_MAX; i++) {
    size_t len = strnlen(c->groups[i], TLY_BUCKET_NAME_MAX - 1);
    if (!len || feature_len + 1 + len >= TLY_BUCKET_NAME_MAX ||
        at + 1 + len > TLY_CONTRIBUTION_MAX)
      continue; /* its correction's difference shows in "none" */
    out[at++] = (unsigned char)len;
    memcpy(out + at, c->groups[i], len);
    at += len;
    kept++;
  }
  out[count_at] = (unsigned char)kept;
  return at;
}

typedef struct {
  const unsigned char *pos, *end;
  int bad;
} reader_t;

static int64_t take_signed(reader_t *r) {
  uint64_t value = 0;
  for (int shift = 0; shift < 70; shift += 7) {
    if (r->pos >= r->end) {
      r->bad = 1;
      return 0;
    }
    unsigned char byte = *r->pos++;
    value |= (uint64_t)(byte & 0x7F) << shift;
    if (!(byte & 0x80))
      return (int64_t)(value >> 1) ^ -(int64_t)(value & 1);
  }
  r->bad = 1;
  return 0;
}

int tly_contribution_decode(const void *data, size_t len,
                            tly_contribution_t *c) {
  const unsigned char *bytes = data;
  memset(c, 0, sizeof(*c));
  if (len < 10 || len > TLY_CONTRIBUTION_MAX ||
      (bytes[8] != CONTRIBUTION_VERSION &&
       bytes[8] != CONTRIBUTION_VERSION_PLAIN))
    return -1;
  int version = bytes[8];
  reader_t r = {bytes + 9, bytes + len, 0};
  c->occurred_at_ms = (int64_t)tly_get_be64(bytes);
  int64_t back = take_signed(&r);
  c->cycle_start_ms = (int64_t)((uint64_t)c->occurred_at_ms - (uint64_t)back);
  c->quantity = take_signed(&r);
  c->input_tokens = take_signed(&r);
  c->output_tokens = take_signed(&r);
  c->numerator = take_signed(&r);
  if (r.bad || r.end - r.pos < 2 || r.pos[0] > 1)
    return -1;
  c->counted = r.pos[0];
  size_t feature_len = r.pos[1];
  r.pos += 2;
  if (feature_len >= TLY_CONFIG_NAME_MAX ||
      (size_t)(r.end - r.pos) < feature_len || c->quantity < 0 ||
      c->input_tokens < 0 || c->output_tokens < 0 || c->numerator < 0)
    return -1;
  memcpy(c->feature, r.pos, feature_len);
  c->feature[feature_len] = '\0';
  r.pos += feature_len;
  if (strlen(c->feature) != feature_len)
    return -1;
  if (version == CONTRIBUTION_VERSION_PLAIN)
    return r.pos == r.end ? 0 : -1; /* no groups: moves the feature only */
  if (r.pos == r.end || *r.pos > TLY_METER_GROUP_MAX)
    return -1;
  size_t count = *r.pos++;
  for (size_t i = 0; i < count; i++) {
    if (r.pos == r.end)
      return -1;
    size_t name_len = *r.pos++;
    /* A name is "label 0x1f value": never empty, no NUL, and "feature 0x1f
     * name" is a bucket's name. */
    if (!name_len || feature_len + 1 + name_len >= TLY_BUCKET_NAME_MAX ||
        (size_t)(r.end - r.pos) < name_len || memchr(r.pos, '\0', name_len) ||
        !memchr(r.pos, TLY_DIM_SEP, name_len))
      return -1;
    memcpy(c->groups[i], r.pos, name_len);
    c->groups[i][name_len] = '\0';
    r.pos += name_len;
  }
  c->group_count = count;
  return r.pos == r.end ? 0 : -1;
}

/* ---- the fold's part -------------------------------------------------- */

int tly_correction_supported(tly_aggregation_t aggregation) {
  return aggregation == TLY_AGG_SUM || aggregation == TLY_AGG_COUNT;
}

int tly_correction_record(tly_billing_view_t *view, const tly_event_t *event,
                          int64_t cycle_start_ms, tly_aggregation_t aggregation,
                          int64_t numerator, const tly_dims_step_t *groups) {
  const tly_usage_recorded_t *usage = &event->body.usage;
  if (!view->contribution || !tly_correction_supported(aggregation))
    return 0;
  /* Set field by field, not zeroed whole: the encoding reads the groups
   * below group_count only (the names are most of the struct). */
  tly_contribution_t c;
  c.occurred_at_ms = event->occurred_at_ms;
  c.cycle_start_ms = cycle_start_ms;
  c.quantity = usage->quantity;
  c.input_tokens = usage->has_ai ? usage->ai.input_tokens : 0;
  c.output_tokens = usage->has_ai ? usage->ai.output_tokens : 0;
  c.numerator = numerator;
  c.counted = 1;
  /* Copied, not snprintf'd: this runs for every event folded. */
  size_t feature_len = strnlen(usage->feature, sizeof(c.feature) - 1);
  memcpy(c.feature, usage->feature, feature_len);
  c.feature[feature_len] = '\0';
  /* The groups as the hour resolved them (the encoding keeps those that
   * fit the bound). */
  c.group_count = 0;
  for (size_t i = 0; groups && i < groups->count; i++) {
    const char *name = groups->names[i] + groups->label_at;
    size_t len = strnlen(name, TLY_BUCKET_NAME_MAX - 1);
    memcpy(c.groups[c.group_count], name, len);
    c.groups[c.group_count++][len] = '\0';
  }
  return view->contribution(view, event->subject_kind, event->subject_id,
                            event->event_id, &c, 1) < 0
             ? -1
             : 0;
}

__attribute__((format(printf, 3, 4))) static tly_fold_result_t
reject(char *errstr, size_t errstr_size, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(errstr, errstr_size, fmt, ap);
  va_end(ap);
  return TLY_FOLD_REJECTED;
}

/* The correction's own numerator (its tokens at its model's price), as
 * fold_usage computes an event's. 0, or -1 on overflow. */
static int own_numerator(const tly_config_t *config,
                         const tly_model_price_t *model, int64_t in,
                         int64_t out, int64_t *numerator) {
  int64_t a, b, base;
  return __builtin_mul_overflow(in, model->input_per_mtok, &a) ||
                 __builtin_mul_overflow(out, model->output_per_mtok, &b) ||
                 __builtin_add_overflow(a, b, &base) ||
                 __builtin_mul_overflow(base, 10000 + config->margin_bps,
                                        numerator)
             ? -1
             : 0;
}

static int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

tly_fold_result_t
tly_correction_fold(const tly_billing_t *billing, tly_billing_view_t *view,
                    tly_account_t *account, const tly_event_t *event,
                    tly_alert_list_t *out, char *errstr, size_t errstr_size) {
  const tly_usage_recorded_t *usage = &event->body.usage;
  const tly_config_t *config = billing->config;
  const tly_plan_t *plan = tly_config_plan(config, account->plan);
  char subject[TLY_SUBJECT_KEY_SIZE];
  tly_subject_key(event->subject_kind, event->subject_id, subject,
                  sizeof(subject));
  if (!plan)
    return reject(errstr, errstr_size, "plan '%s' is not in the configuration",
                  account->plan);
  tly_aggregation_t aggregation = tly_meter_aggregation(config, usage->feature);
  if (!tly_correction_supported(aggregation))
    return reject(errstr, errstr_size,
                  "feature '%s' aggregates with %s: only sum and count "
                  "events can be corrected",
                  usage->feature, tly_aggregation_name(aggregation));
  if (!view->contribution)
    return reject(errstr, errstr_size,
                  "this state keeps no contributions: nothing can be "
                  "corrected");
  tly_contribution_t was;
  int found = view->contribution(view, event->subject_kind, event->subject_id,
                                 usage->corrects, &was, 0);
  if (found < 0)
    return TLY_FOLD_FAILED;
  if (!found)
    return reject(errstr, errstr_size,
                  "corrects '%s': no usage event of subject %s with that id "
                  "within the dedupe window (never folded, rejected, of "
                  "another subject, or expired)",
                  usage->corrects, subject);
  /* Expired whether or not the store has dropped it yet: the answer must
   * not depend on when compaction ran (as for dedupe). */
  if (*view->watermark_ms > INT64_MIN + billing->dedupe_window_ms &&
      was.occurred_at_ms < *view->watermark_ms - billing->dedupe_window_ms)
    return reject(errstr, errstr_size,
                  "corrects '%s': the event (occurred_at %lld) is older than "
                  "the dedupe window (%lld ms before the partition's latest "
                  "event time %lld)",
                  usage->corrects, (long long)was.occurred_at_ms,
                  (long long)billing->dedupe_window_ms,
                  (long long)*view->watermark_ms);
  if (strcmp(was.feature, usage->feature) != 0)
    return reject(errstr, errstr_size,
                  "corrects '%s': the event is of feature '%s', not '%s'",
                  usage->corrects, was.feature, usage->feature);
  tly_cycle_t *cycle = NULL;
  if (account->cycle.start_ms == was.cycle_start_ms)
    cycle = &account->cycle;
  for (size_t i = 0; !cycle && i < account->history_count; i++)
    if (account->history[i].start_ms == was.cycle_start_ms)
      cycle = &account->history[i];
  if (!cycle)
    return reject(errstr, errstr_size,
                  "corrects '%s': its billing cycle (starting at %lld) is no "
                  "longer kept",
                  usage->corrects, (long long)was.cycle_start_ms);

  /* What the event contributes from now on. */
  int64_t in = usage->has_ai ? usage->ai.input_tokens : 0;
  int64_t out_tokens = usage->has_ai ? usage->ai.output_tokens : 0;
  tly_contribution_t now = was;
  now.quantity = usage->quantity;
  now.input_tokens = in;
  now.output_tokens = out_tokens;
  now.numerator = 0;
  now.counted = usage->quantity != 0 || in != 0 || out_tokens != 0;
  if (usage->has_ai) {
    const tly_model_price_t *model = tly_config_model(config, usage->ai.model);
    if (!model && config->unknown_model == TLY_UNKNOWN_MODEL_FALLBACK)
      model = &config->fallback;
    if (!model)
      return reject(errstr, errstr_size,
                    "model '%s' has no price in the configuration",
                    usage->ai.model);
    if (own_numerator(config, model, in, out_tokens, &now.numerator))
      goto overflow;
  }
  int64_t events = now.counted - was.counted;
  int64_t value =
      aggregation == TLY_AGG_COUNT ? events : now.quantity - was.quantity;

  tly_billing_row_t *row =
      view->row(view, event->subject_kind, event->subject_id, cycle->start_ms,
                usage->feature);
  if (!row)
    return TLY_FOLD_FAILED;
  tly_billing_row_t next = *row;
  int64_t remainder = 0;
  if (__builtin_add_overflow(next.quantity, value, &next.quantity) ||
      __builtin_add_overflow(next.input_tokens, in - was.input_tokens,
                             &next.input_tokens) ||
      __builtin_add_overflow(next.output_tokens, out_tokens - was.output_tokens,
                             &next.output_tokens) ||
      __builtin_add_overflow(next.event_count, events, &next.event_count) ||
      __builtin_add_overflow(next.cost_remainder, now.numerator - was.numerator,
                             &remainder) ||
      __builtin_add_overflow(next.cost_micros,
                             floor_div(remainder, TLY_TOKEN_COST_DENOMINATOR),
                             &next.cost_micros))
    goto overflow;
  next.cost_remainder =
      remainder - floor_div(remainder, TLY_TOKEN_COST_DENOMINATOR) *
                      TLY_TOKEN_COST_DENOMINATOR;
  const tly_feature_price_t *tiers = tly_plan_price(plan, usage->feature);
  if (!usage->has_ai && tiers) { /* as fold_usage prices a plain event */
    next.cost_micros = tly_billing_tier_cost(tiers, next.quantity);
    if (next.cost_micros < 0)
      goto overflow;
  }
  if (next.quantity < 0 || next.input_tokens < 0 || next.output_tokens < 0 ||
      next.event_count < 0 || next.cost_micros < 0)
    return reject(errstr, errstr_size,
                  "corrects '%s': the row of feature '%s' no longer holds "
                  "the event's contribution (the meter's aggregation changed "
                  "since?)",
                  usage->corrects, usage->feature);
  int64_t cost = next.cost_micros - row->cost_micros, cycle_cost = 0,
          cycle_events = 0;
  if (__builtin_add_overflow(cycle->cost_micros, cost, &cycle_cost) ||
      __builtin_add_overflow(cycle->events, events, &cycle_events))
    goto overflow;
  /* The original's hour moves by the difference. */
  tly_bucket_t *bucket =
      view->bucket(view, event->subject_kind, event->subject_id,
                   tly_billing_hour(was.occurred_at_ms), usage->feature);
  if (!bucket)
    return TLY_FOLD_FAILED;
  tly_bucket_t hour = *bucket;
  if (__builtin_add_overflow(hour.quantity, value, &hour.quantity) ||
      __builtin_add_overflow(hour.input_tokens, in - was.input_tokens,
                             &hour.input_tokens) ||
      __builtin_add_overflow(hour.output_tokens, out_tokens - was.output_tokens,
                             &hour.output_tokens) ||
      __builtin_add_overflow(hour.event_count, events, &hour.event_count) ||
      __builtin_add_overflow(hour.cost_micros, cost, &hour.cost_micros))
    goto overflow;
  /* ... and so do the groups its event went to in that hour (the names
   * it kept: "other" when it overflowed there, never a named group it did
   * not reach). Without the view's groups (group_bucket NULL) nothing is
   * grouped, as for usage. */
  tly_dims_step_t groups = {.count = 0};
  tly_bucket_t delta = {value, in - was.input_tokens,
                        out_tokens - was.output_tokens, events, cost};
  for (size_t i = 0; view->group_bucket && i < was.group_count; i++) {
    char *name = groups.names[i];
    int n = snprintf(name, TLY_BUCKET_NAME_MAX, "%s%c%s", usage->feature,
                     TLY_DIM_SEP, was.groups[i]);
    if (n < 0 || n >= TLY_BUCKET_NAME_MAX)
      return TLY_FOLD_FAILED; /* cannot be: decode checked the length */
    tly_bucket_t *group =
        view->bucket(view, event->subject_kind, event->subject_id,
                     tly_billing_hour(was.occurred_at_ms), name);
    if (!group)
      return TLY_FOLD_FAILED;
    groups.targets[i] = group;
    groups.next[i] = *group;
    if (tly_bucket_add(&groups.next[i], &delta))
      goto overflow;
    groups.count = i + 1;
  }
  if (view->contribution(view, event->subject_kind, event->subject_id,
                         usage->corrects, &now, 1) < 0)
    return TLY_FOLD_FAILED;
  cycle->cost_micros = cycle_cost;
  cycle->events = cycle_events;
  *row = next;
  *bucket = hour;
  tly_dims_apply(&groups);
  if (cycle != &account->cycle)
    return TLY_FOLD_APPLIED; /* a closed cycle: no more alerts for it */
  return tly_billing_check_limits(billing, account, plan, event->subject_kind,
                                  event->subject_id, usage->feature, row,
                                  event->occurred_at_ms, out)
             ? TLY_FOLD_FAILED
             : TLY_FOLD_APPLIED;

overflow:
  return reject(errstr, errstr_size,
                "totals of feature '%s' would overflow a 64-bit integer",
                usage->feature);
}
