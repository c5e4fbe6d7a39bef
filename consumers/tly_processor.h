/*
 * tly_processor.h - the processor loop: Kafka in, pure fold, RocksDB commit,
 * outbox out.
 *
 * Per batch (bounded by count and time): consume, decode, fold into an
 * in-memory overlay, then one synced RocksDB WriteBatch holds the dirty rows,
 * the outputs (dead letters) in the outbox and the next offset of every
 * partition in the batch. Offsets live only in RocksDB (no Kafka offset
 * commits, no auto-commit): on start and on every assignment the processor
 * resumes each partition from its stored offset, and refuses to run when the
 * log no longer holds what it needs.
 *
 * Several instances in one group (issue 6): a partition assigned behind
 * its log end is replaying until it reaches the log end seen at assignment
 * (tly_processor_partition_role); outputs of replayed records are checked
 * against the output topics by id and not sent twice. A partition this
 * instance has no (or older) state for is first restored from the state
 * changelog (tly_changelog.h), which each commit feeds through one outbox
 * entry, so only the input's tail is replayed. With Stripe usage
 * reporting the bundles carry the report marks too, and a partition whose
 * changelog another instance wrote since this one did is always restored
 * (its report cursors are the changelog's, not this store's).
 */
#ifndef TLY_PROCESSOR_H
#define TLY_PROCESSOR_H

#include "tly_config.h"
#include "tly_registry_client.h"
#include "tly_store.h"
#include "tly_topic_names.h"

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#define TLY_DEFAULT_GROUP_ID "tally"
#define TLY_DEFAULT_TICK_INTERVAL_MS 60000
#define TLY_DEFAULT_MEMORY_BUDGET (1LL << 30)
#define TLY_MEMORY_BUDGET_MIN (1LL << 20)
#define TLY_MEMORY_BUDGET_MAX (1LL << 40)

typedef struct {
  const char *brokers;      /* required */
  const char *group_id;     /* default TLY_DEFAULT_GROUP_ID */
  const char *usage_topic;  /* default TALLY_DEFAULT_USAGE_TOPIC */
  const char *dlq_topic;    /* default TLY_DEFAULT_DLQ_TOPIC */
  const char *alerts_topic; /* default TLY_DEFAULT_ALERTS_TOPIC */
  /* default TLY_DEFAULT_CHANGELOG_TOPIC (tly_topics.h); "" disables the
   * changelog. It is used only when the topic exists with at least as many
   * partitions as the input. */
  const char *changelog_topic;
  const tly_config_t *config; /* required; must outlive the processor */
  int64_t dedupe_window_ms;   /* 0: config events.dedupe_window_ms (35 days
                                 of event time by default) */
  /* What the processor keeps in memory (--memory-budget), in bytes;
   * default TLY_DEFAULT_MEMORY_BUDGET. Shared out by tly_memory_share():
   * the dedupe indexes past their share spill the oldest ids to RocksDB
   * (tly_dedupe.h). */
  int64_t memory_budget_bytes;
  int64_t tick_interval_ms; /* default 60 s; <0 writes no ticks */
  int batch_max_events;     /* default tly_memory_batch_events(budget) */
  int batch_max_ms;         /* default 100: an upper bound (group commit,
                               consumers/tly_group_commit.h). A batch goes
                               to the writer as soon as the previous one
                               is durable; it is held open past
                               batch_max_ms only while the writer is still
                               busy, or while the processor is catching
                               up (more records ready, the last older
                               than 20 x batch_max_ms, at least 2 s: it
                               grows up to batch_max_events). Idle, the
                               loop comes round at least this often (and
                               once per heartbeat) */
  /* Extra librdkafka properties "name=value", NULL-terminated; applied to
   * the consumer and the outbox producer after tally's defaults. */
  const char *const *kafka_properties;
  /* The schema registry (not owned; NULL: none). A record framed with a
   * schema id the codec does not know is decoded once the registry says
   * which writer schema the id names: a lookup that fails leaves its
   * partition paused at the record and is tried again (100 ms doubling
   * to 30 s); only the registry's own "not found" (404, 40403)
   * dead-letters it. Without a registry such a record is dead-lettered
   * ("unknown schema id N"). */
  tly_registry_t *registry;
  /* The ids tally frames with (a registry's): events (ticks; read
   * directly) and alerts. 0: TLY_CODEC_DEFAULT_SCHEMA_ID and
   * TLY_ALERT_SCHEMA_ID. */
  int32_t event_schema_id, alert_schema_id;
  /* Static group membership (KIP-345): group.instance.id, checked with
   * tly_group_instance_id_check; NULL: a dynamic member. Not used on the
   * embedded broker, which does not implement it (tly_group.h). */
  const char *group_instance_id;
  /* On the embedded broker: short group timeouts and, after a run that did
   * not leave the group, a join timed so that the dead member is gone
   * first (tly_group.h); `tally run` asks for it. */
  int fast_rejoin;
} tly_processor_conf_t;

