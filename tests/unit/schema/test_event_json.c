/*
 * test_event_json.c - JSON lines into events (schema/tly_event_json.c).
 *
 * Two tables: lines that must be accepted, with the event they must give,
 * and lines that must be refused, with a substring the error must contain
 * (so each message is checked to name the field and the reason). Then the
 * subject-string parser on its own, the RFC 3339 corner cases, and the rule
 * that a raw API key never appears in an error message.
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

#include "tly_event.h"
#include "tly_event_json.h"

#define NOW_MS INT64_C(1700000000000)
/* 2026-11-23T10:00:00Z */
#define T_2026_11_23_10 INT64_C(1795428000000)
#define HASH "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

typedef struct {
  const char *line;
  const char *event_id;
  int64_t occurred_at_ms;
  tly_subject_kind_t kind;
  const char *subject_id;
  const char *feature;
  int64_t quantity;
  const char *unit;
  int has_ai;
  const char *model;
  int64_t input_tokens;
  int64_t output_tokens;
  size_t property_count;
  const char *first_key; /* checked when property_count > 0 */
  const char *first_value;
} valid_case_t;

static const valid_case_t valid_cases[] = {
    /* the example of tly_event_json.h */
    {"{\"event_id\": \"e-1\", \"occurred_at\": 1732300000000, \"subject\": "
     "\"user:alice\", \"feature\": \"api_calls\", \"quantity\": 1, \"unit\": "
     "\"call\", \"ai\": {\"provider\": \"openai\", \"model\": \"gpt-4o\", "
     "\"input_tokens\": 10, \"output_tokens\": 5}, \"properties\": "
     "{\"region\": \"eu\"}}",
     "e-1", 1732300000000, TLY_SUBJECT_USER, "alice", "api_calls", 1, "call", 1,
     "gpt-4o", 10, 5, 1, "region", "eu"},
    /* minimal: occurred_at defaults to now, unit to "" */
    {"{\"event_id\":\"e-2\",\"subject\":\"bob\",\"feature\":\"f\","
     "\"quantity\":0}",
     "e-2", NOW_MS, TLY_SUBJECT_USER, "bob", "f", 0, "", 0, NULL, 0, 0, 0, NULL,
     NULL},
    /* null optional fields are absent */
    {"{\"event_id\":\"e-3\",\"subject\":\"bob\",\"feature\":\"f\","
     "\"quantity\":2,\"occurred_at\":null,\"unit\":null,\"ai\":null,"
     "\"properties\":null}",
     "e-3", NOW_MS, TLY_SUBJECT_USER, "bob", "f", 2, "", 0, NULL, 0, 0, 0, NULL,
     NULL},
    /* subject as an object, api_key hash */
    {"{\"event_id\":\"e-4\",\"subject\":{\"kind\":\"api_key\",\"id\":\"" HASH
     "\"},\"feature\":\"f\",\"quantity\":3}",
     "e-4", NOW_MS, TLY_SUBJECT_API_KEY, HASH, "f", 3, "", 0, NULL, 0, 0, 0,
     NULL, NULL},
    {"{\"event_id\":\"e-5\",\"subject\":\"api_key:" HASH "\",\"feature\":\"f\","
     "\"quantity\":3}",
     "e-5", NOW_MS, TLY_SUBJECT_API_KEY, HASH, "f", 3, "", 0, NULL, 0, 0, 0,
     NULL, NULL},
    /* anonymous fingerprints may contain colons; only the first splits */
    {"{\"event_id\":\"e-6\",\"subject\":\"anonymous:fp:ab:cd\","
     "\"feature\":\"f\",\"quantity\":1}",
     "e-6", NOW_MS, TLY_SUBJECT_ANONYMOUS, "fp:ab:cd", "f", 1, "", 0, NULL, 0,
     0, 0, NULL, NULL},
    /* RFC 3339 times */
    {"{\"event_id\":\"t1\",\"occurred_at\":\"2026-11-23T10:00:00Z\","
     "\"subject\":\"u\",\"feature\":\"f\",\"quantity\":1}",
     "t1", T_2026_11_23_10, TLY_SUBJECT_USER, "u", "f", 1, "", 0, NULL, 0, 0, 0,
     NULL, NULL},
    {"{\"event_id\":\"t2\",\"occurred_at\":\"2026-11-23T10:00:00.5Z\","
     "\"subject\":\"u\",\"feature\":\"f\",\"quantity\":1}",
     "t2", T_2026_11_23_10 + 500, TLY_SUBJECT_USER, "u", "f", 1, "", 0, NULL, 0,
     0, 0, NULL, NULL},
    {"{\"event_id\":\"t3\",\"occurred_at\":\"2026-11-23T10:00:00.123987654Z\","
     "\"subject\":\"u\",\"feature\":\"f\",\"quantity\":1}",
     "t3", T_2026_11_23_10 + 123, TLY_SUBJECT_USER, "u", "f", 1, "", 0, NULL, 0,
     0, 0, NULL, NULL},
    {"{\"event_id\":\"t4\",\"occurred_at\":\"2026-11-23T12:00:00+02:00\","
     "\"subject\":\"u\",\"feature\":\"f\",\"quantity\":1}",
     "t4", T_2026_11_23_10, TLY_SUBJECT_USER, "u", "f", 1, "", 0, NULL, 0, 0, 0,
     NULL, NULL},
    {"{\"event_id\":\"t5\",\"occurred_at\":\"2026-11-23t05:30:00.25-04:30\","
     "\"subject\":\"u\",\"feature\":\"f\",\"quantity\":1}",
     "t5", T_2026_11_23_10 + 250, TLY_SUBJECT_USER, "u", "f", 1, "", 0, NULL, 0,
     0, 0, NULL, NULL},
    {"{\"event_id\":\"t6\",\"occurred_at\":\"2024-02-29T00:00:00z\","
     "\"subject\":\"u\",\"feature\":\"f\",\"quantity\":1}",
     "t6", INT64_C(1709164800000), TLY_SUBJECT_USER, "u", "f", 1, "", 0, NULL,
     0, 0, 0, NULL, NULL},
    {"{\"event_id\":\"t7\",\"occurred_at\":\"1970-01-01T00:00:00Z\","
     "\"subject\":\"u\",\"feature\":\"f\",\"quantity\":1}",
     "t7", 0, TLY_SUBJECT_USER, "u", "f", 1, "", 0, NULL, 0, 0, 0, NULL, NULL},
    {"{\"event_id\":\"t8\",\"occurred_at\":0,"
     "\"subject\":\"u\",\"feature\":\"f\",\"quantity\":1}",
     "t8", 0, TLY_SUBJECT_USER, "u", "f", 1, "", 0, NULL, 0, 0, 0, NULL, NULL},
    /* extremes and unicode */
    {"{\"event_id\":\"\\u00e9v\",\"subject\":\"user:jos\\u00e9\","
     "\"feature\":\"r\\u00e9sum\\u00e9\",\"quantity\":9223372036854775807,"
     "\"unit\":\"\\u20ac\",\"ai\":{\"provider\":\"p\",\"model\":\"m\","
     "\"input_tokens\":0,\"output_tokens\":9223372036854775807},"
     "\"properties\":{\"\\u540d\":\"\\ud83d\\ude80\"}}\n",
     "\xc3\xa9v", NOW_MS, TLY_SUBJECT_USER, "jos\xc3\xa9",
     "r\xc3\xa9sum\xc3\xa9", INT64_MAX, "\xe2\x82\xac", 1, "m", 0, INT64_MAX, 1,
     "\xe5\x90\x8d", "\xf0\x9f\x9a\x80"},
    /* empty properties object, empty-string property value */
    {"{\"event_id\":\"p1\",\"subject\":\"u\",\"feature\":\"f\",\"quantity\":1,"
     "\"properties\":{}}",
     "p1", NOW_MS, TLY_SUBJECT_USER, "u", "f", 1, "", 0, NULL, 0, 0, 0, NULL,
     NULL},
    {"{\"event_id\":\"p2\",\"subject\":\"u\",\"feature\":\"f\",\"quantity\":1,"
     "\"properties\":{\"k\":\"\"}}",
     "p2", NOW_MS, TLY_SUBJECT_USER, "u", "f", 1, "", 0, NULL, 0, 0, 1, "k",
     ""},
};

