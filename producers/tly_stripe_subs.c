/*
 * tly_stripe_subs.c - customers, subscriptions and invoices in Stripe,
 * driven from tally (see tly_stripe_subs.h): the calls with their retries
 * under one Idempotency-Key, the look-ups before a create, and the answers.
 */
#include "tly_stripe_subs.h"

#include "tly_log.h"
#include "tly_sha256.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The most form parameters one request carries: 2 x 20 items with 3 keys
 * each, and a few more. */
#define FORM_MAX 160
#define SUBJECT_KEY "tally_subject"

/* ---- form parameters ----------------------------------------------------- */

typedef struct {
  size_t count;
  tly_stripe_param_t items[FORM_MAX];
  char *owned[FORM_MAX * 2];
  size_t owned_count;
  int failed;
} form_t;

static void form_clear(form_t *form) {
  for (size_t i = 0; i < form->owned_count; i++)
    free(form->owned[i]);
  memset(form, 0, sizeof(*form));
}

/* Adds (printf(key_format, ...), value); the value is copied. */
__attribute__((format(printf, 3, 4))) static void
form_add(form_t *form, const char *value, const char *key_format, ...) {
  char key[256];
  va_list args;
  va_start(args, key_format);
  vsnprintf(key, sizeof(key), key_format, args);
  va_end(args);
  if (form->count == FORM_MAX || form->owned_count + 2 > FORM_MAX * 2) {
    form->failed = 1;
    return;
  }
  char *key_copy = strdup(key), *value_copy = strdup(value ? value : "");
  if (!key_copy || !value_copy) {
    free(key_copy);
    free(value_copy);
    form->failed = 1;
    return;
  }
  form->owned[form->owned_count++] = key_copy;
  form->owned[form->owned_count++] = value_copy;
  form->items[form->count++] = (tly_stripe_param_t){key_copy, value_copy};
}

/* ---- calls and their retries ------------------------------------------- */

int64_t tly_stripe_subs_time_bound_ms(const tly_stripe_subs_t *subs) {
  int64_t timeout = subs->config->stripe.timeout_ms;
  int64_t per_call =
      timeout * subs->attempts +
      (int64_t)TLY_STRIPE_SUBS_WAIT_MAX_MS * (subs->attempts - 1);
  return per_call * TLY_STRIPE_SUBS_CALLS_MAX;
}

int tly_stripe_subs_retryable(const tly_stripe_response_t *response) {
  if (!response || response->status == 0)
    return 1; /* no answer: it may or may not have run; the key decides */
  if (response->should_retry >= 0)
    return response->should_retry;
  return response->status == 409 || response->status == 429 ||
         response->status >= 500;
}

static void sleep_ms(long ms) {
  struct timespec wait = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&wait, &wait) != 0)
    ;
}

int tly_stripe_subs_call(const tly_stripe_subs_t *subs, const char *method,
                         const char *path, const tly_stripe_param_t *params,
                         size_t count, const char *idempotency_key,
                         tly_stripe_response_t *out, int *attempts_used) {
  long wait = subs->backoff_ms > 0 ? subs->backoff_ms : 1;
  int attempts = subs->attempts > 0 ? subs->attempts : 1;
  for (int attempt = 1;; attempt++) {
    int rc;
    if (strcmp(method, "GET") == 0)
      rc = tly_stripe_get(subs->client, path, params, count, out);
    else if (strcmp(method, "DELETE") == 0)
      rc = tly_stripe_delete(subs->client, path, params, count, idempotency_key,
                             out);
    else
      rc = tly_stripe_post(subs->client, path, params, count, idempotency_key,
                           out);
    if (attempts_used)
      *attempts_used = attempt;
    if ((rc == 0 && !tly_stripe_subs_retryable(out)) || attempt >= attempts)
      return rc;
    long this_wait = wait;
    if (rc == 0 && out->retry_after_s >= 0)
      this_wait = out->retry_after_s * 1000 > this_wait
                      ? (long)(out->retry_after_s * 1000)
                      : this_wait;
    if (this_wait > TLY_STRIPE_SUBS_WAIT_MAX_MS)
      this_wait = TLY_STRIPE_SUBS_WAIT_MAX_MS;
    if (rc)
      tly_log(TLY_LOG_WARN, "stripe",
              "%s %s: attempt %d of %d had no answer (%s); retrying in %ld ms",
              method, path, attempt, attempts, out->error, this_wait);
    else
      tly_log(TLY_LOG_WARN, "stripe",
              "%s %s: attempt %d of %d answered %ld; retrying in %ld ms",
              method, path, attempt, attempts, out->status, this_wait);
    tly_stripe_response_clear(out);
    sleep_ms(this_wait);
    wait *= 2;
  }
}

