/*
 * tly_processor_kafka.c - the processor's Kafka clients: their
 * configuration (defaults, the memory budget's bounds, then the user's
 * properties), the readers by assignment that restore, replay, standby and
 * the copy-staleness query use, and the topic metadata the processor asks
 * for at start (the input's partition count, the changelog's).
 *
 * Never folds, never writes the store, never joins the group (the group
 * consumer is tly_group.c): it builds clients and asks the cluster about
 * topics, nothing else.
 */
#include "tly_processor_internal.h"

#include "tally_producer.h"
#include "tly_kafka_client.h"
#include "tly_log.h"

#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <time.h>

rd_kafka_conf_t *tly_proc_kafka_conf(const tly_processor_conf_t *conf,
                                     int consumer, const char *const *defaults,
                                     char *errstr, size_t errstr_size) {
  rd_kafka_conf_t *kconf = rd_kafka_conf_new();
  char kafka_err[512];
  char bound_text[TLY_MEMORY_KAFKA_PROPERTIES][TLY_MEMORY_KAFKA_PROPERTY_MAX];
  const char *bounds[TLY_MEMORY_KAFKA_PROPERTIES + 1];
  tly_memory_kafka_properties(
      conf->memory_budget_bytes > 0 ? conf->memory_budget_bytes
                                    : TLY_DEFAULT_MEMORY_BUDGET,
      consumer, conf->kafka_properties, bound_text, bounds);
  tly_kafka_conf_log(kconf);
  if (rd_kafka_conf_set(kconf, "bootstrap.servers", conf->brokers, kafka_err,
                        sizeof(kafka_err)) != RD_KAFKA_CONF_OK) {
    snprintf(errstr, errstr_size, "brokers: %.400s", kafka_err);
    goto fail;
  }
  if (tly_kafka_conf_apply(kconf, defaults, errstr, errstr_size) ||
      tly_kafka_conf_apply(kconf, bounds, errstr, errstr_size) ||
      tly_kafka_conf_apply(kconf, conf->kafka_properties, errstr, errstr_size))
    goto fail;
  return kconf;
fail:
  rd_kafka_conf_destroy(kconf);
  return NULL;
}

rd_kafka_t *tly_proc_reader_new(const tly_processor_t *p,
                                const char *const *defaults, char *errstr,
                                size_t errstr_size) {
  rd_kafka_conf_t *kconf =
      tly_proc_kafka_conf(&p->conf, 1, defaults, errstr, errstr_size);
  if (!kconf)
    return NULL;
  rd_kafka_t *reader =
      rd_kafka_new(RD_KAFKA_CONSUMER, kconf, errstr, errstr_size);
  if (!reader)
    rd_kafka_conf_destroy(kconf);
  return reader;
}

/* The partition count of topic as the cluster sees it now; -1 if it does
 * not exist (or cannot be asked). */
int32_t tly_proc_topic_partitions_now(tly_processor_t *p, const char *topic) {
  const struct rd_kafka_metadata *md = NULL;
  rd_kafka_topic_t *rkt = rd_kafka_topic_new(p->producer, topic, NULL);
  rd_kafka_resp_err_t err = rd_kafka_metadata(p->producer, 0, rkt, &md, 10000);
  int32_t count = -1;
  if (!err && md->topic_cnt == 1 && !md->topics[0].err)
    count = md->topics[0].partition_cnt;
  if (md)
    rd_kafka_metadata_destroy(md);
  rd_kafka_topic_destroy(rkt);
  return count;
}

/* Waits for the usage topic to exist and returns its partition count. */
int32_t tly_proc_topic_partition_count(tly_processor_t *p, char *errstr,
                                       size_t errstr_size) {
  for (int attempt = 0; attempt < 30; attempt++) {
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_t *rkt =
        rd_kafka_topic_new(p->consumer, p->usage_topic, NULL);
    rd_kafka_resp_err_t err = rd_kafka_metadata(p->consumer, 0, rkt, &md, 5000);
    int32_t count = -1;
    if (!err && md->topic_cnt == 1 && !md->topics[0].err)
      count = md->topics[0].partition_cnt;
    else if (!err && md->topic_cnt == 1)
      err = md->topics[0].err;
    if (md)
      rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);
    if (count > 0)
      return count;
    tly_log(TLY_LOG_INFO, "processor", "waiting for topic %s: %s",
            p->usage_topic, rd_kafka_err2str(err));
    struct timespec pause = {1, 0};
    nanosleep(&pause, NULL);
  }
  snprintf(errstr, errstr_size, "topic %s: not found on %s", p->usage_topic,
           p->conf.brokers);
  return -1;
}
