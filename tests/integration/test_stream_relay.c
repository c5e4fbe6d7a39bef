/*
 * test_stream_relay.c - live usage routed to the owner: two `tally run` in
 * one group on the embedded broker, a subject served by b, its stream
 * asked of a:
 *
 * - a relays b's stream (200, X-Tally-Served-By naming b): the usage as
 *   b's /usage answers it, then each new total and the alert the fold
 *   writes, as they come; a counts it as relayed and as one of its open
 *   streams (the per-instance bound);
 * - the client goes away: both a's relay and b's stream close (their
 *   open-stream gauges back to 0);
 * - b is SIGKILLed (its partitions move to a): the relayed stream ends;
 *   two alerts are written meanwhile; the client reconnects to a with
 *   Last-Event-ID and gets the current usage and both alerts, now served
 *   by a itself: no gap.
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
#include <strings.h>

#include <cmocka.h>

#define PARTITIONS 4
#define CANDIDATES 16
#define HEARTBEAT_MS "300"

static const char config_json[] =
    "{\"thresholds\": [25, 50, 75, 90, 100],"
    " \"default_plans\": {\"anonymous\": \"t\", \"user\": \"t\", \"api_key\": "
    "\"t\"},"
    " \"plans\": {\"t\": {\"credits\": -1, \"limits\": {\"api_calls\": "
    "{\"limit\": 100, \"mode\": \"hard\"}}}}}";

/* ---- a stream reader on its own thread --------------------------------- */

#define EVENTS_MAX 256

typedef struct {
  char type[16];
  char id[64];
  json_t *data;
  int64_t at_ms; /* monotonic, when it arrived */
} sse_event_t;

typedef struct {
  pthread_t thread;
  pthread_mutex_t lock;
  int port;
  char subject[64];
  char last_id_in[64];
  char line[65536];
  size_t line_len;
  char type[16], id[64];
  char *data;
  sse_event_t events[EVENTS_MAX];
  size_t count;
  char served_by[128];
  long status;
  int stop, done;
} reader_t;

static void take_line(reader_t *r) {
  r->line[r->line_len] = '\0';
  if (r->line_len == 0) {
    pthread_mutex_lock(&r->lock);
    if (r->data && r->count < EVENTS_MAX) {
      sse_event_t *e = &r->events[r->count++];
      snprintf(e->type, sizeof(e->type), "%s", r->type);
      snprintf(e->id, sizeof(e->id), "%s", r->id);
      e->data = json_loads(r->data, 0, NULL);
      e->at_ms = th_now_ms();
    }
    pthread_mutex_unlock(&r->lock);
    free(r->data);
    r->data = NULL;
    r->type[0] = '\0';
  } else if (strncmp(r->line, "event: ", 7) == 0) {
    snprintf(r->type, sizeof(r->type), "%s", r->line + 7);
  } else if (strncmp(r->line, "id: ", 4) == 0) {
    snprintf(r->id, sizeof(r->id), "%s", r->line + 4);
  } else if (strncmp(r->line, "data: ", 6) == 0) {
    free(r->data);
    r->data = strdup(r->line + 6);
  }
  r->line_len = 0;
}

static size_t on_bytes(char *ptr, size_t size, size_t n, void *opaque) {
  reader_t *r = opaque;
  for (size_t i = 0; i < size * n; i++) {
    if (ptr[i] == '\n')
      take_line(r);
    else if (r->line_len + 1 < sizeof(r->line))
      r->line[r->line_len++] = ptr[i];
  }
  return size * n;
}

static size_t on_header(char *line, size_t size, size_t n, void *opaque) {
  reader_t *r = opaque;
  size_t len = size * n;
  if (len > 18 && strncasecmp(line, "X-Tally-Served-By:", 18) == 0) {
    const char *value = line + 18;
    while (*value == ' ')
      value++;
    size_t value_len = strcspn(value, "\r\n");
    pthread_mutex_lock(&r->lock);
    snprintf(r->served_by, sizeof(r->served_by), "%.*s", (int)value_len, value);
    pthread_mutex_unlock(&r->lock);
  }
  return len;
}

