/*
 * tly_stripe_emitter.c - the usage reporting emitter (see
 * tly_stripe_emitter.h for the protocol and what it guarantees).
 *
 * One pass: for each partition assigned here, read up to MARKS_PER_PASS
 * marks in key order, group them by subject, and settle each subject's
 * windows (meters x windows of the marked hours) in rounds: plan (a
 * pending intent to resend, or a new intent for the delta between the
 * folded total and what the cursor accounts for), store the new intents
 * and put them all on the changelog in one acknowledged flush, then send
 * them one by one; a pending intent too old to be sent under its
 * identifier is first reconciled against Stripe's summaries
 * (reconcile_round, tly_stripe_reconcile.h), one waiting for that is left
 * unsettled. A subject whose windows are all settled loses the marks
 * that were read; one that could not be settled (stop, the partition
 * moved away, Kafka refusing a dead letter) keeps them for a later pass.
 * Retries of one request happen in place: Stripe's limits and outages
 * concern every subject alike, so nothing is gained by moving on.
 *
 * This file is the loop: the thread, the pass and its rounds (intents, the
 * changelog, requests, reconciling, settling cursors and deleting marks),
 * start and stop. What a pass works on is read by
 * tly_stripe_emitter_work.c; a delta that will not reach Stripe goes to
 * tly_stripe_emitter_failure.c (dead letter and alert).
 */
#include "tly_stripe_emitter.h"

#include "tally_producer.h"
#include "tly_alert.h"
#include "tly_billing.h"
#include "tly_changelog.h"
#include "tly_kafka_client.h"
#include "tly_keys.h"
#include "tly_log.h"
#include "tly_stripe_emitter_internal.h"
#include "tly_stripe_reconcile.h"
#include "tly_topic_names.h"

#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define IDLE_WAIT_MS 200
#define FLUSH_TIMEOUT_MS 30000
#define METER_EVENTS_PATH "/v1/billing/meter_events"

/* ---- the emitter -------------------------------------------------------- */

typedef enum {
  SETTLED = 0, /* nothing left to do for it now */
  DEFERRED,    /* try again on a later pass */
  EXPIRED      /* its identifier may no longer be sent: reconcile later */
} settle_t;

/* The emitter's clock (the wall clock, plus the test-only offset). */
static int64_t clock_s(const tly_stripe_emitter_t *e) {
  return (tly_wall_ms() + e->clock_offset_ms) / 1000;
}

/* When an intent was made: recorded, or (an intent of before that was
 * recorded) its timestamp, which is never later. */
static int64_t made_at_s(const tly_stripe_cursor_t *cursor) {
  return cursor->made_at_s ? cursor->made_at_s : cursor->timestamp_s;
}

static int stopping(tly_stripe_emitter_t *e) {
  pthread_mutex_lock(&e->lock);
  int stop = e->stopping;
  pthread_mutex_unlock(&e->lock);
  return stop;
}

/* Sleeps ms, or less when stopping. Returns 1 when stopping. */
static int pause_ms(tly_stripe_emitter_t *e, int64_t ms) {
  struct timespec until;
  clock_gettime(CLOCK_MONOTONIC, &until); /* the condition's clock */
  until.tv_sec += (time_t)(ms / 1000);
  until.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (until.tv_nsec >= 1000000000L) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&e->lock);
  while (!e->stopping &&
         pthread_cond_timedwait(&e->wake, &e->lock, &until) == 0)
    ;
  int stop = e->stopping;
  pthread_mutex_unlock(&e->lock);
  return stop;
}

/* Holds the partition (the gate's hold) while the pass may go on: not
 * stopping, the partition still assigned here in the pass's generation.
 * 1 held (release it), 0 not. */
static int hold(tly_stripe_emitter_t *e, const pass_t *pass) {
  uint64_t generation = pass->generation;
  return !stopping(e) &&
         e->conf.gate.hold(e->conf.gate.opaque, pass->partition, &generation);
}

static void release(tly_stripe_emitter_t *e, const pass_t *pass) {
  e->conf.gate.release(e->conf.gate.opaque, pass->partition);
}

/* Releases the holds kept for records produced under them, once Kafka
 * acknowledged those (wait: flush first; else only when nothing waits). A
 * revocation waits for them: a cursor of this instance landing on the
 * changelog after the next owner's would be the one compaction keeps. */
static void unpin(tly_stripe_emitter_t *e, pass_t *pass, int wait) {
  if (!pass->pinned)
    return;
  if (wait)
    rd_kafka_flush(e->producer, FLUSH_TIMEOUT_MS);
  else if (rd_kafka_outq_len(e->producer) > 0)
    return;
  for (; pass->pinned > 0; pass->pinned--)
    release(e, pass);
}

/* The work may go on (a check, nothing held). */
static int may_continue(tly_stripe_emitter_t *e, const pass_t *pass) {
  if (!hold(e, pass))
    return 0;
  release(e, pass);
  return 1;
}

/* ---- cursors: the store, the changelog, Kafka's acknowledgements -------- */

/* What the changelog compares cursors by (tly_changelog.h: newest wins):
 * every step of a cursor raises it. An intent (pending) is one above the
 * totals it was made at; its outcome adds the pending amount to reported
 * or failed, above the intent. */
static int64_t cursor_version(const tly_stripe_cursor_t *cursor) {
  return 2 * (cursor->reported + cursor->failed + 2 * cursor->retracted) +
         (cursor->pending != 0);
}

