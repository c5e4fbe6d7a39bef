/*
 * test_codec.c - the Avro codec (schema/tly_codec.c) and the shared event
 * rules (tly_event_validate).
 *
 * What it proves: events survive encode/decode unchanged (table-driven:
 * with and without ai, properties, unicode, empty unit, int64 extremes);
 * the Confluent framing bytes are exact; every kind of bad input is refused
 * with a message saying why (magic byte, schema id, truncation at every
 * length, trailing bytes, huge or negative lengths and block counts, enum
 * and union indexes, negative counts, empty required strings, bad UTF-8);
 * and thousands of seeded random corruptions never crash or leak (run the
 * sanitizer build, TALLY_SANITIZE=ON, to have ASan check the latter). Raw
 * Avro inputs are written by hand with a tiny builder so that each test
 * shows exactly which bytes are wrong.
 *
 * Every decode here runs both decoders, tly_codec_decode() (avro-c, owned
 * strings) and tly_codec_decode_view() (direct, the processor's), and
 * requires the same answer: the same event field by field, or the same
 * error message.
 */
/* cmocka.h needs these first; the blank line keeps clang-format from
 * sorting it above them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tly_codec.h"
#include "tly_event.h"
#include "tly_event_json.h"

#include <jansson.h>

#define API_KEY_HASH                                                           \
  "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

/* tly_codec_decode(), checked against tly_codec_decode_view() on the same
 * bytes: same result, same message, same event. */
static int decode_checked(tly_codec_t *codec, const void *bytes, size_t len,
                          tly_event_t *event, char *errstr,
                          size_t errstr_size) {
  char view_error[512] = "";
  tly_event_t view;
  int view_rc = tly_codec_decode_view(codec, bytes, len, &view, view_error,
                                      sizeof(view_error));
  int rc = tly_codec_decode(codec, bytes, len, event, errstr, errstr_size);
  assert_int_equal(rc, view_rc);
  if (rc) {
    assert_true(errstr_size > 0);
    assert_int_equal(strncmp(errstr, view_error, errstr_size - 1), 0);
    return rc;
  }
  json_t *owned = NULL, *viewed = NULL;
  assert_int_equal(tly_event_to_json(event, &owned), 0);
  assert_int_equal(tly_event_to_json(&view, &viewed), 0);
  if (!json_equal(owned, viewed)) {
    char *a = json_dumps(owned, JSON_SORT_KEYS),
         *b = json_dumps(viewed, JSON_SORT_KEYS);
    fail_msg("decoders differ:\n  avro-c %s\n  direct %s", a, b);
  }
  json_decref(owned);
  json_decref(viewed);
  return rc;
}

/* ------------------------------------------------------------------ */
/* Event building                                                      */
/* ------------------------------------------------------------------ */

typedef struct {
  const char *name;
  const char *event_id;
  int64_t occurred_at_ms;
  tly_subject_kind_t kind;
  const char *subject_id;
  const char *feature;
  int64_t quantity;
  const char *unit;
  int has_ai;
  const char *provider;
  const char *model;
  int64_t input_tokens;
  int64_t output_tokens;
  size_t property_count;
  const char *const *properties; /* key, value, key, value, ... */
} spec_t;

static char *dup_or_null(const char *text) {
  char *copy;
  if (!text)
    return NULL;
  copy = strdup(text);
  assert_non_null(copy);
  return copy;
}

/* Builds an owned event (free with tly_event_clear) from a spec. */
static void build_event(const spec_t *spec, tly_event_t *event) {
  tly_usage_recorded_t *usage = &event->body.usage;
  memset(event, 0, sizeof(*event));
  event->event_id = dup_or_null(spec->event_id);
  event->occurred_at_ms = spec->occurred_at_ms;
  event->subject_kind = spec->kind;
  event->subject_id = dup_or_null(spec->subject_id);
  event->body_kind = TLY_BODY_USAGE_RECORDED;
  usage->feature = dup_or_null(spec->feature);
  usage->quantity = spec->quantity;
  usage->unit = dup_or_null(spec->unit);
  usage->has_ai = spec->has_ai;
  usage->ai.provider = dup_or_null(spec->provider);
  usage->ai.model = dup_or_null(spec->model);
  usage->ai.input_tokens = spec->input_tokens;
  usage->ai.output_tokens = spec->output_tokens;
  if (spec->property_count) {
    usage->properties =
        calloc(spec->property_count, sizeof(*usage->properties));
    assert_non_null(usage->properties);
    usage->property_count = spec->property_count;
    for (size_t i = 0; i < spec->property_count; i++) {
      usage->properties[i].key = dup_or_null(spec->properties[2 * i]);
      usage->properties[i].value = dup_or_null(spec->properties[2 * i + 1]);
    }
  }
}

static const char *find_property(const tly_usage_recorded_t *usage,
                                 const char *key) {
  for (size_t i = 0; i < usage->property_count; i++)
    if (strcmp(usage->properties[i].key, key) == 0)
      return usage->properties[i].value;
  return NULL;
}

/* Decoded event equals the spec (properties compared as a set: Avro maps
 * carry no order guarantee). */
static void assert_event_matches(const tly_event_t *event, const spec_t *spec) {
  const tly_usage_recorded_t *usage = &event->body.usage;
  assert_string_equal(event->event_id, spec->event_id);
  assert_true(event->occurred_at_ms == spec->occurred_at_ms);
  assert_int_equal(event->subject_kind, spec->kind);
  assert_string_equal(event->subject_id, spec->subject_id);
  assert_int_equal(event->body_kind, TLY_BODY_USAGE_RECORDED);
  assert_string_equal(usage->feature, spec->feature);
  assert_true(usage->quantity == spec->quantity);
  assert_non_null(usage->unit);
  assert_string_equal(usage->unit, spec->unit ? spec->unit : "");
  assert_int_equal(usage->has_ai, spec->has_ai);
  if (spec->has_ai) {
    assert_string_equal(usage->ai.provider, spec->provider);
    assert_string_equal(usage->ai.model, spec->model);
    assert_true(usage->ai.input_tokens == spec->input_tokens);
    assert_true(usage->ai.output_tokens == spec->output_tokens);
  } else {
    assert_null(usage->ai.provider);
    assert_null(usage->ai.model);
  }
  assert_int_equal(usage->property_count, spec->property_count);
  for (size_t i = 0; i < spec->property_count; i++) {
    const char *value = find_property(usage, spec->properties[2 * i]);
    assert_non_null(value);
    assert_string_equal(value, spec->properties[2 * i + 1]);
  }
}

static const char *const region_props[] = {"region", "eu", "tier", "gold"};
static const char *const unicode_props[] = {"città", "Zürich", "名前",
                                            "🚀 launch"};
static const char *const empty_props[] = {"", "", "k", ""};

static const spec_t round_trip_specs[] = {
    {.name = "minimal, empty unit",
     .event_id = "e-1",
     .occurred_at_ms = 1732300000000,
     .kind = TLY_SUBJECT_USER,
     .subject_id = "alice",
     .feature = "api_calls",
     .quantity = 1,
     .unit = ""},
    {.name = "NULL unit encodes as empty",
     .event_id = "e-2",
     .occurred_at_ms = 0,
     .kind = TLY_SUBJECT_USER,
     .subject_id = "bob",
     .feature = "api_calls",
     .quantity = 0,
     .unit = NULL},
    {.name = "with ai",
     .event_id = "e-3",
     .occurred_at_ms = 1732300000123,
     .kind = TLY_SUBJECT_API_KEY,
     .subject_id = API_KEY_HASH,
     .feature = "llm_tokens",
     .quantity = 15,
     .unit = "token",
     .has_ai = 1,
     .provider = "openai",
     .model = "gpt-4o",
     .input_tokens = 10,
     .output_tokens = 5},
    {.name = "with properties",
     .event_id = "e-4",
     .occurred_at_ms = 1,
     .kind = TLY_SUBJECT_ANONYMOUS,
     .subject_id = "fp-3c9a",
     .feature = "exports",
     .quantity = 2,
     .unit = "file",
     .property_count = 2,
     .properties = region_props},
    {.name = "unicode everywhere",
     .event_id = "évènement-✓",
     .occurred_at_ms = 1732300000000,
     .kind = TLY_SUBJECT_USER,
     .subject_id = "josé@例え.jp",
     .feature = "résumé_π",
     .quantity = 3,
     .unit = "€",
     .has_ai = 1,
     .provider = "mistral",
     .model = "le-modèle 😀",
     .input_tokens = 1,
     .output_tokens = 0,
     .property_count = 2,
     .properties = unicode_props},
    {.name = "empty property key and values",
     .event_id = "e-6",
     .occurred_at_ms = 5,
     .kind = TLY_SUBJECT_USER,
     .subject_id = "u",
     .feature = "f",
     .quantity = 1,
     .unit = "",
     .property_count = 2,
     .properties = empty_props},
    {.name = "int64 maxima",
     .event_id = "e-max",
     .occurred_at_ms = INT64_MAX,
     .kind = TLY_SUBJECT_USER,
     .subject_id = "max",
     .feature = "f",
     .quantity = INT64_MAX,
     .unit = "",
     .has_ai = 1,
     .provider = "p",
     .model = "m",
     .input_tokens = INT64_MAX,
     .output_tokens = INT64_MAX},
    {.name = "occurred_at before the epoch is carried as is",
     .event_id = "e-min",
     .occurred_at_ms = INT64_MIN,
     .kind = TLY_SUBJECT_USER,
     .subject_id = "min",
     .feature = "f",
     .quantity = 0,
     .unit = ""},
};

static tly_codec_t *new_codec(int32_t schema_id) {
  char errstr[256] = "";
  tly_codec_t *codec = tly_codec_new(schema_id, errstr, sizeof(errstr));
  if (!codec)
    fail_msg("tly_codec_new: %s", errstr);
  return codec;
}

/* Encodes spec into a malloc'd copy of the framed bytes. */
static unsigned char *encode_spec(tly_codec_t *codec, const spec_t *spec,
                                  size_t *len) {
  tly_event_t event;
  const void *out = NULL;
  char errstr[256] = "";
  unsigned char *copy;

  build_event(spec, &event);
  if (tly_codec_encode(codec, &event, &out, len, errstr, sizeof(errstr)))
    fail_msg("encode '%s': %s", spec->name, errstr);
  copy = malloc(*len);
  assert_non_null(copy);
  memcpy(copy, out, *len);
  tly_event_clear(&event);
  return copy;
}

