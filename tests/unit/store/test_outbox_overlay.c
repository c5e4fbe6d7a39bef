/*
 * test_outbox_overlay.c - the outbox entry format (what survives a crash
 * between commit and publish) and the per-batch overlay table.
 */
#include "tly_outbox.h"
#include "tly_overlay.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static void test_outbox_round_trip(void **state) {
  (void)state;
  const char value[] = {0, 1, 2, 0, (char)0xff};
  tly_outbox_record_t record = {0}, back;
  char *encoded;
  size_t len;
  record.topic = "tally.usage.dlq";
  record.topic_len = strlen(record.topic);
  record.key = "user:alice";
  record.key_len = 10;
  record.value = value;
  record.value_len = sizeof(value);
  record.headers[0] = (tly_outbox_header_t){"tally.error", "bad magic", 9};
  record.headers[1] = (tly_outbox_header_t){"empty", "", 0};
  record.header_count = 2;
  assert_int_equal(tly_outbox_encode(&record, &encoded, &len), 0);
  assert_int_equal(tly_outbox_decode(encoded, len, &back), 0);
  assert_int_equal(back.topic_len, record.topic_len);
  assert_memory_equal(back.topic, record.topic, record.topic_len);
  assert_memory_equal(back.key, "user:alice", 10);
  assert_int_equal(back.value_len, sizeof(value));
  assert_memory_equal(back.value, value, sizeof(value));
  assert_int_equal(back.header_count, 2);
  assert_int_equal(back.header_name_len[0], strlen("tally.error"));
  assert_memory_equal(back.headers[0].name, "tally.error", 11);
  assert_memory_equal(back.headers[0].value, "bad magic", 9);
  assert_int_equal(back.headers[1].value_len, 0);

  /* Every truncation and one trailing byte are refused. */
  for (size_t cut = 0; cut < len; cut++)
    assert_int_equal(tly_outbox_decode(encoded, cut, &back), -1);
  char *longer = malloc(len + 1);
  memcpy(longer, encoded, len);
  longer[len] = 'x';
  assert_int_equal(tly_outbox_decode(longer, len + 1, &back), -1);
  free(longer);
  free(encoded);
}

/* A placed record (tly_reroute.h) keeps its partition, Kafka timestamp and
 * scan start; an unplaced one decodes as before (no partition). */
static void test_outbox_placement_round_trip(void **state) {
  (void)state;
  tly_outbox_record_t record = {0}, back;
  char *encoded, *plain;
  size_t len, plain_len;
  record.topic = "tally.usage";
  record.topic_len = strlen(record.topic);
  record.key = "user:alice";
  record.key_len = 10;
  record.value = "v";
  record.value_len = 1;
  record.headers[0] =
      (tly_outbox_header_t){"tally.output.id", "fwd:tally.usage:3:17", 20};
  record.header_count = 1;
  assert_int_equal(tly_outbox_encode(&record, &plain, &plain_len), 0);
  assert_int_equal(tly_outbox_decode(plain, plain_len, &back), 0);
  assert_false(back.partitioned);
  assert_int_equal(back.scan_from, -1);
  assert_int_equal(back.timestamp_ms, 0);

  record.partitioned = 1;
  record.partition = 5;
  record.timestamp_ms = 1763800000123LL;
  record.scan_from = 4242;
  assert_int_equal(tly_outbox_encode(&record, &encoded, &len), 0);
  assert_int_equal(len, plain_len + 20);
  assert_int_equal(tly_outbox_decode(encoded, len, &back), 0);
  assert_true(back.partitioned);
  assert_int_equal(back.partition, 5);
  assert_int_equal(back.timestamp_ms, 1763800000123LL);
  assert_int_equal(back.scan_from, 4242);
  assert_int_equal(back.header_count, 1);
  assert_memory_equal(back.headers[0].value, "fwd:tally.usage:3:17", 20);
  /* Every truncation is refused, the one at the end of the headers too
   * (the placement flag says more follows). */
  for (size_t cut = 0; cut < len; cut++)
    assert_int_equal(tly_outbox_decode(encoded, cut, &back), -1);
  free(encoded);
  free(plain);
}

