/*
 * test_reserve.c - reservations against a real `tally run` (embedded broker,
 * real sockets): 200 concurrent reservations against a hard limit of 50
 * grant exactly 50; a usage event carrying reservation_id releases its hold
 * and counts the actual usage (more or less than held); DELETE releases;
 * a hold expires by its ttl, and the processor's ticks drop it from the
 * folded state of an idle subject; bad input answers 4xx JSON naming the
 * field; at most 100 open holds per subject (409); holds survive SIGKILL
 * and restart, a grant acknowledged but not yet folded included, and the
 * pre-check (/quota) counts them. Every wait polls with a generous deadline.
 */
#include "harness.h"

#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define PARTITIONS 4
#define LIMIT 50
#define CONCURRENT 200

static th_broker_t broker;
static th_run_t run;
static char *dir;
static char state_dir[600], config_path[700];
/* Ticks every 300 ms: an idle subject's holds expire in its folded state. */
static const char *const extra[] = {"--config", config_path,
                                    "--tick-interval-ms", "300", NULL};

/* ---- requests ----------------------------------------------------------- */

static json_t *request(const char *method, const char *path, const char *body,
                       long *status) {
  char *text = NULL;
  if (th_http_request(run.port, method, path, TH_AUTH_DEFAULT, body,
                      body ? strlen(body) : 0, NULL, status, &text))
    fail_msg("%s %s: no answer", method, path);
  json_t *json = json_loads(text ? text : "", 0, NULL);
  if (!json)
    fail_msg("%s %s: %ld, not JSON: %s", method, path, *status,
             text ? text : "");
  free(text);
  return json;
}

/* POST .../reservations; the answer (status out). */
/* Only the owner decides a reservation: 503 partition_moving while the
 * partition is being assigned (reads may already come from a standby
 * copy), asked again for up to a minute. */
static json_t *reserve(const char *subject, const char *body, long *status) {
  char path[256];
  snprintf(path, sizeof(path), "/v1/subjects/%s/reservations", subject);
  int64_t deadline = th_now_ms() + 60000;
  for (;;) {
    json_t *json = request("POST", path, body, status);
    if (*status != 503 || th_now_ms() > deadline)
      return json;
    json_decref(json);
    th_sleep_ms(100);
  }
}

/* A reservation that must be granted: its id (malloc'd). */
static char *reserve_ok(const char *subject, const char *feature,
                        long long quantity, int ttl_s) {
  char body[256];
  long status = 0;
  snprintf(body, sizeof(body),
           "{\"feature\": \"%s\", \"quantity\": %lld, \"ttl_s\": %d}", feature,
           quantity, ttl_s);
  for (int attempt = 0; attempt < 100; attempt++) {
    json_t *json = reserve(subject, body, &status);
    if (status == 503) { /* a partition still being assigned */
      json_decref(json);
      th_sleep_ms(100);
      continue;
    }
    if (status != 200 || !json_is_true(json_object_get(json, "allowed")))
      fail_msg("reserve %s %s: %ld %s", subject, body, status,
               json_dumps(json, 0));
    char *id =
        strdup(json_string_value(json_object_get(json, "reservation_id")));
    json_decref(json);
    return id;
  }
  fail_msg("reserve %s: still 503", subject);
  return NULL;
}

static long long integer(const json_t *json, const char *key) {
  const json_t *value = json_object_get(json, key);
  if (!json_is_integer(value))
    fail_msg("'%s' is not an integer in %s", key, json_dumps(json, 0));
  return json_integer_value(value);
}

static const char *error_code(const json_t *json) {
  return json_string_value(
      json_object_get(json_object_get(json, "error"), "code"));
}

static const char *error_field(const json_t *json) {
  return json_string_value(
      json_object_get(json_object_get(json, "error"), "field"));
}

/* The pre-check of feature (quantity 1) at the time at_ms (0: now). */
static json_t *quota(const char *subject, const char *feature,
                     long long at_ms) {
  char path[256];
  long status = 0;
  if (at_ms)
    snprintf(path, sizeof(path), "/v1/subjects/%s/quota?feature=%s&at=%lld",
             subject, feature, at_ms);
  else
    snprintf(path, sizeof(path), "/v1/subjects/%s/quota?feature=%s", subject,
             feature);
  json_t *json = request("GET", path, NULL, &status);
  if (status != 200) {
    json_decref(json);
    return NULL;
  }
  return json;
}

