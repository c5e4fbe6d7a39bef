/*
 * test_slab.c - base/tly_slab: the overlay's objects and the big tables
 * on huge pages. Objects come back zeroed, never overlap, are reused after
 * a free; a purge gives back only pages no live object touches, and a
 * live object keeps every byte; a block keeps its contents across growing
 * and shrinking, across the 2 MiB line in both directions; a growing slab
 * has chunks faulted in ahead, and gives them back when purged.
 */
#define _GNU_SOURCE /* RUSAGE_THREAD */
#include "tly_slab.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include <sys/mman.h>
#include <sys/resource.h>

static int all_zero(const unsigned char *at, size_t len) {
  for (size_t i = 0; i < len; i++)
    if (at[i])
      return 0;
  return 1;
}

static int compare_pointers(const void *a, const void *b) {
  uintptr_t x = (uintptr_t) * (void *const *)a,
            y = (uintptr_t) * (void *const *)b;
  return (x > y) - (x < y);
}

/* Resident bytes of this process (statm), in pages of 4 KiB. */
static long resident_pages(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  long size = 0, resident = 0;
  if (!f)
    return -1;
  if (fscanf(f, "%ld %ld", &size, &resident) != 2)
    resident = -1;
  fclose(f);
  return resident;
}

static void test_objects_zeroed_apart_and_reused(void **state) {
  (void)state;
  tly_slab_t *slab = tly_slab_new();
  assert_non_null(slab);
  /* The overlay's three sizes and a few others, each class its own. */
  const size_t sizes[] = {1, 17, 144, 240, 255, 257, 1000, 1336, 2528, 4096};
  enum { EACH = 3000 };
  const size_t kinds = sizeof(sizes) / sizeof(sizes[0]);
  void **objects = calloc(kinds * EACH, sizeof(void *));
  assert_non_null(objects);
  for (size_t k = 0; k < kinds; k++) {
    for (size_t i = 0; i < EACH; i++) {
      unsigned char *o = tly_slab_alloc(slab, sizes[k]);
      assert_non_null(o);
      assert_true(all_zero(o, sizes[k]));
      memset(o, (int)(k + 1), sizes[k]);
      objects[k * EACH + i] = o;
    }
  }
  /* No two overlap: sorted, each ends before the next begins. */
  void **sorted = malloc(kinds * EACH * sizeof(void *));
  assert_non_null(sorted);
  memcpy(sorted, objects, kinds * EACH * sizeof(void *));
  qsort(sorted, kinds * EACH, sizeof(void *), compare_pointers);
  for (size_t i = 0; i + 1 < kinds * EACH; i++) {
    const unsigned char *o = sorted[i];
    size_t k = (size_t)o[0] - 1; /* what it was filled with names its kind */
    assert_true(k < kinds);
    assert_true((uintptr_t)o + sizes[k] <= (uintptr_t)sorted[i + 1]);
  }
  /* Every byte still as written: no allocation wrote into another. */
  for (size_t k = 0; k < kinds; k++)
    for (size_t i = 0; i < EACH; i++) {
      const unsigned char *o = objects[k * EACH + i];
      for (size_t b = 0; b < sizes[k]; b++)
        assert_int_equal(o[b], (int)(k + 1));
    }
  /* Freed, then asked again: the same memory, zeroed again. */
  unsigned char *first = objects[3 * EACH];
  tly_slab_free(slab, first, sizes[3]);
  unsigned char *again = tly_slab_alloc(slab, sizes[3]);
  assert_true(all_zero(again, sizes[3]));
  if (tly_slab_mapped(slab)) /* not under AddressSanitizer (malloc) */
    assert_ptr_equal(again, first);
  objects[3 * EACH] = again;
  for (size_t k = 0; k < kinds; k++)
    for (size_t i = 0; i < EACH; i++)
      tly_slab_free(slab, objects[k * EACH + i], sizes[k]);
  /* Past the largest class: calloc and free. */
  unsigned char *big = tly_slab_alloc(slab, TLY_SLAB_MAX + 1);
  assert_non_null(big);
  assert_true(all_zero(big, TLY_SLAB_MAX + 1));
  tly_slab_free(slab, big, TLY_SLAB_MAX + 1);
  assert_null(tly_slab_alloc(slab, 0));
  free(sorted);
  free(objects);
  tly_slab_destroy(slab);
}

