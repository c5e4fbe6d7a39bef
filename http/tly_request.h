/*
 * tly_request.h - the HTTP port's request parsing and answers, as pure
 * functions: no socket, no store, no clock (the caller passes now_ms).
 *
 * The port (tly_http.c and its handler files, tly_http_*.c) does the I/O
 * (libmicrohttpd, RocksDB through tly_state, Kafka) and calls these to turn
 * a path segment, query parameters or a JSON body into validated values,
 * and committed state into JSON answers. Being pure, they are what the unit
 * tests and the libFuzzer target (tests/fuzz/fuzz_http_request.c) exercise
 * directly.
 *
 * Errors fill a tly_req_error_t: the HTTP status, a stable code, the field
 * at fault (JSON path or query parameter, "" when the whole body is) and a
 * message that names it. tly_http.c renders it as
 *   {"error": {"code": ..., "message": ..., "field": ...}}.
 * Money and credits are integers (micro-units) throughout.
 */
#ifndef TLY_REQUEST_H
#define TLY_REQUEST_H

#include "tly_config.h"
#include "tly_event.h"
#include "tly_state.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* Longest subject (the "kind:id" path segment) the port accepts: the
 * longest kind ("anonymous:") and the longest id the event model allows
 * (TLY_SUBJECT_ID_MAX), so every subject that can be stored can be read. */
#define TLY_REQ_SUBJECT_MAX (10 + TLY_SUBJECT_ID_MAX)
/* Most events in one POST /v1/events body. */
#define TLY_REQ_EVENTS_MAX 10000

typedef struct {
  int status;      /* HTTP status: 400, 404, 413, ... */
  char code[32];   /* "bad_request", "unknown_feature", "unknown_plan", ... */
  char field[128]; /* the field at fault; "" for the whole request */
  char message[512];
} tly_req_error_t;

