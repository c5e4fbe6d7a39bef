/*
 * test_poison.c - malformed messages in the usage topic land in the
 * dead-letter topic, with the reason and their source partition/offset in
 * headers and their bytes unchanged, and everything else is folded.
 */
#include "harness.h"

#include <librdkafka/rdkafka.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define PARTITIONS 4
#define GOOD_EVENTS 2000
#define SUBJECTS 20

typedef struct {
  const char *name;
  const char *bytes;
  size_t len;
  int32_t partition;
  int64_t offset;
  int seen;
} poison_t;

static const char truncated[] = {0, 0, 0, 0, 1, 0x08, 'e', 'v'};
static const char wrong_schema[] = {0, 0, 0, 0, 99, 0x02, 'x'};
static const char bad_enum[] = {0, 0, 0, 0, 1, 0x02, 'e', 0x02, 0x7f};

static poison_t poisons[] = {
    {"not framed", "{\"event_id\":\"json\"}", 19, -1, -1, 0},
    {"truncated avro", truncated, sizeof(truncated), -1, -1, 0},
    {"unknown schema id", wrong_schema, sizeof(wrong_schema), -1, -1, 0},
    {"corrupt body", bad_enum, sizeof(bad_enum), -1, -1, 0},
    {"empty value", NULL, 0, -1, -1, 0},
};
#define POISONS (sizeof(poisons) / sizeof(poisons[0]))

static void poison_delivered(rd_kafka_t *rk, const rd_kafka_message_t *msg,
                             void *opaque) {
  poison_t *poison = msg->_private;
  (void)rk, (void)opaque;
  if (!msg->err) {
    poison->partition = msg->partition;
    poison->offset = msg->offset;
  }
}

static void produce_poison(const char *bootstrap) {
  char errstr[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, errstr,
                    sizeof(errstr));
  rd_kafka_conf_set_dr_msg_cb(conf, poison_delivered);
  rd_kafka_t *rk =
      rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  assert_non_null(rk);
  for (size_t i = 0; i < POISONS; i++) {
    assert_int_equal(
        rd_kafka_producev(
            rk, RD_KAFKA_V_TOPIC("tally.usage"),
            RD_KAFKA_V_KEY("user:poison", 11),
            RD_KAFKA_V_VALUE((void *)poisons[i].bytes, poisons[i].len),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_OPAQUE(&poisons[i]), RD_KAFKA_V_END),
        0);
  }
  assert_int_equal(rd_kafka_flush(rk, 30000), 0);
  rd_kafka_destroy(rk);
  for (size_t i = 0; i < POISONS; i++)
    assert_true(poisons[i].offset >= 0);
}

static const char *header(rd_kafka_headers_t *headers, const char *name,
                          char *out, size_t size) {
  const void *value;
  size_t len;
  if (!headers || rd_kafka_header_get_last(headers, name, &value, &len))
    return NULL;
  snprintf(out, size, "%.*s", (int)len, (const char *)value);
  return out;
}

/* Reads the whole dead-letter topic and matches each record to a poison. */
static int read_dead_letters(const char *bootstrap) {
  char errstr[512];
  int count = 0;
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, errstr,
                    sizeof(errstr));
  rd_kafka_conf_set(conf, "group.id", "poison-test-reader", errstr,
                    sizeof(errstr));
  rd_kafka_t *rk =
      rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
  assert_non_null(rk);
  rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(parts, "tally.usage.dlq", 0)->offset =
      RD_KAFKA_OFFSET_BEGINNING;
  assert_int_equal(rd_kafka_assign(rk, parts), 0);
  rd_kafka_topic_partition_list_destroy(parts);
  /* Read until quiet for 2 s after the expected count, to catch extras. */
  int64_t deadline = th_now_ms() + 30000;
  while (th_now_ms() < deadline) {
    rd_kafka_message_t *msg = rd_kafka_consumer_poll(rk, 200);
    if (!msg) {
      if (count >= (int)POISONS && deadline > th_now_ms() + 2000)
        deadline = th_now_ms() + 2000;
      continue;
    }
    if (msg->err) {
      rd_kafka_message_destroy(msg);
      continue;
    }
    rd_kafka_headers_t *headers = NULL;
    char reason[512], partition[32], offset[32], topic[64];
    rd_kafka_message_headers(msg, &headers);
    assert_non_null(header(headers, "tally.error", reason, sizeof(reason)));
    assert_true(strlen(reason) > 5);
    assert_non_null(
        header(headers, "tally.source.topic", topic, sizeof(topic)));
    assert_string_equal(topic, "tally.usage");
    assert_non_null(header(headers, "tally.source.partition", partition,
                           sizeof(partition)));
    assert_non_null(
        header(headers, "tally.source.offset", offset, sizeof(offset)));
    poison_t *match = NULL;
    for (size_t i = 0; i < POISONS; i++)
      if (poisons[i].partition == atoi(partition) &&
          poisons[i].offset == atoll(offset))
        match = &poisons[i];
    if (!match)
      fail_msg("dead letter from %s@%s matches no poison", partition, offset);
    assert_int_equal(match->seen, 0);
    match->seen = 1;
    assert_int_equal(msg->len, match->len);
    if (match->len)
      assert_memory_equal(msg->payload, match->bytes, match->len);
    printf("# dead letter '%s': %s\n", match->name, reason);
    count++;
    rd_kafka_message_destroy(msg);
  }
  rd_kafka_consumer_close(rk);
  rd_kafka_destroy(rk);
  return count;
}