typedef struct tly_processor tly_processor_t;

typedef struct {
  int32_t partition;
  int assigned;
  int64_t committed_offset; /* next offset to fold; -1 if none yet */
  int64_t high_watermark;   /* log end as last seen; -1 if unknown */
  int64_t replay_target;    /* log end when last assigned: the partition has
                               caught up with its replay once
                               committed_offset reaches it */
  int64_t watermark_ms;     /* largest event time folded (INT64_MIN: none);
                               history expiring before it is gone */
  uint64_t forwarded;       /* records that arrived here off their subject's
                               home partition and were forwarded there
                               (tly_reroute.h), since the process started */
} tly_partition_status_t;

/* Upper bounds (ms) of the commit latency histogram's buckets; the last
 * bucket (+Inf) is implied. */
#define TLY_COMMIT_BUCKETS 10
#define TLY_COMMIT_BUCKET_BOUNDS_MS                                            \
  { 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000 }

/* Upper bounds (ms) of the event-to-visible histogram: from a record's
 * Kafka timestamp (when it was produced) to the durable commit that makes
 * its effect readable over HTTP. Fine below 100 ms, where group commit
 * puts a processor that keeps up (its p99 goal is 100 ms). */
#define TLY_VISIBLE_BUCKETS 21
#define TLY_VISIBLE_BUCKET_BOUNDS_MS                                           \
  {                                                                            \
    1, 2, 5, 10, 15, 20, 30, 40, 50, 60, 75, 100, 150, 200, 300, 500, 750,     \
        1000, 2000, 5000, 10000                                                \
  }

/* The parts of the memory budget (--memory-budget), each with its share
 * (tly_memory_share, in fortieths of the budget; together at most the
 * budget):
 * - the dedupe indexes 6/40 (past it the oldest ids spill to RocksDB);
 * - the processor's subject records (the overlay: the open batch and the
 *   cache kept across batches) 5/40, and what the dedupe indexes leave
 *   unused of theirs (tly_memory_lent; past it the clock evicts);
 * - the outbox 2/40, at least 4 MiB (an entry leaves only once Kafka has
 *   it: past its bound records wait before the fold until it drains);
 * - the HTTP port's subject cache 4/40 (its entries are sized from it);
 * - RocksDB's block cache 3/40 (index and filter blocks charged to it) and
 *   its memtables 3/40 (all column families together; tly_store.h,
 *   tly_store_memory_t);
 * - librdkafka: each consumer's prefetch 2/40 (queued.max.messages.kbytes
 *   and fetch.max.bytes, half each) and the producers' queues 1/40
 *   (queue.buffering.max.kbytes: half for the processor's producer, half
 *   for the HTTP port's), unless -X sets them (tly_memory_kafka_properties);
 * - headroom 14/40, held by no structure: what the process holds beyond
 *   the parts it counts (malloc's free memory and holes, the batch
 *   buffers, librdkafka's fetch buffers, thread stacks, the binary), so
 *   that the resident set stays within the budget (README, "Headroom").
 * A part with a floor (tly_memory_bound: RocksDB's and librdkafka's
 * minimums, the consumer's prefetch the fold rate needs, and the outbox's
 * room for a small batch's outputs)
 * is held to the larger of its share and its floor: the bounds add up to
 * the budget from TLY_MEMORY_FLOORLESS_BUDGET up, to at most the budget +
 * TLY_MEMORY_FLOORS below it. */
