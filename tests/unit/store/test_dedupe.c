/*
 * test_dedupe.c - the event id index over per-batch blobs: lookups compare
 * whole ids, a blob round-trips through its stored bytes, expiry forgets
 * only whole blobs whose newest id is older than the horizon, and a newer
 * record of an id survives the expiry of an older one. A sealed blob holds
 * only what it stores (a commit per event must not cost kilobytes per id).
 */
#include "tly_dedupe.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static int has(const tly_dedupe_t *dedupe, const char *id, int64_t *at) {
  int64_t ignored;
  return tly_dedupe_lookup(dedupe, id, strlen(id), at ? at : &ignored);
}

static void test_record_lookup_and_blob_round_trip(void **state) {
  (void)state;
  tly_dedupe_t *dedupe = tly_dedupe_new();
  char id[32];
  size_t len = 0;
  int64_t at = 0;
  assert_null(tly_dedupe_open_blob(dedupe, &len));
  for (int i = 0; i < 10000; i++) { /* grows the table several times */
    snprintf(id, sizeof(id), "evt-%d", i);
    assert_int_equal(tly_dedupe_record(dedupe, id, strlen(id), 1000 + i), 0);
  }
  assert_int_equal(tly_dedupe_count(dedupe), 10000);
  for (int i = 0; i < 10000; i++) {
    snprintf(id, sizeof(id), "evt-%d", i);
    assert_true(has(dedupe, id, &at));
    assert_int_equal(at, 1000 + i);
  }
  /* Whole ids: a prefix, an extension and an embedded NUL are other ids. */
  assert_false(has(dedupe, "evt-1000x", NULL));
  assert_false(has(dedupe, "evt-", NULL));
  assert_int_equal(tly_dedupe_lookup(dedupe, "evt-1\0", 6, &at), 0);

  const void *blob = tly_dedupe_open_blob(dedupe, &len);
  assert_non_null(blob);
  size_t blob_len = len;
  unsigned char *copy = malloc(blob_len);
  memcpy(copy, blob, blob_len);
  tly_dedupe_seal(dedupe, 0);
  assert_null(tly_dedupe_open_blob(dedupe, &len)); /* nothing new since */

  /* A new index loaded from the stored bytes answers the same. */
  tly_dedupe_t *loaded = tly_dedupe_new();
  assert_int_equal(tly_dedupe_load(loaded, 0, copy, blob_len), 0);
  assert_int_equal(tly_dedupe_count(loaded), 10000);
  assert_true(has(loaded, "evt-9999", &at));
  assert_int_equal(at, 1000 + 9999);
  assert_false(has(loaded, "evt-10000", NULL));

  /* Malformed blobs are refused: every truncation, and a wrong count. */
  for (size_t cut = 0; cut < 40; cut++) {
    tly_dedupe_t *bad = tly_dedupe_new();
    assert_int_equal(tly_dedupe_load(bad, 0, copy, cut), -1);
    tly_dedupe_free(bad);
  }
  copy[11] ^= 1;
  tly_dedupe_t *bad = tly_dedupe_new();
  assert_int_equal(tly_dedupe_load(bad, 0, copy, blob_len), -1);
  tly_dedupe_free(bad);

  free(copy);
  tly_dedupe_free(loaded);
  tly_dedupe_free(dedupe);
}

