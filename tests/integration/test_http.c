/*
 * test_http.c - the HTTP port over a real socket, against a real `tally
 * run` on the embedded broker: every route, happy and unhappy paths, auth
 * failures, bounds, ingest followed by the folded result, and /readyz
 * false while a restarted processor replays and true once it caught up.
 *
 * One broker and one processor serve the whole file (a group setup), so
 * the tests are seconds, not minutes; each test uses its own subjects.
 */
#include "harness.h"

#include "tally_producer.h"
#include "tly_config.h"
#include "tly_http.h"

#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define PARTITIONS 4
#define DAY 86400000LL

static th_broker_t broker;
static th_run_t run;
static char *dir;
static char state_dir[600];

/* The answer of one request as JSON (NULL when not JSON); status out. */
static json_t *request(const char *method, const char *path,
                       const char *authorization, const char *body,
                       long *status) {
  char *text = NULL;
  if (th_http_request(run.port, method, path, authorization, body,
                      body ? strlen(body) : 0, NULL, status, &text))
    fail_msg("%s %s: no answer", method, path);
  json_t *json = json_loads(text, 0, NULL);
  free(text);
  return json;
}

static json_t *get(const char *path, long *status) {
  return request("GET", path, TH_AUTH_DEFAULT, NULL, status);
}

static json_t *post(const char *path, const char *body, long *status) {
  return request("POST", path, TH_AUTH_DEFAULT, body, status);
}

static const char *error_code(const json_t *json) {
  return json_string_value(
      json_object_get(json_object_get(json, "error"), "code"));
}

static const char *error_field(const json_t *json) {
  return json_string_value(
      json_object_get(json_object_get(json, "error"), "field"));
}

static long long integer_at(const json_t *json, const char *a, const char *b,
                            const char *c) {
  const json_t *value = json_object_get(json, a);
  if (b)
    value = json_object_get(value, b);
  if (c)
    value = json_object_get(value, c);
  if (!json_is_integer(value))
    fail_msg("%s.%s.%s: not an integer", a, b ? b : "", c ? c : "");
  return json_integer_value(value);
}

/* Polls the usage of subject until feature reaches quantity (10 s). */
static json_t *wait_usage(const char *subject, const char *feature,
                          long long quantity) {
  char path[256];
  snprintf(path, sizeof(path), "/v1/subjects/%s/usage", subject);
  int64_t deadline = th_now_ms() + 15000;
  while (th_now_ms() < deadline) {
    long status;
    json_t *json = get(path, &status);
    if (status == 200 &&
        json_integer_value(json_object_get(
            json_object_get(json_object_get(json, "features"), feature),
            "quantity")) == quantity)
      return json;
    json_decref(json);
    th_sleep_ms(50);
  }
  fail_msg("%s: %s never reached %lld", subject, feature, quantity);
  return NULL;
}

/* Polls /readyz (no token: it is public) until 200; 1, or 0 on timeout.
 * Readiness may drop while a rebalance moves partitions (a slow member,
 * under sanitizers, can miss its session timeout), so tests wait for it
 * rather than assume it stays. */
static int wait_ready(int timeout_ms) {
  int64_t deadline = th_now_ms() + timeout_ms;
  char *last = NULL;
  while (th_now_ms() < deadline) {
    long status;
    char *body = NULL;
    if (th_http_request(run.port, "GET", "/readyz", NULL, NULL, 0, NULL,
                        &status, &body) == 0 &&
        status == 200) {
      free(body);
      free(last);
      return 1;
    }
    free(last);
    last = body;
    th_sleep_ms(50);
  }
  printf("# not ready after %d ms: %s\n", timeout_ms, last ? last : "");
  free(last);
  return 0;
}

static int setup(void **state) {
  (void)state;
  dir = th_mkdtemp("http");
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  if (th_broker_start(&broker, PARTITIONS))
    return -1;
  /* Before anything else reaches its partition: one event two months ago,
   * so its cycle has ended by the wall clock (a later event in the same
   * partition would make it too old for the dedupe window). */
  char errstr[512];
  tally_producer_conf_t conf = {.brokers = broker.bootstrap};
  tally_producer_t *producer =
      tally_producer_new(&conf, errstr, sizeof(errstr));
  if (!producer)
    return -1;
  tly_event_t event = {.event_id = "old-1",
                       .occurred_at_ms = 1788000000000LL, /* 2026-08-29 */
                       .subject_kind = TLY_SUBJECT_USER,
                       .subject_id = "ended",
                       .body_kind = TLY_BODY_USAGE_RECORDED,
                       .body.usage = {.feature = "api_calls", .quantity = 9}};
  if (tally_producer_send(producer, &event, NULL, errstr, sizeof(errstr)) ||
      tally_producer_flush(producer, 10000))
    return -1;
  tally_producer_destroy(producer);
  if (th_run_start(&run, broker.bootstrap, state_dir, NULL))
    return -1;
  return wait_ready(30000) ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  th_stop(run.pid);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
  return 0;
}

/* ---- health, metrics, routing ------------------------------------------ */

static void test_health_and_metrics_are_open(void **state) {
  (void)state;
  long status;
  json_t *json = request("GET", "/healthz", NULL, NULL, &status);
  assert_int_equal(status, 200);
  assert_string_equal(json_string_value(json_object_get(json, "status")), "ok");
  json_decref(json);
  assert_true(wait_ready(30000));
  json = request("GET", "/readyz", NULL, NULL, &status);
  assert_int_equal(status, 200);
  assert_string_equal(json_string_value(json_object_get(json, "status")),
                      "ready");
  json_decref(json);

  char *text = NULL;
  assert_int_equal(th_http_request(run.port, "GET", "/metrics", NULL, NULL, 0,
                                   NULL, &status, &text),
                   0);
  assert_int_equal(status, 200);
  /* Lag needs the partition's log end, which the consumer learns with its
   * first fetch; the family and the committed offsets are there at once. */
  assert_non_null(strstr(text, "# TYPE tally_consumer_lag gauge"));
  assert_non_null(
      strstr(text, "tally_partition_committed_offset{partition=\"0\"}"));
  assert_non_null(
      strstr(text, "tally_partition_replay_target{partition=\"0\"}"));
  assert_non_null(strstr(text, "tally_ready 1"));
  assert_non_null(strstr(text, "tally_http_requests_total{method=\"GET\","
                               "route=\"/readyz\",status=\"200\"}"));
  /* The commit latency histogram: cumulative buckets, +Inf equals count. */
  assert_non_null(strstr(text, "# TYPE tally_commit_seconds histogram"));
  const char *inf = strstr(text, "tally_commit_seconds_bucket{le=\"+Inf\"} ");
  const char *count = strstr(text, "tally_commit_seconds_count ");
  assert_non_null(inf);
  assert_non_null(count);
  assert_int_equal(
      atoll(inf + strlen("tally_commit_seconds_bucket{le=\"+Inf\"} ")),
      atoll(count + strlen("tally_commit_seconds_count ")));
  /* Event to visible: the setup's event was folded and committed. */
  assert_non_null(strstr(text, "# TYPE tally_event_visible_seconds histogram"));
  inf = strstr(text, "tally_event_visible_seconds_bucket{le=\"+Inf\"} ");
  count = strstr(text, "tally_event_visible_seconds_count ");
  assert_non_null(inf);
  assert_non_null(count);
  long long visible =
      atoll(count + strlen("tally_event_visible_seconds_count "));
  assert_true(visible >= 1);
  assert_int_equal(
      atoll(inf + strlen("tally_event_visible_seconds_bucket{le=\"+Inf\"} ")),
      visible);
  free(text);
}

/* The count of every tally_http_request_duration_seconds series in a
 * /metrics text: labels[i] ("method=\"GET\",route=\"/healthz\"") and
 * counts[i]; how many (at most max). */
static size_t latency_counts(const char *text, char labels[][160],
                             long long *counts, size_t max) {
  static const char prefix[] = "tally_http_request_duration_seconds_count{";
  size_t n = 0;
  for (const char *at = strstr(text, prefix); at && n < max;
       at = strstr(at + 1, prefix)) {
    const char *open = at + strlen(prefix), *close = strchr(open, '}');
    assert_non_null(close);
    assert_true((size_t)(close - open) < 160);
    memcpy(labels[n], open, (size_t)(close - open));
    labels[n][close - open] = '\0';
    counts[n++] = atoll(close + 2);
  }
  return n;
}