static void test_round_trips(void **state) {
  tly_codec_t *codec = new_codec(TLY_CODEC_DEFAULT_SCHEMA_ID);
  (void)state;
  /* Twice over, so the second pass runs on a codec whose reused value and
   * buffers still hold the previous events (reset must really reset). */
  for (int pass = 0; pass < 2; pass++) {
    for (size_t i = 0; i < sizeof(round_trip_specs) / sizeof(*round_trip_specs);
         i++) {
      const spec_t *spec = &round_trip_specs[i];
      tly_event_t decoded = {0};
      char errstr[256] = "";
      size_t len;
      unsigned char *bytes = encode_spec(codec, spec, &len);

      if (decode_checked(codec, bytes, len, &decoded, errstr, sizeof(errstr)))
        fail_msg("decode '%s': %s", spec->name, errstr);
      assert_event_matches(&decoded, spec);
      tly_event_clear(&decoded);
      free(bytes);
    }
  }
  tly_codec_destroy(codec);
}

/* 40 properties: past the pairwise duplicate check, into the sorted one. */
static void test_round_trip_many_properties(void **state) {
  enum { COUNT = 40 };
  char keys[COUNT][16], values[COUNT][16];
  const char *pairs[2 * COUNT];
  spec_t spec = round_trip_specs[0];
  tly_codec_t *codec = new_codec(1);
  tly_event_t decoded = {0};
  char errstr[256] = "";
  size_t len;
  unsigned char *bytes;
  (void)state;

  for (int i = 0; i < COUNT; i++) {
    snprintf(keys[i], sizeof(keys[i]), "key-%02d", COUNT - i);
    snprintf(values[i], sizeof(values[i]), "value-%d", i);
    pairs[2 * i] = keys[i];
    pairs[2 * i + 1] = values[i];
  }
  spec.property_count = COUNT;
  spec.properties = pairs;
  bytes = encode_spec(codec, &spec, &len);
  assert_int_equal(
      decode_checked(codec, bytes, len, &decoded, errstr, sizeof(errstr)), 0);
  assert_event_matches(&decoded, &spec);
  tly_event_clear(&decoded);
  free(bytes);
  tly_codec_destroy(codec);
}

/* The largest valid event (64 properties, keys and values at their size
 * bounds: about 75 KB) crosses the encoder's initial buffer several
 * times. */
static void test_round_trip_largest_event(void **state) {
  enum { COUNT = TLY_EVENT_PROPERTIES_MAX };
  static char keys[COUNT][TLY_EVENT_PROPERTY_KEY_MAX + 1];
  static char values[COUNT][TLY_EVENT_PROPERTY_VALUE_MAX + 1];
  const char *pairs[2 * COUNT];
  spec_t spec = round_trip_specs[0];
  tly_codec_t *codec = new_codec(1);
  tly_event_t decoded = {0};
  char errstr[256] = "";
  size_t len;
  unsigned char *bytes;
  (void)state;

  for (int i = 0; i < COUNT; i++) {
    memset(keys[i], 'k', TLY_EVENT_PROPERTY_KEY_MAX);
    snprintf(keys[i], sizeof(keys[i]), "%03d", i);
    keys[i][3] = 'k'; /* unique, TLY_EVENT_PROPERTY_KEY_MAX bytes */
    memset(values[i], 'a' + i % 26, TLY_EVENT_PROPERTY_VALUE_MAX);
    values[i][TLY_EVENT_PROPERTY_VALUE_MAX] = '\0';
    pairs[2 * i] = keys[i];
    pairs[2 * i + 1] = values[i];
  }
  spec.property_count = COUNT;
  spec.properties = pairs;
  bytes = encode_spec(codec, &spec, &len);
  assert_true(len > COUNT * TLY_EVENT_PROPERTY_VALUE_MAX);
  assert_int_equal(
      decode_checked(codec, bytes, len, &decoded, errstr, sizeof(errstr)), 0);
  assert_event_matches(&decoded, &spec);
  tly_event_clear(&decoded);
  free(bytes);
  tly_codec_destroy(codec);
}

/* Decoding into an event that still holds a previous decode frees it. */
static void test_decode_reuses_event(void **state) {
  tly_codec_t *codec = new_codec(1);
  tly_event_t event = {0};
  char errstr[256];
  size_t len_a, len_b;
  unsigned char *a = encode_spec(codec, &round_trip_specs[4], &len_a);
  unsigned char *b = encode_spec(codec, &round_trip_specs[0], &len_b);
  (void)state;

  assert_int_equal(
      decode_checked(codec, a, len_a, &event, errstr, sizeof(errstr)), 0);
  assert_int_equal(
      decode_checked(codec, b, len_b, &event, errstr, sizeof(errstr)), 0);
  assert_event_matches(&event, &round_trip_specs[0]);
  /* A failed decode leaves the event cleared. */
  assert_int_not_equal(
      decode_checked(codec, b, len_b - 1, &event, errstr, sizeof(errstr)), 0);
  assert_null(event.event_id);
  assert_null(event.subject_id);
  assert_null(event.body.usage.feature);
  tly_event_clear(&event);
  free(a);
  free(b);
  tly_codec_destroy(codec);
}

/* ------------------------------------------------------------------ */
/* Framing and exact bytes                                             */
/* ------------------------------------------------------------------ */

static const spec_t tiny = {.name = "tiny",
                            .event_id = "e",
                            .occurred_at_ms = 1,
                            .kind = TLY_SUBJECT_USER,
                            .subject_id = "a",
                            .feature = "f",
                            .quantity = 2,
                            .unit = ""};

static void test_framing_bytes(void **state) {
  static const unsigned char default_header[5] = {0, 0, 0, 0, 1};
  static const unsigned char custom_header[5] = {0, 0x01, 0x02, 0x03, 0x04};
  tly_codec_t *codec = new_codec(TLY_CODEC_DEFAULT_SCHEMA_ID);
  tly_codec_t *custom = new_codec(0x01020304);
  size_t len;
  unsigned char *bytes;
  (void)state;

  bytes = encode_spec(codec, &tiny, &len);
  assert_memory_equal(bytes, default_header, 5);
  free(bytes);
  bytes = encode_spec(custom, &tiny, &len);
  assert_memory_equal(bytes, custom_header, 5);
  free(bytes);
  tly_codec_destroy(codec);
  tly_codec_destroy(custom);
}

/* The whole message, byte for byte, as the Avro spec defines it: what a
 * Java or Python consumer with the same schema would read. */
static void test_exact_encoding(void **state) {
  static const unsigned char expected[] = {
      0x00, 0x00, 0x00, 0x00, 0x01, /* magic, schema id 1 */
      0x02, 'e',                    /* event_id "e" */
      0x02,                         /* occurred_at 1 (zigzag 2) */
      0x00,                         /* subject.kind user */
      0x02, 'a',                    /* subject.id "a" */
      0x00,                         /* body: UsageRecorded */
      0x02, 'f',                    /* feature "f" */
      0x04,                         /* quantity 2 */
      0x00,                         /* unit "" */
      0x00,                         /* ai: null */
      0x00,                         /* properties: empty map */
  };
  tly_codec_t *codec = new_codec(1);
  size_t len;
  unsigned char *bytes = encode_spec(codec, &tiny, &len);
  (void)state;

  assert_int_equal(len, sizeof(expected));
  assert_memory_equal(bytes, expected, sizeof(expected));
  free(bytes);
  tly_codec_destroy(codec);
}

static void test_codec_new_rejects_negative_id(void **state) {
  char errstr[128] = "";
  (void)state;
  assert_null(tly_codec_new(-1, errstr, sizeof(errstr)));
  assert_non_null(strstr(errstr, "negative"));
}

/* ------------------------------------------------------------------ */
/* Hand-written Avro input                                             */
/* ------------------------------------------------------------------ */

typedef struct {
  unsigned char bytes[4096];
  size_t len;
} msg_t;

static void put_raw(msg_t *m, const void *data, size_t len) {
  assert_true(m->len + len <= sizeof(m->bytes));
  memcpy(m->bytes + m->len, data, len);
  m->len += len;
}

/* Avro long: zigzag, then base-128 varint. */
static void put_long(msg_t *m, int64_t value) {
  uint64_t n = ((uint64_t)value << 1) ^ (uint64_t)(value >> 63);
  while (n & ~(uint64_t)0x7F) {
    unsigned char byte = (unsigned char)((n & 0x7F) | 0x80);
    put_raw(m, &byte, 1);
    n >>= 7;
  }
  unsigned char last = (unsigned char)n;
  put_raw(m, &last, 1);
}

static void put_string_len(msg_t *m, const char *text, size_t len) {
  put_long(m, (int64_t)len);
  put_raw(m, text, len);
}

static void put_string(msg_t *m, const char *text) {
  put_string_len(m, text, strlen(text));
}

/* The fields of a raw envelope; defaults are valid, tests break one. */
typedef struct {
  uint32_t schema_id;
  const char *event_id;
  int64_t occurred_at;
  int64_t kind;
  const char *subject_id;
  int64_t body_branch;
  const char *feature;
  int64_t quantity;
  const char *unit;
  int64_t ai_branch;
  const char *provider;
  const char *model;
  int64_t input_tokens;
  int64_t output_tokens;
  /* properties, already encoded (with the terminating 0); NULL = empty */
  const unsigned char *props;
  size_t props_len;
} raw_t;

static raw_t raw_valid(void) {
  raw_t raw = {.schema_id = 1,
               .event_id = "e-1",
               .occurred_at = 1732300000000,
               .kind = 0,
               .subject_id = "alice",
               .body_branch = 0,
               .feature = "api_calls",
               .quantity = 1,
               .unit = "call",
               .ai_branch = 1,
               .provider = "openai",
               .model = "gpt-4o",
               .input_tokens = 10,
               .output_tokens = 5};
  return raw;
}

static void put_header(msg_t *m, uint32_t schema_id) {
  unsigned char header[5] = {
      0, (unsigned char)(schema_id >> 24), (unsigned char)(schema_id >> 16),
      (unsigned char)(schema_id >> 8), (unsigned char)schema_id};
  put_raw(m, header, sizeof(header));
}

static void build_raw(msg_t *m, const raw_t *raw) {
  static const unsigned char empty_map = 0;
  m->len = 0;
  put_header(m, raw->schema_id);
  put_string(m, raw->event_id);
  put_long(m, raw->occurred_at);
  put_long(m, raw->kind);
  put_string(m, raw->subject_id);
  put_long(m, raw->body_branch);
  put_string(m, raw->feature);
  put_long(m, raw->quantity);
  put_string(m, raw->unit);
  put_long(m, raw->ai_branch);
  if (raw->ai_branch == 1) {
    put_string(m, raw->provider);
    put_string(m, raw->model);
    put_long(m, raw->input_tokens);
    put_long(m, raw->output_tokens);
  }
  if (raw->props)
    put_raw(m, raw->props, raw->props_len);
  else
    put_raw(m, &empty_map, 1);
}

