/*
 * tly_state.c - a subject's committed state, read from RocksDB (see
 * tly_state.h).
 *
 * Finding the subject: state keys start with the partition, and the
 * partition is the one Kafka's murmur2 partitioner (tally's producers, Java
 * clients) picks for the subject key. Events produced with another
 * partitioner may live elsewhere, so when the home partition has no account
 * the others are searched too.
 *
 * The account and the rows are two reads; a commit between them can show
 * rows one batch newer than the account. Callers that need them to agree
 * compare the processor's commit count before and after (tly_http does).
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
  memset(state, 0, sizeof(*state));
}

typedef struct {
  tly_subject_state_t *state;
  size_t prefix_len, capacity;
  int failed; /* 1: corrupt row, 2: out of memory */
} row_scan_t;

/* Key: prefix, cycle start (8 bytes BE), feature. Features longer than a
 * config name can never match a plan's limit or price; they are skipped
 * rather than truncated into a different name. */
static int collect_row(void *opaque, const char *key, size_t key_len,
                       const char *value, size_t value_len) {
  row_scan_t *scan = opaque;
  tly_subject_state_t *state = scan->state;
  tly_billing_row_t row;

  if (key_len < scan->prefix_len + 8) {
    scan->failed = 1;
    return 1;
  }
  size_t feature_len = key_len - scan->prefix_len - 8;
  if (feature_len >= TLY_CONFIG_NAME_MAX)
    return 0;
  if (tly_billing_row_decode(value, value_len, &row)) {
    scan->failed = 1;
    return 1;
  }
  if (state->row_count == scan->capacity) {
    size_t capacity = scan->capacity ? scan->capacity * 2 : 8;
    tly_state_row_t *grown = realloc(state->rows, capacity * sizeof(*grown));
    if (!grown) {
      scan->failed = 2;
      return 1;
    }
    state->rows = grown;
    scan->capacity = capacity;
  }
  tly_state_row_t *out = &state->rows[state->row_count++];
  memset(out, 0, sizeof(*out));
  out->cycle_start_ms =
      (int64_t)tly_get_be64((const unsigned char *)key + scan->prefix_len);
  memcpy(out->feature, key + scan->prefix_len + 8, feature_len);
  out->feature[feature_len] = '\0';
  out->row = row;
  return 0;
}

/* 1 and the account when partition holds it, 0 when not, -1 on error. */
static int read_account(tly_store_t *store, int32_t partition,
                        tly_subject_kind_t kind, const char *id,
                        tly_account_t *account, char *errstr,
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
  int bad = tly_account_decode(value, value_len, account);
  tly_store_free(value);
  if (bad) {
    snprintf(errstr, errstr_size, "stored account is corrupt");
    return -1;
  }
  return 1;
}

int tly_state_find_subject(tly_store_t *store, int32_t partition_count,
                           tly_subject_kind_t kind, const char *id,
                           tly_subject_state_t *out, char *errstr,
                           size_t errstr_size) {
  char subject_key[TLY_KEY_MAX], prefix[TLY_KEY_MAX];
  memset(out, 0, sizeof(*out));
  out->partition = -1;

  size_t subject_key_len =
      tly_subject_key(kind, id, subject_key, sizeof(subject_key));
  if (subject_key_len >= sizeof(subject_key)) {
    snprintf(errstr, errstr_size, "subject id too long");
    return -1;
  }
  int32_t home =
      partition_count > 0
          ? rd_kafka_msg_partitioner_murmur2(NULL, subject_key, subject_key_len,
                                             partition_count, NULL, NULL)
          : -1;
  int found = 0;
  for (int32_t i = -1; i < partition_count && !found; i++) {
    int32_t partition = i < 0 ? home : i;
    if (partition < 0 || (i >= 0 && partition == home))
      continue;
    found = read_account(store, partition, kind, id, &out->account, errstr,
                         errstr_size);
    if (found < 0)
      return -1;
    if (found)
      out->partition = partition;
  }
  if (!found)
    return 0;

  /* Every row of the subject, all cycles: the account key plus the 0 byte
   * that ends the subject in usage keys (see tly_keys.h). */
  size_t prefix_len =
      tly_key_account(out->partition, kind, id, prefix, sizeof(prefix) - 1);
  if (!prefix_len) {
    snprintf(errstr, errstr_size, "subject id too long");
    return -1;
  }
  prefix[prefix_len++] = '\0';
  row_scan_t scan = {out, prefix_len, 0, 0};
  if (tly_store_scan_prefix(store, TLY_CF_USAGE, prefix, prefix_len,
                            collect_row, &scan, errstr, errstr_size)) {
    tly_state_subject_clear(out);
    return -1;
  }
  if (scan.failed) {
    snprintf(errstr, errstr_size, "%s",
             scan.failed == 2 ? "out of memory"
                              : "stored usage row is corrupt");
    tly_state_subject_clear(out);
    return -1;
  }
  return 1;
}
