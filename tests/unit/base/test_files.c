/*
 * test_files.c - base/tly_files: the open-file limit is raised to the hard
 * one, and RocksDB's share of it grows with it (256 table files at 1,024,
 * as before; 4,096 at most) while everything else keeps its 256.
 */
#include "tly_files.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/resource.h>

#include <cmocka.h>

static void test_store_share_follows_the_limit(void **state) {
  (void)state;
  assert_int_equal(tly_files_store_tables(0), 256); /* unknown */
  assert_int_equal(tly_files_store_tables(64), 256);
  assert_int_equal(tly_files_store_tables(1024), 256);
  assert_int_equal(tly_files_store_tables(1026), 257);
  assert_int_equal(tly_files_store_tables(4096), 1792);
  assert_int_equal(tly_files_store_tables(8704), 4096);
  assert_int_equal(tly_files_store_tables(20000), 4096);
  assert_int_equal(tly_files_store_tables(UINT64_MAX), 4096);
  /* What HTTP connections may not take: the store's and 256 more. */
  assert_true(tly_files_reserved(1024) == 512);
  assert_true(tly_files_reserved(20000) == 4096 + 256);
  /* From 1,024 up HTTP connections keep at least half of the limit. */
  for (uint64_t limit = 1024; limit < 100000; limit += 97)
    assert_true(tly_files_reserved(limit) <= limit / 2);
}

static void test_raise_limit_takes_the_hard_limit(void **state) {
  (void)state;
  struct rlimit before;
  assert_int_equal(getrlimit(RLIMIT_NOFILE, &before), 0);
  if (before.rlim_max == RLIM_INFINITY || before.rlim_max < 64) {
    skip();
    return;
  }
  struct rlimit lowered = {.rlim_cur = 64, .rlim_max = before.rlim_max};
  assert_int_equal(setrlimit(RLIMIT_NOFILE, &lowered), 0);
  assert_true(tly_files_raise_limit() == (uint64_t)before.rlim_max);
  struct rlimit now;
  assert_int_equal(getrlimit(RLIMIT_NOFILE, &now), 0);
  assert_true(now.rlim_cur == before.rlim_max);
  /* Again: nothing changes. */
  assert_true(tly_files_raise_limit() == (uint64_t)before.rlim_max);
  assert_int_equal(setrlimit(RLIMIT_NOFILE, &before), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_store_share_follows_the_limit),
      cmocka_unit_test(test_raise_limit_takes_the_hard_limit),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
