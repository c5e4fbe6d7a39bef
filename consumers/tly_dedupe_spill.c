/*
 * tly_dedupe_spill.c - the dedupe indexes within their share of the memory
 * budget (tly_dedupe.h, "Spilling").
 *
 * At each batch submit, while the partitions' indexes hold more than the
 * share less the room kept for the next batch's ids (twice the larger of
 * what the batch just sealed and the one before it hold, at most a quarter
 * of the share: so they stay within the share between commits too), the oldest
 * sealed blob of the partition holding the most is spilled into the open batch:
 * each id not yet expired under its own key in dedupe_ids ([p][id] ->
 * [occurred_at BE8]) and the blob replaced by its stub, atomically with the
 * batch's state and offsets. The blobs leave memory once that batch is durable
 * (tly_proc_dedupe_release, from tly_proc_batch_wait). At assignment, a
 * partition whose blobs not yet spilled hold more than what is left of the
 * share spills at once, by a commit of its own (tly_proc_dedupe_fit): those are
 * stored facts written in another form, so it changes no state.
 *
 * It never decides whether an event is a duplicate (tly_fold_view.c does,
 * memory first, then the store) and writes nothing to the changelog: a
 * restore from it gets the whole blobs and spills them again here.
 */
#include "tly_processor_internal.h"

#include "tly_keys.h"

#include <string.h>

/* An id's slots and blob record, as tly_dedupe.h counts them: what a
 * spilled blob gives back, estimated before it is released. */
#define ID_TABLE_BYTES 11

/* Puts the blob's ids (those still in the window) and its stub into
 * batch. Returns the ids written. */
static size_t spill_into(tly_store_batch_t *batch, int32_t partition,
                         tly_dedupe_filter_t *filter, const void *blob,
                         size_t len, int64_t key, int64_t horizon) {
  char id_key[TLY_KEY_MAX];
  unsigned char value[8], stub[TLY_DEDUPE_BLOB_HEADER];
  size_t pos = 0, id_len, written = 0;
  const char *id;
  int64_t at;
  while (tly_dedupe_blob_next(blob, len, &pos, &id, &id_len, &at)) {
    size_t key_len =
        tly_key_dedupe_id(partition, id, id_len, id_key, sizeof(id_key));
    if (at < horizon || !key_len) /* expired; an id longer than a key: */
      continue; /* never recorded (TLY_EVENT_ID_MAX is far below) */
    tly_put_be64(value, (uint64_t)at);
    tly_store_batch_put(batch, TLY_CF_DEDUPE_IDS, id_key, key_len, value,
                        sizeof(value));
    if (filter) /* out of memory: it answers "look it up" for all */
      tly_dedupe_filter_add(filter, id, id_len, at);
    written++;
  }
  /* A filter saved at a revoke no longer holds every spilled id. */
  tly_proc_filter_forget(batch, partition);
  unsigned char blob_key[12];
  tly_put_be32(blob_key, (uint32_t)partition);
  tly_put_be64(blob_key + 4, (uint64_t)key);
  memcpy(stub, blob, 8); /* its newest time: it expires as the blob did */
  tly_put_be32(stub + 8, 0);
  tly_store_batch_put(batch, TLY_CF_DEDUPE, blob_key, sizeof(blob_key), stub,
                      sizeof(stub));
  return written;
}

static int64_t horizon_of(const tly_processor_t *p,
                          const partition_state_t *part) {
  return part->watermark > INT64_MIN + p->billing.dedupe_window_ms
             ? part->watermark - p->billing.dedupe_window_ms
             : INT64_MIN;
}

/* Blob bytes (header excluded) and ids a blob frees, estimated. */
size_t tly_proc_dedupe_blob_weight(const void *blob, size_t len) {
  uint32_t count = tly_get_be32((const unsigned char *)blob + 8);
  return len + (size_t)count * ID_TABLE_BYTES;
}

size_t tly_proc_dedupe_part_bytes(const partition_state_t *part) {
  return (part->dedupe ? tly_dedupe_bytes(part->dedupe) : 0) +
         (part->filter ? tly_dedupe_filter_bytes(part->filter) : 0);
}

void tly_proc_dedupe_count(tly_processor_t *p) {
  size_t total = 0;
  for (int32_t i = 0; i < p->partition_cap; i++)
    total += tly_proc_dedupe_part_bytes(&p->partitions[i]);
  atomic_store(&p->dedupe_bytes, total);
}

/* The spilled-id filters within half of the dedupe share: past it, the
 * largest are dropped (their partitions' misses read RocksDB again, as
 * without a filter: still exact), so a small budget's memory goes to the
 * recent ids rather than to filters of old ones. Half, not a quarter, since
 * the share went from 20/40 to 6/40 of the budget (tly_memory.c): a
 * quarter of it at 1 GiB (38 MiB) dropped filters at 20 M spilled ids, and
 * bench_fold's 20 M-id run read RocksDB for 380,000 ids of 2 M instead of
 * ~27,000. Returns what is left. */
