/*
 * tly_contributions.c - the fold view's contribution callback
 * (tly_corrections.h): each applied usage event's contribution, written
 * with the batch that folded it, read back by usage_corrected events.
 *
 * Stored in the contributions family in two shapes (tly_keys.h):
 *   - chunks: an event's own contribution goes into its batch's log (fold
 *     order, no hashing, no sorting: a few bytes appended per event), each
 *     subject's entries linked from its overlay entry. At submit, when the
 *     subject's record is written (subjects in key order), its entries go
 *     out as chunks [p][kind:id][1][hour, 4 BE][batch key, 8 BE][part, 2
 *     BE] -> [newest occurred_at, 8 BE][2] then [id length, 2][value
 *     length, 1][event id][value] each: one put per subject, hour and batch
 *     (up to CHUNK_ENTRIES entries a part), not one per event. The batch
 *     key is the partition's dedupe blob key (its first offset in the
 *     batch): unique, so a chunk is never overwritten;
 *   - per event: [p][kind:id][0][event id] -> the contribution: a
 *     correction's replacement of an earlier event's contribution (rare),
 *     and every entry restored from the changelog or written before chunks.
 * A correction finds the original's contribution in this order: the
 *   open and in-flight replacements (tables), the subject's open and
 *   in-flight logs, its per-event key, then the chunks of the original's
 *   hour: the hour comes from the dedupe index (the id's occurred_at, in
 *   memory or spilled), and a scan of [p][kind:id][1][hour] compares whole
 *   event ids. A replacement is always found before the contribution it
 *   replaced, so the latest correction in log order wins, and a replay of
 *   the same log decides the same.
 *
 * Read-your-writes: the open batch's contributions and those of the batch
 * in the writer's hands (not in RocksDB until its write returns) are found
 * in memory first. Once the write is durable (tly_proc_batch_wait) that
 * batch's log and table are emptied, RocksDB answering from then on. An
 * overlay entry with a live log is never dropped: the overlay sheds
 * entries only after a durable write, keeping the open batch's.
 *
 * The changelog still gets one 'K' record per partition and commit, each
 * entry under its per-event key, as before: a restore puts each under its
 * own key, found by the per-event lookup.
 *
 * It never decides what a correction does (tly_corrections.c does); it
 * only keeps the bytes.
 */
#include "tly_processor_internal.h"

#include "tly_changelog.h"
#include "tly_corrections.h"
#include "tly_keys.h"
#include "tly_slab.h"

#include <stdlib.h>
#include <string.h>

#define CHUNK_VERSION 2
#define CHUNK_ENTRIES 4096 /* a part: bounds what one lookup reads */
#define LOG_PREV 4         /* a log entry's link */

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

/* ---- the batch logs -------------------------------------------------- */

static tly_contrib_log_t *open_log(tly_processor_t *p) {
  return &p->contrib_log[p->contrib_batch & 1];
}

/* Appends the event's own contribution to the open batch's log, linked
 * from its subject's entry. 0, or -1 when out of memory. */
static int log_append(tly_processor_t *p, tly_overlay_entry_t *entry,
                      const char *event_id, const unsigned char *value,
                      size_t value_len) {
  tly_contrib_log_t *log = open_log(p);
  unsigned slot = (unsigned)(p->contrib_batch & 1);
  size_t id_len = strlen(event_id), key_len = entry->key_len + 1 + id_len;
  size_t need = log->len + LOG_PREV + 3 + key_len + value_len;
  if (key_len > TLY_KEY_MAX || need > UINT32_MAX - 1)
    return -1;
  if (need > log->cap) {
    size_t cap = log->cap ? log->cap : 65536;
    while (cap < need)
      cap *= 2;
    unsigned char *grown = tly_huge_realloc(log->data, log->cap, cap);
    if (!grown)
      return -1;
    log->data = grown;
    log->cap = cap;
  }
  if (entry->contrib_batch[slot] != p->contrib_batch) {
    entry->contrib_batch[slot] = p->contrib_batch;
    entry->contrib_head[slot] = 0;
  }
  unsigned char *at = log->data + log->len;
  uint32_t prev = entry->contrib_head[slot];
  memcpy(at, &prev, LOG_PREV);
  at[4] = (unsigned char)(key_len >> 8);
  at[5] = (unsigned char)key_len;
  at[6] = (unsigned char)value_len;
  memcpy(at + 7, entry->key, entry->key_len);
  at[7 + entry->key_len] = '\0';
  memcpy(at + 8 + entry->key_len, event_id, id_len);
  memcpy(at + 7 + key_len, value, value_len);
  entry->contrib_head[slot] = (uint32_t)log->len + 1;
  log->len = need;
  tly_proc_changelog_grows(
      p, (int32_t)tly_get_be32((const unsigned char *)entry->key),
      3 + key_len + value_len);
  return 0;
}