/* The value of the series named exactly series ("name" or
 * "name{labels}"), or fails. */
static double metric_value(const char *text, const char *series) {
  size_t len = strlen(series);
  for (const char *at = strstr(text, series); at; at = strstr(at + 1, series))
    if ((at == text || at[-1] == '\n') && at[len] == ' ')
      return atof(at + len + 1);
  fail_msg("no series %s in /metrics", series);
  return 0;
}

static char *metrics_text(void) {
  long status;
  char *text = NULL;
  assert_int_equal(th_http_request(run.port, "GET", "/metrics", NULL, NULL, 0,
                                   NULL, &status, &text),
                   0);
  assert_int_equal(status, 200);
  return text;
}

/* /metrics: the per-route latency histograms move for exactly the routes
 * called (by route template, however many subjects), the process
 * collector's figures are the process's, the build is named and the
 * port's thread count is http.threads' default. */
static void test_metrics_latency_process_and_build_info(void **state) {
  (void)state;
  enum { MAX = 64 };
  char before_labels[MAX][160], after_labels[MAX][160];
  long long before[MAX], after[MAX];
  char *text = metrics_text();
  size_t n_before = latency_counts(text, before_labels, before, MAX);
  free(text);
  /* One series per route and one for requests no route matched. */
  tly_http_route_info_t routes[MAX];
  size_t route_count = tly_http_routes(routes, MAX);
  assert_int_equal(n_before, route_count + 1);

  long status;
  json_t *json;
  const char *const quota[] = {
      "/v1/subjects/user:lat-a/quota?feature=api_calls",
      "/v1/subjects/user:lat-b/quota?feature=api_calls&quantity=2",
      "/v1/subjects/anonymous:lat-c/quota?feature=api_calls"};
  for (int i = 0; i < 3; i++) {
    json = get(quota[i], &status);
    assert_int_equal(status, 200);
    json_decref(json);
  }
  for (int i = 0; i < 2; i++) {
    json = request("GET", "/healthz", NULL, NULL, &status);
    assert_int_equal(status, 200);
    json_decref(json);
  }
  json = get("/v1/subjects/user:lat-none/usage", &status);
  assert_int_equal(status, 404);
  json_decref(json);
  json = get("/no/such/route", &status);
  assert_int_equal(status, 404);
  json_decref(json);

  text = metrics_text();
  size_t n_after = latency_counts(text, after_labels, after, MAX);
  assert_int_equal(n_after, n_before);
  for (size_t i = 0; i < n_after; i++) {
    assert_string_equal(after_labels[i], before_labels[i]);
    const char *label = after_labels[i];
    long long expected =
        strcmp(label,
               "method=\"GET\",route=\"/v1/subjects/{subject}/quota\"") == 0
            ? 3
        : strcmp(label, "method=\"GET\",route=\"/healthz\"") == 0 ? 2
        : strcmp(label,
                 "method=\"GET\",route=\"/v1/subjects/{subject}/usage\"") == 0
            ? 1
        : strcmp(label, "method=\"\",route=\"unmatched\"") == 0 ? 1
        /* the first /metrics, counted once answered */
        : strcmp(label, "method=\"GET\",route=\"/metrics\"") == 0 ? 1
                                                                  : 0;
    if (after[i] - before[i] != expected)
      fail_msg("%s: %lld requests counted, expected %lld", label,
               after[i] - before[i], expected);
  }
  /* The quota histogram is cumulative, +Inf is its count, time was spent. */
  char series[256];
  const char *labels = "method=\"GET\",route=\"/v1/subjects/{subject}/quota\"";
  static const char *const bounds[] = {"0.0001", "0.001", "0.01", "0.1",
                                       "1",      "10",    "+Inf"};
  double previous = 0;
  for (size_t b = 0; b < sizeof(bounds) / sizeof(bounds[0]); b++) {
    snprintf(series, sizeof(series),
             "tally_http_request_duration_seconds_bucket{%s,le=\"%s\"}", labels,
             bounds[b]);
    double value = metric_value(text, series);
    assert_true(value >= previous);
    previous = value;
  }
  snprintf(series, sizeof(series),
           "tally_http_request_duration_seconds_count{%s}", labels);
  assert_true(previous == metric_value(text, series));
  snprintf(series, sizeof(series),
           "tally_http_request_duration_seconds_sum{%s}", labels);
  assert_true(metric_value(text, series) > 0);

  /* The process collector: this tally run's own figures. */
  double rss = metric_value(text, "process_resident_memory_bytes");
  double vsize = metric_value(text, "process_virtual_memory_bytes");
  double fds = metric_value(text, "process_open_fds");
  double max_fds = metric_value(text, "process_max_fds");
  double started = metric_value(text, "process_start_time_seconds");
  double now = (double)time(NULL);
  assert_true(rss > 1024 * 1024 && vsize >= rss);
  assert_true(fds > 3 && fds <= max_fds); /* stdio, sockets, RocksDB */
  /* Started by this file's setup: before now, within its run. */
  if (!(started <= now + 2 && started > now - 600))
    fail_msg("process_start_time_seconds %.2f, now %.0f", started, now);
  assert_true(metric_value(text, "process_cpu_seconds_total") > 0);
  assert_non_null(strstr(text, "# TYPE process_cpu_seconds_total counter"));

  /* The port's threads: http.threads is not set, so one per two online
   * cores, at least 1. */
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  assert_true(metric_value(text, "tally_http_threads") ==
              (double)(cores < 2 ? 1 : cores / 2));
  /* ... without libmicrohttpd's warning about a pool of one (a single
   * thread is started without the pool option). */
  char *log = th_read_file(run.log_path);
  assert_non_null(log);
  if (strstr(log, "thread pool size"))
    fail_msg("libmicrohttpd warned about the thread pool: %s", log);
  free(log);

  /* The build: a version x.y.z and a commit (hex, or "unknown"). */
  const char *info = strstr(text, "\ntally_build_info{version=\"");
  assert_non_null(info);
  unsigned major, minor, patch;
  char commit[64];
  assert_int_equal(sscanf(info,
                          "\ntally_build_info{version=\"%u.%u.%u\","
                          "commit=\"%63[0-9a-z-]\"} 1",
                          &major, &minor, &patch, commit),
                   4);
  /* cmake/version.cmake: "unknown", or a commit, "-dirty" when the tree
   * had uncommitted changes. */
  size_t hex = strspn(commit, "0123456789abcdef");
  assert_true(strcmp(commit, "unknown") == 0 ||
              (hex > 0 &&
               (commit[hex] == '\0' || strcmp(commit + hex, "-dirty") == 0)));
  free(text);
}

static void test_unknown_route_404_wrong_method_405(void **state) {
  (void)state;
  long status;
  json_t *json = get("/v1/nothing", &status);
  assert_int_equal(status, 404);
  assert_string_equal(error_code(json), "not_found");
  json_decref(json);
  json = get("/v1/subjects/user:a/usage/hourly", &status);
  assert_int_equal(status, 404);
  json_decref(json);
  json = request("DELETE", "/v1/plans", TH_AUTH_DEFAULT, NULL, &status);
  assert_int_equal(status, 405);
  assert_string_equal(error_code(json), "method_not_allowed");
  json_decref(json);
  json = post("/v1/subjects/user:a/usage", "{}", &status);
  assert_int_equal(status, 405);
  json_decref(json);
}

/* ---- auth --------------------------------------------------------------- */

static void test_auth_failures_are_401_json(void **state) {
  (void)state;
  static const char *const bad[] = {
      NULL,                 /* missing */
      "Bearer not-the-key", /* wrong */
      "Basic dXNlcjpwYXNz", /* malformed: another scheme */
      "Bearer",             /* malformed: no token */
      "Bearer  ",           /* malformed: blank token */
  };
  static const char *const paths[] = {
      "/v1/plans", "/v1/subjects/user:a/usage",
      "/v1/subjects/user:a/quota?feature=api_calls"};
  for (size_t p = 0; p < sizeof(paths) / sizeof(paths[0]); p++)
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
      long status;
      json_t *json = request("GET", paths[p], bad[i], NULL, &status);
      if (status != 401 || !error_code(json) ||
          strcmp(error_code(json), "unauthorized") != 0)
        fail_msg("%s with '%s': %ld", paths[p], bad[i] ? bad[i] : "(none)",
                 status);
      json_decref(json);
    }
  /* A POST is refused before its body is even read, and the event in it
   * never reaches Kafka (checked once the log is replayed, at the end). */
  long status;
  json_t *json = request("POST", "/v1/events", "Bearer wrong",
                         "{\"event_id\": \"unauth-1\", \"subject\": "
                         "\"user:unauthorized\", \"feature\": \"api_calls\", "
                         "\"quantity\": 1}",
                         &status);
  assert_int_equal(status, 401);
  json_decref(json);
  /* The right key, with the scheme in another case, works. */
  char header[128];
  snprintf(header, sizeof(header), "bearer %s", th_api_key());
  json = request("GET", "/v1/plans", header, NULL, &status);
  assert_int_equal(status, 200);
  json_decref(json);
}

