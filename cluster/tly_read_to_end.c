/*
 * tly_read_to_end.c - reading partitions up to their log ends as asked
 * (tly_read_to_end.h).
 */
#include "tly_read_to_end.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int64_t monotonic_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int tly_read_to_end(rd_kafka_t *reader,
                    const rd_kafka_topic_partition_list_t *from,
                    int64_t timeout_ms, tly_read_visit_fn visit, void *opaque,
                    char *errstr, size_t errstr_size) {
  int count = from->cnt;
  /* ends[i]: the log end of from's element i as asked, or -1 once done. */
  int64_t *ends = calloc((size_t)count + 1, sizeof(*ends));
  rd_kafka_topic_partition_list_t *parts =
      rd_kafka_topic_partition_list_new(count > 0 ? count : 1);
  int pending = 0, rc = 0;
  if (!ends || !parts) {
    snprintf(errstr, errstr_size, "out of memory");
    rc = -1;
    goto out;
  }
  for (int i = 0; i < count; i++) {
    const rd_kafka_topic_partition_t *at = &from->elems[i];
    int64_t low, high;
    rd_kafka_resp_err_t err = rd_kafka_query_watermark_offsets(
        reader, at->topic, at->partition, &low, &high, 10000);
    if (err) {
      snprintf(errstr, errstr_size, "the log end of %s[%d]: %s", at->topic,
               (int)at->partition, rd_kafka_err2str(err));
      rc = -1;
      goto out;
    }
    int64_t start = at->offset < low ? low : at->offset;
    ends[i] = start < high ? high : -1;
    if (ends[i] < 0)
      continue; /* nothing to read */
    rd_kafka_topic_partition_list_add(parts, at->topic, at->partition)->offset =
        start;
    pending++;
  }
  if (!pending)
    goto out;
  rd_kafka_resp_err_t err = rd_kafka_assign(reader, parts);
  if (err) {
    snprintf(errstr, errstr_size, "assigning: %s", rd_kafka_err2str(err));
    rc = -1;
    goto out;
  }
  int64_t deadline = monotonic_ms() + timeout_ms;
  while (pending > 0) {
    if (monotonic_ms() > deadline) {
      snprintf(errstr, errstr_size,
               "%d partition(s) not read to their end within %lld ms", pending,
               (long long)timeout_ms);
      rc = -1;
      break;
    }
    rd_kafka_message_t *msg = rd_kafka_consumer_poll(reader, 200);
    if (!msg)
      continue;
    int i = 0;
    while (i < count &&
           (from->elems[i].partition != msg->partition || !msg->rkt ||
            strcmp(from->elems[i].topic, rd_kafka_topic_name(msg->rkt))))
      i++;
    int eof = msg->err == RD_KAFKA_RESP_ERR__PARTITION_EOF;
    if (!msg->err && visit)
      visit(opaque, msg);
    if (i < count && ends[i] >= 0 && (eof || !msg->err) &&
        msg->offset >= ends[i] - (eof ? 0 : 1)) {
      ends[i] = -1;
      pending--;
    }
    rd_kafka_message_destroy(msg);
  }
  rd_kafka_assign(reader, NULL);
out:
  free(ends);
  if (parts)
    rd_kafka_topic_partition_list_destroy(parts);
  return rc;
}
