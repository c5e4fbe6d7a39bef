/*
 * tly_replay.c - the replay rule of DESIGN.md for the outputs of replayed
 * records.
 *
 * A partition assigned here behind its log end replays records another
 * instance may have folded already, and published the outputs of. Before
 * any of it is folded (tly_proc_prepare_replay, at assignment), the output
 * topics are read for the ids they hold, from about when the first replayed
 * record was produced; while replaying, an output whose id is there is
 * dropped instead of sent. A forward's destination partition is read the
 * first time a replayed record is forwarded there. The ids go once every
 * assigned partition has caught up (tly_proc_end_replay, after each commit).
 *
 * It never sends or folds anything: it answers "sent already?" for the
 * fold's outputs. An output topic it cannot read stops the processor
 * rather than risk publishing an output twice.
 */
#include "tly_processor_internal.h"

#include "tly_log.h"
#include "tly_outbox.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * The replay rule of DESIGN.md: a record below its partition's replay
 * target may have been folded by another instance already (the partition
 * moved here and back, or this instance rebuilds it from an older state),
 * and that instance published its outputs. Such an output is checked
 * against the output topics by id instead of re-sent: 1 when it is there
 * already (drop it), 0 to send it (its id is remembered, so it goes once).
 */
int tly_proc_replay_already_sent(tly_processor_t *p, int32_t partition,
                                 int64_t offset, const char *id) {
  if (!p->replay_ids || partition < 0 || partition >= p->partition_cap ||
      offset >= p->partitions[partition].replay_target)
    return 0;
  if (json_object_get(p->replay_ids, id)) {
    atomic_fetch_add(&p->replay_skipped, 1);
    return 1;
  }
  json_object_set_new(p->replay_ids, id, json_true());
  return 0;
}

/* The replay rule for a forward: its destination partition is read for the
 * forward ids it holds (once per replay, and only when a replayed record
 * is forwarded there) before tly_proc_replay_already_sent decides. 1 when it
 * was sent already, 0 to send it, -1 after setting the fatal reason. */
int tly_proc_forward_already_sent(tly_processor_t *p,
                                  const rd_kafka_message_t *msg, int32_t home,
                                  const char *id) {
  char errstr[512];
  partition_state_t *source = &p->partitions[msg->partition];
  if (!p->replay_ids || msg->offset >= source->replay_target)
    return 0;
  if (home < p->partition_cap && !p->partitions[home].forward_ids_read) {
    int64_t *floors = calloc((size_t)home + 1, sizeof(*floors));
    if (!floors) {
      tly_proc_set_fatal(p, "out of memory preparing a replay");
      return -1;
    }
    for (int32_t i = 0; i < home; i++)
      floors[i] = -1; /* read only home */
    int failed = tly_proc_collect_output_ids(
        p, p->usage_topic, p->replay_from_ms, floors, home + 1, p->replay_ids,
        errstr, sizeof(errstr));
    free(floors);
    if (failed) {
      tly_proc_set_fatal(p, "replay: reading forwarded records: %s", errstr);
      return -1;
    }
    p->partitions[home].forward_ids_read = 1;
  }
  return tly_proc_replay_already_sent(p, msg->partition, msg->offset, id);
}

/* The tally.output.id of an output entry, as text in id; 0 when it has
 * none (a changelog bundle, or corrupt). */
static int outbox_output_id(const outbox_item_t *item, char *id, size_t size) {
  tly_outbox_record_t record;
  if (item->bundle ||
      tly_outbox_decode(item->record, item->record_len, &record))
    return 0;
  for (size_t h = 0; h < record.header_count; h++) {
    if (record.header_name_len[h] != strlen("tally.output.id") ||
        memcmp(record.headers[h].name, "tally.output.id",
               record.header_name_len[h]))
      continue;
    snprintf(id, size, "%.*s", (int)record.headers[h].value_len,
             record.headers[h].value);
    return 1;
  }
  return 0;
}

/* Outputs are published after the input record they come from was
 * produced; input timestamps are the producers' clocks, hence a margin. */
#define REPLAY_CLOCK_MARGIN_MS (60LL * 60 * 1000)

/* Whether the broker answers offset lookups by time: asked of a replaying
 * (so non-empty) input partition for time 0, which a broker that can
 * answers with its first offset. librdkafka 2.0.2's mock answers -1. */
static int time_lookups(tly_processor_t *p) {
  int32_t partition = -1;
  pthread_mutex_lock(&p->lock);
  for (int32_t i = 0; i < p->partition_cap && partition < 0; i++)
    if (p->partitions[i].assigned &&
        (p->partitions[i].committed < 0 ? 0 : p->partitions[i].committed) <
            p->partitions[i].replay_target)
      partition = i;
  pthread_mutex_unlock(&p->lock);
  if (partition < 0)
    return 0;
  rd_kafka_topic_partition_list_t *at = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(at, p->usage_topic, partition)->offset = 0;
  int answered = !rd_kafka_offsets_for_times(p->consumer, at, 5000) &&
                 !at->elems[0].err && at->elems[0].offset >= 0;
  rd_kafka_topic_partition_list_destroy(at);
  return answered;
}

/*
 * Where the output topics need reading from for the replay: the earliest
 * Kafka timestamp of the first record each replaying partition will fold,
 * less a margin for clocks. 0 (read from the log start) when a partition
 * cannot tell within a few seconds.
 */