/* ---- bounds ---------------------------------------------------------------
 */

static void test_oversized_body_413_and_long_url_414(void **state) {
  (void)state;
  size_t size = 1048576 + 10;
  char *body = malloc(size + 1);
  memset(body, ' ', size);
  body[size] = '\0';
  long status;
  char *text = NULL;
  assert_int_equal(th_http_request(run.port, "POST", "/v1/events",
                                   TH_AUTH_DEFAULT, body, size, NULL, &status,
                                   &text),
                   0);
  assert_int_equal(status, 413);
  assert_non_null(strstr(text, "body_too_large"));
  free(text);
  /* Chunked (no Content-Length): drained, then 413 too. */
  static const char *const chunked[] = {"Transfer-Encoding: chunked", NULL};
  assert_int_equal(th_http_request(run.port, "POST", "/v1/estimate",
                                   TH_AUTH_DEFAULT, body, size, chunked,
                                   &status, &text),
                   0);
  assert_int_equal(status, 413);
  assert_non_null(strstr(text, "body_too_large"));
  free(text);
  free(body);

  char path[6000];
  memcpy(path, "/v1/subjects/user:", 18);
  memset(path + 18, 'a', 5000);
  snprintf(path + 5018, sizeof(path) - 5018, "/usage");
  json_t *json = get(path, &status);
  assert_int_equal(status, 414);
  assert_string_equal(error_code(json), "uri_too_long");
  json_decref(json);
  /* Within the URL bound but too long for a subject: 400. */
  path[18 + 600] = '\0';
  strcat(path, "/usage");
  json = get(path, &status);
  assert_int_equal(status, 400);
  assert_string_equal(error_code(json), "bad_subject");
  json_decref(json);
}

/* ---- ingest and usage ---------------------------------------------------- */

static void test_events_then_usage_shows_the_fold(void **state) {
  (void)state;
  long status;
  json_t *json = post(
      "/v1/events",
      "[{\"event_id\": \"h-1\", \"subject\": \"user:ingest\", \"feature\": "
      "\"api_calls\", \"quantity\": 30},"
      " {\"event_id\": \"h-2\", \"subject\": \"user:ingest\", \"feature\": "
      "\"api_calls\", \"quantity\": \"many\"},"
      " {\"event_id\": \"h-3\", \"subject\": \"user:ingest\", \"feature\": "
      "\"ai_tokens\", \"quantity\": 1500, \"ai\": {\"provider\": \"openai\", "
      "\"model\": \"gpt-4o\", \"input_tokens\": 1000, \"output_tokens\": 500}},"
      " {\"event_id\": \"h-4\", \"subject\": \"user:ingest\", \"type\": "
      "\"plan_assigned\", \"plan\": \"gold\"},"
      " {\"event_id\": \"h-5\", \"subject\": \"user:ingest\", \"feature\": "
      "\"api_calls\", \"quantity\": 12}]",
      &status);
  assert_int_equal(status, 202);
  assert_int_equal(integer_at(json, "accepted", NULL, NULL), 3);
  assert_int_equal(integer_at(json, "rejected", NULL, NULL), 2);
  json_t *results = json_object_get(json, "results");
  assert_string_equal(
      json_string_value(json_object_get(json_array_get(results, 0), "status")),
      "accepted");
  json_t *bad = json_array_get(results, 1);
  assert_string_equal(json_string_value(json_object_get(bad, "status")),
                      "rejected");
  assert_string_equal(json_string_value(json_object_get(
                          json_object_get(bad, "error"), "field")),
                      "quantity");
  json_t *unknown_plan = json_object_get(json_array_get(results, 3), "error");
  assert_string_equal(json_string_value(json_object_get(unknown_plan, "code")),
                      "unknown_plan");
  json_decref(json);

  json = wait_usage("user:ingest", "api_calls", 42);
  assert_string_equal(json_string_value(json_object_get(json, "plan")), "free");
  assert_int_equal(integer_at(json, "features", "api_calls", "limit"), 1000);
  assert_int_equal(integer_at(json, "features", "api_calls", "remaining"), 958);
  assert_int_equal(integer_at(json, "features", "api_calls", "percent"), 4);
  assert_int_equal(integer_at(json, "features", "api_calls", "events"), 2);
  /* 1000 x 2.50 + 500 x 10.00 per Mtok, +20 %: 9,000 micros. */
  assert_int_equal(integer_at(json, "features", "ai_tokens", "cost_micros"),
                   9000);
  assert_int_equal(integer_at(json, "cost_micros", NULL, NULL), 9000);
  assert_int_equal(integer_at(json, "credits", "used", NULL), 9);
  assert_true(json_is_false(json_object_get(json, "cycle_ended")));
  json_decref(json);

  /* One object (not an array) works too; all-bad is 400. */
  json = post("/v1/events",
              "{\"event_id\": \"h-6\", \"subject\": \"user:ingest\", "
              "\"feature\": \"api_calls\", \"quantity\": 8}",
              &status);
  assert_int_equal(status, 202);
  json_decref(json);
  json_decref(wait_usage("user:ingest", "api_calls", 50));
  json = post("/v1/events", "[{\"subject\": \"user:ingest\"}]", &status);
  assert_int_equal(status, 400);
  assert_string_equal(error_field(json), "event_id");
  json_decref(json);
  json = post("/v1/events", "[{\"event_id\": ", &status);
  assert_int_equal(status, 400);
  assert_string_equal(error_code(json), "malformed_json");
  json_decref(json);
  json = post("/v1/events", "[]", &status);
  assert_int_equal(status, 400);
  json_decref(json);
}

static void test_usage_unknown_subject_and_bad_subject(void **state) {
  (void)state;
  long status;
  json_t *json = get("/v1/subjects/user:nobody-here/usage", &status);
  assert_int_equal(status, 404);
  assert_string_equal(error_code(json), "not_found");
  json_decref(json);
  json = get("/v1/subjects/usr:typo/usage", &status);
  assert_int_equal(status, 400);
  assert_string_equal(error_code(json), "bad_subject");
  assert_string_equal(error_field(json), "subject");
  json_decref(json);
  json = get("/v1/subjects/api_key:rawkey/usage", &status);
  assert_int_equal(status, 400);
  json_decref(json);
  json = get("/v1/subjects/user:x/usage?at=yesterday", &status);
  assert_int_equal(status, 400);
  assert_string_equal(error_field(json), "at");
  json_decref(json);
}

static void test_ended_cycle_shows_reset(void **state) {
  (void)state;
  long status;
  json_t *json = get("/v1/subjects/user:ended/usage", &status);
  assert_int_equal(status, 200);
  assert_true(json_is_true(json_object_get(json, "cycle_ended")));
  assert_int_equal(json_object_size(json_object_get(json, "features")), 0);
  assert_int_equal(integer_at(json, "cost_micros", NULL, NULL), 0);
  /* The next cycle, from the config's monthly anchor, contains now. */
  long long start = integer_at(json, "cycle", "start_ms", NULL);
  long long end = integer_at(json, "cycle", "end_ms", NULL);
  long long now = (long long)time(NULL) * 1000;
  assert_true(start <= now && now < end);
  json_decref(json);
  /* As of the event's time, the folded cycle shows. */
  json = get("/v1/subjects/user:ended/usage?at=1788000000000", &status);
  assert_int_equal(status, 200);
  assert_true(json_is_false(json_object_get(json, "cycle_ended")));
  assert_int_equal(integer_at(json, "features", "api_calls", "quantity"), 9);
  json_decref(json);
  /* The pre-check sees the reset too: nothing used. */
  json = get("/v1/subjects/user:ended/quota?feature=api_calls&quantity=1000",
             &status);
  assert_int_equal(status, 200);
  assert_int_equal(integer_at(json, "used", NULL, NULL), 0);
  assert_true(json_is_true(json_object_get(json, "allowed")));
  json_decref(json);
}

