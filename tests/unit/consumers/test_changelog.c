/*
 * test_changelog.c - the state changelog's bundles and its restore rules
 * (tly_changelog.h), over an in-process embedded broker and a real
 * RocksDB:
 *   - a bundle expands into its state records (each carrying its
 *     partition's marker offset) followed by the markers;
 *   - restore applies a commit only once its marker was read: the records
 *     of a commit cut short (no marker) never count;
 *   - a stale record re-sent late (lower offset than one applied for the
 *     same key) never overwrites the newer one;
 *   - the state reflects the highest marker; the cycle-end index is
 *     rebuilt; another partition's keys and older local state are gone;
 *   - Stripe report marks restore like state records, and a mark's
 *     deletion is for good; report cursors restore whatever the markers,
 *     newest version first: an older or equal-version record (a late one
 *     from an instance that lost the partition) never overwrites a newer
 *     one; local marks and cursors of the partition are wiped first;
 *   - the last record's writer tells whether another instance wrote the
 *     partition's changelog since, and the offset it reflects whether a
 *     store is as current as the changelog; a store's writer id is
 *     stable.
 */
#include "tly_billing.h"
#include "tly_changelog_restore.h"
#include "tly_keys.h"
#include "tly_store.h"
#include "tly_test_cluster.h"

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define TOPIC "tally.changelog"

static int only_five(void *opaque, int32_t partition) {
  (void)opaque;
  return partition == 5;
}

static void test_bundle_expands_records_then_markers(void **state) {
  (void)state;
  tly_changelog_bundle_t bundle = {0};
  tly_changelog_bundle_add(&bundle, 3, TLY_CHANGELOG_ACCOUNT, "\0\0\0\3k1", 6,
                           "v1", 2);
  tly_changelog_bundle_add(&bundle, 5, TLY_CHANGELOG_USAGE, "\0\0\0\5k2", 6, "",
                           0);
  tly_changelog_marker_t markers[] = {{3, 700, 111}, {5, 900, 222}};
  char *data;
  size_t len, cursor = 0, cap = 0;
  unsigned char *scratch = NULL;
  tly_changelog_record_t record;
  assert_int_equal(
      tly_changelog_bundle_finish(&bundle, markers, 2, &data, &len), 0);
  assert_true(tly_changelog_is_bundle(data, len));
  assert_false(tly_changelog_is_bundle("\0\5topic", 7));

  assert_int_equal(
      tly_changelog_bundle_next(data, len, &cursor, &scratch, &cap, &record),
      1);
  assert_int_equal(record.partition, 3);
  assert_int_equal(record.key_len, 7);
  assert_memory_equal(record.key, "A\0\0\0\3k1", 7);
  assert_int_equal(record.value_len, 10);
  assert_int_equal(tly_get_be64(record.value), 700);
  assert_memory_equal((const char *)record.value + 8, "v1", 2);

  assert_int_equal(
      tly_changelog_bundle_next(data, len, &cursor, &scratch, &cap, &record),
      1);
  assert_int_equal(record.partition, 5);
  assert_int_equal(tly_get_be64(record.value), 900);
  assert_int_equal(record.value_len, 8);

  for (int m = 0; m < 2; m++) {
    assert_int_equal(
        tly_changelog_bundle_next(data, len, &cursor, &scratch, &cap, &record),
        1);
    assert_int_equal(record.partition, markers[m].partition);
    assert_memory_equal(record.key, "M", 1);
    assert_int_equal(tly_get_be64(record.value), markers[m].next_offset);
    assert_int_equal(tly_get_be64((const unsigned char *)record.value + 8),
                     markers[m].watermark_ms);
  }
  assert_int_equal(
      tly_changelog_bundle_next(data, len, &cursor, &scratch, &cap, &record),
      0);
  /* A deletion: a tombstone (null value) carrying its reflected offset. */
  free(data);
  cursor = 0;
  tly_changelog_bundle_delete(&bundle, 3, TLY_CHANGELOG_DEDUPE, "\0\0\0\3d", 5);
  assert_int_equal(
      tly_changelog_bundle_finish(&bundle, markers, 1, &data, &len), 0);
  assert_int_equal(
      tly_changelog_bundle_next(data, len, &cursor, &scratch, &cap, &record),
      1);
  assert_null(record.value);
  assert_int_equal(record.value_len, 0);
  assert_int_equal(record.offset, 700);
  assert_memory_equal(record.key, "D\0\0\0\3d", 6);
  /* Filtering keeps only the partitions asked for (markers too). */
  {
    char *both, *only5;
    size_t both_len, only5_len, at = 0;
    tly_changelog_bundle_add(&bundle, 3, TLY_CHANGELOG_ACCOUNT, "\0\0\0\3a", 5,
                             "x", 1);
    tly_changelog_bundle_add(&bundle, 5, TLY_CHANGELOG_ACCOUNT, "\0\0\0\5b", 5,
                             "y", 1);
    assert_int_equal(
        tly_changelog_bundle_finish(&bundle, markers, 2, &both, &both_len), 0);
    assert_int_equal(tly_changelog_bundle_filter(both, both_len, only_five,
                                                 NULL, &only5, &only5_len),
                     0);
    int records = 0, markers_seen = 0;
    while (tly_changelog_bundle_next(only5, only5_len, &at, &scratch, &cap,
                                     &record) == 1) {
      assert_int_equal(record.partition, 5);
      if (((const char *)record.key)[0] == 'M')
        markers_seen++;
      else
        records++;
    }
    assert_int_equal(records, 1);
    assert_int_equal(markers_seen, 1);
    free(both);
    free(only5);
  }
  /* A record of a partition with no marker cannot be published. */
  cursor = 0;
  free(data);
  tly_changelog_bundle_add(&bundle, 4, TLY_CHANGELOG_USAGE, "\0\0\0\4k", 5, "",
                           0);
  assert_int_equal(
      tly_changelog_bundle_finish(&bundle, markers, 1, &data, &len), 0);
  assert_int_equal(
      tly_changelog_bundle_next(data, len, &cursor, &scratch, &cap, &record),
      -1);
  free(data);
  free(scratch);
  tly_changelog_bundle_free(&bundle);
}

