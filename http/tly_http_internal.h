/*
 * tly_http_internal.h - private to http/: what the files of the HTTP port
 * share. tly_http.c (the server: daemon, route table, auth, forwarding, the
 * life of a request), tly_http_queries.c (answers from committed state or a
 * request body), tly_http_ingest.c (ingest, the Stripe webhook and billing
 * portal: the routes that produce to Kafka or call Stripe) and
 * tly_http_metrics.c (health, readiness, metrics) include it; nothing
 * outside http/ may: the port's contract is tly_http.h.
 *
 * It holds the tly_http_t definition, a request's and a response's state,
 * the route table's entries and the helpers that fill an answer. It never
 * holds code: parsing and JSON answers are tly_request.h's (pure), I/O is
 * the .c files'.
 */
#ifndef TLY_HTTP_INTERNAL_H
#define TLY_HTTP_INTERNAL_H

#include "tally_producer.h"
#include "tly_alert.h"
#include "tly_forward.h"
#include "tly_http.h"
#include "tly_http_conn.h"
#include "tly_http_latency.h"
#include "tly_http_tasks.h"
#include "tly_request.h"
#include "tly_state_cache.h"
#include "tly_stripe_portal.h"
#include "tly_webhooks.h"

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Ingest waits this long for Kafka before reporting a failure (503). */
#define INGEST_TIMEOUT_MS 10000

typedef enum {
  AUTH_REQUIRED = 0, /* bearer token */
  AUTH_PUBLIC,       /* health and readiness */
  AUTH_METRICS,      /* public when http.metrics_public */
  AUTH_SIGNED,       /* its own signature (the Stripe webhook) */
  AUTH_REGISTRY      /* bearer token, or basic auth whose password is an
                        API key (what Confluent's registry clients send) */
} route_auth_t;

typedef struct request request_t;
typedef struct response response_t;
/* A route's handler: fills out, or suspends the connection (a call to
 * Kafka, Stripe or the partition's owner) and sets out->suspended. */
typedef void route_handler_fn(tly_http_t *http, request_t *req,
                              struct MHD_Connection *connection,
                              response_t *out);
typedef route_handler_fn *route_handler_t;

typedef struct {
  const char *method;
  const char *path;   /* as documented: "/v1/subjects/{subject}/usage" */
  const char *prefix; /* path before {subject}, or the whole path */
  const char *suffix; /* path after {subject}; NULL: no subject segment;
                         "": the segment ends the path; ending in '*': one
                         more segment of any name ends it */
  route_handler_t handler;
  route_auth_t auth;
  int takes_body;
  int owner_only; /* reads the subject's state: its partition's owner answers */
} route_t;

/* Live usage streams (tly_http_stream.c). */
typedef struct tly_http_streams tly_http_streams_t;
/* A stream relayed from the owner (tly_http_stream_relay.c). */
typedef struct tly_stream_relay tly_stream_relay_t;
/* The Stripe subscription routes' client and tasks (tly_http_subs.c). */
typedef struct tly_http_subs tly_http_subs_t;

/* Reservations' state (tly_http_reserve.c). */
typedef struct tly_http_reserve tly_http_reserve_t;

#define STATUS_MIN 100
#define STATUS_MAX 599