/* ---- the usage history: daily buckets, closed cycles, alerts ------------ */

#define HOUR_MS 3600000LL
#define DAY_MS (24 * HOUR_MS)

/* POSTs events (a JSON array) and expects 202. */
static void post_events(const char *body) {
  long status;
  json_t *json = post("/v1/events", body, &status);
  if (status != 202)
    fail_msg("POST /v1/events: %ld %s", status, json_dumps(json, JSON_COMPACT));
  json_decref(json);
}

static void test_daily_cycles_and_alerts(void **state) {
  (void)state;
  long status;
  int64_t now = (int64_t)time(NULL) * 1000; /* th_now_ms is monotonic */
  int64_t base = now - 6 * DAY_MS;
  /* Six cycles: the monthly one of `base`, then five set by invoices a day
   * apart (each invoice closes the cycle before it). Usage of i+1 api_calls
   * one hour into cycle i. The first two closed cycles leave the kept
   * history (3) and are archived. */
  char body[8192];
  size_t n = 0;
  n += (size_t)snprintf(body + n, sizeof(body) - n, "[");
  for (int i = 0; i < 6; i++) {
    int64_t start = base + i * DAY_MS;
    if (i > 0)
      n += (size_t)snprintf(
          body + n, sizeof(body) - n,
          "{\"event_id\": \"hist-inv-%d\", \"subject\": \"user:hist\", "
          "\"type\": \"invoice_paid\", \"invoice_id\": \"in_%d\", "
          "\"amount_paid_micros\": 0, \"occurred_at\": %lld, "
          "\"period_start\": %lld, \"period_end\": %lld},",
          i, i, (long long)start, (long long)start,
          (long long)(start + (i == 5 ? 30 * DAY_MS : DAY_MS)));
    n += (size_t)snprintf(
        body + n, sizeof(body) - n,
        "{\"event_id\": \"hist-use-%d\", \"subject\": \"user:hist\", "
        "\"feature\": \"api_calls\", \"quantity\": %d, \"occurred_at\": "
        "%lld}%s",
        i, i + 1, (long long)(start + HOUR_MS), i < 5 ? "," : "]");
  }
  post_events(body);
  json_decref(wait_usage("user:hist", "api_calls", 6));

  /* One more event in a later batch on the newest day (older days' keys
   * are then durable and dropped from memory), then a late event for a
   * kept closed cycle: its day is read back from its key. */
  snprintf(body, sizeof(body),
           "[{\"event_id\": \"hist-use-6\", \"subject\": \"user:hist\", "
           "\"feature\": \"api_calls\", \"quantity\": 10, \"occurred_at\": "
           "%lld}]",
           (long long)(base + 5 * DAY_MS + 2 * HOUR_MS));
  post_events(body);
  json_decref(wait_usage("user:hist", "api_calls", 16));
  int64_t late_at = base + 3 * DAY_MS + 2 * HOUR_MS;
  snprintf(body, sizeof(body),
           "[{\"event_id\": \"hist-late\", \"subject\": \"user:hist\", "
           "\"feature\": \"api_calls\", \"quantity\": 300, \"occurred_at\": "
           "%lld}]",
           (long long)late_at);
  post_events(body);

  /* Cycles: five closed, newest first; the late event counted in its own
   * (kept, not final) cycle; the two oldest archived and final. */
  json_t *json = NULL;
  int64_t deadline = th_now_ms() + 15000;
  for (;;) {
    json_decref(json);
    json = get("/v1/subjects/user:hist/cycles", &status);
    assert_int_equal(status, 200);
    json_t *second = json_array_get(json_object_get(json, "cycles"), 1);
    if (json_integer_value(json_object_get(second, "events")) == 2)
      break;
    if (th_now_ms() > deadline)
      fail_msg("the late event never showed: %s",
               json_dumps(json, JSON_COMPACT));
    th_sleep_ms(50);
  }
  json_t *cycles = json_object_get(json, "cycles");
  assert_int_equal(json_array_size(cycles), 5);
  for (int k = 0; k < 5; k++) {
    json_t *cycle = json_array_get(cycles, (size_t)k);
    int i = 4 - k; /* cycle i; 4 is the newest closed one */
    int64_t quantity = i + 1 + (i == 3 ? 300 : 0);
    assert_int_equal(integer_at(cycle, "features", "api_calls", "quantity"),
                     quantity);
    if (i > 0) { /* cycle 0 is the monthly one, closed early by in_1 */
      assert_int_equal(integer_at(cycle, "start_ms", NULL, NULL),
                       base + i * DAY_MS);
      assert_int_equal(integer_at(cycle, "end_ms", NULL, NULL),
                       base + (i + 1) * DAY_MS);
    }
    assert_true(json_is_boolean(json_object_get(cycle, "final")));
    assert_int_equal(json_is_true(json_object_get(cycle, "final")), i < 2);
  }
  json_decref(json);

  /* Daily: one bucket per UTC day, the late event in its day. */
  int64_t expected[8] = {0};
  int64_t first_day = base / DAY_MS;
  for (int i = 0; i < 6; i++)
    expected[(base + i * DAY_MS + HOUR_MS) / DAY_MS - first_day] += i + 1;
  expected[(base + 5 * DAY_MS + 2 * HOUR_MS) / DAY_MS - first_day] += 10;
  expected[late_at / DAY_MS - first_day] += 300;
  char path[256], from[16], to[16];
  time_t from_s = (time_t)(first_day * 86400), to_s = from_s + 7 * 86400;
  struct tm tm;
  strftime(from, sizeof(from), "%Y-%m-%d", gmtime_r(&from_s, &tm));
  strftime(to, sizeof(to), "%Y-%m-%d", gmtime_r(&to_s, &tm));
  snprintf(path, sizeof(path),
           "/v1/subjects/user:hist/usage/daily?from=%s&to=%s", from, to);
  json = get(path, &status);
  assert_int_equal(status, 200);
  assert_int_equal(integer_at(json, "retention_days", NULL, NULL), 90);
  json_t *days = json_object_get(json, "days");
  size_t used_days = 0;
  for (int d = 0; d < 8; d++)
    used_days += expected[d] != 0;
  assert_int_equal(json_array_size(days), used_days);
  for (size_t k = 0; k < json_array_size(days); k++) {
    json_t *day = json_array_get(days, k);
    int year, month, date;
    const char *text = json_string_value(json_object_get(day, "date"));
    assert_int_equal(sscanf(text, "%4d-%2d-%2d", &year, &month, &date), 3);
    int64_t day_number = tly_days_from_civil(year, month, date);
    assert_int_equal(integer_at(day, "features", "api_calls", "quantity"),
                     expected[day_number - first_day]);
  }
  json_decref(json);
  /* The same as CSV (Accept: text/csv): a header line, then one line per
   * (day, feature) with the same figures. */
  {
    const char *csv_headers[] = {"Accept: text/csv", NULL};
    char *text = NULL;
    assert_int_equal(th_http_request(run.port, "GET", path, TH_AUTH_DEFAULT,
                                     NULL, 0, csv_headers, &status, &text),
                     0);
    assert_int_equal(status, 200);
    const char *header = "date,feature,quantity,input_tokens,output_tokens,"
                         "events,cost_micros\r\n";
    assert_int_equal(strncmp(text, header, strlen(header)), 0);
    int64_t csv_total = 0, want_total = 0;
    size_t lines = 0;
    for (char *line = strstr(text, "\r\n") + 2; *line;
         line = strstr(line, "\r\n") + 2) {
      char date[16], feature[64];
      long long quantity;
      assert_int_equal(
          sscanf(line, "%10[^,],%63[^,],%lld", date, feature, &quantity), 3);
      if (strcmp(feature, "api_calls") == 0)
        csv_total += quantity;
      lines++;
    }
    for (int d = 0; d < 8; d++)
      want_total += expected[d];
    assert_int_equal(csv_total, want_total);
    assert_true(lines >= used_days);
    free(text);
    text = NULL;
    assert_int_equal(
        th_http_request(run.port, "GET", "/v1/subjects/user:hist/cycles",
                        TH_AUTH_DEFAULT, NULL, 0, csv_headers, &status, &text),
        0);
    assert_int_equal(status, 200);
    assert_int_equal(strncmp(text, "start_ms,end_ms,final,feature,", 30), 0);
    free(text);
  }
  /* A range after the last day has nothing; bad ranges are 400. */
  json = get("/v1/subjects/user:hist/usage/daily?from=2099-01-01&to=2099-01-31",
             &status);
  assert_int_equal(status, 200);
  assert_int_equal(json_array_size(json_object_get(json, "days")), 0);
  json_decref(json);
  json = get("/v1/subjects/user:hist/usage/daily?from=2026-02-01&to=2026-01-01",
             &status);
  assert_int_equal(status, 400);
  assert_string_equal(error_field(json), "to");
  json_decref(json);
  json = get("/v1/subjects/user:hist/usage/daily?to=2026-01-01", &status);
  assert_int_equal(status, 400);
  assert_string_equal(error_field(json), "from");
  json_decref(json);
  json = get("/v1/subjects/user:nobody-here/usage/daily?from=2026-01-01&to="
             "2026-01-02",
             &status);
  assert_int_equal(status, 404);
  json_decref(json);
  json = get("/v1/subjects/user:nobody-here/cycles", &status);
  assert_int_equal(status, 404);
  json_decref(json);

  /* Alerts: newest first; limit honoured. */
  json = get("/v1/subjects/user:hist/alerts", &status);
  assert_int_equal(status, 200);
  json_t *alerts = json_object_get(json, "alerts");
  size_t total = (size_t)integer_at(json, "total", NULL, NULL);
  assert_int_equal(json_array_size(alerts), total);
  int cycle_ends = 0;
  int64_t previous = INT64_MAX;
  for (size_t k = 0; k < json_array_size(alerts); k++) {
    json_t *alert = json_array_get(alerts, k);
    int64_t at = integer_at(alert, "occurred_at_ms", NULL, NULL);
    assert_true(at <= previous);
    previous = at;
    assert_string_equal(json_string_value(json_object_get(alert, "subject")),
                        "user:hist");
    const char *type = json_string_value(json_object_get(alert, "type"));
    cycle_ends += !strcmp(type, "billing_cycle_end");
  }
  /* Only the cycle ends: the late 300 landed in a closed cycle, which
   * raises no threshold alert. */
  assert_int_equal(cycle_ends, 5);
  assert_int_equal(total, 5);
  json_decref(json);
  json = get("/v1/subjects/user:hist/alerts?limit=2", &status);
  assert_int_equal(status, 200);
  assert_int_equal(json_array_size(json_object_get(json, "alerts")), 2);
  assert_int_equal(integer_at(json, "total", NULL, NULL), 5);
  json_decref(json);
  json = get("/v1/subjects/user:hist/alerts?limit=0", &status);
  assert_int_equal(status, 400);
  assert_string_equal(error_field(json), "limit");
  json_decref(json);
}

