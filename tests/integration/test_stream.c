/*
 * test_stream.c - live usage, GET /v1/subjects/{s}/stream (Server-Sent
 * Events), against a real `tally run` on the embedded broker:
 *
 * - the first event is the subject's usage, as /usage answers it; each
 *   event acknowledged by Kafka then arrives on the stream as a usage
 *   event with the new total, and each alert the fold writes as an alert
 *   event with the id /alerts lists;
 * - the time from Kafka's acknowledgement of an event to its usage on the
 *   stream, p50 and p99, printed next to the same time seen by a client
 *   polling /usage as fast as it can (the ceiling, measured in the same
 *   run); never asserted (the machine is shared);
 * - a client that disconnects and comes back with Last-Event-ID gets the
 *   current usage and every alert written while it was away;
 * - no key: 401; at most 64 streams per instance: the next is 503
 *   too_many_streams.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#define PARTITIONS 4
#define SUBJECT "user:s-alice"
#define STREAM_MAX 64
#define ROUNDS 40

static const char config_json[] =
    "{\"thresholds\": [25, 50, 75, 90, 100],"
    " \"default_plans\": {\"anonymous\": \"t\", \"user\": \"t\", \"api_key\": "
    "\"t\"},"
    " \"plans\": {\"t\": {\"credits\": -1, \"limits\": {\"api_calls\": "
    "{\"limit\": 100, \"mode\": \"hard\"}}}}}";

static int port;

/* ---- a stream reader on its own thread --------------------------------- */

#define EVENTS_MAX 1024

typedef struct {
  char type[16];
  char id[64];
  json_t *data;
  int64_t at_ms; /* monotonic, when it arrived */
} sse_event_t;

typedef struct {
  pthread_t thread;
  pthread_mutex_t lock;
  char last_id_in[64]; /* Last-Event-ID to send ("" none) */
  char line[65536];
  size_t line_len;
  char type[16], id[64];
  char *data;
  sse_event_t events[EVENTS_MAX];
  size_t count;
  long status;
  int stop;
} reader_t;

