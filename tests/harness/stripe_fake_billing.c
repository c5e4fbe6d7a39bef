/*
 * stripe_fake_billing.c - customers, prices, subscriptions and invoices of
 * the Stripe-shaped test server, in the shapes of API version 2024-06-20
 * (the version tally pins), run under the server's lock by stripe_fake.c,
 * which also applies auth, faults and Idempotency-Key replay to them.
 *
 *   POST /v1/customers (email, name, metadata[k]) -> cus_fake_N
 *   GET  /v1/customers/search?query=metadata['k']:'v' (Stripe's search
 *        query language, one metadata clause; limit). Stripe's search lags
 *        writes ("less than a minute"): /_fake/search_delay makes the fake
 *        lag too, so a test can show the Idempotency-Key alone prevents a
 *        second customer.
 *   GET  /v1/customers/{id}
 *   POST /v1/subscriptions (customer, items[i][price], items[i][quantity],
 *        metadata[k]): active at once, a 30-day period from now (Stripe's
 *        is a calendar month), its first invoice paid at once (period_start
 *        = period_end = creation, as Stripe's first invoice);
 *   GET  /v1/subscriptions (customer, status: default every status but
 *        canceled, "all", or one; limit, starting_after), /{id}
 *   POST /v1/subscriptions/{id} (items[i][id|price|quantity|deleted],
 *        proration_behavior create_prorations (default) | always_invoice |
 *        none, proration_date within the period, cancel_at_period_end,
 *        metadata[k]). A licensed item's price change, addition or removal
 *        is prorated by the second: each line amount x (period_end -
 *        proration_date) / (period_end - period_start), rounded half up;
 *        "Unused time" lines negative, "Remaining time" lines positive;
 *        create_prorations keeps them as pending invoice items (the next
 *        invoice's), always_invoice invoices them now. Metered items are
 *        never prorated (their usage is billed in arrears).
 *   DELETE /v1/subscriptions/{id}: canceled now (ended_at, canceled_at).
 *   POST /v1/invoices/create_preview (customer, subscription,
 *        subscription_details[items][i][...], [proration_behavior],
 *        [proration_date]): the next invoice as it would be: the prorations
 *        of the change, the pending items, and the next period's licensed
 *        lines and the current period's metered usage (the meter events of
 *        the price's meter event_name for the customer, since the period
 *        began, x unit_amount). Nothing is kept.
 *   GET  /v1/invoices (customer, subscription, status, limit,
 *        starting_after; newest first), /{id}
 * Every change is also recorded as the event Stripe would deliver
 * (customer.created, customer.subscription.created/updated/deleted,
 * invoice.paid), for a test to sign and post to tally's webhook.
 *
 * Control routes (no auth):
 *   POST /_fake/prices {"id", "unit_amount", "usage_type": "licensed" |
 *        "metered", "meter_event_name", "currency"}  register a price
 *   POST /_fake/invoices {"subscription", "period_start", "period_end",
 *        "lines": [{"price", "quantity"}], "status"}  the invoice Stripe
 *        would make at a period's end (with the pending items): metered
 *        lines over the period (arrears), licensed ones over the next
 *        (advance)
 *   POST /_fake/search_delay {"seconds": S}
 *   GET  /_fake/events   {"events": [...]}, oldest first
 *   GET  /_fake/billing  {"customers", "subscriptions", "invoices",
 *                         "pending_items"}: counts
 */
#include "stripe_fake_internal.h"

#include <stdio.h>
#include <string.h>

#define PERIOD_S (30LL * 86400)

struct sf_billing {
  json_t *customers;     /* array */
  json_t *prices;        /* object: id -> price */
  json_t *subscriptions; /* array, oldest first */
  json_t *invoices;      /* array, oldest first */
  json_t *pending;       /* array of pending invoice items */
  json_t *events;        /* array, oldest first */
  int64_t search_delay_s;
};

static struct sf_billing *billing(sf_server_t *server) {
  if (!server->billing) {
    struct sf_billing *b = calloc(1, sizeof(*b));
    b->customers = json_array();
    b->prices = json_object();
    b->subscriptions = json_array();
    b->invoices = json_array();
    b->pending = json_array();
    b->events = json_array();
    server->billing = b;
  }
  return server->billing;
}

void sf_billing_free(sf_server_t *server) {
  struct sf_billing *b = server->billing;
  if (!b)
    return;
  json_decref(b->customers);
  json_decref(b->prices);
  json_decref(b->subscriptions);
  json_decref(b->invoices);
  json_decref(b->pending);
  json_decref(b->events);
  free(b);
  server->billing = NULL;
}

