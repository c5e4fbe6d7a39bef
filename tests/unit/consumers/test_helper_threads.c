/*
 * test_helper_threads.c - the processor's helper threads yield to the fold
 * (base/tly_thread.h), and only they do; read back from the kernel for
 * each thread:
 *   - the release thread runs at the helper nice value;
 *   - a consumer built by tly_proc_kafka_conf keeps every thread (its
 *     fetches included) at its starter's: a fetch below the fold starved
 *     the queue when the machine was busy (README, "Helper threads yield
 *     to the fold"), and so does a producer built the same way.
 * Against librdkafka's mock cluster over loopback.
 */
#define _GNU_SOURCE /* syscall */
#include "tly_processor_internal.h"
#include "tly_release.h"
#include "tly_test_cluster.h"
#include "tly_thread.h"

#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cmocka.h>

#define TOPIC "usage"
#define MAX_THREADS 512

typedef struct {
  int tid;
  char name[32];
} thread_t;

/* The process's threads now: their ids and names. */
static int threads_now(thread_t *out, int cap) {
  DIR *dir = opendir("/proc/self/task");
  assert_non_null(dir);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(dir)) && n < cap) {
    if (e->d_name[0] == '.')
      continue;
    char path[300];
    snprintf(path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
    FILE *f = fopen(path, "r");
    if (!f)
      continue; /* it ended meanwhile */
    out[n].tid = atoi(e->d_name);
    if (!fgets(out[n].name, sizeof(out[n].name), f))
      out[n].name[0] = '\0';
    out[n].name[strcspn(out[n].name, "\n")] = '\0';
    fclose(f);
    n++;
  }
  closedir(dir);
  return n;
}

static int known(const thread_t *set, int n, int tid) {
  for (int i = 0; i < n; i++)
    if (set[i].tid == tid)
      return 1;
  return 0;
}

static int nice_of(int tid) {
  errno = 0;
  int value = getpriority(PRIO_PROCESS, (id_t)tid);
  assert_false(value == -1 && errno);
  return value;
}

typedef struct {
  rd_kafka_mock_cluster_t *cluster;
  const char *bootstrap;
} cluster_t;

static void cluster_stop(cluster_t *c) { tly_test_cluster_destroy(c->cluster); }

/* A client of the processor's configuration; *before holds the threads
 * that were there before it. */
static rd_kafka_t *client_new(const cluster_t *c, int consumer,
                              thread_t *before, int *before_count) {
  static const char *const log_quiet[] = {"log_level=3", NULL};
  const char *consumer_defaults[] = {"group.id=helper-threads", NULL};
  tly_processor_conf_t conf = {.brokers = c->bootstrap,
                               .kafka_properties = log_quiet};
  char errstr[512] = "";
  *before_count = threads_now(before, MAX_THREADS);
  rd_kafka_conf_t *kconf =
      tly_proc_kafka_conf(&conf, consumer, consumer ? consumer_defaults : NULL,
                          errstr, sizeof(errstr));
  assert_non_null(kconf);
  rd_kafka_t *rk =
      rd_kafka_new(consumer ? RD_KAFKA_CONSUMER : RD_KAFKA_PRODUCER, kconf,
                   errstr, sizeof(errstr));
  assert_non_null(rk);
  /* Metadata brings the learned broker's thread ("rdk:broker1"). */
  const struct rd_kafka_metadata *md = NULL;
  assert_int_equal(rd_kafka_metadata(rk, 1, NULL, &md, 10000), 0);
  rd_kafka_metadata_destroy(md);
  return rk;
}

/* The client's own threads (new since *before) named with prefix: how
 * many, and whether each runs at want. */
