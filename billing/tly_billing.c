/*
 * tly_billing.c - the billing fold (see tly_billing.h for the contract).
 *
 * Rules, in the order the fold applies them to one event:
 *   0. time: occurred_at and any period bound lie in 1970..9999
 *      (tly_event_time.h), or the event is rejected untouched;
 *   1. dedupe: an event older than the partition's watermark minus the
 *      window is rejected (it could no longer be told apart from a
 *      duplicate, and a guess would be nondeterministic); an event_id seen
 *      before is ignored;
 *   2. the account is created on first sight (the kind's default plan, the
 *      monthly cycle containing the event);
 *   3. rollover on event time: an event at or after the cycle's end closes
 *      it (billing_cycle_end with its totals) and starts the cycle that
 *      contains the event; InvoicePaid closes the cycle whatever the time;
 *   4. the body: usage is priced (tokens by model price plus margin, other
 *      features by the plan's tiers), added to its cycle's row (a closed
 *      cycle's row for a late event), and the plan's thresholds are checked
 *      for the feature and for the plan's credits; each threshold fires once
 *      per cycle and feature, with an id made of (subject, cycle, feature,
 *      threshold);
 *   5. holds (tly_holds.h), once the rest applied: expired ones go at the
 *      record's time, a reservation adds or releases its hold, and a usage
 *      event naming a hold settles it, in the same step that counted it.
 */
#include "tly_billing.h"
#include "tly_dims.h"

#include "tly_corrections.h"
#include "tly_event_time.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The event bounds (tly_event.h) keep every name within the state's
 * fixed-size fields and every alert id within TLY_ALERT_ID_SIZE. */
_Static_assert(TLY_EVENT_NAME_MAX < TLY_CONFIG_NAME_MAX,
               "features, plans and models fit the state's name fields");
_Static_assert(TLY_EVENT_STRIPE_ID_MAX <
                   sizeof(((tly_account_t *)0)->stripe_customer_id),
               "a Stripe customer id fits the account");
_Static_assert(sizeof("subscription_canceled:") + TLY_SUBJECT_KEY_SIZE +
                       TLY_EVENT_ID_MAX <=
                   TLY_ALERT_ID_SIZE,
               "the longest alert id fits");

/* ---- alerts ----------------------------------------------------------- */

void tly_alert_list_clear(tly_alert_list_t *list) {
  for (size_t i = 0; i < list->count; i++)
    tly_alert_clear(&list->items[i]);
  free(list->items);
  memset(list, 0, sizeof(*list));
}

static char *dup_string(const char *text) { return strdup(text ? text : ""); }

/* Appends an alert; the id is built from `id_fmt`. NULL on OOM. */
static tly_alert_t *add_alert(tly_alert_list_t *out, tly_alert_type_t type,
                              tly_subject_kind_t kind, const char *id,
                              const tly_account_t *account, int64_t at_ms,
                              const char *feature, const char *alert_id) {
  if (out->count == out->cap) {
    size_t cap = out->cap ? out->cap * 2 : 8;
    tly_alert_t *grown = realloc(out->items, cap * sizeof(*grown));
    if (!grown)
      return NULL;
    out->items = grown;
    out->cap = cap;
  }
  tly_alert_t *alert = &out->items[out->count];
  memset(alert, 0, sizeof(*alert));
  alert->alert_id = dup_string(alert_id);
  alert->type = type;
  alert->subject_kind = kind;
  alert->subject_id = dup_string(id);
  alert->occurred_at_ms = at_ms;
  alert->cycle_start_ms = account->cycle.start_ms;
  alert->cycle_end_ms = account->cycle.end_ms;
  alert->plan = dup_string(account->plan);
  alert->feature = dup_string(feature);
  alert->detail = dup_string("");
  alert->limit = -1;
  if (!alert->alert_id || !alert->subject_id || !alert->plan ||
      !alert->feature || !alert->detail) {
    tly_alert_clear(alert);
    return NULL;
  }
  out->count++;
  return alert;
}

/* Fires every threshold of the plan that `used` reached against `limit` and
 * that has not fired this cycle. 0, or -1 on OOM. */
