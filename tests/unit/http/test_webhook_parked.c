/*
 * test_webhook_parked.c - a webhook endpoint's parked alerts and progress
 * (tly_webhook_parked.h): the offset that may be committed never passes a
 * parked alert (checked against a reference over random runs of take,
 * park and finish), the first attempt times round trip through the commit
 * metadata (and bad metadata is ignored), a partition given away forgets
 * its alerts, and the bound.
 */
#include "tly_webhook_parked.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static tly_webhook_parked_t item(int32_t partition, int64_t offset,
                                 int64_t first_ms) {
  tly_webhook_parked_t it = {.partition = partition,
                             .offset = offset,
                             .first_ms = first_ms,
                             .next_ms = first_ms + 100};
  char id[32];
  snprintf(id, sizeof(id), "alert-%d-%lld", (int)partition, (long long)offset);
  it.id = strdup(id);
  it.body = strdup("{}");
  return it;
}

static void test_commit_never_passes_a_parked_alert(void **state) {
  (void)state;
  tly_webhook_parked_set_t *set = calloc(1, sizeof(*set));
  assert_int_equal(tly_webhook_commit_offset(set, 0), -1); /* nothing yet */
  assert_int_equal(tly_webhook_taken(set, 0, 10), 0);
  assert_int_equal(tly_webhook_commit_offset(set, 0), 11);
  /* 11 fails: parked; 12 and 13 delivered after it. */
  tly_webhook_parked_t it = item(0, 11, 1000);
  assert_int_equal(tly_webhook_taken(set, 0, 11), 0);
  assert_int_equal(tly_webhook_park(set, &it), 0);
  assert_int_equal(tly_webhook_taken(set, 0, 12), 0);
  assert_int_equal(tly_webhook_taken(set, 0, 13), 0);
  assert_int_equal(tly_webhook_commit_offset(set, 0), 11);
  /* Another partition is not held back by it. */
  assert_int_equal(tly_webhook_taken(set, 1, 5), 0);
  assert_int_equal(tly_webhook_commit_offset(set, 1), 6);
  assert_int_equal(tly_webhook_next_due(set), 1100);
  /* Delivered at last: past everything taken. */
  tly_webhook_unpark(set, 0);
  assert_int_equal(tly_webhook_commit_offset(set, 0), 14);
  assert_int_equal(tly_webhook_next_due(set), INT64_MAX);
  tly_webhook_parked_clear(set);
  free(set);
}

/* Random runs against a reference: each record taken is finished now,
 * parked, or finished later; the commit offset is always the oldest record
 * not finished (or one past the last taken). */
static void test_commit_offset_against_a_reference(void **state) {
  (void)state;
  srand(18);
  for (int run = 0; run < 60; run++) {
    tly_webhook_parked_set_t *set = calloc(1, sizeof(*set));
    enum { N = 300, P = 3 };
    int finished[P][N] = {{0}};
    int64_t next[P] = {0};
    for (int step = 0; step < 600; step++) {
      int32_t p = rand() % P;
      int action = rand() % 3;
      if (action < 2 && next[p] < N) {
        int64_t offset = next[p]++;
        assert_int_equal(tly_webhook_taken(set, p, offset), 0);
        if (action == 0 || set->count >= TLY_WEBHOOK_PARKED_MAX) {
          finished[p][offset] = 1;
        } else {
          tly_webhook_parked_t it = item(p, offset, step);
          assert_int_equal(tly_webhook_park(set, &it), 0);
        }
      } else if (set->count) {
        size_t i = (size_t)rand() % set->count;
        finished[set->items[i].partition][set->items[i].offset] = 1;
        tly_webhook_unpark(set, i);
      }
      for (int32_t q = 0; q < P; q++) {
        int64_t want = -1;
        if (next[q]) {
          want = next[q];
          for (int64_t o = 0; o < next[q]; o++)
            if (!finished[q][o]) {
              want = o;
              break;
            }
        }
        assert_int_equal(tly_webhook_commit_offset(set, q), want);
      }
    }
    tly_webhook_parked_clear(set);
    free(set);
  }
}

