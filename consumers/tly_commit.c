/*
 * tly_commit.c - the processor's batch and its writer thread (step 3 of
 * the order in tly_processor.c).
 *
 * What the fold changed becomes one RocksDB WriteBatch: the dirty subject
 * records (the newest hour in the record, older hours under keys of their
 * own), report marks for the Stripe emitter, the cycle-end index, the
 * batch's dedupe blobs, its changelog records (one outbox entry) and their
 * expiry, the outbox entries and deletes, the next offsets. The writer
 * thread makes it durable (one synced write) while the next batch is
 * folded; tly_proc_batch_wait then releases what the commit made durable:
 * outputs join the outbox, offsets and horizons count as committed. Commit
 * latency and event-to-visible histograms are kept here.
 *
 * It never folds and never decides what is published: outputs join the
 * outbox only once their batch is durable (tly_outbox_publish.c sends
 * them).
 */
#include "tly_processor_internal.h"

#include "tly_changelog.h"
#include "tly_keys.h"
#include "tly_log.h"

#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define COMMIT_ATTEMPTS 6

/* ---- the batch ------------------------------------------------------- */

int tly_proc_batch_has_work(tly_processor_t *p) {
  if (p->batch_messages || p->output_count)
    return 1;
  for (size_t i = 0; i < p->outbox_count; i++)
    if (p->outbox[i].state == OUTBOX_ACKED)
      return 1;
  for (size_t i = 0; i < p->ack_count; i++)
    if (p->acks[i].dirty)
      return 1;
  return 0;
}

/* Takes record (malloc'd, already in outbox form) as an output of the
 * open batch. 0, or -1 when out of memory (record stays the caller's). */
static int add_raw_output(tly_processor_t *p, char *record, size_t len) {
  if (array_room(&p->outputs, &p->output_cap, p->output_count + 1,
                 sizeof(*p->outputs)))
    return -1;
  p->outputs[p->output_count++] = (pending_output_t){record, len};
  p->output_bytes += len;
  return 0;
}

void tly_proc_batch_discard_outputs(tly_processor_t *p) {
  for (size_t i = 0; i < p->output_count; i++)
    free(p->outputs[i].record);
  p->output_count = 0;
  p->output_bytes = 0;
}

/* Queues one overlay entry's write. */
/* p->record with room for need bytes; NULL when out of memory. */
unsigned char *tly_proc_record_room(tly_processor_t *p, size_t need) {
  if (need > p->record_cap) {
    unsigned char *grown = realloc(p->record, need);
    if (!grown)
      return NULL;
    p->record = grown;
    p->record_cap = need;
  }
  return p->record;
}

/* The hour's buckets the entry holds, into p->bucket_ptrs; the count, or
 * (size_t)-1 when out of memory. */
static size_t collect_hour(tly_processor_t *p, const tly_overlay_entry_t *entry,
                           int32_t hour) {
  if (array_room(&p->bucket_ptrs, &p->bucket_ptr_cap, entry->bucket_count,
                 sizeof(*p->bucket_ptrs)))
    return (size_t)-1;
  size_t count = 0;
  for (size_t i = 0; i < entry->bucket_count; i++)
    if (entry->buckets[i]->bucket.hour == hour)
      p->bucket_ptrs[count++] = &entry->buckets[i]->bucket;
  return count;
}

/* Whether the hour's key must be written from memory at this commit: it is
 * not the newest, and a bucket of it changed or was in the record. A
 * changed bucket is written even when it holds no event any more (a
 * correction retracted them: its stored key must not keep them). */
static int hour_needs_write(const tly_overlay_entry_t *entry, int32_t hour,
                            int32_t newest) {
  if (hour == newest)
    return 0;
  for (size_t i = 0; i < entry->bucket_count; i++) {
    const tly_overlay_bucket_t *bucket = entry->buckets[i];
    if (bucket->bucket.hour == hour &&
        (bucket->dirty ||
         (bucket->in_record && bucket->bucket.totals.event_count)))
      return 1;
  }
  return 0;
}

/* [subject key][0][tag][suffix]: a history key of the entry's subject. */
size_t tly_proc_history_key(const tly_overlay_entry_t *entry, char tag,
                            const void *suffix, size_t suffix_len, char *out,
                            size_t out_size) {
  if (entry->key_len + 2 + suffix_len > out_size)
    return 0;
  memcpy(out, entry->key, entry->key_len);
  out[entry->key_len] = '\0';
  out[entry->key_len + 1] = tag;
  memcpy(out + entry->key_len + 2, suffix, suffix_len);
  return entry->key_len + 2 + suffix_len;
}

/* A state put of the open batch, for the changelog too (keys start with
 * their partition). */
static void changelog_put(tly_processor_t *p, char kind, const void *key,
                          size_t key_len, const void *value, size_t value_len) {
  if (p->changelog_topic && key_len >= 4)
    tly_changelog_bundle_add(&p->bundle,
                             (int32_t)tly_get_be32((const unsigned char *)key),
                             kind, key, key_len, value, value_len);
}

/* Puts a history value: [expires_at, 8 bytes BE] then what p->record holds
 * from offset 8 (len bytes in all). With the changelog on, a value that
 * expires is indexed by its expiry too (changelog_expire_history). */
