/*
 * tly_http_queries.c - the HTTP port's answers that write nothing: a
 * subject's usage and quota (the quota pre-check), its history (daily
 * usage, cycles, alerts), and the plans, estimates and prorations computed
 * from the config and a request body. State is read through the read cache
 * (tly_state_cache) from the partitions this instance serves; parsing and
 * JSON are tly_request.c's (pure).
 *
 * The per-subject routes here are owner-only: tly_http.c sends them to the
 * partition's owner before they run. Never produces, never calls Stripe.
 */
#include "tly_http_internal.h"

#include "tly_alert.h"
#include "tly_billing.h"
#include "tly_log.h"
#include "tly_request.h"
#include "tly_request_groups.h"
#include "tly_state.h"
#include "tly_state_cache.h"
#include "tly_store.h"

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- state ----------------------------------------------------------- */

/* Moves after every commit and every rebalance (what is current changes
 * with the assignment), so cached answers never outlive either. Two
 * atomic loads: tly_processor_stats, which reads RocksDB's memory too,
 * cost every pre-check 5 us more CPU than the bare server and a p99 of
 * 4 ms (the block cache's shard locks) against its 0.8 ms. */
static uint64_t commit_count(void *opaque) {
  return tly_processor_epoch(opaque);
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
/* The copy's partition only (a stale read). */
static int stale_partition(void *opaque, int32_t partition) {
  return partition == ((const tly_http_stale_t *)opaque)->partition;
}

int tly_http_find_subject(tly_http_t *http, const request_t *req,
                          const tly_req_subject_t *subject,
                          tly_subject_state_t *state, response_t *out) {
  char errstr[512];
  int32_t partition_count = tly_processor_partition_count(http->conf.processor);
  int32_t home =
      tly_state_home_partition(partition_count, subject->kind, subject->id);
  if (req->stale.active && req->stale.partition == home) {
    /* Around the cache: it holds served partitions' state only. */
    int found = tly_state_find_subject(
        http->conf.store, partition_count, stale_partition, (void *)&req->stale,
        subject->kind, subject->id, state, errstr, sizeof(errstr));
    if (found < 0)
      tly_http_respond_error(out, 500, "store_error", errstr);
    return found;
  }
  if (!partition_served(http->conf.processor, home)) {
    memset(state, 0, sizeof(*state));
    tly_http_respond_moving(
        out, home, NULL,
        "this instance does not serve the subject's partition now");
    return -1;
  }
  int found = tly_state_cache_find(
      http->cache, http->conf.store, partition_count, partition_served,
      http->conf.processor, commit_count, http->conf.processor, subject->kind,
      subject->id, state, errstr, sizeof(errstr));
  if (found < 0)
    tly_http_respond_error(out, 500, "store_error", errstr);
  return found;
}

/* ---- handlers: subjects ---------------------------------------------- */

static void usage_by_group(tly_http_t *http, request_t *req, const char *group,
                           int64_t now_ms, response_t *out);

void tly_http_handle_usage(tly_http_t *http, request_t *req,
                           struct MHD_Connection *connection, response_t *out) {
  tly_req_subject_t subject;
  tly_req_error_t err;
  tly_subject_state_t state = {0};

  int64_t now_ms;
  if (tly_req_parse_subject(req->subject, &subject, &err) ||
      tly_req_parse_at(
          MHD_lookup_connection_value(connection, MHD_GET_ARGUMENT_KIND, "at"),
          tly_wall_ms(), &now_ms, &err)) {
    tly_http_respond_req_error(out, &err);
    return;
  }
  char group[TLY_ANALYTICS_LABEL_MAX];
  if (tly_req_parse_group_by(MHD_lookup_connection_value(
                                 connection, MHD_GET_ARGUMENT_KIND, "group_by"),
                             0, group, &err)) {
    tly_http_respond_req_error(out, &err);
    return;
  }
  if (group[0]) {
    usage_by_group(http, req, group, now_ms, out);
    return;
  }
  int found = tly_http_find_subject(http, req, &subject, &state, out);
  if (found == 0) {
    char message[TLY_REQ_SUBJECT_MAX + 64];
    snprintf(message, sizeof(message), "no usage recorded for subject %s",
             subject.key);
    tly_http_respond_error(out, 404, "not_found", message);
  } else if (found > 0) {
    /* As the quota answer: the text straight into a buffer, the tree only
     * when the text cannot be written (a string that is not UTF-8). */
    if (tly_http_respond_json_text(
            out, 200,
            tly_req_usage_text(http->conf.config, &subject, &state, now_ms)))
      tly_http_respond_json(
          out, 200,
          tly_req_usage_json(http->conf.config, &subject, &state, now_ms));
  }
  tly_state_subject_clear(&state);
}

void tly_http_handle_quota(tly_http_t *http, request_t *req,
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
    tly_http_respond_req_error(out, &err);
    return;
  }
  int found = tly_http_find_subject(http, req, &subject, &state, out);
  tly_req_quota_answer_t answer;
  if (found >= 0 &&
      tly_req_quota_answer(http->conf.config, &subject, found ? &state : NULL,
                           &query, now_ms, &answer, &err)) {
    tly_http_respond_req_error(out, &err);
  } else if (found >= 0) {
    /* The text straight into a buffer: building and dumping a jansson tree
     * cost more than the rest of the request. */
    if (tly_http_respond_json_text(out, 200,
                                   tly_req_quota_answer_text(&answer)))
      tly_http_respond_json(out, 200, tly_req_quota_answer_json(&answer));
  }
  tly_state_subject_clear(&state);
}

