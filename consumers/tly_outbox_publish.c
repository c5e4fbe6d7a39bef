/*
 * tly_outbox_publish.c - the processor's outbox (step 4 of the order in
 * tly_processor.c): what durable commits released, handed to the
 * idempotent producer in sequence order; the delivery reports; the ack
 * marks (where each output partition was last seen acknowledged); and,
 * after a restart, the reconciliation that finds which of the outputs the
 * previous run left Kafka already holds. A changelog bundle leaves only
 * once every entry before it was acknowledged, and zombie fencing
 * (stall_check) holds every output while the loop may have lost its
 * partitions. On a rebalance: the drain before partitions go, and the
 * outputs dropped for another owner to send (of revoked partitions, or
 * the previous run's of partitions now assigned elsewhere).
 *
 * It never writes the store itself: deletes of acknowledged entries, ack
 * marks and the offsets of abandoned partitions go into the open batch
 * that tly_commit.c writes.
 */
#include "tly_processor_internal.h"

#include "tly_changelog.h"
#include "tly_keys.h"
#include "tly_log.h"
#include "tly_outbox.h"
#include "tly_read_to_end.h"
#include "tly_reroute.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- outbox ---------------------------------------------------------- */

int tly_proc_outbox_append(tly_processor_t *p, uint64_t seq, char *record,
                           size_t record_len) {
  if (array_room(&p->outbox, &p->outbox_cap, p->outbox_count + 1,
                 sizeof(*p->outbox)))
    return -1;
  p->outbox[p->outbox_count++] =
      (outbox_item_t){seq,
                      record,
                      record_len,
                      OUTBOX_PENDING,
                      tly_changelog_is_bundle(record, record_len),
                      0,
                      0,
                      0};
  p->outbox_record_bytes += record_len;
  atomic_store(&p->outbox_size, p->outbox_count);
  return 0;
}

/* What the gate (tly_gate.c) checks before each record, so that little it
 * has let through adds at once later: the open batch's changelog records
 * of event ids and contributions are counted as the fold makes them
 * (changelog_open_bytes), not only once the seal builds its bundle; and the
 * array at the size its growth takes it to (twice its entries) once it is over
 * half full, its entries counting the outputs that are not in it yet (the open
 * batch's and the batch being written's), each an entry once its batch is
 * durable. */
size_t tly_proc_outbox_held_bytes(const tly_processor_t *p) {
  size_t entries = p->outbox_count + p->output_count + p->inflight.output_count;
  size_t slots = p->outbox_cap > 2 * entries ? p->outbox_cap : 2 * entries;
  return p->outbox_record_bytes + p->output_bytes + p->inflight_output_bytes +
         (p->changelog_topic ? p->changelog_open_bytes : 0) +
         slots * sizeof(*p->outbox);
}

static outbox_item_t *outbox_find(tly_processor_t *p, uint64_t seq) {
  size_t lo = 0, hi = p->outbox_count;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (p->outbox[mid].seq < seq)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < p->outbox_count && p->outbox[lo].seq == seq ? &p->outbox[lo]
                                                          : NULL;
}

static ack_mark_t *ack_find(tly_processor_t *p, const char *topic,
                            int32_t partition, int create) {
  for (size_t i = 0; i < p->ack_count; i++)
    if (p->acks[i].partition == partition && !strcmp(p->acks[i].topic, topic))
      return &p->acks[i];
  if (!create)
    return NULL;
  if (array_room(&p->acks, &p->ack_cap, p->ack_count + 1, sizeof(*p->acks)))
    return NULL;
  ack_mark_t *mark = &p->acks[p->ack_count++];
  memset(mark, 0, sizeof(*mark));
  snprintf(mark->topic, sizeof(mark->topic), "%s", topic);
  mark->partition = partition;
  return mark;
}

static void ack_mark(tly_processor_t *p, const char *topic, int32_t partition,
                     int64_t next_offset) {
  ack_mark_t *mark = ack_find(p, topic, partition, 1);
  if (mark && next_offset > mark->next_offset) {
    mark->next_offset = next_offset;
    mark->dirty = 1;
  }
}

size_t tly_proc_ack_key(const char *topic, int32_t partition, char *out,
                        size_t size) {
  size_t len = (size_t)snprintf(out, size, "%s%s:", META_ACK, topic);
  if (len + 4 > size)
    return 0;
  tly_put_be32((unsigned char *)out + len, (uint32_t)partition);
  return len + 4;
}

