/*
 * tly_release.h - the fold's consumed messages destroyed on a thread of
 * their own ("tly-release").
 *
 * Why: librdkafka allocates a fetched message on its broker thread, so
 * glibc's free of it takes that thread's arena lock. In bench_fold the
 * fold thread slept on that lock about 1,000 times a second, 17 % of its
 * time (perf sched timehist), while the broker thread allocated the next
 * fetch. The fold thread is the processor's bottleneck; the release
 * thread shares the other core with the broker thread, and a wait there
 * costs nothing the fold waits for.
 *
 * A message is read-only once its record is folded; destroying it later
 * changes nothing the processor depends on (offsets are the processor's,
 * the fetch queue's size is counted when a message leaves it). Every
 * message handed over is destroyed before tly_release_drain returns,
 * which the processor calls before it closes the consumer (a consumer
 * cannot close with messages outstanding). If the thread cannot start,
 * or falls far behind, messages are destroyed on the caller's thread.
 */
#ifndef TLY_RELEASE_H
#define TLY_RELEASE_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>

typedef struct tly_release tly_release_t;

/* NULL when out of memory (tly_release_messages then destroys inline).
 * max_waiting: the most messages held for the thread, waiting or being
 * destroyed (0: 8,192); past it the caller destroys its own. */
tly_release_t *tly_release_new(size_t max_waiting);
/* Takes the n messages (destroyed, soon, on the release thread). */
void tly_release_messages(tly_release_t *release, rd_kafka_message_t **msgs,
                          size_t n);
/* Returns once every message handed over is destroyed. */
void tly_release_drain(tly_release_t *release);
/* Drains, stops the thread, frees. */
void tly_release_destroy(tly_release_t *release);

#endif
