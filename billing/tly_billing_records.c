/*
 * tly_billing_records.c - the encodings of the billing state's stored
 * records (see tly_billing_records.h for the contract): the account, a
 * single row, the subject record, an hour's buckets and an archived cycle.
 * Moved out of tly_billing.c unchanged. Pure: bytes in, bytes out, no I/O.
 */
#include "tly_billing_records.h"

#include "tly_bytes.h"

#include <stdlib.h>
#include <string.h>

/*
 * The stored records (the subject record above all: every batch that
 * touches a subject rewrites it, and its bytes are what a commit costs in
 * the WAL append and checksum, the memtable copy, flushes and compactions)
 * are compact: integers are LEB128 varints, signed ones zigzagged, cycle
 * ends stored as the cycle's length and the cycles of history and rows as
 * offsets from the account's current cycle, so common values take a byte or
 * two. Strings are a length byte and the bytes; counts are varints. Each
 * record starts with a version byte; a decoder rejects other versions,
 * truncation, trailing bytes and out-of-range values.
 *
 * Encoders write through a writer that stops writing (but goes on
 * counting) once out is full, so one pass both writes a record that fits
 * and measures one that does not.
 */

typedef struct {
  unsigned char *out;
  size_t size; /* of out */
  size_t len;  /* written so far, or needed once past size */
} writer_t;

static void put_bytes(writer_t *w, const void *bytes, size_t n) {
  if (n && w->len <= w->size && n <= w->size - w->len)
    memcpy(w->out + w->len, bytes, n);
  w->len += n;
}

static void put_byte(writer_t *w, unsigned char byte) {
  put_bytes(w, &byte, 1);
}

static void put_varint(writer_t *w, uint64_t value) {
  unsigned char bytes[10], *out = bytes;
  int direct = w->len <= w->size && w->size - w->len >= sizeof(bytes);
  if (direct)
    out = w->out + w->len;
  size_t n = 0;
  while (value >= 0x80) {
    out[n++] = (unsigned char)(value | 0x80);
    value >>= 7;
  }
  out[n++] = (unsigned char)value;
  if (direct)
    w->len += n;
  else
    put_bytes(w, bytes, n);
}

/* Zigzag: small magnitudes of either sign take few bytes. */
static void put_signed(writer_t *w, int64_t value) {
  uint64_t bits = (uint64_t)value;
  put_varint(w, (bits << 1) ^ (0 - (bits >> 63)));
}

/* a - b and a + b, wrapping, so that any values round-trip. */
static int64_t wrapping_sub(int64_t a, int64_t b) {
  return (int64_t)((uint64_t)a - (uint64_t)b);
}

static int64_t wrapping_add(int64_t a, int64_t b) {
  return (int64_t)((uint64_t)a + (uint64_t)b);
}

static void put_string(writer_t *w, const char *text, size_t max) {
  size_t len = strnlen(text, max);
  put_byte(w, (unsigned char)len);
  put_bytes(w, text, len);
}

static void put_cycle(writer_t *w, const tly_cycle_t *cycle, int64_t base_ms) {
  put_signed(w, wrapping_sub(cycle->start_ms, base_ms));
  put_signed(w, wrapping_sub(cycle->end_ms, cycle->start_ms));
  put_signed(w, cycle->cost_micros);
  put_signed(w, cycle->events);
}

static void put_account(writer_t *w, const tly_account_t *account) {
  put_string(w, account->plan, sizeof(account->plan) - 1);
  put_string(w, account->stripe_customer_id,
             sizeof(account->stripe_customer_id) - 1);
  put_byte(w, (unsigned char)((account->stripe_period ? 1 : 0) |
                              (account->payment_failed ? 2 : 0) |
                              (account->canceled ? 4 : 0)));
  put_cycle(w, &account->cycle, 0);
  put_varint(w, account->credit_thresholds_fired);
  put_byte(w, (unsigned char)account->history_count);
  for (size_t i = 0; i < account->history_count; i++)
    put_cycle(w, &account->history[i], account->cycle.start_ms);
}

#define ACCOUNT_VERSION 2