/* Polls the pre-check until its used and held are these (60 s); the last
 * answer. */
static json_t *wait_quota(const char *subject, const char *feature,
                          long long used, long long held, long long at_ms) {
  json_t *json = NULL;
  int64_t deadline = th_now_ms() + 60000;
  while (th_now_ms() < deadline) {
    json_decref(json);
    json = quota(subject, feature, at_ms);
    if (json && integer(json, "used") == used && integer(json, "held") == held)
      return json;
    th_sleep_ms(50);
  }
  fail_msg("%s: never used %lld held %lld; last %s", subject, used, held,
           json ? json_dumps(json, 0) : "(no answer)");
  return NULL;
}

static void post_usage(const char *subject, const char *feature,
                       long long quantity, const char *reservation_id,
                       const char *event_id) {
  char body[512], settle[128] = "";
  long status = 0;
  if (reservation_id)
    snprintf(settle, sizeof(settle), ", \"reservation_id\": \"%s\"",
             reservation_id);
  snprintf(body, sizeof(body),
           "{\"event_id\": \"%s\", \"subject\": \"%s\", \"feature\": \"%s\", "
           "\"quantity\": %lld%s}",
           event_id, subject, feature, quantity, settle);
  json_t *json = request("POST", "/v1/events", body, &status);
  if (status != 202 || integer(json, "accepted") != 1)
    fail_msg("POST /v1/events %s: %ld %s", body, status, json_dumps(json, 0));
  json_decref(json);
}

/* ---- setup ----------------------------------------------------------------
 */

static int setup(void **state) {
  (void)state;
  dir = th_mkdtemp("reserve");
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  snprintf(config_path, sizeof(config_path), "%s/config.json", dir);
  FILE *file = fopen(config_path, "w");
  if (!file)
    return -1;
  fputs("{\"default_plans\": {\"user\": \"capped\", \"api_key\": \"capped\","
        "                    \"anonymous\": \"capped\"},"
        " \"plans\": {\"capped\": {\"credits\": -1, \"limits\": {"
        "   \"api_calls\": {\"limit\": 50, \"mode\": \"hard\"},"
        "   \"ai_tokens\": {\"limit\": 1000, \"mode\": \"hard\"},"
        "   \"batch_jobs\": {\"unlimited\": true}}}}}",
        file);
  fclose(file);
  if (th_broker_start(&broker, PARTITIONS) ||
      th_run_start(&run, broker.bootstrap, state_dir, extra))
    return -1;
  return 0;
}

/* The instance stops cleanly (under the sanitizers: without a report),
 * after a grant, a release and a settlement on it. */
static void test_clean_stop(void **state) {
  (void)state;
  char path[256];
  long status;
  char *gone = reserve_ok("user:last", "api_calls", 3, 60);
  char *used = reserve_ok("user:last", "api_calls", 4, 60);
  snprintf(path, sizeof(path), "/v1/subjects/user:last/reservations/%s", gone);
  json_decref(request("DELETE", path, NULL, &status));
  assert_int_equal(status, 200);
  post_usage("user:last", "api_calls", 5, used, "last-1");
  json_decref(wait_quota("user:last", "api_calls", 5, 0, 0));
  free(gone);
  free(used);
  assert_int_equal(th_stop(run.pid), 0);
  run.pid = 0;
}

static int teardown(void **state) {
  (void)state;
  if (run.pid)
    th_stop(run.pid);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
  return 0;
}

/* ---- 200 concurrent reservations, limit 50 --------------------------------
 */

typedef struct {
  pthread_barrier_t *start;
  long status;
  int allowed;
  char id[80];
  char reason[64];
} racer_t;

static size_t collect(char *data, size_t size, size_t count, void *opaque) {
  char **text = opaque;
  size_t have = *text ? strlen(*text) : 0, n = size * count;
  char *grown = realloc(*text, have + n + 1);
  if (!grown)
    return 0;
  memcpy(grown + have, data, n);
  grown[have + n] = '\0';
  *text = grown;
  return n;
}

/* One racer's reservation, on a connection of its own (curl's handle is
 * made and freed here: th_http_request keeps one per thread). */
