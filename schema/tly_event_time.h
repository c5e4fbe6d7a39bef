/*
 * tly_event_time.h - the bounds on an event's times.
 *
 * Owns the two rules every time in an event obeys, and nothing else:
 *   1. the absolute range: occurred_at and the period fields of Stripe
 *      bodies (period_start, period_end; 0 still means "unknown") lie in
 *      [TLY_TIME_MIN_MS, TLY_TIME_MAX_MS], 1970-01-01T00:00:00.000Z to
 *      9999-12-31T23:59:59.999Z. Calendar arithmetic on any time in it
 *      fits an int64 with room to spare (a cycle's end, an hour number in
 *      an int32);
 *   2. the future skew: occurred_at is at most max_future_skew_ms after a
 *      reference clock (default 5 minutes, as Stripe allows).
 * Which clock is the caller's business, and it never reads one itself
 * (pure: no clock, no I/O). The processor passes the record's Kafka
 * timestamp: it is in the log, so every replay of the record decides the
 * same. The HTTP port and `tally emit` pass the wall clock: for them this is
 * input validation, before anything is written. There is no past bound
 * against the clock: the fold's dedupe rule (an event older than the
 * partition's watermark minus the dedupe window is refused) is the past
 * bound, and backfills within it are legitimate.
 */
#ifndef TLY_EVENT_TIME_H
#define TLY_EVENT_TIME_H

#include "tly_event.h"

#include <stddef.h>
#include <stdint.h>

#define TLY_TIME_MIN_MS 0LL                     /* 1970-01-01T00:00:00.000Z */
#define TLY_TIME_MAX_MS 253402300799999LL       /* 9999-12-31T23:59:59.999Z */
#define TLY_DEFAULT_MAX_FUTURE_SKEW_MS 300000LL /* 5 minutes */
/* The largest skew a configuration may set: a year. */
#define TLY_MAX_FUTURE_SKEW_LIMIT_MS (366LL * 24 * 3600 * 1000)

/* 1 if t_ms is in [TLY_TIME_MIN_MS, TLY_TIME_MAX_MS]. */
int tly_event_time_in_range(int64_t t_ms);

/*
 * Checks an event's times: rule 1 always; rule 2 when clock_ms > 0 (a
 * record without a Kafka timestamp has only the absolute range). clock_name
 * says in the message what the clock was ("the record's Kafka timestamp",
 * "now"). 0, or -1 with errstr starting "field '<name>': " (the HTTP port
 * names the field from it) and saying the bound. Overflow-safe for every
 * int64 argument.
 */
int tly_event_time_check(const tly_event_t *event, int64_t clock_ms,
                         int64_t max_future_skew_ms, const char *clock_name,
                         char *errstr, size_t errstr_size);

#endif