static void test_outbox_rejects_too_many_headers(void **state) {
  (void)state;
  tly_outbox_record_t record = {0};
  char *encoded = NULL;
  size_t len;
  record.topic = "t";
  record.topic_len = 1;
  record.header_count = TLY_OUTBOX_MAX_HEADERS + 1;
  assert_int_equal(tly_outbox_encode(&record, &encoded, &len), -1);
  assert_null(encoded);
}

static void test_overlay_insert_find_grow_reset(void **state) {
  (void)state;
  tly_overlay_t overlay;
  tly_overlay_entry_t *first = NULL;
  char key[32];
  tly_overlay_init(&overlay);
  assert_null(tly_overlay_find(&overlay, TLY_CF_USAGE, "x", 1));
  for (int i = 0; i < 5000; i++) {
    int len = snprintf(key, sizeof(key), "k%d", i);
    tly_overlay_entry_t *entry =
        tly_overlay_insert(&overlay, TLY_CF_USAGE, key, (size_t)len);
    assert_non_null(entry);
    assert_int_equal(entry->account.cycle.events, 0);
    entry->account.cycle.events = i;
    if (i == 0) /* keeps its address while the table grows */
      first = entry;
    entry->dirty = i % 2;
  }
  assert_int_equal(overlay.count, 5000);
  for (int i = 0; i < 5000; i++) {
    int len = snprintf(key, sizeof(key), "k%d", i);
    tly_overlay_entry_t *entry =
        tly_overlay_find(&overlay, TLY_CF_USAGE, key, (size_t)len);
    assert_non_null(entry);
    assert_int_equal(entry->account.cycle.events, i);
    assert_int_equal(entry->dirty, i % 2);
  }
  /* Keys are bytes, not strings: an embedded NUL makes a different key. */
  assert_null(tly_overlay_find(&overlay, TLY_CF_USAGE, "k1\0", 3));
  /* The same bytes in another column family are another key. */
  assert_null(tly_overlay_find(&overlay, TLY_CF_ACCOUNTS, "k1", 2));
  assert_ptr_equal(tly_overlay_find(&overlay, TLY_CF_USAGE, "k0", 2), first);
  tly_overlay_reset(&overlay);
  assert_int_equal(overlay.count, 0);
  assert_null(tly_overlay_find(&overlay, TLY_CF_USAGE, "k1", 2));
  tly_overlay_free(&overlay);
}

static int keep_used(const tly_account_t *account,
                     const tly_subject_row_t *row) {
  (void)account;
  return row->row.event_count > 0;
}

static void test_overlay_rows_stable_found_pruned(void **state) {
  (void)state;
  tly_overlay_t overlay;
  tly_overlay_init(&overlay);
  tly_overlay_entry_t *entry =
      tly_overlay_insert(&overlay, TLY_CF_ACCOUNTS, "s", 1);
  assert_non_null(entry);
  tly_subject_row_t *first = tly_overlay_row(entry, 100, "api_calls");
  assert_non_null(first);
  first->row.event_count = 1;
  char feature[32];
  for (int i = 0; i < 50; i++) { /* the row array grows; rows stay put */
    snprintf(feature, sizeof(feature), "f%d", i);
    tly_subject_row_t *row = tly_overlay_row(entry, 200, feature);
    assert_non_null(row);
    row->row.event_count = i % 2;
  }
  assert_int_equal(entry->row_count, 51);
  assert_ptr_equal(tly_overlay_row(entry, 100, "api_calls"), first);
  assert_int_equal(first->row.event_count, 1);
  /* Same feature, another cycle: another row. */
  assert_ptr_not_equal(tly_overlay_row(entry, 200, "api_calls"), first);
  assert_int_equal(entry->row_count, 52);
  /* A feature name that cannot be stored is refused, not truncated. */
  char long_name[TLY_CONFIG_NAME_MAX + 1];
  memset(long_name, 'x', TLY_CONFIG_NAME_MAX);
  long_name[TLY_CONFIG_NAME_MAX] = '\0';
  assert_null(tly_overlay_row(entry, 100, long_name));
  tly_overlay_prune_rows(entry, keep_used);
  assert_int_equal(entry->row_count, 26); /* api_calls@100 + 25 odd f%d */
  assert_ptr_equal(tly_overlay_row(entry, 100, "api_calls"), first);
  for (size_t i = 0; i < entry->row_count; i++)
    assert_int_equal(entry->rows[i]->row.event_count, 1);
  /* Each kept row is still found under its own name (its tag moved with
   * it); a pruned one comes back new. */
  for (int i = 1; i < 50; i += 2) {
    snprintf(feature, sizeof(feature), "f%d", i);
    tly_subject_row_t *row = tly_overlay_row(entry, 200, feature);
    assert_string_equal(row->feature, feature);
    assert_int_equal(row->row.event_count, 1);
  }
  assert_int_equal(entry->row_count, 26);
  assert_int_equal(tly_overlay_row(entry, 200, "f0")->row.event_count, 0);
  assert_int_equal(entry->row_count, 27);
  tly_overlay_free(&overlay);
}

