/*
 * tly_http.c - the HTTP port's server: libmicrohttpd, the route table,
 * auth, bounds, forwarding to a partition's owner and the life of each
 * request. The handlers that turn committed state (tly_state, through a
 * read cache) or a request body (tly_request, pure) into JSON live in
 * tly_http_queries.c; ingest, the Stripe webhook and the billing portal in
 * tly_http_ingest.c; health, readiness and metrics in tly_http_metrics.c.
 * tly_http_internal.h is what these files share.
 *
 * A request goes through three phases. On the first call (headers only)
 * the URL is bounded (414), the route found (404, 405), the bearer token
 * checked when the route wants one (401) and a declared body bounded (413).
 * A route without a body answers on the second call (the end of the
 * request): answered with the headers alone, libmicrohttpd would close the
 * connection after the answer. A route with a body gets it in pieces, kept up
 * to http.max_body_bytes (a chunked body that grows past it is drained and
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
#include "tly_http_internal.h"
#include "tly_json_text.h"
#include "tly_log.h"
#include "tly_request.h"
#include "tly_request_subject.h"
#include "tly_state.h"
#include "tly_state_cache.h"
#include "tly_stripe_portal.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if MHD_VERSION < 0x00097002
typedef int tly_mhd_result;
#else
typedef enum MHD_Result tly_mhd_result;
#endif

/* A chunked body this far past the limit is cut off (no answer): reading
 * on would only feed a client that ignores the limit. */
#define BODY_DRAIN_FACTOR 4

/* ---- responses ------------------------------------------------------- */

void tly_http_respond_json(response_t *out, int status, json_t *body) {
  out->status = status;
  /* The same text as json_dumps, in a third of its time. */
  out->body = tly_jt_dump(body);
  if (!out->body && body)
    out->body = json_dumps(body, JSON_COMPACT);
  out->content_type = "application/json";
  json_decref(body);
}

int tly_http_respond_json_text(response_t *out, int status, char *text) {
  if (!text)
    return -1;
  out->status = status;
  out->body = text;
  out->content_type = "application/json";
  return 0;
}

void tly_http_respond_table(response_t *out, struct MHD_Connection *connection,
                            json_t *answer, char *(*to_csv)(const json_t *)) {
  if (!answer || !tly_req_wants_csv(MHD_lookup_connection_value(
                     connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT))) {
    if (answer)
      tly_http_respond_json(out, 200, answer);
    else
      tly_http_respond_error(out, 500, "internal", "out of memory");
    return;
  }
  char *csv = to_csv(answer);
  json_decref(answer);
  if (!csv) {
    tly_http_respond_error(out, 500, "internal", "out of memory");
    return;
  }
  out->status = 200;
  out->body = csv;
  out->content_type = "text/csv; charset=utf-8";
}

