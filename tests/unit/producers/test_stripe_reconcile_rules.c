/*
 * test_stripe_reconcile_rules.c - the pure parts of reconciling a report intent
 * older than Stripe's 24 hours of identifier uniqueness
 * (producers/tly_stripe_reconcile.h): the age rules (sent under its
 * identifier for 23 h, then left alone, reconciled from 24 h on), the
 * verdict from Stripe's total (never a blind resend: only a total that
 * proves the delta absent sends it again), the summary's time range, and
 * the test-only clock offset.
 */
#include "tly_stripe_reconcile.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static void test_intent_phases(void **state) {
  (void)state;
  const int64_t made = 1790000000, hour = 3600;
  assert_int_equal(tly_stripe_intent_phase(made, made), TLY_STRIPE_INTENT_SEND);
  assert_int_equal(tly_stripe_intent_phase(made, made + 23 * hour - 1),
                   TLY_STRIPE_INTENT_SEND);
  /* Every copy reaches Stripe while it still knows the identifier; then an
   * hour for its asynchronous aggregation to hold them all. */
  assert_int_equal(tly_stripe_intent_phase(made, made + 23 * hour),
                   TLY_STRIPE_INTENT_WAIT);
  assert_int_equal(tly_stripe_intent_phase(made, made + 24 * hour - 1),
                   TLY_STRIPE_INTENT_WAIT);
  assert_int_equal(tly_stripe_intent_phase(made, made + 24 * hour),
                   TLY_STRIPE_INTENT_RECONCILE);
  assert_int_equal(tly_stripe_intent_phase(made, made + 40 * 86400),
                   TLY_STRIPE_INTENT_RECONCILE);
  /* A clock that went back: still sent. */
  assert_int_equal(tly_stripe_intent_phase(made, made - hour),
                   TLY_STRIPE_INTENT_SEND);
  assert_true(TLY_STRIPE_RESEND_FOR_S < TLY_STRIPE_IDENTIFIER_TTL_S);
}

static void test_verdicts(void **state) {
  (void)state;
  /* Stripe has what was reported before plus the delta: it arrived. */
  assert_int_equal(tly_stripe_reconcile_verdict(107, 100, 7),
                   TLY_STRIPE_IN_STRIPE);
  assert_int_equal(tly_stripe_reconcile_verdict(7, 0, 7), TLY_STRIPE_IN_STRIPE);
  /* Exactly what was reported before: it never arrived. */
  assert_int_equal(tly_stripe_reconcile_verdict(100, 100, 7),
                   TLY_STRIPE_NOT_IN_STRIPE);
  assert_int_equal(tly_stripe_reconcile_verdict(0, 0, 7),
                   TLY_STRIPE_NOT_IN_STRIPE);
  /* Anything else says neither (other usage of the customer, a relink):
   * never a guess either way. */
  assert_int_equal(tly_stripe_reconcile_verdict(104, 100, 7),
                   TLY_STRIPE_UNDETERMINED);
  assert_int_equal(tly_stripe_reconcile_verdict(108, 100, 7),
                   TLY_STRIPE_UNDETERMINED);
  assert_int_equal(tly_stripe_reconcile_verdict(99, 100, 7),
                   TLY_STRIPE_UNDETERMINED);
  assert_int_equal(tly_stripe_reconcile_verdict(214, 100, 7),
                   TLY_STRIPE_UNDETERMINED);
  /* No overflow at the edge. */
  assert_int_equal(tly_stripe_reconcile_verdict(INT64_MAX, INT64_MAX, 1),
                   TLY_STRIPE_NOT_IN_STRIPE);
  assert_int_equal(tly_stripe_reconcile_verdict(INT64_MAX, INT64_MAX - 1, 1),
                   TLY_STRIPE_IN_STRIPE);
}

static void test_ranges(void **state) {
  (void)state;
  int64_t start, end;
  const int64_t window = 1790002800000LL; /* a whole hour, in ms */
  /* The window's last second: the window itself. */
  tly_stripe_reconcile_range(window, 3600000, window / 1000 + 3599, &start,
                             &end);
  assert_true(start == window / 1000 && end == window / 1000 + 3600);
  /* A window ahead of the clock was reported at now: back to its minute. */
  tly_stripe_reconcile_range(window, 3600000, window / 1000 - 130, &start,
                             &end);
  assert_true(start == window / 1000 - 180 && end == window / 1000 + 3600);
  assert_int_equal(start % 60, 0);
  /* A day's window. */
  tly_stripe_reconcile_range(window, 86400000, window / 1000 + 100, &start,
                             &end);
  assert_true(start == window / 1000 && end == window / 1000 + 86400);
}

static void test_clock_offset(void **state) {
  (void)state;
  char errstr[256];
  int64_t offset = 1;
  unsetenv(TLY_STRIPE_CLOCK_OFFSET_ENV);
  assert_int_equal(tly_stripe_clock_offset_ms(&offset, errstr, sizeof(errstr)),
                   0);
  assert_int_equal(offset, 0);
  setenv(TLY_STRIPE_CLOCK_OFFSET_ENV, "90000000", 1);
  assert_int_equal(tly_stripe_clock_offset_ms(&offset, errstr, sizeof(errstr)),
                   0);
  assert_int_equal(offset, 90000000);
  setenv(TLY_STRIPE_CLOCK_OFFSET_ENV, "-5", 1);
  assert_int_equal(tly_stripe_clock_offset_ms(&offset, errstr, sizeof(errstr)),
                   0);
  assert_int_equal(offset, -5);
  setenv(TLY_STRIPE_CLOCK_OFFSET_ENV, "1h", 1);
  assert_int_equal(tly_stripe_clock_offset_ms(&offset, errstr, sizeof(errstr)),
                   -1);
  assert_non_null(strstr(errstr, TLY_STRIPE_CLOCK_OFFSET_ENV));
  unsetenv(TLY_STRIPE_CLOCK_OFFSET_ENV);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_intent_phases),
      cmocka_unit_test(test_verdicts),
      cmocka_unit_test(test_ranges),
      cmocka_unit_test(test_clock_offset),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
