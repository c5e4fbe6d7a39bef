/*
 * test_webhooks.c - alert webhooks against a real `tally run` on the
 * embedded broker and a receiver on loopback (libmicrohttpd, in this
 * process) that checks every request's Standard Webhooks signature with
 * OpenSSL's own HMAC (not tally's), answers 500 to the first two attempts
 * of each alert and 200 after:
 *
 * - one alert (user:w-1's 25 %) is answered 500 until released: every
 *   other alert, those after it on its partition too, arrives while it
 *   still fails (no head-of-line blocking);
 * - every alert the processor wrote (read back from the alerts topic)
 *   arrives, and the distinct webhook-ids are exactly that set, though
 *   tally is SIGKILLed after the first deliveries, and again while the
 *   blocked alert is being retried, and restarted each time (at least
 *   once: an id may come again, never one that is no alert);
 * - every request is signed with the secret, its timestamp current, its
 *   body the alert;
 * - a second endpoint that asks only for limit_exceeded and always fails
 *   gets that one alert, retried, then dead-lettered past give_up_s, with
 *   the endpoint and the last answer as the reason;
 * - a config naming a secret variable that is not set stops startup
 *   naming the field.
 */
#include "harness.h"

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <microhttpd.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#define PARTITIONS 4
#define SUBJECTS 4
#define SECRET_B64 "c2VjcmV0LWtleS1mb3ItdGFsbHktd2ViaG9va3M=" /* 31 bytes */
#define SECRET_RAW "secret-key-for-tally-webhooks"

#if MHD_VERSION < 0x00097002
typedef int mhd_result;
#else
typedef enum MHD_Result mhd_result;
#endif

/* ---- the receiver -------------------------------------------------------- */

#define IDS_MAX 256

typedef struct {
  pthread_mutex_t lock;
  char ids[IDS_MAX][700];
  int attempts[IDS_MAX];
  int accepted[IDS_MAX];
  size_t count;
  int bad_signatures, bad_bodies, dead_attempts, requests;
  /* The blocked alert (user:w-1's 25 %) is answered 500 until released:
   * the others, of its partition too, must arrive meanwhile. */
  int blocked_released, blocked_attempts;
} receiver_t;

static int is_blocked(const char *id) {
  size_t len = strlen(id);
  return strstr(id, ":user:w-1:") && len > 3 && !strcmp(id + len - 3, ":25");
}

static receiver_t receiver = {.lock = PTHREAD_MUTEX_INITIALIZER};

typedef struct {
  char *body;
  size_t len;
} upload_t;

static int signature_ok(const char *id, const char *timestamp, const char *body,
                        const char *header) {
  unsigned char mac[32], b64[64];
  unsigned int mac_len = 0;
  size_t len = strlen(id) + strlen(timestamp) + strlen(body) + 3;
  char *content = malloc(len);
  snprintf(content, len, "%s.%s.%s", id, timestamp, body);
  HMAC(EVP_sha256(), SECRET_RAW, (int)strlen(SECRET_RAW),
       (unsigned char *)content, strlen(content), mac, &mac_len);
  free(content);
  EVP_EncodeBlock(b64, mac, (int)mac_len);
  char want[80];
  snprintf(want, sizeof(want), "v1,%s", b64);
  return header && strcmp(header, want) == 0;
}

