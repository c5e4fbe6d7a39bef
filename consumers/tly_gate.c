/*
 * tly_gate.c - records that wait before the fold. A record waits, its
 * partition paused right there and nothing after it folded, when:
 *
 * - It is framed with a schema id the codec does not know yet (conf.registry):
 *   the schema registry is asked which writer schema the id names before
 *   the record is decoded. The answer decides, never the wait: the
 *   registry's schema is added to the codec (which decodes the record,
 *   resolving it against tally's schema, or refuses it as incompatible: a
 *   dead letter with the reason), or the registry says the id does not
 *   exist (404 with error 40403, or a schema that is not Avro: a dead
 *   letter saying so). Any other failure (no answer, a timeout, 5xx, an
 *   auth error) must not cost the record: it waits, and the lookup is
 *   tried again with backoff (100 ms doubling to 30 s) while the loop goes
 *   on with the other partitions. The lookup itself runs on the loop's
 *   thread and blocks it for at most the registry timeout (5 s by
 *   default): once per id, since the codec keeps the answer (tly_codec.h:
 *   up to 64 ids).
 * - The outbox holds its bound of the memory budget or more (its records
 *   not yet acknowledged and deleted, and the outputs of the batches not
 *   yet in it: tly_proc_outbox_held_bytes): an output topic Kafka does not
 *   take (down, or refusing) must not grow it without end. Every record
 *   that arrives meanwhile waits, on every partition, and the outbox goes
 *   on being published; once acknowledgements and the commits that delete
 *   the entries bring it to half its bound, every partition waiting for it
 *   resumes. The hold is backpressure, like a full producer buffer: the
 *   consumer lag grows, nothing is lost, nothing is skipped.
 *
 * When a wait ends, the partition is sought back to the record and
 * resumed. Offsets stay with what was folded (batch_next never passes the
 * waiting record), so a restart meanwhile starts from it too.
 */
#include "tly_processor_internal.h"

#include "tly_codec.h"
#include "tly_log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#define RETRY_FIRST_MS 100
#define RETRY_MAX_MS 30000

/* Asks the registry about id: 1 when the codec now knows it (decodes or
 * refuses its records), 0 when the registry could not say (errstr). */
static int lookup(tly_processor_t *p, int32_t id, char *errstr,
                  size_t errstr_size) {
  char *schema = NULL, reason[512];
  size_t schema_len = 0;
  switch (tly_registry_fetch(p->conf.registry, id, &schema, &schema_len, errstr,
                             errstr_size)) {
  case TLY_REGISTRY_OK:
    atomic_fetch_add(&p->schema_lookups, 1);
    if (tly_codec_add_writer_schema(p->codec, id, schema, schema_len, reason,
                                    sizeof(reason)))
      tly_log(TLY_LOG_WARN, "processor", "%s", reason);
    else
      tly_log(TLY_LOG_INFO, "processor",
              "schema id %" PRId32 " from the schema registry: decoded "
              "against tally's event schema",
              id);
    free(schema);
    return 1;
  case TLY_REGISTRY_NOT_FOUND:
    atomic_fetch_add(&p->schema_lookups, 1);
    snprintf(reason, sizeof(reason),
             "schema id %" PRId32 " not found in the schema registry (%.400s)",
             id, errstr);
    return tly_codec_refuse_id(p->codec, id, reason) == 0;
  case TLY_REGISTRY_REFUSED: /* fetch: a schema that is not Avro */
    atomic_fetch_add(&p->schema_lookups, 1);
    return tly_codec_refuse_id(p->codec, id, errstr) == 0;
  case TLY_REGISTRY_UNAVAILABLE:
    break;
  }
  atomic_fetch_add(&p->schema_lookup_failures, 1);
  return 0;
}

static int64_t backoff_ms(int attempts) {
  int64_t wait = RETRY_FIRST_MS;
  for (int i = 1; i < attempts && wait < RETRY_MAX_MS; i++)
    wait *= 2;
  return wait < RETRY_MAX_MS ? wait : RETRY_MAX_MS;
}