static int keep_hour_odd(const tly_overlay_bucket_t *bucket, void *opaque) {
  (void)opaque;
  return bucket->bucket.hour % 2 != 0;
}

/* Buckets are found by hour and name among many (each compared by its tag
 * first: tly_overlay.h), has_hour answers from the tags, and pruning keeps
 * every tag beside its bucket. */
static void test_overlay_buckets_found_by_hour_and_name(void **state) {
  (void)state;
  tly_overlay_t overlay;
  tly_overlay_init(&overlay);
  tly_overlay_entry_t *entry =
      tly_overlay_insert(&overlay, TLY_CF_ACCOUNTS, "s", 1);
  assert_non_null(entry);
  tly_overlay_bucket_t *made[10][6];
  char name[32];
  for (int hour = 0; hour < 10; hour++)
    for (int f = 0; f < 6; f++) {
      snprintf(name, sizeof(name), "ai_tokens\x1fmodel\x1fm%d", f);
      made[hour][f] = tly_overlay_bucket(entry, hour - 5, name);
      assert_non_null(made[hour][f]);
      made[hour][f]->bucket.totals.quantity = hour * 10 + f;
    }
  assert_int_equal(entry->bucket_count, 60);
  for (int hour = 0; hour < 10; hour++)
    for (int f = 0; f < 6; f++) {
      snprintf(name, sizeof(name), "ai_tokens\x1fmodel\x1fm%d", f);
      tly_overlay_bucket_t *found = tly_overlay_bucket(entry, hour - 5, name);
      assert_ptr_equal(found, made[hour][f]);
      assert_int_equal(found->bucket.hour, hour - 5);
      assert_string_equal(found->bucket.feature, name);
      assert_int_equal(found->bucket.totals.quantity, hour * 10 + f);
    }
  assert_int_equal(entry->bucket_count, 60); /* nothing added by finding */
  assert_true(tly_overlay_has_hour(entry, -5));
  assert_true(tly_overlay_has_hour(entry, 4));
  assert_false(tly_overlay_has_hour(entry, 5));
  assert_false(tly_overlay_has_hour(entry, INT32_MIN));
  tly_overlay_prune_buckets(entry, keep_hour_odd, NULL);
  assert_int_equal(entry->bucket_count, 30); /* hours -5, -3, -1, 1, 3 */
  for (int hour = -5; hour < 5; hour++)
    assert_int_equal(tly_overlay_has_hour(entry, hour), hour % 2 != 0);
  for (int hour = 0; hour < 10; hour++) {
    if ((hour - 5) % 2 == 0)
      continue;
    for (int f = 0; f < 6; f++) {
      snprintf(name, sizeof(name), "ai_tokens\x1fmodel\x1fm%d", f);
      assert_ptr_equal(tly_overlay_bucket(entry, hour - 5, name),
                       made[hour][f]);
    }
  }
  /* A pruned hour's bucket comes back new and zeroed. */
  tly_overlay_bucket_t *again = tly_overlay_bucket(entry, 0, "api_calls");
  assert_non_null(again);
  assert_int_equal(again->bucket.totals.quantity, 0);
  assert_int_equal(entry->bucket_count, 31);
  assert_true(tly_overlay_has_hour(entry, 0));
  tly_overlay_free(&overlay);
}

