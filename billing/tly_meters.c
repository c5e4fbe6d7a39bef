/*
 * tly_meters.c - aggregations and unique_count's distinct values (see
 * tly_meters.h for the rules). Pure: no I/O, no clock.
 */
#include "tly_meters.h"

#include "tly_billing.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

tly_aggregation_t tly_meter_aggregation(const tly_config_t *config,
                                        const char *feature) {
  const tly_meter_t *meter =
      config->meter_count ? tly_config_meter(config, feature) : NULL;
  return meter ? meter->aggregation : TLY_AGG_SUM;
}

int tly_meter_step(tly_aggregation_t aggregation, int64_t events,
                   int64_t *value, int64_t *latest_at_ms, int64_t quantity,
                   int64_t at_ms, int is_new) {
  int64_t next = *value;
  switch (aggregation) {
  case TLY_AGG_COUNT:
    if (__builtin_add_overflow(next, 1, &next))
      return -1;
    break;
  case TLY_AGG_MAX:
    if (events == 0 || quantity > next)
      next = quantity;
    break;
  case TLY_AGG_LATEST:
    if (events == 0 || at_ms >= *latest_at_ms) {
      next = quantity;
      *latest_at_ms = at_ms;
    }
    break;
  case TLY_AGG_UNIQUE_COUNT:
    if (is_new && __builtin_add_overflow(next, 1, &next))
      return -1;
    break;
  default:
    if (__builtin_add_overflow(next, quantity, &next))
      return -1;
  }
  *value = next;
  return 0;
}

int64_t tly_meter_value_after(tly_aggregation_t aggregation, int64_t used,
                              int64_t quantity) {
  int64_t after;
  switch (aggregation) {
  case TLY_AGG_MAX:
    return quantity > used ? quantity : used;
  case TLY_AGG_LATEST:
    return quantity;
  default:
    return __builtin_add_overflow(used, quantity, &after) ? INT64_MAX : after;
  }
}

const char *tly_usage_property(const tly_usage_recorded_t *usage,
                               const char *key) {
  for (size_t i = 0; i < usage->property_count; i++)
    if (usage->properties[i].key && usage->properties[i].value &&
        strcmp(usage->properties[i].key, key) == 0)
      return usage->properties[i].value;
  return NULL;
}

/* ---- distinct values -------------------------------------------------- */

tly_fold_result_t
tly_meter_distinct_check(const tly_config_t *config, tly_billing_view_t *view,
                         const tly_event_t *event, int64_t cycle_start_ms,
                         tly_distinct_sets_t **sets, const char **value,
                         int *is_new, char *errstr, size_t errstr_size) {
  const tly_usage_recorded_t *usage = &event->body.usage;
  const tly_meter_t *meter = tly_config_meter(config, usage->feature);
  *value = tly_usage_property(usage, meter->property);
  if (!*value) {
    snprintf(errstr, errstr_size,
             "feature '%s' counts distinct values of property '%s', which "
             "the event does not carry",
             usage->feature, meter->property);
    return TLY_FOLD_REJECTED;
  }
  if (strlen(*value) > TLY_DISTINCT_VALUE_MAX) {
    snprintf(errstr, errstr_size,
             "property '%s' of feature '%s' is longer than the %d bytes a "
             "distinct value may have",
             meter->property, usage->feature, TLY_DISTINCT_VALUE_MAX);
    return TLY_FOLD_REJECTED;
  }
  if (!view->distinct) {
    snprintf(errstr, errstr_size,
             "feature '%s' is a unique_count, which this state cannot keep",
             usage->feature);
    return TLY_FOLD_REJECTED;
  }
  *sets = view->distinct(view, event->subject_kind, event->subject_id);
  if (!*sets)
    return TLY_FOLD_FAILED;
  const tly_distinct_set_t *set =
      tly_distinct_find(*sets, cycle_start_ms, usage->feature);
  *is_new = !tly_distinct_has(set, *value);
  if (*is_new && set && set->count >= TLY_DISTINCT_MAX) {
    snprintf(errstr, errstr_size,
             "feature '%s' already counts %d distinct values of property "
             "'%s' in the cycle starting at %lld (the bound per subject and "
             "cycle): a new value is not counted",
             usage->feature, TLY_DISTINCT_MAX, meter->property,
             (long long)cycle_start_ms);
    return TLY_FOLD_REJECTED;
  }
  return TLY_FOLD_APPLIED;
}

