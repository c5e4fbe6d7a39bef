/*
 * tly_log.c - stderr logging and the two clocks the shell (never the fold)
 * uses.
 */
#include "tly_log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

static atomic_int min_level = TLY_LOG_INFO;

void tly_log_set_level(tly_log_level_t level) { atomic_store(&min_level, (int)level); }

void tly_log(tly_log_level_t level, const char *component, const char *fmt, ...) {
  static const char *names[] = {"debug", "info", "warn", "error"};
  char message[2048], stamp[32];
  struct timespec now;
  struct tm tm;
  va_list ap;

  if ((int)level < atomic_load(&min_level))
    return;
  clock_gettime(CLOCK_REALTIME, &now);
  gmtime_r(&now.tv_sec, &tm);
  strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
  va_start(ap, fmt);
  vsnprintf(message, sizeof(message), fmt, ap);
  va_end(ap);
  /* One fprintf per line so lines from several threads do not interleave. */
  fprintf(stderr, "%s.%03ldZ %s %s: %s\n", stamp, now.tv_nsec / 1000000L,
          names[level], component, message);
}

int64_t tly_monotonic_ms(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

int64_t tly_wall_ms(void) {
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}
