/*
 * stripe_fake_harness.c - the test side of the Stripe-shaped server (see
 * stripe_fake.h): running tests/stripe_fake as its own process, its
 * control routes, and the helpers of the usage reporting tests (config,
 * folded usage, events through the client library). They reach the fake
 * only over HTTP, as a test does.
 */
#include "stripe_fake.h"

#include "harness.h"
#include "tally_producer.h"

#include <jansson.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- the separate process ----------------------------------------------- */

int th_stripe_fake_start(th_stripe_fake_t *fake) {
  unsigned char random[8];
  char port_file[600], log_path[600];
  const char *bin = getenv("STRIPE_FAKE_BIN");
  char *dir = th_mkdtemp("stripe-fake");
  memset(fake, 0, sizeof(*fake));
  if (!dir || RAND_bytes(random, sizeof(random)) != 1) {
    free(dir);
    return -1;
  }
  snprintf(fake->dir, sizeof(fake->dir), "%s", dir);
  free(dir);
  snprintf(fake->secret_key, sizeof(fake->secret_key), "sk_test_fake_");
  for (size_t i = 0; i < sizeof(random); i++)
    snprintf(fake->secret_key + 13 + 2 * i, 3, "%02x", random[i]);
  snprintf(port_file, sizeof(port_file), "%s/port", fake->dir);
  snprintf(log_path, sizeof(log_path), "%s/fake.log", fake->dir);
  char *argv[] = {(char *)(bin && *bin ? bin : "./tests/stripe_fake"),
                  "--secret-key",
                  fake->secret_key,
                  "--port-file",
                  port_file,
                  NULL};
  fake->pid = th_spawn(argv, NULL, log_path, log_path);
  char *port = th_wait_file(port_file, 10000);
  if (!port) {
    th_kill9(fake->pid);
    return -1;
  }
  fake->port = atoi(port);
  free(port);
  return 0;
}

void th_stripe_fake_stop(th_stripe_fake_t *fake) {
  th_stop(fake->pid);
  th_rmrf(fake->dir);
}

int th_stripe_teardown(pid_t run_pid, th_broker_t *broker,
                       th_stripe_fake_t *fake, char *dir) {
  int rc = th_stop(run_pid);
  th_broker_stop(broker);
  th_stripe_fake_stop(fake);
  th_rmrf(dir);
  free(dir);
  if (rc != 0)
    printf("# tally run exited with %d\n", rc);
  return rc == 0 ? 0 : -1;
}

int th_stripe_fake_control(const th_stripe_fake_t *fake, const char *method,
                           const char *path, const char *json_body,
                           long *status, char **response) {
  char *text = NULL;
  if (th_http_request(fake->port, method, path, NULL, json_body,
                      json_body ? strlen(json_body) : 0, NULL, status, &text))
    return -1;
  if (response)
    *response = text;
  else
    free(text);
  return 0;
}

/* A control POST that must answer 200; 0 or -1. */
static int control_post(const th_stripe_fake_t *fake, const char *path,
                        const char *json) {
  long status;
  return th_stripe_fake_control(fake, "POST", path, json, &status, NULL) == 0 &&
                 status == 200
             ? 0
             : -1;
}

int th_stripe_fake_fault(const th_stripe_fake_t *fake, const char *json) {
  return control_post(fake, "/_fake/faults", json);
}

int th_stripe_fake_add_customer(const th_stripe_fake_t *fake, const char *id) {
  char body[256];
  snprintf(body, sizeof(body), "{\"id\": \"%s\"}", id);
  return control_post(fake, "/_fake/customers", body);
}

int th_stripe_fake_add_meter(const th_stripe_fake_t *fake,
                             const char *event_name, char *id, size_t id_size) {
  char body[256], *text = NULL;
  long status;
  snprintf(body, sizeof(body), "{\"event_name\": \"%s\"}", event_name);
  if (th_stripe_fake_control(fake, "POST", "/_fake/meters", body, &status,
                             &text) ||
      status != 200) {
    free(text);
    return -1;
  }
  json_t *meter = json_loads(text, 0, NULL);
  free(text);
  const char *made = json_string_value(json_object_get(meter, "id"));
  int rc = made ? 0 : -1;
  if (made)
    snprintf(id, id_size, "%s", made);
  json_decref(meter);
  return rc;
}

int th_stripe_fake_set_clock(const th_stripe_fake_t *fake, int64_t offset_s) {
  char body[64];
  snprintf(body, sizeof(body), "{\"offset_s\": %lld}", (long long)offset_s);
  return control_post(fake, "/_fake/clock", body);
}

int th_stripe_fake_clear_faults(const th_stripe_fake_t *fake) {
  long status;
  return th_stripe_fake_control(fake, "DELETE", "/_fake/faults", NULL, &status,
                                NULL) == 0 &&
                 status == 200
             ? 0
             : -1;
}

/* A control GET's JSON answer (the caller's); NULL unless 200. */
static json_t *control_get(const th_stripe_fake_t *fake, const char *path) {
  long status;
  char *text = NULL;
  json_t *json = NULL;
  if (th_stripe_fake_control(fake, "GET", path, NULL, &status, &text) == 0 &&
      status == 200)
    json = json_loads(text, 0, NULL);
  free(text);
  return json;
}

json_t *th_stripe_fake_ledger(const th_stripe_fake_t *fake) {
  return control_get(fake, "/_fake/ledger");
}

json_t *th_stripe_fake_requests(const th_stripe_fake_t *fake) {
  json_t *log = control_get(fake, "/_fake/requests");
  json_t *requests = json_incref(json_object_get(log, "requests"));
  json_decref(log);
  return requests;
}

