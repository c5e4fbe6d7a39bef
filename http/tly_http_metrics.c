/*
 * tly_http_metrics.c - what an operator polls: GET /healthz (the process
 * answers), GET /readyz (every assigned partition caught up with its
 * replay) and GET /metrics (Prometheus text: the processor's counters and
 * histograms, partitions, Stripe reporting, this port's requests,
 * connections and forwards, membership records).
 *
 * Reads counters and snapshots only; never reads a subject's state, never
 * produces.
 */
#include "tly_http_internal.h"

#include "tly_build.h"
#include "tly_http_conn.h"
#include "tly_http_latency.h"
#include "tly_http_process.h"
#include "tly_malloc.h"
#include "tly_members.h"
#include "tly_processor.h"
#include "tly_state_cache.h"
#include "tly_stripe_emitter.h"

#include <jansson.h>
#include <microhttpd.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- handlers: health, readiness, metrics ----------------------------- */

void tly_http_handle_healthz(tly_http_t *http, request_t *req,
                             struct MHD_Connection *connection,
                             response_t *out) {
  (void)http, (void)req, (void)connection;
  /* Polled often: the answer is a constant, not a jansson tree. */
  out->status = 200;
  out->body = strdup("{\"status\":\"ok\"}");
  out->content_type = "application/json";
}

