/*
 * test_store.c - unit tests of store/tly_store.c against a real RocksDB.
 *
 * Each test gets a fresh directory from mkdtemp() under /tmp (removed in the
 * teardown) and opens the database in a "db" subdirectory, so creation of a
 * missing database is exercised every time. Besides the API contract these
 * tests carry the store's share of the exactly-once guarantee (DESIGN.md,
 * "Exactly-once"): a commit is all or nothing, survives reopening, survives
 * SIGKILL once acknowledged, and the fault injection the processor's tests
 * rely on fails exactly the commits it was asked to.
 *
 * The crash test runs its writer as a separate process: this binary re-execs
 * itself with --crash-child, rather than using RocksDB in a forked child of a
 * process whose RocksDB background threads do not survive the fork.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tly_store.h"

typedef struct {
  char root[64];
  char db[96];
} fixture_t;

/* Removes a directory tree (RocksDB's layout is flat, but be general). */
static void remove_tree(const char *path) {
  DIR *dir = opendir(path);
  if (dir != NULL) {
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
      if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
        continue;
      char child[4096];
      snprintf(child, sizeof(child), "%s/%s", path, entry->d_name);
      struct stat st;
      if (lstat(child, &st) == 0 && S_ISDIR(st.st_mode))
        remove_tree(child);
      else
        unlink(child);
    }
    closedir(dir);
  }
  rmdir(path);
}

static int setup(void **state) {
  fixture_t *fx = calloc(1, sizeof(*fx));
  if (fx == NULL)
    return -1;
  snprintf(fx->root, sizeof(fx->root), "/tmp/tly-store-test-XXXXXX");
  if (mkdtemp(fx->root) == NULL) {
    free(fx);
    return -1;
  }
  snprintf(fx->db, sizeof(fx->db), "%s/db", fx->root);
  *state = fx;
  return 0;
}

static int teardown(void **state) {
  fixture_t *fx = *state;
  remove_tree(fx->root);
  free(fx);
  return 0;
}

static tly_store_t *open_or_fail(const char *dir, int read_only) {
  char errstr[512] = "";
  tly_store_t *store = tly_store_open(dir, read_only, errstr, sizeof(errstr));
  if (store == NULL)
    fail_msg("tly_store_open(%s): %s", dir, errstr);
  return store;
}

static void commit_or_fail(tly_store_t *store, tly_store_batch_t *batch,
                           int sync) {
  char errstr[512] = "";
  if (tly_store_commit(store, batch, sync, errstr, sizeof(errstr)) != 0)
    fail_msg("tly_store_commit: %s", errstr);
}

static void put_str(tly_store_batch_t *batch, tly_cf_t cf, const char *key,
                    const char *value) {
  tly_store_batch_put(batch, cf, key, strlen(key), value, strlen(value));
}

/* The value of key, NUL-terminated by tly_store_get(); NULL when absent.
 * Free with tly_store_free(). */
static char *get_str(tly_store_t *store, tly_cf_t cf, const char *key) {
  char errstr[512] = "";
  char *value = (char *)1;
  size_t len = 99;
  int rc = tly_store_get(store, cf, key, strlen(key), &value, &len, errstr,
                         sizeof(errstr));
  if (rc < 0)
    fail_msg("tly_store_get(%s): %s", key, errstr);
  if (rc == 0) {
    assert_null(value);
    assert_int_equal(len, 0);
    return NULL;
  }
  assert_non_null(value);
  assert_int_equal(strlen(value), len);
  return value;
}

static void assert_value(tly_store_t *store, tly_cf_t cf, const char *key,
                         const char *expected) {
  char *value = get_str(store, cf, key);
  if (expected == NULL) {
    assert_null(value);
    return;
  }
  assert_non_null(value);
  assert_string_equal(value, expected);
  tly_store_free(value);
}

static int64_t get_offset_or_fail(tly_store_t *store, int32_t partition,
                                  int *found) {
  char errstr[512] = "";
  int64_t offset = -12345;
  int rc =
      tly_store_get_offset(store, partition, &offset, errstr, sizeof(errstr));
  if (rc < 0)
    fail_msg("tly_store_get_offset(%d): %s", (int)partition, errstr);
  *found = rc;
  return offset;
}

static void test_be_helpers(void **state) {
  (void)state;
  unsigned char buf[8];
  tly_put_be32(buf, 0x01020304u);
  assert_memory_equal(buf, "\x01\x02\x03\x04", 4);
  assert_int_equal(tly_get_be32(buf), 0x01020304u);
  tly_put_be32(buf, UINT32_MAX);
  assert_int_equal(tly_get_be32(buf), UINT32_MAX);

  tly_put_be64(buf, 0x0102030405060708ull);
  assert_memory_equal(buf, "\x01\x02\x03\x04\x05\x06\x07\x08", 8);
  assert_true(tly_get_be64(buf) == 0x0102030405060708ull);
  tly_put_be64(buf, UINT64_MAX);
  assert_true(tly_get_be64(buf) == UINT64_MAX);
  tly_put_be64(buf, 0);
  assert_true(tly_get_be64(buf) == 0);

  /* Big-endian keys sort like the numbers, which range scans rely on. */
  unsigned char a[4], b[4];
  tly_put_be32(a, 255);
  tly_put_be32(b, 256);
  assert_true(memcmp(a, b, 4) < 0);
}

static void test_cf_names(void **state) {
  (void)state;
  assert_string_equal(tly_store_cf_name(TLY_CF_USAGE), "usage");
  assert_string_equal(tly_store_cf_name(TLY_CF_OFFSETS), "offsets");
  assert_string_equal(tly_store_cf_name(TLY_CF_OUTBOX), "outbox");
  assert_string_equal(tly_store_cf_name(TLY_CF_META), "meta");
  assert_string_equal(tly_store_cf_name(TLY_CF_REPORTS), "reports");
  assert_string_equal(tly_store_cf_name(TLY_CF_CURSORS), "stripe_cursors");
  assert_null(tly_store_cf_name(TLY_CF__COUNT));
}

