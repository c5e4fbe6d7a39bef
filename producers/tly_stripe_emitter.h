/*
 * tly_stripe_emitter.h - reports metered usage to Stripe's Billing Meter
 * Events API (POST /v1/billing/meter_events), so that the sum Stripe
 * accepted per customer and meter equals the folded usage, whatever fails.
 *
 * What is reported: per linked subject, meter (stripe.meters maps features
 * to a meter's event_name) and window (stripe.report_window_s, whole UTC
 * hours), the folded total is the sum of the window's hourly buckets of
 * the meter's features. Each report is a delta: total - reported - failed.
 *
 * Finding work: the processor writes a mark (tly_keys.h, family reports)
 * in the commit that changed a linked subject's metered usage, naming the
 * hours that changed. The emitter reads marks in key order, reports the
 * windows of those hours and deletes a mark only once every window it
 * names is settled; the processor only ever adds greater keys, so the two
 * never race on one key.
 *
 * The protocol per (subject, meter, window), with its cursor in the
 * stripe_cursors family (reported, pending, failed):
 *   1. a delta to send is first recorded as an intent, pending = delta
 *      (with the timestamp and customer it is sent with), WAL synced, then
 *      put on the state changelog and acknowledged by Kafka (the intents
 *      of a pass together, one flush);
 *   2. it is sent with an identifier (and the same Idempotency-Key)
 *      derived from subject, meter, window and the totals accounted before
 *      it (reported, failed), so a resend is the same meter event;
 *   3. Stripe's 200, or its 400 "An event already exists with identifier":
 *      reported += pending, pending = 0, stored and put on the changelog
 *      without waiting (unsynced: whoever finds only the intent resends it,
 *      and Stripe answers as before).
 * A cursor found with pending != 0 (a crash between 1 and 3) is resent
 * exactly, same identifier, value, timestamp and customer, before anything
 * else of that cursor; Stripe drops the copy if the first one arrived
 * (within 23 hours of the intent: older ones are reconciled, see below).
 * Late usage of a reported window is a further delta with a new identifier.
 *
 * Several instances (partitions moving between them): marks and cursors
 * ride on the state changelog (store/tly_changelog.h). The processor
 * puts each mark in its commit's bundle; the emitter puts every cursor
 * change there (the version 2 * (reported + failed) + (pending != 0) makes
 * the newest win on restore) and a deletion for each settled mark. A new
 * owner restores them with the partition's state (the processor restores a
 * partition whenever another instance wrote its changelog since this one
 * did) and goes on: pending intents resent exactly, then new deltas under
 * the identifiers that follow. An intent is on the changelog before its
 * request leaves, and the emitter holds the partition meanwhile (the
 * gate's hold, tly_partition_gate.h; in `tally run` the processor's
 * tly_processor_hold): a revocation waits, so the next owner always finds
 * it and never makes another intent under the same identifier. The emitter
 * reports only partitions assigned here, and a pass stops once the
 * partition was revoked (even if it came back: it was restored).
 * Without a changelog (--changelog-topic ""), cursors and marks are this
 * instance's alone: run one instance.
 *
 * Failures: no answer, 429, 5xx, 401/403 (a key problem is the operator's,
 * never the report's) and anything Stripe-Should-Retry: true are retried
 * with exponential backoff and jitter (capped at stripe.retry_max_s, never
 * sooner than Retry-After). Stripe keeps the first answer of an
 * Idempotency-Key, a 500 too (replayed with Stripe-Should-Retry: false),
 * and answers 409 idempotency_key_in_use while a request under the key is
 * still running; although the event may be in Stripe, neither is a
 * failure: such a 5xx (Stripe-Should-Retry: false, or a replay) and any
 * 409 are retried under a fresh Idempotency-Key with the same identifier,
 * and Stripe's identifier dedupe settles it (the event is applied once;
 * "already exists" is accepted). Other 4xx (unknown customer, unknown
 * meter): the delta is counted failed (failed += pending) and goes to the
 * dead-letter topic with Stripe's error, with a stripe_report_failed alert
 * on the alerts topic; other subjects go on. A delta whose window is older
 * than Stripe's 35 days is never sent: failed, dead letter and alert too.
 * Those records are produced straight to Kafka (idempotent producer) and
 * acknowledged before the cursor records the failure: at least once, with
 * deterministic ids (header tally.output.id, alert_id) to deduplicate on.
 * Requests never exceed stripe.max_requests_per_s (a token bucket).
 *
 * Identifiers are unique at Stripe for 24 hours only. An intent is sent
 * under its identifier (retries included) only for 23 hours after it was
 * made; one still pending then waits an hour and is reconciled against
 * Stripe's meter event summaries (tly_stripe_reconcile.h): in Stripe's
 * total, it counts reported; not in it, it is made again under a new
 * identifier (generation + 1, made now) and sent; when Stripe's total
 * says neither (the customer shared with other subjects or senders), it
 * is never resent blind: failed, with a dead letter and an alert saying
 * Stripe's total and tally's, for the operator to decide.
 *
 * Threading: one thread of its own, reporting only partitions assigned to
 * this instance. It reads committed state, writes only cursors (and the
 * alert history of its alerts) and deletes only marks; on the changelog,
 * cursor records and mark deletions.
 */
