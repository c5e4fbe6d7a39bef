/*
 * tly_dedupe.c - the in-memory event id index over dedupe blobs (see
 * tly_dedupe.h). Linear probing with backward-shift deletion; each slot
 * points at its id's record inside a blob, so the ids are stored once.
 */
#include "tly_dedupe.h"

#include "tly_store.h"

#include <stdlib.h>
#include <string.h>

typedef struct blob {
  unsigned char *data; /* header + records, as stored */
  size_t len, cap;
  int64_t max_ms;
  int64_t key; /* the blob's store key (its batch's first offset) */
  uint32_t count;
  int sealed;
  int spilling; /* its ids are in the batch being written to the store */
  struct blob *next;
} blob_t;

typedef struct {
  uint64_t hash; /* 0: empty */
  blob_t *blob;
  size_t offset; /* of the record in blob->data */
} slot_t;

struct tly_dedupe {
  slot_t *slots;
  size_t capacity; /* power of two */
  size_t count;
  blob_t *head, *tail; /* oldest first; the tail may be the open blob */
  size_t blob_count;
  size_t blob_bytes; /* sizeof(blob_t) + cap of every blob */
};

static uint64_t hash_id(const char *id, size_t len) {
  uint64_t hash = 14695981039346656037ULL;
  for (size_t i = 0; i < len; i++) {
    hash ^= (unsigned char)id[i];
    hash *= 1099511628211ULL;
  }
  hash ^= hash >> 33; /* spread the high bits into the mask's */
  hash *= 0xff51afd7ed558ccdULL;
  hash ^= hash >> 33;
  return hash ? hash : 1;
}

static const unsigned char *record_at(const slot_t *slot) {
  return slot->blob->data + slot->offset;
}

static int record_is(const unsigned char *record, const char *id, size_t len) {
  size_t stored = ((size_t)record[8] << 8) | record[9];
  return stored == len && memcmp(record + 10, id, len) == 0;
}

tly_dedupe_t *tly_dedupe_new(void) { return calloc(1, sizeof(tly_dedupe_t)); }

void tly_dedupe_free(tly_dedupe_t *dedupe) {
  if (!dedupe)
    return;
  for (blob_t *blob = dedupe->head, *next; blob; blob = next) {
    next = blob->next;
    free(blob->data);
    free(blob);
  }
  free(dedupe->slots);
  free(dedupe);
}

/* The slot holding id, or the empty slot where it would go. */
static slot_t *probe(slot_t *slots, size_t capacity, uint64_t hash,
                     const char *id, size_t len) {
  size_t mask = capacity - 1;
  for (size_t i = hash & mask;; i = (i + 1) & mask) {
    slot_t *slot = &slots[i];
    if (!slot->hash ||
        (slot->hash == hash && record_is(record_at(slot), id, len)))
      return slot;
  }
}

void tly_dedupe_prefetch(const tly_dedupe_t *dedupe, const char *id,
                         size_t len) {
  if (dedupe->capacity)
    __builtin_prefetch(
        &dedupe->slots[hash_id(id, len) & (dedupe->capacity - 1)]);
}

int tly_dedupe_lookup(const tly_dedupe_t *dedupe, const char *id, size_t len,
                      int64_t *occurred_at_ms) {
  if (!dedupe->capacity)
    return 0;
  slot_t *slot =
      probe(dedupe->slots, dedupe->capacity, hash_id(id, len), id, len);
  if (!slot->hash)
    return 0;
  *occurred_at_ms = (int64_t)tly_get_be64(record_at(slot));
  return 1;
}