static void test_open_close_reopen(void **state) {
  fixture_t *fx = *state;
  tly_store_t *store = open_or_fail(fx->db, 0);
  tly_store_batch_t *batch = tly_store_batch_new();
  assert_non_null(batch);
  put_str(batch, TLY_CF_META, "hello", "world");
  commit_or_fail(store, batch, 1);
  assert_value(store, TLY_CF_META, "hello", "world");
  tly_store_close(store);

  store = open_or_fail(fx->db, 0);
  assert_value(store, TLY_CF_META, "hello", "world");
  /* Same key, other family: families are separate key spaces. */
  assert_value(store, TLY_CF_USAGE, "hello", NULL);
  tly_store_close(store);

  /* And once more, so a database reopened after recovery reopens too. */
  store = open_or_fail(fx->db, 0);
  assert_value(store, TLY_CF_META, "hello", "world");
  tly_store_close(store);
  tly_store_batch_destroy(batch);
}

static void test_batch_count_clear_and_empty_commit(void **state) {
  fixture_t *fx = *state;
  tly_store_t *store = open_or_fail(fx->db, 0);
  tly_store_batch_t *batch = tly_store_batch_new();
  assert_int_equal(tly_store_batch_count(batch), 0);
  commit_or_fail(store, batch, 1); /* empty: a no-op that succeeds */

  put_str(batch, TLY_CF_USAGE, "a", "1");
  tly_store_batch_delete(batch, TLY_CF_USAGE, "b", 1);
  tly_store_batch_set_offset(batch, 3, 42);
  assert_int_equal(tly_store_batch_count(batch), 3);
  tly_store_batch_clear(batch);
  assert_int_equal(tly_store_batch_count(batch), 0);
  commit_or_fail(store, batch, 0);
  assert_value(store, TLY_CF_USAGE, "a", NULL); /* cleared, never written */

  /* Committing does not clear: the same batch can be committed again. */
  put_str(batch, TLY_CF_USAGE, "a", "1");
  commit_or_fail(store, batch, 0);
  assert_int_equal(tly_store_batch_count(batch), 1);
  assert_value(store, TLY_CF_USAGE, "a", "1");

  /* Empty keys and values are legal RocksDB entries and must read back as
   * present, not absent. */
  tly_store_batch_clear(batch);
  tly_store_batch_put(batch, TLY_CF_META, "empty", 5, "", 0);
  tly_store_batch_put(batch, TLY_CF_META, "", 0, "k0", 2);
  commit_or_fail(store, batch, 0);
  assert_value(store, TLY_CF_META, "empty", "");
  assert_value(store, TLY_CF_META, "", "k0");

  tly_store_batch_destroy(batch);
  tly_store_close(store);
}

/* A put written in place (put_open, put_close): the value is what was
 * written, cut to the length closed with; a put opened and never closed
 * is not in the batch (the next operation takes its place); room far
 * larger than the buffer so far grows it, earlier operations intact. */
static void test_batch_put_in_place(void **state) {
  fixture_t *fx = *state;
  tly_store_t *store = open_or_fail(fx->db, 0);
  tly_store_batch_t *batch = tly_store_batch_new();
  put_str(batch, TLY_CF_USAGE, "before", "b");
  unsigned char *at =
      tly_store_batch_put_open(batch, TLY_CF_USAGE, "k1", 2, 64);
  assert_non_null(at);
  memcpy(at, "in place, then cut", 18);
  tly_store_batch_put_close(batch, 8);
  /* Opened, written, abandoned: the next put goes where it was. */
  at = tly_store_batch_put_open(batch, TLY_CF_USAGE, "dropped", 7, 16);
  assert_non_null(at);
  memcpy(at, "never", 5);
  put_str(batch, TLY_CF_USAGE, "after", "a");
  /* Room of 8 MB: the buffer grows; all before it stays. */
  size_t big = 8u << 20;
  at = tly_store_batch_put_open(batch, TLY_CF_USAGE, "big", 3, big);
  assert_non_null(at);
  memset(at, 'x', big);
  tly_store_batch_put_close(batch, 100000);
  at = tly_store_batch_put_open(batch, TLY_CF_USAGE, "empty", 5, 10);
  assert_non_null(at);
  tly_store_batch_put_close(batch, 0);
  assert_int_equal(tly_store_batch_count(batch), 5);
  commit_or_fail(store, batch, 1);
  assert_value(store, TLY_CF_USAGE, "before", "b");
  assert_value(store, TLY_CF_USAGE, "k1", "in place");
  assert_value(store, TLY_CF_USAGE, "dropped", NULL);
  assert_value(store, TLY_CF_USAGE, "after", "a");
  assert_value(store, TLY_CF_USAGE, "empty", "");
  char *out = NULL, errstr[256];
  size_t len = 0;
  assert_int_equal(tly_store_get(store, TLY_CF_USAGE, "big", 3, &out, &len,
                                 errstr, sizeof(errstr)),
                   1);
  assert_int_equal(len, 100000);
  assert_int_equal(out[0], 'x');
  assert_int_equal(out[99999], 'x');
  tly_store_free(out);
  tly_store_batch_destroy(batch);
  tly_store_close(store);
}

