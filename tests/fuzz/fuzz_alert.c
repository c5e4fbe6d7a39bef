/*
 * fuzz_alert.c - libFuzzer target for tly_alert_decode(). Alerts are read
 * back from the outbox, from the alerts topic during recovery, and by any
 * analytics consumer, so their decoder meets bytes this process did not
 * write, like the event decoder.
 *
 * Build and run: scripts/fuzz.sh [seconds].
 *
 * Each input is decoded as is and behind a valid frame header (magic 0,
 * schema id 2). Whatever decodes must re-encode, and the re-encoded bytes
 * must decode to the same alert. One codec serves every input, as in the
 * emitter; the LeakSanitizer suppression is fuzz_codec.c's, for the same
 * reason (avro-c's reused generic value at 4-byte-aligned offsets).
 */
#include "tly_alert.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static tly_alert_codec_t *codec;

const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void) { return "leak:libavro.so\n"; }

static void destroy_codec(void) {
  tly_alert_codec_destroy(codec);
  codec = NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
  char errstr[256];
  (void)argc;
  (void)argv;
  codec = tly_alert_codec_new(errstr, sizeof(errstr));
  if (!codec) {
    fprintf(stderr, "tly_alert_codec_new: %s\n", errstr);
    abort();
  }
  atexit(destroy_codec);
  return 0;
}

static int same_alert(const tly_alert_t *a, const tly_alert_t *b) {
  return strcmp(a->alert_id, b->alert_id) == 0 && a->type == b->type &&
         a->subject_kind == b->subject_kind &&
         strcmp(a->subject_id, b->subject_id) == 0 &&
         a->occurred_at_ms == b->occurred_at_ms &&
         a->cycle_start_ms == b->cycle_start_ms &&
         a->cycle_end_ms == b->cycle_end_ms && strcmp(a->plan, b->plan) == 0 &&
         strcmp(a->feature, b->feature) == 0 &&
         a->threshold_percent == b->threshold_percent && a->used == b->used &&
         a->limit == b->limit && a->hard == b->hard &&
         a->credits_used == b->credits_used &&
         a->cost_micros == b->cost_micros && strcmp(a->detail, b->detail) == 0;
}

static void decode_one(const uint8_t *data, size_t size) {
  tly_alert_t alert = {0}, again = {0};
  char errstr[512];
  const void *encoded;
  size_t encoded_len;
  uint8_t *copy;

  if (tly_alert_decode(codec, data, size, &alert, errstr, sizeof(errstr))) {
    if (!errstr[0]) {
      fprintf(stderr, "decode failed without a message\n");
      abort();
    }
    return;
  }
  if (!alert.plan || !alert.feature || !alert.detail) {
    fprintf(stderr, "decoded an alert with a NULL string\n");
    abort();
  }
  if (tly_alert_encode(codec, &alert, &encoded, &encoded_len, errstr,
                       sizeof(errstr))) {
    fprintf(stderr, "decoded alert does not re-encode: %s\n", errstr);
    abort();
  }
  /* The encoder's buffer is reused by the next call; decode from a copy. */
  copy = malloc(encoded_len);
  if (!copy)
    abort();
  memcpy(copy, encoded, encoded_len);
  if (tly_alert_decode(codec, copy, encoded_len, &again, errstr,
                       sizeof(errstr))) {
    fprintf(stderr, "re-encoded alert does not decode: %s\n", errstr);
    abort();
  }
  free(copy);
  if (!same_alert(&alert, &again)) {
    fprintf(stderr, "re-encoded alert differs from the decoded one\n");
    abort();
  }
  tly_alert_clear(&again);
  tly_alert_clear(&alert);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  uint8_t *framed;

  decode_one(data, size);

  /* The same bytes behind a valid header, in an exact-size buffer so that
   * ASan sees any read past the end. */
  framed = malloc(size + 5);
  if (!framed)
    return 0;
  framed[0] = 0;
  framed[1] = framed[2] = framed[3] = 0;
  framed[4] = TLY_ALERT_SCHEMA_ID;
  if (size)
    memcpy(framed + 5, data, size);
  decode_one(framed, size + 5);
  free(framed);
  return 0;
}
