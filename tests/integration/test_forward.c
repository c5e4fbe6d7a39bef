/*
 * test_forward.c - any instance's HTTP port answers for any subject: two
 * `tally run` in one group on the embedded broker (12 partitions), each
 * announcing on tally.members. Every subject asked of both instances gets
 * the same body, equal to what was sent, and some answers were forwarded
 * (X-Tally-Served-By names the other instance); a request marked as
 * forwarded needs the forwarding credential, not a bearer token (401), and
 * one that was forwarded already is never forwarded again (503); after
 * one instance is
 * SIGKILLed its partitions answer 503 partition_moving until the survivor
 * took them over, and then the right totals.
 */
#include "harness.h"

#include "tally_producer.h"
#include "tly_cluster_auth.h"
#include "tly_log.h"

#include <curl/curl.h>
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>

#define PARTITIONS 12
#define SUBJECTS 48
#define EVENTS_PER_SUBJECT 3
#define T0 1763800000000LL
/* Heartbeat 300 ms: a silent member is dropped after 900 ms. */
#define HEARTBEAT_MS "300"

typedef struct {
  long status;
  char *body;
  char served_by[256];
  char retry_after[16];
} answer_t;

static size_t collect(char *ptr, size_t size, size_t nmemb, void *opaque) {
  answer_t *answer = opaque;
  size_t n = size * nmemb, len = answer->body ? strlen(answer->body) : 0;
  char *grown = realloc(answer->body, len + n + 1);
  if (!grown)
    return 0;
  memcpy(grown + len, ptr, n);
  grown[len + n] = '\0';
  answer->body = grown;
  return n;
}

/* Keeps the value of a header named name (case-insensitive) in out. */
static void keep_header(const char *line, size_t len, const char *name,
                        char *out, size_t size) {
  size_t name_len = strlen(name);
  if (len <= name_len + 1 || strncasecmp(line, name, name_len) != 0 ||
      line[name_len] != ':')
    return;
  const char *value = line + name_len + 1;
  size_t value_len = len - name_len - 1;
  while (value_len && (*value == ' ' || *value == '\t'))
    value++, value_len--;
  while (value_len &&
         (value[value_len - 1] == '\r' || value[value_len - 1] == '\n' ||
          value[value_len - 1] == ' '))
    value_len--;
  snprintf(out, size, "%.*s", (int)value_len, value);
}

static size_t on_header(char *line, size_t size, size_t nmemb, void *opaque) {
  answer_t *answer = opaque;
  size_t len = size * nmemb;
  keep_header(line, len, "X-Tally-Served-By", answer->served_by,
              sizeof(answer->served_by));
  keep_header(line, len, "Retry-After", answer->retry_after,
              sizeof(answer->retry_after));
  return len;
}

/* GET path on port with the harness's token (or authorization when not
 * NULL) and an optional extra header. 0, or -1 when nothing answered. */
static int get(int port, const char *path, const char *authorization,
               const char *extra_header, answer_t *answer) {
  char url[512], auth[256];
  struct curl_slist *headers = NULL;
  memset(answer, 0, sizeof(*answer));
  CURL *curl = curl_easy_init();
  snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
  snprintf(auth, sizeof(auth), "Authorization: %s",
           authorization ? authorization : "");
  if (!authorization)
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", th_api_key());
  headers = curl_slist_append(headers, auth);
  if (extra_header)
    headers = curl_slist_append(headers, extra_header);
  curl_easy_setopt(curl, CURLOPT_URL, url);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, answer);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, answer);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 20000L);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  CURLcode rc = curl_easy_perform(curl);
  if (rc == CURLE_OK)
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &answer->status);
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
  return rc == CURLE_OK ? 0 : -1;
}

static long long expected[SUBJECTS];

static void produce_events(const char *bootstrap) {
  tally_producer_conf_t conf = {.brokers = bootstrap};
  char errstr[512], id[32], event_id[48];
  tally_producer_t *producer =
      tally_producer_new(&conf, errstr, sizeof(errstr));
  assert_non_null(producer);
  for (int s = 0; s < SUBJECTS; s++) {
    for (int e = 0; e < EVENTS_PER_SUBJECT; e++) {
      tly_event_t event = {0};
      snprintf(id, sizeof(id), "fwd-%03d", s);
      snprintf(event_id, sizeof(event_id), "fwd-%d-%d", s, e);
      event.event_id = event_id;
      event.occurred_at_ms = T0 + e;
      event.subject_kind = TLY_SUBJECT_USER;
      event.subject_id = id;
      event.body_kind = TLY_BODY_USAGE_RECORDED;
      event.body.usage.feature = "api_calls";
      event.body.usage.unit = "call";
      event.body.usage.quantity = s + e + 1;
      assert_int_equal(
          tally_producer_send(producer, &event, NULL, errstr, sizeof(errstr)),
          0);
      expected[s] += s + e + 1;
    }
  }
  assert_int_equal(tally_producer_flush(producer, 30000), 0);
  tally_producer_destroy(producer);
}

