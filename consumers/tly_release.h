/*
 * tly_release.h - the fold's Kafka messages freed off the fold thread.
 *
 * A librdkafka message is freed into the allocator arena of the thread
 * that fetched it, under that arena's lock, and the free merges the block
 * with its neighbours: in bench_fold about a tenth of the fold thread's
 * time went to freeing the messages it had folded. The fold hands each
 * read's messages (at most TLY_RELEASE_BATCH) to this thread once it has
 * folded them, and goes on; the thread frees them on the other core. A
 * full ring (TLY_RELEASE_SLOTS reads waiting) is not waited for: that
 * read's messages are freed on the fold thread, as before.
 *
 * Nothing of a message is read after it is handed over (the fold is done
 * with it). The consumer must not be closed or destroyed with messages
 * outstanding: tly_release_drain before rd_kafka_consumer_close,
 * tly_release_stop before rd_kafka_destroy.
 */
#ifndef TLY_RELEASE_H
#define TLY_RELEASE_H

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stddef.h>

#define TLY_RELEASE_SLOTS 8
#define TLY_RELEASE_BATCH 512

typedef struct {
  pthread_t thread;
  int started;
  pthread_mutex_t lock;
  pthread_cond_t work, drained;
  /* A ring of reads: head is the next slot filled, tail the next freed
   * (both count up; the slot is the count modulo TLY_RELEASE_SLOTS). */
  rd_kafka_message_t *msgs[TLY_RELEASE_SLOTS][TLY_RELEASE_BATCH];
  size_t counts[TLY_RELEASE_SLOTS];
  unsigned long head, tail;
  int quit;
} tly_release_t;

/* 0, or -1 when the thread cannot start (messages are then freed by
 * tly_release_put itself). */
int tly_release_start(tly_release_t *release);
/* Hands over n messages (n <= TLY_RELEASE_BATCH); frees them here when the
 * ring is full or the thread is not running. */
void tly_release_put(tly_release_t *release, rd_kafka_message_t **msgs,
                     size_t n);
/* Returns once every message handed over is freed. */
void tly_release_drain(tly_release_t *release);
/* Drains and stops the thread (safe when it never started). */
void tly_release_stop(tly_release_t *release);

#endif
