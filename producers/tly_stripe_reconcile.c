/*
 * tly_stripe_reconcile.c - reconciling a report intent older than Stripe's
 * identifier window against Stripe's meter event summaries (see
 * tly_stripe_reconcile.h).
 */
#include "tly_stripe_reconcile.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define METERS_PATH "/v1/billing/meters"
#define PAGE_LIMIT "100"
/* Pages of one listing, at most: a bound, not an expectation. */
#define MAX_PAGES 100

int tly_stripe_clock_offset_ms(int64_t *offset_ms, char *errstr,
                               size_t errstr_size) {
  const char *text = getenv(TLY_STRIPE_CLOCK_OFFSET_ENV);
  *offset_ms = 0;
  if (!text || !*text)
    return 0;
  char *end;
  errno = 0;
  long long value = strtoll(text, &end, 10);
  if (errno || *end) {
    snprintf(errstr, errstr_size, "%s: not a whole number of milliseconds",
             TLY_STRIPE_CLOCK_OFFSET_ENV);
    return -1;
  }
  *offset_ms = value;
  return 0;
}

tly_stripe_intent_phase_t tly_stripe_intent_phase(int64_t made_at_s,
                                                  int64_t now_s) {
  int64_t age = now_s - made_at_s;
  if (age < TLY_STRIPE_RESEND_FOR_S)
    return TLY_STRIPE_INTENT_SEND;
  if (age < TLY_STRIPE_RECONCILE_AFTER_S)
    return TLY_STRIPE_INTENT_WAIT;
  return TLY_STRIPE_INTENT_RECONCILE;
}

tly_stripe_verdict_t tly_stripe_reconcile_verdict(int64_t stripe_total,
                                                  int64_t reported,
                                                  int64_t pending) {
  if (pending > 0 && reported <= INT64_MAX - pending &&
      stripe_total == reported + pending)
    return TLY_STRIPE_IN_STRIPE;
  if (stripe_total == reported)
    return TLY_STRIPE_NOT_IN_STRIPE;
  return TLY_STRIPE_UNDETERMINED;
}

static int64_t floor_minute(int64_t t_s) {
  int64_t r = t_s % 60;
  return t_s - (r < 0 ? r + 60 : r);
}

void tly_stripe_reconcile_range(int64_t window_start_ms, int64_t window_ms,
                                int64_t timestamp_s, int64_t *start_s,
                                int64_t *end_s) {
  int64_t window_start_s = window_start_ms / 1000;
  int64_t from = floor_minute(timestamp_s);
  *start_s = from < window_start_s ? from : floor_minute(window_start_s);
  *end_s = floor_minute((window_start_ms + window_ms) / 1000);
  if (*end_s <= *start_s)
    *end_s = *start_s + 60;
}

/* ---- the queries ---------------------------------------------------------
 */

typedef struct {
  char *event_name;
  char *id;
} meter_id_t;

struct tly_stripe_reconciler {
  tly_stripe_client_t *client;
  meter_id_t *meters; /* found so far */
  size_t meter_count;
};

tly_stripe_reconciler_t *
tly_stripe_reconciler_new(tly_stripe_client_t *client) {
  tly_stripe_reconciler_t *r = calloc(1, sizeof(*r));
  if (r)
    r->client = client;
  return r;
}

void tly_stripe_reconciler_destroy(tly_stripe_reconciler_t *r) {
  if (!r)
    return;
  for (size_t i = 0; i < r->meter_count; i++) {
    free(r->meters[i].event_name);
    free(r->meters[i].id);
  }
  free(r->meters);
  free(r);
}

/* One GET: its JSON on OK (the caller's), or what went wrong. */
static tly_stripe_query_t get_json(tly_stripe_reconciler_t *r, const char *path,
                                   const tly_stripe_param_t *params,
                                   size_t count,
                                   tly_stripe_before_request_fn before_request,
                                   void *opaque, json_t **json,
                                   int64_t *retry_after_s, char *error,
                                   size_t error_size) {
  tly_stripe_response_t response;
  *json = NULL;
  if (before_request && before_request(opaque))
    return TLY_STRIPE_QUERY_STOPPED;
  int answered = tly_stripe_get(r->client, path, params, count, &response) == 0;
  long status = answered ? response.status : 0;
  tly_stripe_query_t result = TLY_STRIPE_QUERY_OK;
  *retry_after_s = response.retry_after_s;
  if (!answered) {
    snprintf(error, error_size, "GET %s: %s", path, response.error);
    result = TLY_STRIPE_QUERY_RETRY;
  } else if (status < 200 || status >= 300) {
    char message[256];
    tly_stripe_error_message(response.body, message, sizeof(message));
    snprintf(error, error_size, "GET %s: stripe answered %ld: %s", path, status,
             message);
    int transient = status == 429 || status >= 500 || status == 401 ||
                    status == 403 || status == 409;
    result = response.should_retry == 1 || transient ? TLY_STRIPE_QUERY_RETRY
                                                     : TLY_STRIPE_QUERY_FAILED;
  } else if (!(*json = json_loadb(response.body, response.body_len, 0, NULL)) ||
             !json_is_array(json_object_get(*json, "data"))) {
    snprintf(error, error_size, "GET %s: the answer is not a Stripe list",
             path);
    json_decref(*json);
    *json = NULL;
    result = TLY_STRIPE_QUERY_FAILED;
  }
  tly_stripe_response_clear(&response);
  return result;
}