void tly_proc_outbox_delivery_report(rd_kafka_t *rk,
                                     const rd_kafka_message_t *msg,
                                     void *opaque) {
  tly_processor_t *p = opaque;
  (void)rk;
  if (msg->_private == TICK_OPAQUE) {
    if (msg->err)
      tly_log(TLY_LOG_WARN, "ticks", "tick not written: %s",
              rd_kafka_err2str(msg->err));
    return; /* a lost tick is replaced by the next one */
  }
  outbox_item_t *item = outbox_find(p, (uint64_t)(uintptr_t)msg->_private);
  if (item && item->bundle) {
    /* A changelog record. A later commit's marker must never precede an
     * earlier commit's records, so a lost one stops the processor: the
     * restart publishes the bundle again, in order. */
    if (msg->err) {
      tly_proc_set_fatal(
          p, "changelog record of outbox entry %llu not written: %s",
          (unsigned long long)item->seq, rd_kafka_err2str(msg->err));
      return;
    }
    if (item->parts_pending)
      item->parts_pending--;
    if (item->state == OUTBOX_INFLIGHT && !item->parts_pending)
      item->state = OUTBOX_ACKED;
    return;
  }
  if (!item || item->state != OUTBOX_INFLIGHT)
    return;
  if (!msg->err)
    ack_mark(p, rd_kafka_topic_name(msg->rkt), msg->partition, msg->offset + 1);
  /* Fault injection for the crash tests: die between Kafka's ack and the
   * outbox delete, the window the recovery reconciliation exists for. */
  if (!msg->err && p->kill_after_acks > 0 &&
      ++p->acks_seen >= p->kill_after_acks)
    raise(SIGKILL);
  if (msg->err) {
    /* The idempotent producer already retried; try again later rather
     * than lose the output. */
    tly_log(TLY_LOG_WARN, "outbox", "publishing entry %llu failed: %s",
            (unsigned long long)item->seq, rd_kafka_err2str(msg->err));
    item->state = OUTBOX_PENDING;
  } else {
    item->state = OUTBOX_ACKED;
  }
}

static int outbox_load(tly_processor_t *p, const char *key, size_t key_len,
                       const char *value, size_t value_len) {
  char *copy;
  if (key_len != 8)
    return 0;
  copy = malloc(value_len ? value_len : 1);
  if (!copy)
    return 1;
  memcpy(copy, value, value_len);
  return tly_proc_outbox_append(p, tly_get_be64((const unsigned char *)key),
                                copy, value_len) != 0;
}

int tly_proc_outbox_load_cb(void *opaque, const char *key, size_t key_len,
                            const char *value, size_t value_len) {
  return outbox_load(opaque, key, key_len, value, value_len);
}

/* Produces a changelog bundle's records from where it stopped. 0 when
 * all are produced, 1 when the producer's queue is full (retried on the
 * next pass), -1 after setting the fatal reason. */
static int publish_bundle(tly_processor_t *p, outbox_item_t *item) {
  for (;;) {
    tly_changelog_record_t record;
    size_t cursor = item->cursor;
    int more = tly_changelog_bundle_next(item->record, item->record_len,
                                         &cursor, &p->changelog_scratch,
                                         &p->changelog_scratch_cap, &record);
    if (more < 0) {
      tly_proc_set_fatal(p, "changelog bundle %llu is corrupt",
                         (unsigned long long)item->seq);
      return -1;
    }
    if (!more)
      break;
    /* A tombstone carries its reflected offset in a header (its value must
     * be null for compaction to drop the key). */
    rd_kafka_headers_t *headers = NULL;
    if (!record.value) {
      unsigned char offset[8];
      tly_put_be64(offset, (uint64_t)record.offset);
      headers = rd_kafka_headers_new(1);
      rd_kafka_header_add(headers, TLY_CHANGELOG_OFFSET_HEADER, -1, offset,
                          sizeof(offset));
    } else if (record.key_len == 1 &&
               *(const char *)record.key == TLY_CHANGELOG_MARKER) {
      /* Who wrote it (tly_changelog_last_writer). */
      headers = rd_kafka_headers_new(1);
      rd_kafka_header_add(headers, TLY_CHANGELOG_WRITER_HEADER, -1,
                          p->writer_id, -1);
    }
    rd_kafka_resp_err_t err = rd_kafka_producev(
        p->producer, RD_KAFKA_V_TOPIC(p->changelog_topic),
        RD_KAFKA_V_PARTITION(record.partition),
        RD_KAFKA_V_KEY(record.key, record.key_len),
        RD_KAFKA_V_VALUE((void *)record.value, record.value_len),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(headers),
        RD_KAFKA_V_OPAQUE((void *)(uintptr_t)item->seq), RD_KAFKA_V_END);
    if (err && headers)
      rd_kafka_headers_destroy(headers);
    if (err) {
      if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
        tly_log(TLY_LOG_WARN, "outbox", "produce to %s: %s", p->changelog_topic,
                rd_kafka_err2str(err));
      return 1;
    }
    item->cursor = cursor;
    item->parts_pending++;
  }
  item->state = item->parts_pending ? OUTBOX_INFLIGHT : OUTBOX_ACKED;
  return 0;
}

