/*
 * tly_fold_view.c - the state the fold works through: the
 * tly_billing_view_t (tly_billing.h) the processor hands the pure fold,
 * over the overlay (the open batch's subject records, kept across batches
 * as a cache) with RocksDB behind it.
 *
 * A subject record is loaded and decoded on first touch; an hour the
 * record no longer holds is loaded from its own key before it changes;
 * every entry the fold changes is queued for the next commit; a closed
 * cycle goes to the archive; event ids are checked against the
 * partition's dedupe index.
 *
 * The callbacks run for every record folded: what they call stays in this
 * file (or inline in tly_processor_internal.h), so the fold's path makes
 * no call across files of its own. It never writes RocksDB: what changes
 * goes into the open batch that tly_commit.c writes.
 */
#include "tly_processor_internal.h"

#include "tly_keys.h"

#include <stdlib.h>
#include <string.h>

/* ---- the state view the fold works through --------------------------- */

/* Decodes a stored subject record into a fresh overlay entry. */
static int decode_entry(tly_overlay_entry_t *entry, const char *value,
                        size_t len) {
  tly_subject_record_t record;
  int failed = 0;
  if (entry->cf != TLY_CF_ACCOUNTS ||
      tly_subject_record_decode(value, len, &record))
    return -1;
  entry->account = record.account;
  /* The entry takes the record's holds. */
  entry->holds =
      (tly_holds_t){record.holds, record.hold_count, record.hold_count};
  record.holds = NULL;
  record.hold_count = 0;
  entry->distinct = record.distinct; /* and its distinct values */
  memset(&record.distinct, 0, sizeof(record.distinct));
  if (tly_read_marks_any(&record.read_marks)) { /* and its read marks */
    entry->read_marks = malloc(sizeof(*entry->read_marks));
    if (entry->read_marks)
      *entry->read_marks = record.read_marks;
    failed = !entry->read_marks;
  }
  entry->stored_cycle_end = tly_subject_due_ms(
      &entry->account, entry->holds.items, entry->holds.count);
  for (size_t i = 0; i < record.row_count && !failed; i++) {
    tly_subject_row_t *row = tly_overlay_row(
        entry, record.rows[i].cycle_start_ms, record.rows[i].feature);
    if (row)
      row->row = record.rows[i].row;
    failed = !row;
  }
  for (size_t i = 0; i < record.bucket_count && !failed; i++) {
    tly_overlay_bucket_t *hour = tly_overlay_bucket(
        entry, record.buckets[i].hour, record.buckets[i].feature);
    if (hour) {
      hour->bucket.totals = record.buckets[i].totals;
      hour->in_record = 1;
    }
    failed = !hour;
  }
  tly_subject_record_clear(&record);
  return failed ? -1 : 0;
}

/* The overlay entry for (cf, key), loaded from RocksDB and decoded on
 * first touch. key_len 0 means the key did not fit (what names it).
 * NULL after setting the fatal reason. */
static tly_overlay_entry_t *view_entry(tly_processor_t *p, tly_cf_t cf,
                                       const char *key, size_t key_len,
                                       const char *what) {
  char errstr[512], *loaded = NULL;
  size_t loaded_len = 0;
  tly_overlay_t *overlay = &p->overlay;
  if (!key_len) {
    tly_proc_set_fatal(p, "%s too long for a state key", what);
    return NULL;
  }
  tly_overlay_entry_t *entry = tly_overlay_find(overlay, cf, key, key_len);
  if (entry)
    return entry;
  int found = tly_store_get(p->store, cf, key, key_len, &loaded, &loaded_len,
                            errstr, sizeof(errstr));
  if (found < 0) {
    tly_proc_set_fatal(p, "reading state: %s", errstr);
    return NULL;
  }
  entry = tly_overlay_insert(overlay, cf, key, key_len);
  if (!entry)
    tly_proc_set_fatal(p, "out of memory growing the overlay");
  else if (found && decode_entry(entry, loaded, loaded_len)) {
    tly_proc_set_fatal(p, "stored %s record of partition %d is corrupt",
                       tly_store_cf_name(cf), (int)p->view_partition);
    entry = NULL;
  } else {
    entry->stored = found;
    if (found)
      tly_overlay_account(overlay, entry); /* its rows, buckets, sets */
  }
  tly_store_free(loaded);
  return entry;
}