static int check_thresholds(const tly_billing_t *billing,
                            const tly_account_t *account,
                            const tly_plan_t *plan, tly_subject_kind_t kind,
                            const char *id, const char *feature, int64_t used,
                            int64_t limit, int hard, uint32_t *fired,
                            int64_t at_ms, tly_alert_list_t *out) {
  size_t count = plan->threshold_count ? plan->threshold_count
                                       : billing->config->threshold_count;
  const int *percents =
      plan->threshold_count ? plan->thresholds : billing->config->thresholds;
  for (size_t i = 0; i < count; i++) {
    int64_t lhs, rhs;
    if (*fired & (1u << i))
      continue;
    /* used/limit >= percent/100, in integers; an overflowing product is
     * far past any threshold. */
    int reached = __builtin_mul_overflow(used, (int64_t)100, &lhs) ||
                  (!__builtin_mul_overflow(limit, (int64_t)percents[i], &rhs) &&
                   lhs >= rhs);
    if (!reached)
      continue;
    char alert_id[TLY_ALERT_ID_SIZE];
    char subject_key[TLY_SUBJECT_KEY_SIZE];
    tly_subject_key(kind, id, subject_key, sizeof(subject_key));
    tly_alert_type_t type =
        percents[i] >= 100 ? TLY_ALERT_LIMIT_EXCEEDED : TLY_ALERT_LIMIT_WARNING;
    snprintf(alert_id, sizeof(alert_id), "%s:%s:%lld:%s:%d",
             tly_alert_type_name(type), subject_key,
             (long long)account->cycle.start_ms, feature, percents[i]);
    tly_alert_t *alert =
        add_alert(out, type, kind, id, account, at_ms, feature, alert_id);
    if (!alert)
      return -1;
    alert->threshold_percent = percents[i];
    alert->used = used;
    alert->limit = limit;
    alert->hard = hard;
    alert->credits_used = tly_billing_credits_used(billing->config, account);
    alert->cost_micros = account->cycle.cost_micros;
    *fired |= 1u << i;
  }
  return 0;
}

/* ---- cycles ----------------------------------------------------------- */

static int close_cycle(const tly_billing_t *billing, tly_account_t *account,
                       tly_subject_kind_t kind, const char *id, int64_t at_ms,
                       int64_t next_start, int64_t next_end,
                       tly_alert_list_t *out) {
  char alert_id[TLY_ALERT_ID_SIZE], subject_key[TLY_SUBJECT_KEY_SIZE];
  const tly_plan_t *plan = tly_config_plan(billing->config, account->plan);
  tly_subject_key(kind, id, subject_key, sizeof(subject_key));
  snprintf(alert_id, sizeof(alert_id), "billing_cycle_end:%s:%lld", subject_key,
           (long long)account->cycle.start_ms);
  tly_alert_t *alert = add_alert(out, TLY_ALERT_BILLING_CYCLE_END, kind, id,
                                 account, at_ms, "", alert_id);
  if (!alert)
    return -1;
  alert->credits_used = tly_billing_credits_used(billing->config, account);
  alert->used = alert->credits_used;
  alert->limit = plan ? plan->credits : -1;
  alert->cost_micros = account->cycle.cost_micros;
  free(alert->detail);
  char detail[128];
  snprintf(detail, sizeof(detail), "events=%lld base_price_micros=%lld",
           (long long)account->cycle.events,
           (long long)(plan ? plan->base_price_micros : 0));
  alert->detail = strdup(detail);
  if (!alert->detail)
    return -1;

  memmove(&account->history[1], &account->history[0],
          sizeof(account->history[0]) * (TLY_BILLING_HISTORY - 1));
  account->history[0] = account->cycle;
  if (account->history_count < TLY_BILLING_HISTORY)
    account->history_count++;
  account->cycle = (tly_cycle_t){next_start, next_end, 0, 0};
  account->credit_thresholds_fired = 0;
  return 0;
}

/* The cycle that follows an ended one and contains t: monthly from the
 * config's anchor, or, once Stripe set the bounds, monthly from the end of
 * Stripe's last period. */