/*
 * Zombie fencing. The loop comes round every batch (a few hundred ms at
 * most); when it finds it was away longer than the group's session
 * timeout, the group may have given its partitions to another instance,
 * which restores and replays them and sends their outputs itself. Sending
 * this instance's outputs of that time as well could duplicate them, and
 * its state is no longer current. So outputs are held and the partitions
 * are reported as moving (not served) for a few heartbeats: enough for
 * librdkafka to find out the session expired and revoke the assignment as
 * lost, which abandons those outputs (tly_proc_abandon_revoked). If no revoke
 * comes, the session survived: the fence lifts. 1 while fenced.
 */
static int stall_check(tly_processor_t *p) {
  int64_t now = tly_monotonic_ms();
  int64_t alive = atomic_load(&p->alive_ms);
  if (alive && now - alive > p->session_timeout_ms && !p->fence_until_ms) {
    int64_t hold = 3 * (int64_t)p->heartbeat_ms;
    p->fence_until_ms = now + (hold < 3000 ? 3000 : hold);
    atomic_store(&p->fenced, 1);
    atomic_fetch_add(&p->fences, 1);
    tly_log(TLY_LOG_WARN, "processor",
            "stalled for %lld ms, longer than session.timeout.ms (%d): "
            "outputs held and partitions not served until the group "
            "confirms the assignment",
            (long long)(now - alive), p->session_timeout_ms);
  }
  atomic_store(&p->alive_ms, now);
  if (!p->fence_until_ms)
    return 0;
  if (now < p->fence_until_ms || rd_kafka_assignment_lost(p->consumer))
    return 1;
  p->fence_until_ms = 0;
  atomic_store(&p->fenced, 0);
  tly_log(TLY_LOG_INFO, "processor",
          "the group kept the assignment after the stall: outputs resume");
  return 0;
}

/* Hands pending entries to the producer, in sequence order. A changelog
 * bundle waits until every entry before it was acknowledged, so the
 * changelog never runs ahead of the outputs: when a commit is in the
 * changelog, its outputs and all earlier ones are in Kafka, and whoever
 * restores past it needs none of them again. */
void tly_proc_outbox_publish(tly_processor_t *p) {
  if (stall_check(p))
    return;
  /* Before i: outputs not yet acknowledged, or bundles not yet produced
   * (produced bundles are ahead in the producer's per-partition order). */
  size_t unacked = 0;
  for (size_t i = 0; i < p->outbox_count;
       unacked +=
       p->outbox[i].state == OUTBOX_PENDING ||
       (p->outbox[i].state == OUTBOX_INFLIGHT && !p->outbox[i].bundle),
              i++) {
    outbox_item_t *item = &p->outbox[i];
    tly_outbox_record_t record;
    char topic[256];
    rd_kafka_headers_t *headers;
    rd_kafka_resp_err_t err;

    if (item->state != OUTBOX_PENDING || (item->inherited && p->inherited_held))
      continue;
    if (item->bundle) {
      if (unacked)
        continue;
      if (!p->changelog_topic) {
        item->state = OUTBOX_ACKED; /* changelog off since: drop it */
        continue;
      }
      if (publish_bundle(p, item))
        return; /* queue full (retried next pass) or fatal */
      continue;
    }
    if (tly_outbox_decode(item->record, item->record_len, &record) ||
        record.topic_len >= sizeof(topic)) {
      tly_proc_set_fatal(p, "outbox entry %llu is corrupt",
                         (unsigned long long)item->seq);
      return;
    }
    memcpy(topic, record.topic, record.topic_len);
    topic[record.topic_len] = '\0';
    headers = rd_kafka_headers_new(record.header_count);
    for (size_t h = 0; h < record.header_count; h++)
      rd_kafka_header_add(
          headers, record.headers[h].name, (ssize_t)record.header_name_len[h],
          record.headers[h].value, (ssize_t)record.headers[h].value_len);
    /* A forwarded record (tly_reroute.h) names its partition and keeps its
     * Kafka timestamp; the others go where the partitioner puts them. */
    err = rd_kafka_producev(
        p->producer, RD_KAFKA_V_TOPIC(topic),
        RD_KAFKA_V_PARTITION(record.partitioned ? record.partition
                                                : RD_KAFKA_PARTITION_UA),
        RD_KAFKA_V_TIMESTAMP(record.partitioned ? record.timestamp_ms : 0),
        RD_KAFKA_V_KEY(record.key, record.key_len),
        RD_KAFKA_V_VALUE((void *)record.value, record.value_len),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(headers),
        RD_KAFKA_V_OPAQUE((void *)(uintptr_t)item->seq), RD_KAFKA_V_END);
    if (err) {
      rd_kafka_headers_destroy(headers);
      if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
        tly_log(TLY_LOG_WARN, "outbox", "produce to %s: %s", topic,
                rd_kafka_err2str(err));
      return; /* retried on the next pass */
    }
    item->state = OUTBOX_INFLIGHT;
  }
}