struct tly_http {
  tly_http_conf_t conf;
  struct MHD_Daemon *daemon;
  tly_http_guard_t *guard; /* connection caps and read deadlines */
  uint16_t port;
  tly_state_cache_t *cache;
  /* Decodes the stored alerts for /alerts (a codec is not thread-safe). */
  tly_alert_codec_t *alert_codec;
  pthread_mutex_t alert_lock;
  tally_producer_t *producer;
  tly_stripe_portal_t *portal; /* NULL: Stripe not configured */
  tly_http_subs_t *subs;       /* NULL: Stripe not configured */
  tly_forward_t *forward;
  /* The analytics routes' scans of this instance's partitions, off the
   * HTTP threads (tly_http_analytics.c). */
  tly_http_tasks_t *scans;
  unsigned threads; /* the daemon's thread pool */
  /* Forwards to a partition's owner: relayed, owner unreachable, refused
   * (at the in-flight bound). */
  atomic_uint_least64_t forwards_relayed, forwards_failed, forwards_refused;
  /* Forwarded requests refused here (401): bad or missing credential. */
  atomic_uint_least64_t forwards_rejected;
  /* Per-subject reads of partitions not served here: answered from a
   * copy (stale), or 503 partition_moving (refused). */
  atomic_uint_least64_t moving_reads_stale, moving_reads_refused;
  atomic_uint_least64_t standby_forwards; /* reads sent to a standby holder */
  pthread_t poller;
  int poller_started;
  atomic_int stopping;
  /* Reservations: the grants not yet folded (tly_http_reserve.c). */
  tly_http_reserve_t *reserve;
  /* Requests by route (the last row: no route) and status. */
  atomic_uint_least64_t (*requests)[STATUS_MAX - STATUS_MIN + 1];
  /* The registry read API: tally's schemas as compact JSON text, their
   * subjects ("<topic>-value") and ids (tly_http_registry.c). */
  char *registry_schema[2];
  char registry_subject[2][TLY_REQ_SUBJECT_MAX + 8];
  int32_t registry_id[2];
  /* Their latency by route (same rows), from the request line read to the
   * answer queued. */
  tly_http_latency_t *latency;
  tly_http_streams_t *streams; /* live usage (SSE) subscribers */
  tly_webhooks_t *webhooks;    /* alert webhooks (NULL: none configured) */
};

/* A scan of a subject's stored alerts (tly_state_history's visitor,
 * tly_http_visit_alert): each decoded under the codec's lock and, when
 * it occurred at or after from_ms (INT64_MIN: all), appended to list as
 * its JSON answer, oldest first. failed: a corrupt record or no memory. */
typedef struct {
  tly_http_t *http;
  int64_t from_ms;
  json_t *list;
  int failed;
} tly_http_alert_scan_t;

/* The partition's event-time watermark: history (hours, alerts) that
 * expired before it is left out, whether or not compaction dropped it. */
int64_t tly_http_history_horizon(tly_http_t *http, int32_t partition);

int tly_http_visit_alert(void *opaque, const unsigned char *suffix,
                         size_t suffix_len, const char *value,
                         size_t value_len);

struct response {
  int status;
  char *body; /* malloc'd */
  /* Or constant data (the dashboard's files), never freed: */
  const unsigned char *static_body;
  size_t static_len;
  /* NULL-terminated name/value pairs added to the answer (NULL: none). */
  const char *const *extra_headers;
  const char *location; /* a Location header (NULL: none) */
  /* A streamed answer (SSE): queued as it is, the connection left in the
   * guard's "waiting" phase (no answer deadline). */
  struct MHD_Response *stream;
  const char *content_type;
  int suspended;     /* the handler suspended the connection: no answer yet */
  int retry_after_s; /* >0: a Retry-After header */
  int stale;         /* answered from a copy: X-Tally-Stale: 1 */
  int moving;        /* a 503 partition_moving */
};

/* Reads during a move (tly_http_stale.c): the staleness bound's default
 * for /quota, /usage, /usage/daily and /alerts (/cycles: 0), and its
 * largest value (1 hour). */
#define TLY_STALE_DEFAULT_MS 5000
#define TLY_STALE_MAX_MS 3600000

/* The copy a read is being answered from. */
typedef struct {
  int active;
  int32_t partition;
  int64_t offset, lag_records, age_ms;
} tly_http_stale_t;

typedef struct ingest ingest_t;

/* What every record the port produces points at (its msg_opaque starts
 * with one): the delivery report goes to done, on the producer's poller
 * thread or inside a send, with where the record landed (-1: failed). */
typedef struct tly_http_delivery tly_http_delivery_t;
struct tly_http_delivery {
  void (*done)(tly_http_delivery_t *delivery, int error, const char *errstr,
               int32_t partition, int64_t offset);
};

