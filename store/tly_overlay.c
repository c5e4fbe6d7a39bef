/*
 * tly_overlay.c - open-addressing hash table for the per-batch overlay.
 * Linear probing, FNV-1a hashing, grows at 50% load. Entries are never
 * removed one by one, only all at once at the end of a batch, so no
 * tombstones are needed; they are allocated one by one (with their key) so
 * their addresses survive the table growing, from the overlay's slab of
 * huge pages (base/tly_slab.h), as are rows and buckets; the slots too once
 * they take 2 MiB. Slots hold each entry's hash:
 * with a million cached subjects a probe that had to read every entry it
 * passes was a third of the fold's time, in cache misses.
 */
#include "tly_overlay.h"

#include "tly_slab.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t hash_key(tly_cf_t cf, const char *key, size_t len) {
  uint64_t hash = 14695981039346656037ULL ^ (uint64_t)cf;
  for (size_t i = 0; i < len; i++) {
    hash ^= (unsigned char)key[i];
    hash *= 1099511628211ULL;
  }
  return hash ? hash : 1; /* 0 marks an empty slot */
}

void tly_overlay_init(tly_overlay_t *overlay) {
  memset(overlay, 0, sizeof(*overlay));
  overlay->slab = tly_slab_new(); /* NULL: calloc and free (tly_slab.h) */
}

/* What a row or a bucket named name_len bytes takes: up to its name's NUL
 * (the name is last: tly_billing_records.h, tly_overlay.h). */
#define ROW_SIZE(name_len)                                                     \
  (offsetof(tly_subject_row_t, feature) + (name_len) + 1)
/* A row's size, from its name (a bucket keeps its own: size). */
static size_t row_size(const tly_subject_row_t *row) {
  return ROW_SIZE(strlen(row->feature));
}
#define BUCKET_SIZE(name_len)                                                  \
  (offsetof(tly_overlay_bucket_t, bucket.feature) + (name_len) + 1)

static void free_entry(tly_slab_t *slab, tly_overlay_entry_t *entry) {
  for (size_t i = 0; i < entry->row_count; i++)
    tly_slab_free(slab, entry->rows[i], row_size(entry->rows[i]));
  if (entry->rows != entry->rows_inline) {
    free(entry->rows);
    free(entry->row_tags);
  }
  for (size_t i = 0; i < entry->bucket_count; i++)
    tly_slab_free(slab, entry->buckets[i], entry->buckets[i]->size);
  if (entry->buckets != entry->buckets_inline) {
    free(entry->buckets);
    free(entry->bucket_tags);
  }
  tly_holds_free(&entry->holds);
  tly_distinct_sets_clear(&entry->distinct);
  free(entry->read_marks);
  tly_slab_free(slab, entry, sizeof(*entry) + entry->key_len);
}

void tly_overlay_reset(tly_overlay_t *overlay) {
  if (!overlay->count)
    return;
  for (size_t i = 0; i < overlay->capacity; i++) {
    if (overlay->slots[i].entry) {
      free_entry(overlay->slab, overlay->slots[i].entry);
      overlay->slots[i] = (tly_overlay_slot_t){0, NULL};
    }
  }
  overlay->count = 0;
  overlay->entry_bytes = 0;
  overlay->hand = 0;
}

void tly_overlay_free(tly_overlay_t *overlay) {
  tly_overlay_reset(overlay);
  tly_huge_free(overlay->slots, overlay->capacity * sizeof(*overlay->slots));
  tly_slab_destroy(overlay->slab);
  memset(overlay, 0, sizeof(*overlay));
}

size_t tly_overlay_purge(tly_overlay_t *overlay) {
  return tly_slab_purge(overlay->slab);
}

/* The slot holding (cf, key), or the empty slot where it would go. */
static tly_overlay_slot_t *probe(tly_overlay_slot_t *slots, size_t capacity,
                                 uint64_t hash, tly_cf_t cf, const char *key,
                                 size_t key_len) {
  size_t mask = capacity - 1;
  for (size_t i = (size_t)hash & mask;; i = (i + 1) & mask) {
    tly_overlay_slot_t *slot = &slots[i];
    if (!slot->hash)
      return slot;
    if (slot->hash == hash && slot->entry->cf == cf &&
        slot->entry->key_len == key_len &&
        memcmp(slot->entry->key, key, key_len) == 0)
      return slot;
  }
}

