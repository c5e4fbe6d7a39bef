/*
 * test_forward_auth.c - a forged owner on tally.members steals nothing (issue
 * 13, finding 5). Two `tally run` (a, b) share the harness's cluster
 * secret; b advertises a recording proxy run by this test, so every request
 * a forwards to b crosses a socket the test reads. While the test's own
 * librdkafka producer floods tally.members with forgeries pointing at a
 * second listener of the test (unsigned, signed with another secret,
 * tampered, stale, and unsigned tombstones of the real members), every
 * subject asked of a and b is answered by a or b with what was sent, the
 * forgeries' listener never receives a request, and the requests a
 * forwarded carried a valid forwarding credential and no Authorization.
 * The owner takes a forwarded request only with a credential made for it:
 * a bearer token, an expired credential, one for another instance, path or
 * secret are 401. Last, an instance without a cluster secret answers only
 * for the partitions it serves and says why for the others.
 */
#include "harness.h"

#include "tally_producer.h"
#include "tly_cluster_auth.h"
#include "tly_log.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#if MHD_VERSION >= 0x00097002
typedef enum MHD_Result mhd_result;
#else
typedef int mhd_result;
#endif

#define PARTITIONS 12
#define SUBJECTS 36
#define T0 1763800000000LL
#define HEARTBEAT_MS "300"

/* ---- the test's listeners ----------------------------------------------- */

/* Records every request; relays it to 127.0.0.1:target_port when set (the
 * proxy in front of b), else answers 200 {"forged": true}. */
typedef struct {
  struct MHD_Daemon *daemon;
  int port;
  atomic_int target_port;
  pthread_mutex_t lock;
  int requests, with_authorization, with_valid_credential;
  char last_target[256], last_credential[TLY_FORWARD_CREDENTIAL_MAX + 16];
} listener_t;

static tly_cluster_secret_t secret;

static void *on_uri(void *cls, const char *uri,
                    struct MHD_Connection *connection) {
  (void)cls, (void)connection;
  return strdup(uri ? uri : "");
}

static void on_completed(void *cls, struct MHD_Connection *connection,
                         void **state, enum MHD_RequestTerminationCode code) {
  (void)cls, (void)connection, (void)code;
  free(*state);
  *state = NULL;
}

typedef struct {
  char *data;
  size_t len;
} buffer_t;

static size_t collect(char *ptr, size_t size, size_t nmemb, void *opaque) {
  buffer_t *buffer = opaque;
  size_t n = size * nmemb;
  char *grown = realloc(buffer->data, buffer->len + n + 1);
  if (!grown)
    return 0;
  memcpy(grown + buffer->len, ptr, n);
  buffer->data = grown;
  buffer->len += n;
  buffer->data[buffer->len] = '\0';
  return n;
}

/* The request to target_port with the same method, target and tally
 * headers (and Authorization, were there one); its status and body. */
static long relay(int target_port, const char *method, const char *target,
                  struct MHD_Connection *connection, buffer_t *body) {
  static const char *const names[] = {TLY_FORWARD_AUTH_HEADER,
                                      "X-Tally-Forwarded", "Authorization"};
  char url[600], header[512];
  struct curl_slist *headers = NULL;
  long status = 502;
  snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", target_port, target);
  for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
    const char *value =
        MHD_lookup_connection_value(connection, MHD_HEADER_KIND, names[i]);
    if (value) {
      snprintf(header, sizeof(header), "%s: %s", names[i], value);
      headers = curl_slist_append(headers, header);
    }
  }
  CURL *curl = curl_easy_init();
  curl_easy_setopt(curl, CURLOPT_URL, url);
  curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, body);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 4000L);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  if (curl_easy_perform(curl) == CURLE_OK)
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
  return status;
}