/* The id of the meter of event_name: active, summing. */
static tly_stripe_query_t meter_id(tly_stripe_reconciler_t *r,
                                   const char *event_name,
                                   tly_stripe_before_request_fn before_request,
                                   void *opaque, const char **id,
                                   int64_t *retry_after_s, char *error,
                                   size_t error_size) {
  for (size_t i = 0; i < r->meter_count; i++)
    if (strcmp(r->meters[i].event_name, event_name) == 0) {
      *id = r->meters[i].id;
      return TLY_STRIPE_QUERY_OK;
    }
  char after[256] = "";
  for (int page = 0; page < MAX_PAGES; page++) {
    tly_stripe_param_t params[] = {
        {"status", "active"}, {"limit", PAGE_LIMIT}, {"starting_after", after}};
    json_t *list;
    tly_stripe_query_t result =
        get_json(r, METERS_PATH, params, after[0] ? 3 : 2, before_request,
                 opaque, &list, retry_after_s, error, error_size);
    if (result != TLY_STRIPE_QUERY_OK)
      return result;
    json_t *data = json_object_get(list, "data"), *meter;
    size_t i;
    const char *found = NULL, *formula = NULL;
    json_array_foreach(data, i, meter) {
      const char *name =
          json_string_value(json_object_get(meter, "event_name"));
      const char *status = json_string_value(json_object_get(meter, "status"));
      if (name && strcmp(name, event_name) == 0 &&
          (!status || strcmp(status, "active") == 0)) {
        found = json_string_value(json_object_get(meter, "id"));
        formula = json_string_value(json_object_get(
            json_object_get(meter, "default_aggregation"), "formula"));
        break;
      }
    }
    const char *last = json_string_value(
        json_object_get(json_array_get(data, json_array_size(data) - 1), "id"));
    int more = json_is_true(json_object_get(list, "has_more")) && last &&
               strlen(last) < sizeof(after);
    if (more)
      snprintf(after, sizeof(after), "%s", last);
    if (found && formula && strcmp(formula, "sum") != 0) {
      snprintf(error, error_size,
               "Stripe's meter of %s aggregates by %s, not sum: its "
               "summaries cannot confirm a delta",
               event_name, formula);
      json_decref(list);
      return TLY_STRIPE_QUERY_FAILED;
    }
    if (found) {
      meter_id_t *grown =
          realloc(r->meters, (r->meter_count + 1) * sizeof(*grown));
      char *name = strdup(event_name), *copy = strdup(found);
      json_decref(list);
      if (!grown || !name || !copy) {
        if (grown)
          r->meters = grown;
        free(name);
        free(copy);
        snprintf(error, error_size, "out of memory");
        return TLY_STRIPE_QUERY_RETRY;
      }
      r->meters = grown;
      r->meters[r->meter_count++] = (meter_id_t){name, copy};
      *id = copy;
      return TLY_STRIPE_QUERY_OK;
    }
    json_decref(list);
    if (!more)
      break;
  }
  snprintf(error, error_size, "Stripe has no active meter with event_name %s",
           event_name);
  return TLY_STRIPE_QUERY_FAILED;
}

/* A summary's aggregated_value as a whole number (Stripe sends a float). */
static int whole_value(json_t *value, int64_t *out) {
  if (json_is_integer(value)) {
    *out = (int64_t)json_integer_value(value);
    return 0;
  }
  if (!json_is_real(value))
    return -1;
  double v = json_real_value(value);
  /* Exact up to 2^53; beyond that a float cannot say which integer. */
  if (!isfinite(v) || v != floor(v) || fabs(v) > 9007199254740992.0)
    return -1;
  *out = (int64_t)v;
  return 0;
}

