/*
 * tly_codec.c - the envelope's Avro binary encoding with Confluent framing,
 * built on avro-c's value interface.
 *
 * A framed message is [0][schema id, 4 bytes big-endian][Avro binary]. The
 * codec owns one generic avro value, one memory reader and one memory writer
 * and reuses them for every call: creating them per message costs more than
 * the decoding itself.
 *
 * Decoding walks the bytes twice: first tly_avro_validate() (tly_avro.c,
 * whose header comment says why avro-c cannot be given untrusted bytes
 * directly) checks them against a tree compiled from the schema here, and
 * only then does avro_value_read() run, on input in which every allocation
 * it makes is bounded by the input's size.
 *
 * UsageRecorded (optional ai record, properties map) is read and written by
 * hand; every other body is a flat record described in tly_body_specs
 * (tly_event_body.h), whose fields are resolved by name at tly_codec_new()
 * so a schema edit that moves or retypes a field is caught there.
 *
 * Threads: one codec per thread (see tly_codec.h). Beyond that, avro-c
 * 1.11.1 keeps avro_strerror()'s text in one process-wide buffer (no
 * thread-local storage), so under concurrency that text may be another
 * thread's. Our own messages never depend on it except after an avro-c
 * failure that the walk leaves possible only through memory exhaustion.
 */
#include "tly_codec.h"
#include "tly_avro.h"
#include "tly_event_body.h"
#include "tly_resolve.h"

#include <avro.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(TLY_CODEC_HEADER_SIZE == TLY_AVRO_HEADER_SIZE,
               "one framing for every codec");

/* Where a record read into body.usage keeps its fields (UsageRecorded has
 * properties and no corrects, UsageCorrected the reverse: SIZE_MAX for a
 * field the record lacks). */
typedef struct {
  size_t feature, quantity, unit, ai, properties, corrects;
  int ai_null_branch, ai_record_branch;
  size_t provider, model, input_tokens, output_tokens;
} usage_layout_t;

/* Which usage_layout_t of the layout a usage body kind reads through. */
#define USAGE_OF(kind) ((kind) == TLY_BODY_USAGE_CORRECTED ? 1 : 0)

/* Positions of the fields the codec reads and writes, resolved by name at
 * tly_codec_new() so a schema edit that moves a field is caught there. */
typedef struct {
  size_t event_id, occurred_at, subject, body;
  size_t subject_kind, subject_id;
  /* body union discriminant of each body kind (== the kind: checked) */
  int branch[TLY_BODY__COUNT];
  /* flat bodies: record field index of each tly_body_specs field */
  size_t field[TLY_BODY__COUNT][TLY_BODY_MAX_FIELDS];
  /* body.usage's records: [0] UsageRecorded, [1] UsageCorrected */
  usage_layout_t usage[2];
} layout_t;

struct tly_codec {
  int32_t schema_id;
  tly_avro_base_t base; /* schema, shape, reused value, reader, output */
  const tly_avro_shape_t *properties_shape;
  layout_t layout;
  /* flat bodies: the tly_body_specs field of each record field, -1 none */
  int flat_target[TLY_BODY__COUNT][TLY_BODY_MAX_FIELDS * 2];
  /* tly_codec_decode_view()'s memory, reused: strings and properties */
  char *arena;
  size_t arena_cap;
  tly_property_t *properties;
  size_t properties_cap;
  /* Other writers' schema ids (tly_resolve.h), and the record of such an
   * id as it reads in our schema (its own buffer: base.out is encode's). */
  tly_resolver_t *writers;
  tly_avro_out_t translated;
};

/* Where the writer's properties map is, to count its entries. */
static const char *const properties_path[] = {"body", "UsageRecorded",
                                              "properties", NULL};

/* ------------------------------------------------------------------ */
/* Layout: where our fields sit in the schema                          */
/* ------------------------------------------------------------------ */

static avro_type_t field_avro_type(tly_field_kind_t kind) {
  switch (kind) {
  case TLY_FIELD_TEXT:
  case TLY_FIELD_TEXT_OPTIONAL:
    return AVRO_STRING;
  case TLY_FIELD_COUNT32:
    return AVRO_INT32;
  case TLY_FIELD_MICROS:
  case TLY_FIELD_TIME:
  case TLY_FIELD_COUNT64:
  default:
    return AVRO_INT64;
  }
}

/* Every flat body: its branch, and each of its fields by name and type. */
static int layout_flat_bodies(layout_t *l, avro_schema_t body, char *errstr,
                              size_t errstr_size) {
  if (avro_schema_union_size(body) != TLY_BODY__COUNT)
    return tly_avro_fail(errstr, errstr_size,
                         "schema: body union has %zu branches, expected %d",
                         avro_schema_union_size(body), TLY_BODY__COUNT);
  for (int kind = 0; kind < TLY_BODY__COUNT; kind++) {
    const tly_body_spec_t *spec = &tly_body_specs[kind];
    avro_schema_t record = NULL;

    if (tly_avro_layout_branch(body, spec->record_name, &l->branch[kind],
                               &record, errstr, errstr_size))
      return -1;
    /* tly_body_kind_t is documented as the branch order; hold it to it. */
    if (l->branch[kind] != kind)
      return tly_avro_fail(errstr, errstr_size,
                           "schema: body branch %d is %s, expected branch %d",
                           l->branch[kind], spec->record_name, kind);
    if (spec->field_count &&
        avro_schema_record_size(record) != spec->field_count)
      return tly_avro_fail(errstr, errstr_size,
                           "schema: %s has %zu fields, expected %zu",
                           spec->record_name, avro_schema_record_size(record),
                           spec->field_count);
    for (size_t i = 0; i < spec->field_count; i++)
      if (tly_avro_layout_field(record, spec->fields[i].name,
                                field_avro_type(spec->fields[i].kind),
                                &l->field[kind][i], NULL, errstr, errstr_size))
        return -1;
  }
  return 0;
}

