/*
 * tly_overlay.h - the in-memory overlay of the state one batch touches.
 * Owns the batch's in-memory state; never reads or writes RocksDB itself
 * (the processor loads and commits it).
 *
 * The processor folds a batch into this overlay and then writes each dirty
 * record once (RocksDB writes are the first wall: one put per dirty key per
 * batch, not per event). Keys are (column family, RocksDB key bytes). Each
 * entry lives at a stable address until the next reset, so the fold may
 * hold a pointer to an account while it asks for a row.
 */
#ifndef TLY_OVERLAY_H
#define TLY_OVERLAY_H

#include "tly_billing.h"
#include "tly_store.h"

#include <stddef.h>
#include <stdint.h>

/* An hourly bucket held by an entry, and where its stored copy lives:
 * inside the subject record (the subject's newest hour) or in the hour's
 * own key. An hour present in an entry is always present with all its
 * buckets, so the hour's key can be rewritten from memory. */
typedef struct {
  uint64_t flushed;        /* the batch (submit number) that last wrote the
                              hour's key from memory; 0: none */
  unsigned char dirty;     /* changed in the open batch */
  unsigned char in_record; /* stored inside the subject record */
  uint16_t size;           /* the bytes allocated for it (see below) */
  /* Last, and allocated only up to its name's NUL: a bucket named
   * "ai_tokens" takes 80 bytes, not sizeof (240; the name's room is 176).
   * Never copied whole. */
  tly_subject_bucket_t bucket;
} tly_overlay_bucket_t;

#define TLY_OVERLAY_INLINE 8

typedef struct tly_overlay_entry {
  struct tly_slab *slab; /* its overlay's: where its rows and buckets live */
  tly_cf_t cf;
  char *key; /* in the entry's own allocation, after it */
  size_t key_len;
  int stored;               /* the key existed in RocksDB when loaded */
  int dirty;                /* write it at commit */
  int64_t stored_cycle_end; /* the time indexed in the cycle-end index
                               (tly_subject_due_ms), if stored */
  tly_account_t account;
  /* The subject's usage rows, each allocated on its own so that a row
   * handed to the fold keeps its address while others are added. */
  tly_subject_row_t **rows;
  size_t row_count, row_cap;
  size_t row_bytes; /* the rows' sizes, summed (each up to its name) */
  /* Beside each row and bucket pointer, a tag of what names it (rows:
   * cycle and feature hashed; buckets: the hour in the high half, the
   * name's hash in the low): a lookup compares tags in one array and reads
   * only the row or bucket whose tag matches, instead of every row and
   * bucket it passes (each allocated apart, each a cache miss). */
  uint64_t *row_tags;
  /* Its buckets in memory: the newest hour's, and older hours' while the
   * fold works on them. Allocated one by one, like rows. */
  tly_overlay_bucket_t **buckets;
  size_t bucket_count, bucket_cap;
  size_t bucket_bytes; /* the buckets' sizes, summed */
  uint64_t *bucket_tags;
  /* The subject's open reservations (tly_holds.h), stored in its record. */
  tly_holds_t holds;
  /* Its unique_count values (tly_meters.h), stored in its record. */
  tly_distinct_sets_t distinct;
  /* Its read marks (tly_read_marks.h), stored in its record; NULL until
   * it has some (most subjects never read an alert: 512 bytes each). */
  tly_read_marks_t *read_marks;
  /* The processor's contributions of this subject (consumers/
   * tly_contributions.c), in slot [batch & 1]: the batch's number and its
   * newest entry in that batch's log (offset + 1; 0: none). Opaque here. */
  uint64_t contrib_batch[2];
  uint32_t contrib_head[2];
  /* The bytes counted for it in the overlay's total (tly_overlay_account),
   * and the eviction clock's mark: found since the hand last passed. */
  size_t accounted;
  unsigned char referenced;
  /* The first TLY_OVERLAY_INLINE rows' and buckets' pointers and tags live
   * here, in the entry (fetched with it: tly_overlay_prefetch_entry);
   * rows, row_tags, buckets and bucket_tags point at these until they
   * outgrow them, then at arrays of their own. */
  tly_subject_row_t *rows_inline[TLY_OVERLAY_INLINE];
  uint64_t row_tags_inline[TLY_OVERLAY_INLINE];
  tly_overlay_bucket_t *buckets_inline[TLY_OVERLAY_INLINE];
  uint64_t bucket_tags_inline[TLY_OVERLAY_INLINE];
} tly_overlay_entry_t;

/* A slot keeps its entry's hash beside the pointer: a probe passes over
 * other keys without touching their entries (each a cache miss). */
typedef struct {
  uint64_t hash; /* 0: empty (hashes are never 0) */
  tly_overlay_entry_t *entry;
} tly_overlay_slot_t;