static void test_valid_lines(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof(valid_cases) / sizeof(*valid_cases); i++) {
    const valid_case_t *c = &valid_cases[i];
    const tly_usage_recorded_t *usage;
    tly_event_t event = {0};
    char errstr[512] = "";

    if (tly_event_from_json_text(c->line, strlen(c->line), NOW_MS, &event,
                                 errstr, sizeof(errstr)))
      fail_msg("case %zu (%s) refused: %s", i, c->line, errstr);
    usage = &event.body.usage;
    assert_string_equal(event.event_id, c->event_id);
    if (event.occurred_at_ms != c->occurred_at_ms)
      fail_msg("case %zu: occurred_at %lld, want %lld", i,
               (long long)event.occurred_at_ms, (long long)c->occurred_at_ms);
    assert_int_equal(event.subject_kind, c->kind);
    assert_string_equal(event.subject_id, c->subject_id);
    assert_int_equal(event.body_kind, TLY_BODY_USAGE_RECORDED);
    assert_string_equal(usage->feature, c->feature);
    assert_true(usage->quantity == c->quantity);
    assert_string_equal(usage->unit, c->unit);
    assert_int_equal(usage->has_ai, c->has_ai);
    if (c->has_ai) {
      assert_string_equal(usage->ai.model, c->model);
      assert_true(usage->ai.input_tokens == c->input_tokens);
      assert_true(usage->ai.output_tokens == c->output_tokens);
    }
    assert_int_equal(usage->property_count, c->property_count);
    if (c->property_count) {
      assert_string_equal(usage->properties[0].key, c->first_key);
      assert_string_equal(usage->properties[0].value, c->first_value);
    }
    tly_event_clear(&event);
  }
}

typedef struct {
  const char *line;
  const char *want; /* substring of the error */
} invalid_case_t;

/* Valid apart from the one field a case replaces. */
#define BASE "\"event_id\":\"e\",\"subject\":\"u\",\"feature\":\"f\""
#define WITH_QUANTITY(q) "{" BASE ",\"quantity\":" q "}"
#define WITH_TIME(t) "{" BASE ",\"quantity\":1,\"occurred_at\":" t "}"
#define WITH_SUBJECT(s)                                                        \
  "{\"event_id\":\"e\",\"feature\":\"f\",\"quantity\":1,\"subject\":" s "}"
#define WITH_AI(a) "{" BASE ",\"quantity\":1,\"ai\":" a "}"
#define AI_OK "\"provider\":\"p\",\"model\":\"m\""