/* key's value in the subject's log of batch (its newest entry of the key),
 * or NULL. */
static const unsigned char *log_find(const tly_processor_t *p,
                                     const tly_overlay_entry_t *entry,
                                     uint64_t batch, const char *key,
                                     size_t key_len, size_t *value_len) {
  unsigned slot = (unsigned)(batch & 1);
  if (entry->contrib_batch[slot] != batch)
    return NULL;
  const tly_contrib_log_t *log = &p->contrib_log[slot];
  for (uint32_t at = entry->contrib_head[slot]; at;) {
    const unsigned char *e = log->data + at - 1;
    size_t len = (size_t)e[4] << 8 | e[5];
    if (len == key_len && memcmp(e + 7, key, key_len) == 0) {
      *value_len = e[6];
      return e + 7 + len;
    }
    memcpy(&at, e, LOG_PREV);
  }
  return NULL;
}

static int32_t entry_hour(const unsigned char *e) {
  size_t key_len = (size_t)e[4] << 8 | e[5];
  return tly_billing_hour((int64_t)tly_get_be64(e + 7 + key_len));
}

static int compare_hours(const void *a, const void *b) {
  int32_t x = entry_hour(*(const unsigned char *const *)a);
  int32_t y = entry_hour(*(const unsigned char *const *)b);
  return (x > y) - (x < y);
}

/* One chunk: entries group[0..count) (one subject, one hour) as part
 * number part of the batch key. 0, or -1 (fatal). */
static int put_chunk(tly_processor_t *p, const tly_overlay_entry_t *entry,
                     const unsigned char **group, size_t count, int64_t batch,
                     uint32_t part) {
  size_t bytes = 9;
  int64_t newest = INT64_MIN;
  for (size_t i = 0; i < count; i++) {
    const unsigned char *e = group[i];
    size_t key_len = (size_t)e[4] << 8 | e[5];
    int64_t at = (int64_t)tly_get_be64(e + 7 + key_len);
    newest = at > newest ? at : newest;
    bytes += 3 + key_len - entry->key_len - 1 + e[6];
  }
  if (bytes > p->contrib_chunk_cap) {
    size_t cap = p->contrib_chunk_cap ? p->contrib_chunk_cap : 4096;
    while (cap < bytes)
      cap *= 2;
    unsigned char *grown = realloc(p->contrib_chunk, cap);
    if (!grown) {
      tly_proc_set_fatal(p, "out of memory writing contributions");
      return -1;
    }
    p->contrib_chunk = grown;
    p->contrib_chunk_cap = cap;
  }
  unsigned char *out = p->contrib_chunk;
  tly_put_be64(out, (uint64_t)newest); /* the store's expiry reads it */
  out[8] = CHUNK_VERSION;
  size_t at = 9;
  for (size_t i = 0; i < count; i++) {
    const unsigned char *e = group[i];
    size_t key_len = (size_t)e[4] << 8 | e[5];
    size_t id_len = key_len - entry->key_len - 1;
    out[at] = (unsigned char)(id_len >> 8);
    out[at + 1] = (unsigned char)id_len;
    out[at + 2] = e[6];
    memcpy(out + at + 3, e + 8 + entry->key_len, id_len + e[6]);
    at += 3 + id_len + e[6];
  }
  char key[TLY_KEY_MAX + 16];
  memcpy(key, entry->key, entry->key_len);
  key[entry->key_len] = 1;
  tly_put_be32((unsigned char *)key + entry->key_len + 1,
               (uint32_t)entry_hour(group[0]));
  tly_put_be64((unsigned char *)key + entry->key_len + 5, (uint64_t)batch);
  key[entry->key_len + 13] = (char)(part >> 8);
  key[entry->key_len + 14] = (char)part;
  tly_store_batch_put(p->batch, TLY_CF_CONTRIBUTIONS, key, entry->key_len + 15,
                      out, at);
  return 0;
}

