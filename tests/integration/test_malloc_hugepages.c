/*
 * test_malloc_hugepages.c - `tally broker` and `tally run` execute
 * themselves once more, the same process, with huge pages for malloc
 * (base/tly_malloc.h; README, "Huge pages for malloc"), with
 * glibc.malloc.hugetlb=1 added to the GLIBC_TUNABLES the operator set:
 * /metrics' tally_malloc_hugepages says 1, the process keeps its id and
 * its name, its environment (/proc/<pid>/environ) starts with the
 * operator's tunables, and it works (a broker that serves, a processor
 * that answers). TALLY_MALLOC_HUGEPAGES=0 and an operator's own hugetlb
 * setting leave it alone (0). Under AddressSanitizer (its own allocator)
 * and with transparent huge pages off, nothing is added.
 */
#define _GNU_SOURCE /* setenv */
#include "harness.h"

#include "tly_sanitize.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* tally adds the setting here: a plain build, THP not `never`. */
static int expect_added(void) {
  if (TLY_ADDRESS_SANITIZER)
    return 0;
  char *thp = th_read_file("/sys/kernel/mm/transparent_hugepage/enabled");
  int on = thp && !strstr(thp, "[never]");
  free(thp);
  return on;
}

/* GLIBC_TUNABLES in pid's environment as the kernel shows it (malloc'd),
 * or NULL without it. glibc, parsing it, ends each tunable's value with a
 * NUL in place, so this is the first tunable alone. */
static char *tunables_of(pid_t pid) {
  char path[64], buf[65536];
  snprintf(path, sizeof(path), "/proc/%d/environ", (int)pid);
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = '\0';
  for (size_t at = 0; at < n; at += strlen(buf + at) + 1)
    if (!strncmp(buf + at, "GLIBC_TUNABLES=", 15))
      return strdup(buf + at + 15);
  return NULL;
}

/* Starts `tally run` (and the broker it needs) with GLIBC_TUNABLES and
 * TALLY_MALLOC_HUGEPAGES as given (NULL: unset); checks what it runs with
 * (hugepages: tally_malloc_hugepages; first: the first tunable in its
 * environment, NULL for none), that it answers, and stops it. */
static void run_with(const char *tunables, const char *opt_out, int hugepages,
                     const char *first) {
  th_broker_t broker;
  assert_int_equal(th_broker_start(&broker, 2), 0);
  if (tunables)
    setenv("GLIBC_TUNABLES", tunables, 1);
  if (opt_out)
    setenv("TALLY_MALLOC_HUGEPAGES", opt_out, 1);
  char *dir = th_mkdtemp("hugepages");
  char state_dir[600];
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  th_run_t run;
  int started = th_run_start(&run, broker.bootstrap, state_dir, NULL);
  unsetenv("GLIBC_TUNABLES");
  unsetenv("TALLY_MALLOC_HUGEPAGES");
  assert_int_equal(started, 0);
  /* The same process (th_run_start's pid answers), the same name. */
  char comm_path[64], comm[64] = "";
  snprintf(comm_path, sizeof(comm_path), "/proc/%d/comm", (int)run.pid);
  FILE *f = fopen(comm_path, "r");
  assert_non_null(f);
  assert_non_null(fgets(comm, sizeof(comm), f));
  fclose(f);
  assert_string_equal(comm, "tally\n");
  char *seen = tunables_of(run.pid);
  if (first) {
    assert_non_null(seen);
    assert_string_equal(seen, first);
  } else {
    assert_null(seen);
  }
  free(seen);
  long status = 0;
  char *body = NULL;
  assert_int_equal(th_http_get(run.port, "/healthz", &status, &body), 0);
  assert_int_equal(status, 200);
  free(body);
  assert_int_equal(th_http_get(run.port, "/metrics", &status, &body), 0);
  assert_int_equal(status, 200);
  char sample[64];
  snprintf(sample, sizeof(sample), "\ntally_malloc_hugepages %d\n", hugepages);
  assert_non_null(strstr(body, sample));
  free(body);
  assert_int_equal(th_stop(run.pid), 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

static void test_added(void **state) {
  (void)state;
  int added = expect_added();
  run_with(NULL, NULL, added, added ? "glibc.malloc.hugetlb=1" : NULL);
  /* The operator's tunables kept, ours after them. */
  run_with("glibc.malloc.arena_max=4", NULL, added, "glibc.malloc.arena_max=4");
}

static void test_left_alone(void **state) {
  (void)state;
  run_with(NULL, "0", 0, NULL);
  run_with("glibc.malloc.arena_max=4", "0", 0, "glibc.malloc.arena_max=4");
  run_with("glibc.malloc.hugetlb=0", NULL, 0, "glibc.malloc.hugetlb=0");
}

/* The embedded broker too: it starts and serves (a processor folds from
 * it above); its environment has the setting. */
static void test_broker(void **state) {
  (void)state;
  unsetenv("GLIBC_TUNABLES");
  th_broker_t broker;
  assert_int_equal(th_broker_start(&broker, 2), 0);
  char *seen = tunables_of(broker.pid);
  if (expect_added()) {
    assert_non_null(seen);
    assert_string_equal(seen, "glibc.malloc.hugetlb=1");
  } else {
    assert_null(seen);
  }
  free(seen);
  th_broker_stop(&broker);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_added),
                                     cmocka_unit_test(test_left_alone),
                                     cmocka_unit_test(test_broker)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
