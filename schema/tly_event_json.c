/*
 * tly_event_json.c - events from JSON (the `emit` CLI's lines, the HTTP
 * ingest body), validated into tly_event_t with jansson, and back
 * (tly_event_to_json, for the HTTP port and tools).
 *
 * Usage events have their own reader; every other type is a flat record
 * read and written from tly_body_specs (tly_event_body.h), so a field
 * added there is accepted, checked and printed here without new code.
 *
 * The reader is strict on purpose: JSON is where humans and scripts type
 * events, and a typo that passes silently becomes a wrong bill. Unknown
 * keys, wrong types, real numbers where integers belong and out-of-range
 * counts are all refused, and every message names the field. JSON null is
 * taken as "absent" for optional fields only (many serializers write null
 * for unset members). Subject ids are never quoted in messages: for an
 * api_key subject, a mistake may well be the raw key.
 */
/* timegm() is a BSD/GNU extension; the build defines this too. */
#ifndef _DEFAULT_SOURCE
#define _DEFAULT_SOURCE
#endif

#include "tly_event_json.h"
#include "tly_event_body.h"
#include "tly_event_time.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define REASON_SIZE 256

__attribute__((format(printf, 3, 4))) static int
fail(char *errstr, size_t errstr_size, const char *fmt, ...) {
  va_list ap;
  if (errstr && errstr_size) {
    va_start(ap, fmt);
    vsnprintf(errstr, errstr_size, fmt, ap);
    va_end(ap);
  }
  return -1;
}

/* ------------------------------------------------------------------ */
/* Field helpers                                                       */
/* ------------------------------------------------------------------ */

/* Copies a JSON string; refuses embedded NULs (possible in a json_t built
 * with json_stringn) because the event holds C strings. */
static int copy_string(const json_t *value, const char *field, int non_empty,
                       char **out, char *errstr, size_t errstr_size) {
  const char *text;
  size_t length;

  if (!json_is_string(value))
    return fail(errstr, errstr_size, "field '%s': must be a %sstring", field,
                non_empty ? "non-empty " : "");
  text = json_string_value(value);
  length = json_string_length(value);
  if (strlen(text) != length)
    return fail(errstr, errstr_size, "field '%s': must not contain NUL", field);
  if (non_empty && length == 0)
    return fail(errstr, errstr_size, "field '%s': must be a non-empty string",
                field);
  *out = strdup(text);
  if (!*out)
    return fail(errstr, errstr_size, "field '%s': out of memory", field);
  return 0;
}

/* An integer >= 0. Reals (1.0, 1e3) are refused: counts are integers and
 * a real that looks whole may not be. */
static int get_count(const json_t *value, const char *field, int64_t *out,
                     char *errstr, size_t errstr_size) {
  json_int_t number;
  if (!json_is_integer(value))
    return fail(errstr, errstr_size, "field '%s': must be an integer >= 0",
                field);
  number = json_integer_value(value);
  if (number < 0)
    return fail(errstr, errstr_size, "field '%s': must be an integer >= 0",
                field);
  *out = (int64_t)number;
  return 0;
}

/* Refuses any key of object not in allowed (NULL-terminated). */
static int check_keys(const json_t *object, const char *const *allowed,
                      const char *prefix, char *errstr, size_t errstr_size) {
  const char *key;
  json_t *value;
  json_object_foreach((json_t *)object, key, value) {
    int known = 0;
    (void)value;
    for (size_t i = 0; allowed[i] && !known; i++)
      known = strcmp(key, allowed[i]) == 0;
    if (!known)
      return fail(errstr, errstr_size, "unknown field '%s%s'", prefix, key);
  }
  return 0;
}

/* A member that is present and not null (null means absent). */
static const json_t *member(const json_t *object, const char *key) {
  const json_t *value = json_object_get(object, key);
  return json_is_null(value) ? NULL : value;
}