static void set_clear(tly_distinct_set_t *set) {
  for (size_t i = 0; i < set->count; i++)
    free(set->values[i]);
  free(set->values);
  memset(set, 0, sizeof(*set));
}

void tly_distinct_sets_clear(tly_distinct_sets_t *sets) {
  for (size_t i = 0; i < sets->count; i++)
    set_clear(&sets->items[i]);
  free(sets->items);
  memset(sets, 0, sizeof(*sets));
}

const tly_distinct_set_t *tly_distinct_find(const tly_distinct_sets_t *sets,
                                            int64_t cycle_start_ms,
                                            const char *feature) {
  for (size_t i = 0; i < sets->count; i++)
    if (sets->items[i].cycle_start_ms == cycle_start_ms &&
        strcmp(sets->items[i].feature, feature) == 0)
      return &sets->items[i];
  return NULL;
}

/* The index value has or would have in the sorted set; *found 0/1. */
static size_t position(const tly_distinct_set_t *set, const char *value,
                       int *found) {
  size_t low = 0, high = set->count;
  *found = 0;
  while (low < high) {
    size_t mid = low + (high - low) / 2;
    int c = strcmp(set->values[mid], value);
    if (c == 0) {
      *found = 1;
      return mid;
    }
    if (c < 0)
      low = mid + 1;
    else
      high = mid;
  }
  return low;
}

int tly_distinct_has(const tly_distinct_set_t *set, const char *value) {
  int found = 0;
  if (set)
    position(set, value, &found);
  return found;
}

static int grow(void **items, size_t *cap, size_t need, size_t size) {
  if (need <= *cap)
    return 0;
  size_t next = *cap ? *cap * 2 : 4;
  while (next < need)
    next *= 2;
  void *grown = realloc(*items, next * size);
  if (!grown)
    return -1;
  *items = grown;
  *cap = next;
  return 0;
}

int tly_distinct_add(tly_distinct_sets_t *sets, int64_t cycle_start_ms,
                     const char *feature, const char *value) {
  tly_distinct_set_t *set =
      (tly_distinct_set_t *)tly_distinct_find(sets, cycle_start_ms, feature);
  if (!set) {
    void *items = sets->items;
    if (grow(&items, &sets->cap, sets->count + 1, sizeof(*sets->items)))
      return -1;
    sets->items = items;
    set = &sets->items[sets->count];
    memset(set, 0, sizeof(*set));
    set->cycle_start_ms = cycle_start_ms;
    snprintf(set->feature, sizeof(set->feature), "%s", feature);
    sets->count++;
  }
  int found;
  size_t at = position(set, value, &found);
  if (found)
    return 0;
  void *values = set->values;
  if (grow(&values, &set->cap, set->count + 1, sizeof(*set->values)))
    return -1;
  set->values = values;
  char *copy = strdup(value);
  if (!copy)
    return -1;
  memmove(&set->values[at + 1], &set->values[at],
          (set->count - at) * sizeof(*set->values));
  set->values[at] = copy;
  set->count++;
  return 0;
}

void tly_distinct_prune(tly_distinct_sets_t *sets,
                        int (*keep)(const void *opaque, int64_t cycle_start_ms,
                                    const char *feature),
                        const void *opaque) {
  size_t kept = 0;
  for (size_t i = 0; i < sets->count; i++) {
    tly_distinct_set_t *set = &sets->items[i];
    if (set->count && keep(opaque, set->cycle_start_ms, set->feature))
      sets->items[kept++] = *set;
    else
      set_clear(set);
  }
  sets->count = kept;
}

/* ---- encoding --------------------------------------------------------- */

typedef struct {
  unsigned char *out;
  size_t size, len;
} writer_t;

static void put_bytes(writer_t *w, const void *bytes, size_t n) {
  if (w->out && n && w->len <= w->size && n <= w->size - w->len)
    memcpy(w->out + w->len, bytes, n);
  w->len += n;
}

