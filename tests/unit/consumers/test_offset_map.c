/*
 * test_offset_map.c - the changelog readers' key -> highest offset map
 * (tly_offset_map.h), shared by the restore and the standby copies:
 *   - a key's first record is admitted, a newer one too, an older one
 *     never; with strict, the same offset again is refused, without it
 *     admitted (a standby re-reads a record after a retry);
 *   - 200,000 keys through many doublings: each remembers its own offset
 *     (checked against a plain array), the map stays at most half full;
 *   - clear forgets every key and keeps the arrays; free empties the map
 *     and it can be used again;
 *   - equal keys hash equal, a one-byte difference does not, the hash is
 *     never 0 (0 marks an empty slot).
 */
#include "tly_offset_map.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static uint64_t hash_of(const char *key) {
  return tly_offset_map_hash((const unsigned char *)key, strlen(key));
}

static void test_newest_wins(void **state) {
  (void)state;
  tly_offset_map_t map = {0};
  uint64_t k = hash_of("state/user:1");
  assert_int_equal(tly_offset_map_admit(&map, k, 10, 1), 1);
  assert_int_equal(tly_offset_map_admit(&map, k, 12, 1), 1);
  assert_int_equal(tly_offset_map_admit(&map, k, 11, 1), 0);
  assert_int_equal(tly_offset_map_admit(&map, k, 12, 1), 0);
  assert_int_equal(tly_offset_map_admit(&map, k, 12, 0), 1);
  assert_int_equal(tly_offset_map_admit(&map, k, 11, 0), 0);
  assert_int_equal(map.count, 1);
  tly_offset_map_free(&map);
  assert_null(map.hashes);
  assert_int_equal(map.cap, 0);
}

static void test_many_keys(void **state) {
  (void)state;
  enum { KEYS = 200000 };
  tly_offset_map_t map = {0};
  int64_t *want = malloc(KEYS * sizeof(*want));
  char key[32];
  for (int round = 0; round < 2; round++)
    for (int i = 0; i < KEYS; i++) {
      snprintf(key, sizeof(key), "k%d", i);
      int64_t offset = (int64_t)i * 3 + round;
      assert_int_equal(tly_offset_map_admit(&map, hash_of(key), offset, 1), 1);
      want[i] = offset;
    }
  assert_int_equal(map.count, KEYS);
  assert_true(map.count * 2 <= map.cap);
  for (int i = 0; i < KEYS; i++) {
    snprintf(key, sizeof(key), "k%d", i);
    /* Older than what it holds: refused; its own offset + 1: admitted. */
    assert_int_equal(tly_offset_map_admit(&map, hash_of(key), want[i] - 1, 0),
                     0);
    assert_int_equal(tly_offset_map_admit(&map, hash_of(key), want[i] + 1, 1),
                     1);
  }
  size_t cap = map.cap;
  tly_offset_map_clear(&map);
  assert_int_equal(map.count, 0);
  assert_int_equal(map.cap, cap);
  assert_int_equal(tly_offset_map_admit(&map, hash_of("k7"), 0, 1), 1);
  tly_offset_map_free(&map);
  assert_int_equal(tly_offset_map_admit(&map, hash_of("k7"), 0, 1), 1);
  tly_offset_map_free(&map);
  free(want);
}

static void test_hash(void **state) {
  (void)state;
  assert_true(hash_of("abc") == hash_of("abc"));
  assert_true(hash_of("abc") != hash_of("abd"));
  assert_true(tly_offset_map_hash(NULL, 0) != 0);
  for (int i = 0; i < 100000; i++) {
    char key[16];
    snprintf(key, sizeof(key), "%d", i);
    assert_true(hash_of(key) != 0);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_newest_wins),
      cmocka_unit_test(test_many_keys),
      cmocka_unit_test(test_hash),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
