/*
 * test_outbox_bound.c - the outbox is held to its bound of the memory
 * budget (tly_gate.c). Kafka takes no dead letter for a while (the
 * dead-letter topic's partition has no leader) while large malformed
 * records and good events stream in: the outbox reaches its bound
 * (`tally_memory_budget_bytes{part="outbox"}`, the 4 MiB floor at a 1 MiB
 * budget) and records wait, their partitions paused: the outbox stays
 * within its bound and one record's outputs, nothing more is folded while
 * it lasts, and the process keeps running. Once the partition has a
 * leader again everything is folded: every dead letter on the topic once,
 * its bytes unchanged, every subject's usage exact, the outbox empty and
 * no partition waiting.
 *
 * The broker runs inside this test process so the test can take the
 * partition's leader away; `tally run` is a separate process.
 */
#include "harness.h"

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define PARTITIONS 4
#define SUBJECTS 20
#define GOOD 3000 /* good events, in two halves around the bad ones */
/* Malformed records, each BAD_BYTES long: 4.4 MiB of dead letters, over
 * the outbox's bound and under what the mock broker keeps of a partition
 * (about 5 MB: it drops a log's oldest records past that). */
#define BAD 280
#define BAD_BYTES 16384

/* BAD records of BAD_BYTES bytes that are not an event (no Avro frame),
 * keyed bad-N, their bytes 'a' + N % 26 over and over. */
static void produce_bad(const char *bootstrap) {
  char errstr[512], key[32];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, errstr,
                    sizeof(errstr));
  rd_kafka_t *rk =
      rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  assert_non_null(rk);
  char *value = malloc(BAD_BYTES);
  assert_non_null(value);
  for (int i = 0; i < BAD; i++) {
    memset(value, 'a' + i % 26, BAD_BYTES);
    int n = snprintf(key, sizeof(key), "user:bad-%d", i);
    assert_int_equal(rd_kafka_producev(rk, RD_KAFKA_V_TOPIC("tally.usage"),
                                       RD_KAFKA_V_KEY(key, (size_t)n),
                                       RD_KAFKA_V_VALUE(value, BAD_BYTES),
                                       RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                       RD_KAFKA_V_END),
                     0);
    rd_kafka_poll(rk, 0);
  }
  assert_int_equal(rd_kafka_flush(rk, 30000), 0);
  rd_kafka_destroy(rk);
  free(value);
}

typedef struct {
  int seen[BAD];
  int wrong;
} dead_letters_t;

static void visit_dead_letter(void *opaque, const rd_kafka_message_t *msg) {
  dead_letters_t *dl = opaque;
  char key[32] = "";
  if (msg->key_len < sizeof(key))
    memcpy(key, msg->key, msg->key_len);
  int n = -1;
  if (sscanf(key, "user:bad-%d", &n) != 1 || n < 0 || n >= BAD ||
      msg->len != BAD_BYTES) {
    dl->wrong++;
    return;
  }
  const unsigned char *bytes = msg->payload;
  for (size_t i = 0; i < msg->len; i++)
    if (bytes[i] != 'a' + n % 26) {
      dl->wrong++;
      return;
    }
  dl->seen[n]++;
}

static long long outbox_metric(int port, const char *name) {
  return th_metric_labeled(port, name, "{part=\"outbox\"}");
}

