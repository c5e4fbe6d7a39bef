/*
 * tly_event.c - the event model's small helpers: freeing an event, subject
 * kind names, the Kafka key of a subject, and the validation that every way
 * into or out of the log (Avro decode, Avro encode, JSON) shares.
 *
 * Validation lives here rather than in the codec so that the JSON reader, the
 * codec and any later producer all agree on what a valid event is: one rule
 * book, not three that drift apart. Error messages never echo a subject id,
 * because for api_key subjects a mistake might be a raw key and raw keys must
 * not reach logs or dead letters.
 *
 * The bodies other than UsageRecorded are flat records of strings and
 * numbers; they are described once, in tly_body_specs below, and the
 * validator, clear, the codec and the JSON reader/writer walk that table.
 */
#include "tly_event.h"
#include "tly_event_body.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Indexed by tly_subject_kind_t; the order is the Avro enum's symbol order. */
static const char *const subject_kind_names[TLY_SUBJECT__COUNT] = {
    [TLY_SUBJECT_USER] = "user",
    [TLY_SUBJECT_API_KEY] = "api_key",
    [TLY_SUBJECT_ANONYMOUS] = "anonymous",
    [TLY_SUBJECT_SYSTEM] = "system",
};

#define FIELD(type, member, field_name, field_kind, required, max)             \
  {                                                                            \
    .name = field_name, .kind = field_kind, .offset = offsetof(type, member),  \
    .json_required = required, .max_len = max                                  \
  }

/*
 * The flat bodies. JSON requirements: identifiers and money are required;
 * Stripe's optional ids, periods (0 = unknown) and the attempt default.
 * Field order is the Avro record's (checked by the codec at creation).
 */