/* Decodes m; expects failure whose message contains want. */
static void expect_decode_error(tly_codec_t *codec, const void *bytes,
                                size_t len, const char *want) {
  tly_event_t event = {0};
  char errstr[512] = "";
  int rc = decode_checked(codec, bytes, len, &event, errstr, sizeof(errstr));
  if (rc == 0)
    fail_msg("decode unexpectedly succeeded (wanted '%s')", want);
  if (!strstr(errstr, want))
    fail_msg("error '%s' does not contain '%s'", errstr, want);
  /* On error the event is left cleared: nothing to free, nothing stale. */
  assert_null(event.event_id);
  assert_null(event.subject_id);
  assert_null(event.body.usage.feature);
  assert_null(event.body.usage.unit);
  assert_null(event.body.usage.properties);
  tly_event_clear(&event);
}

static void expect_raw_error(tly_codec_t *codec, const raw_t *raw,
                             const char *want) {
  msg_t m;
  build_raw(&m, raw);
  expect_decode_error(codec, m.bytes, m.len, want);
}

static void test_raw_valid_decodes(void **state) {
  tly_codec_t *codec = new_codec(1);
  raw_t raw = raw_valid();
  tly_event_t event = {0};
  char errstr[256] = "";
  msg_t m;
  (void)state;

  build_raw(&m, &raw);
  assert_int_equal(
      decode_checked(codec, m.bytes, m.len, &event, errstr, sizeof(errstr)), 0);
  assert_string_equal(event.event_id, "e-1");
  assert_string_equal(event.body.usage.ai.model, "gpt-4o");
  tly_event_clear(&event);
  tly_codec_destroy(codec);
}

static void test_reject_framing(void **state) {
  tly_codec_t *codec = new_codec(1);
  static const unsigned char json[] = "{\"event_id\":\"e\"}";
  static const unsigned char short_header[] = {0, 0, 0};
  raw_t raw = raw_valid();
  msg_t m;
  (void)state;

  expect_decode_error(codec, json, sizeof(json) - 1,
                      "bad magic byte 0x7b (expected 0)");
  build_raw(&m, &raw);
  m.bytes[0] = 0x01;
  expect_decode_error(codec, m.bytes, m.len,
                      "bad magic byte 0x01 (expected 0)");
  expect_decode_error(codec, "", 0, "empty message");
  expect_decode_error(codec, NULL, 0, "empty message");
  expect_decode_error(codec, short_header, sizeof(short_header),
                      "truncated header");
  raw.schema_id = 2;
  expect_raw_error(codec, &raw,
                   "unknown schema id 2 (this codec reads schema id 1)");
  raw.schema_id = 0x80000001u;
  expect_raw_error(codec, &raw, "unknown schema id 2147483649");
  tly_codec_destroy(codec);
}

static void test_reject_every_truncation(void **state) {
  tly_codec_t *codec = new_codec(1);
  static const char *const props[] = {"region", "eu", "tier", "gold"};
  spec_t spec = round_trip_specs[2];
  size_t len;
  unsigned char *bytes;
  (void)state;

  spec.property_count = 2;
  spec.properties = props;
  bytes = encode_spec(codec, &spec, &len);
  for (size_t cut = 0; cut < len; cut++) {
    /* A fresh copy of exactly cut bytes, so ASan sees any over-read. */
    unsigned char *prefix = malloc(cut ? cut : 1);
    tly_event_t event = {0};
    char errstr[256] = "";
    assert_non_null(prefix);
    memcpy(prefix, bytes, cut);
    if (decode_checked(codec, prefix, cut, &event, errstr, sizeof(errstr)) == 0)
      fail_msg("decode of %zu of %zu bytes succeeded", cut, len);
    assert_true(strlen(errstr) > 0);
    /* Mostly "truncated Avro record"; a cut can also leave a map count
     * that no longer fits, which reads as corruption. */
    if (cut >= TLY_CODEC_HEADER_SIZE)
      assert_non_null(strstr(errstr, "Avro record"));
    assert_null(event.event_id);
    free(prefix);
  }
  free(bytes);
  tly_codec_destroy(codec);
}

static void test_reject_trailing_bytes(void **state) {
  tly_codec_t *codec = new_codec(1);
  raw_t raw = raw_valid();
  msg_t m;
  (void)state;

  build_raw(&m, &raw);
  m.bytes[m.len++] = 0x00;
  expect_decode_error(codec, m.bytes, m.len,
                      "trailing bytes after the Avro record: 1 of");
  put_string(&m, "more");
  expect_decode_error(codec, m.bytes, m.len, "trailing bytes");
  tly_codec_destroy(codec);
}

/* Lengths that would make avro-c allocate what the input cannot back, or
 * write before its buffer. Under ASan a huge malloc aborts the test, so a
 * pass here also proves none was attempted. */
static void test_reject_corrupt_lengths(void **state) {
  tly_codec_t *codec = new_codec(1);
  msg_t m;
  static const unsigned char too_long_varint[] = {
      0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01};
  static const unsigned char overflow_varint[] = {0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                                                  0xFF, 0xFF, 0xFF, 0xFF, 0x7F};
  (void)state;

  /* event_id claims 2^62 bytes */
  m.len = 0;
  put_header(&m, 1);
  put_long(&m, INT64_C(1) << 62);
  put_raw(&m, "abc", 3);
  expect_decode_error(codec, m.bytes, m.len, "truncated Avro record");
  expect_decode_error(codec, m.bytes, m.len, "field 'event_id'");

  /* event_id claims INT64_MAX bytes */
  m.len = 0;
  put_header(&m, 1);
  put_long(&m, INT64_MAX);
  expect_decode_error(codec, m.bytes, m.len, "only 0 bytes left");

  /* negative lengths: -1 would have avro-c write before its buffer */
  for (int64_t length = -1; length >= -3; length--) {
    m.len = 0;
    put_header(&m, 1);
    put_long(&m, length);
    put_raw(&m, "abcdef", 6);
    expect_decode_error(codec, m.bytes, m.len, "negative string length");
  }
  m.len = 0;
  put_header(&m, 1);
  put_long(&m, INT64_MIN);
  expect_decode_error(codec, m.bytes, m.len, "negative string length");

  /* a string length one past the end */
  m.len = 0;
  put_header(&m, 1);
  put_long(&m, 4);
  put_raw(&m, "abc", 3);
  expect_decode_error(codec, m.bytes, m.len,
                      "string length 4 but only 3 bytes left");

  /* varints: more than 10 bytes, and 10 bytes overflowing 64 bits */
  m.len = 0;
  put_header(&m, 1);
  put_raw(&m, too_long_varint, sizeof(too_long_varint));
  expect_decode_error(codec, m.bytes, m.len, "varint");
  m.len = 0;
  put_header(&m, 1);
  put_raw(&m, overflow_varint, sizeof(overflow_varint));
  expect_decode_error(codec, m.bytes, m.len, "varint overflows 64 bits");
  tly_codec_destroy(codec);
}

static void test_reject_corrupt_maps(void **state) {
  tly_codec_t *codec = new_codec(1);
  raw_t raw = raw_valid();
  msg_t props;
  (void)state;

#define USE_PROPS()                                                            \
  do {                                                                         \
    raw.props = props.bytes;                                                   \
    raw.props_len = props.len;                                                 \
  } while (0)

  /* 2^40 entries in a handful of bytes */
  props.len = 0;
  put_long(&props, INT64_C(1) << 40);
  put_string(&props, "k");
  put_string(&props, "v");
  put_long(&props, 0);
  USE_PROPS();
  expect_raw_error(codec, &raw, "cannot fit");

  /* negative count INT64_MIN: its negation does not exist */
  props.len = 0;
  put_long(&props, INT64_MIN);
  put_long(&props, 4);
  USE_PROPS();
  expect_raw_error(codec, &raw, "block count out of range");

  /* negative count with a huge or negative byte size */
  props.len = 0;
  put_long(&props, -1);
  put_long(&props, INT64_C(1) << 50);
  USE_PROPS();
  expect_raw_error(codec, &raw, "block size");
  props.len = 0;
  put_long(&props, -1);
  put_long(&props, -4);
  USE_PROPS();
  expect_raw_error(codec, &raw, "block size");

  /* negative count whose byte size disagrees with its entries */
  props.len = 0;
  put_long(&props, -1);
  put_long(&props, 3);
  put_string(&props, "k");
  put_string(&props, "vv");
  put_long(&props, 0);
  USE_PROPS();
  expect_raw_error(codec, &raw, "block size 3 but its entries took 5 bytes");

  /* missing end-of-map marker */
  props.len = 0;
  put_long(&props, 1);
  put_string(&props, "k");
  put_string(&props, "v");
  USE_PROPS();
  expect_raw_error(codec, &raw, "truncated Avro record");

  /* the same key twice: avro-c would keep one and drop the other */
  props.len = 0;
  put_long(&props, 2);
  put_string(&props, "k");
  put_string(&props, "a");
  put_string(&props, "k");
  put_string(&props, "b");
  put_long(&props, 0);
  USE_PROPS();
  expect_raw_error(codec, &raw, "duplicate map key");

  /* a key with bad UTF-8 */
  props.len = 0;
  put_long(&props, 1);
  put_string(&props, "\xC3\x28");
  put_string(&props, "v");
  put_long(&props, 0);
  USE_PROPS();
  expect_raw_error(codec, &raw, "map key is not valid UTF-8");
#undef USE_PROPS
  tly_codec_destroy(codec);
}

/* Blocked maps as other writers (Java's) produce them are accepted. */
static void test_accept_blocked_maps(void **state) {
  tly_codec_t *codec = new_codec(1);
  raw_t raw = raw_valid();
  tly_event_t event = {0};
  char errstr[256] = "";
  msg_t props, m;
  (void)state;

  props.len = 0;
  put_long(&props, -1); /* one entry, byte size follows */
  put_long(&props, 4);  /* "a" "1": 1+1 + 1+1 bytes */
  put_string(&props, "a");
  put_string(&props, "1");
  put_long(&props, 2); /* a second block of two */
  put_string(&props, "b");
  put_string(&props, "2");
  put_string(&props, "c");
  put_string(&props, "3");
  put_long(&props, 0);
  raw.props = props.bytes;
  raw.props_len = props.len;
  build_raw(&m, &raw);
  if (decode_checked(codec, m.bytes, m.len, &event, errstr, sizeof(errstr)))
    fail_msg("decode: %s", errstr);
  assert_int_equal(event.body.usage.property_count, 3);
  assert_string_equal(find_property(&event.body.usage, "a"), "1");
  assert_string_equal(find_property(&event.body.usage, "b"), "2");
  assert_string_equal(find_property(&event.body.usage, "c"), "3");
  tly_event_clear(&event);
  tly_codec_destroy(codec);
}

