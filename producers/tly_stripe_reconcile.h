/*
 * tly_stripe_reconcile.h - what the usage emitter (tly_stripe_emitter.h)
 * does with a report intent that may or may not have reached Stripe once
 * Stripe no longer deduplicates its identifier: Stripe keeps meter event
 * identifiers unique for a rolling 24 hours only, so a resend after that
 * could count the delta twice. Such an intent is never resent blind:
 * Stripe's meter event summaries say whether the delta is in Stripe's
 * total, and only then is it counted reported or sent again (under a new
 * identifier).
 *
 * This module owns:
 *   - the emitter's clock: the wall clock plus a test-only offset
 *     (TLY_STRIPE_CLOCK_OFFSET_ENV), so tests can move it past 24 hours;
 *   - the age rules of an intent, from the time it was made: resent under
 *     its identifier (and retried in place) for TLY_STRIPE_RESEND_FOR_S, then
 *     left alone until TLY_STRIPE_RECONCILE_AFTER_S (Stripe aggregates meter
 *     events asynchronously: the hour between lets every copy sent reach
 *     the summaries), then reconciled;
 *   - the verdict from Stripe's total (tly_stripe_reconcile_verdict);
 *   - the Stripe queries behind it: GET /v1/billing/meters (the meter of an
 *     event_name, looked up once and kept) and GET
 *     /v1/billing/meters/{id}/event_summaries (a customer's total over a
 *     minute-aligned time range).
 *
 * Threading: a reconciler belongs to the emitter's thread.
 */
#ifndef TLY_STRIPE_RECONCILE_H
#define TLY_STRIPE_RECONCILE_H

#include "tly_stripe_client.h"

#include <stddef.h>
#include <stdint.h>

/* Test-only: milliseconds added to the emitter's wall clock. */
#define TLY_STRIPE_CLOCK_OFFSET_ENV "TALLY_TEST_STRIPE_CLOCK_OFFSET_MS"

/* The offset TLY_STRIPE_CLOCK_OFFSET_ENV asks for (0 when unset). 0, or -1
 * with errstr when it is not an integer. */
int tly_stripe_clock_offset_ms(int64_t *offset_ms, char *errstr,
                               size_t errstr_size);

/* Stripe's uniqueness window of a meter event identifier. */
#define TLY_STRIPE_IDENTIFIER_TTL_S (24LL * 3600)
/* An intent is sent under its identifier only this long after it was made:
 * every copy reaches Stripe within the identifier's 24 hours. */
#define TLY_STRIPE_RESEND_FOR_S (23LL * 3600)
/* From this age on, an intent not yet settled is reconciled. */
#define TLY_STRIPE_RECONCILE_AFTER_S (24LL * 3600)

typedef enum {
  TLY_STRIPE_INTENT_SEND = 0,  /* send (again) under its identifier */
  TLY_STRIPE_INTENT_WAIT,      /* neither: wait for the reconciliation */
  TLY_STRIPE_INTENT_RECONCILE, /* ask Stripe's summaries */
} tly_stripe_intent_phase_t;

/* made_at_s: when the intent was made (an intent written before that was
 * recorded: its timestamp, which is never later). */
tly_stripe_intent_phase_t tly_stripe_intent_phase(int64_t made_at_s,
                                                  int64_t now_s);

typedef enum {
  TLY_STRIPE_IN_STRIPE = 0, /* Stripe's total has it: count it reported */
  TLY_STRIPE_NOT_IN_STRIPE, /* it has not: send it again, new identifier */
  TLY_STRIPE_UNDETERMINED   /* neither adds up: never resent blind */
} tly_stripe_verdict_t;

/* From Stripe's total of the customer and meter over the window's range
 * (every earlier delta of the cursor, reported, is in it: they were
 * accepted before this intent was made): total == reported + pending is in
 * Stripe, total == reported is not. Anything else (other subjects or
 * other senders sharing the customer, a customer relinked within the
 * window) does not say which: undetermined. */
tly_stripe_verdict_t tly_stripe_reconcile_verdict(int64_t stripe_total,
                                                  int64_t reported,
                                                  int64_t pending);

/* The summary's time range for an intent of the window (starting at
 * window_start_ms, window_ms long) sent with timestamp_s: the window,
 * reaching back to the minute of the timestamp when that is earlier (a
 * window ahead of the clock is reported at now). Minute-aligned, as
 * Stripe requires. */
void tly_stripe_reconcile_range(int64_t window_start_ms, int64_t window_ms,
                                int64_t timestamp_s, int64_t *start_s,
                                int64_t *end_s);

typedef struct tly_stripe_reconciler tly_stripe_reconciler_t;

/* NULL when out of memory. The client stays the caller's. */
tly_stripe_reconciler_t *tly_stripe_reconciler_new(tly_stripe_client_t *client);
void tly_stripe_reconciler_destroy(tly_stripe_reconciler_t *reconciler);

typedef enum {
  TLY_STRIPE_QUERY_OK = 0,
  TLY_STRIPE_QUERY_RETRY,   /* no answer, 429, 5xx, 401/403: ask again */
  TLY_STRIPE_QUERY_FAILED,  /* no such meter, not a sum, a bad answer */
  TLY_STRIPE_QUERY_STOPPED, /* before_request said stop */
} tly_stripe_query_t;

/* Called before each request (the caller's rate limit and checks): 0 to
 * go on, anything else to stop. */
typedef int (*tly_stripe_before_request_fn)(void *opaque);

/*
 * Stripe's total of the meter of event_name for customer over
 * [start_s, end_s): *total on OK. On RETRY, *retry_after_s is Stripe's
 * Retry-After (-1: none). On RETRY and FAILED, error says why.
 */
tly_stripe_query_t tly_stripe_meter_total(
    tly_stripe_reconciler_t *reconciler, const char *event_name,
    const char *customer, int64_t start_s, int64_t end_s,
    tly_stripe_before_request_fn before_request, void *opaque, int64_t *total,
    int64_t *retry_after_s, char *error, size_t error_size);

/* What an intent to reconcile is. */
typedef struct {
  const char *event_name, *customer, *identifier;
  int64_t window_start_ms, window_ms;
  int64_t timestamp_s;
  int64_t reported, pending; /* the cursor's */
} tly_stripe_intent_t;

/* The caller's side of the requests: before_request as above; back_off
 * waits before retry number attempt (what: why, for the log): 0 to go on,
 * anything else to stop. */
typedef struct {
  tly_stripe_before_request_fn before_request;
  int (*back_off)(void *opaque, int attempt, int64_t retry_after_s,
                  const char *what);
  void *opaque;
} tly_stripe_hooks_t;

/*
 * Asks Stripe's total for the intent's customer and meter over its
 * window's range (tly_stripe_reconcile_range), retrying until Stripe
 * answers, and judges it (tly_stripe_reconcile_verdict; a meter Stripe
 * cannot sum for it is undetermined too). 0 with *verdict and *total
 * (-1 when Stripe gave none) and, when undetermined, reason: the dead
 * letter's text (both totals, or why there was none); -1 when a hook said
 * stop.
 */
int tly_stripe_reconcile_intent(tly_stripe_reconciler_t *reconciler,
                                const tly_stripe_intent_t *intent,
                                const tly_stripe_hooks_t *hooks,
                                tly_stripe_verdict_t *verdict, int64_t *total,
                                char *reason, size_t reason_size);

#endif