static void usage_path(int s, char *path, size_t size) {
  snprintf(path, size, "/v1/subjects/user:fwd-%03d/usage?at=%lld", s,
           (long long)T0 + 1000);
}

/* The folded quantity of api_calls in a usage body, -1 if none. */
static long long quantity_of(const char *body) {
  json_t *json = json_loads(body ? body : "", 0, NULL);
  json_t *value = json_object_get(
      json_object_get(json_object_get(json, "features"), "api_calls"),
      "quantity");
  long long quantity = json_is_integer(value) ? json_integer_value(value) : -1;
  json_decref(json);
  return quantity;
}

/* 1 when body is the partition_moving error (with Retry-After). */
static int is_moving(const answer_t *answer) {
  json_t *json = json_loads(answer->body ? answer->body : "", 0, NULL);
  const char *code = json_string_value(
      json_object_get(json_object_get(json, "error"), "code"));
  int moving = answer->status == 503 && code &&
               strcmp(code, "partition_moving") == 0 &&
               json_is_integer(json_object_get(json, "partition")) &&
               strcmp(answer->retry_after, "1") == 0;
  json_decref(json);
  return moving;
}

static int ready(int port) {
  answer_t answer;
  int ok =
      get(port, "/readyz", NULL, NULL, &answer) == 0 && answer.status == 200;
  free(answer.body);
  return ok;
}

