/*
 * tly_processor_internal.h - the processor's state, shared by the files
 * that make up the processor, one role each (its top comment says more):
 *   tly_processor.c       the loop: consume, fold each record (with its
 *                         dead letters, alerts and forwards); lifecycle
 *   tly_processor_query.c the thread-safe status queries (tly_processor.h's
 *                         read side: HTTP port, CLI)
 *   tly_processor_kafka.c the Kafka clients' configuration, readers by
 *                         assignment, topic metadata
 *   tly_fold_view.c       the tly_billing_view_t the fold works through
 *   tly_commit.c          the batch: one WriteBatch, the writer thread
 *                         (when a batch is closed: tly_group_commit.h,
 *                         a pure rule of its own)
 *   tly_outbox_publish.c  the outbox: publish, acknowledge, reconcile
 *   tly_restore.c         assigned partitions: resume, or restore from
 *                         the changelog
 *   tly_replay.c          the replay rule for outputs of replayed records
 *   tly_ticks.c           ticks: written per interval, folded to close
 *                         cycles
 *   tly_group.c           the consumer's group membership: static or
 *                         dynamic, timeouts, when it joins
 *   tly_rebalance.c       the rebalance callback: eager or cooperative
 *                         (only the partitions that move)
 *   tly_copy.c            how stale a copy of a partition's state is
 *   tly_standby.c         standby copies of partitions not owned here
 *
 * Owns the tly_processor_t definition, the per-partition and outbox state
 * and the prototypes by which those files call each other. Private to
 * consumers/: nothing else includes it (the rest of tally sees only
 * tly_processor.h). It holds no code but a few small inline helpers: the
 * array growth every file uses, and newest_used_hour, which both the
 * fold's view and the commit call for every subject they touch.
 */
#ifndef TLY_PROCESSOR_INTERNAL_H
#define TLY_PROCESSOR_INTERNAL_H

#include "tly_processor.h"

#include "tly_alert.h"
#include "tly_billing.h"
#include "tly_changelog_restore.h"
#include "tly_codec.h"
#include "tly_dedupe.h"
#include "tly_dedupe_filter.h"
#include "tly_group.h"
#include "tly_overlay.h"
#include "tly_reroute.h"
#include "tly_store.h"

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef enum {
  OUTBOX_PENDING,  /* committed, not yet handed to the producer */
  OUTBOX_INFLIGHT, /* produced, waiting for the delivery report */
  OUTBOX_ACKED,    /* acknowledged; delete on the next commit */
  OUTBOX_DELETING  /* delete is in the batch being committed */
} outbox_state_t;

typedef struct {
  uint64_t seq;
  char *record;
  size_t record_len;
  outbox_state_t state;
  /* A changelog bundle (tly_changelog.h) is many Kafka records: produced
   * from cursor on, acknowledged when none is pending. */
  int bundle;
  size_t cursor, parts_pending;
  /* Left by the previous run: held until the first assignment says which
   * partitions are this instance's (see tly_proc_resolve_inherited). */
  int inherited;
} outbox_item_t;

typedef struct {
  char *record;
  size_t record_len;
} pending_output_t;

/* Grows the array *array points at (any item type, item_size bytes each,
 * *cap items now) to hold at least count items, doubling. 0, or -1 when
 * out of memory (the array is left as it was). Every growing array of the
 * processor goes through here. */
static inline int array_room(void *array, size_t *cap, size_t count,
                             size_t item_size) {
  if (count <= *cap)
    return 0;
  size_t grown_cap = *cap ? *cap * 2 : 16;
  while (grown_cap < count)
    grown_cap *= 2;
  void *items;
  memcpy(&items, array, sizeof(items));
  void *grown = realloc(items, grown_cap * item_size);
  if (!grown)
    return -1;
  memcpy(array, &grown, sizeof(grown));
  *cap = grown_cap;
  return 0;
}

/* The newest hour with usage: the one the subject record holds (a bucket
 * touched only by a rejected event does not count). */
static inline int32_t newest_used_hour(const tly_overlay_entry_t *entry) {
  int32_t newest = INT32_MIN;
  for (size_t i = 0; i < entry->bucket_count; i++)
    if (entry->buckets[i]->bucket.totals.event_count &&
        entry->buckets[i]->bucket.hour > newest)
      newest = entry->buckets[i]->bucket.hour;
  return newest;
}

