/*
 * tly_contributions.c - the fold view's contribution callback
 * (tly_corrections.h): each applied usage event's contribution, written
 * into the open batch (family contributions, [p][kind:id][0][event id],
 * and the state changelog as 'K' records), read back by usage_corrected
 * events.
 *
 * Read-your-writes: a contribution the open batch wrote, or the batch in
 * the writer's hands (not in RocksDB until its write returns), is found in
 * memory first: two small tables, the open batch's and the in-flight
 * batch's. At submit the open table becomes the in-flight one; once the
 * write is durable (tly_proc_batch_wait) that one is emptied, RocksDB
 * answering from then on. So a correction finds its original whether it
 * was folded in the same batch, the one being written, or any earlier
 * one, and a replay of the same log decides the same.
 *
 * It never decides what a correction does (tly_corrections.c does); it
 * only keeps the bytes.
 */
#include "tly_processor_internal.h"

#include "tly_changelog.h"
#include "tly_corrections.h"
#include "tly_keys.h"

#include <stdlib.h>
#include <string.h>

/* An entry in a table's data: [key length, 2 bytes][value length, 1 byte]
 * [key][value]. A slot holds the key's 32-bit hash (high half) and the
 * entry's offset + 1 (low half; 0: empty): probes and growth compare and
 * place by the hash without touching entries. */
static uint32_t hash_key(const char *key, size_t len) {
  uint64_t hash = 14695981039346656037ULL; /* FNV-1a */
  for (size_t i = 0; i < len; i++)
    hash = (hash ^ (unsigned char)key[i]) * 1099511628211ULL;
  return (uint32_t)(hash ^ (hash >> 32));
}

static const unsigned char *entry_at(const tly_contrib_table_t *t,
                                     uint64_t slot, size_t *key_len) {
  const unsigned char *entry = t->data + (uint32_t)slot - 1;
  *key_len = (size_t)entry[0] << 8 | entry[1];
  return entry;
}

/* The slot of key: its entry, or the empty one it would take. */
static size_t find_slot(const tly_contrib_table_t *t, const char *key,
                        size_t key_len, uint32_t hash) {
  size_t mask = t->slot_cap - 1, i = hash & mask;
  for (;; i = (i + 1) & mask) {
    size_t len;
    uint64_t slot = t->slots[i];
    if (!slot)
      return i;
    if ((uint32_t)(slot >> 32) != hash)
      continue;
    const unsigned char *entry = entry_at(t, slot, &len);
    if (len == key_len && memcmp(entry + 3, key, key_len) == 0)
      return i;
  }
}

static int grow_slots(tly_contrib_table_t *t) {
  size_t cap = t->slot_cap ? t->slot_cap * 2 : 1024, mask = cap - 1;
  uint64_t *old = t->slots, *slots = calloc(cap, sizeof(*slots));
  size_t old_cap = t->slot_cap;
  if (!slots)
    return -1;
  for (size_t i = 0; i < old_cap; i++) {
    if (!old[i])
      continue;
    size_t at = (uint32_t)(old[i] >> 32) & mask;
    while (slots[at])
      at = (at + 1) & mask;
    slots[at] = old[i];
  }
  free(old);
  t->slots = slots;
  t->slot_cap = cap;
  return 0;
}

/* Adds (or replaces) key's value. 0, or -1 when out of memory. */
static int table_put(tly_contrib_table_t *t, const char *key, size_t key_len,
                     const unsigned char *value, size_t value_len) {
  if ((t->count + 1) * 2 > t->slot_cap && grow_slots(t))
    return -1;
  size_t need = t->len + 3 + key_len + value_len;
  if (need > UINT32_MAX - 1)
    return -1;
  if (need > t->cap) {
    size_t cap = t->cap ? t->cap : 65536;
    while (cap < need)
      cap *= 2;
    unsigned char *grown = realloc(t->data, cap);
    if (!grown)
      return -1;
    t->data = grown;
    t->cap = cap;
  }
  unsigned char *entry = t->data + t->len;
  entry[0] = (unsigned char)(key_len >> 8);
  entry[1] = (unsigned char)key_len;
  entry[2] = (unsigned char)value_len;
  memcpy(entry + 3, key, key_len);
  memcpy(entry + 3 + key_len, value, value_len);
  uint32_t hash = hash_key(key, key_len);
  size_t slot = find_slot(t, key, key_len, hash);
  if (!t->slots[slot])
    t->count++;
  t->slots[slot] = (uint64_t)hash << 32 | (uint64_t)(t->len + 1);
  t->len = need;
  return 0;
}

