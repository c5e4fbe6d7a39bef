/*
 * tly_fold.h - the pure fold: (state, event) -> state'.
 *
 * No I/O, no clock, no randomness, integers only: the same log folds to the
 * same state on every machine and every replay, which is what makes crash
 * recovery a matter of "resume from the stored offset". The processor loads
 * the rows an event touches, calls the fold, and writes the rows back.
 *
 * State for now: per (partition, subject, feature) the sum of quantity, of
 * input and output tokens, and the number of events folded.
 */
#ifndef TLY_FOLD_H
#define TLY_FOLD_H

#include "tly_event.h"

#include <stddef.h>
#include <stdint.h>

typedef struct {
  int64_t quantity;
  int64_t input_tokens;
  int64_t output_tokens;
  int64_t event_count;
} tly_usage_row_t;

/* Encoded row: a format version byte then four big-endian int64. */
#define TLY_USAGE_ROW_VERSION 1
#define TLY_USAGE_ROW_SIZE (1 + 4 * 8)

/*
 * Folds one UsageRecorded into row. Returns 0, or -1 with errstr when the
 * event cannot be folded (a total would overflow int64); the row is then
 * unchanged and the caller dead-letters the event.
 */
int tly_fold_usage(tly_usage_row_t *row, const tly_usage_recorded_t *usage,
                   char *errstr, size_t errstr_size);

void tly_usage_row_encode(const tly_usage_row_t *row,
                          unsigned char out[TLY_USAGE_ROW_SIZE]);
/* 0, or -1 for a value of the wrong size or version. */
int tly_usage_row_decode(const void *data, size_t len, tly_usage_row_t *row);

/*
 * Usage key: [partition, 4 bytes BE][subject key "kind:id"][0][feature].
 * Writes into out (out_size bytes) and returns the key length, or 0 when it
 * does not fit. With feature NULL it writes the subject prefix (up to and
 * including the 0 byte) that every feature row of the subject starts with.
 */
size_t tly_usage_key(int32_t partition, tly_subject_kind_t kind,
                     const char *subject_id, const char *feature, char *out,
                     size_t out_size);

#endif
