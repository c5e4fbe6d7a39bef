/*
 * tly_record.c - an input record made ready for the fold (tly_record.h).
 *
 * The value's bound comes first, so a huge record costs a length compare
 * rather than a decode; the decoder then checks everything else, including
 * the size of every field, in the rule book the JSON reader shares; the
 * key's bound last, so that a record keyed by its own oversized subject
 * names the subject.
 */
#include "tly_record.h"

#include "tly_event_time.h"

#include <stdio.h>
#include <string.h>

int tly_record_prepare(tly_codec_t *codec, const tly_record_t *record,
                       tly_event_t *event, char *errstr, size_t errstr_size) {
  memset(event, 0, sizeof(*event));
  if (!record->value) {
    snprintf(errstr, errstr_size, "empty message (no value)");
    return -1;
  }
  if (record->value_len > TLY_RECORD_VALUE_MAX) {
    snprintf(errstr, errstr_size, "record value: %zu bytes, at most %d",
             record->value_len, TLY_RECORD_VALUE_MAX);
    return -1;
  }
  if (tly_codec_decode_view(codec, record->value, record->value_len, event,
                            errstr, errstr_size))
    return -1;
  /* After the decode, so that a record keyed by its oversized subject is
   * refused for the subject, the field to fix. */
  if (record->key && record->key_len > TLY_RECORD_KEY_MAX) {
    memset(event, 0, sizeof(*event));
    snprintf(errstr, errstr_size, "record key: %zu bytes, at most %d",
             record->key_len, TLY_RECORD_KEY_MAX);
    return -1;
  }
  /* Event time against the record's Kafka timestamp, before anything
   * moves: a watermark, a cycle, a quota. */
  if (tly_event_time_check(
          event, record->timestamp_ms, record->max_future_skew_ms,
          "the record's Kafka timestamp", errstr, errstr_size)) {
    memset(event, 0, sizeof(*event));
    return -1;
  }
  return 0;
}