/* The value of key, or NULL. */
static const unsigned char *table_get(const tly_contrib_table_t *t,
                                      const char *key, size_t key_len,
                                      size_t *value_len) {
  if (!t->count)
    return NULL;
  size_t slot = find_slot(t, key, key_len, hash_key(key, key_len)), len;
  if (!t->slots[slot])
    return NULL;
  const unsigned char *entry = entry_at(t, t->slots[slot], &len);
  *value_len = entry[2];
  return entry + 3 + len;
}

static void table_clear(tly_contrib_table_t *t) {
  if (t->count)
    memset(t->slots, 0, t->slot_cap * sizeof(*t->slots));
  t->count = 0;
  t->len = 0;
}

/* The changelog gets one record per partition and commit, not one per
 * event: key [p][the batch's first offset there, 8 BE] (the dedupe blob's
 * key: it gets its tombstone when that blob does, tly_commit.c), value
 * [newest occurred_at, 8 BE] then the partition's entries as the tables
 * hold them ([key length, 2][value length, 1][key][value]), in key order;
 * a restore puts each entry (tly_changelog_restore.c). */
static int changelog_blobs(tly_processor_t *p, size_t count) {
  for (size_t i = 0; i < count;) {
    uint32_t partition = tly_get_be32(p->contrib_sorted[i] + 3);
    size_t end = i, bytes = 8;
    int64_t newest = INT64_MIN;
    while (end < count &&
           tly_get_be32(p->contrib_sorted[end] + 3) == partition) {
      const unsigned char *entry = p->contrib_sorted[end];
      size_t key_len = (size_t)entry[0] << 8 | entry[1];
      int64_t at = (int64_t)tly_get_be64(entry + 3 + key_len);
      newest = at > newest ? at : newest;
      bytes += 3 + key_len + entry[2];
      end++;
    }
    unsigned char *blob = tly_proc_record_room(p, bytes);
    if (!blob) {
      tly_proc_set_fatal(p, "out of memory writing contributions");
      return -1;
    }
    tly_put_be64(blob, (uint64_t)newest);
    size_t at = 8;
    for (size_t j = i; j < end; j++) {
      const unsigned char *entry = p->contrib_sorted[j];
      size_t len = 3 + ((size_t)entry[0] << 8 | entry[1]) + entry[2];
      memcpy(blob + at, entry, len);
      at += len;
    }
    unsigned char key[12];
    tly_put_be32(key, partition);
    tly_put_be64(key + 4,
                 (uint64_t)p->partitions[(int32_t)partition].dedupe_key);
    tly_changelog_bundle_add(&p->bundle, (int32_t)partition,
                             TLY_CHANGELOG_CONTRIBUTION, key, sizeof(key), blob,
                             bytes);
    i = end;
  }
  return 0;
}

static int compare_entries(const void *a, const void *b) {
  const unsigned char *x = *(const unsigned char *const *)a;
  const unsigned char *y = *(const unsigned char *const *)b;
  size_t x_len = (size_t)x[0] << 8 | x[1], y_len = (size_t)y[0] << 8 | y[1];
  int c = memcmp(x + 3, y + 3, x_len < y_len ? x_len : y_len);
  return c ? c : (x_len > y_len) - (x_len < y_len);
}