static int keep_no_row(const tly_account_t *account,
                       const tly_subject_row_t *row) {
  (void)account, (void)row;
  return 0;
}

static int keep_no_bucket(const tly_overlay_bucket_t *bucket, void *opaque) {
  (void)bucket, (void)opaque;
  return 0;
}

/* A row and a bucket take their name's bytes, not the name's room (the
 * name is last and allocated up to its NUL): counted so, written and read
 * back whole beside their neighbours (under AddressSanitizer each is an
 * allocation of that size, so a write past it fails the test), and given
 * back when pruned. Read marks are counted only once a subject has some. */
static void test_overlay_rows_buckets_take_their_names(void **state) {
  (void)state;
  tly_overlay_t overlay;
  tly_overlay_init(&overlay);
  tly_overlay_entry_t *entry =
      tly_overlay_insert(&overlay, TLY_CF_ACCOUNTS, "s", 1);
  assert_non_null(entry);
  size_t base = tly_overlay_entry_bytes(entry);
  tly_subject_row_t *row = tly_overlay_row(entry, 7, "api_calls");
  assert_non_null(row);
  size_t row_size = offsetof(tly_subject_row_t, feature) + sizeof("api_calls");
  assert_int_equal(tly_overlay_entry_bytes(entry), base + row_size);
  assert_true(row_size < sizeof(tly_subject_row_t));
  const char *group = "ai_tokens\x1fmodel\x1fgpt-4o";
  tly_overlay_bucket_t *bucket = tly_overlay_bucket(entry, 3, group);
  assert_non_null(bucket);
  size_t bucket_size =
      offsetof(tly_overlay_bucket_t, bucket.feature) + strlen(group) + 1;
  assert_int_equal(bucket->size, bucket_size);
  assert_int_equal(tly_overlay_entry_bytes(entry),
                   base + row_size + bucket_size);
  assert_true(bucket_size * 2 < sizeof(tly_overlay_bucket_t));
  /* The longest names fit; one byte more is refused. */
  char longest[TLY_BUCKET_NAME_MAX + 1];
  memset(longest, 'b', sizeof(longest));
  longest[TLY_BUCKET_NAME_MAX] = '\0';
  assert_null(tly_overlay_bucket(entry, 3, longest));
  longest[TLY_BUCKET_NAME_MAX - 1] = '\0';
  tly_overlay_bucket_t *widest = tly_overlay_bucket(entry, 3, longest);
  assert_non_null(widest);
  assert_int_equal(widest->size, sizeof(tly_overlay_bucket_t));
  char longest_row[TLY_CONFIG_NAME_MAX + 1];
  memset(longest_row, 'r', sizeof(longest_row));
  longest_row[TLY_CONFIG_NAME_MAX] = '\0';
  assert_null(tly_overlay_row(entry, 7, longest_row));
  longest_row[TLY_CONFIG_NAME_MAX - 1] = '\0';
  assert_non_null(tly_overlay_row(entry, 7, longest_row));
  /* Many neighbours, every field written, then every one read back. */
  char name[32];
  for (int i = 0; i < 40; i++) {
    snprintf(name, sizeof(name), "f%d", i);
    tly_subject_row_t *r = tly_overlay_row(entry, 100 + i, name);
    tly_overlay_bucket_t *b = tly_overlay_bucket(entry, 100 + i, name);
    assert_non_null(r);
    assert_non_null(b);
    r->row = (tly_billing_row_t){i, i + 1, i + 2, i + 3, i + 4, 5, 1, i + 6};
    b->bucket.totals = (tly_bucket_t){i, i + 1, i + 2, i + 3, i + 4};
    b->dirty = 1;
    b->flushed = (uint64_t)i;
  }
  for (int i = 0; i < 40; i++) {
    snprintf(name, sizeof(name), "f%d", i);
    tly_subject_row_t *r = tly_overlay_row(entry, 100 + i, name);
    tly_overlay_bucket_t *b = tly_overlay_bucket(entry, 100 + i, name);
    assert_string_equal(r->feature, name);
    assert_int_equal(r->row.latest_at_ms, i + 6);
    assert_int_equal(r->row.quantity, i);
    assert_string_equal(b->bucket.feature, name);
    assert_int_equal(b->bucket.totals.cost_micros, i + 4);
    assert_int_equal(b->flushed, (uint64_t)i);
  }
  assert_int_equal(row->row.quantity, 0);
  assert_string_equal(bucket->bucket.feature, group);
  /* Pruned: back to the bare entry and the pointer arrays it grew (42
   * rows and 43 buckets outgrew the 8 kept inline: 64 of each, a pointer
   * and a tag). */
  tly_overlay_prune_rows(entry, keep_no_row);
  tly_overlay_prune_buckets(entry, keep_no_bucket, NULL);
  assert_int_equal(entry->row_count, 0);
  assert_int_equal(entry->bucket_count, 0);
  assert_int_equal(entry->row_cap, 64);
  assert_int_equal(entry->bucket_cap, 64);
  base += 2 * 64 * (sizeof(void *) + sizeof(uint64_t));
  assert_int_equal(tly_overlay_entry_bytes(entry), base);
  /* Read marks: none until the subject has some. */
  assert_null(entry->read_marks);
  entry->read_marks = calloc(1, sizeof(*entry->read_marks));
  assert_non_null(entry->read_marks);
  assert_int_equal(tly_overlay_entry_bytes(entry),
                   base + sizeof(tly_read_marks_t));
  assert_true(sizeof(tly_account_t) < 400); /* the fold copies it twice */
  tly_overlay_free(&overlay);               /* frees the marks too */
}

