/*
 * tly_http.c - routes of the HTTP port as a table, each a small handler that
 * turns committed state into JSON.
 *
 * Finding a subject's rows: state keys start with the partition, and the
 * partition is the one Kafka's murmur2 partitioner (tally's producers, Java
 * clients) picks for the subject key. Events produced with another
 * partitioner may live elsewhere, so when the expected partition has no row
 * the other partitions are searched too.
 */
#include "tly_http.h"

#include "tly_event_json.h"
#include "tly_billing.h"
#include "tly_keys.h"
#include "tly_log.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if MHD_VERSION < 0x00097002
typedef int tly_mhd_result;
#else
typedef enum MHD_Result tly_mhd_result;
#endif

struct tly_http {
  tly_http_conf_t conf;
  struct MHD_Daemon *daemon;
  uint16_t port;
};

typedef struct {
  int status;
  char *body; /* malloc'd */
  const char *content_type;
} response_t;

typedef void (*route_handler_t)(tly_http_t *http, const char *subject,
                                struct MHD_Connection *connection,
                                response_t *out);

/* ---- responses ------------------------------------------------------- */

static void respond_json(response_t *out, int status, json_t *body) {
  out->status = status;
  out->body = json_dumps(body, JSON_COMPACT);
  out->content_type = "application/json";
  json_decref(body);
}

static void respond_error(response_t *out, int status, const char *code,
                          const char *message) {
  respond_json(out, status,
               json_pack("{s:{s:s,s:s}}", "error", "code", code, "message",
                         message));
}

/* ---- handlers -------------------------------------------------------- */

static void handle_healthz(tly_http_t *http, const char *subject,
                           struct MHD_Connection *connection,
                           response_t *out) {
  (void)http, (void)subject, (void)connection;
  respond_json(out, 200, json_pack("{s:s}", "status", "ok"));
}

/* Adds one feature's row of the current cycle to features. */
static void usage_feature(json_t *features, const tly_plan_t *plan,
                          const char *feature, const tly_billing_row_t *r) {
  tly_billing_row_t row = *r;
  json_t *entry = json_pack(
      "{s:I,s:I,s:I,s:I,s:I}", "quantity", (json_int_t)row.quantity,
      "input_tokens", (json_int_t)row.input_tokens, "output_tokens",
      (json_int_t)row.output_tokens, "events", (json_int_t)row.event_count,
      "cost_micros", (json_int_t)row.cost_micros);
  const tly_feature_limit_t *limit = plan ? tly_plan_limit(plan, feature) : NULL;
  if (!limit || limit->limit == TLY_UNLIMITED) {
    json_object_set_new(entry, "limit", json_null());
    json_object_set_new(entry, "mode", json_string("unlimited"));
    json_object_set_new(entry, "exceeded", json_false());
  } else {
    int64_t remaining = limit->limit - row.quantity;
    json_object_set_new(entry, "limit", json_integer(limit->limit));
    json_object_set_new(entry, "mode", json_string(limit->mode == TLY_LIMIT_HARD
                                                       ? "hard"
                                                       : "soft"));
    json_object_set_new(entry, "remaining",
                        json_integer(remaining > 0 ? remaining : 0));
    json_object_set_new(entry, "percent",
                        json_integer(limit->limit ? row.quantity * 100 / limit->limit
                                                  : 100));
    json_object_set_new(entry, "exceeded", json_boolean(remaining < 0));
  }
  json_object_set_new(features, feature, entry);
}

/* Finds the subject's account: first in the partition Kafka's murmur2
 * partitioner picks for it, then in the others. 1 found, 0 not, -1 error. */
static int find_account(tly_http_t *http, tly_subject_kind_t kind,
                        const char *id, const char *subject_key,
                        size_t subject_key_len, tly_account_t *account,
                        tly_subject_row_t **rows, size_t *row_count,
                        int32_t *partition_out, char *errstr, size_t errlen) {
  int32_t partitions = tly_processor_partition_count(http->conf.processor);
  int32_t home = partitions > 0 ? rd_kafka_msg_partitioner_murmur2(
                                      NULL, subject_key, subject_key_len,
                                      partitions, NULL, NULL)
                                : -1;
  for (int32_t i = -1; i < partitions; i++) {
    int32_t partition = i < 0 ? home : i;
    char key[TLY_KEY_MAX], *value = NULL;
    size_t value_len;
    if (partition < 0 || (i >= 0 && partition == home))
      continue;
    size_t key_len = tly_key_account(partition, kind, id, key, sizeof(key));
    if (!key_len) {
      snprintf(errstr, errlen, "subject id too long");
      return -1;
    }
    int found = tly_store_get(http->conf.store, TLY_CF_ACCOUNTS, key, key_len,
                              &value, &value_len, errstr, errlen);
    if (found < 0)
      return -1;
    if (!found)
      continue;
    int bad = tly_subject_record_decode(value, value_len, account, rows,
                                        row_count);
    tly_store_free(value);
    if (bad) {
      snprintf(errstr, errlen, "stored subject record is corrupt");
      return -1;
    }
    *partition_out = partition;
    return 1;
  }
  return 0;
}