/* A call with a form. */
static int call_form(const tly_stripe_subs_t *subs, const char *method,
                     const char *path, const form_t *form, const char *key,
                     tly_stripe_response_t *out) {
  return tly_stripe_subs_call(subs, method, path, form->items, form->count, key,
                              out, NULL);
}

json_t *tly_stripe_subs_error(long stripe_status, const char *body,
                              const char *transport_error, int *status) {
  char message[512], stripe_message[256], code[128], param[128];
  if (!stripe_status) {
    *status = 502;
    snprintf(message, sizeof(message), "Stripe did not answer: %s",
             transport_error ? transport_error : "");
    return json_pack("{s:{s:s,s:s}}", "error", "code", "stripe_unavailable",
                     "message", message);
  }
  json_t *root = body ? json_loads(body, 0, NULL) : NULL;
  json_t *error = json_object_get(root, "error");
  const char *type = json_string_value(json_object_get(error, "type"));
  const char *text = json_string_value(json_object_get(error, "param"));
  snprintf(param, sizeof(param), "%s", text ? text : "");
  tly_stripe_error_message(body, stripe_message, sizeof(stripe_message));
  tly_stripe_error_code(body, code, sizeof(code));
  const char *ours = "stripe_error";
  if (stripe_status >= 500 || stripe_status == 401 || stripe_status == 403)
    *status = 502;
  else if (stripe_status == 429)
    *status = 503;
  else if (stripe_status >= 400)
    *status = (int)stripe_status;
  else
    *status = 502; /* a 2xx without the object asked for */
  if (type && strcmp(type, "idempotency_error") == 0) {
    ours = "idempotency_conflict";
    *status = 409;
  }
  snprintf(message, sizeof(message), "Stripe answered %ld%s%s", stripe_status,
           stripe_message[0] ? ": " : "", stripe_message);
  json_t *answer = json_pack("{s:s,s:s,s:I}", "code", ours, "message", message,
                             "stripe_status", (json_int_t)stripe_status);
  if (answer && code[0])
    json_object_set_new(answer, "stripe_code", json_string(code));
  if (answer && param[0])
    json_object_set_new(answer, "field", json_string(param));
  json_decref(root);
  return json_pack("{s:o}", "error", answer);
}

/* The error answer of a call that failed (rc -1) or answered non-2xx. */
static json_t *call_error(int rc, const tly_stripe_response_t *response,
                          int *status) {
  return tly_stripe_subs_error(rc ? 0 : response->status,
                               rc ? NULL : response->body, response->error,
                               status);
}

static json_t *answer_error(int *status, int code_status, const char *code,
                            const char *message, const char *field) {
  *status = code_status;
  json_t *error = json_pack("{s:s,s:s}", "code", code, "message", message);
  if (error && field)
    json_object_set_new(error, "field", json_string(field));
  return json_pack("{s:o}", "error", error);
}

/* The JSON object of a 2xx answer, or NULL. */
static json_t *ok_object(int rc, const tly_stripe_response_t *response) {
  if (rc || response->status < 200 || response->status >= 300 ||
      !response->body)
    return NULL;
  json_t *root = json_loads(response->body, 0, NULL);
  if (!json_is_object(root)) {
    json_decref(root);
    return NULL;
  }
  return root;
}

void tly_stripe_subs_key(const char *purpose, const char *const *parts,
                         size_t count, char *out, size_t out_size) {
  char digest[TLY_SHA256_HEX_LEN + 1];
  size_t len = 0;
  for (size_t i = 0; i < count; i++)
    len += strlen(parts[i]) + 1;
  char *joined = malloc(len + 1);
  if (!joined) {
    snprintf(out, out_size, "tally-%s", purpose);
    return;
  }
  joined[0] = '\0';
  for (size_t i = 0, used = 0; i < count; i++) {
    size_t part = strlen(parts[i]);
    memcpy(joined + used, parts[i], part);
    used += part;
    joined[used++] = '\n';
    joined[used] = '\0';
  }
  tly_sha256_hex(joined, strlen(joined), digest);
  free(joined);
  snprintf(out, out_size < 256 ? out_size : 256, "tally-%s-%s", purpose,
           digest);
}

