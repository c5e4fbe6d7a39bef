/*
 * test_catchup.c - batch sizing by lag. A processor that starts behind
 * (the whole stream produced before it) folds the backlog in batches of
 * --batch-events, not one per --batch-ms, and ends with the reference's
 * exact totals and alerts. Old records trickling in one at a time (Kafka
 * timestamps an hour back, as from a producer whose clock runs late) are
 * each committed within seconds: a batch is never held open waiting for
 * records that are not there.
 *
 * The broker runs inside this test process; `tally run` is a separate
 * process talking Kafka protocol to it.
 */
#include "harness.h"

#include "reference.h"
#include "tly_codec.h"
#include "tly_event.h"
#include "tly_log.h"

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define PARTITIONS 4
#define SUBJECTS 200
#define EVENTS 40000
#define BATCH_EVENTS 20000

static void test_backlog_folds_in_full_batches(void **state) {
  (void)state;
  char state_dir[600], batch_events[16];
  static th_expected_t expected[SUBJECTS];
  th_stream_t stream = {.events = EVENTS,
                        .subjects = SUBJECTS,
                        .events_per_second = 50000,
                        .seed = 31,
                        .expected = expected};
  char *dir = th_mkdtemp("catchup");
  char *config_path = th_reference_config_file(dir);
  snprintf(batch_events, sizeof(batch_events), "%d", BATCH_EVENTS);
  /* --batch-ms 1: a processor keeping up would commit every millisecond
   * or so (and every time the writer is free), hundreds of batches. */
  const char *extra[] = {"--config",       config_path,  "--batch-ms", "1",
                         "--batch-events", batch_events, NULL};
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  rd_kafka_mock_cluster_t *cluster =
      th_mock_cluster_new(PARTITIONS, &stream.bootstrap);
  assert_non_null(cluster);

  /* The whole stream first, then 2.5 s more: every record is older than
   * the 2 s that make a processor count as catching up. */
  th_stream_main(&stream);
  assert_string_equal(stream.error, "");
  th_sleep_ms(2500);

  th_run_t run;
  assert_int_equal(th_run_start(&run, stream.bootstrap, state_dir, extra), 0);
  assert_int_equal(th_wait_caught_up(run.port, stream.bootstrap, "tally.usage",
                                     PARTITIONS, 120000),
                   0);
  long long folded = th_metric_sum(run.port, "tally_events_folded_total");
  long long batches = th_metric_sum(run.port, "tally_batches_committed_total");
  fprintf(stderr, "catchup: %lld events in %lld batches\n", folded, batches);
  assert_int_equal(folded, EVENTS);
  /* EVENTS / BATCH_EVENTS full batches, plus the commits that carry no
   * events (the outbox's acknowledged alerts, the assignment): a few.
   * Closing at --batch-ms, the writer-busy rule alone gives batches of a
   * few thousand events here, 25 commits and more. */
  assert_true(batches >= EVENTS / BATCH_EVENTS);
  assert_true(batches <= EVENTS / BATCH_EVENTS + 8);
  th_verify_reference(run.port, stream.bootstrap, &stream);

  assert_int_equal(th_stop(run.pid), 0);
  th_mock_cluster_destroy(cluster);
  th_rmrf(dir);
  free(config_path);
  free(dir);
}

/* One usage event, produced with a Kafka timestamp an hour back (and so
 * an event time no later: the processor dead-letters an event more than
 * the future skew after its record's timestamp). */
static void produce_old(rd_kafka_t *producer, tly_codec_t *codec, int i,
                        int64_t produced_ms) {
  char errstr[512], event_id[32], key[128];
  snprintf(event_id, sizeof(event_id), "old-%d", i);
  tly_event_t event = {0};
  event.event_id = event_id;
  event.occurred_at_ms = produced_ms;
  event.subject_kind = TLY_SUBJECT_USER;
  event.subject_id = "late-clock";
  event.body.usage.feature = "api_calls";
  event.body.usage.quantity = 1;
  const void *value;
  size_t value_len;
  assert_int_equal(tly_codec_encode(codec, &event, &value, &value_len, errstr,
                                    sizeof(errstr)),
                   0);
  size_t key_len =
      tly_subject_key(event.subject_kind, event.subject_id, key, sizeof(key));
  assert_int_equal(rd_kafka_producev(producer, RD_KAFKA_V_TOPIC("tally.usage"),
                                     RD_KAFKA_V_KEY(key, key_len),
                                     RD_KAFKA_V_VALUE((void *)value, value_len),
                                     RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                     RD_KAFKA_V_TIMESTAMP(produced_ms),
                                     RD_KAFKA_V_END),
                   RD_KAFKA_RESP_ERR_NO_ERROR);
  assert_int_equal(rd_kafka_flush(producer, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
}

static void test_old_records_trickling_in_are_committed(void **state) {
  (void)state;
  char errstr[512], state_dir[600];
  char *dir = th_mkdtemp("catchup-trickle");
  /* The default batch cap (400,000): were an old record enough to keep a
   * batch open, these ten would never be committed. */
  const char *extra[] = {"--batch-ms", "1", NULL};
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  const char *bootstrap;
  rd_kafka_mock_cluster_t *cluster =
      th_mock_cluster_new(PARTITIONS, &bootstrap);
  assert_non_null(cluster);
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, errstr,
                    sizeof(errstr));
  rd_kafka_conf_set(conf, "linger.ms", "0", errstr, sizeof(errstr));
  rd_kafka_t *producer =
      rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  assert_non_null(producer);
  tly_codec_t *codec =
      tly_codec_new(TLY_CODEC_DEFAULT_SCHEMA_ID, errstr, sizeof(errstr));
  assert_non_null(codec);

  th_run_t run;
  assert_int_equal(th_run_start(&run, bootstrap, state_dir, extra), 0);
  int64_t produced_ms = tly_wall_ms() - 3600 * 1000;
  for (int i = 0; i < 10; i++) {
    produce_old(producer, codec, i, produced_ms);
    /* The first waits for the group join too. */
    int64_t deadline = th_now_ms() + (i ? 5000 : 60000);
    long long folded;
    while ((folded = th_metric_sum(run.port, "tally_events_folded_total")) <
               i + 1 &&
           th_now_ms() < deadline)
      th_sleep_ms(20);
    assert_int_equal(folded, i + 1);
  }
  long status;
  char *body = NULL, path[160];
  /* At the events' time: a cycle that ended since does not count them. */
  snprintf(path, sizeof(path),
           "/v1/subjects/user:late-clock/quota?feature=api_calls&quantity=1"
           "&at=%lld",
           (long long)produced_ms);
  assert_int_equal(th_http_get(run.port, path, &status, &body), 0);
  assert_int_equal(status, 200);
  assert_non_null(strstr(body, "\"used\":10,"));
  free(body);

  assert_int_equal(th_stop(run.pid), 0);
  tly_codec_destroy(codec);
  rd_kafka_destroy(producer);
  th_mock_cluster_destroy(cluster);
  th_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_backlog_folds_in_full_batches),
      cmocka_unit_test(test_old_records_trickling_in_are_committed),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
