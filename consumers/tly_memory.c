/*
 * tly_memory.c - the memory budget's parts (tly_processor.h,
 * tly_memory_part_t): their shares, and the processor's check after each
 * commit of the parts it does not keep counted as they change.
 *
 * The dedupe indexes are counted as they change and spill within their
 * share (tly_dedupe_spill.c). The overlay (subject records) is counted
 * as entries are loaded and written (tly_overlay_account), and kept within
 * its share, what the dedupe indexes leave of theirs (tly_memory_lent) and
 * CACHE_MAX_ENTRIES after every commit: the clock evicts
 * entries not found since its last pass, never the open batch's (the rest
 * is a cache of what RocksDB holds). The outbox is counted as outputs come
 * and go (tly_proc_outbox_held_bytes); an entry leaves once Kafka has it,
 * never earlier, so the outbox is held to its bound by making records
 * wait before the fold (tly_gate.c). It never writes state.
 *
 * The parts outside tally's own structures are sized here and held by
 * their owners: RocksDB's block cache and memtables (the store is opened
 * with them, cli_serve.c; usage read back in tly_processor_stats) and
 * librdkafka's queues (tly_memory_kafka_properties, applied to every
 * client the processor and the HTTP port's ingest open, before the user's
 * properties so that -X wins).
 */
#include "tly_processor_internal.h"

#include "tly_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int64_t tly_memory_share(int64_t budget, tly_memory_part_t part) {
  /* Fortieths: 6 + 5 + 2 + 4 + 3 + 3 + 2 + 1 + 14 = 40. The dedupe
   * indexes had 20 until the headroom took 14 of them: at 20 M ids the
   * process's resident set was ~1.3 GiB at a 1 GiB budget, and with the
   * store's open files no longer capped at 256 a smaller share spills
   * without slowing the fold (README, "Headroom"). */
  static const int64_t fortieths[TLY_MEMORY_PARTS] = {
      [TLY_MEMORY_DEDUPE] = 6,
      [TLY_MEMORY_OVERLAY] = 5,
      [TLY_MEMORY_OUTBOX] = 2,
      [TLY_MEMORY_SUBJECT_CACHE] = 4,
      [TLY_MEMORY_ROCKSDB_BLOCK_CACHE] = 3,
      [TLY_MEMORY_ROCKSDB_MEMTABLES] = 3,
      [TLY_MEMORY_KAFKA_CONSUMER] = 2,
      [TLY_MEMORY_KAFKA_PRODUCER] = 1,
      [TLY_MEMORY_HEADROOM] = 14};
  if (budget <= 0 || part < 0 || part >= TLY_MEMORY_PARTS)
    return 0;
  return budget / 40 * fortieths[part];
}

int64_t tly_memory_floor(tly_memory_part_t part) {
  switch (part) {
  case TLY_MEMORY_ROCKSDB_BLOCK_CACHE:
    return (int64_t)TLY_STORE_BLOCK_CACHE_MIN; /* 1 MiB */
  case TLY_MEMORY_ROCKSDB_MEMTABLES:
    return (int64_t)TLY_STORE_MEMTABLES_MIN; /* 2 MiB */
  case TLY_MEMORY_KAFKA_CONSUMER:
    /* 16 MiB queued + fetch.max.bytes of 16 MiB. librdkafka 2.0.2 stops
     * fetching while its queue is past queued.max.messages.kbytes and comes
     * back to it only some time later (not when the queue drains), so the
     * queue caps the fold rate: bench_fold's dedupe-scale run at 2 M ids
     * folded 41,000 events/s with a 1.3 MiB queue, ~250,000 with 64 MiB. */
    return 32LL << 20;
  case TLY_MEMORY_OUTBOX:
    /* Room for a record of message.max.bytes and a small batch's outputs,
     * so that a small budget does not hold the fold at every batch's
     * dead letters (tly_gate.c). */
    return 4LL << 20;
  case TLY_MEMORY_KAFKA_PRODUCER:
    /* 1 MiB for each of the two producers: a queue must hold a record of
     * message.max.bytes, or producing it fails forever as "queue full". */
    return 2LL << 20;
  default:
    return 0;
  }
}

int64_t tly_memory_bound(int64_t budget, tly_memory_part_t part) {
  int64_t share = tly_memory_share(budget, part);
  int64_t floor = tly_memory_floor(part);
  return share > floor ? share : floor;
}

tly_store_memory_t tly_memory_store_sizes(int64_t budget) {
  if (budget <= 0)
    budget = TLY_DEFAULT_MEMORY_BUDGET;
  return (tly_store_memory_t){.block_cache_bytes = (size_t)tly_memory_bound(
                                  budget, TLY_MEMORY_ROCKSDB_BLOCK_CACHE),
                              .memtables_bytes = (size_t)tly_memory_bound(
                                  budget, TLY_MEMORY_ROCKSDB_MEMTABLES)};
}

int tly_memory_batch_events(int64_t budget) {
  int64_t events = tly_memory_bound(budget, TLY_MEMORY_ROCKSDB_MEMTABLES) / 4 *
                   3 / TLY_MEMORY_COMMIT_BYTES_PER_EVENT;
  return events > TLY_DEFAULT_BATCH_EVENTS      ? TLY_DEFAULT_BATCH_EVENTS
         : events < TLY_MEMORY_BATCH_EVENTS_MIN ? TLY_MEMORY_BATCH_EVENTS_MIN
                                                : (int)events;
}