typedef enum {
  TLY_MEMORY_DEDUPE = 0,
  TLY_MEMORY_OVERLAY,
  TLY_MEMORY_OUTBOX,
  TLY_MEMORY_SUBJECT_CACHE,
  TLY_MEMORY_ROCKSDB_BLOCK_CACHE,
  TLY_MEMORY_ROCKSDB_MEMTABLES,
  TLY_MEMORY_KAFKA_CONSUMER,
  TLY_MEMORY_KAFKA_PRODUCER,
  TLY_MEMORY_HEADROOM,
  TLY_MEMORY_PARTS
} tly_memory_part_t;
/* The part's share of budget bytes; its name as /metrics labels it. */
/* The processor's budget (--memory-budget, or the default). */
int64_t tly_processor_memory_budget(const tly_processor_t *p);
int64_t tly_memory_share(int64_t budget, tly_memory_part_t part);
const char *tly_memory_part_name(tly_memory_part_t part);
/* The least a part can be held to (0: none), and the bound it is held to:
 * the larger of its share and its floor. */
int64_t tly_memory_floor(tly_memory_part_t part);
int64_t tly_memory_bound(int64_t budget, tly_memory_part_t part);
/* RocksDB's block cache and memtables for a budget (0: the default), as
 * `tally run` opens its store (tly_store_open_sized). */
tly_store_memory_t tly_memory_store_sizes(int64_t budget);
/* What the dedupe part lends the overlay: the part of its share the dedupe
 * indexes do not hold (dedupe_held bytes; 0 once they hold it all). The
 * overlay is kept within its share plus this after every commit; the
 * indexes take it back as they grow (the overlay is evicted down at the
 * next commit), so the two together stay within their two shares. */
int64_t tly_memory_lent(int64_t budget, int64_t dedupe_held);
/* The sum of the floors, and the least budget at which no floor applies. */
#define TLY_MEMORY_FLOORS (41LL << 20)
#define TLY_MEMORY_FLOORLESS_BUDGET (640LL << 20)
/* The default --batch-events for a budget: a commit's WriteBatch lands in
 * RocksDB's memtables whole, so a batch's write should fit in 3/4 of the
 * memtables part (tly_store.h). A batch writes ~160 bytes an event
 * (measured: bench_fold's dedupe-scale run, 64 MB for a 400,000-event
 * commit). TLY_DEFAULT_BATCH_EVENTS (400,000) from a budget of ~1.06 GiB up
 * (377,487 at 1 GiB), TLY_MEMORY_BATCH_EVENTS_MIN (50,000) at least: smaller
 * batches made test_crash_matrix at a 1 MiB budget ~3x slower.
 * --batch-events wins. */
#define TLY_DEFAULT_BATCH_EVENTS 400000
#define TLY_MEMORY_BATCH_EVENTS_MIN 50000
#define TLY_MEMORY_COMMIT_BYTES_PER_EVENT 160
int tly_memory_batch_events(int64_t budget);
/* Whether tally_memory_bytes can show what the part holds: librdkafka does
 * not report its queues' bytes (only its bound is shown). The headroom
 * shows the resident set less what the measured parts hold
 * (tly_memory_headroom_bytes). */
int tly_memory_part_measured(tly_memory_part_t part);
/* The headroom's bytes: the process's resident set less the bytes of the
 * other measured parts (bytes[], indexed by part), 0 if they exceed it. */
uint64_t tly_memory_headroom_bytes(uint64_t resident,
                                   const uint64_t bytes[TLY_MEMORY_PARTS]);

