/*
 * tly_billing.h - the billing fold: plans, prices, quotas, cycles, alerts.
 *
 * fold(state, event, config) -> (state', alerts). Pure: no I/O, no clock, no
 * randomness, integers only. The state is reached through a small view
 * (tly_billing_view_t) that the caller backs with whatever it likes: the
 * processor with its per-batch overlay over RocksDB, the unit tests with
 * plain memory. The view only hands out state records; it never decides
 * anything, so the same log and config give the same state and the same
 * alerts, with the same ids, on every replay.
 *
 * State per subject (an account) and per (subject, cycle, feature) (a usage
 * row). Money: micro-units. Credits used in a cycle = cycle cost /
 * micros_per_credit (floor). Token cost is exact: each row carries the
 * sub-micro remainder of its token prices, so splitting usage into many
 * small events never rounds a credit away.
 */
#ifndef TLY_BILLING_H
#define TLY_BILLING_H

#include "tly_alert.h"
#include "tly_config.h"
#include "tly_event.h"
#include "tly_holds.h"
#include "tly_meters.h"
#include "tly_read_marks.h"

#include <stddef.h>
#include <stdint.h>

#define TLY_BILLING_HISTORY 3 /* closed cycles kept for late events */
/* The dedupe window and its bounds: tly_config.h (events.dedupe_window_ms). */
#define TLY_BILLING_DEFAULT_DEDUPE_WINDOW_MS TLY_DEFAULT_DEDUPE_WINDOW_MS
#define TLY_CREDITS_FEATURE "credits" /* the plan's credit quota in alerts */
/* Every alert id the fold builds fits in this many bytes with its NUL
 * (the longest: "subscription_canceled:" + subject key + ":" + event_id,
 * within the bounds of tly_event.h), so none is ever cut short and two
 * alerts never share an id. */
#define TLY_ALERT_ID_SIZE 640
/* A subject key "kind:id" with its NUL. */
#define TLY_SUBJECT_KEY_SIZE (sizeof("anonymous:") + TLY_SUBJECT_ID_MAX)

typedef struct {
  int64_t start_ms, end_ms;
  int64_t cost_micros;
  int64_t events;
} tly_cycle_t;

typedef struct {
  int exists;
  char plan[TLY_CONFIG_NAME_MAX];
  char stripe_customer_id[128];
  int stripe_period; /* cycle bounds were set by Stripe */
  int payment_failed;
  int canceled;
  tly_cycle_t cycle;                /* the current one */
  uint32_t credit_thresholds_fired; /* bit i: plan threshold i, this cycle */
  size_t history_count;             /* newest first */
  tly_cycle_t history[TLY_BILLING_HISTORY];
  /* Which alerts the subject read (NotificationRead events) is not here
   * but beside the account, in the subject record (version 6) and the
   * view (read_marks below): 512 bytes that most subjects never use, which
   * the fold would copy twice per event. */
} tly_account_t;

typedef struct {
  int64_t quantity; /* the aggregated value (tly_meters.h): for sum, the
                       quantities added */
  int64_t input_tokens;
  int64_t output_tokens;
  int64_t event_count;
  int64_t cost_micros;
  int64_t
      cost_remainder; /* numerator left over, < TLY_TOKEN_COST_DENOMINATOR */
  uint32_t thresholds_fired; /* bit i: plan threshold i, this cycle */
  int64_t latest_at_ms;      /* latest: the occurred_at of the value; else 0 */
} tly_billing_row_t;

/* What one UTC hour added to one feature of a subject (a bucket of the
 * usage history: the daily answers and Stripe's report windows are sums of
 * them). cost_micros is what the hour's events added to the cycle's cost,
 * so the buckets of a cycle sum to its cost. */
typedef struct {
  int64_t quantity;
  int64_t input_tokens;
  int64_t output_tokens;
  int64_t event_count;
  int64_t cost_micros;
} tly_bucket_t;

#define TLY_HOUR_MS 3600000LL
#define TLY_DAY_MS 86400000LL

/* A bucket's name: a feature, or a feature's dimension value
 * (tly_dims.h: feature, 0x1f, dimension, 0x1f, value) with its NUL. */
#define TLY_BUCKET_NAME_MAX 176

/* A bucket with what names it within its subject. The name is last: the
 * overlay allocates its buckets only up to the name's NUL
 * (store/tly_overlay.c), so nothing may copy an overlay's bucket whole. */
typedef struct {
  int32_t hour; /* hours since 1970-01-01T00:00Z */
  tly_bucket_t totals;
  char feature[TLY_BUCKET_NAME_MAX]; /* the name: a feature or a group */
} tly_subject_bucket_t;

/* The hour of an event time (floor, so times before 1970 work too),
 * clamped to the int32 range (event times in range are far inside it). */
int32_t tly_billing_hour(int64_t t_ms);

/* Token prices are per 1,000,000 tokens and the margin is in basis points:
 * cost_micros = tokens * price * (10000 + margin) / (1e6 * 1e4). */
