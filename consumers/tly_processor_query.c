/*
 * tly_processor_query.c - the processor's thread-safe read-side API
 * (tly_processor.h): restoring and rebalancing state, each partition's
 * role, assignment and committed offset, holds on a partition (which a
 * revoke waits out), the changelog's topic and writer id, the per-partition
 * status and the counters. The HTTP port and the CLI call these from their
 * own threads while the loop runs.
 *
 * Never folds, never writes the store or Kafka, never changes a partition's
 * state but its hold count: it reads under p->lock or from atomics.
 */
#include "tly_processor_internal.h"

#include "tly_log.h"

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

int32_t tly_processor_restoring(tly_processor_t *p) {
  return atomic_load(&p->restoring);
}

/* The loop has not come round for longer than the session timeout: it
 * may be stalled (or just woken, before stall_check ran), and the group
 * may have moved its partitions. Other threads treat that as fenced. */
static int loop_stale(tly_processor_t *p) {
  int64_t alive = atomic_load(&p->alive_ms);
  return alive && tly_monotonic_ms() - alive > p->session_timeout_ms;
}

int tly_processor_rebalancing(tly_processor_t *p) {
  return atomic_load(&p->rebalancing) || atomic_load(&p->fenced) ||
         loop_stale(p);
}

tly_partition_role_t tly_processor_partition_role(tly_processor_t *p,
                                                  int32_t partition) {
  tly_partition_role_t role = TLY_PARTITION_NOT_OWNED;
  /* A fenced or stalled loop may have lost every partition; an eager
   * rebalance moves them all; a cooperative one only those in its list. */
  int untrusted =
      atomic_load(&p->fenced) || loop_stale(p) ||
      (atomic_load(&p->rebalancing) && atomic_load(&p->rebalance_eager));
  pthread_mutex_lock(&p->lock);
  if (partition >= 0 && partition < p->partition_cap &&
      p->partitions[partition].assigned) {
    const partition_state_t *part = &p->partitions[partition];
    int64_t committed = part->committed < 0 ? 0 : part->committed;
    role = committed < part->replay_target || part->moving
               ? TLY_PARTITION_REPLAYING
               : TLY_PARTITION_SERVING;
  }
  pthread_mutex_unlock(&p->lock);
  if (role == TLY_PARTITION_SERVING &&
      (untrusted || atomic_load(&p->fenced) || loop_stale(p) ||
       (atomic_load(&p->rebalancing) && atomic_load(&p->rebalance_eager))))
    role = TLY_PARTITION_REPLAYING; /* being set up: not yet trusted (asked
                                       again: a rebalance may have started
                                       while the lock was taken) */
  return role;
}

int tly_processor_assigned(tly_processor_t *p, int32_t partition) {
  pthread_mutex_lock(&p->lock);
  int assigned = partition >= 0 && partition < p->partition_cap &&
                 p->partitions[partition].assigned;
  pthread_mutex_unlock(&p->lock);
  return assigned;
}

int64_t tly_processor_committed(tly_processor_t *p, int32_t partition) {
  pthread_mutex_lock(&p->lock);
  int64_t committed = partition >= 0 && partition < p->partition_cap
                          ? p->partitions[partition].committed
                          : -1;
  pthread_mutex_unlock(&p->lock);
  return committed;
}

int tly_processor_hold(tly_processor_t *p, int32_t partition,
                       uint64_t *generation) {
  pthread_mutex_lock(&p->lock);
  const partition_state_t *part = partition >= 0 && partition < p->partition_cap
                                      ? &p->partitions[partition]
                                      : NULL;
  /* Not while fenced: a stalled loop may have lost the partition. */
  int held = part && part->assigned &&
             (!*generation || *generation == part->generation) &&
             !atomic_load(&p->fenced) && !loop_stale(p);
  if (held) {
    p->partitions[partition].holds++;
    *generation = part->generation;
  }
  pthread_mutex_unlock(&p->lock);
  return held;
}

void tly_processor_release(tly_processor_t *p, int32_t partition) {
  pthread_mutex_lock(&p->lock);
  if (partition >= 0 && partition < p->partition_cap &&
      p->partitions[partition].holds > 0)
    p->partitions[partition].holds--;
  pthread_cond_broadcast(&p->hold_released);
  pthread_mutex_unlock(&p->lock);
}

const char *tly_processor_changelog_topic(tly_processor_t *p) {
  return p->changelog_topic;
}

const char *tly_processor_changelog_writer(tly_processor_t *p) {
  return p->writer_id;
}

int32_t tly_processor_partition_count(tly_processor_t *p) {
  return atomic_load(&p->partition_count);
}

size_t tly_processor_partitions(tly_processor_t *p, tly_partition_status_t *out,
                                size_t max) {
  size_t count;
  pthread_mutex_lock(&p->lock);
  count = (size_t)p->partition_cap;
  for (size_t i = 0; i < count && i < max; i++) {
    int64_t low = -1, high = -1;
    out[i].partition = (int32_t)i;
    out[i].assigned = p->partitions[i].assigned;
    out[i].committed_offset = p->partitions[i].committed;
    out[i].high_watermark = -1;
    out[i].replay_target = p->partitions[i].replay_target;
    out[i].watermark_ms = p->partitions[i].watermark;
    out[i].forwarded = p->partitions[i].forwarded;
    if (out[i].assigned &&
        rd_kafka_get_watermark_offsets(p->consumer, p->usage_topic, (int32_t)i,
                                       &low, &high) == 0)
      out[i].high_watermark = high;
  }
  pthread_mutex_unlock(&p->lock);
  return count;
}

