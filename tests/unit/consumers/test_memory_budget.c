/*
 * test_memory_budget.c - the memory budget's parts (tly_memory.c,
 * tly_processor.h): the shares add up to at most the budget at every size;
 * a part with a floor (RocksDB's, librdkafka's) is held to the larger of
 * its share and its floor, and the bounds stay within the budget from
 * TLY_MEMORY_FLOORLESS_BUDGET up, within the budget + TLY_MEMORY_FLOORS
 * below it; the librdkafka properties follow the bounds, keep librdkafka's
 * rules at the smallest budget, and leave out what the user set.
 */
#include "tly_processor.h"
#include "tly_state_cache.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <librdkafka/rdkafka.h>

static const int64_t budgets[] = {TLY_MEMORY_BUDGET_MIN,
                                  TLY_MEMORY_BUDGET_MIN + 1,
                                  (3LL << 20) + 7,
                                  10LL << 20,
                                  (40LL << 20) - 1,
                                  40LL << 20,
                                  64LL << 20,
                                  (80LL << 20) - 1,
                                  80LL << 20,
                                  (100LL << 20) + 39,
                                  TLY_DEFAULT_MEMORY_BUDGET,
                                  TLY_DEFAULT_MEMORY_BUDGET + 12345,
                                  TLY_MEMORY_BUDGET_MAX - 1,
                                  TLY_MEMORY_BUDGET_MAX};

static void test_shares_add_up_to_at_most_the_budget(void **state) {
  (void)state;
  for (size_t b = 0; b < sizeof(budgets) / sizeof(budgets[0]); b++) {
    int64_t sum = 0;
    for (int i = 0; i < TLY_MEMORY_PARTS; i++) {
      int64_t share = tly_memory_share(budgets[b], (tly_memory_part_t)i);
      assert_true(share > 0);
      sum += share;
    }
    assert_true(sum <= budgets[b]);
    /* Nothing left over but the rounding of the fortieths. */
    assert_true(budgets[b] - sum < 40);
  }
  /* Every step of a MiB from the least budget to 128 MiB too. */
  for (int64_t budget = TLY_MEMORY_BUDGET_MIN; budget <= (128LL << 20);
       budget += (1LL << 20) + 3) {
    int64_t sum = 0;
    for (int i = 0; i < TLY_MEMORY_PARTS; i++)
      sum += tly_memory_share(budget, (tly_memory_part_t)i);
    assert_true(sum <= budget);
  }
}

static void test_the_default_budget_keeps_the_earlier_sizes(void **state) {
  (void)state;
  int64_t gib = TLY_DEFAULT_MEMORY_BUDGET;
  /* The HTTP subject cache keeps a tenth: 65,536 entries at 1 GiB. */
  assert_int_equal(tly_state_cache_slots_for(
                       (size_t)tly_memory_share(gib, TLY_MEMORY_SUBJECT_CACHE)),
                   65536);
  /* RocksDB's block cache at least the 64 MiB it had before. */
  assert_true(tly_memory_share(gib, TLY_MEMORY_ROCKSDB_BLOCK_CACHE) >=
              64LL << 20);
  assert_string_equal(tly_memory_part_name(TLY_MEMORY_ROCKSDB_BLOCK_CACHE),
                      "rocksdb_block_cache");
  assert_string_equal(tly_memory_part_name(TLY_MEMORY_ROCKSDB_MEMTABLES),
                      "rocksdb_memtables");
  assert_string_equal(tly_memory_part_name(TLY_MEMORY_KAFKA_CONSUMER),
                      "kafka_consumer");
  assert_string_equal(tly_memory_part_name(TLY_MEMORY_KAFKA_PRODUCER),
                      "kafka_producer");
  assert_false(tly_memory_part_measured(TLY_MEMORY_KAFKA_CONSUMER));
  assert_true(tly_memory_part_measured(TLY_MEMORY_ROCKSDB_MEMTABLES));
  /* The headroom: 14/40, no floor, measured as the resident set less the
   * other measured parts (librdkafka's, unmeasured, are in it). */
  assert_string_equal(tly_memory_part_name(TLY_MEMORY_HEADROOM), "headroom");
  assert_true(tly_memory_share(gib, TLY_MEMORY_HEADROOM) == gib / 40 * 14);
  assert_true(tly_memory_share(gib, TLY_MEMORY_DEDUPE) == gib / 40 * 6);
  assert_int_equal(tly_memory_floor(TLY_MEMORY_HEADROOM), 0);
  assert_true(tly_memory_part_measured(TLY_MEMORY_HEADROOM));
  uint64_t bytes[TLY_MEMORY_PARTS] = {0};
  bytes[TLY_MEMORY_DEDUPE] = 100;
  bytes[TLY_MEMORY_OVERLAY] = 50;
  bytes[TLY_MEMORY_KAFKA_CONSUMER] = 1000; /* not measured: not taken off */
  bytes[TLY_MEMORY_HEADROOM] = 7;          /* its own: not taken off */
  assert_true(tly_memory_headroom_bytes(1000, bytes) == 850);
  assert_true(tly_memory_headroom_bytes(150, bytes) == 0);
  assert_true(tly_memory_headroom_bytes(100, bytes) == 0);
}