static int on_progress(void *opaque, curl_off_t a, curl_off_t b, curl_off_t c,
                       curl_off_t d) {
  reader_t *r = opaque;
  (void)a, (void)b, (void)c, (void)d;
  return r->stop;
}

static void *reader_main(void *arg) {
  reader_t *r = arg;
  CURL *curl = curl_easy_init();
  char url[256], auth[256], last[128];
  struct curl_slist *headers = NULL;
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/subjects/%s/stream",
           r->port, r->subject);
  snprintf(auth, sizeof(auth), "Authorization: Bearer %s", th_api_key());
  headers = curl_slist_append(headers, auth);
  if (r->last_id_in[0]) {
    snprintf(last, sizeof(last), "Last-Event-ID: %s", r->last_id_in);
    headers = curl_slist_append(headers, last);
  }
  curl_easy_setopt(curl, CURLOPT_URL, url);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_bytes);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, r);
  curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(curl, CURLOPT_XFERINFODATA, r);
  curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_perform(curl);
  long status = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
  pthread_mutex_lock(&r->lock);
  r->status = status;
  r->done = 1;
  pthread_mutex_unlock(&r->lock);
  return NULL;
}

static reader_t *reader_start(int port, const char *subject,
                              const char *last_id) {
  reader_t *r = calloc(1, sizeof(*r));
  pthread_mutex_init(&r->lock, NULL);
  r->port = port;
  snprintf(r->subject, sizeof(r->subject), "%s", subject);
  snprintf(r->last_id_in, sizeof(r->last_id_in), "%s", last_id ? last_id : "");
  assert_int_equal(pthread_create(&r->thread, NULL, reader_main, r), 0);
  return r;
}

static void reader_stop(reader_t *r) {
  r->stop = 1;
  pthread_join(r->thread, NULL);
  for (size_t i = 0; i < r->count; i++)
    json_decref(r->events[i].data);
  free(r->data);
  pthread_mutex_destroy(&r->lock);
  free(r);
}

static int reader_done(reader_t *r) {
  pthread_mutex_lock(&r->lock);
  int done = r->done;
  pthread_mutex_unlock(&r->lock);
  return done;
}

static long long usage_quantity(const json_t *usage) {
  json_t *entry =
      json_object_get(json_object_get(usage, "features"), "api_calls");
  return entry ? json_integer_value(json_object_get(entry, "quantity")) : -1;
}

/* Whether the reader got a usage event with quantity, or an alert with
 * id (quantity < 0). */
static int has_event(reader_t *r, long long quantity, const char *id) {
  int found = 0;
  pthread_mutex_lock(&r->lock);
  for (size_t i = 0; i < r->count && !found; i++) {
    sse_event_t *e = &r->events[i];
    if (quantity >= 0)
      found = !strcmp(e->type, "usage") && usage_quantity(e->data) == quantity;
    else
      found =
          !strcmp(e->type, "alert") &&
          !strcmp(json_string_value(json_object_get(e->data, "alert_id")), id);
  }
  pthread_mutex_unlock(&r->lock);
  return found;
}

/* When the usage event with quantity arrived (-1: not yet). */
static int64_t usage_at(reader_t *r, long long quantity) {
  int64_t at = -1;
  pthread_mutex_lock(&r->lock);
  for (size_t i = 0; i < r->count && at < 0; i++)
    if (!strcmp(r->events[i].type, "usage") &&
        usage_quantity(r->events[i].data) == quantity)
      at = r->events[i].at_ms;
  pthread_mutex_unlock(&r->lock);
  return at;
}

