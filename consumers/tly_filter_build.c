/*
 * tly_filter_build.c - a partition's spilled-id filter (tly_dedupe_filter.h)
 * built off the fold thread, so that an assignment does not wait for a
 * scan of every spilled id (20 M ids: ~2.7 s of a 6.8 s assignment).
 *
 * At assignment (tly_restore.c) a partition with spilled ids gets an empty
 * filter and a ticket (partition_state_t.filter_build): while the ticket is
 * set, a miss in memory reads the store whatever the filter says
 * (tly_fold_view.c), so the answer is exact at every moment, only slower.
 * The ids the fold spills meanwhile go into that filter as before. One
 * thread ("tly-filters") scans the store for each queued partition into a
 * filter of its own; the fold thread adopts it at the start of a round
 * (tly_proc_filters_adopt): the two filters are merged (every id spilled
 * before the assignment is in the store the scan reads, since the
 * assignment's own spill is committed before the job is queued; every id
 * spilled after it is in the fold's filter), and the ticket cleared.
 *
 * A build whose partition moved away, was assigned again, or lost its
 * filter to the budget (fit_filters) meanwhile is thrown away: the ticket
 * no longer matches or the filter is gone, and misses keep reading the
 * store. The thread only reads the store and touches no partition state;
 * the fold thread alone changes a partition's filter.
 */
#include "tly_processor_internal.h"

#include "tly_log.h"

#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

struct tly_filter_job {
  int32_t partition;
  uint64_t ticket;
  tly_dedupe_filter_t *filter; /* built; NULL: the scan failed */
  int64_t build_ms;
  struct tly_filter_job *next;
};

typedef struct {
  tly_processor_t *p;
  tly_dedupe_filter_t *filter;
  size_t found;
} scan_t;

static int add_spilled(void *opaque, const char *key, size_t key_len,
                       const char *value, size_t value_len) {
  scan_t *scan = opaque;
  if ((++scan->found & 4095) == 0 && atomic_load(&scan->p->filter_quit))
    return 1; /* the processor is going away */
  if (scan->filter && key_len >= 4)
    tly_dedupe_filter_add(
        scan->filter, key + 4, key_len - 4,
        value_len >= 8 ? (int64_t)tly_get_be64((const unsigned char *)value)
                       : INT64_MAX);
  return 0;
}

static int stop_at_first(void *opaque, const char *key, size_t key_len,
                         const char *value, size_t value_len) {
  (void)key, (void)key_len, (void)value, (void)value_len;
  *(int *)opaque = 1;
  return 1;
}

int tly_proc_dedupe_any_spilled(tly_processor_t *p, int32_t partition) {
  char errstr[512];
  unsigned char prefix[4];
  int any = 0;
  tly_put_be32(prefix, (uint32_t)partition);
  if (tly_store_scan_prefix(p->store, TLY_CF_DEDUPE_IDS, prefix, 4,
                            stop_at_first, &any, errstr, sizeof(errstr))) {
    tly_proc_set_fatal(p, "partition %d: reading spilled event ids: %s",
                       (int)partition, errstr);
    return -1;
  }
  return any;
}

/* Fault injection for tests (announced on stderr): while the file named by
 * TALLY_FAULT_FILTER_HOLD_FILE exists, no build starts, so a test can fold
 * with every filter of a restart still pending (test_dedupe_spill). */
static void hold_while_file(tly_processor_t *p, const char *path) {
  struct timespec pause = {0, 20 * 1000000L};
  while (path && access(path, F_OK) == 0 && !atomic_load(&p->filter_quit))
    nanosleep(&pause, NULL);
}

