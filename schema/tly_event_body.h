/*
 * tly_event_body.h - one table describing the flat event bodies (every
 * body kind except UsageRecorded, whose ai record and properties map are
 * handled by hand). Internal to schema/.
 * Owns the body table; never does I/O.
 *
 * The validator, the Avro codec and the JSON reader and writer all walk
 * this table, so a field added to a body is added in one place: its name
 * (the same in Avro and JSON), its kind, and where it sits in the C struct.
 */
#ifndef TLY_EVENT_BODY_H
#define TLY_EVENT_BODY_H

#include "tly_event.h"

#include <stddef.h>
#include <stdint.h>

typedef enum {
  TLY_FIELD_TEXT,          /* char *, required non-empty */
  TLY_FIELD_TEXT_OPTIONAL, /* char *, may be "" (never NULL after decode) */
  TLY_FIELD_MICROS,        /* int64_t money, >= 0, required */
  TLY_FIELD_TIME,          /* int64_t ms since the epoch, >= 0, 0 = unknown */
  TLY_FIELD_COUNT32,       /* int32_t >= 0 (Avro int) */
  TLY_FIELD_COUNT64,       /* int64_t >= 0 (Avro long), required */
} tly_field_kind_t;

typedef struct {
  const char *name; /* Avro field and JSON key */
  tly_field_kind_t kind;
  size_t offset; /* from &event->body */
  int json_required;
  size_t max_len; /* text fields: at most this many bytes (tly_event.h) */
} tly_body_field_t;

#define TLY_BODY_MAX_FIELDS 5

typedef struct {
  const char *type_name;   /* JSON "type": "plan_assigned" */
  const char *record_name; /* Avro record in the body union */
  int from_json;           /* accepted by the JSON reader */
  size_t field_count;      /* 0 for UsageRecorded (hand-written) */
  tly_body_field_t fields[TLY_BODY_MAX_FIELDS];
  /* index of the period start/end fields (end > start when both are
   * given), or -1 */
  int period_start, period_end;
} tly_body_spec_t;

/* Indexed by tly_body_kind_t; every kind has an entry. */
extern const tly_body_spec_t tly_body_specs[TLY_BODY__COUNT];

/* The spec of kind, or NULL when out of range. */
const tly_body_spec_t *tly_body_spec(tly_body_kind_t kind);

/* Addresses of a field inside an event's body (mutable and read-only). */
static inline char **tly_body_text(tly_event_t *event,
                                   const tly_body_field_t *field) {
  return (char **)(void *)((char *)&event->body + field->offset);
}
static inline int64_t *tly_body_int64(tly_event_t *event,
                                      const tly_body_field_t *field) {
  return (int64_t *)(void *)((char *)&event->body + field->offset);
}
static inline int32_t *tly_body_int32(tly_event_t *event,
                                      const tly_body_field_t *field) {
  return (int32_t *)(void *)((char *)&event->body + field->offset);
}
static inline const char *tly_body_text_get(const tly_event_t *event,
                                            const tly_body_field_t *field) {
  return *(char *const *)(const void *)((const char *)&event->body +
                                        field->offset);
}
static inline int64_t tly_body_int64_get(const tly_event_t *event,
                                         const tly_body_field_t *field) {
  return *(const int64_t *)(const void *)((const char *)&event->body +
                                          field->offset);
}
static inline int32_t tly_body_int32_get(const tly_event_t *event,
                                         const tly_body_field_t *field) {
  return *(const int32_t *)(const void *)((const char *)&event->body +
                                          field->offset);
}

/* The system subject's only id: ticks are not about any customer. */
#define TLY_SYSTEM_SUBJECT_ID "tick"

#endif
