/*
 * fuzz_subject_record.c - libFuzzer target for the subject record decoder
 * (tly_subject_record_decode, versions 3, 4 and 5: rows, buckets, holds,
 * latest's instant and unique_count's distinct values). A record arrives
 * from RocksDB and from the state changelog, which any Kafka writer the
 * cluster admits can write to.
 *
 * Build and run: scripts/fuzz.sh [seconds] (part of scripts/test.sh).
 *
 * Invariants: no crash, leak, undefined behaviour or hang on any bytes; a
 * record that decodes re-encodes to bytes that decode again to the same
 * encoding (the encoder writes what the decoder reads); a decoded set
 * holds at most TLY_DISTINCT_MAX values, each within its bound, sorted.
 */
#include "tly_billing.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static size_t encode(const tly_subject_record_t *record, unsigned char **out) {
  const tly_subject_row_t **rows = calloc(record->row_count + 1, sizeof(*rows));
  const tly_subject_bucket_t **buckets =
      calloc(record->bucket_count + 1, sizeof(*buckets));
  if (!rows || !buckets)
    abort();
  for (size_t i = 0; i < record->row_count; i++)
    rows[i] = &record->rows[i];
  for (size_t i = 0; i < record->bucket_count; i++)
    buckets[i] = &record->buckets[i];
  size_t len = tly_subject_record_encode_meters(
      &record->account, rows, record->row_count, buckets, record->bucket_count,
      record->holds, record->hold_count, &record->distinct, &record->read_marks,
      NULL, 0);
  *out = malloc(len ? len : 1);
  if (!*out)
    abort();
  tly_subject_record_encode_meters(&record->account, rows, record->row_count,
                                   buckets, record->bucket_count, record->holds,
                                   record->hold_count, &record->distinct,
                                   &record->read_marks, *out, len);
  free(rows);
  free(buckets);
  return len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  tly_subject_record_t record, again;
  if (tly_subject_record_decode(data, size, &record))
    return 0;
  for (size_t i = 0; i < record.distinct.count; i++) {
    const tly_distinct_set_t *set = &record.distinct.items[i];
    if (!set->count || set->count > TLY_DISTINCT_MAX)
      abort();
    for (size_t j = 0; j < set->count; j++)
      if (strlen(set->values[j]) > TLY_DISTINCT_VALUE_MAX ||
          (j && strcmp(set->values[j - 1], set->values[j]) >= 0))
        abort();
  }
  unsigned char *first = NULL, *second = NULL;
  size_t first_len = encode(&record, &first);
  /* What the encoder wrote decodes (it may leave out rows, buckets and
   * sets the record no longer keeps, so compare encodings, not inputs). */
  if (tly_subject_record_decode(first, first_len, &again))
    abort();
  size_t second_len = encode(&again, &second);
  if (second_len != first_len || memcmp(first, second, first_len) != 0)
    abort();
  free(first);
  free(second);
  tly_subject_record_clear(&again);
  tly_subject_record_clear(&record);
  return 0;
}
