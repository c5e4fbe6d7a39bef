/*
 * tly_store.c - tally's state in RocksDB (see tly_store.h for the contract).
 *
 * This file is the only one that talks to RocksDB. It owns the database
 * handle, one column family per tly_cf_t (the table below is the single
 * place that names them), and the write path that makes the exactly-once
 * protocol work: every state change, outbox entry and partition offset of a
 * processor batch goes into one WriteBatch, written with the WAL synced
 * (DESIGN.md, "Exactly-once"). The processor thread commits; HTTP threads
 * read through tly_store_get() and tly_store_scan_prefix() at the same time,
 * which RocksDB allows on one handle. Everything this file adds on top of the
 * handle (options, column family handles) is immutable after open, except
 * the fault-injection counter, which is atomic.
 *
 * A tly_store_batch_t is not a rocksdb_writebatch_t underneath: a RocksDB
 * batch needs column family handles, which belong to an open database, while
 * our batches are created without a store. So a batch records its operations
 * in one flat buffer (enum value + key + value) and tly_store_commit()
 * replays them into a RocksDB batch with the store's handles. The extra copy
 * is negligible next to a synced WAL write.
 */
#include "tly_store.h"

#include "tly_files.h"
#include "tly_slab.h"

#include <rocksdb/c.h>

