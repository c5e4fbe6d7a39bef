/*
 * tly_event.h - the tally event model in C.
 * Owns the event model, its size bounds and its validation; never does
 * I/O, never reads a clock.
 *
 * One envelope (event_id, occurred_at, subject, body) mirrors
 * schema/tally_event.avsc. Every string is owned by the event and freed by
 * tly_event_clear(); a zeroed tly_event_t is a valid empty event. Quantities
 * and times are integers (time: milliseconds since the epoch).
 */
#ifndef TLY_EVENT_H
#define TLY_EVENT_H

#include <stddef.h>
#include <stdint.h>

/*
 * Size bounds of every field, in bytes (UTF-8, without the NUL). Checked by
 * tly_event_validate(), which every way into the log shares (the Avro
 * decoder the processor uses, the JSON reader behind `tally emit` and
 * POST /v1/events, the encoder of the producer library), so nothing larger
 * ever reaches the fold, the dedupe index or a state key. A record over a
 * bound goes to the dead-letter topic; JSON input gets an error naming the
 * field ("field 'event_id': 70000 bytes, at most 256").
 *
 * They are chosen so that every key and id built from an event fits with
 * room to spare: the subject key "kind:id" (at most 266 bytes) in the state
 * keys (TLY_KEY_MAX, 1200) and in alert ids, names in the configuration's
 * (TLY_CONFIG_NAME_MAX, 64 with the NUL), Stripe ids in the account record.
 */
#define TLY_EVENT_ID_MAX 256   /* event_id */
#define TLY_SUBJECT_ID_MAX 256 /* subject id (api_key: exactly 64) */
#define TLY_EVENT_NAME_MAX                                                     \
  63 /* feature, unit, ai.provider,                                            \
        ai.model, plan */
#define TLY_EVENT_STRIPE_ID_MAX                                                \
  127                               /* Stripe ids: customer, subscription,     \
                                       price, invoice */
#define TLY_EVENT_TEXT_MAX 1024     /* free text: a cancellation reason */
#define TLY_EVENT_PROPERTIES_MAX 64 /* entries of the properties map */
#define TLY_EVENT_PROPERTY_KEY_MAX 128
#define TLY_EVENT_PROPERTY_VALUE_MAX 1024

/*
 * Reservations (ReservationHeld, ReservationReleased; the HTTP route
 * POST /v1/subjects/{subject}/reservations writes them). A reservation id
 * is 1..64 characters of [A-Za-z0-9_-] (tally makes "rsv_" and 26
 * characters of base32: 128 random bits); a held quantity is 1..10^12; a
 * hold lives 1 s .. 24 h (ttl_ms) after its event time. A usage event
 * settles an open hold when its properties map carries the id under
 * TLY_RESERVATION_PROPERTY (UsageRecorded's layout stays as it was).
 */
#define TLY_RESERVATION_ID_MAX 64
#define TLY_RESERVATION_QUANTITY_MAX 1000000000000LL
#define TLY_RESERVATION_TTL_MIN_MS 1000LL
#define TLY_RESERVATION_TTL_MAX_MS 86400000LL
#define TLY_RESERVATION_PROPERTY "tally.reservation_id"

typedef enum {
  TLY_SUBJECT_USER = 0,
  TLY_SUBJECT_API_KEY = 1,
  TLY_SUBJECT_ANONYMOUS = 2,
  TLY_SUBJECT_SYSTEM = 3, /* only for Tick events: id "tick" */
  TLY_SUBJECT__COUNT
} tly_subject_kind_t;

/* Body variants, in the order of the Avro union branches. */
typedef enum {
  TLY_BODY_USAGE_RECORDED = 0,
  TLY_BODY_PLAN_ASSIGNED,
  TLY_BODY_SUBSCRIPTION_CHANGED,
  TLY_BODY_SUBSCRIPTION_CANCELED,
  TLY_BODY_INVOICE_PAID,
  TLY_BODY_PAYMENT_FAILED,
  TLY_BODY_CUSTOMER_LINKED,
  TLY_BODY_TICK,
  TLY_BODY_RESERVATION_HELD,     /* appended: earlier branches keep their */
  TLY_BODY_RESERVATION_RELEASED, /* indexes, so old records read the same */
  TLY_BODY_NOTIFICATION_READ,    /* appended after them (issue 18) */
  TLY_BODY_USAGE_CORRECTED,      /* appended (issue 17): body.usage, with
                                    corrects */
  TLY_BODY__COUNT
} tly_body_kind_t;

typedef struct {
  char *key;
  char *value;
} tly_property_t;

typedef struct {
  char *provider;
  char *model;
  int64_t input_tokens;
  int64_t output_tokens;
} tly_ai_usage_t;

typedef struct {
  char *feature;
  int64_t quantity;
  char *unit; /* may be "" but never NULL after decode */
  int has_ai; /* ai is meaningful only when set */
  tly_ai_usage_t ai;
  size_t property_count;
  tly_property_t *properties;
  /* UsageCorrected only (NULL otherwise): the event_id of the usage event
   * whose contribution this one replaces (1..TLY_EVENT_ID_MAX bytes). A
   * correction carries no properties. */
  char *corrects;
} tly_usage_recorded_t;

/* UsageRecorded and UsageCorrected both use body.usage. */
#define TLY_BODY_IS_USAGE(kind)                                                \
  ((kind) == TLY_BODY_USAGE_RECORDED || (kind) == TLY_BODY_USAGE_CORRECTED)

/* An admin (or the HTTP port) put the subject on a plan. */
typedef struct {
  char *plan;
} tly_plan_assigned_t;

