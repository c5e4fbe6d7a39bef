/*
 * tly_stripe_webhook.c - Stripe-Signature verification and the mapping of
 * Stripe events to tally events (see tly_stripe_webhook.h for the rules).
 *
 * Everything here is pure: the caller passes the time, and the only state
 * read is the config. The signature is checked before the body is parsed,
 * so an unsigned body never reaches the JSON parser.
 */
#include "tly_stripe_webhook.h"

#include "tly_event_time.h"
#include "tly_sha256.h"
#include "tly_stripe_client.h"

#include <ctype.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TLY_COUNT(array) (sizeof(array) / sizeof((array)[0]))
/* A Stripe id longer than this is not one: refuse rather than truncate. */
#define EVENT_ID_MAX (TLY_STRIPE_ID_MAX - 1)

/* ---- signature --------------------------------------------------------- */

void tly_stripe_signature_compute(const char *secret, int64_t timestamp_s,
                                  const char *body, size_t len,
                                  char out[TLY_STRIPE_SIGNATURE_HEX_LEN + 1]) {
  unsigned char digest[TLY_SHA256_LEN];
  char prefix[32];
  int prefix_len =
      snprintf(prefix, sizeof(prefix), "%lld.", (long long)timestamp_s);
  tly_hmac_t *hmac = tly_hmac_sha256_begin(secret, strlen(secret));
  int ok = hmac && !tly_hmac_update(hmac, prefix, (size_t)prefix_len) &&
           !tly_hmac_update(hmac, body, len);
  ok = !tly_hmac_end(hmac, digest) && ok;
  if (ok) {
    tly_hex_encode(digest, TLY_SHA256_LEN, out);
    return;
  }
  /* Only on OOM: a value no hex signature can equal. */
  memset(out, 'x', TLY_STRIPE_SIGNATURE_HEX_LEN);
  out[TLY_STRIPE_SIGNATURE_HEX_LEN] = '\0';
}

typedef struct {
  int64_t timestamp_s;
  size_t count;
  char v1[TLY_STRIPE_SIGNATURES_MAX][TLY_STRIPE_SIGNATURE_HEX_LEN + 1];
} signature_header_t;

/* "t=...,v1=...,v0=...": one t (decimal), v1 values of 64 hex characters;
 * other schemes (v0 is Stripe's test scheme) are ignored, as Stripe's own
 * libraries do. 0 or -1 with err. */
static int parse_signature_header(const char *header, signature_header_t *out,
                                  tly_req_error_t *err) {
  int have_t = 0;
  memset(out, 0, sizeof(*out));
  const char *item = header;
  while (*item) {
    size_t len = strcspn(item, ",");
    const char *end = item + len;
    while (item < end && isspace((unsigned char)*item))
      item++;
    const char *eq = memchr(item, '=', (size_t)(end - item));
    if (!eq)
      return tly_req_fail(err, 400, "malformed_signature", "Stripe-Signature",
                          "Stripe-Signature: expected t=...,v1=... items");
    size_t key_len = (size_t)(eq - item), value_len = (size_t)(end - eq - 1);
    const char *value = eq + 1;
    while (value_len && isspace((unsigned char)value[value_len - 1]))
      value_len--;
    if (key_len == 1 && item[0] == 't') {
      int64_t t = 0;
      if (have_t || value_len == 0 || value_len > 12)
        return tly_req_fail(err, 400, "malformed_signature", "Stripe-Signature",
                            "Stripe-Signature: one t=<unix seconds> expected");
      for (size_t i = 0; i < value_len; i++) {
        if (!isdigit((unsigned char)value[i]))
          return tly_req_fail(err, 400, "malformed_signature",
                              "Stripe-Signature",
                              "Stripe-Signature: t is not a number");
        t = t * 10 + (value[i] - '0');
      }
      out->timestamp_s = t;
      have_t = 1;
    } else if (key_len == 2 && item[0] == 'v' && item[1] == '1') {
      /* A v1 of another length can never match: keep only real ones. */
      if (value_len == TLY_STRIPE_SIGNATURE_HEX_LEN &&
          out->count < TLY_STRIPE_SIGNATURES_MAX) {
        memcpy(out->v1[out->count], value, value_len);
        out->v1[out->count][value_len] = '\0';
        out->count++;
      }
    }
    item = *end ? end + 1 : end;
  }
  if (!have_t)
    return tly_req_fail(err, 400, "malformed_signature", "Stripe-Signature",
                        "Stripe-Signature: no t=<timestamp>");
  if (!out->count)
    return tly_req_fail(err, 400, "malformed_signature", "Stripe-Signature",
                        "Stripe-Signature: no v1=<signature>");
  return 0;
}

