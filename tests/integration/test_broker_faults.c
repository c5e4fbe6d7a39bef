/*
 * test_broker_faults.c - the embedded broker misbehaves while the processor
 * folds a stream: produce and fetch requests fail (the mock cluster's
 * request error injection), then the broker goes down for three seconds.
 * The processor waits or retries, and ends with the same exact totals and
 * alerts as the reference, each alert once.
 *
 * The broker runs inside this test process so the test can inject faults;
 * `tally run` is a separate process talking Kafka protocol to it.
 */
#include "harness.h"

#include "reference.h"

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define PARTITIONS 8
#define SUBJECTS 300
#define EVENTS 30000
#define API_PRODUCE 0
#define API_FETCH 1

/*
 * One produce request in flight per connection, for the stream's producer
 * and for the processor's. librdkafka 2.0.2's mock broker checks the
 * sequence numbers of a transactional producer only, not of a merely
 * idempotent one. When an injected error fails one produce request while a
 * later one, already in flight, succeeds, the client takes the later
 * acknowledgement as proof that the earlier batch was written (a real
 * broker would have refused the later batch as out of sequence) and
 * reports the earlier batch delivered, though the log never got it. Seen
 * here: 1-3 of 30,000 events missing from tally.usage in 2 of about 200
 * runs (and once in CI), every record the topic did hold folded exactly
 * once. A standalone producer with the same errors loses messages the
 * same way with 5 requests in flight and none with 1.
 * th_verify_stream_in_topic below tells such a loss apart from the
 * processor's.
 */
#define ONE_IN_FLIGHT "max.in.flight.requests.per.connection=1"

static void test_faults_keep_totals_and_alerts_exact(void **state) {
  (void)state;
  char state_dir[600];
  static th_expected_t expected[SUBJECTS];
  static const char *const stream_properties[] = {ONE_IN_FLIGHT, NULL};
  th_stream_t stream = {.events = EVENTS,
                        .subjects = SUBJECTS,
                        .events_per_second = 3000,
                        .seed = 23,
                        .expected = expected,
                        .kafka_properties = stream_properties};
  char *dir = th_mkdtemp("faults");
  char *config_path = th_reference_config_file(dir);
  const char *extra[] = {"--config", config_path, "-X", ONE_IN_FLIGHT, NULL};
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);

  const char *bootstrap;
  rd_kafka_mock_cluster_t *cluster =
      th_mock_cluster_new(PARTITIONS, &bootstrap);
  assert_non_null(cluster);
  stream.bootstrap = bootstrap;

  th_run_t run;
  pthread_t producer;
  assert_int_equal(th_run_start(&run, bootstrap, state_dir, extra), 0);
  assert_int_equal(pthread_create(&producer, NULL, th_stream_main, &stream), 0);

  /* Wait until the processor folds, then break things. */
  int64_t deadline = th_now_ms() + 60000;
  while (th_metric_sum(run.port, "tally_events_folded_total") <= 0 &&
         th_now_ms() < deadline)
    th_sleep_ms(50);
  rd_kafka_mock_push_request_errors(cluster, API_PRODUCE, 6,
                                    RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                                    RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                                    RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
                                    RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                                    RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                                    RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS);
  rd_kafka_mock_push_request_errors(cluster, API_FETCH, 6,
                                    RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                                    RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                                    RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
                                    RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                                    RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                                    RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE);
  th_sleep_ms(2000);
  long long before = th_metric_sum(run.port, "tally_events_folded_total");
  assert_int_equal(rd_kafka_mock_broker_set_down(cluster, 1), 0);
  th_sleep_ms(3000);
  assert_int_equal(rd_kafka_mock_broker_set_up(cluster, 1), 0);
  printf("# broker was down for 3 s after %lld events were folded\n", before);

  pthread_join(producer, NULL);
  if (stream.error[0])
    fail_msg("%s", stream.error);
  /* The processor is still the same process: it waited, it did not die. */
  assert_int_equal(th_wait_exit(run.pid, 0), -1);
  assert_int_equal(
      th_wait_caught_up(run.port, bootstrap, "tally.usage", PARTITIONS, 120000),
      0);
  assert_int_equal(th_wait_outbox_empty(run.port, 30000), 0);
  th_verify_stream_in_topic(bootstrap, PARTITIONS, &stream);
  th_verify_reference(run.port, bootstrap, &stream);

  assert_int_equal(th_stop(run.pid), 0);
  th_mock_cluster_destroy(cluster);
  th_rmrf(dir);
  free(config_path);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_faults_keep_totals_and_alerts_exact),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
