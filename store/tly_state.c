/*
 * tly_state.c - a subject's committed state, read from RocksDB (see
 * tly_state.h).
 *
 * Finding the subject: state keys start with the partition, and the
 * partition is the one Kafka's murmur2 partitioner (tally's producers, Java
 * clients) picks for the subject key. Events produced with another
 * partitioner may live elsewhere, so when the home partition has no account
 * the others are searched too, those the caller serves only (the state of
 * a partition another instance owns may be stale here).
 *
 * The account and its kept rows are one value (the subject record), so
 * one read sees them as of the same commit.
 */
#include "tly_state.h"

#include "tly_keys.h"

#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tly_state_subject_clear(tly_subject_state_t *state) {
  if (!state)
    return;
  free(state->rows);
  free(state->buckets);
  free(state->holds);
  memset(state, 0, sizeof(*state));
}

/* 1 and the subject record when partition holds it, 0 when not, -1 on
 * error. */
static int read_subject(tly_store_t *store, int32_t partition,
                        tly_subject_kind_t kind, const char *id,
                        tly_subject_state_t *out, char *errstr,
                        size_t errstr_size) {
  char key[TLY_KEY_MAX], *value = NULL;
  size_t value_len;
  size_t key_len = tly_key_account(partition, kind, id, key, sizeof(key));
  if (!key_len) {
    snprintf(errstr, errstr_size, "subject id too long");
    return -1;
  }
  int found = tly_store_get(store, TLY_CF_ACCOUNTS, key, key_len, &value,
                            &value_len, errstr, errstr_size);
  if (found <= 0)
    return found;
  tly_subject_record_t record;
  int bad = tly_subject_record_decode(value, value_len, &record);
  tly_store_free(value);
  if (bad) {
    snprintf(errstr, errstr_size, "stored subject record is corrupt");
    return -1;
  }
  out->account = record.account;
  out->rows = record.rows;
  out->row_count = record.row_count;
  out->buckets = record.buckets;
  out->bucket_count = record.bucket_count;
  out->holds = record.holds;
  out->hold_count = record.hold_count;
  out->read_marks = record.read_marks;
  tly_distinct_sets_clear(&record.distinct); /* no reader needs the values */
  return 1;
}

int32_t tly_state_home_partition(int32_t partition_count,
                                 tly_subject_kind_t kind, const char *id) {
  char subject_key[TLY_KEY_MAX];
  size_t subject_key_len =
      tly_subject_key(kind, id, subject_key, sizeof(subject_key));
  if (partition_count < 1 || subject_key_len >= sizeof(subject_key))
    return -1;
  return rd_kafka_msg_partitioner_murmur2(NULL, subject_key, subject_key_len,
                                          partition_count, NULL, NULL);
}

int tly_state_find_subject(tly_store_t *store, int32_t partition_count,
                           tly_state_readable_fn readable,
                           void *readable_opaque, tly_subject_kind_t kind,
                           const char *id, tly_subject_state_t *out,
                           char *errstr, size_t errstr_size) {
  char subject_key[TLY_KEY_MAX];
  memset(out, 0, sizeof(*out));
  out->partition = -1;

  if (tly_subject_key(kind, id, subject_key, sizeof(subject_key)) >=
      sizeof(subject_key)) {
    snprintf(errstr, errstr_size, "subject id too long");
    return -1;
  }
  int32_t home = tly_state_home_partition(partition_count, kind, id);
  int found = 0;
  for (int32_t i = -1; i < partition_count && !found; i++) {
    int32_t partition = i < 0 ? home : i;
    if (partition < 0 || (i >= 0 && partition == home))
      continue;
    if (readable && !readable(readable_opaque, partition))
      continue;
    found = read_subject(store, partition, kind, id, out, errstr, errstr_size);
    if (found < 0)
      return -1;
    if (found)
      out->partition = partition;
  }
  return found ? 1 : 0;
}

typedef struct {
  size_t prefix_len;
  int64_t horizon_ms;
  tly_state_history_cb cb;
  void *opaque;
  int corrupt;
} history_scan_t;

static int visit_history(void *opaque, const char *key, size_t key_len,
                         const char *value, size_t value_len) {
  history_scan_t *scan = opaque;
  if (value_len < 8) {
    scan->corrupt = 1;
    return 1;
  }
  if ((int64_t)tly_get_be64((const unsigned char *)value) < scan->horizon_ms)
    return 0; /* expired: compaction drops it sooner or later */
  return scan->cb(scan->opaque, (const unsigned char *)key + scan->prefix_len,
                  key_len - scan->prefix_len, value + 8, value_len - 8);
}

int tly_state_history(tly_store_t *store, int32_t partition,
                      tly_subject_kind_t kind, const char *id, char tag,
                      int64_t horizon_ms, tly_state_history_cb cb, void *opaque,
                      char *errstr, size_t errstr_size) {
  char prefix[TLY_KEY_MAX];
  size_t len =
      tly_key_history(partition, kind, id, tag, prefix, sizeof(prefix));
  if (!len) {
    snprintf(errstr, errstr_size, "subject id too long");
    return -1;
  }
  history_scan_t scan = {len, horizon_ms, cb, opaque, 0};
  if (tly_store_scan_prefix(store, TLY_CF_USAGE, prefix, len, visit_history,
                            &scan, errstr, errstr_size))
    return -1;
  if (scan.corrupt) {
    snprintf(errstr, errstr_size, "stored usage history is corrupt");
    return -1;
  }
  return 0;
}