size_t tly_account_encode(const tly_account_t *account, unsigned char *out) {
  writer_t w = {out, TLY_ACCOUNT_MAX, 0};
  put_byte(&w, ACCOUNT_VERSION);
  put_account(&w, account);
  return w.len;
}

typedef struct {
  const unsigned char *data;
  size_t len, pos;
  int bad;
} reader_t;

static const unsigned char *take(reader_t *r, size_t n) {
  if (r->bad || r->len - r->pos < n) {
    r->bad = 1;
    return NULL;
  }
  r->pos += n;
  return r->data + r->pos - n;
}

static uint64_t take_varint(reader_t *r) {
  uint64_t value = 0;
  for (unsigned shift = 0; !r->bad && r->pos < r->len; shift += 7) {
    unsigned char byte = r->data[r->pos++];
    if (shift == 63 && byte > 1)
      break; /* more than 64 bits */
    value |= (uint64_t)(byte & 0x7f) << shift;
    if (!(byte & 0x80))
      return value;
  }
  r->bad = 1;
  return 0;
}

static int64_t take_signed(reader_t *r) {
  uint64_t bits = take_varint(r);
  return (int64_t)((bits >> 1) ^ (0 - (bits & 1)));
}

static uint32_t take_u32(reader_t *r) {
  uint64_t value = take_varint(r);
  if (value > UINT32_MAX)
    r->bad = 1;
  return (uint32_t)value;
}

static void take_string(reader_t *r, char *out, size_t size) {
  const unsigned char *len = take(r, 1);
  const unsigned char *text = len ? take(r, *len) : NULL;
  if (!text || *len >= size) {
    r->bad = 1;
    return;
  }
  memcpy(out, text, *len);
  out[*len] = '\0';
}

static void take_cycle(reader_t *r, tly_cycle_t *cycle, int64_t base_ms) {
  cycle->start_ms = wrapping_add(base_ms, take_signed(r));
  cycle->end_ms = wrapping_add(cycle->start_ms, take_signed(r));
  cycle->cost_micros = take_signed(r);
  cycle->events = take_signed(r);
}

static void take_account(reader_t *r, tly_account_t *account) {
  memset(account, 0, sizeof(*account));
  account->exists = 1;
  take_string(r, account->plan, sizeof(account->plan));
  take_string(r, account->stripe_customer_id,
              sizeof(account->stripe_customer_id));
  const unsigned char *p = take(r, 1);
  if (p && *p > 7)
    r->bad = 1; /* a flag this version does not know */
  if (p) {
    account->stripe_period = *p & 1;
    account->payment_failed = (*p >> 1) & 1;
    account->canceled = (*p >> 2) & 1;
  }
  take_cycle(r, &account->cycle, 0);
  account->credit_thresholds_fired = take_u32(r);
  p = take(r, 1);
  if (p && *p > TLY_BILLING_HISTORY)
    r->bad = 1;
  if (p && !r->bad) {
    account->history_count = *p;
    for (size_t i = 0; i < account->history_count; i++)
      take_cycle(r, &account->history[i], account->cycle.start_ms);
  }
}

int tly_account_decode(const void *data, size_t len, tly_account_t *account) {
  reader_t r = {data, len, 0, 0};
  memset(account, 0, sizeof(*account));
  const unsigned char *p = take(&r, 1);
  if (!p || *p != ACCOUNT_VERSION)
    return -1;
  take_account(&r, account);
  return r.bad || r.pos != len ? -1 : 0;
}

#define ROW_VERSION 2

void tly_billing_row_encode(const tly_billing_row_t *row, unsigned char *out) {
  out[0] = ROW_VERSION;
  tly_put_be64(out + 1, (uint64_t)row->quantity);
  tly_put_be64(out + 9, (uint64_t)row->input_tokens);
  tly_put_be64(out + 17, (uint64_t)row->output_tokens);
  tly_put_be64(out + 25, (uint64_t)row->event_count);
  tly_put_be64(out + 33, (uint64_t)row->cost_micros);
  tly_put_be64(out + 41, (uint64_t)row->cost_remainder);
  tly_put_be32(out + 49, row->thresholds_fired);
}

