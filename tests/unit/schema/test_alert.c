/*
 * test_alert.c - the alert codec (schema/tly_alert.c).
 *
 * What it proves: every alert type survives encode/decode unchanged (and
 * optional strings come back as "" rather than NULL); the framing is
 * magic 0 + schema id 2 big-endian and the Avro bytes are exactly what the
 * spec writes; invalid alerts are refused on encode and on decode; every
 * truncation, trailing bytes, out-of-range enums and booleans, and
 * thousands of seeded random corruptions are refused without a crash or
 * an allocation the input cannot back (run TALLY_SANITIZE=ON for ASan).
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

#include "tly_alert.h"

#define API_KEY_HASH                                                           \
  "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

static char *dup_or_null(const char *text) {
  char *copy;
  if (!text)
    return NULL;
  copy = strdup(text);
  assert_non_null(copy);
  return copy;
}

/* A valid alert of type; variant 1 takes extremes and NULL optionals. */
static void build_alert(tly_alert_type_t type, int variant,
                        tly_alert_t *alert) {
  int extreme = variant == 1;
  memset(alert, 0, sizeof(*alert));
  alert->alert_id = dup_or_null(extreme ? "alert-✓-😀" : "a-1");
  alert->type = type;
  alert->subject_kind = extreme ? TLY_SUBJECT_API_KEY : TLY_SUBJECT_USER;
  alert->subject_id = dup_or_null(extreme ? API_KEY_HASH : "alice");
  alert->occurred_at_ms = extreme ? INT64_MIN : 1732300000000;
  alert->cycle_start_ms = extreme ? 0 : 1730000000000;
  alert->cycle_end_ms = extreme ? INT64_MAX : 1732600000000;
  alert->plan = dup_or_null(extreme ? NULL : "pro");
  alert->feature = dup_or_null(extreme                           ? NULL
                               : type == TLY_ALERT_LIMIT_WARNING ? "credits"
                                                                 : "api_calls");
  alert->threshold_percent = extreme ? INT32_MAX : 75;
  alert->used = extreme ? INT64_MAX : 750;
  alert->limit = extreme ? -1 : 1000;
  alert->hard = extreme ? 7 : 0; /* any non-zero reads back as 1 */
  alert->credits_used = extreme ? INT64_MAX : 12;
  alert->cost_micros = extreme ? 0 : 3400000;
  alert->detail = dup_or_null(extreme ? NULL : "75% of api_calls used");
}

static void assert_text(const char *got, const char *want) {
  assert_non_null(got);
  assert_string_equal(got, want ? want : "");
}

static void assert_alert_equal(const tly_alert_t *a, const tly_alert_t *b) {
  assert_string_equal(a->alert_id, b->alert_id);
  assert_int_equal(a->type, b->type);
  assert_int_equal(a->subject_kind, b->subject_kind);
  assert_string_equal(a->subject_id, b->subject_id);
  assert_true(a->occurred_at_ms == b->occurred_at_ms);
  assert_true(a->cycle_start_ms == b->cycle_start_ms);
  assert_true(a->cycle_end_ms == b->cycle_end_ms);
  assert_text(a->plan, b->plan);
  assert_text(a->feature, b->feature);
  assert_int_equal(a->threshold_percent, b->threshold_percent);
  assert_true(a->used == b->used);
  assert_true(a->limit == b->limit);
  assert_int_equal(a->hard, b->hard ? 1 : 0);
  assert_true(a->credits_used == b->credits_used);
  assert_true(a->cost_micros == b->cost_micros);
  assert_text(a->detail, b->detail);
}

static tly_alert_codec_t *new_codec(void) {
  char errstr[256] = "";
  tly_alert_codec_t *codec = tly_alert_codec_new(errstr, sizeof(errstr));
  if (!codec)
    fail_msg("tly_alert_codec_new: %s", errstr);
  return codec;
}

static unsigned char *encode_copy(tly_alert_codec_t *codec,
                                  const tly_alert_t *alert, size_t *len) {
  const void *out = NULL;
  char errstr[256] = "";
  unsigned char *copy;
  if (tly_alert_encode(codec, alert, &out, len, errstr, sizeof(errstr)))
    fail_msg("encode: %s", errstr);
  copy = malloc(*len);
  assert_non_null(copy);
  memcpy(copy, out, *len);
  return copy;
}