tly_partition_status_t *tly_processor_partitions_copy(tly_processor_t *p,
                                                      size_t *count) {
  size_t cap = 64;
  for (;;) { /* partitions may be added between the two calls: retry */
    tly_partition_status_t *status = calloc(cap, sizeof(*status));
    if (!status)
      return NULL;
    size_t total = tly_processor_partitions(p, status, cap);
    if (total <= cap) {
      *count = total;
      return status;
    }
    free(status);
    cap = total;
  }
}

uint64_t tly_processor_epoch(tly_processor_t *p) {
  return atomic_load(&p->batches_committed) + atomic_load(&p->rebalances);
}

void tly_processor_stats(tly_processor_t *p, tly_processor_stats_t *stats) {
  stats->events_folded = atomic_load(&p->events_folded);
  stats->dead_letters = atomic_load(&p->dead_letters);
  stats->duplicates = atomic_load(&p->duplicates);
  stats->alerts = atomic_load(&p->alerts_total);
  stats->batches_committed = atomic_load(&p->batches_committed);
  stats->outbox_pending = atomic_load(&p->outbox_size);
  stats->rebalances = atomic_load(&p->rebalances);
  stats->rebalance_callbacks = atomic_load(&p->rebalance_callbacks);
  stats->rebalance_ms = atomic_load(&p->rebalance_ms);
  stats->partitions_assigned = atomic_load(&p->partitions_assigned);
  stats->partitions_revoked = atomic_load(&p->partitions_revoked);
  stats->fetch_gaps = atomic_load(&p->fetch_gaps);
  stats->replay_skipped = atomic_load(&p->replay_skipped);
  stats->stalls = atomic_load(&p->fences);
  stats->abandoned = atomic_load(&p->abandoned);
  stats->at_risk = atomic_load(&p->at_risk);
  stats->changelog_restores = atomic_load(&p->restores);
  stats->changelog_restored_records = atomic_load(&p->restored_records);
  stats->changelog_restore_ms = atomic_load(&p->restore_ms);
  stats->schema_lookups = atomic_load(&p->schema_lookups);
  stats->schema_lookup_failures = atomic_load(&p->schema_lookup_failures);
  stats->schema_waiting = atomic_load(&p->schema_waiting);
  stats->outbox_waiting = atomic_load(&p->outbox_waiting);
  stats->outbox_holds = atomic_load(&p->outbox_holds);
  for (int i = 0; i < TLY_COMMIT_BUCKETS; i++)
    stats->commit_buckets[i] = atomic_load(&p->commit_buckets[i]);
  stats->commit_count = atomic_load(&p->commit_count);
  stats->commit_micros_total = atomic_load(&p->commit_micros);
  for (int i = 0; i < TLY_VISIBLE_BUCKETS; i++)
    stats->visible_buckets[i] = atomic_load(&p->visible_buckets[i]);
  stats->visible_count = atomic_load(&p->visible_count);
  stats->visible_ms_total = atomic_load(&p->visible_ms);
  for (int i = 0; i < TLY_MEMORY_PARTS; i++)
    stats->memory_budget[i] =
        (uint64_t)tly_memory_bound(p->memory_budget, (tly_memory_part_t)i);
  stats->memory_bytes[TLY_MEMORY_DEDUPE] = atomic_load(&p->dedupe_bytes);
  stats->memory_bytes[TLY_MEMORY_OVERLAY] = atomic_load(&p->overlay_bytes);
  stats->memory_lent = atomic_load(&p->overlay_lent);
  stats->memory_bytes[TLY_MEMORY_OUTBOX] = atomic_load(&p->outbox_bytes);
  stats->memory_bytes[TLY_MEMORY_SUBJECT_CACHE] = 0;
  tly_store_memory_usage_t rocksdb;
  tly_store_memory_usage(p->store, &rocksdb);
  stats->memory_bytes[TLY_MEMORY_ROCKSDB_BLOCK_CACHE] =
      rocksdb.block_cache_bytes;
  stats->memory_bytes[TLY_MEMORY_ROCKSDB_MEMTABLES] = rocksdb.memtables_bytes;
  stats->dedupe_ids_spilled = atomic_load(&p->ids_spilled);
  stats->dedupe_store_reads = atomic_load(&p->id_reads);
  stats->dedupe_filter_skips = atomic_load(&p->filter_skips);
  stats->dedupe_filters_building = atomic_load(&p->filters_building);
  stats->dedupe_filter_build_ms = atomic_load(&p->filter_build_ms);
  stats->dedupe_filters_loaded = atomic_load(&p->filters_loaded);
  stats->last_assignment_ms = atomic_load(&p->assignment_ms);
}
