/*
 * tly_dedupe.h - one partition's index of the recent event ids, in memory,
 * kept off the per-event write path; the older ids of the window are in
 * RocksDB (spilled), looked up by id.
 *
 * RocksDB holds the ids as one record per committed batch and partition (a
 * "blob": [newest occurred_at BE8][count BE4] then per id [occurred_at BE8]
 * [length BE2][id bytes]), written in the batch's own commit, so a batch of
 * 20,000 events costs one put for its ids instead of 20,000. The blobs
 * expire by the store's compaction filter once their newest id is older
 * than the partition's horizon.
 *
 * In memory, a hash table over the blobs answers "was this id folded?"
 * without touching RocksDB. Lookups compare the whole id, never only a
 * hash, so two different ids can never be taken for one another. Memory:
 * about 50 to 100 bytes plus the id's length per id held.
 *
 * Spilling (bounded memory): when the index holds more than its share of
 * the memory budget, the processor takes the oldest sealed blobs
 * (tly_dedupe_spill_next), writes each of their ids under its own key
 * (tly_keys.h: dedupe_ids, [p][id] -> [occurred_at BE8]) and replaces the
 * blob by its 12-byte header with count 0 (a "stub"), in one commit; once
 * that commit is durable the blobs leave memory
 * (tly_dedupe_release_spilled). Until then they answer from memory, so an
 * id is always either in memory or durable in RocksDB. Stubs are skipped by
 * tly_dedupe_load: assignment loads only the blobs not spilled.
 */
#ifndef TLY_DEDUPE_H
#define TLY_DEDUPE_H

#include <stddef.h>
#include <stdint.h>

#define TLY_DEDUPE_BLOB_HEADER 12
#define TLY_DEDUPE_ID_MAX 65535

typedef struct tly_dedupe tly_dedupe_t;

tly_dedupe_t *tly_dedupe_new(void);
void tly_dedupe_free(tly_dedupe_t *dedupe);

/* A hint: fetches the cache line where a lookup of id will start (the
 * processor calls it a few records ahead). */
void tly_dedupe_prefetch(const tly_dedupe_t *dedupe, const char *id,
                         size_t len);

/* 1 and *occurred_at_ms (of the latest record of the id) if the id is in
 * the index, 0 if not. */
int tly_dedupe_lookup(const tly_dedupe_t *dedupe, const char *id, size_t len,
                      int64_t *occurred_at_ms);

/* Records an id in the open blob (the batch being folded). -1: out of
 * memory or an id longer than TLY_DEDUPE_ID_MAX. */
int tly_dedupe_record(tly_dedupe_t *dedupe, const char *id, size_t len,
                      int64_t occurred_at_ms);

/* The open blob as it is to be stored, or NULL when no id was recorded
 * since the last seal. */
const void *tly_dedupe_open_blob(tly_dedupe_t *dedupe, size_t *len);

/* Once the open blob is in a batch (stored under key, its first offset):
 * it is sealed, and the next record opens a new one. */
void tly_dedupe_seal(tly_dedupe_t *dedupe, int64_t key);

/* Adds a stored blob (at assignment, in key order, before any record).
 * A stub (count 0) adds nothing. -1: malformed or out of memory. */
int tly_dedupe_load(tly_dedupe_t *dedupe, int64_t key, const void *blob,
                    size_t len);

/* Spilling. The oldest sealed blob not yet spilling, marked spilling: its
 * bytes (valid until it is released) and *key; NULL when none is left. */
const void *tly_dedupe_spill_next(tly_dedupe_t *dedupe, size_t *len,
                                  int64_t *key);
/* After the commit that stored the spilling blobs' ids: forgets them.
 * Returns how many blobs left memory. */
size_t tly_dedupe_release_spilled(tly_dedupe_t *dedupe);

/* Reads a blob's records one by one: *pos starts at 0. 1 and the record
 * (id not NUL-terminated, pointing into blob), 0 at the end or on a
 * malformed record. */
int tly_dedupe_blob_next(const void *blob, size_t len, size_t *pos,
                         const char **id, size_t *id_len,
                         int64_t *occurred_at_ms);

/* Forgets the oldest sealed blobs whose newest id is older than horizon
 * (in blob order: a blob waits for the ones before it). Lookups already
 * treat ids older than the horizon as expired, so this only frees memory. */
void tly_dedupe_expire(tly_dedupe_t *dedupe, int64_t horizon_ms);

/* Ids in the index and blobs held in memory. */
size_t tly_dedupe_count(const tly_dedupe_t *dedupe);
size_t tly_dedupe_blobs(const tly_dedupe_t *dedupe);
/* The memory the index holds (table and blobs), in bytes (kept as it
 * changes: no walk). */
size_t tly_dedupe_bytes(const tly_dedupe_t *dedupe);

#endif
