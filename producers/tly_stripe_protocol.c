/*
 * tly_stripe_protocol.c - the pure parts of usage reporting (see
 * tly_stripe_protocol.h): the cursor's bytes, the meter event identifier,
 * what Stripe's answer means, the backoff and the request rate.
 */
#include "tly_stripe_protocol.h"

#include "tly_config.h"
#include "tly_keys.h"
#include "tly_sha256.h"
#include "tly_store.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#define BACKOFF_BASE_MS 500
/* Stripe's answer to an identifier it already has. */
#define DUPLICATE_IDENTIFIER "An event already exists with identifier"

size_t tly_stripe_cursor_encode(const tly_stripe_cursor_t *cursor,
                                unsigned char *out) {
  tly_put_be64(out, (uint64_t)cursor->reported);
  tly_put_be64(out + 8, (uint64_t)cursor->pending);
  tly_put_be64(out + 16, (uint64_t)cursor->failed);
  if (!cursor->pending) {
    if (!cursor->retracted)
      return 24;
    tly_put_be64(out + 24, (uint64_t)cursor->retracted);
    return 32;
  }
  size_t customer_len = strnlen(cursor->customer, sizeof(cursor->customer) - 1);
  tly_put_be64(out + 24, (uint64_t)cursor->timestamp_s);
  out[32] = (unsigned char)customer_len;
  memcpy(out + 33, cursor->customer, customer_len);
  tly_put_be64(out + 33 + customer_len, (uint64_t)cursor->made_at_s);
  tly_put_be32(out + 41 + customer_len, cursor->generation);
  if (!cursor->retracted)
    return 45 + customer_len;
  tly_put_be64(out + 45 + customer_len, (uint64_t)cursor->retracted);
  return 53 + customer_len;
}

void tly_stripe_cursor_settle(tly_stripe_cursor_t *cursor, int64_t amount,
                              int failed) {
  if (cursor->pending)
    amount = cursor->pending;
  if (failed)
    cursor->failed += amount;
  else
    cursor->reported += amount;
  if (amount < 0)
    cursor->retracted -= amount;
  cursor->pending = 0;
}

int tly_stripe_cursor_decode(const void *data, size_t len,
                             tly_stripe_cursor_t *cursor) {
  const unsigned char *bytes = data;
  memset(cursor, 0, sizeof(*cursor));
  if (len < 24)
    return -1;
  cursor->reported = (int64_t)tly_get_be64(bytes);
  cursor->pending = (int64_t)tly_get_be64(bytes + 8);
  cursor->failed = (int64_t)tly_get_be64(bytes + 16);
  if (!cursor->pending) {
    if (len == 32)
      cursor->retracted = (int64_t)tly_get_be64(bytes + 24);
    return (len == 24 || (len == 32 && cursor->retracted > 0)) &&
                   cursor->reported >= 0 && cursor->failed >= -cursor->retracted
               ? 0
               : -1;
  }
  size_t customer_len = len > 33 ? bytes[32] : 0;
  /* Without made-at and generation: written before they existed. */
  int legacy = len == 33 + customer_len;
  if (len == 53 + customer_len)
    cursor->retracted = (int64_t)tly_get_be64(bytes + 45 + customer_len);
  if (cursor->reported < 0 || cursor->retracted < 0 ||
      cursor->failed < -cursor->retracted)
    return -1;
  if (!customer_len ||
      (!legacy && len != 45 + customer_len &&
       !(len == 53 + customer_len && cursor->retracted > 0)) ||
      customer_len >= sizeof(cursor->customer) ||
      memchr(bytes + 33, '\0', customer_len))
    return -1;
  cursor->timestamp_s = (int64_t)tly_get_be64(bytes + 24);
  memcpy(cursor->customer, bytes + 33, customer_len);
  if (!legacy) {
    cursor->made_at_s = (int64_t)tly_get_be64(bytes + 33 + customer_len);
    cursor->generation = tly_get_be32(bytes + 41 + customer_len);
  }
  return 0;
}