int tly_stripe_signature_verify(const tly_stripe_config_t *stripe,
                                const char *header, const char *body,
                                size_t len, int64_t now_s,
                                tly_req_error_t *err) {
  signature_header_t parsed;
  if (!stripe->webhook_secret_count)
    return tly_req_fail(
        err, 503, "stripe_not_configured", "",
        "no Stripe webhook secret is configured "
        "(stripe.webhook_secrets or stripe.webhook_secrets_env)");
  if (!header || !*header)
    return tly_req_fail(err, 400, "missing_signature", "Stripe-Signature",
                        "Stripe-Signature header missing");
  if (parse_signature_header(header, &parsed, err))
    return -1;
  /* Every secret against every v1, no early exit: the time taken does not
   * tell which secret or which signature came close. */
  int matched = 0;
  for (size_t s = 0; s < stripe->webhook_secret_count; s++) {
    char expected[TLY_STRIPE_SIGNATURE_HEX_LEN + 1];
    tly_stripe_signature_compute(stripe->webhook_secrets[s], parsed.timestamp_s,
                                 body, len, expected);
    for (size_t i = 0; i < parsed.count; i++)
      matched |= CRYPTO_memcmp(expected, parsed.v1[i],
                               TLY_STRIPE_SIGNATURE_HEX_LEN) == 0;
  }
  if (!matched)
    return tly_req_fail(err, 400, "signature_mismatch", "Stripe-Signature",
                        "no v1 signature matches the body with any configured "
                        "webhook secret");
  /* Checked after the signature, so the stamp is Stripe's, not anyone's. */
  int64_t skew = now_s - parsed.timestamp_s;
  if (skew > stripe->webhook_tolerance_s || -skew > stripe->webhook_tolerance_s)
    return tly_req_fail(
        err, 400, "timestamp_outside_tolerance", "Stripe-Signature",
        "Stripe-Signature: timestamp %lld is %lld s %s now; "
        "the tolerance is %lld s",
        (long long)parsed.timestamp_s, (long long)(skew < 0 ? -skew : skew),
        skew < 0 ? "after" : "before", (long long)stripe->webhook_tolerance_s);
  return 0;
}

/* ---- amounts ------------------------------------------------------------ */

/* The minor unit of each currency is tly_stripe_client.c's to know. */
int64_t tly_stripe_amount_micros(int64_t amount, const char *currency) {
  int64_t factor = tly_stripe_micros_per_unit(currency);
  if (amount < 0 || amount > INT64_MAX / factor)
    return -1;
  return amount * factor;
}

/* ---- reading the event -------------------------------------------------- */

/* The value at a dotted path below root, or NULL. */
static json_t *at(json_t *root, const char *path) {
  char key[64];
  json_t *value = root;
  while (value && *path) {
    size_t len = strcspn(path, ".");
    if (len >= sizeof(key))
      return NULL;
    memcpy(key, path, len);
    key[len] = '\0';
    value = json_object_get(value, key);
    path += len + (path[len] == '.');
  }
  return value;
}

static const char *text_at(json_t *root, const char *path) {
  const char *text = json_string_value(at(root, path));
  return text && *text ? text : NULL;
}

/* A Stripe timestamp (seconds) at path as ms, 0 when absent or not one. */
static int64_t ms_at(json_t *root, const char *path) {
  json_t *value = at(root, path);
  if (!json_is_integer(value))
    return 0;
  json_int_t seconds = json_integer_value(value);
  return seconds > 0 && seconds < INT64_MAX / 1000 ? (int64_t)seconds * 1000
                                                   : 0;
}