/* Queues the entry for the next commit (once). */
static void mark_dirty(tly_processor_t *p, tly_overlay_entry_t *entry) {
  if (entry->dirty)
    return;
  if (array_room(&p->dirty, &p->dirty_cap, p->dirty_count + 1,
                 sizeof(*p->dirty))) {
    tly_proc_set_fatal(p, "out of memory queueing a record to write");
    return;
  }
  entry->dirty = 1;
  p->dirty[p->dirty_count++] = entry;
}

tly_account_t *tly_proc_view_account(tly_billing_view_t *view,
                                     tly_subject_kind_t kind, const char *id) {
  tly_processor_t *p = view->opaque;
  char key[TLY_KEY_MAX];
  size_t key_len =
      tly_key_account(p->view_partition, kind, id, key, sizeof(key));
  tly_overlay_entry_t *entry =
      view_entry(p, TLY_CF_ACCOUNTS, key, key_len, "subject id");
  if (!entry)
    return NULL;
  mark_dirty(p, entry);
  p->last_entry = entry;
  return &entry->account;
}

/* The subject's entry, for a request that follows tly_proc_view_account's:
 * usually the entry at hand. NULL after setting the fatal reason. */
static tly_overlay_entry_t *
subject_entry(tly_processor_t *p, tly_subject_kind_t kind, const char *id) {
  char key[TLY_KEY_MAX];
  size_t key_len =
      tly_key_account(p->view_partition, kind, id, key, sizeof(key));
  tly_overlay_entry_t *entry = p->last_entry;
  if (!entry || entry->key_len != key_len ||
      memcmp(entry->key, key, key_len) != 0)
    entry = view_entry(p, TLY_CF_ACCOUNTS, key, key_len, "subject id");
  return entry;
}

tly_billing_row_t *tly_proc_view_row(tly_billing_view_t *view,
                                     tly_subject_kind_t kind, const char *id,
                                     int64_t cycle_start_ms,
                                     const char *feature) {
  tly_processor_t *p = view->opaque;
  tly_overlay_entry_t *entry = subject_entry(p, kind, id);
  if (!entry)
    return NULL;
  tly_subject_row_t *row = tly_overlay_row(entry, cycle_start_ms, feature);
  if (!row) {
    tly_proc_set_fatal(p, "out of memory adding a usage row");
    return NULL;
  }
  mark_dirty(p, entry);
  return &row->row;
}

/* Loads an hour the subject record no longer holds from its own key (absent:
 * nothing was used that hour, or it expired). 0, or -1 after setting the
 * fatal reason. */
static int load_hour(tly_processor_t *p, tly_overlay_entry_t *entry,
                     int32_t hour) {
  char key[TLY_KEY_MAX], errstr[512], *value = NULL;
  unsigned char suffix[4];
  size_t value_len = 0, count = 0;
  tly_subject_bucket_t *buckets = NULL;
  tly_put_be32(suffix, (uint32_t)hour);
  size_t key_len = tly_proc_history_key(entry, TLY_HISTORY_HOUR, suffix, 4, key,
                                        sizeof(key));
  int found = key_len
                  ? tly_store_get(p->store, TLY_CF_USAGE, key, key_len, &value,
                                  &value_len, errstr, sizeof(errstr))
                  : -1;
  if (found < 0) {
    tly_proc_set_fatal(p, "reading a usage bucket: %s",
                       key_len ? errstr : "subject id too long");
    return -1;
  }
  if (found && (value_len < 8 || tly_bucket_decode(value + 8, value_len - 8,
                                                   hour, &buckets, &count))) {
    tly_store_free(value);
    tly_proc_set_fatal(p, "stored usage buckets of partition %d are corrupt",
                       (int)p->view_partition);
    return -1;
  }
  tly_store_free(value);
  int failed = 0;
  for (size_t i = 0; i < count && !failed; i++) {
    tly_overlay_bucket_t *bucket =
        tly_overlay_bucket(entry, hour, buckets[i].feature);
    if (bucket)
      bucket->bucket.totals = buckets[i].totals;
    failed = !bucket;
  }
  free(buckets);
  if (failed)
    tly_proc_set_fatal(p, "out of memory loading usage buckets");
  return failed ? -1 : 0;
}

/* Before a bucket of hour is touched: an hour older than the newest may
 * have a key, so it is loaded whole first and rewritten complete. An hour
 * in memory is always whole. 0, or -1 after setting the fatal reason. */
static int whole_hour(tly_processor_t *p, tly_overlay_entry_t *entry,
                      int32_t hour) {
  if (tly_overlay_has_hour(entry, hour) || hour >= newest_used_hour(entry))
    return 0;
  return load_hour(p, entry, hour);
}

