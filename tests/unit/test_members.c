/*
 * test_members.c - the members map of tly_members.c, pure: announcements
 * decoded (and refused when malformed), members expiring after the
 * staleness timeout, conflicting claims answered as moving, tombstones.
 */
#include "tly_members.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define STALE_MS 1500
#define T0 1763800000000LL

static int apply(tly_members_map_t *map, const char *key, const char *value,
                 int64_t received_ms) {
  char errstr[256];
  return tly_members_map_apply(map, key, strlen(key), value,
                               value ? strlen(value) : 0, received_ms, errstr,
                               sizeof(errstr));
}

/* An announcement of instance at http://127.0.0.1:port, made at at_ms. */
static char *announcement(const char *instance, int port, const char *serving,
                          const char *replaying, int64_t at_ms) {
  static char text[1024];
  snprintf(text, sizeof(text),
           "{\"instance\":\"%s\",\"http\":\"http://127.0.0.1:%d\","
           "\"partitions\":[%s],\"replaying\":[%s],\"at\":%lld,\"seq\":1}",
           instance, port, serving, replaying, (long long)at_ms);
  return text;
}

static void test_decode_round_trip(void **state) {
  (void)state;
  int32_t serving[] = {0, 3, 7}, replaying[] = {5};
  tly_members_announcement_t in = {.partitions = serving,
                                   .partition_count = 3,
                                   .replaying = replaying,
                                   .replaying_count = 1,
                                   .at_ms = T0,
                                   .seq = 42};
  snprintf(in.instance, sizeof(in.instance), "host-a");
  snprintf(in.http, sizeof(in.http), "http://127.0.0.1:8081");
  char *text = tly_members_encode(&in);
  assert_non_null(text);
  tly_members_announcement_t out;
  char errstr[256];
  assert_int_equal(
      tly_members_decode(text, strlen(text), &out, errstr, sizeof(errstr)), 0);
  assert_string_equal(out.instance, "host-a");
  assert_string_equal(out.http, "http://127.0.0.1:8081");
  assert_int_equal(out.partition_count, 3);
  assert_int_equal(out.partitions[1], 3);
  assert_int_equal(out.replaying_count, 1);
  assert_int_equal(out.replaying[0], 5);
  assert_int_equal(out.at_ms, T0);
  assert_int_equal(out.seq, 42);
  tly_members_announcement_clear(&out);
  free(text);
}

static void test_decode_refuses_malformed(void **state) {
  (void)state;
  static const char *bad[] = {
      "not json",
      "[]",
      "{\"http\":\"http://127.0.0.1:1\",\"at\":1}", /* no instance */
      "{\"instance\":\"a\",\"at\":1}",              /* no http */
      "{\"instance\":\"a\",\"http\":\"ftp://x\",\"at\":1}",
      "{\"instance\":\"a\",\"http\":\"http://x\"}", /* no at */
      "{\"instance\":\"a\",\"http\":\"http://x\",\"at\":1,"
      "\"partitions\":[-1]}",
      "{\"instance\":\"a\",\"http\":\"http://x\",\"at\":1,"
      "\"partitions\":[\"1\"]}",
      "{\"instance\":\"a\",\"http\":\"http://x\",\"at\":1,"
      "\"replaying\":{}}",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    tly_members_announcement_t out;
    char errstr[256] = "";
    assert_int_equal(tly_members_decode(bad[i], strlen(bad[i]), &out, errstr,
                                        sizeof(errstr)),
                     -1);
    assert_true(errstr[0] != '\0');
    tly_members_announcement_clear(&out);
  }
}

static void test_owner_serving_and_replaying(void **state) {
  (void)state;
  tly_members_owner_t owner;
  tly_members_map_t *map = tly_members_map_new(STALE_MS);
  assert_int_equal(apply(map, "a", announcement("a", 8081, "0,1", "2", T0), T0),
                   0);
  assert_int_equal(tly_members_map_owner(map, 0, T0, &owner),
                   TLY_OWNER_SERVING);
  assert_string_equal(owner.http, "http://127.0.0.1:8081");
  assert_string_equal(owner.instance, "a");
  assert_int_equal(tly_members_map_owner(map, 2, T0, &owner),
                   TLY_OWNER_REPLAYING);
  assert_string_equal(owner.http, "http://127.0.0.1:8081");
  assert_int_equal(tly_members_map_owner(map, 3, T0, &owner),
                   TLY_OWNER_UNKNOWN);
  assert_string_equal(owner.http, "");
  /* A later announcement of the same member replaces its claims. */
  assert_int_equal(
      apply(map, "a", announcement("a", 8081, "2", "", T0 + 100), T0 + 100), 0);
  assert_int_equal(tly_members_map_owner(map, 0, T0 + 100, &owner),
                   TLY_OWNER_UNKNOWN);
  assert_int_equal(tly_members_map_owner(map, 2, T0 + 100, &owner),
                   TLY_OWNER_SERVING);
  tly_members_map_free(map);
}

