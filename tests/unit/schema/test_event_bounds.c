/*
 * test_event_bounds.c - the size bound of every event field (tly_event.h)
 * and of the record around it (tly_record.h), on every way in.
 *
 * For each bounded string field of every body kind, from one table:
 *   - at its bound, the JSON reader accepts it, the encoder writes it, both
 *     decoders and tly_record_prepare (the processor's gate) read it back;
 *   - one byte over, the JSON reader (emit, POST /v1/events) refuses it
 *     naming the field, the encoder (the producer library) refuses it, and
 *     the same bytes spliced into a valid record are refused by both
 *     decoders and by tly_record_prepare with the size and the bound
 *     ("field 'event_id': 257 bytes, at most 256"): such a record goes to
 *     the dead-letter topic instead of the fold.
 * Then the properties map's entry count, the record's own bounds (no
 * value, value size, key size) and the largest valid event, which must fit
 * within the record value bound.
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
#include "tly_event_time.h"
#include "tly_record.h"

#define NOW_MS INT64_C(1732300000000)

/* One bounded field: a JSON line with "%s" where the field's text goes,
 * the name errors give it, and its bound. The filler 'Q' appears nowhere
 * else in the line. */
typedef struct {
  const char *line;
  const char *field;
  size_t bound;
} bound_case_t;

#define USAGE(rest)                                                            \
  "{\"event_id\":\"e-1\",\"occurred_at\":1732300000000,\"subject\":"           \
  "\"user:alice\",\"feature\":\"api_calls\",\"quantity\":1" rest "}"
#define TYPED(type, rest)                                                      \
  "{\"type\":\"" type "\",\"event_id\":\"e-1\",\"occurred_at\":"               \
  "1732300000000,\"subject\":\"user:alice\"" rest "}"

static const bound_case_t cases[] = {
    {"{\"event_id\":\"%s\",\"subject\":\"user:alice\",\"feature\":\"f\","
     "\"quantity\":1}",
     "event_id", TLY_EVENT_ID_MAX},
    {"{\"event_id\":\"e-1\",\"subject\":\"user:%s\",\"feature\":\"f\","
     "\"quantity\":1}",
     "subject", TLY_SUBJECT_ID_MAX},
    {"{\"event_id\":\"e-1\",\"subject\":\"anonymous:%s\",\"feature\":\"f\","
     "\"quantity\":1}",
     "subject", TLY_SUBJECT_ID_MAX},
    {"{\"event_id\":\"e-1\",\"subject\":\"user:alice\",\"feature\":\"%s\","
     "\"quantity\":1}",
     "feature", TLY_EVENT_NAME_MAX},
    {USAGE(",\"unit\":\"%s\""), "unit", TLY_EVENT_NAME_MAX},
    {USAGE(",\"ai\":{\"provider\":\"%s\",\"model\":\"m\",\"input_tokens\":1,"
           "\"output_tokens\":1}"),
     "ai.provider", TLY_EVENT_NAME_MAX},
    {USAGE(",\"ai\":{\"provider\":\"p\",\"model\":\"%s\",\"input_tokens\":1,"
           "\"output_tokens\":1}"),
     "ai.model", TLY_EVENT_NAME_MAX},
    {USAGE(",\"properties\":{\"%s\":\"v\"}"), "properties",
     TLY_EVENT_PROPERTY_KEY_MAX},
    {USAGE(",\"properties\":{\"region\":\"%s\"}"), "properties.region",
     TLY_EVENT_PROPERTY_VALUE_MAX},
    {TYPED("plan_assigned", ",\"plan\":\"%s\""), "plan", TLY_EVENT_NAME_MAX},
    {TYPED("subscription_changed", ",\"plan\":\"%s\""), "plan",
     TLY_EVENT_NAME_MAX},
    {TYPED("subscription_changed",
           ",\"plan\":\"pro\",\"stripe_subscription_id\":\"%s\""),
     "stripe_subscription_id", TLY_EVENT_STRIPE_ID_MAX},
    {TYPED("subscription_changed",
           ",\"plan\":\"pro\",\"stripe_price_id\":\"%s\""),
     "stripe_price_id", TLY_EVENT_STRIPE_ID_MAX},
    {TYPED("subscription_canceled", ",\"stripe_subscription_id\":\"%s\""),
     "stripe_subscription_id", TLY_EVENT_STRIPE_ID_MAX},
    {TYPED("subscription_canceled", ",\"reason\":\"%s\""), "reason",
     TLY_EVENT_TEXT_MAX},
    {TYPED("invoice_paid", ",\"invoice_id\":\"%s\",\"amount_paid_micros\":1"),
     "invoice_id", TLY_EVENT_STRIPE_ID_MAX},
    {TYPED("payment_failed", ",\"invoice_id\":\"%s\",\"amount_due_micros\":1"),
     "invoice_id", TLY_EVENT_STRIPE_ID_MAX},
    {TYPED("customer_linked", ",\"stripe_customer_id\":\"%s\""),
     "stripe_customer_id", TLY_EVENT_STRIPE_ID_MAX},
};