/* ------------------------------------------------------------------ */
/* Time                                                                */
/* ------------------------------------------------------------------ */

/* Reads exactly count digits at *text; advances it. -1 if not digits. */
static int read_digits(const char **text, int count) {
  int value = 0;
  for (int i = 0; i < count; i++) {
    char c = (*text)[i];
    if (c < '0' || c > '9')
      return -1;
    value = value * 10 + (c - '0');
  }
  *text += count;
  return value;
}

static int is_leap_year(int year) {
  return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
}

static int days_in_month(int year, int month) {
  static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return month == 2 && is_leap_year(year) ? 29 : days[month - 1];
}

/*
 * RFC 3339 date-time: YYYY-MM-DDTHH:MM:SS[.fraction](Z|+hh:mm|-hh:mm).
 * Fractions finer than a millisecond are truncated. Leap seconds (:60) are
 * refused: epoch milliseconds cannot represent them. The calendar maths is
 * timegm()'s, which ignores TZ and locale. 0, or -1 with a reason.
 */
static int parse_rfc3339(const char *text, int64_t *out_ms, char *reason,
                         size_t reason_size) {
  const char *p = text;
  struct tm tm;
  int year, month, day, hour, minute, second, millis = 0, offset_minutes = 0;
  time_t seconds;

  year = read_digits(&p, 4);
  if (year < 0 || *p++ != '-' || (month = read_digits(&p, 2)) < 0 ||
      *p++ != '-' || (day = read_digits(&p, 2)) < 0 ||
      (*p != 'T' && *p != 't') || (++p, (hour = read_digits(&p, 2)) < 0) ||
      *p++ != ':' || (minute = read_digits(&p, 2)) < 0 || *p++ != ':' ||
      (second = read_digits(&p, 2)) < 0)
    return fail(reason, reason_size, "expected YYYY-MM-DDTHH:MM:SSZ");
  if (month < 1 || month > 12 || day < 1 || day > days_in_month(year, month) ||
      hour > 23 || minute > 59 || second > 59)
    return fail(reason, reason_size, "date or time out of range");

  if (*p == '.') {
    int digits = 0;
    p++;
    while (*p >= '0' && *p <= '9') {
      if (digits < 3)
        millis = millis * 10 + (*p - '0');
      digits++;
      p++;
    }
    if (digits == 0 || digits > 9)
      return fail(reason, reason_size, "fraction must have 1 to 9 digits");
    for (int i = digits; i < 3; i++)
      millis *= 10;
  }

  if (*p == 'Z' || *p == 'z') {
    p++;
  } else if (*p == '+' || *p == '-') {
    int sign = *p++ == '-' ? -1 : 1, offset_hours, offset_mins;
    if ((offset_hours = read_digits(&p, 2)) < 0 || *p++ != ':' ||
        (offset_mins = read_digits(&p, 2)) < 0 || offset_hours > 23 ||
        offset_mins > 59)
      return fail(reason, reason_size, "bad UTC offset (expected +hh:mm)");
    offset_minutes = sign * (offset_hours * 60 + offset_mins);
  } else {
    return fail(reason, reason_size,
                "missing time zone (Z or +hh:mm); local times are ambiguous");
  }
  if (*p != '\0')
    return fail(reason, reason_size, "unexpected text after the time");

  memset(&tm, 0, sizeof(tm));
  tm.tm_year = year - 1900;
  tm.tm_mon = month - 1;
  tm.tm_mday = day;
  tm.tm_hour = hour;
  tm.tm_min = minute;
  tm.tm_sec = second;
  seconds = timegm(&tm);
  /* 10:00+02:00 is 08:00Z: subtract the offset. */
  seconds -= (time_t)offset_minutes * 60;
  if (seconds < 0)
    return fail(reason, reason_size, "before 1970-01-01T00:00:00Z");
  *out_ms = (int64_t)seconds * 1000 + millis;
  return 0;
}