static void test_commit_atomic_across_families(void **state) {
  fixture_t *fx = *state;
  tly_store_t *store = open_or_fail(fx->db, 0);
  tly_store_batch_t *batch = tly_store_batch_new();

  char key[32], value[32];
  for (int i = 0; i < 100; i++) {
    snprintf(key, sizeof(key), "usage-%03d", i);
    snprintf(value, sizeof(value), "value-%d", i * 7);
    put_str(batch, TLY_CF_USAGE, key, value);
  }
  unsigned char seq[8];
  for (uint64_t s = 0; s < 5; s++) {
    tly_put_be64(seq, s);
    tly_store_batch_put(batch, TLY_CF_OUTBOX, seq, sizeof(seq), "alert", 5);
  }
  put_str(batch, TLY_CF_META, "next_seq", "5");
  tly_store_batch_set_offset(batch, 0, 1000);
  tly_store_batch_set_offset(batch, 1, 2000);
  assert_int_equal(tly_store_batch_count(batch), 100 + 5 + 1 + 2);
  commit_or_fail(store, batch, 1);
  tly_store_close(store);

  store = open_or_fail(fx->db, 0);
  for (int i = 0; i < 100; i++) {
    snprintf(key, sizeof(key), "usage-%03d", i);
    snprintf(value, sizeof(value), "value-%d", i * 7);
    assert_value(store, TLY_CF_USAGE, key, value);
  }
  for (uint64_t s = 0; s < 5; s++) {
    char *out = NULL;
    size_t len = 0;
    char errstr[256];
    tly_put_be64(seq, s);
    assert_int_equal(tly_store_get(store, TLY_CF_OUTBOX, seq, sizeof(seq), &out,
                                   &len, errstr, sizeof(errstr)),
                     1);
    assert_int_equal(len, 5);
    assert_memory_equal(out, "alert", 5);
    tly_store_free(out);
  }
  assert_value(store, TLY_CF_META, "next_seq", "5");
  int found = 0;
  assert_int_equal(get_offset_or_fail(store, 0, &found), 1000);
  assert_int_equal(found, 1);
  assert_int_equal(get_offset_or_fail(store, 1, &found), 2000);
  assert_int_equal(found, 1);

  tly_store_batch_destroy(batch);
  tly_store_close(store);
}

static void test_delete(void **state) {
  fixture_t *fx = *state;
  tly_store_t *store = open_or_fail(fx->db, 0);
  tly_store_batch_t *batch = tly_store_batch_new();

  put_str(batch, TLY_CF_USAGE, "keep", "1");
  put_str(batch, TLY_CF_USAGE, "gone", "2");
  commit_or_fail(store, batch, 1);
  tly_store_batch_clear(batch);

  tly_store_batch_delete(batch, TLY_CF_USAGE, "gone", 4);
  tly_store_batch_delete(batch, TLY_CF_USAGE, "never-there", 11);
  /* Operations apply in order: put then delete leaves nothing, delete then
   * put leaves the put. */
  put_str(batch, TLY_CF_META, "put-then-delete", "x");
  tly_store_batch_delete(batch, TLY_CF_META, "put-then-delete", 15);
  tly_store_batch_delete(batch, TLY_CF_META, "delete-then-put", 15);
  put_str(batch, TLY_CF_META, "delete-then-put", "y");
  commit_or_fail(store, batch, 1);

  assert_value(store, TLY_CF_USAGE, "keep", "1");
  assert_value(store, TLY_CF_USAGE, "gone", NULL);
  assert_value(store, TLY_CF_META, "put-then-delete", NULL);
  assert_value(store, TLY_CF_META, "delete-then-put", "y");
  tly_store_close(store);

  store = open_or_fail(fx->db, 0);
  assert_value(store, TLY_CF_USAGE, "keep", "1");
  assert_value(store, TLY_CF_USAGE, "gone", NULL);
  assert_value(store, TLY_CF_META, "delete-then-put", "y");
  tly_store_batch_destroy(batch);
  tly_store_close(store);
}

static void test_get_absent(void **state) {
  fixture_t *fx = *state;
  tly_store_t *store = open_or_fail(fx->db, 0);
  for (int cf = 0; cf < TLY_CF__COUNT; cf++)
    assert_value(store, (tly_cf_t)cf, "nothing-here", NULL);
  int found = 1;
  get_offset_or_fail(store, 7, &found);
  assert_int_equal(found, 0);
  tly_store_close(store);
}

/* Dedupe ids and the usage history expire by compaction: entries of a
 * partition whose time (the value's head) is below that family's horizon
 * for the partition go; the rest (other partitions, the other family,
 * families without expiry) stay. Spilled ids (dedupe_ids) follow the
 * dedupe horizon. */
static void test_expiry_by_compaction(void **state) {
  fixture_t *fx = *state;
  static const tly_cf_t families[] = {TLY_CF_DEDUPE, TLY_CF_USAGE,
                                      TLY_CF_DEDUPE_IDS};
  tly_store_t *store = open_or_fail(fx->db, 0);
  tly_store_batch_t *batch = tly_store_batch_new();
  for (int f = 0; f < 3; f++) {
    for (uint32_t partition = 0; partition < 2; partition++) {
      for (int i = 0; i < 100; i++) {
        unsigned char key[16], value[8];
        tly_put_be32(key, partition);
        snprintf((char *)key + 4, sizeof(key) - 4, "id-%03d", i);
        tly_put_be64(value, (uint64_t)(1000 + i)); /* the time */
        tly_store_batch_put(batch, families[f], key, 4 + 6, value, 8);
      }
    }
  }
  put_str(batch, TLY_CF_META, "keep", "me");
  commit_or_fail(store, batch, 1);
  /* Dedupe: partition 0 expires everything before 1050. Usage history:
   * partition 1 everything before 1020. The accounts family has no
   * expiry: the call does nothing there. */
  tly_store_set_horizon(store, TLY_CF_DEDUPE, 0, 1050);
  tly_store_set_horizon(store, TLY_CF_USAGE, 1, 1020);
  tly_store_set_horizon(store, TLY_CF_ACCOUNTS, 0, INT64_MAX);
  for (int f = 0; f < 3; f++)
    assert_int_equal(tly_store_compact(store, families[f]), 0);
  for (int f = 0; f < 3; f++) {
    for (uint32_t partition = 0; partition < 2; partition++) {
      for (int i = 0; i < 100; i++) {
        unsigned char key[16];
        char *value = NULL, errstr[256];
        size_t len;
        tly_put_be32(key, partition);
        snprintf((char *)key + 4, sizeof(key) - 4, "id-%03d", i);
        int found = tly_store_get(store, families[f], key, 4 + 6, &value, &len,
                                  errstr, sizeof(errstr));
        tly_store_free(value);
        int expected = families[f] != TLY_CF_USAGE ? partition == 1 || i >= 50
                                                   : partition == 0 || i >= 20;
        if (found != expected)
          fail_msg("%s partition %u id %d: found %d, expected %d",
                   tly_store_cf_name(families[f]), partition, i, found,
                   expected);
      }
    }
  }
  assert_value(store, TLY_CF_META, "keep", "me");
  tly_store_batch_destroy(batch);
  tly_store_close(store);
}