static char *filler(size_t len) {
  char *text = malloc(len + 1);
  assert_non_null(text);
  memset(text, 'Q', len);
  text[len] = '\0';
  return text;
}

/* The case's line with a filler of len bytes in place of its "%s"
 * (malloc'd). */
static char *line_with(const bound_case_t *c, size_t len) {
  const char *hole = strstr(c->line, "%s");
  assert_non_null(hole);
  size_t head = (size_t)(hole - c->line), tail = strlen(hole + 2);
  char *line = malloc(head + len + tail + 1);
  assert_non_null(line);
  memcpy(line, c->line, head);
  memset(line + head, 'Q', len);
  memcpy(line + head + len, hole + 2, tail + 1);
  return line;
}

/* Avro long: zigzag, then base-128 varint; the bytes written. */
static size_t put_long(unsigned char *out, int64_t value) {
  uint64_t n = ((uint64_t)value << 1) ^ (uint64_t)(value >> 63);
  size_t len = 0;
  while (n & ~(uint64_t)0x7F) {
    out[len++] = (unsigned char)((n & 0x7F) | 0x80);
    n >>= 7;
  }
  out[len++] = (unsigned char)n;
  return len;
}

/* The encoded bytes with the Avro string of len 'Q's replaced by one of
 * len + 1 (its length prefix re-encoded): what any Kafka writer that does
 * not check the bounds can produce. malloc'd, *out_len set. */
static unsigned char *splice_longer(const unsigned char *bytes, size_t len,
                                    size_t filler_len, size_t *out_len) {
  unsigned char prefix[10], longer[10];
  size_t prefix_len = put_long(prefix, (int64_t)filler_len);
  size_t longer_len = put_long(longer, (int64_t)filler_len + 1);
  char *text = filler(filler_len);
  unsigned char *out = NULL;
  for (size_t at = 0; at + prefix_len + filler_len <= len && !out; at++) {
    if (memcmp(bytes + at, prefix, prefix_len) ||
        memcmp(bytes + at + prefix_len, text, filler_len))
      continue;
    *out_len = len - prefix_len + longer_len + 1;
    out = malloc(*out_len);
    assert_non_null(out);
    memcpy(out, bytes, at);
    memcpy(out + at, longer, longer_len);
    memset(out + at + longer_len, 'Q', filler_len + 1);
    memcpy(out + at + longer_len + filler_len + 1,
           bytes + at + prefix_len + filler_len,
           len - at - prefix_len - filler_len);
  }
  free(text);
  assert_non_null(out);
  return out;
}

/* Both decoders and the processor's gate refuse bytes, each with a message
 * containing want. */
