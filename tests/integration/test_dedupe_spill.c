/*
 * test_dedupe_spill.c - duplicates of event ids older than what memory
 * holds are refused exactly (issue 21), with the smallest memory budget
 * (--memory-budget 1048576: the dedupe share is 6/40, ~154 KiB, a few thousand
 * ids):
 *   1. 48,000 distinct events: the dedupe index spills (the metric says
 *      so) and stays within its share; the outbox empties (the changelog's
 *      records of a commit each under message.max.bytes);
 *   2. the 2,000 oldest ids again, and 1,000 new events: every duplicate
 *      refused (looked up in RocksDB), every new event counted;
 *   3. SIGKILL, restart on the same state dir (assignment loads only what
 *      was not spilled), duplicates of old and middle ids again with new
 *      events: refused and counted exactly;
 *   4. corrections (usage_corrected) of the oldest events, long spilled:
 *      their contributions are found through the spilled ids' event time
 *      (the chunks of their hour, consumers/tly_contributions.c), amended
 *      and retracted exactly; and of events of the last batches;
 * each with every subject's totals exact to the unit. A second test:
 *   5. a graceful stop saves each partition's spilled-id filter; the
 *      restart, with a smaller budget, takes them (no build: held back by
 *      the fault-injection file, and not needed) while its own assignment
 *      spills more ids into them; every id sent again is refused, new ones
 *      counted, and new ids are answered by the saved filters.
 */
#include "harness.h"

#include "tally_producer.h"

#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#define PARTITIONS 4
#define SUBJECTS 8
#define FIRST 48000
#define AT_MS 1763800000000LL

static long long expected_quantity[SUBJECTS], expected_events[SUBJECTS];

/* Event i is always the same event: subject i % SUBJECTS, quantity
 * 1 + i % 7. counted: add it to the expected totals (a duplicate is
 * not). */
static void produce(const char *bootstrap, int from, int to, int counted) {
  tally_producer_conf_t conf = {.brokers = bootstrap};
  char errstr[512], id[32], event_id[32];
  tally_producer_t *producer =
      tally_producer_new(&conf, errstr, sizeof(errstr));
  assert_non_null(producer);
  for (int i = from; i < to; i++) {
    int s = i % SUBJECTS;
    tly_event_t event = {0};
    snprintf(id, sizeof(id), "sp-%d", s);
    snprintf(event_id, sizeof(event_id), "spill-event-%06d", i);
    event.event_id = event_id;
    event.occurred_at_ms = AT_MS + i;
    event.subject_kind = TLY_SUBJECT_USER;
    event.subject_id = id;
    event.body_kind = TLY_BODY_USAGE_RECORDED;
    event.body.usage.feature = "api_calls";
    event.body.usage.unit = "call";
    event.body.usage.quantity = 1 + i % 7;
    assert_int_equal(
        tally_producer_send(producer, &event, NULL, errstr, sizeof(errstr)), 0);
    if (counted) {
      expected_quantity[s] += event.body.usage.quantity;
      expected_events[s]++;
    }
  }
  assert_int_equal(tally_producer_flush(producer, 60000), 0);
  tally_producer_stats_t stats;
  tally_producer_stats(producer, &stats);
  assert_int_equal(stats.failed, 0);
  tally_producer_destroy(producer);
}

/* A correction of event i (as produce made it) to quantity (0 retracts
 * it), with its own event id; the expected totals follow. */
static void correct(const char *bootstrap, int i, int quantity) {
  tally_producer_conf_t conf = {.brokers = bootstrap};
  char errstr[512], id[32], event_id[40], corrects[32];
  tally_producer_t *producer =
      tally_producer_new(&conf, errstr, sizeof(errstr));
  assert_non_null(producer);
  int s = i % SUBJECTS;
  tly_event_t event = {0};
  snprintf(id, sizeof(id), "sp-%d", s);
  snprintf(event_id, sizeof(event_id), "spill-fix-%06d", i);
  snprintf(corrects, sizeof(corrects), "spill-event-%06d", i);
  event.event_id = event_id;
  event.occurred_at_ms = AT_MS + FIRST + 2000;
  event.subject_kind = TLY_SUBJECT_USER;
  event.subject_id = id;
  event.body_kind = TLY_BODY_USAGE_CORRECTED;
  event.body.usage.corrects = corrects;
  event.body.usage.feature = "api_calls";
  event.body.usage.unit = "call";
  event.body.usage.quantity = quantity;
  assert_int_equal(
      tally_producer_send(producer, &event, NULL, errstr, sizeof(errstr)), 0);
  assert_int_equal(tally_producer_flush(producer, 60000), 0);
  tally_producer_destroy(producer);
  expected_quantity[s] += quantity - (1 + i % 7);
  expected_events[s] -= quantity == 0;
}

