/*
 * tly_release.c - the fold's Kafka messages freed off the fold thread
 * (tly_release.h).
 */
#include "tly_release.h"

#include <string.h>
#include <sys/prctl.h>

static void *release_main(void *arg) {
  tly_release_t *r = arg;
  prctl(PR_SET_NAME, "tly-release"); /* for top -H and perf */
  pthread_mutex_lock(&r->lock);
  for (;;) {
    while (r->head == r->tail && !r->quit)
      pthread_cond_wait(&r->work, &r->lock);
    if (r->head == r->tail)
      break; /* quit, and nothing left */
    size_t slot = r->tail % TLY_RELEASE_SLOTS, n = r->counts[slot];
    /* The slot is this thread's until tail moves past it. */
    pthread_mutex_unlock(&r->lock);
    for (size_t i = 0; i < n; i++)
      rd_kafka_message_destroy(r->msgs[slot][i]);
    pthread_mutex_lock(&r->lock);
    r->tail++;
    pthread_cond_broadcast(&r->drained);
  }
  pthread_mutex_unlock(&r->lock);
  return NULL;
}

int tly_release_start(tly_release_t *r) {
  memset(r, 0, sizeof(*r));
  pthread_mutex_init(&r->lock, NULL);
  pthread_cond_init(&r->work, NULL);
  pthread_cond_init(&r->drained, NULL);
  r->started = pthread_create(&r->thread, NULL, release_main, r) == 0;
  return r->started ? 0 : -1;
}

void tly_release_put(tly_release_t *r, rd_kafka_message_t **msgs, size_t n) {
  if (n == 0)
    return;
  if (r->started && n <= TLY_RELEASE_BATCH) {
    pthread_mutex_lock(&r->lock);
    if (r->head - r->tail < TLY_RELEASE_SLOTS && !r->quit) {
      size_t slot = r->head % TLY_RELEASE_SLOTS;
      memcpy(r->msgs[slot], msgs, n * sizeof(*msgs));
      r->counts[slot] = n;
      r->head++;
      pthread_cond_signal(&r->work);
      pthread_mutex_unlock(&r->lock);
      return;
    }
    pthread_mutex_unlock(&r->lock);
  }
  for (size_t i = 0; i < n; i++)
    rd_kafka_message_destroy(msgs[i]);
}

void tly_release_drain(tly_release_t *r) {
  if (!r->started)
    return;
  pthread_mutex_lock(&r->lock);
  while (r->head != r->tail)
    pthread_cond_wait(&r->drained, &r->lock);
  pthread_mutex_unlock(&r->lock);
}

void tly_release_stop(tly_release_t *r) {
  if (!r->started)
    return;
  pthread_mutex_lock(&r->lock);
  r->quit = 1;
  pthread_cond_signal(&r->work);
  pthread_mutex_unlock(&r->lock);
  pthread_join(r->thread, NULL); /* it frees what is left first */
  r->started = 0;
  pthread_mutex_destroy(&r->lock);
  pthread_cond_destroy(&r->work);
  pthread_cond_destroy(&r->drained);
}
