/*
 * test_dedupe_filter.c - the filter of spilled event ids: every id added
 * answers "look it up" (no false negative, across slices), new ids mostly
 * answer "surely new" (false positives of a few slices at ~0.8 % each), slices
 * grow with the ids held and are forgotten whole once the horizon passes
 * their newest id; memory stays near 1.5 bytes per id of room.
 */
#include "tly_dedupe_filter.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static size_t id_of(char *out, size_t size, const char *prefix, int i) {
  return (size_t)snprintf(out, size, "%s%012d", prefix, i);
}

static void test_no_false_negatives_and_few_false_positives(void **state) {
  (void)state;
  tly_dedupe_filter_t *filter = tly_dedupe_filter_new();
  char id[48];
  const int n = 300000; /* several slices: 4 Ki, then twice what is held */
  assert_int_equal(tly_dedupe_filter_maybe(filter, "x", 1), 0);
  for (int i = 0; i < n; i++) {
    size_t len = id_of(id, sizeof(id), "spilled-", i);
    assert_int_equal(tly_dedupe_filter_add(filter, id, len, 1000 + i), 0);
  }
  assert_int_equal(tly_dedupe_filter_count(filter), (size_t)n);
  for (int i = 0; i < n; i++) {
    size_t len = id_of(id, sizeof(id), "spilled-", i);
    assert_int_equal(tly_dedupe_filter_maybe(filter, id, len), 1);
  }
  int positives = 0;
  for (int i = 0; i < n; i++) {
    size_t len = id_of(id, sizeof(id), "new-", i);
    positives += tly_dedupe_filter_maybe(filter, id, len);
  }
  double rate = (double)positives / n;
  size_t bytes = tly_dedupe_filter_bytes(filter);
  fprintf(stderr, "%d ids: false positives %.3f %%, %zu bytes (%.2f per id)\n",
          n, rate * 100, bytes, (double)bytes / n);
  assert_true(rate < 0.03);           /* ~0.8 % per slice, a few slices */
  assert_true(bytes < (size_t)n * 4); /* room for at most ~3 x the ids */
  tly_dedupe_filter_free(filter);
}

static void test_slices_expire_whole_by_newest_time(void **state) {
  (void)state;
  tly_dedupe_filter_t *filter = tly_dedupe_filter_new();
  char id[48];
  /* Slices of 4,096, 8,192 and 24,576 ids (room for twice those held) at
   * times 0..36863, then one from 100000 on (open). */
  for (int i = 0; i < 36864; i++) {
    size_t len = id_of(id, sizeof(id), "a", i);
    assert_int_equal(tly_dedupe_filter_add(filter, id, len, i), 0);
  }
  for (int i = 0; i < 1000; i++) {
    size_t len = id_of(id, sizeof(id), "b", i);
    assert_int_equal(tly_dedupe_filter_add(filter, id, len, 100000 + i), 0);
  }
  size_t full = tly_dedupe_filter_bytes(filter);
  tly_dedupe_filter_expire(filter, 4095); /* the first's newest: not older */
  assert_int_equal(tly_dedupe_filter_count(filter), 37864);
  tly_dedupe_filter_expire(filter, 4096); /* the first slice goes whole */
  assert_int_equal(tly_dedupe_filter_count(filter), 37864 - 4096);
  size_t len = id_of(id, sizeof(id), "a", 5000);
  assert_int_equal(tly_dedupe_filter_maybe(filter, id, len), 1);
  tly_dedupe_filter_expire(filter, 36864); /* the next two as well */
  assert_int_equal(tly_dedupe_filter_count(filter), 1000);
  assert_true(tly_dedupe_filter_bytes(filter) < full);
  for (int i = 0; i < 1000; i++) { /* the newer slice still answers */
    len = id_of(id, sizeof(id), "b", i);
    assert_int_equal(tly_dedupe_filter_maybe(filter, id, len), 1);
  }
  /* The newest (open) slice is never forgotten, whatever its times. */
  tly_dedupe_filter_expire(filter, INT64_MAX);
  assert_int_equal(tly_dedupe_filter_count(filter), 1000);
  tly_dedupe_filter_free(filter);
}

/* A filter built off the fold thread is merged with the one the fold
 * filled meanwhile (tly_filter_build.c): every id of either answers "look
 * it up", later adds land after both, expiry still works per slice, and
 * past the slice bound or from a broken filter every id answers "look it
 * up" (never "surely new" for an id that was added). */