json_t *tly_http_error_json(const char *code, const char *message,
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

void tly_http_respond_error(response_t *out, int status, const char *code,
                            const char *message) {
  tly_http_respond_json(
      out, status,
      json_pack("{s:o}", "error", tly_http_error_json(code, message, NULL)));
}

void tly_http_respond_req_error(response_t *out, const tly_req_error_t *err) {
  tly_http_respond_json(
      out, err->status,
      json_pack("{s:o}", "error",
                tly_http_error_json(err->code, err->message, err->field)));
}

/* A request module's answer: 200 with it, or its error when NULL. */
void tly_http_respond_answer(response_t *out, json_t *answer,
                             const tly_req_error_t *err) {
  if (answer)
    tly_http_respond_json(out, 200, answer);
  else
    tly_http_respond_req_error(out, err);
}

/* 503 while the subject's partition has no single caught-up owner that
 * this request can reach: {"error": {"code": "partition_moving", ...},
 * "partition": N, "owner": URL (when one is known), "retry_after_s": 1},
 * with Retry-After. partition -1: not known yet (no metadata). */
void tly_http_respond_moving(response_t *out, int32_t partition,
                             const char *owner, const char *message) {
  json_t *body =
      json_pack("{s:o,s:i}", "error",
                tly_http_error_json("partition_moving", message, NULL),
                "retry_after_s", 1);
  if (body) {
    json_object_set_new(body, "partition",
                        partition >= 0 ? json_integer(partition) : json_null());
    if (owner && *owner)
      json_object_set_new(body, "owner", json_string(owner));
  }
  tly_http_respond_json(out, 503, body);
  out->retry_after_s = 1;
  out->moving = 1;
}

/* ---- routing --------------------------------------------------------- */

const route_t tly_http_route_table[] = {
    {"GET", "/healthz", "/healthz", NULL, tly_http_handle_healthz, AUTH_PUBLIC,
     0, 0},
    {"GET", "/readyz", "/readyz", NULL, tly_http_handle_readyz, AUTH_PUBLIC, 0,
     0},
    {"GET", "/metrics", "/metrics", NULL, tly_http_handle_metrics, AUTH_METRICS,
     0, 0},
    {"GET", "/v1/plans", "/v1/plans", NULL, tly_http_handle_plans,
     AUTH_REQUIRED, 0, 0},
    {"POST", "/v1/estimate", "/v1/estimate", NULL, tly_http_handle_estimate,
     AUTH_REQUIRED, 1, 0},
    {"POST", "/v1/prorate", "/v1/prorate", NULL, tly_http_handle_prorate,
     AUTH_REQUIRED, 1, 0},
    {"POST", "/v1/events", "/v1/events", NULL, tly_http_handle_events,
     AUTH_REQUIRED, 1, 0},
    {"GET", "/v1/subjects/{subject}/usage", "/v1/subjects/", "/usage",
     tly_http_handle_usage, AUTH_REQUIRED, 0, 1},
    {"GET", "/v1/subjects/{subject}/quota", "/v1/subjects/", "/quota",
     tly_http_handle_quota, AUTH_REQUIRED, 0, 1},
    {"GET", "/v1/subjects/{subject}/usage/daily", "/v1/subjects/",
     "/usage/daily", tly_http_handle_daily, AUTH_REQUIRED, 0, 1},
    {"GET", "/v1/subjects/{subject}/cycles", "/v1/subjects/", "/cycles",
     tly_http_handle_cycles, AUTH_REQUIRED, 0, 1},
    {"GET", "/v1/analytics/top", "/v1/analytics/top", NULL,
     tly_http_handle_analytics_top, AUTH_REQUIRED, 0, 0},
    {"GET", "/v1/analytics/breakdown", "/v1/analytics/breakdown", NULL,
     tly_http_handle_analytics_breakdown, AUTH_REQUIRED, 0, 0},
    {"GET", "/v1/subjects/{subject}/alerts", "/v1/subjects/", "/alerts",
     tly_http_handle_alerts, AUTH_REQUIRED, 0, 1},
    {"GET", "/v1/subjects/{subject}/notifications", "/v1/subjects/",
     "/notifications", tly_http_handle_notifications, AUTH_REQUIRED, 0, 1},
    {"POST", "/v1/subjects/{subject}/notifications/read", "/v1/subjects/",
     "/notifications/read", tly_http_handle_notifications_read, AUTH_REQUIRED,
     1, 1},
    /* Relayed from the owner (tly_http_stream_relay.c). */
    {"GET", "/v1/subjects/{subject}/stream", "/v1/subjects/", "/stream",
     tly_http_handle_stream, AUTH_REQUIRED, 0, 1},
    {"POST", "/v1/subjects/{subject}/plan", "/v1/subjects/", "/plan",
     tly_http_handle_plan, AUTH_REQUIRED, 1, 0},
    {"POST", "/v1/stripe/webhook", "/v1/stripe/webhook", NULL,
     tly_http_handle_stripe_webhook, AUTH_SIGNED, 1, 0},
    {"POST", "/v1/subjects/{subject}/billing-portal", "/v1/subjects/",
     "/billing-portal", tly_http_handle_billing_portal, AUTH_REQUIRED, 1, 1},
    {"POST", "/v1/subjects/{subject}/customer", "/v1/subjects/", "/customer",
     tly_http_handle_customer, AUTH_REQUIRED, 1, 1},
    {"POST", "/v1/subjects/{subject}/subscription", "/v1/subjects/",
     "/subscription", tly_http_handle_subscribe, AUTH_REQUIRED, 1, 1},
    {"PUT", "/v1/subjects/{subject}/subscription", "/v1/subjects/",
     "/subscription", tly_http_handle_subscription_change, AUTH_REQUIRED, 1, 1},
    {"DELETE", "/v1/subjects/{subject}/subscription", "/v1/subjects/",
     "/subscription", tly_http_handle_subscription_cancel, AUTH_REQUIRED, 0, 1},
    {"GET", "/v1/subjects/{subject}/invoices", "/v1/subjects/", "/invoices",
     tly_http_handle_invoices, AUTH_REQUIRED, 0, 1},
    {"POST", "/v1/subjects/{subject}/reservations", "/v1/subjects/",
     "/reservations", tly_http_handle_reserve, AUTH_REQUIRED, 1, 1},
    /* A suffix ending in '*' takes one more segment (the handler reads it
     * from the target). */
    {"DELETE", "/v1/subjects/{subject}/reservations/{reservation_id}",
     "/v1/subjects/", "/reservations/*", tly_http_handle_release, AUTH_REQUIRED,
     0, 1},
    /* The schema registry's read API, for tally's own schemas. */
    {"GET", "/subjects", "/subjects", NULL, tly_http_handle_registry_subjects,
     AUTH_REGISTRY, 0, 0},
    {"GET", "/subjects/{subject}/versions", "/subjects/", "/versions",
     tly_http_handle_registry_versions, AUTH_REGISTRY, 0, 0},
    {"GET", "/subjects/{subject}/versions/{version}", "/subjects/",
     "/versions/*", tly_http_handle_registry_version, AUTH_REGISTRY, 0, 0},
    {"GET", "/schemas/ids/{id}", "/schemas/ids/", "",
     tly_http_handle_registry_schema, AUTH_REGISTRY, 0, 0},
    /* The dashboard: public files (the page asks for a key). */
    {"GET", "/ui", "/ui", NULL, tly_http_handle_ui_root, AUTH_PUBLIC, 0, 0},
    {"GET", "/ui/", "/ui/", NULL, tly_http_handle_ui_index, AUTH_PUBLIC, 0, 0},
    {"GET", "/ui/{file}", "/ui/", "", tly_http_handle_ui_file, AUTH_PUBLIC, 0,
     0},
};
const size_t tly_http_route_count =
    sizeof(tly_http_route_table) / sizeof(tly_http_route_table[0]);

size_t tly_http_routes(tly_http_route_info_t *out, size_t max) {
  for (size_t i = 0; i < tly_http_route_count && i < max; i++) {
    out[i].method = tly_http_route_table[i].method;
    out[i].path = tly_http_route_table[i].path;
    out[i].auth_required = tly_http_route_table[i].auth == AUTH_REQUIRED ||
                           tly_http_route_table[i].auth == AUTH_REGISTRY;
    out[i].owner_only = tly_http_route_table[i].owner_only;
  }
  return tly_http_route_count;
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
  int open_tail = suffix_len && route->suffix[suffix_len - 1] == '*';
  suffix_len -= (size_t)open_tail;
  if (!suffix_len) { /* the segment ends the path */
    if (slash)
      return 0;
    slash = path + path_len;
  } else {
    if (!slash || slash == segment)
      return 0;
    size_t after = (size_t)(path + path_len - slash);
    if (open_tail ? after <= suffix_len ||
                        memchr(slash + suffix_len, '/', after - suffix_len)
                  : after != suffix_len)
      return 0;
    if (memcmp(slash, route->suffix, suffix_len) != 0)
      return 0;
  }
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
  for (size_t i = 0; i < tly_http_route_count; i++) {
    tly_req_error_t err;
    int match = route_matches(&tly_http_route_table[i], path, path_len,
                              req->subject, sizeof(req->subject), &err);
    if (!match)
      continue;
    path_known = 1;
    if (strcmp(method, tly_http_route_table[i].method) != 0)
      continue;
    if (match == 2) {
      tly_http_respond_req_error(out, &err);
      return -1;
    }
    return (int)i;
  }
  if (path_known)
    tly_http_respond_error(out, 405, "method_not_allowed",
                           "method not allowed on this route");
  else
    tly_http_respond_error(out, 404, "not_found", "no such route");
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
  case AUTH_REGISTRY:
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
  const route_t *route = &tly_http_route_table[req->route];
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
  const route_t *route = &tly_http_route_table[req->route];
  long timeout_ms = 0;
  char credential[TLY_FORWARD_CREDENTIAL_MAX];
  if (route->handler == tly_http_handle_billing_portal)
    timeout_ms = (long)http->conf.config->stripe.timeout_ms + 2000;
  else if (tly_http_is_subs_route(route->handler))
    timeout_ms = tly_http_subs_forward_timeout_ms(http);
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
      .accept = MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
                                            MHD_HTTP_HEADER_ACCEPT),
      .body = scope.body,
      .body_len = scope.body_len,
      .timeout_ms = timeout_ms};
  snprintf(req->owner, sizeof(req->owner), "%s", owner);
  /* A stream is relayed as it comes, not answered once. */
  if (route->handler == tly_http_handle_stream && req->target && signed_ok)
    return tly_http_stream_relay(http, req, connection, owner, credential, out);
  if (!http->forward || !req->target || !signed_ok) {
    tly_http_respond_moving(
        out, req->partition, owner,
        "the subject's partition is served by another instance");
    return 0;
  }
  MHD_suspend_connection(connection);
  if (tly_forward_request(http->forward, &request, forward_done, connection,
                          &req->forward)) {
    MHD_resume_connection(connection);
    atomic_fetch_add(&http->forwards_refused, 1);
    tly_http_respond_moving(out, req->partition, owner,
                            "too many requests are being forwarded; retry");
    return 0;
  }
  req->phase = PHASE_WAIT;
  out->suspended = 1;
  return 1;
}