static mhd_result on_request(void *cls, struct MHD_Connection *connection,
                             const char *url, const char *method,
                             const char *version, const char *data,
                             size_t *data_size, void **state) {
  (void)cls, (void)method, (void)version;
  upload_t *upload = *state;
  if (!upload) {
    *state = calloc(1, sizeof(upload_t));
    return MHD_YES;
  }
  if (*data_size) {
    upload->body = realloc(upload->body, upload->len + *data_size + 1);
    memcpy(upload->body + upload->len, data, *data_size);
    upload->len += *data_size;
    upload->body[upload->len] = '\0';
    *data_size = 0;
    return MHD_YES;
  }
  const char *id =
      MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "webhook-id");
  const char *ts = MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
                                               "webhook-timestamp");
  const char *sig = MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
                                                "webhook-signature");
  unsigned status = 500;
  pthread_mutex_lock(&receiver.lock);
  receiver.requests++;
  long long skew = ts ? (long long)time(NULL) - atoll(ts) : 1000;
  if (!id || !ts || !upload->body || !signature_ok(id, ts, upload->body, sig) ||
      skew > 300 || skew < -300) {
    receiver.bad_signatures++;
  } else {
    json_t *body = json_loads(upload->body, 0, NULL);
    json_t *alert = json_object_get(body, "data");
    if (!alert ||
        strcmp(json_string_value(json_object_get(alert, "alert_id")), id) ||
        strcmp(json_string_value(json_object_get(body, "type")),
               json_string_value(json_object_get(alert, "type"))))
      receiver.bad_bodies++;
    json_decref(body);
    if (strcmp(url, "/dead") == 0) {
      receiver.dead_attempts++;
      status = 503;
    } else {
      size_t i = 0;
      while (i < receiver.count && strcmp(receiver.ids[i], id))
        i++;
      if (i == receiver.count && i < IDS_MAX)
        snprintf(receiver.ids[receiver.count++], sizeof(receiver.ids[0]), "%s",
                 id);
      int blocked = is_blocked(id) && !receiver.blocked_released;
      receiver.blocked_attempts += blocked;
      if (i < IDS_MAX && ++receiver.attempts[i] > 2 && !blocked) {
        receiver.accepted[i]++;
        status = 200;
      }
    }
  }
  pthread_mutex_unlock(&receiver.lock);
  struct MHD_Response *response =
      MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
  mhd_result rc = MHD_queue_response(connection, status, response);
  MHD_destroy_response(response);
  return rc;
}

static void on_done(void *cls, struct MHD_Connection *connection, void **state,
                    enum MHD_RequestTerminationCode code) {
  (void)cls, (void)connection, (void)code;
  upload_t *upload = *state;
  if (upload)
    free(upload->body);
  free(upload);
  *state = NULL;
}

/* Whether the blocked alert was accepted (-1: never seen). */
static int blocked_accepted(void) {
  int accepted = -1;
  pthread_mutex_lock(&receiver.lock);
  for (size_t i = 0; i < receiver.count; i++)
    if (is_blocked(receiver.ids[i]))
      accepted = receiver.accepted[i] > 0;
  pthread_mutex_unlock(&receiver.lock);
  return accepted;
}

static size_t accepted_distinct(void) {
  size_t n = 0;
  pthread_mutex_lock(&receiver.lock);
  for (size_t i = 0; i < receiver.count; i++)
    n += receiver.accepted[i] > 0;
  pthread_mutex_unlock(&receiver.lock);
  return n;
}

/* ---- the alert set and the dead letters --------------------------------- */

typedef struct {
  char ids[IDS_MAX][700];
  char types[IDS_MAX][32];
  size_t count;
} alert_set_t;

static void visit_alert(void *opaque, const rd_kafka_message_t *msg) {
  alert_set_t *set = opaque;
  char id[700], type[32];
  if (set->count < IDS_MAX &&
      th_header(msg, "tally.output.id", id, sizeof(id))) {
    snprintf(set->ids[set->count], sizeof(set->ids[0]), "%s", id);
    snprintf(set->types[set->count], sizeof(set->types[0]), "%s",
             th_header(msg, "tally.alert.type", type, sizeof(type)) ? type
                                                                    : "");
    set->count++;
  }
}

typedef struct {
  char id[700];
  char error[1024];
  int count;
  int from_ok; /* dead letters of the /ok endpoint */
  long long first_attempt_ms;
} dead_t;

static void visit_dead(void *opaque, const rd_kafka_message_t *msg) {
  dead_t *dead = opaque;
  char source[64];
  if (th_header(msg, "tally.source", source, sizeof(source)) &&
      strcmp(source, "webhooks") == 0) {
    char error[1024] = "";
    th_header(msg, "tally.error", error, sizeof(error));
    if (strstr(error, "/ok")) {
      dead->from_ok++;
      return;
    }
    dead->count++;
    th_header(msg, "tally.output.id", dead->id, sizeof(dead->id));
    snprintf(dead->error, sizeof(dead->error), "%s", error);
    char first[32] = "";
    th_header(msg, "tally.webhook.first_attempt_ms", first, sizeof(first));
    dead->first_attempt_ms = atoll(first);
  }
}

