/*
 * tly_changelog_restore.c - a partition's state from the changelog, and
 * the changelog's writer ids (tly_changelog_restore.h).
 */
#include "tly_changelog_restore.h"

#include "tly_billing.h"
#include "tly_keys.h"
#include "tly_log.h"
#include "tly_offset_map.h"

#include <librdkafka/rdkafka.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Restored records are written in chunks of this many (not synced: the
 * caller's synced commit of the offset makes them durable). */
#define RESTORE_CHUNK 20000
/* A restore with no record arriving for this long fails. */
#define RESTORE_STALL_MS 30000

static int64_t monotonic_ms(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

/* Deletes partition's keys from each of the families. */
static int wipe_families(tly_store_t *store, int32_t partition,
                         const tly_cf_t *cfs, size_t count, char *errstr,
                         size_t errstr_size) {
  unsigned char begin[4], end[5];
  size_t end_len = 4;
  tly_put_be32(begin, (uint32_t)partition);
  if ((uint32_t)partition == UINT32_MAX) {
    memcpy(end, begin, 4);
    end[4] = 0xff; /* not reached: partition ids are far below */
    end_len = 5;
  } else {
    tly_put_be32(end, (uint32_t)partition + 1);
  }
  tly_store_batch_t *batch = tly_store_batch_new();
  if (!batch) {
    snprintf(errstr, errstr_size, "out of memory");
    return -1;
  }
  for (size_t i = 0; i < count; i++)
    tly_store_batch_delete_range(batch, cfs[i], begin, 4, end, end_len);
  int rc = tly_store_commit(store, batch, 0, errstr, errstr_size);
  tly_store_batch_destroy(batch);
  return rc;
}

int tly_changelog_wipe_partition(tly_store_t *store, int32_t partition,
                                 char *errstr, size_t errstr_size) {
  static const tly_cf_t cfs[] = {
      TLY_CF_ACCOUNTS, TLY_CF_USAGE,   TLY_CF_DEDUPE,     TLY_CF_CYCLE_ENDS,
      TLY_CF_EXPIRIES, TLY_CF_OFFSETS, TLY_CF_DEDUPE_IDS, TLY_CF_CONTRIBUTIONS};
  return wipe_families(store, partition, cfs, sizeof(cfs) / sizeof(cfs[0]),
                       errstr, errstr_size);
}

int tly_changelog_wipe_reports(tly_store_t *store, int32_t partition,
                               char *errstr, size_t errstr_size) {
  static const tly_cf_t cfs[] = {TLY_CF_REPORTS, TLY_CF_CURSORS};
  return wipe_families(store, partition, cfs, sizeof(cfs) / sizeof(cfs[0]),
                       errstr, errstr_size);
}

int tly_changelog_writer_id(tly_store_t *store,
                            char out[TLY_CHANGELOG_WRITER_SIZE], char *errstr,
                            size_t errstr_size) {
  static const char key[] = "changelog.writer";
  char *value = NULL;
  size_t len = 0;
  int found = tly_store_get(store, TLY_CF_META, key, sizeof(key) - 1, &value,
                            &len, errstr, errstr_size);
  if (found < 0)
    return -1;
  if (found && len == TLY_CHANGELOG_WRITER_SIZE - 1) {
    memcpy(out, value, len);
    out[len] = '\0';
    tly_store_free(value);
    return 0;
  }
  tly_store_free(value);
  unsigned char random[16];
  if (RAND_bytes(random, sizeof(random)) != 1) {
    snprintf(errstr, errstr_size, "no random bytes for a writer id");
    return -1;
  }
  for (size_t i = 0; i < sizeof(random); i++)
    snprintf(out + 2 * i, 3, "%02x", random[i]);
  tly_store_batch_t *batch = tly_store_batch_new();
  if (!batch) {
    snprintf(errstr, errstr_size, "out of memory");
    return -1;
  }
  tly_store_batch_put(batch, TLY_CF_META, key, sizeof(key) - 1, out,
                      TLY_CHANGELOG_WRITER_SIZE - 1);
  int rc = tly_store_commit(store, batch, 1, errstr, errstr_size);
  tly_store_batch_destroy(batch);
  return rc;
}

/* The input offset a changelog record reflects (tly_changelog.h): a
 * state record's or marker's value starts with it, a deletion carries it
 * in a header; a report cursor (its own version) and a settled report
 * mark reflect none: -1. */
static int64_t reflected_offset(const rd_kafka_message_t *msg) {
  const unsigned char *key = msg->key, *value = msg->payload;
  if (!key || msg->key_len < 1 || key[0] == TLY_CHANGELOG_CURSOR ||
      (key[0] == TLY_CHANGELOG_REPORT && !value))
    return -1;
  if (value)
    return msg->len >= 8 ? (int64_t)tly_get_be64(value) : -1;
  rd_kafka_headers_t *headers = NULL;
  const void *bytes;
  size_t size;
  if (rd_kafka_message_headers(msg, &headers) ||
      rd_kafka_header_get_last(headers, TLY_CHANGELOG_OFFSET_HEADER, &bytes,
                               &size) ||
      size != 8)
    return -1;
  return (int64_t)tly_get_be64(bytes);
}

int tly_changelog_last_records(rd_kafka_t *reader, const char *topic,
                               const int32_t *partitions, const int64_t *highs,
                               size_t count, tly_changelog_last_t *out,
                               char *errstr, size_t errstr_size) {
  size_t left = 0;
  rd_kafka_topic_partition_list_t *parts =
      rd_kafka_topic_partition_list_new(count ? (int)count : 1);
  if (!parts) {
    snprintf(errstr, errstr_size, "out of memory");
    return -1;
  }
  for (size_t i = 0; i < count; i++) {
    out[i].writer[0] = '\0';
    out[i].offset = -1;
    out[i].named = 0;
    out[i].done = highs[i] <= 0;
    if (!out[i].done) {
      rd_kafka_topic_partition_list_add(parts, topic, partitions[i])->offset =
          highs[i] - 1;
      left++;
    }
  }
  if (!left) {
    rd_kafka_topic_partition_list_destroy(parts);
    return 0;
  }
  /* All at once: one fetch session instead of one assignment each. */
  rd_kafka_resp_err_t err = rd_kafka_assign(reader, parts);
  rd_kafka_topic_partition_list_destroy(parts);
  if (err) {
    snprintf(errstr, errstr_size, "assigning %s: %s", topic,
             rd_kafka_err2str(err));
    return -1;
  }
  int rc = 0;
  int64_t deadline = monotonic_ms() + RESTORE_STALL_MS;
  while (left && !rc) {
    if (monotonic_ms() > deadline) {
      snprintf(errstr, errstr_size, "reading the last records of %s: timed out",
               topic);
      rc = -1;
      break;
    }
    rd_kafka_message_t *msg = rd_kafka_consumer_poll(reader, 200);
    if (!msg)
      continue;
    if (msg->err && msg->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      snprintf(errstr, errstr_size, "reading %s[%d]: %s", topic,
               (int)msg->partition, rd_kafka_message_errstr(msg));
      rd_kafka_message_destroy(msg);
      rc = -1;
      break;
    }
    size_t i = 0;
    while (i < count && (out[i].done || partitions[i] != msg->partition))
      i++; /* none: another partition's, from an earlier assignment */
    if (i < count && msg->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      out[i].done = 1; /* nothing at high - 1 after all (compacted away) */
      left--;
    } else if (i < count && msg->offset >= highs[i] - 1) {
      rd_kafka_headers_t *headers = NULL;
      const void *writer;
      size_t size;
      out[i].offset = reflected_offset(msg);
      if (!rd_kafka_message_headers(msg, &headers) &&
          !rd_kafka_header_get_last(headers, TLY_CHANGELOG_WRITER_HEADER,
                                    &writer, &size) &&
          size < sizeof(out[i].writer)) {
        memcpy(out[i].writer, writer, size);
        out[i].writer[size] = '\0';
        out[i].named = 1;
      }
      out[i].done = 1;
      left--;
    }
    rd_kafka_message_destroy(msg);
  }
  rd_kafka_assign(reader, NULL);
  return rc;
}

int tly_changelog_last_record(rd_kafka_t *reader, const char *topic,
                              int32_t partition, int64_t high,
                              tly_changelog_last_t *out, char *errstr,
                              size_t errstr_size) {
  if (tly_changelog_last_records(reader, topic, &partition, &high, 1, out,
                                 errstr, errstr_size))
    return -1;
  return out->named;
}

int tly_changelog_last_writer(rd_kafka_t *reader, const char *topic,
                              int32_t partition, int64_t high, char *out,
                              size_t out_size, char *errstr,
                              size_t errstr_size) {
  tly_changelog_last_t last;
  int rc = tly_changelog_last_record(reader, topic, partition, high, &last,
                                     errstr, errstr_size);
  if (out_size)
    snprintf(out, out_size, "%s", rc == 1 ? last.writer : "");
  return rc == 1 && strlen(last.writer) >= out_size ? 0 : rc;
}

/* A state record read after the last marker: applied once a marker at or
 * above its offset comes. */
typedef struct {
  uint64_t hash;
  int64_t offset;
  size_t key_len, value_len; /* key: [kind][store key] */
  int tombstone;
  unsigned char bytes[]; /* key then store value */
} held_t;

typedef struct {
  tly_store_t *store;
  int32_t partition;
  tly_store_batch_t *batch;
  tly_offset_map_t map; /* key -> highest reflected offset applied */
  held_t **held;
  size_t held_count, held_cap;
  tly_changelog_restore_t *out;
  char *errstr;
  size_t errstr_size;
} restore_t;

static int flush_chunk(restore_t *r) {
  if (tly_store_commit(r->store, r->batch, 0, r->errstr, r->errstr_size))
    return -1;
  tly_store_batch_clear(r->batch);
  return 0;
}

/* The column family a kind of record restores into; 0 for a kind of a
 * later version (not ours to restore). */
static int kind_family(unsigned char kind, tly_cf_t *cf) {
  static const struct {
    char kind;
    tly_cf_t cf;
  } kinds[] = {{TLY_CHANGELOG_ACCOUNT, TLY_CF_ACCOUNTS},
               {TLY_CHANGELOG_USAGE, TLY_CF_USAGE},
               {TLY_CHANGELOG_DEDUPE, TLY_CF_DEDUPE},
               {TLY_CHANGELOG_REPORT, TLY_CF_REPORTS},
               {TLY_CHANGELOG_CURSOR, TLY_CF_CURSORS},
               {TLY_CHANGELOG_CONTRIBUTION, TLY_CF_CONTRIBUTIONS}};
  for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
    if ((unsigned char)kinds[i].kind == kind) {
      *cf = kinds[i].cf;
      return 1;
    }
  return 0;
}

/* A commit's contributions of the partition (tly_contributions.c): each
 * entry put under its own key (a blob's deletion leaves them to the store's
 * expiry). An entry that runs past the blob or names another partition
 * ends it. */
static int apply_contributions(restore_t *r, const unsigned char *value,
                               size_t len) {
  size_t at = 8;
  while (len >= at + 3) {
    size_t key_len = (size_t)value[at] << 8 | value[at + 1];
    size_t value_len = value[at + 2];
    const unsigned char *key = value + at + 3;
    if (key_len < 4 || len - at - 3 < key_len + value_len ||
        tly_get_be32(key) != (uint32_t)r->partition)
      break;
    tly_store_batch_put(r->batch, TLY_CF_CONTRIBUTIONS, key, key_len,
                        key + key_len, value_len);
    at += 3 + key_len + value_len;
  }
  r->out->applied++;
  return tly_store_batch_count(r->batch) >= RESTORE_CHUNK ? flush_chunk(r) : 0;
}

/* Writes a state record (value NULL: deletes it) unless a newer record of
 * its key was applied (strict: or one of the same offset, or version). */
static int apply_as(restore_t *r, uint64_t hash, int64_t offset, int strict,
                    const unsigned char *key, size_t key_len,
                    const unsigned char *value, size_t value_len) {
  tly_cf_t cf;
  if (!kind_family(key[0], &cf))
    return 0;
  /* Only this partition's keys: a record can never write elsewhere. */
  if (key_len < 5 || tly_get_be32(key + 1) != (uint32_t)r->partition)
    return 0;
  int admitted = tly_offset_map_admit(&r->map, hash, offset, strict);
  if (admitted < 0) {
    snprintf(r->errstr, r->errstr_size, "out of memory restoring");
    return -1;
  }
  if (!admitted)
    return 0;
  if (cf == TLY_CF_CONTRIBUTIONS)
    return value ? apply_contributions(r, value, value_len) : 0;
  if (value)
    tly_store_batch_put(r->batch, cf, key + 1, key_len - 1, value, value_len);
  else
    tly_store_batch_delete(r->batch, cf, key + 1, key_len - 1);
  r->out->applied++;
  return tly_store_batch_count(r->batch) >= RESTORE_CHUNK ? flush_chunk(r) : 0;
}

static int apply(restore_t *r, uint64_t hash, int64_t offset,
                 const unsigned char *key, size_t key_len,
                 const unsigned char *value, size_t value_len) {
  return apply_as(r, hash, offset, 0, key, key_len, value, value_len);
}

/* A marker at next_offset: every held record at or below it is complete. */
static int apply_held(restore_t *r) {
  size_t kept = 0;
  for (size_t i = 0; i < r->held_count; i++) {
    held_t *item = r->held[i];
    if (item->offset > r->out->next_offset) {
      r->held[kept++] = item;
      continue;
    }
    int rc = apply(r, item->hash, item->offset, item->bytes, item->key_len,
                   item->tombstone ? NULL : item->bytes + item->key_len,
                   item->value_len);
    free(item);
    if (rc) {
      for (size_t j = i + 1; j < r->held_count; j++)
        r->held[kept++] = r->held[j];
      r->held_count = kept;
      return -1;
    }
  }
  r->held_count = kept;
  return 0;
}

static int hold(restore_t *r, uint64_t hash, int64_t offset,
                const unsigned char *key, size_t key_len,
                const unsigned char *value, size_t value_len) {
  if (r->held_count == r->held_cap) {
    size_t cap = r->held_cap ? r->held_cap * 2 : 256;
    held_t **grown = realloc(r->held, cap * sizeof(*grown));
    if (!grown)
      goto oom;
    r->held = grown;
    r->held_cap = cap;
  }
  held_t *item = malloc(sizeof(*item) + key_len + value_len);
  if (!item)
    goto oom;
  item->hash = hash;
  item->offset = offset;
  item->key_len = key_len;
  item->value_len = value_len;
  item->tombstone = value == NULL;
  memcpy(item->bytes, key, key_len);
  if (value && value_len)
    memcpy(item->bytes + key_len, value, value_len);
  r->held[r->held_count++] = item;
  return 0;
oom:
  snprintf(r->errstr, r->errstr_size, "out of memory restoring");
  return -1;
}

static int restore_record(restore_t *r, const rd_kafka_message_t *msg) {
  const unsigned char *key = msg->key, *value = msg->payload;
  if (key && msg->key_len >= 1 && key[0] == TLY_CHANGELOG_REPORT && !value)
    /* A settled mark: gone for good, whatever comes before or after. */
    return apply_as(r, tly_offset_map_hash(key, msg->key_len), INT64_MAX, 0,
                    key, msg->key_len, NULL, 0);
  if (key && msg->key_len >= 1 && key[0] == TLY_CHANGELOG_CURSOR) {
    /* A cursor: its own version, newest wins, no marker to wait for. */
    if (!value || msg->len < 8)
      return 0;
    return apply_as(r, tly_offset_map_hash(key, msg->key_len),
                    (int64_t)tly_get_be64(value), 1, key, msg->key_len,
                    value + 8, msg->len - 8);
  }
  if (key && msg->key_len >= 1 && !value) { /* a deletion */
    rd_kafka_headers_t *headers = NULL;
    const void *offset_bytes;
    size_t size;
    if (rd_kafka_message_headers(msg, &headers) ||
        rd_kafka_header_get_last(headers, TLY_CHANGELOG_OFFSET_HEADER,
                                 &offset_bytes, &size) ||
        size != 8)
      return 0;
    int64_t offset = (int64_t)tly_get_be64(offset_bytes);
    uint64_t hash = tly_offset_map_hash(key, msg->key_len);
    if (offset <= r->out->next_offset)
      return apply(r, hash, offset, key, msg->key_len, NULL, 0);
    return hold(r, hash, offset, key, msg->key_len, NULL, 0);
  }
  if (!key || msg->key_len < 1 || !value || msg->len < 8)
    return 0; /* not a changelog record of ours */
  int64_t offset = (int64_t)tly_get_be64(value);
  if (key[0] == TLY_CHANGELOG_MARKER) {
    if (msg->len < 16 || offset <= r->out->next_offset)
      return 0; /* an older commit's marker, re-sent */
    r->out->next_offset = offset;
    r->out->watermark_ms = (int64_t)tly_get_be64(value + 8);
    return apply_held(r);
  }
  uint64_t hash = tly_offset_map_hash(key, msg->key_len);
  if (offset <= r->out->next_offset)
    return apply(r, hash, offset, key, msg->key_len, value + 8, msg->len - 8);
  return hold(r, hash, offset, key, msg->key_len, value + 8, msg->len - 8);
}

typedef struct {
  restore_t *restore;
  int failed;
} index_scan_t;

/* The cycle-end index entry of a restored subject record: [p][end][kind:id]
 * from the account key [p][kind:id], as the processor writes it (end: the
 * cycle's end or the next hold expiry, tly_subject_due_ms). */
static int index_account(void *opaque, const char *key, size_t key_len,
                         const char *value, size_t value_len) {
  index_scan_t *scan = opaque;
  restore_t *r = scan->restore;
  char index_key[TLY_KEY_MAX + 8];
  tly_subject_record_t record;
  if (key_len < 4 || key_len + 8 > sizeof(index_key) ||
      tly_subject_record_decode(value, value_len, &record)) {
    snprintf(r->errstr, r->errstr_size,
             "restored subject record of partition %d is corrupt",
             (int)r->partition);
    scan->failed = 1;
    return 1;
  }
  int64_t end_ms =
      tly_subject_due_ms(&record.account, record.holds, record.hold_count);
  int exists = record.account.exists;
  tly_subject_record_clear(&record);
  r->out->accounts++;
  if (!exists)
    return 0;
  memcpy(index_key, key, 4);
  tly_put_be64((unsigned char *)index_key + 4, (uint64_t)end_ms);
  memcpy(index_key + 12, key + 4, key_len - 4);
  tly_store_batch_put(r->batch, TLY_CF_CYCLE_ENDS, index_key, key_len + 8, "",
                      0);
  if (tly_store_batch_count(r->batch) >= RESTORE_CHUNK && flush_chunk(r)) {
    scan->failed = 1;
    return 1;
  }
  return 0;
}

/* The expiry index entry of a restored history value that expires (the
 * value starts with its expiry time), as the processor writes it, so the
 * new owner gives it its changelog tombstone in time. */
static int index_history(void *opaque, const char *key, size_t key_len,
                         const char *value, size_t value_len) {
  index_scan_t *scan = opaque;
  restore_t *r = scan->restore;
  char index_key[TLY_KEY_MAX + 12];
  if (value_len < 8)
    return 0;
  int64_t expires = (int64_t)tly_get_be64((const unsigned char *)value);
  size_t len =
      expires == INT64_MAX
          ? 0
          : tly_key_expiry(key, key_len, expires, index_key, sizeof(index_key));
  if (len)
    tly_store_batch_put(r->batch, TLY_CF_EXPIRIES, index_key, len, "", 0);
  if (tly_store_batch_count(r->batch) >= RESTORE_CHUNK && flush_chunk(r)) {
    scan->failed = 1;
    return 1;
  }
  return 0;
}

/* The expiry index entry of a restored dedupe blob (or its stub: the
 * blob's changelog record is whole until its tombstone), due at its newest
 * event time: this does not know the dedupe window, so the processor looks
 * at it with the first scan of the partition's expiries and either gives
 * the blob its tombstone or moves the entry to when the window passes it
 * (tly_commit.c). The floor record (at offset INT64_MAX) is no blob. */
static int index_blob(void *opaque, const char *key, size_t key_len,
                      const char *value, size_t value_len) {
  index_scan_t *scan = opaque;
  restore_t *r = scan->restore;
  if (key_len != 12 || value_len < 8)
    return 0;
  int64_t offset = (int64_t)tly_get_be64((const unsigned char *)key + 4);
  if (offset == INT64_MAX)
    return 0;
  char index_key[TLY_KEY_EXPIRY_BLOB_LEN];
  int64_t newest = (int64_t)tly_get_be64((const unsigned char *)value);
  tly_key_expiry_blob(r->partition, offset, newest, index_key,
                      sizeof(index_key));
  tly_store_batch_put(r->batch, TLY_CF_EXPIRIES, index_key, sizeof(index_key),
                      value, 8);
  if (tly_store_batch_count(r->batch) >= RESTORE_CHUNK && flush_chunk(r)) {
    scan->failed = 1;
    return 1;
  }
  return 0;
}

/* The cycle-end and expiry index entries of what the store holds of the
 * partition (written through r's batch). 0, or -1 (r->errstr). */
static int build_indexes(restore_t *r) {
  unsigned char prefix[4];
  index_scan_t scan = {r, 0};
  tly_put_be32(prefix, (uint32_t)r->partition);
  if (tly_store_scan_prefix(r->store, TLY_CF_ACCOUNTS, prefix, 4, index_account,
                            &scan, r->errstr, r->errstr_size) ||
      scan.failed || flush_chunk(r))
    return -1;
  if (tly_store_scan_prefix(r->store, TLY_CF_USAGE, prefix, 4, index_history,
                            &scan, r->errstr, r->errstr_size) ||
      scan.failed || flush_chunk(r))
    return -1;
  if (tly_store_scan_prefix(r->store, TLY_CF_DEDUPE, prefix, 4, index_blob,
                            &scan, r->errstr, r->errstr_size) ||
      scan.failed || flush_chunk(r))
    return -1;
  return 0;
}

int tly_changelog_rebuild_indexes(tly_store_t *store, int32_t partition,
                                  char *errstr, size_t errstr_size) {
  static const tly_cf_t cfs[] = {TLY_CF_CYCLE_ENDS, TLY_CF_EXPIRIES};
  tly_changelog_restore_t out = {0};
  restore_t r = {.store = store,
                 .partition = partition,
                 .out = &out,
                 .errstr = errstr,
                 .errstr_size = errstr_size};
  if (wipe_families(store, partition, cfs, 2, errstr, errstr_size))
    return -1;
  r.batch = tly_store_batch_new();
  if (!r.batch) {
    snprintf(errstr, errstr_size, "out of memory");
    return -1;
  }
  int rc = build_indexes(&r);
  tly_store_batch_destroy(r.batch);
  return rc;
}

int tly_changelog_restore(tly_store_t *store, rd_kafka_t *reader,
                          const char *topic, int32_t partition, int64_t low,
                          int64_t high, tly_changelog_restore_t *out,
                          char *errstr, size_t errstr_size) {
  int64_t started = monotonic_ms();
  restore_t r = {.store = store,
                 .partition = partition,
                 .out = out,
                 .errstr = errstr,
                 .errstr_size = errstr_size};
  int rc = -1;
  *out =
      (tly_changelog_restore_t){.next_offset = -1, .watermark_ms = INT64_MIN};
  if (tly_changelog_wipe_partition(store, partition, errstr, errstr_size) ||
      tly_changelog_wipe_reports(store, partition, errstr, errstr_size))
    return -1;
  if (high <= low)
    return 0;
  r.batch = tly_store_batch_new();
  rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(1);
  if (!r.batch || !parts) {
    snprintf(errstr, errstr_size, "out of memory");
    goto out;
  }
  rd_kafka_topic_partition_list_add(parts, topic, partition)->offset = low;
  rd_kafka_resp_err_t err = rd_kafka_assign(reader, parts);
  if (err) {
    snprintf(errstr, errstr_size, "restore: assigning %s[%d]: %s", topic,
             (int)partition, rd_kafka_err2str(err));
    goto out;
  }
  int64_t last_progress = monotonic_ms(), next = low;
  while (next < high) {
    rd_kafka_message_t *msg = rd_kafka_consumer_poll(reader, 200);
    if (!msg) {
      if (monotonic_ms() - last_progress > RESTORE_STALL_MS) {
        snprintf(errstr, errstr_size,
                 "restore: %s[%d] stalled at offset %lld of %lld..%lld", topic,
                 (int)partition, (long long)next, (long long)low,
                 (long long)high);
        goto unassign;
      }
      continue;
    }
    int failed = 0;
    if (msg->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      next = high; /* the end as the broker sees it */
    } else if (msg->err) {
      snprintf(errstr, errstr_size, "restore: reading %s[%d]: %s", topic,
               (int)partition, rd_kafka_message_errstr(msg));
      failed = 1;
    } else if (msg->partition == partition) {
      out->records++;
      next = msg->offset + 1;
      last_progress = monotonic_ms();
      failed = restore_record(&r, msg) != 0;
    }
    rd_kafka_message_destroy(msg);
    if (failed)
      goto unassign;
  }
  if (out->next_offset < 0) {
    /* No complete commit: no state to restore (cursors are restored all
     * the same: they say what was reported of the replay to come). */
    rc = flush_chunk(&r) ? -1 : 0;
    goto unassign;
  }
  if (flush_chunk(&r) || build_indexes(&r))
    goto unassign;
  rc = 1;
unassign:
  rd_kafka_assign(reader, NULL);
out:
  for (size_t i = 0; i < r.held_count; i++)
    free(r.held[i]); /* a commit whose publication was cut short */
  free(r.held);
  tly_offset_map_free(&r.map);
  if (parts)
    rd_kafka_topic_partition_list_destroy(parts);
  tly_store_batch_destroy(r.batch);
  out->elapsed_ms = monotonic_ms() - started;
  if (rc == 0 && out->next_offset < 0 &&
      tly_changelog_wipe_partition(store, partition, errstr, errstr_size))
    return -1; /* leave nothing half-restored behind */
  return rc;
}