/* ---- quota ----------------------------------------------------------------
 */

static void test_quota_hard_soft_unlimited_and_errors(void **state) {
  (void)state;
  long status;
  json_t *json = post("/v1/events",
                      "[{\"event_id\": \"q-1\", \"subject\": \"user:quota\", "
                      "\"feature\": \"api_calls\", \"quantity\": 990},"
                      " {\"event_id\": \"q-2\", \"subject\": \"user:soft\", "
                      "\"type\": \"plan_assigned\", \"plan\": \"paid\"},"
                      " {\"event_id\": \"q-3\", \"subject\": \"user:soft\", "
                      "\"feature\": \"api_calls\", \"quantity\": 99999}]",
                      &status);
  assert_int_equal(status, 202);
  json_decref(json);
  json_decref(wait_usage("user:quota", "api_calls", 990));
  json_decref(wait_usage("user:soft", "api_calls", 99999));

  /* Hard limit (free: 1,000 api_calls). */
  json = get("/v1/subjects/user:quota/quota?feature=api_calls&quantity=10",
             &status);
  assert_int_equal(status, 200);
  assert_true(json_is_true(json_object_get(json, "allowed")));
  assert_string_equal(json_string_value(json_object_get(json, "reason")),
                      "within_limit");
  assert_int_equal(integer_at(json, "remaining", NULL, NULL), 0);
  json_decref(json);
  json = get("/v1/subjects/user:quota/quota?feature=api_calls&quantity=11",
             &status);
  assert_int_equal(status, 200);
  assert_true(json_is_false(json_object_get(json, "allowed")));
  assert_string_equal(json_string_value(json_object_get(json, "reason")),
                      "limit_exceeded");
  assert_string_equal(json_string_value(json_object_get(json, "mode")), "hard");
  json_decref(json);

  /* Soft limit (paid: 100,000 api_calls): allowed with a warning. */
  json =
      get("/v1/subjects/user:soft/quota?feature=api_calls&quantity=5", &status);
  assert_int_equal(status, 200);
  assert_true(json_is_true(json_object_get(json, "allowed")));
  assert_string_equal(json_string_value(json_object_get(json, "reason")),
                      "soft_limit_exceeded");
  assert_true(json_is_string(json_object_get(json, "warning")));
  assert_string_equal(json_string_value(json_object_get(json, "plan")), "paid");
  json_decref(json);
  /* Unlimited (paid: storage_bytes). */
  json = get("/v1/subjects/user:soft/quota?feature=storage_bytes&quantity="
             "999999999999",
             &status);
  assert_int_equal(status, 200);
  assert_true(json_is_true(json_object_get(json, "allowed")));
  assert_string_equal(json_string_value(json_object_get(json, "reason")),
                      "unlimited");
  assert_true(json_is_null(json_object_get(json, "remaining")));
  json_decref(json);

  /* Unknown subjects get their kind's default plan. */
  json = get("/v1/subjects/anonymous:fp-new/quota?feature=api_calls&quantity="
             "101",
             &status);
  assert_int_equal(status, 200);
  assert_string_equal(json_string_value(json_object_get(json, "plan")),
                      "anonymous");
  assert_true(json_is_false(json_object_get(json, "allowed")));
  assert_true(json_is_false(json_object_get(json, "known_subject")));
  json_decref(json);
  json = get("/v1/subjects/user:new-one/quota?feature=api_calls", &status);
  assert_int_equal(status, 200);
  assert_string_equal(json_string_value(json_object_get(json, "plan")), "free");
  assert_int_equal(integer_at(json, "quantity", NULL, NULL), 1);
  assert_int_equal(integer_at(json, "remaining", NULL, NULL), 999);
  json_decref(json);

  /* Errors name the parameter. */
  static const struct {
    const char *path, *code, *field;
  } errors[] = {
      {"/v1/subjects/user:quota/quota", "bad_request", "feature"},
      {"/v1/subjects/user:quota/quota?feature=teleport", "unknown_feature",
       "feature"},
      {"/v1/subjects/user:quota/quota?feature=api_calls&quantity=-1",
       "bad_request", "quantity"},
      {"/v1/subjects/user:quota/quota?feature=api_calls&quantity=1.5",
       "bad_request", "quantity"},
      {"/v1/subjects/user:quota/quota?feature=api_calls&quantity="
       "99999999999999999999",
       "bad_request", "quantity"},
  };
  for (size_t i = 0; i < sizeof(errors) / sizeof(errors[0]); i++) {
    json = get(errors[i].path, &status);
    if (status != 400 || strcmp(error_code(json), errors[i].code) != 0 ||
        strcmp(error_field(json), errors[i].field) != 0)
      fail_msg("%s: %ld", errors[i].path, status);
    json_decref(json);
  }
}

/* ---- plans, estimate, prorate, plan assignment --------------------------- */

static void test_plans(void **state) {
  (void)state;
  long status;
  json_t *json = get("/v1/plans", &status);
  assert_int_equal(status, 200);
  json_t *plans = json_object_get(json, "plans");
  assert_true(json_array_size(plans) >= 7);
  int found_free = 0;
  for (size_t i = 0; i < json_array_size(plans); i++) {
    json_t *plan = json_array_get(plans, i);
    if (strcmp(json_string_value(json_object_get(plan, "name")), "free") == 0) {
      found_free = 1;
      assert_int_equal(integer_at(plan, "credits", NULL, NULL), 2500);
      assert_int_equal(integer_at(plan, "limits", "api_calls", "limit"), 1000);
    }
  }
  assert_true(found_free);
  assert_string_equal(json_string_value(json_object_get(
                          json_object_get(json, "default_plans"), "anonymous")),
                      "anonymous");
  json_decref(json);
}