static void produce(rd_kafka_t *producer, char kind, const char *key,
                    size_t key_len, int64_t offset, const void *value,
                    size_t value_len) {
  unsigned char k[256], v[4096];
  k[0] = (unsigned char)kind;
  memcpy(k + 1, key, key_len);
  tly_put_be64(v, (uint64_t)offset);
  memcpy(v + 8, value, value_len);
  assert_int_equal(
      rd_kafka_producev(
          producer, RD_KAFKA_V_TOPIC(TOPIC), RD_KAFKA_V_PARTITION(1),
          RD_KAFKA_V_KEY(k, 1 + key_len), RD_KAFKA_V_VALUE(v, 8 + value_len),
          RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END),
      0);
}

static void produce_tombstone(rd_kafka_t *producer, const char *key,
                              size_t key_len, int64_t offset) {
  unsigned char k[256], o[8];
  k[0] = TLY_CHANGELOG_DEDUPE;
  memcpy(k + 1, key, key_len);
  tly_put_be64(o, (uint64_t)offset);
  rd_kafka_headers_t *headers = rd_kafka_headers_new(1);
  rd_kafka_header_add(headers, TLY_CHANGELOG_OFFSET_HEADER, -1, o, 8);
  assert_int_equal(
      rd_kafka_producev(producer, RD_KAFKA_V_TOPIC(TOPIC),
                        RD_KAFKA_V_PARTITION(1), RD_KAFKA_V_KEY(k, 1 + key_len),
                        RD_KAFKA_V_VALUE(NULL, 0), RD_KAFKA_V_HEADERS(headers),
                        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                        RD_KAFKA_V_END),
      0);
}

static void produce_marker(rd_kafka_t *producer, int64_t offset,
                           int64_t watermark) {
  unsigned char wm[8];
  tly_put_be64(wm, (uint64_t)watermark);
  produce(producer, TLY_CHANGELOG_MARKER, "", 0, offset, wm, 8);
}

/* A subject record of partition 1 whose cycle ends at end_ms, with one
 * row of quantity q. */