/* What a partition waits for (partition_state_t.wait). */
enum { WAIT_NONE, WAIT_SCHEMA, WAIT_OUTBOX };

static _Atomic int32_t *waiting_count(tly_processor_t *p, int kind) {
  return kind == WAIT_SCHEMA ? &p->schema_waiting : &p->outbox_waiting;
}

/* Pauses the partition (a failure is fatal here). */
static void pause_at(tly_processor_t *p, int32_t partition, const char *why) {
  rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(list, p->usage_topic, partition);
  rd_kafka_resp_err_t err = rd_kafka_pause_partitions(p->consumer, list);
  if (err)
    tly_proc_set_fatal(p, "partition %d: cannot pause it %s: %s",
                       (int)partition, why, rd_kafka_err2str(err));
  rd_kafka_topic_partition_list_destroy(list);
}

/* msg's partition waits at msg (kind: WAIT_SCHEMA or WAIT_OUTBOX). */
static void wait_at(tly_processor_t *p, const rd_kafka_message_t *msg,
                    int kind) {
  partition_state_t *part = &p->partitions[msg->partition];
  part->wait = kind;
  part->wait_offset = msg->offset;
  atomic_fetch_add(waiting_count(p, kind), 1);
  pause_at(p, msg->partition,
           kind == WAIT_SCHEMA ? "for the schema registry" : "for the outbox");
}

/* Partition i's wait ends: it is about to be sought back to its record
 * and resumed. */
static void wait_ending(tly_processor_t *p, int32_t i) {
  partition_state_t *part = &p->partitions[i];
  atomic_fetch_sub(waiting_count(p, part->wait), 1);
  part->wait = WAIT_NONE;
  part->resuming = 1;
}

/* After wait_ending: its seek and resume answered err. 0, or -1 when it
 * waits still (for kind): the seek failed and the partition is here.
 * generation: the partition's when the seek began. */
static int wait_ended(tly_processor_t *p, int32_t i, int kind,
                      uint64_t generation, rd_kafka_resp_err_t err) {
  partition_state_t *part = &p->partitions[i];
  if (!err)
    return 0;
  /* The seek waits for the consumer, which may run a rebalance meanwhile
   * (seen: "Local: Timed out" as the partition was revoked). Gone from
   * here, or assigned again meanwhile: its owner (this one, anew) starts
   * from the stored offsets, which never pass the waiting record. Still
   * here: it stays paused at the record and the wait ends again later.
   * Never fatal: nothing was folded past it. */
  part->resuming = 0;
  if (!part->assigned || part->generation != generation) {
    tly_log(TLY_LOG_INFO, "processor",
            "partition %d moved while resuming at offset %lld (%s)", (int)i,
            (long long)part->wait_offset, rd_kafka_err2str(err));
    return 0;
  }
  part->wait = kind;
  atomic_fetch_add(waiting_count(p, kind), 1);
  tly_log(TLY_LOG_WARN, "processor",
          "partition %d: seeking back to offset %lld failed (%s); it stays "
          "paused there and is tried again",
          (int)i, (long long)part->wait_offset, rd_kafka_err2str(err));
  return -1;
}

/* The partition's entry of list: its error, or -1 when it is not there. */
static rd_kafka_resp_err_t
listed_err(const rd_kafka_topic_partition_list_t *list, int32_t partition) {
  for (int k = 0; k < list->cnt; k++)
    if (list->elems[k].partition == partition)
      return list->elems[k].err;
  return (rd_kafka_resp_err_t)-1;
}

/* The waits of parts[0..n) (all for kind) are over: every one sought back
 * to its record in one seek and resumed in one resume (a seek waits for
 * the consumer's answer: partition by partition, a hold's end over
 * hundreds of partitions added up). How many wait still: those here whose
 * seek or resume failed, paused at their record (wait_ended). */