static void expect_refused(tly_codec_t *codec, const unsigned char *bytes,
                           size_t len, const char *want) {
  tly_event_t event = {0}, view = {0};
  char errstr[512] = "";
  if (tly_codec_decode(codec, bytes, len, &event, errstr, sizeof(errstr)) == 0)
    fail_msg("tly_codec_decode accepted it (wanted '%s')", want);
  if (!strstr(errstr, want))
    fail_msg("tly_codec_decode: '%s' lacks '%s'", errstr, want);
  assert_null(event.event_id);
  if (tly_codec_decode_view(codec, bytes, len, &view, errstr, sizeof(errstr)) ==
      0)
    fail_msg("tly_codec_decode_view accepted it (wanted '%s')", want);
  if (!strstr(errstr, want))
    fail_msg("tly_codec_decode_view: '%s' lacks '%s'", errstr, want);
  tly_record_t record = {"user:alice", 10,     bytes,
                         len,          NOW_MS, TLY_DEFAULT_MAX_FUTURE_SKEW_MS};
  if (tly_record_prepare(codec, &record, &view, errstr, sizeof(errstr)) == 0)
    fail_msg("tly_record_prepare accepted it (wanted '%s')", want);
  if (!strstr(errstr, want))
    fail_msg("tly_record_prepare: '%s' lacks '%s'", errstr, want);
  assert_null(view.event_id);
}

/* The string of event that holds the filler (the one the case bounds). */
static char **filler_field(tly_event_t *event) {
  char **fields[] = {&event->event_id,
                     &event->subject_id,
                     NULL,
                     NULL,
                     NULL,
                     NULL,
                     NULL,
                     NULL,
                     NULL};
  size_t count = 2;
  if (event->body_kind == TLY_BODY_USAGE_RECORDED) {
    tly_usage_recorded_t *usage = &event->body.usage;
    fields[count++] = &usage->feature;
    fields[count++] = &usage->unit;
    fields[count++] = &usage->ai.provider;
    fields[count++] = &usage->ai.model;
    for (size_t i = 0; i < usage->property_count && count < 8; i++) {
      fields[count++] = &usage->properties[i].key;
      fields[count++] = &usage->properties[i].value;
    }
  } else {
    /* flat bodies: every text field of the union's largest member */
    tly_subscription_changed_t *change = &event->body.subscription_changed;
    switch (event->body_kind) {
    case TLY_BODY_PLAN_ASSIGNED:
      fields[count++] = &event->body.plan_assigned.plan;
      break;
    case TLY_BODY_SUBSCRIPTION_CHANGED:
      fields[count++] = &change->plan;
      fields[count++] = &change->stripe_subscription_id;
      fields[count++] = &change->stripe_price_id;
      break;
    case TLY_BODY_SUBSCRIPTION_CANCELED:
      fields[count++] =
          &event->body.subscription_canceled.stripe_subscription_id;
      fields[count++] = &event->body.subscription_canceled.reason;
      break;
    case TLY_BODY_INVOICE_PAID:
      fields[count++] = &event->body.invoice_paid.invoice_id;
      break;
    case TLY_BODY_PAYMENT_FAILED:
      fields[count++] = &event->body.payment_failed.invoice_id;
      break;
    case TLY_BODY_CUSTOMER_LINKED:
      fields[count++] = &event->body.customer_linked.stripe_customer_id;
      break;
    default:
      break;
    }
  }
  for (size_t i = 0; i < count; i++)
    if (*fields[i] && strchr(*fields[i], 'Q'))
      return fields[i];
  fail_msg("no field holds the filler");
  return NULL;
}