static void test_reject_enum_and_union(void **state) {
  tly_codec_t *codec = new_codec(1);
  raw_t raw;
  (void)state;

  raw = raw_valid();
  raw.kind = 4;
  expect_raw_error(codec, &raw,
                   "field 'subject.kind': enum index 4 out of range");
  raw.kind = -1;
  expect_raw_error(codec, &raw, "enum index -1 out of range");
  raw.kind = INT64_MAX;
  expect_raw_error(codec, &raw, "enum index");

  raw = raw_valid();
  raw.body_branch = TLY_BODY__COUNT;
  expect_raw_error(codec, &raw, "field 'body': union branch 12 out of range");
  raw.body_branch = -1;
  expect_raw_error(codec, &raw, "union branch -1 out of range");

  raw = raw_valid();
  raw.ai_branch = 2;
  expect_raw_error(codec, &raw, "field 'body.ai': union branch 2");
  tly_codec_destroy(codec);
}

static void test_reject_invalid_fields(void **state) {
  tly_codec_t *codec = new_codec(1);
  raw_t raw;
  (void)state;

  raw = raw_valid();
  raw.quantity = -1;
  expect_raw_error(codec, &raw, "field 'quantity': must be an integer >= 0");
  raw.quantity = INT64_MIN;
  expect_raw_error(codec, &raw, "field 'quantity'");

  raw = raw_valid();
  raw.input_tokens = -5;
  expect_raw_error(codec, &raw, "field 'ai.input_tokens'");
  raw = raw_valid();
  raw.output_tokens = -1;
  expect_raw_error(codec, &raw, "field 'ai.output_tokens'");

  raw = raw_valid();
  raw.event_id = "";
  expect_raw_error(codec, &raw, "field 'event_id': must be a non-empty");
  raw = raw_valid();
  raw.subject_id = "";
  expect_raw_error(codec, &raw, "subject id must not be empty");
  raw = raw_valid();
  raw.feature = "";
  expect_raw_error(codec, &raw, "field 'feature': must be a non-empty");
  raw = raw_valid();
  raw.model = "";
  expect_raw_error(codec, &raw, "field 'ai.model'");

  /* api_key subjects carry the SHA-256 hex, never the key */
  raw = raw_valid();
  raw.kind = TLY_SUBJECT_API_KEY;
  raw.subject_id = "sk_live_abcdef";
  expect_raw_error(codec, &raw, "raw keys are never accepted");
  raw.subject_id = API_KEY_HASH;
  {
    msg_t m;
    tly_event_t event = {0};
    char errstr[256];
    build_raw(&m, &raw);
    assert_int_equal(
        decode_checked(codec, m.bytes, m.len, &event, errstr, sizeof(errstr)),
        0);
    tly_event_clear(&event);
  }

  /* strings: C strings cannot hold NUL; Avro strings must be UTF-8 */
  raw = raw_valid();
  raw.feature = "\xff\xfe";
  expect_raw_error(codec, &raw,
                   "field 'body.feature': string is not valid UTF-8");
  raw = raw_valid();
  raw.subject_id = "\xed\xa0\x80"; /* a UTF-16 surrogate */
  expect_raw_error(codec, &raw, "not valid UTF-8");
  raw = raw_valid();
  raw.unit = "\xc0\xaf"; /* overlong '/' */
  expect_raw_error(codec, &raw, "not valid UTF-8");
  {
    msg_t m;
    m.len = 0;
    put_header(&m, 1);
    put_string_len(&m, "e\0x", 3);
    expect_decode_error(codec, m.bytes, m.len,
                        "field 'event_id': string contains a NUL byte");
  }
  tly_codec_destroy(codec);
}

/* ------------------------------------------------------------------ */
/* Encode validation                                                   */
/* ------------------------------------------------------------------ */

static void expect_encode_error(tly_codec_t *codec, const spec_t *spec,
                                const char *want) {
  tly_event_t event;
  const void *out = NULL;
  size_t len = 0;
  char errstr[512] = "";

  build_event(spec, &event);
  if (tly_codec_encode(codec, &event, &out, &len, errstr, sizeof(errstr)) == 0)
    fail_msg("encode unexpectedly succeeded (wanted '%s')", want);
  if (!strstr(errstr, want))
    fail_msg("error '%s' does not contain '%s'", errstr, want);
  tly_event_clear(&event);
}

static void test_encode_rejects(void **state) {
  static const char *const duplicate_props[] = {"a", "1", "b", "2", "a", "3"};
  static const char *const latin1_props[] = {"city", "Z\xfcrich", "k", "v"};
  tly_codec_t *codec = new_codec(1);
  spec_t spec;
  (void)state;

  spec = tiny;
  spec.event_id = NULL;
  expect_encode_error(codec, &spec, "field 'event_id'");
  spec.event_id = "";
  expect_encode_error(codec, &spec, "field 'event_id'");
  spec = tiny;
  spec.subject_id = "";
  expect_encode_error(codec, &spec, "field 'subject'");
  spec.subject_id = NULL;
  expect_encode_error(codec, &spec, "field 'subject'");
  spec = tiny;
  spec.kind = (tly_subject_kind_t)7;
  expect_encode_error(codec, &spec, "subject kind 7 is out of range");
  spec = tiny;
  spec.kind = TLY_SUBJECT_API_KEY;
  spec.subject_id = "sk_live_123";
  expect_encode_error(codec, &spec, "raw keys are never accepted");
  spec.subject_id = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0"
                    "F00A08"; /* uppercase: one spelling per key */
  expect_encode_error(codec, &spec, "lowercase hex");
  spec = tiny;
  spec.feature = NULL;
  expect_encode_error(codec, &spec, "field 'feature'");
  spec = tiny;
  spec.quantity = -1;
  expect_encode_error(codec, &spec,
                      "field 'quantity': must be an integer >= 0");
  spec = round_trip_specs[2];
  spec.input_tokens = -1;
  expect_encode_error(codec, &spec, "field 'ai.input_tokens'");
  spec = round_trip_specs[2];
  spec.output_tokens = INT64_MIN;
  expect_encode_error(codec, &spec, "field 'ai.output_tokens'");
  spec = round_trip_specs[2];
  spec.provider = "";
  expect_encode_error(codec, &spec, "field 'ai.provider'");
  spec = round_trip_specs[2];
  spec.model = NULL;
  expect_encode_error(codec, &spec, "field 'ai.model'");
  /* what decode would refuse, encode refuses too */
  spec = tiny;
  spec.feature = "caf\xe9"; /* Latin-1, not UTF-8 */
  expect_encode_error(codec, &spec, "field 'feature': string is not valid");
  spec = round_trip_specs[3];
  spec.properties = latin1_props;
  expect_encode_error(codec, &spec, "field 'properties (value)'");
  spec = tiny;
  spec.property_count = 3;
  spec.properties = duplicate_props;
  expect_encode_error(codec, &spec, "duplicate key 'a'");

  {
    tly_event_t event;
    const void *out;
    size_t len;
    char errstr[256] = "";
    build_event(&tiny, &event);
    event.body_kind = TLY_BODY__COUNT;
    assert_int_not_equal(
        tly_codec_encode(codec, &event, &out, &len, errstr, sizeof(errstr)), 0);
    assert_non_null(strstr(errstr, "body kind"));
    event.body_kind = TLY_BODY_USAGE_RECORDED;
    tly_event_clear(&event);
  }

  /* The codec still works after refusals. */
  {
    size_t len;
    unsigned char *bytes = encode_spec(codec, &tiny, &len);
    free(bytes);
  }
  tly_codec_destroy(codec);
}

/* Many properties with one duplicate: the sorted path of the check. */
static void test_encode_rejects_duplicate_among_many(void **state) {
  enum { COUNT = 30 };
  char keys[COUNT][16];
  const char *pairs[2 * COUNT];
  spec_t spec = tiny;
  tly_codec_t *codec = new_codec(1);
  (void)state;

  for (int i = 0; i < COUNT; i++) {
    snprintf(keys[i], sizeof(keys[i]), "k%d", i == COUNT - 1 ? 7 : i);
    pairs[2 * i] = keys[i];
    pairs[2 * i + 1] = "v";
  }
  spec.property_count = COUNT;
  spec.properties = pairs;
  expect_encode_error(codec, &spec, "duplicate key 'k7'");
  tly_codec_destroy(codec);
}

/* ------------------------------------------------------------------ */
/* Random corruption                                                   */
/* ------------------------------------------------------------------ */

/* Deterministic so that a failure reproduces: a 64-bit LCG (Knuth). */
static uint64_t rng_state;
static uint32_t rng_next(void) {
  rng_state = rng_state * 6364136223846793005u + 1442695040888963407u;
  return (uint32_t)(rng_state >> 33);
}

static void decode_must_not_crash(tly_codec_t *codec, const unsigned char *src,
                                  size_t len, size_t *accepted) {
  /* An exact-size heap copy: ASan flags any read past len. */
  unsigned char *copy = malloc(len ? len : 1);
  tly_event_t event = {0};
  char errstr[256] = "";
  assert_non_null(copy);
  memcpy(copy, src, len);
  if (decode_checked(codec, copy, len, &event, errstr, sizeof(errstr)) == 0) {
    /* Whatever decodes must satisfy the rules. */
    char reason[256];
    assert_int_equal(tly_event_validate(&event, reason, sizeof(reason)), 0);
    (*accepted)++;
  } else {
    assert_true(strlen(errstr) > 0);
  }
  tly_event_clear(&event);
  free(copy);
}

