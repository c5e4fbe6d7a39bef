/*
 * tly_test_cluster.h - librdkafka's mock cluster for unit tests: one
 * broker over loopback, one topic, created through its host client
 * (librdkafka's own, quiet). A failure fails the test (cmocka). Test code
 * only: linked into the unit tests, never into tally.
 */
#ifndef TLY_TEST_CLUSTER_H
#define TLY_TEST_CLUSTER_H

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

/* The cluster with topic of partitions; *bootstrap its address (valid
 * until tly_test_cluster_destroy). */
rd_kafka_mock_cluster_t *tly_test_cluster_new(const char *topic, int partitions,
                                              const char **bootstrap);

/* The cluster and its host client. */
void tly_test_cluster_destroy(rd_kafka_mock_cluster_t *cluster);

#endif
