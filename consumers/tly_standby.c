/*
 * tly_standby.c - standby replicas (--standby-replicas N, issue 20): a
 * restored, continuously applied copy of input partitions this instance
 * does not own, kept in its own store from the state changelog
 * (tly_changelog.h), so that reads of a moving partition find a fresh copy
 * here (tly_http_stale.c answers from it unchanged: it is "the copy in
 * this store") and so that, if the partition is assigned here, the
 * processor resumes from the copy's offset and replays only the input's
 * short tail (tly_restore.c's rule sees a current store) instead of
 * restoring from scratch.
 *
 * Which partitions: those the gate (cli/: the membership's rendezvous
 * ranking, tly_members_map_standbys) chooses for this instance, while the
 * processor neither has them assigned nor is moving them.
 *
 * How, per partition (one reader, no consumer group, assigned to every
 * standby partition of the changelog):
 *   - setup: a store holding an offset at or past what the changelog's
 *     last record reflects is current: applied from the changelog's end
 *     on. Otherwise the changelog is read from its start, applying only
 *     records that reflect offsets past the stored one (a store with no
 *     offset is wiped first: a restore) - the catch-up. A changelog that
 *     no longer starts at 0 cannot be trusted (records expired): no copy,
 *     tried again later.
 *   - the catch-up's state is written without an offset (the stored one is
 *     deleted in the first write, so no read answers from a half-applied
 *     copy); its end writes the offset of the highest marker read.
 *   - then each marker (one commit of the owner) is applied in ONE atomic
 *     write with the stored offset and watermark: the copy always holds
 *     exactly the records below its offset (what as_of says).
 * As a restore, a record is applied only once a marker at or above its
 * offset was read, and never over a newer one of its key. Stripe report
 * marks and cursors are not applied (a new owner with reporting restores
 * them from the changelog whatever this copy holds: tly_restore.c). The
 * cycle-end and expiry indexes are not kept: a meta key marks the
 * partition and the processor rebuilds them when it is assigned here
 * (tly_proc_standby_promoted).
 *
 * Exactly-once: a standby never folds, never writes outputs, outbox rows
 * or Kafka offsets, and never writes a partition the processor has
 * assigned or is moving: each write claims the partition (standby_busy,
 * under the processor's lock) only while it is neither, and the rebalance
 * callback waits for a claim in progress before it touches the partition
 * (tly_proc_standby_wait). On assignment the normal protocol continues
 * from the copy's stored offset.
 */
#include "tly_processor_internal.h"

#include "tly_keys.h"
#include "tly_log.h"
#include "tly_offset_map.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The gate and the processor's partitions are looked at this often. */
#define STANDBY_REFRESH_MS 500
/* A catch-up writes in chunks of this many records. */
#define STANDBY_CHUNK 20000
/* A partition whose copy could not be set up is tried again after this. */
#define STANDBY_RETRY_MS 10000
/* A copy no longer chosen is kept applied this long: during a rebalance
 * the ranking moves with the claims (a partition claimed by two members,
 * then by its new owner), and a copy stopped and set up again may have to
 * read its changelog from the start. */
#define STANDBY_LINGER_MS 30000

static const char META_STANDBY[] = "standby:";

typedef struct {
  uint64_t hash;
  int64_t offset;
  size_t key_len, value_len;
  int tombstone;
  unsigned char bytes[]; /* key ([kind][store key]) then value */
} held_t;

typedef struct {
  int active;      /* assigned to the reader, applied */
  int steady;      /* caught up with the changelog's end seen at setup */
  int64_t applied; /* input offset the store's copy reflects */
  int64_t pending, pending_wm; /* the highest marker read */
  int64_t target;              /* the catch-up reads up to here */
  int64_t position;            /* next changelog offset to read */
  int offset_dropped;          /* the catch-up deleted the stored offset */
  uint64_t records;            /* changelog records read since setup */
  held_t **held;
  size_t held_count, held_cap;
  /* Key -> newest offset applied since the last marker write. */
  tly_offset_map_t map;
  tly_store_batch_t *batch;
  int64_t retry_at_ms;
  uint64_t generation; /* the processor's assignment count at setup, + 1 */
  int64_t chosen_ms;   /* the gate last chose it (monotonic) */
} standby_part_t;

