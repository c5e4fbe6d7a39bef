/*
 * tly_dims.c - dimensions' rules and group bucket names (tly_dims.h).
 * Pure: the fold's step reaches the buckets through the view.
 */
#include "tly_dims.h"

#include "tly_meters.h"

#include <stdio.h>
#include <string.h>

static const tly_dimension_t ai_default[2] = {{.kind = TLY_DIM_MODEL},
                                              {.kind = TLY_DIM_PROVIDER}};

size_t tly_dims_of(const tly_config_t *config,
                   const tly_usage_recorded_t *usage,
                   const tly_dimension_t **dims) {
  for (size_t i = 0; i < config->meter_count; i++)
    if (config->meters[i].group_by_set &&
        strcmp(config->meters[i].feature, usage->feature) == 0) {
      *dims = config->meters[i].group_by;
      return config->meters[i].group_count;
    }
  *dims = ai_default;
  return usage->has_ai ? 2 : 0;
}

void tly_dims_label(const tly_dimension_t *dim, char *out) {
  switch (dim->kind) {
  case TLY_DIM_MODEL:
    strcpy(out, "model");
    break;
  case TLY_DIM_PROVIDER:
    strcpy(out, "provider");
    break;
  case TLY_DIM_PROPERTY:
    snprintf(out, TLY_DIM_LABEL_MAX, "properties.%.*s", TLY_DIM_KEY_MAX,
             dim->key);
    break;
  }
}

int tly_dims_parse_label(const char *text, tly_dimension_t *out) {
  memset(out, 0, sizeof(*out));
  if (!text)
    return -1;
  if (strcmp(text, "model") == 0) {
    out->kind = TLY_DIM_MODEL;
    return 0;
  }
  if (strcmp(text, "provider") == 0) {
    out->kind = TLY_DIM_PROVIDER;
    return 0;
  }
  if (strncmp(text, "properties.", 11) != 0)
    return -1;
  size_t len = strlen(text + 11);
  if (len == 0 || len > TLY_DIM_KEY_MAX)
    return -1;
  for (size_t i = 0; i < len; i++)
    if ((unsigned char)text[11 + i] < 0x20 || text[11 + i] == 0x7f)
      return -1;
  out->kind = TLY_DIM_PROPERTY;
  memcpy(out->key, text + 11, len + 1);
  return 0;
}

const char *tly_dims_value(const tly_dimension_t *dim,
                           const tly_usage_recorded_t *usage) {
  const char *value = NULL;
  switch (dim->kind) {
  case TLY_DIM_MODEL:
    value = usage->has_ai ? usage->ai.model : NULL;
    break;
  case TLY_DIM_PROVIDER:
    value = usage->has_ai ? usage->ai.provider : NULL;
    break;
  case TLY_DIM_PROPERTY:
    value = tly_usage_property(usage, dim->key);
    break;
  }
  if (!value || !*value)
    return TLY_DIM_NONE;
  return strlen(value) > TLY_DIM_VALUE_MAX ? TLY_DIM_OTHER : value;
}

size_t tly_dims_bucket_name(char *out, size_t size, const char *feature,
                            const char *label, const char *value) {
  /* What snprintf("%s\x1f%s\x1f%s") would write, without its cost: this
   * runs for every grouped event the processor folds. */
  size_t feature_len = strlen(feature), label_len = strlen(label);
  size_t value_len = value ? strlen(value) : 0;
  size_t n = feature_len + 1 + label_len + 1 + value_len;
  if (n >= size)
    return 0;
  memcpy(out, feature, feature_len);
  out[feature_len] = TLY_DIM_SEP;
  memcpy(out + feature_len + 1, label, label_len);
  out[feature_len + 1 + label_len] = TLY_DIM_SEP;
  memcpy(out + feature_len + 2 + label_len, value ? value : "", value_len);
  out[n] = '\0';
  return n;
}

int tly_dims_split(const char *name, size_t *feature_len, const char **label,
                   size_t *label_len, const char **value) {
  const char *first = strchr(name, TLY_DIM_SEP);
  const char *second = first ? strchr(first + 1, TLY_DIM_SEP) : NULL;
  if (!second)
    return 0;
  *feature_len = (size_t)(first - name);
  *label = first + 1;
  *label_len = (size_t)(second - first - 1);
  *value = second + 1;
  return 1;
}

int tly_bucket_add(tly_bucket_t *a, const tly_bucket_t *b) {
  tly_bucket_t sum;
  if (__builtin_add_overflow(a->quantity, b->quantity, &sum.quantity) ||
      __builtin_add_overflow(a->input_tokens, b->input_tokens,
                             &sum.input_tokens) ||
      __builtin_add_overflow(a->output_tokens, b->output_tokens,
                             &sum.output_tokens) ||
      __builtin_add_overflow(a->event_count, b->event_count,
                             &sum.event_count) ||
      __builtin_add_overflow(a->cost_micros, b->cost_micros, &sum.cost_micros))
    return -1;
  *a = sum;
  return 0;
}

tly_fold_result_t tly_dims_prepare(const tly_config_t *config,
                                   tly_billing_view_t *view,
                                   const tly_event_t *event, int32_t hour,
                                   const tly_bucket_t *delta,
                                   tly_dims_step_t *step, char *errstr,
                                   size_t errstr_size) {
  const tly_usage_recorded_t *usage = &event->body.usage;
  const tly_dimension_t *dims;
  size_t count = tly_dims_of(config, usage, &dims);
  step->count = 0;
  step->label_at = strlen(usage->feature) + 1;
  if (!view->group_bucket)
    return TLY_FOLD_APPLIED;
  for (size_t i = 0; i < count; i++) {
    char label[TLY_DIM_LABEL_MAX], *name = step->names[i];
    tly_dims_label(&dims[i], label);
    size_t prefix_len = tly_dims_bucket_name(name, TLY_BUCKET_NAME_MAX,
                                             usage->feature, label, NULL);
    const char *value = tly_dims_value(&dims[i], usage);
    size_t value_len = strlen(value);
    if (!prefix_len || prefix_len + value_len >= TLY_BUCKET_NAME_MAX)
      return TLY_FOLD_FAILED; /* cannot be: every part is bounded */
    memcpy(name + prefix_len, value, value_len + 1);
    tly_bucket_t *bucket =
        view->group_bucket(view, event->subject_kind, event->subject_id, hour,
                           name, prefix_len, TLY_DIM_VALUES_MAX);
    if (!bucket)
      return TLY_FOLD_FAILED;
    step->targets[i] = bucket;
    step->next[i] = *bucket;
    if (tly_bucket_add(&step->next[i], delta)) {
      snprintf(errstr, errstr_size,
               "totals of feature '%s' by %s would overflow a 64-bit integer",
               usage->feature, label);
      return TLY_FOLD_REJECTED;
    }
    step->count = i + 1;
  }
  return TLY_FOLD_APPLIED;
}

void tly_dims_apply(const tly_dims_step_t *step) {
  for (size_t i = 0; i < step->count; i++)
    *step->targets[i] = step->next[i];
}
