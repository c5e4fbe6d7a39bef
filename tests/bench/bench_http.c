/*
 * bench_http.c - bench_fold's (d): the HTTP port next to a bare
 * libmicrohttpd server measured in the same run (see bench_http.h).
 */
#define _GNU_SOURCE /* usleep */
#include "bench_http.h"

#include "tally_producer.h"
#include "tly_http.h"
#include "tly_log.h"
#include "tly_sha256.h"
#include "tly_topics.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if MHD_VERSION < 0x00097002
typedef int bench_mhd_result;
#else
typedef enum MHD_Result bench_mhd_result;
#endif

/* ---- the ceiling: a bare libmicrohttpd handler ------------------------ */

/* About the size of a quota pre-check's answer. */
static const char ceiling_body[] =
    "{\"subject\":\"user:b123\",\"feature\":\"api_calls\",\"allowed\":true,"
    "\"quantity\":1,\"limit\":10000,\"used\":42,\"remaining\":9958,"
    "\"period_start\":\"2026-11-01T00:00:00Z\",\"period_end\":"
    "\"2026-12-01T00:00:00Z\",\"unit\":\"calls\"}";

static bench_mhd_result
ceiling_handler(void *cls, struct MHD_Connection *connection, const char *url,
                const char *method, const char *version,
                const char *upload_data, size_t *upload_data_size,
                void **state) {
  (void)cls, (void)url, (void)method, (void)version, (void)upload_data;
  /* The usual libmicrohttpd handler: the first call (headers only) only
   * marks the request; the answer goes on the next call. An answer queued
   * on the first call makes libmicrohttpd (0.9.75) close the connection
   * after it, as it cannot know the request has no body to skip. */
  static int seen;
  if (!*state) {
    *state = &seen;
    return MHD_YES;
  }
  *upload_data_size = 0;
  struct MHD_Response *response = MHD_create_response_from_buffer(
      sizeof(ceiling_body) - 1, (void *)ceiling_body, MHD_RESPMEM_PERSISTENT);
  if (!response)
    return MHD_NO;
  MHD_add_response_header(response, "Content-Type", "application/json");
  bench_mhd_result rc = MHD_queue_response(connection, 200, response);
  MHD_destroy_response(response);
  return rc;
}

static struct MHD_Daemon *ceiling_start(unsigned threads, uint16_t *port) {
  struct sockaddr_in addr;
  memset(&addr, 0, sizeof(addr));
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  /* As tally's port: no pool option for one thread. */
  struct MHD_OptionItem pool[] = {
      {threads > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END,
       (intptr_t)threads, NULL},
      {MHD_OPTION_END, 0, NULL}};
  struct MHD_Daemon *daemon =
      MHD_start_daemon(MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ERROR_LOG, 0,
                       NULL, NULL, ceiling_handler, NULL, MHD_OPTION_SOCK_ADDR,
                       &addr, MHD_OPTION_ARRAY, pool, MHD_OPTION_END);
  const union MHD_DaemonInfo *info =
      daemon ? MHD_get_daemon_info(daemon, MHD_DAEMON_INFO_BIND_PORT) : NULL;
  *port = info ? info->port : 0;
  return daemon;
}

/* ---- wrk --------------------------------------------------------------- */

/* CPU seconds of this process's threads whose name is name ("tly-fold",
 * "tly-writer") or, with prefix set, starts with it ("MHD-": the
 * libmicrohttpd threads), from /proc: per request or per event, a figure
 * the other load on the machine disturbs less than a rate. */
