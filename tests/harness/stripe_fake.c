/*
 * stripe_fake.c - the Stripe-shaped test server (see stripe_fake.h for what
 * it answers) and the helpers that run it as a separate process.
 *
 * One thread per connection (libmicrohttpd), so an injected hang holds only
 * its own connection; all state (customers, identifiers, the ledger, the
 * idempotency records, faults, the request log) sits behind one mutex, and
 * an endpoint runs start to finish under it, so concurrent retries of one
 * Idempotency-Key see either nothing or the whole first result.
 */
#include "stripe_fake.h"

#include "harness.h"
#include "tally_producer.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <openssl/rand.h>
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

typedef struct {
  char *key, *value;
} param_t;

typedef struct {
  size_t count;
  param_t *items;
} params_t;

typedef struct {
  char *customer, *event_name;
  long long sum, count;
} ledger_row_t;

typedef struct {
  char *key, *fingerprint, *body;
  int status, should_retry;
} idempotent_t;

typedef struct {
  int remaining;
  int status;         /* 0: not a status fault */
  long retry_after_s; /* -1: no header */
  int should_retry;   /* -1: no header */
  long hang_ms;       /* > 0: hang, then drop */
  int drop_after_apply;
  char path[128]; /* "" any */
} fault_t;

/* Growable arrays of the state, each under the server's lock. */
#define GROW(array, count, cap)                                                \
  ((count) < (cap) ||                                                          \
           ((cap) = (cap) ? (cap)*2 : 16,                                      \
            (array) = realloc((array), (cap) * sizeof(*(array)))) != NULL      \
       ? 1                                                                     \
       : (abort(), 0))

struct sf_server {
  struct MHD_Daemon *daemon;
  uint16_t port;
  char *secret_key;
  atomic_int stopping;
  pthread_mutex_t lock;
  char **customers;
  size_t customer_count, customer_cap;
  char **identifiers;
  size_t identifier_count, identifier_cap;
  ledger_row_t *ledger;
  size_t ledger_count, ledger_cap;
  idempotent_t *idempotent;
  size_t idempotent_count, idempotent_cap;
  fault_t *faults;
  size_t fault_count, fault_cap;
  json_t *log; /* array, the last LOG_MAX requests */
  long long requests, portal_sessions, next_id;
};

typedef struct {
  char *body;
  size_t len;
  int too_large;
} request_t;

typedef struct {
  int status;
  char *body; /* malloc'd JSON */
  int should_retry;
  long retry_after_s;
  int replayed;
  int drop; /* close the connection without an answer */
} answer_t;

/* ---- small helpers ------------------------------------------------------ */

static int64_t now_s(void) { return (int64_t)time(NULL); }

static void answer_json(answer_t *answer, int status, json_t *json) {
  answer->status = status;
  answer->body = json_dumps(json, JSON_COMPACT | JSON_SORT_KEYS);
  json_decref(json);
}