tly_stripe_query_t
tly_stripe_meter_total(tly_stripe_reconciler_t *r, const char *event_name,
                       const char *customer, int64_t start_s, int64_t end_s,
                       tly_stripe_before_request_fn before_request,
                       void *opaque, int64_t *total, int64_t *retry_after_s,
                       char *error, size_t error_size) {
  const char *id = NULL;
  *retry_after_s = -1;
  tly_stripe_query_t result = meter_id(r, event_name, before_request, opaque,
                                       &id, retry_after_s, error, error_size);
  if (result != TLY_STRIPE_QUERY_OK)
    return result;
  char path[512], start[24], end[24], after[256] = "";
  snprintf(path, sizeof(path), "%s/%s/event_summaries", METERS_PATH, id);
  snprintf(start, sizeof(start), "%" PRId64, start_s);
  snprintf(end, sizeof(end), "%" PRId64, end_s);
  *total = 0;
  for (int page = 0; page < MAX_PAGES; page++) {
    /* No value_grouping_window: one summary over the whole range. */
    tly_stripe_param_t params[] = {
        {"customer", customer}, {"start_time", start},     {"end_time", end},
        {"limit", PAGE_LIMIT},  {"starting_after", after},
    };
    json_t *list;
    result = get_json(r, path, params, after[0] ? 5 : 4, before_request, opaque,
                      &list, retry_after_s, error, error_size);
    if (result != TLY_STRIPE_QUERY_OK)
      return result;
    json_t *data = json_object_get(list, "data"), *summary;
    size_t i;
    json_array_foreach(data, i, summary) {
      int64_t value;
      if (whole_value(json_object_get(summary, "aggregated_value"), &value) ||
          value < 0 || *total > INT64_MAX - value) {
        snprintf(error, error_size,
                 "a meter event summary of %s has no whole aggregated_value",
                 event_name);
        json_decref(list);
        return TLY_STRIPE_QUERY_FAILED;
      }
      *total += value;
    }
    const char *last = json_string_value(
        json_object_get(json_array_get(data, json_array_size(data) - 1), "id"));
    int more = json_is_true(json_object_get(list, "has_more")) && last &&
               strlen(last) < sizeof(after);
    if (more)
      snprintf(after, sizeof(after), "%s", last);
    json_decref(list);
    if (!more)
      return TLY_STRIPE_QUERY_OK;
  }
  snprintf(error, error_size, "meter event summaries of %s: too many pages",
           event_name);
  return TLY_STRIPE_QUERY_FAILED;
}

int tly_stripe_reconcile_intent(tly_stripe_reconciler_t *r,
                                const tly_stripe_intent_t *intent,
                                const tly_stripe_hooks_t *hooks,
                                tly_stripe_verdict_t *verdict, int64_t *total,
                                char *reason, size_t reason_size) {
  char error[600];
  int64_t start_s, end_s;
  tly_stripe_reconcile_range(intent->window_start_ms, intent->window_ms,
                             intent->timestamp_s, &start_s, &end_s);
  *total = -1;
  reason[0] = '\0';
  for (int attempt = 0;; attempt++) {
    int64_t retry_after_s = -1, sum = 0;
    tly_stripe_query_t result =
        tly_stripe_meter_total(r, intent->event_name, intent->customer, start_s,
                               end_s, hooks->before_request, hooks->opaque,
                               &sum, &retry_after_s, error, sizeof(error));
    if (result == TLY_STRIPE_QUERY_STOPPED)
      return -1;
    if (result == TLY_STRIPE_QUERY_FAILED) {
      *verdict = TLY_STRIPE_UNDETERMINED;
      snprintf(reason, reason_size,
               "not confirmed after 24 h (%s); check Stripe before resending",
               error);
      return 0;
    }
    if (result == TLY_STRIPE_QUERY_OK) {
      *total = sum;
      *verdict =
          tly_stripe_reconcile_verdict(sum, intent->reported, intent->pending);
      if (*verdict == TLY_STRIPE_UNDETERMINED)
        snprintf(reason, reason_size,
                 "not confirmed after 24 h: Stripe's total of the window is "
                 "%" PRId64 ", tally reported %" PRId64 " before this delta "
                 "of %" PRId64 ": neither without it nor with it (the "
                 "customer has other usage); check Stripe before resending",
                 sum, intent->reported, intent->pending);
      return 0;
    }
    char what[800];
    snprintf(what, sizeof(what), "reconciling meter event %s: %s",
             intent->identifier, error);
    if (hooks->back_off(hooks->opaque, attempt, retry_after_s, what))
      return -1;
  }
}