struct tly_standby {
  tly_processor_t *p;
  tly_standby_gate_t gate;
  size_t replicas;
  rd_kafka_t *reader, *probe;
  pthread_t thread;
  atomic_int stop;
  pthread_mutex_t lock; /* active, steady, applied: read by other threads */
  standby_part_t *parts;
  int32_t count;
  atomic_uint_least64_t markers, catchups, records;
};

/* ---- claims: the processor never sees a standby write ----------------- */

/* Claims partition for a write: only while the processor neither has it
 * assigned nor is moving it, and has not assigned it since the copy was
 * set up (*generation: its assignment count then; 0 sets it). */
static int claim(tly_processor_t *p, int32_t partition, uint64_t *generation) {
  pthread_mutex_lock(&p->lock);
  int ok =
      tly_proc_ensure_partitions(p, partition + 1) == 0 &&
      !p->partitions[partition].assigned && !p->partitions[partition].moving &&
      (!*generation || *generation == p->partitions[partition].generation + 1);
  if (ok) {
    p->partitions[partition].standby_busy = 1;
    *generation = p->partitions[partition].generation + 1;
  }
  pthread_mutex_unlock(&p->lock);
  return ok;
}

static void release(tly_processor_t *p, int32_t partition) {
  pthread_mutex_lock(&p->lock);
  p->partitions[partition].standby_busy = 0;
  pthread_cond_broadcast(&p->hold_released);
  pthread_mutex_unlock(&p->lock);
}

void tly_proc_standby_wait(tly_processor_t *p,
                           const rd_kafka_topic_partition_list_t *parts) {
  pthread_mutex_lock(&p->lock);
  for (int busy = 1; busy;) {
    busy = 0;
    for (int i = 0; i < parts->cnt && !busy; i++) {
      int32_t partition = parts->elems[i].partition;
      busy = partition >= 0 && partition < p->partition_cap &&
             p->partitions[partition].standby_busy;
    }
    if (busy)
      pthread_cond_wait(&p->hold_released, &p->lock);
  }
  pthread_mutex_unlock(&p->lock);
}

/* ---- one partition's copy --------------------------------------------- */

static void part_clear(standby_part_t *s) {
  for (size_t i = 0; i < s->held_count; i++)
    free(s->held[i]);
  free(s->held);
  tly_offset_map_free(&s->map);
  tly_store_batch_destroy(s->batch);
  int64_t retry = s->retry_at_ms;
  memset(s, 0, sizeof(*s));
  s->retry_at_ms = retry;
  s->applied = s->pending = -1;
}

static size_t meta_key(const char *prefix, size_t prefix_len, int32_t partition,
                       char *out) {
  memcpy(out, prefix, prefix_len);
  tly_put_be32((unsigned char *)out + prefix_len, (uint32_t)partition);
  return prefix_len + 4;
}

/* Writes the batch (claimed). with_offset: the marker's offset and
 * watermark go with it. 0, 1 the processor has the partition now, -1
 * error. */