void tly_proc_contrib_prefetch(const tly_processor_t *p,
                               const tly_overlay_entry_t *entry, int depth) {
  unsigned slot = (unsigned)(p->contrib_batch & 1);
  if (entry->contrib_batch[slot] != p->contrib_batch)
    return;
  /* The links before depth were fetched by the earlier calls. */
  uint32_t at = entry->contrib_head[slot];
  for (int i = 0; i < depth && at; i++)
    memcpy(&at, p->contrib_log[slot].data + at - 1, LOG_PREV);
  if (at)
    __builtin_prefetch(p->contrib_log[slot].data + at - 1);
}

int tly_proc_contrib_put_subject(tly_processor_t *p,
                                 const tly_overlay_entry_t *entry) {
  unsigned slot = (unsigned)(p->contrib_batch & 1);
  if (entry->contrib_batch[slot] != p->contrib_batch ||
      !entry->contrib_head[slot])
    return 0;
  const tly_contrib_log_t *log = &p->contrib_log[slot];
  size_t count = 0;
  for (uint32_t at = entry->contrib_head[slot]; at; count++) {
    const unsigned char *e = log->data + at - 1;
    if (array_room(&p->contrib_group, &p->contrib_group_cap, count + 1,
                   sizeof(*p->contrib_group))) {
      tly_proc_set_fatal(p, "out of memory writing contributions");
      return -1;
    }
    p->contrib_group[count] = e;
    memcpy(&at, e, LOG_PREV);
  }
  if (p->changelog_topic &&
      array_room(&p->contrib_kept, &p->contrib_kept_cap,
                 p->contrib_kept_count + count, sizeof(*p->contrib_kept))) {
    tly_proc_set_fatal(p, "out of memory writing contributions");
    return -1;
  }
  /* Oldest first: the changelog's entries keep fold order. */
  for (size_t i = 0; i < count / 2; i++) {
    const unsigned char *e = p->contrib_group[i];
    p->contrib_group[i] = p->contrib_group[count - 1 - i];
    p->contrib_group[count - 1 - i] = e;
  }
  if (count > 1 && entry_hour(p->contrib_group[0]) !=
                       entry_hour(p->contrib_group[count - 1]))
    qsort(p->contrib_group, count, sizeof(*p->contrib_group), compare_hours);
  int32_t partition = (int32_t)tly_get_be32((const unsigned char *)entry->key);
  int64_t batch = partition >= 0 && partition < p->partition_cap
                      ? p->partitions[partition].dedupe_key
                      : -1;
  if (batch < 0) { /* every event that left one recorded its id */
    tly_proc_set_fatal(p, "contributions of partition %d without a batch key",
                       (int)partition);
    return -1;
  }
  for (size_t from = 0; from < count;) {
    size_t to = from + 1;
    int32_t hour = entry_hour(p->contrib_group[from]);
    while (to < count && entry_hour(p->contrib_group[to]) == hour)
      to++;
    for (size_t part = 0; from + part * CHUNK_ENTRIES < to; part++) {
      size_t first = from + part * CHUNK_ENTRIES;
      size_t n = to - first < CHUNK_ENTRIES ? to - first : CHUNK_ENTRIES;
      if (put_chunk(p, entry, p->contrib_group + first, n, batch,
                    (uint32_t)part))
        return -1;
    }
    from = to;
  }
  if (p->changelog_topic)
    for (size_t j = 0; j < count; j++)
      p->contrib_kept[p->contrib_kept_count++] = p->contrib_group[j] + LOG_PREV;
  return 0;
}