/* The first-attempt time the /dead endpoint's group committed with its
 * offset (tally keeps it in the commit metadata, "wh1 <offset>:<ms> ..."),
 * read with the group's own id, without joining it; 0 when none yet. */
static long long committed_first_attempt(const char *bootstrap, int port) {
  char url[128], group[64], errstr[512];
  unsigned char digest[32];
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/dead", port);
  EVP_Digest(url, strlen(url), digest, NULL, EVP_sha256(), NULL);
  int n = snprintf(group, sizeof(group), "tally.webhooks.");
  for (int i = 0; i < 8; i++)
    n += snprintf(group + n, sizeof(group) - (size_t)n, "%02x", digest[i]);
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, errstr,
                    sizeof(errstr));
  rd_kafka_conf_set(conf, "group.id", group, errstr, sizeof(errstr));
  rd_kafka_conf_set(conf, "log_level", "0", errstr, sizeof(errstr));
  rd_kafka_t *rk =
      rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
  if (!rk)
    return 0;
  rd_kafka_topic_partition_list_t *parts =
      rd_kafka_topic_partition_list_new(PARTITIONS);
  for (int p = 0; p < PARTITIONS; p++)
    rd_kafka_topic_partition_list_add(parts, "tally.alerts", p);
  long long first = 0;
  if (rd_kafka_committed(rk, parts, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR)
    for (int i = 0; i < parts->cnt; i++) {
      const rd_kafka_topic_partition_t *part = &parts->elems[i];
      char text[256] = "";
      if (part->err || !part->metadata || part->metadata_size >= sizeof(text))
        continue;
      memcpy(text, part->metadata, part->metadata_size);
      const char *colon = strchr(text, ':');
      if (!strncmp(text, "wh1 ", 4) && colon)
        first = atoll(colon + 1);
    }
  rd_kafka_topic_partition_list_destroy(parts);
  rd_kafka_destroy(rk);
  return first;
}

static void post(int port, const char *body) {
  long status;
  char *text = NULL;
  assert_int_equal(th_http_request(port, "POST", "/v1/events", TH_AUTH_DEFAULT,
                                   body, strlen(body), NULL, &status, &text),
                   0);
  if (status != 202)
    fail_msg("POST /v1/events: %ld %s", status, text);
  free(text);
}