static void new_id(sf_server_t *server, const char *prefix, char *out,
                   size_t size) {
  snprintf(out, size, "%s_fake_%lld", prefix, ++server->next_id);
}

/* The event Stripe would deliver for object (a deep copy). */
static void record_event(sf_server_t *server, const char *type,
                         json_t *object) {
  char id[64];
  new_id(server, "evt", id, sizeof(id));
  json_array_append_new(billing(server)->events,
                        json_pack("{s:s,s:s,s:s,s:I,s:b,s:{s:o}}", "id", id,
                                  "object", "event", "type", type, "created",
                                  (json_int_t)sf_now_s(server), "livemode", 0,
                                  "data", "object", json_deep_copy(object)));
}

/* metadata[k]=v parameters into an object. */
static json_t *metadata_of(const params_t *params) {
  json_t *metadata = json_object();
  for (size_t i = 0; i < params->count; i++) {
    const char *key = params->items[i].key;
    size_t len = strlen(key);
    if (strncmp(key, "metadata[", 9) == 0 && len > 10 && key[len - 1] == ']') {
      char name[128];
      snprintf(name, sizeof(name), "%.*s", (int)(len - 10), key + 9);
      json_object_set_new(metadata, name, json_string(params->items[i].value));
    }
  }
  return metadata;
}

static void merge_metadata(json_t *object, const params_t *params) {
  json_t *metadata = metadata_of(params);
  json_object_update(json_object_get(object, "metadata"), metadata);
  json_decref(metadata);
}

static json_t *find_by_id(json_t *array, const char *id) {
  size_t i;
  json_t *item;
  json_array_foreach(array, i, item) {
    const char *item_id = json_string_value(json_object_get(item, "id"));
    if (item_id && id && strcmp(item_id, id) == 0)
      return item;
  }
  return NULL;
}

static void no_such(answer_t *answer, const char *what, const char *param,
                    const char *id, int status) {
  char message[300];
  snprintf(message, sizeof(message), "No such %s: '%.200s'", what, id);
  sf_answer_error(answer, status, "invalid_request_error", "resource_missing",
                  param, message);
}

static const char *text(json_t *object, const char *key) {
  return json_string_value(json_object_get(object, key));
}

static json_int_t integer(json_t *object, const char *key) {
  return json_integer_value(json_object_get(object, key));
}

/* ---- customers ----------------------------------------------------------- */

static int create_customer(sf_server_t *server, const char *path,
                           const params_t *params, answer_t *answer) {
  char id[64];
  (void)path;
  new_id(server, "cus", id, sizeof(id));
  const char *email = sf_param(params, "email");
  const char *name = sf_param(params, "name");
  json_t *customer =
      json_pack("{s:s,s:s,s:I,s:o,s:o,s:b,s:o}", "id", id, "object", "customer",
                "created", (json_int_t)sf_now_s(server), "email",
                email ? json_string(email) : json_null(), "name",
                name ? json_string(name) : json_null(), "livemode", 0,
                "metadata", metadata_of(params));
  json_array_append(billing(server)->customers, customer);
  /* Known to the meter events and the portal from now on. */
  GROW(server->customers, server->customer_count, server->customer_cap);
  server->customers[server->customer_count++] = strdup(id);
  record_event(server, "customer.created", customer);
  sf_answer_json(answer, 200, customer);
  return 1;
}

/* One clause of Stripe's search query language: metadata['key']:'value'
 * (either quote, backslash escapes). 0 or -1. */
static int parse_metadata_clause(const char *query, char *key, size_t key_size,
                                 char *value, size_t value_size) {
  const char *p = query;
  while (*p == ' ')
    p++;
  if (strncmp(p, "metadata[", 9) != 0)
    return -1;
  p += 9;
  char *outs[2] = {key, value};
  size_t sizes[2] = {key_size, value_size};
  for (int part = 0; part < 2; part++) {
    char quote = *p;
    if (quote != '\'' && quote != '"')
      return -1;
    size_t n = 0;
    for (p++; *p && *p != quote; p++) {
      if (*p == '\\' && p[1])
        p++;
      if (n + 1 >= sizes[part])
        return -1;
      outs[part][n++] = *p;
    }
    if (*p != quote)
      return -1;
    outs[part][n] = '\0';
    p++;
    if (part == 0) {
      if (p[0] != ']' || p[1] != ':')
        return -1;
      p += 2;
    }
  }
  while (*p == ' ')
    p++;
  return *p ? -1 : 0;
}

