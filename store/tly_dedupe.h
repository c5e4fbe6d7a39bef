/*
 * tly_dedupe.h - one partition's index of the event ids folded within the
 * dedupe window, kept off the per-event write path.
 *
 * RocksDB holds the ids as one record per committed batch and partition (a
 * "blob": [newest occurred_at BE8][count BE4] then per id [occurred_at BE8]
 * [length BE2][id bytes]), written in the batch's own commit, so a batch of
 * 20,000 events costs one put for its ids instead of 20,000. The blobs
 * expire by the store's compaction filter once their newest id is older
 * than the partition's horizon.
 *
 * In memory, a hash table over the blobs answers "was this id folded?"
 * without touching RocksDB; it is rebuilt from the partition's blobs when
 * the partition is assigned. Lookups compare the whole id, never only a
 * hash, so two different ids can never be taken for one another. Memory:
 * about 40 bytes plus the id's length per id in the window.
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

/* After the commit that stored the open blob: it is sealed, and the next
 * record opens a new one. */
void tly_dedupe_seal(tly_dedupe_t *dedupe);

/* Adds a stored blob (at assignment, in key order). -1: malformed or out
 * of memory. */
int tly_dedupe_load(tly_dedupe_t *dedupe, const void *blob, size_t len);

/* Forgets the oldest sealed blobs whose newest id is older than horizon
 * (in blob order: a blob waits for the ones before it). Lookups already
 * treat ids older than the horizon as expired, so this only frees memory. */
void tly_dedupe_expire(tly_dedupe_t *dedupe, int64_t horizon_ms);

/* Ids in the index and blobs held in memory. */
size_t tly_dedupe_count(const tly_dedupe_t *dedupe);
size_t tly_dedupe_blobs(const tly_dedupe_t *dedupe);
/* The memory the index holds (table and blobs), in bytes; walks the
 * blobs. */
size_t tly_dedupe_bytes(const tly_dedupe_t *dedupe);

#endif