static void test_webhooks(void **state) {
  (void)state;
  struct MHD_Daemon *daemon = MHD_start_daemon(
      MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL,
      on_request, NULL, MHD_OPTION_NOTIFY_COMPLETED, on_done, NULL,
      MHD_OPTION_END);
  assert_non_null(daemon);
  int receiver_port =
      MHD_get_daemon_info(daemon, MHD_DAEMON_INFO_BIND_PORT)->port;

  th_broker_t broker;
  th_run_t run;
  char *dir = th_mkdtemp("webhooks");
  char state_dir[600], config[600], bad_config[600], text[2048];
  snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
  snprintf(config, sizeof(config), "%s/tally.json", dir);
  snprintf(bad_config, sizeof(bad_config), "%s/bad.json", dir);
  snprintf(text, sizeof(text),
           "{\"thresholds\": [25, 50, 75, 100],"
           " \"default_plans\": {\"anonymous\": \"t\", \"user\": \"t\", "
           "\"api_key\": \"t\"},"
           " \"plans\": {\"t\": {\"credits\": -1, \"limits\": {\"api_calls\": "
           "{\"limit\": 100, \"mode\": \"hard\"}}}},"
           " \"notifications\": {\"retry_initial_ms\": 50, \"retry_max_ms\": "
           "200, \"give_up_s\": 20, \"timeout_ms\": 2000, \"webhooks\": ["
           "  {\"url\": \"http://127.0.0.1:%d/ok\", \"secret_env\": "
           "\"TALLY_TEST_WEBHOOK_SECRET\"},"
           "  {\"url\": \"http://127.0.0.1:%d/dead\", \"secret_env\": "
           "\"TALLY_TEST_WEBHOOK_SECRET\", \"types\": [\"limit_exceeded\"]}]}}",
           receiver_port, receiver_port);
  FILE *file = fopen(config, "w");
  fputs(text, file);
  fclose(file);
  file = fopen(bad_config, "w");
  fputs("{\"notifications\": {\"webhooks\": [{\"url\": \"http://127.0.0.1:1/"
        "\", \"secret_env\": \"TALLY_TEST_WEBHOOK_UNSET\"}]}}",
        file);
  fclose(file);
  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);

  /* A secret variable that is not set stops startup, naming the field. */
  char err_path[700];
  snprintf(err_path, sizeof(err_path), "%s/bad.err", dir);
  char *argv[] = {(char *)th_tally_bin(),
                  "run",
                  "--brokers",
                  broker.bootstrap,
                  "--state-dir",
                  state_dir,
                  "--config",
                  bad_config,
                  "--api-key-sha256",
                  (char *)th_api_key_sha256(),
                  NULL};
  pid_t pid = th_spawn(argv, NULL, NULL, err_path);
  assert_int_equal(th_wait_exit(pid, 20000), 2);
  char *err = th_read_file(err_path);
  assert_non_null(strstr(err, "notifications.webhooks[0].secret_env"));
  free(err);

  static char secret_env[] = "TALLY_TEST_WEBHOOK_SECRET=whsec_" SECRET_B64;
  const char *const extra[] = {"--config", config, NULL};
  th_run_env = secret_env;
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, extra), 0);

  /* Four subjects past 25, 50 and 75 %; the first past 100 too. */
  for (int s = 0; s < SUBJECTS; s++) {
    char body[512];
    snprintf(body, sizeof(body),
             "[{\"event_id\": \"w%d-1\", \"subject\": \"user:w-%d\", "
             "\"feature\": \"api_calls\", \"quantity\": 30},"
             " {\"event_id\": \"w%d-2\", \"subject\": \"user:w-%d\", "
             "\"feature\": \"api_calls\", \"quantity\": 30},"
             " {\"event_id\": \"w%d-3\", \"subject\": \"user:w-%d\", "
             "\"feature\": \"api_calls\", \"quantity\": %d}]",
             s, s, s, s, s, s, s ? 20 : 45);
    post(run.port, body);
  }
  /* SIGKILL once the first deliveries are in, then start again. */
  int64_t deadline = th_now_ms() + 30000;
  while (accepted_distinct() < 2 && th_now_ms() < deadline)
    th_sleep_ms(5);
  assert_true(accepted_distinct() >= 2);
  th_kill9(run.pid);
  size_t before_restart = accepted_distinct();
  th_run_env = secret_env;
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, extra), 0);
  assert_int_equal(th_wait_caught_up(run.port, broker.bootstrap, "tally.usage",
                                     PARTITIONS, 60000),
                   0);
  assert_int_equal(th_wait_outbox_empty(run.port, 60000), 0);

  alert_set_t *alerts = calloc(1, sizeof(*alerts));
  assert_true(th_read_topic(broker.bootstrap, "tally.alerts", 4, visit_alert,
                            alerts) >= 0);
  /* 4 x (25, 50, 75) + 100 % and the exceeded alert of the first. */
  assert_true(alerts->count >= 13);
  size_t exceeded = 0;
  for (size_t i = 0; i < alerts->count; i++)
    exceeded += strcmp(alerts->types[i], "limit_exceeded") == 0;
  assert_int_equal(exceeded, 1);

  /* One alert failing does not hold the others back: every other alert
   * (those after it on its partition too) is accepted while it still
   * fails. */
  deadline = th_now_ms() + 60000;
  while (accepted_distinct() < alerts->count - 1 && th_now_ms() < deadline)
    th_sleep_ms(20);
  assert_int_equal(blocked_accepted(), 0);
  assert_int_equal(accepted_distinct(), alerts->count - 1);
  pthread_mutex_lock(&receiver.lock);
  int blocked_before = receiver.blocked_attempts;
  pthread_mutex_unlock(&receiver.lock);
  assert_true(blocked_before >= 1);
  /* ... and not by giving it up: nothing of /ok was dead-lettered. */
  dead_t early = {0};
  assert_true(th_read_topic(broker.bootstrap, "tally.usage.dlq", 1, visit_dead,
                            &early) >= 0);
  assert_int_equal(early.from_ok, 0);
  /* The /dead endpoint's first attempt is committed (with its offset)
   * before the SIGKILL: the give-up clock must survive it. */
  long long committed_first = 0;
  deadline = th_now_ms() + 30000;
  while (!(committed_first =
               committed_first_attempt(broker.bootstrap, receiver_port)) &&
         th_now_ms() < deadline)
    th_sleep_ms(100);
  assert_true(committed_first > 0);
  /* SIGKILL mid-retry (the blocked alert parked, the others delivered
   * after it), restart, and let it through. */
  th_kill9(run.pid);
  /* To the millisecond: time(NULL) * 1000 read up to 999 ms early, and a
   * first attempt in the same second as the kill then looked later than
   * it (CI: "-173 ms before the second SIGKILL"). */
  struct timespec killed_at;
  clock_gettime(CLOCK_REALTIME, &killed_at);
  long long second_kill_ms =
      (long long)killed_at.tv_sec * 1000 + killed_at.tv_nsec / 1000000;
  th_run_env = secret_env;
  assert_int_equal(th_run_start(&run, broker.bootstrap, state_dir, extra), 0);
  deadline = th_now_ms() + 30000;
  for (;;) {
    pthread_mutex_lock(&receiver.lock);
    int retried = receiver.blocked_attempts > blocked_before;
    pthread_mutex_unlock(&receiver.lock);
    if (retried || th_now_ms() > deadline)
      break;
    th_sleep_ms(20);
  }
  pthread_mutex_lock(&receiver.lock);
  /* Resumed from the committed offset: the blocked alert comes again. */
  assert_true(receiver.blocked_attempts > blocked_before);
  receiver.blocked_released = 1;
  pthread_mutex_unlock(&receiver.lock);
  deadline = th_now_ms() + 60000;
  while (accepted_distinct() < alerts->count && th_now_ms() < deadline)
    th_sleep_ms(20);
  pthread_mutex_lock(&receiver.lock);
  printf("# %zu alerts, %d requests, %zu accepted before the SIGKILL\n",
         alerts->count, receiver.requests, before_restart);
  assert_int_equal(receiver.bad_signatures, 0);
  assert_int_equal(receiver.bad_bodies, 0);
  /* The distinct ids are exactly the alert set: every alert arrived, no
   * id that is no alert. */
  assert_int_equal(receiver.count, alerts->count);
  for (size_t i = 0; i < alerts->count; i++) {
    size_t j = 0;
    while (j < receiver.count && strcmp(receiver.ids[j], alerts->ids[i]))
      j++;
    if (j == receiver.count || !receiver.accepted[j])
      fail_msg("alert %s never accepted", alerts->ids[i]);
    assert_true(receiver.attempts[j] >= 3); /* two 500s first */
  }
  pthread_mutex_unlock(&receiver.lock);

  /* The always-failing endpoint: the exceeded alert, dead-lettered. */
  dead_t dead = {0};
  deadline = th_now_ms() + 30000;
  while (dead.count == 0 && th_now_ms() < deadline) {
    th_sleep_ms(200);
    memset(&dead, 0, sizeof(dead));
    th_read_topic(broker.bootstrap, "tally.usage.dlq", 1, visit_dead, &dead);
  }
  assert_true(dead.count >= 1);
  for (size_t i = 0; i < alerts->count; i++)
    if (!strcmp(alerts->types[i], "limit_exceeded"))
      assert_string_equal(dead.id, alerts->ids[i]);
  assert_non_null(strstr(dead.error, "/dead"));
  assert_non_null(strstr(dead.error, "503"));
  /* The give-up clock ran from the first attempt across both SIGKILLs
   * (kept in the committed offset's metadata), not from a restart. */
  printf("# dead-lettered: first attempt %lld ms before the second "
         "SIGKILL\n",
         second_kill_ms - dead.first_attempt_ms);
  assert_true(dead.first_attempt_ms > 0);
  assert_true(dead.first_attempt_ms < second_kill_ms);
  assert_int_equal(dead.first_attempt_ms, committed_first);
  assert_true(receiver.dead_attempts >= 2);
  assert_true(th_metric_labeled(run.port, "tally_webhook_deliveries_total",
                                "{result=\"dead_lettered\"}") >= 1);
  free(alerts);

  assert_int_equal(th_stop(run.pid), 0);
  th_broker_stop(&broker);
  MHD_stop_daemon(daemon);
  th_rmrf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_webhooks),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
