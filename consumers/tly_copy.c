/*
 * tly_copy.c - how stale a copy of a partition's state is
 * (tly_processor_copy_staleness in tly_processor.h).
 *
 * A copy holds every record of the partition below its offset. What it
 * misses is the log from that offset to the end: lag_records. Its true
 * staleness is the age of the first record it misses (the Kafka timestamp
 * of the record at the offset): the copy was exact until that record was
 * produced. The log end is asked of the broker on every call; the
 * timestamp is read once per (partition, offset) by a consumer of its own
 * (no group) and kept, since a copy that is not moving keeps its offset.
 *
 * Never folds, never writes the store: it only reads the input topic.
 */
#include "tly_processor_internal.h"

#include "tly_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Kafka timestamp of the record at offset of the usage topic's partition,
 * read through the copy reader (created on first use); -1 when it cannot
 * be read within timeout_ms. Caller holds p->copy_lock. */
static int64_t record_timestamp(tly_processor_t *p, int32_t partition,
                                int64_t offset, int timeout_ms) {
  char errstr[512];
  if (!p->copy_reader) {
    const char *defaults[] = {"group.id=tally-copy-age",
                              "enable.auto.commit=false",
                              "enable.partition.eof=true",
                              "fetch.wait.max.ms=10",
                              "max.partition.fetch.bytes=65536",
                              "queued.min.messages=1",
                              NULL};
    p->copy_reader = tly_proc_reader_new(p, defaults, errstr, sizeof(errstr));
    if (!p->copy_reader) {
      tly_log(TLY_LOG_WARN, "processor", "copy staleness reader: %s", errstr);
      return -1;
    }
  }
  rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(list, p->usage_topic, partition)->offset =
      offset;
  int64_t timestamp = -1;
  if (rd_kafka_assign(p->copy_reader, list) == RD_KAFKA_RESP_ERR_NO_ERROR) {
    int64_t deadline = tly_monotonic_ms() + timeout_ms;
    while (timestamp < 0 && tly_monotonic_ms() < deadline) {
      rd_kafka_message_t *msg = rd_kafka_consumer_poll(p->copy_reader, 20);
      if (!msg)
        continue;
      if (!msg->err && msg->partition == partition && msg->offset >= offset) {
        rd_kafka_timestamp_type_t type;
        timestamp = rd_kafka_message_timestamp(msg, &type);
      }
      int eof = msg->err == RD_KAFKA_RESP_ERR__PARTITION_EOF;
      rd_kafka_message_destroy(msg);
      if (eof)
        break;
    }
    rd_kafka_assign(p->copy_reader, NULL);
  }
  rd_kafka_topic_partition_list_destroy(list);
  return timestamp;
}

int tly_processor_copy_staleness(tly_processor_t *p, int32_t partition,
                                 int64_t offset, int64_t *lag_records,
                                 int64_t *age_ms) {
  int64_t low = 0, high = 0;
  if (partition < 0 || offset < 0 ||
      rd_kafka_query_watermark_offsets(p->consumer, p->usage_topic, partition,
                                       &low, &high, 2000))
    return -1;
  *lag_records = high > offset ? high - offset : 0;
  *age_ms = 0;
  if (!*lag_records)
    return 0;
  int64_t timestamp = -1;
  pthread_mutex_lock(&p->copy_lock);
  if (partition < TLY_COPY_CACHE && p->copy_cache[partition].offset == offset)
    timestamp = p->copy_cache[partition].timestamp_ms;
  if (timestamp < 0) {
    timestamp = record_timestamp(p, partition, offset, 1000);
    if (timestamp >= 0 && partition < TLY_COPY_CACHE) {
      p->copy_cache[partition].offset = offset;
      p->copy_cache[partition].timestamp_ms = timestamp;
    }
  }
  pthread_mutex_unlock(&p->copy_lock);
  if (timestamp < 0)
    return -1;
  int64_t age = tly_wall_ms() - timestamp;
  *age_ms = age > 0 ? age : 0;
  return 0;
}

uint64_t tly_processor_restore_epoch(tly_processor_t *p) {
  return atomic_load(&p->restore_epoch);
}

void tly_proc_copy_destroy(tly_processor_t *p) {
  if (p->copy_reader) {
    rd_kafka_consumer_close(p->copy_reader);
    rd_kafka_destroy(p->copy_reader);
    p->copy_reader = NULL;
  }
}