static void test_every_field_bound(void **state) {
  char errstr[512], want[128];
  tly_codec_t *codec =
      tly_codec_new(TLY_CODEC_DEFAULT_SCHEMA_ID, errstr, sizeof(errstr));
  (void)state;
  assert_non_null(codec);

  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    const bound_case_t *c = &cases[i];
    tly_event_t event = {0}, decoded = {0};
    const void *encoded;
    size_t encoded_len;

    /* At the bound: every way in takes it. */
    char *line = line_with(c, c->bound);
    if (tly_event_from_json_text(line, strlen(line), NOW_MS, &event, errstr,
                                 sizeof(errstr)))
      fail_msg("case %zu (%s) at its bound refused: %s", i, c->field, errstr);
    free(line);
    if (tly_codec_encode(codec, &event, &encoded, &encoded_len, errstr,
                         sizeof(errstr)))
      fail_msg("case %zu (%s) at its bound not encoded: %s", i, c->field,
               errstr);
    unsigned char *bytes = malloc(encoded_len);
    assert_non_null(bytes);
    memcpy(bytes, encoded, encoded_len);
    assert_int_equal(tly_codec_decode(codec, bytes, encoded_len, &decoded,
                                      errstr, sizeof(errstr)),
                     0);
    tly_event_clear(&decoded);
    tly_record_t record = {"user:alice", 10,
                           bytes,        encoded_len,
                           NOW_MS,       TLY_DEFAULT_MAX_FUTURE_SKEW_MS};
    if (tly_record_prepare(codec, &record, &decoded, errstr, sizeof(errstr)))
      fail_msg("case %zu (%s): tly_record_prepare refused: %s", i, c->field,
               errstr);

    /* One byte over: refused by the JSON reader, naming the field... */
    snprintf(want, sizeof(want), "%zu bytes, at most %zu", c->bound + 1,
             c->bound);
    line = line_with(c, c->bound + 1);
    tly_event_t over = {0};
    if (tly_event_from_json_text(line, strlen(line), NOW_MS, &over, errstr,
                                 sizeof(errstr)) == 0)
      fail_msg("case %zu (%s) over its bound accepted", i, c->field);
    char named[64];
    snprintf(named, sizeof(named), "field '%s'", c->field);
    if (!strstr(errstr, named) || !strstr(errstr, want))
      fail_msg("case %zu: '%s' lacks \"%s\" or \"%s\"", i, errstr, named, want);
    assert_null(over.event_id);
    free(line);

    /* ...by the encoder (the producer library)... */
    char **field = filler_field(&event);
    char *longer = filler(c->bound + 1);
    free(*field);
    *field = longer;
    assert_int_not_equal(tly_codec_encode(codec, &event, &encoded, &encoded_len,
                                          errstr, sizeof(errstr)),
                         0);
    if (!strstr(errstr, want))
      fail_msg("case %zu: encode error '%s' lacks '%s'", i, errstr, want);
    tly_event_clear(&event);

    /* ...and, written by any other Kafka client, by the decoders and the
     * processor's gate (a dead letter with this reason). */
    size_t spliced_len = 0;
    unsigned char *spliced =
        splice_longer(bytes, encoded_len, c->bound, &spliced_len);
    expect_refused(codec, spliced, spliced_len, want);
    expect_refused(codec, spliced, spliced_len, named);
    free(spliced);
    free(bytes);
  }
  tly_codec_destroy(codec);
}

/* A JSON line of a usage event with count properties of the given key and
 * value sizes (keys made unique by their first 3 characters). */
static char *properties_line(size_t count, size_t key_len, size_t value_len) {
  size_t size = 2048 + count * (key_len + value_len + 8);
  char *line = malloc(size), *at = line;
  assert_non_null(line);
  at += sprintf(at,
                "{\"event_id\":\"%0*d\",\"subject\":\"user:%0*d\","
                "\"feature\":\"%0*d\",\"unit\":\"%0*d\",\"quantity\":1,"
                "\"ai\":{\"provider\":\"%0*d\",\"model\":\"%0*d\","
                "\"input_tokens\":1,\"output_tokens\":1},\"properties\":{",
                TLY_EVENT_ID_MAX, 1, TLY_SUBJECT_ID_MAX, 2, TLY_EVENT_NAME_MAX,
                3, TLY_EVENT_NAME_MAX, 4, TLY_EVENT_NAME_MAX, 5,
                TLY_EVENT_NAME_MAX, 6);
  for (size_t i = 0; i < count; i++) {
    at += sprintf(at, "%s\"%03zu", i ? "," : "", i);
    memset(at, 'k', key_len - 3);
    at += key_len - 3;
    *at++ = '"';
    *at++ = ':';
    *at++ = '"';
    memset(at, 'v', value_len);
    at += value_len;
    *at++ = '"';
  }
  strcpy(at, "}}");
  return line;
}

/* The properties map holds at most TLY_EVENT_PROPERTIES_MAX entries; the
 * largest valid event (every field and property at its bound) fits the
 * record value bound, so the processor never refuses a valid event for
 * its size. */
