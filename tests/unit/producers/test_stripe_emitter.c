/*
 * test_stripe_emitter.c - the pure parts of the Stripe usage emitter: the
 * cursor encoding (an intent keeps what a resend must repeat, when it was
 * made and its generation), the deterministic identifier, what an answer
 * means (retry, retry under a fresh key, accepted, refused), the backoff's
 * bounds and the request rate's spacing.
 */
#include "tly_stripe_emitter.h"

#include "tly_sha256.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

static void test_cursor_round_trip(void **state) {
  (void)state;
  unsigned char bytes[TLY_STRIPE_CURSOR_MAX];
  tly_stripe_cursor_t settled = {.reported = 120, .failed = 7}, decoded;
  size_t len = tly_stripe_cursor_encode(&settled, bytes);
  assert_int_equal(len, 24);
  assert_int_equal(tly_stripe_cursor_decode(bytes, len, &decoded), 0);
  assert_true(decoded.reported == 120 && decoded.failed == 7 &&
              decoded.pending == 0);

  tly_stripe_cursor_t intent = {.reported = 120,
                                .pending = 30,
                                .failed = 7,
                                .timestamp_s = 1790000000,
                                .customer = "cus_abc",
                                .made_at_s = 1790003600,
                                .generation = 2};
  len = tly_stripe_cursor_encode(&intent, bytes);
  assert_int_equal(len, 33 + 7 + 12);
  assert_int_equal(tly_stripe_cursor_decode(bytes, len, &decoded), 0);
  assert_true(decoded.pending == 30 && decoded.timestamp_s == 1790000000);
  assert_string_equal(decoded.customer, "cus_abc");
  /* When it was made and its generation: what the 24 h rule needs. */
  assert_true(decoded.made_at_s == 1790003600 && decoded.generation == 2);

  /* An intent written before made-at and generation existed (it ends
   * after the customer id) still reads: made_at 0, generation 0. */
  assert_int_equal(tly_stripe_cursor_decode(bytes, 33 + 7, &decoded), 0);
  assert_true(decoded.pending == 30 && decoded.made_at_s == 0 &&
              decoded.generation == 0);
  assert_string_equal(decoded.customer, "cus_abc");

  /* Every other truncation, and a settled cursor with trailing bytes, is
   * refused; so is a negative total. */
  for (size_t cut = 0; cut < len; cut++)
    if (cut != 24 && cut != 33 + 7)
      assert_int_equal(tly_stripe_cursor_decode(bytes, cut, &decoded), -1);
  assert_int_equal(tly_stripe_cursor_decode(bytes, 24, &decoded), -1);
  len = tly_stripe_cursor_encode(&settled, bytes);
  assert_int_equal(tly_stripe_cursor_decode(bytes, len + 1, &decoded), -1);
  bytes[0] = 0x80;
  assert_int_equal(tly_stripe_cursor_decode(bytes, len, &decoded), -1);
}

/* Corrections (issue 17): a window's total falls, a negative delta is
 * settled; retracted round-trips, keeps every identifier new and the
 * changelog version rising. */
static void test_cursor_negative_delta(void **state) {
  (void)state;
  unsigned char bytes[TLY_STRIPE_CURSOR_MAX];
  char ids[4][TLY_STRIPE_IDENTIFIER_SIZE];
  tly_stripe_cursor_t cursor = {.reported = 10}, decoded;
  /* +10 reported; then -6 (a retraction), then +6 again: reported is 10
   * twice, the identifiers all differ. */
  tly_stripe_report_identifier(0, TLY_SUBJECT_USER, "a", "m", 0, &cursor,
                               ids[0]);
  cursor.pending = -6;
  cursor.customer[0] = 'c';
  size_t len = tly_stripe_cursor_encode(&cursor, bytes);
  assert_int_equal(tly_stripe_cursor_decode(bytes, len, &decoded), 0);
  assert_true(decoded.pending == -6);
  tly_stripe_cursor_settle(&cursor, 0, 0);
  assert_true(cursor.reported == 4 && cursor.retracted == 6 &&
              cursor.pending == 0);
  tly_stripe_report_identifier(0, TLY_SUBJECT_USER, "a", "m", 0, &cursor,
                               ids[1]);
  len = tly_stripe_cursor_encode(&cursor, bytes);
  assert_int_equal(len, 32);
  assert_int_equal(tly_stripe_cursor_decode(bytes, len, &decoded), 0);
  assert_true(decoded.reported == 4 && decoded.retracted == 6);
  cursor.pending = 6;
  tly_stripe_cursor_settle(&cursor, 0, 0);
  assert_true(cursor.reported == 10 && cursor.retracted == 6);
  tly_stripe_report_identifier(0, TLY_SUBJECT_USER, "a", "m", 0, &cursor,
                               ids[2]);
  /* a negative amount counted failed (refused, or too old) */
  tly_stripe_cursor_settle(&cursor, -3, 1);
  assert_true(cursor.failed == -3 && cursor.retracted == 9);
  len = tly_stripe_cursor_encode(&cursor, bytes);
  assert_int_equal(tly_stripe_cursor_decode(bytes, len, &decoded), 0);
  assert_true(decoded.failed == -3 && decoded.retracted == 9);
  tly_stripe_report_identifier(0, TLY_SUBJECT_USER, "a", "m", 0, &cursor,
                               ids[3]);
  for (int i = 0; i < 4; i++)
    for (int j = i + 1; j < 4; j++)
      assert_string_not_equal(ids[i], ids[j]);
  /* without a retraction a negative total is still refused */
  tly_stripe_cursor_t bad = {.reported = 1, .failed = -1};
  len = tly_stripe_cursor_encode(&bad, bytes);
  assert_int_equal(tly_stripe_cursor_decode(bytes, len, &decoded), -1);
}

