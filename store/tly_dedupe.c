/*
 * tly_dedupe.c - the in-memory event id index over dedupe blobs (see
 * tly_dedupe.h).
 *
 * Every record (one id in a blob) has a number, counted up per index
 * (uint32, wrapping: fewer than 2^32 records are ever held at once). The
 * table is open addressing with linear probing and backward-shift
 * deletion over 8-byte slots: [32-bit tag: the id hash's high half][the
 * record's number]; 0 is an empty slot (a tag is never 0). The home slot
 * is the tag's top bits, so growing, shrinking and deleting never read an
 * id, and a probe reads an id only when the whole tag matches: a new id
 * costs one or two cache lines of the table and nothing else. A tag match
 * is confirmed against the whole id, never taken on the hash alone.
 *
 * A record's number finds its blob by a binary search over the blobs
 * (kept in an array, oldest first) and its bytes from a mark every
 * MARK_EVERY records: only hits pay that (duplicates, and ids recorded
 * again).
 */
#include "tly_dedupe.h"

#include "tly_hash.h"
#include "tly_slab.h"

#include "tly_store.h"

#include <stdlib.h>
#include <string.h>

#define MARK_EVERY 16
#define MIN_CAPACITY 64

typedef struct blob {
  unsigned char *data; /* header + records, as stored */
  size_t len, cap;
  int64_t max_ms;
  int64_t key;     /* the blob's store key (its batch's first offset) */
  uint32_t count;  /* its records */
  uint32_t first;  /* the number of its first record */
  uint32_t *marks; /* offset of record k * MARK_EVERY, k < ceil(count/16) */
  size_t mark_cap;
  int sealed;
  int spilling; /* its ids are in the batch being written to the store */
} blob_t;

struct tly_dedupe {
  uint64_t *slots;
  size_t capacity; /* power of two, or 0 */
  unsigned shift;  /* 32 - log2(capacity): home = tag >> shift */
  size_t count;
  blob_t **blobs; /* a ring of blob pointers, oldest first; the newest may
                     be the open blob */
  size_t blob_head, blob_count, blob_cap;
  uint32_t next_number; /* of the next record */
  size_t open_hint;     /* the last sealed blob's length: the next open
                           blob starts with that room, so a catch-up batch
                           does not regrow (and copy) its blob by doubling */
  size_t blob_bytes;    /* sizeof(blob_t) + cap + marks of every blob */
};

/* The index's seed; the filter's differs (base/tly_hash.h). */
static uint64_t hash_id(const char *id, size_t len) {
  return tly_hash_bytes(id, len, TLY_HASH_SEED_DEDUPE);
}

static uint32_t tag_of(uint64_t hash) {
  uint32_t tag = (uint32_t)(hash >> 32);
  return tag ? tag : 1;
}

static uint32_t slot_tag(uint64_t slot) { return (uint32_t)(slot >> 32); }
static uint32_t slot_number(uint64_t slot) { return (uint32_t)slot; }
static uint64_t make_slot(uint32_t tag, uint32_t number) {
  return (uint64_t)tag << 32 | number;
}

static blob_t *blob_at(const tly_dedupe_t *dedupe, size_t i) {
  return dedupe->blobs[(dedupe->blob_head + i) & (dedupe->blob_cap - 1)];
}

static blob_t *newest_blob(const tly_dedupe_t *dedupe) {
  return dedupe->blob_count ? blob_at(dedupe, dedupe->blob_count - 1) : NULL;
}

/* The bytes of record number n (held: some blob holds it). */
static const unsigned char *record_of(const tly_dedupe_t *dedupe, uint32_t n) {
  uint32_t base = blob_at(dedupe, 0)->first;
  uint32_t rel = n - base;
  size_t lo = 0, hi = dedupe->blob_count; /* the blob: last first <= n */
  while (hi - lo > 1) {
    size_t mid = lo + (hi - lo) / 2;
    if (blob_at(dedupe, mid)->first - base <= rel)
      lo = mid;
    else
      hi = mid;
  }
  const blob_t *blob = blob_at(dedupe, lo);
  uint32_t k = n - blob->first;
  size_t pos = blob->marks[k / MARK_EVERY];
  for (uint32_t skip = k % MARK_EVERY; skip; skip--)
    pos += 10 + (((size_t)blob->data[pos + 8] << 8) | blob->data[pos + 9]);
  return blob->data + pos;
}

