/*
 * tly_stripe_subs.h - Stripe customers, subscriptions and invoices driven
 * from tally (the routes /v1/subjects/{s}/customer, /subscription and
 * /invoices call these on a thread of their own).
 *
 * Every operation is a short sequence of Stripe calls over
 * tly_stripe_client.h, form-encoded as Stripe documents them, and returns
 * the JSON answer for the HTTP port with its status. tally's own state is
 * never changed here: what Stripe did comes back through the webhook
 * (customer.created, customer.subscription.*, invoice.*), into the log and
 * the fold, so every answer that changed something in Stripe says
 * "pending": true.
 *
 * Nothing is created twice:
 *   - each call that creates or changes something carries a deterministic
 *     Idempotency-Key (from the subject and what the call is for), so a
 *     retry of it, after a 5xx, a 409 idempotency_key_in_use, a 429 or no
 *     answer at all, is the same request to Stripe, which replays the
 *     first result (Idempotent-Replayed) instead of running it again;
 *   - before creating, the operation looks for what a request of an
 *     earlier attempt may have made: the customer by metadata search
 *     (metadata['tally_subject']), the subscription by listing the
 *     customer's subscriptions (metadata.tally_subject). Stripe's search is
 *     eventually consistent (about a minute), which the key covers.
 * Retries: at most attempts per call (same key), waiting backoff_ms,
 * doubled each time, or Retry-After when Stripe says more (capped at
 * TLY_STRIPE_SUBS_WAIT_MAX_MS); Stripe-Should-Retry decides when present.
 *
 * Errors: a Stripe 4xx keeps its status (401/403, tally's own key, become
 * 502; 429 becomes 503), a 5xx or no answer is 502, each naming Stripe's
 * code: {"error": {"code": "stripe_error" | "stripe_unavailable" |
 * "idempotency_conflict", "message", "stripe_status", "stripe_code",
 * "field"}}. The secret key is never in an answer or a log line.
 */
#ifndef TLY_STRIPE_SUBS_H
#define TLY_STRIPE_SUBS_H

#include "tly_billing.h"
#include "tly_config.h"
#include "tly_stripe_client.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define TLY_STRIPE_SUBS_ATTEMPTS 3 /* per Stripe call */
#define TLY_STRIPE_SUBS_BACKOFF_MS 200
#define TLY_STRIPE_SUBS_WAIT_MAX_MS 2000
/* The most Stripe calls one operation makes in a row (find, preview,
 * change): with the attempts, what bounds an operation's time. */
#define TLY_STRIPE_SUBS_CALLS_MAX 3
#define TLY_STRIPE_SUBS_EMAIL_MAX 512    /* Stripe: customer email, 512 */
#define TLY_STRIPE_SUBS_NAME_MAX 256     /* Stripe: customer name, 256 */
#define TLY_STRIPE_SUBS_INVOICES_MAX 100 /* Stripe: a list page, 100 */

typedef struct {
  tly_stripe_client_t *client;
  const tly_config_t *config;
  int attempts;    /* >= 1 */
  long backoff_ms; /* first wait between attempts */
} tly_stripe_subs_t;

/* The longest an operation may take, in ms (for a forwarding timeout). */
int64_t tly_stripe_subs_time_bound_ms(const tly_stripe_subs_t *subs);

/* One Stripe call with retries under idempotency_key (NULL for reads):
 * method "GET", "POST" or "DELETE". 0 with *out filled (any status), -1
 * when no answer came in any attempt (out says why). *attempts_used, when
 * not NULL, is how many requests were sent. */
int tly_stripe_subs_call(const tly_stripe_subs_t *subs, const char *method,
                         const char *path, const tly_stripe_param_t *params,
                         size_t count, const char *idempotency_key,
                         tly_stripe_response_t *out, int *attempts_used);

/* Whether a response (or none: response NULL) is worth another attempt
 * under the same key. Pure. */
int tly_stripe_subs_retryable(const tly_stripe_response_t *response);

/* The error answer for a Stripe response that failed (status 0: none came,
 * transport_error says why). Pure. */
json_t *tly_stripe_subs_error(long stripe_status, const char *body,
                              const char *transport_error, int *status);

/* "tally-<purpose>-" + SHA-256 hex of the parts joined by '\n' (cut to
 * fit out, at most 255 bytes as Stripe allows). Pure. */
void tly_stripe_subs_key(const char *purpose, const char *const *parts,
                         size_t count, char *out, size_t out_size);

/* metadata['tally_subject']:'<subject>' with ' and \ escaped, for
 * GET /v1/customers/search. Pure; out holds at least 2 x the subject
 * + 40 bytes. */
void tly_stripe_subs_search_query(const char *subject, char *out,
                                  size_t out_size);

/* POST /v1/subjects/{s}/customer. email and name may be NULL. */
json_t *tly_stripe_subs_customer(const tly_stripe_subs_t *subs,
                                 const char *subject, const char *email,
                                 const char *name, int *status);

/* POST /v1/subjects/{s}/subscription: the plan's prices (stripe.plans)
 * for customer. */
json_t *tly_stripe_subs_subscribe(const tly_stripe_subs_t *subs,
                                  const char *subject, const char *customer,
                                  const char *plan, int *status);

/* PUT /v1/subjects/{s}/subscription: Stripe's preview of the change (POST
 * /v1/invoices/create_preview), then the change, both prorated as of
 * now_s with proration_behavior (NULL: stripe.proration_behavior). */
json_t *tly_stripe_subs_change(const tly_stripe_subs_t *subs,
                               const char *subject, const char *customer,
                               const char *plan, const char *proration_behavior,
                               int64_t now_s, int *status);

/* DELETE /v1/subjects/{s}/subscription: at the period's end
 * (cancel_at_period_end) or now (DELETE /v1/subscriptions/{id}). */
json_t *tly_stripe_subs_cancel(const tly_stripe_subs_t *subs,
                               const char *subject, const char *customer,
                               int at_period_end, int *status);

/* GET /v1/subjects/{s}/invoices: the customer's latest invoices (limit,
 * 1..TLY_STRIPE_SUBS_INVOICES_MAX), each next to tally's closed cycle of
 * the same period (see tly_stripe_subs_invoice_json). */
json_t *tly_stripe_subs_invoices(const tly_stripe_subs_t *subs,
                                 const char *subject, const char *customer,
                                 int64_t limit, const tly_cycle_t *cycles,
                                 size_t cycle_count, int *status);

/* One Stripe invoice next to tally: number, status, period, total,
 * hosted_invoice_url, invoice_pdf; metered_micros, the sum of its lines
 * whose price is a metered price of stripe.plans (micro-units of its
 * currency); folded, the closed cycle of the same period (start and end
 * equal to the invoice's period_start and period_end) with its
 * cost_micros, or null; matches_folded, whether metered_micros equals that
 * cost_micros (null without a cycle, or when Stripe cut the lines short).
 * Pure. */
json_t *tly_stripe_subs_invoice_json(const tly_config_t *config,
                                     json_t *invoice, const tly_cycle_t *cycles,
                                     size_t cycle_count);

#endif
