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
  pthread_mutex_t lock;
  int valid;
  uint64_t commit_count;
  tly_subject_kind_t kind;
  char id[CACHE_KEY_MAX];
  int found;
  tly_subject_state_t state; /* rows owned by the slot */
} slot_t;

struct tly_state_cache {
  size_t mask;
  slot_t *slots;
  atomic_uint_least64_t hits, misses;
};

tly_state_cache_t *tly_state_cache_new(size_t slots) {
  size_t count = 1;
  while (count < (slots ? slots : 4096) && count < ((size_t)1 << 24))
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
  for (size_t i = 0; i < count; i++)
    pthread_mutex_init(&cache->slots[i].lock, NULL);
  return cache;
}

void tly_state_cache_free(tly_state_cache_t *cache) {
  if (!cache)
    return;
  for (size_t i = 0; i <= cache->mask; i++) {
    tly_state_subject_clear(&cache->slots[i].state);
    pthread_mutex_destroy(&cache->slots[i].lock);
  }
  free(cache->slots);
  free(cache);
}

/* FNV-1a over kind and id. */
static size_t slot_index(const tly_state_cache_t *cache,
                         tly_subject_kind_t kind, const char *id) {
  uint64_t hash = 14695981039346656037ULL ^ (uint64_t)kind;
  for (const unsigned char *p = (const unsigned char *)id; *p; p++)
    hash = (hash ^ *p) * 1099511628211ULL;
  return (size_t)(hash ^ (hash >> 29)) & cache->mask;
}

/* A deep copy of src into dst (rows malloc'd). 0 or -1 (OOM). */
static int state_copy(tly_subject_state_t *dst,
                      const tly_subject_state_t *src) {
  *dst = *src;
  dst->rows = NULL;
  if (!src->row_count)
    return 0;
  dst->rows = malloc(src->row_count * sizeof(*dst->rows));
  if (!dst->rows) {
    dst->row_count = 0;
    return -1;
  }
  memcpy(dst->rows, src->rows, src->row_count * sizeof(*dst->rows));
  return 0;
}

int tly_state_cache_find(tly_state_cache_t *cache, tly_store_t *store,
                         int32_t partition_count, tly_commit_count_fn count,
                         void *count_opaque, tly_subject_kind_t kind,
                         const char *id, tly_subject_state_t *out,
                         char *errstr, size_t errstr_size) {
  int cacheable = strlen(id) < CACHE_KEY_MAX;
  slot_t *slot = cacheable ? &cache->slots[slot_index(cache, kind, id)] : NULL;
  uint64_t before = count(count_opaque);
  memset(out, 0, sizeof(*out));

  if (slot) {
    int hit = 0, found = 0, copied = 0;
    pthread_mutex_lock(&slot->lock);
    if (slot->valid && slot->commit_count == before && slot->kind == kind &&
        strcmp(slot->id, id) == 0) {
      hit = 1;
      found = slot->found;
      copied = found ? state_copy(out, &slot->state) : 0;
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
    found = tly_state_find_subject(store, partition_count, kind, id, out,
                                   errstr, errstr_size);
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
  tly_state_subject_clear(&slot->state);
  slot->state = copy;
  slot->valid = 1;
  slot->commit_count = before;
  slot->kind = kind;
  snprintf(slot->id, sizeof(slot->id), "%s", id);
  slot->found = found;
  pthread_mutex_unlock(&slot->lock);
  return found;
}

void tly_state_cache_stats(tly_state_cache_t *cache,
                           tly_state_cache_stats_t *stats) {
  stats->hits = atomic_load(&cache->hits);
  stats->misses = atomic_load(&cache->misses);
}