/* Fills err; returns -1 so callers can `return tly_req_fail(...)`. */
int tly_req_fail(tly_req_error_t *err, int status, const char *code,
                 const char *field, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* ---- subjects and features --------------------------------------------- */

typedef struct {
  tly_subject_kind_t kind;
  char id[TLY_REQ_SUBJECT_MAX + 1];
  char key[TLY_REQ_SUBJECT_MAX + 16]; /* "kind:id" */
} tly_req_subject_t;

/* A subject path segment, percent-decoded: "user:alice", "api_key:<sha256
 * hex>", "anonymous:fp", or a bare id (a user). A subject is UTF-8 and at
 * most TLY_REQ_SUBJECT_MAX bytes written as "kind:id". 0, or -1 (400,
 * field "subject"). */
int tly_req_parse_subject(const char *segment, tly_req_subject_t *out,
                          tly_req_error_t *err);

/* 1 when some plan of the config has a limit or a price for feature. */
int tly_req_feature_known(const tly_config_t *config, const char *feature);

/* ---- cycles ------------------------------------------------------------ */

/* The cycle to show at now_ms: the account's while it runs; once its end has
 * passed (the fold closes it only on the next event or tick), the cycle
 * that follows and contains now_ms, monthly from Stripe's last period end
 * when Stripe set the bounds, else from the config's anchor, exactly as the
 * fold will start it. account NULL: a subject with no state yet. Returns 1
 * when the account's cycle has ended (usage shows as reset), else 0. */
int tly_req_effective_cycle(const tly_config_t *config,
                            const tly_account_t *account, int64_t now_ms,
                            int64_t *start_ms, int64_t *end_ms);

/* The optional query parameter "at" of the subject routes: the time (epoch
 * ms) at which a cycle counts as ended, instead of now_ms (for audits,
 * backfills and tests of past cycles). Within the range of event times,
 * 0 .. 253402300799999 (tly_event_time.h). 0, or -1 (400, field "at"). */
int tly_req_parse_at(const char *text, int64_t now_ms, int64_t *out,
                     tly_req_error_t *err);

/* ---- GET /v1/subjects/{subject}/quota ---------------------------------- */

typedef struct {
  char feature[TLY_CONFIG_NAME_MAX];
  int64_t quantity; /* default 1 */
} tly_req_quota_query_t;

/* The query parameters: feature (required, known to the config) and
 * quantity (optional integer >= 0, default 1). NULL means absent. */
int tly_req_parse_quota(const tly_config_t *config, const char *feature,
                        const char *quantity, tly_req_quota_query_t *out,
                        tly_req_error_t *err);

typedef struct {
  int allowed;
  const char *reason;    /* "within_limit", "unlimited", "limit_exceeded",
                            "soft_limit_exceeded", "credits_exhausted" */
  const char *mode;      /* "hard", "soft" or "unlimited" */
  int64_t limit;         /* TLY_UNLIMITED when none */
  int64_t used;          /* this cycle, before the request */
  int64_t remaining;     /* after the request, >= 0; TLY_UNLIMITED when none */
  int64_t credits_used;  /* this cycle, before the request */
  int64_t credits_limit; /* TLY_UNLIMITED when none */
  int64_t credits_remaining; /* after the request (>= 0); -1 if unlimited */
} tly_req_quota_t;

/*
 * The pre-check, pure. used: the feature's quantity in the effective cycle;
 * cycle_cost_micros: that cycle's cost so far. Rules:
 *   - a feature without a limit, or an unlimited one, is always allowed;
 *   - otherwise used + quantity above the limit blocks under a hard limit
 *     and is allowed with a warning under a soft one;
 *   - a plan with a credit quota also blocks a request (quantity > 0) once
 *     the credits are used up, or when the request's own cost (the plan's
 *     tier price for used -> used + quantity; token features cost nothing
 *     here, their price depends on the model) would take them past it.
 */
void tly_req_quota_decide(const tly_config_t *config, const tly_plan_t *plan,
                          const char *feature, int64_t used,
                          int64_t cycle_cost_micros, int64_t quantity,
                          tly_req_quota_t *out);

/* The quota route's answer, computed once: tly_req_quota_answer_json
 * builds it with jansson, tly_req_quota_answer_text writes the same bytes
 * json_dumps(JSON_COMPACT) would write for that tree, straight into a
 * buffer (the pre-check's hot path; tly_json_text.h). A member added to
 * one goes into the other: a unit test compares them. The strings point
 * into the subject, query, config and quota it was computed from. */
typedef struct {
  const char *subject; /* "kind:id" */
  const char *feature;
  int64_t quantity;
  const char *plan;
  tly_req_quota_t quota; /* decided on used + held; quota.used and
                            quota.credits_used are the folded ones */
  int64_t held;          /* the feature's open reservations */
  int64_t credits_held;  /* what all open reservations would cost */
  const char *warning;   /* NULL: none (null) */
  int64_t cycle_start_ms, cycle_end_ms;
  int cycle_ended;
  int known_subject;
} tly_req_quota_answer_t;

/* state NULL: unknown subject, shown on its kind's default plan with
 * nothing used. 0, or -1 with err (500) when the subject's plan is missing
 * from the config. */
int tly_req_quota_answer(const tly_config_t *config,
                         const tly_req_subject_t *subject,
                         const tly_subject_state_t *state,
                         const tly_req_quota_query_t *query, int64_t now_ms,
                         tly_req_quota_answer_t *out, tly_req_error_t *err);
json_t *tly_req_quota_answer_json(const tly_req_quota_answer_t *answer);
/* malloc'd; NULL when out of memory or a string is not UTF-8 (the caller
 * falls back to tly_req_quota_answer_json). */
char *tly_req_quota_answer_text(const tly_req_quota_answer_t *answer);

/* The whole answer of the quota route (tly_req_quota_answer, then
 * tly_req_quota_answer_json). NULL with err (500) when the subject's plan
 * is missing from the config. */
json_t *tly_req_quota_json(const tly_config_t *config,
                           const tly_req_subject_t *subject,
                           const tly_subject_state_t *state,
                           const tly_req_quota_query_t *query, int64_t now_ms,
                           tly_req_error_t *err);

/* ---- GET /v1/subjects/{subject}/usage ---------------------------------- */

/* What both writers of the usage answer start from: the subject's plan
 * (NULL when the config no longer has it), the cycle as of now, and its
 * cost and credits (0 once the cycle ended). */
typedef struct {
  const tly_plan_t *plan;
  int64_t start_ms, end_ms;
  int ended;
  int64_t cost_micros, credits_used;
} tly_req_usage_head_t;
void tly_req_usage_head(const tly_config_t *config,
                        const tly_subject_state_t *state, int64_t now_ms,
                        tly_req_usage_head_t *head);

/* The usage answer from committed state (state must be found). */
json_t *tly_req_usage_json(const tly_config_t *config,
                           const tly_req_subject_t *subject,
                           const tly_subject_state_t *state, int64_t now_ms);
/* The same answer as text, byte for byte json_dumps(JSON_COMPACT) of the
 * tree above (beside it in tly_request_usage.c): a string that is not UTF-8
 * gives NULL and the caller builds the tree. malloc'd. */
char *tly_req_usage_text(const tly_config_t *config,
                         const tly_req_subject_t *subject,
                         const tly_subject_state_t *state, int64_t now_ms);
/* used as a whole percentage of limit (100 past a limit of 0 or below
 * once anything is used), rounded down. */
int64_t tly_req_percent_of(int64_t used, int64_t limit);
/* One feature's usage row as the usage answers show it (quantity, tokens,
 * events, cost), and the plan's limit fields added to such an entry
 * (limit, mode, remaining, percent, exceeded): shared by the usage, cycles
 * and estimate answers (tly_request_usage.c). */
json_t *tly_req_usage_entry(const tly_billing_row_t *row);
void tly_req_limit_fields(json_t *entry, const tly_plan_t *plan,
                          const char *feature, int64_t quantity);

/* ---- GET /v1/plans, POST /v1/estimate, POST /v1/prorate ----------------- */

json_t *tly_req_plans_json(const tly_config_t *config);

/* Body: {"plan": P, "usage": {feature: quantity, ...},
 *        "ai": [{"model": M, "input_tokens": I, "output_tokens": O,
 *                "feature": "ai_tokens"}]}. The answer or NULL with err. */
json_t *tly_req_estimate(const tly_config_t *config, const char *body,
                         size_t len, tly_req_error_t *err);

/* Body: {"from_plan": A, "to_plan": B, "change_date": "YYYY-MM-DD",
 *        "cycle_start": "YYYY-MM-DD", "cycle_end": "YYYY-MM-DD"} (the cycle
 * is optional: by default the monthly cycle containing change_date). The
 * answer or NULL with err. Rounding: see tly_req_prorate_amount. */
json_t *tly_req_prorate(const tly_config_t *config, const char *body,
                        size_t len, tly_req_error_t *err);

/* base_micros * remaining_ms / total_ms rounded half up to a whole
 * micro-unit (exact, 128-bit intermediate). -1 when the result does not
 * fit (it cannot when remaining_ms <= total_ms). */
int64_t tly_req_prorate_amount(int64_t base_micros, int64_t remaining_ms,
                               int64_t total_ms);

/* "YYYY-MM-DD" -> 00:00:00 UTC of that day in ms. 0 or -1. */
int tly_req_parse_date(const char *text, int64_t *out_ms);

/* ---- the usage history: daily buckets, closed cycles, alerts ------------- */

#define TLY_REQ_DAILY_MAX_DAYS 366 /* widest from..to range, both included */
#define TLY_REQ_ALERTS_DEFAULT 50
#define TLY_REQ_ALERTS_MAX 1000

/* ?from=YYYY-MM-DD&to=YYYY-MM-DD (both required, from <= to, at most
 * TLY_REQ_DAILY_MAX_DAYS days) as day numbers. 0, or -1 (400 naming the
 * field). */
int tly_req_parse_daily(const char *from, const char *to, int32_t *from_day,
                        int32_t *to_day, tly_req_error_t *err);

/* "YYYY-MM-DD" of a day number; out holds 11 bytes. */
void tly_req_format_day(int32_t day, char out[16]);

/* The UTC day (days since the epoch) of an hour bucket. */
int32_t tly_req_day_of_hour(int32_t hour);

/* The daily answer: the hourly buckets on days [from_day, to_day] (in any
 * order; others are left out) summed per day and feature, oldest day
 * first. Sums saturate at INT64_MAX (and INT64_MIN) instead of wrapping:
 * one day may hold the hours of two cycles, each near the limit. */
json_t *tly_req_daily_json(const tly_config_t *config,
                           const tly_req_subject_t *subject,
                           const tly_subject_bucket_t *buckets, size_t count,
                           int32_t from_day, int32_t to_day);

/* A closed cycle and its usage rows (borrowed), for the cycles answer. */
typedef struct {
  tly_cycle_t cycle;
  int final; /* archived: no late event can change it any more */
  const tly_subject_row_t *rows;
  size_t row_count;
} tly_req_cycle_t;

/* The closed cycles, newest first (sorts cycles in place), with totals,
 * credits and per-feature usage. */
/* CSV (tly_request_csv.c): whether an Accept header asks for text/csv,
 * and the daily and cycles answers (their JSON above) as CSV text, one
 * line per (day or cycle, feature) under a header line; malloc'd, NULL
 * when out of memory. */
int tly_req_wants_csv(const char *accept);
char *tly_req_daily_csv(const json_t *daily);
char *tly_req_cycles_csv(const json_t *cycles);

json_t *tly_req_cycles_json(const tly_config_t *config,
                            const tly_req_subject_t *subject,
                            tly_req_cycle_t *cycles, size_t count);

/* ?limit=N for /alerts: 1..TLY_REQ_ALERTS_MAX, default
 * TLY_REQ_ALERTS_DEFAULT. 0, or -1 (400, field "limit"). */
int tly_req_parse_limit(const char *text, int64_t *out, tly_req_error_t *err);

/* One alert as JSON (the alerts topic's fields). */
json_t *tly_req_alert_json(const tly_alert_t *alert);

/* ---- POST /v1/events and POST /v1/subjects/{subject}/plan --------------- */

typedef struct {
  int ok;            /* 1: event is valid and may be produced */
  tly_event_t event; /* owned; valid when ok */
  tly_req_error_t error;
} tly_req_event_t;

typedef struct {
  size_t count;
  tly_req_event_t *items;
} tly_req_events_t;

/* Body: one event object or an array of them (the format of
 * tly_event_json.h, as `tally emit` reads it); each item is validated on
 * its own, its occurred_at at most events.max_future_skew_ms after now_ms
 * (tly_event_time.h), and what the fold would dead-letter is refused here
 * (400): a plan an event names must exist in the config, an AI model must
 * have a price unless pricing.unknown_model is "fallback", and the subject
 * must be one the port can address (tly_req_parse_subject's rules). -1 (and
 * nothing to free) only when the body as a whole is unusable: not JSON, not
 * an object or array, empty, or too many events. */
int tly_req_parse_events(const tly_config_t *config, const char *body,
                         size_t len, int64_t now_ms, tly_req_events_t *out,
                         tly_req_error_t *err);
void tly_req_events_clear(tly_req_events_t *events);

/* Body: {"plan": P, "event_id": optional, "occurred_at": optional}. Fills a
 * PlanAssigned event for subject (owned by the caller: tly_event_clear);
 * default_event_id is used when the body has none. 0 or -1. */
int tly_req_parse_plan(const tly_config_t *config,
                       const tly_req_subject_t *subject, const char *body,
                       size_t len, int64_t now_ms, const char *default_event_id,
                       tly_event_t *out, tly_req_error_t *err);

#endif