static void *filter_main(void *arg) {
  tly_processor_t *p = arg;
  prctl(PR_SET_NAME, "tly-filters"); /* for top -H and perf */
  const char *hold = getenv("TALLY_FAULT_FILTER_HOLD_FILE");
  if (hold && !*hold)
    hold = NULL;
  if (hold)
    tly_log(TLY_LOG_WARN, "processor",
            "fault injection: spilled-id filters wait while %s exists", hold);
  pthread_mutex_lock(&p->filter_lock);
  for (;;) {
    while (!p->filter_queue && !atomic_load(&p->filter_quit))
      pthread_cond_wait(&p->filter_cond, &p->filter_lock);
    if (atomic_load(&p->filter_quit))
      break;
    struct tly_filter_job *job = p->filter_queue;
    p->filter_queue = job->next;
    pthread_mutex_unlock(&p->filter_lock);
    hold_while_file(p, hold);

    int64_t began = tly_monotonic_ms();
    char errstr[512];
    unsigned char prefix[4];
    scan_t scan = {p, tly_dedupe_filter_new(), 0};
    tly_put_be32(prefix, (uint32_t)job->partition);
    if (tly_store_scan_prefix(p->store, TLY_CF_DEDUPE_IDS, prefix, 4,
                              add_spilled, &scan, errstr, sizeof(errstr))) {
      tly_log(TLY_LOG_WARN, "processor",
              "partition %d: building the spilled-id filter: %s (its new "
              "ids keep being looked up in RocksDB)",
              (int)job->partition, errstr);
      tly_dedupe_filter_free(scan.filter);
      scan.filter = NULL;
    }
    job->filter = scan.filter;
    job->build_ms = tly_monotonic_ms() - began;

    pthread_mutex_lock(&p->filter_lock);
    job->next = p->filter_done;
    p->filter_done = job;
    atomic_store(&p->filter_done_ready, 1);
  }
  pthread_mutex_unlock(&p->filter_lock);
  return NULL;
}

int tly_proc_filter_queue(tly_processor_t *p, int32_t partition,
                          uint64_t ticket) {
  struct tly_filter_job *job = calloc(1, sizeof(*job));
  if (!job) {
    tly_proc_set_fatal(p, "out of memory queueing a spilled-id filter");
    return -1;
  }
  job->partition = partition;
  job->ticket = ticket;
  pthread_mutex_lock(&p->filter_lock);
  if (!p->filter_started) {
    if (pthread_create(&p->filter_thread, NULL, filter_main, p)) {
      pthread_mutex_unlock(&p->filter_lock);
      free(job);
      tly_proc_set_fatal(p, "cannot start the spilled-id filter thread");
      return -1;
    }
    p->filter_started = 1;
  }
  struct tly_filter_job **last = &p->filter_queue; /* in order */
  while (*last)
    last = &(*last)->next;
  *last = job;
  atomic_fetch_add(&p->filters_building, 1);
  pthread_cond_signal(&p->filter_cond);
  pthread_mutex_unlock(&p->filter_lock);
  return 0;
}

void tly_proc_filters_adopt(tly_processor_t *p) {
  if (!atomic_load(&p->filter_done_ready))
    return;
  pthread_mutex_lock(&p->filter_lock);
  struct tly_filter_job *done = p->filter_done;
  p->filter_done = NULL;
  atomic_store(&p->filter_done_ready, 0);
  pthread_mutex_unlock(&p->filter_lock);
  while (done) {
    struct tly_filter_job *job = done;
    done = job->next;
    atomic_fetch_sub(&p->filters_building, 1);
    partition_state_t *part = job->partition < p->partition_cap
                                  ? &p->partitions[job->partition]
                                  : NULL;
    if (part && part->filter_build == job->ticket) {
      part->filter_build = 0;
      if (job->filter && part->filter) {
        /* The fold's spills since the assignment join the store's. */
        tly_dedupe_filter_merge(job->filter, part->filter);
        part->filter = job->filter;
        job->filter = NULL;
      } else { /* the scan failed or the budget dropped the filter */
        tly_dedupe_filter_free(part->filter);
        part->filter = NULL; /* every miss reads the store: exact */
      }
      atomic_fetch_add(&p->filter_build_ms, (uint64_t)job->build_ms);
    }
    tly_dedupe_filter_free(job->filter);
    free(job);
  }
  tly_proc_dedupe_count(p);
}

static void free_jobs(struct tly_filter_job *job) {
  while (job) {
    struct tly_filter_job *next = job->next;
    tly_dedupe_filter_free(job->filter);
    free(job);
    job = next;
  }
}

void tly_proc_filters_stop(tly_processor_t *p) {
  pthread_mutex_lock(&p->filter_lock);
  atomic_store(&p->filter_quit, 1);
  pthread_cond_signal(&p->filter_cond);
  int started = p->filter_started;
  pthread_mutex_unlock(&p->filter_lock);
  if (started)
    pthread_join(p->filter_thread, NULL);
  free_jobs(p->filter_queue);
  free_jobs(p->filter_done);
  p->filter_queue = p->filter_done = NULL;
}