typedef struct {
  int assigned;
  int64_t committed;  /* next offset stored in RocksDB, -1 if none */
  int64_t batch_next; /* next offset folded into the open batch, -1 */
  int64_t position;   /* next offset to fold; -1: from the log's start */
  int64_t watermark;  /* largest occurred_at folded (event time) */
  int watermark_dirty;
  int64_t expiry_scan_ms; /* the next changelog_expire_history scan is due
                             once the watermark reaches this */
  /* The event ids folded within the window (NULL while unassigned) and the
   * key of the open batch's blob: its first offset here, -1 if none yet. */
  tly_dedupe_t *dedupe;
  int64_t dedupe_key;
  /* Bytes the open batch's changelog records of this partition hold at
   * most: its dedupe blob and its contributions (tly_proc_changelog_grows). */
  size_t changelog_bytes;
  /* The store may hold spilled ids of this partition (dedupe_ids): a miss
   * in memory is then looked up there, unless the filter of every spilled
   * id (NULL: none; tly_dedupe_filter.h) says it is surely new. */
  int spilled;
  tly_dedupe_filter_t *filter;
  /* Non-zero: the ticket of the filter being built off the fold thread
   * (tly_filter_build.c); until it is adopted, misses read the store. */
  uint64_t filter_build;
  /* The dedupe floor (tly_billing.h, dedupe_floor_ms; tly_dedupe_floor.c):
   * the oldest event time whose ids are all still known; INT64_MIN: none.
   * floor_dirty: the floor record is written with the next commit. */
  int64_t dedupe_floor;
  int floor_dirty;
  /* What the batch in the writer's hands stores: the next offset (-1:
   * none) and the dedupe horizon it moves to (INT64_MIN: unchanged). */
  int64_t inflight_next;
  int64_t inflight_horizon;
  int64_t inflight_watermark; /* INT64_MIN: unchanged */
  int64_t replay_target; /* log end when assigned: caught up at this offset */
  /* The Stripe emitter's holds on the partition (tly_processor_hold): a
   * revocation waits for them. generation counts the assignments. */
  int holds;
  uint64_t generation;
  /* Records that arrived here off their subject's home partition and were
   * forwarded there (tly_reroute.h); a metric, under lock. */
  uint64_t forwarded;
  /* During a replay: the forward ids this partition (as the destination)
   * holds were read into replay_ids. */
  int forward_ids_read;
  /* As a forward's destination not fetched here: its log end when last
   * asked (forward_floor_ms, monotonic; 0: never), see
   * tly_proc_forward_scan_from. */
  int64_t forward_floor, forward_floor_ms;
  /* Waiting at the record at wait_offset, paused, nothing of it folded
   * (tly_gate.c): for the schema registry (WAIT_SCHEMA: the record is
   * framed with schema_wait_id, which the registry could not be asked
   * about; the lookup is tried again at schema_retry_ms, monotonic, after
   * schema_attempts tries) or for the outbox to drain (WAIT_OUTBOX). Once
   * over, the partition is sought back to that record, and records that
   * arrive before it (fetched before the seek) are skipped while
   * resuming. */
  int wait, resuming, schema_attempts;
  int32_t schema_wait_id;
  int64_t wait_offset, schema_retry_ms;
  /* In the rebalance callback's list now (assigned or revoked): not
   * served until the callback returns. */
  int moving;
  /* The standby thread writes the partition's keys now (tly_standby.c):
   * the rebalance callback waits for it (tly_proc_standby_wait). */
  int standby_busy;
  /* Sought back to position after a fetch gap (fetch_gap in
   * tly_processor.c) in read round seek_round. */
  int seeking, seek_failures;
  uint64_t seek_round;
} partition_state_t;

/* The batch being written: what its commit releases. */
typedef struct {
  int busy;
  pending_output_t *outputs;
  size_t output_count, output_cap;
  uint64_t first_seq;
  size_t deletes; /* outbox entries it deletes (OUTBOX_DELETING) */
  size_t events;
  int64_t *produced_ms; /* the batch's records' Kafka timestamps */
  size_t produced_count, produced_cap;
} commit_inflight_t;

/* Contributions by key, in memory (tly_contributions.c): entries appended
 * to data ([key length, 2][value length, 1][key][value]); slots (a power
 * of two) hold the key's hash and the entry's offset + 1, 0 when empty. */
typedef struct {
  unsigned char *data;
  size_t len, cap;
  uint64_t *slots; /* [hash, 32 bits][offset + 1, 32 bits] */
  size_t slot_cap, count;
} tly_contrib_table_t;

/* A batch's contributions of the events it folded, in fold order
 * (tly_contributions.c): entries [previous entry of the same subject,
 * offset + 1, 4 bytes, 0: none][key length, 2][value length, 1][key]
 * [value], each subject's entries linked from its overlay entry. */
