/*
 * harness.c - processes, files, HTTP and Kafka helpers for the integration
 * tests (see harness.h).
 */
#include "harness.h"

#include "tly_read_to_end.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int64_t th_now_ms(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

void th_sleep_ms(int ms) {
  struct timespec pause = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&pause, &pause) && errno == EINTR)
    ;
}

const char *th_tally_bin(void) {
  const char *bin = getenv("TALLY_BIN");
  return bin && *bin ? bin : "./tally";
}

char *th_mkdtemp(const char *tag) {
  const char *base = getenv("TMPDIR");
  char *path = malloc(512);
  snprintf(path, 512, "%s/tally-test-%s-XXXXXX", base && *base ? base : "/tmp",
           tag);
  if (!mkdtemp(path)) {
    free(path);
    return NULL;
  }
  return path;
}

void th_rmrf(const char *path) {
  if (!path || strncmp(path, "/tmp/", 5) != 0 || strstr(path, ".."))
    return; /* only ever our own temp dirs */
  pid_t pid = fork();
  if (pid == 0) {
    execlp("rm", "rm", "-rf", path, (char *)NULL);
    _exit(127);
  }
  if (pid > 0)
    waitpid(pid, NULL, 0);
}

static void redirect(const char *path, int fd, int flags) {
  int file = open(path, flags, 0644);
  if (file < 0)
    _exit(126);
  dup2(file, fd);
  close(file);
}

pid_t th_spawn(char *const argv[], const char *stdin_path,
               const char *stdout_path, const char *stderr_path) {
  fflush(stdout);
  fflush(stderr);
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid != 0)
    return pid;
  /* A test that fails (cmocka returns from the test, the process exits)
   * takes its brokers and processors with it instead of leaving them
   * running. Every spawn happens on the test's main thread, which lives
   * as long as the process. */
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
    _exit(127);
  redirect(stdin_path ? stdin_path : "/dev/null", STDIN_FILENO, O_RDONLY);
  if (stdout_path)
    redirect(stdout_path, STDOUT_FILENO, O_WRONLY | O_CREAT | O_APPEND);
  if (stderr_path)
    redirect(stderr_path, STDERR_FILENO, O_WRONLY | O_CREAT | O_APPEND);
  execv(argv[0], argv);
  _exit(127);
}

int th_wait_exit(pid_t pid, int timeout_ms) {
  int64_t deadline = th_now_ms() + timeout_ms;
  int status;
  for (;;) {
    pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid)
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (done < 0)
      return -1;
    if (th_now_ms() > deadline)
      return -1;
    th_sleep_ms(20);
  }
}

void th_kill9(pid_t pid) {
  if (pid <= 0)
    return;
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
}

int th_stop(pid_t pid) {
  if (pid <= 0)
    return -1;
  kill(pid, SIGTERM);
  int rc = th_wait_exit(pid, 20000);
  if (rc < 0) {
    th_kill9(pid);
    return -1;
  }
  return rc;
}

char *th_read_file(const char *path) {
  FILE *file = fopen(path, "rb");
  if (!file)
    return NULL;
  fseek(file, 0, SEEK_END);
  long size = ftell(file);
  fseek(file, 0, SEEK_SET);
  char *data = malloc((size_t)size + 1);
  size_t got = fread(data, 1, (size_t)size, file);
  data[got] = '\0';
  fclose(file);
  return data;
}

char *th_wait_file(const char *path, int timeout_ms) {
  int64_t deadline = th_now_ms() + timeout_ms;
  while (th_now_ms() < deadline) {
    if (access(path, R_OK) == 0) {
      char *data = th_read_file(path);
      if (data) {
        size_t len = strlen(data);
        while (len && (data[len - 1] == '\n' || data[len - 1] == ' '))
          data[--len] = '\0';
        return data;
      }
    }
    th_sleep_ms(20);
  }
  return NULL;
}

int th_broker_start(th_broker_t *broker, int partitions) {
  char *dir = th_mkdtemp("broker");
  char file[600], count[16], log_path[600];
  if (!dir)
    return -1;
  snprintf(broker->dir, sizeof(broker->dir), "%s", dir);
  free(dir);
  snprintf(file, sizeof(file), "%s/bootstrap", broker->dir);
  snprintf(log_path, sizeof(log_path), "%s/broker.log", broker->dir);
  snprintf(count, sizeof(count), "%d", partitions);
  char *argv[] = {(char *)th_tally_bin(),
                  "broker",
                  "--partitions",
                  count,
                  "--bootstrap-file",
                  file,
                  NULL};
  broker->pid = th_spawn(argv, NULL, log_path, log_path);
  char *bootstrap = th_wait_file(file, 15000);
  if (!bootstrap) {
    th_kill9(broker->pid);
    return -1;
  }
  snprintf(broker->bootstrap, sizeof(broker->bootstrap), "%s", bootstrap);
  free(bootstrap);
  return 0;
}

