/*
 * tly_webhooks.h - alert webhooks: every alert on the alerts topic, of the
 * types each configured endpoint asks for (config "notifications"), POSTed
 * to it signed the Standard Webhooks way, at least once (webhook-id: the
 * alert id, for the receiver to dedupe on), with exponential backoff for
 * give_up_s (24 h by default) and then the dead-letter topic; an alert
 * being retried never holds back the others. Delivery progress is the
 * endpoint's Kafka consumer group's committed offset (never past an alert
 * not yet delivered or dead-lettered), so a crashed or moved instance
 * resumes from what was acknowledged.
 *
 * Owns its Kafka clients and delivery threads; never reads or writes
 * state, never answers an HTTP request.
 */
#ifndef TLY_WEBHOOKS_H
#define TLY_WEBHOOKS_H

#include "tly_config.h"

#include <stddef.h>

typedef struct {
  const tly_config_t *config; /* notifications.*: endpoints, retries */
  const char *brokers;
  const char *alerts_topic; /* default tally.alerts */
  const char *dlq_topic;    /* default tally.usage.dlq */
  const char *const *kafka_properties;
} tly_webhooks_conf_t;

typedef struct tly_webhooks tly_webhooks_t;

/* Starts delivering. NULL with errstr empty when no endpoint is configured
 * (or no brokers); NULL with errstr set on failure. */
tly_webhooks_t *tly_webhooks_start(const tly_webhooks_conf_t *conf,
                                   char *errstr, size_t errstr_size);
/* Stops (the alerts being retried are left uncommitted: delivered again
 * by whoever resumes). NULL is fine. */
void tly_webhooks_stop(tly_webhooks_t *webhooks);
/* tally_webhook_deliveries_total{result} as Prometheus text into out, as
 * snprintf (0 when webhooks is NULL). */
size_t tly_webhooks_metrics(tly_webhooks_t *webhooks, char *out, size_t size);

#endif
