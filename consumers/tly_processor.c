/*
 * tly_processor.c - the processor loop (see tly_processor.h).
 *
 * One thread runs everything here: the consumer, the fold, the commit and
 * the outbox publisher. Rebalance callbacks run inside consumer_poll on that
 * same thread, which is what lets a revoke commit the batch in progress
 * before the partitions go: nothing folded is ever lost to a rebalance.
 *
 * Order of a batch (the exactly-once protocol of DESIGN.md):
 *   1. consume up to batch_max_events or batch_max_ms; decode; undecodable
 *      records become dead-letter outputs;
 *   2. fold into the overlay (rows loaded from RocksDB on first touch);
 *   3. one synced WriteBatch: dirty rows + outbox entries + next offsets
 *      (+ deletes of outbox entries Kafka has acknowledged) -- the commit;
 *   4. publish new outbox entries; their deletes ride on the next commit.
 */
#include "tly_processor.h"

#include "tally_producer.h"
#include "tly_codec.h"
#include "tly_fold.h"
#include "tly_log.h"
#include "tly_outbox.h"
#include "tly_overlay.h"

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define KEY_MAX 1200
#define COMMIT_ATTEMPTS 6

typedef enum {
  OUTBOX_PENDING,  /* committed, not yet handed to the producer */
  OUTBOX_INFLIGHT, /* produced, waiting for the delivery report */
  OUTBOX_ACKED,    /* acknowledged; delete on the next commit */
  OUTBOX_DELETING  /* delete is in the batch being committed */
} outbox_state_t;

typedef struct {
  uint64_t seq;
  char *record;
  size_t record_len;
  outbox_state_t state;
} outbox_item_t;

typedef struct {
  char *record;
  size_t record_len;
} pending_output_t;

typedef struct {
  int assigned;
  int64_t committed;  /* next offset stored in RocksDB, -1 if none */
  int64_t batch_next; /* next offset folded into the open batch, -1 */
} partition_state_t;

struct tly_processor {
  tly_processor_conf_t conf;
  char *usage_topic, *dlq_topic;
  tly_store_t *store;
  rd_kafka_t *consumer;
  rd_kafka_t *producer; /* idempotent; publishes the outbox */
  tly_codec_t *codec;

  /* The open batch. */
  tly_overlay_t overlay;
  tly_store_batch_t *batch;
  pending_output_t *outputs;
  size_t output_count, output_cap;
  size_t batch_events;

  /* The outbox, in sequence order. */
  outbox_item_t *outbox;
  size_t outbox_count, outbox_cap;
  uint64_t next_seq;

  /* Partition table; guarded by lock for the HTTP threads' snapshots. */
  pthread_mutex_t lock;
  partition_state_t *partitions;
  int32_t partition_cap;
  _Atomic int32_t partition_count;

  atomic_uint_least64_t events_folded, dead_letters, batches_committed;
  atomic_uint_least64_t outbox_size; /* mirror of outbox_count for metrics */

  int fatal;
  char fatal_reason[1024];
};

static const char META_NEXT_SEQ[] = "outbox.next_seq";