/* A usage-shaped record: UsageRecorded (properties wanted: *properties
 * gets the map's schema) or UsageCorrected (properties NULL: corrects). */
static int layout_usage(avro_schema_t usage, const char *ai_name,
                        usage_layout_t *u, avro_schema_t *properties,
                        char *errstr, size_t errstr_size) {
  avro_schema_t ai = NULL, ai_record = NULL;
  u->properties = u->corrects = SIZE_MAX;
  if (tly_avro_layout_field(usage, "feature", AVRO_STRING, &u->feature, NULL,
                            errstr, errstr_size) ||
      tly_avro_layout_field(usage, "quantity", AVRO_INT64, &u->quantity, NULL,
                            errstr, errstr_size) ||
      tly_avro_layout_field(usage, "unit", AVRO_STRING, &u->unit, NULL, errstr,
                            errstr_size) ||
      tly_avro_layout_field(usage, "ai", AVRO_UNION, &u->ai, &ai, errstr,
                            errstr_size) ||
      tly_avro_layout_branch(ai, NULL, &u->ai_null_branch, NULL, errstr,
                             errstr_size) ||
      tly_avro_layout_branch(ai, ai_name, &u->ai_record_branch, &ai_record,
                             errstr, errstr_size) ||
      tly_avro_layout_field(ai_record, "provider", AVRO_STRING, &u->provider,
                            NULL, errstr, errstr_size) ||
      tly_avro_layout_field(ai_record, "model", AVRO_STRING, &u->model, NULL,
                            errstr, errstr_size) ||
      tly_avro_layout_field(ai_record, "input_tokens", AVRO_INT64,
                            &u->input_tokens, NULL, errstr, errstr_size) ||
      tly_avro_layout_field(ai_record, "output_tokens", AVRO_INT64,
                            &u->output_tokens, NULL, errstr, errstr_size))
    return -1;
  if (properties)
    return tly_avro_layout_field(usage, "properties", AVRO_MAP, &u->properties,
                                 properties, errstr, errstr_size);
  return tly_avro_layout_field(usage, "corrects", AVRO_STRING, &u->corrects,
                               NULL, errstr, errstr_size);
}

static int layout_resolve(tly_codec_t *codec, char *errstr,
                          size_t errstr_size) {
  const char *kind_names[TLY_SUBJECT__COUNT];
  layout_t *l = &codec->layout;
  avro_schema_t subject = NULL, kind = NULL, body = NULL, usage = NULL;
  avro_schema_t properties = NULL;

  if (!is_avro_record(codec->base.schema))
    return tly_avro_fail(errstr, errstr_size,
                         "schema: envelope is not a record");
  if (tly_avro_layout_field(codec->base.schema, "event_id", AVRO_STRING,
                            &l->event_id, NULL, errstr, errstr_size) ||
      tly_avro_layout_field(codec->base.schema, "occurred_at", AVRO_INT64,
                            &l->occurred_at, NULL, errstr, errstr_size) ||
      tly_avro_layout_field(codec->base.schema, "subject", AVRO_RECORD,
                            &l->subject, &subject, errstr, errstr_size) ||
      tly_avro_layout_field(codec->base.schema, "body", AVRO_UNION, &l->body,
                            &body, errstr, errstr_size) ||
      tly_avro_layout_field(subject, "kind", AVRO_ENUM, &l->subject_kind, &kind,
                            errstr, errstr_size) ||
      tly_avro_layout_field(subject, "id", AVRO_STRING, &l->subject_id, NULL,
                            errstr, errstr_size) ||
      layout_flat_bodies(l, body, errstr, errstr_size))
    return -1;
  usage = avro_schema_union_branch(body, l->branch[TLY_BODY_USAGE_RECORDED]);
  if (layout_usage(usage, "AiUsage", &l->usage[0], &properties, errstr,
                   errstr_size) ||
      layout_usage(
          avro_schema_union_branch(body, l->branch[TLY_BODY_USAGE_CORRECTED]),
          "CorrectedAiUsage", &l->usage[1], NULL, errstr, errstr_size))
    return -1;
  if (!is_avro_string(avro_schema_map_values(properties)))
    return tly_avro_fail(errstr, errstr_size,
                         "schema: properties values are not strings");

  /* tly_subject_kind_t is used as the enum index directly. */
  for (int i = 0; i < TLY_SUBJECT__COUNT; i++)
    kind_names[i] = tly_subject_kind_name((tly_subject_kind_t)i);
  if (tly_avro_check_symbols(kind, "SubjectKind", kind_names,
                             TLY_SUBJECT__COUNT, errstr, errstr_size))
    return -1;

  /* The direct decoder reads flat records field by field in schema order:
   * which spec field each record field fills. */
  for (int body_kind = 0; body_kind < TLY_BODY__COUNT; body_kind++) {
    const tly_avro_shape_t *record =
        &codec->base.root.children[l->body].children[l->branch[body_kind]];
    if (record->child_count > TLY_BODY_MAX_FIELDS * 2)
      return tly_avro_fail(errstr, errstr_size,
                           "schema: body %d has too many fields", body_kind);
    for (size_t j = 0; j < TLY_BODY_MAX_FIELDS * 2; j++)
      codec->flat_target[body_kind][j] = -1;
    if (TLY_BODY_IS_USAGE(body_kind))
      continue;
    for (size_t i = 0; i < tly_body_specs[body_kind].field_count; i++)
      codec->flat_target[body_kind][l->field[body_kind][i]] = (int)i;
  }

  /* The validator's shape for body.properties, for duplicate-key counting. */
  codec->properties_shape = &codec->base.root.children[l->body]
                                 .children[l->branch[TLY_BODY_USAGE_RECORDED]]
                                 .children[l->usage[0].properties];
  return 0;
}

