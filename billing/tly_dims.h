/*
 * tly_dims.h - dimensions: a feature's hourly buckets kept per value of a
 * dimension (meters.<feature>.group_by: model, provider,
 * properties.<key>), so usage and cost can be broken down by model,
 * provider or a property. Owns the dimensions' rules and the names of their
 * buckets; pure: no I/O, no clock (the fold's step goes through the view).
 *
 * A group is an hourly bucket like a feature's (tly_subject_bucket_t, the
 * same storage, the same hours /usage/daily and the Stripe windows use),
 * named  feature 0x1f dimension 0x1f value  (e.g. "ai_tokens", "model",
 * "gpt-4o"). Each usage event adds to its feature's bucket what it changed
 * the feature by (quantity change, tokens, 1 event, cost change) and the
 * very same figures to one group per dimension of its feature, so the
 * groups of one dimension sum to the feature's buckets exactly, hour by
 * hour, for every aggregation.
 *
 * Which dimensions: the meter's group_by list when given (even empty); an
 * event carrying AI detail without one groups by model and provider.
 * The value: the event's model, provider or property; "none" when the
 * event has none; "other" when it is longer than TLY_DIM_VALUE_MAX bytes,
 * or when the subject's hour already holds TLY_DIM_VALUES_MAX values of
 * that feature and dimension (the bound: per subject, feature, dimension
 * and hour). A real value "none" or "other" adds to those groups.
 *
 * A feature name holding the byte 0x1f is refused by the fold (dead
 * letter), so no feature's bucket can pose as a group.
 */
#ifndef TLY_DIMS_H
#define TLY_DIMS_H

#include "tly_billing.h"

#include <stddef.h>
#include <stdint.h>

#define TLY_DIM_VALUES_MAX 64 /* values per subject, feature, dimension, hour  \
                               */
#define TLY_DIM_VALUE_MAX 64  /* bytes of a value kept by name */
#define TLY_DIM_SEP '\x1f'
#define TLY_DIM_OTHER "other"
#define TLY_DIM_NONE "none"
/* A dimension's label ("model", "provider", "properties.<key>") with NUL. */
#define TLY_DIM_LABEL_MAX (sizeof("properties.") + TLY_DIM_KEY_MAX)

/* The dimensions usage's feature is grouped by under config: their count
 * (at most TLY_METER_GROUP_MAX), *dims pointing at them. */
size_t tly_dims_of(const tly_config_t *config,
                   const tly_usage_recorded_t *usage,
                   const tly_dimension_t **dims);

/* The label of a dimension, into out (TLY_DIM_LABEL_MAX bytes). */
void tly_dims_label(const tly_dimension_t *dim, char *out);

/* A label as a client writes it ("model", "provider", "properties.<key>"
 * with a key of 1..TLY_DIM_KEY_MAX bytes without control characters): 0,
 * or -1 when it is none of them. */
int tly_dims_parse_label(const char *text, tly_dimension_t *out);

/* The value of dim in usage (never NULL: "none", "other" or the value). */
const char *tly_dims_value(const tly_dimension_t *dim,
                           const tly_usage_recorded_t *usage);

/* The bucket name of (feature, label, value) into out (size >=
 * TLY_BUCKET_NAME_MAX); value NULL: the prefix (ending in the separator).
 * Its length, or 0 when it does not fit. */
size_t tly_dims_bucket_name(char *out, size_t size, const char *feature,
                            const char *label, const char *value);

/* Whether name is a group's bucket name: 1 with its parts (feature and
 * label as lengths from name, value NUL-terminated), 0 when it names a
 * feature. */
int tly_dims_split(const char *name, size_t *feature_len, const char **label,
                   size_t *label_len, const char **value);

/* One event's step of its groups: the buckets and what they become, and
 * their names as the hour resolved them ("feature 0x1f label 0x1f value",
 * the value "other" when it went there; the label starts at label_at):
 * what the event's contribution keeps (tly_corrections.h). */
typedef struct {
  size_t count, label_at;
  tly_bucket_t *targets[TLY_METER_GROUP_MAX];
  tly_bucket_t next[TLY_METER_GROUP_MAX];
  char names[TLY_METER_GROUP_MAX][TLY_BUCKET_NAME_MAX];
} tly_dims_step_t;

/* Prepares the step of event (a usage event, folded into hour) adding
 * delta to one group per dimension; nothing changes until
 * tly_dims_apply. TLY_FOLD_APPLIED, TLY_FOLD_REJECTED (a total would
 * overflow; errstr) or TLY_FOLD_FAILED (the view failed). Without the
 * view's group_bucket nothing is grouped (count 0). */
tly_fold_result_t tly_dims_prepare(const tly_config_t *config,
                                   tly_billing_view_t *view,
                                   const tly_event_t *event, int32_t hour,
                                   const tly_bucket_t *delta,
                                   tly_dims_step_t *step, char *errstr,
                                   size_t errstr_size);
void tly_dims_apply(const tly_dims_step_t *step);

/* Adds b to a with int64 overflow checks: 0, or -1 (a unchanged). */
int tly_bucket_add(tly_bucket_t *a, const tly_bucket_t *b);

#endif
