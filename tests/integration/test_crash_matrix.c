/*
 * test_crash_matrix.c - the billing fold under crashes, end to end.
 *
 * 200,000 events over 2,000 subjects, paced so the stream lasts through
 * every crash, with a plan whose limits and credits each subject crosses
 * at every threshold. The processor is SIGKILLed at least 20 times: by the
 * test at random moments, and by its own fault injection right after Kafka
 * acknowledged an alert and before the outbox delete (the window the
 * recovery reconciliation exists for). Afterwards, for every subject, usage
 * and credits equal a reference computed here from the test's own input,
 * and the alerts topic holds exactly the expected alerts, each once.
 *
 * With the smallest memory budget (--memory-budget 1048576: 512 KiB of
 * event ids, a few thousand), so the dedupe index spills to RocksDB all
 * along, and 1 % of the stream duplicates of earlier events (random, most
 * of them long spilled), which must all be refused: spilling under
 * SIGKILL, exact to the unit. The store holds spilled ids at the end.
 *
 * With corrections (usage_corrected, tly_corrections.h): after every 50th
 * event, one of that event's subject: mostly amending or retracting a
 * random earlier event of the stream (some the same original again: the
 * latest wins; some right after it, in the same batch), folded into the
 * reference exactly as the product defines it; one in ten names an id
 * never sent and one in ten an earlier correction's id (a correction is
 * not correctable): those must be dead-lettered exactly once each with
 * their reason and count nothing. Usage, tokens, events, cost, credits,
 * the hourly buckets and their model group (the corrections move the
 * original's group, tly_dims.h) equal the reference; each threshold fires
 * once at the highest value reached (a correction that lowers a value
 * fires and re-arms nothing).
 */
#include "harness.h"

#include "reference.h"
#include "tly_store.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define PARTITIONS 24
#define SUBJECTS 2000
#define EVENTS_PER_SECOND 2000
/* TALLY_CRASH_MATRIX_EVENTS, _SUBJECTS (at most SUBJECTS; keep about 100
 * events per subject, so each crosses every threshold) and _KILLS shrink
 * the matrix: scripts/test.sh does for the sanitizer run, whose point is
 * memory errors on these paths (the plain run is the full matrix). */
static int setting(const char *name, int fallback) {
  const char *value = getenv(name);
  return value && atoi(value) > 0 ? atoi(value) : fallback;
}

static int count_key(void *opaque, const char *key, size_t key_len,
                     const char *value, size_t value_len) {
  (void)key, (void)key_len, (void)value, (void)value_len;
  (*(long *)opaque)++;
  return 0;
}

static void test_crash_matrix(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  pthread_t producer;
  char *dir = th_mkdtemp("matrix");
  char state_dir[600];
  static th_expected_t expected[SUBJECTS];
  const int events = setting("TALLY_CRASH_MATRIX_EVENTS", 200000);
  const int min_kills = setting("TALLY_CRASH_MATRIX_KILLS", 20);
  int subjects = setting("TALLY_CRASH_MATRIX_SUBJECTS", SUBJECTS);
  if (subjects > SUBJECTS)
    subjects = SUBJECTS;
  th_stream_t stream = {.events = events,
                        .subjects = subjects,
                        .events_per_second = EVENTS_PER_SECOND,
                        .seed = 11,
                        .duplicate_every = 100,
                        .correct_every = 50,
                        .expected = expected};
  unsigned seed = (unsigned)th_now_ms();
  int kills, self_kills;
  const int64_t began = th_now_ms();

  printf("# crash matrix seed %u\n", seed);
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  char *config_path = th_reference_config_file(dir);
  const char *extra[] = {"--config", config_path, "--memory-budget", "1048576",
                         NULL};

  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);
  stream.bootstrap = broker.bootstrap;
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, extra), 0);
  assert_int_equal(pthread_create(&producer, NULL, th_stream_main, &stream), 0);

  kills = th_crash_loop(&run, &stream, producer, state_dir, extra, min_kills,
                        &seed, &self_kills);
  printf("# %d kills, %d of them right after an outbox ack (%.1f s)\n", kills,
         self_kills, (th_now_ms() - began) / 1000.0);
  assert_true(self_kills >= 1);

  assert_int_equal(th_wait_caught_up(run.port, broker.bootstrap, "tally.usage",
                                     PARTITIONS, 240000),
                   0);
  assert_int_equal(th_wait_outbox_empty(run.port, 30000), 0);
  printf("# caught up, outbox empty (%.1f s)\n",
         (th_now_ms() - began) / 1000.0);

  th_verify_reference(run.port, broker.bootstrap, &stream);
  th_verify_corrections_dlq(broker.bootstrap, &stream);
  assert_true(stream.corrections_applied > 0);
  assert_true(stream.corrections_refused > 0);
  free(stream.refused);
  printf("# verified (%.1f s)\n", (th_now_ms() - began) / 1000.0);

  printf("# last run: %lld ids spilled, %lld looked up in RocksDB\n",
         th_metric_sum(run.port, "tally_dedupe_spilled_ids_total"),
         th_metric_sum(run.port, "tally_dedupe_store_reads_total"));
  assert_int_equal(th_stop(run.pid), 0);
  /* The event ids spilled out of memory, there to be looked up. */
  char errstr[512];
  long spilled = 0;
  tly_store_t *store = tly_store_open(state_dir, 1, errstr, sizeof(errstr));
  assert_non_null(store);
  assert_int_equal(tly_store_scan_prefix(store, TLY_CF_DEDUPE_IDS, NULL, 0,
                                         count_key, &spilled, errstr,
                                         sizeof(errstr)),
                   0);
  tly_store_close(store);
  printf("# %ld spilled ids in the store, %d duplicates sent\n", spilled,
         stream.duplicates_sent);
  assert_true(spilled > 0);
  assert_true(stream.duplicates_sent > 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(config_path);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_crash_matrix),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