static size_t fit_filters(tly_processor_t *p) {
  size_t total = 0;
  for (int32_t i = 0; i < p->partition_cap; i++)
    if (p->partitions[i].filter)
      total += tly_dedupe_filter_bytes(p->partitions[i].filter);
  while (total > p->dedupe_share / 2) {
    partition_state_t *largest = NULL;
    for (int32_t i = 0; i < p->partition_cap; i++)
      if (p->partitions[i].filter &&
          (!largest || tly_dedupe_filter_bytes(p->partitions[i].filter) >
                           tly_dedupe_filter_bytes(largest->filter)))
        largest = &p->partitions[i];
    if (!largest)
      break;
    total -= tly_dedupe_filter_bytes(largest->filter);
    tly_dedupe_filter_free(largest->filter);
    largest->filter = NULL;
    atomic_fetch_add(&p->filters_dropped, 1);
  }
  return total;
}

int tly_proc_dedupe_spill(tly_processor_t *p, size_t sealed) {
  /* Room for the next batch's ids, taken to be at most twice the larger
   * of this batch's and the last one's (and at most a quarter of the
   * share): spilled down to the share less that, the indexes stay within
   * the share while the next batch is folded too, not only at commits. */
  size_t recent = sealed > p->dedupe_sealed ? sealed : p->dedupe_sealed;
  p->dedupe_sealed = sealed;
  size_t headroom =
      recent < p->dedupe_share / 8 ? 2 * recent : p->dedupe_share / 4;
  size_t target = p->dedupe_share - headroom;
  p->dedupe_headroom = headroom;
  size_t total = fit_filters(p);
  for (int32_t i = 0; i < p->partition_cap; i++)
    if (p->partitions[i].dedupe)
      total += tly_dedupe_bytes(p->partitions[i].dedupe);
  atomic_store(&p->dedupe_bytes, total);
  if (total <= target)
    return 0;
  /* What each partition would hold once the blobs chosen so far leave. */
  size_t *left = malloc(sizeof(*left) * (size_t)p->partition_cap);
  if (!left) {
    tly_proc_set_fatal(p, "out of memory spilling event ids");
    return -1;
  }
  for (int32_t i = 0; i < p->partition_cap; i++)
    left[i] =
        p->partitions[i].dedupe ? tly_dedupe_bytes(p->partitions[i].dedupe) : 0;
  while (total > target) {
    int32_t largest = -1;
    for (int32_t i = 0; i < p->partition_cap; i++)
      if (left[i] && (largest < 0 || left[i] > left[largest]))
        largest = i;
    if (largest < 0)
      break;
    partition_state_t *part = &p->partitions[largest];
    size_t len = 0;
    int64_t key = 0;
    const void *blob = tly_dedupe_spill_next(part->dedupe, &len, &key);
    if (!blob) {
      left[largest] = 0; /* nothing sealed left to spill there */
      continue;
    }
    if (!part->filter && !part->spilled) /* the first spill: all it holds */
      part->filter = tly_dedupe_filter_new();
    size_t freed = tly_proc_dedupe_blob_weight(blob, len);
    uint64_t ids = spill_into(p->batch, largest, part->filter, blob, len, key,
                              horizon_of(p, part));
    atomic_fetch_add(&p->ids_spilled, ids);
    part->spilled = 1;
    left[largest] -= freed < left[largest] ? freed : left[largest];
    total -= freed < total ? freed : total;
  }
  free(left);
  return 0;
}

void tly_proc_dedupe_release(tly_processor_t *p) {
  for (int32_t i = 0; i < p->partition_cap; i++)
    if (p->partitions[i].dedupe)
      tly_dedupe_release_spilled(p->partitions[i].dedupe);
  tly_proc_dedupe_count(p);
}

int tly_proc_dedupe_fit(tly_processor_t *p, int32_t partition,
                        tly_dedupe_t *dedupe, size_t limit,
                        tly_dedupe_filter_t *filter) {
  char errstr[512];
  if (tly_dedupe_bytes(dedupe) <= limit)
    return 0;
  tly_store_batch_t *batch = tly_store_batch_new();
  if (!batch) {
    tly_proc_set_fatal(p, "out of memory spilling event ids");
    return -1;
  }
  const partition_state_t *part = &p->partitions[partition];
  size_t bytes = tly_dedupe_bytes(dedupe), len = 0;
  int64_t key = 0;
  const void *blob;
  while (bytes > limit &&
         (blob = tly_dedupe_spill_next(dedupe, &len, &key)) != NULL) {
    size_t freed = tly_proc_dedupe_blob_weight(blob, len);
    /* At assignment: into the saved filter taken, if any; without one,
     * the filter is built from the store afterwards. */
    atomic_fetch_add(&p->ids_spilled,
                     spill_into(batch, partition, filter, blob, len, key,
                                horizon_of(p, part)));
    bytes -= freed < bytes ? freed : bytes;
  }
  /* Not synced: the blobs stay as they were until this write is in the
   * WAL, and the next synced commit makes it durable with it. */
  int rc = tly_store_commit(p->store, batch, 0, errstr, sizeof(errstr));
  tly_store_batch_destroy(batch);
  if (rc) {
    tly_proc_set_fatal(p, "partition %d: spilling event ids: %s",
                       (int)partition, errstr);
    return -1;
  }
  tly_dedupe_release_spilled(dedupe);
  return 0;
}
