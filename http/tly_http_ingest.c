/*
 * tly_http_ingest.c - the HTTP port's routes that act elsewhere: POST
 * /v1/events and /v1/subjects/{subject}/plan produce to the usage topic
 * (the idempotent producer of tally_producer.h, polled by a thread of its
 * own), the Stripe webhook's event takes the same path, and the billing
 * portal calls Stripe (tly_stripe_portal.c). Each suspends its connection
 * rather than block an HTTP thread; the last delivery report (or Stripe's
 * answer) resumes it and tly_http.c queues the answer built here.
 *
 * Never writes state: the log is the source of truth.
 */
#include "tly_http_internal.h"

#include "tally_producer.h"
#include "tly_event.h"
#include "tly_log.h"
#include "tly_request.h"
#include "tly_state.h"
#include "tly_stripe_portal.h"
#include "tly_stripe_webhook.h"

#include <jansson.h>
#include <microhttpd.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What an ingest answers once Kafka reported: per-event results (POST
 * /v1/events), the plan assignment, or the Stripe webhook's 200. */
enum { INGEST_EVENTS = 0, INGEST_PLAN, INGEST_STRIPE, INGEST_HOOKED };

/* ---- ingest: produce, suspend, resume on the last delivery report ---- */

enum { SLOT_INVALID = 0, SLOT_SENT, SLOT_DELIVERED, SLOT_FAILED };

typedef struct {
  tly_http_delivery_t delivery; /* first: the producer's msg_opaque */
  ingest_t *ingest;
  int state;
  char error[256];
} ingest_slot_t;

struct ingest {
  pthread_mutex_t lock;
  size_t pending; /* delivery reports still due, +1 while producing */
  int suspended;
  struct MHD_Connection *connection;
  tly_req_events_t events;
  ingest_slot_t *slots;
  int kind;                       /* INGEST_*: which answer */
  tly_http_produce_hooks_t hooks; /* INGEST_HOOKED: another file's */
};

void tly_http_ingest_free(ingest_t *ingest) {
  if (!ingest)
    return;
  if (ingest->hooks.free)
    ingest->hooks.free(ingest->hooks.opaque);
  tly_req_events_clear(&ingest->events);
  free(ingest->slots);
  pthread_mutex_destroy(&ingest->lock);
  free(ingest);
}

/* librdkafka's delivery report, on the poller thread (or a thread serving
 * reports inside a send): to whoever produced the record (an ingest slot,
 * a reservation), whose msg_opaque starts with a tly_http_delivery_t. */
static void on_delivery(void *opaque, void *msg_opaque, int error,
                        const char *errstr, int32_t partition, int64_t offset) {
  tly_http_delivery_t *delivery = msg_opaque;
  (void)opaque;
  delivery->done(delivery, error, errstr, partition, offset);
}

/* An ingested event's report. Resumes the connection after the last one;
 * the ingest is not touched after its lock is released with nothing
 * pending, since the resumed request frees it. */
static void ingest_slot_done(tly_http_delivery_t *delivery, int error,
                             const char *errstr, int32_t partition,
                             int64_t offset) {
  ingest_slot_t *slot = (ingest_slot_t *)(void *)delivery;
  ingest_t *ingest = slot->ingest;
  struct MHD_Connection *resume = NULL;

  if (ingest->hooks.reported) /* before the connection may resume */
    ingest->hooks.reported(ingest->hooks.opaque, error, errstr, partition,
                           offset);
  pthread_mutex_lock(&ingest->lock);
  slot->state = error ? SLOT_FAILED : SLOT_DELIVERED;
  if (error)
    snprintf(slot->error, sizeof(slot->error), "%s", errstr);
  if (--ingest->pending == 0 && ingest->suspended)
    resume = ingest->connection;
  pthread_mutex_unlock(&ingest->lock);
  if (resume)
    MHD_resume_connection(resume);
}

static void *poller_main(void *arg) {
  tly_http_t *http = arg;
  while (!atomic_load(&http->stopping))
    tally_producer_poll(http->producer, 100);
  return NULL;
}