void tly_proc_put_history(tly_processor_t *p, const char *key, size_t key_len,
                          int64_t expires_at_ms, size_t len) {
  tly_put_be64(p->record, (uint64_t)expires_at_ms);
  tly_store_batch_put(p->batch, TLY_CF_USAGE, key, key_len, p->record, len);
  changelog_put(p, TLY_CHANGELOG_USAGE, key, key_len, p->record, len);
  char index[TLY_KEY_MAX + 12];
  size_t index_len =
      p->changelog_topic && expires_at_ms != INT64_MAX
          ? tly_key_expiry(key, key_len, expires_at_ms, index, sizeof(index))
          : 0;
  if (index_len)
    tly_store_batch_put(p->batch, TLY_CF_EXPIRIES, index, index_len, "", 0);
}

/* Writes every bucket the entry holds of hour to the hour's own key. */
static int put_hour_key(tly_processor_t *p, const tly_overlay_entry_t *entry,
                        int32_t hour) {
  char key[TLY_KEY_MAX];
  unsigned char suffix[4];
  tly_put_be32(suffix, (uint32_t)hour);
  size_t key_len = tly_proc_history_key(entry, TLY_HISTORY_HOUR, suffix, 4, key,
                                        sizeof(key));
  size_t count = collect_hour(p, entry, hour);
  if (!key_len || count == (size_t)-1)
    return -1;
  size_t need = 8 + tly_bucket_encode(p->bucket_ptrs, count, NULL, 0);
  if (!tly_proc_record_room(p, need))
    return -1;
  tly_bucket_encode(p->bucket_ptrs, count, p->record + 8, need - 8);
  int64_t expires = ((int64_t)hour + 1) * TLY_HOUR_MS +
                    p->conf.config->retention.daily_days * TLY_DAY_MS;
  tly_proc_put_history(p, key, key_len, expires, need);
  return 0;
}

/* Usage to report to Stripe (producers/tly_stripe_emitter.h): a subject
 * linked to a Stripe customer whose metered usage changed gets a mark in
 * the same commit as the usage, so the emitter finds its work without
 * scanning every subject. The key carries the partition's next offset:
 * later commits write greater keys, never one the emitter may be deleting.
 * The value: when it was written (the "oldest unreported" metric) and the
 * hours that changed. */
static int put_report_mark(tly_processor_t *p,
                           const tly_overlay_entry_t *entry) {
  char key[TLY_KEY_MAX];
  if (!p->reports || !entry->account.stripe_customer_id[0])
    return 0;
  if (entry->key_len + 8 > sizeof(key) ||
      !tly_proc_record_room(p, 8 + 4 * entry->bucket_count))
    return -1;
  size_t len = 8;
  for (size_t i = 0; i < entry->bucket_count; i++) {
    const tly_subject_bucket_t *bucket = &entry->buckets[i]->bucket;
    if (!entry->buckets[i]->dirty ||
        !tly_config_stripe_meter(p->conf.config, bucket->feature))
      continue;
    size_t seen = 8;
    while (seen < len &&
           tly_get_be32(p->record + seen) != (uint32_t)bucket->hour)
      seen += 4;
    if (seen == len) {
      tly_put_be32(p->record + len, (uint32_t)bucket->hour);
      len += 4;
    }
  }
  if (len == 8)
    return 0;
  uint32_t partition = tly_get_be32((const unsigned char *)entry->key);
  const partition_state_t *part = &p->partitions[partition];
  int64_t seq = part->batch_next >= 0 ? part->batch_next : part->committed;
  memcpy(key, entry->key, 4);
  tly_put_be64((unsigned char *)key + 4, (uint64_t)seq);
  memcpy(key + 12, entry->key + 4, entry->key_len - 4);
  tly_put_be64(p->record, (uint64_t)tly_wall_ms());
  tly_store_batch_put(p->batch, TLY_CF_REPORTS, key, entry->key_len + 8,
                      p->record, len);
  /* On the changelog too: a new owner of the partition reports what this
   * one had not settled. */
  changelog_put(p, TLY_CHANGELOG_REPORT, key, entry->key_len + 8, p->record,
                len);
  return 0;
}