static void set_fatal(tly_processor_t *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void set_fatal(tly_processor_t *p, const char *fmt, ...) {
  va_list ap;
  if (p->fatal)
    return; /* keep the first cause */
  va_start(ap, fmt);
  vsnprintf(p->fatal_reason, sizeof(p->fatal_reason), fmt, ap);
  va_end(ap);
  p->fatal = 1;
}

/* Makes room for partition ids below count; caller holds p->lock. */
static int ensure_partitions(tly_processor_t *p, int32_t count) {
  if (count <= p->partition_cap)
    return 0;
  partition_state_t *grown = realloc(p->partitions, sizeof(*grown) * count);
  if (!grown)
    return -1;
  for (int32_t i = p->partition_cap; i < count; i++)
    grown[i] = (partition_state_t){0, -1, -1};
  p->partitions = grown;
  p->partition_cap = count;
  return 0;
}

/* ---- outbox ---------------------------------------------------------- */

static int outbox_append(tly_processor_t *p, uint64_t seq, char *record,
                         size_t record_len) {
  if (p->outbox_count == p->outbox_cap) {
    size_t cap = p->outbox_cap ? p->outbox_cap * 2 : 64;
    outbox_item_t *grown = realloc(p->outbox, cap * sizeof(*grown));
    if (!grown)
      return -1;
    p->outbox = grown;
    p->outbox_cap = cap;
  }
  p->outbox[p->outbox_count++] =
      (outbox_item_t){seq, record, record_len, OUTBOX_PENDING};
  atomic_store(&p->outbox_size, p->outbox_count);
  return 0;
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

static void outbox_delivery_report(rd_kafka_t *rk,
                                   const rd_kafka_message_t *msg,
                                   void *opaque) {
  tly_processor_t *p = opaque;
  outbox_item_t *item = outbox_find(p, (uint64_t)(uintptr_t)msg->_private);
  (void)rk;
  if (!item || item->state != OUTBOX_INFLIGHT)
    return;
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
  return outbox_append(p, tly_get_be64((const unsigned char *)key), copy,
                       value_len) != 0;
}

static int outbox_load_cb(void *opaque, const char *key, size_t key_len,
                          const char *value, size_t value_len) {
  return outbox_load(opaque, key, key_len, value, value_len);
}

/* Hands pending entries to the producer, in sequence order. */
static void outbox_publish(tly_processor_t *p) {
  for (size_t i = 0; i < p->outbox_count; i++) {
    outbox_item_t *item = &p->outbox[i];
    tly_outbox_record_t record;
    char topic[256];
    rd_kafka_headers_t *headers;
    rd_kafka_resp_err_t err;

    if (item->state != OUTBOX_PENDING)
      continue;
    if (tly_outbox_decode(item->record, item->record_len, &record) ||
        record.topic_len >= sizeof(topic)) {
      set_fatal(p, "outbox entry %llu is corrupt",
                (unsigned long long)item->seq);
      return;
    }
    memcpy(topic, record.topic, record.topic_len);
    topic[record.topic_len] = '\0';
    headers = rd_kafka_headers_new(record.header_count);
    for (size_t h = 0; h < record.header_count; h++)
      rd_kafka_header_add(headers, record.headers[h].name,
                          (ssize_t)record.header_name_len[h],
                          record.headers[h].value,
                          (ssize_t)record.headers[h].value_len);
    err = rd_kafka_producev(
        p->producer, RD_KAFKA_V_TOPIC(topic),
        RD_KAFKA_V_KEY(record.key, record.key_len),
        RD_KAFKA_V_VALUE((void *)record.value, record.value_len),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_HEADERS(headers),
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
static void outbox_compact(tly_processor_t *p) {
  size_t kept = 0;
  for (size_t i = 0; i < p->outbox_count; i++) {
    if (p->outbox[i].state == OUTBOX_DELETING)
      free(p->outbox[i].record);
    else
      p->outbox[kept++] = p->outbox[i];
  }
  p->outbox_count = kept;
  atomic_store(&p->outbox_size, kept);
}

/* ---- the batch ------------------------------------------------------- */

static int batch_has_work(tly_processor_t *p) {
  if (p->batch_events || p->output_count)
    return 1;
  for (size_t i = 0; i < p->outbox_count; i++)
    if (p->outbox[i].state == OUTBOX_ACKED)
      return 1;
  return 0;
}

static void batch_discard_outputs(tly_processor_t *p) {
  for (size_t i = 0; i < p->output_count; i++)
    free(p->outputs[i].record);
  p->output_count = 0;
}

/*
 * Step 3: writes the open batch in one synced RocksDB write. Returns 0, or
 * -1 after setting the fatal reason (the process must stop: what is in
 * memory is no longer known to be durable, and a restart resumes safely
 * from the stored offsets).
 */
static int batch_commit(tly_processor_t *p) {
  char errstr[512] = "";
  unsigned char seq_key[8], seq_value[8];
  uint64_t first_seq = p->next_seq;

  if (!batch_has_work(p))
    return 0;
  tly_store_batch_clear(p->batch);

  for (size_t i = 0; i < p->overlay.capacity; i++) {
    tly_overlay_entry_t *entry = &p->overlay.slots[i];
    unsigned char value[TLY_USAGE_ROW_SIZE];
    if (!entry->key || !entry->dirty)
      continue;
    tly_usage_row_encode(&entry->row, value);
    tly_store_batch_put(p->batch, TLY_CF_USAGE, entry->key, entry->key_len,
                        value, sizeof(value));
  }
  for (size_t i = 0; i < p->output_count; i++) {
    tly_put_be64(seq_key, first_seq + i);
    tly_store_batch_put(p->batch, TLY_CF_OUTBOX, seq_key, sizeof(seq_key),
                        p->outputs[i].record, p->outputs[i].record_len);
  }
  if (p->output_count) {
    tly_put_be64(seq_value, first_seq + p->output_count);
    tly_store_batch_put(p->batch, TLY_CF_META, META_NEXT_SEQ,
                        sizeof(META_NEXT_SEQ) - 1, seq_value,
                        sizeof(seq_value));
  }
  for (size_t i = 0; i < p->outbox_count; i++) {
    if (p->outbox[i].state != OUTBOX_ACKED)
      continue;
    tly_put_be64(seq_key, p->outbox[i].seq);
    tly_store_batch_delete(p->batch, TLY_CF_OUTBOX, seq_key, sizeof(seq_key));
    p->outbox[i].state = OUTBOX_DELETING;
  }
  for (int32_t i = 0; i < p->partition_cap; i++)
    if (p->partitions[i].batch_next >= 0)
      tly_store_batch_set_offset(p->batch, i, p->partitions[i].batch_next);

  /* A failed write leaves RocksDB untouched, so the same batch can simply be
   * written again; a store that keeps failing stops the processor. */
  int attempt;
  for (attempt = 0; attempt < COMMIT_ATTEMPTS; attempt++) {
    if (tly_store_commit(p->store, p->batch, 1, errstr, sizeof(errstr)) == 0)
      break;
    tly_log(TLY_LOG_WARN, "processor", "commit failed (attempt %d): %s",
            attempt + 1, errstr);
    struct timespec pause = {0, (long)(50L << attempt) * 1000000L};
    nanosleep(&pause, NULL);
  }
  if (attempt == COMMIT_ATTEMPTS) {
    set_fatal(p, "RocksDB commit failed %d times, last: %s", COMMIT_ATTEMPTS,
              errstr);
    return -1;
  }

  /* Committed: now, and only now, may the outputs leave. */
  for (size_t i = 0; i < p->output_count; i++) {
    if (outbox_append(p, first_seq + i, p->outputs[i].record,
                      p->outputs[i].record_len)) {
      set_fatal(p, "out of memory queueing outbox entries");
      return -1;
    }
    p->outputs[i].record = NULL;
  }
  p->next_seq = first_seq + p->output_count;
  p->output_count = 0;
  outbox_compact(p);

  pthread_mutex_lock(&p->lock);
  for (int32_t i = 0; i < p->partition_cap; i++) {
    if (p->partitions[i].batch_next >= 0)
      p->partitions[i].committed = p->partitions[i].batch_next;
    p->partitions[i].batch_next = -1;
  }
  pthread_mutex_unlock(&p->lock);
  atomic_fetch_add(&p->events_folded, p->batch_events);
  atomic_fetch_add(&p->batches_committed, 1);
  p->batch_events = 0;
  tly_overlay_reset(&p->overlay);
  return 0;
}

static int add_output(tly_processor_t *p, const tly_outbox_record_t *record) {
  if (p->output_count == p->output_cap) {
    size_t cap = p->output_cap ? p->output_cap * 2 : 16;
    pending_output_t *grown = realloc(p->outputs, cap * sizeof(*grown));
    if (!grown)
      return -1;
    p->outputs = grown;
    p->output_cap = cap;
  }
  pending_output_t *out = &p->outputs[p->output_count];
  if (tly_outbox_encode(record, &out->record, &out->record_len))
    return -1;
  p->output_count++;
  return 0;
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
  record.topic = p->dlq_topic;
  record.topic_len = strlen(p->dlq_topic);
  record.key = msg->key;
  record.key_len = msg->key ? msg->key_len : 0;
  record.value = msg->payload;
  record.value_len = msg->payload ? msg->len : 0;
  record.headers[0] = (tly_outbox_header_t){"tally.error", reason, strlen(reason)};
  record.headers[1] = (tly_outbox_header_t){"tally.source.topic", topic, strlen(topic)};
  record.headers[2] = (tly_outbox_header_t){"tally.source.partition", partition, strlen(partition)};
  record.headers[3] = (tly_outbox_header_t){"tally.source.offset", offset, strlen(offset)};
  record.headers[4] = (tly_outbox_header_t){"tally.output.id", output_id, strlen(output_id)};
  record.header_count = 5;
  if (add_output(p, &record)) {
    set_fatal(p, "out of memory writing a dead letter");
    return;
  }
  atomic_fetch_add(&p->dead_letters, 1);
  tly_log(TLY_LOG_WARN, "processor", "dead letter %s[%d]@%lld: %s", topic,
          (int)msg->partition, (long long)msg->offset, reason);
}

/* Steps 1-2 for one record. */
static void fold_message(tly_processor_t *p, const rd_kafka_message_t *msg) {
  tly_event_t event = {0};
  char errstr[512], key[KEY_MAX];
  size_t key_len;

  if (!msg->payload) {
    dead_letter(p, msg, "empty message (no value)");
    goto done;
  }
  if (tly_codec_decode(p->codec, msg->payload, msg->len, &event, errstr,
                       sizeof(errstr))) {
    dead_letter(p, msg, errstr);
    goto done;
  }
  if (event.body_kind != TLY_BODY_USAGE_RECORDED) {
    dead_letter(p, msg, "unsupported event body");
    goto done;
  }
  key_len = tly_usage_key(msg->partition, event.subject_kind,
                          event.subject_id, event.body.usage.feature, key,
                          sizeof(key));
  if (!key_len) {
    dead_letter(p, msg, "subject id and feature too long for a state key");
    goto done;
  }
  tly_overlay_entry_t *entry = tly_overlay_find(&p->overlay, key, key_len);
  if (!entry) {
    char *value = NULL;
    size_t value_len = 0;
    int found = tly_store_get(p->store, TLY_CF_USAGE, key, key_len, &value,
                              &value_len, errstr, sizeof(errstr));
    if (found < 0) {
      set_fatal(p, "reading state: %s", errstr);
      goto done;
    }
    entry = tly_overlay_insert(&p->overlay, key, key_len);
    if (!entry) {
      tly_store_free(value);
      set_fatal(p, "out of memory growing the overlay");
      goto done;
    }
    if (found && tly_usage_row_decode(value, value_len, &entry->row)) {
      tly_store_free(value);
      set_fatal(p, "stored usage row for partition %d is corrupt",
                (int)msg->partition);
      goto done;
    }
    tly_store_free(value);
  }
  if (tly_fold_usage(&entry->row, &event.body.usage, errstr,
                     sizeof(errstr))) {
    dead_letter(p, msg, errstr);
    goto done;
  }
  entry->dirty = 1;
  p->batch_events++;
done:
  tly_event_clear(&event);
}

static void handle_message(tly_processor_t *p, rd_kafka_message_t *msg) {
  if (msg->err) {
    switch (msg->err) {
    case RD_KAFKA_RESP_ERR__PARTITION_EOF:
      return;
    case RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET:
    case RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE:
      set_fatal(p,
                "partition %d: offset %lld is no longer in the log (%s); "
                "the events in between are gone and tally refuses to skip "
                "them",
                (int)msg->partition, (long long)msg->offset,
                rd_kafka_message_errstr(msg));
      return;
    case RD_KAFKA_RESP_ERR__FATAL:
      set_fatal(p, "Kafka consumer: %s", rd_kafka_message_errstr(msg));
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
  fold_message(p, msg);
  p->partitions[msg->partition].batch_next = msg->offset + 1;
}

/* ---- assignment ------------------------------------------------------ */

/*
 * Sets each partition's start offset from RocksDB, after checking that the
 * log still holds everything from there on. Returns -1 (fatal set) when it
 * does not: skipping would silently lose or miscount usage.
 */
static int resume_offsets(tly_processor_t *p,
                          rd_kafka_topic_partition_list_t *parts) {
  char errstr[512];
  for (int i = 0; i < parts->cnt; i++) {
    rd_kafka_topic_partition_t *part = &parts->elems[i];
    int64_t stored = -1, low = -1, high = -1;
    int found = tly_store_get_offset(p->store, part->partition, &stored,
                                     errstr, sizeof(errstr));
    if (found < 0) {
      set_fatal(p, "reading stored offset: %s", errstr);
      return -1;
    }
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR__TIMED_OUT;
    for (int attempt = 0; attempt < 10 && err; attempt++)
      err = rd_kafka_query_watermark_offsets(p->consumer, part->topic,
                                             part->partition, &low, &high,
                                             5000);
    if (err) {
      set_fatal(p, "partition %d: cannot read the log's bounds: %s",
                (int)part->partition, rd_kafka_err2str(err));
      return -1;
    }
    if (found && stored < low) {
      set_fatal(p,
                "partition %d: stored offset %lld is below the log start "
                "%lld; events %lld..%lld are gone and tally refuses to skip "
                "them",
                (int)part->partition, (long long)stored, (long long)low,
                (long long)stored, (long long)low - 1);
      return -1;
    }
    if (found && stored > high) {
      set_fatal(p,
                "partition %d: stored offset %lld is beyond the log end "
                "%lld: the topic was recreated or this is another cluster",
                (int)part->partition, (long long)stored, (long long)high);
      return -1;
    }
    if (!found && low > 0) {
      set_fatal(p,
                "partition %d: no stored state and the log starts at %lld, "
                "not 0; events before it are gone, refusing to fold a "
                "partial history",
                (int)part->partition, (long long)low);
      return -1;
    }
    part->offset = found ? stored : RD_KAFKA_OFFSET_BEGINNING;
    pthread_mutex_lock(&p->lock);
    if (ensure_partitions(p, part->partition + 1) == 0) {
      p->partitions[part->partition].assigned = 1;
      p->partitions[part->partition].committed = found ? stored : -1;
      p->partitions[part->partition].batch_next = -1;
    }
    pthread_mutex_unlock(&p->lock);
    if (part->partition + 1 > atomic_load(&p->partition_count))
      atomic_store(&p->partition_count, part->partition + 1);
    tly_log(TLY_LOG_INFO, "processor",
            "partition %d: resuming at %s%lld (log %lld..%lld)",
            (int)part->partition, found ? "" : "beginning ",
            (long long)(found ? stored : low), (long long)low,
            (long long)high);
  }
  return 0;
}

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts,
                         void *opaque) {
  tly_processor_t *p = opaque;

  /* Whatever happens next, what was folded so far is committed first. */
  batch_commit(p);
  if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
    if (p->fatal || resume_offsets(p, parts)) {
      rd_kafka_assign(rk, NULL);
      return;
    }
    rd_kafka_assign(rk, parts);
    return;
  }
  pthread_mutex_lock(&p->lock);
  for (int i = 0; i < parts->cnt; i++) {
    int32_t partition = parts->elems[i].partition;
    if (partition >= 0 && partition < p->partition_cap)
      p->partitions[partition].assigned = 0;
  }
  pthread_mutex_unlock(&p->lock);
  if (err != RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
    tly_log(TLY_LOG_WARN, "processor", "rebalance error: %s",
            rd_kafka_err2str(err));
  rd_kafka_assign(rk, NULL);
}

/* ---- lifecycle ------------------------------------------------------- */

static rd_kafka_conf_t *kafka_conf(const tly_processor_conf_t *conf,
                                   const char *const *defaults, char *errstr,
                                   size_t errstr_size) {
  rd_kafka_conf_t *kconf = rd_kafka_conf_new();
  char kafka_err[512];
  if (rd_kafka_conf_set(kconf, "bootstrap.servers", conf->brokers, kafka_err,
                        sizeof(kafka_err)) != RD_KAFKA_CONF_OK) {
    snprintf(errstr, errstr_size, "brokers: %s", kafka_err);
    goto fail;
  }
  if (tly_kafka_conf_apply(kconf, defaults, errstr, errstr_size) ||
      tly_kafka_conf_apply(kconf, conf->kafka_properties, errstr,
                           errstr_size))
    goto fail;
  return kconf;
fail:
  rd_kafka_conf_destroy(kconf);
  return NULL;
}

/* Waits for the usage topic to exist and returns its partition count. */
static int32_t topic_partition_count(tly_processor_t *p, char *errstr,
                                     size_t errstr_size) {
  for (int attempt = 0; attempt < 30; attempt++) {
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(p->consumer, p->usage_topic, NULL);
    rd_kafka_resp_err_t err = rd_kafka_metadata(p->consumer, 0, rkt, &md, 5000);
    int32_t count = -1;
    if (!err && md->topic_cnt == 1 && !md->topics[0].err)
      count = md->topics[0].partition_cnt;
    else if (!err && md->topic_cnt == 1)
      err = md->topics[0].err;
    if (md)
      rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);
    if (count > 0)
      return count;
    tly_log(TLY_LOG_INFO, "processor", "waiting for topic %s: %s",
            p->usage_topic, rd_kafka_err2str(err));
    struct timespec pause = {1, 0};
    nanosleep(&pause, NULL);
  }
  snprintf(errstr, errstr_size, "topic %s: not found on %s", p->usage_topic,
           p->conf.brokers);
  return -1;
}

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
  if (!conf->brokers || !*conf->brokers) {
    snprintf(errstr, errstr_size, "brokers: required");
    free(p);
    return NULL;
  }
  p->conf = *conf;
  if (p->conf.batch_max_events <= 0)
    p->conf.batch_max_events = 20000;
  if (p->conf.batch_max_ms <= 0)
    p->conf.batch_max_ms = 100;
  p->usage_topic = strdup(conf->usage_topic ? conf->usage_topic
                                            : TALLY_DEFAULT_USAGE_TOPIC);
  p->dlq_topic =
      strdup(conf->dlq_topic ? conf->dlq_topic : TLY_DEFAULT_DLQ_TOPIC);
  p->store = store;
  pthread_mutex_init(&p->lock, NULL);
  tly_overlay_init(&p->overlay);
  p->batch = tly_store_batch_new();
  p->codec = tly_codec_new(TLY_CODEC_DEFAULT_SCHEMA_ID, errstr, errstr_size);
  if (!p->usage_topic || !p->dlq_topic || !p->batch || !p->codec)
    goto fail;

  /* Offsets live in RocksDB only: no auto-commit, no offset store, and an
   * out-of-range offset is an error to stop on, never a silent reset. */
  const char *consumer_defaults[] = {
      "enable.auto.commit=false",    "enable.auto.offset.store=false",
      "auto.offset.reset=error",     "enable.partition.eof=false",
      "session.timeout.ms=10000",    "heartbeat.interval.ms=1000",
      "fetch.wait.max.ms=50",        "max.partition.fetch.bytes=10485760",
      "statistics.interval.ms=0",    NULL};
  kconf = kafka_conf(conf, consumer_defaults, errstr, errstr_size);
  if (!kconf)
    goto fail;
  if (rd_kafka_conf_set(kconf, "group.id",
                        conf->group_id ? conf->group_id : TLY_DEFAULT_GROUP_ID,
                        kafka_err, sizeof(kafka_err)) != RD_KAFKA_CONF_OK) {
    snprintf(errstr, errstr_size, "group id: %s", kafka_err);
    goto fail;
  }
  rd_kafka_conf_set_opaque(kconf, p);
  rd_kafka_conf_set_rebalance_cb(kconf, rebalance_cb);
  p->consumer =
      rd_kafka_new(RD_KAFKA_CONSUMER, kconf, kafka_err, sizeof(kafka_err));
  if (!p->consumer) {
    snprintf(errstr, errstr_size, "creating Kafka consumer: %s", kafka_err);
    goto fail;
  }
  kconf = NULL;
  rd_kafka_poll_set_consumer(p->consumer);

  const char *producer_defaults[] = {"enable.idempotence=true", "linger.ms=5",
                                     NULL};
  kconf = kafka_conf(conf, producer_defaults, errstr, errstr_size);
  if (!kconf)
    goto fail;
  rd_kafka_conf_set_opaque(kconf, p);
  rd_kafka_conf_set_dr_msg_cb(kconf, outbox_delivery_report);
  p->producer =
      rd_kafka_new(RD_KAFKA_PRODUCER, kconf, kafka_err, sizeof(kafka_err));
  if (!p->producer) {
    snprintf(errstr, errstr_size, "creating Kafka producer: %s", kafka_err);
    goto fail;
  }
  kconf = NULL;

  /* Outputs committed by an earlier run but not yet acknowledged. */
  if (tly_store_scan_prefix(store, TLY_CF_OUTBOX, NULL, 0, outbox_load_cb, p,
                            errstr, errstr_size))
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
  if (p->outbox_count)
    tly_log(TLY_LOG_INFO, "processor", "%zu outbox entries to publish",
            p->outbox_count);

  int32_t count = topic_partition_count(p, errstr, errstr_size);
  if (count < 0)
    goto fail;
  pthread_mutex_lock(&p->lock);
  int grown = ensure_partitions(p, count);
  pthread_mutex_unlock(&p->lock);
  if (grown) {
    snprintf(errstr, errstr_size, "out of memory");
    goto fail;
  }
  atomic_store(&p->partition_count, count);
  return p;

fail:
  if (kconf)
    rd_kafka_conf_destroy(kconf);
  tly_processor_destroy(p);
  return NULL;
}

int tly_processor_run(tly_processor_t *p, volatile sig_atomic_t *stop,
                      char *errstr, size_t errstr_size) {
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
  outbox_publish(p);

  while (!*stop && !p->fatal) {
    int64_t deadline = tly_monotonic_ms() + p->conf.batch_max_ms;
    int consumed = 0;
    while (consumed < p->conf.batch_max_events && !p->fatal) {
      int64_t remaining = deadline - tly_monotonic_ms();
      if (remaining <= 0 || *stop)
        break;
      rd_kafka_message_t *msg = rd_kafka_consumer_poll(p->consumer, (int)remaining);
      if (!msg)
        continue;
      handle_message(p, msg);
      rd_kafka_message_destroy(msg);
      consumed++;
    }
    if (p->fatal)
      break;
    rd_kafka_poll(p->producer, 0); /* delivery reports -> ACKED */
    if (batch_commit(p))
      break;
    outbox_publish(p);
  }

  if (!p->fatal) {
    /* Graceful stop: commit, give the outbox a moment, record the acks. */
    batch_commit(p);
    rd_kafka_flush(p->producer, 5000);
    batch_commit(p);
  }
  rd_kafka_consumer_close(p->consumer);
  if (p->fatal) {
    snprintf(errstr, errstr_size, "%s", p->fatal_reason);
    return -1;
  }
  return 0;
}

void tly_processor_destroy(tly_processor_t *p) {
  if (!p)
    return;
  if (p->consumer)
    rd_kafka_destroy(p->consumer);
  if (p->producer) {
    rd_kafka_flush(p->producer, 1000);
    rd_kafka_destroy(p->producer);
  }
  tly_codec_destroy(p->codec);
  tly_store_batch_destroy(p->batch);
  tly_overlay_free(&p->overlay);
  batch_discard_outputs(p);
  free(p->outputs);
  for (size_t i = 0; i < p->outbox_count; i++)
    free(p->outbox[i].record);
  free(p->outbox);
  free(p->partitions);
  free(p->usage_topic);
  free(p->dlq_topic);
  pthread_mutex_destroy(&p->lock);
  free(p);
}

int32_t tly_processor_partition_count(tly_processor_t *p) {
  return atomic_load(&p->partition_count);
}

size_t tly_processor_partitions(tly_processor_t *p,
                                tly_partition_status_t *out, size_t max) {
  size_t count;
  pthread_mutex_lock(&p->lock);
  count = (size_t)p->partition_cap;
  for (size_t i = 0; i < count && i < max; i++) {
    int64_t low = -1, high = -1;
    out[i].partition = (int32_t)i;
    out[i].assigned = p->partitions[i].assigned;
    out[i].committed_offset = p->partitions[i].committed;
    out[i].high_watermark = -1;
    if (out[i].assigned &&
        rd_kafka_get_watermark_offsets(p->consumer, p->usage_topic,
                                       (int32_t)i, &low, &high) == 0)
      out[i].high_watermark = high;
  }
  pthread_mutex_unlock(&p->lock);
  return count;
}

void tly_processor_stats(tly_processor_t *p, tly_processor_stats_t *stats) {
  stats->events_folded = atomic_load(&p->events_folded);
  stats->dead_letters = atomic_load(&p->dead_letters);
  stats->batches_committed = atomic_load(&p->batches_committed);
  stats->outbox_pending = atomic_load(&p->outbox_size);
}
