/*
 * tly_stripe_emitter_internal.h - the Stripe usage emitter's state and
 * the work of one pass, shared by its files and private to them:
 *   tly_stripe_emitter.c          the thread, the pass and its rounds
 *                                 (intents, the changelog, requests,
 *                                 reconciling), start and stop;
 *   tly_stripe_emitter_work.c     what a pass works on, read from the
 *                                 store: marks, their subjects and windows,
 *                                 the folded totals; the oldest mark;
 *   tly_stripe_emitter_failure.c  a delta that will not reach Stripe: its
 *                                 dead letter and alert.
 * Include it nowhere else: the emitter's contract is tly_stripe_emitter.h.
 */
#ifndef TLY_STRIPE_EMITTER_INTERNAL_H
#define TLY_STRIPE_EMITTER_INTERNAL_H

#include "tly_alert.h"
#include "tly_billing.h"
#include "tly_stripe_emitter.h"
#include "tly_stripe_reconcile.h"

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Delivery reports of records produced with this opaque count as errors
 * (the producer flushes and checks them); the others are only logged. */
#define MUST_ACK ((void *)1)

/* A meter and the features it sums (features may share one). */
typedef struct {
  const char *event_name;
  const char *features[16];
  size_t feature_count;
} meter_t;

/* One mark as read: its key, and what it names. */
typedef struct {
  char *key;
  size_t key_len;
  int64_t at_ms;
  int32_t *hours;
  size_t hour_count;
} mark_t;

typedef struct {
  mark_t *items;
  size_t count, cap;
  int failed; /* out of memory or a malformed mark */
} mark_list_t;

struct tly_stripe_emitter {
  tly_stripe_emitter_conf_t conf;
  const tly_stripe_config_t *stripe;
  int64_t window_ms;
  meter_t *meters;
  size_t meter_count;
  tly_stripe_client_t *client;
  tly_stripe_reconciler_t *reconciler;
  int64_t clock_offset_ms; /* test-only (tly_stripe_reconcile.h) */
  rd_kafka_t *producer;
  tly_alert_codec_t *alert_codec;
  char *dlq_topic, *alerts_topic;
  const char *changelog_topic; /* the processor's; NULL: none */
  const char *writer_id;       /* names our changelog records */
  tly_store_batch_t *batch;
  int64_t rate_tat_us;

  pthread_t thread;
  int started;
  pthread_mutex_t lock;
  pthread_cond_t wake;
  int stopping; /* under lock */

  atomic_uint_least64_t sent, retried, failed;
  atomic_uint_least64_t reconciled_in, reconciled_resent;
  _Atomic int64_t oldest_at_ms; /* INT64_MAX: no mark */
  atomic_int delivery_errors;
};

/* A pass over one partition's marks, in one assignment of it here (a
 * partition lost and assigned again meanwhile was restored: what the pass
 * read of it is stale). */
typedef struct {
  int32_t partition;
  uint64_t generation;
  int pinned; /* holds kept until records produced under them are acked */
} pass_t;

/* A subject as a pass reads it. */
typedef struct {
  tly_subject_kind_t kind;
  const char *id;
  int32_t partition;
  tly_subject_record_t record; /* read once per subject */
} subject_t;

/* A delta that will not reach Stripe (tly_emitter_report_failure). */
typedef struct {
  const subject_t *subject;
  const meter_t *meter;
  int64_t window_start_ms;
  const char *identifier; /* names the delta */
  int64_t value;
  int64_t timestamp_s;
  const char *customer;
  long status;       /* Stripe's; 0 when never sent */
  const char *error; /* Stripe's message, or why it was not sent */
  char reason[600];  /* both, for the dead letter's and alert's text */
} failure_t;

/* A subject of the pass's marks and the windows they name. */
typedef struct {
  subject_t subject;
  const char *name; /* "kind:id", as its marks spell it */
  char *split;      /* name with its ':' a 0 (subject.id points into it) */
  int64_t *windows; /* sorted, each once */
  size_t window_count, window_cap;
  int deferred; /* something of it waits for a later pass */
} work_subject_t;

/* One (subject, meter, window) of the pass. */
typedef struct {
  size_t subject; /* index in the pass's subjects */
  const meter_t *meter;
  int64_t window_start_ms;
  char *key; /* of its cursor */
  size_t key_len;
  int64_t total; /* folded, read once per pass: later usage comes with a
                    mark of its own */
  int settled;
  int send;      /* an intent to send in this round */
  int fresh;     /* made in this round: to be stored */
  int reconcile; /* a pending intent to reconcile in this round */
  tly_stripe_cursor_t cursor;
  char identifier[TLY_STRIPE_IDENTIFIER_SIZE];
} slot_t;

typedef struct {
  pass_t pass;
  mark_list_t marks;
  work_subject_t *subjects;
  size_t subject_count;
  slot_t *slots;
  size_t slot_count, slot_cap;
} work_t;

/* The subject key ("kind:id") of a mark. */
static inline const char *mark_subject(const mark_t *mark) {
  return mark->key + 12;
}

/* tly_stripe_emitter_work.c */
int tly_emitter_collect_mark(void *opaque, const char *key, size_t key_len,
                             const char *value, size_t value_len);
void tly_emitter_work_clear(work_t *work);
int tly_emitter_collect_subjects(tly_stripe_emitter_t *e, work_t *work);
int tly_emitter_open_subject(tly_stripe_emitter_t *e, work_t *work,
                             size_t index);
void tly_emitter_update_oldest(tly_stripe_emitter_t *e, const int32_t *assigned,
                               size_t count);

/* tly_stripe_emitter_failure.c */
int tly_emitter_report_failure(tly_stripe_emitter_t *e, failure_t *failure);

/* tly_stripe_emitter.c */
int tly_emitter_flush_acked(tly_stripe_emitter_t *e);

#endif