static mhd_result on_request(void *cls, struct MHD_Connection *connection,
                             const char *url, const char *method,
                             const char *version, const char *upload_data,
                             size_t *upload_data_size, void **state) {
  listener_t *listener = cls;
  const char *target = *state ? *state : url;
  (void)version, (void)upload_data;
  if (*upload_data_size) {
    *upload_data_size = 0;
    return MHD_YES;
  }
  const char *authorization =
      MHD_lookup_connection_value(connection, MHD_HEADER_KIND, "Authorization");
  const char *credential = MHD_lookup_connection_value(
      connection, MHD_HEADER_KIND, TLY_FORWARD_AUTH_HEADER);
  /* Checked as b would: for this request, at b (its instance id). */
  tly_forward_scope_t scope = {
      .method = method, .target = target, .owner_instance = "auth-b"};
  int valid = tly_cluster_forward_check(&secret, credential, &scope,
                                        tly_wall_ms()) == TLY_FORWARD_AUTH_OK;
  pthread_mutex_lock(&listener->lock);
  listener->requests++;
  listener->with_authorization += authorization != NULL;
  listener->with_valid_credential += valid;
  snprintf(listener->last_target, sizeof(listener->last_target), "%s", target);
  snprintf(listener->last_credential, sizeof(listener->last_credential), "%s",
           credential ? credential : "");
  pthread_mutex_unlock(&listener->lock);

  buffer_t body = {0};
  long status = 200;
  int target_port = atomic_load(&listener->target_port);
  if (target_port)
    status = relay(target_port, method, target, connection, &body);
  else
    body.data = strdup("{\"forged\": true}");
  const char *text = body.data ? body.data : "";
  struct MHD_Response *response = MHD_create_response_from_buffer(
      strlen(text), (void *)text, MHD_RESPMEM_MUST_COPY);
  MHD_add_response_header(response, "Content-Type", "application/json");
  mhd_result rc = MHD_queue_response(connection, (unsigned)status, response);
  MHD_destroy_response(response);
  free(body.data);
  return rc;
}

static void listener_start(listener_t *listener) {
  struct sockaddr_in addr = {0};
  memset(listener, 0, sizeof(*listener));
  pthread_mutex_init(&listener->lock, NULL);
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  listener->daemon = MHD_start_daemon(
      MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION, 0, NULL,
      NULL, on_request, listener, MHD_OPTION_SOCK_ADDR, &addr,
      MHD_OPTION_URI_LOG_CALLBACK, on_uri, NULL, MHD_OPTION_NOTIFY_COMPLETED,
      on_completed, NULL, MHD_OPTION_END);
  assert_non_null(listener->daemon);
  const union MHD_DaemonInfo *info =
      MHD_get_daemon_info(listener->daemon, MHD_DAEMON_INFO_BIND_PORT);
  assert_non_null(info);
  listener->port = info->port;
}

static void listener_stop(listener_t *listener) {
  MHD_stop_daemon(listener->daemon);
  pthread_mutex_destroy(&listener->lock);
}

/* ---- the forger --------------------------------------------------------- */

typedef struct {
  const char *bootstrap;
  int forged_port;
  atomic_int stop;
  atomic_int rounds;
  atomic_int delivered; /* forgeries Kafka acknowledged */
} forger_t;

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg,
                        void *opaque) {
  forger_t *forger = opaque;
  (void)rk;
  if (!msg->err)
    atomic_fetch_add(&forger->delivered, 1);
}

/* One record on tally.members: key, value (NULL: tombstone), and the
 * tally.at / tally.mac headers when at / mac are not NULL. */
static void produce(rd_kafka_t *producer, const char *key, const char *value,
                    const char *at, const char *mac) {
  rd_kafka_headers_t *headers = rd_kafka_headers_new(2);
  if (at)
    rd_kafka_header_add(headers, TLY_MEMBERS_AT_HEADER, -1, at, -1);
  if (mac)
    rd_kafka_header_add(headers, TLY_MEMBERS_MAC_HEADER, -1, mac, -1);
  rd_kafka_resp_err_t err = rd_kafka_producev(
      producer, RD_KAFKA_V_TOPIC("tally.members"), RD_KAFKA_V_PARTITION(0),
      RD_KAFKA_V_KEY(key, strlen(key)),
      RD_KAFKA_V_VALUE((void *)value, value ? strlen(value) : 0),
      RD_KAFKA_V_HEADERS(headers), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
      RD_KAFKA_V_END);
  if (err)
    rd_kafka_headers_destroy(headers);
}

/* An announcement of instance at the forged listener, claiming every
 * partition as served, made at at_ms. */
