/*
 * tly_stripe_emitter_failure.c - the failure path of the Stripe usage
 * emitter (tly_stripe_emitter.h): a delta that will not reach Stripe
 * (refused, too old, or undetermined by reconciling) goes to the
 * dead-letter topic with Stripe's error, and a stripe_report_failed alert
 * to the alerts topic with its history record (for /alerts) in the
 * cursor's batch; both are acknowledged by Kafka before the caller counts
 * the delta failed. Deterministic ids (header tally.output.id, alert_id)
 * let readers deduplicate the at-least-once records.
 */
#include "tly_stripe_emitter_internal.h"

#include "tly_keys.h"
#include "tly_log.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int produce(tly_stripe_emitter_t *e, const char *topic, const char *key,
                   size_t key_len, const void *value, size_t value_len,
                   rd_kafka_headers_t *headers) {
  rd_kafka_resp_err_t err = rd_kafka_producev(
      e->producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, key_len),
      RD_KAFKA_V_VALUE((void *)value, value_len),
      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(headers),
      RD_KAFKA_V_OPAQUE(MUST_ACK), RD_KAFKA_V_END);
  if (err) {
    rd_kafka_headers_destroy(headers);
    tly_log(TLY_LOG_WARN, "stripe", "producing to %s: %s", topic,
            rd_kafka_err2str(err));
    return -1;
  }
  return 0;
}

static void add_header(rd_kafka_headers_t *headers, const char *name,
                       const char *value) {
  rd_kafka_header_add(headers, name, -1, value, -1);
}

/* The alert of a failed delta, and its history record (for /alerts) in
 * the cursor's batch. */
static int failure_alert(tly_stripe_emitter_t *e, const failure_t *failure,
                         const char *subject_key, size_t subject_key_len) {
  const subject_t *subject = failure->subject;
  char alert_id[TLY_KEY_MAX + 256], detail[1024], errstr[256];
  /* The delta's identifier names it (partition, meter, window, what was
   * accounted before it): the alert of the same delta has the same id. */
  snprintf(alert_id, sizeof(alert_id), "stripe_report_failed:%.*s:%s",
           (int)subject_key_len, subject_key, failure->identifier);
  snprintf(detail, sizeof(detail),
           "meter %s: %" PRId64 " not reported (%s); identifier %s",
           failure->meter->event_name, failure->value, failure->reason,
           failure->identifier);
  tly_alert_t alert = {
      .alert_id = alert_id,
      .type = TLY_ALERT_STRIPE_REPORT_FAILED,
      .subject_kind = subject->kind,
      .subject_id = (char *)subject->id,
      .occurred_at_ms = failure->window_start_ms,
      .cycle_start_ms = failure->window_start_ms,
      .cycle_end_ms = failure->window_start_ms + e->window_ms,
      .plan = (char *)subject->record.account.plan,
      .feature = (char *)failure->meter->features[0],
      .used = failure->value,
      .limit = -1,
      .detail = detail,
  };
  const void *value;
  size_t value_len;
  if (tly_alert_encode(e->alert_codec, &alert, &value, &value_len, errstr,
                       sizeof(errstr))) {
    tly_log(TLY_LOG_ERROR, "stripe", "encoding alert %s: %s", alert_id, errstr);
    return -1;
  }
  char history[TLY_KEY_MAX + 300];
  size_t len = tly_key_history(subject->partition, subject->kind, subject->id,
                               TLY_HISTORY_ALERT, history, TLY_KEY_MAX);
  size_t id_len = strlen(alert_id);
  unsigned char *stored = malloc(8 + value_len);
  if (!len || len + 8 + id_len > sizeof(history) || !stored) {
    free(stored);
    return -1;
  }
  tly_put_be64((unsigned char *)history + len, (uint64_t)alert.occurred_at_ms);
  memcpy(history + len + 8, alert_id, id_len);
  tly_put_be64(stored,
               (uint64_t)(alert.occurred_at_ms +
                          e->conf.config->retention.alerts_days * TLY_DAY_MS));
  memcpy(stored + 8, value, value_len);
  tly_store_batch_put(e->batch, TLY_CF_USAGE, history, len + 8 + id_len, stored,
                      8 + value_len);
  free(stored);

  rd_kafka_headers_t *headers = rd_kafka_headers_new(2);
  add_header(headers, "tally.output.id", alert_id);
  add_header(headers, "tally.alert.type",
             tly_alert_type_name(TLY_ALERT_STRIPE_REPORT_FAILED));
  return produce(e, e->alerts_topic, subject_key, subject_key_len, value,
                 value_len, headers);
}

/* A delta that will not reach Stripe: a dead letter with Stripe's error and
 * an alert, both acknowledged by Kafka before the cursor counts it failed
 * (the caller writes the cursor with the batch this fills). 0 or -1. */
int tly_emitter_report_failure(tly_stripe_emitter_t *e, failure_t *failure) {
  const subject_t *subject = failure->subject;
  char subject_key[TLY_KEY_MAX], output_id[64], partition[16], status[16];
  size_t key_len = tly_subject_key(subject->kind, subject->id, subject_key,
                                   sizeof(subject_key));
  if (key_len >= sizeof(subject_key))
    return -1;
  snprintf(output_id, sizeof(output_id), "stripe:%s", failure->identifier);
  snprintf(partition, sizeof(partition), "%d", (int)subject->partition);
  snprintf(status, sizeof(status), "%ld", failure->status);
  if (failure->status)
    snprintf(failure->reason, sizeof(failure->reason),
             "stripe answered %ld: %s", failure->status, failure->error);
  else
    snprintf(failure->reason, sizeof(failure->reason), "%s", failure->error);
  const char *reason = failure->reason;
  json_t *report = json_pack(
      "{s:s,s:s,s:s,s:I,s:s,s:I,s:I,s:I,s:I,s:s}", "subject", subject_key,
      "stripe_customer_id", failure->customer, "event_name",
      failure->meter->event_name, "value", (json_int_t)failure->value,
      "identifier", failure->identifier, "timestamp",
      (json_int_t)failure->timestamp_s, "window_start_ms",
      (json_int_t)failure->window_start_ms, "window_end_ms",
      (json_int_t)(failure->window_start_ms + e->window_ms), "stripe_status",
      (json_int_t)failure->status, "error", failure->error);
  char *value = report ? json_dumps(report, JSON_COMPACT) : NULL;
  json_decref(report);
  if (!value)
    return -1;
  rd_kafka_headers_t *headers = rd_kafka_headers_new(5);
  add_header(headers, "tally.error", reason);
  add_header(headers, "tally.source", "stripe.meter_events");
  add_header(headers, "tally.source.partition", partition);
  add_header(headers, "tally.stripe.status", status);
  add_header(headers, "tally.output.id", output_id);
  atomic_store(&e->delivery_errors, 0);
  int rc = produce(e, e->dlq_topic, subject_key, key_len, value, strlen(value),
                   headers);
  free(value);
  if (rc || failure_alert(e, failure, subject_key, key_len) ||
      tly_emitter_flush_acked(e)) {
    tly_store_batch_clear(e->batch); /* the alert's history goes too */
    return -1;
  }
  tly_log(TLY_LOG_WARN, "stripe",
          "%s: %s %" PRId64 " of window %" PRId64 " counted failed: %s",
          subject_key, failure->meter->event_name, failure->value,
          failure->window_start_ms, reason);
  return 0;
}