const tly_body_spec_t tly_body_specs[TLY_BODY__COUNT] = {
    [TLY_BODY_USAGE_RECORDED] =
        {"usage_recorded", "UsageRecorded", 1, 0, {{0}}, -1, -1},
    /* body.usage with corrects, read and written by hand like usage. */
    [TLY_BODY_USAGE_CORRECTED] =
        {"usage_corrected", "UsageCorrected", 1, 0, {{0}}, -1, -1},
    [TLY_BODY_PLAN_ASSIGNED] = {"plan_assigned",
                                "PlanAssigned",
                                1,
                                1,
                                {FIELD(tly_plan_assigned_t, plan, "plan",
                                       TLY_FIELD_TEXT, 1, TLY_EVENT_NAME_MAX)},
                                -1,
                                -1},
    [TLY_BODY_SUBSCRIPTION_CHANGED] =
        {"subscription_changed",
         "SubscriptionChanged",
         1,
         5,
         {FIELD(tly_subscription_changed_t, plan, "plan", TLY_FIELD_TEXT, 1,
                TLY_EVENT_NAME_MAX),
          FIELD(tly_subscription_changed_t, stripe_subscription_id,
                "stripe_subscription_id", TLY_FIELD_TEXT_OPTIONAL, 0,
                TLY_EVENT_STRIPE_ID_MAX),
          FIELD(tly_subscription_changed_t, stripe_price_id, "stripe_price_id",
                TLY_FIELD_TEXT_OPTIONAL, 0, TLY_EVENT_STRIPE_ID_MAX),
          FIELD(tly_subscription_changed_t, period_start_ms, "period_start",
                TLY_FIELD_TIME, 0, 0),
          FIELD(tly_subscription_changed_t, period_end_ms, "period_end",
                TLY_FIELD_TIME, 0, 0)},
         3,
         4},
    [TLY_BODY_SUBSCRIPTION_CANCELED] =
        {"subscription_canceled",
         "SubscriptionCanceled",
         1,
         2,
         {FIELD(tly_subscription_canceled_t, stripe_subscription_id,
                "stripe_subscription_id", TLY_FIELD_TEXT_OPTIONAL, 0,
                TLY_EVENT_STRIPE_ID_MAX),
          FIELD(tly_subscription_canceled_t, reason, "reason",
                TLY_FIELD_TEXT_OPTIONAL, 0, TLY_EVENT_TEXT_MAX)},
         -1,
         -1},
    [TLY_BODY_INVOICE_PAID] = {"invoice_paid",
                               "InvoicePaid",
                               1,
                               4,
                               {FIELD(tly_invoice_paid_t, invoice_id,
                                      "invoice_id", TLY_FIELD_TEXT, 1,
                                      TLY_EVENT_STRIPE_ID_MAX),
                                FIELD(tly_invoice_paid_t, amount_paid_micros,
                                      "amount_paid_micros", TLY_FIELD_MICROS, 1,
                                      0),
                                FIELD(tly_invoice_paid_t, period_start_ms,
                                      "period_start", TLY_FIELD_TIME, 0, 0),
                                FIELD(tly_invoice_paid_t, period_end_ms,
                                      "period_end", TLY_FIELD_TIME, 0, 0)},
                               2,
                               3},
    [TLY_BODY_PAYMENT_FAILED] = {"payment_failed",
                                 "PaymentFailed",
                                 1,
                                 3,
                                 {FIELD(tly_payment_failed_t, invoice_id,
                                        "invoice_id", TLY_FIELD_TEXT, 1,
                                        TLY_EVENT_STRIPE_ID_MAX),
                                  FIELD(tly_payment_failed_t, amount_due_micros,
                                        "amount_due_micros", TLY_FIELD_MICROS,
                                        1, 0),
                                  FIELD(tly_payment_failed_t, attempt,
                                        "attempt", TLY_FIELD_COUNT32, 0, 0)},
                                 -1,
                                 -1},
    [TLY_BODY_CUSTOMER_LINKED] = {"customer_linked",
                                  "CustomerLinked",
                                  1,
                                  1,
                                  {FIELD(tly_customer_linked_t,
                                         stripe_customer_id,
                                         "stripe_customer_id", TLY_FIELD_TEXT,
                                         1, TLY_EVENT_STRIPE_ID_MAX)},
                                  -1,
                                  -1},
    /* Only the processor writes ticks: never from JSON. */
    [TLY_BODY_TICK] = {"tick",
                       "Tick",
                       0,
                       1,
                       {FIELD(tly_tick_t, partition, "partition",
                              TLY_FIELD_COUNT32, 1, 0)},
                       -1,
                       -1},
    /* Only the owner of the subject's partition writes these (the
     * reservation route decides them): never from JSON. */
    [TLY_BODY_RESERVATION_HELD] =
        {"reservation_held",
         "ReservationHeld",
         0,
         4,
         {FIELD(tly_reservation_held_t, reservation_id, "reservation_id",
                TLY_FIELD_TEXT, 1, TLY_RESERVATION_ID_MAX),
          FIELD(tly_reservation_held_t, feature, "feature", TLY_FIELD_TEXT, 1,
                TLY_EVENT_NAME_MAX),
          FIELD(tly_reservation_held_t, quantity, "quantity", TLY_FIELD_COUNT64,
                1, 0),
          FIELD(tly_reservation_held_t, ttl_ms, "ttl_ms", TLY_FIELD_COUNT64, 1,
                0)},
         -1,
         -1},
    [TLY_BODY_RESERVATION_RELEASED] = {"reservation_released",
                                       "ReservationReleased",
                                       0,
                                       1,
                                       {FIELD(tly_reservation_released_t,
                                              reservation_id, "reservation_id",
                                              TLY_FIELD_TEXT, 1,
                                              TLY_RESERVATION_ID_MAX)},
                                       -1,
                                       -1},
    /* Only the owner of the subject's partition writes these (the
     * notifications route found the alert): never from JSON. */
    [TLY_BODY_NOTIFICATION_READ] = {"notification_read",
                                    "NotificationRead",
                                    0,
                                    2,
                                    {FIELD(tly_notification_read_t, alert_id,
                                           "alert_id", TLY_FIELD_TEXT, 1,
                                           TLY_NOTIFICATION_ID_MAX),
                                     FIELD(tly_notification_read_t, alert_at_ms,
                                           "alert_at", TLY_FIELD_TIME, 1, 0)},
                                    -1,
                                    -1},
};

const tly_body_spec_t *tly_body_spec(tly_body_kind_t kind) {
  if ((int)kind < 0 || kind >= TLY_BODY__COUNT)
    return NULL;
  return &tly_body_specs[kind];
}

