/*
 * tly_http.c - the HTTP port: libmicrohttpd, a route table, auth, bounds,
 * and handlers that turn committed state (tly_state, through a read cache)
 * or a request body (tly_request, pure) into JSON.
 *
 * A request goes through three phases. On the first call (headers only)
 * the URL is bounded (414), the route found (404, 405), the bearer token
 * checked when the route wants one (401) and a declared body bounded (413);
 * a route without a body answers right there, which is the quota
 * pre-check's whole path. A route with a body gets it in pieces, kept up to
 * http.max_body_bytes (a chunked body that grows past it is drained and
 * answered 413; one that keeps going is cut off). Ingest routes then
 * produce to Kafka and suspend the connection instead of blocking an HTTP
 * thread; the last delivery report resumes it and the answer (202 only when
 * Kafka acknowledged every good event) is queued on the third phase.
 *
 * Routes match the raw request path (still percent-encoded); only the
 * {subject} segment is decoded (tly_req_decode_segment), so a subject may
 * hold a '/' sent as %2F. Connections are guarded by tly_http_conn.h: caps
 * per client and in all, and read deadlines no slow drip can extend.
 *
 * Errors are {"error": {"code": ..., "message": ..., "field": ...}}.
 */
#include "tly_http.h"

#include "tally_producer.h"
#include "tly_auth.h"
#include "tly_cluster_auth.h"
#include "tly_forward.h"
#include "tly_http_conn.h"
#include "tly_log.h"
#include "tly_request.h"
#include "tly_request_subject.h"
#include "tly_state.h"
#include "tly_state_cache.h"
#include "tly_stripe_portal.h"
#include "tly_stripe_webhook.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if MHD_VERSION < 0x00097002
typedef int tly_mhd_result;
#else
typedef enum MHD_Result tly_mhd_result;
#endif

/* A chunked body this far past the limit is cut off (no answer): reading
 * on would only feed a client that ignores the limit. */
#define BODY_DRAIN_FACTOR 4
/* Ingest waits this long for Kafka before reporting a failure (503). */
#define INGEST_TIMEOUT_MS 10000

typedef enum {
  AUTH_REQUIRED = 0, /* bearer token */
  AUTH_PUBLIC,       /* health and readiness */
  AUTH_METRICS,      /* public when http.metrics_public */
  AUTH_SIGNED        /* its own signature (the Stripe webhook) */
} route_auth_t;

typedef struct request request_t;
typedef struct response response_t;
typedef void (*route_handler_t)(tly_http_t *http, request_t *req,
                                struct MHD_Connection *connection,
                                response_t *out);

typedef struct {
  const char *method;
  const char *path;   /* as documented: "/v1/subjects/{subject}/usage" */
  const char *prefix; /* path before {subject}, or the whole path */
  const char *suffix; /* path after {subject}; NULL: no subject segment */
  route_handler_t handler;
  route_auth_t auth;
  int takes_body;
  int owner_only; /* reads the subject's state: its partition's owner answers */
} route_t;

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
  tly_forward_t *forward;
  /* Forwards to a partition's owner: relayed, owner unreachable, refused
   * (at the in-flight bound). */
  atomic_uint_least64_t forwards_relayed, forwards_failed, forwards_refused;
  /* Forwarded requests refused here (401): bad or missing credential. */
  atomic_uint_least64_t forwards_rejected;
  pthread_t poller;
  int poller_started;
  atomic_int stopping;
  /* Requests by route (the last row: no route) and status. */
  atomic_uint_least64_t (*requests)[STATUS_MAX - STATUS_MIN + 1];
};

struct response {
  int status;
  char *body; /* malloc'd */
  const char *content_type;
  int suspended;     /* the handler suspended the connection: no answer yet */
  int retry_after_s; /* >0: a Retry-After header */
};

typedef struct ingest ingest_t;
/* What an ingest answers once Kafka reported: per-event results (POST
 * /v1/events), the plan assignment, or the Stripe webhook's 200. */
enum { INGEST_EVENTS = 0, INGEST_PLAN, INGEST_STRIPE };

enum { PHASE_HEADERS = 0, PHASE_BODY, PHASE_WAIT };

struct request {
  size_t uri_len; /* the whole request target, query included */
  int phase;
  int route; /* index into routes, -1: none */
  char subject[TLY_REQ_SUBJECT_MAX + 2];
  char *body;
  size_t body_len, body_cap, body_seen;
  int body_too_large;
  int answered;     /* an answer is queued: the handler never runs again */
  ingest_t *ingest; /* while waiting for Kafka */
  tly_stripe_portal_call_t *portal; /* while waiting for Stripe */
  char *target;                     /* the request target, query included */
  tly_forward_call_t *forward;      /* while waiting for the owner */
  const char *served_by; /* X-Tally-Served-By: this instance or owner */
  char owner[TLY_MEMBERS_URL_MAX]; /* the owner forwarded to */
  char content_type[128];          /* of the owner's answer */
  int32_t partition;               /* the subject's, -1 until known */
  /* Marked as forwarded by another instance (an owner-only route): its
   * credential, not a bearer token, is checked, once the body is in. */
  int forwarded;
};

/* ---- responses ------------------------------------------------------- */

static void respond_json(response_t *out, int status, json_t *body) {
  out->status = status;
  out->body = body ? json_dumps(body, JSON_COMPACT) : NULL;
  out->content_type = "application/json";
  json_decref(body);
}

static json_t *error_json(const char *code, const char *message,
                          const char *field) {
  /* A message quoting client bytes cut at a length bound may end inside a
   * UTF-8 sequence, which JSON cannot carry: such bytes become '?'. */
  char safe[1024];
  if (!tly_req_utf8_valid(message, strlen(message))) {
    snprintf(safe, sizeof(safe), "%s", message);
    tly_req_utf8_sanitize(safe);
    message = safe;
  }
  json_t *error = json_pack("{s:s,s:s}", "code", code, "message", message);
  if (error && field && *field)
    json_object_set_new(error, "field", json_string(field));
  return error;
}

static void respond_error(response_t *out, int status, const char *code,
                          const char *message) {
  respond_json(out, status,
               json_pack("{s:o}", "error", error_json(code, message, NULL)));
}

static void respond_req_error(response_t *out, const tly_req_error_t *err) {
  respond_json(out, err->status,
               json_pack("{s:o}", "error",
                         error_json(err->code, err->message, err->field)));
}

/* A request module's answer: 200 with it, or its error when NULL. */
static void respond_answer(response_t *out, json_t *answer,
                           const tly_req_error_t *err) {
  if (answer)
    respond_json(out, 200, answer);
  else
    respond_req_error(out, err);
}

/* 503 while the subject's partition has no single caught-up owner that
 * this request can reach: {"error": {"code": "partition_moving", ...},
 * "partition": N, "owner": URL (when one is known), "retry_after_s": 1},
 * with Retry-After. partition -1: not known yet (no metadata). */
static void respond_moving(response_t *out, int32_t partition,
                           const char *owner, const char *message) {
  json_t *body = json_pack("{s:o,s:i}", "error",
                           error_json("partition_moving", message, NULL),
                           "retry_after_s", 1);
  if (body) {
    json_object_set_new(body, "partition",
                        partition >= 0 ? json_integer(partition) : json_null());
    if (owner && *owner)
      json_object_set_new(body, "owner", json_string(owner));
  }
  respond_json(out, 503, body);
  out->retry_after_s = 1;
}

/* ---- state ----------------------------------------------------------- */

/* Moves after every commit and every rebalance (what is current changes
 * with the assignment), so cached answers never outlive either. */
static uint64_t commit_count(void *opaque) {
  tly_processor_stats_t stats;
  tly_processor_stats(opaque, &stats);
  return stats.batches_committed + stats.rebalances;
}

/* Whether this instance serves the partition: assigned here, caught up,
 * and no rebalance under way (tly_processor_partition_role). One lock, no
 * copy: it runs on every subject read, the quota pre-check included. */
static int partition_served(void *processor, int32_t partition) {
  return tly_processor_partition_role(processor, partition) ==
         TLY_PARTITION_SERVING;
}

/* The subject's committed state through the cache, read from the
 * partitions this instance serves only. 1, 0, or -1 when out holds the
 * answer: 500, or 503 when the subject's partition is not served here (any
 * more: a rebalance started since the request was routed). */
static int find_subject(tly_http_t *http, const tly_req_subject_t *subject,
                        tly_subject_state_t *state, response_t *out) {
  char errstr[512];
  int32_t partition_count = tly_processor_partition_count(http->conf.processor);
  int32_t home =
      tly_state_home_partition(partition_count, subject->kind, subject->id);
  if (!partition_served(http->conf.processor, home)) {
    memset(state, 0, sizeof(*state));
    respond_moving(out, home, NULL,
                   "this instance does not serve the subject's partition now");
    return -1;
  }
  int found = tly_state_cache_find(
      http->cache, http->conf.store, partition_count, partition_served,
      http->conf.processor, commit_count, http->conf.processor, subject->kind,
      subject->id, state, errstr, sizeof(errstr));
  if (found < 0)
    respond_error(out, 500, "store_error", errstr);
  return found;
}

/* ---- handlers: health, readiness, metrics ----------------------------- */

static void handle_healthz(tly_http_t *http, request_t *req,
                           struct MHD_Connection *connection, response_t *out) {
  (void)http, (void)req, (void)connection;
  respond_json(out, 200, json_pack("{s:s}", "status", "ok"));
}

