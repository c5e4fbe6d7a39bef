/*
 * stripe_fake.c - the Stripe-shaped test server (see stripe_fake.h for what
 * it answers); tests/harness/stripe_fake_harness.c runs it as a separate
 * process.
 *
 * One thread per connection (libmicrohttpd), so an injected hang holds only
 * its own connection; all state (customers, identifiers, the ledger and
 * its events, meters, the idempotency records, faults, the clock offset,
 * the request log) sits behind one mutex, and an endpoint runs start to
 * finish under it, so concurrent retries of one Idempotency-Key see either
 * nothing, the whole first result, or (while a "processing_ms" request
 * still runs) 409 idempotency_key_in_use.
 */
#include "stripe_fake.h"
#include "stripe_fake_internal.h"

#include "harness.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if MHD_VERSION < 0x00097002
typedef int sf_mhd_result;
#else
typedef enum MHD_Result sf_mhd_result;
#endif

#define BODY_MAX 65536
#define LOG_MAX 200
#define METER_WINDOW_PAST_S (35LL * 86400) /* Stripe: 35 calendar days */
#define METER_WINDOW_FUTURE_S 300          /* Stripe: 5 minutes ahead */
/* Stripe: identifiers unique within a rolling 24 hours; idempotency keys
 * kept at least 24 hours (the fake forgets both then). */
#define IDENTIFIER_TTL_S 86400LL
#define IDEMPOTENCY_TTL_S 86400LL

/* The types and shared helpers are stripe_fake_internal.h's. */

/* ---- small helpers ------------------------------------------------------ */

/* The fake's clock (under the lock, or where a stale read is harmless). */
int64_t sf_now_s(const sf_server_t *server) {
  return (int64_t)time(NULL) + server->clock_offset_s;
}

void sf_answer_json(answer_t *answer, int status, json_t *json) {
  answer->status = status;
  answer->body = json_dumps(json, JSON_COMPACT | JSON_SORT_KEYS);
  json_decref(json);
}

/* Stripe's error shape; code and param may be NULL. */
void sf_answer_error(answer_t *answer, int status, const char *type,
                     const char *code, const char *param, const char *message) {
  json_t *error = json_pack("{s:s,s:s}", "type", type, "message", message);
  if (code)
    json_object_set_new(error, "code", json_string(code));
  if (param)
    json_object_set_new(error, "param", json_string(param));
  sf_answer_json(answer, status, json_pack("{s:o}", "error", error));
}