static int64_t replay_start_time(tly_processor_t *p) {
  char errstr[512];
  const char *defaults[] = {
      "group.id=tally-replay-start",       "enable.auto.commit=false",
      "enable.partition.eof=true",         "fetch.wait.max.ms=10",
      "max.partition.fetch.bytes=1048576", NULL};
  rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(8);
  pthread_mutex_lock(&p->lock);
  for (int32_t i = 0; i < p->partition_cap; i++) {
    const partition_state_t *part = &p->partitions[i];
    if (part->assigned &&
        (part->committed < 0 ? 0 : part->committed) < part->replay_target)
      rd_kafka_topic_partition_list_add(parts, p->usage_topic, i)->offset =
          part->committed < 0 ? 0 : part->committed;
  }
  pthread_mutex_unlock(&p->lock);
  rd_kafka_t *reader = tly_proc_reader_new(p, defaults, errstr, sizeof(errstr));
  if (!reader) {
    rd_kafka_topic_partition_list_destroy(parts);
    return 0;
  }
  int pending = parts->cnt;
  int64_t earliest = INT64_MAX;
  int64_t deadline = tly_monotonic_ms() + 5000;
  if (rd_kafka_assign(reader, parts))
    pending = -1;
  while (pending > 0 && tly_monotonic_ms() < deadline) {
    rd_kafka_message_t *msg = rd_kafka_consumer_poll(reader, 100);
    if (!msg)
      continue;
    rd_kafka_topic_partition_t *part = rd_kafka_topic_partition_list_find(
        parts, p->usage_topic, msg->partition);
    if (part && part->offset != RD_KAFKA_OFFSET_INVALID) {
      rd_kafka_timestamp_type_t type;
      int64_t produced = msg->err ? -1 : rd_kafka_message_timestamp(msg, &type);
      if (!msg->err && produced > 0 && produced < earliest)
        earliest = produced;
      if (msg->err == RD_KAFKA_RESP_ERR__PARTITION_EOF || produced > 0) {
        part->offset = RD_KAFKA_OFFSET_INVALID; /* answered */
        pending--;
      } else {
        pending = -1; /* no timestamp, or an error: read it all */
      }
    }
    rd_kafka_message_destroy(msg);
  }
  rd_kafka_consumer_close(reader);
  rd_kafka_destroy(reader);
  rd_kafka_topic_partition_list_destroy(parts);
  if (pending != 0 || earliest == INT64_MAX ||
      earliest <= REPLAY_CLOCK_MARGIN_MS)
    return 0;
  return earliest - REPLAY_CLOCK_MARGIN_MS;
}

/*
 * Partitions assigned behind their log end replay records that another
 * instance may have folded and published the outputs of: read the output
 * topics from the time the first replayed record was produced (less a
 * margin; whole on the embedded broker, which cannot look offsets up by
 * time) into p->replay_ids before folding any of it. 0, or -1 after
 * setting the fatal reason: replaying blind could publish outputs twice.
 */
int tly_proc_prepare_replay(tly_processor_t *p) {
  char errstr[512];
  int replaying = 0;
  pthread_mutex_lock(&p->lock);
  for (int32_t i = 0; i < p->partition_cap; i++) {
    const partition_state_t *part = &p->partitions[i];
    if (part->assigned &&
        (part->committed < 0 ? 0 : part->committed) < part->replay_target)
      replaying++;
  }
  pthread_mutex_unlock(&p->lock);
  json_decref(p->replay_ids);
  p->replay_ids = NULL;
  if (!replaying)
    return 0;
  json_t *ids = json_object();
  if (!ids) {
    tly_proc_set_fatal(p, "out of memory preparing a replay");
    return -1;
  }
  int64_t started = tly_monotonic_ms();
  int64_t from_ms = time_lookups(p) ? replay_start_time(p) : 0;
  /* Forwards (to the input topic itself) are read later, per destination
   * partition, when a replayed record is forwarded there
   * (tly_proc_forward_already_sent): most replays forward nothing. */
  p->replay_from_ms = from_ms;
  for (int32_t i = 0; i < p->partition_cap; i++)
    p->partitions[i].forward_ids_read = 0;
  if (tly_proc_collect_output_ids(p, p->alerts_topic, from_ms, NULL, 0, ids,
                                  errstr, sizeof(errstr)) ||
      tly_proc_collect_output_ids(p, p->dlq_topic, from_ms, NULL, 0, ids,
                                  errstr, sizeof(errstr))) {
    json_decref(ids);
    tly_proc_set_fatal(p, "replaying %d partitions: %s", replaying, errstr);
    return -1;
  }
  size_t in_kafka = json_object_size(ids);
  /* So are the outputs still in this instance's outbox: a restore from the
   * changelog may start the replay below what this instance had committed
   * (and has yet to publish). */
  for (size_t i = 0; i < p->outbox_count; i++) {
    char id[512];
    if ((p->outbox[i].state == OUTBOX_PENDING ||
         p->outbox[i].state == OUTBOX_INFLIGHT) &&
        outbox_output_id(&p->outbox[i], id, sizeof(id)))
      json_object_set_new(ids, id, json_true());
  }
  tly_log(TLY_LOG_INFO, "processor",
          "replay of %d partitions: %zu outputs already in Kafka (read in "
          "%lld ms) and %zu in the outbox are checked by id instead of "
          "re-sent",
          replaying, in_kafka, (long long)(tly_monotonic_ms() - started),
          json_object_size(ids) - in_kafka);
  p->replay_ids = ids;
  return 0;
}

/* Drops the replay ids once every assigned partition has caught up. */
void tly_proc_end_replay(tly_processor_t *p) {
  if (!p->replay_ids)
    return;
  for (int32_t i = 0; i < p->partition_cap; i++) {
    const partition_state_t *part = &p->partitions[i];
    if (part->assigned &&
        (part->committed < 0 ? 0 : part->committed) < part->replay_target)
      return;
  }
  json_decref(p->replay_ids);
  p->replay_ids = NULL;
  tly_log(TLY_LOG_INFO, "processor", "replay done: every partition caught up");
}