static const invalid_case_t invalid_cases[] = {
    /* not a JSON object */
    {"", "invalid JSON"},
    {"{", "invalid JSON"},
    {"{} x", "invalid JSON"},
    {"[]", "event: must be a JSON object"},
    {"\"e\"", "invalid JSON"}, /* jansson wants an object or array */
    {"{" BASE ",\"quantity\":1,\"quantity\":2}", "duplicate"},
    /* unknown keys */
    {"{" BASE ",\"quantiy\":1}", "unknown field 'quantiy'"},
    {"{" BASE ",\"quantity\":1,\"Unit\":\"x\"}", "unknown field 'Unit'"},
    /* event_id */
    {"{\"subject\":\"u\",\"feature\":\"f\",\"quantity\":1}",
     "field 'event_id': required"},
    {"{\"event_id\":\"\",\"subject\":\"u\",\"feature\":\"f\",\"quantity\":1}",
     "field 'event_id': must be a non-empty string"},
    {"{\"event_id\":7,\"subject\":\"u\",\"feature\":\"f\",\"quantity\":1}",
     "field 'event_id': must be a non-empty string"},
    {"{\"event_id\":null,\"subject\":\"u\",\"feature\":\"f\",\"quantity\":1}",
     "field 'event_id'"},
    /* subject */
    {"{\"event_id\":\"e\",\"feature\":\"f\",\"quantity\":1}",
     "field 'subject': required"},
    {WITH_SUBJECT("\"\""), "field 'subject': subject id must not be empty"},
    {WITH_SUBJECT("\"user:\""), "field 'subject': subject id must not be"},
    {WITH_SUBJECT("\"usr:alice\""), "field 'subject': unknown kind 'usr'"},
    {WITH_SUBJECT("\":alice\""), "unknown kind ''"},
    {WITH_SUBJECT("\"a_very_long_kind_name:x\""), "unknown kind"},
    {WITH_SUBJECT("\"api_key:sk_live_abc\""), "raw keys are never accepted"},
    {WITH_SUBJECT("\"api_key:9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822"
                  "CD15D6C15B0F00A08\""),
     "64 lowercase hex"},
    {WITH_SUBJECT("\"api_key:" HASH "0\""), "raw keys are never accepted"},
    {WITH_SUBJECT("\"api_key:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b8"
                  "22cd15d6c15b0f00a0\""),
     "raw keys are never accepted"},
    {WITH_SUBJECT("42"), "field 'subject': must be a string"},
    {WITH_SUBJECT("null"), "field 'subject': must be a string"},
    {WITH_SUBJECT("{\"kind\":\"robot\",\"id\":\"x\"}"),
     "field 'subject.kind': must be one of user, api_key, anonymous"},
    {WITH_SUBJECT("{\"id\":\"x\"}"), "field 'subject.kind'"},
    {WITH_SUBJECT("{\"kind\":\"user\"}"), "field 'subject.id'"},
    {WITH_SUBJECT("{\"kind\":\"user\",\"id\":\"\"}"),
     "field 'subject.id': subject id must not be empty"},
    {WITH_SUBJECT("{\"kind\":\"user\",\"id\":\"a\",\"extra\":1}"),
     "unknown field 'subject.extra'"},
    {WITH_SUBJECT("{\"kind\":\"api_key\",\"id\":\"key-123\"}"),
     "field 'subject.id': api_key subject id must be the SHA-256"},
    /* feature */
    {"{\"event_id\":\"e\",\"subject\":\"u\",\"quantity\":1}",
     "field 'feature': required"},
    {"{\"event_id\":\"e\",\"subject\":\"u\",\"feature\":\"\",\"quantity\":1}",
     "field 'feature': must be a non-empty string"},
    {"{\"event_id\":\"e\",\"subject\":\"u\",\"feature\":[],\"quantity\":1}",
     "field 'feature'"},
    /* quantity */
    {"{" BASE "}", "field 'quantity': required"},
    {WITH_QUANTITY("-1"), "field 'quantity': must be an integer >= 0"},
    {WITH_QUANTITY("1.5"), "field 'quantity': must be an integer >= 0"},
    {WITH_QUANTITY("1.0"), "field 'quantity': must be an integer >= 0"},
    {WITH_QUANTITY("1e3"), "field 'quantity': must be an integer >= 0"},
    {WITH_QUANTITY("\"1\""), "field 'quantity': must be an integer >= 0"},
    {WITH_QUANTITY("true"), "field 'quantity': must be an integer >= 0"},
    {WITH_QUANTITY("null"), "field 'quantity': must be an integer >= 0"},
    {WITH_QUANTITY("-9223372036854775808"), "field 'quantity'"},
    {WITH_QUANTITY("9223372036854775808"), "invalid JSON"},
    /* unit */
    {"{" BASE ",\"quantity\":1,\"unit\":5}", "field 'unit': must be a string"},
    /* occurred_at */
    {WITH_TIME("-1"), "field 'occurred_at': milliseconds must be >= 0"},
    {WITH_TIME("1.5"), "field 'occurred_at': must be integer milliseconds"},
    {WITH_TIME("true"), "field 'occurred_at'"},
    {WITH_TIME("\"\""), "field 'occurred_at': not an RFC 3339 UTC time"},
    {WITH_TIME("\"2026-11-23 10:00:00Z\""), "expected YYYY-MM-DDTHH:MM:SSZ"},
    {WITH_TIME("\"2026-11-23T10:00:00\""), "missing time zone"},
    {WITH_TIME("\"2026-11-23T10:00\""), "field 'occurred_at'"},
    {WITH_TIME("\"2026-11-23\""), "field 'occurred_at'"},
    {WITH_TIME("\"2026-13-01T00:00:00Z\""), "out of range"},
    {WITH_TIME("\"2026-00-01T00:00:00Z\""), "out of range"},
    {WITH_TIME("\"2025-02-29T00:00:00Z\""), "out of range"},
    {WITH_TIME("\"2026-04-31T00:00:00Z\""), "out of range"},
    {WITH_TIME("\"2026-11-23T24:00:00Z\""), "out of range"},
    {WITH_TIME("\"2026-11-23T10:60:00Z\""), "out of range"},
    {WITH_TIME("\"2026-11-23T10:00:60Z\""), "out of range"},
    {WITH_TIME("\"2026-11-23T10:00:00.Z\""), "fraction"},
    {WITH_TIME("\"2026-11-23T10:00:00.1234567890Z\""), "fraction"},
    {WITH_TIME("\"2026-11-23T10:00:00+0200\""), "bad UTC offset"},
    {WITH_TIME("\"2026-11-23T10:00:00+24:00\""), "bad UTC offset"},
    {WITH_TIME("\"2026-11-23T10:00:00Zjunk\""), "unexpected text"},
    {WITH_TIME("\"1969-12-31T23:59:59Z\""), "before 1970"},
    {WITH_TIME("\"1970-01-01T00:30:00+01:00\""), "before 1970"},
    {WITH_TIME("\"+2026-11-23T10:00:00Z\""), "field 'occurred_at'"},
    /* ai */
    {WITH_AI("\"gpt\""), "field 'ai': must be an object"},
    {WITH_AI("[]"), "field 'ai': must be an object"},
    {WITH_AI("{\"provider\":\"p\",\"input_tokens\":1,\"output_tokens\":1}"),
     "field 'ai.model': required"},
    {WITH_AI("{" AI_OK ",\"output_tokens\":1}"),
     "field 'ai.input_tokens': required"},
    {WITH_AI("{" AI_OK ",\"input_tokens\":-1,\"output_tokens\":1}"),
     "field 'ai.input_tokens': must be an integer >= 0"},
    {WITH_AI("{" AI_OK ",\"input_tokens\":1,\"output_tokens\":2.5}"),
     "field 'ai.output_tokens': must be an integer >= 0"},
    {WITH_AI("{" AI_OK ",\"input_tokens\":1,\"output_tokens\":\"2\"}"),
     "field 'ai.output_tokens': must be an integer >= 0"},
    {WITH_AI("{\"provider\":\"\",\"model\":\"m\",\"input_tokens\":1,"
             "\"output_tokens\":1}"),
     "field 'ai.provider': must be a non-empty string"},
    {WITH_AI("{" AI_OK ",\"input_tokens\":1,\"output_tokens\":1,"
             "\"cost\":3}"),
     "unknown field 'ai.cost'"},
    /* properties */
    {"{" BASE ",\"quantity\":1,\"properties\":[\"a\"]}",
     "field 'properties': must be an object of strings"},
    {"{" BASE ",\"quantity\":1,\"properties\":{\"a\":\"x\",\"b\":1}}",
     "field 'properties.b': must be a string"},
    {"{" BASE ",\"quantity\":1,\"properties\":{\"a\":null}}",
     "field 'properties.a': must be a string"},
    /* jansson refuses NUL in strings by default */
    {"{\"event_id\":\"a\\u0000b\",\"subject\":\"u\",\"feature\":\"f\","
     "\"quantity\":1}",
     "invalid JSON"},
};

