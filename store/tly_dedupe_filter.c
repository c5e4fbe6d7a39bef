/*
 * tly_dedupe_filter.c - sliced blocked Bloom filters of spilled event ids
 * (see tly_dedupe_filter.h).
 */
#include "tly_dedupe_filter.h"

#include "tly_hash.h"

#include "tly_bytes.h"

#include <stdlib.h>
#include <string.h>

#define FIRST_CAPACITY 4096 /* ids in the first slice: 5 KiB */
#define BITS_PER_ID 12
#define BLOCK_BITS 512
#define PROBES 7
#define MAX_SLICES 32

typedef struct {
  uint64_t *blocks; /* BLOCK_BITS / 64 words per block */
  size_t block_count;
  size_t capacity, count;
  int64_t newest_ms;
} slice_t;

struct tly_dedupe_filter {
  slice_t slices[MAX_SLICES]; /* oldest first */
  size_t slice_count;
  int broken; /* out of memory once: everything "maybe" */
};

/* Another seed than the index's (base/tly_hash.h): an id's slot in the
 * table and its block here are independent. */
static uint64_t hash_id(const char *id, size_t len) {
  return tly_hash_bytes(id, len, TLY_HASH_SEED_FILTER);
}

tly_dedupe_filter_t *tly_dedupe_filter_new(void) {
  return calloc(1, sizeof(tly_dedupe_filter_t));
}

void tly_dedupe_filter_free(tly_dedupe_filter_t *filter) {
  if (!filter)
    return;
  for (size_t i = 0; i < filter->slice_count; i++)
    free(filter->slices[i].blocks);
  free(filter);
}

static const uint64_t *block_of(const slice_t *slice, uint64_t hash) {
  size_t block = (size_t)(((hash >> 32) * slice->block_count) >> 32);
  return slice->blocks + block * (BLOCK_BITS / 64);
}

/* PROBES bit positions in the block, 9 bits each from the hash's low
 * half and its mix. */
static int block_has(const uint64_t *words, uint64_t hash) {
  uint64_t bits = hash * 0x9E3779B97F4A7C15ULL ^ (hash >> 17);
  for (int i = 0; i < PROBES; i++, bits >>= 9) {
    unsigned bit = (unsigned)(bits & (BLOCK_BITS - 1));
    if (!(words[bit / 64] & (1ULL << (bit % 64))))
      return 0;
  }
  return 1;
}

static void block_set(uint64_t *words, uint64_t hash) {
  uint64_t bits = hash * 0x9E3779B97F4A7C15ULL ^ (hash >> 17);
  for (int i = 0; i < PROBES; i++, bits >>= 9) {
    unsigned bit = (unsigned)(bits & (BLOCK_BITS - 1));
    words[bit / 64] |= 1ULL << (bit % 64);
  }
}

static slice_t *open_slice(tly_dedupe_filter_t *filter) {
  slice_t *last =
      filter->slice_count ? &filter->slices[filter->slice_count - 1] : NULL;
  if (last && last->count < last->capacity)
    return last;
  if (filter->slice_count == MAX_SLICES)
    return NULL;
  /* Twice the ids held: room grows with the partition's spilled ids (a
   * few slices for millions) and stays put once expiry keeps pace. */
  size_t capacity = 2 * tly_dedupe_filter_count(filter);
  if (capacity < FIRST_CAPACITY)
    capacity = FIRST_CAPACITY;
  if (capacity > ((size_t)1 << 34))
    capacity = (size_t)1 << 34;
  size_t blocks = capacity * BITS_PER_ID / BLOCK_BITS + 1;
  uint64_t *words = malloc(blocks * (BLOCK_BITS / 8));
  if (!words)
    return NULL;
  tly_zero_fill(words, blocks * (BLOCK_BITS / 8));
  slice_t *slice = &filter->slices[filter->slice_count++];
  *slice = (slice_t){words, blocks, capacity, 0, INT64_MIN};
  return slice;
}

int tly_dedupe_filter_add(tly_dedupe_filter_t *filter, const char *id,
                          size_t len, int64_t occurred_at_ms) {
  if (filter->broken)
    return -1;
  slice_t *slice = open_slice(filter);
  if (!slice) {
    filter->broken = 1;
    return -1;
  }
  uint64_t hash = hash_id(id, len);
  block_set((uint64_t *)block_of(slice, hash), hash);
  slice->count++;
  if (occurred_at_ms > slice->newest_ms)
    slice->newest_ms = occurred_at_ms;
  return 0;
}

int tly_dedupe_filter_maybe(const tly_dedupe_filter_t *filter, const char *id,
                            size_t len) {
  if (filter->broken)
    return 1;
  uint64_t hash = hash_id(id, len);
  for (size_t i = filter->slice_count; i-- > 0;)
    if (filter->slices[i].count &&
        block_has(block_of(&filter->slices[i], hash), hash))
      return 1;
  return 0;
}

void tly_dedupe_filter_merge(tly_dedupe_filter_t *into,
                             tly_dedupe_filter_t *from) {
  if (from->broken || into->slice_count + from->slice_count > MAX_SLICES)
    into->broken = 1;
  if (!into->broken) {
    memcpy(into->slices + into->slice_count, from->slices,
           from->slice_count * sizeof(*from->slices));
    into->slice_count += from->slice_count;
    from->slice_count = 0;
  }
  tly_dedupe_filter_free(from);
}