static void test_first_attempts_round_trip_in_the_metadata(void **state) {
  (void)state;
  tly_webhook_parked_set_t *set = calloc(1, sizeof(*set));
  char metadata[TLY_WEBHOOK_METADATA_MAX];
  assert_int_equal(tly_webhook_taken(set, 2, 40), 0);
  size_t len = tly_webhook_metadata(set, 2, metadata, sizeof(metadata));
  assert_string_equal(metadata, "wh1");
  assert_int_equal(len, 3);
  tly_webhook_parked_t a = item(2, 7, 1796400000000LL);
  tly_webhook_parked_t b = item(2, 9, 1796400000500LL);
  tly_webhook_parked_t c = item(3, 1, 5);
  assert_int_equal(tly_webhook_park(set, &a), 0);
  assert_int_equal(tly_webhook_park(set, &b), 0);
  assert_int_equal(tly_webhook_park(set, &c), 0);
  len = tly_webhook_metadata(set, 2, metadata, sizeof(metadata));
  assert_string_equal(metadata, "wh1 7:1796400000000 9:1796400000500");
  uint64_t digest = tly_webhook_digest(metadata, len);
  /* Read back after a restart (a new set). */
  tly_webhook_parked_set_t *after = calloc(1, sizeof(*after));
  assert_int_equal(tly_webhook_load_hints(after, 2, metadata, len), 0);
  assert_int_equal(tly_webhook_hint(after, 2, 7), 1796400000000LL);
  assert_int_equal(tly_webhook_hint(after, 2, 9), 1796400000500LL);
  assert_int_equal(tly_webhook_hint(after, 2, 8), -1);
  assert_int_equal(tly_webhook_hint(after, 3, 7), -1);
  /* Anything else is ignored (no hint, no crash). */
  static const char *const bad[] = {
      "", "wh2 1:2", "wh1 x:2", "wh1 1:", "wh1 1", "wh1 -1:5", "wh1 1:2junk"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    assert_int_equal(tly_webhook_load_hints(after, 4, bad[i], strlen(bad[i])),
                     0);
    assert_int_equal(tly_webhook_hint(after, 4, 1), -1);
  }
  assert_int_equal(tly_webhook_load_hints(after, 4, NULL, 0), 0);
  /* The metadata changes with the parked set (a new commit is due). */
  tly_webhook_unpark(set, 0);
  len = tly_webhook_metadata(set, 2, metadata, sizeof(metadata));
  assert_string_equal(metadata, "wh1 9:1796400000500");
  assert_true(tly_webhook_digest(metadata, len) != digest);
  tly_webhook_parked_clear(set);
  tly_webhook_parked_clear(after);
  free(set);
  free(after);
}

static void test_bounds_and_partitions_given_away(void **state) {
  (void)state;
  tly_webhook_parked_set_t *set = calloc(1, sizeof(*set));
  for (int i = 0; i < TLY_WEBHOOK_PARKED_MAX; i++) {
    tly_webhook_parked_t it = item(i % 2, 1000000000000LL + i, 1796400000000LL);
    assert_int_equal(tly_webhook_taken(set, i % 2, it.offset), 0);
    assert_int_equal(tly_webhook_park(set, &it), 0);
  }
  tly_webhook_parked_t extra = item(0, 5, 0);
  assert_int_equal(tly_webhook_park(set, &extra), -1); /* full: not taken */
  free(extra.id);
  free(extra.body);
  /* The metadata stays within its bound, the largest offsets too. */
  char metadata[TLY_WEBHOOK_METADATA_MAX];
  size_t len = tly_webhook_metadata(set, 0, metadata, sizeof(metadata));
  assert_true(len < sizeof(metadata));
  assert_true(len < 4096);
  /* Partition 0 given away: its alerts and progress forgotten. */
  tly_webhook_drop_partition(set, 0);
  assert_int_equal(set->count, TLY_WEBHOOK_PARKED_MAX / 2);
  assert_int_equal(tly_webhook_commit_offset(set, 0), -1);
  for (size_t i = 0; i < set->count; i++)
    assert_int_equal(set->items[i].partition, 1);
  assert_int_equal(tly_webhook_commit_offset(set, 1), 1000000000000LL + 1);
  tly_webhook_parked_clear(set);
  free(set);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_commit_never_passes_a_parked_alert),
      cmocka_unit_test(test_commit_offset_against_a_reference),
      cmocka_unit_test(test_first_attempts_round_trip_in_the_metadata),
      cmocka_unit_test(test_bounds_and_partitions_given_away),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