static void test_offsets_round_trip(void **state) {
  fixture_t *fx = *state;
  static const struct {
    int32_t partition;
    int64_t offset;
  } cases[] = {
      {0, 0},
      {1, 1},
      {2, 4294967296ll}, /* needs more than 32 bits */
      {255, 123456789012345ll},
      {256, INT64_MAX},
      {INT32_MAX, 77},
  };
  const size_t n = sizeof(cases) / sizeof(cases[0]);
  tly_store_t *store = open_or_fail(fx->db, 0);
  tly_store_batch_t *batch = tly_store_batch_new();
  for (size_t i = 0; i < n; i++)
    tly_store_batch_set_offset(batch, cases[i].partition, 1);
  commit_or_fail(store, batch, 1);
  tly_store_batch_clear(batch);
  for (size_t i = 0; i < n; i++)
    tly_store_batch_set_offset(batch, cases[i].partition, cases[i].offset);
  commit_or_fail(store, batch, 1);
  tly_store_close(store);

  store = open_or_fail(fx->db, 0);
  for (size_t i = 0; i < n; i++) {
    int found = 0;
    int64_t offset = get_offset_or_fail(store, cases[i].partition, &found);
    assert_int_equal(found, 1);
    assert_true(offset == cases[i].offset);
  }
  int found = 1;
  get_offset_or_fail(store, 3, &found);
  assert_int_equal(found, 0);

  /* The documented layout: 4-byte BE partition -> 8-byte BE offset. */
  unsigned char key[4];
  char *raw = NULL;
  size_t raw_len = 0;
  char errstr[256];
  tly_put_be32(key, 2);
  assert_int_equal(tly_store_get(store, TLY_CF_OFFSETS, key, sizeof(key), &raw,
                                 &raw_len, errstr, sizeof(errstr)),
                   1);
  assert_int_equal(raw_len, 8);
  assert_memory_equal(raw, "\x00\x00\x00\x01\x00\x00\x00\x00", 8);
  tly_store_free(raw);

  /* A malformed value is an error, never a guess. */
  tly_store_batch_clear(batch);
  tly_put_be32(key, 9);
  tly_store_batch_put(batch, TLY_CF_OFFSETS, key, sizeof(key), "abc", 3);
  commit_or_fail(store, batch, 0);
  int64_t offset = 0;
  assert_int_equal(
      tly_store_get_offset(store, 9, &offset, errstr, sizeof(errstr)), -1);
  assert_non_null(strstr(errstr, "partition 9"));

  tly_store_batch_destroy(batch);
  tly_store_close(store);
}

/* Scan callback state: the keys visited, concatenated as "<hex>," so that a
 * test can compare the whole visit order with one string. */
typedef struct {
  char seen[4096];
  int visits;
  int stop_after; /* 0: never stop */
} scan_log_t;

static int scan_log_cb(void *opaque, const char *key, size_t key_len,
                       const char *value, size_t value_len) {
  scan_log_t *log = opaque;
  size_t at = strlen(log->seen);
  for (size_t i = 0; i < key_len && at + 3 < sizeof(log->seen); i++)
    at += (size_t)snprintf(log->seen + at, sizeof(log->seen) - at, "%02x",
                           (unsigned char)key[i]);
  if (at + 2 < sizeof(log->seen)) {
    log->seen[at++] = ',';
    log->seen[at] = '\0';
  }
  /* Every test value is the key itself, so this checks pairing too. */
  assert_int_equal(value_len, key_len);
  assert_memory_equal(value, key, key_len);
  log->visits++;
  return log->stop_after > 0 && log->visits >= log->stop_after;
}

static void scan_expect(tly_store_t *store, const void *prefix,
                        size_t prefix_len, int stop_after,
                        const char *expected) {
  scan_log_t log = {.stop_after = stop_after};
  char errstr[256] = "";
  if (tly_store_scan_prefix(store, TLY_CF_USAGE, prefix, prefix_len,
                            scan_log_cb, &log, errstr, sizeof(errstr)) != 0)
    fail_msg("tly_store_scan_prefix: %s", errstr);
  assert_string_equal(log.seen, expected);
}

