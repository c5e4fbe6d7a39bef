/*
 * tly_memory.c - the memory budget's parts (tly_processor.h,
 * tly_memory_part_t): their shares, and the processor's check after each
 * commit of the parts it does not keep counted as they change.
 *
 * The dedupe indexes are counted as they change and spill within their
 * share (tly_dedupe_spill.c). The overlay (subject records) and the
 * outbox are counted here, by a walk, at most once a second: an overlay
 * past its share keeps only the open batch's entries (the rest is a cache
 * of what RocksDB holds), as it does past CACHE_MAX_ENTRIES. The outbox is
 * only reported: an entry leaves once Kafka has it, never earlier. It
 * never writes state.
 */
#include "tly_processor_internal.h"

#include "tly_log.h"

int64_t tly_memory_share(int64_t budget, tly_memory_part_t part) {
  switch (part) {
  case TLY_MEMORY_DEDUPE:
    return budget / 2;
  case TLY_MEMORY_OVERLAY:
    return budget / 10 * 3;
  case TLY_MEMORY_OUTBOX:
  case TLY_MEMORY_SUBJECT_CACHE:
    return budget / 10;
  default:
    return 0;
  }
}

const char *tly_memory_part_name(tly_memory_part_t part) {
  static const char *const names[TLY_MEMORY_PARTS] = {
      "dedupe", "overlay", "outbox", "subject_cache"};
  return part >= 0 && part < TLY_MEMORY_PARTS ? names[part] : "";
}

static int entry_is_dirty(tly_overlay_entry_t *entry) { return entry->dirty; }

void tly_proc_memory_check(tly_processor_t *p) {
  int64_t now = tly_monotonic_ms();
  if (now - p->memory_checked_ms < 1000)
    return;
  p->memory_checked_ms = now;
  size_t overlay = tly_overlay_bytes(&p->overlay);
  if (overlay >
      (size_t)tly_memory_share(p->memory_budget, TLY_MEMORY_OVERLAY)) {
    tly_overlay_keep(&p->overlay, entry_is_dirty);
    p->last_entry = NULL;
    overlay = tly_overlay_bytes(&p->overlay);
  }
  atomic_store(&p->overlay_bytes, overlay);
  size_t outbox = p->outbox_cap * sizeof(*p->outbox);
  for (size_t i = 0; i < p->outbox_count; i++)
    outbox += p->outbox[i].record_len;
  atomic_store(&p->outbox_bytes, outbox);
}