static size_t subject_record(int64_t end_ms, int64_t q, unsigned char *out,
                             size_t size) {
  tly_account_t account = {.exists = 1};
  tly_subject_row_t row = {.cycle_start_ms = end_ms - 1000};
  const tly_subject_row_t *rows[] = {&row};
  snprintf(account.plan, sizeof(account.plan), "free");
  account.cycle = (tly_cycle_t){end_ms - 1000, end_ms, 0, 1};
  snprintf(row.feature, sizeof(row.feature), "api_calls");
  row.row.quantity = q;
  row.row.event_count = 1;
  return tly_subject_record_encode(&account, rows, 1, NULL, 0, out, size);
}

static int64_t stored_quantity(tly_store_t *store, const char *key,
                               size_t key_len) {
  char errstr[256], *value = NULL;
  size_t len = 0;
  tly_subject_record_t record;
  int found = tly_store_get(store, TLY_CF_ACCOUNTS, key, key_len, &value, &len,
                            errstr, sizeof(errstr));
  if (found <= 0)
    return -1;
  assert_int_equal(tly_subject_record_decode(value, len, &record), 0);
  tly_store_free(value);
  int64_t q = record.row_count ? record.rows[0].row.quantity : -2;
  tly_subject_record_clear(&record);
  return q;
}

static int count_keys(void *opaque, const char *key, size_t key_len,
                      const char *value, size_t value_len) {
  (void)key, (void)key_len, (void)value, (void)value_len;
  (*(int *)opaque)++;
  return 0;
}

