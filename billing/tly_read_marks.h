/*
 * tly_read_marks.h - which of a subject's alerts it has read: the read
 * state of its notifications (issue 18). Owns the marks' rules; the fold
 * (tly_billing.c) applies a NotificationRead event through them and the
 * subject record stores them; the HTTP port asks them whether an alert is
 * read. Pure: no I/O, no clock; the same events give the same marks on
 * every replay, so read state survives crashes and partition moves as the
 * rest of the subject record does.
 *
 * An alert is read when its time is before read_before_ms, or when its id
 * is among the marks (each the first 8 bytes of the id's SHA-256, with the
 * alert's time). At most TLY_READ_MARKS_MAX marks are kept: one more moves
 * read_before_ms past the oldest marked alert's time and drops the marks it
 * covers, so the oldest reads collapse into the watermark (an unread alert
 * older than that watermark then counts as read too).
 */
#ifndef TLY_READ_MARKS_H
#define TLY_READ_MARKS_H

#include <stddef.h>
#include <stdint.h>

#define TLY_READ_MARKS_MAX 32

typedef struct {
  uint64_t hash;       /* first 8 bytes of SHA-256(alert_id), big-endian */
  int64_t alert_at_ms; /* the alert's occurred_at */
} tly_read_mark_t;

typedef struct {
  int64_t read_before_ms; /* alerts before this time are read; 0: none */
  uint32_t count;
  tly_read_mark_t marks[TLY_READ_MARKS_MAX]; /* oldest alert first */
} tly_read_marks_t;

/* The hash of an alert id (len bytes). */
uint64_t tly_read_mark_hash(const char *alert_id, size_t len);

/* Whether the alert (its id's hash and time) counts as read. */
int tly_read_marks_is_read(const tly_read_marks_t *marks, uint64_t hash,
                           int64_t alert_at_ms);

/* Marks the alert read (nothing when it already is). */
void tly_read_marks_add(tly_read_marks_t *marks, uint64_t hash,
                        int64_t alert_at_ms);

/* 1 when there is anything to store (a mark or a watermark). */
int tly_read_marks_any(const tly_read_marks_t *marks);

#endif
