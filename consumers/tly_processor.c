/*
 * tly_processor.c - the processor loop (see tly_processor.h).
 *
 * One thread runs the consumer, the fold and the outbox publisher; a
 * writer thread makes each batch durable (one synced RocksDB write) while
 * the next one is folded. Rebalance callbacks run inside the consume call
 * on the main thread, which is what lets a revoke commit the batch in
 * progress, and wait for it, before the partitions go: nothing folded is
 * ever lost to a rebalance.
 *
 * Order of a batch (the exactly-once protocol of DESIGN.md):
 *   1. consume until the group commit rule (tly_group_commit.h) closes
 *      the batch: at once when the writer is free, else when it finishes
 *      (it wakes the loop), at most batch_max_events (a backlog grows to
 *      that); decode; undecodable records become dead-letter outputs;
 *   2. fold into the overlay (subject records loaded from RocksDB on first
 *      touch; event ids checked against the partition's in-memory index);
 *   3. one WriteBatch: the dirty subject records, one blob of the batch's
 *      event ids per partition, outbox entries, next offsets (+ deletes of
 *      outbox entries Kafka has acknowledged), handed to the writer;
 *   4. once the writer reports it durable (and not before; the loop
 *      takes it as soon as the writer wakes it): the batch's outputs join
 *      the outbox and are published, its offsets count as committed, its
 *      records as visible; their deletes ride on a later commit.
 *
 * This file is the loop (steps 1 and 2: consume, and fold each record,
 * with what the fold sends out; the rebalance callback is tly_rebalance.c) and
 * the processor's lifecycle (new, run, destroy). The rest of the processor
 * (tly_processor_internal.h): step 3 in tly_commit.c, step 4 in
 * tly_outbox_publish.c, the state the fold works through in tly_fold_view.c,
 * assigned partitions' state in tly_restore.c, the replay rule in
 * tly_replay.c, ticks in tly_ticks.c, the read-side API (status queries) in
 * tly_processor_query.c, the Kafka clients' setup in tly_processor_kafka.c.
 */
#include "tly_processor.h"
#include "tly_processor_internal.h"

#include "tally_producer.h"
#include "tly_alert.h"
#include "tly_billing.h"
#include "tly_changelog_restore.h"
#include "tly_codec.h"
#include "tly_dedupe.h"
#include "tly_group_commit.h"
#include "tly_kafka_client.h"
#include "tly_keys.h"
#include "tly_log.h"
#include "tly_outbox.h"
#include "tly_overlay.h"
#include "tly_record.h"
#include "tly_release.h"
#include "tly_reroute.h"
#include "tly_topics.h"

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_MAX 1200

void tly_proc_set_fatal(tly_processor_t *p, const char *fmt, ...) {
  va_list ap;
  if (p->fatal)
    return; /* keep the first cause */
  va_start(ap, fmt);
  vsnprintf(p->fatal_reason, sizeof(p->fatal_reason), fmt, ap);
  va_end(ap);
  p->fatal = 1;
}

/* Makes room for partition ids below count; caller holds p->lock. */
int tly_proc_ensure_partitions(tly_processor_t *p, int32_t count) {
  if (count <= p->partition_cap)
    return 0;
  partition_state_t *grown = realloc(p->partitions, sizeof(*grown) * count);
  if (!grown)
    return -1;
  for (int32_t i = p->partition_cap; i < count; i++)
    grown[i] = (partition_state_t){.committed = -1,
                                   .batch_next = -1,
                                   .position = -1,
                                   .watermark = INT64_MIN,
                                   .dedupe_key = -1,
                                   .dedupe_floor = INT64_MIN,
                                   .inflight_next = -1,
                                   .inflight_horizon = INT64_MIN,
                                   .inflight_watermark = INT64_MIN};
  p->partitions = grown;
  p->partition_cap = count;
  return 0;
}

/* ---- the fold's outputs: dead letters and alerts --------------------- */

static int add_output(tly_processor_t *p, const tly_outbox_record_t *record) {
  if (array_room(&p->outputs, &p->output_cap, p->output_count + 1,
                 sizeof(*p->outputs)))
    return -1;
  pending_output_t *out = &p->outputs[p->output_count];
  if (tly_outbox_encode(record, &out->record, &out->record_len))
    return -1;
  p->output_bytes += out->record_len;
  p->output_count++;
  return 0;
}

/* At most this many dead letters a second are logged one by one; the rest
 * are summed in one line when the second is over. Every one of them is on
 * the dead-letter topic with its reason and in tally_dead_letters_total. */
#define DEAD_LETTER_LOG_PER_S 20

/* Starts a new second of dead-letter logging once the last one is over,
 * logging how many were left out of it. */
static void log_dead_letters_left_out(tly_processor_t *p) {
  int64_t second = tly_monotonic_ms() / 1000;
  if (second == p->dead_log_second)
    return;
  if (p->dead_log_left_out)
    tly_log(TLY_LOG_WARN, "processor",
            "%llu more dead letters in a second were not logged one by one "
            "(each is on %s with its reason; tally_dead_letters_total "
            "counts them all)",
            (unsigned long long)p->dead_log_left_out, p->dlq_topic);
  p->dead_log_second = second;
  p->dead_log_count = 0;
  p->dead_log_left_out = 0;
}

/* An input record that cannot be folded goes to the dead-letter topic with
 * the reason and where it came from; the loop goes on. */