static int batch_put_entry(tly_processor_t *p, tly_overlay_entry_t *entry) {
  char index_key[TLY_KEY_MAX];
  switch (entry->cf) {
  case TLY_CF_ACCOUNTS: {
    const tly_account_t *account = &entry->account;
    if (!account->exists)
      return 0;
    const tly_subject_row_t *const *rows =
        (const tly_subject_row_t *const *)entry->rows;
    int32_t newest = newest_used_hour(entry);
    size_t bucket_count = collect_hour(p, entry, newest);
    if (bucket_count == (size_t)-1)
      return -1;
    /* Encoded in place, in the batch (a copy of every subject record was
     * 4 % of the fold thread): one pass when the record fits the room
     * opened for it (the largest record so far, p->record_cap), a second
     * one in room of its size. */
    const tly_holds_t *holds = &entry->holds;
    size_t room = p->record_cap, len;
    unsigned char *at;
    for (;;) {
      at = tly_store_batch_put_open(p->batch, TLY_CF_ACCOUNTS, entry->key,
                                    entry->key_len, room);
      if (!at)
        return -1; /* out of memory: the batch refuses to commit too */
      len = tly_subject_record_encode_meters(
          account, rows, entry->row_count, p->bucket_ptrs, bucket_count,
          holds->items, holds->count, &entry->distinct, entry->read_marks, at,
          room);
      if (len <= room)
        break;
      if (!tly_proc_record_room(p, len)) /* the next records' guess */
        return -1;
      room = len;
    }
    tly_store_batch_put_close(p->batch, len);
    changelog_put(p, TLY_CHANGELOG_ACCOUNT, entry->key, entry->key_len, at,
                  len);
    /* Hours that are no longer the newest go to keys of their own (each
     * once, however many of its buckets need it). */
    for (size_t i = 0; i < entry->bucket_count; i++) {
      int32_t hour = entry->buckets[i]->bucket.hour;
      int first = 1;
      for (size_t j = 0; j < i && first; j++)
        first = entry->buckets[j]->bucket.hour != hour;
      if (first && hour_needs_write(entry, hour, newest) &&
          put_hour_key(p, entry, hour))
        return -1;
    }
    if (put_report_mark(p, entry))
      return -1;
    /* The cycle-end index: [p][end][kind:id], from the account key
     * [p][kind:id]. Ticks find the accounts due through it; end is the
     * cycle's end or the subject's next hold expiry, the first. */
    int64_t due_ms = tly_subject_due_ms(account, holds->items, holds->count);
    if (entry->stored_cycle_end == due_ms ||
        entry->key_len - 4 + 12 > sizeof(index_key))
      return 0;
    memcpy(index_key, entry->key, 4);
    memcpy(index_key + 12, entry->key + 4, entry->key_len - 4);
    if (entry->stored_cycle_end >= 0) {
      tly_put_be64((unsigned char *)index_key + 4,
                   (uint64_t)entry->stored_cycle_end);
      tly_store_batch_delete(p->batch, TLY_CF_CYCLE_ENDS, index_key,
                             entry->key_len + 8);
    }
    tly_put_be64((unsigned char *)index_key + 4, (uint64_t)due_ms);
    tly_store_batch_put(p->batch, TLY_CF_CYCLE_ENDS, index_key,
                        entry->key_len + 8, "", 0);
    return 0;
  }
  default:
    return 0;
  }
}

/* What sorting the batch compares, copied out of the entries: comparing
 * entries in place read two scattered entries and keys per comparison.
 * The key's first 16 bytes, big-endian in two integers (zero-padded),
 * settle almost every comparison without touching the key; ties fall back
 * to the bytes. */
struct sort_key {
  uint64_t head[2];
  tly_cf_t cf;
  const char *key;
  size_t key_len;
  tly_overlay_entry_t *entry;
};

static struct sort_key sort_key_of(tly_overlay_entry_t *entry) {
  unsigned char head[16] = {0};
  memcpy(head, entry->key, entry->key_len < 16 ? entry->key_len : 16);
  return (struct sort_key){{tly_get_be64(head), tly_get_be64(head + 8)},
                           entry->cf,
                           entry->key,
                           entry->key_len,
                           entry};
}

static int compare_sort_keys(const void *a, const void *b) {
  const struct sort_key *x = a, *y = b;
  if (x->cf != y->cf)
    return x->cf < y->cf ? -1 : 1;
  for (int i = 0; i < 2; i++)
    if (x->head[i] != y->head[i])
      return x->head[i] < y->head[i] ? -1 : 1;
  size_t len = x->key_len < y->key_len ? x->key_len : y->key_len;
  int c = memcmp(x->key, y->key, len);
  if (c)
    return c;
  return x->key_len < y->key_len ? -1 : x->key_len > y->key_len;
}

/* Keeps an hour's buckets while the subject record holds them or while the
 * batch that wrote their key from memory is not yet durable (a read of the
 * key would miss that write); the others are in RocksDB. */
typedef struct {
  int32_t newest;
  uint64_t submit;
} hour_keep_t;

static int keep_hour(const tly_overlay_bucket_t *bucket, void *opaque) {
  const hour_keep_t *keep = opaque;
  return bucket->bucket.hour == keep->newest || bucket->flushed == keep->submit;
}

/* A unique_count set stays while its cycle is kept (as the record keeps
 * it). */
static int distinct_kept(const void *opaque, int64_t cycle_start_ms,
                         const char *feature) {
  const tly_account_t *account = opaque;
  tly_subject_row_t row = {.cycle_start_ms = cycle_start_ms};
  (void)feature;
  row.row.event_count = 1;
  return tly_subject_row_kept(account, &row);
}

/* After the batch is handed to the writer: a dirty subject record now
 * equals what the batch stores (rows the record leaves out go from memory
 * too), so it stays as a cache. */
static void mark_committed(tly_processor_t *p, tly_overlay_entry_t *entry) {
  if (entry->dirty && entry->account.exists) {
    entry->stored = 1;
    entry->stored_cycle_end = tly_subject_due_ms(
        &entry->account, entry->holds.items, entry->holds.count);
  }
  tly_overlay_prune_rows(entry, tly_subject_row_kept);
  if (entry->distinct.count)
    tly_distinct_prune(&entry->distinct, distinct_kept, &entry->account);
  hour_keep_t keep = {newest_used_hour(entry), p->submits};
  for (size_t i = 0; i < entry->bucket_count; i++) {
    tly_overlay_bucket_t *hour = entry->buckets[i];
    if (hour_needs_write(entry, hour->bucket.hour, keep.newest))
      hour->flushed = keep.submit; /* before the flags below change */
  }
  for (size_t i = 0; i < entry->bucket_count; i++) {
    tly_overlay_bucket_t *hour = entry->buckets[i];
    hour->in_record = hour->bucket.hour == keep.newest;
    hour->dirty = 0;
  }
  tly_overlay_prune_buckets(entry, keep_hour, &keep);
  entry->dirty = 0;
  tly_overlay_account(&p->overlay, entry); /* as it stays cached */
}

