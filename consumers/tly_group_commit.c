/*
 * tly_group_commit.c - the group commit rule (see tly_group_commit.h).
 */
#include "tly_group_commit.h"

tly_group_commit_t tly_group_commit_decide(const tly_group_commit_in_t *in) {
  tly_group_commit_t next = {0, 0, 1, 0};
  int64_t remaining = in->round_ms - in->waited_ms;
  if (in->full) {
    next.done = next.submit = 1; /* waits for the writer if it is busy */
    return next;
  }
  if (in->records) {
    if (!in->writer_busy && !in->behind) {
      next.done = next.submit = 1;
      return next;
    }
    /* Grow: the writer wakes the loop when it finishes; catching up, a
     * read returns as soon as it has its fill, and one that finds nothing
     * ends the catching up. */
    next.wait_ms = in->writer_busy ? in->round_ms : remaining;
  } else if (remaining <= 0) {
    next.done = 1;
    next.submit = in->other_work && !in->writer_busy;
    return next;
  } else {
    next.wait_ms = remaining;
    next.first_only = 1;
  }
  if (next.wait_ms < 1)
    next.wait_ms = 1;
  return next;
}