/* A malloc'd snapshot of the processor's partitions; *count entries. */
static tly_partition_status_t *partition_snapshot(tly_http_t *http,
                                                  size_t *count) {
  return tly_processor_partitions_copy(http->conf.processor, count);
}

/* Ready once every assigned partition has committed up to the log end seen
 * when it was assigned (its replay target). 1 ready, 0 not, -1 OOM; *detail
 * (optional) says which partitions are behind. */
static int readiness(tly_http_t *http, json_t **detail) {
  size_t count = 0, assigned = 0;
  /* A rebalance sets partitions up one at a time: read the flag on both
   * sides of the snapshot so a half-made assignment never counts. */
  int rebalancing = tly_processor_rebalancing(http->conf.processor);
  tly_partition_status_t *status = partition_snapshot(http, &count);
  rebalancing |= tly_processor_rebalancing(http->conf.processor);
  json_t *behind = json_array();
  if (!status || !behind) {
    free(status);
    json_decref(behind);
    return -1;
  }
  for (size_t i = 0; i < count; i++) {
    if (!status[i].assigned)
      continue;
    assigned++;
    int64_t committed =
        status[i].committed_offset < 0 ? 0 : status[i].committed_offset;
    if (committed < status[i].replay_target)
      json_array_append_new(
          behind,
          json_pack("{s:i,s:I,s:I,s:I}", "partition", (int)status[i].partition,
                    "committed_offset", (json_int_t)committed, "replay_target",
                    (json_int_t)status[i].replay_target, "remaining",
                    (json_int_t)(status[i].replay_target - committed)));
  }
  free(status);
  int ready = !rebalancing && assigned > 0 && json_array_size(behind) == 0;
  if (detail) {
    int32_t restoring = tly_processor_restoring(http->conf.processor);
    const char *reason =
        restoring >= 0 ? "restoring: a partition's state is being read "
                         "from the changelog"
        : rebalancing  ? "rebalancing: partitions are being assigned"
        : !assigned    ? "no partitions assigned yet"
                       : "replaying: partitions have not caught up with the "
                         "log end seen when they were assigned";
    *detail = ready ? json_pack("{s:s,s:I}", "status", "ready", "partitions",
                                (json_int_t)assigned)
                    : json_pack("{s:s,s:s,s:O}", "status", "not_ready",
                                "reason", reason, "behind", behind);
  }
  json_decref(behind);
  return ready;
}

static void handle_readyz(tly_http_t *http, request_t *req,
                          struct MHD_Connection *connection, response_t *out) {
  json_t *detail = NULL;
  (void)req, (void)connection;
  int ready = readiness(http, &detail);
  if (ready < 0) {
    respond_error(out, 500, "internal", "out of memory");
    return;
  }
  respond_json(out, ready ? 200 : 503, detail);
}

/* Appends formatted text to a growing buffer; ignores OOM (truncates). */
typedef struct {
  char *data;
  size_t len, cap;
} text_t;