static void dead_letter(tly_processor_t *p, const rd_kafka_message_t *msg,
                        const char *reason) {
  char partition[16], offset[24], output_id[320];
  const char *topic = rd_kafka_topic_name(msg->rkt);
  tly_outbox_record_t record = {0};

  snprintf(partition, sizeof(partition), "%d", (int)msg->partition);
  snprintf(offset, sizeof(offset), "%lld", (long long)msg->offset);
  snprintf(output_id, sizeof(output_id), "dlq:%s:%d:%lld", topic,
           (int)msg->partition, (long long)msg->offset);
  if (tly_proc_replay_already_sent(p, msg->partition, msg->offset, output_id))
    return;
  record.topic = p->dlq_topic;
  record.topic_len = strlen(p->dlq_topic);
  record.key = msg->key;
  record.key_len = msg->key ? msg->key_len : 0;
  record.value = msg->payload;
  record.value_len = msg->payload ? msg->len : 0;
  record.headers[0] =
      (tly_outbox_header_t){"tally.error", reason, strlen(reason)};
  record.headers[1] =
      (tly_outbox_header_t){"tally.source.topic", topic, strlen(topic)};
  record.headers[2] = (tly_outbox_header_t){"tally.source.partition", partition,
                                            strlen(partition)};
  record.headers[3] =
      (tly_outbox_header_t){"tally.source.offset", offset, strlen(offset)};
  record.headers[4] =
      (tly_outbox_header_t){"tally.output.id", output_id, strlen(output_id)};
  record.header_count = 5;
  /* A record larger than the producer takes (message.max.bytes: its key,
   * value and headers) would be refused at every try and hold the outbox,
   * and so the fold, for good: its value is cut to fit, and the dead letter
   * says so (tally.truncated: the value's length in the input topic, where
   * the whole record stays at tally.source.offset). */
  char original[24], original_key[24];
  size_t headers = 1024; /* the headers' framing, and tally.truncated */
  for (size_t i = 0; i < record.header_count; i++)
    headers += strlen(record.headers[i].name) + record.headers[i].value_len;
  if (record.key_len > p->message_max / 2) { /* a key, even, may be huge */
    snprintf(original_key, sizeof(original_key), "%zu", record.key_len);
    record.key_len = p->message_max / 2;
    record.headers[record.header_count++] = (tly_outbox_header_t){
        "tally.truncated.key", original_key, strlen(original_key)};
  }
  size_t room = p->message_max > record.key_len + headers
                    ? p->message_max - record.key_len - headers
                    : 0;
  if (record.value_len > room) {
    snprintf(original, sizeof(original), "%zu", record.value_len);
    record.value_len = room;
    record.headers[record.header_count++] =
        (tly_outbox_header_t){"tally.truncated", original, strlen(original)};
  }
  if (add_output(p, &record)) {
    tly_proc_set_fatal(p, "out of memory writing a dead letter");
    return;
  }
  atomic_fetch_add(&p->dead_letters, 1);
  log_dead_letters_left_out(p);
  if (p->dead_log_count >= DEAD_LETTER_LOG_PER_S) {
    p->dead_log_left_out++;
    return;
  }
  p->dead_log_count++;
  tly_log(TLY_LOG_WARN, "processor", "dead letter %s[%d]@%lld: %s", topic,
          (int)msg->partition, (long long)msg->offset, reason);
}

/* The subject's alert history (for /alerts): the alert as sent, under
 * [p][kind:id][0]['A'][at][alert id], in the batch that sends it. An alert
 * folded again (replay) lands on the same key. */
static int record_alert(tly_processor_t *p, const tly_alert_t *alert,
                        const void *value, size_t value_len) {
  char key[TLY_KEY_MAX];
  size_t len =
      tly_key_history(p->view_partition, alert->subject_kind, alert->subject_id,
                      TLY_HISTORY_ALERT, key, sizeof(key));
  size_t id_len = strlen(alert->alert_id);
  if (!len || len + 8 + id_len > sizeof(key) ||
      !tly_proc_record_room(p, 8 + value_len))
    return -1;
  tly_put_be64((unsigned char *)key + len, (uint64_t)alert->occurred_at_ms);
  memcpy(key + len + 8, alert->alert_id, id_len);
  memcpy(p->record + 8, value, value_len);
  tly_proc_put_history(p, key, len + 8 + id_len,
                       alert->occurred_at_ms +
                           p->conf.config->retention.alerts_days * TLY_DAY_MS,
                       8 + value_len);
  return 0;
}

/* Moves the fold's alerts into the batch's outputs (alerts topic). */
static void queue_alerts(tly_processor_t *p) {
  char errstr[256], key[300];
  for (size_t i = 0; i < p->alerts.count && !p->fatal; i++) {
    const tly_alert_t *alert = &p->alerts.items[i];
    const void *value;
    size_t value_len;
    if (tly_alert_encode(p->alert_codec, alert, &value, &value_len, errstr,
                         sizeof(errstr))) {
      tly_proc_set_fatal(p, "encoding alert %s: %s", alert->alert_id, errstr);
      break;
    }
    size_t key_len = tly_subject_key(alert->subject_kind, alert->subject_id,
                                     key, sizeof(key));
    const char *type = tly_alert_type_name(alert->type);
    tly_outbox_record_t record = {0};
    record.topic = p->alerts_topic;
    record.topic_len = strlen(p->alerts_topic);
    record.key = key;
    record.key_len = key_len < sizeof(key) ? key_len : sizeof(key) - 1;
    record.value = value;
    record.value_len = value_len;
    record.headers[0] = (tly_outbox_header_t){
        "tally.output.id", alert->alert_id, strlen(alert->alert_id)};
    record.headers[1] =
        (tly_outbox_header_t){"tally.alert.type", type, strlen(type)};
    char source[16];
    snprintf(source, sizeof(source), "%d", (int)p->view_partition);
    record.headers[2] =
        (tly_outbox_header_t){"tally.source.partition", source, strlen(source)};
    record.header_count = 3;
    /* The alert history is state and is written either way. */
    int sent = tly_proc_replay_already_sent(p, p->view_partition,
                                            p->view_offset, alert->alert_id);
    if (!sent && add_output(p, &record))
      tly_proc_set_fatal(p, "out of memory queueing an alert");
    else if (record_alert(p, alert, value, value_len))
      tly_proc_set_fatal(p, "out of memory recording an alert");
    atomic_fetch_add(&p->alerts_total, 1);
  }
  tly_alert_list_clear(&p->alerts);
}