static int end_waits(tly_processor_t *p, int kind, const int32_t *parts,
                     int n) {
  if (n <= 0)
    return 0; /* no seek of an empty list */
  uint64_t *generations = calloc((size_t)n + 1, sizeof(*generations));
  if (!generations)
    return n; /* nothing changed: tried again later */
  rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(n);
  for (int k = 0; k < n; k++) {
    generations[k] = p->partitions[parts[k]].generation;
    rd_kafka_topic_partition_list_add(list, p->usage_topic, parts[k])->offset =
        p->partitions[parts[k]].wait_offset;
    wait_ending(p, parts[k]);
  }
  rd_kafka_error_t *error = rd_kafka_seek_partitions(p->consumer, list, 5000);
  rd_kafka_resp_err_t all = error ? rd_kafka_error_code(error) : 0;
  if (error)
    rd_kafka_error_destroy(error);
  /* Those sought resume (together); the others wait still. */
  rd_kafka_topic_partition_list_t *sought =
      rd_kafka_topic_partition_list_new(n);
  for (int k = 0; k < n && !all; k++)
    if (!listed_err(list, parts[k]))
      rd_kafka_topic_partition_list_add(sought, p->usage_topic, parts[k]);
  rd_kafka_resp_err_t resume_err =
      sought->cnt ? rd_kafka_resume_partitions(p->consumer, sought) : 0;
  int still = 0;
  for (int k = 0; k < n; k++) {
    rd_kafka_resp_err_t err = all ? all : listed_err(list, parts[k]);
    if (!err)
      err = resume_err ? resume_err : listed_err(sought, parts[k]);
    still += wait_ended(p, parts[k], kind, generations[k], err) != 0;
  }
  free(generations);
  rd_kafka_topic_partition_list_destroy(sought);
  rd_kafka_topic_partition_list_destroy(list);
  return still;
}

static size_t outbox_bound(const tly_processor_t *p) {
  return (size_t)tly_memory_bound(p->memory_budget, TLY_MEMORY_OUTBOX);
}

int tly_proc_gate_skips(partition_state_t *part,
                        const rd_kafka_message_t *msg) {
  if (part->wait)
    return 1; /* fetched before the pause */
  if (part->resuming) {
    if (msg->offset != part->wait_offset)
      return 1; /* fetched before the seek */
    part->resuming = 0;
  }
  return 0;
}

int tly_proc_gate(tly_processor_t *p, const rd_kafka_message_t *msg) {
  partition_state_t *part = &p->partitions[msg->partition];
  size_t held = tly_proc_outbox_held_bytes(p);
  if (held >= outbox_bound(p)) {
    if (!atomic_load(&p->outbox_waiting)) {
      atomic_fetch_add(&p->outbox_holds, 1);
      tly_log(TLY_LOG_WARN, "processor",
              "the outbox holds %zu bytes, its bound %zu: records wait "
              "(partition %d at offset %lld, and every partition at its next "
              "record) until Kafka takes what it holds",
              held, outbox_bound(p), (int)msg->partition,
              (long long)msg->offset);
    }
    wait_at(p, msg, WAIT_OUTBOX);
    return 1;
  }
  if (!p->conf.registry)
    return 0;
  int64_t id = tly_codec_frame_id(msg->payload, msg->payload ? msg->len : 0);
  if (id < 0 || tly_codec_knows_id(p->codec, (int32_t)id))
    return 0;
  char errstr[512];
  if (lookup(p, (int32_t)id, errstr, sizeof(errstr)))
    return 0;
  part->schema_attempts = 1;
  part->schema_wait_id = (int32_t)id;
  part->schema_retry_ms = tly_monotonic_ms() + backoff_ms(1);
  tly_log(TLY_LOG_WARN, "processor",
          "partition %d waits at offset %lld: schema id %" PRId32
          " could not be looked up (%s); retrying",
          (int)msg->partition, (long long)msg->offset, (int32_t)id, errstr);
  wait_at(p, msg, WAIT_SCHEMA);
  return 1;
}