/* Commits what the batch holds (synced or not). 0 or -1 (logged). */
static int commit_batch(tly_stripe_emitter_t *e, int sync, const char *what) {
  char errstr[512];
  int rc =
      tly_store_commit(e->conf.store, e->batch, sync, errstr, sizeof(errstr));
  tly_store_batch_clear(e->batch);
  if (rc)
    tly_log(TLY_LOG_ERROR, "stripe", "%s: %s", what, errstr);
  return rc;
}

static void stage_cursor(tly_stripe_emitter_t *e, const char *key,
                         size_t key_len, const tly_stripe_cursor_t *cursor) {
  unsigned char value[TLY_STRIPE_CURSOR_MAX];
  size_t len = tly_stripe_cursor_encode(cursor, value);
  tly_store_batch_put(e->batch, TLY_CF_CURSORS, key, key_len, value, len);
}

/* Produces a record of the partition's changelog (tly_changelog.h): a
 * cursor ([kind C][key], [version][cursor]), or with cursor NULL a mark's
 * deletion ([kind R][key], null). Nothing without a changelog. 0 or -1. */
static int produce_changelog(tly_stripe_emitter_t *e, int32_t partition,
                             char kind, const char *key, size_t key_len,
                             const tly_stripe_cursor_t *cursor, void *opaque) {
  unsigned char record_key[TLY_KEY_MAX + 256], value[8 + TLY_STRIPE_CURSOR_MAX];
  size_t value_len = 0;
  if (!e->changelog_topic)
    return 0;
  if (1 + key_len > sizeof(record_key))
    return -1;
  record_key[0] = (unsigned char)kind;
  memcpy(record_key + 1, key, key_len);
  if (cursor) {
    tly_put_be64(value, (uint64_t)cursor_version(cursor));
    value_len = 8 + tly_stripe_cursor_encode(cursor, value + 8);
  }
  rd_kafka_headers_t *headers = rd_kafka_headers_new(1);
  rd_kafka_header_add(headers, TLY_CHANGELOG_WRITER_HEADER, -1, e->writer_id,
                      -1);
  rd_kafka_resp_err_t err = rd_kafka_producev(
      e->producer, RD_KAFKA_V_TOPIC(e->changelog_topic),
      RD_KAFKA_V_PARTITION(partition), RD_KAFKA_V_KEY(record_key, 1 + key_len),
      RD_KAFKA_V_VALUE(cursor ? value : NULL, value_len),
      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(headers),
      RD_KAFKA_V_OPAQUE(opaque), RD_KAFKA_V_END);
  if (err) {
    rd_kafka_headers_destroy(headers);
    tly_log(TLY_LOG_WARN, "stripe", "producing to %s: %s", e->changelog_topic,
            rd_kafka_err2str(err));
    return -1;
  }
  return 0;
}

/* Waits until Kafka acknowledged everything produced so far; 0, or -1
 * when a record produced with MUST_ACK since errors were reset failed. */
int tly_emitter_flush_acked(tly_stripe_emitter_t *e) {
  return rd_kafka_flush(e->producer, FLUSH_TIMEOUT_MS) ==
                     RD_KAFKA_RESP_ERR_NO_ERROR &&
                 !atomic_load(&e->delivery_errors)
             ? 0
             : -1;
}

/* A cursor after its request's outcome: stored (unsynced: lost to a
 * crash, the intent is resent exactly and Stripe answers as before) and
 * published without waiting (a successor that sees only the intent
 * resends it likewise), while the pass still holds the partition; the
 * hold is kept until Kafka has the record (unpin). 0 or -1 (the batch is
 * cleared either way). */
static int settle_cursor(tly_stripe_emitter_t *e, pass_t *pass, const char *key,
                         size_t key_len, const tly_stripe_cursor_t *cursor) {
  if (!hold(e, pass)) {
    tly_store_batch_clear(e->batch);
    return -1;
  }
  stage_cursor(e, key, key_len, cursor);
  int rc = commit_batch(e, 0, "writing a report cursor");
  if (!rc &&
      !produce_changelog(e, pass->partition, TLY_CHANGELOG_CURSOR, key, key_len,
                         cursor, NULL) &&
      e->changelog_topic) {
    pass->pinned++;
    return 0;
  }
  release(e, pass);
  return rc;
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg,
                        void *opaque) {
  tly_stripe_emitter_t *e = opaque;
  (void)rk;
  if (msg->err) {
    if (msg->_private == MUST_ACK)
      atomic_fetch_add(&e->delivery_errors, 1);
    tly_log(TLY_LOG_WARN, "stripe", "producing to %s: %s",
            rd_kafka_topic_name(msg->rkt), rd_kafka_err2str(msg->err));
  }
}

/* ---- sending ------------------------------------------------------------ */

/* Waits for the request rate's next token, unpinning what Kafka has
 * acknowledged meanwhile. 0 when a request may go, 1 when the pass must
 * stop (stopping, or the partition moved). */
static int await_turn(tly_stripe_emitter_t *e, pass_t *pass) {
  for (;;) {
    unpin(e, pass, 0);
    if (!may_continue(e, pass))
      return 1;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    int64_t wait_us = tly_stripe_rate_wait_us(
        &e->rate_tat_us, now.tv_sec * 1000000LL + now.tv_nsec / 1000,
        e->stripe->max_requests_per_s);
    if (!wait_us)
      return 0;
    pause_ms(e, (wait_us + 999) / 1000);
  }
}

/* Backs off before retry number attempt (logged with what). 0, or 1 when
 * stopping. */
