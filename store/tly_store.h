/*
 * tly_store.h - tally's state in RocksDB.
 * Owns RocksDB: column families, atomic batches, offsets; never
 * interprets a value (the key and record formats are its callers').
 *
 * One RocksDB database with a column family per kind of state. Every key
 * that belongs to a partition starts with that partition's number (4 bytes,
 * big-endian) so a partition's state can be found, moved or dropped as a
 * range. The one write path is tly_store_commit(): a batch of state changes,
 * outbox entries and the next input offset of every partition in the batch,
 * written atomically with the WAL synced. That write is the commit point of
 * the exactly-once protocol (see DESIGN.md, "Exactly-once").
 *
 * Errors: functions that can fail return -1 and fill a caller-supplied
 * errstr. Memory returned to the caller is freed with tly_store_free().
 * The handle is safe to use from several threads (RocksDB is), a batch is
 * not.
 */
#ifndef TLY_STORE_H
#define TLY_STORE_H

#include "tly_bytes.h" /* big-endian helpers, once declared here */

#include <stddef.h>
#include <stdint.h>

typedef enum {
  TLY_CF_USAGE = 0,  /* usage history: [p][kind:id][0][tag]... -> expiry
                        time (8 bytes BE) first, then the record; see
                        tly_keys.h */
  TLY_CF_OFFSETS,    /* [partition] -> next input offset (8 bytes BE) */
  TLY_CF_OUTBOX,     /* [sequence, 8 bytes BE] -> encoded output record */
  TLY_CF_META,       /* free-form process metadata */
  TLY_CF_ACCOUNTS,   /* [partition][subject key] -> subject record */
  TLY_CF_DEDUPE,     /* [partition][batch key] -> newest occurred_at (8 bytes
                        BE) first, then the batch's event ids */
  TLY_CF_CYCLE_ENDS, /* [partition][cycle end, 8 bytes BE][subject key] */
  TLY_CF_REPORTS,    /* usage to report to Stripe: [partition][seq, 8 bytes
                        BE][subject key] -> when and which hours; see
                        tly_keys.h */
  TLY_CF_CURSORS,    /* what was reported to Stripe, per subject, meter and
                        window; see tly_keys.h */
  TLY_CF_EXPIRIES,   /* [partition][expires at, 8 bytes BE][usage key] ->
                        empty: when each expiring history key goes, so the
                        state changelog gets its tombstone; and a dedupe
                        blob's (tly_key_expiry_blob) */
  TLY_CF_DEDUPE_IDS, /* [partition][event id] -> occurred_at (8 bytes BE):
                        the ids spilled out of memory (tly_dedupe.h); the
                        dedupe family's expiry and horizon */

  /* [partition][kind:id][0][event id] -> what a usage event contributed
   * (tly_corrections.h), its occurred_at (8 bytes BE) first: expires with
   * dedupe (its horizon), for usage_corrected */
  TLY_CF_CONTRIBUTIONS,
  TLY_CF__COUNT
} tly_cf_t;

typedef struct tly_store tly_store_t;
typedef struct tly_store_batch tly_store_batch_t;

/* Opens (creating if missing) the database in dir, with every column family.
 * read_only opens without taking the lock (for inspection while another
 * process owns the store); it never creates anything, sees the commits made
 * before it opened, and a column family the database does not have yet reads
 * as empty. NULL + errstr (naming dir) on failure. */
tly_store_t *tly_store_open(const char *dir, int read_only, char *errstr,
                            size_t errstr_size);

/* RocksDB's own memory, bounded whatever the number of column families:
 * one LRU block cache shared by every family, with the index and filter
 * blocks charged to it (not held beside it by the table readers), and the
 * memtables of all families together (RocksDB's db_write_buffer_size:
 * past 7/8 of it RocksDB flushes the family holding the oldest memtable).
 * 0 in a field keeps the default: a 64 MiB block cache; memtables of 64 MiB
 * per family, no bound on their sum. */
typedef struct {
  size_t block_cache_bytes;
  /* All memtables: db_write_buffer_size is a quarter of it (the rest is
   * for one commit's write, which lands whole, and memtables being
   * flushed), each family's memtable a sixteenth, two at most per family
   * (one written, one flushing). At least TLY_STORE_MEMTABLES_MIN (below
   * it RocksDB would flush at every write). A commit larger than 3/4 of
   * it passes it until the flush. */
  size_t memtables_bytes;
} tly_store_memory_t;
#define TLY_STORE_BLOCK_CACHE_MIN ((size_t)1 << 20)
#define TLY_STORE_MEMTABLES_MIN ((size_t)2 << 20)

/* tly_store_open with RocksDB's memory sized by memory (NULL: defaults);
 * a field below its minimum is raised to it. */
tly_store_t *tly_store_open_sized(const char *dir, int read_only,
                                  const tly_store_memory_t *memory,
                                  char *errstr, size_t errstr_size);

/* What RocksDB holds now: the block cache's usage (data, index and filter
 * blocks) and the memtables of every family (RocksDB's
 * rocksdb.size-all-mem-tables: written, flushing and flushed but still
 * pinned), and the sizes it was opened with (0: no bound). Any thread. */
typedef struct {
  uint64_t block_cache_bytes, memtables_bytes;
  uint64_t block_cache_capacity, memtables_bound;
} tly_store_memory_usage_t;
void tly_store_memory_usage(tly_store_t *store, tly_store_memory_usage_t *out);
void tly_store_close(tly_store_t *store);

/* The column family's name as stored in RocksDB. */
const char *tly_store_cf_name(tly_cf_t cf);