static void test_invalid_lines(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof(invalid_cases) / sizeof(*invalid_cases); i++) {
    const invalid_case_t *c = &invalid_cases[i];
    tly_event_t event = {0};
    char errstr[512] = "";

    if (tly_event_from_json_text(c->line, strlen(c->line), NOW_MS, &event,
                                 errstr, sizeof(errstr)) == 0)
      fail_msg("case %zu accepted: %s", i, c->line);
    if (!strstr(errstr, c->want))
      fail_msg("case %zu (%s): error '%s' lacks '%s'", i, c->line, errstr,
               c->want);
    /* Left cleared: nothing half-filled to leak or misuse. */
    assert_null(event.event_id);
    assert_null(event.subject_id);
    assert_null(event.body.usage.feature);
    assert_null(event.body.usage.unit);
    assert_null(event.body.usage.properties);
    assert_null(event.body.usage.ai.provider);
    tly_event_clear(&event);
  }
}

/* Whatever went wrong, a raw key must not be echoed into an error (they
 * end up in logs and dead letters). */
static void test_raw_key_never_echoed(void **state) {
  static const char *const lines[] = {
      WITH_SUBJECT("\"api_key:sk_live_SECRETSECRET\""),
      WITH_SUBJECT("{\"kind\":\"api_key\",\"id\":\"sk_live_SECRETSECRET\"}"),
  };
  (void)state;
  for (size_t i = 0; i < sizeof(lines) / sizeof(*lines); i++) {
    tly_event_t event = {0};
    char errstr[512] = "";
    assert_int_not_equal(tly_event_from_json_text(lines[i], strlen(lines[i]),
                                                  NOW_MS, &event, errstr,
                                                  sizeof(errstr)),
                         0);
    assert_null(strstr(errstr, "SECRET"));
    assert_non_null(strstr(errstr, "raw keys are never accepted"));
  }
}

/* A json_t built in code can hold what a parsed line cannot. */
static void test_from_json_object(void **state) {
  tly_event_t event = {0};
  char errstr[512] = "";
  json_t *object =
      json_pack("{s:s, s:s, s:s, s:I}", "event_id", "e", "subject",
                "user:alice", "feature", "f", "quantity", (json_int_t)4);
  (void)state;

  assert_non_null(object);
  assert_int_equal(
      tly_event_from_json(object, NOW_MS, &event, errstr, sizeof(errstr)), 0);
  assert_true(event.body.usage.quantity == 4);
  assert_true(event.occurred_at_ms == NOW_MS);

  /* decoding into a filled event replaces it (no leak under ASan) */
  assert_int_equal(
      tly_event_from_json(object, NOW_MS, &event, errstr, sizeof(errstr)), 0);

  json_object_set_new(object, "feature", json_stringn("a\0b", 3));
  assert_int_not_equal(
      tly_event_from_json(object, NOW_MS, &event, errstr, sizeof(errstr)), 0);
  assert_non_null(strstr(errstr, "field 'feature': must not contain NUL"));
  assert_null(event.event_id);

  assert_int_not_equal(
      tly_event_from_json(NULL, NOW_MS, &event, errstr, sizeof(errstr)), 0);
  assert_non_null(strstr(errstr, "must be a JSON object"));
  json_decref(object);
  tly_event_clear(&event);
}

/* Many properties, all copied (and no leak when one is bad late). */
static void test_many_properties(void **state) {
  char line[8192];
  size_t used;
  tly_event_t event = {0};
  char errstr[512] = "";
  (void)state;

  used = (size_t)snprintf(line, sizeof(line),
                          "{" BASE ",\"quantity\":1,\"properties\":{");
  for (int i = 0; i < TLY_EVENT_PROPERTIES_MAX; i++)
    used += (size_t)snprintf(line + used, sizeof(line) - used,
                             "%s\"k%d\":\"v%d\"", i ? "," : "", i, i);
  snprintf(line + used, sizeof(line) - used, "}}");
  assert_int_equal(tly_event_from_json_text(line, strlen(line), NOW_MS, &event,
                                            errstr, sizeof(errstr)),
                   0);
  assert_int_equal(event.body.usage.property_count, TLY_EVENT_PROPERTIES_MAX);
  tly_event_clear(&event);

  /* one more is over the bound */
  snprintf(line + used, sizeof(line) - used, ",\"one-more\":\"v\"}}");
  assert_int_not_equal(tly_event_from_json_text(line, strlen(line), NOW_MS,
                                                &event, errstr, sizeof(errstr)),
                       0);
  assert_non_null(strstr(errstr, "field 'properties': 65 entries, at most 64"));
  assert_null(event.body.usage.properties);

  /* the same with the last value not a string */
  snprintf(line + used, sizeof(line) - used, ",\"bad\":1}}");
  assert_int_not_equal(tly_event_from_json_text(line, strlen(line), NOW_MS,
                                                &event, errstr, sizeof(errstr)),
                       0);
  assert_non_null(strstr(errstr, "field 'properties.bad'"));
  assert_null(event.body.usage.properties);
}

typedef struct {
  const char *text;
  int ok;
  tly_subject_kind_t kind;
  const char *id_or_error;
} subject_case_t;

static const subject_case_t subject_cases[] = {
    {"user:alice", 1, TLY_SUBJECT_USER, "alice"},
    {"alice", 1, TLY_SUBJECT_USER, "alice"},
    {"alice@example.com", 1, TLY_SUBJECT_USER, "alice@example.com"},
    {"user:a:b", 1, TLY_SUBJECT_USER, "a:b"},
    {"anonymous:fp-1", 1, TLY_SUBJECT_ANONYMOUS, "fp-1"},
    {"api_key:" HASH, 1, TLY_SUBJECT_API_KEY, HASH},
    {"", 0, 0, "subject: subject id must not be empty"},
    {"user:", 0, 0, "subject id must not be empty"},
    {"anonymous:", 0, 0, "subject id must not be empty"},
    {"api_key:", 0, 0, "subject id must not be empty"},
    {"api_key:sk_test_1", 0, 0, "raw keys are never accepted"},
    {"API_KEY:" HASH, 0, 0, "unknown kind 'API_KEY'"},
    {"team:x", 0, 0, "subject: unknown kind 'team'"},
};

static void test_subject_parse(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof(subject_cases) / sizeof(*subject_cases); i++) {
    const subject_case_t *c = &subject_cases[i];
    tly_subject_kind_t kind = TLY_SUBJECT__COUNT;
    char *id = (char *)"untouched";
    char errstr[256] = "";
    int rc = tly_subject_parse(c->text, &kind, &id, errstr, sizeof(errstr));

    if (c->ok) {
      if (rc)
        fail_msg("'%s' refused: %s", c->text, errstr);
      assert_int_equal(kind, c->kind);
      assert_string_equal(id, c->id_or_error);
      free(id);
    } else {
      if (rc == 0)
        fail_msg("'%s' accepted", c->text);
      assert_null(id);
      if (!strstr(errstr, c->id_or_error))
        fail_msg("'%s': error '%s' lacks '%s'", c->text, errstr,
                 c->id_or_error);
    }
  }
}