static void usage_clear(tly_usage_recorded_t *usage) {
  free(usage->feature);
  free(usage->unit);
  free(usage->ai.provider);
  free(usage->ai.model);
  for (size_t i = 0; i < usage->property_count; i++) {
    free(usage->properties[i].key);
    free(usage->properties[i].value);
  }
  free(usage->properties);
  free(usage->corrects);
}

void tly_event_clear(tly_event_t *event) {
  if (!event)
    return;
  free(event->event_id);
  free(event->subject_id);
  if (TLY_BODY_IS_USAGE(event->body_kind)) {
    usage_clear(&event->body.usage);
  } else {
    const tly_body_spec_t *spec = tly_body_spec(event->body_kind);
    for (size_t i = 0; spec && i < spec->field_count; i++)
      if (spec->fields[i].kind == TLY_FIELD_TEXT ||
          spec->fields[i].kind == TLY_FIELD_TEXT_OPTIONAL)
        free(*tly_body_text(event, &spec->fields[i]));
  }
  memset(event, 0, sizeof(*event));
}

const char *tly_subject_kind_name(tly_subject_kind_t kind) {
  if ((int)kind < 0 || kind >= TLY_SUBJECT__COUNT)
    return NULL;
  return subject_kind_names[kind];
}

int tly_subject_kind_parse(const char *name, tly_subject_kind_t *kind) {
  if (!name)
    return -1;
  for (int i = 0; i < TLY_SUBJECT__COUNT; i++) {
    if (strcmp(name, subject_kind_names[i]) == 0) {
      if (kind)
        *kind = (tly_subject_kind_t)i;
      return 0;
    }
  }
  return -1;
}

size_t tly_subject_key(tly_subject_kind_t kind, const char *id, char *out,
                       size_t out_size) {
  const char *name = tly_subject_kind_name(kind);

  /* An out-of-range kind has no key; an empty string makes the caller's
   * "key too short / empty" checks fire instead of inventing a prefix. */
  if (!name) {
    if (out && out_size)
      out[0] = '\0';
    return 0;
  }
  /* What snprintf("%s:%s") would write, without its cost: this runs for
   * every event the processor folds. */
  size_t name_len = strlen(name), id_len = id ? strlen(id) : 0;
  size_t needed = name_len + 1 + id_len;
  if (out && out_size) {
    size_t room = out_size - 1, n = name_len < room ? name_len : room;
    memcpy(out, name, n);
    if (n < room)
      out[n++] = ':';
    size_t id_n = id_len < room - n ? id_len : room - n;
    if (id_n)
      memcpy(out + n, id, id_n);
    out[n + id_n] = '\0';
  }
  return needed;
}

int tly_api_key_hash_is_valid(const char *id) {
  if (!id)
    return 0;
  for (size_t i = 0; i < TLY_API_KEY_HASH_LEN; i++) {
    char c = id[i];
    /* Lowercase only: one spelling per key, so one state key per key. */
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
      return 0;
  }
  return id[TLY_API_KEY_HASH_LEN] == '\0';
}

int tly_reservation_id_is_valid(const char *id) {
  if (!id || !*id)
    return 0;
  size_t len = 0;
  for (; id[len]; len++) {
    char c = id[len];
    if (len >= TLY_RESERVATION_ID_MAX ||
        !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
          (c >= 'A' && c <= 'Z') || c == '_' || c == '-'))
      return 0;
  }
  return 1;
}

const char *tly_usage_reservation_id(const tly_usage_recorded_t *usage) {
  for (size_t i = 0; usage && i < usage->property_count; i++)
    if (usage->properties[i].key &&
        strcmp(usage->properties[i].key, TLY_RESERVATION_PROPERTY) == 0)
      return usage->properties[i].value;
  return NULL;
}

