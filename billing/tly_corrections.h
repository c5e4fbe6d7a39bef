/*
 * tly_corrections.h - usage_corrected events: what one usage event
 * contributed (kept per event id for the dedupe window) and how a
 * correction replaces it. Owns those rules and the contribution's
 * encoding; pure: no I/O, no clock (the contribution is reached through
 * the view's contribution callback, like rows and buckets).
 *
 * Every applied usage event of a `sum` or `count` feature leaves its
 * contribution: its event time, the cycle it was folded into, its
 * quantity and tokens, its part of the token cost's numerator
 * (tly_billing.c prices tokens exactly: the row keeps the sub-micro
 * remainder), its feature, and whether it counts as an event. A
 * usage_corrected event naming it (corrects = its event_id, same subject,
 * same feature) replaces that contribution with its own quantity and
 * tokens: the difference goes into the original's row (its cycle), the
 * original's hourly bucket (its hour: /usage/daily and the Stripe window
 * move by the difference), the cycle's cost and events. Quantity 0 (and
 * no tokens) retracts it: the event no longer counts (events - 1; for
 * count the value - 1). A correction of a retracted event brings it back.
 * A second correction replaces the first one's contribution: the latest
 * correction in log order wins (a replay decides the same).
 *
 * Rejected (dead letter, with the reason), nothing changed:
 *   - an id with no contribution of this subject: never folded, rejected,
 *     of another subject, of a feature that keeps none (max, latest,
 *     unique_count), or forgotten;
 *   - an original older than the dedupe window (the partition's watermark
 *     minus the window), whether or not the store has dropped it yet;
 *   - a feature other than the original's;
 *   - a feature aggregated with max, latest or unique_count (their value is
 *     not a sum of contributions: a retraction cannot be undone exactly
 *     without every other event of the cycle);
 *   - an original whose cycle is no longer kept (older than the 3 closed
 *     cycles kept), a model without a price, totals that would overflow.
 * Thresholds: a correction that raises the value fires the thresholds it
 * reaches (once per cycle, as always); one that lowers it re-arms nothing
 * and sends nothing. A correction is itself an event: deduplicated by its
 * own event_id, it moves the watermark, and it is not itself correctable.
 */
#ifndef TLY_CORRECTIONS_H
#define TLY_CORRECTIONS_H

#include "tly_billing.h"

#include <stddef.h>
#include <stdint.h>

typedef struct tly_contribution {
  int64_t occurred_at_ms; /* the original's event time (its hour, expiry) */
  int64_t cycle_start_ms; /* the cycle it was folded into */
  int64_t quantity;       /* its quantity (0 once retracted) */
  int64_t input_tokens, output_tokens;
  int64_t numerator; /* its part of the token cost numerator, 0 without */
  int counted;       /* counts as an event (0 once retracted) */
  char feature[TLY_CONFIG_NAME_MAX];
} tly_contribution_t;

/* [occurred_at, 8 bytes BE: the store's expiry filter reads it][version]
 * then varints (cycle start as an offset back from occurred_at, quantity,
 * tokens, numerator), the counted byte and the feature (length byte and
 * bytes): about 20 bytes plus the feature name for a typical event. */
#define TLY_CONTRIBUTION_MAX (8 + 1 + 5 * 10 + 1 + 1 + TLY_CONFIG_NAME_MAX)
size_t tly_contribution_encode(const tly_contribution_t *contribution,
                               unsigned char *out);
/* 0, or -1 when malformed (other version, truncated, trailing bytes). */
int tly_contribution_decode(const void *data, size_t len,
                            tly_contribution_t *contribution);

/* Whether a feature's events keep contributions (sum and count). */
int tly_correction_supported(tly_aggregation_t aggregation);

/* fold_usage's last step: the applied usage event's contribution, through
 * view->contribution (nothing without one, or for other aggregations).
 * 0, or -1 when the view failed. */
int tly_correction_record(tly_billing_view_t *view, const tly_event_t *event,
                          int64_t cycle_start_ms, tly_aggregation_t aggregation,
                          int64_t numerator);

/* Folds a usage_corrected event into account (the fold's working copy)
 * and the rows, buckets and contribution behind the view. */
tly_fold_result_t
tly_correction_fold(const tly_billing_t *billing, tly_billing_view_t *view,
                    tly_account_t *account, const tly_event_t *event,
                    tly_alert_list_t *out, char *errstr, size_t errstr_size);

#endif