void tly_stripe_subs_search_query(const char *subject, char *out,
                                  size_t out_size) {
  size_t used =
      (size_t)snprintf(out, out_size, "metadata['%s']:'", SUBJECT_KEY);
  for (const char *p = subject; *p && used + 3 < out_size; p++) {
    if (*p == '\'' || *p == '\\')
      out[used++] = '\\';
    out[used++] = *p;
  }
  if (used + 2 <= out_size) {
    out[used++] = '\'';
    out[used] = '\0';
  } else if (out_size) {
    out[out_size - 1] = '\0';
  }
}

/* ---- customers ----------------------------------------------------------- */

static json_t *customer_json(json_t *customer) {
  json_t *email = json_object_get(customer, "email");
  json_t *name = json_object_get(customer, "name");
  return json_pack(
      "{s:O,s:O,s:O}", "id",
      json_object_get(customer, "id") ? json_object_get(customer, "id")
                                      : json_null(),
      "email", email ? email : json_null(), "name", name ? name : json_null());
}

json_t *tly_stripe_subs_customer(const tly_stripe_subs_t *subs,
                                 const char *subject, const char *email,
                                 const char *name, int *status) {
  char query[1200], key[256];
  tly_stripe_response_t response;
  form_t form = {0};
  json_t *answer = NULL;

  /* Made by an earlier request whose answer was lost? */
  tly_stripe_subs_search_query(subject, query, sizeof(query));
  tly_stripe_param_t search[] = {{"query", query}, {"limit", "1"}};
  int rc = tly_stripe_subs_call(subs, "GET", "/v1/customers/search", search, 2,
                                NULL, &response, NULL);
  json_t *found = ok_object(rc, &response);
  json_t *first = json_array_get(json_object_get(found, "data"), 0);
  tly_stripe_response_clear(&response);
  if (json_is_object(first)) {
    *status = 200;
    answer = json_pack("{s:s,s:o,s:b,s:b,s:s}", "subject", subject, "customer",
                       customer_json(first), "created", 0, "pending", 1,
                       "found_by", "search");
    json_decref(found);
    return answer;
  }
  json_decref(found);

  if (email)
    form_add(&form, email, "email");
  if (name)
    form_add(&form, name, "name");
  form_add(&form, subject, "metadata[%s]", SUBJECT_KEY);
  const char *parts[] = {subject};
  tly_stripe_subs_key("customer", parts, 1, key, sizeof(key));
  rc = form.failed
           ? -1
           : call_form(subs, "POST", "/v1/customers", &form, key, &response);
  if (form.failed)
    snprintf(response.error, sizeof(response.error), "out of memory");
  json_t *customer = ok_object(rc, &response);
  if (customer) {
    *status = 200;
    answer = json_pack("{s:s,s:o,s:b,s:b,s:s}", "subject", subject, "customer",
                       customer_json(customer), "created",
                       !response.idempotent_replayed, "pending", 1, "found_by",
                       response.idempotent_replayed ? "idempotency_replay"
                                                    : "created");
    json_decref(customer);
  } else {
    answer = call_error(rc, &response, status);
  }
  if (!form.failed)
    tly_stripe_response_clear(&response);
  form_clear(&form);
  return answer;
}

/* ---- subscriptions ------------------------------------------------------- */

/* The metered feature of a price id in a plan's prices, or NULL. */
static const char *metered_feature(const tly_stripe_plan_prices_t *prices,
                                   const char *price_id) {
  for (size_t i = 0; prices && price_id && i < prices->metered_count; i++)
    if (strcmp(prices->metered[i].price_id, price_id) == 0)
      return prices->metered[i].feature;
  return NULL;
}

/* The price id of a subscription item or invoice line: price.id (expanded,
 * as Stripe sends it), a bare price, or pricing.price_details.price (lines
 * from API version 2025-03-31 on). */