/* When a dedupe blob is looked at again for its changelog tombstone: once
 * the window passes its newest event (the store's compaction filter drops
 * it by the same horizon, newest < watermark - window). */
static int64_t blob_check_at(const tly_processor_t *p, int64_t newest_ms) {
  return newest_ms < INT64_MAX - p->billing.dedupe_window_ms - 1
             ? newest_ms + p->billing.dedupe_window_ms + 1
             : INT64_MAX;
}

/* The sealed blob's entry in the expiry index (with the changelog): on
 * disk, so what the changelog's blob tombstones need takes no memory
 * however many batches the window holds. */
static void index_blob(tly_processor_t *p, int32_t partition, int64_t offset,
                       int64_t newest_ms) {
  char key[TLY_KEY_EXPIRY_BLOB_LEN];
  unsigned char value[8];
  tly_put_be64(value, (uint64_t)newest_ms);
  tly_key_expiry_blob(partition, offset, blob_check_at(p, newest_ms), key,
                      sizeof(key));
  tly_store_batch_put(p->batch, TLY_CF_EXPIRIES, key, sizeof(key), value,
                      sizeof(value));
}

/* Expired history keys of a scanned partition: the index keys, up to the
 * watermark (the index is sorted by expiry, so the scan stops at the first
 * one still due later). */
typedef struct {
  int64_t watermark;
  struct expired_key {
    char *key;
    size_t len;
    int64_t newest_ms; /* a blob's entry: its newest event time */
  } * keys;
  size_t count, cap;
  int failed;
} expired_scan_t;

static int collect_expired(void *opaque, const char *key, size_t key_len,
                           const char *value, size_t value_len) {
  expired_scan_t *scan = opaque;
  if (key_len < 12 + 4 ||
      (int64_t)tly_get_be64((const unsigned char *)key + 4) > scan->watermark)
    return 1;
  char *copy = malloc(key_len);
  if (!copy || array_room(&scan->keys, &scan->cap, scan->count + 1,
                          sizeof(*scan->keys))) {
    free(copy);
    scan->failed = 1;
    return 1;
  }
  memcpy(copy, key, key_len);
  scan->keys[scan->count++] = (struct expired_key){
      copy, key_len,
      value_len == 8 ? (int64_t)tly_get_be64((const unsigned char *)value)
                     : INT64_MIN};
  return 0;
}

/* A dedupe blob's expiry entry come due: the blob's changelog records (its
 * ids and its batch's contributions, under the blob's key) get their
 * tombstones once the window passed its newest event; otherwise (the
 * window was raised since, or the entry was written at a restore, which
 * does not know the window) it is looked at again when it will have. */
static void expire_blob(tly_processor_t *p, int32_t partition,
                        const struct expired_key *expired, int64_t offset) {
  partition_state_t *part = &p->partitions[partition];
  int64_t horizon = part->watermark > INT64_MIN + p->billing.dedupe_window_ms
                        ? part->watermark - p->billing.dedupe_window_ms
                        : INT64_MIN;
  tly_store_batch_delete(p->batch, TLY_CF_EXPIRIES, expired->key, expired->len);
  if (expired->newest_ms >= horizon) {
    index_blob(p, partition, offset, expired->newest_ms);
    return;
  }
  unsigned char key[12];
  tly_put_be32(key, (uint32_t)partition);
  tly_put_be64(key + 4, (uint64_t)offset);
  tly_changelog_bundle_delete(&p->bundle, partition, TLY_CHANGELOG_DEDUPE, key,
                              sizeof(key));
  /* the batch's contributions (tly_contributions.c): no newer than its
   * event ids */
  tly_changelog_bundle_delete(&p->bundle, partition, TLY_CHANGELOG_CONTRIBUTION,
                              key, sizeof(key));
}

/* History keys whose expiry the watermark passed (hours past
 * retention.daily_days, alerts past retention.alerts_days; the store's
 * compaction filter drops them by the same horizon) get a changelog
 * tombstone in this commit, and leave the index, so a compacted changelog
 * does not keep every hour of every subject forever. Scanned at most once
 * per hour of event time per partition; a key's tombstone may come up to
 * an hour after it expired. */
static void changelog_expire_history(tly_processor_t *p) {
  char errstr[256];
  for (int32_t i = 0; i < p->partition_cap && !p->fatal; i++) {
    partition_state_t *part = &p->partitions[i];
    if (!part->watermark_dirty || part->watermark == INT64_MIN ||
        part->watermark < part->expiry_scan_ms)
      continue;
    part->expiry_scan_ms = part->watermark + TLY_HOUR_MS;
    unsigned char prefix[4];
    expired_scan_t scan = {.watermark = part->watermark};
    tly_put_be32(prefix, (uint32_t)i);
    if (tly_store_scan_prefix(p->store, TLY_CF_EXPIRIES, prefix, 4,
                              collect_expired, &scan, errstr, sizeof(errstr)) ||
        scan.failed)
      tly_proc_set_fatal(p, "scanning expired history: %s",
                         scan.failed ? "out of memory" : errstr);
    for (size_t k = 0; k < scan.count; k++) {
      const struct expired_key *expired = &scan.keys[k];
      int64_t blob_offset;
      if (!p->fatal &&
          tly_key_expiry_is_blob(expired->key, expired->len, &blob_offset))
        expire_blob(p, i, expired, blob_offset);
      else if (!p->fatal) {
        tly_changelog_bundle_delete(&p->bundle, i, TLY_CHANGELOG_USAGE,
                                    expired->key + 12, expired->len - 12);
        tly_store_batch_delete(p->batch, TLY_CF_EXPIRIES, expired->key,
                               expired->len);
      }
      free(expired->key);
    }
    free(scan.keys);
  }
}