int tly_subject_validate(tly_subject_kind_t kind, const char *id, char *errstr,
                         size_t errstr_size) {
  if (!tly_subject_kind_name(kind)) {
    snprintf(errstr, errstr_size, "subject kind %d is out of range", (int)kind);
    return -1;
  }
  if (!id || !*id) {
    snprintf(errstr, errstr_size, "subject id must not be empty");
    return -1;
  }
  size_t id_len = strlen(id);
  if (id_len > TLY_SUBJECT_ID_MAX) {
    snprintf(errstr, errstr_size, "subject id: %zu bytes, at most %d", id_len,
             TLY_SUBJECT_ID_MAX);
    return -1;
  }
  if (kind == TLY_SUBJECT_SYSTEM && strcmp(id, TLY_SYSTEM_SUBJECT_ID) != 0) {
    snprintf(errstr, errstr_size, "system subject id must be '%s'",
             TLY_SYSTEM_SUBJECT_ID);
    return -1;
  }
  if (kind == TLY_SUBJECT_API_KEY && !tly_api_key_hash_is_valid(id)) {
    /* Deliberately does not quote the id: it may be a raw key. */
    snprintf(errstr, errstr_size,
             "api_key subject id must be the SHA-256 of the key as %d "
             "lowercase hex characters; raw keys are never accepted",
             TLY_API_KEY_HASH_LEN);
    return -1;
  }
  return 0;
}

/* A required string: present and non-empty. */
static int require_text(const char *value, const char *field, char *errstr,
                        size_t errstr_size) {
  if (value && *value)
    return 0;
  snprintf(errstr, errstr_size, "field '%s': must be a non-empty string",
           field);
  return -1;
}

/* A string (NULL passes: the required checks say so) of at most max
 * bytes. The message gives the size, never the text: a field that large is
 * no use in a log line or a dead letter's header. */
static int require_size(const char *value, size_t max, const char *field,
                        char *errstr, size_t errstr_size) {
  size_t len = value ? strlen(value) : 0;
  if (len <= max)
    return 0;
  snprintf(errstr, errstr_size, "field '%s': %zu bytes, at most %zu", field,
           len, max);
  return -1;
}

static int require_count(int64_t value, const char *field, char *errstr,
                         size_t errstr_size) {
  if (value >= 0)
    return 0;
  snprintf(errstr, errstr_size,
           "field '%s': must be an integer >= 0 (got %lld)", field,
           (long long)value);
  return -1;
}

static int compare_property_keys(const void *a, const void *b) {
  const tly_property_t *const *left = a;
  const tly_property_t *const *right = b;
  return strcmp((*left)->key, (*right)->key);
}

/*
 * An Avro map cannot hold a key twice; saying so beats silently keeping
 * whichever value the map implementation happened to keep. Few properties
 * are compared pairwise; many are sorted (by pointer, the event is const) so
 * that a hostile message with thousands of keys costs n log n, not n^2.
 */
static int properties_check_unique(const tly_usage_recorded_t *usage,
                                   char *errstr, size_t errstr_size) {
  const tly_property_t **sorted;
  const char *duplicate = NULL;
  size_t count = usage->property_count;

  if (count <= 16) {
    for (size_t i = 1; i < count && !duplicate; i++)
      for (size_t j = 0; j < i && !duplicate; j++)
        if (strcmp(usage->properties[j].key, usage->properties[i].key) == 0)
          duplicate = usage->properties[i].key;
  } else {
    sorted = malloc(count * sizeof(*sorted));
    if (!sorted) {
      snprintf(errstr, errstr_size,
               "field 'properties': out of memory checking %zu keys", count);
      return -1;
    }
    for (size_t i = 0; i < count; i++)
      sorted[i] = &usage->properties[i];
    qsort(sorted, count, sizeof(*sorted), compare_property_keys);
    for (size_t i = 1; i < count && !duplicate; i++)
      if (strcmp(sorted[i - 1]->key, sorted[i]->key) == 0)
        duplicate = sorted[i]->key;
    free(sorted);
  }
  if (!duplicate)
    return 0;
  snprintf(errstr, errstr_size, "field 'properties': duplicate key '%s'",
           duplicate);
  return -1;
}