/* ---- records off their subject's home partition (tly_reroute.h) ------- */

/* A record that is not on its subject's home partition is forwarded there
 * through the outbox, or dead-lettered when it was forwarded once already
 * (tly_reroute.h). 1 when so (it is not folded here), 0 to fold it here. */
static int reroute(tly_processor_t *p, const rd_kafka_message_t *msg,
                   const tly_event_t *event) {
  char errstr[512];
  int32_t home = -1;
  tly_reroute_forward_t forward;
  switch (tly_reroute_decide(msg, event, atomic_load(&p->partition_count),
                             &home, errstr, sizeof(errstr))) {
  case TLY_REROUTE_HOME:
    return 0;
  case TLY_REROUTE_STRAY:
    dead_letter(p, msg, errstr);
    return 1;
  case TLY_REROUTE_FORWARD:
    break;
  }
  tly_reroute_forward(msg, home, tly_proc_forward_scan_from(p, home), &forward);
  int sent = tly_proc_forward_already_sent(p, msg, home, forward.output_id);
  if (sent)
    return 1; /* sent by whoever folded it before, or fatal */
  if (add_output(p, &forward.record)) {
    tly_proc_set_fatal(p, "out of memory forwarding a record");
    return 1;
  }
  pthread_mutex_lock(&p->lock);
  p->partitions[msg->partition].forwarded++;
  pthread_mutex_unlock(&p->lock);
  tly_reroute_log(&p->reroute_log, msg, home, forward.headers_dropped);
  return 1;
}

/* ---- one record ------------------------------------------------------ */

static int64_t record_timestamp_ms(const rd_kafka_message_t *msg);

/* Steps 1-2 for one record. */
static void fold_message(tly_processor_t *p, const rd_kafka_message_t *msg) {
  tly_event_t event = {0};
  char errstr[512];

  /* Bounds, decode, validation and event time: the gate the fuzz target
   * goes through too (tly_record.h). The event's strings live in the codec
   * until the next decode. */
  tly_record_t record = {msg->key,
                         msg->key ? msg->key_len : 0,
                         msg->payload,
                         msg->payload ? msg->len : 0,
                         record_timestamp_ms(msg),
                         p->conf.config->events.max_future_skew_ms};
  if (tly_record_prepare(p->codec, &record, &event, errstr, sizeof(errstr))) {
    dead_letter(p, msg, errstr);
    return;
  }
  if (reroute(p, msg, &event))
    return; /* forwarded to its subject's home partition, or dead-lettered */
  if (event.body_kind == TLY_BODY_TICK && tly_proc_batch_commit(p))
    return; /* the tick reads the cycle-end index: make it current */
  p->view_partition = msg->partition;
  p->view_offset = msg->offset;
  p->view_event_id = event.event_id;
  p->view.watermark_ms = &p->partitions[msg->partition].watermark;
  p->view.dedupe_floor_ms = &p->partitions[msg->partition].dedupe_floor;
  p->view.record_ms = record.timestamp_ms; /* the clock holds expire on */
  tly_fold_result_t folded = tly_billing_fold(
      &p->billing, &p->view, &event, &p->alerts, errstr, sizeof(errstr));
  p->view_event_id = NULL; /* the codec's, valid until the next decode */
  switch (folded) {
  case TLY_FOLD_APPLIED:
    p->partitions[msg->partition].watermark_dirty = 1;
    if (event.body_kind == TLY_BODY_TICK)
      tly_proc_fold_tick(p, msg->partition, event.occurred_at_ms);
    p->batch_events++;
    break;
  case TLY_FOLD_DUPLICATE:
    atomic_fetch_add(&p->duplicates, 1);
    break;
  case TLY_FOLD_REJECTED:
    dead_letter(p, msg, errstr);
    break;
  case TLY_FOLD_FAILED:
    if (!p->fatal)
      tly_proc_set_fatal(p, "the fold failed on partition %d",
                         (int)msg->partition);
    break;
  }
  queue_alerts(p);
}

/* The record's Kafka timestamp (when it was produced, or appended on a
 * topic with LogAppendTime); 0 without one. */
static int64_t record_timestamp_ms(const rd_kafka_message_t *msg) {
  rd_kafka_timestamp_type_t type;
  int64_t produced = rd_kafka_message_timestamp(msg, &type);
  return produced > 0 && type != RD_KAFKA_TIMESTAMP_NOT_AVAILABLE ? produced
                                                                  : 0;
}

/* How long ago the record was produced, by its Kafka timestamp; 0 without
 * one. Another machine's clock may run ahead: never negative. */
static int64_t record_age_ms(const rd_kafka_message_t *msg) {
  int64_t produced = record_timestamp_ms(msg);
  int64_t age = produced ? tly_wall_ms() - produced : 0;
  return age > 0 ? age : 0;
}

/* Keeps the record's Kafka timestamp (set when it was produced) until its
 * batch is durable. A metric: out of memory just leaves it out. */
static void note_produced(tly_processor_t *p, const rd_kafka_message_t *msg) {
  int64_t produced = record_timestamp_ms(msg);
  if (!produced)
    return;
  if (array_room(&p->produced_ms, &p->produced_cap, p->produced_count + 1,
                 sizeof(*p->produced_ms)))
    return;
  p->produced_ms[p->produced_count++] = produced;
}

/* ---- looking ahead --------------------------------------------------- */