/* The librdkafka properties that hold a client to its part of the budget,
 * "name=value" strings written into out[] (at most
 * TLY_MEMORY_KAFKA_PROPERTIES, each of TLY_MEMORY_KAFKA_PROPERTY_MAX
 * bytes), NULL-terminated in list[]; properties already in user (the
 * user's, "name=value", NULL-terminated; may be NULL) are left out, so a
 * -X setting wins. A consumer (consumer != 0): queued.max.messages.kbytes
 * and fetch.max.bytes half of the consumer part each (fetch.max.bytes at
 * least message.max.bytes, librdkafka's rule), max.partition.fetch.bytes
 * a 32nd; a producer: queue.buffering.max.kbytes half of the producer
 * part. */
#define TLY_MEMORY_KAFKA_PROPERTIES 4
#define TLY_MEMORY_KAFKA_PROPERTY_MAX 64
void tly_memory_kafka_properties(
    int64_t budget, int consumer, const char *const *user,
    char out[TLY_MEMORY_KAFKA_PROPERTIES][TLY_MEMORY_KAFKA_PROPERTY_MAX],
    const char *list[TLY_MEMORY_KAFKA_PROPERTIES + 1]);

typedef struct {
  uint64_t events_folded;
  uint64_t duplicates;
  uint64_t alerts;
  uint64_t dead_letters;
  uint64_t batches_committed;
  uint64_t outbox_pending;
  uint64_t rebalances; /* assignments and revocations handled */
  /* Rebalance callbacks (an assignment or a revocation each; under the
   * cooperative protocol only the partitions that move), the time spent
   * in them, and the partitions they assigned and revoked. */
  uint64_t rebalance_callbacks, rebalance_ms;
  uint64_t partitions_assigned, partitions_revoked;
  /* Records the consumer skipped past (librdkafka 2.0.2 under the
   * cooperative protocol), fetched again by seeking back. */
  uint64_t fetch_gaps;
  uint64_t replay_skipped; /* replayed outputs found in Kafka, not re-sent */
  uint64_t stalls;    /* fences: the loop was away past the session timeout */
  uint64_t abandoned; /* unsent outputs of revoked partitions, left to the
                         next owner */
  /* Outputs already handed to the Kafka client, not acknowledged, when
   * partitions were revoked as lost or after the drain's deadline: each
   * may still reach Kafka after the next owner looked for it, and then
   * appears twice (README, "Known gaps"). */
  uint64_t at_risk;
  uint64_t changelog_restores; /* partitions restored from the changelog */
  uint64_t changelog_restored_records; /* changelog records read by them */
  uint64_t changelog_restore_ms;       /* and the time they took */
  /* Schema registry lookups answered, failed (tried again), and the
   * partitions waiting on one now. */
  uint64_t schema_lookups, schema_lookup_failures;
  int32_t schema_waiting;
  /* The outbox's hold (past its bound of the memory budget): partitions
   * waiting for it to drain now, and the holds begun. */
  int32_t outbox_waiting;
  uint64_t outbox_holds;
  /* Synced RocksDB commits: cumulative counts per bucket (Prometheus
   * style: bucket i counts commits that took <= bound i), the +Inf count
   * and the total time. */
  uint64_t commit_buckets[TLY_COMMIT_BUCKETS];
  uint64_t commit_count;
  uint64_t commit_micros_total;
  /* Records from produced to visible (durably committed), same style. */
  uint64_t visible_buckets[TLY_VISIBLE_BUCKETS];
  uint64_t visible_count;
  uint64_t visible_ms_total;
  /* Memory: each part's bytes held and share of the budget (the subject
   * cache's bytes are the HTTP port's: 0 here), ids spilled to RocksDB
   * and id lookups that read it. */
  uint64_t memory_bytes[TLY_MEMORY_PARTS], memory_budget[TLY_MEMORY_PARTS];
  /* What the dedupe part lends the overlay (tly_memory_lent), as of the
   * last commit. */
  uint64_t memory_lent;
  uint64_t dedupe_ids_spilled, dedupe_store_reads;
  /* Misses of spilled partitions the filter answered without a read, the
   * ms spent building filters after assignments (tly_dedupe_filter.h,
   * tly_filter_build.c) and the partitions whose filter is being built
   * (their misses read RocksDB meanwhile). */
  uint64_t dedupe_filter_skips, dedupe_filter_build_ms;
  /* Partitions assigned with their saved filter (no build). */
  uint64_t dedupe_filters_loaded;
  uint64_t dedupe_filters_building;
  /* How long the last assignment's setup took (resume, restore, dedupe
   * load), in ms. */
  uint64_t last_assignment_ms;
} tly_processor_stats_t;