static void text_append(text_t *text, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void text_append(text_t *text, const char *fmt, ...) {
  va_list ap;
  for (;;) {
    size_t room = text->cap - text->len;
    va_start(ap, fmt);
    int needed =
        vsnprintf(text->data ? text->data + text->len : NULL, room, fmt, ap);
    va_end(ap);
    if (needed < 0)
      return;
    if ((size_t)needed < room) {
      text->len += (size_t)needed;
      return;
    }
    size_t cap = (text->cap ? text->cap * 2 : 4096) + (size_t)needed;
    char *grown = realloc(text->data, cap);
    if (!grown)
      return;
    text->data = grown;
    text->cap = cap;
  }
}

static const route_t routes[];
static const size_t route_count;

static void metrics_http(tly_http_t *http, text_t *text) {
  text_append(text, "# HELP tally_http_requests_total HTTP requests answered, "
                    "by route and status.\n# TYPE tally_http_requests_total "
                    "counter\n");
  for (size_t r = 0; r <= route_count; r++) {
    for (int s = STATUS_MIN; s <= STATUS_MAX; s++) {
      uint64_t n = atomic_load(&http->requests[r][s - STATUS_MIN]);
      if (n)
        text_append(text,
                    "tally_http_requests_total{method=\"%s\",route=\"%s\","
                    "status=\"%d\"} %llu\n",
                    r < route_count ? routes[r].method : "",
                    r < route_count ? routes[r].path : "unmatched", s,
                    (unsigned long long)n);
    }
  }
  tly_state_cache_stats_t cache;
  tly_state_cache_stats(http->cache, &cache);
  text_append(text,
              "# HELP tally_http_state_cache_total State reads of the HTTP "
              "port, answered from the read cache or RocksDB.\n# TYPE "
              "tally_http_state_cache_total counter\n"
              "tally_http_state_cache_total{result=\"hit\"} %llu\n"
              "tally_http_state_cache_total{result=\"miss\"} %llu\n",
              (unsigned long long)cache.hits, (unsigned long long)cache.misses);
  text_append(text,
              "# HELP tally_http_forwards_total Per-subject requests sent to "
              "the owner of the subject's partition, by result (relayed: "
              "its answer was relayed; failed: it did not answer, 503; "
              "refused: too many in flight, 503).\n# TYPE "
              "tally_http_forwards_total counter\n"
              "tally_http_forwards_total{result=\"relayed\"} %llu\n"
              "tally_http_forwards_total{result=\"failed\"} %llu\n"
              "tally_http_forwards_total{result=\"refused\"} %llu\n",
              (unsigned long long)atomic_load(&http->forwards_relayed),
              (unsigned long long)atomic_load(&http->forwards_failed),
              (unsigned long long)atomic_load(&http->forwards_refused));
  tly_conn_stats_t conns;
  tly_http_guard_stats(http->guard, &conns);
  text_append(text,
              "# HELP tally_http_connections_open HTTP connections open "
              "(http.max_connections at most).\n# TYPE "
              "tally_http_connections_open gauge\n"
              "tally_http_connections_open %llu\n"
              "# HELP tally_http_connections_closed_total HTTP connections "
              "the port closed itself, by reason: a read deadline "
              "(http.header_timeout_ms, http.request_timeout_ms) or a cap "
              "(http.max_connections_per_ip, http.max_connections).\n"
              "# TYPE tally_http_connections_closed_total counter\n",
              (unsigned long long)conns.open);
  for (int r = 0; r < TLY_CONN_CLOSED_REASONS; r++)
    text_append(text,
                "tally_http_connections_closed_total{reason=\"%s\"} %llu\n",
                tly_conn_closed_reason_name((tly_conn_closed_reason_t)r),
                (unsigned long long)conns.closed[r]);
  text_append(text,
              "# HELP tally_http_forwards_rejected_total Requests marked as "
              "forwarded by another instance refused here with 401 (no, "
              "expired or invalid forwarding credential).\n# TYPE "
              "tally_http_forwards_rejected_total counter\n"
              "tally_http_forwards_rejected_total %llu\n",
              (unsigned long long)atomic_load(&http->forwards_rejected));
  tly_members_t *members = http->conf.members;
  if (!members)
    return;
  text_append(text, "# HELP tally_members_records_total Records of the "
                    "members topic read, by verdict (applied, or why they "
                    "were ignored: bad_mac, malformed, stale, replayed).\n"
                    "# TYPE tally_members_records_total counter\n");
  for (int v = 0; v < TLY_MEMBERS_VERDICTS; v++)
    text_append(text, "tally_members_records_total{verdict=\"%s\"} %llu\n",
                tly_members_verdict_name((tly_members_verdict_t)v),
                (unsigned long long)tly_members_count(
                    members, (tly_members_verdict_t)v));
}

/* A Prometheus histogram: cumulative buckets with bounds in ms, +Inf (the
 * count), the sum in seconds and the count. */
static void metrics_histogram(text_t *text, const char *name, const char *help,
                              const int64_t *bounds_ms, const uint64_t *buckets,
                              int bucket_count, uint64_t count,
                              double sum_seconds) {
  text_append(text, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
  for (int i = 0; i < bucket_count; i++)
    text_append(text, "%s_bucket{le=\"%g\"} %llu\n", name,
                (double)bounds_ms[i] / 1000.0, (unsigned long long)buckets[i]);
  text_append(text, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n",
              name, (unsigned long long)count, name, sum_seconds, name,
              (unsigned long long)count);
}

static void handle_metrics(tly_http_t *http, request_t *req,
                           struct MHD_Connection *connection, response_t *out) {
  tly_processor_stats_t stats;
  text_t text = {0};
  size_t count = 0;
  (void)req, (void)connection;

  tly_processor_stats(http->conf.processor, &stats);
  text_append(&text,
              "# HELP tally_events_folded_total Usage events folded into "
              "committed state.\n# TYPE tally_events_folded_total counter\n"
              "tally_events_folded_total %llu\n",
              (unsigned long long)stats.events_folded);
  text_append(&text,
              "# HELP tally_dead_letters_total Input records sent to the "
              "dead-letter topic.\n# TYPE tally_dead_letters_total counter\n"
              "tally_dead_letters_total %llu\n",
              (unsigned long long)stats.dead_letters);
  text_append(&text,
              "# HELP tally_duplicates_total Events ignored as already folded "
              "(same event_id).\n# TYPE tally_duplicates_total counter\n"
              "tally_duplicates_total %llu\n",
              (unsigned long long)stats.duplicates);
  text_append(&text,
              "# HELP tally_alerts_total Alerts emitted by the fold.\n"
              "# TYPE tally_alerts_total counter\ntally_alerts_total %llu\n",
              (unsigned long long)stats.alerts);
  text_append(&text,
              "# HELP tally_batches_committed_total RocksDB commits.\n"
              "# TYPE tally_batches_committed_total counter\n"
              "tally_batches_committed_total %llu\n",
              (unsigned long long)stats.batches_committed);
  {
    static const int64_t commit_bounds[TLY_COMMIT_BUCKETS] =
        TLY_COMMIT_BUCKET_BOUNDS_MS;
    static const int64_t visible_bounds[TLY_VISIBLE_BUCKETS] =
        TLY_VISIBLE_BUCKET_BOUNDS_MS;
    metrics_histogram(&text, "tally_commit_seconds",
                      "Synced RocksDB commit latency (state, outbox and "
                      "offsets of one batch).",
                      commit_bounds, stats.commit_buckets, TLY_COMMIT_BUCKETS,
                      stats.commit_count,
                      (double)stats.commit_micros_total / 1e6);
    metrics_histogram(&text, "tally_event_visible_seconds",
                      "From a record's Kafka timestamp (produced) to the "
                      "durable commit that makes it visible over HTTP.",
                      visible_bounds, stats.visible_buckets,
                      TLY_VISIBLE_BUCKETS, stats.visible_count,
                      (double)stats.visible_ms_total / 1e3);
  }
  text_append(&text,
              "# HELP tally_outbox_entries Outputs committed but not yet "
              "acknowledged by Kafka.\n# TYPE tally_outbox_entries gauge\n"
              "tally_outbox_entries %llu\n",
              (unsigned long long)stats.outbox_pending);
  text_append(&text,
              "# HELP tally_replay_outputs_skipped_total Outputs of replayed "
              "records found in the output topics by id and not sent "
              "again.\n# TYPE tally_replay_outputs_skipped_total counter\n"
              "tally_replay_outputs_skipped_total %llu\n",
              (unsigned long long)stats.replay_skipped);
  text_append(&text,
              "# HELP tally_stalls_total Times the processor found it had "
              "been away longer than the group session timeout and held "
              "its outputs until the group confirmed or revoked its "
              "partitions.\n# TYPE tally_stalls_total counter\n"
              "tally_stalls_total %llu\n"
              "# HELP tally_outputs_abandoned_total Outbox entries (outputs, "
              "changelog bundles) of revoked partitions not yet sent, left "
              "to the next owner's replay.\n"
              "# TYPE tally_outputs_abandoned_total counter\n"
              "tally_outputs_abandoned_total %llu\n",
              (unsigned long long)stats.stalls,
              (unsigned long long)stats.abandoned);
  text_append(&text,
              "# HELP tally_changelog_restores_total Partitions restored from "
              "the state changelog.\n# TYPE tally_changelog_restores_total "
              "counter\ntally_changelog_restores_total %llu\n"
              "# HELP tally_changelog_restored_records_total Changelog "
              "records read by those restores.\n# TYPE "
              "tally_changelog_restored_records_total counter\n"
              "tally_changelog_restored_records_total %llu\n"
              "# HELP tally_changelog_restore_seconds_total Time those "
              "restores took.\n# TYPE tally_changelog_restore_seconds_total "
              "counter\ntally_changelog_restore_seconds_total %.3f\n",
              (unsigned long long)stats.changelog_restores,
              (unsigned long long)stats.changelog_restored_records,
              (double)stats.changelog_restore_ms / 1000.0);
  tly_partition_status_t *status = partition_snapshot(http, &count);
  text_append(&text, "# HELP tally_partition_committed_offset Next input "
                     "offset committed to RocksDB.\n# TYPE "
                     "tally_partition_committed_offset gauge\n");
  for (size_t i = 0; status && i < count; i++)
    if (status[i].assigned)
      text_append(
          &text, "tally_partition_committed_offset{partition=\"%d\"} %lld\n",
          (int)status[i].partition, (long long)status[i].committed_offset);
  text_append(&text, "# HELP tally_partition_replay_target Log end when the "
                     "partition was assigned (ready once committed).\n# TYPE "
                     "tally_partition_replay_target gauge\n");
  for (size_t i = 0; status && i < count; i++)
    if (status[i].assigned)
      text_append(&text,
                  "tally_partition_replay_target{partition=\"%d\"} %lld\n",
                  (int)status[i].partition, (long long)status[i].replay_target);
  text_append(&text, "# HELP tally_consumer_lag Records in the log not yet "
                     "committed, per partition.\n# TYPE tally_consumer_lag "
                     "gauge\n");
  for (size_t i = 0; status && i < count; i++) {
    if (!status[i].assigned || status[i].high_watermark < 0)
      continue;
    int64_t committed =
        status[i].committed_offset < 0 ? 0 : status[i].committed_offset;
    int64_t lag = status[i].high_watermark - committed;
    text_append(&text, "tally_consumer_lag{partition=\"%d\"} %lld\n",
                (int)status[i].partition, (long long)(lag < 0 ? 0 : lag));
  }
  text_append(&text,
              "# HELP tally_events_forwarded_total Input records that "
              "arrived on a partition other than their subject's home "
              "partition and were forwarded there, by the partition they "
              "arrived on.\n# TYPE tally_events_forwarded_total counter\n");
  for (size_t i = 0; status && i < count; i++)
    if (status[i].assigned || status[i].forwarded)
      text_append(
          &text, "tally_events_forwarded_total{partition=\"%d\"} %llu\n",
          (int)status[i].partition, (unsigned long long)status[i].forwarded);
  free(status);
  text_append(&text,
              "# HELP tally_ready 1 once every assigned partition has "
              "caught up with its replay (see /readyz).\n# TYPE "
              "tally_ready gauge\ntally_ready %d\n",
              readiness(http, NULL) == 1);
  if (http->conf.stripe_emitter) {
    tly_stripe_emitter_stats_t stripe;
    tly_stripe_emitter_stats(http->conf.stripe_emitter, &stripe);
    text_append(
        &text,
        "# HELP tally_stripe_reports_total Usage deltas reported to Stripe, "
        "by result (sent: accepted; failed: refused or too old, see the "
        "dead-letter topic).\n# TYPE tally_stripe_reports_total counter\n"
        "tally_stripe_reports_total{result=\"sent\"} %llu\n"
        "tally_stripe_reports_total{result=\"failed\"} %llu\n"
        "# HELP tally_stripe_retries_total Stripe requests retried (no "
        "answer, 429, 5xx).\n# TYPE tally_stripe_retries_total counter\n"
        "tally_stripe_retries_total %llu\n"
        "# HELP tally_stripe_oldest_unreported_seconds Age of the oldest "
        "usage change not yet settled with Stripe (0: none).\n# TYPE "
        "tally_stripe_oldest_unreported_seconds gauge\n"
        "tally_stripe_oldest_unreported_seconds %lld\n"
        "# HELP tally_stripe_reconciled_total Report intents unsettled "
        "for 24 h, checked against Stripe's meter event summaries, by "
        "result (in_stripe: counted reported; resent: sent again under a "
        "new identifier).\n# TYPE tally_stripe_reconciled_total counter\n"
        "tally_stripe_reconciled_total{result=\"in_stripe\"} %llu\n"
        "tally_stripe_reconciled_total{result=\"resent\"} %llu\n",
        (unsigned long long)stripe.sent, (unsigned long long)stripe.failed,
        (unsigned long long)stripe.retried,
        (long long)stripe.oldest_unreported_s,
        (unsigned long long)stripe.reconciled_in_stripe,
        (unsigned long long)stripe.reconciled_resent);
  }
  metrics_http(http, &text);
  out->status = text.data ? 200 : 500;
  out->body = text.data ? text.data : strdup("out of memory\n");
  out->content_type = "text/plain; version=0.0.4";
}

/* ---- handlers: subjects ---------------------------------------------- */

static void handle_usage(tly_http_t *http, request_t *req,
                         struct MHD_Connection *connection, response_t *out) {
  tly_req_subject_t subject;
  tly_req_error_t err;
  tly_subject_state_t state = {0};

  int64_t now_ms;
  if (tly_req_parse_subject(req->subject, &subject, &err) ||
      tly_req_parse_at(
          MHD_lookup_connection_value(connection, MHD_GET_ARGUMENT_KIND, "at"),
          tly_wall_ms(), &now_ms, &err)) {
    respond_req_error(out, &err);
    return;
  }
  int found = find_subject(http, &subject, &state, out);
  if (found == 0) {
    char message[TLY_REQ_SUBJECT_MAX + 64];
    snprintf(message, sizeof(message), "no usage recorded for subject %s",
             subject.key);
    respond_error(out, 404, "not_found", message);
  } else if (found > 0) {
    respond_json(
        out, 200,
        tly_req_usage_json(http->conf.config, &subject, &state, now_ms));
  }
  tly_state_subject_clear(&state);
}

static void handle_quota(tly_http_t *http, request_t *req,
                         struct MHD_Connection *connection, response_t *out) {
  tly_req_subject_t subject;
  tly_req_quota_query_t query;
  tly_req_error_t err;
  tly_subject_state_t state = {0};
  int64_t now_ms;

  if (tly_req_parse_subject(req->subject, &subject, &err) ||
      tly_req_parse_quota(http->conf.config,
                          MHD_lookup_connection_value(
                              connection, MHD_GET_ARGUMENT_KIND, "feature"),
                          MHD_lookup_connection_value(
                              connection, MHD_GET_ARGUMENT_KIND, "quantity"),
                          &query, &err) ||
      tly_req_parse_at(
          MHD_lookup_connection_value(connection, MHD_GET_ARGUMENT_KIND, "at"),
          tly_wall_ms(), &now_ms, &err)) {
    respond_req_error(out, &err);
    return;
  }
  int found = find_subject(http, &subject, &state, out);
  if (found >= 0) {
    json_t *answer =
        tly_req_quota_json(http->conf.config, &subject, found ? &state : NULL,
                           &query, now_ms, &err);
    respond_answer(out, answer, &err);
  }
  tly_state_subject_clear(&state);
}

/* ---- handlers: plans, estimate, prorate ------------------------------ */

static void handle_plans(tly_http_t *http, request_t *req,
                         struct MHD_Connection *connection, response_t *out) {
  (void)req, (void)connection;
  respond_json(out, 200, tly_req_plans_json(http->conf.config));
}

static void handle_estimate(tly_http_t *http, request_t *req,
                            struct MHD_Connection *connection,
                            response_t *out) {
  tly_req_error_t err;
  (void)connection;
  json_t *answer =
      tly_req_estimate(http->conf.config, req->body, req->body_len, &err);
  respond_answer(out, answer, &err);
}

static void handle_prorate(tly_http_t *http, request_t *req,
                           struct MHD_Connection *connection, response_t *out) {
  tly_req_error_t err;
  (void)connection;
  json_t *answer =
      tly_req_prorate(http->conf.config, req->body, req->body_len, &err);
  respond_answer(out, answer, &err);
}

/* ---- ingest: produce, suspend, resume on the last delivery report ---- */

enum { SLOT_INVALID = 0, SLOT_SENT, SLOT_DELIVERED, SLOT_FAILED };

typedef struct {
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
  int kind; /* INGEST_*: which answer */
};

static void ingest_free(ingest_t *ingest) {
  if (!ingest)
    return;
  tly_req_events_clear(&ingest->events);
  free(ingest->slots);
  pthread_mutex_destroy(&ingest->lock);
  free(ingest);
}

/* librdkafka's delivery report, on the poller thread (or a thread serving
 * reports inside a send). Resumes the connection after the last one; the
 * ingest is not touched after its lock is released with nothing pending,
 * since the resumed request frees it. */
static void on_delivery(void *opaque, void *msg_opaque, int error,
                        const char *errstr) {
  ingest_slot_t *slot = msg_opaque;
  ingest_t *ingest = slot->ingest;
  struct MHD_Connection *resume = NULL;
  (void)opaque;
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
    slot->ingest = ingest;
    if (!ingest->events.items[i].ok)
      continue;
    slot->state = SLOT_SENT;
    char errstr[256];
    if (tally_producer_send(http->producer, &ingest->events.items[i].event,
                            slot, errstr, sizeof(errstr))) {
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
static void ingest_answer(ingest_t *ingest, response_t *out) {
  size_t accepted = 0, rejected = 0, failed = 0;
  json_t *results = json_array(), *first_error = NULL;
  for (size_t i = 0; i < ingest->events.count; i++) {
    tly_req_event_t *item = &ingest->events.items[i];
    ingest_slot_t *slot = &ingest->slots[i];
    json_t *result = NULL;
    if (!item->ok) {
      rejected++;
      result = json_pack(
          "{s:I,s:s,s:o}", "index", (json_int_t)i, "status", "rejected",
          "error",
          error_json(item->error.code, item->error.message, item->error.field));
      if (!first_error)
        first_error = error_json(item->error.code, item->error.message,
                                 item->error.field);
    } else if (slot->state == SLOT_DELIVERED) {
      accepted++;
      result = json_pack("{s:I,s:s,s:s}", "index", (json_int_t)i, "status",
                         "accepted", "event_id", item->event.event_id);
    } else {
      failed++;
      result = json_pack("{s:I,s:s,s:s,s:o}", "index", (json_int_t)i, "status",
                         "failed", "event_id", item->event.event_id, "error",
                         error_json("produce_failed", slot->error, NULL));
    }
    json_array_append_new(results, result);
  }
  json_t *body;
  int status;
  if (ingest->kind == INGEST_STRIPE) {
    /* One event; Stripe retries anything but a 2xx, so 503 on failure. */
    if (accepted)
      respond_json(
          out, 200,
          tly_stripe_webhook_answer(&ingest->events.items[0].event, NULL));
    else
      respond_error(out, 503, "kafka_unavailable", ingest->slots[0].error);
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
      json_object_set_new(body, "error",
                          error_json("kafka_unavailable", message, NULL));
    } else if (!accepted && first_error) {
      json_object_set(body, "error", first_error);
    }
  }
  json_decref(first_error);
  respond_json(out, status, body);
}

/* Takes ownership of events; answers now or suspends (out->suspended). */
static void ingest_start(tly_http_t *http, request_t *req,
                         struct MHD_Connection *connection,
                         tly_req_events_t *events, int kind, response_t *out) {
  ingest_t *ingest = calloc(1, sizeof(*ingest));
  if (ingest)
    ingest->slots = calloc(events->count, sizeof(*ingest->slots));
  if (!ingest || !ingest->slots) {
    free(ingest);
    tly_req_events_clear(events);
    respond_error(out, 500, "internal", "out of memory");
    return;
  }
  pthread_mutex_init(&ingest->lock, NULL);
  ingest->events = *events;
  ingest->kind = kind;
  memset(events, 0, sizeof(*events));
  if (ingest_send(http, ingest, connection)) {
    req->ingest = ingest;
    req->phase = PHASE_WAIT;
    out->suspended = 1;
    return;
  }
  ingest_answer(ingest, out);
  ingest_free(ingest);
}

static int ingest_available(tly_http_t *http, response_t *out) {
  if (http->producer && !atomic_load(&http->stopping))
    return 1;
  respond_error(out, 503, "ingest_unavailable",
                "this HTTP port has no Kafka producer (no brokers configured)");
  return 0;
}

static void handle_events(tly_http_t *http, request_t *req,
                          struct MHD_Connection *connection, response_t *out) {
  tly_req_events_t events;
  tly_req_error_t err;
  if (!ingest_available(http, out))
    return;
  if (tly_req_parse_events(http->conf.config, req->body, req->body_len,
                           tly_wall_ms(), &events, &err)) {
    respond_req_error(out, &err);
    return;
  }
  ingest_start(http, req, connection, &events, INGEST_EVENTS, out);
}

static void handle_plan(tly_http_t *http, request_t *req,
                        struct MHD_Connection *connection, response_t *out) {
  tly_req_subject_t subject;
  tly_req_error_t err;
  tly_req_events_t events = {0};
  unsigned char random[16];
  char event_id[48] = "plan-";

  if (!ingest_available(http, out))
    return;
  if (tly_req_parse_subject(req->subject, &subject, &err)) {
    respond_req_error(out, &err);
    return;
  }
  /* Without an event_id in the body, each call is a new assignment; with
   * one, a retried call is folded once. */
  if (RAND_bytes(random, sizeof(random)) != 1) {
    respond_error(out, 500, "internal", "no randomness for an event id");
    return;
  }
  for (size_t i = 0; i < sizeof(random); i++)
    snprintf(event_id + 5 + 2 * i, 3, "%02x", random[i]);
  events.items = calloc(1, sizeof(*events.items));
  if (!events.items) {
    respond_error(out, 500, "internal", "out of memory");
    return;
  }
  events.count = 1;
  if (tly_req_parse_plan(http->conf.config, &subject, req->body, req->body_len,
                         tly_wall_ms(), event_id, &events.items[0].event,
                         &err)) {
    tly_req_events_clear(&events);
    respond_req_error(out, &err);
    return;
  }
  events.items[0].ok = 1;
  ingest_start(http, req, connection, &events, INGEST_PLAN, out);
}

/* ---- Stripe: webhook intake and billing portal ----------------------- */

/* The signature, the mapping and the answers are tly_stripe_webhook.c's;
 * the event takes the ingest path (200 only once Kafka acknowledged). */
static void handle_stripe_webhook(tly_http_t *http, request_t *req,
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
    respond_req_error(out, &err);
    return;
  }
  if (result == TLY_STRIPE_WEBHOOK_IGNORED) {
    respond_json(out, 200, tly_stripe_webhook_answer(NULL, &info));
    return;
  }
  events.items = calloc(1, sizeof(*events.items));
  if (!events.items || !ingest_available(http, out)) {
    if (!events.items)
      respond_error(out, 500, "internal", "out of memory");
    free(events.items);
    tly_event_clear(&event);
    return;
  }
  events.count = 1;
  events.items[0].ok = 1;
  events.items[0].event = event;
  ingest_start(http, req, connection, &events, INGEST_STRIPE, out);
}

static void portal_done(void *connection) { MHD_resume_connection(connection); }

/* The Stripe call runs on its own thread (tly_stripe_portal.c) while the
 * connection is suspended, like ingest. */
static void handle_billing_portal(tly_http_t *http, request_t *req,
                                  struct MHD_Connection *connection,
                                  response_t *out) {
  tly_req_subject_t subject;
  tly_req_error_t err;
  tly_subject_state_t state = {0};
  if (!http->portal) {
    respond_error(out, 503, "stripe_not_configured",
                  "Stripe is not configured (stripe.secret_key_env)");
    return;
  }
  if (tly_req_parse_subject(req->subject, &subject, &err)) {
    respond_req_error(out, &err);
    return;
  }
  int found = find_subject(http, &subject, &state, out);
  if (found == 0 || (found > 0 && !state.account.stripe_customer_id[0])) {
    char message[TLY_REQ_SUBJECT_MAX + 64];
    snprintf(message, sizeof(message),
             "subject %s is not linked to a Stripe customer", subject.key);
    respond_error(out, 404, "not_linked", message);
  } else if (found > 0) {
    MHD_suspend_connection(connection);
    if (tly_stripe_portal_request(http->portal,
                                  state.account.stripe_customer_id, portal_done,
                                  connection, &req->portal)) {
      MHD_resume_connection(connection);
      respond_error(out, 503, "stripe_unavailable",
                    "no Stripe call can be started now; retry");
    } else {
      req->phase = PHASE_WAIT;
      out->suspended = 1;
    }
  }
  tly_state_subject_clear(&state);
}

/* ---- handlers: the usage history ------------------------------------- */

/* The partition's event-time watermark: history that expired before it is
 * left out, whether or not compaction dropped it yet. */
static int64_t history_horizon(tly_http_t *http, int32_t partition) {
  size_t count = 0;
  int64_t horizon = INT64_MIN;
  tly_partition_status_t *status = partition_snapshot(http, &count);
  if (status && partition >= 0 && (size_t)partition < count)
    horizon = status[partition].watermark_ms;
  free(status);
  return horizon;
}

/* Common start of the history routes: the subject parsed and its state
 * found. 1 found, 0 answered (error or 404). */
static int history_subject(tly_http_t *http, request_t *req,
                           tly_req_subject_t *subject,
                           tly_subject_state_t *state, response_t *out) {
  tly_req_error_t err;
  if (tly_req_parse_subject(req->subject, subject, &err)) {
    respond_req_error(out, &err);
    return 0;
  }
  int found = find_subject(http, subject, state, out);
  if (found == 0) {
    char message[TLY_REQ_SUBJECT_MAX + 64];
    snprintf(message, sizeof(message), "no usage recorded for subject %s",
             subject->key);
    respond_error(out, 404, "not_found", message);
  }
  return found > 0;
}

/* Visits one kind of the subject's history (see tly_state_history); on a
 * store error, or when the visitor set *failed, answers 500 (what names
 * what the visitor could not take) and returns -1. */
static int scan_history(tly_http_t *http, const tly_subject_state_t *state,
                        const tly_req_subject_t *subject, char tag,
                        int64_t horizon_ms, tly_state_history_cb cb,
                        void *opaque, const int *failed, const char *what,
                        response_t *out) {
  char errstr[512];
  if (tly_state_history(http->conf.store, state->partition, subject->kind,
                        subject->id, tag, horizon_ms, cb, opaque, errstr,
                        sizeof(errstr)) == 0 &&
      !*failed)
    return 0;
  respond_error(out, 500, "store_error", *failed ? what : errstr);
  return -1;
}

typedef struct {
  int32_t from_day, to_day;
  tly_subject_bucket_t *buckets;
  size_t count, cap;
  int failed;
} daily_scan_t;

/* Keeps the hourly buckets that fall on the days asked for. */
static int add_buckets(daily_scan_t *scan, const tly_subject_bucket_t *buckets,
                       size_t count) {
  for (size_t i = 0; i < count; i++) {
    int32_t day = tly_req_day_of_hour(buckets[i].hour);
    if (day < scan->from_day || day > scan->to_day)
      continue;
    if (scan->count == scan->cap) {
      size_t cap = scan->cap ? scan->cap * 2 : 32;
      tly_subject_bucket_t *grown =
          realloc(scan->buckets, cap * sizeof(*grown));
      if (!grown)
        return -1;
      scan->buckets = grown;
      scan->cap = cap;
    }
    scan->buckets[scan->count++] = buckets[i];
  }
  return 0;
}

static int visit_hour(void *opaque, const unsigned char *suffix,
                      size_t suffix_len, const char *value, size_t value_len) {
  daily_scan_t *scan = opaque;
  tly_subject_bucket_t *buckets = NULL;
  size_t count = 0;
  if (suffix_len != 4 ||
      tly_bucket_decode(value, value_len, (int32_t)tly_get_be32(suffix),
                        &buckets, &count) ||
      add_buckets(scan, buckets, count))
    scan->failed = 1;
  free(buckets);
  return scan->failed;
}

static void handle_daily(tly_http_t *http, request_t *req,
                         struct MHD_Connection *connection, response_t *out) {
  tly_req_subject_t subject;
  tly_subject_state_t state = {0};
  tly_req_error_t err;
  daily_scan_t scan = {0};
  if (tly_req_parse_daily(
          MHD_lookup_connection_value(connection, MHD_GET_ARGUMENT_KIND,
                                      "from"),
          MHD_lookup_connection_value(connection, MHD_GET_ARGUMENT_KIND, "to"),
          &scan.from_day, &scan.to_day, &err)) {
    respond_req_error(out, &err);
    return;
  }
  /* The newest hour lives in the subject record, older ones in keys: read
   * both as of one commit (retry when a commit landed in between, since a
   * commit may move the newest hour into its key). */
  for (int attempt = 0; attempt < 3; attempt++) {
    uint64_t before = commit_count(http->conf.processor);
    tly_state_subject_clear(&state);
    scan.count = 0;
    if (!history_subject(http, req, &subject, &state, out))
      goto done;
    scan.failed = add_buckets(&scan, state.buckets, state.bucket_count);
    if (scan_history(http, &state, &subject, TLY_HISTORY_HOUR,
                     history_horizon(http, state.partition), visit_hour, &scan,
                     &scan.failed, "out of memory or corrupt usage buckets",
                     out))
      goto done;
    if (commit_count(http->conf.processor) == before)
      break;
  }
  respond_json(out, 200,
               tly_req_daily_json(http->conf.config, &subject, scan.buckets,
                                  scan.count, scan.from_day, scan.to_day));
done:
  free(scan.buckets);
  tly_state_subject_clear(&state);
}

typedef struct {
  tly_req_cycle_t *cycles;
  size_t count, cap;
  tly_subject_row_t **owned; /* archived rows to free */
  size_t owned_count;
  int failed;
} cycles_scan_t;

static tly_req_cycle_t *add_cycle(cycles_scan_t *scan) {
  if (scan->count == scan->cap) {
    size_t cap = scan->cap ? scan->cap * 2 : 8;
    tly_req_cycle_t *grown = realloc(scan->cycles, cap * sizeof(*grown));
    tly_subject_row_t **owned = realloc(scan->owned, cap * sizeof(*owned));
    if (grown)
      scan->cycles = grown;
    if (owned)
      scan->owned = owned;
    if (!grown || !owned)
      return NULL;
    scan->cap = cap;
  }
  return &scan->cycles[scan->count++];
}

static int visit_cycle(void *opaque, const unsigned char *suffix,
                       size_t suffix_len, const char *value, size_t value_len) {
  cycles_scan_t *scan = opaque;
  tly_cycle_t cycle;
  tly_subject_row_t *rows = NULL;
  size_t count = 0;
  (void)suffix;
  if (suffix_len != 8 ||
      tly_cycle_archive_decode(value, value_len, &cycle, &rows, &count)) {
    scan->failed = 1;
    return 1;
  }
  /* A cycle the record still keeps is shown from there (live). */
  for (size_t i = 0; i < scan->count; i++)
    if (!scan->cycles[i].final &&
        scan->cycles[i].cycle.start_ms == cycle.start_ms) {
      free(rows);
      return 0;
    }
  tly_req_cycle_t *entry = add_cycle(scan);
  if (!entry) {
    free(rows);
    scan->failed = 1;
    return 1;
  }
  *entry = (tly_req_cycle_t){cycle, 1, rows, count};
  scan->owned[scan->owned_count++] = rows;
  return 0;
}

static void handle_cycles(tly_http_t *http, request_t *req,
                          struct MHD_Connection *connection, response_t *out) {
  tly_req_subject_t subject;
  tly_subject_state_t state = {0};
  cycles_scan_t scan = {0};
  (void)connection;
  if (!history_subject(http, req, &subject, &state, out))
    goto done;
  for (size_t i = 0; i < state.account.history_count && !scan.failed; i++) {
    tly_req_cycle_t *entry = add_cycle(&scan);
    if (entry) {
      *entry = (tly_req_cycle_t){state.account.history[i], 0, state.rows,
                                 state.row_count};
      scan.owned[scan.owned_count++] = NULL;
    }
    scan.failed = !entry;
  }
  if (scan.failed) {
    respond_error(out, 500, "internal", "out of memory");
    goto done;
  }
  if (scan_history(http, &state, &subject, TLY_HISTORY_CYCLE, INT64_MIN,
                   visit_cycle, &scan, &scan.failed,
                   "out of memory or a corrupt archived cycle", out))
    goto done;
  respond_json(out, 200,
               tly_req_cycles_json(http->conf.config, &subject, scan.cycles,
                                   scan.count));
done:
  for (size_t i = 0; i < scan.owned_count; i++)
    free(scan.owned[i]);
  free(scan.owned);
  free(scan.cycles);
  tly_state_subject_clear(&state);
}

typedef struct {
  tly_http_t *http;
  json_t *list; /* oldest first, as the keys come */
  int failed;
} alerts_scan_t;

static int visit_alert(void *opaque, const unsigned char *suffix,
                       size_t suffix_len, const char *value, size_t value_len) {
  alerts_scan_t *scan = opaque;
  tly_alert_t alert = {0}; /* decode clears what it is given */
  char errstr[256];
  (void)suffix, (void)suffix_len;
  pthread_mutex_lock(&scan->http->alert_lock);
  int bad = tly_alert_decode(scan->http->alert_codec, value, value_len, &alert,
                             errstr, sizeof(errstr));
  pthread_mutex_unlock(&scan->http->alert_lock);
  if (bad) {
    scan->failed = 1;
    return 1;
  }
  json_t *json = tly_req_alert_json(&alert);
  tly_alert_clear(&alert);
  if (!json || json_array_append_new(scan->list, json)) {
    scan->failed = 1;
    return 1;
  }
  return 0;
}

static void handle_alerts(tly_http_t *http, request_t *req,
                          struct MHD_Connection *connection, response_t *out) {
  tly_req_subject_t subject;
  tly_subject_state_t state = {0};
  tly_req_error_t err;
  int64_t limit;
  alerts_scan_t scan = {http, json_array(), 0};
  if (tly_req_parse_limit(MHD_lookup_connection_value(
                              connection, MHD_GET_ARGUMENT_KIND, "limit"),
                          &limit, &err)) {
    respond_req_error(out, &err);
    goto done;
  }
  if (!scan.list || !history_subject(http, req, &subject, &state, out))
    goto done;
  if (scan_history(http, &state, &subject, TLY_HISTORY_ALERT,
                   history_horizon(http, state.partition), visit_alert, &scan,
                   &scan.failed, "out of memory or a corrupt stored alert",
                   out))
    goto done;
  /* Keys run oldest first: answer newest first, up to limit. */
  json_t *alerts = json_array();
  size_t total = json_array_size(scan.list);
  for (size_t i = total; i > 0 && json_array_size(alerts) < (size_t)limit; i--)
    json_array_append(alerts, json_array_get(scan.list, i - 1));
  respond_json(out, 200,
               json_pack("{s:s,s:I,s:I,s:o}", "subject", subject.key,
                         "retention_days",
                         (json_int_t)http->conf.config->retention.alerts_days,
                         "total", (json_int_t)total, "alerts", alerts));
done:
  json_decref(scan.list);
  tly_state_subject_clear(&state);
}

/* ---- routing --------------------------------------------------------- */

static const route_t routes[] = {
    {"GET", "/healthz", "/healthz", NULL, handle_healthz, AUTH_PUBLIC, 0, 0},
    {"GET", "/readyz", "/readyz", NULL, handle_readyz, AUTH_PUBLIC, 0, 0},
    {"GET", "/metrics", "/metrics", NULL, handle_metrics, AUTH_METRICS, 0, 0},
    {"GET", "/v1/plans", "/v1/plans", NULL, handle_plans, AUTH_REQUIRED, 0, 0},
    {"POST", "/v1/estimate", "/v1/estimate", NULL, handle_estimate,
     AUTH_REQUIRED, 1, 0},
    {"POST", "/v1/prorate", "/v1/prorate", NULL, handle_prorate, AUTH_REQUIRED,
     1, 0},
    {"POST", "/v1/events", "/v1/events", NULL, handle_events, AUTH_REQUIRED, 1,
     0},
    {"GET", "/v1/subjects/{subject}/usage", "/v1/subjects/", "/usage",
     handle_usage, AUTH_REQUIRED, 0, 1},
    {"GET", "/v1/subjects/{subject}/quota", "/v1/subjects/", "/quota",
     handle_quota, AUTH_REQUIRED, 0, 1},
    {"GET", "/v1/subjects/{subject}/usage/daily", "/v1/subjects/",
     "/usage/daily", handle_daily, AUTH_REQUIRED, 0, 1},
    {"GET", "/v1/subjects/{subject}/cycles", "/v1/subjects/", "/cycles",
     handle_cycles, AUTH_REQUIRED, 0, 1},
    {"GET", "/v1/subjects/{subject}/alerts", "/v1/subjects/", "/alerts",
     handle_alerts, AUTH_REQUIRED, 0, 1},
    {"POST", "/v1/subjects/{subject}/plan", "/v1/subjects/", "/plan",
     handle_plan, AUTH_REQUIRED, 1, 0},
    {"POST", "/v1/stripe/webhook", "/v1/stripe/webhook", NULL,
     handle_stripe_webhook, AUTH_SIGNED, 1, 0},
    {"POST", "/v1/subjects/{subject}/billing-portal", "/v1/subjects/",
     "/billing-portal", handle_billing_portal, AUTH_REQUIRED, 1, 1},
};
static const size_t route_count = sizeof(routes) / sizeof(routes[0]);

size_t tly_http_routes(tly_http_route_info_t *out, size_t max) {
  for (size_t i = 0; i < route_count && i < max; i++) {
    out[i].method = routes[i].method;
    out[i].path = routes[i].path;
    out[i].auth_required = routes[i].auth == AUTH_REQUIRED;
    out[i].owner_only = routes[i].owner_only;
  }
  return route_count;
}

/* 1: path (raw: still percent-encoded) is this route's (a subject route
 * percent-decodes the segment into subject), 2: it is, but the segment is
 * no subject (err says why), 0: not this route. */
static int route_matches(const route_t *route, const char *path,
                         size_t path_len, char *subject, size_t subject_size,
                         tly_req_error_t *err) {
  size_t prefix_len = strlen(route->prefix);
  if (!route->suffix)
    return path_len == prefix_len && memcmp(path, route->prefix, path_len) == 0;
  if (path_len <= prefix_len || memcmp(path, route->prefix, prefix_len) != 0)
    return 0;
  const char *segment = path + prefix_len;
  const char *slash = memchr(segment, '/', path_len - prefix_len);
  size_t suffix_len = strlen(route->suffix);
  if (!slash || slash == segment ||
      (size_t)(path + path_len - slash) != suffix_len ||
      memcmp(slash, route->suffix, suffix_len) != 0)
    return 0;
  if (tly_req_decode_segment(segment, (size_t)(slash - segment), subject,
                             subject_size, err))
    return 2;
  return 1;
}

/* Finds the route of (method, the raw path of the request target): its
 * index, or -1 with out filled. Routing on the raw path is what lets a
 * subject hold a '/' (sent as %2F). */
static int find_route(const char *url, const char *method, request_t *req,
                      response_t *out) {
  int path_known = 0;
  const char *path = req->target ? req->target : url;
  size_t path_len = strcspn(path, "?#");
  for (size_t i = 0; i < route_count; i++) {
    tly_req_error_t err;
    int match = route_matches(&routes[i], path, path_len, req->subject,
                              sizeof(req->subject), &err);
    if (!match)
      continue;
    path_known = 1;
    if (strcmp(method, routes[i].method) != 0)
      continue;
    if (match == 2) {
      respond_req_error(out, &err);
      return -1;
    }
    return (int)i;
  }
  if (path_known)
    respond_error(out, 405, "method_not_allowed",
                  "method not allowed on this route");
  else
    respond_error(out, 404, "not_found", "no such route");
  return -1;
}

static int route_is_open(const tly_http_t *http, const route_t *route) {
  if (http->conf.no_auth)
    return 1;
  switch (route->auth) {
  case AUTH_PUBLIC:
  case AUTH_SIGNED:
    return 1;
  case AUTH_METRICS:
    return http->conf.config->http.metrics_public;
  case AUTH_REQUIRED:
    break;
  }
  return 0;
}

/* ---- forwarding to the partition's owner ------------------------------ */

static void forward_done(void *connection) {
  MHD_resume_connection(connection);
}

/* What a forwarding credential covers: this request, sent to (or received
 * by) instance. */
static tly_forward_scope_t forward_scope(const request_t *req,
                                         const char *instance) {
  const route_t *route = &routes[req->route];
  tly_forward_scope_t scope = {
      .method = route->method,
      .target = req->target,
      .body = route->takes_body ? (req->body ? req->body : "") : NULL,
      .body_len = route->takes_body ? req->body_len : 0,
      .owner_instance = instance};
  return scope;
}

/* Suspends the connection and forwards the request to the owner (its URL
 * and instance id). 1 when it went (the answer comes on resume), 0 when
 * out holds a 503. The client's Authorization stays here: the owner gets
 * a credential for this request only. */
static int forward_to(tly_http_t *http, request_t *req,
                      struct MHD_Connection *connection, const char *owner,
                      const char *owner_instance, response_t *out) {
  const route_t *route = &routes[req->route];
  long timeout_ms = 0;
  char credential[TLY_FORWARD_CREDENTIAL_MAX];
  if (route->handler == handle_billing_portal)
    timeout_ms = (long)http->conf.config->stripe.timeout_ms + 2000;
  tly_forward_scope_t scope = forward_scope(req, owner_instance);
  int signed_ok =
      req->target && tly_cluster_forward_credential(
                         tly_members_secret(http->conf.members), &scope,
                         tly_wall_ms() + TLY_FORWARD_CREDENTIAL_TTL_MS,
                         credential, sizeof(credential)) == 0;
  tly_forward_request_t request = {
      .base_url = owner,
      .target = req->target,
      .method = route->method,
      .credential = credential,
      .content_type = route->takes_body ? MHD_lookup_connection_value(
                                              connection, MHD_HEADER_KIND,
                                              MHD_HTTP_HEADER_CONTENT_TYPE)
                                        : NULL,
      .body = scope.body,
      .body_len = scope.body_len,
      .timeout_ms = timeout_ms};
  snprintf(req->owner, sizeof(req->owner), "%s", owner);
  if (!http->forward || !req->target || !signed_ok) {
    respond_moving(out, req->partition, owner,
                   "the subject's partition is served by another instance");
    return 0;
  }
  MHD_suspend_connection(connection);
  if (tly_forward_request(http->forward, &request, forward_done, connection,
                          &req->forward)) {
    MHD_resume_connection(connection);
    atomic_fetch_add(&http->forwards_refused, 1);
    respond_moving(out, req->partition, owner,
                   "too many requests are being forwarded; retry");
    return 0;
  }
  req->phase = PHASE_WAIT;
  out->suspended = 1;
  return 1;
}

/* The owner's answer, relayed: its status, content type and body, or 503
 * when it could not be reached (it may have just died or lost the
 * partition: the caller retries). */
static void forward_answer(tly_http_t *http, request_t *req, response_t *out) {
  tly_forward_result_t result;
  tly_forward_result(req->forward, &result);
  /* The client was authenticated here: a 401 of the owner is about the
   * forwarding credential (another secret, a restarted owner), never the
   * client's key, so the client retries as for an unreachable owner. */
  int relayed =
      result.status >= 100 && result.status <= 599 && result.status != 401;
  atomic_fetch_add(relayed ? &http->forwards_relayed : &http->forwards_failed,
                   1);
  if (!relayed) {
    char message[512];
    if (result.status == 401)
      snprintf(message, sizeof(message),
               "the owner refused the forwarding credential (do all "
               "instances share one cluster secret?)");
    else
      snprintf(message, sizeof(message), "the owner did not answer: %s",
               result.error);
    respond_moving(out, req->partition, req->owner, message);
    return;
  }
  out->status = (int)result.status;
  out->body = malloc(result.body_len + 1);
  if (out->body) {
    if (result.body_len)
      memcpy(out->body, result.body, result.body_len);
    out->body[result.body_len] = '\0';
  }
  /* The call is freed before the answer is queued: keep a copy. */
  snprintf(req->content_type, sizeof(req->content_type), "%s",
           result.content_type[0] ? result.content_type : "application/json");
  out->content_type = req->content_type;
  req->served_by = req->owner;
  if (result.status == 503)
    out->retry_after_s = 1;
}

/* For a route that reads the subject's state: 1 when this instance serves
 * the subject's partition (or the subject is malformed: the handler says
 * so), 0 when out holds the answer (503) or the request was forwarded. A
 * request that was forwarded already is never forwarded again. */
static int route_to_owner(tly_http_t *http, request_t *req,
                          struct MHD_Connection *connection, response_t *out) {
  tly_req_subject_t subject;
  tly_req_error_t err;
  tly_members_t *members = http->conf.members;
  if (tly_req_parse_subject(req->subject, &subject, &err))
    return 1;
  req->partition = tly_state_home_partition(
      tly_processor_partition_count(http->conf.processor), subject.kind,
      subject.id);
  if (req->partition >= 0 &&
      tly_processor_partition_role(http->conf.processor, req->partition) ==
          TLY_PARTITION_SERVING) {
    req->served_by = members ? tly_members_advertise(members) : NULL;
    return 1;
  }
  tly_members_owner_t owner = {0};
  if (members && req->partition >= 0)
    tly_members_owner(members, req->partition, &owner);
  const char *self = members ? tly_members_advertise(members) : "";
  int forwarded = req->forwarded;
  if (!tly_members_secret(members) && req->partition >= 0) {
    respond_moving(out, req->partition, NULL,
                   "this instance does not serve the subject's partition now "
                   "and cannot forward: no cluster secret is configured "
                   "(" TLY_CLUSTER_SECRET_ENV " or --cluster-secret-file)");
    return 0;
  }
  switch (owner.state) {
  case TLY_OWNER_SERVING:
    if (strcmp(owner.http, self) == 0)
      respond_moving(out, req->partition, NULL,
                     "this instance announced the partition but does not "
                     "serve it now");
    else if (forwarded)
      respond_moving(out, req->partition, owner.http,
                     "a forwarded request reached an instance that does not "
                     "serve the subject's partition");
    else
      forward_to(http, req, connection, owner.http, owner.instance, out);
    break;
  case TLY_OWNER_REPLAYING:
    respond_moving(out, req->partition, owner.http,
                   "the subject's partition is replaying on its new owner");
    break;
  case TLY_OWNER_CONFLICT:
    respond_moving(out, req->partition, NULL,
                   "the subject's partition is moving between instances");
    break;
  case TLY_OWNER_UNKNOWN:
    respond_moving(out, req->partition, NULL,
                   req->partition < 0
                       ? "partitions are not known yet"
                       : "no instance serves the subject's partition now");
    break;
  }
  return 0;
}

/* A request forwarded by another instance: 1 when its credential is good
 * for this request at this instance, else 0 with the 401 in out. */
static int forward_credential_ok(tly_http_t *http, request_t *req,
                                 struct MHD_Connection *connection,
                                 response_t *out) {
  tly_members_t *members = http->conf.members;
  tly_forward_scope_t scope =
      forward_scope(req, members ? tly_members_instance(members) : "");
  tly_forward_auth_t result = tly_cluster_forward_check(
      tly_members_secret(members),
      MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
                                  TLY_FORWARD_AUTH_HEADER),
      &scope, tly_wall_ms());
  if (result == TLY_FORWARD_AUTH_OK && req->target)
    return 1;
  atomic_fetch_add(&http->forwards_rejected, 1);
  respond_error(out, 401, "unauthorized", tly_cluster_forward_reason(result));
  return 0;
}

/* Runs the route's handler here, or sends the request to its owner. */
static void dispatch(tly_http_t *http, request_t *req,
                     struct MHD_Connection *connection, response_t *out) {
  const route_t *route = &routes[req->route];
  if (req->forwarded && !forward_credential_ok(http, req, connection, out))
    return;
  /* Without Stripe, the billing portal's 503 is this instance's to give:
   * it needs no state. */
  int local_answer = route->handler == handle_billing_portal && !http->portal;
  if (route->owner_only && !local_answer &&
      !route_to_owner(http, req, connection, out))
    return;
  route->handler(http, req, connection, out);
}

/* The first call, headers only. 1 when out holds the answer (an error, or
 * the whole answer of a route without a body), 0 to go on reading the
 * body. */
static int begin_request(tly_http_t *http, request_t *req,
                         struct MHD_Connection *connection, const char *url,
                         const char *method, response_t *out) {
  const tly_http_config_t *limits = &http->conf.config->http;
  if (req->uri_len > (size_t)limits->max_url_bytes) {
    char message[96];
    snprintf(message, sizeof(message), "request target longer than %lld bytes",
             (long long)limits->max_url_bytes);
    respond_error(out, 414, "uri_too_long", message);
    return 1;
  }
  req->route = find_route(url, method, req, out);
  if (req->route < 0)
    return 1;
  const route_t *route = &routes[req->route];
  /* Forwarded by another instance, which authenticated the client: no
   * client key comes along, the forwarding credential is checked instead
   * (dispatch, once the body it covers is in). Only the routes that are
   * ever forwarded; either marker, so no request passes as a client's. */
  req->forwarded = route->owner_only &&
                   (MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
                                                TLY_FORWARDED_HEADER) ||
                    MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
                                                TLY_FORWARD_AUTH_HEADER));
  if (!req->forwarded && !route_is_open(http, route)) {
    const tly_http_config_t *auth = &http->conf.config->http;
    tly_auth_result_t result = tly_auth_check(
        auth->api_keys, auth->api_key_count,
        MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
                                    MHD_HTTP_HEADER_AUTHORIZATION),
        NULL);
    if (result != TLY_AUTH_OK) {
      respond_error(out, 401, "unauthorized", tly_auth_reason(result));
      return 1;
    }
  }
  if (route->takes_body) {
    const char *length = MHD_lookup_connection_value(
        connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (length && strtoull(length, NULL, 10) > (uint64_t)limits->max_body_bytes)
      req->body_too_large = 1;
    if (!req->body_too_large)
      return 0;
    char message[96];
    snprintf(message, sizeof(message), "request body larger than %lld bytes",
             (long long)limits->max_body_bytes);
    respond_error(out, 413, "body_too_large", message);
    return 1;
  }
  dispatch(http, req, connection, out);
  return 1;
}