/* Drops the entries whose delete was just committed. */
void tly_proc_outbox_compact(tly_processor_t *p) {
  size_t kept = 0;
  for (size_t i = 0; i < p->outbox_count; i++) {
    if (p->outbox[i].state == OUTBOX_DELETING) {
      p->outbox_record_bytes -= p->outbox[i].record_len;
      free(p->outbox[i].record);
    } else
      p->outbox[kept++] = p->outbox[i];
  }
  p->outbox_count = kept;
  atomic_store(&p->outbox_size, kept);
  /* Given back as it empties: a hold's many entries would otherwise keep
   * their array, counted in the outbox's bytes, past half its bound. */
  size_t cap = p->outbox_cap;
  while (cap > 64 && kept <= cap / 4)
    cap /= 2;
  if (cap < p->outbox_cap) {
    outbox_item_t *smaller = realloc(p->outbox, cap * sizeof(*p->outbox));
    if (smaller) {
      p->outbox = smaller;
      p->outbox_cap = cap;
    }
  }
}

/*
 * Before partitions go: publish what the outbox holds and wait (bounded)
 * for Kafka's acknowledgements, so the next owner's replay finds this
 * instance's outputs in the topics instead of sending them a second time.
 */
void tly_proc_drain_outbox(tly_processor_t *p) {
  int64_t deadline = tly_monotonic_ms() + 10000;
  for (;;) {
    int waiting = 0;
    tly_proc_outbox_publish(p);
    for (size_t i = 0; i < p->outbox_count; i++)
      waiting |= p->outbox[i].state == OUTBOX_PENDING ||
                 p->outbox[i].state == OUTBOX_INFLIGHT;
    if (!waiting || p->fatal)
      break;
    if (tly_monotonic_ms() > deadline) {
      tly_log(TLY_LOG_WARN, "processor",
              "rebalance: outbox not acknowledged within 10 s; what was not "
              "sent is left to the next owner, what is in flight may reach "
              "Kafka after its check and be duplicated");
      break;
    }
    rd_kafka_flush(p->producer, 100);
  }
  tly_proc_batch_commit(p); /* the deletes of what was acknowledged */
}

static int reconcile_outbox(tly_processor_t *p, char *errstr,
                            size_t errstr_size);

/* The input partition an output came from (header tally.source.partition;
 * -1 when it has none: older entries). */
static int32_t output_source_partition(const outbox_item_t *item) {
  tly_outbox_record_t record;
  if (tly_outbox_decode(item->record, item->record_len, &record))
    return -1;
  for (size_t h = 0; h < record.header_count; h++) {
    char text[16];
    if (record.header_name_len[h] != strlen("tally.source.partition") ||
        memcmp(record.headers[h].name, "tally.source.partition",
               record.header_name_len[h]) ||
        record.headers[h].value_len >= sizeof(text))
      continue;
    memcpy(text, record.headers[h].value, record.headers[h].value_len);
    text[record.headers[h].value_len] = '\0';
    return (int32_t)atoi(text);
  }
  return -1;
}

static int partition_assigned_here(void *opaque, int32_t partition) {
  tly_processor_t *p = opaque;
  return partition >= 0 && partition < p->partition_cap &&
         p->partitions[partition].assigned;
}

