/*
 * test_release.c - consumers/tly_release: every consumed message handed to
 * the release thread is destroyed, by the time tly_release_drain returns
 * and when the release is destroyed with messages still waiting; past the
 * bound the caller destroys its own. The proof is librdkafka's own:
 * rd_kafka_destroy of a consumer does not return while one of its messages
 * is alive (checked: one message kept back hangs it), so each test closes
 * and destroys the consumer on a thread and fails if that takes longer
 * than 20 s.
 */
#include "tly_release.h"
#include "tly_test_cluster.h"

#include <librdkafka/rdkafka_mock.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#define TOPIC "usage"
#define PARTS 4

typedef struct {
  rd_kafka_mock_cluster_t *cluster;
  const char *bootstrap;
} cluster_t;

static void cluster_start(cluster_t *c, int records) {
  char errstr[512];
  c->cluster = tly_test_cluster_new(TOPIC, PARTS, &c->bootstrap);
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", c->bootstrap, NULL, 0);
  rd_kafka_conf_set(conf, "linger.ms", "5", NULL, 0);
  rd_kafka_t *producer =
      rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  assert_non_null(producer);
  for (int i = 0; i < records; i++) {
    char value[32];
    int len = snprintf(value, sizeof(value), "record %d", i);
    while (rd_kafka_producev(producer, RD_KAFKA_V_TOPIC(TOPIC),
                             RD_KAFKA_V_PARTITION(i % PARTS),
                             RD_KAFKA_V_VALUE(value, (size_t)len),
                             RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                             RD_KAFKA_V_END) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
      rd_kafka_poll(producer, 10);
  }
  assert_int_equal(rd_kafka_flush(producer, 30000), RD_KAFKA_RESP_ERR_NO_ERROR);
  rd_kafka_destroy(producer);
}

static void cluster_stop(cluster_t *c) { tly_test_cluster_destroy(c->cluster); }

static rd_kafka_t *consumer_new(const cluster_t *c) {
  char errstr[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", c->bootstrap, NULL, 0);
  rd_kafka_conf_set(conf, "group.id", "release-test", NULL, 0);
  rd_kafka_conf_set(conf, "log_level", "3", NULL, 0);
  rd_kafka_t *consumer =
      rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
  assert_non_null(consumer);
  rd_kafka_topic_partition_list_t *parts =
      rd_kafka_topic_partition_list_new(PARTS);
  for (int p = 0; p < PARTS; p++)
    rd_kafka_topic_partition_list_add(parts, TOPIC, p)->offset =
        RD_KAFKA_OFFSET_BEGINNING;
  assert_int_equal(rd_kafka_assign(consumer, parts), 0);
  rd_kafka_topic_partition_list_destroy(parts);
  return consumer;
}

/* Reads records messages, up to 512 a read as the fold does, each read
 * handed to release (not destroyed here). */
static void consume_into(rd_kafka_t *consumer, tly_release_t *release,
                         int records) {
  rd_kafka_queue_t *queue = rd_kafka_queue_get_consumer(consumer);
  assert_non_null(queue);
  int seen = 0;
  for (int rounds = 0; seen < records && rounds < 3000; rounds++) {
    rd_kafka_message_t *msgs[512];
    ssize_t got = rd_kafka_consume_batch_queue(queue, 100, msgs, 512);
    assert_true(got >= 0);
    for (ssize_t i = 0; i < got; i++)
      seen += msgs[i]->err == RD_KAFKA_RESP_ERR_NO_ERROR;
    tly_release_messages(release, msgs, (size_t)got);
  }
  assert_int_equal(seen, records);
  rd_kafka_queue_destroy(queue);
}

typedef struct {
  rd_kafka_t *consumer;
  atomic_int done;
} closing_t;

static void *close_and_destroy(void *arg) {
  closing_t *c = arg;
  rd_kafka_consumer_close(c->consumer);
  rd_kafka_destroy(c->consumer);
  atomic_store(&c->done, 1);
  return NULL;
}

/* Fails unless the consumer closes and is destroyed within 20 s: it is not
 * while one of its messages is alive. */
static void assert_consumer_destroyed(rd_kafka_t *consumer) {
  closing_t closing = {.consumer = consumer};
  pthread_t thread;
  assert_int_equal(pthread_create(&thread, NULL, close_and_destroy, &closing),
                   0);
  for (int i = 0; i < 2000 && !atomic_load(&closing.done); i++)
    usleep(10000);
  if (!atomic_load(&closing.done))
    fail_msg("rd_kafka_destroy still waits after 20 s: a consumed message "
             "was never destroyed");
  pthread_join(thread, NULL);
}

/* Consumes records through a release (none: with_release 0) that holds
 * at most max_waiting, then drains it or not, and destroys it before the
 * consumer or after; every message must be gone by the consumer's end. */
typedef struct {
  int records, with_release, drain, release_first;
  size_t max_waiting;
} case_t;

static void run_case(case_t k) {
  cluster_t c;
  cluster_start(&c, k.records);
  rd_kafka_t *consumer = consumer_new(&c);
  tly_release_t *release =
      k.with_release ? tly_release_new(k.max_waiting) : NULL;
  assert_true(!k.with_release || release);
  consume_into(consumer, release, k.records);
  if (k.drain)
    tly_release_drain(release);
  if (k.release_first)
    tly_release_destroy(release);
  assert_consumer_destroyed(consumer);
  if (!k.release_first)
    tly_release_destroy(release);
  cluster_stop(&c);
}

static void test_drained_messages_are_all_destroyed(void **state) {
  (void)state;
  run_case((case_t){.records = 20000, .with_release = 1, .drain = 1});
}

/* The release goes with messages possibly still waiting (no drain): it
 * destroys them first. */
static void test_destroyed_with_messages_waiting(void **state) {
  (void)state;
  run_case((case_t){.records = 20000, .with_release = 1, .release_first = 1});
}

/* Past what the thread may hold (here 1, less than any read), the caller
 * destroys its own: no drain, and none may be left. */
static void test_past_the_bound_the_caller_destroys(void **state) {
  (void)state;
  run_case((case_t){.records = 5000, .with_release = 1, .max_waiting = 1});
}

/* No release (out of memory at start): destroyed inline. */
static void test_without_a_release_thread(void **state) {
  (void)state;
  run_case((case_t){.records = 3000, .drain = 1});
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_drained_messages_are_all_destroyed),
      cmocka_unit_test(test_destroyed_with_messages_waiting),
      cmocka_unit_test(test_past_the_bound_the_caller_destroys),
      cmocka_unit_test(test_without_a_release_thread),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
