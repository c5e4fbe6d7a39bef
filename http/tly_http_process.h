/*
 * tly_http_process.h - the standard Prometheus process collector's
 * figures for /metrics (process_cpu_seconds_total,
 * process_resident_memory_bytes, process_virtual_memory_bytes,
 * process_open_fds, process_max_fds, process_start_time_seconds), read
 * from /proc/self as the Prometheus client libraries read them.
 *
 * Reads /proc and resource limits only; never writes, never formats text.
 */
#ifndef TLY_HTTP_PROCESS_H
#define TLY_HTTP_PROCESS_H

#include <stdint.h>

typedef struct {
  double cpu_seconds;        /* user + system, all threads */
  uint64_t resident_bytes;   /* RSS */
  uint64_t virtual_bytes;    /* the address space */
  uint64_t open_fds;         /* entries of /proc/self/fd */
  uint64_t max_fds;          /* RLIMIT_NOFILE's soft limit */
  double start_time_seconds; /* since the Unix epoch */
} tly_process_stats_t;

/* 0, or -1 when /proc could not be read (fields left 0 are unknown). */
int tly_process_stats(tly_process_stats_t *out);

#endif