static void search_customers(sf_server_t *server, const params_t *params,
                             answer_t *answer) {
  static const char *const required[] = {"query", NULL};
  char key[128], value[1024];
  if (sf_require(params, required, answer))
    return;
  long limit = sf_list_limit(params, answer);
  if (!limit)
    return;
  if (parse_metadata_clause(sf_param(params, "query"), key, sizeof(key), value,
                            sizeof(value))) {
    sf_answer_error(
        answer, 400, "invalid_request_error", "parameter_invalid", "query",
        "The fake understands one clause: metadata['key']:'value'.");
    return;
  }
  json_t *data = json_array(), *customer;
  size_t i;
  int64_t visible_before = sf_now_s(server) - billing(server)->search_delay_s;
  json_array_foreach(billing(server)->customers, i, customer) {
    const char *found = text(json_object_get(customer, "metadata"), key);
    if (found && strcmp(found, value) == 0 &&
        (billing(server)->search_delay_s == 0 ||
         integer(customer, "created") <= visible_before) &&
        (long)json_array_size(data) < limit)
      json_array_append(data, customer);
  }
  sf_answer_json(answer, 200,
                 json_pack("{s:s,s:s,s:o,s:b,s:n}", "object", "search_result",
                           "url", "/v1/customers/search", "data", data,
                           "has_more", 0, "next_page"));
}

/* ---- prices, lines, invoices --------------------------------------------- */

static int metered(json_t *price) {
  const char *usage = text(json_object_get(price, "recurring"), "usage_type");
  return usage && strcmp(usage, "metered") == 0;
}

static json_int_t prorated(json_int_t amount, int64_t remaining,
                           int64_t total) {
  int negative = amount < 0;
  json_int_t magnitude = negative ? -amount : amount;
  json_int_t out = (json_int_t)((2 * (__int128)magnitude * remaining + total) /
                                (2 * (__int128)total));
  return negative ? -out : out;
}

static json_t *line(sf_server_t *server, json_t *sub, json_t *price,
                    json_int_t quantity, json_int_t amount, int proration,
                    const char *description, int64_t start, int64_t end) {
  char id[64];
  new_id(server, "il", id, sizeof(id));
  return json_pack("{s:s,s:s,s:I,s:s,s:s,s:{s:I,s:I},s:O,s:b,s:I,s:s,s:O}",
                   "id", id, "object", "line_item", "amount", amount,
                   "currency", "usd", "description", description, "period",
                   "start", (json_int_t)start, "end", (json_int_t)end, "price",
                   price, "proration", proration, "quantity", quantity, "type",
                   proration ? "invoiceitem" : "subscription", "subscription",
                   sub ? json_object_get(sub, "id") : json_null());
}

static json_t *invoice_of(sf_server_t *server, json_t *sub, json_t *lines,
                          const char *status, int64_t start, int64_t end,
                          int preview) {
  char id[64], number[32], url[200], pdf[220];
  json_int_t total = 0;
  size_t i;
  json_t *item;
  json_array_foreach(lines, i, item) total += integer(item, "amount");
  if (preview) {
    new_id(server, "upcoming_in", id, sizeof(id));
  } else {
    new_id(server, "in", id, sizeof(id));
  }
  snprintf(number, sizeof(number), "FAKE-%04zu",
           json_array_size(billing(server)->invoices) + 1);
  snprintf(url, sizeof(url), "http://127.0.0.1:%u/i/%s", (unsigned)server->port,
           id);
  snprintf(pdf, sizeof(pdf), "%s/pdf", url);
  int paid = strcmp(status, "paid") == 0;
  json_t *metadata = json_object_get(sub, "metadata");
  return json_pack(
      "{s:s,s:s,s:o,s:O,s:O,s:s,s:I,s:I,s:I,s:s,s:I,s:I,s:I,s:I,s:o,s:o,"
      "s:{s:s,s:o,s:b,s:s},s:{s:O},s:{}}",
      "id", id, "object", "invoice", "number",
      preview ? json_null() : json_string(number), "customer",
      json_object_get(sub, "customer"), "subscription",
      json_object_get(sub, "id"), "status", status, "created",
      (json_int_t)sf_now_s(server), "period_start", (json_int_t)start,
      "period_end", (json_int_t)end, "currency", "usd", "subtotal", total,
      "total", total, "amount_due", total, "amount_paid", paid ? total : 0,
      "hosted_invoice_url", preview ? json_null() : json_string(url),
      "invoice_pdf", preview ? json_null() : json_string(pdf), "lines",
      "object", "list", "data", lines, "has_more", 0, "url", "/v1/invoices",
      "subscription_details", "metadata", metadata ? metadata : json_null(),
      "metadata");
}