static int record_is(const unsigned char *record, const char *id, size_t len) {
  size_t stored = ((size_t)record[8] << 8) | record[9];
  return stored == len && memcmp(record + 10, id, len) == 0;
}

tly_dedupe_t *tly_dedupe_new(void) { return calloc(1, sizeof(tly_dedupe_t)); }

static void blob_free(blob_t *blob) {
  free(blob->data);
  free(blob->marks);
  free(blob);
}

void tly_dedupe_free(tly_dedupe_t *dedupe) {
  if (!dedupe)
    return;
  for (size_t i = 0; i < dedupe->blob_count; i++)
    blob_free(blob_at(dedupe, i));
  free(dedupe->blobs);
  tly_huge_free(dedupe->slots, dedupe->capacity * sizeof(*dedupe->slots));
  free(dedupe);
}

/* The index of the slot holding id, or of the empty slot where it would
 * go. */
static size_t probe(const tly_dedupe_t *dedupe, uint32_t tag, const char *id,
                    size_t len) {
  size_t mask = dedupe->capacity - 1;
  for (size_t i = tag >> dedupe->shift;; i = (i + 1) & mask) {
    uint64_t slot = dedupe->slots[i];
    if (!slot || (slot_tag(slot) == tag &&
                  record_is(record_of(dedupe, slot_number(slot)), id, len)))
      return i;
  }
}

void tly_dedupe_prefetch(const tly_dedupe_t *dedupe, const char *id,
                         size_t len) {
  if (dedupe->capacity)
    __builtin_prefetch(
        &dedupe->slots[tag_of(hash_id(id, len)) >> dedupe->shift]);
}

int tly_dedupe_lookup(const tly_dedupe_t *dedupe, const char *id, size_t len,
                      int64_t *occurred_at_ms) {
  if (!dedupe->capacity)
    return 0;
  uint64_t slot =
      dedupe->slots[probe(dedupe, tag_of(hash_id(id, len)), id, len)];
  if (!slot)
    return 0;
  *occurred_at_ms = (int64_t)tly_get_be64(record_of(dedupe, slot_number(slot)));
  return 1;
}

static unsigned log2_of(size_t capacity) {
  unsigned bits = 0;
  while ((size_t)1 << bits < capacity)
    bits++;
  return bits;
}

/* Moves every slot into a fresh table of capacity slots (homes from the
 * tags: no id is read). */
static int resize(tly_dedupe_t *dedupe, size_t capacity) {
  unsigned bits = log2_of(capacity);
  if (bits > 32)
    return -1;
  /* Probed at random: from huge pages once it takes 2 MiB (tly_slab.h),
   * one TLB entry and one fault per 2 MiB. */
  uint64_t *slots = tly_huge_alloc(capacity * sizeof(*slots));
  if (!slots)
    return -1;
  unsigned shift = 32 - bits;
  size_t mask = capacity - 1;
  for (size_t i = 0; i < dedupe->capacity; i++) {
    uint64_t slot = dedupe->slots[i];
    if (!slot)
      continue;
    size_t j = shift < 32 ? slot_tag(slot) >> shift : 0;
    while (slots[j])
      j = (j + 1) & mask;
    slots[j] = slot;
  }
  tly_huge_free(dedupe->slots, dedupe->capacity * sizeof(*dedupe->slots));
  dedupe->slots = slots;
  dedupe->capacity = capacity;
  dedupe->shift = shift;
  return 0;
}

/* Points the id's slot at record number n (a newer record of an id
 * already present replaces the older one). */