static int usage_validate(const tly_usage_recorded_t *usage, char *errstr,
                          size_t errstr_size) {
  if (require_text(usage->feature, "feature", errstr, errstr_size) ||
      require_size(usage->feature, TLY_EVENT_NAME_MAX, "feature", errstr,
                   errstr_size) ||
      require_count(usage->quantity, "quantity", errstr, errstr_size) ||
      require_size(usage->unit, TLY_EVENT_NAME_MAX, "unit", errstr,
                   errstr_size))
    return -1;
  if (usage->has_ai &&
      (require_text(usage->ai.provider, "ai.provider", errstr, errstr_size) ||
       require_size(usage->ai.provider, TLY_EVENT_NAME_MAX, "ai.provider",
                    errstr, errstr_size) ||
       require_text(usage->ai.model, "ai.model", errstr, errstr_size) ||
       require_size(usage->ai.model, TLY_EVENT_NAME_MAX, "ai.model", errstr,
                    errstr_size) ||
       require_count(usage->ai.input_tokens, "ai.input_tokens", errstr,
                     errstr_size) ||
       require_count(usage->ai.output_tokens, "ai.output_tokens", errstr,
                     errstr_size)))
    return -1;
  if (usage->property_count && !usage->properties) {
    snprintf(errstr, errstr_size,
             "field 'properties': %zu entries but no array",
             usage->property_count);
    return -1;
  }
  if (usage->property_count > TLY_EVENT_PROPERTIES_MAX) {
    snprintf(errstr, errstr_size, "field 'properties': %zu entries, at most %d",
             usage->property_count, TLY_EVENT_PROPERTIES_MAX);
    return -1;
  }
  for (size_t i = 0; i < usage->property_count; i++) {
    const tly_property_t *property = &usage->properties[i];
    if (!property->key || !property->value) {
      snprintf(errstr, errstr_size,
               "field 'properties': entry %zu has a NULL key or value", i);
      return -1;
    }
    size_t key_len = strlen(property->key);
    if (key_len > TLY_EVENT_PROPERTY_KEY_MAX) {
      snprintf(errstr, errstr_size,
               "field 'properties': a key of %zu bytes, at most %d", key_len,
               TLY_EVENT_PROPERTY_KEY_MAX);
      return -1;
    }
    size_t value_len = strlen(property->value);
    if (value_len > TLY_EVENT_PROPERTY_VALUE_MAX) {
      snprintf(errstr, errstr_size,
               "field 'properties.%s': %zu bytes, at most %d", property->key,
               value_len, TLY_EVENT_PROPERTY_VALUE_MAX);
      return -1;
    }
  }
  return properties_check_unique(usage, errstr, errstr_size);
}

/* The table-described bodies: each field by its kind, then the period. */
static int flat_body_validate(const tly_event_t *event, char *errstr,
                              size_t errstr_size) {
  const tly_body_spec_t *spec = tly_body_spec(event->body_kind);

  for (size_t i = 0; i < spec->field_count; i++) {
    const tly_body_field_t *field = &spec->fields[i];
    switch (field->kind) {
    case TLY_FIELD_TEXT:
    case TLY_FIELD_TEXT_OPTIONAL: /* NULL is written as "" */
      if ((field->kind == TLY_FIELD_TEXT &&
           require_text(tly_body_text_get(event, field), field->name, errstr,
                        errstr_size)) ||
          require_size(tly_body_text_get(event, field), field->max_len,
                       field->name, errstr, errstr_size))
        return -1;
      break;
    case TLY_FIELD_MICROS:
    case TLY_FIELD_TIME:
    case TLY_FIELD_COUNT64:
      if (require_count(tly_body_int64_get(event, field), field->name, errstr,
                        errstr_size))
        return -1;
      break;
    case TLY_FIELD_COUNT32:
      if (require_count(tly_body_int32_get(event, field), field->name, errstr,
                        errstr_size))
        return -1;
      break;
    }
  }
  if (spec->period_start >= 0) {
    const tly_body_field_t *start_field = &spec->fields[spec->period_start];
    const tly_body_field_t *end_field = &spec->fields[spec->period_end];
    int64_t start = tly_body_int64_get(event, start_field);
    int64_t end = tly_body_int64_get(event, end_field);
    /* 0 means "Stripe did not say"; when both are known they must make a
     * period, or the fold would compute a cycle that ends before it starts */
    if (start && end && end <= start) {
      snprintf(errstr, errstr_size,
               "field '%s': must be after %s (%lld <= %lld)", end_field->name,
               start_field->name, (long long)end, (long long)start);
      return -1;
    }
  }
  return 0;
}

