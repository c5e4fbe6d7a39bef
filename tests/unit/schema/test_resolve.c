/*
 * test_resolve.c - records framed with another writer's schema id
 * (schema/tly_resolve.c through tly_codec.h's schema-id calls).
 *
 * What it proves: an id the codec was not told about is refused ("unknown
 * schema id 7"); tally's own schema under a registry's id decodes; an
 * evolved writer schema (a field added with a default, another field
 * order, an extra body type, an extra envelope field) is resolved by name
 * and decodes to the same event, in both decoders; a record using the body
 * type tally lacks is refused naming the branch; incompatible schemas (a
 * retyped field, a reader field missing, a reordered enum, not Avro) are
 * refused with the reason, which every record framed with the id then
 * gets; duplicate map keys in the writer's bytes are refused as in ours;
 * truncated writer bytes are refused, never read past; an id marked
 * refused says why; the cache keeps at most 64 ids.
 *
 * The writer's bytes are made here with avro-c's generic values from the
 * writer's schema, filled field by field by name, as another client's
 * serializer would.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <avro.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tly_codec.h"
#include "tly_event.h"
#include "tly_event_json.h"

/* ---- writer schemas, made from ours ------------------------------------ */

static json_t *our_schema(void) {
  json_t *schema = json_loads(tly_event_schema_json, 0, NULL);
  assert_non_null(schema);
  return schema;
}

static json_t *field_list(json_t *record) {
  return json_object_get(record, "fields");
}

/* The body union of the envelope. */
static json_t *body_union(json_t *schema) {
  json_t *fields = field_list(schema);
  for (size_t i = 0; i < json_array_size(fields); i++) {
    json_t *field = json_array_get(fields, i);
    if (strcmp(json_string_value(json_object_get(field, "name")), "body") == 0)
      return json_object_get(field, "type");
  }
  fail_msg("no body");
  return NULL;
}

static json_t *branch_named(json_t *schema, const char *name) {
  json_t *branches = body_union(schema);
  for (size_t i = 0; i < json_array_size(branches); i++) {
    json_t *branch = json_array_get(branches, i);
    if (strcmp(json_string_value(json_object_get(branch, "name")), name) == 0)
      return branch;
  }
  fail_msg("no branch %s", name);
  return NULL;
}

static json_t *field_named(json_t *record, const char *name) {
  json_t *fields = field_list(record);
  for (size_t i = 0; i < json_array_size(fields); i++) {
    json_t *field = json_array_get(fields, i);
    if (strcmp(json_string_value(json_object_get(field, "name")), name) == 0)
      return field;
  }
  fail_msg("no field %s", name);
  return NULL;
}

static char *dump(json_t *schema) {
  char *text = json_dumps(schema, JSON_COMPACT | JSON_ENCODE_ANY);
  json_decref(schema);
  assert_non_null(text);
  return text;
}

/* Ours, evolved as a newer producer would: UsageRecorded gains a field
 * with a default (first, so the order differs too), the envelope gains an
 * optional field, the body union gains a type in front. */
static char *evolved_schema(void) {
  json_t *schema = our_schema();
  json_array_insert_new(field_list(branch_named(schema, "UsageRecorded")), 0,
                        json_pack("{s:s,s:s,s:s}", "name", "region", "type",
                                  "string", "default", "eu"));
  json_array_append_new(field_list(schema),
                        json_pack("{s:s,s:[s,s],s:n}", "name", "trace", "type",
                                  "null", "string", "default"));
  json_array_insert_new(body_union(schema), 0,
                        json_pack("{s:s,s:s,s:[{s:s,s:s}]}", "type", "record",
                                  "name", "Mystery", "fields", "name", "x",
                                  "type", "long"));
  return dump(schema);
}

/* ---- writer bytes: generic values filled by name ----------------------- */

typedef struct {
  const char *branch; /* body branch to write */
  int duplicate_key;  /* write the property key twice */
} fill_t;