static void test_random_corruption(void **state) {
  tly_codec_t *codec = new_codec(1);
  spec_t spec = round_trip_specs[4]; /* ai, unicode, properties */
  size_t len, accepted = 0;
  unsigned char *valid = encode_spec(codec, &spec, &len);
  unsigned char work[512];
  (void)state;

  assert_true(len <= sizeof(work));
  rng_state = 20261123;
  for (int round = 0; round < 5000; round++) {
    size_t work_len = len;
    int flips = 1 + (int)(rng_next() % 4);
    memcpy(work, valid, len);
    for (int i = 0; i < flips; i++) {
      /* Mostly past the header, where the interesting parsing is. */
      size_t at = TLY_CODEC_HEADER_SIZE + rng_next() % (len - 5);
      if (rng_next() % 8 == 0)
        at = rng_next() % len;
      if (rng_next() % 2)
        work[at] ^= (unsigned char)(1u << (rng_next() % 8));
      else
        work[at] = (unsigned char)rng_next();
    }
    if (rng_next() % 4 == 0)
      work_len = rng_next() % (len + 1);
    decode_must_not_crash(codec, work, work_len, &accepted);
  }

  /* Pure noise after a valid header. */
  for (int round = 0; round < 2000; round++) {
    size_t work_len = TLY_CODEC_HEADER_SIZE + rng_next() % 64;
    memcpy(work, valid, TLY_CODEC_HEADER_SIZE);
    for (size_t i = TLY_CODEC_HEADER_SIZE; i < work_len; i++)
      work[i] = (unsigned char)rng_next();
    decode_must_not_crash(codec, work, work_len, &accepted);
  }

  /* The codec is still sound afterwards. */
  {
    tly_event_t event = {0};
    char errstr[256];
    assert_int_equal(
        decode_checked(codec, valid, len, &event, errstr, sizeof(errstr)), 0);
    assert_event_matches(&event, &spec);
    tly_event_clear(&event);
  }
  print_message("random corruption: %zu of 7000 inputs still decoded\n",
                accepted);
  free(valid);
  tly_codec_destroy(codec);
}

/* ------------------------------------------------------------------ */
/* The other body kinds                                                */
/* ------------------------------------------------------------------ */

/* A valid event of kind (UsageRecorded excluded), owned by the caller;
 * variant 1 takes the extremes and leaves optional strings NULL. */
static void build_flat(tly_body_kind_t kind, int variant, tly_event_t *event) {
  int extreme = variant == 1;
  memset(event, 0, sizeof(*event));
  event->event_id = dup_or_null(extreme ? "évènement-✓" : "e-flat");
  event->occurred_at_ms = extreme ? INT64_MAX : 1732300000000;
  event->subject_kind = kind == TLY_BODY_TICK ? TLY_SUBJECT_SYSTEM
                        : extreme             ? TLY_SUBJECT_API_KEY
                                              : TLY_SUBJECT_USER;
  event->subject_id = dup_or_null(kind == TLY_BODY_TICK ? "tick"
                                  : extreme             ? API_KEY_HASH
                                                        : "alice");
  event->body_kind = kind;
  switch (kind) {
  case TLY_BODY_PLAN_ASSIGNED:
    event->body.plan_assigned.plan = dup_or_null(extreme ? "prö 😀" : "pro");
    break;
  case TLY_BODY_SUBSCRIPTION_CHANGED: {
    tly_subscription_changed_t *b = &event->body.subscription_changed;
    b->plan = dup_or_null("team");
    b->stripe_subscription_id = dup_or_null(extreme ? NULL : "sub_123");
    b->stripe_price_id = dup_or_null(extreme ? NULL : "price_9");
    b->period_start_ms = extreme ? 0 : 1730000000000;
    b->period_end_ms = extreme ? INT64_MAX : 1732600000000;
    break;
  }
  case TLY_BODY_SUBSCRIPTION_CANCELED:
    event->body.subscription_canceled.stripe_subscription_id =
        dup_or_null(extreme ? NULL : "sub_123");
    event->body.subscription_canceled.reason =
        dup_or_null(extreme ? NULL : "cancellation_requested");
    break;
  case TLY_BODY_INVOICE_PAID: {
    tly_invoice_paid_t *b = &event->body.invoice_paid;
    b->invoice_id = dup_or_null("in_1");
    b->amount_paid_micros = extreme ? INT64_MAX : 49000000;
    b->period_start_ms = extreme ? INT64_MAX - 1 : 1732600000000;
    b->period_end_ms = extreme ? INT64_MAX : 1735200000000;
    break;
  }
  case TLY_BODY_PAYMENT_FAILED: {
    tly_payment_failed_t *b = &event->body.payment_failed;
    b->invoice_id = dup_or_null("in_2");
    b->amount_due_micros = extreme ? 0 : 49000000;
    b->attempt = extreme ? INT32_MAX : 2;
    break;
  }
  case TLY_BODY_CUSTOMER_LINKED:
    event->body.customer_linked.stripe_customer_id = dup_or_null("cus_42");
    break;
  case TLY_BODY_TICK:
    event->body.tick.partition = extreme ? INT32_MAX : 7;
    break;
  case TLY_BODY_RESERVATION_HELD: {
    tly_reservation_held_t *b = &event->body.reservation_held;
    b->reservation_id =
        dup_or_null(extreme ? "rsv_0123456789abcdefghijklmnopqrstuvwxyz-_ABCDE"
                              "FGHIJKLMNOPQR"
                            : "rsv_1");
    b->feature = dup_or_null(extreme ? "fëature 😀" : "api_calls");
    b->quantity = extreme ? TLY_RESERVATION_QUANTITY_MAX : 5;
    b->ttl_ms = extreme ? TLY_RESERVATION_TTL_MAX_MS : 300000;
    break;
  }
  case TLY_BODY_RESERVATION_RELEASED:
    event->body.reservation_released.reservation_id =
        dup_or_null(extreme ? "Z" : "rsv_1");
    break;
  case TLY_BODY_NOTIFICATION_READ:
    event->body.notification_read.alert_id =
        dup_or_null(extreme ? "limit_exceeded:user:ë😀:253402300799999:"
                              "api_calls:100"
                            : "limit_warning:user:alice:1:api_calls:25");
    event->body.notification_read.alert_at_ms =
        extreme ? 253402300799999LL : 1793491200000LL;
    break;
  case TLY_BODY_USAGE_CORRECTED: {
    tly_usage_recorded_t *b = &event->body.usage;
    b->corrects = dup_or_null(extreme ? "ëvent 😀" : "ev-1");
    b->feature = dup_or_null(extreme ? "fëature 😀" : "api_calls");
    b->quantity = extreme ? INT64_MAX : 0;
    b->unit = dup_or_null(extreme ? "tok" : NULL);
    if (extreme) {
      b->has_ai = 1;
      b->ai.provider = dup_or_null("openai");
      b->ai.model = dup_or_null("gpt-4o");
      b->ai.input_tokens = INT64_MAX;
      b->ai.output_tokens = 7;
    }
    break;
  }
  default:
    fail_msg("build_flat: kind %d", (int)kind);
  }
}

/* NULL in the original reads back as "". */
static void assert_text(const char *got, const char *want) {
  assert_non_null(got);
  assert_string_equal(got, want ? want : "");
}

static void assert_flat_equal(const tly_event_t *got, const tly_event_t *want) {
  assert_string_equal(got->event_id, want->event_id);
  assert_true(got->occurred_at_ms == want->occurred_at_ms);
  assert_int_equal(got->subject_kind, want->subject_kind);
  assert_string_equal(got->subject_id, want->subject_id);
  assert_int_equal(got->body_kind, want->body_kind);
  switch (want->body_kind) {
  case TLY_BODY_PLAN_ASSIGNED:
    assert_text(got->body.plan_assigned.plan, want->body.plan_assigned.plan);
    break;
  case TLY_BODY_USAGE_CORRECTED: {
    const tly_usage_recorded_t *a = &got->body.usage, *b = &want->body.usage;
    assert_text(a->corrects, b->corrects);
    assert_text(a->feature, b->feature);
    assert_true(a->quantity == b->quantity);
    assert_text(a->unit, b->unit);
    assert_int_equal(a->has_ai, b->has_ai);
    if (b->has_ai) {
      assert_text(a->ai.provider, b->ai.provider);
      assert_text(a->ai.model, b->ai.model);
      assert_true(a->ai.input_tokens == b->ai.input_tokens);
      assert_true(a->ai.output_tokens == b->ai.output_tokens);
    }
    assert_int_equal(a->property_count, 0);
    break;
  }
  case TLY_BODY_SUBSCRIPTION_CHANGED: {
    const tly_subscription_changed_t *a = &got->body.subscription_changed,
                                     *b = &want->body.subscription_changed;
    assert_text(a->plan, b->plan);
    assert_text(a->stripe_subscription_id, b->stripe_subscription_id);
    assert_text(a->stripe_price_id, b->stripe_price_id);
    assert_true(a->period_start_ms == b->period_start_ms);
    assert_true(a->period_end_ms == b->period_end_ms);
    break;
  }
  case TLY_BODY_SUBSCRIPTION_CANCELED:
    assert_text(got->body.subscription_canceled.stripe_subscription_id,
                want->body.subscription_canceled.stripe_subscription_id);
    assert_text(got->body.subscription_canceled.reason,
                want->body.subscription_canceled.reason);
    break;
  case TLY_BODY_INVOICE_PAID: {
    const tly_invoice_paid_t *a = &got->body.invoice_paid,
                             *b = &want->body.invoice_paid;
    assert_text(a->invoice_id, b->invoice_id);
    assert_true(a->amount_paid_micros == b->amount_paid_micros);
    assert_true(a->period_start_ms == b->period_start_ms);
    assert_true(a->period_end_ms == b->period_end_ms);
    break;
  }
  case TLY_BODY_PAYMENT_FAILED:
    assert_text(got->body.payment_failed.invoice_id,
                want->body.payment_failed.invoice_id);
    assert_true(got->body.payment_failed.amount_due_micros ==
                want->body.payment_failed.amount_due_micros);
    assert_int_equal(got->body.payment_failed.attempt,
                     want->body.payment_failed.attempt);
    break;
  case TLY_BODY_CUSTOMER_LINKED:
    assert_text(got->body.customer_linked.stripe_customer_id,
                want->body.customer_linked.stripe_customer_id);
    break;
  case TLY_BODY_TICK:
    assert_int_equal(got->body.tick.partition, want->body.tick.partition);
    break;
  case TLY_BODY_RESERVATION_HELD: {
    const tly_reservation_held_t *a = &got->body.reservation_held,
                                 *b = &want->body.reservation_held;
    assert_string_equal(a->reservation_id, b->reservation_id);
    assert_string_equal(a->feature, b->feature);
    assert_true(a->quantity == b->quantity);
    assert_true(a->ttl_ms == b->ttl_ms);
    break;
  }
  case TLY_BODY_RESERVATION_RELEASED:
    assert_string_equal(got->body.reservation_released.reservation_id,
                        want->body.reservation_released.reservation_id);
    break;
  case TLY_BODY_NOTIFICATION_READ:
    assert_string_equal(got->body.notification_read.alert_id,
                        want->body.notification_read.alert_id);
    assert_true(got->body.notification_read.alert_at_ms ==
                want->body.notification_read.alert_at_ms);
    break;
  default:
    fail_msg("assert_flat_equal: kind %d", (int)want->body_kind);
  }
}

