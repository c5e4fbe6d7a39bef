/*
 * tly_event.c - the event model's small helpers: freeing an event, subject
 * kind names, the Kafka key of a subject, and the validation that every way
 * into or out of the log (Avro decode, Avro encode, JSON) shares.
 *
 * Validation lives here rather than in the codec so that the JSON reader, the
 * codec and any later producer all agree on what a valid event is: one rule
 * book, not three that drift apart. Error messages never echo a subject id,
 * because for api_key subjects a mistake might be a raw key and raw keys must
 * not reach logs or dead letters.
 */
#include "tly_event.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Indexed by tly_subject_kind_t; the order is the Avro enum's symbol order. */
static const char *const subject_kind_names[TLY_SUBJECT__COUNT] = {
    [TLY_SUBJECT_USER] = "user",
    [TLY_SUBJECT_API_KEY] = "api_key",
    [TLY_SUBJECT_ANONYMOUS] = "anonymous",
};

static void usage_clear(tly_usage_recorded_t *usage) {
  free(usage->feature);
  free(usage->unit);
  free(usage->ai.provider);
  free(usage->ai.model);
  for (size_t i = 0; i < usage->property_count; i++) {
    free(usage->properties[i].key);
    free(usage->properties[i].value);
  }
  free(usage->properties);
}

void tly_event_clear(tly_event_t *event) {
  if (!event)
    return;
  free(event->event_id);
  free(event->subject_id);
  /* Only one body variant exists today; when more arrive, each gets its own
   * clear function here, chosen by body_kind. */
  if (event->body_kind == TLY_BODY_USAGE_RECORDED)
    usage_clear(&event->body.usage);
  memset(event, 0, sizeof(*event));
}

const char *tly_subject_kind_name(tly_subject_kind_t kind) {
  if ((int)kind < 0 || kind >= TLY_SUBJECT__COUNT)
    return NULL;
  return subject_kind_names[kind];
}

int tly_subject_kind_parse(const char *name, tly_subject_kind_t *kind) {
  if (!name)
    return -1;
  for (int i = 0; i < TLY_SUBJECT__COUNT; i++) {
    if (strcmp(name, subject_kind_names[i]) == 0) {
      if (kind)
        *kind = (tly_subject_kind_t)i;
      return 0;
    }
  }
  return -1;
}

size_t tly_subject_key(tly_subject_kind_t kind, const char *id, char *out,
                       size_t out_size) {
  const char *name = tly_subject_kind_name(kind);
  int needed;

  /* An out-of-range kind has no key; an empty string makes the caller's
   * "key too short / empty" checks fire instead of inventing a prefix. */
  if (!name) {
    if (out && out_size)
      out[0] = '\0';
    return 0;
  }
  needed =
      snprintf(out_size ? out : NULL, out_size, "%s:%s", name, id ? id : "");
  return needed < 0 ? 0 : (size_t)needed;
}

int tly_api_key_hash_is_valid(const char *id) {
  if (!id)
    return 0;
  for (size_t i = 0; i < TLY_API_KEY_HASH_LEN; i++) {
    char c = id[i];
    /* Lowercase only: one spelling per key, so one state key per key. */
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
      return 0;
  }
  return id[TLY_API_KEY_HASH_LEN] == '\0';
}

int tly_subject_validate(tly_subject_kind_t kind, const char *id, char *errstr,
                         size_t errstr_size) {
  if (!tly_subject_kind_name(kind)) {
    snprintf(errstr, errstr_size, "subject kind %d is out of range", (int)kind);
    return -1;
  }
  if (!id || !*id) {
    snprintf(errstr, errstr_size, "subject id must not be empty");
    return -1;
  }
  if (kind == TLY_SUBJECT_API_KEY && !tly_api_key_hash_is_valid(id)) {
    /* Deliberately does not quote the id: it may be a raw key. */
    snprintf(errstr, errstr_size,
             "api_key subject id must be the SHA-256 of the key as %d "
             "lowercase hex characters; raw keys are never accepted",
             TLY_API_KEY_HASH_LEN);
    return -1;
  }
  return 0;
}