/* ------------------------------------------------------------------ */
/* Lifecycle                                                           */
/* ------------------------------------------------------------------ */

tly_codec_t *tly_codec_new(int32_t schema_id, char *errstr,
                           size_t errstr_size) {
  tly_codec_t *codec;

  if (schema_id < 0) {
    tly_avro_fail(errstr, errstr_size, "schema id %" PRId32 " is negative",
                  schema_id);
    return NULL;
  }
  codec = calloc(1, sizeof(*codec));
  if (!codec) {
    tly_avro_fail(errstr, errstr_size, "out of memory");
    return NULL;
  }
  codec->schema_id = schema_id;

  if (tly_avro_base_init(&codec->base, tly_event_schema_json,
                         "the envelope schema", errstr, errstr_size) ||
      layout_resolve(codec, errstr, errstr_size) ||
      tly_avro_out_init(&codec->translated, errstr, errstr_size))
    goto fail;
  codec->writers = tly_resolver_new(codec->base.schema, "tally's event schema",
                                    properties_path);
  if (!codec->writers) {
    tly_avro_fail(errstr, errstr_size, "out of memory");
    goto fail;
  }
  return codec;

fail:
  tly_codec_destroy(codec);
  return NULL;
}

void tly_codec_destroy(tly_codec_t *codec) {
  if (!codec)
    return;
  tly_resolver_destroy(codec->writers);
  tly_avro_out_free(&codec->translated);
  tly_avro_base_free(&codec->base);
  free(codec->arena);
  free(codec->properties);
  free(codec);
}

/* ------------------------------------------------------------------ */
/* Encode                                                              */
/* ------------------------------------------------------------------ */

static int fill_usage(const usage_layout_t *l,
                      const tly_usage_recorded_t *usage, avro_value_t *record) {
  avro_value_t ai, ai_record, properties;

  if (l->corrects != SIZE_MAX &&
      tly_avro_set_string(record, l->corrects, usage->corrects))
    return -1;
  if (tly_avro_set_string(record, l->feature, usage->feature) ||
      tly_avro_set_long(record, l->quantity, usage->quantity) ||
      tly_avro_set_string(record, l->unit, usage->unit) ||
      avro_value_get_by_index(record, l->ai, &ai, NULL))
    return -1;

  if (usage->has_ai) {
    if (avro_value_set_branch(&ai, l->ai_record_branch, &ai_record) ||
        tly_avro_set_string(&ai_record, l->provider, usage->ai.provider) ||
        tly_avro_set_string(&ai_record, l->model, usage->ai.model) ||
        tly_avro_set_long(&ai_record, l->input_tokens,
                          usage->ai.input_tokens) ||
        tly_avro_set_long(&ai_record, l->output_tokens,
                          usage->ai.output_tokens))
      return -1;
  } else {
    avro_value_t null_branch;
    if (avro_value_set_branch(&ai, l->ai_null_branch, &null_branch) ||
        avro_value_set_null(&null_branch))
      return -1;
  }

  if (l->properties == SIZE_MAX)
    return 0;
  if (avro_value_get_by_index(record, l->properties, &properties, NULL))
    return -1;
  for (size_t i = 0; i < usage->property_count; i++) {
    const tly_property_t *property = &usage->properties[i];
    avro_value_t entry;
    if (avro_value_add(&properties, property->key, &entry, NULL, NULL) ||
        avro_value_set_string_len(&entry, property->value,
                                  strlen(property->value) + 1))
      return -1;
  }
  return 0;
}

/* A flat body, field by field from the table (NULL strings as ""). */
static int fill_flat(const layout_t *l, const tly_event_t *event,
                     avro_value_t *record) {
  const tly_body_spec_t *spec = &tly_body_specs[event->body_kind];
  for (size_t i = 0; i < spec->field_count; i++) {
    const tly_body_field_t *field = &spec->fields[i];
    size_t index = l->field[event->body_kind][i];
    int rc;
    switch (field->kind) {
    case TLY_FIELD_TEXT:
    case TLY_FIELD_TEXT_OPTIONAL:
      rc = tly_avro_set_string(record, index, tly_body_text_get(event, field));
      break;
    case TLY_FIELD_COUNT32:
      rc = tly_avro_set_int(record, index, tly_body_int32_get(event, field));
      break;
    default:
      rc = tly_avro_set_long(record, index, tly_body_int64_get(event, field));
      break;
    }
    if (rc)
      return -1;
  }
  return 0;
}

