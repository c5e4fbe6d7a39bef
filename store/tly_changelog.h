/*
 * tly_changelog.h - the state changelog's format (issue 6): what each
 * commit changed
 * of a partition's state, published to a compacted topic so a new instance
 * restores the partition from it and replays only the tail of the input
 * (the way Kafka Streams restores its RocksDB stores).
 *
 * Write side: the processor gathers a commit's state puts (subject records,
 * history keys, dedupe blobs; and tombstones of dedupe blobs the window has
 * passed, so compaction can drop them) into one bundle, stored as ONE
 * outbox entry in
 * the commit's WriteBatch (no RocksDB write per record), which the outbox
 * publisher expands into Kafka records. Changelog partition p holds input
 * partition p's state:
 *   state record   key [kind][store key]   value [offset, 8 BE][store value]
 *   commit marker  key "M"                 value [offset, 8 BE][watermark, 8
 * BE] where offset is the input offset the record reflects: the next offset of
 * the commit that wrote it. A commit's marker follows all its records.
 *
 * Read side (tly_changelog_restore): a record is applied only once a marker
 * at or above its offset has been read (so the records of a commit whose
 * publication was cut short never count), and only when its offset is not
 * below one already applied for the same key (so a stale record, re-sent
 * late by an instance that lost the partition meanwhile, never overwrites a
 * newer one). The state restored is the state as of the highest marker: the
 * input is replayed from there.
 *
 * Stripe usage reporting (producers/tly_stripe_emitter.h) rides on it too,
 * so that a partition's new owner goes on reporting where the old one
 * stopped (neither losing nor double counting a credit):
 *   report mark    key ['R'][mark key]    value [offset, 8 BE][mark]
 *                  in the commit's bundle, restored like any state record;
 *   mark deletion  key ['R'][mark key]    null value, written by the
 *                  emitter once the mark is settled: the mark is gone for
 *                  good (a record of the key before or after it is not
 *                  restored: a mark's key names the commit that wrote it);
 *   report cursor  key ['C'][cursor key]  value [version, 8 BE][cursor]
 *                  written by the emitter (an intent acknowledged before
 *                  its request leaves), not tied to an input offset:
 *                  applied whatever the markers, and only when its version
 *                  is above the one applied for the key, so a late record
 *                  of an instance that lost the partition (older, or the
 *                  same version) never overwrites a newer cursor.
 * Markers and the emitter's records name their writer (header
 * TLY_CHANGELOG_WRITER_HEADER, the store's tly_changelog_writer_id): a
 * store whose writer wrote a partition's last changelog record holds
 * everything the changelog holds of it (see tly_changelog_last_writer).
 */
#ifndef TLY_CHANGELOG_H
#define TLY_CHANGELOG_H

#include "tly_store.h"

#include <stddef.h>
#include <stdint.h>

/* Kinds of state record: the column family they restore into. */
#define TLY_CHANGELOG_ACCOUNT 'A' /* TLY_CF_ACCOUNTS */
#define TLY_CHANGELOG_USAGE 'U'   /* TLY_CF_USAGE (hours, cycles, alerts) */
#define TLY_CHANGELOG_DEDUPE 'D'  /* TLY_CF_DEDUPE */
#define TLY_CHANGELOG_REPORT 'R'  /* TLY_CF_REPORTS (Stripe report marks) */
#define TLY_CHANGELOG_CURSOR 'C'  /* TLY_CF_CURSORS (Stripe report cursors) */
#define TLY_CHANGELOG_CONTRIBUTION 'K' /* TLY_CF_CONTRIBUTIONS */
#define TLY_CHANGELOG_MARKER 'M'

#define TLY_CHANGELOG_WRITER_HEADER "tally.writer"

/* ---- bundles: one commit's records, as one outbox entry -------------- */

typedef struct {
  unsigned char *data;
  size_t len, cap;
  size_t count; /* state records */
  int out_of_memory;
} tly_changelog_bundle_t;

/* Appends a state record of partition (kind: one of the above). Errors
 * (out of memory) are kept in the bundle and reported by _finish. */
void tly_changelog_bundle_add(tly_changelog_bundle_t *bundle, int32_t partition,
                              char kind, const void *key, size_t key_len,
                              const void *value, size_t value_len);

/* Appends a deletion of a state record (a Kafka tombstone: null value, the
 * reflected offset in header TLY_CHANGELOG_OFFSET_HEADER), e.g. a dedupe
 * blob that expired, so compaction can drop the key. */
void tly_changelog_bundle_delete(tly_changelog_bundle_t *bundle,
                                 int32_t partition, char kind, const void *key,
                                 size_t key_len);
#define TLY_CHANGELOG_OFFSET_HEADER "tally.offset"

/* The commit's markers (partition, next offset, watermark; count entries)
 * and the records added so far, as an outbox entry: *out malloc'd, owned
 * by the caller. The bundle is emptied for the next commit. 0, or -1 (out
 * of memory, or a record of a partition with no marker). */
typedef struct {
  int32_t partition;
  int64_t next_offset;
  int64_t watermark_ms;
} tly_changelog_marker_t;
int tly_changelog_bundle_finish(tly_changelog_bundle_t *bundle,
                                const tly_changelog_marker_t *markers,
                                size_t count, char **out, size_t *out_len);
void tly_changelog_bundle_free(tly_changelog_bundle_t *bundle);

/* A copy of a bundle with only the records and markers of the partitions
 * keep() accepts: *out malloc'd (the caller's). 0, or -1 (corrupt bundle
 * or out of memory). */
int tly_changelog_bundle_filter(const char *data, size_t len,
                                int (*keep)(void *opaque, int32_t partition),
                                void *opaque, char **out, size_t *out_len);

/* 1 when an outbox entry is a bundle (not an encoded output record). */
int tly_changelog_is_bundle(const char *data, size_t len);

/* One Kafka record of a bundle, in publishing order (every state record,
 * then the markers). key and value point into scratch (grown as needed;
 * the caller frees *scratch). */
typedef struct {
  int32_t partition;
  const void *key;
  size_t key_len;
  const void *value; /* NULL for a tombstone */
  size_t value_len;
  int64_t offset; /* reflected: for a tombstone's header */
} tly_changelog_record_t;

/* Walks a bundle: *cursor starts at 0. 1 with the next record, 0 at the
 * end, -1 when the bundle is corrupt or memory ran out. */
int tly_changelog_bundle_next(const char *data, size_t len, size_t *cursor,
                              unsigned char **scratch, size_t *scratch_cap,
                              tly_changelog_record_t *record);

#endif