/* The parsed subject gives the Kafka key the producer uses. */
static void test_subject_parse_to_key(void **state) {
  tly_subject_kind_t kind;
  char *id = NULL, key[128], errstr[128];
  (void)state;
  assert_int_equal(tly_subject_parse("bob", &kind, &id, errstr, sizeof(errstr)),
                   0);
  assert_int_equal(tly_subject_key(kind, id, key, sizeof(key)), 8);
  assert_string_equal(key, "user:bob");
  free(id);
}

/* ------------------------------------------------------------------ */
/* The other event types                                               */
/* ------------------------------------------------------------------ */

#define TYPED(type, rest)                                                      \
  "{\"event_id\":\"e\",\"subject\":\"user:alice\",\"type\":\"" type "\"" rest  \
  "}"

static void test_typed_valid(void **state) {
  char errstr[512] = "";
  tly_event_t event = {0};
  const char *line;
  (void)state;

#define PARSE(text)                                                            \
  do {                                                                         \
    line = text;                                                               \
    if (tly_event_from_json_text(line, strlen(line), NOW_MS, &event, errstr,   \
                                 sizeof(errstr)))                              \
      fail_msg("refused %s: %s", line, errstr);                                \
  } while (0)

  /* explicit usage_recorded is the default made visible */
  PARSE("{\"type\":\"usage_recorded\",\"event_id\":\"e\",\"subject\":\"u\","
        "\"feature\":\"f\",\"quantity\":3}");
  assert_int_equal(event.body_kind, TLY_BODY_USAGE_RECORDED);
  assert_true(event.body.usage.quantity == 3);
  PARSE("{\"type\":null,\"event_id\":\"e\",\"subject\":\"u\","
        "\"feature\":\"f\",\"quantity\":3}");
  assert_int_equal(event.body_kind, TLY_BODY_USAGE_RECORDED);

  PARSE(TYPED("plan_assigned", ",\"plan\":\"pro\""));
  assert_int_equal(event.body_kind, TLY_BODY_PLAN_ASSIGNED);
  assert_string_equal(event.body.plan_assigned.plan, "pro");
  assert_true(event.occurred_at_ms == NOW_MS);

  PARSE(TYPED("subscription_changed",
              ",\"plan\":\"team\",\"stripe_subscription_id\":\"sub_1\","
              "\"stripe_price_id\":\"price_1\",\"period_start\":"
              "\"2026-11-23T10:00:00Z\",\"period_end\":1797000000000,"
              "\"occurred_at\":5"));
  assert_int_equal(event.body_kind, TLY_BODY_SUBSCRIPTION_CHANGED);
  assert_string_equal(event.body.subscription_changed.plan, "team");
  assert_string_equal(event.body.subscription_changed.stripe_subscription_id,
                      "sub_1");
  assert_string_equal(event.body.subscription_changed.stripe_price_id,
                      "price_1");
  assert_true(event.body.subscription_changed.period_start_ms ==
              T_2026_11_23_10);
  assert_true(event.body.subscription_changed.period_end_ms ==
              INT64_C(1797000000000));
  assert_true(event.occurred_at_ms == 5);

  /* optional strings become "", absent periods 0 */
  PARSE(TYPED("subscription_changed",
              ",\"plan\":\"team\",\"stripe_price_id\":null"));
  assert_string_equal(event.body.subscription_changed.stripe_subscription_id,
                      "");
  assert_string_equal(event.body.subscription_changed.stripe_price_id, "");
  assert_true(event.body.subscription_changed.period_start_ms == 0);
  assert_true(event.body.subscription_changed.period_end_ms == 0);

  PARSE(TYPED("subscription_canceled", ""));
  assert_int_equal(event.body_kind, TLY_BODY_SUBSCRIPTION_CANCELED);
  assert_string_equal(event.body.subscription_canceled.stripe_subscription_id,
                      "");
  assert_string_equal(event.body.subscription_canceled.reason, "");
  PARSE(TYPED("subscription_canceled",
              ",\"stripe_subscription_id\":\"sub_1\",\"reason\":\"r\""));
  assert_string_equal(event.body.subscription_canceled.reason, "r");

  PARSE(TYPED("invoice_paid", ",\"invoice_id\":\"in_1\","
                              "\"amount_paid_micros\":49000000,"
                              "\"period_start\":\"2026-11-23T10:00:00Z\","
                              "\"period_end\":\"2026-12-23T10:00:00.5Z\""));
  assert_int_equal(event.body_kind, TLY_BODY_INVOICE_PAID);
  assert_string_equal(event.body.invoice_paid.invoice_id, "in_1");
  assert_true(event.body.invoice_paid.amount_paid_micros == 49000000);
  assert_true(event.body.invoice_paid.period_start_ms == T_2026_11_23_10);
  assert_true(event.body.invoice_paid.period_end_ms ==
              T_2026_11_23_10 + INT64_C(30) * 86400000 + 500);
  PARSE(TYPED("invoice_paid", ",\"invoice_id\":\"in_1\","
                              "\"amount_paid_micros\":0,\"period_end\":7"));
  assert_true(event.body.invoice_paid.period_start_ms == 0);
  assert_true(event.body.invoice_paid.period_end_ms == 7);

  PARSE(TYPED("payment_failed", ",\"invoice_id\":\"in_2\","
                                "\"amount_due_micros\":100,\"attempt\":3"));
  assert_int_equal(event.body_kind, TLY_BODY_PAYMENT_FAILED);
  assert_string_equal(event.body.payment_failed.invoice_id, "in_2");
  assert_true(event.body.payment_failed.amount_due_micros == 100);
  assert_int_equal(event.body.payment_failed.attempt, 3);
  PARSE(TYPED("payment_failed", ",\"invoice_id\":\"in_2\","
                                "\"amount_due_micros\":100"));
  assert_int_equal(event.body.payment_failed.attempt, 0);
  PARSE(TYPED("payment_failed", ",\"invoice_id\":\"in_2\","
                                "\"amount_due_micros\":1,"
                                "\"attempt\":2147483647"));
  assert_int_equal(event.body.payment_failed.attempt, INT32_MAX);

  PARSE("{\"event_id\":\"e\",\"subject\":{\"kind\":\"api_key\",\"id\":\"" HASH
        "\"},\"type\":\"customer_linked\",\"stripe_customer_id\":\"cus_1\"}");
  assert_int_equal(event.body_kind, TLY_BODY_CUSTOMER_LINKED);
  assert_int_equal(event.subject_kind, TLY_SUBJECT_API_KEY);
  assert_string_equal(event.body.customer_linked.stripe_customer_id, "cus_1");
  tly_event_clear(&event);
#undef PARSE
}