static void test_bounds_with_floors(void **state) {
  (void)state;
  int64_t floors = 0;
  for (int i = 0; i < TLY_MEMORY_PARTS; i++)
    floors += tly_memory_floor((tly_memory_part_t)i);
  assert_int_equal(floors, TLY_MEMORY_FLOORS);
  for (size_t b = 0; b < sizeof(budgets) / sizeof(budgets[0]); b++) {
    int64_t budget = budgets[b], sum = 0;
    for (int i = 0; i < TLY_MEMORY_PARTS; i++) {
      tly_memory_part_t part = (tly_memory_part_t)i;
      int64_t bound = tly_memory_bound(budget, part);
      assert_true(bound >= tly_memory_share(budget, part));
      assert_true(bound >= tly_memory_floor(part));
      sum += bound;
    }
    if (budget >= TLY_MEMORY_FLOORLESS_BUDGET)
      assert_true(sum <= budget);
    else
      assert_true(sum <= budget + TLY_MEMORY_FLOORS);
  }
  /* Below the floorless budget a floor does apply (the constant is the
   * least such budget, not a loose one). */
  int raised = 0;
  for (int i = 0; i < TLY_MEMORY_PARTS; i++)
    raised |=
        tly_memory_bound(TLY_MEMORY_FLOORLESS_BUDGET - 1,
                         (tly_memory_part_t)i) >
        tly_memory_share(TLY_MEMORY_FLOORLESS_BUDGET - 1, (tly_memory_part_t)i);
  assert_true(raised);
  /* RocksDB's parts at the least budget: its minimums. */
  assert_int_equal(
      tly_memory_bound(TLY_MEMORY_BUDGET_MIN, TLY_MEMORY_ROCKSDB_MEMTABLES),
      (int64_t)TLY_STORE_MEMTABLES_MIN);
  assert_int_equal(
      tly_memory_bound(TLY_MEMORY_BUDGET_MIN, TLY_MEMORY_ROCKSDB_BLOCK_CACHE),
      (int64_t)TLY_STORE_BLOCK_CACHE_MIN);
}

/* The value of name in list, as a number; -1 when absent. */
static long long value_of(const char *const *list, const char *name) {
  size_t len = strlen(name);
  for (size_t i = 0; list[i]; i++)
    if (!strncmp(list[i], name, len) && list[i][len] == '=')
      return atoll(list[i] + len + 1);
  return -1;
}

/* librdkafka takes the properties and makes a client of them (its rules:
 * fetch.max.bytes >= message.max.bytes, ranges). */
static void assert_librdkafka_takes(const char *const *list, int consumer) {
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  char err[512];
  for (size_t i = 0; list[i]; i++) {
    char name[128];
    const char *eq = strchr(list[i], '=');
    snprintf(name, sizeof(name), "%.*s", (int)(eq - list[i]), list[i]);
    assert_int_equal(rd_kafka_conf_set(conf, name, eq + 1, err, sizeof(err)),
                     RD_KAFKA_CONF_OK);
  }
  if (consumer)
    assert_int_equal(rd_kafka_conf_set(conf, "group.id", "g", err, sizeof(err)),
                     RD_KAFKA_CONF_OK);
  rd_kafka_t *rk = rd_kafka_new(
      consumer ? RD_KAFKA_CONSUMER : RD_KAFKA_PRODUCER, conf, err, sizeof(err));
  if (!rk)
    fail_msg("librdkafka refused: %s", err);
  rd_kafka_destroy(rk);
}