typedef struct {
  unsigned char *data;
  size_t len, cap;
} tly_contrib_log_t;

/* Where the output topics were last seen acknowledged: recovery reads them
 * from here to their end to find outbox entries Kafka already holds. */
typedef struct {
  char topic[128];
  int32_t partition;
  int64_t next_offset;
  int dirty;
} ack_mark_t;

#define TICK_OPAQUE ((void *)UINTPTR_MAX)

/* Partitions whose copy timestamps are kept (tly_copy.c); above it each
 * call reads the record again. */
#define TLY_COPY_CACHE 1024

struct tly_processor {
  tly_processor_conf_t conf;
  char *usage_topic, *dlq_topic, *alerts_topic;
  /* The producer's message.max.bytes: a dead letter is cut to fit it. */
  size_t message_max;
  tly_store_t *store;
  rd_kafka_t *consumer;
  rd_kafka_queue_t *queue; /* the consumer's queue, for batch reads */
  rd_kafka_t *producer;    /* idempotent; publishes the outbox */
  tly_codec_t *codec;
  tly_alert_codec_t *alert_codec;
  tly_billing_t billing;
  tly_billing_view_t view;
  int32_t view_partition; /* the partition the fold is working on */
  int64_t view_offset;    /* and the offset of the record it folds */
  tly_alert_list_t alerts;
  /* The open batch's dirty entries, in the order first touched; sorted by
   * key at submit (sort_keys holds what the sort compares). */
  tly_overlay_entry_t **dirty;
  size_t dirty_count, dirty_cap;
  struct sort_key *sort_keys;
  size_t sort_key_cap;
  unsigned char *record; /* a subject record (or history value) being
                            encoded */
  size_t record_cap;
  const tly_subject_bucket_t **bucket_ptrs; /* one hour's buckets, to encode */
  size_t bucket_ptr_cap;
  const tly_subject_row_t **row_ptrs; /* one cycle's rows, for archiving */
  size_t row_ptr_cap;
  uint64_t submits; /* batches handed to the writer so far */
  int reports;      /* usage is reported to Stripe: write report marks */

  ack_mark_t *acks;
  size_t ack_count, ack_cap;
  long kill_after_acks; /* fault injection: SIGKILL after the Nth ack */
  char *stop_file;      /* fault injection: SIGSTOP once this file exists */
  long acks_seen;
  int64_t last_tick_slot;

  /* Contributions (tly_contributions.c) the open batch and the batch in
   * the writer's hands wrote, found before RocksDB has them: the events'
   * own in logs ([batch number & 1]; the open batch is contrib_batch, the
   * one before it is in the writer's hands while contrib_inflight), the
   * corrections' replacements of earlier events' in the tables. */
  tly_contrib_log_t contrib_log[2];
  uint64_t contrib_batch;
  int contrib_inflight;
  tly_contrib_table_t contrib_open, contrib_inflight_table;
  const unsigned char **contrib_sorted; /* the open table's entries, sorted */
  size_t contrib_sorted_cap;
  /* For the changelog: the log entries written as chunks this submit */
  const unsigned char **contrib_kept;
  size_t contrib_kept_count, contrib_kept_cap;
  const unsigned char **contrib_merged; /* kept + table, by partition */
  size_t contrib_merged_cap;
  const unsigned char **contrib_group; /* one subject's entries */
  size_t contrib_group_cap;
  unsigned char *contrib_chunk; /* a chunk being encoded */
  size_t contrib_chunk_cap;
  /* The id of the event being folded (its own contribution goes to its
   * batch's log; any other is a correction's replacement). */
  const char *view_event_id;
  /* The open batch: accounts and rows (kept across batches as a cache);
   * the entries this batch changed are on the dirty list. */
  tly_overlay_t overlay;
  tly_overlay_entry_t *last_entry; /* the account the fold asked for last */
  tly_store_batch_t *batch;
  struct tly_release *release; /* consumed messages destroyed off the fold
                                  thread (tly_release.h) */
  pending_output_t *outputs;
  commit_inflight_t inflight;

  /* The writer thread and the batch it writes. */
  pthread_t writer;
  int writer_started;
  pthread_mutex_t writer_lock;
  pthread_cond_t writer_cond, writer_done;
  tly_store_batch_t *writer_batch;
  int writer_job, writer_quit;
  int writer_wakes_loop; /* yield the consumer's queue after each batch */
  char writer_error[600];