static int back_off(tly_stripe_emitter_t *e, pass_t *pass, int attempt,
                    int64_t retry_after_s, const char *what) {
  atomic_fetch_add(&e->retried, 1);
  uint32_t random = 0;
  RAND_bytes((unsigned char *)&random, sizeof(random));
  int64_t wait = tly_stripe_backoff_ms(attempt, e->stripe->retry_max_s,
                                       retry_after_s, random);
  tly_log(TLY_LOG_WARN, "stripe", "%s; retrying in %" PRId64 " ms", what, wait);
  unpin(e, pass, 1);
  return pause_ms(e, wait);
}

/* A fresh Idempotency-Key for the identifier: identifier-<16 hex>. */
#define KEY_SIZE (TLY_STRIPE_IDENTIFIER_SIZE + 17)
static void fresh_key(const char *identifier, char out[KEY_SIZE]) {
  unsigned char random[8] = {0};
  RAND_bytes(random, sizeof(random));
  int len = snprintf(out, KEY_SIZE, "%s-", identifier);
  for (size_t i = 0; i < sizeof(random) && len + 2 < KEY_SIZE; i++, len += 2)
    snprintf(out + len, 3, "%02x", random[i]);
}

/* Sends the cursor's pending intent until Stripe accepts or refuses it.
 * DEFERRED when it had to stop first (the intent stays for later), EXPIRED
 * once the intent is too old to be sent under its identifier (it is
 * reconciled later). */
static settle_t send_pending(tly_stripe_emitter_t *e, pass_t *pass,
                             const meter_t *meter,
                             const tly_stripe_cursor_t *cursor,
                             const char *identifier,
                             tly_stripe_outcome_t *outcome, long *status,
                             char *error, size_t error_size) {
  char value[24], timestamp[24], key[KEY_SIZE];
  snprintf(value, sizeof(value), "%" PRId64, cursor->pending);
  snprintf(timestamp, sizeof(timestamp), "%" PRId64, cursor->timestamp_s);
  /* The first Idempotency-Key is the identifier itself. */
  snprintf(key, sizeof(key), "%s", identifier);
  const tly_stripe_param_t params[] = {
      {"event_name", meter->event_name},
      {"payload[stripe_customer_id]", cursor->customer},
      {"payload[value]", value},
      {"identifier", identifier},
      {"timestamp", timestamp},
  };
  for (int attempt = 0;; attempt++) {
    if (await_turn(e, pass))
      return DEFERRED;
    if (tly_stripe_intent_phase(made_at_s(cursor), clock_s(e)) !=
        TLY_STRIPE_INTENT_SEND) {
      tly_log(TLY_LOG_WARN, "stripe",
              "meter event %s (%s): unsettled for %lld h, Stripe may no "
              "longer know its identifier; not sent again, reconciled "
              "later",
              identifier, meter->event_name,
              (long long)(TLY_STRIPE_RESEND_FOR_S / 3600));
      return EXPIRED;
    }
    tly_stripe_response_t response;
    int answered = tly_stripe_post(e->client, METER_EVENTS_PATH, params,
                                   sizeof(params) / sizeof(params[0]), key,
                                   &response) == 0;
    *outcome = tly_stripe_report_outcome(answered, &response);
    *status = answered ? response.status : 0;
    if (answered)
      tly_stripe_error_message(response.body, error, error_size);
    else
      snprintf(error, error_size, "%s", response.error);
    int64_t retry_after_s = response.retry_after_s;
    tly_stripe_response_clear(&response);
    if (*outcome != TLY_STRIPE_RETRY && *outcome != TLY_STRIPE_RETRY_NEW_KEY)
      return SETTLED;
    char what[KEY_SIZE + 800];
    snprintf(what, sizeof(what), "meter event %s (%s, key %s): %s%ld %s%s",
             identifier, meter->event_name, key, answered ? "status " : "",
             *status, error,
             *outcome == TLY_STRIPE_RETRY_NEW_KEY
                 ? " (the key's answer will not change: a fresh key, the "
                   "same identifier)"
                 : "");
    if (*outcome == TLY_STRIPE_RETRY_NEW_KEY)
      fresh_key(identifier, key);
    if (back_off(e, pass, attempt, retry_after_s, what))
      return DEFERRED;
  }
}

/* ---- one pass ----------------------------------------------------------- */

/* Rounds of intents and requests per pass: a pending intent resent, then
 * the delta to the total read; more only when something was refused. */
#define ROUNDS_PER_PASS 4

/* A delta whose window is older than Stripe takes: counted failed, with
 * its dead letter and alert. 0 or -1 (the slot's subject waits). */
static int fail_too_old(tly_stripe_emitter_t *e, work_t *work, slot_t *slot,
                        int64_t delta) {
  work_subject_t *subject = &work->subjects[slot->subject];
  failure_t failure = {.subject = &subject->subject,
                       .meter = slot->meter,
                       .window_start_ms = slot->window_start_ms,
                       .identifier = slot->identifier,
                       .value = delta,
                       .timestamp_s = slot->cursor.timestamp_s,
                       .customer = slot->cursor.customer,
                       .error = "window older than Stripe's 35 days: not sent"};
  if (tly_emitter_report_failure(e, &failure))
    return -1;
  tly_stripe_cursor_settle(&slot->cursor, delta, 1);
  stage_cursor(e, slot->key, slot->key_len, &slot->cursor);
  if (commit_batch(e, 1, "writing a report cursor"))
    return -1;
  produce_changelog(e, work->pass.partition, TLY_CHANGELOG_CURSOR, slot->key,
                    slot->key_len, &slot->cursor, NULL);
  atomic_fetch_add(&e->failed, 1);
  return 0;
}