static void test_type_names(void **state) {
  static const char *const names[TLY_ALERT__COUNT] = {
      "limit_warning",  "limit_exceeded",        "billing_cycle_end",
      "payment_failed", "subscription_canceled", "stripe_report_failed"};
  (void)state;
  for (int i = 0; i < TLY_ALERT__COUNT; i++)
    assert_string_equal(tly_alert_type_name((tly_alert_type_t)i), names[i]);
  assert_null(tly_alert_type_name(TLY_ALERT__COUNT));
  assert_null(tly_alert_type_name((tly_alert_type_t)-1));
}

static void test_round_trip_every_type(void **state) {
  tly_alert_codec_t *codec = new_codec();
  (void)state;
  for (int pass = 0; pass < 2; pass++) {
    for (int type = 0; type < TLY_ALERT__COUNT; type++) {
      for (int variant = 0; variant < 2; variant++) {
        tly_alert_t alert, decoded = {0};
        char errstr[256] = "";
        size_t len;
        unsigned char *bytes;

        build_alert((tly_alert_type_t)type, variant, &alert);
        bytes = encode_copy(codec, &alert, &len);
        if (tly_alert_decode(codec, bytes, len, &decoded, errstr,
                             sizeof(errstr)))
          fail_msg("decode type %d variant %d: %s", type, variant, errstr);
        assert_alert_equal(&decoded, &alert);
        /* decoding into a filled alert replaces it (ASan: no leak) */
        assert_int_equal(tly_alert_decode(codec, bytes, len, &decoded, errstr,
                                          sizeof(errstr)),
                         0);
        tly_alert_clear(&decoded);
        tly_alert_clear(&alert);
        free(bytes);
      }
    }
  }
  tly_alert_codec_destroy(codec);
}

/* The whole message, byte for byte. */
static void test_framing_and_exact_bytes(void **state) {
  static const unsigned char expected[] = {
      0x00, 0x00, 0x00, 0x00, 0x02, /* magic, schema id 2 big-endian */
      0x02, 'a',                    /* alert_id "a" */
      0x02,                         /* type limit_exceeded (1) */
      0x00,                         /* subject.kind user */
      0x02, 'u',                    /* subject.id "u" */
      0x02,                         /* occurred_at 1 */
      0x04,                         /* cycle_start 2 */
      0x06,                         /* cycle_end 3 */
      0x02, 'p',                    /* plan "p" */
      0x00,                         /* feature "" */
      0xC8, 0x01,                   /* threshold_percent 100 */
      0x14,                         /* used 10 */
      0x01,                         /* limit -1 */
      0x01,                         /* hard true */
      0x08,                         /* credits_used 4 */
      0x0A,                         /* cost_micros 5 */
      0x00,                         /* detail "" */
  };
  tly_alert_codec_t *codec = new_codec();
  tly_alert_t alert = {0};
  size_t len;
  unsigned char *bytes;
  (void)state;

  alert.alert_id = dup_or_null("a");
  alert.type = TLY_ALERT_LIMIT_EXCEEDED;
  alert.subject_kind = TLY_SUBJECT_USER;
  alert.subject_id = dup_or_null("u");
  alert.occurred_at_ms = 1;
  alert.cycle_start_ms = 2;
  alert.cycle_end_ms = 3;
  alert.plan = dup_or_null("p");
  alert.threshold_percent = 100;
  alert.used = 10;
  alert.limit = -1;
  alert.hard = 1;
  alert.credits_used = 4;
  alert.cost_micros = 5;
  bytes = encode_copy(codec, &alert, &len);
  assert_int_equal(len, sizeof(expected));
  assert_memory_equal(bytes, expected, sizeof(expected));
  assert_int_equal(TLY_ALERT_SCHEMA_ID, 2);
  free(bytes);
  tly_alert_clear(&alert);
  tly_alert_clear(NULL);
  tly_alert_codec_destroy(codec);
}

static void expect_decode_error(tly_alert_codec_t *codec, const void *bytes,
                                size_t len, const char *want) {
  tly_alert_t alert = {0};
  char errstr[512] = "";
  if (tly_alert_decode(codec, bytes, len, &alert, errstr, sizeof(errstr)) == 0)
    fail_msg("decode unexpectedly succeeded (wanted '%s')", want);
  if (!strstr(errstr, want))
    fail_msg("error '%s' does not contain '%s'", errstr, want);
  assert_null(alert.alert_id);
  assert_null(alert.subject_id);
  assert_null(alert.plan);
  tly_alert_clear(&alert);
}