void tly_stripe_report_identifier(int32_t partition, tly_subject_kind_t kind,
                                  const char *id, const char *event_name,
                                  int64_t window_start_ms,
                                  const tly_stripe_cursor_t *cursor,
                                  char out[TLY_STRIPE_IDENTIFIER_SIZE]) {
  /* subject, 0, event_name, 0, then the numbers: no two inputs spell the
   * same bytes (subject keys and meter names hold no 0 byte). */
  char text[TLY_KEY_MAX + TLY_STRIPE_EVENT_NAME_MAX + 96];
  char hex[TLY_SHA256_HEX_LEN + 1];
  size_t len = tly_subject_key(kind, id, text, TLY_KEY_MAX);
  if (len >= TLY_KEY_MAX)
    len = TLY_KEY_MAX - 1;
  text[len++] = '\0';
  /* Failed deltas count as accounted too: a delta after a refused one must
   * not repeat the refused one's identifier (Stripe would take the
   * Idempotency-Key with other parameters for an error). */
  int tail = snprintf(text + len, sizeof(text) - len,
                      "%.*s%c%" PRId32 "|%" PRId64 "|%" PRId64 "|%" PRId64,
                      TLY_STRIPE_EVENT_NAME_MAX, event_name, '\0', partition,
                      window_start_ms, cursor->reported, cursor->failed);
  /* An intent made again after it was found not to be in Stripe: a new
   * meter event (generation 0 keeps the identifiers of before). */
  if (cursor->generation)
    tail +=
        snprintf(text + len + (size_t)tail, sizeof(text) - len - (size_t)tail,
                 "|g%" PRIu32, cursor->generation);
  /* After a fall of the window's total: the same reported and failed can
   * come back, retracted never does. */
  if (cursor->retracted)
    tail +=
        snprintf(text + len + (size_t)tail, sizeof(text) - len - (size_t)tail,
                 "|r%" PRId64, cursor->retracted);
  tly_sha256_hex(text, len + (size_t)tail, hex);
  snprintf(out, TLY_STRIPE_IDENTIFIER_SIZE, "tly_%.40s", hex);
}

tly_stripe_outcome_t
tly_stripe_report_outcome(int answered, const tly_stripe_response_t *response) {
  if (!answered)
    return TLY_STRIPE_RETRY; /* may or may not have arrived: resend */
  long status = response->status;
  if (status >= 200 && status < 300)
    return TLY_STRIPE_ACCEPTED;
  if (status == 400) {
    char message[256];
    tly_stripe_error_message(response->body, message, sizeof(message));
    if (strncmp(message, DUPLICATE_IDENTIFIER, strlen(DUPLICATE_IDENTIFIER)) ==
        0)
      return TLY_STRIPE_ACCEPTED;
  }
  /* The key is busy (409 idempotency_key_in_use: its first request still
   * runs; or another conflict), or its stored answer is a 5xx that Stripe
   * replays whatever happened since (Stripe-Should-Retry: false): the
   * event may be in Stripe, so it is no failure. The same identifier under
   * a fresh key either lands or is "already exists". */
  if (status == 409 || (status >= 500 && (response->should_retry == 0 ||
                                          response->idempotent_replayed)))
    return TLY_STRIPE_RETRY_NEW_KEY;
  if (response->should_retry == 1)
    return TLY_STRIPE_RETRY;
  if (response->should_retry == 0)
    return TLY_STRIPE_REFUSED;
  if (status == 429 || status >= 500 || status == 401 || status == 403)
    return TLY_STRIPE_RETRY;
  return TLY_STRIPE_REFUSED;
}

int64_t tly_stripe_backoff_ms(int attempt, int64_t retry_max_s,
                              int64_t retry_after_s, uint32_t random) {
  int64_t cap = retry_max_s * 1000;
  int64_t step = BACKOFF_BASE_MS;
  for (int i = 0; i < attempt && step < cap; i++)
    step *= 2;
  if (step > cap)
    step = cap;
  int64_t wait = step / 2 + (int64_t)(random % (uint32_t)(step / 2 + 1));
  if (retry_after_s >= 0 && wait < retry_after_s * 1000)
    wait = retry_after_s * 1000;
  return wait;
}

int64_t tly_stripe_rate_wait_us(int64_t *tat_us, int64_t now_us,
                                int64_t requests_per_s) {
  /* Evenly spaced, no burst: at most requests_per_s in any second. */
  int64_t interval = 1000000 / (requests_per_s > 0 ? requests_per_s : 1);
  if (*tat_us > now_us)
    return *tat_us - now_us;
  *tat_us = now_us + interval;
  return 0;
}