static int grow(tly_dedupe_t *dedupe) {
  size_t capacity = dedupe->capacity ? dedupe->capacity * 2 : 64;
  /* Zeroed by writing, not calloc: calloc's fresh pages map the shared
   * zero page on the first read (a probe) and fault again, copying and
   * flushing every CPU's TLB, on the first write. That was a tenth of the
   * fold's time. */
  slot_t *slots = malloc(capacity * sizeof(*slots));
  if (!slots)
    return -1;
  tly_zero_fill(slots, capacity * sizeof(*slots));
  for (size_t i = 0; i < dedupe->capacity; i++) {
    slot_t *old = &dedupe->slots[i];
    if (!old->hash)
      continue;
    size_t mask = capacity - 1, j = old->hash & mask;
    while (slots[j].hash)
      j = (j + 1) & mask;
    slots[j] = *old;
  }
  free(dedupe->slots);
  dedupe->slots = slots;
  dedupe->capacity = capacity;
  return 0;
}

/* Points the id's slot at the record at offset of blob (a newer record of
 * an id already present replaces the older one). */
static int index_record(tly_dedupe_t *dedupe, blob_t *blob, size_t offset) {
  const unsigned char *record = blob->data + offset;
  size_t len = ((size_t)record[8] << 8) | record[9];
  const char *id = (const char *)record + 10;
  if ((dedupe->count + 1) * 2 > dedupe->capacity && grow(dedupe))
    return -1;
  uint64_t hash = hash_id(id, len);
  slot_t *slot = probe(dedupe->slots, dedupe->capacity, hash, id, len);
  if (!slot->hash)
    dedupe->count++;
  slot->hash = hash;
  slot->blob = blob;
  slot->offset = offset;
  return 0;
}

/* Removes the slot at index i, shifting later members of its run back so
 * that every remaining id stays reachable from its home slot. */
static void delete_slot(tly_dedupe_t *dedupe, size_t i) {
  size_t mask = dedupe->capacity - 1;
  size_t hole = i;
  for (size_t j = (i + 1) & mask; dedupe->slots[j].hash; j = (j + 1) & mask) {
    size_t home = dedupe->slots[j].hash & mask;
    /* j may move into the hole unless its home lies cyclically in
     * (hole, j]. */
    int home_after_hole =
        hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
    if (!home_after_hole) {
      dedupe->slots[hole] = dedupe->slots[j];
      hole = j;
    }
  }
  memset(&dedupe->slots[hole], 0, sizeof(slot_t));
  dedupe->count--;
}

static void append_blob(tly_dedupe_t *dedupe, blob_t *blob) {
  dedupe->blob_bytes += sizeof(*blob) + blob->cap;
  if (dedupe->tail)
    dedupe->tail->next = blob;
  else
    dedupe->head = blob;
  dedupe->tail = blob;
  dedupe->blob_count++;
}

static blob_t *open_blob(tly_dedupe_t *dedupe) {
  if (dedupe->tail && !dedupe->tail->sealed)
    return dedupe->tail;
  blob_t *blob = calloc(1, sizeof(*blob));
  if (!blob)
    return NULL;
  blob->cap = 4096;
  blob->data = malloc(blob->cap);
  if (!blob->data) {
    free(blob);
    return NULL;
  }
  blob->len = TLY_DEDUPE_BLOB_HEADER;
  blob->max_ms = INT64_MIN;
  append_blob(dedupe, blob);
  return blob;
}

int tly_dedupe_record(tly_dedupe_t *dedupe, const char *id, size_t len,
                      int64_t occurred_at_ms) {
  if (len > TLY_DEDUPE_ID_MAX)
    return -1;
  blob_t *blob = open_blob(dedupe);
  if (!blob)
    return -1;
  if (blob->len + 10 + len > blob->cap) {
    size_t cap = blob->cap * 2 > blob->len + 10 + len ? blob->cap * 2
                                                      : blob->len + 10 + len;
    unsigned char *grown = realloc(blob->data, cap);
    if (!grown)
      return -1;
    dedupe->blob_bytes += cap - blob->cap;
    blob->data = grown;
    blob->cap = cap;
  }
  size_t offset = blob->len;
  unsigned char *record = blob->data + offset;
  tly_put_be64(record, (uint64_t)occurred_at_ms);
  record[8] = (unsigned char)(len >> 8);
  record[9] = (unsigned char)len;
  memcpy(record + 10, id, len);
  blob->len += 10 + len;
  if (index_record(dedupe, blob, offset)) {
    blob->len = offset;
    return -1;
  }
  blob->count++;
  if (occurred_at_ms > blob->max_ms)
    blob->max_ms = occurred_at_ms;
  return 0;
}