static void test_reject_framing(void **state) {
  tly_alert_codec_t *codec = new_codec();
  tly_alert_t alert;
  size_t len;
  unsigned char *bytes;
  (void)state;

  build_alert(TLY_ALERT_LIMIT_WARNING, 0, &alert);
  bytes = encode_copy(codec, &alert, &len);
  expect_decode_error(codec, NULL, 0, "empty message");
  expect_decode_error(codec, "{}", 2, "bad magic byte 0x7b");
  expect_decode_error(codec, bytes, 3, "truncated header");
  /* Any id decodes: the codec reads only tally's own alerts (its
   * history), framed with 2 or a schema registry's id for this schema. */
  bytes[4] = 7;
  tly_alert_t decoded = {0};
  char errstr[256];
  assert_int_equal(
      tly_alert_decode(codec, bytes, len, &decoded, errstr, sizeof(errstr)), 0);
  assert_string_equal(decoded.alert_id, alert.alert_id);
  tly_alert_clear(&decoded);
  /* Encode frames with the id set (a registry's). */
  tly_alert_codec_set_schema_id(codec, 0x01020304);
  const void *framed = NULL;
  size_t framed_len = 0;
  assert_int_equal(tly_alert_encode(codec, &alert, &framed, &framed_len, errstr,
                                    sizeof(errstr)),
                   0);
  assert_memory_equal(framed, "\0\x01\x02\x03\x04", 5);
  bytes[4] = 2;
  bytes[0] = 1;
  expect_decode_error(codec, bytes, len, "bad magic byte 0x01");
  free(bytes);
  tly_alert_clear(&alert);
  tly_alert_codec_destroy(codec);
}

static void test_reject_every_truncation(void **state) {
  tly_alert_codec_t *codec = new_codec();
  (void)state;
  for (int type = 0; type < TLY_ALERT__COUNT; type++) {
    tly_alert_t alert;
    size_t len;
    unsigned char *bytes;

    build_alert((tly_alert_type_t)type, type % 2, &alert);
    bytes = encode_copy(codec, &alert, &len);
    for (size_t cut = 0; cut < len; cut++) {
      unsigned char *prefix = malloc(cut ? cut : 1);
      tly_alert_t decoded = {0};
      char errstr[256] = "";
      assert_non_null(prefix);
      memcpy(prefix, bytes, cut);
      if (tly_alert_decode(codec, prefix, cut, &decoded, errstr,
                           sizeof(errstr)) == 0)
        fail_msg("decode of %zu of %zu bytes succeeded", cut, len);
      assert_true(strlen(errstr) > 0);
      if (cut >= 5)
        assert_non_null(strstr(errstr, "truncated Avro record"));
      assert_null(decoded.alert_id);
      free(prefix);
    }
    {
      unsigned char *longer = malloc(len + 1);
      assert_non_null(longer);
      memcpy(longer, bytes, len);
      longer[len] = 0;
      expect_decode_error(codec, longer, len + 1,
                          "trailing bytes after the Avro record");
      free(longer);
    }
    free(bytes);
    tly_alert_clear(&alert);
  }
  tly_alert_codec_destroy(codec);
}