/* Cache hints for a record the fold will reach soon: with 100,000s of
 * subjects almost every record's subject entry, overlay slot and event id
 * slot are cache misses, waited for one after another. The record is not
 * decoded here: tally's producers key a record by its subject key (the
 * account key is the partition and that key) and the envelope starts with
 * the event id. A record that differs only makes the hint useless. */
#define LOOKAHEAD_SLOT 8  /* records ahead: fetch the slots */
#define LOOKAHEAD_ENTRY 4 /* records ahead: fetch the entry the slot names */
#define LOOKAHEAD_ROWS 2  /* records ahead: fetch the entry's rows, buckets */

static uint64_t lookahead_hash(const rd_kafka_message_t *msg) {
  char key[TLY_KEY_MAX];
  if (!msg->key || msg->key_len + 4 > sizeof(key) || msg->partition < 0)
    return 0;
  tly_put_be32((unsigned char *)key, (uint32_t)msg->partition);
  memcpy(key + 4, msg->key, msg->key_len);
  return tly_overlay_hash(TLY_CF_ACCOUNTS, key, msg->key_len + 4);
}

static void lookahead_slots(tly_processor_t *p, const rd_kafka_message_t *msg,
                            uint64_t hash) {
  if (msg->err || msg->partition < 0 || msg->partition >= p->partition_cap)
    return;
  if (hash)
    tly_overlay_prefetch_slot(&p->overlay, hash);
  /* [magic][schema id 4][event id: zigzag varint length, bytes] */
  const unsigned char *bytes = msg->payload;
  const tly_dedupe_t *dedupe = p->partitions[msg->partition].dedupe;
  if (!dedupe || !bytes || msg->len < 7)
    return;
  uint64_t raw = 0;
  size_t pos = 5;
  for (int shift = 0; pos < msg->len && shift < 21; shift += 7) {
    raw |= (uint64_t)(bytes[pos] & 0x7F) << shift;
    if (!(bytes[pos++] & 0x80)) {
      uint64_t length = raw >> 1;
      if (!(raw & 1) && length <= msg->len - pos)
        tly_dedupe_prefetch(dedupe, (const char *)bytes + pos, length);
      return;
    }
  }
}

/* The hints for the records after msgs[i]: the slots of the one
 * LOOKAHEAD_SLOT ahead (its key's hash kept in the ring hashes), the entry
 * of the one LOOKAHEAD_ENTRY ahead, the rows of the one LOOKAHEAD_ROWS
 * ahead. */
#define LOOKAHEAD_RING (LOOKAHEAD_SLOT + 1)

static void look_ahead(tly_processor_t *p, rd_kafka_message_t **msgs,
                       ssize_t got, ssize_t i, uint64_t *hashes) {
  ssize_t ahead = i + LOOKAHEAD_SLOT;
  if (ahead < got) {
    hashes[ahead % LOOKAHEAD_RING] = lookahead_hash(msgs[ahead]);
    lookahead_slots(p, msgs[ahead], hashes[ahead % LOOKAHEAD_RING]);
  }
  ahead = i + LOOKAHEAD_ENTRY;
  if (ahead < got && hashes[ahead % LOOKAHEAD_RING])
    tly_overlay_prefetch_entry(&p->overlay, hashes[ahead % LOOKAHEAD_RING]);
  ahead = i + LOOKAHEAD_ROWS;
  if (ahead < got && hashes[ahead % LOOKAHEAD_RING])
    tly_overlay_prefetch_rows(&p->overlay, hashes[ahead % LOOKAHEAD_RING]);
}

static int fetch_gap(tly_processor_t *p, partition_state_t *part,
                     const rd_kafka_message_t *msg);

static void handle_message(tly_processor_t *p, rd_kafka_message_t *msg) {
  if (msg->err) {
    switch (msg->err) {
    case RD_KAFKA_RESP_ERR__PARTITION_EOF:
      return;
    case RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET:
    case RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE:
      tly_proc_set_fatal(
          p,
          "partition %d: offset %lld is no longer in the log (%s); "
          "the events in between are gone and tally refuses to skip "
          "them",
          (int)msg->partition, (long long)msg->offset,
          rd_kafka_message_errstr(msg));
      return;
    case RD_KAFKA_RESP_ERR__FATAL:
      tly_proc_set_fatal(
          p, "Kafka consumer: %s%s", rd_kafka_message_errstr(msg),
          rd_kafka_fatal_error(p->consumer, NULL, 0) ==
                  RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID
              ? " (another instance runs with the same --instance-id)"
              : "");
      return;
    default:
      tly_log(TLY_LOG_WARN, "processor", "consumer: %s",
              rd_kafka_message_errstr(msg));
      return;
    }
  }
  if (msg->partition < 0 || msg->partition >= p->partition_cap ||
      !p->partitions[msg->partition].assigned)
    return; /* stale record of a partition no longer ours */
  /* A record below the position was folded already: one fetched before a
   * rebalance and handed over after the partition came back at its stored
   * offset. Folding it again would count it twice. */
  partition_state_t *part = &p->partitions[msg->partition];
  if (part->position >= 0 && msg->offset < part->position)
    return;
  if (tly_proc_gate_skips(part, msg))
    return; /* its partition waits (not a fetch gap: nothing was folded) */
  if (part->position >= 0 && msg->offset > part->position &&
      fetch_gap(p, part, msg))
    return;          /* fetched again from the position */
  part->seeking = 0; /* the record at the position came */
  if (tly_proc_gate(p, msg))
    return; /* it waits: for the schema registry or the outbox */
  fold_message(p, msg);
  part->position = msg->offset + 1;
  part->batch_next = msg->offset + 1;
  p->batch_messages++;
  note_produced(p, msg);
}