/* What the table cannot say about a reservation's fields. */
static int reservation_validate(const tly_event_t *event, char *errstr,
                                size_t errstr_size) {
  const char *id = event->body_kind == TLY_BODY_RESERVATION_HELD
                       ? event->body.reservation_held.reservation_id
                       : event->body.reservation_released.reservation_id;
  if (!tly_reservation_id_is_valid(id)) {
    snprintf(errstr, errstr_size,
             "field 'reservation_id': must be 1 to %d characters of "
             "A-Z, a-z, 0-9, '_' and '-'",
             TLY_RESERVATION_ID_MAX);
    return -1;
  }
  if (event->body_kind != TLY_BODY_RESERVATION_HELD)
    return 0;
  const tly_reservation_held_t *held = &event->body.reservation_held;
  if (held->quantity < 1 || held->quantity > TLY_RESERVATION_QUANTITY_MAX) {
    snprintf(
        errstr, errstr_size, "field 'quantity': must be 1 to %lld (got %lld)",
        (long long)TLY_RESERVATION_QUANTITY_MAX, (long long)held->quantity);
    return -1;
  }
  if (held->ttl_ms < TLY_RESERVATION_TTL_MIN_MS ||
      held->ttl_ms > TLY_RESERVATION_TTL_MAX_MS) {
    snprintf(errstr, errstr_size,
             "field 'ttl_ms': must be %lld to %lld (got %lld)",
             (long long)TLY_RESERVATION_TTL_MIN_MS,
             (long long)TLY_RESERVATION_TTL_MAX_MS, (long long)held->ttl_ms);
    return -1;
  }
  return 0;
}

int tly_event_validate(const tly_event_t *event, char *errstr,
                       size_t errstr_size) {
  char reason[256];

  if (!event) {
    snprintf(errstr, errstr_size, "no event");
    return -1;
  }
  if (require_text(event->event_id, "event_id", errstr, errstr_size) ||
      require_size(event->event_id, TLY_EVENT_ID_MAX, "event_id", errstr,
                   errstr_size))
    return -1;
  if (tly_subject_validate(event->subject_kind, event->subject_id, reason,
                           sizeof(reason))) {
    snprintf(errstr, errstr_size, "field 'subject': %s", reason);
    return -1;
  }
  if (!tly_body_spec(event->body_kind)) {
    snprintf(errstr, errstr_size, "field 'body': unknown body kind %d",
             (int)event->body_kind);
    return -1;
  }
  /* Ticks are the processor's, about no customer; nothing else is. */
  if ((event->subject_kind == TLY_SUBJECT_SYSTEM) !=
      (event->body_kind == TLY_BODY_TICK)) {
    snprintf(errstr, errstr_size,
             event->body_kind == TLY_BODY_TICK
                 ? "field 'subject': tick events must have the subject "
                   "system:" TLY_SYSTEM_SUBJECT_ID
                 : "field 'subject': kind 'system' is only for tick events");
    return -1;
  }
  if (event->body_kind == TLY_BODY_USAGE_CORRECTED &&
      (require_text(event->body.usage.corrects, "corrects", errstr,
                    errstr_size) ||
       require_size(event->body.usage.corrects, TLY_EVENT_ID_MAX, "corrects",
                    errstr, errstr_size)))
    return -1;
  if (event->body_kind == TLY_BODY_USAGE_CORRECTED &&
      event->body.usage.property_count) {
    snprintf(errstr, errstr_size,
             "field 'properties': a correction carries none (its "
             "dimensions are the original's)");
    return -1;
  }
  if (event->body_kind == TLY_BODY_USAGE_RECORDED &&
      event->body.usage.corrects) {
    snprintf(errstr, errstr_size,
             "field 'corrects': only for type usage_corrected");
    return -1;
  }
  if (TLY_BODY_IS_USAGE(event->body_kind))
    return usage_validate(&event->body.usage, errstr, errstr_size);
  if (flat_body_validate(event, errstr, errstr_size))
    return -1;
  if (event->body_kind == TLY_BODY_RESERVATION_HELD ||
      event->body_kind == TLY_BODY_RESERVATION_RELEASED)
    return reservation_validate(event, errstr, errstr_size);
  return 0;
}
