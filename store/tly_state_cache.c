/*
 * tly_state_cache.c - the HTTP port's read cache (see tly_state_cache.h).
 */
#include "tly_state_cache.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Longer subjects are not cached (they are read every time). */
#define CACHE_KEY_MAX 160

typedef struct {
  uint64_t commit_count;
  tly_subject_kind_t kind;
  char id[CACHE_KEY_MAX];
  int found;
  tly_subject_state_t state; /* rows owned by the entry */
} entry_t;

/* A set of WAYS entries under one lock (4-way set-associative: subjects
 * whose hashes collide do not evict each other). Entries are allocated on
 * first use, so a large table costs little until subjects fill it. */
#define WAYS 4
typedef struct {
  pthread_mutex_t lock;
  unsigned next_victim;
  entry_t *entries[WAYS];
} slot_t;

struct tly_state_cache {
  size_t mask;
  slot_t *slots;
  atomic_uint_least64_t hits, misses;
  atomic_size_t bytes; /* the sets, the entries and their copies' items */
};

static size_t state_bytes(const tly_subject_state_t *state) {
  return state->row_count * sizeof(*state->rows) +
         state->bucket_count * sizeof(*state->buckets) +
         state->hold_count * sizeof(*state->holds);
}

tly_state_cache_t *tly_state_cache_new(size_t slots) {
  size_t count = 1;
  size_t sets = (slots ? slots : 65536) / WAYS;
  while (count < sets && count < ((size_t)1 << 22))
    count <<= 1;
  tly_state_cache_t *cache = calloc(1, sizeof(*cache));
  if (!cache)
    return NULL;
  cache->slots = calloc(count, sizeof(*cache->slots));
  if (!cache->slots) {
    free(cache);
    return NULL;
  }
  cache->mask = count - 1;
  atomic_init(&cache->bytes, count * sizeof(*cache->slots));
  for (size_t i = 0; i < count; i++)
    pthread_mutex_init(&cache->slots[i].lock, NULL);
  return cache;
}

void tly_state_cache_free(tly_state_cache_t *cache) {
  if (!cache)
    return;
  for (size_t i = 0; i <= cache->mask; i++) {
    for (size_t w = 0; w < WAYS; w++) {
      entry_t *entry = cache->slots[i].entries[w];
      if (entry)
        tly_state_subject_clear(&entry->state);
      free(entry);
    }
    pthread_mutex_destroy(&cache->slots[i].lock);
  }
  free(cache->slots);
  free(cache);
}

/* FNV-1a over kind and id, folded so the high bits count too. */
static size_t slot_index(const tly_state_cache_t *cache,
                         tly_subject_kind_t kind, const char *id) {
  uint64_t hash = 14695981039346656037ULL ^ (uint64_t)kind;
  for (const unsigned char *p = (const unsigned char *)id; *p; p++)
    hash = (hash ^ *p) * 1099511628211ULL;
  return (size_t)(hash ^ (hash >> 29)) & cache->mask;
}

/* The entry of (kind, id) in the set, or NULL. Caller holds the lock. */
static entry_t *find_entry(slot_t *slot, tly_subject_kind_t kind,
                           const char *id) {
  for (size_t w = 0; w < WAYS; w++) {
    entry_t *entry = slot->entries[w];
    if (entry && entry->kind == kind && strcmp(entry->id, id) == 0)
      return entry;
  }
  return NULL;
}

/* Where to store (kind, id): its own entry, else an empty or stale one
 * (older than commit_count), else the next in turn. NULL on OOM. */
static entry_t *claim_entry(tly_state_cache_t *cache, slot_t *slot,
                            tly_subject_kind_t kind, const char *id,
                            uint64_t commit_count) {
  entry_t *entry = find_entry(slot, kind, id);
  if (entry)
    return entry;
  for (size_t w = 0; w < WAYS; w++) {
    if (!slot->entries[w]) {
      slot->entries[w] = calloc(1, sizeof(entry_t));
      if (slot->entries[w])
        atomic_fetch_add(&cache->bytes, sizeof(entry_t));
      return slot->entries[w];
    }
    if (slot->entries[w]->commit_count != commit_count)
      return slot->entries[w];
  }
  return slot->entries[slot->next_victim++ % WAYS];
}

