/*
 * tly_release.c - consumed messages destroyed off the fold thread
 * (tly_release.h).
 */
#define _GNU_SOURCE /* pthread_setname_np */
#include "tly_release.h"

#include "tly_thread.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Held for the thread at most, by default: 16 reads of 512. Past it the
 * caller destroys its own: the thread is behind, and a waiting message
 * keeps its fetch buffer alive, outside librdkafka's queue bound. */
#define RELEASE_MAX 8192

struct tly_release {
  pthread_mutex_t lock;
  pthread_cond_t wake, drained;
  pthread_t thread;
  int started, failed, stopping;
  rd_kafka_message_t **pending; /* handed over, not yet taken */
  size_t count, cap, max_waiting;
  rd_kafka_message_t **taken; /* the thread's: being destroyed (taken_count,
                                 0 while the thread waits) */
  size_t taken_cap, taken_count;
};

static void *release_main(void *arg) {
  tly_release_t *r = arg;
  tly_thread_become_helper(); /* below the fold thread (tly_thread.h) */
  pthread_mutex_lock(&r->lock);
  for (;;) {
    while (!r->count && !r->stopping)
      pthread_cond_wait(&r->wake, &r->lock);
    if (!r->count) /* stopping, nothing left */
      break;
    /* Swap the arrays: the fold thread appends to an empty one meanwhile. */
    rd_kafka_message_t **taken = r->pending;
    size_t n = r->count, cap = r->cap;
    r->pending = r->taken;
    r->cap = r->taken_cap;
    r->taken = taken;
    r->taken_cap = cap;
    r->count = 0;
    r->taken_count = n;
    pthread_mutex_unlock(&r->lock);
    for (size_t i = 0; i < n; i++)
      rd_kafka_message_destroy(taken[i]);
    pthread_mutex_lock(&r->lock);
    r->taken_count = 0;
    pthread_cond_broadcast(&r->drained);
  }
  pthread_mutex_unlock(&r->lock);
  return NULL;
}

tly_release_t *tly_release_new(size_t max_waiting) {
  tly_release_t *r = calloc(1, sizeof(*r));
  if (!r)
    return NULL;
  r->max_waiting = max_waiting ? max_waiting : RELEASE_MAX;
  pthread_mutex_init(&r->lock, NULL);
  pthread_cond_init(&r->wake, NULL);
  pthread_cond_init(&r->drained, NULL);
  return r;
}

static void destroy_inline(rd_kafka_message_t **msgs, size_t n) {
  for (size_t i = 0; i < n; i++)
    rd_kafka_message_destroy(msgs[i]);
}

void tly_release_messages(tly_release_t *r, rd_kafka_message_t **msgs,
                          size_t n) {
  if (!n)
    return;
  if (!r) {
    destroy_inline(msgs, n);
    return;
  }
  pthread_mutex_lock(&r->lock);
  if (!r->started && !r->failed) {
    if (pthread_create(&r->thread, NULL, release_main, r)) {
      r->failed = 1;
    } else {
      r->started = 1;
#if defined(__GLIBC__)
      pthread_setname_np(r->thread, "tly-release");
#endif
    }
  }
  /* Those being destroyed count too: their fetch buffers are alive. */
  int inline_now = r->failed || r->count + r->taken_count + n > r->max_waiting;
  if (!inline_now && r->count + n > r->cap) {
    size_t cap = r->cap ? r->cap : 1024;
    while (cap < r->count + n)
      cap *= 2;
    rd_kafka_message_t **grown = realloc(r->pending, cap * sizeof(*grown));
    if (grown) {
      r->pending = grown;
      r->cap = cap;
    } else {
      inline_now = 1;
    }
  }
  if (!inline_now) {
    memcpy(r->pending + r->count, msgs, n * sizeof(*msgs));
    if (!r->count)
      pthread_cond_signal(&r->wake);
    r->count += n;
  }
  pthread_mutex_unlock(&r->lock);
  if (inline_now)
    destroy_inline(msgs, n);
}

void tly_release_drain(tly_release_t *r) {
  if (!r)
    return;
  pthread_mutex_lock(&r->lock);
  while (r->count || r->taken_count)
    pthread_cond_wait(&r->drained, &r->lock);
  pthread_mutex_unlock(&r->lock);
}

void tly_release_destroy(tly_release_t *r) {
  if (!r)
    return;
  if (r->started) {
    pthread_mutex_lock(&r->lock);
    r->stopping = 1;
    pthread_cond_signal(&r->wake);
    pthread_mutex_unlock(&r->lock);
    pthread_join(r->thread, NULL); /* destroys what is left first */
  }
  destroy_inline(r->pending, r->count);
  free(r->pending);
  free(r->taken);
  pthread_cond_destroy(&r->drained);
  pthread_cond_destroy(&r->wake);
  pthread_mutex_destroy(&r->lock);
  free(r);
}
