/*
 * tly_read_marks.c - the read state of a subject's alerts (see
 * tly_read_marks.h). Pure.
 */
#include "tly_read_marks.h"

#include "tly_bytes.h"
#include "tly_sha256.h"

#include <string.h>

uint64_t tly_read_mark_hash(const char *alert_id, size_t len) {
  unsigned char digest[TLY_SHA256_LEN];
  tly_sha256(alert_id, len, digest);
  return tly_get_be64(digest);
}

int tly_read_marks_is_read(const tly_read_marks_t *marks, uint64_t hash,
                           int64_t alert_at_ms) {
  if (alert_at_ms < marks->read_before_ms)
    return 1;
  for (uint32_t i = 0; i < marks->count; i++)
    if (marks->marks[i].hash == hash)
      return 1;
  return 0;
}

/* Drops the marks the watermark covers. */
static void drop_covered(tly_read_marks_t *marks) {
  uint32_t kept = 0;
  for (uint32_t i = 0; i < marks->count; i++)
    if (marks->marks[i].alert_at_ms >= marks->read_before_ms)
      marks->marks[kept++] = marks->marks[i];
  marks->count = kept;
}

void tly_read_marks_add(tly_read_marks_t *marks, uint64_t hash,
                        int64_t alert_at_ms) {
  if (tly_read_marks_is_read(marks, hash, alert_at_ms))
    return;
  if (marks->count == TLY_READ_MARKS_MAX) {
    /* Full: the oldest marked alert's time (or the new one's, when older)
     * becomes the watermark; the marks before it are covered. */
    int64_t oldest = marks->marks[0].alert_at_ms;
    if (alert_at_ms < oldest) {
      marks->read_before_ms = alert_at_ms + 1;
      return;
    }
    marks->read_before_ms = oldest + 1;
    drop_covered(marks);
  }
  /* Kept in alert-time order (ties in arrival order). */
  uint32_t at = marks->count;
  while (at > 0 && marks->marks[at - 1].alert_at_ms > alert_at_ms)
    at--;
  memmove(&marks->marks[at + 1], &marks->marks[at],
          (marks->count - at) * sizeof(marks->marks[0]));
  marks->marks[at] = (tly_read_mark_t){hash, alert_at_ms};
  marks->count++;
}

int tly_read_marks_any(const tly_read_marks_t *marks) {
  return marks->count > 0 || marks->read_before_ms != 0;
}
