/*
 * tly_request_reserve.c - reservations' bodies and the quota counting
 * holds, pure (see tly_request_reserve.h). Client bytes are parsed here so
 * the request fuzz target can reach them; every number is an integer
 * checked for range.
 */
#include "tly_request_reserve.h"

#include "tly_billing.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

/* ---- bodies ------------------------------------------------------------ */

/* An integer member in [min, max]; 0 absent, 1 read, -1 with err. */
static int get_bounded(const json_t *object, const char *key, int64_t min,
                       int64_t max, int64_t *out, tly_req_error_t *err) {
  const json_t *value = json_object_get(object, key);
  if (!value)
    return 0;
  if (!json_is_integer(value) || json_integer_value(value) < min ||
      json_integer_value(value) > max)
    return tly_req_fail(err, 400, "bad_request", key,
                        "field '%s': must be an integer from %lld to %lld", key,
                        (long long)min, (long long)max);
  *out = (int64_t)json_integer_value(value);
  return 1;
}

int tly_req_parse_reservation(const tly_config_t *config, const char *body,
                              size_t len, tly_req_reservation_t *out,
                              tly_req_error_t *err) {
  static const char *const keys[] = {"feature", "quantity", "ttl_s", NULL};
  json_error_t error;
  json_t *root = NULL;
  int rc = -1;
  memset(out, 0, sizeof(*out));
  if (!body || !len)
    return tly_req_fail(err, 400, "malformed_json", "", "request body: empty");
  root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &error);
  if (!root)
    return tly_req_fail(err, 400, "malformed_json", "",
                        "request body: invalid JSON at line %d column %d: %s",
                        error.line, error.column, error.text);
  if (!json_is_object(root)) {
    tly_req_fail(err, 400, "bad_request", "",
                 "request body: must be a JSON object");
    goto done;
  }
  const char *key;
  json_t *value;
  json_object_foreach(root, key, value) {
    size_t i = 0;
    while (keys[i] && strcmp(keys[i], key) != 0)
      i++;
    if (!keys[i]) {
      /* The key may be any bytes: name it in the message, not the field. */
      tly_req_fail(err, 400, "bad_request", "",
                   "unknown field '%.64s' (expected feature, quantity, ttl_s)",
                   key);
      goto done;
    }
  }
  const json_t *feature = json_object_get(root, "feature");
  if (!feature) {
    tly_req_fail(err, 400, "bad_request", "feature",
                 "field 'feature': required");
    goto done;
  }
  if (!json_is_string(feature) || !json_string_length(feature) ||
      strlen(json_string_value(feature)) != json_string_length(feature)) {
    tly_req_fail(err, 400, "bad_request", "feature",
                 "field 'feature': must be a non-empty string");
    goto done;
  }
  const char *name = json_string_value(feature);
  if (strlen(name) >= sizeof(out->feature) ||
      !tly_req_feature_known(config, name)) {
    tly_req_fail(err, 400, "unknown_feature", "feature",
                 "field 'feature': no plan has a limit or a price for '%.64s'",
                 name);
    goto done;
  }
  snprintf(out->feature, sizeof(out->feature), "%s", name);
  int got = get_bounded(root, "quantity", 1, TLY_RESERVATION_QUANTITY_MAX,
                        &out->quantity, err);
  if (got < 0)
    goto done;
  if (!got) {
    tly_req_fail(err, 400, "bad_request", "quantity",
                 "field 'quantity': required");
    goto done;
  }
  int64_t ttl_s = TLY_REQ_RESERVATION_TTL_DEFAULT_S;
  if (get_bounded(root, "ttl_s", TLY_RESERVATION_TTL_MIN_MS / 1000,
                  TLY_RESERVATION_TTL_MAX_MS / 1000, &ttl_s, err) < 0)
    goto done;
  out->ttl_ms = ttl_s * 1000;
  rc = 0;
done:
  json_decref(root);
  return rc;
}

int tly_req_parse_reservation_id(const char *segment, size_t len, char *out,
                                 size_t out_size, tly_req_error_t *err) {
  char id[TLY_RESERVATION_ID_MAX + 1];
  if (len && len <= TLY_RESERVATION_ID_MAX && len < out_size) {
    memcpy(id, segment, len);
    id[len] = '\0';
    if (strlen(id) == len && tly_reservation_id_is_valid(id)) {
      memcpy(out, id, len + 1);
      return 0;
    }
  }
  return tly_req_fail(err, 400, "bad_request", "reservation_id",
                      "path segment 'reservation_id': must be 1 to %d "
                      "characters of A-Z, a-z, 0-9, '_' and '-'",
                      TLY_RESERVATION_ID_MAX);
}

/* ---- the quota counting holds ------------------------------------------ */

/* The open holds at now_ms of both lists, into *out (malloc'd; an extra
 * hold already folded is left out). The count, or -1 when out of memory. */
static ssize_t open_holds(const tly_subject_state_t *state,
                          const tly_hold_t *extra, size_t extra_count,
                          int64_t now_ms, const tly_hold_t ***out) {
  const tly_hold_t *folded = state ? state->holds : NULL;
  size_t folded_count = state ? state->hold_count : 0, count = 0;
  *out = NULL;
  if (!folded_count && !extra_count)
    return 0;
  const tly_hold_t **open =
      malloc((folded_count + extra_count) * sizeof(*open));
  if (!open)
    return -1;
  for (size_t j = 0; j < folded_count; j++)
    if (folded[j].expires_at_ms > now_ms)
      open[count++] = &folded[j];
  for (size_t j = 0; j < extra_count; j++)
    if (extra[j].expires_at_ms > now_ms &&
        tly_holds_find(folded, folded_count, extra[j].id) < 0)
      open[count++] = &extra[j];
  *out = open;
  return (ssize_t)count;
}