static void test_scan_prefix_exact(void **state) {
  fixture_t *fx = *state;
  /* Keys just inside and just outside each prefix tested below. */
  static const struct {
    const char *bytes;
    size_t len;
  } keys[] = {
      {"a", 1},
      {"aa\xff", 3},
      {"ab", 2},
      {"ab\x00", 3},
      {"ab\x01", 3},
      {"abz", 3},
      {"ab\xff", 3},
      {"ab\xff\xff", 4},
      {"ac", 2},
      {"a\xfe\xff", 3},
      {"a\xff", 2},
      {"a\xff\x00", 3},
      {"a\xff\xff\xff", 4},
      {"b", 1},
      {"b\x00", 2},
      {"\xff", 1},
      {"\xff\xfe", 2},
      {"\xff\xff", 2},
      {"\xff\xff\x01", 3},
      /* Partition-style prefixes: 255 must not run into 256. */
      {"\x00\x00\x00\xff"
       "x",
       5},
      {"\x00\x00\x01\x00"
       "x",
       5},
  };
  tly_store_t *store = open_or_fail(fx->db, 0);
  tly_store_batch_t *batch = tly_store_batch_new();
  for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
    tly_store_batch_put(batch, TLY_CF_USAGE, keys[i].bytes, keys[i].len,
                        keys[i].bytes, keys[i].len);
  /* Same keys in another family must not show up in a usage scan. */
  tly_store_batch_put(batch, TLY_CF_META, "ab-meta", 7, "x", 1);
  commit_or_fail(store, batch, 1);

  /* Twice: from the memtable, then from table files after a reopen (which
   * flushes the recovered WAL), where the upper bound takes another path. */
  for (int round = 0; round < 2; round++) {
    scan_expect(store, "ab", 2, 0,
                "6162,616200,616201,61627a,6162ff,6162ffff,");
    scan_expect(store, "a\xff", 2, 0, "61ff,61ff00,61ffffff,");
    scan_expect(store, "ab\xff", 3, 0, "6162ff,6162ffff,");
    scan_expect(store, "\xff\xff", 2, 0, "ffff,ffff01,");
    scan_expect(store, "\xff", 1, 0, "ff,fffe,ffff,ffff01,");
    scan_expect(store, "\x00\x00\x00\xff", 4, 0, "000000ff78,");
    scan_expect(store, "zz", 2, 0, "");
    scan_expect(store, "abz-longer", 10, 0, "");
    /* Early stop. */
    scan_expect(store, "ab", 2, 2, "6162,616200,");
    scan_expect(store, "ab", 2, 1, "6162,");
    /* Everything, in key order. */
    scan_expect(store, NULL, 0, 0,
                "000000ff78,0000010078,61,6161ff,6162,616200,616201,61627a,"
                "6162ff,6162ffff,6163,61feff,61ff,61ff00,61ffffff,62,6200,ff,"
                "fffe,ffff,ffff01,");
    scan_expect(store, "", 0, 3, "000000ff78,0000010078,61,");
    tly_store_close(store);
    store = open_or_fail(fx->db, 0);
  }
  tly_store_batch_destroy(batch);
  tly_store_close(store);
}

static void test_fail_next_commits(void **state) {
  fixture_t *fx = *state;
  tly_store_t *store = open_or_fail(fx->db, 0);
  tly_store_batch_t *batch = tly_store_batch_new();
  char errstr[256];

  tly_store_fail_next_commits(store, 2);
  for (int attempt = 1; attempt <= 3; attempt++) {
    char key[16];
    snprintf(key, sizeof(key), "try-%d", attempt);
    tly_store_batch_clear(batch);
    put_str(batch, TLY_CF_USAGE, key, "x");
    tly_store_batch_set_offset(batch, 0, attempt);
    errstr[0] = '\0';
    int rc = tly_store_commit(store, batch, 1, errstr, sizeof(errstr));
    if (attempt <= 2) {
      assert_int_equal(rc, -1);
      assert_string_equal(errstr, "injected I/O error");
      /* A failed commit leaves the batch for the retry. */
      assert_int_equal(tly_store_batch_count(batch), 2);
    } else {
      assert_int_equal(rc, 0);
    }
  }
  /* The fourth works too: the injection is used up. */
  tly_store_batch_clear(batch);
  put_str(batch, TLY_CF_USAGE, "try-4", "x");
  commit_or_fail(store, batch, 1);
  tly_store_close(store);

  store = open_or_fail(fx->db, 0);
  assert_value(store, TLY_CF_USAGE, "try-1", NULL);
  assert_value(store, TLY_CF_USAGE, "try-2", NULL);
  assert_value(store, TLY_CF_USAGE, "try-3", "x");
  assert_value(store, TLY_CF_USAGE, "try-4", "x");
  int found = 0;
  assert_int_equal(get_offset_or_fail(store, 0, &found), 3);

  /* Zero cancels what is pending. */
  tly_store_fail_next_commits(store, 5);
  tly_store_fail_next_commits(store, 0);
  commit_or_fail(store, batch, 1);

  tly_store_batch_destroy(batch);
  tly_store_close(store);
}

static int scan_count_cb(void *opaque, const char *key, size_t key_len,
                         const char *value, size_t value_len) {
  (void)key, (void)key_len, (void)value, (void)value_len;
  ((scan_log_t *)opaque)->visits++;
  return 0;
}

/* Many threads commit while failures are pending: exactly as many commits
 * fail as were asked for, never more, never fewer. */
typedef struct {
  tly_store_t *store;
  int thread;
  int commits;
  int failures;
} committer_t;

static void *committer_main(void *arg) {
  committer_t *c = arg;
  tly_store_batch_t *batch = tly_store_batch_new();
  char errstr[256];
  for (int i = 0; i < c->commits; i++) {
    char key[32];
    snprintf(key, sizeof(key), "t%d-%d", c->thread, i);
    tly_store_batch_clear(batch);
    put_str(batch, TLY_CF_USAGE, key, "x");
    if (tly_store_commit(c->store, batch, 0, errstr, sizeof(errstr)) != 0)
      c->failures++;
  }
  tly_store_batch_destroy(batch);
  return NULL;
}