static void test_expiry_is_by_whole_blob_and_keeps_newer_records(void **state) {
  (void)state;
  tly_dedupe_t *dedupe = tly_dedupe_new();
  /* Blob 1: ids at 100..199, one of them re-recorded later. */
  char id[32];
  for (int i = 0; i < 100; i++) {
    snprintf(id, sizeof(id), "a%d", i);
    assert_int_equal(tly_dedupe_record(dedupe, id, strlen(id), 100 + i), 0);
  }
  tly_dedupe_seal(dedupe, 0);
  /* Blob 2: ids at 300..399 and a newer record of "a5". */
  for (int i = 0; i < 100; i++) {
    snprintf(id, sizeof(id), "b%d", i);
    assert_int_equal(tly_dedupe_record(dedupe, id, strlen(id), 300 + i), 0);
  }
  assert_int_equal(tly_dedupe_record(dedupe, "a5", 2, 350), 0);
  tly_dedupe_seal(dedupe, 0);
  assert_int_equal(tly_dedupe_blobs(dedupe), 2);
  assert_int_equal(tly_dedupe_count(dedupe), 200);

  int64_t at = 0;
  tly_dedupe_expire(dedupe, 199); /* blob 1's newest is 199: not older */
  assert_int_equal(tly_dedupe_blobs(dedupe), 2);
  assert_true(has(dedupe, "a0", NULL));

  tly_dedupe_expire(dedupe, 200); /* now it is */
  assert_int_equal(tly_dedupe_blobs(dedupe), 1);
  assert_false(has(dedupe, "a0", NULL));
  assert_false(has(dedupe, "a99", NULL));
  assert_true(has(dedupe, "a5", &at)); /* its newer record lives on */
  assert_int_equal(at, 350);
  for (int i = 0; i < 100; i++) {
    snprintf(id, sizeof(id), "b%d", i);
    assert_true(has(dedupe, id, NULL));
  }
  assert_int_equal(tly_dedupe_count(dedupe), 101);

  /* The open blob is never expired, whatever its times. */
  assert_int_equal(tly_dedupe_record(dedupe, "c", 1, 1), 0);
  tly_dedupe_expire(dedupe, INT64_MAX);
  assert_int_equal(tly_dedupe_blobs(dedupe), 1);
  assert_true(has(dedupe, "c", NULL));
  assert_false(has(dedupe, "b0", NULL));
  assert_int_equal(tly_dedupe_count(dedupe), 1);
  tly_dedupe_free(dedupe);
}

static void test_deletes_keep_every_other_id_reachable(void **state) {
  (void)state;
  /* Many small blobs expiring one by one exercise the backward-shift
   * deletion across probe runs: every id not yet expired must stay
   * findable after every expiry. */
  tly_dedupe_t *dedupe = tly_dedupe_new();
  char id[32];
  for (int blob = 0; blob < 200; blob++) {
    for (int i = 0; i < 37; i++) {
      snprintf(id, sizeof(id), "%d/%d", blob, i);
      assert_int_equal(tly_dedupe_record(dedupe, id, strlen(id), blob), 0);
    }
    tly_dedupe_seal(dedupe, 0);
  }
  for (int horizon = 1; horizon <= 200; horizon += 7) {
    tly_dedupe_expire(dedupe, horizon);
    for (int blob = 0; blob < 200; blob++) {
      for (int i = 0; i < 37; i += 3) {
        snprintf(id, sizeof(id), "%d/%d", blob, i);
        assert_int_equal(has(dedupe, id, NULL), blob >= horizon);
      }
    }
    assert_int_equal(tly_dedupe_count(dedupe), (size_t)(200 - horizon) * 37);
  }
  tly_dedupe_free(dedupe);
}

static void test_refuses_ids_too_long_to_store(void **state) {
  (void)state;
  tly_dedupe_t *dedupe = tly_dedupe_new();
  size_t len = TLY_DEDUPE_ID_MAX + 1;
  char *id = malloc(len);
  memset(id, 'x', len);
  assert_int_equal(tly_dedupe_record(dedupe, id, len, 0), -1);
  assert_int_equal(tly_dedupe_record(dedupe, id, len - 1, 0), 0);
  int64_t at;
  assert_int_equal(tly_dedupe_lookup(dedupe, id, len - 1, &at), 1);
  free(id);
  tly_dedupe_free(dedupe);
}

/* Group commit seals a blob per commit: one id each here. Each sealed blob
 * costs its id and a small header, not the open blob's 4 KiB of room. */
static void test_sealed_blobs_hold_only_their_ids(void **state) {
  (void)state;
  tly_dedupe_t *dedupe = tly_dedupe_new();
  char id[32];
  int64_t at = 0;
  for (int i = 0; i < 1000; i++) {
    snprintf(id, sizeof(id), "evt-%d", i);
    assert_int_equal(tly_dedupe_record(dedupe, id, strlen(id), 1000 + i), 0);
    tly_dedupe_seal(dedupe, 0);
  }
  assert_int_equal(tly_dedupe_blobs(dedupe), 1000);
  assert_int_equal(tly_dedupe_count(dedupe), 1000);
  /* The table (2,048 slots of 24 bytes), and per blob its bookkeeping,
   * header and one record of about 18 bytes: well under 200 bytes. */
  size_t bytes = tly_dedupe_bytes(dedupe);
  fprintf(stderr, "1000 one-id blobs: %zu bytes\n", bytes);
  assert_true(bytes < 2048 * 24 + 1000 * 200);
  for (int i = 0; i < 1000; i++) { /* still found, where they moved to */
    snprintf(id, sizeof(id), "evt-%d", i);
    assert_true(has(dedupe, id, &at));
    assert_int_equal(at, 1000 + i);
  }
  /* Expiry walks the fitted blobs as before. */
  tly_dedupe_expire(dedupe, 1500);
  assert_int_equal(tly_dedupe_count(dedupe), 500);
  assert_false(has(dedupe, "evt-499", NULL));
  assert_true(has(dedupe, "evt-500", NULL));
  tly_dedupe_free(dedupe);
}