static int strdup_into(char **out, const char *text, tly_req_error_t *err) {
  *out = strdup(text ? text : "");
  return *out ? 0 : tly_req_fail(err, 500, "internal", "", "out of memory");
}

static int bad_payload(tly_req_error_t *err, const char *field,
                       const char *what) {
  return tly_req_fail(err, 400, "bad_payload", field, "%s: %s", field, what);
}

/* The subject named by metadata.tally_subject of the object, or of the
 * subscription an invoice belongs to. 1 found, 0 absent, -1 bad (err). */
static int find_subject(json_t *object, tly_event_t *event,
                        tly_req_error_t *err) {
  static const char *const paths[] = {
      "metadata.tally_subject",
      "subscription_details.metadata.tally_subject",
      "parent.subscription_details.metadata.tally_subject",
  };
  for (size_t i = 0; i < TLY_COUNT(paths); i++) {
    const char *text = text_at(object, paths[i]);
    if (!text)
      continue;
    tly_req_subject_t subject;
    char field[128];
    snprintf(field, sizeof(field), "data.object.%s", paths[i]);
    if (tly_req_parse_subject(text, &subject, err)) {
      snprintf(err->field, sizeof(err->field), "%s", field);
      return -1;
    }
    event->subject_kind = subject.kind;
    return strdup_into(&event->subject_id, subject.id, err) ? -1 : 1;
  }
  return 0;
}

/* customer.subscription.created/updated. */
static int map_subscription_changed(const tly_config_t *config, json_t *object,
                                    tly_event_t *event, tly_req_error_t *err) {
  json_t *items = at(object, "items.data");
  json_t *item = NULL, *chosen = NULL;
  const char *plan = NULL, *price_id = NULL, *first_price = NULL;
  size_t index;
  json_array_foreach(items, index, item) {
    const char *id = text_at(item, "price.id");
    if (!id)
      id = text_at(item, "plan.id"); /* the legacy Plans API */
    if (!first_price)
      first_price = id;
    if (id && (plan = tly_config_stripe_plan(config, id))) {
      price_id = id;
      chosen = item;
      break;
    }
  }
  if (!first_price)
    return bad_payload(err, "data.object.items.data",
                       "a subscription item with a price id is required");
  if (!plan)
    return tly_req_fail(err, 400, "unknown_price",
                        "data.object.items.data[].price.id",
                        "no price of this subscription is in stripe.prices "
                        "(first: '%.128s'); add it there to map it to a plan",
                        first_price);
  tly_subscription_changed_t *change = &event->body.subscription_changed;
  event->body_kind = TLY_BODY_SUBSCRIPTION_CHANGED;
  /* Newer API versions keep the period on the item only. */
  change->period_start_ms = ms_at(chosen, "current_period_start");
  change->period_end_ms = ms_at(chosen, "current_period_end");
  if (!change->period_start_ms || !change->period_end_ms) {
    change->period_start_ms = ms_at(object, "current_period_start");
    change->period_end_ms = ms_at(object, "current_period_end");
  }
  if (change->period_end_ms <= change->period_start_ms)
    change->period_start_ms = change->period_end_ms = 0;
  return strdup_into(&change->plan, plan, err) ||
         strdup_into(&change->stripe_subscription_id, text_at(object, "id"),
                     err) ||
         strdup_into(&change->stripe_price_id, price_id, err);
}

static int map_subscription_canceled(const tly_config_t *config, json_t *object,
                                     tly_event_t *event, tly_req_error_t *err) {
  (void)config;
  tly_subscription_canceled_t *cancel = &event->body.subscription_canceled;
  event->body_kind = TLY_BODY_SUBSCRIPTION_CANCELED;
  return strdup_into(&cancel->stripe_subscription_id, text_at(object, "id"),
                     err) ||
         strdup_into(&cancel->reason,
                     text_at(object, "cancellation_details.reason"), err);
}

/* The service period an invoice pays for: its first subscription line that
 * is not a proration (line "type": "subscription" in older API versions,
 * "parent.type": "subscription_item_details" in newer ones). */