static void test_fail_next_commits_concurrent(void **state) {
  fixture_t *fx = *state;
  enum { THREADS = 4, COMMITS = 100, FAILURES = 150 };
  tly_store_t *store = open_or_fail(fx->db, 0);
  committer_t committers[THREADS];
  pthread_t threads[THREADS];
  tly_store_fail_next_commits(store, FAILURES);
  for (int t = 0; t < THREADS; t++) {
    committers[t] = (committer_t){store, t, COMMITS, 0};
    assert_int_equal(
        pthread_create(&threads[t], NULL, committer_main, &committers[t]), 0);
  }
  int failures = 0;
  for (int t = 0; t < THREADS; t++) {
    pthread_join(threads[t], NULL);
    failures += committers[t].failures;
  }
  assert_int_equal(failures, FAILURES);

  scan_log_t log = {0};
  char errstr[256];
  assert_int_equal(tly_store_scan_prefix(store, TLY_CF_USAGE, "t", 1,
                                         scan_count_cb, &log, errstr,
                                         sizeof(errstr)),
                   0);
  assert_int_equal(log.visits, THREADS * COMMITS - FAILURES);
  tly_store_close(store);
}

/* The processor commits while HTTP threads read: readers must always see
 * whole commits. Each commit rewrites every key of a group with one value,
 * so a scan that sees two values in one group saw half a commit. */
enum { RW_KEYS = 16, RW_COMMITS = 300 };

typedef struct {
  tly_store_t *store;
  atomic_int *done;
  int scans;
  int torn;
  int errors;
} reader_t;

typedef struct {
  char first[32];
  int count;
  int mismatched;
} group_scan_t;

static int group_scan_cb(void *opaque, const char *key, size_t key_len,
                         const char *value, size_t value_len) {
  (void)key, (void)key_len;
  group_scan_t *g = opaque;
  char v[32];
  snprintf(v, sizeof(v), "%.*s", (int)value_len, value);
  if (g->count == 0)
    snprintf(g->first, sizeof(g->first), "%s", v);
  else if (strcmp(g->first, v) != 0)
    g->mismatched = 1;
  g->count++;
  return 0;
}

static void *reader_main(void *arg) {
  reader_t *r = arg;
  char errstr[256];
  while (!atomic_load(r->done)) {
    group_scan_t g = {.count = 0};
    if (tly_store_scan_prefix(r->store, TLY_CF_USAGE, "g/", 2, group_scan_cb,
                              &g, errstr, sizeof(errstr)) != 0)
      r->errors++;
    if (g.mismatched || (g.count != 0 && g.count != RW_KEYS))
      r->torn++;
    char *value = NULL;
    size_t len = 0;
    if (tly_store_get(r->store, TLY_CF_USAGE, "g/00", 4, &value, &len, errstr,
                      sizeof(errstr)) < 0)
      r->errors++;
    tly_store_free(value);
    r->scans++;
  }
  return NULL;
}

static void test_concurrent_readers_and_writer(void **state) {
  fixture_t *fx = *state;
  tly_store_t *store = open_or_fail(fx->db, 0);
  atomic_int done = 0;
  reader_t readers[2];
  pthread_t threads[2];
  for (int t = 0; t < 2; t++) {
    readers[t] = (reader_t){.store = store, .done = &done};
    assert_int_equal(
        pthread_create(&threads[t], NULL, reader_main, &readers[t]), 0);
  }
  tly_store_batch_t *batch = tly_store_batch_new();
  for (int i = 0; i < RW_COMMITS; i++) {
    char key[16], value[16];
    tly_store_batch_clear(batch);
    snprintf(value, sizeof(value), "%d", i);
    for (int k = 0; k < RW_KEYS; k++) {
      snprintf(key, sizeof(key), "g/%02d", k);
      put_str(batch, TLY_CF_USAGE, key, value);
    }
    commit_or_fail(store, batch, 0);
  }
  atomic_store(&done, 1);
  for (int t = 0; t < 2; t++) {
    pthread_join(threads[t], NULL);
    assert_int_equal(readers[t].errors, 0);
    assert_int_equal(readers[t].torn, 0);
  }
  tly_store_batch_destroy(batch);
  tly_store_close(store);
}

static void test_read_only_while_writer_open(void **state) {
  fixture_t *fx = *state;
  char errstr[512] = "";

  /* Nothing to inspect yet: read-only never creates a database. */
  assert_null(tly_store_open(fx->db, 1, errstr, sizeof(errstr)));
  assert_non_null(strstr(errstr, fx->db));

  tly_store_t *writer = open_or_fail(fx->db, 0);
  tly_store_batch_t *batch = tly_store_batch_new();
  put_str(batch, TLY_CF_USAGE, "subject", "42");
  tly_store_batch_set_offset(batch, 5, 500);
  commit_or_fail(writer, batch, 1);

  /* A second writer is refused (RocksDB's lock), a reader is not. */
  assert_null(tly_store_open(fx->db, 0, errstr, sizeof(errstr)));
  tly_store_t *reader = open_or_fail(fx->db, 1);
  assert_value(reader, TLY_CF_USAGE, "subject", "42");
  int found = 0;
  assert_int_equal(get_offset_or_fail(reader, 5, &found), 500);
  assert_int_equal(found, 1);
  scan_log_t log = {0};
  assert_int_equal(tly_store_scan_prefix(reader, TLY_CF_USAGE, "subj", 4,
                                         scan_count_cb, &log, errstr,
                                         sizeof(errstr)),
                   0);
  assert_int_equal(log.visits, 1);

  /* Read-only means read-only. */
  assert_int_equal(tly_store_commit(reader, batch, 1, errstr, sizeof(errstr)),
                   -1);
  assert_non_null(strstr(errstr, "read-only"));

  /* A reader is a snapshot of the moment it opened; a new one sees more. */
  tly_store_batch_clear(batch);
  put_str(batch, TLY_CF_USAGE, "later", "1");
  commit_or_fail(writer, batch, 1);
  tly_store_close(reader);
  reader = open_or_fail(fx->db, 1);
  assert_value(reader, TLY_CF_USAGE, "later", "1");
  assert_value(writer, TLY_CF_USAGE, "subject", "42");

  tly_store_close(reader);
  tly_store_batch_destroy(batch);
  tly_store_close(writer);
}