static void handle_usage(tly_http_t *http, const char *subject,
                         struct MHD_Connection *connection, response_t *out) {
  tly_subject_kind_t kind;
  char *id = NULL, key[1100], errstr[512];
  json_t *features = json_object();
  tly_subject_row_t *rows = NULL;
  size_t row_count = 0;
  tly_account_t account;
  int32_t partition = -1;
  (void)connection;

  if (tly_subject_parse(subject, &kind, &id, errstr, sizeof(errstr))) {
    respond_error(out, 400, "bad_subject", errstr);
    goto done;
  }
  size_t key_len = tly_subject_key(kind, id, key, sizeof(key));
  if (key_len >= sizeof(key)) {
    respond_error(out, 400, "bad_subject", "subject id too long");
    goto done;
  }
  int found = find_account(http, kind, id, key, key_len, &account, &rows,
                           &row_count, &partition, errstr, sizeof(errstr));
  if (found < 0) {
    respond_error(out, 500, "store_error", errstr);
    goto done;
  }
  if (!found) {
    char message[1200];
    snprintf(message, sizeof(message), "no usage recorded for subject %s", key);
    respond_error(out, 404, "not_found", message);
    goto done;
  }
  const tly_plan_t *plan = tly_config_plan(http->conf.config, account.plan);
  for (size_t i = 0; i < row_count; i++)
    if (rows[i].cycle_start_ms == account.cycle.start_ms)
      usage_feature(features, plan, rows[i].feature, &rows[i].row);
  int64_t credits_used = tly_billing_credits_used(http->conf.config, &account);
  json_t *credits = json_pack("{s:I}", "used", (json_int_t)credits_used);
  if (plan && plan->credits != TLY_UNLIMITED) {
    int64_t remaining = plan->credits - credits_used;
    json_object_set_new(credits, "limit", json_integer(plan->credits));
    json_object_set_new(credits, "remaining",
                        json_integer(remaining > 0 ? remaining : 0));
    json_object_set_new(credits, "exceeded", json_boolean(remaining < 0));
  } else {
    json_object_set_new(credits, "limit", json_null());
  }
  respond_json(
      out, 200,
      json_pack("{s:s,s:i,s:s,s:{s:I,s:I},s:I,s:o,s:b,s:b,s:O}", "subject", key,
                "partition", (int)partition, "plan", account.plan, "cycle",
                "start_ms", (json_int_t)account.cycle.start_ms, "end_ms",
                (json_int_t)account.cycle.end_ms, "cost_micros",
                (json_int_t)account.cycle.cost_micros, "credits", credits,
                "payment_failed", account.payment_failed, "canceled",
                account.canceled, "features", features));
done:
  json_decref(features);
  free(rows);
  free(id);
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
    int needed = vsnprintf(text->data ? text->data + text->len : NULL, room,
                           fmt, ap);
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

static void handle_metrics(tly_http_t *http, const char *subject,
                           struct MHD_Connection *connection,
                           response_t *out) {
  tly_processor_stats_t stats;
  text_t text = {0};
  tly_partition_status_t status[1024];
  (void)subject, (void)connection;

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
  text_append(&text,
              "# HELP tally_outbox_entries Outputs committed but not yet "
              "acknowledged by Kafka.\n# TYPE tally_outbox_entries gauge\n"
              "tally_outbox_entries %llu\n",
              (unsigned long long)stats.outbox_pending);
  size_t count = tly_processor_partitions(
      http->conf.processor, status, sizeof(status) / sizeof(status[0]));
  if (count > sizeof(status) / sizeof(status[0]))
    count = sizeof(status) / sizeof(status[0]);
  text_append(&text, "# HELP tally_partition_committed_offset Next input "
                     "offset committed to RocksDB.\n# TYPE "
                     "tally_partition_committed_offset gauge\n");
  for (size_t i = 0; i < count; i++)
    if (status[i].assigned)
      text_append(&text,
                  "tally_partition_committed_offset{partition=\"%d\"} %lld\n",
                  (int)status[i].partition,
                  (long long)status[i].committed_offset);
  text_append(&text, "# HELP tally_consumer_lag Records in the log not yet "
                     "committed.\n# TYPE tally_consumer_lag gauge\n");
  for (size_t i = 0; i < count; i++) {
    if (!status[i].assigned || status[i].high_watermark < 0)
      continue;
    int64_t committed =
        status[i].committed_offset < 0 ? 0 : status[i].committed_offset;
    int64_t lag = status[i].high_watermark - committed;
    text_append(&text, "tally_consumer_lag{partition=\"%d\"} %lld\n",
                (int)status[i].partition, (long long)(lag < 0 ? 0 : lag));
  }
  out->status = text.data ? 200 : 500;
  out->body = text.data ? text.data : strdup("out of memory\n");
  out->content_type = "text/plain; version=0.0.4";
}

/* ---- routing --------------------------------------------------------- */

typedef struct {
  const char *method;
  const char *prefix; /* path before {subject}, or the whole path */
  const char *suffix; /* path after {subject}; NULL: no subject segment */
  route_handler_t handler;
} route_t;

static const route_t routes[] = {
    {"GET", "/healthz", NULL, handle_healthz},
    {"GET", "/metrics", NULL, handle_metrics},
    {"GET", "/v1/subjects/", "/usage", handle_usage},
};

/* Matches url against route; on a subject route copies the segment. */
static int route_matches(const route_t *route, const char *url, char *subject,
                         size_t subject_size) {
  size_t prefix_len = strlen(route->prefix);
  if (!route->suffix)
    return strcmp(url, route->prefix) == 0;
  if (strncmp(url, route->prefix, prefix_len) != 0)
    return 0;
  const char *segment = url + prefix_len;
  const char *slash = strchr(segment, '/');
  if (!slash || slash == segment || strcmp(slash, route->suffix) != 0)
    return 0;
  size_t len = (size_t)(slash - segment);
  if (len >= subject_size)
    return 0;
  memcpy(subject, segment, len);
  subject[len] = '\0';
  return 1;
}

static void dispatch(tly_http_t *http, struct MHD_Connection *connection,
                     const char *url, const char *method, response_t *out) {
  char subject[1024];
  int path_known = 0;
  for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
    if (!route_matches(&routes[i], url, subject, sizeof(subject)))
      continue;
    path_known = 1;
    if (strcmp(method, routes[i].method) == 0) {
      routes[i].handler(http, routes[i].suffix ? subject : NULL, connection,
                        out);
      return;
    }
  }
  if (path_known)
    respond_error(out, 405, "method_not_allowed",
                  "method not allowed on this route");
  else
    respond_error(out, 404, "not_found", "no such route");
}