static void test_identifier_is_deterministic(void **state) {
  (void)state;
  char a[TLY_STRIPE_IDENTIFIER_SIZE], b[TLY_STRIPE_IDENTIFIER_SIZE];
  tly_stripe_cursor_t cursor = {.reported = 10, .pending = 5};
  tly_stripe_report_identifier(0, TLY_SUBJECT_USER, "alice", "api_calls",
                               3600000, &cursor, a);
  assert_int_equal(strlen(a), 44);
  assert_memory_equal(a, "tly_", 4);
  /* The pending value is not part of it: a resend repeats the id. */
  cursor.pending = 99;
  tly_stripe_report_identifier(0, TLY_SUBJECT_USER, "alice", "api_calls",
                               3600000, &cursor, b);
  assert_string_equal(a, b);
  /* Every input that names another delta changes it. */
  static const struct {
    int32_t partition;
    tly_subject_kind_t kind;
    const char *meter;
    int64_t window_ms, reported, failed;
  } others[] = {
      {1, TLY_SUBJECT_USER, "api_calls", 3600000, 10, 0},
      {0, TLY_SUBJECT_ANONYMOUS, "api_calls", 3600000, 10, 0},
      {0, TLY_SUBJECT_USER, "tokens", 3600000, 10, 0},
      {0, TLY_SUBJECT_USER, "api_calls", 7200000, 10, 0},
      {0, TLY_SUBJECT_USER, "api_calls", 3600000, 15, 0},
      {0, TLY_SUBJECT_USER, "api_calls", 3600000, 10, 1},
  };
  for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++) {
    tly_stripe_cursor_t other = {.reported = others[i].reported,
                                 .failed = others[i].failed};
    tly_stripe_report_identifier(others[i].partition, others[i].kind, "alice",
                                 others[i].meter, others[i].window_ms, &other,
                                 b);
    assert_string_not_equal(a, b);
  }
}

static void test_identifier_generation(void **state) {
  (void)state;
  char zero[TLY_STRIPE_IDENTIFIER_SIZE], next[TLY_STRIPE_IDENTIFIER_SIZE],
      other[TLY_STRIPE_IDENTIFIER_SIZE], hex[TLY_SHA256_HEX_LEN + 1];
  tly_stripe_cursor_t cursor = {.reported = 10, .pending = 5};
  tly_stripe_report_identifier(0, TLY_SUBJECT_USER, "alice", "api_calls",
                               3600000, &cursor, zero);
  /* Generation 0 is the identifier of before generations existed: intents
   * already sent are resent under the same one. */
  static const char text[] = "user:alice\0api_calls\0"
                             "0|3600000|10|0";
  tly_sha256_hex(text, sizeof(text) - 1, hex);
  assert_memory_equal(zero, "tly_", 4);
  assert_memory_equal(zero + 4, hex, 40);
  /* An intent made again after it was found not to be in Stripe is a new
   * meter event: every generation has its own identifier. */
  cursor.generation = 1;
  tly_stripe_report_identifier(0, TLY_SUBJECT_USER, "alice", "api_calls",
                               3600000, &cursor, next);
  assert_string_not_equal(zero, next);
  assert_int_equal(strlen(next), 44);
  cursor.generation = 2;
  tly_stripe_report_identifier(0, TLY_SUBJECT_USER, "alice", "api_calls",
                               3600000, &cursor, other);
  assert_string_not_equal(next, other);
  assert_string_not_equal(zero, other);
}

static tly_stripe_outcome_t outcome(long status, const char *body,
                                    int should_retry) {
  tly_stripe_response_t response = {.status = status,
                                    .body = (char *)body,
                                    .retry_after_s = -1,
                                    .should_retry = should_retry};
  return tly_stripe_report_outcome(1, &response);
}