/* A time: integer milliseconds since the epoch (>= 0) or RFC 3339. */
static int get_time(const json_t *value, const char *field, int64_t *out,
                    char *errstr, size_t errstr_size) {
  char reason[REASON_SIZE];
  const char *text;

  if (json_is_integer(value)) {
    if (json_integer_value(value) < 0)
      return fail(errstr, errstr_size, "field '%s': milliseconds must be >= 0",
                  field);
    if (json_integer_value(value) > TLY_TIME_MAX_MS)
      return fail(errstr, errstr_size,
                  "field '%s': milliseconds must be at most %lld "
                  "(9999-12-31T23:59:59.999Z)",
                  field, TLY_TIME_MAX_MS);
    *out = (int64_t)json_integer_value(value);
    return 0;
  }
  if (!json_is_string(value))
    return fail(errstr, errstr_size,
                "field '%s': must be integer milliseconds since the "
                "epoch or an RFC 3339 string such as "
                "\"2026-11-23T10:00:00Z\"",
                field);
  text = json_string_value(value);
  if (strlen(text) != json_string_length(value))
    return fail(errstr, errstr_size, "field '%s': contains NUL", field);
  if (parse_rfc3339(text, out, reason, sizeof(reason)))
    return fail(errstr, errstr_size, "field '%s': not an RFC 3339 UTC time: %s",
                field, reason);
  if (!tly_event_time_in_range(*out)) /* 9999-12-31T23:59Z-01:00 */
    return fail(errstr, errstr_size,
                "field '%s': after 9999-12-31T23:59:59.999Z", field);
  return 0;
}

/* ------------------------------------------------------------------ */
/* Subject                                                             */
/* ------------------------------------------------------------------ */

/* Shared by the string and object forms: checks, then copies the id.
 * Reasons are bare ("unknown kind ..."); callers add the field name. */
static int finish_subject(tly_subject_kind_t kind, const char *id,
                          size_t id_length, tly_subject_kind_t *kind_out,
                          char **id_out, char *reason, size_t reason_size) {
  char *copy;

  if (strlen(id) != id_length)
    return fail(reason, reason_size, "id must not contain NUL");
  if (tly_subject_validate(kind, id, reason, reason_size))
    return -1;
  copy = strdup(id);
  if (!copy)
    return fail(reason, reason_size, "out of memory");
  *kind_out = kind;
  *id_out = copy;
  return 0;
}

static int parse_subject_text(const char *text, tly_subject_kind_t *kind,
                              char **id_out, char *reason, size_t reason_size) {
  const char *colon = strchr(text, ':');
  char kind_name[16];
  size_t kind_length;
  tly_subject_kind_t parsed;

  if (!colon) /* A bare id is a user, the common case for humans. */
    return finish_subject(TLY_SUBJECT_USER, text, strlen(text), kind, id_out,
                          reason, reason_size);

  /* "usr:alice" is a typo, not a user called "usr:alice": an unknown kind
   * before the first colon is refused. */
  kind_length = (size_t)(colon - text);
  if (kind_length >= sizeof(kind_name))
    return fail(reason, reason_size,
                "unknown kind before ':' (expected user, api_key or "
                "anonymous)");
  memcpy(kind_name, text, kind_length);
  kind_name[kind_length] = '\0';
  if (tly_subject_kind_parse(kind_name, &parsed))
    return fail(reason, reason_size,
                "unknown kind '%s' (expected user, api_key or anonymous)",
                kind_name);
  return finish_subject(parsed, colon + 1, strlen(colon + 1), kind, id_out,
                        reason, reason_size);
}

int tly_subject_parse(const char *text, tly_subject_kind_t *kind, char **id_out,
                      char *errstr, size_t errstr_size) {
  char reason[REASON_SIZE];

  if (!text || !kind || !id_out)
    return fail(errstr, errstr_size, "subject: missing argument");
  *id_out = NULL;
  if (parse_subject_text(text, kind, id_out, reason, sizeof(reason)))
    return fail(errstr, errstr_size, "subject: %s", reason);
  return 0;
}

