/*
 * tly_http_process.c - the process collector's figures from /proc/self
 * (see tly_http_process.h).
 */
#include "tly_http_process.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* The boot time (seconds since the epoch): "btime" of /proc/stat. 0 when
 * unknown. */
static uint64_t boot_time(void) {
  char line[256];
  unsigned long long btime = 0;
  FILE *file = fopen("/proc/stat", "r");
  while (file && fgets(line, sizeof(line), file))
    if (sscanf(line, "btime %llu", &btime) == 1)
      break;
  if (file)
    fclose(file);
  return btime;
}

/* utime, stime, starttime (clock ticks), vsize (bytes) and rss (pages) of
 * /proc/self/stat: fields 14, 15, 22, 23 and 24, counted after the ")"
 * that closes the command name (which may hold spaces). 0 or -1. */
static int read_stat(unsigned long long *utime, unsigned long long *stime,
                     unsigned long long *start, unsigned long long *vsize,
                     long long *rss) {
  char line[1024];
  FILE *file = fopen("/proc/self/stat", "r");
  if (!file)
    return -1;
  const char *after =
      fgets(line, sizeof(line), file) ? strrchr(line, ')') : NULL;
  fclose(file);
  if (!after)
    return -1;
  return sscanf(after + 2,
                "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d "
                "%*d %*d %*d %*d %*d %llu %llu %lld",
                utime, stime, start, vsize, rss) == 5
             ? 0
             : -1;
}

static uint64_t count_fds(void) {
  uint64_t count = 0;
  DIR *fds = opendir("/proc/self/fd");
  struct dirent *entry;
  while (fds && (entry = readdir(fds)))
    if (entry->d_name[0] != '.')
      count++;
  if (fds) {
    closedir(fds);
    count--; /* the descriptor reading the directory */
  }
  return count;
}

int tly_process_stats(tly_process_stats_t *out) {
  unsigned long long utime, stime, start, vsize;
  long long rss;
  double ticks = (double)sysconf(_SC_CLK_TCK);
  long page = sysconf(_SC_PAGESIZE);
  memset(out, 0, sizeof(*out));
  struct rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0)
    out->max_fds =
        limit.rlim_cur == RLIM_INFINITY ? UINT64_MAX : (uint64_t)limit.rlim_cur;
  out->open_fds = count_fds();
  if (read_stat(&utime, &stime, &start, &vsize, &rss) || ticks <= 0 ||
      page <= 0)
    return -1;
  out->cpu_seconds = (double)(utime + stime) / ticks;
  out->virtual_bytes = vsize;
  out->resident_bytes = rss > 0 ? (uint64_t)rss * (uint64_t)page : 0;
  uint64_t btime = boot_time();
  if (btime)
    out->start_time_seconds = (double)btime + (double)start / ticks;
  return btime ? 0 : -1;
}