/* Fills the reused avro value from a validated event. 0 or avro-c's error. */
static int fill_value(tly_codec_t *codec, const tly_event_t *event) {
  const layout_t *l = &codec->layout;
  avro_value_t *root = &codec->base.value;
  avro_value_t subject, kind, body, record;

  if (avro_value_reset(root) ||
      tly_avro_set_string(root, l->event_id, event->event_id) ||
      tly_avro_set_long(root, l->occurred_at, event->occurred_at_ms) ||
      avro_value_get_by_index(root, l->subject, &subject, NULL) ||
      avro_value_get_by_index(&subject, l->subject_kind, &kind, NULL) ||
      avro_value_set_enum(&kind, (int)event->subject_kind) ||
      tly_avro_set_string(&subject, l->subject_id, event->subject_id) ||
      avro_value_get_by_index(root, l->body, &body, NULL) ||
      avro_value_set_branch(&body, l->branch[event->body_kind], &record))
    return -1;
  if (TLY_BODY_IS_USAGE(event->body_kind))
    return fill_usage(&l->usage[USAGE_OF(event->body_kind)], &event->body.usage,
                      &record);
  return fill_flat(l, event, &record);
}

/* Encode refuses what decode would refuse: a producer must not be able to
 * write an event that every consumer then dead-letters. */
static int check_event_text(const tly_event_t *event, char *errstr,
                            size_t errstr_size) {
  const tly_usage_recorded_t *usage = &event->body.usage;
  const tly_body_spec_t *spec = &tly_body_specs[event->body_kind];

  if (tly_avro_check_text(event->event_id, "event_id", errstr, errstr_size) ||
      tly_avro_check_text(event->subject_id, "subject.id", errstr, errstr_size))
    return -1;
  for (size_t i = 0; i < spec->field_count; i++)
    if ((spec->fields[i].kind == TLY_FIELD_TEXT ||
         spec->fields[i].kind == TLY_FIELD_TEXT_OPTIONAL) &&
        tly_avro_check_text(tly_body_text_get(event, &spec->fields[i]),
                            spec->fields[i].name, errstr, errstr_size))
      return -1;
  if (!TLY_BODY_IS_USAGE(event->body_kind))
    return 0;
  if (event->body_kind == TLY_BODY_USAGE_CORRECTED &&
      tly_avro_check_text(usage->corrects, "corrects", errstr, errstr_size))
    return -1;
  if (tly_avro_check_text(usage->feature, "feature", errstr, errstr_size) ||
      tly_avro_check_text(usage->unit, "unit", errstr, errstr_size))
    return -1;
  if (usage->has_ai &&
      (tly_avro_check_text(usage->ai.provider, "ai.provider", errstr,
                           errstr_size) ||
       tly_avro_check_text(usage->ai.model, "ai.model", errstr, errstr_size)))
    return -1;
  for (size_t i = 0; i < usage->property_count; i++)
    if (tly_avro_check_text(usage->properties[i].key, "properties (key)",
                            errstr, errstr_size) ||
        tly_avro_check_text(usage->properties[i].value, "properties (value)",
                            errstr, errstr_size))
      return -1;
  return 0;
}

int tly_codec_encode(tly_codec_t *codec, const tly_event_t *event,
                     const void **out, size_t *out_len, char *errstr,
                     size_t errstr_size) {
  if (!codec || !event || !out || !out_len)
    return tly_avro_fail(errstr, errstr_size, "encode: missing argument");
  if (tly_event_validate(event, errstr, errstr_size) ||
      check_event_text(event, errstr, errstr_size))
    return -1;
  if (fill_value(codec, event))
    return tly_avro_fail(errstr, errstr_size, "Avro encode failed: %s",
                         avro_strerror());
  return tly_avro_out_write(&codec->base.out, codec->schema_id,
                            &codec->base.value, out, out_len, errstr,
                            errstr_size);
}

/* ------------------------------------------------------------------ */
/* Decode                                                              */
/* ------------------------------------------------------------------ */

static int extract_properties(avro_value_t *map, size_t expected,
                              tly_usage_recorded_t *usage, char *errstr,
                              size_t errstr_size) {
  size_t count = 0;
  if (avro_value_get_size(map, &count))
    return tly_avro_fail(errstr, errstr_size, "Avro decode failed: %s",
                         avro_strerror());
  if (count != expected)
    return tly_avro_fail(
        errstr, errstr_size,
        "invalid Avro record: field 'body.properties': %zu entries "
        "but only %zu distinct keys (duplicate map key)",
        expected, count);
  if (!count)
    return 0;
  usage->properties = calloc(count, sizeof(*usage->properties));
  if (!usage->properties)
    return tly_avro_fail(errstr, errstr_size,
                         "out of memory for %zu properties", count);
  for (size_t i = 0; i < count; i++) {
    avro_value_t entry;
    const char *key = NULL, *text = NULL;
    size_t size = 0;
    tly_property_t *property = &usage->properties[i];

    if (avro_value_get_by_index(map, i, &entry, &key) ||
        avro_value_get_string(&entry, &text, &size))
      return tly_avro_fail(errstr, errstr_size, "Avro decode failed: %s",
                           avro_strerror());
    /* Counted before the copies so tly_event_clear() frees partial work. */
    usage->property_count = i + 1;
    property->key = strdup(key);
    property->value = tly_avro_copy_text(text, size);
    if (!property->key || !property->value)
      return tly_avro_fail(errstr, errstr_size,
                           "out of memory copying properties");
  }
  return 0;
}

/* Copies the decoded avro value into *event. */