static void test_estimate(void **state) {
  (void)state;
  long status;
  /* professional: api_calls graduated 500k free, then 50 micros up to 5M;
   * 600,000 calls = 100,000 x 50 = 5,000,000 micros. */
  json_t *json = post("/v1/estimate",
                      "{\"plan\": \"professional\", \"usage\": {\"api_calls\": "
                      "600000}, \"ai\": [{\"model\": \"gpt-4o\", "
                      "\"input_tokens\": 1000000, \"output_tokens\": 100000}]}",
                      &status);
  assert_int_equal(status, 200);
  assert_int_equal(integer_at(json, "features", "api_calls", "cost_micros"),
                   5000000);
  /* 2.5 + 1.0 USD, +20 % margin. */
  assert_int_equal(integer_at(json, "features", "ai_tokens", "cost_micros"),
                   4200000);
  assert_int_equal(integer_at(json, "usage_cost_micros", NULL, NULL), 9200000);
  assert_int_equal(integer_at(json, "total_micros", NULL, NULL), 58200000);
  assert_int_equal(integer_at(json, "credits", "used", NULL), 9200);
  assert_true(json_is_true(json_object_get(json, "within_limits")));
  json_decref(json);

  static const struct {
    const char *body, *code, *field;
  } errors[] = {
      {"{\"plan\": \"gold\"}", "unknown_plan", "plan"},
      {"{\"usage\": {}}", "bad_request", "plan"},
      {"{\"plan\": \"free\", \"usage\": {\"teleport\": 1}}", "unknown_feature",
       "usage.teleport"},
      {"{\"plan\": \"free\", \"usage\": {\"api_calls\": \"lots\"}}",
       "bad_request", "usage.api_calls"},
      {"{\"plan\": \"free\", \"ai\": [{\"model\": \"nope\"}]}", "unknown_model",
       "ai[0]"},
      {"{\"plan\": \"free\", \"extra\": 1}", "bad_request", "extra"},
      {"{\"plan\": ", "malformed_json", NULL},
      {"[1, 2]", "bad_request", NULL},
  };
  for (size_t i = 0; i < sizeof(errors) / sizeof(errors[0]); i++) {
    json = post("/v1/estimate", errors[i].body, &status);
    if (status != 400 || strcmp(error_code(json), errors[i].code) != 0 ||
        (errors[i].field && strcmp(error_field(json), errors[i].field) != 0))
      fail_msg("estimate %s: %ld %s", errors[i].body, status,
               error_code(json) ? error_code(json) : "");
    json_decref(json);
  }
}

static void test_prorate(void **state) {
  (void)state;
  long status;
  /* November: 30 days; from the 16th, 15 remain. */
  json_t *json = post("/v1/prorate",
                      "{\"from_plan\": \"starter\", \"to_plan\": "
                      "\"professional\", \"change_date\": \"2026-11-16\", "
                      "\"cycle_start\": \"2026-11-01\"}",
                      &status);
  assert_int_equal(status, 200);
  assert_int_equal(integer_at(json, "days_total", NULL, NULL), 30);
  assert_int_equal(integer_at(json, "days_remaining", NULL, NULL), 15);
  assert_int_equal(integer_at(json, "unused_credit_micros", NULL, NULL),
                   4500000);
  assert_int_equal(integer_at(json, "new_charge_micros", NULL, NULL), 24500000);
  assert_int_equal(integer_at(json, "net_micros", NULL, NULL), 20000000);
  json_decref(json);
  /* A third of a cycle rounds half up: 20,000,000 x 10/30 -> 6,666,667. */
  json = post("/v1/prorate",
              "{\"from_plan\": \"free\", \"to_plan\": \"paid\", "
              "\"change_date\": \"2026-01-21\", \"cycle_start\": "
              "\"2026-01-01\", \"cycle_end\": \"2026-01-31\"}",
              &status);
  assert_int_equal(status, 200);
  assert_int_equal(integer_at(json, "new_charge_micros", NULL, NULL), 6666667);
  json_decref(json);

  static const struct {
    const char *body, *code, *field;
  } errors[] = {
      {"{\"from_plan\": \"free\", \"to_plan\": \"paid\", \"change_date\": "
       "\"2026-02-30\"}",
       "bad_date", "change_date"},
      {"{\"from_plan\": \"free\", \"to_plan\": \"paid\", \"change_date\": "
       "\"16/11/2026\"}",
       "bad_date", "change_date"},
      {"{\"from_plan\": \"free\", \"to_plan\": \"paid\"}", "bad_request",
       "change_date"},
      {"{\"from_plan\": \"free\", \"to_plan\": \"paid\", \"change_date\": "
       "\"2026-12-05\", \"cycle_start\": \"2026-11-01\", \"cycle_end\": "
       "\"2026-12-01\"}",
       "bad_date", "change_date"},
      {"{\"from_plan\": \"nope\", \"to_plan\": \"paid\", \"change_date\": "
       "\"2026-11-05\"}",
       "unknown_plan", "from_plan"},
      {"{\"from_plan\": \"free\", \"to_plan\": 3, \"change_date\": "
       "\"2026-11-05\"}",
       "bad_request", "to_plan"},
  };
  for (size_t i = 0; i < sizeof(errors) / sizeof(errors[0]); i++) {
    json = post("/v1/prorate", errors[i].body, &status);
    if (status != 400 || strcmp(error_code(json), errors[i].code) != 0 ||
        strcmp(error_field(json), errors[i].field) != 0)
      fail_msg("prorate %s: %ld %s", errors[i].body, status,
               error_code(json) ? error_code(json) : "");
    json_decref(json);
  }
}

static void test_plan_assignment_is_produced_and_folded(void **state) {
  (void)state;
  long status;
  json_t *json = post("/v1/events",
                      "{\"event_id\": \"p-1\", \"subject\": \"user:upgrade\", "
                      "\"feature\": \"api_calls\", \"quantity\": 1}",
                      &status);
  assert_int_equal(status, 202);
  json_decref(json);
  json_decref(wait_usage("user:upgrade", "api_calls", 1));

  json = post("/v1/subjects/user:upgrade/plan",
              "{\"plan\": \"starter\", \"event_id\": \"upgrade-1\"}", &status);
  assert_int_equal(status, 202);
  assert_string_equal(json_string_value(json_object_get(json, "event_id")),
                      "upgrade-1");
  json_decref(json);
  int64_t deadline = th_now_ms() + 15000;
  const char *plan = NULL;
  while (th_now_ms() < deadline) {
    json = get("/v1/subjects/user:upgrade/usage", &status);
    plan = json_string_value(json_object_get(json, "plan"));
    int done = plan && strcmp(plan, "starter") == 0;
    json_decref(json);
    if (done)
      break;
    th_sleep_ms(50);
  }
  json = get("/v1/subjects/user:upgrade/usage", &status);
  assert_string_equal(json_string_value(json_object_get(json, "plan")),
                      "starter");
  assert_int_equal(integer_at(json, "features", "api_calls", "limit"), 10000);
  json_decref(json);

  json =
      post("/v1/subjects/user:upgrade/plan", "{\"plan\": \"gold\"}", &status);
  assert_int_equal(status, 400);
  assert_string_equal(error_code(json), "unknown_plan");
  json_decref(json);
  json = post("/v1/subjects/user:upgrade/plan", "{}", &status);
  assert_int_equal(status, 400);
  assert_string_equal(error_field(json), "plan");
  json_decref(json);
  json = request("POST", "/v1/subjects/user:upgrade/plan", NULL,
                 "{\"plan\": \"paid\"}", &status);
  assert_int_equal(status, 401);
  json_decref(json);
}

/* ---- readiness through a replay ------------------------------------------ */

