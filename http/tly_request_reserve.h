/*
 * tly_request_reserve.h - reservations and the quota counting holds, as
 * pure functions (no socket, no store, no clock: now_ms is an argument),
 * like tly_request.h whose errors and subjects they share.
 *
 *   POST /v1/subjects/{subject}/reservations
 *        {"feature": "api_calls", "quantity": 1, "ttl_s": 300}
 *   DELETE /v1/subjects/{subject}/reservations/{reservation_id}
 *
 * The decision is the pre-check's (tly_req_quota_decide) on used + held:
 * used is the feature's folded usage in the effective cycle, held the
 * quantities of the subject's open holds of that feature (tly_holds.h:
 * folded ones still open at now_ms, plus the caller's extra ones, e.g. the
 * grants it produced that are not folded yet). Holds of priced features
 * also count against the plan's credits at their tier price.
 */
#ifndef TLY_REQUEST_RESERVE_H
#define TLY_REQUEST_RESERVE_H

#include "tly_holds.h"
#include "tly_request.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* ttl_s of a reservation: 1 s .. 24 h (TLY_RESERVATION_TTL_*_MS), default
 * 5 minutes. */
#define TLY_REQ_RESERVATION_TTL_DEFAULT_S 300

typedef struct {
  char feature[TLY_CONFIG_NAME_MAX];
  int64_t quantity; /* 1 .. TLY_RESERVATION_QUANTITY_MAX */
  int64_t ttl_ms;   /* TLY_RESERVATION_TTL_MIN_MS .. _MAX_MS */
} tly_req_reservation_t;

/* The POST body: feature (required, known to the config: 400
 * unknown_feature), quantity (required integer 1 .. 10^12), ttl_s
 * (optional integer 1 .. 86400, default 300); other keys are refused.
 * 0, or -1 with a 400 naming the field. */
int tly_req_parse_reservation(const tly_config_t *config, const char *body,
                              size_t len, tly_req_reservation_t *out,
                              tly_req_error_t *err);

/* The {reservation_id} path segment (raw): 1 .. 64 characters of
 * [A-Za-z0-9_-]. 0, or -1 (400, field "reservation_id"). */
int tly_req_parse_reservation_id(const char *segment, size_t len, char *out,
                                 size_t out_size, tly_req_error_t *err);

/* The quota of one feature with the subject's holds counted. */
typedef struct {
  const tly_plan_t *plan;
  tly_req_quota_t quota; /* decided on used + held; quota.used and
                            quota.credits_used are the folded ones */
  int64_t held;          /* the feature's open holds */
  int64_t credits_held;  /* what all open holds would cost, in credits */
  size_t open;           /* the subject's open holds, every feature */
  int64_t start_ms, end_ms;
  int ended;
} tly_req_held_quota_t;

/* state NULL: a subject with no state yet (its kind's default plan).
 * extra: holds known to the caller beyond the folded ones (one whose id is
 * folded already counts once). 0, or -1 with err (500 plan_missing). */
int tly_req_quota_held(const tly_config_t *config, tly_subject_kind_t kind,
                       const tly_subject_state_t *state,
                       const tly_hold_t *extra, size_t extra_count,
                       const char *feature, int64_t quantity, int64_t now_ms,
                       tly_req_held_quota_t *out, tly_req_error_t *err);

/* Adds the decision's members to answer: allowed, reason, warning, plan,
 * mode, limit, used, held, remaining, credits {used, held, limit,
 * remaining}, cycle {start_ms, end_ms}, cycle_ended. 0, or -1 (OOM). */
int tly_req_held_quota_put(json_t *answer, const tly_req_held_quota_t *q);

#endif