/*
 * Drops what the outbox has not yet handed to Kafka (of the previous run's
 * entries only, with inherited_only) for partitions keep() refuses: an
 * output (by its source partition; one without is kept) is marked
 * acknowledged, so the next commit deletes it; a changelog bundle loses
 * those partitions' records and markers (in memory: the stored entry stays
 * whole until deleted). *outputs and *bundles count what changed. 0, or -1
 * after setting the fatal reason.
 */
static int drop_pending(tly_processor_t *p, int inherited_only,
                        int (*keep)(void *opaque, int32_t partition),
                        void *opaque, size_t *outputs, size_t *bundles) {
  for (size_t i = 0; i < p->outbox_count; i++) {
    outbox_item_t *item = &p->outbox[i];
    if ((inherited_only && !item->inherited) || item->state != OUTBOX_PENDING)
      continue;
    if (!item->bundle) {
      int32_t source = output_source_partition(item);
      if (source >= 0 && !keep(opaque, source)) {
        item->state = OUTBOX_ACKED;
        (*outputs)++;
      }
      continue;
    }
    char *kept = NULL;
    size_t kept_len = 0;
    if (tly_changelog_bundle_filter(item->record, item->record_len, keep,
                                    opaque, &kept, &kept_len)) {
      tly_proc_set_fatal(p, "outbox entry %llu: corrupt changelog bundle",
                         (unsigned long long)item->seq);
      return -1;
    }
    *bundles += kept_len != item->record_len;
    p->outbox_record_bytes =
        p->outbox_record_bytes - item->record_len + kept_len;
    free(item->record);
    item->record = kept;
    item->record_len = kept_len;
  }
  return 0;
}

/* Partitions not assigned here, for tly_proc_resolve_inherited's filter:
 * those it dropped something of are marked. */
typedef struct {
  tly_processor_t *p;
  unsigned char *dropped;
  int32_t cap;
} unassigned_t;

static int keep_assigned(void *opaque, int32_t partition) {
  unassigned_t *filter = opaque;
  if (partition_assigned_here(filter->p, partition))
    return 1;
  if (partition >= 0 && partition < filter->cap)
    filter->dropped[partition] = 1;
  return 0;
}

/*
 * The outbox a previous run left, at the first assignment that names
 * partitions. Outputs Kafka already holds are dropped (the recovery
 * reconciliation of DESIGN.md). Of the others, those of partitions not
 * assigned here are dropped too, with their changelog records: that run's
 * changelog bundles were held behind its unacknowledged outputs, so the
 * owner restores from before those records and replays them, sending each
 * output that is missing; sending it from here as well could duplicate it.
 * The stored offset of every partition that lost something is deleted in
 * the same commit: should it be assigned here later (the cooperative
 * protocol hands partitions back over several rounds), it is rebuilt
 * (restored and replayed, with the replay rule) rather than resumed past
 * outputs nobody sent. 0, or -1 after setting the fatal reason.
 */
int tly_proc_resolve_inherited(tly_processor_t *p) {
  char errstr[1024];
  size_t dropped = 0, bundles = 0, rebuilt = 0;
  if (reconcile_outbox(p, errstr, sizeof(errstr))) {
    tly_proc_set_fatal(p, "recovery: %s", errstr);
    return -1;
  }
  unassigned_t filter = {p, calloc((size_t)p->partition_cap + 1, 1),
                         p->partition_cap};
  if (!filter.dropped) {
    tly_proc_set_fatal(p, "out of memory resolving the outbox");
    return -1;
  }
  if (drop_pending(p, 1, keep_assigned, &filter, &dropped, &bundles)) {
    free(filter.dropped);
    return -1;
  }
  for (int32_t i = 0; i < p->partition_cap; i++) {
    unsigned char key[4];
    if (!filter.dropped[i])
      continue;
    tly_put_be32(key, (uint32_t)i);
    tly_store_batch_delete(p->batch, TLY_CF_OFFSETS, key, sizeof(key));
    rebuilt++;
  }
  free(filter.dropped);
  for (size_t i = 0; i < p->outbox_count; i++)
    p->outbox[i].inherited = 0;
  p->inherited_held = 0;
  tly_log(TLY_LOG_INFO, "processor",
          "recovery: %zu outputs and %zu changelog bundles left by the "
          "previous run belong to partitions not assigned here: dropped "
          "(their owner replays them); %zu partitions will be rebuilt if "
          "they come here",
          dropped, bundles, rebuilt);
  if (rebuilt && tly_proc_batch_commit(p))
    return -1;
  return 0;
}