static void test_readyz_false_during_replay_true_after(void **state) {
  (void)state;
  /* Stop the processor, put a backlog in the log, restart it with small
   * batches so the replay takes a while, and watch /readyz. */
  assert_int_equal(th_stop(run.pid), 0);
  char input[700], out[700];
  snprintf(input, sizeof(input), "%s/backlog.jsonl", dir);
  snprintf(out, sizeof(out), "%s/emit.out", dir);
  FILE *file = fopen(input, "w");
  assert_non_null(file);
  const int events = 20000;
  for (int i = 0; i < events; i++)
    fprintf(file,
            "{\"event_id\":\"r-%d\",\"subject\":\"user:replay-%d\","
            "\"feature\":\"api_calls\",\"quantity\":1}\n",
            i, i % 50);
  fclose(file);
  char *argv[] = {(char *)th_tally_bin(), "emit",    "--brokers",
                  broker.bootstrap,       "--quiet", NULL};
  assert_int_equal(th_wait_exit(th_spawn(argv, input, out, out), 60000), 0);

  static const char *const extra[] = {"--batch-events", "200", NULL};
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, extra), 0);
  int saw_replaying = 0, saw_ready = 0;
  int64_t deadline = th_now_ms() + 60000;
  while (th_now_ms() < deadline && !saw_ready) {
    long status;
    json_t *json = request("GET", "/readyz", NULL, NULL, &status);
    if (status == 503 && json_array_size(json_object_get(json, "behind")) > 0)
      saw_replaying = 1;
    if (status == 200)
      saw_ready = 1;
    else
      assert_int_equal(status, 503);
    json_decref(json);
    th_sleep_ms(5);
  }
  assert_true(saw_replaying);
  assert_true(saw_ready);
  /* Ready means caught up: every backlog event is folded. */
  long long total = 0;
  for (int s = 0; s < 50; s++) {
    char path[128];
    long status;
    snprintf(path, sizeof(path), "/v1/subjects/user:replay-%d/usage", s);
    json_t *json = get(path, &status);
    assert_int_equal(status, 200);
    total += integer_at(json, "features", "api_calls", "quantity");
    json_decref(json);
  }
  assert_int_equal(total, events);
  /* The event posted with a wrong token was never produced. */
  long status;
  json_t *json = get("/v1/subjects/user:unauthorized/usage", &status);
  assert_int_equal(status, 404);
  json_decref(json);
}

/* ---- startup: no key, --no-auth, keys from the config -------------------- */

/* Starts `tally run` on the shared broker in its own consumer group (so the
 * fixture's processor keeps its partitions) with args; its HTTP port, or -1
 * when it exited (*exit_code, stderr in err_path). */
static int start_other(const char *tag, const char *const *args, pid_t *pid,
                       int *exit_code, char *err_path, size_t err_size) {
  char state[700], port_file[700], group[64];
  snprintf(state, sizeof(state), "%s/%s", dir, tag);
  snprintf(port_file, sizeof(port_file), "%s/%s.port", dir, tag);
  snprintf(err_path, err_size, "%s/%s.log", dir, tag);
  snprintf(group, sizeof(group), "test-http-%s", tag);
  char *argv[32] = {
      (char *)th_tally_bin(), "run",     "--brokers", broker.bootstrap,
      "--state-dir",          state,     "--http",    "127.0.0.1:0",
      "--http-port-file",     port_file, "--group",   group,
      "--tick-interval-ms",   "0"};
  int argc = 14;
  for (size_t i = 0; args[i] && argc < 31; i++)
    argv[argc++] = (char *)args[i];
  argv[argc] = NULL;
  *pid = th_spawn(argv, NULL, err_path, err_path);
  int64_t deadline = th_now_ms() + 30000;
  while (th_now_ms() < deadline) {
    char *port = th_read_file(port_file);
    if (port) {
      int value = atoi(port);
      free(port);
      return value;
    }
    *exit_code = th_wait_exit(*pid, 50);
    if (*exit_code >= 0)
      return -1;
  }
  th_kill9(*pid);
  *exit_code = -1;
  return -1;
}

static void test_startup_auth_modes(void **state) {
  (void)state;
  char err_path[700];
  pid_t pid;
  int exit_code = 0;

  /* No key anywhere: refused, with the ways out named. */
  static const char *const none[] = {NULL};
  assert_int_equal(
      start_other("nokey", none, &pid, &exit_code, err_path, sizeof(err_path)),
      -1);
  assert_int_equal(exit_code, 2);
  char *text = th_read_file(err_path);
  assert_non_null(strstr(text, "no API key configured"));
  assert_non_null(strstr(text, "--api-key-sha256"));
  assert_non_null(strstr(text, "--no-auth"));
  free(text);
  /* A raw key where the digest belongs: refused. */
  static const char *const raw[] = {"--api-key-sha256", "sk_live_raw", NULL};
  assert_int_equal(
      start_other("rawkey", raw, &pid, &exit_code, err_path, sizeof(err_path)),
      -1);
  assert_int_equal(exit_code, 2);
  text = th_read_file(err_path);
  assert_non_null(strstr(text, "64 hex"));
  free(text);

  /* --no-auth: open. */
  static const char *const open_args[] = {"--no-auth", NULL};
  int port = start_other("noauth", open_args, &pid, &exit_code, err_path,
                         sizeof(err_path));
  assert_true(port > 0);
  long status;
  char *body = NULL;
  assert_int_equal(th_http_request(port, "GET", "/v1/plans", NULL, NULL, 0,
                                   NULL, &status, &body),
                   0);
  assert_int_equal(status, 200);
  free(body);
  assert_int_equal(th_stop(pid), 0);

  /* Keys from the config file; metrics behind the token when asked. */
  char config_path[700], config[512], hex[65];
  snprintf(config_path, sizeof(config_path), "%s/auth-config.json", dir);
  snprintf(hex, sizeof(hex), "%s", th_api_key_sha256());
  snprintf(config, sizeof(config),
           "{\"http\": {\"api_keys\": [{\"name\": \"svc\", \"sha256\": "
           "\"%s\"}], \"metrics_public\": false}}",
           hex);
  FILE *file = fopen(config_path, "w");
  assert_non_null(file);
  fputs(config, file);
  fclose(file);
  const char *const with_config[] = {"--config", config_path, NULL};
  port = start_other("config", with_config, &pid, &exit_code, err_path,
                     sizeof(err_path));
  assert_true(port > 0);
  assert_int_equal(th_http_request(port, "GET", "/v1/plans", TH_AUTH_DEFAULT,
                                   NULL, 0, NULL, &status, &body),
                   0);
  assert_int_equal(status, 200);
  free(body);
  assert_int_equal(th_http_request(port, "GET", "/metrics", NULL, NULL, 0, NULL,
                                   &status, &body),
                   0);
  assert_int_equal(status, 401);
  free(body);
  assert_int_equal(th_http_request(port, "GET", "/metrics", TH_AUTH_DEFAULT,
                                   NULL, 0, NULL, &status, &body),
                   0);
  assert_int_equal(status, 200);
  free(body);
  assert_int_equal(th_http_request(port, "GET", "/healthz", NULL, NULL, 0, NULL,
                                   &status, &body),
                   0);
  assert_int_equal(status, 200);
  free(body);
  assert_int_equal(th_stop(pid), 0);
}

/* ---- ingest when Kafka is gone ------------------------------------------- */

static void test_produce_failure_is_503(void **state) {
  (void)state;
  /* Its own broker and processor, so killing the broker spares the rest. */
  th_broker_t lost;
  th_run_t other;
  char other_state[700];
  assert_int_equal(th_broker_start(&lost, 1), 0);
  snprintf(other_state, sizeof(other_state), "%s/lost-broker", dir);
  static const char *const extra[] = {"-X", "message.timeout.ms=1500", NULL};
  assert_int_equal(th_run_start(&other, lost.bootstrap, other_state, extra), 0);
  th_kill9(lost.pid);

  long status;
  char *text = NULL;
  const char *body =
      "[{\"event_id\": \"lost-1\", \"subject\": \"user:lost\", \"feature\": "
      "\"api_calls\", \"quantity\": 1}, {\"event_id\": \"\"}]";
  int64_t started = th_now_ms();
  assert_int_equal(th_http_request(other.port, "POST", "/v1/events",
                                   TH_AUTH_DEFAULT, body, strlen(body), NULL,
                                   &status, &text),
                   0);
  /* Answered within the delivery timeout, not hung. */
  assert_true(th_now_ms() - started < 10000);
  assert_int_equal(status, 503);
  json_t *json = json_loads(text, 0, NULL);
  free(text);
  assert_string_equal(error_code(json), "kafka_unavailable");
  assert_int_equal(integer_at(json, "failed", NULL, NULL), 1);
  assert_int_equal(integer_at(json, "rejected", NULL, NULL), 1);
  json_t *results = json_object_get(json, "results");
  assert_string_equal(
      json_string_value(json_object_get(json_array_get(results, 0), "status")),
      "failed");
  json_decref(json);
  th_stop(other.pid); /* may need its SIGKILL: its broker is gone */
  th_rmrf(lost.dir);
}

