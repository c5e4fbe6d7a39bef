/*
 * tly_stripe_protocol.h - the pure parts of usage reporting to Stripe
 * (producers/tly_stripe_emitter.h has the protocol they serve): a report
 * cursor's bytes, the deterministic meter event identifier, what an answer
 * of Stripe means (accepted, retry, retry under a fresh Idempotency-Key,
 * refused), the retry backoff and the request rate's token bucket. No I/O,
 * no clock: the unit tests call them directly.
 */
#ifndef TLY_STRIPE_PROTOCOL_H
#define TLY_STRIPE_PROTOCOL_H

#include "tly_event.h"
#include "tly_stripe_client.h"

#include <stddef.h>
#include <stdint.h>

/* Stripe takes meter events up to 35 days old; a delta older than that,
 * less a margin for the request's own time, is never sent. */
#define TLY_STRIPE_MAX_AGE_S (35LL * 86400)
#define TLY_STRIPE_AGE_MARGIN_S 300

/* A cursor: [reported BE8][pending BE8][failed BE8], and while pending is
 * not 0 the intent's [timestamp s BE8][customer id length, 1 byte][customer
 * id][made at s BE8][generation BE4]: what a resend must repeat exactly
 * (Stripe refuses an Idempotency-Key with other parameters, and the
 * customer may be relinked meanwhile), when the intent was made (by the
 * emitter's clock: its age decides whether it may still be resent under
 * its identifier, tly_stripe_reconcile.h) and how many times it was found
 * not to be in Stripe after that and made again under a new identifier.
 * An intent written before made-at and generation existed ends after the
 * customer id: made_at_s 0 (its timestamp stands in) and generation 0. */
typedef struct {
  int64_t reported, pending, failed;
  int64_t timestamp_s;
  char customer[128];
  int64_t made_at_s;
  uint32_t generation;
  /* Usage corrections (issue 17): the window's total can fall, and a
   * negative delta is reported as a meter event with a negative value
   * (Stripe's sum takes it). retracted adds up every amount the cursor's
   * totals fell by (negative deltas, and refused amounts taken back), so
   * reported + failed + 2 * retracted grows with every step and no two
   * deltas share an identifier. Encoded after everything else, only when
   * not 0 (cursors without corrections keep their bytes). pending and
   * failed may be negative once it is not 0. */
  int64_t retracted;
} tly_stripe_cursor_t;

#define TLY_STRIPE_CURSOR_MAX (4 * 8 + 1 + 128 + 8 + 4 + 8)

/* Settles the pending amount (or, pending 0, amount) into reported (failed
 * 0) or failed: a negative amount counts in retracted too. */
void tly_stripe_cursor_settle(tly_stripe_cursor_t *cursor, int64_t amount,
                              int failed);
/* Returns the length written (out holds TLY_STRIPE_CURSOR_MAX bytes). */
size_t tly_stripe_cursor_encode(const tly_stripe_cursor_t *cursor,
                                unsigned char *out);
/* 0, or -1 when the bytes are not a cursor. */
int tly_stripe_cursor_decode(const void *data, size_t len,
                             tly_stripe_cursor_t *cursor);

/* "tly_" and 40 hex digits of the SHA-256 of subject, meter, window start
 * and the totals accounted before the delta (reported and failed), and the
 * intent's generation when it is not 0: the meter event's identifier (and
 * the first Idempotency-Key it is sent with). The partition is part of
 * it too: a subject whose events were spread over partitions by another
 * partitioner has state, and cursors, on each, and their deltas must not
 * share identifiers. */
#define TLY_STRIPE_IDENTIFIER_SIZE 45
void tly_stripe_report_identifier(int32_t partition, tly_subject_kind_t kind,
                                  const char *id, const char *event_name,
                                  int64_t window_start_ms,
                                  const tly_stripe_cursor_t *cursor,
                                  char out[TLY_STRIPE_IDENTIFIER_SIZE]);

typedef enum {
  TLY_STRIPE_ACCEPTED = 0,  /* 200, or the identifier already exists */
  TLY_STRIPE_RETRY,         /* send again later, the same request */
  TLY_STRIPE_RETRY_NEW_KEY, /* send again later under a fresh
                               Idempotency-Key (same identifier): the key's
                               answer is a stored 5xx, or the key is busy */
  TLY_STRIPE_REFUSED        /* Stripe will not take it: count it failed */
} tly_stripe_outcome_t;

/* What a meter event request's answer means. answered: tly_stripe_post
 * returned 0 (there is an HTTP answer in response). */
tly_stripe_outcome_t
tly_stripe_report_outcome(int answered, const tly_stripe_response_t *response);

/* Milliseconds to wait before retry number attempt (0-based): exponential
 * from 500 ms, capped at retry_max_s, with jitter from random (any value:
 * the wait is between half and all of the step), never below
 * retry_after_s (-1: none). */
int64_t tly_stripe_backoff_ms(int attempt, int64_t retry_max_s,
                              int64_t retry_after_s, uint32_t random);

/* The token bucket of the request rate: a request may go at now_us when
 * this returns 0; otherwise the microseconds to wait. Taking a token
 * advances *tat_us (the theoretical arrival time; start it at 0). */
int64_t tly_stripe_rate_wait_us(int64_t *tat_us, int64_t now_us,
                                int64_t requests_per_s);

#endif