static tly_mhd_result handle_request(void *cls,
                                     struct MHD_Connection *connection,
                                     const char *url, const char *method,
                                     const char *version,
                                     const char *upload_data,
                                     size_t *upload_data_size, void **state) {
  static int request_seen;
  tly_http_t *http = cls;
  response_t out = {0};
  (void)version, (void)upload_data;

  if (!*state) { /* headers only so far; wait for the body */
    *state = &request_seen;
    return MHD_YES;
  }
  if (*upload_data_size) { /* no route takes a body yet: drop it */
    *upload_data_size = 0;
    return MHD_YES;
  }
  dispatch(http, connection, url, method, &out);
  if (!out.body) {
    out.status = 500;
    out.body = strdup("{\"error\":{\"code\":\"internal\",\"message\":\"out "
                      "of memory\"}}");
    out.content_type = "application/json";
  }
  struct MHD_Response *response = MHD_create_response_from_buffer(
      out.body ? strlen(out.body) : 0, out.body, MHD_RESPMEM_MUST_FREE);
  if (!response) {
    free(out.body);
    return MHD_NO;
  }
  MHD_add_response_header(response, "Content-Type", out.content_type);
  tly_mhd_result rc = MHD_queue_response(connection, (unsigned)out.status,
                                         response);
  MHD_destroy_response(response);
  return rc;
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
  memset(&addr, 0, sizeof(addr));
  addr.sin_family = AF_INET;
  addr.sin_port = htons(conf->port);
  if (inet_pton(AF_INET, address, &addr.sin_addr) != 1) {
    snprintf(errstr, errstr_size, "http address '%s': not an IPv4 address",
             address);
    free(http);
    return NULL;
  }
  http->daemon = MHD_start_daemon(
      MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ERROR_LOG, conf->port, NULL,
      NULL, handle_request, http, MHD_OPTION_SOCK_ADDR, &addr,
      MHD_OPTION_THREAD_POOL_SIZE, conf->threads ? conf->threads : 2u,
      MHD_OPTION_CONNECTION_LIMIT, 1000u, MHD_OPTION_CONNECTION_TIMEOUT, 30u,
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)65536, MHD_OPTION_END);
  if (!http->daemon) {
    snprintf(errstr, errstr_size, "http: cannot listen on %s:%u", address,
             (unsigned)conf->port);
    free(http);
    return NULL;
  }
  const union MHD_DaemonInfo *info =
      MHD_get_daemon_info(http->daemon, MHD_DAEMON_INFO_BIND_PORT);
  http->port = info ? info->port : conf->port;
  return http;
}

uint16_t tly_http_port(const tly_http_t *http) { return http->port; }

void tly_http_stop(tly_http_t *http) {
  if (!http)
    return;
  MHD_stop_daemon(http->daemon);
  free(http);
}