int tly_proc_contrib_flush(tly_processor_t *p) {
  tly_contrib_table_t *t = &p->contrib_open;
  if (!t->count)
    return 0;
  if (array_room(&p->contrib_sorted, &p->contrib_sorted_cap, t->count,
                 sizeof(*p->contrib_sorted))) {
    tly_proc_set_fatal(p, "out of memory writing contributions");
    return -1;
  }
  size_t count = 0;
  for (size_t i = 0; i < t->slot_cap; i++)
    if (t->slots[i])
      p->contrib_sorted[count++] = t->data + (uint32_t)t->slots[i] - 1;
  /* In key order: RocksDB's memtable inserts sorted keys much faster. */
  qsort(p->contrib_sorted, count, sizeof(*p->contrib_sorted), compare_entries);
  for (size_t i = 0; i < count; i++) {
    const unsigned char *entry = p->contrib_sorted[i];
    size_t key_len = (size_t)entry[0] << 8 | entry[1], len = entry[2];
    const unsigned char *key = entry + 3, *value = key + key_len;
    tly_store_batch_put(p->batch, TLY_CF_CONTRIBUTIONS, key, key_len, value,
                        len);
  }
  return p->changelog_topic ? changelog_blobs(p, count) : 0;
}

void tly_proc_contrib_submitted(tly_processor_t *p) {
  tly_contrib_table_t open = p->contrib_inflight;
  p->contrib_inflight = p->contrib_open;
  p->contrib_open = open;
  table_clear(&p->contrib_open);
}

void tly_proc_contrib_durable(tly_processor_t *p) {
  table_clear(&p->contrib_inflight);
}

void tly_proc_contrib_free(tly_processor_t *p) {
  tly_contrib_table_t *tables[] = {&p->contrib_open, &p->contrib_inflight};
  for (size_t i = 0; i < 2; i++) {
    free(tables[i]->data);
    free(tables[i]->slots);
    memset(tables[i], 0, sizeof(*tables[i]));
  }
  free(p->contrib_sorted);
  p->contrib_sorted = NULL;
  p->contrib_sorted_cap = 0;
}

int tly_proc_view_contribution(tly_billing_view_t *view,
                               tly_subject_kind_t kind, const char *id,
                               const char *event_id,
                               tly_contribution_t *contribution, int write) {
  tly_processor_t *p = view->opaque;
  char key[TLY_KEY_MAX];
  size_t key_len = tly_key_contribution(p->view_partition, kind, id, event_id,
                                        key, sizeof(key));
  if (!key_len) { /* the event bounds keep every key far below the max */
    tly_proc_set_fatal(p, "a contribution key does not fit");
    return -1;
  }
  if (write) {
    unsigned char value[TLY_CONTRIBUTION_MAX];
    size_t len = tly_contribution_encode(contribution, value);
    if (table_put(&p->contrib_open, key, key_len, value, len)) {
      tly_proc_set_fatal(p, "out of memory keeping a contribution");
      return -1;
    }
    return 0; /* into the batch at submit (tly_proc_contrib_flush) */
  }
  size_t len = 0;
  const unsigned char *kept = table_get(&p->contrib_open, key, key_len, &len);
  if (!kept)
    kept = table_get(&p->contrib_inflight, key, key_len, &len);
  if (kept && tly_contribution_decode(kept, len, contribution)) {
    tly_proc_set_fatal(p, "a contribution in memory is corrupt");
    return -1;
  }
  if (kept)
    return 1;
  char errstr[512], *value = NULL;
  int found = tly_store_get(p->store, TLY_CF_CONTRIBUTIONS, key, key_len,
                            &value, &len, errstr, sizeof(errstr));
  if (found < 0) {
    tly_proc_set_fatal(p, "reading a contribution: %s", errstr);
    return -1;
  }
  int bad = found && tly_contribution_decode(value, len, contribution);
  tly_store_free(value);
  if (bad) {
    tly_proc_set_fatal(p, "a stored contribution of partition %d is corrupt",
                       (int)p->view_partition);
    return -1;
  }
  return found;
}