static void test_restore_rules(void **state) {
  (void)state;
  char errstr[512], dir[] = "/tmp/tally-test-changelog-XXXXXX";
  char k1[64], k2[64], k3[64], other[64];
  unsigned char value[1024];
  assert_non_null(mkdtemp(dir));
  size_t k1_len = tly_key_account(1, TLY_SUBJECT_USER, "one", k1, sizeof(k1));
  size_t k2_len = tly_key_account(1, TLY_SUBJECT_USER, "two", k2, sizeof(k2));
  size_t k3_len = tly_key_account(1, TLY_SUBJECT_USER, "three", k3, sizeof(k3));
  size_t other_len =
      tly_key_account(1, TLY_SUBJECT_USER, "stale-local", other, sizeof(other));

  const char *bootstrap = NULL;
  rd_kafka_mock_cluster_t *cluster = tly_test_cluster_new(TOPIC, 2, &bootstrap);

  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, NULL, 0);
  rd_kafka_conf_set(conf, "enable.idempotence", "true", NULL, 0);
  rd_kafka_t *producer =
      rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  assert_non_null(producer);
  size_t len;
  /* Commit @10: k1 = 1, k2 = 2. */
  len = subject_record(5000, 1, value, sizeof(value));
  produce(producer, TLY_CHANGELOG_ACCOUNT, k1, k1_len, 10, value, len);
  len = subject_record(5000, 2, value, sizeof(value));
  produce(producer, TLY_CHANGELOG_ACCOUNT, k2, k2_len, 10, value, len);
  const char blob1[12] = {0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1};
  const char blob2[12] = {0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2};
  produce(producer, TLY_CHANGELOG_DEDUPE, blob1, 12, 10, "ids1", 4);
  produce(producer, TLY_CHANGELOG_DEDUPE, blob2, 12, 10, "ids2", 4);
  /* History of k1: an hour that expires at 4000 (indexed by its expiry on
   * restore) and an archived cycle kept for good (not indexed). */
  const char hour_key[] = "\0\0\0\1user:one\0H\0\0\0\5";
  const char cycle_key[] = "\0\0\0\1user:one\0C\0\0\0\0\0\0\0\7";
  const unsigned char hour_value[9] = {0, 0, 0, 0, 0, 0, 0x0f, 0xa0, 'b'};
  const unsigned char cycle_value[9] = {0x7f, 0xff, 0xff, 0xff, 0xff,
                                        0xff, 0xff, 0xff, 'c'};
  produce(producer, TLY_CHANGELOG_USAGE, hour_key, sizeof(hour_key) - 1, 10,
          hour_value, sizeof(hour_value));
  produce(producer, TLY_CHANGELOG_USAGE, cycle_key, sizeof(cycle_key) - 1, 10,
          cycle_value, sizeof(cycle_value));
  produce_marker(producer, 10, 777);
  /* Commit @20: k1 = 11 (its cycle moved on), blob1 expired, marker. */
  len = subject_record(9000, 11, value, sizeof(value));
  produce(producer, TLY_CHANGELOG_ACCOUNT, k1, k1_len, 20, value, len);
  produce_tombstone(producer, blob1, 12, 20);
  produce_marker(producer, 20, 888);
  /* Late, from an instance that lost the partition: k1 as of @10 (must not
   * overwrite @20) and its old marker (ignored). */
  len = subject_record(5000, 1, value, sizeof(value));
  produce(producer, TLY_CHANGELOG_ACCOUNT, k1, k1_len, 10, value, len);
  produce_marker(producer, 10, 777);
  /* Commit @30 cut short: k2 = 99 and k3 published, no marker. */
  len = subject_record(9000, 99, value, sizeof(value));
  produce(producer, TLY_CHANGELOG_ACCOUNT, k2, k2_len, 30, value, len);
  produce(producer, TLY_CHANGELOG_ACCOUNT, k3, k3_len, 30, value, len);
  produce_tombstone(producer, blob2, 12, 30);
  /* A key of another partition in this one's changelog: never written. */
  char foreign[64];
  size_t foreign_len = tly_key_account(0, TLY_SUBJECT_USER, "elsewhere",
                                       foreign, sizeof(foreign));
  produce(producer, TLY_CHANGELOG_ACCOUNT, foreign, foreign_len, 5, value, len);
  assert_int_equal(rd_kafka_flush(producer, 10000), 0);
  rd_kafka_destroy(producer);

  tly_store_t *store = tly_store_open(dir, 0, errstr, sizeof(errstr));
  assert_non_null(store);
  /* Stale local state of the partition: wiped by the restore. */
  tly_store_batch_t *batch = tly_store_batch_new();
  tly_store_batch_put(batch, TLY_CF_ACCOUNTS, other, other_len, "x", 1);
  tly_store_batch_set_offset(batch, 1, 3);
  assert_int_equal(tly_store_commit(store, batch, 1, errstr, sizeof(errstr)),
                   0);
  tly_store_batch_destroy(batch);

  conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, NULL, 0);
  rd_kafka_conf_set(conf, "group.id", "test-restore", NULL, 0);
  rd_kafka_conf_set(conf, "enable.partition.eof", "true", NULL, 0);
  rd_kafka_t *reader =
      rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
  assert_non_null(reader);
  int64_t low, high;
  assert_int_equal(
      rd_kafka_query_watermark_offsets(reader, TOPIC, 1, &low, &high, 10000),
      0);
  assert_int_equal(high, 16);
  tly_changelog_restore_t result;
  assert_int_equal(tly_changelog_restore(store, reader, TOPIC, 1, low, high,
                                         &result, errstr, sizeof(errstr)),
                   1);
  assert_int_equal(result.records, 16);
  assert_int_equal(result.next_offset, 20);
  assert_int_equal(result.watermark_ms, 888);
  assert_int_equal(result.accounts, 2);
  assert_int_equal(stored_quantity(store, k1, k1_len), 11);
  assert_int_equal(stored_quantity(store, k2, k2_len), 2);
  assert_int_equal(stored_quantity(store, k3, k3_len), -1);
  assert_int_equal(stored_quantity(store, other, other_len), -1);
  assert_int_equal(stored_quantity(store, foreign, foreign_len), -1);
  /* The offset the last record reflects (what a store must hold to be as
   * current as the changelog): a state record's, a deletion's (from its
   * header), a marker's; no writer named on any of them. */
  tly_changelog_last_t last;
  assert_int_equal(tly_changelog_last_record(reader, TOPIC, 1, high, &last,
                                             errstr, sizeof(errstr)),
                   0);
  assert_int_equal(last.offset, 5);
  assert_int_equal(tly_changelog_last_record(reader, TOPIC, 1, high - 1, &last,
                                             errstr, sizeof(errstr)),
                   0);
  assert_int_equal(last.offset, 30);
  assert_int_equal(tly_changelog_last_record(reader, TOPIC, 1, 12, &last,
                                             errstr, sizeof(errstr)),
                   0);
  assert_int_equal(last.offset, 10);
  assert_int_equal(tly_changelog_last_record(reader, TOPIC, 1, 0, &last, errstr,
                                             sizeof(errstr)),
                   0);
  assert_int_equal(last.offset, -1);
  /* Several partitions at once; an empty one (high 0) has none. */
  const int32_t several[] = {0, 1};
  const int64_t several_highs[] = {0, high - 1};
  tly_changelog_last_t lasts[2];
  assert_int_equal(tly_changelog_last_records(reader, TOPIC, several,
                                              several_highs, 2, lasts, errstr,
                                              sizeof(errstr)),
                   0);
  assert_int_equal(lasts[0].offset, -1);
  assert_int_equal(lasts[1].offset, 30);
  /* blob1's deletion is complete (@20), blob2's was cut short (@30). */
  char *blob_value = NULL;
  size_t blob_len = 0;
  assert_int_equal(tly_store_get(store, TLY_CF_DEDUPE, blob1, 12, &blob_value,
                                 &blob_len, errstr, sizeof(errstr)),
                   0);
  assert_int_equal(tly_store_get(store, TLY_CF_DEDUPE, blob2, 12, &blob_value,
                                 &blob_len, errstr, sizeof(errstr)),
                   1);
  assert_int_equal(blob_len, 4);
  assert_memory_equal(blob_value, "ids2", 4);
  tly_store_free(blob_value);
  int64_t offset;
  assert_int_equal(
      tly_store_get_offset(store, 1, &offset, errstr, sizeof(errstr)),
      0); /* the caller stores it */
  /* The cycle-end index: k1 at 9000 (not at its older 5000), k2 at 5000. */
  int index_keys = 0;
  unsigned char prefix[4];
  tly_put_be32(prefix, 1);
  assert_int_equal(tly_store_scan_prefix(store, TLY_CF_CYCLE_ENDS, prefix, 4,
                                         count_keys, &index_keys, errstr,
                                         sizeof(errstr)),
                   0);
  assert_int_equal(index_keys, 2);
  char index_key[80];
  size_t index_len = tly_key_cycle_end(1, 9000, TLY_SUBJECT_USER, "one",
                                       index_key, sizeof(index_key));
  char *found_value = NULL;
  size_t found_len = 0;
  assert_int_equal(tly_store_get(store, TLY_CF_CYCLE_ENDS, index_key, index_len,
                                 &found_value, &found_len, errstr,
                                 sizeof(errstr)),
                   1);
  tly_store_free(found_value);
  /* The expiry index: the hour, at 4000; not the cycle kept for good. */
  index_keys = 0;
  assert_int_equal(tly_store_scan_prefix(store, TLY_CF_EXPIRIES, prefix, 4,
                                         count_keys, &index_keys, errstr,
                                         sizeof(errstr)),
                   0);
  assert_int_equal(index_keys, 1);
  index_len = tly_key_expiry(hour_key, sizeof(hour_key) - 1, 4000, index_key,
                             sizeof(index_key));
  assert_int_equal(tly_store_get(store, TLY_CF_EXPIRIES, index_key, index_len,
                                 &found_value, &found_len, errstr,
                                 sizeof(errstr)),
                   1);
  tly_store_free(found_value);

  /* An empty changelog partition restores nothing and leaves it wiped. */
  assert_int_equal(tly_changelog_restore(store, reader, TOPIC, 0, 0, 0, &result,
                                         errstr, sizeof(errstr)),
                   0);
  rd_kafka_consumer_close(reader);
  rd_kafka_destroy(reader);
  tly_store_close(store);
  tly_test_cluster_destroy(cluster);
  char command[128];
  snprintf(command, sizeof(command), "rm -rf %s", dir);
  assert_int_equal(system(command), 0);
}