static int index_record(tly_dedupe_t *dedupe, const unsigned char *record,
                        uint32_t n) {
  size_t len = ((size_t)record[8] << 8) | record[9];
  const char *id = (const char *)record + 10;
  /* At most three quarters full. */
  if ((dedupe->count + 1) * 4 > dedupe->capacity * 3 &&
      resize(dedupe, dedupe->capacity ? dedupe->capacity * 2 : MIN_CAPACITY))
    return -1;
  uint32_t tag = tag_of(hash_id(id, len));
  size_t i = probe(dedupe, tag, id, len);
  if (!dedupe->slots[i])
    dedupe->count++;
  dedupe->slots[i] = make_slot(tag, n);
  return 0;
}

/* Removes the slot at index i, shifting later members of its run back so
 * that every remaining id stays reachable from its home slot. */
static void delete_slot(tly_dedupe_t *dedupe, size_t i) {
  size_t mask = dedupe->capacity - 1;
  size_t hole = i;
  for (size_t j = (i + 1) & mask; dedupe->slots[j]; j = (j + 1) & mask) {
    size_t home = slot_tag(dedupe->slots[j]) >> dedupe->shift;
    /* j may move into the hole unless its home lies cyclically in
     * (hole, j]. */
    int home_after_hole =
        hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
    if (!home_after_hole) {
      dedupe->slots[hole] = dedupe->slots[j];
      hole = j;
    }
  }
  dedupe->slots[hole] = 0;
  dedupe->count--;
}

static int append_blob(tly_dedupe_t *dedupe, blob_t *blob) {
  if (dedupe->blob_count == dedupe->blob_cap) {
    size_t cap = dedupe->blob_cap ? dedupe->blob_cap * 2 : 16;
    blob_t **ring = malloc(cap * sizeof(*ring));
    if (!ring)
      return -1;
    for (size_t i = 0; i < dedupe->blob_count; i++)
      ring[i] = blob_at(dedupe, i);
    free(dedupe->blobs);
    dedupe->blobs = ring;
    dedupe->blob_head = 0;
    dedupe->blob_cap = cap;
  }
  dedupe->blobs[(dedupe->blob_head + dedupe->blob_count) &
                (dedupe->blob_cap - 1)] = blob;
  dedupe->blob_count++;
  dedupe->blob_bytes +=
      sizeof(*blob) + blob->cap + blob->mark_cap * sizeof(*blob->marks);
  return 0;
}

/* Notes the offset of the blob's record k when it starts a mark. */
static int mark(tly_dedupe_t *dedupe, blob_t *blob, uint32_t k, size_t pos) {
  if (k % MARK_EVERY)
    return 0;
  size_t m = k / MARK_EVERY;
  if (m >= blob->mark_cap) {
    size_t cap = blob->mark_cap ? blob->mark_cap * 2 : 16;
    uint32_t *grown = realloc(blob->marks, cap * sizeof(*grown));
    if (!grown)
      return -1;
    dedupe->blob_bytes += (cap - blob->mark_cap) * sizeof(*grown);
    blob->marks = grown;
    blob->mark_cap = cap;
  }
  blob->marks[m] = (uint32_t)pos;
  return 0;
}

static blob_t *open_blob(tly_dedupe_t *dedupe) {
  blob_t *tail = newest_blob(dedupe);
  if (tail && !tail->sealed)
    return tail;
  blob_t *blob = calloc(1, sizeof(*blob));
  if (!blob)
    return NULL;
  blob->cap = dedupe->open_hint > 4096 ? dedupe->open_hint : 4096;
  blob->data = malloc(blob->cap);
  if (!blob->data || append_blob(dedupe, blob)) {
    free(blob->data);
    free(blob);
    return NULL;
  }
  blob->len = TLY_DEDUPE_BLOB_HEADER;
  blob->max_ms = INT64_MIN;
  blob->first = dedupe->next_number;
  return blob;
}