static void take_line(reader_t *r) {
  r->line[r->line_len] = '\0';
  if (r->line_len == 0) { /* the end of an event */
    if (r->data && r->count < EVENTS_MAX) {
      pthread_mutex_lock(&r->lock);
      sse_event_t *e = &r->events[r->count];
      snprintf(e->type, sizeof(e->type), "%s", r->type);
      snprintf(e->id, sizeof(e->id), "%s", r->id);
      e->data = json_loads(r->data, 0, NULL);
      e->at_ms = th_now_ms();
      r->count++;
      pthread_mutex_unlock(&r->lock);
    }
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

static int on_progress(void *opaque, curl_off_t a, curl_off_t b, curl_off_t c,
                       curl_off_t d) {
  reader_t *r = opaque;
  (void)a, (void)b, (void)c, (void)d;
  return r->stop; /* non-zero aborts the transfer */
}

static void *reader_main(void *arg) {
  reader_t *r = arg;
  CURL *curl = curl_easy_init();
  char url[256], auth[256], last[128];
  struct curl_slist *headers = NULL;
  snprintf(url, sizeof(url),
           "http://127.0.0.1:%d/v1/subjects/" SUBJECT "/stream", port);
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
  curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(curl, CURLOPT_XFERINFODATA, r);
  curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(curl, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_perform(curl);
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &r->status);
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
  return NULL;
}

static reader_t *reader_start(const char *last_id) {
  reader_t *r = calloc(1, sizeof(*r));
  pthread_mutex_init(&r->lock, NULL);
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

static long long usage_quantity(const json_t *usage) {
  json_t *entry =
      json_object_get(json_object_get(usage, "features"), "api_calls");
  return entry ? json_integer_value(json_object_get(entry, "quantity")) : -1;
}

/* Waits for a usage event with quantity (20 s); its arrival time. */
static int64_t wait_usage_event(reader_t *r, size_t *from, long long quantity) {
  int64_t deadline = th_now_ms() + 20000;
  while (th_now_ms() < deadline) {
    pthread_mutex_lock(&r->lock);
    for (; *from < r->count; (*from)++) {
      sse_event_t *e = &r->events[*from];
      if (!strcmp(e->type, "usage") && usage_quantity(e->data) == quantity) {
        int64_t at = e->at_ms;
        pthread_mutex_unlock(&r->lock);
        return at;
      }
    }
    pthread_mutex_unlock(&r->lock);
    th_sleep_ms(1);
  }
  fail_msg("no usage event with api_calls %lld on the stream", quantity);
  return -1;
}

/* ---- HTTP ------------------------------------------------------------- */

static void post_calls(const char *event_id, int quantity) {
  char body[256];
  long status;
  char *text = NULL;
  snprintf(body, sizeof(body),
           "{\"event_id\": \"%s\", \"subject\": \"" SUBJECT
           "\", \"feature\": \"api_calls\", \"quantity\": %d}",
           event_id, quantity);
  assert_int_equal(th_http_request(port, "POST", "/v1/events", TH_AUTH_DEFAULT,
                                   body, strlen(body), NULL, &status, &text),
                   0);
  if (status != 202)
    fail_msg("POST /v1/events: %ld %s", status, text);
  free(text);
}

static long long polled_quantity(void) {
  long status;
  char *text = NULL;
  long long quantity = -1;
  if (th_http_get(port, "/v1/subjects/" SUBJECT "/usage", &status, &text) ==
          0 &&
      status == 200) {
    json_t *json = json_loads(text, 0, NULL);
    quantity = usage_quantity(json);
    json_decref(json);
  }
  free(text);
  return quantity;
}

static json_t *alerts_now(void) {
  long status;
  char *text = NULL;
  assert_int_equal(
      th_http_get(port, "/v1/subjects/" SUBJECT "/alerts", &status, &text), 0);
  json_t *json = json_loads(text, 0, NULL);
  free(text);
  return json;
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

/* Whether the reader got an alert event with this id. */
static int has_alert(reader_t *r, const char *id) {
  int found = 0;
  pthread_mutex_lock(&r->lock);
  for (size_t i = 0; i < r->count && !found; i++)
    found = !strcmp(r->events[i].type, "alert") &&
            !strcmp(json_string_value(
                        json_object_get(r->events[i].data, "alert_id")),
                    id);
  pthread_mutex_unlock(&r->lock);
  return found;
}

/* A raw stream request; the status line's code (0: no answer). */
static int raw_stream(int *fd_out) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)))
    return 0;
  char request[512], answer[256] = "";
  int n = snprintf(request, sizeof(request),
                   "GET /v1/subjects/" SUBJECT "/stream HTTP/1.1\r\nHost: x\r\n"
                   "Authorization: Bearer %s\r\n\r\n",
                   th_api_key());
  if (write(fd, request, (size_t)n) != n)
    return 0;
  ssize_t got = read(fd, answer, sizeof(answer) - 1);
  *fd_out = fd;
  return got > 12 ? atoi(answer + 9) : 0;
}