static void test_largest_event_and_property_count(void **state) {
  char errstr[512];
  tly_event_t event = {0};
  const void *encoded;
  size_t encoded_len;
  tly_codec_t *codec =
      tly_codec_new(TLY_CODEC_DEFAULT_SCHEMA_ID, errstr, sizeof(errstr));
  (void)state;
  assert_non_null(codec);

  char *line =
      properties_line(TLY_EVENT_PROPERTIES_MAX, TLY_EVENT_PROPERTY_KEY_MAX,
                      TLY_EVENT_PROPERTY_VALUE_MAX);
  if (tly_event_from_json_text(line, strlen(line), NOW_MS, &event, errstr,
                               sizeof(errstr)))
    fail_msg("the largest valid event refused: %s", errstr);
  free(line);
  assert_int_equal(tly_codec_encode(codec, &event, &encoded, &encoded_len,
                                    errstr, sizeof(errstr)),
                   0);
  printf("# the largest valid event: %zu bytes (record bound %d)\n",
         encoded_len, TLY_RECORD_VALUE_MAX);
  assert_true(encoded_len <= TLY_RECORD_VALUE_MAX);
  unsigned char *bytes = malloc(encoded_len);
  assert_non_null(bytes);
  memcpy(bytes, encoded, encoded_len);
  tly_event_t view;
  tly_record_t record = {"user:x",    6,      bytes,
                         encoded_len, NOW_MS, TLY_DEFAULT_MAX_FUTURE_SKEW_MS};
  assert_int_equal(
      tly_record_prepare(codec, &record, &view, errstr, sizeof(errstr)), 0);
  assert_int_equal(view.body.usage.property_count, TLY_EVENT_PROPERTIES_MAX);
  free(bytes);

  /* One entry more: refused by the JSON reader and the encoder. */
  line = properties_line(TLY_EVENT_PROPERTIES_MAX + 1, 8, 8);
  tly_event_t over = {0};
  assert_int_not_equal(tly_event_from_json_text(line, strlen(line), NOW_MS,
                                                &over, errstr, sizeof(errstr)),
                       0);
  assert_non_null(strstr(errstr, "field 'properties': 65 entries, at most 64"));
  free(line);
  tly_usage_recorded_t *usage = &event.body.usage;
  tly_property_t *grown =
      realloc(usage->properties, (usage->property_count + 1) * sizeof(*grown));
  assert_non_null(grown);
  usage->properties = grown;
  grown[usage->property_count].key = strdup("one-more");
  grown[usage->property_count].value = strdup("v");
  usage->property_count++;
  assert_int_not_equal(tly_codec_encode(codec, &event, &encoded, &encoded_len,
                                        errstr, sizeof(errstr)),
                       0);
  assert_non_null(strstr(errstr, "65 entries, at most 64"));
  tly_event_clear(&event);
  tly_codec_destroy(codec);
}

/* A map of 65 entries written by another client: the decoders and the
 * processor's gate refuse it. Built by splicing an entry into the encoding
 * of a 64-entry map (block count 64 -> 65). */