/* Keeps a body piece; 0, or -1 to cut the connection off. */
static int take_body(tly_http_t *http, request_t *req, const char *data,
                     size_t size) {
  size_t max = (size_t)http->conf.config->http.max_body_bytes;
  req->body_seen += size;
  if (req->body_seen > max) {
    req->body_too_large = 1;
    return req->body_seen > max * BODY_DRAIN_FACTOR ? -1 : 0;
  }
  if (req->body_len + size + 1 > req->body_cap) {
    size_t cap = req->body_cap ? req->body_cap : 4096;
    while (cap < req->body_len + size + 1)
      cap *= 2;
    char *grown = realloc(req->body, cap);
    if (!grown)
      return -1;
    req->body = grown;
    req->body_cap = cap;
  }
  memcpy(req->body + req->body_len, data, size);
  req->body_len += size;
  req->body[req->body_len] = '\0';
  return 0;
}

static void count_request(tly_http_t *http, const request_t *req, int status) {
  size_t route = req && req->route >= 0 ? (size_t)req->route : route_count;
  if (status >= STATUS_MIN && status <= STATUS_MAX)
    atomic_fetch_add(&http->requests[route][status - STATUS_MIN], 1);
}

static tly_mhd_result queue_answer(tly_http_t *http, request_t *req,
                                   struct MHD_Connection *connection,
                                   response_t *out) {
  if (!out->body) {
    out->status = 500;
    out->body = strdup("{\"error\":{\"code\":\"internal\",\"message\":\"out "
                       "of memory\"}}");
    out->content_type = "application/json";
  }
  count_request(http, req, out->status);
  struct MHD_Response *response = MHD_create_response_from_buffer(
      out->body ? strlen(out->body) : 0, out->body, MHD_RESPMEM_MUST_FREE);
  if (!response) {
    free(out->body);
    return MHD_NO;
  }
  MHD_add_response_header(response, "Content-Type", out->content_type);
  if (req && req->served_by && *req->served_by)
    MHD_add_response_header(response, TLY_SERVED_BY_HEADER, req->served_by);
  if (out->retry_after_s > 0) {
    char seconds[16];
    snprintf(seconds, sizeof(seconds), "%d", out->retry_after_s);
    MHD_add_response_header(response, MHD_HTTP_HEADER_RETRY_AFTER, seconds);
  }
  tly_mhd_result rc =
      MHD_queue_response(connection, (unsigned)out->status, response);
  MHD_destroy_response(response);
  return rc;
}