  /* tly_filter_build.c: spilled-id filters built off the fold thread. */
  pthread_t filter_thread;
  int filter_started;
  atomic_int filter_quit, filter_done_ready;
  atomic_uint_least64_t filters_building; /* tickets not yet adopted */
  pthread_mutex_t filter_lock;
  pthread_cond_t filter_cond;
  struct tly_filter_job *filter_queue, *filter_done;
  uint64_t filter_tickets;
  size_t output_count, output_cap;
  size_t batch_events;
  int64_t catchup_ms; /* records older than this: the batch keeps growing */
  size_t batch_messages;

  /* The outbox, in sequence order. */
  outbox_item_t *outbox;
  size_t outbox_count, outbox_cap;
  uint64_t next_seq;

  /* Partition table; guarded by lock for the HTTP threads' snapshots. */
  pthread_mutex_t lock;
  partition_state_t *partitions;
  int32_t partition_cap;
  _Atomic int32_t partition_count;
  _Atomic int rebalancing;     /* inside the rebalance callback: partitions are
                                 being resumed one by one, so not ready */
  _Atomic int rebalance_eager; /* that callback is the eager protocol's:
                                  no partition is served meanwhile */
  /* Rebalance callbacks handled and the time spent in them; partitions
   * they assigned and revoked. */
  atomic_uint_least64_t rebalance_callbacks, rebalance_ms;
  atomic_uint_least64_t partitions_assigned, partitions_revoked;
  atomic_uint_least64_t fetch_gaps; /* seeks back after a fetch gap */
  uint64_t read_round;              /* read_records calls so far */
  /* Zombie fencing (stall_check): a thread stalled past the group session
   * (SIGSTOP, a frozen VM) may have lost its partitions to another
   * instance without knowing yet. Outputs are then held, and nothing is
   * served as current, until the group confirms the assignment or takes
   * it (a revoke with the assignment lost). */
  atomic_int_least64_t alive_ms; /* the loop last came round (monotonic) */
  int64_t fence_until_ms;        /* holding outputs until then; 0: not fenced */
  int session_timeout_ms, heartbeat_ms;
  /* Group membership (tly_group.h): the cluster is the embedded broker,
   * the consumer is a static member, and the loop joins no earlier than
   * join_at_ms (monotonic; 0: at once). */
  int embedded, static_member;
  int64_t join_at_ms;
  _Atomic int fenced;
  atomic_uint_least64_t fences, abandoned;
  /* Outputs handed to the Kafka client and not acknowledged when their
   * partitions were revoked as lost or after the drain's deadline. */
  atomic_uint_least64_t at_risk;

  atomic_uint_least64_t events_folded, dead_letters, batches_committed;
  /* Dead letters logged in the current second, and those left out of the
   * log past DEAD_LETTER_LOG_PER_S (tly_processor.c): a flood of bad
   * records must not become a flood of log lines (each one a write to
   * stderr on the fold thread, which blocks when the reader is slow). */
  int64_t dead_log_second;
  unsigned dead_log_count;
  uint64_t dead_log_left_out;
  atomic_uint_least64_t duplicates, alerts_total;
  /* Dedupe memory (tly_dedupe_spill.c): the share of the budget the
   * indexes may hold, what they hold (all partitions, kept by the fold
   * thread for metrics), ids spilled to the store, and lookups of ids
   * that read the store. */
  size_t dedupe_share;
  /* Kept free of the share at the last submit for the open batch's ids
   * (tly_proc_dedupe_spill); not lent to the overlay. */
  size_t dedupe_headroom;
  size_t dedupe_sealed; /* what the last batch's blobs held when sealed */
  atomic_uint_least64_t dedupe_bytes, ids_spilled, id_reads;
  /* Lookups the spilled-id filter answered "surely new" (no read), and
   * the time spent building filters at assignment. */
  atomic_uint_least64_t filter_skips, filter_build_ms, filters_dropped;
  /* Assignments that took a saved filter (tly_proc_filter_load). */
  atomic_uint_least64_t filters_loaded;
  /* The budget (tly_memory.c) and the other parts' bytes as of the last
   * check (tly_proc_memory_check). */
  int64_t memory_budget;
  atomic_uint_least64_t overlay_bytes, overlay_lent, outbox_bytes;
  atomic_uint_least64_t assignment_ms; /* the last assignment's setup */
  atomic_uint_least64_t outbox_size;   /* mirror of outbox_count for metrics */
  atomic_uint_least64_t commit_buckets[TLY_COMMIT_BUCKETS];
  atomic_uint_least64_t commit_count, commit_micros;
  atomic_uint_least64_t visible_buckets[TLY_VISIBLE_BUCKETS];
  atomic_uint_least64_t visible_count, visible_ms;
  /* The open batch's records' Kafka timestamps, for that histogram. */
  int64_t *produced_ms;
  size_t produced_count, produced_cap;