static const char *item_price(json_t *item) {
  json_t *price = json_object_get(item, "price");
  const char *id = json_string_value(json_object_get(price, "id"));
  if (!id)
    id = json_string_value(price);
  if (!id)
    id = json_string_value(json_object_get(
        json_object_get(json_object_get(item, "pricing"), "price_details"),
        "price"));
  return id;
}

/* The plan of a subscription: its first item whose price maps to one. */
static const char *subscription_plan(const tly_config_t *config, json_t *sub) {
  size_t i;
  json_t *item;
  json_array_foreach(json_object_get(json_object_get(sub, "items"), "data"), i,
                     item) {
    const char *plan = tly_config_stripe_plan(config, item_price(item));
    if (plan)
      return plan;
  }
  return NULL;
}

static json_t *subscription_json(const tly_config_t *config, json_t *sub) {
  json_t *items = json_array();
  size_t i;
  json_t *item;
  json_array_foreach(json_object_get(json_object_get(sub, "items"), "data"), i,
                     item) {
    const char *price = item_price(item);
    json_array_append_new(items, json_pack("{s:O,s:s?}", "id",
                                           json_object_get(item, "id")
                                               ? json_object_get(item, "id")
                                               : json_null(),
                                           "price", price));
  }
  static const char *const copied[] = {"id",
                                       "status",
                                       "customer",
                                       "cancel_at_period_end",
                                       "canceled_at",
                                       "current_period_start",
                                       "current_period_end"};
  json_t *out = json_object();
  for (size_t k = 0; k < sizeof(copied) / sizeof(copied[0]); k++) {
    json_t *value = json_object_get(sub, copied[k]);
    json_object_set(out, copied[k], value ? value : json_null());
  }
  const char *plan = subscription_plan(config, sub);
  json_object_set_new(out, "plan", plan ? json_string(plan) : json_null());
  json_object_set_new(out, "items", items);
  return out;
}

static int subject_of(json_t *sub, const char *subject) {
  const char *value = json_string_value(
      json_object_get(json_object_get(sub, "metadata"), SUBJECT_KEY));
  return value && strcmp(value, subject) == 0;
}

static int is_live(json_t *sub) {
  const char *state = json_string_value(json_object_get(sub, "status"));
  return state && strcmp(state, "canceled") != 0 &&
         strcmp(state, "incomplete_expired") != 0;
}

/* The customer's subscriptions (every status): 0 with *list (the caller's),
 * or -1 with *error. */
static int list_subscriptions(const tly_stripe_subs_t *subs,
                              const char *customer, json_t **list,
                              json_t **error, int *status) {
  tly_stripe_response_t response;
  tly_stripe_param_t params[] = {
      {"customer", customer}, {"status", "all"}, {"limit", "100"}};
  int rc = tly_stripe_subs_call(subs, "GET", "/v1/subscriptions", params, 3,
                                NULL, &response, NULL);
  json_t *root = ok_object(rc, &response);
  if (!root) {
    *error = call_error(rc, &response, status);
    tly_stripe_response_clear(&response);
    return -1;
  }
  tly_stripe_response_clear(&response);
  *list = json_incref(json_object_get(root, "data"));
  json_decref(root);
  if (!json_is_array(*list)) {
    json_decref(*list);
    *list = json_array();
  }
  return 0;
}

/* The subject's live subscription in list (borrowed), or NULL; *count is
 * how many it ever had (every status). */
static json_t *subject_subscription(json_t *list, const char *subject,
                                    size_t *count) {
  json_t *live = NULL, *sub;
  size_t i;
  *count = 0;
  json_array_foreach(list, i, sub) {
    if (!subject_of(sub, subject))
      continue;
    (*count)++;
    if (!live && is_live(sub))
      live = sub;
  }
  return live;
}

