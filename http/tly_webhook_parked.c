/*
 * tly_webhook_parked.c - a webhook endpoint's parked alerts and progress
 * per partition (see tly_webhook_parked.h). Pure.
 */
#include "tly_webhook_parked.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

tly_webhook_progress_t *tly_webhook_progress(tly_webhook_parked_set_t *set,
                                             int32_t partition) {
  for (size_t i = 0; i < set->part_count; i++)
    if (set->parts[i].partition == partition)
      return &set->parts[i];
  if (set->part_count == set->part_cap) {
    size_t cap = set->part_cap ? set->part_cap * 2 : 8;
    tly_webhook_progress_t *grown =
        realloc(set->parts, cap * sizeof(*set->parts));
    if (!grown)
      return NULL;
    set->parts = grown;
    set->part_cap = cap;
  }
  tly_webhook_progress_t *p = &set->parts[set->part_count++];
  memset(p, 0, sizeof(*p));
  p->partition = partition;
  p->next_offset = -1;
  p->committed = -1;
  return p;
}

static const tly_webhook_progress_t *
find_progress(const tly_webhook_parked_set_t *set, int32_t partition) {
  for (size_t i = 0; i < set->part_count; i++)
    if (set->parts[i].partition == partition)
      return &set->parts[i];
  return NULL;
}

int tly_webhook_taken(tly_webhook_parked_set_t *set, int32_t partition,
                      int64_t offset) {
  tly_webhook_progress_t *p = tly_webhook_progress(set, partition);
  if (!p)
    return -1;
  if (offset + 1 > p->next_offset)
    p->next_offset = offset + 1;
  return 0;
}

int tly_webhook_park(tly_webhook_parked_set_t *set,
                     const tly_webhook_parked_t *item) {
  if (set->count >= TLY_WEBHOOK_PARKED_MAX)
    return -1;
  set->items[set->count++] = *item;
  return 0;
}

void tly_webhook_unpark(tly_webhook_parked_set_t *set, size_t index) {
  if (index >= set->count)
    return;
  tly_webhook_parked_t *item = &set->items[index];
  free(item->id);
  free(item->body);
  free(item->key);
  /* Keeps the order (oldest first within a partition). */
  memmove(item, item + 1, (set->count - index - 1) * sizeof(*item));
  set->count--;
}

int64_t tly_webhook_commit_offset(const tly_webhook_parked_set_t *set,
                                  int32_t partition) {
  const tly_webhook_progress_t *p = find_progress(set, partition);
  if (!p || p->next_offset < 0)
    return -1;
  int64_t offset = p->next_offset;
  for (size_t i = 0; i < set->count; i++)
    if (set->items[i].partition == partition && set->items[i].offset < offset)
      offset = set->items[i].offset;
  return offset;
}

size_t tly_webhook_metadata(const tly_webhook_parked_set_t *set,
                            int32_t partition, char *out, size_t size) {
  size_t len = (size_t)snprintf(out, size, "wh1");
  size_t pairs = 0;
  /* items are in the order they were parked: per partition, by offset. */
  for (size_t i = 0; i < set->count && pairs < TLY_WEBHOOK_HINTS_MAX; i++) {
    const tly_webhook_parked_t *item = &set->items[i];
    if (item->partition != partition)
      continue;
    int n = snprintf(out + len, size - len, " %" PRId64 ":%" PRId64,
                     item->offset, item->first_ms);
    if (n < 0 || (size_t)n >= size - len)
      break;
    len += (size_t)n;
    pairs++;
  }
  return len;
}

int tly_webhook_load_hints(tly_webhook_parked_set_t *set, int32_t partition,
                           const char *metadata, size_t len) {
  tly_webhook_progress_t *p = tly_webhook_progress(set, partition);
  if (!p)
    return -1;
  p->hint_count = 0;
  char text[TLY_WEBHOOK_METADATA_MAX];
  if (!metadata || len < 3 || len >= sizeof(text))
    return 0;
  memcpy(text, metadata, len);
  text[len] = '\0';
  if (strncmp(text, "wh1", 3) != 0)
    return 0;
  const char *at = text + 3;
  while (*at == ' ' && p->hint_count < TLY_WEBHOOK_HINTS_MAX) {
    char *end;
    long long offset = strtoll(at + 1, &end, 10);
    if (end == at + 1 || *end != ':')
      break;
    const char *ms_at = end + 1;
    long long first = strtoll(ms_at, &end, 10);
    if (end == ms_at || (*end && *end != ' ') || offset < 0 || first < 0)
      break;
    p->hint_offsets[p->hint_count] = offset;
    p->hint_first_ms[p->hint_count] = first;
    p->hint_count++;
    at = end;
  }
  return 0;
}

int64_t tly_webhook_hint(const tly_webhook_parked_set_t *set, int32_t partition,
                         int64_t offset) {
  const tly_webhook_progress_t *p = find_progress(set, partition);
  for (size_t i = 0; p && i < p->hint_count; i++)
    if (p->hint_offsets[i] == offset)
      return p->hint_first_ms[i];
  return -1;
}

void tly_webhook_drop_partition(tly_webhook_parked_set_t *set,
                                int32_t partition) {
  for (size_t i = set->count; i-- > 0;)
    if (set->items[i].partition == partition)
      tly_webhook_unpark(set, i);
  for (size_t i = 0; i < set->part_count; i++)
    if (set->parts[i].partition == partition) {
      set->parts[i] = set->parts[--set->part_count];
      break;
    }
}

int64_t tly_webhook_next_due(const tly_webhook_parked_set_t *set) {
  int64_t due = INT64_MAX;
  for (size_t i = 0; i < set->count; i++)
    if (set->items[i].next_ms < due)
      due = set->items[i].next_ms;
  return due;
}

void tly_webhook_parked_clear(tly_webhook_parked_set_t *set) {
  while (set->count)
    tly_webhook_unpark(set, set->count - 1);
  free(set->parts);
  set->parts = NULL;
  set->part_count = set->part_cap = 0;
}

uint64_t tly_webhook_digest(const char *text, size_t len) {
  uint64_t hash = 14695981039346656037ull;
  for (size_t i = 0; i < len; i++) {
    hash ^= (unsigned char)text[i];
    hash *= 1099511628211ull;
  }
  return hash;
}