tly_store_batch_t *tly_store_batch_new(void);
void tly_store_batch_destroy(tly_store_batch_t *batch);
void tly_store_batch_clear(tly_store_batch_t *batch);
/* Number of operations queued. */
size_t tly_store_batch_count(const tly_store_batch_t *batch);
/* The bytes the batch's operations take, and a hint: room for at least
 * bytes in a batch about to be refilled (an empty batch gets it without
 * copying, so a large batch does not regrow by doubling and copying; a
 * failure leaves it as it was, to grow as it fills). */
size_t tly_store_batch_bytes(const tly_store_batch_t *batch);
void tly_store_batch_reserve(tly_store_batch_t *batch, size_t bytes);
void tly_store_batch_put(tly_store_batch_t *batch, tly_cf_t cf, const void *key,
                         size_t key_len, const void *value, size_t value_len);
/* A put whose value is written in place, with no copy: put_open appends
 * the key and returns room for up to max_value_len bytes of value (NULL:
 * out of memory, recorded as put's is); the caller writes the value there
 * and put_close gives its length (at most max_value_len), which makes the
 * put part of the batch. A put opened and not closed is not in the batch
 * (the next operation takes its place); nothing else may come between. */
unsigned char *tly_store_batch_put_open(tly_store_batch_t *batch, tly_cf_t cf,
                                        const void *key, size_t key_len,
                                        size_t max_value_len);
void tly_store_batch_put_close(tly_store_batch_t *batch, size_t value_len);
void tly_store_batch_delete(tly_store_batch_t *batch, tly_cf_t cf,
                            const void *key, size_t key_len);
/* Deletes every key of cf in [begin, end) (a partition's range: [p], [p+1]). */
void tly_store_batch_delete_range(tly_store_batch_t *batch, tly_cf_t cf,
                                  const void *begin, size_t begin_len,
                                  const void *end, size_t end_len);
/* Records that every input record of partition before next_offset is folded
 * into this batch's state. */
void tly_store_batch_set_offset(tly_store_batch_t *batch, int32_t partition,
                                int64_t next_offset);

/* Writes the batch atomically. sync != 0 fsyncs the WAL before returning.
 * Does not clear the batch. An empty batch is a successful no-op. 0 or -1. */
int tly_store_commit(tly_store_t *store, tly_store_batch_t *batch, int sync,
                     char *errstr, size_t errstr_size);

/* Fault injection (tests): the next `count` commits fail with the errstr
 * "injected I/O error" and write nothing (0 cancels). Thread-safe: with
 * concurrent committers exactly `count` commits fail. */
void tly_store_fail_next_commits(tly_store_t *store, int count);

/* Fault injection for the integration tests only (never set these in
 * production), read from the environment when a writable store opens and
 * announced on stderr:
 *   TALLY_FAULT_STORE_WRITE=N[:COUNT]  calls N .. N+COUNT-1 of
 *       tly_store_commit() on this store (counted from 1; COUNT defaults
 *       to 1) fail with "injected I/O error" and write nothing; the
 *       processor tries a commit 6 times, so COUNT 6 fails one batch for
 *       good, like a disk that stops for a few seconds;
 *   TALLY_FAULT_STORE_READ=N  the Nth point read of a subject record
 *       (tly_store_get on TLY_CF_ACCOUNTS) fails: the fold of the event
 *       that needed it stops the processor mid-batch. */

/* Point read. Returns 1 and a malloc'd *value (free with tly_store_free) when
 * found, 0 when absent (*value NULL), -1 on error. The value is followed by
 * a NUL byte not counted in *value_len, so text values can be used as
 * strings. */
int tly_store_get(tly_store_t *store, tly_cf_t cf, const void *key,
                  size_t key_len, char **value, size_t *value_len, char *errstr,
                  size_t errstr_size);

/* The stored next offset of a partition: 1 and *next_offset, 0 if none, -1. */
int tly_store_get_offset(tly_store_t *store, int32_t partition,
                         int64_t *next_offset, char *errstr,
                         size_t errstr_size);

/* Called for each key with the prefix, in key order; return non-zero to stop
 * early. Pointers are valid only during the call. */
typedef int (*tly_store_scan_cb)(void *opaque, const char *key, size_t key_len,
                                 const char *value, size_t value_len);
/* Visits every key of cf starting with prefix (prefix_len may be 0, and
 * prefix then NULL, for all). Sees one consistent snapshot. Returns 0 or -1. */
int tly_store_scan_prefix(tly_store_t *store, tly_cf_t cf, const void *prefix,
                          size_t prefix_len, tly_store_scan_cb cb, void *opaque,
                          char *errstr, size_t errstr_size);

void tly_store_free(void *ptr);

/*
 * Expiry by compaction, not by a scan, for two families whose values start
 * with an event time (8 bytes BE): the filter drops an entry of partition p
 * once that time is below p's horizon.
 *   dedupe: the time is a blob's newest occurred_at (dedupe) or an id's
 *           occurred_at (dedupe_ids and contributions, which share
 *           dedupe's horizon) and
 *           the horizon the partition's event-time watermark minus the
 *           dedupe window;
 *   usage:  the time is when the history record expires (event time) and
 *           the horizon the partition's watermark.
 * Set horizons from committed state only, so they never run ahead of what
 * a restart would recover. Partitions >= TLY_STORE_MAX_PARTITIONS never
 * expire; other families ignore the call.
 */
#define TLY_STORE_MAX_PARTITIONS 65536
void tly_store_set_horizon(tly_store_t *store, tly_cf_t cf, int32_t partition,
                           int64_t horizon_ms);
/* Compacts the whole family now (tests, maintenance). 0 or -1. */
int tly_store_compact(tly_store_t *store, tly_cf_t cf);
/* The bytes of a family's SST files (RocksDB's total-sst-files-size); 0
 * if unknown. For benchmarks and reports. */
uint64_t tly_store_sst_bytes(tly_store_t *store, tly_cf_t cf);

#endif
