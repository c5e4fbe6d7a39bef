/*
 * tly_stripe_emitter_work.c - what a pass of the Stripe usage emitter
 * (tly_stripe_emitter.h) works on, read from the store: the partition's
 * report marks in key order, the subjects they name with the windows of
 * the marked hours, each subject's record and a slot per (meter, window)
 * with its folded total; and the oldest mark still waiting. Reads only:
 * cursors are written, and marks deleted, by tly_stripe_emitter.c.
 */
#include "tly_stripe_emitter_internal.h"

#include "tly_keys.h"
#include "tly_log.h"
#include "tly_sat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MARKS_PER_PASS 256

/* ---- reading state ------------------------------------------------------ */

/* Adds the quantities of the meter's features in buckets (of hour). */
static int64_t meter_quantity(const meter_t *meter,
                              const tly_subject_bucket_t *buckets, size_t count,
                              int32_t hour) {
  int64_t sum = 0;
  for (size_t i = 0; i < count; i++)
    for (size_t f = 0; f < meter->feature_count; f++)
      if (buckets[i].hour == hour &&
          strcmp(buckets[i].feature, meter->features[f]) == 0)
        sum = tly_add_saturating(sum, buckets[i].totals.quantity);
  return sum;
}

/* The folded total of the meter in the window: the subject record holds
 * its newest hour, older hours have keys of their own. Read one after the
 * other, not from one snapshot: an hour read later can only have grown,
 * and any growth after the mark comes with a mark of its own. 0, or -1
 * with errstr. */
static int window_total(tly_stripe_emitter_t *e, const subject_t *subject,
                        const meter_t *meter, int64_t window_start_ms,
                        int64_t *total, char *errstr, size_t errstr_size) {
  const tly_subject_record_t *record = &subject->record;
  int32_t newest = record->bucket_count ? record->buckets[0].hour : INT32_MIN;
  int32_t first = (int32_t)(window_start_ms / TLY_HOUR_MS);
  int32_t hours = (int32_t)(e->window_ms / TLY_HOUR_MS);
  char key[TLY_KEY_MAX];
  size_t prefix =
      tly_key_history(subject->partition, subject->kind, subject->id,
                      TLY_HISTORY_HOUR, key, sizeof(key) - 4);
  if (!prefix) {
    snprintf(errstr, errstr_size, "subject id too long");
    return -1;
  }
  *total = 0;
  for (int32_t hour = first; hour < first + hours; hour++) {
    if (hour == newest) {
      *total = tly_add_saturating(
          *total,
          meter_quantity(meter, record->buckets, record->bucket_count, hour));
      continue;
    }
    char *value = NULL;
    size_t value_len = 0;
    tly_put_be32((unsigned char *)key + prefix, (uint32_t)hour);
    int found = tly_store_get(e->conf.store, TLY_CF_USAGE, key, prefix + 4,
                              &value, &value_len, errstr, errstr_size);
    if (found < 0)
      return -1;
    if (!found)
      continue;
    tly_subject_bucket_t *buckets = NULL;
    size_t count = 0;
    int bad = value_len < 8 || tly_bucket_decode(value + 8, value_len - 8, hour,
                                                 &buckets, &count);
    tly_store_free(value);
    if (bad) {
      snprintf(errstr, errstr_size, "stored usage history is corrupt");
      return -1;
    }
    *total =
        tly_add_saturating(*total, meter_quantity(meter, buckets, count, hour));
    free(buckets);
  }
  return 0;
}

static size_t cursor_key(const subject_t *subject, const meter_t *meter,
                         int64_t window_start_ms, char *out, size_t size) {
  return tly_key_report_cursor(subject->partition, subject->kind, subject->id,
                               meter->event_name, window_start_ms, out, size);
}

/* ---- marks -------------------------------------------------------------- */

static void mark_list_clear(mark_list_t *list) {
  for (size_t i = 0; i < list->count; i++) {
    free(list->items[i].key);
    free(list->items[i].hours);
  }
  free(list->items);
  memset(list, 0, sizeof(*list));
}