static int hex_value(int c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  c = tolower(c);
  return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Percent-decoding of one form component ('+' is a space). NULL if bad. */
static char *form_decode(const char *text, size_t len) {
  char *out = malloc(len + 1);
  size_t n = 0;
  for (size_t i = 0; i < len; i++) {
    if (text[i] == '+') {
      out[n++] = ' ';
    } else if (text[i] == '%') {
      int high = i + 2 < len ? hex_value((unsigned char)text[i + 1]) : -1;
      int low = i + 2 < len ? hex_value((unsigned char)text[i + 2]) : -1;
      if (high < 0 || low < 0) {
        free(out);
        return NULL;
      }
      out[n++] = (char)(high * 16 + low);
      i += 2;
    } else {
      out[n++] = text[i];
    }
  }
  out[n] = '\0';
  return out;
}

static void params_clear(params_t *params) {
  for (size_t i = 0; i < params->count; i++) {
    free(params->items[i].key);
    free(params->items[i].value);
  }
  free(params->items);
  memset(params, 0, sizeof(*params));
}

/* application/x-www-form-urlencoded; 0 or -1 (malformed). */
static int form_parse(const char *body, size_t len, params_t *out) {
  memset(out, 0, sizeof(*out));
  const char *p = body, *end = body + len;
  while (p < end) {
    const char *amp = memchr(p, '&', (size_t)(end - p));
    const char *stop = amp ? amp : end;
    if (stop > p) {
      const char *eq = memchr(p, '=', (size_t)(stop - p));
      const char *key_end = eq ? eq : stop;
      char *key = form_decode(p, (size_t)(key_end - p));
      char *value =
          eq ? form_decode(eq + 1, (size_t)(stop - eq - 1)) : strdup("");
      if (!key || !value || !*key) {
        free(key);
        free(value);
        params_clear(out);
        return -1;
      }
      out->items = realloc(out->items, (out->count + 1) * sizeof(param_t));
      out->items[out->count++] = (param_t){key, value};
    }
    p = stop + 1;
  }
  return 0;
}

/* The last value of key, or NULL. */
const char *sf_param(const params_t *params, const char *key) {
  const char *value = NULL;
  for (size_t i = 0; i < params->count; i++)
    if (strcmp(params->items[i].key, key) == 0)
      value = params->items[i].value;
  return value;
}

static int compare_params(const void *a, const void *b) {
  const param_t *x = a, *y = b;
  int c = strcmp(x->key, y->key);
  return c ? c : strcmp(x->value, y->value);
}

/* What makes two requests "the same" for an Idempotency-Key: method, path
 * and the parameters (in any order). malloc'd. */
static char *fingerprint(const char *method, const char *path,
                         const params_t *params) {
  param_t *sorted = malloc((params->count + 1) * sizeof(*sorted));
  if (params->count) { /* a DELETE may have none: items is NULL then */
    memcpy(sorted, params->items, params->count * sizeof(*sorted));
    qsort(sorted, params->count, sizeof(*sorted), compare_params);
  }
  json_t *json = json_pack("[s,s]", method, path);
  for (size_t i = 0; i < params->count; i++)
    json_array_append_new(json,
                          json_pack("[s,s]", sorted[i].key, sorted[i].value));
  free(sorted);
  char *text = json_dumps(json, JSON_COMPACT);
  json_decref(json);
  return text;
}

int sf_known(char **list, size_t count, const char *id) {
  for (size_t i = 0; i < count; i++)
    if (strcmp(list[i], id) == 0)
      return 1;
  return 0;
}

int sf_parse_integer(const char *text, long long *out) {
  char *end;
  if (!text || !*text || strlen(text) > 19 ||
      !(isdigit((unsigned char)text[0]) || text[0] == '-'))
    return -1;
  *out = strtoll(text, &end, 10);
  return *end ? -1 : 0;
}

/* ---- endpoints (run under the lock) ------------------------------------- */

/* 1 when a required parameter is missing (answer filled). */
int sf_require(const params_t *params, const char *const *names,
               answer_t *answer) {
  for (size_t i = 0; names[i]; i++) {
    const char *value = sf_param(params, names[i]);
    if (value && *value)
      continue;
    char message[160];
    snprintf(message, sizeof(message), "Missing required param: %s.", names[i]);
    sf_answer_error(answer, 400, "invalid_request_error", "parameter_missing",
                    names[i], message);
    return 1;
  }
  return 0;
}

/* Parameter validation of a meter event: 1 with answer filled when it
 * fails (such answers are not kept for an Idempotency-Key). */
static int meter_event_invalid(const sf_server_t *server,
                               const params_t *params, long long *value,
                               long long *timestamp, answer_t *answer) {
  static const char *const required[] = {
      "event_name", "payload[stripe_customer_id]", "payload[value]", NULL};
  if (sf_require(params, required, answer))
    return 1;
  if (sf_parse_integer(sf_param(params, "payload[value]"), value)) {
    sf_answer_error(answer, 400, "invalid_request_error",
                    "parameter_invalid_integer", "payload[value]",
                    "Invalid integer: payload[value] must be a whole number.");
    return 1;
  }
  const char *ts = sf_param(params, "timestamp");
  *timestamp = sf_now_s(server);
  if (ts && sf_parse_integer(ts, timestamp)) {
    sf_answer_error(answer, 400, "invalid_request_error",
                    "parameter_invalid_integer", "timestamp",
                    "Invalid integer: timestamp.");
    return 1;
  }
  if (*timestamp < sf_now_s(server) - METER_WINDOW_PAST_S) {
    sf_answer_error(answer, 400, "invalid_request_error",
                    "timestamp_too_far_in_past", "timestamp",
                    "Timestamp must be within the past 35 calendar days.");
    return 1;
  }
  if (*timestamp > sf_now_s(server) + METER_WINDOW_FUTURE_S) {
    sf_answer_error(answer, 400, "invalid_request_error", "timestamp_in_future",
                    "timestamp",
                    "Timestamp must be no more than 5 minutes in the future.");
    return 1;
  }
  return 0;
}

void sf_unknown_customer(answer_t *answer, const char *param_name,
                         const char *customer) {
  char message[256];
  snprintf(message, sizeof(message), "No such customer: '%.200s'", customer);
  sf_answer_error(answer, 400, "invalid_request_error", "resource_missing",
                  param_name, message);
}

static void add_to_ledger(sf_server_t *server, const char *customer,
                          const char *event_name, long long value) {
  for (size_t i = 0; i < server->ledger_count; i++) {
    ledger_row_t *row = &server->ledger[i];
    if (strcmp(row->customer, customer) == 0 &&
        strcmp(row->event_name, event_name) == 0) {
      row->sum += value;
      row->count++;
      return;
    }
  }
  GROW(server->ledger, server->ledger_count, server->ledger_cap);
  server->ledger[server->ledger_count++] =
      (ledger_row_t){strdup(customer), strdup(event_name), value, 1};
}

/* Returns 1 when the answer may be kept for an Idempotency-Key. */
static int meter_event(sf_server_t *server, const char *path,
                       const params_t *params, answer_t *answer) {
  (void)path;
  long long value, timestamp;
  if (meter_event_invalid(server, params, &value, &timestamp, answer))
    return 0;
  const char *customer = sf_param(params, "payload[stripe_customer_id]");
  const char *event_name = sf_param(params, "event_name");
  const char *given = sf_param(params, "identifier");
  char identifier[128];
  if (given && *given)
    snprintf(identifier, sizeof(identifier), "%s", given);
  else
    snprintf(identifier, sizeof(identifier), "mev_fake_%lld",
             ++server->next_id);
  if (!sf_known(server->customers, server->customer_count, customer)) {
    sf_unknown_customer(answer, "payload[stripe_customer_id]", customer);
    return 1;
  }
  identifier_t *seen = NULL;
  for (size_t i = 0; i < server->identifier_count && !seen; i++)
    if (strcmp(server->identifiers[i].id, identifier) == 0)
      seen = &server->identifiers[i];
  if (seen && sf_now_s(server) - seen->seen_s < IDENTIFIER_TTL_S) {
    char message[256];
    snprintf(message, sizeof(message),
             "An event already exists with identifier %s.", identifier);
    sf_answer_error(answer, 400, "invalid_request_error", NULL, NULL, message);
    answer->should_retry = 0;
    return 1;
  }
  if (seen) { /* unique for 24 hours only: this one counts again */
    seen->seen_s = sf_now_s(server);
  } else {
    GROW(server->identifiers, server->identifier_count, server->identifier_cap);
    server->identifiers[server->identifier_count++] =
        (identifier_t){strdup(identifier), sf_now_s(server)};
  }
  add_to_ledger(server, customer, event_name, value);
  GROW(server->events, server->event_count, server->event_cap);
  server->events[server->event_count++] =
      (event_t){strdup(customer), strdup(event_name), value, timestamp};
  sf_answer_json(answer, 200,
                 json_pack("{s:s,s:I,s:s,s:s,s:b,s:{s:s,s:s},s:I}", "object",
                           "billing.meter_event", "created",
                           (json_int_t)sf_now_s(server), "event_name",
                           event_name, "identifier", identifier, "livemode", 0,
                           "payload", "stripe_customer_id", customer, "value",
                           sf_param(params, "payload[value]"), "timestamp",
                           (json_int_t)timestamp));
  return 1;
}

static int portal_session(sf_server_t *server, const char *path,
                          const params_t *params, answer_t *answer) {
  (void)path;
  static const char *const required[] = {"customer", NULL};
  if (sf_require(params, required, answer))
    return 0;
  const char *customer = sf_param(params, "customer");
  if (!sf_known(server->customers, server->customer_count, customer)) {
    sf_unknown_customer(answer, "customer", customer);
    return 1;
  }
  const char *return_url = sf_param(params, "return_url");
  char id[64], url[160];
  snprintf(id, sizeof(id), "bps_fake_%lld", ++server->next_id);
  snprintf(url, sizeof(url), "http://127.0.0.1:%u/p/session/%s",
           (unsigned)server->port, id);
  server->portal_sessions++;
  sf_answer_json(answer, 200,
                 json_pack("{s:s,s:s,s:I,s:s,s:b,s:o,s:s}", "id", id, "object",
                           "billing_portal.session", "created",
                           (json_int_t)sf_now_s(server), "customer", customer,
                           "livemode", 0, "return_url",
                           return_url ? json_string(return_url) : json_null(),
                           "url", url));
  return 1;
}

/* ---- meters and their summaries (GET, run under the lock) --------------- */

static json_t *meter_json(const meter_t *meter) {
  return json_pack("{s:s,s:s,s:I,s:s,s:s,s:s,s:{s:s},s:{s:s,s:s},s:{s:s},s:b}",
                   "id", meter->id, "object", "billing.meter", "created",
                   (json_int_t)meter->created_s, "display_name",
                   meter->event_name, "event_name", meter->event_name, "status",
                   "active", "default_aggregation", "formula", "sum",
                   "customer_mapping", "event_payload_key",
                   "stripe_customer_id", "type", "by_id", "value_settings",
                   "event_payload_key", "value", "livemode", 0);
}

/* limit (1..100, default 10); 0 with answer filled when bad. */
long sf_list_limit(const params_t *params, answer_t *answer) {
  const char *text = sf_param(params, "limit");
  long long limit = 10;
  if (text && (sf_parse_integer(text, &limit) || limit < 1 || limit > 100)) {
    sf_answer_error(answer, 400, "invalid_request_error", "parameter_invalid",
                    "limit", "limit must be an integer between 1 and 100.");
    return 0;
  }
  return (long)limit;
}

/* A Stripe list of items (taken) from the one after starting_after. */
void sf_answer_list(answer_t *answer, const char *url, json_t *items,
                    const params_t *params, long limit) {
  const char *after = sf_param(params, "starting_after");
  size_t from = 0, i;
  json_t *item;
  json_array_foreach(items, i, item) {
    const char *id = json_string_value(json_object_get(item, "id"));
    if (after && id && strcmp(id, after) == 0)
      from = i + 1;
  }
  json_t *data = json_array();
  for (i = from; i < json_array_size(items) && (long)(i - from) < limit; i++)
    json_array_append(data, json_array_get(items, i));
  int more = i < json_array_size(items);
  json_decref(items);
  sf_answer_json(answer, 200,
                 json_pack("{s:s,s:s,s:o,s:b}", "object", "list", "url", url,
                           "data", data, "has_more", more));
}

static void list_meters(sf_server_t *server, const params_t *params,
                        answer_t *answer) {
  long limit = sf_list_limit(params, answer);
  const char *status = sf_param(params, "status");
  if (!limit)
    return;
  json_t *items = json_array();
  for (size_t i = 0; i < server->meter_count; i++)
    if (!status || strcmp(status, "active") == 0)
      json_array_append_new(items, meter_json(&server->meters[i]));
  sf_answer_list(answer, "/v1/billing/meters", items, params, limit);
}

/* GET /v1/billing/meters/{id}/event_summaries: customer, start_time and
 * end_time (inclusive, exclusive; minute-aligned) required;
 * value_grouping_window "hour" or "day" gives one summary per hour or
 * day (the range aligned to it), newest first; none, one for the range. */
static void event_summaries(sf_server_t *server, const char *meter_id,
                            const params_t *params, answer_t *answer) {
  static const char *const required[] = {"customer", "start_time", "end_time",
                                         NULL};
  const meter_t *meter = NULL;
  for (size_t i = 0; i < server->meter_count && !meter; i++)
    if (strcmp(server->meters[i].id, meter_id) == 0)
      meter = &server->meters[i];
  if (!meter) {
    char message[300];
    snprintf(message, sizeof(message), "No such billing meter: '%.200s'",
             meter_id);
    sf_answer_error(answer, 404, "invalid_request_error", "resource_missing",
                    "id", message);
    return;
  }
  long limit = sf_list_limit(params, answer);
  if (!limit || sf_require(params, required, answer))
    return;
  long long start, end, step = 0;
  const char *window = sf_param(params, "value_grouping_window");
  if (sf_parse_integer(sf_param(params, "start_time"), &start) ||
      sf_parse_integer(sf_param(params, "end_time"), &end) || start % 60 ||
      end % 60 || end <= start) {
    sf_answer_error(answer, 400, "invalid_request_error", "parameter_invalid",
                    "start_time",
                    "start_time and end_time must be aligned with minute "
                    "boundaries, start_time before end_time.");
    return;
  }
  if (window && strcmp(window, "hour") == 0)
    step = 3600;
  else if (window && strcmp(window, "day") == 0)
    step = 86400;
  else if (window) {
    sf_answer_error(answer, 400, "invalid_request_error", "parameter_invalid",
                    "value_grouping_window",
                    "value_grouping_window must be one of hour, day.");
    return;
  }
  if (step && (start % step || end % step)) {
    sf_answer_error(answer, 400, "invalid_request_error", "parameter_invalid",
                    "start_time",
                    "start_time and end_time must be aligned with "
                    "value_grouping_window.");
    return;
  }
  if (!step)
    step = end - start;
  const char *customer = sf_param(params, "customer");
  json_t *items = json_array();
  for (long long to = end; to > start; to -= step) {
    long long from = to - step, sum = 0;
    for (size_t i = 0; i < server->event_count; i++) {
      const event_t *ev = &server->events[i];
      if (ev->timestamp >= from && ev->timestamp < to &&
          strcmp(ev->customer, customer) == 0 &&
          strcmp(ev->event_name, meter->event_name) == 0)
        sum += ev->value;
    }
    char id[400];
    snprintf(id, sizeof(id), "mtrusg_fake_%s_%lld_%lld", meter->id, from, to);
    /* Stripe's aggregated_value is a float. */
    json_array_append_new(
        items,
        json_pack("{s:s,s:s,s:f,s:I,s:I,s:b,s:s}", "id", id, "object",
                  "billing.meter_event_summary", "aggregated_value",
                  (double)sum, "start_time", (json_int_t)from, "end_time",
                  (json_int_t)to, "livemode", 0, "meter", meter->id));
  }
  char url[300];
  snprintf(url, sizeof(url), "/v1/billing/meters/%s/event_summaries",
           meter->id);
  sf_answer_list(answer, url, items, params, limit);
}

/* The GET API; 1 when path is one of it (answer filled). */
static int get_endpoint(sf_server_t *server, const char *path,
                        const params_t *params, answer_t *answer) {
  static const char meters[] = "/v1/billing/meters";
  static const char summaries[] = "/event_summaries";
  size_t len = strlen(path), prefix = sizeof(meters) - 1;
  if (strcmp(path, meters) == 0) {
    list_meters(server, params, answer);
    return 1;
  }
  if (len > prefix + 1 + sizeof(summaries) - 1 &&
      strncmp(path, meters, prefix) == 0 && path[prefix] == '/' &&
      strcmp(path + len - (sizeof(summaries) - 1), summaries) == 0) {
    char id[200];
    size_t id_len = len - prefix - 1 - (sizeof(summaries) - 1);
    if (id_len >= sizeof(id) || memchr(path + prefix + 1, '/', id_len))
      return 0;
    memcpy(id, path + prefix + 1, id_len);
    id[id_len] = '\0';
    event_summaries(server, id, params, answer);
    return 1;
  }
  return 0;
}

static const struct {
  const char *path;
  sf_endpoint_fn run;
} endpoints[] = {
    {"/v1/billing/meter_events", meter_event},
    {"/v1/billing_portal/sessions", portal_session},
};

/* ---- the API path: auth, faults, idempotency, endpoint ------------------ */

static int authorized(const sf_server_t *server, const char *header,
                      answer_t *answer) {
  char expected[256];
  snprintf(expected, sizeof(expected), "Bearer %s", server->secret_key);
  if (header && strcmp(header, expected) == 0)
    return 1;
  if (!header)
    sf_answer_error(answer, 401, "invalid_request_error", NULL, NULL,
                    "You did not provide an API key. You need to provide your "
                    "API key in the Authorization header, using Bearer auth "
                    "(e.g. 'Authorization: Bearer YOUR_SECRET_KEY').");
  else
    sf_answer_error(answer, 401, "invalid_request_error", NULL, NULL,
                    "Invalid API Key provided.");
  return 0;
}

/* The fault that applies to this request (consumed), or NULL. Under lock. */
static fault_t *take_fault(sf_server_t *server, const char *method,
                           const char *path, const char *customer,
                           fault_t *copy) {
  for (size_t i = 0; i < server->fault_count; i++) {
    fault_t *fault = &server->faults[i];
    if (fault->remaining <= 0 ||
        (fault->path[0] && strcmp(fault->path, path)) ||
        (fault->method[0] && strcmp(fault->method, method)) ||
        (fault->customer[0] &&
         (!customer || strcmp(fault->customer, customer))))
      continue;
    fault->remaining--;
    *copy = *fault;
    return copy;
  }
  return NULL;
}

static void fault_answer(answer_t *answer, const fault_t *fault) {
  free(answer->body); /* an endpoint's answer it replaces */
  answer->body = NULL;
  sf_answer_error(answer, fault->status,
                  fault->status == 429 ? "invalid_request_error" : "api_error",
                  fault->status == 429 ? "rate_limit" : NULL, NULL,
                  fault->status == 429
                      ? "Too many requests hit the API too "
                        "quickly."
                      : "An unknown error occurred (injected).");
  answer->retry_after_s = fault->retry_after_s;
  answer->should_retry = fault->should_retry;
}

/* The idempotency record of key (NULL: none, or older than Stripe keeps
 * them, then forgotten). Under lock. */
static idempotent_t *idempotency_record(sf_server_t *server, const char *key) {
  for (size_t i = 0; key && i < server->idempotent_count; i++) {
    idempotent_t *saved = &server->idempotent[i];
    if (strcmp(saved->key, key) != 0)
      continue;
    if (sf_now_s(server) - saved->created_s < IDEMPOTENCY_TTL_S ||
        th_now_ms() < saved->in_progress_until_ms)
      return saved;
    free(saved->key);
    free(saved->fingerprint);
    free(saved->body);
    *saved = server->idempotent[--server->idempotent_count];
    return NULL;
  }
  return NULL;
}

static sf_mhd_result collect_query(void *cls, enum MHD_ValueKind kind,
                                   const char *key, const char *value) {
  params_t *params = cls;
  (void)kind;
  params->items = realloc(params->items, (params->count + 1) * sizeof(param_t));
  params->items[params->count++] =
      (param_t){strdup(key), strdup(value ? value : "")};
  return MHD_YES;
}

static void api_request(sf_server_t *server, struct MHD_Connection *connection,
                        const char *method, const char *path,
                        const request_t *req, answer_t *answer) {
  const char *idempotency_key = MHD_lookup_connection_value(
      connection, MHD_HEADER_KIND, "Idempotency-Key");
  const char *version = MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
                                                    "Stripe-Version");
  int get = strcmp(method, "GET") == 0;
  params_t params = {0};
  int form_ok = 1;
  /* GET and DELETE carry their parameters in the query string. */
  if (get || strcmp(method, "DELETE") == 0)
    MHD_get_connection_values(connection, MHD_GET_ARGUMENT_KIND, collect_query,
                              &params);
  else
    form_ok = form_parse(req->body ? req->body : "", req->len, &params) == 0;
  int auth_ok = authorized(
      server,
      MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "Authorization"),
      answer);
  json_t *entry = json_pack(
      "{s:s,s:s,s:o,s:o,s:b}", "method", method, "path", path, "stripe_version",
      version ? json_string(version) : json_null(), "idempotency_key",
      idempotency_key ? json_string(idempotency_key) : json_null(),
      "authorized", auth_ok);
  json_t *logged_params = json_object();
  for (size_t i = 0; i < params.count; i++)
    json_object_set_new(logged_params, params.items[i].key,
                        json_string(params.items[i].value));
  json_object_set_new(entry, "params", logged_params);

  sf_endpoint_fn run = NULL;
  for (size_t i = 0; i < sizeof(endpoints) / sizeof(endpoints[0]); i++)
    if (strcmp(path, endpoints[i].path) == 0 && strcmp(method, "POST") == 0)
      run = endpoints[i].run;
  if (!run && !get)
    run = sf_billing_endpoint(method, path);
  const char *customer = sf_param(&params, "payload[stripe_customer_id]");
  if (!customer)
    customer = sf_param(&params, "customer");

  fault_t fault_copy, *fault = NULL;
  pthread_mutex_lock(&server->lock);
  server->requests++;
  if (!auth_ok)
    goto done;
  if (!form_ok) {
    sf_answer_error(
        answer, 400, "invalid_request_error", NULL, NULL,
        "Invalid request body: not application/x-www-form-urlencoded.");
    goto done;
  }
  if (!run && !get) {
    char message[300];
    snprintf(message, sizeof(message), "Unrecognized request URL (%s: %.200s).",
             method, path);
    sf_answer_error(answer, 404, "invalid_request_error", NULL, NULL, message);
    goto done;
  }
  fault = take_fault(server, method, path, customer, &fault_copy);
  if (fault && fault->status && !fault->apply) {
    fault_answer(answer, fault);
    goto done;
  }
  if (fault && fault->hang_ms > 0) {
    answer->drop = 1;
    goto done;
  }
  if (get) { /* reads: no idempotency */
    if (!get_endpoint(server, path, &params, answer) &&
        !sf_billing_get(server, path, &params, answer)) {
      char message[300];
      snprintf(message, sizeof(message),
               "Unrecognized request URL (%s: %.200s).", method, path);
      sf_answer_error(answer, 404, "invalid_request_error", NULL, NULL,
                      message);
    }
    goto done;
  }
  char *print = fingerprint(method, path, &params);
  idempotent_t *saved = idempotency_record(server, idempotency_key);
  if (saved && th_now_ms() < saved->in_progress_until_ms) {
    /* Stripe keeps nothing for this request: it may be sent again. */
    char message[400];
    snprintf(message, sizeof(message),
             "There is currently another in-progress request using this "
             "Idempotency Key (that probably means you submitted twice, and "
             "the other request is still going through): %.200s. Please try "
             "again later.",
             idempotency_key);
    sf_answer_error(answer, 409, "idempotency_error", "idempotency_key_in_use",
                    NULL, message);
  } else if (saved && strcmp(saved->fingerprint, print) != 0) {
    char message[400];
    snprintf(message, sizeof(message),
             "Keys for idempotent requests can only be used with the same "
             "parameters they were first used with. Try using a key other "
             "than '%.200s' if you meant to execute a different request.",
             idempotency_key);
    sf_answer_error(answer, 400, "idempotency_error", NULL, NULL, message);
  } else if (saved) {
    answer->status = saved->status;
    answer->body = strdup(saved->body);
    /* A stored 5xx is all a retry under this key will ever get. */
    answer->should_retry = saved->status >= 500 ? 0 : saved->should_retry;
    answer->replayed = 1;
  } else {
    int keep = run(server, path, &params, answer);
    if (fault && fault->status && fault->apply) {
      fault_answer(answer, fault); /* it ran; it answers an error */
      keep = 1;
    }
    if (keep && idempotency_key) {
      GROW(server->idempotent, server->idempotent_count,
           server->idempotent_cap);
      server->idempotent[server->idempotent_count++] = (idempotent_t){
          strdup(idempotency_key),
          strdup(print),
          strdup(answer->body),
          answer->status,
          answer->should_retry,
          sf_now_s(server),
          fault && fault->processing_ms > 0 ? th_now_ms() + fault->processing_ms
                                            : 0};
    }
  }
  free(print);
  if (fault && fault->drop_after_apply)
    answer->drop = 1;