static int keep_dirty(tly_overlay_entry_t *entry) { return entry->dirty; }

/* n entries k<i>, each with (i % 4) rows and (i % 3) buckets, counted as
 * the processor counts a loaded entry; every 5th one dirty. */
static void fill_overlay(tly_overlay_t *overlay, int n) {
  char key[32];
  for (int i = 0; i < n; i++) {
    int len = snprintf(key, sizeof(key), "k%d", i);
    tly_overlay_entry_t *entry =
        tly_overlay_insert(overlay, TLY_CF_ACCOUNTS, key, (size_t)len);
    assert_non_null(entry);
    for (int r = 0; r < i % 4; r++)
      assert_non_null(tly_overlay_row(entry, r, "api_calls"));
    for (int b = 0; b < i % 3; b++)
      assert_non_null(tly_overlay_bucket(entry, b, "api_calls"));
    entry->account.cycle.events = i;
    entry->dirty = i % 5 == 0;
    tly_overlay_account(overlay, entry);
  }
}

/* Every entry still in the table is found by its key at its address with
 * its own contents, and the running total equals a walk. */
static int overlay_consistent(tly_overlay_t *overlay, int n) {
  char key[32];
  size_t found = 0;
  for (int i = 0; i < n; i++) {
    int len = snprintf(key, sizeof(key), "k%d", i);
    tly_overlay_entry_t *entry =
        tly_overlay_find(overlay, TLY_CF_ACCOUNTS, key, (size_t)len);
    if (!entry)
      continue;
    found++;
    if (entry->account.cycle.events != i || entry->row_count != (size_t)(i % 4))
      return 0;
  }
  return found == overlay->count &&
         tly_overlay_bytes(overlay) == tly_overlay_bytes_walked(overlay);
}

static void test_overlay_bytes_counted_as_changed(void **state) {
  (void)state;
  tly_overlay_t overlay;
  tly_overlay_init(&overlay);
  fill_overlay(&overlay, 3000);
  assert_true(overlay_consistent(&overlay, 3000));
  size_t before = tly_overlay_bytes(&overlay);
  /* A change is counted when the entry is accounted again (after its
   * write), not before. */
  tly_overlay_entry_t *entry =
      tly_overlay_find(&overlay, TLY_CF_ACCOUNTS, "k7", 2);
  assert_non_null(tly_overlay_row(entry, 99, "more"));
  assert_int_equal(tly_overlay_bytes(&overlay), before);
  tly_overlay_account(&overlay, entry);
  assert_true(tly_overlay_bytes(&overlay) > before);
  assert_int_equal(tly_overlay_bytes(&overlay),
                   tly_overlay_bytes_walked(&overlay));
  tly_overlay_reset(&overlay);
  assert_int_equal(tly_overlay_bytes(&overlay),
                   tly_overlay_bytes_walked(&overlay));
  tly_overlay_free(&overlay);
}