  /* Output ids already in the output topics, read when partitions were
   * assigned that must replay what another instance may have folded (and
   * published) before: an output of such a replay goes out only when its
   * id is not here. NULL while no partition is replaying. */
  json_t *replay_ids;
  int64_t replay_from_ms; /* where the replay's output checks read from */
  tly_reroute_log_t reroute_log;
  atomic_uint_least64_t rebalances, replay_skipped;
  int inherited_held; /* outbox entries of the previous run wait */

  /* The state changelog: NULL when disabled or the topic is not there;
   * the open batch's records; scratch for expanding bundles. */
  char *changelog_topic;
  char writer_id[TLY_CHANGELOG_WRITER_SIZE]; /* names our records */
  pthread_cond_t hold_released;              /* with lock: a hold ended */
  tly_changelog_bundle_t bundle;
  unsigned char *changelog_scratch;
  size_t changelog_scratch_cap;
  atomic_uint_least64_t restores, restored_records, restore_ms;
  atomic_uint_least64_t restore_epoch; /* odd while a restore writes */
  _Atomic int32_t restoring;           /* the partition being restored, or -1 */
  /* Schema registry lookups (tly_gate.c): answered (found or not),
   * failed (to retry), partitions waiting on one now. */
  atomic_uint_least64_t schema_lookups, schema_lookup_failures;
  _Atomic int32_t schema_waiting;
  /* The outbox's hold (tly_gate.c): partitions waiting for it to drain
   * now, and the holds begun. The bytes it holds are counted as they
   * come and go: the outbox's records (outbox_record_bytes), the open
   * batch's outputs (output_bytes) and the batch being written's
   * (inflight_output_bytes). */
  _Atomic int32_t outbox_waiting;
  atomic_uint_least64_t outbox_holds;
  int outbox_hold_logged;
  size_t outbox_record_bytes, output_bytes, inflight_output_bytes;

  /* Copy staleness (tly_copy.c): a reader of record timestamps and, per
   * partition, the timestamp of the record a copy stops at. */
  pthread_mutex_t copy_lock;
  rd_kafka_t *copy_reader;
  struct {
    int64_t offset, timestamp_ms;
  } copy_cache[TLY_COPY_CACHE];

  struct tly_standby *standby; /* tly_standby.c; NULL: none */
  /* Held while standby is set, cleared or read by another thread
   * (membership's announcements, the HTTP port's status): stopping the
   * copies frees them while those threads may still ask. */
  pthread_mutex_t standby_lock;
  int fatal;
  char fatal_reason[1024];
  /* The largest partitions[i].changelog_bytes of the open batch. */
  size_t changelog_bytes_max;
  /* The open batch's changelog records as the fold makes them (its bundle
   * is built at the seal): every partition's changelog_bytes, its dedupe
   * blob and contributions. In the outbox's held bytes with the changelog
   * on, so that the hold (tly_gate.c) sees them before the seal adds them
   * at once. Its subject records are not (a guess per changed subject made
   * holds twice as frequent in bench_fold with the changelog: measured). */
  size_t changelog_open_bytes;
};

/* A commit's changelog records of a partition that grow with its events,
 * its dedupe blob ('D') and its contributions ('K', tly_changelog.h), are
 * one Kafka record each, and a record over the producer's
 * message.max.bytes (librdkafka's default 1,000,000; Kafka's topic default
 * max.message.bytes is 1,048,588) can never be sent: it would hold the
 * outbox, and every output after it, for good. With a changelog the open
 * batch closes before a partition's would pass TLY_CHANGELOG_BATCH_BYTES,
 * and a read takes no more records than the room left at
 * TLY_CHANGELOG_EVENT_BYTES_MAX an event (its id in the blob, 266 bytes at
 * most, and its contribution and a correction's replacement, 777 bytes
 * each at most: 256-byte ids, a 255-byte value). */
#define TLY_CHANGELOG_BATCH_BYTES 900000
#define TLY_CHANGELOG_EVENT_BYTES_MAX 2048
static inline void tly_proc_changelog_grows(tly_processor_t *p,
                                            int32_t partition, size_t bytes) {
  if (partition < 0 || partition >= p->partition_cap)
    return;
  partition_state_t *part = &p->partitions[partition];
  part->changelog_bytes += bytes;
  p->changelog_open_bytes += bytes;
  if (part->changelog_bytes > p->changelog_bytes_max)
    p->changelog_bytes_max = part->changelog_bytes;
}

