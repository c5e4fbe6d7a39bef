/*
 * fuzz_codec.c - libFuzzer target for tly_codec_decode(), the one parser
 * that reads bytes from the outside world (any producer can write to the
 * input topic).
 *
 * Build and run: scripts/fuzz.sh [seconds] (part of scripts/test.sh).
 *
 * Each input is decoded as is, and also behind a valid frame header so that
 * the fuzzer does not spend its time rediscovering the magic byte and the
 * schema id. Whatever decodes must satisfy tly_event_validate() and must
 * re-encode and decode to the same event (every body kind, compared field
 * by field through tly_event_to_json()): a decode that accepts something
 * the encoder would refuse, or that loses data, is a bug too. The direct
 * decoder the processor uses (tly_codec_decode_view) must give the same
 * verdict, message and event as tly_codec_decode on every input.
 *
 * One codec serves every input, as in the processor, so state carried from
 * one decode into the next is fuzzed too. That needs one LeakSanitizer
 * suppression: avro-c's generic values lay out record fields and union
 * branches at 4-byte-aligned offsets (measured: a record's string field at
 * an address = 4 mod 8), and LSan only finds pointers stored at 8-byte
 * alignment, so buffers the reused value legitimately holds look leaked.
 * The suppression covers allocations made inside libavro only; everything
 * the codec itself allocates (event strings, buffers) stays leak-checked,
 * and the unit tests, which destroy their codecs, check avro-c's side.
 */
#include "tly_codec.h"
#include "tly_event.h"
#include "tly_event_json.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static tly_codec_t *codec;

const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void) { return "leak:libavro.so\n"; }

static void destroy_codec(void) {
  tly_codec_destroy(codec);
  codec = NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
  char errstr[256];
  (void)argc;
  (void)argv;
  codec = tly_codec_new(TLY_CODEC_DEFAULT_SCHEMA_ID, errstr, sizeof(errstr));
  if (!codec) {
    fprintf(stderr, "tly_codec_new: %s\n", errstr);
    abort();
  }
  atexit(destroy_codec);
  return 0;
}

static void check_same(const tly_event_t *a, const tly_event_t *b) {
  const tly_usage_recorded_t *x = &a->body.usage, *y = &b->body.usage;
  int same = strcmp(a->event_id, b->event_id) == 0 &&
             a->occurred_at_ms == b->occurred_at_ms &&
             a->subject_kind == b->subject_kind &&
             strcmp(a->subject_id, b->subject_id) == 0 &&
             a->body_kind == b->body_kind;
  if (same && a->body_kind == TLY_BODY_USAGE_RECORDED)
    same = strcmp(x->feature, y->feature) == 0 && x->quantity == y->quantity &&
           strcmp(x->unit, y->unit) == 0 && x->has_ai == y->has_ai &&
           x->property_count == y->property_count;
  if (same && a->body_kind == TLY_BODY_USAGE_RECORDED && x->has_ai)
    same = strcmp(x->ai.provider, y->ai.provider) == 0 &&
           strcmp(x->ai.model, y->ai.model) == 0 &&
           x->ai.input_tokens == y->ai.input_tokens &&
           x->ai.output_tokens == y->ai.output_tokens;
  /* Every body kind, every field: compared through the JSON writer. */
  if (same) {
    json_t *left = NULL, *right = NULL;
    if (tly_event_to_json(a, &left) || tly_event_to_json(b, &right)) {
      fprintf(stderr, "a decoded event cannot be written as JSON\n");
      abort();
    }
    same = json_equal(left, right);
    json_decref(left);
    json_decref(right);
  }
  if (!same) {
    fprintf(stderr, "re-encoded event differs from the decoded one\n");
    abort();
  }
}

/* The processor's decoder (tly_codec_decode_view) must agree with
 * tly_codec_decode on every input: same verdict, same message, same
 * event. */
static void check_view(const uint8_t *data, size_t size, int rc,
                       const char *errstr, const tly_event_t *event) {
  tly_event_t view;
  char view_error[512] = "";
  int view_rc = tly_codec_decode_view(codec, data, size, &view, view_error,
                                      sizeof(view_error));
  if (view_rc != rc || (rc && strcmp(errstr, view_error) != 0)) {
    fprintf(stderr, "decoders disagree: avro-c %d '%s', direct %d '%s'\n", rc,
            rc ? errstr : "", view_rc, view_error);
    abort();
  }
  if (!rc)
    check_same(event, &view);
}

static void decode_one(const uint8_t *data, size_t size) {
  tly_event_t event = {0}, again = {0};
  char errstr[512], reason[512];
  const void *encoded;
  size_t encoded_len;

  if (tly_codec_decode(codec, data, size, &event, errstr, sizeof(errstr))) {
    if (!errstr[0]) {
      fprintf(stderr, "decode failed without a message\n");
      abort();
    }
    check_view(data, size, -1, errstr, NULL);
    return;
  }
  check_view(data, size, 0, NULL, &event);
  if (tly_event_validate(&event, reason, sizeof(reason))) {
    fprintf(stderr, "decoded an invalid event: %s\n", reason);
    abort();
  }
  if (tly_codec_encode(codec, &event, &encoded, &encoded_len, errstr,
                       sizeof(errstr))) {
    fprintf(stderr, "decoded event does not re-encode: %s\n", errstr);
    abort();
  }
  /* The encoder's buffer is reused by the next call; decode from a copy. */
  {
    uint8_t *copy = malloc(encoded_len);
    if (!copy)
      abort();
    memcpy(copy, encoded, encoded_len);
    if (tly_codec_decode(codec, copy, encoded_len, &again, errstr,
                         sizeof(errstr))) {
      fprintf(stderr, "re-encoded event does not decode: %s\n", errstr);
      abort();
    }
    free(copy);
  }
  check_same(&event, &again);
  tly_event_clear(&again);
  tly_event_clear(&event);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  uint8_t *framed;

  decode_one(data, size);

  /* The same bytes behind a valid header, in an exact-size buffer so that
   * ASan sees any read past the end. */
  framed = malloc(size + TLY_CODEC_HEADER_SIZE);
  if (!framed)
    return 0;
  framed[0] = 0;
  framed[1] = framed[2] = framed[3] = 0;
  framed[4] = TLY_CODEC_DEFAULT_SCHEMA_ID;
  if (size)
    memcpy(framed + TLY_CODEC_HEADER_SIZE, data, size);
  decode_one(framed, size + TLY_CODEC_HEADER_SIZE);
  free(framed);
  return 0;
}