/* Where an entry known to be absent goes (growing, reinserting). */
static tly_overlay_slot_t *empty_slot(tly_overlay_slot_t *slots,
                                      size_t capacity, uint64_t hash) {
  size_t mask = capacity - 1, i = (size_t)hash & mask;
  while (slots[i].hash)
    i = (i + 1) & mask;
  return &slots[i];
}

uint64_t tly_overlay_hash(tly_cf_t cf, const char *key, size_t key_len) {
  return hash_key(cf, key, key_len);
}

void tly_overlay_prefetch_slot(const tly_overlay_t *overlay, uint64_t hash) {
  if (overlay->capacity)
    __builtin_prefetch(&overlay->slots[(size_t)hash & (overlay->capacity - 1)]);
}

void tly_overlay_prefetch_entry(const tly_overlay_t *overlay, uint64_t hash) {
  if (!overlay->capacity)
    return;
  size_t mask = overlay->capacity - 1, i = (size_t)hash & mask;
  for (int probes = 0; probes < 4 && overlay->slots[i].hash;
       probes++, i = (i + 1) & mask) {
    if (overlay->slots[i].hash == hash) {
      /* Not read here (that would wait for it): all its lines, and its
       * key, stored right after it. The fold copies the whole account
       * (to leave it as it was if the event is refused): with only the
       * first four lines fetched, that copy was 5 % of the fold thread,
       * waiting for the rest. */
      const tly_overlay_entry_t *entry = overlay->slots[i].entry;
      for (size_t line = 0; line < sizeof(*entry); line += 64)
        __builtin_prefetch((const char *)entry + line);
      __builtin_prefetch(entry + 1);
      return;
    }
  }
}

void tly_overlay_prefetch_rows_of(const tly_overlay_entry_t *entry) {
  if (entry->rows != entry->rows_inline) {
    __builtin_prefetch(entry->row_tags);
    __builtin_prefetch(entry->rows);
  }
  if (entry->buckets != entry->buckets_inline) {
    __builtin_prefetch(entry->bucket_tags);
    __builtin_prefetch(entry->buckets);
  }
  /* Whole: the fold reads a row's name and then its counts, a bucket's
   * hour and name and then its totals, and a commit encodes all of it.
   * Each is allocated up to its name's NUL: most take two lines, one with
   * a name of up to 64 bytes three. */
  for (size_t i = 0; i < entry->row_count && i < 8; i++) {
    const char *row = (const char *)entry->rows[i];
    __builtin_prefetch(row);
    __builtin_prefetch(row + 64);
    __builtin_prefetch(row + 127);
  }
  for (size_t i = 0; i < entry->bucket_count && i < 8; i++) {
    const char *bucket = (const char *)entry->buckets[i];
    __builtin_prefetch(bucket);
    __builtin_prefetch(bucket + 64);
    __builtin_prefetch(bucket + 127);
  }
  /* And each one's first word read now, all together: on the 2-core VM
   * the prefetches alone left the fold waiting on the first read of each
   * row and bucket two records later (tly_overlay_row and
   * tly_overlay_bucket, 15 % of the fold thread, each on its first load),
   * one after another; read here their misses overlap, and the fold
   * thread's CPU per event in bench_fold fell by about 8 % (four
   * alternating pairs: 2.12-2.51 us against 2.32-2.65). */
  uint64_t sum = 0;
  for (size_t i = 0; i < entry->row_count && i < 8; i++)
    sum += *(const volatile uint64_t *)entry->rows[i];
  for (size_t i = 0; i < entry->bucket_count && i < 8; i++)
    sum += *(const volatile uint64_t *)entry->buckets[i];
  __asm__ volatile("" ::"r"(sum)); /* kept: nothing else uses the reads */
}

void tly_overlay_prefetch_rows(const tly_overlay_t *overlay, uint64_t hash) {
  if (!overlay->capacity)
    return;
  size_t mask = overlay->capacity - 1, i = (size_t)hash & mask;
  for (int probes = 0; probes < 4 && overlay->slots[i].hash;
       probes++, i = (i + 1) & mask)
    if (overlay->slots[i].hash == hash) {
      tly_overlay_prefetch_rows_of(overlay->slots[i].entry);
      return;
    }
}