static int extract_usage(const usage_layout_t *l, avro_value_t *record,
                         size_t property_entries, tly_usage_recorded_t *usage,
                         char *errstr, size_t errstr_size) {
  avro_value_t ai, ai_record, properties;
  int branch = -1;

  if (l->corrects != SIZE_MAX &&
      tly_avro_get_string(record, l->corrects, &usage->corrects))
    goto avro_error;
  if (tly_avro_get_string(record, l->feature, &usage->feature) ||
      tly_avro_get_long(record, l->quantity, &usage->quantity) ||
      tly_avro_get_string(record, l->unit, &usage->unit) ||
      avro_value_get_by_index(record, l->ai, &ai, NULL) ||
      avro_value_get_discriminant(&ai, &branch))
    goto avro_error;
  if (branch == l->ai_record_branch) {
    usage->has_ai = 1;
    if (avro_value_get_current_branch(&ai, &ai_record) ||
        tly_avro_get_string(&ai_record, l->provider, &usage->ai.provider) ||
        tly_avro_get_string(&ai_record, l->model, &usage->ai.model) ||
        tly_avro_get_long(&ai_record, l->input_tokens,
                          &usage->ai.input_tokens) ||
        tly_avro_get_long(&ai_record, l->output_tokens,
                          &usage->ai.output_tokens))
      goto avro_error;
  }
  if (l->properties == SIZE_MAX)
    return 0;
  if (avro_value_get_by_index(record, l->properties, &properties, NULL))
    goto avro_error;
  return extract_properties(&properties, property_entries, usage, errstr,
                            errstr_size);

avro_error:
  /* After a successful walk only memory exhaustion lands here. */
  return tly_avro_fail(errstr, errstr_size, "Avro decode failed: %s",
                       avro_strerror());
}

static int extract_flat(const layout_t *l, avro_value_t *record,
                        tly_event_t *event) {
  const tly_body_spec_t *spec = &tly_body_specs[event->body_kind];
  for (size_t i = 0; i < spec->field_count; i++) {
    const tly_body_field_t *field = &spec->fields[i];
    size_t index = l->field[event->body_kind][i];
    int rc;
    switch (field->kind) {
    case TLY_FIELD_TEXT:
    case TLY_FIELD_TEXT_OPTIONAL:
      rc = tly_avro_get_string(record, index, tly_body_text(event, field));
      break;
    case TLY_FIELD_COUNT32:
      rc = tly_avro_get_int(record, index, tly_body_int32(event, field));
      break;
    default:
      rc = tly_avro_get_long(record, index, tly_body_int64(event, field));
      break;
    }
    if (rc)
      return -1;
  }
  return 0;
}

/* Copies the decoded avro value into *event. */
static int extract_event(tly_codec_t *codec, size_t property_entries,
                         tly_event_t *event, char *errstr, size_t errstr_size) {
  const layout_t *l = &codec->layout;
  avro_value_t *root = &codec->base.value;
  avro_value_t subject, kind, body, record;
  int kind_index = 0, branch = -1;

  if (tly_avro_get_string(root, l->event_id, &event->event_id) ||
      tly_avro_get_long(root, l->occurred_at, &event->occurred_at_ms) ||
      avro_value_get_by_index(root, l->subject, &subject, NULL) ||
      avro_value_get_by_index(&subject, l->subject_kind, &kind, NULL) ||
      avro_value_get_enum(&kind, &kind_index) ||
      tly_avro_get_string(&subject, l->subject_id, &event->subject_id) ||
      avro_value_get_by_index(root, l->body, &body, NULL) ||
      avro_value_get_discriminant(&body, &branch) ||
      avro_value_get_current_branch(&body, &record))
    goto avro_error;
  /* Ranges already checked by the walk; kept as a cheap second guard. */
  if (kind_index < 0 || kind_index >= TLY_SUBJECT__COUNT)
    return tly_avro_fail(
        errstr, errstr_size,
        "corrupt Avro record: field 'subject.kind': enum index %d", kind_index);
  event->subject_kind = (tly_subject_kind_t)kind_index;
  /* Branch i is body kind i (checked at tly_codec_new()). */
  if (branch < 0 || branch >= TLY_BODY__COUNT)
    return tly_avro_fail(errstr, errstr_size,
                         "unsupported event body: union branch %d", branch);
  event->body_kind = (tly_body_kind_t)branch;
  if (TLY_BODY_IS_USAGE(event->body_kind))
    return extract_usage(&l->usage[USAGE_OF(event->body_kind)], &record,
                         property_entries, &event->body.usage, errstr,
                         errstr_size);
  if (extract_flat(l, &record, event))
    goto avro_error;
  return 0;

avro_error:
  /* After a successful walk only memory exhaustion lands here. */
  return tly_avro_fail(errstr, errstr_size, "Avro decode failed: %s",
                       avro_strerror());
}

/* What both decoders check first: the frame header, then the validation
 * walk over the Avro payload (*payload, *payload_len), counting the
 * properties map's entries. A record framed with another writer's schema
 * id (tly_codec_add_writer_schema) is first read in our schema
 * (tly_resolve.h) and goes on as those bytes; *writer_entries then holds
 * the properties entries in the writer's own bytes, else SIZE_MAX. 0, or
 * -1 with errstr. */