typedef struct {
  tly_overlay_slot_t *slots;
  size_t capacity; /* power of two */
  size_t count;
  size_t entry_bytes; /* the entries' accounted bytes, summed */
  size_t hand;        /* the eviction clock's position (a slot) */
  /* Entries, rows and buckets, from huge pages (base/tly_slab.h); the
   * slots too, once they take 2 MiB. */
  struct tly_slab *slab;
} tly_overlay_t;

void tly_overlay_init(tly_overlay_t *overlay);
/* Frees every entry and the table. */
void tly_overlay_free(tly_overlay_t *overlay);
/* Drops every entry, keeping the table's memory for the next batch. */
void tly_overlay_reset(tly_overlay_t *overlay);
/* Gives the pages that only freed entries, rows and buckets held back to
 * the system (tly_slab_purge); the bytes. Safe from another thread while
 * the owner folds: the slab locks itself. */
size_t tly_overlay_purge(tly_overlay_t *overlay);

/* Evicts entries for which keep() returns 0, with a clock sweep (an entry
 * found since the hand last passed it gets a second chance), until the
 * overlay holds at most max_bytes (tly_overlay_bytes) and max_count
 * entries, or every entry has been passed twice. Freed entries' slots are
 * refilled by backward shifting (no tombstones); other entries keep their
 * addresses. The cost is in proportion to what is evicted: a cache kept
 * at its bound after every commit frees a few entries at a time instead
 * of most of them at once. Returns how many were evicted. */
size_t tly_overlay_evict(tly_overlay_t *overlay, size_t max_bytes,
                         size_t max_count,
                         int (*keep)(tly_overlay_entry_t *entry));

/* The entry for (cf, key), or NULL. Marks it referenced (the clock). */
tly_overlay_entry_t *tly_overlay_find(tly_overlay_t *overlay, tly_cf_t cf,
                                      const char *key, size_t key_len);
/* The entry's row for (cycle, feature), added zeroed when absent; NULL on
 * out of memory. */
tly_subject_row_t *tly_overlay_row(tly_overlay_entry_t *entry,
                                   int64_t cycle_start_ms, const char *feature);
/* Frees the rows for which keep() returns 0. */
void tly_overlay_prune_rows(tly_overlay_entry_t *entry,
                            int (*keep)(const tly_account_t *account,
                                        const tly_subject_row_t *row));

/* The entry's bucket for (hour, feature), added zeroed and clean when
 * absent; NULL on out of memory. */
tly_overlay_bucket_t *tly_overlay_bucket(tly_overlay_entry_t *entry,
                                         int32_t hour, const char *feature);
/* Whether the entry holds buckets of hour. */
int tly_overlay_has_hour(const tly_overlay_entry_t *entry, int32_t hour);
/* Frees the buckets for which keep() returns 0 (it must answer alike for
 * all buckets of one hour). */
void tly_overlay_prune_buckets(tly_overlay_entry_t *entry,
                               int (*keep)(const tly_overlay_bucket_t *bucket,
                                           void *opaque),
                               void *opaque);

/* Hints for a lookup coming soon (the processor looks a few records ahead:
 * with a million cached subjects each lookup is otherwise two cache
 * misses, the slot and the entry). The hash of (cf, key); the slot's cache
 * line fetched; and, once that line is in, the entry's first lines. */
uint64_t tly_overlay_hash(tly_cf_t cf, const char *key, size_t key_len);
void tly_overlay_prefetch_slot(const tly_overlay_t *overlay, uint64_t hash);
void tly_overlay_prefetch_entry(const tly_overlay_t *overlay, uint64_t hash);
/* Once the entry is in: its rows and buckets (allocated one by one),
 * fetched, and the first word of each read (waits for them, all at once). */
void tly_overlay_prefetch_rows(const tly_overlay_t *overlay, uint64_t hash);
void tly_overlay_prefetch_rows_of(const tly_overlay_entry_t *entry);

/* Inserts a zeroed, clean entry for a key not yet present; NULL on OOM. */
tly_overlay_entry_t *tly_overlay_insert(tly_overlay_t *overlay, tly_cf_t cf,
                                        const char *key, size_t key_len);

/* The memory the overlay holds (table, entries, their rows, buckets,
 * holds and unique_count sets; allocator overhead not counted), in bytes,
 * as last accounted: an entry is counted when inserted and again at each
 * tly_overlay_account. O(1). */
size_t tly_overlay_bytes(const tly_overlay_t *overlay);
/* Counts the entry's memory as it is now (after loading it, or after
 * writing it: a changed entry is recounted there). */
void tly_overlay_account(tly_overlay_t *overlay, tly_overlay_entry_t *entry);
/* The entry's memory now, and the overlay's by walking every entry (what
 * the O(1) total is held to in the tests). */
size_t tly_overlay_entry_bytes(const tly_overlay_entry_t *entry);
size_t tly_overlay_bytes_walked(const tly_overlay_t *overlay);

#endif
