/*
 * tly_request_groups.h - answers broken down by dimension (group_by on
 * /usage and /usage/daily) and the analytics answers (top subjects,
 * breakdown), as pure functions: no socket, no store, no clock. The port
 * (tly_http_queries.c, tly_http_analytics.c) reads the buckets and calls
 * these; the unit tests call them directly.
 *
 * Groups are the hourly group buckets of tly_dims.h. A group of a
 * dimension holds exactly what its events added to the feature, so the
 * groups of one dimension sum to the feature's figures; a feature's hour
 * that has no group of the dimension asked for (a feature not grouped by
 * it, or hours folded before dimensions were kept) counts in the group
 * "none", so the parts always sum to the totals exactly.
 */
#ifndef TLY_REQUEST_GROUPS_H
#define TLY_REQUEST_GROUPS_H

#include "tly_billing.h"
#include "tly_config.h"
#include "tly_request.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* Analytics bounds: subjects scanned per instance and request (past it the
 * answer says complete: false), distinct group values in one answer (past
 * it values add to "other"), and limit's default and largest value. */
#define TLY_ANALYTICS_SCAN_MAX 100000
#define TLY_ANALYTICS_GROUPS_MAX 10000
#define TLY_ANALYTICS_LIMIT_DEFAULT 10
#define TLY_ANALYTICS_LIMIT_MAX 1000
#define TLY_ANALYTICS_LABEL_MAX 64

/* ?group_by (NULL: absent, *label set to ""): "model", "provider",
 * "properties.<key>", and "plan" when allow_plan. 0, or -1 (400 naming
 * the field group_by). */
int tly_req_parse_group_by(const char *text, int allow_plan, char *label,
                           tly_req_error_t *err);

/* Adds "groups": [{"value", the five figures}] (sorted by value) to every
 * feature of every day of a daily answer (tly_req_daily_json), from the
 * buckets (any hours; those of the answer's days count). 0, or -1 (out of
 * memory). */
int tly_req_daily_add_groups(json_t *daily, const char *label,
                             const tly_subject_bucket_t *buckets, size_t count);
/* The same for the features of a /usage answer, from the buckets of the
 * hours that overlap its cycle [start_ms, end_ms) ("group_by" is added to
 * the answer). */
int tly_req_usage_add_groups(json_t *usage, const char *label,
                             const tly_subject_bucket_t *buckets, size_t count,
                             int64_t start_ms, int64_t end_ms);
/* A daily answer with groups as CSV: the group column after feature, one
 * line per (date, feature, group). */
char *tly_req_daily_groups_csv(const json_t *daily);

/* ---- analytics --------------------------------------------------------- */

typedef enum {
  TLY_ANALYTICS_TOP = 0,
  TLY_ANALYTICS_BREAKDOWN = 1
} tly_analytics_kind_t;

typedef struct {
  tly_analytics_kind_t kind;
  char feature[TLY_CONFIG_NAME_MAX]; /* "": every feature */
  int by_cost;                       /* top: by cost_micros, else quantity */
  char group_by[TLY_ANALYTICS_LABEL_MAX]; /* breakdown */
  int64_t from_ms, to_ms; /* the hours starting in [from_ms, to_ms) count */
  size_t limit;           /* top */
} tly_analytics_query_t;

/* The query parameters (NULL: absent). from and to are dates YYYY-MM-DD
 * (both included) as on /usage/daily; absent, they default to the monthly
 * cycle of the config's anchor containing now_ms. 0, or -1 with the 400. */
int tly_req_parse_analytics(const tly_config_t *config,
                            tly_analytics_kind_t kind, const char *feature,
                            const char *by, const char *group_by,
                            const char *from, const char *to, const char *limit,
                            int64_t now_ms, tly_analytics_query_t *out,
                            tly_req_error_t *err);

/* One instance's part, built subject by subject. */
typedef struct tly_analytics_acc tly_analytics_acc_t;
tly_analytics_acc_t *tly_analytics_acc_new(const tly_analytics_query_t *query);
void tly_analytics_acc_free(tly_analytics_acc_t *acc);
/* Adds one subject: its plan and every bucket of its hours (its feature
 * and group buckets, in any order; each hour once). 0, or -1 (memory). */
int tly_analytics_acc_subject(tly_analytics_acc_t *acc, const char *subject,
                              const char *plan,
                              const tly_subject_bucket_t *buckets,
                              size_t count);
/* The part as JSON (top: the best `limit` subjects; breakdown: total and
 * every group), complete as given. NULL on out of memory. */
json_t *tly_analytics_acc_json(const tly_analytics_acc_t *acc, int complete);

/* The answer from the instances' parts (each tly_analytics_acc_json's
 * shape, as received): the documented answer, complete when every part
 * is. NULL with err (a malformed part: 502). */
json_t *tly_analytics_merge(const tly_analytics_query_t *query,
                            json_t *const *parts, size_t count,
                            tly_req_error_t *err);
/* The answers as CSV: subject,quantity,cost_micros,events and
 * value,quantity,cost_micros,events (the total is not a line). */
char *tly_req_analytics_csv(const json_t *answer);

#endif