int tly_http_start_producer(tly_http_t *http, char *errstr,
                            size_t errstr_size) {
  const char *properties[80];
  size_t count = 0;
  char timeout[64];
  if (!http->conf.brokers)
    return 0;
  /* A delivery report within the ingest timeout, success or failure, so a
   * request never waits longer than that for Kafka. */
  snprintf(timeout, sizeof(timeout), "message.timeout.ms=%d",
           INGEST_TIMEOUT_MS);
  properties[count++] = timeout;
  /* Its queue within half the producer part of the memory budget
   * (tly_processor.h); a -X setting (below) wins. */
  char bound_text[TLY_MEMORY_KAFKA_PROPERTIES][TLY_MEMORY_KAFKA_PROPERTY_MAX];
  const char *bounds[TLY_MEMORY_KAFKA_PROPERTIES + 1];
  tly_memory_kafka_properties(
      http->conf.processor ? tly_processor_memory_budget(http->conf.processor)
                           : TLY_DEFAULT_MEMORY_BUDGET,
      0, http->conf.kafka_properties, bound_text, bounds);
  for (size_t i = 0; bounds[i]; i++)
    properties[count++] = bounds[i];
  for (size_t i = 0; http->conf.kafka_properties &&
                     http->conf.kafka_properties[i] && count < 79;
       i++)
    properties[count++] = http->conf.kafka_properties[i];
  properties[count] = NULL;
  tally_producer_conf_t pconf = {.brokers = http->conf.brokers,
                                 .topic = http->conf.usage_topic,
                                 .schema_id = http->conf.event_schema_id,
                                 .on_delivery_at = on_delivery,
                                 .opaque = http,
                                 .kafka_properties = properties};
  http->producer = tally_producer_new(&pconf, errstr, errstr_size);
  if (!http->producer)
    return -1;
  if (pthread_create(&http->poller, NULL, poller_main, http)) {
    snprintf(errstr, errstr_size, "http: cannot start the producer thread");
    return -1;
  }
  http->poller_started = 1;
  return 0;
}

/* Sends every valid event of ingest; returns 1 when the connection was
 * suspended to wait for Kafka, 0 when every report is already in. */
static int ingest_send(tly_http_t *http, ingest_t *ingest,
                       struct MHD_Connection *connection) {
  size_t valid = 0;
  for (size_t i = 0; i < ingest->events.count; i++)
    valid += ingest->events.items[i].ok;
  ingest->pending = valid + 1; /* + this function */
  ingest->connection = connection;
  for (size_t i = 0; i < ingest->events.count; i++) {
    ingest_slot_t *slot = &ingest->slots[i];
    slot->delivery.done = ingest_slot_done;
    slot->ingest = ingest;
    if (!ingest->events.items[i].ok)
      continue;
    slot->state = SLOT_SENT;
    char errstr[256];
    if (tally_producer_send(http->producer, &ingest->events.items[i].event,
                            slot, errstr, sizeof(errstr))) {
      if (ingest->hooks.reported)
        ingest->hooks.reported(ingest->hooks.opaque, -1, errstr, -1, -1);
      pthread_mutex_lock(&ingest->lock);
      slot->state = SLOT_FAILED;
      snprintf(slot->error, sizeof(slot->error), "%s", errstr);
      ingest->pending--;
      pthread_mutex_unlock(&ingest->lock);
    }
  }
  pthread_mutex_lock(&ingest->lock);
  int wait = --ingest->pending > 0;
  if (wait) {
    ingest->suspended = 1;
    MHD_suspend_connection(connection);
  }
  pthread_mutex_unlock(&ingest->lock);
  return wait;
}

/* The answer once every report is in: 202 when every valid event was
 * acknowledged (with per-event results), 503 when Kafka failed any, 400
 * when no event was valid. */
void tly_http_ingest_answer(ingest_t *ingest, response_t *out) {
  if (ingest->kind == INGEST_HOOKED) {
    ingest->hooks.answer(ingest->hooks.opaque, out);
    return;
  }
  size_t accepted = 0, rejected = 0, failed = 0;
  json_t *results = json_array(), *first_error = NULL;
  for (size_t i = 0; i < ingest->events.count; i++) {
    tly_req_event_t *item = &ingest->events.items[i];
    ingest_slot_t *slot = &ingest->slots[i];
    json_t *result = NULL;
    if (!item->ok) {
      rejected++;
      result =
          json_pack("{s:I,s:s,s:o}", "index", (json_int_t)i, "status",
                    "rejected", "error",
                    tly_http_error_json(item->error.code, item->error.message,
                                        item->error.field));
      if (!first_error)
        first_error = tly_http_error_json(item->error.code, item->error.message,
                                          item->error.field);
    } else if (slot->state == SLOT_DELIVERED) {
      accepted++;
      result = json_pack("{s:I,s:s,s:s}", "index", (json_int_t)i, "status",
                         "accepted", "event_id", item->event.event_id);
    } else {
      failed++;
      result =
          json_pack("{s:I,s:s,s:s,s:o}", "index", (json_int_t)i, "status",
                    "failed", "event_id", item->event.event_id, "error",
                    tly_http_error_json("produce_failed", slot->error, NULL));
    }
    json_array_append_new(results, result);
  }
  json_t *body;
  int status;
  if (ingest->kind == INGEST_STRIPE) {
    /* One event; Stripe retries anything but a 2xx, so 503 on failure. */
    if (accepted)
      tly_http_respond_json(
          out, 200,
          tly_stripe_webhook_answer(&ingest->events.items[0].event, NULL));
    else
      tly_http_respond_error(out, 503, "kafka_unavailable",
                             ingest->slots[0].error);
    json_decref(results);
    json_decref(first_error);
    return;
  }
  if (ingest->kind == INGEST_PLAN && accepted) {
    tly_event_t *event = &ingest->events.items[0].event;
    char key[TLY_REQ_SUBJECT_MAX + 16];
    tly_subject_key(event->subject_kind, event->subject_id, key, sizeof(key));
    status = 202;
    body = json_pack("{s:s,s:s,s:s,s:s}", "status", "accepted", "subject", key,
                     "plan", event->body.plan_assigned.plan, "event_id",
                     event->event_id);
    json_decref(results);
  } else {
    body = json_pack("{s:I,s:I,s:I,s:o}", "accepted", (json_int_t)accepted,
                     "rejected", (json_int_t)rejected, "failed",
                     (json_int_t)failed, "results", results);
    status = failed ? 503 : accepted ? 202 : 400;
    if (failed) {
      char message[128];
      snprintf(message, sizeof(message),
               "%zu event(s) were not acknowledged by Kafka; retry them",
               failed);
      json_object_set_new(
          body, "error",
          tly_http_error_json("kafka_unavailable", message, NULL));
    } else if (!accepted && first_error) {
      json_object_set(body, "error", first_error);
    }
  }
  json_decref(first_error);
  tly_http_respond_json(out, status, body);
}