done:
  json_object_set_new(entry, "status",
                      answer->drop ? json_null()
                                   : json_integer(answer->status));
  json_array_append_new(server->log, entry);
  if (json_array_size(server->log) > LOG_MAX)
    json_array_remove(server->log, 0);
  pthread_mutex_unlock(&server->lock);
  params_clear(&params);
  /* A hang, or a request still processing, holds only this connection's
   * thread; stopping ends it. */
  long hold_ms = !fault               ? 0
                 : fault->hang_ms > 0 ? fault->hang_ms
                                      : fault->processing_ms;
  for (long waited = 0; waited < hold_ms && !atomic_load(&server->stopping);
       waited += 10)
    th_sleep_ms(10);
}

/* ---- control routes ----------------------------------------------------- */

static void control_faults(sf_server_t *server, json_t *body,
                           answer_t *answer) {
  fault_t fault = {.retry_after_s = -1, .should_retry = -1};
  json_t *count = json_object_get(body, "count");
  fault.remaining = json_is_integer(count) ? (int)json_integer_value(count) : 1;
  fault.status = (int)json_integer_value(json_object_get(body, "status"));
  json_t *retry_after = json_object_get(body, "retry_after_s");
  if (json_is_integer(retry_after))
    fault.retry_after_s = (long)json_integer_value(retry_after);
  json_t *should_retry = json_object_get(body, "should_retry");
  if (json_is_boolean(should_retry))
    fault.should_retry = json_is_true(should_retry);
  fault.hang_ms = (long)json_integer_value(json_object_get(body, "hang_ms"));
  fault.drop_after_apply =
      json_is_true(json_object_get(body, "drop_after_apply"));
  fault.apply = json_is_true(json_object_get(body, "apply"));
  fault.processing_ms =
      (long)json_integer_value(json_object_get(body, "processing_ms"));
  const char *path = json_string_value(json_object_get(body, "path"));
  snprintf(fault.path, sizeof(fault.path), "%s", path ? path : "");
  const char *only = json_string_value(json_object_get(body, "method"));
  snprintf(fault.method, sizeof(fault.method), "%s", only ? only : "");
  const char *customer = json_string_value(json_object_get(body, "customer"));
  snprintf(fault.customer, sizeof(fault.customer), "%s",
           customer ? customer : "");
  if (!fault.status && fault.hang_ms <= 0 && !fault.drop_after_apply &&
      fault.processing_ms <= 0) {
    sf_answer_error(answer, 400, "invalid_request_error", NULL, NULL,
                    "a fault needs status, hang_ms, drop_after_apply or "
                    "processing_ms");
    return;
  }
  GROW(server->faults, server->fault_count, server->fault_cap);
  server->faults[server->fault_count++] = fault;
  sf_answer_json(answer, 200, json_pack("{s:b}", "ok", 1));
}