static void verify_totals(int port) {
  for (int s = 0; s < SUBJECTS; s++) {
    char path[128], *body;
    long status;
    json_error_t error;
    snprintf(path, sizeof(path), "/v1/subjects/user:sp-%d/usage?at=%lld", s,
             AT_MS);
    assert_int_equal(th_http_get(port, path, &status, &body), 0);
    assert_int_equal(status, 200);
    json_t *json = json_loads(body, 0, &error);
    free(body);
    json_t *row =
        json_object_get(json_object_get(json, "features"), "api_calls");
    assert_int_equal(json_integer_value(json_object_get(row, "events")),
                     expected_events[s]);
    assert_int_equal(json_integer_value(json_object_get(row, "quantity")),
                     expected_quantity[s]);
    json_decref(json);
  }
}

static void settle(const th_run_t *run, const char *bootstrap) {
  assert_int_equal(th_wait_caught_up(run->port, bootstrap, "tally.usage",
                                     PARTITIONS, 120000),
                   0);
}

static long long dedupe_metric(int port, const char *name) {
  return th_metric_labeled(port, name, "{part=\"dedupe\"}");
}

static void test_old_duplicates_refused_with_small_budget(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  char *dir = th_mkdtemp("dedupe-spill");
  char state_dir[600];
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  const char *extra[] = {"--memory-budget", "1048576", NULL};
  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, extra), 0);

  /* 1. More ids than the share holds. */
  produce(broker.bootstrap, 0, FIRST, 1);
  settle(&run, broker.bootstrap);
  long long spilled = th_metric_sum(run.port, "tally_dedupe_spilled_ids_total");
  long long held = dedupe_metric(run.port, "tally_memory_bytes");
  long long share = dedupe_metric(run.port, "tally_memory_budget_bytes");
  printf("# %d ids: %lld spilled, dedupe memory %lld of %lld bytes\n", FIRST,
         spilled, held, share);
  assert_int_equal(share, 1048576 / 40 * 6); /* tly_memory_share */
  assert_true(spilled >= FIRST / 2);
  assert_true(held > 0 && held <= share);
  verify_totals(run.port);
  /* Every output reached Kafka, the changelog's records included: a
   * commit's dedupe blob and contributions of a partition are one record
   * each, kept under message.max.bytes (TLY_CHANGELOG_BATCH_BYTES); one
   * over it was never sent and held the outbox for good. */
  assert_int_equal(th_wait_outbox_empty(run.port, 30000), 0);

  /* 2. The oldest ids again: none is in memory any more. */
  produce(broker.bootstrap, 0, 2000, 0);
  produce(broker.bootstrap, FIRST, FIRST + 1000, 1);
  settle(&run, broker.bootstrap);
  assert_int_equal(th_metric_sum(run.port, "tally_duplicates_total"), 2000);
  assert_int_equal(th_metric_sum(run.port, "tally_events_folded_total"),
                   FIRST + 1000);
  long long reads = th_metric_sum(run.port, "tally_dedupe_store_reads_total");
  long long skips = th_metric_sum(run.port, "tally_dedupe_filter_skips_total");
  printf("# old duplicates: %lld RocksDB reads, %lld misses the filter "
         "answered\n",
         reads, skips);
  /* Most of them from RocksDB: a partition holding fewer ids than the
   * others may keep its oldest blob in memory (the partition holding the
   * most spills first), so not necessarily all 2,000. The 1,000 new ids
   * of spilled partitions: mostly answered by the filter, no read. */
  assert_true(reads >= 1000);
  assert_true(skips > 0);
  verify_totals(run.port);

  /* 3. Killed; the restart loads only the blobs not spilled, and builds
   * the spilled ids' filters off the fold thread (tly_filter_build.c):
   * held back here (a fault-injection file), so this whole step folds with
   * every filter pending, each miss read from RocksDB. */
  char hold[600];
  snprintf(hold, sizeof(hold), "%s/hold-filters", dir);
  FILE *gate = fopen(hold, "w");
  assert_non_null(gate);
  fclose(gate);
  setenv("TALLY_FAULT_FILTER_HOLD_FILE", hold, 1);
  th_kill9(run.pid);
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, extra), 0);
  unsetenv("TALLY_FAULT_FILTER_HOLD_FILE");
  produce(broker.bootstrap, 0, 1000, 0);
  produce(broker.bootstrap, 12000, 13000, 0);
  produce(broker.bootstrap, FIRST + 500, FIRST + 1000, 0);
  produce(broker.bootstrap, FIRST + 1000, FIRST + 1500, 1);
  settle(&run, broker.bootstrap);
  assert_int_equal(th_metric_sum(run.port, "tally_duplicates_total"), 2500);
  long long building = th_metric_sum(run.port, "tally_dedupe_filters_building");
  reads = th_metric_sum(run.port, "tally_dedupe_store_reads_total");
  printf("# after the restart, filters pending in %lld partitions: %lld "
         "RocksDB reads, %lld filter answers\n",
         building, reads,
         th_metric_sum(run.port, "tally_dedupe_filter_skips_total"));
  assert_true(building > 0);
  assert_int_equal(th_metric_sum(run.port, "tally_dedupe_filter_skips_total"),
                   0);        /* no filter answers before it is whole */
  assert_true(reads >= 2000); /* the duplicates of spilled ids, at least */
  held = dedupe_metric(run.port, "tally_memory_bytes");
  printf("# after the restart: dedupe memory %lld of %lld bytes\n", held,
         share);
  assert_true(held <= share);
  verify_totals(run.port);

  /* The filters built and adopted: new ids are answered by them again,
   * old ones still refused. */
  unlink(hold);
  long long deadline = th_now_ms() + 60000;
  while (th_metric_sum(run.port, "tally_dedupe_filters_building") > 0 &&
         th_now_ms() < deadline)
    th_sleep_ms(100); /* adopted at the start of a round, idle or not */
  assert_int_equal(th_metric_sum(run.port, "tally_dedupe_filters_building"), 0);
  produce(broker.bootstrap, 1000, 1500, 0);
  produce(broker.bootstrap, FIRST + 1500, FIRST + 2500, 1);
  settle(&run, broker.bootstrap);
  assert_int_equal(th_metric_sum(run.port, "tally_duplicates_total"), 3000);
  assert_true(th_metric_sum(run.port, "tally_dedupe_filter_skips_total") > 0);
  verify_totals(run.port);

  /* 4. Corrections of spilled originals (the oldest ids) and of recent
   * ones: each found, exactly. */
  long long dead = th_metric_sum(run.port, "tally_dead_letters_total");
  for (int i = 0; i < 24; i++)
    correct(broker.bootstrap, i * 7, i % 3 ? 100 + i : 0);
  for (int i = FIRST + 2400; i < FIRST + 2408; i++)
    correct(broker.bootstrap, i, i % 2 ? 50 : 0);
  settle(&run, broker.bootstrap);
  assert_int_equal(th_metric_sum(run.port, "tally_dead_letters_total"), dead);
  verify_totals(run.port);

  assert_int_equal(th_stop(run.pid), 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

static void test_saved_filters_taken_after_a_graceful_stop(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  char *dir = th_mkdtemp("dedupe-saved");
  char state_dir[600], hold[600];
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  snprintf(hold, sizeof(hold), "%s/hold-filters", dir);
  memset(expected_quantity, 0, sizeof(expected_quantity));
  memset(expected_events, 0, sizeof(expected_events));
  /* 8 MiB: its dedupe share (6/40, ~1.2 MiB, less the room kept for a
   * batch's ids, up to a quarter of it, and the filters' bytes) spills
   * some of the ~1.8 MB of ids and keeps several times the smaller
   * budget's whole share (~154 KiB). At 3 MiB (a 460 KiB share) it kept
   * too little to be sure of that: one CI run's restart spilled nothing. */
  const char *larger[] = {"--memory-budget", "8388608", NULL};
  const char *smaller[] = {"--memory-budget", "1048576", NULL};
  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, larger), 0);
  /* As a live stream: commits of a few thousand events, not one of all. */
  for (int from = 0; from < FIRST; from += FIRST / 8) {
    produce(broker.bootstrap, from, from + FIRST / 8, 1);
    settle(&run, broker.bootstrap);
  }
  long long spilled = th_metric_sum(run.port, "tally_dedupe_spilled_ids_total");
  assert_true(spilled > 0);
  /* Every filter whole before the stop (none was built: a first run). */
  assert_int_equal(th_metric_sum(run.port, "tally_dedupe_filters_building"), 0);
  assert_int_equal(th_stop(run.pid), 0);

  /* The restart with an eighth of the budget: its assignment spills what
   * no longer fits, into the filters it takes. No build may run. */
  FILE *gate = fopen(hold, "w");
  assert_non_null(gate);
  fclose(gate);
  setenv("TALLY_FAULT_FILTER_HOLD_FILE", hold, 1);
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, smaller), 0);
  unsetenv("TALLY_FAULT_FILTER_HOLD_FILE");
  settle(&run, broker.bootstrap); /* assigned, nothing new to fold */
  long long respilled =
      th_metric_sum(run.port, "tally_dedupe_spilled_ids_total");
  long long loaded =
      th_metric_sum(run.port, "tally_dedupe_filters_loaded_total");
  printf("# after the graceful stop: %lld saved filters taken, %lld ids "
         "spilled by the assignment (%lld before the stop)\n",
         loaded, respilled, spilled);
  assert_true(loaded > 0 && loaded <= PARTITIONS);
  assert_true(respilled > 0); /* the assignment's own spill happened */
  assert_int_equal(th_metric_sum(run.port, "tally_dedupe_filters_building"), 0);

  /* Every id again (the oldest, spilled before the stop; the newest, which
   * the smaller budget spilled at the assignment), then new ones. */
  produce(broker.bootstrap, 0, FIRST, 0);
  produce(broker.bootstrap, FIRST, FIRST + 2000, 1);
  settle(&run, broker.bootstrap);
  assert_int_equal(th_metric_sum(run.port, "tally_duplicates_total"), FIRST);
  assert_int_equal(th_metric_sum(run.port, "tally_events_folded_total"), 2000);
  assert_true(th_metric_sum(run.port, "tally_dedupe_filter_skips_total") > 0);
  verify_totals(run.port);

  assert_int_equal(th_stop(run.pid), 0);
  unlink(hold);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_old_duplicates_refused_with_small_budget),
      cmocka_unit_test(test_saved_filters_taken_after_a_graceful_stop),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