const void *tly_dedupe_open_blob(tly_dedupe_t *dedupe, size_t *len) {
  blob_t *blob = dedupe->tail;
  if (!blob || blob->sealed || !blob->count)
    return NULL;
  tly_put_be64(blob->data, (uint64_t)blob->max_ms);
  tly_put_be32(blob->data + 8, blob->count);
  *len = blob->len;
  return blob->data;
}

void tly_dedupe_seal(tly_dedupe_t *dedupe, int64_t key) {
  blob_t *blob = dedupe->tail;
  if (!blob || blob->sealed)
    return;
  blob->sealed = 1;
  blob->key = key;
  /* A sealed blob never grows: give back the room the open one had (4 KiB
   * at least). With a commit per few events (group commit) most blobs
   * hold an id or two, and the slack would cost more than the ids. Slots
   * point at (blob, offset), so the data may move. */
  if (blob->cap > blob->len) {
    unsigned char *fitted = realloc(blob->data, blob->len);
    if (fitted) {
      dedupe->blob_bytes -= blob->cap - blob->len;
      blob->data = fitted;
      blob->cap = blob->len;
    }
  }
}

int tly_dedupe_load(tly_dedupe_t *dedupe, int64_t key, const void *data,
                    size_t len) {
  const unsigned char *bytes = data;
  if (len < TLY_DEDUPE_BLOB_HEADER)
    return -1;
  uint32_t count = tly_get_be32(bytes + 8);
  /* Validate every record before indexing any. */
  size_t pos = TLY_DEDUPE_BLOB_HEADER;
  int64_t max_ms = INT64_MIN;
  for (uint32_t i = 0; i < count; i++) {
    if (len - pos < 10)
      return -1;
    size_t id_len = ((size_t)bytes[pos + 8] << 8) | bytes[pos + 9];
    if (len - pos - 10 < id_len)
      return -1;
    int64_t t = (int64_t)tly_get_be64(bytes + pos);
    if (t > max_ms)
      max_ms = t;
    pos += 10 + id_len;
  }
  if (pos != len || (count && max_ms != (int64_t)tly_get_be64(bytes)))
    return -1;
  if (!count) /* a spilled blob's stub: its ids are in the store */
    return 0;
  blob_t *open = dedupe->tail;
  if (open && !open->sealed) /* an open blob must stay the tail */
    return -1;
  blob_t *blob = calloc(1, sizeof(*blob));
  if (!blob)
    return -1;
  blob->data = malloc(len);
  if (!blob->data) {
    free(blob);
    return -1;
  }
  memcpy(blob->data, bytes, len);
  blob->len = blob->cap = len;
  blob->max_ms = max_ms;
  blob->count = count;
  blob->sealed = 1;
  blob->key = key;
  append_blob(dedupe, blob);
  for (pos = TLY_DEDUPE_BLOB_HEADER; pos < len;) {
    size_t id_len = ((size_t)bytes[pos + 8] << 8) | bytes[pos + 9];
    if (index_record(dedupe, blob, pos))
      return -1;
    pos += 10 + id_len;
  }
  return 0;
}

/* Forgets the oldest blob: its ids leave the index (only the slots still
 * pointing into it: a newer record of the same id in a later blob owns
 * the slot otherwise). */
static void forget_head(tly_dedupe_t *dedupe) {
  blob_t *blob = dedupe->head;
  size_t mask = dedupe->capacity - 1;
  for (size_t pos = TLY_DEDUPE_BLOB_HEADER; pos < blob->len;) {
    const unsigned char *record = blob->data + pos;
    size_t len = ((size_t)record[8] << 8) | record[9];
    uint64_t hash = hash_id((const char *)record + 10, len);
    for (size_t i = hash & mask; dedupe->slots[i].hash; i = (i + 1) & mask) {
      if (dedupe->slots[i].blob == blob && dedupe->slots[i].offset == pos) {
        delete_slot(dedupe, i);
        break;
      }
    }
    pos += 10 + len;
  }
  dedupe->head = blob->next;
  if (!dedupe->head)
    dedupe->tail = NULL;
  dedupe->blob_count--;
  dedupe->blob_bytes -= sizeof(*blob) + blob->cap;
  free(blob->data);
  free(blob);
}