/*
 * A record above the partition's position: records in between were never
 * handed to the loop. librdkafka 2.0.2 does this under the cooperative
 * protocol: an incremental assignment or revocation drops what its fetch
 * queue held of partitions that stay, and fetching goes on after them
 * (measured in test_scale_out: gaps of 2 to 30 records on kept partitions
 * right after such a callback). Folding on would lose them, so the
 * partition is sought back to its position; what the same read returned
 * of it after the seek is old and skipped. The first record of a later
 * read is the log's answer: above the position still, the gap is the
 * log's own (offsets a transaction marker or compaction took) and is
 * folded over. 1 when msg is skipped.
 */
static int fetch_gap(tly_processor_t *p, partition_state_t *part,
                     const rd_kafka_message_t *msg) {
  if (part->seeking && part->seek_round == p->read_round)
    return 1;
  if (part->seeking) {
    part->seeking = 0;
    tly_log(TLY_LOG_INFO, "processor",
            "partition %d: the log has no records %lld..%lld (fetched "
            "again: the gap is the log's)",
            (int)msg->partition, (long long)part->position,
            (long long)msg->offset - 1);
    return 0;
  }
  rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(list, p->usage_topic, msg->partition)
      ->offset = part->position;
  rd_kafka_error_t *error = rd_kafka_seek_partitions(p->consumer, list, 5000);
  rd_kafka_resp_err_t err =
      error ? rd_kafka_error_code(error) : list->elems[0].err;
  if (error)
    rd_kafka_error_destroy(error);
  rd_kafka_topic_partition_list_destroy(list);
  atomic_fetch_add(&p->fetch_gaps, 1);
  if (err) {
    /* Skipped, so the next record of the partition tries again. */
    if (++part->seek_failures > 100)
      tly_proc_set_fatal(p,
                         "partition %d: records %lld..%lld were not fetched "
                         "and seeking back failed: %s",
                         (int)msg->partition, (long long)part->position,
                         (long long)msg->offset - 1, rd_kafka_err2str(err));
    else
      tly_log(TLY_LOG_WARN, "processor",
              "partition %d: records %lld..%lld were not fetched and "
              "seeking back failed (%s): trying again",
              (int)msg->partition, (long long)part->position,
              (long long)msg->offset - 1, rd_kafka_err2str(err));
    return 1;
  }
  part->seek_failures = 0;
  tly_log(TLY_LOG_INFO, "processor",
          "partition %d: records %lld..%lld were not fetched (the fetch "
          "went on past them): sought back to %lld",
          (int)msg->partition, (long long)part->position,
          (long long)msg->offset - 1, (long long)part->position);
  part->seeking = 1;
  part->seek_round = p->read_round;
  return 1;
}

/* ---- lifecycle ------------------------------------------------------- */