/* Decides each open slot's next step: settled (nothing left to send), an
 * intent to send (the one pending, or a new one for the delta to the
 * total), or a delta too old for Stripe (counted failed here). Holding the
 * partition, the new intents are stored (synced) and then every intent is
 * put on the changelog, acknowledged by Kafka, before any request
 * leaves: whoever reports the partition next resends them exactly, never
 * another value under their identifiers. 1 when there is something to
 * send, 0 when not, -1 when the pass must stop. */
static int plan_round(tly_stripe_emitter_t *e, work_t *work) {
  char errstr[512];
  size_t sends = 0, too_old = 0, reconciles = 0;
  if (!hold(e, &work->pass))
    return -1;
  for (size_t i = 0; i < work->slot_count; i++) {
    slot_t *slot = &work->slots[i];
    work_subject_t *subject = &work->subjects[slot->subject];
    slot->send = slot->fresh = slot->reconcile = 0;
    if (slot->settled || subject->deferred)
      continue;
    char *stored = NULL;
    size_t stored_len = 0;
    int found =
        tly_store_get(e->conf.store, TLY_CF_CURSORS, slot->key, slot->key_len,
                      &stored, &stored_len, errstr, sizeof(errstr));
    int bad = found > 0 &&
              tly_stripe_cursor_decode(stored, stored_len, &slot->cursor);
    tly_store_free(stored);
    if (found < 0 || bad) {
      tly_log(TLY_LOG_ERROR, "stripe", "reading a report cursor of %s: %s",
              subject->subject.id, bad ? "corrupt" : errstr);
      subject->deferred = 1;
      continue;
    }
    if (!found)
      memset(&slot->cursor, 0, sizeof(slot->cursor));
    /* Named by what was accounted before it: the same for every resend. */
    tly_stripe_report_identifier(work->pass.partition, subject->subject.kind,
                                 subject->subject.id, slot->meter->event_name,
                                 slot->window_start_ms, &slot->cursor,
                                 slot->identifier);
    if (!slot->cursor.pending) {
      int64_t delta = slot->total - slot->cursor.reported - slot->cursor.failed;
      const char *customer = subject->subject.record.account.stripe_customer_id;
      /* A correction lowered the window (tly_corrections.h): what was
       * counted failed (never in Stripe) is taken back first, without a
       * request; the rest goes to Stripe as a negative meter event. */
      if (delta < 0 && slot->cursor.failed > 0) {
        int64_t back =
            -delta < slot->cursor.failed ? -delta : slot->cursor.failed;
        slot->cursor.failed -= back;
        slot->cursor.retracted += back;
        delta += back;
        stage_cursor(e, slot->key, slot->key_len, &slot->cursor);
        if (commit_batch(e, 1, "writing a report cursor")) {
          subject->deferred = 1;
          continue;
        }
        produce_changelog(e, work->pass.partition, TLY_CHANGELOG_CURSOR,
                          slot->key, slot->key_len, &slot->cursor, NULL);
        tly_stripe_report_identifier(
            work->pass.partition, subject->subject.kind, subject->subject.id,
            slot->meter->event_name, slot->window_start_ms, &slot->cursor,
            slot->identifier);
      }
      if (delta == 0 || !customer[0]) {
        slot->settled = 1; /* an unlinked subject has no one to bill */
        continue;
      }
      int64_t now_s = clock_s(e);
      int64_t window_end_s = (slot->window_start_ms + e->window_ms) / 1000;
      slot->cursor.pending = delta;
      slot->cursor.made_at_s = now_s;
      slot->cursor.generation = 0;
      slot->cursor.timestamp_s =
          window_end_s - 1 < now_s ? window_end_s - 1 : now_s;
      snprintf(slot->cursor.customer, sizeof(slot->cursor.customer), "%s",
               customer);
      if (slot->cursor.timestamp_s <
          now_s - TLY_STRIPE_MAX_AGE_S + TLY_STRIPE_AGE_MARGIN_S) {
        if (fail_too_old(e, work, slot, delta))
          subject->deferred = 1;
        else
          slot->settled = 1;
        too_old++;
        continue;
      }
      slot->fresh = 1;
    } else {
      /* Sent under its identifier only while Stripe surely still knows
       * it; then left alone, then reconciled (tly_stripe_reconcile.h). The
       * slot stays unsettled meanwhile: its marks wait. */
      tly_stripe_intent_phase_t phase =
          tly_stripe_intent_phase(made_at_s(&slot->cursor), clock_s(e));
      if (phase == TLY_STRIPE_INTENT_WAIT)
        continue;
      if (phase == TLY_STRIPE_INTENT_RECONCILE) {
        slot->reconcile = 1;
        reconciles++;
        continue;
      }
    }
    slot->send = 1;
    sends++;
  }
  int failed = 0;
  if (sends) {
    for (size_t i = 0; i < work->slot_count; i++)
      if (work->slots[i].send && work->slots[i].fresh)
        stage_cursor(e, work->slots[i].key, work->slots[i].key_len,
                     &work->slots[i].cursor);
    failed = commit_batch(e, 1, "writing report intents");
    atomic_store(&e->delivery_errors, 0);
    for (size_t i = 0; i < work->slot_count && !failed; i++)
      if (work->slots[i].send)
        failed = produce_changelog(
            e, work->pass.partition, TLY_CHANGELOG_CURSOR, work->slots[i].key,
            work->slots[i].key_len, &work->slots[i].cursor, MUST_ACK);
    if (!failed && tly_emitter_flush_acked(e)) {
      tly_log(TLY_LOG_WARN, "stripe",
              "report intents of partition %d not acknowledged by %s: sent "
              "later",
              (int)work->pass.partition, e->changelog_topic);
      failed = 1;
    }
  } else if (too_old) {
    rd_kafka_flush(e->producer, FLUSH_TIMEOUT_MS); /* as unpin does */
  }
  release(e, &work->pass);
  if (failed) {
    for (size_t i = 0; i < work->slot_count; i++)
      work->slots[i].send = work->slots[i].reconcile = 0;
    return -1;
  }
  return sends + reconciles > 0;
}