enum { PHASE_HEADERS = 0, PHASE_BODY, PHASE_WAIT };

struct request {
  size_t uri_len;     /* the whole request target, query included */
  int64_t started_us; /* monotonic, when the request line was read */
  int phase;
  int route; /* index into tly_http_route_table, -1: none */
  char subject[TLY_REQ_SUBJECT_MAX + 2];
  char *body;
  size_t body_len, body_cap, body_seen;
  int body_too_large;
  int answered;     /* an answer is queued: the handler never runs again */
  ingest_t *ingest; /* while waiting for Kafka */
  tly_http_task_t *portal;        /* while waiting for Stripe */
  tly_http_task_t *stripe_task;   /* a subscription route's Stripe calls */
  char *target;                   /* the request target, query included */
  tly_forward_call_t *forward;    /* while waiting for the owner */
  struct tly_http_gather *gather; /* while waiting for the owners' parts */
  tly_stream_relay_t *relay;      /* a stream relayed from the owner */
  const char *served_by; /* X-Tally-Served-By: this instance or owner */
  char owner[TLY_MEMBERS_URL_MAX]; /* the owner forwarded to */
  char content_type[128];          /* of the owner's answer */
  int32_t partition;               /* the subject's, -1 until known */
  /* Marked as forwarded by another instance (an owner-only route): its
   * credential, not a bearer token, is checked, once the body is in. */
  int forwarded;
  /* Being answered from a copy (tly_http_stale.c). */
  tly_http_stale_t stale;
  /* Forwarded to a standby copy's holder already: not again. */
  int standby_tried;
};

/* ---- tly_http.c: the route table, answers ---------------------------- */

/* Indexed by request_t.route; tly_http_route_count entries. */
extern const route_t tly_http_route_table[];
extern const size_t tly_http_route_count;

json_t *tly_http_error_json(const char *code, const char *message,
                            const char *field);
void tly_http_respond_json(response_t *out, int status, json_t *body);
/* An answer its handler wrote as JSON text (malloc'd; taken): 0, or -1
 * with nothing set when text is NULL (the writer met a string that is
 * not UTF-8: the handler answers from its jansson tree instead). */
int tly_http_respond_json_text(response_t *out, int status, char *text);
/* 200 with answer as JSON, or as CSV (to_csv, text/csv) when the request's
 * Accept names text/csv (tly_req_wants_csv). Takes answer; NULL: 500. */
void tly_http_respond_table(response_t *out, struct MHD_Connection *connection,
                            json_t *answer, char *(*to_csv)(const json_t *));
void tly_http_respond_error(response_t *out, int status, const char *code,
                            const char *message);
void tly_http_respond_req_error(response_t *out, const tly_req_error_t *err);
void tly_http_respond_answer(response_t *out, json_t *answer,
                             const tly_req_error_t *err);
void tly_http_respond_moving(response_t *out, int32_t partition,
                             const char *owner, const char *message);

/* ---- tly_http_queries.c: answers from state or a request body -------- */

route_handler_fn tly_http_handle_usage, tly_http_handle_quota,
    tly_http_handle_daily, tly_http_handle_cycles, tly_http_handle_alerts,
    tly_http_handle_plans, tly_http_handle_estimate, tly_http_handle_prorate;
/* The subject's committed state, from a partition served here (or from
 * the copy req->stale names). */
int tly_http_find_subject(tly_http_t *http, const request_t *req,
                          const tly_req_subject_t *subject,
                          tly_subject_state_t *state, response_t *out);

/* ---- tly_http_stale.c: reads during a move --------------------------- */

/* The route's default staleness bound (ms). */
int64_t tly_http_stale_default_ms(route_handler_t handler);
/* 1 for the routes a copy may answer (reads of a subject's state). */
int tly_http_stale_route(route_handler_t handler);
/* ?max_staleness_ms (NULL: absent) or the route's default into *bound_ms;
 * 0, or -1 with the 400 in err. */