static const char META_NEXT_SEQ[] = "outbox.next_seq";
static const char META_WATERMARK[] = "wm:";
static const char META_ACK[] = "ack:";
/* + partition (BE4): the partition's spilled-id filter saved at a revoke
 * (tly_filter_build.c, "Saved filters"). */
static const char META_FILTER[] = "df:";

/* What the processor's files call each other by; each function's comment
 * is at its definition. */

/* tly_processor.c: the loop and lifecycle. */
void tly_proc_set_fatal(tly_processor_t *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int tly_proc_ensure_partitions(tly_processor_t *p, int32_t count);

/* tly_processor_kafka.c: the Kafka clients and topic metadata. */
/* defaults, then the memory budget's bounds for a consumer (consumer != 0)
 * or a producer (tly_memory_kafka_properties), then the user's properties
 * (which win). */
rd_kafka_conf_t *tly_proc_kafka_conf(const tly_processor_conf_t *conf,
                                     int consumer, const char *const *defaults,
                                     char *errstr, size_t errstr_size);
/* A consumer built from tly_proc_kafka_conf for reading by assignment (no
 * group membership: restore, replay). NULL with the reason in errstr. */
rd_kafka_t *tly_proc_reader_new(const tly_processor_t *p,
                                const char *const *defaults, char *errstr,
                                size_t errstr_size);
int32_t tly_proc_topic_partitions_now(tly_processor_t *p, const char *topic);
int32_t tly_proc_topic_partition_count(tly_processor_t *p, char *errstr,
                                       size_t errstr_size);

/* tly_standby.c: waits until the standby thread writes none of parts'
 * partitions (their moving flag set: it starts no new write); and, for an
 * assigned partition, rebuilds the indexes a standby copy does not keep
 * (unless restored) and drops its mark. 0, or -1 fatal set. */
void tly_proc_standby_wait(tly_processor_t *p,
                           const rd_kafka_topic_partition_list_t *parts);
int tly_proc_standby_promoted(tly_processor_t *p, int32_t partition,
                              int restored);
/* tly_rebalance.c: the rebalance callback (eager or cooperative). */
void tly_proc_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                           rd_kafka_topic_partition_list_t *parts,
                           void *opaque);

/* tly_group.c: the consumer and its group membership (tly_group.h). */
rd_kafka_t *tly_proc_group_consumer_new(
    tly_processor_t *p,
    void (*rebalance_cb)(rd_kafka_t *, rd_kafka_resp_err_t,
                         rd_kafka_topic_partition_list_t *, void *),
    char *errstr, size_t errstr_size);
/* Before subscribing: marks the store "joined" (synced), waits for
 * join_at_ms (unless *stop), logs how it joins. 0 or -1 (errstr). */
int tly_proc_group_join(tly_processor_t *p, volatile sig_atomic_t *stop,
                        char *errstr, size_t errstr_size);
/* Closes the consumer (a dynamic member leaves the group) and, when it
 * left, marks the store "left". */
void tly_proc_group_leave(tly_processor_t *p);

/* tly_fold_view.c: the tly_billing_view_t the fold works through (its
 * callbacks, for tly_processor_new to install). */
tly_account_t *tly_proc_view_account(tly_billing_view_t *view,
                                     tly_subject_kind_t kind, const char *id);
tly_billing_row_t *tly_proc_view_row(tly_billing_view_t *view,
                                     tly_subject_kind_t kind, const char *id,
                                     int64_t cycle_start_ms,
                                     const char *feature);
tly_bucket_t *tly_proc_view_bucket(tly_billing_view_t *view,
                                   tly_subject_kind_t kind, const char *id,
                                   int32_t hour, const char *feature);
tly_bucket_t *tly_proc_view_group_bucket(tly_billing_view_t *view,
                                         tly_subject_kind_t kind,
                                         const char *id, int32_t hour,
                                         char *name, size_t prefix_len,
                                         long max);
int tly_proc_view_archive(tly_billing_view_t *view, tly_subject_kind_t kind,
                          const char *id, const tly_cycle_t *cycle);
int tly_proc_view_seen(tly_billing_view_t *view, const char *event_id,
                       int64_t occurred_at_ms, int record);
/* When the event event_id of the view's partition occurred, by its
 * dedupe record: in memory, else (the partition spilled, and the spilled-id
 * filter says "look it up") its key in RocksDB. 1 and *at_ms, 0 when no
 * record is found (never recorded, or forgotten), -1 fatal (set). Counts
 * filter skips and RocksDB reads. */
int tly_proc_dedupe_time(tly_processor_t *p, const char *event_id, size_t len,
                         int64_t *at_ms);