static void fill(avro_value_t *value, const char *name, const fill_t *how) {
  avro_schema_t schema = avro_value_get_schema(value);
  switch (avro_typeof(schema)) {
  case AVRO_RECORD:
    for (size_t i = 0; i < avro_schema_record_size(schema); i++) {
      avro_value_t field;
      const char *field_name = NULL;
      assert_int_equal(avro_value_get_by_index(value, i, &field, &field_name),
                       0);
      fill(&field, field_name, how);
    }
    return;
  case AVRO_UNION: {
    avro_value_t branch;
    int chosen = 0; /* the null branch or the first */
    for (size_t i = 0; i < avro_schema_union_size(schema); i++) {
      avro_schema_t candidate = avro_schema_union_branch(schema, (int)i);
      if (is_avro_record(candidate) &&
          strcmp(avro_schema_name(candidate), how->branch) == 0)
        chosen = (int)i;
    }
    assert_int_equal(avro_value_set_branch(value, chosen, &branch), 0);
    fill(&branch, name, how);
    return;
  }
  case AVRO_STRING: {
    const char *text = strcmp(name, "event_id") == 0  ? "evt-resolve-1"
                       : strcmp(name, "id") == 0      ? "u-42"
                       : strcmp(name, "feature") == 0 ? "tokens"
                       : strcmp(name, "unit") == 0    ? "tok"
                       : strcmp(name, "plan") == 0    ? "pro"
                                                      : "x";
    assert_int_equal(avro_value_set_string(value, text), 0);
    return;
  }
  case AVRO_INT64:
    assert_int_equal(
        avro_value_set_long(value, strcmp(name, "quantity") == 0 ? 42
                                   : strcmp(name, "occurred_at") == 0
                                       ? 1700000000000LL
                                       : 7),
        0);
    return;
  case AVRO_INT32:
    assert_int_equal(avro_value_set_int(value, 7), 0);
    return;
  case AVRO_ENUM:
    assert_int_equal(avro_value_set_enum(value, 0), 0); /* user */
    return;
  case AVRO_MAP: {
    avro_value_t entry;
    assert_int_equal(avro_value_add(value, "team", &entry, NULL, NULL), 0);
    assert_int_equal(avro_value_set_string(&entry, "core"), 0);
    return;
  }
  case AVRO_NULL:
    assert_int_equal(avro_value_set_null(value), 0);
    return;
  default:
    fail_msg("type not handled here");
  }
}

/* A record framed with id, written with schema_json. Returns its length. */
static size_t write_record(const char *schema_json, int32_t id,
                           const fill_t *how, unsigned char *out, size_t cap) {
  avro_schema_t schema = NULL;
  assert_int_equal(
      avro_schema_from_json_length(schema_json, strlen(schema_json), &schema),
      0);
  avro_value_iface_t *iface = avro_generic_class_from_schema(schema);
  avro_value_t value;
  assert_int_equal(avro_generic_value_new(iface, &value), 0);
  fill(&value, "", how);
  avro_writer_t writer = avro_writer_memory((char *)out + 5, (int64_t)cap - 5);
  assert_int_equal(avro_value_write(writer, &value), 0);
  size_t len = 5 + (size_t)avro_writer_tell(writer);
  avro_writer_free(writer);
  avro_value_decref(&value);
  avro_value_iface_decref(iface);
  avro_schema_decref(schema);
  out[0] = 0;
  out[1] = (unsigned char)(id >> 24);
  out[2] = (unsigned char)(id >> 16);
  out[3] = (unsigned char)(id >> 8);
  out[4] = (unsigned char)id;
  if (how->duplicate_key) {
    /* The map is the last field of UsageRecorded, which is the end of the
     * record when nothing follows the body: "[1 entry][team][core][0]"
     * becomes "[2 entries][team][core][team][core][0]". */
    static const unsigned char one[] = {2, 8,   't', 'e', 'a', 'm',
                                        8, 'c', 'o', 'r', 'e', 0};
    assert_true(len >= sizeof(one) &&
                memcmp(out + len - sizeof(one), one, sizeof(one)) == 0);
    out[len - sizeof(one)] = 4;
    memcpy(out + len - 1, one + 1, sizeof(one) - 2);
    len = len - 1 + (sizeof(one) - 2);
    out[len++] = 0;
  }
  return len;
}

/* Both decoders: the same answer (0 or the same message). */
static int decode_both(tly_codec_t *codec, const unsigned char *bytes,
                       size_t len, tly_event_t *event, char *errstr,
                       size_t size) {
  char view_error[512] = "";
  tly_event_t view;
  int view_rc = tly_codec_decode_view(codec, bytes, len, &view, view_error,
                                      sizeof(view_error));
  json_t *viewed = NULL;
  if (!view_rc)
    assert_int_equal(tly_event_to_json(&view, &viewed), 0);
  int rc = tly_codec_decode(codec, bytes, len, event, errstr, size);
  assert_int_equal(rc, view_rc);
  if (rc) {
    assert_string_equal(errstr, view_error);
    return rc;
  }
  json_t *owned = NULL;
  assert_int_equal(tly_event_to_json(event, &owned), 0);
  assert_true(json_equal(owned, viewed));
  json_decref(owned);
  json_decref(viewed);
  return 0;
}

static tly_codec_t *new_codec(void) {
  char errstr[256];
  tly_codec_t *codec = tly_codec_new(1, errstr, sizeof(errstr));
  assert_non_null(codec);
  return codec;
}