static int compare_ms(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

static int64_t percentile(int64_t *v, size_t n, int p) {
  qsort(v, n, sizeof(*v), compare_ms);
  size_t i = (n * (size_t)p + 99) / 100;
  return v[i ? i - 1 : 0];
}

static void wait_event(reader_t *r, long long quantity, const char *id) {
  int64_t deadline = th_now_ms() + 30000;
  while (!has_event(r, quantity, id) && th_now_ms() < deadline)
    th_sleep_ms(10);
  if (!has_event(r, quantity, id))
    fail_msg("not on the stream: %s %lld", id ? id : "usage", quantity);
}

/* ---- HTTP ------------------------------------------------------------- */

static void post_calls(int port, const char *subject, const char *event_id,
                       int quantity) {
  char body[256];
  long status;
  char *text = NULL;
  snprintf(body, sizeof(body),
           "{\"event_id\": \"%s\", \"subject\": \"%s\", \"feature\": "
           "\"api_calls\", \"quantity\": %d}",
           event_id, subject, quantity);
  assert_int_equal(th_http_request(port, "POST", "/v1/events", TH_AUTH_DEFAULT,
                                   body, strlen(body), NULL, &status, &text),
                   0);
  if (status != 202)
    fail_msg("POST /v1/events: %ld %s", status, text);
  free(text);
}

static size_t collect(char *ptr, size_t size, size_t n, void *opaque) {
  char **body = opaque;
  size_t len = *body ? strlen(*body) : 0;
  char *grown = realloc(*body, len + size * n + 1);
  if (!grown)
    return 0;
  memcpy(grown + len, ptr, size * n);
  grown[len + size * n] = '\0';
  *body = grown;
  return size * n;
}

static size_t served_by_header(char *line, size_t size, size_t n,
                               void *opaque) {
  char *out = opaque;
  size_t len = size * n;
  if (len > 18 && strncasecmp(line, "X-Tally-Served-By:", 18) == 0) {
    const char *value = line + 18;
    while (*value == ' ')
      value++;
    snprintf(out, 128, "%.*s", (int)strcspn(value, "\r\n"), value);
  }
  return len;
}

/* The subject's api_calls on /usage asked of port (-1: not 200), and who
 * answered into served_by (128 bytes; NULL: not wanted). */
static long long polled_quantity(int port, const char *subject,
                                 char *served_by) {
  char url[256], auth[256], who[128] = "";
  char *text = NULL;
  long status = 0;
  long long quantity = -1;
  struct curl_slist *headers = NULL;
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/subjects/%s/usage", port,
           subject);
  snprintf(auth, sizeof(auth), "Authorization: Bearer %s", th_api_key());
  headers = curl_slist_append(headers, auth);
  CURL *curl = curl_easy_init();
  curl_easy_setopt(curl, CURLOPT_URL, url);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &text);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, served_by_header);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, who);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 20000L);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  if (curl_easy_perform(curl) == CURLE_OK)
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
  if (status == 200) {
    json_t *json = json_loads(text ? text : "", 0, NULL);
    quantity = usage_quantity(json);
    json_decref(json);
  }
  free(text);
  if (served_by)
    snprintf(served_by, 128, "%s", who);
  return quantity;
}

/* The subject's alerts (as b or a answers through routing), newest first. */
static json_t *alerts_of(int port, const char *subject) {
  char path[128];
  long status;
  char *text = NULL;
  snprintf(path, sizeof(path), "/v1/subjects/%s/alerts", subject);
  assert_int_equal(th_http_get(port, path, &status, &text), 0);
  json_t *json = json_loads(text, 0, NULL);
  free(text);
  return json;
}

static int ready(int port) {
  long status;
  char *text = NULL;
  int ok = th_http_get(port, "/readyz", &status, &text) == 0 && status == 200;
  free(text);
  return ok;
}

static void wait_open(int port, long long open) {
  int64_t deadline = th_now_ms() + 20000;
  while (th_metric_sum(port, "tally_http_streams_open") != open &&
         th_now_ms() < deadline)
    th_sleep_ms(50);
  assert_int_equal(th_metric_sum(port, "tally_http_streams_open"), open);
}