static void test_outbox_held_to_its_bound(void **state) {
  (void)state;
  char state_dir[600];
  long long per_subject[SUBJECTS] = {0};
  char *dir = th_mkdtemp("outbox-bound");
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  const char *bootstrap;
  rd_kafka_mock_cluster_t *cluster =
      th_mock_cluster_new(PARTITIONS, &bootstrap);
  assert_non_null(cluster);

  /* A first few events, so the processor is up and has produced nothing
   * yet when the dead-letter topic loses its leader. */
  long long total = th_produce_calls(bootstrap, 0, 100, SUBJECTS, per_subject);
  assert_true(total > 0);
  /* One produce request in flight: see test_broker_faults.c (the mock
   * broker does not check an idempotent producer's sequence numbers, so a
   * failed request followed by a successful one loses the first). */
  const char *extra[] = {"--memory-budget", "1048576", "-X",
                         "max.in.flight.requests.per.connection=1", NULL};
  th_run_t run;
  assert_int_equal(th_run_start(&run, bootstrap, state_dir, extra), 0);
  assert_int_equal(
      th_wait_caught_up(run.port, bootstrap, "tally.usage", PARTITIONS, 60000),
      0);
  long long bound = outbox_metric(run.port, "tally_memory_budget_bytes");
  assert_int_equal(bound, 4LL << 20);

  rd_kafka_mock_partition_set_leader(cluster, "tally.usage.dlq", 0, -1);
  long long first =
      th_produce_calls(bootstrap, 1, GOOD / 2, SUBJECTS, per_subject);
  produce_bad(bootstrap);
  long long second =
      th_produce_calls(bootstrap, 2, GOOD / 2, SUBJECTS, per_subject);
  assert_true(first > 0 && second > 0);
  total += first + second;

  /* The hold: records wait once the outbox is at its bound. */
  int64_t deadline = th_now_ms() + 60000;
  while (th_metric_sum(run.port, "tally_outbox_waiting_partitions") <= 0 &&
         th_now_ms() < deadline)
    th_sleep_ms(50);
  assert_true(th_metric_sum(run.port, "tally_outbox_waiting_partitions") > 0);
  assert_true(th_metric_sum(run.port, "tally_outbox_holds_total") >= 1);
  /* It holds: over two seconds nothing more is folded or dead-lettered,
   * the outbox stays within its bound and one record's outputs (a dead
   * letter is its record's bytes and headers) and above half its bound
   * (where the hold ends: what leaves meanwhile is the records forwarded
   * to their subject's partition, which Kafka takes), and not all is
   * folded. */
  /* The batch open when the hold began is committed as usual (the fold
   * counts its events then): once that is done the counts stand still. */
  long long folded = th_metric_sum(run.port, "tally_events_folded_total");
  for (int i = 0; i < 20; i++) {
    th_sleep_ms(1000);
    long long now = th_metric_sum(run.port, "tally_events_folded_total");
    if (now == folded)
      break;
    folded = now;
  }
  long long dead = th_metric_sum(run.port, "tally_dead_letters_total");
  long long most = 0;
  for (int i = 0; i < 20; i++) {
    long long held = outbox_metric(run.port, "tally_memory_bytes");
    if (held > most)
      most = held;
    th_sleep_ms(100);
  }
  printf("# held: %lld of %d events folded, %lld of %d dead letters; outbox "
         "at most %lld bytes (bound %lld)\n",
         folded, 100 + GOOD, dead, BAD, most, bound);
  assert_true(most > bound / 2);
  /* One record's outputs (a dead letter: BAD_BYTES and its headers, and
   * its two slots of the outbox's array), and the subject records of the
   * batch open when the bound was crossed, which its changelog bundle adds
   * at the seal (tly_proc_outbox_held_bytes): 20 subjects' here. */
  assert_true(most <= bound + 2 * BAD_BYTES);
  assert_int_equal(th_metric_sum(run.port, "tally_events_folded_total"),
                   folded);
  assert_int_equal(th_metric_sum(run.port, "tally_dead_letters_total"), dead);
  assert_true(folded + dead < 100 + GOOD + BAD);
  assert_int_equal(th_wait_exit(run.pid, 0), -1); /* still running */

  /* Kafka takes dead letters again: the outbox drains and all is folded. */
  rd_kafka_mock_partition_set_leader(cluster, "tally.usage.dlq", 0, 1);
  assert_int_equal(
      th_wait_caught_up(run.port, bootstrap, "tally.usage", PARTITIONS, 120000),
      0);
  assert_int_equal(th_wait_outbox_empty(run.port, 60000), 0);
  assert_int_equal(th_metric_sum(run.port, "tally_events_folded_total"),
                   100 + GOOD);
  assert_int_equal(th_metric_sum(run.port, "tally_dead_letters_total"), BAD);
  assert_int_equal(th_metric_sum(run.port, "tally_outbox_waiting_partitions"),
                   0);
  /* Emptied, the outbox gave its array back (it held hundreds of entries:
   * kept, the array alone could hold a hold's end off). */
  long long left = -1;
  for (int i = 0;
       i < 50 && (left = outbox_metric(run.port, "tally_memory_bytes")) > 8192;
       i++)
    th_sleep_ms(100);
  printf("# outbox emptied: %lld bytes\n", left);
  assert_true(left >= 0 && left <= 8192);
  assert_int_equal(th_check_calls(run.port, SUBJECTS, per_subject), total);
  static dead_letters_t dl;
  assert_int_equal(
      th_read_topic(bootstrap, "tally.usage.dlq", 1, visit_dead_letter, &dl),
      BAD);
  assert_int_equal(dl.wrong, 0);
  for (int i = 0; i < BAD; i++)
    assert_int_equal(dl.seen[i], 1);

  assert_int_equal(th_stop(run.pid), 0);
  th_mock_cluster_destroy(cluster);
  th_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_outbox_held_to_its_bound),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