int tly_billing_row_decode(const void *data, size_t len,
                           tly_billing_row_t *row) {
  const unsigned char *in = data;
  if (len != TLY_BILLING_ROW_SIZE || in[0] != ROW_VERSION)
    return -1;
  row->quantity = (int64_t)tly_get_be64(in + 1);
  row->input_tokens = (int64_t)tly_get_be64(in + 9);
  row->output_tokens = (int64_t)tly_get_be64(in + 17);
  row->event_count = (int64_t)tly_get_be64(in + 25);
  row->cost_micros = (int64_t)tly_get_be64(in + 33);
  row->cost_remainder = (int64_t)tly_get_be64(in + 41);
  row->thresholds_fired = tly_get_be32(in + 49);
  return 0;
}

int tly_subject_row_kept(const tly_account_t *account,
                         const tly_subject_row_t *row) {
  if (!row->row.event_count)
    return 0; /* touched by a rejected event only */
  if (row->cycle_start_ms == account->cycle.start_ms)
    return 1;
  for (size_t i = 0; i < account->history_count; i++)
    if (row->cycle_start_ms == account->history[i].start_ms)
      return 1;
  return 0;
}

/* A row in a record: its cycle as an offset from base_ms (the account's
 * current cycle, or the archived one), its feature, its totals. */
static void put_row_entry(writer_t *w, const tly_subject_row_t *row,
                          int64_t base_ms, int with_latest) {
  put_signed(w, wrapping_sub(row->cycle_start_ms, base_ms));
  put_string(w, row->feature, TLY_CONFIG_NAME_MAX - 1);
  put_signed(w, row->row.quantity);
  put_signed(w, row->row.input_tokens);
  put_signed(w, row->row.output_tokens);
  put_signed(w, row->row.event_count);
  put_signed(w, row->row.cost_micros);
  put_signed(w, row->row.cost_remainder);
  put_varint(w, row->row.thresholds_fired);
  if (with_latest)
    put_signed(w, row->row.latest_at_ms);
}

static void take_row_entry(reader_t *r, tly_subject_row_t *row, int64_t base_ms,
                           int with_latest) {
  row->cycle_start_ms = wrapping_add(base_ms, take_signed(r));
  take_string(r, row->feature, sizeof(row->feature));
  row->row.quantity = take_signed(r);
  row->row.input_tokens = take_signed(r);
  row->row.output_tokens = take_signed(r);
  row->row.event_count = take_signed(r);
  row->row.cost_micros = take_signed(r);
  row->row.cost_remainder = take_signed(r);
  row->row.thresholds_fired = take_u32(r);
  if (with_latest)
    row->row.latest_at_ms = take_signed(r);
}

static void put_bucket(writer_t *w, const tly_subject_bucket_t *bucket) {
  put_string(w, bucket->feature, TLY_BUCKET_NAME_MAX - 1);
  put_signed(w, bucket->totals.quantity);
  put_signed(w, bucket->totals.input_tokens);
  put_signed(w, bucket->totals.output_tokens);
  put_signed(w, bucket->totals.event_count);
  put_signed(w, bucket->totals.cost_micros);
}

static void take_bucket(reader_t *r, tly_subject_bucket_t *bucket) {
  take_string(r, bucket->feature, sizeof(bucket->feature));
  bucket->totals.quantity = take_signed(r);
  bucket->totals.input_tokens = take_signed(r);
  bucket->totals.output_tokens = take_signed(r);
  bucket->totals.event_count = take_signed(r);
  bucket->totals.cost_micros = take_signed(r);
}

/* Reads a count into *count and allocates that many zeroed items of `size`
 * bytes (NULL for none). Each item takes at least a byte, so a count
 * beyond the bytes left is malformed, not a reason to allocate; that and
 * out of memory mark the reader bad. */
static void *take_array(reader_t *r, size_t size, size_t *count) {
  uint64_t n = take_varint(r);
  *count = 0;
  if (r->bad || n > r->len - r->pos) {
    r->bad = 1;
    return NULL;
  }
  if (!n)
    return NULL;
  void *items = calloc((size_t)n, size);
  if (!items)
    r->bad = 1;
  else
    *count = (size_t)n;
  return items;
}

