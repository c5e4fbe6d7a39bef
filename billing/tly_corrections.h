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
 * Groups (tly_dims.h): the contribution also keeps the names of the group
 * buckets its event went to in its hour ("label 0x1f value", after the
 * feature: the value as the hour resolved it, so "other" when the event
 * overflowed into it), and a correction moves those very groups of that
 * hour by the same difference as the feature's bucket: the corrected
 * quantity shows under the original's model, provider or property, never
 * in "none", never twice. The bound: a contribution's record is at most
 * TLY_CONTRIBUTION_MAX (255) bytes; the names are kept in the meter's
 * group_by order while they fit (a name that does not is left out, a
 * later shorter one may still fit). A left-out dimension's difference
 * shows in "none" (its groups still sum to the feature). A contribution
 * written before groups were kept (version 1) has none: its correction
 * moves the feature only (the difference shows in "none", as before).
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
#include "tly_dims.h"

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
  /* The groups its event went to: "label 0x1f value" each (the bucket's
   * name after "feature 0x1f"), group_count of them; 0 for a feature not
   * grouped and for a version-1 record. */
  size_t group_count;
  char groups[TLY_METER_GROUP_MAX][TLY_BUCKET_NAME_MAX];
} tly_contribution_t;

/* [occurred_at, 8 bytes BE: the store's expiry filter reads it][version 2]
 * then varints (cycle start as an offset back from occurred_at, quantity,
 * tokens, numerator), the counted byte, the feature (length byte and
 * bytes), then the groups: a count byte and each name (length byte and
 * bytes) while the whole stays within TLY_CONTRIBUTION_MAX. About 20 bytes
 * plus the feature name for an ungrouped event; an AI event grouped by
 * model and provider adds their names (e.g. 32 bytes for "model 0x1f
 * gpt-4o", "provider 0x1f openai"). Version 1 (no groups section) still
 * decodes, with no groups. At most 255 bytes: the value's length is one
 * byte in the tables and changelog blobs of tly_contributions.c. */
#define TLY_CONTRIBUTION_MAX 255
size_t tly_contribution_encode(const tly_contribution_t *contribution,
                               unsigned char *out);
/* 0, or -1 when malformed (other version, truncated, trailing bytes). */
int tly_contribution_decode(const void *data, size_t len,
                            tly_contribution_t *contribution);

/* Whether a feature's events keep contributions (sum and count). */
int tly_correction_supported(tly_aggregation_t aggregation);

/* fold_usage's last step: the applied usage event's contribution, through
 * view->contribution (nothing without one, or for other aggregations),
 * with the groups of groups (NULL: none) as they were resolved.
 * 0, or -1 when the view failed. */
int tly_correction_record(tly_billing_view_t *view, const tly_event_t *event,
                          int64_t cycle_start_ms, tly_aggregation_t aggregation,
                          int64_t numerator, const tly_dims_step_t *groups);

/* Folds a usage_corrected event into account (the fold's working copy)
 * and the rows, buckets and contribution behind the view. */
tly_fold_result_t
tly_correction_fold(const tly_billing_t *billing, tly_billing_view_t *view,
                    tly_account_t *account, const tly_event_t *event,
                    tly_alert_list_t *out, char *errstr, size_t errstr_size);

#endif