#define TLY_TOKEN_COST_DENOMINATOR 10000000000LL

/* How the fold reaches state. Every getter returns a record the fold may
 * modify in place (a fresh zeroed one when absent) and that the caller
 * persists afterwards; NULL means the caller failed (out of memory, store
 * error) and the fold stops with -1. */
typedef struct tly_billing_view tly_billing_view_t;
struct tly_contribution; /* tly_corrections.h */
struct tly_billing_view {
  void *opaque;
  tly_account_t *(*account)(tly_billing_view_t *view, tly_subject_kind_t kind,
                            const char *id);
  tly_billing_row_t *(*row)(tly_billing_view_t *view, tly_subject_kind_t kind,
                            const char *id, int64_t cycle_start_ms,
                            const char *feature);
  /* The bucket of (hour, feature), zeroed when absent. */
  tly_bucket_t *(*bucket)(tly_billing_view_t *view, tly_subject_kind_t kind,
                          const char *id, int32_t hour, const char *feature);
  /* Optional (may be NULL): the closed cycle leaves the kept history (the
   * fold will never touch its rows again), so its final totals may be
   * archived. Called before the account forgets it; 0, or -1: the caller
   * failed. */
  int (*archive)(tly_billing_view_t *view, tly_subject_kind_t kind,
                 const char *id, const tly_cycle_t *cycle);
  /* With record == 0: 1 if event_id was already folded (within the
   * window), 0 if not. With record != 0: remembers it as folded (returns
   * 0). -1: the caller failed. */
  int (*seen)(tly_billing_view_t *view, const char *event_id,
              int64_t occurred_at_ms, int record);
  /* The partition's event-time watermark (largest occurred_at folded). */
  int64_t *watermark_ms;
  /* Optional (NULL: reservation events are rejected, nothing settles):
   * the subject's open reservations (tly_holds.h), which the fold may
   * change in place; NULL return: the caller failed. */
  tly_holds_t *(*holds)(tly_billing_view_t *view, tly_subject_kind_t kind,
                        const char *id);
  /* Optional (NULL: unique_count events are rejected): the subject's
   * distinct values (tly_meters.h), which the fold may change in place;
   * NULL return: the caller failed. */
  tly_distinct_sets_t *(*distinct)(tly_billing_view_t *view,
                                   tly_subject_kind_t kind, const char *id);
  /* Optional (NULL: NotificationRead events are rejected): the subject's
   * read marks (tly_read_marks.h), which the fold changes in place once
   * the event is applied; NULL return: the caller failed. */
  tly_read_marks_t *(*read_marks)(tly_billing_view_t *view,
                                  tly_subject_kind_t kind, const char *id);
  /* Optional (NULL: usage events keep no contribution and usage_corrected
   * events are rejected): the contribution (tly_corrections.h) of the
   * subject's usage event event_id. With write == 0: 1 and *contribution
   * when kept, 0 when not; with write != 0: stores *contribution (0).
   * -1: the caller failed. A write is seen by the next read at once. */
  int (*contribution)(tly_billing_view_t *view, tly_subject_kind_t kind,
                      const char *id, const char *event_id,
                      struct tly_contribution *contribution, int write);
  /* The fold's clock for expiring holds: the Kafka timestamp of the record
   * being folded (in the log, so a replay decides the same); 0 or less:
   * none, the event's occurred_at is used. */
  int64_t record_ms;
  /* Optional (NULL: none): the partition's dedupe floor, the oldest event
   * time from which every folded id is still known. An event older than
   * it is dead-lettered like one older than the window: after the window
   * was raised, ids the smaller window let go are not known again until
   * the watermark has moved on (never guessed at). */
  const int64_t *dedupe_floor_ms;
  /* Optional (NULL: no dimensions are kept, tly_dims.h): the group bucket
   * of hour for name, whose first prefix_len bytes name the feature and
   * dimension: name's own when it is used (events > 0) or when fewer than
   * max used buckets of hour start with that prefix, else the prefix's
   * `other` bucket (name's first prefix_len bytes then "other"); zeroed
   * when absent. name must have room for the "other" name
   * (TLY_BUCKET_NAME_MAX) and may be rewritten to it. NULL: the caller
   * failed. One pass over the hour's buckets. */
  tly_bucket_t *(*group_bucket)(tly_billing_view_t *view,
                                tly_subject_kind_t kind, const char *id,
                                int32_t hour, char *name, size_t prefix_len,
                                long max);
};

typedef struct {
  tly_alert_t *items;
  size_t count, cap;
} tly_alert_list_t;

void tly_alert_list_clear(tly_alert_list_t *list); /* frees every alert */

typedef enum {
  TLY_FOLD_APPLIED = 0,
  TLY_FOLD_DUPLICATE = 1, /* event_id seen before: ignored */
  TLY_FOLD_REJECTED = 2,  /* cannot be folded: errstr says why (dead letter) */
  TLY_FOLD_FAILED = -1    /* the view failed: stop */
} tly_fold_result_t;