void tly_dedupe_filter_expire(tly_dedupe_filter_t *filter, int64_t horizon_ms) {
  size_t gone = 0;
  /* Any slice, not only the oldest: slices filled at assignment (ids in
   * key order) hold every age; later ones hold spilled blobs, oldest
   * first. The newest slice stays open for more. */
  for (size_t i = 0; i + 1 < filter->slice_count; i++) {
    slice_t *slice = &filter->slices[i];
    if (slice->count && slice->newest_ms < horizon_ms) {
      free(slice->blocks);
      slice->blocks = NULL;
      slice->count = 0;
      gone++;
    }
  }
  if (!gone)
    return;
  size_t kept = 0;
  for (size_t i = 0; i < filter->slice_count; i++)
    if (filter->slices[i].blocks)
      filter->slices[kept++] = filter->slices[i];
  filter->slice_count = kept;
}

/* The encoding: a header, then per slice its four figures and its words.
 * The check word reads back only in the byte order that wrote it. */
#define ENCODING_MAGIC "TDF1"
#define ENCODING_CHECK 0x0102030405060708ULL
#define HEADER_BYTES (4 + 8 + 4)
#define SLICE_HEADER_BYTES (4 * 8)

int tly_dedupe_filter_encode(const tly_dedupe_filter_t *filter, size_t lead,
                             unsigned char **out, size_t *len) {
  *out = NULL;
  *len = 0;
  if (filter->broken)
    return -1;
  size_t bytes = lead + HEADER_BYTES;
  for (size_t i = 0; i < filter->slice_count; i++)
    bytes +=
        SLICE_HEADER_BYTES + filter->slices[i].block_count * (BLOCK_BITS / 8);
  unsigned char *buf = malloc(bytes), *at = buf + lead;
  if (!buf)
    return -1;
  uint64_t check = ENCODING_CHECK;
  uint32_t slices = (uint32_t)filter->slice_count;
  memcpy(at, ENCODING_MAGIC, 4);
  memcpy(at + 4, &check, 8);
  memcpy(at + 12, &slices, 4);
  at += HEADER_BYTES;
  for (size_t i = 0; i < filter->slice_count; i++) {
    const slice_t *slice = &filter->slices[i];
    uint64_t figures[4] = {slice->capacity, slice->count,
                           (uint64_t)slice->newest_ms, slice->block_count};
    memcpy(at, figures, sizeof(figures));
    at += SLICE_HEADER_BYTES;
    size_t words = slice->block_count * (BLOCK_BITS / 8);
    memcpy(at, slice->blocks, words);
    at += words;
  }
  *out = buf;
  *len = bytes;
  return 0;
}

tly_dedupe_filter_t *tly_dedupe_filter_decode(const void *bytes, size_t len) {
  const unsigned char *at = bytes, *end = at + len;
  uint64_t check;
  uint32_t slices;
  if (len < HEADER_BYTES || memcmp(at, ENCODING_MAGIC, 4))
    return NULL;
  memcpy(&check, at + 4, 8);
  memcpy(&slices, at + 12, 4);
  if (check != ENCODING_CHECK || slices > MAX_SLICES)
    return NULL;
  at += HEADER_BYTES;
  tly_dedupe_filter_t *filter = tly_dedupe_filter_new();
  if (!filter)
    return NULL;
  for (uint32_t i = 0; i < slices; i++) {
    uint64_t figures[4];
    if ((size_t)(end - at) < SLICE_HEADER_BYTES)
      goto bad;
    memcpy(figures, at, sizeof(figures));
    at += SLICE_HEADER_BYTES;
    uint64_t capacity = figures[0], count = figures[1], blocks = figures[3];
    /* The block count open_slice gives that capacity, and no more ids
     * than it holds: anything else is not a slice this code wrote. */
    if (capacity == 0 || capacity > ((uint64_t)1 << 34) || count > capacity ||
        blocks != capacity * BITS_PER_ID / BLOCK_BITS + 1 ||
        (size_t)(end - at) / (BLOCK_BITS / 8) < blocks)
      goto bad;
    size_t words = (size_t)blocks * (BLOCK_BITS / 8);
    uint64_t *copy = malloc(words);
    if (!copy)
      goto bad;
    memcpy(copy, at, words);
    at += words;
    filter->slices[filter->slice_count++] =
        (slice_t){copy, (size_t)blocks, (size_t)capacity, (size_t)count,
                  (int64_t)figures[2]};
  }
  if (at != end)
    goto bad;
  return filter;
bad:
  tly_dedupe_filter_free(filter);
  return NULL;
}

size_t tly_dedupe_filter_count(const tly_dedupe_filter_t *filter) {
  size_t count = 0;
  for (size_t i = 0; i < filter->slice_count; i++)
    count += filter->slices[i].count;
  return count;
}

size_t tly_dedupe_filter_bytes(const tly_dedupe_filter_t *filter) {
  size_t bytes = sizeof(*filter);
  for (size_t i = 0; i < filter->slice_count; i++)
    bytes += filter->slices[i].block_count * (BLOCK_BITS / 8);
  return bytes;
}