/* Hand-made corruption at known offsets of the exact message above. */
static void test_reject_corrupt_fields(void **state) {
  unsigned char m[] = {0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 'a', 0x02, 0x00,
                       0x02, 'u',  0x02, 0x04, 0x06, 0x02, 'p', 0x00, 0xC8,
                       0x01, 0x14, 0x01, 0x01, 0x08, 0x0A, 0x00};
  unsigned char work[sizeof(m)];
  tly_alert_codec_t *codec = new_codec();
  tly_alert_t alert = {0};
  char errstr[256];
  (void)state;

  assert_int_equal(
      tly_alert_decode(codec, m, sizeof(m), &alert, errstr, sizeof(errstr)), 0);
  tly_alert_clear(&alert);

#define MUTATE(offset, byte, want)                                             \
  do {                                                                         \
    memcpy(work, m, sizeof(m));                                                \
    work[offset] = byte;                                                       \
    expect_decode_error(codec, work, sizeof(work), want);                      \
  } while (0)

  MUTATE(7, 0x0C, "field 'type': enum index 6 out of range");
  MUTATE(7, 0x01, "field 'type': enum index -1");
  MUTATE(8, 0x08, "field 'subject.kind': enum index 4 out of range");
  MUTATE(8, 0x06, "system subject id must be 'tick'");
  MUTATE(21, 0x02, "field 'hard': boolean byte 0x02");
  MUTATE(9, 0x7F, "field 'subject.id': negative string length");
  MUTATE(5, 0x7E, "field 'alert_id': string length 63 but only");
  MUTATE(6, 0xFF, "field 'alert_id': string is not valid UTF-8");
  MUTATE(19, 0x13, "field 'used': must be >= 0");
  MUTATE(20, 0x03, "field 'limit': must be >= -1");
  MUTATE(22, 0x07, "field 'credits_used'");
  MUTATE(23, 0x09, "field 'cost_micros'");
  /* threshold_percent -1, as an (allowed) overlong two-byte varint */
  memcpy(work, m, sizeof(m));
  work[17] = 0x81;
  work[18] = 0x00;
  expect_decode_error(codec, work, sizeof(work), "field 'threshold_percent'");
  /* api_key subjects: the hash, never a raw key */
  MUTATE(8, 0x02, "raw keys are never accepted");
#undef MUTATE

  /* an empty alert_id: the 'a' cut out, its length 0 */
  {
    unsigned char empty_id[sizeof(m) - 1];
    memcpy(empty_id, m, 5);
    empty_id[5] = 0x00;
    memcpy(empty_id + 6, m + 7, sizeof(m) - 7);
    expect_decode_error(codec, empty_id, sizeof(empty_id),
                        "field 'alert_id': must be a non-empty");
  }

  /* an int beyond 32 bits */
  {
    unsigned char big[sizeof(m) + 4];
    size_t at = 17;
    static const unsigned char wide[] = {0x80, 0x80, 0x80, 0x80, 0x10};
    memcpy(big, m, at);
    memcpy(big + at, wide, sizeof(wide));
    memcpy(big + at + sizeof(wide), m + at + 2, sizeof(m) - at - 2);
    expect_decode_error(codec, big, sizeof(m) + 3,
                        "field 'threshold_percent': 2147483648 out of range");
  }
  tly_alert_codec_destroy(codec);
}

static void expect_encode_error(tly_alert_codec_t *codec,
                                const tly_alert_t *alert, const char *want) {
  const void *out = NULL;
  size_t len = 0;
  char errstr[512] = "";
  if (tly_alert_encode(codec, alert, &out, &len, errstr, sizeof(errstr)) == 0)
    fail_msg("encode unexpectedly succeeded (wanted '%s')", want);
  if (!strstr(errstr, want))
    fail_msg("error '%s' does not contain '%s'", errstr, want);
}

static void test_encode_rejects(void **state) {
  tly_alert_codec_t *codec = new_codec();
  tly_alert_t alert;
  const void *out;
  size_t len;
  char errstr[256];
  (void)state;

#define WITH(change, want)                                                     \
  do {                                                                         \
    build_alert(TLY_ALERT_LIMIT_WARNING, 0, &alert);                           \
    change;                                                                    \
    expect_encode_error(codec, &alert, want);                                  \
    tly_alert_clear(&alert);                                                   \
  } while (0)

  WITH(alert.alert_id[0] = '\0', "field 'alert_id'");
  WITH((free(alert.alert_id), alert.alert_id = NULL), "field 'alert_id'");
  WITH(alert.type = TLY_ALERT__COUNT, "alert type 6 is out of range");
  WITH(alert.subject_kind = (tly_subject_kind_t)9, "subject kind 9");
  WITH(alert.subject_id[0] = '\0', "subject id must not be empty");
  WITH(alert.subject_kind = TLY_SUBJECT_API_KEY, "raw keys are never");
  WITH((alert.subject_kind = TLY_SUBJECT_SYSTEM,
        strcpy(alert.subject_id, "tick")),
       "never about the system subject");
  WITH(alert.threshold_percent = -1, "field 'threshold_percent'");
  WITH(alert.used = -1, "field 'used'");
  WITH(alert.limit = -2, "field 'limit': must be >= -1");
  WITH(alert.credits_used = INT64_MIN, "field 'credits_used'");
  WITH(alert.cost_micros = -1, "field 'cost_micros'");
  WITH(alert.plan[0] = '\xff', "field 'plan': string is not valid UTF-8");
  WITH(alert.detail[0] = '\xc0', "field 'detail'");
#undef WITH
  assert_int_not_equal(
      tly_alert_encode(codec, NULL, &out, &len, errstr, sizeof(errstr)), 0);
  assert_non_null(strstr(errstr, "missing argument"));
  /* still works after the refusals */
  build_alert(TLY_ALERT_PAYMENT_FAILED, 0, &alert);
  assert_int_equal(
      tly_alert_encode(codec, &alert, &out, &len, errstr, sizeof(errstr)), 0);
  tly_alert_clear(&alert);
  tly_alert_codec_destroy(codec);
}