/* ---- handlers: plans, estimate, prorate ------------------------------ */

void tly_http_handle_plans(tly_http_t *http, request_t *req,
                           struct MHD_Connection *connection, response_t *out) {
  (void)req, (void)connection;
  tly_http_respond_json(out, 200, tly_req_plans_json(http->conf.config));
}

void tly_http_handle_estimate(tly_http_t *http, request_t *req,
                              struct MHD_Connection *connection,
                              response_t *out) {
  tly_req_error_t err;
  (void)connection;
  json_t *answer =
      tly_req_estimate(http->conf.config, req->body, req->body_len, &err);
  tly_http_respond_answer(out, answer, &err);
}

void tly_http_handle_prorate(tly_http_t *http, request_t *req,
                             struct MHD_Connection *connection,
                             response_t *out) {
  tly_req_error_t err;
  (void)connection;
  json_t *answer =
      tly_req_prorate(http->conf.config, req->body, req->body_len, &err);
  tly_http_respond_answer(out, answer, &err);
}

/* ---- handlers: the usage history ------------------------------------- */

/* The partition's event-time watermark: history that expired before it is
 * left out, whether or not compaction dropped it yet. */
int64_t tly_http_history_horizon(tly_http_t *http, int32_t partition) {
  size_t count = 0;
  int64_t horizon = INT64_MIN;
  tly_partition_status_t *status = tly_http_partition_snapshot(http, &count);
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
    tly_http_respond_req_error(out, &err);
    return 0;
  }
  int found = tly_http_find_subject(http, req, subject, state, out);
  if (found == 0) {
    char message[TLY_REQ_SUBJECT_MAX + 64];
    snprintf(message, sizeof(message), "no usage recorded for subject %s",
             subject->key);
    tly_http_respond_error(out, 404, "not_found", message);
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
  tly_http_respond_error(out, 500, "store_error", *failed ? what : errstr);
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

/* The subject's buckets on days [scan->from_day, scan->to_day] into
 * scan, with its state. The newest hour lives in the subject record, older
 * ones in keys: read both as of one commit (retry when a commit landed in
 * between, since a commit may move the newest hour into its key). 1, or 0
 * when out holds the answer (an error). */
static int collect_buckets(tly_http_t *http, request_t *req,
                           tly_req_subject_t *subject,
                           tly_subject_state_t *state, daily_scan_t *scan,
                           response_t *out) {
  for (int attempt = 0; attempt < 3; attempt++) {
    uint64_t before = commit_count(http->conf.processor);
    tly_state_subject_clear(state);
    scan->count = 0;
    if (!history_subject(http, req, subject, state, out))
      return 0;
    scan->failed = add_buckets(scan, state->buckets, state->bucket_count);
    if (scan_history(http, state, subject, TLY_HISTORY_HOUR,
                     tly_http_history_horizon(http, state->partition),
                     visit_hour, scan, &scan->failed,
                     "out of memory or corrupt usage buckets", out))
      return 0;
    if (commit_count(http->conf.processor) == before)
      break;
  }
  return 1;
}

void tly_http_handle_daily(tly_http_t *http, request_t *req,
                           struct MHD_Connection *connection, response_t *out) {
  tly_req_subject_t subject;
  tly_subject_state_t state = {0};
  tly_req_error_t err;
  daily_scan_t scan = {0};
  char group[TLY_ANALYTICS_LABEL_MAX];
  if (tly_req_parse_daily(
          MHD_lookup_connection_value(connection, MHD_GET_ARGUMENT_KIND,
                                      "from"),
          MHD_lookup_connection_value(connection, MHD_GET_ARGUMENT_KIND, "to"),
          &scan.from_day, &scan.to_day, &err) ||
      tly_req_parse_group_by(MHD_lookup_connection_value(
                                 connection, MHD_GET_ARGUMENT_KIND, "group_by"),
                             0, group, &err)) {
    tly_http_respond_req_error(out, &err);
    return;
  }
  if (!collect_buckets(http, req, &subject, &state, &scan, out))
    goto done;
  json_t *answer = tly_req_daily_json(http->conf.config, &subject, scan.buckets,
                                      scan.count, scan.from_day, scan.to_day);
  if (answer && group[0] &&
      tly_req_daily_add_groups(answer, group, scan.buckets, scan.count)) {
    json_decref(answer);
    answer = NULL;
  }
  tly_http_respond_table(out, connection, answer,
                         group[0] ? tly_req_daily_groups_csv
                                  : tly_req_daily_csv);
done:
  free(scan.buckets);
  tly_state_subject_clear(&state);
}

/* /usage?group_by: the answer's features broken down over the hours of
 * its cycle. */
static void usage_by_group(tly_http_t *http, request_t *req, const char *group,
                           int64_t now_ms, response_t *out) {
  tly_req_subject_t subject;
  tly_subject_state_t state = {0};
  daily_scan_t scan = {.from_day = INT32_MIN, .to_day = INT32_MAX};
  if (!collect_buckets(http, req, &subject, &state, &scan, out))
    goto done;
  json_t *answer =
      tly_req_usage_json(http->conf.config, &subject, &state, now_ms);
  json_t *cycle = json_object_get(answer, "cycle");
  if (answer &&
      tly_req_usage_add_groups(
          answer, group, scan.buckets, scan.count,
          (int64_t)json_integer_value(json_object_get(cycle, "start_ms")),
          (int64_t)json_integer_value(json_object_get(cycle, "end_ms")))) {
    json_decref(answer);
    answer = NULL;
  }
  if (answer)
    tly_http_respond_json(out, 200, answer);
  else
    tly_http_respond_error(out, 500, "internal", "out of memory");
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

void tly_http_handle_cycles(tly_http_t *http, request_t *req,
                            struct MHD_Connection *connection,
                            response_t *out) {
  tly_req_subject_t subject;
  tly_subject_state_t state = {0};
  cycles_scan_t scan = {0};
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
    tly_http_respond_error(out, 500, "internal", "out of memory");
    goto done;
  }
  if (scan_history(http, &state, &subject, TLY_HISTORY_CYCLE, INT64_MIN,
                   visit_cycle, &scan, &scan.failed,
                   "out of memory or a corrupt archived cycle", out))
    goto done;
  tly_http_respond_table(
      out, connection,
      tly_req_cycles_json(http->conf.config, &subject, scan.cycles, scan.count),
      tly_req_cycles_csv);
done:
  for (size_t i = 0; i < scan.owned_count; i++)
    free(scan.owned[i]);
  free(scan.owned);
  free(scan.cycles);
  tly_state_subject_clear(&state);
}

int tly_http_visit_alert(void *opaque, const unsigned char *suffix,
                         size_t suffix_len, const char *value,
                         size_t value_len) {
  tly_http_alert_scan_t *scan = opaque;
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
  if (alert.occurred_at_ms >= scan->from_ms) {
    json_t *json = tly_req_alert_json(&alert);
    if (!json || json_array_append_new(scan->list, json))
      scan->failed = 1;
  }
  tly_alert_clear(&alert);
  return scan->failed;
}

void tly_http_handle_alerts(tly_http_t *http, request_t *req,
                            struct MHD_Connection *connection,
                            response_t *out) {
  tly_req_subject_t subject;
  tly_subject_state_t state = {0};
  tly_req_error_t err;
  int64_t limit;
  tly_http_alert_scan_t scan = {http, INT64_MIN, json_array(), 0};
  if (tly_req_parse_limit(MHD_lookup_connection_value(
                              connection, MHD_GET_ARGUMENT_KIND, "limit"),
                          &limit, &err)) {
    tly_http_respond_req_error(out, &err);
    goto done;
  }
  if (!scan.list || !history_subject(http, req, &subject, &state, out))
    goto done;
  if (scan_history(http, &state, &subject, TLY_HISTORY_ALERT,
                   tly_http_history_horizon(http, state.partition),
                   tly_http_visit_alert, &scan, &scan.failed,
                   "out of memory or a corrupt stored alert", out))
    goto done;
  /* Keys run oldest first: answer newest first, up to limit. */
  json_t *alerts = json_array();
  size_t total = json_array_size(scan.list);
  for (size_t i = total; i > 0 && json_array_size(alerts) < (size_t)limit; i--)
    json_array_append(alerts, json_array_get(scan.list, i - 1));
  tly_http_respond_json(
      out, 200,
      json_pack("{s:s,s:I,s:I,s:o}", "subject", subject.key, "retention_days",
                (json_int_t)http->conf.config->retention.alerts_days, "total",
                (json_int_t)total, "alerts", alerts));
done:
  json_decref(scan.list);
  tly_state_subject_clear(&state);
}