void th_broker_stop(th_broker_t *broker) {
  th_stop(broker->pid);
  th_rmrf(broker->dir);
}

static char api_key[64], api_key_sha256[65];

static void make_api_key(void) {
  unsigned char random[16], digest[SHA256_DIGEST_LENGTH];
  if (api_key[0])
    return;
  if (RAND_bytes(random, sizeof(random)) != 1)
    abort();
  snprintf(api_key, sizeof(api_key), "th_");
  for (size_t i = 0; i < sizeof(random); i++)
    snprintf(api_key + 3 + 2 * i, 3, "%02x", random[i]);
  SHA256((const unsigned char *)api_key, strlen(api_key), digest);
  for (size_t i = 0; i < sizeof(digest); i++)
    snprintf(api_key_sha256 + 2 * i, 3, "%02x", digest[i]);
}

const char *th_api_key(void) {
  make_api_key();
  return api_key;
}

const char *th_api_key_sha256(void) {
  make_api_key();
  return api_key_sha256;
}

const char *th_run_env;
int th_run_without_cluster_secret;

const char *th_cluster_secret(void) {
  static char secret[65];
  unsigned char random[32];
  if (secret[0])
    return secret;
  if (RAND_bytes(random, sizeof(random)) != 1)
    abort();
  for (size_t i = 0; i < sizeof(random); i++)
    snprintf(secret + 2 * i, 3, "%02x", random[i]);
  return secret;
}

int th_run_start(th_run_t *run, const char *bootstrap, const char *state_dir,
                 const char *const *extra) {
  static int starts;
  char port_file[600];
  char *argv[64];
  int argc = 0;

  snprintf(run->state_dir, sizeof(run->state_dir), "%s", state_dir);
  snprintf(port_file, sizeof(port_file), "%s.port", state_dir);
  snprintf(run->log_path, sizeof(run->log_path), "%s.run-%d.log", state_dir,
           ++starts);
  unlink(port_file);
  argv[argc++] = (char *)th_tally_bin();
  argv[argc++] = "run";
  argv[argc++] = "--brokers";
  argv[argc++] = (char *)bootstrap;
  argv[argc++] = "--state-dir";
  argv[argc++] = (char *)state_dir;
  argv[argc++] = "--http";
  argv[argc++] = "127.0.0.1:0";
  argv[argc++] = "--http-port-file";
  argv[argc++] = port_file;
  /* On the embedded broker `tally run`'s processor uses this session
   * timeout anyway and times its rejoin after a kill itself
   * (consumers/tly_group.h); set here for every consumer (the members
   * reader's must not exceed max.poll.interval.ms below). */
  argv[argc++] = "-X";
  argv[argc++] = "session.timeout.ms=3000";
  /* librdkafka 2.0.2's mock coordinator sometimes never answers a
   * JoinGroup that arrives while a rebalance completes (seen once in ten
   * runs of test_scale_out, three instances starting together); the member
   * waits out the request timeout, max.poll.interval.ms + 3 s, then joins
   * again. 20 s instead of the default 300 s keeps that within the tests'
   * deadlines. */
  argv[argc++] = "-X";
  argv[argc++] = "max.poll.interval.ms=20000";
  /* Wall-clock ticks would roll the tests' fixed-time cycles over; tests
   * that want ticks pass their own interval after this. */
  argv[argc++] = "--tick-interval-ms";
  argv[argc++] = "0";
  argv[argc++] = "--api-key-sha256";
  argv[argc++] = (char *)th_api_key_sha256();
  for (size_t i = 0; extra && extra[i] && argc < 62; i++)
    argv[argc++] = (char *)extra[i];
  argv[argc] = NULL;
  if (th_run_env)
    putenv((char *)th_run_env);
  if (th_run_without_cluster_secret)
    unsetenv("TALLY_CLUSTER_SECRET");
  else
    setenv("TALLY_CLUSTER_SECRET", th_cluster_secret(), 1);
  run->pid = th_spawn(argv, NULL, run->log_path, run->log_path);
  unsetenv("TALLY_CLUSTER_SECRET"); /* the child's only */
  th_run_without_cluster_secret = 0;
  if (th_run_env) {
    char name[128];
    snprintf(name, sizeof(name), "%.*s", (int)strcspn(th_run_env, "="),
             th_run_env);
    unsetenv(name);
    th_run_env = NULL;
  }
  char *port = th_wait_file(port_file, 30000);
  if (!port) {
    th_kill9(run->pid);
    return -1;
  }
  run->port = atoi(port);
  free(port);
  return 0;
}