/* 1 and 2 (fixed-width integers) no longer decode; 4 is 3 followed by the
 * subject's holds, written only when it has some; 5 (meter state: rows
 * with latest_at, the hold count always, then the distinct values) is
 * written only when the subject has some; 6 is 5 followed by the read
 * marks, written only when the subject has some. */
#define SUBJECT_RECORD_VERSION 3
#define SUBJECT_RECORD_VERSION_HOLDS 4
#define SUBJECT_RECORD_VERSION_METERS 5
/* 5's layout (its meter parts may be empty), then the read marks
 * (tly_read_marks.h): written only when the subject has some. */
#define SUBJECT_RECORD_VERSION_MARKS 6

/* Whether a cycle is the account's current one or a kept closed one. */
static int cycle_kept(const void *opaque, int64_t cycle_start_ms,
                      const char *feature) {
  const tly_account_t *account = opaque;
  (void)feature;
  if (cycle_start_ms == account->cycle.start_ms)
    return 1;
  for (size_t i = 0; i < account->history_count; i++)
    if (cycle_start_ms == account->history[i].start_ms)
      return 1;
  return 0;
}

size_t tly_subject_record_encode(const tly_account_t *account,
                                 const tly_subject_row_t *const *rows,
                                 size_t row_count,
                                 const tly_subject_bucket_t *const *buckets,
                                 size_t bucket_count, unsigned char *out,
                                 size_t out_size) {
  return tly_subject_record_encode_holds(account, rows, row_count, buckets,
                                         bucket_count, NULL, 0, out, out_size);
}

/* A hold: its id and feature, its quantity and its expiry. */
static void put_hold(writer_t *w, const tly_hold_t *hold) {
  put_string(w, hold->id, TLY_RESERVATION_ID_MAX);
  put_string(w, hold->feature, TLY_CONFIG_NAME_MAX - 1);
  put_signed(w, hold->quantity);
  put_signed(w, hold->expires_at_ms);
}

static void take_hold(reader_t *r, tly_hold_t *hold) {
  take_string(r, hold->id, sizeof(hold->id));
  take_string(r, hold->feature, sizeof(hold->feature));
  hold->quantity = take_signed(r);
  hold->expires_at_ms = take_signed(r);
  if (!hold->id[0] || hold->quantity <= 0)
    r->bad = 1;
}

/* Read marks: the watermark, the count, then each mark's hash (8 bytes)
 * and alert time as an offset from the watermark. */
static void put_read_marks(writer_t *w, const tly_read_marks_t *marks) {
  unsigned char hash[8];
  put_signed(w, marks->read_before_ms);
  put_varint(w, marks->count);
  for (uint32_t i = 0; i < marks->count; i++) {
    tly_put_be64(hash, marks->marks[i].hash);
    for (size_t b = 0; b < sizeof(hash); b++)
      put_byte(w, hash[b]);
    put_signed(
        w, wrapping_sub(marks->marks[i].alert_at_ms, marks->read_before_ms));
  }
}

static void take_read_marks(reader_t *r, tly_read_marks_t *marks) {
  marks->read_before_ms = take_signed(r);
  uint64_t count = take_varint(r);
  if (count > TLY_READ_MARKS_MAX) {
    r->bad = 1;
    return;
  }
  marks->count = (uint32_t)count;
  for (uint32_t i = 0; i < marks->count && !r->bad; i++) {
    const unsigned char *hash = take(r, 8);
    if (hash)
      marks->marks[i].hash = tly_get_be64(hash);
    marks->marks[i].alert_at_ms =
        wrapping_add(marks->read_before_ms, take_signed(r));
  }
  if (!tly_read_marks_any(marks))
    r->bad = 1; /* version 6 is written for marks only */
}

size_t tly_subject_record_encode_holds(
    const tly_account_t *account, const tly_subject_row_t *const *rows,
    size_t row_count, const tly_subject_bucket_t *const *buckets,
    size_t bucket_count, const tly_hold_t *holds, size_t hold_count,
    unsigned char *out, size_t out_size) {
  return tly_subject_record_encode_meters(account, rows, row_count, buckets,
                                          bucket_count, holds, hold_count, NULL,
                                          NULL, out, out_size);
}