json_t *tly_stripe_subs_subscribe(const tly_stripe_subs_t *subs,
                                  const char *subject, const char *customer,
                                  const char *plan, int *status) {
  const tly_stripe_plan_prices_t *prices =
      tly_config_stripe_plan_prices(subs->config, plan);
  json_t *list = NULL, *answer = NULL;
  tly_stripe_response_t response;
  form_t form = {0};
  char key[256], ordinal[32];
  size_t count;
  if (!prices)
    return answer_error(status, 400, "unknown_plan",
                        "the plan has no Stripe prices (stripe.plans)", "plan");
  if (list_subscriptions(subs, customer, &list, &answer, status))
    return answer;
  json_t *live = subject_subscription(list, subject, &count);
  if (live) {
    const char *current = subscription_plan(subs->config, live);
    if (current && strcmp(current, plan) == 0) {
      /* Made by an earlier request (whose answer was lost). */
      *status = 200;
      answer = json_pack("{s:s,s:s,s:b,s:b,s:o}", "subject", subject, "plan",
                         plan, "created", 0, "pending", 1, "subscription",
                         subscription_json(subs->config, live));
    } else {
      char message[256];
      snprintf(message, sizeof(message),
               "the subject has a subscription already (%.64s): change its "
               "plan with PUT",
               json_string_value(json_object_get(live, "id")));
      answer = answer_error(status, 409, "already_subscribed", message, NULL);
    }
    json_decref(list);
    return answer;
  }
  json_decref(list);
  form_add(&form, customer, "customer");
  form_add(&form, prices->base_price_id, "items[0][price]");
  form_add(&form, "1", "items[0][quantity]");
  for (size_t i = 0; i < prices->metered_count; i++)
    form_add(&form, prices->metered[i].price_id, "items[%zu][price]", i + 1);
  form_add(&form, subject, "metadata[%s]", SUBJECT_KEY);
  form_add(&form, plan, "metadata[tally_plan]");
  /* One key per (subject, customer, plan, how many subscriptions it had):
   * a retry repeats it, a subscription after a cancel gets a new one. */
  snprintf(ordinal, sizeof(ordinal), "%zu", count);
  const char *parts[] = {subject, customer, plan, ordinal};
  tly_stripe_subs_key("subscribe", parts, 4, key, sizeof(key));
  int rc = form.failed ? -1
                       : call_form(subs, "POST", "/v1/subscriptions", &form,
                                   key, &response);
  if (form.failed) {
    form_clear(&form);
    return answer_error(status, 500, "internal", "out of memory", NULL);
  }
  json_t *sub = ok_object(rc, &response);
  if (sub) {
    *status = 200;
    answer = json_pack("{s:s,s:s,s:b,s:b,s:o}", "subject", subject, "plan",
                       plan, "created", 1, "pending", 1, "subscription",
                       subscription_json(subs->config, sub));
    json_decref(sub);
  } else {
    answer = call_error(rc, &response, status);
  }
  tly_stripe_response_clear(&response);
  form_clear(&form);
  return answer;
}

/* The items of a plan change from `from` to `to` (prefix "items" or
 * "subscription_details[items]"): the base item gets the new base price, a
 * metered item the new plan's price for its feature or is deleted, the new
 * plan's other metered prices are added. */
static void change_items(form_t *form, const char *prefix, json_t *sub,
                         const tly_stripe_plan_prices_t *from,
                         const tly_stripe_plan_prices_t *to) {
  size_t n = 0, i;
  json_t *item;
  int kept[TLY_STRIPE_PLAN_METERED_MAX] = {0};
  json_array_foreach(json_object_get(json_object_get(sub, "items"), "data"), i,
                     item) {
    const char *id = json_string_value(json_object_get(item, "id"));
    const char *price = item_price(item);
    if (!id || !price)
      continue;
    const char *feature = metered_feature(from, price);
    int is_base = from && strcmp(price, from->base_price_id) == 0;
    if (!is_base && !feature)
      continue; /* not tally's: left as it is */
    form_add(form, id, "%s[%zu][id]", prefix, n);
    if (is_base) {
      form_add(form, to->base_price_id, "%s[%zu][price]", prefix, n);
    } else {
      size_t m = 0;
      while (m < to->metered_count &&
             strcmp(to->metered[m].feature, feature) != 0)
        m++;
      if (m < to->metered_count) {
        kept[m] = 1;
        form_add(form, to->metered[m].price_id, "%s[%zu][price]", prefix, n);
      } else {
        form_add(form, "true", "%s[%zu][deleted]", prefix, n);
      }
    }
    n++;
  }
  for (size_t m = 0; m < to->metered_count; m++)
    if (!kept[m])
      form_add(form, to->metered[m].price_id, "%s[%zu][price]", prefix, n++);
}