int tly_http_stale_bound(route_handler_t handler, const char *text,
                         int64_t *bound_ms, tly_req_error_t *err);
/* A read of req->partition, which this instance does not serve: 1 when
 * out holds the answer from this store's copy (within the bound; or a 400
 * for a bad bound), 0 when there is none to give (the caller answers
 * 503). */
int tly_http_try_stale(tly_http_t *http, request_t *req,
                       struct MHD_Connection *connection, response_t *out);

/* ---- tly_http_ingest.c: Kafka, the Stripe webhook and portal --------- */

route_handler_fn tly_http_handle_events, tly_http_handle_plan,
    tly_http_handle_stripe_webhook, tly_http_handle_billing_portal;
/* One event produced with another file's answer: reported runs once with
 * the delivery report (or the failure to send: error -1, partition and
 * offset -1), on the reporting thread, before the connection resumes;
 * answer builds the answer once it has; free frees opaque (always, once). */
typedef struct {
  void (*reported)(void *opaque, int error, const char *errstr,
                   int32_t partition, int64_t offset);
  void (*answer)(void *opaque, response_t *out);
  void (*free)(void *opaque);
  void *opaque;
} tly_http_produce_hooks_t;
/* Produces event (its strings are taken: cleared after) and suspends the
 * connection until Kafka reported, or answers now (out). The producer must
 * exist (tly_http_ingest_available). */
void tly_http_produce_one(tly_http_t *http, request_t *req,
                          struct MHD_Connection *connection, tly_event_t *event,
                          const tly_http_produce_hooks_t *hooks,
                          response_t *out);
/* The same for events->count events (each ok; taken: cleared after),
 * answered once Kafka reported every one (hooks->reported runs per
 * report, possibly on another thread). */
void tly_http_produce_many(tly_http_t *http, request_t *req,
                           struct MHD_Connection *connection,
                           tly_req_events_t *events,
                           const tly_http_produce_hooks_t *hooks,
                           response_t *out);
/* 1 when the port can produce (it has brokers and is not stopping), else
 * 0 with the 503 in out. */
int tly_http_ingest_available(tly_http_t *http, response_t *out);
/* The ingest producer and its poller thread (none without brokers). */
int tly_http_start_producer(tly_http_t *http, char *errstr, size_t errstr_size);
/* A suspended ingest, resumed: its answer; freeing it. */
void tly_http_ingest_answer(ingest_t *ingest, response_t *out);
void tly_http_ingest_free(ingest_t *ingest);

/* ---- tly_http_subs.c: customers, subscriptions, invoices in Stripe ---- */

route_handler_fn tly_http_handle_customer, tly_http_handle_subscribe,
    tly_http_handle_subscription_change, tly_http_handle_subscription_cancel,
    tly_http_handle_invoices;
/* The routes' Stripe client (none without stripe.secret_key_env). 0 or -1. */
int tly_http_subs_init(tly_http_t *http, char *errstr, size_t errstr_size);
/* Waits for the tasks in flight (they resume connections). */
void tly_http_subs_close(tly_http_t *http);
void tly_http_subs_free(tly_http_t *http);
/* 1 for the routes above. */
int tly_http_is_subs_route(route_handler_t handler);
/* How long a forwarded request of these routes may take. */
long tly_http_subs_forward_timeout_ms(const tly_http_t *http);
/* A finished task's answer into out (frees the task). */
void tly_http_subs_answer(request_t *req, response_t *out);

/* ---- tly_http_reserve.c: reservations --------------------------------- */

route_handler_fn tly_http_handle_reserve, tly_http_handle_release;
tly_http_reserve_t *tly_http_reserve_new(void); /* NULL on OOM */
void tly_http_reserve_free(tly_http_reserve_t *reserve);
/* The reservations' metrics (Prometheus text) into out; the length it
 * needed, as snprintf. */
