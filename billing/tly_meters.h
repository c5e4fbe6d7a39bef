/*
 * tly_meters.h - how a feature's events of one cycle aggregate into the
 * value that limits, thresholds, tiers, alerts, the pre-check and Stripe
 * work on (meters.<feature>.aggregation, tly_config.h), and the distinct
 * values unique_count keeps. Owns those rules; pure: no I/O, no clock.
 *
 * Per (subject, cycle, feature) the usage row's quantity IS the
 * aggregated value:
 *   sum           the quantities added (the default);
 *   count         the events counted, whatever their quantity;
 *   max           the largest quantity of the cycle;
 *   latest        the quantity of the event with the latest occurred_at
 *                 (an event at the same instant as the current one
 *                 replaces it: the later in the log wins, so a replay
 *                 decides the same); an older event leaves it;
 *   unique_count  the number of distinct values of the meter's property
 *                 among the cycle's events, exact: the values are kept
 *                 (tly_distinct_sets_t, in the subject record). An event
 *                 without the property, or with a value longer than
 *                 TLY_DISTINCT_VALUE_MAX bytes, or bringing a new value
 *                 once the cycle holds TLY_DISTINCT_MAX of them, is
 *                 rejected (dead letter, with the reason): never counted
 *                 approximately, never dropped silently. An event whose
 *                 value is already counted applies (it counts as an event).
 * Every cycle starts empty (a gauge reported with latest reads 0 in a new
 * cycle until its first event there).
 *
 * The hourly buckets hold what each hour changed the value by (for sum,
 * the quantities), so a cycle's buckets sum to its value, its cost and
 * its events, for every aggregation. A latest value that falls gives a
 * negative hourly change.
 *
 * Thresholds fire on the value, once per cycle each: a value that falls
 * (latest) does not re-arm one already fired, and one falls below a
 * threshold without an alert.
 */
#ifndef TLY_METERS_H
#define TLY_METERS_H

#include "tly_config.h"
#include "tly_event.h"

#include <stddef.h>
#include <stdint.h>

/* Distinct values per (subject, cycle, feature), at most, and the longest
 * value counted (bytes). A subject record holds the sets of its current
 * cycle and the kept closed ones: at most 4 x 1,000 x 129 bytes per
 * unique_count feature. */
#define TLY_DISTINCT_MAX 1000
#define TLY_DISTINCT_VALUE_MAX 128

typedef struct {
  int64_t cycle_start_ms;
  char feature[TLY_CONFIG_NAME_MAX];
  size_t count, cap;
  char **values; /* sorted (strcmp), each malloc'd */
} tly_distinct_set_t;

/* A subject's sets, one per (cycle, feature) with values. */
typedef struct {
  tly_distinct_set_t *items;
  size_t count, cap;
} tly_distinct_sets_t;

void tly_distinct_sets_clear(tly_distinct_sets_t *sets);
/* The set of (cycle, feature), or NULL. */
const tly_distinct_set_t *tly_distinct_find(const tly_distinct_sets_t *sets,
                                            int64_t cycle_start_ms,
                                            const char *feature);
/* Whether the set holds value (0/1). */
int tly_distinct_has(const tly_distinct_set_t *set, const char *value);
/* Adds value to the set of (cycle, feature), creating it. 0, or -1 on out
 * of memory (nothing changed). The caller checked the bounds. */
int tly_distinct_add(tly_distinct_sets_t *sets, int64_t cycle_start_ms,
                     const char *feature, const char *value);
/* Drops the sets for which keep returns 0. */
void tly_distinct_prune(tly_distinct_sets_t *sets,
                        int (*keep)(const void *opaque, int64_t cycle_start_ms,
                                    const char *feature),
                        const void *opaque);
/* Encoding, inside the subject record (tly_billing_records.c writes it):
 * [set count] then per set [cycle - base_ms][feature][value count][values],
 * varints and length-prefixed strings. encode returns the length it needs,
 * the bytes in out when that fits (out may be NULL to measure); sets with
 * keep() == 0 are left out. decode appends to *sets from data, returns the
 * bytes read, or 0 when malformed (out of bounds, unsorted, too many). */
size_t
tly_distinct_encode(const tly_distinct_sets_t *sets, int64_t base_ms,
                    int (*keep)(const void *opaque, int64_t cycle_start_ms,
                                const char *feature),
                    const void *opaque, unsigned char *out, size_t out_size);
size_t tly_distinct_decode(const unsigned char *data, size_t len,
                           int64_t base_ms, tly_distinct_sets_t *sets);

/* The usage event's property value of key, or NULL. */
const char *tly_usage_property(const tly_usage_recorded_t *usage,
                               const char *key);

/* One event's step of the aggregated value: value (the row's quantity)
 * and *latest_at_ms (latest's instant; events already counted in the row:
 * events) become the value after an event of quantity at at_ms; for
 * unique_count, is_new says whether the event brings a new value. 0, or -1
 * when the value would overflow (nothing changed). */
int tly_meter_step(tly_aggregation_t aggregation, int64_t events,
                   int64_t *value, int64_t *latest_at_ms, int64_t quantity,
                   int64_t at_ms, int is_new);

/* The value the pre-check compares with the limit when a request of
 * quantity is made on top of used: used + quantity for sum, count (the
 * quantity is the events asked for) and unique_count (the new values
 * asked for); the larger of the two for max; quantity for latest (it
 * replaces the value). Saturates at INT64_MAX. */
int64_t tly_meter_value_after(tly_aggregation_t aggregation, int64_t used,
                              int64_t quantity);

/* The aggregation of a feature under config (sum without a meter). */
tly_aggregation_t tly_meter_aggregation(const tly_config_t *config,
                                        const char *feature);

#endif