static void forged_value(const forger_t *forger, const char *instance,
                         int64_t at_ms, char *out, size_t size) {
  int n = snprintf(out, size,
                   "{\"instance\":\"%s\",\"http\":\"http://127.0.0.1:%d\","
                   "\"partitions\":[",
                   instance, forger->forged_port);
  for (int p = 0; p < PARTITIONS; p++)
    n += snprintf(out + n, size - (size_t)n, "%s%d", p ? "," : "", p);
  snprintf(out + n, size - (size_t)n,
           "],\"replaying\":[],\"at\":%lld,\"seq\":999999}", (long long)at_ms);
}

static void *forger_main(void *arg) {
  forger_t *forger = arg;
  char errstr[512], value[1024], genuine[1024], at[24];
  char mac[TLY_CLUSTER_MAC_HEX_LEN + 1];
  tly_cluster_secret_t other = secret;
  other.bytes[0] ^= 1;
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", forger->bootstrap, errstr,
                    sizeof(errstr));
  rd_kafka_conf_set(conf, "linger.ms", "0", errstr, sizeof(errstr));
  rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
  rd_kafka_conf_set_opaque(conf, forger);
  rd_kafka_t *producer =
      rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  if (!producer)
    return NULL;
  while (!atomic_load(&forger->stop)) {
    int64_t now = tly_wall_ms();
    snprintf(at, sizeof(at), "%lld", (long long)now);
    /* Unsigned tombstones of the real members, then b's key claiming
     * everything at the forged listener, unsigned. */
    produce(producer, "auth-a", NULL, NULL, NULL);
    produce(producer, "auth-b", NULL, at, "00");
    forged_value(forger, "auth-b", now, value, sizeof(value));
    produce(producer, "auth-b", value, NULL, NULL);
    produce(producer, "auth-b", value, at, NULL);
    /* Signed with another secret, under a key of its own. */
    forged_value(forger, "forger", now, value, sizeof(value));
    tly_cluster_members_mac(&other, "forger", 6, now, value, strlen(value),
                            mac);
    produce(producer, "forger", value, at, mac);
    /* Tampered: the MAC of a genuine-looking value of b, on the forgery. */
    snprintf(genuine, sizeof(genuine),
             "{\"instance\":\"auth-b\",\"http\":\"http://127.0.0.1:1\","
             "\"partitions\":[],\"replaying\":[],\"at\":%lld,\"seq\":1}",
             (long long)now);
    tly_cluster_members_mac(&secret, "auth-b", 6, now, genuine, strlen(genuine),
                            mac);
    forged_value(forger, "auth-b", now, value, sizeof(value));
    produce(producer, "auth-b", value, at, mac);
    /* Properly signed but a minute old: a replay. */
    char old_at[24];
    snprintf(old_at, sizeof(old_at), "%lld", (long long)(now - 60000));
    forged_value(forger, "auth-b", now - 60000, value, sizeof(value));
    tly_cluster_members_mac(&secret, "auth-b", 6, now - 60000, value,
                            strlen(value), mac);
    produce(producer, "auth-b", value, old_at, mac);
    rd_kafka_poll(producer, 0);
    atomic_fetch_add(&forger->rounds, 1);
    th_sleep_ms(25);
  }
  rd_kafka_flush(producer, 5000);
  rd_kafka_destroy(producer);
  return NULL;
}

/* ---- requests ----------------------------------------------------------- */

typedef struct {
  long status;
  char *body;
} answer_t;

/* GET path on port; authorization NULL: the harness's bearer token, "":
 * none; plus one extra header (may be NULL). */
static void get(int port, const char *path, const char *authorization,
                const char *extra_header, answer_t *answer) {
  const char *headers[3] = {NULL, NULL, NULL};
  size_t n = 0;
  if (extra_header)
    headers[n++] = extra_header;
  memset(answer, 0, sizeof(*answer));
  const char *token =
      authorization ? (*authorization ? authorization : NULL) : TH_AUTH_DEFAULT;
  if (th_http_request(port, "GET", path, token, NULL, 0, headers,
                      &answer->status, &answer->body))
    answer->status = -1;
}

