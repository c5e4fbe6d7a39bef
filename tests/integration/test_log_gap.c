/*
 * test_log_gap.c - when the log no longer holds what the state needs (the
 * embedded broker keeps only ~5 MiB per partition and deletes the oldest
 * records), the processor stops with a clear error instead of skipping:
 *   - stored offset below the log start;
 *   - no stored state while the log no longer starts at 0.
 */
#include "harness.h"

#include "tally_producer.h"

#include <librdkafka/rdkafka.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static void produce(const char *bootstrap, int first, int count, int padding) {
  tally_producer_conf_t conf = {.brokers = bootstrap};
  char errstr[512], event_id[32];
  static char pad[2048];
  tly_property_t property = {"padding", pad};
  tally_producer_t *producer =
      tally_producer_new(&conf, errstr, sizeof(errstr));
  assert_non_null(producer);
  memset(pad, 'x', (size_t)padding);
  pad[padding] = '\0';
  for (int i = first; i < first + count; i++) {
    tly_event_t event = {0};
    snprintf(event_id, sizeof(event_id), "gap-%d", i);
    event.event_id = event_id;
    event.occurred_at_ms = 1763800000000LL;
    event.subject_kind = TLY_SUBJECT_USER;
    event.subject_id = "gap";
    event.body.usage.feature = "api_calls";
    event.body.usage.unit = "call";
    event.body.usage.quantity = 1;
    event.body.usage.property_count = padding ? 1 : 0;
    event.body.usage.properties = padding ? &property : NULL;
    assert_int_equal(
        tally_producer_send(producer, &event, NULL, errstr, sizeof(errstr)), 0);
  }
  assert_int_equal(tally_producer_flush(producer, 60000), 0);
  tally_producer_destroy(producer);
}

static int64_t log_start(const char *bootstrap) {
  char errstr[512];
  int64_t low = -1, high = -1;
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, errstr,
                    sizeof(errstr));
  rd_kafka_t *rk =
      rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  rd_kafka_query_watermark_offsets(rk, "tally.usage", 0, &low, &high, 10000);
  rd_kafka_destroy(rk);
  return low;
}

static void test_processor_refuses_to_skip_lost_records(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  char *dir = th_mkdtemp("gap");
  char state_dir[600], fresh_dir[600];
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  snprintf(fresh_dir, sizeof(fresh_dir), "%s/fresh", dir);

  assert_int_equal(th_broker_start(&broker, 1), 0);
  produce(broker.bootstrap, 0, 1000, 0);
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, NULL), 0);
  assert_int_equal(
      th_wait_caught_up(run.port, broker.bootstrap, "tally.usage", 1, 60000),
      0);
  assert_int_equal(th_stop(run.pid), 0);

  /* ~20 MiB more: the embedded broker drops the oldest records. */
  produce(broker.bootstrap, 1000, 20000, 1000);
  int64_t start = log_start(broker.bootstrap);
  printf("# log now starts at %lld\n", (long long)start);
  assert_true(start > 1000);

  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, NULL), 0);
  assert_int_equal(th_wait_exit(run.pid, 60000), 1);
  char *log = th_read_file(run.log_path);
  assert_non_null(strstr(log, "stored offset 1000 is below the log start"));
  assert_non_null(strstr(log, "refuses to skip"));
  free(log);

  /* A new instance with no state: without the changelog it would have to
   * replay from 0; with it, it restores the state as of offset 1000 and
   * would replay from there. Both are gone: both refuse. */
  const char *no_changelog[] = {"--changelog-topic", "", NULL};
  assert_int_equal(
      th_run_start(&run, broker.bootstrap, fresh_dir, no_changelog), 0);
  assert_int_equal(th_wait_exit(run.pid, 60000), 1);
  log = th_read_file(run.log_path);
  assert_non_null(strstr(log, "no stored state and the log starts at"));
  free(log);
  snprintf(fresh_dir, sizeof(fresh_dir), "%s/fresh-restored", dir);
  assert_int_equal(th_run_start(&run, broker.bootstrap, fresh_dir, NULL), 0);
  assert_int_equal(th_wait_exit(run.pid, 60000), 1);
  log = th_read_file(run.log_path);
  /* Its state came from the changelog: restored at assignment, or as a
   * standby copy built while the stopped instance still looked alive. */
  assert_true(strstr(log, "restored from tally.changelog") ||
              strstr(log, "assigned here with a standby copy"));
  assert_non_null(strstr(log, "stored offset 1000 is below the log start"));
  free(log);

  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_processor_refuses_to_skip_lost_records),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