/* A raw changelog record of partition: key [kind][key], value as given
 * (NULL: a tombstone), an optional writer header. */
static void produce_raw(rd_kafka_t *producer, int32_t partition, char kind,
                        const void *key, size_t key_len, const void *value,
                        size_t value_len, const char *writer) {
  unsigned char k[256];
  k[0] = (unsigned char)kind;
  memcpy(k + 1, key, key_len);
  rd_kafka_headers_t *headers = NULL;
  if (writer) {
    headers = rd_kafka_headers_new(1);
    rd_kafka_header_add(headers, TLY_CHANGELOG_WRITER_HEADER, -1, writer, -1);
  }
  assert_int_equal(rd_kafka_producev(producer, RD_KAFKA_V_TOPIC(TOPIC),
                                     RD_KAFKA_V_PARTITION(partition),
                                     RD_KAFKA_V_KEY(k, 1 + key_len),
                                     RD_KAFKA_V_VALUE((void *)value, value_len),
                                     RD_KAFKA_V_HEADERS(headers),
                                     RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                     RD_KAFKA_V_END),
                   0);
}

/* A state record of partition as the processor publishes it: value
 * [offset][bytes]. */
static void produce_state(rd_kafka_t *producer, int32_t partition, char kind,
                          const void *key, size_t key_len, int64_t offset,
                          const void *bytes, size_t len, const char *writer) {
  unsigned char v[512];
  tly_put_be64(v, (uint64_t)offset);
  memcpy(v + 8, bytes, len);
  produce_raw(producer, partition, kind, key, key_len, v, 8 + len, writer);
}