static void next_cycle(const tly_billing_t *billing,
                       const tly_account_t *account, int64_t t_ms,
                       int64_t *start, int64_t *end) {
  int64_t anchor = account->stripe_period ? account->cycle.end_ms
                                          : billing->config->cycle_anchor_ms;
  tly_billing_month_cycle(anchor, t_ms, start, end);
}

static int roll_over(const tly_billing_t *billing, tly_account_t *account,
                     tly_subject_kind_t kind, const char *id, int64_t t_ms,
                     tly_alert_list_t *out) {
  int64_t start, end;
  if (t_ms < account->cycle.end_ms)
    return 0;
  next_cycle(billing, account, t_ms, &start, &end);
  return close_cycle(billing, account, kind, id, t_ms, start, end, out);
}

/* Stripe (or an invoice) says the cycle is [start, end): adopt the end when
 * it is the current cycle, otherwise close the current one and start it. */
static int set_period(const tly_billing_t *billing, tly_account_t *account,
                      tly_subject_kind_t kind, const char *id, int64_t at_ms,
                      int64_t start, int64_t end, tly_alert_list_t *out) {
  account->stripe_period = 1;
  if (start <= account->cycle.start_ms) {
    account->cycle.end_ms = end;
    return 0;
  }
  return close_cycle(billing, account, kind, id, at_ms, start, end, out);
}

/* ---- usage ------------------------------------------------------------ */