/* The store stays the caller's; it must outlive the processor. */
tly_processor_t *tly_processor_new(const tly_processor_conf_t *conf,
                                   tly_store_t *store, char *errstr,
                                   size_t errstr_size);

/*
 * Runs until *stop becomes non-zero (returns 0, after committing the batch
 * in progress) or a fatal error (returns -1 with errstr: the log lost data
 * the state needs, the store failed, ...). Call from one thread.
 */
int tly_processor_run(tly_processor_t *processor, volatile sig_atomic_t *stop,
                      char *errstr, size_t errstr_size);

void tly_processor_destroy(tly_processor_t *processor);

/* Number of partitions of the usage topic (for finding a subject's
 * partition); thread-safe. */
int32_t tly_processor_partition_count(tly_processor_t *processor);

/* 1 while partition is assigned to this instance; thread-safe. */
int tly_processor_assigned(tly_processor_t *processor, int32_t partition);

/* The partition's next offset to fold as durably committed here (-1:
 * none): every record below it is in the state RocksDB holds now (the
 * offset moves only after its commit is readable). Thread-safe. */
int64_t tly_processor_committed(tly_processor_t *processor, int32_t partition);

/*
 * The Stripe emitter's hold on a partition while it makes report intents
 * durable on the changelog (producers/tly_stripe_emitter.h): 1 when the
 * partition is assigned here, in assignment *generation (0: any; set to
 * the current one), and now held; 0 when not, or while the processor is
 * fenced (see tly_processor_rebalancing). A revocation waits until
 * every hold on the partition was released, so the partition's next owner
 * restores from a changelog that holds them. Release each hold promptly
 * (a rebalance waits on it). Thread-safe.
 */
int tly_processor_hold(tly_processor_t *processor, int32_t partition,
                       uint64_t *generation);
void tly_processor_release(tly_processor_t *processor, int32_t partition);

/* The changelog topic in use (NULL: none) and the writer id naming this
 * store's changelog records (tly_changelog.h); both live as long as the
 * processor. */
const char *tly_processor_changelog_topic(tly_processor_t *processor);
const char *tly_processor_changelog_writer(tly_processor_t *processor);

/* What this instance may answer for a partition's subjects. */
typedef enum {
  TLY_PARTITION_NOT_OWNED = 0, /* assigned to another instance (or none) */
  TLY_PARTITION_REPLAYING,     /* assigned here, but still rebuilding its
                                  state (or a rebalance is under way: any
                                  partition under the eager protocol, the
                                  moving ones under the cooperative one):
                                  the local state may be stale */
  TLY_PARTITION_SERVING        /* assigned here and caught up with the log
                                  end seen at assignment */
} tly_partition_role_t;

/* The partition's role on this instance; thread-safe. Reads of a subject
 * must be answered from local state only when its partition is SERVING
 * (the HTTP port answers 503, or forwards to the owner, otherwise). */
tly_partition_role_t tly_processor_partition_role(tly_processor_t *processor,
                                                  int32_t partition);

/*
 * How stale a copy of partition's state is that holds every record below
 * offset (a copy in this instance's store: what a subject read may be
 * answered from while the partition moves or replays): *lag_records, the
 * records of the log from offset to its end now, and *age_ms, how long ago
 * the first of them (the one at offset) was produced, by its Kafka
 * timestamp: the copy was exact until then (0 and 0 when the copy is at
 * the log end). Asks the broker for the log end (and, once per partition
 * and offset, reads that record): call it off the processor's thread. 0,
 * or -1 when the broker did not answer within about 3 s. Thread-safe.
 */