#include <pthread.h>

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Options, shortly justified:
 * - one LRU block cache shared by all column families, so the memory bound
 *   is one number whatever the number of column families; the index and
 *   filter blocks are charged to it (high priority: evicted after data
 *   blocks), so the table readers hold no unbounded memory beside it. Not
 *   pinned: a pinned block could hold the cache past its capacity;
 * - with a tly_store_memory_t (tly_store_open_sized), the memtables of all
 *   families together are bounded (db_write_buffer_size) and each family's
 *   memtable is sized from that bound;
 * - a bloom filter on the usage column family only: HTTP quota checks and the
 *   processor's overlay loads are point reads there, many of them for keys
 *   that do not exist yet (a subject's first event). The other families are
 *   tiny (offsets, meta) or read by scans (outbox), where a whole-key bloom
 *   filter does not help;
 * - two background jobs (flush + compaction) for the 2-core machines we run
 *   on, leaving a core for the processor and HTTP threads;
 * - level compaction with RocksDB's defaults (64 MiB memtables): the write
 *   volume is already reduced by the per-batch aggregation;
 * - no compression in levels 0 and 1, LZ4 below (RocksDB's own tuning
 *   advice): a flush and the compactions out of level 0 rewrite data that
 *   is compacted again soon, and snappy took 42 % of the flush thread in
 *   bench_fold (0.15-0.2 us of CPU per event, beside a fold thread of
 *   ~1.9). Those two levels are bounded (level 1 at 256 MiB), so what
 *   the disk holds beyond snappy's is too; deeper levels, where the bulk
 *   of an old store lives, are compressed with LZ4, as fast as snappy or
 *   faster, at a similar ratio;
 * - a cap on open table files that follows the process's open-file limit
 *   (tly_files.h; raised to the hard limit first): 256 at 1,024, up to
 *   4,096. The default (-1) keeps every SST open, which could eat the
 *   descriptors Kafka and HTTP sockets also need; too few and point reads
 *   reopen table files (the dedupe window's families keep up to 64
 *   level-0 files each);
 * - few old info logs: every open starts a new LOG file, and dev mode opens
 *   often;
 * - a bound on the write-ahead log (see tly_store_options_new). */
#define TLY_STORE_BLOCK_CACHE_BYTES (64u << 20)
#define TLY_STORE_BLOOM_BITS_PER_KEY 10.0
#define TLY_STORE_BACKGROUND_JOBS 2
#define TLY_STORE_KEEP_LOG_FILES 5
#define TLY_STORE_MAX_WAL_BYTES (128u << 20)
/* Compression by level: none in 0 and 1, LZ4 in 2..6 (see above). */
#define TLY_STORE_LEVELS 7
#define TLY_STORE_UNCOMPRESSED_LEVELS 2
/* The write-mostly families' level 0 (see write_mostly below): files
 * before a compaction into level 1, and where RocksDB slows and stops
 * writes (its defaults: 4, 20, 36). */
#define TLY_STORE_WRITE_MOSTLY_L0_COMPACTION 64
#define TLY_STORE_WRITE_MOSTLY_L0_SLOWDOWN 160
#define TLY_STORE_WRITE_MOSTLY_L0_STOP 200
/* RocksDB's default memtable size, kept as the largest when sized. */
#define TLY_STORE_MEMTABLE_MAX ((size_t)64 << 20)
/* The size of an index or filter partition (RocksDB's default block size). */
#define TLY_STORE_METADATA_BLOCK 4096

/* One row per column family: adding state kinds means adding an enum value
 * in tly_store.h and one row here. point_reads turns the bloom filter on. */
typedef struct {
  const char *name;
  int point_reads;
} tly_cf_desc_t;

static const tly_cf_desc_t tly_cf_table[] = {
    [TLY_CF_USAGE] = {"usage", 1},
    [TLY_CF_OFFSETS] = {"offsets", 0},
    [TLY_CF_OUTBOX] = {"outbox", 0},
    [TLY_CF_META] = {"meta", 0},
    [TLY_CF_ACCOUNTS] = {"accounts", 1},
    [TLY_CF_DEDUPE] = {"dedupe", 1},
    [TLY_CF_CYCLE_ENDS] = {"cycle_ends", 0},
    [TLY_CF_REPORTS] = {"reports", 0},
    [TLY_CF_CURSORS] = {"stripe_cursors", 1},
    [TLY_CF_EXPIRIES] = {"expiries", 0},
    [TLY_CF_DEDUPE_IDS] = {"dedupe_ids", 1},
    [TLY_CF_CONTRIBUTIONS] = {"contributions", 1},
};

/* A new enum value without a row: if it is the last one the table comes out
 * short and this fails the build; a gap in the middle leaves a NULL name,
 * which tly_store_open() rejects. */
_Static_assert(sizeof(tly_cf_table) / sizeof(tly_cf_table[0]) == TLY_CF__COUNT,
               "one tly_cf_table row per tly_cf_t");

typedef struct {
  tly_cf_t cf;
  rocksdb_options_t *options; /* the family's, holding the filter */
  rocksdb_compactionfilter_t *filter;
  _Atomic int64_t *horizons; /* per partition */
} expiry_t;

struct tly_store {
  rocksdb_t *db;
  int read_only;
  /* RocksDB requires "default" to be opened; nothing of ours lives there. */
  rocksdb_column_family_handle_t *default_cf;
  /* NULL only in a read-only store whose database predates the family. */
  rocksdb_column_family_handle_t *cf[TLY_CF__COUNT];
  rocksdb_readoptions_t *read_options;
  rocksdb_writeoptions_t *write_sync;
  rocksdb_writeoptions_t *write_nosync;
  /* The block cache (for its usage) and the memtables' bound (0: none). */
  rocksdb_cache_t *cache;
  size_t memtables_bound;
  atomic_int injected_failures;
  /* The environment's faults (tests only, tly_store.h): commits numbered
   * fault_write_from .. fault_write_from + fault_write_count - 1 fail, and
   * so does subject record read number fault_read_at; 0 = none. */
  long fault_write_from, fault_write_count, fault_read_at;
  atomic_long commits_seen, account_reads_seen;
  /* Expiry by event time (see tly_store_set_horizon): one filter per
   * expiring family, its horizons read by compaction threads, hence
   * atomics. */
  expiry_t expiry[2];
};

static unsigned char
expiry_filter(void *state, int level, const char *key, size_t key_length,
              const char *existing_value, size_t value_length, char **new_value,
              size_t *new_value_length, unsigned char *value_changed) {
  expiry_t *expiry = state;
  (void)level, (void)new_value, (void)new_value_length;
  *value_changed = 0;
  if (key_length < 4 || value_length < 8) /* the time is the value's head */
    return 0;
  uint32_t partition = tly_get_be32((const unsigned char *)key);
  if (partition >= TLY_STORE_MAX_PARTITIONS)
    return 0;
  int64_t t = (int64_t)tly_get_be64((const unsigned char *)existing_value);
  return t < atomic_load(&expiry->horizons[partition]);
}

static void expiry_filter_destroy(void *state) { (void)state; }

/* Levels before `uncompressed` without compression, the rest LZ4. */
static void compress_levels(rocksdb_options_t *options, int uncompressed) {
  int compression[TLY_STORE_LEVELS];
  for (int level = 0; level < TLY_STORE_LEVELS; level++)
    compression[level] =
        level < uncompressed ? rocksdb_no_compression : rocksdb_lz4_compression;
  rocksdb_options_set_compression_per_level(options, compression,
                                            TLY_STORE_LEVELS);
}

/* The families that expire with the dedupe window (dedupe blobs, spilled
 * ids, contributions) are written by every commit across the whole key
 * space (every partition and subject) and read rarely (a spilled id the
 * filter cannot rule out, a correction). Each compaction of level 0 into
 * level 1 rewrites all of level 1 it overlaps, which is all of it: at
 * RocksDB's default of 4 files, the contributions were written 5.5 times
 * over and the three families' compactions took more CPU than the fold
 * thread (bench_fold's dedupe-scale run at 4 M ids: 10.4 s of compaction,
 * 4.9 s of it the contributions'). Sixteen files a compaction wrote level
 * 1 a quarter as often; 64 write it a quarter as often again: the
 * memtables are small (a sixteenth of the budget's memtables part each,
 * ~5 MiB at 1 GiB), so sixteen level-0 files were ~80 MiB against a
 * level 1 of up to 256 MiB of spilled ids. In the dedupe-scale run at
 * 20 M ids (window full) RocksDB's flushes and compactions fell from
 * 1.98-2.92 to 0.50-0.56 us per event. A point read checks up to 64
 * level-0 files' bloom filters (in the block cache): the spilled ids are
 * read only when the in-memory filter cannot rule one out (~1 % of the
 * events there), the blobs and contributions at an assignment or a
 * correction. */
static void write_mostly(rocksdb_options_t *options) {
  /* Compressed at every level: these families hold most of a store's
   * bytes (every event's id for the dedupe window), and their level 0
   * and 1 are large. Uncompressed, the dedupe-scale run's ids took 25.6
   * MB per million on disk against 11.5 with snappy. */
  compress_levels(options, 0);
  rocksdb_options_set_level0_file_num_compaction_trigger(
      options, TLY_STORE_WRITE_MOSTLY_L0_COMPACTION);
  rocksdb_options_set_level0_slowdown_writes_trigger(
      options, TLY_STORE_WRITE_MOSTLY_L0_SLOWDOWN);
  rocksdb_options_set_level0_stop_writes_trigger(
      options, TLY_STORE_WRITE_MOSTLY_L0_STOP);
}

static const char *expiry_filter_name(void *state) {
  expiry_t *expiry = state;
  return expiry->cf == TLY_CF_DEDUPE ? "tally.dedupe_expiry"
                                     : "tally.history_expiry";
}

static expiry_t *expiry_of(tly_store_t *store, tly_cf_t cf) {
  /* the spilled ids and the contributions expire with the blobs */
  if (cf == TLY_CF_DEDUPE_IDS || cf == TLY_CF_CONTRIBUTIONS)
    cf = TLY_CF_DEDUPE;
  for (size_t i = 0; i < sizeof(store->expiry) / sizeof(store->expiry[0]); i++)
    if (store->expiry[i].cf == cf)
      return &store->expiry[i];
  return NULL;
}

void tly_store_set_horizon(tly_store_t *store, tly_cf_t cf, int32_t partition,
                           int64_t horizon_ms) {
  expiry_t *expiry = expiry_of(store, cf);
  if (expiry && partition >= 0 && partition < TLY_STORE_MAX_PARTITIONS)
    atomic_store(&expiry->horizons[partition], horizon_ms);
}

int tly_store_compact(tly_store_t *store, tly_cf_t cf) {
  if (!store->cf[cf])
    return -1;
  rocksdb_compact_range_cf(store->db, store->cf[cf], NULL, 0, NULL, 0);
  return 0;
}

uint64_t tly_store_sst_bytes(tly_store_t *store, tly_cf_t cf) {
  if ((int)cf < 0 || cf >= TLY_CF__COUNT || !store->cf[cf])
    return 0;
  char *value = rocksdb_property_value_cf(store->db, store->cf[cf],
                                          "rocksdb.total-sst-files-size");
  uint64_t bytes = value ? strtoull(value, NULL, 10) : 0;
  rocksdb_free(value);
  return bytes;
}

/* Operations are appended to the batch buffer as this header followed by the
 * key and value bytes; the header is memcpy'd so no alignment is needed. */
enum { TLY_BATCH_PUT = 1, TLY_BATCH_DELETE = 2, TLY_BATCH_DELETE_RANGE = 3 };

typedef struct {
  unsigned char kind;
  unsigned char cf;
  size_t key_len;
  size_t value_len;
} tly_batch_op_t;

struct tly_store_batch {
  unsigned char *buf;
  size_t len;
  size_t cap;
  size_t count;
  /* Set when an append ran out of memory: put/delete cannot report it, so
   * the commit does, rather than writing a batch with a hole in it. */
  int out_of_memory;
};

/* The RocksDB batch a commit replays into: one per committing thread,
 * kept with its buffer across commits (rocksdb_writebatch_clear keeps the
 * capacity). Per thread, not per batch: the processor fills one batch
 * while its writer thread commits the other, and a buffer per batch was
 * grown (doubling, copying and page-faulting tens of MB) once for each of
 * the two; the writer's now grows once. Freed when its thread exits. */
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static int scratch_key_ok;

static void scratch_destroy(void *scratch) {
  rocksdb_writebatch_destroy(scratch);
}

static void scratch_key_init(void) {
  scratch_key_ok = pthread_key_create(&scratch_key, scratch_destroy) == 0;
}

static rocksdb_writebatch_t *thread_scratch(void) {
  pthread_once(&scratch_once, scratch_key_init);
  if (!scratch_key_ok)
    return NULL;
  rocksdb_writebatch_t *scratch = pthread_getspecific(scratch_key);
  if (!scratch) {
    scratch = rocksdb_writebatch_create();
    if (scratch && pthread_setspecific(scratch_key, scratch)) {
      rocksdb_writebatch_destroy(scratch);
      scratch = NULL;
    }
  }
  return scratch;
}

__attribute__((format(printf, 3, 4))) static void
tly_store_error(char *errstr, size_t errstr_size, const char *fmt, ...) {
  if (errstr == NULL || errstr_size == 0)
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(errstr, errstr_size, fmt, ap);
  va_end(ap);
}

const char *tly_store_cf_name(tly_cf_t cf) {
  if ((int)cf < 0 || cf >= TLY_CF__COUNT)
    return NULL;
  return tly_cf_table[cf].name;
}

/* Options for one column family (the first also carries the database-wide
 * settings; RocksDB ignores those in the per-family copies). The block-based
 * table options are copied into the table factory and the cache is
 * reference-counted, so neither needs to outlive this call. */
static rocksdb_options_t *
tly_store_options_new(rocksdb_cache_t *cache, int bloom,
                      const tly_store_memory_t *memory) {
  rocksdb_options_t *options = rocksdb_options_create();
  rocksdb_block_based_table_options_t *table =
      rocksdb_block_based_options_create();
  if (options == NULL || table == NULL)
    goto fail;

  rocksdb_options_set_create_if_missing(options, 1);
  rocksdb_options_set_create_missing_column_families(options, 1);
  rocksdb_options_increase_parallelism(options, TLY_STORE_BACKGROUND_JOBS);
  rocksdb_options_set_compaction_style(options, rocksdb_level_compaction);
  rocksdb_options_set_max_open_files(
      options, tly_files_store_tables(tly_files_raise_limit()));
  rocksdb_options_set_keep_log_file_num(options, TLY_STORE_KEEP_LOG_FILES);
  /* Every batch writes the small families (offsets, meta, outbox) too, and
   * a write-ahead log file can go only once every family with data in it
   * was flushed: without a bound, those rarely full memtables keep every
   * WAL file alive (measured: 0.9 GB of WAL after 2 M events). Past this
   * size RocksDB flushes the families that hold the oldest file. */
  rocksdb_options_set_max_total_wal_size(options, TLY_STORE_MAX_WAL_BYTES);
  compress_levels(options, TLY_STORE_UNCOMPRESSED_LEVELS);

  rocksdb_block_based_options_set_block_cache(table, cache);
  rocksdb_block_based_options_set_cache_index_and_filter_blocks(table, 1);
  rocksdb_block_based_options_set_cache_index_and_filter_blocks_with_high_priority(
      table, 1);
  /* Partitioned index and filters: a table's index and bloom filter are
   * split into blocks of TLY_STORE_METADATA_BLOCK bytes under a small top
   * level (pinned in the cache), so a point read loads one partition of
   * each, not the table's whole index and filter. With the block cache a
   * small share of the memory budget, a whole filter (1.2 MiB per million
   * keys) was evicted and read again from the file for nearly every
   * lookup of a spilled event id (measured: ~200 us a lookup). */
  rocksdb_block_based_options_set_index_type(
      table, rocksdb_block_based_table_index_type_two_level_index_search);
  rocksdb_block_based_options_set_partition_filters(table,
                                                    (unsigned char)bloom);
  rocksdb_block_based_options_set_metadata_block_size(table,
                                                      TLY_STORE_METADATA_BLOCK);
  rocksdb_block_based_options_set_pin_top_level_index_and_filter(table, 1);
  if (memory && memory->memtables_bytes) {
    /* RocksDB flushes the family holding the oldest memtable once the
     * written memtables pass 7/8 of db_write_buffer_size, a quarter of the
     * bound; it checks before a write, and a commit's WriteBatch lands
     * whole: the other 3/4 are for that write and for memtables being
     * flushed. A sixteenth of the bound per memtable (RocksDB's own floor
     * is 64 KiB), two per family. */
    size_t bound = memory->memtables_bytes;
    size_t each = bound / 16;
    if (each > TLY_STORE_MEMTABLE_MAX)
      each = TLY_STORE_MEMTABLE_MAX;
    rocksdb_options_set_db_write_buffer_size(options, bound / 4);
    rocksdb_options_set_write_buffer_size(options, each);
    rocksdb_options_set_max_write_buffer_number(options, 2);
  }
  if (bloom) {
    /* The table options take ownership of the policy (it is reset() into a
     * shared_ptr): destroying it here as well would be a double free. */
    rocksdb_block_based_options_set_filter_policy(
        table,
        rocksdb_filterpolicy_create_bloom_full(TLY_STORE_BLOOM_BITS_PER_KEY));
    /* The same for the memtable: most dedupe lookups are for ids never
     * seen, and a bloom filter answers those without walking the skiplist. */
    rocksdb_options_set_memtable_prefix_bloom_size_ratio(options, 0.1);
    rocksdb_options_set_memtable_whole_key_filtering(options, 1);
  }
  rocksdb_options_set_block_based_table_factory(options, table);
  rocksdb_block_based_options_destroy(table);
  return options;

fail:
  if (table != NULL)
    rocksdb_block_based_options_destroy(table);
  if (options != NULL)
    rocksdb_options_destroy(options);
  return NULL;
}

/* Whether the database in dir already has a column family called name.
 * Only used read-only: there, RocksDB cannot create a missing family, and
 * failing would make an older store uninspectable once a family is added. */
static int tly_store_has_cf(char **names, size_t count, const char *name) {
  for (size_t i = 0; i < count; i++)
    if (strcmp(names[i], name) == 0)
      return 1;
  return 0;
}

/* The fault injection of TALLY_FAULT_STORE_WRITE / TALLY_FAULT_STORE_READ
 * (tly_store.h). Announced on stderr: a store that fails on purpose must
 * never be mistaken for a broken disk. */
static void tly_store_faults_from_env(tly_store_t *store) {
  const char *write = getenv("TALLY_FAULT_STORE_WRITE");
  const char *read = getenv("TALLY_FAULT_STORE_READ");
  if (write && *write) {
    char *end = NULL;
    store->fault_write_from = strtol(write, &end, 10);
    store->fault_write_count =
        end && *end == ':' ? strtol(end + 1, NULL, 10) : 1;
    if (store->fault_write_from > 0 && store->fault_write_count > 0)
      fprintf(stderr,
              "store: fault injection (TALLY_FAULT_STORE_WRITE): commits "
              "%ld to %ld fail\n",
              store->fault_write_from,
              store->fault_write_from + store->fault_write_count - 1);
  }
  if (read && *read) {
    store->fault_read_at = strtol(read, NULL, 10);
    if (store->fault_read_at > 0)
      fprintf(stderr,
              "store: fault injection (TALLY_FAULT_STORE_READ): subject "
              "record read %ld fails\n",
              store->fault_read_at);
  }
}

tly_store_t *tly_store_open(const char *dir, int read_only, char *errstr,
                            size_t errstr_size) {
  return tly_store_open_sized(dir, read_only, NULL, errstr, errstr_size);
}

tly_store_t *tly_store_open_sized(const char *dir, int read_only,
                                  const tly_store_memory_t *sizes, char *errstr,
                                  size_t errstr_size) {
  tly_store_t *store = NULL;
  rocksdb_cache_t *cache = NULL;
  rocksdb_options_t *plain_options = NULL;
  rocksdb_options_t *bloom_options = NULL;
  char **existing = NULL;
  size_t existing_count = 0;
  char *err = NULL;

  /* Slot 0 is "default"; slot i + 1 is the tly_cf_t i, if opened. */
  const char *names[1 + TLY_CF__COUNT];
  const rocksdb_options_t *cf_options[1 + TLY_CF__COUNT];
  rocksdb_column_family_handle_t *handles[1 + TLY_CF__COUNT];
  int slot_of[TLY_CF__COUNT];
  int open_count = 0;

  if (dir == NULL || dir[0] == '\0') {
    tly_store_error(errstr, errstr_size, "store: no directory given");
    return NULL;
  }
  for (int i = 0; i < TLY_CF__COUNT; i++) {
    if (tly_cf_table[i].name == NULL) {
      tly_store_error(errstr, errstr_size,
                      "store: column family %d has no name", i);
      return NULL;
    }
  }

  tly_store_memory_t memory = {TLY_STORE_BLOCK_CACHE_BYTES, 0};
  if (sizes && sizes->block_cache_bytes)
    memory.block_cache_bytes =
        sizes->block_cache_bytes < TLY_STORE_BLOCK_CACHE_MIN
            ? TLY_STORE_BLOCK_CACHE_MIN
            : sizes->block_cache_bytes;
  if (sizes && sizes->memtables_bytes)
    memory.memtables_bytes = sizes->memtables_bytes < TLY_STORE_MEMTABLES_MIN
                                 ? TLY_STORE_MEMTABLES_MIN
                                 : sizes->memtables_bytes;
  store = calloc(1, sizeof(*store));
  cache = rocksdb_cache_create_lru(memory.block_cache_bytes);
  plain_options = tly_store_options_new(cache, 0, &memory);
  bloom_options = tly_store_options_new(cache, 1, &memory);
  int expiry_failed = store == NULL;
  static const tly_cf_t expiring[] = {TLY_CF_DEDUPE, TLY_CF_USAGE};
  for (size_t e = 0; e < 2 && !expiry_failed; e++) {
    expiry_t *expiry = &store->expiry[e];
    expiry->cf = expiring[e];
    expiry->options = tly_store_options_new(cache, 1, &memory);
    if (expiry->options && expiring[e] == TLY_CF_DEDUPE)
      write_mostly(expiry->options);
    expiry->horizons =
        malloc(sizeof(*expiry->horizons) * TLY_STORE_MAX_PARTITIONS);
    expiry->filter = rocksdb_compactionfilter_create(
        expiry, expiry_filter_destroy, expiry_filter, expiry_filter_name);
    expiry_failed = !expiry->options || !expiry->horizons || !expiry->filter;
    for (int i = 0; i < TLY_STORE_MAX_PARTITIONS && !expiry_failed; i++)
      atomic_init(&expiry->horizons[i], INT64_MIN);
    /* The options do not own the filter: the store destroys it after
     * close. */
    if (!expiry_failed)
      rocksdb_options_set_compaction_filter(expiry->options, expiry->filter);
  }
  if (store == NULL || cache == NULL || plain_options == NULL ||
      bloom_options == NULL || expiry_failed) {
    tly_store_error(errstr, errstr_size, "open %s: out of memory", dir);
    goto fail;
  }
  store->read_only = read_only != 0;
  atomic_init(&store->injected_failures, 0);
  atomic_init(&store->commits_seen, 0);
  atomic_init(&store->account_reads_seen, 0);
  if (!store->read_only)
    tly_store_faults_from_env(store);

  if (store->read_only) {
    existing =
        rocksdb_list_column_families(plain_options, dir, &existing_count, &err);
    if (err != NULL) {
      tly_store_error(errstr, errstr_size, "open %s read-only: %s", dir, err);
      goto fail;
    }
  }

  names[open_count] = "default";
  cf_options[open_count] = plain_options;
  open_count++;
  for (int i = 0; i < TLY_CF__COUNT; i++) {
    slot_of[i] = -1;
    if (store->read_only &&
        !tly_store_has_cf(existing, existing_count, tly_cf_table[i].name))
      continue;
    slot_of[i] = open_count;
    names[open_count] = tly_cf_table[i].name;
    cf_options[open_count] = expiry_of(store, (tly_cf_t)i)
                                 ? expiry_of(store, (tly_cf_t)i)->options
                             : tly_cf_table[i].point_reads ? bloom_options
                                                           : plain_options;
    open_count++;
  }

  if (store->read_only) {
    /* error_if_wal_file_exists = 0: the owning process keeps a live WAL;
     * replaying it is how a read-only open sees the latest commits. */
    store->db = rocksdb_open_for_read_only_column_families(
        plain_options, dir, open_count, names, cf_options, handles, 0, &err);
  } else {
    store->db = rocksdb_open_column_families(plain_options, dir, open_count,
                                             names, cf_options, handles, &err);
  }
  if (err != NULL || store->db == NULL) {
    tly_store_error(errstr, errstr_size, "open %s%s: %s", dir,
                    store->read_only ? " read-only" : "",
                    err != NULL ? err : "unknown error");
    store->db = NULL;
    goto fail;
  }
  store->default_cf = handles[0];
  for (int i = 0; i < TLY_CF__COUNT; i++)
    store->cf[i] = slot_of[i] >= 0 ? handles[slot_of[i]] : NULL;

  store->read_options = rocksdb_readoptions_create();
  store->write_sync = rocksdb_writeoptions_create();
  store->write_nosync = rocksdb_writeoptions_create();
  if (store->read_options == NULL || store->write_sync == NULL ||
      store->write_nosync == NULL) {
    tly_store_error(errstr, errstr_size, "open %s: out of memory", dir);
    goto fail;
  }
  rocksdb_writeoptions_set_sync(store->write_sync, 1);
  rocksdb_writeoptions_set_sync(store->write_nosync, 0);

  /* The database copied what it needs from the options; the cache lives on
   * through the table factories' references and the store's (its usage). */
  rocksdb_options_destroy(plain_options);
  rocksdb_options_destroy(bloom_options);
  store->cache = cache;
  store->memtables_bound = memory.memtables_bytes;
  if (existing != NULL)
    rocksdb_list_column_families_destroy(existing, existing_count);
  return store;

fail:
  rocksdb_free(err);
  if (existing != NULL)
    rocksdb_list_column_families_destroy(existing, existing_count);
  tly_store_close(store);
  if (plain_options != NULL)
    rocksdb_options_destroy(plain_options);
  if (bloom_options != NULL)
    rocksdb_options_destroy(bloom_options);
  if (cache != NULL)
    rocksdb_cache_destroy(cache);
  return NULL;
}

void tly_store_close(tly_store_t *store) {
  if (store == NULL)
    return;
  /* Handles must go before the database they belong to. */
  for (int i = 0; i < TLY_CF__COUNT; i++)
    if (store->cf[i] != NULL)
      rocksdb_column_family_handle_destroy(store->cf[i]);
  if (store->default_cf != NULL)
    rocksdb_column_family_handle_destroy(store->default_cf);
  if (store->db != NULL)
    rocksdb_close(store->db);
  if (store->read_options != NULL)
    rocksdb_readoptions_destroy(store->read_options);
  if (store->write_sync != NULL)
    rocksdb_writeoptions_destroy(store->write_sync);
  if (store->write_nosync != NULL)
    rocksdb_writeoptions_destroy(store->write_nosync);
  if (store->cache != NULL)
    rocksdb_cache_destroy(store->cache);
  for (size_t e = 0; e < sizeof(store->expiry) / sizeof(store->expiry[0]);
       e++) {
    if (store->expiry[e].options != NULL)
      rocksdb_options_destroy(store->expiry[e].options);
    if (store->expiry[e].filter != NULL)
      rocksdb_compactionfilter_destroy(store->expiry[e].filter);
    free(store->expiry[e].horizons);
  }
  free(store);
}

tly_store_batch_t *tly_store_batch_new(void) {
  return calloc(1, sizeof(tly_store_batch_t));
}

void tly_store_batch_destroy(tly_store_batch_t *batch) {
  if (batch == NULL)
    return;
  tly_huge_free(batch->buf, batch->cap);
  free(batch);
}

void tly_store_batch_clear(tly_store_batch_t *batch) {
  /* Keeps the buffer: the processor refills a batch of similar size every
   * round. */
  batch->len = 0;
  batch->count = 0;
  batch->out_of_memory = 0;
}

size_t tly_store_batch_count(const tly_store_batch_t *batch) {
  return batch->count;
}

size_t tly_store_batch_bytes(const tly_store_batch_t *batch) {
  return batch->len;
}

void tly_store_batch_reserve(tly_store_batch_t *batch, size_t bytes) {
  if (bytes <= batch->cap || batch->len)
    return;
  /* Grown, not replaced: the pages it has keep their place (tly_slab.h
   * moves them, nothing is copied), and only the new room faults in on
   * the fold thread, not the whole buffer again. */
  unsigned char *buf = tly_huge_realloc(batch->buf, batch->cap, bytes);
  if (buf == NULL)
    return;
  batch->buf = buf;
  batch->cap = bytes;
}

/* Room at the batch's end for an operation with up to value_len bytes of
 * value, its header and key written; the value's place, or NULL (out of
 * memory: recorded). The batch's length is not moved: batch_finish does
 * that, with the value's actual length. */
static unsigned char *batch_open(tly_store_batch_t *batch, int kind,
                                 tly_cf_t cf, const void *key, size_t key_len,
                                 size_t value_len) {
  if (batch->out_of_memory)
    return NULL;
  if ((int)cf < 0 || cf >= TLY_CF__COUNT) {
    /* A programming error; treated like a failed append so that the commit
     * refuses the batch instead of dropping one operation. */
    batch->out_of_memory = 1;
    return NULL;
  }
  tly_batch_op_t op = {(unsigned char)kind, (unsigned char)cf, key_len,
                       value_len};
  if (key_len > SIZE_MAX / 4 || value_len > SIZE_MAX / 4 ||
      sizeof(op) + key_len + value_len > SIZE_MAX - batch->len) {
    batch->out_of_memory = 1;
    return NULL;
  }
  size_t need = sizeof(op) + key_len + value_len;
  if (batch->len + need > batch->cap) {
    size_t cap = batch->cap ? batch->cap : 4096;
    while (cap < batch->len + need)
      cap = cap > SIZE_MAX / 2 ? batch->len + need : cap * 2;
    unsigned char *buf = tly_huge_realloc(batch->buf, batch->cap, cap);
    if (buf == NULL) {
      batch->out_of_memory = 1;
      return NULL;
    }
    batch->buf = buf;
    batch->cap = cap;
  }
  unsigned char *at = batch->buf + batch->len;
  memcpy(at, &op, sizeof(op));
  at += sizeof(op);
  if (key_len > 0)
    memcpy(at, key, key_len);
  return at + key_len;
}

/* The operation batch_open began, value_len bytes of value (at most what
 * it was opened with) in place: its header says so, and the batch holds
 * it. */
static void batch_finish(tly_store_batch_t *batch, size_t value_len) {
  tly_batch_op_t op;
  memcpy(&op, batch->buf + batch->len, sizeof(op));
  op.value_len = value_len;
  memcpy(batch->buf + batch->len, &op, sizeof(op));
  batch->len += sizeof(op) + op.key_len + value_len;
  batch->count++;
}

static void tly_store_batch_append(tly_store_batch_t *batch, int kind,
                                   tly_cf_t cf, const void *key, size_t key_len,
                                   const void *value, size_t value_len) {
  unsigned char *at = batch_open(batch, kind, cf, key, key_len, value_len);
  if (!at)
    return;
  if (value_len > 0)
    memcpy(at, value, value_len);
  batch_finish(batch, value_len);
}

unsigned char *tly_store_batch_put_open(tly_store_batch_t *batch, tly_cf_t cf,
                                        const void *key, size_t key_len,
                                        size_t max_value_len) {
  return batch_open(batch, TLY_BATCH_PUT, cf, key, key_len, max_value_len);
}

void tly_store_batch_put_close(tly_store_batch_t *batch, size_t value_len) {
  batch_finish(batch, value_len);
}

void tly_store_batch_put(tly_store_batch_t *batch, tly_cf_t cf, const void *key,
                         size_t key_len, const void *value, size_t value_len) {
  tly_store_batch_append(batch, TLY_BATCH_PUT, cf, key, key_len, value,
                         value_len);
}

void tly_store_batch_delete(tly_store_batch_t *batch, tly_cf_t cf,
                            const void *key, size_t key_len) {
  tly_store_batch_append(batch, TLY_BATCH_DELETE, cf, key, key_len, NULL, 0);
}

void tly_store_batch_delete_range(tly_store_batch_t *batch, tly_cf_t cf,
                                  const void *begin, size_t begin_len,
                                  const void *end, size_t end_len) {
  tly_store_batch_append(batch, TLY_BATCH_DELETE_RANGE, cf, begin, begin_len,
                         end, end_len);
}

void tly_store_batch_set_offset(tly_store_batch_t *batch, int32_t partition,
                                int64_t next_offset) {
  unsigned char key[4], value[8];
  tly_put_be32(key, (uint32_t)partition);
  tly_put_be64(value, (uint64_t)next_offset);
  tly_store_batch_put(batch, TLY_CF_OFFSETS, key, sizeof(key), value,
                      sizeof(value));
}

/* RocksDB's perf context counts every key comparison, block read and so on
 * in thread-local counters unless the calling thread turned the level
 * down. The shared library reaches them through __tls_get_addr and a TLS
 * init wrapper on each count: measured ~20% of a memtable insert's CPU
 * (bench_fold's writer thread: 2.0 -> 1.6 us per event). Nothing in tally
 * reads the counters. The level is per thread, so each thread that calls
 * into RocksDB turns it off on its first call; RocksDB's own background
 * threads keep theirs. */
static _Thread_local int perf_level_off;

static inline void tly_store_thread_init(void) {
  if (!perf_level_off) {
    rocksdb_set_perf_level(rocksdb_disable);
    perf_level_off = 1;
  }
}

/* Consumes one injected failure if any is pending. A compare-and-swap loop
 * rather than a plain decrement so that concurrent commits never take the
 * counter below zero or fail more commits than were asked for. */
static int tly_store_take_injected_failure(tly_store_t *store) {
  int pending = atomic_load(&store->injected_failures);
  while (pending > 0) {
    if (atomic_compare_exchange_weak(&store->injected_failures, &pending,
                                     pending - 1))
      return 1;
  }
  return 0;
}

void tly_store_fail_next_commits(tly_store_t *store, int count) {
  atomic_store(&store->injected_failures, count > 0 ? count : 0);
}

int tly_store_commit(tly_store_t *store, tly_store_batch_t *batch, int sync,
                     char *errstr, size_t errstr_size) {
  char *err = NULL;

  if (store->read_only) {
    tly_store_error(errstr, errstr_size, "commit: store is open read-only");
    return -1;
  }
  /* Checked before the empty-batch shortcut: a test asking for n failures
   * gets the next n commits to fail, whatever they carry. */
  if (tly_store_take_injected_failure(store)) {
    tly_store_error(errstr, errstr_size, "injected I/O error");
    return -1;
  }
  if (store->fault_write_from > 0) {
    long commit = atomic_fetch_add(&store->commits_seen, 1) + 1;
    if (commit >= store->fault_write_from &&
        commit - store->fault_write_from < store->fault_write_count) {
      tly_store_error(errstr, errstr_size,
                      "injected I/O error (TALLY_FAULT_STORE_WRITE, commit "
                      "%ld)",
                      commit);
      return -1;
    }
  }
  if (batch->out_of_memory) {
    tly_store_error(errstr, errstr_size,
                    "commit: out of memory while building the batch");
    return -1;
  }
  if (batch->count == 0)
    return 0;

  tly_store_thread_init();
  rocksdb_writebatch_t *scratch = thread_scratch();
  if (scratch == NULL) {
    tly_store_error(errstr, errstr_size, "commit: out of memory");
    return -1;
  }
  rocksdb_writebatch_clear(scratch);
  const unsigned char *at = batch->buf;
  const unsigned char *end = batch->buf + batch->len;
  while (at < end) {
    tly_batch_op_t op;
    memcpy(&op, at, sizeof(op));
    const char *key = (const char *)at + sizeof(op);
    const char *value = key + op.key_len;
    if (op.kind == TLY_BATCH_PUT)
      rocksdb_writebatch_put_cf(scratch, store->cf[op.cf], key, op.key_len,
                                value, op.value_len);
    else if (op.kind == TLY_BATCH_DELETE_RANGE)
      rocksdb_writebatch_delete_range_cf(scratch, store->cf[op.cf], key,
                                         op.key_len, value, op.value_len);
    else
      rocksdb_writebatch_delete_cf(scratch, store->cf[op.cf], key, op.key_len);
    at = (const unsigned char *)value + op.value_len;
  }

  rocksdb_write(store->db, sync ? store->write_sync : store->write_nosync,
                scratch, &err);
  if (err != NULL) {
    tly_store_error(errstr, errstr_size, "commit: %s", err);
    rocksdb_free(err);
    return -1;
  }
  return 0;
}

int tly_store_get(tly_store_t *store, tly_cf_t cf, const void *key,
                  size_t key_len, char **value, size_t *value_len, char *errstr,
                  size_t errstr_size) {
  char *err = NULL;

  *value = NULL;
  *value_len = 0;
  if ((int)cf < 0 || cf >= TLY_CF__COUNT) {
    tly_store_error(errstr, errstr_size, "get: no column family %d", (int)cf);
    return -1;
  }
  if (store->cf[cf] == NULL)
    return 0;
  if (store->fault_read_at > 0 && cf == TLY_CF_ACCOUNTS &&
      atomic_fetch_add(&store->account_reads_seen, 1) + 1 ==
          store->fault_read_at) {
    tly_store_error(errstr, errstr_size,
                    "get from accounts: injected read error "
                    "(TALLY_FAULT_STORE_READ)");
    return -1;
  }

  tly_store_thread_init();
  /* The pinned variant rather than rocksdb_get_cf(): the latter returns
   * malloc(0) for an empty value, which may be NULL and then reads as
   * "absent". A pinned slice is NULL exactly when the key is absent. */
  rocksdb_pinnableslice_t *slice = rocksdb_get_pinned_cf(
      store->db, store->read_options, store->cf[cf], key, key_len, &err);
  if (err != NULL) {
    tly_store_error(errstr, errstr_size, "get from %s: %s",
                    tly_cf_table[cf].name, err);
    rocksdb_free(err);
    return -1;
  }
  if (slice == NULL)
    return 0;

  size_t len = 0;
  const char *data = rocksdb_pinnableslice_value(slice, &len);
  /* One byte more, zeroed, so callers may treat text values as strings. */
  char *copy = malloc(len + 1);
  if (copy == NULL) {
    rocksdb_pinnableslice_destroy(slice);
    tly_store_error(errstr, errstr_size, "get from %s: out of memory",
                    tly_cf_table[cf].name);
    return -1;
  }
  if (len > 0)
    memcpy(copy, data, len);
  copy[len] = '\0';
  rocksdb_pinnableslice_destroy(slice);
  *value = copy;
  *value_len = len;
  return 1;
}

int tly_store_get_offset(tly_store_t *store, int32_t partition,
                         int64_t *next_offset, char *errstr,
                         size_t errstr_size) {
  unsigned char key[4];
  char *value = NULL;
  size_t value_len = 0;

  tly_put_be32(key, (uint32_t)partition);
  int found = tly_store_get(store, TLY_CF_OFFSETS, key, sizeof(key), &value,
                            &value_len, errstr, errstr_size);
  if (found != 1)
    return found;
  if (value_len != 8) {
    /* Resuming from a guessed offset would skip or repeat input: refuse. */
    tly_store_error(errstr, errstr_size,
                    "offset of partition %d is corrupt (%zu bytes, want 8)",
                    (int)partition, value_len);
    tly_store_free(value);
    return -1;
  }
  *next_offset = (int64_t)tly_get_be64((const unsigned char *)value);
  tly_store_free(value);
  return 1;
}

/* The smallest key greater than every key starting with prefix: the prefix
 * with trailing 0xff bytes dropped and the last remaining byte incremented.
 * Returns its length, 0 when there is none (prefix all 0xff). */
static size_t tly_prefix_successor(const unsigned char *prefix,
                                   size_t prefix_len, unsigned char *out) {
  size_t len = prefix_len;
  while (len > 0 && prefix[len - 1] == 0xff)
    len--;
  if (len == 0)
    return 0;
  memcpy(out, prefix, len);
  out[len - 1]++;
  return len;
}

int tly_store_scan_prefix(tly_store_t *store, tly_cf_t cf, const void *prefix,
                          size_t prefix_len, tly_store_scan_cb cb, void *opaque,
                          char *errstr, size_t errstr_size) {
  rocksdb_readoptions_t *options = NULL;
  rocksdb_iterator_t *iter = NULL;
  unsigned char *upper = NULL;
  char *err = NULL;
  int rc = -1;

  if ((int)cf < 0 || cf >= TLY_CF__COUNT) {
    tly_store_error(errstr, errstr_size, "scan: no column family %d", (int)cf);
    return -1;
  }
  if (store->cf[cf] == NULL)
    return 0;
  if (prefix == NULL)
    prefix_len = 0;
  tly_store_thread_init();

  options = rocksdb_readoptions_create();
  if (options == NULL)
    goto oom;
  if (prefix_len > 0) {
    /* The bound lets RocksDB stop at the end of the range by itself instead
     * of stepping over tombstones and into the next file past it. The C API
     * keeps only a pointer to the bound, so it must outlive the iterator. */
    upper = malloc(prefix_len);
    if (upper == NULL)
      goto oom;
    size_t upper_len = tly_prefix_successor(prefix, prefix_len, upper);
    if (upper_len > 0)
      rocksdb_readoptions_set_iterate_upper_bound(options, (const char *)upper,
                                                  upper_len);
  }

  iter = rocksdb_create_iterator_cf(store->db, options, store->cf[cf]);
  if (iter == NULL)
    goto oom;
  if (prefix_len > 0)
    rocksdb_iter_seek(iter, prefix, prefix_len);
  else
    rocksdb_iter_seek_to_first(iter);

  for (; rocksdb_iter_valid(iter); rocksdb_iter_next(iter)) {
    size_t key_len = 0, value_len = 0;
    const char *key = rocksdb_iter_key(iter, &key_len);
    /* Redundant while the bound is set (every key in [prefix, successor)
     * has the prefix), but a prefix of only 0xff bytes has no bound, and the
     * check keeps the contract independent of the optimisation. */
    if (prefix_len > 0 &&
        (key_len < prefix_len || memcmp(key, prefix, prefix_len) != 0))
      break;
    const char *value = rocksdb_iter_value(iter, &value_len);
    if (cb(opaque, key, key_len, value, value_len) != 0)
      break;
  }
  rocksdb_iter_get_error(iter, &err);
  if (err != NULL) {
    tly_store_error(errstr, errstr_size, "scan of %s: %s",
                    tly_cf_table[cf].name, err);
    rocksdb_free(err);
    goto done;
  }
  rc = 0;
  goto done;

oom:
  tly_store_error(errstr, errstr_size, "scan of %s: out of memory",
                  tly_cf_table[cf].name);
done:
  if (iter != NULL)
    rocksdb_iter_destroy(iter);
  if (options != NULL)
    rocksdb_readoptions_destroy(options);
  free(upper);
  return rc;
}

/* Values from tly_store_get() are our own malloc() copies; rocksdb_free() is
 * free() too, so anything either returns may be freed here. */
void tly_store_free(void *ptr) { free(ptr); }

void tly_store_memory_usage(tly_store_t *store, tly_store_memory_usage_t *out) {
  memset(out, 0, sizeof(*out));
  if (store == NULL || store->db == NULL)
    return;
  out->block_cache_bytes = rocksdb_cache_get_usage(store->cache);
  out->block_cache_capacity = rocksdb_cache_get_capacity(store->cache);
  out->memtables_bound = store->memtables_bound;
  for (int i = 0; i <= TLY_CF__COUNT; i++) {
    rocksdb_column_family_handle_t *cf =
        i == TLY_CF__COUNT ? store->default_cf : store->cf[i];
    uint64_t bytes = 0;
    if (cf != NULL &&
        rocksdb_property_int_cf(store->db, cf, "rocksdb.size-all-mem-tables",
                                &bytes) == 0)
      out->memtables_bytes += bytes;
  }
}