/* Gives back table room once the index has shrunk to an eighth of it
 * (spilling or expiry forgot most ids): without it the table would keep
 * the room of the largest count ever held. 64 slots at least (as the
 * first table: a partition with few ids costs 1.5 KiB, so many partitions
 * fit a small dedupe share). */
static void shrink(tly_dedupe_t *dedupe) {
  size_t capacity = dedupe->capacity;
  while (capacity > 64 && dedupe->count * 8 < capacity)
    capacity /= 2;
  if (capacity == dedupe->capacity)
    return;
  slot_t *slots = malloc(capacity * sizeof(*slots));
  if (!slots)
    return; /* keeps the larger table: still correct */
  tly_zero_fill(slots, capacity * sizeof(*slots));
  size_t mask = capacity - 1;
  for (size_t i = 0; i < dedupe->capacity; i++) {
    slot_t *old = &dedupe->slots[i];
    if (!old->hash)
      continue;
    size_t j = old->hash & mask;
    while (slots[j].hash)
      j = (j + 1) & mask;
    slots[j] = *old;
  }
  free(dedupe->slots);
  dedupe->slots = slots;
  dedupe->capacity = capacity;
}

void tly_dedupe_expire(tly_dedupe_t *dedupe, int64_t horizon_ms) {
  int forgot = 0;
  while (dedupe->head && dedupe->head->sealed &&
         dedupe->head->max_ms < horizon_ms) {
    forget_head(dedupe);
    forgot = 1;
  }
  if (forgot)
    shrink(dedupe);
}

const void *tly_dedupe_spill_next(tly_dedupe_t *dedupe, size_t *len,
                                  int64_t *key) {
  blob_t *blob = dedupe->head;
  while (blob && blob->spilling)
    blob = blob->next;
  if (!blob || !blob->sealed)
    return NULL;
  blob->spilling = 1;
  tly_put_be64(blob->data, (uint64_t)blob->max_ms);
  tly_put_be32(blob->data + 8, blob->count);
  *len = blob->len;
  *key = blob->key;
  return blob->data;
}

size_t tly_dedupe_release_spilled(tly_dedupe_t *dedupe) {
  size_t released = 0;
  while (dedupe->head && dedupe->head->spilling) {
    forget_head(dedupe);
    released++;
  }
  if (released)
    shrink(dedupe);
  return released;
}

int tly_dedupe_blob_next(const void *blob, size_t len, size_t *pos,
                         const char **id, size_t *id_len,
                         int64_t *occurred_at_ms) {
  const unsigned char *bytes = blob;
  if (*pos < TLY_DEDUPE_BLOB_HEADER)
    *pos = TLY_DEDUPE_BLOB_HEADER;
  if (*pos >= len || len - *pos < 10)
    return 0;
  const unsigned char *record = bytes + *pos;
  size_t n = ((size_t)record[8] << 8) | record[9];
  if (len - *pos - 10 < n)
    return 0;
  *occurred_at_ms = (int64_t)tly_get_be64(record);
  *id = (const char *)record + 10;
  *id_len = n;
  *pos += 10 + n;
  return 1;
}

size_t tly_dedupe_count(const tly_dedupe_t *dedupe) { return dedupe->count; }

size_t tly_dedupe_blobs(const tly_dedupe_t *dedupe) {
  return dedupe->blob_count;
}

size_t tly_dedupe_bytes(const tly_dedupe_t *dedupe) {
  return sizeof(*dedupe) + dedupe->capacity * sizeof(slot_t) +
         dedupe->blob_bytes;
}