static int write_batch(struct tly_standby *st, int32_t partition,
                       standby_part_t *s, int with_offset) {
  tly_processor_t *p = st->p;
  char errstr[512], key[16];
  if (with_offset) {
    unsigned char wm[8];
    tly_store_batch_set_offset(s->batch, partition, s->pending);
    tly_put_be64(wm, (uint64_t)s->pending_wm);
    tly_store_batch_put(
        s->batch, TLY_CF_META, key,
        meta_key(META_WATERMARK, sizeof(META_WATERMARK) - 1, partition, key),
        wm, 8);
  } else if (!s->offset_dropped) {
    unsigned char begin[4];
    tly_put_be32(begin, (uint32_t)partition);
    tly_store_batch_delete(s->batch, TLY_CF_OFFSETS, begin, 4);
    s->offset_dropped = 1;
  }
  tly_store_batch_put(
      s->batch, TLY_CF_META, key,
      meta_key(META_STANDBY, sizeof(META_STANDBY) - 1, partition, key), "", 0);
  if (!claim(p, partition, &s->generation))
    return 1;
  int rc = tly_store_commit(p->store, s->batch, 0, errstr, sizeof(errstr));
  release(p, partition);
  tly_store_batch_clear(s->batch);
  if (rc) {
    tly_log(TLY_LOG_WARN, "standby", "partition %d: writing the copy: %s",
            (int)partition, errstr);
    return -1;
  }
  if (with_offset) {
    pthread_mutex_lock(&st->lock);
    s->applied = s->pending;
    pthread_mutex_unlock(&st->lock);
    tly_offset_map_clear(&s->map);
  }
  return 0;
}

/* Puts a state record (value NULL: deletes it) into the batch unless a
 * newer one of its key was applied. 0, -1 out of memory. */
static int put(standby_part_t *s, int32_t partition, uint64_t hash,
               int64_t offset, const unsigned char *key, size_t key_len,
               const unsigned char *value, size_t value_len, int tombstone) {
  tly_cf_t cf;
  switch (key[0]) {
  case TLY_CHANGELOG_ACCOUNT:
    cf = TLY_CF_ACCOUNTS;
    break;
  case TLY_CHANGELOG_USAGE:
    cf = TLY_CF_USAGE;
    break;
  case TLY_CHANGELOG_DEDUPE:
    cf = TLY_CF_DEDUPE;
    break;
  default:
    return 0; /* reports, cursors, kinds of a later version */
  }
  if (key_len < 5 || tly_get_be32(key + 1) != (uint32_t)partition)
    return 0;
  int admitted = tly_offset_map_admit(&s->map, hash, offset, 0);
  if (admitted <= 0)
    return admitted;
  if (tombstone)
    tly_store_batch_delete(s->batch, cf, key + 1, key_len - 1);
  else
    tly_store_batch_put(s->batch, cf, key + 1, key_len - 1, value, value_len);
  return 0;
}

static int apply_held(standby_part_t *s, int32_t partition) {
  size_t kept = 0;
  int rc = 0;
  for (size_t i = 0; i < s->held_count; i++) {
    held_t *item = s->held[i];
    if (item->offset > s->pending) {
      s->held[kept++] = item;
      continue;
    }
    if (!rc)
      rc = put(s, partition, item->hash, item->offset, item->bytes,
               item->key_len, item->bytes + item->key_len, item->value_len,
               item->tombstone);
    free(item);
  }
  s->held_count = kept;
  return rc;
}

static int hold(standby_part_t *s, uint64_t hash, int64_t offset,
                const unsigned char *key, size_t key_len,
                const unsigned char *value, size_t value_len, int tombstone) {
  if (array_room(&s->held, &s->held_cap, s->held_count + 1, sizeof(*s->held)))
    return -1;
  held_t *item = malloc(sizeof(*item) + key_len + value_len);
  if (!item)
    return -1;
  item->hash = hash;
  item->offset = offset;
  item->key_len = key_len;
  item->value_len = value_len;
  item->tombstone = tombstone;
  memcpy(item->bytes, key, key_len);
  if (value_len)
    memcpy(item->bytes + key_len, value, value_len);
  s->held[s->held_count++] = item;
  return 0;
}

/* One changelog record. 0, 1 the processor has the partition now, -1
 * error (the copy is dropped). */