/* Encodes event into a malloc'd copy of the framed bytes. */
static unsigned char *encode_event(tly_codec_t *codec, const tly_event_t *event,
                                   size_t *len) {
  const void *out = NULL;
  char errstr[256] = "";
  unsigned char *copy;
  if (tly_codec_encode(codec, event, &out, len, errstr, sizeof(errstr)))
    fail_msg("encode kind %d: %s", (int)event->body_kind, errstr);
  copy = malloc(*len);
  assert_non_null(copy);
  memcpy(copy, out, *len);
  return copy;
}

static void test_round_trip_every_kind(void **state) {
  tly_codec_t *codec = new_codec(1);
  (void)state;
  /* Twice, interleaved with usage events, so the reused value switches
   * branches in both directions. */
  for (int pass = 0; pass < 2; pass++) {
    for (int kind = TLY_BODY_PLAN_ASSIGNED; kind < TLY_BODY__COUNT; kind++) {
      for (int variant = 0; variant < 2; variant++) {
        tly_event_t event, decoded = {0};
        char errstr[256] = "";
        size_t len;
        unsigned char *bytes;

        build_flat((tly_body_kind_t)kind, variant, &event);
        bytes = encode_event(codec, &event, &len);
        if (decode_checked(codec, bytes, len, &decoded, errstr, sizeof(errstr)))
          fail_msg("decode kind %d variant %d: %s", kind, variant, errstr);
        assert_flat_equal(&decoded, &event);
        tly_event_clear(&decoded);
        tly_event_clear(&event);
        free(bytes);

        bytes = encode_spec(codec, &round_trip_specs[4], &len);
        assert_int_equal(
            decode_checked(codec, bytes, len, &decoded, errstr, sizeof(errstr)),
            0);
        assert_event_matches(&decoded, &round_trip_specs[4]);
        tly_event_clear(&decoded);
        free(bytes);
      }
    }
  }
  tly_codec_destroy(codec);
}

/* Byte for byte: a tick and a payment failure as the Avro spec writes
 * them (branch index = tly_body_kind_t, system = symbol 3). */
static void test_exact_encoding_new_kinds(void **state) {
  static const unsigned char tick[] = {
      0x00, 0x00, 0x00, 0x00, 0x01, /* magic, schema id 1 */
      0x02, 't',                    /* event_id "t" */
      0x04,                         /* occurred_at 2 */
      0x06,                         /* subject.kind system (3) */
      0x08, 't',  'i',  'c',  'k',  /* subject.id "tick" */
      0x0E,                         /* body branch 7: Tick */
      0x0A,                         /* partition 5 */
  };
  static const unsigned char failed[] = {
      0x00, 0x00, 0x00, 0x00, 0x01, /* magic, schema id 1 */
      0x02, 'p',                    /* event_id "p" */
      0x02,                         /* occurred_at 1 */
      0x00,                         /* subject.kind user */
      0x02, 'a',                    /* subject.id "a" */
      0x0A,                         /* body branch 5: PaymentFailed */
      0x02, 'i',                    /* invoice_id "i" */
      0x80, 0x01,                   /* amount_due_micros 64 */
      0x06,                         /* attempt 3 */
  };
  tly_codec_t *codec = new_codec(1);
  tly_event_t event = {0};
  const void *out;
  size_t len;
  char errstr[256];
  (void)state;

  event.event_id = dup_or_null("t");
  event.occurred_at_ms = 2;
  event.subject_kind = TLY_SUBJECT_SYSTEM;
  event.subject_id = dup_or_null("tick");
  event.body_kind = TLY_BODY_TICK;
  event.body.tick.partition = 5;
  assert_int_equal(
      tly_codec_encode(codec, &event, &out, &len, errstr, sizeof(errstr)), 0);
  assert_int_equal(len, sizeof(tick));
  assert_memory_equal(out, tick, sizeof(tick));
  tly_event_clear(&event);

  event.event_id = dup_or_null("p");
  event.occurred_at_ms = 1;
  event.subject_kind = TLY_SUBJECT_USER;
  event.subject_id = dup_or_null("a");
  event.body_kind = TLY_BODY_PAYMENT_FAILED;
  event.body.payment_failed.invoice_id = dup_or_null("i");
  event.body.payment_failed.amount_due_micros = 64;
  event.body.payment_failed.attempt = 3;
  assert_int_equal(
      tly_codec_encode(codec, &event, &out, &len, errstr, sizeof(errstr)), 0);
  assert_int_equal(len, sizeof(failed));
  assert_memory_equal(out, failed, sizeof(failed));
  tly_event_clear(&event);
  tly_codec_destroy(codec);
}

static void test_truncation_every_kind(void **state) {
  tly_codec_t *codec = new_codec(1);
  (void)state;
  for (int kind = TLY_BODY_PLAN_ASSIGNED; kind < TLY_BODY__COUNT; kind++) {
    tly_event_t event;
    size_t len;
    unsigned char *bytes;

    build_flat((tly_body_kind_t)kind, 0, &event);
    bytes = encode_event(codec, &event, &len);
    for (size_t cut = 0; cut < len; cut++) {
      unsigned char *prefix = malloc(cut ? cut : 1);
      tly_event_t decoded = {0};
      char errstr[256] = "";
      assert_non_null(prefix);
      memcpy(prefix, bytes, cut);
      if (decode_checked(codec, prefix, cut, &decoded, errstr,
                         sizeof(errstr)) == 0)
        fail_msg("kind %d: decode of %zu of %zu bytes succeeded", kind, cut,
                 len);
      assert_true(strlen(errstr) > 0);
      if (cut >= TLY_CODEC_HEADER_SIZE)
        assert_non_null(strstr(errstr, "Avro record"));
      assert_null(decoded.event_id);
      free(prefix);
    }
    /* and one byte too many */
    {
      unsigned char *longer = malloc(len + 1);
      assert_non_null(longer);
      memcpy(longer, bytes, len);
      longer[len] = 0;
      expect_decode_error(codec, longer, len + 1, "trailing bytes");
      free(longer);
    }
    tly_event_clear(&event);
    free(bytes);
  }
  tly_codec_destroy(codec);
}

/* A raw envelope with a hand-written body after the branch index. */
static void build_flat_raw(msg_t *m, int64_t subject_kind,
                           const char *subject_id, int64_t branch,
                           const msg_t *body) {
  m->len = 0;
  put_header(m, 1);
  put_string(m, "e-1");
  put_long(m, 1732300000000);
  put_long(m, subject_kind);
  put_string(m, subject_id);
  put_long(m, branch);
  put_raw(m, body->bytes, body->len);
}

static void expect_flat_error(tly_codec_t *codec, int64_t subject_kind,
                              const char *subject_id, int64_t branch,
                              const msg_t *body, const char *want) {
  msg_t m;
  build_flat_raw(&m, subject_kind, subject_id, branch, body);
  expect_decode_error(codec, m.bytes, m.len, want);
}

static void test_reject_new_kinds(void **state) {
  tly_codec_t *codec = new_codec(1);
  msg_t body;
  (void)state;

#define BODY(...)                                                              \
  do {                                                                         \
    body.len = 0;                                                              \
    __VA_ARGS__;                                                               \
  } while (0)

  /* required strings */
  BODY(put_string(&body, ""));
  expect_flat_error(codec, 0, "u", TLY_BODY_PLAN_ASSIGNED, &body,
                    "field 'plan': must be a non-empty string");
  BODY(put_string(&body, ""); put_string(&body, ""); put_string(&body, "");
       put_long(&body, 0); put_long(&body, 0));
  expect_flat_error(codec, 0, "u", TLY_BODY_SUBSCRIPTION_CHANGED, &body,
                    "field 'plan'");
  BODY(put_string(&body, ""));
  expect_flat_error(codec, 0, "u", TLY_BODY_CUSTOMER_LINKED, &body,
                    "field 'stripe_customer_id': must be a non-empty");
  BODY(put_string(&body, ""); put_long(&body, 1); put_long(&body, 0);
       put_long(&body, 0));
  expect_flat_error(codec, 0, "u", TLY_BODY_INVOICE_PAID, &body,
                    "field 'invoice_id'");
  BODY(put_string(&body, ""); put_long(&body, 1); put_long(&body, 1));
  expect_flat_error(codec, 0, "u", TLY_BODY_PAYMENT_FAILED, &body,
                    "field 'invoice_id'");

  /* money and periods >= 0 */
  BODY(put_string(&body, "in"); put_long(&body, -1); put_long(&body, 0);
       put_long(&body, 0));
  expect_flat_error(codec, 0, "u", TLY_BODY_INVOICE_PAID, &body,
                    "field 'amount_paid_micros': must be an integer >= 0");
  BODY(put_string(&body, "in"); put_long(&body, INT64_MIN); put_long(&body, 1));
  expect_flat_error(codec, 0, "u", TLY_BODY_PAYMENT_FAILED, &body,
                    "field 'amount_due_micros'");
  BODY(put_string(&body, "in"); put_long(&body, 1); put_long(&body, -1));
  expect_flat_error(codec, 0, "u", TLY_BODY_PAYMENT_FAILED, &body,
                    "field 'attempt'");
  BODY(put_string(&body, "in"); put_long(&body, 0); put_long(&body, -5);
       put_long(&body, 0));
  expect_flat_error(codec, 0, "u", TLY_BODY_INVOICE_PAID, &body,
                    "field 'period_start'");
  BODY(put_string(&body, "p"); put_string(&body, ""); put_string(&body, "");
       put_long(&body, 0); put_long(&body, -1));
  expect_flat_error(codec, 0, "u", TLY_BODY_SUBSCRIPTION_CHANGED, &body,
                    "field 'period_end'");

  /* both bounds given: the end after the start */
  BODY(put_string(&body, "in"); put_long(&body, 0); put_long(&body, 100);
       put_long(&body, 100));
  expect_flat_error(codec, 0, "u", TLY_BODY_INVOICE_PAID, &body,
                    "field 'period_end': must be after period_start");
  BODY(put_string(&body, "p"); put_string(&body, ""); put_string(&body, "");
       put_long(&body, 200); put_long(&body, 100));
  expect_flat_error(codec, 0, "u", TLY_BODY_SUBSCRIPTION_CHANGED, &body,
                    "must be after period_start");

  /* ticks: partition >= 0, subject system:tick, and only ticks */
  BODY(put_long(&body, -1));
  expect_flat_error(codec, TLY_SUBJECT_SYSTEM, "tick", TLY_BODY_TICK, &body,
                    "field 'partition'");
  BODY(put_long(&body, 1));
  expect_flat_error(codec, TLY_SUBJECT_USER, "tick", TLY_BODY_TICK, &body,
                    "tick events must have the subject system:tick");
  expect_flat_error(codec, TLY_SUBJECT_SYSTEM, "clock", TLY_BODY_TICK, &body,
                    "system subject id must be 'tick'");
  BODY(put_string(&body, "pro"));
  expect_flat_error(codec, TLY_SUBJECT_SYSTEM, "tick", TLY_BODY_PLAN_ASSIGNED,
                    &body, "kind 'system' is only for tick events");
  {
    raw_t raw = raw_valid();
    raw.kind = TLY_SUBJECT_SYSTEM;
    raw.subject_id = "tick";
    expect_raw_error(codec, &raw, "kind 'system' is only for tick events");
  }

  /* an Avro int out of range is corruption, found by the walk */
  BODY(put_long(&body, INT64_C(1) << 31));
  expect_flat_error(codec, TLY_SUBJECT_SYSTEM, "tick", TLY_BODY_TICK, &body,
                    "field 'body.partition': 2147483648 out of range for int");
  BODY(put_string(&body, "in"); put_long(&body, 1);
       put_long(&body, INT64_C(-2147483649)));
  expect_flat_error(codec, 0, "u", TLY_BODY_PAYMENT_FAILED, &body,
                    "out of range for int");

  /* bad UTF-8 in a new string field */
  BODY(put_string(&body, "cus_\xff"));
  expect_flat_error(codec, 0, "u", TLY_BODY_CUSTOMER_LINKED, &body,
                    "field 'body.stripe_customer_id': string is not valid");
  /* a body cut short / with the wrong shape */
  BODY(put_string(&body, "in"));
  expect_flat_error(codec, 0, "u", TLY_BODY_INVOICE_PAID, &body,
                    "truncated Avro record");
#undef BODY
  tly_codec_destroy(codec);
}