/* The batch's changelog records and a marker per partition it folded, as
 * one outbox entry (one RocksDB put for the lot; the publisher expands it
 * into Kafka records). 0, or -1 after setting the fatal reason. */
static int changelog_finish(tly_processor_t *p) {
  tly_changelog_marker_t *markers = NULL;
  size_t count = 0;
  if (!p->changelog_topic)
    return 0;
  for (int32_t i = 0; i < p->partition_cap; i++)
    count += p->partitions[i].batch_next >= 0;
  if (!count && !p->bundle.count)
    return 0;
  markers = malloc((count ? count : 1) * sizeof(*markers));
  if (!markers) {
    tly_proc_set_fatal(p, "out of memory writing the changelog");
    return -1;
  }
  count = 0;
  for (int32_t i = 0; i < p->partition_cap; i++)
    if (p->partitions[i].batch_next >= 0)
      markers[count++] = (tly_changelog_marker_t){
          i, p->partitions[i].batch_next, p->partitions[i].watermark};
  char *bundle = NULL;
  size_t bundle_len = 0;
  int failed = tly_changelog_bundle_finish(&p->bundle, markers, count, &bundle,
                                           &bundle_len);
  free(markers);
  if (failed || add_raw_output(p, bundle, bundle_len)) {
    free(bundle);
    tly_proc_set_fatal(p, "out of memory writing the changelog");
    return -1;
  }
  return 0;
}

/*
 * Step 3: turns the open batch into one RocksDB WriteBatch and hands it to
 * the writer thread, which makes it durable (synced) while the next batch
 * is folded. Returns 0, or -1 after setting the fatal reason.
 */