static void control_request(sf_server_t *server, const char *method,
                            const char *path, const request_t *req,
                            answer_t *answer) {
  json_t *body = req->len ? json_loadb(req->body, req->len, 0, NULL) : NULL;
  pthread_mutex_lock(&server->lock);
  if (strcmp(method, "POST") == 0 && strcmp(path, "/_fake/customers") == 0) {
    const char *id = json_string_value(json_object_get(body, "id"));
    if (!id || !*id) {
      sf_answer_error(answer, 400, "invalid_request_error", NULL, "id",
                      "{\"id\": \"cus_...\"} expected");
    } else {
      if (!sf_known(server->customers, server->customer_count, id)) {
        GROW(server->customers, server->customer_count, server->customer_cap);
        server->customers[server->customer_count++] = strdup(id);
      }
      sf_answer_json(answer, 200, json_pack("{s:s}", "id", id));
    }
  } else if (strcmp(method, "POST") == 0 &&
             strcmp(path, "/_fake/faults") == 0) {
    control_faults(server, body, answer);
  } else if (strcmp(method, "DELETE") == 0 &&
             strcmp(path, "/_fake/faults") == 0) {
    server->fault_count = 0;
    sf_answer_json(answer, 200, json_pack("{s:b}", "ok", 1));
  } else if (strcmp(method, "POST") == 0 && strcmp(path, "/_fake/clock") == 0) {
    json_t *offset = json_object_get(body, "offset_s");
    if (!json_is_integer(offset)) {
      sf_answer_error(answer, 400, "invalid_request_error", NULL, "offset_s",
                      "{\"offset_s\": N} expected");
    } else {
      server->clock_offset_s = (int64_t)json_integer_value(offset);
      sf_answer_json(answer, 200,
                     json_pack("{s:I}", "now", (json_int_t)sf_now_s(server)));
    }
  } else if (strcmp(method, "POST") == 0 &&
             strcmp(path, "/_fake/meters") == 0) {
    const char *name = json_string_value(json_object_get(body, "event_name"));
    const meter_t *meter = NULL;
    for (size_t i = 0; name && i < server->meter_count && !meter; i++)
      if (strcmp(server->meters[i].event_name, name) == 0)
        meter = &server->meters[i];
    if (!name || !*name) {
      sf_answer_error(answer, 400, "invalid_request_error", NULL, "event_name",
                      "{\"event_name\": \"...\"} expected");
    } else {
      if (!meter) {
        char id[64];
        snprintf(id, sizeof(id), "mtr_fake_%lld", ++server->next_id);
        GROW(server->meters, server->meter_count, server->meter_cap);
        server->meters[server->meter_count] =
            (meter_t){strdup(id), strdup(name), sf_now_s(server)};
        meter = &server->meters[server->meter_count++];
      }
      sf_answer_json(answer, 200, meter_json(meter));
    }
  } else if (strcmp(method, "GET") == 0 && strcmp(path, "/_fake/ledger") == 0) {
    json_t *rows = json_array();
    for (size_t i = 0; i < server->ledger_count; i++)
      json_array_append_new(
          rows,
          json_pack("{s:s,s:s,s:I,s:I}", "customer", server->ledger[i].customer,
                    "event_name", server->ledger[i].event_name, "value",
                    (json_int_t)server->ledger[i].sum, "count",
                    (json_int_t)server->ledger[i].count));
    sf_answer_json(
        answer, 200,
        json_pack("{s:o,s:I,s:I,s:I,s:I}", "meter_events", rows, "identifiers",
                  (json_int_t)server->identifier_count, "portal_sessions",
                  (json_int_t)server->portal_sessions, "requests",
                  (json_int_t)server->requests, "clock_offset_s",
                  (json_int_t)server->clock_offset_s));
  } else if (strcmp(method, "GET") == 0 &&
             strcmp(path, "/_fake/requests") == 0) {
    sf_answer_json(answer, 200, json_pack("{s:O}", "requests", server->log));
  } else if (!sf_billing_control(server, method, path, body, answer)) {
    sf_answer_error(answer, 404, "invalid_request_error", NULL, NULL,
                    "no such control route");
  }
  pthread_mutex_unlock(&server->lock);
  json_decref(body);
}