tly_processor_t *tly_processor_new(const tly_processor_conf_t *conf,
                                   tly_store_t *store, char *errstr,
                                   size_t errstr_size) {
  tly_processor_t *p = calloc(1, sizeof(*p));
  rd_kafka_conf_t *kconf = NULL;
  char kafka_err[512];
  char *seq_value = NULL;
  size_t seq_len = 0;

  if (!p) {
    snprintf(errstr, errstr_size, "out of memory");
    return NULL;
  }
  if (!conf->brokers || !*conf->brokers || !conf->config) {
    snprintf(errstr, errstr_size, "%s: required",
             conf->config ? "brokers" : "config");
    free(p);
    return NULL;
  }
  p->conf = *conf;
  /* A cap on growth only (batches close after batch_max_ms unless the
   * writer is still busy or the processor is catching up): under a
   * backlog a bigger batch writes each subject it touched once for more
   * of its events. bench_fold, 2 M events over 100k subjects, catching
   * up: the process's CPU per event 3.0 us at 200,000, 2.2 us at
   * 400,000. */
  if (p->conf.batch_max_events <= 0)
    p->conf.batch_max_events = tly_memory_batch_events(
        conf->memory_budget_bytes > 0 ? conf->memory_budget_bytes
                                      : TLY_DEFAULT_MEMORY_BUDGET);
  if (p->conf.batch_max_ms <= 0)
    p->conf.batch_max_ms = 100;
  /* Catching up: records this old are late whatever the batch size; a
   * processor that keeps up sees them a batch interval or two old. */
  p->catchup_ms = 20LL * p->conf.batch_max_ms;
  if (p->catchup_ms < 2000)
    p->catchup_ms = 2000;
  p->usage_topic =
      strdup(conf->usage_topic ? conf->usage_topic : TALLY_DEFAULT_USAGE_TOPIC);
  p->dlq_topic =
      strdup(conf->dlq_topic ? conf->dlq_topic : TLY_DEFAULT_DLQ_TOPIC);
  p->alerts_topic = strdup(conf->alerts_topic ? conf->alerts_topic
                                              : TLY_DEFAULT_ALERTS_TOPIC);
  p->billing.config = conf->config;
  p->reports = tly_config_stripe_reports(conf->config);
  p->billing.dedupe_window_ms = conf->dedupe_window_ms > 0
                                    ? conf->dedupe_window_ms
                                : conf->config->events.dedupe_window_ms > 0
                                    ? conf->config->events.dedupe_window_ms
                                    : TLY_BILLING_DEFAULT_DEDUPE_WINDOW_MS;
  int64_t budget = conf->memory_budget_bytes > 0 ? conf->memory_budget_bytes
                                                 : TLY_DEFAULT_MEMORY_BUDGET;
  p->memory_budget = budget;
  p->dedupe_share = (size_t)tly_memory_share(budget, TLY_MEMORY_DEDUPE);
  if (!p->conf.tick_interval_ms)
    p->conf.tick_interval_ms = TLY_DEFAULT_TICK_INTERVAL_MS;
  p->contrib_batch = 1; /* an entry's zeroed slots name no batch */
  p->view = (tly_billing_view_t){.opaque = p,
                                 .account = tly_proc_view_account,
                                 .row = tly_proc_view_row,
                                 .bucket = tly_proc_view_bucket,
                                 .archive = tly_proc_view_archive,
                                 .seen = tly_proc_view_seen,
                                 .holds = tly_proc_view_holds,
                                 .distinct = tly_proc_view_distinct,
                                 .read_marks = tly_proc_view_read_marks,
                                 .group_bucket = tly_proc_view_group_bucket,
                                 .contribution = tly_proc_view_contribution};
  const char *kill_after = getenv("TALLY_FAULT_KILL_AFTER_ACKS");
  if (kill_after && *kill_after) {
    p->kill_after_acks = atol(kill_after);
    tly_log(TLY_LOG_WARN, "processor",
            "fault injection: SIGKILL after %ld outbox acks",
            p->kill_after_acks);
  }
  const char *stop_file = getenv("TALLY_FAULT_STOP_FILE");
  if (stop_file && *stop_file)
    p->stop_file = strdup(stop_file); /* NULL (out of memory): no fault */
  p->store = store;
  atomic_store(&p->restoring, -1);
  pthread_mutex_init(&p->lock, NULL);
  pthread_mutex_init(&p->copy_lock, NULL);
  pthread_mutex_init(&p->standby_lock, NULL);
  for (int i = 0; i < TLY_COPY_CACHE; i++)
    p->copy_cache[i].offset = -1;
  pthread_cond_init(&p->hold_released, NULL);
  pthread_mutex_init(&p->filter_lock, NULL);
  pthread_cond_init(&p->filter_cond, NULL);
  pthread_mutex_init(&p->writer_lock, NULL);
  pthread_cond_init(&p->writer_cond, NULL);
  pthread_cond_init(&p->writer_done, NULL);
  p->writer_batch = tly_store_batch_new();
  if (p->writer_batch &&
      pthread_create(&p->writer, NULL, tly_proc_writer_main, p) == 0)
    p->writer_started = 1;
  tly_overlay_init(&p->overlay);
  p->batch = tly_store_batch_new();
  p->release = tly_release_new(0); /* NULL: destroyed inline */
  p->codec = tly_codec_new(conf->event_schema_id ? conf->event_schema_id
                                                 : TLY_CODEC_DEFAULT_SCHEMA_ID,
                           errstr, errstr_size);
  if (!p->codec)
    goto fail;
  p->alert_codec = tly_alert_codec_new(errstr, errstr_size);
  if (!p->alert_codec)
    goto fail;
  if (conf->alert_schema_id)
    tly_alert_codec_set_schema_id(p->alert_codec, conf->alert_schema_id);
  if (!p->usage_topic || !p->dlq_topic || !p->alerts_topic || !p->batch ||
      !p->writer_started) {
    snprintf(errstr, errstr_size, "out of memory starting the processor");
    goto fail;
  }

  /* Alerts and dead letters go where the partitioner puts them: murmur2
   * of their key, as a Java client would (tly_kafka_client.h). */
  const char *producer_defaults[] = {"enable.idempotence=true", "linger.ms=5",
                                     TLY_KAFKA_PARTITIONER_PROPERTY, NULL};
  kconf = tly_proc_kafka_conf(conf, 0, producer_defaults, errstr, errstr_size);
  if (!kconf)
    goto fail;
  rd_kafka_conf_set_opaque(kconf, p);
  rd_kafka_conf_set_dr_msg_cb(kconf, tly_proc_outbox_delivery_report);
  p->producer =
      rd_kafka_new(RD_KAFKA_PRODUCER, kconf, kafka_err, sizeof(kafka_err));
  if (!p->producer) {
    snprintf(errstr, errstr_size, "creating Kafka producer: %s", kafka_err);
    goto fail;
  }
  kconf = NULL;
  {
    /* What the producer takes at most (a dead letter is cut to fit). */
    char value[32];
    size_t value_size = sizeof(value);
    p->message_max = 1000000;
    if (rd_kafka_conf_get(rd_kafka_conf(p->producer), "message.max.bytes",
                          value, &value_size) == RD_KAFKA_CONF_OK &&
        atoll(value) > 0)
      p->message_max = (size_t)atoll(value);
  }
  /* The consumer after the producer: its group settings depend on the
   * cluster it finds (tly_group.c). */
  p->consumer = tly_proc_group_consumer_new(p, tly_proc_rebalance_cb, errstr,
                                            errstr_size);
  if (!p->consumer)
    goto fail;
  rd_kafka_poll_set_consumer(p->consumer);
  p->queue = rd_kafka_queue_get_consumer(p->consumer);

  /* Outputs committed by an earlier run but not yet acknowledged. */
  if (tly_store_scan_prefix(store, TLY_CF_OUTBOX, NULL, 0,
                            tly_proc_outbox_load_cb, p, errstr, errstr_size))
    goto fail;
  int found = tly_store_get(store, TLY_CF_META, META_NEXT_SEQ,
                            sizeof(META_NEXT_SEQ) - 1, &seq_value, &seq_len,
                            errstr, errstr_size);
  if (found < 0)
    goto fail;
  if (found && seq_len == 8)
    p->next_seq = tly_get_be64((unsigned char *)seq_value);
  tly_store_free(seq_value);
  if (p->outbox_count && p->outbox[p->outbox_count - 1].seq >= p->next_seq)
    p->next_seq = p->outbox[p->outbox_count - 1].seq + 1;
  if (p->outbox_count) {
    /* Held until the first assignment (tly_proc_resolve_inherited). */
    tly_log(TLY_LOG_INFO, "processor",
            "%zu outbox entries left by the previous run", p->outbox_count);
    for (size_t i = 0; i < p->outbox_count; i++)
      p->outbox[i].inherited = 1;
    p->inherited_held = 1;
  }

  int32_t count = tly_proc_topic_partition_count(p, errstr, errstr_size);
  if (count < 0)
    goto fail;
  pthread_mutex_lock(&p->lock);
  int grown = tly_proc_ensure_partitions(p, count);
  pthread_mutex_unlock(&p->lock);
  if (grown) {
    snprintf(errstr, errstr_size, "out of memory");
    goto fail;
  }
  atomic_store(&p->partition_count, count);
  const char *changelog = conf->changelog_topic ? conf->changelog_topic
                                                : TLY_DEFAULT_CHANGELOG_TOPIC;
  if (*changelog) {
    int32_t changelog_count = tly_proc_topic_partitions_now(p, changelog);
    if (changelog_count >= count) {
      p->changelog_topic = strdup(changelog);
      if (!p->changelog_topic) {
        snprintf(errstr, errstr_size, "out of memory");
        goto fail;
      }
      if (tly_changelog_writer_id(store, p->writer_id, errstr, errstr_size))
        goto fail;
    } else {
      tly_log(TLY_LOG_WARN, "processor",
              "no state changelog: topic %s %s; partitions that move here "
              "are rebuilt by replaying the input",
              changelog,
              changelog_count < 0 ? "does not exist"
                                  : "has fewer partitions than the input");
    }
  }
  return p;

fail:
  if (kconf)
    rd_kafka_conf_destroy(kconf);
  tly_processor_destroy(p);
  return NULL;
}