double bench_thread_cpu_seconds(const char *name, int prefix) {
  double total = 0;
  size_t name_len = strlen(name);
  DIR *tasks = opendir("/proc/self/task");
  struct dirent *task;
  while (tasks && (task = readdir(tasks))) {
    char path[300], comm[64] = "", line[1024];
    snprintf(path, sizeof(path), "/proc/self/task/%s/comm", task->d_name);
    FILE *file = fopen(path, "r");
    if (!file)
      continue;
    int named = fgets(comm, sizeof(comm), file) &&
                strncmp(comm, name, name_len) == 0 &&
                (prefix || comm[name_len] == '\n');
    fclose(file);
    snprintf(path, sizeof(path), "/proc/self/task/%s/stat", task->d_name);
    if (!named || !(file = fopen(path, "r")))
      continue;
    /* utime and stime: fields 14 and 15, after the ")" closing comm. */
    unsigned long long utime = 0, stime = 0;
    const char *after =
        fgets(line, sizeof(line), file) ? strrchr(line, ')') : NULL;
    if (after && sscanf(after + 2,
                        "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
                        &utime, &stime) == 2)
      total += (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
    fclose(file);
  }
  if (tasks)
    closedir(tasks);
  return total;
}

static double mhd_cpu_seconds(void) {
  return bench_thread_cpu_seconds("MHD-", 1);
}

/* wrk against path (a template for scripts/bench-http.lua). */
static void run_wrk(uint16_t port, const char *path, long subjects, int seconds,
                    int connections, bench_http_figure_t *figure) {
  char command[1024], line[256];
  snprintf(command, sizeof(command),
           "BENCH_SUBJECTS=%ld BENCH_PATH='%s' BENCH_TOKEN='%s' wrk -t1 -c%d "
           "-d%ds -s %s/scripts/bench-http.lua http://127.0.0.1:%u 2>&1",
           subjects, path, BENCH_HTTP_TOKEN, connections, seconds,
           TALLY_SOURCE_DIR, (unsigned)port);
  memset(figure, 0, sizeof(*figure));
  double cpu_before = mhd_cpu_seconds();
  FILE *out = popen(command, "r");
  while (out && fgets(line, sizeof(line), out))
    if (sscanf(line, "RESULT %lf %lf %lf %ld %ld", &figure->rps,
               &figure->p50_ms, &figure->p99_ms, &figure->requests,
               &figure->errors) == 5)
      figure->ok = 1;
  if (out)
    pclose(out);
  figure->cpu_us = figure->requests ? (mhd_cpu_seconds() - cpu_before) * 1e6 /
                                          (double)figure->requests
                                    : 0;
  figure->p50_ms /= 1000.0; /* wrk reports microseconds */
  figure->p99_ms /= 1000.0;
}

void bench_http_add_key(tly_config_t *config) {
  unsigned char digest[TLY_SHA256_LEN];
  SHA256((const unsigned char *)BENCH_HTTP_TOKEN, strlen(BENCH_HTTP_TOKEN),
         digest);
  tly_config_add_api_key(config, "bench", digest);
}

static int compare_doubles(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *values, int n) {
  qsort(values, (size_t)n, sizeof(*values), compare_doubles);
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

int bench_http_run(tly_store_t *store, tly_processor_t *processor,
                   tly_config_t *config, long subjects, int seconds,
                   bench_http_result_t *result) {
  char errstr[512];
  const char *c = getenv("BENCH_HTTP_CONNECTIONS");
  const char *r = getenv("BENCH_HTTP_ROUNDS");
  memset(result, 0, sizeof(*result));
  result->subjects = subjects;
  result->connections = c && atoi(c) > 0 ? atoi(c) : 32;
  result->rounds = r && atoi(r) > 0 ? atoi(r) : 4;
  if (result->rounds > BENCH_ROUNDS_MAX)
    result->rounds = BENCH_ROUNDS_MAX;
  result->seconds = seconds / result->rounds > 0 ? seconds / result->rounds : 1;
  /* By default as many as `tally run` starts (http.threads 0). */
  const char *t = getenv("BENCH_HTTP_THREADS");
  result->threads =
      t && atoi(t) > 0 ? (unsigned)atoi(t) : tly_http_default_threads();
  tly_http_conf_t hconf = {.store = store,
                           .processor = processor,
                           .config = config,
                           .threads = result->threads};
  tly_http_t *http = tly_http_start(&hconf, errstr, sizeof(errstr));
  if (!http) {
    fprintf(stderr, "bench: %s\n", errstr);
    return -1;
  }
  uint16_t ceiling_port;
  struct MHD_Daemon *ceiling = ceiling_start(result->threads, &ceiling_port);
  if (!ceiling) {
    fprintf(stderr, "bench: cannot start the bare libmicrohttpd server\n");
    tly_http_stop(http);
    return -1;
  }
  static const char *const paths[BENCH_ROUTES] = {
      "/", "/v1/subjects/user:b{n}/quota?feature=api_calls&quantity=1",
      "/v1/subjects/user:b{n}/usage", "/healthz"};
  uint16_t port = tly_http_port(http);
  fprintf(stderr,
          "(d) HTTP with wrk -t1 -c%d, %u server threads each: %d rounds of "
          "the ceiling, the quota pre-check, /usage and /healthz, %d s each\n",
          result->connections, result->threads, result->rounds,
          result->seconds);
  /* Rounds, each running every route in turn: a route and the ceiling are
   * measured minutes apart at most, so a machine getting busier or quieter
   * (other work on it) weighs on both alike. */
  bench_http_figure_t runs[BENCH_ROUNDS_MAX][BENCH_ROUTES];
  for (int round = 0; round < result->rounds; round++) {
    fprintf(stderr, "\rround %d/%d", round + 1, result->rounds);
    for (int route = 0; route < BENCH_ROUTES; route++)
      run_wrk(route == BENCH_CEILING ? ceiling_port : port, paths[route],
              subjects, result->seconds, result->connections,
              &runs[round][route]);
  }
  fprintf(stderr, "\n");
  MHD_stop_daemon(ceiling);
  tly_http_stop(http);
  /* Per route: the median of the rounds (rate, latency, CPU) and of each
   * round's ratio to that round's ceiling; requests and errors summed. */
  for (int route = 0; route < BENCH_ROUTES; route++) {
    bench_http_figure_t *f = &result->figure[route];
    double rps[BENCH_ROUNDS_MAX], p50[BENCH_ROUNDS_MAX], p99[BENCH_ROUNDS_MAX];
    double cpu[BENCH_ROUNDS_MAX], ratio[BENCH_ROUNDS_MAX],
        cpu_ratio[BENCH_ROUNDS_MAX];
    int n = 0;
    for (int round = 0; round < result->rounds; round++) {
      const bench_http_figure_t *run = &runs[round][route];
      const bench_http_figure_t *top = &runs[round][BENCH_CEILING];
      if (!run->ok || !top->ok || top->rps <= 0 || top->cpu_us <= 0)
        continue;
      rps[n] = run->rps;
      p50[n] = run->p50_ms;
      p99[n] = run->p99_ms;
      cpu[n] = run->cpu_us;
      ratio[n] = run->rps / top->rps;
      cpu_ratio[n] = run->cpu_us / top->cpu_us;
      f->requests += run->requests;
      f->errors += run->errors;
      n++;
    }
    if (!n)
      continue;
    f->ok = 1;
    f->rps = median(rps, n);
    f->p50_ms = median(p50, n);
    f->p99_ms = median(p99, n);
    f->cpu_us = median(cpu, n);
    f->ratio = median(ratio, n);
    f->cpu_ratio = median(cpu_ratio, n);
    f->ratio_min = ratio[0]; /* sorted by median() */
    f->ratio_max = ratio[n - 1];
  }
  result->ran = 1;
  return 0;
}

void bench_http_print(const bench_http_result_t *result) {
  static const char *const rows[BENCH_ROUTES] = {
      "ceiling: bare libmicrohttpd, fixed 200-byte JSON",
      "quota pre-check GET /v1/subjects/{s}/quota",
      "GET /v1/subjects/{s}/usage", "GET /healthz"};
  if (!result->ran) {
    printf("| (d) HTTP | not run (BENCH_HTTP_S=0) |\n");
    return;
  }
  printf("| (d) HTTP: wrk -t1 -c%d, %d rounds of %d s per route, %ld "
         "subjects, %u server threads | req/s, p50 / p99 (medians of the "
         "rounds); ratio to the ceiling (median of the rounds' ratios, "
         "their range); server CPU per request (its ratio); errors |\n",
         result->connections, result->rounds, result->seconds, result->subjects,
         result->threads);
  for (int r = 0; r < BENCH_ROUTES; r++) {
    const bench_http_figure_t *f = &result->figure[r];
    if (!f->ok) {
      printf("| (d) %s | no result (is wrk installed?) |\n", rows[r]);
      continue;
    }
    printf("| (d) %s | %.0f, %.2f / %.2f ms; %.2f (%.2f-%.2f); %.1f us "
           "(%.2f); %ld errors of %ld |\n",
           rows[r], f->rps, f->p50_ms, f->p99_ms, f->ratio, f->ratio_min,
           f->ratio_max, f->cpu_us, f->cpu_ratio, f->errors, f->requests);
  }
}

/* ---- BENCH_ONLY_HTTP: (d) alone --------------------------------------- */

static volatile sig_atomic_t only_stop;

typedef struct {
  tly_processor_t *processor;
  int rc;
  char errstr[512];
} only_run_t;

static void *only_processor(void *arg) {
  only_run_t *run = arg;
  run->rc = tly_processor_run(run->processor, &only_stop, run->errstr,
                              sizeof(run->errstr));
  return NULL;
}

/* events API calls spread over subjects user:b0 .. */
static int only_produce(const char *bootstrap, long events, long subjects) {
  char errstr[512], id[32], event_id[48];
  const char *props[] = {"linger.ms=20", NULL};
  tally_producer_conf_t conf = {.brokers = bootstrap,
                                .kafka_properties = props};
  tally_producer_t *producer =
      tally_producer_new(&conf, errstr, sizeof(errstr));
  if (!producer) {
    fprintf(stderr, "bench: %s\n", errstr);
    return -1;
  }
  for (long i = 0; i < events; i++) {
    tly_event_t event = {0};
    snprintf(id, sizeof(id), "b%ld", i % subjects);
    snprintf(event_id, sizeof(event_id), "h-%ld", i);
    event.event_id = event_id;
    event.occurred_at_ms = 1794268800000LL + i;
    event.subject_kind = TLY_SUBJECT_USER;
    event.subject_id = id;
    event.body.usage.feature = "api_calls";
    event.body.usage.quantity = 1;
    if (tally_producer_send(producer, &event, NULL, errstr, sizeof(errstr))) {
      fprintf(stderr, "bench: %s\n", errstr);
      tally_producer_destroy(producer);
      return -1;
    }
  }
  int rc = tally_producer_flush(producer, 60000);
  tally_producer_destroy(producer);
  return rc ? -1 : 0;
}

int bench_http_only(int argc, char **argv) {
  long subjects = argc > 2 ? atol(argv[2]) : 1000;
  long events = argc > 1 ? atol(argv[1]) : subjects;
  int partitions = argc > 3 ? atoi(argv[3]) : 16;
  int seconds = getenv("BENCH_HTTP_S") ? atoi(getenv("BENCH_HTTP_S")) : 8;
  char errstr[512], dir[] = "/tmp/tally-bench-http-XXXXXX";
  if (subjects < 1 || events < subjects || partitions < 1 || seconds < 1) {
    fprintf(stderr, "bench: BENCH_ONLY_HTTP needs events >= subjects >= 1, "
                    "partitions >= 1 and BENCH_HTTP_S >= 1\n");
    return 2;
  }
  tly_log_set_level(TLY_LOG_WARN);
  rd_kafka_conf_t *kconf = rd_kafka_conf_new();
  rd_kafka_t *host =
      rd_kafka_new(RD_KAFKA_PRODUCER, kconf, errstr, sizeof(errstr));
  rd_kafka_mock_cluster_t *cluster = rd_kafka_mock_cluster_new(host, 1);
  rd_kafka_mock_topic_create(cluster, TALLY_DEFAULT_USAGE_TOPIC, partitions, 1);
  rd_kafka_mock_topic_create(cluster, TLY_DEFAULT_DLQ_TOPIC, 1, 1);
  rd_kafka_mock_topic_create(cluster, TLY_DEFAULT_ALERTS_TOPIC, 4, 1);
  const char *bootstrap = rd_kafka_mock_cluster_bootstraps(cluster);
  fprintf(stderr, "producing %ld events over %ld subjects...\n", events,
          subjects);
  if (only_produce(bootstrap, events, subjects) || !mkdtemp(dir))
    return 1;
  tly_store_t *store = tly_store_open(dir, 0, errstr, sizeof(errstr));
  tly_config_t *config = tly_config_default();
  bench_http_add_key(config);
  tly_processor_conf_t pconf = {.brokers = bootstrap,
                                .group_id = "bench-http",
                                .config = config,
                                .tick_interval_ms = -1};
  only_run_t run = {0};
  run.processor =
      store ? tly_processor_new(&pconf, store, errstr, sizeof(errstr)) : NULL;
  if (!run.processor) {
    fprintf(stderr, "bench: %s\n", errstr);
    return 1;
  }
  pthread_t thread;
  pthread_create(&thread, NULL, only_processor, &run);
  tly_processor_stats_t stats = {0};
  while (stats.events_folded + stats.dead_letters + stats.duplicates <
             (uint64_t)events &&
         !run.rc) {
    usleep(20000);
    tly_processor_stats(run.processor, &stats);
  }
  bench_http_result_t result;
  int rc =
      run.rc ? 1
      : bench_http_run(store, run.processor, config, subjects, seconds, &result)
          ? 1
          : 0;
  only_stop = 1;
  pthread_join(thread, NULL);
  if (run.rc)
    fprintf(stderr, "bench: processor stopped: %s\n", run.errstr);
  if (!rc) {
    printf("\n| figure | value |\n|---|---|\n");
    printf("| events | %ld over %ld subjects, %d partitions (BENCH_ONLY_HTTP) "
           "|\n",
           events, subjects, partitions);
    bench_http_print(&result);
  }
  tly_processor_destroy(run.processor);
  tly_store_close(store);
  tly_config_free(config);
  rd_kafka_mock_cluster_destroy(cluster);
  rd_kafka_destroy(host);
  char command[600];
  snprintf(command, sizeof(command), "rm -rf %s", dir);
  if (system(command) != 0)
    rc = 1;
  return rc;
}