static void expect_event_encode_error(tly_codec_t *codec, tly_event_t *event,
                                      const char *want) {
  const void *out = NULL;
  size_t len = 0;
  char errstr[512] = "";
  if (tly_codec_encode(codec, event, &out, &len, errstr, sizeof(errstr)) == 0)
    fail_msg("encode unexpectedly succeeded (wanted '%s')", want);
  if (!strstr(errstr, want))
    fail_msg("error '%s' does not contain '%s'", errstr, want);
}

static void test_encode_rejects_new_kinds(void **state) {
  tly_codec_t *codec = new_codec(1);
  tly_event_t event;
  (void)state;

#define WITH(kind, change, want)                                               \
  do {                                                                         \
    build_flat(kind, 0, &event);                                               \
    change;                                                                    \
    expect_event_encode_error(codec, &event, want);                            \
    tly_event_clear(&event);                                                   \
  } while (0)

  WITH(TLY_BODY_PLAN_ASSIGNED, event.body.plan_assigned.plan[0] = '\0',
       "field 'plan'");
  WITH(TLY_BODY_USAGE_CORRECTED, event.body.usage.corrects[0] = '\0',
       "field 'corrects'");
  WITH(TLY_BODY_USAGE_CORRECTED, event.body.usage.quantity = -1,
       "field 'quantity'");
  WITH(TLY_BODY_PLAN_ASSIGNED,
       (free(event.body.plan_assigned.plan),
        event.body.plan_assigned.plan = NULL),
       "field 'plan'");
  WITH(TLY_BODY_SUBSCRIPTION_CHANGED,
       event.body.subscription_changed.period_end_ms = 1,
       "field 'period_end': must be after period_start");
  WITH(TLY_BODY_SUBSCRIPTION_CHANGED,
       event.body.subscription_changed.period_start_ms = -1,
       "field 'period_start'");
  WITH(TLY_BODY_SUBSCRIPTION_CANCELED,
       event.body.subscription_canceled.reason[0] = '\xff',
       "field 'reason': string is not valid UTF-8");
  WITH(TLY_BODY_INVOICE_PAID, event.body.invoice_paid.amount_paid_micros = -1,
       "field 'amount_paid_micros'");
  WITH(TLY_BODY_INVOICE_PAID,
       event.body.invoice_paid.period_end_ms =
           event.body.invoice_paid.period_start_ms,
       "must be after period_start");
  WITH(TLY_BODY_PAYMENT_FAILED, event.body.payment_failed.invoice_id[0] = 0,
       "field 'invoice_id'");
  WITH(TLY_BODY_PAYMENT_FAILED, event.body.payment_failed.attempt = -1,
       "field 'attempt'");
  WITH(TLY_BODY_CUSTOMER_LINKED,
       event.body.customer_linked.stripe_customer_id[0] = 0,
       "field 'stripe_customer_id'");
  WITH(TLY_BODY_TICK, event.body.tick.partition = -1, "field 'partition'");
  WITH(TLY_BODY_TICK, event.subject_kind = TLY_SUBJECT_USER,
       "tick events must have the subject system:tick");
  WITH(TLY_BODY_CUSTOMER_LINKED, event.subject_kind = TLY_SUBJECT_SYSTEM,
       "system subject id must be 'tick'");
  WITH(TLY_BODY_CUSTOMER_LINKED,
       (event.subject_kind = TLY_SUBJECT_SYSTEM,
        strcpy(event.subject_id, "tick")),
       "kind 'system' is only for tick events");
  {
    spec_t spec = tiny;
    spec.kind = TLY_SUBJECT_SYSTEM;
    spec.subject_id = "tick";
    expect_encode_error(codec, &spec, "kind 'system' is only for tick events");
  }
#undef WITH
  tly_codec_destroy(codec);
}

/* One period bound alone (the other 0 = unknown) is fine. */
static void test_period_bounds_optional(void **state) {
  tly_codec_t *codec = new_codec(1);
  tly_event_t event, decoded = {0};
  char errstr[256];
  size_t len;
  unsigned char *bytes;
  (void)state;

  build_flat(TLY_BODY_INVOICE_PAID, 0, &event);
  event.body.invoice_paid.period_start_ms = 0;
  bytes = encode_event(codec, &event, &len);
  assert_int_equal(
      decode_checked(codec, bytes, len, &decoded, errstr, sizeof(errstr)), 0);
  assert_flat_equal(&decoded, &event);
  tly_event_clear(&decoded);
  free(bytes);
  event.body.invoice_paid.period_start_ms = 5;
  event.body.invoice_paid.period_end_ms = 0;
  bytes = encode_event(codec, &event, &len);
  free(bytes);
  tly_event_clear(&event);
  tly_codec_destroy(codec);
}

static void test_random_corruption_new_kinds(void **state) {
  tly_codec_t *codec = new_codec(1);
  size_t accepted = 0;
  (void)state;

  rng_state = 424242;
  for (int kind = TLY_BODY_PLAN_ASSIGNED; kind < TLY_BODY__COUNT; kind++) {
    tly_event_t event;
    size_t len;
    unsigned char *valid, work[256];

    build_flat((tly_body_kind_t)kind, 0, &event);
    valid = encode_event(codec, &event, &len);
    assert_true(len <= sizeof(work));
    for (int round = 0; round < 1000; round++) {
      size_t work_len = len;
      int flips = 1 + (int)(rng_next() % 3);
      memcpy(work, valid, len);
      for (int i = 0; i < flips; i++) {
        size_t at = TLY_CODEC_HEADER_SIZE + rng_next() % (len - 5);
        work[at] = (unsigned char)rng_next();
      }
      if (rng_next() % 4 == 0)
        work_len = rng_next() % (len + 1);
      decode_must_not_crash(codec, work, work_len, &accepted);
    }
    tly_event_clear(&event);
    free(valid);
  }
  print_message("random corruption (new kinds): %zu of 7000 decoded\n",
                accepted);
  tly_codec_destroy(codec);
}

/* ------------------------------------------------------------------ */
/* The event model helpers                                             */
/* ------------------------------------------------------------------ */

static void test_event_clear_zeroed(void **state) {
  tly_event_t event = {0};
  (void)state;
  tly_event_clear(&event);
  tly_event_clear(NULL);
  assert_null(event.event_id);
}

static void test_subject_kind_names(void **state) {
  tly_subject_kind_t kind;
  (void)state;
  assert_string_equal(tly_subject_kind_name(TLY_SUBJECT_USER), "user");
  assert_string_equal(tly_subject_kind_name(TLY_SUBJECT_API_KEY), "api_key");
  assert_string_equal(tly_subject_kind_name(TLY_SUBJECT_ANONYMOUS),
                      "anonymous");
  assert_string_equal(tly_subject_kind_name(TLY_SUBJECT_SYSTEM), "system");
  assert_null(tly_subject_kind_name(TLY_SUBJECT__COUNT));
  assert_null(tly_subject_kind_name((tly_subject_kind_t)-1));
  for (int i = 0; i < TLY_SUBJECT__COUNT; i++) {
    assert_int_equal(tly_subject_kind_parse(
                         tly_subject_kind_name((tly_subject_kind_t)i), &kind),
                     0);
    assert_int_equal(kind, i);
  }
  assert_int_equal(tly_subject_kind_parse("User", &kind), -1);
  assert_int_equal(tly_subject_kind_parse("", &kind), -1);
  assert_int_equal(tly_subject_kind_parse(NULL, &kind), -1);
}

static void test_subject_key(void **state) {
  char key[16];
  (void)state;
  assert_int_equal(tly_subject_key(TLY_SUBJECT_USER, "alice", key, sizeof(key)),
                   10);
  assert_string_equal(key, "user:alice");
  assert_int_equal(tly_subject_key(TLY_SUBJECT_ANONYMOUS, "fp", key, 8), 12);
  assert_string_equal(key, "anonymo"); /* truncated, like snprintf */
  assert_int_equal(tly_subject_key(TLY_SUBJECT_API_KEY, "x", NULL, 0), 9);
  assert_int_equal(tly_subject_key((tly_subject_kind_t)9, "x", key, 16), 0);
  assert_string_equal(key, "");
}

/* ------------------------------------------------------------------ */
/* Reservations: appended branches, old records unchanged              */
/* ------------------------------------------------------------------ */

/* Bytes the codec wrote before the reservation branches were appended to
 * the body union (captured from that build): they decode to the same event
 * and encode back to the same bytes, so records already in Kafka (schema
 * id 1) and third parties' producers are unaffected. */