static void *race(void *arg) {
  racer_t *racer = arg;
  char *text = NULL, auth[256], url[128];
  const char *body =
      "{\"feature\": \"api_calls\", \"quantity\": 1, \"ttl_s\": 3600}";
  snprintf(auth, sizeof(auth), "Authorization: Bearer %s", th_api_key());
  snprintf(url, sizeof(url),
           "http://127.0.0.1:%d/v1/subjects/user:racer/reservations", run.port);
  CURL *curl = curl_easy_init();
  struct curl_slist *headers = curl_slist_append(NULL, auth);
  headers = curl_slist_append(headers, "Content-Type: application/json");
  curl_easy_setopt(curl, CURLOPT_URL, url);
  curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &text);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 60000L);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  pthread_barrier_wait(racer->start);
  if (curl_easy_perform(curl) == CURLE_OK) {
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &racer->status);
    json_t *json = json_loads(text ? text : "", 0, NULL);
    racer->allowed = json_is_true(json_object_get(json, "allowed"));
    const char *id = json_string_value(json_object_get(json, "reservation_id"));
    const char *reason = json_string_value(json_object_get(json, "reason"));
    snprintf(racer->id, sizeof(racer->id), "%s", id ? id : "");
    snprintf(racer->reason, sizeof(racer->reason), "%s", reason ? reason : "");
    json_decref(json);
  }
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
  free(text);
  return NULL;
}

static void test_concurrent_reservations_never_exceed(void **state) {
  (void)state;
  static racer_t racers[CONCURRENT];
  pthread_t threads[CONCURRENT];
  pthread_barrier_t start;
  /* The subject's partition is served (and curl initialised) first. */
  json_t *ready = wait_quota("user:racer", "api_calls", 0, 0, 0);
  json_decref(ready);
  pthread_barrier_init(&start, NULL, CONCURRENT);
  int64_t began = th_now_ms();
  for (int i = 0; i < CONCURRENT; i++) {
    racers[i] = (racer_t){.start = &start};
    assert_int_equal(pthread_create(&threads[i], NULL, race, &racers[i]), 0);
  }
  for (int i = 0; i < CONCURRENT; i++)
    pthread_join(threads[i], NULL);
  pthread_barrier_destroy(&start);
  int granted = 0, denied = 0;
  for (int i = 0; i < CONCURRENT; i++) {
    if (racers[i].status != 200)
      fail_msg("racer %d: status %ld", i, racers[i].status);
    if (racers[i].allowed) {
      granted++;
      assert_int_equal(strncmp(racers[i].id, "rsv_", 4), 0);
      for (int j = 0; j < i; j++)
        if (racers[j].allowed)
          assert_string_not_equal(racers[j].id, racers[i].id);
    } else {
      denied++;
      assert_string_equal(racers[i].reason, "limit_exceeded");
      assert_string_equal(racers[i].id, "");
    }
  }
  /* A figure, not a bound: the 200 answers (each grant after Kafka's
   * acknowledgement) on this machine, as busy as it is. */
  printf("# %d granted, %d denied; all %d answered in %lld ms\n", granted,
         denied, CONCURRENT, (long long)(th_now_ms() - began));
  assert_int_equal(granted, LIMIT);
  assert_int_equal(denied, CONCURRENT - LIMIT);
  /* Folded: the pre-check counts the 50 held and allows nothing more. */
  json_t *json = wait_quota("user:racer", "api_calls", 0, LIMIT, 0);
  assert_false(json_is_true(json_object_get(json, "allowed")));
  assert_int_equal(integer(json, "remaining"), 0);
  json_decref(json);
  assert_int_equal(th_metric_labeled(run.port, "tally_reservations_total",
                                     "{result=\"granted\"}"),
                   LIMIT);
}

/* ---- settling -------------------------------------------------------------
 */