static int check_payload(tly_codec_t *codec, const void *data, size_t len,
                         const unsigned char **payload, size_t *payload_len,
                         size_t *property_entries, size_t *writer_entries,
                         char *errstr, size_t errstr_size) {
  const unsigned char *bytes = data;
  int64_t id = tly_codec_frame_id(data, len);
  *writer_entries = SIZE_MAX;
  int32_t expect = codec->schema_id;
  if (id >= 0 && id != codec->schema_id) {
    const char *reason = NULL;
    switch (tly_resolver_lookup(codec->writers, (int32_t)id, &reason)) {
    case TLY_RESOLVE_UNKNOWN:
      break; /* refused by the header check below */
    case TLY_RESOLVE_REFUSED:
      return tly_avro_fail(errstr, errstr_size, "%s", reason);
    case TLY_RESOLVE_SAME:
      expect = (int32_t)id; /* our schema under another id */
      break;
    case TLY_RESOLVE_TRANSLATE: {
      const void *ours = NULL;
      if (tly_resolver_translate(
              codec->writers, (int32_t)id, bytes + TLY_CODEC_HEADER_SIZE,
              len - TLY_CODEC_HEADER_SIZE, &codec->base.value,
              &codec->translated, codec->schema_id, &ours, &len, writer_entries,
              errstr, errstr_size))
        return -1;
      bytes = ours;
      break;
    }
    }
  }
  if (tly_avro_check_header(bytes, len, expect, errstr, errstr_size))
    return -1;
  *payload = bytes + TLY_CODEC_HEADER_SIZE;
  *payload_len = len - TLY_CODEC_HEADER_SIZE;
  if (tly_avro_validate(&codec->base.root, *payload, *payload_len,
                        codec->properties_shape, property_entries, errstr,
                        errstr_size))
    return -1;
  if (*writer_entries != SIZE_MAX)
    *property_entries = *writer_entries;
  return 0;
}

int tly_codec_decode(tly_codec_t *codec, const void *data, size_t len,
                     tly_event_t *event, char *errstr, size_t errstr_size) {
  const unsigned char *bytes = NULL;
  size_t property_entries = 0, writer_entries = SIZE_MAX;
  char reason[256];

  if (!codec || !event)
    return tly_avro_fail(errstr, errstr_size, "decode: missing argument");
  tly_event_clear(event);
  if (check_payload(codec, data, len, &bytes, &len, &property_entries,
                    &writer_entries, errstr, errstr_size))
    return -1;

  avro_reader_memory_set_source(codec->base.reader, (const char *)bytes,
                                (int64_t)len);
  if (avro_value_read(codec->base.reader, &codec->base.value))
    return tly_avro_fail(errstr, errstr_size, "Avro decode failed: %s",
                         avro_strerror());
  if (extract_event(codec, property_entries, event, errstr, errstr_size))
    goto fail;
  if (tly_event_validate(event, reason, sizeof(reason))) {
    tly_avro_fail(errstr, errstr_size, "invalid event: %s", reason);
    goto fail;
  }
  return 0;

fail:
  tly_event_clear(event);
  return -1;
}

/* ------------------------------------------------------------------ */
/* Decode without avro-c: the fold's path                              */
/* ------------------------------------------------------------------ */

/*
 * tly_codec_decode_view() reads the Avro bytes directly, after the same
 * header check and validation walk as tly_codec_decode(), so it accepts
 * and refuses exactly the same messages with the same errors (the unit
 * tests and the fuzz target compare the two). avro-c's generic value and
 * one malloc per string were most of a decode's cost, and decoding was a
 * fifth of the fold's. The walk has checked every length, index and
 * count, so the reader below only guards against running off the end.
 */
typedef struct {
  const unsigned char *pos, *end;
  char *arena;
  size_t arena_len, arena_cap;
  int bad;
} view_reader_t;

static int64_t view_long(view_reader_t *r) {
  uint64_t value = 0;
  for (int i = 0; i < 10 && r->pos < r->end; i++) {
    uint8_t byte = *r->pos++;
    value |= (uint64_t)(byte & 0x7F) << (7 * i);
    if (!(byte & 0x80))
      return (int64_t)((value >> 1) ^ (~(value & 1) + 1));
  }
  r->bad = 1;
  return 0;
}

/* A length the walk accepted, or -1 (and bad) past the end. */
static int64_t view_length(view_reader_t *r) {
  int64_t length = view_long(r);
  if (length < 0 || (uint64_t)length > (size_t)(r->end - r->pos)) {
    r->bad = 1;
    return -1;
  }
  return length;
}

/* A string, copied NUL-terminated into the arena. */
static char *view_string(view_reader_t *r) {
  int64_t length = view_length(r);
  if (length < 0 || r->arena_len + (size_t)length + 1 > r->arena_cap) {
    r->bad = 1;
    return NULL;
  }
  char *text = r->arena + r->arena_len;
  memcpy(text, r->pos, (size_t)length);
  text[length] = '\0';
  r->pos += length;
  r->arena_len += (size_t)length + 1;
  return text;
}

static void view_skip_bytes(view_reader_t *r, int64_t count) {
  if (count < 0 || (uint64_t)count > (size_t)(r->end - r->pos))
    r->bad = 1;
  else
    r->pos += count;
}

/* Skips a value of shape (a field the codec does not read). */
static void view_skip(view_reader_t *r, const tly_avro_shape_t *shape) {
  int64_t number;
  if (r->bad)
    return;
  switch (shape->type) {
  case AVRO_NULL:
    return;
  case AVRO_BOOLEAN:
    view_skip_bytes(r, 1);
    return;
  case AVRO_INT32:
  case AVRO_INT64:
  case AVRO_ENUM:
    view_long(r);
    return;
  case AVRO_FLOAT:
    view_skip_bytes(r, 4);
    return;
  case AVRO_DOUBLE:
    view_skip_bytes(r, 8);
    return;
  case AVRO_FIXED:
    view_skip_bytes(r, shape->fixed_size);
    return;
  case AVRO_STRING:
  case AVRO_BYTES:
    view_skip_bytes(r, view_length(r));
    return;
  case AVRO_UNION:
    number = view_long(r);
    if (number < 0 || (uint64_t)number >= shape->child_count)
      r->bad = 1;
    else
      view_skip(r, &shape->children[number]);
    return;
  case AVRO_RECORD:
    for (size_t i = 0; i < shape->child_count; i++)
      view_skip(r, &shape->children[i]);
    return;
  case AVRO_MAP:
  case AVRO_ARRAY:
    while (!r->bad && (number = view_long(r)) != 0) {
      if (number < 0) {
        number = number == INT64_MIN ? 0 : -number;
        view_long(r); /* the block's size in bytes */
      }
      for (int64_t i = 0; i < number && !r->bad; i++) {
        if (shape->type == AVRO_MAP)
          view_skip_bytes(r, view_length(r));
        view_skip(r, &shape->children[0]);
      }
    }
    return;
  default:
    r->bad = 1;
  }
}