/* From Stripe: the subscription's plan (mapped from its price id) and, when
 * Stripe gave it, its current period (0 = unknown). */
typedef struct {
  char *plan;
  char *stripe_subscription_id; /* may be "" */
  char *stripe_price_id;        /* may be "" */
  int64_t period_start_ms;
  int64_t period_end_ms;
} tly_subscription_changed_t;

typedef struct {
  char *stripe_subscription_id; /* may be "" */
  char *reason;                 /* may be "" */
} tly_subscription_canceled_t;

/* Closes the current cycle and starts the next one (quota reset). */
typedef struct {
  char *invoice_id;
  int64_t amount_paid_micros;
  int64_t period_start_ms; /* the new cycle, when known; 0 = unknown */
  int64_t period_end_ms;
} tly_invoice_paid_t;

typedef struct {
  char *invoice_id;
  int64_t amount_due_micros;
  int32_t attempt;
} tly_payment_failed_t;

typedef struct {
  char *stripe_customer_id;
} tly_customer_linked_t;

/* Time written into the log by the processor, one per partition and slot:
 * the tick's time is the envelope's occurred_at. */
typedef struct {
  int32_t partition;
} tly_tick_t;

/* The owner of the subject's partition granted a reservation: quantity of
 * feature is held until occurred_at + ttl_ms, a settling usage event or a
 * ReservationReleased. */
typedef struct {
  char *reservation_id;
  char *feature;
  int64_t quantity; /* 1 .. TLY_RESERVATION_QUANTITY_MAX */
  int64_t ttl_ms;   /* TLY_RESERVATION_TTL_MIN_MS .. _MAX_MS */
} tly_reservation_held_t;

typedef struct {
  char *reservation_id;
} tly_reservation_released_t;

/* The subject read one of its alerts (the notifications route writes it,
 * once it found the alert): alert_id (1..TLY_NOTIFICATION_ID_MAX bytes) and
 * the alert's own time. */
#define TLY_NOTIFICATION_ID_MAX 639
typedef struct {
  char *alert_id;
  int64_t alert_at_ms;
} tly_notification_read_t;

typedef struct {
  char *event_id;
  int64_t occurred_at_ms;
  tly_subject_kind_t subject_kind;
  char *subject_id;
  tly_body_kind_t body_kind;
  union {
    tly_usage_recorded_t usage;
    tly_plan_assigned_t plan_assigned;
    tly_subscription_changed_t subscription_changed;
    tly_subscription_canceled_t subscription_canceled;
    tly_invoice_paid_t invoice_paid;
    tly_payment_failed_t payment_failed;
    tly_customer_linked_t customer_linked;
    tly_tick_t tick;
    tly_reservation_held_t reservation_held;
    tly_reservation_released_t reservation_released;
    tly_notification_read_t notification_read;
  } body;
} tly_event_t;

/* Frees every string the event owns and zeroes it. Safe on a zeroed event. */
void tly_event_clear(tly_event_t *event);

/* "user", "api_key", "anonymous", "system"; NULL for an out-of-range kind. */
const char *tly_subject_kind_name(tly_subject_kind_t kind);
/* Returns 0 and sets *kind, or -1 for an unknown name. */
int tly_subject_kind_parse(const char *name, tly_subject_kind_t *kind);

/*
 * The Kafka message key of a subject: "kind:id" (e.g. "user:alice").
 * Writes at most out_size bytes including the NUL; returns the length it
 * needed (excluding NUL), as snprintf does.
 */
size_t tly_subject_key(tly_subject_kind_t kind, const char *id, char *out,
                       size_t out_size);

/* An api_key subject id: the SHA-256 of the key as lowercase hex. */
#define TLY_API_KEY_HASH_LEN 64

/* 1 when id is exactly TLY_API_KEY_HASH_LEN lowercase hex characters. */
int tly_api_key_hash_is_valid(const char *id);

/* 1 when id is a well-formed reservation id: 1..TLY_RESERVATION_ID_MAX
 * characters of [A-Za-z0-9_-]. */
int tly_reservation_id_is_valid(const char *id);

/* The reservation id a usage event settles (its properties'
 * TLY_RESERVATION_PROPERTY), or NULL. Not checked: an id that names no
 * open hold settles nothing. */
const char *tly_usage_reservation_id(const tly_usage_recorded_t *usage);

/*
 * Checks a subject: kind in range, id non-empty and at most
 * TLY_SUBJECT_ID_MAX bytes, and for api_key the id is
 * the SHA-256 hex of the key (raw keys are refused). 0, or -1 with errstr.
 * The message never quotes the id (it might be a raw key).
 */
int tly_subject_validate(tly_subject_kind_t kind, const char *id, char *errstr,
                         size_t errstr_size);

/*
 * The rules every event must satisfy, shared by the codec (encode and
 * decode) and the JSON reader: non-empty event_id, subject (as
 * tly_subject_validate), feature, ai.provider and ai.model; every string
 * within its size bound above (and at most TLY_EVENT_PROPERTIES_MAX
 * properties); quantity and token counts >= 0; property keys and values
 * non-NULL and keys unique;
 * a system subject ("system:tick") with a Tick body and only with it; the
 * plan of PlanAssigned/SubscriptionChanged, the invoice id of
 * InvoicePaid/PaymentFailed and the customer id of CustomerLinked
 * non-empty; money, periods and attempts >= 0, and a period's end after
 * its start when both are given; a reservation's id well-formed, its
 * quantity and ttl_ms within the bounds above.
 * 0, or -1 with errstr naming the field ("field 'quantity': ...").
 */
int tly_event_validate(const tly_event_t *event, char *errstr,
                       size_t errstr_size);

#endif