int tly_emitter_collect_mark(void *opaque, const char *key, size_t key_len,
                             const char *value, size_t value_len) {
  mark_list_t *list = opaque;
  if (key_len <= 12 || value_len < 8 || (value_len - 8) % 4) {
    list->failed = 1;
    return 1;
  }
  if (list->count == list->cap) {
    size_t cap = list->cap ? list->cap * 2 : 64;
    mark_t *grown = realloc(list->items, cap * sizeof(*grown));
    if (!grown) {
      list->failed = 1;
      return 1;
    }
    list->items = grown;
    list->cap = cap;
  }
  mark_t *mark = &list->items[list->count];
  mark->key_len = key_len;
  mark->key = malloc(key_len + 1);
  mark->hour_count = (value_len - 8) / 4;
  mark->hours = malloc((mark->hour_count + 1) * sizeof(*mark->hours));
  if (!mark->key || !mark->hours) {
    free(mark->key);
    free(mark->hours);
    list->failed = 1;
    return 1;
  }
  memcpy(mark->key, key, key_len);
  mark->key[key_len] = '\0';
  mark->at_ms = (int64_t)tly_get_be64((const unsigned char *)value);
  for (size_t i = 0; i < mark->hour_count; i++)
    mark->hours[i] =
        (int32_t)tly_get_be32((const unsigned char *)value + 8 + 4 * i);
  list->count++;
  return list->count >= MARKS_PER_PASS;
}

