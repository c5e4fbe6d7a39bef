/*
 * tly_webhook_parked.h - one webhook endpoint's alerts waiting for a retry
 * (the "parked" set) and its progress per alerts-topic partition, for
 * tly_webhooks.c. Pure: no Kafka, no HTTP, no clock (times are passed in).
 *
 * An alert whose delivery failed is parked with its own backoff, so the
 * alerts after it go out at once instead of waiting behind it. What may be
 * committed for a partition is the lowest offset not yet finished: the
 * oldest parked alert of that partition, else one past the last record
 * taken. So the committed progress never passes an alert that was neither
 * delivered nor dead-lettered: a SIGKILL resumes from there (and delivers
 * again the finished alerts after it: at least once, the receiver dedupes
 * on webhook-id).
 *
 * The commit's metadata carries each parked alert's first attempt time
 * ("offset:first_ms" pairs), so the give-up clock (24 h by default) runs
 * from the first attempt across a crash, not from the restart.
 *
 * Bounds: TLY_WEBHOOK_PARKED_MAX alerts parked per endpoint (when full the
 * endpoint takes no new record until one finishes: the old in-order
 * behaviour); TLY_WEBHOOK_HINTS_MAX first-attempt times per partition in
 * the metadata (an alert parked past those restarts its clock after a
 * crash); partitions as the topic has (grown on demand).
 */
#ifndef TLY_WEBHOOK_PARKED_H
#define TLY_WEBHOOK_PARKED_H

#include <stddef.h>
#include <stdint.h>

#define TLY_WEBHOOK_PARKED_MAX 256
#define TLY_WEBHOOK_HINTS_MAX 48
/* "wh1" then at most TLY_WEBHOOK_HINTS_MAX " offset:first_ms" pairs (each
 * at most 40 bytes): under Kafka's default offset.metadata.max.bytes
 * (4096). */
#define TLY_WEBHOOK_METADATA_MAX (4 + TLY_WEBHOOK_HINTS_MAX * 41 + 1)

typedef struct {
  int32_t partition;
  int64_t offset;
  char *id;   /* the alert id (webhook-id) */
  char *body; /* the signed body */
  void *key;  /* the record's key (for the dead-letter record) */
  size_t key_len;
  int64_t first_ms; /* first attempt (wall clock) */
  int64_t next_ms;  /* next attempt */
  int64_t wait_ms;  /* the wait after the next failure */
  char why[256];    /* the last attempt's answer */
} tly_webhook_parked_t;

typedef struct {
  int32_t partition;
  int64_t next_offset;       /* one past the last record taken; -1: none */
  int64_t committed;         /* last committed offset; -1: none */
  uint64_t committed_digest; /* of the metadata committed with it */
  /* First attempt times read back from the committed metadata. */
  int64_t hint_offsets[TLY_WEBHOOK_HINTS_MAX];
  int64_t hint_first_ms[TLY_WEBHOOK_HINTS_MAX];
  size_t hint_count;
} tly_webhook_progress_t;

typedef struct {
  tly_webhook_parked_t items[TLY_WEBHOOK_PARKED_MAX];
  size_t count;
  tly_webhook_progress_t *parts;
  size_t part_count, part_cap;
} tly_webhook_parked_set_t;

/* The partition's progress (made on first use); NULL on OOM. */
tly_webhook_progress_t *tly_webhook_progress(tly_webhook_parked_set_t *set,
                                             int32_t partition);

/* Notes a record as taken (read and either finished or parked). 0, -1 OOM. */
int tly_webhook_taken(tly_webhook_parked_set_t *set, int32_t partition,
                      int64_t offset);

/* Parks an alert (takes id, body and key: freed by the set). 0, or -1 when
 * full (nothing taken). */
int tly_webhook_park(tly_webhook_parked_set_t *set,
                     const tly_webhook_parked_t *item);

/* Removes items[index] (delivered or dead-lettered), freeing its parts. */
void tly_webhook_unpark(tly_webhook_parked_set_t *set, size_t index);

/* The offset that may be committed for the partition (see the top
 * comment), -1 when nothing was taken from it. */
int64_t tly_webhook_commit_offset(const tly_webhook_parked_set_t *set,
                                  int32_t partition);

/* The metadata to commit with it into out (TLY_WEBHOOK_METADATA_MAX
 * bytes): "wh1" and the partition's parked alerts' "offset:first_ms",
 * oldest first. Returns its length. */
size_t tly_webhook_metadata(const tly_webhook_parked_set_t *set,
                            int32_t partition, char *out, size_t size);

/* Reads committed metadata back into the partition's hints (anything not
 * of that form is ignored). 0, -1 OOM. */
int tly_webhook_load_hints(tly_webhook_parked_set_t *set, int32_t partition,
                           const char *metadata, size_t len);

/* The first attempt time a hint gives the record at offset, or -1. */
int64_t tly_webhook_hint(const tly_webhook_parked_set_t *set, int32_t partition,
                         int64_t offset);

/* Forgets a partition given away (its parked alerts and progress: the new
 * owner resumes from the committed offset). */
void tly_webhook_drop_partition(tly_webhook_parked_set_t *set,
                                int32_t partition);

/* The earliest next_ms of the parked alerts (INT64_MAX: none). */
int64_t tly_webhook_next_due(const tly_webhook_parked_set_t *set);

/* Frees everything (the struct itself is the caller's). */
void tly_webhook_parked_clear(tly_webhook_parked_set_t *set);

/* FNV-1a of text (the committed metadata's digest). */
uint64_t tly_webhook_digest(const char *text, size_t len);

#endif