tly_distinct_sets_t *tly_proc_view_distinct(tly_billing_view_t *view,
                                            tly_subject_kind_t kind,
                                            const char *id);
tly_holds_t *tly_proc_view_holds(tly_billing_view_t *view,
                                 tly_subject_kind_t kind, const char *id);
tly_read_marks_t *tly_proc_view_read_marks(tly_billing_view_t *view,
                                           tly_subject_kind_t kind,
                                           const char *id);

/* tly_contributions.c: the view's contribution callback and its
 * read-your-writes tables (submitted: the open batch went to the writer;
 * durable: its write returned). */
int tly_proc_view_contribution(tly_billing_view_t *view,
                               tly_subject_kind_t kind, const char *id,
                               const char *event_id,
                               struct tly_contribution *contribution,
                               int write);
/* At submit, for each dirty subject in key order: its contributions of
 * the open batch as chunks into the batch. 0, or -1 (fatal). */
int tly_proc_contrib_put_subject(tly_processor_t *p,
                                 const tly_overlay_entry_t *entry);
/* A hint, a few subjects ahead of tly_proc_contrib_put_subject: fetches
 * the subject's entry depth links back from its newest of the open batch
 * (the ones before it fetched by earlier calls, one step each). */
void tly_proc_contrib_prefetch(const tly_processor_t *p,
                               const tly_overlay_entry_t *entry, int depth);
/* After the subjects: the corrections' replacements (the latest value of
 * each key) into the batch, in key order, and every contribution of the
 * batch into its changelog bundle. 0, or -1 (fatal). */
int tly_proc_contrib_flush(tly_processor_t *p);
void tly_proc_contrib_submitted(tly_processor_t *p);
void tly_proc_contrib_durable(tly_processor_t *p);
void tly_proc_contrib_free(tly_processor_t *p);

/* tly_commit.c: the batch and its writer thread. */
int tly_proc_batch_has_work(tly_processor_t *p);
void tly_proc_batch_discard_outputs(tly_processor_t *p);
unsigned char *tly_proc_record_room(tly_processor_t *p, size_t need);
size_t tly_proc_history_key(const tly_overlay_entry_t *entry, char tag,
                            const void *suffix, size_t suffix_len, char *out,
                            size_t out_size);
void tly_proc_put_history(tly_processor_t *p, const char *key, size_t key_len,
                          int64_t expires_at_ms, size_t len);
int tly_proc_batch_submit(tly_processor_t *p);
void *tly_proc_writer_main(void *arg);
int tly_proc_batch_wait(tly_processor_t *p);
int tly_proc_writer_busy(tly_processor_t *p);
void tly_proc_writer_wakes(tly_processor_t *p, int on);
int tly_proc_batch_commit(tly_processor_t *p);

/* tly_outbox_publish.c: the outbox, its acknowledgements and recovery. */
int tly_proc_outbox_append(tly_processor_t *p, uint64_t seq, char *record,
                           size_t record_len);
size_t tly_proc_ack_key(const char *topic, int32_t partition, char *out,
                        size_t size);
void tly_proc_outbox_delivery_report(rd_kafka_t *rk,
                                     const rd_kafka_message_t *msg,
                                     void *opaque);
int tly_proc_outbox_load_cb(void *opaque, const char *key, size_t key_len,
                            const char *value, size_t value_len);
void tly_proc_outbox_publish(tly_processor_t *p);
void tly_proc_outbox_compact(tly_processor_t *p);
void tly_proc_drain_outbox(tly_processor_t *p);
int tly_proc_resolve_inherited(tly_processor_t *p);
void tly_proc_abandon_revoked(tly_processor_t *p,
                              const rd_kafka_topic_partition_list_t *parts);
int tly_proc_collect_output_ids(tly_processor_t *p, const char *topic,
                                int64_t from_time_ms, const int64_t *floors,
                                int32_t floor_count, json_t *ids, char *errstr,
                                size_t errstr_size);
int64_t tly_proc_forward_scan_from(tly_processor_t *p, int32_t partition);

/* tly_restore.c: a partition's state when it is assigned here. */
int tly_proc_resume_offsets(tly_processor_t *p,
                            rd_kafka_topic_partition_list_t *parts);

/* tly_replay.c: the replay rule for the outputs of replayed records. */
int tly_proc_replay_already_sent(tly_processor_t *p, int32_t partition,
                                 int64_t offset, const char *id);
int tly_proc_forward_already_sent(tly_processor_t *p,
                                  const rd_kafka_message_t *msg, int32_t home,
                                  const char *id);
int tly_proc_prepare_replay(tly_processor_t *p);
void tly_proc_end_replay(tly_processor_t *p);