static void test_open_regular_file_fails(void **state) {
  fixture_t *fx = *state;
  char path[128];
  snprintf(path, sizeof(path), "%s/not-a-dir", fx->root);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs("hello\n", f);
  fclose(f);

  for (int read_only = 0; read_only <= 1; read_only++) {
    char errstr[512] = "";
    assert_null(tly_store_open(path, read_only, errstr, sizeof(errstr)));
    assert_non_null(strstr(errstr, path));
  }
  /* Nothing was done to the file. */
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_true(S_ISREG(st.st_mode));
  assert_int_equal(st.st_size, 6);

  char errstr[64] = "";
  assert_null(tly_store_open("", 0, errstr, sizeof(errstr)));
  assert_true(errstr[0] != '\0');
}

/* Crash safety. The child commits numbered batches in a loop, each with
 * CRASH_KEYS usage keys plus the offset of partition 0 set to the commit
 * number + 1, synced, and reports each acknowledged number on a pipe. The
 * parent kills it with SIGKILL at a random moment and checks on reopen that
 * the offset covers every acknowledged commit and that the set of commits
 * present is exactly [0, offset), each with all its keys. Several rounds, each
 * child resuming from the recovered offset, so recovery of a recovered
 * database is exercised too. */
enum { CRASH_KEYS = 32, CRASH_VALUE_BYTES = 96, CRASH_ROUNDS = 4 };
/* The value is the commit number repeated, 8 bytes at a time. */
_Static_assert(CRASH_VALUE_BYTES % 8 == 0, "whole 8-byte words");

static void crash_key(unsigned char *key, uint64_t commit, uint32_t index) {
  tly_put_be32(key, 0); /* partition 0, as real state keys are scoped */
  tly_put_be64(key + 4, commit);
  tly_put_be32(key + 12, index);
}

static int crash_child(const char *dir, int fd) {
  char errstr[512];
  tly_store_t *store = tly_store_open(dir, 0, errstr, sizeof(errstr));
  if (store == NULL) {
    fprintf(stderr, "crash child: %s\n", errstr);
    return 2;
  }
  int64_t next = 0;
  if (tly_store_get_offset(store, 0, &next, errstr, sizeof(errstr)) < 0) {
    fprintf(stderr, "crash child: %s\n", errstr);
    return 2;
  }
  tly_store_batch_t *batch = tly_store_batch_new();
  unsigned char key[16], value[CRASH_VALUE_BYTES];
  for (uint64_t commit = (uint64_t)next;; commit++) {
    tly_store_batch_clear(batch);
    for (size_t i = 0; i < sizeof(value); i += 8)
      tly_put_be64(value + i, commit);
    for (uint32_t k = 0; k < CRASH_KEYS; k++) {
      crash_key(key, commit, k);
      tly_store_batch_put(batch, TLY_CF_USAGE, key, sizeof(key), value,
                          sizeof(value));
    }
    tly_store_batch_set_offset(batch, 0, (int64_t)commit + 1);
    if (tly_store_commit(store, batch, 1, errstr, sizeof(errstr)) != 0) {
      fprintf(stderr, "crash child: %s\n", errstr);
      return 2;
    }
    /* 8 bytes < PIPE_BUF: the write is atomic, so the parent never reads
     * half a number, however the kill lands. */
    if (write(fd, &commit, sizeof(commit)) != (ssize_t)sizeof(commit))
      return 2;
  }
}

typedef struct {
  uint64_t offset;
  unsigned *keys_per_commit;
  char problem[160];
} crash_check_t;

static int crash_check_cb(void *opaque, const char *key, size_t key_len,
                          const char *value, size_t value_len) {
  crash_check_t *c = opaque;
  if (key_len != 16 || value_len != CRASH_VALUE_BYTES) {
    snprintf(c->problem, sizeof(c->problem),
             "unexpected key/value sizes %zu/%zu", key_len, value_len);
    return 1;
  }
  uint64_t commit = tly_get_be64((const unsigned char *)key + 4);
  if (commit >= c->offset) {
    /* Keys of a commit whose offset did not land: half a commit. */
    snprintf(c->problem, sizeof(c->problem),
             "keys of commit %llu present, stored offset only %llu",
             (unsigned long long)commit, (unsigned long long)c->offset);
    return 1;
  }
  if (tly_get_be64((const unsigned char *)value) != commit) {
    snprintf(c->problem, sizeof(c->problem),
             "a key of commit %llu has a foreign value",
             (unsigned long long)commit);
    return 1;
  }
  c->keys_per_commit[commit]++;
  return 0;
}

/* argv[0] for the re-executed child; the binary itself is /proc/self/exe,
 * which works whatever directory ctest runs us from. */
static const char *self_name = "test_store";