/* One read of at most want records (and at most 512), waiting up to
 * wait_ms for them (first_only: returning at the first, then taking what
 * else is ready without waiting), each folded into the open batch.
 * Returns the records read; *behind says whether the processor is
 * catching up. Rebalance callbacks are served inside the read, and the
 * writer cuts the wait short when it finishes a batch
 * (rd_kafka_queue_yield). */
static int read_records(tly_processor_t *p, int64_t wait_ms, int first_only,
                        int want, int *behind) {
  rd_kafka_message_t *msgs[512];
  if (want > 512)
    want = 512;
  if (want <= 0)
    return 0;
  p->read_round++;
  /* Many records per call: the per-call cost of consumer_poll is a
   * visible share of the fold at hundreds of thousands of events/s. */
  ssize_t got = rd_kafka_consume_batch_queue(p->queue, (int)wait_ms, msgs,
                                             first_only ? 1 : (size_t)want);
  if (first_only && got == 1 && want > 1) {
    ssize_t more =
        rd_kafka_consume_batch_queue(p->queue, 0, msgs + 1, (size_t)want - 1);
    if (more > 0)
      got += more;
  }
  int64_t last_age_ms = 0;
  uint64_t hashes[LOOKAHEAD_RING];
  for (ssize_t i = 0; i < got && i < LOOKAHEAD_SLOT; i++)
    lookahead_slots(p, msgs[i], hashes[i] = lookahead_hash(msgs[i]));
  for (ssize_t i = 0; i < got; i++) {
    look_ahead(p, msgs, got, i, hashes);
    if (!p->fatal)
      handle_message(p, msgs[i]);
    if (i == got - 1)
      last_age_ms = record_age_ms(msgs[i]);
  }
  /* Destroyed on the release thread (tly_release.h): a message is freed
   * into the arena of the librdkafka thread that fetched it, under that
   * arena's lock, and the fold thread slept on it 17 % of its time. */
  if (got > 0)
    tly_release_messages(p->release, msgs, (size_t)got);
  /* Catching up starts when a read is handed all it asked for and the
   * last record is old; it ends with a young record or a read that finds
   * nothing waiting (one that finds a few old records leaves it as it
   * was). Old records trickling in (a producer's clock running late,
   * back-dated timestamps) never start it: a batch is not held open
   * waiting for records that are not there. */
  if (got <= 0 || last_age_ms <= p->catchup_ms)
    *behind = 0;
  else if (got == want)
    *behind = 1;
  return got > 0 ? (int)got : 0;
}

/* The writer has finished the batch in its hands: release it now (its
 * records count as visible, its outputs join the outbox and go out)
 * rather than when the next batch is submitted. 0, or -1 when fatal. */
static int release_written(tly_processor_t *p) {
  if (!p->inflight.busy || tly_proc_writer_busy(p))
    return 0;
  size_t outputs = p->inflight.output_count;
  if (tly_proc_batch_wait(p))
    return -1;
  /* Publishing walks the outbox: only for new outputs (the round's end
   * publishes the rest, as acknowledgements come in). */
  if (outputs) {
    rd_kafka_poll(p->producer, 0);
    tly_proc_outbox_publish(p);
  }
  return 0;
}