static void test_overlay_evict_clock(void **state) {
  (void)state;
  char key[32];
  tly_overlay_t overlay;
  tly_overlay_init(&overlay);
  fill_overlay(&overlay, 20000);
  size_t full = tly_overlay_bytes(&overlay);
  /* Down to half: the bound is met, no dirty entry goes, every entry left
   * is still found (the backward shift kept the probe chains whole). */
  size_t evicted = tly_overlay_evict(&overlay, full / 2, SIZE_MAX, keep_dirty);
  assert_true(evicted > 0);
  assert_int_equal(overlay.count, 20000 - evicted);
  assert_true(tly_overlay_bytes(&overlay) <= full / 2);
  assert_true(overlay_consistent(&overlay, 20000));
  for (int i = 0; i < 20000; i += 5) {
    int len = snprintf(key, sizeof(key), "k%d", i);
    assert_non_null(
        tly_overlay_find(&overlay, TLY_CF_ACCOUNTS, key, (size_t)len));
  }
  /* A count bound: exactly as many as asked. */
  size_t count = overlay.count;
  assert_int_equal(
      tly_overlay_evict(&overlay, SIZE_MAX, count - 10, keep_dirty), 10);
  assert_true(overlay_consistent(&overlay, 20000));
  /* Nothing may go but clean entries: asked for 0 bytes, the dirty fifth
   * stays (after two turns of the hand), and only it. */
  tly_overlay_evict(&overlay, 0, 0, keep_dirty);
  assert_int_equal(overlay.count, 4000);
  assert_true(overlay_consistent(&overlay, 20000));
  for (int i = 0; i < 20000; i += 5) {
    int len = snprintf(key, sizeof(key), "k%d", i);
    tly_overlay_entry_t *entry =
        tly_overlay_find(&overlay, TLY_CF_ACCOUNTS, key, (size_t)len);
    assert_non_null(entry);
    assert_int_equal(entry->dirty, 1);
  }
  /* The table takes new keys after evictions (no tombstones left). */
  assert_non_null(tly_overlay_insert(&overlay, TLY_CF_ACCOUNTS, "k1", 2));
  assert_int_equal(overlay.count, 4001);
  tly_overlay_free(&overlay);
}

/* A second chance is given once: an entry referenced before a sweep
 * survives the first turn of the hand, a clean unreferenced one does
 * not. */
static void test_overlay_evict_second_chance(void **state) {
  (void)state;
  tly_overlay_t overlay;
  tly_overlay_init(&overlay);
  tly_overlay_entry_t *a =
      tly_overlay_insert(&overlay, TLY_CF_ACCOUNTS, "a", 1);
  tly_overlay_entry_t *b =
      tly_overlay_insert(&overlay, TLY_CF_ACCOUNTS, "b", 1);
  assert_non_null(a);
  assert_non_null(b);
  assert_ptr_equal(tly_overlay_find(&overlay, TLY_CF_ACCOUNTS, "a", 1), a);
  assert_int_equal(a->referenced, 1);
  assert_int_equal(b->referenced, 0);
  assert_int_equal(tly_overlay_evict(&overlay, SIZE_MAX, 1, keep_dirty), 1);
  assert_ptr_equal(tly_overlay_find(&overlay, TLY_CF_ACCOUNTS, "a", 1), a);
  assert_null(tly_overlay_find(&overlay, TLY_CF_ACCOUNTS, "b", 1));
  tly_overlay_free(&overlay);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_outbox_round_trip),
      cmocka_unit_test(test_outbox_placement_round_trip),
      cmocka_unit_test(test_outbox_rejects_too_many_headers),
      cmocka_unit_test(test_overlay_insert_find_grow_reset),
      cmocka_unit_test(test_overlay_rows_stable_found_pruned),
      cmocka_unit_test(test_overlay_buckets_found_by_hour_and_name),
      cmocka_unit_test(test_overlay_rows_buckets_take_their_names),
      cmocka_unit_test(test_overlay_bytes_counted_as_changed),
      cmocka_unit_test(test_overlay_evict_clock),
      cmocka_unit_test(test_overlay_evict_second_chance),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
