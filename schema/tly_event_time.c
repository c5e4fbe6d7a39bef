/*
 * tly_event_time.c - the bounds on an event's times (see tly_event_time.h).
 */
#include "tly_event_time.h"

#include "tly_event_body.h"

#include <stdio.h>
#include <time.h>

int tly_event_time_in_range(int64_t t_ms) {
  return t_ms >= TLY_TIME_MIN_MS && t_ms <= TLY_TIME_MAX_MS;
}

/* " (2026-11-23T10:00:00.000Z)" for a time in range, "" otherwise: the
 * number alone says what an operator needs, the date says it faster. */
static void describe(int64_t t_ms, char *out, size_t size) {
  struct tm tm;
  time_t seconds = (time_t)(t_ms / 1000);
  out[0] = '\0';
  if (!tly_event_time_in_range(t_ms) || !gmtime_r(&seconds, &tm))
    return;
  snprintf(out, size, " (%04d-%02d-%02dT%02d:%02d:%02d.%03dZ)",
           tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
           tm.tm_sec, (int)(t_ms % 1000));
}

static int out_of_range(const char *field, int64_t t_ms, char *errstr,
                        size_t errstr_size) {
  snprintf(errstr, errstr_size,
           "field '%s': %lld ms is outside the range of event times "
           "[%lld, %lld] (1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z)",
           field, (long long)t_ms, TLY_TIME_MIN_MS, TLY_TIME_MAX_MS);
  return -1;
}

int tly_event_time_check(const tly_event_t *event, int64_t clock_ms,
                         int64_t max_future_skew_ms, const char *clock_name,
                         char *errstr, size_t errstr_size) {
  int64_t t = event->occurred_at_ms;
  if (!tly_event_time_in_range(t))
    return out_of_range("occurred_at", t, errstr, errstr_size);
  const tly_body_spec_t *spec = tly_body_spec(event->body_kind);
  for (size_t i = 0; spec && i < spec->field_count; i++) {
    const tly_body_field_t *field = &spec->fields[i];
    int64_t value;
    if (field->kind != TLY_FIELD_TIME)
      continue;
    value = tly_body_int64_get(event, field);
    if (value != 0 && !tly_event_time_in_range(value))
      return out_of_range(field->name, value, errstr, errstr_size);
  }
  if (clock_ms <= 0)
    return 0; /* no clock: the absolute range only */
  int64_t skew = max_future_skew_ms > 0 ? max_future_skew_ms : 0, latest;
  if (__builtin_add_overflow(clock_ms, skew, &latest))
    latest = INT64_MAX;
  if (t <= latest)
    return 0;
  char at[64], clock[64];
  describe(t, at, sizeof(at));
  describe(clock_ms, clock, sizeof(clock));
  snprintf(errstr, errstr_size,
           "field 'occurred_at': %lld%s is %lld ms after %s %lld%s; at most "
           "%lld ms (events.max_future_skew_ms) is allowed",
           (long long)t, at, (long long)(t - clock_ms),
           clock_name ? clock_name : "the clock", (long long)clock_ms, clock,
           (long long)skew);
  return -1;
}