/* Takes ownership of events (and of hooks->opaque, when hooks is given);
 * answers now or suspends (out->suspended). */
static void ingest_start(tly_http_t *http, request_t *req,
                         struct MHD_Connection *connection,
                         tly_req_events_t *events, int kind,
                         const tly_http_produce_hooks_t *hooks,
                         response_t *out) {
  ingest_t *ingest = calloc(1, sizeof(*ingest));
  if (ingest)
    ingest->slots = calloc(events->count, sizeof(*ingest->slots));
  if (!ingest || !ingest->slots) {
    free(ingest);
    tly_req_events_clear(events);
    if (hooks && hooks->reported)
      hooks->reported(hooks->opaque, -1, "out of memory", -1, -1);
    if (hooks && hooks->free)
      hooks->free(hooks->opaque);
    tly_http_respond_error(out, 500, "internal", "out of memory");
    return;
  }
  pthread_mutex_init(&ingest->lock, NULL);
  ingest->events = *events;
  ingest->kind = kind;
  if (hooks)
    ingest->hooks = *hooks;
  memset(events, 0, sizeof(*events));
  if (ingest_send(http, ingest, connection)) {
    req->ingest = ingest;
    req->phase = PHASE_WAIT;
    out->suspended = 1;
    return;
  }
  tly_http_ingest_answer(ingest, out);
  tly_http_ingest_free(ingest);
}

void tly_http_produce_one(tly_http_t *http, request_t *req,
                          struct MHD_Connection *connection, tly_event_t *event,
                          const tly_http_produce_hooks_t *hooks,
                          response_t *out) {
  tly_req_events_t events = {0};
  events.items = calloc(1, sizeof(*events.items));
  if (!events.items) {
    tly_event_clear(event);
    if (hooks->reported)
      hooks->reported(hooks->opaque, -1, "out of memory", -1, -1);
    if (hooks->free)
      hooks->free(hooks->opaque);
    tly_http_respond_error(out, 500, "internal", "out of memory");
    return;
  }
  events.count = 1;
  events.items[0].ok = 1;
  events.items[0].event = *event;
  memset(event, 0, sizeof(*event));
  ingest_start(http, req, connection, &events, INGEST_HOOKED, hooks, out);
}

void tly_http_produce_many(tly_http_t *http, request_t *req,
                           struct MHD_Connection *connection,
                           tly_req_events_t *events,
                           const tly_http_produce_hooks_t *hooks,
                           response_t *out) {
  ingest_start(http, req, connection, events, INGEST_HOOKED, hooks, out);
}

int tly_http_ingest_available(tly_http_t *http, response_t *out) {
  if (http->producer && !atomic_load(&http->stopping))
    return 1;
  tly_http_respond_error(
      out, 503, "ingest_unavailable",
      "this HTTP port has no Kafka producer (no brokers configured)");
  return 0;
}

void tly_http_handle_events(tly_http_t *http, request_t *req,
                            struct MHD_Connection *connection,
                            response_t *out) {
  tly_req_events_t events;
  tly_req_error_t err;
  if (!tly_http_ingest_available(http, out))
    return;
  if (tly_req_parse_events(http->conf.config, req->body, req->body_len,
                           tly_wall_ms(), &events, &err)) {
    tly_http_respond_req_error(out, &err);
    return;
  }
  ingest_start(http, req, connection, &events, INGEST_EVENTS, NULL, out);
}