/* Spilling: the oldest sealed blobs are handed out in order (never the
 * open one), keep answering until released, then leave memory whole; the
 * byte count follows, the table shrinks, and a stub loads as nothing. */
static void test_spill_hands_out_oldest_blobs_and_releases_them(void **state) {
  (void)state;
  tly_dedupe_t *dedupe = tly_dedupe_new();
  char id[32];
  int64_t at = 0, key = -1;
  size_t len = 0;
  for (int b = 0; b < 10; b++) { /* 10 blobs of 1,000 ids, keys 100 * b */
    for (int i = 0; i < 1000; i++) {
      snprintf(id, sizeof(id), "evt-%d", b * 1000 + i);
      assert_int_equal(tly_dedupe_record(dedupe, id, strlen(id), b * 1000 + i),
                       0);
    }
    tly_dedupe_seal(dedupe, 100 * b);
  }
  assert_int_equal(tly_dedupe_record(dedupe, "open", 4, 99999), 0);
  size_t full = tly_dedupe_bytes(dedupe);
  for (int b = 0; b < 9; b++) {
    const void *blob = tly_dedupe_spill_next(dedupe, &len, &key);
    assert_non_null(blob);
    assert_int_equal(key, 100 * b);
    /* Its records, in order, as stored. */
    size_t pos = 0, id_len = 0, n = 0;
    const char *stored;
    while (tly_dedupe_blob_next(blob, len, &pos, &stored, &id_len, &at)) {
      snprintf(id, sizeof(id), "evt-%d", b * 1000 + (int)n);
      assert_int_equal(id_len, strlen(id));
      assert_memory_equal(stored, id, id_len);
      assert_int_equal(at, b * 1000 + (int)n);
      n++;
    }
    assert_int_equal(n, 1000);
  }
  /* The tenth is the last sealed one; the open blob is never handed out. */
  assert_non_null(tly_dedupe_spill_next(dedupe, &len, &key));
  assert_int_equal(key, 900);
  assert_null(tly_dedupe_spill_next(dedupe, &len, &key));
  /* Until released, every id still answers from memory. */
  assert_true(has(dedupe, "evt-0", &at));
  assert_true(has(dedupe, "evt-9999", &at));
  assert_int_equal(tly_dedupe_bytes(dedupe), full);
  assert_int_equal(tly_dedupe_release_spilled(dedupe), 10);
  assert_int_equal(tly_dedupe_count(dedupe), 1);
  assert_false(has(dedupe, "evt-0", NULL));
  assert_false(has(dedupe, "evt-9999", NULL));
  assert_true(has(dedupe, "open", &at));
  assert_int_equal(at, 99999);
  size_t left = tly_dedupe_bytes(dedupe);
  fprintf(stderr, "10,001 ids: %zu bytes; 1 id after spilling: %zu bytes\n",
          full, left);
  assert_true(left < 1024 * 24 + 4096 + 512); /* the table shrank back */
  /* A spilled blob's stub (count 0) loads as nothing; a spilled blob's
   * bytes, loaded back, answer again. */
  unsigned char stub[TLY_DEDUPE_BLOB_HEADER] = {0};
  tly_dedupe_t *loaded = tly_dedupe_new();
  assert_int_equal(tly_dedupe_load(loaded, 5, stub, sizeof(stub)), 0);
  assert_int_equal(tly_dedupe_count(loaded), 0);
  assert_int_equal(tly_dedupe_blobs(loaded), 0);
  tly_dedupe_free(loaded);
  tly_dedupe_free(dedupe);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_record_lookup_and_blob_round_trip),
      cmocka_unit_test(test_expiry_is_by_whole_blob_and_keeps_newer_records),
      cmocka_unit_test(test_deletes_keep_every_other_id_reachable),
      cmocka_unit_test(test_refuses_ids_too_long_to_store),
      cmocka_unit_test(test_sealed_blobs_hold_only_their_ids),
      cmocka_unit_test(test_spill_hands_out_oldest_blobs_and_releases_them),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