static tly_fold_result_t
fold_usage(const tly_billing_t *billing, tly_billing_view_t *view,
           tly_account_t *account, const tly_event_t *event,
           tly_alert_list_t *out, char *errstr, size_t errstr_size) {
  const tly_usage_recorded_t *usage = &event->body.usage;
  const tly_config_t *config = billing->config;
  const tly_plan_t *plan = tly_config_plan(config, account->plan);
  tly_cycle_t *cycle = &account->cycle;
  int64_t t = event->occurred_at_ms, own_numerator = 0;

  if (!plan) {
    snprintf(errstr, errstr_size, "plan '%s' is not in the configuration",
             account->plan);
    return TLY_FOLD_REJECTED;
  }
  if (strlen(usage->feature) >= TLY_CONFIG_NAME_MAX ||
      strchr(usage->feature, TLY_DIM_SEP)) {
    snprintf(errstr, errstr_size,
             "feature name is longer than %d bytes or holds the byte 0x1f",
             TLY_CONFIG_NAME_MAX - 1);
    return TLY_FOLD_REJECTED;
  }
  if (t < cycle->start_ms) { /* late: a closed cycle still kept? */
    cycle = NULL;
    for (size_t i = 0; i < account->history_count; i++)
      if (account->history[i].start_ms <= t && t < account->history[i].end_ms)
        cycle = &account->history[i];
    if (!cycle) {
      snprintf(errstr, errstr_size,
               "occurred_at %lld is before every billing cycle still kept "
               "(the oldest starts at %lld)",
               (long long)t,
               (long long)(account->history_count
                               ? account->history[account->history_count - 1]
                                     .start_ms
                               : account->cycle.start_ms));
      return TLY_FOLD_REJECTED;
    }
  }
  /* The meter (tly_meters.h): unique_count's value is checked first. */
  tly_aggregation_t aggregation = tly_meter_aggregation(config, usage->feature);
  tly_distinct_sets_t *distinct = NULL;
  const char *value = NULL;
  int is_new = 0;
  if (aggregation == TLY_AGG_UNIQUE_COUNT) {
    tly_fold_result_t checked = tly_meter_distinct_check(
        config, view, event, cycle->start_ms, &distinct, &value, &is_new,
        errstr, errstr_size);
    if (checked != TLY_FOLD_APPLIED)
      return checked;
  }
  tly_billing_row_t *row =
      view->row(view, event->subject_kind, event->subject_id, cycle->start_ms,
                usage->feature);
  if (!row)
    return TLY_FOLD_FAILED;
  tly_billing_row_t next = *row;
  int64_t in = usage->has_ai ? usage->ai.input_tokens : 0;
  int64_t out_tokens = usage->has_ai ? usage->ai.output_tokens : 0;
  int overflow =
      tly_meter_step(aggregation, next.event_count, &next.quantity,
                     &next.latest_at_ms, usage->quantity, t, is_new) ||
      __builtin_add_overflow(next.input_tokens, in, &next.input_tokens) ||
      __builtin_add_overflow(next.output_tokens, out_tokens,
                             &next.output_tokens) ||
      __builtin_add_overflow(next.event_count, 1, &next.event_count);

  /* Price the event. */
  const tly_feature_price_t *tiers = tly_plan_price(plan, usage->feature);
  if (!overflow && usage->has_ai) {
    const tly_model_price_t *model = tly_config_model(config, usage->ai.model);
    if (!model && config->unknown_model == TLY_UNKNOWN_MODEL_FALLBACK)
      model = &config->fallback;
    if (!model) {
      snprintf(errstr, errstr_size,
               "model '%s' has no price in the configuration", usage->ai.model);
      return TLY_FOLD_REJECTED;
    }
    int64_t a = 0, b = 0, base = 0, numerator = 0;
    overflow = __builtin_mul_overflow(in, model->input_per_mtok, &a) ||
               __builtin_mul_overflow(out_tokens, model->output_per_mtok, &b) ||
               __builtin_add_overflow(a, b, &base) ||
               __builtin_mul_overflow(base, 10000 + config->margin_bps,
                                      &own_numerator) ||
               __builtin_add_overflow(own_numerator, next.cost_remainder,
                                      &numerator) ||
               __builtin_add_overflow(next.cost_micros,
                                      numerator / TLY_TOKEN_COST_DENOMINATOR,
                                      &next.cost_micros);
    next.cost_remainder = numerator % TLY_TOKEN_COST_DENOMINATOR;
  } else if (!overflow && tiers) {
    next.cost_micros = tly_billing_tier_cost(tiers, next.quantity);
    overflow = next.cost_micros < 0;
  }
  int64_t cost_delta = 0, cycle_cost = 0;
  overflow =
      overflow ||
      __builtin_sub_overflow(next.cost_micros, row->cost_micros, &cost_delta) ||
      __builtin_add_overflow(cycle->cost_micros, cost_delta, &cycle_cost);
  /* The hour's bucket: what this event added. */
  tly_bucket_t *bucket = NULL, hour = {0};
  if (!overflow) {
    bucket = view->bucket(view, event->subject_kind, event->subject_id,
                          tly_billing_hour(t), usage->feature);
    if (!bucket)
      return TLY_FOLD_FAILED;
    hour = *bucket;
    /* What the event changed the value by (for sum, its quantity). */
    overflow =
        __builtin_add_overflow(hour.quantity,
                               next.quantity - row->quantity, /* both >= 0 */
                               &hour.quantity) ||
        __builtin_add_overflow(hour.input_tokens, in, &hour.input_tokens) ||
        __builtin_add_overflow(hour.output_tokens, out_tokens,
                               &hour.output_tokens) ||
        __builtin_add_overflow(hour.event_count, 1, &hour.event_count) ||
        __builtin_add_overflow(hour.cost_micros, cost_delta, &hour.cost_micros);
  }
  if (overflow) {
    snprintf(errstr, errstr_size,
             "totals of feature '%s' would overflow a 64-bit integer",
             usage->feature);
    return TLY_FOLD_REJECTED;
  }
  tly_bucket_t delta = {next.quantity - row->quantity, in, out_tokens, 1,
                        cost_delta}; /* the event's part (tly_dims.h) */
  tly_dims_step_t groups;
  tly_fold_result_t grouped =
      tly_dims_prepare(config, view, event, tly_billing_hour(t), &delta,
                       &groups, errstr, errstr_size);
  if (grouped != TLY_FOLD_APPLIED)
    return grouped;
  if (is_new &&
      tly_distinct_add(distinct, cycle->start_ms, usage->feature, value))
    return TLY_FOLD_FAILED;
  if (tly_correction_record(view, event, cycle->start_ms, aggregation,
                            own_numerator, &groups))
    return TLY_FOLD_FAILED; /* its contribution, for usage_corrected */
  cycle->cost_micros = cycle_cost;
  cycle->events++;
  *row = next;
  *bucket = hour;
  tly_dims_apply(&groups);
  if (cycle != &account->cycle)
    return TLY_FOLD_APPLIED; /* a closed cycle: no more alerts for it */
  return tly_billing_check_limits(billing, account, plan, event->subject_kind,
                                  event->subject_id, usage->feature, row, t,
                                  out)
             ? TLY_FOLD_FAILED
             : TLY_FOLD_APPLIED;
}