static int apply_record(struct tly_standby *st, int32_t partition,
                        standby_part_t *s, const rd_kafka_message_t *msg) {
  const unsigned char *key = msg->key, *value = msg->payload;
  int64_t offset;
  if (!key || msg->key_len < 1 || key[0] == TLY_CHANGELOG_REPORT ||
      key[0] == TLY_CHANGELOG_CURSOR)
    return 0;
  if (!value) {
    rd_kafka_headers_t *headers = NULL;
    const void *bytes;
    size_t size;
    if (rd_kafka_message_headers(msg, &headers) ||
        rd_kafka_header_get_last(headers, TLY_CHANGELOG_OFFSET_HEADER, &bytes,
                                 &size) ||
        size != 8)
      return 0;
    offset = (int64_t)tly_get_be64(bytes);
  } else {
    if (msg->len < 8)
      return 0;
    offset = (int64_t)tly_get_be64(value);
  }
  if (key[0] == TLY_CHANGELOG_MARKER) {
    int64_t newest = s->pending > s->applied ? s->pending : s->applied;
    if (!value || msg->len < 16 || offset <= newest)
      return 0; /* an older commit's marker */
    s->pending = offset;
    s->pending_wm = (int64_t)tly_get_be64(value + 8);
    if (apply_held(s, partition))
      return -1;
    atomic_fetch_add(&st->markers, 1);
    return s->steady ? write_batch(st, partition, s, 1) : 0;
  }
  if (offset <= s->applied)
    return 0; /* the copy holds it */
  uint64_t hash = tly_offset_map_hash(key, msg->key_len);
  const unsigned char *data = value ? value + 8 : NULL;
  size_t data_len = value ? msg->len - 8 : 0;
  int rc = offset <= s->pending ? put(s, partition, hash, offset, key,
                                      msg->key_len, data, data_len, !value)
                                : hold(s, hash, offset, key, msg->key_len, data,
                                       data_len, !value);
  if (rc)
    return -1;
  if (!s->steady && tly_store_batch_count(s->batch) >= STANDBY_CHUNK)
    return write_batch(st, partition, s, 0);
  return 0;
}

static void stop_part(struct tly_standby *st, int32_t partition,
                      const char *why) {
  standby_part_t *s = &st->parts[partition];
  if (!s->active)
    return;
  rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(list, st->p->changelog_topic, partition);
  rd_kafka_error_t *error = rd_kafka_incremental_unassign(st->reader, list);
  if (error)
    rd_kafka_error_destroy(error);
  rd_kafka_topic_partition_list_destroy(list);
  tly_log(TLY_LOG_INFO, "standby",
          "partition %d: standby copy stopped (%s) at offset %lld",
          (int)partition, why, (long long)s->applied);
  pthread_mutex_lock(&st->lock);
  part_clear(s);
  pthread_mutex_unlock(&st->lock);
}

/* The end of a catch-up: the state read so far, with its offset. */
static int finish_catchup(struct tly_standby *st, int32_t partition,
                          standby_part_t *s) {
  int rc = 0;
  if (s->pending > s->applied)
    rc = write_batch(st, partition, s, 1);
  if (rc)
    return rc;
  pthread_mutex_lock(&st->lock);
  s->steady = 1;
  pthread_mutex_unlock(&st->lock);
  atomic_fetch_add(&st->catchups, 1);
  tly_log(TLY_LOG_INFO, "standby",
          "partition %d: standby copy caught up with %s at offset %lld "
          "(%llu records read)",
          (int)partition, st->p->changelog_topic, (long long)s->applied,
          (unsigned long long)s->records);
  return 0;
}