size_t tly_subject_record_encode_meters(
    const tly_account_t *account, const tly_subject_row_t *const *rows,
    size_t row_count, const tly_subject_bucket_t *const *buckets,
    size_t bucket_count, const tly_hold_t *holds, size_t hold_count,
    const tly_distinct_sets_t *distinct, const tly_read_marks_t *read_marks,
    unsigned char *out, size_t out_size) {
  writer_t w = {out, out_size, 0};
  size_t kept = 0, used_buckets = 0;
  int meters = 0;
  for (size_t i = 0; i < row_count; i++) {
    int row_kept = tly_subject_row_kept(account, rows[i]) != 0;
    kept += row_kept;
    meters |= row_kept && rows[i]->row.latest_at_ms != 0;
  }
  for (size_t i = 0; distinct && i < distinct->count && !meters; i++)
    meters = distinct->items[i].count &&
             cycle_kept(account, distinct->items[i].cycle_start_ms, NULL);
  for (size_t i = 0; i < bucket_count; i++)
    used_buckets += buckets[i]->totals.event_count != 0;
  int marks = read_marks && tly_read_marks_any(read_marks);
  /* Read marks take version 5's layout (rows with latest_at, the hold
   * count, the distinct values, any of them empty), then the marks. */
  int layout5 = meters || marks;
  put_byte(&w, marks        ? SUBJECT_RECORD_VERSION_MARKS
               : meters     ? SUBJECT_RECORD_VERSION_METERS
               : hold_count ? SUBJECT_RECORD_VERSION_HOLDS
                            : SUBJECT_RECORD_VERSION);
  put_account(&w, account);
  put_varint(&w, kept);
  for (size_t i = 0; i < row_count; i++)
    if (tly_subject_row_kept(account, rows[i]))
      put_row_entry(&w, rows[i], account->cycle.start_ms, layout5);
  put_varint(&w, used_buckets);
  for (size_t i = 0; i < bucket_count; i++) {
    if (!buckets[i]->totals.event_count)
      continue; /* touched by a rejected event only */
    put_signed(&w, buckets[i]->hour);
    put_bucket(&w, buckets[i]);
  }
  if (hold_count || layout5) {
    put_varint(&w, hold_count);
    for (size_t i = 0; i < hold_count; i++)
      put_hold(&w, &holds[i]);
  }
  if (layout5) {
    static const tly_distinct_sets_t none = {0};
    int fits = w.len <= w.size;
    size_t n = tly_distinct_encode(
        distinct ? distinct : &none, account->cycle.start_ms, cycle_kept,
        account, fits ? w.out + w.len : NULL, fits ? w.size - w.len : 0);
    w.len += n;
  }
  if (marks)
    put_read_marks(&w, read_marks);
  return w.len;
}

void tly_subject_record_clear(tly_subject_record_t *record) {
  free(record->rows);
  free(record->buckets);
  free(record->holds);
  tly_distinct_sets_clear(&record->distinct);
  memset(record, 0, sizeof(*record));
}