/* The partitions being revoked, for tly_proc_abandon_revoked's bundle filter.
 */
typedef struct {
  const rd_kafka_topic_partition_list_t *parts;
  unsigned char *dropped; /* per partition: something of it was dropped */
  int32_t cap;
} revoked_t;

static int revoked_index(const revoked_t *revoked, int32_t partition) {
  for (int i = 0; i < revoked->parts->cnt; i++)
    if (revoked->parts->elems[i].partition == partition)
      return partition >= 0 && partition < revoked->cap ? partition : -1;
  return -2; /* not revoked */
}

static int keep_unrevoked(void *opaque, int32_t partition) {
  revoked_t *revoked = opaque;
  int index = revoked_index(revoked, partition);
  if (index == -2)
    return 1;
  if (index >= 0)
    revoked->dropped[index] = 1;
  return 0;
}

/*
 * Outputs of revoked partitions that were never handed to Kafka (the
 * revoke came with the assignment lost, or the drain ran out of time) are
 * dropped rather than sent late: the next owner restores from the
 * changelog, which never runs ahead of unacknowledged outputs, replays the
 * tail and sends each output Kafka lacks. Sent from here too, one could
 * arrive after its check and be duplicated. The changelog records of those
 * partitions still waiting go too, so the stored offset of every partition
 * that lost something is deleted in the same commit: should it come back
 * here, it is rebuilt (restored and replayed) rather than resumed from a
 * state the changelog and the topics no longer fully reflect.
 */
void tly_proc_abandon_revoked(tly_processor_t *p,
                              const rd_kafka_topic_partition_list_t *parts) {
  revoked_t revoked = {parts, calloc((size_t)p->partition_cap + 1, 1),
                       p->partition_cap};
  size_t outputs = 0, bundles = 0;
  if (!revoked.dropped) {
    tly_proc_set_fatal(p, "out of memory abandoning revoked outputs");
    return;
  }
  drop_pending(p, 0, keep_unrevoked, &revoked, &outputs, &bundles);
  size_t rebuilt = 0;
  for (int32_t i = 0; i < p->partition_cap && !p->fatal; i++) {
    unsigned char key[4];
    if (!revoked.dropped[i])
      continue;
    tly_put_be32(key, (uint32_t)i);
    tly_store_batch_delete(p->batch, TLY_CF_OFFSETS, key, sizeof(key));
    rebuilt++;
  }
  free(revoked.dropped);
  if (!outputs && !bundles)
    return;
  atomic_fetch_add(&p->abandoned, outputs + bundles);
  tly_log(TLY_LOG_WARN, "processor",
          "revoke: %zu outputs and %zu changelog bundles not yet sent were "
          "dropped for the next owner to send; %zu partitions will be "
          "rebuilt if they come back",
          outputs, bundles, rebuilt);
  tly_proc_batch_commit(p);
}

/* ---- recovery: reconcile the outbox with the output topics ------------ */

static int load_ack_mark(void *opaque, const char *key, size_t key_len,
                         const char *value, size_t value_len) {
  tly_processor_t *p = opaque;
  char topic[128];
  size_t prefix = sizeof(META_ACK) - 1;
  /* "ack:" topic ":" [partition, 4 bytes] */
  if (key_len < prefix + 6 || value_len != 8 || key[key_len - 5] != ':' ||
      key_len - prefix - 5 >= sizeof(topic))
    return 0;
  memcpy(topic, key + prefix, key_len - prefix - 5);
  topic[key_len - prefix - 5] = '\0';
  ack_mark_t *mark = ack_find(
      p, topic, (int32_t)tly_get_be32((const unsigned char *)key + key_len - 4),
      1);
  if (mark)
    mark->next_offset = (int64_t)tly_get_be64((const unsigned char *)value);
  return 0;
}

/* Notes the tally.output.id of an output read back from Kafka in ids. */
static void add_output_id(void *opaque, const rd_kafka_message_t *msg) {
  json_t *ids = opaque;
  rd_kafka_headers_t *headers = NULL;
  const void *id;
  size_t id_len;
  if (!rd_kafka_message_headers((rd_kafka_message_t *)msg, &headers) &&
      !rd_kafka_header_get_last(headers, "tally.output.id", &id, &id_len)) {
    char text[512];
    snprintf(text, sizeof(text), "%.*s", (int)id_len, (const char *)id);
    json_object_set_new(ids, text, json_true());
  }
}