/* ---- libmicrohttpd ------------------------------------------------------ */

static sf_mhd_result on_request(void *cls, struct MHD_Connection *connection,
                                const char *url, const char *method,
                                const char *version, const char *upload_data,
                                size_t *upload_data_size, void **state) {
  sf_server_t *server = cls;
  request_t *req = *state;
  answer_t answer = {.should_retry = -1, .retry_after_s = -1};
  (void)version;
  if (!req) {
    *state = calloc(1, sizeof(request_t));
    return *state ? MHD_YES : MHD_NO;
  }
  if (*upload_data_size) {
    size_t n = *upload_data_size;
    *upload_data_size = 0;
    if (req->len + n > BODY_MAX) {
      req->too_large = 1;
      return MHD_YES;
    }
    req->body = realloc(req->body, req->len + n + 1);
    memcpy(req->body + req->len, upload_data, n);
    req->len += n;
    req->body[req->len] = '\0';
    return MHD_YES;
  }
  if (req->too_large)
    sf_answer_error(&answer, 413, "invalid_request_error", NULL, NULL,
                    "Request body too large.");
  else if (strncmp(url, "/_fake/", 7) == 0)
    control_request(server, method, url, req, &answer);
  else
    api_request(server, connection, method, url, req, &answer);
  if (answer.drop) {
    free(answer.body);
    return MHD_NO; /* the connection is closed, unanswered */
  }
  if (!answer.body) {
    answer.status = 500;
    answer.body = strdup("{\"error\":{\"type\":\"api_error\"}}");
  }
  struct MHD_Response *response = MHD_create_response_from_buffer(
      strlen(answer.body), answer.body, MHD_RESPMEM_MUST_FREE);
  if (!response) {
    free(answer.body);
    return MHD_NO;
  }
  char text[64];
  MHD_add_response_header(response, "Content-Type", "application/json");
  snprintf(text, sizeof(text), "req_fake_%lld", (long long)server->requests);
  MHD_add_response_header(response, "Request-Id", text);
  if (answer.should_retry >= 0)
    MHD_add_response_header(response, "Stripe-Should-Retry",
                            answer.should_retry ? "true" : "false");
  if (answer.retry_after_s >= 0) {
    snprintf(text, sizeof(text), "%ld", answer.retry_after_s);
    MHD_add_response_header(response, "Retry-After", text);
  }
  if (answer.replayed)
    MHD_add_response_header(response, "Idempotent-Replayed", "true");
  sf_mhd_result rc =
      MHD_queue_response(connection, (unsigned)answer.status, response);
  MHD_destroy_response(response);
  return rc;
}