int tly_processor_copy_staleness(tly_processor_t *processor, int32_t partition,
                                 int64_t offset, int64_t *lag_records,
                                 int64_t *age_ms);

/* Moves by one when a restore from the changelog starts rewriting a
 * partition's state and again when it has stored the offset: odd while
 * one runs. A read of a copy that saw it odd, or moved, cannot trust what
 * it read (a restore is not one atomic write). Thread-safe. */
uint64_t tly_processor_restore_epoch(tly_processor_t *processor);

/* The partition being restored from the changelog (during a rebalance),
 * or -1; thread-safe. */
int32_t tly_processor_restoring(tly_processor_t *processor);

/* 1 while a rebalance is being handled (partitions are being set up), or
 * while the processor may have lost its partitions without knowing yet
 * (its loop stalled past the session timeout: fenced until the group
 * confirms or revokes the assignment), when no answer about readiness or
 * ownership can be trusted. */
int tly_processor_rebalancing(tly_processor_t *processor);

/*
 * Standby replicas (tly_standby.c, --standby-replicas N): a continuously
 * applied copy, from the state changelog, of the partitions the gate
 * chooses for this instance while the processor does not own them. The
 * gate (cli/ wires the membership's ranking in: consumers/ never decides
 * who holds what) answers whether this instance should hold partition's
 * copy with replicas copies per partition; it is called from the standby
 * thread about twice a second per partition.
 */
typedef struct {
  void *opaque;
  int (*chosen)(void *opaque, int32_t partition, size_t replicas);
} tly_standby_gate_t;
/* Starts the standby thread (nothing when replicas is 0 or there is no
 * changelog). Call after tly_processor_new; tly_processor_destroy stops it.
 * 0, or -1 with errstr. */
int tly_processor_standby_start(tly_processor_t *processor, size_t replicas,
                                const tly_standby_gate_t *gate, char *errstr,
                                size_t errstr_size);
void tly_processor_standby_stop(tly_processor_t *processor);
/* 1 when a standby copy of partition is applied here and caught up with
 * the changelog (announced in "standby"); thread-safe. */
int tly_processor_standby_applied(tly_processor_t *processor,
                                  int32_t partition);
typedef struct {
  int32_t partition;
  int64_t offset; /* input offset the copy holds every record below; -1 */
  int caught_up;  /* past its catch-up: applied commit by commit */
} tly_standby_status_t;
typedef struct {
  uint64_t markers;  /* owner commits (changelog markers) applied */
  uint64_t catchups; /* copies set up (caught up with the changelog) */
  uint64_t records;  /* changelog records read */
} tly_standby_totals_t;
/* The standby copies held now: up to max into out; returns how many. */
size_t tly_processor_standbys(tly_processor_t *processor,
                              tly_standby_status_t *out, size_t max,
                              tly_standby_totals_t *totals);

/* Thread-safe snapshots for HTTP and metrics. Fills up to max entries and
 * returns the number of partitions. */
size_t tly_processor_partitions(tly_processor_t *processor,
                                tly_partition_status_t *out, size_t max);
/* The same as a malloc'd array (free() it) of *count entries; NULL when
 * out of memory. */
tly_partition_status_t *
tly_processor_partitions_copy(tly_processor_t *processor, size_t *count);
/* Everything /metrics shows, RocksDB's memory included (a property read
 * per column family and the block cache's shards locked: tens of
 * microseconds). Not for a request's path: see tly_processor_epoch. */
void tly_processor_stats(tly_processor_t *processor,
                         tly_processor_stats_t *stats);
/* Moves with every commit and every rebalance (batches committed +
 * rebalances), so an answer cached under one epoch is current while the
 * epoch stays: two atomic loads, for every cached read. */
uint64_t tly_processor_epoch(tly_processor_t *processor);

#endif
