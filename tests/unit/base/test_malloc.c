/*
 * test_malloc.c - base/tly_malloc: the GLIBC_TUNABLES value tally runs
 * with (huge pages for malloc added to what the operator set, never a
 * second time, never over the operator's own hugetlb setting), and the cap
 * on malloc's arenas (never over the operator's own; effective: sixteen
 * threads allocating at once share at most TLY_MALLOC_ARENAS arenas).
 */
#define _GNU_SOURCE /* open_memstream, setenv */
#include "tly_malloc.h"

#include "tly_sanitize.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__ /* (defined by the headers above) */
#include <malloc.h>
#endif

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

#if !TLY_ADDRESS_SANITIZER && defined(__GLIBC__)
#define THREADS 16
static pthread_barrier_t all_allocated;

/* Allocates while every other thread holds an allocation too (each thread
 * that meets a busy arena would make a new one, up to the cap). */
static void *allocate(void *arg) {
  (void)arg;
  /* Written through, or the compiler drops the malloc/free pair. */
  char *volatile block = malloc(4096);
  assert_non_null(block);
  block[0] = 1;
  pthread_barrier_wait(&all_allocated);
  free(block);
  return NULL;
}

/* The arenas malloc_info reports (the main one is heap 0). */
static int arena_count(void) {
  char *text = NULL;
  size_t len = 0;
  FILE *out = open_memstream(&text, &len);
  assert_non_null(out);
  assert_int_equal(malloc_info(0, out), 0);
  fclose(out);
  int count = 0;
  for (const char *at = text; (at = strstr(at, "<heap nr=")); at++)
    count++;
  free(text);
  return count;
}
#endif

static void test_arenas(void **state) {
  (void)state;
#if TLY_ADDRESS_SANITIZER || !defined(__GLIBC__)
  assert_int_equal(tly_malloc_arenas(), 0); /* its own allocator */
#else
  /* The operator's choice stands. */
  setenv("MALLOC_ARENA_MAX", "2", 1);
  assert_int_equal(tly_malloc_arenas(), 0);
  unsetenv("MALLOC_ARENA_MAX");
  const char *saved = getenv("GLIBC_TUNABLES");
  char *copy = saved ? strdup(saved) : NULL;
  setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1:glibc.malloc.arena_max=8",
         1);
  assert_int_equal(tly_malloc_arenas(), 0);
  assert_int_equal(tly_malloc_arena_cap(), 0);
  if (copy)
    setenv("GLIBC_TUNABLES", copy, 1);
  else
    unsetenv("GLIBC_TUNABLES");
  free(copy);
  if (saved && strstr(saved, "glibc.malloc.arena_max"))
    return; /* this run's own environment chose */
  assert_int_equal(tly_malloc_arenas(), TLY_MALLOC_ARENAS);
  assert_int_equal(tly_malloc_arena_cap(), TLY_MALLOC_ARENAS);
  /* Effective: sixteen threads allocating at once. */
  pthread_t threads[THREADS];
  pthread_barrier_init(&all_allocated, NULL, THREADS);
  for (int i = 0; i < THREADS; i++)
    assert_int_equal(pthread_create(&threads[i], NULL, allocate, NULL), 0);
  for (int i = 0; i < THREADS; i++)
    pthread_join(threads[i], NULL);
  pthread_barrier_destroy(&all_allocated);
  int arenas = arena_count();
  printf("# %d arenas after %d threads allocated at once\n", arenas, THREADS);
  assert_true(arenas >= 1 && arenas <= TLY_MALLOC_ARENAS);
#endif
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_tunables),
                                     cmocka_unit_test(test_arenas)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
