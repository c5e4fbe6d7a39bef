/*
 * tly_billing_records.h - the bytes of the billing state as stored: the
 * account, a single usage row, the subject record (account, kept rows,
 * newest hour's buckets, holds, meter state, read marks), an hour's
 * buckets stored apart and a closed cycle's archive.
 *
 * Owns the record layouts and their versions: what an old version still
 * decodes to and what a decoder refuses (other versions, truncation,
 * trailing bytes, out-of-range values). It must never decide anything the
 * fold decides (it only writes down state, never changes it), and never do
 * I/O: callers (store/, consumers/) put the bytes where they like.
 * The state types are tly_billing.h's, which includes this header, so every
 * caller of tly_billing.h sees these declarations as before.
 */
#ifndef TLY_BILLING_RECORDS_H
#define TLY_BILLING_RECORDS_H

#include "tly_billing.h"

#include <stddef.h>
#include <stdint.h>

/* Encodings of the state records (version byte first; integers as
 * varints, see tly_billing_records.c). encode returns the length written (out
 * must hold TLY_ACCOUNT_MAX bytes); decode 0 or -1. The row encoding is the
 * fixed-width one of a single row; records store rows in their compact
 * form. */
#define TLY_ACCOUNT_MAX 512
#define TLY_BILLING_ROW_SIZE (1 + 6 * 8 + 4)
size_t tly_account_encode(const tly_account_t *account, unsigned char *out);
int tly_account_decode(const void *data, size_t len, tly_account_t *account);
void tly_billing_row_encode(const tly_billing_row_t *row, unsigned char *out);
int tly_billing_row_decode(const void *data, size_t len,
                           tly_billing_row_t *row);

/* A usage row with what names it within its subject. The name is last:
 * the overlay allocates its rows only up to the name's NUL
 * (store/tly_overlay.c), so nothing may copy an overlay's row whole. */
typedef struct {
  int64_t cycle_start_ms;
  tly_billing_row_t row;
  char feature[TLY_CONFIG_NAME_MAX];
} tly_subject_row_t;

/* Whether a row still belongs in the subject record: it was used and its
 * cycle is the account's current one or one of the kept closed ones (the
 * only cycles the fold ever asks rows for). */
int tly_subject_row_kept(const tly_account_t *account,
                         const tly_subject_row_t *row);

/*
 * The subject record: one RocksDB value per subject holding the account,
 * its kept rows and the buckets of its newest hour (older hours live in
 * keys of their own, written once when the hour is no longer the newest),
 * so that a batch writes one key per subject it touched however many
 * features, cycles and events it saw. Rows that are not kept are left out;
 * buckets are written as given; open holds (tly_holds.h) follow, in a
 * record of version 4 (a subject without holds keeps version 3's bytes);
 * a subject with meter state (a latest row's instant, unique_count's
 * values, tly_meters.h) has a record of version 5: rows carry latest_at,
 * the hold count is always written, and the distinct values follow (sets
 * of rows no longer kept are left out). Versions 3 and 4 still decode.
 * A subject with read marks (tly_read_marks.h) is written as version 6:
 * version 5's layout (its meter parts may be empty), then the marks.
 * encode returns the length it needs; the
 * record is in out when that is at most out_size (otherwise out may hold a
 * part of it: one call both writes a record that fits and measures one that
 * does not). decode fills *record (arrays
 * malloc'd, NULL when empty; tly_subject_record_clear frees them); 0 or -1
 * (malformed).
 */
typedef struct {
  tly_account_t account;
  tly_subject_row_t *rows;
  size_t row_count;
  tly_subject_bucket_t *buckets;
  size_t bucket_count;
  tly_hold_t *holds; /* open reservations, oldest first */
  size_t hold_count;
  tly_distinct_sets_t distinct; /* unique_count's values (version 5) */
  tly_read_marks_t read_marks;  /* the alerts read (version 6) */
} tly_subject_record_t;

size_t tly_subject_record_encode(const tly_account_t *account,
                                 const tly_subject_row_t *const *rows,
                                 size_t row_count,
                                 const tly_subject_bucket_t *const *buckets,
                                 size_t bucket_count, unsigned char *out,
                                 size_t out_size);
/* The same with the subject's holds (at most TLY_HOLDS_MAX). */
size_t tly_subject_record_encode_holds(
    const tly_account_t *account, const tly_subject_row_t *const *rows,
    size_t row_count, const tly_subject_bucket_t *const *buckets,
    size_t bucket_count, const tly_hold_t *holds, size_t hold_count,
    unsigned char *out, size_t out_size);
/* The same with the subject's distinct values and read marks (NULL:
 * none). */
size_t tly_subject_record_encode_meters(
    const tly_account_t *account, const tly_subject_row_t *const *rows,
    size_t row_count, const tly_subject_bucket_t *const *buckets,
    size_t bucket_count, const tly_hold_t *holds, size_t hold_count,
    const tly_distinct_sets_t *distinct, const tly_read_marks_t *marks,
    unsigned char *out, size_t out_size);
int tly_subject_record_decode(const void *data, size_t len,
                              tly_subject_record_t *record);
void tly_subject_record_clear(tly_subject_record_t *record);

/* An hour's buckets of one subject as stored apart (an hour that is no
 * longer the subject's newest): [version][count] then per bucket the
 * feature and the five totals. encode returns the length it needs, and the
 * encoding is in out when that fits (as for the subject record); decode
 * returns a malloc'd array in *buckets
 * (NULL when empty), 0 or -1. The hour itself is in the key. */
size_t tly_bucket_encode(const tly_subject_bucket_t *const *buckets,
                         size_t count, unsigned char *out, size_t out_size);
int tly_bucket_decode(const void *data, size_t len, int32_t hour,
                      tly_subject_bucket_t **buckets, size_t *count);

/* A closed cycle as archived when it leaves the kept history: the cycle
 * and its rows. Same conventions as the bucket encoding. */
size_t tly_cycle_archive_encode(const tly_cycle_t *cycle,
                                const tly_subject_row_t *const *rows,
                                size_t row_count, unsigned char *out,
                                size_t out_size);
int tly_cycle_archive_decode(const void *data, size_t len, tly_cycle_t *cycle,
                             tly_subject_row_t **rows, size_t *row_count);

#endif