/* Keeps invoice (taken) and records invoice.paid when it is paid. */
static json_t *keep_invoice(sf_server_t *server, json_t *invoice) {
  json_array_append_new(billing(server)->invoices, invoice);
  if (strcmp(text(invoice, "status"), "paid") == 0)
    record_event(server, "invoice.paid", invoice);
  return invoice;
}

/* The pending items of sub (taken from the list when take). */
static json_t *pending_of(sf_server_t *server, json_t *sub, int take) {
  json_t *out = json_array(), *keep = json_array(), *item;
  size_t i;
  json_array_foreach(billing(server)->pending, i, item) {
    if (strcmp(text(item, "subscription"), text(sub, "id")) == 0)
      json_array_append(out, item);
    else
      json_array_append(keep, item);
  }
  if (take) {
    json_array_clear(billing(server)->pending);
    json_array_extend(billing(server)->pending, keep);
  }
  json_decref(keep);
  return out;
}

/* ---- subscriptions ------------------------------------------------------- */

static json_t *item_of(sf_server_t *server, json_t *sub, json_t *price,
                       json_int_t quantity) {
  char id[64];
  new_id(server, "si", id, sizeof(id));
  json_t *item = json_pack(
      "{s:s,s:s,s:O,s:O,s:I,s:I}", "id", id, "object", "subscription_item",
      "price", price, "subscription", json_object_get(sub, "id"),
      "current_period_start", integer(sub, "current_period_start"),
      "current_period_end", integer(sub, "current_period_end"));
  if (!metered(price))
    json_object_set_new(item, "quantity", json_integer(quantity));
  return item;
}

static json_t *items_of(json_t *sub) {
  return json_object_get(json_object_get(sub, "items"), "data");
}

/* items[i][...] (prefix "items" or "subscription_details[items]") checked
 * against the prices and sub's items; 0 or 1 with answer filled. */
static int check_items(sf_server_t *server, const params_t *params,
                       const char *prefix, json_t *sub, int creating,
                       answer_t *answer) {
  char key[160];
  size_t count = 0;
  for (size_t i = 0;; i++, count++) {
    snprintf(key, sizeof(key), "%s[%zu][price]", prefix, i);
    const char *price = sf_param(params, key);
    snprintf(key, sizeof(key), "%s[%zu][id]", prefix, i);
    const char *id = sf_param(params, key);
    if (!price && !id)
      break;
    if (price && !json_object_get(billing(server)->prices, price)) {
      snprintf(key, sizeof(key), "%s[%zu][price]", prefix, i);
      no_such(answer, "price", key, price, 400);
      return 1;
    }
    if (id && (creating || !find_by_id(items_of(sub), id))) {
      no_such(answer, "subscription item", key, id, 400);
      return 1;
    }
  }
  if (creating && !count) {
    sf_answer_error(answer, 400, "invalid_request_error", "parameter_missing",
                    "items", "Missing required param: items.");
    return 1;
  }
  return 0;
}

static int create_subscription(sf_server_t *server, const char *path,
                               const params_t *params, answer_t *answer) {
  static const char *const required[] = {"customer", NULL};
  char id[64], key[64];
  (void)path;
  if (sf_require(params, required, answer) ||
      check_items(server, params, "items", NULL, 1, answer))
    return 0;
  const char *customer = sf_param(params, "customer");
  if (!find_by_id(billing(server)->customers, customer)) {
    no_such(answer, "customer", "customer", customer, 400);
    return 1;
  }
  int64_t now = sf_now_s(server);
  new_id(server, "sub", id, sizeof(id));
  json_t *sub = json_pack(
      "{s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:b,s:n,s:n,s:o,s:{s:s,s:[],s:b,s:s}}",
      "id", id, "object", "subscription", "customer", customer, "status",
      "active", "created", (json_int_t)now, "current_period_start",
      (json_int_t)now, "current_period_end", (json_int_t)(now + PERIOD_S),
      "cancel_at_period_end", 0, "canceled_at", "ended_at", "metadata",
      metadata_of(params), "items", "object", "list", "data", "has_more", 0,
      "url", "/v1/subscription_items");
  json_t *lines = json_array();
  for (size_t i = 0;; i++) {
    snprintf(key, sizeof(key), "items[%zu][price]", i);
    const char *price_id = sf_param(params, key);
    if (!price_id)
      break;
    json_t *price = json_object_get(billing(server)->prices, price_id);
    snprintf(key, sizeof(key), "items[%zu][quantity]", i);
    long long quantity = 1;
    if (sf_param(params, key))
      sf_parse_integer(sf_param(params, key), &quantity);
    json_array_append_new(items_of(sub), item_of(server, sub, price, quantity));
    if (!metered(price))
      json_array_append_new(
          lines, line(server, sub, price, quantity,
                      integer(price, "unit_amount") * quantity, 0,
                      "1 x subscription (first period)", now, now + PERIOD_S));
  }
  json_t *invoice =
      keep_invoice(server, invoice_of(server, sub, lines, "paid", now, now, 0));
  json_object_set(sub, "latest_invoice", json_object_get(invoice, "id"));
  json_array_append(billing(server)->subscriptions, sub);
  record_event(server, "customer.subscription.created", sub);
  sf_answer_json(answer, 200, sub);
  return 1;
}

