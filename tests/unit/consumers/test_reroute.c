/*
 * test_reroute.c - where recovery looks for an outbox's forwards in the
 * input topic (tly_reroute_floors_add): only the destination partitions,
 * from the lowest scan start of the forwards to each.
 */
#include "tly_reroute.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static tly_outbox_record_t forward(const char *topic, int32_t partition,
                                   int64_t scan_from) {
  tly_outbox_record_t record = {0};
  record.topic = topic;
  record.topic_len = strlen(topic);
  record.partitioned = 1;
  record.partition = partition;
  record.scan_from = scan_from;
  return record;
}

static void test_floors_per_destination_partition(void **state) {
  (void)state;
  int64_t *floors = NULL;
  int32_t count = 0;
  tly_outbox_record_t records[] = {
      forward("tally.usage", 3, 120), forward("tally.usage", 3, 90),
      forward("tally.usage", 3, 400), forward("tally.usage", 5, 7),
      forward("tally.usage", 1, -1), /* scan start unknown: from 0 */
      forward("tally.other", 0, 5),  /* another topic: not a forward */
  };
  tly_outbox_record_t alert = {0}; /* unplaced: not a forward */
  alert.topic = "tally.usage";
  alert.topic_len = strlen(alert.topic);
  for (size_t i = 0; i < sizeof(records) / sizeof(records[0]); i++)
    assert_int_equal(
        tly_reroute_floors_add(&floors, &count, &records[i], "tally.usage"), 0);
  assert_int_equal(
      tly_reroute_floors_add(&floors, &count, &alert, "tally.usage"), 0);
  assert_int_equal(count, 6);
  assert_non_null(floors);
  assert_int_equal(floors[0], -1); /* nothing goes there: not read */
  assert_int_equal(floors[1], 0);
  assert_int_equal(floors[2], -1);
  assert_int_equal(floors[3], 90);
  assert_int_equal(floors[4], -1);
  assert_int_equal(floors[5], 7);
  free(floors);
}

static void test_no_forward_no_floors(void **state) {
  (void)state;
  int64_t *floors = NULL;
  int32_t count = 0;
  tly_outbox_record_t alert = {0};
  alert.topic = "tally.alerts";
  alert.topic_len = strlen(alert.topic);
  assert_int_equal(
      tly_reroute_floors_add(&floors, &count, &alert, "tally.usage"), 0);
  assert_null(floors);
  assert_int_equal(count, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_floors_per_destination_partition),
      cmocka_unit_test(test_no_forward_no_floors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
