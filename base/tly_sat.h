/*
 * tly_sat.h - saturating sums for totals that add up values each of which
 * fits int64 on its own: the hours of one day (a day may hold the hours of
 * two cycles, each up to INT64_MAX), the features of a meter, the hours of
 * a Stripe report window. Such a sum is held at INT64_MAX (or INT64_MIN)
 * instead of wrapping to a nonsense sign; the fold itself never saturates
 * (it refuses an event that would overflow a total, see tly_billing.c).
 */
#ifndef TLY_SAT_H
#define TLY_SAT_H

#include <stdint.h>

static inline int64_t tly_add_saturating(int64_t a, int64_t b) {
  int64_t sum;
  if (!__builtin_add_overflow(a, b, &sum))
    return sum;
  return b > 0 ? INT64_MAX : INT64_MIN;
}

#endif
