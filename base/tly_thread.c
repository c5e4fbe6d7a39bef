/*
 * tly_thread.c - helper threads at a lower priority (tly_thread.h).
 */
#define _GNU_SOURCE /* syscall */
#include "tly_thread.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

int tly_thread_helper_nice(void) {
  const char *text = getenv("TALLY_HELPER_NICE");
  if (!text || !*text)
    return TLY_THREAD_HELPER_NICE;
  char *end = NULL;
  long value = strtol(text, &end, 10);
  if (*end || value < 0 || value > 19)
    return TLY_THREAD_HELPER_NICE;
  return (int)value;
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
