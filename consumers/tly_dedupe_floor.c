/*
 * tly_dedupe_floor.c - the dedupe floor of a partition: the oldest event
 * time from which every folded id is still known (tly_billing.h,
 * dedupe_floor_ms), so that raising the dedupe window never lets a
 * duplicate of an id the smaller window already let go count twice.
 *
 * Stored as one record in the dedupe family (and its changelog, so a
 * restore from it gets it too), under the partition's blob key
 * TLY_DEDUPE_FLOOR_KEY: [INT64_MAX BE8: never expires][floor BE8][window
 * the partition runs with BE8]. A window is constant while a process runs,
 * so the floor only moves at assignment:
 *   - no record, no watermark: a new partition, no floor;
 *   - no record, a watermark: state of a build before the window was
 *     configurable, which kept 7 days: floor = watermark - 7 days;
 *   - a record of a smaller window than now: ids older than watermark -
 *     that window may be gone: floor = max(floor, watermark - it);
 *   - otherwise the floor stays.
 * The record is rewritten (with the next commit that folds a record of
 * the partition) when the floor or the window changed. It never decides a
 * duplicate: the fold dead-letters events older than the floor, as it does
 * events older than the window.
 */
#include "tly_processor_internal.h"

#include "tly_changelog.h"

int tly_proc_dedupe_floor_parse(const char *value, size_t len,
                                int64_t *floor_ms, int64_t *window_ms) {
  const unsigned char *bytes = (const unsigned char *)value;
  if (len < TLY_DEDUPE_FLOOR_LEN)
    return -1;
  *floor_ms = (int64_t)tly_get_be64(bytes + 8);
  *window_ms = (int64_t)tly_get_be64(bytes + 16);
  return *window_ms > 0 ? 0 : -1;
}

int64_t tly_proc_dedupe_floor_at_assignment(const tly_processor_t *p, int found,
                                            int64_t floor_ms, int64_t window_ms,
                                            int64_t watermark, int *dirty) {
  int64_t window = p->billing.dedupe_window_ms;
  if (!found) {
    floor_ms = INT64_MIN;
    window_ms = watermark == INT64_MIN ? window : TLY_LEGACY_DEDUPE_WINDOW_MS;
  }
  int64_t floor = floor_ms;
  if (window_ms < window && watermark > INT64_MIN + window_ms &&
      watermark - window_ms > floor)
    floor = watermark - window_ms;
  *dirty = !found || floor != floor_ms || window_ms != window;
  return floor;
}

void tly_proc_dedupe_floor_put(tly_processor_t *p, int32_t partition) {
  partition_state_t *part = &p->partitions[partition];
  unsigned char key[12], value[TLY_DEDUPE_FLOOR_LEN];
  tly_put_be32(key, (uint32_t)partition);
  tly_put_be64(key + 4, (uint64_t)TLY_DEDUPE_FLOOR_KEY);
  tly_put_be64(value, (uint64_t)INT64_MAX);
  tly_put_be64(value + 8, (uint64_t)part->dedupe_floor);
  tly_put_be64(value + 16, (uint64_t)p->billing.dedupe_window_ms);
  tly_store_batch_put(p->batch, TLY_CF_DEDUPE, key, sizeof(key), value,
                      sizeof(value));
  if (p->changelog_topic)
    tly_changelog_bundle_add(&p->bundle, partition, TLY_CHANGELOG_DEDUPE, key,
                             sizeof(key), value, sizeof(value));
  part->floor_dirty = 0;
}