static void test_records_before_reservations(void **state) {
  static const unsigned char usage[] = {
      0x00, 0x00, 0x00, 0x00, 0x01, 0x0a, 0x65, 0x76, 0x74, 0x2d, 0x31,
      0x80, 0xa0, 0xab, 0xfe, 0xf9, 0x62, 0x00, 0x0a, 0x61, 0x6c, 0x69,
      0x63, 0x65, 0x00, 0x12, 0x61, 0x70, 0x69, 0x5f, 0x63, 0x61, 0x6c,
      0x6c, 0x73, 0x06, 0x00, 0x02, 0x0c, 0x6f, 0x70, 0x65, 0x6e, 0x61,
      0x69, 0x0c, 0x67, 0x70, 0x74, 0x2d, 0x34, 0x6f, 0x14, 0x28, 0x02,
      0x0c, 0x72, 0x65, 0x67, 0x69, 0x6f, 0x6e, 0x04, 0x65, 0x75, 0x00};
  static const unsigned char tick[] = {
      0x00, 0x00, 0x00, 0x00, 0x01, 0x10, 0x74, 0x69, 0x63, 0x6b,
      0x3a, 0x30, 0x3a, 0x31, 0x80, 0xa0, 0xab, 0xfe, 0xf9, 0x62,
      0x06, 0x08, 0x74, 0x69, 0x63, 0x6b, 0x0e, 0x04};
  static const unsigned char plan[] = {0x00, 0x00, 0x00, 0x00, 0x01, 0x06, 0x70,
                                       0x2d, 0x31, 0x80, 0xa0, 0xab, 0xfe, 0xf9,
                                       0x62, 0x00, 0x06, 0x62, 0x6f, 0x62, 0x02,
                                       0x06, 0x70, 0x72, 0x6f};
  const struct {
    const unsigned char *bytes;
    size_t len;
    tly_body_kind_t kind;
  } records[] = {{usage, sizeof(usage), TLY_BODY_USAGE_RECORDED},
                 {tick, sizeof(tick), TLY_BODY_TICK},
                 {plan, sizeof(plan), TLY_BODY_PLAN_ASSIGNED}};
  tly_codec_t *codec = new_codec(1);
  (void)state;
  for (size_t i = 0; i < sizeof(records) / sizeof(records[0]); i++) {
    tly_event_t event = {0};
    char errstr[256] = "";
    const void *out;
    size_t len;
    if (decode_checked(codec, records[i].bytes, records[i].len, &event, errstr,
                       sizeof(errstr)))
      fail_msg("record %zu: %s", i, errstr);
    assert_int_equal(event.body_kind, records[i].kind);
    assert_true(event.occurred_at_ms == 1700000000000LL);
    if (records[i].kind == TLY_BODY_USAGE_RECORDED) {
      assert_string_equal(event.body.usage.feature, "api_calls");
      assert_true(event.body.usage.quantity == 3);
      assert_int_equal(event.body.usage.has_ai, 1);
      assert_true(event.body.usage.ai.output_tokens == 20);
      assert_int_equal(event.body.usage.property_count, 1);
      assert_null(tly_usage_reservation_id(&event.body.usage));
    }
    assert_int_equal(
        tly_codec_encode(codec, &event, &out, &len, errstr, sizeof(errstr)), 0);
    assert_int_equal(len, records[i].len);
    assert_memory_equal(out, records[i].bytes, len);
    tly_event_clear(&event);
  }
  tly_codec_destroy(codec);
}

/* The new branches' exact bytes: 8 ReservationHeld, 9 ReservationReleased. */
static void test_exact_encoding_reservations(void **state) {
  static const unsigned char held[] = {
      0x00, 0x00, 0x00, 0x00, 0x01, /* magic, schema id 1 */
      0x02, 'r',                    /* event_id "r" */
      0x04,                         /* occurred_at 2 */
      0x00,                         /* subject.kind user */
      0x02, 'a',                    /* subject.id "a" */
      0x10,                         /* body branch 8: ReservationHeld */
      0x04, 'r',  '1',              /* reservation_id "r1" */
      0x02, 'f',                    /* feature "f" */
      0x0A,                         /* quantity 5 */
      0xD0, 0x0F,                   /* ttl_ms 1000 */
  };
  static const unsigned char released[] = {
      0x00, 0x00, 0x00, 0x00, 0x01, /* magic, schema id 1 */
      0x02, 'd',                    /* event_id "d" */
      0x04,                         /* occurred_at 2 */
      0x00,                         /* subject.kind user */
      0x02, 'a',                    /* subject.id "a" */
      0x12,                         /* body branch 9: ReservationReleased */
      0x04, 'r',  '1',              /* reservation_id "r1" */
  };
  tly_codec_t *codec = new_codec(1);
  tly_event_t event = {0}, decoded = {0};
  const void *out;
  size_t len;
  char errstr[256];
  (void)state;

  event.event_id = dup_or_null("r");
  event.occurred_at_ms = 2;
  event.subject_kind = TLY_SUBJECT_USER;
  event.subject_id = dup_or_null("a");
  event.body_kind = TLY_BODY_RESERVATION_HELD;
  event.body.reservation_held.reservation_id = dup_or_null("r1");
  event.body.reservation_held.feature = dup_or_null("f");
  event.body.reservation_held.quantity = 5;
  event.body.reservation_held.ttl_ms = 1000;
  assert_int_equal(
      tly_codec_encode(codec, &event, &out, &len, errstr, sizeof(errstr)), 0);
  assert_int_equal(len, sizeof(held));
  assert_memory_equal(out, held, sizeof(held));
  assert_int_equal(decode_checked(codec, held, sizeof(held), &decoded, errstr,
                                  sizeof(errstr)),
                   0);
  assert_flat_equal(&decoded, &event);
  tly_event_clear(&decoded);
  tly_event_clear(&event);

  event.event_id = dup_or_null("d");
  event.occurred_at_ms = 2;
  event.subject_kind = TLY_SUBJECT_USER;
  event.subject_id = dup_or_null("a");
  event.body_kind = TLY_BODY_RESERVATION_RELEASED;
  event.body.reservation_released.reservation_id = dup_or_null("r1");
  assert_int_equal(
      tly_codec_encode(codec, &event, &out, &len, errstr, sizeof(errstr)), 0);
  assert_int_equal(len, sizeof(released));
  assert_memory_equal(out, released, sizeof(released));
  tly_event_clear(&event);
  tly_codec_destroy(codec);
}

/* Out-of-bounds reservations are refused by the encoder (and so never
 * written by tally) with a message naming the field. */
static void test_reservation_bounds(void **state) {
  static const struct {
    const char *id;
    int64_t quantity, ttl_ms;
    const char *want; /* NULL: valid */
  } cases[] = {
      {"rsv_ok", 1, TLY_RESERVATION_TTL_MIN_MS, NULL},
      {"rsv_ok", TLY_RESERVATION_QUANTITY_MAX, TLY_RESERVATION_TTL_MAX_MS,
       NULL},
      {"rsv_ok", 0, 300000, "field 'quantity'"},
      {"rsv_ok", -1, 300000, "field 'quantity'"},
      {"rsv_ok", TLY_RESERVATION_QUANTITY_MAX + 1, 300000, "field 'quantity'"},
      {"rsv_ok", 1, TLY_RESERVATION_TTL_MIN_MS - 1, "field 'ttl_ms'"},
      {"rsv_ok", 1, TLY_RESERVATION_TTL_MAX_MS + 1, "field 'ttl_ms'"},
      {"rsv/../x", 1, 300000, "field 'reservation_id'"},
      {"rsv ok", 1, 300000, "field 'reservation_id'"},
      {"", 1, 300000, "field 'reservation_id'"},
      {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 1,
       300000, "field 'reservation_id'"}, /* 65 characters */
  };
  tly_codec_t *codec = new_codec(1);
  (void)state;
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    tly_event_t event = {.event_id = "e",
                         .occurred_at_ms = 1,
                         .subject_kind = TLY_SUBJECT_USER,
                         .subject_id = "a",
                         .body_kind = TLY_BODY_RESERVATION_HELD};
    event.body.reservation_held.reservation_id = (char *)cases[i].id;
    event.body.reservation_held.feature = "api_calls";
    event.body.reservation_held.quantity = cases[i].quantity;
    event.body.reservation_held.ttl_ms = cases[i].ttl_ms;
    const void *out;
    size_t len;
    char errstr[256] = "";
    int rc =
        tly_codec_encode(codec, &event, &out, &len, errstr, sizeof(errstr));
    if (!cases[i].want) {
      if (rc)
        fail_msg("case %zu: %s", i, errstr);
      continue;
    }
    if (rc == 0 || !strstr(errstr, cases[i].want))
      fail_msg("case %zu: rc %d, error '%s', wanted '%s'", i, rc, errstr,
               cases[i].want);
  }
  tly_codec_destroy(codec);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_trips),
      cmocka_unit_test(test_round_trip_many_properties),
      cmocka_unit_test(test_round_trip_largest_event),
      cmocka_unit_test(test_decode_reuses_event),
      cmocka_unit_test(test_framing_bytes),
      cmocka_unit_test(test_exact_encoding),
      cmocka_unit_test(test_codec_new_rejects_negative_id),
      cmocka_unit_test(test_raw_valid_decodes),
      cmocka_unit_test(test_reject_framing),
      cmocka_unit_test(test_reject_every_truncation),
      cmocka_unit_test(test_reject_trailing_bytes),
      cmocka_unit_test(test_reject_corrupt_lengths),
      cmocka_unit_test(test_reject_corrupt_maps),
      cmocka_unit_test(test_accept_blocked_maps),
      cmocka_unit_test(test_reject_enum_and_union),
      cmocka_unit_test(test_reject_invalid_fields),
      cmocka_unit_test(test_encode_rejects),
      cmocka_unit_test(test_encode_rejects_duplicate_among_many),
      cmocka_unit_test(test_random_corruption),
      cmocka_unit_test(test_round_trip_every_kind),
      cmocka_unit_test(test_exact_encoding_new_kinds),
      cmocka_unit_test(test_truncation_every_kind),
      cmocka_unit_test(test_reject_new_kinds),
      cmocka_unit_test(test_encode_rejects_new_kinds),
      cmocka_unit_test(test_period_bounds_optional),
      cmocka_unit_test(test_random_corruption_new_kinds),
      cmocka_unit_test(test_event_clear_zeroed),
      cmocka_unit_test(test_subject_kind_names),
      cmocka_unit_test(test_subject_key),
      cmocka_unit_test(test_records_before_reservations),
      cmocka_unit_test(test_exact_encoding_reservations),
      cmocka_unit_test(test_reservation_bounds),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
