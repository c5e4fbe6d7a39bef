/*
 * tly_dedupe_filter.h - an in-memory filter of one partition's spilled
 * event ids (tly_dedupe.h, "Spilling"): it answers "surely new" or "look
 * it up" for an id missing from memory, so a new id of a partition that
 * spilled costs no RocksDB read. It never answers "duplicate": a false
 * positive only costs the read (the store compares the whole id), so no
 * event is ever dropped on one.
 *
 * Blocked Bloom filters (one 64-byte block per id, 7 bits in it, 12 bits
 * per id: ~0.8 % false positives at capacity), in slices: ids go into the
 * newest slice until it holds its capacity, then a new slice with room for
 * twice the ids held opens (so a partition's filter needs no count up front and
 * no rebuild; a lookup reads one cache line per slice, a handful at most). A
 * slice remembers the newest event time it holds and is forgotten whole
 * once the dedupe horizon passes it (its ids expired), so the filter
 * follows the window. Memory: 1.5 bytes per id of room, up to about
 * three times that while the newest slice fills.
 *
 * Holds hashes only, never ids; no I/O (the processor fills it as it
 * spills and, at assignment, by streaming the partition's spilled keys).
 */
#ifndef TLY_DEDUPE_FILTER_H
#define TLY_DEDUPE_FILTER_H

#include <stddef.h>
#include <stdint.h>

typedef struct tly_dedupe_filter tly_dedupe_filter_t;

tly_dedupe_filter_t *tly_dedupe_filter_new(void);
void tly_dedupe_filter_free(tly_dedupe_filter_t *filter);

/* Adds an id spilled with its event time. -1: out of memory (the filter
 * then answers "look it up" for every id: still exact). */
int tly_dedupe_filter_add(tly_dedupe_filter_t *filter, const char *id,
                          size_t len, int64_t occurred_at_ms);

/* 0: the id was surely never added (or only in a forgotten slice); 1: it
 * may have been: look it up. */
int tly_dedupe_filter_maybe(const tly_dedupe_filter_t *filter, const char *id,
                            size_t len);

/* Moves every slice of from into into (after its own: later adds go to
 * from's newest slice) and frees from: into then answers "look it up" for
 * every id either held. Past the slice bound, or with either broken, into
 * answers "look it up" for all (still exact). */
void tly_dedupe_filter_merge(tly_dedupe_filter_t *into,
                             tly_dedupe_filter_t *from);

/* Forgets the slices whose newest id is older than horizon_ms. */
void tly_dedupe_filter_expire(tly_dedupe_filter_t *filter, int64_t horizon_ms);

/* The filter as bytes, to be kept beside the ids it covers (its
 * snapshot, tly_filter_build.c) and read back by tly_dedupe_filter_decode.
 * A malloc'd buffer in *out and its length, the encoding starting after
 * `lead` bytes left for the caller (its own header: no second copy of a
 * large filter); -1 when the filter is broken (out of memory once:
 * nothing worth keeping) or memory runs out. The words are in this
 * machine's byte order; the encoding says which, and a decode elsewhere
 * refuses it. */
int tly_dedupe_filter_encode(const tly_dedupe_filter_t *filter, size_t lead,
                             unsigned char **out, size_t *len);

/* A filter from tly_dedupe_filter_encode's bytes; NULL when they are not
 * one (another version or byte order, truncated, a slice that does not
 * add up) or memory runs out. */
tly_dedupe_filter_t *tly_dedupe_filter_decode(const void *bytes, size_t len);

/* Ids added to the slices held; bytes held. */
size_t tly_dedupe_filter_count(const tly_dedupe_filter_t *filter);
size_t tly_dedupe_filter_bytes(const tly_dedupe_filter_t *filter);

#endif