void tly_http_handle_plan(tly_http_t *http, request_t *req,
                          struct MHD_Connection *connection, response_t *out) {
  tly_req_subject_t subject;
  tly_req_error_t err;
  tly_req_events_t events = {0};
  unsigned char random[16];
  char event_id[48] = "plan-";

  if (!tly_http_ingest_available(http, out))
    return;
  if (tly_req_parse_subject(req->subject, &subject, &err)) {
    tly_http_respond_req_error(out, &err);
    return;
  }
  /* Without an event_id in the body, each call is a new assignment; with
   * one, a retried call is folded once. */
  if (RAND_bytes(random, sizeof(random)) != 1) {
    tly_http_respond_error(out, 500, "internal",
                           "no randomness for an event id");
    return;
  }
  for (size_t i = 0; i < sizeof(random); i++)
    snprintf(event_id + 5 + 2 * i, 3, "%02x", random[i]);
  events.items = calloc(1, sizeof(*events.items));
  if (!events.items) {
    tly_http_respond_error(out, 500, "internal", "out of memory");
    return;
  }
  events.count = 1;
  if (tly_req_parse_plan(http->conf.config, &subject, req->body, req->body_len,
                         tly_wall_ms(), event_id, &events.items[0].event,
                         &err)) {
    tly_req_events_clear(&events);
    tly_http_respond_req_error(out, &err);
    return;
  }
  events.items[0].ok = 1;
  ingest_start(http, req, connection, &events, INGEST_PLAN, NULL, out);
}

/* ---- Stripe: webhook intake and billing portal ----------------------- */

/* The signature, the mapping and the answers are tly_stripe_webhook.c's;
 * the event takes the ingest path (200 only once Kafka acknowledged). */
void tly_http_handle_stripe_webhook(tly_http_t *http, request_t *req,
                                    struct MHD_Connection *connection,
                                    response_t *out) {
  tly_req_events_t events = {0};
  tly_stripe_webhook_info_t info;
  tly_req_error_t err;
  tly_event_t event;
  tly_stripe_webhook_result_t result = tly_stripe_webhook_parse(
      http->conf.config,
      MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
                                  "Stripe-Signature"),
      req->body ? req->body : "", req->body_len, tly_wall_ms(), &event, &info,
      &err);
  if (result == TLY_STRIPE_WEBHOOK_ERROR) {
    tly_http_respond_req_error(out, &err);
    return;
  }
  if (result == TLY_STRIPE_WEBHOOK_IGNORED) {
    tly_http_respond_json(out, 200, tly_stripe_webhook_answer(NULL, &info));
    return;
  }
  events.items = calloc(1, sizeof(*events.items));
  if (!events.items || !tly_http_ingest_available(http, out)) {
    if (!events.items)
      tly_http_respond_error(out, 500, "internal", "out of memory");
    free(events.items);
    tly_event_clear(&event);
    return;
  }
  events.count = 1;
  events.items[0].ok = 1;
  events.items[0].event = event;
  ingest_start(http, req, connection, &events, INGEST_STRIPE, NULL, out);
}

static void portal_done(void *connection) { MHD_resume_connection(connection); }

/* The Stripe call runs on its own thread (tly_stripe_portal.c) while the
 * connection is suspended, like ingest. */
void tly_http_handle_billing_portal(tly_http_t *http, request_t *req,
                                    struct MHD_Connection *connection,
                                    response_t *out) {
  tly_req_subject_t subject;
  tly_req_error_t err;
  tly_subject_state_t state = {0};
  if (!http->portal) {
    tly_http_respond_error(out, 503, "stripe_not_configured",
                           "Stripe is not configured (stripe.secret_key_env)");
    return;
  }
  if (tly_req_parse_subject(req->subject, &subject, &err)) {
    tly_http_respond_req_error(out, &err);
    return;
  }
  int found = tly_http_find_subject(http, req, &subject, &state, out);
  if (found == 0 || (found > 0 && !state.account.stripe_customer_id[0])) {
    char message[TLY_REQ_SUBJECT_MAX + 64];
    snprintf(message, sizeof(message),
             "subject %s is not linked to a Stripe customer", subject.key);
    tly_http_respond_error(out, 404, "not_linked", message);
  } else if (found > 0) {
    MHD_suspend_connection(connection);
    if (tly_stripe_portal_request(http->portal,
                                  state.account.stripe_customer_id, portal_done,
                                  connection, &req->portal)) {
      MHD_resume_connection(connection);
      tly_http_respond_error(out, 503, "stripe_unavailable",
                             "no Stripe call can be started now; retry");
    } else {
      req->phase = PHASE_WAIT;
      out->suspended = 1;
    }
  }
  tly_state_subject_clear(&state);
}