/* Applies items[i] of params (prefix) to a copy of sub's items, with the
 * proration lines of the licensed changes at date into prorations. The
 * new items array. */
static json_t *apply_items(sf_server_t *server, json_t *sub,
                           const params_t *params, const char *prefix,
                           int64_t date, json_t *prorations) {
  char key[160];
  json_t *items = json_deep_copy(items_of(sub));
  int64_t start = integer(sub, "current_period_start");
  int64_t end = integer(sub, "current_period_end");
  int64_t remaining = end - date, total = end - start;
  for (size_t i = 0;; i++) {
    snprintf(key, sizeof(key), "%s[%zu][price]", prefix, i);
    const char *price_id = sf_param(params, key);
    snprintf(key, sizeof(key), "%s[%zu][id]", prefix, i);
    const char *item_id = sf_param(params, key);
    snprintf(key, sizeof(key), "%s[%zu][deleted]", prefix, i);
    const char *deleted = sf_param(params, key);
    if (!price_id && !item_id)
      break;
    json_t *item = item_id ? find_by_id(items, item_id) : NULL;
    json_t *old_price = item ? json_object_get(item, "price") : NULL;
    json_t *new_price =
        price_id ? json_object_get(billing(server)->prices, price_id) : NULL;
    json_int_t quantity = item && json_object_get(item, "quantity")
                              ? integer(item, "quantity")
                              : 1;
    if (old_price && !metered(old_price) &&
        ((deleted && strcmp(deleted, "true") == 0) || new_price))
      json_array_append_new(
          prorations,
          line(server, sub, old_price, quantity,
               prorated(-integer(old_price, "unit_amount") * quantity,
                        remaining, total),
               1, "Unused time", date, end));
    if (new_price && !metered(new_price))
      json_array_append_new(
          prorations,
          line(server, sub, new_price, quantity,
               prorated(integer(new_price, "unit_amount") * quantity, remaining,
                        total),
               1, "Remaining time", date, end));
    if (item && deleted && strcmp(deleted, "true") == 0) {
      size_t k;
      json_t *other;
      json_array_foreach(items, k, other) {
        if (other == item) {
          json_array_remove(items, k);
          break;
        }
      }
    } else if (item && new_price) {
      json_object_set(item, "price", new_price);
      if (metered(new_price))
        json_object_del(item, "quantity");
      else if (!json_object_get(item, "quantity"))
        json_object_set_new(item, "quantity", json_integer(1));
    } else if (!item && new_price) {
      json_array_append_new(items, item_of(server, sub, new_price, 1));
    }
  }
  return items;
}

/* proration_behavior and proration_date of params (key names given); 0,
 * or 1 with answer filled. */
static int proration_params(sf_server_t *server, const params_t *params,
                            const char *behavior_key, const char *date_key,
                            json_t *sub, const char **behavior, int64_t *date,
                            answer_t *answer) {
  *behavior = sf_param(params, behavior_key);
  if (!*behavior)
    *behavior = "create_prorations";
  if (strcmp(*behavior, "create_prorations") != 0 &&
      strcmp(*behavior, "always_invoice") != 0 &&
      strcmp(*behavior, "none") != 0) {
    sf_answer_error(answer, 400, "invalid_request_error", "parameter_invalid",
                    behavior_key,
                    "Invalid proration_behavior: must be one of "
                    "create_prorations, always_invoice, none.");
    return 1;
  }
  *date = sf_now_s(server);
  const char *text_date = sf_param(params, date_key);
  long long parsed;
  if (text_date) {
    if (sf_parse_integer(text_date, &parsed) ||
        parsed < integer(sub, "current_period_start") ||
        parsed > integer(sub, "current_period_end")) {
      sf_answer_error(answer, 400, "invalid_request_error", "parameter_invalid",
                      date_key,
                      "proration_date must be within the current period.");
      return 1;
    }
    *date = parsed;
  }
  return 0;
}

static json_t *find_subscription(sf_server_t *server, const char *path) {
  return find_by_id(billing(server)->subscriptions,
                    path + strlen("/v1/subscriptions/"));
}