static int compare_property_keys(const void *a, const void *b) {
  return strcmp(((const tly_property_t *)a)->key,
                ((const tly_property_t *)b)->key);
}

/* body.properties into the codec's array; a duplicate key is refused as
 * tly_codec_decode() refuses it. */
static int view_properties(tly_codec_t *codec, view_reader_t *r,
                           size_t expected, tly_usage_recorded_t *usage,
                           char *errstr, size_t errstr_size) {
  size_t count = 0;
  int64_t block;
  while (!r->bad && (block = view_long(r)) != 0) {
    if (block < 0) {
      block = block == INT64_MIN ? 0 : -block;
      view_long(r);
    }
    for (int64_t i = 0; i < block && !r->bad; i++) {
      if (count == expected) { /* the walk counted them all */
        r->bad = 1;
        break;
      }
      codec->properties[count].key = view_string(r);
      codec->properties[count].value = view_string(r);
      count++;
    }
  }
  if (r->bad || !count)
    return 0;
  /* Distinct keys, counted on a sorted copy (the wire order is kept). */
  tly_property_t *sorted = codec->properties + expected;
  memcpy(sorted, codec->properties, count * sizeof(*sorted));
  qsort(sorted, count, sizeof(*sorted), compare_property_keys);
  size_t distinct = 1;
  for (size_t i = 1; i < count; i++)
    distinct += strcmp(sorted[i - 1].key, sorted[i].key) != 0;
  if (distinct != count)
    return tly_avro_fail(
        errstr, errstr_size,
        "invalid Avro record: field 'body.properties': %zu entries "
        "but only %zu distinct keys (duplicate map key)",
        count, distinct);
  usage->properties = codec->properties;
  usage->property_count = count;
  return 0;
}

static int view_usage(tly_codec_t *codec, view_reader_t *r,
                      const usage_layout_t *l, const tly_avro_shape_t *record,
                      size_t property_entries, tly_usage_recorded_t *usage,
                      char *errstr, size_t errstr_size) {
  for (size_t j = 0; j < record->child_count && !r->bad; j++) {
    if (j == l->corrects) {
      usage->corrects = view_string(r);
    } else if (j == l->feature) {
      usage->feature = view_string(r);
    } else if (j == l->quantity) {
      usage->quantity = view_long(r);
    } else if (j == l->unit) {
      usage->unit = view_string(r);
    } else if (j == l->ai) {
      int64_t branch = view_long(r);
      if (branch < 0 || (uint64_t)branch >= record->children[j].child_count) {
        r->bad = 1;
        break;
      }
      if (branch != l->ai_record_branch) {
        view_skip(r, &record->children[j].children[branch]);
        continue;
      }
      const tly_avro_shape_t *ai = &record->children[j].children[branch];
      usage->has_ai = 1;
      for (size_t k = 0; k < ai->child_count && !r->bad; k++) {
        if (k == l->provider)
          usage->ai.provider = view_string(r);
        else if (k == l->model)
          usage->ai.model = view_string(r);
        else if (k == l->input_tokens)
          usage->ai.input_tokens = view_long(r);
        else if (k == l->output_tokens)
          usage->ai.output_tokens = view_long(r);
        else
          view_skip(r, &ai->children[k]);
      }
    } else if (j == l->properties) {
      if (view_properties(codec, r, property_entries, usage, errstr,
                          errstr_size))
        return -1;
    } else {
      view_skip(r, &record->children[j]);
    }
  }
  return 0;
}

static void view_flat(tly_codec_t *codec, view_reader_t *r,
                      const tly_avro_shape_t *record, tly_event_t *event) {
  const tly_body_spec_t *spec = &tly_body_specs[event->body_kind];
  for (size_t j = 0; j < record->child_count && !r->bad; j++) {
    int target = codec->flat_target[event->body_kind][j];
    if (target < 0) {
      view_skip(r, &record->children[j]);
      continue;
    }
    const tly_body_field_t *field = &spec->fields[target];
    switch (field->kind) {
    case TLY_FIELD_TEXT:
    case TLY_FIELD_TEXT_OPTIONAL:
      *tly_body_text(event, field) = view_string(r);
      break;
    case TLY_FIELD_COUNT32:
      *tly_body_int32(event, field) = (int32_t)view_long(r);
      break;
    default:
      *tly_body_int64(event, field) = view_long(r);
      break;
    }
  }
}

/* Room for what a payload of len bytes can decode to: its strings with a
 * NUL each (each string has a length byte of its own), and its properties
 * twice (the sorted copy). */