static void on_completed(void *cls, struct MHD_Connection *connection,
                         void **state, enum MHD_RequestTerminationCode code) {
  request_t *req = *state;
  (void)cls, (void)connection, (void)code;
  if (req) {
    free(req->body);
    free(req);
  }
  *state = NULL;
}

static void free_list(char **list, size_t count) {
  for (size_t i = 0; i < count; i++)
    free(list[i]);
  free(list);
}

void sf_stop(sf_server_t *server) {
  if (!server)
    return;
  atomic_store(&server->stopping, 1);
  if (server->daemon)
    MHD_stop_daemon(server->daemon);
  free_list(server->customers, server->customer_count);
  for (size_t i = 0; i < server->identifier_count; i++)
    free(server->identifiers[i].id);
  free(server->identifiers);
  for (size_t i = 0; i < server->event_count; i++) {
    free(server->events[i].customer);
    free(server->events[i].event_name);
  }
  free(server->events);
  for (size_t i = 0; i < server->meter_count; i++) {
    free(server->meters[i].id);
    free(server->meters[i].event_name);
  }
  free(server->meters);
  for (size_t i = 0; i < server->ledger_count; i++) {
    free(server->ledger[i].customer);
    free(server->ledger[i].event_name);
  }
  free(server->ledger);
  for (size_t i = 0; i < server->idempotent_count; i++) {
    free(server->idempotent[i].key);
    free(server->idempotent[i].fingerprint);
    free(server->idempotent[i].body);
  }
  free(server->idempotent);
  free(server->faults);
  sf_billing_free(server);
  json_decref(server->log);
  pthread_mutex_destroy(&server->lock);
  free(server->secret_key);
  free(server);
}