static int get_subject(const json_t *value, tly_event_t *event, char *errstr,
                       size_t errstr_size) {
  static const char *const allowed[] = {"kind", "id", NULL};
  char reason[REASON_SIZE];
  const json_t *kind, *id;
  tly_subject_kind_t parsed;

  if (json_is_string(value)) {
    if (strlen(json_string_value(value)) != json_string_length(value))
      return fail(errstr, errstr_size, "field 'subject': must not contain NUL");
    if (parse_subject_text(json_string_value(value), &event->subject_kind,
                           &event->subject_id, reason, sizeof(reason)))
      return fail(errstr, errstr_size, "field 'subject': %s", reason);
    return 0;
  }
  if (!json_is_object(value))
    return fail(errstr, errstr_size,
                "field 'subject': must be a string (\"user:alice\") or an "
                "object {\"kind\": ..., \"id\": ...}");
  if (check_keys(value, allowed, "subject.", errstr, errstr_size))
    return -1;
  kind = json_object_get(value, "kind");
  id = json_object_get(value, "id");
  if (!json_is_string(kind) ||
      tly_subject_kind_parse(json_string_value(kind), &parsed))
    return fail(errstr, errstr_size,
                "field 'subject.kind': must be one of user, api_key, "
                "anonymous");
  if (!json_is_string(id))
    return fail(errstr, errstr_size,
                "field 'subject.id': must be a non-empty string");
  if (finish_subject(parsed, json_string_value(id), json_string_length(id),
                     &event->subject_kind, &event->subject_id, reason,
                     sizeof(reason)))
    return fail(errstr, errstr_size, "field 'subject.id': %s", reason);
  return 0;
}

/* ------------------------------------------------------------------ */
/* Usage body                                                          */
/* ------------------------------------------------------------------ */

static int get_ai(const json_t *value, tly_ai_usage_t *ai, char *errstr,
                  size_t errstr_size) {
  static const char *const allowed[] = {"provider", "model", "input_tokens",
                                        "output_tokens", NULL};
  static const char *const required[] = {"provider", "model", "input_tokens",
                                         "output_tokens"};

  if (!json_is_object(value))
    return fail(errstr, errstr_size, "field 'ai': must be an object");
  if (check_keys(value, allowed, "ai.", errstr, errstr_size))
    return -1;
  for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++)
    if (!json_object_get(value, required[i]))
      return fail(errstr, errstr_size, "field 'ai.%s': required", required[i]);
  if (copy_string(json_object_get(value, "provider"), "ai.provider", 1,
                  &ai->provider, errstr, errstr_size) ||
      copy_string(json_object_get(value, "model"), "ai.model", 1, &ai->model,
                  errstr, errstr_size) ||
      get_count(json_object_get(value, "input_tokens"), "ai.input_tokens",
                &ai->input_tokens, errstr, errstr_size) ||
      get_count(json_object_get(value, "output_tokens"), "ai.output_tokens",
                &ai->output_tokens, errstr, errstr_size))
    return -1;
  return 0;
}

static int get_properties(const json_t *value, tly_usage_recorded_t *usage,
                          char *errstr, size_t errstr_size) {
  const char *key;
  json_t *item;
  size_t count;

  if (!json_is_object(value))
    return fail(errstr, errstr_size,
                "field 'properties': must be an object of strings");
  count = json_object_size(value);
  if (!count)
    return 0;
  usage->properties = calloc(count, sizeof(*usage->properties));
  if (!usage->properties)
    return fail(errstr, errstr_size, "field 'properties': out of memory");
  json_object_foreach((json_t *)value, key, item) {
    tly_property_t *property = &usage->properties[usage->property_count];
    char field[80];

    snprintf(field, sizeof(field), "properties.%s", key);
    /* Counted first so tly_event_clear() frees what was copied. */
    usage->property_count++;
    property->key = strdup(key);
    if (!property->key)
      return fail(errstr, errstr_size, "field 'properties': out of memory");
    if (copy_string(item, field, 0, &property->value, errstr, errstr_size))
      return -1;
  }
  return 0;
}