static void test_property_count_decoded(void **state) {
  char errstr[512];
  tly_event_t event = {0};
  const void *encoded;
  size_t encoded_len;
  tly_codec_t *codec =
      tly_codec_new(TLY_CODEC_DEFAULT_SCHEMA_ID, errstr, sizeof(errstr));
  (void)state;
  assert_non_null(codec);
  char *line = properties_line(TLY_EVENT_PROPERTIES_MAX, 8, 8);
  assert_int_equal(tly_event_from_json_text(line, strlen(line), NOW_MS, &event,
                                            errstr, sizeof(errstr)),
                   0);
  free(line);
  assert_int_equal(tly_codec_encode(codec, &event, &encoded, &encoded_len,
                                    errstr, sizeof(errstr)),
                   0);
  /* [count 64][len 8]"000kkkkk": insert an entry "zzz" -> "v" after the
   * count and make it 65. */
  const unsigned char *bytes = encoded;
  unsigned char count64[2], count65[2];
  assert_int_equal(put_long(count64, 64), 2);
  assert_int_equal(put_long(count65, 65), 2);
  size_t at = 0;
  while (at + 5 <= encoded_len &&
         !(memcmp(bytes + at, count64, 2) == 0 && bytes[at + 2] == 16 &&
           bytes[at + 3] >= '0' && bytes[at + 3] <= '9'))
    at++;
  assert_true(at + 5 <= encoded_len);
  static const unsigned char entry[] = {6, 'z', 'z', 'z', 2, 'v'};
  size_t len = encoded_len + sizeof(entry);
  unsigned char *spliced = malloc(len);
  assert_non_null(spliced);
  memcpy(spliced, bytes, at);
  memcpy(spliced + at, count65, 2);
  memcpy(spliced + at + 2, entry, sizeof(entry));
  memcpy(spliced + at + 2 + sizeof(entry), bytes + at + 2,
         encoded_len - at - 2);
  expect_refused(codec, spliced, len,
                 "field 'properties': 65 entries, at most 64");
  free(spliced);
  tly_event_clear(&event);
  tly_codec_destroy(codec);
}

/* The record's own bounds, before any decode. */
static void test_record_bounds(void **state) {
  char errstr[512];
  tly_event_t event;
  tly_codec_t *codec =
      tly_codec_new(TLY_CODEC_DEFAULT_SCHEMA_ID, errstr, sizeof(errstr));
  (void)state;
  assert_non_null(codec);

  tly_record_t record = {
      "user:alice", 10, NULL, 0, 0, TLY_DEFAULT_MAX_FUTURE_SKEW_MS};
  assert_int_not_equal(
      tly_record_prepare(codec, &record, &event, errstr, sizeof(errstr)), 0);
  assert_string_equal(errstr, "empty message (no value)");

  size_t big = TLY_RECORD_VALUE_MAX + 1;
  unsigned char *value = calloc(1, big);
  assert_non_null(value);
  record.value = value;
  record.value_len = big;
  assert_int_not_equal(
      tly_record_prepare(codec, &record, &event, errstr, sizeof(errstr)), 0);
  assert_string_equal(errstr, "record value: 131073 bytes, at most 131072");

  /* A valid value under a key over its bound. */
  tly_event_t valid = {0};
  const char *text = "{\"event_id\":\"e\",\"subject\":\"a\",\"feature\":\"f\","
                     "\"quantity\":1}";
  assert_int_equal(tly_event_from_json_text(text, strlen(text), NOW_MS, &valid,
                                            errstr, sizeof(errstr)),
                   0);
  const void *encoded;
  size_t encoded_len;
  assert_int_equal(tly_codec_encode(codec, &valid, &encoded, &encoded_len,
                                    errstr, sizeof(errstr)),
                   0);
  memcpy(value, encoded, encoded_len);
  tly_event_clear(&valid);
  char *key = filler(TLY_RECORD_KEY_MAX + 1);
  record =
      (tly_record_t){key, TLY_RECORD_KEY_MAX + 1,        value, encoded_len,
                     0,   TLY_DEFAULT_MAX_FUTURE_SKEW_MS};
  assert_int_not_equal(
      tly_record_prepare(codec, &record, &event, errstr, sizeof(errstr)), 0);
  assert_string_equal(errstr, "record key: 1025 bytes, at most 1024");
  record.key_len = TLY_RECORD_KEY_MAX;
  assert_int_equal(
      tly_record_prepare(codec, &record, &event, errstr, sizeof(errstr)), 0);
  assert_string_equal(event.subject_id, "a");
  record.key = NULL; /* no key at all is fine */
  record.key_len = 0;
  assert_int_equal(
      tly_record_prepare(codec, &record, &event, errstr, sizeof(errstr)), 0);
  free(key);
  free(value);
  tly_codec_destroy(codec);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_every_field_bound),
      cmocka_unit_test(test_largest_event_and_property_count),
      cmocka_unit_test(test_property_count_decoded),
      cmocka_unit_test(test_record_bounds),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