sf_server_t *sf_start(const char *secret_key, uint16_t port, char *errstr,
                      size_t errstr_size) {
  struct sockaddr_in addr;
  sf_server_t *server = calloc(1, sizeof(*server));
  if (!server) {
    snprintf(errstr, errstr_size, "out of memory");
    return NULL;
  }
  pthread_mutex_init(&server->lock, NULL);
  server->secret_key = strdup(secret_key);
  server->log = json_array();
  memset(&addr, 0, sizeof(addr));
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  server->daemon = MHD_start_daemon(
      MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
          MHD_USE_ERROR_LOG,
      port, NULL, NULL, on_request, server, MHD_OPTION_SOCK_ADDR, &addr,
      MHD_OPTION_CONNECTION_TIMEOUT, 30u, MHD_OPTION_NOTIFY_COMPLETED,
      on_completed, server, MHD_OPTION_END);
  if (!server->daemon) {
    snprintf(errstr, errstr_size, "cannot listen on 127.0.0.1:%u",
             (unsigned)port);
    sf_stop(server);
    return NULL;
  }
  const union MHD_DaemonInfo *info =
      MHD_get_daemon_info(server->daemon, MHD_DAEMON_INFO_BIND_PORT);
  server->port = info ? info->port : port;
  return server;
}

uint16_t sf_port(const sf_server_t *server) { return server->port; }
