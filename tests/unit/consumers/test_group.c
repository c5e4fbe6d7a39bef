/*
 * test_group.c - the processor's group membership rules (tly_group.h):
 *   - an instance id (group.instance.id) follows Kafka's rule: 1 to 127
 *     bytes (tally's bound; Kafka allows 249) of A-Z a-z 0-9 . _ -, not
 *     "." or "..";
 *   - the store's membership mark round-trips (none, joined, left);
 *   - the process age comes from /proc and grows with the clock.
 */
#include "tly_group.h"

#include "tly_log.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

static void test_instance_id_rule(void **state) {
  (void)state;
  char errstr[256], id[TLY_GROUP_INSTANCE_ID_MAX + 2];
  const char *good[] = {"tally-1", "a", "A.b_c-9", "..."};
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
    if (tly_group_instance_id_check(good[i], errstr, sizeof(errstr)))
      fail_msg("'%s' refused: %s", good[i], errstr);
  const char *bad[] = {"",    ".",           "..",    "host:8080", "tally 1",
                       "a/b", "caf\xc3\xa9", "tab\t", "new\nline"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    if (!tly_group_instance_id_check(bad[i], errstr, sizeof(errstr)))
      fail_msg("'%s' accepted", bad[i]);
  assert_int_equal(tly_group_instance_id_check(NULL, errstr, sizeof(errstr)),
                   -1);
  /* The bound, exactly. */
  memset(id, 'x', TLY_GROUP_INSTANCE_ID_MAX);
  id[TLY_GROUP_INSTANCE_ID_MAX] = '\0';
  assert_int_equal(tly_group_instance_id_check(id, errstr, sizeof(errstr)), 0);
  id[TLY_GROUP_INSTANCE_ID_MAX] = 'x';
  id[TLY_GROUP_INSTANCE_ID_MAX + 1] = '\0';
  assert_int_equal(tly_group_instance_id_check(id, errstr, sizeof(errstr)), -1);
  assert_non_null(strstr(errstr, "127"));
}

static void test_membership_mark(void **state) {
  (void)state;
  char errstr[512], dir[] = "/tmp/tally-test-group-XXXXXX";
  assert_non_null(mkdtemp(dir));
  tly_store_t *store = tly_store_open(dir, 0, errstr, sizeof(errstr));
  assert_non_null(store);
  tly_group_mark_t mark = TLY_GROUP_MARK_LEFT;
  assert_int_equal(tly_group_mark_read(store, &mark, errstr, sizeof(errstr)),
                   0);
  assert_int_equal(mark, TLY_GROUP_MARK_NONE);
  const tly_group_mark_t marks[] = {TLY_GROUP_MARK_JOINED, TLY_GROUP_MARK_LEFT,
                                    TLY_GROUP_MARK_JOINED, TLY_GROUP_MARK_NONE};
  for (size_t i = 0; i < sizeof(marks) / sizeof(marks[0]); i++) {
    assert_int_equal(
        tly_group_mark_write(store, marks[i], errstr, sizeof(errstr)), 0);
    assert_int_equal(tly_group_mark_read(store, &mark, errstr, sizeof(errstr)),
                     0);
    assert_int_equal(mark, marks[i]);
  }
  /* It survives a reopen (a restart reads what the last run wrote). */
  assert_int_equal(tly_group_mark_write(store, TLY_GROUP_MARK_JOINED, errstr,
                                        sizeof(errstr)),
                   0);
  tly_store_close(store);
  store = tly_store_open(dir, 0, errstr, sizeof(errstr));
  assert_non_null(store);
  assert_int_equal(tly_group_mark_read(store, &mark, errstr, sizeof(errstr)),
                   0);
  assert_int_equal(mark, TLY_GROUP_MARK_JOINED);
  tly_store_close(store);
  char command[128];
  snprintf(command, sizeof(command), "rm -rf %s", dir);
  assert_int_equal(system(command), 0);
}

static void test_process_age(void **state) {
  (void)state;
  int64_t first = tly_group_process_age_ms();
  assert_true(first >= 0);
  assert_true(first < 600000); /* this test process started just now */
  struct timespec pause = {0, 300 * 1000000L};
  nanosleep(&pause, NULL);
  int64_t second = tly_group_process_age_ms();
  /* /proc counts in clock ticks (10 ms here): allow for the rounding. */
  assert_true(second - first >= 250);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_instance_id_rule),
      cmocka_unit_test(test_membership_mark),
      cmocka_unit_test(test_process_age),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
