/*
 * tly_calendar.c - the fold's calendar: the hour of an event time and the
 * monthly cycle containing it (UTC, proleptic Gregorian, on tly_config's
 * day numbers). Declared in tly_billing.h; pure integer arithmetic, no
 * libc time zone code, no clock.
 */
#include "tly_billing.h"

static int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

int32_t tly_billing_hour(int64_t t_ms) {
  int64_t hour = floor_div(t_ms, TLY_HOUR_MS);
  return hour < INT32_MIN   ? INT32_MIN
         : hour > INT32_MAX ? INT32_MAX
                            : (int32_t)hour;
}

static int64_t days_in_month(int64_t y, int64_t m) {
  static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  return m == 2 && leap ? 29 : days[m - 1];
}

/* The anchor moved by k months; the day is clamped to the month's length
 * (an anchor on the 31st bills on the 30th in April). A result beyond the
 * int64 range saturates to INT64_MIN or INT64_MAX. Every int64 anchor is at
 * most ~292 million years from 1970, so the calendar values (years,
 * month indexes, day numbers) stay far inside int64 for any |k| the
 * callers pass (a difference of two such dates in months); only the
 * milliseconds can overflow. */
static int64_t shift_months(int64_t anchor_ms, int64_t k) {
  int64_t day = floor_div(anchor_ms, TLY_DAY_MS);
  /* Not anchor_ms - day * TLY_DAY_MS: the product may not fit. */
  int64_t time_of_day = anchor_ms % TLY_DAY_MS;
  int64_t y, m, d, ms;
  if (time_of_day < 0)
    time_of_day += TLY_DAY_MS;
  tly_civil_from_days(day, &y, &m, &d);
  int64_t month_index = y * 12 + (m - 1) + k;
  y = floor_div(month_index, 12);
  m = month_index - y * 12 + 1;
  if (d > days_in_month(y, m))
    d = days_in_month(y, m);
  day = tly_days_from_civil(y, m, d);
  if (__builtin_mul_overflow(day, TLY_DAY_MS, &ms) ||
      __builtin_add_overflow(ms, time_of_day, &ms))
    return day < 0 ? INT64_MIN : INT64_MAX;
  return ms;
}

void tly_billing_month_cycle(int64_t anchor_ms, int64_t t_ms, int64_t *start_ms,
                             int64_t *end_ms) {
  int64_t ay, am, ad, ty, tm, td;
  tly_civil_from_days(floor_div(anchor_ms, TLY_DAY_MS), &ay, &am, &ad);
  tly_civil_from_days(floor_div(t_ms, TLY_DAY_MS), &ty, &tm, &td);
  /* The anchor moved by k months lands in t's month: the cycle starts
   * there, or a month earlier when the anchor's day and time of the month
   * come after t's. One comparison, never a search: O(1) however far t is
   * from the anchor. */
  int64_t k = (ty - ay) * 12 + (tm - am);
  if (shift_months(anchor_ms, k) > t_ms)
    k--;
  *start_ms = shift_months(anchor_ms, k);
  *end_ms = shift_months(anchor_ms, k + 1);
}