/* ---- reconciling intents older than Stripe's identifier window --------- */

typedef struct {
  tly_stripe_emitter_t *e;
  pass_t *pass;
} turn_t;

static int turn_before_request(void *opaque) {
  turn_t *turn = opaque;
  return await_turn(turn->e, turn->pass);
}

static int turn_back_off(void *opaque, int attempt, int64_t retry_after_s,
                         const char *what) {
  turn_t *turn = opaque;
  return back_off(turn->e, turn->pass, attempt, retry_after_s, what);
}

/* Stores the slot's intent (synced) and puts it on the changelog,
 * acknowledged, before it is sent, as plan_round does. 0 or -1. */
static int store_intent(tly_stripe_emitter_t *e, work_t *work, slot_t *slot) {
  if (!hold(e, &work->pass))
    return -1;
  stage_cursor(e, slot->key, slot->key_len, &slot->cursor);
  int failed = commit_batch(e, 1, "writing a report intent");
  atomic_store(&e->delivery_errors, 0);
  if (!failed)
    failed =
        produce_changelog(e, work->pass.partition, TLY_CHANGELOG_CURSOR,
                          slot->key, slot->key_len, &slot->cursor, MUST_ACK) ||
        tly_emitter_flush_acked(e);
  release(e, &work->pass);
  return failed ? -1 : 0;
}

/* Reconciles the round's intents that are too old to be sent under their
 * identifier: in Stripe's total, reported; not in it, made again under a
 * new identifier and sent in this round; undetermined, failed (never
 * resent blind). 0, or -1 when the pass must stop. */
static int reconcile_round(tly_stripe_emitter_t *e, work_t *work) {
  for (size_t i = 0; i < work->slot_count; i++) {
    slot_t *slot = &work->slots[i];
    work_subject_t *subject = &work->subjects[slot->subject];
    if (!slot->reconcile || subject->deferred)
      continue;
    slot->reconcile = 0;
    tly_stripe_cursor_t *cursor = &slot->cursor;
    char reason[600];
    int64_t total;
    tly_stripe_verdict_t verdict;
    turn_t turn = {e, &work->pass};
    tly_stripe_hooks_t hooks = {turn_before_request, turn_back_off, &turn};
    tly_stripe_intent_t intent = {.event_name = slot->meter->event_name,
                                  .customer = cursor->customer,
                                  .identifier = slot->identifier,
                                  .window_start_ms = slot->window_start_ms,
                                  .window_ms = e->window_ms,
                                  .timestamp_s = cursor->timestamp_s,
                                  .reported = cursor->reported,
                                  .pending = cursor->pending};
    if (tly_stripe_reconcile_intent(e->reconciler, &intent, &hooks, &verdict,
                                    &total, reason, sizeof(reason)))
      return -1;
    if (verdict == TLY_STRIPE_NOT_IN_STRIPE) {
      cursor->generation++;
      cursor->made_at_s = clock_s(e);
      tly_stripe_report_identifier(work->pass.partition, subject->subject.kind,
                                   subject->subject.id, slot->meter->event_name,
                                   slot->window_start_ms, cursor,
                                   slot->identifier);
      if (store_intent(e, work, slot))
        return -1;
      tly_log(TLY_LOG_WARN, "stripe",
              "%s: %s %" PRId64 " of window %" PRId64 " is not in Stripe's "
              "total (%" PRId64 ") after 24 h: sent again as %s",
              subject->name, slot->meter->event_name, cursor->pending,
              slot->window_start_ms, total, slot->identifier);
      atomic_fetch_add(&e->reconciled_resent, 1);
      slot->send = 1; /* send_round sends it */
      continue;
    }
    if (verdict == TLY_STRIPE_UNDETERMINED) {
      failure_t failure = {.subject = &subject->subject,
                           .meter = slot->meter,
                           .window_start_ms = slot->window_start_ms,
                           .identifier = slot->identifier,
                           .value = cursor->pending,
                           .timestamp_s = cursor->timestamp_s,
                           .customer = cursor->customer,
                           .error = reason};
      if (tly_emitter_report_failure(e, &failure)) {
        subject->deferred = 1; /* the intent stays: reconciled later */
        continue;
      }
      tly_stripe_cursor_settle(cursor, 0, 1);
      atomic_fetch_add(&e->failed, 1);
    } else {
      tly_log(TLY_LOG_INFO, "stripe",
              "%s: %s %" PRId64 " of window %" PRId64 " found in Stripe's "
              "total after 24 h: reported",
              subject->name, slot->meter->event_name, cursor->pending,
              slot->window_start_ms);
      tly_stripe_cursor_settle(cursor, 0, 0);
      atomic_fetch_add(&e->sent, 1);
      atomic_fetch_add(&e->reconciled_in, 1);
    }
    if (settle_cursor(e, &work->pass, slot->key, slot->key_len, cursor))
      return -1;
  }
  return 0;
}

