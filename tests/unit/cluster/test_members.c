/*
 * test_members.c - the members map of tly_members.c, pure: announcements
 * decoded (and refused when malformed), members expiring after the
 * staleness timeout, conflicting claims answered as moving, tombstones;
 * and what the cluster secret authenticates (tly_cluster_auth.c): records
 * of the members topic ignored unless signed (tampered, unsigned, another
 * secret, stale, replayed), and the forwarding credential of a forwarded
 * request (bound to its request and owner, short-lived).
 */
#include "tly_cluster_auth.h"
#include "tly_members.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#define STALE_MS 1500
#define T0 1763800000000LL

static const tly_cluster_secret_t *secret(void) {
  static tly_cluster_secret_t value = {.len = 0};
  if (!value.len) {
    value.len = 32;
    memcpy(value.bytes, "0123456789abcdef0123456789abcdef", 32);
  }
  return &value;
}

static const tly_cluster_secret_t *other_secret(void) {
  static tly_cluster_secret_t value = {.len = 0};
  if (!value.len) {
    value.len = 32;
    memcpy(value.bytes, "0123456789abcdef0123456789abcdeF", 32);
  }
  return &value;
}

/* Applies a record signed with signing_secret (NULL: unsigned) at at_ms. */
static tly_members_verdict_t
apply_signed(tly_members_map_t *map, const tly_cluster_secret_t *signing_secret,
             const char *key, const char *value, int64_t at_ms,
             int64_t received_ms) {
  char errstr[256], at[24], mac[TLY_CLUSTER_MAC_HEX_LEN + 1];
  tly_members_signature_t signature = {0};
  size_t value_len = value ? strlen(value) : 0;
  if (signing_secret) {
    snprintf(at, sizeof(at), "%lld", (long long)at_ms);
    tly_cluster_members_mac(signing_secret, key, strlen(key), at_ms, value,
                            value_len, mac);
    signature = (tly_members_signature_t){
        .at = at, .at_len = strlen(at), .mac = mac, .mac_len = strlen(mac)};
  }
  return tly_members_map_apply(map, key, strlen(key), value, value_len,
                               &signature, received_ms, errstr, sizeof(errstr));
}

/* A record signed with the map's secret; a tombstone (value NULL) is made
 * at received_ms, an announcement at its own "at". */
static int64_t at_of(const char *value, int64_t fallback) {
  const char *at = value ? strstr(value, "\"at\":") : NULL;
  return at ? strtoll(at + 5, NULL, 10) : fallback;
}