static int update_subscription(sf_server_t *server, const char *path,
                               const params_t *params, answer_t *answer) {
  json_t *sub = find_subscription(server, path);
  const char *behavior;
  int64_t date;
  if (!sub) {
    no_such(answer, "subscription", "id", path + strlen("/v1/subscriptions/"),
            404);
    return 0;
  }
  if (strcmp(text(sub, "status"), "canceled") == 0) {
    sf_answer_error(answer, 400, "invalid_request_error", NULL, NULL,
                    "A canceled subscription can only update its "
                    "cancellation_details and metadata.");
    return 1;
  }
  if (check_items(server, params, "items", sub, 0, answer) ||
      proration_params(server, params, "proration_behavior", "proration_date",
                       sub, &behavior, &date, answer))
    return 0;
  json_t *prorations = json_array();
  json_t *items = apply_items(server, sub, params, "items", date, prorations);
  json_object_set_new(json_object_get(sub, "items"), "data", items);
  merge_metadata(sub, params);
  const char *at_end = sf_param(params, "cancel_at_period_end");
  if (at_end)
    json_object_set_new(sub, "cancel_at_period_end",
                        json_boolean(strcmp(at_end, "true") == 0));
  if (strcmp(behavior, "create_prorations") == 0) {
    json_array_extend(billing(server)->pending, prorations);
  } else if (strcmp(behavior, "always_invoice") == 0 &&
             json_array_size(prorations)) {
    json_t *lines = pending_of(server, sub, 1);
    json_array_extend(lines, prorations);
    json_t *invoice =
        keep_invoice(server, invoice_of(server, sub, lines, "paid", date,
                                        integer(sub, "current_period_end"), 0));
    json_object_set(sub, "latest_invoice", json_object_get(invoice, "id"));
  }
  json_decref(prorations);
  record_event(server, "customer.subscription.updated", sub);
  sf_answer_json(answer, 200, json_incref(sub));
  return 1;
}

static int cancel_subscription(sf_server_t *server, const char *path,
                               const params_t *params, answer_t *answer) {
  json_t *sub = find_subscription(server, path);
  (void)params;
  if (!sub) {
    no_such(answer, "subscription", "id", path + strlen("/v1/subscriptions/"),
            404);
    return 0;
  }
  if (strcmp(text(sub, "status"), "canceled") == 0) {
    sf_answer_error(answer, 400, "invalid_request_error", NULL, NULL,
                    "This subscription is already canceled.");
    return 1;
  }
  json_int_t now = (json_int_t)sf_now_s(server);
  json_object_set_new(sub, "status", json_string("canceled"));
  json_object_set_new(sub, "canceled_at", json_integer(now));
  json_object_set_new(sub, "ended_at", json_integer(now));
  json_object_set_new(sub, "cancellation_details",
                      json_pack("{s:s}", "reason", "cancellation_requested"));
  record_event(server, "customer.subscription.deleted", sub);
  sf_answer_json(answer, 200, json_incref(sub));
  return 1;
}

/* The metered usage of item's price since start: the customer's meter
 * events of the price's meter event_name. */
static long long metered_usage(sf_server_t *server, json_t *sub, json_t *price,
                               int64_t start) {
  const char *event_name = text(price, "meter_event_name");
  long long sum = 0;
  for (size_t i = 0; event_name && i < server->event_count; i++)
    if (server->events[i].timestamp >= start &&
        strcmp(server->events[i].customer, text(sub, "customer")) == 0 &&
        strcmp(server->events[i].event_name, event_name) == 0)
      sum += server->events[i].value;
  return sum;
}