static void test_merge_keeps_every_id_of_both(void **state) {
  (void)state;
  tly_dedupe_filter_t *built = tly_dedupe_filter_new();
  tly_dedupe_filter_t *fold = tly_dedupe_filter_new();
  char id[48];
  for (int i = 0; i < 50000; i++) { /* several slices */
    size_t len = id_of(id, sizeof(id), "scanned-", i);
    assert_int_equal(tly_dedupe_filter_add(built, id, len, 1000), 0);
  }
  for (int i = 0; i < 5000; i++) {
    size_t len = id_of(id, sizeof(id), "folded-", i);
    assert_int_equal(tly_dedupe_filter_add(fold, id, len, 5000), 0);
  }
  tly_dedupe_filter_merge(built, fold); /* frees fold */
  assert_int_equal(tly_dedupe_filter_count(built), 55000);
  for (int i = 0; i < 50000; i++) {
    size_t len = id_of(id, sizeof(id), "scanned-", i);
    assert_int_equal(tly_dedupe_filter_maybe(built, id, len), 1);
  }
  for (int i = 0; i < 5000; i++) {
    size_t len = id_of(id, sizeof(id), "folded-", i);
    assert_int_equal(tly_dedupe_filter_maybe(built, id, len), 1);
  }
  int positives = 0;
  for (int i = 0; i < 50000; i++) {
    size_t len = id_of(id, sizeof(id), "new-", i);
    positives += tly_dedupe_filter_maybe(built, id, len);
  }
  assert_true(positives < 50000 / 20); /* still a filter, not "all maybe" */
  size_t len = id_of(id, sizeof(id), "later-", 1);
  assert_int_equal(tly_dedupe_filter_add(built, id, len, 9000), 0);
  assert_int_equal(tly_dedupe_filter_maybe(built, id, len), 1);
  /* The scanned slices (newest 1000) go; the fold's and the later stay. */
  tly_dedupe_filter_expire(built, 2000);
  assert_int_equal(tly_dedupe_filter_count(built), 5001);
  len = id_of(id, sizeof(id), "folded-", 7);
  assert_int_equal(tly_dedupe_filter_maybe(built, id, len), 1);
  tly_dedupe_filter_free(built);

  /* Past the slice bound: everything "look it up". */
  tly_dedupe_filter_t *a = tly_dedupe_filter_new();
  for (int k = 0; k < 40; k++) { /* 32 slices at most */
    tly_dedupe_filter_t *b = tly_dedupe_filter_new();
    len = id_of(id, sizeof(id), "b-", k);
    assert_int_equal(tly_dedupe_filter_add(b, id, len, 1), 0);
    tly_dedupe_filter_add(a, id, len, 1);
    tly_dedupe_filter_merge(a, b);
  }
  for (int i = 0; i < 100; i++) {
    len = id_of(id, sizeof(id), "never-", i);
    assert_int_equal(tly_dedupe_filter_maybe(a, id, len), 1);
  }
  tly_dedupe_filter_free(a);
}

/* A filter read back from its bytes answers as the one that wrote them:
 * every id added "look it up", the same "surely new" answers for others,
 * the same count and expiry; bytes that are not a filter are refused. */
static void test_encode_decode_round_trip(void **state) {
  (void)state;
  tly_dedupe_filter_t *filter = tly_dedupe_filter_new();
  char id[48];
  const int n = 20000; /* three slices */
  for (int i = 0; i < n; i++) {
    size_t len = id_of(id, sizeof(id), "kept-", i);
    assert_int_equal(tly_dedupe_filter_add(filter, id, len, 1000 + i), 0);
  }
  unsigned char *bytes = NULL;
  size_t len = 0;
  assert_int_equal(tly_dedupe_filter_encode(filter, 0, &bytes, &len), 0);
  tly_dedupe_filter_t *back = tly_dedupe_filter_decode(bytes, len);
  assert_non_null(back);
  assert_int_equal(tly_dedupe_filter_count(back), (size_t)n);
  assert_int_equal(tly_dedupe_filter_bytes(back),
                   tly_dedupe_filter_bytes(filter));
  for (int i = 0; i < n; i++) {
    size_t id_len = id_of(id, sizeof(id), "kept-", i);
    assert_int_equal(tly_dedupe_filter_maybe(back, id, id_len), 1);
  }
  int differ = 0, positives = 0;
  for (int i = 0; i < n; i++) {
    size_t id_len = id_of(id, sizeof(id), "other-", i);
    int answer = tly_dedupe_filter_maybe(back, id, id_len);
    differ += answer != tly_dedupe_filter_maybe(filter, id, id_len);
    positives += answer;
  }
  assert_int_equal(differ, 0);
  assert_true(positives < n / 20);
  /* Still a filter: more ids go in, and slices expire by their times. */
  assert_int_equal(tly_dedupe_filter_add(back, "late", 4, 5000000), 0);
  assert_int_equal(tly_dedupe_filter_maybe(back, "late", 4), 1);
  tly_dedupe_filter_expire(back, 1000 + n);
  assert_true(tly_dedupe_filter_count(back) < (size_t)n);

  /* Damaged or foreign bytes are refused, never half read. */
  assert_null(tly_dedupe_filter_decode(bytes, len - 1));
  assert_null(tly_dedupe_filter_decode(bytes, 10));
  unsigned char *copy = malloc(len + 1);
  assert_non_null(copy);
  memcpy(copy, bytes, len);
  copy[len] = 0;
  assert_null(tly_dedupe_filter_decode(copy, len + 1)); /* trailing byte */
  copy[0] = 'X';                                        /* another format */
  assert_null(tly_dedupe_filter_decode(copy, len));
  memcpy(copy, bytes, len);
  copy[4] ^= 0xff; /* another byte order */
  assert_null(tly_dedupe_filter_decode(copy, len));
  memcpy(copy, bytes, len);
  copy[17] ^= 0x01; /* the first slice's capacity: its blocks disagree */
  assert_null(tly_dedupe_filter_decode(copy, len));
  free(copy);
  free(bytes);
  tly_dedupe_filter_free(back);
  tly_dedupe_filter_free(filter);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_no_false_negatives_and_few_false_positives),
      cmocka_unit_test(test_slices_expire_whole_by_newest_time),
      cmocka_unit_test(test_merge_keeps_every_id_of_both),
      cmocka_unit_test(test_encode_decode_round_trip),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