static int view_reserve(tly_codec_t *codec, size_t len, size_t properties) {
  size_t need = 2 * len + 16;
  if (need > codec->arena_cap) {
    char *grown = realloc(codec->arena, need);
    if (!grown)
      return -1;
    codec->arena = grown;
    codec->arena_cap = need;
  }
  if (2 * properties > codec->properties_cap) {
    tly_property_t *grown =
        realloc(codec->properties, 2 * properties * sizeof(*grown));
    if (!grown)
      return -1;
    codec->properties = grown;
    codec->properties_cap = 2 * properties;
  }
  return 0;
}

int tly_codec_decode_view(tly_codec_t *codec, const void *data, size_t len,
                          tly_event_t *event, char *errstr,
                          size_t errstr_size) {
  const unsigned char *bytes = NULL;
  size_t property_entries = 0, writer_entries = SIZE_MAX;
  char reason[256];

  if (!codec || !event)
    return tly_avro_fail(errstr, errstr_size, "decode: missing argument");
  memset(event, 0, sizeof(*event));
  if (check_payload(codec, data, len, &bytes, &len, &property_entries,
                    &writer_entries, errstr, errstr_size))
    return -1;
  if (view_reserve(codec, len, property_entries))
    return tly_avro_fail(errstr, errstr_size,
                         "out of memory decoding %zu bytes", len);

  const layout_t *l = &codec->layout;
  const tly_avro_shape_t *root = &codec->base.root;
  view_reader_t r = {bytes, bytes + len, codec->arena, 0, codec->arena_cap, 0};
  for (size_t j = 0; j < root->child_count && !r.bad; j++) {
    if (j == l->event_id) {
      event->event_id = view_string(&r);
    } else if (j == l->occurred_at) {
      event->occurred_at_ms = view_long(&r);
    } else if (j == l->subject) {
      const tly_avro_shape_t *subject = &root->children[j];
      for (size_t k = 0; k < subject->child_count && !r.bad; k++) {
        if (k == l->subject_kind)
          event->subject_kind = (tly_subject_kind_t)view_long(&r);
        else if (k == l->subject_id)
          event->subject_id = view_string(&r);
        else
          view_skip(&r, &subject->children[k]);
      }
    } else if (j == l->body) {
      /* Branch i is body kind i (checked at tly_codec_new()). */
      int64_t branch = view_long(&r);
      if (branch < 0 || branch >= TLY_BODY__COUNT ||
          (uint64_t)branch >= root->children[j].child_count) {
        r.bad = 1;
        break;
      }
      event->body_kind = (tly_body_kind_t)branch;
      const tly_avro_shape_t *record = &root->children[j].children[branch];
      if (!TLY_BODY_IS_USAGE(event->body_kind))
        view_flat(codec, &r, record, event);
      else if (view_usage(codec, &r, &l->usage[USAGE_OF(event->body_kind)],
                          record, property_entries, &event->body.usage, errstr,
                          errstr_size))
        goto fail;
    } else {
      view_skip(&r, &root->children[j]);
    }
  }
  if (r.bad || r.pos != r.end) {
    tly_avro_fail(errstr, errstr_size,
                  "Avro decode failed: the bytes the walk accepted did not "
                  "read back");
    goto fail;
  }
  /* Another writer's record was read in our schema, which merged keys the
   * writer's bytes held twice: refused as our own bytes would be. */
  if (writer_entries != SIZE_MAX &&
      event->body_kind == TLY_BODY_USAGE_RECORDED &&
      event->body.usage.property_count != writer_entries) {
    tly_avro_fail(errstr, errstr_size,
                  "invalid Avro record: field 'body.properties': %zu entries "
                  "but only %zu distinct keys (duplicate map key)",
                  writer_entries, event->body.usage.property_count);
    goto fail;
  }
  if (tly_event_validate(event, reason, sizeof(reason))) {
    tly_avro_fail(errstr, errstr_size, "invalid event: %s", reason);
    goto fail;
  }
  return 0;

fail:
  memset(event, 0, sizeof(*event));
  return -1;
}

/* ------------------------------------------------------------------ */
/* Schema ids                                                          */
/* ------------------------------------------------------------------ */

int64_t tly_codec_frame_id(const void *data, size_t len) {
  const unsigned char *bytes = data;
  if (!bytes || len < TLY_CODEC_HEADER_SIZE || bytes[0] != 0)
    return -1;
  return (int64_t)((uint32_t)bytes[1] << 24 | (uint32_t)bytes[2] << 16 |
                   (uint32_t)bytes[3] << 8 | (uint32_t)bytes[4]);
}

int32_t tly_codec_schema_id(const tly_codec_t *codec) {
  return codec->schema_id;
}

int tly_codec_knows_id(tly_codec_t *codec, int32_t id) {
  return id == codec->schema_id ||
         tly_resolver_lookup(codec->writers, id, NULL) != TLY_RESOLVE_UNKNOWN;
}

int tly_codec_add_writer_schema(tly_codec_t *codec, int32_t id,
                                const char *schema_json, size_t schema_len,
                                char *errstr, size_t errstr_size) {
  if (id == codec->schema_id)
    return 0; /* ours: it cannot be another schema */
  int kind = tly_resolver_add(codec->writers, id, schema_json, schema_len,
                              errstr, errstr_size);
  return kind == TLY_RESOLVE_SAME || kind == TLY_RESOLVE_TRANSLATE ? 0 : -1;
}

int tly_codec_refuse_id(tly_codec_t *codec, int32_t id, const char *reason) {
  if (id == codec->schema_id)
    return -1;
  return tly_resolver_refuse(codec->writers, id, reason);
}