static void test_purge_gives_back_free_pages_only(void **state) {
  (void)state;
  tly_slab_t *slab = tly_slab_new();
  assert_non_null(slab);
  enum { COUNT = 60000, SIZE = 240 }; /* 14 MB: a bucket's size */
  unsigned char **objects = calloc(COUNT, sizeof(*objects));
  assert_non_null(objects);
  for (size_t i = 0; i < COUNT; i++) {
    objects[i] = tly_slab_alloc(slab, SIZE);
    assert_non_null(objects[i]);
    memset(objects[i], (int)(i % 251) + 1, SIZE);
  }
  if (!tly_slab_mapped(slab)) { /* AddressSanitizer: malloc, no pages */
    for (size_t i = 0; i < COUNT; i++)
      tly_slab_free(slab, objects[i], SIZE);
    assert_int_equal(tly_slab_purge(slab), 0);
    free(objects);
    tly_slab_destroy(slab);
    skip();
  }
  /* Free the first three quarters whole, and every other object of the
   * last quarter: no page of that quarter is free of live objects. */
  for (size_t i = 0; i < COUNT; i++)
    if (i < COUNT / 4 * 3 || i % 2)
      tly_slab_free(slab, objects[i], SIZE);
  long before = resident_pages();
  size_t given = tly_slab_purge(slab);
  long after = resident_pages();
  size_t freed_bytes = (size_t)COUNT / 4 * 3 * SIZE;
  /* Nearly all of the free three quarters went back (a page at each
   * chunk's edges may hold one live and one free object); the resident
   * size fell by about as much. */
  assert_true(given >= freed_bytes - freed_bytes / 20);
  assert_true(given <= freed_bytes + 2 * (size_t)TLY_HUGE_PAGE);
  assert_true(before - after >= (long)(freed_bytes / 4096 / 2));
  /* Every live object intact. */
  for (size_t i = COUNT / 4 * 3; i < COUNT; i += 2)
    for (size_t b = 0; b < SIZE; b++)
      assert_int_equal(objects[i][b], (int)(i % 251) + 1);
  /* Objects on given-back pages come back zeroed and usable. */
  for (size_t i = 0; i < COUNT / 2; i++) {
    unsigned char *o = tly_slab_alloc(slab, SIZE);
    assert_non_null(o);
    assert_true(all_zero(o, SIZE));
    memset(o, 0x5a, SIZE);
    tly_slab_free(slab, o, SIZE);
  }
  for (size_t i = COUNT / 4 * 3; i < COUNT; i += 2)
    assert_int_equal(objects[i][SIZE - 1], (int)(i % 251) + 1);
  free(objects);
  tly_slab_destroy(slab);
}

static void fill(unsigned char *at, size_t len) {
  for (size_t i = 0; i < len; i++)
    at[i] = (unsigned char)(i * 7 + i / 4096);
}

static int filled(const unsigned char *at, size_t len) {
  for (size_t i = 0; i < len; i++)
    if (at[i] != (unsigned char)(i * 7 + i / 4096))
      return 0;
  return 1;
}

/* Huge pages are in use (not AddressSanitizer's malloc). */
static int huge_pages_on(void) {
  tly_slab_t *slab = tly_slab_new();
  void *object = tly_slab_alloc(slab, 64);
  int on = tly_slab_mapped(slab) > 0;
  tly_slab_free(slab, object, 64);
  tly_slab_destroy(slab);
  return on;
}