static void test_usage_settles_its_reservation(void **state) {
  (void)state;
  char *less = reserve_ok("user:settler", "api_calls", 10, 600);
  char *more = reserve_ok("user:settler", "api_calls", 5, 600);
  json_t *json = wait_quota("user:settler", "api_calls", 0, 15, 0);
  assert_int_equal(integer(json, "remaining"), LIMIT - 15 - 1);
  json_decref(json);
  /* Less than held: the hold goes, 7 count. */
  post_usage("user:settler", "api_calls", 7, less, "settle-1");
  json_decref(wait_quota("user:settler", "api_calls", 7, 5, 0));
  /* More than held: 9 count. */
  post_usage("user:settler", "api_calls", 9, more, "settle-2");
  json = wait_quota("user:settler", "api_calls", 16, 0, 0);
  assert_int_equal(integer(json, "remaining"), LIMIT - 16 - 1);
  json_decref(json);
  /* Settled already, or never made: the usage still counts, once. */
  post_usage("user:settler", "api_calls", 2, more, "settle-3");
  post_usage("user:settler", "api_calls", 1, "rsv_never_made", "settle-4");
  post_usage("user:settler", "api_calls", 1, "rsv_never_made", "settle-4");
  json_decref(wait_quota("user:settler", "api_calls", 19, 0, 0));
  /* The hard limit holds with usage and holds together: 31 remain. */
  char *rest = reserve_ok("user:settler", "api_calls", LIMIT - 19, 600);
  long status;
  json = reserve("user:settler",
                 "{\"feature\": \"api_calls\", \"quantity\": 1}", &status);
  assert_int_equal(status, 200);
  assert_false(json_is_true(json_object_get(json, "allowed")));
  assert_true(json_is_null(json_object_get(json, "reservation_id")));
  assert_int_equal(integer(json, "used"), 19);
  assert_int_equal(integer(json, "held"), LIMIT - 19);
  json_decref(json);
  free(less);
  free(more);
  free(rest);
}

/* ---- DELETE -----------------------------------------------------------------
 */

static void test_delete_releases(void **state) {
  (void)state;
  char path[256];
  long status;
  char *id = reserve_ok("user:releaser", "api_calls", 20, 600);
  json_decref(wait_quota("user:releaser", "api_calls", 0, 20, 0));
  snprintf(path, sizeof(path), "/v1/subjects/user:releaser/reservations/%s",
           id);
  json_t *json = request("DELETE", path, NULL, &status);
  assert_int_equal(status, 200);
  assert_true(json_is_true(json_object_get(json, "released")));
  assert_string_equal(
      json_string_value(json_object_get(json, "reservation_id")), id);
  json_decref(json);
  json_decref(wait_quota("user:releaser", "api_calls", 0, 0, 0));
  /* Released already, or never made: 404; a malformed id: 400. */
  json = request("DELETE", path, NULL, &status);
  assert_int_equal(status, 404);
  assert_string_equal(error_code(json), "reservation_not_found");
  json_decref(json);
  json = request("DELETE", "/v1/subjects/user:releaser/reservations/rsv_nope",
                 NULL, &status);
  assert_int_equal(status, 404);
  json_decref(json);
  json = request("DELETE", "/v1/subjects/user:releaser/reservations/a%20b",
                 NULL, &status);
  assert_int_equal(status, 400);
  assert_string_equal(error_field(json), "reservation_id");
  json_decref(json);
  /* The whole limit is free again. */
  char *all = reserve_ok("user:releaser", "api_calls", LIMIT, 600);
  free(all);
  free(id);
}

/* ---- TTL --------------------------------------------------------------------
 */

static void test_ttl_expires(void **state) {
  (void)state;
  char path[256];
  long status;
  snprintf(path, sizeof(path), "/v1/subjects/user:brief/reservations");
  json_t *json = request("POST", path,
                         "{\"feature\": \"api_calls\", \"quantity\": 30, "
                         "\"ttl_s\": 2}",
                         &status);
  assert_int_equal(status, 200);
  assert_true(json_is_true(json_object_get(json, "allowed")));
  long long expires_at = integer(json, "expires_at_ms");
  assert_int_equal(integer(json, "ttl_s"), 2);
  assert_int_equal(integer(json, "held"), 30);
  json_decref(json);
  /* Once the processor committed everything up to now, the hold is in
   * the folded state (whether or not a tick dropped it already)... */
  assert_int_equal(th_wait_caught_up(run.port, broker.bootstrap, "tally.usage",
                                     PARTITIONS, 60000),
                   0);
  /* ...the answers leave it out once the clock passed expires_at... */
  json_decref(wait_quota("user:brief", "api_calls", 0, 0, 0));
  /* ...and a tick drops it from the folded state (no other event of this
   * subject exists), so even a time before the expiry shows none. */
  json_decref(wait_quota("user:brief", "api_calls", 0, 0, expires_at - 1000));
  char *again = reserve_ok("user:brief", "api_calls", LIMIT, 600);
  free(again);
}

