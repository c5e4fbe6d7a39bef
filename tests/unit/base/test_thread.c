/*
 * test_thread.c - base/tly_thread: helper threads lower their own
 * priority (nice TLY_THREAD_HELPER_NICE unless TALLY_HELPER_NICE says
 * otherwise, 0 turning it off), and only theirs: the thread that started
 * them keeps its own. Read back from the kernel (getpriority of the
 * thread's id), not from what the call returned.
 */
#define _GNU_SOURCE /* syscall */
#include "tly_thread.h"

#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cmocka.h>

static int nice_of(id_t tid) {
  errno = 0;
  int value = getpriority(PRIO_PROCESS, tid);
  assert_false(value == -1 && errno);
  return value;
}

typedef struct {
  int returned, read_back;
} helper_result_t;

static void *helper_main(void *arg) {
  helper_result_t *r = arg;
  r->returned = tly_thread_become_helper();
  r->read_back = nice_of((id_t)syscall(SYS_gettid));
  return NULL;
}

static helper_result_t run_helper(void) {
  helper_result_t r = {-2, -2};
  pthread_t thread;
  assert_int_equal(pthread_create(&thread, NULL, helper_main, &r), 0);
  assert_int_equal(pthread_join(thread, NULL), 0);
  return r;
}

static void test_the_setting(void **state) {
  (void)state;
  unsetenv("TALLY_HELPER_NICE");
  assert_int_equal(tly_thread_helper_nice(), TLY_THREAD_HELPER_NICE);
  setenv("TALLY_HELPER_NICE", "0", 1);
  assert_int_equal(tly_thread_helper_nice(), 0);
  setenv("TALLY_HELPER_NICE", "19", 1);
  assert_int_equal(tly_thread_helper_nice(), 19);
  /* Out of range or not a number: the default, never a negative nice
   * (which would raise a helper above the fold). */
  const char *bad[] = {"-5", "20", "ten", "5x", ""};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    setenv("TALLY_HELPER_NICE", bad[i], 1);
    assert_int_equal(tly_thread_helper_nice(), TLY_THREAD_HELPER_NICE);
  }
  unsetenv("TALLY_HELPER_NICE");
}

/* What tally run and dev check at startup: a bad value stops them, naming
 * the variable; unset, empty and 0..19 pass. */
static void test_the_startup_check(void **state) {
  (void)state;
  char errstr[256] = "";
  const char *good[] = {"0", "1", "10", "19", ""};
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
    setenv("TALLY_HELPER_NICE", good[i], 1);
    assert_int_equal(tly_thread_helper_nice_check(errstr, sizeof(errstr)), 0);
  }
  unsetenv("TALLY_HELPER_NICE");
  assert_int_equal(tly_thread_helper_nice_check(errstr, sizeof(errstr)), 0);
  const char *bad[] = {"-5", "20", "ten", "5x", " 5", "99999999999999999999"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    errstr[0] = '\0';
    setenv("TALLY_HELPER_NICE", bad[i], 1);
    assert_int_equal(tly_thread_helper_nice_check(errstr, sizeof(errstr)), -1);
    assert_non_null(strstr(errstr, "TALLY_HELPER_NICE"));
  }
  unsetenv("TALLY_HELPER_NICE");
}

static void test_a_helper_lowers_itself_only(void **state) {
  (void)state;
  id_t self = (id_t)syscall(SYS_gettid);
  int before = nice_of(self);
  if (before > TLY_THREAD_HELPER_NICE) {
    skip(); /* already below: raising a nice value needs privilege */
    return;
  }
  unsetenv("TALLY_HELPER_NICE");
  helper_result_t r = run_helper();
  assert_int_equal(r.returned, TLY_THREAD_HELPER_NICE);
  assert_int_equal(r.read_back, TLY_THREAD_HELPER_NICE);
  assert_int_equal(nice_of(self), before); /* the starter keeps its own */

  setenv("TALLY_HELPER_NICE", "15", 1);
  r = run_helper();
  assert_int_equal(r.read_back, 15);

  /* Off: the helper runs at the priority it was started with. */
  setenv("TALLY_HELPER_NICE", "0", 1);
  r = run_helper();
  assert_int_equal(r.returned, before);
  assert_int_equal(r.read_back, before);
  unsetenv("TALLY_HELPER_NICE");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_the_setting),
      cmocka_unit_test(test_the_startup_check),
      cmocka_unit_test(test_a_helper_lowers_itself_only),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
