/*
 * tally_producer.c - the client library: validate, encode, produce.
 *
 * Why idempotent: librdkafka retries failed produce requests on its own; with
 * enable.idempotence the broker drops the duplicates those retries would
 * otherwise write, and ordering per partition is kept. Together with
 * event_id dedupe in the fold this keeps "never double-count" true even
 * when the network hiccups.
 */
#include "tally_producer.h"

#include "tly_codec.h"
#include "tly_kafka_client.h"

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tally_producer {
  rd_kafka_t *rk;
  rd_kafka_topic_t *rkt;
  tly_codec_t *codec;
  pthread_mutex_t lock; /* guards codec (its output buffer is shared) */
  tally_delivery_cb *on_delivery;
  tally_delivery_at_cb *on_delivery_at;
  void *opaque;
  atomic_uint_least64_t sent, delivered, failed;
  pthread_mutex_t error_lock; /* guards last_error */
  char last_error[512];
};

int tly_kafka_conf_apply(rd_kafka_conf_t *conf, const char *const *properties,
                         char *errstr, size_t errstr_size) {
  for (size_t i = 0; properties && properties[i]; i++) {
    const char *eq = strchr(properties[i], '=');
    char name[256], kafka_err[256];
    if (!eq || eq == properties[i] ||
        (size_t)(eq - properties[i]) >= sizeof(name)) {
      snprintf(errstr, errstr_size, "Kafka property '%s': expected name=value",
               properties[i]);
      return -1;
    }
    memcpy(name, properties[i], (size_t)(eq - properties[i]));
    name[eq - properties[i]] = '\0';
    if (rd_kafka_conf_set(conf, name, eq + 1, kafka_err, sizeof(kafka_err)) !=
        RD_KAFKA_CONF_OK) {
      snprintf(errstr, errstr_size, "Kafka property '%s': %s", name, kafka_err);
      return -1;
    }
  }
  return 0;
}

static void delivery_report(rd_kafka_t *rk, const rd_kafka_message_t *msg,
                            void *opaque) {
  tally_producer_t *producer = opaque;
  (void)rk;
  if (msg->err)
    atomic_fetch_add(&producer->failed, 1);
  else
    atomic_fetch_add(&producer->delivered, 1);
  if (producer->on_delivery_at)
    producer->on_delivery_at(producer->opaque, msg->_private, (int)msg->err,
                             msg->err ? rd_kafka_err2str(msg->err) : "",
                             msg->partition, msg->err ? -1 : msg->offset);
  else if (producer->on_delivery)
    producer->on_delivery(producer->opaque, msg->_private, (int)msg->err,
                          msg->err ? rd_kafka_err2str(msg->err) : "");
}

/* librdkafka's error reports (from its threads or poll): kept for
 * tally_producer_last_error, and logged. "All brokers are down" says less
 * than the connection error before it, so it never replaces one. */
static void error_report(rd_kafka_t *rk, int err, const char *reason,
                         void *opaque) {
  tally_producer_t *producer = opaque;
  tly_kafka_log_line(TLY_LOG_WARN, rk, "ERROR", reason);
  pthread_mutex_lock(&producer->error_lock);
  if (err != RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN || !producer->last_error[0])
    snprintf(producer->last_error, sizeof(producer->last_error), "%s",
             reason ? reason : rd_kafka_err2str(err));
  pthread_mutex_unlock(&producer->error_lock);
}

tally_producer_t *tally_producer_new(const tally_producer_conf_t *conf,
                                     char *errstr, size_t errstr_size) {
  tally_producer_t *producer = NULL;
  rd_kafka_conf_t *kconf = NULL;
  char kafka_err[512];

  if (!conf->brokers || !*conf->brokers) {
    snprintf(errstr, errstr_size, "brokers: required");
    return NULL;
  }
  producer = calloc(1, sizeof(*producer));
  if (!producer) {
    snprintf(errstr, errstr_size, "out of memory");
    return NULL;
  }
  pthread_mutex_init(&producer->lock, NULL);
  pthread_mutex_init(&producer->error_lock, NULL);
  producer->on_delivery = conf->on_delivery;
  producer->on_delivery_at = conf->on_delivery_at;
  producer->opaque = conf->opaque;
  producer->codec = tly_codec_new(conf->schema_id ? conf->schema_id
                                                  : TLY_CODEC_DEFAULT_SCHEMA_ID,
                                  errstr, errstr_size);
  if (!producer->codec)
    goto fail;

  kconf = rd_kafka_conf_new();
  tly_kafka_conf_log(kconf);
  const char *defaults[] = {"enable.idempotence=true",
                            TLY_KAFKA_PARTITIONER_PROPERTY,
                            "linger.ms=5",
                            "compression.codec=none",
                            "queue.buffering.max.messages=500000",
                            NULL};
  if (tly_kafka_conf_apply(kconf, defaults, errstr, errstr_size) ||
      tly_kafka_conf_apply(kconf, conf->kafka_properties, errstr, errstr_size))
    goto fail;
  if (rd_kafka_conf_set(kconf, "bootstrap.servers", conf->brokers, kafka_err,
                        sizeof(kafka_err)) != RD_KAFKA_CONF_OK) {
    snprintf(errstr, errstr_size, "brokers: %s", kafka_err);
    goto fail;
  }
  rd_kafka_conf_set_opaque(kconf, producer);
  rd_kafka_conf_set_dr_msg_cb(kconf, delivery_report);
  rd_kafka_conf_set_error_cb(kconf, error_report);
  producer->rk =
      rd_kafka_new(RD_KAFKA_PRODUCER, kconf, kafka_err, sizeof(kafka_err));
  if (!producer->rk) {
    snprintf(errstr, errstr_size, "creating Kafka producer: %s", kafka_err);
    goto fail;
  }
  kconf = NULL; /* owned by rk now */
  producer->rkt = rd_kafka_topic_new(
      producer->rk, conf->topic ? conf->topic : TALLY_DEFAULT_USAGE_TOPIC,
      NULL);
  if (!producer->rkt) {
    snprintf(errstr, errstr_size, "topic: %s",
             rd_kafka_err2str(rd_kafka_last_error()));
    goto fail;
  }
  return producer;

fail:
  if (kconf)
    rd_kafka_conf_destroy(kconf);
  if (producer->rk)
    rd_kafka_destroy(producer->rk);
  tly_codec_destroy(producer->codec);
  pthread_mutex_destroy(&producer->lock);
  pthread_mutex_destroy(&producer->error_lock);
  free(producer);
  return NULL;
}

