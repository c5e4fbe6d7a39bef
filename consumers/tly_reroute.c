/*
 * tly_reroute.c - records on a partition other than their subject's home
 * (see tly_reroute.h).
 */
#include "tly_reroute.h"

#include "tly_log.h"
#include "tly_state.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOG_INTERVAL_MS (60LL * 1000)

/* The value of msg's last header called name, as text in out ("" when
 * there is none). */
static const char *header_text(const rd_kafka_message_t *msg, const char *name,
                               char *out, size_t size) {
  rd_kafka_headers_t *headers = NULL;
  const void *value = NULL;
  size_t len = 0;
  out[0] = '\0';
  if (rd_kafka_message_headers(msg, &headers) ||
      rd_kafka_header_get_last(headers, name, &value, &len))
    return NULL;
  if (!value)
    len = 0;
  snprintf(out, size, "%.*s", (int)(len < size ? len : size - 1),
           len ? (const char *)value : "");
  return out;
}

tly_reroute_decision_t tly_reroute_decide(const rd_kafka_message_t *msg,
                                          const tly_event_t *event,
                                          int32_t partition_count,
                                          int32_t *home, char *errstr,
                                          size_t errstr_size) {
  char from[64];
  if (event->subject_kind == TLY_SUBJECT_SYSTEM ||
      event->body_kind == TLY_BODY_TICK || !event->subject_id)
    return TLY_REROUTE_HOME; /* ticks belong to their partition */
  int32_t partition = tly_state_home_partition(
      partition_count, event->subject_kind, event->subject_id);
  if (partition < 0 || partition == msg->partition)
    return TLY_REROUTE_HOME;
  if (header_text(msg, TLY_REROUTE_FORWARDED_HEADER, from, sizeof(from))) {
    snprintf(errstr, errstr_size,
             "forwarded from %s to partition %d, which is not its subject's "
             "home partition either (%d of %d partitions): the input's "
             "partition count changed in between? Not forwarded again",
             from, (int)msg->partition, (int)partition, (int)partition_count);
    return TLY_REROUTE_STRAY;
  }
  *home = partition;
  return TLY_REROUTE_FORWARD;
}

void tly_reroute_forward(const rd_kafka_message_t *msg, int32_t home,
                         int64_t scan_from, tly_reroute_forward_t *out) {
  const char *topic = rd_kafka_topic_name(msg->rkt);
  tly_outbox_record_t *record = &out->record;
  rd_kafka_headers_t *headers = NULL;
  rd_kafka_timestamp_type_t type;
  int64_t timestamp = rd_kafka_message_timestamp(msg, &type);

  memset(out, 0, sizeof(*out));
  snprintf(out->output_id, sizeof(out->output_id), "fwd:%s:%d:%" PRId64, topic,
           (int)msg->partition, (int64_t)msg->offset);
  snprintf(out->from, sizeof(out->from), "%d@%" PRId64, (int)msg->partition,
           (int64_t)msg->offset);
  snprintf(out->source, sizeof(out->source), "%d", (int)msg->partition);
  record->topic = topic;
  record->topic_len = strlen(topic);
  record->key = msg->key;
  record->key_len = msg->key ? msg->key_len : 0;
  record->value = msg->payload;
  record->value_len = msg->payload ? msg->len : 0;
  record->partitioned = 1;
  record->partition = home;
  record->timestamp_ms =
      type != RD_KAFKA_TIMESTAMP_NOT_AVAILABLE && timestamp > 0 ? timestamp : 0;
  record->scan_from = scan_from;

  /* The original's headers, but tally's own (they describe what tally did
   * to it, and ours are set below), while they fit. */
  const size_t ours = 3;
  if (!rd_kafka_message_headers(msg, &headers)) {
    const char *name;
    const void *value;
    size_t len;
    for (size_t i = 0;
         !rd_kafka_header_get_all(headers, i, &name, &value, &len); i++) {
      if (!strncmp(name, "tally.", 6))
        continue;
      if (record->header_count + 1 + ours > TLY_OUTBOX_MAX_HEADERS) {
        out->headers_dropped++;
        continue;
      }
      record->headers[record->header_count++] =
          (tly_outbox_header_t){name, value ? value : "", value ? len : 0};
    }
  }
  record->headers[record->header_count++] = (tly_outbox_header_t){
      TLY_REROUTE_FORWARDED_HEADER, out->from, strlen(out->from)};
  record->headers[record->header_count++] = (tly_outbox_header_t){
      "tally.source.partition", out->source, strlen(out->source)};
  /* Last: recovery reads the last tally.output.id of a record. */
  record->headers[record->header_count++] = (tly_outbox_header_t){
      "tally.output.id", out->output_id, strlen(out->output_id)};
}

int tly_reroute_floors_add(int64_t **floors, int32_t *count,
                           const tly_outbox_record_t *record,
                           const char *usage_topic) {
  size_t topic_len = strlen(usage_topic);
  if (!record->partitioned || record->partition < 0 ||
      record->topic_len != topic_len ||
      memcmp(record->topic, usage_topic, topic_len))
    return 0;
  if (record->partition >= *count) {
    int64_t *grown =
        realloc(*floors, ((size_t)record->partition + 1) * sizeof(**floors));
    if (!grown)
      return -1;
    for (int32_t i = *count; i <= record->partition; i++)
      grown[i] = -1;
    *floors = grown;
    *count = record->partition + 1;
  }
  int64_t from = record->scan_from >= 0 ? record->scan_from : 0;
  int64_t *floor = &(*floors)[record->partition];
  if (*floor < 0 || from < *floor)
    *floor = from;
  return 0;
}

void tly_reroute_log(tly_reroute_log_t *log, const rd_kafka_message_t *msg,
                     int32_t home, size_t headers_dropped) {
  int64_t now = tly_monotonic_ms();
  log->unlogged++;
  log->headers_dropped += headers_dropped;
  if (log->next_log_ms && now < log->next_log_ms)
    return;
  tly_log(TLY_LOG_WARN, "processor",
          "%" PRIu64 " input record%s on a partition other than %s "
          "subject's home partition (murmur2 of the subject key) forwarded "
          "there%s (latest: %s[%d]@%" PRId64 " -> partition %d); %s producer "
          "does not partition by the subject key; "
          "tally_events_forwarded_total counts them%s",
          log->unlogged, log->unlogged == 1 ? "" : "s",
          log->unlogged == 1 ? "its" : "their",
          log->next_log_ms ? " since the last such line" : "",
          rd_kafka_topic_name(msg->rkt), (int)msg->partition,
          (int64_t)msg->offset, (int)home, log->unlogged == 1 ? "its" : "their",
          log->headers_dropped ? "; headers beyond the outbox's limit were "
                                 "left out of some"
                               : "");
  log->unlogged = 0;
  log->headers_dropped = 0;
  log->next_log_ms = now + LOG_INTERVAL_MS;
}