static void test_any_instance_answers_for_any_subject(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t a, b;
  char *dir = th_mkdtemp("forward");
  char state_a[600], state_b[600], url_a[64], url_b[64], path[128];
  const char *extra_a[] = {"--members-heartbeat-ms", HEARTBEAT_MS,
                           "--instance-id", "fwd-a", NULL};
  const char *extra_b[] = {"--members-heartbeat-ms", HEARTBEAT_MS,
                           "--instance-id", "fwd-b", NULL};

  snprintf(state_a, sizeof(state_a), "%s/a", dir);
  snprintf(state_b, sizeof(state_b), "%s/b", dir);
  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);
  assert_int_equal(th_run_start(&a, broker.bootstrap, state_a, extra_a), 0);
  produce_events(broker.bootstrap);
  assert_int_equal(th_run_start(&b, broker.bootstrap, state_b, extra_b), 0);
  snprintf(url_a, sizeof(url_a), "http://127.0.0.1:%d", a.port);
  snprintf(url_b, sizeof(url_b), "http://127.0.0.1:%d", b.port);

  /* Both ready: the group split the partitions and both caught up. */
  int64_t deadline = th_now_ms() + 60000;
  while (!(ready(a.port) && ready(b.port)) && th_now_ms() < deadline)
    th_sleep_ms(100);
  assert_true(ready(a.port) && ready(b.port));

  /* Every subject, asked of both: the same body, what was sent. Answers
   * may be 503 partition_moving while the announcements settle, or come
   * from a copy (marked with as_of) while a partition moves: asked again
   * until both come fresh from the owner. */
  int forwarded = 0, owner_b = -1;
  for (int s = 0; s < SUBJECTS; s++) {
    answer_t from_a = {0}, from_b = {0};
    usage_path(s, path, sizeof(path));
    for (;;) {
      free(from_a.body);
      free(from_b.body);
      assert_int_equal(get(a.port, path, NULL, NULL, &from_a), 0);
      assert_int_equal(get(b.port, path, NULL, NULL, &from_b), 0);
      if (from_a.status == 200 && from_b.status == 200 &&
          !strstr(from_a.body, "\"as_of\"") &&
          !strstr(from_b.body, "\"as_of\""))
        break;
      if (from_a.status != 200)
        assert_true(is_moving(&from_a));
      if (from_b.status != 200)
        assert_true(is_moving(&from_b));
      if (th_now_ms() > deadline)
        fail_msg("subject %d: still %ld / %ld", s, from_a.status,
                 from_b.status);
      th_sleep_ms(50);
    }
    assert_string_equal(from_a.body, from_b.body);
    assert_int_equal(quantity_of(from_a.body), expected[s]);
    /* One instance answered both: itself, and through the other. */
    assert_string_equal(from_a.served_by, from_b.served_by);
    assert_true(strcmp(from_a.served_by, url_a) == 0 ||
                strcmp(from_a.served_by, url_b) == 0);
    forwarded += strcmp(from_a.served_by, url_a) != 0;
    forwarded += strcmp(from_b.served_by, url_b) != 0;
    if (strcmp(from_a.served_by, url_b) == 0 && owner_b < 0)
      owner_b = s;
    free(from_a.body);
    free(from_b.body);
  }
  printf("# %d subjects asked of both: %d answers were forwarded\n", SUBJECTS,
         forwarded);
  assert_int_equal(forwarded, SUBJECTS); /* one of each pair */
  /* ... and counted as forwards (a few more may have failed while the
   * announcements settled). */
  assert_true(th_metric_sum(a.port, "tally_http_forwards_total") +
                  th_metric_sum(b.port, "tally_http_forwards_total") >=
              SUBJECTS);
  assert_true(owner_b >= 0); /* b serves some partitions */

  /* CSV through a forward: the owner is asked with Accept: text/csv and
   * its CSV relayed, content type included. */
  {
    answer_t csv;
    char cycles[128];
    snprintf(cycles, sizeof(cycles), "/v1/subjects/user:fwd-%03d/cycles",
             owner_b);
    assert_int_equal(get(a.port, cycles, NULL, "Accept: text/csv", &csv), 0);
    assert_int_equal(csv.status, 200);
    assert_string_equal(csv.served_by, url_b);
    assert_non_null(csv.body);
    assert_int_equal(strncmp(csv.body, "start_ms,end_ms,final,feature,", 30),
                     0);
    free(csv.body);
  }

  /* Auth is checked where the request arrives, and again at the owner:
   * without the token, 401 whoever owns the subject. */
  answer_t answer;
  usage_path(owner_b, path, sizeof(path));
  assert_int_equal(get(a.port, path, "Bearer wrong", NULL, &answer), 0);
  assert_int_equal(answer.status, 401);
  free(answer.body);
  /* Marked as forwarded with only a client's bearer token: refused, a
   * forwarded request needs the forwarding credential. */
  assert_int_equal(get(a.port, path, NULL, "X-Tally-Forwarded: 1", &answer), 0);
  assert_int_equal(answer.status, 401);
  free(answer.body);
  assert_int_equal(th_metric_sum(a.port, "tally_http_forwards_rejected_total"),
                   1);
  /* A forwarded request (a good credential for a) reaching a non-owner is
   * not forwarded again. */
  tly_cluster_secret_t secret = {.len = strlen(th_cluster_secret())};
  memcpy(secret.bytes, th_cluster_secret(), secret.len);
  tly_forward_scope_t scope = {
      .method = "GET", .target = path, .owner_instance = "fwd-a"};
  char credential[TLY_FORWARD_CREDENTIAL_MAX], header[256];
  assert_int_equal(tly_cluster_forward_credential(
                       &secret, &scope,
                       tly_wall_ms() + TLY_FORWARD_CREDENTIAL_TTL_MS,
                       credential, sizeof(credential)),
                   0);
  snprintf(header, sizeof(header), TLY_FORWARD_AUTH_HEADER ": %s", credential);
  /* a answers it itself: from its standby copy of b's partition, marked
   * with as_of (README "Standby replicas"), or 503 partition_moving naming
   * b when it holds none. */
  assert_int_equal(get(a.port, path, "", header, &answer), 0);
  json_t *json = json_loads(answer.body, 0, NULL);
  assert_non_null(json);
  if (answer.status == 200) {
    assert_non_null(json_object_get(json, "as_of"));
    assert_string_equal(answer.served_by, url_a);
  } else {
    assert_int_equal(answer.status, 503);
    assert_true(is_moving(&answer));
    assert_string_equal(json_string_value(json_object_get(json, "owner")),
                        url_b);
  }
  json_decref(json);
  free(answer.body);

  /* SIGKILL b: until a took its partitions over, their subjects are
   * answered on a from a's standby copy (marked with as_of, the same
   * totals: nothing new was sent) or 503 partition_moving; never an
   * unmarked answer; then fresh by a. */
  th_kill9(b.pid);
  int64_t killed = th_now_ms();
  int moving = 0, copies = 0, first_was_marked = -1;
  deadline = killed + 60000;
  for (int s = 0; s < SUBJECTS; s++) {
    usage_path(s, path, sizeof(path));
    for (;;) {
      assert_int_equal(get(a.port, path, NULL, NULL, &answer), 0);
      int marked = answer.status == 200 && strstr(answer.body, "\"as_of\"");
      if (first_was_marked < 0 && s == owner_b)
        first_was_marked = answer.status == 503 || marked;
      if (answer.status == 200 && !marked)
        break;
      if (marked) {
        assert_int_equal(quantity_of(answer.body), expected[s]);
        copies++;
      } else if (!is_moving(&answer)) {
        fail_msg("subject %d after the kill: %ld %s", s, answer.status,
                 answer.body);
      } else {
        moving++;
      }
      free(answer.body);
      if (th_now_ms() > deadline)
        fail_msg("subject %d: a never took the partition over", s);
      th_sleep_ms(50);
    }
    assert_int_equal(quantity_of(answer.body), expected[s]);
    assert_string_equal(answer.served_by, url_a);
    free(answer.body);
  }
  printf("# after the kill: %d answers from a's copy, %d 503 "
         "partition_moving, all served fresh by a after %lld ms\n",
         copies, moving, (long long)(th_now_ms() - killed));
  assert_int_equal(first_was_marked, 1);

  assert_int_equal(th_stop(a.pid), 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_any_instance_answers_for_any_subject),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