static tly_mhd_result
handle_request(void *cls, struct MHD_Connection *connection, const char *url,
               const char *method, const char *version, const char *upload_data,
               size_t *upload_data_size, void **state) {
  tly_http_t *http = cls;
  request_t *req = *state;
  response_t out = {0};
  (void)version;

  if (!req) /* the URI callback had no memory */
    return MHD_NO;
  if (req->answered) {
    /* Whatever the client still sends after an early answer (a 401 or 413
     * before its body) is dropped: it never reaches a handler. */
    *upload_data_size = 0;
    return MHD_YES;
  }
  switch (req->phase) {
  case PHASE_HEADERS:
    req->phase = PHASE_BODY;
    if (!begin_request(http, req, connection, url, method, &out)) {
      tly_http_guard_phase(connection, TLY_CONN_BODY);
      return MHD_YES;
    }
    break;
  case PHASE_BODY:
    if (*upload_data_size) {
      int rc = req->route >= 0 && routes[req->route].takes_body
                   ? take_body(http, req, upload_data, *upload_data_size)
                   : 0;
      *upload_data_size = 0;
      return rc ? MHD_NO : MHD_YES;
    }
    if (req->body_too_large) {
      char message[96];
      snprintf(message, sizeof(message), "request body larger than %lld bytes",
               (long long)http->conf.config->http.max_body_bytes);
      respond_error(&out, 413, "body_too_large", message);
      break;
    }
    dispatch(http, req, connection, &out);
    break;
  case PHASE_WAIT: /* resumed: every delivery report (or Stripe) is in */
    if (*upload_data_size) {
      *upload_data_size = 0;
      return MHD_YES;
    }
    if (req->forward) {
      forward_answer(http, req, &out);
      tly_forward_call_free(req->forward);
      req->forward = NULL;
      break;
    }
    if (req->portal) {
      int status;
      json_t *answer = tly_stripe_portal_answer(req->portal, &status);
      respond_json(&out, status, answer);
      tly_stripe_portal_call_free(req->portal);
      req->portal = NULL;
      break;
    }
    ingest_answer(req->ingest, &out);
    ingest_free(req->ingest);
    req->ingest = NULL;
    break;
  }
  if (out.suspended) {
    tly_http_guard_phase(connection, TLY_CONN_WAITING);
    return MHD_YES;
  }
  req->answered = 1;
  tly_http_guard_phase(connection, TLY_CONN_ANSWERING);
  return queue_answer(http, req, connection, &out);
}