static const fill_t usage = {"UsageRecorded", 0};

static void assert_usage(const tly_event_t *event) {
  assert_string_equal(event->event_id, "evt-resolve-1");
  assert_int_equal(event->subject_kind, TLY_SUBJECT_USER);
  assert_string_equal(event->subject_id, "u-42");
  assert_int_equal(event->body_kind, TLY_BODY_USAGE_RECORDED);
  assert_string_equal(event->body.usage.feature, "tokens");
  assert_int_equal(event->body.usage.quantity, 42);
  assert_string_equal(event->body.usage.unit, "tok");
  assert_int_equal(event->body.usage.property_count, 1);
  assert_string_equal(event->body.usage.properties[0].key, "team");
  assert_string_equal(event->body.usage.properties[0].value, "core");
}

/* ---- tests ----------------------------------------------------------- */

static void test_unknown_then_same_schema(void **state) {
  (void)state;
  tly_codec_t *codec = new_codec();
  unsigned char bytes[1024];
  char errstr[512];
  tly_event_t event = {0};
  size_t len =
      write_record(tly_event_schema_json, 7, &usage, bytes, sizeof(bytes));
  assert_int_equal(tly_codec_frame_id(bytes, len), 7);
  assert_int_equal(tly_codec_knows_id(codec, 7), 0);
  assert_int_equal(decode_both(codec, bytes, len, &event, errstr, 512), -1);
  assert_non_null(strstr(errstr, "unknown schema id 7"));

  /* The registry says id 7 is our schema (compacted, as a registry may). */
  json_t *schema = our_schema();
  char *compact = dump(schema);
  assert_int_equal(tly_codec_add_writer_schema(codec, 7, compact,
                                               strlen(compact), errstr, 512),
                   0);
  free(compact);
  assert_int_equal(tly_codec_knows_id(codec, 7), 1);
  assert_int_equal(decode_both(codec, bytes, len, &event, errstr, 512), 0);
  assert_usage(&event);
  tly_event_clear(&event);
  /* Our own id still decodes. */
  len = write_record(tly_event_schema_json, 1, &usage, bytes, sizeof(bytes));
  assert_int_equal(decode_both(codec, bytes, len, &event, errstr, 512), 0);
  tly_event_clear(&event);
  tly_codec_destroy(codec);
}

static void test_evolved_schema(void **state) {
  (void)state;
  tly_codec_t *codec = new_codec();
  unsigned char bytes[1024];
  char errstr[512];
  tly_event_t event = {0};
  char *evolved = evolved_schema();
  assert_int_equal(tly_codec_add_writer_schema(codec, 9, evolved,
                                               strlen(evolved), errstr, 512),
                   0);
  size_t len = write_record(evolved, 9, &usage, bytes, sizeof(bytes));
  assert_int_equal(decode_both(codec, bytes, len, &event, errstr, 512), 0);
  assert_usage(&event);
  tly_event_clear(&event);

  /* Many records through one resolver: each decodes alike (avro-c's
   * resolved values keep state between reads; ASan checks for growth). */
  for (int i = 0; i < 2000; i++) {
    tly_event_t again;
    assert_int_equal(
        tly_codec_decode_view(codec, bytes, len, &again, errstr, 512), 0);
    assert_int_equal(again.body.usage.property_count, 1);
  }

  /* A body type after the new one: its branch index differs by one. */
  fill_t plan = {"PlanAssigned", 0};
  len = write_record(evolved, 9, &plan, bytes, sizeof(bytes));
  assert_int_equal(decode_both(codec, bytes, len, &event, errstr, 512), 0);
  assert_int_equal(event.body_kind, TLY_BODY_PLAN_ASSIGNED);
  assert_string_equal(event.body.plan_assigned.plan, "pro");
  tly_event_clear(&event);

  /* The body type tally does not know: refused, naming why. */
  fill_t mystery = {"Mystery", 0};
  len = write_record(evolved, 9, &mystery, bytes, sizeof(bytes));
  assert_int_equal(decode_both(codec, bytes, len, &event, errstr, 512), -1);
  assert_non_null(strstr(errstr, "schema id 9"));
  assert_non_null(strstr(errstr, "union branch 0"));

  /* Truncated at every length: refused, never read past the end. */
  len = write_record(evolved, 9, &usage, bytes, sizeof(bytes));
  for (size_t cut = 0; cut < len; cut++) {
    unsigned char *copy = malloc(cut ? cut : 1);
    memcpy(copy, bytes, cut);
    assert_int_equal(decode_both(codec, copy, cut, &event, errstr, 512), -1);
    free(copy);
  }
  free(evolved);
  tly_codec_destroy(codec);
}

