/*
 * tly_files.c - the open-file limit and its shares (tly_files.h).
 */
#include "tly_files.h"

#include <sys/resource.h>

uint64_t tly_files_raise_limit(void) {
  struct rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit))
    return 0;
  if (limit.rlim_cur < limit.rlim_max) {
    struct rlimit raised = {.rlim_cur = limit.rlim_max,
                            .rlim_max = limit.rlim_max};
    if (!setrlimit(RLIMIT_NOFILE, &raised))
      limit = raised;
  }
  return limit.rlim_cur == RLIM_INFINITY ? UINT64_MAX
                                         : (uint64_t)limit.rlim_cur;
}

int tly_files_store_tables(uint64_t limit) {
  if (limit <= 512 + 2 * (uint64_t)TLY_FILES_STORE_MIN) /* 0: unknown */
    return TLY_FILES_STORE_MIN;
  uint64_t half = (limit - 512) / 2;
  return half >= TLY_FILES_STORE_MAX ? TLY_FILES_STORE_MAX : (int)half;
}

uint64_t tly_files_reserved(uint64_t limit) {
  return (uint64_t)tly_files_store_tables(limit) + TLY_FILES_OTHERS;
}
