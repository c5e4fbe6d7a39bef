/*
 * tly_state.h - reading a subject's committed state, for the HTTP port.
 * Owns where committed state lives and how it is read; never writes and
 * never decides billing (it hands back what the fold stored).
 *
 * The one place that knows where a subject's account and usage rows live in
 * the store (keys, column families, encodings); the HTTP handlers call only
 * this. The layout may change underneath without the handlers noticing.
 */
#ifndef TLY_STATE_H
#define TLY_STATE_H

#include "tly_billing.h"
#include "tly_config.h"
#include "tly_event.h"
#include "tly_keys.h" /* the history tags */
#include "tly_store.h"

#include <stddef.h>
#include <stdint.h>

typedef tly_subject_row_t tly_state_row_t;

typedef struct {
  int32_t partition;
  tly_account_t account;
  size_t row_count;
  tly_state_row_t *rows; /* malloc'd; tly_state_subject_clear frees */
  size_t bucket_count;
  tly_subject_bucket_t *buckets; /* the newest hour's buckets; malloc'd */
  size_t hold_count;
  tly_hold_t *holds; /* open reservations as folded (tly_holds.h: readers
                        leave out those past expires_at by their clock);
                        malloc'd */
  tly_read_marks_t read_marks; /* the alerts it read (tly_read_marks.h) */
} tly_subject_state_t;

/* Which partitions may be read: 1 when this instance serves partition
 * (its state there is current). NULL: every partition. */
typedef int (*tly_state_readable_fn)(void *opaque, int32_t partition);

/* The murmur2 home partition of a subject (Kafka's Java partitioner, as
 * tally's producers use it), or -1 when partition_count < 1 or the id is
 * too long. */
int32_t tly_state_home_partition(int32_t partition_count,
                                 tly_subject_kind_t kind, const char *id);

/* 1 found, 0 not found, -1 error (errstr). Looks on the murmur2 home
 * partition first, then the others; only partitions readable says are
 * served (all when readable is NULL), so a partition this instance does not
 * serve is never read: its state may be stale. rows: every stored row of
 * the subject: its current cycle and the closed cycles still kept. *out is
 * overwritten (clear it before reusing it). */
int tly_state_find_subject(tly_store_t *store, int32_t partition_count,
                           tly_state_readable_fn readable,
                           void *readable_opaque, tly_subject_kind_t kind,
                           const char *id, tly_subject_state_t *out,
                           char *errstr, size_t errstr_size);
void tly_state_subject_clear(tly_subject_state_t *state);

/* Visits, in key order, the subject's history records of one kind (tag:
 * TLY_HISTORY_HOUR, _CYCLE or _ALERT of tly_keys.h) on partition, leaving
 * out those that expired before horizon_ms (the partition's event-time
 * watermark), whether or not compaction dropped them yet. cb gets the key
 * after the tag and the value after its expiry time; non-zero stops. 0,
 * or -1 with errstr (also when a value is too short to be one). */
typedef int (*tly_state_history_cb)(void *opaque, const unsigned char *suffix,
                                    size_t suffix_len, const char *value,
                                    size_t value_len);
int tly_state_history(tly_store_t *store, int32_t partition,
                      tly_subject_kind_t kind, const char *id, char tag,
                      int64_t horizon_ms, tly_state_history_cb cb, void *opaque,
                      char *errstr, size_t errstr_size);

#endif
