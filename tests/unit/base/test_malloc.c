/*
 * test_malloc.c - base/tly_malloc: the GLIBC_TUNABLES value tally runs
 * with (huge pages for malloc added to what the operator set, never a
 * second time, never over the operator's own hugetlb setting).
 */
#include "tly_malloc.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

static void test_tunables(void **state) {
  (void)state;
  char out[128];
  assert_int_equal(tly_malloc_tunables(NULL, out, sizeof(out)), 1);
  assert_string_equal(out, "glibc.malloc.hugetlb=1");
  assert_int_equal(tly_malloc_tunables("", out, sizeof(out)), 1);
  assert_string_equal(out, "glibc.malloc.hugetlb=1");
  /* The operator's tunables are kept, ours added after them. */
  assert_int_equal(
      tly_malloc_tunables("glibc.malloc.arena_max=4", out, sizeof(out)), 1);
  assert_string_equal(out, "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1");
  /* Already named (the operator's choice, or the second run): left. */
  assert_int_equal(
      tly_malloc_tunables("glibc.malloc.hugetlb=0", out, sizeof(out)), 0);
  assert_int_equal(tly_malloc_tunables("glibc.malloc.arena_max=4:"
                                       "glibc.malloc.hugetlb=1",
                                       out, sizeof(out)),
                   0);
  /* No room: no value (the program runs on without). */
  char small[16];
  assert_int_equal(
      tly_malloc_tunables("glibc.malloc.arena_max=4", small, sizeof(small)), 0);
  assert_int_equal(tly_malloc_tunables(NULL, small, sizeof(small)), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_tunables)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