int tly_billing_check_limits(const tly_billing_t *billing,
                             tly_account_t *account, const tly_plan_t *plan,
                             tly_subject_kind_t kind, const char *id,
                             const char *feature, tly_billing_row_t *row,
                             int64_t at_ms, tly_alert_list_t *out) {
  const tly_feature_limit_t *limit = tly_plan_limit(plan, feature);
  if (limit && limit->limit != TLY_UNLIMITED &&
      check_thresholds(billing, account, plan, kind, id, feature, row->quantity,
                       limit->limit, limit->mode == TLY_LIMIT_HARD,
                       &row->thresholds_fired, at_ms, out))
    return -1;
  return plan->credits != TLY_UNLIMITED &&
                 check_thresholds(
                     billing, account, plan, kind, id, TLY_CREDITS_FEATURE,
                     tly_billing_credits_used(billing->config, account),
                     plan->credits, 1, &account->credit_thresholds_fired, at_ms,
                     out)
             ? -1
             : 0;
}

/* ---- the fold --------------------------------------------------------- */

static tly_fold_result_t event_alert(tly_account_t *account,
                                     const tly_event_t *event,
                                     tly_alert_type_t type, const char *detail,
                                     tly_alert_list_t *out) {
  char alert_id[TLY_ALERT_ID_SIZE], subject_key[TLY_SUBJECT_KEY_SIZE];
  tly_subject_key(event->subject_kind, event->subject_id, subject_key,
                  sizeof(subject_key));
  snprintf(alert_id, sizeof(alert_id), "%s:%s:%s", tly_alert_type_name(type),
           subject_key, event->event_id);
  tly_alert_t *alert =
      add_alert(out, type, event->subject_kind, event->subject_id, account,
                event->occurred_at_ms, "", alert_id);
  if (!alert)
    return TLY_FOLD_FAILED;
  free(alert->detail);
  alert->detail = dup_string(detail);
  return alert->detail ? TLY_FOLD_APPLIED : TLY_FOLD_FAILED;
}

static int set_plan(const tly_config_t *config, tly_account_t *account,
                    const char *plan, char *errstr, size_t errstr_size) {
  if (!tly_config_plan(config, plan)) {
    snprintf(errstr, errstr_size, "plan '%s' is not in the configuration",
             plan);
    return -1;
  }
  snprintf(account->plan, sizeof(account->plan), "%s", plan);
  return 0;
}

/* Hands the view every cycle the account kept before and no longer keeps
 * (closing a cycle pushes the oldest kept one out), once the change is
 * applied: a rejected event archives nothing. */
static int archive_dropped(tly_billing_view_t *view, tly_subject_kind_t kind,
                           const char *id, const tly_account_t *before,
                           const tly_account_t *after) {
  if (!view->archive || !before->exists)
    return 0;
  for (size_t i = 0; i <= before->history_count; i++) {
    const tly_cycle_t *cycle = i ? &before->history[i - 1] : &before->cycle;
    int kept = cycle->start_ms == after->cycle.start_ms;
    for (size_t j = 0; j < after->history_count && !kept; j++)
      kept = cycle->start_ms == after->history[j].start_ms;
    if (!kept && view->archive(view, kind, id, cycle))
      return -1;
  }
  return 0;
}

/* An applied event: its id is now seen and it moves the watermark. Only
 * applied events do, so a rejected one can be fixed and sent again. */