/* Sets partition's copy up (claimed) and assigns it to the reader. */
static void start_part(struct tly_standby *st, int32_t partition) {
  tly_processor_t *p = st->p;
  standby_part_t *s = &st->parts[partition];
  char errstr[512];
  int64_t stored = -1, low = 0, high = 0;
  uint64_t generation = 0;
  /* What the store holds, read while claimed (the processor does not
   * write it now); the broker is asked unclaimed: a rebalance never waits
   * for it, and the generation tells if the partition came and went. */
  if (!claim(p, partition, &generation))
    return;
  const char *why = NULL;
  int found = tly_store_get_offset(p->store, partition, &stored, errstr,
                                   sizeof(errstr));
  release(p, partition);
  rd_kafka_resp_err_t err = rd_kafka_query_watermark_offsets(
      st->probe, p->changelog_topic, partition, &low, &high, 5000);
  int64_t position = high, applied = found > 0 ? stored : -1;
  if (found < 0 || err) {
    why = found < 0 ? errstr : rd_kafka_err2str(err);
  } else if (found > 0 && high > low) {
    tly_changelog_last_t last;
    if (tly_changelog_last_record(st->probe, p->changelog_topic, partition,
                                  high, &last, errstr, sizeof(errstr)) < 0)
      why = errstr;
    else if (last.offset < 0 || last.offset > stored)
      position = low; /* the changelog holds newer state: catch up */
  } else if (!found && high > low) {
    position = low;
  }
  if (!why && position < high && low > 0)
    why = "the changelog no longer starts at 0 (records expired)";
  int claimed = !why && claim(p, partition, &generation);
  if (!why && !claimed)
    return; /* assigned here meanwhile */
  if (claimed && !found &&
      tly_changelog_wipe_partition(p->store, partition, errstr, sizeof(errstr)))
    why = errstr;
  if (claimed)
    release(p, partition);
  if (why) {
    tly_log(TLY_LOG_WARN, "standby",
            "partition %d: no standby copy (tried again in %d s): %s",
            (int)partition, STANDBY_RETRY_MS / 1000, why);
    s->retry_at_ms = tly_monotonic_ms() + STANDBY_RETRY_MS;
    return;
  }
  s->batch = tly_store_batch_new();
  if (!s->batch)
    return;
  rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(list, p->changelog_topic, partition)
      ->offset = position;
  rd_kafka_error_t *error = rd_kafka_incremental_assign(st->reader, list);
  rd_kafka_topic_partition_list_destroy(list);
  if (error) {
    tly_log(TLY_LOG_WARN, "standby", "partition %d: assigning %s: %s",
            (int)partition, p->changelog_topic, rd_kafka_error_string(error));
    rd_kafka_error_destroy(error);
    tly_store_batch_destroy(s->batch);
    s->batch = NULL;
    s->retry_at_ms = tly_monotonic_ms() + STANDBY_RETRY_MS;
    return;
  }
  pthread_mutex_lock(&st->lock);
  s->active = 1;
  s->generation = generation;
  s->applied = applied;
  s->pending = -1;
  s->position = position;
  s->target = high;
  s->steady = 0;
  pthread_mutex_unlock(&st->lock);
  tly_log(TLY_LOG_INFO, "standby",
          "partition %d: standby copy from %s offset %lld (store at %lld%s)",
          (int)partition, p->changelog_topic, (long long)position,
          (long long)applied, position < high ? ", catching up" : ", current");
  if (position >= high)
    finish_catchup(st, partition, s);
}

/* Starts and stops copies as the gate and the processor's partitions say. */
static void refresh(struct tly_standby *st) {
  tly_processor_t *p = st->p;
  int64_t now = tly_monotonic_ms();
  for (int32_t i = 0; i < st->count && !atomic_load(&st->stop); i++) {
    pthread_mutex_lock(&p->lock);
    int owned = i < p->partition_cap &&
                (p->partitions[i].assigned || p->partitions[i].moving);
    pthread_mutex_unlock(&p->lock);
    standby_part_t *s = &st->parts[i];
    int chosen = !owned && !p->fatal &&
                 st->gate.chosen(st->gate.opaque, i, st->replicas);
    if (chosen)
      s->chosen_ms = now;
    if (chosen && !s->active && now >= s->retry_at_ms)
      start_part(st, i);
    else if (s->active && (owned || p->fatal))
      stop_part(st, i, "the partition is assigned here");
    else if (s->active && now - s->chosen_ms > STANDBY_LINGER_MS)
      stop_part(st, i, "no longer chosen");
  }
}