#ifndef TLY_STRIPE_EMITTER_H
#define TLY_STRIPE_EMITTER_H

#include "tly_config.h"
#include "tly_event.h"
#include "tly_partition_gate.h"
#include "tly_store.h"
#include "tly_stripe_client.h"
#include "tly_stripe_protocol.h"

#include <stddef.h>
#include <stdint.h>

typedef struct {
  const tly_config_t *config; /* the stripe section; outlives the emitter */
  tly_store_t *store;
  tly_partition_gate_t gate; /* which partitions are assigned here */
  /* The state changelog (NULL: none) and the writer id naming this store's
   * changelog records (tly_changelog.h): the processor's; both outlive the
   * emitter. */
  const char *changelog_topic;
  const char *changelog_writer;
  const char *brokers;      /* for dead letters and alerts */
  const char *dlq_topic;    /* default TLY_DEFAULT_DLQ_TOPIC */
  const char *alerts_topic; /* default TLY_DEFAULT_ALERTS_TOPIC */
  int32_t alert_schema_id;  /* frames alerts; 0: TLY_ALERT_SCHEMA_ID */
  const char *const *kafka_properties;
} tly_stripe_emitter_conf_t;

typedef struct tly_stripe_emitter tly_stripe_emitter_t;

typedef struct {
  uint64_t sent;    /* meter events Stripe accepted (or already had) */
  uint64_t retried; /* requests retried: no answer, 429, 5xx, ... */
  uint64_t failed;  /* deltas given up: refused by Stripe, or too old, or
                       not confirmed after 24 h */
  /* Intents unsettled for 24 h, reconciled against Stripe's summaries:
   * found in Stripe's total (counted in sent too), or not (sent again). */
  uint64_t reconciled_in_stripe, reconciled_resent;
  int64_t oldest_unreported_s; /* age of the oldest mark not yet settled;
                                  0 when there is none */
} tly_stripe_emitter_stats_t;

/* Starts the emitter's thread (call only when tly_config_stripe_reports).
 * NULL with errstr. */
tly_stripe_emitter_t *
tly_stripe_emitter_start(const tly_stripe_emitter_conf_t *conf, char *errstr,
                         size_t errstr_size);
/* Stops the thread (a request in flight ends within timeout_ms; the
 * cursor keeps what it had not settled) and frees everything. */
void tly_stripe_emitter_stop(tly_stripe_emitter_t *emitter);
/* Thread-safe. */
void tly_stripe_emitter_stats(tly_stripe_emitter_t *emitter,
                              tly_stripe_emitter_stats_t *stats);

#endif