static void test_crash_safety(void **state) {
  fixture_t *fx = *state;
  unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();
  const char *seed_env = getenv("TLY_TEST_SEED");
  if (seed_env != NULL)
    seed = (unsigned)strtoul(seed_env, NULL, 10);
  print_message("crash test seed %u (set TLY_TEST_SEED to repeat)\n", seed);
  srand(seed);

  uint64_t previous_offset = 0;
  for (int round = 0; round < CRASH_ROUNDS; round++) {
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    fcntl(fds[0], F_SETFD, FD_CLOEXEC);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
      char fd_arg[16];
      snprintf(fd_arg, sizeof(fd_arg), "%d", fds[1]);
      execl("/proc/self/exe", self_name, "--crash-child", fx->db, fd_arg,
            (char *)NULL);
      _exit(127);
    }
    close(fds[1]);

    /* Kill only once the child is committing, then at a random point in the
     * next 0-150 ms: sometimes between commits, sometimes inside one. */
    struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
    int ready = poll(&pfd, 1, 60000);
    if (ready == 1) {
      struct timespec pause = {0, (long)(rand() % 150000) * 1000};
      nanosleep(&pause, NULL);
    }
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    assert_int_equal(ready, 1);

    /* Every number on the pipe was acknowledged before the kill. */
    int64_t last_acked = -1, acked = 0;
    uint64_t number;
    ssize_t got;
    while ((got = read(fds[0], &number, sizeof(number))) ==
           (ssize_t)sizeof(number)) {
      last_acked = (int64_t)number;
      acked++;
    }
    close(fds[0]);
    assert_int_equal(got, 0);
    if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL))
      fail_msg("crash child exited on its own (status %d)", status);
    assert_true(last_acked >= 0);

    tly_store_t *store = open_or_fail(fx->db, 0);
    int found = 0;
    int64_t offset = get_offset_or_fail(store, 0, &found);
    assert_int_equal(found, 1);
    print_message("round %d: %lld acknowledged this round, last %lld, "
                  "stored offset %lld\n",
                  round, (long long)acked, (long long)last_acked,
                  (long long)offset);
    /* Acknowledged means durable; at most the one commit in flight at the
     * kill may be there without its acknowledgement. */
    assert_true(offset >= last_acked + 1);
    assert_true(offset <= last_acked + 2);
    assert_true((uint64_t)offset >= previous_offset);

    crash_check_t check = {.offset = (uint64_t)offset};
    check.keys_per_commit = calloc((size_t)offset, sizeof(unsigned));
    assert_non_null(check.keys_per_commit);
    char errstr[256];
    unsigned char prefix[4];
    tly_put_be32(prefix, 0);
    assert_int_equal(tly_store_scan_prefix(store, TLY_CF_USAGE, prefix,
                                           sizeof(prefix), crash_check_cb,
                                           &check, errstr, sizeof(errstr)),
                     0);
    if (check.problem[0] != '\0')
      fail_msg("round %d: %s", round, check.problem);
    for (int64_t c = 0; c < offset; c++)
      if (check.keys_per_commit[c] != CRASH_KEYS)
        fail_msg("commit %lld has %u of %d keys", (long long)c,
                 check.keys_per_commit[c], CRASH_KEYS);
    free(check.keys_per_commit);
    tly_store_close(store);
    previous_offset = (uint64_t)offset;
  }
}

/* Levels 0 and 1 uncompressed, LZ4 below; the write-mostly families (the
 * dedupe window's: blobs, spilled ids, contributions) LZ4 at every level.
 * Read from the OPTIONS file RocksDB writes with the options in effect. */
static void test_compression_by_level(void **state) {
  fixture_t *fx = *state;
  tly_store_t *store = open_or_fail(fx->db, 0);
  tly_store_close(store);
  DIR *dir = opendir(fx->db);
  assert_non_null(dir);
  char newest[300] = "";
  struct dirent *e;
  while ((e = readdir(dir)) != NULL)
    if (!strncmp(e->d_name, "OPTIONS-", 8) && strcmp(e->d_name, newest) > 0)
      snprintf(newest, sizeof(newest), "%s", e->d_name);
  closedir(dir);
  assert_true(newest[0]);
  char path[800];
  snprintf(path, sizeof(path), "%s/%s", fx->db, newest);
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  static const char *const mostly[] = {"dedupe", "dedupe_ids", "contributions"};
  const char *tiered = "compression_per_level=kNoCompression:kNoCompression:"
                       "kLZ4Compression:kLZ4Compression:kLZ4Compression:"
                       "kLZ4Compression:kLZ4Compression";
  const char *all_lz4 = "compression_per_level=kLZ4Compression:"
                        "kLZ4Compression:kLZ4Compression:kLZ4Compression:"
                        "kLZ4Compression:kLZ4Compression:kLZ4Compression";
  char line[4096], family[4096] = "";
  int families = 0, by_level = 0, write_mostly = 0;
  while (fgets(line, sizeof(line), f)) {
    if (!strncmp(line, "[CFOptions \"", 12)) {
      families++;
      snprintf(family, sizeof(family), "%s", line + 12);
      family[strcspn(family, "\"")] = '\0';
    }
    if (!strstr(line, "compression_per_level="))
      continue;
    int is_mostly = 0;
    for (size_t i = 0; i < sizeof(mostly) / sizeof(mostly[0]); i++)
      is_mostly |= !strcmp(family, mostly[i]);
    if (!strstr(line, is_mostly ? all_lz4 : tiered))
      fail_msg("family %s: %s", family, line);
    write_mostly += is_mostly;
    by_level++;
  }
  fclose(f);
  assert_true(families >= TLY_CF__COUNT);
  assert_int_equal(by_level, families);
  assert_int_equal(write_mostly, 3);
}

int main(int argc, char **argv) {
  if (argc == 4 && strcmp(argv[1], "--crash-child") == 0)
    return crash_child(argv[2], atoi(argv[3]));
  if (argc > 0)
    self_name = argv[0];

  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_be_helpers),
      cmocka_unit_test(test_cf_names),
      cmocka_unit_test_setup_teardown(test_open_close_reopen, setup, teardown),
      cmocka_unit_test_setup_teardown(test_compression_by_level, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_batch_count_clear_and_empty_commit,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_batch_put_in_place, setup, teardown),
      cmocka_unit_test_setup_teardown(test_commit_atomic_across_families, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_delete, setup, teardown),
      cmocka_unit_test_setup_teardown(test_get_absent, setup, teardown),
      cmocka_unit_test_setup_teardown(test_offsets_round_trip, setup, teardown),
      cmocka_unit_test_setup_teardown(test_scan_prefix_exact, setup, teardown),
      cmocka_unit_test_setup_teardown(test_fail_next_commits, setup, teardown),
      cmocka_unit_test_setup_teardown(test_fail_next_commits_concurrent, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_concurrent_readers_and_writer, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_read_only_while_writer_open, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_open_regular_file_fails, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_crash_safety, setup, teardown),
      cmocka_unit_test_setup_teardown(test_expiry_by_compaction, setup,
                                      teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