/* ---- bad input
 * ---------------------------------------------------------------- */

static void test_bad_input(void **state) {
  (void)state;
  static const struct {
    const char *subject, *body;
    long status;
    const char *code, *field;
  } cases[] = {
      {"user:bad", "{\"quantity\": 1}", 400, "bad_request", "feature"},
      {"user:bad", "{\"feature\": \"nope\", \"quantity\": 1}", 400,
       "unknown_feature", "feature"},
      {"user:bad", "{\"feature\": 7, \"quantity\": 1}", 400, "bad_request",
       "feature"},
      {"user:bad", "{\"feature\": \"api_calls\"}", 400, "bad_request",
       "quantity"},
      {"user:bad", "{\"feature\": \"api_calls\", \"quantity\": 0}", 400,
       "bad_request", "quantity"},
      {"user:bad", "{\"feature\": \"api_calls\", \"quantity\": -3}", 400,
       "bad_request", "quantity"},
      {"user:bad", "{\"feature\": \"api_calls\", \"quantity\": 1.5}", 400,
       "bad_request", "quantity"},
      {"user:bad", "{\"feature\": \"api_calls\", \"quantity\": 1000000000001}",
       400, "bad_request", "quantity"},
      {"user:bad",
       "{\"feature\": \"api_calls\", \"quantity\": 1, \"ttl_s\": 0}", 400,
       "bad_request", "ttl_s"},
      {"user:bad",
       "{\"feature\": \"api_calls\", \"quantity\": 1, \"ttl_s\": 86401}", 400,
       "bad_request", "ttl_s"},
      {"user:bad", "{\"feature\": \"api_calls\", \"quantity\": 1, \"ttl\": 5}",
       400, "bad_request", NULL},
      {"user:bad", "{\"feature\": \"api_calls\", ", 400, "malformed_json",
       NULL},
      {"user:bad", "[1]", 400, "bad_request", NULL},
      {"api_key:raw-key-not-a-hash",
       "{\"feature\": \"api_calls\", \"quantity\": 1}", 400, "bad_subject",
       "subject"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    long status = 0;
    json_t *json = reserve(cases[i].subject, cases[i].body, &status);
    if (status != cases[i].status || !error_code(json) ||
        strcmp(error_code(json), cases[i].code) != 0 ||
        (cases[i].field && (!error_field(json) ||
                            strcmp(error_field(json), cases[i].field) != 0)))
      fail_msg("case %zu (%s): %ld %s", i, cases[i].body, status,
               json_dumps(json, 0));
    assert_non_null(json_string_value(
        json_object_get(json_object_get(json, "error"), "message")));
    json_decref(json);
  }
  /* A settling event's reservation_id is checked too. */
  long status = 0;
  json_t *json = request("POST", "/v1/events",
                         "{\"event_id\": \"x\", \"subject\": \"user:bad\", "
                         "\"feature\": \"api_calls\", \"quantity\": 1, "
                         "\"reservation_id\": \"not valid\"}",
                         &status);
  assert_int_equal(status, 400);
  json_decref(json);
  /* Nothing was held. */
  json_t *q = quota("user:bad", "api_calls", 0);
  assert_non_null(q);
  assert_int_equal(integer(q, "held"), 0);
  json_decref(q);
}

/* At most 100 open reservations per subject: the 101st is 409. */
static void test_open_reservations_are_bounded(void **state) {
  (void)state;
  int64_t began = th_now_ms();
  for (int i = 0; i < 100; i++)
    free(reserve_ok("user:hoarder", "batch_jobs", 1, 600));
  int64_t reserving = th_now_ms() - began;
  /* A figure beside its ceiling, not a bound: a grant waits for Kafka's
   * acknowledgement as a one-event POST /v1/events does. */
  began = th_now_ms();
  for (int i = 0; i < 100; i++) {
    char event_id[32];
    snprintf(event_id, sizeof(event_id), "hoard-%d", i);
    post_usage("user:hoarder", "batch_jobs", 1, NULL, event_id);
  }
  printf("# 100 sequential grants: %.2f ms each; 100 one-event POST "
         "/v1/events: %.2f ms each\n",
         reserving / 100.0, (double)(th_now_ms() - began) / 100.0);
  long status;
  json_t *json =
      reserve("user:hoarder", "{\"feature\": \"batch_jobs\", \"quantity\": 1}",
              &status);
  assert_int_equal(status, 409);
  assert_string_equal(error_code(json), "too_many_reservations");
  json_decref(json);
}

/* ---- SIGKILL and restart
 * ------------------------------------------------------- */

static void test_holds_survive_kill(void **state) {
  (void)state;
  free(reserve_ok("user:durable", "ai_tokens", 100, 3600));
  free(reserve_ok("user:durable", "ai_tokens", 250, 3600));
  post_usage("user:durable", "ai_tokens", 40, NULL, "durable-1");
  json_decref(wait_quota("user:durable", "ai_tokens", 40, 350, 0));
  /* One more, killed right after Kafka acknowledged it: whether or not it
   * was folded before the kill, it is in the log, so it counts after. */
  free(reserve_ok("user:durable", "ai_tokens", 70, 3600));
  th_kill9(run.pid);
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, extra), 0);
  json_t *json = wait_quota("user:durable", "ai_tokens", 40, 420, 0);
  assert_int_equal(integer(json, "remaining"), 1000 - 40 - 420 - 1);
  json_decref(json);
  /* The restarted owner decides with them: 540 fit, 541 do not. */
  long status;
  json = reserve("user:durable",
                 "{\"feature\": \"ai_tokens\", \"quantity\": 541}", &status);
  assert_int_equal(status, 200);
  assert_false(json_is_true(json_object_get(json, "allowed")));
  assert_int_equal(integer(json, "held"), 420);
  json_decref(json);
  free(reserve_ok("user:durable", "ai_tokens", 540, 3600));
  json_decref(wait_quota("user:durable", "ai_tokens", 40, 960, 0));
  /* And the racers' 50 holds came back too. */
  json_decref(wait_quota("user:racer", "api_calls", 0, LIMIT, 0));
}