/* Sends the round's intents, each until Stripe accepts or refuses it,
 * and settles its cursor. 0, or -1 when the pass must stop. */
static int send_round(tly_stripe_emitter_t *e, work_t *work) {
  char error[512];
  for (size_t i = 0; i < work->slot_count; i++) {
    slot_t *slot = &work->slots[i];
    work_subject_t *subject = &work->subjects[slot->subject];
    if (!slot->send || subject->deferred)
      continue;
    slot->send = 0;
    tly_stripe_outcome_t outcome;
    long status;
    settle_t sent =
        send_pending(e, &work->pass, slot->meter, &slot->cursor,
                     slot->identifier, &outcome, &status, error, sizeof(error));
    if (sent == DEFERRED)
      return -1;
    if (sent == EXPIRED)
      continue; /* the intent stays, unsettled: reconciled later */
    if (outcome == TLY_STRIPE_REFUSED) {
      failure_t failure = {.subject = &subject->subject,
                           .meter = slot->meter,
                           .window_start_ms = slot->window_start_ms,
                           .identifier = slot->identifier,
                           .value = slot->cursor.pending,
                           .timestamp_s = slot->cursor.timestamp_s,
                           .customer = slot->cursor.customer,
                           .status = status,
                           .error = error};
      if (tly_emitter_report_failure(e, &failure)) {
        subject->deferred = 1; /* the intent stays: resent later */
        continue;
      }
      tly_stripe_cursor_settle(&slot->cursor, 0, 1);
      atomic_fetch_add(&e->failed, 1);
    } else {
      tly_stripe_cursor_settle(&slot->cursor, 0, 0);
      atomic_fetch_add(&e->sent, 1);
    }
    if (settle_cursor(e, &work->pass, slot->key, slot->key_len, &slot->cursor))
      return -1;
  }
  return 0;
}

/* Deletes the marks of every subject whose windows are all settled (and
 * puts their deletions on the changelog). Returns how many subjects. */
static int delete_settled_marks(tly_stripe_emitter_t *e, work_t *work) {
  int settled = 0;
  if (!hold(e, &work->pass))
    return 0;
  for (size_t i = 0; i < work->subject_count; i++) {
    work_subject_t *subject = &work->subjects[i];
    int done = !subject->deferred;
    for (size_t s = 0; s < work->slot_count && done; s++)
      done = work->slots[s].subject != i || work->slots[s].settled;
    if (!done)
      continue;
    settled++;
    for (size_t m = 0; m < work->marks.count; m++)
      if (strcmp(mark_subject(&work->marks.items[m]), subject->name) == 0)
        tly_store_batch_delete(e->batch, TLY_CF_REPORTS,
                               work->marks.items[m].key,
                               work->marks.items[m].key_len);
  }
  /* Unsynced: a delete lost to a crash only makes the subject be looked
   * at again, and found settled. */
  int rc = settled ? commit_batch(e, 0, "deleting report marks") : 0;
  for (size_t i = 0; i < work->subject_count && !rc; i++) {
    work_subject_t *subject = &work->subjects[i];
    int done = !subject->deferred;
    for (size_t s = 0; s < work->slot_count && done; s++)
      done = work->slots[s].subject != i || work->slots[s].settled;
    for (size_t m = 0; m < work->marks.count && done; m++)
      if (strcmp(mark_subject(&work->marks.items[m]), subject->name) == 0)
        produce_changelog(e, work->pass.partition, TLY_CHANGELOG_REPORT,
                          work->marks.items[m].key,
                          work->marks.items[m].key_len, NULL, NULL);
  }
  release(e, &work->pass);
  return rc ? 0 : settled;
}

/* One pass over the partition's marks: reads up to MARKS_PER_PASS, then
 * rounds of intents (made durable on the changelog together) and their
 * requests until every window they name is settled. Returns how many
 * subjects were settled, or -1 when nothing could be done (an error,
 * logged). */
static int pass_partition(tly_stripe_emitter_t *e, int32_t partition) {
  char errstr[512], prefix[4];
  work_t work = {.pass = {.partition = partition}};
  /* The assignment the pass works in, from before anything is read. */
  if (!e->conf.gate.hold(e->conf.gate.opaque, partition, &work.pass.generation))
    return 0;
  e->conf.gate.release(e->conf.gate.opaque, partition);
  tly_put_be32((unsigned char *)prefix, (uint32_t)partition);
  if (tly_store_scan_prefix(e->conf.store, TLY_CF_REPORTS, prefix, 4,
                            tly_emitter_collect_mark, &work.marks, errstr,
                            sizeof(errstr)) ||
      work.marks.failed) {
    tly_log(TLY_LOG_ERROR, "stripe", "reading report marks of partition %d: %s",
            (int)partition,
            work.marks.failed ? "out of memory or corrupt" : errstr);
    tly_emitter_work_clear(&work);
    return -1;
  }
  if (!work.marks.count) {
    tly_emitter_work_clear(&work);
    return 0;
  }
  int failed = tly_emitter_collect_subjects(e, &work) != 0;
  for (size_t i = 0; i < work.subject_count && !failed; i++)
    failed = tly_emitter_open_subject(e, &work, i) != 0;
  if (failed) {
    tly_log(TLY_LOG_ERROR, "stripe", "partition %d: out of memory",
            (int)partition);
    tly_emitter_work_clear(&work);
    return -1;
  }
  int settled = 0, stopped = 0;
  for (int round = 0; round < ROUNDS_PER_PASS && !stopped; round++) {
    int planned = plan_round(e, &work);
    if (planned <= 0) {
      stopped = planned < 0;
      break;
    }
    stopped = reconcile_round(e, &work) != 0 || send_round(e, &work) != 0;
  }
  unpin(e, &work.pass, 1);
  if (!stopped)
    settled = delete_settled_marks(e, &work);
  tly_emitter_work_clear(&work);
  return settled;
}