tly_bucket_t *tly_proc_view_bucket(tly_billing_view_t *view,
                                   tly_subject_kind_t kind, const char *id,
                                   int32_t hour, const char *feature) {
  tly_processor_t *p = view->opaque;
  tly_overlay_entry_t *entry = subject_entry(p, kind, id);
  if (!entry)
    return NULL;
  if (whole_hour(p, entry, hour))
    return NULL;
  tly_overlay_bucket_t *bucket = tly_overlay_bucket(entry, hour, feature);
  if (!bucket) {
    tly_proc_set_fatal(p, "out of memory adding a usage bucket");
    return NULL;
  }
  bucket->dirty = 1;
  mark_dirty(p, entry);
  return &bucket->bucket.totals;
}

/* A group's bucket (tly_dims.h): name's own or the prefix's "other", in
 * one pass over the hour's buckets. The hour is loaded whole first, as for
 * a bucket. */
tly_bucket_t *tly_proc_view_group_bucket(tly_billing_view_t *view,
                                         tly_subject_kind_t kind,
                                         const char *id, int32_t hour,
                                         char *name, size_t prefix_len,
                                         long max) {
  tly_processor_t *p = view->opaque;
  tly_overlay_entry_t *entry = subject_entry(p, kind, id);
  if (!entry)
    return NULL;
  if (whole_hour(p, entry, hour))
    return NULL;
  tly_overlay_bucket_t *found = NULL;
  long count = 0;
  for (size_t i = 0; i < entry->bucket_count; i++) {
    tly_overlay_bucket_t *bucket = entry->buckets[i];
    if (bucket->bucket.hour != hour ||
        strncmp(bucket->bucket.feature, name, prefix_len) != 0)
      continue;
    if (strcmp(bucket->bucket.feature + prefix_len, name + prefix_len) == 0)
      found = bucket;
    count += bucket->bucket.totals.event_count != 0;
  }
  if (!found || !found->bucket.totals.event_count) {
    if (count >= max) {
      strcpy(name + prefix_len, "other");
      found = NULL;
    }
    if (!found)
      found = tly_overlay_bucket(entry, hour, name);
  }
  if (!found) {
    tly_proc_set_fatal(p, "out of memory adding a usage bucket");
    return NULL;
  }
  found->dirty = 1;
  mark_dirty(p, entry);
  return &found->bucket.totals;
}

/* A closed cycle leaves the kept history: its totals and rows go to the
 * archive, in the same batch as the record that forgets them. */
int tly_proc_view_archive(tly_billing_view_t *view, tly_subject_kind_t kind,
                          const char *id, const tly_cycle_t *cycle) {
  tly_processor_t *p = view->opaque;
  char key[TLY_KEY_MAX];
  unsigned char suffix[8];
  tly_overlay_entry_t *entry = subject_entry(p, kind, id);
  if (!entry)
    return -1;
  if (array_room(&p->row_ptrs, &p->row_ptr_cap, entry->row_count,
                 sizeof(*p->row_ptrs))) {
    tly_proc_set_fatal(p, "out of memory archiving a cycle");
    return -1;
  }
  size_t count = 0;
  for (size_t i = 0; i < entry->row_count; i++)
    if (entry->rows[i]->cycle_start_ms == cycle->start_ms &&
        entry->rows[i]->row.event_count)
      p->row_ptrs[count++] = entry->rows[i];
  tly_put_be64(suffix, (uint64_t)cycle->start_ms);
  size_t key_len = tly_proc_history_key(entry, TLY_HISTORY_CYCLE, suffix, 8,
                                        key, sizeof(key));
  size_t need =
      8 + tly_cycle_archive_encode(cycle, p->row_ptrs, count, NULL, 0);
  if (!key_len || !tly_proc_record_room(p, need)) {
    tly_proc_set_fatal(p, "archiving a cycle: %s",
                       key_len ? "out of memory" : "subject id too long");
    return -1;
  }
  tly_cycle_archive_encode(cycle, p->row_ptrs, count, p->record + 8, need - 8);
  tly_proc_put_history(p, key, key_len, INT64_MAX,
                       need); /* the invoice basis: kept */
  return 0;
}

/* The subject's entry, to be written at commit: for what the fold may
 * change in place in its record. NULL after setting the fatal reason. */
static tly_overlay_entry_t *changing_entry(tly_billing_view_t *view,
                                           tly_subject_kind_t kind,
                                           const char *id) {
  tly_processor_t *p = view->opaque;
  tly_overlay_entry_t *entry = subject_entry(p, kind, id);
  if (entry)
    mark_dirty(p, entry);
  return entry;
}

