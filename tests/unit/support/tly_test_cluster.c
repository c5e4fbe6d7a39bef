/*
 * tly_test_cluster.c - librdkafka's mock cluster for unit tests
 * (tly_test_cluster.h).
 */
#include "tly_test_cluster.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

rd_kafka_mock_cluster_t *tly_test_cluster_new(const char *topic, int partitions,
                                              const char **bootstrap) {
  char errstr[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "log_level", "3", NULL, 0);
  rd_kafka_t *host =
      rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  assert_non_null(host);
  rd_kafka_mock_cluster_t *cluster = rd_kafka_mock_cluster_new(host, 1);
  assert_non_null(cluster);
  assert_int_equal(rd_kafka_mock_topic_create(cluster, topic, partitions, 1),
                   0);
  *bootstrap = rd_kafka_mock_cluster_bootstraps(cluster);
  return cluster;
}

void tly_test_cluster_destroy(rd_kafka_mock_cluster_t *cluster) {
  rd_kafka_t *host = rd_kafka_mock_cluster_handle(cluster);
  rd_kafka_mock_cluster_destroy(cluster);
  rd_kafka_destroy(host);
}