static int create_preview(sf_server_t *server, const char *path,
                          const params_t *params, answer_t *answer) {
  const char *behavior;
  int64_t date;
  (void)path;
  const char *sub_id = sf_param(params, "subscription");
  const char *customer = sf_param(params, "customer");
  if (!sub_id) {
    sf_answer_error(answer, 400, "invalid_request_error", "parameter_missing",
                    "subscription",
                    "The fake previews a subscription's next invoice: "
                    "subscription is required.");
    return 0;
  }
  json_t *sub = find_by_id(billing(server)->subscriptions, sub_id);
  if (!sub) {
    no_such(answer, "subscription", "subscription", sub_id, 400);
    return 0;
  }
  if (customer && strcmp(customer, text(sub, "customer")) != 0) {
    sf_answer_error(answer, 400, "invalid_request_error", NULL, "customer",
                    "The subscription does not belong to that customer.");
    return 0;
  }
  if (check_items(server, params, "subscription_details[items]", sub, 0,
                  answer) ||
      proration_params(server, params,
                       "subscription_details[proration_behavior]",
                       "subscription_details[proration_date]", sub, &behavior,
                       &date, answer))
    return 0;
  json_t *prorations = json_array();
  json_t *items = apply_items(server, sub, params,
                              "subscription_details[items]", date, prorations);
  json_t *lines = pending_of(server, sub, 0);
  if (strcmp(behavior, "none") != 0)
    json_array_extend(lines, prorations);
  int64_t start = integer(sub, "current_period_start");
  int64_t end = integer(sub, "current_period_end");
  size_t i;
  json_t *item;
  json_array_foreach(items, i, item) {
    json_t *price = json_object_get(item, "price");
    if (metered(price)) {
      long long usage = metered_usage(server, sub, price, start);
      json_array_append_new(lines, line(server, sub, price, usage,
                                        usage * integer(price, "unit_amount"),
                                        0, "Usage this period", start, end));
    } else {
      json_int_t quantity = integer(item, "quantity");
      json_array_append_new(lines,
                            line(server, sub, price, quantity,
                                 integer(price, "unit_amount") * quantity, 0,
                                 "Next period", end, end + PERIOD_S));
    }
  }
  json_decref(items);
  json_decref(prorations);
  sf_answer_json(answer, 200,
                 invoice_of(server, sub, lines, "draft", start, end, 1));
  return 1;
}

static const struct {
  const char *method, *path; /* a path ending in '/': one more segment */
  sf_endpoint_fn run;
} billing_endpoints[] = {
    {"POST", "/v1/customers", create_customer},
    {"POST", "/v1/subscriptions", create_subscription},
    {"POST", "/v1/invoices/create_preview", create_preview},
    {"POST", "/v1/subscriptions/", update_subscription},
    {"DELETE", "/v1/subscriptions/", cancel_subscription},
};

sf_endpoint_fn sf_billing_endpoint(const char *method, const char *path) {
  for (size_t i = 0;
       i < sizeof(billing_endpoints) / sizeof(billing_endpoints[0]); i++) {
    const char *want = billing_endpoints[i].path;
    size_t len = strlen(want);
    if (strcmp(method, billing_endpoints[i].method) != 0)
      continue;
    if (want[len - 1] != '/' ? strcmp(path, want) == 0
                             : strncmp(path, want, len) == 0 && path[len] &&
                                   !strchr(path + len, '/'))
      return billing_endpoints[i].run;
  }
  return NULL;
}

/* ---- the GET API --------------------------------------------------------- */

/* Newest first, those whose field equals the param (when given). */
static json_t *filtered(json_t *array, const params_t *params,
                        const char *const *fields) {
  json_t *out = json_array(), *item;
  for (size_t i = json_array_size(array); i > 0; i--) {
    item = json_array_get(array, i - 1);
    int keep = 1;
    for (size_t f = 0; fields[f] && keep; f++) {
      const char *want = sf_param(params, fields[f]);
      const char *have = text(item, fields[f]);
      keep = !want || (have && strcmp(want, have) == 0);
    }
    if (keep)
      json_array_append(out, item);
  }
  return out;
}

int sf_billing_get(sf_server_t *server, const char *path,
                   const params_t *params, answer_t *answer) {
  static const char *const customer_fields[] = {"customer", NULL};
  static const char *const invoice_fields[] = {"customer", "subscription",
                                               "status", NULL};
  struct sf_billing *b = billing(server);
  if (strcmp(path, "/v1/customers/search") == 0) {
    search_customers(server, params, answer);
    return 1;
  }
  if (strcmp(path, "/v1/subscriptions") == 0 ||
      strcmp(path, "/v1/invoices") == 0) {
    int subscriptions = path[4] == 's';
    long limit = sf_list_limit(params, answer);
    if (!limit)
      return 1;
    json_t *items =
        filtered(subscriptions ? b->subscriptions : b->invoices, params,
                 subscriptions ? customer_fields : invoice_fields);
    if (subscriptions) {
      /* status: every status but canceled by default, or "all", or one. */
      const char *status = sf_param(params, "status");
      json_t *kept = json_array(), *sub;
      size_t i;
      json_array_foreach(items, i, sub) {
        const char *state = text(sub, "status");
        if (status ? strcmp(status, "all") == 0 || strcmp(status, state) == 0
                   : strcmp(state, "canceled") != 0)
          json_array_append(kept, sub);
      }
      json_decref(items);
      items = kept;
    }
    sf_answer_list(answer, path, items, params, limit);
    return 1;
  }
  static const struct {
    const char *prefix, *what;
  } singles[] = {{"/v1/customers/", "customer"},
                 {"/v1/subscriptions/", "subscription"},
                 {"/v1/invoices/", "invoice"}};
  for (size_t i = 0; i < sizeof(singles) / sizeof(singles[0]); i++) {
    size_t len = strlen(singles[i].prefix);
    if (strncmp(path, singles[i].prefix, len) != 0 || !path[len] ||
        strchr(path + len, '/'))
      continue;
    json_t *array = i == 0   ? b->customers
                    : i == 1 ? b->subscriptions
                             : b->invoices;
    json_t *found = find_by_id(array, path + len);
    if (found)
      sf_answer_json(answer, 200, json_incref(found));
    else
      no_such(answer, singles[i].what, "id", path + len, 404);
    return 1;
  }
  return 0;
}