/* A read of a partition nobody here can answer: forwarded to a member
 * that announces an applied standby copy of it (tly_standby.c), which
 * answers from that copy under the caller's bound (tly_http_stale.c), at
 * most once per request. 1 when it went (or out holds a 503), 0 when there
 * is none to ask. */
static int forward_to_standby(tly_http_t *http, request_t *req,
                              struct MHD_Connection *connection,
                              response_t *out) {
  tly_members_t *members = http->conf.members;
  tly_members_owner_t holder;
  if (req->standby_tried || req->forwarded || req->partition < 0 ||
      !tly_members_secret(members) ||
      !tly_http_stale_route(tly_http_route_table[req->route].handler) ||
      !tly_members_standby_holder(members, req->partition, &holder) ||
      strcmp(holder.http, tly_members_advertise(members)) == 0)
    return 0;
  req->standby_tried = 1;
  atomic_fetch_add(&http->standby_forwards, 1);
  forward_to(http, req, connection, holder.http, holder.instance, out);
  return 1;
}

/* The owner's answer, relayed: its status, content type and body, or 503
 * when it could not be reached (it may have just died or lost the
 * partition: the caller retries). call is the finished forward. */
static void forward_answer(tly_http_t *http, request_t *req,
                           struct MHD_Connection *connection, response_t *out,
                           tly_forward_call_t *call) {
  tly_forward_result_t result;
  tly_forward_result(call, &result);
  /* The owner gone (killed, or it just lost the partition) or moving: a
   * copy here may answer within the caller's bound, else a standby
   * copy's holder. */
  if ((result.status < 100 || result.status > 599 || result.status == 503) &&
      (tly_http_try_stale(http, req, connection, out) ||
       forward_to_standby(http, req, connection, out)))
    return;
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
    tly_http_respond_moving(out, req->partition, req->owner, message);
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
  /* The owner answered from a copy (tly_http_stale.c): its body says so,
   * and so does the header here. */
  if (result.status == 200 && out->body && strstr(out->body, "\"as_of\":{"))
    out->stale = 1;
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
  int can_forward = tly_members_secret(members) && !forwarded &&
                    owner.http[0] && strcmp(owner.http, self) != 0;
  /* The owner serves it: the fresh answer is there. */
  if (owner.state == TLY_OWNER_SERVING && can_forward) {
    forward_to(http, req, connection, owner.http, owner.instance, out);
    return 0;
  }
  /* Two claim it, and one of them went silent (killed, its claim not yet
   * expired) while the other serves it: a read goes to the one serving. */
  tly_members_owner_t successor;
  if (owner.state == TLY_OWNER_CONFLICT && !forwarded &&
      tly_members_secret(members) &&
      tly_http_stale_route(tly_http_route_table[req->route].handler) &&
      tly_members_successor(members, req->partition, &successor) &&
      strcmp(successor.http, self) != 0) {
    forward_to(http, req, connection, successor.http, successor.instance, out);
    return 0;
  }
  /* Nobody serves it now: a copy here, within the caller's bound. */
  if (tly_http_try_stale(http, req, connection, out))
    return 0;
  /* The new owner replays: its copy may be fresher than this one. */
  if (owner.state == TLY_OWNER_REPLAYING && can_forward) {
    forward_to(http, req, connection, owner.http, owner.instance, out);
    return 0;
  }
  /* An instance holding a standby copy. */
  if (forward_to_standby(http, req, connection, out))
    return 0;
  if (!tly_members_secret(members) && req->partition >= 0) {
    tly_http_respond_moving(
        out, req->partition, NULL,
        "this instance does not serve the subject's partition now "
        "and cannot forward: no cluster secret is configured "
        "(" TLY_CLUSTER_SECRET_ENV " or --cluster-secret-file)");
    return 0;
  }
  switch (owner.state) {
  case TLY_OWNER_SERVING:
    if (strcmp(owner.http, self) == 0)
      tly_http_respond_moving(
          out, req->partition, NULL,
          "this instance announced the partition but does not "
          "serve it now");
    else
      tly_http_respond_moving(
          out, req->partition, owner.http,
          "a forwarded request reached an instance that does not "
          "serve the subject's partition");
    break;
  case TLY_OWNER_REPLAYING:
    tly_http_respond_moving(
        out, req->partition, owner.http,
        "the subject's partition is replaying on its new owner");
    break;
  case TLY_OWNER_CONFLICT:
    tly_http_respond_moving(
        out, req->partition, NULL,
        "the subject's partition is moving between instances");
    break;
  case TLY_OWNER_UNKNOWN:
    tly_http_respond_moving(
        out, req->partition, NULL,
        req->partition < 0 ? "partitions are not known yet"
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
  tly_http_respond_error(out, 401, "unauthorized",
                         tly_cluster_forward_reason(result));
  return 0;
}

/* Runs the route's handler here, or sends the request to its owner. */
static void dispatch(tly_http_t *http, request_t *req,
                     struct MHD_Connection *connection, response_t *out) {
  const route_t *route = &tly_http_route_table[req->route];
  if (req->forwarded && !forward_credential_ok(http, req, connection, out))
    return;
  /* Without Stripe, the billing portal's 503 is this instance's to give:
   * it needs no state. */
  int local_answer =
      (route->handler == tly_http_handle_billing_portal && !http->portal) ||
      (tly_http_is_subs_route(route->handler) && !http->subs);
  if (route->owner_only && !local_answer &&
      !route_to_owner(http, req, connection, out))
    return;
  route->handler(http, req, connection, out);
}

/* Whether the request says a body follows (a Content-Length other than 0,
 * or a Transfer-Encoding). */
static int declares_body(struct MHD_Connection *connection) {
  const char *length = MHD_lookup_connection_value(
      connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
  return (length && strspn(length, "0") != strlen(length)) ||
         MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
                                     MHD_HTTP_HEADER_TRANSFER_ENCODING);
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
    tly_http_respond_error(out, 414, "uri_too_long", message);
    return 1;
  }
  req->route = find_route(url, method, req, out);
  if (req->route < 0)
    return 1;
  const route_t *route = &tly_http_route_table[req->route];
  /* Forwarded by another instance, which authenticated the client: no
   * client key comes along, the forwarding credential is checked instead
   * (dispatch, once the body it covers is in). Only the routes that are
   * ever forwarded; either marker, so no request passes as a client's. */
  req->forwarded =
      (route->owner_only || tly_http_is_gather_route(route->handler)) &&
      (MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
                                   TLY_FORWARDED_HEADER) ||
       MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
                                   TLY_FORWARD_AUTH_HEADER));
  if (!req->forwarded && !route_is_open(http, route)) {
    const tly_http_config_t *auth = &http->conf.config->http;
    const char *header = MHD_lookup_connection_value(
        connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    tly_auth_result_t result =
        route->auth == AUTH_REGISTRY
            ? tly_auth_check_basic_or_bearer(auth->api_keys,
                                             auth->api_key_count, header)
            : tly_auth_check(auth->api_keys, auth->api_key_count, header, NULL);
    if (result != TLY_AUTH_OK) {
      tly_http_respond_error(out, 401, "unauthorized", tly_auth_reason(result));
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
    tly_http_respond_error(out, 413, "body_too_large", message);
    return 1;
  }
  /* A route without a body answers on the next call, once libmicrohttpd
   * has the whole request: an answer queued with the headers alone makes
   * it close the connection after the answer (it cannot tell that no body
   * follows), so every request would pay for a new connection. A request
   * that declares a body anyway is answered now, its body unread (and its
   * connection closed). */
  if (!declares_body(connection))
    return 0;
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

static int64_t monotonic_us(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (int64_t)now.tv_sec * 1000000 + now.tv_nsec / 1000;
}

/* The answer's status and latency, by route (no route: the last row). */
static void count_request(tly_http_t *http, const request_t *req, int status) {
  size_t route =
      req && req->route >= 0 ? (size_t)req->route : tly_http_route_count;
  if (status >= STATUS_MIN && status <= STATUS_MAX)
    atomic_fetch_add_explicit(&http->requests[route][status - STATUS_MIN], 1,
                              memory_order_relaxed);
  if (req)
    tly_http_latency_observe(http->latency, route,
                             monotonic_us() - req->started_us);
}

static tly_mhd_result queue_answer(tly_http_t *http, request_t *req,
                                   struct MHD_Connection *connection,
                                   response_t *out) {
  if (out->stream) {
    count_request(http, req, out->status);
    MHD_add_response_header(out->stream, "Content-Type", out->content_type);
    MHD_add_response_header(out->stream, "Cache-Control", "no-store");
    MHD_add_response_header(out->stream, "X-Accel-Buffering", "no");
    if (req && req->served_by && *req->served_by)
      MHD_add_response_header(out->stream, TLY_SERVED_BY_HEADER,
                              req->served_by);
    tly_mhd_result queued =
        MHD_queue_response(connection, (unsigned)out->status, out->stream);
    MHD_destroy_response(out->stream);
    return queued;
  }
  if (!out->body && !out->static_body) {
    out->status = 500;
    out->body = strdup("{\"error\":{\"code\":\"internal\",\"message\":\"out "
                       "of memory\"}}");
    out->content_type = "application/json";
  }
  count_request(http, req, out->status);
  struct MHD_Response *response =
      out->static_body
          ? MHD_create_response_from_buffer(out->static_len,
                                            (void *)out->static_body,
                                            MHD_RESPMEM_PERSISTENT)
          : MHD_create_response_from_buffer(out->body ? strlen(out->body) : 0,
                                            out->body, MHD_RESPMEM_MUST_FREE);
  if (!response) {
    free(out->body);
    return MHD_NO;
  }
  MHD_add_response_header(response, "Content-Type", out->content_type);
  for (const char *const *h = out->extra_headers; h && h[0]; h += 2)
    MHD_add_response_header(response, h[0], h[1]);
  if (out->location)
    MHD_add_response_header(response, MHD_HTTP_HEADER_LOCATION, out->location);
  if (req && req->served_by && *req->served_by)
    MHD_add_response_header(response, TLY_SERVED_BY_HEADER, req->served_by);
  if (out->stale)
    MHD_add_response_header(response, "X-Tally-Stale", "1");
  if (out->moving && req && req->route >= 0 &&
      tly_http_route_table[req->route].owner_only &&
      !strcmp(tly_http_route_table[req->route].method, "GET"))
    atomic_fetch_add(&http->moving_reads_refused, 1);
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
      int rc = req->route >= 0 && tly_http_route_table[req->route].takes_body
                   ? take_body(http, req, upload_data, *upload_data_size)
                   : 0;
      *upload_data_size = 0;
      return rc ? MHD_NO : MHD_YES;
    }
    if (req->body_too_large) {
      char message[96];
      snprintf(message, sizeof(message), "request body larger than %lld bytes",
               (long long)http->conf.config->http.max_body_bytes);
      tly_http_respond_error(&out, 413, "body_too_large", message);
      break;
    }
    dispatch(http, req, connection, &out);
    break;
  case PHASE_WAIT: /* resumed: every delivery report (or Stripe) is in */
    if (*upload_data_size) {
      *upload_data_size = 0;
      return MHD_YES;
    }
    if (req->relay) {
      tly_http_stream_relay_answer(http, req, &out);
      break;
    }
    if (req->forward) {
      /* (the answer may forward again: to a standby copy's holder) */
      tly_forward_call_t *call = req->forward;
      req->forward = NULL;
      forward_answer(http, req, connection, &out, call);
      tly_forward_call_free(call);
      break;
    }
    if (req->stripe_task) {
      tly_http_subs_answer(req, &out);
      break;
    }
    if (req->gather) {
      tly_http_analytics_answer(http, req, connection, &out);
      break;
    }
    if (req->portal) {
      int status;
      json_t *answer = tly_http_task_answer(req->portal, &status);
      tly_http_respond_json(&out, status, answer);
      tly_http_task_free(req->portal);
      req->portal = NULL;
      break;
    }
    tly_http_ingest_answer(req->ingest, &out);
    tly_http_ingest_free(req->ingest);
    req->ingest = NULL;
    break;
  }
  if (out.suspended) {
    tly_http_guard_phase(connection, TLY_CONN_WAITING);
    return MHD_YES;
  }
  req->answered = 1;
  tly_http_guard_phase(connection,
                       out.stream ? TLY_CONN_WAITING : TLY_CONN_ANSWERING);
  return queue_answer(http, req, connection, &out);
}