/* A proration line: "proration" (API versions before 2025-03-31) or
 * parent.subscription_item_details.proration (from then on). */
static int line_is_proration(json_t *line) {
  json_t *details = json_object_get(json_object_get(line, "parent"),
                                    "subscription_item_details");
  return json_is_true(json_object_get(line, "proration")) ||
         json_is_true(json_object_get(details, "proration"));
}

/* Signed Stripe amount to micro-units; 0 when it does not fit. */
static int64_t amount_micros(json_int_t amount, const char *currency) {
  int64_t factor = tly_stripe_micros_per_unit(currency);
  int64_t out;
  return __builtin_mul_overflow((int64_t)amount, factor, &out) ? 0 : out;
}

static json_t *preview_json(json_t *invoice) {
  const char *currency =
      json_string_value(json_object_get(invoice, "currency"));
  json_int_t proration = 0;
  json_t *lines = json_array(), *line;
  size_t i;
  json_array_foreach(json_object_get(json_object_get(invoice, "lines"), "data"),
                     i, line) {
    json_int_t amount = json_integer_value(json_object_get(line, "amount"));
    int prorated = line_is_proration(line);
    if (prorated)
      proration += amount;
    json_t *description = json_object_get(line, "description");
    json_array_append_new(lines,
                          json_pack("{s:O,s:I,s:b,s:s?}", "description",
                                    description ? description : json_null(),
                                    "amount", amount, "proration", prorated,
                                    "price", item_price(line)));
  }
  return json_pack(
      "{s:s?,s:I,s:I,s:I,s:I,s:I,s:o}", "currency", currency, "total",
      json_integer_value(json_object_get(invoice, "total")), "total_micros",
      (json_int_t)amount_micros(
          json_integer_value(json_object_get(invoice, "total")), currency),
      "amount_due", json_integer_value(json_object_get(invoice, "amount_due")),
      "proration_total", proration, "proration_micros",
      (json_int_t)amount_micros(proration, currency), "lines", lines);
}

/* The subject's live subscription (a new reference) or NULL with *answer
 * (404 not_subscribed, or Stripe's error). */
static json_t *find_live(const tly_stripe_subs_t *subs, const char *subject,
                         const char *customer, json_t **answer, int *status) {
  json_t *list = NULL;
  size_t count;
  if (list_subscriptions(subs, customer, &list, answer, status))
    return NULL;
  json_t *live = json_incref(subject_subscription(list, subject, &count));
  json_decref(list);
  if (!live)
    *answer = answer_error(status, 404, "not_subscribed",
                           "the subject has no live Stripe subscription", NULL);
  return live;
}