static void *standby_main(void *arg) {
  struct tly_standby *st = arg;
  int64_t next_refresh = 0;
  while (!atomic_load(&st->stop)) {
    if (tly_monotonic_ms() >= next_refresh) {
      refresh(st);
      next_refresh = tly_monotonic_ms() + STANDBY_REFRESH_MS;
    }
    for (int n = 0; n < 5000 && !atomic_load(&st->stop); n++) {
      rd_kafka_message_t *msg = rd_kafka_consumer_poll(st->reader, n ? 0 : 100);
      if (!msg)
        break;
      int32_t partition = msg->partition;
      standby_part_t *s = partition >= 0 && partition < st->count
                              ? &st->parts[partition]
                              : NULL;
      int rc = 0;
      if (!s || !s->active) {
        /* not ours (any more) */
      } else if (msg->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
        if (!s->steady && msg->offset >= s->target)
          rc = finish_catchup(st, partition, s);
      } else if (msg->err) {
        tly_log(TLY_LOG_WARN, "standby", "reading %s[%d]: %s",
                st->p->changelog_topic, (int)partition,
                rd_kafka_message_errstr(msg));
      } else if (msg->offset >= s->position) {
        s->position = msg->offset + 1;
        s->records++;
        atomic_fetch_add(&st->records, 1);
        rc = apply_record(st, partition, s, msg);
        if (!rc && !s->steady && s->position >= s->target)
          rc = finish_catchup(st, partition, s);
      }
      rd_kafka_message_destroy(msg);
      if (rc > 0)
        stop_part(st, partition, "the partition is assigned here");
      else if (rc < 0) {
        s->retry_at_ms = tly_monotonic_ms() + STANDBY_RETRY_MS;
        stop_part(st, partition, "an error");
      }
    }
  }
  return NULL;
}

/* ---- lifecycle and status -------------------------------------------- */

static rd_kafka_t *standby_reader(tly_processor_t *p, const char *group,
                                  char *errstr, size_t errstr_size) {
  char group_id[64];
  snprintf(group_id, sizeof(group_id), "group.id=%s", group);
  const char *defaults[] = {group_id,
                            "enable.auto.commit=false",
                            "enable.partition.eof=true",
                            "fetch.wait.max.ms=50",
                            "max.partition.fetch.bytes=1048576",
                            NULL};
  return tly_proc_reader_new(p, defaults, errstr, errstr_size);
}

int tly_processor_standby_start(tly_processor_t *p, size_t replicas,
                                const tly_standby_gate_t *gate, char *errstr,
                                size_t errstr_size) {
  if (!replicas || !p->changelog_topic || !gate || !gate->chosen)
    return 0;
  int32_t count = atomic_load(&p->partition_count);
  struct tly_standby *st = calloc(1, sizeof(*st));
  if (!st || count <= 0 ||
      !(st->parts = calloc((size_t)count, sizeof(*st->parts)))) {
    free(st);
    snprintf(errstr, errstr_size, "standby: out of memory");
    return -1;
  }
  st->p = p;
  st->gate = *gate;
  st->replicas = replicas;
  st->count = count;
  for (int32_t i = 0; i < count; i++)
    st->parts[i].applied = st->parts[i].pending = -1;
  pthread_mutex_init(&st->lock, NULL);
  st->reader = standby_reader(p, "tally-standby", errstr, errstr_size);
  st->probe =
      st->reader ? standby_reader(p, "tally-standby-probe", errstr, errstr_size)
                 : NULL;
  if (!st->probe || pthread_create(&st->thread, NULL, standby_main, st)) {
    if (st->probe)
      snprintf(errstr, errstr_size, "standby: cannot start the thread");
    if (st->reader)
      rd_kafka_destroy(st->reader);
    if (st->probe)
      rd_kafka_destroy(st->probe);
    pthread_mutex_destroy(&st->lock);
    free(st->parts);
    free(st);
    return -1;
  }
  pthread_mutex_lock(&p->standby_lock);
  p->standby = st;
  pthread_mutex_unlock(&p->standby_lock);
  tly_log(TLY_LOG_INFO, "standby",
          "standby replicas: %zu per partition (of %d), from %s", replicas,
          (int)count, p->changelog_topic);
  return 0;
}