static void test_kafka_properties_follow_the_bounds(void **state) {
  (void)state;
  char text[TLY_MEMORY_KAFKA_PROPERTIES][TLY_MEMORY_KAFKA_PROPERTY_MAX];
  const char *list[TLY_MEMORY_KAFKA_PROPERTIES + 1];
  for (size_t b = 0; b < sizeof(budgets) / sizeof(budgets[0]); b++) {
    int64_t budget = budgets[b];
    int64_t consumer = tly_memory_bound(budget, TLY_MEMORY_KAFKA_CONSUMER);
    tly_memory_kafka_properties(budget, 1, NULL, text, list);
    long long queued = value_of(list, "queued.max.messages.kbytes");
    long long fetch = value_of(list, "fetch.max.bytes");
    long long partition = value_of(list, "max.partition.fetch.bytes");
    assert_true(queued >= 1 && fetch >= 1000000 && partition >= 1);
    /* Prefetch queue and one fetch in flight: within the part. */
    assert_true(queued * 1024 + fetch <= consumer);
    assert_true(partition <= fetch);
    if (budget <= (1LL << 31))
      assert_librdkafka_takes(list, 1);

    int64_t producer = tly_memory_bound(budget, TLY_MEMORY_KAFKA_PRODUCER);
    tly_memory_kafka_properties(budget, 0, NULL, text, list);
    long long queue = value_of(list, "queue.buffering.max.kbytes");
    /* Two producers (the processor's, the HTTP port's), half each; each
     * holds a record of message.max.bytes. */
    assert_true(queue * 1024 >= 1000000);
    assert_true(2 * queue * 1024 <= producer);
    assert_int_equal(value_of(list, "fetch.max.bytes"), -1);
    if (budget <= (1LL << 31))
      assert_librdkafka_takes(list, 0);
  }
}

static void test_user_settings_win(void **state) {
  (void)state;
  char text[TLY_MEMORY_KAFKA_PROPERTIES][TLY_MEMORY_KAFKA_PROPERTY_MAX];
  const char *list[TLY_MEMORY_KAFKA_PROPERTIES + 1];
  const char *user[] = {"fetch.max.bytes=7000000",
                        "queue.buffering.max.kbytes=5", "linger.ms=1", NULL};
  tly_memory_kafka_properties(64LL << 20, 1, user, text, list);
  assert_int_equal(value_of(list, "fetch.max.bytes"), -1);
  assert_true(value_of(list, "queued.max.messages.kbytes") > 0);
  tly_memory_kafka_properties(64LL << 20, 0, user, text, list);
  assert_null(list[0]);
  /* A larger message.max.bytes raises what must hold one record. */
  const char *big[] = {"message.max.bytes=40000000", NULL};
  tly_memory_kafka_properties(TLY_MEMORY_BUDGET_MIN, 1, big, text, list);
  assert_int_equal(value_of(list, "fetch.max.bytes"), 40000000);
  tly_memory_kafka_properties(TLY_MEMORY_BUDGET_MIN, 0, big, text, list);
  assert_true(value_of(list, "queue.buffering.max.kbytes") * 1024 >= 40000000);
}

static void test_batch_events_fit_the_memtables(void **state) {
  (void)state;
  assert_int_equal(tly_memory_batch_events(TLY_MEMORY_BUDGET_MAX),
                   TLY_DEFAULT_BATCH_EVENTS);
  for (size_t b = 0; b < sizeof(budgets) / sizeof(budgets[0]); b++) {
    int events = tly_memory_batch_events(budgets[b]);
    assert_true(events >= TLY_MEMORY_BATCH_EVENTS_MIN &&
                events <= TLY_DEFAULT_BATCH_EVENTS);
    /* Past the least, a batch's write fits 3/4 of the memtables part. */
    if (events > TLY_MEMORY_BATCH_EVENTS_MIN)
      assert_true((int64_t)events * TLY_MEMORY_COMMIT_BYTES_PER_EVENT <=
                  tly_memory_bound(budgets[b], TLY_MEMORY_ROCKSDB_MEMTABLES) /
                      4 * 3);
  }
  /* It grows with the budget. */
  assert_true(tly_memory_batch_events(64LL << 20) <
              tly_memory_batch_events(TLY_DEFAULT_MEMORY_BUDGET));
}

/* The dedupe part lends the overlay what its indexes do not hold. */
static void test_dedupe_lends_what_it_does_not_hold(void **state) {
  (void)state;
  for (size_t b = 0; b < sizeof(budgets) / sizeof(budgets[0]); b++) {
    int64_t share = tly_memory_share(budgets[b], TLY_MEMORY_DEDUPE);
    assert_int_equal(tly_memory_lent(budgets[b], 0), share);
    assert_int_equal(tly_memory_lent(budgets[b], share / 4), share - share / 4);
    assert_int_equal(tly_memory_lent(budgets[b], share), 0);
    assert_int_equal(tly_memory_lent(budgets[b], share + 12345), 0);
    /* Held + lent never passes the share: the two together stay in it. */
    for (int64_t held = 0; held <= share; held += share / 7 + 1)
      assert_true(held + tly_memory_lent(budgets[b], held) <= share);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_shares_add_up_to_at_most_the_budget),
      cmocka_unit_test(test_the_default_budget_keeps_the_earlier_sizes),
      cmocka_unit_test(test_bounds_with_floors),
      cmocka_unit_test(test_kafka_properties_follow_the_bounds),
      cmocka_unit_test(test_user_settings_win),
      cmocka_unit_test(test_batch_events_fit_the_memtables),
      cmocka_unit_test(test_dedupe_lends_what_it_does_not_hold),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