/* Called once per request before its headers are parsed: the request's own
 * state, with the length of the whole request target (query included). */
static void *on_uri(void *cls, const char *uri,
                    struct MHD_Connection *connection) {
  (void)cls, (void)connection;
  request_t *req = calloc(1, sizeof(*req));
  if (req) {
    req->started_us = monotonic_us();
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
  tly_http_ingest_free(
      req->ingest); /* only when the client went away meanwhile */
  tly_http_task_free(req->portal);
  tly_http_task_free(req->stripe_task);
  tly_forward_call_free(req->forward);
  tly_http_gather_free(req->gather);
  tly_http_stream_relay_drop(req->relay);
  free(req->target);
  free(req->body);
  free(req);
  *state = NULL;
}

unsigned tly_http_default_threads(void) {
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  if (cores < 2)
    return 1;
  return cores / 2 > TLY_HTTP_THREADS_MAX ? TLY_HTTP_THREADS_MAX
                                          : (unsigned)(cores / 2);
}

static void http_free(tly_http_t *http) {
  atomic_store(&http->stopping, 1);
  if (http->producer)
    tally_producer_flush(http->producer, INGEST_TIMEOUT_MS + 5000);
  tly_http_streams_close(http->streams); /* resumes the suspended ones */
  tly_webhooks_stop(http->webhooks);
  tly_stripe_portal_close(http->portal); /* its calls resume connections */
  tly_http_subs_close(http);             /* so do its tasks */
  tly_http_tasks_close(http->scans);     /* and analytics scans */
  tly_forward_close(http->forward);      /* so do forwards */
  tly_http_guard_stop(http->guard);
  if (http->daemon)
    MHD_stop_daemon(http->daemon);
  tly_http_guard_free(http->guard); /* every connection is closed now */
  tly_http_streams_free(http->streams);
  tly_stripe_portal_destroy(http->portal);
  tly_http_subs_free(http);
  tly_http_tasks_destroy(http->scans);
  tly_forward_destroy(http->forward);
  if (http->poller_started)
    pthread_join(http->poller, NULL);
  tally_producer_destroy(http->producer);
  tly_state_cache_free(http->cache);
  tly_http_reserve_free(http->reserve);
  tly_alert_codec_destroy(http->alert_codec);
  tly_http_registry_free(http);
  pthread_mutex_destroy(&http->alert_lock);
  free(http->requests);
  tly_http_latency_free(http->latency);
  free(http);
}

/* libmicrohttpd's memory per connection: the request's headers (the target
 * up to http.max_url_bytes, a token, a forwarding credential) and the
 * answer's. It is zeroed after every request, so it is kept no larger than
 * that needs: 32 KiB (libmicrohttpd's default) unless the target bound
 * needs more. */
static size_t connection_memory(const tly_config_t *config) {
  size_t needed = 16384 + 2 * (size_t)config->http.max_url_bytes;
  return needed > 32768 ? needed : 32768;
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
  /* As many entries as the subject cache's share of the memory budget
   * holds (tly_processor.h, tly_memory_part_t). */
  size_t cache_slots = 0;
  if (conf->processor) {
    tly_processor_stats_t stats;
    tly_processor_stats(conf->processor, &stats);
    cache_slots = tly_state_cache_slots_for(
        (size_t)stats.memory_budget[TLY_MEMORY_SUBJECT_CACHE]);
  }
  http->cache = tly_state_cache_new(cache_slots);
  http->requests = calloc(tly_http_route_count + 1, sizeof(*http->requests));
  http->latency = tly_http_latency_new(tly_http_route_count + 1);
  if (!http->cache || !http->requests || !http->latency) {
    snprintf(errstr, errstr_size, "out of memory");
    goto fail;
  }
  http->reserve = tly_http_reserve_new();
  http->streams = tly_http_streams_new(http);
  http->scans = tly_http_tasks_new(TLY_ANALYTICS_SCANS_MAX);
  if (!http->reserve || !http->streams || !http->scans) {
    snprintf(errstr, errstr_size, "out of memory");
    goto fail;
  }
  http->forward = tly_forward_new(NULL);
  if (!http->forward) {
    snprintf(errstr, errstr_size, "http: cannot set up forwarding (libcurl)");
    goto fail;
  }
  http->alert_codec = tly_alert_codec_new(errstr, errstr_size);
  if (!http->alert_codec || tly_http_registry_init(http, errstr, errstr_size))
    goto fail;
  memset(&addr, 0, sizeof(addr));
  addr.sin_family = AF_INET;
  addr.sin_port = htons(conf->port);
  if (inet_pton(AF_INET, address, &addr.sin_addr) != 1) {
    snprintf(errstr, errstr_size, "http address '%s': not an IPv4 address",
             address);
    goto fail;
  }
  if (tly_http_start_producer(http, errstr, errstr_size))
    goto fail;
  tly_webhooks_conf_t wconf = {.config = conf->config,
                               .brokers = conf->brokers,
                               .alerts_topic = conf->alerts_topic,
                               .dlq_topic = conf->dlq_topic,
                               .kafka_properties = conf->kafka_properties};
  errstr[0] = '\0';
  http->webhooks = tly_webhooks_start(&wconf, errstr, errstr_size);
  if (!http->webhooks && errstr[0])
    goto fail;
  if (conf->config->stripe.secret_key &&
      !(http->portal =
            tly_stripe_portal_new(&conf->config->stripe, errstr, errstr_size)))
    goto fail;
  if (tly_http_subs_init(http, errstr, errstr_size))
    goto fail;
  http->guard = tly_http_guard_new(&conf->config->http, errstr, errstr_size);
  if (!http->guard)
    goto fail;
  unsigned threads = conf->threads ? conf->threads
                     : conf->config->http.threads
                         ? (unsigned)conf->config->http.threads
                         : tly_http_default_threads();
  http->threads = threads;
  /* One thread is libmicrohttpd's internal thread without a pool: it warns
   * of a pool size of 0 or 1, so the option is left out then. */
  struct MHD_OptionItem pool[] = {
      {threads > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END,
       (intptr_t)threads, NULL},
      {MHD_OPTION_END, 0, NULL}};
  /* libmicrohttpd's own limit and timeout are backstops: the guard closes
   * connections before either is reached (tly_http_conn.h). */
  http->daemon = MHD_start_daemon(
      MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME |
          MHD_USE_ERROR_LOG,
      conf->port, NULL, NULL, handle_request, http, MHD_OPTION_SOCK_ADDR, &addr,
      MHD_OPTION_ARRAY, pool, MHD_OPTION_CONNECTION_LIMIT,
      tly_http_guard_mhd_connection_limit(http->guard, threads),
      MHD_OPTION_CONNECTION_TIMEOUT, tly_http_guard_mhd_timeout_s(http->guard),
      MHD_OPTION_NOTIFY_CONNECTION, tly_http_guard_notify, http->guard,
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, connection_memory(conf->config),
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
