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
 *
 * Saved filters. A filter the processor holds whole (no build pending,
 * never out of memory) is written to the store when its partition is
 * revoked, graceful stops included: [META_FILTER][p] -> [the stored next
 * offset BE8][tly_dedupe_filter_encode]. An assignment that finds it at
 * the partition's stored offset takes it and skips the build, so a
 * restart's new ids are answered by the filter from its first event, not
 * looked up in RocksDB until a scan of every spilled id ends. Exactness
 * rests on the filter holding every spilled id of the partition in this
 * store: ids only become spilled through spill_into (tly_dedupe_spill.c),
 * and every batch it writes to also deletes the saved filter, atomically;
 * the offset check refuses a filter saved before later commits, a restore
 * from the changelog never takes one, and ids the compaction filter
 * expires only leave the filter answering "look it up" for them. A crash
 * saves nothing, and the next assignment builds as before.
 */
#include "tly_processor_internal.h"

#include "tly_log.h"
#include "tly_thread.h"

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
  tly_thread_become_helper();        /* below the fold (tly_thread.h) */
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

static size_t filter_key(int32_t partition, char out[16]) {
  memcpy(out, META_FILTER, sizeof(META_FILTER) - 1);
  tly_put_be32((unsigned char *)out + sizeof(META_FILTER) - 1,
               (uint32_t)partition);
  return sizeof(META_FILTER) - 1 + 4;
}

void tly_proc_filter_forget(tly_store_batch_t *batch, int32_t partition) {
  char key[16];
  tly_store_batch_delete(batch, TLY_CF_META, key, filter_key(partition, key));
}

static int leaving(const rd_kafka_topic_partition_list_t *parts, int all,
                   int32_t partition) {
  if (all)
    return 1;
  for (int i = 0; i < parts->cnt; i++)
    if (parts->elems[i].partition == partition)
      return 1;
  return 0;
}

void tly_proc_filters_save(tly_processor_t *p,
                           const rd_kafka_topic_partition_list_t *parts,
                           int all) {
  char errstr[512] = "", key[16];
  int64_t began = tly_monotonic_ms();
  size_t saved = 0, failed = 0, bytes = 0;
  tly_store_batch_t *batch = NULL;
  for (int32_t i = 0; i < p->partition_cap; i++) {
    partition_state_t *part = &p->partitions[i];
    int64_t offset;
    unsigned char *value = NULL;
    size_t len = 0;
    if (!part->spilled || !part->filter || part->filter_build ||
        !leaving(parts, all, i) ||
        tly_store_get_offset(p->store, i, &offset, errstr, sizeof(errstr)) !=
            1 ||
        tly_dedupe_filter_encode(part->filter, 8, &value, &len))
      continue; /* nothing whole to save: the next owner here builds one */
    if (!batch)
      batch = tly_store_batch_new();
    /* One write per partition, not synced: what is held beside the filter
     * while it is written stays one partition's, and a filter lost with
     * the WAL's tail is only built again. */
    tly_put_be64(value, (uint64_t)offset);
    int written = 0;
    if (batch) {
      tly_store_batch_clear(batch);
      tly_store_batch_put(batch, TLY_CF_META, key, filter_key(i, key), value,
                          len);
      written = !tly_store_commit(p->store, batch, 0, errstr, sizeof(errstr));
    }
    saved += written;
    failed += !written;
    bytes += written ? len : 0;
    free(value);
  }
  if (failed)
    tly_log(TLY_LOG_WARN, "processor",
            "saving the spilled-id filters of %zu partitions failed: %s (their "
            "next assignment builds them)",
            failed, batch ? errstr : "out of memory");
  tly_store_batch_destroy(batch);
  if (saved)
    tly_log(TLY_LOG_INFO, "processor",
            "saved the spilled-id filters of %zu partitions (%zu bytes) in "
            "%lld ms",
            saved, bytes, (long long)(tly_monotonic_ms() - began));
}

tly_dedupe_filter_t *tly_proc_filter_load(tly_processor_t *p, int32_t partition,
                                          int64_t stored) {
  char errstr[512], key[16], *value = NULL;
  size_t len = 0;
  int found =
      tly_store_get(p->store, TLY_CF_META, key, filter_key(partition, key),
                    &value, &len, errstr, sizeof(errstr));
  tly_dedupe_filter_t *filter = NULL;
  if (found == 1 && len > 8 &&
      (int64_t)tly_get_be64((const unsigned char *)value) == stored)
    filter = tly_dedupe_filter_decode(value + 8, len - 8);
  else if (found < 0)
    tly_log(TLY_LOG_WARN, "processor",
            "partition %d: reading the saved spilled-id filter: %s (built "
            "again instead)",
            (int)partition, errstr);
  tly_store_free(value);
  if (filter)
    atomic_fetch_add(&p->filters_loaded, 1);
  return filter;
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