/* Stripe's error shape; code and param may be NULL. */
static void answer_error(answer_t *answer, int status, const char *type,
                         const char *code, const char *param,
                         const char *message) {
  json_t *error = json_pack("{s:s,s:s}", "type", type, "message", message);
  if (code)
    json_object_set_new(error, "code", json_string(code));
  if (param)
    json_object_set_new(error, "param", json_string(param));
  answer_json(answer, status, json_pack("{s:o}", "error", error));
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
static const char *param(const params_t *params, const char *key) {
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
  memcpy(sorted, params->items, params->count * sizeof(*sorted));
  qsort(sorted, params->count, sizeof(*sorted), compare_params);
  json_t *json = json_pack("[s,s]", method, path);
  for (size_t i = 0; i < params->count; i++)
    json_array_append_new(json,
                          json_pack("[s,s]", sorted[i].key, sorted[i].value));
  free(sorted);
  char *text = json_dumps(json, JSON_COMPACT);
  json_decref(json);
  return text;
}

static int known(char **list, size_t count, const char *id) {
  for (size_t i = 0; i < count; i++)
    if (strcmp(list[i], id) == 0)
      return 1;
  return 0;
}

static int parse_integer(const char *text, long long *out) {
  char *end;
  if (!text || !*text || strlen(text) > 19 ||
      !(isdigit((unsigned char)text[0]) || text[0] == '-'))
    return -1;
  *out = strtoll(text, &end, 10);
  return *end ? -1 : 0;
}

/* ---- endpoints (run under the lock) ------------------------------------- */

/* 1 when a required parameter is missing (answer filled). */
static int require(const params_t *params, const char *const *names,
                   answer_t *answer) {
  for (size_t i = 0; names[i]; i++) {
    const char *value = param(params, names[i]);
    if (value && *value)
      continue;
    char message[160];
    snprintf(message, sizeof(message), "Missing required param: %s.", names[i]);
    answer_error(answer, 400, "invalid_request_error", "parameter_missing",
                 names[i], message);
    return 1;
  }
  return 0;
}

/* Parameter validation of a meter event: 1 with answer filled when it
 * fails (such answers are not kept for an Idempotency-Key). */
static int meter_event_invalid(const params_t *params, long long *value,
                               long long *timestamp, answer_t *answer) {
  static const char *const required[] = {
      "event_name", "payload[stripe_customer_id]", "payload[value]", NULL};
  if (require(params, required, answer))
    return 1;
  if (parse_integer(param(params, "payload[value]"), value)) {
    answer_error(answer, 400, "invalid_request_error",
                 "parameter_invalid_integer", "payload[value]",
                 "Invalid integer: payload[value] must be a whole number.");
    return 1;
  }
  const char *ts = param(params, "timestamp");
  *timestamp = now_s();
  if (ts && parse_integer(ts, timestamp)) {
    answer_error(answer, 400, "invalid_request_error",
                 "parameter_invalid_integer", "timestamp",
                 "Invalid integer: timestamp.");
    return 1;
  }
  if (*timestamp < now_s() - METER_WINDOW_PAST_S) {
    answer_error(answer, 400, "invalid_request_error",
                 "timestamp_too_far_in_past", "timestamp",
                 "Timestamp must be within the past 35 calendar days.");
    return 1;
  }
  if (*timestamp > now_s() + METER_WINDOW_FUTURE_S) {
    answer_error(answer, 400, "invalid_request_error", "timestamp_in_future",
                 "timestamp",
                 "Timestamp must be no more than 5 minutes in the future.");
    return 1;
  }
  return 0;
}

static void unknown_customer(answer_t *answer, const char *param_name,
                             const char *customer) {
  char message[256];
  snprintf(message, sizeof(message), "No such customer: '%.200s'", customer);
  answer_error(answer, 400, "invalid_request_error", "resource_missing",
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
static int meter_event(sf_server_t *server, const params_t *params,
                       answer_t *answer) {
  long long value, timestamp;
  if (meter_event_invalid(params, &value, &timestamp, answer))
    return 0;
  const char *customer = param(params, "payload[stripe_customer_id]");
  const char *event_name = param(params, "event_name");
  const char *given = param(params, "identifier");
  char identifier[128];
  if (given && *given)
    snprintf(identifier, sizeof(identifier), "%s", given);
  else
    snprintf(identifier, sizeof(identifier), "mev_fake_%lld",
             ++server->next_id);
  if (!known(server->customers, server->customer_count, customer)) {
    unknown_customer(answer, "payload[stripe_customer_id]", customer);
    return 1;
  }
  if (known(server->identifiers, server->identifier_count, identifier)) {
    char message[256];
    snprintf(message, sizeof(message),
             "An event already exists with identifier %s.", identifier);
    answer_error(answer, 400, "invalid_request_error", NULL, NULL, message);
    answer->should_retry = 0;
    return 1;
  }
  GROW(server->identifiers, server->identifier_count, server->identifier_cap);
  server->identifiers[server->identifier_count++] = strdup(identifier);
  add_to_ledger(server, customer, event_name, value);
  answer_json(answer, 200,
              json_pack("{s:s,s:I,s:s,s:s,s:b,s:{s:s,s:s},s:I}", "object",
                        "billing.meter_event", "created", (json_int_t)now_s(),
                        "event_name", event_name, "identifier", identifier,
                        "livemode", 0, "payload", "stripe_customer_id",
                        customer, "value", param(params, "payload[value]"),
                        "timestamp", (json_int_t)timestamp));
  return 1;
}

static int portal_session(sf_server_t *server, const params_t *params,
                          answer_t *answer) {
  static const char *const required[] = {"customer", NULL};
  if (require(params, required, answer))
    return 0;
  const char *customer = param(params, "customer");
  if (!known(server->customers, server->customer_count, customer)) {
    unknown_customer(answer, "customer", customer);
    return 1;
  }
  const char *return_url = param(params, "return_url");
  char id[64], url[160];
  snprintf(id, sizeof(id), "bps_fake_%lld", ++server->next_id);
  snprintf(url, sizeof(url), "http://127.0.0.1:%u/p/session/%s",
           (unsigned)server->port, id);
  server->portal_sessions++;
  answer_json(answer, 200,
              json_pack("{s:s,s:s,s:I,s:s,s:b,s:o,s:s}", "id", id, "object",
                        "billing_portal.session", "created",
                        (json_int_t)now_s(), "customer", customer, "livemode",
                        0, "return_url",
                        return_url ? json_string(return_url) : json_null(),
                        "url", url));
  return 1;
}

static const struct {
  const char *path;
  int (*run)(sf_server_t *server, const params_t *params, answer_t *answer);
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
    answer_error(answer, 401, "invalid_request_error", NULL, NULL,
                 "You did not provide an API key. You need to provide your "
                 "API key in the Authorization header, using Bearer auth "
                 "(e.g. 'Authorization: Bearer YOUR_SECRET_KEY').");
  else
    answer_error(answer, 401, "invalid_request_error", NULL, NULL,
                 "Invalid API Key provided.");
  return 0;
}

/* The fault that applies to this request (consumed), or NULL. Under lock. */
static fault_t *take_fault(sf_server_t *server, const char *path,
                           fault_t *copy) {
  for (size_t i = 0; i < server->fault_count; i++) {
    fault_t *fault = &server->faults[i];
    if (fault->remaining <= 0 || (fault->path[0] && strcmp(fault->path, path)))
      continue;
    fault->remaining--;
    *copy = *fault;
    return copy;
  }
  return NULL;
}

static void api_request(sf_server_t *server, struct MHD_Connection *connection,
                        const char *method, const char *path,
                        const request_t *req, answer_t *answer) {
  const char *idempotency_key = MHD_lookup_connection_value(
      connection, MHD_HEADER_KIND, "Idempotency-Key");
  const char *version = MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
                                                    "Stripe-Version");
  params_t params = {0};
  int form_ok = form_parse(req->body ? req->body : "", req->len, &params) == 0;
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

  size_t endpoint = sizeof(endpoints) / sizeof(endpoints[0]);
  for (size_t i = 0; i < sizeof(endpoints) / sizeof(endpoints[0]); i++)
    if (strcmp(path, endpoints[i].path) == 0 && strcmp(method, "POST") == 0)
      endpoint = i;

  fault_t fault_copy, *fault = NULL;
  pthread_mutex_lock(&server->lock);
  server->requests++;
  if (!auth_ok)
    goto done;
  if (!form_ok) {
    answer_error(
        answer, 400, "invalid_request_error", NULL, NULL,
        "Invalid request body: not application/x-www-form-urlencoded.");
    goto done;
  }
  if (endpoint == sizeof(endpoints) / sizeof(endpoints[0])) {
    char message[300];
    snprintf(message, sizeof(message), "Unrecognized request URL (%s: %.200s).",
             method, path);
    answer_error(answer, 404, "invalid_request_error", NULL, NULL, message);
    goto done;
  }
  fault = take_fault(server, path, &fault_copy);
  if (fault && fault->status) {
    answer_error(answer, fault->status,
                 fault->status == 429 ? "invalid_request_error" : "api_error",
                 fault->status == 429 ? "rate_limit" : NULL, NULL,
                 fault->status == 429
                     ? "Too many requests hit the API too "
                       "quickly."
                     : "An unknown error occurred (injected).");
    answer->retry_after_s = fault->retry_after_s;
    answer->should_retry = fault->should_retry;
    goto done;
  }
  if (fault && fault->hang_ms > 0) {
    answer->drop = 1;
    goto done;
  }
  char *print = fingerprint(method, path, &params);
  idempotent_t *saved = NULL;
  for (size_t i = 0; idempotency_key && i < server->idempotent_count; i++)
    if (strcmp(server->idempotent[i].key, idempotency_key) == 0)
      saved = &server->idempotent[i];
  if (saved && strcmp(saved->fingerprint, print) != 0) {
    char message[400];
    snprintf(message, sizeof(message),
             "Keys for idempotent requests can only be used with the same "
             "parameters they were first used with. Try using a key other "
             "than '%.200s' if you meant to execute a different request.",
             idempotency_key);
    answer_error(answer, 400, "idempotency_error", NULL, NULL, message);
  } else if (saved) {
    answer->status = saved->status;
    answer->body = strdup(saved->body);
    answer->should_retry = saved->should_retry;
    answer->replayed = 1;
  } else if (endpoints[endpoint].run(server, &params, answer) &&
             idempotency_key) {
    GROW(server->idempotent, server->idempotent_count, server->idempotent_cap);
    server->idempotent[server->idempotent_count++] = (idempotent_t){
        strdup(idempotency_key), strdup(print), strdup(answer->body),
        answer->status, answer->should_retry};
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
  /* A hang holds only this connection's thread; stopping ends it. */
  for (long waited = 0;
       fault && fault->hang_ms > 0 && waited < fault->hang_ms &&
       !atomic_load(&server->stopping);
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
  const char *path = json_string_value(json_object_get(body, "path"));
  snprintf(fault.path, sizeof(fault.path), "%s", path ? path : "");
  if (!fault.status && fault.hang_ms <= 0 && !fault.drop_after_apply) {
    answer_error(answer, 400, "invalid_request_error", NULL, NULL,
                 "a fault needs status, hang_ms or drop_after_apply");
    return;
  }
  GROW(server->faults, server->fault_count, server->fault_cap);
  server->faults[server->fault_count++] = fault;
  answer_json(answer, 200, json_pack("{s:b}", "ok", 1));
}

static void control_request(sf_server_t *server, const char *method,
                            const char *path, const request_t *req,
                            answer_t *answer) {
  json_t *body = req->len ? json_loadb(req->body, req->len, 0, NULL) : NULL;
  pthread_mutex_lock(&server->lock);
  if (strcmp(method, "POST") == 0 && strcmp(path, "/_fake/customers") == 0) {
    const char *id = json_string_value(json_object_get(body, "id"));
    if (!id || !*id) {
      answer_error(answer, 400, "invalid_request_error", NULL, "id",
                   "{\"id\": \"cus_...\"} expected");
    } else {
      if (!known(server->customers, server->customer_count, id)) {
        GROW(server->customers, server->customer_count, server->customer_cap);
        server->customers[server->customer_count++] = strdup(id);
      }
      answer_json(answer, 200, json_pack("{s:s}", "id", id));
    }
  } else if (strcmp(method, "POST") == 0 &&
             strcmp(path, "/_fake/faults") == 0) {
    control_faults(server, body, answer);
  } else if (strcmp(method, "GET") == 0 && strcmp(path, "/_fake/ledger") == 0) {
    json_t *rows = json_array();
    for (size_t i = 0; i < server->ledger_count; i++)
      json_array_append_new(
          rows,
          json_pack("{s:s,s:s,s:I,s:I}", "customer", server->ledger[i].customer,
                    "event_name", server->ledger[i].event_name, "value",
                    (json_int_t)server->ledger[i].sum, "count",
                    (json_int_t)server->ledger[i].count));
    answer_json(answer, 200,
                json_pack("{s:o,s:I,s:I,s:I}", "meter_events", rows,
                          "identifiers", (json_int_t)server->identifier_count,
                          "portal_sessions",
                          (json_int_t)server->portal_sessions, "requests",
                          (json_int_t)server->requests));
  } else if (strcmp(method, "GET") == 0 &&
             strcmp(path, "/_fake/requests") == 0) {
    answer_json(answer, 200, json_pack("{s:O}", "requests", server->log));
  } else {
    answer_error(answer, 404, "invalid_request_error", NULL, NULL,
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
    answer_error(&answer, 413, "invalid_request_error", NULL, NULL,
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
  free_list(server->identifiers, server->identifier_count);
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

/* ---- the separate process ----------------------------------------------- */

int th_stripe_fake_start(th_stripe_fake_t *fake) {
  unsigned char random[8];
  char port_file[600], log_path[600];
  const char *bin = getenv("STRIPE_FAKE_BIN");
  char *dir = th_mkdtemp("stripe-fake");
  memset(fake, 0, sizeof(*fake));
  if (!dir || RAND_bytes(random, sizeof(random)) != 1) {
    free(dir);
    return -1;
  }
  snprintf(fake->dir, sizeof(fake->dir), "%s", dir);
  free(dir);
  snprintf(fake->secret_key, sizeof(fake->secret_key), "sk_test_fake_");
  for (size_t i = 0; i < sizeof(random); i++)
    snprintf(fake->secret_key + 13 + 2 * i, 3, "%02x", random[i]);
  snprintf(port_file, sizeof(port_file), "%s/port", fake->dir);
  snprintf(log_path, sizeof(log_path), "%s/fake.log", fake->dir);
  char *argv[] = {(char *)(bin && *bin ? bin : "./tests/stripe_fake"),
                  "--secret-key",
                  fake->secret_key,
                  "--port-file",
                  port_file,
                  NULL};
  fake->pid = th_spawn(argv, NULL, log_path, log_path);
  char *port = th_wait_file(port_file, 10000);
  if (!port) {
    th_kill9(fake->pid);
    return -1;
  }
  fake->port = atoi(port);
  free(port);
  return 0;
}

void th_stripe_fake_stop(th_stripe_fake_t *fake) {
  th_stop(fake->pid);
  th_rmrf(fake->dir);
}

int th_stripe_teardown(pid_t run_pid, th_broker_t *broker,
                       th_stripe_fake_t *fake, char *dir) {
  int rc = th_stop(run_pid);
  th_broker_stop(broker);
  th_stripe_fake_stop(fake);
  th_rmrf(dir);
  free(dir);
  if (rc != 0)
    printf("# tally run exited with %d\n", rc);
  return rc == 0 ? 0 : -1;
}

int th_stripe_fake_control(const th_stripe_fake_t *fake, const char *method,
                           const char *path, const char *json_body,
                           long *status, char **response) {
  char *text = NULL;
  if (th_http_request(fake->port, method, path, NULL, json_body,
                      json_body ? strlen(json_body) : 0, NULL, status, &text))
    return -1;
  if (response)
    *response = text;
  else
    free(text);
  return 0;
}

/* A control POST that must answer 200; 0 or -1. */
static int control_post(const th_stripe_fake_t *fake, const char *path,
                        const char *json) {
  long status;
  return th_stripe_fake_control(fake, "POST", path, json, &status, NULL) == 0 &&
                 status == 200
             ? 0
             : -1;
}

int th_stripe_fake_fault(const th_stripe_fake_t *fake, const char *json) {
  return control_post(fake, "/_fake/faults", json);
}

int th_stripe_fake_add_customer(const th_stripe_fake_t *fake, const char *id) {
  char body[256];
  snprintf(body, sizeof(body), "{\"id\": \"%s\"}", id);
  return control_post(fake, "/_fake/customers", body);
}

/* A control GET's JSON answer (the caller's); NULL unless 200. */
static json_t *control_get(const th_stripe_fake_t *fake, const char *path) {
  long status;
  char *text = NULL;
  json_t *json = NULL;
  if (th_stripe_fake_control(fake, "GET", path, NULL, &status, &text) == 0 &&
      status == 200)
    json = json_loads(text, 0, NULL);
  free(text);
  return json;
}

json_t *th_stripe_fake_ledger(const th_stripe_fake_t *fake) {
  return control_get(fake, "/_fake/ledger");
}

json_t *th_stripe_fake_last_request(const th_stripe_fake_t *fake) {
  json_t *log = control_get(fake, "/_fake/requests");
  if (!log)
    return NULL;
  json_t *requests = json_object_get(log, "requests");
  json_t *last = json_array_get(requests, json_array_size(requests) - 1);
  json_incref(last);
  json_decref(log);
  return last;
}

/* A ledger field ("value": the sum, "count") of (customer, event_name):
 * 0 when there is no such row, -1 when the fake does not answer. */
static long long ledger_field(const th_stripe_fake_t *fake,
                              const char *customer, const char *event_name,
                              const char *field) {
  json_t *ledger = th_stripe_fake_ledger(fake), *row;
  if (!ledger)
    return -1;
  long long sum = 0;
  size_t i;
  json_array_foreach(json_object_get(ledger, "meter_events"), i, row) {
    if (strcmp(json_string_value(json_object_get(row, "customer")), customer) ==
            0 &&
        strcmp(json_string_value(json_object_get(row, "event_name")),
               event_name) == 0)
      sum += json_integer_value(json_object_get(row, field));
  }
  json_decref(ledger);
  return sum;
}

long long th_stripe_fake_sum(const th_stripe_fake_t *fake, const char *customer,
                             const char *event_name) {
  return ledger_field(fake, customer, event_name, "value");
}

long long th_stripe_fake_count(const th_stripe_fake_t *fake,
                               const char *customer, const char *event_name) {
  return ledger_field(fake, customer, event_name, "count");
}

/* ---- the usage reporting tests ------------------------------------------ */

const char *th_stripe_fake_key_env(const th_stripe_fake_t *fake) {
  static char env[128];
  snprintf(env, sizeof(env), "TALLY_TEST_STRIPE_KEY=%s", fake->secret_key);
  return env;
}

char *th_stripe_report_config(const char *dir, const th_stripe_fake_t *fake,
                              int max_requests_per_s, int timeout_ms,
                              int retry_max_s) {
  char *path = malloc(600);
  if (!path)
    return NULL;
  snprintf(path, 600, "%s/config.json", dir);
  FILE *file = fopen(path, "w");
  if (!file) {
    free(path);
    return NULL;
  }
  fprintf(file,
          "{\"default_plans\": {\"user\": \"pay_per_use\"},\n"
          " \"stripe\": {\"api_base\": \"http://127.0.0.1:%d\",\n"
          "  \"secret_key_env\": \"TALLY_TEST_STRIPE_KEY\",\n"
          "  \"meters\": {\"api_calls\": \"api_requests\", "
          "\"storage_bytes\": \"storage\"},\n"
          "  \"report_window_s\": 3600, \"max_requests_per_s\": %d,\n"
          "  \"timeout_ms\": %d, \"retry_max_s\": %d}}\n",
          fake->port, max_requests_per_s, timeout_ms, retry_max_s);
  fclose(file);
  return path;
}

static void utc_date(int64_t t_ms, char *out, size_t size) {
  time_t t = (time_t)(t_ms / 1000);
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(out, size, "%Y-%m-%d", &tm);
}

long long th_folded_quantity(int port, const char *user_id, const char *feature,
                             int64_t from_ms, int64_t to_ms) {
  char path[512], from[16], to[16], *body = NULL;
  long status;
  utc_date(from_ms, from, sizeof(from));
  utc_date(to_ms, to, sizeof(to));
  snprintf(path, sizeof(path), "/v1/subjects/user:%s/usage/daily?from=%s&to=%s",
           user_id, from, to);
  if (th_http_get(port, path, &status, &body) || status != 200) {
    free(body);
    return -1;
  }
  json_t *json = json_loads(body, 0, NULL), *day;
  free(body);
  long long sum = 0;
  size_t i;
  json_array_foreach(json_object_get(json, "days"), i, day) {
    sum += json_integer_value(json_object_get(
        json_object_get(json_object_get(day, "features"), feature),
        "quantity"));
  }
  json_decref(json);
  return sum;
}

static int send_event(struct tally_producer *producer, tly_event_t *event) {
  char errstr[512];
  if (tally_producer_send(producer, event, NULL, errstr, sizeof(errstr))) {
    fprintf(stderr, "# producing %s: %s\n", event->event_id, errstr);
    return -1;
  }
  return 0;
}

/* An event of user:user_id (the strings stay the caller's). */
static tly_event_t user_event(const char *event_id, int64_t at_ms,
                              const char *user_id, tly_body_kind_t kind) {
  return (tly_event_t){.event_id = (char *)event_id,
                       .occurred_at_ms = at_ms,
                       .subject_kind = TLY_SUBJECT_USER,
                       .subject_id = (char *)user_id,
                       .body_kind = kind};
}

int th_send_usage(struct tally_producer *producer, const char *event_id,
                  int64_t at_ms, const char *user_id, const char *feature,
                  int64_t quantity) {
  tly_event_t event =
      user_event(event_id, at_ms, user_id, TLY_BODY_USAGE_RECORDED);
  event.body.usage.feature = (char *)feature;
  event.body.usage.quantity = quantity;
  event.body.usage.unit = "unit";
  return send_event(producer, &event);
}

int th_send_link(struct tally_producer *producer, const char *event_id,
                 int64_t at_ms, const char *user_id, const char *customer) {
  tly_event_t event =
      user_event(event_id, at_ms, user_id, TLY_BODY_CUSTOMER_LINKED);
  event.body.customer_linked.stripe_customer_id = (char *)customer;
  return send_event(producer, &event);
}
