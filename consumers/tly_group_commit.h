/*
 * tly_group_commit.h - when the processor's open batch goes to the writer
 * (group commit).
 *
 * One batch is in the writer's hands at a time (one synced RocksDB write:
 * state, dedupe ids, outbox, offsets). The rule:
 *   - the writer is free and the batch holds records: submit now, however
 *     few (at low rates every record is committed as soon as the previous
 *     commit is durable, not after a timer);
 *   - the writer is busy: the batch grows (the loop is woken the moment
 *     the writer finishes, and submits then); so under load a batch holds
 *     what arrived during the previous commit, and the writer's work per
 *     event falls as the load rises;
 *   - catching up (the last read filled up with old records): the batch
 *     grows up to batch_max_events whatever the writer does, so a backlog
 *     is written in full batches (each subject touched once per batch);
 *   - batch_max_events reached: submit (waiting for the writer if busy);
 *   - no records, only other work (deletes of outbox entries Kafka has
 *     acknowledged): submitted once the round is over and the writer is
 *     free;
 *   - nothing at all: the loop waits for the first record until the round
 *     is over (then ticks, delivery reports and publishing come round).
 * A round lasts batch_max_ms (less when idle: see round_ms), so that is an
 * upper bound, not a target: a batch with records is never held open for
 * it while the writer is free, and is held past it only while the writer
 * is busy or the processor is catching up.
 *
 * Pure: no clock, no I/O; the loop (tly_processor.c) passes what it knows
 * and does what the answer says.
 */
#ifndef TLY_GROUP_COMMIT_H
#define TLY_GROUP_COMMIT_H

#include <stdint.h>

typedef struct {
  int records;       /* records taken into the open batch (folded, dead-
                        lettered or forwarded) */
  int other_work;    /* work without records: acknowledged outbox entries to
                        delete, acknowledgement marks to record */
  int writer_busy;   /* the previous batch is still being written */
  int behind;        /* catching up: the last read filled up with records
                        older than the catch-up age */
  int full;          /* batch_max_events records were read this round */
  int64_t waited_ms; /* since the round began */
  int64_t round_ms;  /* the round's length (tly_processor.c: batch_max_ms,
                        at most the heartbeat interval, 10 ms while idle
                        with outputs on their way) */
} tly_group_commit_in_t;

typedef struct {
  int done;        /* 1: leave the read loop (the round is over) */
  int submit;      /* with done: hand the batch to the writer */
  int64_t wait_ms; /* else: read, waiting up to this long (>= 1) */
  int first_only;  /* and return at the first record (nothing to commit
                      yet: the loop drains what else is ready, then
                      decides again) */
} tly_group_commit_t;

tly_group_commit_t tly_group_commit_decide(const tly_group_commit_in_t *in);

#endif
