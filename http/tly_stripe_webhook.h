/*
 * tly_stripe_webhook.h - Stripe webhook intake, as pure functions: from the
 * Stripe-Signature header, the raw body, the config and the time to at most
 * one tally event (or a reason to ignore the delivery, or an error). No
 * socket, no clock, no Kafka: tly_http_ingest.c does the I/O (POST
 * /v1/stripe/webhook produces the event and answers 200 only once Kafka
 * acknowledged it), the unit tests and tests/fuzz/fuzz_stripe_webhook.c
 * call these directly.
 *
 * Signature: Stripe-Signature is "t=<unix s>,v1=<hex>,v1=<hex>,...". Each
 * v1 is HMAC-SHA256 over "<t>.<raw body>" keyed by an endpoint secret
 * (whsec_...). Every configured secret is tried against every v1 (several
 * while a secret is rotated), compared in constant time; t must be within
 * stripe.webhook_tolerance_s of now in both directions, so a captured
 * delivery cannot be replayed later and a forged future stamp does not
 * outlive the window.
 *
 * Mapping (Stripe type -> tally body; event_id = Stripe's "evt_..." id and
 * occurred_at = Stripe's "created" x 1000, so a delivery Stripe retries is
 * folded once):
 *   customer.subscription.created/updated -> SubscriptionChanged: the plan
 *       of the first subscription item whose price id is in stripe.prices;
 *       the period from the item's current_period_start/end (API versions
 *       from 2025-03-31) or the subscription's (older versions);
 *   customer.subscription.deleted -> SubscriptionCanceled (reason from
 *       cancellation_details.reason);
 *   invoice.paid -> InvoicePaid: the amount in micro-units of the invoice's
 *       currency, the period of its subscription line (the service period
 *       paid for: the invoice's own period_start/end look back one period);
 *   invoice.payment_failed -> PaymentFailed (amount_due, attempt_count);
 *   customer.created/updated -> CustomerLinked, when metadata.tally_subject
 *       names the subject (a customer without it is ignored).
 * Any other type is ignored (200 {"ignored": true}).
 *
 * The subject: tally keeps no index from Stripe customer to subject (the
 * fold is keyed by subject), so every mapped object must carry it in its
 * metadata: "tally_subject": "user:42" on the subscription (set it with
 * subscription_data.metadata at Checkout) and so on its invoices
 * (subscription_details.metadata, or parent.subscription_details.metadata
 * in newer API versions), or on the invoice's own metadata.
 *
 * Errors answer 400, and Stripe retries any non-2xx delivery for days:
 *   - an unknown price is a 400 naming it, nothing produced: once the price
 *     is added to stripe.prices (and tally restarted) the next retry goes
 *     through, whereas a 200 would have dropped the plan change for good;
 *   - a subscription or invoice without metadata.tally_subject is a 400 for
 *     the same reason: it shows as a failing delivery in Stripe's dashboard
 *     instead of vanishing.
 * No webhook secret configured: 503 (retried until the operator adds one).
 */
#ifndef TLY_STRIPE_WEBHOOK_H
#define TLY_STRIPE_WEBHOOK_H

#include "tly_config.h"
#include "tly_event.h"
#include "tly_request.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* Most v1 signatures looked at in one header (Stripe sends one per active
 * secret: two while rotating). */
#define TLY_STRIPE_SIGNATURES_MAX 8
#define TLY_STRIPE_SIGNATURE_HEX_LEN 64

/* Verifies header against the configured webhook secrets. 0, or -1 with err
 * (400 missing_signature, malformed_signature, timestamp_outside_tolerance,
 * signature_mismatch; 503 when no secret is configured). */
int tly_stripe_signature_verify(const tly_stripe_config_t *stripe,
                                const char *header, const char *body,
                                size_t len, int64_t now_s,
                                tly_req_error_t *err);

/* The v1 signature of body at timestamp_s with secret, as lowercase hex
 * (for tests, the fuzz target and anyone who needs to sign like Stripe). */
void tly_stripe_signature_compute(const char *secret, int64_t timestamp_s,
                                  const char *body, size_t len,
                                  char out[TLY_STRIPE_SIGNATURE_HEX_LEN + 1]);

typedef enum {
  TLY_STRIPE_WEBHOOK_EVENT = 0, /* *event is filled: produce it */
  TLY_STRIPE_WEBHOOK_IGNORED,   /* verified, nothing to produce */
  TLY_STRIPE_WEBHOOK_ERROR      /* err is filled */
} tly_stripe_webhook_result_t;

typedef struct {
  char event_id[TLY_STRIPE_ID_MAX]; /* Stripe's "evt_..." ("" if unknown) */
  char type[128];                   /* Stripe's event type */
  char reason[128];                 /* why it was ignored */
} tly_stripe_webhook_info_t;

/*
 * Verifies and maps one delivery. On TLY_STRIPE_WEBHOOK_EVENT, *event is
 * valid by tly_event_validate and owned by the caller (tly_event_clear); on
 * the other results it is left zeroed. info is filled as far as the body
 * was read.
 */
tly_stripe_webhook_result_t
tly_stripe_webhook_parse(const tly_config_t *config, const char *signature,
                         const char *body, size_t len, int64_t now_ms,
                         tly_event_t *event, tly_stripe_webhook_info_t *info,
                         tly_req_error_t *err);

/* The 200 answers: {"received": true, "event_id", "subject"} once event
 * was acknowledged by Kafka, or {"received": true, "ignored": true,
 * "type", "reason"} for an ignored delivery (event NULL). */
json_t *tly_stripe_webhook_answer(const tly_event_t *event,
                                  const tly_stripe_webhook_info_t *info);

/* Stripe amount (the currency's minor unit: cents, yen, fils) to micro-units
 * of the currency (ISO code, either case). -1 when it does not fit. */
int64_t tly_stripe_amount_micros(int64_t amount, const char *currency);

#endif
