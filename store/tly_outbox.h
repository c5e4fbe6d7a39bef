/*
 * tly_outbox.h - output records waiting in RocksDB to be published to Kafka.
 * Owns the outbox entry format and its keys; never publishes (the
 * processor does) and never decides what an output is.
 *
 * The processor writes every output of a batch (dead letters now, alerts
 * later) into the outbox column family in the same synced WriteBatch as the
 * state and the input offsets; only then does the publisher produce them,
 * and it deletes each entry after Kafka acknowledged it. A crash anywhere
 * leaves either no trace of the batch or the whole batch with its outputs
 * still in the outbox (DESIGN.md, "Exactly-once").
 *
 * Each record carries a deterministic output id (header "tally.output.id")
 * so recovery can recognise records Kafka already holds.
 *
 * A record may name its partition (the producer's partitioner picks one
 * otherwise), keep a Kafka timestamp (a record forwarded to its subject's
 * home partition keeps the original's, tly_reroute.h) and say from which
 * offset of that partition recovery must read to find it.
 */
#ifndef TLY_OUTBOX_H
#define TLY_OUTBOX_H

#include <stddef.h>
#include <stdint.h>

/* A forwarded record keeps the original's headers (up to this many in
 * all, tly_reroute.h). */
#define TLY_OUTBOX_MAX_HEADERS 64

typedef struct {
  const char *name;
  const char *value;
  size_t value_len;
} tly_outbox_header_t;

/* A decoded record: every pointer points into the encoded buffer or the
 * caller's data; nothing is owned. */
typedef struct {
  const char *topic;
  size_t topic_len;
  const char *key;
  size_t key_len;
  const char *value;
  size_t value_len;
  size_t header_count;
  tly_outbox_header_t headers[TLY_OUTBOX_MAX_HEADERS];
  size_t header_name_len[TLY_OUTBOX_MAX_HEADERS];
  /* With partitioned set: the destination partition, the record's Kafka
   * timestamp (0: when it is produced) and an offset of that partition at
   * or below where the record lands (-1: unknown), which recovery reads
   * from to find it. Not set (a zeroed record): the producer's partitioner
   * picks the partition, the timestamp is the produce time. */
  int partitioned;
  int32_t partition;
  int64_t timestamp_ms;
  int64_t scan_from;
} tly_outbox_record_t;

/* Encodes record into a malloc'd buffer (*out, *out_len). 0, or -1 on OOM
 * or a field too long for the format. Header names are NUL-terminated. */
int tly_outbox_encode(const tly_outbox_record_t *record, char **out,
                      size_t *out_len);

/* Decodes an encoded record; pointers point into data. 0, or -1 when the
 * bytes are not a well-formed record. Header names are not NUL-terminated:
 * use header_name_len. */
int tly_outbox_decode(const char *data, size_t len,
                      tly_outbox_record_t *record);

#endif
