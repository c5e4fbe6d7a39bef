/*
 * tly_changelog_restore.h - restoring a partition's state from the state
 * changelog (its format and rules: store/tly_changelog.h): reading the
 * compacted topic with a Kafka consumer the caller owns and writing what
 * passes the rules to RocksDB, and the writer ids that tell an instance
 * whether its local copy is current. Owns the Kafka side of the
 * changelog's read path; never decides when a partition is restored (the
 * processor does) and never publishes (the outbox does).
 */
#ifndef TLY_CHANGELOG_RESTORE_H
#define TLY_CHANGELOG_RESTORE_H

#include "tly_changelog.h"
#include "tly_store.h"

#include <stddef.h>
#include <stdint.h>

typedef struct {
  int64_t next_offset;  /* input offset the restored state reflects */
  int64_t watermark_ms; /* event-time watermark as of it (INT64_MIN: none) */
  uint64_t records;     /* changelog records read */
  uint64_t applied;     /* state records written to RocksDB */
  uint64_t accounts;    /* subject records restored */
  int64_t elapsed_ms;
} tly_changelog_restore_t;

/*
 * Restores partition of the store from the changelog: wipes what the store
 * holds of the partition (state, cycle-end index, stored offset), reads
 * changelog partition `partition` of topic from low to high through reader
 * (a consumer handle the caller owns; it is assigned here and unassigned
 * on return), writes the records that pass the rules above, and rebuilds
 * the cycle-end index from the restored subject records and the expiry
 * index from the restored history values. The stored offset
 * is NOT written: the caller stores out->next_offset (with the watermark)
 * in a synced commit of its own, which also makes the restored writes
 * durable. 1 restored, 0 the changelog holds no complete commit (the
 * partition is left wiped), -1 error (errstr).
 */
struct rd_kafka_s;
int tly_changelog_restore(tly_store_t *store, struct rd_kafka_s *reader,
                          const char *topic, int32_t partition, int64_t low,
                          int64_t high, tly_changelog_restore_t *out,
                          char *errstr, size_t errstr_size);

/* Rebuilds partition's cycle-end and expiry indexes from the subject
 * records and history values the store holds (a standby copy applies the
 * changelog's records without them: tly_standby.c). 0 or -1 (errstr). */
int tly_changelog_rebuild_indexes(tly_store_t *store, int32_t partition,
                                  char *errstr, size_t errstr_size);

/* Wipes what the store holds of partition's state: accounts, usage
 * history, dedupe blobs and spilled ids, cycle-end and expiry indexes and the
 * stored offset (not its Stripe report marks and cursors: a replay of the input
 * from the start rebuilds the usage, and the cursors say what of it was
 * reported). 0 or -1 (errstr). */
int tly_changelog_wipe_partition(tly_store_t *store, int32_t partition,
                                 char *errstr, size_t errstr_size);
/* Wipes partition's Stripe report marks and cursors (a restore does, and
 * restores them from the changelog). 0 or -1 (errstr). */
int tly_changelog_wipe_reports(tly_store_t *store, int32_t partition,
                               char *errstr, size_t errstr_size);

/* The store's changelog writer id (32 hex digits, made and stored in the
 * meta family the first time): out holds TLY_CHANGELOG_WRITER_SIZE bytes.
 * 0 or -1 (errstr). */
#define TLY_CHANGELOG_WRITER_SIZE 33
int tly_changelog_writer_id(tly_store_t *store,
                            char out[TLY_CHANGELOG_WRITER_SIZE], char *errstr,
                            size_t errstr_size);

/* The last record (offset high - 1) of changelog partition `partition`,
 * read through reader (assigned here, unassigned on return): its writer
 * id ("" when it names none: a state record, i.e. a commit's publication
 * cut short, or a writer of an older version) and the input offset it
 * reflects (-1 when none: a report cursor or a settled report mark). A
 * changelog is written commit by commit after the commit is durable in
 * the writer's store, so a store holding offset >= that offset holds all
 * the changelog holds of the partition (a late record of an instance that
 * lost the partition can only make the offset seem older: the processor
 * then replays the input, which is always correct). 1 with a writer, 0
 * without (out->offset may still be set; -1 when nothing was at high - 1),
 * -1 error (errstr). */
typedef struct {
  char writer[128];
  int64_t offset;
  int named; /* writer holds one */
  int done;  /* (tly_changelog_last_records' own bookkeeping) */
} tly_changelog_last_t;
int tly_changelog_last_record(struct rd_kafka_s *reader, const char *topic,
                              int32_t partition, int64_t high,
                              tly_changelog_last_t *out, char *errstr,
                              size_t errstr_size);
/* The same for count partitions at once (partitions[i] up to highs[i]),
 * in one assignment of reader: out[i] for each. 0, or -1 (errstr). */
int tly_changelog_last_records(struct rd_kafka_s *reader, const char *topic,
                               const int32_t *partitions, const int64_t *highs,
                               size_t count, tly_changelog_last_t *out,
                               char *errstr, size_t errstr_size);

/* Who wrote the last record (offset high - 1) of changelog partition
 * `partition`, read through reader (assigned here, unassigned on return):
 * 1 with its writer id in out, 0 when that record names none (a state
 * record: a commit's publication cut short, or a writer of an older
 * version), -1 error (errstr). */
int tly_changelog_last_writer(struct rd_kafka_s *reader, const char *topic,
                              int32_t partition, int64_t high, char *out,
                              size_t out_size, char *errstr,
                              size_t errstr_size);

#endif