static tly_members_verdict_t apply(tly_members_map_t *map, const char *key,
                                   const char *value, int64_t received_ms) {
  return apply_signed(map, secret(), key, value, at_of(value, received_ms),
                      received_ms);
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
  tly_members_map_t *map = tly_members_map_new(STALE_MS, secret());
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

/* An announcement with a standby list too. */
static char *announcement_standby(const char *instance, int port,
                                  const char *serving, const char *standby,
                                  int64_t at_ms) {
  static char text[1024];
  snprintf(text, sizeof(text),
           "{\"instance\":\"%s\",\"http\":\"http://127.0.0.1:%d\","
           "\"partitions\":[%s],\"replaying\":[],\"standby\":[%s],"
           "\"at\":%lld,\"seq\":1}",
           instance, port, serving, standby, (long long)at_ms);
  return text;
}

/* Standby holders: n members per partition, never its owner, the same
 * answer whatever order the announcements came in, and a member leaving
 * moves only the partitions it was chosen for. */
static void test_standby_ranking(void **state) {
  (void)state;
  static const char *names[] = {"a", "b", "c", "d"};
  tly_members_map_t *map = tly_members_map_new(STALE_MS, secret());
  tly_members_map_t *reverse = tly_members_map_new(STALE_MS, secret());
  static const char *serving[] = {"0,4", "1,5", "2,6", "3,7"};
  for (int i = 0; i < 4; i++) {
    assert_int_equal(apply(map, names[i],
                           announcement(names[i], 8081 + i, serving[i], "", T0),
                           T0),
                     0);
    assert_int_equal(
        apply(reverse, names[3 - i],
              announcement(names[3 - i], 8084 - i, serving[3 - i], "", T0), T0),
        0);
  }
  int chosen_count[4] = {0};
  const char *before[8][2];
  for (int32_t partition = 0; partition < 8; partition++) {
    const char *chosen[TLY_MEMBERS_STANDBY_MAX],
        *again[TLY_MEMBERS_STANDBY_MAX];
    size_t count = tly_members_map_standbys(map, partition, 2, T0, chosen);
    assert_int_equal(count, 2);
    assert_int_equal(tly_members_map_standbys(reverse, partition, 2, T0, again),
                     2);
    const char *owner = names[partition % 4];
    assert_string_not_equal(chosen[0], chosen[1]);
    for (size_t k = 0; k < count; k++) {
      assert_string_not_equal(chosen[k], owner);
      assert_string_equal(chosen[k], again[k]);
      chosen_count[chosen[k][0] - 'a']++;
      before[partition][k] = chosen[k];
    }
    /* More than there are others: every other member, no more. */
    assert_int_equal(tly_members_map_standbys(map, partition, 8, T0, chosen),
                     3);
    /* Zero: none. */
    assert_int_equal(tly_members_map_standbys(map, partition, 0, T0, chosen),
                     0);
  }
  /* Spread: with 16 choices over 4 members none holds them all. */
  for (int i = 0; i < 4; i++)
    assert_true(chosen_count[i] < 8);
  /* d leaves: a partition whose standbys did not include d keeps them. */
  assert_int_equal(apply(map, "d", NULL, T0 + 1), 0);
  for (int32_t partition = 0; partition < 8; partition++) {
    if (partition % 4 == 3 || !strcmp(before[partition][0], "d") ||
        !strcmp(before[partition][1], "d"))
      continue;
    const char *chosen[TLY_MEMBERS_STANDBY_MAX];
    assert_int_equal(
        tly_members_map_standbys(map, partition, 2, T0 + 1, chosen), 2);
    assert_string_equal(chosen[0], before[partition][0]);
    assert_string_equal(chosen[1], before[partition][1]);
  }
  tly_members_map_free(map);
  tly_members_map_free(reverse);
}

/* Two claim a partition: a read goes to the one serving it only while
 * the other has been silent over half the staleness timeout. */
static void test_successor_for_reads(void **state) {
  (void)state;
  tly_members_owner_t owner;
  tly_members_map_t *map = tly_members_map_new(STALE_MS, secret());
  assert_int_equal(apply(map, "a", announcement("a", 8081, "0", "", T0), T0),
                   0);
  assert_int_equal(
      apply(map, "b", announcement("b", 8082, "0", "", T0 + 600), T0 + 600), 0);
  /* Both announced recently: moving, no successor. */
  assert_int_equal(tly_members_map_owner(map, 0, T0 + 700, &owner),
                   TLY_OWNER_CONFLICT);
  assert_int_equal(tly_members_map_successor(map, 0, T0 + 700, &owner), 0);
  /* a silent for 1,200 ms (over 750): b serves the reads. */
  assert_int_equal(tly_members_map_owner(map, 0, T0 + 1200, &owner),
                   TLY_OWNER_CONFLICT);
  assert_int_equal(tly_members_map_successor(map, 0, T0 + 1200, &owner), 1);
  assert_int_equal(owner.state, TLY_OWNER_SERVING);
  assert_string_equal(owner.instance, "b");
  assert_string_equal(owner.http, "http://127.0.0.1:8082");
  /* A recent claimant that only replays is no successor. */
  assert_int_equal(
      apply(map, "b", announcement("b", 8082, "", "0", T0 + 1100), T0 + 1100),
      0);
  assert_int_equal(tly_members_map_successor(map, 0, T0 + 1200, &owner), 0);
  /* A partition nobody else claims has no successor (its owner answers). */
  assert_int_equal(tly_members_map_successor(map, 5, T0 + 1200, &owner), 0);
  tly_members_map_free(map);
}

/* The holder a read is forwarded to: a fresh member announcing a standby
 * copy, never the asking instance itself, none once it is stale. */
static void test_standby_holder(void **state) {
  (void)state;
  tly_members_owner_t holder;
  tly_members_map_t *map = tly_members_map_new(STALE_MS, secret());
  assert_int_equal(
      apply(map, "a", announcement_standby("a", 8081, "0", "1,2", T0), T0), 0);
  assert_int_equal(
      apply(map, "b", announcement_standby("b", 8082, "1", "0", T0), T0), 0);
  assert_int_equal(tly_members_map_standby_holder(map, 1, "b", T0, &holder), 1);
  assert_string_equal(holder.instance, "a");
  assert_string_equal(holder.http, "http://127.0.0.1:8081");
  /* Not itself. */
  assert_int_equal(tly_members_map_standby_holder(map, 1, "a", T0, &holder), 0);
  assert_int_equal(tly_members_map_standby_holder(map, 0, "a", T0, &holder), 1);
  assert_string_equal(holder.instance, "b");
  /* Nobody holds 3. */
  assert_int_equal(tly_members_map_standby_holder(map, 3, NULL, T0, &holder),
                   0);
  /* Stale: gone. */
  assert_int_equal(
      tly_members_map_standby_holder(map, 2, "b", T0 + STALE_MS + 1, &holder),
      0);
  /* The list round-trips through encode and decode. */
  int32_t standby[] = {4, 9};
  tly_members_announcement_t in = {
      .standby = standby, .standby_count = 2, .at_ms = T0, .seq = 1};
  snprintf(in.instance, sizeof(in.instance), "c");
  snprintf(in.http, sizeof(in.http), "http://127.0.0.1:8083");
  char *text = tly_members_encode(&in), errstr[256];
  assert_non_null(text);
  tly_members_announcement_t out;
  assert_int_equal(
      tly_members_decode(text, strlen(text), &out, errstr, sizeof(errstr)), 0);
  assert_int_equal(out.standby_count, 2);
  assert_int_equal(out.standby[1], 9);
  tly_members_announcement_clear(&out);
  free(text);
  tly_members_map_free(map);
}

static void test_stale_members_expire(void **state) {
  (void)state;
  tly_members_owner_t owner;
  tly_members_map_t *map = tly_members_map_new(STALE_MS, secret());
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
  /* An old announcement read later (at startup) is ignored as stale. */
  assert_int_equal(
      apply(map, "c", announcement("c", 8083, "5", "", T0), T0 + 10000),
      TLY_MEMBERS_STALE);
  assert_int_equal(tly_members_map_owner(map, 5, T0 + 10000, &owner),
                   TLY_OWNER_UNKNOWN);
  /* A clock ahead of ours counts from when we read it. */
  assert_int_equal(
      apply(map, "d", announcement("d", 8084, "6", "", T0 + 15000), T0 + 10000),
      TLY_MEMBERS_APPLIED);
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
  tly_members_map_t *map = tly_members_map_new(STALE_MS, secret());
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
  tly_members_map_t *map = tly_members_map_new(STALE_MS, secret());
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
  /* Refused and ignored, though signed: another instance's value under
   * this key, garbage. */
  assert_int_equal(apply(map, "c", announcement("b", 8082, "7", "", T0), T0),
                   TLY_MEMBERS_MALFORMED);
  assert_int_equal(apply_signed(map, secret(), "c", "{", T0, T0),
                   TLY_MEMBERS_MALFORMED);
  assert_int_equal(tly_members_map_owner(map, 7, T0 + 1, &owner),
                   TLY_OWNER_UNKNOWN);
  assert_int_equal(tly_members_map_owner(map, 1, T0 + 1, &owner),
                   TLY_OWNER_SERVING);
  tly_members_map_free(map);
}

/* The MAC itself: valid, tampered (key, time, value, MAC), wrong secret. */
static void test_announcement_mac(void **state) {
  (void)state;
  const char *value = announcement("a", 8081, "0,1", "", T0);
  size_t len = strlen(value);
  char mac[TLY_CLUSTER_MAC_HEX_LEN + 1], other[TLY_CLUSTER_MAC_HEX_LEN + 1];
  tly_cluster_members_mac(secret(), "a", 1, T0, value, len, mac);
  assert_int_equal(strlen(mac), TLY_CLUSTER_MAC_HEX_LEN);
  assert_true(tly_cluster_members_verify(secret(), "a", 1, T0, value, len, mac,
                                         strlen(mac)));
  /* Tampered: the value (one byte), the key, the time. */
  char tampered[1024];
  snprintf(tampered, sizeof(tampered), "%s", value);
  tampered[strlen(tampered) - 2] ^= 1;
  assert_false(tly_cluster_members_verify(secret(), "a", 1, T0, tampered, len,
                                          mac, strlen(mac)));
  assert_false(tly_cluster_members_verify(secret(), "b", 1, T0, value, len, mac,
                                          strlen(mac)));
  assert_false(tly_cluster_members_verify(secret(), "a", 1, T0 + 1, value, len,
                                          mac, strlen(mac)));
  /* Another secret: another MAC, and ours does not verify under it. */
  tly_cluster_members_mac(other_secret(), "a", 1, T0, value, len, other);
  assert_string_not_equal(mac, other);
  assert_false(tly_cluster_members_verify(other_secret(), "a", 1, T0, value,
                                          len, mac, strlen(mac)));
  /* The MAC tampered, cut short, not hex, absent; either case is fine. */
  char bad[TLY_CLUSTER_MAC_HEX_LEN + 1];
  snprintf(bad, sizeof(bad), "%s", mac);
  bad[10] = bad[10] == '0' ? '1' : '0';
  assert_false(tly_cluster_members_verify(secret(), "a", 1, T0, value, len, bad,
                                          strlen(bad)));
  assert_false(tly_cluster_members_verify(secret(), "a", 1, T0, value, len, mac,
                                          strlen(mac) - 2));
  snprintf(bad, sizeof(bad), "%s", mac);
  bad[0] = 'g';
  assert_false(tly_cluster_members_verify(secret(), "a", 1, T0, value, len, bad,
                                          strlen(bad)));
  assert_false(
      tly_cluster_members_verify(secret(), "a", 1, T0, value, len, NULL, 0));
  assert_false(tly_cluster_members_verify(NULL, "a", 1, T0, value, len, mac,
                                          strlen(mac)));
  for (char *c = mac; *c; c++)
    *c = (char)(*c >= 'a' && *c <= 'f' ? *c - 'a' + 'A' : *c);
  assert_true(tly_cluster_members_verify(secret(), "a", 1, T0, value, len, mac,
                                         strlen(mac)));
  /* A tombstone is not an empty value. */
  tly_cluster_members_mac(secret(), "a", 1, T0, NULL, 0, mac);
  assert_false(tly_cluster_members_verify(secret(), "a", 1, T0, "", 0, mac,
                                          strlen(mac)));
  assert_true(tly_cluster_members_verify(secret(), "a", 1, T0, NULL, 0, mac,
                                         strlen(mac)));
}

/* Forged records change nothing: unsigned, another secret, tampered, a
 * forged tombstone, a missing or mismatched time, a map without secret. */
static void test_forged_records_are_ignored(void **state) {
  (void)state;
  tly_members_owner_t owner;
  char errstr[256];
  tly_members_map_t *map = tly_members_map_new(STALE_MS, secret());
  assert_int_equal(apply(map, "a", announcement("a", 8081, "0,1", "", T0), T0),
                   TLY_MEMBERS_APPLIED);
  /* The forger claims a's partitions under its own key and under a's. */
  const char *forged = announcement("evil", 6666, "0,1,2", "", T0 + 10);
  assert_int_equal(apply_signed(map, NULL, "evil", forged, T0 + 10, T0 + 10),
                   TLY_MEMBERS_BAD_MAC);
  assert_int_equal(
      apply_signed(map, other_secret(), "evil", forged, T0 + 10, T0 + 10),
      TLY_MEMBERS_BAD_MAC);
  const char *as_a = announcement("a", 6666, "0,1,2", "", T0 + 10);
  assert_int_equal(apply_signed(map, NULL, "a", as_a, T0 + 10, T0 + 10),
                   TLY_MEMBERS_BAD_MAC);
  /* A's genuine MAC on the forger's value (tampered). */
  char at[24], mac[TLY_CLUSTER_MAC_HEX_LEN + 1];
  const char *genuine = announcement("a", 8081, "0,1", "", T0 + 10);
  tly_cluster_members_mac(secret(), "a", 1, T0 + 10, genuine, strlen(genuine),
                          mac);
  snprintf(at, sizeof(at), "%lld", (long long)(T0 + 10));
  tly_members_signature_t signature = {
      .at = at, .at_len = strlen(at), .mac = mac, .mac_len = strlen(mac)};
  as_a = announcement("a", 6666, "0,1,2", "", T0 + 10);
  assert_int_equal(tly_members_map_apply(map, "a", 1, as_a, strlen(as_a),
                                         &signature, T0 + 10, errstr,
                                         sizeof(errstr)),
                   TLY_MEMBERS_BAD_MAC);
  /* No time header: nothing to check the MAC against. */
  signature.at = NULL;
  assert_int_equal(tly_members_map_apply(map, "a", 1, genuine, strlen(genuine),
                                         &signature, T0 + 10, errstr,
                                         sizeof(errstr)),
                   TLY_MEMBERS_BAD_MAC);
  /* Signed, but the header's time is not the value's. */
  assert_int_equal(apply_signed(map, secret(), "a", genuine, T0 + 11, T0 + 11),
                   TLY_MEMBERS_MALFORMED);
  /* A forged tombstone does not remove a. */
  assert_int_equal(apply_signed(map, NULL, "a", NULL, T0 + 20, T0 + 20),
                   TLY_MEMBERS_BAD_MAC);
  assert_int_equal(
      apply_signed(map, other_secret(), "a", NULL, T0 + 20, T0 + 20),
      TLY_MEMBERS_BAD_MAC);
  for (int32_t p = 0; p <= 2; p++) {
    tly_owner_state_t expected = p < 2 ? TLY_OWNER_SERVING : TLY_OWNER_UNKNOWN;
    assert_int_equal(tly_members_map_owner(map, p, T0 + 20, &owner), expected);
    if (p < 2)
      assert_string_equal(owner.http, "http://127.0.0.1:8081");
  }
  assert_int_equal(tly_members_map_count(map, T0 + 20), 1);
  tly_members_map_free(map);
  /* Without a secret nothing is believed. */
  map = tly_members_map_new(STALE_MS, NULL);
  assert_int_equal(apply(map, "a", announcement("a", 8081, "0", "", T0), T0),
                   TLY_MEMBERS_BAD_MAC);
  assert_int_equal(tly_members_map_owner(map, 0, T0, &owner),
                   TLY_OWNER_UNKNOWN);
  tly_members_map_free(map);
}

/* Signed records replayed: too old, too far ahead, older than the
 * member's last, or after its tombstone. */
static void test_replays_are_ignored(void **state) {
  (void)state;
  tly_members_owner_t owner;
  tly_members_map_t *map = tly_members_map_new(STALE_MS, secret());
  const char *first = strdup(announcement("a", 8081, "0", "", T0));
  const char *second = strdup(announcement("a", 8081, "1", "", T0 + 100));
  assert_int_equal(apply(map, "a", first, T0), TLY_MEMBERS_APPLIED);
  assert_int_equal(apply(map, "a", second, T0 + 100), TLY_MEMBERS_APPLIED);
  /* The first again, within the window: older than a's last. */
  assert_int_equal(apply(map, "a", first, T0 + 200), TLY_MEMBERS_REPLAYED);
  assert_int_equal(tly_members_map_owner(map, 0, T0 + 200, &owner),
                   TLY_OWNER_UNKNOWN);
  assert_int_equal(tly_members_map_owner(map, 1, T0 + 200, &owner),
                   TLY_OWNER_SERVING);
  /* Stale: older than the staleness timeout when read; and dated too far
   * ahead (a replay kept for later). */
  assert_int_equal(
      apply(map, "b", announcement("b", 8082, "2", "", T0), T0 + STALE_MS + 1),
      TLY_MEMBERS_STALE);
  assert_int_equal(
      apply(map, "b",
            announcement("b", 8082, "2", "", T0 + TLY_MEMBERS_MAX_AHEAD_MS + 1),
            T0),
      TLY_MEMBERS_STALE);
  assert_int_equal(tly_members_map_owner(map, 2, T0 + 200, &owner),
                   TLY_OWNER_UNKNOWN);
  /* a leaves; its last announcement replayed after the tombstone. */
  assert_int_equal(apply(map, "a", NULL, T0 + 300), TLY_MEMBERS_APPLIED);
  assert_int_equal(tly_members_map_owner(map, 1, T0 + 300, &owner),
                   TLY_OWNER_UNKNOWN);
  assert_int_equal(apply(map, "a", second, T0 + 400), TLY_MEMBERS_REPLAYED);
  assert_int_equal(tly_members_map_owner(map, 1, T0 + 400, &owner),
                   TLY_OWNER_UNKNOWN);
  assert_int_equal(tly_members_map_count(map, T0 + 400), 0);
  /* a restarts: newer than its tombstone, applied. */
  assert_int_equal(
      apply(map, "a", announcement("a", 8081, "3", "", T0 + 500), T0 + 500),
      TLY_MEMBERS_APPLIED);
  assert_int_equal(tly_members_map_owner(map, 3, T0 + 500, &owner),
                   TLY_OWNER_SERVING);
  assert_string_equal(tly_members_verdict_name(TLY_MEMBERS_BAD_MAC), "bad_mac");
  free((void *)first);
  free((void *)second);
  tly_members_map_free(map);
}

/* The credential of a forwarded request: good for its request at its
 * owner until it expires, nothing else. */
static void test_forward_credential(void **state) {
  (void)state;
  char credential[TLY_FORWARD_CREDENTIAL_MAX];
  tly_forward_scope_t scope = {.method = "GET",
                               .target = "/v1/subjects/user:a/usage?at=1",
                               .owner_instance = "b"};
  int64_t expiry = T0 + TLY_FORWARD_CREDENTIAL_TTL_MS;
  assert_int_equal(tly_cluster_forward_credential(secret(), &scope, expiry,
                                                  credential,
                                                  sizeof(credential)),
                   0);
  assert_int_equal(tly_cluster_forward_check(secret(), credential, &scope, T0),
                   TLY_FORWARD_AUTH_OK);
  assert_int_equal(
      tly_cluster_forward_check(secret(), credential, &scope, expiry),
      TLY_FORWARD_AUTH_OK);
  /* Expired, or expiring too far ahead of the owner's clock. */
  assert_int_equal(
      tly_cluster_forward_check(secret(), credential, &scope, expiry + 1),
      TLY_FORWARD_AUTH_EXPIRED);
  assert_int_equal(
      tly_cluster_forward_check(secret(), credential, &scope,
                                T0 - TLY_FORWARD_CREDENTIAL_TTL_MS - 1),
      TLY_FORWARD_AUTH_EXPIRED);
  /* Another request, owner, method, body, secret: invalid. */
  tly_forward_scope_t other = scope;
  other.target = "/v1/subjects/user:b/usage?at=1";
  assert_int_equal(tly_cluster_forward_check(secret(), credential, &other, T0),
                   TLY_FORWARD_AUTH_INVALID);
  other = scope;
  other.owner_instance = "c";
  assert_int_equal(tly_cluster_forward_check(secret(), credential, &other, T0),
                   TLY_FORWARD_AUTH_INVALID);
  other = scope;
  other.method = "POST";
  assert_int_equal(tly_cluster_forward_check(secret(), credential, &other, T0),
                   TLY_FORWARD_AUTH_INVALID);
  other = scope;
  other.body = "{}";
  other.body_len = 2;
  assert_int_equal(tly_cluster_forward_check(secret(), credential, &other, T0),
                   TLY_FORWARD_AUTH_INVALID);
  assert_int_equal(
      tly_cluster_forward_check(other_secret(), credential, &scope, T0),
      TLY_FORWARD_AUTH_INVALID);
  /* A later expiry on the same MAC. */
  char moved[TLY_FORWARD_CREDENTIAL_MAX];
  snprintf(moved, sizeof(moved), "%lld%s", (long long)expiry + 1,
           strchr(credential, '.'));
  assert_int_equal(tly_cluster_forward_check(secret(), moved, &scope, T0),
                   TLY_FORWARD_AUTH_INVALID);
  /* Malformed, missing, no secret here. */
  static const char *const malformed[] = {
      "",
      "abc",
      "123",
      "123.",
      "123.zz",
      ".abc",
      "-1.00",
      ("12345678901234567890.0000000000000000000000000000000000000000000000000"
       "000000000000000")};
  for (size_t i = 0; i < sizeof(malformed) / sizeof(malformed[0]); i++)
    assert_int_equal(
        tly_cluster_forward_check(secret(), malformed[i], &scope, T0),
        TLY_FORWARD_AUTH_MALFORMED);
  char longer[TLY_FORWARD_CREDENTIAL_MAX + 1];
  snprintf(longer, sizeof(longer), "%s0", credential);
  assert_int_equal(tly_cluster_forward_check(secret(), longer, &scope, T0),
                   TLY_FORWARD_AUTH_MALFORMED);
  assert_int_equal(tly_cluster_forward_check(secret(), NULL, &scope, T0),
                   TLY_FORWARD_AUTH_MISSING);
  assert_int_equal(tly_cluster_forward_check(NULL, credential, &scope, T0),
                   TLY_FORWARD_AUTH_NO_SECRET);
  /* No body and an empty one are the same request. */
  other = scope;
  other.body = "";
  assert_int_equal(tly_cluster_forward_check(secret(), credential, &other, T0),
                   TLY_FORWARD_AUTH_OK);
}

/* The secret from the environment or a file, bounded. */
static void test_secret_sources(void **state) {
  (void)state;
  tly_cluster_secret_t loaded;
  char errstr[512], path[] = "/tmp/test_members_secret_XXXXXX";
  unsetenv(TLY_CLUSTER_SECRET_ENV);
  assert_int_equal(
      tly_cluster_secret_load(NULL, &loaded, errstr, sizeof(errstr)), 0);
  setenv(TLY_CLUSTER_SECRET_ENV, "short", 1);
  assert_int_equal(
      tly_cluster_secret_load(NULL, &loaded, errstr, sizeof(errstr)), -1);
  assert_non_null(strstr(errstr, TLY_CLUSTER_SECRET_ENV));
  setenv(TLY_CLUSTER_SECRET_ENV, "0123456789abcdef0123456789abcdef", 1);
  assert_int_equal(
      tly_cluster_secret_load(NULL, &loaded, errstr, sizeof(errstr)), 1);
  assert_int_equal(loaded.len, 32);
  assert_memory_equal(loaded.bytes, secret()->bytes, 32);
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  FILE *file = fdopen(fd, "w");
  fputs("0123456789abcdef0123456789abcdef\n", file);
  fclose(file);
  /* Both: refused. */
  assert_int_equal(
      tly_cluster_secret_load(path, &loaded, errstr, sizeof(errstr)), -1);
  assert_non_null(strstr(errstr, "both"));
  unsetenv(TLY_CLUSTER_SECRET_ENV);
  /* The file's final newline is not part of it. */
  assert_int_equal(
      tly_cluster_secret_load(path, &loaded, errstr, sizeof(errstr)), 1);
  assert_int_equal(loaded.len, 32);
  assert_memory_equal(loaded.bytes, secret()->bytes, 32);
  unlink(path);
  assert_int_equal(
      tly_cluster_secret_load(path, &loaded, errstr, sizeof(errstr)), -1);
  assert_non_null(strstr(errstr, "--cluster-secret-file"));
  tly_cluster_secret_t a, b;
  assert_int_equal(tly_cluster_secret_random(&a), 0);
  assert_int_equal(tly_cluster_secret_random(&b), 0);
  assert_true(a.len >= TLY_CLUSTER_SECRET_MIN);
  assert_memory_not_equal(a.bytes, b.bytes, a.len);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_announcement_mac),
      cmocka_unit_test(test_forged_records_are_ignored),
      cmocka_unit_test(test_replays_are_ignored),
      cmocka_unit_test(test_forward_credential),
      cmocka_unit_test(test_secret_sources),
      cmocka_unit_test(test_decode_round_trip),
      cmocka_unit_test(test_decode_refuses_malformed),
      cmocka_unit_test(test_owner_serving_and_replaying),
      cmocka_unit_test(test_stale_members_expire),
      cmocka_unit_test(test_standby_ranking),
      cmocka_unit_test(test_standby_holder),
      cmocka_unit_test(test_successor_for_reads),
      cmocka_unit_test(test_conflicting_claims_are_moving),
      cmocka_unit_test(test_tombstone_and_bad_records),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