json_t *th_stripe_fake_last_request(const th_stripe_fake_t *fake) {
  json_t *log = control_get(fake, "/_fake/requests");
  if (!log)
    return NULL;
  json_t *requests = json_object_get(log, "requests");
  json_t *last = json_array_get(requests, json_array_size(requests) - 1);
  json_incref(last);
  json_decref(log);
  return last;
}

/* A ledger field ("value": the sum, "count") of (customer, event_name):
 * 0 when there is no such row, -1 when the fake does not answer. */
static long long ledger_field(const th_stripe_fake_t *fake,
                              const char *customer, const char *event_name,
                              const char *field) {
  json_t *ledger = th_stripe_fake_ledger(fake), *row;
  if (!ledger)
    return -1;
  long long sum = 0;
  size_t i;
  json_array_foreach(json_object_get(ledger, "meter_events"), i, row) {
    if (strcmp(json_string_value(json_object_get(row, "customer")), customer) ==
            0 &&
        strcmp(json_string_value(json_object_get(row, "event_name")),
               event_name) == 0)
      sum += json_integer_value(json_object_get(row, field));
  }
  json_decref(ledger);
  return sum;
}

long long th_stripe_fake_sum(const th_stripe_fake_t *fake, const char *customer,
                             const char *event_name) {
  return ledger_field(fake, customer, event_name, "value");
}

long long th_stripe_fake_count(const th_stripe_fake_t *fake,
                               const char *customer, const char *event_name) {
  return ledger_field(fake, customer, event_name, "count");
}

/* ---- the usage reporting tests ------------------------------------------ */

const char *th_stripe_fake_key_env(const th_stripe_fake_t *fake) {
  static char env[128];
  snprintf(env, sizeof(env), "TALLY_TEST_STRIPE_KEY=%s", fake->secret_key);
  return env;
}

char *th_stripe_report_config(const char *dir, const th_stripe_fake_t *fake,
                              int max_requests_per_s, int timeout_ms,
                              int retry_max_s) {
  char *path = malloc(600);
  if (!path)
    return NULL;
  snprintf(path, 600, "%s/config.json", dir);
  FILE *file = fopen(path, "w");
  if (!file) {
    free(path);
    return NULL;
  }
  fprintf(file,
          "{\"default_plans\": {\"user\": \"pay_per_use\"},\n"
          " \"stripe\": {\"api_base\": \"http://127.0.0.1:%d\",\n"
          "  \"secret_key_env\": \"TALLY_TEST_STRIPE_KEY\",\n"
          "  \"meters\": {\"api_calls\": \"api_requests\", "
          "\"storage_bytes\": \"storage\"},\n"
          "  \"report_window_s\": 3600, \"max_requests_per_s\": %d,\n"
          "  \"timeout_ms\": %d, \"retry_max_s\": %d}}\n",
          fake->port, max_requests_per_s, timeout_ms, retry_max_s);
  fclose(file);
  return path;
}

static void utc_date(int64_t t_ms, char *out, size_t size) {
  time_t t = (time_t)(t_ms / 1000);
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(out, size, "%Y-%m-%d", &tm);
}

long long th_folded_quantity(int port, const char *user_id, const char *feature,
                             int64_t from_ms, int64_t to_ms) {
  char path[512], from[16], to[16], *body = NULL;
  long status;
  utc_date(from_ms, from, sizeof(from));
  utc_date(to_ms, to, sizeof(to));
  snprintf(path, sizeof(path), "/v1/subjects/user:%s/usage/daily?from=%s&to=%s",
           user_id, from, to);
  if (th_http_get(port, path, &status, &body) || status != 200) {
    free(body);
    return -1;
  }
  json_t *json = json_loads(body, 0, NULL), *day;
  free(body);
  long long sum = 0;
  size_t i;
  json_array_foreach(json_object_get(json, "days"), i, day) {
    sum += json_integer_value(json_object_get(
        json_object_get(json_object_get(day, "features"), feature),
        "quantity"));
  }
  json_decref(json);
  return sum;
}

static int send_event(struct tally_producer *producer, tly_event_t *event) {
  char errstr[512];
  if (tally_producer_send(producer, event, NULL, errstr, sizeof(errstr))) {
    fprintf(stderr, "# producing %s: %s\n", event->event_id, errstr);
    return -1;
  }
  return 0;
}

/* An event of user:user_id (the strings stay the caller's). */
static tly_event_t user_event(const char *event_id, int64_t at_ms,
                              const char *user_id, tly_body_kind_t kind) {
  return (tly_event_t){.event_id = (char *)event_id,
                       .occurred_at_ms = at_ms,
                       .subject_kind = TLY_SUBJECT_USER,
                       .subject_id = (char *)user_id,
                       .body_kind = kind};
}

int th_send_usage(struct tally_producer *producer, const char *event_id,
                  int64_t at_ms, const char *user_id, const char *feature,
                  int64_t quantity) {
  tly_event_t event =
      user_event(event_id, at_ms, user_id, TLY_BODY_USAGE_RECORDED);
  event.body.usage.feature = (char *)feature;
  event.body.usage.quantity = quantity;
  event.body.usage.unit = "unit";
  return send_event(producer, &event);
}

int th_send_link(struct tally_producer *producer, const char *event_id,
                 int64_t at_ms, const char *user_id, const char *customer) {
  tly_event_t event =
      user_event(event_id, at_ms, user_id, TLY_BODY_CUSTOMER_LINKED);
  event.body.customer_linked.stripe_customer_id = (char *)customer;
  return send_event(producer, &event);
}