typedef struct {
  const tly_config_t *config;
  int64_t dedupe_window_ms;
} tly_billing_t;

/* Step 5 of tly_billing_fold (tly_holds.c): the holds' part of an event
 * applied otherwise, through view->holds at the fold's clock. */
tly_fold_result_t tly_billing_fold_holds(tly_billing_view_t *view,
                                         const tly_event_t *event, char *errstr,
                                         size_t errstr_size);

/* unique_count's part of a usage event (tly_meters.c): the value of the
 * meter's property, checked against the bounds, and whether the cycle's
 * set of the feature lacks it. TLY_FOLD_REJECTED with the reason (no
 * property, a value too long, a new value past TLY_DISTINCT_MAX, no
 * distinct view), TLY_FOLD_FAILED when the view failed; nothing changes. */
tly_fold_result_t
tly_meter_distinct_check(const tly_config_t *config, tly_billing_view_t *view,
                         const tly_event_t *event, int64_t cycle_start_ms,
                         tly_distinct_sets_t **sets, const char **value,
                         int *is_new, char *errstr, size_t errstr_size);

/* The plan's thresholds for the row's feature (its limit) and for the
 * plan's credits, after row changed in the account's current cycle: fires
 * each one reached that has not fired this cycle. 0, or -1 on OOM. */
int tly_billing_check_limits(const tly_billing_t *billing,
                             tly_account_t *account, const tly_plan_t *plan,
                             tly_subject_kind_t kind, const char *id,
                             const char *feature, tly_billing_row_t *row,
                             int64_t at_ms, tly_alert_list_t *out);

/* Folds one event into the state; appends alerts to out. An event with a
 * time outside tly_event_time.h's absolute range (occurred_at, a period
 * bound) is TLY_FOLD_REJECTED before it touches anything: no watermark,
 * cycle or quota moves. (The future skew against the record's timestamp
 * is the caller's check: the fold does not know the record.) */
tly_fold_result_t tly_billing_fold(const tly_billing_t *billing,
                                   tly_billing_view_t *view,
                                   const tly_event_t *event,
                                   tly_alert_list_t *out, char *errstr,
                                   size_t errstr_size);

/* A tick at tick_ms reached this subject's account: closes its cycle if it
 * has ended (emitting billing_cycle_end) and starts the one containing
 * tick_ms. Returns TLY_FOLD_APPLIED or TLY_FOLD_FAILED. A tick_ms outside
 * the range of event times (which tly_billing_fold refuses as a Tick's
 * occurred_at) changes nothing. */
tly_fold_result_t tly_billing_tick(const tly_billing_t *billing,
                                   tly_billing_view_t *view,
                                   tly_subject_kind_t kind, const char *id,
                                   int64_t tick_ms, tly_alert_list_t *out);

/* The monthly cycle (from the config's anchor) containing t_ms:
 * start <= t < end. Pure calendar arithmetic in UTC, no libc time zone
 * code, O(1) (no search), defined for every int64 anchor and time: a bound
 * beyond the int64 range saturates to INT64_MIN or INT64_MAX (so for t
 * near INT64_MAX the end may equal t). The fold only passes times of
 * tly_event_time.h's range, where no bound saturates. */
void tly_billing_month_cycle(int64_t anchor_ms, int64_t t_ms, int64_t *start_ms,
                             int64_t *end_ms);

/* Cost in micros of `quantity` units under tiered pricing (graduated: each
 * unit at its tier's price; volume: every unit at the price of the tier the
 * total falls in). -1 on overflow. */
int64_t tly_billing_tier_cost(const tly_feature_price_t *price,
                              int64_t quantity);

/* What input/output tokens of a model cost, exactly as the fold prices
 * them: model prices per Mtok plus the config's margin, the sub-micro part
 * carried in *remainder (< TLY_TOKEN_COST_DENOMINATOR) to the next call.
 * Adds to *cost_micros. 0, or -1 on overflow (nothing changed). Pure. */
int tly_billing_token_cost(const tly_config_t *config,
                           const tly_model_price_t *model, int64_t input_tokens,
                           int64_t output_tokens, int64_t *cost_micros,
                           int64_t *remainder);

/* When ticks must next reach the subject (the time the processor indexes
 * it under, see tly_ticks.c): its cycle's end or its next hold expiry,
 * whichever is first. */
int64_t tly_subject_due_ms(const tly_account_t *account,
                           const tly_hold_t *holds, size_t hold_count);

/* Credits used in the account's current cycle. */
int64_t tly_billing_credits_used(const tly_config_t *config,
                                 const tly_account_t *account);

/* The encodings of the state records (tly_billing_records.h), after the
 * types they encode: callers of tly_billing.h keep seeing them. */
#include "tly_billing_records.h"

#endif