/* A malloc'd snapshot of the processor's partitions; *count entries. */
tly_partition_status_t *tly_http_partition_snapshot(tly_http_t *http,
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
  tly_partition_status_t *status = tly_http_partition_snapshot(http, &count);
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

void tly_http_handle_readyz(tly_http_t *http, request_t *req,
                            struct MHD_Connection *connection,
                            response_t *out) {
  json_t *detail = NULL;
  (void)req, (void)connection;
  int ready = readiness(http, &detail);
  if (ready < 0) {
    tly_http_respond_error(out, 500, "internal", "out of memory");
    return;
  }
  tly_http_respond_json(out, ready ? 200 : 503, detail);
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

/* tally_http_request_duration_seconds: one histogram per route template
 * (and "unmatched"), every route always (its cardinality is the route
 * table's). */
static void metrics_latency(tly_http_t *http, text_t *text) {
  static const int64_t bounds_us[TLY_HTTP_LATENCY_BUCKETS] =
      TLY_HTTP_LATENCY_BOUNDS_US;
  text_append(text,
              "# HELP tally_http_request_duration_seconds HTTP request "
              "latency by route, from the request line read to the answer "
              "queued (waits for Kafka, an owner instance or Stripe "
              "included).\n# TYPE tally_http_request_duration_seconds "
              "histogram\n");
  for (size_t r = 0; r <= tly_http_route_count; r++) {
    char labels[160];
    snprintf(labels, sizeof(labels), "method=\"%s\",route=\"%s\"",
             r < tly_http_route_count ? tly_http_route_table[r].method : "",
             r < tly_http_route_count ? tly_http_route_table[r].path
                                      : "unmatched");
    tly_http_latency_snapshot_t snap;
    tly_http_latency_read(http->latency, r, &snap);
    for (int b = 0; b < TLY_HTTP_LATENCY_BUCKETS; b++)
      text_append(text,
                  "tally_http_request_duration_seconds_bucket{%s,le=\"%g\"} "
                  "%llu\n",
                  labels, (double)bounds_us[b] / 1e6,
                  (unsigned long long)snap.buckets[b]);
    text_append(text,
                "tally_http_request_duration_seconds_bucket{%s,le=\"+Inf\"} "
                "%llu\ntally_http_request_duration_seconds_sum{%s} %.6f\n"
                "tally_http_request_duration_seconds_count{%s} %llu\n",
                labels, (unsigned long long)snap.count, labels,
                (double)snap.sum_us / 1e6, labels,
                (unsigned long long)snap.count);
  }
}

/* The standard process collector's names (as Prometheus client libraries
 * export them), and what this binary was built from. */
static void metrics_process(text_t *text, const tly_process_stats_t *process) {
  text_append(text,
              "# HELP process_cpu_seconds_total Total user and system CPU "
              "time spent in seconds.\n# TYPE process_cpu_seconds_total "
              "counter\nprocess_cpu_seconds_total %.2f\n"
              "# HELP process_resident_memory_bytes Resident memory size in "
              "bytes.\n# TYPE process_resident_memory_bytes gauge\n"
              "process_resident_memory_bytes %llu\n"
              "# HELP process_virtual_memory_bytes Virtual memory size in "
              "bytes.\n# TYPE process_virtual_memory_bytes gauge\n"
              "process_virtual_memory_bytes %llu\n"
              "# HELP process_open_fds Number of open file descriptors.\n"
              "# TYPE process_open_fds gauge\nprocess_open_fds %llu\n"
              "# HELP process_max_fds Maximum number of open file "
              "descriptors.\n# TYPE process_max_fds gauge\n"
              "process_max_fds %llu\n"
              "# HELP process_start_time_seconds Start time of the process "
              "since unix epoch in seconds.\n# TYPE "
              "process_start_time_seconds gauge\n"
              "process_start_time_seconds %.2f\n",
              process->cpu_seconds, (unsigned long long)process->resident_bytes,
              (unsigned long long)process->virtual_bytes,
              (unsigned long long)process->open_fds,
              (unsigned long long)process->max_fds,
              process->start_time_seconds);
  text_append(text,
              "# HELP tally_build_info The version of tally and the git "
              "commit it was built from (\"unknown\" without git); always "
              "1.\n# TYPE tally_build_info gauge\n"
              "tally_build_info{version=\"%s\",commit=\"%s\"} 1\n",
              tly_build_version, tly_build_commit);
  text_append(text,
              "# HELP tally_malloc_hugepages 1 when malloc's large blocks may "
              "be transparent huge pages (glibc.malloc.hugetlb).\n"
              "# TYPE tally_malloc_hugepages gauge\n"
              "tally_malloc_hugepages %d\n"
              "# HELP tally_malloc_arena_max The cap tally set on glibc's "
              "malloc arenas (M_ARENA_MAX; 0: none set, glibc's own or the "
              "operator's).\n# TYPE tally_malloc_arena_max gauge\n"
              "tally_malloc_arena_max %d\n",
              tly_malloc_hugepages_on(), tly_malloc_arena_cap());
}

/* Standby copies held here (tly_standby.c) and how far behind each is:
 * records of the input past its offset, and the age of the first of them
 * (tly_processor_copy_staleness: the true staleness; it asks the broker). */
static void standby_metrics(tly_http_t *http, text_t *text) {
  tly_standby_status_t status[256];
  tly_standby_totals_t totals;
  size_t count =
      tly_processor_standbys(http->conf.processor, status, 256, &totals);
  if (count > 256)
    count = 256; /* (the first 256 partitions' lag is shown) */
  text_append(text,
              "# HELP tally_standby_partitions Standby copies held here.\n"
              "# TYPE tally_standby_partitions gauge\n"
              "tally_standby_partitions %zu\n"
              "# HELP tally_standby_commits_applied_total Owner commits "
              "(changelog markers) applied to standby copies.\n"
              "# TYPE tally_standby_commits_applied_total counter\n"
              "tally_standby_commits_applied_total %llu\n"
              "# HELP tally_standby_catchups_total Standby copies set up "
              "(caught up with the changelog).\n"
              "# TYPE tally_standby_catchups_total counter\n"
              "tally_standby_catchups_total %llu\n"
              "# HELP tally_standby_records_read_total Changelog records "
              "read for standby copies.\n"
              "# TYPE tally_standby_records_read_total counter\n"
              "tally_standby_records_read_total %llu\n",
              count, (unsigned long long)totals.markers,
              (unsigned long long)totals.catchups,
              (unsigned long long)totals.records);
  text_append(text, "# HELP tally_standby_lag_records Input records past a "
                    "standby copy's offset.\n"
                    "# TYPE tally_standby_lag_records gauge\n");
  int64_t lag[256], age[256];
  for (size_t i = 0; i < count; i++) {
    lag[i] = age[i] = -1;
    if (status[i].offset >= 0 &&
        tly_processor_copy_staleness(http->conf.processor, status[i].partition,
                                     status[i].offset, &lag[i], &age[i]))
      lag[i] = age[i] = -1;
    if (lag[i] >= 0)
      text_append(text, "tally_standby_lag_records{partition=\"%d\"} %lld\n",
                  (int)status[i].partition, (long long)lag[i]);
  }
  text_append(text, "# HELP tally_standby_lag_seconds Age of the first input "
                    "record a standby copy misses (0: at the log end).\n"
                    "# TYPE tally_standby_lag_seconds gauge\n");
  for (size_t i = 0; i < count; i++)
    if (age[i] >= 0)
      text_append(text, "tally_standby_lag_seconds{partition=\"%d\"} %.3f\n",
                  (int)status[i].partition, (double)age[i] / 1e3);
}

static void metrics_http(tly_http_t *http, text_t *text) {
  text_append(text, "# HELP tally_http_requests_total HTTP requests answered, "
                    "by route and status.\n# TYPE tally_http_requests_total "
                    "counter\n");
  for (size_t r = 0; r <= tly_http_route_count; r++) {
    for (int s = STATUS_MIN; s <= STATUS_MAX; s++) {
      uint64_t n = atomic_load(&http->requests[r][s - STATUS_MIN]);
      if (n)
        text_append(text,
                    "tally_http_requests_total{method=\"%s\",route=\"%s\","
                    "status=\"%d\"} %llu\n",
                    r < tly_http_route_count ? tly_http_route_table[r].method
                                             : "",
                    r < tly_http_route_count ? tly_http_route_table[r].path
                                             : "unmatched",
                    s, (unsigned long long)n);
    }
  }
  metrics_latency(http, text);
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
              "# HELP tally_http_threads The HTTP port's threads "
              "(http.threads).\n# TYPE tally_http_threads gauge\n"
              "tally_http_threads %u\n"
              "# HELP tally_http_analytics_scans_running Analytics scans of "
              "this instance's partitions running now, each on a thread of "
              "its own (at most %d).\n# TYPE "
              "tally_http_analytics_scans_running gauge\n"
              "tally_http_analytics_scans_running %zu\n",
              http->threads, TLY_ANALYTICS_SCANS_MAX,
              tly_http_tasks_in_flight(http->scans));
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

void tly_http_handle_metrics(tly_http_t *http, request_t *req,
                             struct MHD_Connection *connection,
                             response_t *out) {
  tly_processor_stats_t stats;
  text_t text = {0};
  size_t count = 0;
  (void)req, (void)connection;

  tly_processor_stats(http->conf.processor, &stats);
  /* Read once: the headroom's bytes and the process_* metrics. */
  tly_process_stats_t process;
  tly_process_stats(&process);
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
  stats.memory_bytes[TLY_MEMORY_SUBJECT_CACHE] =
      tly_state_cache_bytes(http->cache);
  stats.memory_bytes[TLY_MEMORY_HEADROOM] =
      tly_memory_headroom_bytes(process.resident_bytes, stats.memory_bytes);
  text_append(&text, "# HELP tally_memory_bytes Bytes each part of the "
                     "memory budget holds (--memory-budget); headroom: the "
                     "resident set less the other parts shown.\n"
                     "# TYPE tally_memory_bytes gauge\n");
  /* librdkafka's queues report no bytes: their parts show only their
   * bound (tly_memory_part_measured). */
  for (int i = 0; i < TLY_MEMORY_PARTS; i++)
    if (tly_memory_part_measured((tly_memory_part_t)i))
      text_append(&text, "tally_memory_bytes{part=\"%s\"} %llu\n",
                  tly_memory_part_name((tly_memory_part_t)i),
                  (unsigned long long)stats.memory_bytes[i]);
  text_append(&text, "# HELP tally_memory_budget_bytes What each part is held "
                     "to: its share of the memory budget (--memory-budget), "
                     "or its floor.\n"
                     "# TYPE tally_memory_budget_bytes gauge\n");
  for (int i = 0; i < TLY_MEMORY_PARTS; i++)
    text_append(&text, "tally_memory_budget_bytes{part=\"%s\"} %llu\n",
                tly_memory_part_name((tly_memory_part_t)i),
                (unsigned long long)stats.memory_budget[i]);
  text_append(&text,
              "# HELP tally_memory_lent_bytes What one part of the memory "
              "budget lends another: the dedupe share's bytes its indexes do "
              "not hold, which the overlay may use beyond its own share (as "
              "of the last commit).\n# TYPE tally_memory_lent_bytes gauge\n"
              "tally_memory_lent_bytes{from=\"dedupe\",to=\"overlay\"} "
              "%llu\n",
              (unsigned long long)stats.memory_lent);
  text_append(&text,
              "# HELP tally_dedupe_spilled_ids_total Event ids moved from "
              "memory to RocksDB (the dedupe share was full).\n"
              "# TYPE tally_dedupe_spilled_ids_total counter\n"
              "tally_dedupe_spilled_ids_total %llu\n",
              (unsigned long long)stats.dedupe_ids_spilled);
  text_append(&text,
              "# HELP tally_dedupe_store_reads_total Event id lookups not "
              "answered from memory, asked of RocksDB.\n"
              "# TYPE tally_dedupe_store_reads_total counter\n"
              "tally_dedupe_store_reads_total %llu\n",
              (unsigned long long)stats.dedupe_store_reads);
  text_append(&text,
              "# HELP tally_dedupe_filter_skips_total Event id lookups of a "
              "partition that spilled, answered \"surely new\" by the "
              "in-memory filter of spilled ids (no RocksDB read).\n"
              "# TYPE tally_dedupe_filter_skips_total counter\n"
              "tally_dedupe_filter_skips_total %llu\n",
              (unsigned long long)stats.dedupe_filter_skips);
  text_append(&text,
              "# HELP tally_dedupe_filters_building Partitions whose filter "
              "of spilled ids is being built after an assignment (their "
              "misses read RocksDB meanwhile).\n"
              "# TYPE tally_dedupe_filters_building gauge\n"
              "tally_dedupe_filters_building %llu\n",
              (unsigned long long)stats.dedupe_filters_building);
  text_append(&text,
              "# HELP tally_dedupe_filters_loaded_total Partitions assigned "
              "with the filter of spilled ids saved at their last revoke "
              "here (no build, no RocksDB reads while one runs).\n"
              "# TYPE tally_dedupe_filters_loaded_total counter\n"
              "tally_dedupe_filters_loaded_total %llu\n",
              (unsigned long long)stats.dedupe_filters_loaded);
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
  {
    char reservations[2048];
    if (tly_http_reserve_metrics(http, reservations, sizeof(reservations)) <
        sizeof(reservations))
      text_append(&text, "%s", reservations);
    if (tly_http_streams_metrics(http->streams, reservations,
                                 sizeof(reservations)) < sizeof(reservations))
      text_append(&text, "%s", reservations);
    if (http->webhooks &&
        tly_webhooks_metrics(http->webhooks, reservations,
                             sizeof(reservations)) < sizeof(reservations))
      text_append(&text, "%s", reservations);
  }
  text_append(&text,
              "# HELP tally_outbox_entries Outputs committed but not yet "
              "acknowledged by Kafka.\n# TYPE tally_outbox_entries gauge\n"
              "tally_outbox_entries %llu\n",
              (unsigned long long)stats.outbox_pending);
  text_append(&text,
              "# HELP tally_rebalances_total Rebalance callbacks handled (an "
              "assignment or a revocation each; under the cooperative "
              "protocol only the partitions that move).\n"
              "# TYPE tally_rebalances_total counter\n"
              "tally_rebalances_total %llu\n"
              "# HELP tally_rebalance_seconds_total Time spent in those "
              "callbacks (commit, outbox drain, restore).\n"
              "# TYPE tally_rebalance_seconds_total counter\n"
              "tally_rebalance_seconds_total %.3f\n"
              "# HELP tally_partitions_assigned_total Partitions assigned "
              "to this instance by rebalances.\n"
              "# TYPE tally_partitions_assigned_total counter\n"
              "tally_partitions_assigned_total %llu\n"
              "# HELP tally_partitions_revoked_total Partitions revoked "
              "from this instance by rebalances.\n"
              "# TYPE tally_partitions_revoked_total counter\n"
              "tally_partitions_revoked_total %llu\n"
              "# HELP tally_fetch_gaps_total Times records were skipped "
              "by the consumer's fetch (librdkafka 2.0.2 after an "
              "incremental rebalance) and fetched again by seeking back.\n"
              "# TYPE tally_fetch_gaps_total counter\n"
              "tally_fetch_gaps_total %llu\n",
              (unsigned long long)stats.rebalance_callbacks,
              (double)stats.rebalance_ms / 1e3,
              (unsigned long long)stats.partitions_assigned,
              (unsigned long long)stats.partitions_revoked,
              (unsigned long long)stats.fetch_gaps);
  text_append(&text,
              "# HELP tally_http_moving_reads_total Reads of a partition "
              "not served here (moving or replaying) answered from a copy "
              "(stale, with as_of) or refused (503 partition_moving).\n"
              "# TYPE tally_http_moving_reads_total counter\n"
              "tally_http_moving_reads_total{result=\"stale\"} %llu\n"
              "tally_http_moving_reads_total{result=\"refused\"} %llu\n"
              "# HELP tally_http_standby_forwards_total Reads forwarded to "
              "an instance announcing a standby copy of the partition.\n"
              "# TYPE tally_http_standby_forwards_total counter\n"
              "tally_http_standby_forwards_total %llu\n",
              (unsigned long long)atomic_load(&http->moving_reads_stale),
              (unsigned long long)atomic_load(&http->moving_reads_refused),
              (unsigned long long)atomic_load(&http->standby_forwards));
  standby_metrics(http, &text);
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
              "tally_outputs_abandoned_total %llu\n"
              "# HELP tally_outputs_at_risk_total Outputs handed to the "
              "Kafka client and not yet acknowledged when their partitions "
              "were revoked as lost or after the drain's deadline: each may "
              "reach Kafka after the next owner looked for it, and appear "
              "twice.\n"
              "# TYPE tally_outputs_at_risk_total counter\n"
              "tally_outputs_at_risk_total %llu\n",
              (unsigned long long)stats.stalls,
              (unsigned long long)stats.abandoned,
              (unsigned long long)stats.at_risk);
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
  text_append(&text,
              "# HELP tally_schema_registry_lookups_total Schema ids looked "
              "up in the schema registry and answered (found or not).\n"
              "# TYPE tally_schema_registry_lookups_total counter\n"
              "tally_schema_registry_lookups_total %llu\n"
              "# HELP tally_schema_registry_lookup_failures_total Lookups "
              "the registry did not answer (tried again; the partition "
              "waits).\n# TYPE tally_schema_registry_lookup_failures_total "
              "counter\ntally_schema_registry_lookup_failures_total %llu\n"
              "# HELP tally_schema_registry_waiting_partitions Partitions "
              "paused until the registry answers.\n# TYPE "
              "tally_schema_registry_waiting_partitions gauge\n"
              "tally_schema_registry_waiting_partitions %d\n",
              (unsigned long long)stats.schema_lookups,
              (unsigned long long)stats.schema_lookup_failures,
              (int)stats.schema_waiting);
  text_append(&text,
              "# HELP tally_outbox_waiting_partitions Partitions whose next "
              "record waits (paused) until the outbox is down to half its "
              "memory bound.\n# TYPE tally_outbox_waiting_partitions "
              "gauge\ntally_outbox_waiting_partitions %d\n"
              "# HELP tally_outbox_holds_total Times the outbox reached its "
              "memory bound and records began to wait.\n# TYPE "
              "tally_outbox_holds_total counter\ntally_outbox_holds_total "
              "%llu\n",
              (int)stats.outbox_waiting,
              (unsigned long long)stats.outbox_holds);
  tly_partition_status_t *status = tly_http_partition_snapshot(http, &count);
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
  metrics_process(&text, &process);
  out->status = text.data ? 200 : 500;
  out->body = text.data ? text.data : strdup("out of memory\n");
  out->content_type = "text/plain; version=0.0.4";
}
