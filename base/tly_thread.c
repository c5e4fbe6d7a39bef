/*
 * tly_thread.c - helper threads at a lower priority (tly_thread.h).
 */
#define _GNU_SOURCE /* syscall */
#include "tly_thread.h"

#include <errno.h>
#include <pthread.h>
#include <rocksdb/c.h>
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

static void lower_compactions(void) {
  rocksdb_env_t *env = rocksdb_create_default_env();
  if (!env)
    return;
  rocksdb_env_lower_thread_pool_cpu_priority(env); /* the "low" pool */
  rocksdb_env_destroy(env); /* the wrapper: the default env stays */
}

void tly_thread_lower_rocksdb_compactions(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  if (tly_thread_helper_nice() > 0)
    pthread_once(&once, lower_compactions);
}