static int64_t sat_add(int64_t a, int64_t b) {
  int64_t sum;
  return __builtin_add_overflow(a, b, &sum) ? INT64_MAX : sum;
}

/* The folded usage of feature in the cycle starting at start_ms. */
static int64_t used_of(const tly_subject_state_t *state, int64_t start_ms,
                       const char *feature) {
  for (size_t i = 0; state && i < state->row_count; i++)
    if (state->rows[i].cycle_start_ms == start_ms &&
        strcmp(state->rows[i].feature, feature) == 0)
      return state->rows[i].row.quantity;
  return 0;
}

int tly_req_quota_held(const tly_config_t *config, tly_subject_kind_t kind,
                       const tly_subject_state_t *state,
                       const tly_hold_t *extra, size_t extra_count,
                       const char *feature, int64_t quantity, int64_t now_ms,
                       tly_req_held_quota_t *out, tly_req_error_t *err) {
  const tly_account_t *account = state ? &state->account : NULL;
  const char *plan_name = account ? account->plan : config->default_plan[kind];
  memset(out, 0, sizeof(*out));
  out->plan = tly_config_plan(config, plan_name);
  if (!out->plan)
    return tly_req_fail(err, 500, "plan_missing", "",
                        "the subject's plan '%s' is not in the configuration",
                        plan_name);
  out->ended = tly_req_effective_cycle(config, account, now_ms, &out->start_ms,
                                       &out->end_ms);
  const tly_subject_state_t *current = account && !out->ended ? state : NULL;
  int64_t used = used_of(current, out->start_ms, feature);
  int64_t cost = current ? account->cycle.cost_micros : 0;

  /* Each feature's holds, summed once per feature (at its first hold):
   * the limit's held quantity, and the credits they would cost at the
   * plan's tier prices. */
  const tly_hold_t **open = NULL;
  ssize_t open_count = open_holds(state, extra, extra_count, now_ms, &open);
  if (open_count < 0)
    return tly_req_fail(err, 500, "internal", "", "out of memory");
  int64_t held_cost = 0;
  out->open = (size_t)open_count;
  for (size_t i = 0; i < out->open; i++) {
    const char *name = open[i]->feature;
    int first = 1;
    for (size_t j = 0; j < i && first; j++)
      first = strcmp(open[j]->feature, name) != 0;
    if (!first)
      continue;
    int64_t held = 0;
    for (size_t j = i; j < out->open; j++)
      if (strcmp(open[j]->feature, name) == 0)
        held = sat_add(held, open[j]->quantity);
    if (strcmp(name, feature) == 0)
      out->held = held;
    const tly_feature_price_t *price = tly_plan_price(out->plan, name);
    if (!price)
      continue;
    int64_t feature_used = used_of(current, out->start_ms, name);
    int64_t before = tly_billing_tier_cost(price, feature_used);
    int64_t after = tly_billing_tier_cost(price, sat_add(feature_used, held));
    held_cost = before < 0 || after < 0 ? INT64_MAX
                                        : sat_add(held_cost, after - before);
  }
  free(open);
  tly_req_quota_decide(config, out->plan, feature, sat_add(used, out->held),
                       sat_add(cost, held_cost), quantity, &out->quota);
  out->quota.used = used;
  out->quota.credits_used = cost / config->micros_per_credit;
  out->credits_held = sat_add(cost, held_cost) / config->micros_per_credit -
                      out->quota.credits_used;
  return 0;
}

static json_t *integer_or_null(int64_t value) {
  return value == TLY_UNLIMITED ? json_null() : json_integer(value);
}

int tly_req_held_quota_put(json_t *answer, const tly_req_held_quota_t *q) {
  const tly_req_quota_t *quota = &q->quota;
  json_t *warning =
      strcmp(quota->reason, "soft_limit_exceeded") == 0
          ? json_string("over the soft limit: allowed, and billed")
          : json_null();
  json_t *credits = json_pack(
      "{s:I,s:I,s:o,s:o}", "used", (json_int_t)quota->credits_used, "held",
      (json_int_t)q->credits_held, "limit",
      integer_or_null(quota->credits_limit), "remaining",
      quota->credits_remaining < 0 ? json_null()
                                   : json_integer(quota->credits_remaining));
  json_t *members = json_pack(
      "{s:b,s:s,s:o,s:s,s:s,s:o,s:I,s:I,s:o,s:o,s:{s:I,s:I},s:b}", "allowed",
      quota->allowed, "reason", quota->reason, "warning", warning, "plan",
      q->plan->name, "mode", quota->mode, "limit",
      integer_or_null(quota->limit), "used", (json_int_t)quota->used, "held",
      (json_int_t)q->held, "remaining", integer_or_null(quota->remaining),
      "credits", credits, "cycle", "start_ms", (json_int_t)q->start_ms,
      "end_ms", (json_int_t)q->end_ms, "cycle_ended", q->ended);
  int rc = members ? json_object_update(answer, members) : -1;
  json_decref(members);
  return rc ? -1 : 0;
}
