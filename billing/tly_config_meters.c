/*
 * tly_config_meters.c - the "meters" section of the config: how each
 * feature aggregates (sum, count, max, latest, unique_count and its
 * property) and the dimensions its hourly buckets are kept by (group_by).
 *
 *   "meters": {"storage_bytes": {"aggregation": "latest"},
 *              "seats": {"aggregation": "unique_count", "property": "user"},
 *              "api_calls": {"group_by": ["properties.region"]}}
 *
 * A bad entry stops startup naming its path, e.g.
 * "meters.seats.property: required for aggregation unique_count". The
 * rules the fold applies are billing/tly_meters.h's; this file only loads
 * and checks. No I/O.
 */
#include "tly_config.h"

#include "tly_config_internal.h"

#include <stdlib.h>
#include <string.h>

static const char *const aggregation_names[] = {"sum", "count", "max", "latest",
                                                "unique_count"};

const char *tly_aggregation_name(tly_aggregation_t aggregation) {
  return (size_t)aggregation < TLY_COUNT(aggregation_names)
             ? aggregation_names[aggregation]
             : "sum";
}

const tly_meter_t *tly_config_meter(const tly_config_t *config,
                                    const char *feature) {
  for (size_t i = 0; i < config->meter_count; i++)
    if (strcmp(config->meters[i].feature, feature) == 0)
      return &config->meters[i];
  return NULL;
}

/* A property key: 1..127 bytes, no control characters (the event bounds
 * allow keys up to TLY_EVENT_PROPERTY_KEY_MAX; a longer one never matches). */
static int check_property_key(tly_err_t *err, const char *path,
                              const char *key) {
  size_t len = strlen(key);
  if (len == 0 || len >= TLY_METER_PROPERTY_MAX)
    return fail(err, path, "must be a property key of 1 to %d bytes",
                TLY_METER_PROPERTY_MAX - 1);
  for (size_t i = 0; i < len; i++)
    if ((unsigned char)key[i] < 0x20 || key[i] == 0x7f)
      return fail(err, path, "must not hold control characters");
  return 0;
}

static int parse_group_by(tly_err_t *err, const char *path, json_t *array,
                          tly_meter_t *meter) {
  char item_path[TLY_PATH_SIZE];
  size_t index;
  json_t *item;
  if (!json_is_array(array))
    return fail(err, path,
                "must be a list of \"model\", \"provider\" or "
                "\"properties.<key>\"");
  if (json_array_size(array) > TLY_METER_GROUP_MAX)
    return fail(err, path, "at most %d dimensions", TLY_METER_GROUP_MAX);
  meter->group_by_set = 1;
  json_array_foreach(array, index, item) {
    path_index(item_path, path, index);
    const char *text = json_string_value(item);
    tly_dimension_t *dim = &meter->group_by[meter->group_count];
    memset(dim, 0, sizeof(*dim));
    if (text && strcmp(text, "model") == 0) {
      dim->kind = TLY_DIM_MODEL;
    } else if (text && strcmp(text, "provider") == 0) {
      dim->kind = TLY_DIM_PROVIDER;
    } else if (text && strncmp(text, "properties.", 11) == 0) {
      dim->kind = TLY_DIM_PROPERTY;
      if (check_property_key(err, item_path, text + 11))
        return -1;
      if (strlen(text + 11) > TLY_DIM_KEY_MAX)
        return fail(err, item_path,
                    "a property key to group by is at most %d bytes",
                    TLY_DIM_KEY_MAX);
      snprintf(dim->key, sizeof(dim->key), "%s", text + 11);
    } else {
      return fail(err, item_path,
                  "must be \"model\", \"provider\" or \"properties.<key>\"");
    }
    for (size_t i = 0; i < meter->group_count; i++)
      if (meter->group_by[i].kind == dim->kind &&
          strcmp(meter->group_by[i].key, dim->key) == 0)
        return fail(err, item_path, "listed twice");
    meter->group_count++;
  }
  return 0;
}

static int parse_meter(tly_err_t *err, const char *path, json_t *object,
                       tly_meter_t *meter) {
  char key_path[TLY_PATH_SIZE];
  const char *key;
  json_t *value, *property = NULL;
  if (check_object(err, path, object) != 0)
    return -1;
  json_object_foreach(object, key, value) {
    path_key(key_path, path, key);
    if (strcmp(key, "aggregation") == 0) {
      const char *name = json_string_value(value);
      size_t i = 0;
      while (name && i < TLY_COUNT(aggregation_names) &&
             strcmp(name, aggregation_names[i]) != 0)
        i++;
      if (!name || i == TLY_COUNT(aggregation_names))
        return fail(err, key_path,
                    "must be \"sum\", \"count\", \"max\", \"latest\" or "
                    "\"unique_count\"");
      meter->aggregation = (tly_aggregation_t)i;
    } else if (strcmp(key, "property") == 0) {
      const char *text = json_string_value(value);
      if (!text)
        return fail(err, key_path, "must be a property key (a string)");
      if (check_property_key(err, key_path, text))
        return -1;
      snprintf(meter->property, sizeof(meter->property), "%s", text);
      property = value;
    } else if (strcmp(key, "group_by") == 0) {
      if (parse_group_by(err, key_path, value, meter))
        return -1;
    } else {
      return fail(err, key_path,
                  "unknown key (expected aggregation, property, group_by)");
    }
  }
  path_key(key_path, path, "property");
  if (meter->aggregation == TLY_AGG_UNIQUE_COUNT && !property)
    return fail(err, key_path, "required for aggregation unique_count");
  if (meter->aggregation != TLY_AGG_UNIQUE_COUNT && property)
    return fail(err, key_path, "only for aggregation unique_count");
  return 0;
}

int tly_config_apply_meters(tly_config_t *config, json_t *section,
                            tly_err_t *err) {
  char path[TLY_PATH_SIZE];
  const char *feature;
  json_t *value;
  if (check_object(err, "meters", section) != 0)
    return -1;
  if (json_object_size(section) > TLY_CONFIG_METERS_MAX)
    return fail(err, "meters", "at most %d meters", TLY_CONFIG_METERS_MAX);
  free(config->meters);
  config->meter_count = 0;
  config->meters =
      calloc(json_object_size(section) + 1, sizeof(*config->meters));
  if (!config->meters)
    return fail(err, "meters", "out of memory");
  json_object_foreach(section, feature, value) {
    tly_meter_t *meter = &config->meters[config->meter_count];
    path_key(path, "meters", feature);
    if (check_name(err, path, feature) != 0)
      return -1;
    snprintf(meter->feature, sizeof(meter->feature), "%s", feature);
    if (parse_meter(err, path, value, meter))
      return -1;
    config->meter_count++;
  }
  return 0;
}

/* Stripe reports deltas of the hourly buckets to meters that sum them:
 * a feature whose value can fall (latest) has no such delta. */
int tly_config_check_meters(const tly_config_t *config, tly_err_t *err) {
  char meter_path[TLY_PATH_SIZE], path[TLY_PATH_SIZE];
  for (size_t i = 0; i < config->meter_count; i++) {
    const tly_meter_t *meter = &config->meters[i];
    if (meter->aggregation != TLY_AGG_LATEST ||
        !tly_config_stripe_meter(config, meter->feature))
      continue;
    path_key(meter_path, "meters", meter->feature);
    path_key(path, meter_path, "aggregation");
    return fail(err, path,
                "a \"latest\" feature cannot be reported to Stripe "
                "(stripe.meters.%s): its value can fall, and tally reports "
                "deltas to meters with the sum formula",
                meter->feature);
  }
  return 0;
}