json_t *tly_stripe_subs_change(const tly_stripe_subs_t *subs,
                               const char *subject, const char *customer,
                               const char *plan, const char *proration_behavior,
                               int64_t now_s, int *status) {
  const tly_config_t *config = subs->config;
  const tly_stripe_plan_prices_t *to =
      tly_config_stripe_plan_prices(config, plan);
  json_t *answer = NULL, *preview = NULL;
  tly_stripe_response_t response;
  form_t form = {0};
  char key[256], date[32], path[300];
  if (!to)
    return answer_error(status, 400, "unknown_plan",
                        "the plan has no Stripe prices (stripe.plans)", "plan");
  if (!proration_behavior)
    proration_behavior = config->stripe.proration_behavior;
  json_t *sub = find_live(subs, subject, customer, &answer, status);
  if (!sub)
    return answer;
  const char *sub_id = json_string_value(json_object_get(sub, "id"));
  const char *current = subscription_plan(config, sub);
  const tly_stripe_plan_prices_t *from =
      tly_config_stripe_plan_prices(config, current);
  if (sub_id && !from) {
    json_decref(sub);
    return answer_error(status, 409, "unknown_subscription_plan",
                        "the subject's live subscription has no base price of "
                        "stripe.plans: tally cannot tell which items to "
                        "change",
                        NULL);
  }
  if (!sub_id || (current && strcmp(current, plan) == 0)) {
    *status = 200;
    answer = json_pack("{s:s,s:s,s:b,s:b,s:o}", "subject", subject, "plan",
                       plan, "unchanged", 1, "pending", 0, "subscription",
                       subscription_json(config, sub));
    json_decref(sub);
    return answer;
  }
  snprintf(date, sizeof(date), "%lld", (long long)now_s);

  /* Stripe's figure first, as of the same proration_date the change
   * uses, so the two agree. */
  form_add(&form, customer, "customer");
  form_add(&form, sub_id, "subscription");
  change_items(&form, "subscription_details[items]", sub, from, to);
  form_add(&form, proration_behavior,
           "subscription_details[proration_behavior]");
  form_add(&form, date, "subscription_details[proration_date]");
  int rc = form.failed ? -1
                       : call_form(subs, "POST", "/v1/invoices/create_preview",
                                   &form, NULL, &response);
  json_t *invoice = form.failed ? NULL : ok_object(rc, &response);
  if (invoice) {
    preview = preview_json(invoice);
    json_decref(invoice);
  } else {
    int ignored;
    preview = form.failed ? json_null() : call_error(rc, &response, &ignored);
  }
  if (!form.failed)
    tly_stripe_response_clear(&response);
  form_clear(&form);

  change_items(&form, "items", sub, from, to);
  form_add(&form, proration_behavior, "proration_behavior");
  form_add(&form, date, "proration_date");
  form_add(&form, plan, "metadata[tally_plan]");
  const char *parts[] = {subject, sub_id, plan, date, proration_behavior};
  tly_stripe_subs_key("change", parts, 5, key, sizeof(key));
  snprintf(path, sizeof(path), "/v1/subscriptions/%s", sub_id);
  rc = form.failed ? -1 : call_form(subs, "POST", path, &form, key, &response);
  if (form.failed) {
    answer = answer_error(status, 500, "internal", "out of memory", NULL);
  } else {
    json_t *changed = ok_object(rc, &response);
    if (changed) {
      *status = 200;
      answer = json_pack("{s:s,s:s?,s:s,s:b,s:s,s:I,s:o,s:O}", "subject",
                         subject, "from_plan", current, "to_plan", plan,
                         "pending", 1, "proration_behavior", proration_behavior,
                         "proration_date", (json_int_t)now_s, "subscription",
                         subscription_json(config, changed), "stripe_preview",
                         preview);
      json_decref(changed);
    } else {
      answer = call_error(rc, &response, status);
    }
    tly_stripe_response_clear(&response);
  }
  json_decref(preview);
  form_clear(&form);
  json_decref(sub);
  return answer;
}

json_t *tly_stripe_subs_cancel(const tly_stripe_subs_t *subs,
                               const char *subject, const char *customer,
                               int at_period_end, int *status) {
  json_t *answer = NULL;
  tly_stripe_response_t response;
  char key[256], path[300];
  json_t *sub = find_live(subs, subject, customer, &answer, status);
  if (!sub)
    return answer;
  const char *sub_id = json_string_value(json_object_get(sub, "id"));
  const char *parts[] = {subject, sub_id ? sub_id : ""};
  snprintf(path, sizeof(path), "/v1/subscriptions/%s", sub_id ? sub_id : "");
  int rc;
  if (at_period_end) {
    tly_stripe_param_t params[] = {{"cancel_at_period_end", "true"}};
    tly_stripe_subs_key("cancel-at-period-end", parts, 2, key, sizeof(key));
    rc = tly_stripe_subs_call(subs, "POST", path, params, 1, key, &response,
                              NULL);
  } else {
    tly_stripe_subs_key("cancel-now", parts, 2, key, sizeof(key));
    rc = tly_stripe_subs_call(subs, "DELETE", path, NULL, 0, key, &response,
                              NULL);
  }
  json_t *canceled = ok_object(rc, &response);
  if (canceled) {
    *status = 200;
    answer = json_pack("{s:s,s:b,s:b,s:o}", "subject", subject, "at_period_end",
                       at_period_end, "pending", 1, "subscription",
                       subscription_json(subs->config, canceled));
    json_decref(canceled);
  } else {
    answer = call_error(rc, &response, status);
  }
  tly_stripe_response_clear(&response);
  json_decref(sub);
  return answer;
}

/* ---- invoices ------------------------------------------------------------ */

/* Whether price is a metered price of any plan of stripe.plans. */
static int metered_price(const tly_config_t *config, const char *price) {
  for (size_t i = 0; price && i < config->stripe.plan_price_count; i++)
    if (metered_feature(&config->stripe.plan_prices[i], price))
      return 1;
  return 0;
}