/* ---- addressing and arithmetic (issue 13, finding 7) --------------------
 */

/* A subject holding '/', '?', '%', ' ' and UTF-8 is stored and read back
 * through a percent-encoded path segment; malformed subjects are 400
 * naming "subject", never 500 or a retryable 503. */
static void test_subject_percent_encoding_end_to_end(void **state) {
  (void)state;
  long status;
  post_events("[{\"event_id\": \"pct-1\", \"subject\": \"user:a/b?c%d "
              "\\u00e9\", \"feature\": \"api_calls\", \"quantity\": 3}]");
  json_t *json = wait_usage("user%3Aa%2Fb%3Fc%25d%20%C3%A9", "api_calls", 3);
  assert_string_equal(json_string_value(json_object_get(json, "subject")),
                      "user:a/b?c%d \xc3\xa9");
  json_decref(json);
  json = get("/v1/subjects/user:a%2Fb%3fc%25d%20%c3%a9/quota?feature=api_calls",
             &status);
  assert_int_equal(status, 200);
  assert_int_equal(integer_at(json, "used", NULL, NULL), 3);
  json_decref(json);
  /* Unencoded, the '/' separates path segments: no such route. */
  json = get("/v1/subjects/user:a/b/usage", &status);
  assert_int_equal(status, 404);
  json_decref(json);

  /* Percent-decoded bytes that are no UTF-8: 400 (was 500 "out of
   * memory"); a broken escape and a NUL: 400. */
  static const char *const bad_paths[] = {
      "/v1/subjects/user:%ff/usage", "/v1/subjects/user:%ff/quota?feature=x",
      "/v1/subjects/user:%zz/usage", "/v1/subjects/user:a%00b/usage",
      "/v1/subjects/user:%C3/cycles"};
  for (size_t i = 0; i < sizeof(bad_paths) / sizeof(bad_paths[0]); i++) {
    json = get(bad_paths[i], &status);
    if (status != 400 || !json || strcmp(error_field(json), "subject") != 0)
      fail_msg("%s: %ld %s", bad_paths[i], status,
               json ? json_dumps(json, JSON_COMPACT) : "(not JSON)");
    assert_string_equal(error_code(json), "bad_subject");
    json_decref(json);
  }

  /* Over the subject bound: 400 naming subject, from a path and from a
   * body (the body's was accepted, then failed to produce: 503). */
  char id[1101], path[1300], body[1500];
  memset(id, 'a', sizeof(id) - 1);
  id[sizeof(id) - 1] = '\0';
  snprintf(body, sizeof(body),
           "[{\"event_id\": \"long-1\", \"subject\": \"user:%s\", "
           "\"feature\": \"api_calls\", \"quantity\": 1}]",
           id);
  json = post("/v1/events", body, &status);
  assert_int_equal(status, 400);
  assert_string_equal(error_field(json), "subject");
  json_decref(json);
  id[600] = '\0';
  snprintf(path, sizeof(path), "/v1/subjects/user:%s/usage", id);
  json = get(path, &status);
  assert_int_equal(status, 400);
  assert_string_equal(error_field(json), "subject");
  json_decref(json);
}

/* An AI event of a model with no price is refused at ingest (400 naming
 * ai.model) instead of 202 and then the dead-letter topic. */
static void test_unknown_model_is_400(void **state) {
  (void)state;
  long status;
  json_t *json = post(
      "/v1/events",
      "{\"event_id\": \"model-1\", \"subject\": \"user:models\", \"feature\": "
      "\"ai_tokens\", \"quantity\": 5, \"ai\": {\"provider\": \"x\", "
      "\"model\": \"no-such-model\", \"input_tokens\": 3, "
      "\"output_tokens\": 2}}",
      &status);
  assert_int_equal(status, 400);
  assert_string_equal(error_code(json), "unknown_model");
  assert_string_equal(error_field(json), "ai.model");
  assert_int_equal(integer_at(json, "rejected", NULL, NULL), 1);
  json_decref(json);
  /* A priced model goes through. */
  json = post("/v1/events",
              "{\"event_id\": \"model-2\", \"subject\": \"user:models\", "
              "\"feature\": \"ai_tokens\", \"quantity\": 5, \"ai\": "
              "{\"provider\": \"openai\", \"model\": \"gpt-4o\", "
              "\"input_tokens\": 3, \"output_tokens\": 2}}",
              &status);
  assert_int_equal(status, 202);
  json_decref(json);
}

/* Two hours of one UTC day in two cycles (an invoice between them), each
 * near INT64_MAX: the day's sum saturates at INT64_MAX instead of wrapping
 * to a negative quantity. */
static void test_daily_sum_saturates_across_two_cycles(void **state) {
  (void)state;
  long status;
  int64_t now = (int64_t)time(NULL) * 1000;
  int64_t day = (now / DAY_MS - 3) * DAY_MS;
  long long near = INT64_MAX - 1000;
  char body[2048];
  snprintf(
      body, sizeof(body),
      "[{\"event_id\": \"ovf-1\", \"subject\": \"user:ovf\", \"feature\": "
      "\"storage_bytes\", \"quantity\": %lld, \"occurred_at\": %lld},"
      " {\"event_id\": \"ovf-inv\", \"subject\": \"user:ovf\", \"type\": "
      "\"invoice_paid\", \"invoice_id\": \"in_ovf\", \"amount_paid_micros\": "
      "0, \"occurred_at\": %lld, \"period_start\": %lld, \"period_end\": "
      "%lld},"
      " {\"event_id\": \"ovf-2\", \"subject\": \"user:ovf\", \"feature\": "
      "\"storage_bytes\", \"quantity\": %lld, \"occurred_at\": %lld}]",
      near, (long long)(day + HOUR_MS), (long long)(day + 2 * HOUR_MS),
      (long long)(day + 2 * HOUR_MS), (long long)(day + 32 * DAY_MS), near,
      (long long)(day + 3 * HOUR_MS));
  post_events(body);
  char date[16], path[256];
  time_t seconds = (time_t)(day / 1000);
  struct tm tm;
  strftime(date, sizeof(date), "%Y-%m-%d", gmtime_r(&seconds, &tm));
  snprintf(path, sizeof(path),
           "/v1/subjects/user:ovf/usage/daily?from=%s&to=%s", date, date);
  json_t *json = NULL, *storage = NULL;
  int64_t deadline = th_now_ms() + 15000;
  for (;;) {
    json_decref(json);
    json = get(path, &status);
    assert_true(status == 200 || status == 404); /* 404: not folded yet */
    storage = json_object_get(
        json_object_get(json_array_get(json_object_get(json, "days"), 0),
                        "features"),
        "storage_bytes");
    if (json_integer_value(json_object_get(storage, "events")) == 2)
      break;
    if (th_now_ms() > deadline)
      fail_msg("both hours never showed: %s", json_dumps(json, JSON_COMPACT));
    th_sleep_ms(50);
  }
  assert_int_equal(json_integer_value(json_object_get(storage, "quantity")),
                   INT64_MAX);
  json_decref(json);
  /* Each cycle on its own holds its exact total. */
  json = wait_usage("user:ovf", "storage_bytes", near);
  json_decref(json);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_health_and_metrics_are_open),
      cmocka_unit_test(test_metrics_latency_process_and_build_info),
      cmocka_unit_test(test_unknown_route_404_wrong_method_405),
      cmocka_unit_test(test_auth_failures_are_401_json),
      cmocka_unit_test(test_oversized_body_413_and_long_url_414),
      cmocka_unit_test(test_ended_cycle_shows_reset),
      cmocka_unit_test(test_daily_cycles_and_alerts),
      cmocka_unit_test(test_events_then_usage_shows_the_fold),
      cmocka_unit_test(test_usage_unknown_subject_and_bad_subject),
      cmocka_unit_test(test_quota_hard_soft_unlimited_and_errors),
      cmocka_unit_test(test_plans),
      cmocka_unit_test(test_estimate),
      cmocka_unit_test(test_prorate),
      cmocka_unit_test(test_subject_percent_encoding_end_to_end),
      cmocka_unit_test(test_unknown_model_is_400),
      cmocka_unit_test(test_daily_sum_saturates_across_two_cycles),
      cmocka_unit_test(test_plan_assignment_is_produced_and_folded),
      cmocka_unit_test(test_startup_auth_modes),
      cmocka_unit_test(test_produce_failure_is_503),
      cmocka_unit_test(test_readyz_false_during_replay_true_after),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