static int new_threads_at(const thread_t *before, int before_count,
                          const char *prefix, int want) {
  thread_t now[MAX_THREADS];
  int n = threads_now(now, MAX_THREADS), seen = 0;
  for (int i = 0; i < n; i++) {
    if (known(before, before_count, now[i].tid) ||
        strncmp(now[i].name, prefix, strlen(prefix)))
      continue;
    seen++;
    if (nice_of(now[i].tid) != want)
      fail_msg("thread %s (%d) runs at nice %d, not %d", now[i].name,
               now[i].tid, nice_of(now[i].tid), want);
  }
  return seen;
}

/* The cluster started and *base the test's own nice value; 0 when the
 * test already runs below the helpers (nothing to tell apart: skipped). */
static int ready(cluster_t *c, int *base) {
  *base = nice_of((int)syscall(SYS_gettid));
  if (*base > TLY_THREAD_HELPER_NICE)
    return 0;
  unsetenv("TALLY_HELPER_NICE");
  c->cluster = tly_test_cluster_new(TOPIC, 2, &c->bootstrap);
  return 1;
}

static void test_kafka_threads_keep_their_priority(void **state) {
  (void)state;
  cluster_t c;
  int base;
  if (!ready(&c, &base)) {
    skip();
    return;
  }
  thread_t before[MAX_THREADS];
  int before_count = 0;
  rd_kafka_t *consumer = client_new(&c, 1, before, &before_count);
  assert_true(new_threads_at(before, before_count, "rdk:broker", base) >= 1);
  assert_int_equal(new_threads_at(before, before_count, "rdk:main", base), 1);
  rd_kafka_destroy(consumer);

  rd_kafka_t *producer = client_new(&c, 0, before, &before_count);
  assert_true(new_threads_at(before, before_count, "rdk:broker", base) >= 1);
  rd_kafka_destroy(producer);
  cluster_stop(&c);
}

static void test_release_thread_yields(void **state) {
  (void)state;
  cluster_t c;
  int base;
  if (!ready(&c, &base)) {
    skip();
    return;
  }
  char errstr[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", c.bootstrap, NULL, 0);
  rd_kafka_t *producer =
      rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  assert_non_null(producer);
  assert_int_equal(rd_kafka_producev(producer, RD_KAFKA_V_TOPIC(TOPIC),
                                     RD_KAFKA_V_PARTITION(0),
                                     RD_KAFKA_V_VALUE("one", 3),
                                     RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                     RD_KAFKA_V_END),
                   RD_KAFKA_RESP_ERR_NO_ERROR);
  assert_int_equal(rd_kafka_flush(producer, 30000), RD_KAFKA_RESP_ERR_NO_ERROR);
  rd_kafka_destroy(producer);

  conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", c.bootstrap, NULL, 0);
  rd_kafka_conf_set(conf, "group.id", "helper-release", NULL, 0);
  rd_kafka_t *consumer =
      rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
  assert_non_null(consumer);
  rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(parts, TOPIC, 0)->offset =
      RD_KAFKA_OFFSET_BEGINNING;
  assert_int_equal(rd_kafka_assign(consumer, parts), 0);
  rd_kafka_topic_partition_list_destroy(parts);
  rd_kafka_message_t *msg = NULL;
  for (int i = 0; i < 300 && !msg; i++) {
    msg = rd_kafka_consumer_poll(consumer, 100);
    if (msg && msg->err) {
      rd_kafka_message_destroy(msg);
      msg = NULL;
    }
  }
  assert_non_null(msg);

  thread_t before[MAX_THREADS];
  int before_count = threads_now(before, MAX_THREADS);
  tly_release_t *release = tly_release_new(0);
  assert_non_null(release);
  tly_release_messages(release, &msg, 1); /* starts the thread */
  tly_release_drain(release); /* it ran: its first step is the nice */
  assert_int_equal(new_threads_at(before, before_count, "tly-release",
                                  TLY_THREAD_HELPER_NICE),
                   1);
  tly_release_destroy(release);
  rd_kafka_consumer_close(consumer);
  rd_kafka_destroy(consumer);
  cluster_stop(&c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_kafka_threads_keep_their_priority),
      cmocka_unit_test(test_release_thread_yields),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