int tly_dedupe_record(tly_dedupe_t *dedupe, const char *id, size_t len,
                      int64_t occurred_at_ms) {
  /* A blob's offsets are 32-bit: a blob never reaches 4 GiB (a batch
   * holds at most batch_max_events ids of at most TLY_DEDUPE_ID_MAX). */
  if (len > TLY_DEDUPE_ID_MAX)
    return -1;
  blob_t *blob = open_blob(dedupe);
  if (!blob || blob->len + 10 + len > UINT32_MAX)
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
  if (mark(dedupe, blob, blob->count, offset))
    return -1;
  unsigned char *record = blob->data + offset;
  tly_put_be64(record, (uint64_t)occurred_at_ms);
  record[8] = (unsigned char)(len >> 8);
  record[9] = (unsigned char)len;
  memcpy(record + 10, id, len);
  /* The record counts in its blob before it is indexed (record_of finds
   * it by its number); undone if indexing fails. */
  blob->len += 10 + len;
  blob->count++;
  dedupe->next_number++;
  if (index_record(dedupe, record, blob->first + blob->count - 1)) {
    blob->len = offset;
    blob->count--;
    dedupe->next_number--;
    return -1;
  }
  if (occurred_at_ms > blob->max_ms)
    blob->max_ms = occurred_at_ms;
  return 0;
}

const void *tly_dedupe_open_blob(tly_dedupe_t *dedupe, size_t *len) {
  blob_t *blob = newest_blob(dedupe);
  if (!blob || blob->sealed || !blob->count)
    return NULL;
  tly_put_be64(blob->data, (uint64_t)blob->max_ms);
  tly_put_be32(blob->data + 8, blob->count);
  *len = blob->len;
  return blob->data;
}

void tly_dedupe_seal(tly_dedupe_t *dedupe, int64_t key) {
  blob_t *blob = newest_blob(dedupe);
  if (!blob || blob->sealed)
    return;
  blob->sealed = 1;
  blob->key = key;
  /* A little more than it took (the next batch of a backlog is alike);
   * capped, so one huge batch does not make every later blob huge. */
  dedupe->open_hint = blob->len + blob->len / 8;
  if (dedupe->open_hint > ((size_t)64 << 20))
    dedupe->open_hint = (size_t)64 << 20;
  /* A sealed blob never grows: give back the room the open one had (4 KiB
   * at least). With a commit per few events (group commit) most blobs
   * hold an id or two, and the slack would cost more than the ids. Slots
   * name records by number, so the data may move. */
  if (blob->cap > blob->len) {
    unsigned char *fitted = realloc(blob->data, blob->len);
    if (fitted) {
      dedupe->blob_bytes -= blob->cap - blob->len;
      blob->data = fitted;
      blob->cap = blob->len;
    }
  }
  size_t marks = (blob->count + MARK_EVERY - 1) / MARK_EVERY;
  if (marks && blob->mark_cap > marks) {
    uint32_t *fitted = realloc(blob->marks, marks * sizeof(*fitted));
    if (fitted) {
      dedupe->blob_bytes -= (blob->mark_cap - marks) * sizeof(*fitted);
      blob->marks = fitted;
      blob->mark_cap = marks;
    }
  }
}

int tly_dedupe_load(tly_dedupe_t *dedupe, int64_t key, const void *data,
                    size_t len) {
  const unsigned char *bytes = data;
  if (len < TLY_DEDUPE_BLOB_HEADER || len > UINT32_MAX)
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
  blob_t *open = newest_blob(dedupe);
  if (open && !open->sealed) /* an open blob must stay the newest */
    return -1;
  blob_t *blob = calloc(1, sizeof(*blob));
  if (!blob)
    return -1;
  size_t marks = (count + MARK_EVERY - 1) / MARK_EVERY;
  blob->data = malloc(len);
  blob->marks = malloc(marks * sizeof(*blob->marks));
  if (!blob->data || !blob->marks || append_blob(dedupe, blob)) {
    blob_free(blob);
    return -1;
  }
  memcpy(blob->data, bytes, len);
  blob->len = len;
  blob->max_ms = max_ms;
  blob->key = key;
  blob->sealed = 1;
  blob->first = dedupe->next_number;
  /* Counted in full now (append_blob counted an empty blob). */
  dedupe->blob_bytes += len + marks * sizeof(*blob->marks);
  blob->cap = len;
  blob->mark_cap = marks;
  pos = TLY_DEDUPE_BLOB_HEADER;
  for (uint32_t k = 0; k < count; k++) {
    if (!(k % MARK_EVERY))
      blob->marks[k / MARK_EVERY] = (uint32_t)pos;
    pos += 10 + (((size_t)bytes[pos + 8] << 8) | bytes[pos + 9]);
  }
  blob->count = count;
  dedupe->next_number += count;
  pos = TLY_DEDUPE_BLOB_HEADER;
  for (uint32_t k = 0; k < count; k++) {
    if (index_record(dedupe, blob->data + pos, blob->first + k))
      return -1;
    pos += 10 + (((size_t)bytes[pos + 8] << 8) | bytes[pos + 9]);
  }
  return 0;
}