/* tly_gate.c: records that wait before the fold, their partition paused:
 * framed with a schema id the codec does not know yet, or arriving while
 * the outbox is over its bound. tly_proc_gate_skips, before anything else
 * looks at a record above the position: 1 when msg is skipped, its
 * partition waiting or sought back to the record it waited at.
 * tly_proc_gate: 1 when msg waits. tly_proc_gate_retry, once a round:
 * lookups tried again, the outbox's waits ended once it drained.
 * tly_proc_gate_reset: a rebalance ends the waits of parts. */
int tly_proc_gate_skips(partition_state_t *part, const rd_kafka_message_t *msg);
int tly_proc_gate(tly_processor_t *p, const rd_kafka_message_t *msg);
void tly_proc_gate_retry(tly_processor_t *p);
void tly_proc_gate_reset(tly_processor_t *p, rd_kafka_t *rk,
                         const rd_kafka_topic_partition_list_t *parts,
                         int incremental);
/* What the outbox holds: its records, the open batch's outputs and the
 * batch being written's, and its array (tly_outbox_publish.c). */
size_t tly_proc_outbox_held_bytes(const tly_processor_t *p);

/* tly_copy.c: copy staleness; its reader goes with the processor. */
void tly_proc_copy_destroy(tly_processor_t *p);

/* tly_dedupe_floor.c: the dedupe floor record of a partition. */
#define TLY_DEDUPE_FLOOR_KEY                                                   \
  INT64_MAX /* its blob key: no offset reaches it                              \
             */
#define TLY_DEDUPE_FLOOR_LEN 24
int tly_proc_dedupe_floor_parse(const char *value, size_t len,
                                int64_t *floor_ms, int64_t *window_ms);
int64_t tly_proc_dedupe_floor_at_assignment(const tly_processor_t *p, int found,
                                            int64_t floor_ms, int64_t window_ms,
                                            int64_t watermark, int *dirty);
void tly_proc_dedupe_floor_put(tly_processor_t *p, int32_t partition);

/* tly_dedupe_spill.c: dedupe memory within its share. At a submit,
 * sealed: what the blobs the batch just sealed hold (their ids, as
 * tly_proc_dedupe_blob_weight estimates), taken as the room the next batch
 * needs. */
size_t tly_proc_dedupe_blob_weight(const void *blob, size_t len);
int tly_proc_dedupe_spill(tly_processor_t *p, size_t sealed);
void tly_proc_dedupe_release(tly_processor_t *p);
int tly_proc_dedupe_fit(tly_processor_t *p, int32_t partition,
                        tly_dedupe_t *dedupe, size_t limit,
                        tly_dedupe_filter_t *filter);

/* tly_filter_build.c: spilled-id filters built off the fold thread. */
/* Whether the store holds spilled ids of the partition: 1, 0, -1 fatal. */
int tly_proc_dedupe_any_spilled(tly_processor_t *p, int32_t partition);
/* Queues the build of the partition's filter under ticket (its
 * filter_build). 0, or -1 fatal (set). */
int tly_proc_filter_queue(tly_processor_t *p, int32_t partition,
                          uint64_t ticket);
/* The fold thread takes the filters built (at a round's start). */
void tly_proc_filters_adopt(tly_processor_t *p);
/* Stops the thread and frees what it holds (tly_processor_destroy). */
void tly_proc_filters_stop(tly_processor_t *p);
/* Saved filters: at a revoke, the complete filters of the partitions
 * leaving (all with all set) are written beside the stored offset they
 * cover; an assignment that finds its partition's filter saved at its
 * stored offset takes it instead of building one (NULL: build). Every
 * batch that spills ids of a partition deletes its saved filter
 * (tly_proc_filter_forget). */
void tly_proc_filters_save(tly_processor_t *p,
                           const rd_kafka_topic_partition_list_t *parts,
                           int all);
tly_dedupe_filter_t *tly_proc_filter_load(tly_processor_t *p, int32_t partition,
                                          int64_t stored);
void tly_proc_filter_forget(tly_store_batch_t *batch, int32_t partition);
size_t tly_proc_dedupe_part_bytes(const partition_state_t *part);
void tly_proc_dedupe_count(tly_processor_t *p);

/* tly_memory.c: the other parts of the budget, after each commit. */
void tly_proc_memory_check(tly_processor_t *p);

/* tly_ticks.c: time-driven work. */
void tly_proc_fold_tick(tly_processor_t *p, int32_t partition, int64_t tick_ms);
void tly_proc_write_ticks(tly_processor_t *p);

#endif