/* Deterministic so that a failure reproduces: a 64-bit LCG (Knuth). */
static uint64_t rng_state;
static uint32_t rng_next(void) {
  rng_state = rng_state * 6364136223846793005u + 1442695040888963407u;
  return (uint32_t)(rng_state >> 33);
}

static void decode_must_not_crash(tly_alert_codec_t *codec,
                                  const unsigned char *src, size_t len,
                                  size_t *accepted) {
  unsigned char *copy = malloc(len ? len : 1);
  tly_alert_t alert = {0};
  char errstr[256] = "";
  assert_non_null(copy);
  memcpy(copy, src, len);
  if (tly_alert_decode(codec, copy, len, &alert, errstr, sizeof(errstr)) == 0) {
    /* whatever decodes re-encodes (the rules hold) and reads back the
     * same; not byte for byte: Avro readers accept overlong varints */
    const void *out;
    size_t out_len;
    unsigned char *again;
    tly_alert_t reread = {0};
    assert_non_null(alert.plan);
    assert_non_null(alert.detail);
    assert_int_equal(
        tly_alert_encode(codec, &alert, &out, &out_len, errstr, sizeof(errstr)),
        0);
    again = malloc(out_len);
    assert_non_null(again);
    memcpy(again, out, out_len);
    assert_int_equal(tly_alert_decode(codec, again, out_len, &reread, errstr,
                                      sizeof(errstr)),
                     0);
    assert_alert_equal(&reread, &alert);
    tly_alert_clear(&reread);
    free(again);
    (*accepted)++;
  } else {
    assert_true(strlen(errstr) > 0);
  }
  tly_alert_clear(&alert);
  free(copy);
}

static void test_random_corruption(void **state) {
  tly_alert_codec_t *codec = new_codec();
  size_t accepted = 0, rounds = 0;
  unsigned char work[512];
  (void)state;

  rng_state = 20261123;
  for (int type = 0; type < TLY_ALERT__COUNT; type++) {
    tly_alert_t alert;
    size_t len;
    unsigned char *valid;

    build_alert((tly_alert_type_t)type, type % 2, &alert);
    valid = encode_copy(codec, &alert, &len);
    assert_true(len <= sizeof(work));
    for (int round = 0; round < 2000; round++, rounds++) {
      size_t work_len = len;
      int flips = 1 + (int)(rng_next() % 4);
      memcpy(work, valid, len);
      for (int i = 0; i < flips; i++) {
        size_t at = 5 + rng_next() % (len - 5);
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
    /* pure noise behind a valid header */
    for (int round = 0; round < 400; round++, rounds++) {
      size_t work_len = 5 + rng_next() % 96;
      memcpy(work, valid, 5);
      for (size_t i = 5; i < work_len; i++)
        work[i] = (unsigned char)rng_next();
      decode_must_not_crash(codec, work, work_len, &accepted);
    }
    /* the codec is still sound */
    {
      tly_alert_t decoded = {0};
      char errstr[256];
      assert_int_equal(
          tly_alert_decode(codec, valid, len, &decoded, errstr, sizeof(errstr)),
          0);
      assert_alert_equal(&decoded, &alert);
      tly_alert_clear(&decoded);
    }
    tly_alert_clear(&alert);
    free(valid);
  }
  print_message("random corruption: %zu of %zu alerts still decoded\n",
                accepted, rounds);
  tly_alert_codec_destroy(codec);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_type_names),
      cmocka_unit_test(test_round_trip_every_type),
      cmocka_unit_test(test_framing_and_exact_bytes),
      cmocka_unit_test(test_reject_framing),
      cmocka_unit_test(test_reject_every_truncation),
      cmocka_unit_test(test_reject_corrupt_fields),
      cmocka_unit_test(test_encode_rejects),
      cmocka_unit_test(test_random_corruption),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