/* Called once per request before its headers are parsed: the request's own
 * state, with the length of the whole request target (query included). */
static void *on_uri(void *cls, const char *uri,
                    struct MHD_Connection *connection) {
  (void)cls, (void)connection;
  request_t *req = calloc(1, sizeof(*req));
  if (req) {
    req->uri_len = uri ? strlen(uri) : 0;
    req->route = -1;
    req->partition = -1;
    /* Kept for forwarding (a target over http.max_url_bytes is refused
     * with 414 before that; MHD's connection memory bounds it here). */
    req->target = uri ? strdup(uri) : NULL;
  }
  return req;
}

static void on_completed(void *cls, struct MHD_Connection *connection,
                         void **state, enum MHD_RequestTerminationCode code) {
  request_t *req = *state;
  (void)cls, (void)code;
  /* The connection may carry another request now (keep-alive): its
   * header deadline runs from here. */
  tly_http_guard_phase(connection, TLY_CONN_AWAITING);
  if (!req)
    return;
  ingest_free(req->ingest); /* only when the client went away meanwhile */
  tly_stripe_portal_call_free(req->portal);
  tly_forward_call_free(req->forward);
  free(req->target);
  free(req->body);
  free(req);
  *state = NULL;
}

static int start_producer(tly_http_t *http, char *errstr, size_t errstr_size) {
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
  for (size_t i = 0; http->conf.kafka_properties &&
                     http->conf.kafka_properties[i] && count < 79;
       i++)
    properties[count++] = http->conf.kafka_properties[i];
  properties[count] = NULL;
  tally_producer_conf_t pconf = {.brokers = http->conf.brokers,
                                 .topic = http->conf.usage_topic,
                                 .on_delivery = on_delivery,
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

static void http_free(tly_http_t *http) {
  atomic_store(&http->stopping, 1);
  if (http->producer)
    tally_producer_flush(http->producer, INGEST_TIMEOUT_MS + 5000);
  tly_stripe_portal_close(http->portal); /* its calls resume connections */
  tly_forward_close(http->forward);      /* so do forwards */
  tly_http_guard_stop(http->guard);
  if (http->daemon)
    MHD_stop_daemon(http->daemon);
  tly_http_guard_free(http->guard); /* every connection is closed now */
  tly_stripe_portal_destroy(http->portal);
  tly_forward_destroy(http->forward);
  if (http->poller_started)
    pthread_join(http->poller, NULL);
  tally_producer_destroy(http->producer);
  tly_state_cache_free(http->cache);
  tly_alert_codec_destroy(http->alert_codec);
  pthread_mutex_destroy(&http->alert_lock);
  free(http->requests);
  free(http);
}

tly_http_t *tly_http_start(const tly_http_conf_t *conf, char *errstr,
                           size_t errstr_size) {
  struct sockaddr_in addr;
  const char *address = conf->address ? conf->address : "127.0.0.1";
  tly_http_t *http = calloc(1, sizeof(*http));

  if (!http) {
    snprintf(errstr, errstr_size, "out of memory");
    return NULL;
  }
  http->conf = *conf;
  pthread_mutex_init(&http->alert_lock, NULL);
  http->cache = tly_state_cache_new(0);
  http->requests = calloc(route_count + 1, sizeof(*http->requests));
  if (!http->cache || !http->requests) {
    snprintf(errstr, errstr_size, "out of memory");
    goto fail;
  }
  http->forward = tly_forward_new(NULL);
  if (!http->forward) {
    snprintf(errstr, errstr_size, "http: cannot set up forwarding (libcurl)");
    goto fail;
  }
  http->alert_codec = tly_alert_codec_new(errstr, errstr_size);
  if (!http->alert_codec)
    goto fail;
  memset(&addr, 0, sizeof(addr));
  addr.sin_family = AF_INET;
  addr.sin_port = htons(conf->port);
  if (inet_pton(AF_INET, address, &addr.sin_addr) != 1) {
    snprintf(errstr, errstr_size, "http address '%s': not an IPv4 address",
             address);
    goto fail;
  }
  if (start_producer(http, errstr, errstr_size))
    goto fail;
  if (conf->config->stripe.secret_key &&
      !(http->portal =
            tly_stripe_portal_new(&conf->config->stripe, errstr, errstr_size)))
    goto fail;
  http->guard = tly_http_guard_new(&conf->config->http, errstr, errstr_size);
  if (!http->guard)
    goto fail;
  unsigned threads = conf->threads ? conf->threads : 2u;
  /* libmicrohttpd's own limit and timeout are backstops: the guard closes
   * connections before either is reached (tly_http_conn.h). */
  http->daemon = MHD_start_daemon(
      MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME |
          MHD_USE_ERROR_LOG,
      conf->port, NULL, NULL, handle_request, http, MHD_OPTION_SOCK_ADDR, &addr,
      MHD_OPTION_THREAD_POOL_SIZE, threads, MHD_OPTION_CONNECTION_LIMIT,
      tly_http_guard_mhd_connection_limit(http->guard, threads),
      MHD_OPTION_CONNECTION_TIMEOUT, tly_http_guard_mhd_timeout_s(http->guard),
      MHD_OPTION_NOTIFY_CONNECTION, tly_http_guard_notify, http->guard,
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)65536,
      MHD_OPTION_URI_LOG_CALLBACK, on_uri, http, MHD_OPTION_NOTIFY_COMPLETED,
      on_completed, http, MHD_OPTION_END);
  if (!http->daemon) {
    snprintf(errstr, errstr_size, "http: cannot listen on %s:%u", address,
             (unsigned)conf->port);
    goto fail;
  }
  if (tly_http_guard_start(http->guard, errstr, errstr_size))
    goto fail;
  const union MHD_DaemonInfo *info =
      MHD_get_daemon_info(http->daemon, MHD_DAEMON_INFO_BIND_PORT);
  http->port = info ? info->port : conf->port;
  return http;
fail:
  http_free(http);
  return NULL;
}

uint16_t tly_http_port(const tly_http_t *http) { return http->port; }

void tly_http_stop(tly_http_t *http) {
  if (http)
    http_free(http);
}
