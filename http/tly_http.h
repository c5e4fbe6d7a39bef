/*
 * tly_http.h - the HTTP port (libmicrohttpd, JSON).
 *
 * Reads committed state through tly_state (plus a read cache invalidated by
 * every commit); never writes state: ingest and plan changes are produced
 * to the usage topic (the log is the source of truth). Binds to 127.0.0.1
 * unless told otherwise. Routes (docs/openapi.json describes them):
 *   GET  /healthz, /readyz, /metrics
 *   GET  /v1/plans;  POST /v1/estimate, /v1/prorate, /v1/events
 *   GET  /v1/subjects/{subject}/usage, /v1/subjects/{subject}/quota
 *   POST /v1/subjects/{subject}/plan, /v1/subjects/{subject}/billing-portal
 *   POST /v1/stripe/webhook
 * The per-subject routes that read state (usage, quota, daily, cycles,
 * alerts, billing-portal) are answered by the instance serving the
 * subject's partition: another instance forwards them there (tly_forward.h)
 * or answers 503 partition_moving while the partition has no single,
 * caught-up owner. Everything else is answered where it arrives.
 * Bearer-token auth (tly_auth.h) on everything but /healthz, /readyz,
 * /metrics (when the config's http.metrics_public, the default) and the
 * Stripe webhook (its Stripe-Signature authenticates it).
 */
#ifndef TLY_HTTP_H
#define TLY_HTTP_H

#include "tly_members.h"
#include "tly_processor.h"
#include "tly_store.h"
#include "tly_stripe_emitter.h"

#include <stddef.h>
#include <stdint.h>

typedef struct {
  const char *address; /* default "127.0.0.1" */
  uint16_t port;       /* 0: any free port; see tly_http_port() */
  tly_store_t *store;
  tly_processor_t *processor;
  tly_stripe_emitter_t *stripe_emitter; /* NULL: not reporting (metrics) */
  const tly_config_t *config;           /* http.api_keys, limits, plans */
  unsigned threads; /* 0: config's http.threads, and if that is 0 too,
                       tly_http_default_threads() */
  int no_auth;      /* 1: every route is open (`tally run --no-auth`) */
  /* Ingest (POST /v1/events, /plan): produced here with the idempotent
   * producer. brokers NULL: those routes answer 503. */
  const char *brokers;
  const char *usage_topic; /* default tally.usage */
  /* The schema registry's read API (tly_http_registry.c) serves tally's
   * two schemas under "<usage_topic>-value" and "<alerts_topic>-value",
   * with these ids (0: 1 and 2, the built-in framing ids); ingest frames
   * events with event_schema_id. */
  const char *alerts_topic; /* default tally.alerts */
  const char *dlq_topic;    /* default tally.usage.dlq (webhooks give-ups) */
  int32_t event_schema_id, alert_schema_id;
  const char *const *kafka_properties;
  /* Who serves which partition (tly_members.h): a subject whose partition
   * this instance does not serve is forwarded to its owner, or answered
   * 503 partition_moving. NULL: no forwarding (503 for those). */
  tly_members_t *members;
} tly_http_conf_t;

typedef struct tly_http tly_http_t;

tly_http_t *tly_http_start(const tly_http_conf_t *conf, char *errstr,
                           size_t errstr_size);
uint16_t tly_http_port(const tly_http_t *http);
/* The port's threads by default: one per two online cores, at least 1. On
 * two cores that is one: the fold thread, the Kafka client and the
 * clients of a benchmark on the same machine get the other core, instead
 * of two busy HTTP threads time-slicing with them (README, "HTTP
 * threads"). */
unsigned tly_http_default_threads(void);
void tly_http_stop(tly_http_t *http);

/* The routes that exist, for the OpenAPI check and docs: method, path
 * template ("/v1/subjects/{subject}/usage") and whether a bearer token is
 * required. Fills up to max and returns the number of routes. */
typedef struct {
  const char *method;
  const char *path;
  int auth_required; /* 0 for public routes (metrics: see metrics_public) */
  int owner_only;    /* answered by the owner of the subject's partition:
                        forwarded there, or 503 partition_moving */
} tly_http_route_info_t;
size_t tly_http_routes(tly_http_route_info_t *out, size_t max);

#endif