int tly_proc_batch_submit(tly_processor_t *p) {
  char meta_key[256];
  unsigned char seq_key[8], seq_value[8];

  if (tly_proc_batch_wait(p))
    return -1; /* one batch in the writer's hands at a time */
  /* A fatal error inside a batch never commits that batch: what it folded
   * may be half applied (an event counted whose id was not recorded, an
   * offset past a record that was not folded), and the offsets must only
   * move with the state they describe. Nothing more is written at all: the
   * process stops, and a restart folds the batch again from the stored
   * offsets. Every commit path (the loop, a rebalance or the revoke of
   * rd_kafka_consumer_close, the graceful stop) comes through here. */
  if (p->fatal)
    return -1;
  if (!tly_proc_batch_has_work(p))
    return 0;
  uint64_t first_seq = p->next_seq;
  p->submits++;
  /* p->batch already holds the history records the fold wrote (alerts,
   * archived cycles); the rest of the batch joins them. */

  /* In key order: RocksDB's memtable skiplist inserts sorted keys much
   * faster (it reuses the previous insert's position), and the memtable
   * insert is the bulk of a commit's cost. */
  size_t dirty = p->dirty_count;
  if (array_room(&p->sort_keys, &p->sort_key_cap, dirty,
                 sizeof(*p->sort_keys))) {
    tly_proc_set_fatal(p, "out of memory sorting the batch");
    return -1;
  }
  for (size_t i = 0; i < dirty; i++) {
    p->sort_keys[i] = sort_key_of(p->dirty[i]);
  }
  if (dirty > 1)
    qsort(p->sort_keys, dirty, sizeof(*p->sort_keys), compare_sort_keys);
  /* Each entry is encoded and then marked committed while it is in the
   * cache; the next ones are fetched meanwhile. */
  for (size_t i = 0; i < dirty; i++) {
    if (i + 8 < dirty)
      for (size_t line = 0; line < sizeof(tly_overlay_entry_t); line += 64)
        __builtin_prefetch((const char *)p->sort_keys[i + 8].entry + line);
    if (i + 3 < dirty)
      tly_overlay_prefetch_rows_of(p->sort_keys[i + 3].entry);
    /* A subject's contributions are a chain through the log (tly_
     * contributions.c): its links fetched one a step, ahead of the walk. */
    for (int depth = 0; depth < 4; depth++)
      if (i + 4 - (size_t)depth < dirty)
        tly_proc_contrib_prefetch(p, p->sort_keys[i + 4 - (size_t)depth].entry,
                                  depth);
    tly_overlay_entry_t *entry = p->sort_keys[i].entry;
    if (batch_put_entry(p, entry)) {
      tly_proc_set_fatal(p, "out of memory encoding a subject record");
      return -1;
    }
    if (tly_proc_contrib_put_subject(p, entry))
      return -1;
    mark_committed(p, entry);
  }
  p->dirty_count = 0;
  if (tly_proc_contrib_flush(p))
    return -1;
  size_t sealed = 0; /* what the blobs sealed here hold, for the spill */
  for (int32_t i = 0; i < p->partition_cap; i++) {
    partition_state_t *part = &p->partitions[i];
    size_t blob_len = 0;
    /* With a record of the partition (its changelog marker goes out). */
    if (part->floor_dirty && part->batch_next >= 0)
      tly_proc_dedupe_floor_put(p, i);
    const void *blob =
        part->dedupe ? tly_dedupe_open_blob(part->dedupe, &blob_len) : NULL;
    if (!blob)
      continue;
    sealed += tly_proc_dedupe_blob_weight(blob, blob_len);
    tly_put_be32((unsigned char *)meta_key, (uint32_t)i);
    tly_put_be64((unsigned char *)meta_key + 4, (uint64_t)part->dedupe_key);
    tly_store_batch_put(p->batch, TLY_CF_DEDUPE, meta_key, 12, blob, blob_len);
    changelog_put(p, TLY_CHANGELOG_DEDUPE, meta_key, 12, blob, blob_len);
    if (p->changelog_topic && blob_len >= 8)
      index_blob(p, i, part->dedupe_key, (int64_t)tly_get_be64(blob));
    tly_dedupe_seal(part->dedupe, part->dedupe_key);
  }
  /* Past the dedupe share of the memory budget: the oldest ids go to the
   * store in this same commit (tly_dedupe_spill.c). */
  if (tly_proc_dedupe_spill(p, sealed))
    return -1;
  if (p->changelog_topic)
    changelog_expire_history(p);
  if (changelog_finish(p))
    return -1;
  for (size_t i = 0; i < p->output_count; i++) {
    tly_put_be64(seq_key, first_seq + i);
    tly_store_batch_put(p->batch, TLY_CF_OUTBOX, seq_key, sizeof(seq_key),
                        p->outputs[i].record, p->outputs[i].record_len);
  }
  if (p->output_count) {
    tly_put_be64(seq_value, first_seq + p->output_count);
    tly_store_batch_put(p->batch, TLY_CF_META, META_NEXT_SEQ,
                        sizeof(META_NEXT_SEQ) - 1, seq_value,
                        sizeof(seq_value));
  }
  size_t deletes = 0;
  for (size_t i = 0; i < p->outbox_count; i++) {
    if (p->outbox[i].state != OUTBOX_ACKED)
      continue;
    tly_put_be64(seq_key, p->outbox[i].seq);
    tly_store_batch_delete(p->batch, TLY_CF_OUTBOX, seq_key, sizeof(seq_key));
    p->outbox[i].state = OUTBOX_DELETING;
    deletes++;
  }
  for (size_t i = 0; i < p->ack_count; i++) {
    size_t len = tly_proc_ack_key(p->acks[i].topic, p->acks[i].partition,
                                  meta_key, sizeof(meta_key));
    if (!p->acks[i].dirty || !len)
      continue;
    tly_put_be64(seq_value, (uint64_t)p->acks[i].next_offset);
    tly_store_batch_put(p->batch, TLY_CF_META, meta_key, len, seq_value, 8);
  }
  for (int32_t i = 0; i < p->partition_cap; i++) {
    partition_state_t *part = &p->partitions[i];
    if (part->batch_next >= 0)
      tly_store_batch_set_offset(p->batch, i, part->batch_next);
    if (part->watermark_dirty) {
      memcpy(meta_key, META_WATERMARK, sizeof(META_WATERMARK) - 1);
      tly_put_be32((unsigned char *)meta_key + sizeof(META_WATERMARK) - 1,
                   (uint32_t)i);
      tly_put_be64(seq_value, (uint64_t)part->watermark);
      tly_store_batch_put(p->batch, TLY_CF_META, meta_key,
                          sizeof(META_WATERMARK) - 1 + 4, seq_value, 8);
    }
  }

  /* Everything the write will make durable is in the batch: the open
   * batch starts over while the writer works, and what the write releases
   * waits in the in-flight record until tly_proc_batch_wait. */
  commit_inflight_t *flight = &p->inflight;
  pending_output_t *outputs = flight->outputs;
  size_t output_cap = flight->output_cap;
  flight->outputs = p->outputs;
  flight->output_count = p->output_count;
  flight->output_cap = p->output_cap;
  flight->first_seq = first_seq;
  flight->deletes = deletes;
  flight->events = p->batch_events;
  int64_t *produced = flight->produced_ms;
  size_t produced_cap = flight->produced_cap;
  flight->produced_ms = p->produced_ms;
  flight->produced_count = p->produced_count;
  flight->produced_cap = p->produced_cap;
  p->produced_ms = produced;
  p->produced_cap = produced_cap;
  p->produced_count = 0;
  p->outputs = outputs;
  p->output_cap = output_cap;
  p->output_count = 0;
  p->inflight_output_bytes = p->output_bytes;
  p->output_bytes = 0;
  p->changelog_bytes_max = 0;
  p->changelog_open_bytes = 0;
  p->next_seq = first_seq + flight->output_count;
  for (size_t i = 0; i < p->ack_count; i++)
    p->acks[i].dirty = 0;
  for (int32_t i = 0; i < p->partition_cap; i++) {
    partition_state_t *part = &p->partitions[i];
    part->inflight_next = part->batch_next;
    part->batch_next = -1;
    part->changelog_bytes = 0;
    part->inflight_watermark =
        part->watermark_dirty ? part->watermark : INT64_MIN;
    part->inflight_horizon =
        part->watermark_dirty &&
                part->watermark > INT64_MIN + p->billing.dedupe_window_ms
            ? part->watermark - p->billing.dedupe_window_ms
            : INT64_MIN;
    part->watermark_dirty = 0;
    if (part->dedupe) {
      tly_dedupe_seal(part->dedupe, part->dedupe_key);
      part->dedupe_key = -1;
      if (part->inflight_horizon != INT64_MIN) /* memory only */
        tly_dedupe_expire(part->dedupe, part->inflight_horizon);
    }
    if (part->filter && part->inflight_horizon != INT64_MIN)
      tly_dedupe_filter_expire(part->filter, part->inflight_horizon);
  }
  p->batch_events = 0;
  p->batch_messages = 0;
  tly_proc_contrib_submitted(p); /* read from memory until durable */

  pthread_mutex_lock(&p->writer_lock);
  tly_store_batch_t *writing = p->batch;
  p->batch = p->writer_batch; /* written and waited for: reuse it */
  tly_store_batch_clear(p->batch);
  tly_store_batch_reserve(p->batch, tly_store_batch_bytes(writing));
  p->writer_batch = writing;
  p->writer_job = 1;
  flight->busy = 1;
  pthread_cond_signal(&p->writer_cond);
  pthread_mutex_unlock(&p->writer_lock);
  return 0;
}