/* ------------------------------------------------------------------ */
/* Entry points                                                        */
/* ------------------------------------------------------------------ */

/* UsageRecorded's own fields (the envelope's are checked apart). */
static const char *const usage_keys[] = {
    "feature", "quantity", "unit", "ai", "properties", "reservation_id", NULL};
/* UsageCorrected's: no properties (its dimensions are the original's). */
static const char *const corrected_keys[] = {"corrects", "feature", "quantity",
                                             "unit",     "ai",      NULL};

/* "reservation_id": the reservation this usage settles, carried in the
 * properties map under TLY_RESERVATION_PROPERTY (UsageRecorded has no field
 * for it, and its Avro layout stays as third parties know it). */
static int get_reservation_id(const json_t *value, tly_usage_recorded_t *usage,
                              char *errstr, size_t errstr_size) {
  if (!json_is_string(value) ||
      strlen(json_string_value(value)) != json_string_length(value) ||
      !tly_reservation_id_is_valid(json_string_value(value)))
    return fail(errstr, errstr_size,
                "field 'reservation_id': must be 1 to %d characters of "
                "A-Z, a-z, 0-9, '_' and '-'",
                TLY_RESERVATION_ID_MAX);
  if (tly_usage_reservation_id(usage))
    return fail(errstr, errstr_size,
                "field 'reservation_id': also given as "
                "properties." TLY_RESERVATION_PROPERTY "; give it once");
  if (usage->property_count >= TLY_EVENT_PROPERTIES_MAX)
    return fail(errstr, errstr_size,
                "field 'properties': %zu entries and reservation_id, at most "
                "%d in all",
                usage->property_count, TLY_EVENT_PROPERTIES_MAX);
  tly_property_t *grown =
      realloc(usage->properties,
              (usage->property_count + 1) * sizeof(*usage->properties));
  if (!grown)
    return fail(errstr, errstr_size, "field 'reservation_id': out of memory");
  usage->properties = grown;
  tly_property_t *property = &usage->properties[usage->property_count++];
  property->key = strdup(TLY_RESERVATION_PROPERTY);
  property->value = strdup(json_string_value(value));
  if (!property->key || !property->value)
    return fail(errstr, errstr_size, "field 'reservation_id': out of memory");
  return 0;
}

static int fill_usage(const json_t *object, tly_usage_recorded_t *usage,
                      char *errstr, size_t errstr_size) {
  const json_t *value;

  if (!(value = json_object_get(object, "feature")))
    return fail(errstr, errstr_size, "field 'feature': required");
  if (copy_string(value, "feature", 1, &usage->feature, errstr, errstr_size))
    return -1;

  if (!(value = json_object_get(object, "quantity")))
    return fail(errstr, errstr_size, "field 'quantity': required");
  if (get_count(value, "quantity", &usage->quantity, errstr, errstr_size))
    return -1;

  if ((value = member(object, "unit"))) {
    if (copy_string(value, "unit", 0, &usage->unit, errstr, errstr_size))
      return -1;
  } else if (!(usage->unit = strdup(""))) {
    return fail(errstr, errstr_size, "field 'unit': out of memory");
  }

  if ((value = member(object, "ai"))) {
    usage->has_ai = 1;
    if (get_ai(value, &usage->ai, errstr, errstr_size))
      return -1;
  }

  if ((value = member(object, "properties")) &&
      get_properties(value, usage, errstr, errstr_size))
    return -1;
  if ((value = member(object, "reservation_id")) &&
      get_reservation_id(value, usage, errstr, errstr_size))
    return -1;
  return 0;
}