static const invalid_case_t typed_invalid_cases[] = {
    /* the type itself */
    {TYPED("plan_asigned", ",\"plan\":\"p\""),
     "field 'type': unknown type 'plan_asigned'"},
    {TYPED("", ""), "field 'type': unknown type ''"},
    {"{\"event_id\":\"e\",\"subject\":\"u\",\"type\":7}",
     "field 'type': must be a string"},
    {TYPED("tick", ",\"partition\":1"), "written by the processor only"},
    {"{\"event_id\":\"e\",\"subject\":\"system:tick\",\"type\":\"tick\","
     "\"partition\":1}",
     "field 'type': 'tick' events"},
    /* the system subject is the processor's */
    {"{\"event_id\":\"e\",\"subject\":\"system:tick\",\"type\":"
     "\"plan_assigned\",\"plan\":\"p\"}",
     "kind 'system' is only for tick events"},
    {"{\"event_id\":\"e\",\"subject\":\"system:x\",\"feature\":\"f\","
     "\"quantity\":1}",
     "system subject id must be 'tick'"},
    /* unknown keys for the type, named */
    {TYPED("plan_assigned", ",\"plan\":\"p\",\"feature\":\"f\""),
     "unknown field 'feature' (not a field of plan_assigned events)"},
    {TYPED("customer_linked", ",\"stripe_customer_id\":\"c\",\"plan\":\"p\""),
     "unknown field 'plan'"},
    {TYPED("invoice_paid", ",\"invoice_id\":\"i\",\"amount_paid_micros\":1,"
                           "\"amount_due_micros\":1"),
     "unknown field 'amount_due_micros'"},
    {TYPED("subscription_canceled", ",\"partition\":1"),
     "unknown field 'partition'"},
    {"{\"event_id\":\"e\",\"subject\":\"u\",\"feature\":\"f\",\"quantity\":1,"
     "\"plan\":\"p\"}",
     "unknown field 'plan' (not a field of usage_recorded events)"},
    /* plan_assigned */
    {TYPED("plan_assigned", ""), "field 'plan': required"},
    {TYPED("plan_assigned", ",\"plan\":null"), "field 'plan': required"},
    {TYPED("plan_assigned", ",\"plan\":\"\""),
     "field 'plan': must be a non-empty string"},
    {TYPED("plan_assigned", ",\"plan\":3"), "field 'plan': must be a"},
    /* subscription_changed */
    {TYPED("subscription_changed", ",\"stripe_price_id\":\"x\""),
     "field 'plan': required"},
    {TYPED("subscription_changed", ",\"plan\":\"\""),
     "field 'plan': must be a non-empty"},
    {TYPED("subscription_changed", ",\"plan\":\"p\",\"stripe_price_id\":1"),
     "field 'stripe_price_id': must be a string"},
    {TYPED("subscription_changed", ",\"plan\":\"p\",\"period_start\":-1"),
     "field 'period_start': milliseconds must be >= 0"},
    {TYPED("subscription_changed", ",\"plan\":\"p\",\"period_end\":\"soon\""),
     "field 'period_end': not an RFC 3339 UTC time"},
    {TYPED("subscription_changed", ",\"plan\":\"p\",\"period_end\":1.5"),
     "field 'period_end': must be integer milliseconds"},
    {TYPED("subscription_changed",
           ",\"plan\":\"p\",\"period_start\":10,\"period_end\":10"),
     "field 'period_end': must be after period_start"},
    /* subscription_canceled */
    {TYPED("subscription_canceled", ",\"reason\":false"),
     "field 'reason': must be a string"},
    /* invoice_paid */
    {TYPED("invoice_paid", ",\"amount_paid_micros\":1"),
     "field 'invoice_id': required"},
    {TYPED("invoice_paid", ",\"invoice_id\":\"\",\"amount_paid_micros\":1"),
     "field 'invoice_id': must be a non-empty"},
    {TYPED("invoice_paid", ",\"invoice_id\":\"i\""),
     "field 'amount_paid_micros': required"},
    {TYPED("invoice_paid", ",\"invoice_id\":\"i\",\"amount_paid_micros\":-1"),
     "field 'amount_paid_micros': must be an integer >= 0"},
    {TYPED("invoice_paid", ",\"invoice_id\":\"i\",\"amount_paid_micros\":1.5"),
     "field 'amount_paid_micros': must be an integer >= 0"},
    {TYPED("invoice_paid", ",\"invoice_id\":\"i\",\"amount_paid_micros\":1,"
                           "\"period_start\":\"2026-11-23T10:00:00Z\","
                           "\"period_end\":\"2026-11-22T10:00:00Z\""),
     "field 'period_end': must be after period_start"},
    /* payment_failed */
    {TYPED("payment_failed", ",\"amount_due_micros\":1"),
     "field 'invoice_id': required"},
    {TYPED("payment_failed", ",\"invoice_id\":\"i\""),
     "field 'amount_due_micros': required"},
    {TYPED("payment_failed", ",\"invoice_id\":\"i\",\"amount_due_micros\":1,"
                             "\"attempt\":-1"),
     "field 'attempt': must be an integer >= 0"},
    {TYPED("payment_failed", ",\"invoice_id\":\"i\",\"amount_due_micros\":1,"
                             "\"attempt\":2147483648"),
     "field 'attempt': must be at most 2147483647"},
    {TYPED("payment_failed", ",\"invoice_id\":\"i\",\"amount_due_micros\":1,"
                             "\"attempt\":\"2\""),
     "field 'attempt'"},
    /* customer_linked */
    {TYPED("customer_linked", ""), "field 'stripe_customer_id': required"},
    {TYPED("customer_linked", ",\"stripe_customer_id\":\"\""),
     "field 'stripe_customer_id': must be a non-empty"},
    /* the envelope still applies to every type */
    {"{\"subject\":\"u\",\"type\":\"plan_assigned\",\"plan\":\"p\"}",
     "field 'event_id': required"},
    {"{\"event_id\":\"e\",\"type\":\"plan_assigned\",\"plan\":\"p\"}",
     "field 'subject': required"},
    {TYPED("plan_assigned", ",\"plan\":\"p\",\"occurred_at\":-3"),
     "field 'occurred_at'"},
};

static void test_typed_invalid(void **state) {
  (void)state;
  for (size_t i = 0;
       i < sizeof(typed_invalid_cases) / sizeof(*typed_invalid_cases); i++) {
    const invalid_case_t *c = &typed_invalid_cases[i];
    tly_event_t event = {0};
    char errstr[512] = "";

    if (tly_event_from_json_text(c->line, strlen(c->line), NOW_MS, &event,
                                 errstr, sizeof(errstr)) == 0)
      fail_msg("case %zu accepted: %s", i, c->line);
    if (!strstr(errstr, c->want))
      fail_msg("case %zu (%s): error '%s' lacks '%s'", i, c->line, errstr,
               c->want);
    assert_null(event.event_id);
    assert_null(event.subject_id);
    assert_int_equal(event.body_kind, 0);
    tly_event_clear(&event);
  }
}

