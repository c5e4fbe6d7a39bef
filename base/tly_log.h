/*
 * tly_log.h - one-line log messages to stderr with a UTC timestamp and a
 * level, e.g. "2026-11-23T10:00:00.123Z error processor: ...". Secrets
 * (API keys, tokens) are never passed here.
 */
#ifndef TLY_LOG_H
#define TLY_LOG_H

#include <stdint.h>

typedef enum { TLY_LOG_DEBUG, TLY_LOG_INFO, TLY_LOG_WARN, TLY_LOG_ERROR } tly_log_level_t;

void tly_log_set_level(tly_log_level_t level);
void tly_log(tly_log_level_t level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Monotonic milliseconds, for deadlines and durations (never in the fold). */
int64_t tly_monotonic_ms(void);
/* Wall-clock milliseconds since the epoch. */
int64_t tly_wall_ms(void);

#endif