tly_overlay_entry_t *tly_overlay_find(tly_overlay_t *overlay, tly_cf_t cf,
                                      const char *key, size_t key_len) {
  if (!overlay->capacity)
    return NULL;
  tly_overlay_entry_t *entry =
      probe(overlay->slots, overlay->capacity, hash_key(cf, key, key_len), cf,
            key, key_len)
          ->entry;
  if (entry && !entry->referenced)
    entry->referenced = 1;
  return entry;
}

/* Empties slot i and shifts the entries after it that probed past it back
 * (linear probing's deletion without tombstones). */
static void remove_slot(tly_overlay_t *overlay, size_t i) {
  size_t mask = overlay->capacity - 1;
  for (size_t j = (i + 1) & mask; overlay->slots[j].hash; j = (j + 1) & mask) {
    size_t home = (size_t)overlay->slots[j].hash & mask;
    /* The entry at j may fill the hole at i unless its home lies
     * cyclically in (i, j]. */
    int stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
    if (stays)
      continue;
    overlay->slots[i] = overlay->slots[j];
    i = j;
  }
  overlay->slots[i] = (tly_overlay_slot_t){0, NULL};
}

size_t tly_overlay_evict(tly_overlay_t *overlay, size_t max_bytes,
                         size_t max_count,
                         int (*keep)(tly_overlay_entry_t *entry)) {
  size_t evicted = 0, mask = overlay->capacity - 1;
  /* Two full turns of the hand give every entry its second chance and
   * then its end; an eviction does not move the hand. */
  size_t moves = 0;
  while (
      overlay->count && moves < 2 * overlay->capacity &&
      (tly_overlay_bytes(overlay) > max_bytes || overlay->count > max_count)) {
    size_t i = overlay->hand & mask;
    tly_overlay_entry_t *entry = overlay->slots[i].entry;
    if (entry && !keep(entry)) {
      if (!entry->referenced) {
        overlay->entry_bytes -= entry->accounted;
        overlay->count--;
        free_entry(overlay->slab, entry);
        remove_slot(overlay, i);
        evicted++;
        /* Slot i may now hold an entry shifted back from further on: the
         * hand looks at it next (one that wrapped round from the table's
         * start is looked at once more in this turn). */
        continue;
      }
      entry->referenced = 0;
    }
    overlay->hand = (i + 1) & mask;
    moves++;
  }
  return evicted;
}

static int grow(tly_overlay_t *overlay) {
  size_t capacity = overlay->capacity ? overlay->capacity * 2 : 1024;
  tly_overlay_slot_t *slots = tly_huge_alloc(capacity * sizeof(*slots));
  if (!slots)
    return -1;
  for (size_t i = 0; i < overlay->capacity; i++) {
    tly_overlay_slot_t old = overlay->slots[i];
    if (old.hash)
      *empty_slot(slots, capacity, old.hash) = old;
  }
  tly_huge_free(overlay->slots, overlay->capacity * sizeof(*overlay->slots));
  overlay->slots = slots;
  overlay->capacity = capacity;
  return 0;
}

tly_overlay_entry_t *tly_overlay_insert(tly_overlay_t *overlay, tly_cf_t cf,
                                        const char *key, size_t key_len) {
  if ((overlay->count + 1) * 2 > overlay->capacity && grow(overlay))
    return NULL;
  tly_overlay_entry_t *entry =
      tly_slab_alloc(overlay->slab, sizeof(*entry) + key_len);
  if (!entry)
    return NULL;
  entry->slab = overlay->slab;
  entry->key = (char *)(entry + 1);
  memcpy(entry->key, key, key_len);
  entry->key_len = key_len;
  entry->cf = cf;
  entry->stored_cycle_end = -1;
  entry->rows = entry->rows_inline;
  entry->row_tags = entry->row_tags_inline;
  entry->row_cap = TLY_OVERLAY_INLINE;
  entry->buckets = entry->buckets_inline;
  entry->bucket_tags = entry->bucket_tags_inline;
  entry->bucket_cap = TLY_OVERLAY_INLINE;
  entry->accounted = sizeof(*entry) + key_len;
  overlay->entry_bytes += entry->accounted;
  uint64_t hash = hash_key(cf, key, key_len);
  *empty_slot(overlay->slots, overlay->capacity, hash) =
      (tly_overlay_slot_t){hash, entry};
  overlay->count++;
  return entry;
}

