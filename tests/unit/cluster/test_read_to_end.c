/*
 * test_read_to_end.c - tly_read_to_end reads every partition up to its log
 * end as asked, even while another client keeps producing to one of them
 * (the EOF of that partition then comes again and again: counting EOFs as
 * partitions done stopped recovery's read of the alerts topic before a
 * slower partition's end, and a replay sent alerts a second time).
 */
#include "tly_read_to_end.h"
#include "tly_test_cluster.h"

#include <librdkafka/rdkafka_mock.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#define TOPIC "outputs"
#define BIG 20000 /* records in each of the partitions 1.. */
#define PARTS 7

typedef struct {
  rd_kafka_t *producer;
  atomic_int stop;
  atomic_int produced;
} chatter_t;

/* Keeps producing to partition 0, a record every 2 ms. */
static void *chatter(void *arg) {
  chatter_t *c = arg;
  while (!atomic_load(&c->stop)) {
    if (rd_kafka_producev(c->producer, RD_KAFKA_V_TOPIC(TOPIC),
                          RD_KAFKA_V_PARTITION(0), RD_KAFKA_V_VALUE("x", 1),
                          RD_KAFKA_V_END) == RD_KAFKA_RESP_ERR_NO_ERROR)
      atomic_fetch_add(&c->produced, 1);
    rd_kafka_poll(c->producer, 0);
    usleep(2000);
  }
  rd_kafka_flush(c->producer, 5000);
  return NULL;
}

typedef struct {
  char *seen; /* by partition - 1 and offset */
  int seen_count;
  int past_end;
} visits_t;

static void visit(void *opaque, const rd_kafka_message_t *msg) {
  visits_t *v = opaque;
  if (msg->partition < 1 || msg->partition >= PARTS)
    return;
  if (msg->offset >= 0 && msg->offset < BIG) {
    char *seen = &v->seen[(size_t)(msg->partition - 1) * BIG + msg->offset];
    v->seen_count += !*seen;
    *seen = 1;
  } else {
    v->past_end++;
  }
}

static rd_kafka_t *client(rd_kafka_type_t type, const char *bootstrap,
                          const char *const *props) {
  char errstr[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, NULL, 0);
  rd_kafka_conf_set(conf, "log_level", "3", NULL, 0);
  for (size_t i = 0; props && props[i]; i += 2)
    assert_int_equal(
        rd_kafka_conf_set(conf, props[i], props[i + 1], errstr, sizeof(errstr)),
        RD_KAFKA_CONF_OK);
  rd_kafka_t *rk = rd_kafka_new(type, conf, errstr, sizeof(errstr));
  if (!rk)
    fail_msg("%s", errstr);
  return rk;
}

static void test_reads_a_slow_partition_to_its_end(void **state) {
  (void)state;
  char errstr[512];
  const char *bootstrap = NULL;
  rd_kafka_mock_cluster_t *cluster =
      tly_test_cluster_new(TOPIC, PARTS, &bootstrap);

  const char *fast[] = {"linger.ms", "0", NULL};
  rd_kafka_t *producer = client(RD_KAFKA_PRODUCER, bootstrap, fast);
  char value[100];
  memset(value, 'v', sizeof(value));
  assert_int_equal(rd_kafka_producev(producer, RD_KAFKA_V_TOPIC(TOPIC),
                                     RD_KAFKA_V_PARTITION(0),
                                     RD_KAFKA_V_VALUE("x", 1), RD_KAFKA_V_END),
                   0);
  for (int i = 0; i < BIG * (PARTS - 1); i++) {
    while (rd_kafka_producev(producer, RD_KAFKA_V_TOPIC(TOPIC),
                             RD_KAFKA_V_PARTITION(1 + i % (PARTS - 1)),
                             RD_KAFKA_V_VALUE(value, sizeof(value)),
                             RD_KAFKA_V_END) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
      rd_kafka_poll(producer, 10);
  }
  assert_int_equal(rd_kafka_flush(producer, 30000), 0);
  /* All of it kept (the mock drops old segments past a few MB). */
  int64_t low = -1, high = -1;
  for (int p = 1; p < PARTS; p++) {
    assert_int_equal(
        rd_kafka_query_watermark_offsets(producer, TOPIC, p, &low, &high, 5000),
        0);
    assert_int_equal(low, 0);
    assert_int_equal(high, BIG);
  }

  /* Another client keeps writing to partition 0 during the read. */
  chatter_t c = {.producer = client(RD_KAFKA_PRODUCER, bootstrap, fast)};
  pthread_t thread;
  assert_int_equal(pthread_create(&thread, NULL, chatter, &c), 0);
  while (atomic_load(&c.produced) < 2)
    usleep(1000);

  /* Partitions 1.. take many fetches to read (librdkafka 2.0.2's mock
   * answers about 1 MB per fetch); partition 0 is caught up with (EOF)
   * again and again meanwhile. */
  const char *reader_props[] = {
      "group.id", "read-to-end",       "enable.partition.eof",
      "true",     "fetch.wait.max.ms", "5",
      NULL};
  rd_kafka_t *reader = client(RD_KAFKA_CONSUMER, bootstrap, reader_props);
  rd_kafka_topic_partition_list_t *from =
      rd_kafka_topic_partition_list_new(PARTS);
  for (int p = 0; p < PARTS; p++)
    rd_kafka_topic_partition_list_add(from, TOPIC, p)->offset = 0;
  static char seen[BIG * (PARTS - 1)];
  visits_t v = {.seen = seen};
  int rc =
      tly_read_to_end(reader, from, 60000, visit, &v, errstr, sizeof(errstr));
  atomic_store(&c.stop, 1);
  pthread_join(thread, NULL);
  if (rc)
    fail_msg("%s", errstr);
  printf("# partitions 1..%d: %d of %d records read; partition 0 got %d "
         "records meanwhile\n",
         PARTS - 1, v.seen_count, BIG * (PARTS - 1), atomic_load(&c.produced));
  assert_int_equal(v.seen_count, BIG * (PARTS - 1));

  /* Nothing to read (start at the end): done at once. */
  rd_kafka_topic_partition_list_t *at_end =
      rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(at_end, TOPIC, 1)->offset = BIG;
  visits_t none = {.seen = seen};
  memset(seen, 0, sizeof(seen));
  assert_int_equal(tly_read_to_end(reader, at_end, 5000, visit, &none, errstr,
                                   sizeof(errstr)),
                   0);
  assert_int_equal(none.seen_count, 0);

  rd_kafka_topic_partition_list_destroy(at_end);
  rd_kafka_topic_partition_list_destroy(from);
  rd_kafka_consumer_close(reader);
  rd_kafka_destroy(reader);
  rd_kafka_destroy(c.producer);
  rd_kafka_destroy(producer);
  tly_test_cluster_destroy(cluster);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_reads_a_slow_partition_to_its_end),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