/* A required string: present and non-empty. */
static int require_text(const char *value, const char *field, char *errstr,
                        size_t errstr_size) {
  if (value && *value)
    return 0;
  snprintf(errstr, errstr_size, "field '%s': must be a non-empty string",
           field);
  return -1;
}

static int require_count(int64_t value, const char *field, char *errstr,
                         size_t errstr_size) {
  if (value >= 0)
    return 0;
  snprintf(errstr, errstr_size,
           "field '%s': must be an integer >= 0 (got %lld)", field,
           (long long)value);
  return -1;
}

static int compare_property_keys(const void *a, const void *b) {
  const tly_property_t *const *left = a;
  const tly_property_t *const *right = b;
  return strcmp((*left)->key, (*right)->key);
}

/*
 * An Avro map cannot hold a key twice; saying so beats silently keeping
 * whichever value the map implementation happened to keep. Few properties
 * are compared pairwise; many are sorted (by pointer, the event is const) so
 * that a hostile message with thousands of keys costs n log n, not n^2.
 */
static int properties_check_unique(const tly_usage_recorded_t *usage,
                                   char *errstr, size_t errstr_size) {
  const tly_property_t **sorted;
  const char *duplicate = NULL;
  size_t count = usage->property_count;

  if (count <= 16) {
    for (size_t i = 1; i < count && !duplicate; i++)
      for (size_t j = 0; j < i && !duplicate; j++)
        if (strcmp(usage->properties[j].key, usage->properties[i].key) == 0)
          duplicate = usage->properties[i].key;
  } else {
    sorted = malloc(count * sizeof(*sorted));
    if (!sorted) {
      snprintf(errstr, errstr_size,
               "field 'properties': out of memory checking %zu keys", count);
      return -1;
    }
    for (size_t i = 0; i < count; i++)
      sorted[i] = &usage->properties[i];
    qsort(sorted, count, sizeof(*sorted), compare_property_keys);
    for (size_t i = 1; i < count && !duplicate; i++)
      if (strcmp(sorted[i - 1]->key, sorted[i]->key) == 0)
        duplicate = sorted[i]->key;
    free(sorted);
  }
  if (!duplicate)
    return 0;
  snprintf(errstr, errstr_size, "field 'properties': duplicate key '%s'",
           duplicate);
  return -1;
}

static int usage_validate(const tly_usage_recorded_t *usage, char *errstr,
                          size_t errstr_size) {
  if (require_text(usage->feature, "feature", errstr, errstr_size) ||
      require_count(usage->quantity, "quantity", errstr, errstr_size))
    return -1;
  if (usage->has_ai &&
      (require_text(usage->ai.provider, "ai.provider", errstr, errstr_size) ||
       require_text(usage->ai.model, "ai.model", errstr, errstr_size) ||
       require_count(usage->ai.input_tokens, "ai.input_tokens", errstr,
                     errstr_size) ||
       require_count(usage->ai.output_tokens, "ai.output_tokens", errstr,
                     errstr_size)))
    return -1;
  if (usage->property_count && !usage->properties) {
    snprintf(errstr, errstr_size,
             "field 'properties': %zu entries but no array",
             usage->property_count);
    return -1;
  }
  for (size_t i = 0; i < usage->property_count; i++) {
    const tly_property_t *property = &usage->properties[i];
    if (!property->key || !property->value) {
      snprintf(errstr, errstr_size,
               "field 'properties': entry %zu has a NULL key or value", i);
      return -1;
    }
  }
  return properties_check_unique(usage, errstr, errstr_size);
}

int tly_event_validate(const tly_event_t *event, char *errstr,
                       size_t errstr_size) {
  char reason[256];

  if (!event) {
    snprintf(errstr, errstr_size, "no event");
    return -1;
  }
  if (require_text(event->event_id, "event_id", errstr, errstr_size))
    return -1;
  if (tly_subject_validate(event->subject_kind, event->subject_id, reason,
                           sizeof(reason))) {
    snprintf(errstr, errstr_size, "field 'subject': %s", reason);
    return -1;
  }
  switch (event->body_kind) {
  case TLY_BODY_USAGE_RECORDED:
    return usage_validate(&event->body.usage, errstr, errstr_size);
  default:
    snprintf(errstr, errstr_size, "field 'body': unknown body kind %d",
             (int)event->body_kind);
    return -1;
  }
}