int tly_subject_record_decode(const void *data, size_t len,
                              tly_subject_record_t *record) {
  reader_t r = {data, len, 0, 0};
  memset(record, 0, sizeof(*record));
  const unsigned char *p = take(&r, 1);
  if (!p || p[0] < SUBJECT_RECORD_VERSION ||
      p[0] > SUBJECT_RECORD_VERSION_MARKS)
    return -1;
  int with_marks = p[0] == SUBJECT_RECORD_VERSION_MARKS;
  int with_meters = p[0] == SUBJECT_RECORD_VERSION_METERS || with_marks;
  int with_holds = p[0] == SUBJECT_RECORD_VERSION_HOLDS;
  take_account(&r, &record->account);
  record->rows = take_array(&r, sizeof(*record->rows), &record->row_count);
  for (size_t i = 0; i < record->row_count && !r.bad; i++)
    take_row_entry(&r, &record->rows[i], record->account.cycle.start_ms,
                   with_meters);
  record->buckets =
      take_array(&r, sizeof(*record->buckets), &record->bucket_count);
  for (size_t i = 0; i < record->bucket_count && !r.bad; i++) {
    int64_t hour = take_signed(&r);
    if (hour < INT32_MIN || hour > INT32_MAX)
      r.bad = 1;
    record->buckets[i].hour = (int32_t)hour;
    take_bucket(&r, &record->buckets[i]);
  }
  if (with_holds && !r.bad) {
    record->holds = take_array(&r, sizeof(*record->holds), &record->hold_count);
    if (!record->hold_count || record->hold_count > TLY_HOLDS_MAX)
      r.bad = 1; /* version 4 is written for holds only, never too many */
    for (size_t i = 0; i < record->hold_count && !r.bad; i++)
      take_hold(&r, &record->holds[i]);
  }
  if (with_meters && !r.bad) { /* the hold count, 0 too, then the values */
    record->holds = take_array(&r, sizeof(*record->holds), &record->hold_count);
    if (record->hold_count > TLY_HOLDS_MAX)
      r.bad = 1;
    for (size_t i = 0; i < record->hold_count && !r.bad; i++)
      take_hold(&r, &record->holds[i]);
    size_t n = r.bad ? 0
                     : tly_distinct_decode(r.data + r.pos, r.len - r.pos,
                                           record->account.cycle.start_ms,
                                           &record->distinct);
    if (!n)
      r.bad = 1;
    r.pos += n;
  }
  if (with_marks && !r.bad)
    take_read_marks(&r, &record->read_marks);
  if (r.bad || r.pos != len) {
    tly_subject_record_clear(record);
    return -1;
  }
  return 0;
}

/* 1 had fixed-width integers. */
#define BUCKET_VERSION 2

size_t tly_bucket_encode(const tly_subject_bucket_t *const *buckets,
                         size_t count, unsigned char *out, size_t out_size) {
  writer_t w = {out, out_size, 0};
  size_t used = 0;
  for (size_t i = 0; i < count; i++)
    used += buckets[i]->totals.event_count != 0;
  put_byte(&w, BUCKET_VERSION);
  put_varint(&w, used);
  for (size_t i = 0; i < count; i++)
    if (buckets[i]->totals.event_count)
      put_bucket(&w, buckets[i]);
  return w.len;
}

int tly_bucket_decode(const void *data, size_t len, int32_t hour,
                      tly_subject_bucket_t **buckets, size_t *count) {
  reader_t r = {data, len, 0, 0};
  const unsigned char *p = take(&r, 1);
  *buckets = NULL;
  *count = 0;
  if (!p || *p != BUCKET_VERSION)
    return -1;
  tly_subject_bucket_t *items = take_array(&r, sizeof(*items), count);
  for (size_t i = 0; i < *count && !r.bad; i++) {
    items[i].hour = hour;
    take_bucket(&r, &items[i]);
  }
  if (r.bad || r.pos != len) {
    free(items);
    *count = 0;
    return -1;
  }
  *buckets = items;
  return 0;
}

/* 1 had fixed-width integers. */
#define ARCHIVE_VERSION 2

size_t tly_cycle_archive_encode(const tly_cycle_t *cycle,
                                const tly_subject_row_t *const *rows,
                                size_t row_count, unsigned char *out,
                                size_t out_size) {
  writer_t w = {out, out_size, 0};
  put_byte(&w, ARCHIVE_VERSION);
  put_cycle(&w, cycle, 0);
  put_varint(&w, row_count);
  for (size_t i = 0; i < row_count; i++)
    put_row_entry(&w, rows[i], cycle->start_ms, 0);
  return w.len;
}

int tly_cycle_archive_decode(const void *data, size_t len, tly_cycle_t *cycle,
                             tly_subject_row_t **rows, size_t *row_count) {
  reader_t r = {data, len, 0, 0};
  const unsigned char *p = take(&r, 1);
  *rows = NULL;
  *row_count = 0;
  if (!p || *p != ARCHIVE_VERSION)
    return -1;
  take_cycle(&r, cycle, 0);
  tly_subject_row_t *items = take_array(&r, sizeof(*items), row_count);
  for (size_t i = 0; i < *row_count && !r.bad; i++)
    take_row_entry(&r, &items[i], cycle->start_ms, 0);
  if (r.bad || r.pos != len) {
    free(items);
    *row_count = 0;
    return -1;
  }
  *rows = items;
  return 0;
}