static void record_commit_latency(tly_processor_t *p, int64_t micros) {
  static const int64_t bounds_ms[TLY_COMMIT_BUCKETS] =
      TLY_COMMIT_BUCKET_BOUNDS_MS;
  for (int i = 0; i < TLY_COMMIT_BUCKETS; i++)
    if (micros <= bounds_ms[i] * 1000)
      atomic_fetch_add(&p->commit_buckets[i], 1);
  atomic_fetch_add(&p->commit_count, 1);
  atomic_fetch_add(&p->commit_micros, (uint64_t)(micros > 0 ? micros : 0));
}

/* The batch is durable: its records are visible now. Counted per batch
 * into the shared histogram (one atomic add per bucket, not per record). */
static void record_visible(tly_processor_t *p,
                           const commit_inflight_t *flight) {
  static const int64_t bounds_ms[TLY_VISIBLE_BUCKETS] =
      TLY_VISIBLE_BUCKET_BOUNDS_MS;
  uint64_t counts[TLY_VISIBLE_BUCKETS] = {0}, total_ms = 0;
  int64_t now = tly_wall_ms();
  for (size_t i = 0; i < flight->produced_count; i++) {
    int64_t latency = now - flight->produced_ms[i];
    if (latency < 0)
      latency = 0; /* clocks of other machines */
    total_ms += (uint64_t)latency;
    for (int b = 0; b < TLY_VISIBLE_BUCKETS; b++)
      if (latency <= bounds_ms[b]) {
        counts[b]++;
        break;
      }
  }
  uint64_t cumulative = 0;
  for (int b = 0; b < TLY_VISIBLE_BUCKETS; b++) {
    cumulative += counts[b];
    if (cumulative)
      atomic_fetch_add(&p->visible_buckets[b], cumulative);
  }
  atomic_fetch_add(&p->visible_count, flight->produced_count);
  atomic_fetch_add(&p->visible_ms, total_ms);
}

/* What the allocator keeps of freed memory goes back to the system, on
 * the writer thread, once the processor has been idle for TRIM_IDLE_MS
 * after a commit. glibc returns a heap's free pages only from its top, so
 * the churn of librdkafka's fetch buffers and the batch buffers stayed
 * resident: an instance folding at a 20 MiB budget held 156 MiB, of which
 * malloc_trim gave back 90 MiB (malloc_stats: 163 MB taken from the
 * system, 61 MB in use). Never under load: malloc_trim walks every arena
 * holding its lock and gives pages back one madvise at a time, and every
 * thread that allocates meanwhile waits. Trimming once a second after a
 * commit took bench_fold's event -> visible p99 at 5,000 events/s from
 * <= 40 ms to <= 750 ms. */
#define TRIM_IDLE_MS 1000