int tly_memory_part_measured(tly_memory_part_t part) {
  return part != TLY_MEMORY_KAFKA_CONSUMER && part != TLY_MEMORY_KAFKA_PRODUCER;
}

uint64_t tly_memory_headroom_bytes(uint64_t resident,
                                   const uint64_t bytes[TLY_MEMORY_PARTS]) {
  uint64_t counted = 0;
  for (int i = 0; i < TLY_MEMORY_PARTS; i++)
    if (i != TLY_MEMORY_HEADROOM && tly_memory_part_measured(i))
      counted += bytes[i];
  return resident > counted ? resident - counted : 0;
}

const char *tly_memory_part_name(tly_memory_part_t part) {
  static const char *const names[TLY_MEMORY_PARTS] = {"dedupe",
                                                      "overlay",
                                                      "outbox",
                                                      "subject_cache",
                                                      "rocksdb_block_cache",
                                                      "rocksdb_memtables",
                                                      "kafka_consumer",
                                                      "kafka_producer",
                                                      "headroom"};
  return part >= 0 && part < TLY_MEMORY_PARTS ? names[part] : "";
}

/* The value of name in the NULL-terminated "name=value" list, or NULL. */
static const char *user_value(const char *const *user, const char *name) {
  size_t len = strlen(name);
  const char *found = NULL;
  for (size_t i = 0; user && user[i]; i++)
    if (!strncmp(user[i], name, len) && user[i][len] == '=')
      found = user[i] + len + 1; /* the later entry wins */
  return found;
}

void tly_memory_kafka_properties(
    int64_t budget, int consumer, const char *const *user,
    char out[TLY_MEMORY_KAFKA_PROPERTIES][TLY_MEMORY_KAFKA_PROPERTY_MAX],
    const char *list[TLY_MEMORY_KAFKA_PROPERTIES + 1]) {
  size_t n = 0;
  /* librdkafka's default message.max.bytes, or the user's if larger: a
   * consumer's fetch.max.bytes must be at least that (librdkafka refuses
   * less), and a producer's queue must hold one such record. */
  int64_t message_max = 1000000;
  const char *message = user_value(user, "message.max.bytes");
  if (message && atoll(message) > message_max)
    message_max = atoll(message);
  if (consumer) {
    int64_t part = tly_memory_bound(budget, TLY_MEMORY_KAFKA_CONSUMER);
    int64_t fetch = part / 2;
    if (fetch < message_max)
      fetch = message_max;
    if (!user_value(user, "queued.max.messages.kbytes"))
      snprintf(out[n++], TLY_MEMORY_KAFKA_PROPERTY_MAX,
               "queued.max.messages.kbytes=%lld", (long long)(part / 2 / 1024));
    if (!user_value(user, "fetch.max.bytes"))
      snprintf(out[n++], TLY_MEMORY_KAFKA_PROPERTY_MAX, "fetch.max.bytes=%lld",
               (long long)fetch);
    if (!user_value(user, "max.partition.fetch.bytes"))
      snprintf(out[n++], TLY_MEMORY_KAFKA_PROPERTY_MAX,
               "max.partition.fetch.bytes=%lld", (long long)(part / 32));
  } else {
    int64_t kbytes =
        tly_memory_bound(budget, TLY_MEMORY_KAFKA_PRODUCER) / 2 / 1024;
    if (kbytes * 1024 < message_max)
      kbytes = (message_max + 1023) / 1024;
    if (!user_value(user, "queue.buffering.max.kbytes"))
      snprintf(out[n++], TLY_MEMORY_KAFKA_PROPERTY_MAX,
               "queue.buffering.max.kbytes=%lld", (long long)kbytes);
  }
  for (size_t i = 0; i < n; i++)
    list[i] = out[i];
  list[n] = NULL;
}

int64_t tly_processor_memory_budget(const tly_processor_t *p) {
  return p->memory_budget;
}

/* Accounts and rows stay in the overlay across batches as a write-through
 * cache of committed state (it saves a RocksDB read per touched key), up
 * to this many entries and the overlay's share of the budget. */
#define CACHE_MAX_ENTRIES 1000000

static int entry_is_dirty(tly_overlay_entry_t *entry) { return entry->dirty; }

int64_t tly_memory_lent(int64_t budget, int64_t dedupe_held) {
  int64_t share = tly_memory_share(budget, TLY_MEMORY_DEDUPE);
  return dedupe_held < share ? share - (dedupe_held > 0 ? dedupe_held : 0) : 0;
}

void tly_proc_memory_check(tly_processor_t *p) {
  /* A cache of subjects is worth more than memory kept free for ids not
   * yet seen: the overlay may use what the dedupe share holds no ids in
   * (counted at the last submit). */
  int64_t lent = tly_memory_lent(
      p->memory_budget,
      (int64_t)(atomic_load(&p->dedupe_bytes) + p->dedupe_headroom));
  atomic_store(&p->overlay_lent, (uint64_t)lent);
  size_t share =
      (size_t)tly_memory_share(p->memory_budget, TLY_MEMORY_OVERLAY) +
      (size_t)lent;
  if ((tly_overlay_bytes(&p->overlay) > share ||
       p->overlay.count > CACHE_MAX_ENTRIES) &&
      tly_overlay_evict(&p->overlay, share, CACHE_MAX_ENTRIES, entry_is_dirty))
    p->last_entry = NULL;
  atomic_store(&p->overlay_bytes, tly_overlay_bytes(&p->overlay));
  atomic_store(&p->outbox_bytes, tly_proc_outbox_held_bytes(p));
}