typedef struct {
  char *data;
  size_t len;
} buffer_t;

static size_t collect(char *ptr, size_t size, size_t nmemb, void *userdata) {
  buffer_t *buffer = userdata;
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

static pthread_key_t curl_key;
static pthread_once_t curl_key_once = PTHREAD_ONCE_INIT;

static void curl_key_free(void *curl) { curl_easy_cleanup(curl); }

static void curl_key_create(void) {
  pthread_key_create(&curl_key, curl_key_free);
}

int th_http_request(int port, const char *method, const char *path,
                    const char *authorization, const char *body,
                    size_t body_len, const char *const *headers, long *status,
                    char **response) {
  /* One handle per thread, kept alive so it reuses its connection, and
   * cleaned up when the thread exits (a reader thread of a test). */
  static __thread CURL *curl;
  char url[8192], auth[256];
  struct curl_slist *list = NULL;
  buffer_t buffer = {calloc(1, 1), 0};
  if (!curl) {
    curl = curl_easy_init();
    pthread_once(&curl_key_once, curl_key_create);
    pthread_setspecific(curl_key, curl);
  }
  curl_easy_reset(curl);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
  curl_easy_setopt(curl, CURLOPT_URL, url);
  curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &buffer);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 20000L);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  if (body) {
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    list = curl_slist_append(list, "Content-Type: application/json");
  }
  if (authorization == TH_AUTH_DEFAULT) {
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", th_api_key());
    list = curl_slist_append(list, auth);
  } else if (authorization) {
    snprintf(auth, sizeof(auth), "Authorization: %s", authorization);
    list = curl_slist_append(list, auth);
  }
  for (size_t i = 0; headers && headers[i]; i++)
    list = curl_slist_append(list, headers[i]);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, list);
  CURLcode rc = curl_easy_perform(curl);
  curl_slist_free_all(list);
  if (rc != CURLE_OK) {
    free(buffer.data);
    return -1;
  }
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, status);
  *response = buffer.data;
  return 0;
}

int th_http_get(int port, const char *path, long *status, char **body) {
  return th_http_request(port, "GET", path, TH_AUTH_DEFAULT, NULL, 0, NULL,
                         status, body);
}

static long long metric_scan(int port, const char *name, const char *labels) {
  long status;
  char *body;
  long long sum = 0;
  size_t name_len = strlen(name);
  if (th_http_get(port, "/metrics", &status, &body) || status != 200)
    return -1;
  for (char *line = strtok(body, "\n"); line; line = strtok(NULL, "\n")) {
    if (strncmp(line, name, name_len) != 0)
      continue;
    char *rest = line + name_len;
    if (labels) {
      if (strncmp(rest, labels, strlen(labels)) != 0)
        continue;
      rest += strlen(labels);
    } else if (*rest == '{') {
      rest = strchr(rest, '}');
      if (!rest)
        continue;
      rest++;
    }
    if (*rest != ' ')
      continue;
    sum += atoll(rest + 1);
  }
  free(body);
  return sum;
}

long long th_metric_sum(int port, const char *name) {
  return metric_scan(port, name, NULL);
}

long long th_metric_partition(int port, const char *name, int partition) {
  char labels[64];
  snprintf(labels, sizeof(labels), "{partition=\"%d\"}", partition);
  return metric_scan(port, name, labels);
}

long long th_metric_labeled(int port, const char *name, const char *labels) {
  return metric_scan(port, name, labels);
}

int th_high_watermarks(const char *bootstrap, const char *topic, int partitions,
                       int64_t *out) {
  char errstr[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, errstr,
                    sizeof(errstr));
  rd_kafka_t *rk =
      rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  if (!rk)
    return -1;
  int rc = 0;
  for (int p = 0; p < partitions && rc == 0; p++) {
    int64_t low, high;
    if (rd_kafka_query_watermark_offsets(rk, topic, p, &low, &high, 10000))
      rc = -1;
    else
      out[p] = high;
  }
  rd_kafka_destroy(rk);
  return rc;
}

typedef struct {
  void (*visit)(void *opaque, const rd_kafka_message_t *msg);
  void *opaque;
  int total;
} read_count_t;

