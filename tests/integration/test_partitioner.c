/*
 * test_partitioner.c - every record tally writes with a key sits on the
 * partition a Java client would choose for that key (issue 16, point 2):
 * positive(murmur2(key)) % partitions, Kafka's default partitioner for
 * keyed records. The murmur2 here is written from Java's
 * org.apache.kafka.common.utils.Utils.murmur2, independently of librdkafka,
 * and checked first against the test vectors of Kafka's own UtilsTest.
 *
 * A real `tally run` against a broker in this process whose alerts and
 * dead-letter topics have 8 and 7 partitions (so a partitioner other than
 * murmur2 puts most records elsewhere): 40 subjects cross their api_calls
 * thresholds through `tally emit` (alerts keyed by subject) and 30 records
 * that cannot be decoded, keyed by subject, are dead-lettered with their
 * key. Every alert, every dead letter and every event `emit` wrote must
 * be on its key's murmur2 partition.
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

#define USAGE_PARTITIONS 6
#define DLQ_PARTITIONS 7
#define ALERTS_PARTITIONS 8
#define SUBJECTS 40
#define POISONS 30

/* Java's Utils.murmur2 (seed 0x9747b28c), 32-bit wrap-around arithmetic. */
static int32_t java_murmur2(const unsigned char *data, size_t length) {
  const uint32_t m = 0x5bd1e995;
  const int r = 24;
  uint32_t h = 0x9747b28cu ^ (uint32_t)length;
  size_t length4 = length / 4;
  for (size_t i = 0; i < length4; i++) {
    size_t i4 = i * 4;
    uint32_t k = (uint32_t)data[i4] | (uint32_t)data[i4 + 1] << 8 |
                 (uint32_t)data[i4 + 2] << 16 | (uint32_t)data[i4 + 3] << 24;
    k *= m;
    k ^= k >> r;
    k *= m;
    h *= m;
    h ^= k;
  }
  size_t tail = length & ~(size_t)3;
  switch (length % 4) {
  case 3:
    h ^= (uint32_t)data[tail + 2] << 16; /* fall through */
  case 2:
    h ^= (uint32_t)data[tail + 1] << 8; /* fall through */
  case 1:
    h ^= data[tail];
    h *= m;
  }
  h ^= h >> 13;
  h *= m;
  h ^= h >> 15;
  return (int32_t)h;
}

/* Java's DefaultPartitioner for a keyed record. */
static int32_t java_partition(const void *key, size_t len, int partitions) {
  uint32_t positive = (uint32_t)java_murmur2(key, len) & 0x7fffffffu;
  return (int32_t)(positive % (uint32_t)partitions);
}

/* The vectors of Kafka's UtilsTest.testMurmur2. */
static void test_murmur2_matches_kafka(void **state) {
  (void)state;
  static const struct {
    const char *text;
    int32_t hash;
  } vectors[] = {
      {"21", -973932308},
      {"foobar", -790332482},
      {"a-little-bit-long-string", -985981536},
      {"a-little-bit-longer-string", -1486304829},
      {"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971},
      {"abc", 479470107},
  };
  for (size_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++)
    assert_int_equal(java_murmur2((const unsigned char *)vectors[i].text,
                                  strlen(vectors[i].text)),
                     vectors[i].hash);
}

typedef struct {
  const char *topic;
  int partitions;
  const char *skip; /* records whose key starts so are not counted */
  int keyed, on_home, keyless;
  char first_off[256];
} tally_t;

static void visit(void *opaque, const rd_kafka_message_t *msg) {
  tally_t *t = opaque;
  if (!msg->key) {
    t->keyless++;
    return;
  }
  if (t->skip && msg->key_len >= strlen(t->skip) &&
      !memcmp(msg->key, t->skip, strlen(t->skip)))
    return;
  t->keyed++;
  int32_t home = java_partition(msg->key, msg->key_len, t->partitions);
  if (home == msg->partition)
    t->on_home++;
  else if (!t->first_off[0])
    snprintf(t->first_off, sizeof(t->first_off),
             "key %.*s on partition %d, Java's murmur2 says %d",
             (int)msg->key_len, (const char *)msg->key, (int)msg->partition,
             (int)home);
}

static void check_topic(const char *bootstrap, tally_t *t, int at_least) {
  int records = th_read_topic(bootstrap, t->topic, t->partitions, visit, t);
  printf("# %s: %d records, %d keyed, %d on their murmur2 partition\n",
         t->topic, records, t->keyed, t->on_home);
  assert_true(records >= 0);
  if (t->on_home != t->keyed)
    fail_msg("%s: %d of %d keyed records off their murmur2 partition (%s)",
             t->topic, t->keyed - t->on_home, t->keyed, t->first_off);
  assert_true(t->keyed >= at_least);
}

/* Records the processor cannot decode, keyed like events, to partition 0
 * (so each one's dead letter is placed by the partitioner, not by it). */
static void produce_poisons(const char *bootstrap) {
  char errstr[512], key[64];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  assert_int_equal(rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap,
                                     errstr, sizeof(errstr)),
                   RD_KAFKA_CONF_OK);
  rd_kafka_t *rk =
      rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  assert_non_null(rk);
  for (int i = 0; i < POISONS; i++) {
    snprintf(key, sizeof(key), "user:poison-%d", i);
    assert_int_equal(
        rd_kafka_producev(
            rk, RD_KAFKA_V_TOPIC("tally.usage"), RD_KAFKA_V_PARTITION(0),
            RD_KAFKA_V_KEY(key, strlen(key)), RD_KAFKA_V_VALUE("not avro", 8),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END),
        0);
  }
  assert_int_equal(rd_kafka_flush(rk, 30000), 0);
  rd_kafka_destroy(rk);
}