static void test_blocks_keep_contents_across_sizes(void **state) {
  (void)state;
  const size_t mib = (size_t)1 << 20;
  unsigned char *block = tly_huge_alloc(3 * mib); /* huge */
  assert_non_null(block);
  assert_true(all_zero(block, 3 * mib));
  fill(block, 3 * mib);
  block = tly_huge_realloc(block, 3 * mib, 9 * mib); /* huge -> huge */
  assert_non_null(block);
  assert_true(filled(block, 3 * mib));
  fill(block, 9 * mib);
  block = tly_huge_realloc(block, 9 * mib, mib / 2); /* huge -> malloc */
  assert_non_null(block);
  assert_true(filled(block, mib / 2));
  block = tly_huge_realloc(block, mib / 2, mib); /* malloc -> malloc */
  assert_non_null(block);
  assert_true(filled(block, mib / 2));
  fill(block, mib);
  block = tly_huge_realloc(block, mib, 5 * mib); /* malloc -> huge */
  assert_non_null(block);
  assert_true(filled(block, mib));
  tly_huge_free(block, 5 * mib);
  /* A block that cannot grow in place (a page mapped right after it)
   * moves, keeping its bytes and a 2 MiB boundary. */
  block = tly_huge_alloc(3 * mib);
  assert_non_null(block);
  fill(block, 3 * mib);
  void *guard = MAP_FAILED;
  if (huge_pages_on()) {
    assert_int_equal((uintptr_t)block % TLY_HUGE_PAGE, 0);
    guard = mmap(block + 4 * mib, 4096, PROT_NONE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    assert_true(guard == block + 4 * mib);
  }
  unsigned char *moved = tly_huge_realloc(block, 3 * mib, 11 * mib);
  assert_non_null(moved);
  assert_true(filled(moved, 3 * mib));
  if (guard != MAP_FAILED) {
    assert_ptr_not_equal(moved, block);
    assert_int_equal((uintptr_t)moved % TLY_HUGE_PAGE, 0);
    munmap(guard, 4096);
  }
  assert_true(all_zero(moved + 4 * mib, 7 * mib)); /* grown: zero */
  fill(moved, 11 * mib);
  assert_true(filled(moved, 11 * mib));
  tly_huge_free(moved, 11 * mib);
  unsigned char *small = tly_huge_alloc(1000);
  assert_non_null(small);
  assert_true(all_zero(small, 1000));
  tly_huge_free(small, 1000);
  unsigned char *fresh = tly_huge_realloc(NULL, 0, 4 * mib);
  assert_non_null(fresh);
  assert_true(all_zero(fresh, 4 * mib));
  tly_huge_free(fresh, 4 * mib);
  tly_huge_free(NULL, 4 * mib); /* nothing */
}

/* A slab past 8 chunks has chunks faulted in ahead by its helper (an
 * eighth of those in use); they count as mapped, come out zeroed and
 * resident, and a purge gives them back. */
static void test_chunks_faulted_in_ahead(void **state) {
  (void)state;
  if (!huge_pages_on()) { /* AddressSanitizer: malloc, no chunks */
    skip();
    return;
  }
  tly_slab_t *slab = tly_slab_new();
  assert_non_null(slab);
  enum { PER_CHUNK = 512, CHUNKS = 24 }; /* objects of 4,096 bytes */
  void **objects = calloc(PER_CHUNK * (CHUNKS + 4), sizeof(void *));
  assert_non_null(objects);
  memset(objects, 0, PER_CHUNK * (CHUNKS + 4) * sizeof(void *)); /* faulted */
  size_t count = 0;
  for (; count < PER_CHUNK * CHUNKS; count++) {
    objects[count] = tly_slab_alloc(slab, 4096);
    assert_non_null(objects[count]);
    memset(objects[count], 0xab, 4096);
  }
  const size_t in_use = CHUNKS * TLY_HUGE_PAGE;
  size_t mapped = 0;
  for (int waited = 0; waited < 500; waited++) { /* up to 5 s */
    if ((mapped = tly_slab_mapped(slab)) == in_use + 3 * TLY_HUGE_PAGE)
      break;
    struct timespec pause = {0, 10 * 1000 * 1000};
    nanosleep(&pause, NULL);
  }
  assert_int_equal(mapped, in_use + 3 * TLY_HUGE_PAGE); /* 24 / 8 ahead */
  /* The next chunk's objects come from the pool: zero, and their pages
   * already there: writing all of them takes this thread no page fault
   * (one, or 512, for a chunk faulted in on first use). */
  struct rusage before, after;
  getrusage(RUSAGE_THREAD, &before);
  for (size_t i = 0; i < PER_CHUNK; i++, count++) {
    objects[count] = tly_slab_alloc(slab, 4096);
    assert_non_null(objects[count]);
    assert_true(all_zero(objects[count], 4096));
    memset(objects[count], 0xcd, 4096);
  }
  getrusage(RUSAGE_THREAD, &after);
  assert_int_equal(after.ru_minflt - before.ru_minflt, 0);
  /* Idle: the chunks held ahead go back, the live ones stay. */
  size_t given = tly_slab_purge(slab);
  assert_true(given >= 2 * TLY_HUGE_PAGE);
  assert_int_equal(tly_slab_mapped(slab), in_use + TLY_HUGE_PAGE);
  for (size_t i = 0; i < count; i++) {
    unsigned char *o = objects[i];
    assert_int_equal(o[0], i < PER_CHUNK * CHUNKS ? 0xab : 0xcd);
    assert_int_equal(o[4095], i < PER_CHUNK * CHUNKS ? 0xab : 0xcd);
    tly_slab_free(slab, o, 4096);
  }
  free(objects);
  tly_slab_destroy(slab); /* joins the helper */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_chunks_faulted_in_ahead),
      cmocka_unit_test(test_objects_zeroed_apart_and_reused),
      cmocka_unit_test(test_purge_gives_back_free_pages_only),
      cmocka_unit_test(test_blocks_keep_contents_across_sizes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