static void *emitter_main(void *arg) {
  tly_stripe_emitter_t *e = arg;
  int32_t *assigned = NULL;
  size_t cap = 0;
  while (!stopping(e)) {
    size_t count = e->conf.gate.assigned(e->conf.gate.opaque, assigned, cap);
    if (count > cap) {
      int32_t *grown =
          count == SIZE_MAX ? NULL : realloc(assigned, count * sizeof(*grown));
      if (grown) {
        assigned = grown;
        cap = count;
      } else {
        pause_ms(e, IDLE_WAIT_MS);
      }
      continue;
    }
    int settled = 0;
    for (size_t i = 0; i < count && !stopping(e); i++) {
      int n = pass_partition(e, assigned[i]);
      settled += n > 0 ? n : 0;
    }
    tly_emitter_update_oldest(e, assigned, count);
    if (!settled)
      pause_ms(e, IDLE_WAIT_MS);
  }
  free(assigned);
  return NULL;
}

/* ---- lifecycle ---------------------------------------------------------- */

void tly_stripe_emitter_stop(tly_stripe_emitter_t *e) {
  if (!e)
    return;
  if (e->started) {
    pthread_mutex_lock(&e->lock);
    e->stopping = 1;
    pthread_cond_broadcast(&e->wake);
    pthread_mutex_unlock(&e->lock);
    pthread_join(e->thread, NULL);
  }
  if (e->producer) {
    rd_kafka_flush(e->producer, FLUSH_TIMEOUT_MS);
    rd_kafka_destroy(e->producer);
  }
  tly_stripe_reconciler_destroy(e->reconciler);
  tly_stripe_client_destroy(e->client);
  tly_alert_codec_destroy(e->alert_codec);
  tly_store_batch_destroy(e->batch);
  free(e->meters);
  free(e->dlq_topic);
  free(e->alerts_topic);
  pthread_cond_destroy(&e->wake);
  pthread_mutex_destroy(&e->lock);
  free(e);
}

/* The configured meters, features of one event_name together. */
static int collect_meters(tly_stripe_emitter_t *e, char *errstr,
                          size_t errstr_size) {
  const tly_stripe_config_t *stripe = e->stripe;
  e->meters = calloc(stripe->meter_count + 1, sizeof(*e->meters));
  if (!e->meters) {
    snprintf(errstr, errstr_size, "out of memory");
    return -1;
  }
  for (size_t i = 0; i < stripe->meter_count; i++) {
    meter_t *meter = NULL;
    for (size_t m = 0; m < e->meter_count && !meter; m++)
      if (strcmp(e->meters[m].event_name, stripe->meters[i].event_name) == 0)
        meter = &e->meters[m];
    if (!meter) {
      meter = &e->meters[e->meter_count++];
      meter->event_name = stripe->meters[i].event_name;
    }
    if (meter->feature_count == sizeof(meter->features) / sizeof(char *)) {
      snprintf(errstr, errstr_size,
               "stripe.meters: at most 16 features per meter");
      return -1;
    }
    meter->features[meter->feature_count++] = stripe->meters[i].feature;
  }
  return 0;
}

static rd_kafka_t *new_producer(tly_stripe_emitter_t *e, char *errstr,
                                size_t errstr_size) {
  static const char *const defaults[] = {"enable.idempotence=true",
                                         "linger.ms=5",
                                         TLY_KAFKA_PARTITIONER_PROPERTY, NULL};
  char kafka_err[512];
  rd_kafka_conf_t *kconf = rd_kafka_conf_new();
  tly_kafka_conf_log(kconf);
  if (rd_kafka_conf_set(kconf, "bootstrap.servers", e->conf.brokers, kafka_err,
                        sizeof(kafka_err)) != RD_KAFKA_CONF_OK) {
    snprintf(errstr, errstr_size, "brokers: %s", kafka_err);
    rd_kafka_conf_destroy(kconf);
    return NULL;
  }
  if (tly_kafka_conf_apply(kconf, defaults, errstr, errstr_size) ||
      tly_kafka_conf_apply(kconf, e->conf.kafka_properties, errstr,
                           errstr_size)) {
    rd_kafka_conf_destroy(kconf);
    return NULL;
  }
  rd_kafka_conf_set_opaque(kconf, e);
  rd_kafka_conf_set_dr_msg_cb(kconf, on_delivery);
  rd_kafka_t *producer =
      rd_kafka_new(RD_KAFKA_PRODUCER, kconf, kafka_err, sizeof(kafka_err));
  if (!producer) {
    snprintf(errstr, errstr_size, "creating Kafka producer: %s", kafka_err);
    rd_kafka_conf_destroy(kconf);
  }
  return producer;
}

/* Cursors are per window: windows of another size would start again from
 * nothing and report everything twice. The size in force is kept in the
 * store, and a change refused. 0 or -1 with errstr. */
