/*
 * tly_reroute.h - input records that arrive on a partition other than their
 * subject's home partition.
 *
 * A subject's state lives on one partition, its home: murmur2 of the
 * subject key "kind:id" modulo the input topic's partition count, the
 * partition tally's producers (and Java clients, and the HTTP port's
 * routing) pick. Other producers may put a subject's records elsewhere:
 * librdkafka's default partitioner (consistent_random, used by
 * confluent-kafka-python/go/.NET), an explicit partition, a key that is
 * not the subject key. Folded where they arrive, such records would build
 * a second, invisible state for the subject and escape its home's dedupe.
 *
 * So the processor forwards such a record to the home partition of the
 * same topic, through the outbox like any other output (committed with the
 * batch, published after it, reconciled on recovery by its output id
 * "fwd:<topic>:<partition>:<offset>"), and does not fold it where it
 * arrived. The forwarded copy keeps the original's key, value (so its
 * event id) and Kafka timestamp, and is marked with the header
 * tally.forwarded.from = "<partition>@<offset>": the home partition folds
 * it like any record, and its dedupe counts the event once however many
 * partitions it was sent to. A marked record that is still not on its
 * home partition (the partition count changed in between) is never
 * forwarded again: it goes to the dead-letter topic with the reason.
 *
 * Ticks (the system subject) belong to the partition they are written to
 * and are never forwarded. This module decides and builds the record; the
 * processor queues it (tly_processor.c). No I/O here but the log line.
 */
#ifndef TLY_REROUTE_H
#define TLY_REROUTE_H

#include "tly_event.h"
#include "tly_outbox.h"

#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdint.h>

#define TLY_REROUTE_FORWARDED_HEADER "tally.forwarded.from"

typedef enum {
  TLY_REROUTE_HOME = 0, /* on its home partition, or it has none (a tick,
                           an id too long for a key): fold it here */
  TLY_REROUTE_FORWARD,  /* forward it to *home */
  TLY_REROUTE_STRAY     /* forwarded once already and still not home:
                           dead-letter it (the reason is in errstr) */
} tly_reroute_decision_t;

/* Where the decoded event of msg belongs, given the input topic's
 * partition count. *home is set for TLY_REROUTE_FORWARD. */
tly_reroute_decision_t tly_reroute_decide(const rd_kafka_message_t *msg,
                                          const tly_event_t *event,
                                          int32_t partition_count,
                                          int32_t *home, char *errstr,
                                          size_t errstr_size);

/* The outbox record forwarding msg to partition home of its own topic, and
 * the text its headers point at. */
typedef struct {
  tly_outbox_record_t record;
  char output_id[320];
  char from[48];
  char source[16];
  size_t headers_dropped; /* of the original's, left out (see below) */
} tly_reroute_forward_t;

/*
 * Fills out: msg's key, value and Kafka timestamp, its headers except
 * those named "tally.*" (tally's own, rewritten here) up to what the outbox
 * holds, then tally.forwarded.from, tally.source.partition and
 * tally.output.id; placed on partition home with scan_from (an offset of
 * home at or below where it will land, -1 unknown; tly_outbox.h). The
 * record points into msg and out: valid while both are.
 */
void tly_reroute_forward(const rd_kafka_message_t *msg, int32_t home,
                         int64_t scan_from, tly_reroute_forward_t *out);

/*
 * Recovery looks for the forwards an outbox holds in the input topic
 * (named usage_topic) by partition: floors (*count entries, grown with
 * realloc) gets, per destination partition, the lowest scan start of the
 * forwards to it (0 for one with none), -1 for partitions none goes to.
 * Adds record when it is a forward to usage_topic (ignores it otherwise).
 * 0, or -1 out of memory (*floors is left as it was: free it).
 */
int tly_reroute_floors_add(int64_t **floors, int32_t *count,
                           const tly_outbox_record_t *record,
                           const char *usage_topic);

/* The log line about forwarded records: the first at once, then at most
 * one a minute with the count since the last. Zero-initialise. */
typedef struct {
  int64_t next_log_ms; /* monotonic; 0: log the next one at once */
  uint64_t unlogged;   /* forwarded since the last line */
  uint64_t headers_dropped;
} tly_reroute_log_t;

void tly_reroute_log(tly_reroute_log_t *log, const rd_kafka_message_t *msg,
                     int32_t home, size_t headers_dropped);

#endif
