/*
 * tally_producer.h - the client library services link to send usage events.
 * Owns producing events; never folds, never reads state.
 *
 * Events are validated and encoded (Avro, Confluent framing) and produced to
 * the usage topic keyed by subject ("kind:id") with librdkafka's idempotent
 * producer and the Java-compatible murmur2 partitioner, so every event of a
 * subject lands on one partition, in order, whichever language produced it.
 *
 *   tally_producer_conf_t conf = {.brokers = "127.0.0.1:9092"};
 *   tally_producer_t *producer = tally_producer_new(&conf, err, sizeof err);
 *   tally_producer_send(producer, &event, NULL, err, sizeof err);
 *   tally_producer_flush(producer, 10000);
 *   tally_producer_destroy(producer);
 *
 * Delivery is asynchronous: each send's outcome reaches conf.on_delivery
 * (from inside tally_producer_send/poll/flush, on the calling thread) and the
 * counters of tally_producer_stats(). Sends from several threads are safe.
 */
#ifndef TALLY_PRODUCER_H
#define TALLY_PRODUCER_H

#include "tly_event.h"
#include "tly_topic_names.h"

#include <stddef.h>
#include <stdint.h>

#define TALLY_DEFAULT_USAGE_TOPIC TLY_DEFAULT_USAGE_TOPIC

typedef struct tally_producer tally_producer_t;

/* error is 0 on success, otherwise a librdkafka error code and its text. */
typedef void(tally_delivery_cb)(void *opaque, void *msg_opaque, int error,
                                const char *errstr);
/* The same with where the event landed: its partition and offset (-1 when
 * unknown, e.g. on failure). */
typedef void(tally_delivery_at_cb)(void *opaque, void *msg_opaque, int error,
                                   const char *errstr, int32_t partition,
                                   int64_t offset);

typedef struct {
  const char *brokers;            /* required: bootstrap servers */
  const char *topic;              /* default TALLY_DEFAULT_USAGE_TOPIC */
  int32_t schema_id;              /* default TLY_CODEC_DEFAULT_SCHEMA_ID */
  tally_delivery_cb *on_delivery; /* optional */
  void *opaque;                   /* passed to on_delivery */
  /* Optional: called instead of on_delivery, with the partition and
   * offset the event was written at. */
  tally_delivery_at_cb *on_delivery_at;
  /* Optional extra librdkafka properties, "name=value", NULL-terminated
   * (e.g. TLS/SASL settings). They override tally's defaults. */
  const char *const *kafka_properties;
} tally_producer_conf_t;

typedef struct {
  uint64_t sent;      /* accepted by tally_producer_send */
  uint64_t delivered; /* acknowledged by the broker */
  uint64_t failed;    /* reported failed */
} tally_producer_stats_t;

tally_producer_t *tally_producer_new(const tally_producer_conf_t *conf,
                                     char *errstr, size_t errstr_size);

/*
 * Validates, encodes and enqueues one event. Blocks (serving delivery
 * reports) while the local queue is full. msg_opaque is handed back to
 * on_delivery. Returns 0, or -1 with errstr (invalid event, or an error
 * from librdkafka); a rejected event is never counted as sent.
 */
int tally_producer_send(tally_producer_t *producer, const tly_event_t *event,
                        void *msg_opaque, char *errstr, size_t errstr_size);

/* Serves delivery reports for up to timeout_ms. */
void tally_producer_poll(tally_producer_t *producer, int timeout_ms);

/* Waits until every sent event is delivered or failed. 0, or -1 when
 * timeout_ms passed with events still outstanding. */
int tally_producer_flush(tally_producer_t *producer, int timeout_ms);

void tally_producer_stats(tally_producer_t *producer,
                          tally_producer_stats_t *stats);

/* Gives up on every event not yet acknowledged: queued ones and those in
 * flight (which may still reach Kafka; event_id dedupe makes sending them
 * again safe). Each is reported failed, to on_delivery and the counters,
 * before this returns. */
void tally_producer_purge(tally_producer_t *producer);

/* The last error librdkafka reported for the connection (e.g. "...: Connect
 * to ipv4#127.0.0.1:1 failed: Connection refused") into buf; 1, or 0 (buf
 * "") when none was. Errors are also logged (tly_kafka_client.h). */
int tally_producer_last_error(tally_producer_t *producer, char *buf,
                              size_t size);

/* Flushes for up to 10 s, then frees everything. */
void tally_producer_destroy(tally_producer_t *producer);

/*
 * Applies "name=value" properties to a librdkafka config; shared by every
 * Kafka client tally creates. 0, or -1 with errstr naming the property.
 */
struct rd_kafka_conf_s;
int tly_kafka_conf_apply(struct rd_kafka_conf_s *conf,
                         const char *const *properties, char *errstr,
                         size_t errstr_size);

#endif