static void trim_freed_memory(tly_processor_t *p) {
  /* The overlay's subjects live on huge pages of their own (tly_slab.h):
   * the pages only evicted subjects held go back too. */
  tly_overlay_purge(&p->overlay);
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

/* The writer thread: one synced RocksDB write per batch handed to it. A
 * failed write leaves RocksDB untouched, so the same batch can simply be
 * written again; a store that keeps failing stops the processor. */
void *tly_proc_writer_main(void *arg) {
  tly_processor_t *p = arg;
  prctl(PR_SET_NAME, "tly-writer"); /* for top -H and perf */
  int trim_due = 0;                 /* a commit since the last trim */
  pthread_mutex_lock(&p->writer_lock);
  for (;;) {
    while (!p->writer_job && !p->writer_quit) {
      if (!trim_due) {
        pthread_cond_wait(&p->writer_cond, &p->writer_lock);
        continue;
      }
      struct timespec until;
      clock_gettime(CLOCK_REALTIME, &until); /* the condition's clock */
      until.tv_sec += TRIM_IDLE_MS / 1000;
      if (pthread_cond_timedwait(&p->writer_cond, &p->writer_lock, &until) ==
              ETIMEDOUT &&
          !p->writer_job && !p->writer_quit) {
        trim_due = 0; /* idle: nothing waits on the allocator's locks */
        pthread_mutex_unlock(&p->writer_lock);
        trim_freed_memory(p);
        pthread_mutex_lock(&p->writer_lock);
      }
    }
    if (!p->writer_job)
      break;
    pthread_mutex_unlock(&p->writer_lock);
    char errstr[512] = "";
    int attempt;
    struct timespec begun, ended;
    clock_gettime(CLOCK_MONOTONIC, &begun);
    for (attempt = 0; attempt < COMMIT_ATTEMPTS; attempt++) {
      if (tly_store_commit(p->store, p->writer_batch, 1, errstr,
                           sizeof(errstr)) == 0)
        break;
      tly_log(TLY_LOG_WARN, "processor", "commit failed (attempt %d): %s",
              attempt + 1, errstr);
      struct timespec pause = {0, (long)(50L << attempt) * 1000000L};
      nanosleep(&pause, NULL);
    }
    clock_gettime(CLOCK_MONOTONIC, &ended);
    record_commit_latency(p, (ended.tv_sec - begun.tv_sec) * 1000000LL +
                                 (ended.tv_nsec - begun.tv_nsec) / 1000);
    pthread_mutex_lock(&p->writer_lock);
    if (attempt == COMMIT_ATTEMPTS)
      snprintf(p->writer_error, sizeof(p->writer_error),
               "RocksDB commit failed %d times, last: %s", COMMIT_ATTEMPTS,
               errstr);
    p->writer_job = 0;
    /* The loop may be waiting for records with a batch to submit, or with
     * this one to release: wake it now (group commit, tly_group_commit.h).
     * A wake-up nobody waits for makes the next read return early, no
     * more. Under the lock, before the loop can see the job done: a late
     * one must never reach rd_kafka_consumer_close, which forwards this
     * queue to its own and would return on it before the group is left
     * (rd_kafka_destroy then waits forever). The loop turns it off before
     * closing (tly_proc_writer_wakes). */
    if (p->writer_wakes_loop)
      rd_kafka_queue_yield(p->queue);
    pthread_cond_broadcast(&p->writer_done);
    trim_due = 1;
  }
  pthread_mutex_unlock(&p->writer_lock);
  return NULL;
}

/*
 * Waits for the batch in the writer's hands, if any, and releases what its
 * commit made durable: now, and only now, may its outputs leave, and its
 * offsets count as committed. Returns 0, or -1 after setting the fatal
 * reason (the process must stop: what is in memory is no longer known to
 * be durable, and a restart resumes safely from the stored offsets).
 */
int tly_proc_batch_wait(tly_processor_t *p) {
  commit_inflight_t *flight = &p->inflight;
  if (!flight->busy)
    return 0;
  pthread_mutex_lock(&p->writer_lock);
  while (p->writer_job)
    pthread_cond_wait(&p->writer_done, &p->writer_lock);
  int failed = p->writer_error[0] != '\0';
  if (failed)
    tly_proc_set_fatal(p, "%s", p->writer_error);
  pthread_mutex_unlock(&p->writer_lock);
  flight->busy = 0;
  if (failed)
    return -1;
  for (size_t i = 0; i < flight->output_count; i++) {
    if (tly_proc_outbox_append(p, flight->first_seq + i,
                               flight->outputs[i].record,
                               flight->outputs[i].record_len)) {
      tly_proc_set_fatal(p, "out of memory queueing outbox entries");
      return -1;
    }
    flight->outputs[i].record = NULL;
    p->inflight_output_bytes -= flight->outputs[i].record_len;
  }
  /* Fault injection for the stall test: freeze (once) with this commit's
   * outputs waiting in the outbox and nothing left in the Kafka client. */
  if (p->stop_file && flight->output_count && access(p->stop_file, F_OK) == 0) {
    rd_kafka_flush(p->producer, 5000);
    unlink(p->stop_file);
    raise(SIGSTOP);
  }
  flight->output_count = 0;
  if (flight->deletes) /* a pass over the outbox: only when it shrinks */
    tly_proc_outbox_compact(p);
  flight->deletes = 0;
  pthread_mutex_lock(&p->lock);
  for (int32_t i = 0; i < p->partition_cap; i++) {
    partition_state_t *part = &p->partitions[i];
    if (part->inflight_next >= 0)
      part->committed = part->inflight_next;
    part->inflight_next = -1;
    /* The compaction filter follows committed state only, so it never runs
     * ahead of what a restart would recover. */
    if (part->inflight_horizon != INT64_MIN)
      tly_store_set_horizon(p->store, TLY_CF_DEDUPE, i, part->inflight_horizon);
    if (part->inflight_watermark != INT64_MIN)
      tly_store_set_horizon(p->store, TLY_CF_USAGE, i,
                            part->inflight_watermark);
    part->inflight_horizon = INT64_MIN;
    part->inflight_watermark = INT64_MIN;
  }
  pthread_mutex_unlock(&p->lock);
  /* The ids this commit spilled are in RocksDB now: they leave memory, and
   * so do its contributions. */
  tly_proc_dedupe_release(p);
  tly_proc_contrib_durable(p);
  tly_proc_end_replay(p);
  atomic_fetch_add(&p->events_folded, flight->events);
  atomic_fetch_add(&p->batches_committed, 1);
  record_visible(p, flight);
  flight->produced_count = 0;
  /* The cache is bounded, and shrunk only here, once the batch is durable:
   * an entry dropped while its write is in flight would be read back
   * stale from RocksDB. Entries of the open batch stay. */
  tly_proc_memory_check(p);
  return 0;
}

/* Whether the writer wakes the loop's reads when it finishes a batch:
 * on while the loop reads, off before the consumer is closed. */
void tly_proc_writer_wakes(tly_processor_t *p, int on) {
  pthread_mutex_lock(&p->writer_lock);
  p->writer_wakes_loop = on && p->queue;
  pthread_mutex_unlock(&p->writer_lock);
}

/* Whether the writer still has the previous batch in hand. */
int tly_proc_writer_busy(tly_processor_t *p) {
  if (!p->inflight.busy)
    return 0;
  pthread_mutex_lock(&p->writer_lock);
  int busy = p->writer_job;
  pthread_mutex_unlock(&p->writer_lock);
  return busy;
}

/* Commits the open batch and waits until it is durable. */
int tly_proc_batch_commit(tly_processor_t *p) {
  return tly_proc_batch_submit(p) || tly_proc_batch_wait(p) ? -1 : 0;
}