static void put_varint(writer_t *w, uint64_t value) {
  unsigned char bytes[10];
  size_t n = 0;
  while (value >= 0x80) {
    bytes[n++] = (unsigned char)(value | 0x80);
    value >>= 7;
  }
  bytes[n++] = (unsigned char)value;
  put_bytes(w, bytes, n);
}

static void put_string(writer_t *w, const char *text) {
  size_t len = strlen(text);
  put_varint(w, len);
  put_bytes(w, text, len);
}

size_t
tly_distinct_encode(const tly_distinct_sets_t *sets, int64_t base_ms,
                    int (*keep)(const void *opaque, int64_t cycle_start_ms,
                                const char *feature),
                    const void *opaque, unsigned char *out, size_t out_size) {
  writer_t w = {out, out_size, 0};
  size_t kept = 0;
  for (size_t i = 0; i < sets->count; i++)
    kept += sets->items[i].count &&
            keep(opaque, sets->items[i].cycle_start_ms, sets->items[i].feature);
  put_varint(&w, kept);
  for (size_t i = 0; i < sets->count; i++) {
    const tly_distinct_set_t *set = &sets->items[i];
    if (!set->count || !keep(opaque, set->cycle_start_ms, set->feature))
      continue;
    uint64_t offset = (uint64_t)set->cycle_start_ms - (uint64_t)base_ms;
    put_varint(&w, (offset << 1) ^ (0 - (offset >> 63)));
    put_string(&w, set->feature);
    put_varint(&w, set->count);
    for (size_t j = 0; j < set->count; j++)
      put_string(&w, set->values[j]);
  }
  return w.len;
}

typedef struct {
  const unsigned char *data;
  size_t len, pos;
  int bad;
} reader_t;

static uint64_t take_varint(reader_t *r) {
  uint64_t value = 0;
  for (unsigned shift = 0; !r->bad && r->pos < r->len && shift < 64;
       shift += 7) {
    unsigned char byte = r->data[r->pos++];
    value |= (uint64_t)(byte & 0x7f) << shift;
    if (!(byte & 0x80))
      return value;
  }
  r->bad = 1;
  return 0;
}

/* A string of at most max bytes into out (max + 1 bytes). */
static void take_string(reader_t *r, char *out, size_t max) {
  uint64_t len = take_varint(r);
  if (r->bad || len > max || len > r->len - r->pos) {
    r->bad = 1;
    return;
  }
  memcpy(out, r->data + r->pos, (size_t)len);
  out[len] = '\0';
  r->pos += (size_t)len;
}

size_t tly_distinct_decode(const unsigned char *data, size_t len,
                           int64_t base_ms, tly_distinct_sets_t *sets) {
  reader_t r = {data, len, 0, 0};
  char value[TLY_DISTINCT_VALUE_MAX + 1], previous[TLY_DISTINCT_VALUE_MAX + 1];
  uint64_t count = take_varint(&r);
  if (count > r.len - r.pos)
    r.bad = 1;
  for (uint64_t i = 0; i < count && !r.bad; i++) {
    uint64_t bits = take_varint(&r);
    int64_t cycle =
        (int64_t)((uint64_t)base_ms + ((bits >> 1) ^ (0 - (bits & 1))));
    char feature[TLY_CONFIG_NAME_MAX];
    take_string(&r, feature, sizeof(feature) - 1);
    uint64_t values = take_varint(&r);
    if (r.bad || !values || values > TLY_DISTINCT_MAX ||
        tly_distinct_find(sets, cycle, feature)) {
      r.bad = 1;
      break;
    }
    previous[0] = '\0';
    for (uint64_t j = 0; j < values && !r.bad; j++) {
      take_string(&r, value, TLY_DISTINCT_VALUE_MAX);
      if (r.bad || (j && strcmp(previous, value) >= 0) ||
          tly_distinct_add(sets, cycle, feature, value)) {
        r.bad = 1;
        break;
      }
      memcpy(previous, value, sizeof(value));
    }
  }
  return r.bad ? 0 : r.pos;
}