/* The subject's open reservations, in its record (written with it). */
tly_holds_t *tly_proc_view_holds(tly_billing_view_t *view,
                                 tly_subject_kind_t kind, const char *id) {
  tly_overlay_entry_t *entry = changing_entry(view, kind, id);
  return entry ? &entry->holds : NULL;
}

/* The subject's read marks, in its record (written with it): allocated
 * for the few subjects that read alerts (tly_overlay.h). */
tly_read_marks_t *tly_proc_view_read_marks(tly_billing_view_t *view,
                                           tly_subject_kind_t kind,
                                           const char *id) {
  tly_overlay_entry_t *entry = changing_entry(view, kind, id);
  if (!entry)
    return NULL;
  if (!entry->read_marks &&
      !(entry->read_marks = calloc(1, sizeof(*entry->read_marks))))
    tly_proc_set_fatal(view->opaque, "out of memory adding read marks");
  return entry->read_marks;
}

/* The subject's unique_count values, in its record (written with it). */
tly_distinct_sets_t *tly_proc_view_distinct(tly_billing_view_t *view,
                                            tly_subject_kind_t kind,
                                            const char *id) {
  tly_overlay_entry_t *entry = changing_entry(view, kind, id);
  return entry ? &entry->distinct : NULL;
}

int tly_proc_view_seen(tly_billing_view_t *view, const char *event_id,
                       int64_t occurred_at_ms, int record) {
  tly_processor_t *p = view->opaque;
  partition_state_t *part = &p->partitions[p->view_partition];
  size_t len = strlen(event_id);
  int64_t seen_at_ms;
  if (!part->dedupe) {
    tly_proc_set_fatal(p, "partition %d has no dedupe index",
                       (int)p->view_partition);
    return -1;
  }
  if (record) {
    if (tly_dedupe_record(part->dedupe, event_id, len, occurred_at_ms)) {
      tly_proc_set_fatal(p, "recording event id of %zu bytes: %s", len,
                         len > TLY_DEDUPE_ID_MAX ? "too long"
                                                 : "out of memory");
      return -1;
    }
    if (part->dedupe_key < 0)
      part->dedupe_key = p->view_offset;
    tly_proc_changelog_grows(p, p->view_partition, 10 + len);
    return 0;
  }
  /* An id older than the window is expired whether or not it has been
   * forgotten yet: the answer must not depend on when memory or compaction
   * dropped it. */
  int64_t horizon =
      *view->watermark_ms > INT64_MIN + p->billing.dedupe_window_ms
          ? *view->watermark_ms - p->billing.dedupe_window_ms
          : INT64_MIN;
  int known = tly_proc_dedupe_time(p, event_id, len, &seen_at_ms);
  if (known < 0)
    return -1;
  return known && seen_at_ms >= horizon; /* the id's newest record */
}

int tly_proc_dedupe_time(tly_processor_t *p, const char *event_id, size_t len,
                         int64_t *at_ms) {
  partition_state_t *part = &p->partitions[p->view_partition];
  if (!part->dedupe)
    return 0;
  if (tly_dedupe_lookup(part->dedupe, event_id, len, at_ms))
    return 1;
  if (!part->spilled)
    return 0; /* memory holds every id of the window */
  if (part->filter && !part->filter_build &&
      !tly_dedupe_filter_maybe(part->filter, event_id, len)) {
    atomic_fetch_add(&p->filter_skips, 1);
    return 0; /* never spilled (the filter holds every spilled id) */
  }
  /* Spilled out of memory, perhaps: RocksDB's bloom filters answer almost
   * every new id without reading a block; a found key is compared whole. */
  char key[TLY_KEY_MAX], errstr[512], *value = NULL;
  size_t key_len = tly_key_dedupe_id(p->view_partition, event_id, len, key,
                                     sizeof(key)),
         value_len = 0;
  if (!key_len)
    return 0; /* never spilled: longer than any stored id */
  atomic_fetch_add(&p->id_reads, 1);
  int found = tly_store_get(p->store, TLY_CF_DEDUPE_IDS, key, key_len, &value,
                            &value_len, errstr, sizeof(errstr));
  if (found < 0) {
    tly_proc_set_fatal(p, "reading a spilled event id: %s", errstr);
    return -1;
  }
  found = found && value_len >= 8;
  if (found)
    *at_ms = (int64_t)tly_get_be64((const unsigned char *)value);
  tly_store_free(value);
  return found;
}