static void test_stale_members_expire(void **state) {
  (void)state;
  tly_members_owner_t owner;
  tly_members_map_t *map = tly_members_map_new(STALE_MS);
  apply(map, "a", announcement("a", 8081, "0", "", T0), T0);
  apply(map, "b", announcement("b", 8082, "1", "", T0 + 1000), T0 + 1000);
  assert_int_equal(tly_members_map_count(map, T0 + 1000), 2);
  assert_int_equal(tly_members_map_owner(map, 0, T0 + STALE_MS, &owner),
                   TLY_OWNER_SERVING);
  /* a fell silent (SIGKILL): its claim expires, b's heartbeat holds. */
  assert_int_equal(tly_members_map_owner(map, 0, T0 + STALE_MS + 1, &owner),
                   TLY_OWNER_UNKNOWN);
  assert_int_equal(tly_members_map_owner(map, 1, T0 + STALE_MS + 1, &owner),
                   TLY_OWNER_SERVING);
  assert_int_equal(tly_members_map_count(map, T0 + STALE_MS + 1), 1);
  /* An old announcement read later (at startup) is as old as its "at". */
  apply(map, "c", announcement("c", 8083, "5", "", T0), T0 + 10000);
  assert_int_equal(tly_members_map_owner(map, 5, T0 + 10000, &owner),
                   TLY_OWNER_UNKNOWN);
  /* A clock ahead of ours counts from when we read it. */
  apply(map, "d", announcement("d", 8084, "6", "", T0 + 60000), T0 + 10000);
  assert_int_equal(tly_members_map_owner(map, 6, T0 + 10000 + STALE_MS, &owner),
                   TLY_OWNER_SERVING);
  assert_int_equal(
      tly_members_map_owner(map, 6, T0 + 10000 + STALE_MS + 1, &owner),
      TLY_OWNER_UNKNOWN);
  tly_members_map_free(map);
}

static void test_conflicting_claims_are_moving(void **state) {
  (void)state;
  tly_members_owner_t owner;
  tly_members_map_t *map = tly_members_map_new(STALE_MS);
  /* During a rebalance: a still claims 4 while b took it over. */
  apply(map, "a", announcement("a", 8081, "3,4", "", T0), T0);
  apply(map, "b", announcement("b", 8082, "4", "", T0 + 10), T0 + 10);
  assert_int_equal(tly_members_map_owner(map, 4, T0 + 10, &owner),
                   TLY_OWNER_CONFLICT);
  assert_string_equal(owner.http, ""); /* never a guess */
  assert_int_equal(tly_members_map_owner(map, 3, T0 + 10, &owner),
                   TLY_OWNER_SERVING);
  /* Serving on one side, replaying on the other: still moving. */
  apply(map, "b", announcement("b", 8082, "", "3,4", T0 + 20), T0 + 20);
  assert_int_equal(tly_members_map_owner(map, 3, T0 + 20, &owner),
                   TLY_OWNER_CONFLICT);
  /* a lets go: b's claim stands (replaying, then serving). */
  apply(map, "a", announcement("a", 8081, "", "", T0 + 30), T0 + 30);
  assert_int_equal(tly_members_map_owner(map, 4, T0 + 30, &owner),
                   TLY_OWNER_REPLAYING);
  assert_string_equal(owner.http, "http://127.0.0.1:8082");
  apply(map, "b", announcement("b", 8082, "3,4", "", T0 + 40), T0 + 40);
  assert_int_equal(tly_members_map_owner(map, 4, T0 + 40, &owner),
                   TLY_OWNER_SERVING);
  /* A stale claimant does not conflict. */
  apply(map, "a", announcement("a", 8081, "4", "", T0 + 40), T0 + 40);
  apply(map, "b", announcement("b", 8082, "4", "", T0 + 3000), T0 + 3000);
  assert_int_equal(tly_members_map_owner(map, 4, T0 + 3000, &owner),
                   TLY_OWNER_SERVING);
  assert_string_equal(owner.instance, "b");
  tly_members_map_free(map);
}

static void test_tombstone_and_bad_records(void **state) {
  (void)state;
  tly_members_owner_t owner;
  tly_members_map_t *map = tly_members_map_new(STALE_MS);
  apply(map, "a", announcement("a", 8081, "0", "", T0), T0);
  apply(map, "b", announcement("b", 8082, "1", "", T0), T0);
  assert_int_equal(apply(map, "a", NULL, T0 + 1), 0);
  assert_int_equal(tly_members_map_owner(map, 0, T0 + 1, &owner),
                   TLY_OWNER_UNKNOWN);
  assert_int_equal(tly_members_map_owner(map, 1, T0 + 1, &owner),
                   TLY_OWNER_SERVING);
  assert_int_equal(tly_members_map_count(map, T0 + 1), 1);
  /* A tombstone of an unknown member is fine. */
  assert_int_equal(apply(map, "zz", NULL, T0 + 1), 0);
  /* Refused and ignored: another instance's value under this key, garbage. */
  assert_int_equal(apply(map, "c", announcement("b", 8082, "7", "", T0), T0),
                   -1);
  assert_int_equal(apply(map, "c", "{", T0), -1);
  assert_int_equal(tly_members_map_owner(map, 7, T0 + 1, &owner),
                   TLY_OWNER_UNKNOWN);
  assert_int_equal(tly_members_map_owner(map, 1, T0 + 1, &owner),
                   TLY_OWNER_SERVING);
  tly_members_map_free(map);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_decode_round_trip),
      cmocka_unit_test(test_decode_refuses_malformed),
      cmocka_unit_test(test_owner_serving_and_replaying),
      cmocka_unit_test(test_stale_members_expire),
      cmocka_unit_test(test_conflicting_claims_are_moving),
      cmocka_unit_test(test_tombstone_and_bad_records),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