/* One field of a table-described body; absent (or null) optional fields
 * take their zero value ("" for strings). */
static int fill_flat_field(const json_t *object, const tly_body_field_t *field,
                           tly_event_t *event, char *errstr,
                           size_t errstr_size) {
  const json_t *value = member(object, field->name);
  int64_t number = 0;

  if (!value && field->json_required)
    return fail(errstr, errstr_size, "field '%s': required", field->name);
  switch (field->kind) {
  case TLY_FIELD_TEXT:
  case TLY_FIELD_TEXT_OPTIONAL:
    if (value)
      return copy_string(value, field->name, field->kind == TLY_FIELD_TEXT,
                         tly_body_text(event, field), errstr, errstr_size);
    if (!(*tly_body_text(event, field) = strdup("")))
      return fail(errstr, errstr_size, "field '%s': out of memory",
                  field->name);
    return 0;
  case TLY_FIELD_MICROS:
  case TLY_FIELD_COUNT64:
    return value ? get_count(value, field->name, tly_body_int64(event, field),
                             errstr, errstr_size)
                 : 0;
  case TLY_FIELD_TIME:
    return value ? get_time(value, field->name, tly_body_int64(event, field),
                            errstr, errstr_size)
                 : 0;
  case TLY_FIELD_COUNT32:
    if (value && get_count(value, field->name, &number, errstr, errstr_size))
      return -1;
    if (number > INT32_MAX)
      return fail(errstr, errstr_size, "field '%s': must be at most %d",
                  field->name, INT32_MAX);
    *tly_body_int32(event, field) = (int32_t)number;
    return 0;
  }
  return fail(errstr, errstr_size, "field '%s': unsupported kind", field->name);
}

/* The "type" member: absent or null means usage_recorded. */
static int get_type(const json_t *object, tly_body_kind_t *kind, char *errstr,
                    size_t errstr_size) {
  const json_t *value = member(object, "type");
  const char *name;

  *kind = TLY_BODY_USAGE_RECORDED;
  if (!value)
    return 0;
  if (!json_is_string(value) ||
      strlen(json_string_value(value)) != json_string_length(value))
    return fail(errstr, errstr_size, "field 'type': must be a string");
  name = json_string_value(value);
  for (int i = 0; i < TLY_BODY__COUNT; i++) {
    if (strcmp(name, tly_body_specs[i].type_name) != 0)
      continue;
    if (!tly_body_specs[i].from_json)
      return fail(errstr, errstr_size,
                  i == TLY_BODY_TICK
                      ? "field 'type': '%s' events are written by the "
                        "processor only, never from JSON"
                      : "field 'type': '%s' events are written by tally only "
                        "(POST /v1/subjects/{subject}/reservations), never "
                        "from JSON",
                  name);
    *kind = (tly_body_kind_t)i;
    return 0;
  }
  return fail(errstr, errstr_size,
              "field 'type': unknown type '%.64s' (expected usage_recorded, "
              "usage_corrected, plan_assigned, subscription_changed, "
              "subscription_canceled, "
              "invoice_paid, payment_failed or customer_linked)",
              name);
}

/* Every key must belong to the envelope or to the body of this type. */
static int check_event_keys(const json_t *object, tly_body_kind_t kind,
                            char *errstr, size_t errstr_size) {
  static const char *const envelope_keys[] = {"event_id", "occurred_at",
                                              "subject", "type", NULL};
  const tly_body_spec_t *spec = &tly_body_specs[kind];
  const char *key;
  json_t *value;

  json_object_foreach((json_t *)object, key, value) {
    int known = 0;
    (void)value;
    for (size_t i = 0; envelope_keys[i] && !known; i++)
      known = strcmp(key, envelope_keys[i]) == 0;
    if (kind == TLY_BODY_USAGE_RECORDED)
      for (size_t i = 0; usage_keys[i] && !known; i++)
        known = strcmp(key, usage_keys[i]) == 0;
    if (kind == TLY_BODY_USAGE_CORRECTED)
      for (size_t i = 0; corrected_keys[i] && !known; i++)
        known = strcmp(key, corrected_keys[i]) == 0;
    for (size_t i = 0; i < spec->field_count && !known; i++)
      known = strcmp(key, spec->fields[i].name) == 0;
    if (!known)
      return fail(errstr, errstr_size,
                  "unknown field '%s' (not a field of %s events)", key,
                  spec->type_name);
  }
  return 0;
}