static long long expected[SUBJECTS];

static void produce_events(const char *bootstrap) {
  tally_producer_conf_t conf = {.brokers = bootstrap};
  char errstr[512], id[32], event_id[48];
  tally_producer_t *producer =
      tally_producer_new(&conf, errstr, sizeof(errstr));
  assert_non_null(producer);
  for (int s = 0; s < SUBJECTS; s++) {
    for (int e = 0; e < 2; e++) {
      tly_event_t event = {0};
      snprintf(id, sizeof(id), "auth-%03d", s);
      snprintf(event_id, sizeof(event_id), "auth-%d-%d", s, e);
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
  snprintf(path, size, "/v1/subjects/user:auth-%03d/usage?at=%lld", s,
           (long long)T0 + 1000);
}

static long long quantity_of(const char *body) {
  json_t *json = json_loads(body ? body : "", 0, NULL);
  json_t *value = json_object_get(
      json_object_get(json_object_get(json, "features"), "api_calls"),
      "quantity");
  long long quantity = json_is_integer(value) ? json_integer_value(value) : -1;
  json_decref(json);
  return quantity;
}

/* The error's code and message of an answer (static buffers). */
static const char *error_code(const answer_t *answer, char *message,
                              size_t size) {
  static char code[64];
  json_t *json = json_loads(answer->body ? answer->body : "", 0, NULL);
  json_t *error = json_object_get(json, "error");
  snprintf(code, sizeof(code), "%s",
           json_string_value(json_object_get(error, "code"))
               ? json_string_value(json_object_get(error, "code"))
               : "");
  if (message)
    snprintf(message, size, "%s",
             json_string_value(json_object_get(error, "message"))
                 ? json_string_value(json_object_get(error, "message"))
                 : "");
  json_decref(json);
  return code;
}

static int ready(int port) {
  answer_t answer;
  get(port, "/readyz", NULL, NULL, &answer);
  free(answer.body);
  return answer.status == 200;
}

/* A credential for path at instance, expiring at expiry_ms, made with
 * with_secret, as the header line. */
static void credential_header(const tly_cluster_secret_t *with_secret,
                              const char *path, const char *instance,
                              int64_t expiry_ms, char *out, size_t size) {
  char credential[TLY_FORWARD_CREDENTIAL_MAX];
  tly_forward_scope_t scope = {
      .method = "GET", .target = path, .owner_instance = instance};
  assert_int_equal(tly_cluster_forward_credential(with_secret, &scope,
                                                  expiry_ms, credential,
                                                  sizeof(credential)),
                   0);
  snprintf(out, size, TLY_FORWARD_AUTH_HEADER ": %s", credential);
}

static void test_forged_owner_steals_nothing(void **state) {
  (void)state;
  th_broker_t broker;
  th_run_t a, b, c;
  listener_t proxy, forged;
  forger_t forger = {0};
  pthread_t forger_thread;
  char *dir = th_mkdtemp("forward-auth");
  char state_a[600], state_b[600], state_c[600], proxy_url[64], path[512];
  char header[256], message[512];

  secret.len = strlen(th_cluster_secret());
  memcpy(secret.bytes, th_cluster_secret(), secret.len);
  listener_start(&proxy);
  listener_start(&forged);
  snprintf(proxy_url, sizeof(proxy_url), "http://127.0.0.1:%d", proxy.port);
  const char *extra_a[] = {"--members-heartbeat-ms", HEARTBEAT_MS,
                           "--instance-id", "auth-a", NULL};
  const char *extra_b[] = {"--members-heartbeat-ms",
                           HEARTBEAT_MS,
                           "--instance-id",
                           "auth-b",
                           "--advertise",
                           proxy_url,
                           NULL};
  snprintf(state_a, sizeof(state_a), "%s/a", dir);
  snprintf(state_b, sizeof(state_b), "%s/b", dir);
  snprintf(state_c, sizeof(state_c), "%s/c", dir);
  assert_int_equal(th_broker_start(&broker, PARTITIONS), 0);
  assert_int_equal(th_run_start(&a, broker.bootstrap, state_a, extra_a), 0);
  produce_events(broker.bootstrap);
  assert_int_equal(th_run_start(&b, broker.bootstrap, state_b, extra_b), 0);
  atomic_store(&proxy.target_port, b.port);
  int64_t deadline = th_now_ms() + 60000;
  while (!(ready(a.port) && ready(b.port)) && th_now_ms() < deadline)
    th_sleep_ms(100);
  assert_true(ready(a.port) && ready(b.port));

  /* The forger floods tally.members from here on. */
  forger.bootstrap = broker.bootstrap;
  forger.forged_port = forged.port;
  assert_int_equal(pthread_create(&forger_thread, NULL, forger_main, &forger),
                   0);
  /* Some rounds in the log, read by both (they poll every 100 ms). */
  while (atomic_load(&forger.delivered) < 10 * 7 && th_now_ms() < deadline)
    th_sleep_ms(25);
  assert_true(atomic_load(&forger.delivered) >= 10 * 7);
  th_sleep_ms(500);

  /* Every subject, asked of a and of b: answered by the real owner. */
  int forwarded_by_a = 0;
  for (int pass = 0; pass < 2; pass++)
    for (int s = 0; s < SUBJECTS; s++) {
      usage_path(s, path, sizeof(path));
      int ports[2] = {a.port, b.port};
      for (int i = 0; i < 2; i++) {
        answer_t answer;
        for (;;) {
          get(ports[i], path, NULL, NULL, &answer);
          if (answer.status == 200)
            break;
          /* While the real announcements settle: 503 partition_moving. */
          if (answer.status != 503 ||
              strcmp(error_code(&answer, NULL, 0), "partition_moving") != 0)
            fail_msg("subject %d on %d: %ld %s", s, i, answer.status,
                     answer.body ? answer.body : "");
          free(answer.body);
          if (th_now_ms() > deadline)
            fail_msg("subject %d on %d: still moving", s, i);
          th_sleep_ms(50);
        }
        if (quantity_of(answer.body) != expected[s])
          fail_msg("subject %d on %d: %s (the forged owner had %d requests, "
                   "%d with Authorization)",
                   s, i, answer.body, forged.requests,
                   forged.with_authorization);
        free(answer.body);
      }
    }
  pthread_mutex_lock(&proxy.lock);
  forwarded_by_a = proxy.requests;
  pthread_mutex_unlock(&proxy.lock);
  atomic_store(&forger.stop, 1);
  pthread_join(forger_thread, NULL);
  printf("# %d forgery rounds (%d records delivered); %d requests a "
         "forwarded to b through the proxy; %d reached the forged owner\n",
         atomic_load(&forger.rounds), atomic_load(&forger.delivered),
         forwarded_by_a, forged.requests);

  /* The forged owner never heard of a client, let alone its key. */
  pthread_mutex_lock(&forged.lock);
  assert_int_equal(forged.requests, 0);
  assert_int_equal(forged.with_authorization, 0);
  pthread_mutex_unlock(&forged.lock);
  /* What a forwarded to b: a credential good for that request at b, and
   * no client key. */
  pthread_mutex_lock(&proxy.lock);
  assert_true(proxy.requests > 0);
  assert_int_equal(proxy.with_authorization, 0);
  assert_int_equal(proxy.with_valid_credential, proxy.requests);
  pthread_mutex_unlock(&proxy.lock);
  /* The forgeries were read, counted and ignored. */
  assert_true(th_metric_labeled(a.port, "tally_members_records_total",
                                "{verdict=\"bad_mac\"}") > 0);
  assert_true(th_metric_labeled(b.port, "tally_members_records_total",
                                "{verdict=\"bad_mac\"}") > 0);
  assert_true(th_metric_labeled(a.port, "tally_members_records_total",
                                "{verdict=\"stale\"}") > 0);
  assert_true(th_metric_labeled(a.port, "tally_members_records_total",
                                "{verdict=\"applied\"}") > 0);

  /* b takes a forwarded request on its credential alone (no key at all),
   * and only one made for that request, at b, unexpired, with our secret.
   * The subject last forwarded is b's. */
  answer_t answer;
  snprintf(path, sizeof(path), "%s", proxy.last_target);
  credential_header(&secret, path, "auth-b",
                    tly_wall_ms() + TLY_FORWARD_CREDENTIAL_TTL_MS, header,
                    sizeof(header));
  get(b.port, path, "", header, &answer);
  assert_int_equal(answer.status, 200);
  free(answer.body);
  /* Marked as forwarded, with a client's key and no credential: 401. */
  get(b.port, path, NULL, "X-Tally-Forwarded: 1", &answer);
  assert_int_equal(answer.status, 401);
  free(answer.body);
  /* Expired; made for a; for another path; with another secret: 401. */
  credential_header(&secret, path, "auth-b", tly_wall_ms() - 1, header,
                    sizeof(header));
  get(b.port, path, "", header, &answer);
  assert_int_equal(answer.status, 401);
  error_code(&answer, message, sizeof(message));
  assert_non_null(strstr(message, "expired"));
  free(answer.body);
  credential_header(&secret, path, "auth-a",
                    tly_wall_ms() + TLY_FORWARD_CREDENTIAL_TTL_MS, header,
                    sizeof(header));
  get(b.port, path, "", header, &answer);
  assert_int_equal(answer.status, 401);
  free(answer.body);
  credential_header(&secret, "/v1/subjects/user:other/usage", "auth-b",
                    tly_wall_ms() + TLY_FORWARD_CREDENTIAL_TTL_MS, header,
                    sizeof(header));
  get(b.port, path, "", header, &answer);
  assert_int_equal(answer.status, 401);
  free(answer.body);
  tly_cluster_secret_t other = secret;
  other.bytes[3] ^= 1;
  credential_header(&other, path, "auth-b",
                    tly_wall_ms() + TLY_FORWARD_CREDENTIAL_TTL_MS, header,
                    sizeof(header));
  get(b.port, path, "", header, &answer);
  assert_int_equal(answer.status, 401);
  assert_string_equal(error_code(&answer, NULL, 0), "unauthorized");
  free(answer.body);
  /* The credential a sent, replayed at a: it was made for b. */
  snprintf(header, sizeof(header), TLY_FORWARD_AUTH_HEADER ": %s",
           proxy.last_credential);
  get(a.port, path, "", header, &answer);
  assert_int_equal(answer.status, 401);
  free(answer.body);
  assert_true(th_metric_sum(b.port, "tally_http_forwards_rejected_total") >= 5);

  /* c has no cluster secret: it joins the group and answers for what it
   * serves; for the rest it says it cannot forward, never forwards. */
  th_run_without_cluster_secret = 1;
  const char *extra_c[] = {"--members-heartbeat-ms", HEARTBEAT_MS, NULL};
  assert_int_equal(th_run_start(&c, broker.bootstrap, state_c, extra_c), 0);
  int local = 0, refused = 0;
  deadline = th_now_ms() + 60000;
  while (local == 0 && th_now_ms() < deadline) {
    local = refused = 0;
    for (int s = 0; s < SUBJECTS; s++) {
      usage_path(s, path, sizeof(path));
      get(c.port, path, NULL, NULL, &answer);
      if (answer.status == 200) {
        assert_int_equal(quantity_of(answer.body), expected[s]);
        local++;
      } else {
        assert_int_equal(answer.status, 503);
        assert_string_equal(error_code(&answer, message, sizeof(message)),
                            "partition_moving");
        assert_non_null(strstr(message, "no cluster secret"));
        refused++;
      }
      free(answer.body);
    }
    if (!local)
      th_sleep_ms(200);
  }
  printf("# c (no secret): %d subjects served locally, %d refused\n", local,
         refused);
  assert_true(local > 0);
  assert_true(refused > 0);
  assert_int_equal(th_metric_sum(c.port, "tally_members_records_total"), 0);
  assert_int_equal(forged.requests, 0);

  assert_int_equal(th_stop(c.pid), 0);
  assert_int_equal(th_stop(a.pid), 0);
  assert_int_equal(th_stop(b.pid), 0);
  listener_stop(&proxy);
  listener_stop(&forged);
  th_broker_stop(&broker);
  th_rmrf(dir);
  free(dir);
}

int main(void) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_forged_owner_steals_nothing),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  curl_global_cleanup();
  return rc;
}