static int check_window(tly_stripe_emitter_t *e, char *errstr,
                        size_t errstr_size) {
  static const char key[] = "stripe.report_window_s";
  char *value = NULL, store_err[512];
  size_t len = 0;
  int found = tly_store_get(e->conf.store, TLY_CF_META, key, sizeof(key) - 1,
                            &value, &len, store_err, sizeof(store_err));
  int64_t stored =
      found > 0 && len == 8 ? (int64_t)tly_get_be64((unsigned char *)value) : 0;
  tly_store_free(value);
  if (found < 0) {
    snprintf(errstr, errstr_size, "stripe reporting: %s", store_err);
    return -1;
  }
  if (found && stored != e->stripe->report_window_s) {
    snprintf(errstr, errstr_size,
             "stripe.report_window_s: was %" PRId64 " when usage was "
             "reported from this state; another window would report it all "
             "again",
             stored);
    return -1;
  }
  if (found)
    return 0;
  unsigned char window[8];
  tly_put_be64(window, (uint64_t)e->stripe->report_window_s);
  tly_store_batch_put(e->batch, TLY_CF_META, key, sizeof(key) - 1, window, 8);
  int rc = tly_store_commit(e->conf.store, e->batch, 1, store_err,
                            sizeof(store_err));
  tly_store_batch_clear(e->batch);
  if (rc)
    snprintf(errstr, errstr_size, "stripe reporting: %s", store_err);
  return rc;
}

tly_stripe_emitter_t *
tly_stripe_emitter_start(const tly_stripe_emitter_conf_t *conf, char *errstr,
                         size_t errstr_size) {
  if (!conf->config || !tly_config_stripe_reports(conf->config) ||
      !conf->store || !conf->gate.assigned || !conf->gate.hold ||
      !conf->gate.release || !conf->brokers) {
    snprintf(errstr, errstr_size,
             "stripe reporting: needs stripe.meters, stripe.secret_key_env, "
             "a store, a partition gate and brokers");
    return NULL;
  }
  tly_stripe_emitter_t *e = calloc(1, sizeof(*e));
  if (!e) {
    snprintf(errstr, errstr_size, "out of memory");
    return NULL;
  }
  pthread_mutex_init(&e->lock, NULL);
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  /* Waits ignore the wall clock's jumps. */
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(&e->wake, &attr);
  pthread_condattr_destroy(&attr);
  e->conf = *conf;
  e->stripe = &conf->config->stripe;
  e->window_ms = e->stripe->report_window_s * 1000;
  e->changelog_topic = conf->changelog_topic;
  e->writer_id = conf->changelog_writer;
  atomic_init(&e->oldest_at_ms, INT64_MAX);
  e->dlq_topic =
      strdup(conf->dlq_topic ? conf->dlq_topic : TLY_DEFAULT_DLQ_TOPIC);
  e->alerts_topic = strdup(conf->alerts_topic ? conf->alerts_topic
                                              : TLY_DEFAULT_ALERTS_TOPIC);
  e->batch = tly_store_batch_new();
  if (!e->dlq_topic || !e->alerts_topic || !e->batch) {
    snprintf(errstr, errstr_size, "out of memory");
    goto fail;
  }
  if (collect_meters(e, errstr, errstr_size) ||
      check_window(e, errstr, errstr_size) ||
      tly_stripe_clock_offset_ms(&e->clock_offset_ms, errstr, errstr_size))
    goto fail;
  if (e->clock_offset_ms)
    tly_log(TLY_LOG_WARN, "stripe",
            "%s: the reporting clock runs %" PRId64 " ms off the wall clock "
            "(for tests only)",
            TLY_STRIPE_CLOCK_OFFSET_ENV, e->clock_offset_ms);
  tly_stripe_client_conf_t client = {.api_base = e->stripe->api_base,
                                     .secret_key = e->stripe->secret_key,
                                     .api_version = e->stripe->api_version,
                                     .timeout_ms = (long)e->stripe->timeout_ms};
  if (!(e->client = tly_stripe_client_new(&client, errstr, errstr_size)))
    goto fail;
  if (!(e->reconciler = tly_stripe_reconciler_new(e->client))) {
    snprintf(errstr, errstr_size, "out of memory");
    goto fail;
  }
  if (!(e->alert_codec = tly_alert_codec_new(errstr, errstr_size)) ||
      !(e->producer = new_producer(e, errstr, errstr_size)))
    goto fail;
  if (conf->alert_schema_id)
    tly_alert_codec_set_schema_id(e->alert_codec, conf->alert_schema_id);
  if (pthread_create(&e->thread, NULL, emitter_main, e) != 0) {
    snprintf(errstr, errstr_size, "cannot start the Stripe emitter thread");
    goto fail;
  }
  e->started = 1;
  tly_log(TLY_LOG_INFO, "stripe",
          "reporting %zu meter(s) to %s every %" PRId64 " s window, at most "
          "%" PRId64 " requests/s",
          e->meter_count, e->stripe->api_base, e->stripe->report_window_s,
          e->stripe->max_requests_per_s);
  return e;
fail:
  tly_stripe_emitter_stop(e);
  return NULL;
}

void tly_stripe_emitter_stats(tly_stripe_emitter_t *e,
                              tly_stripe_emitter_stats_t *stats) {
  stats->sent = atomic_load(&e->sent);
  stats->retried = atomic_load(&e->retried);
  stats->failed = atomic_load(&e->failed);
  stats->reconciled_in_stripe = atomic_load(&e->reconciled_in);
  stats->reconciled_resent = atomic_load(&e->reconciled_resent);
  int64_t oldest = atomic_load(&e->oldest_at_ms);
  int64_t age = oldest == INT64_MAX ? 0 : (tly_wall_ms() - oldest) / 1000;
  stats->oldest_unreported_s = age > 0 ? age : 0;
}