int tally_producer_send(tally_producer_t *producer, const tly_event_t *event,
                        void *msg_opaque, char *errstr, size_t errstr_size) {
  char key[1024];
  const void *value;
  size_t value_len, key_len;
  int rc = -1;

  key_len = tly_subject_key(event->subject_kind,
                            event->subject_id ? event->subject_id : "", key,
                            sizeof(key));
  if (key_len >= sizeof(key)) {
    snprintf(errstr, errstr_size, "subject: id longer than %zu bytes",
             sizeof(key) - 16);
    return -1;
  }
  pthread_mutex_lock(&producer->lock);
  if (tly_codec_encode(producer->codec, event, &value, &value_len, errstr,
                       errstr_size))
    goto out;
  for (;;) {
    /* RD_KAFKA_MSG_F_COPY: the codec's buffer is reused on the next call. */
    if (rd_kafka_produce(producer->rkt, RD_KAFKA_PARTITION_UA,
                         RD_KAFKA_MSG_F_COPY, (void *)value, value_len, key,
                         key_len, msg_opaque) == 0)
      break;
    rd_kafka_resp_err_t err = rd_kafka_last_error();
    if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
      snprintf(errstr, errstr_size, "produce: %s", rd_kafka_err2str(err));
      goto out;
    }
    rd_kafka_poll(producer->rk, 50); /* make room: serve delivery reports */
  }
  atomic_fetch_add(&producer->sent, 1);
  rc = 0;
out:
  pthread_mutex_unlock(&producer->lock);
  return rc;
}

void tally_producer_poll(tally_producer_t *producer, int timeout_ms) {
  rd_kafka_poll(producer->rk, timeout_ms);
}

int tally_producer_flush(tally_producer_t *producer, int timeout_ms) {
  return rd_kafka_flush(producer->rk, timeout_ms) == RD_KAFKA_RESP_ERR_NO_ERROR
             ? 0
             : -1;
}

void tally_producer_purge(tally_producer_t *producer) {
  rd_kafka_purge(producer->rk, RD_KAFKA_PURGE_F_QUEUE |
                                   RD_KAFKA_PURGE_F_INFLIGHT |
                                   RD_KAFKA_PURGE_F_NON_BLOCKING);
  /* The purged messages' reports are served by poll (at most 5 s: a
   * purge is final, the reports come at once). */
  for (int i = 0; i < 50; i++) {
    uint64_t done =
        atomic_load(&producer->delivered) + atomic_load(&producer->failed);
    if (done >= atomic_load(&producer->sent))
      break;
    rd_kafka_poll(producer->rk, 100);
  }
}

int tally_producer_last_error(tally_producer_t *producer, char *buf,
                              size_t size) {
  pthread_mutex_lock(&producer->error_lock);
  snprintf(buf, size, "%s", producer->last_error);
  pthread_mutex_unlock(&producer->error_lock);
  return buf[0] != '\0';
}

void tally_producer_stats(tally_producer_t *producer,
                          tally_producer_stats_t *stats) {
  stats->sent = atomic_load(&producer->sent);
  stats->delivered = atomic_load(&producer->delivered);
  stats->failed = atomic_load(&producer->failed);
}

void tally_producer_destroy(tally_producer_t *producer) {
  if (!producer)
    return;
  rd_kafka_flush(producer->rk, 10000);
  rd_kafka_topic_destroy(producer->rkt);
  rd_kafka_destroy(producer->rk);
  tly_codec_destroy(producer->codec);
  pthread_mutex_destroy(&producer->lock);
  pthread_mutex_destroy(&producer->error_lock);
  free(producer);
}
