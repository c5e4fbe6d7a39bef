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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_no_false_negatives_and_few_false_positives),
      cmocka_unit_test(test_slices_expire_whole_by_newest_time),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