json_t *tly_stripe_subs_invoice_json(const tly_config_t *config,
                                     json_t *invoice, const tly_cycle_t *cycles,
                                     size_t cycle_count) {
  const char *currency =
      json_string_value(json_object_get(invoice, "currency"));
  json_t *lines = json_object_get(invoice, "lines"), *line;
  json_int_t metered = 0;
  size_t i;
  json_array_foreach(json_object_get(lines, "data"), i, line) {
    if (metered_price(config, item_price(line)))
      metered += json_integer_value(json_object_get(line, "amount"));
  }
  int complete = !json_is_true(json_object_get(lines, "has_more"));
  int64_t metered_micros = amount_micros(metered, currency);
  int64_t start_ms =
      (int64_t)json_integer_value(json_object_get(invoice, "period_start")) *
      1000;
  int64_t end_ms =
      (int64_t)json_integer_value(json_object_get(invoice, "period_end")) *
      1000;
  const tly_cycle_t *cycle = NULL;
  for (size_t c = 0; c < cycle_count && !cycle; c++)
    if (cycles[c].start_ms == start_ms && cycles[c].end_ms == end_ms)
      cycle = &cycles[c];
  static const char *const copied[] = {"id",          "number",
                                       "status",      "currency",
                                       "total",       "amount_due",
                                       "amount_paid", "period_start",
                                       "period_end",  "hosted_invoice_url",
                                       "invoice_pdf"};
  json_t *out = json_object();
  for (size_t k = 0; k < sizeof(copied) / sizeof(copied[0]); k++) {
    json_t *value = json_object_get(invoice, copied[k]);
    json_object_set(out, copied[k], value ? value : json_null());
  }
  json_object_set_new(
      out, "total_micros",
      json_integer(amount_micros(
          json_integer_value(json_object_get(invoice, "total")), currency)));
  json_object_set_new(out, "metered_micros",
                      complete ? json_integer(metered_micros) : json_null());
  json_object_set_new(out, "folded",
                      cycle
                          ? json_pack("{s:I,s:I,s:I,s:I}", "start_ms",
                                      (json_int_t)cycle->start_ms, "end_ms",
                                      (json_int_t)cycle->end_ms, "cost_micros",
                                      (json_int_t)cycle->cost_micros, "events",
                                      (json_int_t)cycle->events)
                          : json_null());
  json_object_set_new(out, "matches_folded",
                      cycle && complete
                          ? json_boolean(cycle->cost_micros == metered_micros)
                          : json_null());
  return out;
}

json_t *tly_stripe_subs_invoices(const tly_stripe_subs_t *subs,
                                 const char *subject, const char *customer,
                                 int64_t limit, const tly_cycle_t *cycles,
                                 size_t cycle_count, int *status) {
  tly_stripe_response_t response;
  char limit_text[24];
  snprintf(limit_text, sizeof(limit_text), "%lld", (long long)limit);
  tly_stripe_param_t params[] = {{"customer", customer}, {"limit", limit_text}};
  int rc = tly_stripe_subs_call(subs, "GET", "/v1/invoices", params, 2, NULL,
                                &response, NULL);
  json_t *root = ok_object(rc, &response);
  if (!root) {
    json_t *answer = call_error(rc, &response, status);
    tly_stripe_response_clear(&response);
    return answer;
  }
  tly_stripe_response_clear(&response);
  json_t *invoices = json_array(), *invoice;
  size_t i, mismatches = 0;
  json_array_foreach(json_object_get(root, "data"), i, invoice) {
    json_t *entry = tly_stripe_subs_invoice_json(subs->config, invoice, cycles,
                                                 cycle_count);
    if (json_is_false(json_object_get(entry, "matches_folded")))
      mismatches++;
    json_array_append_new(invoices, entry);
  }
  *status = 200;
  json_t *answer =
      json_pack("{s:s,s:s,s:o,s:b,s:I}", "subject", subject, "customer",
                customer, "invoices", invoices, "has_more",
                json_is_true(json_object_get(root, "has_more")), "mismatches",
                (json_int_t)mismatches);
  json_decref(root);
  return answer;
}