static void test_stream_relayed_from_the_owner(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t a, b;
  char *dir = th_mkdtemp("stream_relay");
  char state_a[600], state_b[600], config[600], url_a[64], url_b[64];
  snprintf(state_a, sizeof(state_a), "%s/a", dir);
  snprintf(state_b, sizeof(state_b), "%s/b", dir);
  snprintf(config, sizeof(config), "%s/tally.json", dir);
  FILE *file = fopen(config, "w");
  assert_non_null(file);
  fputs(config_json, file);
  fclose(file);
  const char *extra_a[] = {
      "--config",   config,          "--members-heartbeat-ms",
      HEARTBEAT_MS, "--instance-id", "relay-a",
      NULL};
  const char *extra_b[] = {
      "--config",   config,          "--members-heartbeat-ms",
      HEARTBEAT_MS, "--instance-id", "relay-b",
      NULL};
  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);
  assert_int_equal(th_run_start(&a, broker.bootstrap, state_a, extra_a), 0);
  assert_int_equal(th_run_start(&b, broker.bootstrap, state_b, extra_b), 0);
  snprintf(url_a, sizeof(url_a), "http://127.0.0.1:%d", a.port);
  snprintf(url_b, sizeof(url_b), "http://127.0.0.1:%d", b.port);
  int64_t deadline = th_now_ms() + 60000;
  while (!(ready(a.port) && ready(b.port)) && th_now_ms() < deadline)
    th_sleep_ms(100);
  assert_true(ready(a.port) && ready(b.port));

  /* One call each for a few subjects; one that b serves. */
  char subject[64] = "", id[64];
  for (int i = 0; i < CANDIDATES; i++) {
    snprintf(subject, sizeof(subject), "user:relay-%d", i);
    snprintf(id, sizeof(id), "relay-%d-0", i);
    post_calls(a.port, subject, id, 1);
  }
  int found = 0;
  deadline = th_now_ms() + 60000;
  while (!found && th_now_ms() < deadline) {
    for (int i = 0; i < CANDIDATES && !found; i++) {
      snprintf(subject, sizeof(subject), "user:relay-%d", i);
      char served_by[128];
      found = polled_quantity(a.port, subject, served_by) == 1 &&
              strcmp(served_by, url_b) == 0;
    }
    if (!found)
      th_sleep_ms(100);
  }
  assert_true(found);

  /* The stream asked of a: relayed from the owner. */
  reader_t *r = NULL;
  deadline = th_now_ms() + 30000;
  for (;;) {
    r = reader_start(a.port, subject, NULL);
    int64_t until = th_now_ms() + 5000;
    while (!has_event(r, 1, NULL) && !reader_done(r) && th_now_ms() < until)
      th_sleep_ms(10);
    pthread_mutex_lock(&r->lock);
    int relayed = strcmp(r->served_by, url_b) == 0 && r->count > 0;
    pthread_mutex_unlock(&r->lock);
    if (relayed || th_now_ms() > deadline)
      break;
    reader_stop(r); /* the announcements were settling: again */
    th_sleep_ms(200);
  }
  pthread_mutex_lock(&r->lock);
  assert_string_equal(r->served_by, url_b);
  assert_string_equal(r->events[0].type, "usage");
  assert_int_equal(usage_quantity(r->events[0].data), 1);
  pthread_mutex_unlock(&r->lock);
  assert_true(th_metric_labeled(a.port, "tally_http_streams_total",
                                "{result=\"relayed\"}") >= 1);
  /* Counted against a's bound (and b serves it). */
  wait_open(a.port, 1);
  wait_open(b.port, 1);

  /* Events as they come, next to a stream of b itself (the ceiling, in
   * the same run): Kafka's acknowledgement to the usage on each. Printed,
   * never asserted (the machine is shared). */
  enum { ROUNDS = 10 };
  reader_t *direct = reader_start(b.port, subject, NULL);
  wait_event(direct, 1, NULL);
  int64_t relayed_ms[ROUNDS], direct_ms[ROUNDS];
  for (int i = 0; i < ROUNDS; i++) {
    snprintf(id, sizeof(id), "relay-lat-%d", i);
    post_calls(a.port, subject, id, 1);
    int64_t acked = th_now_ms();
    wait_event(r, 2 + i, NULL);
    wait_event(direct, 2 + i, NULL);
    relayed_ms[i] = usage_at(r, 2 + i) - acked;
    direct_ms[i] = usage_at(direct, 2 + i) - acked;
  }
  printf("# acknowledged -> on the stream, %d events: relayed by a p50 %lld "
         "ms, p99 %lld ms; b's own stream (the ceiling) p50 %lld ms, p99 "
         "%lld ms\n",
         ROUNDS, (long long)percentile(relayed_ms, ROUNDS, 50),
         (long long)percentile(relayed_ms, ROUNDS, 99),
         (long long)percentile(direct_ms, ROUNDS, 50),
         (long long)percentile(direct_ms, ROUNDS, 99));
  reader_stop(direct);
  /* 30 of 100: the 25 % alert. */
  post_calls(a.port, subject, "relay-live-1", 30 - 1 - ROUNDS);
  wait_event(r, 30, NULL);
  json_t *alerts = alerts_of(a.port, subject);
  json_t *list = json_object_get(alerts, "alerts");
  assert_int_equal(json_array_size(list), 1);
  wait_event(
      r, -1,
      json_string_value(json_object_get(json_array_get(list, 0), "alert_id")));
  json_decref(alerts);

  /* The client goes: a's relay and b's stream close. */
  reader_stop(r);
  wait_open(a.port, 0);
  wait_open(b.port, 0);

  /* Again, then b dies: its partitions move to a. */
  r = reader_start(a.port, subject, NULL);
  wait_event(r, 30, NULL);
  pthread_mutex_lock(&r->lock);
  assert_string_equal(r->served_by, url_b);
  pthread_mutex_unlock(&r->lock);
  th_kill9(b.pid);
  deadline = th_now_ms() + 30000;
  while (!reader_done(r) && th_now_ms() < deadline)
    th_sleep_ms(20);
  assert_true(reader_done(r)); /* the relayed stream ended */
  char last_id[64];
  pthread_mutex_lock(&r->lock);
  snprintf(last_id, sizeof(last_id), "%s", r->events[r->count - 1].id);
  pthread_mutex_unlock(&r->lock);
  reader_stop(r);
  /* 50 and 75 % cross while the client is away. */
  post_calls(a.port, subject, "relay-away-1", 20);
  post_calls(a.port, subject, "relay-away-2", 25);
  deadline = th_now_ms() + 60000;
  while (polled_quantity(a.port, subject, NULL) != 75 && th_now_ms() < deadline)
    th_sleep_ms(50);
  assert_int_equal(polled_quantity(a.port, subject, NULL), 75);
  alerts = alerts_of(a.port, subject);
  list = json_object_get(alerts, "alerts");
  assert_int_equal(json_array_size(list), 3);
  /* Reconnect with Last-Event-ID: the current usage, both alerts (a 503
   * while a takes the partition over: the client retries). */
  deadline = th_now_ms() + 60000;
  for (;;) {
    r = reader_start(a.port, subject, last_id);
    while (!has_event(r, 75, NULL) && !reader_done(r) && th_now_ms() < deadline)
      th_sleep_ms(10);
    if (has_event(r, 75, NULL) || th_now_ms() > deadline)
      break;
    reader_stop(r);
    th_sleep_ms(200);
  }
  wait_event(r, 75, NULL);
  for (size_t i = 0; i < 2; i++) {
    const char *alert_id =
        json_string_value(json_object_get(json_array_get(list, i), "alert_id"));
    wait_event(r, -1, alert_id);
  }
  pthread_mutex_lock(&r->lock);
  assert_string_equal(r->served_by, url_a);
  pthread_mutex_unlock(&r->lock);
  json_decref(alerts);
  reader_stop(r);

  assert_int_equal(th_stop(a.pid), 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_stream_relayed_from_the_owner),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
