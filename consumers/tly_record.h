/*
 * tly_record.h - an input record made ready for the fold: the one gate
 * between a record of the usage topic and tly_billing_fold().
 *
 * It owns the record's own bounds (a value is required; key and value
 * sizes) and hands the value to the decoder the processor uses
 * (tly_codec_decode_view), whose validation (tly_event_validate) bounds
 * every field of the event (tly_event.h), then bounds the event's times
 * against the record's Kafka timestamp (tly_event_time.h: in the log, so a
 * replay decides the same). A record refused here goes to
 * the dead-letter topic with the message as its reason: nothing oversized
 * ever reaches the fold, the dedupe index or a state key.
 *
 * The processor (tly_processor.c) and the fuzz target
 * (tests/fuzz/fuzz_record.c) call this same function, so what the fuzzer
 * finds about the records that pass it holds for the processor. It never
 * does I/O and never reads the clock.
 */
#ifndef TLY_RECORD_H
#define TLY_RECORD_H

#include "tly_codec.h"
#include "tly_event.h"

#include <stddef.h>
#include <stdint.h>

/* A record's key: tally's producers write the subject key "kind:id" (at
 * most 266 bytes); any Kafka writer may write something else, within this. */
#define TLY_RECORD_KEY_MAX 1024
/* A record's value: the largest valid event (every field at its bound, 64
 * properties) encodes to about 75 KiB, so a bigger value is refused before
 * it is decoded. */
#define TLY_RECORD_VALUE_MAX (128 * 1024)

typedef struct {
  const void *key; /* NULL: no key */
  size_t key_len;
  const void *value; /* NULL: no value (a tombstone) */
  size_t value_len;
  int64_t timestamp_ms;       /* the record's Kafka timestamp; 0: none */
  int64_t max_future_skew_ms; /* events.max_future_skew_ms */
} tly_record_t;

/*
 * Decodes record into *event, as tly_codec_decode_view does (the event's
 * strings point into the codec, valid until its next decode; do not
 * tly_event_clear() it). 0, or -1 with errstr saying why the record cannot
 * be folded (e.g. "record value: 200000 bytes, at most 131072", "invalid
 * event: field 'event_id': 70000 bytes, at most 256"); *event is zeroed
 * then.
 */
int tly_record_prepare(tly_codec_t *codec, const tly_record_t *record,
                       tly_event_t *event, char *errstr, size_t errstr_size);

#endif