void tly_processor_standby_stop(tly_processor_t *p) {
  /* Unset first (waiting for a reader inside), so that membership's
   * announcements and the HTTP port, which may still ask, find none
   * rather than what is freed below. */
  pthread_mutex_lock(&p->standby_lock);
  struct tly_standby *st = p->standby;
  p->standby = NULL;
  pthread_mutex_unlock(&p->standby_lock);
  if (!st)
    return;
  atomic_store(&st->stop, 1);
  pthread_join(st->thread, NULL);
  for (int32_t i = 0; i < st->count; i++)
    part_clear(&st->parts[i]);
  rd_kafka_consumer_close(st->reader);
  rd_kafka_destroy(st->reader);
  rd_kafka_consumer_close(st->probe);
  rd_kafka_destroy(st->probe);
  pthread_mutex_destroy(&st->lock);
  free(st->parts);
  free(st);
}

int tly_processor_standby_applied(tly_processor_t *p, int32_t partition) {
  pthread_mutex_lock(&p->standby_lock);
  struct tly_standby *st = p->standby;
  int applied = 0;
  if (st && partition >= 0 && partition < st->count) {
    pthread_mutex_lock(&st->lock);
    applied = st->parts[partition].active && st->parts[partition].steady &&
              st->parts[partition].applied >= 0;
    pthread_mutex_unlock(&st->lock);
  }
  pthread_mutex_unlock(&p->standby_lock);
  return applied;
}

size_t tly_processor_standbys(tly_processor_t *p, tly_standby_status_t *out,
                              size_t max, tly_standby_totals_t *totals) {
  size_t n = 0;
  if (totals)
    memset(totals, 0, sizeof(*totals));
  pthread_mutex_lock(&p->standby_lock);
  struct tly_standby *st = p->standby;
  if (!st) {
    pthread_mutex_unlock(&p->standby_lock);
    return 0;
  }
  if (totals) {
    totals->markers = atomic_load(&st->markers);
    totals->catchups = atomic_load(&st->catchups);
    totals->records = atomic_load(&st->records);
  }
  pthread_mutex_lock(&st->lock);
  for (int32_t i = 0; i < st->count; i++) {
    const standby_part_t *s = &st->parts[i];
    if (!s->active)
      continue;
    if (n < max)
      out[n] = (tly_standby_status_t){
          .partition = i, .offset = s->applied, .caught_up = s->steady};
    n++;
  }
  pthread_mutex_unlock(&st->lock);
  pthread_mutex_unlock(&p->standby_lock);
  return n;
}

int tly_proc_standby_promoted(tly_processor_t *p, int32_t partition,
                              int restored) {
  char key[16], errstr[512];
  size_t len = meta_key(META_STANDBY, sizeof(META_STANDBY) - 1, partition, key);
  char *value = NULL;
  size_t value_len = 0;
  int found = tly_store_get(p->store, TLY_CF_META, key, len, &value, &value_len,
                            errstr, sizeof(errstr));
  tly_store_free(value);
  if (found <= 0) {
    if (found < 0)
      tly_proc_set_fatal(p, "partition %d: reading the standby mark: %s",
                         (int)partition, errstr);
    return found < 0 ? -1 : 0;
  }
  if (!restored && tly_changelog_rebuild_indexes(p->store, partition, errstr,
                                                 sizeof(errstr))) {
    tly_proc_set_fatal(p, "partition %d: rebuilding its indexes: %s",
                       (int)partition, errstr);
    return -1;
  }
  tly_store_batch_t *batch = tly_store_batch_new();
  if (!batch) {
    tly_proc_set_fatal(p, "out of memory");
    return -1;
  }
  tly_store_batch_delete(batch, TLY_CF_META, key, len);
  int rc = tly_store_commit(p->store, batch, 0, errstr, sizeof(errstr));
  tly_store_batch_destroy(batch);
  if (rc) {
    tly_proc_set_fatal(p, "partition %d: %s", (int)partition, errstr);
    return -1;
  }
  if (!restored)
    tly_log(TLY_LOG_INFO, "standby",
            "partition %d: assigned here with a standby copy: resuming from "
            "it (indexes rebuilt), no restore",
            (int)partition);
  return 0;
}