static void test_stream(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t run;
  char *dir = th_mkdtemp("stream");
  char state_dir[600], config[600];
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  snprintf(config, sizeof(config), "%s/tally.json", dir);
  FILE *file = fopen(config, "w");
  assert_non_null(file);
  fputs(config_json, file);
  fclose(file);
  const char *const extra[] = {"--config", config, NULL};
  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, extra), 0);
  port = run.port;

  /* No key. */
  long status;
  char *text = NULL;
  assert_int_equal(th_http_request(port, "GET",
                                   "/v1/subjects/" SUBJECT "/stream", NULL,
                                   NULL, 0, NULL, &status, &text),
                   0);
  assert_int_equal(status, 401);
  free(text);

  post_calls("s-0", 1);
  int64_t deadline = th_now_ms() + 20000;
  while (polled_quantity() != 1 && th_now_ms() < deadline)
    th_sleep_ms(20);
  assert_int_equal(polled_quantity(), 1);

  /* The first event is the usage as /usage answers it. */
  reader_t *r = reader_start(NULL);
  size_t seen = 0;
  wait_usage_event(r, &seen, 1);
  assert_int_equal(r->events[0].type[0], 'u');

  /* Acknowledged -> on the stream, next to a poller's view. */
  int64_t streamed[ROUNDS], polled[ROUNDS];
  size_t n_streamed = 0, n_polled = 0;
  long long quantity = 1;
  char event_id[32];
  for (int i = 1; i <= ROUNDS; i++) {
    snprintf(event_id, sizeof(event_id), "s-%d", i);
    post_calls(event_id, 1);
    int64_t acked = th_now_ms();
    quantity++;
    if (i % 2) {
      streamed[n_streamed++] = wait_usage_event(r, &seen, quantity) - acked;
    } else {
      while (polled_quantity() != quantity && th_now_ms() < acked + 20000)
        ;
      polled[n_polled++] = th_now_ms() - acked;
      wait_usage_event(r, &seen, quantity); /* it comes on the stream too */
    }
  }
  printf("# acknowledged -> visible, %zu events each: stream p50 %lld ms, p99 "
         "%lld ms; a client polling /usage in a loop (the ceiling) p50 %lld "
         "ms, p99 %lld ms\n",
         n_streamed, (long long)percentile(streamed, n_streamed, 50),
         (long long)percentile(streamed, n_streamed, 99),
         (long long)percentile(polled, n_polled, 50),
         (long long)percentile(polled, n_polled, 99));

  /* 41 of 100: the 25 % alert came on the stream with /alerts' id. */
  json_t *alerts = alerts_now();
  json_t *list = json_object_get(alerts, "alerts");
  assert_int_equal(json_array_size(list), 1);
  const char *first_alert =
      json_string_value(json_object_get(json_array_get(list, 0), "alert_id"));
  deadline = th_now_ms() + 10000;
  while (!has_alert(r, first_alert) && th_now_ms() < deadline)
    th_sleep_ms(10);
  assert_true(has_alert(r, first_alert));
  json_decref(alerts);

  /* Away: the last id seen, then 50 and 75 % cross while disconnected. */
  char last_id[64];
  pthread_mutex_lock(&r->lock);
  snprintf(last_id, sizeof(last_id), "%s", r->events[r->count - 1].id);
  pthread_mutex_unlock(&r->lock);
  reader_stop(r);
  post_calls("s-away-1", 20);
  post_calls("s-away-2", 20);
  quantity += 40;
  deadline = th_now_ms() + 20000;
  while (polled_quantity() != quantity && th_now_ms() < deadline)
    th_sleep_ms(20);
  alerts = alerts_now();
  list = json_object_get(alerts, "alerts");
  assert_int_equal(json_array_size(list), 3);
  r = reader_start(last_id);
  seen = 0;
  wait_usage_event(r, &seen, quantity);
  for (size_t i = 0; i < 2; i++) { /* the two written while away */
    const char *id =
        json_string_value(json_object_get(json_array_get(list, i), "alert_id"));
    deadline = th_now_ms() + 10000;
    while (!has_alert(r, id) && th_now_ms() < deadline)
      th_sleep_ms(10);
    if (!has_alert(r, id))
      fail_msg("resumed with Last-Event-ID %s: alert %s missing", last_id, id);
  }
  json_decref(alerts);

  /* The bound: 64 streams in all; one more is refused. The first
   * reader's slot is freed once the keepalive finds it gone (2 s). */
  deadline = th_now_ms() + 15000;
  while (th_metric_sum(port, "tally_http_streams_open") != 1 &&
         th_now_ms() < deadline)
    th_sleep_ms(50);
  assert_int_equal(th_metric_sum(port, "tally_http_streams_open"), 1);
  int fds[STREAM_MAX];
  for (int i = 0; i < STREAM_MAX - 1; i++)
    assert_int_equal(raw_stream(&fds[i]), 200);
  int extra_fd = -1;
  assert_int_equal(raw_stream(&extra_fd), 503);
  close(extra_fd);
  assert_int_equal(th_metric_labeled(port, "tally_http_streams_total",
                                     "{result=\"refused\"}"),
                   1);
  for (int i = 0; i < STREAM_MAX - 1; i++)
    close(fds[i]);
  reader_stop(r);

  assert_int_equal(th_stop(run.pid), 0);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_stream),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
