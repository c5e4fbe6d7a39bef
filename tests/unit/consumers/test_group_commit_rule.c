/*
 * test_group_commit_rule.c - the group commit rule (tly_group_commit_decide):
 * records go to a free writer at once, whatever the round's time; a busy
 * writer or a backlog lets the batch grow; a full batch goes anyway; work
 * without records waits for the round's end and a free writer.
 */
#include "tly_group_commit.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

static tly_group_commit_in_t round_at(int64_t waited_ms) {
  return (tly_group_commit_in_t){.waited_ms = waited_ms, .round_ms = 100};
}

static void test_records_go_to_a_free_writer_at_once(void **state) {
  (void)state;
  for (int64_t waited = 0; waited <= 200; waited += 50) {
    tly_group_commit_in_t in = round_at(waited);
    in.records = 1;
    tly_group_commit_t next = tly_group_commit_decide(&in);
    assert_int_equal(next.done, 1);
    assert_int_equal(next.submit, 1);
  }
}

static void test_busy_writer_lets_the_batch_grow(void **state) {
  (void)state;
  /* Before and after the round's end alike: the writer's wake-up, not the
   * clock, closes the batch. */
  for (int64_t waited = 0; waited <= 300; waited += 150) {
    tly_group_commit_in_t in = round_at(waited);
    in.records = 1;
    in.writer_busy = 1;
    tly_group_commit_t next = tly_group_commit_decide(&in);
    assert_int_equal(next.done, 0);
    assert_int_equal(next.first_only, 0);
    assert_int_equal(next.wait_ms, 100);
  }
}

static void test_backlog_grows_until_full(void **state) {
  (void)state;
  tly_group_commit_in_t in = round_at(30);
  in.records = 1;
  in.behind = 1;
  tly_group_commit_t next = tly_group_commit_decide(&in);
  assert_int_equal(next.done, 0);
  assert_int_equal(next.wait_ms, 70); /* the rest of the round */
  in.waited_ms = 500;                 /* past it: short reads */
  next = tly_group_commit_decide(&in);
  assert_int_equal(next.done, 0);
  assert_int_equal(next.wait_ms, 1);
  in.full = 1;
  next = tly_group_commit_decide(&in);
  assert_int_equal(next.done, 1);
  assert_int_equal(next.submit, 1);
}

static void test_full_batch_goes_even_to_a_busy_writer(void **state) {
  (void)state;
  tly_group_commit_in_t in = round_at(0);
  in.records = 1;
  in.writer_busy = 1;
  in.full = 1;
  tly_group_commit_t next = tly_group_commit_decide(&in);
  assert_int_equal(next.done, 1);
  assert_int_equal(next.submit, 1);
}

static void test_empty_batch_waits_for_the_first_record(void **state) {
  (void)state;
  tly_group_commit_in_t in = round_at(40);
  tly_group_commit_t next = tly_group_commit_decide(&in);
  assert_int_equal(next.done, 0);
  assert_int_equal(next.first_only, 1);
  assert_int_equal(next.wait_ms, 60);
  in.writer_busy = 1; /* the same: its wake-up cuts the wait short */
  next = tly_group_commit_decide(&in);
  assert_int_equal(next.done, 0);
  assert_int_equal(next.first_only, 1);
  /* The round is over: it ends, with nothing to submit. */
  in = round_at(100);
  next = tly_group_commit_decide(&in);
  assert_int_equal(next.done, 1);
  assert_int_equal(next.submit, 0);
}

static void test_work_without_records_waits_for_the_round(void **state) {
  (void)state;
  tly_group_commit_in_t in = round_at(10);
  in.other_work = 1;
  tly_group_commit_t next = tly_group_commit_decide(&in);
  assert_int_equal(next.done, 0); /* deletes of acked outputs can wait */
  assert_int_equal(next.first_only, 1);
  in.waited_ms = 100;
  next = tly_group_commit_decide(&in);
  assert_int_equal(next.done, 1);
  assert_int_equal(next.submit, 1);
  in.writer_busy = 1; /* not worth waiting for the writer: next round */
  next = tly_group_commit_decide(&in);
  assert_int_equal(next.done, 1);
  assert_int_equal(next.submit, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_records_go_to_a_free_writer_at_once),
      cmocka_unit_test(test_busy_writer_lets_the_batch_grow),
      cmocka_unit_test(test_backlog_grows_until_full),
      cmocka_unit_test(test_full_batch_goes_even_to_a_busy_writer),
      cmocka_unit_test(test_empty_batch_waits_for_the_first_record),
      cmocka_unit_test(test_work_without_records_waits_for_the_round),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