static void invoice_period(json_t *object, int64_t *start_ms, int64_t *end_ms) {
  json_t *line;
  size_t index;
  *start_ms = *end_ms = 0;
  json_array_foreach(at(object, "lines.data"), index, line) {
    const char *type = text_at(line, "type");
    const char *parent = text_at(line, "parent.type");
    int subscription =
        (type && strcmp(type, "subscription") == 0) ||
        (parent && strcmp(parent, "subscription_item_details") == 0);
    if (!subscription || json_is_true(at(line, "proration")) ||
        json_is_true(at(line, "parent.subscription_item_details.proration")))
      continue;
    int64_t start = ms_at(line, "period.start"),
            end = ms_at(line, "period.end");
    if (start && end > start) {
      *start_ms = start;
      *end_ms = end;
      return;
    }
  }
}

/* An integer amount (minor units) at path, in micro-units. */
static int amount_at(json_t *object, const char *path, int64_t *out,
                     tly_req_error_t *err) {
  char field[64];
  snprintf(field, sizeof(field), "data.object.%s", path);
  json_t *value = at(object, path);
  if (!json_is_integer(value) || json_integer_value(value) < 0)
    return bad_payload(err, field, "must be an integer >= 0");
  *out = tly_stripe_amount_micros((int64_t)json_integer_value(value),
                                  text_at(object, "currency"));
  return *out < 0 ? bad_payload(err, field, "too large") : 0;
}

static int map_invoice_paid(const tly_config_t *config, json_t *object,
                            tly_event_t *event, tly_req_error_t *err) {
  (void)config;
  tly_invoice_paid_t *paid = &event->body.invoice_paid;
  event->body_kind = TLY_BODY_INVOICE_PAID;
  invoice_period(object, &paid->period_start_ms, &paid->period_end_ms);
  return amount_at(object, "amount_paid", &paid->amount_paid_micros, err) ||
         strdup_into(&paid->invoice_id, text_at(object, "id"), err);
}

static int map_payment_failed(const tly_config_t *config, json_t *object,
                              tly_event_t *event, tly_req_error_t *err) {
  (void)config;
  tly_payment_failed_t *failed = &event->body.payment_failed;
  event->body_kind = TLY_BODY_PAYMENT_FAILED;
  json_t *attempt = at(object, "attempt_count");
  if (json_is_integer(attempt) && json_integer_value(attempt) >= 0 &&
      json_integer_value(attempt) <= INT32_MAX)
    failed->attempt = (int32_t)json_integer_value(attempt);
  return amount_at(object, "amount_due", &failed->amount_due_micros, err) ||
         strdup_into(&failed->invoice_id, text_at(object, "id"), err);
}

static int map_customer(const tly_config_t *config, json_t *object,
                        tly_event_t *event, tly_req_error_t *err) {
  (void)config;
  event->body_kind = TLY_BODY_CUSTOMER_LINKED;
  return strdup_into(&event->body.customer_linked.stripe_customer_id,
                     text_at(object, "id"), err);
}

typedef enum { NEEDS_SUBJECT = 0, SUBJECT_OPTIONAL } subject_rule_t;

/* The Stripe event types that become tally events (a table, not a switch
 * ladder: adding a type is one row). */
static const struct {
  const char *type;
  subject_rule_t subject;
  int (*map)(const tly_config_t *config, json_t *object, tly_event_t *event,
             tly_req_error_t *err);
} mappings[] = {
    {"customer.subscription.created", NEEDS_SUBJECT, map_subscription_changed},
    {"customer.subscription.updated", NEEDS_SUBJECT, map_subscription_changed},
    {"customer.subscription.deleted", NEEDS_SUBJECT, map_subscription_canceled},
    {"invoice.paid", NEEDS_SUBJECT, map_invoice_paid},
    {"invoice.payment_failed", NEEDS_SUBJECT, map_payment_failed},
    {"customer.created", SUBJECT_OPTIONAL, map_customer},
    {"customer.updated", SUBJECT_OPTIONAL, map_customer},
};

static tly_stripe_webhook_result_t ignore(tly_stripe_webhook_info_t *info,
                                          const char *reason) {
  snprintf(info->reason, sizeof(info->reason), "%s", reason);
  return TLY_STRIPE_WEBHOOK_IGNORED;
}