static void test_outputs_sit_on_the_java_partition(void **state) {
  (void)state;
  char errstr[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "log_level", "0", errstr, sizeof(errstr));
  rd_kafka_t *host =
      rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  assert_non_null(host);
  rd_kafka_mock_cluster_t *cluster = rd_kafka_mock_cluster_new(host, 1);
  assert_non_null(cluster);
  assert_int_equal(
      rd_kafka_mock_topic_create(cluster, "tally.usage", USAGE_PARTITIONS, 1),
      0);
  assert_int_equal(
      rd_kafka_mock_topic_create(cluster, "tally.usage.dlq", DLQ_PARTITIONS, 1),
      0);
  assert_int_equal(
      rd_kafka_mock_topic_create(cluster, "tally.alerts", ALERTS_PARTITIONS, 1),
      0);
  assert_int_equal(rd_kafka_mock_topic_create(cluster, "tally.changelog",
                                              USAGE_PARTITIONS, 1),
                   0);
  assert_int_equal(rd_kafka_mock_topic_create(cluster, "tally.members", 1, 1),
                   0);
  const char *bootstrap = rd_kafka_mock_cluster_bootstraps(cluster);

  char *dir = th_mkdtemp("partitioner");
  char config[600], events[600], state_dir[600], out[600];
  snprintf(config, sizeof(config), "%s/tally.json", dir);
  snprintf(events, sizeof(events), "%s/events.jsonl", dir);
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  snprintf(out, sizeof(out), "%s/emit.out", dir);
  /* A limit of 4 calls: one event of 4 crosses every threshold. */
  FILE *file = fopen(config, "w");
  assert_non_null(file);
  fputs("{\"plans\": {\"free\": {\"credits\": 1000000, \"limits\": "
        "{\"api_calls\": {\"limit\": 4}}}}}\n",
        file);
  fclose(file);
  file = fopen(events, "w");
  assert_non_null(file);
  for (int i = 0; i < SUBJECTS; i++)
    fprintf(file,
            "{\"event_id\": \"p-%d\", \"subject\": \"user:part-%d\", "
            "\"feature\": \"api_calls\", \"quantity\": 4}\n",
            i, i);
  fclose(file);

  th_run_t run;
  const char *extra[] = {"--config", config, NULL};
  assert_int_equal(th_run_start(&run, bootstrap, state_dir, extra), 0);
  char *emit_argv[] = {(char *)th_tally_bin(),
                       "emit",
                       "--brokers",
                       (char *)bootstrap,
                       "--quiet",
                       events,
                       NULL};
  assert_int_equal(th_wait_exit(th_spawn(emit_argv, NULL, out, NULL), 60000),
                   0);
  produce_poisons(bootstrap);
  assert_int_equal(th_wait_caught_up(run.port, bootstrap, "tally.usage",
                                     USAGE_PARTITIONS, 60000),
                   0);
  assert_int_equal(th_wait_outbox_empty(run.port, 60000), 0);

  /* The poisons sit on partition 0 by hand: only emit's events count. */
  tally_t usage = {.topic = "tally.usage",
                   .partitions = USAGE_PARTITIONS,
                   .skip = "user:poison-"};
  tally_t alerts = {.topic = "tally.alerts", .partitions = ALERTS_PARTITIONS};
  tally_t dlq = {.topic = "tally.usage.dlq", .partitions = DLQ_PARTITIONS};
  check_topic(bootstrap, &usage, SUBJECTS);
  check_topic(bootstrap, &alerts, SUBJECTS);
  check_topic(bootstrap, &dlq, POISONS);
  th_stop(run.pid);
  th_rmrf(dir);
  free(dir);
  rd_kafka_mock_cluster_destroy(cluster);
  rd_kafka_destroy(host);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_murmur2_matches_kafka),
      cmocka_unit_test(test_outputs_sit_on_the_java_partition),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