static tly_fold_result_t remember(tly_billing_view_t *view,
                                  const tly_event_t *event) {
  if (view->seen(view, event->event_id, event->occurred_at_ms, 1) < 0)
    return TLY_FOLD_FAILED;
  if (event->occurred_at_ms > *view->watermark_ms)
    *view->watermark_ms = event->occurred_at_ms;
  return TLY_FOLD_APPLIED;
}

tly_fold_result_t tly_billing_fold(const tly_billing_t *billing,
                                   tly_billing_view_t *view,
                                   const tly_event_t *event,
                                   tly_alert_list_t *out, char *errstr,
                                   size_t errstr_size) {
  const tly_config_t *config = billing->config;
  int64_t t = event->occurred_at_ms;

  /* Times outside 1970..9999 never reach the calendar arithmetic below. */
  if (tly_event_time_check(event, 0, 0, NULL, errstr, errstr_size))
    return TLY_FOLD_REJECTED;
  /* (No watermark yet is INT64_MIN: nothing is too old.) */
  if (*view->watermark_ms > INT64_MIN + billing->dedupe_window_ms &&
      t < *view->watermark_ms - billing->dedupe_window_ms) {
    snprintf(errstr, errstr_size,
             "occurred_at %lld is older than the dedupe window (%lld ms "
             "before the partition's latest event time %lld)",
             (long long)t, (long long)billing->dedupe_window_ms,
             (long long)*view->watermark_ms);
    return TLY_FOLD_REJECTED;
  }
  if (view->dedupe_floor_ms && t < *view->dedupe_floor_ms) {
    snprintf(errstr, errstr_size,
             "occurred_at %lld is older than the dedupe window (the window "
             "was raised: ids before %lld are not all known)",
             (long long)t, (long long)*view->dedupe_floor_ms);
    return TLY_FOLD_REJECTED;
  }
  int seen = view->seen(view, event->event_id, t, 0);
  if (seen < 0)
    return TLY_FOLD_FAILED;
  if (seen)
    return TLY_FOLD_DUPLICATE;
  if (event->body_kind == TLY_BODY_TICK)
    return remember(view, event); /* the caller walks the accounts due */

  tly_account_t *account =
      view->account(view, event->subject_kind, event->subject_id);
  if (!account)
    return TLY_FOLD_FAILED;
  /* Work on a copy: a rejected event leaves the account as it was. */
  tly_account_t next = *account;
  size_t alerts_before = out->count;
  tly_read_marks_t *marks = NULL; /* a NotificationRead's subject's */
  if (!next.exists) {
    next.exists = 1;
    snprintf(next.plan, sizeof(next.plan), "%s",
             config->default_plan[event->subject_kind]);
    tly_billing_month_cycle(config->cycle_anchor_ms, t, &next.cycle.start_ms,
                            &next.cycle.end_ms);
  }

  tly_fold_result_t result = TLY_FOLD_APPLIED;
  int failed = 0;
  switch (event->body_kind) {
  case TLY_BODY_INVOICE_PAID: {
    const tly_invoice_paid_t *paid = &event->body.invoice_paid;
    int64_t start = paid->period_start_ms, end = paid->period_end_ms;
    if (!start || !end)
      tly_billing_month_cycle(t, t, &start, &end);
    next.payment_failed = 0;
    if (start <= next.cycle.start_ms) {
      next.stripe_period = 1;
      next.cycle.end_ms = end;
    } else {
      next.stripe_period = 1;
      failed = close_cycle(billing, &next, event->subject_kind,
                           event->subject_id, t, start, end, out);
    }
    break;
  }
  case TLY_BODY_SUBSCRIPTION_CHANGED: {
    const tly_subscription_changed_t *change =
        &event->body.subscription_changed;
    failed = roll_over(billing, &next, event->subject_kind, event->subject_id,
                       t, out);
    if (!failed && set_plan(config, &next, change->plan, errstr, errstr_size))
      result = TLY_FOLD_REJECTED;
    else if (!failed && change->period_start_ms && change->period_end_ms)
      failed =
          set_period(billing, &next, event->subject_kind, event->subject_id, t,
                     change->period_start_ms, change->period_end_ms, out);
    next.canceled = 0;
    break;
  }
  default:
    failed = roll_over(billing, &next, event->subject_kind, event->subject_id,
                       t, out);
    if (failed)
      break;
    switch (event->body_kind) {
    case TLY_BODY_USAGE_RECORDED:
      result =
          fold_usage(billing, view, &next, event, out, errstr, errstr_size);
      break;
    case TLY_BODY_USAGE_CORRECTED: /* tly_corrections.c */
      result = tly_correction_fold(billing, view, &next, event, out, errstr,
                                   errstr_size);
      break;
    case TLY_BODY_PLAN_ASSIGNED:
      if (set_plan(config, &next, event->body.plan_assigned.plan, errstr,
                   errstr_size))
        result = TLY_FOLD_REJECTED;
      break;
    case TLY_BODY_SUBSCRIPTION_CANCELED:
      next.canceled = 1;
      snprintf(next.plan, sizeof(next.plan), "%s",
               config->default_plan[event->subject_kind]);
      result = event_alert(&next, event, TLY_ALERT_SUBSCRIPTION_CANCELED,
                           event->body.subscription_canceled.reason, out);
      break;
    case TLY_BODY_PAYMENT_FAILED:
      next.payment_failed = 1;
      result = event_alert(&next, event, TLY_ALERT_PAYMENT_FAILED,
                           event->body.payment_failed.invoice_id, out);
      break;
    case TLY_BODY_CUSTOMER_LINKED:
      snprintf(next.stripe_customer_id, sizeof(next.stripe_customer_id), "%s",
               event->body.customer_linked.stripe_customer_id);
      break;
    case TLY_BODY_RESERVATION_HELD:
    case TLY_BODY_RESERVATION_RELEASED:
      break; /* the holds change below, with everything else applied */
    case TLY_BODY_NOTIFICATION_READ: /* added below, once applied */
      if (!view->read_marks) {
        snprintf(errstr, errstr_size,
                 "notification reads are not kept by this view");
        result = TLY_FOLD_REJECTED;
      } else if (!(marks = view->read_marks(view, event->subject_kind,
                                            event->subject_id))) {
        failed = 1;
      }
      break;
    default:
      snprintf(errstr, errstr_size, "event body %d is not folded",
               (int)event->body_kind);
      result = TLY_FOLD_REJECTED;
    }
  }
  if (failed)
    result = TLY_FOLD_FAILED;
  if (result == TLY_FOLD_APPLIED)
    result = tly_billing_fold_holds(view, event, errstr, errstr_size);
  if (result != TLY_FOLD_APPLIED) {
    /* Drop the alerts of a rejected event; the account stays as it was. */
    while (out->count > alerts_before)
      tly_alert_clear(&out->items[--out->count]);
    return result;
  }
  if (archive_dropped(view, event->subject_kind, event->subject_id, account,
                      &next))
    return TLY_FOLD_FAILED;
  if (marks) {
    const tly_notification_read_t *read = &event->body.notification_read;
    tly_read_marks_add(
        marks, tly_read_mark_hash(read->alert_id, strlen(read->alert_id)),
        read->alert_at_ms);
  }
  *account = next;
  return remember(view, event);
}

tly_fold_result_t tly_billing_tick(const tly_billing_t *billing,
                                   tly_billing_view_t *view,
                                   tly_subject_kind_t kind, const char *id,
                                   int64_t tick_ms, tly_alert_list_t *out) {
  if (!tly_event_time_in_range(tick_ms))
    return TLY_FOLD_APPLIED; /* tly_billing_fold refused such a tick */
  tly_account_t *account = view->account(view, kind, id);
  if (!account)
    return TLY_FOLD_FAILED;
  if (!account->exists)
    return TLY_FOLD_APPLIED;
  tly_account_t before = *account;
  if (roll_over(billing, account, kind, id, tick_ms, out) ||
      archive_dropped(view, kind, id, &before, account))
    return TLY_FOLD_FAILED;
  if (view->holds) { /* holds expire on the tick's time too */
    tly_holds_t *holds = view->holds(view, kind, id);
    if (!holds)
      return TLY_FOLD_FAILED;
    tly_holds_expire(holds, tick_ms);
  }
  return TLY_FOLD_APPLIED;
}