/* A cursor record as the emitter publishes it: [version][cursor bytes]. */
static void produce_cursor(rd_kafka_t *producer, int32_t partition,
                           const void *key, size_t key_len, int64_t version,
                           const char *cursor, const char *writer) {
  unsigned char v[512];
  size_t len = strlen(cursor);
  tly_put_be64(v, (uint64_t)version);
  memcpy(v + 8, cursor, len);
  produce_raw(producer, partition, TLY_CHANGELOG_CURSOR, key, key_len, v,
              8 + len, writer);
}

/* The stored value of key in cf as a string ("" when absent). */
static const char *stored(tly_store_t *store, tly_cf_t cf, const void *key,
                          size_t key_len) {
  static char text[256];
  char errstr[256], *value = NULL;
  size_t len = 0;
  text[0] = '\0';
  int found = tly_store_get(store, cf, key, key_len, &value, &len, errstr,
                            sizeof(errstr));
  assert_true(found >= 0);
  if (found)
    snprintf(text, sizeof(text), "%.*s", (int)len, value);
  tly_store_free(value);
  return text;
}

static void test_report_restore_rules(void **state) {
  (void)state;
  char errstr[512], dir[] = "/tmp/tally-test-changelog-XXXXXX";
  char mark10[64], mark30[64], mark_gone[64], cursor_a[128], cursor_b[128];
  char cursor_c[128], cursor_other[128], local_cursor[128], local_mark[64];
  assert_non_null(mkdtemp(dir));
  size_t mark10_len =
      tly_key_report_mark(1, 10, TLY_SUBJECT_USER, "one", mark10, 64);
  size_t mark30_len =
      tly_key_report_mark(1, 30, TLY_SUBJECT_USER, "one", mark30, 64);
  size_t mark_gone_len =
      tly_key_report_mark(1, 10, TLY_SUBJECT_USER, "two", mark_gone, 64);
  size_t local_mark_len =
      tly_key_report_mark(1, 5, TLY_SUBJECT_USER, "old", local_mark, 64);
  size_t cursor_a_len = tly_key_report_cursor(1, TLY_SUBJECT_USER, "one", "api",
                                              3600000, cursor_a, 128);
  size_t cursor_b_len = tly_key_report_cursor(1, TLY_SUBJECT_USER, "two", "api",
                                              3600000, cursor_b, 128);
  size_t cursor_c_len = tly_key_report_cursor(1, TLY_SUBJECT_USER, "three",
                                              "api", 3600000, cursor_c, 128);
  size_t cursor_other_len = tly_key_report_cursor(
      0, TLY_SUBJECT_USER, "one", "api", 3600000, cursor_other, 128);
  size_t local_cursor_len = tly_key_report_cursor(
      1, TLY_SUBJECT_USER, "old", "api", 3600000, local_cursor, 128);

  const char *bootstrap = NULL;
  rd_kafka_mock_cluster_t *cluster = tly_test_cluster_new(TOPIC, 3, &bootstrap);
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, NULL, 0);
  rd_kafka_conf_set(conf, "enable.idempotence", "true", NULL, 0);
  rd_kafka_t *producer =
      rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  assert_non_null(producer);

  /* Partition 1. Commit @10 by instance "w1": marks of one and two. */
  produce_state(producer, 1, TLY_CHANGELOG_REPORT, mark10, mark10_len, 10,
                "m10", 3, NULL);
  produce_state(producer, 1, TLY_CHANGELOG_REPORT, mark_gone, mark_gone_len, 10,
                "m2", 2, NULL);
  unsigned char marker[8];
  tly_put_be64(marker, 0);
  produce_state(producer, 1, TLY_CHANGELOG_MARKER, "", 0, 10, marker, 8, "w1");
  /* w1's emitter: one's cursor reported 2 (version 4), then an intent
   * (version 5); two's mark settled: deleted. */
  produce_cursor(producer, 1, cursor_a, cursor_a_len, 4, "reported-2", "w1");
  produce_cursor(producer, 1, cursor_a, cursor_a_len, 5, "intent-2+3", "w1");
  produce_raw(producer, 1, TLY_CHANGELOG_REPORT, mark_gone, mark_gone_len, NULL,
              0, "w1");
  /* Late, from an instance that lost the partition: one's older cursor
   * (version 4) and one of the same version as the intent with another
   * value; two's mark again (its commit's record re-sent). None counts. */
  produce_cursor(producer, 1, cursor_a, cursor_a_len, 4, "stale-2", "w0");
  produce_cursor(producer, 1, cursor_a, cursor_a_len, 5, "other-2+4", "w0");
  produce_state(producer, 1, TLY_CHANGELOG_REPORT, mark_gone, mark_gone_len, 10,
                "m2", 2, NULL);
  /* Cursors need no marker: three's, after the last marker. b's newest
   * comes first, an older one after it. */
  produce_cursor(producer, 1, cursor_c, cursor_c_len, 2, "reported-1", "w1");
  produce_cursor(producer, 1, cursor_b, cursor_b_len, 9, "b-9", "w1");
  produce_cursor(producer, 1, cursor_b, cursor_b_len, 7, "b-7", "w1");
  /* A cursor of another partition: never written here. */
  produce_cursor(producer, 1, cursor_other, cursor_other_len, 99, "foreign",
                 "w1");
  /* Commit @30 cut short: one's next mark, no marker. */
  produce_state(producer, 1, TLY_CHANGELOG_REPORT, mark30, mark30_len, 30,
                "m30", 3, NULL);

  /* Partition 2: cursors only (the emitter ahead of the first bundle),
   * the last record w2's. */
  char cursor2[128];
  size_t cursor2_len =
      tly_key_report_cursor(2, TLY_SUBJECT_USER, "z", "api", 0, cursor2, 128);
  produce_cursor(producer, 2, cursor2, cursor2_len, 3, "z-3", "w2");
  assert_int_equal(rd_kafka_flush(producer, 10000), 0);
  rd_kafka_destroy(producer);

  tly_store_t *store = tly_store_open(dir, 0, errstr, sizeof(errstr));
  assert_non_null(store);
  /* Stale local marks and cursors of partition 1: wiped by the restore. */
  tly_store_batch_t *batch = tly_store_batch_new();
  tly_store_batch_put(batch, TLY_CF_REPORTS, local_mark, local_mark_len, "x",
                      1);
  tly_store_batch_put(batch, TLY_CF_CURSORS, local_cursor, local_cursor_len,
                      "x", 1);
  tly_store_batch_put(batch, TLY_CF_CURSORS, cursor_a, cursor_a_len, "x", 1);
  assert_int_equal(tly_store_commit(store, batch, 1, errstr, sizeof(errstr)),
                   0);
  tly_store_batch_destroy(batch);

  conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, NULL, 0);
  rd_kafka_conf_set(conf, "group.id", "test-restore", NULL, 0);
  rd_kafka_conf_set(conf, "enable.partition.eof", "true", NULL, 0);
  rd_kafka_t *reader =
      rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
  assert_non_null(reader);
  int64_t low, high;
  assert_int_equal(
      rd_kafka_query_watermark_offsets(reader, TOPIC, 1, &low, &high, 10000),
      0);
  assert_int_equal(high, 14);
  /* Who wrote last: partition 1 ends with a state record (a commit cut
   * short: nobody named), partition 2 with w2's cursor. */
  char writer[64];
  assert_int_equal(tly_changelog_last_writer(reader, TOPIC, 1, high, writer,
                                             sizeof(writer), errstr,
                                             sizeof(errstr)),
                   0);
  assert_int_equal(tly_changelog_last_writer(reader, TOPIC, 2, 1, writer,
                                             sizeof(writer), errstr,
                                             sizeof(errstr)),
                   1);
  assert_string_equal(writer, "w2");
  /* A state record names its commit's offset, a cursor (its own version)
   * none. */
  tly_changelog_last_t last;
  assert_int_equal(tly_changelog_last_record(reader, TOPIC, 1, high, &last,
                                             errstr, sizeof(errstr)),
                   0);
  assert_int_equal(last.offset, 30);
  assert_int_equal(tly_changelog_last_record(reader, TOPIC, 2, 1, &last, errstr,
                                             sizeof(errstr)),
                   1);
  assert_string_equal(last.writer, "w2");
  assert_int_equal(last.offset, -1);
  /* Both at once, in one assignment: the same answers. */
  const int32_t both[] = {2, 1};
  const int64_t both_highs[] = {1, high};
  tly_changelog_last_t lasts[2];
  assert_int_equal(tly_changelog_last_records(reader, TOPIC, both, both_highs,
                                              2, lasts, errstr, sizeof(errstr)),
                   0);
  assert_true(lasts[0].named);
  assert_string_equal(lasts[0].writer, "w2");
  assert_int_equal(lasts[0].offset, -1);
  assert_false(lasts[1].named);
  assert_int_equal(lasts[1].offset, 30);
  assert_int_equal(tly_changelog_last_writer(reader, TOPIC, 0, 0, writer,
                                             sizeof(writer), errstr,
                                             sizeof(errstr)),
                   0);

  tly_changelog_restore_t result;
  assert_int_equal(tly_changelog_restore(store, reader, TOPIC, 1, low, high,
                                         &result, errstr, sizeof(errstr)),
                   1);
  assert_int_equal(result.next_offset, 10);
  /* Marks: @10's restored, the settled one gone for good (its record
   * re-sent after the deletion too), @30's cut short. */
  assert_string_equal(stored(store, TLY_CF_REPORTS, mark10, mark10_len), "m10");
  assert_string_equal(stored(store, TLY_CF_REPORTS, mark_gone, mark_gone_len),
                      "");
  assert_string_equal(stored(store, TLY_CF_REPORTS, mark30, mark30_len), "");
  assert_string_equal(stored(store, TLY_CF_REPORTS, local_mark, local_mark_len),
                      "");
  /* Cursors: the newest version, whatever came later. */
  assert_string_equal(stored(store, TLY_CF_CURSORS, cursor_a, cursor_a_len),
                      "intent-2+3");
  assert_string_equal(stored(store, TLY_CF_CURSORS, cursor_b, cursor_b_len),
                      "b-9");
  assert_string_equal(stored(store, TLY_CF_CURSORS, cursor_c, cursor_c_len),
                      "reported-1");
  assert_string_equal(
      stored(store, TLY_CF_CURSORS, cursor_other, cursor_other_len), "");
  assert_string_equal(
      stored(store, TLY_CF_CURSORS, local_cursor, local_cursor_len), "");

  /* Partition 2: no complete commit, no state; its cursors all the same. */
  assert_int_equal(tly_changelog_restore(store, reader, TOPIC, 2, 0, 1, &result,
                                         errstr, sizeof(errstr)),
                   0);
  assert_string_equal(stored(store, TLY_CF_CURSORS, cursor2, cursor2_len),
                      "z-3");

  /* A store's writer id: made once, then the same. */
  char id[TLY_CHANGELOG_WRITER_SIZE], again[TLY_CHANGELOG_WRITER_SIZE];
  assert_int_equal(tly_changelog_writer_id(store, id, errstr, sizeof(errstr)),
                   0);
  assert_int_equal(strlen(id), TLY_CHANGELOG_WRITER_SIZE - 1);
  assert_int_equal(
      tly_changelog_writer_id(store, again, errstr, sizeof(errstr)), 0);
  assert_string_equal(id, again);

  rd_kafka_consumer_close(reader);
  rd_kafka_destroy(reader);
  tly_store_close(store);
  tly_test_cluster_destroy(cluster);
  char command[128];
  snprintf(command, sizeof(command), "rm -rf %s", dir);
  assert_int_equal(system(command), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bundle_expands_records_then_markers),
      cmocka_unit_test(test_restore_rules),
      cmocka_unit_test(test_report_restore_rules),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