/* A name's hash (FNV-1a, 32 bits) and, through len, its length. */
static uint32_t name_hash(const char *name, size_t *len) {
  uint32_t hash = 2166136261u;
  const char *at = name;
  for (; *at; at++)
    hash = (hash ^ (unsigned char)*at) * 16777619u;
  *len = (size_t)(at - name);
  return hash;
}

static uint64_t row_tag(int64_t cycle_start_ms, uint32_t name) {
  uint64_t tag = (uint64_t)cycle_start_ms * 0x9E3779B97F4A7C15ULL;
  return (tag ^ (tag >> 29)) ^ name;
}

static uint64_t bucket_tag(int32_t hour, uint32_t name) {
  return (uint64_t)(uint32_t)hour << 32 | name;
}

/* A pointer array and its tags grown from count to cap entries: out of
 * the entry (inline: the arrays in it) into arrays of their own, or
 * reallocated. 0, or -1 with both as they were. */
static int grow_arrays(void **pointers, uint64_t **tags, size_t count,
                       size_t cap, int inline_now) {
  void *grown = malloc(cap * sizeof(void *));
  uint64_t *grown_tags = malloc(cap * sizeof(*grown_tags));
  if (!grown || !grown_tags) {
    free(grown);
    free(grown_tags);
    return -1;
  }
  memcpy(grown, *pointers, count * sizeof(void *));
  memcpy(grown_tags, *tags, count * sizeof(*grown_tags));
  if (!inline_now) {
    free(*pointers);
    free(*tags);
  }
  *pointers = grown;
  *tags = grown_tags;
  return 0;
}

tly_subject_row_t *tly_overlay_row(tly_overlay_entry_t *entry,
                                   int64_t cycle_start_ms,
                                   const char *feature) {
  size_t len;
  uint64_t tag = row_tag(cycle_start_ms, name_hash(feature, &len));
  for (size_t i = 0; i < entry->row_count; i++) {
    if (entry->row_tags[i] != tag)
      continue;
    tly_subject_row_t *row = entry->rows[i];
    if (row->cycle_start_ms == cycle_start_ms &&
        strcmp(row->feature, feature) == 0)
      return row;
  }
  if (len >= sizeof(entry->rows[0]->feature))
    return NULL;
  if (entry->row_count == entry->row_cap) {
    void *rows = entry->rows;
    if (grow_arrays(&rows, &entry->row_tags, entry->row_count,
                    entry->row_cap * 2, entry->rows == entry->rows_inline))
      return NULL;
    entry->rows = rows;
    entry->row_cap *= 2;
  }
  tly_subject_row_t *row = tly_slab_alloc(entry->slab, ROW_SIZE(len));
  if (!row)
    return NULL;
  entry->row_bytes += ROW_SIZE(len);
  row->cycle_start_ms = cycle_start_ms;
  memcpy(row->feature, feature, len + 1);
  entry->row_tags[entry->row_count] = tag;
  entry->rows[entry->row_count++] = row;
  return row;
}

void tly_overlay_prune_rows(tly_overlay_entry_t *entry,
                            int (*keep)(const tly_account_t *account,
                                        const tly_subject_row_t *row)) {
  size_t kept = 0;
  for (size_t i = 0; i < entry->row_count; i++) {
    if (keep(&entry->account, entry->rows[i])) {
      entry->row_tags[kept] = entry->row_tags[i];
      entry->rows[kept++] = entry->rows[i];
    } else {
      size_t size = row_size(entry->rows[i]);
      entry->row_bytes -= size;
      tly_slab_free(entry->slab, entry->rows[i], size);
    }
  }
  entry->row_count = kept;
}