static int fill_event(const json_t *object, int64_t now_ms, tly_event_t *event,
                      char *errstr, size_t errstr_size) {
  const tly_body_spec_t *spec;
  tly_body_kind_t kind;
  const json_t *value;
  char reason[REASON_SIZE];

  if (!json_is_object(object))
    return fail(errstr, errstr_size, "event: must be a JSON object");
  if (get_type(object, &kind, errstr, errstr_size) ||
      check_event_keys(object, kind, errstr, errstr_size))
    return -1;
  /* Set before any body field is copied so that clear frees them. */
  event->body_kind = kind;
  spec = &tly_body_specs[kind];

  if (!(value = json_object_get(object, "event_id")))
    return fail(errstr, errstr_size, "field 'event_id': required");
  if (copy_string(value, "event_id", 1, &event->event_id, errstr, errstr_size))
    return -1;

  event->occurred_at_ms = now_ms;
  if ((value = member(object, "occurred_at")) &&
      get_time(value, "occurred_at", &event->occurred_at_ms, errstr,
               errstr_size))
    return -1;

  if (!(value = json_object_get(object, "subject")))
    return fail(errstr, errstr_size, "field 'subject': required");
  if (get_subject(value, event, errstr, errstr_size))
    return -1;

  if (kind == TLY_BODY_USAGE_CORRECTED) {
    if (!(value = json_object_get(object, "corrects")))
      return fail(errstr, errstr_size, "field 'corrects': required");
    if (copy_string(value, "corrects", 1, &event->body.usage.corrects, errstr,
                    errstr_size))
      return -1;
  }
  if (TLY_BODY_IS_USAGE(kind)) {
    if (fill_usage(object, &event->body.usage, errstr, errstr_size))
      return -1;
  } else {
    for (size_t i = 0; i < spec->field_count; i++)
      if (fill_flat_field(object, &spec->fields[i], event, errstr, errstr_size))
        return -1;
  }

  /* The shared rule book: what the JSON shape cannot say (periods in
   * order, the system subject only for ticks). */
  if (tly_event_validate(event, reason, sizeof(reason)))
    return fail(errstr, errstr_size, "%s", reason);
  return 0;
}

int tly_event_from_json(const json_t *object, int64_t now_ms,
                        tly_event_t *event, char *errstr, size_t errstr_size) {
  if (!event)
    return fail(errstr, errstr_size, "event: missing argument");
  tly_event_clear(event);
  if (fill_event(object, now_ms, event, errstr, errstr_size)) {
    tly_event_clear(event);
    return -1;
  }
  return 0;
}

int tly_event_from_json_text(const char *text, size_t len, int64_t now_ms,
                             tly_event_t *event, char *errstr,
                             size_t errstr_size) {
  json_error_t error;
  json_t *object;
  int rc;

  if (!event)
    return fail(errstr, errstr_size, "event: missing argument");
  tly_event_clear(event);
  if (!text)
    return fail(errstr, errstr_size, "invalid JSON: no text");
  /* Duplicate keys are refused: {"quantity": 1, "quantity": 100} has no
   * single meaning, and which one wins differs between parsers. */
  object = json_loadb(text, len, JSON_REJECT_DUPLICATES, &error);
  if (!object)
    return fail(errstr, errstr_size, "invalid JSON at line %d column %d: %s",
                error.line, error.column, error.text);
  rc = tly_event_from_json(object, now_ms, event, errstr, errstr_size);
  json_decref(object);
  return rc;
}

