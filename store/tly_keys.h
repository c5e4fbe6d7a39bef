/*
 * tly_keys.h - the RocksDB key layouts of tally's state, in one place.
 *
 * Every key starts with its partition (4 bytes, big-endian) so a
 * partition's state is one contiguous range per column family. Subjects
 * appear as their Kafka key "kind:id"; a 0 byte ends them where more
 * follows, so "alice" never prefixes "alicex".
 *   accounts:   [p][kind:id] -> subject record (account + kept usage rows,
 *               tly_subject_record_encode)
 *   dedupe:     [p][first input offset of the batch, 8 bytes BE] -> the
 *               batch's event ids (a blob, see tly_dedupe.h); a blob whose
 *               ids were spilled keeps its 12-byte header with count 0
 *   dedupe_ids: [p][event id] -> [occurred_at, 8 bytes BE] (bytes after
 *               the 8 are reserved for a small per-id value; readers
 *               ignore them): an id spilled out of memory
 *   cycle_ends: [p][cycle end, 8 bytes BE][kind:id]
 *   contributions: [p][kind:id][0][event id] -> [occurred_at, 8 bytes BE]
 *               then the rest of tly_contribution_encode (a correction's
 *               replacement; entries restored from the changelog);
 *               [p][kind:id][1][hour, 4 BE][batch key, 8 BE][part, 2 BE]
 *               -> [newest occurred_at, 8 BE][2] then [id length, 2]
 *               [value length, 1][event id][contribution] each: a chunk,
 *               the subject's events of one hour folded in one batch
 *               (consumers/tly_contributions.c)
 *   usage (the history, values start with their expiry time):
 *     [p][kind:id][0]['H'][hour, 4 bytes BE] -> an hour's usage buckets (an
 *                 hour that is no longer the subject's newest;
 *                 tly_bucket_encode)
 *     [p][kind:id][0]['C'][cycle start, 8 bytes BE] -> a closed cycle that
 *                 left the kept history (tly_cycle_archive_encode)
 *     [p][kind:id][0]['A'][at, 8 bytes BE][alert id] -> an alert as sent
 *   reports (usage to report to Stripe, written by the processor in the
 *   commit that changed it, deleted by the reporting emitter once done):
 *     [p][seq, 8 bytes BE][kind:id] -> [written at ms, 8 bytes BE] then the
 *                 changed hours (4 bytes BE each); seq is the partition's
 *                 next input offset as committed, so keys only grow
 *   stripe_cursors (what was reported, tly_stripe_emitter.h):
 *     [p][kind:id][0][meter event_name][0][window start ms, 8 bytes BE]
 * Each function writes into out (out_size bytes) and returns the key's
 * length, or 0 when it does not fit.
 */
#ifndef TLY_KEYS_H
#define TLY_KEYS_H

#include "tly_event.h"

#include <stddef.h>
#include <stdint.h>

#define TLY_KEY_MAX 1200

size_t tly_key_account(int32_t partition, tly_subject_kind_t kind,
                       const char *id, char *out, size_t out_size);
/* [p][kind:id][0][event id]: a usage event's contribution
 * (contributions, tly_corrections.h). */
size_t tly_key_contribution(int32_t partition, tly_subject_kind_t kind,
                            const char *id, const char *event_id, char *out,
                            size_t out_size);
size_t tly_key_cycle_end(int32_t partition, int64_t cycle_end_ms,
                         tly_subject_kind_t kind, const char *id, char *out,
                         size_t out_size);

/* [p][seq][kind:id]: a reports mark. */
size_t tly_key_report_mark(int32_t partition, int64_t seq,
                           tly_subject_kind_t kind, const char *id, char *out,
                           size_t out_size);
/* [p][kind:id][0][event_name][0][window start]: a Stripe report cursor. */
size_t tly_key_report_cursor(int32_t partition, tly_subject_kind_t kind,
                             const char *id, const char *event_name,
                             int64_t window_start_ms, char *out,
                             size_t out_size);

/* [p][expires at, 8 bytes BE][usage key]: the expiry index entry of a
 * history key (usage_key starts with its partition); 0 when out_size is
 * short, else usage_len + 12. */
size_t tly_key_expiry(const char *usage_key, size_t usage_len,
                      int64_t expires_at_ms, char *out, size_t out_size);

/* [p][check at, 8 bytes BE][p][0][blob offset, 8 bytes BE]: the expiry
 * index entry of a dedupe blob (its value: the blob's newest event time, 8
 * bytes BE), so the state changelog gets the blob's tombstone once the
 * dedupe window passes it. A history key's bytes after [p] are a subject
 * kind's name, never 0: the two kinds of entry never meet. 0 when out_size
 * is short, else TLY_KEY_EXPIRY_BLOB_LEN. */
#define TLY_KEY_EXPIRY_BLOB_LEN 25
size_t tly_key_expiry_blob(int32_t partition, int64_t blob_offset,
                           int64_t check_at_ms, char *out, size_t out_size);
/* 1 when key is a dedupe blob's expiry index entry (its offset in
 * *blob_offset), else 0. */
int tly_key_expiry_is_blob(const char *key, size_t key_len,
                           int64_t *blob_offset);

/* [p][event id]: a spilled event id. */
size_t tly_key_dedupe_id(int32_t partition, const char *id, size_t id_len,
                         char *out, size_t out_size);

/* The history kinds (the tag after the subject). */
#define TLY_HISTORY_HOUR 'H'
#define TLY_HISTORY_CYCLE 'C'
#define TLY_HISTORY_ALERT 'A'

/* [p][kind:id][0][tag]: the prefix of one kind of a subject's history;
 * append the suffix the layout above gives. */
size_t tly_key_history(int32_t partition, tly_subject_kind_t kind,
                       const char *id, char tag, char *out, size_t out_size);

#endif