/* A partition move: a new instance with no state of its own (another
 * machine) restores the partitions from the changelog (or builds standby
 * copies of them from it first) and replays the log's tail; the holds are
 * in the subject records it restores. */
static void test_holds_move_to_a_fresh_instance(void **state) {
  (void)state;
  char moved_dir[700];
  th_kill9(run.pid);
  snprintf(moved_dir, sizeof(moved_dir), "%s/moved", dir);
  assert_int_equal(th_run_start(&run, broker.bootstrap, moved_dir, extra), 0);
  json_decref(wait_quota("user:durable", "ai_tokens", 40, 960, 0));
  json_decref(wait_quota("user:racer", "api_calls", 0, LIMIT, 0));
  json_decref(wait_quota("user:settler", "api_calls", 19, LIMIT - 19, 0));
  /* Its state came from the changelog: restored at assignment, or as a
   * standby copy built while the killed member still looked alive, then
   * promoted (README "Standby replicas"). */
  assert_true(th_metric_sum(run.port, "tally_changelog_restores_total") +
                  th_metric_sum(run.port, "tally_standby_catchups_total") >
              0);
  /* The new owner decides with them (the reads above may have come from
   * a standby copy before it took the partitions over: a reservation is
   * decided by the owner only, 503 partition_moving until then). */
  long status;
  json_t *json = NULL;
  int64_t deadline = th_now_ms() + 60000;
  for (;;) {
    json = reserve("user:racer",
                   "{\"feature\": \"api_calls\", \"quantity\": 1}", &status);
    if (status != 503 || th_now_ms() > deadline)
      break;
    json_decref(json);
    th_sleep_ms(100);
  }
  assert_int_equal(status, 200);
  assert_false(json_is_true(json_object_get(json, "allowed")));
  assert_int_equal(integer(json, "held"), LIMIT);
  json_decref(json);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_concurrent_reservations_never_exceed),
      cmocka_unit_test(test_usage_settles_its_reservation),
      cmocka_unit_test(test_delete_releases),
      cmocka_unit_test(test_ttl_expires),
      cmocka_unit_test(test_bad_input),
      cmocka_unit_test(test_open_reservations_are_bounded),
      cmocka_unit_test(test_holds_survive_kill),
      cmocka_unit_test(test_holds_move_to_a_fresh_instance),
      cmocka_unit_test(test_clean_stop),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