static void test_outcomes(void **state) {
  (void)state;
  tly_stripe_response_t none = {.retry_after_s = -1, .should_retry = -1};
  assert_int_equal(tly_stripe_report_outcome(0, &none), TLY_STRIPE_RETRY);
  assert_int_equal(outcome(200, "{}", -1), TLY_STRIPE_ACCEPTED);
  assert_int_equal(
      outcome(400,
              "{\"error\": {\"type\": \"invalid_request_error\", \"message\": "
              "\"An event already exists with identifier tly_1.\"}}",
              0),
      TLY_STRIPE_ACCEPTED);
  assert_int_equal(outcome(429, "{}", -1), TLY_STRIPE_RETRY);
  assert_int_equal(outcome(500, "{}", -1), TLY_STRIPE_RETRY);
  assert_int_equal(outcome(503, "{}", -1), TLY_STRIPE_RETRY);
  assert_int_equal(outcome(401, "{}", -1), TLY_STRIPE_RETRY);
  /* A stored 500 replayed under its Idempotency-Key (Stripe-Should-Retry:
   * false, or Idempotent-Replayed), and a key whose first request still
   * runs (409 idempotency_key_in_use): the event may be in Stripe, so no
   * failure; the same identifier goes again under a fresh key. */
  assert_int_equal(outcome(500, "{}", 0), TLY_STRIPE_RETRY_NEW_KEY);
  assert_int_equal(outcome(503, "{}", 0), TLY_STRIPE_RETRY_NEW_KEY);
  tly_stripe_response_t replayed = {.status = 500,
                                    .body = "{}",
                                    .retry_after_s = -1,
                                    .should_retry = -1,
                                    .idempotent_replayed = 1};
  assert_int_equal(tly_stripe_report_outcome(1, &replayed),
                   TLY_STRIPE_RETRY_NEW_KEY);
  assert_int_equal(
      outcome(409,
              "{\"error\": {\"type\": \"idempotency_error\", \"code\": "
              "\"idempotency_key_in_use\", \"message\": \"There is currently "
              "another in-progress request using this Idempotency Key\"}}",
              -1),
      TLY_STRIPE_RETRY_NEW_KEY);
  assert_int_equal(outcome(409, "{}", 1), TLY_STRIPE_RETRY_NEW_KEY);
  /* A key reused with other parameters is a real error. */
  assert_int_equal(
      outcome(400,
              "{\"error\": {\"type\": \"idempotency_error\", \"message\": "
              "\"Keys for idempotent requests can only be used with the same "
              "parameters\"}}",
              -1),
      TLY_STRIPE_REFUSED);
  assert_int_equal(outcome(400, "{}", 0), TLY_STRIPE_REFUSED);
  assert_int_equal(
      outcome(400,
              "{\"error\": {\"code\": \"resource_missing\", \"message\": "
              "\"No such customer: 'cus_x'\"}}",
              -1),
      TLY_STRIPE_REFUSED);
  assert_int_equal(outcome(404, "not json", -1), TLY_STRIPE_REFUSED);
}

static void test_backoff(void **state) {
  (void)state;
  /* Exponential from 500 ms, jitter within [step/2, step]. */
  for (uint32_t random = 0; random < 2000; random += 97) {
    int64_t first = tly_stripe_backoff_ms(0, 300, -1, random);
    assert_true(first >= 250 && first <= 500);
    int64_t third = tly_stripe_backoff_ms(2, 300, -1, random);
    assert_true(third >= 1000 && third <= 2000);
    int64_t late = tly_stripe_backoff_ms(40, 300, -1, random);
    assert_true(late >= 150000 && late <= 300000);
    int64_t capped = tly_stripe_backoff_ms(40, 1, -1, random);
    assert_true(capped >= 500 && capped <= 1000);
  }
  /* Never sooner than Retry-After, even beyond the cap. */
  assert_int_equal(tly_stripe_backoff_ms(0, 1, 3, 0), 3000);
  assert_true(tly_stripe_backoff_ms(5, 300, 1, 0) >= 8000);
}

static void test_rate(void **state) {
  (void)state;
  int64_t tat = 0, now = 5000000, sent = 0;
  /* Over two simulated seconds at 25/s, asking every millisecond: 50
   * requests, evenly spaced, never more than 25 in any second. */
  int64_t times[64];
  for (int64_t t = now; t < now + 2000000; t += 1000)
    if (tly_stripe_rate_wait_us(&tat, t, 25) == 0)
      times[sent++] = t;
  assert_int_equal(sent, 50);
  for (int i = 25; i < sent; i++)
    assert_true(times[i] - times[i - 25] >= 1000000);
  assert_int_equal(tly_stripe_rate_wait_us(&tat, tat - 10, 25), 10);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cursor_round_trip),
      cmocka_unit_test(test_cursor_negative_delta),
      cmocka_unit_test(test_identifier_is_deterministic),
      cmocka_unit_test(test_identifier_generation),
      cmocka_unit_test(test_outcomes),
      cmocka_unit_test(test_backoff),
      cmocka_unit_test(test_rate),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
