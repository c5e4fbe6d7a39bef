/*
 * tly_kafka_client.h - what every Kafka client tally creates shares, in one
 * place: its librdkafka log goes through tally's log (base/tly_log.h, one
 * line each, "warn kafka: ...") instead of librdkafka's own stderr format,
 * and every producer partitions by murmur2 (librdkafka's
 * partitioner=murmur2_random: a keyed record goes where Java's default
 * partitioner puts it, positive(murmur2(key)) % partitions; a record
 * without a key goes to a random partition), for every topic tally writes.
 * Owns these settings; never creates a client, never produces.
 */
#ifndef TLY_KAFKA_CLIENT_H
#define TLY_KAFKA_CLIENT_H

#include "tly_log.h"

/* The partitioner of every tally producer, as a "name=value" property. */
#define TLY_KAFKA_PARTITIONER "murmur2_random"
#define TLY_KAFKA_PARTITIONER_PROPERTY "partitioner=" TLY_KAFKA_PARTITIONER

struct rd_kafka_conf_s;

/* Routes conf's librdkafka log through tly_log (and with it the error
 * reports of a client that sets no error callback): librdkafka's EMERG..CRIT ->
 * error, ERR and WARNING -> warn, NOTICE and INFO -> info, DEBUG -> debug. */
void tly_kafka_conf_log(struct rd_kafka_conf_s *conf);

/* The least level of librdkafka's lines that are printed (default
 * TLY_LOG_INFO; tally's own lines keep tly_log_set_level's). `tally emit`
 * raises it so one clear line replaces librdkafka's reconnect chatter. */
void tly_kafka_log_set_level(tly_log_level_t level);

/* One line as the log callback writes it (same filter), for a client's own
 * error callback. rk may be NULL. */
struct rd_kafka_s;
void tly_kafka_log_line(tly_log_level_t level, const struct rd_kafka_s *rk,
                        const char *facility, const char *text);

#endif