/* Adds the output ids found in topic to ids, read to the end from: the
 * last acknowledged offsets (from_time_ms < 0), the log start (0), or the
 * first record at or after from_time_ms (> 0; the log start where the
 * broker cannot look it up). With floors (floor_count entries, by
 * partition), only the partitions with a floor >= 0 are read, from no
 * lower than it. 0 or -1 (errstr). */
int tly_proc_collect_output_ids(tly_processor_t *p, const char *topic,
                                int64_t from_time_ms, const int64_t *floors,
                                int32_t floor_count, json_t *ids, char *errstr,
                                size_t errstr_size) {
  char kafka_err[512];
  const struct rd_kafka_metadata *md = NULL;
  rd_kafka_topic_t *rkt = rd_kafka_topic_new(p->producer, topic, NULL);
  rd_kafka_resp_err_t err = rd_kafka_metadata(p->producer, 0, rkt, &md, 10000);
  rd_kafka_topic_destroy(rkt);
  if (err || md->topic_cnt != 1 || md->topics[0].err) {
    /* A topic that does not exist holds none of our outputs. */
    int missing = !err && md->topic_cnt == 1 &&
                  md->topics[0].err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
    if (md)
      rd_kafka_metadata_destroy(md);
    if (missing)
      return 0;
    snprintf(errstr, errstr_size, "recovery: metadata of %s: %s", topic,
             rd_kafka_err2str(err ? err : RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC));
    return -1;
  }
  int partitions = md->topics[0].partition_cnt;
  rd_kafka_metadata_destroy(md);

  const char *defaults[] = {
      "group.id=tally-recovery", "enable.auto.commit=false",
      "enable.partition.eof=true", "max.partition.fetch.bytes=10485760",
      /* at each partition's end an empty fetch would
       * otherwise wait 500 ms: half a second per
       * restart and per replay check */
      "fetch.wait.max.ms=10", NULL};
  rd_kafka_t *reader =
      tly_proc_reader_new(p, defaults, kafka_err, sizeof(kafka_err));
  if (!reader) {
    snprintf(errstr, errstr_size, "recovery: %s", kafka_err);
    return -1;
  }
  rd_kafka_topic_partition_list_t *parts =
      rd_kafka_topic_partition_list_new(partitions);
  int rc = 0;
  for (int i = 0; i < partitions; i++) {
    if (floors && (i >= floor_count || floors[i] < 0))
      continue;
    ack_mark_t *mark = from_time_ms < 0 ? ack_find(p, topic, i, 0) : NULL;
    int64_t from = mark ? mark->next_offset : 0;
    if (from_time_ms > 0) {
      /* The first output at or after that time; the log start when the
       * broker cannot say (librdkafka 2.0.2's mock answers -1 to every
       * lookup by time). */
      rd_kafka_topic_partition_list_t *at =
          rd_kafka_topic_partition_list_new(1);
      rd_kafka_topic_partition_list_add(at, topic, i)->offset = from_time_ms;
      if (!rd_kafka_offsets_for_times(reader, at, 10000) && !at->elems[0].err &&
          at->elems[0].offset >= 0)
        from = at->elems[0].offset;
      rd_kafka_topic_partition_list_destroy(at);
    }
    if (floors && from < floors[i])
      from = floors[i];
    rd_kafka_topic_partition_list_add(parts, topic, i)->offset = from;
  }
  /* Each partition up to its log end as it is now: every output
   * acknowledged before this call is below it. */
  if (tly_read_to_end(reader, parts, 60000, add_output_id, ids, kafka_err,
                      sizeof(kafka_err))) {
    snprintf(errstr, errstr_size,
             "recovery: reading %s: %s; refusing to publish the outbox blind",
             topic, kafka_err);
    rc = -1;
  }
  rd_kafka_topic_partition_list_destroy(parts);
  rd_kafka_consumer_close(reader);
  rd_kafka_destroy(reader);
  return rc;
}

/* How often the log end of a forward's destination that is not fetched
 * here is asked for (a blocking request on the fold's thread). */
#define FORWARD_FLOOR_REFRESH_MS (60LL * 1000)

/* An offset of the input's partition at or below where a record produced
 * to it now lands, so that recovery reads from there, not from the log
 * start, to find the record (reconcile_outbox): the high watermark the
 * consumer last saw when the partition is fetched here; else its log end
 * as asked at most once a minute (any earlier log end is still a lower
 * bound, only a looser one); -1 when unknown. */