/* ---- control routes ------------------------------------------------------ */

static void control_price(sf_server_t *server, json_t *body, answer_t *answer) {
  const char *id = text(body, "id");
  const char *usage = text(body, "usage_type");
  if (!id || !json_is_integer(json_object_get(body, "unit_amount"))) {
    sf_answer_error(answer, 400, "invalid_request_error", NULL, "id",
                    "{\"id\", \"unit_amount\"} expected");
    return;
  }
  const char *currency = text(body, "currency");
  const char *event_name = text(body, "meter_event_name");
  json_t *price =
      json_pack("{s:s,s:s,s:b,s:s,s:I,s:s,s:{s:s,s:i,s:s}}", "id", id, "object",
                "price", "active", 1, "currency", currency ? currency : "usd",
                "unit_amount", integer(body, "unit_amount"), "type",
                "recurring", "recurring", "interval", "month", "interval_count",
                1, "usage_type", usage ? usage : "licensed");
  if (event_name)
    json_object_set_new(price, "meter_event_name", json_string(event_name));
  json_object_set(billing(server)->prices, id, price);
  sf_answer_json(answer, 200, price);
}

static void control_invoice(sf_server_t *server, json_t *body,
                            answer_t *answer) {
  json_t *sub =
      find_by_id(billing(server)->subscriptions, text(body, "subscription"));
  if (!sub) {
    sf_answer_error(answer, 400, "invalid_request_error", NULL, "subscription",
                    "no such subscription");
    return;
  }
  json_t *lines = pending_of(server, sub, 1), *given;
  size_t i;
  json_array_foreach(json_object_get(body, "lines"), i, given) {
    json_t *price =
        json_object_get(billing(server)->prices, text(given, "price"));
    if (!price) {
      json_decref(lines);
      sf_answer_error(answer, 400, "invalid_request_error", NULL, "price",
                      "no such price");
      return;
    }
    json_int_t quantity = integer(given, "quantity");
    int64_t start = integer(body, "period_start");
    int64_t end = integer(body, "period_end");
    /* As Stripe bills: usage in arrears (the invoice's period), the
     * licensed price in advance (the next period). */
    json_array_append_new(lines,
                          line(server, sub, price, quantity,
                               quantity * integer(price, "unit_amount"), 0,
                               metered(price) ? "Usage" : "Subscription",
                               metered(price) ? start : end,
                               metered(price) ? end : end + PERIOD_S));
  }
  const char *status = text(body, "status");
  json_t *invoice = keep_invoice(
      server, invoice_of(server, sub, lines, status ? status : "paid",
                         integer(body, "period_start"),
                         integer(body, "period_end"), 0));
  sf_answer_json(answer, 200, json_incref(invoice));
}

int sf_billing_control(sf_server_t *server, const char *method,
                       const char *path, json_t *body, answer_t *answer) {
  struct sf_billing *b = billing(server);
  int post = strcmp(method, "POST") == 0;
  if (post && strcmp(path, "/_fake/prices") == 0) {
    control_price(server, body, answer);
  } else if (post && strcmp(path, "/_fake/invoices") == 0) {
    control_invoice(server, body, answer);
  } else if (post && strcmp(path, "/_fake/search_delay") == 0) {
    b->search_delay_s = integer(body, "seconds");
    sf_answer_json(answer, 200, json_pack("{s:b}", "ok", 1));
  } else if (!post && strcmp(path, "/_fake/events") == 0) {
    sf_answer_json(answer, 200, json_pack("{s:O}", "events", b->events));
  } else if (!post && strcmp(path, "/_fake/billing") == 0) {
    sf_answer_json(
        answer, 200,
        json_pack("{s:I,s:I,s:I,s:I}", "customers",
                  (json_int_t)json_array_size(b->customers), "subscriptions",
                  (json_int_t)json_array_size(b->subscriptions), "invoices",
                  (json_int_t)json_array_size(b->invoices), "pending_items",
                  (json_int_t)json_array_size(b->pending)));
  } else {
    return 0;
  }
  return 1;
}