/* to_json then from_json gives the same event, for every readable type;
 * and the JSON text is stable (the same event always prints the same). */
static void test_to_json_round_trip(void **state) {
  static const char *const lines[] = {
      "{\"event_id\":\"e-1\",\"occurred_at\":1732300000000,\"subject\":"
      "\"user:alice\",\"feature\":\"api_calls\",\"quantity\":1,\"unit\":"
      "\"call\",\"ai\":{\"provider\":\"openai\",\"model\":\"gpt-4o\","
      "\"input_tokens\":10,\"output_tokens\":5},\"properties\":{\"region\":"
      "\"eu\",\"t\\u00e9\":\"\"}}",
      "{\"event_id\":\"e-2\",\"subject\":\"anonymous:fp:1\",\"feature\":\"f\","
      "\"quantity\":9223372036854775807}",
      TYPED("plan_assigned", ",\"plan\":\"pr\\u00f6\""),
      TYPED("subscription_changed",
            ",\"plan\":\"team\",\"stripe_subscription_id\":\"sub_1\","
            "\"stripe_price_id\":\"price_1\",\"period_start\":1,"
            "\"period_end\":2"),
      TYPED("subscription_changed", ",\"plan\":\"team\""),
      TYPED("subscription_canceled", ",\"reason\":\"r\""),
      TYPED("invoice_paid", ",\"invoice_id\":\"in_1\","
                            "\"amount_paid_micros\":49000000,"
                            "\"period_start\":\"2026-11-23T10:00:00Z\","
                            "\"period_end\":1797000000000"),
      TYPED("payment_failed", ",\"invoice_id\":\"in_2\","
                              "\"amount_due_micros\":100,\"attempt\":3"),
      "{\"event_id\":\"e\",\"subject\":\"api_key:" HASH "\",\"type\":"
      "\"customer_linked\",\"stripe_customer_id\":\"cus_1\"}",
  };
  (void)state;
  for (size_t i = 0; i < sizeof(lines) / sizeof(*lines); i++) {
    tly_event_t first = {0}, second = {0};
    json_t *json = NULL, *again = NULL;
    char errstr[512] = "", *text_a, *text_b;

    if (tly_event_from_json_text(lines[i], strlen(lines[i]), NOW_MS, &first,
                                 errstr, sizeof(errstr)))
      fail_msg("line %zu refused: %s", i, errstr);
    assert_int_equal(tly_event_to_json(&first, &json), 0);
    assert_non_null(json);
    /* "type" is always written, the default included */
    assert_non_null(json_string_value(json_object_get(json, "type")));
    if (i < 2)
      assert_string_equal(json_string_value(json_object_get(json, "type")),
                          "usage_recorded");
    /* read back with a different now: occurred_at must come from the JSON */
    if (tly_event_from_json(json, NOW_MS + 1, &second, errstr, sizeof(errstr)))
      fail_msg("line %zu: to_json output refused: %s", i, errstr);
    assert_int_equal(tly_event_to_json(&second, &again), 0);
    text_a = json_dumps(json, JSON_SORT_KEYS | JSON_COMPACT);
    text_b = json_dumps(again, JSON_SORT_KEYS | JSON_COMPACT);
    assert_non_null(text_a);
    assert_non_null(text_b);
    assert_string_equal(text_a, text_b);
    assert_true(first.occurred_at_ms == second.occurred_at_ms);
    assert_int_equal(first.body_kind, second.body_kind);
    assert_string_equal(first.subject_id, second.subject_id);
    assert_int_equal(first.subject_kind, second.subject_kind);
    free(text_a);
    free(text_b);
    json_decref(json);
    json_decref(again);
    tly_event_clear(&first);
    tly_event_clear(&second);
  }
}

/* The exact shape, on one flat type and a tick (which the reader refuses). */
static void test_to_json_shape(void **state) {
  tly_event_t event = {0};
  json_t *json = NULL;
  char *text;
  char errstr[256];
  (void)state;

  event.event_id = strdup("t-1");
  event.occurred_at_ms = 60000;
  event.subject_kind = TLY_SUBJECT_SYSTEM;
  event.subject_id = strdup("tick");
  event.body_kind = TLY_BODY_TICK;
  event.body.tick.partition = 4;
  assert_int_equal(tly_event_to_json(&event, &json), 0);
  text = json_dumps(json, JSON_SORT_KEYS | JSON_COMPACT);
  assert_string_equal(text, "{\"event_id\":\"t-1\",\"occurred_at\":60000,"
                            "\"partition\":4,\"subject\":\"system:tick\","
                            "\"type\":\"tick\"}");
  free(text);
  assert_int_not_equal(
      tly_event_from_json(json, NOW_MS, &event, errstr, sizeof(errstr)), 0);
  assert_non_null(strstr(errstr, "written by the processor only"));
  json_decref(json);

  event.event_id = strdup("c");
  event.occurred_at_ms = 1;
  event.subject_kind = TLY_SUBJECT_USER;
  event.subject_id = strdup("bob");
  event.body_kind = TLY_BODY_SUBSCRIPTION_CANCELED;
  event.body.subscription_canceled.reason = strdup("r");
  /* NULL optional string printed as "" */
  assert_int_equal(tly_event_to_json(&event, &json), 0);
  text = json_dumps(json, JSON_SORT_KEYS | JSON_COMPACT);
  assert_string_equal(text, "{\"event_id\":\"c\",\"occurred_at\":1,"
                            "\"reason\":\"r\",\"stripe_subscription_id\":\"\","
                            "\"subject\":\"user:bob\","
                            "\"type\":\"subscription_canceled\"}");
  free(text);
  json_decref(json);

  /* what cannot be written */
  free(event.body.subscription_canceled.reason);
  event.body.subscription_canceled.reason = strdup("\xff");
  json = (json_t *)1;
  assert_int_equal(tly_event_to_json(&event, &json), -1);
  assert_null(json);
  event.body_kind = TLY_BODY__COUNT;
  assert_int_equal(tly_event_to_json(&event, &json), -1);
  event.body_kind = TLY_BODY_SUBSCRIPTION_CANCELED;
  assert_int_equal(tly_event_to_json(NULL, &json), -1);
  assert_int_equal(tly_event_to_json(&event, NULL), -1);
  tly_event_clear(&event);
}

/* A usage event's top-level "reservation_id" settles that reservation: it
 * travels in the properties map under tally.reservation_id (UsageRecorded
 * has no field for it), once, well-formed; reservation events themselves
 * are never read from JSON. */