tly_overlay_bucket_t *tly_overlay_bucket(tly_overlay_entry_t *entry,
                                         int32_t hour, const char *feature) {
  size_t len;
  uint64_t tag = bucket_tag(hour, name_hash(feature, &len));
  for (size_t i = 0; i < entry->bucket_count; i++) {
    if (entry->bucket_tags[i] != tag)
      continue;
    tly_overlay_bucket_t *bucket = entry->buckets[i];
    if (bucket->bucket.hour == hour &&
        strcmp(bucket->bucket.feature, feature) == 0)
      return bucket;
  }
  if (len >= sizeof(entry->buckets[0]->bucket.feature))
    return NULL;
  if (entry->bucket_count == entry->bucket_cap) {
    void *buckets = entry->buckets;
    if (grow_arrays(&buckets, &entry->bucket_tags, entry->bucket_count,
                    entry->bucket_cap * 2,
                    entry->buckets == entry->buckets_inline))
      return NULL;
    entry->buckets = buckets;
    entry->bucket_cap *= 2;
  }
  size_t size = BUCKET_SIZE(len);
  tly_overlay_bucket_t *bucket = tly_slab_alloc(entry->slab, size);
  if (!bucket)
    return NULL;
  bucket->size = (uint16_t)size;
  entry->bucket_bytes += size;
  bucket->bucket.hour = hour;
  memcpy(bucket->bucket.feature, feature, len + 1);
  entry->bucket_tags[entry->bucket_count] = tag;
  entry->buckets[entry->bucket_count++] = bucket;
  return bucket;
}

int tly_overlay_has_hour(const tly_overlay_entry_t *entry, int32_t hour) {
  for (size_t i = 0; i < entry->bucket_count; i++)
    if ((uint32_t)(entry->bucket_tags[i] >> 32) == (uint32_t)hour)
      return 1;
  return 0;
}

void tly_overlay_prune_buckets(tly_overlay_entry_t *entry,
                               int (*keep)(const tly_overlay_bucket_t *bucket,
                                           void *opaque),
                               void *opaque) {
  size_t kept = 0;
  for (size_t i = 0; i < entry->bucket_count; i++) {
    if (keep(entry->buckets[i], opaque)) {
      entry->bucket_tags[kept] = entry->bucket_tags[i];
      entry->buckets[kept++] = entry->buckets[i];
    } else {
      entry->bucket_bytes -= entry->buckets[i]->size;
      tly_slab_free(entry->slab, entry->buckets[i], entry->buckets[i]->size);
    }
  }
  entry->bucket_count = kept;
}

size_t tly_overlay_entry_bytes(const tly_overlay_entry_t *entry) {
  /* The inline arrays are in sizeof(*entry); arrays of their own beside. */
  size_t rows_apart = entry->rows != entry->rows_inline ? entry->row_cap : 0;
  size_t buckets_apart =
      entry->buckets != entry->buckets_inline ? entry->bucket_cap : 0;
  size_t bytes =
      sizeof(*entry) + entry->key_len +
      rows_apart * (sizeof(*entry->rows) + sizeof(*entry->row_tags)) +
      entry->row_bytes +
      buckets_apart * (sizeof(*entry->buckets) + sizeof(*entry->bucket_tags)) +
      entry->bucket_bytes + entry->holds.cap * sizeof(*entry->holds.items) +
      entry->distinct.cap * sizeof(*entry->distinct.items) +
      (entry->read_marks ? sizeof(*entry->read_marks) : 0);
  for (size_t d = 0; d < entry->distinct.count; d++) {
    const tly_distinct_set_t *set = &entry->distinct.items[d];
    bytes += set->cap * sizeof(*set->values);
    for (size_t v = 0; v < set->count; v++)
      bytes += strlen(set->values[v]) + 1;
  }
  return bytes;
}

void tly_overlay_account(tly_overlay_t *overlay, tly_overlay_entry_t *entry) {
  size_t now = tly_overlay_entry_bytes(entry);
  overlay->entry_bytes = overlay->entry_bytes - entry->accounted + now;
  entry->accounted = now;
}

size_t tly_overlay_bytes(const tly_overlay_t *overlay) {
  return overlay->capacity * sizeof(tly_overlay_slot_t) + overlay->entry_bytes;
}

size_t tly_overlay_bytes_walked(const tly_overlay_t *overlay) {
  size_t bytes = overlay->capacity * sizeof(tly_overlay_slot_t);
  for (size_t i = 0; i < overlay->capacity; i++)
    if (overlay->slots[i].entry)
      bytes += tly_overlay_entry_bytes(overlay->slots[i].entry);
  return bytes;
}