tly_stripe_webhook_result_t
tly_stripe_webhook_parse(const tly_config_t *config, const char *signature,
                         const char *body, size_t len, int64_t now_ms,
                         tly_event_t *event, tly_stripe_webhook_info_t *info,
                         tly_req_error_t *err) {
  json_error_t json_error;
  tly_stripe_webhook_result_t result = TLY_STRIPE_WEBHOOK_ERROR;
  memset(event, 0, sizeof(*event));
  memset(info, 0, sizeof(*info));
  if (tly_stripe_signature_verify(&config->stripe, signature, body, len,
                                  now_ms / 1000, err))
    return TLY_STRIPE_WEBHOOK_ERROR;

  json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &json_error);
  if (!root) {
    tly_req_fail(err, 400, "bad_payload", "", "body: not JSON: %s",
                 json_error.text);
    return TLY_STRIPE_WEBHOOK_ERROR;
  }
  const char *id = text_at(root, "id"), *type = text_at(root, "type");
  json_t *object = at(root, "data.object");
  int64_t created_ms = ms_at(root, "created");
  if (id && strlen(id) <= EVENT_ID_MAX)
    snprintf(info->event_id, sizeof(info->event_id), "%s", id);
  if (type)
    snprintf(info->type, sizeof(info->type), "%s", type);
  if (!id || strlen(id) > EVENT_ID_MAX) {
    bad_payload(err, "id", "the event id (evt_...) is required");
    goto out;
  }
  if (!type) {
    bad_payload(err, "type", "the event type is required");
    goto out;
  }
  if (!created_ms) {
    bad_payload(err, "created", "must be a Unix timestamp");
    goto out;
  }
  if (!json_is_object(object)) {
    bad_payload(err, "data.object", "must be an object");
    goto out;
  }

  size_t row = TLY_COUNT(mappings);
  for (size_t i = 0; i < TLY_COUNT(mappings); i++)
    if (strcmp(type, mappings[i].type) == 0)
      row = i;
  if (row == TLY_COUNT(mappings)) {
    result = ignore(info, "event type not used by tally");
    goto out;
  }
  int found = find_subject(object, event, err);
  if (found < 0)
    goto out;
  if (!found && mappings[row].subject == SUBJECT_OPTIONAL) {
    result = ignore(info, "no metadata.tally_subject: not a tally customer");
    goto out;
  }
  if (!found) {
    tly_req_fail(err, 400, "missing_subject",
                 "data.object.metadata.tally_subject",
                 "%s %.64s: no metadata.tally_subject (e.g. \"user:42\") on "
                 "the object or its subscription; tally cannot tell whose it "
                 "is",
                 type, text_at(object, "id") ? text_at(object, "id") : "");
    goto out;
  }
  if (strdup_into(&event->event_id, id, err) ||
      mappings[row].map(config, object, event, err))
    goto out;
  event->occurred_at_ms = created_ms;
  char errstr[256];
  if (tly_event_validate(event, errstr, sizeof(errstr)) ||
      tly_event_time_check(event, 0, 0, NULL, errstr, sizeof(errstr))) {
    tly_req_fail(err, 400, "bad_payload", "", "%s", errstr);
    goto out;
  }
  result = TLY_STRIPE_WEBHOOK_EVENT;
out:
  if (result != TLY_STRIPE_WEBHOOK_EVENT)
    tly_event_clear(event);
  json_decref(root);
  return result;
}

json_t *tly_stripe_webhook_answer(const tly_event_t *event,
                                  const tly_stripe_webhook_info_t *info) {
  if (!event)
    return json_pack("{s:b,s:b,s:s,s:s}", "received", 1, "ignored", 1, "type",
                     info ? info->type : "", "reason",
                     info ? info->reason : "");
  char key[TLY_REQ_SUBJECT_MAX + 16];
  tly_subject_key(event->subject_kind, event->subject_id, key, sizeof(key));
  return json_pack("{s:b,s:s,s:s}", "received", 1, "event_id", event->event_id,
                   "subject", key);
}
