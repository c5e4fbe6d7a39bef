/*
 * tly_fold.c - the pure fold and the encoding of the rows it produces.
 * See tly_fold.h for the contract.
 */
#include "tly_fold.h"

#include "tly_store.h"

#include <stdio.h>
#include <string.h>

/* a + b into *sum, or -1 if the result leaves int64. */
static int add_checked(int64_t a, int64_t b, int64_t *sum) {
  return __builtin_add_overflow(a, b, sum) ? -1 : 0;
}

int tly_fold_usage(tly_usage_row_t *row, const tly_usage_recorded_t *usage,
                   char *errstr, size_t errstr_size) {
  tly_usage_row_t next = *row;
  int64_t input_tokens = usage->has_ai ? usage->ai.input_tokens : 0;
  int64_t output_tokens = usage->has_ai ? usage->ai.output_tokens : 0;

  /* Build the new row aside so a rejected event leaves no partial change. */
  if (add_checked(next.quantity, usage->quantity, &next.quantity) ||
      add_checked(next.input_tokens, input_tokens, &next.input_tokens) ||
      add_checked(next.output_tokens, output_tokens, &next.output_tokens) ||
      add_checked(next.event_count, 1, &next.event_count)) {
    snprintf(errstr, errstr_size,
             "usage total of feature '%s' would overflow a 64-bit integer",
             usage->feature);
    return -1;
  }
  *row = next;
  return 0;
}

void tly_usage_row_encode(const tly_usage_row_t *row,
                          unsigned char out[TLY_USAGE_ROW_SIZE]) {
  out[0] = TLY_USAGE_ROW_VERSION;
  tly_put_be64(out + 1, (uint64_t)row->quantity);
  tly_put_be64(out + 9, (uint64_t)row->input_tokens);
  tly_put_be64(out + 17, (uint64_t)row->output_tokens);
  tly_put_be64(out + 25, (uint64_t)row->event_count);
}

int tly_usage_row_decode(const void *data, size_t len, tly_usage_row_t *row) {
  const unsigned char *in = data;
  if (len != TLY_USAGE_ROW_SIZE || in[0] != TLY_USAGE_ROW_VERSION)
    return -1;
  row->quantity = (int64_t)tly_get_be64(in + 1);
  row->input_tokens = (int64_t)tly_get_be64(in + 9);
  row->output_tokens = (int64_t)tly_get_be64(in + 17);
  row->event_count = (int64_t)tly_get_be64(in + 25);
  return 0;
}

size_t tly_usage_key(int32_t partition, tly_subject_kind_t kind,
                     const char *subject_id, const char *feature, char *out,
                     size_t out_size) {
  size_t subject_len, feature_len, total;
  if (out_size < 4)
    return 0;
  subject_len = tly_subject_key(kind, subject_id, out + 4, out_size - 4);
  feature_len = feature ? strlen(feature) : 0;
  total = 4 + subject_len + 1 + feature_len;
  if (total > out_size)
    return 0;
  tly_put_be32((unsigned char *)out, (uint32_t)partition);
  out[4 + subject_len] = '\0';
  if (feature_len)
    memcpy(out + 4 + subject_len + 1, feature, feature_len);
  return total;
}