int64_t tly_proc_forward_scan_from(tly_processor_t *p, int32_t partition) {
  int64_t low = -1, high = -1;
  if (!rd_kafka_get_watermark_offsets(p->consumer, p->usage_topic, partition,
                                      &low, &high) &&
      high >= 0)
    return high;
  if (partition < 0 || partition >= p->partition_cap)
    return -1;
  partition_state_t *part = &p->partitions[partition];
  int64_t now = tly_monotonic_ms();
  if (!part->forward_floor_ms ||
      now - part->forward_floor_ms > FORWARD_FLOOR_REFRESH_MS) {
    if (!rd_kafka_query_watermark_offsets(p->consumer, p->usage_topic,
                                          partition, &low, &high, 2000) &&
        high >= 0 && (!part->forward_floor_ms || high > part->forward_floor))
      part->forward_floor = high;
    else if (!part->forward_floor_ms)
      part->forward_floor = -1; /* asked again in a minute */
    part->forward_floor_ms = now;
  }
  return part->forward_floor;
}

/* Where the outbox's forwards must be looked for in the input topic
 * (tly_reroute_floors_add); *floors stays NULL when it holds none. 0, or
 * -1 out of memory. */
static int forward_floors(tly_processor_t *p, int64_t **floors,
                          int32_t *count) {
  *floors = NULL;
  *count = 0;
  for (size_t i = 0; i < p->outbox_count; i++) {
    tly_outbox_record_t record;
    if (!p->outbox[i].bundle &&
        !tly_outbox_decode(p->outbox[i].record, p->outbox[i].record_len,
                           &record) &&
        tly_reroute_floors_add(floors, count, &record, p->usage_topic)) {
      free(*floors);
      *floors = NULL;
      return -1;
    }
  }
  return 0;
}

/*
 * Before re-publishing what a previous run left in the outbox: read the
 * output topics from the last acknowledged offsets to their end and treat
 * every entry whose id is already there as acknowledged (deleted at the
 * next commit). A crash between Kafka's ack and the outbox delete then
 * never duplicates an output. Works on any broker; needs no transactions.
 * Forwards go to the input topic itself: only the partitions they go to
 * are read, from where each was known to land at or after.
 */
static int reconcile_outbox(tly_processor_t *p, char *errstr,
                            size_t errstr_size) {
  json_t *ids = json_object();
  size_t dropped = 0;
  int64_t *floors = NULL;
  int32_t floor_count = 0;
  int rc = -1;
  if (!ids || forward_floors(p, &floors, &floor_count)) {
    snprintf(errstr, errstr_size, "out of memory reconciling the outbox");
    goto out;
  }
  if (tly_store_scan_prefix(p->store, TLY_CF_META, META_ACK,
                            sizeof(META_ACK) - 1, load_ack_mark, p, errstr,
                            errstr_size) ||
      tly_proc_collect_output_ids(p, p->alerts_topic, -1, NULL, 0, ids, errstr,
                                  errstr_size) ||
      tly_proc_collect_output_ids(p, p->dlq_topic, -1, NULL, 0, ids, errstr,
                                  errstr_size) ||
      (floors &&
       tly_proc_collect_output_ids(p, p->usage_topic, -1, floors, floor_count,
                                   ids, errstr, errstr_size)))
    goto out;
  for (size_t i = 0; i < p->outbox_count; i++) {
    tly_outbox_record_t record;
    if (p->outbox[i].bundle)
      continue; /* changelog records: sending them again is harmless */
    if (tly_outbox_decode(p->outbox[i].record, p->outbox[i].record_len,
                          &record)) {
      snprintf(errstr, errstr_size, "outbox entry %llu is corrupt",
               (unsigned long long)p->outbox[i].seq);
      goto out;
    }
    for (size_t h = 0; h < record.header_count; h++) {
      char id[512];
      if (record.header_name_len[h] != strlen("tally.output.id") ||
          memcmp(record.headers[h].name, "tally.output.id",
                 record.header_name_len[h]))
        continue;
      snprintf(id, sizeof(id), "%.*s", (int)record.headers[h].value_len,
               record.headers[h].value);
      if (json_object_get(ids, id)) {
        p->outbox[i].state = OUTBOX_ACKED;
        dropped++;
      }
    }
  }
  tly_log(TLY_LOG_INFO, "processor",
          "recovery: %zu of %zu outbox entries were already in Kafka", dropped,
          p->outbox_count);
  rc = 0;
out:
  free(floors);
  json_decref(ids);
  return rc;
}