static void test_duplicate_keys(void **state) {
  (void)state;
  tly_codec_t *codec = new_codec();
  unsigned char bytes[1024];
  char errstr[512];
  tly_event_t event = {0};
  json_t *schema = our_schema();
  json_array_insert_new(field_list(branch_named(schema, "UsageRecorded")), 0,
                        json_pack("{s:s,s:s,s:s}", "name", "region", "type",
                                  "string", "default", "eu"));
  char *evolved = dump(schema);
  assert_int_equal(tly_codec_add_writer_schema(codec, 9, evolved,
                                               strlen(evolved), errstr, 512),
                   0);
  fill_t twice = {"UsageRecorded", 1};
  size_t len = write_record(evolved, 9, &twice, bytes, sizeof(bytes));
  assert_int_equal(decode_both(codec, bytes, len, &event, errstr, 512), -1);
  if (!strstr(errstr, "duplicate map key"))
    fail_msg("%s", errstr);
  free(evolved);
  tly_codec_destroy(codec);
}

static void assert_refused(tly_codec_t *codec, int32_t id, json_t *schema,
                           const char *why) {
  char errstr[512], decode_error[512];
  char *text = dump(schema);
  assert_int_equal(
      tly_codec_add_writer_schema(codec, id, text, strlen(text), errstr, 512),
      -1);
  if (!strstr(errstr, why))
    fail_msg("reason '%s' does not say '%s'", errstr, why);
  assert_int_equal(tly_codec_knows_id(codec, id), 1);
  /* Any record framed with the id gets the same reason. */
  unsigned char bytes[1024];
  tly_event_t event = {0};
  size_t len =
      write_record(tly_event_schema_json, id, &usage, bytes, sizeof(bytes));
  assert_int_equal(decode_both(codec, bytes, len, &event, decode_error, 512),
                   -1);
  assert_string_equal(decode_error, errstr);
  free(text);
}

static void test_incompatible(void **state) {
  (void)state;
  tly_codec_t *codec = new_codec();
  json_t *schema = our_schema();
  json_object_set_new(
      field_named(branch_named(schema, "UsageRecorded"), "quantity"), "type",
      json_string("string"));
  assert_refused(codec, 10, schema, "quantity");

  schema = our_schema();
  json_t *fields = field_list(branch_named(schema, "UsageRecorded"));
  json_array_remove(fields, 0); /* feature: no default */
  assert_refused(codec, 11, schema, "feature");

  schema = our_schema();
  json_t *kind = json_object_get(
      field_named(json_object_get(field_named(schema, "subject"), "type"),
                  "kind"),
      "type");
  json_t *symbols = json_object_get(kind, "symbols");
  json_array_insert_new(symbols, 0, json_string("robot"));
  assert_refused(codec, 12, schema, "symbol 0 is 'robot'");

  assert_refused(codec, 13, json_string("not a schema"), "not valid Avro");
  assert_refused(codec, 14, json_pack("{s:s}", "type", "long"),
                 "not compatible");
  tly_codec_destroy(codec);
}

static void test_refused_id_and_bound(void **state) {
  (void)state;
  tly_codec_t *codec = new_codec();
  char errstr[512];
  unsigned char bytes[1024];
  tly_event_t event = {0};
  assert_int_equal(
      tly_codec_refuse_id(codec, 8,
                          "schema id 8 not found in the schema registry"),
      0);
  size_t len =
      write_record(tly_event_schema_json, 8, &usage, bytes, sizeof(bytes));
  assert_int_equal(decode_both(codec, bytes, len, &event, errstr, 512), -1);
  assert_string_equal(errstr, "schema id 8 not found in the schema registry");
  /* Our own id cannot be refused or replaced. */
  assert_int_equal(tly_codec_refuse_id(codec, 1, "no"), -1);

  /* 64 more ids: the least recently used (8) is forgotten. */
  for (int32_t id = 100; id < 164; id++)
    assert_int_equal(
        tly_codec_add_writer_schema(codec, id, tly_event_schema_json,
                                    strlen(tly_event_schema_json), errstr, 512),
        0);
  assert_int_equal(tly_codec_knows_id(codec, 8), 0);
  assert_int_equal(tly_codec_knows_id(codec, 100), 1);
  assert_int_equal(tly_codec_knows_id(codec, 163), 1);
  assert_int_equal(tly_codec_frame_id("\x01\0\0\0\x07", 5), -1);
  assert_int_equal(tly_codec_frame_id("\0\0\0", 3), -1);
  tly_codec_destroy(codec);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_unknown_then_same_schema),
      cmocka_unit_test(test_evolved_schema),
      cmocka_unit_test(test_duplicate_keys),
      cmocka_unit_test(test_incompatible),
      cmocka_unit_test(test_refused_id_and_bound),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