/* Once the outbox is down to half its bound, the partitions waiting for it
 * resume. */
static void outbox_retry(tly_processor_t *p) {
  if (!atomic_load(&p->outbox_waiting))
    return;
  size_t held = tly_proc_outbox_held_bytes(p);
  atomic_store(&p->outbox_bytes, held); /* no commit may come meanwhile */
  if (held > outbox_bound(p) / 2)
    return;
  int32_t *parts = malloc((size_t)p->partition_cap * sizeof(*parts) + 1);
  if (!parts)
    return; /* tried again next round */
  int n = 0;
  for (int32_t i = 0; i < p->partition_cap; i++)
    if (p->partitions[i].wait == WAIT_OUTBOX)
      parts[n++] = i;
  int resumed = n - end_waits(p, WAIT_OUTBOX, parts, n);
  free(parts);
  tly_log(TLY_LOG_INFO, "processor",
          "the outbox is down to %zu bytes: %d partitions resume", held,
          resumed);
}

void tly_proc_gate_retry(tly_processor_t *p) {
  outbox_retry(p);
  if (!atomic_load(&p->schema_waiting))
    return;
  int64_t now = tly_monotonic_ms();
  for (int32_t i = 0; i < p->partition_cap && !p->fatal; i++) {
    partition_state_t *part = &p->partitions[i];
    if (part->wait != WAIT_SCHEMA || now < part->schema_retry_ms)
      continue;
    char errstr[512];
    if (!tly_codec_knows_id(p->codec, part->schema_wait_id) &&
        !lookup(p, part->schema_wait_id, errstr, sizeof(errstr))) {
      part->schema_attempts++;
      part->schema_retry_ms =
          tly_monotonic_ms() + backoff_ms(part->schema_attempts);
      tly_log(TLY_LOG_WARN, "processor",
              "partition %d still waits at offset %lld (attempt %d): %s",
              (int)i, (long long)part->wait_offset, part->schema_attempts,
              errstr);
      continue;
    }
    tly_log(TLY_LOG_INFO, "processor",
            "partition %d resumes at offset %lld: schema id %" PRId32
            " looked up",
            (int)i, (long long)part->wait_offset, part->schema_wait_id);
    if (end_waits(p, WAIT_SCHEMA, &i, 1)) {
      part->schema_attempts++;
      part->schema_retry_ms =
          tly_monotonic_ms() + backoff_ms(part->schema_attempts);
    }
  }
}

/* A rebalance sets every assigned partition's position from the store:
 * waits are over; partitions paused for one are resumed (a pause would
 * otherwise outlive the assignment). */
void tly_proc_gate_reset(tly_processor_t *p, rd_kafka_t *rk,
                         const rd_kafka_topic_partition_list_t *parts,
                         int incremental) {
  int any = 0;
  for (int32_t i = 0; i < p->partition_cap; i++) {
    int listed = 0;
    for (int j = 0; parts && j < parts->cnt && !listed; j++)
      listed = parts->elems[j].partition == i;
    /* Under the cooperative protocol a partition that stays keeps waiting
     * (it stays paused). */
    if (incremental && !listed)
      continue;
    partition_state_t *part = &p->partitions[i];
    /* (resuming: paused still, if the rebalance came during the seek) */
    any |= part->wait || part->resuming;
    if (part->wait)
      atomic_fetch_sub(waiting_count(p, part->wait), 1);
    part->wait = WAIT_NONE;
    part->resuming = 0;
  }
  if (!incremental) {
    atomic_store(&p->schema_waiting, 0);
    atomic_store(&p->outbox_waiting, 0);
  }
  if (any && parts && parts->cnt)
    rd_kafka_resume_partitions(rk, (rd_kafka_topic_partition_list_t *)parts);
}