static void count_visit(void *opaque, const rd_kafka_message_t *msg) {
  read_count_t *counted = opaque;
  counted->visit(counted->opaque, msg);
  counted->total++;
}

int th_read_topic(const char *bootstrap, const char *topic, int partitions,
                  void (*visit)(void *opaque, const rd_kafka_message_t *msg),
                  void *opaque) {
  char errstr[512], group[64];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  snprintf(group, sizeof(group), "reader-%s", topic);
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, errstr,
                    sizeof(errstr));
  rd_kafka_conf_set(conf, "group.id", group, errstr, sizeof(errstr));
  rd_kafka_conf_set(conf, "enable.partition.eof", "true", errstr,
                    sizeof(errstr));
  rd_kafka_t *rk =
      rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
  if (!rk)
    return -1;
  rd_kafka_topic_partition_list_t *parts =
      rd_kafka_topic_partition_list_new(partitions);
  for (int p = 0; p < partitions; p++)
    rd_kafka_topic_partition_list_add(parts, topic, p)->offset = 0;
  /* Up to each partition's end as it is now (tally's reader: EOF comes
   * again for a partition still being produced to). */
  read_count_t counted = {visit, opaque, 0};
  int rc = tly_read_to_end(rk, parts, 60000, count_visit, &counted, errstr,
                           sizeof(errstr));
  if (rc)
    fprintf(stderr, "# reading %s: %s\n", topic, errstr);
  rd_kafka_topic_partition_list_destroy(parts);
  rd_kafka_consumer_close(rk);
  rd_kafka_destroy(rk);
  return rc ? -1 : counted.total;
}

const char *th_header(const rd_kafka_message_t *msg, const char *name,
                      char *out, size_t size) {
  rd_kafka_headers_t *headers = NULL;
  const void *value;
  size_t len;
  out[0] = '\0';
  if (rd_kafka_message_headers(msg, &headers) ||
      rd_kafka_header_get_last(headers, name, &value, &len))
    return NULL;
  snprintf(out, size, "%.*s", (int)len, (const char *)value);
  return out;
}

int th_wait_caught_up(int port, const char *bootstrap, const char *topic,
                      int partitions, int timeout_ms) {
  int64_t deadline = th_now_ms() + timeout_ms;
  int64_t *high = calloc((size_t)partitions, sizeof(*high));
  int rc = -1;
  if (th_high_watermarks(bootstrap, topic, partitions, high))
    goto out;
  while (th_now_ms() < deadline) {
    int behind = 0;
    for (int p = 0; p < partitions && !behind; p++) {
      long long committed =
          th_metric_partition(port, "tally_partition_committed_offset", p);
      if (high[p] > 0 && committed < high[p])
        behind = 1;
    }
    if (!behind) {
      rc = 0;
      break;
    }
    th_sleep_ms(100);
  }
out:
  free(high);
  return rc;
}

int th_wait_outbox_empty(int port, int timeout_ms) {
  int64_t deadline = th_now_ms() + timeout_ms;
  for (;;) {
    if (th_metric_sum(port, "tally_outbox_entries") == 0)
      return 0;
    if (th_now_ms() > deadline)
      return -1;
    th_sleep_ms(100);
  }
}

rd_kafka_mock_cluster_t *th_mock_cluster_new(int partitions,
                                             const char **bootstrap) {
  char errstr[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "log_level", "0", errstr, sizeof(errstr));
  rd_kafka_t *host =
      rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  if (!host)
    return NULL;
  rd_kafka_mock_cluster_t *cluster = rd_kafka_mock_cluster_new(host, 1);
  if (!cluster ||
      rd_kafka_mock_topic_create(cluster, "tally.usage", partitions, 1) ||
      rd_kafka_mock_topic_create(cluster, "tally.usage.dlq", 1, 1) ||
      rd_kafka_mock_topic_create(cluster, "tally.alerts", 4, 1)) {
    if (cluster)
      rd_kafka_mock_cluster_destroy(cluster);
    rd_kafka_destroy(host);
    return NULL;
  }
  *bootstrap = rd_kafka_mock_cluster_bootstraps(cluster);
  return cluster;
}

void th_mock_cluster_destroy(rd_kafka_mock_cluster_t *cluster) {
  if (!cluster)
    return;
  rd_kafka_t *host = rd_kafka_mock_cluster_handle(cluster);
  rd_kafka_mock_cluster_destroy(cluster);
  rd_kafka_destroy(host);
}