static void test_reservation_id(void **state) {
  static const char *const bad[][2] = {
      {"{\"event_id\":\"r\",\"subject\":\"u\",\"feature\":\"f\",\"quantity\":1,"
       "\"reservation_id\":\"a b\"}",
       "field 'reservation_id'"},
      {"{\"event_id\":\"r\",\"subject\":\"u\",\"feature\":\"f\",\"quantity\":1,"
       "\"reservation_id\":7}",
       "field 'reservation_id'"},
      {"{\"event_id\":\"r\",\"subject\":\"u\",\"feature\":\"f\",\"quantity\":1,"
       "\"reservation_id\":\"\"}",
       "field 'reservation_id'"},
      {"{\"event_id\":\"r\",\"subject\":\"u\",\"feature\":\"f\",\"quantity\":1,"
       "\"reservation_id\":\"rsv_1\",\"properties\":"
       "{\"tally.reservation_id\":\"rsv_2\"}}",
       "give it once"},
      {"{\"type\":\"reservation_held\",\"event_id\":\"r\",\"subject\":\"u\","
       "\"reservation_id\":\"rsv_1\",\"feature\":\"f\",\"quantity\":1,"
       "\"ttl_ms\":1000}",
       "never from JSON"},
      {"{\"type\":\"reservation_released\",\"event_id\":\"r\",\"subject\":"
       "\"u\","
       "\"reservation_id\":\"rsv_1\"}",
       "never from JSON"},
  };
  const char *line = "{\"event_id\":\"r\",\"subject\":\"u\",\"feature\":\"f\","
                     "\"quantity\":4,\"properties\":{\"region\":\"eu\"},"
                     "\"reservation_id\":\"rsv_AZ09_-x\"}";
  tly_event_t event = {0};
  char errstr[512] = "";
  (void)state;

  assert_int_equal(tly_event_from_json_text(line, strlen(line), NOW_MS, &event,
                                            errstr, sizeof(errstr)),
                   0);
  assert_int_equal(event.body.usage.property_count, 2);
  assert_string_equal(tly_usage_reservation_id(&event.body.usage),
                      "rsv_AZ09_-x");
  json_t *json = NULL;
  assert_int_equal(tly_event_to_json(&event, &json), 0);
  assert_string_equal(
      json_string_value(json_object_get(json_object_get(json, "properties"),
                                        "tally.reservation_id")),
      "rsv_AZ09_-x");
  json_decref(json);
  tly_event_clear(&event);

  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    if (tly_event_from_json_text(bad[i][0], strlen(bad[i][0]), NOW_MS, &event,
                                 errstr, sizeof(errstr)) == 0)
      fail_msg("case %zu accepted", i);
    if (!strstr(errstr, bad[i][1]))
      fail_msg("case %zu: '%s' lacks '%s'", i, errstr, bad[i][1]);
    assert_null(event.event_id);
  }
}

/* usage_corrected: corrects required, no properties, round trip. */
static void test_usage_corrected(void **state) {
  static const char *const bad[][2] = {
      {"{\"type\":\"usage_corrected\",\"event_id\":\"c\",\"subject\":\"u\","
       "\"feature\":\"f\",\"quantity\":1}",
       "field 'corrects': required"},
      {"{\"type\":\"usage_corrected\",\"event_id\":\"c\",\"subject\":\"u\","
       "\"corrects\":\"\",\"feature\":\"f\",\"quantity\":1}",
       "field 'corrects'"},
      {"{\"type\":\"usage_corrected\",\"event_id\":\"c\",\"subject\":\"u\","
       "\"corrects\":\"e\",\"feature\":\"f\",\"quantity\":-1}",
       "field 'quantity'"},
      {"{\"type\":\"usage_corrected\",\"event_id\":\"c\",\"subject\":\"u\","
       "\"corrects\":\"e\",\"feature\":\"f\",\"quantity\":1,"
       "\"properties\":{\"a\":\"b\"}}",
       "unknown field 'properties'"},
      {"{\"event_id\":\"c\",\"subject\":\"u\",\"corrects\":\"e\","
       "\"feature\":\"f\",\"quantity\":1}",
       "unknown field 'corrects'"},
  };
  const char *line =
      "{\"type\":\"usage_corrected\",\"event_id\":\"c1\",\"subject\":"
      "\"user:u\",\"corrects\":\"e1\",\"feature\":\"ai_tokens\",\"quantity\":"
      "0,\"ai\":{\"provider\":\"openai\",\"model\":\"m\",\"input_tokens\":3,"
      "\"output_tokens\":4}}";
  tly_event_t event = {0};
  char errstr[512] = "";
  (void)state;
  assert_int_equal(tly_event_from_json_text(line, strlen(line), NOW_MS, &event,
                                            errstr, sizeof(errstr)),
                   0);
  assert_int_equal(event.body_kind, TLY_BODY_USAGE_CORRECTED);
  assert_string_equal(event.body.usage.corrects, "e1");
  assert_int_equal(event.body.usage.quantity, 0);
  assert_int_equal(event.body.usage.ai.output_tokens, 4);
  json_t *json = NULL;
  assert_int_equal(tly_event_to_json(&event, &json), 0);
  assert_string_equal(json_string_value(json_object_get(json, "type")),
                      "usage_corrected");
  assert_string_equal(json_string_value(json_object_get(json, "corrects")),
                      "e1");
  tly_event_t again = {0};
  assert_int_equal(
      tly_event_from_json(json, NOW_MS, &again, errstr, sizeof(errstr)), 0);
  assert_string_equal(again.body.usage.corrects, "e1");
  assert_int_equal(again.body.usage.ai.input_tokens, 3);
  tly_event_clear(&again);
  json_decref(json);
  tly_event_clear(&event);
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    if (tly_event_from_json_text(bad[i][0], strlen(bad[i][0]), NOW_MS, &event,
                                 errstr, sizeof(errstr)) == 0)
      fail_msg("case %zu accepted", i);
    if (!strstr(errstr, bad[i][1]))
      fail_msg("case %zu: '%s' lacks '%s'", i, errstr, bad[i][1]);
    assert_null(event.event_id);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_usage_corrected),
      cmocka_unit_test(test_reservation_id),
      cmocka_unit_test(test_valid_lines),
      cmocka_unit_test(test_invalid_lines),
      cmocka_unit_test(test_raw_key_never_echoed),
      cmocka_unit_test(test_from_json_object),
      cmocka_unit_test(test_many_properties),
      cmocka_unit_test(test_subject_parse),
      cmocka_unit_test(test_subject_parse_to_key),
      cmocka_unit_test(test_typed_valid),
      cmocka_unit_test(test_typed_invalid),
      cmocka_unit_test(test_to_json_round_trip),
      cmocka_unit_test(test_to_json_shape),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
