/*
 * tly_state_cache.h - a small read cache in front of tly_state, for the
 * HTTP port's hot path (the quota pre-check).
 *
 * Entries are tagged with the processor's commit count at the time they
 * were read (tly_processor_stats().batches_committed, bumped after every
 * commit is readable). A lookup with a newer count misses, so the cache
 * never shows state older than the last commit the caller saw: every
 * commit invalidates every entry, which is cheap (nothing is walked) and
 * right (a batch may touch any subject). Unknown subjects are cached too,
 * since finding that a subject is unknown searches every partition.
 *
 * A fixed number of entries in sets of 4, each set with its own lock; a
 * subject maps to one set by hash and replaces an empty, stale or the
 * oldest-claimed entry there. Entries are allocated on first use (about
 * 700 bytes plus the rows), so the default 65,536 entries cost under 1 MiB
 * empty. Thread-safe.
 */
#ifndef TLY_STATE_CACHE_H
#define TLY_STATE_CACHE_H

#include "tly_state.h"

#include <stddef.h>
#include <stdint.h>

typedef struct tly_state_cache tly_state_cache_t;

/* slots: rounded up to a power of two; 0 gives a default (65536). NULL on
 * OOM. */
tly_state_cache_t *tly_state_cache_new(size_t slots);
void tly_state_cache_free(tly_state_cache_t *cache);

/* Called to learn the commit count; must increase after every commit. */
typedef uint64_t (*tly_commit_count_fn)(void *opaque);

/*
 * tly_state_find_subject through the cache. *out is the caller's (clear it
 * with tly_state_subject_clear). 1 found, 0 not found, -1 error (errstr).
 * The read is retried (up to 3 times) when a commit lands during it, so
 * the account and the rows come from the same commit. A cached answer
 * found on a partition readable no longer refuses is read again.
 */
int tly_state_cache_find(tly_state_cache_t *cache, tly_store_t *store,
                         int32_t partition_count,
                         tly_state_readable_fn readable, void *readable_opaque,
                         tly_commit_count_fn count, void *count_opaque,
                         tly_subject_kind_t kind, const char *id,
                         tly_subject_state_t *out, char *errstr,
                         size_t errstr_size);

typedef struct {
  uint64_t hits, misses;
} tly_state_cache_stats_t;
void tly_state_cache_stats(tly_state_cache_t *cache,
                           tly_state_cache_stats_t *stats);

/* The memory the cache holds (sets, entries, their copies' rows), in
 * bytes; and how many slots fit in bytes (for tly_state_cache_new; 1024
 * at least). */
size_t tly_state_cache_bytes(tly_state_cache_t *cache);
size_t tly_state_cache_slots_for(size_t bytes);

#endif