int tly_processor_run(tly_processor_t *p, volatile sig_atomic_t *stop,
                      char *errstr, size_t errstr_size) {
  if (tly_proc_group_join(p, stop, errstr, errstr_size))
    return -1;
  rd_kafka_topic_partition_list_t *topics =
      rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(topics, p->usage_topic,
                                    RD_KAFKA_PARTITION_UA);
  rd_kafka_resp_err_t err = rd_kafka_subscribe(p->consumer, topics);
  rd_kafka_topic_partition_list_destroy(topics);
  if (err) {
    snprintf(errstr, errstr_size, "subscribe to %s: %s", p->usage_topic,
             rd_kafka_err2str(err));
    return -1;
  }
  tly_proc_outbox_publish(p);

  tly_proc_writer_wakes(p, 1);
  int idle = 0; /* the last round consumed nothing */
  while (!*stop && !p->fatal) {
    /* A round: read and fold until the group commit rule
     * (tly_group_commit.h) closes the batch. Idle with outputs on their
     * way, a round is short, so their acknowledgements are taken (and the
     * changelog bundles that wait on them go out) within milliseconds. */
    int64_t round_ms = p->conf.batch_max_ms;
    if (round_ms > p->heartbeat_ms) /* the loop comes round well within */
      round_ms = p->heartbeat_ms;   /* the session (stall_check) */
    if (idle && p->outbox_count && round_ms > 10)
      round_ms = 10;
    int64_t began = tly_monotonic_ms();
    int consumed = 0, behind = 0, submit = 0;
    tly_proc_filters_adopt(p);
    while (!*stop && !p->fatal) {
      if (release_written(p))
        break;
      int records = p->batch_messages > 0;
      int want = p->conf.batch_max_events - consumed;
      if (p->changelog_topic) { /* its records' size (TLY_CHANGELOG_...) */
        size_t room =
            p->changelog_bytes_max < TLY_CHANGELOG_BATCH_BYTES
                ? (TLY_CHANGELOG_BATCH_BYTES - p->changelog_bytes_max) /
                      TLY_CHANGELOG_EVENT_BYTES_MAX
                : 0;
        if (room < (size_t)(want > 0 ? want : 0))
          want = (int)room;
      }
      tly_group_commit_in_t in = {.records = records,
                                  .other_work =
                                      !records && tly_proc_batch_has_work(p),
                                  .writer_busy = tly_proc_writer_busy(p),
                                  .behind = behind,
                                  .full = want <= 0,
                                  .waited_ms = tly_monotonic_ms() - began,
                                  .round_ms = round_ms};
      tly_group_commit_t next = tly_group_commit_decide(&in);
      if (next.done) {
        submit = next.submit;
        break;
      }
      consumed += read_records(p, next.wait_ms, next.first_only, want, &behind);
    }
    if (p->fatal)
      break;
    idle = consumed == 0;
    tly_proc_gate_retry(p);
    if (p->dead_log_left_out) /* a flood that ended: its summary */
      log_dead_letters_left_out(p);
    rd_kafka_poll(p->producer, 0); /* delivery reports -> ACKED */
    tly_proc_write_ticks(p);
    /* Written while the next batch is folded; release_written hands its
     * outputs out as soon as it is durable. */
    if (submit && tly_proc_batch_submit(p))
      break;
    tly_proc_outbox_publish(p);
  }

  if (!p->fatal) {
    /* Graceful stop: commit, give the outbox a moment, record the acks. */
    tly_proc_batch_commit(p);
    rd_kafka_flush(p->producer, 5000);
    tly_proc_batch_commit(p);
  }
  /* From here on nothing reads the queue, and the close must not be woken
   * (see tly_proc_writer_main); the writer may still be busy if fatal. */
  tly_proc_writer_wakes(p, 0);
  tly_release_drain(p->release); /* no message may outlive the close */
  tly_proc_group_leave(p);
  if (p->fatal) {
    snprintf(errstr, errstr_size,
             "%s (nothing of the batch in progress was committed: a restart "
             "folds it again from the stored offsets)",
             p->fatal_reason);
    return -1;
  }
  return 0;
}

void tly_processor_destroy(tly_processor_t *p) {
  if (!p)
    return;
  tly_processor_standby_stop(p); /* its thread writes the store */
  tly_proc_filters_stop(p);      /* its thread reads the store */
  /* The writer first: it finishes the batch in its hands (and may wake
   * the consumer's queue: the queue goes after it). */
  if (p->writer_started) {
    pthread_mutex_lock(&p->writer_lock);
    p->writer_quit = 1;
    pthread_cond_signal(&p->writer_cond);
    pthread_mutex_unlock(&p->writer_lock);
    pthread_join(p->writer, NULL);
  }
  tly_proc_copy_destroy(p);
  pthread_mutex_destroy(&p->copy_lock);
  pthread_mutex_destroy(&p->standby_lock);
  tly_release_destroy(p->release); /* its messages before the consumer */
  if (p->queue)
    rd_kafka_queue_destroy(p->queue);
  if (p->consumer)
    rd_kafka_destroy(p->consumer);
  if (p->producer) {
    rd_kafka_flush(p->producer, 1000);
    rd_kafka_destroy(p->producer);
  }
  tly_codec_destroy(p->codec);
  tly_alert_codec_destroy(p->alert_codec);
  tly_alert_list_clear(&p->alerts);
  json_decref(p->replay_ids);
  tly_changelog_bundle_free(&p->bundle);
  free(p->changelog_scratch);
  free(p->changelog_topic);
  free(p->acks);
  free(p->dirty);
  free(p->sort_keys);
  free(p->record);
  free(p->bucket_ptrs);
  free(p->produced_ms);
  free(p->inflight.produced_ms);
  free(p->row_ptrs);
  free(p->alerts_topic);
  for (size_t i = 0; i < p->inflight.output_count; i++)
    free(p->inflight.outputs[i].record);
  free(p->inflight.outputs);
  tly_store_batch_destroy(p->writer_batch);
  pthread_mutex_destroy(&p->filter_lock);
  pthread_cond_destroy(&p->filter_cond);
  pthread_mutex_destroy(&p->writer_lock);
  pthread_cond_destroy(&p->writer_cond);
  pthread_cond_destroy(&p->writer_done);
  tly_store_batch_destroy(p->batch);
  tly_overlay_free(&p->overlay);
  tly_proc_contrib_free(p);
  for (int32_t i = 0; i < p->partition_cap; i++) {
    tly_dedupe_free(p->partitions[i].dedupe);
    tly_dedupe_filter_free(p->partitions[i].filter);
  }
  tly_proc_batch_discard_outputs(p);
  free(p->outputs);
  for (size_t i = 0; i < p->outbox_count; i++)
    free(p->outbox[i].record);
  free(p->outbox);
  free(p->partitions);
  free(p->usage_topic);
  free(p->stop_file);
  free(p->dlq_topic);
  pthread_cond_destroy(&p->hold_released);
  pthread_mutex_destroy(&p->lock);
  free(p);
}