/* Forgets the oldest blob: its ids leave the index (only the slots still
 * naming its records: a newer record of the same id in a later blob owns
 * the slot otherwise). */
static void forget_head(tly_dedupe_t *dedupe) {
  blob_t *blob = blob_at(dedupe, 0);
  size_t mask = dedupe->capacity - 1;
  size_t pos = TLY_DEDUPE_BLOB_HEADER;
  for (uint32_t k = 0; k < blob->count; k++) {
    const unsigned char *record = blob->data + pos;
    size_t len = ((size_t)record[8] << 8) | record[9];
    uint64_t want = make_slot(tag_of(hash_id((const char *)record + 10, len)),
                              blob->first + k);
    for (size_t i = slot_tag(want) >> dedupe->shift; dedupe->slots[i];
         i = (i + 1) & mask) {
      if (dedupe->slots[i] == want) {
        delete_slot(dedupe, i);
        break;
      }
    }
    pos += 10 + len;
  }
  dedupe->blobs[dedupe->blob_head] = NULL;
  dedupe->blob_head = (dedupe->blob_head + 1) & (dedupe->blob_cap - 1);
  dedupe->blob_count--;
  dedupe->blob_bytes -=
      sizeof(*blob) + blob->cap + blob->mark_cap * sizeof(*blob->marks);
  blob_free(blob);
}

/* Gives back table room once the index has shrunk to an eighth of it
 * (spilling or expiry forgot most ids): without it the table would keep
 * the room of the largest count ever held. MIN_CAPACITY slots at least (a
 * partition with few ids costs 512 bytes of table, so many partitions fit
 * a small dedupe share). */
static void shrink(tly_dedupe_t *dedupe) {
  size_t capacity = dedupe->capacity;
  while (capacity > MIN_CAPACITY && dedupe->count * 8 < capacity)
    capacity /= 2;
  if (capacity != dedupe->capacity)
    resize(dedupe, capacity); /* failing keeps the larger table: correct */
}

void tly_dedupe_expire(tly_dedupe_t *dedupe, int64_t horizon_ms) {
  int forgot = 0;
  while (dedupe->blob_count && blob_at(dedupe, 0)->sealed &&
         blob_at(dedupe, 0)->max_ms < horizon_ms) {
    forget_head(dedupe);
    forgot = 1;
  }
  if (forgot)
    shrink(dedupe);
}

const void *tly_dedupe_spill_next(tly_dedupe_t *dedupe, size_t *len,
                                  int64_t *key) {
  size_t i = 0;
  while (i < dedupe->blob_count && blob_at(dedupe, i)->spilling)
    i++;
  blob_t *blob = i < dedupe->blob_count ? blob_at(dedupe, i) : NULL;
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
  while (dedupe->blob_count && blob_at(dedupe, 0)->spilling) {
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
  /* The open blob by what it holds: the room it was given ahead (the last
   * blob's size) is only address space until written. */
  const blob_t *open = newest_blob(dedupe);
  size_t room = open && !open->sealed ? open->cap - open->len : 0;
  return sizeof(*dedupe) + dedupe->capacity * sizeof(*dedupe->slots) +
         dedupe->blob_cap * sizeof(*dedupe->blobs) + dedupe->blob_bytes - room;
}