static int compare_windows(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

/* The window containing an hour (windows are whole hours from the epoch). */
static int64_t window_of(const tly_stripe_emitter_t *e, int32_t hour) {
  int64_t t = (int64_t)hour * TLY_HOUR_MS;
  int64_t start = t / e->window_ms * e->window_ms;
  return start > t ? start - e->window_ms : start;
}

/* ---- the work of a pass ------------------------------------------------- */

void tly_emitter_work_clear(work_t *work) {
  for (size_t i = 0; i < work->subject_count; i++) {
    tly_subject_record_clear(&work->subjects[i].subject.record);
    free(work->subjects[i].split);
    free(work->subjects[i].windows);
  }
  for (size_t i = 0; i < work->slot_count; i++)
    free(work->slots[i].key);
  free(work->subjects);
  free(work->slots);
  mark_list_clear(&work->marks);
}

/* The subjects of the marks read, each with the windows its marks name.
 * 0, or -1 when out of memory. */
int tly_emitter_collect_subjects(tly_stripe_emitter_t *e, work_t *work) {
  work->subjects = calloc(work->marks.count + 1, sizeof(*work->subjects));
  if (!work->subjects)
    return -1;
  for (size_t i = 0; i < work->marks.count; i++) {
    const mark_t *mark = &work->marks.items[i];
    work_subject_t *subject = NULL;
    for (size_t j = 0; j < work->subject_count && !subject; j++)
      if (strcmp(work->subjects[j].name, mark_subject(mark)) == 0)
        subject = &work->subjects[j];
    if (!subject) {
      subject = &work->subjects[work->subject_count++];
      subject->name = mark_subject(mark);
      subject->subject.partition = work->pass.partition;
    }
    if (subject->window_count + mark->hour_count > subject->window_cap) {
      size_t cap = (subject->window_count + mark->hour_count) * 2;
      int64_t *grown = realloc(subject->windows, cap * sizeof(*grown));
      if (!grown)
        return -1;
      subject->windows = grown;
      subject->window_cap = cap;
    }
    for (size_t h = 0; h < mark->hour_count; h++)
      subject->windows[subject->window_count++] = window_of(e, mark->hours[h]);
  }
  for (size_t i = 0; i < work->subject_count; i++) {
    work_subject_t *subject = &work->subjects[i];
    if (subject->window_count > 1)
      qsort(subject->windows, subject->window_count, sizeof(int64_t),
            compare_windows);
    size_t unique = 0;
    for (size_t w = 0; w < subject->window_count; w++)
      if (!unique || subject->windows[w] != subject->windows[unique - 1])
        subject->windows[unique++] = subject->windows[w];
    subject->window_count = unique;
  }
  return 0;
}

/* Reads a subject's record and makes a slot per window and meter; a
 * subject that cannot be read is deferred, one that is not a subject key
 * has nothing to report. 0, or -1 when out of memory. */
int tly_emitter_open_subject(tly_stripe_emitter_t *e, work_t *work,
                             size_t index) {
  char errstr[512], key[TLY_KEY_MAX], *value = NULL;
  work_subject_t *work_subject = &work->subjects[index];
  subject_t *subject = &work_subject->subject;
  work_subject->split = strdup(work_subject->name);
  if (!work_subject->split)
    return -1;
  char *colon = strchr(work_subject->split, ':');
  if (!colon) {
    work_subject->window_count = 0; /* not a subject key */
    return 0;
  }
  *colon = '\0';
  subject->id = colon + 1;
  if (tly_subject_kind_parse(work_subject->split, &subject->kind)) {
    work_subject->window_count = 0;
    return 0;
  }
  size_t value_len = 0;
  size_t key_len = tly_key_account(work->pass.partition, subject->kind,
                                   subject->id, key, sizeof(key));
  int found = key_len
                  ? tly_store_get(e->conf.store, TLY_CF_ACCOUNTS, key, key_len,
                                  &value, &value_len, errstr, sizeof(errstr))
                  : 0;
  if (found < 0 || (found > 0 && tly_subject_record_decode(value, value_len,
                                                           &subject->record))) {
    tly_log(TLY_LOG_ERROR, "stripe", "reading subject %s: %s",
            work_subject->name, found < 0 ? errstr : "corrupt record");
    tly_store_free(value);
    work_subject->deferred = 1;
    return 0;
  }
  tly_store_free(value);
  for (size_t w = 0; w < work_subject->window_count; w++)
    for (size_t m = 0; m < e->meter_count; m++) {
      char cursor[TLY_KEY_MAX + 128];
      if (work->slot_count == work->slot_cap) {
        size_t cap = work->slot_cap ? work->slot_cap * 2 : 64;
        slot_t *grown = realloc(work->slots, cap * sizeof(*grown));
        if (!grown)
          return -1;
        work->slots = grown;
        work->slot_cap = cap;
      }
      slot_t *slot = &work->slots[work->slot_count];
      memset(slot, 0, sizeof(*slot));
      slot->subject = index;
      slot->meter = &e->meters[m];
      slot->window_start_ms = work_subject->windows[w];
      slot->key_len = cursor_key(subject, slot->meter, slot->window_start_ms,
                                 cursor, sizeof(cursor));
      if (!slot->key_len ||
          window_total(e, subject, slot->meter, slot->window_start_ms,
                       &slot->total, errstr, sizeof(errstr))) {
        tly_log(TLY_LOG_ERROR, "stripe", "reading the usage of %s: %s",
                subject->id, slot->key_len ? errstr : "key too long");
        work_subject->deferred = 1;
        return 0;
      }
      if (!(slot->key = malloc(slot->key_len)))
        return -1;
      memcpy(slot->key, cursor, slot->key_len);
      work->slot_count++;
    }
  return 0;
}

static int first_mark(void *opaque, const char *key, size_t key_len,
                      const char *value, size_t value_len) {
  (void)key, (void)key_len;
  if (value_len >= 8)
    *(int64_t *)opaque = (int64_t)tly_get_be64((const unsigned char *)value);
  return 1;
}

/* The oldest mark still waiting on the assigned partitions. */
void tly_emitter_update_oldest(tly_stripe_emitter_t *e, const int32_t *assigned,
                               size_t count) {
  int64_t oldest = INT64_MAX;
  for (size_t i = 0; i < count; i++) {
    char prefix[4], errstr[256];
    int64_t at = INT64_MAX;
    tly_put_be32((unsigned char *)prefix, (uint32_t)assigned[i]);
    if (tly_store_scan_prefix(e->conf.store, TLY_CF_REPORTS, prefix, 4,
                              first_mark, &at, errstr, sizeof(errstr)) == 0 &&
        at < oldest)
      oldest = at;
  }
  atomic_store(&e->oldest_at_ms, oldest);
}