/* ------------------------------------------------------------------ */
/* Writing                                                             */
/* ------------------------------------------------------------------ */

/* Adds a member; NULL (invalid UTF-8, out of memory) fails. Steals value. */
static int put(json_t *object, const char *key, json_t *value) {
  return value && json_object_set_new(object, key, value) == 0 ? 0 : -1;
}

static int put_text(json_t *object, const char *key, const char *text) {
  return put(object, key, json_string(text ? text : ""));
}

static int put_usage(json_t *object, const tly_usage_recorded_t *usage) {
  json_t *ai, *properties;

  if (put_text(object, "feature", usage->feature) ||
      put(object, "quantity", json_integer(usage->quantity)) ||
      put_text(object, "unit", usage->unit))
    return -1;
  if (usage->has_ai) {
    if (put(object, "ai", ai = json_object()) ||
        put_text(ai, "provider", usage->ai.provider) ||
        put_text(ai, "model", usage->ai.model) ||
        put(ai, "input_tokens", json_integer(usage->ai.input_tokens)) ||
        put(ai, "output_tokens", json_integer(usage->ai.output_tokens)))
      return -1;
  }
  if (usage->property_count) {
    if (put(object, "properties", properties = json_object()))
      return -1;
    for (size_t i = 0; i < usage->property_count; i++)
      if (!usage->properties[i].key ||
          put_text(properties, usage->properties[i].key,
                   usage->properties[i].value))
        return -1;
  }
  return 0;
}

static int put_flat(json_t *object, const tly_event_t *event) {
  const tly_body_spec_t *spec = &tly_body_specs[event->body_kind];
  for (size_t i = 0; i < spec->field_count; i++) {
    const tly_body_field_t *field = &spec->fields[i];
    int rc;
    switch (field->kind) {
    case TLY_FIELD_TEXT:
    case TLY_FIELD_TEXT_OPTIONAL:
      rc = put_text(object, field->name, tly_body_text_get(event, field));
      break;
    case TLY_FIELD_COUNT32:
      rc = put(object, field->name,
               json_integer(tly_body_int32_get(event, field)));
      break;
    default:
      rc = put(object, field->name,
               json_integer(tly_body_int64_get(event, field)));
      break;
    }
    if (rc)
      return -1;
  }
  return 0;
}

int tly_event_to_json(const tly_event_t *event, json_t **out) {
  json_t *object;
  char *subject = NULL;
  size_t subject_len;
  int rc = -1;

  if (!event || !out)
    return -1;
  *out = NULL;
  if (!tly_subject_kind_name(event->subject_kind) || !event->subject_id ||
      (int)event->body_kind < 0 || event->body_kind >= TLY_BODY__COUNT)
    return -1;
  object = json_object();
  subject_len =
      tly_subject_key(event->subject_kind, event->subject_id, NULL, 0);
  subject = malloc(subject_len + 1);
  if (!object || !subject)
    goto done;
  tly_subject_key(event->subject_kind, event->subject_id, subject,
                  subject_len + 1);
  if (put_text(object, "type", tly_body_specs[event->body_kind].type_name) ||
      put_text(object, "event_id", event->event_id) ||
      put(object, "occurred_at", json_integer(event->occurred_at_ms)) ||
      put_text(object, "subject", subject))
    goto done;
  if (event->body_kind == TLY_BODY_USAGE_CORRECTED &&
      put_text(object, "corrects", event->body.usage.corrects))
    goto done;
  if (TLY_BODY_IS_USAGE(event->body_kind)
          ? put_usage(object, &event->body.usage)
          : put_flat(object, event))
    goto done;
  *out = object;
  object = NULL;
  rc = 0;

done:
  json_decref(object);
  free(subject);
  return rc;
}