/* The changelog gets one record per partition and commit, not one per
 * event: key [p][the batch's first offset there, 8 BE] (the dedupe blob's
 * key: it gets its tombstone when that blob does, tly_commit.c), value
 * [newest occurred_at, 8 BE] then the partition's entries
 * ([key length, 2][value length, 1][key][value]): the events' own in fold
 * order, then the replacements in key order (a restore puts each, in
 * order: the latest value of a key last, tly_changelog_restore.c). */
static int changelog_blobs(tly_processor_t *p, const unsigned char **entries,
                           size_t count) {
  for (size_t i = 0; i < count;) {
    uint32_t partition = tly_get_be32(entries[i] + 3);
    size_t end = i, bytes = 8;
    int64_t newest = INT64_MIN;
    while (end < count && tly_get_be32(entries[end] + 3) == partition) {
      const unsigned char *entry = entries[end];
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
      const unsigned char *entry = entries[j];
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
  size_t kept = p->contrib_kept_count, count = 0;
  p->contrib_kept_count = 0;
  if (array_room(&p->contrib_sorted, &p->contrib_sorted_cap, t->count,
                 sizeof(*p->contrib_sorted))) {
    tly_proc_set_fatal(p, "out of memory writing contributions");
    return -1;
  }
  for (size_t i = 0; t->count && i < t->slot_cap; i++)
    if (t->slots[i])
      p->contrib_sorted[count++] = t->data + (uint32_t)t->slots[i] - 1;
  /* In key order: RocksDB's memtable inserts sorted keys much faster. */
  if (count > 1)
    qsort(p->contrib_sorted, count, sizeof(*p->contrib_sorted),
          compare_entries);
  for (size_t i = 0; i < count; i++) {
    const unsigned char *entry = p->contrib_sorted[i];
    size_t key_len = (size_t)entry[0] << 8 | entry[1], len = entry[2];
    const unsigned char *key = entry + 3, *value = key + key_len;
    tly_store_batch_put(p->batch, TLY_CF_CONTRIBUTIONS, key, key_len, value,
                        len);
  }
  if (!p->changelog_topic || kept + count == 0)
    return 0;
  /* Both lists are by partition (subjects were written in key order):
   * merged partition by partition, the events' own first. */
  if (array_room(&p->contrib_merged, &p->contrib_merged_cap, kept + count,
                 sizeof(*p->contrib_merged))) {
    tly_proc_set_fatal(p, "out of memory writing contributions");
    return -1;
  }
  size_t a = 0, b = 0, n = 0;
  while (a < kept || b < count) {
    uint32_t pa = a < kept ? tly_get_be32(p->contrib_kept[a] + 3) : UINT32_MAX;
    uint32_t pb =
        b < count ? tly_get_be32(p->contrib_sorted[b] + 3) : UINT32_MAX;
    uint32_t partition = pa < pb ? pa : pb;
    while (a < kept && tly_get_be32(p->contrib_kept[a] + 3) == partition)
      p->contrib_merged[n++] = p->contrib_kept[a++];
    while (b < count && tly_get_be32(p->contrib_sorted[b] + 3) == partition)
      p->contrib_merged[n++] = p->contrib_sorted[b++];
  }
  return changelog_blobs(p, p->contrib_merged, n);
}

void tly_proc_contrib_submitted(tly_processor_t *p) {
  tly_contrib_table_t open = p->contrib_inflight_table;
  p->contrib_inflight_table = p->contrib_open;
  p->contrib_open = open;
  table_clear(&p->contrib_open);
  size_t last = open_log(p)->len;
  p->contrib_batch++;
  p->contrib_inflight = 1;
  tly_contrib_log_t *log = open_log(p);
  log->len = 0;          /* the batch before the in-flight one: durable */
  if (log->cap < last) { /* room for a batch like the last, without */
    /* regrowing it by doubling */
    /* Grown, not replaced: its pages stay faulted in (tly_slab.h). */
    unsigned char *room = tly_huge_realloc(log->data, log->cap, last);
    if (room) {
      log->data = room;
      log->cap = last;
    }
  }
  p->contrib_kept_count = 0;
}

void tly_proc_contrib_durable(tly_processor_t *p) {
  table_clear(&p->contrib_inflight_table);
  p->contrib_log[(p->contrib_batch - 1) & 1].len = 0;
  p->contrib_inflight = 0;
}

void tly_proc_contrib_free(tly_processor_t *p) {
  tly_contrib_table_t *tables[] = {&p->contrib_open,
                                   &p->contrib_inflight_table};
  for (size_t i = 0; i < 2; i++) {
    free(tables[i]->data);
    free(tables[i]->slots);
    memset(tables[i], 0, sizeof(*tables[i]));
    tly_huge_free(p->contrib_log[i].data, p->contrib_log[i].cap);
    memset(&p->contrib_log[i], 0, sizeof(p->contrib_log[i]));
  }
  free(p->contrib_sorted);
  free(p->contrib_kept);
  free(p->contrib_merged);
  free(p->contrib_group);
  free(p->contrib_chunk);
  p->contrib_sorted = p->contrib_kept = p->contrib_merged = NULL;
  p->contrib_group = NULL;
  p->contrib_chunk = NULL;
  p->contrib_sorted_cap = p->contrib_kept_cap = p->contrib_merged_cap = 0;
  p->contrib_kept_count = p->contrib_group_cap = p->contrib_chunk_cap = 0;
}

/* ---- lookups --------------------------------------------------------- */

/* The subject's overlay entry, if the overlay holds it (NULL: it holds no
 * contribution in memory). */
static tly_overlay_entry_t *
subject_of(tly_processor_t *p, tly_subject_kind_t kind, const char *id) {
  char key[TLY_KEY_MAX];
  size_t len = tly_key_account(p->view_partition, kind, id, key, sizeof(key));
  tly_overlay_entry_t *entry = p->last_entry;
  if (!len)
    return NULL;
  if (entry && entry->key_len == len && memcmp(entry->key, key, len) == 0)
    return entry;
  return tly_overlay_find(&p->overlay, TLY_CF_ACCOUNTS, key, len);
}

/* When the event event_id of this partition occurred, by its dedupe
 * record (in memory, or spilled): tly_proc_dedupe_time. */
static int original_time(tly_processor_t *p, const char *event_id,
                         int64_t *at_ms) {
  return tly_proc_dedupe_time(p, event_id, strlen(event_id), at_ms);
}

typedef struct {
  size_t prefix_len;
  const char *event_id;
  size_t id_len;
  tly_contribution_t *out;
  int found, bad;
} chunk_scan_t;

static int scan_chunk(void *opaque, const char *key, size_t key_len,
                      const char *value, size_t value_len) {
  chunk_scan_t *scan = opaque;
  (void)key;
  const unsigned char *v = (const unsigned char *)value;
  /* A chunk's key is the prefix, the batch key and the part; anything else
   * under the prefix is a per-event key of a subject whose id runs on. */
  if (key_len != scan->prefix_len + 10 || value_len < 9 ||
      v[8] != CHUNK_VERSION)
    return 0;
  for (size_t at = 9; at < value_len;) {
    if (value_len - at < 3) {
      scan->bad = 1;
      return 1;
    }
    size_t id_len = (size_t)v[at] << 8 | v[at + 1], len = v[at + 2];
    if (value_len - at - 3 < id_len + len) {
      scan->bad = 1;
      return 1;
    }
    if (id_len == scan->id_len &&
        memcmp(v + at + 3, scan->event_id, id_len) == 0) {
      scan->bad = tly_contribution_decode(v + at + 3 + id_len, len, scan->out);
      scan->found = !scan->bad;
      return 1;
    }
    at += 3 + id_len + len;
  }
  return 0;
}

/* The original's contribution in the chunks of its hour. 1 found, 0 not,
 * -1 fatal. */
static int chunk_lookup(tly_processor_t *p, tly_subject_kind_t kind,
                        const char *id, const char *event_id,
                        tly_contribution_t *contribution) {
  int64_t at_ms = 0;
  int known = original_time(p, event_id, &at_ms);
  if (known <= 0)
    return known;
  char prefix[TLY_KEY_MAX + 8], errstr[512];
  size_t len =
      tly_key_account(p->view_partition, kind, id, prefix, TLY_KEY_MAX);
  if (!len)
    return 0;
  prefix[len] = 1;
  tly_put_be32((unsigned char *)prefix + len + 1,
               (uint32_t)tly_billing_hour(at_ms));
  chunk_scan_t scan = {len + 5, event_id, strlen(event_id), contribution, 0, 0};
  if (tly_store_scan_prefix(p->store, TLY_CF_CONTRIBUTIONS, prefix, len + 5,
                            scan_chunk, &scan, errstr, sizeof(errstr))) {
    tly_proc_set_fatal(p, "reading contributions: %s", errstr);
    return -1;
  }
  if (scan.bad) {
    tly_proc_set_fatal(p, "a stored contribution of partition %d is corrupt",
                       (int)p->view_partition);
    return -1;
  }
  return scan.found;
}

int tly_proc_view_contribution(tly_billing_view_t *view,
                               tly_subject_kind_t kind, const char *id,
                               const char *event_id,
                               tly_contribution_t *contribution, int write) {
  tly_processor_t *p = view->opaque;
  unsigned char value[TLY_CONTRIBUTION_MAX];
  if (write && p->view_event_id && strcmp(event_id, p->view_event_id) == 0) {
    /* The event's own: into its batch's log, no key of its own. */
    tly_overlay_entry_t *entry = subject_of(p, kind, id);
    size_t len = tly_contribution_encode(contribution, value);
    if (!entry) { /* the fold asked for the subject's row first */
      tly_proc_set_fatal(p, "a contribution of a subject not in the overlay");
      return -1;
    }
    if (log_append(p, entry, event_id, value, len)) {
      tly_proc_set_fatal(p, "out of memory keeping a contribution");
      return -1;
    }
    return 0; /* into the batch at submit (tly_proc_contrib_put_subject) */
  }
  char key[TLY_KEY_MAX];
  size_t key_len = tly_key_contribution(p->view_partition, kind, id, event_id,
                                        key, sizeof(key));
  if (!key_len) { /* the event bounds keep every key far below the max */
    tly_proc_set_fatal(p, "a contribution key does not fit");
    return -1;
  }
  if (write) { /* a correction's replacement: under its own key */
    size_t len = tly_contribution_encode(contribution, value);
    if (table_put(&p->contrib_open, key, key_len, value, len)) {
      tly_proc_set_fatal(p, "out of memory keeping a contribution");
      return -1;
    }
    tly_proc_changelog_grows(p, p->view_partition, 3 + key_len + len);
    return 0; /* into the batch at submit (tly_proc_contrib_flush) */
  }
  size_t len = 0;
  const unsigned char *kept = table_get(&p->contrib_open, key, key_len, &len);
  if (!kept)
    kept = table_get(&p->contrib_inflight_table, key, key_len, &len);
  const tly_overlay_entry_t *entry = kept ? NULL : subject_of(p, kind, id);
  if (entry)
    kept = log_find(p, entry, p->contrib_batch, key, key_len, &len);
  if (entry && !kept && p->contrib_inflight)
    kept = log_find(p, entry, p->contrib_batch - 1, key, key_len, &len);
  if (kept && tly_contribution_decode(kept, len, contribution)) {
    tly_proc_set_fatal(p, "a contribution in memory is corrupt");
    return -1;
  }
  if (kept)
    return 1;
  char errstr[512], *stored = NULL;
  int found = tly_store_get(p->store, TLY_CF_CONTRIBUTIONS, key, key_len,
                            &stored, &len, errstr, sizeof(errstr));
  if (found < 0) {
    tly_proc_set_fatal(p, "reading a contribution: %s", errstr);
    return -1;
  }
  int bad = found && tly_contribution_decode(stored, len, contribution);
  tly_store_free(stored);
  if (bad) {
    tly_proc_set_fatal(p, "a stored contribution of partition %d is corrupt",
                       (int)p->view_partition);
    return -1;
  }
  return found ? 1 : chunk_lookup(p, kind, id, event_id, contribution);
}