size_t tly_http_reserve_metrics(tly_http_t *http, char *out, size_t size);

/* ---- tly_http_registry.c: the schema registry's read API ------------- */

route_handler_fn tly_http_handle_registry_subjects,
    tly_http_handle_registry_versions, tly_http_handle_registry_version,
    tly_http_handle_registry_schema;
/* Sets up the schemas, subjects and ids the routes serve. 0 or -1. */
int tly_http_registry_init(tly_http_t *http, char *errstr, size_t errstr_size);
void tly_http_registry_free(tly_http_t *http);

/* ---- tly_http_notify.c: notifications with read state ----------------- */

route_handler_fn tly_http_handle_notifications,
    tly_http_handle_notifications_read;

/* ---- tly_http_analytics.c: analytics across the cluster -------------- */
route_handler_fn tly_http_handle_analytics_top,
    tly_http_handle_analytics_breakdown;
typedef struct tly_http_gather tly_http_gather_t;
/* Scans of this instance's partitions running at once, at most (each on a
 * thread of its own, http->scans): one more answers 503 analytics_busy. */
#define TLY_ANALYTICS_SCANS_MAX 4
/* A resumed gather: its answer into out (frees req->gather). */
void tly_http_analytics_answer(tly_http_t *http, request_t *req,
                               struct MHD_Connection *connection,
                               response_t *out);
void tly_http_gather_free(tly_http_gather_t *gather); /* NULL is fine */
/* 1 for the routes answered across the cluster: a forwarded request of
 * them is a gatherer's, its credential checked as for an owner's. */
int tly_http_is_gather_route(route_handler_t handler);
/* ---- tly_http_stream.c: live usage (SSE) ------------------------------ */

route_handler_fn tly_http_handle_stream;
tly_http_streams_t *tly_http_streams_new(tly_http_t *http); /* NULL: OOM */
/* Ends every stream (before the daemon stops: none may stay suspended). */
void tly_http_streams_close(tly_http_streams_t *streams);
void tly_http_streams_free(tly_http_streams_t *streams);
/* A relayed stream's slot (it counts against the stream bound): 0, or -1
 * at the bound (counted as refused). End it when the relay's transfer is
 * over. */
int tly_http_streams_relay_begin(tly_http_streams_t *streams);
void tly_http_streams_relay_end(tly_http_streams_t *streams);
/* 1 once tly_http_streams_close began: relays abort their transfers. */
int tly_http_streams_relay_stopping(tly_http_streams_t *streams);
/* The streams' metrics (Prometheus text) into out, as snprintf. */
size_t tly_http_streams_metrics(tly_http_streams_t *streams, char *out,
                                size_t size);

/* ---- tly_http_stream_relay.c: a stream relayed from the owner --------- */

/* Opens the stream on the owner (its URL; credential: the signed
 * forwarding credential) with the connection suspended. 1 when it went
 * (req->relay; answered on resume with tly_http_stream_relay_answer), 0
 * when out holds the answer (503). */
int tly_http_stream_relay(tly_http_t *http, request_t *req,
                          struct MHD_Connection *connection, const char *owner,
                          const char *credential, response_t *out);
/* The resumed request's answer: the owner's stream, or its other answer
 * (or 503). Takes req->relay. */
void tly_http_stream_relay_answer(tly_http_t *http, request_t *req,
                                  response_t *out);
/* A request that ended before its answer (the client went away). */
void tly_http_stream_relay_drop(tly_stream_relay_t *relay);

/* ---- tly_http_ui.c: the dashboard's files ----------------------------- */

route_handler_fn tly_http_handle_ui_root, tly_http_handle_ui_index,
    tly_http_handle_ui_file;

/* ---- tly_http_metrics.c: health, readiness, metrics ------------------ */

route_handler_fn tly_http_handle_healthz, tly_http_handle_readyz,
    tly_http_handle_metrics;
tly_partition_status_t *tly_http_partition_snapshot(tly_http_t *http,
                                                    size_t *count);

#endif