static void test_poison_goes_to_dead_letters(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  char *dir = th_mkdtemp("poison");
  char state_dir[600];
  long long per_subject[SUBJECTS] = {0};

  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);
  long long half =
      th_produce_calls(broker.bootstrap, 1, GOOD_EVENTS, SUBJECTS, per_subject);
  assert_true(half > 0);
  produce_poison(broker.bootstrap);
  long long second =
      th_produce_calls(broker.bootstrap, 2, GOOD_EVENTS, SUBJECTS, per_subject);
  assert_true(second > 0);
  long long total = half + second;
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, NULL), 0);
  assert_int_equal(th_wait_caught_up(run.port, broker.bootstrap, "tally.usage",
                                     PARTITIONS, 60000),
                   0);
  assert_int_equal(th_metric_sum(run.port, "tally_events_folded_total"),
                   2 * GOOD_EVENTS);
  assert_int_equal(th_metric_sum(run.port, "tally_dead_letters_total"),
                   (long long)POISONS);

  assert_int_equal(th_check_calls(run.port, SUBJECTS, per_subject), total);

  assert_int_equal(read_dead_letters(broker.bootstrap), (int)POISONS);
  for (size_t i = 0; i < POISONS; i++)
    assert_int_equal(poisons[i].seen, 1);
  /* Every dead letter acknowledged by Kafka leaves the outbox. */
  assert_int_equal(th_wait_outbox_empty(run.port, 30000), 0);

  assert_int_equal(th_stop(run.pid), 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

/* Counts a flood's dead letters in tally run's log: each one logged alone,
 * plus those the summary lines say were left out. */
static void count_logged(const char *log, long long *alone, long long *summed) {
  *alone = 0;
  *summed = 0;
  for (const char *at = log; (at = strstr(at, "dead letter tally.usage["));
       at++)
    (*alone)++;
  const char *mark = " more dead letters in a second were not logged";
  for (const char *at = log; (at = strstr(at, mark)); at++) {
    const char *digits = at;
    while (digits > log && digits[-1] >= '0' && digits[-1] <= '9')
      digits--;
    *summed += atoll(digits);
  }
}

#define FLOOD 3000

static void count_dlq(void *opaque, const rd_kafka_message_t *msg) {
  (void)opaque;
  assert_int_equal(msg->len, sizeof(truncated)); /* its bytes, unchanged */
}

/* A flood of bad records is not a flood of log lines: at most 20 a second
 * are logged one by one, the rest counted in one line per second, and
 * every one of them is on the dead-letter topic. */
static void test_flood_logged_in_summary(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  char *dir = th_mkdtemp("poison-flood");
  char state_dir[600], errstr[512];
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", broker.bootstrap, errstr,
                    sizeof(errstr));
  rd_kafka_t *rk =
      rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  assert_non_null(rk);
  for (int i = 0; i < FLOOD; i++)
    assert_int_equal(rd_kafka_producev(
                         rk, RD_KAFKA_V_TOPIC("tally.usage"),
                         RD_KAFKA_V_KEY("user:flood", 10),
                         RD_KAFKA_V_VALUE((void *)truncated, sizeof(truncated)),
                         RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                         RD_KAFKA_V_END),
                     0);
  assert_int_equal(rd_kafka_flush(rk, 30000), 0);
  rd_kafka_destroy(rk);

  int64_t started = th_now_ms();
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, NULL), 0);
  assert_int_equal(th_wait_caught_up(run.port, broker.bootstrap, "tally.usage",
                                     PARTITIONS, 60000),
                   0);
  assert_int_equal(th_metric_sum(run.port, "tally_dead_letters_total"), FLOOD);
  /* The last second's summary comes once that second is over. */
  long long alone = 0, summed = 0;
  for (int tries = 0; tries < 100 && alone + summed < FLOOD; tries++) {
    char *log = th_read_file(run.log_path);
    assert_non_null(log);
    count_logged(log, &alone, &summed);
    free(log);
    if (alone + summed < FLOOD)
      th_sleep_ms(100);
  }
  long long seconds = (th_now_ms() - started) / 1000 + 1;
  printf("# %d dead letters: %lld logged one by one, %lld in summaries, "
         "over %lld s\n",
         FLOOD, alone, summed, seconds);
  if (alone + summed != FLOOD) { /* what the log had, for the diagnosis */
    char *log = th_read_file(run.log_path);
    for (char *line = log ? strtok(log, "\n") : NULL; line;
         line = strtok(NULL, "\n"))
      if (strstr(line, "more dead letters") || !strstr(line, "dead letter "))
        printf("# log: %s\n", line);
    free(log);
    printf("# tally_dead_letters_total now %lld\n",
           th_metric_sum(run.port, "tally_dead_letters_total"));
  }
  assert_int_equal(alone + summed, FLOOD);
  assert_true(alone >= 20);
  assert_true(alone <= 20 * (seconds + 1));
  assert_true(summed > 0);
  assert_int_equal(
      th_read_topic(broker.bootstrap, "tally.usage.dlq", 1, count_dlq, NULL),
      FLOOD);

  assert_int_equal(th_stop(run.pid), 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_poison_goes_to_dead_letters),
      cmocka_unit_test(test_flood_logged_in_summary),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