/* A deep copy of src into dst (rows malloc'd). 0 or -1 (OOM). */
/* A copy of n items (NULL for none); 0, or -1 when out of memory. */
static int copy_items(void *dst, const void *src, size_t n, size_t size) {
  void *copy = NULL;
  if (n && !(copy = malloc(n * size)))
    return -1;
  if (n)
    memcpy(copy, src, n * size);
  *(void **)dst = copy;
  return 0;
}

static int state_copy(tly_subject_state_t *dst,
                      const tly_subject_state_t *src) {
  *dst = *src;
  dst->rows = NULL;
  dst->buckets = NULL;
  dst->holds = NULL;
  if (copy_items(&dst->rows, src->rows, src->row_count, sizeof(*src->rows)) ||
      copy_items(&dst->buckets, src->buckets, src->bucket_count,
                 sizeof(*src->buckets)) ||
      copy_items(&dst->holds, src->holds, src->hold_count,
                 sizeof(*src->holds))) {
    tly_state_subject_clear(dst);
    return -1;
  }
  return 0;
}

int tly_state_cache_find(tly_state_cache_t *cache, tly_store_t *store,
                         int32_t partition_count,
                         tly_state_readable_fn readable, void *readable_opaque,
                         tly_commit_count_fn count, void *count_opaque,
                         tly_subject_kind_t kind, const char *id,
                         tly_subject_state_t *out, char *errstr,
                         size_t errstr_size) {
  int cacheable = strlen(id) < CACHE_KEY_MAX;
  slot_t *slot = cacheable ? &cache->slots[slot_index(cache, kind, id)] : NULL;
  uint64_t before = count(count_opaque);
  memset(out, 0, sizeof(*out));

  if (slot) {
    int hit = 0, found = 0, copied = 0;
    pthread_mutex_lock(&slot->lock);
    entry_t *entry = find_entry(slot, kind, id);
    if (entry && entry->commit_count == before &&
        (!entry->found || !readable ||
         readable(readable_opaque, entry->state.partition))) {
      hit = 1;
      found = entry->found;
      copied = found ? state_copy(out, &entry->state) : 0;
    }
    pthread_mutex_unlock(&slot->lock);
    if (hit && copied == 0) {
      atomic_fetch_add(&cache->hits, 1);
      return found;
    }
    tly_state_subject_clear(out);
  }
  atomic_fetch_add(&cache->misses, 1);

  /* Read until no commit landed during the read (the count moves after a
   * commit is visible, so an unchanged count means one commit's state). */
  int found = -1;
  for (int attempt = 0; attempt < 3; attempt++) {
    found = tly_state_find_subject(store, partition_count, readable,
                                   readable_opaque, kind, id, out, errstr,
                                   errstr_size);
    if (found < 0)
      return -1;
    uint64_t after = count(count_opaque);
    if (after == before)
      break;
    before = after;
    if (attempt < 2)
      tly_state_subject_clear(out);
    else
      return found; /* busy: fresh enough, but not cached */
  }
  if (!slot)
    return found;
  tly_subject_state_t copy = {0};
  if (found && state_copy(&copy, out))
    return found; /* no memory for the cache: still answer */
  pthread_mutex_lock(&slot->lock);
  entry_t *entry = claim_entry(cache, slot, kind, id, before);
  if (entry) {
    atomic_fetch_sub(&cache->bytes, state_bytes(&entry->state));
    atomic_fetch_add(&cache->bytes, state_bytes(&copy));
    tly_state_subject_clear(&entry->state);
    entry->state = copy;
    entry->commit_count = before;
    entry->kind = kind;
    snprintf(entry->id, sizeof(entry->id), "%s", id);
    entry->found = found;
  } else {
    tly_state_subject_clear(&copy);
  }
  pthread_mutex_unlock(&slot->lock);
  return found;
}

void tly_state_cache_stats(tly_state_cache_t *cache,
                           tly_state_cache_stats_t *stats) {
  stats->hits = atomic_load(&cache->hits);
  stats->misses = atomic_load(&cache->misses);
}

size_t tly_state_cache_bytes(tly_state_cache_t *cache) {
  return atomic_load(&cache->bytes);
}

size_t tly_state_cache_slots_for(size_t bytes) {
  /* an entry and a few rows and buckets, per slot */
  size_t per = sizeof(entry_t) + 512;
  size_t slots = 1024;
  while (slots * 2 * per <= bytes && slots < ((size_t)1 << 24))
    slots *= 2; /* a power of two: tly_state_cache_new rounds up */
  return slots;
}
