/*
 * tly_thread.c - helper threads at a lower priority (tly_thread.h).
 */
#define _GNU_SOURCE /* syscall */
#include "tly_thread.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The variable's value, TLY_THREAD_HELPER_NICE when unset or empty, -1
 * when it is not an integer 0..19. */
static int parse_setting(const char *text) {
  if (!text || !*text)
    return TLY_THREAD_HELPER_NICE;
  if (*text < '0' || *text > '9') /* no sign, no blanks */
    return -1;
  char *end = NULL;
  errno = 0;
  long value = strtol(text, &end, 10);
  if (errno || end == text || *end || value < 0 || value > 19)
    return -1;
  return (int)value;
}

int tly_thread_helper_nice(void) {
  int value = parse_setting(getenv("TALLY_HELPER_NICE"));
  return value < 0 ? TLY_THREAD_HELPER_NICE : value;
}

int tly_thread_helper_nice_check(char *errstr, size_t errstr_size) {
  const char *text = getenv("TALLY_HELPER_NICE");
  if (parse_setting(text) >= 0)
    return 0;
  snprintf(errstr, errstr_size,
           "TALLY_HELPER_NICE: expected an integer 0..19 (0: off), got "
           "\"%.64s\"",
           text);
  return -1;
}

int tly_thread_become_helper(void) {
  int nice_value = tly_thread_helper_nice();
  id_t tid = (id_t)syscall(SYS_gettid);
  if (nice_value > 0 && setpriority(PRIO_PROCESS, tid, nice_value))
    return -1;
  errno = 0;
  int now = getpriority(PRIO_PROCESS, tid);
  return now == -1 && errno ? -1 : now;
}
